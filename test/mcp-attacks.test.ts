/**
 * Attacks on `lessor mcp` (docs/mcp.md) as a hostile agent (the MCP client) and as a hostile web page
 * in the user's browser (the HTTP transport, the approval page).
 *
 * Everything runs in this process: the vault opened from a temp home, `createMcpSession` with the
 * in-process backend (the owner's server acting for agent "claude", as `lessor mcp --agent claude`),
 * the SDK's real `Client` over a newline-delimited JSON stream (the stdio framing, so every message is
 * really serialized), `serveHttp` for the HTTP transport, and a local HTTPS upstream.
 *
 * Nothing leaves the machine: `net.createConnection`/`net.connect` and every DNS lookup are replaced
 * (before any proxy exists) by instruments that record each target and refuse anything but loopback
 * and Unix sockets; name lookups always fail (no query is ever sent). `[proxy] hosts` resolves the
 * test names to 127.0.0.1. A final test asserts that no refused address was ever connected to.
 */
import { createRequire, syncBuiltinESMExports } from "node:module";
import { PassThrough } from "node:stream";
import { randomBytes } from "node:crypto";
import { gzipSync } from "node:zlib";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

// ---- network instruments: installed before anything that could connect is created ----
const require = createRequire(import.meta.url);
const netMod = require("node:net") as typeof import("node:net");
const dnsMod = require("node:dns") as typeof import("node:dns");
const dnsPromises = require("node:dns/promises") as typeof import("node:dns/promises");
const realCreateConnection = netMod.createConnection;
/** Every TCP target anything in this process asked net.createConnection for. */
const connects: string[] = [];
/** Targets refused by the instrument (must stay empty). */
const violations: string[] = [];
/** Names something tried to look up (answered ENOTFOUND, nothing sent). */
const lookups: string[] = [];
const LOOPBACK = new Set(["127.0.0.1", "::1", "localhost", "::ffff:127.0.0.1"]);
function instrumentedConnect(...args: unknown[]): Socket {
  const a0 = args[0];
  let host: string | undefined;
  let port: unknown;
  let path: string | undefined;
  if (typeof a0 === "object" && a0 !== null) {
    const o = a0 as { host?: string; port?: unknown; path?: string };
    host = o.host;
    port = o.port;
    path = o.path;
  } else if (typeof a0 === "number" || (typeof a0 === "string" && /^\d+$/.test(a0))) {
    port = a0;
    host = typeof args[1] === "string" ? (args[1] as string) : undefined;
  } else if (typeof a0 === "string") path = a0;
  if (path !== undefined) return (realCreateConnection as (...a: unknown[]) => Socket)(...args);
  const h = host ?? "localhost";
  connects.push(`${h}:${String(port)}`);
  if (!LOOPBACK.has(h)) {
    violations.push(`${h}:${String(port)}`);
    const s = new netMod.Socket();
    process.nextTick(() => s.destroy(Object.assign(new Error(`the test refused a connection to ${h}`), { code: "ECONNREFUSED" })));
    return s;
  }
  return (realCreateConnection as (...a: unknown[]) => Socket)(...args);
}
(netMod as { createConnection: unknown }).createConnection = instrumentedConnect;
(netMod as { connect: unknown }).connect = instrumentedConnect;
const notFound = (host: string): Error => Object.assign(new Error(`no lookups in this test (${host})`), { code: "ENOTFOUND" });
const realLookup = dnsMod.lookup;
const realLookupP = dnsPromises.lookup;
/** IP literals and localhost are answered locally by the real lookup (no query is sent for them). */
const localName = (host: string): boolean => netMod.isIP(host) !== 0 || host === "localhost";
(dnsPromises as { lookup: unknown }).lookup = async (host: string, ...rest: unknown[]) => {
  if (localName(host)) return (realLookupP as (...a: unknown[]) => unknown)(host, ...rest);
  lookups.push(host);
  throw notFound(host);
};
(dnsMod.promises as { lookup: unknown }).lookup = (dnsPromises as { lookup: unknown }).lookup;
(dnsMod as { lookup: unknown }).lookup = (host: string, ...rest: unknown[]) => {
  if (localName(host)) return (realLookup as (...a: unknown[]) => unknown)(host, ...rest);
  lookups.push(host);
  const cb = rest.at(-1) as (e: Error) => void;
  process.nextTick(() => cb(notFound(host)));
};
syncBuiltinESMExports();

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { ReadBuffer, serializeMessage } from "@modelcontextprotocol/sdk/shared/stdio.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { ElicitRequestSchema, type ElicitResult, type JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { inProcessApi } from "../src/backend/in-process.js";
import { VaultError } from "../src/base/errors.js";
import { createMcpSession, type McpSession } from "../src/mcp/server.js";
import { serveHttp, type HttpMcpServer } from "../src/mcp/http.js";
import { LocalCa } from "../src/proxy/ca.js";
import type { Vault } from "../src/vault/vault.js";
import type { ProxyConfig } from "../src/config/proxy-config.js";

// ---- secrets and policy ----
const CANARY = "ghp_" + randomBytes(18).toString("hex");
/** A password with the characters encoders change: & " < > / ' + \ */
const PW_CANARY = `Pw&"<x>/'+\\${randomBytes(10).toString("hex")}`;
const OTHER_CANARY = "sk-other-" + randomBytes(16).toString("hex");
const ROT_OLD = "rot-old-" + randomBytes(16).toString("hex");
const ROT_NEW = "rot-new-" + randomBytes(16).toString("hex");
const DEPLOY_CANARY = "deploy-" + randomBytes(16).toString("hex");
const FOREIGN_CANARY = "foreign-" + randomBytes(16).toString("hex");
const ALL_CANARIES = [CANARY, PW_CANARY, OTHER_CANARY, ROT_OLD, ROT_NEW, DEPLOY_CANARY, FOREIGN_CANARY];

const POLICY = `
[[rule]]
name = "api"
effect = "allow"
agents = ["claude"]
secrets = ["github-token", "pw", "rot-token"]
domains = ["api.test.example"]

[[rule]]
name = "other"
effect = "allow"
agents = ["claude"]
secrets = ["other-token"]
domains = ["other.test.example"]

[[rule]]
name = "gated"
effect = "allow"
agents = ["claude"]
secrets = ["deploy-key"]
domains = ["api.test.example"]
approval = "required"

[[rule]]
name = "theirs"
effect = "allow"
agents = ["someone-else"]
secrets = ["foreign-key"]
domains = ["api.test.example"]
`;

