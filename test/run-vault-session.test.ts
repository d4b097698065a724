/**
 * `lessor run --vault-session` (issue 14, src/cli/run/vault-session.ts): in a real bubblewrap sandbox,
 * the built CLI inside talks to the vault through /run/lessor/vault.sock as agent A and nothing more,
 * with the vault opened in-process by the run (embedded) and through a real daemon (an agent token
 * made for the run, relayed with the hello replaced, revoked at exit). A raw client inside that sends
 * a hello with a real admin token, with a token handshake of its own, or with no token, is agent A all
 * the same; a first frame that is not a hello, or is too big, gets nothing. Without the flag the child
 * has no vault socket and no LESSOR_SOCKET.
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { appendFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { BIN, runCli, seedHome } from "./cli-harness.js";
import { startServe, type RunningDaemon } from "./daemon-harness.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { parseRunConfig } from "../src/config/run-config.js";
import { cutFirstFrame, isChildHello, MAX_CHILD_HELLO_BYTES } from "../src/cli/run/session-hello.js";

const NODE = process.execPath;
const REPO = resolve(fileURLToPath(new URL("..", import.meta.url)));
const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"]).status === 0;

const root = mkdtempSync(join(tmpdir(), "lessor-rvs-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const PROJECT = join(HOME, "project");
/** lessor run's own temporary directory (TMPDIR): where its private directory, and the socket, live. */
const RUN_TMP = join(root, "run-tmp");
const EMBEDDED_HOME = join(root, "embedded");
const DAEMON_HOME = join(root, "daemon");
const AGENT = "runner-a";
const GRANTED = `granted-${randomBytes(12).toString("hex")}`;
const OTHER = `other-${randomBytes(12).toString("hex")}`;
const B_SECRET = `b-${randomBytes(12).toString("hex")}`;
const sha256 = (s: string): string => createHash("sha256").update(s).digest("hex");

const POLICY = `
[[rule]]
name = "a"
effect = "allow"
agents = ["${AGENT}"]
secrets = ["granted"]
any_domain = true

[[rule]]
name = "b"
effect = "allow"
agents = ["agent-b"]
secrets = ["b-secret"]
any_domain = true
`;

/**
 * Runs inside the sandbox: the built CLI (shown read-only by [run] read), then raw clients on the
 * session socket. Prints one JSON line.
 */
const PROBE = String.raw`
import { spawnSync } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { connect } from "node:net";
const [bin, agent, adminTokenFile] = process.argv.slice(2);
const sha = (s) => createHash("sha256").update(s).digest("hex");
const L = (...args) => {
  const r = spawnSync(process.execPath, ["--", bin, ...args], { encoding: "utf8", timeout: 20000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};
const frame = (o) => { const j = Buffer.from(typeof o === "string" ? o : JSON.stringify(o)); const h = Buffer.alloc(4); h.writeUInt32BE(j.length); return Buffer.concat([h, j]); };
/**
 * Sends raw bytes, then collects the frames the other end sends until it closes, 'want' frames came
 * (or 5 s). 'onChallenge' answers a token challenge (the embedded server makes one).
 */
const raw = (bytes, want = 2, onChallenge) => new Promise((done) => {
  const s = connect({ path: "/run/lessor/vault.sock" });
  let buf = Buffer.alloc(0); const frames = []; let closed = false;
  const finish = () => { if (closed) return; closed = true; s.destroy(); done({ frames, bytes: buf.length }); };
  s.on("data", (c) => {
    buf = Buffer.concat([buf, c]);
    for (;;) { if (buf.length < 4) break; const n = buf.readUInt32BE(0); if (buf.length < 4 + n) break; const f = JSON.parse(buf.subarray(4, 4 + n).toString()); frames.push(f); buf = buf.subarray(4 + n); if (frames.length === 1 && onChallenge) { if (f.challenge) want += 1; s.write(onChallenge(f)); } }
    if (frames.length >= want) finish();
  });
  s.on("error", finish); s.on("close", finish);
  s.on("connect", () => s.write(bytes));
  setTimeout(finish, 5000);
});
const whoamiReq = () => frame({ id: randomUUID(), method: "whoami" });
const out = {
  env: process.env.LESSOR_SOCKET ?? null,
  socket: existsSync("/run/lessor/vault.sock"),
  runDir: existsSync("/run/lessor") ? readdirSync("/run/lessor").sort() : null,
  tokenInEnv: Object.values(process.env).some((v) => /lsr_/.test(v ?? "")),
};
if (out.env) {
  out.whoami = L("whoami", "--json");
  const lease = L("lease", "granted");
  out.lease = { code: lease.code, sha: sha(lease.stdout), stderr: lease.stderr };
  out.notGranted = L("lease", "other");
  out.otherAgent = L("lease", "b-secret", "--agent", "agent-b");
  out.killswitch = L("killswitch", "--yes", "--json");
  out.reveal = L("secret", "get", "granted", "--reveal");
  out.tokenCreate = L("token", "create", "mine", "--role", "admin");
  const admin = readFileSync(adminTokenFile, "utf8").trim();
  const [, id] = /^lsr_([0-9a-f]{16})_/.exec(admin) ?? [];
  out.rawForged = await raw(Buffer.concat([frame({ protocol: "lessor", version: 1, token: admin }), whoamiReq()]));
  // A token handshake of its own, showing the admin token if challenged, then whoami.
  out.rawHandshake = await raw(frame({ protocol: "lessor", version: 1, tokenId: id, nonce: randomBytes(32).toString("base64url") }), 2, (f) => (f.challenge ? Buffer.concat([frame({ token: admin }), whoamiReq()]) : whoamiReq()));
  out.rawNone = await raw(Buffer.concat([frame({ protocol: "lessor", version: 1 }), whoamiReq()]));
  out.rawGarbage = await raw(Buffer.concat([frame("not json"), whoamiReq()]));
  out.rawNotHello = await raw(Buffer.concat([frame({ protocol: "lessor", version: 1, token: admin, extra: 1 }), whoamiReq()]));
  const big = Buffer.alloc(4); big.writeUInt32BE(64 * 1024 + 1);
  out.rawTooBig = await raw(Buffer.concat([big, Buffer.alloc(1024, 0x20)]));
}
console.log(JSON.stringify(out));
`;

