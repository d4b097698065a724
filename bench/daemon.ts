/**
 * Daemon benchmark (issue 3). Prints one JSON line per figure, each beside a baseline measured in the
 * same run: a framed-echo server over a Unix socket in its own process (bench/echo-server.ts), driven
 * by a client that JSON-encodes and -decodes like the real one.
 *
 *   npx tsx bench/daemon.ts [--quick]
 *
 * Figures: status round trip and lease+access round trips over the Unix socket, sequential and with
 * 8 and 32 concurrent clients (one connection each): as two calls (request_lease then access_secret)
 * and as one (request_lease with `access`, lease_access_1rt); and lease+access at 32 clients with
 * 1,000 vs 100,000 live leases. Every lease and access is a durable SQLite commit with its audit rows.
 * The lease+access lines also carry the daemon's CPU per op and its CPU use in cores (Linux /proc):
 * near 1 core means the daemon's one JavaScript thread is the limit. They carry the clients' CPU per
 * op too (this process). The 32-client lines add cores_at_goal_rate: the cores that 20,000 ops/s
 * would take at those costs, to set beside the machine's own.
 *
 * LESSOR_BENCH_DAEMON_ARGS: extra node arguments for the daemon process, split on spaces, e.g.
 * "--cpu-prof --cpu-prof-dir=/tmp/prof" (the profile is written when the daemon exits at the end).
 * LESSOR_BENCH_ONLY: a comma-separated list of figure groups to run (echo, status, lease_access,
 * lease_access_1rt, live, store_floor); default all. Echo always runs when status does (it is its
 * baseline).
 *
 * store_floor_c32 is a ceiling rather than a lessor figure: the SQLite store's own work for one
 * lease+access (bench/store-floor.ts), in-process with nothing else, so the lease+access figures can
 * be read against what the data model and the disk allow on this machine.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { LessorClient } from "../src/client/index.js";
import { initHome } from "../src/config/open-vault.js";
import { encodeFrame, FrameDecoder } from "../src/protocol/framing.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { addLiveLeases } from "./live-leases.js";
import { storeFloor } from "./store-floor.js";
import { uuidv7 } from "../src/base/ids.js";
import { cpuMs } from "./cpu.js";

const quick = process.argv.includes("--quick");
const only = process.env.LESSOR_BENCH_ONLY?.split(",").map((x) => x.trim());
const wants = (group: string): boolean => only === undefined || only.includes(group);
const daemonArgs = process.env.LESSOR_BENCH_DAEMON_ARGS?.split(" ").filter((a) => a !== "") ?? [];
const SECONDS = quick ? 1 : 3;
const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

function emit(o: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ bench: "daemon", ...o })}\n`);
}

const ROUNDS = quick ? 5 : 15;
const SLICE_MS = quick ? 150 : 300;
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Runs `clients` loops of `op` for `ms` (default SECONDS); returns completed ops per second. */
async function throughput(clients: number, op: (c: number) => Promise<void>, ms = SECONDS * 1000): Promise<number> {
  let done = 0;
  const end = performance.now() + ms;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      while (performance.now() < end) {
        await op(c);
        done++;
      }
    }),
  );
  return done / ((performance.now() - t0) / 1000);
}

/** Issue 3's goal for lease+access at 32 clients. */
const GOAL_OPS_PER_S = 20_000;

/**
 * The goal, and what it would take of this machine's cores at the measured cost per op: the daemon's
 * CPU and the clients' (this process) together.
 */
function atGoal(cpu: Record<string, number>): Record<string, unknown> {
  const us = (cpu["daemon_cpu_us_per_op"] ?? NaN) + (cpu["client_cpu_us_per_op"] ?? NaN);
  return { goal: `>= ${GOAL_OPS_PER_S} ops/s`, ...(Number.isFinite(us) ? { cores_at_goal_rate: +((us * GOAL_OPS_PER_S) / 1e6).toFixed(2) } : {}) };
}

/**
 * {@link throughput}, plus the daemon's CPU per op and its CPU use in cores over the run, and the
 * clients' CPU per op (this process): whether the daemon, rather than the disk or the clients, is
 * what limits the figure.
 */
