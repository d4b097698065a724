/**
 * `lessor mcp --http` against another local user who holds every connection slot without the token
 * (docs/mcp.md "Streamable HTTP on loopback": at most 256 connections, authenticated or not).
 *
 * The slow-headers guard (headersTimeout, 10 s) closes a connection that never finishes its headers,
 * so a flood of those costs the attacker a reconnect every few seconds, and the agent's client gets a
 * slot in between. But a refused request (401 without the token, 403 for a foreign Host or Origin)
 * that announces a body was answered without its body being read and its connection kept alive: the
 * server then read (and threw away) the body for as long as it came, with no time limit
 * (requestTimeout 0; the keep-alive timer restarts on each byte). 256 such requests, one byte each
 * every 2 s, shut the agent's own client out for as long as the attacker likes, with no reconnect:
 * every new connection is closed at once, and its session lapses when idle (leases revoked).
 *
 * In-process: `serveHttp` on 127.0.0.1 (port 0) with a real MCP session on a temp vault; raw sockets.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { initHome, openVault } from "../src/config/open-vault.js";
import { inProcessApi } from "../src/backend/in-process.js";
import { createMcpSession } from "../src/mcp/server.js";
import { MAX_HTTP_CONNECTIONS, serveHttp } from "../src/mcp/http.js";
import type { Vault } from "../src/vault/vault.js";

const root = mkdtempSync(join(tmpdir(), "lessor-atk-mcphttp-bodyhold-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const LESSOR_HOME = join(root, "home", ".lessor");
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
let vault: Vault;

before(async () => {
  mkdirSync(join(root, "home"), { recursive: true });
  await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  writeFileSync(join(LESSOR_HOME, "policy.toml"), "", { mode: 0o600 });
  vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
});
after(async () => vault?.close());

const INIT = JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "x", version: "1" } } });

/** The agent's client: a fresh connection (agent: false), an initialize with the token. */
function initialize(port: number, token: string): Promise<number | string> {
  return new Promise((resolve) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port,
        path: "/mcp",
        method: "POST",
        agent: false,
        headers: { host: `127.0.0.1:${port}`, authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json, text/event-stream" },
      },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode!));
      },
    );
    req.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? "error"));
    req.end(INIT);
  });
}

test(
  "a refused request cannot keep its connection by trickling a body: 256 of them do not shut the agent's client out",
  { timeout: 60_000 },
  async () => {
    const token = randomBytes(32).toString("base64url");
    const srv = await serveHttp({
      newSession: () => createMcpSession({ api: inProcessApi(vault), identity: { agent: "claude", role: "admin" }, proxyConfig: { egress: "strict", ports: [443], allow: [], hosts: {}, upstreamCa: null, inject: [] }, log: () => {}, tmp: root }),
      address: { host: "127.0.0.1", port: 0 },
      token,
      log: () => {},
    });
    const socks: net.Socket[] = [];
    const trickles: NodeJS.Timeout[] = [];
    try {
      // Another local user, without the token: one request per connection, a body announced, then one
      // byte of it every 2 s (256 connections: about 128 bytes a second), never a reconnect.
      await new Promise<void>((resolve) => {
        let opened = 0;
        for (let i = 0; i < MAX_HTTP_CONNECTIONS; i++) {
          const s = net.connect(srv.port, "127.0.0.1");
          s.on("error", () => {});
          s.on("data", () => {});
          s.on("connect", () => {
            s.write(`POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:${srv.port}\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n`);
            trickles.push(setInterval(() => void (s.destroyed || s.write("x")), 2000));
            if (++opened === MAX_HTTP_CONNECTIONS) resolve();
          });
          socks.push(s);
        }
      });
      // Past every timeout meant to end a connection that sends nothing (headers 10 s, keep-alive 5 s).
      await sleep(15_000);
      const open = socks.filter((s) => !s.destroyed).length;
      const got = await initialize(srv.port, token);
      assert.equal(
        got,
        200,
        `the agent's client, with the token, could not start a session (${got}): ${open} connections the attacker opened once, refused 401 without reading their bodies, still hold every slot 15 s on (past the 10 s headers timeout and 5 s keep-alive) (docs/mcp.md: at most ${MAX_HTTP_CONNECTIONS} connections)`,
      );
    } finally {
      for (const t of trickles) clearInterval(t);
      for (const s of socks) s.destroy();
      await srv.close();
    }
  },
);
