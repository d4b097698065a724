/**
 * Attacks on `lessor mcp` (docs/mcp.md) and its approval flow, as a hostile MCP client (the agent) and
 * as another local user (uid 65534 through setpriv) who learned an approval page's URL (a URL handed
 * to a browser sits in its argv: docs/mcp.md "Approval by a person").
 *
 * In-process: a vault on a real SQLite file in a temp home, `createMcpSession` with the in-process
 * backend (the owner's server acting for agent "claude", as `lessor mcp --agent claude`), the SDK's
 * real Client over an in-memory transport, the real approval page on loopback, curl as another uid.
 * Nothing leaves loopback.
 */
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, test } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { InMemoryTransport } from "@modelcontextprotocol/sdk/inMemory.js";
import { ElicitRequestSchema, type ElicitResult } from "@modelcontextprotocol/sdk/types.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { inProcessApi } from "../src/backend/in-process.js";
import { createMcpSession, type McpSession } from "../src/mcp/server.js";
import type { Vault } from "../src/vault/vault.js";
import type { ProxyConfig } from "../src/config/proxy-config.js";

const run = promisify(execFile);
const asRoot = process.getuid?.() === 0;
const hasCurl = spawnSync("curl", ["--version"]).status === 0;
const OTHER_UID_SKIP = !asRoot ? "needs root to act as another uid (setpriv)" : !hasCurl ? "needs curl" : process.platform !== "linux" ? "Linux only (/proc/net/tcp)" : false;

const DEPLOY_CANARY = "deploy-" + randomBytes(16).toString("hex");
const ALL_CANARIES = [DEPLOY_CANARY];

const POLICY = `
[[rule]]
name = "gated"
effect = "allow"
agents = ["claude"]
secrets = ["deploy-key", "deploy-key-2", "deploy-key-3"]
domains = ["api.test.example"]
approval = "required"

[[rule]]
name = "gated-any"
effect = "allow"
agents = ["claude"]
secrets = ["anyhost-key"]
any_domain = true
approval = "required"
`;

