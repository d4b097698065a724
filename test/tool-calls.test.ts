/**
 * record_tool_call (src/vault/tool-calls.ts) and an agent's view of its own access, list_granted and
 * explain (src/vault/own-access.ts), attacked by a hostile agent: it records tool calls only as itself,
 * lists only the secrets its grants cover, and explains only its own access, the rules naming other
 * agents left out. In the core, and through a real daemon (`lessor serve`) with an agent token, where
 * the registry's params schemas answer first.
 */
import assert from "node:assert/strict";
import { describe, test, before, after } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { agent, codeOf, grant, makeVault, orchestrator, refusalOf } from "./helpers.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";

const POLICY =
  `[[rule]]\nname = "no-shared-b"\neffect = "deny"\nagents = ["claude"]\nsecrets = ["shared-b"]\n` +
  grant("mine", ["claude"], ["github-token", "shared-*"], ["api.github.com"]) +
  grant("theirs", ["mallory-*", "victim"], ["victim-db", "shared-*"], ["db.victim.example"]) +
  grant("gated", ["claude"], ["deploy-key"], ["deploy.example"], 'approval = "required"');

const CANARY = "ghp_canary_" + "q".repeat(29);

/** Every value the attacks below try to smuggle into a row. */
const HOSTILE_TOOLS = ["", "list_secrets\u001b[2J", "a".repeat(65), "http_request?url=https://x/?token=" + CANARY, "9tool", "tool name", "tool\u202e", CANARY + "\n"];

describe("record_tool_call in the core", () => {
  test("an agent records its own tool calls: one tool_call row with the agent, the tool, the outcome, the code and the time", async () => {
    const { vault } = await makeVault({ policy: POLICY });
    const admin = vault.admin();
    const claude = vault.session(agent("claude"));
    assert.deepEqual(await claude.recordToolCall({ tool: "list_secrets", outcome: "ok", ms: 3.6 }), { recorded: true });
    assert.deepEqual(await claude.recordToolCall({ agent: "claude", tool: "request_access", outcome: "refused", code: "access_denied", ms: 12 }), { recorded: true });
    await claude.recordToolCall({ tool: "unknown", outcome: "error", code: "unknown_tool", ms: 0 });
    const rows = await admin.auditQuery({ types: ["tool_call"] });
    assert.deepEqual(
      rows.map((r) => ({ agent: r.agent, actor: r.actorId, outcome: r.outcome, reason: r.reason, detail: JSON.parse(r.detail!) })),
      [
        { agent: "claude", actor: "test:claude", outcome: "ok", reason: null, detail: { tool: "list_secrets", ms: 4 } },
        { agent: "claude", actor: "test:claude", outcome: "denied", reason: "access_denied", detail: { tool: "request_access", ms: 12 } },
        { agent: "claude", actor: "test:claude", outcome: "error", reason: "unknown_tool", detail: { tool: "unknown", ms: 0 } },
      ],
    );
    assert.equal((await admin.auditVerify()).ok, true);
  });

  test("an agent cannot record a tool call as another agent; an orchestrator only for its agents; each refusal is audited and writes no tool_call", async () => {
    const { vault } = await makeVault({ policy: POLICY });
    const admin = vault.admin();
    const mallory = vault.session(agent("mallory-1"));
    const forged = await refusalOf(mallory.recordToolCall({ agent: "claude", tool: "http_request", outcome: "ok", ms: 1 }));
    assert.equal(forged.code, "access_denied");
    assert.match(forged.message, /agent "mallory-1" may not act as agent "claude"/);
    assert.equal(await codeOf(vault.session(orchestrator(["ci-*"])).recordToolCall({ agent: "claude", tool: "revoke", outcome: "ok", ms: 1 })), "access_denied");
    assert.deepEqual(await vault.session(orchestrator(["ci-*"])).recordToolCall({ agent: "ci-7", tool: "revoke", outcome: "ok", ms: 1 }), { recorded: true });
    const rows = await admin.auditQuery({ types: ["tool_call"] });
    assert.deepEqual(rows.map((r) => r.agent), ["ci-7"], "only the orchestrator's own agent's call was written");
    const denials = await admin.auditQuery({ types: ["access_denied"] });
    assert.deepEqual(denials.map((d) => [d.actorId, d.agent]), [["test:mallory-1", "claude"], ["test:orch", "claude"]]);
    // An admin must say which agent the call was for.
    const unnamed = await refusalOf(admin.recordToolCall({ tool: "list_leases", outcome: "ok", ms: 1 }));
    assert.equal(unnamed.code, "invalid_request");
    assert.match(unnamed.message, /must name the agent/);
  });

  test("bad params are refused with a clear error that never quotes them, and write nothing", async () => {
    const { vault } = await makeVault({ policy: POLICY });
    const admin = vault.admin();
    const claude = vault.session(agent("claude"));
    const before = (await admin.status()).auditHead;
    for (const tool of HOSTILE_TOOLS) {
      const r = await refusalOf(claude.recordToolCall({ tool, outcome: "ok", ms: 1 }));
      assert.equal(r.code, "invalid_request", JSON.stringify(tool));
      assert.match(r.message, /^tool must be a tool name/);
      assert.ok(!r.message.includes(CANARY) && !r.message.includes("\u001b"), "the message does not quote the tool");
    }
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ tool: "x", outcome: "fine", ms: 1 }, /outcome must be one of ok, refused, error/],
      [{ tool: "x", outcome: "error", ms: 1 }, /code is required when outcome is "error"/],
      [{ tool: "x", outcome: "refused", code: "Access Denied", ms: 1 }, /code is required/],
      [{ tool: "x", outcome: "refused", code: "access_denied\nforged: row", ms: 1 }, /code is required/],
      [{ tool: "x", outcome: "refused", code: CANARY, ms: 1 }, /code is required/],
      [{ tool: "x", outcome: "refused", code: "some_token", ms: 1 }, /code is required/],
      [{ tool: "x", outcome: "ok", code: "access_denied", ms: 1 }, /leave it out when outcome is "ok"/],
      [{ tool: "x", outcome: "ok", ms: -1 }, /ms must be a number/],
      [{ tool: "x", outcome: "ok", ms: Number.NaN }, /ms must be a number/],
      [{ tool: "x", outcome: "ok", ms: Number.POSITIVE_INFINITY }, /ms must be a number/],
      [{ tool: "x", outcome: "ok", ms: 8 * 24 * 3600_000 }, /ms must be a number/],
      [{ tool: "x", outcome: "ok", ms: "5" }, /ms must be a number/],
      [{ tool: "x", outcome: "ok", ms: 1, agent: "claude\u001b]52;c;" }, /agent id/],
    ];
    for (const [p, re] of cases) {
      const r = await refusalOf(claude.recordToolCall(p as never));
      assert.equal(r.code, "invalid_request", JSON.stringify(p));
      assert.match(r.message, re);
      assert.ok(!r.message.includes(CANARY), "the message does not quote the code");
    }
    assert.equal((await admin.status()).auditHead, before, "no row was written for a refused report");
    assert.deepEqual(await admin.auditQuery({ types: ["tool_call"] }), []);
  });
});

