/**
 * Attacks on secret references (lessor run / inject), rotation hooks and the heartbeat dead-man switch.
 * Real SQLite files, real child processes (hooks, `lessor run` in bubblewrap with curl), a real HTTPS
 * upstream on loopback reached only through lessor's injecting proxy (`[proxy] hosts` / `allow`).
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import type { IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { initHome, openVault } from "../src/config/open-vault.js";
import { LocalCa } from "../src/proxy/ca.js";
import { HEARTBEAT_META } from "../src/vault/heartbeat.js";
import type { Vault } from "../src/vault/vault.js";
import { BIN } from "./cli-harness.js";
import { makeHome } from "./daemon-harness.js";
import { agent, clock, grant, makeVault, refusalOf } from "./helpers.js";

const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"]).status === 0;
const HAVE_CURL = spawnSync("curl", ["--version"]).status === 0;
const RUN_SKIP = !HAVE_BWRAP ? "bubblewrap cannot make a sandbox here" : !HAVE_CURL ? "curl is not installed" : false;

const root = mkdtempSync(join(tmpdir(), "lessor-atk-refs-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------------
// 1. A `#field` / `/field` reference under lessor run's injecting proxy.
// ---------------------------------------------------------------------------------------------------

/** The field the agent was meant to carry (shaped like a GitHub token). */
const FIELD_VALUE = "ghp_" + randomBytes(18).toString("hex");
/** Another field of the same JSON secret: never referenced, so it must never leave the vault. */
const SIBLING_CANARY = "CANARY-client-secret-" + randomBytes(8).toString("hex");

