/**
 * Master keys sealed under a passphrase, in a key store file:
 *
 *   {"lessor_keystore":1,
 *    "kdf":{"alg":"argon2id","memory_kib":N,"iterations":N,"parallelism":N,"salt":"<base64, 16 bytes>"},
 *    "alg":"aes-256-gcm","sealed":"<base64>"}
 *
 * `sealed` is the JSON list of hex keys (current first), sealed with a KEK derived from the passphrase
 * by Argon2id. The AAD holds every KDF parameter, the salt and the algorithm, so weakening the stored
 * parameters (or swapping them for another file's) makes the store fail to open instead of being
 * accepted. The file is 0600 in a 0700 directory, like the key file.
 *
 * The derived KEK is kept (in memory, shared by the rings loaded from or rotated in this source) so a
 * rotation can reseal the list with a fresh nonce without asking for the passphrase again; it is
 * zeroed once every such ring has been wiped. The passphrase and the decrypted JSON pass through
 * JavaScript strings, which cannot be wiped.
 */
import { randomFillSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname } from "node:path";
import { performance } from "node:perf_hooks";
import type { Algorithm } from "@node-rs/argon2";
import { assertPrivateDir, assertPrivateFile, ensurePrivateDir } from "../../fs/perms.js";
import { VaultError } from "../../base/errors.js";
import { type Alg, isAlg, open, seal } from "../aead.js";
import { encodeAad } from "../envelope.js";
import { type Keyring, KEY_BYTES } from "../keyring.js";
import type { KeySource } from "../../vault/ports.js";
import { checkKeep, copyKeys, hexToKey, isHexKey, replaceKeyFile, ringOf, wipeAll, writeNewKeyFile } from "./common.js";

/** Argon2id cost parameters. */
export interface Argon2Params {
  /** Memory per lane in KiB. */
  memoryKib: number;
  iterations: number;
  parallelism: number;
}

/** Tiny parameters that make tests fast. Never use them for a real store. */
export const TEST_ARGON2_PARAMS: Readonly<Argon2Params> = Object.freeze({ memoryKib: 64, iterations: 1, parallelism: 1 });

// Algorithm is an ambient const enum, which verbatimModuleSyntax cannot read at runtime; 2 is Argon2id.
const ARGON2ID = 2 as Algorithm;
const SALT_BYTES = 16;
const STORE_ALG: Alg = "aes-256-gcm";
const WHAT = "the passphrase key store";
const LIMITS = { memoryKib: [8, 4 * 1024 * 1024], iterations: [1, 100], parallelism: [1, 64] } as const;

interface Kdf extends Argon2Params {
  salt: Buffer;
}

interface StoreDoc {
  kdf: Kdf;
  alg: Alg;
  sealed: Buffer;
}

/** What one successful load shares with the rings it produced: the derived KEK and the store's KDF. */
interface Session {
  kek: Buffer;
  kdf: Kdf;
  alg: Alg;
  live: number;
}

function invalid(path: string, reason: string): VaultError {
  return new VaultError("key_unavailable", `${WHAT} ${path} is not a valid lessor key store (${reason}); restore it from your backup`);
}

function wrongPassphrase(path: string): VaultError {
  return new VaultError("key_unavailable", `the passphrase is wrong, or ${path} was altered`);
}

function checkParams(p: Argon2Params): string | null {
  for (const k of ["memoryKib", "iterations", "parallelism"] as const) {
    const [lo, hi] = LIMITS[k];
    if (!Number.isSafeInteger(p[k]) || p[k] < lo || p[k] > hi) return `${k} must be a whole number from ${lo} to ${hi}`;
  }
  if (p.memoryKib < 8 * p.parallelism) return "memoryKib must be at least 8 × parallelism";
  return null;
}

function aadOf(kdf: Kdf, alg: Alg): Buffer {
  return encodeAad([
    "lessor keystore",
    "1",
    "argon2id",
    String(kdf.memoryKib),
    String(kdf.iterations),
    String(kdf.parallelism),
    kdf.salt.toString("base64"),
    alg,
  ]);
}

