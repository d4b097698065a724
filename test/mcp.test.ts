/**
 * `lessor mcp` end to end: the MCP SDK's real client (`Client` over `StdioClientTransport`) starts the
 * built CLI (`dist/bin/lessor.cjs mcp --agent claude`: run `npm run build:cli` first) against a temp
 * home, and calls every tool. `http_request` goes through the injecting proxy the server runs, to a
 * real local HTTPS upstream that records what it receives: the upstream gets the credential, the agent
 * gets placeholders back. Uncovered hosts, the metadata address, another agent's lease, huge bodies,
 * revocation between calls and malformed calls are refused with structured errors, and the server
 * keeps serving. A canary value never appears in a tool result, an error, the server's stderr or the
 * audit trail.
 *
 * Nothing leaves the machine: the upstream listens on 127.0.0.1, its names resolve through
 * `[proxy] hosts` (never a real lookup), and `[proxy] allow` opens 127.0.0.1 only. The metadata address
 * is refused by the SSRF guard before any connection (it is never allowed, whatever the config says).
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import type { IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { LessorClient } from "../src/client/client.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { LocalCa } from "../src/proxy/ca.js";
import { BIN } from "./cli-harness.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";

const CANARY = "ghp_" + randomBytes(18).toString("hex"); // 40 characters, shaped like a GitHub token
const OTHER_CANARY = "sk-other-" + randomBytes(16).toString("hex");

interface Seen {
  host: string;
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  bodyBytes: number;
}

const root = mkdtempSync(join(tmpdir(), "lessor-mcp-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const LESSOR_HOME = join(HOME, ".lessor");

let port = 0;
let server: https.Server;
const seen: Seen[] = [];
/** The other agent's lease, taken by the owner before the servers start. */
let foreignLeaseId = "";

const POLICY = `
[[rule]]
name = "github"
effect = "allow"
agents = ["claude", "second"]
secrets = ["github-token"]
domains = ["api.test.example"]

[[rule]]
name = "other"
effect = "allow"
agents = ["someone-else"]
secrets = ["other-key"]
domains = ["other.test.example"]
`;

/** Every text a tool returned, and every stderr line, to check for the canaries at the end. */
const transcript: string[] = [];

function noCanary(where: string, text: string): void {
  for (const c of [CANARY, OTHER_CANARY]) assert.ok(!text.includes(c), `a secret value appears in ${where}`);
}

/** One `lessor mcp` process and the SDK client talking to it. */
interface Session {
  client: Client;
  stderr: () => string;
  call(name: string, args?: Record<string, unknown>): Promise<{ isError: boolean; doc: Record<string, any>; text: string }>;
  close(): Promise<void>;
}

/** `agent` "" starts it without --agent; `env` replaces LESSOR_HOME (to name a daemon instead). */
async function startSession(agent: string, env: Record<string, string> = { LESSOR_HOME }): Promise<Session> {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [BIN, "mcp", ...(agent === "" ? [] : ["--agent", agent])],
    env: { HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1", ...env },
    stderr: "pipe",
  });
  const err: Buffer[] = [];
  transport.stderr!.on("data", (d: Buffer) => err.push(d));
  const client = new Client({ name: "lessor-test", version: "1.0.0" });
  await client.connect(transport);
  return {
    client,
    stderr: () => Buffer.concat(err).toString("utf8"),
    async call(name, args = {}) {
      const r = (await client.callTool({ name, arguments: args })) as { isError?: boolean; content: { type: string; text: string }[]; structuredContent?: Record<string, unknown> };
      const text = r.content.map((c) => c.text).join("\n");
      transcript.push(text);
      return { isError: r.isError === true, doc: JSON.parse(text) as Record<string, any>, text };
    },
    async close() {
      await client.close();
      transcript.push(Buffer.concat(err).toString("utf8"));
    },
  };
}

