/** A raw protocol client for server tests: frames in and out over one socket, calls matched to answers by id. */
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import type { Socket } from "node:net";
import { Duplex } from "node:stream";
import { encodeFrame, FrameDecoder } from "../src/protocol/framing.js";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Msg = any;

export interface RawClientOptions {
  /** The largest frame the client accepts (the decoder's default if unset). */
  maxFrameBytes?: number;
  /** How long next() waits for a frame by default. */
  nextTimeoutMs?: number;
}

/**
 * Frames in and out over one socket: an answer whose id matches a pending call() resolves it; other
 * frames queue for next().
 */
export class RawClient {
  readonly socket: Socket;
  readonly closed: Promise<void>;
  isClosed = false;
  readonly #nextTimeoutMs: number;
  readonly #decoder: FrameDecoder;
  #frames: Msg[] = [];
  #waiters: ((m: Msg) => void)[] = [];
  #pending = new Map<string, (m: Msg) => void>();

  constructor(socket: Socket, opts: RawClientOptions = {}) {
    this.socket = socket;
    this.#decoder = new FrameDecoder(opts.maxFrameBytes);
    this.#nextTimeoutMs = opts.nextTimeoutMs ?? 5000;
    socket.on("error", () => {});
    socket.on("data", (chunk: Buffer) => {
      for (const body of this.#decoder.push(chunk)) {
        const m = JSON.parse(body.toString("utf8")) as Msg;
        const p = typeof m.id === "string" ? this.#pending.get(m.id) : undefined;
        if (p) {
          this.#pending.delete(m.id as string);
          p(m);
        } else if (this.#waiters.length > 0) this.#waiters.shift()!(m);
        else this.#frames.push(m);
      }
    });
    this.closed = new Promise((resolve) => socket.on("close", () => ((this.isClosed = true), resolve())));
  }

  /** Resolves with `c` once its socket has connected (or closed first). */
  static async connected<C extends RawClient>(c: C): Promise<C> {
    await Promise.race([once(c.socket, "connect"), c.closed]);
    return c;
  }

  send(m: unknown): void {
    this.socket.write(encodeFrame(m));
  }

  /** The next frame not claimed by a call(). */
  next(timeoutMs = this.#nextTimeoutMs): Promise<Msg> {
    const f = this.#frames.shift();
    if (f !== undefined) return Promise.resolve(f);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("no frame in time")), timeoutMs).unref();
      this.#waiters.push((m) => (clearTimeout(t), resolve(m)));
    });
  }

  /** Sends a request; resolves with its response. */
  call(method: string, params?: unknown): Promise<Msg> {
    const id = randomUUID();
    const p = new Promise<Msg>((resolve) => this.#pending.set(id, resolve));
    this.send(params === undefined ? { id, method } : { id, method, params });
    return p;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Two in-process duplex streams, each writing into the other: a transport that is no socket at all. */
export function duplexPair(): [Duplex, Duplex] {
  const ends: Duplex[] = [];
  const ended = [false, false];
  const make = (i: number): Duplex =>
    new Duplex({
      allowHalfOpen: false, // as a socket: once the peer has ended, end too
      read() {},
      write(chunk: Buffer, _enc, cb) {
        ends[1 - i]!.push(chunk);
        cb();
      },
      final(cb) {
        if (!ended[1 - i]) ends[1 - i]!.push(null);
        ended[1 - i] = true;
        cb();
      },
      destroy(err, cb) {
        if (!ended[1 - i]) ends[1 - i]!.push(null);
        ended[1 - i] = true;
        cb(err);
      },
    });
  ends.push(make(0), make(1));
  return [ends[0]!, ends[1]!];
}