interface Cmd {
  code: number | null;
  stdout: string;
  stderr: string;
}
interface Raw {
  frames: { ok?: boolean; identity?: { role: string; agent?: string }; challenge?: unknown; result?: { identity: { role: string; agent?: string } }; error?: { code: string } }[];
  bytes: number;
}
interface ProbeOut {
  env: string | null;
  socket: boolean;
  runDir: string[] | null;
  tokenInEnv: boolean;
  whoami?: Cmd;
  lease?: { code: number | null; sha: string; stderr: string };
  notGranted?: Cmd;
  otherAgent?: Cmd;
  killswitch?: Cmd;
  reveal?: Cmd;
  tokenCreate?: Cmd;
  rawForged?: Raw;
  rawHandshake?: Raw;
  rawNone?: Raw;
  rawGarbage?: Raw;
  rawNotHello?: Raw;
  rawTooBig?: Raw;
}

/** `lessor run --agent A [extra] -- node probe.mjs …` as the owner; the probe's JSON line and lessor's exit. */
function runProbe(home: string, extra: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stderr: string; out: ProbeOut | null; stdout: string }> {
  const args = ["--", BIN, "run", "--agent", AGENT, ...extra, "--", NODE, join(PROJECT, "probe.mjs"), BIN, AGENT, join(PROJECT, "admin-token")];
  return new Promise((done, reject) => {
    const child = spawn(NODE, args, {
      cwd: PROJECT,
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME, LESSOR_HOME: home, TMPDIR: RUN_TMP, NO_COLOR: "1", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      let out: ProbeOut | null = null;
      try {
        out = JSON.parse(stdout.trim().split("\n").pop() ?? "") as ProbeOut;
      } catch {
        // asserted by the caller
      }
      done({ code, stderr, out, stdout });
    });
  });
}

/** A real admin token of `home`'s vault, for the forged-hello attack (made with the vault itself). */
async function adminToken(home: string): Promise<string> {
  const vault = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    return (await vault.admin().createToken({ name: "owner-admin", role: "admin" })).token;
  } finally {
    await vault.close();
  }
}

