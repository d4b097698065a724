/**
 * `lessor migrate`: target parsing (a password never accepted from argv, never echoed), Store.listMeta,
 * and whole-vault copies that must preserve everything: SQLite → SQLite without a server, and SQLite →
 * PostgreSQL → SQLite with LESSOR_TEST_PG_URL (skipped, saying so, without it). After a round trip
 * every table is equal (row counts and digests), the audit trail verifies on the copy, a secret with two
 * versions reads back, a lease granted before the move is still usable after it and a token still
 * authenticates. Refusals: a non-empty target (even one holding only metadata, as a failed run leaves
 * it), a home whose daemon is serving, a source whose audit trail was tampered with.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import Database from "better-sqlite3";
import { isVaultError } from "../src/base/errors.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { migrateHome } from "../src/config/migrate.js";
import { MIGRATE_TO_ENV, describeMigrateTarget, parseMigrateTarget, readMigrateTargetFile, resolveMigrateTarget } from "../src/config/migrate-target.js";
import { assertEmptyStore, storeSummary } from "../src/store/copy.js";
import { createMemoryStore } from "../src/store/memory.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import type { Store } from "../src/vault/ports.js";
import { agent, grant } from "./helpers.js";
import { startServe, CLI } from "./daemon-harness.js";
import { PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";

const dirs: string[] = [];
process.on("exit", () => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function scratch(): string {
  const d = mkdtempSync(join(tmpdir(), "lessor-migrate-"));
  dirs.push(d);
  return d;
}

const CANARY_V1 = "canary-v1-7f3a9c";
const CANARY_V2 = "canary-v2-e21b04";
const POLICY = grant("g", ["claude"], ["canary"], ["api.example.com"], "max_uses = 5\nttl = \"1h\"");

/** A fresh home (file key) with POLICY; returns its path. */
async function newHome(): Promise<string> {
  const home = join(scratch(), "home");
  await initHome({ home, env: { LESSOR_HOME: home } });
  writeFileSync(join(home, "policy.toml"), POLICY, { mode: 0o600 });
  return home;
}

/** A home with the same key and policy as `like`, whose lessor.toml says `config`, with no database. */
function sibling(like: string, config = ""): string {
  const home = join(scratch(), "home");
  mkdirSync(home, { mode: 0o700 });
  for (const f of ["master.key", "policy.toml"]) copyFileSync(join(like, f), join(home, f));
  chmodSync(join(home, "master.key"), 0o600);
  writeFileSync(join(home, "lessor.toml"), config, { mode: 0o600 });
  return home;
}

interface Seeded {
  leaseId: string;
  token: string;
  revokedToken: string;
}

/**
 * Fills a vault: the canary with two versions, a live lease used once, a revoked lease, a live and a
 * revoked token, the killswitch pulled and released (so metadata beyond the key id), and the audit
 * events of all that.
 */
async function seed(home: string, env: NodeJS.ProcessEnv = { LESSOR_HOME: home }): Promise<Seeded> {
  const vault = await openVault({ home, env });
  try {
    const admin = vault.admin();
    const claude = vault.session(agent("claude"));
    await admin.storeSecret({ name: "canary", value: CANARY_V1, description: "two versions", tags: ["t1"] });
    await admin.rotateSecret({ scope: "global", name: "canary" }, CANARY_V2);
    await admin.storeSecret({ scope: "workspace:team", name: "other", value: "other-value" });
    // The killswitch first: pulling it revokes every live lease.
    await admin.killswitch("drill");
    await admin.releaseKillswitch("drill over");
    const lease = await claude.requestLease({ secret: "canary" });
    (await claude.accessSecret(lease.id, { domain: "api.example.com" })).value.wipe();
    const gone = await claude.requestLease({ secret: "canary" });
    await claude.revokeLease(gone.id);
    const token = await admin.createToken({ name: "ci", role: "agent", agent: "claude" });
    const revoked = await admin.createToken({ name: "old", role: "agent", agent: "claude" });
    await admin.revokeToken(revoked.id);
    return { leaseId: lease.id, token: token.token, revokedToken: revoked.token };
  } finally {
    await vault.close();
  }
}

