/**
 * `lessor mcp` audits every tool call, and an agent reaching the vault with its own identity sees only
 * its own grants. The MCP SDK's real client starts the built CLI (`dist/bin/lessor.cjs mcp`: run
 * `npm run build:cli` first) with an agent token for a real daemon (`lessor serve`, loopback TCP), as an
 * agent's MCP configuration would, and a real local HTTPS upstream that echoes what it receives.
 *
 * Each tool call (ok, refused, malformed, to an unknown tool, or too malformed to name one) leaves
 * exactly one `tool_call` row naming the agent (from the token), the tool (or the placeholder
 * "unknown", never the name as sent), the outcome and the code; a canary secret value never appears in
 * a row even when the upstream echoes it and the arguments carry it. The agent lists only its granted
 * names and explains only its own access.
 *
 * Nothing leaves the machine: the upstream listens on 127.0.0.1 and its names resolve through
 * `[proxy] hosts`.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";
import { LessorClient } from "../src/client/client.js";
import { openVault } from "../src/config/open-vault.js";
import type { WireAuditEvent } from "../src/protocol/registry.js";
import { LocalCa } from "../src/proxy/ca.js";
import { BIN } from "./cli-harness.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";

const CANARY = "ghp_" + randomBytes(18).toString("hex");
const OTHER_CANARY = "sk-other-" + randomBytes(16).toString("hex");

const POLICY = `
[[rule]]
name = "github"
effect = "allow"
agents = ["claude"]
secrets = ["github-token"]
domains = ["api.test.example"]

[[rule]]
name = "someone-elses-rule"
effect = "allow"
agents = ["someone-else"]
secrets = ["other-key", "github-token"]
domains = ["other.test.example"]
`;

const root = mkdtempSync(join(tmpdir(), "lessor-mcp-audit-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

/** Every text a tool returned and the server's stderr. */
const transcript: string[] = [];

function noCanary(where: string, text: string): void {
  for (const c of [CANARY, OTHER_CANARY]) assert.ok(!text.includes(c), `a secret value appears in ${where}`);
}

