/**
 * Three small gaps (review s35):
 * 1. A CLI error echoing a mistyped option (src/cli/format/redact-options.ts): every form a value may be
 *    glued to an option in shows none of it. `-fVALUE` with `-f` a known flag left `-VALUE` for commander
 *    to call unknown, and `'-V…'` showed the value's first letter; `--valueVALUE` (the "=" forgotten) and
 *    `--valeuVALUE` were echoed whole.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostname, userInfo } from "node:os";
import { before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { BIN, cliHome, runCli, seedHome } from "./cli-harness.js";
import type { RunningDaemon } from "./daemon-harness.js";
import type { Msg } from "./raw-client.js";
import { agentRule, NO_BWRAP, type OkConn, projectDir, REPO, sessionProbe, sessionSuite } from "./session-probe.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { inProcessApi } from "../src/backend/in-process.js";
import { createMcpSession } from "../src/mcp/server.js";
import { serveHttp } from "../src/mcp/http.js";
import { ApprovalPages } from "../src/mcp/approval-page.js";

const CHILD = process.env["S35_GAPS_CHILD"] === "1";
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const CANARY = "Zq7CanaryGapsW3x";
/** Every 4-character slice of `s`. */
const slices = (s: string): string[] => Array.from({ length: s.length - 3 }, (_, i) => s.slice(i, i + 4));

if (!CHILD) test("attack: no form of an option with a value glued on echoes any 4 characters of the value", { timeout: 60_000 }, async () => {
  const home = await cliHome();
  const cases: string[][] = [
    ["audit", "tail", `-f${CANARY}`], // -f a known flag: commander is left with -<value>
    ["audit", "tail", `-ff${CANARY}`],
    ["audit", "tail", `-fv${CANARY}`], // combined short flags
    ["audit", "tail", `-xv${CANARY}`],
    ["secret", "set", "db", `-v${CANARY}`], // glued to an unknown short option
    ["secret", "set", "db", `--value${CANARY}`], // the "=" forgotten
    ["secret", "set", "db", `--valeu${CANARY}`], // typo'd and the "=" forgotten
    ["secret", "set", "db", `--value${CANARY}=x`],
    ["secret", "set", "db", `--valeu=${CANARY}`], // typo'd long option with "="
    ["secret", "set", "db", `--valeu=it's ${CANARY}`],
    ["lease", "db", "--agent", "a", `--ttl${CANARY}`],
    [`--home${CANARY}`, "status"],
    ["audit", "tail", `--json=${CANARY}`], // a flag given a value
  ];
  for (const args of cases) {
    const r = await runCli(args, { home });
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /unknown option/);
    const out = r.stdout + r.stderr;
    const leaked = slices(CANARY).filter((p) => out.includes(p));
    assert.deepEqual(leaked, [], `lessor ${args.join(" ")} printed part of the value: ${r.stderr}`);
    assert.ok(!out.includes(CANARY.slice(0, 1) + "…"), `lessor ${args.join(" ")} printed the value's first letter: ${r.stderr}`);
  }
  // A value of lower-case hex glued to a typo'd option has an option name's letters, not its length.
  const hex = randomBytes(16).toString("hex");
  const r = await runCli(["secret", "set", "db", `--valeu${hex}`], { home });
  assert.equal(r.code, 2, r.stderr);
  for (let i = 0; i + 6 <= hex.length; i++) assert.ok(!(r.stdout + r.stderr).includes(hex.slice(i, i + 6)), `printed part of a hex value: ${r.stderr}`);
});

