/**
 * Clients authenticate the daemon: a process of another user squatting the socket path, or anything
 * listening on the TCP port (including one that relays to the real daemon), never receives a hello,
 * a token, a secret value or a request; the client refuses with daemon_unverified. Squatters are real
 * processes running as user nobody (setpriv); the daemon is the real server, vault and authenticator.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { inspect } from "node:util";
import { checkSocketFiles, checkUnixDaemon } from "../src/client/daemon-check.js";
import { LessorClient } from "../src/client/index.js";
import { VaultError } from "../src/base/errors.js";
import { splitToken } from "../src/crypto/token-proof.js";
import { authRig, RawConn } from "./auth-rig.js";
import { grant, shareGroup, tempDir } from "./helpers.js";

const SQUATTER = fileURLToPath(new URL("./fixtures/squatter.mjs", import.meta.url));
const NOBODY = 65534;
const CANARY = "CANARY-daemon-auth-7f3a91c2-do-not-leak";
const canSetpriv = process.getuid?.() === 0 && spawnSync("setpriv", ["--version"]).status === 0;
const needsRoot = canSetpriv ? false : "needs root and setpriv to run a squatter as another user";

interface Squatter {
  proc: ChildProcess;
  /** The port (tcp) or path (unix) it listens on. */
  where: string;
  /** Every byte it was sent so far. */
  received(): Buffer;
  stop(): Promise<void>;
}

const squatters: Squatter[] = [];
after(async () => {
  for (const s of squatters) await s.stop();
});

/** Starts the squatter fixture as user nobody. */
async function squat(args: string[]): Promise<Squatter> {
  const proc = spawn("setpriv", [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", process.execPath, SQUATTER, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { PATH: process.env.PATH },
  });
  const chunks: Buffer[] = [];
  let stderr = "";
  proc.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((r) => proc.once("exit", () => r()));
  const where = await new Promise<string>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).on("line", (line) => {
      if (line.startsWith("listening ")) resolve(line.slice(10));
      else if (line.startsWith("data ")) chunks.push(Buffer.from(line.slice(5), "base64"));
    });
    proc.once("exit", (code) => reject(new Error(`the squatter exited (${code}): ${stderr}`)));
  });
  const s: Squatter = {
    proc,
    where,
    received: () => Buffer.concat(chunks),
    stop: async () => {
      proc.kill("SIGTERM");
      await exited;
    },
  };
  squatters.push(s);
  return s;
}

/** A directory user nobody may create a socket in (as a squatter would find one). */
function nobodyDir(): string {
  const d = tempDir("lessor-squat-");
  chmodSync(d, 0o755);
  const inner = join(d, "run");
  mkdirSync(inner);
  chownSync(inner, NOBODY, NOBODY);
  return inner;
}

async function rejection(p: Promise<unknown>): Promise<VaultError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof VaultError, `expected a VaultError, got ${inspect(e)}`);
    return e;
  }
  assert.fail("expected a rejection");
}

/** Waits until the squatter has had `ms` to receive anything still on its way. */
const settle = (ms = 150) => new Promise((r) => setTimeout(r, ms));

