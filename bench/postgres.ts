/**
 * PostgreSQL benchmark (issue 15). One JSON line per figure; every throughput figure sits beside the
 * SQLite single-instance figure of the same run and at the same concurrency (`baseline`, `ratio`).
 *
 *   LESSOR_BENCH_PG_URL=postgres://postgres@127.0.0.1:5432/test npm run bench:postgres [-- --quick]
 *   (LESSOR_TEST_PG_URL is used when LESSOR_BENCH_PG_URL is unset; without either, it says so and exits.)
 *
 * Figures (lease+access = `requestLeaseAndAccess`, a durable commit with its audit rows, 32 agents):
 * - sqlite_1: one vault on a SQLite file, concurrency 1 and 32 (the baseline);
 * - postgres_1: one vault (one pool) on PostgreSQL, concurrency 1 and 32;
 * - postgres_2: two vaults, each with its own pool, on the same schema: one caller per instance (c2)
 *   and 16 per instance (c32). Goal: postgres_2 at c32 >= 0.5 x sqlite_1 at c32, measured in five
 *   rounds that alternate with the SQLite baseline (the median of the rounds' ratios). Also
 *   postgres_2_c32_lock_at_begin: the same with the write lock taken at BEGIN (lateLock: false);
 *   the postgres_2 lines say how many batches committed late and how many ran again under the lock.
 * - postgres_2_c32_hop_1ms: the two instances with the database behind a proxy that holds each chunk
 *   1 ms each way, the late lock against the lock from BEGIN (ratio late / BEGIN).
 * - revocation: a lease granted on B is revoked on A; the time from the revoke call on A until an
 *   access on B is refused (`revoke_to_refused`), and, when the store has a change feed, until B's
 *   feed delivers the revocation (`revoke_to_feed`): p50 and p99. Goal: p99 <= 100 ms.
 *
 * The PostgreSQL lines also say, from the store's counters: commits; transactions (functions run);
 * behind_other (transactions that began after another instance's commit and dropped what it changed
 * from the cache, src/store/postgres/postgres-store.ts); flights (round trips of transactions).
 *
 * Both instances run in this one process (two Vaults, two pools, one event loop, a 2-core machine):
 * they share a CPU that two daemons on two machines would not, so the two-instance figure is a floor.
 * Each configuration gets a fresh schema (dropped at the end).
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { envKeySource } from "../src/crypto/keys/env.js";
import { isVaultError } from "../src/base/errors.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { openPostgresStore, type PostgresStore } from "../src/store/postgres/postgres-store.js";
import { parsePolicy } from "../src/vault/policy.js";
import type { Store } from "../src/vault/ports.js";
import { Vault } from "../src/vault/vault.js";

const quick = process.argv.includes("--quick");
const URL_ = process.env["LESSOR_BENCH_PG_URL"] || process.env["LESSOR_TEST_PG_URL"] || "";
const KEY = randomBytes(32).toString("hex");
const VALUE = `ghp_${randomBytes(27).toString("base64url")}`;

function emit(o: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ bench: "postgres", ...o })}\n`);
}

const POLICY = `
[[rule]]
name = "bench"
effect = "allow"
agents = ["bench-*"]
secrets = ["token"]
domains = ["api.example.com"]
max_uses = 1

[[rule]]
name = "revocation"
effect = "allow"
agents = ["revoke-*"]
secrets = ["multi"]
domains = ["api.example.com"]
ttl = "1h"
`;

/** Runs `op` `n` times with `conc` in flight (op gets the caller's index and the op's index); returns ops/s. */
async function rate(n: number, conc: number, op: (caller: number, i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: conc }, async (_, c) => {
      for (let i = next++; i < n; i = next++) await op(c, i);
    }),
  );
  return n / (Number(process.hrtime.bigint() - t0) / 1e9);
}

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const ms = (x: number) => +x.toFixed(2);

function openVault(store: Store): Promise<Vault> {
  return Vault.open({
    store,
    keys: envKeySource({ LESSOR_MASTER_KEY: KEY })!,
    policy: parsePolicy(POLICY, "bench-policy.toml"),
    limits: { maxLiveLeasesPerAgent: 1000 },
  });
}

/** lease+access for caller `c`, spread over `vaults` (caller c uses vault c % vaults.length), as agent bench-<c>. */
function leaseAccess(vaults: Vault[]) {
  const sessions = Array.from({ length: 32 }, (_, c) =>
    vaults[c % vaults.length]!.session({ id: `bench:${c}`, role: "agent", agent: `bench-${c}`, transport: "embedded" }),
  );
  return async (c: number): Promise<void> => {
    const got = await sessions[c % 32]!.requestLeaseAndAccess({ secret: "token" }, { domain: "api.example.com" });
    got.value.wipe();
  };
}

