/**
 * Attack pass on upgrading a live vault from an older lessor (src/store/sqlite/schema.ts,
 * src/store/postgres/schema.ts): a vault written at an older schema, with leases, approvals, tokens
 * and audit rows in flight, is opened by this build. Nothing revoked, used up or bound may become
 * usable, the pre-migration rows may not get defaults that widen access, the audit chain still
 * verifies (and still catches a row edited before the upgrade), and an older build refuses the newer
 * database without touching it.
 *
 * The older databases are made the way the older lessor left them: the vault is written, then the
 * columns later steps added are dropped and the schema version set back (the older steps' SQL is
 * this file's MIGRATIONS prefix, never edited). The same attack was also run by hand with the real
 * build of commit 75523a1^ (schema 6) writing the vault: same result.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import Database from "better-sqlite3";
import { runCli } from "./cli-harness.js";
import { codeOf, hexKey, tempDir } from "./helpers.js";
import { PG_SKIP } from "./pg-helpers.js";
import { Vault } from "../src/vault/vault.js";
import { parsePolicy } from "../src/vault/policy.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { SCHEMA_VERSION as SQLITE_SCHEMA } from "../src/store/sqlite/schema.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import type { Store } from "../src/vault/ports.js";

const CANARY = `CANARY_${randomBytes(16).toString("hex")}`;
const leaks = (x: unknown): boolean => JSON.stringify(x ?? null).includes(CANARY) || String(x).includes(CANARY);

const guarded = (name: string): string =>
  `[[rule]]\nname = ${JSON.stringify(name)}\neffect = "allow"\nagents = ["a1"]\nsecrets = ["guarded"]\ndomains = ["api.example.com"]\napproval = "required"\n`;
const PLAIN = `[[rule]]\nname = "plain"\neffect = "allow"\nagents = ["a1"]\nsecrets = ["plain"]\ndomains = ["api.example.com"]\n`;
/** The admin renames the approval rule and gives its old name to a rule without approval for another secret. */
const RENAMED = guarded("guarded-v2") + `\n[[rule]]\nname = "guarded"\neffect = "allow"\nagents = ["a1"]\nsecrets = ["other"]\ndomains = ["api.example.com"]\n` + PLAIN;

const X = { id: "token:x/00000000000000a1", role: "agent", agent: "a1", transport: "tcp" } as const;
const Y = { id: "token:y/00000000000000b2", role: "agent", agent: "a1", transport: "tcp" } as const;

interface Fleet {
  approved: string;
  plain: string;
  revoked: string;
  usedUp: string;
}

/** Writes, through the vault, what a live vault holds: an approved lease, plain, revoked and used-up leases, a rotated secret. */
async function populate(vault: Vault): Promise<Fleet> {
  const admin = vault.admin();
  await admin.storeSecret({ name: "guarded", value: CANARY });
  await admin.storeSecret({ name: "other", value: "other-value" });
  await admin.storeSecret({ name: "plain", value: `${CANARY}-v1` });
  await admin.storeSecret({ name: "plain", value: CANARY });
  const x = vault.session({ ...X });
  const asked = await x.requestApproval({ secret: "guarded", domains: ["api.example.com"] });
  assert.equal(asked.required, true);
  if (asked.required) await admin.decideApproval(asked.approval.id, true);
  const approved = (await x.requestLease({ secret: "guarded", domains: ["api.example.com"] })).id;
  const plain = (await x.requestLease({ secret: "plain", domains: ["api.example.com"] })).id;
  const revoked = (await x.requestLease({ secret: "plain", domains: ["api.example.com"] })).id;
  await x.revokeLease(revoked, "test");
  const usedUp = (await x.requestLease({ secret: "plain", domains: ["api.example.com"], maxUses: 1 })).id;
  (await x.accessSecret(usedUp, { domain: "api.example.com" })).value.wipe();
  return { approved, plain, revoked, usedUp };
}

