/**
 * Attacks on lessor's injecting proxy when several agents are served at once: two `lessor run`s (or
 * `lessor proxy`s) for different agents live on one machine, under one owner. Each proxy serves one
 * agent; what they share is the owner's machine (temporary directories, loopback), the vault and the
 * audit trail. The question each test asks: can agent B get agent A's credential injected, trip A's
 * lease, or be audited as A (or make A's requests be audited as B)?
 *
 * Real parts: real `lessor run` in a bubblewrap sandbox, real `lessor proxy`, real TLS to a loopback
 * HTTPS upstream that records what it receives (the guard allows 127.0.0.1 through [proxy] allow and
 * maps the test names with [proxy] hosts, as test/run-proxy.test.ts does).
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as http2 from "node:http2";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { IncomingHttpHeaders } from "node:http";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { LocalCa } from "../src/proxy/ca.js";
import { openVault } from "../src/config/open-vault.js";
import type { AuditRecord } from "../src/base/types.js";
import { BIN } from "./cli-harness.js";
import { HAVE_BWRAP, makeOwner, type Owner } from "./run-harness.js";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { inProcessApi } from "../src/backend/in-process.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { basicProxyAuth, newProxyToken } from "../src/proxy/proxy-auth.js";
import { agent as agentIdentity, dechunked, grant, makeVault, orchestrator } from "./helpers.js";
import { connectRaw, h2Get, inTime, loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";

const skip = !HAVE_BWRAP ? "bubblewrap cannot make a sandbox here (apt-get install bubblewrap)" : false;

const ALICE_CANARY = "ghp_" + randomBytes(18).toString("hex");
const BOB_CANARY = "sk-bob-" + randomBytes(16).toString("hex");

interface Seen {
  host: string;
  url: string;
  headers: IncomingHttpHeaders;
}

const root = mkdtempSync(join(tmpdir(), "lessor-atk-multiproxy-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

let upstream: https.Server;
let port = 0;
const seen: Seen[] = [];

const POLICY = `
[[rule]]
name = "alice"
effect = "allow"
agents = ["alice"]
secrets = ["alice-token"]
domains = ["api.test.example"]

[[rule]]
name = "bob"
effect = "allow"
agents = ["bob"]
secrets = ["bob-token"]
domains = ["other.test.example"]
`;

function config(extra = ""): string {
  return `
[proxy]
ports = [${port}]
allow = ["127.0.0.1"]
hosts = { "api.test.example" = "127.0.0.1", "other.test.example" = "127.0.0.1" }
upstream_ca = "${join(root, "upstream-ca.pem")}"

[[proxy.inject]]
secret = "alice-token"
mode = "bearer"
${extra}`;
}

/** A child `lessor …` started as the owner would; resolves at its exit with what it wrote. */
function lessor(owner: Owner, args: string[], env: Record<string, string>, cwd = owner.project): { child: ChildProcess; done: Promise<{ code: number | null; stdout: string; stderr: string }> } {
  const child = spawn(process.execPath, ["--", BIN, ...args], { cwd, env: { ...owner.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on("data", (d: Buffer) => out.push(d));
  child.stderr!.on("data", (d: Buffer) => err.push(d));
  const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
    }),
  );
  return { child, done };
}

