/**
 * Two real `lessor serve` processes on one PostgreSQL schema (a team server, docs/team.md): each has
 * its own home and socket, the same database URL and the same master key (the key file copied). A
 * lease granted on A is used on B; revoked on B, refused on A; a max_uses = 1 lease raced from both is
 * used once; the killswitch on A closes B's agent
 * connections and B refuses grants; a token revoked on A closes its TCP connection on B; with LISTEN
 * off, polling alone propagates; killing A leaves B serving. Measured times are printed; the bound
 * asserted is the one second. Needs LESSOR_TEST_PG_URL; skips with the reason without it.
 */
import assert from "node:assert/strict";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import { grant, within } from "./helpers.js";
import { PG_SKIP, testSchema } from "./pg-helpers.js";

const POLICY = grant("claude-github", ["claude"], ["github-token"], ["api.github.com"]);
const GH = { secret: "github-token", domains: ["api.github.com"] };

describe("two lessor serve processes on one PostgreSQL database", { skip: PG_SKIP }, () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  });

  /** Two daemons on a fresh schema; `vault` is extra [vault] lines (listen, poll_ms). */
  async function team(vault: string): Promise<{ a: RunningDaemon; b: RunningDaemon; adminA: LessorClient; adminB: LessorClient }> {
    const { url, drop } = await testSchema();
    cleanups.push(drop);
    const config = `[vault]\nstore = "postgres"\ndatabase_url = ${JSON.stringify(url)}\n${vault}\n[server]\ntcp = "127.0.0.1:0"\n`;
    const homeA = await makeHome({ config, policy: POLICY });
    const homeB = await makeHome({ config, policy: POLICY });
    copyFileSync(join(homeA, "master.key"), join(homeB, "master.key"));
    const v = await openVault({ home: homeA, env: { LESSOR_HOME: homeA } });
    await v.admin().storeSecret({ name: "github-token", value: "gh-value" });
    await v.close();
    const [a, b] = await Promise.all([startServe(homeA), startServe(homeB)]);
    cleanups.push(() => a.stop(), () => b.stop());
    const adminA = await LessorClient.connect({ socketPath: a.socket });
    const adminB = await LessorClient.connect({ socketPath: b.socket });
    cleanups.push(() => adminA.close(), () => adminB.close());
    return { a, b, adminA, adminB };
  }

  async function agentOn(d: RunningDaemon, adminClient: LessorClient): Promise<{ client: LessorClient; tokenId: string }> {
    const t = await adminClient.createToken({ name: `claude-${Math.random().toString(36).slice(2, 8)}`, role: "agent", agent: "claude" });
    const client = await LessorClient.connect(d.tcp!, { token: t.token, reconnect: false });
    cleanups.push(() => client.close());
    return { client, tokenId: t.id };
  }

  test("NOTIFY: lease on A used on B, revoked on B refused on A; killswitch on A closes B's agents; token revoked on A closes its connection on B", async () => {
    // poll_ms is long so that what is measured is the notification (the daemon's own 1 s polls stay on).
    const { a, b, adminA, adminB } = await team("poll_ms = 60000");
    const onA = await agentOn(a, adminA);
    const onB = await agentOn(b, adminB);

    const lease = await onA.client.requestLease(GH);
    const got = await onB.client.accessSecret(lease.id, { domain: "api.github.com" });
    assert.equal(got.value.unsafeText(), "gh-value");
    got.value.wipe();

    await adminB.revokeLease(lease.id, "done");
    const t0 = performance.now();
    await assert.rejects(onA.client.accessSecret(lease.id, { domain: "api.github.com" }), (e: Error & { code?: string }) => e.code === "lease_revoked" || /revoked/.test(e.message));
    const revokeMs = performance.now() - t0;

    // A token created on A, used over TCP on B, revoked on A.
    const t = await adminA.createToken({ name: "cross", role: "agent", agent: "claude" });
    const cross = await LessorClient.connect(b.tcp!, { token: t.token, reconnect: false });
    cleanups.push(() => cross.close());
    assert.equal((await cross.status()).identity.agent, "claude");
    await adminA.revokeToken(t.id);
    const tokenMs = await within(1000, "B closing the revoked token's connection", () => !cross.connected, 2);

    await adminA.killswitch("incident");
    const killMs = await within(1000, "B closing its agent connection", () => !onB.client.connected, 2);
    assert.equal((await adminB.describe()).killswitch.engaged, true);
    const again = await LessorClient.connect(b.tcp!, { token: (await adminB.createToken({ name: "late", role: "agent", agent: "claude" })).token, reconnect: false });
    cleanups.push(() => again.close());
    await assert.rejects(again.requestLease(GH), (e: Error & { code?: string }) => e.code === "access_denied" && /killswitch is engaged/.test(e.message));
    assert.match(b.stderr(), /killswitch engaged: closed every agent/);
    console.log(`# two daemons, NOTIFY: revoke on B → refused on A ${revokeMs.toFixed(1)} ms (shared rows: the next access), token revoked on A → connection on B closed ${tokenMs.toFixed(0)} ms, killswitch on A → B's agent closed ${killMs.toFixed(0)} ms`);
  });

  test("the max_uses race across daemons: a max_uses = 1 lease accessed 24 times at once over A and B gives the value exactly once", async () => {
    const { a, b, adminA, adminB } = await team("");
    // Three agent connections to each daemon, all as claude.
    const clients = [...(await Promise.all([0, 1, 2].map(() => agentOn(a, adminA)))), ...(await Promise.all([0, 1, 2].map(() => agentOn(b, adminB))))].map((x) => x.client);
    for (let round = 0; round < 3; round++) {
      const lease = await clients[round]!.requestLease({ ...GH, maxUses: 1 });
      const results = await Promise.allSettled(Array.from({ length: 24 }, (_, i) => clients[i % clients.length]!.accessSecret(lease.id, { domain: "api.github.com" })));
      const won = results.filter((r) => r.status === "fulfilled");
      assert.equal(won.length, 1, `round ${round}: ${won.length} accesses got the value`);
      (won[0] as PromiseFulfilledResult<{ value: { unsafeText(): string; wipe(): void } }>).value.value.wipe();
      for (const r of results)
        if (r.status === "rejected") assert.equal((r.reason as { code?: string }).code, "lease_exhausted", String(r.reason));
      const [onA, onB] = await Promise.all([adminA.listLeases({ agent: "claude" }), adminB.listLeases({ agent: "claude" })]);
      assert.equal(onA.find((l) => l.id === lease.id)?.uses, 1, "A sees one use");
      assert.equal(onB.find((l) => l.id === lease.id)?.uses, 1, "B sees one use");
    }
  });

  test("LISTEN off: polling alone closes B's connections within poll_ms plus a margin; killing A leaves B serving", async () => {
    const { a, b, adminA, adminB } = await team("listen = false\npoll_ms = 200");
    const t = await adminA.createToken({ name: "cross", role: "agent", agent: "claude" });
    const cross = await LessorClient.connect(b.tcp!, { token: t.token, reconnect: false });
    cleanups.push(() => cross.close());
    assert.equal((await cross.status()).identity.agent, "claude");
    await adminA.revokeToken(t.id);
    const tokenMs = await within(200 + 800, "B closing the revoked token's connection", () => !cross.connected, 2);

    const onB = await agentOn(b, adminB);
    await adminA.killswitch("incident");
    const killMs = await within(200 + 800, "B closing its agent connection", () => !onB.client.connected, 2);
    await adminA.releaseKillswitch("over");
    console.log(`# two daemons, polling only (poll_ms = 200): token ${tokenMs.toFixed(0)} ms, killswitch ${killMs.toFixed(0)} ms`);

    // A dies without a goodbye; B keeps granting and serving.
    await a.stop("SIGKILL");
    await within(3000, "B's release seen", async () => !(await adminB.describe()).killswitch.engaged, 2);
    const onB2 = await agentOn(b, adminB);
    const got = await onB2.client.leaseAndAccess(GH, { domain: "api.github.com" });
    assert.equal(got.value.unsafeText(), "gh-value");
    got.value.wipe();
    assert.equal((await adminB.auditVerify()).ok, true);
  });
});
