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
import { dirname } from "node:path";
import { ensurePrivateDir } from "../../fs/perms.js";
import { VaultError } from "../../base/errors.js";
import { type Keyring, KEY_BYTES } from "../keyring.js";
import type { KeySource } from "../../vault/ports.js";
import { checkKeep, copyKeys, parseKeyRing, readPrivateFile, renderKeyRing, replaceKeyFile, ringOf, wipeAll, writeNewKeyFile } from "./common.js";

const WHAT = "the key file";

function invalid(path: string, reason: string): VaultError {
  return new VaultError("key_unavailable", `${WHAT} ${path} is not a valid lessor key file (${reason}); restore it from your backup`);
}

/** Checks permissions, then reads the key file without following a symlink. */
function readKeys(path: string): Buffer[] {
  const raw = readPrivateFile(path, WHAT);
  try {
    return parseKeyRing(raw.toString("utf8"), (reason) => invalid(path, reason));
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
    throw new VaultError("key_unavailable", `${WHAT} ${path} changed since its keys were loaded (another master-key rotation wrote it, or it was edited), so this rotation wrote nothing; wait for any other rotation to finish, then run the command again`);
  }
}

function write(path: string, keys: Buffer[]): Keyring {
  try {
    replaceKeyFile(path, renderKeyRing(keys), WHAT);
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
    writeNewKeyFile(path, renderKeyRing([key]), WHAT);
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