async function waitFor(what: string, ok: () => boolean, ms = 30_000): Promise<void> {
  const until = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function auditOf(owner: Owner): Promise<AuditRecord[]> {
  const vault = await openVault({ home: owner.lessorHome, env: owner.env });
  try {
    return await vault.admin().auditQuery({ limit: 10_000 });
  } finally {
    await vault.close();
  }
}

/**
 * A Node script the hostile agent runs inside its sandbox: for every directory under the ones it is
 * given (another run's private directory, if it is there), it connects to the proxy socket there, CONNECTs to
 * api.test.example, trusts that run's CA (or, with none on disk, any certificate: the attacker needs
 * no trust) and sends a GET with no credential of its own. It prints
 * one line per socket.
 */
const PROBE = `
const fs = require("node:fs"), net = require("node:net"), tls = require("node:tls"), path = require("node:path");
const port = process.argv[2], dirs = process.argv.slice(3);
const names = [];
for (const d of dirs) { try { for (const n of fs.readdirSync(d)) names.push(path.join(d, n)); } catch (e) { console.log("LIST " + d + " " + e.code); } }
(async () => {
  for (const n of names) {
    const sock = path.join(n, "proxy.sock");
    if (!fs.existsSync(sock)) continue;
    let ca = "";
    try { ca = fs.readFileSync(path.join(n, "ca.pem"), "utf8"); } catch {}
    const line = await new Promise((resolve) => {
      const raw = net.connect(sock);
      raw.on("error", (e) => resolve("SOCK " + n + " " + e.code));
      raw.once("connect", () => raw.write("CONNECT api.test.example:" + port + " HTTP/1.1\\r\\nHost: api.test.example:" + port + "\\r\\n\\r\\n"));
      raw.once("data", (d) => {
        const head = d.toString("latin1").split("\\r\\n")[0];
        if (!head.includes(" 200")) return resolve("CONNECT " + n + " " + head);
        const s = tls.connect({ socket: raw, servername: "api.test.example", ...(ca ? { ca } : { rejectUnauthorized: false }) });
        s.on("error", (e) => resolve("TLS " + n + " " + e.code));
        s.once("secureConnect", () => s.write("GET /who HTTP/1.1\\r\\nHost: api.test.example:" + port + "\\r\\nConnection: close\\r\\n\\r\\n"));
        let got = "";
        s.on("data", (x) => (got += x.toString("latin1")));
        s.on("end", () => resolve("GOT " + n + " " + got.split("\\r\\n")[0]));
      });
      setTimeout(() => resolve("TIMEOUT " + n), 15000);
    });
    console.log(line);
  }
  console.log("DONE " + names.length);
})();
`;

describe("two lessor runs for different agents at once", { skip }, () => {
  let owner: Owner;

  before(async () => {
    const ca = LocalCa.create({ permitted: ["api.test.example", "other.test.example"] });
    writeFileSync(join(root, "upstream-ca.pem"), ca.certPem);
    upstream = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, (req, res) => {
      seen.push({ host: String(req.headers.host ?? ""), url: req.url ?? "", headers: req.headers });
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("hello\n");
    });
    await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
    port = (upstream.address() as AddressInfo).port;
    owner = await makeOwner({
      root,
      name: "owner",
      masterKey: randomBytes(32).toString("hex"),
      policy: POLICY,
      secrets: [
        { name: "alice-token", value: ALICE_CANARY, kind: "pat" },
        { name: "bob-token", value: BOB_CANARY },
      ],
    });
    writeFileSync(join(owner.lessorHome, "lessor.toml"), readFileSync(join(owner.lessorHome, "lessor.toml"), "utf8") + config(), { mode: 0o600 });
  });

  after(async () => {
    upstream?.closeAllConnections();
    await new Promise<void>((r) => upstream?.close(() => r()));
  });

  test("agent B cannot reach agent A's run proxy through a temporary directory both sandboxes show (TMPDIR in the shared project): A's bearer credential is never injected into B's requests", async () => {
    // The owner keeps temporary files in the project (TMPDIR=$PWD/.tmp, as direnv layouts do), and
    // runs two agents on it. Each run makes its private directory (the proxy's socket, its CA) under
    // TMPDIR; the sandbox shows the project, so both sandboxes could see both directories.
    const tmp = join(owner.project, ".tmp");
    mkdirSync(tmp, { recursive: true });
    writeFileSync(join(owner.project, "probe.cjs"), PROBE);
    const before = new Set(existsSync(tmp) ? readdirSync(tmp) : []);
    const alice = lessor(owner, ["run", "--agent", "alice", "--", "/bin/sh", "-c", "echo ready; sleep 60"], { TMPDIR: tmp, ALICE_TOKEN: "$S:alice-token" });
    let aliceOut = "";
    alice.child.stdout!.on("data", (d: Buffer) => (aliceOut += d.toString("utf8")));
    try {
      await waitFor("alice's run to start", () => aliceOut.includes("ready"), 60_000);
      const made = readdirSync(tmp).filter((n) => !before.has(n));
      const bob = lessor(owner, ["run", "--agent", "bob", "--", process.execPath, join(owner.project, "probe.cjs"), String(port), tmp, "/tmp", "/run/user"], { TMPDIR: tmp, BOB_TOKEN: "$S:bob-token" });
      const r = await bob.done;
      // What the probe saw (the directories are alice's and its own, if they are where it looks).
      const saw = r.stdout;
      assert.equal(r.code, 0, `bob's run: ${r.stderr}`);
      assert.match(saw, /^DONE /m, `the probe ran in bob's sandbox: ${saw}`);
      assert.ok(!saw.includes(ALICE_CANARY), "alice's credential reached bob");
      const carrying = seen.filter((s) => JSON.stringify(s.headers).includes(ALICE_CANARY));
      assert.equal(carrying.length, 0, `the upstream got alice's credential on a request bob made: ${saw} (alice's run made ${made.join(", ")}; bob's stderr: ${r.stderr})`);
      assert.ok(!/^GOT /m.test(saw), `bob's sandbox reached another run's proxy socket: ${saw}`);
    } finally {
      alice.child.kill("SIGTERM");
      await alice.done;
    }
  });

  test("an agent in a run's sandbox cannot reach a lessor mcp session's proxy through TMPDIR in the shared project: the MCP agent's bearer credential is never injected into its requests", async () => {
    // alice uses lessor mcp (its http_request goes through a proxy the session starts, on a socket in
    // a private directory); bob runs sandboxed in the same project, TMPDIR in the project as before.
    const tmp = join(owner.project, ".tmp-mcp");
    mkdirSync(tmp, { recursive: true });
    writeFileSync(join(owner.project, "probe.cjs"), PROBE);
    const transport = new StdioClientTransport({ command: process.execPath, args: [BIN, "mcp", "--agent", "alice"], env: { ...owner.env, TMPDIR: tmp }, cwd: owner.project, stderr: "pipe" });
    const err: Buffer[] = [];
    transport.stderr!.on("data", (b: Buffer) => err.push(b));
    const client = new Client({ name: "attack-multiproxy", version: "1.0.0" });
    await client.connect(transport);
    try {
      const call = async (name: string, args: Record<string, unknown>): Promise<string> => {
        const r = (await client.callTool({ name, arguments: args })) as { isError?: boolean; content: { text: string }[] };
        const text = r.content.map((c) => c.text).join("\n");
        assert.ok(r.isError !== true, `${name}: ${text} ${Buffer.concat(err).toString("utf8")}`);
        return text;
      };
      await call("request_access", { secret: "alice-token", domains: ["api.test.example"] });
      const own = await call("http_request", { method: "GET", url: `https://api.test.example:${port}/alice-own` });
      assert.ok(!own.includes(ALICE_CANARY), "alice's own answer is masked");
      const from = seen.length;
      const bob = lessor(owner, ["run", "--agent", "bob", "--", process.execPath, join(owner.project, "probe.cjs"), String(port), tmp, "/tmp", "/run/user"], { TMPDIR: tmp, BOB_TOKEN: "$S:bob-token" });
      const r = await bob.done;
      assert.equal(r.code, 0, `bob's run: ${r.stderr}`);
      assert.match(r.stdout, /^DONE /m, `the probe ran in bob's sandbox: ${r.stdout}`);
      assert.ok(!r.stdout.includes(ALICE_CANARY), "alice's credential reached bob");
      const carrying = seen.slice(from).filter((x) => JSON.stringify(x.headers).includes(ALICE_CANARY));
      assert.equal(carrying.length, 0, `the upstream got alice's credential on a request bob made: ${r.stdout}`);
      assert.ok(!/^GOT /m.test(r.stdout), `bob's sandbox reached the MCP session's proxy socket: ${r.stdout}`);
    } finally {
      await client.close().catch(() => {});
    }
  });
});

