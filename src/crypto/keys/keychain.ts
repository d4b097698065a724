/**
 * Master keys in the OS keychain (macOS Keychain, Windows Credential Manager, the Secret Service on
 * Linux: gnome-keyring, KWallet, KeePassXC), through the optional package @napi-rs/keyring.
 *
 * The home holds a marker file (`keychain.json` unless `[keys] keychain_file` says otherwise), 0600 in
 * the 0700 home and checked like the key file: `{"lessor_keychain":1,"service":"lessor","account":"<id>"}`.
 * It names the keychain entry; it holds no key. The entry (service, account) holds the same JSON as a
 * key file, `{"lessor_keyfile":1,"keys":["<hex>", ...]}`, current key first. Writable: `lessor key
 * rotate` re-reads the entry, refuses if it changed since it was loaded, writes the new ring and reads
 * it back.
 *
 * Every keychain call runs in a short-lived helper process (this Node binary, `-e`), never in lessor's
 * own: the keychain client connects synchronously (a Secret Service whose bus never answers blocks the
 * thread for good) and waits on unlock prompts, and a native call stuck in a thread of lessor's would
 * also keep it from exiting. The helper is killed after a time limit (`[keys] keychain_timeout`,
 * default 30 s), so a locked or hung keychain gives VaultError("key_unavailable"), not a hang. Keys
 * travel over the helper's stdin and stdout pipes, never its arguments (`ps` shows those to everyone).
 * On Linux the entry is pinned to the Secret Service: the package would otherwise fall back silently
 * to the kernel keyring, which forgets everything at reboot (and every secret with it).
 *
 * The key ring passes through JavaScript strings (the pipe's JSON), which cannot be wiped; the key
 * Buffers handed to the vault are wiped as every source's are.
 */
