/**
 * Envelope encryption for secret values. Each secret version gets its own fresh random 256-bit DEK;
 * the value is sealed with the DEK and the DEK is sealed ("wrapped") with the master key (KEK).
 *
 * Both blobs are `FORMAT ‖ aead.seal(...)`, and each is bound by its AAD to its place:
 * - value:       ["lessor", FORMAT, "value", scope, name, version, alg]
 * - wrapped DEK: ["lessor", FORMAT, "dek",   scope, name, version, alg, keyId] (+ ["vault", vaultId])
 *
 * The master key id is bound into the wrapped DEK, the record the master key opens, and not into the
 * value. Master-key rotation therefore re-wraps only the small DEK blobs ({@link rewrapDek}) and never
 * touches a value's ciphertext, while each value stays bound to its DEK (only that DEK opens it) and
 * to its place (the scope, name and version are in both AADs). A row copied to another name or version,
 * a wrapped DEK swapped between versions, or a key id edited in the row all fail to open. A vault
 * made by this version has an id of its own (src/vault/vault-id.ts), bound into every wrapped DEK:
 * a row copied from another vault that shares its master key fails to open too.
 * See docs/crypto.md.
 */
import { randomFillSync } from "node:crypto";
import { type Alg, DECRYPT_FAILED_MESSAGE, isAlg, open, seal } from "./aead.js";
import { type Keyring, type MasterKey, KEY_BYTES } from "./keyring.js";
import { SecretBytes } from "./secret-bytes.js";
import { VaultError } from "../base/errors.js";

/** Format version written as the first byte of every blob and bound into every AAD. */
export const FORMAT = 1;

/** Where a sealed value lives: its secret's scope and name, and the version number. */
export interface Place {
  scope: string;
  name: string;
  version: number;
}

/** A sealed secret version as the store keeps it. */
export interface Sealed {
  alg: Alg;
  /** Id of the master key that wraps the DEK. */
  keyId: string;
  /** `FORMAT ‖ nonce ‖ sealed DEK ‖ tag`. */
  wrappedDek: Buffer;
  /** `FORMAT ‖ nonce ‖ sealed value ‖ tag`. */
  ciphertext: Buffer;
}

/** The sealed fields as read back from a store (the algorithm is not yet checked). */
export interface SealedInput {
  alg: string;
  keyId: string;
  wrappedDek: Uint8Array;
  ciphertext: Uint8Array;
}

/**
 * Encodes a list of strings so that no two different lists give the same bytes: each field is its
 * UTF-8 bytes preceded by their length as a 4-byte big-endian number.
 */
export function encodeAad(fields: readonly string[]): Buffer {
  let size = 0;
  for (const f of fields) size += 4 + Buffer.byteLength(f, "utf8");
  const out = Buffer.alloc(size);
  let at = 0;
  for (const f of fields) {
    const n = out.write(f, at + 4, "utf8");
    out.writeUInt32BE(n, at);
    at += 4 + n;
  }
  return out;
}

function checkPlace(place: Place): void {
  if (typeof place.scope !== "string" || typeof place.name !== "string" || !Number.isSafeInteger(place.version)) {
    throw new VaultError("internal", "a secret's place must have a string scope and name and an integer version");
  }
}

function valueAad(place: Place, alg: Alg): Buffer {
  return encodeAad(["lessor", String(FORMAT), "value", place.scope, place.name, String(place.version), alg]);
}

function dekAad(place: Place, alg: Alg, keyId: string, vaultId: string | null): Buffer {
  const fields = ["lessor", String(FORMAT), "dek", place.scope, place.name, String(place.version), alg, keyId];
  return encodeAad(vaultId === null ? fields : [...fields, "vault", vaultId]);
}

function withFormat(blob: Buffer): Buffer {
  const out = Buffer.alloc(1 + blob.length);
  out[0] = FORMAT;
  out.set(blob, 1);
  return out;
}

/** Strips and checks the format byte; anything but {@link FORMAT} is a generic decrypt failure. */
function body(blob: Uint8Array): Uint8Array {
  if (blob.length < 1 || blob[0] !== FORMAT) throw new VaultError("decrypt_failed", DECRYPT_FAILED_MESSAGE);
  return blob.subarray(1);
}

function checkedAlg(alg: string): Alg {
  if (!isAlg(alg)) throw new VaultError("decrypt_failed", DECRYPT_FAILED_MESSAGE);
  return alg;
}

function kekFor(keyring: Keyring, keyId: string): MasterKey {
  const kek = keyring.get(keyId);
  if (kek === undefined) {
    throw new VaultError(
      "key_unavailable",
      `the master key ${keyId} that wraps this secret is not loaded; load the key set it was stored with (see docs/crypto.md)`,
    );
  }
  return kek;
}

/** Opens the DEK of a sealed version. The caller must zero the returned buffer. */
function openDek(place: Place, sealed: SealedInput, keyring: Keyring, vaultId: string | null): { alg: Alg; dek: Buffer } {
  checkPlace(place);
  const alg = checkedAlg(sealed.alg);
  const kek = kekFor(keyring, sealed.keyId);
  const dek = open(alg, kek.key, body(sealed.wrappedDek), dekAad(place, alg, kek.id, vaultId));
  if (dek.length !== KEY_BYTES) {
    dek.fill(0);
    throw new VaultError("decrypt_failed", DECRYPT_FAILED_MESSAGE);
  }
  return { alg, dek };
}

function wrapDek(place: Place, alg: Alg, dek: Buffer, kek: MasterKey, vaultId: string | null): Buffer {
  return withFormat(seal(alg, kek.key, dek, dekAad(place, alg, kek.id, vaultId)));
}

/**
 * Seals `plaintext` for `place` under a fresh DEK, wrapped by `kek` (for vault `vaultId`; null: a
 * vault made before vaults had ids). The DEK is wiped before returning.
 */
export function sealValue(place: Place, plaintext: Uint8Array, kek: MasterKey, alg: Alg, vaultId: string | null): Sealed {
  checkPlace(place);
  if (!isAlg(alg)) throw new VaultError("internal", "sealValue: unsupported algorithm");
  const dek = Buffer.alloc(KEY_BYTES);
  try {
    randomFillSync(dek);
    const ciphertext = withFormat(seal(alg, dek, plaintext, valueAad(place, alg)));
    const wrappedDek = wrapDek(place, alg, dek, kek, vaultId);
    return { alg, keyId: kek.id, wrappedDek, ciphertext };
  } finally {
    dek.fill(0);
  }
}

/**
 * Opens a sealed value stored at `place`. Throws VaultError("key_unavailable") when the wrapping key is
 * not in `keyring`, and VaultError("decrypt_failed") (one generic message) for anything else.
 */
export function openValue(place: Place, sealed: SealedInput, keyring: Keyring, vaultId: string | null): SecretBytes {
  const { alg, dek } = openDek(place, sealed, keyring, vaultId);
  try {
    return SecretBytes.adopt(open(alg, dek, body(sealed.ciphertext), valueAad(place, alg)));
  } finally {
    dek.fill(0);
  }
}

/**
 * Re-wraps the DEK of a sealed version under `to` (for master-key rotation) and returns the new
 * wrapped DEK; the value's ciphertext stays as it is. The stored key id must then be set to `to.id`.
 */
export function rewrapDek(place: Place, sealed: SealedInput, keyring: Keyring, to: MasterKey, vaultId: string | null): Buffer {
  const { alg, dek } = openDek(place, sealed, keyring, vaultId);
  try {
    return wrapDek(place, alg, dek, to, vaultId);
  } finally {
    dek.fill(0);
  }
}
