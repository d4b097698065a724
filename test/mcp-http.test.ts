/**
 * `lessor mcp --http`: the built CLI (`dist/bin/lessor.cjs`: run `npm run build:cli` first) serves
 * streamable HTTP on 127.0.0.1, and the MCP SDK's real client (`StreamableHTTPClientTransport`) calls
 * its tools, with `http_request` reaching a local HTTPS upstream through the injecting proxy. Then the
 * gate: no token or a wrong one is 401, a foreign Origin or Host is 403 (DNS rebinding), a non-loopback
 * --http is refused before anything listens, and the token file is 0600. Nothing leaves 127.0.0.1.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ElicitRequestSchema, type ElicitResult } from "@modelcontextprotocol/sdk/types.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { isLoopbackOrigin, parseLoopbackAddress, tokenMatcher } from "../src/mcp/http.js";
import { LocalCa } from "../src/proxy/ca.js";
import { BIN } from "./cli-harness.js";

const CANARY = "ghp_" + randomBytes(18).toString("hex");
const root = mkdtempSync(join(tmpdir(), "lessor-mcp-http-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const LESSOR_HOME = join(HOME, ".lessor");
const TOKEN_FILE = join(root, "mcp.token");

const POLICY = `
[[rule]]
name = "github"
effect = "allow"
agents = ["claude"]
secrets = ["github-token"]
domains = ["api.test.example"]

[[rule]]
name = "gated"
effect = "allow"
agents = ["claude"]
secrets = ["deploy-key"]
domains = ["api.test.example"]
approval = "required"
`;

let upstreamPort = 0;
let upstream: https.Server;
let seenAuth: string[] = [];
let child: ChildProcess;
let stderr = "";
let url = "";
let token = "";
const transcript: string[] = [];

/** Waits until the child's stderr matches `re`. */
async function waitFor(re: RegExp, ms = 20_000): Promise<RegExpMatchArray> {
  const end = Date.now() + ms;
  for (;;) {
    const m = re.exec(stderr);
    if (m) return m;
    if (Date.now() > end) throw new Error(`timed out waiting for ${re} in: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A raw request to the MCP server, with exactly the headers given. */
function raw(headers: Record<string, string>, body = JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list", params: {} })): Promise<{ status: number; text: string; headers: http.IncomingHttpHeaders }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: Number(u.port), path: u.pathname, method: "POST", headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, text: Buffer.concat(chunks).toString("utf8"), headers: res.headers }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

async function connect(elicit?: (url: string) => Promise<ElicitResult>): Promise<Client> {
  const client = new Client({ name: "lessor-http-test", version: "1.0.0" }, elicit ? { capabilities: { elicitation: { url: {} } } } : {});
  if (elicit) client.setRequestHandler(ElicitRequestSchema, async (req) => elicit((req.params as { url: string }).url));
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
  return client;
}

async function call(client: Client, name: string, args: Record<string, unknown> = {}): Promise<{ isError: boolean; doc: Record<string, any>; text: string }> {
  const r = (await client.callTool({ name, arguments: args })) as { isError?: boolean; content: { type: string; text: string }[] };
  const text = r.content.map((c) => c.text).join("\n");
  transcript.push(text);
  return { isError: r.isError === true, doc: JSON.parse(text) as Record<string, any>, text };
}

describe("lessor mcp --http with the SDK's streamable HTTP client", () => {
  before(async () => {
    mkdirSync(HOME, { recursive: true });
    const ca = LocalCa.create({ permitted: ["api.test.example"] });
    writeFileSync(join(root, "upstream-ca.pem"), ca.certPem);
    upstream = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, (req, res) => {
      seenAuth.push(String(req.headers.authorization ?? ""));
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(`you sent: ${String(req.headers.authorization ?? "")}\n`);
    });
    await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
    upstreamPort = (upstream.address() as AddressInfo).port;
    await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    const base = readFileSync(join(LESSOR_HOME, "lessor.toml"), "utf8");
    writeFileSync(
      join(LESSOR_HOME, "lessor.toml"),
      `${base}\n[proxy]\nports = [${upstreamPort}]\nallow = ["127.0.0.1"]\nhosts = { "api.test.example" = "127.0.0.1" }\nupstream_ca = "${join(root, "upstream-ca.pem")}"\n`,
      { mode: 0o600 },
    );
    writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
    const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    try {
      await vault.admin().storeSecret({ name: "github-token", value: CANARY, kind: "pat" });
      await vault.admin().storeSecret({ name: "deploy-key", value: `${CANARY}-deploy` });
    } finally {
      await vault.close();
    }
    child = spawn(process.execPath, [BIN, "mcp", "--agent", "claude", "--http", "127.0.0.1:0", "--token-file", TOKEN_FILE], {
      env: { HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1", LESSOR_HOME },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
    url = (await waitFor(/serving agent "claude" .* on (http:\/\/127\.0\.0\.1:\d+\/mcp)/))[1]!;
    await waitFor(/the bearer token is in/);
    token = readFileSync(TOKEN_FILE, "utf8").trim();
  });

  after(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
    }
    upstream?.close();
    transcript.push(stderr);
    for (const t of transcript) assert.ok(!t.includes(CANARY), "the canary appears in a result or on stderr");
  });

  test("the token file is 0600 and holds a 256-bit token; the token is not printed on stderr", () => {
    assert.equal(statSync(TOKEN_FILE).mode & 0o777, 0o600);
    assert.match(token, /^[A-Za-z0-9_-]{43}$/);
    assert.ok(!stderr.includes(token));
  });

  test("tools work over HTTP: list, request access, http_request with injection, scrubbed echo, revoke", async () => {
    const client = await connect();
    try {
      const { tools } = await client.listTools();
      assert.ok(tools.some((t) => t.name === "request_access"));
      const list = await call(client, "list_secrets");
      assert.deepEqual(list.doc["secrets"].map((s: { secret: string }) => s.secret), ["global/deploy-key", "global/github-token"]);
      const lease = await call(client, "request_access", { secret: "github-token" });
      assert.equal(lease.isError, false, lease.text);
      const r = await call(client, "http_request", { method: "GET", url: `https://api.test.example:${upstreamPort}/echo`, headers: { Authorization: `Bearer ${lease.doc["placeholder"]}` } });
      assert.equal(r.isError, false, r.text);
      assert.equal(seenAuth.at(-1), `Bearer ${CANARY}`, "the upstream got the real credential");
      assert.equal(r.doc["body"], `you sent: Bearer ${lease.doc["placeholder"]}\n`, "the echo came back masked");
      const rv = await call(client, "revoke", { leaseId: lease.doc["leaseId"] });
      assert.equal(rv.doc["revoked"], true);
    } finally {
      await client.close();
    }
  });

  test("approval over HTTP: the elicitation request reaches the client on the call's stream; the person approves on the page", async () => {
    let opened = "";
    const client = await connect(async (pageUrl) => {
      opened = pageUrl;
      const get = await fetch(pageUrl);
      const csrf = /name="csrf" value="([A-Za-z0-9_-]+)"/.exec(await get.text())![1]!;
      const post = await fetch(pageUrl, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: `decision=approve&csrf=${csrf}` });
      assert.equal(post.status, 200);
      return { action: "accept" };
    });
    try {
      const r = await call(client, "request_access", { secret: "deploy-key", reason: "release" });
      assert.equal(r.isError, false, r.text);
      assert.match(opened, /^http:\/\/127\.0\.0\.1:\d+\/approval\//);
      assert.equal(typeof r.doc["placeholder"], "string");
    } finally {
      await client.close();
    }
    // Without elicitation support: the terminal path.
    const plain = await connect();
    try {
      const p = await call(plain, "request_access", { secret: "deploy-key" });
      assert.equal(p.doc["status"], "approval_pending");
      assert.match(String(p.doc["next"]), /lessor approve [0-9a-f-]{36}/);
    } finally {
      await plain.close();
    }
  });

  test("two MCP sessions at once act for the same agent", async () => {
    const [a, b] = await Promise.all([connect(), connect()]);
    try {
      const [x, y] = await Promise.all([call(a, "list_leases"), call(b, "list_leases")]);
      assert.equal(x.doc["agent"], "claude");
      assert.equal(y.doc["agent"], "claude");
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  test("no token, a wrong token, or another scheme: 401, and the SDK client cannot connect", async () => {
    const u = new URL(url);
    const host = u.host;
    const none = await raw({ host });
    assert.equal(none.status, 401);
    assert.match(String(none.headers["www-authenticate"]), /^Bearer/);
    const wrong = await raw({ host, authorization: `Bearer ${token.slice(0, -1)}${token.endsWith("A") ? "B" : "A"}` });
    assert.equal(wrong.status, 401);
    assert.equal((await raw({ host, authorization: `Basic ${Buffer.from(`x:${token}`).toString("base64")}` })).status, 401);
    assert.equal((await raw({ host, authorization: `Bearer ${token}x` })).status, 401);
    assert.equal((await raw({ host, authorization: `Bearer ${token},Bearer ${token}` })).status, 401);
    assert.ok(!none.text.includes(token) && !wrong.text.includes(token));
    const bad = new Client({ name: "no-token", version: "1" });
    await assert.rejects(bad.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { Authorization: "Bearer wrong" } } })));
  });

  test("a foreign Origin is 403 even with the token; a loopback Origin passes", async () => {
    const host = new URL(url).host;
    const auth = `Bearer ${token}`;
    for (const origin of ["https://evil.example", "http://127.0.0.1.evil.example", "null", "http://10.0.0.1:8080", "file://"]) {
      const r = await raw({ host, authorization: auth, origin });
      assert.equal(r.status, 403, origin);
    }
    // With a loopback Origin the request gets past the gate (a tools/list without a session: 400 from the MCP layer).
    const ok = await raw({ host, authorization: auth, origin: "http://localhost:3000" });
    assert.equal(ok.status, 400);
  });

  test("a foreign Host (DNS rebinding) is 403 even with the token", async () => {
    const auth = `Bearer ${token}`;
    const port = new URL(url).port;
    for (const host of [`evil.example:${port}`, `127.0.0.1:${Number(port) + 1}`, "127.0.0.1", `attacker.127.0.0.1.nip.io:${port}`]) {
      const r = await raw({ host, authorization: auth });
      assert.equal(r.status, 403, host);
    }
  });

  test("an unknown session id is 404; a body over the cap is 413", async () => {
    const host = new URL(url).host;
    const auth = `Bearer ${token}`;
    assert.equal((await raw({ host, authorization: auth, "mcp-session-id": "00000000-0000-4000-8000-000000000000" })).status, 404);
    const big = await raw({ host, authorization: auth, "content-length": String(9 * 1024 * 1024) }, "").catch(() => ({ status: 413 }));
    assert.equal(big.status, 413);
  });

  test("a non-loopback --http is refused before the vault is opened or anything listens", () => {
    for (const addr of ["0.0.0.0:8765", "192.168.1.10:8765", "[::]:8765", "example.com:8765", "10.0.0.1:0", "[fe80::1]:80"]) {
      const r = spawnSync(process.execPath, [BIN, "mcp", "--agent", "claude", "--http", addr], { env: { HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1", LESSOR_HOME }, encoding: "utf8", timeout: 20_000 });
      assert.notEqual(r.status, 0, addr);
      assert.match(r.stderr, /loopback/, addr);
    }
  });
  test("an --http port another program holds is a clear refusal (exit 2, naming the address), not an internal error", async () => {
    const holder = http.createServer();
    await new Promise<void>((r) => holder.listen(0, "127.0.0.1", () => r()));
    try {
      const addr = `127.0.0.1:${(holder.address() as AddressInfo).port}`;
      const r = spawnSync(process.execPath, [BIN, "mcp", "--agent", "claude", "--http", addr], { env: { HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1", LESSOR_HOME }, encoding: "utf8", timeout: 20_000 });
      assert.equal(r.status, 2, r.stderr);
      assert.ok(r.stderr.includes(`--http: cannot listen on ${addr} (EADDRINUSE)`), r.stderr);
      assert.doesNotMatch(r.stderr, /internal error/);
    } finally {
      holder.close();
    }
  });
});

describe("the HTTP gate's parts", () => {
  test("parseLoopbackAddress takes loopback literals only", () => {
    assert.deepEqual(parseLoopbackAddress("127.0.0.1:0"), { host: "127.0.0.1", port: 0 });
    assert.deepEqual(parseLoopbackAddress("[::1]:8765"), { host: "::1", port: 8765 });
    assert.deepEqual(parseLoopbackAddress("localhost:1"), { host: "127.0.0.1", port: 1 });
    assert.deepEqual(parseLoopbackAddress("127.1.2.3:80"), { host: "127.1.2.3", port: 80 });
    for (const bad of ["0.0.0.0:1", "8765", ":8765", "127.0.0.1", "127.0.0.1:99999", "[::]:1", "[::ffff:10.0.0.1]:1", "loopback:1", "127.0.0.1.example.com:1"])
      assert.throws(() => parseLoopbackAddress(bad), /--http/, bad);
  });

  test("isLoopbackOrigin", () => {
    for (const o of ["http://127.0.0.1:8765", "http://localhost", "https://[::1]:3000", "http://127.9.9.9"]) assert.equal(isLoopbackOrigin(o), true, o);
    for (const o of ["null", "https://example.com", "http://127.0.0.1.example.com", "http://localhost.example.com", "chrome-extension://abc", "http://0.0.0.0", "http://user@127.0.0.1"])
      assert.equal(isLoopbackOrigin(o), false, o);
  });

  test("tokenMatcher: exact bearer token only", () => {
    const m = tokenMatcher("abc_DEF-123");
    assert.equal(m("Bearer abc_DEF-123"), true);
    for (const h of [undefined, "", "Bearer ", "bearer abc_DEF-123", "Bearer abc_DEF-12", "Bearer abc_DEF-1234", "Bearer  abc_DEF-123", "Basic abc_DEF-123"]) assert.equal(m(h), false, String(h));
  });
});