if (!CHILD) test("a mistyped option is still named where it is certainly an option's name", { timeout: 30_000 }, async () => {
  const home = await cliHome();
  const expect: [string[], string][] = [
    [["secret", "set", "db", "-vX1"], "'-v…'"],
    [["secret", "set", "db", "--valeu"], "'--valeu'"],
    [["secret", "set", "db", "--valeu=1"], "'--valeu=…'"],
    [["secret", "set", "db", "--value1"], "'--value…'"],
    [["audit", "tail", "-x"], "'-x'"],
    [["secret", "list", "--sekret-flag"], "'--sekret-flag'"], // no near option, but a name's shape
  ];
  for (const [args, shown] of expect) {
    const r = await runCli(args, { home });
    assert.ok(r.stderr.includes(`unknown option ${shown}`), `${args.join(" ")}: ${r.stderr}`);
  }
});

/**
 * 2. `lessor mcp --http`'s approval page (src/mcp/approval-page.ts) is a second node:http server in the
 *    same process as the MCP endpoint. The endpoint counts its connections (at most 256, so a flood
 *    cannot use up the process's file descriptors); the page counted none, so any local user (its port
 *    is in /proc/net/tcp) opening idle connections to it used up the process's descriptors, and the
 *    agent's MCP client was shut out as well. Shown in a child process with `ulimit -n 512` (the
 *    default limit is the same story, only with more sockets).
 */
async function childMain(): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), "lessor-s35-gaps-"));
  process.on("exit", () => rmSync(root, { recursive: true, force: true }));
  const LESSOR_HOME = join(root, "home", ".lessor");
  mkdirSync(join(root, "home"), { recursive: true });
  await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  writeFileSync(join(LESSOR_HOME, "policy.toml"), "", { mode: 0o600 });
  const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  const token = randomBytes(32).toString("base64url");
  const srv = await serveHttp({
    newSession: () => createMcpSession({ api: inProcessApi(vault), identity: { agent: "claude", role: "admin" }, proxyConfig: { egress: "strict", ports: [443], allow: [], hosts: {}, upstreamCa: null, inject: [] }, log: () => {}, tmp: root }),
    address: { host: "127.0.0.1", port: 0 },
    token,
    log: () => {},
  });
  const pages = new ApprovalPages(() => {});
  const view = { id: "apr_1", agent: "claude", secret: "global/db", hosts: ["api.example.com"], anyDomain: false, ttlMs: 60_000, maxUses: null, rule: "r", reason: null, expiresAt: Date.now() + 600_000, requestedBy: "x", reveal: false, methods: null, paths: null };
  const opened = await pages.open(view as never, async () => {});
  process.stdout.write(JSON.stringify({ mcp: srv.port, token, page: opened!.url }) + "\n");
  process.stdin.resume();
  process.stdin.on("end", () => process.exit(0));
}

/** The agent's client: a fresh connection, an initialize with the token; its status or error code. */
function initialize(port: number, token: string): Promise<number | string> {
  const INIT = JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "x", version: "1" } } });
  return new Promise((resolve) => {
    const req = http.request(
      { host: "127.0.0.1", port, path: "/mcp", method: "POST", agent: false, timeout: 5000, headers: { host: `127.0.0.1:${port}`, authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json, text/event-stream" } },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode!));
      },
    );
    req.on("timeout", () => req.destroy(Object.assign(new Error("timeout"), { code: "TIMEOUT" })));
    req.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? "error"));
    req.end(INIT);
  });
}

/** A GET of the page; its status or error code. */
function getPage(url: string): Promise<number | string> {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false, timeout: 5000 }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode!));
    });
    req.on("timeout", () => req.destroy(Object.assign(new Error("timeout"), { code: "TIMEOUT" })));
    req.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? "error"));
  });
}

