/**
 * Third pass of attacks on the agent-facing adapters other than `lessor run` (docs/mcp.md,
 * docs/references.md, docs/cli/secret.md rotation hooks, docs/cli/leases.md heartbeat,
 * docs/cli/credential-helpers.md). Earlier passes: test/mcp-attacks.test.ts, test/mcp-http.test.ts,
 * test/refs-hooks-attacks.test.ts, test/credential-helper-attacks.test.ts, test/heartbeat.test.ts.
 *
 * Real parts: the built CLI (`lessor mcp` over stdio and over streamable HTTP on 127.0.0.1) as a
 * child process, the MCP SDK's own client, real SQLite files edited by a second connection. Nothing
 * connects anywhere but 127.0.0.1.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import Database from "better-sqlite3";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { BIN, cliHome, runCli, seedHome } from "./cli-harness.js";
import { agent, clock, grant, makeVault, refusalOf } from "./helpers.js";
import { HEARTBEAT_META } from "../src/vault/heartbeat.js";
import { inProcessApi } from "../src/backend/in-process.js";
import { DEFAULT_PROXY_CONFIG } from "../src/config/proxy-config.js";
import { MAX_HTTP_SESSIONS, newToken, serveHttp, type HttpMcpServer } from "../src/mcp/http.js";
import { createMcpSession } from "../src/mcp/server.js";
import type { Vault } from "../src/vault/vault.js";

const CANARY = "ghp_adapters3_" + "9f1c2e7a5b3d4c6e8a0b1c2d3e4f5a6b";

/** JSON-RPC lines an MCP client sends: initialize, initialized, then each tools/call (ids from 2). */
function mcpLines(calls: [string, Record<string, unknown>][]): string {
  const msgs: unknown[] = [
    { jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "attacker", version: "1" } } },
    { jsonrpc: "2.0", method: "notifications/initialized" },
    ...calls.map(([name, args], i) => ({ jsonrpc: "2.0", id: i + 2, method: "tools/call", params: { name, arguments: args } })),
  ];
  return msgs.map((m) => JSON.stringify(m)).join("\n") + "\n";
}

/** The tool results' texts by request id, from the server's stdout. */
function resultsById(stdout: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const line of stdout.split("\n")) {
    if (line.trim() === "") continue;
    const m = JSON.parse(line) as { id?: number; result?: { content?: { text: string }[] }; error?: unknown };
    if (typeof m.id === "number") out.set(m.id, m.result?.content ? m.result.content.map((c) => c.text).join("\n") : JSON.stringify(m.error ?? m.result));
  }
  return out;
}

describe("lessor mcp as the owner's server (lessor mcp --agent A): what the agent is told", () => {
  test("an MCP agent served by the owner is told a broken policy is broken, not its load error (the owner's policy path, another agent's rule): explain_access, request_access", async () => {
    const home = await cliHome();
    // Another agent's rule, with a mistake in it: the load error quotes the rule.
    const policy =
      grant("claude-api", ["claude"], ["tok"], ["api.test.example"]) +
      "\n" +
      grant("bob-payroll-prod", ["bob-finance-agent"], ["payroll-db-password"], ["payroll.internal.example"], "max_uses = -3\n");
    await seedHome(home, grant("claude-api", ["claude"], ["tok"], ["api.test.example"]), [
      { name: "tok", value: CANARY },
      { name: "payroll-db-password", value: "payroll-" + CANARY },
    ]);
    writeFileSync(join(home, "policy.toml"), policy, { mode: 0o600 });
    const r = await runCli(["mcp", "--agent", "claude"], {
      home,
      input: mcpLines([
        ["explain_access", { secret: "tok" }],
        ["request_access", { secret: "tok" }],
      ]),
      timeoutMs: 20_000,
    });
    const got = resultsById(r.stdout);
    assert.ok(got.has(2) && got.has(3), `both calls are answered (stderr: ${r.stderr})`);
    for (const [id, text] of [...got].filter(([id]) => id >= 2)) {
      assert.ok(!text.includes(CANARY), "no value");
      // What lessor promises an agent at the daemon (docs/security.md: refusals name no path and carry
      // no load error for non-admins; src/vault/policy/decide.ts BROKEN_REASON_BRIEF): the MCP agent is an
      // agent, whatever identity its server reaches the vault as.
      assert.ok(!text.includes(home), `tool call ${id} tells the agent where the owner's home and policy are: ${text}`);
      assert.ok(!/bob-payroll-prod|bob-finance-agent|payroll/.test(text), `tool call ${id} tells the agent another agent's rule: ${text}`);
      assert.match(text, /policy is invalid/, "it still says the policy is broken");
    }
  });
});

