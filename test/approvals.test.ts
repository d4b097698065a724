/**
 * Approvals (src/vault/approvals.ts): a rule with approval = "required" never grants on its own; a
 * person's approval is bound to the exact request, used once, expires, and everything is audited.
 * Runs against SQLite and the memory store (approvals live in the store's transactional meta).
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parsePolicy } from "../src/vault/policy.js";
import { APPROVAL_PENDING_MS, APPROVAL_USE_MS, MAX_PENDING_PER_AGENT, MAX_PENDING_PER_REQUESTER, MAX_PENDING_PER_REQUESTER_AGENT } from "../src/vault/approvals.js";
import { after } from "node:test";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { Vault } from "../src/vault/vault.js";
import { agent, clock, codeOf, grant, hexKey, makeVault, orchestrator, refusalOf } from "./helpers.js";
import { PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";

const POLICY =
  grant("gated", ["claude", "claude-2"], ["deploy-key"], ["api.example.com", "uploads.example.com"], 'approval = "required"\nttl = "15m"') +
  grant("open", ["claude"], ["plain-key"], ["api.example.com"], 'approval = "none"') +
  grant("gated-ci", ["ci-*"], ["deploy-key"], ["api.example.com"], 'approval = "required"\nttl = "15m"');

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/;

async function setup(store: "sqlite" | "memory") {
  const c = clock();
  const t = await makeVault({ policy: POLICY, now: c.now, store });
  const admin = t.vault.admin();
  await admin.storeSecret({ name: "deploy-key", value: "deploy-value" });
  await admin.storeSecret({ name: "plain-key", value: "plain-value" });
  return { ...t, c, admin, claude: t.vault.session(agent("claude")), claude2: t.vault.session(agent("claude-2")) };
}

/**
 * The killswitch withdraws every approval not yet used: an approved one yields no lease after the
 * release, a pending one can no longer be decided; a used one stays (its lease was revoked). Each
 * withdrawal is audited as approval_denied. Run against every store.
 */
async function killswitchWithdraws(vault: Vault): Promise<void> {
  const admin = vault.admin();
  const claude = vault.session(agent("claude"));
  const ask = { secret: "deploy-key", domains: ["api.example.com"] };
  const used = await claude.requestApproval({ ...ask, ttl: "1m" });
  const approved = await claude.requestApproval({ ...ask, ttl: "2m" });
  const pending = await claude.requestApproval({ ...ask, ttl: "3m" });
  assert.ok(used.required && approved.required && pending.required);
  await admin.decideApproval(used.approval.id, true);
  await admin.decideApproval(approved.approval.id, true);
  await claude.requestLease({ ...ask, ttl: "1m" });
  await admin.killswitch("incident");
  const left = await admin.listApprovals({ all: true });
  assert.deepEqual(left.map((a) => [a.id, a.state]), [[used.approval.id, "used"]]);
  // While the lockout holds no approval is granted (test/attack-lockout.test.ts); a denial finds nothing left.
  assert.equal(await codeOf(admin.decideApproval(pending.approval.id, true)), "access_denied");
  assert.equal(await codeOf(admin.decideApproval(pending.approval.id, false)), "invalid_request");
  await admin.releaseKillswitch("investigated");
  const r = await refusalOf(claude.requestLease({ ...ask, ttl: "2m", approval: approved.approval.id }));
  assert.equal(r.code, "access_denied");
  const again = await refusalOf(claude.requestLease({ ...ask, ttl: "2m" }));
  assert.match(again.message, /was opened/, "a person is asked again");
  assert.notEqual(idIn(again.message), approved.approval.id);
  assert.equal((await admin.listLeases({ agent: "claude" })).filter((l) => l.revokedAt === null).length, 0);
  const rows = await admin.auditQuery({ types: ["approval_denied"] });
  assert.deepEqual(
    rows.filter((e) => e.reason === "withdrawn: the killswitch was pulled").map((e) => (JSON.parse(e.detail ?? "{}") as { approval: string }).approval).sort(),
    [approved.approval.id, pending.approval.id].sort(),
  );
  const ks = (await admin.auditQuery({ types: ["killswitch"] })).find((e) => (JSON.parse(e.detail ?? "{}") as { engaged: boolean }).engaged);
  assert.equal((JSON.parse(ks!.detail ?? "{}") as { approvals_withdrawn: number }).approvals_withdrawn, 2);
}

/** The approval id named in a refusal. */
function idIn(message: string): string {
  const m = UUID.exec(message);
  assert.ok(m, `no approval id in: ${message}`);
  return m[0];
}