describe("an agent's own access in the core", () => {
  test("list_granted: an agent lists only the secrets its grants cover (names, kinds, descriptions, its rule); never another agent's", async () => {
    const { vault } = await makeVault({ policy: POLICY });
    const admin = vault.admin();
    for (const name of ["github-token", "shared-a", "shared-b", "victim-db", "deploy-key", "unlisted"]) await admin.storeSecret({ name, value: `${CANARY}-${name}`, kind: "api_key", description: `the ${name}` });
    const claude = vault.session(agent("claude"));
    const mine = await claude.listGranted();
    assert.deepEqual(
      mine.map((s) => [s.name, s.rule, s.approval]),
      [
        ["deploy-key", "gated", "required"],
        ["github-token", "mine", "none"],
        ["shared-a", "mine", "none"],
      ],
      "shared-b is denied to claude by a rule, victim-db and unlisted are not granted",
    );
    assert.deepEqual(mine.find((s) => s.name === "github-token"), { scope: "global", name: "github-token", kind: "api_key", description: "the github-token", rule: "mine", domains: ["api.github.com"], anyDomain: false, approval: "none" });
    const text = JSON.stringify(mine);
    assert.ok(!text.includes("victim") && !text.includes("theirs") && !text.includes("unlisted") && !text.includes(CANARY), "nothing of another agent's grants, no value");
    assert.deepEqual((await claude.listGranted({ namePrefix: "shared" })).map((s) => s.name), ["shared-a"]);

    const stolen = await refusalOf(claude.listGranted({ agent: "victim" }));
    assert.equal(stolen.code, "access_denied");
    assert.match(stolen.message, /only for itself, not for agent "victim"/);
    const denial = (await admin.auditQuery({ types: ["access_denied"], order: "desc", limit: 1 }))[0]!;
    assert.equal(denial.actorId, "test:claude");
    assert.equal(denial.agent, "victim");

    assert.deepEqual((await admin.listGranted({ agent: "victim" })).map((s) => s.name), ["shared-a", "shared-b", "victim-db"], "an admin lists any agent's grants");
    assert.equal(await codeOf(admin.listGranted()), "invalid_request", "an admin names the agent");
    assert.equal(await codeOf(vault.session(orchestrator(["ci-*"])).listGranted({ agent: "victim" })), "access_denied");
  });

  test("explain: an agent explains only its own access, without the rules naming other agents; another agent's is refused and audited", async () => {
    const { vault } = await makeVault({ policy: POLICY });
    const admin = vault.admin();
    const claude = vault.session(agent("claude"));
    const ref = { scope: "global", name: "victim-db" };
    const own = await claude.explain("claude", ref, "db.victim.example");
    assert.equal(own.allow, false);
    assert.deepEqual(own.steps.map((s) => s.rule), ["no-shared-b", "mine", "gated"], "only the rules that name claude");
    assert.ok(!JSON.stringify(own).includes("theirs") && !JSON.stringify(own).includes("mallory"), "nothing of the rule naming other agents");
    assert.equal((await admin.explain("claude", ref)).steps.some((s) => s.rule === "theirs"), true, "an admin still sees every step");

    const other = await refusalOf(claude.explain("victim", ref, "db.victim.example"));
    assert.equal(other.code, "access_denied");
    assert.match(other.message, /agent "claude" may explain access only for itself, not for agent "victim"/);
    const denial = (await admin.auditQuery({ types: ["access_denied"], order: "desc", limit: 1 }))[0]!;
    assert.deepEqual([denial.actorId, denial.agent], ["test:claude", "victim"]);
  });
});

