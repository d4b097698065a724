/**
 * An append-only JSONL file of audit events (one JSON object per line, fsynced before any operation
 * whose events it holds returns), for shipping to a log pipeline or keeping a copy outside the
 * database. Created 0600; an existing one must be a private regular file of yours (see jsonlSink), and
 * one removed or replaced while lessor runs refuses the operations whose lines it would have held
 * (checked before each operation changes anything: `check`). A write that fails (a full disk) leaves
 * the file as it was, and fails the operations whose lines it held; they were committed already, so
 * the error says that their result was withheld, not that they were refused.
 *
 * Group write: the operations of one store commit reach the sinks one after another in the same
 * turn of the event loop; their lines are collected and written together (in full) with one fdatasync,
 * after which every one of them resolves (or, if the write fails, every one fails with
 * audit_failed). Lines keep the order in which the operations handed them over.
 */
import { closeSync, constants, fdatasyncSync, fstatSync, ftruncateSync, openSync, statSync, writeSync } from "node:fs";
import { VaultError } from "../base/errors.js";
import { safeJson } from "../base/text.js";
import type { AuditSink } from "../vault/ports.js";
import { eventJson } from "./sink.js";
import { octal, privateProblem } from "../fs/perms.js";

const POSIX = process.platform !== "win32";

/**
 * Opens (creating if needed, 0600) `path` for appending. It must be a regular file of yours that no
 * other user can read or write, reached without a symbolic link: another user's file (or a link planted
 * in a shared directory) would get a copy of the trail to read or rewrite. Refused with audit_failed.
 */
export function jsonlSink(path: string): AuditSink {
  let fd: number;
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | (POSIX ? constants.O_NOFOLLOW | constants.O_NONBLOCK : 0), 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ELOOP")
      throw new VaultError("audit_failed", `the audit file ${path} is a symbolic link; lessor writes the audit copy only to a file itself: point [audit] jsonl at a file in a directory of yours`);
    throw new VaultError("audit_failed", `cannot open the audit file ${path} (${code ?? "error"}); check the path and its directory's permissions`);
  }
  const st = fstatSync(fd);
  // The same "private to you" test as the key files (src/fs/perms.ts).
  const priv = st.isFile() ? privateProblem(st) : null;
  const problem = !st.isFile()
    ? "is not a regular file"
    : priv === "owner"
      ? `belongs to uid ${st.uid}, not to you`
      : priv === "mode"
        ? `can be read or changed by other users (mode ${octal(st.mode)}); fix it with: chmod 600 ${path}`
        : null;
  if (problem !== null) {
    closeSync(fd);
    throw new VaultError("audit_failed", `the audit file ${path} ${problem}; lessor keeps the audit copy only in a private file of yours`);
  }
  const opened = { dev: st.dev, ino: st.ino };
  let lines: string[] = [];
  let waiting: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  let scheduled = false;

  /** Throws unless the file at the path is still the one open here (one deleted or replaced would take the lines nowhere). */
  const sameFile = (): void => {
    const now = statSync(path, { throwIfNoEntry: false });
    if (now === undefined || now.dev !== opened.dev || now.ino !== opened.ino)
      throw Object.assign(new Error("replaced"), { code: now === undefined ? "ENOENT: it was removed" : "it was replaced by another file" });
  };

  /**
   * Appends all of `data`: write() may take only part of it (a full disk, a file-size limit), so it is
   * called until everything is written; one that fails leaves the file cut back to `start`, its length
   * before, so that it never ends in a torn line.
   */
  const append = (data: Buffer, start: number): void => {
    let done = 0;
    try {
      while (done < data.length) {
        const n = writeSync(fd, data, done, data.length - done);
        if (n <= 0) throw Object.assign(new Error("short write"), { code: "ENOSPC" });
        done += n;
      }
      fdatasyncSync(fd);
    } catch (e) {
      if (done > 0) {
        try {
          ftruncateSync(fd, start);
        } catch {
          // the write's own error is the one reported
        }
      }
      throw e;
    }
  };

  /** Writes and syncs everything collected so far, then settles its writers. */
  const flush = (): void => {
    scheduled = false;
    const text = lines.join("");
    const writers = waiting;
    lines = [];
    waiting = [];
    try {
      // Fail closed: the lines go to the file open here, or the operations fail.
      sameFile();
      append(Buffer.from(text, "utf8"), fstatSync(fd).size);
    } catch (e) {
      // The operations were committed to the store before their lines reach the file (the sink runs
      // after the commit): say so, rather than call them refused.
      const err = new VaultError(
        "audit_failed",
        `the change was committed, but its audit line could not be written to ${path} (${(e as NodeJS.ErrnoException).code ?? "error"}); the result was withheld (free space or restore the file, or restart lessor to make a new one)`,
      );
      for (const w of writers) w.reject(err);
      return;
    }
    for (const w of writers) w.resolve();
  };

  return {
    write(events) {
      if (events.length === 0) return;
      let text = "";
      for (const e of events) text += `${safeJson(eventJson(e))}\n`;
      lines.push(text);
      const done = new Promise<void>((resolve, reject) => waiting.push({ resolve, reject }));
      if (!scheduled) {
        scheduled = true;
        // After the other operations of this commit, which are already queued as microtasks.
        queueMicrotask(flush);
      }
      return done;
    },
    check() {
      try {
        sameFile();
      } catch (e) {
        throw new VaultError(
          "audit_failed",
          `the audit file ${path} cannot be written (${(e as NodeJS.ErrnoException).code ?? "error"}); the operation was refused and nothing was changed (restore the file, or restart lessor to make a new one)`,
        );
      }
    },
    close() {
      if (lines.length > 0) flush();
      closeSync(fd);
    },
  };
}
