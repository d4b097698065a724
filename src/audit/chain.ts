/**
 * The audit chain. Each event's chain value (`hash`) is a MAC: HMAC-SHA256 under an audit key
 * derived from a master key, over a domain label, the previous event's chain value and every field
 * of the event (its key id included), each length-prefixed so that no two different events encode
 * alike. Without the key, no row can be recomputed, so an edited, deleted or inserted event cannot
 * be made to verify again. A keyed checkpoint (a MAC of the head's seq and chain value) is rewritten
 * in every commit that appends, so that removing events from the end is detected too.
 *
 * Events written before this format (format 1, `keyId` null) were chained with plain SHA-256; they
 * stay verifiable under those rules (see {@link hashEventV1}) up to the first keyed event.
 */
import { createHmac, hash, timingSafeEqual } from "node:crypto";
import type { MasterKey } from "../crypto/keyring.js";
import { uuidv7 } from "../base/ids.js";
import type { AuditCheckpoint, AuditDraft, AuditRecord } from "../base/types.js";
import { checkpointKeyV1, type AuditKey } from "./keys.js";

/** The chain value that stands before the first event. */
export const GENESIS = Buffer.alloc(32);

/**
 * The store meta key recording that this vault's trail is keyed ({@link AUDIT_FORMAT_KEYED}), set by
 * its first keyed event: from then on a trail that is empty, or ends in format-1 events, was cut.
 */
export const AUDIT_FORMAT_META = "audit_format";
/** The value of {@link AUDIT_FORMAT_META} once the trail is keyed. */
export const AUDIT_FORMAT_KEYED = "2";

const HASH_LABEL_V1 = "lessor audit chain v1";
const CHECKPOINT_LABEL_V1 = "lessor audit checkpoint v1";
const MAC_LABEL = "lessor audit chain v2";
const CHECKPOINT_LABEL = "lessor audit checkpoint v2";
const NULL_LEN = 0xffffffff;
const BLOCK = 64;

/**
 * The MAC input is assembled in one reused buffer and hashed in one call (a native call per field
 * cost more than the hashing). For a keyed event the buffer starts with the HMAC inner pad block
 * (key material), which is zeroed again after every use; the fields are audit fields only, never
 * secret material.
 */
let scratch = Buffer.allocUnsafe(2048);
let at = 0;
/** The HMAC outer block: outer pad (64 bytes) ‖ inner digest (32 bytes). Zeroed after use. */
const outer = Buffer.alloc(BLOCK + 32);

function reserve(n: number): void {
  if (at + n <= scratch.length) return;
  const bigger = Buffer.allocUnsafe(Math.max(scratch.length * 2, at + n));
  scratch.copy(bigger, 0, 0, at);
  scratch.fill(0, 0, Math.min(BLOCK, scratch.length));
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

function bytes(b: Uint8Array): void {
  reserve(b.byteLength);
  scratch.set(b, at);
  at += b.byteLength;
}

/** Every field of the record after the label (its own `hash` excluded). */
function fields(rec: Omit<AuditRecord, "hash" | "keyId">): void {
  bytes(rec.prevHash);
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
}

/**
 * The format-1 chain value: SHA-256 over the v1 label, prevHash and every field. Unkeyed, so anyone
 * can recompute it; kept only to verify events written before the keyed chain.
 */
export function hashEventV1(rec: Omit<AuditRecord, "hash" | "keyId">): Buffer {
  at = 0;
  field(HASH_LABEL_V1);
  fields(rec);
  return hash("sha256", scratch.subarray(0, at), "buffer");
}

/**
 * The keyed chain value: HMAC-SHA256 under `key.chain` over the v2 label, prevHash, every field and
 * the key id. Computed as SHA-256(K⊕opad ‖ SHA-256(K⊕ipad ‖ m)) with the pads precomputed per key
 * (two one-shot hashes instead of an HMAC object per event); test/audit-chain.test.ts checks it
 * against node:crypto's HMAC.
 */
export function macEvent(rec: Omit<AuditRecord, "hash">, key: AuditKey): Buffer {
  at = 0;
  reserve(BLOCK);
  scratch.set(key.ipad, 0);
  let inner: Buffer;
  try {
    at = BLOCK;
    field(MAC_LABEL);
    fields(rec);
    field(rec.keyId);
    inner = hash("sha256", scratch.subarray(0, at), "buffer");
  } finally {
    scratch.fill(0, 0, BLOCK); // the key's inner pad never stays in the shared buffer, even on a throw
  }
  try {
    outer.set(key.opad, 0);
    outer.set(inner, BLOCK);
    return hash("sha256", outer, "buffer");
  } finally {
    outer.fill(0);
  }
}

/** True when `rec.hash` is the keyed MAC of its fields under `key` (constant time). */
export function eventMacValid(rec: AuditRecord, key: AuditKey): boolean {
  const want = macEvent(rec, key);
  return rec.hash.byteLength === want.length && timingSafeEqual(rec.hash, want);
}

/** Turns a draft into the next record after `head` (null for an empty trail), chained under `key`. */
export function chainEvent(head: { seq: number; hash: Uint8Array } | null, draft: AuditDraft, time: number, key: AuditKey): AuditRecord {
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
    keyId: key.id,
  };
  rec.hash = macEvent(rec, key);
  return rec;
}

function seqBytes(seq: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(seq));
  return b;
}

function checkpointMac(key: Buffer, label: string, seq: number, head: Uint8Array): Buffer {
  return createHmac("sha256", key).update(label).update(seqBytes(seq)).update(head).digest();
}

/** A checkpoint for the record that is now the head, MACed under the audit key `key`. */
export function makeCheckpoint(head: { seq: number; hash: Uint8Array }, key: AuditKey): AuditCheckpoint {
  return { seq: head.seq, hash: Buffer.from(head.hash), keyId: key.id, mac: checkpointMac(key.checkpoint, CHECKPOINT_LABEL, head.seq, head.hash) };
}

/**
 * True when a checkpoint read back has the shape lessor writes: a seq that is a whole number from 0
 * up, hash and MAC as bytes. A database writer may put anything in the row (a seq of 1.5, -1 or
 * text); such a row is a checkpoint that does not verify, not an internal error.
 */
function wellFormed(cp: AuditCheckpoint): boolean {
  return Number.isSafeInteger(cp.seq) && cp.seq >= 0 && cp.hash instanceof Uint8Array && cp.mac instanceof Uint8Array;
}

/** True when the checkpoint's MAC is right for its seq and hash under the audit key `key`. */
export function checkpointValid(cp: AuditCheckpoint, key: AuditKey): boolean {
  if (!wellFormed(cp)) return false;
  const want = checkpointMac(key.checkpoint, CHECKPOINT_LABEL, cp.seq, cp.hash);
  return cp.mac.byteLength === want.length && timingSafeEqual(cp.mac, want);
}

/** True when a format-1 checkpoint (written before the keyed chain) is right under master key `master`. */
export function checkpointValidV1(cp: AuditCheckpoint, master: MasterKey): boolean {
  if (!wellFormed(cp)) return false;
  const key = checkpointKeyV1(master);
  try {
    const want = checkpointMac(key, CHECKPOINT_LABEL_V1, cp.seq, cp.hash);
    return cp.mac.byteLength === want.length && timingSafeEqual(cp.mac, want);
  } finally {
    key.fill(0);
  }
}