describe("lessor mcp over stdio with the SDK's client", () => {
  let s: Session;

  before(async () => {
    mkdirSync(HOME, { recursive: true });
    const ca = LocalCa.create({ permitted: ["api.test.example", "other.test.example"] });
    writeFileSync(join(root, "upstream-ca.pem"), ca.certPem);
    server = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, (req, res) => {
      let bodyBytes = 0;
      req.on("data", (c: Buffer) => (bodyBytes += c.length));
      req.on("end", () => {
        seen.push({ host: String(req.headers.host ?? ""), method: req.method!, url: req.url!, headers: req.headers, bodyBytes });
        const path = (req.url ?? "/").split("?")[0];
        if (path === "/echo") {
          // Echoes the credential it received: the proxy must mask it on the way back.
          res.writeHead(200, { "content-type": "text/plain", "x-echo": "seen" });
          res.end(`you sent: ${String(req.headers.authorization ?? "")}\n`);
        } else if (path === "/big") {
          res.writeHead(200, { "content-type": "text/plain" });
          res.end("x".repeat(200 * 1024));
        } else {
          res.writeHead(200, { "content-type": "application/json" });
          res.end(JSON.stringify({ ok: true, path: req.url, bodyBytes }));
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as AddressInfo).port;
    await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    const base = readFileSync(join(LESSOR_HOME, "lessor.toml"), "utf8");
    writeFileSync(
      join(LESSOR_HOME, "lessor.toml"),
      `${base}\n[proxy]\nports = [${port}]\nallow = ["127.0.0.1"]\nhosts = { "api.test.example" = "127.0.0.1", "other.test.example" = "127.0.0.1" }\nupstream_ca = "${join(root, "upstream-ca.pem")}"\n`,
      { mode: 0o600 },
    );
    writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
    const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    try {
      await vault.admin().storeSecret({ name: "github-token", value: CANARY, kind: "pat", description: "GitHub token for the test API" });
      await vault.admin().storeSecret({ name: "other-key", value: OTHER_CANARY, description: "not for claude" });
      foreignLeaseId = (await vault.admin().requestLease({ agent: "someone-else", secret: { scope: "global", name: "other-key" } })).id;
    } finally {
      await vault.close();
    }
    s = await startSession("claude");
  });

  after(async () => {
    await s?.close().catch(() => {});
  });

  test("tools/list: six tools whose schemas refuse unknown fields and never take an agent", async () => {
    const { tools } = await s.client.listTools();
    assert.deepEqual(tools.map((t) => t.name).sort(), ["explain_access", "http_request", "list_leases", "list_secrets", "request_access", "revoke"]);
    for (const t of tools) {
      assert.equal(t.inputSchema.type, "object");
      assert.equal((t.inputSchema as { additionalProperties?: unknown }).additionalProperties, false, t.name);
      assert.ok(!("agent" in (t.inputSchema.properties ?? {})), `${t.name} must not take an agent`);
    }
    const ra = tools.find((t) => t.name === "request_access")!;
    assert.deepEqual((ra.inputSchema as { required?: string[] }).required, ["secret"]);
  });

  test("list_secrets: the names the agent is granted, with kind and description; never a value", async () => {
    const r = await s.call("list_secrets");
    assert.equal(r.isError, false);
    assert.deepEqual(r.doc["secrets"], [{ secret: "global/github-token", kind: "pat", description: "GitHub token for the test API", rule: "github", domains: ["api.test.example"] }]);
  });

  test("explain_access: allowed with the rule, denied with the reason", async () => {
    const yes = await s.call("explain_access", { secret: "github-token", domain: "api.test.example" });
    assert.equal(yes.doc["allow"], true);
    assert.equal(yes.doc["rule"], "github");
    const no = await s.call("explain_access", { secret: "other-key" });
    assert.equal(no.isError, false);
    assert.equal(no.doc["allow"], false);
    assert.match(String(no.doc["reason"]), /./);
  });

  let lease: Record<string, any>;

  test("request_access: a lease and a placeholder, never the value", async () => {
    const r = await s.call("request_access", { secret: "github-token" });
    assert.equal(r.isError, false, r.text);
    lease = r.doc;
    assert.match(String(lease["leaseId"]), /^[0-9a-f-]{36}$/);
    assert.deepEqual(lease["domains"], ["api.test.example"]);
    assert.equal(lease["secret"], "global/github-token");
    assert.ok(Date.parse(String(lease["expiresAt"])) > Date.now());
    assert.equal(typeof lease["placeholder"], "string");
    assert.notEqual(lease["placeholder"], CANARY);
    assert.equal(String(lease["placeholder"]).length, CANARY.length, "the placeholder is shaped like the value");
    assert.ok(!r.text.includes(CANARY));
  });

  test("request_access for a secret the agent is not granted: access_denied with what to do", async () => {
    const r = await s.call("request_access", { secret: "other-key" });
    assert.equal(r.isError, true);
    assert.equal(r.doc["error"]["code"], "access_denied");
    assert.match(r.doc["error"]["hint"], /explain_access/);
  });

  test("http_request: the upstream gets the credential, the agent gets the placeholder back", async () => {
    const before = seen.length;
    const r = await s.call("http_request", { method: "GET", url: `https://api.test.example:${port}/echo`, headers: { Authorization: `Bearer ${lease["placeholder"]}` } });
    assert.equal(r.isError, false, r.text);
    assert.equal(r.doc["status"], 200);
    assert.equal(r.doc["headers"]["x-echo"], "seen");
    assert.equal(seen.length, before + 1);
    assert.equal(seen.at(-1)!.headers.authorization, `Bearer ${CANARY}`, "the proxy swapped the placeholder for the value");
    assert.equal(r.doc["body"], `you sent: Bearer ${lease["placeholder"]}\n`, "the echoed value came back masked");
    assert.equal(r.doc["truncated"], false);
  });

  test("http_request: a long response is cut at 64 KiB with a note", async () => {
    const r = await s.call("http_request", { method: "GET", url: `https://api.test.example:${port}/big` });
    assert.equal(r.isError, false, r.text);
    assert.equal(r.doc["truncated"], true);
    assert.equal(String(r.doc["body"]).length, 64 * 1024);
    assert.match(String(r.doc["note"]), /65536/);
  });

  test("http_request to a host no lease covers is refused, and nothing reaches it", async () => {
    const before = seen.length;
    const r = await s.call("http_request", { method: "GET", url: `https://other.test.example:${port}/`, headers: { Authorization: `Bearer ${lease["placeholder"]}` } });
    assert.equal(r.isError, true);
    assert.equal(r.doc["error"]["code"], "access_denied");
    assert.match(r.doc["error"]["message"], /no lease of agent "claude".*covers other\.test\.example/);
    assert.equal(seen.length, before);
  });

  test("http_request to the metadata address is refused by the SSRF guard", async () => {
    const before = seen.length;
    const r = await s.call("http_request", { method: "GET", url: `https://169.254.169.254:${port}/latest/meta-data/` });
    assert.equal(r.isError, true);
    assert.equal(r.doc["error"]["code"], "access_denied");
    assert.match(r.doc["error"]["message"], /169\.254\.169\.254/);
    assert.match(r.doc["error"]["message"], /metadata/);
    assert.equal(seen.length, before);
  });

  test("http_request refuses plain http, credentials in the URL and headers lessor owns", async () => {
    for (const [args, re] of [
      [{ method: "GET", url: `http://api.test.example:${port}/` }, /https/],
      [{ method: "GET", url: `https://user:${lease["placeholder"]}@api.test.example:${port}/` }, /user name or password/],
      [{ method: "GET", url: `https://api.test.example:${port}/`, headers: { Host: "evil.example" } }, /header host is set by lessor/],
    ] as const) {
      const r = await s.call("http_request", args);
      assert.equal(r.isError, true);
      assert.equal(r.doc["error"]["code"], "invalid_request");
      assert.match(r.doc["error"]["message"], re);
    }
  });

  test("a huge request body is refused before anything is sent; a large one under the cap goes", async () => {
    const before = seen.length;
    const huge = await s.call("http_request", { method: "POST", url: `https://api.test.example:${port}/`, body: "a".repeat(2 * 1024 * 1024) });
    assert.equal(huge.isError, true);
    assert.equal(huge.doc["error"]["code"], "invalid_request");
    assert.match(huge.doc["error"]["message"], /body/);
    assert.ok(huge.text.length < 2000, "the error does not echo the body");
    assert.equal(seen.length, before);
    const big = await s.call("http_request", { method: "POST", url: `https://api.test.example:${port}/`, body: "b".repeat(512 * 1024) });
    assert.equal(big.isError, false, big.text);
    assert.equal(seen.at(-1)!.bodyBytes, 512 * 1024);
  });

  test("revoke: another agent's lease id is refused like an unknown one, and that lease lives on", async () => {
    const r = await s.call("revoke", { leaseId: foreignLeaseId });
    assert.equal(r.isError, true);
    assert.equal(r.doc["error"]["code"], "lease_not_found");
    const leases = await s.call("list_leases", { live: true });
    assert.ok(leases.doc["leases"].every((l: { leaseId: string }) => l.leaseId !== foreignLeaseId), "list_leases shows only the agent's own leases");
  });

  test("malformed calls get a clear error and the server keeps serving", async () => {
    const crafted = await s.call("request_access", { secret: 42, agent: "someone-else", [CANARY.slice(0, 20)]: CANARY });
    assert.equal(crafted.isError, true);
    assert.equal(crafted.doc["error"]["code"], "invalid_request");
    assert.match(crafted.doc["error"]["message"], /secret/);
    assert.match(crafted.doc["error"]["message"], /"agent"/);
    assert.ok(!crafted.text.includes(CANARY.slice(0, 20)));

    const badId = await s.call("revoke", { leaseId: "../../etc/passwd" });
    assert.equal(badId.doc["error"]["code"], "invalid_request");
    assert.match(badId.doc["error"]["message"], /lease id/);

    const badMethod = await s.call("http_request", { method: "TRACE", url: `https://api.test.example:${port}/` });
    assert.equal(badMethod.doc["error"]["code"], "invalid_request");

    const badHeader = await s.call("http_request", { method: "GET", url: `https://api.test.example:${port}/`, headers: { "X-A": "line\r\nInjected: 1" } });
    assert.equal(badHeader.doc["error"]["code"], "invalid_request");

    await assert.rejects(s.client.callTool({ name: "read_secret", arguments: { secret: "github-token" } }), /unknown tool "read_secret"/);

    const still = await s.call("list_leases");
    assert.equal(still.isError, false);
    assert.ok(still.doc["leases"].some((l: { leaseId: string; placeholder?: string }) => l.leaseId === lease["leaseId"] && l.placeholder === lease["placeholder"]));
  });

  test("revocation between two calls: the second request is refused", async () => {
    const s2 = await startSession("second");
    try {
      const got = await s2.call("request_access", { secret: "github-token", domains: ["api.test.example"] });
      assert.equal(got.isError, false, got.text);
      const url = `https://api.test.example:${port}/echo`;
      const headers = { Authorization: `Bearer ${got.doc["placeholder"]}` };
      const first = await s2.call("http_request", { method: "GET", url, headers });
      assert.equal(first.doc["status"], 200);
      const rev = await s2.call("revoke", { leaseId: got.doc["leaseId"] });
      assert.equal(rev.isError, false, rev.text);
      assert.equal(rev.doc["revoked"], true);
      const before = seen.length;
      const second = await s2.call("http_request", { method: "GET", url, headers });
      assert.equal(second.isError, true);
      assert.equal(second.doc["error"]["code"], "access_denied");
      assert.equal(seen.length, before, "nothing went upstream after the revocation");
    } finally {
      await s2.close();
    }
  });

  test("revocation by the owner elsewhere between two calls: the proxy refuses the use", async () => {
    const s3 = await startSession("second");
    try {
      const got = await s3.call("request_access", { secret: "github-token" });
      const url = `https://api.test.example:${port}/echo`;
      const headers = { Authorization: `Bearer ${got.doc["placeholder"]}` };
      assert.equal((await s3.call("http_request", { method: "GET", url, headers })).doc["status"], 200);
      const r = spawnSync(process.execPath, [BIN, "revoke", String(got.doc["leaseId"])], { env: { HOME, LESSOR_HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1" }, encoding: "utf8" });
      assert.equal(r.status, 0, r.stderr);
      const before = seen.length;
      const second = await s3.call("http_request", { method: "GET", url, headers });
      assert.equal(second.isError, true, second.text);
      assert.equal(second.doc["error"]["code"], "lease_revoked");
      assert.equal(seen.length, before);
    } finally {
      await s3.close();
    }
  });

  test("--agent is required when the server reaches the vault as its owner", () => {
    const r = spawnSync(process.execPath, [BIN, "mcp"], { env: { HOME, LESSOR_HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1" }, input: "", encoding: "utf8" });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /--agent is required/);
    assert.equal(r.stdout, "");
  });

  test("stdin closed right after the calls (input piped in): every call is still answered before the server ends", async () => {
    const msgs = [
      { jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "pipe", version: "1" } } },
      { jsonrpc: "2.0", method: "notifications/initialized" },
      { jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "list_secrets", arguments: {} } },
      { jsonrpc: "2.0", id: 3, method: "tools/call", params: { name: "request_access", arguments: { secret: "github-token", domains: ["api.test.example"] } } },
      { jsonrpc: "2.0", id: 4, method: "tools/call", params: { name: "http_request", arguments: { method: "GET", url: `https://api.test.example:${port}/big` } } },
    ];
    // Not spawnSync: the upstream answering http_request runs in this process.
    const child = spawn(process.execPath, [BIN, "mcp", "--agent", "claude"], { env: { HOME, LESSOR_HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1" }, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString("utf8")));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    const closed = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)));
    child.stdin.end(msgs.map((m) => JSON.stringify(m)).join("\n") + "\n");
    const status = await closed;
    clearTimeout(timer);
    const r = { status, stdout, stderr };
    assert.equal(r.status, 0, r.stderr);
    const answered = r.stdout.split("\n").filter((l) => l.trim() !== "").map((l) => (JSON.parse(l) as { id?: number }).id);
    assert.deepEqual(answered.sort(), [1, 2, 3, 4], `answers on stdout: ${r.stdout.slice(0, 500)}`);
    assert.ok(!r.stdout.includes(CANARY) && !r.stderr.includes(CANARY));
  });

  test("closing the session revokes its leases; no value in any result, stderr or audit row", async () => {
    await s.close();
    const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    try {
      const live = await vault.admin().listLeases({ agent: "claude", liveAt: Date.now() });
      assert.deepEqual(live, [], "the session's leases were revoked when the client closed");
      const events = await vault.admin().auditQuery({ limit: 10_000 });
      assert.ok(events.some((e) => e.type === "proxy_request" && e.agent === "claude"), "http_request is audited as proxy_request");
      assert.ok(events.some((e) => e.type === "lease_granted" && e.agent === "claude"));
      const calls = events.filter((e) => e.type === "tool_call" && e.agent === "claude");
      assert.ok(calls.some((e) => e.actorRole === "admin" && JSON.parse(e.detail!).tool === "http_request" && e.outcome === "ok"), "the owner's server audits each call for the agent it serves");
      assert.ok(calls.some((e) => JSON.parse(e.detail!).tool === "unknown" && e.reason === "unknown_tool"));
      noCanary("the audit trail", JSON.stringify(events));
    } finally {
      await vault.close();
    }
    const all = transcript.join("\n");
    assert.match(all, /lessor mcp: agent "claude" http_request: ok/, "each call is logged on stderr");
    noCanary("the tool results and stderr", all);
  });
});

describe("lessor mcp as an agent of a daemon (LESSOR_ADDR and LESSOR_TOKEN_FILE)", () => {
  let d: RunningDaemon;
  let env: Record<string, string>;
  let dhome: string;

  before(async () => {
    // The first suite's upstream serves this one too (suites run in order; this one's after() closes it).
    dhome = await makeHome({
      policy: POLICY,
      config: `[server]\ntcp = "127.0.0.1:0"\n[proxy]\nports = [${port}]\nallow = ["127.0.0.1"]\nhosts = { "api.test.example" = "127.0.0.1" }\nupstream_ca = "${join(root, "upstream-ca.pem")}"\n`,
    });
    const v = await openVault({ home: dhome, env: { LESSOR_HOME: dhome } });
    await v.admin().storeSecret({ name: "github-token", value: CANARY, kind: "pat" });
    await v.close();
    d = await startServe(dhome);
    const admin = await LessorClient.connect({ socketPath: d.socket });
    try {
      const t = await admin.createToken({ name: "mcp", role: "agent", agent: "claude", ttl: "1h" });
      const file = join(root, "agent-token");
      writeFileSync(file, t.token, { mode: 0o600 });
      env = { LESSOR_ADDR: `127.0.0.1:${d.tcp!.port}`, LESSOR_TOKEN_FILE: file, LESSOR_HOME: dhome };
    } finally {
      await admin.close();
    }
  });
  after(async () => {
    await d?.stop();
    server?.close();
  });

  test("the daemon names the agent: --agent may be omitted, a different one is refused", async () => {
    const wrong = spawnSync(process.execPath, [BIN, "mcp", "--agent", "someone-else"], { env: { HOME, PATH: "/usr/bin:/bin", ...env }, input: "", encoding: "utf8" });
    assert.notEqual(wrong.status, 0);
    assert.match(wrong.stderr, /knows this process as agent "claude"/);

    const s = await startSession("", env);
    try {
      const listed = await s.call("list_secrets");
      assert.equal(listed.isError, false, listed.text);
      assert.deepEqual(listed.doc["secrets"].map((x: { secret: string }) => x.secret), ["global/github-token"], "an agent lists the secrets its own grants cover");
      const got = await s.call("request_access", { secret: "github-token" });
      assert.equal(got.isError, false, got.text);
      const before = seen.length;
      const r = await s.call("http_request", { method: "GET", url: `https://api.test.example:${port}/echo`, headers: { Authorization: `Bearer ${got.doc["placeholder"]}` } });
      assert.equal(r.isError, false, r.text);
      assert.equal(seen.length, before + 1);
      assert.equal(seen.at(-1)!.headers.authorization, `Bearer ${CANARY}`);
      assert.equal(r.doc["body"], `you sent: Bearer ${got.doc["placeholder"]}\n`);
      const mine = await s.call("list_leases");
      assert.deepEqual(mine.doc["leases"].map((l: { leaseId: string }) => l.leaseId), [got.doc["leaseId"]]);
    } finally {
      await s.close();
    }
    noCanary("the agent session", transcript.join("\n"));
  });
});