if (CHILD) await childMain();
else
  test("attack: idle connections to the approval page do not shut the agent's client out of the MCP endpoint", { timeout: 60_000 }, async () => {
    const self = fileURLToPath(import.meta.url);
    const child = spawn("/bin/sh", ["-c", `ulimit -n 512 && exec "${process.execPath}" --import tsx "${self}"`], { env: { ...process.env, S35_GAPS_CHILD: "1" }, stdio: ["pipe", "pipe", "inherit"] });
    const socks: net.Socket[] = [];
    try {
      const info = await new Promise<{ mcp: number; token: string; page: string }>((resolve, reject) => {
        let out = "";
        child.stdout.on("data", (c: Buffer) => {
          out += c.toString();
          if (out.includes("\n")) resolve(JSON.parse(out.split("\n")[0]!));
        });
        child.on("exit", (c) => reject(new Error(`the child exited (${c})`)));
      });
      assert.equal(await initialize(info.mcp, info.token), 200, "before the flood");
      assert.equal(await getPage(info.page), 200, "before the flood");
      const port = Number(new URL(info.page).port);
      // Another local user: 600 connections to the page that send nothing (they would be closed by the
      // 10 s headers timeout, checked every 30 s: a reconnect then keeps them).
      await Promise.all(
        Array.from({ length: 600 }, () => new Promise<void>((resolve) => {
          const s = net.connect(port, "127.0.0.1");
          s.on("error", () => resolve());
          s.on("connect", () => resolve());
          s.on("close", () => resolve());
          socks.push(s);
        })),
      );
      await sleep(500);
      const got = await initialize(info.mcp, info.token);
      assert.equal(got, 200, `the agent's client could not start an MCP session (${got}) while ${socks.filter((s) => !s.destroyed).length} idle connections were open to the approval page`);
      // Once they close, the page is served again (its count goes down).
      for (const s of socks) s.destroy();
      await sleep(300);
      assert.equal(await getPage(info.page), 200, "the page after the flood");
    } finally {
      for (const s of socks) s.destroy();
      child.stdin.end();
      child.kill();
    }
  });

/**
 * 3. What a `lessor run --vault-session` agent learns of its identity (the welcome, whoami, its leases'
 *    issuedBy): nothing of the host. The daemon names a session token `session:<pid>.<start>.<boot id>.<pid
 *    namespace>` (the stamp of the run's process, which its sweep needs), and the identity id was
 *    `token:<that name>/<id>`; whoami showed the name too. The embedded run's identity was
 *    `run:<lessor's pid>.<random>:A`.
 */
const AGENT3 = "runner-s35";
const POLICY3 = agentRule(AGENT3)("open", ["open"], `domains = ["api.example.com"]`);
const REQS3 = [{ method: "whoami" }, { method: "request_lease", params: { secret: "open", ttl: "5m" } }, { method: "list_leases", params: {} }];

