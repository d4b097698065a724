/**
 * Promise audit: policy, leases, secrets, crypto at rest and the brakes.
 *
 * Each test takes one concrete promise of docs/policy.md, docs/cli/leases.md, docs/cli/secret.md,
 * docs/crypto.md or docs/security.md that no other test attacks (or attacks only in part), and
 * attacks it as a hostile agent, as someone who can write the database file without the master key,
 * or as an owner following the docs literally. Real parts: SQLite files edited by a second
 * connection, a real `lessor serve` child process, real sockets.
 *
 * A comment that names a cause in src/ describes a break its test found when it was written
 * (2026-12-04): five did (any_domain leases, four; a renewal past the dead-man deadline), fixed that day.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import Database from "better-sqlite3";
import { Vault } from "../src/vault/vault.js";
import { parsePolicy } from "../src/vault/policy.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { keyIdOf } from "../src/crypto/keyring.js";
import { openVault } from "../src/config/open-vault.js";
import { LessorClient } from "../src/client/index.js";
import { agent, clock, codeOf, hexKey, makeVault, refusalOf, tempDir } from "./helpers.js";
import { makeHome, startServe } from "./daemon-harness.js";

const CANARY = "CANARY-promise-audit-3b1f0e9d7c5a";
const PROD_CANARY = "CANARY-prod-only-8e2d4c6a0f1b";
const MIN = 60_000;

/** An allow rule in TOML. */
function allow(name: string, o: { agents?: string[]; secrets?: string[]; domains?: string[]; extra?: string } = {}): string {
  return `[[rule]]
name = ${JSON.stringify(name)}
effect = "allow"
agents = ${JSON.stringify(o.agents ?? ["claude"])}
secrets = ${JSON.stringify(o.secrets ?? ["tok"])}
${o.domains ? `domains = ${JSON.stringify(o.domains)}\n` : ""}${o.extra ?? ""}
`;
}

/** A vault on a SQLite file whose policy is re-read from the text last `set` on reloadPolicy(). */
async function reloadable(text0: string, opts: { now?: () => number; limits?: Parameters<typeof Vault.open>[0]["limits"] } = {}) {
  let text = text0;
  const vault = await Vault.open({
    store: openSqliteStore(join(tempDir("lessor-audit-"), "lessor.db")),
    keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!,
    policy: async () => parsePolicy(text, "policy.toml"),
    ...(opts.now ? { now: opts.now } : {}),
    ...(opts.limits ? { limits: opts.limits } : {}),
  });
  after(() => vault.close());
  return {
    vault,
    admin: vault.admin(),
    async reload(t: string) {
      text = t;
      await vault.admin().reloadPolicy();
    },
  };
}

/** Every audit row's text, for "the canary is nowhere" checks. */
async function auditText(vault: Vault): Promise<string> {
  return JSON.stringify(await vault.admin().auditQuery({ limit: 10_000 }), (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString("hex") : v));
}

