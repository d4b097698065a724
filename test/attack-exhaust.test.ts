/**
 * One agent exhausting what others share: here, the disk the trail is on.
 *
 * `record_proxy_requests` is open to every role (the proxy an agent runs with its own token reports
 * its requests through it), and every report of a request that went (outcome ok or error) was one
 * `proxy_request` row: 256 reports a call, each with a path of up to 8 KiB and a reason of 300
 * characters, no request made. An agent token looping on it wrote ~3,000 rows (~12 MB) a second to the
 * vault's database, a terabyte a day, until the disk every agent's vault is on was full. Now such
 * reports are written one row each up to `[vault] proxy_request_rows` (200) per identity and agent in
 * each 10 s window, then counted, by outcome and status, in one summary row per window.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync, readdirSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { join } from "node:path";
import { after, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import type { AuditRecord } from "../src/base/types.js";
import { DEFAULT_LIMITS } from "../src/vault/limits.js";
import type { ProxyRequestReport } from "../src/vault/proxy-requests.js";
import { BIN, runCli } from "./cli-harness.js";
import { makeHome, serveWithAgentTokens, startServe } from "./daemon-harness.js";
import { agent as agentIdentity, grant, makeVault, orchestrator } from "./helpers.js";

const CANARY = "canary-exhaust-9f2c41d7e8b3a6";
const POLICY = grant("gh", ["claude", "bob"], ["github-token"], ["api.github.com"]);

/** A report of a request that went (the tally's concern here). */
type Report = ProxyRequestReport & { outcome: "ok" | "error" };

const detailOf = (r: AuditRecord): Record<string, unknown> | null => (typeof r.detail === "string" ? JSON.parse(r.detail) : r.detail) as Record<string, unknown> | null;

const countOf = (r: AuditRecord): number => {
  const d = (typeof r.detail === "string" ? JSON.parse(r.detail) : r.detail) as Record<string, unknown> | null;
  return typeof d?.["count"] === "number" ? d["count"] : 1;
};

/** `lessor mcp --agent claude` on `home` over stdio (the built CLI), closed after the test; and what it wrote to stderr. */
async function mcpAgent(home: string): Promise<{ c: Client; stderr: () => string }> {
  const t = new StdioClientTransport({ command: process.execPath, args: [BIN, "mcp", "--agent", "claude"], env: { PATH: "/usr/bin:/bin", LESSOR_HOME: home, NO_COLOR: "1" }, stderr: "pipe" });
  let err = "";
  t.stderr!.on("data", (b: Buffer) => (err += b.toString()));
  const c = new Client({ name: "attack-exhaust", version: "1" });
  await c.connect(t);
  after(() => c.close());
  return { c, stderr: () => err };
}

test("attack: an agent token floods record_proxy_requests with made-up ok/error reports over lessor serve: a bounded number of rows, every report counted, another agent's still written, the owner still served", async () => {
  const { home, agents, stop } = await serveWithAgentTokens({ policy: POLICY, secret: { name: "github-token", value: CANARY }, tokens: { mallory: "claude", bob: "bob" } });
  const agent = agents["mallory"]!;
  const bob = agents["bob"]!;
  // Its own real lease, named in half the reports, as a proxy would.
  const lease = await agent.requestLease({ secret: "github-token", domains: ["api.github.com"], ttl: "5m" });
  const CALLS = 40;
  const reports: Report[] = Array.from({ length: 256 }, (_, i) => ({
    agent: "claude",
    leaseIds: i % 2 ? [lease.id] : [],
    method: "GET",
    host: "api.github.com",
    path: `/${"x".repeat(3000)}/${i}`,
    status: i % 2 ? 200 : 0,
    bytesOut: 0,
    bytesIn: 0,
    ms: 1,
    outcome: i % 2 ? "ok" : "error",
    reason: "r".repeat(300),
  }));
  const flood = (async () => {
    for (let i = 0; i < CALLS; i++) await agent.api.record_proxy_requests({ reports });
  })();
  // Meanwhile another agent's few requests are reported, and the owner's CLI is served.
  for (let i = 0; i < 3; i++)
    await bob.api.record_proxy_requests({ reports: [{ agent: "bob", leaseIds: [], method: "GET", host: "api.github.com", path: `/bob-${i}`, status: 200, bytesOut: 1, bytesIn: 1, ms: 1, outcome: "ok" }] });
  const st = await runCli(["status"], { home, timeoutMs: 30_000 });
  assert.equal(st.code, 0, `lessor status during the flood: ${st.stderr}`);
  await flood;
  await stop();

  const vault = await openVault({ home, env: {} });
  after(() => vault.close());
  const rows = (await vault.admin().auditQuery({ types: ["proxy_request"], limit: 100_000 })) as AuditRecord[];
  const claude = rows.filter((r) => r.agent === "claude");
  const total = claude.reduce((n, r) => n + countOf(r), 0);
  assert.equal(total, CALLS * 256, "every report is in the trail, written or counted");
  assert.ok(
    claude.length <= DEFAULT_LIMITS.proxyRequestRows + 8,
    `${claude.length} rows for ${CALLS * 256} made-up reports (at most [vault] proxy_request_rows = ${DEFAULT_LIMITS.proxyRequestRows} a window, then a summary)`,
  );
  const summary = claude.find((r) => countOf(r) > 1);
  assert.ok(summary, "the reports past the burst are one summary row");
  assert.match(String(summary.reason), /proxy_request_rows/, "the summary names the setting");
  const bobs = rows.filter((r) => r.agent === "bob");
  assert.deepEqual(
    bobs.map((r) => JSON.parse(typeof r.detail === "string" ? r.detail : JSON.stringify(r.detail)).path).sort(),
    ["/bob-0", "/bob-1", "/bob-2"],
    "another agent's requests are written one row each, with their paths",
  );
  assert.equal((await vault.admin().auditVerify()).ok, true);
  for (const f of readdirSync(home)) {
    if (!f.startsWith("lessor.db")) continue;
    assert.ok(!readFileSync(join(home, f)).includes(CANARY), `the secret value is not in ${f} in the clear`);
  }
});

