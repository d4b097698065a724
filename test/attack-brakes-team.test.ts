/**
 * An attack pass on the brakes (killswitch, revocation, the dead-man switch, use caps) of a team
 * server: two real `lessor serve` daemons (A and B) on one PostgreSQL schema (docs/team.md), and a
 * real injecting proxy (ForwardProxy + LeaseEgress, what `lessor run` runs) whose vault is daemon B,
 * reached as `lessor run` reaches a daemon (the owner's socket, no reconnect). B reaches PostgreSQL
 * through a loopback TCP relay this test owns, so that B's database link can be cut (and restored)
 * while A keeps its own.
 *
 * Promises attacked (docs/proxy.md "Revocation", docs/security.md "the killswitch ends every live
 * lease", docs/team.md "a revocation, a killswitch … on one reaches the others"):
 * - a WebSocket through B's proxy, its frames carrying the credential, after the killswitch on A:
 *   cut when the lease had uses left, and when the handshake took the lease's last use (fixed: the
 *   killswitch revoked only live leases, and the proxy kept a used-up lease's tunnels);
 * - the same after a revocation on A while B cannot reach PostgreSQL (fixed: the proxy's lease watch
 *   swallowed the failure and kept injecting; now an open stream closes once its lease has gone
 *   unconfirmed for UNCONFIRMED_MS, src/proxy/lease-egress.ts);
 * - B's agents after the killswitch on A: connections closed, no grant, not cleared by B's restart,
 *   released only by an admin (held);
 * - max_uses raced over A and B (held); the dead-man switch with nobody asking (held);
 * - B cut off from PostgreSQL during the killswitch: only `unavailable`, and closed at once when back (held);
 * - the audit: one chain verified on both, the canary value in no event (held).
 * Needs LESSOR_TEST_PG_URL; skips with the reason without it.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import * as tls from "node:tls";
import { after, describe, test, type TestContext } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { startServe, type RunningDaemon } from "./daemon-harness.js";
import { grant, within } from "./helpers.js";
import { admin, PG_SKIP } from "./pg-helpers.js";
import { auditRowsHolding, pgTeam, type PgTeam } from "./pg-team.js";
import { inTime, loopbackOnly, openTunnel, tableResolver } from "./proxy-harness.js";

type Coded = Error & { code?: string };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const HOST = "api.brakes.example";
/** The canary: the credential's value. It must reach the upstream only while a lease is in force, and never the audit. */
const CANARY = "ghp_" + "BrAkEsCaNaRy" + randomBytes(10).toString("hex");
const DOM = { domain: HOST };

const POLICY = [
  grant("open", ["bot", "claude"], ["tok"], [HOST], 'ttl = "1h"'),
  grant("two-uses", ["lastuse"], ["tok"], [HOST], 'ttl = "1h"\nmax_uses = 2'),
  grant("five-uses", ["capped"], ["tok"], [HOST], 'ttl = "1h"\nmax_uses = 5'),
].join("\n");

// ------------------------------------------------------------------------------ a raw WebSocket upstream

interface UpstreamWs {
  auth: string;
  /** Client frames the upstream received (unmasked payloads, as text), with when. */
  frames: { at: number; text: string }[];
  sock: tls.TLSSocket;
}
const upCa = LocalCa.create({ permitted: [HOST] });
const wsSeen: UpstreamWs[] = [];

const upstream = tls.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (s) => {
  s.on("error", () => {});
  let buf = Buffer.alloc(0);
  let ws: UpstreamWs | null = null;
  s.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    if (ws === null) {
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = buf.subarray(0, end).toString("latin1");
      buf = buf.subarray(end + 4);
      const header = (n: string) => new RegExp(`^${n}:\\s*(.*)$`, "im").exec(head)?.[1]?.trim() ?? "";
      if (!/websocket/i.test(header("upgrade"))) return void s.end("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
      const accept = createHash("sha1").update(header("sec-websocket-key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
      s.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
      ws = { auth: header("authorization"), frames: [], sock: s };
      wsSeen.push(ws);
    }
    // Masked client frames, payloads under 126 bytes (what this test sends).
    while (buf.length >= 6) {
      const len = buf[1]! & 0x7f;
      if (buf.length < 6 + len) return;
      const mask = buf.subarray(2, 6);
      const payload = Buffer.from(buf.subarray(6, 6 + len).map((b, i) => b ^ mask[i % 4]!));
      ws.frames.push({ at: performance.now(), text: payload.toString("latin1") });
      buf = buf.subarray(6 + len);
    }
  });
});
await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
const upPort = (upstream.address() as AddressInfo).port;
after(() => new Promise<void>((r) => upstream.close(() => r())));