/** Opens `home`'s vault and checks what {@link seed} wrote is all there and works. */
async function checkVault(home: string, s: Seeded, env: NodeJS.ProcessEnv = { LESSOR_HOME: home }): Promise<void> {
  const vault = await openVault({ home, env });
  try {
    const admin = vault.admin();
    const v = await admin.auditVerify();
    assert.equal(v.ok, true, v.problem);
    const ref = { scope: "global", name: "canary" };
    const cur = await admin.revealSecret(ref);
    const old = await admin.revealSecret(ref, 1);
    assert.deepEqual([cur.version, cur.value.unsafeText(), old.version, old.value.unsafeText()], [2, CANARY_V2, 1, CANARY_V1]);
    // The lease granted before the move: one use counted there, usable here, the count carried on.
    const got = await vault.session(agent("claude")).accessSecret(s.leaseId, { domain: "api.example.com" });
    assert.equal(got.value.unsafeText(), CANARY_V2);
    assert.equal(got.lease.uses, 2);
    const who = await vault.authenticateToken(s.token, "tcp");
    assert.equal(who.agent, "claude");
    await assert.rejects(vault.authenticateToken(s.revokedToken, "tcp"), (e) => isVaultError(e, "unauthenticated"));
    assert.equal((await vault.checkKillswitch()).engaged, false);
    assert.equal((await admin.auditVerify()).ok, true);
  } finally {
    await vault.close();
  }
}

async function summaryOf(open: () => Store | Promise<Store>) {
  const s = await open();
  try {
    return await storeSummary(s);
  } finally {
    await s.close();
  }
}

describe("migrate targets (no server needed)", () => {
  const PW = "s3cr3tpw";

  test("a URL with a password is refused on the command line, and neither it nor the password is echoed", () => {
    for (const url of [`postgres://lessor:${PW}@db.internal/lessor`, `postgresql://lessor@db.internal/lessor?password=${PW}`, `postgres://u@h/d?sslpassword=${PW}`])
      assert.throws(
        () => resolveMigrateTarget({ to: url, env: {} }),
        (e) => isVaultError(e, "invalid_request") && !e.message.includes(PW) && !e.message.includes("db.internal") && e.message.includes(MIGRATE_TO_ENV),
      );
    // The same URL is fine from the environment, and described without user or password.
    const t = resolveMigrateTarget({ env: { [MIGRATE_TO_ENV]: `postgres://lessor:${PW}@db.internal:6543/lessor?options=-c%20search_path%3Dteam_a` } });
    assert.equal(t.kind, "postgres");
    assert.equal(describeMigrateTarget(t), "postgres db.internal:6543/lessor (schema team_a)");
    // A password-free URL may be given on the command line.
    assert.equal(resolveMigrateTarget({ to: "postgres://lessor@db.internal/lessor", env: {} }).kind, "postgres");
  });

  test("junk, other schemes, no target and two targets are refused without echoing the text", () => {
    for (const junk of [`${PW}`, `mysql://u:${PW}@h/d`, `http://${PW}@h/`, "sqlite:"])
      assert.throws(() => parseMigrateTarget(junk, "--to", false), (e) => isVaultError(e, "invalid_request") && !e.message.includes(PW));
    assert.throws(() => resolveMigrateTarget({ env: {} }), (e) => isVaultError(e, "invalid_request") && /--to sqlite:PATH/.test(e.message));
    assert.throws(() => resolveMigrateTarget({ to: "sqlite:/x.db", env: { [MIGRATE_TO_ENV]: "sqlite:/y.db" } }), (e) => isVaultError(e, "invalid_request") && /one target only/.test(e.message));
    assert.deepEqual(parseMigrateTarget("sqlite:rel/copy.db", "--to", false, "/srv"), { kind: "sqlite", path: "/srv/rel/copy.db" });
  });

  test("--to-file: one line; a file holding a password must be private", () => {
    const d = scratch();
    const f = join(d, "target");
    writeFileSync(f, `# the team database\npostgres://lessor:${PW}@db.internal/lessor\n`, { mode: 0o644 });
    chmodSync(f, 0o644);
    assert.throws(() => readMigrateTargetFile(f), (e) => isVaultError(e, "insecure_permissions") && !e.message.includes(PW) && /chmod 600/.test(e.message));
    chmodSync(f, 0o600);
    assert.equal(readMigrateTargetFile(f).kind, "postgres");
    writeFileSync(f, "sqlite:/a.db\nsqlite:/b.db\n");
    assert.throws(() => readMigrateTargetFile(f), (e) => isVaultError(e, "invalid_request") && /exactly one line/.test(e.message));
    // World-readable is fine when there is no secret in it.
    writeFileSync(f, "postgres://lessor@db.internal/lessor\n");
    chmodSync(f, 0o644);
    assert.equal(readMigrateTargetFile(f).kind, "postgres");
  });
});

