/**
 * Attacks on the killswitch and the heartbeat dead-man switch against things already live: leases
 * granted before the deadline or the switch, held by an embedded vault in another process, and what
 * an admin's late check-in or release does to them. The promise: once the switch engages (by hand or
 * by the dead-man deadline), nothing lent before keeps working, in any process; only an admin
 * releases it; every step audited.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import Database from "better-sqlite3";
import { describe, test } from "node:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { runCli } from "./cli-harness.js";
import { makeHome, startServe } from "./daemon-harness.js";
import { agent, clock, grant, makeVault, refusalOf } from "./helpers.js";

const POLICY = grant("g", ["claude"], ["tok"], [], "any_domain = true\nmax_ttl = \"24h\"");
const MIN = 60_000;
const CANARY = "CANARY-brakes-7e21c4d0";

async function rig() {
  const c = clock();
  const t = await makeVault({ policy: POLICY, now: c.now, limits: { heartbeatMs: MIN } });
  const admin = t.vault.admin();
  await admin.storeSecret({ name: "tok", value: CANARY });
  return { ...t, c, admin, claude: t.vault.session(agent("claude")) };
}

describe("the dead-man deadline missed with no daemon watching: a late check-in does not revive what was lent", () => {
  test("a heartbeat sent after the deadline passed (nothing fired yet: no daemon, nothing asked) fires the switch: the lease from before stays dead, the lockout is engaged by dead-man-switch and audited", async () => {
    const r = await rig();
    const lease = await r.claude.requestLease({ secret: "tok", ttl: "1h", maxUses: 100 });
    (await r.claude.accessSecret(lease.id)).value.wipe();
    // The deadline passes with no daemon running and nobody asking; then the admin's cron job (late) checks in.
    r.c.advance(MIN + 5000);
    await r.admin.heartbeat("late check-in");
    const e = await refusalOf(r.claude.accessSecret(lease.id));
    assert.ok(!e.message.includes(CANARY));
    assert.ok(e.code === "lease_revoked" || e.code === "access_denied", `the lease from before the deadline was used after it: ${e.code} ${e.message}`);
    const ks = (await r.admin.describe()).killswitch;
    assert.equal(ks.engaged, true, "the deadline was missed, so the killswitch must be engaged");
    assert.equal(ks.by, "dead-man-switch");
    const [row] = await r.admin.listLeases({ agent: "claude" });
    assert.notEqual(row!.revokedAt, null, "the lease granted before the deadline was revoked");
    // Nothing new is lent either, until an admin releases the lockout.
    assert.equal((await refusalOf(r.claude.requestLease({ secret: "tok" }))).code, "access_denied");
    const fired = (await r.admin.auditQuery({ types: ["killswitch"] })).filter((x) => x.actorId === "dead-man-switch");
    assert.equal(fired.length, 1, "the switch's firing is audited once");
    assert.ok(!JSON.stringify(await r.admin.auditQuery({})).includes(CANARY));
  });

  test("a killswitch release after the deadline passed unnoticed (the switch never fired: nothing was asked) does not revive the leases from before the deadline", async () => {
    const r = await rig();
    const lease = await r.claude.requestLease({ secret: "tok", ttl: "1h", maxUses: 100 });
    r.c.advance(MIN + 5000);
    // "release" on a lockout not (yet) engaged still counts as a heartbeat; it must not wipe out the missed deadline.
    await r.admin.releaseKillswitch("all clear");
    const e = await refusalOf(r.claude.accessSecret(lease.id));
    assert.ok(e.code === "lease_revoked", `the lease from before the missed deadline was used after it: ${e.code} ${e.message}`);
    assert.equal((await r.admin.describe()).killswitch.engaged, false, "the admin's release lifts the lockout");
    const ks = await r.admin.auditQuery({ types: ["killswitch"] });
    assert.deepEqual(
      ks.map((x) => [x.actorId, (JSON.parse(x.detail ?? "{}") as { engaged?: boolean }).engaged]),
      [
        ["dead-man-switch", true],
        [r.admin.identity.id, false],
      ],
      "the firing and the release are both audited, in that order",
    );
    // New grants go as the policy allows after the release.
    (await r.claude.requestLeaseAndAccess({ secret: "tok" })).value.wipe();
  });
});

describe("real processes, no daemon: an embedded vault in this process holds a lease; the CLI checks in late in another", () => {
  test("lessor heartbeat (embedded, another process) after the deadline passed fires the switch and says so; the lease the other process holds stays refused", { timeout: 60_000 }, async () => {
    const home = await makeHome({ policy: POLICY, config: `[vault]\nheartbeat = "2s"\n` });
    const env = { LESSOR_HOME: home };
    const v = await openVault({ home, env });
    try {
      await v.admin().storeSecret({ name: "tok", value: CANARY });
      const claude = v.session(agent("claude"));
      const due = (await v.admin().heartbeat()).dueAt!;
      const lease = await claude.requestLease({ secret: "tok", ttl: "10m", maxUses: 100 });
      (await claude.accessSecret(lease.id)).value.wipe();
      // Nobody asks anything past the deadline (no daemon, no long-lived command watching).
      while (Date.now() < due + 1500) await sleep(100);
      const beat = await runCli(["heartbeat", "--reason", "late"], { home });
      assert.ok(!beat.stdout.includes(CANARY) && !beat.stderr.includes(CANARY));
      assert.match(beat.stdout + beat.stderr, /killswitch/i, `lessor heartbeat must say the switch fired; it said: ${beat.stdout}${beat.stderr}`);
      assert.match(beat.stderr, /dead-man/, `stderr: ${beat.stderr}`);
      const e = await refusalOf(claude.accessSecret(lease.id));
      assert.ok(!e.message.includes(CANARY));
      assert.equal(e.code, "lease_revoked", `the lease from before the deadline: ${e.code} ${e.message}`);
      const status = await runCli(["status", "--json"], { home });
      const ks = (JSON.parse(status.stdout) as { killswitch: { engaged: boolean; by: string | null } }).killswitch;
      assert.deepEqual([ks.engaged, ks.by], [true, "dead-man-switch"]);
    } finally {
      await v.close();
    }
  });
});

describe("the brakes while the audit trail is broken, with an approval open", () => {
  // docs/security.md: "Lease and token revocation and the killswitch still take effect" while the
  // trail is broken. The killswitch also withdraws every approval not yet used, each audited as
  // approval_denied; that event is not a brake's, so under a broken trail the whole killswitch was
  // refused (audit_broken): nothing revoked, no lockout, exactly when the owner reaches for it.
  const GATED = POLICY + grant("gated", ["claude"], ["deploy-key"], ["api.example.com"], 'approval = "required"');

  const cut = (dbPath: string, keep: number): void => {
    const db = new Database(dbPath);
    try {
      db.prepare("DELETE FROM audit WHERE seq > ?").run(keep);
    } finally {
      db.close();
    }
  };

  test("the killswitch takes effect while the trail is cut and an approval is pending: every lease revoked, the lockout engaged, the approval withdrawn; its events recorded after the recovery", async () => {
    const c = clock();
    const t = await makeVault({ policy: GATED, now: c.now });
    const admin = t.vault.admin();
    const claude = t.vault.session(agent("claude"));
    await admin.storeSecret({ name: "tok", value: CANARY });
    await admin.storeSecret({ name: "deploy-key", value: "deploy-" + CANARY });
    const lease = await claude.requestLease({ secret: "tok", ttl: "1h", maxUses: 100 });
    const asked = await claude.requestApproval({ secret: "deploy-key", domains: ["api.example.com"], reason: "deploy the fix" });
    assert.equal(asked.required, true);
    const head = (await admin.auditVerify()).headSeq;
    // Someone who can write lessor.db cuts the last events off the trail.
    cut(t.dbPath!, head - 2);
    const ks = await admin.killswitch("suspicious audit").then(
      (r) => r,
      (e: unknown) => e as Error,
    );
    assert.ok(!(ks instanceof Error), `the killswitch was refused while the trail is broken: ${ks instanceof Error ? ks.message : ""}`);
    assert.equal(ks.revoked, 1);
    const e = await refusalOf(claude.accessSecret(lease.id));
    assert.ok(!e.message.includes(CANARY));
    assert.notEqual(e.code, "resolved", "the lease from before the killswitch still gave its value");
    const [row] = await admin.listLeases({ agent: "claude" });
    assert.notEqual(row!.revokedAt, null, "the lease was revoked");
    assert.equal((await admin.describe()).killswitch.engaged, true);
    assert.deepEqual(await admin.listApprovals({ all: true }), [], "the open approval was withdrawn");
    // The recovery records the break, then the brake's events: the withdrawal and the killswitch.
    const r = await admin.auditRecover({ reason: "trail cut; incident 7" });
    assert.equal(r.recovered, true);
    const after = await admin.auditQuery({ afterSeq: head - 2 });
    assert.deepEqual(
      after.map((x) => x.type),
      ["audit_break", "approval_denied", "killswitch"],
    );
    assert.match(after[1]!.reason ?? "", /withdrawn: the killswitch was pulled/);
    assert.equal((await admin.auditVerify()).ok, true);
    // A withdrawal by anything but the killswitch (a secret deleted) is not a brake: still refused while broken.
    await admin.releaseKillswitch("recovered");
    const asked2 = await claude.requestApproval({ secret: "deploy-key", domains: ["api.example.com"], reason: "again" }).catch(() => null);
    assert.ok(asked2 !== null && asked2.required);
    cut(t.dbPath!, (await admin.auditVerify()).headSeq - 1);
    assert.equal((await refusalOf(admin.deleteSecret({ scope: "global", name: "deploy-key" }))).code, "audit_broken");
  });
});

describe("a real lessor serve: the dead-man switch while the audit trail is broken and an approval is open", () => {
  test("the daemon still fires it within about a second of the deadline: the agent's lease revoked, its connection closed, the lockout engaged", { timeout: 60_000 }, async () => {
    const GATED = POLICY + grant("gated", ["claude"], ["deploy-key"], ["api.example.com"], 'approval = "required"');
    const config = `[server]\ntcp = "127.0.0.1:0"\n`;
    const home = await makeHome({ policy: GATED, config });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.admin().storeSecret({ name: "tok", value: CANARY });
    await v.admin().storeSecret({ name: "deploy-key", value: "deploy-" + CANARY });
    await v.close();
    writeFileSync(join(home, "lessor.toml"), `[vault]\nheartbeat = "3s"\n\n${config}`, { mode: 0o600 });
    const d = await startServe(home);
    const clients: LessorClient[] = [];
    try {
      const admin = await LessorClient.connect({ socketPath: d.socket });
      clients.push(admin);
      const t = await admin.createToken({ name: "claude", role: "agent", agent: "claude", ttl: "1h" });
      const claude = await LessorClient.connect({ host: d.tcp!.host, port: d.tcp!.port }, { token: t.token, reconnect: false });
      clients.push(claude);
      const lease = await claude.requestLease({ secret: "tok", ttl: "10m", maxUses: 100 });
      const asked = await claude.api.approval_request({ secret: "deploy-key", domains: ["api.example.com"], reason: "deploy the fix" });
      assert.equal(asked.required, true);
      const due = (await admin.heartbeat()).dueAt!;
      // Someone who can write lessor.db cuts the last events off the trail.
      const db = new Database(join(home, "lessor.db"));
      try {
        const head = db.prepare("SELECT max(seq) FROM audit").pluck().get() as number;
        db.prepare("DELETE FROM audit WHERE seq > ?").run(head - 2);
      } finally {
        db.close();
      }
      // Nothing is asked from now on: the daemon's own check must fire it.
      while (claude.connected && Date.now() < due + 6000) await sleep(20);
      assert.equal(claude.connected, false, "the agent's connection was not closed: the dead-man switch did not fire");
      const s = await admin.describe();
      assert.deepEqual([s.killswitch?.engaged, s.killswitch?.by], [true, "dead-man-switch"]);
      const [l] = await admin.listLeases({ agent: "claude" });
      assert.equal(l!.id, lease.id);
      assert.notEqual(l!.revokedAt, null, "the agent's lease was revoked");
    } finally {
      for (const c of clients) await c.close().catch(() => undefined);
      await d.stop();
    }
    assert.ok(!d.stderr().includes(CANARY));
  });
});