/**
 * `rounds` rounds, each a run of `a` (the baseline) then a run of `b`, after a warm-up of each: the
 * medians of each, and the median of the rounds' ratios b/a.
 */
async function pairedRounds(n: number, conc: number, a: (c: number) => Promise<void>, b: (c: number) => Promise<void>, rounds: number) {
  await rate(Math.min(n, 200), conc, a);
  await rate(Math.min(n, 200), conc, b);
  const as: number[] = [];
  const bs: number[] = [];
  const ratios: number[] = [];
  for (let k = 0; k < rounds; k++) {
    as.push(await rate(n, conc, a));
    bs.push(await rate(n, conc, b));
    ratios.push(bs[k]! / as[k]!);
  }
  const med = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  return { ops: med(bs), base: med(as), ratio: med(ratios), ratios };
}

/** Median of three runs after a warm-up, to damp a noisy 2-core VM. */
async function measure(n: number, conc: number, op: (c: number) => Promise<void>): Promise<number> {
  await rate(Math.min(n, 200), conc, op);
  const runs: number[] = [];
  for (let k = 0; k < 3; k++) runs.push(await rate(n, conc, op));
  return runs.sort((a, b) => a - b)[1]!;
}

async function withSchema<T>(f: (url: string) => Promise<T>): Promise<T> {
  const schema = `lessor_bench_${randomBytes(5).toString("hex")}`;
  const admin = async (sql: string) => {
    const c = new pg.Client({ connectionString: URL_ });
    await c.connect();
    try {
      await c.query(sql);
    } finally {
      await c.end();
    }
  };
  await admin(`CREATE SCHEMA ${schema}`);
  try {
    const u = new URL(URL_);
    u.searchParams.set("options", `-c search_path=${schema}`);
    return await f(u.toString());
  } finally {
    await admin(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  }
}

/**
 * A TCP proxy in a child process that holds every chunk `delayMs` in each direction: a database one
 * network hop away (a round trip costs about 2 x delayMs more). Returns its port and a stop function.
 */
async function delayProxy(target: URL, delayMs: number): Promise<{ port: number; stop: () => void }> {
  const script = `
    const net = require("node:net");
    const [host, port, d] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
    const pipe = (from, to) => from.on("data", (b) => setTimeout(() => to.write(b), d)).on("close", () => setTimeout(() => to.destroy(), d)).on("error", () => {});
    const srv = net.createServer((c) => { const u = net.connect(port, host); c.setNoDelay(true); u.setNoDelay(true); pipe(c, u); pipe(u, c); });
    srv.listen(0, "127.0.0.1", () => process.stdout.write(String(srv.address().port) + "\\n"));`;
  const child = spawn(process.execPath, ["-e", script, target.hostname, target.port || "5432", String(delayMs)], { stdio: ["ignore", "pipe", "inherit"] });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout!.once("data", (b: Buffer) => resolve(Number(b.toString().trim())));
    child.once("exit", () => reject(new Error("the delay proxy exited")));
  });
  return { port, stop: () => void child.kill() };
}

