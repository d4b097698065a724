/**
 * The audit hash chain. Each event's hash is SHA-256 over a domain label, the previous event's hash,
 * and every field of the event, each length-prefixed so that no two different events encode alike.
 * A keyed checkpoint (HMAC of the head's seq and hash under a key derived from the master key) is
 * rewritten in every commit that appends, so that removing events from the end is detected too.
 */
import { createHmac, hash, hkdfSync, timingSafeEqual } from "node:crypto";
import type { MasterKey } from "../crypto/keyring.js";
import { uuidv7 } from "../vault/ids.js";
import type { AuditCheckpoint, AuditDraft, AuditRecord } from "../vault/types.js";

/** The hash that stands before the first event. */
export const GENESIS = Buffer.alloc(32);

const HASH_LABEL = "lessor audit chain v1";
const CHECKPOINT_LABEL = "lessor audit checkpoint v1";
const NULL_LEN = 0xffffffff;

/**
 * The hash input is assembled in one reused buffer and hashed in one call (a native call per field
 * cost more than the hashing). It holds audit fields only, never secret material.
 */
let scratch = Buffer.allocUnsafe(2048);
let at = 0;

function reserve(n: number): void {
  if (at + n <= scratch.length) return;
  const bigger = Buffer.allocUnsafe(Math.max(scratch.length * 2, at + n));
  scratch.copy(bigger, 0, 0, at);
  scratch = bigger;
}

/** Appends one length-prefixed field (null has its own length marker). */
function field(value: string | number | null): void {
  if (value === null) {
    reserve(4);
    scratch.writeUInt32BE(NULL_LEN, at);
    at += 4;
    return;
  }
  const text = typeof value === "number" ? String(value) : value;
  reserve(4 + text.length * 3); // a UTF-16 code unit is at most 3 UTF-8 bytes
  const n = scratch.write(text, at + 4, "utf8");
  scratch.writeUInt32BE(n, at);
  at += 4 + n;
}

/** SHA-256 over prevHash and every field of the record (its own `hash` excluded). */
export function hashEvent(rec: Omit<AuditRecord, "hash">): Buffer {
  at = 0;
  field(HASH_LABEL);
  const prev = rec.prevHash;
  reserve(prev.byteLength);
  scratch.set(prev, at);
  at += prev.byteLength;
  field(rec.seq);
  field(rec.id);
  field(rec.time);
  field(rec.type);
  field(rec.actorId);
  field(rec.actorRole);
  field(rec.transport);
  field(rec.agent);
  field(rec.secret);
  field(rec.leaseId);
  field(rec.domain);
  field(rec.outcome);
  field(rec.reason);
  field(rec.detail);
  return hash("sha256", scratch.subarray(0, at), "buffer");
}

/** Turns a draft into the next chained record after `head` (null for an empty trail). */
export function chainEvent(
  head: { seq: number; hash: Uint8Array } | null,
  draft: AuditDraft,
  time: number,
): AuditRecord {
  const rec: AuditRecord = {
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
    hash: GENESIS,
  };
  rec.hash = hashEvent(rec);
  return rec;
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
export function makeCheckpoint(head: { seq: number; hash: Uint8Array }, key: { id: string; key: Buffer }): AuditCheckpoint {
  return { seq: head.seq, hash: Buffer.from(head.hash), keyId: key.id, mac: checkpointMac(key.key, head.seq, head.hash) };
}

/** True when the checkpoint's MAC is right for its seq and hash under `key`. */
export function checkpointValid(cp: AuditCheckpoint, key: { key: Buffer }): boolean {
  const want = checkpointMac(key.key, cp.seq, cp.hash);
  return cp.mac.length === want.length && timingSafeEqual(Buffer.from(cp.mac), want);
}
