/** The Unix-socket listener: owner-only mode, stale/live/foreign files at the path, long paths, misbehaving clients. */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { lstatSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { loadPeerCred, type PeerCredLoader } from "../src/native/peercred.js";
import { listenUnix, type UdsPeer } from "../src/server/transports/uds.js";
import { isVaultError } from "../src/base/errors.js";
import { tempDir } from "./helpers.js";

const close = (s: Server): Promise<void> => new Promise((r) => s.close(() => r()));

/** Connects, and resolves once connected. */
function dial(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    s.once("connect", () => resolve(s));
    s.once("error", reject);
  });
}

/** A listener that records each connection's peer; `next()` resolves with the next one. */
async function recordingListener(path: string, extra: { mode?: number; peercred?: PeerCredLoader } = {}) {
  const waiting: ((v: { socket: Socket; peer: UdsPeer }) => void)[] = [];
  const server = await listenUnix(path, {
    ...extra,
    onConnection: (socket, peer) => waiting.shift()?.({ socket, peer }),
  });
  const next = () => new Promise<{ socket: Socket; peer: UdsPeer }>((r) => waiting.push(r));
  return { server, next };
}

test("the socket is 0600 by default, the umask is restored, and each peer comes with its credentials", async () => {
  const path = join(tempDir(), "lessor.sock");
  const umaskBefore = process.umask();
  const pc = loadPeerCred();
  const { server, next } = await recordingListener(path, { peercred: pc });
  try {
    assert.equal(process.umask(), umaskBefore);
    const st = statSync(path);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600);
    const got = next();
    const c = await dial(path);
    const { peer } = await got;
    if (pc.available) assert.deepEqual(peer, { transport: "uds", uid: process.getuid!(), gid: process.getgid!(), pid: process.pid });
    else assert.deepEqual(peer, { transport: "uds" });
    c.destroy();
  } finally {
    await close(server);
  }
});

test("an explicit mode is applied; without the addon peers carry no uid", async () => {
  const path = join(tempDir(), "lessor.sock");
  const { server, next } = await recordingListener(path, { mode: 0o660, peercred: loadPeerCred({ addonPath: "/nonexistent.node" }) });
  try {
    assert.equal(statSync(path).mode & 0o777, 0o660);
    const got = next();
    const c = await dial(path);
    assert.deepEqual((await got).peer, { transport: "uds" });
    c.destroy();
  } finally {
    await close(server);
  }
});

test("a stale socket left by a SIGKILLed process is replaced", async () => {
  const path = join(tempDir(), "lessor.sock");
  const child = spawn(process.execPath, ["-e", "require('net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))", path], { stdio: "ignore" });
  const signal = await new Promise((r) => child.on("exit", (_c, s) => r(s)));
  assert.equal(signal, "SIGKILL");
  assert.ok(lstatSync(path).isSocket(), "the dead process left its socket file behind");
  await assert.rejects(dial(path), /ECONNREFUSED/);

  const { server, next } = await recordingListener(path);
  try {
    const got = next();
    const c = await dial(path);
    await got;
    c.destroy();
  } finally {
    await close(server);
  }
});

test("a live socket is refused and keeps working", async () => {
  const path = join(tempDir(), "lessor.sock");
  const other = createServer((s) => s.on("error", () => {}).end("hello"));
  await new Promise<void>((r) => other.listen(path, () => r()));
  try {
    await assert.rejects(
      listenUnix(path, { onConnection: () => {} }),
      (e: unknown) => isVaultError(e, "unavailable") && e.message.includes(`another lessor daemon is listening on ${path}`),
    );
    const c = await dial(path);
    const data = await new Promise<string>((r) => {
      let s = "";
      c.on("data", (d) => (s += d)).on("end", () => r(s));
    });
    assert.equal(data, "hello");
  } finally {
    await close(other);
  }
});

test("a regular file at the path is refused and left intact", async () => {
  const path = join(tempDir(), "lessor.sock");
  writeFileSync(path, "precious");
  await assert.rejects(
    listenUnix(path, { onConnection: () => {} }),
    (e: unknown) => isVaultError(e, "unavailable") && /is not a socket/.test(e.message),
  );
  assert.equal(readFileSync(path, "utf8"), "precious");
});

test("a path over the sun_path limit gets a clear config error", async () => {
  const dir = tempDir();
  const path = join(dir, "x".repeat(Math.max(1, 120 - dir.length)) + ".sock");
  await assert.rejects(
    listenUnix(path, { onConnection: () => {} }),
    (e: unknown) => isVaultError(e, "config_invalid") && e.message.includes(path) && /shorter/.test(e.message),
  );
});

test("clients that hang up mid-write, a throwing handler and an unreadable peer never crash the listener", async () => {
  const path = join(tempDir(), "lessor.sock");
  const errors: Error[] = [];
  let mode: "flood" | "throw" | "echo" = "flood";
  let sawSocketError!: (hadError: boolean) => void;
  const socketClosed = new Promise<boolean>((r) => (sawSocketError = r));
  let floodStarted!: () => void;
  const flooding = new Promise<void>((r) => (floodStarted = r));
  const server = await listenUnix(path, {
    onError: (e) => errors.push(e),
    onConnection: (socket) => {
      if (mode === "throw") throw new Error("handler bug");
      if (mode === "echo") {
        socket.pipe(socket);
        return;
      }
      // Stop reading (so the hang-up is seen as a failed write, not a clean EOF) and queue more than the
      // socket buffers hold; when the client goes, the pending write fails (EPIPE) with no handler of ours.
      socket.pause();
      socket.write(Buffer.alloc(8 * 1024 * 1024));
      socket.on("close", (hadError) => sawSocketError(hadError));
      floodStarted();
    },
  });
  try {
    const c1 = await dial(path);
    await flooding;
    c1.destroy();
    assert.equal(await socketClosed, true, "the server-side socket saw an error and survived it");

    mode = "throw";
    const c2 = await dial(path);
    await new Promise((r) => c2.on("close", r));
    assert.ok(errors.some((e) => e.message === "handler bug"), "the throw went to onError and the socket was closed");

    mode = "echo";
    const c3 = await dial(path);
    c3.write("still here");
    const echoed = await new Promise<string>((r) => c3.once("data", (d) => r(String(d))));
    assert.equal(echoed, "still here");
    c3.destroy();
  } finally {
    await close(server);
  }

  // A peer whose credentials cannot be read is closed, not served (fail closed).
  const path2 = join(tempDir(), "lessor2.sock");
  let served = false;
  const failing: PeerCredLoader = { available: true, get: () => { throw new Error("ENOTCONN"); } };
  const errors2: Error[] = [];
  const server2 = await listenUnix(path2, { peercred: failing, onError: (e) => errors2.push(e), onConnection: () => (served = true) });
  try {
    const c = await dial(path2);
    await new Promise((r) => c.on("close", r));
    assert.equal(served, false);
    assert.equal(errors2[0]?.message, "ENOTCONN");
  } finally {
    await close(server2);
  }
});
