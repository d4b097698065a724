/**
 * Attack: changing the policy while lessor runs (docs/policy.md "Reloading", docs/daemon.md "Policy
 * reload and the brakes", docs/team.md "Policy", docs/security.md "Policy and leases").
 *
 * Real parts: homes made by initHome with real policy files, vaults opened by openVault (the loader a
 * daemon uses, re-reading the file on reload), real SQLite files (one file held open by several vaults
 * and a real `lessor serve`), and two instances on one real PostgreSQL schema (LESSOR_TEST_PG_URL;
 * those tests skip without it).
 */
import assert from "node:assert/strict";
import { chmodSync, copyFileSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { openVault } from "../src/config/open-vault.js";
import type { Vault } from "../src/vault/vault.js";
import { parsePolicyStamp, POLICY_META, UNREADABLE_STAMP } from "../src/vault/policy-sync.js";
import { LessorClient } from "../src/client/index.js";
import { makeHome, startServe } from "./daemon-harness.js";
import { agent, grant, shareGroup } from "./helpers.js";
import { admin, PG_SKIP, testSchema } from "./pg-helpers.js";

const CANARY = "canary-policyreload-5b81e0c4";
type Coded = Error & { code?: string };

async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "granted";
  } catch (e) {
    return (e as Coded).code ?? String(e);
  }
}

const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

async function open(home: string): Promise<Vault> {
  const v = await openVault({ home, env: { LESSOR_HOME: home } });
  cleanups.push(() => v.close());
  return v;
}