describe("Unix socket: the daemon's uid is checked before anything is written", { skip: needsRoot }, () => {
  test("a squatter on the socket path running as another uid receives not one byte: hello, token and pipelined value all stay home", async () => {
    const path = join(nobodyDir(), "lessor.sock");
    const s = await squat(["unix", path, "welcome"]);
    const plain = await rejection(LessorClient.connect({ socketPath: path }));
    assert.equal(plain.code, "daemon_unverified");
    assert.match(plain.message, new RegExp(`the process listening on .*lessor\\.sock runs as uid ${NOBODY} \\(pid \\d+\\), not as root, the user the lessor daemon should run as; nothing was sent`));

    // pipeline: connect resolves on the socket; the pipelined call (a secret value) is held, then failed.
    const piped = await LessorClient.connect({ socketPath: path }, { pipeline: true });
    const store = await rejection(piped.storeSecret({ name: "x", value: CANARY }));
    assert.equal(store.code, "daemon_unverified");
    await piped.close();

    const token = `lsr_0123456789abcdef_${"A".repeat(43)}`;
    assert.equal((await rejection(LessorClient.connect({ socketPath: path }, { token }))).code, "daemon_unverified");
    // Naming the squatter's uid as the daemon's is the way to accept it (here: to show the check is what refused).
    const accepted = await LessorClient.connect({ socketPath: path }, { expectedUid: NOBODY });
    await accepted.close();
    const before = s.received().length;
    assert.ok(before > 0, "with expectedUid set to its uid the client does talk to it");

    await settle();
    const got = s.received();
    assert.ok(!got.includes(CANARY) && !got.includes(splitToken(token)!.secret), "no value and no token");
    // Everything it ever received came from the one client told to accept it.
    assert.equal(got.length, before, `the squatter received ${got.length - before} bytes from clients that refused it`);
  });

  test("the CLI refuses a squatted socket with exit 3 and says who is listening", async () => {
    const { cliHome, runCli } = await import("./cli-harness.js");
    const path = join(nobodyDir(), "lessor.sock");
    const s = await squat(["unix", path, "welcome"]);
    const home = await cliHome();
    writeFileSync(join(home, "lessor.toml"), `[server]\nsocket = "${path}"\n`, { mode: 0o600 });
    for (const args of [["status"], ["lease", "github-token", "--agent", "claude", "--domain", "api.github.com"]]) {
      const r = await runCli(args, { home });
      assert.equal(r.code, 3, `${args[0]}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`runs as uid ${NOBODY}`), args[0]);
      assert.match(r.stderr, /nothing was sent/);
    }
    await settle();
    assert.equal(s.received().length, 0);
  });

  test("without the peer-credential addon the fallback checks the socket file and its directory", async () => {
    const squatPath = join(nobodyDir(), "lessor.sock");
    await squat(["unix", squatPath, "welcome"]);
    const noAddon = { available: false as const, reason: "the addon is missing (test)" };
    const sock = await open(squatPath);
    const e = checkUnixDaemon(sock, squatPath, 0, undefined, noAddon);
    assert.equal(e?.code, "daemon_unverified");
    assert.match(e!.message, /without peer credentials \(the addon is missing \(test\)\).*the socket file is owned by uid 65534; nothing was sent/);
    // The addon, when present, names the squatter exactly.
    assert.match(checkUnixDaemon(sock, squatPath, 0)?.message ?? "", /runs as uid 65534/);
    sock.destroy();

    // A socket of our own in a private directory passes both ways; the same socket in a directory others may write to does not.
    const own = tempDir("lessor-own-");
    const ownPath = join(own, "d.sock");
    const srv = await listen(ownPath);
    const c = await open(ownPath);
    assert.equal(checkUnixDaemon(c, ownPath, process.getuid!(), undefined, noAddon), null);
    assert.equal(checkUnixDaemon(c, ownPath, process.getuid!()), null);
    chmodSync(own, 0o777);
    assert.match(checkSocketFiles(ownPath, process.getuid!(), "test")?.message ?? "", /is writable by others \(mode 777\)/);
    if (shareGroup(own)) {
      chmodSync(own, 0o770);
      assert.match(checkSocketFiles(ownPath, process.getuid!(), "test")?.message ?? "", /is writable by its group/);
    }
    chmodSync(own, 0o700);
    chownSync(own, NOBODY, NOBODY);
    assert.match(checkSocketFiles(ownPath, process.getuid!(), "test")?.message ?? "", /its directory .* is owned by uid 65534/);
    chownSync(own, 0, 0);
    assert.match(checkSocketFiles(join(own, "absent.sock"), 0, "test")?.message ?? "", /could not be examined \(ENOENT\)/);
    c.destroy();
    srv.close();
  });
});

describe("TCP: the daemon proves it holds the token before the token is sent", () => {
  test("a squatter on the port never receives the token or a pipelined value, whatever it answers", { skip: needsRoot }, async () => {
    const r = await authRig();
    const t = await r.vault.admin().createToken({ name: "claude", role: "agent", agent: "claude" });
    const secret = splitToken(t.token)!.secret;
    const cases: [string, RegExp][] = [
      ["welcome", /answered without proving that it holds the token, so the token was not sent/],
      ["challenge", /could not prove that it holds this token, so the token was not sent/],
      ["greet", /the token was not sent|nothing was sent/],
    ];
    for (const [mode, re] of cases) {
      const s = await squat(["tcp", "0", mode]);
      const ep = { host: "127.0.0.1", port: Number(s.where) };
      const e = await rejection(LessorClient.connect(ep, { token: t.token }));
      assert.equal(e.code, "daemon_unverified", `${mode}: ${e.message}`);
      assert.match(e.message, re, mode);
      const piped = await LessorClient.connect(ep, { token: t.token, pipeline: true });
      assert.equal((await rejection(piped.storeSecret({ name: "x", value: CANARY }))).code, "daemon_unverified", mode);
      await piped.close();
      await settle();
      const got = s.received();
      assert.ok(!got.includes(secret), `${mode}: the squatter received the token's secret`);
      assert.ok(!got.includes(CANARY), `${mode}: the squatter received the value`);
      if (mode !== "greet") assert.ok(got.includes(t.id), `${mode}: it did get the hello, which names only the token's public id`);
    }
  });

  test("a squatter relaying to the real daemon gets a proof bound to the daemon's own endpoint: the client refuses and the token never passes", { skip: needsRoot }, async () => {
    const r = await authRig();
    const t = await r.vault.admin().createToken({ name: "claude", role: "agent", agent: "claude" });
    const s = await squat(["tcp", "0", "relay", `${r.tcp.host}:${r.tcp.port}`]);
    const e = await rejection(LessorClient.connect({ host: "127.0.0.1", port: Number(s.where) }, { token: t.token }));
    assert.equal(e.code, "daemon_unverified");
    assert.match(e.message, /could not prove that it holds this token/);
    await settle(300);
    assert.ok(s.received().includes(t.id), "the relay carried the hello");
    assert.ok(!s.received().includes(splitToken(t.token)!.secret), "but never the token");
    // The daemon saw a handshake end without the token, and audited it.
    const fails = await r.vault.admin().auditQuery({ types: ["auth_failed"] });
    assert.ok(fails.some((f) => /without showing the token/.test(f.reason ?? "") && f.detail?.includes(t.id)), JSON.stringify(fails));
    // The same token straight to the daemon works.
    const c = await LessorClient.connect(r.tcp, { token: t.token });
    assert.equal(c.identity.agent, "claude");
    await c.close();
  });

  test("the daemon answers an unknown token id just like a known one, refuses a token other than the one named, and audits both", async () => {
    const r = await authRig();
    const t = await r.vault.admin().createToken({ name: "claude", role: "agent", agent: "claude" });
    const other = await r.vault.admin().createToken({ name: "other", role: "admin" });
    const shape = async (tokenId: string) => {
      const c = await RawConn.open(r.tcp);
      c.send({ protocol: "lessor", version: 1, tokenId, nonce: Buffer.alloc(32, 7).toString("base64url") });
      const ch = await c.next();
      c.close();
      await c.closed();
      return { keys: Object.keys(ch).sort(), inner: Object.keys(ch.challenge).sort(), sizes: [ch.challenge.nonce.length, ch.challenge.proof.length] };
    };
    const known = await shape(t.id);
    const unknown = await shape(t.id === "0000000000000000" ? "0000000000000001" : "0000000000000000");
    assert.deepEqual(unknown, known);
    assert.deepEqual(known, { keys: ["challenge", "ok", "protocol", "version"], inner: ["nonce", "proof"], sizes: [43, 43] });

    // Naming one token and showing another is refused before the shown token is even checked.
    const c = await RawConn.open(r.tcp);
    c.send({ protocol: "lessor", version: 1, tokenId: t.id, nonce: Buffer.alloc(32, 1).toString("base64url") });
    await c.next();
    c.send({ token: other.token });
    const refusal = await c.next();
    assert.equal(refusal.error.code, "unauthenticated");
    assert.match(refusal.error.message, /not the one named in the hello/);
    await c.closed();
    // A token handshake hello must be whole.
    const half = await RawConn.open(r.tcp);
    half.send({ protocol: "lessor", version: 1, tokenId: t.id });
    assert.match((await half.next()).error.message, /has both tokenId and nonce/);

    await settle(100);
    const reasons = (await r.vault.admin().auditQuery({ types: ["auth_failed"] })).map((e) => e.reason);
    assert.equal(reasons.filter((x) => /during the token handshake without showing the token/.test(x ?? "")).length, 2, "both probes audited alike");
    assert.ok(reasons.includes("the token shown is not the one the hello named"));
    // The one-step hello of older clients (the token itself) is still accepted.
    const legacy = await RawConn.open(r.tcp);
    legacy.send({ protocol: "lessor", version: 1, token: t.token });
    assert.equal((await legacy.next()).ok, true);
    legacy.close();
  });
});

describe("a real daemon: normal clients connect and work", () => {
  test("over the Unix socket (uid checked) and over TCP and the Unix socket with a token (daemon's proof checked), pipelined or not", async () => {
    const r = await authRig({ policy: grant("gh", ["claude"], ["github-token"], ["api.github.com"]) });
    const admin = await LessorClient.connect({ socketPath: r.socketPath });
    assert.equal(admin.identity.role, "admin");
    await admin.storeSecret({ name: "github-token", value: CANARY });
    assert.equal((await admin.revealSecret("github-token")).value.unsafeText(), CANARY);
    const t = await admin.createToken({ name: "claude", role: "agent", agent: "claude" });
    for (const [ep, pipeline] of [[r.tcp, false], [r.tcp, true], [{ socketPath: r.socketPath }, false]] as const) {
      const c = await LessorClient.connect(ep, { token: t.token, pipeline });
      const got = await c.leaseAndAccess({ secret: "github-token", domains: ["api.github.com"] });
      assert.equal(got.value.unsafeText(), CANARY);
      got.value.wipe();
      assert.equal(c.identity.agent, "claude");
      await c.close();
    }
    await admin.close();
  });

  test("the CLI against a real daemon passes the check in both its bundles, by peer credentials (the fast path's CommonJS bundle loads the addon too)", { skip: process.platform !== "linux" }, async () => {
    const { cliHome, runCli } = await import("./cli-harness.js");
    const r = await authRig({ policy: grant("gh", ["claude"], ["github-token"], ["api.github.com"]) });
    await r.vault.admin().storeSecret({ name: "github-token", value: "cli-value" });
    // Reached through a symlink in a directory anyone may write to: the file fallback would refuse
    // this path (not a socket; a writable directory), so only the peer-credential check can pass it.
    const open = tempDir("lessor-open-");
    chmodSync(open, 0o777);
    const link = join(open, "lessor.sock");
    symlinkSync(r.socketPath, link);
    const home = await cliHome();
    writeFileSync(join(home, "lessor.toml"), `[server]\nsocket = "${link}"\n`, { mode: 0o600 });
    const status = await runCli(["status", "--json"], { home }); // the full CLI (ES modules)
    assert.equal(status.code, 0, status.stderr);
    assert.equal((JSON.parse(status.stdout) as { identity?: { transport?: string } }).identity?.transport, "uds");
    const lease = await runCli(["lease", "github-token", "--agent", "claude", "--domain", "api.github.com"], { home }); // the fast path (CommonJS)
    assert.equal(lease.code, 0, lease.stderr);
    assert.match(lease.stdout, /cli-value/);
  });
});

function open(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path, () => resolve(s));
    s.once("error", reject);
  });
}

function listen(path: string): Promise<Server> {
  return new Promise((resolve) => {
    const srv = createServer((s) => s.on("error", () => {}));
    srv.listen(path, () => resolve(srv));
  });
}
