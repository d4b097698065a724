/** Shared test helpers: temp dirs, a vault on a real SQLite file with a chosen policy, a clock. */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chownSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { isPrivateGroup } from "../src/fs/private-group.js";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";
import { envKeySource } from "../src/crypto/keys/env.js";
import type { AuditSink } from "../src/vault/ports.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { createMemoryStore } from "../src/store/memory.js";
import type { Store } from "../src/vault/ports.js";
import { parsePolicy } from "../src/vault/policy.js";
import type { Identity } from "../src/base/types.js";
import { type ErrorCode, isVaultError } from "../src/base/errors.js";
import { Vault, type VaultOptions } from "../src/vault/vault.js";
import type { Limits } from "../src/vault/context.js";

/**
 * A temp dir removed when the test file's process exits. Not in an after() hook: hooks run in the
 * order they were added, so the directory would go before a vault or store opened in it later is
 * closed, and the SQLite store refuses to write (a vault's close may) once its file was removed.
 */
export function tempDir(prefix = "lessor-test-"): string {
  return tempDirUntilExit(prefix);
}

/** Dirs made by tempDirUntilExit(), removed when the test process exits. */
const untilExit: string[] = [];

/**
 * A temp dir removed when the test process exits: for one a test makes and later tests use (tempDir's
 * after(), called inside a test, runs when that test ends).
 */
export function tempDirUntilExit(prefix = "lessor-test-"): string {
  if (untilExit.length === 0)
    process.once("exit", () => {
      for (const d of untilExit) rmSync(d, { recursive: true, force: true });
    });
  const d = mkdtempSync(join(tmpdir(), prefix));
  untilExit.push(d);
  return d;
}

/** A controllable clock. */
export function clock(start = Date.UTC(2026, 0, 1)): { now: () => number; advance: (ms: number) => void; set: (t: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => (t += ms), set: (x) => (t = x) };
}

export const hexKey = (): string => randomBytes(32).toString("hex");

/** Identities used across tests. */
export const agent = (name: string): Identity => ({ id: `test:${name}`, role: "agent", agent: name, transport: "embedded" });
export const orchestrator = (actFor: string[]): Identity => ({ id: "test:orch", role: "orchestrator", actFor, transport: "embedded" });

export interface TestVault {
  vault: Vault;
  store: Store;
  dbPath: string | null;
  key: string;
  reopen(): Promise<TestVault>;
}

/** Opens a vault on a fresh SQLite file (or memory) with `policyText`. */
export async function makeVault(opts: {
  policy?: string;
  store?: "sqlite" | "memory";
  dir?: string;
  key?: string;
  now?: () => number;
  sinks?: AuditSink[];
  limits?: Partial<Limits>;
  cipher?: VaultOptions["cipher"];
} = {}): Promise<TestVault> {
  const key = opts.key ?? hexKey();
  // The vault closes before its directory goes: a vault may still write at close (refusal tallies),
  // and the SQLite store refuses to write once its file was removed (src/store/sqlite/sqlite-store.ts).
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), "lessor-test-"));
  let current: Vault | null = null;
  after(async () => {
    await current?.close();
    if (opts.dir === undefined) rmSync(dir, { recursive: true, force: true });
  });
  const dbPath = opts.store === "memory" ? null : join(dir, "lessor.db");
  const open = async (): Promise<TestVault> => {
    const store = dbPath ? openSqliteStore(dbPath) : createMemoryStore();
    const vault = await Vault.open({
      store,
      keys: envKeySource({ LESSOR_MASTER_KEY: key })!,
      policy: parsePolicy(opts.policy ?? "", "test-policy.toml"),
      ...(opts.now ? { now: opts.now } : {}),
      ...(opts.sinks ? { sinks: opts.sinks } : {}),
      ...(opts.limits ? { limits: opts.limits } : {}),
      ...(opts.cipher ? { cipher: opts.cipher } : {}),
    });
    current = vault;
    return { vault, store, dbPath, key, reopen: async () => { await vault.close(); return open(); } };
  };
  return open();
}

