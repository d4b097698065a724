/**
 * Two vaults that share a master key (env key source in CI, several PostgreSQL schemas of one
 * database, a key file copied between homes): rows moved from one into the other. The attacker reads
 * vault A's database (or a backup) and writes vault B's, and holds no key. Each vault has an id of its
 * own (src/vault/vault-id.ts) bound into its wrapped DEKs and token MACs, so neither a version row nor
 * a token row of A means anything in B; and changing B's id makes B open none of its own rows (no more
 * than swapping the whole database). Real SQLite files, real `lessor serve` and CLI.
 */
import assert from "node:assert/strict";
import { copyFileSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import Database from "better-sqlite3";
import { initHome, openVault } from "../src/config/open-vault.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { VAULT_ID_META } from "../src/vault/vault-id.js";
import { Vault } from "../src/vault/vault.js";
import { runCli } from "./cli-harness.js";
import { startServe } from "./daemon-harness.js";
import { V1_KEY } from "./fixtures/make-audit-v1-db.js";
import { refusalOf, tempDirUntilExit } from "./helpers.js";

const CANARY = `CANARY-A-${randomBytes(8).toString("hex")}`;

async function home(key: string): Promise<{ home: string; env: Record<string, string>; db: string }> {
  const h = join(tempDirUntilExit("lessor-xv-"), "home");
  const env = { LESSOR_HOME: h, LESSOR_MASTER_KEY: key };
  await initHome({ home: h, env, keySource: "env" });
  return { home: h, env, db: join(h, "lessor.db") };
}

/** Runs `f` on a writable handle of a vault's SQLite file, as a database writer without the key would. */
function write<T>(db: string, f: (d: Database.Database) => T): T {
  const d = new Database(db, { fileMustExist: true });
  try {
    return f(d);
  } finally {
    d.close();
  }
}

const vaultIdOf = (db: string): string | undefined => write(db, (d) => (d.prepare("SELECT value FROM meta WHERE key = ?").get(VAULT_ID_META) as { value: string } | undefined)?.value);

/** Copies A's row of version 1 of `name` over B's row of the same place. */
function copyVersion(from: string, to: string, name: string): void {
  const row = write(from, (d) => d.prepare("SELECT v.alg, v.key_id, v.wrapped_dek, v.ciphertext, v.size FROM secret_versions v JOIN secrets s ON s.id = v.secret WHERE s.name = ? AND v.version = 1").get(name) as Record<string, unknown>);
  write(to, (d) =>
    d.prepare("UPDATE secret_versions SET alg = ?, key_id = ?, wrapped_dek = ?, ciphertext = ?, size = ? WHERE version = 1 AND secret = (SELECT id FROM secrets WHERE name = ?)").run(row.alg, row.key_id, row.wrapped_dek, row.ciphertext, row.size, name),
  );
}

/** Copies A's token row `id` into B's tokens table. */
function copyToken(from: string, to: string, id: string): void {
  const row = write(from, (d) => d.prepare("SELECT * FROM tokens WHERE id = ?").get(id) as Record<string, unknown>);
  const cols = Object.keys(row);
  write(to, (d) => d.prepare(`INSERT INTO tokens (${cols.join(",")}) VALUES (${cols.map(() => "?").join(",")})`).run(...cols.map((c) => row[c])));
}

/**
 * Two vaults made with one master key: A with an admin token, B with the canary secret and an admin
 * token of its own; then A's token row copied into B's database.
 */
async function tokenCopied(): Promise<{ a: Awaited<ReturnType<typeof home>>; b: Awaited<ReturnType<typeof home>>; tok: { id: string; token: string }; own: { token: string } }> {
  const key = randomBytes(32).toString("hex");
  const a = await home(key);
  const b = await home(key);
  const va = await openVault({ home: a.home, env: a.env });
  const tok = await va.admin().createToken({ name: "dev-ci", role: "admin" });
  await va.close();
  const vb = await openVault({ home: b.home, env: b.env });
  await vb.admin().storeSecret({ name: "prod-db", value: CANARY });
  const own = await vb.admin().createToken({ name: "b-ci", role: "admin" });
  await vb.close();
  copyToken(a.db, b.db, tok.id);
  return { a, b, tok, own };
}

test("each vault gets an id of its own at init; two vaults made with one master key differ", async () => {
  const key = randomBytes(32).toString("hex");
  const a = await home(key);
  const b = await home(key);
  const [ia, ib] = [vaultIdOf(a.db), vaultIdOf(b.db)];
  assert.match(ia ?? "", /^[0-9a-f]{32}$/);
  assert.match(ib ?? "", /^[0-9a-f]{32}$/);
  assert.notEqual(ia, ib);
});

test("a version row copied from vault A into vault B (same master key, same place) does not open in B: decrypt_failed, never A's value", async () => {
  const key = randomBytes(32).toString("hex");
  const a = await home(key);
  const b = await home(key);
  const va = await openVault({ home: a.home, env: a.env });
  await va.admin().storeSecret({ name: "prod-db", value: CANARY });
  await va.close();
  const vb = await openVault({ home: b.home, env: b.env });
  await vb.admin().storeSecret({ name: "prod-db", value: "vault-b-own-value" });
  await vb.admin().storeSecret({ name: "other", value: "vault-b-other" });
  await vb.close();

  copyVersion(a.db, b.db, "prod-db");
  const vb2 = await openVault({ home: b.home, env: b.env });
  try {
    const e = await refusalOf(vb2.admin().revealSecret({ scope: "global", name: "prod-db" }));
    assert.equal(e.code, "decrypt_failed", "vault B opened vault A's ciphertext");
    assert.ok(!e.message.includes(CANARY));
    // B's own rows still open.
    const own = await vb2.admin().revealSecret({ scope: "global", name: "other" });
    assert.equal(own.value.unsafeText(), "vault-b-other");
    own.value.wipe();
  } finally {
    await vb2.close();
  }
});

test("an admin token row copied from vault A into vault B (same master key) does not authenticate in B; B's own token does", async () => {
  const { b, tok, own } = await tokenCopied();
  const vb2 = await openVault({ home: b.home, env: b.env });
  try {
    assert.equal(await vb2.authenticateToken(tok.token, "tcp").catch(() => null), null, "vault A's token authenticated in vault B");
    const listed = (await vb2.admin().listTokens()).find((t) => t.id === tok.id);
    assert.equal(listed?.unverified, true, "token list marks the copied row unverified");
    assert.equal((await vb2.authenticateToken(own.token, "tcp"))?.role, "admin", "B's own token works");
  } finally {
    await vb2.close();
  }
});

test("over a real lessor serve: vault A's admin token row copied into vault B's lessor.db reveals nothing of B", { timeout: 120_000 }, async () => {
  const key = randomBytes(32).toString("hex");
  const a = await home(key);
  const b = await home(key);
  writeFileSync(join(b.home, "lessor.toml"), `[server]\ntcp = "127.0.0.1:0"\n`, { mode: 0o600 });
  const made = await runCli(["token", "create", "dev-ci", "--role", "admin", "--json"], { home: a.home, env: { LESSOR_MASTER_KEY: key } });
  assert.equal(made.code, 0, made.stderr);
  const tok = JSON.parse(made.stdout) as { id: string; token: string };
  const vb = await openVault({ home: b.home, env: b.env });
  await vb.admin().storeSecret({ name: "prod-db", value: CANARY });
  await vb.close();
  copyToken(a.db, b.db, tok.id);
  const d = await startServe(b.home, { env: { LESSOR_MASTER_KEY: key } });
  try {
    const env = { LESSOR_ADDR: `127.0.0.1:${d.tcp!.port}`, LESSOR_TOKEN: tok.token };
    const got = await runCli(["secret", "get", "prod-db", "--reveal"], { env });
    assert.notEqual(got.code, 0, "the copied token was accepted");
    assert.ok(!got.stdout.includes(CANARY) && !got.stderr.includes(CANARY), `vault A's token revealed vault B's secret: ${got.stdout}${got.stderr}`);
    assert.match(got.stderr, /unauthenticated|not valid|token/i);
  } finally {
    await d.stop();
  }
});

test("B's id set to A's (or deleted): A's token then authenticates, but B opens none of its own values, its trail breaks — no more than swapping the database", async () => {
  const { a, b, tok, own } = await tokenCopied();
  const idA = vaultIdOf(a.db)!;
  const edits: [string | undefined, (d: Database.Database) => unknown][] = [
    [idA, (d) => d.prepare("UPDATE meta SET value = ? WHERE key = ?").run(idA, VAULT_ID_META)],
    [undefined, (d) => d.prepare("DELETE FROM meta WHERE key = ?").run(VAULT_ID_META)],
  ];
  for (const [left, edit] of edits) {
    write(b.db, edit);
    const vb2 = await openVault({ home: b.home, env: b.env });
    try {
      assert.equal(vaultIdOf(b.db), left, "an opening mints no new id for a vault that holds rows");
      const who = await vb2.authenticateToken(tok.token, "tcp").catch(() => null);
      if (who !== null) {
        // B's own trail no longer verifies (its audit keys are bound to the id too), so the audited
        // reveal is refused for that; the value would not open either.
        const e = await refusalOf(vb2.session(who).revealSecret({ scope: "global", name: "prod-db" }));
        assert.ok(["audit_broken", "decrypt_failed"].includes(e.code), e.code);
        assert.ok(!e.message.includes(CANARY));
      }
      assert.equal((await refusalOf(vb2.admin().storeSecret({ name: "next", value: "x" }))).code, "audit_broken", "B's own trail does not verify under another id");
      assert.equal(await vb2.authenticateToken(own.token, "tcp").catch(() => null), null, "B's own token no longer authenticates either");
    } finally {
      // The failed logins' summary cannot be chained onto a trail that no longer verifies.
      await vb2.close().catch((e: { code?: string }) => assert.equal(e.code, "audit_broken"));
    }
  }
});

test("a vault made before vaults had ids keeps working unbound: its values open, it is not given an id, new values seal as before", async () => {
  const p = join(tempDirUntilExit("lessor-xv-old-"), "lessor.db");
  copyFileSync(fileURLToPath(new URL("./fixtures/audit-v1.db", import.meta.url)), p);
  const open = (): Promise<Vault> => Vault.open({ store: openSqliteStore(p), keys: envKeySource({ LESSOR_MASTER_KEY: V1_KEY })! });
  const v = await open();
  try {
    assert.equal((await v.admin().revealSecret({ scope: "global", name: "tok" })).value.unsafeText(), "v2");
    await v.admin().storeSecret({ name: "after", value: "new-value" });
  } finally {
    await v.close();
  }
  assert.equal(vaultIdOf(p), undefined);
  const again = await open();
  try {
    assert.equal((await again.admin().revealSecret({ scope: "global", name: "after" })).value.unsafeText(), "new-value");
  } finally {
    await again.close();
  }
});

test("vault A's whole audit trail (events and checkpoint) copied over vault B's does not verify in B: the audit keys are bound to the vault's id too", async () => {
  const key = randomBytes(32).toString("hex");
  const a = await home(key);
  const b = await home(key);
  for (const h of [a, b]) {
    const v = await openVault({ home: h.home, env: h.env });
    await v.admin().storeSecret({ name: "prod-db", value: CANARY });
    await v.close();
  }
  const rows = write(a.db, (d) => ({ audit: d.prepare("SELECT * FROM audit ORDER BY seq").all() as Record<string, unknown>[], cp: d.prepare("SELECT * FROM audit_checkpoint").get() as Record<string, unknown> }));
  write(b.db, (d) => {
    d.prepare("DELETE FROM audit").run();
    for (const r of rows.audit) {
      const cols = Object.keys(r);
      d.prepare(`INSERT INTO audit (${cols.join(",")}) VALUES (${cols.map(() => "?").join(",")})`).run(...cols.map((c) => r[c]));
    }
    const cols = Object.keys(rows.cp);
    d.prepare("DELETE FROM audit_checkpoint").run();
    d.prepare(`INSERT INTO audit_checkpoint (${cols.join(",")}) VALUES (${cols.map(() => "?").join(",")})`).run(...cols.map((c) => rows.cp[c]));
  });
  const vb = await openVault({ home: b.home, env: b.env });
  try {
    const v = await vb.admin().auditVerify();
    assert.equal(v.ok, false, "A's trail verified in B");
    assert.equal((await refusalOf(vb.admin().storeSecret({ name: "next", value: "x" }))).code, "audit_broken");
  } finally {
    await vb.close();
  }
  // The same trail still verifies in A.
  const va = await openVault({ home: a.home, env: a.env });
  try {
    assert.equal((await va.admin().auditVerify()).ok, true);
  } finally {
    await va.close();
  }
});
