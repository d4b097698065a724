import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { agent, codeOf, grant, makeVault, orchestrator } from "./helpers.js";

describe("roles", () => {
  test("agents and orchestrators cannot reach admin operations, and every attempt is audited", async () => {
    const { vault } = await makeVault({ policy: grant("g", ["claude"], ["s"], ["x.example.com"]) });
    const admin = vault.admin();
    await admin.storeSecret({ name: "s", value: "v" });
    const ref = { scope: "global", name: "s" };
    for (const who of [vault.session(agent("claude")), vault.session(orchestrator(["*"]))]) {
      const attempts: [string, Promise<unknown>][] = [
        ["storeSecret", who.storeSecret({ name: "s", value: "evil" })],
        ["rotateSecret", who.rotateSecret(ref, "evil")],
        ["rollbackSecret", who.rollbackSecret(ref, 1)],
        ["deleteSecret", who.deleteSecret(ref)],
        ["revealSecret", who.revealSecret(ref)],
        ["killswitch", who.killswitch()],
        ["auditQuery", who.auditQuery()],
        ["auditVerify", who.auditVerify()],
        ["reloadPolicy", who.reloadPolicy()],
        ["rotateMasterKey", who.rotateMasterKey()],
        ["gc", who.gc()],
      ];
      for (const [name, p] of attempts) assert.equal(await codeOf(p), "access_denied", `${who.identity.role} ${name}`);
    }
    const agentOnly = vault.session(agent("claude"));
    assert.equal(await codeOf(agentOnly.listSecrets()), "access_denied");
    assert.equal(await codeOf(agentOnly.getSecretMetadata(ref)), "access_denied");
    assert.equal(await codeOf(agentOnly.listLeases({ agent: "other" })), "access_denied");
    assert.equal(await codeOf(agentOnly.revokeAllForAgent("other")), "access_denied");
    const denials = await admin.auditQuery({ types: ["access_denied"], limit: 1000 });
    assert.ok(denials.length >= 24, `denials audited: ${denials.length}`);
    assert.equal((await admin.revealSecret(ref)).value.unsafeText(), "v", "nothing changed");
    assert.equal((await admin.auditVerify()).ok, true);
  });

  test("explain says which rule decides, for admins and orchestrators; for an agent, about itself only", async () => {
    const { vault } = await makeVault({ policy: `[[rule]]\nname = "no"\neffect = "deny"\nagents = ["bad"]\nsecrets = ["*"]\n` + grant("g", ["*"], ["s"], ["x.example.com"]) });
    const ref = { scope: "global", name: "s" };
    const allowed = await vault.admin().explain("claude", ref, "x.example.com");
    assert.equal(allowed.allow, true);
    assert.equal(allowed.rule?.name, "g");
    const denied = await vault.session(orchestrator(["*"])).explain("bad", ref, "x.example.com");
    assert.equal(denied.allow, false);
    assert.equal(denied.rule?.name, "no");
    assert.equal(denied.steps[0]!.matched, true);
    const other = await vault.admin().explain("claude", ref, "y.example.com");
    assert.equal(other.allow, false);
    assert.match(other.steps.find((st) => st.rule === "g")!.why, /y\.example\.com/);
    const own = await vault.session(agent("claude")).explain("claude", ref);
    assert.equal(own.allow, true);
    assert.deepEqual(own.steps.map((st) => st.rule), ["g"], "the rule naming agent \"bad\" is not shown to claude");
    assert.equal(await codeOf(vault.session(agent("claude")).explain("bad", ref)), "access_denied");
  });

  test("a session's identity is fixed: it cannot be changed after creation", async () => {
    const { vault } = await makeVault();
    const s = vault.session(agent("claude"));
    assert.throws(() => {
      (s.identity as { role: string }).role = "admin";
    });
    assert.throws(() => vault.session({ id: "x", role: "agent", transport: "embedded" }), /agent id/);
    assert.throws(() => vault.session({ id: "x", role: "root" as never, transport: "embedded" }), /role "root"/);
  });

  test("agents list only their own leases; orchestrators only their agents'", async () => {
    const { vault } = await makeVault({ policy: grant("g", ["*"], ["s"], ["x.example.com"]) });
    await vault.admin().storeSecret({ name: "s", value: "v" });
    for (const a of ["a1", "a2", "b1"]) await vault.session(agent(a)).requestLease({ secret: "s" });
    assert.deepEqual((await vault.session(agent("a1")).listLeases()).map((l) => l.agent), ["a1"]);
    assert.deepEqual((await vault.session(orchestrator(["a*"])).listLeases()).map((l) => l.agent).sort(), ["a1", "a2"]);
    assert.equal((await vault.admin().listLeases()).length, 3);
  });
});