describe("lessor mcp --http (a real child process, the SDK's own client)", () => {
  test("a client that connects and closes normally 32 times (the SDK's close(), no DELETE) does not lock later clients out: the session idle the longest makes room", { timeout: 60_000 }, async () => {
    const home = await cliHome();
    await seedHome(home, grant("claude-api", ["claude"], ["tok"], ["api.test.example"]), [{ name: "tok", value: CANARY }]);
    const tokenFile = join(home, "..", "mcp.token");
    const child: ChildProcess = spawn(process.execPath, ["--", BIN, "mcp", "--agent", "claude", "--http", "127.0.0.1:0", "--token-file", tokenFile], {
      env: { PATH: process.env.PATH ?? "", HOME: join(home, ".."), LESSOR_HOME: home, NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    try {
      const url = await new Promise<string>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`lessor mcp --http did not start: ${stderr}`)), 20_000);
        const look = (): void => {
          const m = /on (http:\/\/127\.0\.0\.1:\d+\/mcp)/.exec(stderr);
          if (m) {
            clearTimeout(t);
            resolve(m[1]!);
          }
        };
        child.stderr!.on("data", look);
        child.once("exit", () => reject(new Error(`lessor mcp exited: ${stderr}`)));
      });
      const token = readFileSync(tokenFile, "utf8").trim();
      const connectOnce = async (): Promise<void> => {
        const client = new Client({ name: "ordinary-client", version: "1" });
        const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { authorization: `Bearer ${token}` } } });
        await client.connect(transport);
        const tools = await client.listTools();
        assert.ok(tools.tools.some((t) => t.name === "request_access"));
        await client.close(); // what a client does when it quits: the SDK sends no DELETE
      };
      // An editor that restarts its MCP client 32 times over a day, say.
      for (let i = 0; i < 32; i++) await connectOnce();
      // The next one, the client the person is using now: the 32 sessions left behind are idle, and
      // the one idle the longest is ended (its leases revoked) to make room, with no wait.
      const e = await connectOnce().then(
        () => null,
        (err: unknown) => err as Error,
      );
      assert.equal(e, null, `after 32 ordinary connect-and-close cycles a new client cannot connect: ${e?.message ?? ""}`);
    } finally {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r(null) : child.once("exit", r)));
    }
  });
});

