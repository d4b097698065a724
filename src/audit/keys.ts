/**
 * Audit keys. Each master key has its own audit key, derived with HKDF-SHA256 under its own label:
 * a chain key (for each event's MAC) and a checkpoint key. The audit key's id is the master key's id,
 * and every keyed event records it, so after a master-key rotation old events still verify under
 * the key they were written with.
 *
 * Rotation drops old master keys (once no secret needs them), but old events still need their audit
 * keys, so before that the rotation archives them: each old key's audit root (the HKDF output the
 * two keys come from, never the master key) is sealed under the new master key (AES-256-GCM, bound
 * to its id and the sealing key's id) in the store's `audit_keys` meta row. An archived root only
 * verifies the old segment; it opens no secret. {@link AuditKeys.get} serves it for any event, so the
 * callers also refuse a retired key after its retirement (./retired.ts): no later event, no checkpoint.
 */
import { hkdfSync } from "node:crypto";
import { open, seal } from "../crypto/aead.js";
import { encodeAad } from "../crypto/envelope.js";
import type { Keyring, MasterKey } from "../crypto/keyring.js";
import type { AuditReader } from "./reader.js";

/** The keys of one audit key id: HMAC pads of the chain key, and the checkpoint key. */
export interface AuditKey {
  /** The id of the master key it was derived from. */
  readonly id: string;
  /** Chain key ⊕ 0x36, padded to 64 bytes (HMAC inner pad). */
  readonly ipad: Buffer;
  /** Chain key ⊕ 0x5c, padded to 64 bytes (HMAC outer pad). */
  readonly opad: Buffer;
  /** Key for the checkpoint MAC. */
  readonly checkpoint: Buffer;
}

/** The store meta key holding archived audit roots (JSON, see {@link ArchivedKeys}). */
export const AUDIT_KEYS_META = "audit_keys";

/** Archived audit roots by audit key id: `by` is the master key that seals it, `sealed` base64. */
export type ArchivedKeys = Record<string, { by: string; sealed: string }>;

const ROOT_LABEL = "lessor audit key v2";
const CHECKPOINT_LABEL_V1 = "lessor audit checkpoint v1";
const EMPTY = Buffer.alloc(0);

function hkdf(key: Uint8Array, info: string): Buffer {
  return Buffer.from(hkdfSync("sha256", key, EMPTY, info, 32));
}

/**
 * The audit root of a master key (what the archive seals), for vault `vaultId` (its id as the HKDF
 * salt, src/vault/vault-id.ts: a trail copied from another vault that shares the master key does not
 * verify here; null: a vault made before vaults had ids).
 */
function auditRoot(master: MasterKey, vaultId: string | null): Buffer {
  return vaultId === null ? hkdf(master.key, ROOT_LABEL) : Buffer.from(hkdfSync("sha256", master.key, Buffer.from(vaultId, "utf8"), ROOT_LABEL, 32));
}

function keyFromRoot(id: string, root: Buffer): AuditKey {
  const chain = hkdf(root, "chain");
  const ipad = Buffer.alloc(64, 0x36);
  const opad = Buffer.alloc(64, 0x5c);
  for (let i = 0; i < chain.length; i++) {
    ipad[i]! ^= chain[i]!;
    opad[i]! ^= chain[i]!;
  }
  chain.fill(0);
  return { id, ipad, opad, checkpoint: hkdf(root, "checkpoint") };
}

/** The audit key of a master key, for vault `vaultId` (see {@link auditRoot}). */
export function deriveAuditKey(master: MasterKey, vaultId: string | null): AuditKey {
  const root = auditRoot(master, vaultId);
  try {
    return keyFromRoot(master.id, root);
  } finally {
    root.fill(0);
  }
}

/** Zeroes an audit key. */
export function wipeAuditKey(k: AuditKey): void {
  k.ipad.fill(0);
  k.opad.fill(0);
  k.checkpoint.fill(0);
}

/** The format-1 checkpoint key of a master key (the caller wipes it). */
export function checkpointKeyV1(master: MasterKey): Buffer {
  return hkdf(master.key, CHECKPOINT_LABEL_V1);
}

function archiveAad(id: string, by: string): Buffer {
  return encodeAad(["lessor", "audit key", "2", id, by]);
}