test("[vault] proxy_request_rows sets the burst: past it reports of requests that went are counted by outcome and status; refused ones and tripwire alarms keep their own rules", async () => {
  const { vault } = await makeVault({ policy: POLICY, limits: { proxyRequestRows: 3, authFailureWindowMs: 3_600_000 } });
  await vault.admin().storeSecret({ name: "github-token", value: CANARY });
  const claude = vault.session(agentIdentity("claude"));
  const rep = (path: string, outcome: "ok" | "error", status: number): Report => ({ agent: "claude", leaseIds: [], method: "GET", host: "api.github.com", path, status, bytesOut: 0, bytesIn: 0, ms: 1, outcome });
  await claude.recordProxyRequests([...Array.from({ length: 7 }, (_, i) => rep(`/ok-${i}`, "ok", 200)), rep("/err", "error", 0), rep("/404", "ok", 404)]);
  await vault.flushRefusals();
  const rows = (await vault.admin().auditQuery({ types: ["proxy_request"], limit: 1000 })) as AuditRecord[];
  const one = rows.filter((r) => countOf(r) === 1 && !String(r.reason ?? "").includes("counted"));
  assert.equal(one.length, 3, "the first three are rows of their own");
  const sums = rows.filter((r) => String(r.reason ?? "").includes("counted"));
  assert.equal(sums.length, 1);
  const detail = (typeof sums[0]!.detail === "string" ? JSON.parse(sums[0]!.detail) : sums[0]!.detail) as Record<string, unknown>;
  assert.equal(detail["count"], 6);
  assert.match(String(detail["reasons"]), /ok 200 ×4/);
  assert.match(String(detail["reasons"]), /error 0 ×1/);
  assert.match(String(detail["reasons"]), /ok 404 ×1/);
  assert.equal(sums[0]!.outcome, "error", "a summary counting an error is not filed as all ok");
  assert.equal(sums[0]!.agent, "claude");
  assert.equal((await vault.admin().auditVerify()).ok, true);
});

test("[vault] proxy_request_rows binds agents' own reports only: the owner's proxy (lessor run, lessor proxy) keeps a row for every request however busy the agent", async () => {
  // Issue 14: every proxied request is an audit event. The cap is for reports an agent (or a VM guest)
  // could make up about itself; the owner's proxies report as the owner.
  const { vault } = await makeVault({ policy: POLICY, limits: { proxyRequestRows: 3, authFailureWindowMs: 3_600_000 } });
  await vault.admin().storeSecret({ name: "github-token", value: CANARY });
  const rep = (path: string): Report => ({ agent: "claude", leaseIds: [], method: "GET", host: "api.github.com", path, status: 200, bytesOut: 0, bytesIn: 0, ms: 1, outcome: "ok" });
  await vault.admin().recordProxyRequests(Array.from({ length: 9 }, (_, i) => rep(`/owner-${i}`)));
  await vault.session(agentIdentity("claude")).recordProxyRequests(Array.from({ length: 5 }, (_, i) => rep(`/agent-${i}`)));
  await vault.flushRefusals();
  const rows = (await vault.admin().auditQuery({ types: ["proxy_request"], limit: 1000 })) as AuditRecord[];
  const paths = (prefix: string) => rows.filter((r) => String((typeof r.detail === "string" ? JSON.parse(r.detail) : r.detail)?.path ?? "").startsWith(prefix));
  assert.equal(paths("/owner-").length, 9, "every request the owner's proxy reported is a row of its own");
  assert.equal(paths("/agent-").length, 3, "an agent's own reports past the burst are counted");
  const sums = rows.filter((r) => String(r.reason ?? "").includes("counted"));
  assert.equal(sums.length, 1, "one summary, the agent's");
  assert.equal(sums[0]!.actorRole, "agent");
});