// ---------------------------------------------------------------------------------------------
describe("any_domain leases and the domains a request names", () => {
  const DB_RULE = allow("nightly-db", { agents: ["nightly"], secrets: ["service:reports/db-password"], extra: "any_domain = true\nttl = \"2h\"\n" });
  const DB = { scope: "service:reports", name: "db-password" };

  // docs/policy.md, "Domains": "When a request names domains, a lease is granted for exactly those
  // (normalised) domains". docs/cli/leases.md, `--domain`: "the lease is limited to them".
  // The proxy does hold such a lease to its domains (src/proxy/lease-egress.ts reads lease.domains);
  // access_secret does not (src/vault/leases.ts targetError skips the domain check for anyDomain).
  test("an any_domain lease requested for named domains is limited to them at access_secret", async () => {
    const t = await makeVault({ policy: DB_RULE });
    await t.vault.admin().storeSecret({ ...DB, value: CANARY });
    const nightly = t.vault.session(agent("nightly"));
    const l = await nightly.requestLease({ secret: DB, domains: ["DB.Internal."] });
    assert.deepEqual(l.domains, ["db.internal"], "the lease holds exactly the requested (normalised) domain");
    const ok = await nightly.accessSecret(l.id, { domain: "db.internal" });
    assert.equal(ok.value.unsafeText(), CANARY);
    ok.value.wipe();
    const out = await refusalOf(nightly.accessSecret(l.id, { domain: "exfil.attacker.example" }));
    assert.equal(out.code, "access_denied", "a lease granted for db.internal must not be used for another host");
    assert.ok(!(await auditText(t.vault)).includes(CANARY));
  });

  // The domain-less use is decided by the lease's own rule: a reload that puts an earlier rule for the
  // same agent and secret, one that needs a domain (which decide() without domains returns first),
  // before it does not take the any_domain lease away; the rule that granted it still says any_domain.
  test("an any_domain lease stays usable without a domain after a reload puts an earlier, domain-bound rule for the same secret before its rule", async () => {
    let text = DB_RULE;
    const vault = await Vault.open({
      store: openSqliteStore(join(tempDir("lessor-pa-"), "lessor.db")),
      keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!,
      policy: async () => parsePolicy(text, "policy.toml"),
    });
    try {
      await vault.admin().storeSecret({ ...DB, value: CANARY });
      const nightly = vault.session(agent("nightly"));
      const l = await nightly.requestLease({ secret: DB });
      assert.equal(l.rule, "nightly-db");
      assert.equal(l.anyDomain, true);
      text = allow("nightly-api", { agents: ["nightly"], secrets: ["service:reports/db-password"], domains: ["reports.example.com"] }) + DB_RULE;
      await vault.admin().reloadPolicy();
      using v = (await nightly.accessSecret(l.id)).value;
      assert.equal(v.unsafeText(), CANARY);
    } finally {
      await vault.close();
    }
  });

  // docs/policy.md, "Approval": the approval is "bound to that exact request: agent, secret,
  // requested domains, …"; "the person approved those". `lessor approvals` shows the person
  // "to send it to: db.internal" (src/cli/commands/approval.ts), yet the lease it yields is accepted
  // by access_secret for any host.
  test("an approved any_domain request for db.internal yields a lease that works only for db.internal", async () => {
    const t = await makeVault({ policy: DB_RULE.replace('ttl = "2h"', 'ttl = "2h"\napproval = "required"') });
    await t.vault.admin().storeSecret({ ...DB, value: CANARY });
    const nightly = t.vault.session(agent("nightly"));
    const asked = await nightly.requestApproval({ secret: DB, domains: ["db.internal"], reason: "nightly report" });
    assert.ok(asked.required);
    assert.deepEqual(asked.approval.hosts, ["db.internal"], "the person is shown db.internal");
    await t.vault.admin().decideApproval(asked.approval.id, true, "ok");
    const l = await nightly.requestLease({ secret: DB, domains: ["db.internal"] });
    (await nightly.accessSecret(l.id, { domain: "db.internal" })).value.wipe();
    assert.equal(await codeOf(nightly.accessSecret(l.id, { domain: "exfil.attacker.example" })), "access_denied", "used for a host the person never approved");
  });

  // docs/policy.md, "Reloading": "every use is decided again by the policy in force"; the rule in
  // force after the reload has no any_domain, so (docs/policy.md, "any_domain") a use that names no
  // domain is not one it allows. Renewal already refuses this lease (renewLease checks
  // `lease.anyDomain && !rule.anyDomain`); useIn decides with no domain, and a rule's domains are
  // only checked "when the request names domains", so any allow rule for the agent and secret passes.
  test("after a reload takes any_domain away, an old any_domain lease cannot be used without naming a domain", async () => {
    const r = await reloadable(DB_RULE);
    await r.admin.storeSecret({ ...DB, value: CANARY });
    const nightly = r.vault.session(agent("nightly"));
    const l = await nightly.requestLease({ secret: DB });
    assert.equal(l.anyDomain, true);
    (await nightly.accessSecret(l.id)).value.wipe();
    // The owner narrows the rule to one host (same name): it no longer has any_domain.
    await r.reload(allow("nightly-db", { agents: ["nightly"], secrets: ["service:reports/db-password"], domains: ["db.internal"] }));
    assert.equal(await codeOf(nightly.renewLease(l.id)), "access_denied", "renewal is refused (holds)");
    assert.equal(await codeOf(nightly.accessSecret(l.id, { domain: "exfil.attacker.example" })), "access_denied", "a foreign host is refused (holds)");
    // Fresh leases under the new rule cannot be used without a domain either:
    const fresh = await nightly.requestLease({ secret: DB });
    assert.equal(await codeOf(nightly.accessSecret(fresh.id)), "access_denied", "a lease of the rule in force needs a domain");
    assert.equal(await codeOf(nightly.accessSecret(l.id)), "access_denied", "the old any_domain lease, used with no domain under a rule that requires one");
  });

  test("after a reload removes the any_domain rule, another rule that needs a domain does not let the old lease be used without one", async () => {
    // docs/policy.md, "Reloading": "every use is decided again by the policy in force, for the domain it names".
    const r = await reloadable(DB_RULE);
    await r.admin.storeSecret({ ...DB, value: CANARY });
    const nightly = r.vault.session(agent("nightly"));
    const l = await nightly.requestLease({ secret: DB });
    await r.reload(allow("web-only", { agents: ["*"], secrets: ["service:*/*"], domains: ["reports.example.com"] }));
    assert.equal(await codeOf(nightly.accessSecret(l.id)), "access_denied", "no rule in force allows a domain-less use");
  });
});

