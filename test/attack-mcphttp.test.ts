/**
 * Attacks on `lessor mcp --http` (docs/mcp.md "Streamable HTTP on loopback", src/mcp/http.ts) and the
 * approval page it serves (src/mcp/approval-page.ts), as a web page in the owner's browser, another
 * local process, and a client arriving while the server stops.
 *
 * In-process: a vault on a real SQLite file in a temp home, `serveHttp` on 127.0.0.1 (port 0) with
 * `createMcpSession` on the in-process backend (the owner's server acting for agent "claude"), raw
 * node:http requests on loopback. Where a slower backend matters (a daemon answering under load), the
 * in-process caller is wrapped to answer `request_lease` later; nothing else changes. Nothing leaves
 * loopback.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { initHome, openVault } from "../src/config/open-vault.js";
import { inProcessApi, inProcessCaller } from "../src/backend/in-process.js";
import { LessorMethods } from "../src/client/facade.js";
import { apiOf, type Caller } from "../src/client/api.js";
import { REGISTRY } from "../src/protocol/registry.js";
import { VERSION } from "../src/version.js";
import { createMcpSession } from "../src/mcp/server.js";
import { MAX_HTTP_CONNECTIONS, serveHttp, writeTokenFile, type HttpMcpServer } from "../src/mcp/http.js";
import type { Vault } from "../src/vault/vault.js";
import type { ProxyConfig } from "../src/config/proxy-config.js";

const CANARY = "ghp_" + randomBytes(18).toString("hex");

const POLICY = `
[[rule]]
name = "api"
effect = "allow"
agents = ["claude"]
secrets = ["github-token"]
domains = ["api.test.example"]
`;

const root = mkdtempSync(join(tmpdir(), "lessor-atk-mcphttp-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const LESSOR_HOME = join(HOME, ".lessor");
const logs: string[] = [];
const log = (line: string): void => void logs.push(line);
const transcript: string[] = [];
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let vault: Vault;
let proxyConfig: ProxyConfig;

/** The in-process backend, with `request_lease` answered `delayMs` later (a daemon under load). */
function slowLeaseApi(delayMs: number): LessorMethods {
  const who = { id: `uid:${process.getuid?.() ?? 0}`, role: "admin" as const, transport: "cli" as const };
  const inner = inProcessCaller(vault.session(who), { version: VERSION, startedAt: Date.now(), connections: () => 0 });
  const call = (async (method: string, params: unknown) => {
    if (method === "request_lease") await sleep(delayMs);
    return inner(method as never, params as never);
  }) as Caller;
  return new LessorMethods(call, apiOf(call, Object.keys(REGISTRY)));
}

interface Answer {
  status: number;
  text: string;
  headers: http.IncomingHttpHeaders;
}

function raw(p: number, headers: Record<string, string>, body?: string, method = "POST", path = "/mcp"): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: p, path, method, headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        transcript.push(text);
        resolve({ status: res.statusCode!, text, headers: res.headers });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

const INIT = JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "x", version: "1" } } });
const call = (id: number, name: string, args: Record<string, unknown>): string => JSON.stringify({ jsonrpc: "2.0", id, method: "tools/call", params: { name, arguments: args } });

/** An initialized MCP session on `srv`: its id and the headers to use it with. */
async function openSession(srv: HttpMcpServer, token: string): Promise<{ sid: string; headers: Record<string, string> }> {
  const base = { host: `127.0.0.1:${srv.port}`, authorization: `Bearer ${token}` };
  const r = await raw(srv.port, base, INIT);
  assert.equal(r.status, 200, r.text.slice(0, 200));
  const sid = r.headers["mcp-session-id"] as string;
  const headers = { ...base, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18" };
  assert.equal((await raw(srv.port, headers, JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }))).status, 202);
  return { sid, headers };
}

async function liveLeases(): Promise<{ id: string }[]> {
  const all = (await vault.admin().listLeases({})) as unknown as { id: string; revokedAt: number | null; expiresAt: number }[];
  return all.filter((l) => l.revokedAt === null && l.expiresAt > Date.now());
}