import { execFile, type ExecFileException } from "node:child_process";
import { randomBytes, randomFillSync } from "node:crypto";
import { lstatSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { VaultError } from "../../base/errors.js";
import { withoutLessorSecrets } from "../../base/secret-env.js";
import { ensurePrivateDir } from "../../fs/perms.js";
import { type Keyring, KEY_BYTES } from "../keyring.js";
import type { KeySource } from "../../vault/ports.js";
import { checkKeep, copyKeys, parseKeyRing, readPrivateFile, renderKeyRing, ringOf, writeNewKeyFile } from "./common.js";

/** The optional package that talks to the OS keychain. */
export const KEYCHAIN_PACKAGE = "@napi-rs/keyring";
/** The version package.json pins (for the install hint). */
const KEYCHAIN_PACKAGE_VERSION = "2.1.2";
/** The keychain service name `lessor init` uses. */
export const KEYCHAIN_SERVICE = "lessor";
/** Default time limit for one keychain call (an unlock prompt on a desktop may need a while). */
export const DEFAULT_KEYCHAIN_TIMEOUT_MS = 30_000;

const WHAT = "the keychain marker file";
const MAX_MARKER_BYTES = 4096;
const MAX_OUTPUT = 64 * 1024;
/** A service or account name: plain, short, and safe to print. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Where the master key lives in the keychain. */
export interface KeychainEntry {
  service: string;
  account: string;
}

/** How the keychain is reached. */
export interface KeychainOptions {
  /** Time limit for one keychain call, in ms (default 30 s). */
  timeoutMs?: number;
  /**
   * Environment of the helper process: the keychain client finds the session bus there (Linux:
   * DBUS_SESSION_BUS_ADDRESS). Default: this process's environment. Either way NODE_OPTIONS and lessor's
   * own secrets (src/base/secret-env.ts) are dropped.
   */
  env?: NodeJS.ProcessEnv;
  /** The package to load; tests name one that is not installed. Default {@link KEYCHAIN_PACKAGE}. */
  packageName?: string;
}

const where = (e: KeychainEntry): string => `${e.service}/${e.account}`;

// ---- the marker file ----

function invalidMarker(path: string, reason: string): VaultError {
  return new VaultError(
    "key_unavailable",
    `${WHAT} ${path} is not a valid lessor keychain marker (${reason}); restore it from your backup (it names the keychain entry that holds the master key)`,
  );
}

/** Strictly parses the marker's text. Errors never echo the contents. */
function parseMarker(text: string, path: string): KeychainEntry {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw invalidMarker(path, "it is not JSON");
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw invalidMarker(path, "it is not a JSON object");
  const fields = Object.keys(doc).sort();
  if (fields.join(",") !== "account,lessor_keychain,service") {
    throw invalidMarker(path, 'it must have exactly the fields "lessor_keychain", "service" and "account"');
  }
  const { lessor_keychain: version, service, account } = doc as Record<string, unknown>;
  if (version !== 1) throw invalidMarker(path, "unsupported lessor_keychain version; this lessor reads version 1");
  for (const [field, v] of [["service", service], ["account", account]] as const) {
    if (typeof v !== "string" || !NAME.test(v)) {
      throw invalidMarker(path, `"${field}" must be 1 to 128 letters, digits, ".", "_" or "-", starting with a letter or digit`);
    }
  }
  return { service: service as string, account: account as string };
}

function renderMarker(e: KeychainEntry): string {
  return JSON.stringify({ lessor_keychain: 1, service: e.service, account: e.account }) + "\n";
}

/** Reads the marker with the key file's checks: 0600, yours, not a symlink, in a 0700 directory. */
export function readKeychainMarker(path: string): KeychainEntry {
  const raw = readPrivateFile(path, WHAT);
  try {
    if (raw.length > MAX_MARKER_BYTES) throw invalidMarker(path, `it is larger than ${MAX_MARKER_BYTES} bytes`);
    return parseMarker(raw.toString("utf8"), path);
  } finally {
    raw.fill(0);
  }
}

/** True when something (even a dangling symlink) is at `path`: a symlinked marker is then refused, not ignored. */
export function keychainMarkerPresent(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

// ---- the helper process ----

/**
 * The helper, run as `node -e`: reads one request as JSON on stdin, prints one reply as JSON. It
 * loads the package by the path resolved in lessor (so it finds lessor's own copy).
 */
const HELPER = `"use strict";
const out = (o) => process.stdout.write(JSON.stringify(o));
const chunks = [];
process.stdin.on("data", (c) => chunks.push(c));
process.stdin.on("end", () => {
  let req;
  try { req = JSON.parse(Buffer.concat(chunks).toString("utf8")); } catch { return out({ ok: false, stage: "input", error: "the request is not JSON" }); }
  let Entry;
  try { ({ Entry } = require(req.module)); } catch (e) { return out({ ok: false, stage: "load", error: String((e && e.message) || e) }); }
  try {
    const entry = new Entry(req.service, req.account, { linux: { store: "secret-service" } });
    if (req.op === "get") return out({ ok: true, value: entry.getPassword() });
    if (req.op === "set") { entry.setPassword(req.value); return out({ ok: true }); }
    if (req.op === "delete") return out({ ok: true, deleted: entry.deleteCredential() });
    return out({ ok: false, stage: "input", error: "unknown operation" });
  } catch (e) { return out({ ok: false, stage: "op", error: String((e && e.message) || e) }); }
});
`;

type Op = { op: "get" } | { op: "set"; value: string } | { op: "delete" };

interface Reply {
  ok: boolean;
  stage?: string;
  error?: string;
  value?: unknown;
  deleted?: unknown;
}

function notInstalled(pkg: string, e: KeychainEntry, detail?: string): VaultError {
  return new VaultError(
    "key_unavailable",
    `the OS keychain (entry ${where(e)}) is reached through the optional package ${pkg}, which ${detail === undefined ? "is not installed" : `could not be loaded here (${detail})`}; install it where lessor is installed: npm install --save-exact ${pkg}@${KEYCHAIN_PACKAGE_VERSION}`,
  );
}

/** A platform message, short, with anything that looks like key material taken out. */
function platformMessage(s: unknown): string {
  const text = typeof s === "string" ? s : "no details";
  return text.replace(/[0-9a-fA-F]{32,}/g, "…").replace(/\s+/g, " ").trim().slice(0, 300);
}

/** Runs one keychain call in the helper process, with the time limit. */
async function call(entry: KeychainEntry, op: Op, opts: KeychainOptions): Promise<Reply> {
  const pkg = opts.packageName ?? KEYCHAIN_PACKAGE;
  let module: string;
  try {
    module = createRequire(import.meta.url).resolve(pkg);
  } catch {
    throw notInstalled(pkg, entry);
  }
  const timeoutMs = opts.timeoutMs ?? DEFAULT_KEYCHAIN_TIMEOUT_MS;
  // Without lessor's own secrets (the passphrase, a token, the database's password): the helper, and
  // the package it loads, need only the session bus's address.
  const env = withoutLessorSecrets(opts.env ?? process.env);
  delete env["NODE_OPTIONS"]; // the helper needs no loader, and none of the caller's preloads
  const request = JSON.stringify({ module, service: entry.service, account: entry.account, ...op });
  const stdout = await new Promise<Buffer>((resolve, reject) => {
    const child = execFile(
      process.execPath,
      ["-e", HELPER],
      { encoding: "buffer", timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: MAX_OUTPUT, env, shell: false, windowsHide: true },
      (err: ExecFileException | null, out: Buffer, errOut: Buffer) => {
        errOut.fill(0);
        if (err === null) return resolve(out);
        out.fill(0);
        // No `cause`: the child-process error carries the helper's output.
        if (err.code === "ERR_CHILD_PROCESS_STDIO_MAXBUFFER") {
          return reject(new VaultError("key_unavailable", `the OS keychain helper for ${where(entry)} printed more than ${MAX_OUTPUT / 1024} KiB; the entry is not a lessor key ring`));
        }
        if (err.killed) {
          return reject(
            new VaultError(
              "key_unavailable",
              `the OS keychain did not answer within ${timeoutMs} ms for ${where(entry)}: it may be locked and waiting for its password, or its service may be hung; unlock the keychain (on Linux: the Secret Service, e.g. gnome-keyring, on this session's D-Bus) and try again, or raise keychain_timeout under [keys] in lessor.toml`,
            ),
          );
        }
        return reject(new VaultError("key_unavailable", `the OS keychain helper for ${where(entry)} failed (${String(err.code ?? err.signal ?? "error")}); run the command again`));
      },
    );
    child.stdin?.on("error", () => {});
    child.stdin?.end(request);
  });
  try {
    let reply: Reply;
    try {
      reply = JSON.parse(stdout.toString("utf8")) as Reply;
    } catch {
      throw new VaultError("key_unavailable", `the OS keychain helper for ${where(entry)} gave no answer lessor understands; run the command again`);
    }
    if (typeof reply !== "object" || reply === null) throw new VaultError("key_unavailable", `the OS keychain helper for ${where(entry)} gave no answer lessor understands`);
    if (reply.ok) return reply;
    if (reply.stage === "load") throw notInstalled(pkg, entry, platformMessage(reply.error));
    throw new VaultError(
      "key_unavailable",
      `the OS keychain could not be used for ${where(entry)} (${platformMessage(reply.error)}); unlock the keychain and make sure this session can reach it (on Linux: a Secret Service such as gnome-keyring on the session D-Bus, DBUS_SESSION_BUS_ADDRESS), then try again`,
    );
  } finally {
    stdout.fill(0);
  }
}

// ---- the entry ----

function damaged(e: KeychainEntry, reason: string): VaultError {
  return new VaultError(
    "key_unavailable",
    `the OS keychain entry ${where(e)} is not a valid lessor key ring (${reason}); restore it from your backup (service "${e.service}", account "${e.account}")`,
  );
}

/** The entry's keys, current first. A missing entry, a keychain that cannot be read, or damaged content → key_unavailable. */
async function readEntry(e: KeychainEntry, markerPath: string, opts: KeychainOptions): Promise<Buffer[]> {
  const r = await call(e, { op: "get" }, opts);
  if (r.value === null || r.value === undefined) {
    throw new VaultError(
      "key_unavailable",
      `the OS keychain has no entry ${where(e)} (service "${e.service}", account "${e.account}"), which ${markerPath} says holds the master key: unlock or select the keychain that holds it (the login keyring), or restore the entry from your backup; without it this vault cannot be opened`,
    );
  }
  if (typeof r.value !== "string") throw damaged(e, "it is not text");
  return parseKeyRing(r.value, (reason) => damaged(e, reason));
}

/** Writes `keys` as the entry's ring and reads it back; returns the ring. Wipes `keys` on failure. */
async function writeEntry(e: KeychainEntry, markerPath: string, keys: Buffer[], opts: KeychainOptions): Promise<Keyring> {
  const ring = ringOf(keys);
  try {
    await call(e, { op: "set", value: renderKeyRing(keys) }, opts);
    const back = ringOf(await readEntry(e, markerPath, opts));
    const same = back.ids().join(",") === ring.ids().join(",");
    back.wipe();
    if (!same) throw new VaultError("key_unavailable", `the OS keychain entry ${where(e)} does not hold the key ring just written to it; run the command again`);
  } catch (err) {
    ring.wipe();
    throw err;
  }
  return ring;
}

/**
 * Creates the keychain entry for a new home: a fresh random account under service "lessor", holding
 * one new random key, then the marker file at `markerPath` (exclusive create, 0600; the directory is
 * made 0700 if missing). If the marker cannot be written, the entry is deleted again. Never
 * overwrites a marker or an entry. Returns the entry.
 */
export async function createKeychainKey(markerPath: string, opts: KeychainOptions = {}): Promise<KeychainEntry> {
  ensurePrivateDir(dirname(markerPath), `the directory of ${WHAT}`);
  if (keychainMarkerPresent(markerPath)) {
    throw new VaultError("invalid_request", `${WHAT} ${markerPath} already exists; lessor will not replace it (it names the keychain entry that holds the master key)`);
  }
  const entry: KeychainEntry = { service: KEYCHAIN_SERVICE, account: randomBytes(12).toString("hex") };
  const before = await call(entry, { op: "get" }, opts);
  if (before.value !== null && before.value !== undefined) {
    throw new VaultError("invalid_request", `the OS keychain already has an entry ${where(entry)}; run lessor init again`);
  }
  const key = Buffer.alloc(KEY_BYTES);
  randomFillSync(key);
  try {
    (await writeEntry(entry, markerPath, [key], opts)).wipe();
    writeNewKeyFile(markerPath, renderMarker(entry), WHAT);
  } catch (e) {
    // Undo: a keychain entry that no marker names would be an orphaned key.
    let left = false;
    try {
      await call(entry, { op: "delete" }, opts);
    } catch {
      left = true;
    }
    if (left && e instanceof VaultError)
      throw new VaultError(e.code, `${e.message} (the keychain entry ${where(entry)} may have been made, and could not be deleted again: look for it and delete it)`);
    throw e;
  } finally {
    key.fill(0);
  }
  return entry;
}

/**
 * The keychain key source named by the marker file at `markerPath`. The marker is read (and its
 * permissions checked) now, for {@link KeySource.describe}, and again at every load.
 */
export function keychainKeySource(markerPath: string, opts: KeychainOptions = {}): KeySource {
  const named = readKeychainMarker(markerPath);
  const entry = (): KeychainEntry => {
    const now = readKeychainMarker(markerPath);
    if (now.service !== named.service || now.account !== named.account) {
      throw new VaultError("key_unavailable", `${WHAT} ${markerPath} changed while lessor was running (it names another keychain entry now); restart lessor`);
    }
    return now;
  };
  /** Refuses to rotate when the entry no longer holds exactly the keys of `ring` (e.g. another rotation ran). */
  const checkUnchanged = async (e: KeychainEntry, ring: Keyring): Promise<void> => {
    const inKeychain = ringOf(await readEntry(e, markerPath, opts));
    const same = inKeychain.ids().join(",") === ring.ids().join(",");
    inKeychain.wipe();
    if (!same) throw new VaultError("key_unavailable", `the OS keychain entry ${where(e)} changed since its keys were loaded (another master-key rotation wrote it, or it was edited), so this rotation wrote nothing; wait for any other rotation to finish, then run the command again`);
  };
  return {
    kind: "keychain",
    describe: `keychain ${where(named)}`,
    writable: true,
    load: async () => ringOf(await readEntry(entry(), markerPath, opts)),
    promote: async (ring, newKey) => {
      if (newKey.length !== KEY_BYTES) throw new VaultError("internal", `a master key must be ${KEY_BYTES} bytes`);
      const e = entry();
      await checkUnchanged(e, ring);
      const fresh = Buffer.alloc(KEY_BYTES);
      newKey.copy(fresh);
      return writeEntry(e, markerPath, [fresh, ...copyKeys(ring)], opts);
    },
    retire: async (ring, keep) => {
      checkKeep(ring, keep);
      const e = entry();
      await checkUnchanged(e, ring);
      return writeEntry(e, markerPath, copyKeys(ring, keep), opts);
    },
  };
}