const root = mkdtempSync(join(tmpdir(), "lessor-mcp-attacks-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const LESSOR_HOME = join(HOME, ".lessor");

/** Every tool result text, error, JSON-RPC answer and log line: no canary may appear in any. */
const transcript: string[] = [];
const logs: string[] = [];
const log = (line: string): void => void logs.push(line);

const NAMES = ["CANARY", "PW_CANARY", "OTHER_CANARY", "ROT_OLD", "ROT_NEW", "DEPLOY_CANARY", "FOREIGN_CANARY"];
function noCanary(where: string, text: string): void {
  ALL_CANARIES.forEach((c, i) => {
    assert.ok(!text.includes(c), `a secret value (${NAMES[i]}) appears in ${where}`);
    // JSON-escaped too (a value with " or \ appears escaped inside a JSON text)
    assert.ok(!text.includes(JSON.stringify(c).slice(1, -1)), `a secret value (${NAMES[i]}, JSON-escaped) appears in ${where}`);
  });
}

// ---- the upstream: a local HTTPS server that echoes what it got in many shapes ----
interface Seen {
  host: string;
  url: string;
  auth: string;
}
const seen: Seen[] = [];
let upstream: https.Server;
let port = 0;

const htmlEscape = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
/** Go's encoding/json: <, >, & as \u003c \u003e \u0026 (the default, SetEscapeHTML(true)). */
const goJson = (s: string): string => JSON.stringify(s).replace(/&/g, "\\u0026").replace(/</g, "\\u003c").replace(/>/g, "\\u003e");
/** Python's json.dumps / PHP json_encode: / as \/ (PHP), non-ASCII as \uXXXX; " and \ escaped. */
const phpJson = (s: string): string => JSON.stringify(s).replace(/\//g, "\\/");

function upstreamHandler(req: http.IncomingMessage, res: http.ServerResponse): void {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    const auth = String(req.headers.authorization ?? "");
    seen.push({ host: String(req.headers.host ?? ""), url: req.url ?? "", auth });
    const u = new URL(req.url ?? "/", "https://x");
    const tok = auth.replace(/^Bearer /, "");
    switch (u.pathname) {
      case "/echo":
        res.writeHead(200, { "content-type": "text/plain" });
        return void res.end(`you sent: ${auth}\n`);
      case "/echo-header":
        res.writeHead(200, { "content-type": "text/plain", "x-echo": auth, "set-cookie": [`a=${tok}`, "b=1"], "www-authenticate": `Bearer error="invalid_token", token="${tok}"` });
        return void res.end("ok\n");
      case "/echo-json":
        res.writeHead(200, { "content-type": "application/json" });
        return void res.end(`{"headers":{"Authorization":${JSON.stringify(auth)}}}`);
      case "/echo-php-json":
        res.writeHead(200, { "content-type": "application/json" });
        return void res.end(`{"headers":{"Authorization":${phpJson(auth)}}}`);
      case "/echo-go-json":
        res.writeHead(200, { "content-type": "application/json" });
        return void res.end(`{"headers":{"Authorization":${goJson(auth)}}}`);
      case "/echo-html":
        res.writeHead(401, { "content-type": "text/html" });
        return void res.end(`<p>invalid token ${htmlEscape(tok)}</p>`);
      case "/echo-gzip":
        res.writeHead(200, { "content-type": "text/plain", "content-encoding": "gzip" });
        return void res.end(gzipSync(Buffer.from(`you sent: ${auth}\n`)));
      case "/echo-split": {
        // One byte per write: the value crosses many chunk boundaries.
        res.writeHead(200, { "content-type": "text/plain" });
        const body = Buffer.from(`you sent: ${auth}\n`);
        let i = 0;
        const step = (): void => {
          if (i >= body.length) return void res.end();
          res.write(body.subarray(i, i + 1));
          i++;
          setImmediate(step);
        };
        return step();
      }
      case "/echo-straddle": {
        // The value sits across the 64 KiB cut the MCP layer makes.
        res.writeHead(200, { "content-type": "text/plain" });
        const pad = 64 * 1024 - Math.floor(tok.length / 2);
        return void res.end("p".repeat(pad) + tok + "\n");
      }
      case "/echo-problem":
        res.writeHead(403, { "content-type": "application/problem+json" });
        return void res.end(JSON.stringify({ type: "urn:lessor:proxy:lease_revoked", reason: "lease_revoked", detail: `your token ${tok} is revoked` }));
      case "/redirect":
        res.writeHead(302, { location: u.searchParams.get("to") ?? "/" });
        return void res.end();
      default:
        res.writeHead(200, { "content-type": "application/json" });
        return void res.end(JSON.stringify({ ok: true }));
    }
  });
}

// ---- the MCP client over a serialized line stream (MCP's stdio framing) ----
class LineClientTransport implements Transport {
  onmessage?: (m: JSONRPCMessage) => void;
  onclose?: () => void;
  onerror?: (e: Error) => void;
  readonly #buf = new ReadBuffer();
  constructor(
    readonly toServer: PassThrough,
    readonly fromServer: PassThrough,
    readonly raw: (line: string) => void,
  ) {}
  async start(): Promise<void> {
    this.fromServer.on("data", (c: Buffer) => {
      this.raw(c.toString("utf8"));
      this.#buf.append(c);
      for (;;) {
        let m: JSONRPCMessage | null;
        try {
          m = this.#buf.readMessage();
        } catch (e) {
          this.onerror?.(e as Error);
          continue;
        }
        if (m === null) break;
        this.onmessage?.(m);
      }
    });
  }
  async send(m: JSONRPCMessage): Promise<void> {
    this.toServer.write(serializeMessage(m));
  }
  async close(): Promise<void> {
    this.toServer.end();
    this.onclose?.();
  }
}

interface Conn {
  client: Client;
  /** Writes a raw line to the server (no SDK). */
  rawLine(text: string): void;
  /** Waits for the server's JSON-RPC answer with this id (raw lines). */
  answer(id: number | string, ms?: number): Promise<Record<string, any>>;
  call(name: string, args?: unknown): Promise<{ isError: boolean; doc: Record<string, any>; text: string }>;
  close(): Promise<void>;
}

let vault: Vault;
let session: McpSession;
let proxyConfig: ProxyConfig;

async function connectStream(server = session.newServer(), elicit?: (url: string) => Promise<ElicitResult>): Promise<Conn> {
  const toServer = new PassThrough();
  const fromServer = new PassThrough();
  const st = new StdioServerTransport(toServer, fromServer);
  server.onerror = (e) => log(`server error ${e.name}`);
  await server.connect(st);
  let rawText = "";
  const transport = new LineClientTransport(toServer, fromServer, (t) => {
    rawText += t;
    transcript.push(t);
  });
  const client = new Client({ name: "attacker", version: "1.0.0" }, elicit ? { capabilities: { elicitation: { url: {} } } } : {});
  if (elicit) client.setRequestHandler(ElicitRequestSchema, async (req) => elicit((req.params as { url: string }).url));
  await client.connect(transport);
  return {
    client,
    rawLine: (text) => void toServer.write(text.endsWith("\n") ? text : `${text}\n`),
    async answer(id, ms = 10_000) {
      const end = Date.now() + ms;
      for (;;) {
        for (const line of rawText.split("\n")) {
          if (line.trim() === "") continue;
          try {
            const m = JSON.parse(line) as Record<string, any>;
            if (m["id"] === id && ("result" in m || "error" in m)) return m;
          } catch {
            /* a partial line */
          }
        }
        if (Date.now() > end) throw new Error(`no answer with id ${String(id)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async call(name, args = {}) {
      const r = (await client.callTool({ name, arguments: args as Record<string, unknown> }, undefined, { timeout: 120_000 })) as {
        isError?: boolean;
        content: { type: string; text: string }[];
      };
      const text = r.content.map((c) => c.text).join("\n");
      transcript.push(text);
      return { isError: r.isError === true, doc: JSON.parse(text) as Record<string, any>, text };
    },
    async close() {
      await client.close().catch(() => {});
      await server.close().catch(() => {});
    },
  };
}

async function toolCallRows(): Promise<number> {
  const rows = await vault.admin().auditQuery({ types: ["tool_call"], limit: 100_000 });
  return rows.length;
}

let ca: LocalCa;

before(async () => {
  mkdirSync(HOME, { recursive: true });
  ca = LocalCa.create({ permitted: ["api.test.example", "other.test.example"] });
  writeFileSync(join(root, "upstream-ca.pem"), ca.certPem);
  upstream = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, upstreamHandler);
  await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
  port = (upstream.address() as AddressInfo).port;
  await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
  vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  const admin = vault.admin();
  await admin.storeSecret({ name: "github-token", value: CANARY, kind: "pat" });
  await admin.storeSecret({ name: "pw", value: PW_CANARY });
  await admin.storeSecret({ name: "other-token", value: OTHER_CANARY });
  await admin.storeSecret({ name: "rot-token", value: ROT_OLD });
  await admin.storeSecret({ name: "deploy-key", value: DEPLOY_CANARY });
  await admin.storeSecret({ name: "foreign-key", value: FOREIGN_CANARY });
  proxyConfig = {
    egress: "strict",
    ports: [port],
    allow: ["127.0.0.1"],
    hosts: { "api.test.example": "127.0.0.1", "other.test.example": "127.0.0.1" },
    upstreamCa: join(root, "upstream-ca.pem"),
    inject: [],
  };
  session = createMcpSession({ api: inProcessApi(vault), identity: { agent: "claude", role: "admin" }, proxyConfig, log, tmp: root });
});

after(async () => {
  await session?.close();
  await vault?.close();
  upstream?.close();
});

describe("hostile agent: malformed tool input", () => {
  let c: Conn;
  let own: McpSession;
  before(async () => {
    own = createMcpSession({ api: inProcessApi(vault), identity: { agent: "claude", role: "admin" }, proxyConfig, log, tmp: root });
    c = await connectStream(own.newServer());
  });
  after(async () => {
    await c.close();
    await own.close();
  });

  test("wrong types, unknown fields, __proto__/constructor keys, an agent field: invalid_request, nothing runs, nothing echoed", async () => {
    const before = seen.length;
    const cases: [string, unknown][] = [
      ["request_access", { secret: 42 }],
      ["request_access", { secret: ["github-token"] }],
      ["request_access", JSON.parse(`{"secret":"foreign-key","constructor":{"prototype":{"agent":"someone-else"}}}`)],
      ["request_access", { secret: "foreign-key", agent: "someone-else" }],
      ["explain_access", { secret: "foreign-key", agent: "someone-else" }],
      ["list_leases", { agent: "someone-else" }],
      ["http_request", { method: "GET", url: `https://api.test.example:${port}/`, headers: { host: "evil.example" } }],
      ["http_request", { method: "GET", url: `https://api.test.example:${port}/`, headers: { HOST: "evil.example" } }],
      ["http_request", { method: "GET", url: `https://api.test.example:${port}/`, headers: { "Proxy-Authorization": "x" } }],
      ["http_request", { method: "GET", url: `https://api.test.example:${port}/`, headers: { "x-a": "v\r\nHost: evil.example" } }],
      ["http_request", { method: "GET", url: `https://api.test.example:${port}/`, headers: { "x-a\r\nHost": "v" } }],
      ["http_request", { method: "get", url: `https://api.test.example:${port}/` }],
      ["http_request", { method: "CONNECT", url: `https://api.test.example:${port}/` }],
      ["http_request", { method: "GET", url: 42 }],
      ["http_request", { method: "GET", url: "x".repeat(9_000_000) }],
      ["http_request", { method: "GET", url: `https://api.test.example:${port}/`, body: { a: 1 } }],
      ["revoke", { leaseId: { $ne: null } }],
      ["list_secrets", { x: 1 }],
    ];
    for (const [name, args] of cases) {
      const r = await c.call(name, args);
      assert.equal(r.isError, true, `${name} ${JSON.stringify(args).slice(0, 100)} → ${r.text.slice(0, 300)}`);
      assert.equal(r.doc["error"]["code"], "invalid_request", `${name}: ${r.text.slice(0, 300)}`);
      assert.ok(!r.text.includes("evil.example"), "the message does not echo what was sent");
      assert.ok(r.text.length < 4000, "the message does not echo what was sent");
    }
    assert.equal(seen.length, before, "nothing reached the upstream");
    const leases = await vault.admin().listLeases({ agent: "someone-else" });
    assert.equal(leases.length, 0, "no lease was taken for another agent");
    const still = await c.call("list_secrets");
    assert.equal(still.isError, false);
  });

  test("a __proto__ key never smuggles fields: it cannot supply the secret, domains or an agent, nor pollute anything", async () => {
    // Alone: the prototype may not supply the required secret.
    const alone = await c.call("request_access", JSON.parse(`{"__proto__":{"secret":"github-token","agent":"someone-else"}}`));
    assert.equal(alone.isError, true, alone.text);
    assert.equal(alone.doc["error"]["code"], "invalid_request");
    // With an own secret: the prototype's domains/ttl/agent are not applied (the SDK drops the key before lessor's schema).
    const mixed = await c.call("request_access", JSON.parse(`{"secret":"github-token","__proto__":{"domains":["other.test.example"],"ttl":"1s","agent":"someone-else","secret":"foreign-key"}}`));
    if (!mixed.isError) {
      assert.equal(mixed.doc["secret"], "global/github-token");
      assert.deepEqual(mixed.doc["domains"], ["api.test.example"], "domains came from the prototype");
      await c.call("revoke", { leaseId: mixed.doc["leaseId"] });
    } else assert.equal(mixed.doc["error"]["code"], "invalid_request");
    assert.equal(({} as Record<string, unknown>)["agent"], undefined, "Object.prototype polluted");
    assert.equal(({} as Record<string, unknown>)["domains"], undefined, "Object.prototype polluted");
    assert.equal((await vault.admin().listLeases({ agent: "someone-else" })).length, 0);
    // A __proto__ header set is dropped (never a Host of the agent's choosing reaches anything).
    const before = seen.length;
    const h = await c.call("http_request", { method: "GET", url: `https://api.test.example:${port}/`, headers: JSON.parse(`{"__proto__":{"host":"evil.example"}}`) });
    assert.equal(h.isError, true, h.text);
    assert.equal(seen.length, before);
  });

  test("raw JSON-RPC abuse (bad JSON, deep nesting, prototype names as tools/methods, batches) never stops the server, and each tools/call is audited", async () => {
    const rows0 = await toolCallRows();
    c.rawLine("{not json");
    c.rawLine("[".repeat(200_000) + "]".repeat(200_000));
    c.rawLine(`{"jsonrpc":"2.0","id":9001,"method":"tools/call","params":{"name":"list_secrets","arguments":${"[".repeat(50_000)}${"]".repeat(50_000)}}}`);
    c.rawLine(`{"jsonrpc":"2.0","id":9002,"method":"tools/call","params":{"name":"list_secrets","arguments":{"a":${"[".repeat(50_000)}${"]".repeat(50_000)}}}}`);
    for (const [id, name] of [
      [9003, "__proto__"],
      [9004, "constructor"],
      [9005, "toString"],
      [9006, "hasOwnProperty"],
    ] as const)
      c.rawLine(JSON.stringify({ jsonrpc: "2.0", id, method: "tools/call", params: { name, arguments: {} } }));
    c.rawLine(JSON.stringify({ jsonrpc: "2.0", id: 9007, method: "__proto__", params: {} }));
    c.rawLine(JSON.stringify({ jsonrpc: "2.0", id: 9008, method: "tools/call", params: { name: 7 } }));
    c.rawLine(JSON.stringify({ jsonrpc: "2.0", id: 9009, method: "tools/call" }));
    c.rawLine(JSON.stringify({ jsonrpc: "2.0", id: 9010, method: "tools/call", params: JSON.parse(`{"name":"list_secrets","__proto__":{"name":"x"}}`) }));
    c.rawLine(JSON.stringify([{ jsonrpc: "2.0", id: 9011, method: "tools/call", params: { name: "list_secrets" } }]));
    for (const id of [9001, 9002, 9003, 9004, 9005, 9006, 9007, 9008, 9009]) {
      const a = await c.answer(id);
      assert.ok("error" in a || a["result"]?.["isError"] === true, `id ${id}: ${JSON.stringify(a).slice(0, 200)}`);
    }
    const ok = await c.call("list_leases");
    assert.equal(ok.isError, false, "the server still serves");
    // 9001..9006, 9008..9010 are tools/call requests (9010 may succeed); plus the list_leases: each one row.
    const rows1 = await toolCallRows();
    assert.ok(rows1 - rows0 >= 10, `every tools/call is one tool_call row (got ${rows1 - rows0})`);
  });
});

describe("hostile agent: http_request", () => {
  let c: Conn;
  let gh: Record<string, any>;
  let pw: Record<string, any>;
  let other: Record<string, any>;
  before(async () => {
    c = await connectStream();
    gh = (await c.call("request_access", { secret: "github-token" })).doc;
    pw = (await c.call("request_access", { secret: "pw" })).doc;
    other = (await c.call("request_access", { secret: "other-token" })).doc;
    assert.equal(typeof gh["placeholder"], "string");
    assert.equal(typeof pw["placeholder"], "string");
    assert.equal(typeof other["placeholder"], "string");
  });
  after(async () => c.close());

  const get = (path: string, placeholder: string, host = `api.test.example:${port}`, extra: Record<string, string> = {}) =>
    c.call("http_request", { method: "GET", url: `https://${host}${path}`, headers: { Authorization: `Bearer ${placeholder}`, ...extra } });

  test("sanity: the upstream gets the value, the echo comes back masked", async () => {
    const r = await get("/echo", gh["placeholder"]);
    assert.equal(r.isError, false, r.text);
    assert.equal(seen.at(-1)!.auth, `Bearer ${CANARY}`);
    assert.match(String(r.doc["body"]), /^you sent: Bearer ghp_[0-9a-f]{36}\n$/);
    noCanary("the echo", r.text);
  });

  for (const [path, what] of [
    ["/echo", "in the body"],
    ["/echo-header", "in response headers (x-echo, set-cookie array, www-authenticate)"],
    ["/echo-json", "JSON-escaped"],
    ["/echo-php-json", "JSON-escaped with \\/ (PHP)"],
    ["/echo-go-json", "JSON-escaped Go-style (\\u0026 \\u003c \\u003e)"],
    ["/echo-html", "HTML-escaped in an error page"],
    ["/echo-gzip", "gzip-compressed"],
    ["/echo-split", "one byte per chunk"],
    ["/echo-straddle", "across the 64 KiB cut"],
    ["/echo-problem", "in a forged lessor problem document"],
  ] as const) {
    test(`echo masking: a password with & " < > / ' + \\ echoed ${what} never comes back`, async () => {
      const r = await get(path, pw["placeholder"]);
      assert.equal(seen.at(-1)!.auth, `Bearer ${PW_CANARY}`, "the upstream got the real value");
      noCanary(`the result of ${path}`, r.text);
      // Decode what the agent could decode, and look again.
      const body = String(r.doc["body"] ?? "");
      const decoded = [body, r.doc["bodyEncoding"] === "base64" ? Buffer.from(body, "base64").toString("latin1") : ""];
      try {
        decoded.push(JSON.stringify(JSON.parse(body)));
        decoded.push(String(JSON.parse(body)?.headers?.Authorization ?? ""));
      } catch {
        /* not JSON */
      }
      decoded.push(body.replace(/&amp;/g, "&").replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"').replace(/&#39;/g, "'"));
      for (const d of decoded) assert.ok(!d.includes(PW_CANARY), `the password can be read back from the response to ${path} (${what}): ${r.text.slice(0, 300)}`);
    });
  }

  test("echo masking after the secret is rotated mid-session: the new value the proxy injects is masked too", async () => {
    const rot = await c.call("request_access", { secret: "rot-token" });
    assert.equal(rot.isError, false, rot.text);
    const first = await get("/echo", rot.doc["placeholder"]);
    assert.equal(seen.at(-1)!.auth, `Bearer ${ROT_OLD}`);
    assert.equal(first.doc["body"], `you sent: Bearer ${rot.doc["placeholder"]}\n`);
    await vault.admin().rotateSecret({ scope: "global", name: "rot-token" }, ROT_NEW);
    const second = await get("/echo", rot.doc["placeholder"]);
    if (!second.isError) {
      const sentNow = seen.at(-1)!.auth;
      assert.ok(!second.text.includes(ROT_NEW), `after a rotation the upstream got ${sentNow === `Bearer ${ROT_NEW}` ? "the NEW value" : "a value"} and its echo came back unmasked: ${second.text.slice(0, 200)}`);
    }
    const hdr = await get("/echo-header", rot.doc["placeholder"]);
    assert.ok(!hdr.text.includes(ROT_NEW), "the new value comes back unmasked in a response header");
  });

  test("host tricks: uppercase, trailing dot, userinfo, IDN homograph, percent-encoding, IPv6 and decimal literals never carry the credential elsewhere", async () => {
    const hostsBefore = seen.length;
    const cases = [
      `API.TEST.EXAMPLE:${port}`,
      `api.test.example.:${port}`,
      `api.test.example%2e:${port}`,
      `api.test.еxample:${port}`, // Cyrillic е
      `api.test.example.evil.test:${port}`,
      `evil.test#@api.test.example:${port}`,
      `127.0.0.1:${port}`,
      `2130706433:${port}`,
      `0x7f.1:${port}`,
      `[::1]:${port}`,
      `[::ffff:127.0.0.1]:${port}`,
      `[::ffff:a9fe:a9fe]:${port}`,
      `[fd00:ec2::254]:${port}`,
      `169.254.169.254:${port}`,
      `api.test.example:443`,
    ];
    const results: string[] = [];
    for (const h of cases) {
      const r = await get("/echo", gh["placeholder"], h);
      results.push(`${h} → ${r.isError ? r.doc["error"]["code"] : r.doc["status"]}`);
      if (!r.isError) assert.equal(seen.at(-1)!.host.toLowerCase(), `api.test.example:${port}`, `${h} reached the upstream as ${seen.at(-1)!.host}`);
      noCanary(`http_request to ${h}`, r.text);
    }
    for (const s of seen.slice(hostsBefore)) assert.equal(s.host.toLowerCase(), `api.test.example:${port}`, `the credential went to Host ${s.host}`);
    // userinfo forms are refused before anything is sent
    for (const u of [`https://x@api.test.example:${port}/`, `https://api.test.example:${port}@evil.test:${port}/`, `https://${gh["placeholder"]}:x@api.test.example:${port}/`]) {
      const r = await c.call("http_request", { method: "GET", url: u });
      assert.equal(r.isError, true, u);
    }
    assert.deepEqual(violations, [], `a refused address was connected to: ${violations.join(", ")} (${results.join("; ")})`);
  });

  test("redirects are never followed: 302 to another host, to http://, to 127.0.0.1 and to metadata reach nothing else", async () => {
    const connectsBefore = connects.length;
    for (const to of [`https://other.test.example:${port}/echo`, `http://api.test.example:${port}/echo`, `https://127.0.0.1:${port}/echo`, "http://169.254.169.254/latest/meta-data/", "https://evil.example/"]) {
      const before = seen.length;
      const r = await get(`/redirect?to=${encodeURIComponent(to)}`, gh["placeholder"]);
      assert.equal(r.isError, false, r.text);
      assert.equal(r.doc["status"], 302);
      assert.equal(seen.length, before + 1, "only the first request reached an upstream");
    }
    const newTargets = connects.slice(connectsBefore).filter((t) => t !== `127.0.0.1:${port}`);
    assert.deepEqual(newTargets, [], "no connection to anything but the upstream");
    assert.deepEqual(violations, []);
  });

  test("tripwire: another lease's placeholder sent to api.test.example (header, query, base64) is refused and never reaches it", async () => {
    const before = seen.length;
    const r = await c.call("http_request", { method: "GET", url: `https://api.test.example:${port}/echo?t=${other["placeholder"]}` });
    assert.equal(r.isError, true, r.text);
    assert.equal(seen.length, before);
    noCanary("tripwire refusal", r.text);
  });

  test("header values outside latin1 or huge header sets fail cleanly and the server keeps serving", async () => {
    const r1 = await c.call("http_request", { method: "GET", url: `https://api.test.example:${port}/`, headers: { "x-a": "€uro" } });
    noCanary("non-latin1 header", r1.text);
    const many: Record<string, string> = {};
    for (let i = 0; i < 64; i++) many[`x-h${i}`] = "v".repeat(8192);
    const r2 = await c.call("http_request", { method: "GET", url: `https://api.test.example:${port}/`, headers: many });
    noCanary("huge headers", r2.text);
    const ok = await get("/echo", gh["placeholder"]);
    assert.equal(ok.isError, false, ok.text);
  });

  test("50 concurrent http_requests: all answered, none leaks, the server survives", async () => {
    const rs = await Promise.all(Array.from({ length: 50 }, (_, i) => get(i % 2 ? "/echo" : "/echo-header", gh["placeholder"])));
    for (const r of rs) {
      assert.equal(r.isError, false, r.text);
      noCanary("a concurrent call", r.text);
    }
  });
});

describe("hostile agent: after revocation", () => {
  test("a lease revoked by the agent, or by the owner elsewhere, or ended by the session, sends nothing more", async () => {
    const c = await connectStream();
    try {
      const a = (await c.call("request_access", { secret: "github-token" })).doc;
      const b = (await c.call("request_access", { secret: "github-token" })).doc;
      const call = (p: string) => c.call("http_request", { method: "GET", url: `https://api.test.example:${port}/echo`, headers: { Authorization: `Bearer ${p}` } });
      assert.equal((await call(a["placeholder"])).isError, false);
      await c.call("revoke", { leaseId: a["leaseId"] });
      let before = seen.length;
      const r1 = await call(a["placeholder"]);
      assert.ok(r1.isError || !seen.slice(before).some((s) => s.auth.includes(CANARY)), `after revoke the credential was still sent: ${r1.text.slice(0, 200)}`);
      await vault.admin().revokeLease(b["leaseId"], "owner revokes");
      before = seen.length;
      const r2 = await call(b["placeholder"]);
      assert.equal(r2.isError, true, r2.text);
      assert.ok(!seen.slice(before).some((s) => s.auth.includes(CANARY)), "after the owner revoked, the credential was still sent");
      // Revoke a lease of another agent: lease_not_found, and it lives on.
      const theirs = await vault.admin().requestLease({ agent: "someone-else", secret: { scope: "global", name: "foreign-key" } });
      const rv = await c.call("revoke", { leaseId: theirs.id });
      assert.equal(rv.doc["error"]["code"], "lease_not_found");
      const live = await vault.admin().listLeases({ agent: "someone-else", liveAt: Date.now() });
      assert.ok(live.some((l) => l.id === theirs.id));
      const mine = await c.call("list_leases", { live: false });
      assert.ok(mine.doc["leases"].every((l: { leaseId: string }) => l.leaseId !== theirs.id));
    } finally {
      await c.close();
    }
  });
});

// ---- the HTTP transport ----
function raw(p: number, headers: Record<string, string>, body?: string | Buffer, method = "POST", path = "/mcp"): Promise<{ status: number; text: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: p, path, method, headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, text: Buffer.concat(chunks).toString("utf8"), headers: res.headers }));
      res.on("error", reject);
    });
    req.on("error", reject);
    if (body === undefined) req.end();
    else req.end(body);
  });
}
const INIT = JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "x", version: "1" } } });

