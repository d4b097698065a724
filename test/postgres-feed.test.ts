/**
 * The PostgreSQL change feed, in process: two Vaults on two pools over one schema (two instances).
 * A token revoked, the killswitch pulled and released, or the policy reloaded on A raises the same
 * signal on B (the in-process vault has no polls of its own, so nothing but the feed can do it);
 * by NOTIFY, by polling with LISTEN off, and after the LISTEN connection is killed (catch-up); a log
 * that lost what B missed makes B re-read everything (resync); a junk notification is ignored; no
 * payload carries a secret; the per-agent lease cap holds across instances granting at once.
 * Needs LESSOR_TEST_PG_URL; skips with the reason without it.
 */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import pg from "pg";
import { openPostgresStore, type PostgresStore } from "../src/store/postgres/postgres-store.js";
import { channelFor as channelOf, type FeedOptions } from "../src/store/postgres/change-feed.js";
import { Vault } from "../src/vault/vault.js";
import type { VaultSignal } from "../src/vault/signals.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { parsePolicy, type Policy } from "../src/vault/policy.js";
import { isVaultError } from "../src/base/errors.js";
import { agent, grant, hexKey, within } from "./helpers.js";
import { admin, PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Instance {
  vault: Vault;
  store: PostgresStore;
  signals: VaultSignal[];
  /** What the policy loader returns next (stands for the instance's policy file). */
  policyText: { text: string };
}

describe("postgres change feed: another instance's changes become this vault's signals", { skip: PG_SKIP }, () => {
  const drops: (() => Promise<void>)[] = [];
  after(async () => {
    for (const d of drops) await d();
  });

  async function pair(feedB: Partial<FeedOptions>, limits?: { maxLiveLeasesPerAgent: number }): Promise<{ a: Instance; b: Instance; schema: string }> {
    const { schema, drop } = await testSchema();
    const key = hexKey();
    const mk = async (feed: Partial<FeedOptions>, follow: boolean): Promise<Instance> => {
      const store = await openPostgresStore({ url: PG_URL!, schema, feed });
      const policyText = { text: grant("g", ["claude"], ["tok"], ["api.example.com"]) };
      const vault = await Vault.open({
        store,
        keys: envKeySource({ LESSOR_MASTER_KEY: key })!,
        policy: async (): Promise<Policy> => parsePolicy(policyText.text, "policy.toml"),
        ...(limits ? { limits } : {}),
      });
      const signals: VaultSignal[] = [];
      vault.onSignal((s) => signals.push(s));
      if (follow) vault.followChanges();
      return { vault, store, signals, policyText };
    };
    const a = await mk({ pollMs: 60_000 }, true);
    const b = await mk(feedB, true);
    drops.unshift(async () => {
      await a.vault.close();
      await b.vault.close();
      await drop();
    });
    if (feedB.listen !== false) await within(5000, "B's LISTEN", () => b.store.feedState().listening, 2);
    return { a, b, schema };
  }

  test("by NOTIFY (polling off): token revoked, killswitch pulled and released, policy reloaded on A reach B in milliseconds; A hears nothing twice", async () => {
    const { a, b, schema } = await pair({ pollMs: 60_000 });
    // A listener of our own on the channel: what travels must never hold a secret.
    const spy = new pg.Client({ connectionString: PG_URL });
    await spy.connect();
    const payloads: string[] = [];
    spy.on("notification", (m) => payloads.push(m.payload ?? ""));
    await spy.query(`LISTEN "${channelOf(schema)}"`);
    try {
      await a.vault.admin().storeSecret({ name: "tok", value: "the-secret-value" });
      const t = await a.vault.admin().createToken({ name: "bot", role: "agent", agent: "claude" });
      await b.vault.authenticateToken(t.token, "tcp");
      assert.equal(b.vault.tokenStanding(t.id), null);

      await a.vault.admin().revokeToken(t.id);
      const tok = await within(1000, "token_revoked on B", () => b.signals.some((s) => s.type === "token_revoked" && s.tokenId === t.id), 2);
      assert.equal(b.vault.tokenStanding(t.id), "token revoked");

      const lease = await a.vault.session(agent("claude")).requestLease({ secret: "tok" });
      await a.vault.admin().killswitch("incident");
      const ks = await within(1000, "killswitch on B", () => b.signals.some((s) => s.type === "killswitch" && s.engaged), 2);
      await assert.rejects(b.vault.session(agent("claude")).requestLease({ secret: "tok" }), (e) => isVaultError(e, "access_denied") && /killswitch is engaged/.test(e.message));
      await a.vault.admin().releaseKillswitch("over");
      await within(1000, "release on B", () => b.signals.some((s) => s.type === "killswitch" && !s.engaged), 2);

      const text2 = `${grant("g", ["claude"], ["tok"], ["api.example.com"])}\n# v2\n`;
      a.policyText.text = b.policyText.text = text2;
      await a.vault.admin().reloadPolicy();
      const pol = await within(1000, "policy reload on B", () => b.signals.some((s) => s.type === "policy_reloaded" && s.remote === true && s.ok), 2);
      assert.equal((await b.vault.admin().describe()).policy.digest, (await a.vault.admin().describe()).policy.digest);
      assert.ok(!b.signals.some((s) => s.type === "policy_stale"));

      // B's copy differs from what A reloads: B reloads its own and says it is stale.
      a.policyText.text = `${text2}# v3 on A only\n`;
      await a.vault.admin().reloadPolicy();
      await within(1000, "policy_stale on B", () => b.signals.some((s) => s.type === "policy_stale"), 2);
      const stale = b.signals.find((s) => s.type === "policy_stale") as Extract<VaultSignal, { type: "policy_stale" }>;
      assert.equal(stale.stored, (await a.vault.admin().describe()).policy.digest);
      assert.equal(stale.local, (await b.vault.admin().describe()).policy.digest);

      // Own changes are not delivered back: A saw each of its signals once.
      assert.equal(a.signals.filter((s) => s.type === "token_revoked").length, 1);
      assert.equal(a.signals.filter((s) => s.type === "killswitch").length, 2);
      assert.ok(!a.signals.some((s) => s.type === "policy_reloaded" && s.remote === true));

      await within(1000, "the spy's notifications", () => payloads.length >= 5, 2);
      const all = payloads.join("\n");
      assert.ok(!all.includes("the-secret-value") && !all.includes(t.token) && !all.includes(t.token.split(".").pop()!), all);
      assert.ok(all.includes(t.id) && all.includes(lease.id), "payloads carry kind and ids");
      console.log(`# NOTIFY propagation A→B: token_revoked ${tok.toFixed(1)} ms, killswitch ${ks.toFixed(1)} ms, policy ${pol.toFixed(1)} ms`);
    } finally {
      await spy.end();
    }
  });

  test("a junk or forged-out-of-order notification is ignored; the real change after it still arrives", async () => {
    const { a, b, schema } = await pair({ pollMs: 60_000 });
    const t = await a.vault.admin().createToken({ name: "bot", role: "agent", agent: "claude" });
    await b.vault.authenticateToken(t.token, "tcp");
    const ch = `"${channelOf(schema)}"`;
    await admin(`NOTIFY ${ch}, 'not json'`);
    await admin(`NOTIFY ${ch}, '{"seq":999999,"origin":"x","changes":[{"kind":"token_revoked","tokenId":"${t.id}"}]}'`);
    await admin(`NOTIFY ${ch}, '{"seq":1,"origin":"x","changes":[{"kind":"nonsense"}]}'`);
    await sleep(200);
    assert.ok(!b.signals.some((s) => s.type === "token_revoked"), "a notification that is not backed by the change log revokes nothing");
    assert.equal(b.vault.tokenStanding(t.id), null);
    await a.vault.admin().revokeToken(t.id);
    await within(1000, "the real revocation", () => b.signals.some((s) => s.type === "token_revoked" && s.tokenId === t.id), 2);
  });

  test("with LISTEN off, polling alone propagates within poll_ms plus a margin", async () => {
    const { a, b } = await pair({ listen: false, pollMs: 150 });
    assert.equal(b.store.feedState().listening, false);
    const t = await a.vault.admin().createToken({ name: "bot", role: "agent", agent: "claude" });
    await b.vault.authenticateToken(t.token, "tcp");
    await sleep(200); // B's poll has seen the counter
    const times: number[] = [];
    await a.vault.admin().revokeToken(t.id);
    times.push(await within(150 + 500, "token_revoked by polling", () => b.signals.some((s) => s.type === "token_revoked"), 2));
    await a.vault.admin().killswitch("incident");
    times.push(await within(150 + 500, "killswitch by polling", () => b.signals.some((s) => s.type === "killswitch" && s.engaged), 2));
    console.log(`# polling propagation (poll_ms = 150): ${times.map((x) => x.toFixed(0)).join(", ")} ms`);
  });

  test("the LISTEN connection killed: a change committed meanwhile arrives by catch-up after the reconnect (polling off)", async () => {
    const { a, b, schema } = await pair({ pollMs: 60_000 });
    const t = await a.vault.admin().createToken({ name: "bot", role: "agent", agent: "claude" });
    await b.vault.authenticateToken(t.token, "tcp");
    const before = b.store.feedState().connects;
    const killed = await admin(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'lessor-listen' AND query = $1",
      [`LISTEN "${channelOf(schema)}"`],
    );
    assert.ok(killed.rowCount! >= 1, "the listen connection was found");
    await a.vault.admin().revokeToken(t.id); // while B has no LISTEN (or before it notices)
    await within(5000, "the reconnect", () => b.store.feedState().connects > before, 2);
    await within(2000, "token_revoked after catch-up", () => b.signals.some((s) => s.type === "token_revoked" && s.tokenId === t.id), 2);
    assert.equal(b.store.feedState().listening, true);
  });

  test("when the change log no longer holds what B missed, B re-reads everything (resync)", async () => {
    const { a, b, schema } = await pair({ listen: false, pollMs: 300 });
    const t = await a.vault.admin().createToken({ name: "bot", role: "agent", agent: "claude" });
    await b.vault.authenticateToken(t.token, "tcp");
    await sleep(350);
    await a.vault.admin().revokeToken(t.id);
    await admin(`DELETE FROM ${schema}.lessor_changes`); // before B's next poll reads it
    await within(2000, "token_revoked by resync", () => b.signals.some((s) => s.type === "token_revoked" && s.tokenId === t.id), 2);
  });

  test("per-agent live-lease cap across two instances granting at once: never exceeded", async () => {
    const { a, b } = await pair({ pollMs: 60_000 }, { maxLiveLeasesPerAgent: 5 });
    await a.vault.admin().storeSecret({ name: "tok", value: "v" });
    const sa = a.vault.session(agent("claude"));
    const sb = b.vault.session(agent("claude"));
    const tries = await Promise.allSettled(Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? sa : sb).requestLease({ secret: "tok" })));
    const ok = tries.filter((r) => r.status === "fulfilled").length;
    assert.equal(ok, 5, "exactly the cap was granted");
    for (const r of tries) if (r.status === "rejected") assert.ok(isVaultError(r.reason, "rate_limited"), String(r.reason));
    assert.equal((await a.vault.admin().listLeases({ agent: "claude" })).filter((l) => l.revokedAt === null).length, 5);
  });
});