async function derive(passphrase: string, kdf: Kdf): Promise<Buffer> {
  // Loaded here, not at the top: the addon costs ~25 ms to load, and most commands (a key file, the
  // daemon) never derive a key from a passphrase.
  const { hashRaw } = await import("@node-rs/argon2");
  const pw = Buffer.from(passphrase, "utf8");
  try {
    const out = await hashRaw(pw, {
      algorithm: ARGON2ID,
      memoryCost: kdf.memoryKib,
      timeCost: kdf.iterations,
      parallelism: kdf.parallelism,
      salt: kdf.salt,
      outputLen: KEY_BYTES,
    });
    const kek = Buffer.alloc(KEY_BYTES);
    out.copy(kek);
    out.fill(0);
    return kek;
  } finally {
    pw.fill(0);
  }
}

/** Strict base64: decodes only text that re-encodes to itself. */
function b64(s: unknown): Buffer | null {
  if (typeof s !== "string") return null;
  const buf = Buffer.from(s, "base64");
  return buf.toString("base64") === s ? buf : null;
}

function exactFields(o: unknown, fields: readonly string[]): o is Record<string, unknown> {
  if (typeof o !== "object" || o === null || Array.isArray(o)) return false;
  const have = Object.keys(o).sort();
  const want = [...fields].sort();
  return have.length === want.length && have.every((f, i) => f === want[i]);
}

function parseDoc(text: string, path: string): StoreDoc {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw invalid(path, "it is not JSON");
  }
  if (!exactFields(doc, ["lessor_keystore", "kdf", "alg", "sealed"])) {
    throw invalid(path, 'it must have exactly the fields "lessor_keystore", "kdf", "alg" and "sealed"');
  }
  if (doc.lessor_keystore !== 1) throw invalid(path, "unsupported lessor_keystore version; this lessor reads version 1");
  const k = doc.kdf;
  if (!exactFields(k, ["alg", "memory_kib", "iterations", "parallelism", "salt"])) {
    throw invalid(path, '"kdf" must have exactly the fields "alg", "memory_kib", "iterations", "parallelism" and "salt"');
  }
  if (k.alg !== "argon2id") throw invalid(path, 'kdf "alg" must be "argon2id"');
  const salt = b64(k.salt);
  if (salt === null || salt.length !== SALT_BYTES) throw invalid(path, `the salt must be ${SALT_BYTES} bytes in base64`);
  const kdf: Kdf = {
    memoryKib: k.memory_kib as number,
    iterations: k.iterations as number,
    parallelism: k.parallelism as number,
    salt,
  };
  const bad = checkParams(kdf);
  if (bad !== null) throw invalid(path, bad);
  if (!isAlg(doc.alg)) throw invalid(path, '"alg" is not a supported algorithm');
  const sealed = b64(doc.sealed);
  if (sealed === null || sealed.length === 0) throw invalid(path, '"sealed" must be base64');
  return { kdf, alg: doc.alg, sealed };
}

function render(kdf: Kdf, alg: Alg, kek: Buffer, keys: readonly Buffer[]): string {
  const list = Buffer.from(JSON.stringify(keys.map((k) => k.toString("hex"))), "utf8");
  try {
    const sealed = seal(alg, kek, list, aadOf(kdf, alg));
    const doc = {
      lessor_keystore: 1,
      kdf: {
        alg: "argon2id",
        memory_kib: kdf.memoryKib,
        iterations: kdf.iterations,
        parallelism: kdf.parallelism,
        salt: kdf.salt.toString("base64"),
      },
      alg,
      sealed: sealed.toString("base64"),
    };
    return JSON.stringify(doc) + "\n";
  } finally {
    list.fill(0);
  }
}

function readDoc(path: string): StoreDoc {
  assertPrivateDir(dirname(path), `the directory of ${WHAT}`);
  assertPrivateFile(path, WHAT);
  return parseDoc(readFileSync(path, "utf8"), path);
}

