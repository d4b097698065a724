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

/** Children started here that still run when the test process exits are killed then. */
const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of running) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
});
function track(child: ChildProcess): void {
  running.add(child);
  child.on("close", () => running.delete(child));
}

/**
 * Runs `file args` from `cwd` with exactly `env` (nothing added: no PATH, no HOME); `input` is written
 * to its stdin (then closed), without it stdin is /dev/null. Killed after `timeoutMs` (30 s; Infinity:
 * never, the test's own timeout ends a hang).
 */
export function runProcess(file: string, args: string[], opts: { env: Record<string, string>; cwd?: string; input?: string | Buffer; timeoutMs?: number }): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { cwd: opts.cwd, env: opts.env, stdio: [opts.input === undefined ? "ignore" : "pipe", "pipe", "pipe"] });
    track(child);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on("data", (d: Buffer) => out.push(d));
    child.stderr!.on("data", (d: Buffer) => err.push(d));
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const timer = timeoutMs === Infinity ? undefined : setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
    });
    if (opts.input !== undefined) {
      child.stdin!.on("error", () => {}); // a command that exits before reading all of `input`
      child.stdin!.end(opts.input);
    }
  });
}

/**
 * `node -- BIN <args>` from `cwd` with exactly `env`: unlike runCli, no PATH or HOME of the test's
 * (the sandbox tests' owner has its own HOME, which decides the sandbox's layout). stdin is /dev/null.
 */
export function runCliWithEnv(args: string[], opts: { env: Record<string, string>; cwd?: string; timeoutMs?: number; bin?: string }): Promise<CliResult> {
  return runProcess(process.execPath, ["--", opts.bin ?? BIN, ...args], { env: opts.env, cwd: opts.cwd, timeoutMs: opts.timeoutMs });
}

/**
 * Runs `lessor <args>` with LESSOR_HOME=home; `input` is written to stdin (then closed). `bin`: another
 * build of the CLI than dist's (a snapshot a test took, say).
 */
export function runCli(args: string[], opts: { home?: string; env?: Record<string, string>; input?: string | Buffer; timeoutMs?: number; bin?: string } = {}): Promise<CliResult> {
  // `node -- BIN`, as the bin's own preamble runs it (see src/cli/bin.ts); stdin a pipe, closed after `input`.
  return runProcess(process.execPath, ["--", opts.bin ?? BIN, ...args], {
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", ...(opts.home ? { LESSOR_HOME: opts.home } : {}), ...opts.env },
    input: opts.input ?? "",
    timeoutMs: opts.timeoutMs,
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
 * exits, or 30 s pass). `prefix`: a command it runs under (`prlimit … --`, say). It is killed after
 * `killAfterMs` (60 s; Infinity: never) if it is still running, and when the test process exits.
 */
export async function startCli(args: string[], ready: RegExp, env: Record<string, string>, opts: { prefix?: string[]; killAfterMs?: number } = {}): Promise<RunningCli> {
  const argv = [...(opts.prefix ?? []), process.execPath, "--", BIN, ...args];
  const child = spawn(argv[0]!, argv.slice(1), { env, stdio: ["ignore", "pipe", "pipe"] });
  track(child);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on("data", (d: Buffer) => out.push(d));
  child.stderr!.on("data", (d: Buffer) => err.push(d));
  const killAfterMs = opts.killAfterMs ?? 60_000;
  const timer = killAfterMs === Infinity ? undefined : setTimeout(() => child.kill("SIGKILL"), killAfterMs);
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

/** `NAME=value` lines (what `lessor proxy` prints for the agent's environment, say) as a record. */
export function envOf(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) env[line.slice(0, i)] = line.slice(i + 1);
  }
  return env;
}

/** How many of `agent`'s leases in `home`'s vault are live now (the vault opened as its admin, then closed). */
export async function liveLeases(home: string, agent: string): Promise<number> {
  const vault = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    return (await vault.admin().listLeases({ agent, liveAt: Date.now() })).length;
  } finally {
    await vault.close();
  }
}
