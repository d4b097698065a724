/**
 * A one-holder lock file: `<dir>/<name>` names the live process that holds it. A lock left by a dead
 * process (or holding garbage) is recovered; a lock held by a live process is reported. `<name>.break`
 * exists only for the microseconds in which a stale lock is being cleared. Used for the daemon's lock
 * (src/server/lock.ts) and the sandboxed runs' registry (src/sandbox/run-holds.ts).
 *
 * File format (the first line alone is a classic pid file):
 *   <pid>
 *   start=<process start time in clock ticks since boot, from /proc/<pid>/stat field 22, or "unknown">
 *   started=<ISO time the lock was taken>
 */
import { randomBytes } from "node:crypto";
import { closeSync, constants, fstatSync, linkSync, lstatSync, openSync, readSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { basename, join } from "node:path";
import { VaultError } from "../base/errors.js";
import { isRunning, startTime, type ProcessId } from "./process-identity.js";

/** A held lock (the daemon's, or another one-holder lock). */
export interface HeldLock {
  /** Full path of the lock file. */
  readonly path: string;
  /** True when a lock left by a dead process (or an unreadable one) was replaced; the daemon may log it. */
  readonly recoveredStale: boolean;
  /** The pid named in the replaced lock file, when it named one. */
  readonly previousPid?: number;
  /** Removes the lock file if it still holds this process's pid and start time. Safe to call twice. */
  release(): void;
}

/** A lock file as read: its identity (device, inode, text: inode numbers alone are reused at once) and holder. */
interface Seen {
  dev: number;
  ino: number;
  text: string;
  holder: ProcessId | null;
}

const NOFOLLOW = constants.O_NOFOLLOW ?? 0;
const MAX_ATTEMPTS = 200;

/**
 * Takes the lock file `<dir>/<name>` (the daemon's, or another one-holder lock such as
 * src/sandbox/run-holds.ts's), or returns the live process that holds it.
 *
 * The lock is created atomically with its full contents: written to a private temp file (O_CREAT|O_EXCL,
 * 0600) and hard-linked into place (link never replaces), so no process ever reads a half-written lock.
 * A stale lock is removed only while holding a second, short-lived lock (`<name>.break`) and only if
 * it is still the very file judged stale (same inode and contents); then creation is tried again. So when several
 * processes start at once over a stale lock, exactly one wins.
 */
export function tryLockFile(dir: string, name: string): HeldLock | { heldBy: ProcessId } {
  const path = join(dir, name);
  const breaker = `${name}.break`;
  const me: ProcessId = { pid: process.pid, start: startTime(process.pid) };
  const content = `${me.pid}\nstart=${me.start ?? "unknown"}\nstarted=${new Date().toISOString()}\n`;
  let recoveredStale = false;
  let previousPid: number | undefined;

  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    if (createExclusive(dir, path, content)) return heldLock(path, me, recoveredStale, previousPid);

    const seen = inspect(path);
    if (seen === null) continue; // removed in between: try to create again
    if (seen.holder !== null && isRunning(seen.holder)) return { heldBy: seen.holder };
    if (!takeBreaker(dir, breaker, content)) {
      sleep(5); // another process is clearing the stale lock right now
      continue;
    }
    try {
      const again = inspect(path);
      if (again !== null && sameFile(again, seen)) {
        unlinkSync(path);
        recoveredStale = true;
        previousPid = seen.holder?.pid ?? previousPid;
      }
    } finally {
      unlinkQuietly(join(dir, breaker));
    }
  }
  throw new VaultError("unavailable", `could not take the lock ${path}: other processes keep changing it; stop them and try again.`);
}

/** Takes `<dir>/<breaker>`, clearing it first if its holder died; false if a live process holds it. */
function takeBreaker(dir: string, breaker: string, content: string): boolean {
  const path = join(dir, breaker);
  if (createExclusive(dir, path, content)) return true;
  const seen = inspect(path);
  if (seen === null) return false;
  if (seen.holder !== null && isRunning(seen.holder)) return false;
  // Its holder died inside the few microseconds it holds it: remove it if it is still that file.
  removeIfSame(path, seen);
  return false;
}

