import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { agent, clock, codeOf, grant, makeVault, orchestrator } from "./helpers.js";

const MIN = 60_000;
const POLICY =
  grant("gh", ["claude", "claude-*"], ["github-token"], ["api.github.com", "*.githubusercontent.com"], 'ttl = "15m"\nmax_ttl = "1h"\nmax_renewals = 2') +
  grant("once", ["claude"], ["one-shot"], ["api.example.com"], "max_uses = 1") +
  grant("capped", ["claude"], ["capped"], ["api.example.com"], 'ttl = "15m"\nmax_ttl = "20m"') +
  `[[rule]]\nname = "no-prod"\neffect = "deny"\nagents = ["*"]\nsecrets = ["env:prod/*"]\n` +
  grant("prod-all", ["*"], ["env:prod/*"], ["db.example.com"]) +
  `[[rule]]\nname = "db"\neffect = "allow"\nagents = ["worker"]\nsecrets = ["db-password"]\nany_domain = true\n`;

async function setup(extra: Parameters<typeof makeVault>[0] = {}) {
  const c = clock();
  const t = await makeVault({ policy: POLICY, now: c.now, ...extra });
  const admin = t.vault.admin();
  for (const name of ["github-token", "one-shot", "db-password", "capped"]) await admin.storeSecret({ name, value: `value-of-${name}` });
  await admin.storeSecret({ scope: "env:prod", name: "db", value: "prod-db" });
  return { ...t, admin, c, claude: t.vault.session(agent("claude")), mallory: t.vault.session(agent("mallory")) };
}