// ---------------------------------------------------------------------------------------------
describe("wildcard domains in requests, leases and uses", () => {
  const POLICY =
    allow("gh-wild", { secrets: ["gh"], domains: ["*.github.com"] }) +
    allow("exact", { secrets: ["ex"], domains: ["api.example.com"] }) +
    allow("idn", { secrets: ["idn"], domains: ["*.bücher.de"] });

  test("a requested *.api.github.com lease covers only hosts below it; a request broader than the rule is denied; IDN and case normalise", async () => {
    const t = await makeVault({ policy: POLICY });
    const admin = t.vault.admin();
    for (const name of ["gh", "ex", "idn"]) await admin.storeSecret({ name, value: CANARY });
    const c = t.vault.session(agent("claude"));

    const l = await c.requestLease({ secret: "gh", domains: ["*.API.github.com."] });
    assert.deepEqual(l.domains, ["*.api.github.com"]);
    (await c.accessSecret(l.id, { domain: "x.api.github.com" })).value.wipe();
    (await c.accessSecret(l.id, { domain: "A.B.API.GITHUB.COM." })).value.wipe();
    for (const host of ["api.github.com", "evil.github.com", "github.com", "x.api.github.com.evil.com", "xapi.github.com", "x.api.github.co", "x.api.github.com:443", "user@x.api.github.com"])
      assert.equal(await codeOf(c.accessSecret(l.id, { domain: host })), "access_denied", `lease *.api.github.com used for ${host}`);
    // A request must not be broader than the rule.
    for (const d of ["*.com", "*.github.com.evil.com", "github.com", "*"])
      assert.notEqual(await codeOf(c.requestLease({ secret: "gh", domains: [d] })), "resolved", `*.github.com rule granted ${d}`);
    assert.equal(await codeOf(c.requestLease({ secret: "ex", domains: ["*.example.com"] })), "access_denied", "an exact rule does not cover a wildcard request");
    assert.equal(await codeOf(c.requestLease({ secret: "ex", domains: ["*.api.example.com"] })), "access_denied", "an exact rule does not cover the hosts below it");
    // The rule's own wildcard, requested as is, never reaches the bare suffix.
    const w = await c.requestLease({ secret: "gh", domains: ["*.github.com"] });
    assert.equal(await codeOf(c.accessSecret(w.id, { domain: "github.com" })), "access_denied");
    // IDN: docs/policy.md "*.bücher.de matches SHOP.BÜCHER.DE."
    const i = await c.requestLease({ secret: "idn", domains: ["SHOP.BÜCHER.DE."] });
    assert.deepEqual(i.domains, ["shop.xn--bcher-kva.de"]);
    (await c.accessSecret(i.id, { domain: "shop.xn--bcher-kva.de" })).value.wipe();
    (await c.accessSecret(i.id, { domain: "Shop.Bücher.de" })).value.wipe();
    assert.equal(await codeOf(c.accessSecret(i.id, { domain: "shop.bucher.de" })), "access_denied", "a look-alike without the umlaut");
    assert.equal(await codeOf(c.accessSecret(i.id, { domain: "xn--bcher-kva.de" })), "access_denied", "the bare suffix");
    assert.ok(!(await auditText(t.vault)).includes(CANARY));
  });
});

// ---------------------------------------------------------------------------------------------
describe("the per-agent cap counts live leases only", () => {
  // docs/cli/leases.md: "the lease is used up at once and no longer counts as live"; the cap is on
  // live leases (max_live_leases_per_agent).
  test("used-up, expired and revoked leases do not count against max_live_leases_per_agent; live ones do, per agent", async () => {
    const c0 = clock(Date.UTC(2026, 2, 1));
    const t = await makeVault({ policy: allow("g", { agents: ["claude", "other"], domains: ["api.example.com"], extra: 'ttl = "1m"' }), now: c0.now, limits: { maxLiveLeasesPerAgent: 2 } });
    await t.vault.admin().storeSecret({ name: "tok", value: CANARY });
    const c = t.vault.session(agent("claude"));
    const o = t.vault.session(agent("other"));
    // Six used-up leases in a row (what `lessor lease` makes) never hit a cap of 2.
    for (let i = 0; i < 6; i++) (await c.requestLeaseAndAccess({ secret: "tok", maxUses: 1 })).value.wipe();
    // Two expired ones do not count.
    await c.requestLease({ secret: "tok" });
    await c.requestLease({ secret: "tok" });
    assert.equal(await codeOf(c.requestLease({ secret: "tok" })), "rate_limited", "two live leases fill a cap of 2");
    assert.ok((await o.requestLease({ secret: "tok" })).id, "another agent's cap is its own");
    c0.advance(MIN + 1);
    const a = await c.requestLease({ secret: "tok" });
    const b = await c.requestLease({ secret: "tok" });
    assert.equal(await codeOf(c.requestLease({ secret: "tok" })), "rate_limited");
    await c.revokeLease(a.id);
    (await c.accessSecret(b.id, { domain: "api.example.com" })).value.wipe();
    assert.ok((await c.requestLease({ secret: "tok" })).id, "a revoked lease frees its place");
  });
});