describe("two instances on one PostgreSQL schema", { skip: PG_SKIP }, () => {
  const POLICY = grant("claude-github", ["claude"], ["github-token"], ["api.github.com"]);
  const GH = { secret: "github-token", domains: ["api.github.com"] };

  async function team() {
    const { schema, url, drop } = await testSchema();
    cleanups.push(drop);
    const config = `[vault]\nstore = "postgres"\ndatabase_url = ${JSON.stringify(url)}\n`;
    const homeA = await makeHome({ config, policy: POLICY });
    const homeB = await makeHome({ config, policy: POLICY });
    copyFileSync(join(homeA, "master.key"), join(homeB, "master.key"));
    const a = await open(homeA);
    await a.admin().storeSecret({ name: "github-token", value: CANARY });
    const b = await open(homeB);
    // Both in line: B grants.
    assert.equal(await outcome(b.session(agent("claude")).requestLease(GH)), "granted");
    return { schema, config, homeA, homeB, a, b };
  }

  test("a damaged policy stamp is not taken for no stamp: an instance opened on it grants nothing and puts nothing in force", async () => {
    const { schema, config, homeA, a } = await team();
    await admin(`UPDATE ${schema}.meta SET value = $2 WHERE key = $1`, [POLICY_META, "{not a stamp"]);
    const homeC = await makeHome({ config, policy: POLICY });
    copyFileSync(join(homeA, "master.key"), join(homeC, "master.key"));
    const c = await open(homeC);
    assert.equal(await outcome(c.session(agent("claude")).requestLease(GH)), "unavailable");
    assert.equal((await admin(`SELECT value FROM ${schema}.meta WHERE key = $1`, [POLICY_META])).rows[0].value, "{not a stamp");
    // A reload writes a stamp again.
    await a.admin().reloadPolicy();
    assert.equal(await outcome(c.session(agent("claude")).requestLease(GH)), "granted");
  });

  for (const how of [
    { what: "made group-writable (so it is not used)", spoil: (p: string) => (assert.ok(shareGroup(p), "needs a group that is not the owner's own"), chmodSync(p, 0o660)) },
    { what: "removed mid-deploy", spoil: (p: string) => rmSync(p) },
  ])
    test(`A's reload of a policy file ${how.what} fails closed on every instance: B, and an instance opened after it, grant nothing by the old policy`, async () => {
      const { homeA, a, b } = await team();
      // The admin's edit on A (say, to take claude's grant away) leaves the file unusable; A reloads.
      how.spoil(join(homeA, "policy.toml"));
      assert.equal(await outcome(a.admin().reloadPolicy()), "policy_invalid");
      // A now denies every grant (docs/policy.md: "fails closed ... every grant is denied").
      assert.equal(await outcome(a.session(agent("claude")).requestLease(GH)), "access_denied");
      // docs/team.md: the stamp names the policy in force; an instance whose policy is not it grants
      // nothing. B must not keep granting by the rules the reload threw out.
      await new Promise((r) => setTimeout(r, 1200));
      const onB = await outcome(b.session(agent("claude")).requestLease(GH));
      assert.notEqual(onB, "granted", "B granted a lease by the policy A's failed reload replaced with deny-all");
      assert.equal(onB, "unavailable");
      // The stamp still names a policy: an instance opened now is not "the first" and does not put its own file in force.
      const homeC = await makeHome({ config: readFileSync(join(homeA, "lessor.toml"), "utf8"), policy: POLICY });
      copyFileSync(join(homeA, "master.key"), join(homeC, "master.key"));
      const c = await open(homeC);
      assert.equal(await outcome(c.session(agent("claude")).requestLease(GH)), "unavailable");
      assert.equal(await outcome(b.session(agent("claude")).requestLease(GH)), "unavailable");
      // A reload of a good file on any instance puts it in force everywhere again.
      await b.admin().reloadPolicy();
      assert.equal(await outcome(b.session(agent("claude")).requestLease(GH)), "granted");
      assert.equal(await outcome(c.session(agent("claude")).requestLease(GH)), "granted");
    });

  test("held: grants racing on B never commit after A's reload that took the grant away (audit order)", async () => {
    const { homeA, homeB, a, b } = await team();
    const TIGHT = grant("claude-github", ["claude"], ["github-token"], ["other.example.com"]);
    writeFileSync(join(homeA, "policy.toml"), TIGHT, { mode: 0o600 });
    writeFileSync(join(homeB, "policy.toml"), TIGHT, { mode: 0o600 });
    const claude = b.session(agent("claude"));
    let stop = false;
    const racers = Array.from({ length: 8 }, async () => {
      while (!stop) {
        const l = await claude.requestLease(GH).catch(() => null);
        if (l) await claude.revokeLease(l.id).catch(() => {});
      }
    });
    await new Promise((r) => setTimeout(r, 150));
    await a.admin().reloadPolicy();
    await new Promise((r) => setTimeout(r, 300));
    stop = true;
    await Promise.all(racers);
    const events = await a.admin().auditQuery({ limit: 10_000 });
    const sorted = [...events].sort((x, y) => x.seq - y.seq);
    const at = sorted.findIndex((e) => e.type === "policy_reloaded");
    assert.ok(at >= 0);
    const late = sorted.slice(at).filter((e) => e.type === "lease_granted");
    assert.equal(late.length, 0, `granted after the reload: ${late.length}`);
    assert.ok(sorted.slice(0, at).some((e) => e.type === "lease_granted"));
  });

  test("held: A's reload of a file with a syntax error makes B (still on the old file) stale", async () => {
    const { homeA, a, b } = await team();
    writeFileSync(join(homeA, "policy.toml"), POLICY + "\n[[rule]\n", { mode: 0o600 });
    assert.equal(await outcome(a.admin().reloadPolicy()), "policy_invalid");
    assert.equal(await outcome(b.session(agent("claude")).requestLease(GH)), "unavailable");
  });
});

