/**
 * Issue 12 item 8, embedded: a broken policy never blocks the brakes, and the killswitch is a lockout.
 * Real homes (initHome, key file, policy.toml, SQLite file) opened with openVault, and two vaults on one
 * database file standing for two processes sharing it.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { initHome, openVault } from "../src/config/open-vault.js";
import type { VaultSignal } from "../src/vault/signals.js";
import type { Vault } from "../src/vault/vault.js";
import { withheldQuotes } from "../src/vault/policy.js";
import { agent, codeOf, grant, makeVault, orchestrator, tempDir } from "./helpers.js";

const GOOD = grant("claude-github", ["claude"], ["github-token"], ["api.github.com"]);

/** Malformed policy files, each with a fragment of the error it must be reported with. */
const BROKEN: [label: string, text: string, says: RegExp][] = [
  ["a TOML syntax error", '[[rule]\nname = "claude-github"\n', /TOML syntax error at line \d+, column \d+/],
  ["an unknown key", GOOD.replace('effect = "allow"', 'effect = "allow"\nttls = "1h"'), /unknown field "ttls" \(did you mean "ttl"\?\)/],
  ["a bad pattern", GOOD.replace('["api.github.com"]', '["*.com"]'), /field "domains": item 1: domain pattern "\*\.com"/],
];

const sha = (s: string): string => createHash("sha256").update(s, "utf8").digest("hex");
const GH = { secret: "github-token", domains: ["api.github.com"] };
const AT = { domain: "api.github.com" };

async function home(policy: string): Promise<string> {
  const h = join(tempDir(), "home");
  await initHome({ home: h, env: { LESSOR_HOME: h } });
  writeFileSync(join(h, "policy.toml"), policy, { mode: 0o600 });
  return h;
}

const open = (h: string): Promise<Vault> => openVault({ home: h, env: { LESSOR_HOME: h } });

/** Rejects with `code` and a message matching `re`. */
async function refused(p: Promise<unknown>, code: string, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: Error & { code?: string }) => {
    assert.equal(e.code, code, e.message);
    assert.match(e.message, re);
    return true;
  });
}

const BROKEN_REASON = /^the policy is invalid, so every grant is denied: \S*policy\.toml: .*; lessor policy check shows it whole; fix it and run lessor policy reload$/;
const BROKEN_BRIEF = /^(access_denied: )?the policy is invalid, so every grant is denied; ask the operator to fix it \(lessor policy check\)$/;

