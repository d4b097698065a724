/**
 * Issue 12 item 8, through a real `lessor serve` child process: a broken policy never blocks the brakes,
 * SIGHUP reloads the policy, and the killswitch is a lockout that closes agents' open connections, is
 * kept across a restart, and is noticed when another process sharing the database pulls it.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import { grant, within } from "./helpers.js";

const GOOD = grant("claude-github", ["claude"], ["github-token"], ["api.github.com"]);
const SYNTAX_ERROR = '[[rule]\nname = "claude-github"\n';
const CONFIG = `[server]
tcp = "127.0.0.1:0"
`;
const GH = { secret: "github-token", domains: ["api.github.com"] };
const sha = (s: string): string => createHash("sha256").update(s, "utf8").digest("hex");

async function refused(p: Promise<unknown>, code: string, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: Error & { code?: string }) => {
    assert.equal(e.code, code, e.message);
    assert.match(e.message, re);
    return true;
  });
}

/** A home with CONFIG and `policy`, holding the secret github-token. */
async function seededHome(policy: string): Promise<string> {
  const home = await makeHome({ config: CONFIG, policy: GOOD });
  const v = await openVault({ home, env: { LESSOR_HOME: home } });
  await v.admin().storeSecret({ name: "github-token", value: "gh-value" });
  await v.close();
  writeFileSync(join(home, "policy.toml"), policy, { mode: 0o600 });
  return home;
}

async function agentClient(d: RunningDaemon, admin: LessorClient, agent: string, opts: { reconnect?: boolean } = {}): Promise<LessorClient> {
  const t = await admin.createToken({ name: `${agent}-${Math.random().toString(36).slice(2, 8)}`, role: "agent", agent });
  return LessorClient.connect(d.tcp!, { token: t.token, ...opts });
}

describe("a broken policy never blocks the brakes (daemon)", () => {
  test("with a malformed policy.toml the daemon starts; grants are denied saying why; the brakes work; SIGHUP after fixing the file brings grants back without a restart, and explain names the new version", async () => {
    const home = await seededHome(GOOD);
    // A lease taken while the policy was good, held across the breakage.
    let d = await startServe(home);
    let admin = await LessorClient.connect({ socketPath: d.socket });
    const held = await admin.requestLease({ ...GH, agent: "claude" });
    await admin.close();
    await d.stop();

    writeFileSync(join(home, "policy.toml"), SYNTAX_ERROR, { mode: 0o600 });
    d = await startServe(home); // before the fix: lessor serve exits here with policy_invalid
    admin = await LessorClient.connect({ socketPath: d.socket });
    const claude = await agentClient(d, admin, "claude");
    try {
      assert.match(d.stderr(), /the policy file is invalid: every grant is denied/);
      const st = await admin.describe();
      assert.equal(st.policy.state, "broken");
      assert.match(st.policy.error ?? "", /policy\.toml: TOML syntax error at line \d+/);
      // status is the brief health check, the same for every role; describe shows the files to admins only.
      for (const c of [admin, claude]) {
        const brief = await c.status();
        assert.deepEqual(Object.keys(brief).sort(), ["auditHead", "daemon", "identity", "killswitch", "policy"]);
        assert.equal(brief.policy, "broken");
        assert.equal(brief.killswitch, false);
        assert.ok(!JSON.stringify(brief).includes(home), "no path of the owner's in a status answer");
      }
      assert.ok(st.keySource !== null && st.keySource.includes(home) && st.policy.source?.includes(home), "an admin sees where the key and the policy are");
      const agentView = await claude.describe();
      assert.equal(agentView.policy.state, "broken");
      assert.deepEqual([agentView.keySource, agentView.policy.source, agentView.policy.error], [null, null, null]);
      assert.ok(!JSON.stringify(agentView).includes(home), "an agent learns no path of the owner's from describe");
      const REASON = /^the policy is invalid, so every grant is denied: \S*policy\.toml: TOML syntax error .*; fix it and run lessor policy reload$/;
      const BRIEF = /^the policy is invalid, so every grant is denied; ask the operator to fix it \(lessor policy check\)$/;
      await refused(admin.requestLease({ ...GH, agent: "claude" }), "access_denied", REASON);
      await refused(claude.requestLease(GH), "access_denied", BRIEF);
      await refused(claude.leaseAndAccess(GH, { domain: "api.github.com" }), "access_denied", BRIEF);
      await refused(claude.accessSecret(held.id, { domain: "api.github.com" }), "access_denied", /policy is invalid/);
      const ex1 = await admin.explain("claude", "github-token", "api.github.com");
      assert.equal(ex1.allow, false);
      assert.match(ex1.reason, REASON);
      assert.equal(ex1.policy.state, "broken");
      assert.equal(ex1.policy.digest, sha(SYNTAX_ERROR));

      // The brakes, through the daemon.
      assert.deepEqual((await admin.listSecrets()).map((s) => s.name), ["github-token"]);
      assert.deepEqual(await admin.revokeLease(held.id, "policy broke"), { revoked: true });
      assert.deepEqual(await admin.revokeAllForAgent("claude"), { revoked: 0 });
      assert.equal((await admin.auditQuery({ types: ["access_denied"], limit: 10 })).length, 4);
      assert.equal((await admin.auditVerify()).ok, true);
      assert.equal((await admin.rotateMasterKey()).rewrapped, 1);

      // Fixed, then SIGHUP: grants work again with no restart (before the fix SIGHUP killed the daemon).
      const fixed = `${GOOD}\n# fixed\n`;
      writeFileSync(join(home, "policy.toml"), fixed, { mode: 0o600 });
      d.proc.kill("SIGHUP");
      await within(5000, "the SIGHUP reload", async () => (await admin.describe()).policy.state === "ok", 20);
      const got = await claude.leaseAndAccess(GH, { domain: "api.github.com" });
      assert.equal(got.value.unsafeText(), "gh-value");
      got.value.wipe();
      const ex2 = await admin.explain("claude", "github-token", "api.github.com");
      assert.deepEqual({ allow: ex2.allow, rule: ex2.rule, load: ex2.policy.load, digest: ex2.policy.digest, state: ex2.policy.state }, { allow: true, rule: "claude-github", load: 2, digest: sha(fixed), state: "ok" });
      assert.ok(ex2.policy.loadedAt >= ex1.policy.loadedAt);
      const [reload] = await admin.auditQuery({ types: ["policy_reloaded"], order: "desc", limit: 1 });
      assert.deepEqual([reload!.actorId, reload!.outcome], ["signal:SIGHUP", "ok"]);

      // Broken again by a reload: deny-all at once, audited as an error; the daemon stays up.
      writeFileSync(join(home, "policy.toml"), SYNTAX_ERROR, { mode: 0o600 });
      d.proc.kill("SIGHUP");
      await within(5000, "the second SIGHUP reload", async () => (await admin.describe()).policy.state === "broken", 20);
      await refused(claude.requestLease(GH), "access_denied", BRIEF);
      const [failed] = await admin.auditQuery({ types: ["policy_reloaded"], order: "desc", limit: 1 });
      assert.deepEqual([failed!.actorId, failed!.outcome], ["signal:SIGHUP", "error"]);
      assert.equal((await admin.explain("claude", "github-token")).policy.load, 3);
      assert.match(d.stderr(), /policy reload failed: every grant is denied/);
      assert.equal(d.proc.exitCode, null, "the daemon is still running");
    } finally {
      await claude.close();
      await admin.close();
      await d.stop();
    }
  });
});