describe("leases", () => {
  test("a granted lease gives the current value for an allowed domain and counts uses", async () => {
    const { claude, admin } = await setup();
    const lease = await claude.requestLease({ secret: "github-token" });
    assert.equal(lease.agent, "claude");
    assert.deepEqual(lease.domains, ["api.github.com", "*.githubusercontent.com"]);
    assert.equal(lease.expiresAt - lease.issuedAt, 15 * MIN);
    const got = await claude.accessSecret(lease.id, { domain: "API.GitHub.com." });
    assert.equal(got.value.unsafeText(), "value-of-github-token");
    assert.equal(got.lease.uses, 1);
    await admin.rotateSecret({ scope: "global", name: "github-token" }, "rotated");
    const again = await claude.accessSecret(lease.id, { domain: "raw.githubusercontent.com" });
    assert.equal(again.value.unsafeText(), "rotated", "a lease follows rotation");
    assert.equal(again.version, 2);
  });

  test("deny by default, explicit deny before a later allow, and unknown secrets after policy", async () => {
    const { claude } = await setup();
    assert.equal(await codeOf(claude.requestLease({ secret: "db-password" })), "access_denied");
    assert.equal(await codeOf(claude.requestLease({ secret: "env:prod/db", domains: ["db.example.com"] })), "access_denied");
    // A secret nobody may lease is denied, not reported missing (no existence oracle for agents).
    assert.equal(await codeOf(claude.requestLease({ secret: "no-such" })), "access_denied");
  });

  test("requested domains must be covered by the rule; the lease is narrowed to them", async () => {
    const { claude } = await setup();
    assert.equal(await codeOf(claude.requestLease({ secret: "github-token", domains: ["evil.com"] })), "access_denied");
    const lease = await claude.requestLease({ secret: "github-token", domains: ["api.github.com"] });
    assert.deepEqual(lease.domains, ["api.github.com"]);
    assert.equal(await codeOf(claude.accessSecret(lease.id, { domain: "raw.githubusercontent.com" })), "access_denied");
  });

  test("a spoofed domain never gets the value", async () => {
    const { claude } = await setup();
    const lease = await claude.requestLease({ secret: "github-token" });
    const spoofs = [
      "api.github.com.evil.com",
      "evil.com/.github.com",
      "api.github.com@evil.com",
      "evil.com#api.github.com",
      "api.github.com:443",
      "githubusercontent.com",
      "evilgithubusercontent.com",
      "api..github.com",
      "аpi.github.com", // Cyrillic а
      "api.github.com\u0000.evil.com",
      " api.github.com",
      "",
    ];
    // A domain holding a control character is not a host name at all: it is refused before the
    // access runs (invalid_request, src/vault/target.ts), so no audit row or terminal ever carries it.
    for (const d of spoofs) assert.equal(await codeOf(claude.accessSecret(lease.id, { domain: d })), d.includes("\u0000") ? "invalid_request" : "access_denied", d);
    assert.equal(await codeOf(claude.accessSecret(lease.id)), "access_denied", "a domain-bound lease needs a domain");
    const fresh = await claude.accessSecret(lease.id, { domain: "api.github.com" });
    assert.equal(fresh.lease.uses, 1, "none of the spoofs used the lease");
  });

  test("another agent using a lease id it did not get is denied and audited", async () => {
    const { claude, mallory, admin } = await setup();
    const lease = await claude.requestLease({ secret: "github-token" });
    assert.equal(await codeOf(mallory.accessSecret(lease.id, { domain: "api.github.com" })), "access_denied");
    assert.equal(await codeOf(mallory.renewLease(lease.id)), "access_denied");
    assert.equal(await codeOf(mallory.revokeLease(lease.id)), "access_denied");
    const denials = await admin.auditQuery({ types: ["access_denied"], leaseId: lease.id });
    assert.equal(denials.length, 3);
    assert.ok(denials.every((e) => e.actorId === "test:mallory" && e.outcome === "denied"));
    assert.equal((await claude.accessSecret(lease.id, { domain: "api.github.com" })).lease.uses, 1);
  });

  test("an agent naming another agent in a request is denied and audited", async () => {
    const { mallory, admin } = await setup();
    assert.equal(await codeOf(mallory.requestLease({ agent: "claude", secret: "github-token" })), "access_denied");
    const [e] = await admin.auditQuery({ types: ["access_denied"], order: "desc", limit: 1 });
    assert.equal(e!.actorId, "test:mallory");
    assert.match(e!.reason!, /may not act as agent "claude"/);
  });

  test("orchestrators act only for the agents they are configured for", async () => {
    const { vault } = await setup();
    const orch = vault.session(orchestrator(["claude-*"]));
    const lease = await orch.requestLease({ agent: "claude-7", secret: "github-token" });
    assert.equal(lease.agent, "claude-7");
    assert.equal((await orch.accessSecret(lease.id, { domain: "api.github.com" })).value.unsafeText(), "value-of-github-token");
    assert.equal(await codeOf(orch.requestLease({ agent: "claude", secret: "github-token" })), "access_denied");
    assert.equal(await codeOf(orch.requestLease({ secret: "github-token" })), "invalid_request");
    assert.equal(await codeOf(vault.session(agent("claude-8")).accessSecret(lease.id, { domain: "api.github.com" })), "access_denied");
  });

  test("max_uses=1 accessed by 50 concurrent calls succeeds exactly once", async () => {
    const { claude, admin } = await setup();
    const lease = await claude.requestLease({ secret: "one-shot" });
    assert.equal(lease.maxUses, 1);
    const results = await Promise.all(Array.from({ length: 50 }, () => codeOf(claude.accessSecret(lease.id, { domain: "api.example.com" }))));
    assert.equal(results.filter((r) => r === "resolved").length, 1);
    assert.equal(results.filter((r) => r === "lease_exhausted").length, 49);
    assert.equal((await admin.auditQuery({ types: ["secret_accessed"], leaseId: lease.id })).length, 1);
  });

  test("expired and revoked leases are refused; killswitch and revoke-all end every live lease", async () => {
    const { claude, admin, c, vault } = await setup();
    const l1 = await claude.requestLease({ secret: "github-token", ttl: "1m" });
    assert.equal(l1.expiresAt - l1.issuedAt, MIN);
    c.advance(MIN);
    assert.equal(await codeOf(claude.accessSecret(l1.id, { domain: "api.github.com" })), "lease_expired");
    const l2 = await claude.requestLease({ secret: "github-token" });
    await claude.revokeLease(l2.id, "done with it");
    assert.equal(await codeOf(claude.accessSecret(l2.id, { domain: "api.github.com" })), "lease_revoked");
    const w = vault.session(agent("worker"));
    const a = await claude.requestLease({ secret: "github-token" });
    const b = await w.requestLease({ secret: "db-password" });
    assert.equal((await w.accessSecret(b.id)).value.unsafeText(), "value-of-db-password", "any_domain leases need no domain");
    assert.equal((await w.accessSecret(b.id, { domain: "db.internal.example" })).value.unsafeText(), "value-of-db-password", "and take any domain");
    assert.deepEqual(await admin.revokeAllForAgent("worker"), { revoked: 1 });
    assert.equal(await codeOf(w.accessSecret(b.id)), "lease_revoked");
    const c2 = await claude.requestLease({ secret: "github-token" });
    assert.deepEqual(await admin.killswitch("incident 42"), { revoked: 2 });
    for (const id of [a.id, c2.id]) assert.equal(await codeOf(claude.accessSecret(id, { domain: "api.github.com" })), "lease_revoked");
    const [ks] = await admin.auditQuery({ types: ["killswitch"] });
    assert.equal(ks!.reason, "incident 42");
  });

  test("renewal is bounded by max_ttl and max_renewals, and needs a live lease", async () => {
    const { claude, c } = await setup();
    const lease = await claude.requestLease({ secret: "github-token" });
    c.advance(10 * MIN);
    const r1 = await claude.renewLease(lease.id);
    assert.equal(r1.expiresAt, lease.issuedAt + 25 * MIN);
    c.advance(10 * MIN);
    const r2 = await claude.renewLease(lease.id);
    assert.equal(r2.renewals, 2);
    assert.equal(await codeOf(claude.renewLease(lease.id)), "access_denied", "max_renewals = 2");
    const short = await claude.requestLease({ secret: "github-token" });
    const shortened = await claude.renewLease(short.id, { ttl: "1m" });
    assert.equal(shortened.expiresAt, c.now() + MIN, "a renewal with a shorter ttl than what is left sets expiry to ttl from now");
    const capped = await claude.requestLease({ secret: "capped" });
    assert.equal(capped.maxExpiresAt - capped.issuedAt, 20 * MIN);
    c.advance(10 * MIN);
    assert.equal((await claude.renewLease(capped.id)).expiresAt, capped.maxExpiresAt, "renewal is clamped to max_ttl");
    c.advance(5 * MIN);
    await assert.rejects(claude.renewLease(capped.id), /reached its maximum lifetime/);
    c.advance(5 * MIN);
    assert.equal(await codeOf(claude.renewLease(capped.id)), "lease_expired");
    assert.equal(await codeOf(claude.accessSecret(capped.id, { domain: "api.example.com" })), "lease_expired");
  });

  test("leases never outlive 24 h from issue unless the policy says so explicitly", async () => {
    const c = clock();
    const t = await makeVault({
      now: c.now,
      policy: grant("short", ["a"], ["s"], ["x.example.com"], 'ttl = "12h"') + grant("long", ["b"], ["s"], ["x.example.com"], 'ttl = "12h"\nmax_ttl = "72h"'),
    });
    await t.vault.admin().storeSecret({ name: "s", value: "v" });
    const a = t.vault.session(agent("a"));
    const la = await a.requestLease({ secret: "s" });
    assert.equal(la.maxExpiresAt - la.issuedAt, 24 * 3600_000);
    c.advance(11 * 3600_000);
    await a.renewLease(la.id);
    c.advance(11 * 3600_000);
    const r = await a.renewLease(la.id);
    assert.equal(r.expiresAt, la.issuedAt + 24 * 3600_000);
    const lb = await t.vault.session(agent("b")).requestLease({ secret: "s" });
    assert.equal(lb.maxExpiresAt - lb.issuedAt, 72 * 3600_000);
  });

  test("the per-agent cap of live leases refuses more with rate_limited", async () => {
    const { claude, mallory } = await setup({ limits: { maxLiveLeasesPerAgent: 3 } });
    const leases = [];
    for (let i = 0; i < 3; i++) leases.push(await claude.requestLease({ secret: "github-token" }));
    assert.equal(await codeOf(claude.requestLease({ secret: "github-token" })), "rate_limited");
    await claude.revokeLease(leases[0]!.id);
    await claude.requestLease({ secret: "github-token" });
    assert.equal(await codeOf(mallory.requestLease({ secret: "github-token" })), "access_denied", "the cap is per agent, policy still applies");
  });

  test("a policy reload takes effect on existing leases at once", async () => {
    const c = clock();
    let text = POLICY;
    const { Vault } = await import("../src/vault/vault.js");
    const { parsePolicy } = await import("../src/vault/policy.js");
    const { openSqliteStore } = await import("../src/store/sqlite/sqlite-store.js");
    const { envKeySource } = await import("../src/crypto/keys/env.js");
    const { tempDir, hexKey } = await import("./helpers.js");
    const vault = await Vault.open({
      store: openSqliteStore(`${tempDir()}/db`),
      keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!,
      policy: async () => parsePolicy(text, "p.toml"),
      now: c.now,
    });
    try {
      const admin = vault.admin();
      await admin.storeSecret({ name: "github-token", value: "v" });
      const claude = vault.session(agent("claude"));
      const lease = await claude.requestLease({ secret: "github-token" });
      text = "";
      await admin.reloadPolicy();
      assert.equal(await codeOf(claude.accessSecret(lease.id, { domain: "api.github.com" })), "access_denied");
      text = "[[rule]]\nname = 1";
      assert.equal(await codeOf(admin.reloadPolicy()), "policy_invalid");
      const events = await admin.auditQuery({ types: ["policy_reloaded"] });
      assert.deepEqual(events.map((e) => e.outcome), ["ok", "error"]);
    } finally {
      await vault.close();
    }
  });

  test("leases survive a restart", async () => {
    const t = await setup();
    const lease = await t.claude.requestLease({ secret: "github-token" });
    const t2 = await t.reopen();
    const claude2 = t2.vault.session(agent("claude"));
    assert.equal((await claude2.accessSecret(lease.id, { domain: "api.github.com" })).value.unsafeText(), "value-of-github-token");
  });

  test("expired leases are garbage collected after retention", async () => {
    const { claude, admin, c, store } = await setup({ limits: { leaseRetentionMs: MIN } });
    const lease = await claude.requestLease({ secret: "github-token", ttl: "1m" });
    c.advance(2 * MIN);
    assert.equal(await codeOf(claude.accessSecret(lease.id, { domain: "api.github.com" })), "lease_expired");
    c.advance(MIN);
    assert.deepEqual(await admin.gc(), { leasesDeleted: 1 });
    assert.equal(await store.getLease(lease.id), null);
  });
});
