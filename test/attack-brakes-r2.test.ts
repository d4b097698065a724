/**
 * docs/cli/leases.md: "A heartbeat (or a release) that comes after the deadline, when nothing fired the
 * switch yet (no daemon watching, nothing asked), fires the switch first: the leases granted before the
 * deadline stay revoked". On a team store (PostgreSQL), an instance whose [vault] limits are not the
 * ones in force (stale) skips that check but still records the heartbeat: the late check-in moves
 * the in-force deadline over the missed one and the lease from before it gives its value again.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { Vault } from "../src/vault/vault.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { parsePolicy } from "../src/vault/policy.js";
import { agent, grant, hexKey } from "./helpers.js";
import { PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";

const POLICY = grant("g", ["claude"], ["tok"], ["api.example.com"]);
const CANARY = "CANARY-rev-brakes-stale-hb";

test("attack: a late heartbeat through an instance with stale limits is refused, and the lease from before the missed deadline stays revoked", { skip: PG_SKIP, timeout: 60_000 }, async () => {
  const { schema, drop } = await testSchema();
  const key = hexKey();
  const open = (heartbeatMs: number | null) =>
    openPostgresStore({ url: PG_URL!, schema }).then((store) => Vault.open({ store, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy: parsePolicy(POLICY, "p.toml"), limits: { heartbeatMs } }));
  const a = await open(2000); // first to open: its limits (heartbeat 2 s) are the ones in force
  const b = await open(null); // another instance, no dead-man switch in its lessor.toml: stale limits
  try {
    await a.admin().storeSecret({ name: "tok", value: CANARY });
    await a.admin().heartbeat();
    const lease = await a.session(agent("claude")).requestLease({ secret: "tok", ttl: "10m" });
    await sleep(3000); // the deadline passes; nothing watches (no daemon), nothing is asked
    assert.deepEqual((await b.admin().describe()).policy.stale?.limits, ["heartbeat"], "B is stale by its heartbeat limit only");
    // The late check-in, through B (refusing it would be fine: what matters is the lease below).
    await b.admin().heartbeat().catch(() => undefined);
    const got = await a.session(agent("claude")).accessSecret(lease.id, { domain: "api.example.com" }).then(
      (r) => ({ ok: true as const, r }),
      (e: Error) => ({ ok: false as const, e }),
    );
    assert.equal(got.ok, false, "the lease from before the missed deadline gave its value after a late heartbeat");
  } finally {
    await a.close();
    await b.close();
    await drop();
  }
});

test("attack: a killswitch release through an instance with stale limits records no heartbeat: the missed deadline still fires on the instance in force", { skip: PG_SKIP, timeout: 60_000 }, async () => {
  const { schema, drop } = await testSchema();
  const key = hexKey();
  const open = (heartbeatMs: number | null) =>
    openPostgresStore({ url: PG_URL!, schema }).then((store) => Vault.open({ store, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy: parsePolicy(POLICY, "p.toml"), limits: { heartbeatMs } }));
  const a = await open(2000); // limits in force: heartbeat 2 s
  const b = await open(3_600_000); // stale: a dead-man switch of its own, an hour
  try {
    await a.admin().storeSecret({ name: "tok", value: CANARY });
    await a.admin().heartbeat();
    await sleep(3000); // the deadline passes unwatched
    // Released through B: not a check-in B can vouch for (it cannot judge the deadline in force).
    await b.admin().releaseKillswitch("all clear").catch(() => undefined);
    const lease = await a.session(agent("claude")).requestLease({ secret: "tok", ttl: "10m" }).then(
      (l) => ({ ok: true as const, l }),
      (e: Error) => ({ ok: false as const, e }),
    );
    assert.equal(lease.ok, false, "A granted a lease: the release through B counted as a heartbeat and moved the missed deadline");
  } finally {
    await a.close();
    await b.close();
    await drop();
  }
});
