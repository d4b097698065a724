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

const inspectSymbol = Symbol.for("nodejs.util.inspect.custom");

/**
 * A master key whose bytes never show when it is printed: `key` is not enumerable (JSON.stringify,
 * spreads and plain inspection skip it), and inspection (`%o`, `showHidden` included) and `toJSON`
 * show the id only. An embedded-API caller logging a key source's result must not log the key.
 */
function masterKey(id: string, key: Buffer): MasterKey {
  const mk = { id } as MasterKey;
  Object.defineProperty(mk, "key", { value: key, enumerable: false });
  Object.defineProperty(mk, "toJSON", { value: () => ({ id }), enumerable: false });
  Object.defineProperty(mk, inspectSymbol, { value: () => `MasterKey { id: '${id}' }`, enumerable: false });
  return mk;
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
    const same = list.find((k) => k.id === id);
    if (same === undefined) list.push(masterKey(id, key));
    else if (same.key !== key) key.fill(0); // a duplicate's bytes (the ring owns what it is given) are not left in memory
  }
  const byId = new Map(list.map((k) => [k.id, k]));
  const ring: Keyring = {
    current: list[0]!,
    get: (id) => byId.get(id),
    ids: () => list.map((k) => k.id),
    wipe: () => {
      for (const k of list) k.key.fill(0);
    },
  };
  Object.defineProperty(ring, inspectSymbol, { value: () => `Keyring { ids: [${list.map((k) => `'${k.id}'`).join(", ")}] }`, enumerable: false });
  Object.defineProperty(ring, "toJSON", { value: () => ({ ids: list.map((k) => k.id) }), enumerable: false });
  return ring;
}

/**
 * A new ring holding copies of `ring`'s keys with `id` first (the others in their order): the key the
 * store records as current, when the source gave another first. `ring` is left as it is.
 */
export function withCurrent(ring: Keyring, id: string): Keyring {
  const order = [id, ...ring.ids().filter((k) => k !== id)];
  return makeKeyring(order.map((k) => Buffer.from(ring.get(k)!.key)));
}