/** Every attack and check made inside, for one mode. */
function assertAgentOnly(out: ProbeOut | null, mode: "embedded" | "daemon"): void {
  assert.ok(out, "the probe printed its JSON line");
  assert.equal(out.env, "/run/lessor/vault.sock");
  assert.equal(out.socket, true);
  assert.equal(out.tokenInEnv, false, "no token in the child's environment");
  const who = JSON.parse(out.whoami!.stdout) as { role: string; agent: string; id: string; mode: string; token: { name: string } | null };
  assert.equal(out.whoami!.code, 0, out.whoami!.stderr);
  assert.equal(who.role, "agent");
  assert.equal(who.agent, AGENT);
  assert.equal(who.mode, "daemon", "inside, the CLI talks to the session socket as to a daemon");
  if (mode === "embedded") {
    assert.match(who.id, new RegExp(`^run:[0-9a-f]{16}:${AGENT}$`));
    assert.equal(who.token, null);
  } else assert.equal(who.token!.name, "session:run", "the stamp of the run's process stays the daemon's");
  assert.equal(out.lease!.code, 0, out.lease!.stderr);
  assert.equal(out.lease!.sha, sha256(GRANTED), "the granted secret's value is printed");
  assert.notEqual(out.notGranted!.code, 0);
  assert.match(out.notGranted!.stderr, /denied|not allowed|no rule/i);
  assert.ok(!out.notGranted!.stdout.includes(OTHER));
  assert.notEqual(out.otherAgent!.code, 0, "another agent's lease is refused");
  assert.ok(!out.otherAgent!.stdout.includes(B_SECRET));
  for (const k of ["killswitch", "reveal", "tokenCreate"] as const) {
    assert.notEqual(out[k]!.code, 0, `${k}: ${out[k]!.stdout}`);
    assert.match(out[k]!.stderr, /admin|not allowed|denied|role/i, `${k}: ${out[k]!.stderr}`);
  }
  assert.ok(!out.reveal!.stdout.includes(GRANTED));
  assert.ok(!/lsr_/.test(out.tokenCreate!.stdout));
  // Raw clients: whatever the hello says, the welcome and whoami say agent A.
  for (const k of ["rawForged", "rawNone"] as const) {
    const r: Raw = out[k]!;
    assert.equal(r.frames.length, 2, `${k}: ${JSON.stringify(r)}`);
    assert.equal(r.frames[0]!.ok, true);
    assert.deepEqual([r.frames[0]!.identity!.role, r.frames[0]!.identity!.agent], ["agent", AGENT], k);
    assert.deepEqual([r.frames[1]!.result!.identity.role, r.frames[1]!.result!.identity.agent], ["agent", AGENT], k);
  }
  // A token handshake of its own, with the admin token: through the relay it gets no challenge, only
  // the welcome of agent A (then its whoami answered as A); the embedded server
  // challenges it, takes the admin token, and still says agent A.
  const h = out.rawHandshake!.frames.filter((f) => f.challenge === undefined);
  assert.equal(out.rawHandshake!.frames[0]!.challenge !== undefined, mode === "embedded", JSON.stringify(out.rawHandshake));
  assert.equal(h.length, 2, JSON.stringify(out.rawHandshake));
  assert.deepEqual([h[0]!.identity?.role, h[0]!.identity?.agent], ["agent", AGENT]);
  assert.deepEqual([h[1]!.result?.identity.role, h[1]!.result?.identity.agent], ["agent", AGENT]);
  if (mode === "daemon") {
    // The relay refuses (closes, nothing sent back) a first frame that is not a hello, or over 64 KiB.
    for (const k of ["rawGarbage", "rawNotHello", "rawTooBig"] as const) assert.deepEqual(out[k], { frames: [], bytes: 0 }, k);
  } else {
    // The embedded server refuses them as the daemon would: a refusal, never a welcome.
    for (const k of ["rawGarbage", "rawNotHello", "rawTooBig"] as const) assert.ok(out[k]!.frames.every((f) => f.ok === false && f.identity === undefined), `${k}: ${JSON.stringify(out[k])}`);
  }
}

test("the relay's first frame: cut at its length, 64 KiB at most, and only a v1 hello passes", () => {
  const enc = (o: unknown): Buffer => {
    const j = Buffer.from(JSON.stringify(o));
    const h = Buffer.alloc(4);
    h.writeUInt32BE(j.length);
    return Buffer.concat([h, j]);
  };
  const hello = enc({ protocol: "lessor", version: 1, token: "lsr_forged" });
  assert.deepEqual(cutFirstFrame(hello.subarray(0, 3)), { kind: "more" });
  assert.deepEqual(cutFirstFrame(hello.subarray(0, hello.length - 1)), { kind: "more" });
  const f = cutFirstFrame(Buffer.concat([hello, Buffer.from("rest")]));
  assert.equal(f.kind, "frame");
  if (f.kind === "frame") {
    assert.equal(isChildHello(f.body), true);
    assert.equal(f.rest.toString(), "rest");
  }
  const big = Buffer.alloc(4);
  big.writeUInt32BE(MAX_CHILD_HELLO_BYTES + 1);
  assert.deepEqual(cutFirstFrame(big), { kind: "too-large" });
  for (const bad of ["not json", "[]", '{"protocol":"lessor"}', '{"protocol":"lessor","version":2}', '{"protocol":"other","version":1}', '{"protocol":"lessor","version":1,"x":1}'])
    assert.equal(isChildHello(Buffer.from(bad)), false, bad);
});

test("[run] vault_session: off by default, true or false only", () => {
  assert.equal(parseRunConfig("lessor.toml", undefined).vaultSession, false);
  assert.equal(parseRunConfig("lessor.toml", { vault_session: true }).vaultSession, true);
  assert.throws(() => parseRunConfig("lessor.toml", { vault_session: "yes" }), /\[run\] vault_session: expected true or false, got "yes"/);
});