describe("policy: approval", () => {
  test("approval is parsed strictly and only on allow rules", () => {
    const p = parsePolicy(POLICY, "p.toml");
    assert.equal(p.rules[0]!.approval, "required");
    assert.equal(p.rules[1]!.approval, "none");
    assert.equal(parsePolicy(grant("x", ["a"], ["s"], ["h.example"]), "p.toml").rules[0]!.approval, "none");
    for (const bad of ['approval = "yes"', "approval = true", 'approval = "Required"', 'approval = ["required"]'])
      assert.throws(() => parsePolicy(grant("x", ["a"], ["s"], ["h.example"], bad), "p.toml"), /field "approval": expected "required"/, bad);
    assert.throws(() => parsePolicy(`[[rule]]\nname = "d"\neffect = "deny"\nagents = ["*"]\nsecrets = ["*"]\napproval = "required"\n`, "p.toml"), /approval.*deny rule/);
  });
});

for (const store of ["sqlite", "memory"] as const) {
  describe(`approvals (${store})`, () => {
    test("a gated rule never grants on its own: the refusal opens one approval, asked again it is the same", async () => {
      const { claude, admin } = await setup(store);
      const r1 = await refusalOf(claude.requestLease({ secret: "deploy-key", domains: ["api.example.com"] }));
      assert.equal(r1.code, "access_denied");
      assert.match(r1.message, /needs a person's approval.*lessor approve/);
      const id = idIn(r1.message);
      const r2 = await refusalOf(claude.requestLeaseAndAccess({ secret: "deploy-key", domains: ["api.example.com"] }, { domain: "api.example.com" }));
      assert.equal(r2.code, "access_denied");
      assert.equal(idIn(r2.message), id, "the same request finds the same approval");
      assert.equal((await admin.listLeases({ agent: "claude" })).length, 0, "no lease exists");
      const pending = await admin.listApprovals();
      assert.equal(pending.length, 1);
      assert.deepEqual({ ...pending[0], requestedAt: 0, expiresAt: 0 }, {
        id,
        agent: "claude",
        secret: "global/deploy-key",
        domains: ["api.example.com"],
        hosts: ["api.example.com"],
        anyDomain: false,
        ttlMs: null,
        maxUses: null,
        rule: "gated",
        reason: null,
        requestedBy: "test:claude",
        requestedAt: 0,
        expiresAt: 0,
        state: "pending",
        decidedBy: null,
        decidedAt: null,
        decisionReason: null,
        leaseId: null,
        // What the rule gives away besides the hosts (the person is shown it): it reveals the value.
        reveal: true,
        methods: null,
        paths: null,
      });
      const types = (await admin.auditQuery({ types: ["approval_requested"] })).map((e) => e.agent);
      assert.deepEqual(types, ["claude"], "opened once, audited once");
      // The rule without approval grants as before.
      assert.equal((await claude.requestLease({ secret: "plain-key" })).rule, "open");
    });

    test("approved: the same request gets the lease once; the approval is used up", async () => {
      const { claude, admin } = await setup(store);
      const asked = await claude.requestApproval({ secret: "deploy-key", domains: ["api.example.com"], reason: "deploy the fix" });
      assert.ok(asked.required && asked.created);
      assert.equal(asked.approval.reason, "deploy the fix");
      const decided = await admin.decideApproval(asked.approval.id, true, "ok for today");
      assert.equal(decided.state, "approved");
      const lease = await claude.requestLease({ secret: "deploy-key", domains: ["api.example.com"] });
      assert.equal(lease.rule, "gated");
      assert.deepEqual(lease.domains, ["api.example.com"]);
      const granted = (await admin.auditQuery({ types: ["lease_granted"] })).at(-1)!;
      assert.equal(JSON.parse(granted.detail ?? "{}").approval, asked.approval.id, "the grant names its approval");
      const used = (await admin.listApprovals({ all: true })).find((a) => a.id === asked.approval.id)!;
      assert.equal(used.state, "used");
      assert.equal(used.leaseId, lease.id);
      // A second identical request is not covered: it opens a new approval.
      const again = await refusalOf(claude.requestLease({ secret: "deploy-key", domains: ["api.example.com"] }));
      assert.equal(again.code, "access_denied");
      assert.notEqual(idIn(again.message), asked.approval.id);
      const audit = (await admin.auditQuery({ types: ["approval_requested", "approval_granted"] })).map((e) => [e.type, e.outcome]);
      assert.deepEqual(audit, [
        ["approval_requested", "ok"],
        ["approval_granted", "ok"],
        ["approval_requested", "ok"],
      ]);
    });

    test("an approval is bound to the exact request: another agent, domain, ttl, cap or secret does not match", async () => {
      const { claude, claude2, admin, vault } = await setup(store);
      const asked = await claude.requestApproval({ secret: "deploy-key", domains: ["api.example.com"], ttl: "5m" });
      assert.ok(asked.required);
      await admin.decideApproval(asked.approval.id, true);
      const id = asked.approval.id;
      const attempts = [
        claude2.requestLease({ secret: "deploy-key", domains: ["api.example.com"], ttl: "5m" }),
        claude2.requestLease({ secret: "deploy-key", domains: ["api.example.com"], ttl: "5m", approval: id }),
        claude.requestLease({ secret: "deploy-key", domains: ["uploads.example.com"], ttl: "5m" }),
        claude.requestLease({ secret: "deploy-key", domains: ["uploads.example.com"], ttl: "5m", approval: id }),
        claude.requestLease({ secret: "deploy-key", domains: ["api.example.com", "uploads.example.com"], ttl: "5m" }),
        claude.requestLease({ secret: "deploy-key", domains: ["api.example.com"] }),
        claude.requestLease({ secret: "deploy-key", domains: ["api.example.com"], ttl: "10m" }),
        claude.requestLease({ secret: "deploy-key", domains: ["api.example.com"], ttl: "5m", maxUses: 1 }),
        claude.requestLease({ secret: "deploy-key", ttl: "5m" }),
        claude.requestLease({ secret: "plain-key", approval: id }),
      ];
      for (const [i, p] of attempts.entries()) assert.equal(await codeOf(p), i === attempts.length - 1 ? "invalid_request" : "access_denied", `attempt ${i}`);
      // An orchestrator acting for claude-2 cannot use it either.
      const orch = vault.session(orchestrator(["claude-2"]));
      assert.equal(await codeOf(orch.requestLease({ agent: "claude-2", secret: "deploy-key", domains: ["api.example.com"], ttl: "5m", approval: id })), "access_denied");
      assert.equal(await codeOf(orch.requestLease({ agent: "claude", secret: "deploy-key", domains: ["api.example.com"], ttl: "5m", approval: id })), "access_denied", "nor act for claude");
      // The approved request itself still works (none of the above used it), with the id or without.
      const lease = await claude.requestLease({ secret: "deploy-key", domains: ["api.example.com"], ttl: "5m", approval: id });
      assert.equal(lease.agent, "claude");
      assert.equal(lease.expiresAt - lease.issuedAt, 5 * 60_000);
    });

    test("denied: refused, and asking again does not reopen the question until it lapses", async () => {
      const { claude, admin, c } = await setup(store);
      const r = await refusalOf(claude.requestLease({ secret: "deploy-key" }));
      const id = idIn(r.message);
      const d = await admin.decideApproval(id, false, "not during the freeze");
      assert.equal(d.state, "denied");
      const again = await refusalOf(claude.requestLease({ secret: "deploy-key" }));
      assert.equal(again.code, "access_denied");
      assert.match(again.message, /a person denied this request.*not during the freeze/);
      assert.equal(await codeOf(claude.requestLease({ secret: "deploy-key", approval: id })), "access_denied");
      assert.equal((await admin.listApprovals()).length, 0, "nothing new is pending");
      assert.equal(await codeOf(admin.decideApproval(id, true)), "invalid_request", "a decision is final");
      const denials = await admin.auditQuery({ types: ["approval_denied"] });
      assert.equal(denials.length, 1);
      assert.equal(denials[0]!.reason, "not during the freeze");
      c.advance(APPROVAL_USE_MS + 1);
      const later = await refusalOf(claude.requestLease({ secret: "deploy-key" }));
      assert.match(later.message, /needs a person's approval/);
      assert.notEqual(idIn(later.message), id);
    });

    test("expiry: an approval lapses unused, and a pending one cannot be approved after it lapsed", async () => {
      const { claude, admin, c } = await setup(store);
      const a = await claude.requestApproval({ secret: "deploy-key" });
      assert.ok(a.required);
      await admin.decideApproval(a.approval.id, true);
      c.advance(APPROVAL_USE_MS + 1);
      const r = await refusalOf(claude.requestLease({ secret: "deploy-key" }));
      assert.equal(r.code, "access_denied");
      assert.notEqual(idIn(r.message), a.approval.id, "the lapsed approval is gone; a new one is opened");
      assert.equal(await codeOf(claude.requestLease({ secret: "deploy-key", approval: a.approval.id })), "access_denied");
      const pendingId = idIn(r.message);
      c.advance(APPROVAL_PENDING_MS + 1);
      assert.equal(await codeOf(admin.decideApproval(pendingId, true)), "invalid_request");
      assert.equal((await admin.listApprovals({ all: true })).length, 0);
    });

    test("only an admin decides; an agent may not list or decide, even its own", async () => {
      const { claude, admin, vault } = await setup(store);
      const a = await claude.requestApproval({ secret: "deploy-key" });
      assert.ok(a.required);
      assert.equal(await codeOf(claude.decideApproval(a.approval.id, true)), "access_denied");
      assert.equal(await codeOf(claude.listApprovals()), "access_denied");
      const orch = vault.session(orchestrator(["claude"]));
      assert.equal((await orch.listApprovals()).length, 1, "an orchestrator sees those of its agents");
      assert.equal((await vault.session(orchestrator(["other"])).listApprovals()).length, 0);
      assert.equal(await codeOf(orch.decideApproval(a.approval.id, true)), "access_denied");
      assert.equal((await admin.listApprovals())[0]!.state, "pending", "still pending after the refused decisions");
      assert.equal(await codeOf(admin.decideApproval("not-a-uuid", true)), "invalid_request");
    });

    test("an agent cannot flood the person: pending approvals per agent are capped", async () => {
      const { claude } = await setup(store);
      for (let i = 0; i < MAX_PENDING_PER_AGENT; i++) await claude.requestApproval({ secret: "deploy-key", ttl: 60_000 + i });
      assert.equal(await codeOf(claude.requestApproval({ secret: "deploy-key", ttl: 999_999 })), "rate_limited");
    });

    test("an orchestrator cannot flood the person: pending approvals per requester are capped, whichever agents it names", async () => {
      const { vault, claude2 } = await setup(store);
      const orch = vault.session(orchestrator(["claude", "claude-2"]));
      const orch2 = vault.session(orchestrator(["claude", "claude-2", "ci-*"]));
      for (let i = 0; i < MAX_PENDING_PER_REQUESTER; i++)
        await orch2.requestApproval({ agent: `ci-${Math.floor(i / MAX_PENDING_PER_REQUESTER_AGENT)}`, secret: "deploy-key", ttl: 60_000 + i });
      const r = await refusalOf(orch2.requestApproval({ agent: "claude-2", secret: "deploy-key" }));
      assert.equal(r.code, "rate_limited");
      assert.match(r.message, /test:orch\) already have 16 requests waiting.*separate token/);
      // The agent it did not get to can still ask for itself.
      const own = await claude2.requestApproval({ secret: "deploy-key" });
      assert.ok(own.required && own.created);
    });

    test("agents sharing one orchestrator token: one of them, varying its ttl, cannot take the token's every slot and leave its siblings none", async () => {
      const { vault } = await setup(store);
      // One session per agent, as `lessor mcp --agent ci-N` each reaching the vault with the same token.
      const hostile = vault.session(orchestrator(["ci-*"]));
      const sibling = vault.session(orchestrator(["ci-*"]));
      let opened = 0;
      let refusal: { code: string; message: string } | null = null;
      for (let i = 0; i < MAX_PENDING_PER_REQUESTER && !refusal; i++) {
        try {
          await hostile.requestApproval({ agent: "ci-1", secret: "deploy-key", ttl: 60_000 + i });
          opened++;
        } catch (e) {
          refusal = e as { code: string; message: string };
        }
      }
      assert.equal(opened, MAX_PENDING_PER_REQUESTER_AGENT, "the hostile agent is stopped at the per-agent share of the token");
      assert.equal(refusal?.code, "rate_limited");
      assert.match(refusal!.message, /already have 4 requests waiting .*for agent "ci-1"/);
      for (const agent of ["ci-2", "ci-3", "ci-4"]) {
        const own = await sibling.requestApproval({ agent, secret: "deploy-key" });
        assert.ok(own.required && own.created, `${agent} can still ask a person`);
      }
    });

    test("the owner asking for several agents (lessor mcp --agent X as the owner) is capped per agent only: one agent's sixteen leave the others room", async () => {
      const { vault } = await setup(store);
      const owner = vault.admin();
      for (let i = 0; i < MAX_PENDING_PER_AGENT; i++) await owner.requestApproval({ agent: "claude", secret: "deploy-key", ttl: 60_000 + i });
      assert.equal((await refusalOf(owner.requestApproval({ agent: "claude", secret: "deploy-key" }))).code, "rate_limited");
      const other = await owner.requestApproval({ agent: "claude-2", secret: "deploy-key" });
      assert.ok(other.required && other.created);
    });

    test("the killswitch withdraws every approval not yet used: none yields a lease after the release", async () => {
      const { vault } = await setup(store);
      await killswitchWithdraws(vault);
    });

    test("the dead-man switch, firing, withdraws approvals as the killswitch does", async () => {
      const c = clock();
      const { vault } = await makeVault({ policy: POLICY, now: c.now, store, limits: { heartbeatMs: 60_000 } });
      const admin = vault.admin();
      await admin.storeSecret({ name: "deploy-key", value: "deploy-value" });
      const claude = vault.session(agent("claude"));
      const a = await claude.requestApproval({ secret: "deploy-key" });
      assert.ok(a.required);
      await admin.decideApproval(a.approval.id, true);
      c.advance(60_001);
      assert.match((await refusalOf(claude.requestLease({ secret: "deploy-key" }))).message, /dead-man switch/);
      assert.deepEqual(await admin.listApprovals({ all: true }), []);
      const row = (await admin.auditQuery({ types: ["approval_denied"] })).find((e) => (JSON.parse(e.detail ?? "{}") as { approval: string }).approval === a.approval.id);
      assert.equal(row?.actorId, "dead-man-switch");
      await admin.releaseKillswitch("back");
      assert.match((await refusalOf(claude.requestLease({ secret: "deploy-key" }))).message, /was opened/);
    });

    test("approval_request on a rule without approval opens nothing; on a denied request it is refused", async () => {
      const { claude, admin } = await setup(store);
      assert.deepEqual(await claude.requestApproval({ secret: "plain-key" }), { required: false, rule: "open" });
      assert.equal(await codeOf(claude.requestApproval({ secret: "deploy-key", domains: ["evil.example"] })), "access_denied");
      assert.equal(await codeOf(claude.requestApproval({ secret: "deploy-key", reason: "line\nbreak" })), "invalid_request");
      assert.equal((await admin.listApprovals({ all: true })).length, 0);
    });
  });
}

describe("approvals: one approval, one lease, even under concurrency", () => {
  test("concurrent identical requests on one vault: exactly one lease", async () => {
    const { claude, admin } = await setup("sqlite");
    const a = await claude.requestApproval({ secret: "deploy-key" });
    assert.ok(a.required);
    await admin.decideApproval(a.approval.id, true);
    const results = await Promise.allSettled(Array.from({ length: 8 }, () => claude.requestLease({ secret: "deploy-key" })));
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
    assert.equal((await admin.listLeases({ agent: "claude" })).length, 1);
  });

  test("PostgreSQL: two vault instances on one database race for one approval; one lease", { skip: PG_SKIP }, async () => {
    const { schema, drop } = await testSchema();
    after(drop);
    const key = hexKey();
    const open = async () => {
      const v = await Vault.open({ store: await openPostgresStore({ url: PG_URL!, schema }), keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy: parsePolicy(POLICY, "p.toml") });
      after(() => v.close());
      return v;
    };
    const one = await open();
    await one.admin().storeSecret({ name: "deploy-key", value: "deploy-value" });
    const two = await open();
    const r = await refusalOf(two.session(agent("claude")).requestLease({ secret: "deploy-key" }));
    const id = idIn(r.message);
    assert.equal((await one.admin().listApprovals())[0]!.id, id, "the other instance sees the approval");
    await one.admin().decideApproval(id, true);
    const results = await Promise.allSettled([one, two, one, two].map((v) => v.session(agent("claude")).requestLease({ secret: "deploy-key" })));
    assert.equal(results.filter((x) => x.status === "fulfilled").length, 1);
    assert.equal((await one.admin().listLeases({ agent: "claude" })).length, 1);
  });

  test("PostgreSQL: the killswitch withdraws every approval not yet used", { skip: PG_SKIP }, async () => {
    const { schema, drop } = await testSchema();
    after(drop);
    const v = await Vault.open({ store: await openPostgresStore({ url: PG_URL!, schema }), keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!, policy: parsePolicy(POLICY, "p.toml") });
    after(() => v.close());
    await v.admin().storeSecret({ name: "deploy-key", value: "deploy-value" });
    await killswitchWithdraws(v);
  });
});