before(async () => {
  mkdirSync(HOME, { recursive: true });
  await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
  vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  await vault.admin().storeSecret({ name: "github-token", value: CANARY, kind: "pat" });
  proxyConfig = { egress: "strict", ports: [443], allow: [], hosts: {}, upstreamCa: null, inject: [] };
});

after(async () => {
  await vault?.close();
  for (const t of [...transcript, ...logs]) assert.ok(!t.includes(CANARY), "a secret value appears in an answer or a log line");
});

describe("lessor mcp --http stopping (SIGTERM) while a client arrives", () => {
  test(
    "a client arriving while the server stops gets no session, and no lease outlives close() (docs/mcp.md: leases revoked when the server stops)",
    { timeout: 20_000 },
    async () => {
      const token = randomBytes(32).toString("base64url");
      // A daemon answering request_lease in ~1.5 s (busy): the stop waits for session A's grant on its way.
      const srv = await serveHttp({
        newSession: () => createMcpSession({ api: slowLeaseApi(1500), identity: { agent: "claude", role: "admin" }, proxyConfig, log, tmp: root }),
        address: { host: "127.0.0.1", port: 0 },
        token,
        log,
      });
      const before = new Set((await liveLeases()).map((l) => l.id));
      let closing: Promise<void> | undefined;
      try {
        const a = await openSession(srv, token);
        // Session A asks for a lease; the stop signal arrives while it is being granted.
        const aCall = raw(srv.port, a.headers, call(2, "request_access", { secret: "github-token", ttl: "1h" })).catch(() => null);
        await sleep(200);
        closing = srv.close(); // what SIGTERM does (src/cli/commands/mcp.ts serveOverHttp)
        await sleep(100);
        // A second client (or the same one reconnecting) arrives while the server is stopping.
        const b = await openSession(srv, token).catch(() => null);
        if (b !== null) {
          void raw(srv.port, b.headers, call(2, "request_access", { secret: "github-token", ttl: "1h" })).catch(() => null);
        }
        await closing;
        await aCall;
        await sleep(2500); // any grant still on its way has landed
        const left = (await liveLeases()).filter((l) => !before.has(l.id));
        assert.deepEqual(
          left.map((l) => l.id),
          [],
          "a lease taken by a session of lessor mcp --http is still live after the server stopped: nothing will ever revoke it",
        );
        assert.equal(srv.sessions, 0, `after close(), ${srv.sessions} MCP session(s) are still open (never ended)`);
      } finally {
        await closing?.catch(() => {});
        for (const l of await liveLeases()) if (!before.has(l.id)) await vault.admin().revokeLease(l.id, "test cleanup").catch(() => {});
      }
    },
  );
});