// --- two lessor proxy sessions, for alice and bob, on one vault, in process ------------------------
//
// As `lessor proxy --agent alice` and `lessor proxy --agent bob` wire it (src/cli/run/proxy.ts):
// LeaseEgress over the vault, basicProxyAuth with the session's token, the SSRF guard; both agents'
// leases cover the same host, whose upstream speaks HTTP/2 and HTTP/1.1 and records what it gets.

const SHARED = "api.shared.example";
const A_CANARY = "ghp_" + randomBytes(18).toString("hex");
const B_CANARY = "ghp_" + randomBytes(18).toString("hex");
const b64 = (t: string): string => "Basic " + Buffer.from(`lessor:${t}`).toString("base64");

interface UpSeen {
  proto: string;
  path: string;
  authorization: string;
  headers: string;
}

const { vault: sharedVault } = await makeVault({
  policy: grant("a", ["alice"], ["alice-token"], [SHARED]) + grant("b", ["bob"], ["bob-token"], [SHARED]),
});

describe("two lessor proxy sessions (alice, bob) covering one host", () => {
  const upCa = LocalCa.create({ permitted: [SHARED] });
  const got: UpSeen[] = [];
  /** Open /slow answers, by the agent that asked (x-who), to see which the proxy cut. */
  const streams = new Map<string, { closed: boolean }>();
  let up: http2.Http2SecureServer;
  let upPort = 0;

  interface Side {
    agent: string;
    token: string;
    placeholder: string;
    leaseId: string;
    port: number;
    connects: ConnectTo[];
    proxy: ForwardProxy;
    egress: LeaseEgress;
  }
  let alice: Side;
  let bob: Side;
  let vaultAdmin: Awaited<ReturnType<typeof makeVault>>["vault"];
  // One vault both proxies ask, as two lessor proxy processes ask one daemon.

  before(async () => {
    up = http2.createSecureServer({ allowHTTP1: true, SNICallback: upCa.sniCallback }, (req, res) => {
      const headers = JSON.stringify(req.headers);
      got.push({ proto: req.httpVersion, path: req.url, authorization: String(req.headers.authorization ?? ""), headers });
      const who = String(req.headers["x-who"] ?? "");
      if (req.url.startsWith("/slow")) {
        res.writeHead(200, { "content-type": "text/plain" });
        const st = { closed: false };
        streams.set(who, st);
        const t = setInterval(() => res.write("tick\n"), 25);
        const stop = setTimeout(() => res.end("end\n"), 20_000);
        res.on("close", () => {
          st.closed = true;
          clearInterval(t);
          clearTimeout(stop);
        });
        return;
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end(headers);
    });
    await new Promise<void>((r) => up.listen(0, "127.0.0.1", r));
    upPort = (up.address() as AddressInfo).port;

    const vault = sharedVault;
    vaultAdmin = vault;
    const admin = vault.admin();
    await admin.storeSecret({ name: "alice-token", value: A_CANARY });
    await admin.storeSecret({ name: "bob-token", value: B_CANARY });
    const side = async (agent: string, secret: string, value: string): Promise<Side> => {
      const lease = await admin.requestLease({ agent, secret, domains: [SHARED] });
      const cred: ProxyCredential = { lease, secret: `global/${secret}`, placeholder: makePlaceholder(value), value, rule: { mode: "placeholder" } };
      const egress = new LeaseEgress({ api: inProcessApi(vault), agent, credentials: [cred], egress: "strict", warn: () => {} });
      const connects: ConnectTo[] = [];
      const token = newProxyToken();
      const proxy = new ForwardProxy({
        egress,
        ca: LocalCa.create({ permitted: [SHARED] }),
        guard: new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [SHARED]: "127.0.0.1" }) }),
        upstreamCa: upCa.certPem,
        connect: loopbackOnly(connects),
        authorize: basicProxyAuth(token),
      });
      const port = await proxy.listen();
      egress.start();
      return { agent, token, placeholder: cred.placeholder, leaseId: lease.id, port, connects, proxy, egress };
    };
    alice = await side("alice", "alice-token", A_CANARY);
    bob = await side("bob", "bob-token", B_CANARY);
  });

  after(async () => {
    for (const s of [alice, bob]) {
      await s?.proxy.close().catch(() => {});
      await s?.egress.close().catch(() => {});
    }
    up?.close();
  });

  const leaseOf = async (id: string) => (await vaultAdmin.admin().listLeases({ id }))[0]!;

  test("held: bob sends alice's placeholder (learned out of band) through his own proxy, over HTTP/1.1 and HTTP/2: the upstream gets it as it is, never alice's credential; her lease spends no use and stays live; bob's audit rows name bob and his lease only; neither token opens the other's proxy", async () => {
    const aliceBefore = await leaseOf(alice.leaseId);
    const from = got.length;
    // HTTP/1.1 through bob's proxy: alice's placeholder where a credential goes, his own beside it.
    const s1 = await openTunnel(bob.port, SHARED, upPort, { proxyAuth: b64(bob.token) });
    s1.write(`GET /h1 HTTP/1.1\r\nHost: ${SHARED}\r\nAuthorization: Bearer ${alice.placeholder}\r\nX-Bob: ${bob.placeholder}\r\nConnection: close\r\n\r\n`);
    const a1 = await readAll(s1, 5000);
    assert.match(a1, /^HTTP\/1\.1 200 /, a1);
    // HTTP/2 through bob's proxy: the same.
    const s2 = await openTunnel(bob.port, SHARED, upPort, { proxyAuth: b64(bob.token), alpn: "h2" });
    const a2 = await inTime(h2Get(s2, SHARED, "/h2", { authorization: `Bearer ${alice.placeholder}`, "x-bob": bob.placeholder }), 10_000, "bob's h2 request");
    // The HTTP/1.1 body read without its chunked framing: a chunk boundary may fall inside the placeholder.
    for (const [a, body] of [[a1, dechunked(a1)], [a2, a2]] as const) {
      assert.ok(![a, body].some((x) => x.includes(A_CANARY) || x.includes(B_CANARY)), `a credential came back to bob: ${a}`);
      assert.ok(body.includes(bob.placeholder), `bob's echo is masked with his own placeholder: ${a}`);
    }
    const mine = got.slice(from);
    assert.equal(mine.length, 2, JSON.stringify(mine));
    for (const g of mine) {
      assert.equal(g.authorization, `Bearer ${alice.placeholder}`, "alice's placeholder goes as it is");
      assert.ok(!g.headers.includes(A_CANARY), "alice's credential reached the upstream on bob's request");
      assert.ok(g.headers.includes(B_CANARY), "bob's own credential is added");
    }
    const aliceAfter = await leaseOf(alice.leaseId);
    assert.equal(aliceAfter.uses, aliceBefore.uses, "no use of alice's lease");
    assert.equal(aliceAfter.revokedAt, null, "alice's lease is not revoked");

    // Each proxy takes only its own session's token.
    for (const [proxy, token] of [[bob.port, alice.token], [alice.port, bob.token]] as const) {
      const { raw, head } = await connectRaw(proxy, `${SHARED}:${upPort}`, b64(token));
      raw.destroy();
      assert.match(head, /^HTTP\/1\.1 407 /, head);
    }
    assert.equal(alice.connects.length, 0, "alice's proxy connected nowhere");

    await bob.egress.close(); // flushes the batched audit reports
    const rows = (await vaultAdmin.admin().auditQuery({ types: ["proxy_request"], limit: 1000 })).map((e) => ({ agent: e.agent, detail: JSON.parse(e.detail ?? "{}") as { leases?: string } }));
    assert.ok(rows.length >= 2, JSON.stringify(rows));
    for (const r of rows) {
      assert.equal(r.agent, "bob", JSON.stringify(r));
      assert.equal(r.detail.leases, bob.leaseId, JSON.stringify(r));
    }
    bob.egress.start();
  });

  test("bob's flood of refused requests through his proxy does not hide alice's: her refused request, reported by her proxy through the same identity, is written as its own proxy_request row, with its path", async () => {
    // Both proxies report as one identity (two lessor proxy processes of the owner, one daemon): the
    // refusal tally must not let one agent's flood turn the other's refusals into a count.
    const s = await openTunnel(bob.port, SHARED, upPort, { proxyAuth: b64(bob.token), alpn: "h2" });
    const session = http2.connect(`https://${SHARED}`, { createConnection: () => s });
    session.on("error", () => {});
    try {
      const one = (i: number): Promise<number> =>
        new Promise((resolve) => {
          const r = session.request({ ":method": "GET", ":path": `/bob-flood/${i}?t=${bob.placeholder}` });
          r.on("response", (h) => resolve(Number(h[":status"])));
          r.on("error", () => resolve(0));
          r.resume();
          r.end();
        });
      const statuses: number[] = [];
      for (let i = 0; i < 80; i += 20) statuses.push(...(await inTime(Promise.all(Array.from({ length: 20 }, (_, k) => one(i + k))), 20_000, "bob's flood")));
      assert.ok(statuses.every((x) => x === 403), statuses.join(","));
    } finally {
      session.destroy();
    }
    await bob.egress.close(); // bob's reports are in before alice's
    bob.egress.start();
    const sa = await openTunnel(alice.port, SHARED, upPort, { proxyAuth: b64(alice.token) });
    sa.write(`GET /alice-probe?t=${alice.placeholder} HTTP/1.1\r\nHost: ${SHARED}\r\nConnection: close\r\n\r\n`);
    const a = await readAll(sa, 5000);
    assert.match(a, /^HTTP\/1\.1 403 /, a);
    await alice.egress.close();
    alice.egress.start();
    const rows = await vaultAdmin.admin().auditQuery({ types: ["proxy_request"], agent: "alice", limit: 1000 });
    const own = rows.filter((e) => {
      const d = JSON.parse(e.detail ?? "{}") as { path?: string; count?: number };
      return e.agent === "alice" && d.path === "/alice-probe" && d.count === undefined;
    });
    assert.equal(own.length, 1, `alice's refused request has a row of its own: ${JSON.stringify(rows.map((e) => [e.agent, e.detail]))}`);
  });

  test("held: alice's lease revoked while both stream from the same upstream (alice over HTTP/2, bob over HTTP/1.1): alice's stream is cut, bob's goes on and his next request carries his credential; the killswitch then cuts bob's too", async () => {
    // alice: an h2 stream through her proxy.
    const sa = await openTunnel(alice.port, SHARED, upPort, { proxyAuth: b64(alice.token), alpn: "h2" });
    const session = http2.connect(`https://${SHARED}`, { createConnection: () => sa });
    session.on("error", () => {});
    const ra = session.request({ ":method": "GET", ":path": "/slow", authorization: `Bearer ${alice.placeholder}`, "x-who": "alice" });
    ra.on("error", () => {});
    let aliceTicks = 0;
    let aliceEnded = false;
    ra.on("data", () => aliceTicks++);
    ra.on("close", () => (aliceEnded = true));
    // bob: an HTTP/1.1 stream through his.
    const sb = await openTunnel(bob.port, SHARED, upPort, { proxyAuth: b64(bob.token) });
    sb.write(`GET /slow HTTP/1.1\r\nHost: ${SHARED}\r\nAuthorization: Bearer ${bob.placeholder}\r\nX-Who: bob\r\n\r\n`);
    let bobBytes = 0;
    let bobClosed = false;
    sb.on("data", (d: Buffer) => (bobBytes += d.length));
    sb.on("close", () => (bobClosed = true));
    try {
      await waitFor("both streams to flow", () => aliceTicks > 2 && bobBytes > 200 && streams.has("alice") && streams.has("bob"), 15_000);
      await vaultAdmin.admin().revokeLease(alice.leaseId, "test: alice is done");
      await waitFor("alice's stream to be cut", () => aliceEnded && streams.get("alice")!.closed, 10_000);
      // bob's goes on: it keeps receiving for a while after alice's was cut.
      const at = bobBytes;
      await waitFor("bob's stream to keep flowing", () => bobBytes > at + 200, 10_000);
      assert.equal(bobClosed, false, "bob's stream was cut with alice's");
      assert.equal(streams.get("bob")!.closed, false, "bob's upstream stream was cut with alice's");
      // bob's next request still gets his credential.
      const from = got.length;
      const s2 = await openTunnel(bob.port, SHARED, upPort, { proxyAuth: b64(bob.token), alpn: "h2" });
      const a2 = await inTime(h2Get(s2, SHARED, "/after", { authorization: `Bearer ${bob.placeholder}` }), 10_000, "bob's next request");
      assert.match(a2, /":status":200/, a2);
      assert.ok(got.slice(from).some((g) => g.authorization === `Bearer ${B_CANARY}`), "bob's credential is added after alice's revocation");
      // alice's next request is refused, and nothing of hers goes upstream.
      const from2 = got.length;
      const s3 = await openTunnel(alice.port, SHARED, upPort, { proxyAuth: b64(alice.token) });
      s3.write(`GET /again HTTP/1.1\r\nHost: ${SHARED}\r\nAuthorization: Bearer ${alice.placeholder}\r\nConnection: close\r\n\r\n`);
      const a3 = await readAll(s3, 5000);
      assert.match(a3, /^HTTP\/1\.1 403 /, a3);
      assert.equal(got.length, from2, "alice's request after her revocation reached the upstream");
      // The killswitch ends everything: bob's stream is cut too.
      await vaultAdmin.admin().killswitch("test: stop everything");
      await waitFor("bob's stream to be cut by the killswitch", () => bobClosed && streams.get("bob")!.closed, 10_000);
    } finally {
      session.destroy();
      sb.destroy();
    }
  });
});

