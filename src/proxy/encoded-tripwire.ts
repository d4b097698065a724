/**
 * The body tripwire for a compressed request body (`Content-Encoding: gzip`, `deflate` or `br`): the
 * compressed bytes pass on unchanged, but only once what they decode to has been read by the same
 * watch as ./body-tripwire.ts. An agent that gzips a body does not get a credential past the proxy.
 *
 * The gate: the body is decoded beside the stream, and a compressed chunk goes on only when the
 * decoded bytes it produced have all passed the scrubber, including the tail the scrubber holds back
 * because it could begin a mark. So when a mark turns up, the upstream has had none of its decoded
 * bytes; at most the bits of one unfinished code at the end of a released chunk (under a byte of it).
 * The compressed bytes are watched as they are too, as ./body-tripwire.ts watches a plain body: a
 * format's fields that decoders skip (gzip's file name, comment and extra field; a brotli metadata
 * block) decode to nothing, and an upstream could still read them.
 *
 * Refused rather than passed unread (the caller answers with {@link BodyUnreadable}'s status): a body
 * that does not decode, bytes after the end of the compressed data (an upstream might read them), and
 * a body that decodes to more than `maxDecodedBytes` (a decompression bomb). Any other coding, or more
 * than one, is refused before anything is sent (see {@link decodableCoding}).
 */
import { Transform, type TransformCallback } from "node:stream";
import { createBrotliDecompress, createGunzip, createInflate } from "node:zlib";
import { TripwireHit, type TripwireMarks } from "./body-tripwire.js";
import { Scrubber } from "./scrub.js";

/** The codings this tripwire can read, as the request names them (lower case). */
export type DecodableCoding = "gzip" | "x-gzip" | "deflate" | "br";

/** `coding` (as ./request-body.ts's `encodedBody` gives it) if this tripwire can read it, else null. */
export function decodableCoding(coding: string): DecodableCoding | null {
  return coding === "gzip" || coding === "x-gzip" || coding === "deflate" || coding === "br" ? coding : null;
}

/** The default cap on what one compressed body may decode to: 256 MiB. */
export const MAX_DECODED_BYTES = 256 * 1024 * 1024;

/**
 * The default cap on the compressed bytes held back at once: chunks that cannot go on yet because the
 * decoded bytes before them end in what could begin a mark, and nothing decoded since has said what
 * it is. Real compressed data decodes to something in every few hundred bytes; data that decodes to
 * nothing for long (empty deflate stored blocks, brotli metadata) would otherwise be held whole, as
 * much as the agent sends: 1 MiB.
 */
export const MAX_HELD_COMPRESSED_BYTES = 1024 * 1024;

/** A compressed body the tripwire could not read to the end: the request is refused with `status`. */
export class BodyUnreadable extends Error {
  constructor(
    /** 400 (does not decode, or data after its end) or 413 (decodes to more than the cap). */
    readonly status: 400 | 413,
    /** For the agent: what is wrong and what to do. */
    readonly detail: string,
  ) {
    super(detail);
  }
}

/** Options of {@link DecodingTripwire}. */
export interface DecodingTripwireOptions<T> {
  /** Called once, at the first mark, before the stream fails with the same error. */
  onHit(hit: TripwireHit<T>): void;
  /** Called once when the body cannot be read to the end, before the stream fails with the same error. */
  onUnreadable(e: BodyUnreadable): void;
  /** Cap on the decoded bytes (default {@link MAX_DECODED_BYTES}). */
  maxDecodedBytes?: number;
  /** Cap on the compressed bytes held back at once (default {@link MAX_HELD_COMPRESSED_BYTES}). */
  maxHeldBytes?: number;
}

function decoder(coding: DecodableCoding): Transform {
  return coding === "br" ? createBrotliDecompress() : coding === "deflate" ? createInflate() : createGunzip();
}

/**
 * Passes a compressed body through unchanged, each chunk once what it decodes to is known to carry
 * none of `marks`; fails with a {@link TripwireHit} at the first mark, or a {@link BodyUnreadable}.
 */
export class DecodingTripwire<T> extends Transform {
  readonly #marks: TripwireMarks<T>;
  readonly #scrubber: Scrubber;
  /** The watch over the compressed bytes as they are. */
  readonly #raw: Scrubber;
  readonly #decoder: Transform;
  readonly #opts: DecodingTripwireOptions<T>;
  readonly #max: number;
  readonly #coding: DecodableCoding;
  /**
   * Compressed chunks not yet passed on, oldest first: each with the compressed total through its end,
   * and the decoded total once it was read.
   */
  readonly #held: { chunk: Buffer; end: number; decodedThrough: number }[] = [];
  /** The bytes of {@link #held}'s chunks. */
  #heldBytes = 0;
  readonly #maxHeld: number;
  #written = 0;
  #decoded = 0;
  #failed = false;
  /** The decoder reached the end of the compressed data (it may do so before the body ends). */
  #ended = false;

