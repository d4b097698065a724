/**
 * The PostgreSQL store beyond the conformance suite (test/store.test.ts runs that): URL redaction,
 * strict connection settings, migrations raced by several instances, connection failures mapped to
 * "unavailable" without the password, reconnection, and two instances (two pools) sharing one vault:
 * a max_uses = 1 lease used from both at once succeeds once, and the audit chain they append to
 * together verifies. Needs LESSOR_TEST_PG_URL; skips with the reason without it.
 */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { isVaultError, VaultError } from "../src/base/errors.js";
import { leaseState } from "../src/base/lease-state.js";
import { redactUrl, poolConfig, describeTarget } from "../src/store/postgres/connection.js";
import { openPostgresStore, type PostgresStore } from "../src/store/postgres/postgres-store.js";
import { SCHEMA_VERSION } from "../src/store/postgres/schema.js";
import { openStore } from "../src/config/store-factory.js";
import { parseConfig } from "../src/config/config.js";
import { Vault } from "../src/vault/vault.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { parsePolicy } from "../src/vault/policy.js";
import { agent, grant, hexKey } from "./helpers.js";
import { auditRec, leaseRec, T0 } from "./store-conformance.js";
import { admin, PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";

/** Rejects with a VaultError of `code` whose message does not contain `secret`. */
async function refusedWithout(p: Promise<unknown>, code: string, secret: string): Promise<VaultError> {
  let err: unknown;
  await assert.rejects(p, (e) => ((err = e), true));
  assert.ok(isVaultError(err), `expected a VaultError, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  assert.ok(!err.message.includes(secret), `the message shows the password: ${err.message}`);
  assert.ok(!JSON.stringify(err).includes(secret));
  return err;
}

describe("postgres connection settings (no server needed)", () => {
  test("redactUrl hides the password and password parameters, and never echoes what does not parse", () => {
    assert.equal(redactUrl("postgres://lessor:s3cr3t@db:5432/vault"), "postgres://lessor:***@db:5432/vault");
    assert.equal(redactUrl("postgres://lessor@db/vault?password=s3cr3t&sslmode=require"), "postgres://lessor@db/vault?password=***&sslmode=require");
    assert.equal(redactUrl("postgresql://u:p%40ss@h/d?sslpassword=x"), "postgresql://u:***@h/d?sslpassword=***");
    assert.equal(redactUrl("postgres://lessor@db/vault"), "postgres://lessor@db/vault");
    const junk = redactUrl("s3cr3t not a url");
    assert.ok(!junk.includes("s3cr3t"), junk);
    assert.equal(describeTarget("postgres://u:s3cr3t@db.internal:6543/vault"), "db.internal:6543/vault");
    assert.equal(describeTarget("postgres://u:s3cr3t@db.internal/vault"), "db.internal:5432/vault");
  });

  test("poolConfig refuses another scheme and a schema that is not a plain identifier (no option injection)", () => {
    for (const bad of ["x -c log_statement=all", "Public", "a;drop", "", "a b", "1abc", "a".repeat(64)])
      assert.throws(() => poolConfig({ url: "postgres://u@h/d", schema: bad }), (e) => isVaultError(e, "config_invalid"), bad);
    assert.throws(
      () => poolConfig({ url: "mysql://u:s3cr3t@h/d" }),
      (e) => isVaultError(e, "config_invalid") && !e.message.includes("s3cr3t") && /postgres:\/\//.test(e.message),
    );
    assert.throws(() => poolConfig({ url: "s3cr3t" }), (e) => isVaultError(e, "config_invalid") && !e.message.includes("s3cr3t"));
    const c = poolConfig({ url: "postgres://u@h/d?options=-c%20work_mem%3D4MB", schema: "lessor_x" });
    assert.equal(c.options, "-c work_mem=4MB -c search_path=lessor_x -c lock_timeout=5000 -c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000");
    assert.ok(!String(c.connectionString).includes("options"), "the URL's options are merged, not left to override");
    assert.equal(c.pipeline, true);
  });

  test("[vault] database_url is parsed strictly and never echoed; store = postgres without a URL says what to set", async () => {
    assert.equal(parseConfig("[vault]\nstore = 'postgres'\ndatabase_url = 'postgres://u@h/d'", "c.toml").databaseUrl, "postgres://u@h/d");
    assert.equal(parseConfig("", "c.toml").databaseUrl, null);
    assert.throws(
      () => parseConfig("[vault]\ndatabase_url = 'mysql://u:s3cr3t@h/d'", "c.toml"),
      (e) => isVaultError(e, "config_invalid") && /\[vault\] database_url/.test(e.message) && !e.message.includes("s3cr3t"),
    );
    await assert.rejects(openStore("postgres", "/nonexistent", { env: {} }), (e) => isVaultError(e, "config_invalid") && /LESSOR_DATABASE_URL/.test(e.message));
  });

  test("a refused connection is 'unavailable' naming host and port, never the password", async () => {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    const err = await refusedWithout(openPostgresStore({ url: "postgres://lessor:s3cr3t@127.0.0.1:1/vault", connectTimeoutMs: 2000 }), "unavailable", "s3cr3t");
    assert.match(err.message, /127\.0\.0\.1:1\/vault cannot be reached \(ECONNREFUSED\)/);
    // LESSOR_DATABASE_URL wins over [vault] database_url.
    await refusedWithout(
      openStore("postgres", "/nonexistent", { databaseUrl: "postgres://x@127.0.0.1:2/other", env: { LESSOR_DATABASE_URL: "postgres://lessor:s3cr3t@127.0.0.1:1/vault" } }).then(
        async (s) => s.close(),
      ),
      "unavailable",
      "s3cr3t",
    ).then((e) => assert.match(e.message, /127\.0\.0\.1:1\/vault/));
  });
});

describe("postgres store against a server", { skip: PG_SKIP }, () => {
  const stores: PostgresStore[] = [];
  const drops: (() => Promise<void>)[] = [];
  after(async () => {
    for (const s of stores) await s.close();
    for (const d of drops) await d();
  });
  const fresh = async (): Promise<string> => {
    const { schema, drop } = await testSchema();
    drops.push(drop);
    return schema;
  };
  const open = async (schema: string, extra: Partial<Parameters<typeof openPostgresStore>[0]> = {}): Promise<PostgresStore> => {
    const s = await openPostgresStore({ url: PG_URL!, schema, ...extra });
    stores.push(s);
    return s;
  };

  test("several instances opening one fresh schema at once all succeed; each migration is applied once", async () => {
    const schema = await fresh();
    const opened = await Promise.all([open(schema), open(schema), open(schema), open(schema)]);
    assert.equal(opened.reduce((n, s) => n + s.migrationsApplied, 0), SCHEMA_VERSION, "the steps were applied by exactly one of them");
    const rows = (await admin(`SELECT version FROM ${schema}.lessor_migrations ORDER BY version`)).rows.map((r) => r.version);
    assert.deepEqual(rows, Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1));
    // Opening again applies nothing; a schema from a newer lessor is refused.
    assert.equal((await open(schema)).migrationsApplied, 0);
    await admin(`INSERT INTO ${schema}.lessor_migrations (version) VALUES (${SCHEMA_VERSION + 1})`);
    await assert.rejects(openPostgresStore({ url: PG_URL!, schema }), (e) => isVaultError(e, "unavailable") && /newer lessor/.test(e.message));
  });

  test("a schema that does not exist, or a missing database, is 'unavailable' with the fix", async () => {
    await assert.rejects(openPostgresStore({ url: PG_URL!, schema: "lessor_test_missing_schema" }), (e) => isVaultError(e, "unavailable") || isVaultError(e, "internal"));
    const u = new URL(PG_URL!);
    u.pathname = "/lessor_no_such_db";
    u.password = "s3cr3t";
    const err = await refusedWithout(openPostgresStore({ url: u.toString() }), "unavailable", "s3cr3t");
    assert.match(err.message, /does not exist/);
  });

  test("the audit trigger refuses a gap even from a hand-written INSERT", async () => {
    const schema = await fresh();
    await open(schema);
    await assert.rejects(
      admin(`INSERT INTO ${schema}.audit (seq, id, time, type, actor_id, actor_role, transport, outcome, prev_hash, hash) VALUES (5, 'x', 0, 't', 'a', 'r', 'x', 'ok', '\\x00', '\\x00')`),
      (e: { code?: string }) => e.code === "LSGAP",
    );
  });

  test("audit rows sent without waiting: a gap among them fails the whole transaction, and nothing of it is written", async () => {
    const schema = await fresh();
    const s = await open(schema);
    await s.transaction(async (t) => {
      for (const seq of [1, 2, 3]) await t.insertAudit(auditRec(seq, { id: `ok-${seq}` }));
    });
    await assert.rejects(
      s.transaction(async (t) => {
        for (const seq of [4, 5, 7]) await t.insertAudit(auditRec(seq, { id: `gap-${seq}` }));
      }),
      (e) => isVaultError(e, "audit_failed"),
    );
    assert.deepEqual((await s.queryAudit({ limit: 10 })).map((r) => r.seq), [1, 2, 3]);
  });

  test("a killed connection fails the transaction fast with 'unavailable'; the next one reconnects", async () => {
    const schema = await fresh();
    const s = await open(schema);
    await s.transaction((t) => t.setMeta("m", "1"));
    // Kill every server process of this schema's pool (as a PostgreSQL restart would).
    const killAll = () =>
      admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'lessor' AND pid <> pg_backend_pid() AND query NOT LIKE '%pg_terminate_backend%'");
    await killAll();
    await new Promise((r) => setTimeout(r, 50));
    const started = Date.now();
    const first = await Promise.allSettled([s.transaction((t) => t.setMeta("m", "2")), s.getMeta("m")]);
    assert.ok(Date.now() - started < 3000, "fails fast");
    for (const r of first) if (r.status === "rejected") assert.ok(isVaultError(r.reason, "unavailable"), String(r.reason));
    // Whatever the first attempt did, the store serves again without being reopened.
    await s.transaction((t) => t.setMeta("m", "3"));
    assert.equal(await s.getMeta("m"), "3");
  });

  test("two instances: max_uses = 1 used from both at once succeeds exactly once (store level)", async () => {
    const schema = await fresh();
    const a = await open(schema);
    const b = await open(schema);
    for (let round = 0; round < 10; round++) {
      const id = `once-${round}`;
      await a.transaction((t) => t.insertLease(leaseRec(id, { maxUses: 1 })));
      const results = await Promise.all(
        Array.from({ length: 8 }, (_, i) => (i % 2 === 0 ? a : b).transaction((t) => t.useLease(id, T0 + 1))),
      );
      assert.equal(results.filter((r) => r !== null).length, 1, `round ${round}: ${JSON.stringify(results)}`);
      assert.equal((await b.getLease(id))!.uses, 1);
    }
  });

  test("two instances see each other's writes in their transactions (the hot-row cache does not go stale)", async () => {
    const schema = await fresh();
    const a = await open(schema);
    const b = await open(schema);
    for (let i = 0; i < 20; i++) {
      const [w, r] = i % 2 === 0 ? [a, b] : [b, a];
      // The reader's cache holds the head and the meta row from its last transaction; the writer moves both.
      await r.transaction(async (t) => void (await Promise.all([t.getMeta("k"), t.auditHead()])));
      await w.transaction(async (t) => {
        const head = await t.auditHead();
        await t.setMeta("k", String(i));
        await t.insertAudit(auditRec((head?.seq ?? 0) + 1, { id: `x-${i}` }));
      });
      const seen = await r.transaction(async (t) => [await t.getMeta("k"), (await t.auditHead())?.seq]);
      assert.deepEqual(seen, [String(i), i + 1]);
    }
    assert.ok(a.stats().behind + b.stats().behind > 0, "each saw, as a transaction began, that the other had written, and dropped what it changed");
  });

  test("the cached live-lease bound: another instance's live inserts drop it; used-up inserts do not move the live counter", async () => {
    const schema = await fresh();
    const a = await open(schema);
    const b = await open(schema);
    const count = (s: PostgresStore, cap: number): Promise<number> => s.transaction((t) => t.countLiveLeases("agent-a", T0, cap));
    // A reads (and caches) a bound of 0 for the agent, and then commits so its cache is carried.
    assert.equal(await count(a, 3), 0);
    await a.transaction(async (t) => void (await t.setMeta("k", "1")));
    const live = async (): Promise<number> => Number((await admin(`SELECT live FROM ${schema}.lessor_commits`)).rows[0]!.live);
    // A lease used up at birth (lease+access with max_uses = 1) is never live: the live counter stays.
    const before = await live();
    await b.transaction((t) => t.insertLease(leaseRec("used-up", { uses: 1, maxUses: 1 })));
    assert.equal(await live(), before);
    // B fills the agent's cap with live leases: A must see them, not its cached 0.
    for (const id of ["l1", "l2", "l3"]) await b.transaction((t) => t.insertLease(leaseRec(id)));
    assert.equal(await live(), before + 3);
    assert.equal(await count(a, 3), 3, "A's bound was dropped when B inserted live leases; at the cap the count is exact");
    // A's own inserts raise its bound, so a cap it reaches is read exactly too.
    assert.equal(await count(b, 10), 3);
    await b.transaction((t) => t.insertLease(leaseRec("l4")));
    assert.equal(await count(b, 10), 4, "the bound grew with B's own insert");
    assert.equal(await count(b, 4), 4, "at the cap: the exact count");
    // Without a cap the count is always exact (a revoked lease is not counted).
    await a.transaction((t) => t.revokeLeases({ id: "l1" }, T0, "test"));
    assert.equal(await b.transaction((t) => t.countLiveLeases("agent-a", T0)), 3);
    assert.equal(await count(b, 3), 3);
  });

  test("round trips: 32 lease+access at once cost a few round trips per batch, not one per call; another instance's commit costs no re-run", async () => {
    const schema = await fresh();
    const key = hexKey();
    const policy = parsePolicy(grant("g", ["claude"], ["tok"], ["api.example.com"], "max_uses = 1"), "p.toml");
    const sa = await open(schema);
    const sb = await open(schema);
    const va = await Vault.open({ store: sa, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy });
    const vb = await Vault.open({ store: sb, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy });
    after(() => va.close());
    after(() => vb.close());
    await va.admin().storeSecret({ name: "tok", value: "the-value" });
    const ca = va.session(agent("claude"));
    const use = async (s: typeof ca): Promise<void> => (await s.requestLeaseAndAccess({ secret: "tok" }, { domain: "api.example.com" })).value.wipe();
    await use(ca); // warm: the cache holds the hot rows and the agent's live-lease bound
    const burst = async (): Promise<{ flights: number; commits: number; behind: number; reruns: number }> => {
      const s0 = sa.stats();
      await Promise.all(Array.from({ length: 32 }, () => use(ca)));
      const s1 = sa.stats();
      return { flights: s1.flights - s0.flights, commits: s1.commits - s0.commits, behind: s1.behind - s0.behind, reruns: s1.reruns - s0.reruns };
    };
    const alone = await burst();
    assert.ok(alone.commits >= 1 && alone.flights <= 3 * alone.commits, `one instance: ${JSON.stringify(alone)}`);
    // B commits between two of A's batches: A drops what B changed (the audit head) and goes on.
    await use(vb.session(agent("claude")));
    const after_ = await burst();
    assert.ok(after_.behind >= 1, `A saw B's commit: ${JSON.stringify(after_)}`);
    assert.equal(after_.reruns, 0);
    assert.ok(after_.flights <= 3 * after_.commits + 1, `after B's commit: ${JSON.stringify(after_)}`);
    for (const v of [va, vb]) assert.equal((await v.admin().auditVerify()).ok, true);
  });

  test("two Vaults on two pools: a max_uses = 1 lease accessed from both at once succeeds once; the interleaved audit chain verifies", async () => {
    const schema = await fresh();
    const key = hexKey();
    const policy = parsePolicy(grant("g", ["claude"], ["tok"], ["api.example.com"], "max_uses = 1"), "p.toml");
    const mk = async (): Promise<Vault> => {
      const v = await Vault.open({ store: await open(schema), keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy });
      after(() => v.close());
      return v;
    };
    const va = await mk();
    const vb = await mk();
    await va.admin().storeSecret({ name: "tok", value: "the-value" });
    const ca = va.session(agent("claude"));
    const cb = vb.session(agent("claude"));
    for (let round = 0; round < 5; round++) {
      const lease = await (round % 2 === 0 ? ca : cb).requestLease({ secret: "tok" });
      assert.equal(lease.maxUses, 1);
      const tries = await Promise.allSettled(
        Array.from({ length: 6 }, (_, i) => (i % 2 === 0 ? ca : cb).accessSecret(lease.id, { domain: "api.example.com" })),
      );
      const won = tries.filter((r) => r.status === "fulfilled");
      assert.equal(won.length, 1, `round ${round}: ${tries.map((r) => (r.status === "rejected" ? (r.reason as VaultError).code : "ok")).join(",")}`);
      for (const r of tries) if (r.status === "rejected") assert.ok(isVaultError(r.reason, "lease_exhausted"), String(r.reason));
      const v = (won[0] as PromiseFulfilledResult<{ value: { toString(): string; wipe(): void } }>).value.value;
      v.wipe();
    }
    // Audited writes from both at once, interleaved in one chain.
    await Promise.all(
      Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? ca : cb).requestLease({ secret: "tok" }).then((l) => (i % 4 < 2 ? ca : cb).revokeLease(l.id))),
    );
    for (const v of [va, vb]) {
      const res = await v.admin().auditVerify();
      assert.equal(res.ok, true, res.problem);
      assert.ok(res.events >= 5 * 7 + 40, `events: ${res.events}`);
    }
    const rows = await va.admin().auditQuery({ limit: 10_000 });
    assert.deepEqual(rows.map((r) => r.seq), rows.map((_, i) => i + 1), "one chain, no gaps");
  });

  describe("the late lock: a batch runs before taking the write lock, and is checked under it", () => {
    /** Two Vaults on two pools over one fresh schema, each warmed so that its next batch runs late. */
    const pair = async (policyText: string, limits?: { maxLiveLeasesPerAgent: number }) => {
      const schema = await fresh();
      const key = hexKey();
      const policy = parsePolicy(policyText, "p.toml");
      const sa = await open(schema);
      const sb = await open(schema);
      const va = await Vault.open({ store: sa, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy, ...(limits ? { limits } : {}) });
      const vb = await Vault.open({ store: sb, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy, ...(limits ? { limits } : {}) });
      after(() => va.close());
      after(() => vb.close());
      await va.admin().storeSecret({ name: "tok", value: "the-value" });
      return { sa, sb, va, vb };
    };
    const AT = { domain: "api.example.com" };

    test("a late call that fails on what another instance has since changed is run again under the lock, not failed", async () => {
      const schema = await fresh();
      const a = await open(schema);
      const b = await open(schema);
      await a.transaction((t) => t.setMeta("key_id", "k1"));
      await a.transaction(async (t) => void (await t.getMeta("key_id"))); // A caches k1, and its next batch runs late
      await b.transaction((t) => t.setMeta("key_id", "k2")); // B moves it on (as a key rotation would)
      const r0 = a.stats().relocked;
      // Like a decrypt under a key this instance no longer holds: the call throws on a stale read.
      const got = await a.transaction(async (t) => {
        const k = await t.getMeta("key_id");
        if (k !== "k2") throw new VaultError("key_unavailable", `stale key id ${String(k)}`);
        await t.insertLease(leaseRec("after-rotation"));
        return k;
      });
      assert.equal(got, "k2");
      assert.equal(a.stats().relocked - r0, 1, "the late run failed and was run again under the lock");
      // A real failure still fails (under the lock, once more), and leaves nothing.
      await assert.rejects(
        a.transaction(async (t) => {
          await t.insertLease(leaseRec("doomed"));
          throw new VaultError("invalid_request", "its own fault");
        }),
        (e) => isVaultError(e, "invalid_request"),
      );
      assert.equal(await a.getLease("doomed"), null);
    });

    test("a database restored under a running instance (its counters went back): nothing cached is trusted, late or locked", async () => {
      const schema = await fresh();
      const a = await open(schema);
      await a.transaction((t) => t.setMeta("killswitch", "off"));
      for (let i = 0; i < 3; i++) await a.transaction(async (t) => void (await t.getMeta("killswitch")));
      // The restore: other data, and counters from an older state whose differences look plain.
      await admin(`UPDATE ${schema}.meta SET value = 'on' WHERE key = 'killswitch'`);
      await admin(`UPDATE ${schema}.lessor_commits SET n = n - 2, plain = plain - 2`);
      assert.equal(await a.transaction((t) => t.getMeta("killswitch")), "on", "the late batch's check refused the counters");
      // And under the lock from BEGIN (lateLock off), the same.
      const b = await open(schema, { lateLock: false });
      await b.transaction((t) => t.setMeta("killswitch", "off"));
      await b.transaction(async (t) => void (await t.getMeta("killswitch")));
      await admin(`UPDATE ${schema}.meta SET value = 'on' WHERE key = 'killswitch'`);
      await admin(`UPDATE ${schema}.lessor_commits SET n = n - 1, plain = plain - 1`);
      assert.equal(await b.transaction((t) => t.getMeta("killswitch")), "on", "sync under the lock refused them too");
    });

    test("a killswitch pulled on A while B's cache says it is off: B's late grant is caught under the lock and refused", async () => {
      const { sa, sb, va, vb } = await pair(grant("g", ["claude"], ["tok"], ["api.example.com"], "max_uses = 1"));
      const cb = vb.session(agent("claude"));
      for (let i = 0; i < 3; i++) (await cb.requestLeaseAndAccess({ secret: "tok" }, AT)).value.wipe();
      assert.ok(sb.stats().late >= 1, `B's batches ran late: ${JSON.stringify(sb.stats())}`);
      await va.admin().killswitch("drill");
      const r0 = sb.stats().relocked;
      // B's cache still holds "killswitch off" from its last commit: the grant is decided on it, and
      // only the check under the lock (A's commit changed metadata) can stop it.
      const code = await cb.requestLeaseAndAccess({ secret: "tok" }, AT).then((g) => (g.value.wipe(), "granted"), (e: VaultError) => e.code);
      assert.equal(code, "access_denied");
      assert.equal(sb.stats().relocked - r0, 1, "the late batch ran again under the lock");
      assert.equal((await va.admin().listLeases({ agent: "claude" })).filter((l) => leaseState(l, Date.now()) === "live").length, 0);
      void sa;
    });

    test("per-agent cap across instances: both grant from cached bounds at once, and no more than the cap commit", async () => {
      const policy = grant("g", ["claude"], ["tok"], ["api.example.com"], "max_uses = 1") + grant("g2", ["claude"], ["tok2"], ["api.example.com"], 'ttl = "1h"');
      const { sa, sb, va, vb } = await pair(policy, { maxLiveLeasesPerAgent: 4 });
      await va.admin().storeSecret({ name: "tok2", value: "the-other-value" });
      const ca = va.session(agent("claude"));
      const cb = vb.session(agent("claude"));
      // Warm both with plain commits (leases used up at birth): each caches the agent's bound, 0.
      for (let i = 0; i < 12; i++) for (const c of [ca, cb]) (await c.requestLeaseAndAccess({ secret: "tok" }, AT)).value.wipe();
      const l0 = sa.stats().late + sb.stats().late;
      const r0 = sa.stats().relocked + sb.stats().relocked;
      const out = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => (i % 2 === 0 ? ca : cb).requestLease({ secret: "tok2" })));
      const granted = out.filter((r) => r.status === "fulfilled").length;
      for (const r of out) if (r.status === "rejected") assert.ok(isVaultError(r.reason, "rate_limited"), String(r.reason));
      const live = (await va.admin().listLeases({ agent: "claude" })).filter((l) => leaseState(l, Date.now()) === "live").length;
      assert.equal(live, 4, `live leases after the race (granted ${granted})`);
      assert.equal(granted, 4);
      assert.ok(sa.stats().late + sb.stats().late - l0 >= 1, "a batch committed late");
      assert.ok(sa.stats().relocked + sb.stats().relocked - r0 >= 1, "the other side's late batch, which read a stale bound, ran again under the lock");
    });

    test("an instance's own late batches need no re-run when the other's commits are plain; the chain they interleave verifies", async () => {
      const { sa, sb, va, vb } = await pair(grant("g", ["claude"], ["tok"], ["api.example.com"], "max_uses = 1"));
      const ca = va.session(agent("claude"));
      const cb = vb.session(agent("claude"));
      for (let i = 0; i < 12; i++) for (const c of [ca, cb]) (await c.requestLeaseAndAccess({ secret: "tok" }, AT)).value.wipe();
      const r0 = sa.stats().relocked + sb.stats().relocked;
      const l0 = sa.stats().late + sb.stats().late;
      await Promise.all(Array.from({ length: 64 }, (_, i) => (i % 2 === 0 ? ca : cb).requestLeaseAndAccess({ secret: "tok" }, AT).then((g) => g.value.wipe())));
      assert.equal(sa.stats().relocked + sb.stats().relocked - r0, 0, "lease+access commits are plain: nothing ran again");
      assert.ok(sa.stats().late + sb.stats().late - l0 >= 2, "they committed late");
      // A commit that is not plain (a revocation on A) makes B's next late batch run again under the lock.
      const lease = await ca.requestLease({ secret: "tok" });
      await va.admin().revokeLease(lease.id, "test");
      const rb = sb.stats().relocked;
      (await cb.requestLeaseAndAccess({ secret: "tok" }, AT)).value.wipe();
      assert.equal(sb.stats().relocked - rb, 1);
      for (const v of [va, vb]) {
        const res = await v.admin().auditVerify();
        assert.equal(res.ok, true, res.problem);
      }
      const rows = await va.admin().auditQuery({ limit: 10_000 });
      assert.deepEqual(rows.map((r) => r.seq), rows.map((_, i) => i + 1), "one chain, no gaps");
    });
  });
});