/** Opens the sealed key list with `kek`; returns fresh key buffers, current first. */
function openKeys(doc: StoreDoc, kek: Buffer, path: string): Buffer[] {
  let plain: Buffer;
  try {
    plain = open(doc.alg, kek, doc.sealed, aadOf(doc.kdf, doc.alg));
  } catch {
    throw wrongPassphrase(path);
  }
  try {
    let list: unknown;
    try {
      list = JSON.parse(plain.toString("utf8"));
    } catch {
      throw invalid(path, "the sealed key list is not JSON");
    }
    if (!Array.isArray(list) || list.length === 0 || !list.every((k): k is string => typeof k === "string" && isHexKey(k))) {
      throw invalid(path, "the sealed key list must be a non-empty list of 64-hex-character keys");
    }
    return list.map(hexToKey);
  } finally {
    plain.fill(0);
  }
}

/** Wraps `inner` so that wiping the last ring of a session also zeroes the session's KEK. */
function track(session: Session, inner: Keyring, sessions: WeakMap<Keyring, Session>): Keyring {
  session.live++;
  let wiped = false;
  const ring: Keyring = {
    current: inner.current,
    get: (id) => inner.get(id),
    ids: () => inner.ids(),
    wipe: () => {
      inner.wipe();
      if (wiped) return;
      wiped = true;
      session.live--;
      if (session.live === 0) session.kek.fill(0);
    },
  };
  sessions.set(ring, session);
  return ring;
}

/**
 * Measures Argon2id on this machine and returns parameters that take about `targetMs`: 64 MiB, one
 * lane, and as many iterations (up to 20) as it takes to reach at least three quarters of the target.
 */
export async function tuneArgon2(targetMs = 400): Promise<Argon2Params> {
  const memoryKib = 64 * 1024;
  const parallelism = 1;
  const salt = Buffer.alloc(SALT_BYTES);
  randomFillSync(salt);
  const time = async (iterations: number): Promise<number> => {
    const t0 = performance.now();
    (await derive("lessor tuning", { memoryKib, iterations, parallelism, salt })).fill(0);
    return performance.now() - t0;
  };
  const MAX = 20;
  let iterations = 1;
  let ms = await time(iterations);
  while (ms < targetMs * 0.75 && iterations < MAX) {
    const guess = Math.round((iterations * targetMs) / Math.max(ms, 1));
    iterations = Math.min(MAX, Math.max(iterations + 1, guess));
    ms = await time(iterations);
  }
  return { memoryKib, iterations, parallelism };
}

/**
 * Creates a passphrase key store at `path` holding one new random master key. `params` defaults to
 * {@link tuneArgon2}'s result. Creates the directory (0700) if missing; never overwrites a file.
 */
export async function createPassphraseKeyStore(path: string, passphrase: string, params?: Argon2Params): Promise<void> {
  if (passphrase.length === 0) throw new VaultError("invalid_request", "the passphrase is empty; choose a long passphrase");
  const p = params ?? (await tuneArgon2());
  const bad = checkParams(p);
  if (bad !== null) throw new VaultError("invalid_request", `bad Argon2 parameters: ${bad}`);
  ensurePrivateDir(dirname(path), `the directory of ${WHAT}`);
  const salt = Buffer.alloc(SALT_BYTES);
  randomFillSync(salt);
  const kdf: Kdf = { memoryKib: p.memoryKib, iterations: p.iterations, parallelism: p.parallelism, salt };
  const key = Buffer.alloc(KEY_BYTES);
  randomFillSync(key);
  const kek = await derive(passphrase, kdf);
  try {
    writeNewKeyFile(path, render(kdf, STORE_ALG, kek, [key]), WHAT);
  } finally {
    key.fill(0);
    kek.fill(0);
  }
}

/**
 * Supplies the passphrase of a key store, told which store it is for. The key source never reads a
 * terminal or the environment itself: the caller decides where the passphrase comes from (the CLI
 * prompts on a terminal without echo, or reads LESSOR_PASSPHRASE; see src/cli/passphrase.ts).
 */
