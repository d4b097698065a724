/**
 * `lessor revoke --agent A` (revoke_all_for_agent) and an approval a person gave A before it, not yet
 * taken up: the revocation left the approval approved, so A took a brand-new lease on it at once,
 * with no person asked again; now it is withdrawn with the leases (the killswitch withdraws such approvals as "a lease in waiting").
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { DaemonConn, makeHome, startServe } from "./daemon-harness.js";

const CANARY = `CANARY_${randomBytes(16).toString("hex")}`;
const DOMAIN = "api.example.com";
const POLICY = `[[rule]]\nname = "gated"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["deploy"]\ndomains = ["${DOMAIN}"]\napproval = "required"\n`;
const CONFIG = `[server]\ntcp = "127.0.0.1:0"\n`;

test("attack: revoke --agent claude withdraws claude's approved approval: no new lease on it without a person asked again", async () => {
  const d = await startServe(await makeHome({ config: CONFIG, policy: POLICY }));
  const conns: DaemonConn[] = [];
  try {
    const admin = await DaemonConn.admin(d);
    conns.push(admin);
    await admin.okResult("store_secret", { name: "deploy", value: CANARY });
    const t = await admin.okResult("token_create", { name: "claude", role: "agent", agent: "claude" });
    const claude = await DaemonConn.provedToken(d, t.token);
    conns.push(claude);
    const ask = { secret: "deploy", domains: [DOMAIN], ttl: "5m" };
    // First lease, approved and taken.
    const { approval: a1 } = await claude.okResult("approval_request", { ...ask, reason: "first" });
    await admin.okResult("approval_decide", { id: a1.id, approve: true });
    await claude.okResult("request_lease", ask);
    // A second approval approved, not yet taken up.
    const { approval: a2 } = await claude.okResult("approval_request", { ...ask, reason: "second" });
    await admin.okResult("approval_decide", { id: a2.id, approve: true });
    // The owner sees claude misbehave and revokes everything of claude's.
    const r = await admin.okResult("revoke_all_for_agent", { agent: "claude", reason: "claude went rogue" });
    assert.equal(r.revoked, 1);
    const got = await claude.call("request_lease", ask);
    assert.equal(got.ok, false, `after revoke --agent claude, claude took a fresh lease ${got.result?.id} on approval ${a2.id} decided before the revocation, with no person asked`);
  } finally {
    for (const c of conns) c.close();
    await d.stop();
  }
});

test("attack: a run's session token revoking claude's leases withdraws only the approvals it asked for, not another requester's", async () => {
  const d = await startServe(await makeHome({ config: CONFIG, policy: POLICY }));
  const conns: DaemonConn[] = [];
  try {
    const admin = await DaemonConn.admin(d);
    conns.push(admin);
    await admin.okResult("store_secret", { name: "deploy", value: CANARY });
    const plain = await admin.okResult("token_create", { name: "claude", role: "agent", agent: "claude" });
    const sess = await admin.okResult("token_create", { name: "run", role: "agent", agent: "claude", session: true });
    const claude = await DaemonConn.provedToken(d, plain.token);
    const run = await DaemonConn.provedToken(d, sess.token);
    conns.push(claude, run);
    const ask = { secret: "deploy", domains: [DOMAIN], ttl: "5m" };
    const { approval: mine } = await run.okResult("approval_request", { ...ask, reason: "the run's" });
    const { approval: theirs } = await claude.okResult("approval_request", { ...ask, reason: "another requester's" });
    await admin.okResult("approval_decide", { id: mine.id, approve: true });
    await admin.okResult("approval_decide", { id: theirs.id, approve: true });
    await run.okResult("revoke_all_for_agent", { agent: "claude", reason: "the run ends" });
    const list = await admin.okResult("approval_list", { all: true });
    const state = (id: string) => (list as { id: string; state: string }[]).find((a) => a.id === id)?.state;
    assert.notEqual(state(mine.id), "approved", "the session's own approval is withdrawn");
    assert.equal(state(theirs.id), "approved", "another requester's approval is left alone");
    const got = await claude.call("request_lease", ask);
    assert.equal(got.ok, true, "the other requester still takes its lease on its approval");
  } finally {
    for (const c of conns) c.close();
    await d.stop();
  }
});