test("reports of requests that carried a counted use are rows of their own however many: an agent proxy's real traffic is never a summary, and made-up reports past the leases' uses are (review)", async () => {
  // The tally let a proxy running under an agent token (a VM guest's, lessor mcp's) have its real
  // requests folded into a count once 200 came in a window: an agent could make 200 requests it did
  // not care about, then the one it wanted hidden (DELETE /repos/acme/prod), whose row was never written.
  const { vault } = await makeVault({ policy: POLICY, limits: { proxyRequestRows: 3, authFailureWindowMs: 3_600_000 } });
  await vault.admin().storeSecret({ name: "github-token", value: CANARY });
  const claude = vault.session(agentIdentity("claude"));
  const lease = await claude.requestLease({ secret: "github-token", domains: ["api.github.com"] });
  for (let i = 0; i < 9; i++) (await claude.accessSecret(lease.id, { domain: "api.github.com" })).value.wipe();
  const uses = (await claude.listLeases({})).find((l) => l.id === lease.id)!.uses;
  const rep = (path: string, leaseIds: string[], method = "GET"): Report => ({ agent: "claude", leaseIds, method, host: "api.github.com", path, status: 200, bytesOut: 0, bytesIn: 0, ms: 1, outcome: "ok" });
  // As many as the lease was used, the last one the request to hide; then 5 more naming the same lease
  // (made up: the lease was not used for them), and 5 that carried no credential.
  const real = Array.from({ length: uses - 1 }, (_, i) => rep(`/noise-${i}`, [lease.id]));
  await claude.recordProxyRequests([...real, rep("/repos/acme/prod", [lease.id], "DELETE")]);
  await claude.recordProxyRequests(Array.from({ length: 5 }, (_, i) => rep(`/made-up-${i}`, [lease.id])));
  await claude.recordProxyRequests(Array.from({ length: 5 }, (_, i) => rep(`/plain-${i}`, [])));
  await vault.flushRefusals();
  const rows = (await vault.admin().auditQuery({ types: ["proxy_request"], limit: 1000 })) as AuditRecord[];
  const own = (prefix: string) => rows.filter((r) => String(detailOf(r)?.["path"] ?? "").startsWith(prefix));
  assert.equal(own("/noise-").length, uses - 1, "every report of a use the vault counted is a row of its own");
  const hidden = own("/repos/acme/prod");
  assert.equal(hidden.length, 1, "the request the agent wanted hidden has its row");
  assert.equal(detailOf(hidden[0]!)?.["method"], "DELETE");
  // The made-up ones and the plain ones share the burst of 3; the rest are counted.
  assert.equal(own("/made-up-").length + own("/plain-").length, 3, "past the leases' uses, reports share the burst");
  const sums = rows.filter((r) => String(r.reason ?? "").includes("counted"));
  assert.equal(sums.length, 1);
  assert.equal(countOf(sums[0]!), 7);
  assert.equal((await vault.admin().auditVerify()).ok, true);
});

test("an orchestrator naming made-up agents cannot spend the window for everyone: another identity's reports keep their rows (review)", async () => {
  // The window's budget (4 × the burst) was shared by every identity, and the per-identity cap on
  // agents did not apply to these tallies: 4 made-up agents × 200 spent it, and another agent's real
  // report became a summary.
  const { vault } = await makeVault({ policy: grant("o", ["claude-*", "victim"], ["github-token"], ["api.github.com"]), limits: { proxyRequestRows: 5, authFailureWindowMs: 3_600_000 } });
  const orch = vault.session({ ...orchestrator(["claude-*"]), transport: "vsock" });
  const rep = (agent: string, path: string): Report => ({ agent, leaseIds: [], method: "GET", host: "api.github.com", path, status: 200, bytesOut: 0, bytesIn: 0, ms: 1, outcome: "ok" });
  for (let a = 0; a < 20; a++) await orch.recordProxyRequests(Array.from({ length: 10 }, (_, i) => rep(`claude-${a}`, `/flood-${a}-${i}`)));
  await vault.session(agentIdentity("victim")).recordProxyRequests([rep("victim", "/victim-request")]);
  await vault.flushRefusals();
  const rows = (await vault.admin().auditQuery({ types: ["proxy_request"], limit: 5000 })) as AuditRecord[];
  assert.equal(rows.filter((r) => detailOf(r)?.["path"] === "/victim-request").length, 1, "the victim's report is a row of its own");
  const flood = rows.filter((r) => String(detailOf(r)?.["path"] ?? "").startsWith("/flood-"));
  assert.ok(flood.length <= 5 * 5, `one identity gets at most 5 bursts of rows (got ${flood.length})`);
  const counted = rows.filter((r) => String(r.reason ?? "").includes("counted")).reduce((n, r) => n + countOf(r), 0);
  assert.equal(flood.length + counted, 200, "every made-up report is written or counted");
});

