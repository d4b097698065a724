/**
 * `reveal = false` (docs/policy.md, "Who holds the value"): a rule whose value the agent never holds.
 * Only an injecting proxy run by the owner or an orchestrator uses it (an access with `via: "proxy"`);
 * the agent's own accesses are refused whatever they claim, and so is an owner's access that would
 * hand the value on (the CLI's lease, lessor run without its proxy). A rule with `methods` or `paths`
 * is proxy-only unless it says `reveal = true`: an agent holding the value could send it anywhere.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { parsePolicy } from "../src/vault/policy.js";
import { Vault } from "../src/vault/vault.js";
import { makeHome, startServe } from "./daemon-harness.js";
import { PG_SKIP } from "./pg-helpers.js";
import type { Store } from "../src/vault/ports.js";
import { copyStore } from "../src/store/copy.js";
import { runCli } from "./cli-harness.js";
import { agent, hexKey, makeVault, orchestrator, refusalOf, tempDir } from "./helpers.js";

const CANARY = "ghp_CANARYreveal0123456789abcdefABCDEF";
const HOST = "api.github.com";

const POLICY = `[[rule]]
name = "limited"
effect = "allow"
agents = ["claude"]
secrets = ["gh"]
domains = ["${HOST}"]
methods = ["GET"]
paths = ["/repos/"]

[[rule]]
name = "db-hidden"
effect = "allow"
agents = ["claude"]
secrets = ["db"]
any_domain = true
reveal = false

[[rule]]
name = "plain"
effect = "allow"
agents = ["claude"]
secrets = ["plain"]
domains = ["${HOST}"]

[[rule]]
name = "limited-but-revealed"
effect = "allow"
agents = ["claude"]
secrets = ["open-limited"]
domains = ["${HOST}"]
methods = ["GET"]
reveal = true
`;

const IN = { domain: HOST, method: "GET", path: "/repos/acme/app" };

async function seeded(): Promise<Awaited<ReturnType<typeof makeVault>>> {
  const t = await makeVault({ policy: POLICY });
  const admin = t.vault.admin();
  for (const name of ["gh", "db", "plain", "open-limited"]) await admin.storeSecret({ name, value: CANARY });
  return t;
}

/**
 * A vault whose rule "gated" needs a person's approval and does not reveal the value, with claude's
 * request approved (the person was shown proxy use only); `reveal()` reloads the same rule revealing.
 */
async function approvedUnderProxyOnlyRule(): Promise<{ vault: Vault; claude: ReturnType<Vault["session"]>; approvalId: string; reveal: () => Promise<void> }> {
  const approved = `[[rule]]\nname = "gated"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["gh"]\ndomains = ["${HOST}"]\napproval = "required"\n`;
  let text = `${approved}reveal = false\n`;
  const vault = await Vault.open({
    store: openSqliteStore(join(tempDir("lessor-reveal-"), "lessor.db")),
    keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!,
    policy: async () => parsePolicy(text, "policy.toml"),
  });
  const admin = vault.admin();
  await admin.storeSecret({ name: "gh", value: CANARY });
  const claude = vault.session(agent("claude"));
  const asked = await claude.requestApproval({ secret: "gh", domains: [HOST] });
  assert.equal(asked.required, true);
  if (!asked.required) throw new Error("unreachable");
  assert.equal(asked.approval.reveal, false, "the person is shown proxy use only");
  await admin.decideApproval(asked.approval.id, true);
  const reveal = async (): Promise<void> => {
    text = approved; // the same rule, now revealing the value
    await admin.reloadPolicy();
  };
  return { vault, claude, approvalId: asked.approval.id, reveal };
}