describe("hostile web page / local process: the HTTP transport", () => {
  let srv: HttpMcpServer;
  const token = randomBytes(32).toString("base64url");
  before(async () => {
    srv = await serveHttp({ newSession: () => createMcpSession({ api: inProcessApi(vault), identity: { agent: "claude", role: "admin" }, proxyConfig, log, tmp: root }), address: { host: "127.0.0.1", port: 0 }, token, log });
  });
  after(async () => srv.close());

  test("Host and Origin games: every foreign or odd form is refused (403) even with the token; no token is 401", async () => {
    const p = srv.port;
    const auth = `Bearer ${token}`;
    const badHosts = [`localhost.:${p}`, `127.0.0.1.:${p}`, `127.1:${p}`, `0x7f000001:${p}`, `[::1]:${p}`, `[::ffff:127.0.0.1]:${p}`, `127.0.0.1:${p}@evil.example`, `evil.example:${p}`, `127.0.0.1:0${p}`, `127.0.0.1`, `127.0.0.2:${p}`];
    for (const host of badHosts) {
      const r = await raw(p, { host, authorization: auth }, INIT).catch(() => ({ status: 400, text: "", headers: {} }));
      assert.ok(r.status === 403 || r.status === 400, `Host ${JSON.stringify(host)} got ${r.status}`);
    }
    const badOrigins = [
      "null",
      "https://evil.example",
      "http://127.0.0.1.evil.example",
      "http://localhost.evil.example",
      "http://localhost.",
      "http://127.0.0.1.",
      "http://0x7f.1",
      "http://2130706433",
      "http://[::ffff:7f00:1]",
      "http://user:pass@127.0.0.1",
      "http://127.0.0.1/path",
      "file://",
      "chrome-extension://abcdefgh",
      "http://localhost, https://evil.example",
      "HTTP://EVIL.EXAMPLE",
      "http://evil.example#@127.0.0.1",
      "http://127.0.0.1\\@evil.example",
    ];
    for (const origin of badOrigins) {
      const r = await raw(p, { host: `127.0.0.1:${p}`, authorization: auth, origin }, INIT);
      assert.equal(r.status, 403, `Origin ${JSON.stringify(origin)} got ${r.status}: ${r.text.slice(0, 200)}`);
    }
    // A preflight from a foreign page is refused, and no CORS grant is ever given.
    const pre = await raw(p, { host: `127.0.0.1:${p}`, origin: "https://evil.example", "access-control-request-method": "POST", "access-control-request-headers": "authorization" }, undefined, "OPTIONS");
    assert.ok(pre.status === 403, `preflight: ${pre.status}`);
    assert.equal(pre.headers["access-control-allow-origin"], undefined);
    // No token, a token in the URL, or a token as a cookie: 401.
    assert.equal((await raw(p, { host: `127.0.0.1:${p}` }, INIT)).status, 401);
    assert.equal((await raw(p, { host: `127.0.0.1:${p}` }, INIT, "POST", `/mcp?access_token=${token}`)).status, 401);
    assert.equal((await raw(p, { host: `127.0.0.1:${p}`, cookie: `token=${token}` }, INIT)).status, 401);
    assert.equal((await raw(p, { host: `127.0.0.1:${p}`, authorization: `bearer ${token}` }, INIT)).status, 401);
    assert.equal((await raw(p, { host: `127.0.0.1:${p}`, authorization: `Bearer  ${token}` }, INIT)).status, 401);
    // A simple (no-preflight) cross-site POST, text/plain, with no Origin at all and no token: 401.
    assert.equal((await raw(p, { host: `127.0.0.1:${p}`, "content-type": "text/plain" }, INIT)).status, 401);
  });

  test("the session cap holds under 100 concurrent initializes: never more than 32 sessions open at once", async () => {
    const p = srv.port;
    const headers = { host: `127.0.0.1:${p}`, authorization: `Bearer ${token}` };
    // Sampled while the flood runs: an answered initialize leaves an idle session, which a later one
    // may end to make room (docs/mcp.md), so more than 32 ids may be handed out, never 33 open at once.
    let most = 0;
    const watch = setInterval(() => (most = Math.max(most, srv.sessions)), 1);
    const rs = await Promise.all(Array.from({ length: 100 }, () => raw(p, headers, INIT).catch(() => ({ status: 0, text: "", headers: {} as http.IncomingHttpHeaders }))));
    clearInterval(watch);
    most = Math.max(most, srv.sessions);
    const ids = rs.map((r) => r.headers["mcp-session-id"]).filter((x): x is string => typeof x === "string");
    const ended = await Promise.all(ids.map((id) => raw(p, { ...headers, "mcp-session-id": id, "mcp-protocol-version": "2025-06-18" }, undefined, "DELETE").catch(() => ({ status: 0 }))));
    assert.ok(most <= 32, `${most} sessions were open at once (cap 32)`);
    assert.ok(ended.filter((r) => r.status === 200).length <= 32, "at most 32 of the flood's sessions were still open after it");
    assert.ok(rs.every((r) => r.status === 200 || r.status === 503), `every initialize is answered or refused with 503: ${[...new Set(rs.map((r) => r.status))].join(", ")}`);
    // After the DELETEs a new session can be opened.
    const again = await raw(p, headers, INIT);
    assert.equal(again.status, 200, again.text.slice(0, 200));
    const id = again.headers["mcp-session-id"] as string;
    await raw(p, { ...headers, "mcp-session-id": id, "mcp-protocol-version": "2025-06-18" }, undefined, "DELETE");
    assert.equal(srv.sessions, 0);
  });

  test("oversized bodies: declared and chunked (undeclared) bodies over 8 MiB are 413; the server keeps serving", async () => {
    const p = srv.port;
    const headers = { host: `127.0.0.1:${p}`, authorization: `Bearer ${token}` };
    const chunked = await new Promise<number>((resolve) => {
      const req = http.request({ host: "127.0.0.1", port: p, path: "/mcp", method: "POST", headers: { ...headers, "content-type": "application/json", accept: "application/json, text/event-stream", "transfer-encoding": "chunked" } }, (res) => {
        res.resume();
        resolve(res.statusCode!);
      });
      req.on("error", () => resolve(413));
      const chunk = Buffer.alloc(1024 * 1024, 0x20);
      let n = 0;
      const write = (): void => {
        while (n < 10) {
          n++;
          if (!req.write(chunk)) return void req.once("drain", write);
        }
        req.end();
      };
      write();
    });
    assert.equal(chunked, 413);
    const client = new Client({ name: "after", version: "1" });
    await client.connect(new StreamableHTTPClientTransport(new URL(`http://127.0.0.1:${p}/mcp`), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
    try {
      const r = (await client.callTool({ name: "list_secrets", arguments: {} })) as { isError?: boolean };
      assert.notEqual(r.isError, true);
    } finally {
      await client.close();
    }
  });
});

// ---- the approval page ----
function page(url: string, opts: { method?: string; headers?: Record<string, string>; body?: string; path?: string } = {}): Promise<{ status: number; text: string; headers: http.IncomingHttpHeaders }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: Number(u.port), path: opts.path ?? u.pathname, method: opts.method ?? "GET", headers: opts.headers ?? {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, text: Buffer.concat(chunks).toString("utf8"), headers: res.headers }));
    });
    req.on("error", reject);
    req.end(opts.body);
  });
}
const FORM = { "content-type": "application/x-www-form-urlencoded" };