// ---------------------------------------------------------------------------------------------
describe("the killswitch and the dead-man switch at their edges", () => {
  // docs/cli/leases.md, killswitch: "from then on no lease is granted (lessor lease, request_lease,
  // lease-and-access, for every agent …) until an admin releases it." An approval a person gave
  // before the killswitch must not be the way around it.
  test("an approval given before the killswitch yields no lease while it is engaged", async () => {
    const t = await makeVault({ policy: allow("gated", { secrets: ["deploy"], domains: ["api.example.com"], extra: 'approval = "required"' }) });
    await t.vault.admin().storeSecret({ name: "deploy", value: CANARY });
    const c = t.vault.session(agent("claude"));
    const asked = await c.requestApproval({ secret: "deploy", domains: ["api.example.com"] });
    assert.ok(asked.required);
    await t.vault.admin().decideApproval(asked.approval.id, true);
    await t.vault.admin().killswitch("leak");
    const r = await refusalOf(c.requestLease({ secret: "deploy", domains: ["api.example.com"], approval: asked.approval.id }));
    assert.equal(r.code, "access_denied");
    assert.match(r.message, /killswitch/);
    assert.equal(await codeOf(c.requestLeaseAndAccess({ secret: "deploy", domains: ["api.example.com"], approval: asked.approval.id })), "access_denied");
    assert.deepEqual((await t.vault.admin().listLeases({ agent: "claude" })).length, 0);
  });

  test("the killswitch revokes every unexpired lease for good, used-up ones too: after the release a revoked lease is neither used nor renewed", async () => {
    const t = await makeVault({ policy: allow("g", { domains: ["api.example.com"] }) });
    await t.vault.admin().storeSecret({ name: "tok", value: CANARY });
    const c = t.vault.session(agent("claude"));
    const used = await c.requestLease({ secret: "tok", maxUses: 1 });
    (await c.accessSecret(used.id, { domain: "api.example.com" })).value.wipe();
    const live = await c.requestLease({ secret: "tok" });
    // The used-up lease is revoked too: a stream that rode on its last use must end with the killswitch.
    assert.deepEqual(await t.vault.admin().killswitch("first"), { revoked: 2 });
    assert.equal(await codeOf(c.accessSecret(live.id, { domain: "api.example.com" })), "lease_revoked");
    await t.vault.admin().releaseKillswitch("ok");
    assert.equal(await codeOf(c.accessSecret(used.id, { domain: "api.example.com" })), "lease_revoked");
    assert.equal(await codeOf(c.renewLease(live.id)), "lease_revoked", "a revoked lease is not brought back by a renewal after the release");
  });

  // docs/cli/leases.md, heartbeat: "when no heartbeat came for that long, the killswitch is pulled
  // on its own: every live lease revoked"; "The deadline is checked inside every grant's and every
  // use's transaction, daemon or not (so nothing is granted or used past it)". renewLease checks no
  // deadline (src/vault/leases.ts renewLease calls neither heartbeatIn nor deadmanIn), so with no
  // daemon running an agent renews its lease past the deadline, and is told it is live until later.
  test("past the dead-man deadline (no daemon) a renewal does not extend a lease that the switch revokes", async () => {
    const c0 = clock(Date.UTC(2026, 3, 1));
    const t = await makeVault({ policy: allow("g", { domains: ["api.example.com"], extra: 'ttl = "10m"' }), now: c0.now, limits: { heartbeatMs: 5 * MIN } });
    await t.vault.admin().storeSecret({ name: "tok", value: CANARY });
    const c = t.vault.session(agent("claude"));
    const l = await c.requestLease({ secret: "tok" });
    c0.advance(5 * MIN + 1000); // the deadline passed; nobody asked for anything since
    const renewed = await refusalOf(c.renewLease(l.id));
    assert.notEqual(renewed.code, "resolved", "a renewal past the dead-man deadline was granted (the switch should have revoked the lease)");
    assert.equal(await codeOf(c.accessSecret(l.id, { domain: "api.example.com" })), "lease_revoked");
  });
});