describe("the killswitch is a lockout (daemon)", () => {
  test("it closes agents' and orchestrators' open connections within 1 s, refuses grants until released, survives a restart, and a killswitch pulled by another process is noticed within about a second", async () => {
    const home = await seededHome(GOOD);
    let d = await startServe(home);
    let admin = await LessorClient.connect({ socketPath: d.socket });
    const open: LessorClient[] = [admin];
    try {
      const claude = await agentClient(d, admin, "claude", { reconnect: false });
      const ot = await admin.createToken({ name: "orch", role: "orchestrator", actFor: ["claude"] });
      const orch = await LessorClient.connect(d.tcp!, { token: ot.token, reconnect: false });
      open.push(claude, orch);
      const lease = await claude.requestLease(GH);
      assert.ok(claude.connected && orch.connected);

      assert.deepEqual(await admin.killswitch("incident 7"), { revoked: 1 });
      const took = await within(1000, "closing the agent's and orchestrator's connections", () => !claude.connected && !orch.connected, 20);
      assert.ok(took < 1000);
      await refused(claude.accessSecret(lease.id, { domain: "api.github.com" }), "unavailable", /lost/);
      assert.equal((await admin.describe()).killswitch.engaged, true, "the admin's connection stays open");
      assert.equal((await admin.status()).killswitch, true, "the brief status says the lockout is engaged");

      const LOCKED = /^the killswitch is engaged since \S+Z by uid:\d+ \(reason: "incident 7"\); no lease is granted until an admin releases it with lessor killswitch --release$/;
      const claude2 = await agentClient(d, admin, "claude");
      open.push(claude2);
      await refused(claude2.requestLease(GH), "access_denied", LOCKED);
      await refused(claude2.leaseAndAccess(GH, { domain: "api.github.com" }), "access_denied", LOCKED);
      await refused(claude2.releaseKillswitch(), "access_denied", /may not release the killswitch/);

      // A restart keeps the lockout.
      for (const c of open.splice(0)) await c.close();
      await d.stop();
      d = await startServe(home);
      admin = await LessorClient.connect({ socketPath: d.socket });
      open.push(admin);
      assert.match(d.stderr(), /the killswitch is engaged: no lease is granted/);
      const ks = (await admin.describe()).killswitch;
      assert.deepEqual({ engaged: ks.engaged, reason: ks.reason }, { engaged: true, reason: "incident 7" });
      const claude3 = await agentClient(d, admin, "claude");
      open.push(claude3);
      await refused(claude3.requestLease(GH), "access_denied", LOCKED);
      assert.deepEqual(await admin.releaseKillswitch("incident 7 closed"), { released: true });
      assert.ok(await claude3.requestLease(GH), "grants work again once released");

      // Another process on the same database pulls it: this daemon closes its agents within ~1 s.
      const claude4 = await agentClient(d, admin, "claude", { reconnect: false });
      open.push(claude4);
      const other = await openVault({ home, env: { LESSOR_HOME: home } });
      try {
        assert.deepEqual(await other.admin().killswitch("from another process"), { revoked: 1 });
      } finally {
        await other.close();
      }
      await within(2500, "noticing another process's killswitch", () => !claude4.connected, 20);
      await refused(claude3.requestLease(GH), "access_denied", /killswitch is engaged .* \(reason: "from another process"\)/);
      assert.equal((await admin.describe()).killswitch.engaged, true);
      assert.deepEqual(await admin.releaseKillswitch(), { released: true });
    } finally {
      for (const c of open) await c.close();
      await d.stop();
    }
  });
});