export type PassphraseProvider = (about: { path: string }) => Promise<string>;

/**
 * The passphrase key store source for `path`. `getPassphrase` is called once per {@link KeySource.load},
 * after the store file has been read and checked (so nobody is asked for a passphrase for a file that
 * cannot be opened). A wrong passphrase, or an altered file, gives VaultError("key_unavailable").
 */
export function passphraseKeySource(path: string, getPassphrase: PassphraseProvider): KeySource {
  const sessions = new WeakMap<Keyring, Session>();

  function sessionOf(ring: Keyring): Session {
    const s = sessions.get(ring);
    if (s === undefined || s.live === 0) {
      throw new VaultError("internal", `this key ring was not loaded from ${WHAT} ${path}, or was already wiped`);
    }
    return s;
  }

  /** True when `doc` is sealed under the same KDF parameters and salt as the session's key. */
  function sameKdf(s: Session, doc: StoreDoc): boolean {
    return (
      doc.kdf.memoryKib === s.kdf.memoryKib &&
      doc.kdf.iterations === s.kdf.iterations &&
      doc.kdf.parallelism === s.kdf.parallelism &&
      doc.kdf.salt.equals(s.kdf.salt)
    );
  }

  /** Refuses to rotate when the file no longer holds exactly the keys of `ring` under the same KDF. */
  function checkUnchanged(s: Session, ring: Keyring): void {
    const doc = readDoc(path);
    let same = false;
    if (sameKdf(s, doc)) {
      const onDisk = ringOf(openKeys(doc, s.kek, path));
      same = onDisk.ids().join(",") === ring.ids().join(",");
      onDisk.wipe();
    }
    if (!same) throw new VaultError("key_unavailable", `${WHAT} ${path} changed since its keys were loaded (another master-key rotation wrote it, or it was edited), so this rotation wrote nothing; wait for any other rotation to finish, then run the command again`);
  }

  function write(s: Session, keys: Buffer[]): Keyring {
    try {
      replaceKeyFile(path, render(s.kdf, s.alg, s.kek, keys), WHAT);
    } catch (e) {
      wipeAll(keys);
      throw e;
    }
    return track(s, ringOf(keys), sessions);
  }

  return {
    kind: "passphrase",
    describe: `passphrase key store ${path}`,
    writable: true,
    load: async () => {
      const doc = readDoc(path);
      const passphrase = await getPassphrase({ path });
      if (passphrase.length === 0) throw new VaultError("key_unavailable", `the passphrase for ${path} is empty`);
      const kek = await derive(passphrase, doc.kdf);
      let keys: Buffer[];
      try {
        keys = openKeys(doc, kek, path);
      } catch (e) {
        kek.fill(0);
        throw e;
      }
      const session: Session = { kek, kdf: doc.kdf, alg: doc.alg, live: 0 };
      return track(session, ringOf(keys), sessions);
    },
    // After another instance rotated: the file is opened again with the key derived when `ring` was
    // loaded (a rotation reseals under the same salt and parameters), so nobody is asked again.
    reload: async (ring) => {
      const s = sessionOf(ring);
      const doc = readDoc(path);
      if (!sameKdf(s, doc))
        throw new VaultError("key_unavailable", `${WHAT} ${path} was sealed again under another passphrase or other key-derivation settings; restart lessor to enter its passphrase`);
      return track(s, ringOf(openKeys(doc, s.kek, path)), sessions);
    },
    promote: async (ring, newKey) => {
      if (newKey.length !== KEY_BYTES) throw new VaultError("internal", `a master key must be ${KEY_BYTES} bytes`);
      const s = sessionOf(ring);
      checkUnchanged(s, ring);
      const fresh = Buffer.alloc(KEY_BYTES);
      newKey.copy(fresh);
      return write(s, [fresh, ...copyKeys(ring)]);
    },
    retire: async (ring, keep) => {
      const s = sessionOf(ring);
      checkKeep(ring, keep);
      checkUnchanged(s, ring);
      return write(s, copyKeys(ring, keep));
    },
  };
}
