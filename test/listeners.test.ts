/** The listener factory: the configuration's [server] table → listener specs → open listeners. */
import assert from "node:assert/strict";
import { once } from "node:events";
import { connect } from "node:net";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import { after, describe, test } from "node:test";
import { DEFAULT_CONFIG } from "../src/config/config.js";
import type { PeerInfo } from "../src/server/connection.js";
import { listenerSpecs, openListener } from "../src/server/transports/listeners.js";
import { codeOf, tempDir } from "./helpers.js";

describe("listener factory", () => {
  test("[server] gives the Unix socket, then loopback TCP when set", () => {
    const home = "/home/a/.lessor";
    assert.deepEqual(listenerSpecs(DEFAULT_CONFIG.server, home), [{ kind: "uds", path: join(home, "lessor.sock"), mode: 0o600 }]);
    const server = { socket: "/run/lessor/agents.sock", socketMode: 0o660, tcp: { host: "127.0.0.1", port: 7391 } };
    assert.deepEqual(listenerSpecs(server, home), [
      { kind: "uds", path: "/run/lessor/agents.sock", mode: 0o660 },
      { kind: "tcp", host: "127.0.0.1", port: 7391 },
    ]);
  });

  test("each kind opens and hands over streams with their peer; TCP reports the port it bound; vsock without its addon is a config error", async () => {
    const got: { kind: string; peer: PeerInfo }[] = [];
    const onConnection = (stream: Duplex, peer: PeerInfo): void => {
      got.push({ kind: peer.transport, peer });
      stream.destroy();
    };
    const path = join(tempDir("lessor-sock-"), "l.sock");
    const uds = await openListener({ kind: "uds", path, mode: 0o600 }, { onConnection });
    after(() => uds.close());
    const tcp = await openListener({ kind: "tcp", host: "127.0.0.1", port: 0 }, { onConnection });
    after(() => tcp.close());
    assert.deepEqual(uds.bound, { kind: "uds", path, mode: 0o600 });
    assert.ok(tcp.bound.kind === "tcp" && tcp.bound.host === "127.0.0.1" && tcp.bound.port > 0, JSON.stringify(tcp.bound));
    for (const to of [() => connect(path), () => connect({ host: "127.0.0.1", port: tcp.bound.kind === "tcp" ? tcp.bound.port : 0 })]) {
      const sock = to();
      sock.on("error", () => {});
      await once(sock, "close");
    }
    assert.deepEqual(got.map((g) => g.kind).sort(), ["tcp", "uds"]);
    const t = got.find((g) => g.kind === "tcp")!.peer;
    assert.equal(t.localPort, tcp.bound.kind === "tcp" ? tcp.bound.port : -1);
    assert.equal(await codeOf(openListener({ kind: "vsock", port: 7391 }, { onConnection })), "config_invalid");
    await assert.rejects(openListener({ kind: "vsock", port: 7391 }, { onConnection }), /vsock_port = 7391 needs the AF_VSOCK addon/);
  });
});
