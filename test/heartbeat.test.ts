/**
 * The heartbeat dead-man switch (`[vault] heartbeat`, src/vault/heartbeat.ts): in the core with a
 * controlled clock on a real SQLite file, through a real `lessor serve` (it fires with nothing asked and
 * closes the agents' connections), and through the built CLI.
 */
import assert from "node:assert/strict";
import { copyFileSync, writeFileSync } from "node:fs";
import Database from "better-sqlite3";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { HEARTBEAT_META } from "../src/vault/heartbeat.js";
import { cliHome, runCli, seedHome } from "./cli-harness.js";
import { makeHome, startServe } from "./daemon-harness.js";
import { agent, clock, grant, makeVault, orchestrator, refusalOf } from "./helpers.js";
import { PG_SKIP, testSchema } from "./pg-helpers.js";

const POLICY = grant("g", ["claude"], ["tok"], [], "any_domain = true");
const MIN = 60_000;
const CANARY = "CANARY-heartbeat-3c1f9a";

async function rig(heartbeatMs: number | null = MIN) {
  const c = clock();
  const t = await makeVault({ policy: POLICY, now: c.now, limits: { heartbeatMs } });
  const admin = t.vault.admin();
  await admin.storeSecret({ name: "tok", value: CANARY });
  return { ...t, c, admin, claude: t.vault.session(agent("claude")) };
}