// ---------------------------------------------------------------------------------------------
describe("the killswitch racing grants on a real daemon", () => {
  // docs/security.md, "Policy and leases": "The killswitch is a persisted lockout checked inside every
  // grant's transaction (any process …)". Grants are pipelined to a real `lessor serve` while another
  // process (this one, embedded on the same SQLite file) pulls the killswitch.
  test("no lease_granted event is chained after the killswitch event, and no lease is live afterwards", async () => {
    const home = await makeHome({
      config: "[vault]\nmax_live_leases_per_agent = 100000\n",
      policy: allow("g", { domains: ["api.example.com"], extra: "max_uses = 3" }),
    });
    const v0 = await openVault({ home, env: { LESSOR_HOME: home } });
    await v0.admin().storeSecret({ name: "tok", value: CANARY });
    await v0.close();
    const d = await startServe(home);
    after(() => d.stop());
    const client = await LessorClient.connect({ socketPath: d.socket });
    after(() => client.close());
    const embedded = await openVault({ home, env: { LESSOR_HOME: home } });
    after(() => embedded.close());

    let stop = false;
    const granted: string[] = [];
    const codes = new Set<string>();
    const flood = (async () => {
      while (!stop) {
        const rs = await Promise.allSettled(Array.from({ length: 16 }, () => client.requestLease({ agent: "claude", secret: "tok", domains: ["api.example.com"] })));
        for (const r of rs) {
          if (r.status === "fulfilled") granted.push(r.value.id);
          else codes.add((r.reason as { code: string }).code);
        }
        if (codes.has("access_denied")) break;
      }
    })();
    await new Promise((r) => setTimeout(r, 400));
    assert.ok(granted.length > 0, "grants were flowing before the killswitch");
    await embedded.admin().killswitch("race");
    await new Promise((r) => setTimeout(r, 300));
    stop = true;
    await flood;
    assert.ok(codes.has("access_denied"), "grants after the killswitch are refused");

    const rows = await embedded.admin().auditQuery({ limit: 100_000 });
    const ks = rows.find((e) => e.type === "killswitch" && e.outcome === "ok")!;
    const lateGrants = rows.filter((e) => e.type === "lease_granted" && e.seq > ks.seq);
    assert.deepEqual(lateGrants.map((e) => e.leaseId), [], "a grant was chained after the killswitch");
    const live = (await embedded.admin().listLeases({ agent: "claude", limit: 100_000 })).filter((l) => l.revokedAt === null && l.expiresAt > Date.now());
    assert.deepEqual(live.map((l) => l.id), [], "a lease survived the killswitch");
    assert.ok((await embedded.admin().auditVerify()).ok);
  });
});

