/**
 * An attack pass on the PostgreSQL store (src/store/postgres/) under concurrency and hostile database
 * neighbours (docs/storage.md "PostgreSQL", docs/team.md step 1, docs/security.md "A team server:
 * several daemons on one PostgreSQL schema").
 *
 * Hostile neighbour: a second PostgreSQL role (mallory) that holds CREATE on the vault's schema and no
 * privilege at all on any of the vault's tables (a schema granted to a group, a `public` kept from a
 * cluster upgraded from PostgreSQL 14, a `GRANT ALL ON SCHEMA` made for a migration tool). `lessor
 * migrate` refuses such a schema (src/store/postgres/fresh-schema.ts, docs/cli/migrate.md: "a schema
 * another role … can still add to"), but `openPostgresStore` (every `lessor serve` start) checks
 * nothing about the schema, and several of the store's statements call built-in functions and
 * operators with an argument that needs an implicit cast (`md5(current_schema())`,
 * `quote_ident(current_schema())`, `extract(…) * 1000`): PostgreSQL prefers an exact-type match in
 * any schema on the search_path over pg_catalog's cast one, so mallory's `md5(name)`, `quote_ident(name)`
 * or `*(numeric, integer)` in the vault's schema runs instead, as lessor's role, inside lessor's
 * transactions. Fixed on both layers: every open refuses a search_path another role may create in or
 * has objects on (src/store/postgres/schema-trust.ts), and the statements call built-ins by their
 * pg_catalog names or with exact types, so that even objects the open lets through (a superuser's,
 * an extension's) never stand in for one. In the first three tests mallory gets CREATE after the
 * vault's first start (a `GRANT ALL ON SCHEMA` made later for a migration tool); the tests after them
 * check the open's refusals and the statements with a superuser's shadowing objects.
 *
 * Races (held): a revocation on one instance racing accesses on another; a max_uses = 1 lease used
 * from two instances by many callers at once.
 *
 * Needs LESSOR_TEST_PG_URL; skips with the reason without it.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, describe, test } from "node:test";
import { isVaultError, type VaultError } from "../src/base/errors.js";
import { openPostgresStore, type PostgresStore } from "../src/store/postgres/postgres-store.js";
import { Vault } from "../src/vault/vault.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { parsePolicy } from "../src/vault/policy.js";
import pg from "pg";
import { MIGRATIONS } from "../src/store/postgres/schema.js";
import { agent, grant, hexKey, within } from "./helpers.js";
import { admin, asRole, PG_SKIP, PG_URL, urlAs } from "./pg-helpers.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const CANARY = "pgr_" + "CaNaRy_" + randomBytes(10).toString("hex");
const AT = { domain: "api.example.com" };
const POLICY = grant("g", ["claude"], ["tok"], ["api.example.com"], 'ttl = "1h"\nmax_ttl = "2h"');

/** The database's clock, epoch ms. */
async function dbNow(): Promise<number> {
  return Number((await admin("SELECT (extract(epoch FROM clock_timestamp()) * 1000::numeric)::bigint AS n")).rows[0].n);
}

/** The value an access gives, or the refusal's code. */
async function accessOutcome(p: Promise<{ value: { unsafeText(): string; wipe(): void } }>): Promise<string> {
  try {
    const r = await p;
    try {
      return r.value.unsafeText();
    } finally {
      r.value.wipe();
    }
  } catch (e) {
    return `refused:${(e as VaultError).code}`;
  }
}

