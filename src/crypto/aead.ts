/**
 * The two AEAD ciphers lessor uses, behind one small interface. A sealed blob is
 * `nonce ‖ ciphertext ‖ tag` with a fresh random nonce per call. Opening fails with one generic
 * {@link VaultError} ("decrypt_failed") whatever went wrong, so an error never tells a caller whether
 * the key, the tag, the length or the label was at fault.
 */
import { createCipheriv, createDecipheriv, randomFillSync } from "node:crypto";
import { xchacha20poly1305 } from "@noble/ciphers/chacha.js";
import { VaultError } from "../base/errors.js";

/** The AEAD algorithms a record may name. */
export type Alg = "aes-256-gcm" | "xchacha20-poly1305";

/** Every supported algorithm; the first is the default. */
export const ALGS: readonly Alg[] = Object.freeze(["aes-256-gcm", "xchacha20-poly1305"] as const);

/** True when `s` names a supported algorithm. */
export function isAlg(s: unknown): s is Alg {
  return typeof s === "string" && (ALGS as readonly string[]).includes(s);
}

/** The one message every failed open carries. */
export const DECRYPT_FAILED_MESSAGE =
  "a stored value could not be opened: the master key is wrong, or the data was moved or altered";

const KEY_LEN = 32;
const TAG_LEN = 16;
const NONCE_LEN: Record<Alg, number> = { "aes-256-gcm": 12, "xchacha20-poly1305": 24 };

function decryptFailed(): VaultError {
  return new VaultError("decrypt_failed", DECRYPT_FAILED_MESSAGE);
}

/**
 * Encrypts and authenticates `plaintext` under a 32-byte `key`, binding `aad`.
 * Returns `nonce ‖ ciphertext ‖ tag` in a new buffer.
 */
export function seal(alg: Alg, key: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Buffer {
  if (!isAlg(alg)) throw new VaultError("internal", `seal: unsupported algorithm`);
  if (key.length !== KEY_LEN) throw new VaultError("internal", `seal: a key must be ${KEY_LEN} bytes`);
  const nonceLen = NONCE_LEN[alg];
  const out = Buffer.alloc(nonceLen + plaintext.length + TAG_LEN);
  const nonce = out.subarray(0, nonceLen);
  randomFillSync(nonce);
  if (alg === "aes-256-gcm") {
    const c = createCipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG_LEN });
    c.setAAD(aad);
    const body = c.update(plaintext);
    const tail = c.final();
    out.set(body, nonceLen);
    out.set(tail, nonceLen + body.length);
    out.set(c.getAuthTag(), nonceLen + plaintext.length);
    body.fill(0);
  } else {
    // noble writes ciphertext ‖ tag straight into our buffer, so no stray copy of it is left behind.
    xchacha20poly1305(key, nonce, aad).encrypt(plaintext, out.subarray(nonceLen));
  }
  return out;
}

/**
 * Checks and decrypts a blob made by {@link seal}. Any failure (short blob, bad tag, wrong key,
 * wrong `aad`, unknown algorithm) throws VaultError("decrypt_failed") with one fixed message.
 */
export function open(alg: Alg, key: Uint8Array, blob: Uint8Array, aad: Uint8Array): Buffer {
  if (!isAlg(alg) || key.length !== KEY_LEN) throw decryptFailed();
  const nonceLen = NONCE_LEN[alg];
  if (blob.length < nonceLen + TAG_LEN) throw decryptFailed();
  const nonce = blob.subarray(0, nonceLen);
  const body = blob.subarray(nonceLen, blob.length - TAG_LEN);
  const tag = blob.subarray(blob.length - TAG_LEN);
  if (alg === "aes-256-gcm") {
    let plain: Buffer | undefined;
    try {
      const d = createDecipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG_LEN });
      d.setAAD(aad);
      d.setAuthTag(tag);
      plain = d.update(body);
      d.final(); // throws on a bad tag; GCM returns nothing more here
      return plain;
    } catch {
      plain?.fill(0); // unauthenticated plaintext never leaves this function
      throw decryptFailed();
    }
  }
  const out = Buffer.alloc(body.length);
  try {
    xchacha20poly1305(key, nonce, aad).decrypt(blob.subarray(nonceLen), out);
    return out;
  } catch {
    out.fill(0);
    throw decryptFailed();
  }
}
