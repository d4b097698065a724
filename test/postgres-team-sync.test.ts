/**
 * Two real `lessor serve` processes on one PostgreSQL schema (docs/team.md) stay on one master key and
 * one policy without a restart:
 * - the master key rotated on A is loaded by B from the key file both use (by the change feed's
 *   notice, or, with no notice, by B's next request): a secret re-wrapped under the new key is leased
 *   and read on B, a secret stored on B is read on A, and the audit trail both extend verifies;
 * - a B whose own key file does not hold the new key refuses (unavailable, saying how to fix it),
 *   writes nothing under the old key, keeps running, and serves again once the file is fixed;
 * - a B whose policy.toml is not the policy in force grants nothing (naming both digests and the
 *   fix), while revoke, killswitch, audit and status keep working on it; once its file matches and A
 *   reloads, B grants again within a second; a fixed file alone is picked up too;
 * - a daemon that starts puts its `[vault]` grant limits in force (audited as limits_pinned); an
 *   instance on other limits grants nothing, naming the limit, until restarted with them; an embedded
 *   lessor command never changes them; one instance restarted with a changed limit applies it.
 * Needs LESSOR_TEST_PG_URL; skips with the reason without it.
 */
import assert from "node:assert/strict";
import { chmodSync, copyFileSync, cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { execFileSync } from "node:child_process";
import { CLI, makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import { grant, within } from "./helpers.js";
import { PG_SKIP, testSchema } from "./pg-helpers.js";

/** `lessor ARGS` on `home` (the source CLI: it reaches the home's daemon when one serves it). */
const cli = (home: string, ...args: string[]) => execFileSync(process.execPath, ["--import", "tsx", CLI, "--home", home, ...args], { env: { PATH: process.env.PATH, HOME: process.env.HOME }, encoding: "utf8" });

const POLICY = grant("claude-github", ["claude"], ["github-token", "made-on-b"], ["api.github.com"]);
const GH = { secret: "github-token", domains: ["api.github.com"] };
const CANARY = "gh-canary-7c1e9a52";
type Coded = Error & { code?: string };

/** Resolves true once `f` resolves, false while it rejects with `unavailable` (any other error fails). */
async function works(f: () => Promise<unknown>): Promise<boolean> {
  try {
    await f();
    return true;
  } catch (e) {
    if ((e as Coded).code === "unavailable") return false;
    throw e;
  }
}

describe("two lessor serve processes on PostgreSQL: one master key and one policy, without a restart", { skip: PG_SKIP }, () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  });

  /**
   * Two daemons on a fresh schema. `keys`: "shared" points both at one key file outside the homes;
   * "copied" gives B a copy of A's. `vault`: extra [vault] lines (`vaultB`: B's, when they differ); `policyB`: B's policy.toml.
   */
  async function team(opts: { keys: "shared" | "copied"; vault?: string; vaultB?: string; policyB?: string }) {
    const { url, drop } = await testSchema();
    cleanups.push(drop);
    const keyDir = mkdtempSync(join(tmpdir(), "lessor-keys-"));
    chmodSync(keyDir, 0o700);
    cleanups.push(async () => rmSync(keyDir, { recursive: true, force: true }));
    const sharedKey = join(keyDir, "master.key");
    const base = (vault: string | undefined) => `[vault]\nstore = "postgres"\ndatabase_url = ${JSON.stringify(url)}\n${vault ?? ""}\n[server]\ntcp = "127.0.0.1:0"\n`;
    const keysLine = opts.keys === "shared" ? `\n[keys]\nfile = ${JSON.stringify(sharedKey)}\n` : "";
    const homeA = await makeHome({ config: base(opts.vault) + keysLine, policy: POLICY });
    const homeB = await makeHome({ config: base(opts.vaultB ?? opts.vault) + keysLine, policy: opts.policyB ?? POLICY });
    if (opts.keys === "shared") {
      copyFileSync(join(homeA, "master.key"), sharedKey);
      chmodSync(sharedKey, 0o600);
      rmSync(join(homeA, "master.key"));
      rmSync(join(homeB, "master.key"));
    } else copyFileSync(join(homeA, "master.key"), join(homeB, "master.key"));
    // A's policy is the first in force (the first vault to open the store stamps it).
    const v = await openVault({ home: homeA, env: { LESSOR_HOME: homeA } });
    await v.admin().storeSecret({ name: "github-token", value: CANARY });
    await v.close();
    const a = await startServe(homeA);
    cleanups.push(() => a.stop());
    const b = await startServe(homeB);
    cleanups.push(() => b.stop());
    const adminA = await LessorClient.connect({ socketPath: a.socket });
    const adminB = await LessorClient.connect({ socketPath: b.socket });
    cleanups.push(() => adminA.close(), () => adminB.close());
    return { a, b, adminA, adminB, homeA, homeB, sharedKey };
  }

  /** Stops `d` and starts a daemon on `home` again (reading its lessor.toml anew), with an admin client. */
  async function restart(d: RunningDaemon, home: string): Promise<{ d: RunningDaemon; admin: LessorClient }> {
    await d.stop();
    const again = await startServe(home);
    cleanups.push(() => again.stop());
    const admin = await LessorClient.connect({ socketPath: again.socket });
    cleanups.push(() => admin.close());
    return { d: again, admin };
  }

  async function agentOn(d: RunningDaemon, adminClient: LessorClient): Promise<LessorClient> {
    const t = await adminClient.createToken({ name: `claude-${Math.random().toString(36).slice(2, 8)}`, role: "agent", agent: "claude" });
    const client = await LessorClient.connect(d.tcp!, { token: t.token, reconnect: false });
    cleanups.push(() => client.close());
    return client;
  }

  async function readOn(agent: LessorClient, secret = "github-token"): Promise<string> {
    const got = await agent.leaseAndAccess({ secret, domains: ["api.github.com"] }, { domain: "api.github.com" });
    try {
      return got.value.unsafeText();
    } finally {
      got.value.wipe();
    }
  }

  test("master key rotated on A: B loads it from the shared key file on the notice, serves re-wrapped and new secrets, the chain verifies", async () => {
    const { a, b, adminA, adminB } = await team({ keys: "shared", vault: "poll_ms = 60000" });
    const onA = await agentOn(a, adminA);
    const onB = await agentOn(b, adminB);
    assert.equal(await readOn(onB), CANARY);
    const before = (await adminB.describe()).keyId;

    const r = await adminA.rotateMasterKey();
    assert.equal(r.rewrapped, 1);
    assert.equal(r.retired, true);
    assert.notEqual(r.to, before);
    // The notice of the rotation (and of its retirement) reaches B: it holds the new key alone.
    const loadMs = await within(3000, "B loading the new key", async () => (await adminB.describe()).keyIds.join(",") === r.to);
    assert.match(b.stderr(), /master keys read again/);

    // The secret's DEK is now wrapped under the new key only: B leases and reads it, no restart.
    assert.equal(await readOn(onB), CANARY);
    // A secret stored on B (under the new key) is read on A.
    await adminB.storeSecret({ name: "made-on-b", value: "made-on-b-value" });
    assert.equal(await readOn(onA, "made-on-b"), "made-on-b-value");
    assert.equal(await readOn(onB, "made-on-b"), "made-on-b-value");
    // B's audited writes extended the chain A keyed under the new key: both verify it.
    for (const admin of [adminA, adminB]) {
      const v = await admin.auditVerify();
      assert.equal(v.ok, true, v.problem);
    }
    const [rotated] = await adminA.auditQuery({ types: ["key_rotated"] });
    const later = await adminA.auditQuery({ afterSeq: rotated!.seq, order: "asc" });
    assert.ok(later.length > 0 && later.every((e) => e.keyId === r.to), "every event after the rotation is keyed under the new key");
    assert.ok(!b.stderr().includes(CANARY) && !a.stderr().includes(CANARY));
    console.log(`# master key rotated on A → loaded on B ${loadMs.toFixed(0)} ms (notice, then key file read)`);
  });

  test("no notice (LISTEN off, no polling): B's next request finds the new key id and loads it before it serves", async () => {
    const { b, adminA, adminB } = await team({ keys: "shared", vault: "listen = false\npoll_ms = 600000" });
    const onB = await agentOn(b, adminB);
    assert.equal(await readOn(onB), CANARY);
    const r = await adminA.rotateMasterKey();
    assert.notEqual((await adminB.describe()).keyId, r.to, "B has not heard of the rotation");
    assert.equal(await readOn(onB), CANARY);
    assert.equal((await adminB.describe()).keyId, r.to);
    assert.equal((await adminB.auditVerify()).ok, true);
    assert.equal((await adminA.auditVerify()).ok, true);
  });

  test("B cannot reach the new key (its own stale copy of the key file): it refuses saying how to fix it, writes nothing, keeps running, and serves once the file is fixed", async () => {
    const { b, adminA, adminB, homeA, homeB } = await team({ keys: "copied", vault: "poll_ms = 60000" });
    const onB = await agentOn(b, adminB);
    assert.equal(await readOn(onB), CANARY);
    const auditBefore = (await adminA.auditVerify()).headSeq;
    const r = await adminA.rotateMasterKey();
    assert.equal(r.retired, true);
    await within(3000, "B's error log", () => /cannot be loaded here/.test(b.stderr()));

    // A grant on B would be audited under the retired key: refused before anything is written.
    await assert.rejects(readOn(onB), (e: Coded) => {
      assert.equal(e.code, "unavailable");
      assert.match(e.message, new RegExp(`master key ${r.to} is in use`));
      assert.match(e.message, /cannot load it/);
      assert.match(e.message, /\[keys\] file/);
      assert.ok(!e.message.includes(CANARY));
      return true;
    });
    await assert.rejects(adminB.storeSecret({ name: "made-on-b", value: "x" }), (e: Coded) => e.code === "unavailable" && /cannot load it/.test(e.message));
    // Still running and answering; nothing was written under the old key: the trail still verifies on A.
    assert.equal(b.proc.exitCode, null);
    assert.equal((await adminB.describe()).keyIds.includes(r.to), false);
    const v = await adminA.auditVerify();
    assert.equal(v.ok, true, v.problem);
    assert.equal(v.headSeq, auditBefore + 2, "only the rotation's two events (key_rotation_started, key_rotated) were added");
    assert.equal((await adminA.listSecrets()).some((s) => s.name === "made-on-b"), false);

    // The fix the message names: the rotating instance's key file copied over. No restart.
    writeFileSync(join(homeB, "master.key"), readFileSync(join(homeA, "master.key")), { mode: 0o600 });
    await within(5000, "B serving again", () => works(() => readOn(onB)));
    assert.equal(await readOn(onB), CANARY);
    assert.equal((await adminB.auditVerify()).ok, true);
    assert.ok(!b.stderr().includes(CANARY));
  });

  test("B's policy.toml differs from the policy in force: B grants nothing, saying so; brakes, audit and status work on B; B's file fixed and A's reload bring B back within a second", async () => {
    // B's copy would grant claude a secret A's policy does not: a stale copy must not decide.
    const policyB = `${POLICY}\n${grant("claude-prod", ["claude"], ["prod-db"], ["db.internal"])}`;
    const { a, b, adminA, adminB, homeB } = await team({ keys: "shared", vault: "poll_ms = 60000", policyB });
    await adminA.storeSecret({ name: "prod-db", value: "prod-db-value" });
    const onA = await agentOn(a, adminA);
    const onB = await agentOn(b, adminB);
    const digestA = (await adminA.describe()).policy.digest;
    const sB = await adminB.describe();
    assert.ok(sB.policy.stale !== undefined, "B's status says its policy is stale");
    assert.equal(sB.policy.stale.stored, digestA);
    assert.notEqual(sB.policy.digest, digestA);
    assert.match(b.stderr(), /grants nothing until they match/);

    for (const ask of [() => onB.leaseAndAccess({ secret: "prod-db", domains: ["db.internal"] }, { domain: "db.internal" }), () => readOn(onB), () => onB.requestLease(GH)])
      await assert.rejects(ask(), (e: Coded) => {
        assert.equal(e.code, "unavailable");
        assert.ok(e.message.includes(sB.policy.digest) && e.message.includes(digestA), e.message);
        assert.match(e.message, /lessor policy reload/);
        assert.ok(!e.message.includes(homeB), "the agent is not told where the owner keeps the policy file");
        return true;
      });
    // A lease granted on A is not used on B either, and policy explain on B says it is stale.
    const lease = await onA.requestLease(GH);
    await assert.rejects(onB.accessSecret(lease.id, { domain: "api.github.com" }), (e: Coded) => e.code === "unavailable" && e.message.includes(digestA));
    const x = await adminB.explain("claude", "prod-db", "db.internal");
    assert.equal(x.policy.stale?.stored, digestA);
    // The CLI says so too (through daemon B).
    const cli = (...args: string[]) => execFileSync(process.execPath, ["--import", "tsx", CLI, "--home", homeB, ...args], { env: { PATH: process.env.PATH, HOME: process.env.HOME }, encoding: "utf8" });
    assert.match(cli("status"), new RegExp(`STALE, every lease is denied here: digest ${sB.policy.digest}, but the shared database has digest ${digestA} in force`));
    assert.match(cli("policy", "explain", "--agent", "claude", "--secret", "prod-db"), /answered by policy version .*STALE: the shared database has digest/);
    // The refusals are audited on the shared trail.
    const refused = await adminA.auditQuery({ types: ["access_denied"], agent: "claude" });
    assert.ok(refused.some((e) => /unavailable: this lessor instance's policy/.test(e.reason ?? "")));

    // Brakes on the stale instance: revoke, killswitch and its release, audit verify.
    assert.equal((await adminB.revokeLease(lease.id, "done")).revoked, true);
    await adminB.killswitch("drill");
    await within(1000, "the killswitch pulled on B seen on A", async () => (await adminA.describe()).killswitch.engaged);
    await adminB.releaseKillswitch("drill over");
    assert.equal((await adminB.auditVerify()).ok, true);
    const onB2 = await agentOn(b, adminB); // the killswitch closed the agents' connections

    // B's file made the policy in force, then A reloads: the notice makes B read its file (status
    // reads the stamp, never the file), and B grants again.
    writeFileSync(join(homeB, "policy.toml"), POLICY, { mode: 0o600 });
    await adminA.reloadPolicy();
    const backMs = await within(1000, "B back in line", async () => (await adminB.describe()).policy.stale === undefined);
    assert.equal(await readOn(onB2), CANARY);
    assert.match(b.stderr(), /policy reloaded because another instance/);
    console.log(`# policy reloaded on A with B's file fixed → B in line again ${backMs.toFixed(0)} ms after the reload`);
    await assert.rejects(onB2.leaseAndAccess({ secret: "prod-db", domains: ["db.internal"] }, { domain: "db.internal" }), (e: Coded) => e.code === "access_denied");

    // A new policy reloaded on A that B's file lacks: stale again; B's file fixed alone (no reload) is picked up within about a second.
    const v3 = `${POLICY}\n# v3\n`;
    writeFileSync(join(a.home, "policy.toml"), v3, { mode: 0o600 });
    await adminA.reloadPolicy();
    await within(1000, "B stale again", async () => (await adminB.describe()).policy.stale !== undefined);
    await assert.rejects(readOn(onB2), (e: Coded) => e.code === "unavailable");
    writeFileSync(join(homeB, "policy.toml"), v3, { mode: 0o600 });
    await within(2500, "B picking up its fixed file", () => works(() => readOn(onB2)));
    assert.equal((await adminB.auditVerify()).ok, true);
  });

  test("a reload on B puts B's own file in force everywhere: A, whose file differs, then grants nothing", async () => {
    const policyB = `${POLICY}\n# B's edit\n`;
    const { a, adminA, adminB } = await team({ keys: "shared", vault: "poll_ms = 60000", policyB });
    const onA = await agentOn(a, adminA);
    assert.equal(await readOn(onA), CANARY);
    await adminB.reloadPolicy();
    const digestB = (await adminB.describe()).policy.digest;
    assert.equal((await adminB.describe()).policy.stale, undefined);
    await within(1000, "A refusing", async () => !(await works(() => readOn(onA))));
    const s = await adminA.describe();
    assert.equal(s.policy.stale?.stored, digestB);
  });

  test("B started with other [vault] limits puts them in force (audited); A, on the old ones, grants nothing, naming the limit, until restarted with them; an embedded lessor command never changes them", async () => {
    // A opened first (cap 2); B's lessor.toml says 50, and B started after A.
    const { a, b, adminA, adminB, homeA, homeB } = await team({ keys: "shared", vault: "max_live_leases_per_agent = 2", vaultB: "max_live_leases_per_agent = 50" });
    const onA = await agentOn(a, adminA);
    const onB = await agentOn(b, adminB);
    // Through A, the agent would be held to a cap that is no longer the one in force: refused, naming the limit and not a value.
    const refused = await onA.requestLease(GH).then(
      () => null,
      (e: Coded) => e,
    );
    assert.equal(refused?.code, "unavailable");
    assert.match(refused!.message, /\[vault\] limits in lessor\.toml \(max_live_leases_per_agent\) are not the ones in force/);
    assert.doesNotMatch(refused!.message, /\b(2|50)\b/);
    const sA = await adminA.describe();
    assert.deepEqual(sA.policy.stale?.limits, ["max_live_leases_per_agent"]);
    assert.equal(sA.policy.stale?.stored, sA.policy.digest, "the policy itself is the one in force");
    await within(2000, "A's log saying so", async () => /\[vault\] limits in lessor\.toml differ from the ones in force/.test(a.stderr()));
    assert.match(cli(homeA, "status"), /STALE LIMITS, every lease is denied here: this instance's \[vault\] limits \(max_live_leases_per_agent\)/);
    // B grants under the limits in force (more than 2 live leases), and its start is in the trail.
    for (let i = 0; i < 3; i++) await onB.requestLease(GH);
    assert.equal((await adminB.describe()).policy.stale, undefined);
    const pinned = await adminB.auditQuery({ types: ["limits_pinned"] });
    assert.equal(pinned.length, 1);
    assert.match(String(pinned[0]!.detail?.["previous"]), /max_live_leases_per_agent=2\b/);
    assert.match(String(pinned[0]!.detail?.["limits"]), /max_live_leases_per_agent=50\b/);
    assert.equal(pinned[0]!.detail?.["changed"], "max_live_leases_per_agent");
    // An embedded lessor command with yet other limits (a stale lessor.toml on an admin's laptop) changes nothing for the daemons.
    const homeC = join(mkdtempSync(join(tmpdir(), "lessor-c-")), "home");
    cpSync(homeB, homeC, { recursive: true, filter: (src) => !/lessor\.(sock|pid)$/.test(src) });
    writeFileSync(join(homeC, "lessor.toml"), readFileSync(join(homeB, "lessor.toml"), "utf8").replace("max_live_leases_per_agent = 50", "max_live_leases_per_agent = 7"), { mode: 0o600 });
    const embedded = await openVault({ home: homeC, env: { LESSOR_HOME: homeC } });
    try {
      await assert.rejects(embedded.session({ id: "embedded:claude", role: "agent", agent: "claude", transport: "embedded" }).requestLease(GH), (e: Coded) => e.code === "unavailable");
      // Its policy reload (lessor policy reload with no daemon on that home) keeps the limits in force.
      await embedded.admin().reloadPolicy();
    } finally {
      await embedded.close();
    }
    assert.equal((await adminB.describe()).policy.stale, undefined, "B's limits are still the ones in force");
    await onB.requestLease(GH);
    assert.equal((await adminB.auditQuery({ types: ["limits_pinned"] })).length, 1);
    // A restarted with B's limits grants again.
    writeFileSync(join(homeA, "lessor.toml"), readFileSync(join(homeB, "lessor.toml"), "utf8"), { mode: 0o600 });
    const { d: a2, admin: adminA2 } = await restart(a, homeA);
    const onA2 = await agentOn(a2, adminA2);
    await onA2.requestLease(GH);
    assert.equal((await adminA2.describe()).policy.stale, undefined);
  });

  test("one instance restarted with a changed [vault] limit applies it: no reload needed", async () => {
    const { a, b, adminA, homeA } = await team({ keys: "shared", vault: "max_live_leases_per_agent = 2" });
    await b.stop();
    const onA = await agentOn(a, adminA);
    await onA.requestLease(GH);
    await onA.requestLease(GH);
    await assert.rejects(onA.requestLease(GH), (e: Coded) => e.code === "rate_limited");
    writeFileSync(join(homeA, "lessor.toml"), readFileSync(join(homeA, "lessor.toml"), "utf8").replace("max_live_leases_per_agent = 2", "max_live_leases_per_agent = 3"), { mode: 0o600 });
    const { d: a2, admin: admin2 } = await restart(a, homeA);
    const on2 = await agentOn(a2, admin2);
    await on2.requestLease(GH);
    await assert.rejects(on2.requestLease(GH), (e: Coded) => e.code === "rate_limited");
  });

  test("an instance left on a dead-man switch that is no longer in force does not fire it: the instance in line, without the switch, decides", async () => {
    // A starts with heartbeat = "12s" (armed at open); B starts after it with no heartbeat and claims.
    // (12 s: B must claim before A's own deadline, and a machine busy with a CI run once took longer
    // than 6 s to start B.)
    const { a, adminA, adminB, homeA } = await team({ keys: "shared", vault: 'heartbeat = "12s"', vaultB: "" });
    const started = Date.now(); // A opened before this
    await within(2000, "A stale on its heartbeat", async () => ((await adminA.describe()).policy.stale?.limits ?? []).includes("heartbeat"));
    // Past A's own deadline (A checks once a second).
    await new Promise((r) => setTimeout(r, Math.max(0, started + 13_500 - Date.now())));
    assert.equal((await adminB.describe()).killswitch.engaged, false, "the killswitch was not pulled by A's stale period");
    assert.doesNotMatch(a.stderr(), /dead-man switch: no heartbeat/);
    // A's status says its switch is not in force, not that it is overdue since 1970 (it never armed).
    const status = cli(homeA, "status");
    assert.match(status, /heartbeat:\s+every 12s here, but not in force \(STALE LIMITS/);
    assert.doesNotMatch(status, /overdue since/);
  });

  test("an instance whose approval_use is not the one in force decides no approval (its decision would stand for its own time)", async () => {
    const { url, drop } = await testSchema();
    cleanups.push(drop);
    const policy = grant("gated", ["claude"], ["github-token"], ["api.github.com"], 'approval = "required"');
    const config = (extra: string) => `[vault]\nstore = "postgres"\ndatabase_url = ${JSON.stringify(url)}\n${extra}\n`;
    const homeA = await makeHome({ config: config('approval_use = "1m"'), policy });
    const homeB = await makeHome({ config: config('approval_use = "24h"'), policy });
    copyFileSync(join(homeA, "master.key"), join(homeB, "master.key"));
    const serve = { id: "uid:0", role: "admin" as const, transport: "serve" };
    const a = await openVault({ home: homeA, env: { LESSOR_HOME: homeA }, claimLimits: serve });
    cleanups.push(() => a.close());
    await a.admin().storeSecret({ name: "github-token", value: CANARY });
    // B starts after A and puts its approval_use in force: A is now the stale one.
    const b = await openVault({ home: homeB, env: { LESSOR_HOME: homeB }, claimLimits: serve });
    cleanups.push(() => b.close());
    const asked = await b.session({ id: "embedded:claude", role: "agent", agent: "claude", transport: "embedded" }).requestApproval({ secret: "github-token", domains: ["api.github.com"] });
    assert.ok(asked.required);
    await assert.rejects(a.admin().decideApproval(asked.approval.id, true), (e: Coded) => e.code === "unavailable" && /approval_use/.test(e.message));
    assert.equal((await b.admin().decideApproval(asked.approval.id, true)).state, "approved");
  });

  test("a daemon whose policy file is stale claims no limits at start: the instance in line keeps granting", async () => {
    const { url, drop } = await testSchema();
    cleanups.push(drop);
    const config = (extra: string) => `[vault]\nstore = "postgres"\ndatabase_url = ${JSON.stringify(url)}\n${extra}\n`;
    const homeA = await makeHome({ config: config("max_live_leases_per_agent = 2"), policy: POLICY });
    const homeB = await makeHome({ config: config("max_live_leases_per_agent = 50"), policy: `${POLICY}\n# B's own edit\n` });
    copyFileSync(join(homeA, "master.key"), join(homeB, "master.key"));
    const serve = { id: "uid:0", role: "admin" as const, transport: "serve" };
    const a = await openVault({ home: homeA, env: { LESSOR_HOME: homeA }, claimLimits: serve });
    cleanups.push(() => a.close());
    await a.admin().storeSecret({ name: "github-token", value: CANARY });
    const b = await openVault({ home: homeB, env: { LESSOR_HOME: homeB }, claimLimits: serve });
    cleanups.push(() => b.close());
    assert.ok((await b.admin().describe()).policy.stale !== undefined, "B's policy is stale");
    assert.equal((await a.admin().describe()).policy.stale, undefined, "A's limits are still the ones in force");
    await a.session({ id: "embedded:claude", role: "agent", agent: "claude", transport: "embedded" }).requestLease(GH);
    assert.equal((await a.admin().auditQuery({ types: ["limits_pinned"] })).length, 0);
  });
});
