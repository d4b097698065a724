/**
 * Shared helpers for key sources: parsing 64-hex-character master keys into wipeable buffers, keyrings
 * built from copies, checking retire lists, the key-ring JSON of a key file (also what the OS keychain
 * entry holds), and reading a private file strictly. JavaScript strings cannot be wiped, so the hex text
 * a key was read from stays in memory until it is garbage-collected; only the Buffers are zeroed.
 */
import { closeSync, constants, fstatSync, openSync, readFileSync } from "node:fs";
import { dirname } from "node:path";
import { type Keyring, KEY_BYTES, makeKeyring } from "../keyring.js";
import { VaultError } from "../../base/errors.js";
import { writeFileAtomic, writeFileExclusive } from "../../fs/atomic-file.js";
import { writeError } from "../../fs/write-error.js";
import { assertPrivateDir, assertPrivateFile } from "../../fs/perms.js";

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

/**
 * Writes a new key file (0600) and refuses, with the reason, to replace one that exists. A full,
 * read-only or failing disk is VaultError("unavailable") naming the file (src/fs/write-error.ts).
 */
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
    throw writeError(e, path, what);
  }
}

/**
 * Replaces a key file (0600) atomically and durably (src/fs/atomic-file.ts): the file holds the old
 * keys or the new ones, and no temporary file is left. A full, read-only or failing disk is
 * VaultError("unavailable") naming the file (src/fs/write-error.ts).
 */
export function replaceKeyFile(path: string, data: string, what: string): void {
  try {
    writeFileAtomic(path, data, 0o600);
  } catch (e) {
    throw writeError(e, path, what);
  }
}

/** The key-ring JSON of a key file (and of an OS keychain entry) for `keys`, current first. */
export function renderKeyRing(keys: readonly Buffer[]): string {
  return JSON.stringify({ lessor_keyfile: 1, keys: keys.map((k) => k.toString("hex")) }) + "\n";
}

/**
 * Strictly parses key-ring JSON (`{"lessor_keyfile":1,"keys":["<hex>", ...]}`) into fresh key buffers.
 * `invalid` words the error for a reason; errors never echo the contents.
 */
export function parseKeyRing(text: string, invalid: (reason: string) => VaultError): Buffer[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw invalid("it is not JSON");
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw invalid("it is not a JSON object");
  const fields = Object.keys(doc).sort();
  if (fields.length !== 2 || fields[0] !== "keys" || fields[1] !== "lessor_keyfile") {
    throw invalid('it must have exactly the fields "lessor_keyfile" and "keys"');
  }
  const { lessor_keyfile: version, keys } = doc as { lessor_keyfile: unknown; keys: unknown };
  if (version !== 1) throw invalid("unsupported lessor_keyfile version; this lessor reads version 1");
  if (!Array.isArray(keys) || keys.length === 0) throw invalid('"keys" must be a non-empty list');
  if (!keys.every((k): k is string => typeof k === "string" && isHexKey(k))) {
    throw invalid("every key must be 64 hex characters");
  }
  return keys.map(hexToKey);
}

/**
 * Reads a file that must be private (0600, yours, not a symlink, in a 0700 directory of yours), without
 * following a symlink, and re-checks the open file so a swap between the check and the open is caught.
 * `what` names it in errors. The caller wipes the returned buffer.
 */
export function readPrivateFile(path: string, what: string): Buffer {
  assertPrivateDir(dirname(path), `the directory of ${what}`);
  assertPrivateFile(path, what);
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || (st.mode & 0o077) !== 0 || (typeof process.getuid === "function" && st.uid !== process.getuid())) {
      throw new VaultError("insecure_permissions", `${what} ${path} changed while it was being opened; check it and try again`);
    }
    return readFileSync(fd);
  } finally {
    closeSync(fd);
  }
}