describe("lessor mcp --http against a web page or another local process (holds)", () => {
  let srv: HttpMcpServer;
  const token = randomBytes(32).toString("base64url");
  before(async () => {
    srv = await serveHttp({ newSession: () => createMcpSession({ api: inProcessApi(vault), identity: { agent: "claude", role: "admin" }, proxyConfig, log, tmp: root }), address: { host: "127.0.0.1", port: 0 }, token, log });
  });
  after(async () => srv.close());

  test("a preflight from a loopback origin gets no CORS grant (401, no Access-Control-Allow-*); a token in the query string is 401 and in no log line", async () => {
    const p = srv.port;
    const pre = await raw(p, { host: `127.0.0.1:${p}`, origin: "http://localhost:3000", "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type, mcp-session-id" }, undefined, "OPTIONS");
    assert.equal(pre.status, 401);
    for (const h of Object.keys(pre.headers)) assert.ok(!h.startsWith("access-control-"), `preflight answer carries ${h}`);
    const q = await raw(p, { host: `127.0.0.1:${p}` }, INIT, "POST", `/mcp?token=${token}&access_token=${token}`);
    assert.equal(q.status, 401);
    for (const l of logs) assert.ok(!l.includes(token), "the bearer token appears in a log line");
  });

  test("session ids are random UUIDs; Last-Event-ID on a GET stream replays nothing of another session", async () => {
    const a = await openSession(srv, token);
    const b = await openSession(srv, token);
    assert.match(a.sid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.notEqual(a.sid, b.sid);
    // A tool call in A, then a GET stream of B asking to resume after an event id of A's.
    const r = await raw(p(), a.headers, call(2, "list_secrets", {}));
    assert.equal(r.status, 200);
    const got = await new Promise<string>((resolve) => {
      const req = http.request({ host: "127.0.0.1", port: srv.port, path: "/mcp", method: "GET", headers: { ...b.headers, accept: "text/event-stream", "last-event-id": "0" } }, (res) => {
        let t = `${res.statusCode}\n`;
        res.on("data", (c: Buffer) => (t += c.toString("utf8")));
        setTimeout(() => {
          req.destroy();
          resolve(t);
        }, 300);
      });
      req.on("error", () => resolve("error"));
      req.end();
    });
    assert.ok(!got.includes("github-token"), `B's GET stream replays A's events: ${got.slice(0, 200)}`);
    for (const s of [a, b]) await raw(srv.port, s.headers, undefined, "DELETE");
    function p(): number {
      return srv.port;
    }
  });

  test("the token file is 0600 and replaced atomically over a planted symlink (the link's target untouched)", () => {
    const dir = mkdtempSync(join(root, "tok-"));
    const target = join(dir, "elsewhere");
    writeFileSync(target, "keep", { mode: 0o644 });
    const path = join(dir, "mcp.token");
    symlinkSync(target, path);
    const old = process.umask(0);
    try {
      writeTokenFile(path, token);
    } finally {
      process.umask(old);
    }
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.equal(readFileSync(target, "utf8"), "keep");
    assert.equal(readFileSync(path, "utf8").trim(), token);
  });
});

describe("lessor mcp --http against a connection flood from another local user", () => {
  test("connections past MAX_HTTP_CONNECTIONS are closed at once, refusals are logged sparingly, and a client is served once the flood ends", { timeout: 90_000 }, async () => {
    const token = randomBytes(32).toString("base64url");
    const srv = await serveHttp({ newSession: () => createMcpSession({ api: inProcessApi(vault), identity: { agent: "claude", role: "admin" }, proxyConfig, log, tmp: root }), address: { host: "127.0.0.1", port: 0 }, token, log });
    const socks: net.Socket[] = [];
    try {
      // The flood is this process's, the owner's: past the first MAX_HTTP_CONNECTIONS the owner's are
      // let in up to as many again (another user's flood cannot keep them out:
      // test/attack-s36-mcpcap.test.ts), so 2 × the cap + 40 leaves 40 to close.
      const total = 2 * MAX_HTTP_CONNECTIONS + 40;
      const closedEarly = await new Promise<number>((resolve) => {
        let closed = 0;
        let opened = 0;
        const settled = async (): Promise<void> => {
          // Each connection past the first cap reads /proc/net/tcp: wait for the closes (at most 30 s),
          // then a moment more for any the cap should not have made.
          for (let i = 0; i < 300 && closed < 40; i++) await sleep(100);
          await sleep(500);
          resolve(closed);
        };
        for (let i = 0; i < total; i++) {
          const s = net.connect(srv.port, "127.0.0.1");
          s.on("error", () => {});
          s.on("connect", () => {
            if (++opened === total) void settled();
          });
          s.on("close", () => closed++);
          socks.push(s);
        }
      });
      assert.ok(closedEarly >= 40, `only ${closedEarly} of the connections past the cap were closed`);
      assert.ok(closedEarly <= 40 + 5, `${closedEarly} connections were closed: the cap closed more than those past it`);
      // Bad tokens from the flood: a handful of log lines, not one per request.
      const before = logs.length;
      for (const s of socks.splice(0)) s.destroy();
      await sleep(200);
      for (let i = 0; i < 60; i++) await raw(srv.port, { host: `127.0.0.1:${srv.port}`, authorization: "Bearer wrong" }, INIT);
      const lines = logs.slice(before).filter((l) => /refused/.test(l)).length;
      assert.ok(lines <= 11, `${lines} log lines for 60 refused requests`);
      const ok = await openSession(srv, token);
      assert.ok(ok.sid.length > 0);
    } finally {
      for (const s of socks) s.destroy();
      await srv.close();
    }
  });
});