describe("a broken policy never blocks the brakes (embedded)", () => {
  for (const [label, text, says] of BROKEN) {
    test(`with ${label}, the vault opens; every grant is denied saying why; revoke, killswitch, audit, status, secret list and key rotation work`, async () => {
      const h = await home(GOOD);
      const before = await open(h);
      await before.admin().storeSecret({ name: "github-token", value: "v1" });
      const held = await before.session(agent("claude")).requestLease(GH);
      await before.close();

      writeFileSync(join(h, "policy.toml"), text, { mode: 0o600 });
      const v = await open(h); // before the fix: policy_invalid, and nothing below could run
      try {
        const admin = v.admin();
        const claude = v.session(agent("claude"));
        const st = await admin.describe();
        assert.equal(st.policy.state, "broken");
        assert.equal(st.policy.rules, 0);
        assert.equal(st.policy.digest, sha(text), "the digest names the broken file");
        assert.match(st.policy.error ?? "", says);

        // An admin is told the load error; an agent or orchestrator only that the policy is broken
        // (the error may quote any rule, another agent's included).
        await refused(admin.requestLease({ ...GH, agent: "claude" }), "access_denied", BROKEN_REASON);
        // The refusal is audited, so it holds the load error with what it quotes withheld (a value
        // pasted into the file by mistake stays out of the trail); status shows it whole (above).
        const withheld = withheldQuotes(st.policy.error ?? "");
        await assert.rejects(admin.requestLease({ ...GH, agent: "claude" }), (e: Error) => e.message.includes(withheld) && e.message.includes("lessor policy check shows it whole"));
        await refused(claude.requestLease(GH), "access_denied", BROKEN_BRIEF);
        await refused(claude.requestLeaseAndAccess(GH, AT), "access_denied", BROKEN_BRIEF);
        await refused(v.session(orchestrator(["claude"])).requestLease({ ...GH, agent: "claude" }), "access_denied", BROKEN_BRIEF);
        await refused(claude.accessSecret(held.id, AT), "access_denied", /policy is invalid/);
        await refused(claude.renewLease(held.id), "access_denied", BROKEN_BRIEF);
        for (const e of await admin.auditQuery({ types: ["access_denied"], agent: "claude", limit: 100 }))
          if (e.actorRole !== "admin") assert.doesNotMatch(e.reason ?? "", says, "an agent's refusal, audited, is the one it was told");
        const ex = await admin.explain("claude", { scope: "global", name: "github-token" }, "api.github.com");
        assert.equal(ex.allow, false);
        assert.match(ex.reason, BROKEN_REASON);
        assert.equal(ex.policy.state, "broken");

        // The brakes.
        assert.deepEqual((await admin.listSecrets()).map((s) => s.name), ["github-token"]);
        assert.deepEqual(await claude.revokeLease(held.id, "done"), { revoked: true });
        assert.deepEqual(await admin.revokeAllForAgent("claude"), { revoked: 0 });
        assert.deepEqual(await admin.killswitch("drill"), { revoked: 0 });
        assert.deepEqual(await admin.releaseKillswitch("drill over"), { released: true });
        const rot = await admin.rotateMasterKey();
        assert.equal(rot.rewrapped, 1);
        const denials = await admin.auditQuery({ types: ["access_denied"], limit: 100 });
        assert.ok(denials.length >= 6);
        assert.ok(denials.every((e) => /policy is invalid/.test(e.reason ?? "")), "each denial is audited with the reason");
        assert.equal((await admin.auditVerify()).ok, true);
      } finally {
        await v.close();
      }
    });
  }

  test("a missing policy file opens too, denying every grant with what to do", async () => {
    const h = await home(GOOD);
    const { rmSync } = await import("node:fs");
    rmSync(join(h, "policy.toml"));
    const v = await open(h);
    try {
      await v.admin().storeSecret({ name: "github-token", value: "v1" });
      await refused(v.admin().requestLease({ ...GH, agent: "claude" }), "access_denied", /policy\.toml does not exist; create it .*; fix it and run lessor policy reload$/);
      await refused(v.session(agent("claude")).requestLease(GH), "access_denied", BROKEN_BRIEF);
      const st = await v.admin().describe();
      assert.equal(st.policy.state, "broken");
      assert.equal(st.policy.digest, "");
    } finally {
      await v.close();
    }
  });

  test("a reload of a broken file denies every grant at once (fail closed), is audited as an error, and a fixed file brings grants back; explain names the version that answered", async () => {
    const h = await home(GOOD);
    const v = await open(h);
    const signals: VaultSignal[] = [];
    v.onSignal((s) => signals.push(s));
    try {
      const admin = v.admin();
      const claude = v.session(agent("claude"));
      await admin.storeSecret({ name: "github-token", value: "v1" });
      const held = await claude.requestLease(GH);
      const ref = { scope: "global", name: "github-token" };
      const ex1 = await admin.explain("claude", ref, "api.github.com");
      assert.equal(ex1.allow, true);
      assert.deepEqual({ load: ex1.policy.load, digest: ex1.policy.digest, state: ex1.policy.state }, { load: 1, digest: sha(GOOD), state: "ok" });

      const bad = BROKEN[0]![1];
      writeFileSync(join(h, "policy.toml"), bad);
      await refused(admin.reloadPolicy(), "policy_invalid", /TOML syntax error.*every grant is now denied until you fix the policy and run lessor policy reload again$/);
      // Before the fix the old policy stayed in force: this grant and this use succeeded.
      await refused(claude.requestLease(GH), "access_denied", BROKEN_BRIEF);
      await refused(claude.accessSecret(held.id, AT), "access_denied", /policy is invalid/);
      const ex2 = await admin.explain("claude", ref, "api.github.com");
      assert.equal(ex2.allow, false);
      assert.deepEqual({ load: ex2.policy.load, digest: ex2.policy.digest, state: ex2.policy.state }, { load: 2, digest: sha(bad), state: "broken" });
      assert.ok(ex2.policy.loadedAt >= ex1.policy.loadedAt);
      const st = await admin.describe();
      assert.equal(st.policy.state, "broken");
      assert.equal(st.policy.load, 2);
      const [failed] = await admin.auditQuery({ types: ["policy_reloaded"], order: "desc", limit: 1 });
      assert.equal(failed!.outcome, "error");
      assert.match(failed!.reason ?? "", /TOML syntax error/);
      assert.equal(JSON.parse(failed!.detail!).state, "broken");

      const fixed = `${GOOD}\n# fixed\n`;
      writeFileSync(join(h, "policy.toml"), fixed);
      assert.deepEqual(await admin.reloadPolicy(), { rules: 1, digest: sha(fixed) });
      assert.equal((await claude.requestLeaseAndAccess(GH, AT)).value.unsafeText(), "v1");
      const ex3 = await admin.explain("claude", ref, "api.github.com");
      assert.deepEqual({ allow: ex3.allow, load: ex3.policy.load, digest: ex3.policy.digest, state: ex3.policy.state }, { allow: true, load: 3, digest: sha(fixed), state: "ok" });
      assert.equal((await admin.describe()).policy.state, "ok");
      assert.deepEqual(
        signals.filter((s) => s.type === "policy_reloaded"),
        [
          { type: "policy_reloaded", ok: false },
          { type: "policy_reloaded", ok: true },
        ],
      );
    } finally {
      await v.close();
    }
  });
});

