/**
 * The bridge from lessor run's sandbox to its proxy (src/sandbox/bridge.ts). The native one: the
 * helper (native/peercred/netbridge.c) listens on 127.0.0.1 in the sandbox, hands the listening socket
 * to lessor over a socket pair (native/peercred/handoff.c checks what arrives), and becomes the
 * command. The Node one, used when the helper is not built: a Node program relays to the proxy's socket.
 *
 * The hand-over is attacked with what a replaced helper could send instead (python3's send_fds: a
 * connected socket, a listener on every address, a Unix listener, a file, two descriptors, none), and
 * lessor run is checked from inside the sandbox for each bridge. No packet leaves loopback: the
 * requests name a host no lease covers, which the proxy refuses before any lookup.
 */
import { spawn, spawnSync } from "node:child_process";
import { closeSync, cpSync, fstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { loadHandoff, type Handoff } from "../src/native/handoff.js";
import { startRunProxy } from "../src/cli/run/proxy.js";
import { DEFAULT_PROXY_CONFIG } from "../src/config/proxy-config.js";
import { runProcess } from "./cli-harness.js";
import { HAVE_BWRAP, makeOwner as newOwner, runAgent } from "./run-harness.js";

const NODE = process.execPath;
const REPO = fileURLToPath(new URL("..", import.meta.url));
const loaded = loadHandoff();
const handoff = "helper" in loaded ? loaded : null;
const HAVE_PYTHON = spawnSync("python3", ["-c", "import socket; socket.send_fds"]).status === 0;
const root = mkdtempSync(join(tmpdir(), "lessor-bridge-"));
after(() => rmSync(root, { recursive: true, force: true }));

/** This process's open descriptors. */
const openFds = (): string[] => readdirSync("/proc/self/fd").sort();

/** A free port on 127.0.0.1 (bound, then released). */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Starts `file args` with `theirs` as its descriptor 6 (then closed here); its output and exit. */
function withFd6(h: Handoff, file: string, args: string[]): { ours: number; done: Promise<{ code: number | null; out: string; err: string }>; pid: number } {
  const [ours, theirs] = h.pair();
  const child = spawn(file, args, { stdio: ["ignore", "pipe", "pipe", "ignore", "ignore", "ignore", theirs] });
  closeSync(theirs);
  let out = "";
  let err = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  const done = new Promise<{ code: number | null; out: string; err: string }>((r) => child.on("close", (code) => r({ code, out, err })));
  return { ours, done, pid: child.pid! };
}

/**
 * Starts the helper on a port found free (`args` given the port) and receives its listener. Between
 * finding the port and the helper binding it another process may take it: then the helper exits 126
 * ("Address already in use") and this tries another port, up to three times.
 */
async function helperListening(h: Handoff, args: (port: number) => string[]): Promise<{ c: ReturnType<typeof withFd6>; fd: number; port: number }> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const c = withFd6(h, h.helper, args(port));
    try {
      const fd = await h.receive(c.ours, 10_000);
      closeSync(c.ours);
      return { c, fd, port };
    } catch (e) {
      closeSync(c.ours);
      // EPIPE: the helper exited before handing anything over (any other failure is the test's).
      if ((e as NodeJS.ErrnoException).code !== "EPIPE") throw e;
      const r = await c.done;
      if (attempt < 3 && r.code === 126 && /Address already in use/.test(r.err)) continue;
      throw e;
    }
  }
}

/** The code a receive rejects with, or "resolved". */
async function codeOf(p: Promise<number>): Promise<string> {
  try {
    closeSync(await p);
    return "resolved";
  } catch (e) {
    return String((e as NodeJS.ErrnoException).code);
  }
}