/** An in-process `serveHttp` for agent claude on a fresh vault holding "tok" (grant for api.example.com). */
async function httpServer(idleMs?: number): Promise<{ srv: HttpMcpServer; vault: Vault; dbPath: string; token: string; done(): Promise<void> }> {
  const t = await makeVault({ policy: grant("g", ["claude"], ["tok"], ["api.example.com"]) });
  await t.vault.admin().storeSecret({ name: "tok", value: CANARY });
  const tmp = mkdtempSync(join(tmpdir(), "lessor-mcp-idle-"));
  const token = newToken();
  const api = inProcessApi(t.vault);
  const srv = await serveHttp({
    newSession: () => createMcpSession({ api, identity: { agent: "claude", role: "admin" }, proxyConfig: structuredClone(DEFAULT_PROXY_CONFIG), log: () => {}, tmp }),
    address: { host: "127.0.0.1", port: 0 },
    token,
    log: () => {},
    ...(idleMs !== undefined ? { idleMs } : {}),
  });
  return {
    srv,
    vault: t.vault,
    dbPath: t.dbPath!,
    token,
    async done() {
      await srv.close();
      await t.vault.close();
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

/** One raw exchange with the server; `hold` keeps the request open after `body` (a body still being sent). */
function exchange(
  port: number,
  token: string,
  o: { method: string; sid?: string; body?: string; hold?: boolean },
): { response: Promise<{ status: number; sid: string | undefined; res: http.IncomingMessage }>; req: http.ClientRequest } {
  const headers: Record<string, string> = {
    host: `127.0.0.1:${port}`,
    authorization: `Bearer ${token}`,
    accept: o.method === "GET" ? "text/event-stream" : "application/json, text/event-stream",
    ...(o.body !== undefined ? { "content-type": "application/json", "content-length": String(Buffer.byteLength(o.body)) } : {}),
    ...(o.sid !== undefined ? { "mcp-session-id": o.sid, "mcp-protocol-version": "2025-06-18" } : {}),
  };
  const req = http.request({ host: "127.0.0.1", port, path: "/mcp", method: o.method, headers });
  const response = new Promise<{ status: number; sid: string | undefined; res: http.IncomingMessage }>((resolve, reject) => {
    req.on("response", (res) => resolve({ status: res.statusCode!, sid: res.headers["mcp-session-id"] as string | undefined, res }));
    req.on("error", reject);
  });
  if (o.body !== undefined && o.hold) req.write(o.body.slice(0, 10));
  else req.end(o.body);
  return { response, req };
}
const INIT = JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "x", version: "1" } } });
const NOTE = JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" });

