/** The SO_PEERCRED addon: loads here, reports the real peer (this process or a child of another uid), falls back. */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, closeSync, openSync, writeFileSync } from "node:fs";
import { createServer, connect, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { loadPeerCred, type PeerCred } from "../src/native/peercred.js";
import { tempDir } from "./helpers.js";

/** Listens on `path` and resolves with the first accepted socket. */
function serveOnce(path: string): Promise<{ server: Server; accepted: Promise<Socket> }> {
  return new Promise((resolve, reject) => {
    let onSocket!: (s: Socket) => void;
    const accepted = new Promise<Socket>((r) => (onSocket = r));
    const server = createServer((s) => {
      s.on("error", () => {});
      onSocket(s);
    });
    server.once("error", reject);
    server.listen(path, () => resolve({ server, accepted }));
  });
}

test("the addon is built and loads on this machine", { skip: process.platform !== "linux" }, () => {
  const pc = loadPeerCred();
  assert.equal(pc.available, true, pc.available ? "" : pc.reason);
});

test("a connection from this process reports this process's uid, gid and pid", { skip: process.platform !== "linux" }, async () => {
  const pc = loadPeerCred();
  assert.ok(pc.available);
  const path = join(tempDir(), "s.sock");
  const { server, accepted } = await serveOnce(path);
  const client = connect(path);
  try {
    const cred = pc.get(await accepted);
    assert.deepEqual(cred, { uid: process.getuid!(), gid: process.getgid!(), pid: process.pid });
  } finally {
    client.destroy();
    server.close();
  }
});

test("a connection from a child running as uid/gid 4242 reports 4242 and the child's pid", {
  skip: process.platform !== "linux" || process.getuid?.() !== 0 ? "needs root on Linux to spawn as another uid" : false,
}, async () => {
  const pc = loadPeerCred();
  assert.ok(pc.available);
  const dir = tempDir();
  chmodSync(dir, 0o755); // this test only: the child (uid 4242) must reach the socket
  const path = join(dir, "s.sock");
  const { server, accepted } = await serveOnce(path);
  chmodSync(path, 0o666);
  const child = spawn(process.execPath, ["-e", "const s=require('net').connect(process.argv[1]);s.on('error',()=>process.exit(2));s.resume();s.on('end',()=>process.exit(0))", path], {
    uid: 4242,
    gid: 4242,
    cwd: dir,
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  try {
    const socket = await Promise.race([accepted, exited.then((c) => Promise.reject(new Error(`child exited ${c}: ${stderr}`)))]);
    const cred: PeerCred | null = pc.get(socket);
    assert.deepEqual(cred, { uid: 4242, gid: 4242, pid: child.pid });
    socket.end();
    assert.equal(await exited, 0);
  } finally {
    child.kill();
    server.close();
  }
});

test("get() returns null for a socket with no file descriptor and throws on a descriptor that is not a socket", { skip: process.platform !== "linux" }, async () => {
  const pc = loadPeerCred();
  assert.ok(pc.available);
  const path = join(tempDir(), "s.sock");
  const { server, accepted } = await serveOnce(path);
  const client = connect(path);
  const socket = await accepted;
  socket.destroy();
  client.destroy();
  server.close();
  assert.equal(pc.get(socket), null, "a destroyed socket has no handle");

  const file = join(tempDir(), "plain");
  writeFileSync(file, "x");
  const fd = openSync(file, "r");
  try {
    const fake = { _handle: { fd } } as unknown as Socket;
    assert.throws(() => pc.get(fake), /SO_PEERCRED.*(non-socket|not a socket)/i);
  } finally {
    closeSync(fd);
  }
});

test("a missing addon gives a reason fit for the start-up log line, naming the build script", () => {
  const pc = loadPeerCred({ addonPath: join(tempDir(), "nope", "peercred.node") });
  assert.equal(pc.available, false);
  if (pc.available) return;
  if (process.platform === "linux") {
    assert.match(pc.reason, /was not built/);
    assert.match(pc.reason, /build it with: node \S+scripts\/build-addon\.mjs/);
  }
  assert.match(pc.reason, /Unix-socket peers cannot be identified by uid/);
  assert.doesNotMatch(pc.reason, /treated as the socket's owner/, "a missing addon no longer means 'everyone is the owner'");
});

test("an addon file that is not a loadable module falls back instead of throwing", { skip: process.platform !== "linux" }, () => {
  const bad = join(tempDir(), "peercred.node");
  writeFileSync(bad, "not an ELF object");
  const pc = loadPeerCred({ addonPath: bad });
  assert.equal(pc.available, false);
  if (pc.available) return;
  assert.match(pc.reason, /could not be loaded/);
  assert.match(pc.reason, /cannot be identified by uid/);
});
