/** Runs the built CLI (dist/bin/lessor.cjs, made by `npm run build:cli`) as a real child process. */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { initHome, openVault } from "../src/config/open-vault.js";
import type { StoreSecretParams } from "../src/vault/secrets.js";

export const BIN = fileURLToPath(new URL("../dist/bin/lessor.cjs", import.meta.url));
if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run npm run build:cli (npm test does it)`);

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

const homes: string[] = [];
process.on("exit", () => {
  for (const h of homes) rmSync(h, { recursive: true, force: true });
});

/** A fresh initialised home (removed when the test process exits). */
export async function cliHome(): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "lessor-cli-"));
  homes.push(dir);
  const home = join(dir, "home");
  await initHome({ home, env: { LESSOR_HOME: home } });
  return home;
}

/** Writes `policy` as the home's policy.toml and stores `secrets` through the vault itself (as admin). */
export async function seedHome(home: string, policy: string, secrets: StoreSecretParams[]): Promise<void> {
  writeFileSync(join(home, "policy.toml"), policy, { mode: 0o600 });
  const vault = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    for (const s of secrets) await vault.admin().storeSecret(s);
  } finally {
    await vault.close();
  }
}

/**
 * Runs `lessor <args>` with LESSOR_HOME=home; `input` is written to stdin (then closed). `bin`: another
 * build of the CLI than dist's (a snapshot a test took, say).
 */
export function runCli(args: string[], opts: { home?: string; env?: Record<string, string>; input?: string | Buffer; timeoutMs?: number; bin?: string } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    // `node -- BIN`, as the bin's own preamble runs it (see src/cli/bin.ts).
    const child = spawn(process.execPath, ["--", opts.bin ?? BIN, ...args], {
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", ...(opts.home ? { LESSOR_HOME: opts.home } : {}), ...opts.env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 30_000);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
    });
    child.stdin.on("error", () => {}); // a CLI that exits before reading all of `input`
    if (opts.input !== undefined) child.stdin.end(opts.input);
    else child.stdin.end();
  });
}

/** A CLI command left running (a proxy, an MCP server): its output so far, and its exit. */
export interface RunningCli {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Starts the built CLI with `args` and exactly `env`; resolves once its stderr matches `ready` (or it
 * exits, or 30 s pass). It is killed after 60 s if it is still running.
 */
export async function startCli(args: string[], ready: RegExp, env: Record<string, string>): Promise<RunningCli> {
  const child = spawn(process.execPath, ["--", BIN, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on("data", (d: Buffer) => out.push(d));
  child.stderr!.on("data", (d: Buffer) => err.push(d));
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    }),
  );
  const r: RunningCli = { child, stdout: () => Buffer.concat(out).toString("utf8"), stderr: () => Buffer.concat(err).toString("utf8"), exited };
  let gone = false;
  void exited.then(() => (gone = true));
  for (let i = 0; i < 1500 && !gone && !ready.test(r.stderr()); i++) await new Promise((s) => setTimeout(s, 20));
  return r;
}
