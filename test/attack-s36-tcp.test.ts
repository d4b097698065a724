/**
 * Session 36 red team: the daemon's loopback TCP listener and the client SDK's TCP endpoint.
 *
 * - Another local user (nobody, through setpriv) opens max_handshakes_per_peer (64) connections to
 *   the daemon's TCP port from 127.0.0.1, the source address every lessor client dials from, and
 *   never says hello. On TCP the per-peer handshake key is the source address, so those connections
 *   fill the handshake budget of every client on 127.0.0.1: admission refuses the next one with
 *   rate_limited ("peer handshake cap") before any eviction is considered, and the owner's own token
 *   client cannot connect until the flood's handshakes time out (and the attacker simply reconnects).
 *   docs/daemon.md ("Idle floods") promises that a real client, which says hello at once, gets in.
 * - LESSOR_ADDR / the SDK endpoint with an IPv6 zone id (`[::1%lo]:7391`): loopbackHost feeds it to
 *   new URL(), which throws a TypeError, so the CLI dies with "internal error (this is a bug)" and the
 *   SDK throws a non-VaultError instead of the clear config_invalid / invalid_request refusal.
 *
 * - (With the fix) a failed one-step token login over TCP is audited naming the client's address.
 *
 * Real `lessor serve` children, real sockets on 127.0.0.1 only; the last block checks Admission's
 * choice of the connection replaced in isolation.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { connect as netConnect, type Socket } from "node:net";
import { after, describe, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { checkEndpoint } from "../src/client/transport.js";
import { VaultError } from "../src/base/errors.js";
import { encodeFrame } from "../src/protocol/framing.js";
import { daemonTarget } from "../src/backend/daemon-target.js";
import { startServe } from "./daemon-harness.js";
import { grant } from "./helpers.js";
import { AS_NOBODY, attacker, sharedHome } from "./dos-harness.js";

const POLICY = grant("gh", ["claude", "bob"], ["github-token"], ["api.github.com"]);

describe("another local user's idle TCP connections from 127.0.0.1 (lessor serve)", { skip: AS_NOBODY }, () => {
  test("64 connections that never say hello, from the address every client dials from, do not keep a token client out", async () => {
    // A long handshake deadline only makes the window easy to hit here; with the default 5 s the
    // attacker reconnects every 5 s and the effect is the same.
    const { home, socket } = await sharedHome(POLICY, `handshake_timeout = "60s"\n`);
    const d = await startServe(home);
    after(() => d.stop());
    const tcp = d.tcp!;
    const admin = await LessorClient.connect({ socketPath: socket });
    const bob = await admin.createToken({ name: "bob-laptop", role: "agent", agent: "bob" });
    await admin.close();

    const idle = attacker(["idle", `tcp:${tcp.host}:${tcp.port}`, "64"], true, 60_000);
    after(() => idle.stop());
    const r = (await idle.line(0)) as { stillOpen: number; connectErrors: number; refused: number };
    assert.equal(r.connectErrors, 0, JSON.stringify(r));

    const results: string[] = [];
    for (let i = 0; i < 3; i++) {
      try {
        const c = await LessorClient.connect({ host: tcp.host, port: tcp.port }, { token: bob.token, reconnect: false });
        results.push(`ok ${c.identity.role}`);
        await c.close();
      } catch (e) {
        results.push(`${(e as VaultError).code}: ${(e as Error).message.slice(0, 160)}`);
      }
    }
    assert.deepEqual(
      results,
      ["ok agent", "ok agent", "ok agent"],
      `another local user's ${r.stillOpen} idle connections from 127.0.0.1 keep the token client out: ${JSON.stringify(results)}`,
    );
    assert.ok(!d.stderr().includes(bob.token), "the token is never logged");
  });
});

describe("a failed token login over TCP (lessor serve)", { skip: AS_NOBODY }, () => {
  test("is audited with the peer's loopback address, and never the token's secret", async () => {
    const { home, socket } = await sharedHome(POLICY, "");
    const d = await startServe(home);
    after(() => d.stop());
    const admin = await LessorClient.connect({ socketPath: socket });
    after(() => admin.close());
    const real = await admin.createToken({ name: "wrong-secret", role: "agent", agent: "bob" });
    const secret = randomBytes(32).toString("base64url").slice(0, 43);
    const wrong = `lsr_${real.id}_${secret}`;
    // The one-step hello (the SDK's token handshake stops at the daemon's proof, which a wrong secret
    // does not check): the daemon looks the token up and audits the failure itself.
    const raw = await new Promise<Socket>((res, rej) => {
      const s = netConnect(d.tcp!, () => res(s));
      s.once("error", rej);
    });
    raw.write(encodeFrame({ protocol: "lessor", version: 1, token: wrong }));
    const reply = await new Promise<Buffer>((res) => raw.once("data", res));
    raw.destroy();
    assert.match(reply.toString("utf8"), /"code":"unauthenticated"/);
    const fails = await admin.auditQuery({ types: ["auth_failed"], order: "desc", limit: 5 });
    const row = fails.find((e) => e.reason === "wrong token secret");
    assert.ok(row !== undefined, JSON.stringify(fails));
    assert.equal((row.detail as Record<string, unknown>).remote, "127.0.0.1", JSON.stringify(row));
    assert.equal((row.detail as Record<string, unknown>).token_id, real.id);
    assert.ok(!JSON.stringify(fails).includes(secret) && !d.stderr().includes(secret), "the secret is never audited or logged");
  });
});

describe("a TCP endpoint with an IPv6 zone id", () => {
  const token = `lsr_${randomBytes(8).toString("hex")}_${randomBytes(32).toString("base64url").slice(0, 43)}`;

  for (const addr of ["[::1%lo]:7391", "[fe80::1%eth0]:7391", "[::1%1]:7391"]) {
    test(`LESSOR_ADDR=${addr} is refused with config_invalid, not a TypeError`, () => {
      let err: unknown = null;
      try {
        daemonTarget({ LESSOR_ADDR: addr, LESSOR_TOKEN: token });
      } catch (e) {
        err = e;
      }
      assert.ok(err instanceof VaultError, `not a VaultError: ${(err as Error | null)?.name} ${(err as { code?: string } | null)?.code}`);
      assert.equal(err.code, "config_invalid");
      assert.ok(!err.message.includes(token));
    });
  }

  test("the SDK endpoint { host: '::1%lo' } is refused with invalid_request, not a TypeError", async () => {
    let err: unknown = null;
    try {
      checkEndpoint({ host: "::1%lo", port: 7391 });
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof VaultError, `not a VaultError: ${(err as Error | null)?.name} ${(err as { code?: string } | null)?.code}`);
    assert.equal(err.code, "invalid_request");
    await assert.rejects(LessorClient.connect({ host: "::1%lo", port: 7391 }, { token }), (e: unknown) => e instanceof VaultError);
  });
});

describe("admission past max_handshakes_per_peer (the fix, in isolation)", () => {
  type Fake = { awaitingPeer: boolean; awaitingHello?: boolean; name: string };
  const limits = { maxConnectionsPerPrincipal: 1000, maxConnectionsPerIssuer: 1000, maxHandshakes: 128, maxHandshakesPerPeer: 4 };
  const tcp = { transport: "tcp" as const, remoteAddress: "127.0.0.1" };
  const uds = { transport: "uds" as const, uid: 1234 };

  async function fill(peer: object, states: ("hello" | "proof" | "busy")[]) {
    const { Admission } = await import("../src/server/admission.js");
    const a = new Admission<Fake>(limits);
    const conns = states.map((s, i) => ({ name: `c${i}`, awaitingPeer: s !== "busy", awaitingHello: s === "hello" }));
    for (const c of conns) {
      const v = a.check(peer as never);
      assert.equal(v.ok, true);
      a.add(c, peer as never);
    }
    return { a, conns };
  }

  test("a TCP newcomer past the cap replaces the address's oldest connection that never said hello", async () => {
    const { a } = await fill(tcp, ["proof", "hello", "hello", "proof"]);
    const v = a.check(tcp as never);
    assert.ok(v.ok && v.evict?.name === "c1", JSON.stringify(v));
  });

  test("with none silent, the oldest waiting for its token after the proof; with none waiting on its client, refused", async () => {
    const { a } = await fill(tcp, ["busy", "proof", "proof", "busy"]);
    const v = a.check(tcp as never);
    assert.ok(v.ok && v.evict?.name === "c1", JSON.stringify(v));
    const { a: b } = await fill(tcp, ["busy", "busy", "busy", "busy"]);
    const w = b.check(tcp as never);
    assert.equal(w.ok, false);
  });

  test("an authenticated connection is out of the budget and never replaced; the address stays at its cap", async () => {
    const { a, conns } = await fill(tcp, ["hello", "hello", "hello", "hello"]);
    for (const c of conns) a.admit(c, { id: "token:x", role: "agent", transport: "tcp" } as never);
    const v = a.check(tcp as never);
    assert.deepEqual(v, { ok: true, evict: null });
    assert.equal(a.handshaking("tcp"), 0);
  });

  test("a uid past its cap is still refused (its flood keeps out only itself)", async () => {
    const { a } = await fill(uds, ["hello", "hello", "hello", "hello"]);
    const v = a.check(uds as never);
    assert.equal(v.ok, false);
  });
});