const root = mkdtempSync(join(tmpdir(), "lessor-atk-mcp2-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const LESSOR_HOME = join(HOME, ".lessor");
const transcript: string[] = [];
const logs: string[] = [];
const log = (line: string): void => void logs.push(line);

let vault: Vault;
let proxyConfig: ProxyConfig;

/** curl in a child process, optionally as uid 65534 (the page's server runs in this process and must answer). */
async function curl(asOther: boolean, args: string[]): Promise<{ status: number; body: string }> {
  const argv = ["curl", "-g", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10", ...args];
  const [cmd, ...rest] = asOther ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ...argv] : argv;
  const { stdout } = await run(cmd!, rest, { encoding: "utf8" });
  transcript.push(stdout);
  const i = stdout.lastIndexOf("\n");
  return { status: Number(stdout.slice(i + 1)), body: stdout.slice(0, i) };
}

interface Conn {
  client: Client;
  session: McpSession;
  call(name: string, args?: Record<string, unknown>): Promise<{ isError: boolean; doc: Record<string, any>; text: string }>;
  close(): Promise<void>;
}

/** A fresh MCP session for agent claude (as the owner's `lessor mcp --agent claude`), with an SDK client. */
async function connect(elicit?: (url: string) => Promise<ElicitResult>): Promise<Conn> {
  const session = createMcpSession({ api: inProcessApi(vault), identity: { agent: "claude", role: "admin" }, proxyConfig, log, tmp: root });
  const [ct, st] = InMemoryTransport.createLinkedPair();
  await session.server.connect(st);
  const client = new Client({ name: "attacker", version: "1.0.0" }, elicit ? { capabilities: { elicitation: { url: {} } } } : {});
  if (elicit) client.setRequestHandler(ElicitRequestSchema, async (req) => elicit((req.params as { url: string }).url));
  await client.connect(ct);
  return {
    client,
    session,
    async call(name, args = {}) {
      const r = (await client.callTool({ name, arguments: args }, undefined, { timeout: 120_000 })) as { isError?: boolean; content: { type: string; text: string }[] };
      const text = r.content.map((c) => c.text).join("\n");
      transcript.push(text);
      return { isError: r.isError === true, doc: JSON.parse(text) as Record<string, any>, text };
    },
    async close() {
      await client.close().catch(() => {});
      await session.close();
    },
  };
}

before(async () => {
  mkdirSync(HOME, { recursive: true });
  await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
  vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  const admin = vault.admin();
  for (const n of ["deploy-key", "deploy-key-2", "deploy-key-3", "anyhost-key"]) await admin.storeSecret({ name: n, value: `${DEPLOY_CANARY}-${n}` });
  proxyConfig = { egress: "strict", ports: [443], allow: [], hosts: {}, upstreamCa: null, inject: [] };
});

after(async () => {
  await vault?.close();
  for (const t of [...transcript, ...logs]) for (const c of ALL_CANARIES) assert.ok(!t.includes(c), "a secret value appears in a tool result, page, or log line");
});

describe("another local user and the approval page", () => {
  test("sanity: another uid over a plain IPv4 connection is refused the page (403)", { skip: OTHER_UID_SKIP }, async () => {
    let url = "";
    const conn = await connect(async (u) => {
      url = u;
      const r = await curl(true, [u]);
      assert.equal(r.status, 403, r.body);
      return { action: "decline" };
    });
    try {
      const r = await conn.call("request_access", { secret: "deploy-key-3", reason: "sanity" });
      assert.equal(r.doc["status"], "approval_pending", r.text);
      assert.ok(url.startsWith("http://127.0.0.1:"), url);
    } finally {
      await conn.close();
    }
  });

  test("another uid connecting over an IPv4-mapped IPv6 socket (::ffff:127.0.0.1) is refused the approval page and cannot approve the agent's request", { skip: OTHER_UID_SKIP }, async () => {
    const steps: string[] = [];
    let theirGet = 0;
    let theirPost = 0;
    let attacker: Promise<void> = Promise.resolve();
    const conn = await connect(async (url) => {
      // The person's browser is started with the URL; another local user reads it in /proc/PID/cmdline.
      // The person does nothing; the other user does it all, connecting from an AF_INET6 socket.
      const u = new URL(url);
      const mapped = `http://[::ffff:127.0.0.1]:${u.port}${u.pathname}`;
      const hostHdr = ["-H", `Host: 127.0.0.1:${u.port}`];
      attacker = (async () => {
        const g = await curl(true, [...hostHdr, mapped]);
        theirGet = g.status;
        steps.push(`their GET: ${g.status}`);
        const csrf = /name="csrf" value="([^"]+)"/.exec(g.body)?.[1];
        if (!csrf) return;
        const p = await curl(true, [...hostHdr, "-X", "POST", "-H", "Content-Type: application/x-www-form-urlencoded", "--data", `csrf=${encodeURIComponent(csrf)}&decision=approve&reason=approved+by+uid+65534`, mapped]);
        theirPost = p.status;
        steps.push(`their POST approve: ${p.status}`);
      })();
      return { action: "accept" };
    });
    try {
      const r = await conn.call("request_access", { secret: "deploy-key", reason: "deploy" });
      await attacker.catch((e: unknown) => void steps.push(`attacker failed: ${String(e)}`));
      steps.push(`request_access: ${r.doc["placeholder"] !== undefined ? `a lease ${String(r.doc["leaseId"])}` : String(r.doc["status"] ?? r.doc["error"]?.code)}`);
      const approvals = await vault.admin().listApprovals({ all: true });
      const mine = approvals.find((a) => a.secret === "global/deploy-key");
      steps.push(`approval: ${mine?.state} (${mine?.decisionReason})`);
      assert.equal(
        theirGet,
        403,
        `docs/mcp.md: the page "is shown and decided only for a client whose socket belongs to the user running lessor mcp (or root)"; uid 65534 got it over ::ffff:127.0.0.1 and approved: ${steps.join("; ")}`,
      );
      assert.notEqual(theirPost, 200, steps.join("; "));
      assert.equal(r.doc["placeholder"], undefined, `the agent got a lease another user approved: ${steps.join("; ")}`);
    } finally {
      await conn.close();
    }
  });
});

describe("request_access under an any_domain rule that needs approval", () => {
  test("asked for no host under a grant for any host, the call is refused before an approval is opened (lessor approvals lists none)", async () => {
    const conn = await connect();
    try {
      const before = (await vault.admin().listApprovals()).filter((a) => a.secret === "global/anyhost-key").length;
      const r = await conn.call("request_access", { secret: "anyhost-key", reason: "I will name no host" });
      assert.equal(r.isError, true, r.text);
      assert.equal(r.doc["error"]?.code, "invalid_request", r.text);
      const pending = (await vault.admin().listApprovals()).filter((a) => a.secret === "global/anyhost-key");
      const rows = await vault.admin().auditQuery({ types: ["approval_requested"], limit: 1000 });
      assert.equal(
        pending.length,
        before,
        `docs/mcp.md: "a request without domains is therefore refused (invalid_request, saying to name the hosts) before a person is asked to approve it"; yet the refused call opened ${pending.length - before} pending approval(s) that lessor approvals shows a person (ids ${pending.map((a) => a.id).join(", ")}; ${rows.filter((x) => x.secret === "global/anyhost-key").length} approval_requested row(s))`,
      );
    } finally {
      await conn.close();
    }
  });
});

