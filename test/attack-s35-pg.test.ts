/**
 * An attack pass on a team server (two real `lessor serve` daemons, A and B, on one PostgreSQL schema;
 * docs/team.md, docs/storage.md "PostgreSQL"), after test/attack-pgraces, attack-pg-notify,
 * attack-pgcaches, attack-pg-auditcut, attack-pg-clock-step, attack-brakes-team and
 * postgres-team-attacks:
 * - the dead-man switch when the daemon that took the last heartbeat (and armed the deadline) is
 *   killed (SIGKILL): B alone must fire it, revoke the lease and cut B's agent (held);
 * - broken and fixed here: the same when the instance that died was the only one *in line* and B is
 *   stale on another [vault] limit (same heartbeat period): a stale instance never fired the switch
 *   (src/vault/heartbeat.ts checkDeadman returned at once), so with the in-line daemon dead nothing
 *   fired, the lease stayed live and B kept its agents' connections (and the leases its proxies
 *   watch confirmed). Now a stale instance fires by the period the stamp pins as in force;
 * - one approval decided at once from both daemons (approve on A, deny on B, many times each): one
 *   decision stands, one decision event (held);
 * - a mixed burst from both daemons at once (lease+access, grants, uses of one capped lease, a
 *   revocation by agent, the killswitch pulled and released on A) and then `lessor audit verify`, the
 *   real CLI, on each home: one chain, verified, with every acknowledged use in it once (held);
 * - `audit verify` through both daemons again and again during such a burst: never a false "broken" (held).
 * Needs LESSOR_TEST_PG_URL; skips with the reason without it.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { describe, test, type TestContext } from "node:test";
import { promisify } from "node:util";
import { LessorClient } from "../src/client/index.js";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CLI, startServe, type RunningDaemon } from "./daemon-harness.js";
import { grant, within } from "./helpers.js";
import { admin, PG_SKIP } from "./pg-helpers.js";
import { auditRowsHolding, pgTeam, type PgTeam } from "./pg-team.js";

type Coded = Error & { code?: string };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const run = promisify(execFile);

const HOST = "api.s35pg.example";
const DOM = { domain: HOST };
const CANARY = "ghp_" + "S35PgCaNaRy" + randomBytes(10).toString("hex");
const POLICY = [
  grant("open", ["bot", "claude", "carl"], ["tok"], [HOST], 'ttl = "1h"'),
  grant("capped", ["capped"], ["tok"], [HOST], 'ttl = "1h"\nmax_uses = 7'),
  grant("oneshot", ["shot1", "shot2"], ["tok"], [HOST], 'ttl = "1h"\nmax_uses = 1'),
  grant("guarded", ["bob"], ["tok"], [HOST], 'approval = "required"'),
].join("\n");

const team = (t: TestContext, vault?: string): Promise<PgTeam> =>
  pgTeam(t, { policy: POLICY, ...(vault ? { vault } : {}), seed: async (v) => void (await v.admin().storeSecret({ name: "tok", value: CANARY })) });

async function agentOn(tm: PgTeam, d: RunningDaemon, agent: string): Promise<LessorClient> {
  const tok = await tm.adminA.createToken({ name: `${agent}-${randomBytes(3).toString("hex")}`, role: "agent", agent });
  const c = await LessorClient.connect(d.tcp!, { token: tok.token, reconnect: false });
  tm.closeLater(c);
  return c;
}

const det = (e: { detail?: unknown }): Record<string, unknown> => (typeof e.detail === "string" ? JSON.parse(e.detail) : ((e.detail as Record<string, unknown> | null | undefined) ?? {}));

/** `lessor audit verify --json` (the built CLI) on `home`: exit code and output. */
async function cliVerify(home: string): Promise<{ code: number; out: string }> {
  try {
    const r = await run(process.execPath, ["--import", "tsx", CLI, "--home", home, "audit", "verify"], { env: { PATH: process.env.PATH, HOME: process.env.HOME, LESSOR_HOME: home }, timeout: 20_000 });
    return { code: 0, out: r.stdout + r.stderr };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof x.code === "number" ? x.code : -1, out: `${x.stdout ?? ""}${x.stderr ?? ""}` };
  }
}