/** After the upgrade and a reload that renames the approval rule: nothing widened. */
async function attack(vault: Vault, f: Fleet, policy: { text: string }): Promise<void> {
  const x = vault.session({ ...X });
  const y = vault.session({ ...Y });
  policy.text = RENAMED;
  await vault.admin().reloadPolicy();
  let got: string | null = null;
  const code = await codeOf(
    (async () => {
      const r = await y.accessSecret(f.approved, { domain: "api.example.com" });
      got = r.value.expose().toString();
      r.value.wipe();
    })(),
  );
  assert.equal(got, null, "another identity of the agent read the value a person approved (before the upgrade) for the first");
  assert.equal(code, "access_denied");
  const leases = await vault.admin().listLeases({ agent: "a1" });
  assert.equal(leases.find((l) => l.id === f.approved)?.bound, true, "a lease granted through an approval before schema 7 reads bound after the upgrade");
  assert.equal(leases.find((l) => l.id === f.plain)?.bound, false, "a lease granted without approval is not bound by the upgrade");
  // The identity that asked still uses its approved lease; the plain lease serves the current version.
  const own = await x.accessSecret(f.approved, { domain: "api.example.com" });
  assert.equal(own.value.expose().toString(), CANARY);
  own.value.wipe();
  // Revoked and used-up leases stay dead.
  assert.equal(await codeOf(x.accessSecret(f.revoked, { domain: "api.example.com" })), "lease_revoked");
  assert.equal(await codeOf(x.accessSecret(f.usedUp, { domain: "api.example.com" })), "lease_exhausted");
  const v = await vault.admin().auditVerify();
  assert.equal(v.ok, true, JSON.stringify(v));
}

async function openVault(store: Store, key: string, policy: { text: string }): Promise<Vault> {
  return Vault.open({ store, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy: async () => parsePolicy(policy.text, "p.toml") });
}

describe("upgrading a live SQLite vault", () => {
  for (const from of [6, 7]) {
    test(`BREAK: an approved lease granted at schema ${from} stays bound to the identity that asked after the upgrade, whatever a later reload names its rule`, async () => {
      const dir = tempDir("lessor-atkupg-");
      const db = join(dir, "lessor.db");
      const key = hexKey();
      const policy = { text: guarded("guarded") + PLAIN };
      let vault = await openVault(openSqliteStore(db), key, policy);
      const f = await populate(vault);
      await vault.close();
      // The database as the older lessor left it: schema 6 had no leases.bound; schema 7 read 0 for
      // every lease granted before it.
      const raw = new Database(db);
      raw.exec("DROP TRIGGER IF EXISTS audit_binds_approved");
      raw.exec("ALTER TABLE leases DROP COLUMN proxy_only"); // schema 9's
      if (from === 6) raw.exec("ALTER TABLE leases DROP COLUMN bound");
      else raw.exec("UPDATE leases SET bound = 0");
      raw.pragma(`user_version = ${from}`);
      raw.close();
      vault = await openVault(openSqliteStore(db), key, policy);
      try {
        await attack(vault, f, policy);
        assert.equal(new Database(db, { readonly: true }).pragma("user_version", { simple: true }), SQLITE_SCHEMA);
      } finally {
        await vault.close();
      }
    });
  }

  test("BREAK: an older build still running on the file after the upgrade grants an approved lease without bound: the database binds it", async () => {
    const dir = tempDir("lessor-atkupg-");
    const db = join(dir, "lessor.db");
    const key = hexKey();
    const policy = { text: guarded("guarded") + PLAIN };
    const vault = await openVault(openSqliteStore(db), key, policy);
    try {
      const f = await populate(vault);
      // What a schema-6 build (opened before the upgrade) writes for its grant: the lease row without
      // bound, then its lease_granted event naming the approval, in one transaction.
      const raw = new Database(db);
      const lease = raw.prepare("SELECT * FROM leases WHERE id = ?").get(f.approved) as Record<string, unknown>;
      const ev = raw.prepare("SELECT * FROM audit WHERE lease_id = ? AND type = 'lease_granted'").get(f.approved) as Record<string, unknown>;
      const id = "01a24a00-0000-7000-8000-0000000000c1";
      raw.exec("BEGIN IMMEDIATE");
      const cols = Object.keys(lease).filter((c) => c !== "bound");
      raw.prepare(`INSERT INTO leases (${cols.join(", ")}) VALUES (${cols.map(() => "?").join(", ")})`).run(...cols.map((c) => (c === "id" ? id : lease[c])));
      const seq = (raw.prepare("SELECT max(seq) AS m FROM audit").get() as { m: number }).m + 1;
      const acols = Object.keys(ev);
      raw.prepare(`INSERT INTO audit (${acols.join(", ")}) VALUES (${acols.map(() => "?").join(", ")})`).run(...acols.map((c) => (c === "seq" ? seq : c === "id" ? `${String(ev.id).slice(0, -4)}beef` : c === "lease_id" ? id : ev[c])));
      const bound = (raw.prepare("SELECT bound FROM leases WHERE id = ?").get(id) as { bound: number }).bound;
      raw.exec("ROLLBACK"); // the forged audit row would break the chain; only the binding is looked at
      raw.close();
      assert.equal(bound, 1, "a lease an older build granted through an approval after the upgrade reads unbound");
    } finally {
      await vault.close();
    }
  });

  test("an older build refuses a newer database with a clear error and leaves its bytes as they were", async () => {
    const dir = tempDir("lessor-atkupg-");
    const db = join(dir, "lessor.db");
    const vault = await openVault(openSqliteStore(db), hexKey(), { text: "" });
    await vault.admin().storeSecret({ name: "s", value: CANARY });
    await vault.close();
    const raw = new Database(db);
    raw.pragma("wal_checkpoint(TRUNCATE)");
    raw.pragma(`user_version = ${SQLITE_SCHEMA + 1}`);
    raw.close();
    const before = readFileSync(db);
    assert.throws(
      () => openSqliteStore(db),
      (e: Error & { code?: string }) => e.code === "unavailable" && e.message.includes(`schema ${SQLITE_SCHEMA + 1}, this build knows ${SQLITE_SCHEMA}`) && e.message.includes("upgrade lessor"),
    );
    assert.ok(readFileSync(db).equals(before), "the refused open changed the database file");
  });

  test("lessor audit verify after the upgrade still catches an audit row edited before it", async () => {
    const home = tempDir("lessor-atkupg-home-");
    assert.equal((await runCli(["init"], { home })).code, 0);
    const set = await runCli(["secret", "set", "s1"], { home, input: CANARY });
    assert.equal(set.code, 0, set.stderr);
    assert.equal((await runCli(["secret", "set", "s1"], { home, input: `${CANARY}-2` })).code, 0);
    const db = join(home, "lessor.db");
    const raw = new Database(db);
    const row = raw.prepare("SELECT seq FROM audit WHERE type = 'secret_stored' ORDER BY seq LIMIT 1").get() as { seq: number };
    raw.prepare("UPDATE audit SET reason = 'edited before the upgrade' WHERE seq = ?").run(row.seq);
    raw.exec("DROP TRIGGER IF EXISTS audit_binds_approved");
    raw.exec("ALTER TABLE leases DROP COLUMN bound");
    raw.exec("ALTER TABLE leases DROP COLUMN proxy_only");
    raw.pragma("user_version = 6");
    raw.close();
    const v = await runCli(["audit", "verify"], { home });
    assert.equal(v.code, 1, v.stdout + v.stderr);
    assert.match(v.stdout + v.stderr, new RegExp(`event ${row.seq} was altered`));
    assert.ok(!leaks(v.stdout + v.stderr));
    assert.equal(new Database(db, { readonly: true }).pragma("user_version", { simple: true }), SQLITE_SCHEMA);
  });
});

