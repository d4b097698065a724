/**
 * For attacks on rotation hooks (`lessor secret rotate --hook`, `[[rotate]]` in lessor.toml): another
 * local user (uid 65534 through setpriv), a base directory that user can reach, a home whose secret
 * `db` is seeded and read back, a rotate run in the background, and the vault's SQLite file held
 * write-locked by another process.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { openVault } from "../src/config/open-vault.js";
import { BIN } from "./cli-harness.js";

/** The other local user's uid (nobody). */
export const NOBODY = 65534;
export const HAVE_SETPRIV = spawnSync("setpriv", ["--version"]).status === 0 && process.getuid?.() === 0;

/** `s` quoted for /bin/sh. */
export const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** Runs `script` with /bin/sh as uid 65534 (another local user). */
export function asNobody(script: string): void {
  const r = spawnSync("setpriv", [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", "/bin/sh", "-c", script], { encoding: "utf8" });
  assert.equal(r.status, 0, `as uid ${NOBODY}: ${script}\n${r.stderr}`);
}

/**
 * As uid 65534, replaces `path` (in a directory that user can write) with a file holding `text`, made
 * executable (755) when `exec`: written beside it and moved over it.
 */
export function replaceAsNobody(path: string, text: string, exec = false): void {
  asNobody(`printf '%s' ${q(text)} > ${q(path)}.new && ${exec ? `chmod 755 ${q(path)}.new && ` : ""}mv -f ${q(path)}.new ${q(path)}`);
}

/** A base directory another local user can reach (but not write), removed when the process exits. */
export function reachableBase(prefix: string): string {
  const base = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(base, 0o755);
  process.on("exit", () => rmSync(base, { recursive: true, force: true }));
  return base;
}

/** Stores `value` as version 1 of global/db in `home`. */
export async function seedDb(home: string, value: string): Promise<void> {
  const v = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    await v.admin().storeSecret({ name: "db", value });
  } finally {
    await v.close();
  }
}

/** global/db's current version and value in `home`. */
export async function currentOf(home: string): Promise<{ version: number; value: string }> {
  const v = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    const meta = await v.admin().getSecretMetadata({ scope: "global", name: "db" });
    const got = await v.admin().revealSecret({ scope: "global", name: "db" });
    return { version: meta.currentVersion, value: got.value.expose().toString() };
  } finally {
    await v.close();
  }
}

/** A `[[rotate]]` table for db running `command`, with `extra` lines. */
export const rotateToml = (command: string[], extra = 'stdin = "current"') => `[[rotate]]\nsecret = "db"\ncommand = ${JSON.stringify(command)}\n${extra}\n`;

/**
 * Starts `lessor secret rotate db --hook` in `home` (the built CLI): the child, its stdout and stderr
 * together (`out`), its stderr alone (`err`), and its exit.
 */
export function startRotate(home: string): { child: ChildProcess; out: () => string; err: () => string; exited: Promise<{ code: number | null; signal: string | null }> } {
  const child = spawn(process.execPath, ["--", BIN, "secret", "rotate", "db", "--hook"], {
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", LESSOR_HOME: home },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => ((out += d.toString()), (err += d.toString())));
  const exited = new Promise<{ code: number | null; signal: string | null }>((r) => child.on("close", (code, sig) => r({ code, signal: sig })));
  return { child, out: () => out, err: () => err, exited };
}

/** `lessor secret rotate db --hook` in `home` (the built CLI), its stdout and stderr together. */
export async function rotateInBackground(home: string): Promise<{ code: number | null; out: string }> {
  const r = startRotate(home);
  const { code } = await r.exited;
  return { code, out: r.out() };
}

/** Waits (up to 30 s) for `path` to exist. */
export async function waitFor(path: string): Promise<void> {
  for (let i = 0; i < 1200 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 25));
  assert.ok(existsSync(path), `${path} never appeared`);
}

/**
 * Another process holds the SQLite file `dbPath`'s write lock: takes it, creates `go` (a hook waiting
 * for it goes on), awaits `hold()`, then ends the transaction with `end`.
 */
export async function whileWriteLocked<T>(dbPath: string, go: string, hold: () => Promise<T>, end: "COMMIT" | "ROLLBACK" = "COMMIT"): Promise<T> {
  const db = new Database(dbPath);
  try {
    db.exec("BEGIN IMMEDIATE");
    writeFileSync(go, "");
    const r = await hold();
    db.exec(end);
    return r;
  } finally {
    db.close();
  }
}