/** A masked client text frame. */
function clientFrame(text: string): Buffer {
  const p = Buffer.from(text);
  assert.ok(p.length < 126);
  const mask = randomBytes(4);
  return Buffer.concat([Buffer.from([0x81, 0x80 | p.length]), mask, Buffer.from(p.map((b, i) => b ^ mask[i % 4]!))]);
}

// ------------------------------------------------------------------------------ the team, and B's proxy

type Team = PgTeam;

/** A and B on a fresh schema (pgTeam), the canary stored as tok. `vault`: extra [vault] lines for both. */
const team = (t: TestContext, opts: { vault?: string } = {}): Promise<Team> =>
  pgTeam(t, { policy: POLICY, ...opts, seed: (v) => v.admin().storeSecret({ name: "tok", value: CANARY }).then(() => {}) });

/** An agent connection over TCP to `d` (token minted on A), no reconnect. */
async function agentOn(tm: Team, d: RunningDaemon, agent: string, role: "agent" | "orchestrator" = "agent"): Promise<LessorClient> {
  const tok = await tm.adminA.createToken({ name: `${agent}-${randomBytes(3).toString("hex")}`, role, ...(role === "agent" ? { agent } : { actFor: [agent] }) });
  const c = await LessorClient.connect(d.tcp!, { token: tok.token, reconnect: false });
  tm.closeLater(c);
  return c;
}

interface BProxy {
  /** A WebSocket through the proxy to HOST, its handshake carrying the placeholder; the upstream's record of it. */
  websocket(): Promise<{ client: tls.TLSSocket; up: UpstreamWs; closed: () => boolean; send(text: string): void }>;
  placeholder: string;
  leaseId: string;
  close(): Promise<void>;
}

/**
 * `lessor run`'s proxy for `agent` on daemon B: the owner's connection to B's socket without
 * reconnect (src/backend/daemon.ts), a lease taken with one use as the run takes it
 * (src/cli/run/leases.ts), placeholder rule with `websocket = true`, the lease watch started.
 */
async function proxyOnB(tm: Team, agent: string): Promise<BProxy> {
  const api = await LessorClient.connect({ socketPath: tm.b.socket }, { reconnect: false, pipeline: true });
  const got = await api.leaseAndAccess({ agent, secret: "tok", domains: [HOST] }, { domain: HOST, via: "proxy" });
  const value = got.value.unsafeText();
  got.value.wipe();
  const placeholder = makePlaceholder(value);
  const egress = new LeaseEgress({ api, agent, credentials: [{ lease: got.lease, secret: "global/tok", placeholder, value, rule: { mode: "placeholder", websocket: true } }], egress: "strict" });
  egress.start();
  const guard = new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1" }) });
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly() });
  const port = await proxy.listen();
  return {
    placeholder,
    leaseId: got.lease.id,
    websocket: async () => {
      const before = wsSeen.length;
      const s = await openTunnel(port, HOST, upPort);
      let closed = false;
      s.on("close", () => (closed = true));
      s.write(
        `GET /ws HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\n` +
          `Sec-WebSocket-Version: 13\r\nAuthorization: Bearer ${placeholder}\r\n\r\n`,
      );
      const head = await inTime(
        new Promise<string>((resolve) => {
          let b = "";
          const on = (d: Buffer) => {
            b += d.toString("latin1");
            if (b.includes("\r\n\r\n")) {
              s.off("data", on);
              resolve(b);
            }
          };
          s.on("data", on);
          s.once("close", () => resolve(b));
        }),
        5000,
        "the 101",
      );
      assert.match(head, /^HTTP\/1\.1 101 /, head.slice(0, 300));
      s.on("data", () => {});
      assert.equal(wsSeen.length, before + 1);
      const up = wsSeen.at(-1)!;
      assert.equal(up.auth, `Bearer ${CANARY}`, "the handshake carried the credential");
      return { client: s, up, closed: () => closed || s.destroyed, send: (text) => void (s.destroyed ? null : s.write(clientFrame(text))) };
    },
    close: async () => {
      await proxy.close();
      await egress.close();
      await api.close();
    },
  };
}

/** An audit event's detail, as an object. */
const det = (e: { detail?: unknown }): Record<string, unknown> => (typeof e.detail === "string" ? JSON.parse(e.detail) : ((e.detail as Record<string, unknown> | null | undefined) ?? {}));

