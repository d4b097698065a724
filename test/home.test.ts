import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { initHome, openVault } from "../src/config/open-vault.js";
import { parseConfig } from "../src/config/config.js";
import { TEST_ARGON2_PARAMS } from "../src/crypto/keys/passphrase.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { Vault } from "../src/vault/vault.js";
import { codeOf, hexKey, tempDir } from "./helpers.js";

const env = (home: string, extra: Record<string, string> = {}) => ({ LESSOR_HOME: home, ...extra });

describe("home, config and key sources", () => {
  test("init makes a private home with config, policy, key file and database", async () => {
    const home = join(tempDir(), "h");
    const r = await initHome({ home, env: env(home) });
    assert.equal(statSync(home).mode & 0o777, 0o700);
    for (const f of ["lessor.toml", "policy.toml", "master.key", "lessor.db"]) {
      assert.ok(r.created.includes(join(home, f)), f);
      assert.equal(statSync(join(home, f)).mode & 0o077, 0, `${f} is private`);
    }
    const again = await initHome({ home, env: env(home) });
    assert.deepEqual(again.created, [], "a second init keeps everything");
    const v = await openVault({ home, env: env(home) });
    await v.admin().storeSecret({ name: "x", value: "y" });
    await v.close();
  });

  test("a key file readable by others is refused with the fix", async () => {
    const home = join(tempDir(), "h");
    await initHome({ home, env: env(home) });
    chmodSync(join(home, "master.key"), 0o644);
    await assert.rejects(openVault({ home, env: env(home) }), (e: Error & { code: string }) => e.code === "insecure_permissions" && /chmod 600/.test(e.message));
    chmodSync(join(home, "master.key"), 0o600);
    chmodSync(home, 0o755);
    await assert.rejects(openVault({ home, env: env(home) }), (e: Error & { code: string }) => e.code === "insecure_permissions" && /chmod 700/.test(e.message));
  });

  test("a wrong master key is refused at open, before any request", async () => {
    const dir = tempDir();
    const db = join(dir, "db");
    const right = hexKey();
    const v = await Vault.open({ store: openSqliteStore(db), keys: envKeySource({ LESSOR_MASTER_KEY: right })! });
    await v.admin().storeSecret({ name: "x", value: "y" });
    await v.close();
    const wrong = Vault.open({ store: openSqliteStore(db), keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })! });
    await assert.rejects(wrong, (e: Error & { code: string }) => e.code === "key_unavailable" && /does not match this vault/.test(e.message) && !e.message.includes(right));
  });

  test("env key rotation: new key current, old key previous, then the old one can go", async () => {
    const dir = tempDir();
    const db = join(dir, "db");
    const oldKey = hexKey();
    const newKey = hexKey();
    const v1 = await Vault.open({ store: openSqliteStore(db), keys: envKeySource({ LESSOR_MASTER_KEY: oldKey })! });
    for (let i = 0; i < 30; i++) await v1.admin().storeSecret({ name: `s${i}`, value: `v${i}` });
    await v1.close();
    const v2 = await Vault.open({ store: openSqliteStore(db), keys: envKeySource({ LESSOR_MASTER_KEY: newKey, LESSOR_MASTER_KEY_PREVIOUS: oldKey })! });
    const r = await v2.admin().rotateMasterKey();
    assert.equal(r.rewrapped, 30);
    assert.equal(r.retired, false, "env keys are retired by the operator");
    await v2.close();
    const v3 = await Vault.open({ store: openSqliteStore(db), keys: envKeySource({ LESSOR_MASTER_KEY: newKey })! });
    assert.equal((await v3.admin().revealSecret({ scope: "global", name: "s7" })).value.unsafeText(), "v7");
    assert.ok((await v3.admin().auditVerify()).ok);
    await v3.close();
  });

  test("a passphrase-sealed home opens with the passphrase and not without", async () => {
    const home = join(tempDir(), "h");
    await initHome({ home, env: env(home), keySource: "passphrase", passphrase: "correct horse", argon2: TEST_ARGON2_PARAMS });
    const v = await openVault({ home, env: env(home, { LESSOR_PASSPHRASE: "correct horse" }) });
    await v.admin().storeSecret({ name: "x", value: "y" });
    const r = await v.admin().rotateMasterKey();
    assert.equal(r.retired, true);
    await v.close();
    assert.equal(await codeOf(openVault({ home, env: env(home, { LESSOR_PASSPHRASE: "wrong" }) })), "key_unavailable");
    assert.equal(await codeOf(openVault({ home, env: env(home) })), "key_unavailable");
    const v2 = await openVault({ home, env: env(home), getPassphrase: async () => "correct horse" });
    assert.equal((await v2.admin().revealSecret({ scope: "global", name: "x" })).value.unsafeText(), "y");
    await v2.close();
  });

  test("a process still on the old master key loads the rotated one from its key source before it writes; without it, it is refused", async () => {
    const home = join(tempDir(), "h");
    await initHome({ home, env: env(home) });
    const a = await openVault({ home, env: env(home) });
    const b = await openVault({ home, env: env(home) });
    // e holds the same key, from the environment: a source that cannot change under a running process.
    const keyHex = (JSON.parse(readFileSync(join(home, "master.key"), "utf8")) as { keys: string[] }).keys[0]!;
    const e = await openVault({ home, env: { ...env(home), LESSOR_MASTER_KEY: keyHex } });
    await b.admin().storeSecret({ name: "x", value: "1" });
    const r = await a.admin().rotateMasterKey();
    // b read the key file again (src/vault/key-reload.ts): its writes and audited reads are under the new key.
    await b.admin().storeSecret({ name: "y", value: "2" });
    assert.equal((await b.admin().revealSecret({ scope: "global", name: "x" })).value.unsafeText(), "1");
    assert.equal((await b.admin().describe()).keyId, r.to);
    // e cannot load it: refused, saying how, and nothing is sealed or MACed under the retired key.
    await assert.rejects(e.admin().storeSecret({ name: "z", value: "3" }), (err: Error & { code?: string }) => {
      assert.equal(err.code, "key_unavailable");
      assert.match(err.message, new RegExp(`master key ${r.to} is in use`));
      assert.match(err.message, /LESSOR_MASTER_KEY/);
      return true;
    });
    assert.equal(await codeOf(e.admin().revealSecret({ scope: "global", name: "x" })), "key_unavailable");
    await e.close();
    await b.close();
    await a.close();
    const c = await openVault({ home, env: env(home) });
    assert.equal((await c.admin().revealSecret({ scope: "global", name: "y" })).value.unsafeText(), "2");
    assert.equal(await codeOf(c.admin().revealSecret({ scope: "global", name: "z" })), "secret_not_found");
    assert.ok((await c.admin().auditVerify()).ok);
    await c.close();
  });

  test("config errors name the file, the table and the field", () => {
    assert.throws(() => parseConfig("[vault]\ncipher = 'rot13'", "lessor.toml"), /lessor.toml: \[vault\] cipher: expected one of aes-256-gcm, xchacha20-poly1305, got "rot13"/);
    assert.throws(() => parseConfig("[vault]\nmax_secret_bytes = -1", "lessor.toml"), /\[vault\] max_secret_bytes: expected a whole number/);
    assert.throws(() => parseConfig("[keys]\ncommand = 'op read x'", "c.toml"), /c.toml: \[keys\] command: expected a list of strings/);
    assert.throws(() => parseConfig("[vault]\nciphr = 'x'", "c.toml"), /unknown field "ciphr"/);
    assert.throws(() => parseConfig("[vault\n", "c.toml"), /c.toml: line 1, column \d+: not valid TOML/);
    const c = parseConfig("[vault]\ncipher = 'xchacha20-poly1305'\nkeep_versions = 3\n[audit]\njsonl = 'a.jsonl'", "c.toml");
    assert.equal(c.cipher, "xchacha20-poly1305");
    assert.equal(c.limits.keepVersions, 3);
    assert.equal(c.auditJsonl, "a.jsonl");
    assert.throws(() => parseConfig("[vault]\napproval_wait = '25h'", "c.toml"), /\[vault\] approval_wait: expected a duration from "1s" to "24h", got "25h"/);
    assert.throws(() => parseConfig("[vault]\napproval_use = 600", "c.toml"), /\[vault\] approval_use: expected a duration/);
    const d = parseConfig("[vault]\napproval_wait = '2m'\napproval_use = '30s'", "c.toml");
    assert.deepEqual([d.limits.approvalWaitMs, d.limits.approvalUseMs], [120_000, 30_000]);
    assert.deepEqual([c.limits.approvalWaitMs, c.limits.approvalUseMs], [600_000, 600_000], "10 minutes each by default");
  });

  test("[server] and [[identity]] parse strictly", () => {
    const c = parseConfig(
      '[server]\nsocket = "/run/lessor/l.sock"\nsocket_mode = "0666"\ntcp = "[::1]:7391"\nmax_in_flight = 8\nidle_timeout = "1m"\n' +
        '[[identity]]\nuid = 1001\nrole = "agent"\nagent = "claude"\n[[identity]]\nuid = 1002\nrole = "orchestrator"\nact_for = ["claude-*"]\n',
      "c.toml",
    );
    assert.equal(c.server.socketMode, 0o666);
    assert.deepEqual(c.server.tcp, { host: "::1", port: 7391 });
    assert.equal(c.server.maxInFlight, 8);
    assert.equal(c.server.idleTimeoutMs, 60_000);
    assert.deepEqual(c.identities, [{ uid: 1001, role: "agent", agent: "claude" }, { uid: 1002, role: "orchestrator", actFor: ["claude-*"] }]);
    assert.throws(() => parseConfig('[server]\ntcp = "127.0.0.1"', "c.toml"), /\[server\] tcp: expected "host:port"/);
    assert.throws(() => parseConfig('[server]\nsocket_mode = 600', "c.toml"), /socket_mode: expected an octal mode as a string/);
    assert.throws(() => parseConfig('[[identity]]\nuid = 5\nrole = "agent"', "c.toml"), /identity 1: agent: an agent identity needs agent/);
    assert.throws(() => parseConfig('[[identity]]\nuid = 5\nrole = "admin"\n[[identity]]\nuid = 5\nrole = "admin"', "c.toml"), /uid 5 is listed twice/);
    assert.throws(() => parseConfig('[identity]\nuid = 5', "c.toml"), /double brackets/);
  });

  test("[vault] store chooses the store: sqlite by default, memory leaves no file, postgres needs a URL", async () => {
    assert.equal(parseConfig("", "c.toml").store, "sqlite");
    assert.equal(parseConfig("[vault]\nstore = 'memory'", "c.toml").store, "memory");
    assert.throws(() => parseConfig("[vault]\nstore = 'mysql'", "c.toml"), /c.toml: \[vault\] store: expected one of sqlite, memory, postgres, got "mysql"/);
    const home = join(tempDir(), "h");
    mkdirSync(home, { mode: 0o700 });
    writeFileSync(join(home, "lessor.toml"), "[vault]\nstore = 'memory'\n", { mode: 0o600 });
    const r = await initHome({ home, env: env(home) });
    assert.ok(!r.created.includes(join(home, "lessor.db")), "a memory store makes no database file");
    assert.ok(!existsSync(join(home, "lessor.db")));
    const v = await openVault({ home, env: env(home) });
    assert.equal((await v.admin().describe()).store, "memory");
    await v.admin().storeSecret({ name: "x", value: "y" });
    await v.close();
    const again = await openVault({ home, env: env(home) });
    assert.equal((await again.admin().listSecrets({})).length, 0, "nothing outlives the process");
    await again.close();
    writeFileSync(join(home, "lessor.toml"), "[vault]\nstore = 'postgres'\n", { mode: 0o600 });
    await assert.rejects(openVault({ home, env: env(home) }), (e: Error & { code: string }) => e.code === "config_invalid" && /needs the database's URL: set LESSOR_DATABASE_URL or \[vault\] database_url/.test(e.message));
  });

  test("the configured JSONL audit file and cipher are used", async () => {
    const home = join(tempDir(), "h");
    await initHome({ home, env: env(home) });
    writeFileSync(join(home, "lessor.toml"), "[vault]\ncipher = 'xchacha20-poly1305'\n[audit]\njsonl = 'audit.jsonl'\n", { mode: 0o600 });
    const v = await openVault({ home, env: env(home) });
    const meta = await v.admin().storeSecret({ name: "x", value: "y" });
    assert.equal(meta.versions[0]!.alg, "xchacha20-poly1305");
    await v.close();
    const line = JSON.parse(readFileSync(join(home, "audit.jsonl"), "utf8").trim()) as { type: string };
    assert.equal(line.type, "secret_stored");
    assert.equal(statSync(join(home, "audit.jsonl")).mode & 0o077, 0);
  });

  test("a broken policy file does not stop the open: the vault denies every grant and status says why", async () => {
    const home = join(tempDir(), "h");
    await initHome({ home, env: env(home) });
    writeFileSync(join(home, "policy.toml"), '[[rule]]\nname = "r"\neffect = "allow"\nagents = ["a"]\nsecrets = ["s"]\ndomains = ["*.com"]\n');
    const v = await openVault({ home, env: env(home) });
    try {
      const st = await v.admin().describe();
      assert.equal(st.policy.state, "broken");
      assert.match(st.policy.error ?? "", /policy\.toml: rule 1/);
      await v.admin().storeSecret({ name: "s", value: "v" });
      await assert.rejects(
        v.admin().requestLease({ agent: "a", secret: "s", domains: ["x.com"] }),
        (e: Error & { code: string }) => e.code === "access_denied" && /policy is invalid/.test(e.message) && /policy\.toml: rule 1/.test(e.message) && /lessor policy reload/.test(e.message),
      );
    } finally {
      await v.close();
    }
  });
});
