/**
 * The audit hash chain. Each event's hash is SHA-256 over a domain label, the previous event's hash,
 * and every field of the event, each length-prefixed so that no two different events encode alike.
 * A keyed checkpoint (HMAC of the head's seq and hash under a key derived from the master key) is
 * rewritten with every append, so that removing events from the end is detected too.
 */
import { createHash, createHmac, hkdfSync, timingSafeEqual, type Hash } from "node:crypto";
import type { MasterKey } from "../crypto/keyring.js";
import { uuidv7 } from "../vault/ids.js";
import type { AuditCheckpoint, AuditDraft, AuditRecord } from "../vault/types.js";

/** The hash that stands before the first event. */
export const GENESIS = Buffer.alloc(32);

const HASH_LABEL = "lessor audit chain v1";
const CHECKPOINT_LABEL = "lessor audit checkpoint v1";
const NULL_LEN = 0xffffffff;

const lenBuf = Buffer.alloc(4);

/** Feeds one length-prefixed field to the hash (null has its own length marker). */
function field(h: Hash, value: string | number | null): void {
  if (value === null) {
    lenBuf.writeUInt32BE(NULL_LEN, 0);
    h.update(lenBuf);
    return;
  }
  const text = typeof value === "number" ? String(value) : value;
  lenBuf.writeUInt32BE(Buffer.byteLength(text, "utf8"), 0);
  h.update(lenBuf);
  h.update(text, "utf8");
}

/** SHA-256 over prevHash and every field of the record (its own `hash` excluded). */
export function hashEvent(rec: Omit<AuditRecord, "hash">): Buffer {
  const h = createHash("sha256");
  field(h, HASH_LABEL);
  h.update(rec.prevHash);
  field(h, rec.seq);
  field(h, rec.id);
  field(h, rec.time);
  field(h, rec.type);
  field(h, rec.actorId);
  field(h, rec.actorRole);
  field(h, rec.transport);
  field(h, rec.agent);
  field(h, rec.secret);
  field(h, rec.leaseId);
  field(h, rec.domain);
  field(h, rec.outcome);
  field(h, rec.reason);
  field(h, rec.detail);
  return h.digest();
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
