/**
 * An append-only JSONL file of audit events (one JSON object per line, fsynced per write), for
 * shipping to a log pipeline or keeping a copy outside the database. Created 0600.
 */
import { closeSync, fdatasyncSync, openSync, writeSync } from "node:fs";
import { VaultError } from "../vault/errors.js";
import { eventJson, type AuditSink } from "./sink.js";

/** Opens (creating if needed) `path` for appending. */
export function jsonlSink(path: string): AuditSink {
  let fd: number;
  try {
    fd = openSync(path, "a", 0o600);
  } catch (e) {
    throw new VaultError("audit_failed", `cannot open the audit file ${path} (${(e as NodeJS.ErrnoException).code ?? "error"}); check the path and its directory's permissions`);
  }
  return {
    write(events) {
      if (events.length === 0) return;
      const text = events.map((e) => JSON.stringify(eventJson(e))).join("\n") + "\n";
      try {
        writeSync(fd, text);
        fdatasyncSync(fd);
      } catch (e) {
        throw new VaultError("audit_failed", `cannot write the audit file ${path} (${(e as NodeJS.ErrnoException).code ?? "error"}); the operation was refused`);
      }
    },
    close() {
      closeSync(fd);
    },
  };
}