/** The frames the upstream got after `t0` that carry the real credential. */
const leakedAfter = (up: UpstreamWs, t0: number) => up.frames.filter((f) => f.at > t0 && f.text.includes(CANARY));

async function verifyBothAndNoCanary(tm: Team): Promise<void> {
  for (const c of [tm.adminA, tm.adminB]) {
    const v = await c.auditVerify();
    assert.equal(v.ok, true, v.problem);
  }
  const events = JSON.stringify(await tm.adminA.auditQuery({ limit: 10_000 }));
  assert.ok(!events.includes(CANARY), "the credential's value is in the audit trail");
  const raw = await auditRowsHolding(tm.schema, CANARY);
  assert.equal(raw, 0, "the credential's value is in an audit row");
}

describe("the brakes of a team server (two daemons on one PostgreSQL schema) and of the injecting proxy on one of them", { skip: PG_SKIP }, () => {
  // ------------------------------------------------------------------------------ killswitch vs a proxy's WebSocket

  test("the killswitch on A cuts a WebSocket through B's proxy whose lease has uses left, within a second; its later frames never carry the credential", async (t) => {
    const tm = await team(t);
    const p = await proxyOnB(tm, "bot");
    t.after(() => p.close());
    const ws = await p.websocket();
    ws.send(`hello ${p.placeholder}`);
    await within(3000, "the first frame upstream", () => ws.up.frames.length >= 1, 10);
    assert.equal(ws.up.frames[0]!.text, `hello ${CANARY}`, "websocket = true: the placeholder is replaced in frames");
    const t0 = performance.now();
    const ks = await tm.adminA.killswitch("incident");
    assert.ok(ks.revoked >= 1);
    await within(1500, "the WebSocket cut after the killswitch on A", () => ws.closed(), 10);
    ws.send(`after ${p.placeholder}`);
    await sleep(300);
    assert.deepEqual(leakedAfter(ws.up, t0), []);
    await verifyBothAndNoCanary(tm);
  });

  // docs/proxy.md "Revocation": "A lease revoked anywhere (`lessor revoke`, the killswitch, another
  // process, the daemon) … the tunnels that used it are closed"; docs/security.md: "the killswitch ends
  // every live lease". With `websocket = true` every client frame gets the real credential put in.
  // When the WebSocket's handshake took the lease's last use, the lease is `done` (used up). The
  // killswitch's UPDATE used to skip it (`WHERE NOT done`), and the proxy's watch, seeing it not live
  // and used up, kept its tunnels for good, so the credential kept going upstream in every frame
  // after the incident. Now a revocation marks used-up unexpired leases too, and the watch keeps
  // following a used-up lease whose last uses still stream.
  test("the killswitch on A cuts a WebSocket through B's proxy whose handshake took its lease's last use; its later frames never carry the credential", async (t) => {
    const tm = await team(t);
    const p = await proxyOnB(tm, "lastuse"); // max_uses = 2: the run's own first use, then the handshake
    t.after(() => p.close());
    const ws = await p.websocket();
    const row = (await admin(`SELECT uses, max_uses, done FROM ${tm.schema}.leases WHERE id = $1`, [p.leaseId])).rows[0];
    assert.equal(row.uses, 2, "the handshake took the last use");
    const t0 = performance.now();
    await tm.adminA.killswitch("incident: stop every credential now");
    await within(3000, "B hearing of the killswitch", async () => (await tm.adminB.describe()).killswitch.engaged, 10);
    await sleep(500); // ten lease-watch periods
    for (let i = 0; i < 5; i++) {
      ws.send(`exfil-${i} ${p.placeholder}`);
      await sleep(50);
    }
    await sleep(200);
    const leaked = leakedAfter(ws.up, t0);
    const revokedAt = (await admin(`SELECT revoked_at FROM ${tm.schema}.leases WHERE id = $1`, [p.leaseId])).rows[0].revoked_at;
    assert.deepEqual(
      leaked.map((f) => `${Math.round(f.at - t0)} ms after the killswitch: ${f.text.replace(CANARY, "<CREDENTIAL>")}`),
      [],
      `the WebSocket stayed open (closed: ${ws.closed()}) and the proxy put the real credential into ${leaked.length} frames after the killswitch; the lease's revoked_at is ${revokedAt}`,
    );
  });

  // docs/proxy.md "Revocation": "the run watches its leases every 50 ms …, so an open stream is cut
  // within about that"; docs/team.md: a revocation on one instance reaches the others. The run's vault
  // is daemon B; B loses PostgreSQL (it answers `unavailable`, failing closed itself), and the owner
  // revokes the lease on A, which has the database. The proxy's watch used to swallow B's
  // `unavailable` and keep the WebSocket up, every frame still carrying the credential, for as long
  // as B was cut off. Now a stream whose lease the vault has not confirmed for UNCONFIRMED_MS closes.
  test("with B cut off from PostgreSQL, a lease revoked on A: the WebSocket of B's proxy is closed (its lease unconfirmed) and no later frame carries the credential", async (t) => {
    const tm = await team(t);
    const p = await proxyOnB(tm, "bot");
    t.after(() => p.close());
    const ws = await p.websocket();
    tm.relay.cut();
    await assert.rejects(tm.adminB.listLeases({ agent: "bot" }), (e: Coded) => e.code === "unavailable", "B is cut off from the database");
    const t0 = performance.now();
    assert.deepEqual(await tm.adminA.revokeLease(p.leaseId, "incident"), { revoked: true });
    await sleep(1000);
    for (let i = 0; i < 5; i++) {
      ws.send(`exfil-${i} ${p.placeholder}`);
      await sleep(50);
    }
    await sleep(200);
    const leaked = leakedAfter(ws.up, t0);
    tm.relay.restore();
    assert.deepEqual(
      leaked.map((f) => `${Math.round(f.at - t0)} ms after the revocation: ${f.text.replace(CANARY, "<CREDENTIAL>")}`),
      [],
      `the WebSocket stayed open (closed: ${ws.closed()}) and the proxy put the revoked lease's credential into ${leaked.length} frames`,
    );
  });

  // ------------------------------------------------------------------------------ killswitch across daemons (held)

  test("the killswitch on A: B closes its agents' connections within a second and grants nothing; B's restart does not clear it; only an admin releases it (agent and orchestrator on B refused, audited); the chain verifies on both", async (t) => {
    const tm = await team(t);
    const agentB = await agentOn(tm, tm.b, "claude");
    const lease = await agentB.requestLease({ secret: "tok", domains: [HOST] });
    const v = await agentB.accessSecret(lease.id, DOM);
    assert.equal(v.value.unsafeText(), CANARY);
    v.value.wipe();
    const t0 = performance.now();
    await tm.adminA.killswitch("incident");
    await within(1500, "B closing the agent's connection", () => !agentB.connected, 5);
    console.log(`# B closed its agent connection ${Math.round(performance.now() - t0)} ms after the killswitch on A`);
    const fresh = await agentOn(tm, tm.b, "claude");
    await assert.rejects(fresh.accessSecret(lease.id, DOM), (e: Coded) => e.code === "lease_revoked");
    await assert.rejects(fresh.requestLease({ secret: "tok", domains: [HOST] }), (e: Coded) => e.code === "access_denied" && /killswitch/.test(e.message));
    await assert.rejects(fresh.releaseKillswitch(), (e: Coded) => e.code === "access_denied");
    const orch = await agentOn(tm, tm.b, "claude", "orchestrator");
    await assert.rejects(orch.releaseKillswitch("please"), (e: Coded) => e.code === "access_denied");

    // B restarted: still engaged.
    const oldB = tm.b;
    await oldB.stop();
    const b2 = await startServe(tm.homeB);
    tm.daemons.push(b2);
    const adminB2 = await LessorClient.connect({ socketPath: b2.socket });
    tm.closeLater(adminB2);
    assert.equal((await adminB2.describe()).killswitch.engaged, true, "B's restart cleared the killswitch");
    const onB2 = await agentOn(tm, b2, "claude");
    await assert.rejects(onB2.requestLease({ secret: "tok", domains: [HOST] }), (e: Coded) => e.code === "access_denied" && /killswitch/.test(e.message));
    await assert.rejects(onB2.releaseKillswitch(), (e: Coded) => e.code === "access_denied");

    // The admin on B releases; A grants again at once.
    assert.deepEqual(await adminB2.releaseKillswitch("all clear"), { released: true });
    const onA = await agentOn(tm, tm.a, "claude");
    const l2 = await onA.requestLease({ secret: "tok", domains: [HOST] });
    assert.ok(l2.id);
    const ks = await tm.adminA.auditQuery({ types: ["killswitch"], order: "asc", limit: 100 });
    assert.deepEqual(
      ks.map((e) => [e.outcome, det(e).engaged]),
      [
        ["ok", true],
        ["ok", false],
      ],
    );
    const refused = (await tm.adminA.auditQuery({ limit: 10_000 })).filter((e) => e.outcome !== "ok" && /release the killswitch/.test(JSON.stringify(e)));
    assert.ok(refused.length >= 1, "the refused releases are audited");
    for (const c of [tm.adminA, adminB2]) assert.equal((await c.auditVerify()).ok, true);
    const events = JSON.stringify(await tm.adminA.auditQuery({ limit: 10_000 }));
    assert.ok(!events.includes(CANARY));
  });

  test("max_uses = 5 raced from A and B (40 accesses at once over four connections): exactly 5 succeed, 5 uses and 5 secret_accessed events", async (t) => {
    const tm = await team(t);
    const conns = await Promise.all([tm.a, tm.a, tm.b, tm.b].map((d) => agentOn(tm, d, "capped")));
    const lease = await conns[0]!.requestLease({ secret: "tok", domains: [HOST] });
    const tries = await Promise.allSettled(Array.from({ length: 40 }, (_, i) => conns[i % 4]!.accessSecret(lease.id, DOM).then((r) => r.value.wipe())));
    const ok = tries.filter((r) => r.status === "fulfilled").length;
    for (const r of tries) if (r.status === "rejected") assert.equal((r.reason as Coded).code, "lease_exhausted", String(r.reason));
    assert.equal(ok, 5);
    const uses = (await admin(`SELECT uses FROM ${tm.schema}.leases WHERE id = $1`, [lease.id])).rows[0].uses;
    assert.equal(uses, 5);
    const accessed = (await tm.adminB.auditQuery({ leaseId: lease.id, types: ["secret_accessed"], limit: 1000 })).filter((e) => e.outcome === "ok");
    assert.equal(accessed.length, 5);
    await verifyBothAndNoCanary(tm);
  });

  test("the dead-man switch (heartbeat 2 s on both): with nobody asking, it fires once, the lease B granted is revoked, B's agent is cut; a heartbeat from an agent on B neither moves nor releases it", async (t) => {
    const tm = await team(t, { vault: 'heartbeat = "2s"' });
    const agentB = await agentOn(tm, tm.b, "claude");
    await tm.adminA.heartbeat();
    const lease = await agentB.requestLease({ secret: "tok", domains: [HOST] });
    await assert.rejects(agentB.heartbeat(), (e: Coded) => e.code === "access_denied");
    await within(5000, "the switch firing and B's agent cut", () => !agentB.connected, 20);
    const row = (await admin(`SELECT revoked_at FROM ${tm.schema}.leases WHERE id = $1`, [lease.id])).rows[0];
    assert.notEqual(row.revoked_at, null, "the lease granted on B was revoked");
    await sleep(1200);
    const fired = (await tm.adminA.auditQuery({ types: ["killswitch"], limit: 100 })).filter((e) => det(e).engaged === true);
    assert.equal(fired.length, 1, "one killswitch event, not one per daemon");
    const onB = await agentOn(tm, tm.b, "claude");
    await assert.rejects(onB.requestLease({ secret: "tok", domains: [HOST] }), (e: Coded) => e.code === "access_denied" && /killswitch/.test(e.message));
    await verifyBothAndNoCanary(tm);
  });

  test("B cut off from PostgreSQL while A pulls the killswitch: B answers only `unavailable` (no value), and once back closes its agents' connections and refuses the lease", async (t) => {
    const tm = await team(t);
    const agentB = await agentOn(tm, tm.b, "claude");
    const lease = await agentB.requestLease({ secret: "tok", domains: [HOST] });
    tm.relay.cut();
    await tm.adminA.killswitch("incident");
    const answers: string[] = [];
    for (let i = 0; i < 5; i++) {
      try {
        const r = await agentB.accessSecret(lease.id, DOM);
        answers.push(`value ${r.value.unsafeText() === CANARY ? "(the canary)" : ""}`);
        r.value.wipe();
      } catch (e) {
        answers.push((e as Coded).code ?? "none");
      }
      await sleep(100);
    }
    assert.deepEqual([...new Set(answers)], ["unavailable"]);
    const t0 = performance.now();
    tm.relay.restore();
    await within(5000, "B closing its agent's connection once back", () => !agentB.connected, 10);
    console.log(`# B closed its agent connection ${Math.round(performance.now() - t0)} ms after its database came back`);
    const fresh = await agentOn(tm, tm.b, "claude");
    await assert.rejects(fresh.accessSecret(lease.id, DOM), (e: Coded) => e.code === "lease_revoked");
    await verifyBothAndNoCanary(tm);
  });
});
