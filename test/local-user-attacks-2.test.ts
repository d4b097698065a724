/**
 * Another local user against what lessor makes and listens on while it runs, beyond the daemon's
 * socket (test/uds-attacks.test.ts, test/peer-trust.test.ts cover that): `lessor run`'s private
 * directory (the proxy's socket, the session CA files), its processes and listeners; `lessor proxy`'s
 * loopback port and `--env-out` files in a shared sticky directory with links planted beforehand;
 * `lessor inject -o` and `lessor secret export -o` there; `lessor mcp --http`'s bearer token.
 *
 * The owner is a non-root user made for this file (useradd; removed at the end), so that permission
 * bits decide what the attacker gets: root would pass through them. The attacker is user nobody
 * (setpriv --reuid=65534). Real parts: the built CLI (dist/bin/lessor.cjs), real bwrap, real sockets, a
 * local HTTPS upstream on 127.0.0.1 whose name resolves through `[proxy] hosts`. Nothing leaves
 * loopback. The owner's MCP client runs in a mount namespace of its own whose /etc/hosts is Debian's
 * stock one (`127.0.0.1 localhost` then `::1 localhost …`); the machine's own file is left alone.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import * as net from "node:net";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { LocalCa } from "../src/proxy/ca.js";
import { BIN } from "./cli-harness.js";
import { grant } from "./helpers.js";

const NOBODY = 65534;
const OWNER_NAME = `lsrlu2${randomBytes(3).toString("hex")}`;
const CANARY = "ghp_" + randomBytes(18).toString("hex");
const REPO = new URL("..", import.meta.url).pathname;

const isRoot = process.getuid?.() === 0;
const tools = ["setpriv", "useradd", "userdel", "unshare", "bwrap"].every((t) => spawnSync("sh", ["-c", `command -v ${t}`]).status === 0);
const SKIP = !isRoot ? "needs root to make an owner user and act as nobody" : !tools ? "needs setpriv, useradd, unshare and bwrap" : false;

let U = -1;
let G = -1;
let ROOT = "";
let HOME = "";
let LESSOR_HOME = "";
let PROJECT = "";
/** A shared directory with /tmp's semantics: root's, mode 1777 (sticky, everyone writes). */
let SHARED = "";
/** The attacker's own directory (nobody's, 0755), where its links lead. */
let LOOT = "";

let upstream: https.Server;
let upPort = 0;
const upstreamAuth: string[] = [];
const transcript: string[] = [];
const children = new Set<ChildProcess>();

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function ownerEnv(extra: Record<string, string> = {}): string[] {
  const env: Record<string, string> = { PATH: "/usr/bin:/bin", HOME, LESSOR_HOME, NO_COLOR: "1", ...extra };
  return Object.entries(env).map(([k, v]) => `${k}=${v}`);
}

/** `argv` run as uid:gid with exactly `env` (env -i), from `cwd`. */
function spawnAs(uid: number, gid: number, argv: string[], env: string[], cwd: string): ChildProcess {
  const c = spawn("setpriv", [`--reuid=${uid}`, `--regid=${gid}`, "--clear-groups", "env", "-i", ...env, ...argv], { cwd, stdio: ["pipe", "pipe", "pipe"] });
  children.add(c);
  c.on("close", () => children.delete(c));
  return c;
}

function collect(c: ChildProcess, input?: string, timeoutMs = 60_000): Promise<Ran> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  c.stdout!.on("data", (d: Buffer) => out.push(d));
  c.stderr!.on("data", (d: Buffer) => err.push(d));
  c.stdin!.on("error", () => {});
  if (input !== undefined) c.stdin!.end(input);
  else c.stdin!.end();
  const timer = setTimeout(() => c.kill("SIGKILL"), timeoutMs);
  return new Promise((resolve) =>
    c.on("close", (code) => {
      clearTimeout(timer);
      const r = { code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") };
      transcript.push(r.stdout, r.stderr);
      resolve(r);
    }),
  );
}

/** `lessor ARGS` as the owner. */
function owner(args: string[], o: { input?: string; env?: Record<string, string>; cwd?: string } = {}): Promise<Ran> {
  return collect(spawnAs(U, G, [process.execPath, "--", BIN, ...args], ownerEnv(o.env), o.cwd ?? PROJECT), o.input);
}