// ---------------------------------------------------------------------------------------------
describe("ciphertext at rest: rows moved by someone who can write lessor.db but lacks the master key", () => {
  // docs/crypto.md, "Associated data": "a record copied to another scope, name or version fails to
  // open. So does a wrapped DEK swapped between versions, an edited algorithm label, or an edited key id."
  // docs/crypto.md, "Errors when opening": one decrypt_failed message for "a moved record … an unknown algorithm".

  async function twoKeyVault(policy: string) {
    const dir = tempDir("lessor-audit-crypto-");
    const k1 = hexKey();
    const k2 = hexKey();
    const dbPath = join(dir, "lessor.db");
    const vault = await Vault.open({
      store: openSqliteStore(dbPath),
      keys: envKeySource({ LESSOR_MASTER_KEY: k1, LESSOR_MASTER_KEY_PREVIOUS: k2 })!,
      policy: parsePolicy(policy, "policy.toml"),
    });
    after(() => vault.close());
    return { vault, dbPath, k2Id: keyIdOf(Buffer.from(k2, "hex")) };
  }

  const POLICY = allow("g", { agents: ["claude"], secrets: ["global/db"], domains: ["db.example.com"] });

  test("a prod secret's rows moved into the granted global scope (secret row renamed, or versions re-parented) never open for the agent", async () => {
    const t = await twoKeyVault(POLICY);
    const admin = t.vault.admin();
    await admin.storeSecret({ scope: "env:prod", name: "db", value: PROD_CANARY });
    await admin.storeSecret({ scope: "global", name: "db", value: CANARY });
    const c = t.vault.session(agent("claude"));
    const messages: string[] = [];

    // 1. The global secret's versions are pointed at the prod secret's ciphertext rows (re-parented).
    const db = new Database(t.dbPath);
    db.pragma("foreign_keys = OFF");
    const ids = db.prepare("SELECT id, scope FROM secrets WHERE name = 'db'").all() as { id: number; scope: string }[];
    const prodId = ids.find((r) => r.scope === "env:prod")!.id;
    const globalId = ids.find((r) => r.scope === "global")!.id;
    db.prepare("UPDATE secret_versions SET secret = -1 WHERE secret = ?").run(globalId);
    db.prepare("UPDATE secret_versions SET secret = ? WHERE secret = ?").run(globalId, prodId);
    db.close();
    const r1 = await refusalOf(c.requestLeaseAndAccess({ secret: "db", domains: ["db.example.com"] }));
    messages.push(r1.message);
    assert.equal(r1.code, "decrypt_failed", "prod's ciphertext under the global name");

    // 2. Put things back, then swap the scopes of the two secret rows themselves.
    const db2 = new Database(t.dbPath);
    db2.pragma("foreign_keys = OFF");
    db2.prepare("UPDATE secret_versions SET secret = ? WHERE secret = ?").run(prodId, globalId);
    db2.prepare("UPDATE secret_versions SET secret = ? WHERE secret = -1").run(globalId);
    db2.close();
    (await c.requestLeaseAndAccess({ secret: "db", domains: ["db.example.com"] })).value.wipe();
    const db3 = new Database(t.dbPath);
    db3.transaction(() => {
      db3.prepare("UPDATE secrets SET scope = 'tmp:x' WHERE id = ?").run(globalId);
      db3.prepare("UPDATE secrets SET scope = 'global' WHERE id = ?").run(prodId);
      db3.prepare("UPDATE secrets SET scope = 'env:prod' WHERE id = ?").run(globalId);
    })();
    db3.close();
    const r2 = await refusalOf(c.requestLeaseAndAccess({ secret: "db", domains: ["db.example.com"] }));
    messages.push(r2.message);
    assert.equal(r2.code, "decrypt_failed", "the prod secret's row renamed into scope global");
    assert.equal(await codeOf(admin.revealSecret({ scope: "global", name: "db" })), "decrypt_failed");
    assert.equal(await codeOf(admin.revealSecret({ scope: "env:prod", name: "db" })), "decrypt_failed");
    assert.equal(new Set(messages).size, 1, `one message for every moved record: ${JSON.stringify(messages)}`);
    for (const m of messages) assert.ok(!m.includes(CANARY) && !m.includes(PROD_CANARY));
    assert.ok(!(await auditText(t.vault)).includes(PROD_CANARY));
  });

  test("an edited key id (to another loaded key) or algorithm label (the other one, or unknown) fails with decrypt_failed; a missing key id is key_unavailable", async () => {
    const t = await twoKeyVault(POLICY);
    const admin = t.vault.admin();
    await admin.storeSecret({ scope: "global", name: "db", value: CANARY });
    const edit = (sql: string, ...args: unknown[]) => {
      const db = new Database(t.dbPath);
      db.prepare(sql).run(...args);
      db.close();
    };
    const orig = (() => {
      const db = new Database(t.dbPath);
      const r = db.prepare("SELECT alg, key_id FROM secret_versions").get() as { alg: string; key_id: string };
      db.close();
      return r;
    })();
    const messages: string[] = [];
    const attempt = async (what: string, want: string) => {
      const r = await refusalOf(admin.revealSecret({ scope: "global", name: "db" }));
      assert.equal(r.code, want, what);
      assert.ok(!r.message.includes(CANARY));
      if (want === "decrypt_failed") messages.push(r.message);
    };
    edit("UPDATE secret_versions SET key_id = ?", t.k2Id);
    await attempt("key id of the other loaded key", "decrypt_failed");
    edit("UPDATE secret_versions SET key_id = ?", orig.key_id);
    edit("UPDATE secret_versions SET alg = ?", orig.alg === "aes-256-gcm" ? "xchacha20-poly1305" : "aes-256-gcm");
    await attempt("the other algorithm's label", "decrypt_failed");
    edit("UPDATE secret_versions SET alg = 'rot13'");
    await attempt("an unknown algorithm label", "decrypt_failed");
    edit("UPDATE secret_versions SET alg = ?", orig.alg);
    assert.equal((await admin.revealSecret({ scope: "global", name: "db" })).value.unsafeText(), CANARY, "the restored row opens");
    assert.equal(new Set(messages).size, 1, `one generic message: ${JSON.stringify(messages)}`);
    edit("UPDATE secret_versions SET key_id = '00112233445566ff'");
    const gone = await refusalOf(admin.revealSecret({ scope: "global", name: "db" }));
    assert.equal(gone.code, "key_unavailable");
    assert.match(gone.message, /00112233445566ff/, "key_unavailable names the id");
  });
});

