/**
 * Core benchmark (issue 2). Prints one JSON line per figure, each beside a baseline measured in the
 * same run: AES-256-GCM seal+open of the same value through src/crypto/aead.ts.
 *
 *   npm run bench            (or: npx tsx bench/core.ts [--quick])
 *
 * Figures: store (sequential and 32 in flight), lease+access with durable audit (sequential and 32
 * in flight), and lease+access with 1,000 vs 100,000 live leases in the table (goal: ratio >= 0.8).
 * Every write is a durable SQLite commit (WAL, synchronous=FULL) with its audit row.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { open, seal } from "../src/crypto/aead.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { addLiveLeases } from "./live-leases.js";
import { parsePolicy } from "../src/vault/policy.js";
import { Vault } from "../src/vault/vault.js";

const quick = process.argv.includes("--quick");
const VALUE = Buffer.from(`ghp_${randomBytes(27).toString("base64url")}`);

function emit(o: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ bench: "core", ...o })}\n`);
}

/** Runs `op` `n` times with `conc` in flight; returns ops/s. */
async function rate(n: number, conc: number, op: (i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: conc }, async () => {
      for (let i = next++; i < n; i = next++) await op(i);
    }),
  );
  return n / (Number(process.hrtime.bigint() - t0) / 1e9);
}

function baseline(): number {
  const key = randomBytes(32);
  const aad = Buffer.from("bench");
  const n = 200_000;
  for (let i = 0; i < 20_000; i++) open("aes-256-gcm", key, seal("aes-256-gcm", key, VALUE, aad), aad);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) open("aes-256-gcm", key, seal("aes-256-gcm", key, VALUE, aad), aad);
  return n / (Number(process.hrtime.bigint() - t0) / 1e9);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const POLICY = `
[[rule]]
name = "bench"
effect = "allow"
agents = ["bench-*"]
secrets = ["token"]
domains = ["api.example.com"]
max_uses = 1
`;

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "lessor-bench-"));
  const store = openSqliteStore(join(dir, "lessor.db"));
  const vault = await Vault.open({
    store,
    keys: envKeySource({ LESSOR_MASTER_KEY: randomBytes(32).toString("hex") })!,
    policy: parsePolicy(POLICY, "bench-policy.toml"),
    limits: { maxLiveLeasesPerAgent: 1000 },
  });
  try {
    const base = baseline();
    emit({ name: "aes_gcm_seal_open", ops_per_s: Math.round(base), note: "baseline: one seal+open of a 40-byte value" });
    const line = (name: string, ops: number, extra: Record<string, unknown> = {}) =>
      emit({ name, ops_per_s: Math.round(ops), baseline: "aes_gcm_seal_open", baseline_ops_per_s: Math.round(base), ratio: +(ops / base).toFixed(5), ...extra });

    const admin = vault.admin();
    const n = quick ? 300 : 2000;
    line("store_secret_seq", await rate(quick ? 100 : 500, 1, (i) => admin.storeSecret({ name: `s${i}`, value: VALUE })), { concurrency: 1 });
    line("store_secret_c32", await rate(n, 32, (i) => admin.storeSecret({ name: `c${i}`, value: VALUE })), { concurrency: 32 });
    await admin.storeSecret({ name: "token", value: VALUE });

    const agents = Array.from({ length: 32 }, (_, i) => vault.session({ id: `bench:${i}`, role: "agent", agent: `bench-${i}`, transport: "embedded" }));
    const leaseAccess = async (i: number): Promise<void> => {
      const s = agents[i % agents.length]!;
      const lease = await s.requestLease({ secret: "token" });
      const got = await s.accessSecret(lease.id, { domain: "api.example.com" });
      got.value.wipe();
    };
    line("lease_access_seq", await rate(quick ? 100 : 500, 1, leaseAccess), { concurrency: 1, note: "request_lease + access_secret, 2 durable commits with audit" });
    line("lease_access_c32", await rate(n, 32, leaseAccess), { concurrency: 32 });

    const now = Date.now();
    const live = async () => (await store.listLeases({ liveAt: Date.now(), limit: 200_000 })).length;
    /** Median of three runs, to damp the noise of a 2-core machine. */
    const measure = async () => {
      const runs: number[] = [];
      for (let k = 0; k < 3; k++) runs.push(await rate(n, 32, leaseAccess));
      return median(runs);
    };
    await addLiveLeases(store, 1000, now);
    const small = await live();
    const at1k = await measure();
    line("lease_access_c32_1k_live", at1k, { live_leases: small });
    await addLiveLeases(store, 99_000, now);
    const big = await live();
    const at100k = await measure();
    line("lease_access_c32_100k_live", at100k, { live_leases: big });
    emit({ name: "lease_access_100k_vs_1k", ratio: +(at100k / at1k).toFixed(3), goal: ">= 0.8", ok: at100k / at1k >= 0.8 });
    emit({ name: "sqlite_commits", commits: store.stats().commits, transactions: store.stats().transactions, note: "group commit: transactions per durable commit" });
  } finally {
    await vault.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