test("lessor migrate of a vault upgraded from schema 6, with a revoked approved lease, copies and verifies (the target's step-8 trigger binds nothing the source does not)", async () => {
  const home = tempDir("lessor-atkupg-home-");
  assert.equal((await runCli(["init"], { home })).code, 0);
  const key = (JSON.parse(readFileSync(join(home, "master.key"), "utf8")) as { keys: string[] }).keys[0]!;
  const db = join(home, "lessor.db");
  const policy = { text: guarded("guarded") + PLAIN };
  const vault = await openVault(openSqliteStore(db), key, policy);
  try {
    await populate(vault);
    // A second approved lease, revoked before the upgrade (its row is done).
    const x = vault.session({ ...X });
    const asked = await x.requestApproval({ secret: "guarded", domains: ["api.example.com"], ttl: "2h" });
    if (asked.required) await vault.admin().decideApproval(asked.approval.id, true);
    const gone = await x.requestLease({ secret: "guarded", domains: ["api.example.com"], ttl: "2h" });
    await x.revokeLease(gone.id, "done with it");
  } finally {
    await vault.close();
  }
  const raw = new Database(db);
  raw.exec("DROP TRIGGER IF EXISTS audit_binds_approved");
  raw.exec("ALTER TABLE leases DROP COLUMN bound");
  raw.exec("ALTER TABLE leases DROP COLUMN proxy_only");
  raw.pragma("user_version = 6");
  raw.close();
  const target = join(tempDir("lessor-atkupg-copy-"), "copy.db");
  const m = await runCli(["migrate", "--to", `sqlite:${target}`], { home });
  assert.equal(m.code, 0, m.stdout + m.stderr);
  assert.match(m.stdout + m.stderr, /verified: every table equal on both sides/);
  assert.ok(!leaks(m.stdout + m.stderr));
  const copy = new Database(target, { readonly: true });
  const src = new Database(db, { readonly: true });
  const q = "SELECT id, bound, done FROM leases ORDER BY id";
  assert.deepEqual(copy.prepare(q).all(), src.prepare(q).all());
  assert.equal((copy.prepare("SELECT count(*) AS n FROM leases WHERE bound = 1").get() as { n: number }).n, 2, "both approved leases (live and revoked) read bound on both sides");
});

