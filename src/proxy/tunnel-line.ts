/**
 * The line of an intercepted tunnel whose upstream speaks HTTP/1.1: one request served at a time (the
 * policy asked, a use counted, the upstream reached), as HTTP/1.1 answers them, and at most
 * {@link MAX_PIPELINED} waiting behind it; more are answered 503. HTTP/1.1 clients (./intercept.ts)
 * and HTTP/2 clients of an HTTP/1.1 upstream (./h2.ts) wait in it alike, so that an agent neither
 * opens an upstream connection per request nor spends uses on requests queued behind one that hangs.
 * A request whose client left, or whose tunnel closed, while it waited is dropped unasked: no use is
 * spent on a request that has not gone.
 */
import type { Tunnel } from "./intercept.js";

/** Requests of one tunnel beyond this many waiting are answered 503. */
export const MAX_PIPELINED = 32;

/** One request that wants its turn. */
export interface LineEntry {
  /** Serves it; `free` lets the next one go (call it once the answer is written or the client left; later calls do nothing). */
  serve(free: () => void): void;
  /** True once it can no longer be answered (its client left). */
  gone(): boolean;
  /** Ends it unanswered: its turn came after its client left or its tunnel closed. */
  drop(): void;
  /** Answers it 503: too many wait. */
  tooMany(): void;
}

/** The requests of one tunnel: the one being served, and those waiting. */
export class TunnelLine {
  readonly #closed: () => boolean;
  #busy = false;
  #waiting: LineEntry[] = [];

  constructor(closed: () => boolean) {
    this.#closed = closed;
  }

  /**
   * Serves `e` now if no request is being served, else puts it in the line; past {@link MAX_PIPELINED}
   * waiting it is answered 503, unless `capped` is false (until {@link trim} caps the line).
   */
  join(e: LineEntry, capped = true): void {
    if (!this.#busy) return this.#go(e);
    if (capped && this.#waiting.length >= MAX_PIPELINED) return e.tooMany();
    this.#waiting.push(e);
  }

  /** Takes `e` out of the line if it still waits (its client left). */
  leave(e: LineEntry): void {
    const i = this.#waiting.indexOf(e);
    if (i >= 0) this.#waiting.splice(i, 1);
  }

  /** Answers 503 to the requests waiting beyond {@link MAX_PIPELINED}. */
  trim(): void {
    for (const e of this.#waiting.splice(MAX_PIPELINED)) e.tooMany();
  }

  #go(e: LineEntry): void {
    // The tunnel closed (or the client left) while it waited: nothing is asked, no use is spent.
    if (this.#closed() || e.gone()) {
      e.drop();
      this.#next();
      return;
    }
    this.#busy = true;
    let freed = false;
    e.serve(() => {
      if (freed) return;
      freed = true;
      this.#busy = false;
      this.#next();
    });
  }

  #next(): void {
    const e = this.#waiting.shift();
    if (e) this.#go(e);
  }
}

const lines = new WeakMap<Tunnel, TunnelLine>();

/** The line of tunnel `t`. */
export function lineOf(t: Tunnel): TunnelLine {
  let line = lines.get(t);
  if (line === undefined) lines.set(t, (line = new TunnelLine(() => t.handle.closed)));
  return line;
}