describe("one vault reloading its own file (the daemon's loader)", () => {
  const GH = { secret: "github-token", domains: ["api.github.com"] };

  async function home(policy: string) {
    const h = await makeHome({ policy });
    const v = await open(h);
    await v.admin().storeSecret({ name: "github-token", value: CANARY });
    const set = async (text: string) => {
      writeFileSync(join(h, "policy.toml"), text, { mode: 0o600 });
      return v.admin().reloadPolicy();
    };
    return { h, v, set, claude: v.session(agent("claude")) };
  }

  test("a reload that puts a person in the loop (approval = \"required\") stops leases granted before it from being renewed without one", async () => {
    const { set, claude } = await home(grant("gh", ["claude"], ["github-token"], ["api.github.com"], 'ttl = "1m"\nmax_ttl = "24h"'));
    const old = await claude.requestLease(GH);
    await set(grant("gh", ["claude"], ["github-token"], ["api.github.com"], 'ttl = "1m"\nmax_ttl = "24h"\napproval = "required"'));
    // New leases now need a person (docs/policy.md "Approval"), and a lease a person approved is not renewable.
    assert.equal(await outcome(claude.requestLease(GH)), "access_denied");
    // docs/policy.md "Reloading": a renewal is bound by the granting rule "as it is now". As it is now,
    // that rule grants nothing without a person and its leases are not renewable.
    const renewed = await outcome(claude.renewLease(old.id));
    assert.notEqual(renewed, "granted", "the old lease was renewed under a rule that now needs a person's approval for every lease");
    assert.equal(renewed, "access_denied");
    await assert.rejects(claude.renewLease(old.id), /now needs a person's approval/);
  });

  test("held: a broken reload is not left at the old policy; an agent may not reload", async () => {
    const { h, v, set, claude } = await home(grant("gh", ["claude"], ["github-token"], ["api.github.com"]));
    const old = await claude.requestLease(GH);
    assert.equal(await outcome(claude.reloadPolicy()), "access_denied");
    assert.equal(await outcome(set("[[rule]]\nname = 'x'\n")), "policy_invalid");
    assert.equal(await outcome(claude.requestLease(GH)), "access_denied");
    assert.equal(await outcome(claude.accessSecret(old.id, { domain: "api.github.com" })), "access_denied");
    assert.equal(await outcome(claude.renewLease(old.id)), "access_denied");
    // A group-writable file (or one replaced by a fifo) is refused the same way.
    writeFileSync(join(h, "policy.toml"), grant("gh", ["claude"], ["github-token"], ["api.github.com"]), { mode: 0o600 });
    assert.ok(shareGroup(join(h, "policy.toml")));
    chmodSync(join(h, "policy.toml"), 0o620);
    assert.equal(await outcome(v.admin().reloadPolicy()), "policy_invalid");
    assert.equal(await outcome(claude.requestLease(GH)), "access_denied");
  });
});

test("held: after a reload to a broken file, an agent is never shown the load error (it quotes another agent's rule)", async () => {
  const h = await makeHome({ policy: grant("gh", ["claude"], ["github-token"], ["api.github.com"]) });
  const v = await open(h);
  await v.admin().storeSecret({ name: "github-token", value: CANARY });
  const claude = v.session(agent("claude"));
  const old = await claude.requestLease({ secret: "github-token", domains: ["api.github.com"] });
  const SECRET_RULE = "ops-only-zz91q";
  writeFileSync(join(h, "policy.toml"), grant(SECRET_RULE, ["ops"], ["env:prod/db-zz91q"], ["db.internal.zz91q"], 'ttls = "1m"'), { mode: 0o600 });
  assert.equal(await outcome(v.admin().reloadPolicy()), "policy_invalid");
  const seen: string[] = [];
  const grab = async (p: Promise<unknown>) => {
    try {
      seen.push(JSON.stringify(await p));
    } catch (e) {
      seen.push((e as Error).message);
    }
  };
  await grab(claude.requestLease({ secret: "github-token", domains: ["api.github.com"] }));
  await grab(claude.accessSecret(old.id, { domain: "api.github.com" }));
  await grab(claude.renewLease(old.id));
  await grab(claude.explain("claude", { scope: "global", name: "github-token" }, "api.github.com"));
  await grab(claude.listGranted());
  await grab(claude.status());
  await grab(claude.describe());
  for (const s of seen) assert.ok(!s.includes("zz91q"), `an agent saw the load error: ${s}`);
});

test("a policy stamp is absent only when there is none: a damaged one names no policy (every instance is stale), a broken reload's unread file is kept", () => {
  assert.equal(parsePolicyStamp(null), null);
  for (const damaged of ["", "not json", "null", "[]", '{"digest":"xyz","state":"ok"}', '{"digest":"","state":"ok"}', '{"state":"broken"}'])
    assert.equal(parsePolicyStamp(damaged)?.digest, UNREADABLE_STAMP, damaged);
  const unread = parsePolicyStamp('{"digest":"","state":"broken","at":5,"by":"admin"}');
  assert.deepEqual(unread, { digest: "", state: "broken", at: 5, by: "admin" });
});

test("two reloads of one vault at once both end as a reload of the file does (they run one at a time)", async () => {
  const h = await makeHome({ policy: grant("gh", ["claude"], ["github-token"], ["api.github.com"]) });
  const v = await open(h);
  await v.admin().storeSecret({ name: "github-token", value: CANARY });
  const GH = { secret: "github-token", domains: ["api.github.com"] };
  // Two reloads at once, the file broken: both fail closed, and the grant stays denied.
  writeFileSync(join(h, "policy.toml"), "[[rule]\n", { mode: 0o600 });
  const got = await Promise.all([outcome(v.admin().reloadPolicy()), outcome(v.admin().reloadPolicy())]);
  assert.deepEqual(got, ["policy_invalid", "policy_invalid"]);
  assert.equal(await outcome(v.session(agent("claude")).requestLease(GH)), "access_denied");
  writeFileSync(join(h, "policy.toml"), grant("gh", ["claude"], ["github-token"], ["api.github.com"]), { mode: 0o600 });
  const ok = await Promise.all([v.admin().reloadPolicy(), v.admin().reloadPolicy()]);
  assert.equal(ok[0].digest, ok[1].digest);
  assert.equal(await outcome(v.session(agent("claude")).requestLease(GH)), "granted");
});

describe("several vaults on one SQLite file (docs/policy.md \"Reloading\": every vault on the home)", () => {
  const GH = { secret: "github-token", domains: ["api.github.com"] };
  const only = (agents: string[]) => grant("gh", agents, ["github-token"], ["api.github.com"], 'ttl = "1h"');
  const write = (h: string, text: string) => writeFileSync(join(h, "policy.toml"), text, { mode: 0o600 });

  test("a reload by an embedded vault binds a daemon serving the same home at its next grant, use and renewal", { timeout: 60_000 }, async () => {
    const h = await makeHome({ policy: only(["claude"]) });
    const d = await startServe(h);
    cleanups.push(() => d.stop());
    const c = await LessorClient.connect({ socketPath: d.socket });
    cleanups.push(async () => c.close());
    await c.storeSecret({ name: "github-token", value: CANARY });
    const lease = await c.requestLease({ agent: "claude", ...GH });
    write(h, only(["bob"]));
    // The daemon has not reloaded: an embedded program on the same home does.
    const e = await open(h);
    await e.admin().reloadPolicy();
    await e.close();
    const now = {
      grant: await outcome(c.requestLease({ agent: "claude", ...GH })),
      use: await outcome(c.accessSecret(lease.id, { domain: "api.github.com" })),
      renewal: await outcome(c.renewLease(lease.id)),
      bob: await outcome(c.requestLease({ agent: "bob", ...GH })),
    };
    assert.deepEqual(now, { grant: "access_denied", use: "access_denied", renewal: "access_denied", bob: "granted" });
    assert.equal((await c.describe()).policy.stale, undefined);
  });

  test("a policy file edited without a reload: before any reload each vault decides by the file it opened with; after one, the file reloaded stays in force and a vault opened on another grants nothing until the next reload", { timeout: 60_000 }, async () => {
    const h = await makeHome({ policy: only(["claude"]) });
    const a = await open(h);
    await a.admin().storeSecret({ name: "github-token", value: CANARY });
    write(h, only(["bob"]));
    // No reload yet: the vault open before the edit keeps its rules, one opened after it has the new ones.
    const b = await open(h);
    assert.deepEqual(
      [await outcome(a.session(agent("claude")).requestLease(GH)), await outcome(b.session(agent("bob")).requestLease(GH)), await outcome(b.session(agent("claude")).requestLease(GH))],
      ["granted", "granted", "access_denied"],
    );
    // A reload puts bob's file in force on every vault: a follows at its next grant.
    await b.admin().reloadPolicy();
    assert.equal(await outcome(a.session(agent("claude")).requestLease(GH)), "access_denied");
    assert.equal(await outcome(a.session(agent("bob")).requestLease(GH)), "granted");
    // Edited again, without a reload: what the last reload loaded stays in force where it is; a vault
    // opened on the edited file grants nothing (not even what both files grant), saying how to fix it.
    write(h, only(["bob", "carol"]));
    const c = await open(h);
    assert.equal(await outcome(a.session(agent("bob")).requestLease(GH)), "granted");
    assert.equal(await outcome(a.session(agent("carol")).requestLease(GH)), "access_denied");
    await assert.rejects(c.session(agent("carol")).requestLease(GH), (e: Coded) => e.code === "unavailable" && /lessor policy reload/.test(e.message));
    assert.equal(await outcome(c.session(agent("bob")).requestLease(GH)), "unavailable");
    assert.equal((await c.admin().status()).policy, "stale");
    // Reloaded: in force on every vault.
    await c.admin().reloadPolicy();
    for (const v of [a, b, c]) assert.equal(await outcome(v.session(agent("carol")).requestLease(GH)), "granted");
  });
});