describe("lessor mcp --http: sessions end when their client is gone", () => {
  test("a session whose client went away without a DELETE ends after the idle period and its lease is revoked; a client with its stream open keeps its session", { timeout: 30_000 }, async () => {
    const IDLE = 300;
    const h = await httpServer(IDLE);
    const connect = async (): Promise<Client> => {
      const client = new Client({ name: "c", version: "1" });
      await client.connect(new StreamableHTTPClientTransport(new URL(h.srv.url), { requestInit: { headers: { authorization: `Bearer ${h.token}` } } }));
      return client;
    };
    const gone = await connect();
    const kept = await connect();
    try {
      const r = (await gone.callTool({ name: "request_access", arguments: { secret: "tok" } })) as { structuredContent?: { leaseId?: string }; content: { text: string }[] };
      const leaseId = r.structuredContent?.leaseId ?? (JSON.parse(r.content[0]!.text) as { leaseId: string }).leaseId;
      assert.ok(leaseId, "request_access granted a lease");
      const lease = async () => (await h.vault.admin().listLeases({ agent: "claude" })).find((l) => l.id === leaseId)!;
      assert.equal((await lease()).revokedAt, null, "live while its client is there");
      await gone.close(); // no DELETE
      const t0 = Date.now();
      while ((await lease()).revokedAt === null && Date.now() - t0 < 10_000) await new Promise((res) => setTimeout(res, 50));
      const l = await lease();
      assert.notEqual(l.revokedAt, null, "the lease of a session idle past the period is revoked");
      assert.equal(l.revokeReason, "lessor mcp session ended");
      // The client that is still there (its SSE stream open) kept its session through many idle periods.
      await new Promise((res) => setTimeout(res, 3 * IDLE));
      const again = (await kept.callTool({ name: "list_leases", arguments: {} })) as { isError?: boolean };
      assert.notEqual(again.isError, true);
      assert.equal(h.srv.sessions, 1, "only the client still connected holds a session");
    } finally {
      await kept.close();
      await h.done();
    }
  });

  test("over the cap, the session idle the longest makes room; one with a stream open or a request being sent is never ended for it (503 when all are busy)", { timeout: 30_000 }, async () => {
    const h = await httpServer(); // the default idle period: only the cap ends sessions here
    const port = h.srv.port;
    const held: http.ClientRequest[] = [];
    const init = async (): Promise<{ status: number; sid: string | undefined }> => {
      const r = await exchange(port, h.token, { method: "POST", body: INIT }).response;
      r.res.resume();
      await new Promise((res) => r.res.once("end", res));
      return r;
    };
    /** A POST notification: 202 while the session is open, 404 once it ended. */
    const probe = async (sid: string): Promise<number> => {
      const r = await exchange(port, h.token, { method: "POST", sid, body: NOTE }).response;
      r.res.resume();
      return r.status;
    };
    const stream = async (sid: string): Promise<void> => {
      const x = exchange(port, h.token, { method: "GET", sid });
      held.push(x.req);
      assert.equal((await x.response).status, 200, "the SSE stream opens");
    };
    try {
      const sids: string[] = [];
      for (let i = 0; i < MAX_HTTP_SESSIONS; i++) sids.push((await init()).sid!);
      for (const sid of sids.slice(0, 29)) await stream(sid);
      // Session 29 is sending a request (its body not all there yet).
      const slow = exchange(port, h.token, { method: "POST", sid: sids[29]!, body: JSON.stringify({ jsonrpc: "2.0", id: 7, method: "tools/list" }), hold: true });
      held.push(slow.req);
      await new Promise((res) => setTimeout(res, 100));
      // 30 and 31 are idle; 30 was used last, so 31 has been idle the longest.
      assert.equal(await probe(sids[30]!), 202);
      const x = await init();
      assert.equal(x.status, 200, "a new session at the cap is opened");
      assert.equal(h.srv.sessions, MAX_HTTP_SESSIONS);
      const y = await init(); // now 30 is the idlest (x came after its use)
      assert.equal(y.status, 200);
      assert.equal(await probe(sids[31]!), 404, "the session idle the longest was ended for the first");
      assert.equal(await probe(sids[30]!), 404, "then the next idlest");
      // Every session busy: a new one is refused, none is ended.
      await stream(x.sid!);
      await stream(y.sid!);
      const refused = await init();
      assert.equal(refused.status, 503, "no session is idle: 503");
      assert.equal(h.srv.sessions, MAX_HTTP_SESSIONS, "and none was ended for it");
      // The request is sent in full and answered: that session is idle, and makes room.
      slow.req.end(JSON.stringify({ jsonrpc: "2.0", id: 7, method: "tools/list" }).slice(10));
      const answered = await slow.response;
      answered.res.resume();
      await new Promise((res) => answered.res.once("end", res));
      assert.equal(answered.status, 200, "the request in flight was answered");
      assert.equal((await init()).status, 200);
      assert.equal(await probe(sids[29]!), 404);
      for (const sid of sids.slice(0, 29)) assert.equal(await probe(sid), 202, "a session with its stream open is never ended for another");
    } finally {
      for (const r of held) r.destroy();
      await h.done();
    }
  });
});

