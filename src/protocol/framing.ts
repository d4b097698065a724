/**
 * Frames: a 4-byte big-endian length, then that many bytes of UTF-8 JSON. The cap (default 1 MiB)
 * is checked on the length prefix, before any body is buffered. A body that is not valid UTF-8 is
 * refused ({@link frameText}), never repaired.
 */

/** The default and largest frame body size, in bytes. */
export const MAX_FRAME_BYTES = 1024 * 1024;

/** Thrown by {@link FrameDecoder.push} when a frame announces more than the cap. */
export class FrameTooLarge extends Error {
  constructor(readonly length: number, readonly max: number) {
    super(`a frame of ${length} bytes is over the ${max}-byte limit`);
  }
}

/**
 * Encodes one message as a frame. `wipeable`: in a buffer of its own (not a slice of Node's shared
 * pool), for a frame that carries a secret and is zeroed once written.
 */
export function encodeFrame(message: unknown, wipeable = false): Buffer {
  const json = JSON.stringify(message);
  const len = Buffer.byteLength(json, "utf8");
  const out = wipeable ? Buffer.allocUnsafeSlow(4 + len) : Buffer.allocUnsafe(4 + len);
  out.writeUInt32BE(len, 0);
  out.write(json, 4, "utf8");
  return out;
}

/** Throws on invalid UTF-8; keeps a leading BOM, as Buffer#toString does (JSON.parse then refuses it). */
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * A frame body as text, or null when it is not valid UTF-8 (a stray continuation byte, a truncated
 * sequence, an overlong form, an encoded surrogate, a code point past U+10FFFF). Decoding such bytes
 * the lenient way would put U+FFFD in their place, so a reason, a name or a secret value sent as text
 * would be accepted altered, and two different frames would read the same; a receiver refuses them
 * with `invalid_request` instead.
 */
export function frameText(body: Buffer): string | null {
  try {
    return strictUtf8.decode(body);
  } catch {
    return null;
  }
}

/**
 * Splits a byte stream into frame bodies. Feed it chunks with {@link push}; it returns the complete
 * bodies so far. {@link pending} tells whether part of a frame is buffered (for read timeouts).
 */
export class FrameDecoder {
  #chunks: Buffer[] = [];
  #size = 0;
  #need = -1;

  constructor(readonly maxBytes: number = MAX_FRAME_BYTES) {}

  /** True while a partial frame is buffered. */
  get pending(): boolean {
    return this.#size > 0 || this.#need >= 0;
  }

  /**
   * Adds a chunk; returns the complete frame bodies it finished. Throws FrameTooLarge. The bytes of a
   * frame that spans chunks are copied out and zeroed in the chunks given: pass buffers nothing else
   * reuses (a socket's reads, not a constant frame handed over by an in-memory stream).
   */
  push(chunk: Buffer): Buffer[] {
    this.#chunks.push(chunk);
    this.#size += chunk.length;
    const out: Buffer[] = [];
    for (;;) {
      if (this.#need < 0) {
        if (this.#size < 4) break;
        const head = this.#take(4);
        const len = head.readUInt32BE(0);
        if (len > this.maxBytes) throw new FrameTooLarge(len, this.maxBytes);
        this.#need = len;
      }
      if (this.#size < this.#need) break;
      out.push(this.#take(this.#need));
      this.#need = -1;
    }
    return out;
  }

  #take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    let buf: Buffer;
    const first = this.#chunks[0]!;
    if (first.length >= n) {
      buf = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      buf = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.#chunks[0]!;
        const k = Math.min(c.length, n - at);
        c.copy(buf, at, 0, k);
        // The read buffer's copy of the frame is zeroed: a receiver that zeroes a body holding a
        // secret value (the client, once decoded) leaves no copy behind in the socket's chunks.
        c.fill(0, 0, k);
        at += k;
        if (k === c.length) this.#chunks.shift();
        else this.#chunks[0] = c.subarray(k);
      }
    }
    this.#size -= n;
    return buf;
  }
}
