/**
 * Relays a body from one stream to another, each chunk through an optional {@link Scrubber}: what
 * `stream.pipeline(from, new ScrubStream(p), to)` does for this one shape, at a fraction of its cost
 * per use. pipeline() makes an AbortController (and a DOMException with its stack) per call and the
 * Transform adds a stream of its own; on a small proxied answer that was about a tenth of the proxy's
 * CPU (bench/proxy.ts). The scrubber is synchronous, so nothing is gained by making it a stream.
 *
 * Backpressure: `from` pauses while `to` is full. Ending: once `from` ends, what the scrubber held back
 * is written and `to` ended; `done()` once `to` has finished. Failure: an error on either side, `from`
 * closing before its end or `to` closing before it finished, or the scrubber throwing: both streams are
 * destroyed and `done(error)`. `done` is called exactly once.
 */
import type { Readable, Writable } from "node:stream";
import type { Scrubber } from "./scrub.js";

/** What {@link relayBody} does besides copying. */
export interface RelayOptions {
  /** Every chunk goes through it (a secret value becomes its placeholder). */
  scrubber?: Scrubber;
  /** Hears the size of each chunk read from `from`, before scrubbing. */
  onBytes?: (n: number) => void;
}

/** See the module comment. Nothing else may consume `from` (no pipe, no read()); a listener that only counts its 'data' may stay. */
export function relayBody(from: Readable, to: Writable, opts: RelayOptions, done: (err?: Error) => void): void {
  const { scrubber, onBytes } = opts;
  let settled = false;
  let fromEnded = false;

  // Attached at the end, in this order (data last: a source that is already flowing starts then).
  const listeners: [Readable | Writable, string, (...args: never[]) => void][] = [
    [from, "error", fail],
    [from, "close", onFromClose],
    [from, "end", onEnd],
    [to, "finish", onFinish],
    [to, "error", fail],
    [to, "close", onToClose],
    [from, "data", onData],
  ];
  const cleanup = (): void => {
    for (const [s, e, f] of listeners) s.off(e, f as (...args: unknown[]) => void);
    to.off("drain", onDrain);
  };
  function fail(err: Error): void {
    if (settled) return;
    settled = true;
    cleanup();
    // Listeners that swallow what destroying may still emit: an 'error' nobody hears ends the process.
    from.on("error", ignore);
    to.on("error", ignore);
    from.destroy();
    to.destroy();
    done(err);
  }
  const write = (b: Buffer): boolean => (b.length === 0 ? true : to.write(b));
  function onData(chunk: Buffer): void {
    if (settled) return;
    onBytes?.(chunk.length);
    let ok = true;
    if (scrubber === undefined) ok = write(chunk);
    else {
      let out: Buffer[];
      try {
        out = scrubber.push(chunk);
      } catch (e) {
        fail(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      for (const b of out) ok = write(b) && ok;
    }
    if (!ok && !settled) {
      from.pause();
      to.once("drain", onDrain);
    }
  }
  function onDrain(): void {
    if (!settled) from.resume();
  }
  function onEnd(): void {
    if (settled) return;
    fromEnded = true;
    if (scrubber !== undefined) {
      try {
        for (const b of scrubber.end()) write(b);
      } catch (e) {
        fail(e instanceof Error ? e : new Error(String(e)));
        return;
      }
    }
    to.end();
  }
  function onFromClose(): void {
    if (!fromEnded) fail(early("the source closed before its end"));
  }
  function onFinish(): void {
    if (settled) return;
    settled = true;
    cleanup();
    done();
  }
  function onToClose(): void {
    fail(early("the destination closed before the end"));
  }

  if (from.destroyed && !from.readableEnded) return void fail(early("the source closed before its end"));
  if (to.destroyed || to.writableEnded) return void fail(early("the destination closed before the end"));
  for (const [s, e, f] of listeners) s.on(e, f as (...args: unknown[]) => void);
  from.resume();
  if (from.readableEnded) onEnd();
}

function ignore(): void {}

/** The error of a stream that closed too soon (the code stream.pipeline gives it). */
function early(what: string): Error {
  return Object.assign(new Error(what), { code: "ERR_STREAM_PREMATURE_CLOSE" });
}