// ---------------------------------------------------------------------------------------------
describe("policy files the docs call errors, and edges the docs call valid", () => {
  const base = (extra: string, more = "") => `${more}[[rule]]\nname = "r"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["tok"]\ndomains = ["api.example.com"]\n${extra}\n`;
  const loads = (text: string): string | null => {
    const p = parsePolicy(text, "policy.toml");
    return p.error ?? null;
  };
  const parseErr = (text: string): string | null => {
    try {
      return loads(text);
    } catch (e) {
      return (e as Error).message;
    }
  };

  test("durations: largest unit first, each once, positive, lower-case units, at most 30d (docs/policy.md Durations, Lease terms)", () => {
    for (const bad of ['"1h1h"', '"30m1h"', '"0s"', '"0m"', '"-5m"', '"1.5h"', '"15M"', '"15 m"', '" 15m"', '"15"', '"m"', '"1h0.5m"', '"2592000001ms"', '"30d1ms"', '"721h"'])
      assert.notEqual(parseErr(base(`max_ttl = ${bad}\nttl = "1m"`)), null, `max_ttl = ${bad} was accepted`);
    for (const good of ['"30d"', '"720h"', '"1d23h59m59s999ms"', '"2592000000ms"'])
      assert.equal(parseErr(base(`max_ttl = ${good}\nttl = "1m"`)), null, `max_ttl = ${good} was refused`);
  });

  test("lease terms: ttl above max_ttl through [defaults], a ttl over the built-in 24h with no max_ttl, bad integers, a pattern with two '/', a bad rule name", () => {
    const cases: [string, string][] = [
      ["[defaults] max_ttl 1h, rule ttl 2h", base('ttl = "2h"', '[defaults]\nmax_ttl = "1h"\n\n')],
      ["[defaults] ttl 2h, rule max_ttl 1h", base('max_ttl = "1h"', '[defaults]\nttl = "2h"\n\n')],
      ["ttl 25h with the built-in max_ttl", base('ttl = "25h"')],
      ["[defaults] max_ttl 31d", base("", '[defaults]\nmax_ttl = "31d"\n\n')],
      ["max_uses 0", base("max_uses = 0")],
      ["max_uses 1.5", base("max_uses = 1.5")],
      ["max_uses \"3\"", base('max_uses = "3"')],
      ["max_renewals -1", base("max_renewals = -1")],
      ["[defaults] max_uses 0", base("", "[defaults]\nmax_uses = 0\n\n")],
      ["two slashes", base("").replace('secrets = ["tok"]', 'secrets = ["env:prod/a/b"]')],
      ["a name with a space", base("").replace('name = "r"', 'name = "my rule"')],
      ["a 65-character name", base("").replace('name = "r"', `name = "${"r".repeat(65)}"`)],
      ["empty methods", base("methods = []")],
      ["a method with a space", base('methods = ["GET /"]')],
      ["a path without its leading /", base('paths = ["repos/"]')],
      ["a path with a dot segment", base('paths = ["/repos/../admin/"]')],
      ["renewable as a string", base('renewable = "false"')],
      ["approval in another case", base('approval = "Required"')],
      ["any_domain on a deny rule", '[[rule]]\nname = "d"\neffect = "deny"\nagents = ["*"]\nsecrets = ["*/*"]\nany_domain = false\n'],
      ["effect in upper case", base("").replace('effect = "allow"', 'effect = "ALLOW"')],
      ["an IP literal as a domain", base("").replace('["api.example.com"]', '["127.0.0.1"]')],
      ["a domain with a port", base("").replace('["api.example.com"]', '["api.example.com:443"]')],
    ];
    for (const [what, text] of cases) assert.notEqual(parseErr(text), null, `${what} was accepted`);
    // An explicit 48h is honoured (docs/policy.md: "allowed because it is written here explicitly").
    assert.equal(parseErr(base('ttl = "30h"', '[defaults]\nmax_ttl = "48h"\n\n')), null, "[defaults] max_ttl 48h lets a rule's ttl be 30h");
  });

  test("deny by default on odd requests: a rule for global/tok gives nothing for every other spelling the agent can send", async () => {
    const t = await makeVault({ policy: base('methods = ["GET"]\npaths = ["/repos/"]\nreveal = true') });
    await t.vault.admin().storeSecret({ name: "tok", value: CANARY });
    await t.vault.admin().storeSecret({ scope: "env:prod", name: "tok", value: PROD_CANARY });
    const c = t.vault.session(agent("claude"));
    for (const secret of ["env:prod/tok", "Global/tok", "global/TOK", "global//tok", "/tok", "tok/", "global/tok/", "*/tok", "global/*", "global/to?", "env:prod@x/tok", { scope: "env:prod", name: "tok" }, { scope: "global ", name: "tok" }] as const) {
      const r = await refusalOf(c.requestLeaseAndAccess({ secret: secret as never, domains: ["api.example.com"] }, { method: "GET", path: "/repos/x" }));
      assert.notEqual(r.code, "resolved", `granted for ${JSON.stringify(secret)}`);
      assert.ok(!r.message.includes(PROD_CANARY) && !r.message.includes(CANARY));
    }
    // The one granted spelling works only inside its method and path.
    const l = await c.requestLease({ secret: "tok", domains: ["api.example.com"] });
    for (const [method, path] of [["DELETE", "/repos/x"], ["GET", "/user"], ["GET", "/repos"], ["GET", "/repos/../user"], ["GET", "/repos/%2e%2e/user"], ["GET", "/repos/x%2f..%2f..%2fuser"], ["GET", "/repos/..;/user"], ["GET", "\\repos\\x"], ["get ", "/repos/x"], ["GET", "/REPOS/x"]] as const)
      assert.notEqual(await codeOf(c.accessSecret(l.id, { domain: "api.example.com", method, path })), "resolved", `${method} ${path}`);
    (await c.accessSecret(l.id, { domain: "api.example.com", method: "get", path: "/repos/a/../b" })).value.wipe();
  });
});

