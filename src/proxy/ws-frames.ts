/**
 * WebSocket frames (RFC 6455 §5) rewritten on their way through the proxy, one direction per stream:
 *
 * - client → server (a `[[proxy.inject]]` rule with `websocket = true`): each frame is unmasked, the
 *   payload of text and binary messages goes through the reverse patterns (placeholder → value), and
 *   the frame is re-masked with a fresh random key and its length recomputed;
 * - server → client (the policy's `scrub`): the same with the forward patterns (value → placeholder),
 *   on frames that stay unmasked.
 *
 * One scrubber follows each message across its fragments, so a placeholder split between two
 * continuation frames is replaced too: the bytes that could still start one are held back from a
 * fragment and sent at the head of the next (an intermediary may refragment a message that uses no
 * extension, §5.4). Control frames (close, ping, pong) may come between fragments; the client's pass
 * untouched, the server's have their payload scrubbed (a close reason could echo a secret).
 *
 * Frames are buffered one at a time, a data frame above STREAM_ABOVE (256 KiB) not whole: its payload
 * goes on in fragments as it arrives, so a connection holds about that much at most. A frame over
 * `maxFrameBytes` of payload fails the connection with 1009 (message too big) before its payload is
 * read. Anything RFC 6455 forbids fails it with 1002 (protocol error): an unmasked client frame or a masked server frame, RSV bits (no
 * extension is negotiated when frames are rewritten: a compressed frame could not be), an unknown
 * opcode, a fragmented or oversized control frame, a continuation with no message or a new message
 * inside one. The output is always whole frames, so the proxy can end either side with a close frame.
 *
 * With a tripwire (the client's frames, ./body-tripwire.ts) the client's frames are parsed and
 * re-masked even when nothing is replaced; a frame with a mark fails the connection with 1008.
 */
import { randomFillSync } from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";
import type { TripwireMarks } from "./body-tripwire.js";
import { Scrubber, scrub, type ScrubPatterns } from "./scrub.js";

/** Default cap on one frame's payload, bytes. */
export const DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024;

/**
 * A data frame with more payload than this is not buffered whole: it goes on as it arrives, in
 * fragments of {@link STREAM_PIECE} bytes (the last may be shorter), so one connection holds about
 * this much at most whatever its frames' lengths (RFC 6455 §5.4: an intermediary may refragment a
 * message that uses no extension).
 */
export const STREAM_ABOVE = 256 * 1024;
/** The payload of each fragment a streamed frame goes on in (see {@link STREAM_ABOVE}). */
export const STREAM_PIECE = 64 * 1024;

/** Close codes the proxy fails a connection with (RFC 6455 §7.4.1). */
export const CLOSE_PROTOCOL_ERROR = 1002;
export const CLOSE_POLICY_VIOLATION = 1008;
export const CLOSE_TOO_BIG = 1009;

/** A frame that cannot be passed on: the connection is to be closed with `code`. */
export class FrameError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
    this.name = "FrameError";
  }
}

/** Settings of {@link FrameRewriter}. */
export interface FrameRewriterOptions {
  /** Whose frames these are: the client's are masked (and re-masked on the way out), the server's not. */
  from: "client" | "server";
  /** Applied to text and binary payloads; without it, frames are checked and passed whole, unchanged. */
  patterns?: ScrubPatterns;
  /** Cap on one frame's payload (default {@link DEFAULT_MAX_FRAME_BYTES}). */
  maxFrameBytes?: number;
  /**
   * The client's frames only: marks that must not go to this upstream (./body-tripwire.ts). Payloads
   * are watched across a message's fragments (a mark's first bytes are held back until the next
   * fragment says what they are), control frames one by one; at a mark, `onHit` hears its owners and
   * the stream fails with 1008 (policy violation) before any byte of the mark is passed on.
   */
  tripwire?: { marks: TripwireMarks<unknown>; onHit(owners: readonly unknown[]): void };
}

/** A parsed frame head. */
interface Head {
  fin: boolean;
  opcode: number;
  /** Bytes of the head, masking key included. */
  size: number;
  length: number;
  masked: boolean;
}

/** A data frame passed on as its payload arrives (see {@link STREAM_ABOVE}). */
interface StreamedFrame {
  opcode: number;
  fin: boolean;
  /** The masking key (a client's frame). */
  key: Buffer | null;
  /** Payload bytes still to come, and those that came. */
  left: number;
  at: number;
  /** A fragment of it went on (the next ones are continuations). */
  started: boolean;
}

/** A FIFO of byte chunks: takes exact lengths without concatenating on every push. */
class ByteQueue {
  #chunks: Buffer[] = [];
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.#chunks.push(b);
    this.length += b.length;
  }

  /** The first `n` bytes (n ≤ length), without consuming them. */
  peek(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    return Buffer.concat(this.#chunks, Math.min(this.length, Math.max(n, 0))).subarray(0, n);
  }

  /** Removes and returns the first `n` bytes (n ≤ length), as a buffer of its own. */
  take(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.#chunks[0]!;
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
      if (k === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(k);
    }
    this.length -= n;
    return out;
  }
}

