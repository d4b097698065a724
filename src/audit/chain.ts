/**
 * The audit hash chain. Each event's hash is SHA-256 over a domain label, the previous event's hash,
 * and every field of the event, each length-prefixed so that no two different events encode alike.
 * A keyed checkpoint (HMAC of the head's seq and hash under a key derived from the master key) is
 * rewritten with every append, so that removing events from the end is detected too.
 */
import { createHash, createHmac, hkdfSync, timingSafeEqual } from "node:crypto";
import type { MasterKey } from "../crypto/keyring.js";
import { uuidv7 } from "../vault/ids.js";
import type { AuditCheckpoint, AuditDraft, AuditRecord } from "../vault/types.js";

/** The hash that stands before the first event. */
export const GENESIS = Buffer.alloc(32);

const HASH_LABEL = "lessor audit chain v1";
const CHECKPOINT_LABEL = "lessor audit checkpoint v1";
const NULL_LEN = 0xffffffff;

function field(parts: Buffer[], value: string | number | null): void {
  const len = Buffer.alloc(4);
  if (value === null) {
    len.writeUInt32BE(NULL_LEN);
    parts.push(len);
    return;
  }
  const bytes = Buffer.from(typeof value === "number" ? String(value) : value, "utf8");
  len.writeUInt32BE(bytes.length);
  parts.push(len, bytes);
}

/** SHA-256 over prevHash and every field of the record (its own `hash` excluded). */
export function hashEvent(rec: Omit<AuditRecord, "hash">): Buffer {
  const parts: Buffer[] = [];
  field(parts, HASH_LABEL);
  parts.push(Buffer.from(rec.prevHash));
  field(parts, rec.seq);
  field(parts, rec.id);
  field(parts, rec.time);
  field(parts, rec.type);
  field(parts, rec.actorId);
  field(parts, rec.actorRole);
  field(parts, rec.transport);
  field(parts, rec.agent);
  field(parts, rec.secret);
  field(parts, rec.leaseId);
  field(parts, rec.domain);
  field(parts, rec.outcome);
  field(parts, rec.reason);
  field(parts, rec.detail);
  return createHash("sha256").update(Buffer.concat(parts)).digest();
}

/** Turns a draft into the next chained record after `head` (null for an empty trail). */
export function chainEvent(
  head: { seq: number; hash: Uint8Array } | null,
  draft: AuditDraft,
  time: number,
): AuditRecord {
  const base: Omit<AuditRecord, "hash"> = {
    seq: (head?.seq ?? 0) + 1,
    id: uuidv7(time),
    time,
    type: draft.type,
    actorId: draft.actor.id,
    actorRole: draft.actor.role,
    transport: draft.actor.transport,
    agent: draft.agent ?? null,
    secret: draft.secret ?? null,
    leaseId: draft.leaseId ?? null,
    domain: draft.domain ?? null,
    outcome: draft.outcome,
    reason: draft.reason ?? null,
    detail: draft.detail ? JSON.stringify(draft.detail) : null,
    prevHash: head ? Buffer.from(head.hash) : GENESIS,
  };
  return { ...base, hash: hashEvent(base) };
}

/** The checkpoint MAC key, derived from a master key with HKDF-SHA256. */
export function checkpointKey(master: MasterKey): { id: string; key: Buffer } {
  const key = Buffer.from(hkdfSync("sha256", master.key, Buffer.alloc(0), CHECKPOINT_LABEL, 32));
  return { id: master.id, key };
}

function checkpointMac(key: Buffer, seq: number, hash: Uint8Array): Buffer {
  const seqBytes = Buffer.alloc(8);
  seqBytes.writeBigUInt64BE(BigInt(seq));
  return createHmac("sha256", key).update(CHECKPOINT_LABEL).update(seqBytes).update(hash).digest();
}

/** A checkpoint for the record that is now the head. */
export function makeCheckpoint(head: AuditRecord, key: { id: string; key: Buffer }): AuditCheckpoint {
  return { seq: head.seq, hash: Buffer.from(head.hash), keyId: key.id, mac: checkpointMac(key.key, head.seq, head.hash) };
}

/** True when the checkpoint's MAC is right for its seq and hash under `key`. */
export function checkpointValid(cp: AuditCheckpoint, key: { key: Buffer }): boolean {
  const want = checkpointMac(key.key, cp.seq, cp.hash);
  return cp.mac.length === want.length && timingSafeEqual(Buffer.from(cp.mac), want);
}