describe("the killswitch is a lockout (embedded)", () => {
  test("it refuses every grant, saying since when, by whom and how to release it, until an admin releases it; a restart and another vault on the same database see it", async () => {
    const dir = tempDir();
    const a = await makeVault({ policy: GOOD, dir });
    const b = await makeVault({ policy: GOOD, dir, key: a.key }); // another process on the same file
    const seenA: VaultSignal[] = [];
    const seenB: VaultSignal[] = [];
    a.vault.onSignal((s) => seenA.push(s));
    b.vault.onSignal((s) => seenB.push(s));
    const adminA = a.vault.admin();
    await adminA.storeSecret({ name: "github-token", value: "v1" });
    const l1 = await a.vault.session(agent("claude")).requestLease(GH);
    const l2 = await b.vault.session(agent("claude")).requestLease(GH);

    assert.deepEqual(await adminA.killswitch("token leaked"), { revoked: 2 });
    assert.deepEqual(seenA, [{ type: "killswitch", engaged: true }], "signalled after the commit");
    const LOCKED = /^the killswitch is engaged since \d{4}-\d\d-\d\dT[\d:.]+Z by embedded \(reason: "token leaked"\); no lease is granted until an admin releases it with lessor killswitch --release$/;
    for (const v of [a.vault, b.vault]) {
      const claude = v.session(agent("claude"));
      await refused(claude.requestLease(GH), "access_denied", LOCKED);
      await refused(claude.requestLeaseAndAccess(GH, AT), "access_denied", LOCKED);
      await refused(v.session(orchestrator(["claude"])).requestLease({ ...GH, agent: "claude" }), "access_denied", LOCKED);
      await refused(v.admin().requestLease({ ...GH, agent: "claude" }), "access_denied", LOCKED);
      for (const id of [l1.id, l2.id]) assert.equal(await codeOf(claude.accessSecret(id, AT)), "lease_revoked");
    }
    // The other vault notices on its next look, and tells its listeners (a daemon closes its agents).
    assert.equal((await b.vault.checkKillswitch()).engaged, true);
    assert.deepEqual(seenB, [{ type: "killswitch", engaged: true }]);
    const ks = (await b.vault.admin().describe()).killswitch;
    assert.deepEqual({ engaged: ks.engaged, by: ks.by, reason: ks.reason }, { engaged: true, by: "embedded", reason: "token leaked" });

    // Only an admin releases it.
    assert.equal(await codeOf(a.vault.session(agent("claude")).releaseKillswitch()), "access_denied");
    assert.equal(await codeOf(a.vault.session(orchestrator(["*"])).releaseKillswitch()), "access_denied");

    // A restart keeps it; pulling it again keeps the first engagement's time, actor and reason.
    const a2 = await a.reopen();
    await refused(a2.vault.session(agent("claude")).requestLease(GH), "access_denied", LOCKED);
    assert.deepEqual(await a2.vault.admin().killswitch("again"), { revoked: 0 });
    const still = (await a2.vault.admin().describe()).killswitch;
    assert.deepEqual({ engaged: still.engaged, reason: still.reason, at: still.at }, { engaged: true, reason: "token leaked", at: ks.at });

    assert.deepEqual(await a2.vault.admin().releaseKillswitch("leaked token rotated"), { released: true });
    assert.equal((await a2.vault.session(agent("claude")).requestLeaseAndAccess(GH, AT)).value.unsafeText(), "v1");
    assert.ok(await b.vault.session(agent("claude")).requestLease(GH), "the other vault grants again at once");
    assert.equal((await b.vault.checkKillswitch()).engaged, false);
    assert.deepEqual(seenB.at(-1), { type: "killswitch", engaged: false });
    assert.deepEqual(await a2.vault.admin().releaseKillswitch(), { released: false });

    const events = await a2.vault.admin().auditQuery({ types: ["killswitch"] });
    assert.deepEqual(
      events.map((e) => [e.reason, JSON.parse(e.detail!).engaged, e.outcome]),
      [
        ["token leaked", true, "ok"],
        ["again", true, "ok"],
        ["leaked token rotated", false, "ok"],
        ["released", false, "ok"],
      ],
    );
    assert.equal(JSON.parse(events[2]!.detail!).was_engaged, true);
    assert.equal(JSON.parse(events[3]!.detail!).was_engaged, false);
    const denials = await a2.vault.admin().auditQuery({ types: ["access_denied"], limit: 100 });
    assert.ok(denials.filter((e) => /killswitch is engaged/.test(e.reason ?? "")).length >= 9, "every refused grant is audited");
    assert.equal((await a2.vault.admin().auditVerify()).ok, true);
  });

  test("a lockout record that is not one lessor wrote counts as engaged (fail closed) until an admin releases it", async () => {
    const t = await makeVault({ policy: GOOD });
    await t.vault.admin().storeSecret({ name: "github-token", value: "v1" });
    await t.store.transaction((tx) => tx.setMeta("killswitch", "{not json"));
    await refused(t.vault.session(agent("claude")).requestLease(GH), "access_denied", /unreadable, so it counts as engaged.*lessor killswitch --release/);
    assert.deepEqual(await t.vault.admin().releaseKillswitch("repaired"), { released: true });
    assert.ok(await t.vault.session(agent("claude")).requestLease(GH));
  });
});