describe("the native bridge's hand-over", { skip: handoff === null ? `the native bridge is not built here (${"reason" in loaded ? loaded.reason : ""})` : false }, () => {
  const h = handoff!;

  test("the helper listens on 127.0.0.1:PORT, hands the listener over and becomes the command: lessor accepts on it; the command holds neither socket", async () => {
    const before = openFds();
    const { c, fd, port } = await helperListening(h, (port) => [String(port), "/bin/sh", "-c", 'echo "pid=$$"; ls /proc/self/fd | tr "\\n" " "; echo']);
    const server = net.createServer((s) => s.end("from lessor"));
    await new Promise<void>((r) => server.listen({ fd }, r));
    try {
      const got = await new Promise<string>((resolve, reject) => {
        const s = net.connect(port, "127.0.0.1");
        let text = "";
        s.on("data", (d) => (text += d.toString()));
        s.on("end", () => resolve(text));
        s.on("error", reject);
      });
      assert.equal(got, "from lessor", "a connection to the helper's port is accepted by this process");
      const r = await c.done;
      assert.equal(r.code, 0, r.err);
      assert.match(r.out, new RegExp(`^pid=${c.pid}$`, "m"), "the command is the helper's process (exec, not a child): no relay process is left");
      // The same descriptors as the command started directly (what this process lets children inherit):
      // neither the socket pair's end (6) nor the listener.
      const direct = spawnSync("/bin/sh", ["-c", "ls /proc/self/fd | tr '\\n' ' '"], { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" }).stdout;
      assert.deepEqual(r.out.split("\n")[1]!.trim().split(" ").sort(), direct.trim().split(" ").sort(), r.out);
      assert.ok(!r.out.split("\n")[1]!.split(" ").includes("6"), r.out);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
    assert.deepEqual(openFds(), before, "no descriptor of the hand-over is left open here");
  });

  test("the run's proxy accepts on a handed-over listener (adopt), and one handed over after it closed, or a second one, is closed, not served", async () => {
    const listenerAt = async (): Promise<{ fd: number; port: number }> => {
      const { c, fd, port } = await helperListening(h, (port) => [String(port), "/bin/true"]);
      assert.equal((await c.done).code, 0);
      return { fd, port };
    };
    const ask = (port: number): Promise<string> =>
      new Promise((resolve, reject) => {
        const s = net.connect(port, "127.0.0.1", () => s.write("GET http://refused.invalid/ HTTP/1.1\r\nHost: refused.invalid\r\nConnection: close\r\n\r\n"));
        let text = "";
        s.on("data", (d) => (text += d.toString()));
        s.on("end", () => resolve(text.split("\r\n")[0]!));
        s.on("error", reject);
      });
    // Closed: fstat fails (a listing of /proc/self/fd would itself take the freed number).
    const isClosed = (fd: number): boolean => {
      try {
        fstatSync(fd);
        return false;
      } catch (e) {
        return (e as NodeJS.ErrnoException).code === "EBADF";
      }
    };
    const before = openFds();
    const proxy = await startRunProxy({ config: structuredClone(DEFAULT_PROXY_CONFIG), api: null, agent: "claude", credentials: [], warn: () => {}, tmp: root, listen: { adopt: true } });
    try {
      const first = await listenerAt();
      proxy.adopt(first.fd);
      assert.match(await ask(first.port), /^HTTP\/1\.1 403 /, "the proxy answers on the adopted listener");
      const second = await listenerAt();
      proxy.adopt(second.fd);
      assert.ok(isClosed(second.fd), "a second listener is closed, not served");
    } finally {
      await proxy.close();
    }
    const late = await listenerAt();
    proxy.adopt(late.fd);
    assert.ok(isClosed(late.fd), "a listener handed over after the proxy closed is closed");
    assert.deepEqual(openFds(), before, "nothing of the proxy or the listeners is left open");
  });

  test("anything but one listening TCP socket on a loopback address is refused (EPROTO) and closed: a connected socket, a listener on every address, a Unix listener, a file, two descriptors", { skip: HAVE_PYTHON ? false : "python3 with socket.send_fds is not installed" }, async () => {
    // What a replaced helper could send. Binding 0.0.0.0 and connecting to a loopback listener send nothing off this machine.
    const senders: Record<string, string> = {
      connected: "a = socket.socket(); a.bind(('127.0.0.1', 0)); a.listen(); s = socket.create_connection(a.getsockname()); send([s.fileno()])",
      "any-address listener": "s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(); send([s.fileno()])",
      "unix listener": "s = socket.socket(socket.AF_UNIX); s.bind('\\0lessor-bridge-test-%d' % os.getpid()); s.listen(); send([s.fileno()])",
      file: "send([os.open('/etc/hostname', os.O_RDONLY)])",
      "two listeners": "a = socket.socket(); a.bind(('127.0.0.1', 0)); a.listen(); b = socket.socket(); b.bind(('127.0.0.1', 0)); b.listen(); send([a.fileno(), b.fileno()])",
      "a byte, no descriptor": "os.write(6, b'L')",
      "udp": "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 0)); send([s.fileno()])",
    };
    const prelude = "import os, socket, time\nch = socket.socket(fileno=6)\ndef send(fds):\n    socket.send_fds(ch, [b'L'], fds)\n";
    const before = openFds();
    for (const [what, body] of Object.entries(senders)) {
      const c = withFd6(h, "python3", ["-c", `${prelude}${body}\ntime.sleep(0.2)\n`]);
      const code = await codeOf(h.receive(c.ours, 10_000));
      closeSync(c.ours);
      const r = await c.done;
      assert.equal(r.code, 0, `${what}: the sender failed: ${r.err}`);
      assert.equal(code, "EPROTO", `${what}: ${code}`);
    }
    assert.deepEqual(openFds(), before, "every descriptor received was closed");
  });

  test("the other end closed with nothing sent: EPIPE at once; nothing arriving: ETIMEDOUT after the wait", async () => {
    const [a, b] = h.pair();
    closeSync(b);
    const t0 = Date.now();
    assert.equal(await codeOf(h.receive(a, 30_000)), "EPIPE");
    assert.ok(Date.now() - t0 < 5_000, "the end is seen without waiting out the time");
    closeSync(a);
    const [c, d] = h.pair();
    assert.equal(await codeOf(h.receive(c, 100)), "ETIMEDOUT");
    closeSync(c);
    closeSync(d);
    assert.throws(() => h.receive(-1, 10), /fd must be an integer/);
  });

  test("the helper cannot listen (its port taken): it says why and exits 126, and the wait ends with EPIPE; a command that does not exist: 127, after the hand-over", async () => {
    const taken = net.createServer();
    await new Promise<void>((r) => taken.listen(0, "127.0.0.1", r));
    const port = (taken.address() as net.AddressInfo).port;
    try {
      const c = withFd6(h, h.helper, [String(port), "/bin/true"]);
      assert.equal(await codeOf(h.receive(c.ours, 10_000)), "EPIPE");
      closeSync(c.ours);
      const r = await c.done;
      assert.equal(r.code, 126);
      assert.match(r.err, /^lessor: the sandbox's proxy bridge failed: bind 127\.0\.0\.1: Address already in use$/m);
    } finally {
      await new Promise<void>((r) => taken.close(() => r()));
    }
    const { c, fd } = await helperListening(h, (port) => [String(port), "/nonexistent/agent"]);
    closeSync(fd);
    const r = await c.done;
    assert.equal(r.code, 127);
    assert.match(r.err, /^lessor: cannot run "\/nonexistent\/agent": No such file or directory$/m);
    for (const bad of [["0", "/bin/true"], ["70000", "/bin/true"], ["3128x", "/bin/true"], ["3128"]]) {
      const b = withFd6(h, h.helper, bad);
      assert.equal(await codeOf(h.receive(b.ours, 10_000)), "EPIPE", bad.join(" "));
      closeSync(b.ours);
      assert.equal((await b.done).code, 126, bad.join(" "));
    }
  });
});

describe("lessor run's bridge, seen from inside the sandbox", { skip: !HAVE_BWRAP ? "bwrap is not installed or user namespaces are off" : false }, () => {
  const MASTER_KEY = randomBytes(32).toString("hex");
  const makeOwner = (name: string) => newOwner({ root, name, masterKey: MASTER_KEY });
  // Through the proxy, a host no lease covers: the proxy's own refusal proves the way leads to it.
  const ASK_PROXY = `curl -sS -m 10 -x http://127.0.0.1:3128 http://refused.invalid/ -o /dev/null -w 'proxy=%{http_code}\\n'`;
  // The processes inside, by the real path of their program.
  const EXES = `for p in /proc/[0-9]*; do readlink "$p/exe"; done 2>/dev/null | sort -u | tr '\\n' ' '; echo`;

  test("native: the proxy answers on 127.0.0.1:3128, no Node runs inside, no process inside holds the listener, and the agent cannot bind the port itself", { skip: handoff === null ? "the native bridge is not built here" : false }, async () => {
    const o = await makeOwner("native");
    const script = [
      ASK_PROXY,
      `echo "exes=$(${EXES})"`,
      // The listener (127.0.0.1:3128 = 0100007F:0C38, state 0A) by inode, and who holds it.
      `ino=$(awk '$2 == "0100007F:0C38" && $4 == "0A" { print $10 }' /proc/net/tcp)`,
      `echo "listener=$ino"`,
      `held=; for l in /proc/[0-9]*/fd/*; do [ "$(readlink "$l" 2>/dev/null)" = "socket:[$ino]" ] && held="$held $l"; done; echo "held=$held"`,
      `ls /run/lessor | tr '\\n' ' ' | sed 's/^/runlessor=/'; echo`,
      `${NODE} -e 'require("net").createServer().on("error", (e) => console.log("bind=" + e.code)).listen(3128, "127.0.0.1", () => console.log("bind=ok"))'`,
    ].join("; ");
    const r = await runAgent(o.project, o.env, "claude", [], script, 40_000);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^proxy=403$/m, r.stdout);
    const exes = /^exes=(.*)$/m.exec(r.stdout)![1]!;
    assert.ok(!exes.includes(NODE) && !/node/.test(exes), `no Node process in the sandbox before the agent's own: ${exes}`);
    assert.match(r.stdout, /^listener=\d+$/m, "the listener is in the sandbox's network namespace");
    assert.match(r.stdout, /^held=$/m, "no process in the sandbox holds it");
    assert.doesNotMatch(r.stdout, /proxy\.sock/, "no proxy socket is shown");
    assert.match(r.stdout, /^bind=EADDRINUSE$/m);
  });

  test("the Node bridge (lessor's addon built without its helper): the proxy answers on the same port through proxy.sock, which stays 0600 in a 0700 directory under umask 000", async () => {
    const o = await makeOwner("node-bridge");
    // The owner's install, outside the project, with the addon but not its helper (an older build).
    const dir = join(o.base, "install");
    mkdirSync(join(dir, "native", "peercred", "build", "Release"), { recursive: true });
    cpSync(join(REPO, "dist"), join(dir, "dist"), { recursive: true });
    cpSync(join(REPO, "package.json"), join(dir, "package.json"));
    cpSync(join(REPO, "native", "peercred", "build", "Release", "peercred.node"), join(dir, "native", "peercred", "build", "Release", "peercred.node"));
    symlinkSync(join(REPO, "node_modules"), join(dir, "node_modules"));
    const script = [ASK_PROXY, `echo "exes=$(${EXES})"`, `stat -c 'mode %n %a' /run/lessor /run/lessor/proxy.sock`].join("; ");
    const bin = join(dir, "dist", "bin", "lessor.cjs");
    const r = await runProcess("/bin/sh", ["-c", 'umask 000; exec "$@"', "sh", NODE, "--", bin, "run", "--agent", "claude", "--", "/bin/sh", "-c", script], { env: o.env, cwd: o.project, timeoutMs: 40_000 });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^proxy=403$/m, r.stdout);
    assert.match(/^exes=(.*)$/m.exec(r.stdout)![1]!, /node/, "the Node bridge runs in the sandbox");
    assert.match(r.stdout, /^mode \/run\/lessor 700$/m);
    assert.match(r.stdout, /^mode \/run\/lessor\/proxy\.sock 600$/m);
  });
});