describe("the reveal field in the policy", () => {
  const rule = (extra: string, effect = "allow"): { reveal: boolean } =>
    parsePolicy(`[[rule]]\nname = "r"\neffect = "${effect}"\nagents = ["a"]\nsecrets = ["s"]\n${effect === "allow" ? 'domains = ["x.example"]\n' : ""}${extra}`, "p.toml").rules[0]!;

  test("defaults: true for a plain rule, false once methods or paths are set; written, it wins", () => {
    assert.equal(rule("").reveal, true);
    assert.equal(rule('methods = ["GET"]').reveal, false);
    assert.equal(rule('paths = ["/repos/"]').reveal, false);
    assert.equal(rule('methods = ["GET"]\nreveal = true').reveal, true);
    assert.equal(rule("reveal = false").reveal, false);
  });

  test("anything but true or false, or reveal on a deny rule, is a policy error naming the rule and field", () => {
    for (const bad of ['reveal = "no"', "reveal = 0", 'reveal = "false"']) {
      assert.throws(() => rule(bad), (e: Error & { code?: string }) => e.code === "policy_invalid" && /rule 1 \("r"\).*reveal/.test(e.message), bad);
    }
    assert.throws(() => rule("reveal = false", "deny"), (e: Error & { code?: string }) => e.code === "policy_invalid" && /reveal/.test(e.message) && /deny rule/.test(e.message));
  });
});