/** `lessor ARGS` as the owner, left running; `stderr()` so far. */
function ownerBackground(args: string[], o: { env?: Record<string, string>; cwd?: string } = {}): { child: ChildProcess; stderr: () => string; stdout: () => string; done: Promise<Ran> } {
  const child = spawnAs(U, G, [process.execPath, "--", BIN, ...args], ownerEnv(o.env), o.cwd ?? PROJECT);
  let err = "";
  let out = "";
  child.stderr!.on("data", (d: Buffer) => (err += d.toString("utf8")));
  child.stdout!.on("data", (d: Buffer) => (out += d.toString("utf8")));
  const done = collect(child);
  return { child, stderr: () => err, stdout: () => out, done };
}

/** A Node script run as nobody (from the attacker's directory); its stdout is one JSON document. */
async function asNobody(script: string, args: string[] = [], timeoutMs = 30_000): Promise<Record<string, any>> {
  const file = join(LOOT, `attack-${randomBytes(4).toString("hex")}.mjs`);
  writeFileSync(file, script, { mode: 0o644 });
  const r = await collect(spawnAs(NOBODY, NOBODY, [process.execPath, file, ...args], ["PATH=/usr/bin:/bin", "HOME=/nonexistent"], LOOT), undefined, timeoutMs);
  try {
    return JSON.parse(r.stdout) as Record<string, any>;
  } catch {
    throw new Error(`the attacker's script printed no JSON (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
  }
}

async function waitFor(what: string, f: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Writes a file of the owner's (0600). */
function ownerFile(path: string, text: string): void {
  writeFileSync(path, text, { mode: 0o600 });
  chownSync(path, U, G);
  chmodSync(path, 0o600);
}

/** A port free on both 127.0.0.1 and ::1. */
async function freePortBoth(): Promise<number> {
  for (;;) {
    const s = net.createServer();
    await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
    const port = (s.address() as AddressInfo).port;
    const s6 = net.createServer();
    const ok = await new Promise<boolean>((r) => {
      s6.once("error", () => r(false));
      s6.listen(port, "::1", () => r(true));
    });
    await new Promise<void>((r) => s.close(() => r()));
    if (ok) await new Promise<void>((r) => s6.close(() => r()));
    if (ok) return port;
  }
}

const POLICY = grant("github", ["claude"], ["github-token"], ["api.test.example"]);

describe("another local user against lessor's run-time files and listeners (non-root owner)", { skip: SKIP }, () => {
  before(async () => {
    const add = spawnSync("useradd", ["-r", "-M", "-U", "-s", "/usr/sbin/nologin", OWNER_NAME], { encoding: "utf8" });
    assert.equal(add.status, 0, add.stderr);
    U = Number(spawnSync("id", ["-u", OWNER_NAME], { encoding: "utf8" }).stdout.trim());
    G = Number(spawnSync("id", ["-g", OWNER_NAME], { encoding: "utf8" }).stdout.trim());
    process.on("exit", () => spawnSync("userdel", [OWNER_NAME]));

    ROOT = mkdtempSync("/tmp/lessor-lu2-");
    chmodSync(ROOT, 0o755);
    process.on("exit", () => rmSync(ROOT, { recursive: true, force: true }));
    HOME = join(ROOT, "home");
    LESSOR_HOME = join(HOME, ".lessor");
    PROJECT = join(ROOT, "project");
    SHARED = join(ROOT, "shared");
    LOOT = join(ROOT, "loot");
    for (const d of [HOME, PROJECT]) {
      mkdirSync(d);
      chownSync(d, U, G);
      chmodSync(d, 0o700);
    }
    mkdirSync(SHARED);
    chmodSync(SHARED, 0o1777);
    mkdirSync(LOOT);
    chownSync(LOOT, NOBODY, NOBODY);
    chmodSync(LOOT, 0o755);

    // The upstream: a local HTTPS server for api.test.example, recording the Authorization it gets.
    const ca = LocalCa.create({ permitted: ["api.test.example"] });
    writeFileSync(join(ROOT, "upstream-ca.pem"), ca.certPem, { mode: 0o644 });
    upstream = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, (req, res) => {
      upstreamAuth.push(String(req.headers.authorization ?? ""));
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(`you sent: ${String(req.headers.authorization ?? "")}\n`);
    });
    await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
    upPort = (upstream.address() as AddressInfo).port;

    const init = await owner(["init"]);
    assert.equal(init.code, 0, init.stderr);
    const base = readFileSync(join(LESSOR_HOME, "lessor.toml"), "utf8");
    ownerFile(
      join(LESSOR_HOME, "lessor.toml"),
      `${base}\n[proxy]\nports = [${upPort}]\nallow = ["127.0.0.1"]\nhosts = { "api.test.example" = "127.0.0.1" }\nupstream_ca = "${join(ROOT, "upstream-ca.pem")}"\n`,
    );
    ownerFile(join(LESSOR_HOME, "policy.toml"), POLICY);
    const set = await owner(["secret", "set", "github-token", "--kind", "pat"], { input: CANARY });
    assert.equal(set.code, 0, set.stderr);
  });

  after(async () => {
    for (const c of children) c.kill("SIGKILL");
    upstream?.closeAllConnections();
    await new Promise<void>((r) => upstream?.close(() => r()));
    spawnSync("userdel", [OWNER_NAME]);
    for (const t of transcript) assert.ok(!t.includes(CANARY), "the canary appears in some output");
  });

  test("lessor run: while the agent runs, another user cannot enter the run's directory, reach the proxy's socket, read the CA files or the processes' environments, and finds no TCP listener of the owner's", async () => {
    const run = ownerBackground(["run", "--agent", "claude", "--", "/bin/sh", "-c", "echo up > started; while [ ! -e stop ]; do sleep 0.1; done"], {
      env: { GITHUB_TOKEN: "$S:github-token" },
    });
    try {
      await waitFor("the sandboxed command to start", () => existsSync(join(PROJECT, "started")) || run.child.exitCode !== null);
      assert.equal(run.child.exitCode, null, run.stderr());
      const dirs = readdirSync("/tmp")
        .filter((n) => n.startsWith("lessor-run-"))
        .map((n) => join("/tmp", n))
        .filter((p) => {
          try {
            return lstatSync(p).uid === U;
          } catch {
            return false;
          }
        });
      assert.equal(dirs.length, 1, `the run's private directory: ${dirs.join(", ")}`);
      const dir = dirs[0]!;
      assert.equal(statSync(dir).mode & 0o777, 0o700);
      // The native bridge: the proxy accepts on a socket in the sandbox's network namespace; no socket file.
      assert.ok(!existsSync(join(dir, "proxy.sock")) && existsSync(join(dir, "ca-bundle.pem")));
      const pids = readdirSync("/proc")
        .filter((n) => /^\d+$/.test(n))
        .filter((n) => {
          try {
            return statSync(join("/proc", n)).uid === U;
          } catch {
            return false;
          }
        });
      assert.ok(pids.length >= 3, "lessor, bwrap and the command run as the owner");

      const got = await asNobody(
        `
import { readFileSync, readdirSync } from "node:fs";
import * as net from "node:net";
const [dir, uid, pidsJson] = process.argv.slice(2);
const out = { readdir: null, ca: null, bundle: null, socket: null, socketsSeen: [], procs: {}, listeners: [] };
const code = (f) => { try { f(); return "ok"; } catch (e) { return e.code; } };
out.readdir = code(() => readdirSync(dir));
out.ca = code(() => readFileSync(dir + "/ca.pem"));
out.bundle = code(() => readFileSync(dir + "/ca-bundle.pem"));
// The socket's path is public (/proc/net/unix); connecting to it is the attack.
out.socketsSeen = readFileSync("/proc/net/unix", "utf8").split("\\n").filter((l) => l.includes(dir)).map((l) => l.trim().split(/\\s+/).pop());
out.socket = await new Promise((r) => {
  const s = net.connect(dir + "/proxy.sock");
  s.on("connect", () => { s.write("CONNECT api.test.example:443 HTTP/1.1\\r\\nHost: api.test.example:443\\r\\n\\r\\n"); s.once("data", (d) => { r("answered: " + d.toString().split("\\r\\n")[0]); s.destroy(); }); setTimeout(() => r("connected"), 2000); });
  s.on("error", (e) => r(e.code));
});
for (const p of JSON.parse(pidsJson)) out.procs[p] = { environ: code(() => readFileSync("/proc/" + p + "/environ")), fd: code(() => readdirSync("/proc/" + p + "/fd")), mem: code(() => readFileSync("/proc/" + p + "/mem")) };
for (const f of ["/proc/net/tcp", "/proc/net/tcp6"]) for (const l of readFileSync(f, "utf8").split("\\n").slice(1)) {
  const c = l.trim().split(/\\s+/);
  if (c.length > 7 && c[3] === "0A" && c[7] === uid) out.listeners.push(f + " " + c[1]);
}
console.log(JSON.stringify(out));
`,
        [dir, String(U), JSON.stringify(pids)],
      );
      assert.deepEqual(got["socketsSeen"], [], "no socket of the run's in its directory");
      assert.equal(got["readdir"], "EACCES");
      assert.equal(got["ca"], "EACCES");
      assert.equal(got["bundle"], "EACCES");
      assert.ok(["EACCES", "ENOENT"].includes(String(got["socket"])), `nobody reached a proxy socket: ${got["socket"]}`);
      for (const [pid, p] of Object.entries(got["procs"] as Record<string, Record<string, string>>)) {
        // EACCES, or ENOENT for a short-lived process (the loop's sleep) gone meanwhile.
        for (const k of ["environ", "fd", "mem"]) assert.notEqual(p[k], "ok", `nobody read /proc/${pid}/${k}`);
        assert.ok(["EACCES", "ENOENT", "ESRCH"].includes(String(p["environ"])), `environ of ${pid}: ${p["environ"]}`);
      }
      assert.deepEqual(got["listeners"], [], "lessor run opens no TCP listener in the host's network namespace (the bridge is in the sandbox's)");
    } finally {
      writeFileSync(join(PROJECT, "stop"), "");
      const r = await run.done;
      rmSync(join(PROJECT, "stop"), { force: true });
      rmSync(join(PROJECT, "started"), { force: true });
      assert.equal(r.code, 0, r.stderr);
    }
  });

  test("lessor proxy --env-out in a shared sticky directory: links nobody planted at the env file and CA file names get nothing; unplanted, the env file is 0600 and nobody's requests at the port get 407", async () => {
    // Planted first: each name lessor writes, as a link to a file nobody can read (and lessor could write).
    const target = join(SHARED, "agent.env");
    const names = [target, `${target}.ca.pem`, `${target}.ca-bundle.pem`];
    const planted = await asNobody(
      `
import { symlinkSync, writeFileSync, chmodSync } from "node:fs";
const [loot, ...names] = process.argv.slice(2);
names.forEach((n, i) => { const f = loot + "/got-" + i; writeFileSync(f, ""); chmodSync(f, 0o666); symlinkSync(f, n); });
console.log(JSON.stringify({ ok: true }));
`,
      [LOOT, ...names],
    );
    assert.equal(planted["ok"], true);
    const first = ownerBackground(["proxy", "--agent", "claude", "--domain", "api.test.example", "--env-out", target], { env: { GITHUB_TOKEN: "$S:github-token" } });
    const r1 = await Promise.race([first.done, new Promise<null>((r) => setTimeout(() => r(null), 20_000))]);
    if (r1 === null) {
      first.child.kill("SIGTERM");
      await first.done;
    }
    // It cannot replace nobody's links in a sticky directory (EPERM), so it stops before it serves.
    assert.ok(r1 !== null && r1.code !== 0, `lessor proxy refused to write over nobody's links: ${first.stderr()}`);
    for (let i = 0; i < names.length; i++) {
      assert.equal(readFileSync(join(LOOT, `got-${i}`), "utf8"), "", `nothing was written through nobody's link ${names[i]}`);
      assert.ok(lstatSync(names[i]!).isSymbolicLink() || !existsSync(names[i]!));
    }
    // Whatever it did, no lease of it is left live.
    const leases = await owner(["leases", "--live", "--json"]);
    assert.equal(leases.code, 0, leases.stderr);
    assert.deepEqual(JSON.parse(leases.stdout), [], "no live lease is left");
    for (const n of names) rmSync(n, { force: true });

    // Unplanted: it serves.
    const p = ownerBackground(["proxy", "--agent", "claude", "--domain", "api.test.example", "--env-out", target], { env: { GITHUB_TOKEN: "$S:github-token" } });
    try {
      await waitFor("the proxy to serve", () => /Stop it with Ctrl-C/.test(p.stderr()) || p.child.exitCode !== null);
      assert.equal(p.child.exitCode, null, p.stderr());
      assert.equal(statSync(target).mode & 0o777, 0o600);
      assert.equal(statSync(target).uid, U);
      const env = readFileSync(target, "utf8");
      const proxyUrl = /^HTTPS_PROXY=(\S+)$/m.exec(env)![1]!;
      const port = Number(new URL(proxyUrl).port);
      const before = upstreamAuth.length;
      const got = await asNobody(
        `
import { readFileSync } from "node:fs";
import * as net from "node:net";
const [target, port, upPort] = process.argv.slice(2);
const code = (f) => { try { f(); return "ok"; } catch (e) { return e.code; } };
const ask = (head) => new Promise((r) => { const s = net.connect(Number(port), "127.0.0.1"); let b = ""; s.on("data", (d) => (b += d)); s.on("error", (e) => r(e.code)); s.on("close", () => r(b.split("\\r\\n")[0])); s.write(head); setTimeout(() => s.destroy(), 3000); });
console.log(JSON.stringify({
  env: code(() => readFileSync(target)),
  connect: await ask("CONNECT api.test.example:" + upPort + " HTTP/1.1\\r\\nHost: api.test.example:" + upPort + "\\r\\n\\r\\n"),
  plain: await ask("GET http://api.test.example:" + upPort + "/ HTTP/1.1\\r\\nHost: api.test.example:" + upPort + "\\r\\nConnection: close\\r\\n\\r\\n"),
  guessed: await ask("CONNECT api.test.example:" + upPort + " HTTP/1.1\\r\\nHost: api.test.example\\r\\nProxy-Authorization: Basic " + Buffer.from("lessor:").toString("base64") + "\\r\\n\\r\\n"),
}));
`,
        [target, String(port), String(upPort)],
      );
      assert.equal(got["env"], "EACCES", "nobody cannot read the env file (it holds the proxy's token)");
      for (const k of ["connect", "plain", "guessed"]) assert.match(String(got[k]), /^HTTP\/1\.1 407/, `${k}: ${got[k]}`);
      assert.equal(upstreamAuth.length, before, "nothing reached the upstream for nobody");
    } finally {
      p.child.kill("SIGTERM");
      const r = await p.done;
      assert.equal(r.code, 0, r.stderr);
    }
    for (const n of names) assert.equal(existsSync(n), false, `${n} is removed at the end`);
  });

  test("lessor inject -o and lessor secret export -o into a shared sticky directory: nobody's planted links get no value; under umask 000 the files are 0600 and nobody cannot read them", async () => {
    const tmpl = join(PROJECT, "config.tmpl");
    ownerFile(tmpl, "token: $S:github-token\n");
    const injOut = join(SHARED, "config.yml");
    const expOut = join(SHARED, "secrets.json");
    const planted = await asNobody(
      `
import { symlinkSync, writeFileSync, chmodSync } from "node:fs";
const [loot, ...names] = process.argv.slice(2);
names.forEach((n, i) => { const f = loot + "/export-" + i; writeFileSync(f, ""); chmodSync(f, 0o666); symlinkSync(f, n); });
console.log(JSON.stringify({ ok: true }));
`,
      [LOOT, injOut, expOut],
    );
    assert.equal(planted["ok"], true);
    const inj = await owner(["inject", "-i", tmpl, "-o", injOut, "--agent", "claude", "--domain", "api.test.example"]);
    const exp = await owner(["secret", "export", "-o", expOut]);
    for (const i of [0, 1]) assert.equal(readFileSync(join(LOOT, `export-${i}`), "utf8"), "", "no value through nobody's link");
    assert.ok(!readdirSync(SHARED).some((n) => n.includes(".tmp")), `no temporary file is left: ${readdirSync(SHARED).join(", ")}`);
    transcript.push(inj.stderr, exp.stderr);
    rmSync(injOut, { force: true });
    rmSync(expOut, { force: true });

    // Unplanted, under umask 000.
    const inj2 = await collect(
      spawnAs(U, G, ["/bin/sh", "-c", 'umask 000; exec "$0" -- "$@"', process.execPath, BIN, "inject", "-i", tmpl, "-o", injOut, "--agent", "claude", "--domain", "api.test.example"], ownerEnv(), PROJECT),
    );
    assert.equal(inj2.code, 0, inj2.stderr);
    const exp2 = await collect(spawnAs(U, G, ["/bin/sh", "-c", 'umask 000; exec "$0" -- "$@"', process.execPath, BIN, "secret", "export", "-o", expOut], ownerEnv(), PROJECT));
    assert.equal(exp2.code, 0, exp2.stderr);
    for (const f of [injOut, expOut]) {
      assert.equal(statSync(f).mode & 0o777, 0o600, f);
      assert.ok(readFileSync(f, "utf8").includes(CANARY), "the value is in the owner's file");
    }
    const got = await asNobody(
      `
import { readFileSync } from "node:fs";
const code = (f) => { try { return "read " + readFileSync(f, "utf8").length; } catch (e) { return e.code; } };
console.log(JSON.stringify(Object.fromEntries(process.argv.slice(2).map((f) => [f, code(f)]))));
`,
      [injOut, expOut],
    );
    assert.deepEqual(got, { [injOut]: "EACCES", [expOut]: "EACCES" });
    rmSync(injOut, { force: true });
    rmSync(expOut, { force: true });
  });

  test("another local user cannot take lessor mcp --http localhost:PORT's bearer token by listening on [::1]:PORT: lessor holds that port too, and the owner's client told localhost reaches lessor there", async () => {
    const port = await freePortBoth();
    const tokenFile = join(HOME, "mcp.token");
    const srv = ownerBackground(["mcp", "--agent", "claude", "--http", `localhost:${port}`, "--token-file", tokenFile]);
    let squatter: ChildProcess | null = null;
    const upstreamBefore = upstreamAuth.length;
    try {
      await waitFor("lessor mcp to serve", () => /the bearer token is in/.test(srv.stderr()) || srv.child.exitCode !== null);
      assert.equal(srv.child.exitCode, null, srv.stderr());

      // nobody sees the owner's listener on 127.0.0.1:PORT and takes [::1]:PORT, which lessor left free.
      const script = join(LOOT, "squat.mjs");
      writeFileSync(
        script,
        `
import * as http from "node:http";
import { Client } from "${REPO}node_modules/@modelcontextprotocol/sdk/dist/esm/client/index.js";
import { StreamableHTTPClientTransport } from "${REPO}node_modules/@modelcontextprotocol/sdk/dist/esm/client/streamableHttp.js";
const [port, upPort] = process.argv.slice(2);
const out = { stolen: null, used: null };
const s = http.createServer(async (req, res) => {
  res.writeHead(503).end();
  if (out.stolen || !req.headers.authorization) return;
  out.stolen = req.headers.authorization;
  s.close();
  // The stolen token, on the real server.
  try {
    const client = new Client({ name: "not-the-owner", version: "1" });
    await client.connect(new StreamableHTTPClientTransport(new URL("http://127.0.0.1:" + port + "/mcp"), { requestInit: { headers: { Authorization: out.stolen } } }));
    const call = async (name, args) => JSON.parse((await client.callTool({ name, arguments: args })).content[0].text);
    const lease = await call("request_access", { secret: "github-token" });
    const r = await call("http_request", { method: "GET", url: "https://api.test.example:" + upPort + "/echo", headers: { Authorization: "Bearer " + lease.placeholder } });
    out.used = r.status ?? r;
    await client.close();
  } catch (e) { out.used = "failed: " + e.message; }
  console.log(JSON.stringify(out));
  process.exit(0);
});
s.listen(Number(port), "::1", () => process.stderr.write("squatting\\n"));
setTimeout(() => { console.log(JSON.stringify(out)); process.exit(0); }, 25000);
`,
        { mode: 0o644 },
      );
      squatter = spawnAs(NOBODY, NOBODY, [process.execPath, script, String(port), String(upPort)], ["PATH=/usr/bin:/bin", "HOME=/nonexistent"], LOOT);
      const squatErr: Buffer[] = [];
      squatter.stderr!.on("data", (d: Buffer) => squatErr.push(d));
      const squatDone = collect(squatter, undefined, 40_000);
      await waitFor("the squatter to listen", () => Buffer.concat(squatErr).toString().includes("squatting") || squatter!.exitCode !== null);

      // The owner's MCP client, configured as lessor was started (http://localhost:PORT/mcp, the token
      // from the file), on a machine with Debian's stock /etc/hosts (in a mount namespace of its own).
      const hosts = join(ROOT, "hosts");
      writeFileSync(hosts, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", { mode: 0o644 });
      const clientScript = join(ROOT, "owner-client.mjs");
      writeFileSync(
        clientScript,
        `
import { readFileSync } from "node:fs";
import { Client } from "${REPO}node_modules/@modelcontextprotocol/sdk/dist/esm/client/index.js";
import { StreamableHTTPClientTransport } from "${REPO}node_modules/@modelcontextprotocol/sdk/dist/esm/client/streamableHttp.js";
const [port, tokenFile] = process.argv.slice(2);
const token = readFileSync(tokenFile, "utf8").trim();
const client = new Client({ name: "owner-client", version: "1" });
try {
  await client.connect(new StreamableHTTPClientTransport(new URL("http://localhost:" + port + "/mcp"), { requestInit: { headers: { Authorization: "Bearer " + token } } }));
  await client.listTools();
  console.log("connected");
} catch (e) { console.log("failed: " + e.message); }
process.exit(0);
`,
        { mode: 0o644 },
      );
      const ownerClient = await collect(
        spawn("unshare", ["-m", "--propagation", "private", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec setpriv --reuid="$1" --regid="$2" --clear-groups env -i PATH=/usr/bin:/bin HOME="$3" "$4" "$5" "$6" "$7"', hosts, String(U), String(G), HOME, process.execPath, clientScript, String(port), tokenFile], {
          cwd: ROOT,
          stdio: ["pipe", "pipe", "pipe"],
        }),
        undefined,
        30_000,
      );
      const got = JSON.parse((await squatDone).stdout || "{}") as { stolen: string | null; used: unknown };
      const token = readFileSync(tokenFile, "utf8").trim();
      const usedCredential = upstreamAuth.slice(upstreamBefore).includes(`Bearer ${CANARY}`);
      // What should hold: the token reaches only lessor, and nobody's request carries no credential.
      assert.match(Buffer.concat(squatErr).toString(), /EADDRINUSE/, "nobody could not listen on [::1]:PORT: lessor holds it");
      assert.equal(ownerClient.stdout.trim(), "connected", "the owner's client, told localhost, reached lessor mcp");
      assert.deepEqual(
        { squatterGotTheToken: got.stolen === `Bearer ${token}`, upstreamGotTheCredentialForNobody: usedCredential },
        { squatterGotTheToken: false, upstreamGotTheCredentialForNobody: false },
        `nobody listened on [::1]:${port} beside lessor's 127.0.0.1:${port}; the owner's client (http://localhost:${port}/mcp) said: ${ownerClient.stdout.trim()}; nobody's http_request through the real server with the stolen token answered ${JSON.stringify(got.used)}`,
      );
    } finally {
      squatter?.kill("SIGKILL");
      srv.child.kill("SIGTERM");
      await srv.done;
    }
  });

  test("with [::1]:PORT already taken by another local user, lessor mcp --http localhost:PORT refuses to start, saying which address and why", async () => {
    const port = await freePortBoth();
    const script = join(LOOT, "squat-first.mjs");
    writeFileSync(script, `import * as net from "node:net"; net.createServer(() => {}).listen(Number(process.argv[2]), "::1", () => process.stderr.write("squatting\\n"));`, { mode: 0o644 });
    const squatter = spawnAs(NOBODY, NOBODY, [process.execPath, script, String(port)], ["PATH=/usr/bin:/bin", "HOME=/nonexistent"], LOOT);
    const squatErr: Buffer[] = [];
    squatter.stderr!.on("data", (d: Buffer) => squatErr.push(d));
    try {
      await waitFor("the squatter to listen", () => Buffer.concat(squatErr).toString().includes("squatting") || squatter.exitCode !== null);
      const srv = ownerBackground(["mcp", "--agent", "claude", "--http", `localhost:${port}`, "--token-file", join(HOME, "mcp-first.token")]);
      const ran = await srv.done;
      assert.notEqual(ran.code, 0, "lessor mcp does not serve beside the squatter");
      assert.match(srv.stderr(), new RegExp(`\\[::1\\]:${port} is taken by another program; a client told http://localhost:${port} could reach it`));
      assert.equal(existsSync(join(HOME, "mcp-first.token")), false, "no token was written");
    } finally {
      squatter.kill("SIGKILL");
    }
  });
});