/** Blocks for `ms` milliseconds (only used for a few ms while another process clears a stale lock). */
function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone
  }
}

/** Creates `path` with `content` only if it does not exist. False if it exists. */
function createExclusive(home: string, path: string, content: string): boolean {
  const tmp = join(home, `${basename(path)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  let fd: number;
  try {
    fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | NOFOLLOW, 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new VaultError("unavailable", `cannot create the lock ${path} (${code}); check that its directory exists and is writable.`);
  }
  try {
    writeSync(fd, content);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(tmp, path);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return false;
    if (code === "EPERM" || code === "ENOTSUP" || code === "EOPNOTSUPP") return createDirect(path, content);
    throw new VaultError("unavailable", `cannot create the lock ${path} (${code}); check that its directory is writable.`);
  } finally {
    unlinkQuietly(tmp);
  }
}

/** Fallback for file systems without hard links: O_CREAT|O_EXCL on the lock itself. */
function createDirect(path: string, content: string): boolean {
  let fd: number;
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | NOFOLLOW, 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw e;
  }
  try {
    writeSync(fd, content);
  } finally {
    closeSync(fd);
  }
  return true;
}

/** Reads the lock file without following links: its identity and holder (null holder = garbage). */
function inspect(path: string): Seen | null {
  let fd: number;
  try {
    const st = lstatSync(path);
    if (!st.isFile()) {
      throw new VaultError("unavailable", `${path} exists and is not a regular file; remove it and try again.`);
    }
    fd = openSync(path, constants.O_RDONLY | NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    if (e instanceof VaultError) throw e;
    throw new VaultError("unavailable", `cannot read the lock ${path} (${(e as NodeJS.ErrnoException).code}); check its permissions.`);
  }
  try {
    const st = fstatSync(fd);
    const buf = Buffer.alloc(4096);
    const n = readSync(fd, buf, 0, buf.length, 0);
    const text = buf.subarray(0, n).toString("utf8");
    return { dev: st.dev, ino: st.ino, text, holder: parse(text) };
  } finally {
    closeSync(fd);
  }
}

/** Parses lock-file text; null when it is not a lock this module wrote. */
function parse(text: string): ProcessId | null {
  const lines = text.split("\n");
  const first = lines[0]?.trim() ?? "";
  if (!/^[1-9][0-9]{0,9}$/.test(first)) return null;
  const pid = Number(first);
  if (pid > 0x7fffffff) return null;
  const startLine = lines.find((l) => l.startsWith("start="));
  const start = startLine?.slice("start=".length).trim() ?? "unknown";
  return { pid, start: /^[0-9]+$/.test(start) ? start : null };
}

function sameFile(a: Seen, b: Seen): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.text === b.text;
}

/** Removes `path` only if it is still the file judged stale. True when it was removed. */
function removeIfSame(path: string, seen: Seen): boolean {
  const aside = `${path}.stale-${process.pid}-${randomBytes(6).toString("hex")}`;
  try {
    renameSync(path, aside);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw new VaultError("unavailable", `cannot replace the stale lock ${path} (${(e as NodeJS.ErrnoException).code}); remove it by hand.`);
  }
  const moved = inspect(aside);
  if (moved === null) return false;
  if (!sameFile(moved, seen)) {
    // Another process replaced the stale lock in between: put its lock back and look again.
    try {
      linkSync(aside, path);
    } catch {
      // a third lock appeared meanwhile; it will be inspected on the next attempt
    }
    unlinkSync(aside);
    return false;
  }
  unlinkSync(aside);
  return true;
}

function heldLock(path: string, me: ProcessId, recoveredStale: boolean, previousPid: number | undefined): HeldLock {
  let released = false;
  const lock: HeldLock = {
    path,
    recoveredStale,
    ...(previousPid !== undefined ? { previousPid } : {}),
    release(): void {
      if (released) return;
      released = true;
      try {
        const seen = inspect(path);
        if (seen?.holder?.pid !== me.pid || seen.holder.start !== me.start) return; // not ours any more
        unlinkSync(path);
      } catch {
        // not a regular file or not removable: leave it; the next start recovers a stale lock anyway
      }
    },
  };
  return lock;
}
