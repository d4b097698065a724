/**
 * Shared helpers for key sources: parsing 64-hex-character master keys into wipeable buffers, keyrings
 * built from copies, and checking retire lists. JavaScript strings cannot be wiped, so the hex text a key was read from
 * stays in memory until it is garbage-collected; only the Buffers are zeroed.
 */
import { type Keyring, KEY_BYTES, makeKeyring } from "../keyring.js";
import { VaultError } from "../../base/errors.js";
import { writeFileExclusive } from "../../fs/atomic-file.js";

const HEX_KEY = /^[0-9a-fA-F]{64}$/;

/** True when `s` is exactly 64 hex characters. */
export function isHexKey(s: string): boolean {
  return HEX_KEY.test(s);
}

/** Decodes a checked 64-hex string into a fresh, unpooled 32-byte buffer. */
export function hexToKey(hex: string): Buffer {
  if (!isHexKey(hex)) throw new Error("hexToKey: not 64 hex characters");
  const buf = Buffer.alloc(KEY_BYTES);
  buf.write(hex, "hex");
  return buf;
}

/** Zeroes every buffer. */
export function wipeAll(bufs: readonly Buffer[]): void {
  for (const b of bufs) b.fill(0);
}

/** Fresh copies of every key of `ring`, current first (so a new ring does not share the old one's buffers). */
export function copyKeys(ring: Keyring, only?: readonly string[]): Buffer[] {
  const out: Buffer[] = [];
  for (const id of ring.ids()) {
    if (only !== undefined && !only.includes(id)) continue;
    const k = ring.get(id)!;
    const copy = Buffer.alloc(KEY_BYTES);
    k.key.copy(copy);
    out.push(copy);
  }
  return out;
}

/** Builds a keyring, wiping the buffers if they are rejected. */
export function ringOf(keys: Buffer[]): Keyring {
  try {
    return makeKeyring(keys);
  } catch (e) {
    wipeAll(keys);
    throw e;
  }
}

/** Checks a retire list: the current key must be kept, and every id must be in the ring. */
export function checkKeep(ring: Keyring, keep: readonly string[]): void {
  if (!keep.includes(ring.current.id)) {
    throw new VaultError("invalid_request", `the current master key ${ring.current.id} cannot be retired`);
  }
  const ids = ring.ids();
  for (const id of keep) {
    if (!ids.includes(id)) throw new VaultError("invalid_request", `master key ${id} is not in the key ring`);
  }
}

/** Writes a new key file (0600) and refuses, with the reason, to replace one that exists. */
export function writeNewKeyFile(path: string, data: string, what: string): void {
  try {
    writeFileExclusive(path, data, 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") {
      throw new VaultError(
        "invalid_request",
        `${what} ${path} already exists; lessor will not overwrite a master key (every secret it protects would be lost)`,
      );
    }
    throw e;
  }
}
