import assert from "node:assert/strict";
import { describe, test } from "node:test";
import Database from "better-sqlite3";
import { agent, codeOf, makeVault } from "./helpers.js";

describe("secrets", () => {
  test("every write adds a version; history, rollback and reveal see the right values", async () => {
    const { vault } = await makeVault();
    const admin = vault.admin();
    const m1 = await admin.storeSecret({ name: "api", value: "one", kind: "api_key", tags: ["team:a"], description: "d" });
    assert.equal(m1.currentVersion, 1);
    const m2 = await admin.storeSecret({ name: "api", value: "two" });
    assert.equal(m2.currentVersion, 2);
    assert.equal(m2.kind, "api_key", "kind is kept when not given");
    const m3 = await admin.rotateSecret({ scope: "global", name: "api" }, Buffer.from([0, 255, 10, 13]));
    assert.equal(m3.currentVersion, 3);
    assert.deepEqual((await admin.secretHistory({ scope: "global", name: "api" })).map((v) => v.version), [1, 2, 3]);
    const r3 = await admin.revealSecret({ scope: "global", name: "api" });
    assert.deepEqual([...r3.value.expose()], [0, 255, 10, 13], "binary values round-trip");
    const r1 = await admin.revealSecret({ scope: "global", name: "api" }, 1);
    assert.equal(r1.value.unsafeText(), "one");
    const m4 = await admin.rollbackSecret({ scope: "global", name: "api" }, 1);
    assert.equal(m4.currentVersion, 4);
    assert.equal((await admin.revealSecret({ scope: "global", name: "api" })).value.unsafeText(), "one");
    assert.equal(await codeOf(admin.storeSecret({ name: "api", value: "x", mode: "create" })), "secret_exists");
    assert.equal(await codeOf(admin.rotateSecret({ scope: "global", name: "nope" }, "x")), "secret_not_found");
  });

  test("scopes, tags and list filters; list never carries values", async () => {
    const { vault } = await makeVault();
    const admin = vault.admin();
    await admin.storeSecret({ scope: "workspace:acme", name: "gh", value: "v1", tags: ["ci"] });
    await admin.storeSecret({ scope: "env:prod", name: "db", value: "v2" });
    await admin.storeSecret({ name: "gh-2", value: "v3", tags: ["ci", "x"] });
    assert.deepEqual((await admin.listSecrets()).map((s) => `${s.scope}/${s.name}`), ["env:prod/db", "global/gh-2", "workspace:acme/gh"]);
    assert.deepEqual((await admin.listSecrets({ scope: "env:prod" })).map((s) => s.name), ["db"]);
    assert.deepEqual((await admin.listSecrets({ tag: "ci" })).map((s) => s.name), ["gh-2", "gh"]);
    assert.ok(!JSON.stringify(await admin.listSecrets()).match(/v[123]"/));
  });

  test("old versions are pruned past keep_versions", async () => {
    const { vault } = await makeVault({ limits: { keepVersions: 3 } });
    const admin = vault.admin();
    for (let i = 1; i <= 6; i++) await admin.storeSecret({ name: "p", value: `v${i}` });
    assert.deepEqual((await admin.secretHistory({ scope: "global", name: "p" })).map((v) => v.version), [4, 5, 6]);
    assert.equal(await codeOf(admin.revealSecret({ scope: "global", name: "p" }, 2)), "secret_not_found");
  });

  test("bad input gets invalid_request or value_too_large naming the problem", async () => {
    const { vault } = await makeVault({ limits: { maxSecretBytes: 100 } });
    const admin = vault.admin();
    const big = admin.storeSecret({ name: "big", value: Buffer.alloc(101) });
    await assert.rejects(big, (e: Error & { code: string }) => e.code === "value_too_large" && /101 bytes; the limit is 100/.test(e.message));
    await assert.rejects(admin.storeSecret({ name: "../etc", value: "x" }), /secret name "..\/etc" is not valid/);
    await assert.rejects(admin.storeSecret({ scope: "Bad Scope", name: "x", value: "x" }), /scope "Bad Scope" is not valid/);
    await assert.rejects(admin.storeSecret({ name: "x", value: "x", kind: "password" as never }), /kind "password" is not known/);
    await assert.rejects(admin.storeSecret({ name: "x", value: "x", tags: ["has space"] }), /tags must be/);
    assert.equal((await admin.listSecrets()).length, 0, "nothing was stored by rejected writes");
  });

  test("delete removes every version and revokes the secret's leases", async () => {
    const { vault } = await makeVault({ policy: `[[rule]]\nname="r"\neffect="allow"\nagents=["a"]\nsecrets=["s"]\ndomains=["x.example.com"]\n` });
    const admin = vault.admin();
    await admin.storeSecret({ name: "s", value: "v" });
    const a = vault.session(agent("a"));
    const lease = await a.requestLease({ secret: "s" });
    assert.deepEqual(await admin.deleteSecret({ scope: "global", name: "s" }), { revokedLeases: 1 });
    assert.equal(await codeOf(a.accessSecret(lease.id, { domain: "x.example.com" })), "lease_revoked");
    assert.equal(await codeOf(admin.revealSecret({ scope: "global", name: "s" })), "secret_not_found");
  });

  for (const cipher of ["aes-256-gcm", "xchacha20-poly1305"] as const) {
    test(`a ciphertext row moved onto another secret's name or version fails to open (${cipher})`, async () => {
      const { vault, dbPath } = await makeVault({ cipher });
      const admin = vault.admin();
      await admin.storeSecret({ name: "victim", value: "victim-value" });
      await admin.storeSecret({ name: "attacker", value: "attacker-value" });
      await admin.storeSecret({ name: "attacker", value: "attacker-value-2" });
      const db = new Database(dbPath!);
      // Copy the victim's sealed value and DEK onto the attacker's v2 row.
      const ids = db.prepare("SELECT id, name FROM secrets").all() as { id: number; name: string }[];
      const victimId = ids.find((r) => r.name === "victim")!.id;
      const attackerId = ids.find((r) => r.name === "attacker")!.id;
      const secretCol = "secret";
      db.prepare(
        `UPDATE secret_versions SET wrapped_dek = (SELECT wrapped_dek FROM secret_versions WHERE ${secretCol} = ? AND version = 1),
                                    ciphertext = (SELECT ciphertext FROM secret_versions WHERE ${secretCol} = ? AND version = 1)
          WHERE ${secretCol} = ? AND version = 2`,
      ).run(victimId, victimId, attackerId);
      // And the attacker's v1 onto its own v2 (same name, other version).
      db.close();
      const err = await codeOf(admin.revealSecret({ scope: "global", name: "attacker" }));
      assert.equal(err, "decrypt_failed");
      const db2 = new Database(dbPath!);
      db2.prepare(
        `UPDATE secret_versions SET wrapped_dek = (SELECT wrapped_dek FROM secret_versions WHERE ${secretCol} = ? AND version = 1),
                                    ciphertext = (SELECT ciphertext FROM secret_versions WHERE ${secretCol} = ? AND version = 1)
          WHERE ${secretCol} = ? AND version = 2`,
      ).run(attackerId, attackerId, attackerId);
      db2.close();
      assert.equal(await codeOf(admin.revealSecret({ scope: "global", name: "attacker" })), "decrypt_failed");
      // The untouched rows still open.
      assert.equal((await admin.revealSecret({ scope: "global", name: "victim" })).value.unsafeText(), "victim-value");
      assert.equal((await admin.revealSecret({ scope: "global", name: "attacker" }, 1)).value.unsafeText(), "attacker-value");
    });
  }
});