describe("lessor mcp's revoke tool", () => {
  test("revoke finds an agent's old live lease by its id, however many leases the agent has had since", { timeout: 60_000 }, async () => {
    const h = await httpServer();
    const client = new Client({ name: "c", version: "1" });
    await client.connect(new StreamableHTTPClientTransport(new URL(h.srv.url), { requestInit: { headers: { authorization: `Bearer ${h.token}` } } }));
    try {
      const r = (await client.callTool({ name: "request_access", arguments: { secret: "tok" } })) as { content: { text: string }[] };
      const leaseId = (JSON.parse(r.content[0]!.text) as { leaseId: string }).leaseId;
      // 10,001 ended leases of the same agent, newer than that one (a busy agent's week, say).
      const db = new Database(h.dbPath);
      db.transaction(() => {
        const row = db.prepare("SELECT * FROM leases WHERE id = ?").get(leaseId) as Record<string, unknown>;
        const cols = Object.keys(row);
        const ins = db.prepare(`INSERT INTO leases (${cols.join(", ")}) VALUES (${cols.map(() => "?").join(", ")})`);
        for (let i = 0; i < 10_001; i++)
          ins.run(...cols.map((c) => (c === "id" ? `${leaseId}-${String(i).padStart(5, "0")}` : c === "done" ? 1 : c === "revoked_at" ? row["issued_at"] : c === "revoke_reason" ? "old" : row[c])));
      })();
      db.close();
      const v = (await client.callTool({ name: "revoke", arguments: { leaseId } })) as { isError?: boolean; content: { text: string }[] };
      assert.notEqual(v.isError, true, v.content[0]?.text);
      assert.equal((JSON.parse(v.content[0]!.text) as { revoked: boolean }).revoked, true);
      const l = (await h.vault.admin().listLeases({ agent: "claude", limit: 10_000 })).length;
      assert.equal(l, 10_000, "the newest 10,000 leases are the ended ones");
      // An unknown id is still lease_not_found.
      const u = (await client.callTool({ name: "revoke", arguments: { leaseId: randomUUID() } })) as { isError?: boolean; content: { text: string }[] };
      assert.equal(u.isError, true);
      assert.match(u.content[0]!.text, /lease_not_found/);
    } finally {
      await client.close();
      await h.done();
    }
  });
});

describe("the dead-man switch and its stored record", () => {
  test("a heartbeat record dated in the future (lessor never writes one), forged by a second connection to lessor.db, counts as long past due: the switch fires", async () => {
    const c = clock();
    const MIN = 60_000;
    const t = await makeVault({ policy: grant("g", ["claude"], ["tok"], ["api.example.com"]), now: c.now, limits: { heartbeatMs: MIN } });
    await t.vault.admin().storeSecret({ name: "tok", value: CANARY });
    assert.ok(t.dbPath);
    // Armed now; due in a minute.
    assert.equal((await t.vault.admin().describe()).heartbeat.dueAt, c.now() + MIN);
    await t.vault.close();
    // Someone who can write the database (not lessor) stores a heartbeat ten years ahead.
    const db = new Database(t.dbPath);
    db.prepare("UPDATE meta SET value = ? WHERE key = ?").run(JSON.stringify({ at: c.now() + 10 * 365 * 24 * 3600_000, by: "uid:0" }), HEARTBEAT_META);
    db.close();
    const again = await t.reopen();
    c.advance(2 * MIN); // no admin checked in: the switch is past due
    const claude = again.vault.session(agent("claude"));
    const r = await refusalOf(claude.requestLeaseAndAccess({ secret: "tok" }).then((l) => l.value.wipe()));
    // docs/cli/leases.md: a record dated more than an hour ahead of the clock counts as long past due.
    assert.equal(r.code, "access_denied", "past the deadline, with no heartbeat from an admin, a grant must be refused");
    const ks = (await again.vault.admin().describe()).killswitch;
    assert.equal(ks.engaged, true, "the dead-man switch must have pulled the killswitch");
    assert.match(ks.reason ?? "", /dead-man switch: .*a heartbeat record dated in the future/);
    await again.vault.close();
  });

  test("a heartbeat record up to an hour ahead of the clock (a clock stepped back since it was written) still counts", async () => {
    const c = clock();
    const MIN = 60_000;
    const t = await makeVault({ policy: grant("g", ["claude"], ["tok"], ["api.example.com"]), now: c.now, limits: { heartbeatMs: MIN } });
    await t.vault.admin().storeSecret({ name: "tok", value: CANARY });
    await t.vault.admin().heartbeat();
    c.set(c.now() - 30 * MIN); // the clock is stepped back half an hour
    const status = (await t.vault.admin().describe()).heartbeat;
    assert.equal(status.dueAt, c.now() + 30 * MIN + MIN, "due a period after the stored heartbeat");
    const l = await t.vault.session(agent("claude")).requestLeaseAndAccess({ secret: "tok" });
    l.value.wipe();
    assert.equal((await t.vault.admin().describe()).killswitch.engaged, false);
    await t.vault.close();
  });
});