test("attack: an MCP agent takes lease after lease of a 60 KB secret (each used up at once): lessor mcp's every tool call stays fast", async () => {
  // Each tool result is scrubbed of the values the session holds. The patterns were built anew for
  // every text scrubbed (each response header apart), from every lease's copy of the value: with one
  // lease of a 60 KB secret a list_secrets took a second, with 20 leases of it two and a half, and the
  // process grew by each lease; an agent could so stall its own and, over --socket, every guest's server.
  const home = await makeHome({ policy: `[[rule]]\nname = "g"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["big"]\ndomains = ["api.test.example"]\nmax_uses = 1\n` });
  const d = await startServe(home);
  after(() => d.stop());
  // Hex, so that its patterns stay within the scrubber's table cap (MAX_TABLE_ENTRIES, src/proxy/scrub.ts).
  const BIG = "c" + randomBytes(30_000).toString("hex");
  const admin = await LessorClient.connect({ socketPath: d.socket });
  await admin.storeSecret({ name: "big", value: BIG });
  await admin.close();
  const { c, stderr } = await mcpAgent(home);
  const texts: string[] = [];
  const call = async (name: string, args: Record<string, unknown> = {}): Promise<{ isError: boolean; text: string }> => {
    const r = (await c.callTool({ name, arguments: args })) as { isError?: boolean; content: { text: string }[] };
    const text = r.content.map((x) => x.text).join("\n");
    texts.push(text);
    return { isError: r.isError === true, text };
  };
  for (let i = 0; i < 15; i++) {
    const r = await call("request_access", { secret: "big" });
    assert.equal(r.isError, false, r.text);
  }
  const t0 = Date.now();
  for (let i = 0; i < 10; i++) assert.equal((await call("list_secrets")).isError, false);
  const ms = Date.now() - t0;
  assert.ok(ms < 6_000, `10 list_secrets calls took ${ms} ms with 15 used-up leases of one 60 KB secret held (~15 s before the fix)`);
  for (const x of [...texts, stderr()]) assert.ok(!x.includes(BIG.slice(0, 64)), "the value never reaches the agent or the log");
});

test("attack: an MCP agent takes a lease on a 60 KB secret whose patterns the scrubber cannot hold: refused at request_access naming what to do, and the session's other tool calls still work", async () => {
  // It was granted, and from then on every tool call of the session failed (MCP error -32603, "too
  // many secrets to scrub at once"), list_secrets and revoke included, for as long as the lease lasted.
  const home = await makeHome({ policy: `[[rule]]\nname = "g"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["wide"]\ndomains = ["api.test.example"]\n` });
  const d = await startServe(home);
  after(() => d.stop());
  const WIDE = randomBytes(45_000).toString("base64"); // 60,000 characters over 64 letters
  const admin = await LessorClient.connect({ socketPath: d.socket });
  await admin.storeSecret({ name: "wide", value: WIDE });
  const { c, stderr } = await mcpAgent(home);
  const call = async (name: string, args: Record<string, unknown> = {}): Promise<{ isError: boolean; text: string }> => {
    const r = (await c.callTool({ name, arguments: args })) as { isError?: boolean; content: { text: string }[] };
    return { isError: r.isError === true, text: r.content.map((x) => x.text).join("\n") };
  };
  const r = await call("request_access", { secret: "wide" });
  assert.equal(r.isError, true, `granted: ${r.text.slice(0, 200)}`);
  assert.match(r.text, /value_too_large/);
  assert.match(r.text, /revoke/i);
  const ls = await call("list_secrets");
  assert.equal(ls.isError, false, ls.text);
  assert.deepEqual((await admin.listLeases({ agent: "claude", live: true })).map((l) => l.id), [], "the lease it could not use was revoked");
  await admin.close();
  for (const x of [r.text, ls.text, stderr()]) assert.ok(!x.includes(WIDE.slice(0, 64)), "the value never reaches the agent or the log");
});