describe("lessor mcp as an agent of a daemon: every tool call audited, only its own grants visible", () => {
  let upstream: https.Server;
  let port = 0;
  let d: RunningDaemon;
  let admin: LessorClient;
  let client: Client;
  let stderr: () => string;

  before(async () => {
    const ca = LocalCa.create({ permitted: ["api.test.example"] });
    writeFileSync(join(root, "upstream-ca.pem"), ca.certPem);
    upstream = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, (req, res) => {
      req.resume();
      req.on("end", () => {
        // Echoes the credential, and the query, it received: the proxy must mask the value on the way back.
        res.writeHead(200, { "content-type": "text/plain" });
        res.end(`you sent: ${String(req.headers.authorization ?? "")} to ${req.url}\n`);
      });
    });
    await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
    port = (upstream.address() as AddressInfo).port;

    const home = await makeHome({
      policy: POLICY,
      config: `[server]\ntcp = "127.0.0.1:0"\n[proxy]\nports = [${port}]\nallow = ["127.0.0.1"]\nhosts = { "api.test.example" = "127.0.0.1" }\nupstream_ca = "${join(root, "upstream-ca.pem")}"\n`,
    });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      await v.admin().storeSecret({ name: "github-token", value: CANARY, kind: "pat", description: "GitHub token for the test API" });
      await v.admin().storeSecret({ name: "other-key", value: OTHER_CANARY, description: "someone else's key" });
    } finally {
      await v.close();
    }
    d = await startServe(home);
    admin = await LessorClient.connect({ socketPath: d.socket });
    const t = await admin.createToken({ name: "claude-mcp", role: "agent", agent: "claude", ttl: "1h" });
    const tokenFile = join(root, "agent-token");
    writeFileSync(tokenFile, t.token, { mode: 0o600 });

    const transport = new StdioClientTransport({
      command: process.execPath,
      args: [BIN, "mcp"],
      env: { HOME: root, PATH: "/usr/bin:/bin", NO_COLOR: "1", LESSOR_HOME: home, LESSOR_ADDR: `127.0.0.1:${d.tcp!.port}`, LESSOR_TOKEN_FILE: tokenFile },
      stderr: "pipe",
    });
    const err: Buffer[] = [];
    transport.stderr!.on("data", (b: Buffer) => err.push(b));
    stderr = () => Buffer.concat(err).toString("utf8");
    client = new Client({ name: "lessor-audit-test", version: "1.0.0" });
    await client.connect(transport);
  });

  after(async () => {
    await client?.close().catch(() => {});
    transcript.push(stderr?.() ?? "");
    await admin?.close();
    await d?.stop();
    upstream?.close();
  });

  /** The audit trail's head now. */
  const head = async (): Promise<number> => (await admin.status()).auditHead;

  /** The tool_call rows written after `seq`. */
  const toolRows = async (seq: number): Promise<WireAuditEvent[]> => admin.api.audit_query({ types: ["tool_call"], afterSeq: seq, order: "asc", limit: 100 });

  async function call(name: string, args: Record<string, unknown> = {}): Promise<{ isError: boolean; doc: Record<string, any>; text: string }> {
    const r = (await client.callTool({ name, arguments: args })) as { isError?: boolean; content: { text: string }[] };
    const text = r.content.map((c) => c.text).join("\n");
    transcript.push(text);
    return { isError: r.isError === true, doc: JSON.parse(text) as Record<string, any>, text };
  }

  /** Runs `f` and checks it left exactly one tool_call row, with these fields. */
  async function oneRow(f: () => Promise<unknown>, want: { tool: string; outcome: "ok" | "denied" | "error"; reason: string | null }): Promise<WireAuditEvent> {
    const seq = await head();
    await f();
    const rows = await toolRows(seq);
    assert.equal(rows.length, 1, `exactly one tool_call row for a ${want.tool} call (got ${rows.length})`);
    const row = rows[0]!;
    assert.equal(row.agent, "claude", "the agent is the token's");
    assert.equal(row.actorRole, "agent");
    assert.equal(row.outcome, want.outcome);
    assert.equal(row.reason, want.reason);
    assert.equal((row.detail as { tool?: unknown }).tool, want.tool);
    assert.deepEqual(Object.keys(row.detail ?? {}).sort(), ["ms", "tool"], "the row holds the tool and the time, nothing of the call");
    assert.equal(row.secret, null);
    assert.equal(row.domain, null);
    assert.equal(row.leaseId, null);
    return row;
  }

  let placeholder = "";

  test("list_secrets as the agent: only the names its grants cover; never another agent's, never a value", async () => {
    const r = await oneRow(() => call("list_secrets"), { tool: "list_secrets", outcome: "ok", reason: null });
    assert.ok(r.seq > 0);
    const listed = await call("list_secrets");
    assert.equal(listed.isError, false, listed.text);
    assert.deepEqual(listed.doc["secrets"], [{ secret: "global/github-token", kind: "pat", description: "GitHub token for the test API", rule: "github", domains: ["api.test.example"] }]);
    for (const foreign of ["other-key", "someone-else", "someone-elses-rule", "other.test.example"]) assert.ok(!listed.text.includes(foreign), `${foreign} is not shown to claude`);
  });

  test("explain_access as the agent: its own access, with no trace of the rules naming other agents", async () => {
    const yes = await call("explain_access", { secret: "github-token", domain: "api.test.example" });
    assert.equal(yes.isError, false, yes.text);
    assert.equal(yes.doc["agent"], "claude");
    assert.equal(yes.doc["allow"], true);
    assert.equal(yes.doc["rule"], "github");
    const no = await oneRow(() => call("explain_access", { secret: "other-key", domain: "other.test.example" }), { tool: "explain_access", outcome: "ok", reason: null });
    assert.ok(no);
    const denied = await call("explain_access", { secret: "other-key" });
    assert.equal(denied.doc["allow"], false);
    assert.ok(!denied.text.includes("someone-else"), "the rule naming another agent is not explained to claude");
    // There is no way to name another agent: the argument is refused as malformed (and audited).
    const crafted = await oneRow(() => call("explain_access", { secret: "other-key", agent: "someone-else" }), { tool: "explain_access", outcome: "error", reason: "invalid_request" });
    assert.ok(crafted);
  });

  test("request_access and http_request: one ok row each; the upstream echoes the value and the arguments carry it, never a row", async () => {
    await oneRow(
      async () => {
        const got = await call("request_access", { secret: "github-token" });
        assert.equal(got.isError, false, got.text);
        placeholder = String(got.doc["placeholder"]);
      },
      { tool: "request_access", outcome: "ok", reason: null },
    );
    const argMark = `arg-${randomBytes(8).toString("hex")}`;
    const row = await oneRow(
      async () => {
        // The query holds a text of the agent's and a header holds the value in clear: neither may
        // reach a tool_call row. (The value in the URL is refused: "a refused call" below.)
        const r = await call("http_request", { method: "GET", url: `https://api.test.example:${port}/echo?token=${argMark}`, headers: { Authorization: `Bearer ${placeholder}`, "X-Leak": CANARY } });
        assert.equal(r.isError, false, r.text);
        assert.match(String(r.doc["body"]), new RegExp(`you sent: Bearer ${placeholder}`), "the echoed credential came back masked");
      },
      { tool: "http_request", outcome: "ok", reason: null },
    );
    assert.ok(!JSON.stringify(row).includes(argMark), "the arguments reached the tool_call row");
  });

  test("a refused call: one row with outcome denied and the code", async () => {
    await oneRow(
      async () => {
        const r = await call("request_access", { secret: "other-key", reason: `please, here is ${CANARY}` });
        assert.equal(r.isError, true);
        assert.equal(r.doc["error"]["code"], "access_denied");
      },
      { tool: "request_access", outcome: "denied", reason: "access_denied" },
    );
    await oneRow(
      async () => {
        const r = await call("http_request", { method: "GET", url: `https://169.254.169.254:${port}/latest/meta-data/?k=${CANARY}` });
        assert.equal(r.isError, true);
      },
      { tool: "http_request", outcome: "denied", reason: "access_denied" },
    );
    // The leased credential's own value in the URL: refused before it goes anywhere, and not in the row.
    await oneRow(
      async () => {
        const r = await call("http_request", { method: "GET", url: `https://api.test.example:${port}/echo?token=${CANARY}`, headers: { Authorization: `Bearer ${placeholder}` } });
        assert.equal(r.isError, true);
        assert.equal(r.doc["error"]["code"], "invalid_request");
        assert.match(String(r.doc["error"]["message"]), /the URL holds a credential of this run/);
      },
      { tool: "http_request", outcome: "error", reason: "invalid_request" },
    );
  });

  test("a malformed call: one row with outcome error, invalid_request; the crafted arguments are nowhere in it", async () => {
    const row = await oneRow(
      async () => {
        const r = await call("request_access", { secret: 42, agent: "someone-else", [CANARY.slice(0, 30)]: CANARY });
        assert.equal(r.doc["error"]["code"], "invalid_request");
      },
      { tool: "request_access", outcome: "error", reason: "invalid_request" },
    );
    noCanary("the malformed call's row", JSON.stringify(row));
  });

  test("an unknown tool: one row with the placeholder name \"unknown\", never the name as sent", async () => {
    for (const name of ["read_secret", `read_${CANARY}`, "list_secrets\u001b[2J", "x".repeat(5000)]) {
      const row = await oneRow(() => assert.rejects(client.callTool({ name, arguments: { secret: CANARY } }), /unknown tool/), { tool: "unknown", outcome: "error", reason: "unknown_tool" });
      noCanary("an unknown tool's row", JSON.stringify(row));
      assert.ok(!JSON.stringify(row).includes("read_"), "the name as sent is not in the row");
    }
  });

  test("a tools/call too malformed to name a tool: one row, \"unknown\", and the server keeps serving", async () => {
    for (const params of [{ name: 42, arguments: { secret: CANARY } }, { arguments: CANARY }, { name: "request_access", arguments: CANARY }]) {
      const want = params.name === "request_access" ? "request_access" : "unknown";
      const row = await oneRow(
        () => assert.rejects(client.request({ method: "tools/call", params: params as never }, CallToolResultSchema), (e: Error) => /invalid tools\/call request/.test(e.message) && !e.message.includes(CANARY)),
        { tool: want, outcome: "error", reason: "invalid_request" },
      );
      noCanary("a malformed request's row", JSON.stringify(row));
    }
    const still = await call("list_leases");
    assert.equal(still.isError, false, still.text);
  });

  test("no secret value in any audit row, tool result or stderr line; the trail verifies", async () => {
    const events = await admin.api.audit_query({ limit: 10_000 });
    assert.ok(events.some((e) => e.type === "proxy_request" && e.agent === "claude"));
    const rows = events.filter((e) => e.type === "tool_call");
    assert.ok(rows.length >= 12, `tool_call rows: ${rows.length}`);
    assert.ok(rows.every((e) => e.agent === "claude"));
    noCanary("the audit trail", JSON.stringify(events));
    assert.ok(!JSON.stringify(rows).includes("X-Leak") && !JSON.stringify(rows).includes("/echo"), "no header, no URL in a tool_call row");
    assert.equal((await admin.api.audit_verify({})).ok, true);
    noCanary("the tool results and stderr", transcript.join("\n") + stderr());
  });
});
