/**
 * Durable, all-or-nothing file writes for key files. A reader sees either the old file or the whole
 * new one, never a torn mix, and the new file is on disk (file and directory entry fsynced) before
 * these functions return.
 */
import { closeSync, constants, fchmodSync, fsyncSync, linkSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { dirname } from "node:path";

/** Writes `data` to a new temporary file beside `path` with `mode`, fsynced; returns its path. */
function writeTemp(path: string, data: Uint8Array | string, mode: number): string {
  const tmp = `${path}.tmp-${randomBytes(8).toString("hex")}`;
  const fd = openSync(tmp, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, mode);
  try {
    fchmodSync(fd, mode); // the umask may have narrowed or (if odd) widened the create mode
    const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    unlinkQuiet(tmp);
    throw e;
  }
  closeSync(fd);
  return tmp;
}

function unlinkQuiet(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone
  }
}

/** Fsyncs a directory so a rename or link inside it survives a crash. */
export function fsyncDir(dir: string): void {
  const fd = openSync(dir, constants.O_RDONLY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Atomically replaces `path` with `data` (created with `mode`, default 0600): writes a temporary file
 * opened with O_CREAT|O_EXCL, fsyncs it, renames it over `path`, then fsyncs the directory.
 */
export function writeFileAtomic(path: string, data: Uint8Array | string, mode = 0o600): void {
  const tmp = writeTemp(path, data, mode);
  try {
    renameSync(tmp, path);
  } catch (e) {
    unlinkQuiet(tmp);
    throw e;
  }
  fsyncDir(dirname(path));
}

/**
 * Creates `path` with `data` only if it does not exist yet, atomically and durably (a crash leaves
 * either no file or the whole file). Throws the EEXIST error from `link` when `path` exists.
 */
export function writeFileExclusive(path: string, data: Uint8Array | string, mode = 0o600): void {
  const tmp = writeTemp(path, data, mode);
  try {
    linkSync(tmp, path); // fails with EEXIST rather than replacing an existing file
  } finally {
    unlinkQuiet(tmp);
  }
  fsyncDir(dirname(path));
}
