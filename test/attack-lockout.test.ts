/**
 * Attacks on the brakes (the killswitch lockout and the dead-man switch) and on use counting:
 *
 * - Approval requests during a lockout. The killswitch withdraws every approval not yet used (a
 *   person's decision from before the emergency must not grant after it), and no lease is granted
 *   while it is engaged. But asking for an approval (approval_request: the SDK, lessor mcp's
 *   request_access, an orchestrator acting for an agent) read no lockout: a hostile agent queued its
 *   requests in the middle of the incident, they outlived the release, and the person faced them
 *   right after it (and could approve them during the lockout, for a lease waiting for the release).
 *   The promise now: while the lockout is engaged (by hand, or by the dead-man switch, which a call
 *   past its deadline fires), no approval is opened and none is granted (a denial still goes); each
 *   refusal is access_denied and audited; after the release the request is asked afresh.
 *   Paths: an embedded vault (agent and orchestrator), a real `lessor serve` whose lockout another
 *   process (an embedded openVault on the same SQLite file) engaged.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, describe, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { makeHome, startServe } from "./daemon-harness.js";
import { agent, clock, grant, makeVault, orchestrator, refusalOf } from "./helpers.js";

const CANARY = `CANARY_lockout_${randomBytes(12).toString("hex")}`;
const DOMAIN = "api.example.com";
const MIN = 60_000;
const GATED = grant("gated", ["claude", "ci-*"], ["deploy"], [DOMAIN], 'approval = "required"');
const seen: string[] = [];

after(() => {
  for (const s of seen) assert.ok(!s.includes(CANARY), "the canary appears in an answer, a log line or the trail");
});

describe("approval requests while the killswitch is engaged (embedded vault)", () => {
  test("an agent's and an orchestrator's approval requests during the lockout are refused (access_denied, audited), open nothing, and an approval cannot be granted; after the release the request is asked afresh", async () => {
    const c = clock();
    const t = await makeVault({ policy: GATED, now: c.now });
    const admin = t.vault.admin();
    await admin.storeSecret({ name: "deploy", value: CANARY });
    const claude = t.vault.session(agent("claude"));
    const ci = t.vault.session(orchestrator(["ci-*"]));
    await admin.killswitch("token leaked in a log");

    // The agent (its SDK, or lessor mcp's request_access) and an orchestrator acting for ci-7 ask.
    const asks = [
      () => claude.requestApproval({ secret: "deploy", domains: [DOMAIN], reason: "deploy during the incident" }),
      () => ci.requestApproval({ agent: "ci-7", secret: "deploy", domains: [DOMAIN], reason: "queued job" }),
    ];
    for (const ask of asks)
      for (let i = 0; i < 3; i++) {
        const e = await refusalOf(ask());
        assert.equal(e.code, "access_denied", `an approval request was accepted during the lockout: ${e.code} ${e.message}`);
        assert.match(e.message, /killswitch is engaged.*no approval can be asked for/);
      }
    assert.deepEqual(await admin.listApprovals({ all: true }), [], "nothing was queued for the person during the lockout");
    const refusals = (await admin.auditQuery({ types: ["access_denied"] })).filter((e) => /no approval can be asked for/.test(e.reason ?? ""));
    assert.equal(refusals.length, 6, "each refusal is audited");
    assert.deepEqual([...new Set(refusals.map((e) => e.actorId))].sort(), ["test:claude", "test:orch"]);
    assert.equal((await admin.auditQuery({ types: ["approval_requested"] })).length, 0);

    // After the release, the same request opens a fresh approval a person must decide; granting it works again.
    await admin.releaseKillswitch("investigated");
    const fresh = await claude.requestApproval({ secret: "deploy", domains: [DOMAIN], reason: "deploy" });
    assert.ok(fresh.required && fresh.created && fresh.approval.state === "pending");
    // Engaged again before the person decides: the pending one is withdrawn, and an approval cannot be granted.
    await admin.killswitch("second incident");
    const e = await refusalOf(admin.decideApproval(fresh.approval.id, true));
    assert.notEqual(e.code, "resolved", "an approval was granted during the lockout");
    await admin.releaseKillswitch("ok");
    assert.equal((await refusalOf(claude.requestLease({ secret: "deploy", domains: [DOMAIN] }))).code, "access_denied");
    assert.equal((await admin.listLeases({ agent: "claude" })).length, 0);
    seen.push(JSON.stringify(await admin.auditQuery({})));
  });

  test("a person's approval given past the dead-man deadline (no daemon watching) fires the switch and is refused: nothing granted, the approval withdrawn", async () => {
    const c = clock();
    // The dead-man switch: a pending approval from before the deadline, the deadline passes with no
    // daemon watching, and the admin approves (not a heartbeat): the switch fires first and the approval is not granted.
    const t = await makeVault({ policy: GATED, now: c.now, limits: { heartbeatMs: MIN } });
    const admin = t.vault.admin();
    await admin.storeSecret({ name: "deploy", value: CANARY });
    const claude = t.vault.session(agent("claude"));
    const asked = await claude.requestApproval({ secret: "deploy", domains: [DOMAIN] });
    assert.ok(asked.required);
    c.advance(MIN + 5000);
    const e = await refusalOf(admin.decideApproval(asked.approval.id, true, "looks fine"));
    assert.equal(e.code, "access_denied", `an approval was granted past the dead-man deadline: ${e.code} ${e.message}`);
    assert.match(e.message, /killswitch is engaged.*by dead-man-switch.*no approval is granted/);
    const ks = (await admin.describe()).killswitch;
    assert.deepEqual([ks.engaged, ks.by], [true, "dead-man-switch"], "the approval past the deadline fired the switch");
    assert.equal((await admin.auditQuery({ types: ["approval_granted"] })).length, 0);
    // A request past the deadline, as the agent's: refused the same way.
    const r2 = await refusalOf(claude.requestApproval({ secret: "deploy", domains: [DOMAIN], maxUses: 2 }));
    assert.equal(r2.code, "access_denied");
    assert.match(r2.message, /no approval can be asked for/);
    assert.deepEqual(await admin.listApprovals({ all: true }), []);
  });

  test("the dead-man deadline passed with no daemon watching: the agent's approval request fires the switch and is refused", async () => {
    const c = clock();
    const t = await makeVault({ policy: GATED, now: c.now, limits: { heartbeatMs: MIN } });
    const admin = t.vault.admin();
    await admin.storeSecret({ name: "deploy", value: CANARY });
    const claude = t.vault.session(agent("claude"));
    c.advance(MIN + 5000);
    const e = await refusalOf(claude.requestApproval({ secret: "deploy", domains: [DOMAIN], reason: "unattended" }));
    assert.equal(e.code, "access_denied", `an approval was opened past the dead-man deadline: ${e.code} ${e.message}`);
    assert.deepEqual(await admin.listApprovals({ all: true }), []);
    const ks = (await admin.describe()).killswitch;
    assert.deepEqual([ks.engaged, ks.by], [true, "dead-man-switch"]);
    assert.equal((await admin.auditQuery({ types: ["killswitch"] })).length, 1, "the firing is audited once");
  });
});

describe("a real lessor serve whose lockout another process engaged", () => {
  test("the killswitch pulled by an embedded openVault on the same SQLite file: the daemon's agent cannot queue approvals; after the release nothing from the lockout waits for the person", { timeout: 60_000 }, async () => {
    const config = `[server]\ntcp = "127.0.0.1:0"\n`;
    const home = await makeHome({ policy: GATED, config });
    const d = await startServe(home);
    const clients: LessorClient[] = [];
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      const admin = await LessorClient.connect({ socketPath: d.socket });
      clients.push(admin);
      await admin.api.store_secret({ name: "deploy", value: CANARY });
      const mk = async (name: string): Promise<LessorClient> => {
        const tk = await admin.createToken({ name, role: "agent", agent: "claude", ttl: "1h" });
        const cl = await LessorClient.connect({ host: d.tcp!.host, port: d.tcp!.port }, { token: tk.token, reconnect: false });
        clients.push(cl);
        return cl;
      };
      // The killswitch is pulled from another process (the embedded vault), not through the daemon.
      await v.admin().killswitch("pulled from the laptop");
      // The daemon notices within about a second and closes its agents' connections; the agent reconnects.
      const claude = await mk("claude-during");
      const e = await refusalOf(claude.api.approval_request({ secret: "deploy", domains: [DOMAIN], reason: "during the lockout" }));
      seen.push(e.message);
      assert.equal(e.code, "access_denied", `the daemon opened an approval during a lockout another process engaged: ${e.code} ${e.message}`);
      assert.match(e.message, /killswitch is engaged/);
      assert.deepEqual(await admin.api.approval_list({ all: true }), []);
      await v.admin().releaseKillswitch("done");
      assert.deepEqual(await admin.api.approval_list({ all: true }), [], "nothing from the lockout waits for the person after the release");
      const rows = await admin.api.audit_query({ types: ["access_denied"], limit: 100 });
      assert.ok(
        rows.some((r) => String(r.actorId).startsWith("token:claude-during/") && /no approval can be asked for/.test(r.reason ?? "")),
        "the daemon's refusal is audited under the agent's token",
      );
      seen.push(JSON.stringify(rows));
    } finally {
      await v.close();
      for (const c of clients) await c.close().catch(() => undefined);
      await d.stop();
    }
    seen.push(d.stderr());
  });
});