test("an orchestrator whose act_for is a pattern cannot multiply its burst of refused proxy_request rows by naming made-up agents: at most (4 + 1) × 32 are written in a window, and another identity's refusal is still written on its own", async () => {
  const { vault } = await makeVault({ policy: "" });
  const orch = vault.session(orchestrator(["ci-*"]));
  const report = (agent: string, path: string) => ({ agent, leaseIds: [], method: "GET", host: "api.example.com", path, status: 403, bytesOut: 0, bytesIn: 0, ms: 1, outcome: "refused" as const, reason: "not_granted" });
  for (let i = 0; i < 50; i++) await orch.recordProxyRequests(Array.from({ length: 40 }, (_, k) => report(`ci-${i}`, `/flood/${k}`)));
  const written = (await vault.admin().auditQuery({ types: ["proxy_request"], limit: 10_000 })).filter((e) => e.actorId === "test:orch" && (JSON.parse(e.detail ?? "{}") as { count?: number }).count === undefined);
  assert.ok(written.length <= 5 * 32, `${written.length} rows written one each`);
  // Another identity reporting for its own agent in the same window: its refusal is a row of its own.
  await vault.session(agentIdentity("dave")).recordProxyRequests([report("dave", "/dave-probe")]);
  const dave = (await vault.admin().auditQuery({ types: ["proxy_request"], agent: "dave", limit: 100 })).filter((e) => (JSON.parse(e.detail ?? "{}") as { path?: string; count?: number }).path === "/dave-probe");
  assert.equal(dave.length, 1, "dave's refused request has a row of its own");
});