  constructor(marks: TripwireMarks<T>, coding: DecodableCoding, opts: DecodingTripwireOptions<T>) {
    super();
    this.#marks = marks;
    this.#scrubber = new Scrubber(marks.patterns);
    this.#raw = new Scrubber(marks.patterns);
    this.#coding = coding;
    this.#opts = opts;
    this.#max = opts.maxDecodedBytes ?? MAX_DECODED_BYTES;
    this.#maxHeld = opts.maxHeldBytes ?? MAX_HELD_COMPRESSED_BYTES;
    this.#decoder = decoder(coding);
    this.#decoder.on("data", (out: Buffer) => this.#read(out));
    this.#decoder.on("end", () => (this.#ended = true));
    this.#decoder.on("error", () => this.#unreadable(400, `Bad request: the request body is labelled content-encoding ${coding} but does not decode as it; the proxy must read a body to check it and did not send it. Send it uncompressed or correctly encoded`));
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (this.#failed) return callback();
    this.#written += chunk.length;
    this.#check(this.#raw, this.#raw.push(chunk));
    if (this.#failed) return callback();
    if (this.#ended) return this.#trailing(), callback();
    const entry = { chunk, end: this.#written, decodedThrough: -1 };
    this.#held.push(entry);
    this.#heldBytes += chunk.length;
    // The decoder's write callback comes once it has consumed the whole chunk and pushed all it
    // decoded from it; in flowing mode each push reached #read at once (its buffer stays empty).
    this.#decoder.write(chunk, () => {
      if (this.#failed) return callback();
      if (this.#decoder.readableLength !== 0) {
        // Not read yet (it never happens in flowing mode): decide nothing on a partial view.
        return setImmediate(() => this.#settle(entry, callback));
      }
      this.#settle(entry, callback);
    });
  }

  override _flush(callback: TransformCallback): void {
    if (this.#failed) return callback();
    const finish = (): void => {
      if (this.#failed) return callback();
      this.#check(this.#scrubber, this.#scrubber.end());
      this.#check(this.#raw, this.#raw.end());
      if (this.#failed) return callback();
      if (this.#consumed() !== this.#written) return this.#trailing(), callback();
      for (const h of this.#held.splice(0)) this.push(h.chunk);
      callback();
    };
    if (this.#ended) return finish();
    this.#decoder.once("end", finish);
    this.#decoder.end();
  }

  /** Compressed bytes the decoder consumed. */
  #consumed(): number {
    return (this.#decoder as Transform & { bytesWritten: number }).bytesWritten;
  }

  #trailing(): void {
    this.#unreadable(400, `Bad request: the request body has bytes after the end of its ${this.#coding} data; the proxy must read a body to check it and did not send them. Send only the compressed data`);
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.#decoder.destroy();
    callback(err);
  }

  /** `entry`'s chunk was read: pass on every held chunk whose decoded bytes all cleared the scrubber. */
  #settle(entry: { decodedThrough: number }, callback: TransformCallback): void {
    if (this.#failed) return callback();
    // After the write callback the decoder has consumed the whole chunk, unless its data ended inside it.
    if (this.#consumed() !== this.#written) return this.#trailing(), callback();
    entry.decodedThrough = this.#decoded;
    // Clear in both views: what it decodes to, and its own bytes (the raw watch holds a tail back too).
    const clear = this.#decoded - this.#scrubber.held;
    const rawClear = this.#written - this.#raw.held;
    for (let h = this.#held[0]; h !== undefined && h.decodedThrough >= 0 && h.decodedThrough <= clear && h.end <= rawClear; h = this.#held[0]) {
      const { chunk } = this.#held.shift()!;
      this.#heldBytes -= chunk.length;
      this.push(chunk);
    }
    // Compressed bytes that decode to nothing, after decoded bytes that could begin a mark: held until
    // something decoded says what those are. Without a cap the agent chooses how much. The first held
    // chunk is not counted: it is what the next decoded byte settles, however large a read it came in.
    if (this.#heldBytes - (this.#held[0]?.chunk.length ?? 0) > this.#maxHeld)
      return (
        this.#unreadable(413, `Content too large: the request body's ${this.#coding} data goes on for more than ${this.#maxHeld} bytes without decoding to anything, after bytes the proxy must hold back to check it; it was not sent. Send it uncompressed`),
        callback()
      );
    callback();
  }

  #read(out: Buffer): void {
    if (this.#failed) return;
    this.#decoded += out.length;
    if (this.#decoded > this.#max) {
      this.#unreadable(413, `Content too large: the request body decodes to more than ${this.#max} bytes, the most the proxy reads to check a compressed body; it was not sent. Send it uncompressed`);
      return;
    }
    this.#check(this.#scrubber, this.#scrubber.push(out));
  }

  /** Fails the stream if `by` (the decoded or the raw watch) found a mark; `out` is its output. */
  #check(by: Scrubber, out: Buffer[]): void {
    if (this.#failed || by.replaced === 0) return;
    this.#failed = true;
    this.#decoder.destroy();
    const hit = new TripwireHit(this.#marks.ownersIn(out));
    this.#opts.onHit(hit);
    this.destroy(hit);
  }

  #unreadable(status: 400 | 413, detail: string): void {
    if (this.#failed) return;
    this.#failed = true;
    this.#decoder.destroy();
    const e = new BodyUnreadable(status, detail);
    this.#opts.onUnreadable(e);
    this.destroy(e);
  }
}