async function withDaemonCpu(pid: number | undefined, clients: number, op: (c: number) => Promise<void>): Promise<{ rate: number; cpu: Record<string, number> }> {
  const c0 = cpuMs(pid);
  const u0 = process.cpuUsage();
  const t0 = performance.now();
  const rate = await throughput(clients, op);
  const seconds = (performance.now() - t0) / 1000;
  const c1 = cpuMs(pid);
  const u1 = process.cpuUsage(u0);
  if (c0 === undefined || c1 === undefined) return { rate, cpu: {} };
  const ops = rate * seconds;
  const daemonUs = ((c1 - c0) * 1000) / ops;
  const clientUs = (u1.user + u1.system) / ops;
  return {
    rate,
    cpu: {
      daemon_cpu_us_per_op: +daemonUs.toFixed(1),
      daemon_cpu_cores: +((c1 - c0) / 1000 / seconds).toFixed(2),
      client_cpu_us_per_op: +clientUs.toFixed(1),
    },
  };
}

/** A minimal framed JSON client for the echo baseline: same encode/decode work as LessorClient. */
class EchoClient {
  #dec = new FrameDecoder();
  #pending = new Map<string, () => void>();
  private constructor(private readonly sock: Socket) {
    sock.on("data", (chunk: Buffer) => {
      for (const body of this.#dec.push(chunk)) {
        const msg = JSON.parse(body.toString("utf8")) as { id: string };
        const r = this.#pending.get(msg.id);
        this.#pending.delete(msg.id);
        r?.();
      }
    });
  }
  static open(path: string): Promise<EchoClient> {
    return new Promise((resolve, reject) => {
      const s = connect(path, () => resolve(new EchoClient(s)));
      s.once("error", reject);
    });
  }
  call(method: string, params: unknown): Promise<void> {
    const id = uuidv7();
    return new Promise((resolve) => {
      this.#pending.set(id, resolve);
      this.sock.write(encodeFrame({ id, method, params }));
    });
  }
  close(): void {
    this.sock.destroy();
  }
}

function waitReady(proc: ChildProcess, stream: "stdout" | "stderr", match: (line: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: proc[stream]! });
    rl.on("line", (line) => {
      if (match(line)) resolve(line);
    });
    proc.once("exit", (code) => reject(new Error(`exited with ${code} before it was ready`)));
  });
}

/** Adds live leases to the daemon's database from this process (SQLite lets both write). */
async function addLiveLeasesTo(dbPath: string, count: number): Promise<void> {
  const store = openSqliteStore(dbPath);
  try {
    await addLiveLeases(store, count);
  } finally {
    await store.close();
  }
}