/** XORs `data` in place with the 4-byte `key` (masking and unmasking are the same). */
function xorMask(data: Buffer, key: Buffer): void {
  for (let i = 0; i < data.length; i++) data[i] = data[i]! ^ key[i & 3]!;
}

/** One frame's bytes: head (minimal length encoding) and payload, masked with a fresh key if `mask`. */
export function encodeFrame(fin: boolean, opcode: number, payload: Buffer, mask: boolean): Buffer {
  const len = payload.length;
  const ext = len < 126 ? 0 : len < 65536 ? 2 : 8;
  const out = Buffer.allocUnsafe(2 + ext + (mask ? 4 : 0) + len);
  out[0] = (fin ? 0x80 : 0) | opcode;
  out[1] = (mask ? 0x80 : 0) | (ext === 0 ? len : ext === 2 ? 126 : 127);
  if (ext === 2) out.writeUInt16BE(len, 2);
  else if (ext === 8) {
    out.writeUInt32BE(Math.floor(len / 2 ** 32), 2);
    out.writeUInt32BE(len >>> 0, 6);
  }
  let at = 2 + ext;
  if (mask) {
    // RFC 6455 §5.3: a fresh, unpredictable key per frame.
    const key = randomFillSync(Buffer.allocUnsafe(4));
    key.copy(out, at);
    at += 4;
    payload.copy(out, at);
    xorMask(out.subarray(at), key);
  } else payload.copy(out, at);
  return out;
}

/** A close frame with `code` (masked if sent as a client). */
export function closeFrame(code: number, mask: boolean): Buffer {
  const body = Buffer.alloc(2);
  body.writeUInt16BE(code, 0);
  return encodeFrame(true, 0x8, body, mask);
}

/**
 * Parses one direction's frames and writes them rewritten (see the module comment). A frame that
 * cannot be passed on ends the stream with a {@link FrameError}; the caller closes the connection.
 */
export class FrameRewriter extends Transform {
  readonly #clientSide: boolean;
  readonly #patterns: ScrubPatterns | undefined;
  readonly #max: number;
  readonly #queue = new ByteQueue();
  #head: Head | null = null;
  /** The data message in progress (its first frame came without FIN), and its scrubber. */
  #inMessage = false;
  #scrubber: Scrubber | null = null;
  readonly #wire: FrameRewriterOptions["tripwire"];
  /** The tripwire's scrubber for the data message in progress. */
  #watch: Scrubber | null = null;
  /** A data frame above {@link STREAM_ABOVE} whose payload is passed on as it arrives. */
  #stream: StreamedFrame | null = null;