/** Reads the archive; a row that is not one lessor wrote reads as empty (its keys are then missing). */
export function parseArchive(text: string | null): ArchivedKeys {
  if (text === null) return {};
  try {
    const o = JSON.parse(text) as unknown;
    if (typeof o !== "object" || o === null || Array.isArray(o)) return {};
    const out: ArchivedKeys = {};
    for (const [id, v] of Object.entries(o as Record<string, unknown>)) {
      const e = v as { by?: unknown; sealed?: unknown } | null;
      if (e && typeof e.by === "string" && typeof e.sealed === "string") out[id] = { by: e.by, sealed: e.sealed };
    }
    return out;
  } catch {
    return {};
  }
}

function openEntry(id: string, e: { by: string; sealed: string }, ring: Keyring): Buffer | null {
  const master = ring.get(e.by);
  if (!master) return null;
  try {
    return open("aes-256-gcm", master.key, Buffer.from(e.sealed, "base64"), archiveAad(id, e.by));
  } catch {
    return null;
  }
}

/**
 * The archive after a rotation to `ring.current`: every other key of `ring` archived, and entries
 * sealed by a key other than the current one sealed again under it. Entries that cannot be opened
 * with `ring` are kept unchanged.
 */
export function archiveKeys(ring: Keyring, existing: ArchivedKeys, vaultId: string | null): ArchivedKeys {
  const to = ring.current;
  const out: ArchivedKeys = { ...existing };
  const put = (id: string, root: Buffer): void => {
    try {
      out[id] = { by: to.id, sealed: seal("aes-256-gcm", to.key, root, archiveAad(id, to.id)).toString("base64") };
    } finally {
      root.fill(0);
    }
  };
  for (const [id, e] of Object.entries(existing)) {
    if (e.by === to.id || ring.get(id)) continue;
    const root = openEntry(id, e, ring);
    if (root) put(id, root);
  }
  for (const id of ring.ids()) if (id !== to.id) put(id, auditRoot(ring.get(id)!, vaultId));
  return out;
}

/**
 * The audit keys a vault uses: derived from its keyring, or opened from the archive for master keys
 * that were retired. Derived keys are cached by id.
 */
export class AuditKeys {
  readonly #ring: Keyring;
  readonly #vaultId: string | null;
  readonly #cache = new Map<string, AuditKey>();
  readonly #current: AuditKey;

  /** The audit keys of `ring`'s master keys for vault `vaultId` (null: a vault made before vaults had ids). */
  constructor(ring: Keyring, vaultId: string | null) {
    this.#ring = ring;
    this.#vaultId = vaultId;
    this.#current = deriveAuditKey(ring.current, vaultId);
    this.#cache.set(this.#current.id, this.#current);
  }

  /** The key new events are chained under (from the current master key). */
  get current(): AuditKey {
    return this.#current;
  }

  /** The master key with this id, if loaded (for format-1 checkpoints). */
  master(id: string): MasterKey | undefined {
    return this.#ring.get(id);
  }

  /** The audit key with id `id`, or null when neither the keyring nor the archive (read through `reader`) has it. */
  async get(id: string, reader: AuditReader): Promise<AuditKey | null> {
    const hit = this.#cache.get(id);
    if (hit) return hit;
    const master = this.#ring.get(id);
    let key: AuditKey | null = null;
    if (master) key = deriveAuditKey(master, this.#vaultId);
    else {
      const e = parseArchive(await reader.getMeta(AUDIT_KEYS_META))[id];
      const root = e ? openEntry(id, e, this.#ring) : null;
      if (root) {
        key = keyFromRoot(id, root);
        root.fill(0);
      }
    }
    if (key) this.#cache.set(id, key);
    return key;
  }

  /**
   * The ids the archive holds a genuine entry for (one that opens with this keyring): keys a rotation
   * retired. An entry that does not open (planted, or sealed under a key not loaded) is not counted.
   */
  async archivedIds(reader: AuditReader): Promise<string[]> {
    const out: string[] = [];
    for (const [id, e] of Object.entries(parseArchive(await reader.getMeta(AUDIT_KEYS_META)))) {
      const root = openEntry(id, e, this.#ring);
      if (root === null) continue;
      root.fill(0);
      out.push(id);
    }
    return out;
  }

  /** Zeroes every cached key. */
  wipe(): void {
    for (const k of this.#cache.values()) wipeAuditKey(k);
    this.#cache.clear();
  }
}