describe("Store.listMeta", () => {
  for (const [kind, open] of [
    ["memory", () => createMemoryStore()],
    ["sqlite", () => openSqliteStore(join(scratch(), "m.db"))],
  ] as const)
    test(`${kind}: every committed entry, sorted by key; a running transaction's writes are not listed`, async () => {
      const s = open();
      try {
        assert.deepEqual(await s.listMeta(), []);
        await s.transaction(async (tx) => {
          await tx.setMeta("b", "2");
          await tx.setMeta("a", "1");
          await tx.setMeta("b", "3");
        });
        let seen: unknown;
        await s.transaction(async (tx) => {
          await tx.setMeta("c", "uncommitted");
          seen = await s.listMeta();
        });
        assert.deepEqual(seen, [{ key: "a", value: "1" }, { key: "b", value: "3" }]);
        assert.deepEqual(await s.listMeta(), [{ key: "a", value: "1" }, { key: "b", value: "3" }, { key: "c", value: "uncommitted" }]);
      } finally {
        await s.close();
      }
    });
});

describe("lessor migrate, SQLite to SQLite (no server needed)", () => {
  test("copies everything: equal tables, the audit verifies, the canary's two versions, the lease and the token work on the copy", async () => {
    const a = await newHome();
    const s = await seed(a);
    const c = sibling(a);
    const report = await migrateHome({ home: a, env: { LESSOR_HOME: a }, target: { kind: "sqlite", path: join(c, "lessor.db") } });
    assert.equal(report.counts.secrets, 2);
    assert.equal(report.counts.versions, 3);
    assert.equal(report.counts.leases, 2);
    assert.equal(report.counts.tokens, 2);
    assert.equal(report.counts.checkpoint, 1);
    assert.ok(report.counts.audit >= 10, String(report.counts.audit));
    assert.ok(report.counts.meta >= 2, "at least the master key id and the killswitch");
    assert.equal(report.audit.events, report.counts.audit);
    assert.ok(report.spotChecked.includes("global/canary@2"), report.spotChecked.join());
    const [src, dst] = [await summaryOf(() => openSqliteStore(join(a, "lessor.db"))), await summaryOf(() => openSqliteStore(join(c, "lessor.db")))];
    assert.deepEqual(dst, src);
    await checkVault(c, s);
  });

  test("refuses a target file that exists, even one holding only metadata (a failed run), and writes nothing to it", async () => {
    const a = await newHome();
    await seed(a);
    const path = join(scratch(), "partial.db");
    const t = openSqliteStore(path);
    await t.transaction((tx) => tx.setMeta("master_key_id", "x"));
    await t.close();
    await assert.rejects(
      migrateHome({ home: a, env: { LESSOR_HOME: a }, target: { kind: "sqlite", path } }),
      (e) => isVaultError(e, "invalid_request") && /partial\.db exists; lessor migrate writes a new file/.test(e.message),
    );
    const again = openSqliteStore(path);
    assert.deepEqual((await storeSummary(again)).counts, { secrets: 0, versions: 0, leases: 0, tokens: 0, meta: 1, audit: 0, checkpoint: 0 });
    await again.close();
    // Its own database as the target is refused before anything is opened.
    await assert.rejects(migrateHome({ home: a, env: { LESSOR_HOME: a }, target: { kind: "sqlite", path: join(a, "lessor.db") } }), (e) => isVaultError(e, "invalid_request") && /own database/.test(e.message));
  });

  test("refuses a source whose audit trail was altered, before creating the target", async () => {
    const a = await newHome();
    await seed(a);
    const db = new Database(join(a, "lessor.db"));
    db.prepare("UPDATE audit SET reason = 'nothing to see' WHERE seq = 3").run();
    db.close();
    const path = join(scratch(), "copy.db");
    await assert.rejects(migrateHome({ home: a, env: { LESSOR_HOME: a }, target: { kind: "sqlite", path } }), (e) => isVaultError(e, "audit_broken") && /nothing was copied/.test(e.message));
    assert.equal(existsSync(path), false);
  });

  test("refuses while a daemon serves the home, and works once it is stopped", { timeout: 60_000 }, async () => {
    const a = await newHome();
    await seed(a);
    const path = join(scratch(), "copy.db");
    const d = await startServe(a);
    try {
      await assert.rejects(migrateHome({ home: a, env: { LESSOR_HOME: a }, target: { kind: "sqlite", path } }), (e) => isVaultError(e, "unavailable") && /daemon is serving/.test(e.message));
      assert.equal(existsSync(path), false, "nothing is created while the daemon serves");
    } finally {
      await d.stop();
    }
    const r = await migrateHome({ home: a, env: { LESSOR_HOME: a }, target: { kind: "sqlite", path } });
    assert.equal(r.counts.secrets, 2);
  });
});

/** Runs the CLI from source (`node --import tsx src/cli/main.ts`), as a real process. */
function cli(args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ["--import", "tsx", CLI, ...args], { env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", ...env } });
    let out = "";
    p.stdout.on("data", (d: Buffer) => (out += d.toString()));
    p.stderr.on("data", (d: Buffer) => (out += d.toString()));
    p.on("error", reject);
    p.on("close", (code) => resolve({ code, out }));
  });
}

