/**
 * Attack pass on the store at rest (NAME rest): someone who can write lessor.db but holds no key rolls
 * a secret back to the version the owner rotated away (a leaked credential), by editing the `secrets`
 * row's `current_version` (and dropping the newer version row), under a running vault and across a
 * restart. The old version row is the vault's own, sealed to its place, so it opens; the trail records
 * every version the vault stored (`secret_stored`/`secret_rotated` name it).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { parsePolicy } from "../src/vault/policy/parse.js";
import { Vault } from "../src/vault/vault.js";
import { isVaultError } from "../src/base/errors.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { admin as pgAdmin, PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";

const policy = parsePolicy(
  `[[rule]]\nname = "api"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["api"]\ndomains = ["api.example.com"]\nreveal = true\n`,
  "policy.toml",
);
const claude = { id: "test:claude", role: "agent" as const, agent: "claude", transport: "embedded" };
const API = { scope: "global", name: "api" };

/** What a lease+access hands the agent: the value, or the refusal's code. */
async function agentGets(v: Vault): Promise<string> {
  try {
    const r = await v.session(claude).requestLeaseAndAccess({ secret: "api", domains: ["api.example.com"] }, { domain: "api.example.com" });
    return r.value.unsafeText();
  } catch (e) {
    if (isVaultError(e)) return `refused:${e.code}`;
    throw e;
  }
}

/** The attacker: a second connection to lessor.db, no key. Puts the secret back to version `to`, dropping the newer rows. */
function rollBack(dbPath: string, to: number): void {
  const d = new Database(dbPath, { fileMustExist: true });
  try {
    d.pragma("busy_timeout = 5000");
    d.transaction(() => {
      const s = d.prepare("SELECT id FROM secrets WHERE scope = 'global' AND name = 'api'").get() as { id: number };
      d.prepare("DELETE FROM secret_versions WHERE secret = ? AND version > ?").run(s.id, to);
      d.prepare("UPDATE secrets SET current_version = ? WHERE id = ?").run(to, s.id);
    })();
  } finally {
    d.close();
  }
}

