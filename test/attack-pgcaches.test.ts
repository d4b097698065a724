/**
 * An attack pass on what each daemon of a team server caches (docs/team.md, docs/storage.md "PostgreSQL"):
 * two real `lessor serve` daemons (A and B) on one PostgreSQL schema, and the injecting proxy that
 * `lessor run` and `lessor mcp` run (ForwardProxy + LeaseEgress) with daemon B as its vault, reached
 * as `lessor run` reaches it (the owner's socket, no reconnect). B reaches PostgreSQL through a
 * loopback TCP relay this test owns, so that B's database link can be cut and restored while A keeps
 * its own.
 *
 * Held (tried, no test kept): a rotation, a rollback, a deletion, a lease revocation and the killswitch
 * made on one instance are honoured by the other's next access or grant at once (the store's cache of
 * current versions and metadata is checked against the commit counters under the write lock).
 *
 * Broken and fixed here:
 * - The tripwire's alarm while B cannot reach PostgreSQL: the proxy refuses the request and stops
 *   adding the credential, but its one report (the `proxy_request` alarm, and the lease's revocation,
 *   in one commit) failed `unavailable` and was dropped with a line on stderr; B came back and the
 *   vault never heard of it: no alarm in the trail, the lease live, while the agent was told "the
 *   lease is revoked and the event is audited as an alarm". Now a report the vault could not take
 *   (`unavailable`) is sent again until it lands (src/proxy/lease-egress.ts).
 * - The killswitch released and pulled again on A between two looks of B (B cut off, its poll's
 *   second, or both feed changes read at once): B compared only "engaged" with "engaged", raised no
 *   signal, and the agent connections opened on B since the first pull (an agent token is not revoked
 *   by the killswitch; connections are taken while it is engaged) stayed open through the second.
 *   Now a new engagement (its time or actor differ) raises the signal again, and a read that
 *   finished after a newer one is not taken as the latest (src/vault/lockout.ts).
 * Needs LESSOR_TEST_PG_URL; skips with the reason without it.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import * as tls from "node:tls";
import { after, describe, test, type TestContext } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { parsePolicy } from "../src/vault/policy.js";
import { Vault } from "../src/vault/vault.js";
import { agent, grant, hexKey, within } from "./helpers.js";
import { admin, PG_SKIP, testSchema } from "./pg-helpers.js";
import { auditRowsHolding, pgTeam, type PgTeam } from "./pg-team.js";
import { headsServer, loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";

type Coded = Error & { code?: string };

const HOST = "api.pgcaches.example";
const HOST2 = "uploads.pgcaches.example";
/** The canary: the credential's value. Never in the audit trail, never upstream of a host its lease does not cover. */
const CANARY = "ghp_" + "PgCaChEsCaNaRy" + randomBytes(10).toString("hex");

const POLICY = [grant("tok", ["bot"], ["tok"], [HOST], 'ttl = "1h"'), grant("tok2", ["bot"], ["tok2"], [HOST2], 'ttl = "1h"')].join("\n");

