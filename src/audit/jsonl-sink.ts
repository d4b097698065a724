/**
 * An append-only JSONL file of audit events (one JSON object per line, fsynced before any operation
 * whose events it holds returns), for shipping to a log pipeline or keeping a copy outside the
 * database. Created 0600.
 *
 * Group write: the operations of one store commit reach the sinks one after another in the same
 * turn of the event loop; their lines are collected and written with one write and one fdatasync,
 * after which every one of them resolves (or, if the write fails, every one fails with
 * audit_failed). Lines keep the order in which the operations handed them over.
 */
import { closeSync, fdatasyncSync, openSync, writeSync } from "node:fs";
import { VaultError } from "../base/errors.js";
import { safeJson } from "../base/text.js";
import type { AuditSink } from "../vault/ports.js";
import { eventJson } from "./sink.js";

/** Opens (creating if needed) `path` for appending. */
export function jsonlSink(path: string): AuditSink {
  let fd: number;
  try {
    fd = openSync(path, "a", 0o600);
  } catch (e) {
    throw new VaultError("audit_failed", `cannot open the audit file ${path} (${(e as NodeJS.ErrnoException).code ?? "error"}); check the path and its directory's permissions`);
  }
  let lines: string[] = [];
  let waiting: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  let scheduled = false;

  /** Writes and syncs everything collected so far, then settles its writers. */
  const flush = (): void => {
    scheduled = false;
    const text = lines.join("");
    const writers = waiting;
    lines = [];
    waiting = [];
    try {
      writeSync(fd, text);
      fdatasyncSync(fd);
    } catch (e) {
      const err = new VaultError("audit_failed", `cannot write the audit file ${path} (${(e as NodeJS.ErrnoException).code ?? "error"}); the operation was refused`);
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
    close() {
      if (lines.length > 0) flush();
      closeSync(fd);
    },
  };
}