/** A policy granting `agents` the secret `name` for `domains` (no `domains` line when empty, for an `any_domain = true` rule), with extra TOML lines. */
export function grant(name: string, agents: string[], secrets: string[], domains: string[], extra = ""): string {
  return `[[rule]]
name = ${JSON.stringify(name)}
effect = "allow"
agents = ${JSON.stringify(agents)}
secrets = ${JSON.stringify(secrets)}
${domains.length > 0 ? `domains = ${JSON.stringify(domains)}\n` : ""}${extra}
`;
}

/** The policy withHistory() opens its vault with unless told otherwise: claude may use `tok` for api.example.com. */
export const HISTORY_POLICY = grant("g", ["claude"], ["tok"], ["api.example.com"]);

/**
 * A vault on a real SQLite file (makeVault with `opts`, HISTORY_POLICY by default) with 12 events:
 * stored, rotated, 3 × (granted, accessed, revoked), denied.
 */
export async function withHistory(opts: Parameters<typeof makeVault>[0] = {}) {
  const t = await makeVault({ policy: HISTORY_POLICY, ...opts });
  if (t.dbPath === null) throw new Error("withHistory needs a vault on a SQLite file");
  const admin = t.vault.admin();
  const claude = t.vault.session(agent("claude"));
  await admin.storeSecret({ name: "tok", value: "v1" });
  await admin.rotateSecret({ scope: "global", name: "tok" }, "v2");
  for (let i = 0; i < 3; i++) {
    const l = await claude.requestLease({ secret: "tok" });
    (await claude.accessSecret(l.id, { domain: "api.example.com" })).value.wipe();
    await claude.revokeLease(l.id);
  }
  await codeOf(claude.requestLease({ secret: "other" }));
  return { ...t, admin, claude, dbPath: t.dbPath };
}

/** Awaits `p` and returns the VaultError code it rejected with (or "resolved"). */
export async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "resolved";
  } catch (e) {
    return (e as { code?: string }).code ?? `not a VaultError: ${String(e)}`;
  }
}

/** Awaits `p` and returns the code and message it was refused with ({ code: "resolved", message: "" } if it resolved). */
export async function refusalOf(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (e) {
    return { code: (e as { code: string }).code, message: (e as Error).message };
  }
  return { code: "resolved", message: "" };
}

/**
 * Polls `f` every `everyMs` until it returns true; returns the ms it took. Fails (naming `what`)
 * once `ms` have passed without it.
 */
export async function within(ms: number, what: string, f: () => boolean | Promise<boolean>, everyMs = 5): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    if (await f()) return performance.now() - t0;
    assert.ok(performance.now() - t0 < ms, `${what} did not happen within ${ms} ms`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * The message of `p`'s (or `p()`'s) VaultError with `code`; fails the test on anything else, or when
 * `check` does not accept the message.
 */
export async function rejectsWith(p: Promise<unknown> | (() => unknown), code: ErrorCode, check?: (msg: string) => boolean): Promise<string> {
  let caught: unknown;
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    caught = e;
  }
  assert.ok(isVaultError(caught, code), `expected ${code}, got ${String(caught)}`);
  const msg = (caught as Error).message;
  if (check) assert.ok(check(msg), `unexpected message: ${msg}`);
  return msg;
}

/** Every regular file under `dir`, recursively. */
export function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

/** The body of a raw HTTP/1.1 answer, its chunked framing undone when it has one. */
export function dechunked(answer: string): string {
  const split = answer.indexOf("\r\n\r\n");
  const head = answer.slice(0, split);
  let rest = answer.slice(split + 4);
  if (!/^transfer-encoding:\s*chunked/im.test(head)) return rest;
  let body = "";
  for (;;) {
    const eol = rest.indexOf("\r\n");
    const size = eol < 0 ? NaN : parseInt(rest.slice(0, eol), 16);
    if (!(size > 0)) return body;
    body += rest.slice(eol + 2, eol + 2 + size);
    rest = rest.slice(eol + 2 + size + 2);
  }
}

/**
 * Gives `path` a group that is not its owner's private group (nogroup, as root), so that a group
 * write bit on it counts as other users' (src/fs/private-group.ts). Returns false when that cannot
 * be done here: not root, and the group it has is its owner's private group.
 */
export function shareGroup(path: string): boolean {
  if (process.getuid?.() === 0) {
    chownSync(path, statSync(path).uid, 65534);
    return true;
  }
  const st = statSync(path);
  return !isPrivateGroup(st.gid, st.uid);
}
