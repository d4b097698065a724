/**
 * Review of today's fixes (NAME review): regressions the fixes opened in legitimate use.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { initHome } from "../src/config/open-vault.js";
import { TEST_ARGON2_PARAMS } from "../src/crypto/keys/passphrase.js";
import { cliHome, runCli, seedHome } from "./cli-harness.js";
import { tempDirUntilExit } from "./helpers.js";

const NODE = process.execPath;

test("review: `lessor init --passphrase` on a home already set up (a vault made before the 12-character minimum) still says nothing changed, as before 004595c", async () => {
  const home = join(tempDirUntilExit("lessor-rev-"), "home");
  const pass = "tenchars!!"; // 10 characters: accepted when this vault was made
  await initHome({ home, env: { LESSOR_HOME: home }, keySource: "passphrase", passphrase: pass, argon2: TEST_ARGON2_PARAMS });
  assert.ok(existsSync(join(home, "keystore.json")));
  // An idempotent setup script (CI, a dotfiles bootstrap) runs init on every start, then uses the vault.
  const again = await runCli(["init", "--passphrase"], { home, env: { LESSOR_PASSPHRASE: pass } });
  assert.equal(again.code, 0, `init on an existing passphrase home now fails: ${again.stderr}`);
  assert.match(again.stdout, /already set up; nothing changed/);
  // The vault itself opens with that passphrase, as the commit promises.
  const list = await runCli(["secret", "list"], { home, env: { LESSOR_PASSPHRASE: pass } });
  assert.equal(list.code, 0, list.stderr);
});

test("review: the JSON-member mask of `lessor run` rewrites non-secret public identifiers (project id, googleapis.com, token_uri) in a command's stdout", async () => {
  const home = await cliHome();
  const key = `-----BEGIN PRIVATE KEY-----\nMII${randomBytes(24).toString("base64")}\n-----END PRIVATE KEY-----\n`;
  // The shape of every GCP service account key.
  const sa = {
    type: "service_account",
    project_id: "acme-prod-4711",
    private_key_id: randomBytes(20).toString("hex"),
    private_key: key,
    client_email: "deployer@acme-prod-4711.iam.gserviceaccount.com",
    client_id: "104955395345612345678",
    auth_uri: "https://accounts.google.com/o/oauth2/auth",
    token_uri: "https://oauth2.googleapis.com/token",
    universe_domain: "googleapis.com",
  };
  await seedHome(home, `[[rule]]\nname = "t"\neffect = "allow"\nagents = ["tester"]\nsecrets = ["*"]\nany_domain = true\n`, [{ name: "sa", value: JSON.stringify(sa) }]);
  // What a deploy tool prints to stdout for the next program of a pipeline to read: no secret in it.
  const printed = JSON.stringify({ project: "acme-prod-4711", bucket: "https://storage.googleapis.com/acme-prod-4711-assets", kind: "service_account" });
  const r = await runCli(["run", "--agent", "tester", "--no-sandbox", "--", NODE, "-e", `console.log(${JSON.stringify(printed)})`], {
    home,
    env: { GOOGLE_CREDENTIALS: "lessor://global/sa" },
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), printed, "stdout holding no secret was rewritten by the mask");
});

test("review: `audit verify` while another process removes and stores a secret again does not report a database edit (version floor, 8c8b799)", async () => {
  const { Vault } = await import("../src/vault/vault.js");
  const { openSqliteStore } = await import("../src/store/sqlite/sqlite-store.js");
  const { envKeySource } = await import("../src/crypto/keys/env.js");
  const { parsePolicy } = await import("../src/vault/policy/parse.js");
  const dbPath = join(tempDirUntilExit("lessor-rev-"), "lessor.db");
  const keys = { LESSOR_MASTER_KEY: randomBytes(32).toString("hex") };
  const policy = parsePolicy(`[[rule]]\nname = "x"\neffect = "allow"\nagents = ["a"]\nsecrets = ["api"]\ndomains = ["x.example"]\n`, "policy.toml");
  // The admin's process (the daemon, or the CLI): writes as usual.
  const writer = await Vault.open({ store: openSqliteStore(dbPath), keys: envKeySource(keys)!, policy });
  // The process running audit verify (a monitoring job); its store lets the writer in at one point of the verify.
  let during: (() => Promise<void>) | null = null;
  const real = openSqliteStore(dbPath);
  const store = new Proxy(real, {
    get(t, k, r) {
      const v = Reflect.get(t, k, r) as unknown;
      if (k === "listSecrets" && typeof v === "function")
        return async (...a: unknown[]) => {
          const f = during;
          during = null;
          if (f) await f();
          return (v as (...x: unknown[]) => unknown).apply(t, a);
        };
      return typeof v === "function" ? (v as (...x: unknown[]) => unknown).bind(t) : v;
    },
  });
  const verifier = await Vault.open({ store, keys: envKeySource(keys)!, policy });
  try {
    await writer.admin().storeSecret({ name: "api", value: "first-value-aaaa" });
    await writer.admin().storeSecret({ name: "api", value: "second-value-bbbb" }); // version 2
    assert.equal((await verifier.admin().auditVerify()).ok, true);
    // The owner replaces the secret (secret rm, then secret set: version 1 again) while the verify runs.
    during = async () => {
      await writer.admin().deleteSecret({ scope: "global", name: "api" });
      await writer.admin().storeSecret({ name: "api", value: "third-value-cccc" });
    };
    const r = await verifier.admin().auditVerify();
    assert.equal(r.ok, true, `audit verify reported a database edit for a secret rm + set made while it ran: ${r.problem}`);
    // And after it, with nothing running meanwhile, it verifies (the flows are legitimate).
    assert.equal((await verifier.admin().auditVerify()).ok, true);
  } finally {
    await verifier.close();
    await writer.close();
  }
});