describe("record_tool_call, list_granted and explain through a real daemon, as an agent token", () => {
  let d: RunningDaemon;
  let claude: LessorClient;
  let admin: LessorClient;
  before(async () => {
    const home = await makeHome({ config: `[server]\ntcp = "127.0.0.1:0"\n`, policy: POLICY });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    for (const name of ["github-token", "victim-db"]) await v.admin().storeSecret({ name, value: `${CANARY}-${name}`, description: `the ${name}` });
    await v.close();
    d = await startServe(home);
    admin = await LessorClient.connect({ socketPath: d.socket });
    const t = await admin.createToken({ name: "claude", role: "agent", agent: "claude", ttl: "1h" });
    claude = await LessorClient.connect({ host: "127.0.0.1", port: d.tcp!.port }, { token: t.token });
  });
  after(async () => {
    await claude?.close();
    await admin?.close();
    await d?.stop();
  });

  test("the agent records its own call; naming another agent is refused and audited; the row names the token's agent", async () => {
    assert.deepEqual(await claude.api.record_tool_call({ tool: "http_request", outcome: "ok", ms: 41 }), { recorded: true });
    const forged = await refusalOf(claude.api.record_tool_call({ agent: "victim", tool: "http_request", outcome: "ok", ms: 1 }));
    assert.equal(forged.code, "access_denied");
    const rows = await admin.api.audit_query({ types: ["tool_call"] });
    assert.equal(rows.length, 1);
    assert.equal(rows[0]!.agent, "claude");
    assert.equal(rows[0]!.actorRole, "agent");
    assert.deepEqual(rows[0]!.detail, { tool: "http_request", ms: 41 });
    const denials = await admin.api.audit_query({ types: ["access_denied"], agent: "victim" });
    assert.equal(denials.length, 1);
  });

  test("bad params are refused by the daemon with a clear invalid_request naming the field, and the connection keeps serving", async () => {
    const before = (await admin.status()).auditHead;
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ tool: "list_secrets\u001b[2J", outcome: "ok", ms: 1 }, /tool/],
      [{ tool: "x".repeat(65), outcome: "ok", ms: 1 }, /tool/],
      [{ tool: CANARY + "?q=1", outcome: "ok", ms: 1 }, /tool/],
      [{ tool: "x", outcome: "maybe", ms: 1 }, /outcome/],
      [{ tool: "x", outcome: "error", code: "E\u0000", ms: 1 }, /code/],
      [{ tool: "x", outcome: "ok", ms: -5 }, /ms/],
      [{ tool: "x", outcome: "ok", ms: 1, arguments: { secret: CANARY } }, /arguments/],
      [{ tool: "x", outcome: "error", ms: 1 }, /code is required/],
    ];
    for (const [p, re] of cases) {
      const r = await refusalOf(claude.call("record_tool_call", p as never));
      assert.equal(r.code, "invalid_request", JSON.stringify(p));
      assert.match(r.message, re);
      assert.ok(!r.message.includes(CANARY) && !r.message.includes("\u001b"), "the error never quotes what was sent");
    }
    assert.equal((await admin.status()).auditHead, before, "nothing was written");
    assert.equal((await claude.whoami()).identity.agent, "claude", "still serving");
  });

  test("list_granted and explain as the agent: its own names only; another agent's access refused", async () => {
    const listed = await claude.api.list_granted({});
    assert.deepEqual(listed.map((s) => s.name), ["github-token"]);
    assert.ok(!JSON.stringify(listed).includes("victim"));
    assert.equal((await refusalOf(claude.api.list_granted({ agent: "victim" }))).code, "access_denied");
    const own = await claude.explain("claude", "github-token", "api.github.com");
    assert.equal(own.allow, true);
    assert.equal(own.rule, "mine");
    assert.equal((await refusalOf(claude.explain("victim", "victim-db"))).code, "access_denied");
    // Still admin-only: the inventory of every secret.
    assert.equal((await refusalOf(claude.listSecrets())).code, "access_denied");
  });
});