describe("hostile web page: the approval page", () => {
  test("CSRF and Host/Origin games on the page never decide; a token from another page does not work; then the person's POST does", async () => {
    const pages: string[] = [];
    let phase = 0;
    const s2 = createMcpSession({ api: inProcessApi(vault), identity: { agent: "claude", role: "admin" }, proxyConfig, log, tmp: root });
    // First client: opens page A and leaves it (declines); second: page B, attacked, then decided.
    const c = await connectStream(s2.newServer(), async (url) => {
      pages.push(url);
      if (phase === 0) return { action: "decline" };
      const A = pages[0]!;
      const B = url;
      const u = new URL(B);
      const self = `127.0.0.1:${u.port}`;
      const getA = await page(A);
      const csrfA = /name="csrf" value="([A-Za-z0-9_-]+)"/.exec(getA.text)![1]!;
      const getB = await page(B);
      assert.equal(getB.status, 200);
      const csrfB = /name="csrf" value="([A-Za-z0-9_-]+)"/.exec(getB.text)![1]!;
      const attempts: [string, Parameters<typeof page>[1]][] = [
        ["no csrf", { method: "POST", headers: FORM, body: "decision=approve" }],
        ["page A's csrf on page B", { method: "POST", headers: FORM, body: `decision=approve&csrf=${csrfA}` }],
        ["csrf twice, wrong first", { method: "POST", headers: FORM, body: `csrf=x&csrf=${csrfB}&decision=approve` }],
        ["text/plain (simple CORS) body", { method: "POST", headers: { "content-type": "text/plain" }, body: `decision=approve&csrf=${csrfB}` }],
        ["multipart", { method: "POST", headers: { "content-type": "multipart/form-data; boundary=x" }, body: `--x\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n${csrfB}\r\n--x--\r\n` }],
        ["foreign Origin", { method: "POST", headers: { ...FORM, origin: "https://evil.example" }, body: `decision=approve&csrf=${csrfB}` }],
        ["null Origin", { method: "POST", headers: { ...FORM, origin: "null" }, body: `decision=approve&csrf=${csrfB}` }],
        ["localhost Origin", { method: "POST", headers: { ...FORM, origin: `http://localhost:${u.port}` }, body: `decision=approve&csrf=${csrfB}` }],
        ["localhost Host", { method: "POST", headers: { ...FORM, host: `localhost:${u.port}` }, body: `decision=approve&csrf=${csrfB}` }],
        ["rebinding Host", { method: "POST", headers: { ...FORM, host: `evil.example:${u.port}` }, body: `decision=approve&csrf=${csrfB}` }],
        ["PUT", { method: "PUT", headers: FORM, body: `decision=approve&csrf=${csrfB}` }],
        ["query string path", { method: "POST", headers: FORM, body: `decision=approve&csrf=${csrfB}`, path: `${u.pathname}?x=1` }],
        ["decision=Approve (case)", { method: "POST", headers: FORM, body: `decision=Approve&csrf=${csrfB}` }],
      ];
      for (const [what, o] of attempts) {
        const r = await page(B, o);
        assert.notEqual(r.status, 200, `${what} decided the approval`);
      }
      // Headers a browser relies on.
      assert.equal(getB.headers["x-frame-options"], "DENY");
      assert.match(String(getB.headers["cache-control"]), /no-store/);
      assert.match(String(getB.headers["content-security-policy"]), /frame-ancestors 'none'/);
      assert.equal(getB.headers["access-control-allow-origin"], undefined);
      // The person denies (on page B, from its own origin).
      const post = await page(B, { method: "POST", headers: { ...FORM, origin: `http://${self}` }, body: `decision=deny&csrf=${csrfB}` });
      assert.equal(post.status, 200);
      return { action: "accept" };
    });
    try {
      const r0 = await c.call("request_access", { secret: "deploy-key", ttl: "3m" });
      assert.equal(r0.doc["status"], "approval_pending");
      phase = 1;
      const r1 = await c.call("request_access", { secret: "deploy-key", ttl: "4m" });
      assert.equal(r1.isError, true, r1.text);
      assert.match(r1.doc["error"]["message"], /denied/);
      for (const t of [r0.text, r1.text]) for (const u of pages) assert.ok(!t.includes(new URL(u).pathname), "the page URL never reaches the tool result (the model)");
    } finally {
      await c.close();
      await s2.close();
    }
  });

  test("--terminal-approval (approvalPage: false): a client that would open and submit pages never gets one", async () => {
    let asked = 0;
    const s3 = createMcpSession({ api: inProcessApi(vault), identity: { agent: "claude", role: "admin" }, proxyConfig, log, tmp: root, approvalPage: false });
    const c = await connectStream(s3.newServer(), async () => {
      asked++;
      return { action: "decline" };
    });
    try {
      const r = await c.call("request_access", { secret: "deploy-key", ttl: "5m" });
      assert.equal(r.doc["status"], "approval_pending");
      assert.equal(asked, 0);
      assert.ok(!("placeholder" in r.doc));
    } finally {
      await c.close();
      await s3.close();
    }
  });

  test("documented limit: in the default mode a hostile MCP client can submit the page it is given (docs/mcp.md: use --terminal-approval)", async () => {
    const s4 = createMcpSession({ api: inProcessApi(vault), identity: { agent: "claude", role: "admin" }, proxyConfig, log, tmp: root });
    const c = await connectStream(s4.newServer(), async (url) => {
      const g = await page(url);
      const csrf = /name="csrf" value="([A-Za-z0-9_-]+)"/.exec(g.text)![1]!;
      await page(url, { method: "POST", headers: FORM, body: `decision=approve&csrf=${csrf}` });
      return { action: "accept" };
    });
    try {
      const r = await c.call("request_access", { secret: "deploy-key", ttl: "6m" });
      // Not asserted as a failure: docs/mcp.md says the page is only as strong as the client/browser separation.
      console.log(`# self-approval through the page in the default mode: ${r.isError ? "refused" : "granted"}`);
      if (!r.isError) assert.equal(typeof r.doc["placeholder"], "string");
    } finally {
      await c.close();
      await s4.close();
    }
  });
});