// ---------------------------------------------------------------------------------------------
describe("renewals", () => {
  // docs/policy.md [defaults]: "max_ttl: a lease never lives past issued + max_ttl, however often renewed";
  // docs/cli/leases.md renew: "within the rule's max_ttl and max_renewals". Renewals of a used-up lease
  // must not bring it back, and a renewal with a huge --ttl never passes the rule's ttl.
  test("a used-up lease is not renewed back to life; 200 renewals in a row never pass issued + max_ttl; --ttl is capped by the rule's ttl", async () => {
    const c0 = clock(Date.UTC(2026, 4, 1));
    const t = await makeVault({ policy: allow("g", { domains: ["api.example.com"], extra: 'ttl = "10m"\nmax_ttl = "1h"\nmax_uses = 2' }), now: c0.now });
    await t.vault.admin().storeSecret({ name: "tok", value: CANARY });
    const c = t.vault.session(agent("claude"));
    const used = await c.requestLease({ secret: "tok" });
    for (let i = 0; i < 2; i++) (await c.accessSecret(used.id, { domain: "api.example.com" })).value.wipe();
    assert.equal(await codeOf(c.renewLease(used.id)), "lease_exhausted");
    const l = await c.requestLease({ secret: "tok" });
    const renewed = await c.renewLease(l.id, { ttl: "30d" });
    assert.ok(renewed.expiresAt <= c0.now() + 10 * MIN, "a renewal's --ttl is capped by the rule's ttl");
    let last = renewed.expiresAt;
    let refusedAt = -1;
    for (let i = 0; i < 200; i++) {
      c0.advance(MIN);
      const r = await refusalOf(c.renewLease(l.id));
      const now = (await t.vault.admin().listLeases({ agent: "claude" })).find((x) => x.id === l.id)!;
      assert.ok(now.expiresAt <= l.issuedAt + 60 * MIN, `renewal ${i} took the lease past issued + max_ttl`);
      assert.ok(now.expiresAt >= last || r.code !== "resolved");
      last = now.expiresAt;
      if (r.code !== "resolved") {
        refusedAt = i;
        break;
      }
    }
    assert.ok(refusedAt > 0, "renewals end once the lease reaches issued + max_ttl");
    c0.set(l.issuedAt + 60 * MIN);
    assert.equal(await codeOf(c.accessSecret(l.id, { domain: "api.example.com" })), "lease_expired", "at issued + max_ttl the lease is over");
  });
});

// ---------------------------------------------------------------------------------------------
describe("the built CLI as the docs show it", () => {
  // docs/cli/secret.md: "every change and every value read is audited"; "Each reveal is audited as
  // secret_revealed". docs/cli/leases.md: "The value never appears on stderr, in --json output or in
  // the audit trail."; "naming another agent is refused" for a caller the daemon knows as an agent.
  test("an agent token over TCP: lease for another agent refused (exit 3); its own lease prints the value only; renew of the used-up lease refused; revoke of it exits 0", async () => {
    const { runCli } = await import("./cli-harness.js");
    const home = await makeHome({
      config: '[server]\ntcp = "127.0.0.1:0"\n',
      policy: allow("g", { agents: ["claude", "ci"], secrets: ["tok"], domains: ["api.example.com"], extra: "max_uses = 5" }),
    });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.admin().storeSecret({ name: "tok", value: CANARY });
    const tok = await v.admin().createToken({ name: "claude-token", role: "agent", agent: "claude" });
    await v.close();
    const d = await startServe(home);
    after(() => d.stop());
    const tokenFile = join(tempDir("lessor-audit-tok-"), "token");
    writeFileSync(tokenFile, tok.token, { mode: 0o600 });
    const env = { LESSOR_ADDR: `${d.tcp!.host}:${d.tcp!.port}`, LESSOR_TOKEN_FILE: tokenFile, LESSOR_HOME: join(tempDir("lessor-audit-nohome-"), "none") };
    const other = await runCli(["lease", "tok", "--agent", "ci", "--domain", "api.example.com"], { env });
    assert.equal(other.code, 3, other.stderr);
    assert.equal(other.stdout, "");
    const own = await runCli(["lease", "tok", "--domain", "api.example.com"], { env });
    assert.equal(own.code, 0, own.stderr);
    assert.equal(own.stdout, CANARY);
    assert.ok(!own.stderr.includes(CANARY));
    const id = /lease ([0-9a-f-]{36})/.exec(own.stderr)![1]!;
    const renew = await runCli(["renew", id], { env });
    assert.equal(renew.code, 3, `renewing a used-up lease: ${renew.stderr}`);
    const rv = await runCli(["revoke", id], { env });
    assert.equal(rv.code, 0, rv.stderr);
    const unknown = await runCli(["revoke", "01940000-0000-7000-8000-000000000000"], { env });
    assert.equal(unknown.code, 4, unknown.stderr);
    const json = await runCli(["lease", "tok", "--domain", "api.example.com", "--json"], { env });
    assert.equal(json.code, 0, json.stderr);
    assert.ok(!json.stdout.includes(CANARY) && !json.stderr.includes(CANARY));
    assert.equal(JSON.parse(json.stdout).maxUses, 5, "--json keeps the rule's uses");
    const v2 = await openVault({ home, env: { LESSOR_HOME: home } });
    after(() => v2.close());
    assert.ok(!(await auditText(v2)).includes(CANARY));
  });
});