async function main(): Promise<void> {
  if (URL_ === "") {
    emit({ name: "skipped", note: "set LESSOR_BENCH_PG_URL (or LESSOR_TEST_PG_URL), e.g. postgres://postgres@127.0.0.1:5432/test" });
    return;
  }
  const n1 = quick ? 150 : 500;
  const n32 = quick ? 600 : 3000;
  emit({ name: "config", quick, n_c1: n1, n_c32: n32, node: process.version, note: "lease+access = requestLeaseAndAccess; median of 3 runs after a warm-up" });

  // SQLite, one instance: the baseline. Kept open to the end: the goal's figure pairs its rounds.
  const dir = mkdtempSync(join(tmpdir(), "lessor-bench-pg-"));
  const base: Record<number, number> = {};
  const sqlite = await openVault(openSqliteStore(join(dir, "lessor.db")));
  try {
    await sqlite.admin().storeSecret({ name: "token", value: VALUE });
    const sqliteOp = leaseAccess([sqlite]);
    for (const [conc, n] of [[1, n1], [32, n32]] as const) {
      base[conc] = await measure(n, conc, sqliteOp);
      emit({ name: `lease_access_sqlite_1_c${conc}`, ops_per_s: Math.round(base[conc]!), concurrency: conc, instances: 1, store: "sqlite", note: "baseline" });
    }
    await postgresFigures(sqliteOp, base, n1, n32, quick);
  } finally {
    await sqlite.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The PostgreSQL figures. The goal's line (two instances, c32) is measured in rounds that alternate
 * with the SQLite baseline (`pairedRounds`), so that a slow spell of the VM weighs on both.
 */
async function postgresFigures(sqliteOp: (c: number) => Promise<void>, base: Record<number, number>, n1: number, n32: number, quick: boolean): Promise<void> {  const line = (name: string, ops: number, conc: number, baseConc: number, extra: Record<string, unknown>) =>
    emit({
      name,
      ops_per_s: Math.round(ops),
      concurrency: conc,
      baseline: `lease_access_sqlite_1_c${baseConc}`,
      baseline_ops_per_s: Math.round(base[baseConc]!),
      ratio: +(ops / base[baseConc]!).toFixed(3),
      ...extra,
    });

  // PostgreSQL, one instance.
  await withSchema(async (url) => {
    const store = await openPostgresStore({ url, feed: { listen: false, pollMs: 600_000 } });
    const v = await openVault(store);
    try {
      await v.admin().storeSecret({ name: "token", value: VALUE });
      const op = leaseAccess([v]);
      for (const [conc, n] of [[1, n1], [32, n32]] as const) {
        const before = store.stats();
        const ops = await measure(n, conc, op);
        const s = store.stats();
        line(`lease_access_postgres_1_c${conc}`, ops, conc, conc, { instances: 1, store: "postgres", commits: s.commits - before.commits, transactions: s.transactions - before.transactions, behind_other: s.behind - before.behind, flights: s.flights - before.flights });
      }
    } finally {
      await v.close();
    }
  });

  // The same two instances with the write lock taken at BEGIN for every batch (lateLock off): what
  // the late lock (src/store/postgres/postgres-store.ts) changes, measured in the same run.
  await withSchema(async (url) => {
    const stores = [await openPostgresStore({ url, lateLock: false }), await openPostgresStore({ url, lateLock: false })];
    const vaults = [await openVault(stores[0]!), await openVault(stores[1]!)];
    try {
      await vaults[0]!.admin().storeSecret({ name: "token", value: VALUE });
      const p = await pairedRounds(n32, 32, sqliteOp, leaseAccess(vaults), quick ? 3 : 5);
      line("lease_access_postgres_2_c32_lock_at_begin", p.ops, 32, 32, {
        instances: 2,
        per_instance: 16,
        store: "postgres",
        baseline_ops_per_s: Math.round(p.base),
        ratio: +p.ratio.toFixed(3),
        round_ratios: p.ratios.map((r) => +r.toFixed(3)),
        note: "lateLock: false (the lock from BEGIN, as before the late lock); rounds alternating with the SQLite baseline",
      });
    } finally {
      for (const v of vaults) await v.close();
    }
  });

  // The same two instances one network hop away (a proxy holding each chunk 1 ms each way): the late
  // lock against the lock from BEGIN, in alternating rounds. Here the lock at BEGIN is held through
  // the batch's round trips as well; the late lock is held for one.
  await withSchema(async (url) => {
    const u = new URL(url);
    const proxy = await delayProxy(u, 1);
    try {
      u.host = `127.0.0.1:${proxy.port}`;
      const pair = async (lateLock: boolean) => {
        const stores = [await openPostgresStore({ url: u.toString(), lateLock }), await openPostgresStore({ url: u.toString(), lateLock })];
        return Promise.all(stores.map((st) => openVault(st)));
      };
      const locked = await pair(false);
      const late = await pair(true);
      try {
        await locked[0]!.admin().storeSecret({ name: "token", value: VALUE });
        const p = await pairedRounds(quick ? 300 : 1500, 32, leaseAccess(locked), leaseAccess(late), 3);
        emit({
          name: "lease_access_postgres_2_c32_hop_1ms",
          ops_per_s: Math.round(p.ops),
          baseline: "the same with lateLock: false",
          baseline_ops_per_s: Math.round(p.base),
          ratio: +p.ratio.toFixed(3),
          round_ratios: p.ratios.map((r) => +r.toFixed(3)),
          concurrency: 32,
          instances: 2,
          note: "database behind a proxy adding 1 ms each way; late lock vs lock from BEGIN, alternating rounds",
        });
      } finally {
        for (const v of [...locked, ...late]) await v.close();
      }
    } finally {
      proxy.stop();
    }
  });

  // PostgreSQL, two instances (two vaults, two pools) on one schema; then revocation between them.
  await withSchema(async (url) => {
    const stores = [await openPostgresStore({ url }), await openPostgresStore({ url })] as [PostgresStore, PostgresStore];
    const vaults = [await openVault(stores[0]), await openVault(stores[1])];
    try {
      await vaults[0]!.admin().storeSecret({ name: "token", value: VALUE });
      await vaults[0]!.admin().storeSecret({ name: "multi", value: VALUE });
      const op = leaseAccess(vaults);
      let paired: { ops: number; base: number; ratio: number; ratios: number[] } | undefined;
      for (const [conc, n, baseConc] of [[2, n1, 1], [32, n32, 32]] as const) {
        const before = stores.map((s) => s.stats());
        if (conc === 32) paired = await pairedRounds(n, conc, sqliteOp, op, quick ? 3 : 5);
        const ops = paired?.ops ?? (await measure(n, conc, op));
        const after = stores.map((s) => s.stats());
        const sum = (k: "commits" | "transactions" | "behind" | "flights" | "late" | "relocked") => after.reduce((t, s, i) => t + s[k] - before[i]![k], 0);
        line(`lease_access_postgres_2_c${conc}`, ops, conc, baseConc, {
          instances: 2,
          per_instance: conc / 2,
          store: "postgres",
          commits: sum("commits"),
          transactions: sum("transactions"),
          behind_other: sum("behind"),
          flights: sum("flights"),
          late: sum("late"),
          relocked: sum("relocked"),
          ...(conc === 32 && paired !== undefined
            ? {
                baseline_ops_per_s: Math.round(paired.base),
                ratio: +paired.ratio.toFixed(3),
                round_ratios: paired.ratios.map((r) => +r.toFixed(3)),
                note: "rounds alternating with the SQLite baseline; ops and baseline are medians, ratio the median of the rounds' ratios",
                goal: ">= 0.5 x sqlite_1_c32",
                ok: paired.ratio >= 0.5,
              }
            : {}),
        });
      }

      // Revocation: grant on B, revoke on A, time until B refuses (and until B's change feed hears it).
      const [a, b] = vaults as [Vault, Vault];
      const agentB = b.session({ id: "bench:revoke", role: "agent", agent: "revoke-1", transport: "embedded" });
      const adminA = a.admin();
      const waiting = new Map<string, (t: bigint) => void>();
      const hasFeed = typeof stores[1].changes === "function";
      const off = hasFeed
        ? stores[1].changes((c) => {
            if (c.kind !== "leases_revoked" || c.leaseIds === null) return;
            const t = process.hrtime.bigint();
            for (const id of c.leaseIds) waiting.get(id)?.(t);
          })
        : () => {};
      // Let the feed's LISTEN connection come up before timing it.
      await new Promise((r) => setTimeout(r, 300));
      const rounds = quick ? 60 : 300;
      const refused: number[] = [];
      const fed: number[] = [];
      const tries: number[] = [];
      try {
        for (let i = 0; i < rounds; i++) {
          const lease = await agentB.requestLease({ secret: "multi" });
          (await agentB.accessSecret(lease.id, { domain: "api.example.com" })).value.wipe();
          const heard = new Promise<bigint | null>((resolve) => {
            waiting.set(lease.id, resolve);
            setTimeout(() => resolve(null), 3000).unref();
          });
          const t0 = process.hrtime.bigint();
          await adminA.revokeLease(lease.id, "bench");
          let k = 0;
          for (;;) {
            k++;
            try {
              (await agentB.accessSecret(lease.id, { domain: "api.example.com" })).value.wipe();
            } catch (e) {
              if (!isVaultError(e, "lease_revoked")) throw e;
              break;
            }
          }
          refused.push(Number(process.hrtime.bigint() - t0) / 1e6);
          tries.push(k);
          if (hasFeed) {
            const t = await heard;
            if (t !== null) fed.push(Number(t - t0) / 1e6);
          }
          waiting.delete(lease.id);
        }
      } finally {
        off();
      }
      emit({
        name: "revoke_to_refused",
        rounds,
        p50_ms: ms(pct(refused, 50)),
        p99_ms: ms(pct(refused, 99)),
        max_ms: ms(Math.max(...refused)),
        accesses_until_refused_max: Math.max(...tries),
        goal: "p99 <= 100 ms",
        ok: pct(refused, 99) <= 100,
        note: "revoke on A (its commit) until an access on B is refused; access reads the database, so the first one after the commit is",
      });
      if (hasFeed)
        emit({
          name: "revoke_to_feed",
          rounds,
          delivered: fed.length,
          p50_ms: fed.length ? ms(pct(fed, 50)) : null,
          p99_ms: fed.length ? ms(pct(fed, 99)) : null,
          max_ms: fed.length ? ms(Math.max(...fed)) : null,
          goal: "p99 <= 100 ms",
          ok: fed.length === rounds && pct(fed, 99) <= 100,
          note: "revoke call on A until B's change feed (LISTEN/NOTIFY) delivers leases_revoked: what closes live connections on B",
        });
      else emit({ name: "revoke_to_feed", skipped: true, note: "this build's PostgreSQL store has no change feed" });
    } finally {
      for (const v of vaults) await v!.close();
    }
  });
}

await main();
