/**
 * Reads a whole file (or an inherited descriptor such as stdin) into memory, at most a given number
 * of bytes: a device such as /dev/zero, a fifo or an endless pipe given where a file was expected
 * ends with an answer, not with the process's memory.
 */
import { isUtf8 } from "node:buffer";
import { closeSync, openSync, readSync } from "node:fs";

/** What {@link readCappedSync} read, or that there was more than it may read. */
export type Capped = { bytes: Buffer } | { tooLarge: true };

/**
 * Reads `from` (a path, or a descriptor it does not close) to its end, or stops once it has read more
 * than `max` bytes. Errors of the open or the read are thrown as they are (with their `code`).
 */
export function readCappedSync(from: string | number, max: number): Capped {
  const fd = typeof from === "number" ? from : openSync(from, "r");
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for (;;) {
      const chunk = Buffer.allocUnsafe(64 * 1024);
      let n: number;
      try {
        n = readSync(fd, chunk, 0, chunk.length, null);
      } catch (e) {
        // A non-blocking descriptor with nothing yet (a terminal or pipe set so by another process).
        if ((e as NodeJS.ErrnoException).code === "EAGAIN") {
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
          continue;
        }
        throw e;
      }
      if (n === 0) break;
      chunks.push(chunk.subarray(0, n));
      total += n;
      if (total > max) {
        for (const c of chunks) c.fill(0);
        return { tooLarge: true };
      }
    }
    const bytes = Buffer.concat(chunks, total);
    for (const c of chunks) c.fill(0);
    return { bytes };
  } finally {
    if (typeof from !== "number") closeSync(fd);
  }
}

/**
 * The 1-based line of the first byte sequence in `bytes` that is not UTF-8, or null when all of it
 * is UTF-8 (for an error that names where, never what).
 */
export function firstNonUtf8Line(bytes: Buffer): number | null {
  if (isUtf8(bytes)) return null;
  let line = 1;
  let start = 0;
  for (;;) {
    const nl = bytes.indexOf(0x0a, start);
    const end = nl < 0 ? bytes.length : nl;
    if (!isUtf8(bytes.subarray(start, end))) return line;
    if (nl < 0) return line;
    start = nl + 1;
    line++;
  }
}