async function main(): Promise<void> {
  if (wants("store_floor")) {
    // First, before the echo server and the daemon start, so that no other process of this bench competes with it.
    const f = await storeFloor(32, SECONDS * 1000);
    emit({
      name: "store_floor_c32",
      ops_per_s: Math.round(f.opsPerS),
      ops_per_commit: +f.opsPerCommit.toFixed(1),
      note: "ceiling, not a lessor figure: the SQLite store's work for one lease+access alone (no vault logic, crypto or protocol), in-process, 32 in flight, durable group commits",
      goal_for_lease_access_c32: `>= ${GOAL_OPS_PER_S} ops/s`,
    });
  }
  const dir = mkdtempSync(join(tmpdir(), "lessor-bench-d-"));
  const procs: ChildProcess[] = [];
  try {
    // Baseline: framed echo in its own process.
    const echoPath = join(dir, "echo.sock");
    const echo = spawn(process.execPath, ["--import", "tsx", here("./echo-server.ts"), echoPath], { stdio: ["ignore", "pipe", "inherit"] });
    procs.push(echo);
    await waitReady(echo, "stdout", (l) => l === "ready");
    const echoClients = await Promise.all(Array.from({ length: 32 }, () => EchoClient.open(echoPath)));

    // The daemon.
    const home = join(dir, "home");
    await initHome({ home, env: { LESSOR_HOME: home } });
    writeFileSync(join(home, "policy.toml"), `[[rule]]\nname = "bench"\neffect = "allow"\nagents = ["bench-*"]\nsecrets = ["token"]\ndomains = ["api.example.com"]\nmax_uses = 1\n`);
    writeFileSync(join(home, "lessor.toml"), `[vault]\nmax_live_leases_per_agent = 1000\n[server]\nmax_in_flight = 64\n`);
    const daemon = spawn(process.execPath, [...daemonArgs, "--import", "tsx", here("../src/cli/main.ts"), "--home", home, "serve"], { stdio: ["ignore", "ignore", "pipe"], env: { PATH: process.env.PATH } });
    procs.push(daemon);
    await waitReady(daemon, "stderr", (l) => l.includes("lessor daemon ready"));
    const socketPath = join(home, "lessor.sock");
    const clients = await Promise.all(Array.from({ length: 32 }, () => LessorClient.connect({ socketPath })));
    await clients[0]!.storeSecret({ name: "token", value: "x".repeat(40) });

    // Echo and status are measured in alternation (ROUNDS short runs each), so that the
    // drift of a noisy machine hits both alike.
    const echoRate: Record<number, number> = {};
    for (const n of wants("status") || wants("echo") ? [1, 8, 32] : []) {
      const e: number[] = [];
      const st: number[] = [];
      for (let k = 0; k < ROUNDS; k++) {
        e.push(await throughput(n, (c) => echoClients[c]!.call("status", {}), SLICE_MS));
        if (wants("status")) st.push(await throughput(n, async (c) => void (await clients[c]!.status()), SLICE_MS));
      }
      const er = median(e);
      echoRate[n] = er;
      emit({ name: `echo_rtt_c${n}`, ops_per_s: Math.round(er), us_per_op: +((1e6 / er) * n).toFixed(1), note: "baseline: framed JSON echo over a Unix socket" });
      if (!wants("status")) continue;
      const r = median(st);
      // The ratio is the median of the rounds' own ratios (an echo slice, then a status slice right
      // after it): a machine whose speed drifts from round to round moves both slices of a round alike.
      const ratios = st.map((x, k) => e[k]! / x);
      emit({
        name: `status_rtt_c${n}`,
        ops_per_s: Math.round(r),
        us_per_op: +((1e6 / r) * n).toFixed(1),
        baseline: `echo_rtt_c${n}`,
        baseline_ops_per_s: Math.round(er),
        ratio_time_vs_baseline: +median(ratios).toFixed(2),
        ratio_range: [+Math.min(...ratios).toFixed(2), +Math.max(...ratios).toFixed(2)],
        goal: n === 1 ? "<= 1.5" : undefined,
      });
    }
    for (const c of echoClients) c.close();
    const leaseAccess = async (c: number) => {
      const cl = clients[c]!;
      const lease = await cl.requestLease({ agent: `bench-${c}`, secret: "token", domains: ["api.example.com"] });
      (await cl.accessSecret(lease.id, { domain: "api.example.com" })).value.wipe();
    };
    const vsEcho = (n: number, r: number) =>
      echoRate[n] === undefined ? {} : { baseline: `echo_rtt_c${n}`, baseline_ops_per_s: Math.round(echoRate[n]!), ratio: +(r / echoRate[n]!).toFixed(4) };
    for (const n of wants("lease_access") ? [1, 8, 32] : []) {
      const { rate: r, cpu } = await withDaemonCpu(daemon.pid, n, leaseAccess);
      emit({ name: `lease_access_c${n}`, ops_per_s: Math.round(r), note: "request_lease + access_secret: 2 round trips, 2 durable commits with audit", ...vsEcho(n, r), ...cpu, ...(n === 32 ? atGoal(cpu) : {}) });
    }
    const leaseAccess1rt = async (c: number) => {
      (await clients[c]!.leaseAndAccess({ agent: `bench-${c}`, secret: "token", domains: ["api.example.com"] }, { domain: "api.example.com" })).value.wipe();
    };
    for (const n of wants("lease_access_1rt") ? [1, 8, 32] : []) {
      const { rate: r, cpu } = await withDaemonCpu(daemon.pid, n, leaseAccess1rt);
      emit({ name: `lease_access_1rt_c${n}`, ops_per_s: Math.round(r), note: "request_lease with access: 1 round trip, 1 durable commit with both audit events", ...vsEcho(n, r), ...cpu, ...(n === 32 ? atGoal(cpu) : {}) });
    }
    if (!wants("live")) return void (await Promise.all(clients.map((c) => c.close())));
    await addLiveLeasesTo(join(home, "lessor.db"), 1000);
    const at1k = await throughput(32, leaseAccess);
    emit({ name: "lease_access_c32_1k_live", ops_per_s: Math.round(at1k) });
    await addLiveLeasesTo(join(home, "lessor.db"), 99_000);
    const at100k = await throughput(32, leaseAccess);
    emit({ name: "lease_access_c32_100k_live", ops_per_s: Math.round(at100k) });
    emit({ name: "lease_access_100k_vs_1k", ratio: +(at100k / at1k).toFixed(3), goal: ">= 0.8", ok: at100k / at1k >= 0.8 });
    await Promise.all(clients.map((c) => c.close()));
  } finally {
    // Wait for the processes to exit (a daemon with --cpu-prof writes its profile on the way out).
    await Promise.all(
      procs.map((p) =>
        p.exitCode !== null || p.signalCode !== null
          ? undefined
          : new Promise<void>((r) => {
              const t = setTimeout(r, 15_000);
              p.once("exit", () => (clearTimeout(t), r()));
              p.kill("SIGTERM");
            }),
      ),
    );
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
