/**
 * record_refusal (src/vault/client-refusals.ts): a client's own refusal, written as an access_denied
 * row. A caller records only for agents it may act for, and its text reaches the trail only as one
 * line of plain text.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { agent, codeOf, makeVault, orchestrator } from "./helpers.js";

describe("record_refusal in the core", () => {
  test("one access_denied row naming the client, the agent, the secret, the host and why", async () => {
    const { vault } = await makeVault({ policy: "" });
    const admin = vault.admin();
    const claude = vault.session(agent("claude"));
    assert.deepEqual(await claude.recordRefusal({ secret: "github-token", domain: "git.example", by: "git-credential", reason: "the URL is plain http://" }), { recorded: true });
    assert.deepEqual(await admin.recordRefusal({ secret: "env:ci/token", by: "git-credential", reason: "git sent no host" }), { recorded: true });
    const rows = await admin.auditQuery({ types: ["access_denied"] });
    assert.deepEqual(
      rows.map((r) => ({ actor: r.actorId, agent: r.agent, secret: r.secret, domain: r.domain, lease: r.leaseId, outcome: r.outcome, reason: r.reason })),
      [
        { actor: "test:claude", agent: "claude", secret: "global/github-token", domain: "git.example", lease: null, outcome: "denied", reason: "access_denied: git-credential: the URL is plain http://" },
        { actor: rows[1]!.actorId, agent: null, secret: "env:ci/token", domain: null, lease: null, outcome: "denied", reason: "access_denied: git-credential: git sent no host" },
      ],
    );
    assert.equal((await admin.auditVerify()).ok, true);
  });

  test("an agent records only for itself, an orchestrator only for its agents: another is refused and audited as that refusal", async () => {
    const { vault } = await makeVault({ policy: "" });
    const admin = vault.admin();
    const claude = vault.session(agent("claude"));
    const orch = vault.session(orchestrator(["builder-*"]));
    const r = { secret: "github-token", by: "git-credential", reason: "x" };
    assert.equal(await codeOf(claude.recordRefusal({ ...r, agent: "victim" })), "access_denied");
    assert.equal(await codeOf(orch.recordRefusal({ ...r, agent: "victim" })), "access_denied");
    assert.deepEqual(await orch.recordRefusal({ ...r, agent: "builder-1" }), { recorded: true });
    const rows = await admin.auditQuery({ types: ["access_denied"] });
    assert.equal(rows.length, 3);
    assert.match(rows[0]!.reason!, /may not act as agent "victim"/);
    assert.match(rows[1]!.reason!, /not configured to act for agent "victim"/);
    assert.equal(rows[2]!.agent, "builder-1");
  });

  test("a client name, a reason, a secret or a host that is not plain and bounded is refused and writes nothing", async () => {
    const { vault } = await makeVault({ policy: "" });
    const admin = vault.admin();
    const claude = vault.session(agent("claude"));
    const ok = { secret: "github-token", by: "git-credential", reason: "x" };
    for (const bad of [
      { ...ok, by: "Git Credential" },
      { ...ok, by: "" },
      { ...ok, reason: "line\nbreak" },
      { ...ok, reason: "\u001b[2J" },
      { ...ok, reason: "\u202e" },
      { ...ok, reason: "a".repeat(301) },
      { ...ok, secret: "../x" },
      { ...ok, domain: "git.example\r\nX: y" },
    ])
      assert.equal(await codeOf(claude.recordRefusal(bad)), "invalid_request", JSON.stringify(bad));
    assert.equal((await admin.auditQuery({ types: ["access_denied"] })).length, 0);
  });
});