describe("a team server's promises across daemons, attacked (s35)", { skip: PG_SKIP }, () => {
  test("the dead-man switch armed by A's heartbeat fires on B after A is killed (SIGKILL): B's lease revoked, B's agent cut, one killswitch event", { timeout: 30_000 }, async (t) => {
    const tm = await team(t, 'heartbeat = "3s"');
    const agentB = await agentOn(tm, tm.b, "claude");
    await tm.adminA.heartbeat();
    const lease = await agentB.requestLease({ secret: "tok", domains: [HOST] });
    const t0 = Date.now();
    assert.notEqual(await tm.a.stop("SIGKILL"), 0);
    await within(6000, "B firing the dead-man switch with A dead (B's agent cut)", () => !agentB.connected, 20);
    const took = Date.now() - t0;
    const row = (await admin(`SELECT revoked_at FROM ${tm.schema}.leases WHERE id = $1`, [lease.id])).rows[0];
    assert.notEqual(row.revoked_at, null, "the lease B granted is revoked");
    assert.ok(took < 7000, `fired ${took} ms after the kill (heartbeat 3 s)`);
    await sleep(1200);
    const fired = (await tm.adminB.auditQuery({ types: ["killswitch"], limit: 100 })).filter((e) => det(e).engaged === true);
    assert.equal(fired.length, 1, "one killswitch event");
    const onB = await agentOn(tm, tm.b, "claude").catch((e: Coded) => e);
    if (onB instanceof LessorClient) await assert.rejects(onB.requestLease({ secret: "tok", domains: [HOST] }), (e: Coded) => e.code === "access_denied");
    const v = await tm.adminB.auditVerify();
    assert.equal(v.ok, true, v.problem);
  });

  // docs/security.md, the dead-man switch: "a daemon fires it within about a second of the deadline and
  // closes the agents' connections"; docs/team.md: "the instances in line fire by theirs". B's
  // heartbeat period is the one in force, but another [vault] limit of B's differs (B is stale on
  // max_live_leases_per_agent). The only instance in line (A) dies: nobody fires the switch.
  test("the dead-man switch in force (6 s) when the only instance in line dies: B, on the same heartbeat but stale on another limit, fires it (lease revoked, B's agent cut)", { timeout: 30_000 }, async (t) => {
    const tm = await team(t, 'heartbeat = "6s"');
    // A restarted with one other limit: its limits are put in force, B (same heartbeat) is stale.
    await tm.adminB.heartbeat(); // (the restart must not outlast the deadline)
    assert.equal(await tm.a.stop(), 0);
    const cfgA = join(tm.a.home, "lessor.toml");
    writeFileSync(cfgA, readFileSync(cfgA, "utf8").replace('heartbeat = "6s"', 'heartbeat = "6s"\nmax_live_leases_per_agent = 50'), { mode: 0o600 });
    const a2 = await startServe(tm.a.home);
    tm.daemons.push(a2);
    const adminA2 = await LessorClient.connect({ socketPath: a2.socket });
    tm.closeLater(adminA2);
    await adminA2.heartbeat();
    await within(3000, "B stale on max_live_leases_per_agent", async () => ((await tm.adminB.describe()).policy.stale?.limits ?? []).includes("max_live_leases_per_agent"));
    assert.deepEqual((await tm.adminB.describe()).policy.stale?.limits, ["max_live_leases_per_agent"], "B's heartbeat is the one in force");
    const tok = await adminA2.createToken({ name: `claude-${randomBytes(3).toString("hex")}`, role: "agent", agent: "claude" });
    const agentA = await LessorClient.connect(a2.tcp!, { token: tok.token, reconnect: false });
    tm.closeLater(agentA);
    const agentB = await LessorClient.connect(tm.b.tcp!, { token: tok.token, reconnect: false });
    tm.closeLater(agentB);
    await adminA2.heartbeat();
    const lease = await agentA.requestLease({ secret: "tok", domains: [HOST] });
    const beat = Date.now();
    assert.notEqual(await a2.stop("SIGKILL"), 0);
    // The deadline (6 s after the heartbeat) and two seconds more.
    await sleep(Math.max(0, beat + 8000 - Date.now()));
    const row = (await admin(`SELECT revoked_at FROM ${tm.schema}.leases WHERE id = $1`, [lease.id])).rows[0];
    const onB = (await tm.adminB.listLeases({ agent: "claude" })).find((l) => l.id === lease.id);
    const engaged = (await tm.adminB.describe()).killswitch.engaged;
    assert.ok(
      row.revoked_at !== null && engaged && !agentB.connected,
      `8 s after the last heartbeat (period 6 s in force) nothing fired: killswitch engaged=${engaged}, lease revoked_at=${row.revoked_at}, B lists it ${JSON.stringify(onB && { revokedAt: onB.revokedAt, expiresAt: onB.expiresAt })}, B's agent connected=${agentB.connected}`,
    );
  });

  test("one approval decided at once from A (approve) and B (deny), 8 times each: one decision stands, one decision event, and the lease follows it", { timeout: 30_000 }, async (t) => {
    const tm = await team(t);
    const bobA = await agentOn(tm, tm.a, "bob");
    const bobB = await agentOn(tm, tm.b, "bob");
    const ask = (await bobB.api.approval_request({ secret: "tok", domains: [HOST] })) as { required: boolean; approval: { id: string } };
    assert.equal(ask.required, true);
    const id = ask.approval.id;
    const tries = await Promise.allSettled(Array.from({ length: 16 }, (_, i) => (i % 2 ? tm.adminB.api.approval_decide({ id, approve: false }) : tm.adminA.api.approval_decide({ id, approve: true }))));
    const ok = tries.map((r, i) => ({ r, approve: i % 2 === 0 })).filter((x) => x.r.status === "fulfilled");
    for (const r of tries) if (r.status === "rejected") assert.equal((r.reason as Coded).code, "invalid_request", String(r.reason));
    assert.equal(ok.length, 1, `${ok.length} decisions of one approval succeeded`);
    const events = (await tm.adminA.auditQuery({ types: ["approval_granted", "approval_denied"], limit: 1000 })).filter((e) => det(e).approval === id && det(e).requested_by !== undefined && e.outcome === (e.type === "approval_granted" ? "ok" : "denied"));
    assert.equal(events.length, 1, `decision events: ${JSON.stringify(events.map((e) => e.type))}`);
    const takes = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => (i % 2 ? bobA : bobB).requestLease({ secret: "tok", domains: [HOST] })));
    assert.equal(takes.filter((r) => r.status === "fulfilled").length, ok[0]!.approve ? 1 : 0);
    for (const c of [tm.adminA, tm.adminB]) {
      const v = await c.auditVerify();
      assert.equal(v.ok, true, v.problem);
    }
  });

  test("a mixed burst from A and B at once, agents' leases revoked on A and on B in its middle: `lessor audit verify` (CLI) passes on both homes, every acknowledged use is one event, the capped lease gave 7 values", { timeout: 30_000 }, async (t) => {
    const tm = await team(t);
    const agents = await Promise.all(
      [tm.a, tm.b, tm.a, tm.b].flatMap((d) => [agentOn(tm, d, "bot"), agentOn(tm, d, "claude"), agentOn(tm, d, "capped")]),
    );
    const capped = await agents[2]!.requestLease({ secret: "tok", domains: [HOST] });
    const revokeMidway = (async () => {
      await sleep(60);
      await tm.adminB.revokeAllForAgent("claude", "drill");
      await sleep(40);
      await tm.adminA.revokeAllForAgent("bot", "drill");
    })();
    let okUses = 0;
    const leases: string[] = [];
    const work = Array.from({ length: 180 }, async (_, i) => {
      const c = agents[i % agents.length]!;
      try {
        if (i % 3 === 2) {
          const r = await c.accessSecret(capped.id, DOM);
          r.value.wipe();
          okUses++;
        } else if (i % 2 === 0) {
          const r = await c.leaseAndAccess({ secret: "tok", domains: [HOST] }, DOM);
          r.value.wipe();
          leases.push(r.lease.id);
          okUses++;
        } else {
          leases.push((await c.requestLease({ secret: "tok", domains: [HOST] })).id);
        }
      } catch (e) {
        assert.ok(["access_denied", "lease_exhausted", "lease_revoked", "rate_limited"].includes((e as Coded).code ?? ""), String(e));
      }
    });
    await Promise.all([...work, revokeMidway]);
    const cappedUses = (await admin(`SELECT uses FROM ${tm.schema}.leases WHERE id = $1`, [capped.id])).rows[0].uses;
    assert.ok(cappedUses <= 7, `the capped lease counted ${cappedUses} uses`);
    const accessed = (await tm.adminA.auditQuery({ types: ["secret_accessed"], limit: 10_000 })).filter((e) => e.outcome === "ok");
    assert.equal(accessed.length, okUses, `${okUses} acknowledged values, ${accessed.length} secret_accessed events`);
    const heads = (await admin(`SELECT count(*)::int AS n, max(seq)::int AS m, min(seq)::int AS lo FROM ${tm.schema}.audit`)).rows[0];
    assert.equal(heads.n, heads.m - heads.lo + 1, "a gap in the audit seqs");
    for (const home of [tm.a.home, tm.homeB]) {
      const v = await cliVerify(home);
      assert.equal(v.code, 0, `lessor audit verify on ${home}: ${v.out}`);
      assert.ok(!v.out.includes(CANARY));
    }
    // And with both daemons stopped (the CLI's own embedded vault).
    await Promise.all(tm.daemons.map((d) => d.stop()));
    for (const home of [tm.a.home, tm.homeB]) {
      const v = await cliVerify(home);
      assert.equal(v.code, 0, `lessor audit verify (no daemon) on ${home}: ${v.out}`);
    }
    assert.equal(await auditRowsHolding(tm.schema, CANARY), 0);
  });
});

describe("audit verify while two daemons commit (s35)", { skip: PG_SKIP }, () => {
  test("`audit verify` on A and on B, run again and again while both daemons grant and use at full speed, never reports a broken chain", { timeout: 30_000 }, async (t) => {
    const tm = await team(t);
    const agents = await Promise.all([tm.a, tm.b, tm.a, tm.b, tm.a, tm.b].map((d, i) => agentOn(tm, d, i % 2 ? "shot1" : "shot2")));
    let stop = false;
    const load = agents.map(async (c) => {
      while (!stop) {
        const r = await c.leaseAndAccess({ secret: "tok", domains: [HOST] }, DOM);
        r.value.wipe();
      }
    });
    const problems: string[] = [];
    let verifies = 0;
    const deadline = Date.now() + 6000;
    const verifiers = [tm.adminA, tm.adminB].map(async (c) => {
      while (Date.now() < deadline) {
        const v = await c.auditVerify();
        verifies++;
        if (!v.ok) problems.push(String(v.problem));
      }
    });
    await Promise.all(verifiers);
    stop = true;
    await Promise.all(load);
    assert.deepEqual(problems, [], `${problems.length} of ${verifies} verifies failed while both committed`);
    assert.ok(verifies > 4);
  });
});