  constructor(o: FrameRewriterOptions) {
    super();
    this.#clientSide = o.from === "client";
    this.#patterns = o.patterns;
    this.#max = o.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.#wire = o.from === "client" ? o.tripwire : undefined;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, callback: TransformCallback): void {
    try {
      this.#queue.push(chunk);
      for (;;) {
        if (this.#stream !== null) {
          if (!this.#pump(this.#stream)) break;
          continue;
        }
        if (this.#head === null) {
          this.#head = this.#parseHead();
          if (this.#head === null) break;
        }
        const h = this.#head;
        if (h.opcode < 8 && h.length > STREAM_ABOVE) {
          // Too long to hold whole: its payload goes on in fragments as it comes.
          if (this.#queue.length < h.size) break;
          const head = this.#queue.take(h.size);
          this.#head = null;
          this.#inMessage = true;
          this.#stream = { opcode: h.opcode, fin: h.fin, key: h.masked ? head.subarray(h.size - 4) : null, left: h.length, at: 0, started: false };
          continue;
        }
        if (this.#queue.length < h.size + h.length) break;
        this.#head = null;
        this.#frame(h, this.#queue.take(h.size + h.length));
      }
      callback();
    } catch (e) {
      callback(e as Error);
    }
  }

  /** The next frame's head once enough bytes came, else null; throws on a frame that breaks the rules. */
  #parseHead(): Head | null {
    const q = this.#queue;
    if (q.length < 2) return null;
    const two = q.peek(2);
    const b0 = two[0]!;
    const b1 = two[1]!;
    const fin = (b0 & 0x80) !== 0;
    const opcode = b0 & 0x0f;
    const masked = (b1 & 0x80) !== 0;
    if ((b0 & 0x70) !== 0) throw new FrameError(CLOSE_PROTOCOL_ERROR, "a frame with RSV bits set (no extension was negotiated)");
    if (!(opcode <= 2 || (opcode >= 8 && opcode <= 10))) throw new FrameError(CLOSE_PROTOCOL_ERROR, `a frame with the unknown opcode ${opcode}`);
    if (masked !== this.#clientSide) throw new FrameError(CLOSE_PROTOCOL_ERROR, this.#clientSide ? "an unmasked client frame" : "a masked server frame");
    const len7 = b1 & 0x7f;
    const ext = len7 === 126 ? 2 : len7 === 127 ? 8 : 0;
    const size = 2 + ext + (masked ? 4 : 0);
    if (q.length < 2 + ext) return null;
    let length = len7;
    if (ext === 2) length = q.peek(4).readUInt16BE(2);
    else if (ext === 8) {
      const b = q.peek(10);
      const hi = b.readUInt32BE(2);
      if (hi > 0x7fffffff) throw new FrameError(CLOSE_PROTOCOL_ERROR, "a frame length with its most significant bit set");
      length = hi * 2 ** 32 + b.readUInt32BE(6);
    }
    // Before its payload is read: the cap is what bounds the proxy's memory.
    if (length > this.#max) throw new FrameError(CLOSE_TOO_BIG, `a frame of ${length} bytes, above the cap of ${this.#max}`);
    if (opcode >= 8 && (!fin || length > 125)) throw new FrameError(CLOSE_PROTOCOL_ERROR, "a fragmented or oversized control frame");
    if (opcode === 0 && !this.#inMessage) throw new FrameError(CLOSE_PROTOCOL_ERROR, "a continuation frame with no message to continue");
    if ((opcode === 1 || opcode === 2) && this.#inMessage) throw new FrameError(CLOSE_PROTOCOL_ERROR, "a new message inside a fragmented one");
    return { fin, opcode, size, length, masked };
  }

  /**
   * Passes on the next piece of a streamed frame's payload, as one fragment, once a whole piece (or
   * the rest of the frame) came; true when the frame is done.
   */
  #pump(f: StreamedFrame): boolean {
    const n = Math.min(f.left, STREAM_PIECE);
    if (this.#queue.length < n) return false;
    const piece = this.#queue.take(n);
    if (f.key !== null) for (let i = 0; i < n; i++) piece[i] = piece[i]! ^ f.key[(f.at + i) & 3]!;
    f.at += n;
    f.left -= n;
    const last = f.left === 0;
    if (last) {
      this.#stream = null;
      if (f.fin) this.#inMessage = false;
    }
    const out = this.#dataPayload(piece, f.fin && last);
    // A message's first fragment carries its opcode; the frame's last one, its FIN.
    if (out.length > 0 || (last && (f.fin || !f.started))) {
      this.push(encodeFrame(f.fin && last, f.started ? 0 : f.opcode, out, this.#clientSide));
      f.started = true;
    }
    return last;
  }

  /**
   * A data payload through the tripwire and the patterns, whose state follows the message across its
   * fragments (`fin`: this ends the message); what is to be sent of it.
   */
  #dataPayload(payload: Buffer, fin: boolean): Buffer {
    const wire = this.#wire;
    if (wire) {
      this.#watch ??= new Scrubber(wire.marks.patterns);
      const seen = this.#watch.push(payload);
      if (fin) seen.push(...this.#watch.end());
      if (this.#watch.replaced > 0) this.#trip(wire.marks.ownersIn(seen));
      if (fin) this.#watch = null;
      payload = Buffer.concat(seen);
    }
    const patterns = this.#patterns;
    if (!patterns) return payload;
    this.#scrubber ??= new Scrubber(patterns);
    const parts = this.#scrubber.push(payload);
    if (fin) {
      parts.push(...this.#scrubber.end());
      this.#scrubber = null;
    }
    return Buffer.concat(parts);
  }

  /** Passes on one whole frame (`raw`: its head and payload as received, ours to change). */
  #frame(h: Head, raw: Buffer): void {
    if (h.opcode !== 0 && h.opcode < 8) this.#inMessage = true;
    if (h.fin && h.opcode < 8) this.#inMessage = false;
    const patterns = this.#patterns;
    const wire = this.#wire;
    // The client's control frames, and any frame when there is nothing to replace or watch, pass as they came.
    if ((!patterns && !wire) || (this.#clientSide && h.opcode >= 8 && !wire)) {
      this.push(raw);
      return;
    }
    let payload = raw.subarray(h.size);
    if (h.masked) xorMask(payload, raw.subarray(h.size - 4, h.size));
    if (wire && h.opcode >= 8) {
      // A client's control frame (a close reason, a ping) is watched on its own, and passes unchanged
      // (re-masked: its payload was unmasked in place).
      const found = wire.marks.find([payload]);
      if (found.length > 0) this.#trip(found);
      this.push(encodeFrame(true, h.opcode, payload, true));
      return;
    }
    if (h.opcode >= 8) {
      // A server's control frame (a client's passed or was watched above): its payload is scrubbed (a
      // close reason or a pong could echo a secret), and cut back to what a control frame may hold if
      // that grew it.
      if (!patterns) return; // unreachable: such a frame passed as it came, above
      let out = scrub(payload, patterns);
      if (out.length > 125) out = h.opcode === 0x8 ? out.subarray(0, 2) : Buffer.alloc(0);
      this.push(encodeFrame(true, h.opcode, out, false));
      return;
    }
    this.push(encodeFrame(h.fin, h.opcode, this.#dataPayload(payload, h.fin), this.#clientSide));
  }

  /** The tripwire fired: tell, and fail the stream before the frame is passed on. */
  #trip(owners: readonly unknown[]): never {
    this.#wire!.onHit(owners);
    throw new FrameError(CLOSE_POLICY_VIOLATION, "a frame carried a credential to a host its lease does not cover");
  }
}