describe("an agent never gets the value of a rule that does not reveal it (embedded)", () => {
  test("lease with access, then access with a proxy claim: refused, audited with the reason, no use counted, and the lease from the refused first access is revoked", async () => {
    const t = await seeded();
    const claude = t.vault.session(agent("claude"));
    const first = await refusalOf(claude.requestLeaseAndAccess({ secret: "gh" }, IN));
    assert.equal(first.code, "access_denied");
    assert.match(first.message, /rule "limited" does not hand the value of global\/gh to the agent \(reveal = false, the default for a rule with methods or paths\)/);
    assert.match(first.message, /lessor run --agent claude/);
    assert.ok(!first.message.includes(CANARY));

    const lease = await claude.requestLease({ secret: "gh" });
    // An agent claiming to be a proxy is still the agent.
    const claimed = await refusalOf(claude.accessSecret(lease.id, { ...IN, via: "proxy" }));
    assert.equal(claimed.code, "access_denied");
    assert.match(claimed.message, /does not hand the value/);
    const db = await claude.requestLease({ secret: "db" });
    assert.equal((await refusalOf(claude.accessSecret(db.id, { via: "proxy" }))).code, "access_denied");

    const leases = await t.vault.admin().listLeases({ agent: "claude" });
    assert.equal(leases.find((l) => l.id === lease.id)!.uses, 0, "a refused access uses nothing");
    const revoked = leases.filter((l) => l.id !== lease.id && l.id !== db.id && l.name === "gh");
    assert.equal(revoked.length, 1);
    assert.notEqual(revoked[0]!.revokedAt, null, "the lease whose first access was refused is revoked with it");

    const rows = await t.vault.admin().auditQuery({ types: ["access_denied"], agent: "claude" });
    assert.equal(rows.length, 3);
    for (const r of rows) assert.match(r.reason ?? "", /reveal = false/);
    assert.ok(!JSON.stringify(rows).includes(CANARY));
  });

  test("the owner: refused without via, served with via \"proxy\" (methods and paths still checked); an orchestrator acting for the agent too", async () => {
    const t = await seeded();
    const admin = t.vault.admin();
    const lease = await admin.requestLease({ agent: "claude", secret: "gh" });
    const plain = await refusalOf(admin.accessSecret(lease.id, IN));
    assert.equal(plain.code, "access_denied");
    assert.match(plain.message, /only an injecting proxy may use it/);
    using got1 = (await admin.accessSecret(lease.id, { ...IN, via: "proxy" })).value;
    assert.equal(got1.unsafeText(), CANARY);
    assert.equal((await refusalOf(admin.accessSecret(lease.id, { ...IN, method: "POST", via: "proxy" }))).code, "access_denied");
    assert.equal((await refusalOf(admin.accessSecret(lease.id, { ...IN, path: "/user", via: "proxy" }))).code, "access_denied");

    const orch = t.vault.session(orchestrator(["claude"]));
    const ol = await orch.requestLease({ agent: "claude", secret: "db" });
    assert.equal((await refusalOf(orch.accessSecret(ol.id))).code, "access_denied");
    using got2 = (await orch.accessSecret(ol.id, { via: "proxy" })).value;
    assert.equal(got2.unsafeText(), CANARY);
  });

  test("rules that reveal: a plain rule and one that says reveal = true next to methods serve the agent as before", async () => {
    const t = await seeded();
    const claude = t.vault.session(agent("claude"));
    using a = (await claude.requestLeaseAndAccess({ secret: "plain" }, { domain: HOST })).value;
    assert.equal(a.unsafeText(), CANARY);
    using b = (await claude.requestLeaseAndAccess({ secret: "open-limited" }, IN)).value;
    assert.equal(b.unsafeText(), CANARY);
  });

  test("a reload that turns reveal off binds the leases granted before it", async () => {
    let text = POLICY.replace('secrets = ["gh"]\ndomains = ["api.github.com"]\nmethods = ["GET"]\npaths = ["/repos/"]', 'secrets = ["gh"]\ndomains = ["api.github.com"]');
    assert.notEqual(text, POLICY);
    const vault = await Vault.open({
      store: openSqliteStore(join(tempDir("lessor-reveal-"), "lessor.db")),
      keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!,
      policy: async () => parsePolicy(text, "policy.toml"),
    });
    try {
      await vault.admin().storeSecret({ name: "gh", value: CANARY });
      const claude = vault.session(agent("claude"));
      const lease = await claude.requestLease({ secret: "gh" });
      (await claude.accessSecret(lease.id, { domain: HOST })).value.wipe();
      text = POLICY;
      await vault.admin().reloadPolicy();
      assert.equal((await refusalOf(claude.accessSecret(lease.id, IN))).code, "access_denied");
    } finally {
      await vault.close();
    }
  });

  test("an approval given for a proxy-only rule is not spent after the rule starts revealing the value", async () => {
    const { vault, claude, approvalId, reveal } = await approvedUnderProxyOnlyRule();
    try {
      await reveal();
      const r = await refusalOf(claude.requestLeaseAndAccess({ secret: "gh", domains: [HOST] }, { domain: HOST }));
      assert.equal(r.code, "access_denied", r.message);
      assert.match(r.message, /needs a person's approval for this request: approval \S+ was opened/);
      assert.ok(!r.message.includes(approvalId), "a new approval is asked for, not the old one spent");
      assert.ok(!r.message.includes(CANARY));
    } finally {
      await vault.close();
    }
  });

  // A reload that turns reveal ON widens nothing granted before it: the lease records that it was
  // granted proxy-only (LeaseRecord.proxyOnly), whatever the store.
  const proxyOnlyStays = async (store: Store): Promise<void> => {
    const hidden = `[[rule]]\nname = "db-hidden"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["db"]\nany_domain = true\n`;
    let text = `${hidden}reveal = false\n`;
    const vault = await Vault.open({ store, keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!, policy: async () => parsePolicy(text, "policy.toml") });
    try {
      const admin = vault.admin();
      await admin.storeSecret({ name: "db", value: CANARY });
      const claude = vault.session(agent("claude"));
      const before = await claude.requestLease({ secret: "db" });
      assert.equal(before.proxyOnly, true, "granted under reveal = false: recorded proxy-only");
      text = hidden; // the same rule, now revealing the value (the default)
      await admin.reloadPolicy();
      const r = await refusalOf(claude.accessSecret(before.id, { domain: HOST }));
      assert.equal(r.code, "access_denied", r.message);
      assert.match(r.message, /this lease was granted proxy-only \(rule "db-hidden" did not reveal the value of global\/db when it was granted\), and a later policy does not change that/);
      assert.ok(!r.message.includes(CANARY));
      assert.equal((await admin.listLeases({ agent: "claude" })).find((l) => l.id === before.id)!.uses, 0, "the refused access used nothing");
      // The owner's injecting proxy still uses it; a lease granted after the reload reveals.
      using viaProxy = (await admin.accessSecret(before.id, { domain: HOST, via: "proxy" })).value;
      assert.equal(viaProxy.unsafeText(), CANARY);
      const after = await claude.requestLease({ secret: "db" });
      assert.equal(after.proxyOnly, false);
      using v = (await claude.accessSecret(after.id, { domain: HOST })).value;
      assert.equal(v.unsafeText(), CANARY);
      const rows = await admin.auditQuery({ types: ["access_denied"], agent: "claude" });
      assert.equal(rows.length, 1);
      assert.match(rows[0]!.reason ?? "", /granted proxy-only/);
      assert.ok(!JSON.stringify(rows).includes(CANARY));
    } finally {
      await vault.close();
    }
  };

  test("a reload that turns reveal on does not reveal a lease granted proxy-only: the agent is refused (audited, no use), the owner's proxy uses it, a lease granted after reveals (SQLite)", async () => {
    await proxyOnlyStays(openSqliteStore(join(tempDir("lessor-reveal-"), "lessor.db")));
  });

  test("the same on PostgreSQL", { skip: PG_SKIP }, async () => {
    const { testSchema, PG_URL } = await import("./pg-helpers.js");
    const { openPostgresStore } = await import("../src/store/postgres/postgres-store.js");
    const { schema, drop } = await testSchema();
    try {
      await proxyOnlyStays(await openPostgresStore({ url: PG_URL!, schema }));
    } finally {
      await drop();
    }
  });

  test("a lease granted proxy-only and copied by lessor migrate (SQLite to SQLite) stays proxy-only in the copy, and its value is refused to the agent there after a revealing reload", async () => {
    const hidden = `[[rule]]\nname = "db-hidden"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["db"]\nany_domain = true\n`;
    const key = hexKey();
    const dir = tempDir("lessor-reveal-copy-");
    const src = await Vault.open({ store: openSqliteStore(join(dir, "src.db")), keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy: parsePolicy(`${hidden}reveal = false\n`, "policy.toml") });
    let id: string;
    try {
      await src.admin().storeSecret({ name: "db", value: CANARY });
      id = (await src.session(agent("claude")).requestLease({ secret: "db" })).id;
    } finally {
      await src.close();
    }
    const from = openSqliteStore(join(dir, "src.db"));
    const to = openSqliteStore(join(dir, "copy.db"));
    try {
      await copyStore(from, to);
    } finally {
      await from.close();
      await to.close();
    }
    // The copy opened under the same rule, now revealing the value (the default).
    const copy = await Vault.open({ store: openSqliteStore(join(dir, "copy.db")), keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy: parsePolicy(hidden, "policy.toml") });
    try {
      const claude = copy.session(agent("claude"));
      const r = await refusalOf(claude.accessSecret(id, { domain: HOST }));
      assert.equal(r.code, "access_denied", r.message);
      assert.match(r.message, /granted proxy-only/);
      assert.ok(!r.message.includes(CANARY));
    } finally {
      await copy.close();
    }
  });

  test("a lease a person approved for the proxy only stays proxy-only after the rule starts revealing the value", async () => {
    const { vault, claude, reveal } = await approvedUnderProxyOnlyRule();
    try {
      const lease = await claude.requestLease({ secret: "gh", domains: [HOST] });
      assert.equal(lease.bound, true);
      assert.equal(lease.proxyOnly, true);
      await reveal();
      const r = await refusalOf(claude.accessSecret(lease.id, { domain: HOST }));
      assert.equal(r.code, "access_denied", r.message);
      assert.match(r.message, /granted proxy-only \(rule "gated" did not reveal the value of global\/gh when it was granted, and a person approved it so\)/);
      assert.ok(!r.message.includes(CANARY));
    } finally {
      await vault.close();
    }
  });

  test("a lease whose granting rule left the policy reveals nothing, even when another rule that reveals decides the use", async () => {
    const other = `[[rule]]\nname = "other"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["gh"]\ndomains = ["${HOST}"]\n`;
    let text = POLICY.replace('secrets = ["gh"]\ndomains = ["api.github.com"]\nmethods = ["GET"]\npaths = ["/repos/"]', 'secrets = ["gh"]\ndomains = ["api.github.com"]\nreveal = true');
    assert.notEqual(text, POLICY);
    const vault = await Vault.open({
      store: openSqliteStore(join(tempDir("lessor-reveal-"), "lessor.db")),
      keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!,
      policy: async () => parsePolicy(text, "policy.toml"),
    });
    try {
      await vault.admin().storeSecret({ name: "gh", value: CANARY });
      const claude = vault.session(agent("claude"));
      const lease = await claude.requestLease({ secret: "gh" });
      assert.equal(lease.rule, "limited");
      text = other;
      await vault.admin().reloadPolicy();
      const r = await refusalOf(claude.accessSecret(lease.id, { domain: HOST }));
      assert.equal(r.code, "access_denied");
      assert.match(r.message, /rule "limited", which granted this lease, is no longer in the policy/);
      using v = (await vault.admin().accessSecret(lease.id, { domain: HOST, via: "proxy" })).value;
      assert.equal(v.unsafeText(), CANARY);
    } finally {
      await vault.close();
    }
  });

  test("via takes only \"proxy\"", async () => {
    const t = await seeded();
    const admin = t.vault.admin();
    const lease = await admin.requestLease({ agent: "claude", secret: "plain" });
    for (const via of ["agent", "PROXY", 1, null]) {
      const r = await refusalOf(admin.accessSecret(lease.id, { domain: HOST, via } as never));
      assert.equal(r.code, "invalid_request", String(via));
      assert.match(r.message, /via must be "proxy"/);
    }
  });
});

describe("over the daemon", () => {
  test("an agent's token connection sending via \"proxy\" on the wire is refused; the owner's proxy access works; a bad via is invalid_request; the canary is in no refusal or log", async () => {
    const home = await makeHome({ config: '[server]\ntcp = "127.0.0.1:0"\n', policy: POLICY });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.admin().storeSecret({ name: "gh", value: CANARY });
    await v.close();
    const d = await startServe(home);
    try {
      const admin = await LessorClient.connect({ socketPath: d.socket });
      const t = await admin.createToken({ name: "claude-reveal", role: "agent", agent: "claude" });
      const claude = await LessorClient.connect(d.tcp!, { token: t.token });
      const r = await refusalOf(claude.leaseAndAccess({ secret: "gh" }, { ...IN, via: "proxy" }));
      assert.equal(r.code, "access_denied");
      assert.match(r.message, /does not hand the value/);
      assert.ok(!r.message.includes(CANARY));
      const bad = await refusalOf(claude.api.access_secret({ leaseId: "0190a0a0-0000-7000-8000-000000000000", domain: HOST, via: "agent" } as never));
      assert.equal(bad.code, "invalid_request");

      const lease = await admin.requestLease({ agent: "claude", secret: "gh" });
      assert.equal((await refusalOf(admin.accessSecret(lease.id, IN))).code, "access_denied");
      const got = await admin.accessSecret(lease.id, { ...IN, via: "proxy" });
      assert.equal(got.value.unsafeText(), CANARY);
      got.value.wipe();
      await claude.close();
      await admin.close();
    } finally {
      await d.stop();
    }
    assert.ok(!d.stderr().includes(CANARY));
  });
});

describe("the CLI hands no value of a proxy-only rule on", () => {
  test("lessor lease (the owner, for the agent) and lessor run --no-sandbox with a reference refuse, naming the rule; policy check says proxy only", async () => {
    const home = await makeHome({ policy: POLICY });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.admin().storeSecret({ name: "gh", value: CANARY });
    await v.close();

    const lease = await runCli(["lease", "gh", "--agent", "claude", "--domain", HOST], { home });
    assert.notEqual(lease.code, 0);
    assert.match(lease.stderr, /rule "limited" does not hand the value of global\/gh to the agent/);
    assert.ok(!(lease.stdout + lease.stderr).includes(CANARY));

    const run = await runCli(["run", "--agent", "claude", "--domain", HOST, "--no-sandbox", "--", "/bin/sh", "-c", 'printf "%s" "$TOKEN"'], { home, env: { TOKEN: "$S:gh" } });
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /does not hand the value of global\/gh/);
    assert.ok(!(run.stdout + run.stderr).includes(CANARY));

    const check = await runCli(["policy", "check"], { home });
    assert.equal(check.code, 0, check.stderr);
    assert.match(check.stdout, /limited: allow .* proxy only \(reveal = false\)/);
    assert.match(check.stdout, /db-hidden: allow .* proxy only/);
    assert.doesNotMatch(check.stdout, /plain: allow .* proxy only/);
    writeFileSync(join(home, "policy.toml"), POLICY.replace("reveal = false", 'reveal = "no"'), { mode: 0o600 });
    const broken = await runCli(["policy", "check"], { home });
    assert.notEqual(broken.code, 0);
    assert.match(broken.stderr, /db-hidden.*reveal/);
  });
});