describe("at the end", () => {
  test("no canary in any tool result or JSON-RPC answer of the whole run", () => {
    noCanary("the transcript (tool results, errors, JSON-RPC answers)", transcript.join("\n"));
  });

  test("no canary in a log line or the audit trail; no connection outside loopback", async () => {
    noCanary("the log lines", logs.join("\n"));
    const rows = await vault.admin().auditQuery({ limit: 100_000 });
    noCanary("the audit trail", JSON.stringify(rows));
    assert.deepEqual(violations, [], `connections to refused addresses: ${violations.join(", ")}`);
    if (lookups.length > 0) console.log(`# names something tried to resolve (answered ENOTFOUND, nothing sent): ${[...new Set(lookups)].join(", ")}`);
  });
});

describe("a grant that lands after the session ended", () => {
  // docs/mcp.md, "When the session ends": every lease the session took is revoked. A request_access
  // whose grant lands after the end cannot add its value, so it revokes its own lease; when that
  // revocation fails (the daemon just went away), the lease must still go to the session's end, which
  // retries and names what is left, rather than be forgotten live.
  test("its lease, which it could not revoke itself, is revoked by the session's end", { timeout: 30_000 }, async () => {
    const real = inProcessApi(vault);
    let entered!: () => void;
    const inGrant = new Promise<void>((r) => (entered = r));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const api = new Proxy(real, {
      get(t, k) {
        if (k === "api")
          return {
            ...t.api,
            request_lease: async (p: Parameters<typeof t.api.request_lease>[0]) => {
              entered();
              await gate;
              return t.api.request_lease(p);
            },
          };
        if (k === "revokeLease") return async () => Promise.reject(new VaultError("unavailable", "the lessor daemon went away (test)"));
        const v = Reflect.get(t, k, t) as unknown;
        return typeof v === "function" ? v.bind(t) : v;
      },
    });
    const atEnd: string[] = [];
    const s = createMcpSession({
      api,
      identity: { agent: "claude", role: "admin" },
      proxyConfig,
      log,
      tmp: root,
      revoke: async (ids) => {
        atEnd.push(...ids);
        return [];
      },
    });
    const c = await connectStream(s.newServer());
    const pending = c.call("request_access", { secret: "github-token" }).catch((e: unknown) => e);
    await inGrant;
    const closing = s.close();
    await new Promise((r) => setTimeout(r, 50));
    release();
    await closing;
    await pending;
    await c.close();
    const granted = (await vault.admin().listLeases({ agent: "claude" })).filter((l) => atEnd.includes(l.id));
    assert.equal(granted.length, 1, `the session's end was given the lease granted after it ended: ${JSON.stringify(atEnd)}`);
    for (const l of granted) await vault.admin().revokeLease(l.id, "test clean-up");
  });
});
