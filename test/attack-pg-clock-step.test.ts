/**
 * docs/security.md: "PostgreSQL daemons take the database server's clock, made steady the same way"
 * (behind what it last said, time goes on at the monotonic pace). It was not: DbClock.now() clamped a
 * server clock that stepped back to the last time it returned — a constant — and the steady clock over
 * it sees a wall clock equal to what it last said, so it follows it: the vault's time stands still for
 * the whole step. No lease expires meanwhile: a 2-second lease gives its value long after.
 * Real PostgreSQL store and vault; the server's clock step is its clock_timestamp() answers shifted
 * back an hour (the server's system clock stepped by NTP; this shared test server's clock is left alone).
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { parsePolicy } from "../src/vault/policy.js";
import { Vault } from "../src/vault/vault.js";
import { agent, codeOf, grant, hexKey } from "./helpers.js";
import { PG_SKIP, testSchema } from "./pg-helpers.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("attack: the database server's clock steps back an hour: a PostgreSQL vault's clock goes on, and a 2 s lease expires", { skip: PG_SKIP }, async () => {
  const { url, drop } = await testSchema();
  after(drop);
  const store = await openPostgresStore({ url });
  // The server's clock, as DbClock reads it (clock_timestamp()), with a step we control.
  let step = 0;
  const clock = (store as unknown as { clock: { pool: { query: (...a: unknown[]) => Promise<{ rows: { ms: number }[] }> }; refresh(): Promise<void> } }).clock;
  const real = clock.pool;
  clock.pool = { query: async (...a: unknown[]) => { const r = await real.query(...a); return { ...r, rows: r.rows.map((x) => ({ ...x, ms: Number(x.ms) + step })) }; } };
  const vault = await Vault.open({ store, keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!, policy: parsePolicy(grant("g", ["claude"], ["tok"], ["api.example.com"]), "p.toml") });
  after(() => vault.close());
  await vault.admin().storeSecret({ name: "tok", value: "v" });
  const claude = vault.session(agent("claude"));
  const lease = await claude.requestLease({ secret: "tok", ttl: "2s" });
  step = -60 * 60_000; // NTP steps the database server's clock back an hour
  await clock.refresh(); // what DbClock does every 30 s by itself
  const t0 = vault.now();
  await sleep(3000);
  const t1 = vault.now();
  const code = await codeOf(claude.accessSecret(lease.id, { domain: "api.example.com" }));
  assert.equal(code, "lease_expired", `a 2 s lease gave its value 3 s later (${code}); the vault's clock advanced ${t1 - t0} ms in 3 s`);
});