describe("upgrading a live PostgreSQL vault", { skip: PG_SKIP }, () => {
  test("BREAK: an approved lease granted at schema 6 stays bound after the upgrade (PostgreSQL)", async () => {
    const { admin: pgAdmin, PG_URL, testSchema } = await import("./pg-helpers.js");
    const { openPostgresStore } = await import("../src/store/postgres/postgres-store.js");
    const { SCHEMA_VERSION } = await import("../src/store/postgres/schema.js");
    const { schema, drop } = await testSchema();
    try {
      const key = hexKey();
      const policy = { text: guarded("guarded") + PLAIN };
      let vault = await openVault(await openPostgresStore({ url: PG_URL!, schema }), key, policy);
      const f = await populate(vault);
      await vault.close();
      await pgAdmin(`DROP TRIGGER audit_binds_approved ON ${schema}.audit; DROP FUNCTION ${schema}.lessor_bind_approved(); ALTER TABLE ${schema}.leases DROP COLUMN bound; ALTER TABLE ${schema}.leases DROP COLUMN proxy_only; DELETE FROM ${schema}.lessor_migrations WHERE version > 6`);
      vault = await openVault(await openPostgresStore({ url: PG_URL!, schema }), key, policy);
      try {
        await attack(vault, f, policy);
        assert.equal((await pgAdmin(`SELECT max(version) AS v FROM ${schema}.lessor_migrations`)).rows[0].v, SCHEMA_VERSION);
      } finally {
        await vault.close();
      }
    } finally {
      await drop();
    }
  });

  test("BREAK: an older build still running on the PostgreSQL schema during a rolling upgrade grants an approved lease without bound: the database binds it", async () => {
    const { admin: pgAdmin, PG_URL, testSchema } = await import("./pg-helpers.js");
    const { openPostgresStore } = await import("../src/store/postgres/postgres-store.js");
    const { schema, drop } = await testSchema();
    try {
      const policy = { text: guarded("guarded") + PLAIN };
      const vault = await openVault(await openPostgresStore({ url: PG_URL!, schema }), hexKey(), policy);
      try {
        const f = await populate(vault);
        const id = "01a24a00-0000-7000-8000-0000000000c2";
        const cols = (await pgAdmin(`SELECT column_name AS c FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'leases' AND column_name NOT IN ('id', 'bound')`, [schema])).rows.map((r) => r.c as string);
        const acols = (await pgAdmin(`SELECT column_name AS c FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'audit' AND column_name NOT IN ('seq', 'id', 'lease_id')`, [schema])).rows.map((r) => r.c as string);
        // What a schema-6 instance writes for its grant: the lease row without bound, then its
        // lease_granted event naming the approval, in one transaction (rolled back: only the binding is looked at).
        const out = await pgAdmin(
          `SET search_path = ${schema}; BEGIN;
           INSERT INTO leases (id, ${cols.join(", ")}) SELECT '${id}', ${cols.join(", ")} FROM leases WHERE id = '${f.approved}';
           INSERT INTO audit (seq, id, lease_id, ${acols.join(", ")}) SELECT (SELECT max(seq) + 1 FROM audit), id || 'x', '${id}', ${acols.join(", ")} FROM audit WHERE lease_id = '${f.approved}' AND type = 'lease_granted';
           SELECT bound FROM leases WHERE id = '${id}';
           ROLLBACK;`,
        );
        const rows = (out as unknown as { rows: { bound: boolean }[] }[]).find((r) => r.rows?.[0]?.bound !== undefined)?.rows;
        assert.equal(rows?.[0]?.bound, true, "a lease an older instance granted through an approval during a rolling upgrade reads unbound");
      } finally {
        await vault.close();
      }
    } finally {
      await drop();
    }
  });
});