describe("the dead-man switch in the core (SQLite, a controlled clock)", () => {
  test("it arms when the vault opens with the setting (audited as the switch's), and each admin heartbeat moves the deadline", async () => {
    const r = await rig();
    const t0 = r.c.now();
    const s0 = (await r.admin.describe()).heartbeat;
    assert.deepEqual(s0, { everyMs: MIN, lastAt: t0, lastBy: "dead-man-switch", dueAt: t0 + MIN });
    r.c.advance(30_000);
    const beat = await r.admin.heartbeat("still here");
    assert.deepEqual(beat, { everyMs: MIN, lastAt: t0 + 30_000, lastBy: r.admin.identity.id, dueAt: t0 + 90_000 });
    r.c.advance(50_000); // 80 s after the arming, 50 s after the heartbeat: not due
    const l = await r.claude.requestLeaseAndAccess({ secret: "tok" });
    assert.equal(l.value.expose().toString(), CANARY);
    const rows = await r.admin.auditQuery({ types: ["heartbeat"] });
    assert.deepEqual(
      rows.map((e) => [e.actorId, e.reason, (JSON.parse(e.detail ?? "{}") as { armed?: boolean }).armed ?? false]),
      [
        ["dead-man-switch", "armed: [vault] heartbeat is set and no heartbeat was stored", true],
        [r.admin.identity.id, "still here", false],
      ],
    );
    // Opening again does not arm again (the deadline stays where the heartbeat put it).
    const again = await r.reopen();
    assert.equal((await again.vault.admin().describe()).heartbeat.dueAt, t0 + 90_000);
  });

  test("past the deadline a grant is refused, and the killswitch is pulled in the same commit: every live lease revoked, audited as the switch's", async () => {
    const r = await rig();
    const live = await r.claude.requestLease({ secret: "tok" });
    r.c.advance(MIN + 1);
    const e = await refusalOf(r.claude.requestLease({ secret: "tok" }));
    assert.equal(e.code, "access_denied");
    assert.match(e.message, /killswitch is engaged .* by dead-man-switch .*dead-man switch: no heartbeat for 1m/);
    const ks = (await r.admin.describe()).killswitch;
    assert.equal(ks.engaged, true);
    assert.equal(ks.by, "dead-man-switch");
    const [lease] = await r.admin.listLeases({ agent: "claude" });
    assert.equal(lease!.id, live.id);
    assert.notEqual(lease!.revokedAt, null, "the live lease was revoked");
    const fired = (await r.admin.auditQuery({ types: ["killswitch"] })).filter((x) => x.actorId === "dead-man-switch");
    assert.equal(fired.length, 1);
    assert.equal((JSON.parse(fired[0]!.detail ?? "{}") as { count?: number }).count, 1);
    assert.ok(!JSON.stringify(await r.admin.auditQuery({})).includes(CANARY));
  });

  test("past the deadline a use of a lease granted before it is refused too, with no daemon and no grant asked", async () => {
    const r = await rig();
    const l = await r.claude.requestLease({ secret: "tok", maxUses: 10 });
    (await r.claude.accessSecret(l.id, { domain: "api.example.com" })).value.wipe();
    r.c.advance(MIN + 1);
    const e = await refusalOf(r.claude.accessSecret(l.id, { domain: "api.example.com" }));
    assert.equal(e.code, "access_denied");
    assert.ok(!e.message.includes(CANARY));
    assert.equal((await r.admin.describe()).killswitch.engaged, true);
    // The lease is revoked now: it stays refused after a heartbeat.
    await r.admin.heartbeat();
    assert.equal((await refusalOf(r.claude.accessSecret(l.id, { domain: "api.example.com" }))).code, "lease_revoked");
  });

  test("only an admin sends a heartbeat: an agent and an orchestrator acting for it are refused and audited, and the deadline does not move", async () => {
    const r = await rig();
    const due = (await r.admin.describe()).heartbeat.dueAt;
    r.c.advance(10_000);
    for (const who of [r.claude, r.vault.session(orchestrator(["claude"]))]) {
      const e = await refusalOf(who.heartbeat("keep me going"));
      assert.equal(e.code, "access_denied");
      assert.match(e.message, /send the heartbeat/);
    }
    assert.equal((await r.admin.describe()).heartbeat.dueAt, due);
    const refused = (await r.admin.auditQuery({ types: ["access_denied"] })).filter((x) => /send the heartbeat/.test(x.reason ?? ""));
    assert.ok(refused.length >= 1, "the refusals are in the audit trail");
    // Agents see when it fires, not who sent the last one.
    assert.equal((await r.claude.describe()).heartbeat.lastBy, null);
  });

  test("a heartbeat does not release an engaged killswitch; releasing it counts as a heartbeat, so the switch does not fire again at once", async () => {
    const r = await rig();
    r.c.advance(MIN + 1);
    assert.equal(await r.vault.checkKillswitch().then((k) => k.engaged), true);
    await r.admin.heartbeat();
    assert.equal((await refusalOf(r.claude.requestLease({ secret: "tok" }))).code, "access_denied", "still engaged after a heartbeat");
    r.c.advance(5000);
    assert.deepEqual(await r.admin.releaseKillswitch("back"), { released: true });
    assert.equal((await r.admin.describe()).heartbeat.dueAt, r.c.now() + MIN);
    r.c.advance(MIN - 1);
    (await r.claude.requestLeaseAndAccess({ secret: "tok" })).value.wipe();
  });

  test("the daemon's once-a-second check fires it with nothing asked: live leases end and the killswitch signal is raised", async () => {
    const r = await rig();
    const l = await r.claude.requestLease({ secret: "tok" });
    const signals: string[] = [];
    r.vault.onSignal((s) => signals.push(`${s.type}:${"engaged" in s ? String(s.engaged) : ""}`));
    r.c.advance(MIN); // exactly at the deadline: not yet
    assert.equal((await r.vault.checkKillswitch()).engaged, false);
    r.c.advance(1);
    assert.equal((await r.vault.checkKillswitch()).engaged, true);
    assert.deepEqual(signals, ["killswitch:true"]);
    assert.notEqual((await r.admin.listLeases({ agent: "claude" })).find((x) => x.id === l.id)!.revokedAt, null);
    // Checked again, it does not fire twice.
    assert.equal((await r.vault.checkKillswitch()).engaged, true);
    assert.equal((await r.admin.auditQuery({ types: ["killswitch"] })).length, 1);
  });

  test("a heartbeat record lessor did not write (edited or damaged) fails closed: the next grant pulls the killswitch", async () => {
    const r = await rig();
    await r.store.transaction(async (tx) => tx.setMeta(HEARTBEAT_META, '{"at":"tomorrow"}'));
    assert.equal((await refusalOf(r.claude.requestLease({ secret: "tok" }))).code, "access_denied");
    const ks = (await r.admin.describe()).killswitch;
    assert.equal(ks.engaged, true);
    assert.match(ks.reason ?? "", /an unreadable heartbeat record/);
  });

  test("a heartbeat record deleted from lessor.db under a running vault counts as long past due, not as 'not armed yet': the daemon's check fires", async () => {
    const r = await rig();
    const live = await r.claude.requestLease({ secret: "tok" });
    assert.ok(r.dbPath);
    // A second connection (someone who can write the database, not lessor) deletes the armed record.
    const db = new Database(r.dbPath);
    db.prepare("DELETE FROM meta WHERE key = ?").run(HEARTBEAT_META);
    db.close();
    const s = (await r.admin.describe()).heartbeat;
    assert.deepEqual([s.lastAt, s.dueAt], [0, MIN], "status says the switch is past due, not that it is not armed");
    assert.equal((await r.vault.checkKillswitch()).engaged, true);
    const ks = (await r.admin.describe()).killswitch;
    assert.match(ks.reason ?? "", /dead-man switch: .*no heartbeat record \(it was deleted/);
    assert.notEqual((await r.admin.listLeases({ agent: "claude" })).find((x) => x.id === live.id)!.revokedAt, null);
    assert.equal((await refusalOf(r.claude.requestLease({ secret: "tok" }))).code, "access_denied");
    // Releasing the killswitch counts as a heartbeat: the switch is armed again from then.
    await r.admin.releaseKillswitch();
    assert.equal((await r.admin.describe()).heartbeat.dueAt, r.c.now() + MIN);
  });

  test("without the setting nothing is armed or checked: years without a heartbeat change nothing", async () => {
    const r = await rig(null);
    assert.deepEqual((await r.admin.describe()).heartbeat, { everyMs: null, lastAt: null, lastBy: null, dueAt: null });
    r.c.advance(3 * 365 * 24 * 3600_000);
    assert.equal((await r.vault.checkKillswitch()).engaged, false);
    (await r.claude.requestLeaseAndAccess({ secret: "tok" })).value.wipe();
    assert.equal((await r.store.transaction(async (tx) => tx.getMeta(HEARTBEAT_META))), null);
    // A heartbeat is still recorded, and says the switch is off.
    assert.deepEqual(await r.admin.heartbeat().then((h) => [h.everyMs, h.dueAt]), [null, null]);
  });
});

describe("the dead-man switch in a real lessor serve", () => {
  test("heartbeats keep it from firing; once they stop, the daemon pulls the killswitch within about a second of the deadline, revokes the agent's lease and closes its connection; an agent cannot send a heartbeat", { timeout: 60_000 }, async () => {
    const config = `[server]\ntcp = "127.0.0.1:0"\n`;
    const home = await makeHome({ policy: POLICY, config });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.admin().storeSecret({ name: "tok", value: CANARY });
    await v.close();
    // Armed by the daemon's own open (not the seeding one above, which a slow start could outlast).
    writeFileSync(join(home, "lessor.toml"), `[vault]\nheartbeat = "3s"\n\n${config}`, { mode: 0o600 });
    const d = await startServe(home);
    const clients: LessorClient[] = [];
    try {
      const admin = await LessorClient.connect({ socketPath: d.socket });
      clients.push(admin);
      await admin.heartbeat();
      const t = await admin.createToken({ name: "claude", role: "agent", agent: "claude", ttl: "1h" });
      const claude = await LessorClient.connect({ host: d.tcp!.host, port: d.tcp!.port }, { token: t.token, reconnect: false });
      clients.push(claude);
      const e = await refusalOf(claude.heartbeat());
      assert.equal(e.code, "access_denied");
      const lease = await claude.requestLease({ secret: "tok", ttl: "10m" });
      // 6 s of heartbeats every 0.5 s: twice the period, and nothing fires.
      for (let i = 0; i < 12; i++) {
        await admin.heartbeat();
        await sleep(500);
      }
      assert.equal((await admin.describe()).killswitch?.engaged, false);
      assert.equal(claude.connected, true);
      const last = await admin.heartbeat();
      const due = last.dueAt!;
      // Nothing is asked from now on: the daemon's own check must fire it.
      while (claude.connected && Date.now() < due + 5000) await sleep(20);
      const closedAt = Date.now();
      assert.equal(claude.connected, false, "the agent's connection was closed");
      assert.ok(closedAt >= due, `closed ${due - closedAt} ms before the deadline`);
      assert.ok(closedAt - due < 2500, `closed ${closedAt - due} ms after the deadline`);
      const s = await admin.describe();
      assert.equal(s.killswitch?.engaged, true);
      assert.equal(s.killswitch?.by, "dead-man-switch");
      const [l] = await admin.listLeases({ agent: "claude" });
      assert.equal(l!.id, lease.id);
      assert.notEqual(l!.revokedAt, null);
    } finally {
      for (const c of clients) await c.close().catch(() => undefined);
      await d.stop();
    }
    assert.ok(!d.stderr().includes(CANARY));
  });
});

describe("the dead-man switch on PostgreSQL: two lessor serve processes share one deadline", { skip: PG_SKIP }, () => {
  test("heartbeats sent to A keep B's agents going; when they stop, B's agent loses its lease and its connection within about a second of the deadline", { timeout: 90_000 }, async () => {
    const { url, drop } = await testSchema();
    // 6 s: the loop below sends one every ~0.5 s plus an access; a loaded CI machine must not stretch that past the period.
    const config = (heartbeat: string): string => `[vault]\nstore = "postgres"\ndatabase_url = ${JSON.stringify(url)}\n${heartbeat}\n[server]\ntcp = "127.0.0.1:0"\n`;
    const homeA = await makeHome({ config: config(""), policy: POLICY });
    const homeB = await makeHome({ config: config(""), policy: POLICY });
    copyFileSync(join(homeA, "master.key"), join(homeB, "master.key"));
    const v = await openVault({ home: homeA, env: { LESSOR_HOME: homeA } });
    await v.admin().storeSecret({ name: "tok", value: CANARY });
    await v.close();
    // Armed by the daemons' own opens (not the seeding one above, which two slow starts could outlast).
    for (const h of [homeA, homeB]) writeFileSync(join(h, "lessor.toml"), config('heartbeat = "6s"\n'), { mode: 0o600 });
    const a = await startServe(homeA);
    const adminA = await LessorClient.connect({ socketPath: a.socket });
    await adminA.heartbeat();
    const b = await startServe(homeB);
    const clients: LessorClient[] = [adminA];
    try {
      const adminB = await LessorClient.connect({ socketPath: b.socket });
      clients.push(adminB);
      const t = await adminB.createToken({ name: "claude", role: "agent", agent: "claude", ttl: "1h" });
      const claude = await LessorClient.connect({ host: b.tcp!.host, port: b.tcp!.port }, { token: t.token, reconnect: false });
      clients.push(claude);
      const lease = await claude.requestLease({ secret: "tok", ttl: "10m" });
      for (let i = 0; i < 10; i++) {
        await adminA.heartbeat();
        await sleep(500);
        (await claude.accessSecret(lease.id, { domain: "api.example.com" })).value.wipe();
      }
      assert.equal((await adminB.describe()).heartbeat?.lastBy, (await adminA.whoami()).identity.id, "B reads the heartbeat A recorded");
      const due = (await adminA.heartbeat()).dueAt!;
      while (claude.connected && Date.now() < due + 6000) await sleep(20);
      assert.equal(claude.connected, false, "B's agent connection was closed");
      assert.ok(Date.now() - due < 3000, `closed ${Date.now() - due} ms after the deadline`);
      for (const admin of [adminA, adminB]) assert.equal((await admin.describe()).killswitch?.engaged, true);
      const fired = (await adminA.auditQuery({ types: ["killswitch"] })).filter((e) => e.actorId === "dead-man-switch");
      assert.equal(fired.length, 1, "the switch fired once, on one of the two");
      const [l] = await adminA.listLeases({ agent: "claude" });
      assert.notEqual(l!.revokedAt, null);
    } finally {
      for (const c of clients) await c.close().catch(() => undefined);
      await a.stop();
      await b.stop();
      await drop();
    }
  });
});

describe("lessor heartbeat and lessor status (the built CLI)", () => {
  test("heartbeat says when the switch fires, status shows it, --json gives the fields; with no setting it says how to arm one; a period out of range is refused naming the field", { timeout: 60_000 }, async () => {
    const home = await cliHome();
    await seedHome(home, POLICY, [{ name: "tok", value: CANARY }]);
    const off = await runCli(["heartbeat"], { home });
    assert.equal(off.code, 0, off.stderr);
    assert.match(off.stderr, /no dead-man switch is set: add heartbeat = "8h" \(or another period\) to \[vault\] in lessor\.toml/);
    assert.match((await runCli(["status"], { home })).stdout, /^heartbeat: +off \(no dead-man switch/m);

    const toml = join(home, "lessor.toml");
    writeFileSync(toml, `[vault]\nheartbeat = "1s"\n`, { mode: 0o600 });
    const bad = await runCli(["heartbeat"], { home });
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /\[vault\] heartbeat: expected a duration from "2s" to "366d"/);

    writeFileSync(toml, `[vault]\nheartbeat = "8h"\n`, { mode: 0o600 });
    const on = await runCli(["heartbeat", "--reason", "morning check"], { home });
    assert.equal(on.code, 0, on.stderr);
    assert.match(on.stdout, /^heartbeat recorded: the dead-man switch pulls the killswitch at \S+ \S+Z \(in 8h\) unless another comes\n$/);
    const j = JSON.parse((await runCli(["heartbeat", "--json"], { home })).stdout) as { everyMs: number; lastAt: number; lastBy: string; dueAt: number };
    assert.equal(j.everyMs, 8 * 3600_000);
    assert.equal(j.dueAt, j.lastAt + j.everyMs);
    assert.match((await runCli(["status"], { home })).stdout, /^heartbeat: +every 8h: the killswitch is pulled in (8h|7h59m\d*s?) without lessor heartbeat; last \S+ \S+Z by uid:\d+$/m);
    const audit = await runCli(["audit", "query", "--type", "heartbeat", "--json"], { home });
    assert.equal(audit.code, 0, audit.stderr);
    assert.ok((JSON.parse(audit.stdout) as { reason: string | null }[]).some((e) => e.reason === "morning check"));
  });
});

describe("the dead-man switch under a long-lived command with no daemon (lessor run, proxy, mcp embedded)", () => {
  test("an embedded long-lived backend fires it within about a second of the deadline with nothing asked, as the daemon does; a short-lived one does not watch", { timeout: 30_000 }, async () => {
    const home = await makeHome({ policy: POLICY, config: `[vault]\nheartbeat = "2s"\n` });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.admin().storeSecret({ name: "tok", value: CANARY });
    await v.close();
    const { openBackend } = await import("../src/backend/backend.js");
    const long = await openBackend({ home, env: { LESSOR_HOME: home }, longLived: true });
    try {
      assert.equal(long.mode, "embedded");
      const due = (await long.api.heartbeat()).dueAt!;
      const lease = await long.api.requestLease({ secret: "tok", agent: "claude", ttl: "10m" });
      // Nothing is asked from now on: the backend's own check must fire it.
      let fired: number | null = null;
      while (fired === null && Date.now() < due + 5000) {
        const db = new Database(join(home, "lessor.db"), { readonly: true });
        const row = db.prepare("SELECT revoked_at FROM leases WHERE id = ?").get(lease.id) as { revoked_at: number | null } | undefined;
        db.close();
        if (row?.revoked_at != null) fired = Date.now();
        else await sleep(50);
      }
      assert.ok(fired !== null, "the lease was not revoked by the dead-man switch with nothing asked");
      assert.ok(fired >= due, `fired ${due - fired} ms before the deadline`);
      assert.ok(fired - due < 2500, `fired ${fired - due} ms after the deadline`);
    } finally {
      await long.close();
    }
  });
});
