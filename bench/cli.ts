/**
 * CLI benchmark (issue 4). Prints one JSON line per figure beside `node -e 0` measured in the same run.
 *
 *   npm run build && npx tsx bench/cli.ts [--quick]
 *
 * Figures (median wall time of N runs of the built dist/bin/lessor.cjs):
 *   lessor --version                 goal <= 1.3x node -e 0
 *   lessor lease … (daemon running)  goal <= 1.6x
 *   lessor run -- node -e 0          goal <= 2.2x (two Node start-ups)
 *   lessor status (daemon running)   no goal: a command of the full command tree, for comparison
 *
 * Beside lease and run, their floors (also against `node -e 0`): what the least Node program doing
 * the same job pays. lease_floor is `bench/floors.cjs lease` (connect, one request, print); run_floor is
 * node spawning `node -e 0` with piped output; run_lease_floor is `bench/floors.cjs run`, run_floor plus
 * what `lessor run` must add to it (take the lease with its one read before the start, revoke it
 * after the exit, each a durable commit in the daemon). The lease and run lines repeat them as
 * floor_ratio (and run_node its lease_floor_ratio).
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { initHome } from "../src/config/open-vault.js";

const quick = process.argv.includes("--quick");
const RUNS = quick ? 5 : 21;
const BIN = fileURLToPath(new URL("../dist/bin/lessor.cjs", import.meta.url));
const emit = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ bench: "cli", ...o })}\n`);

function time(cmd: string[], env: NodeJS.ProcessEnv): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd[0]!, cmd.slice(1), { env, stdio: ["ignore", "pipe", "pipe"] });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd.join(" ")} exited ${r.status}: ${r.stderr.toString()}`);
  return ms;
}

/** Median of RUNS timings, interleaved with the baseline so drift hits both alike. */
function compare(cmd: string[], env: NodeJS.ProcessEnv): { ms: number; base: number } {
  const a: number[] = [];
  const b: number[] = [];
  time(cmd, env);
  for (let i = 0; i < RUNS; i++) {
    b.push(time([process.execPath, "-e", "0"], env));
    a.push(time(cmd, env));
  }
  const med = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  return { ms: med(a), base: med(b) };
}

/** The floors: what any Node program doing the same job pays, to read the lessor figures against. */
const FLOORS = fileURLToPath(new URL("./floors.cjs", import.meta.url));
const RUN_FLOOR = 'const c = require("node:child_process").spawn(process.execPath, ["-e", "0"], { stdio: ["inherit", "pipe", "pipe"] }); c.stdout.pipe(process.stdout); c.stderr.pipe(process.stderr);';

/** One figure's line: its median time beside `node -e 0` from the same runs, plus `extra`. */
function figure(name: string, r: { ms: number; base: number }, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { name, ms: +r.ms.toFixed(1), baseline: "node -e 0", baseline_ms: +r.base.toFixed(1), ratio: +(r.ms / r.base).toFixed(2), ...extra };
}

const floorNote = (note: string) => ({ note: `floor, not a lessor figure: ${note}` });
const floorRatio = (f: { ms: number; base: number }) => ({ floor_ratio: +(f.ms / f.base).toFixed(2) });

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "lessor-bench-cli-"));
  const home = join(dir, "home");
  const env = { PATH: process.env.PATH, HOME: process.env.HOME, LESSOR_HOME: home };
  await initHome({ home, env });
  writeFileSync(join(home, "policy.toml"), `[[rule]]\nname = "b"\neffect = "allow"\nagents = ["bench"]\nsecrets = ["token"]\nany_domain = true\n`);
  const daemon = spawn(process.execPath, [BIN, "serve"], { env, stdio: ["ignore", "ignore", "pipe"] });
  try {
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: daemon.stderr! }).on("line", (l) => l.includes("lessor daemon ready") && resolve());
      daemon.once("exit", (c) => reject(new Error(`daemon exited ${c}`)));
    });
    const r1 = compare([BIN, "--version"], env);
    emit(figure("version", r1, { goal: "<= 1.3" }));
    spawnSync(process.execPath, [BIN, "secret", "set", "token", "--random"], { env });
    const r2 = compare([BIN, "lease", "token", "--agent", "bench", "--domain", "api.example.com"], env);
    const f2 = compare([process.execPath, FLOORS, "lease", join(home, "lessor.sock"), "bench", "token", "api.example.com"], env);
    emit(figure("lease_floor", f2, floorNote("a bare Node client: connect, hello + request_lease with access in one write, print the value")));
    emit(figure("lease_daemon", r2, { goal: "<= 1.6", ...floorRatio(f2) }));
    writeFileSync(join(dir, "env"), "TOKEN=lessor://global/token\n");
    const r3 = compare([BIN, "run", "--agent", "bench", "--env-file", join(dir, "env"), "--", process.execPath, "-e", "0"], env);
    const f3 = compare([process.execPath, "-e", RUN_FLOOR], env);
    const f4 = compare([process.execPath, FLOORS, "run", join(home, "lessor.sock"), "bench", "token", "TOKEN", "--", process.execPath, "-e", "0"], env);
    emit(figure("run_floor", f3, floorNote("node spawning node -e 0 with its output piped, before any lease or revocation")));
    emit(figure("run_lease_floor", f4, floorNote("a bare Node program doing run's job: hello + lease with its read in one write, spawn with output piped, revoke after the exit and wait for the durable answer")));
    emit(figure("run_node", r3, { goal: "<= 2.2", ...floorRatio(f3), lease_floor_ratio: +(f4.ms / f4.base).toFixed(2) }));
    // Not a goal: a command of the full tree (commander, the ESM bundle), to see what the fast path saves.
    const r4 = compare([BIN, "status"], env);
    emit(figure("status_daemon_full_cli", r4));
  } finally {
    daemon.kill("SIGTERM");
    await new Promise((r) => daemon.once("exit", r));
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