describe("lessor run --vault-session in a real sandbox", { skip: HAVE_BWRAP ? false : "bwrap is not installed or user namespaces are off (apt-get install bubblewrap): the sandbox tests are skipped" }, () => {
  let daemon: RunningDaemon;

  before(async () => {
    mkdirSync(PROJECT, { recursive: true });
    mkdirSync(RUN_TMP, { recursive: true });
    writeFileSync(join(PROJECT, "probe.mjs"), PROBE);
    for (const home of [EMBEDDED_HOME, DAEMON_HOME]) {
      await initHome({ home, env: { LESSOR_HOME: home } });
      await seedHome(home, POLICY, [
        { name: "granted", value: GRANTED },
        { name: "other", value: OTHER },
        { name: "b-secret", value: B_SECRET },
      ]);
      // The built CLI is shown read-only, so that the agent can run it.
      appendFileSync(join(home, "lessor.toml"), `\n[run]\nread = [${JSON.stringify(REPO)}]\n${home === DAEMON_HOME ? "vault_session = true\n" : ""}`);
    }
    daemon = await startServe(DAEMON_HOME);
  });
  after(async () => {
    await daemon?.stop();
  });

  test("embedded (no daemon): inside, lessor is agent A and only A; raw hellos cannot be anyone else; the socket is gone after", async () => {
    writeFileSync(join(PROJECT, "admin-token"), await adminToken(EMBEDDED_HOME), { mode: 0o600 });
    const r = await runProbe(EMBEDDED_HOME, ["--vault-session"]);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assertAgentOnly(r.out, "embedded");
    assert.deepEqual(readdirSync(RUN_TMP), [], "the run's private directory and its socket are removed");
  });

  test("daemon ([run] vault_session = true): an agent token for the run, relayed with the hello replaced, revoked at exit", async () => {
    writeFileSync(join(PROJECT, "admin-token"), await tokenViaDaemon(), { mode: 0o600 });
    // LESSOR_SOCKET outside names the daemon (as an owner may set it); the run relays to it, and the child's names the session.
    const r = await runProbe(DAEMON_HOME, ["--ttl", "10m"], { LESSOR_SOCKET: daemon.socket });
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assertAgentOnly(r.out, "daemon");
    assert.deepEqual(r.out!.runDir, ["vault.sock"], "only the session's socket (the proxy accepts on the bridge's listener): no token file in the sandbox's view");
    assert.deepEqual(readdirSync(RUN_TMP), []);
    const list = await runCli(["token", "list", "--json"], { home: DAEMON_HOME, env: { HOME } });
    assert.equal(list.code, 0, list.stderr);
    const runTokens = (JSON.parse(list.stdout) as { name: string; role: string; agent: string | null; state: string; createdAt: string; expiresAt: string | null }[]).filter((t) => t.name.startsWith("session:"));
    assert.equal(runTokens.length, 1);
    const t = runTokens[0]!;
    assert.deepEqual([t.role, t.agent, t.state], ["agent", AGENT, "revoked"]);
    const life = Date.parse(t.expiresAt!) - Date.parse(t.createdAt);
    assert.ok(life > 9 * 60_000 && life <= 10 * 60_000 + 1000, `the token lives as long as --ttl: ${life} ms`);
  });

  test("--network none: the session's own private directory is shown at /run/lessor (no proxy, no bridge), and removed after", async () => {
    const r = await runProbe(EMBEDDED_HOME, ["--vault-session", "--network", "none"]);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assertAgentOnly(r.out, "embedded");
    assert.deepEqual(r.out!.runDir, ["vault.sock"]);
    assert.deepEqual(readdirSync(RUN_TMP), []);
  });

  test("without the flag (nor [run] vault_session): no /run/lessor/vault.sock and no LESSOR_SOCKET in the child, even when the owner's is set", async () => {
    // The owner's LESSOR_SOCKET names the daemon; the embedded home's lessor.toml leaves the session off.
    const plain = await runProbe(EMBEDDED_HOME, [], { LESSOR_SOCKET: daemon.socket });
    assert.equal(plain.code, 0, plain.stderr + plain.stdout);
    assert.deepEqual({ env: plain.out!.env, socket: plain.out!.socket }, { env: null, socket: false });
    assert.ok(!(plain.out!.runDir ?? []).includes("vault.sock"));
  });

  test("--vault-session with --no-sandbox is refused before anything runs", async () => {
    const r = await runProbe(EMBEDDED_HOME, ["--vault-session", "--no-sandbox"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /--vault-session gives the sandboxed command an agent session/);
    assert.equal(r.out, null, "the command did not run");
  });

  /** An admin token made through the daemon (its vault is the daemon's while it runs). */
  async function tokenViaDaemon(): Promise<string> {
    const r = await runCli(["token", "create", "owner-admin", "--role", "admin"], { home: DAEMON_HOME, env: { HOME } });
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim();
  }
});