describe("the PostgreSQL store, attacked by concurrency and database neighbours", { skip: PG_SKIP }, () => {
  const closers: (() => Promise<unknown>)[] = [];
  after(async () => {
    for (const c of closers.reverse()) await c().catch(() => {});
  });

  /**
   * Roles lessor (owner of a fresh schema, what lessor connects as) and mallory (USAGE on that schema,
   * and CREATE on it once `grantCreate` is called; nothing on its tables), with random names; dropped after.
   */
  const hostile = async () => {
    const sfx = randomBytes(5).toString("hex");
    const L = `pgr_lessor_${sfx}`;
    const M = `pgr_mallory_${sfx}`;
    const S = `pgr_vault_${sfx}`;
    await admin(`CREATE ROLE ${L} LOGIN`);
    await admin(`CREATE ROLE ${M} LOGIN`);
    await admin(`CREATE SCHEMA ${S} AUTHORIZATION ${L}`);
    await admin(`GRANT USAGE ON SCHEMA ${S} TO ${M}`);
    const grantCreate = async () => void (await admin(`GRANT CREATE ON SCHEMA ${S} TO ${M}`));
    closers.unshift(async () => {
      await admin(`DROP SCHEMA IF EXISTS ${S} CASCADE`);
      for (const r of [M, L]) {
        await admin(`DROP OWNED BY ${r}`).catch(() => {});
        await admin(`DROP ROLE IF EXISTS ${r}`).catch(() => {});
      }
    });
    const key = hexKey();
    const openAsLessor = async (): Promise<{ store: PostgresStore; vault: Vault }> => {
      const store = await openPostgresStore({ url: urlAs(L), schema: S });
      closers.push(() => store.close());
      const vault = await Vault.open({ store, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy: parsePolicy(POLICY, "p.toml") });
      closers.push(() => vault.close());
      return { store, vault };
    };
    /** The refusal of an open: insecure_permissions, naming the schema and mallory. */
    const refusedNamingMallory = (e: unknown) => {
      assert.ok(isVaultError(e), String(e));
      assert.equal(e.code, "insecure_permissions", e.message);
      assert.ok(e.message.includes(S) && e.message.includes(M), e.message);
    };
    return { L, M, S, openAsLessor, grantCreate, refusedNamingMallory };
  };

  test("a role given CREATE on the vault's schema cannot turn an instance's clock back (src/store/postgres/db-clock.ts): the next open refuses the schema, and a lease expired by the database's clock gives no value", async () => {
    const h = await hostile();
    // First start: lessor creates its tables; a lease of 1 s, expired 1.5 s later.
    const first = await h.openAsLessor();
    await first.vault.admin().storeSecret({ name: "tok", value: CANARY });
    const lease = await first.vault.session(agent("claude")).requestLease({ secret: "tok", ttl: 1000 });
    await sleep(1500);
    assert.equal(await accessOutcome(first.vault.session(agent("claude")).accessSecret(lease.id, AT)), "refused:lease_expired", "sanity: expired");
    assert.ok(lease.expiresAt < (await dbNow()), "expired by the database server's clock");
    await first.vault.close();
    await h.grantCreate();
    // mallory: no privilege on any of the vault's tables, only CREATE on its schema.
    const priv = await admin(`SELECT has_table_privilege($1, '${h.S}.leases', 'SELECT,UPDATE') AS p`, [h.M]);
    assert.equal(priv.rows[0].p, false);
    await asRole(
      h.M,
      `CREATE FUNCTION ${h.S}.shift(numeric, integer) RETURNS numeric LANGUAGE sql AS 'SELECT $1 * $2::numeric - 3600000';
       CREATE OPERATOR ${h.S}.* (LEFTARG = numeric, RIGHTARG = integer, FUNCTION = ${h.S}.shift)`,
    );
    // Another instance starts (or this one restarts): it must not decide time by mallory's operator.
    let opened: { store: PostgresStore; vault: Vault } | undefined;
    let openError: unknown;
    try {
      opened = await h.openAsLessor();
    } catch (e) {
      openError = e; // refusing the schema (others may create in it) is a fix too
    }
    if (opened === undefined) {
      assert.ok(isVaultError(openError), String(openError));
      h.refusedNamingMallory(openError);
      assert.match(openError.message, new RegExp(`REVOKE CREATE ON SCHEMA ${h.S} FROM ${h.M}`));
      return;
    }
    const skew = opened.store.now!() - (await dbNow());
    const got = await accessOutcome(opened.vault.session(agent("claude")).accessSecret(lease.id, AT));
    assert.notEqual(got, CANARY, `the expired lease gave its value (the store's clock is ${Math.round(skew / 60_000)} min off the database's)`);
    assert.ok(Math.abs(skew) < 5000, `store.now() is ${skew} ms off the database server's clock`);
  });

  test("a role given CREATE on the vault's schema cannot un-revoke leases inside the killswitch's own commit (changeStatement's md5(current_schema())): the next open refuses the schema", async () => {
    const h = await hostile();
    const first = await h.openAsLessor();
    await first.vault.admin().storeSecret({ name: "tok", value: CANARY });
    const lease = await first.vault.session(agent("claude")).requestLease({ secret: "tok" });
    await first.vault.close();
    await h.grantCreate();
    // Runs as whoever calls it (lessor's role, which owns the tables), in the caller's transaction.
    await asRole(
      h.M,
      `CREATE FUNCTION ${h.S}.md5(name) RETURNS text LANGUAGE plpgsql AS $f$
       BEGIN
         UPDATE leases SET revoked_at = NULL, revoke_reason = NULL, done = false WHERE revoked_at IS NOT NULL;
         RETURN pg_catalog.md5($1::text);
       END $f$`,
    );
    let opened: { store: PostgresStore; vault: Vault } | undefined;
    try {
      opened = await h.openAsLessor();
    } catch (e) {
      assert.ok(isVaultError(e), String(e)); // refusing the schema is a fix too
      h.refusedNamingMallory(e);
      return;
    }
    const { revoked } = await opened.vault.admin().killswitch("incident");
    assert.ok(revoked >= 1, `the killswitch said it revoked ${revoked}`);
    const row = (await admin(`SELECT revoked_at FROM ${h.S}.leases WHERE id = $1`, [lease.id])).rows[0];
    const got = await accessOutcome(opened.vault.session(agent("claude")).accessSecret(lease.id, AT));
    assert.notEqual(got, CANARY, "a lease the killswitch reported revoked still gave the value");
    assert.notEqual(row.revoked_at, null, "the lease is not revoked after the killswitch committed");
  });

  test("a role given CREATE on the vault's schema is not handed the vault's tables at the next start (migrate()'s quote_ident(current_schema())): the open refuses before any statement of the vault's runs", async () => {
    const h = await hostile();
    const first = await h.openAsLessor();
    await first.vault.admin().storeSecret({ name: "tok", value: CANARY });
    await first.vault.close();
    await h.grantCreate();
    await asRole(
      h.M,
      `CREATE FUNCTION ${h.S}.quote_ident(name) RETURNS text LANGUAGE plpgsql AS $f$
       BEGIN
         EXECUTE format('GRANT SELECT, UPDATE, INSERT, DELETE ON ALL TABLES IN SCHEMA %I TO ${h.M}', $1);
         RETURN pg_catalog.quote_ident($1::text);
       EXCEPTION WHEN OTHERS THEN RETURN pg_catalog.quote_ident($1::text);
       END $f$`,
    );
    try {
      await h.openAsLessor();
    } catch (e) {
      assert.ok(isVaultError(e), String(e)); // refusing the schema is a fix too
      h.refusedNamingMallory(e);
    }
    const tables = ["secret_versions", "tokens", "leases", "audit", "lessor_changes"];
    const reach = (await admin(`SELECT t, has_table_privilege($1, '${h.S}.' || t, 'SELECT,UPDATE') AS p FROM unnest($2::text[]) t`, [h.M, tables])).rows;
    const reachable = reach.filter((r) => r.p).map((r) => r.t as string);
    assert.deepEqual(reachable, [], `mallory can now read and change: ${reachable.join(", ")}`);
  });

  test("the first open refuses a schema another role may create in, naming the role and the REVOKE, before it creates anything", async () => {
    const h = await hostile();
    await h.grantCreate();
    await assert.rejects(h.openAsLessor(), (e) => {
      h.refusedNamingMallory(e);
      assert.match((e as Error).message, new RegExp(`REVOKE CREATE ON SCHEMA ${h.S} FROM ${h.M}`));
      return true;
    });
    const n = (await admin(`SELECT count(*)::int AS n FROM pg_class WHERE relnamespace = $1::regnamespace`, [h.S])).rows[0].n;
    assert.equal(n, 0, "the refused open created tables");
    // So does a schema whose CREATE is PUBLIC's (a `public` kept from PostgreSQL 14).
    await admin(`REVOKE CREATE ON SCHEMA ${h.S} FROM ${h.M}`);
    await admin(`GRANT CREATE ON SCHEMA ${h.S} TO PUBLIC`);
    await assert.rejects(h.openAsLessor(), (e) => isVaultError(e) && e.code === "insecure_permissions" && e.message.includes("PUBLIC"));
  });

  test("a role that had CREATE and made the vault's tables (with a lessor_migrations row) before the first start, then lost CREATE: the open refuses the tables it owns", async () => {
    const h = await hostile();
    await h.grantCreate();
    const c = new pg.Client({ connectionString: urlAs(h.M, h.S) });
    await c.connect();
    try {
      await c.query(`CREATE TABLE lessor_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`);
      for (const [i, m] of MIGRATIONS.entries()) {
        await c.query(m);
        await c.query("INSERT INTO lessor_migrations (version) VALUES ($1)", [i + 1]);
      }
    } finally {
      await c.end();
    }
    await admin(`REVOKE CREATE ON SCHEMA ${h.S} FROM ${h.M}`);
    await assert.rejects(h.openAsLessor(), (e) => {
      h.refusedNamingMallory(e);
      assert.match((e as Error).message, /lessor_migrations|leases|secrets/);
      return true;
    });
  });

  test("a function a role planted while it had CREATE, left behind after CREATE was revoked: the open refuses it, naming it", async () => {
    const h = await hostile();
    const first = await h.openAsLessor();
    await first.vault.close();
    await h.grantCreate();
    await asRole(h.M, `CREATE FUNCTION ${h.S}.md5(name) RETURNS text LANGUAGE sql AS 'SELECT pg_catalog.md5($1::text)'`);
    await admin(`REVOKE CREATE ON SCHEMA ${h.S} FROM ${h.M}`);
    await assert.rejects(h.openAsLessor(), (e) => {
      h.refusedNamingMallory(e);
      assert.match((e as Error).message, /md5\(name\)/);
      return true;
    });
  });

  test("objects the open lets through (a superuser's in the vault's schema) never stand in for a built-in: the clock, the killswitch, the change feed, the tag filter and the migration use pg_catalog's", async () => {
    const h = await hostile();
    // Each shadow counts its calls on a sequence (not rolled back with the statement) and then does
    // what the built-in would, so a call would show even where lessor swallows an error.
    const bump = `PERFORM pg_catalog.nextval('${h.S}.shadow_calls')`;
    await admin(
      `CREATE SEQUENCE ${h.S}.shadow_calls; GRANT USAGE ON SEQUENCE ${h.S}.shadow_calls TO PUBLIC;
       CREATE FUNCTION ${h.S}.md5(name) RETURNS text LANGUAGE plpgsql AS $f$ BEGIN ${bump}; RETURN pg_catalog.md5($1::text); END $f$;
       CREATE FUNCTION ${h.S}.quote_ident(name) RETURNS text LANGUAGE plpgsql AS $f$ BEGIN ${bump}; RETURN pg_catalog.quote_ident($1::text); END $f$;
       CREATE FUNCTION ${h.S}.hashtext(name) RETURNS integer LANGUAGE plpgsql AS $f$ BEGIN ${bump}; RETURN pg_catalog.hashtext($1::text); END $f$;
       CREATE FUNCTION ${h.S}.shift(numeric, integer) RETURNS numeric LANGUAGE plpgsql AS $f$ BEGIN ${bump}; RETURN $1 * $2::numeric - 3600000; END $f$;
       CREATE OPERATOR ${h.S}.* (LEFTARG = numeric, RIGHTARG = integer, FUNCTION = ${h.S}.shift);
       CREATE FUNCTION ${h.S}.has_key(jsonb, jsonb) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN ${bump}; RETURN true; END $f$;
       CREATE OPERATOR ${h.S}.? (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = ${h.S}.has_key);
       CREATE FUNCTION ${h.S}.json_build_object(text, bigint, text, text, text, json) RETURNS json LANGUAGE plpgsql
         AS $f$ BEGIN ${bump}; RETURN pg_catalog.json_build_object($1, $2, $3, $4, $5, $6); END $f$;`,
    );
    const first = await h.openAsLessor();
    assert.equal(first.store.migrationsApplied > 0, true);
    await first.vault.close();
    const { store, vault } = await h.openAsLessor(); // the open of a current schema, too
    const off = store.changes(() => {});
    closers.push(async () => off());
    await within(10_000, "the change feed listening", () => store.feedState().listening);
    await vault.admin().storeSecret({ name: "tok", value: CANARY, tags: ["prod"] });
    await vault.admin().storeSecret({ name: "other", value: "x" });
    assert.deepEqual((await vault.admin().listSecrets({ tag: "prod" })).map((s) => s.name), ["tok"]);
    const skew = store.now!() - (await dbNow());
    assert.ok(Math.abs(skew) < 5000, `store.now() is ${skew} ms off the database server's clock`);
    const short = await vault.session(agent("claude")).requestLease({ secret: "tok", ttl: 1000 });
    const long = await vault.session(agent("claude")).requestLease({ secret: "tok" });
    await sleep(1500);
    assert.equal(await accessOutcome(vault.session(agent("claude")).accessSecret(short.id, AT)), "refused:lease_expired");
    const { revoked } = await vault.admin().killswitch("incident");
    assert.ok(revoked >= 1);
    assert.equal(await accessOutcome(vault.session(agent("claude")).accessSecret(long.id, AT)), "refused:lease_revoked");
    const calls = (await admin(`SELECT is_called FROM ${h.S}.shadow_calls`)).rows[0].is_called;
    assert.equal(calls, false, "a shadowing function or operator in the vault's schema ran inside lessor's statements");
  });

  // ------------------------------------------------------------------------------------------------ races (held)

  /** Two Vaults on two pools (two instances) over one fresh schema as the superuser; dropped after. */
  const pair = async (policyText: string) => {
    const schema = `pgr_race_${randomBytes(5).toString("hex")}`;
    await admin(`CREATE SCHEMA ${schema}`);
    closers.unshift(async () => void (await admin(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)));
    const key = hexKey();
    const policy = parsePolicy(policyText, "p.toml");
    const mk = async () => {
      const store = await openPostgresStore({ url: PG_URL!, schema });
      closers.push(() => store.close());
      const v = await Vault.open({ store, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy });
      closers.push(() => v.close());
      return v;
    };
    const va = await mk();
    const vb = await mk();
    await va.admin().storeSecret({ name: "tok", value: CANARY });
    return { va, vb, schema };
  };

  test("a revocation on A racing a stream of accesses on B: no access that starts after the revocation answered succeeds, and every success is chained before it", async () => {
    const { va, vb } = await pair(POLICY);
    const ca = va.session(agent("claude"));
    const cb = vb.session(agent("claude"));
    for (let round = 0; round < 4; round++) {
      const lease = await ca.requestLease({ secret: "tok" });
      let revokedAnswered = false;
      const late: string[] = [];
      let stop = false;
      const streams = Array.from({ length: 6 }, async () => {
        while (!stop) {
          const startedAfter = revokedAnswered;
          const got = await accessOutcome(cb.accessSecret(lease.id, AT));
          if (startedAfter && got === CANARY) late.push(got);
          if (got !== CANARY) assert.equal(got, "refused:lease_revoked");
          if (startedAfter) return;
        }
      });
      await sleep(20 + round * 10);
      const r = await va.admin().revokeLease(lease.id, "race");
      revokedAnswered = true;
      assert.equal(r.revoked, true);
      await Promise.all(streams);
      stop = true;
      assert.equal(late.length, 0, "an access started after the revocation answered gave the value");
      const rows = await va.admin().auditQuery({ leaseId: lease.id, limit: 10_000 });
      const revokedAt = rows.find((e) => e.type === "lease_revoked")!.seq;
      const okAfter = rows.filter((e) => e.type === "secret_accessed" && e.outcome === "ok" && e.seq > revokedAt);
      assert.equal(okAfter.length, 0, "a use was chained after the revocation");
    }
    for (const v of [va, vb]) assert.equal((await v.admin().auditVerify()).ok, true);
  });

  test("a max_uses = 1 lease hit by 40 callers through two instances at once: exactly one value; lease+access rounds interleaved keep one gapless chain", async () => {
    const { va, vb } = await pair(grant("g", ["claude"], ["tok"], ["api.example.com"], 'ttl = "1h"\nmax_uses = 1'));
    const ca = va.session(agent("claude"));
    const cb = vb.session(agent("claude"));
    for (let round = 0; round < 3; round++) {
      const lease = await (round % 2 ? cb : ca).requestLease({ secret: "tok" });
      const out = await Promise.all(Array.from({ length: 40 }, (_, i) => accessOutcome((i % 2 ? cb : ca).accessSecret(lease.id, AT))));
      assert.equal(out.filter((o) => o === CANARY).length, 1, out.join(","));
      for (const o of out) if (o !== CANARY) assert.equal(o, "refused:lease_exhausted");
    }
    await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 ? cb : ca).requestLeaseAndAccess({ secret: "tok" }, AT).then((g) => g.value.wipe())));
    const rows = await va.admin().auditQuery({ limit: 10_000 });
    assert.deepEqual(rows.map((r) => r.seq), rows.map((_, i) => i + 1));
    for (const v of [va, vb]) assert.equal((await v.admin().auditVerify()).ok, true);
  });
});