function runProbe(home: string, proj: string): Promise<{ code: number | null; pid: number; err: string }> {
  const child = spawn(process.execPath, ["--", BIN, "run", "--agent", AGENT3, "--vault-session", "--network", "none", "--ttl", "10m", "--", process.execPath, join(proj, "probe.mjs"), proj, JSON.stringify(REQS3), "who"], {
    cwd: proj,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: home, LESSOR_HOME: home, NO_COLOR: "1" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let e = "";
  child.stderr!.on("data", (b: Buffer) => (e += b.toString()));
  const t = setTimeout(() => child.kill("SIGKILL"), 25_000);
  return new Promise((r) => child.on("close", (code) => (clearTimeout(t), r({ code, pid: child.pid!, err: e }))));
}

/** The names the agent is shown for itself: the welcome's and whoami's identity id, the token's name, its leases' issuedBy. */
function namesShown(frames: Msg[]): string[] {
  const out: string[] = [];
  for (const f of frames) {
    if (f.identity?.id !== undefined) out.push(String(f.identity.id));
    if (f.result?.identity?.id !== undefined) out.push(String(f.result.identity.id));
    if (f.result?.token?.name !== undefined) out.push(String(f.result.token.name));
    if (f.result?.issuedBy !== undefined) out.push(String(f.result.issuedBy));
    if (Array.isArray(f.result)) for (const l of f.result) if (l.issuedBy !== undefined) out.push(String(l.issuedBy));
  }
  return out;
}

function assertNothingOfTheHost(frames: Msg[], pid: number, home: string, mode: string): void {
  const names = namesShown(frames);
  assert.ok(names.length >= 4, `${mode}: ${JSON.stringify(frames)}`);
  const boot = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim().replaceAll("-", "").slice(0, 12);
  const bad: [string, (n: string) => boolean][] = [
    ["lessor run's pid", (n) => new RegExp(`(^|[^0-9])${pid}([^0-9]|$)`).test(n)],
    ["the boot id", (n) => n.includes(boot)],
    ["a process stamp", (n) => /\d+\.\d+\.[0-9a-f]{12}\.\d+/.test(n)],
    ["the host name", (n) => n.includes(hostname())],
    ["the owner's user name", (n) => n.includes(`${userInfo().username}`) && !`${AGENT3}`.includes(userInfo().username)],
    ["the home path", (n) => n.includes(home) || n.includes(userInfo().homedir)],
  ];
  for (const n of names) for (const [what, has] of bad) assert.ok(!has(n), `${mode}: the agent is shown ${what} in its identity: ${JSON.stringify(n)} (lessor run pid ${pid})`);
}

if (!CHILD)
  describe("attack: a vault session's agent is shown nothing of the host in its own identity, with a daemon", { skip: NO_BWRAP }, () => {
    let d: RunningDaemon;
    let admin: OkConn;
    const root = mkdtempSync(join(tmpdir(), "lessor-s35-who-"));
    process.on("exit", () => rmSync(root, { recursive: true, force: true }));
    sessionSuite(POLICY3, (x) => ({ d, admin } = x), async (a) => void (await a.ok("store_secret", { name: "open", value: "open-value" })));
    test("daemon: welcome, whoami and issuedBy carry no pid, stamp, host, user or home; the owner still sees the stamp", { timeout: 40_000 }, async () => {
      const proj = projectDir(root, "p", { "probe.mjs": sessionProbe(20_000) });
      const r = await runProbe(d.home, proj);
      assert.equal(r.code, 0, r.err);
      const frames = JSON.parse(readFileSync(join(proj, "who.json"), "utf8")) as Msg[];
      assert.equal(frames[2]?.ok, true, JSON.stringify(frames));
      assertNothingOfTheHost(frames, r.pid, d.home, "daemon");
      // The owner still sees the stamp in the token's name (the sweep's), and the run revoked its token.
      const tokens = (await admin.ok("token_list", {})) as Msg[];
      assert.ok(tokens.some((t) => new RegExp(`^session:${r.pid}\\.`).test(String(t.name))), JSON.stringify(tokens.map((t) => t.name)));
    });
  });

if (!CHILD)
  describe("attack: a vault session's agent is shown nothing of the host in its own identity, embedded", { skip: NO_BWRAP }, () => {
    const root = mkdtempSync(join(tmpdir(), "lessor-s35-who-emb-"));
    const home = join(root, "home");
    process.on("exit", () => rmSync(root, { recursive: true, force: true }));
    before(async () => {
      mkdirSync(home, { recursive: true, mode: 0o700 });
      await initHome({ home, env: { LESSOR_HOME: home } });
      await seedHome(home, POLICY3, [{ name: "open", value: "open-value" }]);
      appendFileSync(join(home, "lessor.toml"), `\n[run]\nread = [${JSON.stringify(REPO)}]\n`);
    });
    test("embedded: welcome, whoami and issuedBy carry no pid", { timeout: 40_000 }, async () => {
      const proj = projectDir(root, "p", { "probe.mjs": sessionProbe(20_000) });
      const r = await runProbe(home, proj);
      assert.equal(r.code, 0, r.err);
      const frames = JSON.parse(readFileSync(join(proj, "who.json"), "utf8")) as Msg[];
      assert.equal(frames[2]?.ok, true, JSON.stringify(frames));
      assertNothingOfTheHost(frames, r.pid, home, "embedded");
    });
  });