/** An upstream for both hosts: answers 200 and records every request head it gets. */
const upCa = LocalCa.create({ permitted: [HOST, HOST2] });
const upstreamHeads: string[] = [];
const upstream = headsServer(upCa, (head, s) => {
  upstreamHeads.push(head);
  s.end("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
});
await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
const upPort = (upstream.address() as AddressInfo).port;
after(() => new Promise<void>((r) => upstream.close(() => r())));

/** A and B on a fresh schema of their own (pgTeam), the canary stored as tok and another value as tok2. */
const team = (t: TestContext): Promise<PgTeam> =>
  pgTeam(t, {
    policy: POLICY,
    seed: async (v) => {
      await v.admin().storeSecret({ name: "tok", value: CANARY });
      await v.admin().storeSecret({ name: "tok2", value: `other-${randomBytes(8).toString("hex")}` });
    },
  });

/** An audit event's detail, as an object. */
const det = (e: { detail?: unknown }): Record<string, unknown> => (typeof e.detail === "string" ? JSON.parse(e.detail) : ((e.detail as Record<string, unknown> | null | undefined) ?? {}));

describe("what a team server's daemons and B's injecting proxy keep in memory, attacked across instances", { skip: PG_SKIP }, () => {
  // docs/proxy.md "Tripwire": a request carrying a credential to a host its lease does not cover is
  // refused, the lease is revoked and an alarm is audited. The proxy's vault is daemon B, which has
  // just lost PostgreSQL (a failover, a restart, its connections terminated): the report that revokes
  // the lease and writes the alarm fails `unavailable`. It used to be dropped with a line on stderr:
  // once B was back the trail had no alarm and the lease stayed live in the vault (an admin looking
  // saw nothing), though the agent was told the lease was revoked and the alarm audited.
  test("the tripwire fires in B's proxy while B cannot reach PostgreSQL: once B is back the alarm is in the trail and the lease is revoked everywhere", async (t) => {
    const tm = await team(t);
    const api = await LessorClient.connect({ socketPath: tm.b.socket }, { reconnect: false, pipeline: true });
    t.after(() => api.close());
    const creds: ProxyCredential[] = [];
    for (const [secret, host] of [["tok", HOST], ["tok2", HOST2]] as const) {
      const got = await api.leaseAndAccess({ agent: "bot", secret, domains: [host] }, { domain: host, via: "proxy" });
      const value = got.value.unsafeText();
      got.value.wipe();
      creds.push({ lease: got.lease, secret: `global/${secret}`, placeholder: makePlaceholder(value), value, rule: { mode: "placeholder" as const } });
    }
    const warnings: string[] = [];
    const egress = new LeaseEgress({ api, agent: "bot", credentials: creds, egress: "strict", warn: (m) => void warnings.push(m) });
    egress.start();
    const guard = new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1", [HOST2]: "127.0.0.1" }) });
    const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST, HOST2] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly() });
    const port = await proxy.listen();
    t.after(async () => {
      await proxy.close();
      await egress.close();
    });
    const lease = creds[0]!.lease;

    tm.relay.cut();
    await assert.rejects(tm.adminB.listLeases({ agent: "bot" }), (e: Coded) => e.code === "unavailable", "B is cut off from the database");
    // The hostile agent sends tok's placeholder to HOST2, which only tok2's lease covers.
    const s = await openTunnel(port, HOST2, upPort);
    s.write(`GET /upload HTTP/1.1\r\nHost: ${HOST2}\r\nAuthorization: Bearer ${creds[0]!.placeholder}\r\nConnection: close\r\n\r\n`);
    const answer = await readAll(s, 20_000);
    assert.match(answer, /^HTTP\/1\.1 403 /, answer.slice(0, 300));
    // Nothing has reached the vault yet: the agent is not told the lease is revoked and the alarm audited.
    assert.doesNotMatch(answer, /the lease is revoked and the event is audited/, answer.slice(0, 600));
    assert.ok(!upstreamHeads.some((h) => h.includes(CANARY) || h.includes(creds[0]!.placeholder)), "the request went upstream");
    tm.relay.restore();

    // Polled (generous): B reconnects at its next request; the proxy's report must land then.
    let state = "";
    try {
      await within(20_000, "the tripwire's revocation in the database once B is back", async () => {
        const row = (await admin(`SELECT revoked_at, revoke_reason FROM ${tm.schema}.leases WHERE id = $1`, [lease.id])).rows[0];
        state = JSON.stringify(row);
        return row.revoked_at !== null;
      }, 100);
    } catch {
      assert.fail(`the lease is live in the vault after the tripwire fired (${state}); the proxy said: ${warnings.join(" | ")}`);
    }
    const alarms = (await tm.adminA.auditQuery({ limit: 10_000 })).filter((e) => e.type === "proxy_request" && det(e).alarm === true);
    assert.ok(alarms.length >= 1, "no alarm in the audit trail");
    assert.ok(alarms.every((e) => e.leaseId === lease.id && e.domain === HOST2));
    // A, which never lost the database, refuses the lease too.
    const onA = await LessorClient.connect({ socketPath: tm.a.socket });
    t.after(() => onA.close());
    await assert.rejects(onA.accessSecret(lease.id, { domain: HOST }), (e: Coded) => e.code === "lease_revoked");
    for (const c of [tm.adminA, tm.adminB]) {
      const v = await c.auditVerify();
      assert.equal(v.ok, true, v.problem);
    }
    const raw = await auditRowsHolding(tm.schema, CANARY);
    assert.equal(raw, 0, "the credential's value is in an audit row");
    assert.ok(!warnings.join("\n").includes(CANARY));
  });

  // docs/team.md: "on the killswitch, every agent and orchestrator connection closes" on every
  // instance. An agent's token survives the killswitch and B takes its connections while it is
  // engaged (grants are refused in their transactions); after a release it may take leases there. If
  // A's admin pulls it again before B has looked (B cut off from PostgreSQL meanwhile, within its
  // one-second poll, or both changes read in one catch-up), B read "engaged" twice and did nothing.
  test("the killswitch released and pulled again on A between two looks of B: B raises the killswitch signal again (its agents' connections close)", async (t) => {
    const s = await testSchema();
    const key = hexKey();
    const policy = parsePolicy(grant("g", ["claude"], ["tok"], [HOST], 'ttl = "1h"'), "p.toml");
    const open = async (feed?: { listen: boolean; pollMs: number }) => {
      const store = await openPostgresStore({ url: s.url, ...(feed ? { feed } : {}) });
      return Vault.open({ store, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy });
    };
    const A = await open();
    // B hears of the killswitch only when it looks (the daemon's poll: Vault.checkKillswitch).
    const B = await open({ listen: false, pollMs: 3_600_000 });
    t.after(async () => {
      await A.close();
      await B.close();
      await s.drop();
    });
    await A.admin().storeSecret({ name: "tok", value: CANARY });
    const signals: boolean[] = [];
    B.onSignal((sg) => void (sg.type === "killswitch" && signals.push(sg.engaged)));
    await A.admin().killswitch("incident");
    assert.equal((await B.checkKillswitch()).engaged, true);
    assert.deepEqual(signals, [true], "B raised the killswitch at its first look");
    // Released: the agent takes a lease through B (its connection, opened meanwhile, is still up).
    await A.admin().releaseKillswitch("resolved?");
    const lease = await B.session(agent("claude")).requestLease({ secret: "tok" });
    // Pulled again before B's next look.
    await A.admin().killswitch("incident again");
    assert.equal((await B.checkKillswitch()).engaged, true);
    assert.deepEqual(signals.slice(1).filter((e) => e), [true], `B raised no killswitch signal for the second pull (signals: ${JSON.stringify(signals)}): its agents' connections stay open`);
    await assert.rejects(B.session(agent("claude")).accessSecret(lease.id, { domain: HOST }), (e: Coded) => e.code === "lease_revoked");
  });
});
