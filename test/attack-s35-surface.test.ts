/**
 * What an agent learns through the vault protocol beyond its grant: every method role agent may call
 * (status, describe, whoami, list_granted, explain, request_lease, approval_request, list_leases,
 * record_refusal, ...), called by an agent token on a real daemon and by an embedded `lessor run
 * --vault-session` session, with hostile params. Neither the daemon's nor lessor run's pid, nor the
 * token names and ids of the orchestrator and the admin acting around it, nor whether a secret it is
 * not granted exists.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { LessorClient } from "../src/client/client.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import type { Msg } from "./raw-client.js";
import { OkConn } from "./session-probe.js";

const CANARY = `CANARY_${randomBytes(16).toString("hex")}`;
const HOST = "api.example.com";
const POLICY = `[[rule]]
name = "claude-open"
effect = "allow"
agents = ["claude"]
secrets = ["open"]
domains = ["${HOST}"]
reveal = true

[[rule]]
name = "claude-guarded"
effect = "allow"
agents = ["claude"]
secrets = ["guarded"]
domains = ["${HOST}"]
approval = "required"

[[rule]]
name = "bob-private-rule"
effect = "allow"
agents = ["bob"]
secrets = ["bob-only"]
domains = ["${HOST}"]
`;

describe("an agent token against lessor serve: what the methods open to agents tell it", () => {
  let d: RunningDaemon;
  let owner: LessorClient;
  let agent: LessorClient;
  let orch: LessorClient;
  let ops: LessorClient;
  const ids: Record<string, string> = {};
  before(async () => {
    const home = await makeHome({ policy: POLICY });
    d = await startServe(home);
    owner = await LessorClient.connect({ socketPath: d.socket });
    await owner.storeSecret({ name: "open", value: CANARY });
    await owner.storeSecret({ name: "guarded", value: CANARY });
    await owner.storeSecret({ name: "bob-only", value: CANARY, description: "bob's private thing", tags: ["bobtag"] });
    const mk = async (name: string, p: Record<string, unknown>): Promise<LessorClient> => {
      const t = (await owner.call("token_create", { name, ...p } as never)) as { id: string; token: string };
      ids[name] = t.id;
      return LessorClient.connect({ socketPath: d.socket }, { token: t.token });
    };
    agent = await mk("claude-laptop", { role: "agent", agent: "claude" });
    orch = await mk("ci-orchestrator", { role: "orchestrator", actFor: ["claude"] });
    ops = await mk("ops-admin", { role: "admin" });
  });
  after(async () => {
    for (const c of [agent, orch, ops, owner]) await c?.close();
    await d?.stop();
  });

  /** What an agent must never be told: the other tokens' names and ids, the owner's uid. */
  const secrets = (): string[] => ["ci-orchestrator", ids["ci-orchestrator"]!, "ops-admin", ids["ops-admin"]!, `uid:${process.getuid!()}`, "bob-private-rule", "bob's private", "bobtag", CANARY];
  const assertTellsNothing = (what: string, v: unknown): void => {
    const text = JSON.stringify(v);
    for (const s of secrets()) assert.ok(!text.includes(s), `${what} tells the agent ${JSON.stringify(s)}: ${text.slice(0, 1500)}`);
  };

  test("status and describe give the daemon's pid to its owner only, not to an agent", async () => {
    const pid = d.proc.pid!;
    assert.equal(((await owner.call("status", {})) as Msg).daemon.pid, pid);
    assert.equal(((await owner.call("describe", {})) as Msg).daemon.pid, pid);
    for (const m of ["status", "describe"] as const) {
      const got = (await agent.call(m, {})) as Msg;
      assert.equal(got.daemon.pid, null, `${m} gives the agent the daemon's pid`);
      assertTellsNothing(m, got);
    }
    assertTellsNothing("whoami", await agent.call("whoami", {}));
  });

  test("approval_request: the agent is not told which orchestrator token asked for, or which admin token decided, the approval it is answered with", async () => {
    const ask = { agent: "claude", secret: "guarded", domains: [HOST] };
    const opened = (await orch.call("approval_request", { ...ask, reason: "ci needs it" })) as Msg;
    assert.equal(opened.required, true);
    await ops.call("approval_decide", { id: opened.approval.id, approve: false, reason: "not now" });
    // A denial stands for the agent whoever asks (src/vault/approvals.ts findOrOpen): the agent gets the orchestrator's.
    const got = (await agent.call("approval_request", { secret: "guarded", domains: [HOST] })) as Msg;
    assert.equal(got.approval.state, "denied");
    assert.equal(got.approval.decidedBy, null);
    assert.equal(got.approval.requestedBy, "another identity");
    assert.equal(got.approval.decisionReason, "not now", "the person's reason is still the agent's to read");
    assertTellsNothing("approval_request (another identity's denial)", got);
  });

  test("approval_request: the agent's own approval, decided by an admin token, does not name that token", async () => {
    const got = (await agent.call("approval_request", { secret: "guarded", domains: [HOST], ttl: "7m" })) as Msg;
    assert.equal(got.approval.state, "pending");
    await ops.call("approval_decide", { id: got.approval.id, approve: true });
    const again = (await agent.call("approval_request", { secret: "guarded", domains: [HOST], ttl: "7m" })) as Msg;
    assert.equal(again.approval.state, "approved");
    assertTellsNothing("approval_request (own, approved)", again);
  });

  test("list_leases: a lease the orchestrator took for the agent does not name the orchestrator's token", async () => {
    const l = (await orch.call("request_lease", { agent: "claude", secret: "open", domains: [HOST] })) as Msg;
    const listed = (await agent.call("list_leases", {})) as Msg[];
    assert.ok(listed.some((x) => x.id === l.id));
    assertTellsNothing("list_leases", listed);
    assert.equal(listed.find((x) => x.id === l.id)!.issuedBy, "another identity");
    const used = (await agent.call("access_secret", { leaseId: l.id, domain: HOST })) as Msg;
    assert.equal(used.lease.issuedBy, "another identity");
    assertTellsNothing("access_secret", used);
    // The orchestrator that took it still reads its own id there; the agent's own lease names the agent.
    assert.equal(((await orch.call("list_leases", { id: l.id })) as Msg[])[0]!.issuedBy, l.issuedBy);
    const own = (await agent.call("request_lease", { secret: "open", domains: [HOST] })) as Msg;
    assert.notEqual(own.issuedBy, "another identity");
    assert.equal(((await agent.call("list_leases", { id: own.id })) as Msg[])[0]!.issuedBy, own.issuedBy);
  });

  test("no existence oracle: each agent method answers a secret it is not granted the same whether it exists or not", async () => {
    const norm = (e: unknown, name: string): string => {
      const x = e as { code?: string; message?: string };
      return `${x.code}: ${String(x.message).replaceAll(name, "X")}`;
    };
    const run = async (f: (name: string) => Promise<unknown>, name: string): Promise<string> => {
      try {
        return `ok ${JSON.stringify(await f(name)).replaceAll(name, "X")}`;
      } catch (e) {
        return norm(e, name);
      }
    };
    const probes: [string, (n: string) => Promise<unknown>][] = [
      ["request_lease", (n) => agent.call("request_lease", { secret: n, domains: [HOST] })],
      ["request_lease+access", (n) => agent.call("request_lease", { secret: n, access: { domain: HOST } })],
      ["approval_request", (n) => agent.call("approval_request", { secret: n, domains: [HOST] })],
      ["explain", (n) => agent.call("explain", { agent: "claude", secret: n, domain: HOST })],
      ["list_granted", (n) => agent.call("list_granted", { namePrefix: n })],
      ["list_leases", (n) => agent.call("list_leases", { secret: n })],
      ["record_refusal", (n) => agent.call("record_refusal", { secret: n, by: "probe", reason: "x" })],
      ["get_secret_metadata", (n) => agent.call("get_secret_metadata", { name: n })],
    ];
    for (const [what, f] of probes) {
      const a = await run(f, "bob-only");
      const b = await run(f, "no-such-one");
      assert.equal(a, b, `${what}: an existing secret the agent is not granted is answered otherwise than a missing one`);
      assertTellsNothing(what, a);
    }
  });
});

describe("lessor run --vault-session, embedded: what status and describe tell the sandboxed command", () => {
  test("the session's status and describe do not give lessor run's own pid to the sandboxed agent", async () => {
    const { makeVault } = await import("./helpers.js");
    const { inProcessApi } = await import("../src/backend/in-process.js");
    const { startVaultSession } = await import("../src/cli/run/vault-session.js");
    const t = await makeVault({ store: "memory", policy: POLICY });
    const backend = { mode: "embedded" as const, home: "/nonexistent", endpoint: null, api: inProcessApi(t.vault), vault: t.vault, close: async () => {} };
    const s = await startVaultSession({ backend, agent: "claude", daemon: { endpoint: { socketPath: "/nonexistent" }, expectedUid: undefined } });
    const c = await OkConn.open(s.socket);
    try {
      c.send({ protocol: "lessor", version: 1 });
      assert.equal((await c.next()).ok, true);
      for (const m of ["status", "describe"]) {
        const got = await c.ok(m, {});
        assert.equal(got.daemon.pid, null, `${m} gives the sandboxed agent lessor run's pid`);
      }
    } finally {
      c.close();
      await s.close(async () => backend.api, async () => {});
      await t.vault.close();
    }
  });
});
