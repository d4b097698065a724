/** The loopback-only TCP transport: what it refuses, what it accepts, and a real round trip through it. */
import assert from "node:assert/strict";
import { once } from "node:events";
import { connect, type AddressInfo, type Server } from "node:net";
import { createRequire, syncBuiltinESMExports } from "node:module";
import { networkInterfaces } from "node:os";
import { after, describe, test } from "node:test";
import { encodeFrame, FrameDecoder } from "../src/protocol/framing.js";
import { LessorServer, type PeerInfo } from "../src/server/server.js";
import { isLoopbackAddress, listenTcp, loopbackBindAddress } from "../src/server/transports/tcp.js";
import { VaultError } from "../src/base/errors.js";
import { LessorClient } from "../src/client/index.js";
import { makeVault } from "./helpers.js";

const hasIpv6Loopback = Object.values(networkInterfaces()).some((l) => l?.some((a) => a.address === "::1"));

async function refusal(p: Promise<unknown>): Promise<VaultError> {
  try {
    const s = await p;
    (s as Server | undefined)?.close?.();
  } catch (e) {
    assert.ok(e instanceof VaultError, String(e));
    return e;
  }
  assert.fail("expected a refusal");
}

describe("tcp transport", () => {
  test("isLoopbackAddress: 127.0.0.0/8 and ::1 (plain or IPv4-mapped) only", () => {
    for (const a of ["127.0.0.1", "127.255.255.254", "127.1.2.3", "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"]) assert.equal(isLoopbackAddress(a), true, a);
    for (const a of ["0.0.0.0", "::", "10.0.0.1", "192.168.1.1", "128.0.0.1", "126.255.255.255", "::ffff:10.0.0.1", "::ffff:0.0.0.0", "::2", "fe80::1", "localhost", "127.1", "", "::1%lo"])
      assert.equal(isLoopbackAddress(a), false, a);
  });

  test("non-loopback hosts are refused with config_invalid before anything is bound", async () => {
    const onConn = (): void => assert.fail("no connection expected");
    for (const host of ["0.0.0.0", "::", "192.168.1.1", "10.0.0.1", "::ffff:10.0.0.1", "::ffff:0.0.0.0", "fe80::1"]) {
      const e = await refusal(listenTcp(host, 0, onConn));
      assert.equal(e.code, "config_invalid", host);
      assert.match(e.message, /is not a loopback address: the TCP transport is loopback-only \(127\.0\.0\.1, ::1 or localhost\) because it authenticates by bearer token alone/);
      assert.ok(e.message.includes(JSON.stringify(host)));
    }
    for (const host of ["example.com", "localhost.example.com", "my-laptop", ""]) {
      const e = await refusal(listenTcp(host, 0, onConn));
      assert.equal(e.code, "config_invalid", host);
      assert.match(e.message, /loopback-only/);
    }
    assert.equal((await refusal(listenTcp("127.0.0.1", 70000, onConn))).code, "config_invalid");
    assert.equal((await refusal(listenTcp("127.0.0.1", 1.5, onConn))).code, "config_invalid");
  });

  test("attack: where the resolver answers ::1 first for localhost, the daemon still binds 127.0.0.1, the address every client dials, so no other local user can take it while the daemon runs", async () => {
    // The resolver of a host whose /etc/hosts lists "::1 localhost" first (this machine lists 127.0.0.1 only).
    const dns = createRequire(import.meta.url)("node:dns/promises") as { lookup: unknown };
    const real = dns.lookup;
    dns.lookup = async () => [
      { address: "::1", family: 6 },
      { address: "127.0.0.1", family: 4 },
    ];
    syncBuiltinESMExports();
    let l: Server;
    try {
      assert.equal(await loopbackBindAddress("localhost"), "127.0.0.1");
      assert.equal(await loopbackBindAddress("LOCALHOST"), "127.0.0.1");
      l = await listenTcp("localhost", 0, (s) => s.destroy());
    } finally {
      dns.lookup = real;
      syncBuiltinESMExports();
    }
    after(() => l.close());
    const a = l.address() as AddressInfo;
    assert.equal(a.address, "127.0.0.1", "bound where clients dial localhost");
    // Another local user cannot take 127.0.0.1 on the daemon's port: it is the daemon's.
    const squatter = (await import("node:net")).createServer();
    const taken = await new Promise<string>((resolve) => {
      squatter.once("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? "error"));
      squatter.listen(a.port, "127.0.0.1", () => resolve("bound"));
    });
    squatter.close();
    assert.equal(taken, "EADDRINUSE");
    // And a client given localhost reaches this listener (which hangs up: no handshake here).
    let reached = false;
    l.once("connection", () => (reached = true));
    await LessorClient.connect({ host: "localhost", port: a.port }, { token: `lsr_0123456789abcdef_${"A".repeat(43)}`, connectTimeoutMs: 2000 }).then(
      (c) => c.close(),
      () => {},
    );
    assert.ok(reached, "the client dialled the daemon's address");
  });

  test("127.0.0.1, another 127/8 address, ::1 and localhost are accepted, and a client gets served through them", async () => {
    const { vault } = await makeVault();
    const server = new LessorServer({
      vault,
      version: "test",
      authenticate: async (peer: PeerInfo) => {
        seen.push(peer);
        return { id: "tcp:test", role: "admin", transport: peer.transport };
      },
    });
    after(() => server.close());
    const seen: PeerInfo[] = [];
    const hosts = ["127.0.0.1", "127.0.0.2", "localhost", ...(hasIpv6Loopback ? ["::1"] : [])];
    for (const host of hosts) {
      const l = await listenTcp(host, 0, (s, peer) => server.handle(s, peer));
      after(() => l.close());
      const a = l.address() as AddressInfo;
      assert.ok(isLoopbackAddress(a.address), `${host} bound ${a.address}`);
      assert.ok(a.port > 0);
      const sock = connect({ host: a.address, port: a.port });
      await once(sock, "connect");
      const dec = new FrameDecoder();
      const frames: unknown[] = [];
      sock.on("data", (c: Buffer) => frames.push(...dec.push(c).map((b) => JSON.parse(b.toString()))));
      sock.write(encodeFrame({ protocol: "lessor", version: 1 }));
      sock.write(encodeFrame({ id: "01890a5d-ac96-774b-bcce-b302099a8057", method: "status", params: {} }));
      while (frames.length < 2) await new Promise((r) => setTimeout(r, 5));
      assert.deepEqual((frames[0] as { identity: unknown }).identity, { id: "tcp:test", role: "admin", transport: "tcp" });
      assert.equal((frames[1] as { ok: boolean }).ok, true, host);
      sock.destroy();
    }
    assert.equal(seen.length, hosts.length);
    for (const p of seen) {
      assert.equal(p.transport, "tcp");
      assert.ok(p.remoteAddress !== undefined && isLoopbackAddress(p.remoteAddress), p.remoteAddress);
      // The endpoint the token handshake binds its proof to comes with the peer, not from the socket.
      assert.ok(p.localAddress !== undefined && isLoopbackAddress(p.localAddress), p.localAddress);
      assert.ok(p.localPort !== undefined && p.localPort > 0);
    }
  });

  test("a port in use is a clear config_invalid, not a crash", async () => {
    const first = await listenTcp("127.0.0.1", 0, () => {});
    after(() => first.close());
    const e = await refusal(listenTcp("127.0.0.1", (first.address() as AddressInfo).port, () => {}));
    assert.equal(e.code, "config_invalid");
    assert.match(e.message, /EADDRINUSE/);
  });
});