test("a database writer rolls a rotated secret back to its leaked version: the running vault refuses it, and after a restart audit verify reports it", async () => {
  const dir = mkdtempSync(join(tmpdir(), "rest-rb-"));
  try {
    const dbPath = join(dir, "lessor.db");
    const keys = { LESSOR_MASTER_KEY: randomBytes(32).toString("hex") };
    const open = () => Vault.open({ store: openSqliteStore(dbPath), keys: envKeySource(keys)!, policy });
    const LEAKED = `leaked-${randomBytes(8).toString("hex")}`;
    const FRESH = `fresh-${randomBytes(8).toString("hex")}`;

    let v = await open();
    try {
      await v.admin().storeSecret({ name: "api", value: LEAKED });
      // The credential leaked: the owner stores a new one (lessor secret set / rotate).
      await v.admin().storeSecret({ name: "api", value: FRESH });
      assert.equal(await agentGets(v), FRESH);

      // Under the running vault (as under lessor serve), the writer puts version 1 back.
      rollBack(dbPath, 1);
      const running = await agentGets(v);
      assert.notEqual(running, LEAKED, "the running vault handed the agent the rotated-away (leaked) value, silently");
    } finally {
      await v.close();
    }

    // Across a restart: the trail names version 2 as stored; the vault or audit verify must notice.
    v = await open();
    try {
      const after = await agentGets(v);
      const verify = await v.admin().auditVerify();
      assert.ok(after !== LEAKED || !verify.ok, `after a restart the vault served the leaked value and audit verify said ok: ${JSON.stringify(verify)}`);
      assert.match(verify.problem ?? "", /secret global\/api names version 1 as current, but the audit trail records version 2 stored since/);
    } finally {
      await v.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the vault's own ways back still work: secret rm and store again, rollback (a new version), reveal of an older version by number; the rolled-back refusal is decrypt_failed, audited, names no value", async () => {
  const dir = mkdtempSync(join(tmpdir(), "rest-rb-"));
  try {
    const dbPath = join(dir, "lessor.db");
    const keys = { LESSOR_MASTER_KEY: randomBytes(32).toString("hex") };
    const open = () => Vault.open({ store: openSqliteStore(dbPath), keys: envKeySource(keys)!, policy });
    const A = `a-${randomBytes(8).toString("hex")}`;
    const B = `b-${randomBytes(8).toString("hex")}`;
    let v = await open();
    try {
      await v.admin().storeSecret({ name: "api", value: A });
      await v.admin().storeSecret({ name: "api", value: B });
      assert.equal(await agentGets(v), B);
      assert.equal((await v.admin().revealSecret(API, 1)).value.unsafeText(), A);
      await v.admin().rollbackSecret(API, 1); // version 3, A's value
      assert.equal(await agentGets(v), A);
      await v.admin().deleteSecret(API);
      await v.admin().storeSecret({ name: "api", value: B }); // version 1 again
      assert.equal(await agentGets(v), B);
      assert.equal((await v.admin().revealSecret(API)).value.unsafeText(), B);
      // None of these is an edit behind the vault's back: the trail still verifies.
      const verify = await v.admin().auditVerify();
      assert.equal(verify.ok, true, verify.problem);
    } finally {
      await v.close();
    }
    v = await open();
    try {
      assert.equal(await agentGets(v), B);
      await v.admin().storeSecret({ name: "api", value: A }); // version 2
      rollBack(dbPath, 1);
      assert.equal(await agentGets(v), "refused:decrypt_failed");
      let reveal: string;
      try {
        reveal = (await v.admin().revealSecret(API)).value.unsafeText();
      } catch (e) {
        assert.ok(isVaultError(e));
        assert.equal(e.code, "decrypt_failed");
        assert.match(e.message, /secret global\/api names version 1 as current, but the audit trail records version 2/);
        assert.ok(!e.message.includes(A) && !e.message.includes(B));
        reveal = "refused";
      }
      assert.equal(reveal, "refused");
      const denials = await v.admin().auditQuery({ types: ["access_denied"] });
      assert.ok(denials.some((e) => e.reason?.startsWith("decrypt_failed: secret global/api names version 1")), JSON.stringify(denials.map((e) => e.reason)));
      // The owner stores it again, as the refusal says: it is served again.
      await v.admin().storeSecret({ name: "api", value: A });
      assert.equal(await agentGets(v), A);
    } finally {
      await v.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("PostgreSQL: a role that may write the vault's schema rolls a rotated secret back: the running vault refuses it, and after a restart audit verify reports it", { skip: PG_SKIP }, async () => {
  const { schema, drop } = await testSchema();
  try {
    const keys = { LESSOR_MASTER_KEY: randomBytes(32).toString("hex") };
    const open = async () => Vault.open({ store: await openPostgresStore({ url: PG_URL!, schema }), keys: envKeySource(keys)!, policy });
    const LEAKED = `leaked-${randomBytes(8).toString("hex")}`;
    const FRESH = `fresh-${randomBytes(8).toString("hex")}`;
    let v = await open();
    try {
      await v.admin().storeSecret({ name: "api", value: LEAKED });
      await v.admin().storeSecret({ name: "api", value: FRESH });
      assert.equal(await agentGets(v), FRESH);
      const id = (await pgAdmin(`SELECT id FROM ${schema}.secrets WHERE scope = 'global' AND name = 'api'`)).rows[0].id;
      await pgAdmin(`DELETE FROM ${schema}.secret_versions WHERE secret = $1 AND version > 1`, [id]);
      await pgAdmin(`UPDATE ${schema}.secrets SET current_version = 1 WHERE id = $1`, [id]);
      // Any secret write by the vault drops its cache of current versions.
      await v.admin().storeSecret({ name: "other", value: "x" });
      await new Promise((r) => setTimeout(r, 1100));
      assert.notEqual(await agentGets(v), LEAKED, "the running vault handed the agent the rotated-away (leaked) value");
    } finally {
      await v.close();
    }
    // Across a restart the process has seen no version yet: audit verify reports the edit.
    v = await open();
    try {
      const after = await agentGets(v);
      const verify = await v.admin().auditVerify();
      assert.ok(after !== LEAKED || !verify.ok, `after a restart the vault served the leaked value and audit verify said ok: ${JSON.stringify(verify)}`);
      assert.match(verify.problem ?? "", /secret global\/api names version 1 as current, but the audit trail records version 2 stored since/);
    } finally {
      await v.close();
    }
  } finally {
    await drop();
  }
});
