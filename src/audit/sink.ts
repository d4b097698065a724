/**
 * Audit sinks' shared parts: the JSON form of an event, and a sink that hands each event to a
 * function as one line. The AuditSink port itself is the core's (src/vault/ports.ts); a sink that
 * fails makes the operation fail (its result is withheld), so audit is fail-closed.
 */
import { safeJson } from "../base/text.js";
import type { AuditRecord } from "../base/types.js";

/** The JSON form of an event used by the JSONL and log sinks (hashes in hex; detail parsed). */
export function eventJson(e: AuditRecord): Record<string, unknown> {
  return {
    seq: e.seq,
    id: e.id,
    time: new Date(e.time).toISOString(),
    type: e.type,
    actor: { id: e.actorId, role: e.actorRole, transport: e.transport },
    agent: e.agent,
    secret: e.secret,
    lease_id: e.leaseId,
    domain: e.domain,
    outcome: e.outcome,
    reason: e.reason,
    detail: e.detail === null ? null : (JSON.parse(e.detail) as unknown),
    prev_hash: Buffer.from(e.prevHash).toString("hex"),
    hash: Buffer.from(e.hash).toString("hex"),
    key_id: e.keyId,
  };
}

/** A sink that hands each event as one JSON line to `write` (e.g. a structured logger or stderr). */
export function logSink(write: (line: string) => void): { write(events: readonly AuditRecord[]): void } {
  return {
    write(events) {
      for (const e of events) write(safeJson({ msg: "audit", ...eventJson(e) }));
    },
  };
}