describe("a field reference under lessor run's injecting proxy (real bwrap, curl, HTTPS upstream)", { skip: RUN_SKIP }, () => {
  const HOME = join(root, "run-home");
  const PROJECT = join(root, "run-project");
  const LESSOR_HOME = join(HOME, ".lessor");
  let server: https.Server;
  let port = 0;
  const seen: { url: string; headers: IncomingHttpHeaders }[] = [];

  before(async () => {
    mkdirSync(PROJECT, { recursive: true });
    mkdirSync(HOME, { recursive: true });
    const ca = LocalCa.create({ permitted: ["api.test.example"] });
    writeFileSync(join(root, "upstream-ca.pem"), ca.certPem);
    server = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, (req, res) => {
      seen.push({ url: req.url ?? "", headers: req.headers });
      req.resume();
      req.on("end", () => {
        res.writeHead(200, { "content-type": "text/plain" });
        res.end("ok\n");
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as AddressInfo).port;
    await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    writeFileSync(
      join(LESSOR_HOME, "lessor.toml"),
      readFileSync(join(LESSOR_HOME, "lessor.toml"), "utf8") +
        `\n[proxy]\nports = [${port}]\nallow = ["127.0.0.1"]\nhosts = { "api.test.example" = "127.0.0.1" }\nupstream_ca = "${join(root, "upstream-ca.pem")}"\n`,
      { mode: 0o600 },
    );
    writeFileSync(join(LESSOR_HOME, "policy.toml"), grant("creds", ["claude"], ["gh-creds"], ["api.test.example"]), { mode: 0o600 });
    const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    try {
      await vault.admin().storeSecret({ name: "gh-creds", value: JSON.stringify({ token: FIELD_VALUE, client_secret: SIBLING_CANARY }) });
    } finally {
      await vault.close();
    }
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  test("GITHUB_TOKEN='$S:gh-creds/token' sends the upstream only the token field, never the secret's other fields", { timeout: 60_000 }, async () => {
    const script = `curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $GITHUB_TOKEN" https://api.test.example:${port}/user`;
    const child = spawn(process.execPath, ["--", BIN, "run", "--agent", "claude", "--", "/bin/sh", "-c", script], {
      cwd: PROJECT,
      env: { PATH: "/usr/bin:/bin", HOME, LESSOR_HOME, NO_COLOR: "1", GITHUB_TOKEN: "$S:gh-creds/token" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((r) => child.on("close", r));
    assert.equal(code, 0, `lessor run failed: ${out} ${err}`);
    assert.ok(!(out + err).includes(SIBLING_CANARY) && !(out + err).includes(FIELD_VALUE), "a value reached the agent's output");
    assert.equal(seen.length, 1, `the upstream saw ${seen.length} requests`);
    const auth = String(seen[0]!.headers.authorization ?? "");
    assert.ok(
      !auth.includes(SIBLING_CANARY),
      "docs/references.md: a field reference 'picks one value out of a secret whose value is a JSON object', but the proxy sent the WHOLE JSON secret (client_secret included) to the upstream",
    );
    assert.equal(auth, `Bearer ${FIELD_VALUE}`, "the upstream must receive exactly the referenced field");
  });
});

// ---------------------------------------------------------------------------------------------------
// 2. Rotation hooks: the secret deleted and stored again while its hook runs.
// ---------------------------------------------------------------------------------------------------

const HOOK_OLD = "CANARY-hook-old-" + randomBytes(6).toString("hex");
const HOOK_NEW = "CANARY-hook-new-" + randomBytes(6).toString("hex");
const RECREATED = "CANARY-recreated-" + randomBytes(6).toString("hex");

const vaults: Vault[] = [];
after(async () => {
  for (const v of vaults) await v.close().catch(() => {});
});

/** A home whose [[rotate]] entry for "db" runs `sh -c SCRIPT`, opened in this process with db = HOOK_OLD. */
async function hookVault(script: string, extra = ""): Promise<Vault> {
  const config = `[[rotate]]\nsecret = "db"\ncommand = ${JSON.stringify(["/bin/sh", "-c", script])}\ntimeout = "10s"\n${extra}\n`;
  const home = await makeHome({ config, policy: grant("db", ["claude"], ["db"], ["db.example.com"]) });
  const v = await openVault({ home, env: { LESSOR_HOME: home, PATH: "/usr/bin:/bin" } });
  vaults.push(v);
  await v.admin().storeSecret({ name: "db", value: HOOK_OLD });
  return v;
}

describe("rotation hooks", () => {
  test("a secret deleted and stored again while its rotation hook runs keeps the new secret's value and leases: the hook's value (made for the deleted one) is discarded", async () => {
    const dir = mkdtempSync(join(root, "hook-"));
    const v = await hookVault(`touch ${dir}/started; sleep 1; printf '%s\\n' ${HOOK_NEW}`);
    const running = v.admin().rotateSecretByHook({ scope: "global", name: "db" }).then(
      (r) => ({ ok: true as const, version: r.version }),
      (e: { code?: string }) => ({ ok: false as const, code: e.code }),
    );
    for (let i = 0; i < 100; i++) {
      try {
        readFileSync(join(dir, "started"));
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    // The admin retires the secret (its leases revoked), then stores a new, unrelated one under the name.
    await v.admin().deleteSecret({ scope: "global", name: "db" });
    const lease = await v.session(agent("claude")).requestLease({ secret: "db", domains: ["db.example.com"] }).catch(() => null);
    await v.admin().storeSecret({ name: "db", value: RECREATED });
    const fresh = await v.session(agent("claude")).requestLease({ secret: "db", domains: ["db.example.com"] });
    const r = await running;
    const now = await v.admin().revealSecret({ scope: "global", name: "db" });
    const current = now.value.expose().toString();
    now.value.wipe();
    const rows = (await v.admin().auditQuery({ types: ["secret_rotated"] })).filter((x) => x.secret === "global/db");
    assert.equal(lease, null);
    // docs/cli/secret.md: "When the hook succeeded but what it made cannot be stored (the secret was deleted
    // while it ran …) … audited as hook_discarded: secret_deleted"; docs/security.md: "the secret deleted
    // while its hook runs … nothing is stored".
    assert.equal(
      current,
      RECREATED,
      `the secret was deleted while its hook ran, yet the hook's value was stored over the re-created secret (result ${JSON.stringify(r)}; audit ${JSON.stringify(rows.map((x) => [x.outcome, x.reason, x.detail]))})`,
    );
    assert.equal((await refusalOf(v.session(agent("claude")).accessSecret(fresh.id, { domain: "db.example.com" }))).code !== "lease_revoked", true, "the re-created secret's fresh lease was revoked by the old secret's hook");
    // And the trail shows the issuer changed for a secret the vault no longer has.
    assert.deepEqual([r.ok, r.ok ? null : r.code], [false, "secret_not_found"]);
    assert.deepEqual(rows.map((x) => [x.outcome, x.reason]), [["error", "hook_discarded: secret_deleted"]]);
  });
});

// ---------------------------------------------------------------------------------------------------
// 3. The dead-man switch: a stored heartbeat record lessor cannot read.
// ---------------------------------------------------------------------------------------------------

describe("the dead-man switch", () => {
  test("an empty heartbeat record (edited in lessor.db) counts as long past due, not as 'never armed': the dead-man switch fires", async () => {
    const c = clock();
    const t = await makeVault({ policy: grant("g", ["claude"], ["tok"], ["api.example.com"]), now: c.now, limits: { heartbeatMs: 60_000 } });
    await t.vault.admin().storeSecret({ name: "tok", value: "CANARY-hb-" + randomBytes(6).toString("hex") });
    // A writer of the database (the record is documented as unsigned) blanks the row in place.
    await t.store.transaction(async (tx) => tx.setMeta(HEARTBEAT_META, ""));
    c.advance(10 * 60_000); // ten periods with no heartbeat
    await t.vault.checkKillswitch(); // the daemon's once-a-second check
    const got = await t.vault.session(agent("claude")).requestLease({ secret: "tok" }).then(
      () => "granted",
      (e: { code?: string }) => e.code ?? "error",
    );
    const s = await t.vault.admin().describe();
    // docs/cli/leases.md: "A stored record lessor cannot read … counts as long past due: the switch fires."
    assert.equal(
      s.killswitch.engaged,
      true,
      `a blank heartbeat record disarmed the dead-man switch: 10 periods without a heartbeat, grant ${got}, status ${JSON.stringify(s.heartbeat)}`,
    );
    assert.notEqual(got, "granted");
  });
});