describe("lessor migrate, SQLite → PostgreSQL → SQLite", { skip: PG_SKIP }, () => {
  const PW = "pw-4d1e7b90c2";
  const drops: (() => Promise<void>)[] = [];
  after(async () => {
    for (const d of drops) await d();
  });

  /** The test server's URL for `schema`; with `password` too (trust auth never asks for it). */
  function urlFor(schema: string, password?: string): string {
    const u = new URL(PG_URL!);
    u.searchParams.set("options", `-c search_path=${schema}`);
    if (password !== undefined) {
      if (u.username === "") u.username = "postgres";
      u.password = password;
    }
    return u.toString();
  }
  async function schema(): Promise<string> {
    const s = await testSchema();
    drops.push(s.drop);
    return s.schema;
  }

  test("round trip: every table equal at each step, the audit verifies, the canary, the lease and the token work on PostgreSQL and back", { timeout: 120_000 }, async () => {
    const a = await newHome();
    const s = await seed(a);
    const pgSchema = await schema();
    const url = urlFor(pgSchema);

    const there = await migrateHome({ home: a, env: { LESSOR_HOME: a }, target: { kind: "postgres", url } });
    assert.match(there.target, new RegExp(`^postgres .*\\(schema ${pgSchema}\\)$`));
    const srcSummary = await summaryOf(() => openSqliteStore(join(a, "lessor.db")));
    const pgSummary = await summaryOf(() => openPostgresStore({ url, feed: { listen: false } }));
    assert.deepEqual(pgSummary, srcSummary, "PostgreSQL holds exactly what SQLite held");

    // Back: a home on that database, migrated to a new SQLite file (before any vault opens on it).
    const b = sibling(a, `[vault]\nstore = "postgres"\n`);
    const envB = { LESSOR_HOME: b, LESSOR_DATABASE_URL: url };
    const c = sibling(a);
    const back = await migrateHome({ home: b, env: envB, target: { kind: "sqlite", path: join(c, "lessor.db") } });
    assert.deepEqual(back.counts, there.counts);
    assert.deepEqual(await summaryOf(() => openSqliteStore(join(c, "lessor.db"))), srcSummary, "SQLite → PostgreSQL → SQLite changes nothing");

    await checkVault(b, s, envB);
    await checkVault(c, s);
  });

  test("the CLI: the URL (and its password) from the environment never shows; on the command line it is refused; a non-empty target is refused", { timeout: 120_000 }, async () => {
    const a = await newHome();
    await seed(a);
    const url = urlFor(await schema(), PW);
    const hidden = (out: string) => {
      assert.ok(!out.includes(PW), out);
      assert.ok(!out.includes(url), out);
      assert.ok(!out.includes(`:${PW}@`), out);
    };

    const ok = await cli(["--home", a, "migrate"], { [MIGRATE_TO_ENV]: url });
    hidden(ok.out);
    assert.equal(ok.code, 0, ok.out);
    assert.match(ok.out, /migrated sqlite .* -> postgres .*\(schema lessor_test_/);
    assert.match(ok.out, /audit trail ok/);
    assert.match(ok.out, /global\/canary@2/);

    const argv = await cli(["--home", a, "migrate", "--to", url], {});
    hidden(argv.out);
    assert.equal(argv.code, 2, argv.out);
    assert.match(argv.out, /holds a database password/);

    const again = await cli(["--home", a, "migrate", "--json"], { [MIGRATE_TO_ENV]: url });
    hidden(again.out);
    assert.equal(again.code, 2, again.out);
    assert.match(again.out, /not empty/);

    const f = join(scratch(), "target");
    writeFileSync(f, `${url}\n`, { mode: 0o600 });
    const viaFile = await cli(["--home", a, "migrate", "--to-file", f], {});
    hidden(viaFile.out);
    assert.equal(viaFile.code, 2, "the same, non-empty, target");
  });

  test("a target schema holding another vault is refused and left as it was", async () => {
    const a = await newHome();
    await seed(a);
    const url = urlFor(await schema());
    const other = await openPostgresStore({ url, feed: { listen: false } });
    await other.transaction((tx) => tx.setMeta("killswitch", "{}"));
    const before = await storeSummary(other);
    await assert.rejects(migrateHome({ home: a, env: { LESSOR_HOME: a }, target: { kind: "postgres", url } }), (e) => isVaultError(e, "invalid_request") && /not empty/.test(e.message));
    assert.deepEqual(await storeSummary(other), before);
    await other.close();
  });
});
