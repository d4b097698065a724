/**
 * Master keys in a key file made by `lessor init`: JSON `{"lessor_keyfile":1,"keys":["<hex>", ...]}`,
 * current key first, mode 0600 in a 0700 directory owned by the user. lessor refuses a wider file or
 * directory, or a symlinked key file, rather than fixing it silently.
 *
 * Writable: rotation rewrites the file atomically (temp file, fsync, rename, fsync directory).
 * Keys are decoded into Buffers that the keyring wipes; the file's text and the JSON strings it is
 * parsed into are JavaScript strings, which cannot be wiped and linger until garbage-collected.
 */
import { randomFillSync } from "node:crypto";
import { closeSync, constants, fstatSync, openSync, readFileSync } from "node:fs";
import { dirname } from "node:path";
import { assertPrivateDir, assertPrivateFile, ensurePrivateDir } from "../../fs/perms.js";
import { VaultError } from "../../base/errors.js";
import { writeFileAtomic } from "../../fs/atomic-file.js";
import { type Keyring, KEY_BYTES } from "../keyring.js";
import type { KeySource } from "../../vault/ports.js";
import { checkKeep, copyKeys, hexToKey, isHexKey, ringOf, wipeAll, writeNewKeyFile } from "./common.js";

const WHAT = "the key file";

function invalid(path: string, reason: string): VaultError {
  return new VaultError("key_unavailable", `${WHAT} ${path} is not a valid lessor key file (${reason}); restore it from your backup`);
}

/** The file's JSON text for `keys` (current first). */
function render(keys: readonly Buffer[]): string {
  return JSON.stringify({ lessor_keyfile: 1, keys: keys.map((k) => k.toString("hex")) }) + "\n";
}

/** Strictly parses a key file's text into fresh key buffers. Errors never echo the contents. */
function parse(text: string, path: string): Buffer[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw invalid(path, "it is not JSON");
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw invalid(path, "it is not a JSON object");
  const fields = Object.keys(doc).sort();
  if (fields.length !== 2 || fields[0] !== "keys" || fields[1] !== "lessor_keyfile") {
    throw invalid(path, 'it must have exactly the fields "lessor_keyfile" and "keys"');
  }
  const { lessor_keyfile: version, keys } = doc as { lessor_keyfile: unknown; keys: unknown };
  if (version !== 1) throw invalid(path, "unsupported lessor_keyfile version; this lessor reads version 1");
  if (!Array.isArray(keys) || keys.length === 0) throw invalid(path, '"keys" must be a non-empty list');
  if (!keys.every((k): k is string => typeof k === "string" && isHexKey(k))) {
    throw invalid(path, "every key must be 64 hex characters");
  }
  return keys.map(hexToKey);
}

/** Checks permissions, then reads the key file without following a symlink. */
function readKeys(path: string): Buffer[] {
  assertPrivateDir(dirname(path), `the directory of ${WHAT}`);
  assertPrivateFile(path, WHAT);
  let raw: Buffer;
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    // Re-check on the open file, so a swap between the check above and the open is caught too.
    const st = fstatSync(fd);
    if (!st.isFile() || (st.mode & 0o077) !== 0 || (typeof process.getuid === "function" && st.uid !== process.getuid())) {
      throw new VaultError("insecure_permissions", `${WHAT} ${path} changed while it was being opened; check it and try again`);
    }
    raw = readFileSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    return parse(raw.toString("utf8"), path);
  } finally {
    raw.fill(0);
  }
}

/** Refuses to rotate when the file no longer holds exactly the keys of `ring` (e.g. another rotation ran). */
function checkUnchanged(path: string, ring: Keyring): void {
  const onDisk = ringOf(readKeys(path));
  const same = onDisk.ids().join(",") === ring.ids().join(",");
  onDisk.wipe();
  if (!same) {
    throw new VaultError("key_unavailable", `${WHAT} ${path} changed since its keys were loaded; run the command again`);
  }
}

function write(path: string, keys: Buffer[]): Keyring {
  try {
    writeFileAtomic(path, render(keys), 0o600);
  } catch (e) {
    wipeAll(keys);
    throw e;
  }
  return ringOf(keys);
}

/**
 * Creates a key file at `path` holding one new random 32-byte key. Creates the directory (0700) if
 * missing and refuses a directory that others can read. Never overwrites an existing file.
 */
export function createKeyFile(path: string): void {
  ensurePrivateDir(dirname(path), `the directory of ${WHAT}`);
  const key = Buffer.alloc(KEY_BYTES);
  randomFillSync(key);
  try {
    writeNewKeyFile(path, render([key]), WHAT);
  } finally {
    key.fill(0);
  }
}

/** The key file source for `path`. Loading checks permissions (see src/fs/perms.ts). */
export function fileKeySource(path: string): KeySource {
  return {
    kind: "file",
    describe: `key file ${path}`,
    writable: true,
    load: async () => ringOf(readKeys(path)),
    promote: async (ring, newKey) => {
      if (newKey.length !== KEY_BYTES) throw new VaultError("internal", `a master key must be ${KEY_BYTES} bytes`);
      checkUnchanged(path, ring);
      const fresh = Buffer.alloc(KEY_BYTES);
      newKey.copy(fresh);
      return write(path, [fresh, ...copyKeys(ring)]);
    },
    retire: async (ring, keep) => {
      checkKeep(ring, keep);
      checkUnchanged(path, ring);
      return write(path, copyKeys(ring, keep));
    },
  };
}
