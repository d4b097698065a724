/**
 * Master keys (KEKs) and where they come from. A {@link Keyring} holds the current master key, which
 * wraps new DEKs, and older ones still needed to open DEKs wrapped before a rotation. Key ids are
 * derived from the key bytes ({@link keyIdOf}), so the same key always has the same id wherever it
 * is loaded from, and a wrong key is noticed by id before any decryption is tried.
 */
import { createHash } from "node:crypto";

/** Length of every master key and DEK, in bytes (256 bits). */
export const KEY_BYTES = 32;

/** One master key. `key` is 32 bytes and is wiped by {@link Keyring.wipe}. */
export interface MasterKey {
  readonly id: string;
  readonly key: Buffer;
}

/** The current master key and the older ones that are still readable. */
export interface Keyring {
  /** Wraps every new DEK and rewrapped DEK. */
  readonly current: MasterKey;
  /** Looks a key up by id (current or older). */
  get(id: string): MasterKey | undefined;
  /** Every key id, current first. */
  ids(): string[];
  /** Zeroes every key. */
  wipe(): void;
}

/**
 * Where master keys come from (env, passphrase file, key file, command). Sources that can store keys
 * (the key file and the passphrase file) support rotation through {@link KeySource.promote} and
 * {@link KeySource.retire}; read-only sources (env, command) rotate by the operator supplying the new
 * key as current and the old one as previous.
 */
export interface KeySource {
  /** "env", "passphrase", "file" or "command". */
  readonly kind: string;
  /** Human-readable description for status output and errors (a path or variable name; never a key). */
  readonly describe: string;
  /** Loads the keyring. Throws VaultError("key_unavailable" | "insecure_permissions") with the fix. */
  load(): Promise<Keyring>;
  /** True when this source can store a new key itself. */
  readonly writable: boolean;
  /**
   * Durably stores `newKey` as the current key, keeping every key of `ring` readable, and returns the
   * new ring. Must be durable (fsynced, atomically replaced) before it returns. Writable sources only.
   */
  promote?(ring: Keyring, newKey: Buffer): Promise<Keyring>;
  /** Durably drops every key whose id is not in `keep`; returns the new ring. Writable sources only. */
  retire?(ring: Keyring, keep: readonly string[]): Promise<Keyring>;
}

/** The id of a master key: 16 hex chars of SHA-256 over a label and the key. */
export function keyIdOf(key: Uint8Array): string {
  return createHash("sha256").update("lessor master key id v1\0").update(key).digest("hex").slice(0, 16);
}

/** Builds a keyring from raw keys, current first. Copies are not made: the ring owns the buffers. */
export function makeKeyring(keys: readonly Buffer[]): Keyring {
  if (keys.length === 0) throw new Error("makeKeyring: at least one key is needed");
  const list: MasterKey[] = [];
  for (const key of keys) {
    if (key.length !== KEY_BYTES) throw new Error(`makeKeyring: a master key must be ${KEY_BYTES} bytes`);
    const id = keyIdOf(key);
    if (!list.some((k) => k.id === id)) list.push({ id, key });
  }
  const byId = new Map(list.map((k) => [k.id, k]));
  return {
    current: list[0]!,
    get: (id) => byId.get(id),
    ids: () => list.map((k) => k.id),
    wipe: () => {
      for (const k of list) k.key.fill(0);
    },
  };
}
