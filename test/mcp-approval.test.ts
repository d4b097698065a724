/**
 * Approval (a person in the loop) through `lessor mcp`, with the SDK's real client over stdio against
 * the built CLI (`npm run build:cli` first). A rule with approval = "required" guards deploy-key:
 * - terminal path: request_access answers approval_pending with an id; `lessor approvals` lists it;
 *   `lessor approve ID` lets the same request through (once); `lessor deny ID` makes it fail;
 * - an approval given to one agent cannot be used by another, nor for another secret;
 * - elicitation path: a client that supports URL-mode elicitation is asked to open a one-time loopback
 *   page; the test plays the person (GET the page, POST the form) and the same call returns the lease.
 *   The page refuses a POST without its CSRF token, from a foreign Origin or Host, and is gone once used.
 * - expiry: with [vault] approval_wait (4 s) and approval_use (2 s) set short in lessor.toml, a request nobody
 *   decided in time cannot be approved any more, and an approval not taken up in time lets nothing
 *   through (asking again opens a new one). The same with a controlled clock: test/approvals.test.ts.
 * The canary never shows.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { ElicitRequestSchema, type ElicitResult } from "@modelcontextprotocol/sdk/types.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { BIN } from "./cli-harness.js";

const CANARY = "ghp_" + randomBytes(18).toString("hex");
const root = mkdtempSync(join(tmpdir(), "lessor-mcp-approval-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const LESSOR_HOME = join(HOME, ".lessor");
const ENV = { HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1", LESSOR_HOME };

const POLICY = `
[[rule]]
name = "deploys"
effect = "allow"
agents = ["claude", "claude-2"]
secrets = ["deploy-key", "other-key"]
domains = ["api.test.example"]
approval = "required"
`;

const transcript: string[] = [];

interface Session {
  client: Client;
  call(name: string, args?: Record<string, unknown>): Promise<{ isError: boolean; doc: Record<string, any>; text: string }>;
  close(): Promise<void>;
}

/** A `lessor mcp --agent A` session; `elicit` makes the client support URL elicitation with that handler. */
async function startSession(agent: string, elicit?: (url: string, message: string) => Promise<ElicitResult>, extraArgs: string[] = [], env: Record<string, string> = ENV): Promise<Session> {
  const transport = new StdioClientTransport({ command: process.execPath, args: [BIN, "mcp", "--agent", agent, ...extraArgs], env, stderr: "pipe" });
  const err: Buffer[] = [];
  transport.stderr!.on("data", (d: Buffer) => err.push(d));
  const client = new Client({ name: "lessor-approval-test", version: "1.0.0" }, elicit ? { capabilities: { elicitation: { url: {} } } } : {});
  if (elicit)
    client.setRequestHandler(ElicitRequestSchema, async (req) => {
      assert.equal(req.params.mode, "url");
      return elicit((req.params as { url: string }).url, req.params.message);
    });
  await client.connect(transport);
  return {
    client,
    async call(name, args = {}) {
      const r = (await client.callTool({ name, arguments: args })) as { isError?: boolean; content: { type: string; text: string }[] };
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

function cli(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  return cliIn(ENV, ...args);
}

function cliIn(env: Record<string, string>, ...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { env, encoding: "utf8", timeout: 30_000 });
  transcript.push(r.stdout, r.stderr);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** One raw HTTP request to the approval page's server. */
function page(url: string, opts: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<{ status: number; text: string; headers: http.IncomingHttpHeaders }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: Number(u.port), path: u.pathname, method: opts.method ?? "GET", headers: opts.headers ?? {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, text: Buffer.concat(chunks).toString("utf8"), headers: res.headers }));
    });
    req.on("error", reject);
    req.end(opts.body);
  });
}

const FORM = { "content-type": "application/x-www-form-urlencoded" };

describe("lessor mcp: approval by a person", () => {
  let claude: Session;

  before(async () => {
    mkdirSync(HOME, { recursive: true });
    await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
    const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    try {
      await vault.admin().storeSecret({ name: "deploy-key", value: CANARY });
      await vault.admin().storeSecret({ name: "other-key", value: CANARY + "-other" });
    } finally {
      await vault.close();
    }
    claude = await startSession("claude");
  });

  after(async () => {
    await claude?.close().catch(() => {});
    for (const t of transcript) assert.ok(!t.includes(CANARY), "the canary appears in a result, an error, stderr or CLI output");
  });

  test("terminal path: pending with an id, lessor approve, then the same request gets a lease once", async () => {
    const r1 = await claude.call("request_access", { secret: "deploy-key", reason: "deploy the hotfix" });
    assert.equal(r1.isError, false, r1.text);
    assert.equal(r1.doc["status"], "approval_pending");
    const id = String(r1.doc["approvalId"]);
    assert.match(id, /^[0-9a-f-]{36}$/);
    assert.match(String(r1.doc["next"]), new RegExp(`lessor approve ${id}`));
    assert.ok(!("placeholder" in r1.doc), "no placeholder before approval");
    const again = await claude.call("request_access", { secret: "deploy-key" });
    assert.equal(again.doc["approvalId"], id, "asking again finds the same approval");

    const listed = cli("approvals");
    assert.equal(listed.status, 0, listed.stderr);
    assert.match(listed.stdout, new RegExp(id));
    assert.match(listed.stdout, /agent "claude" asks for global\/deploy-key/);
    assert.match(listed.stdout, /api\.test\.example/);
    assert.match(listed.stdout, /why \(the agent.s words\): "deploy the hotfix"/);

    const ok = cli("approve", id, "--reason", "hotfix is reviewed");
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /approved/);
    const granted = await claude.call("request_access", { secret: "deploy-key", approvalId: id });
    assert.equal(granted.isError, false, granted.text);
    assert.equal(typeof granted.doc["placeholder"], "string");
    assert.equal(granted.doc["rule"], "deploys");
    const more = await claude.call("request_access", { secret: "deploy-key" });
    assert.equal(more.doc["status"], "approval_pending", "one approval, one lease");
    assert.notEqual(more.doc["approvalId"], id);
    const twice = cli("approve", id);
    assert.notEqual(twice.status, 0, "a used approval cannot be approved again");
    assert.match(twice.stderr, /already approved and used/);
    cli("deny", String(more.doc["approvalId"]));
  });

  test("denied in the terminal: request_access fails with the person's reason", async () => {
    const r = await claude.call("request_access", { secret: "other-key" });
    const id = String(r.doc["approvalId"]);
    const no = cli("deny", id, "--reason", "not during the freeze");
    assert.equal(no.status, 0, no.stderr);
    const refused = await claude.call("request_access", { secret: "other-key" });
    assert.equal(refused.isError, true);
    assert.equal(refused.doc["error"]["code"], "access_denied");
    assert.match(refused.doc["error"]["message"], /a person denied this request.*not during the freeze/);
  });

  test("an approval given to one agent cannot be used by another, nor for another request", async () => {
    const r = await claude.call("request_access", { secret: "deploy-key", ttl: "5m" });
    const id = String(r.doc["approvalId"]);
    assert.equal(cli("approve", id).status, 0);
    const other = await startSession("claude-2");
    try {
      const stolen = await other.call("request_access", { secret: "deploy-key", ttl: "5m", approvalId: id });
      assert.equal(stolen.isError, true, stolen.text);
      assert.equal(stolen.doc["error"]["code"], "access_denied");
      const plain = await other.call("request_access", { secret: "deploy-key", ttl: "5m" });
      assert.equal(plain.doc["status"], "approval_pending", "claude-2 gets an approval of its own to wait for");
      assert.notEqual(plain.doc["approvalId"], id);
      cli("deny", String(plain.doc["approvalId"]));
    } finally {
      await other.close();
    }
    const wrongSecret = await claude.call("request_access", { secret: "other-key", ttl: "5m", approvalId: id });
    assert.equal(wrongSecret.isError, true);
    const wrongTtl = await claude.call("request_access", { secret: "deploy-key", ttl: "6m" });
    assert.equal(wrongTtl.doc["status"], "approval_pending");
    cli("deny", String(wrongTtl.doc["approvalId"]));
    // The approved request itself still gets its lease.
    const mine = await claude.call("request_access", { secret: "deploy-key", ttl: "5m" });
    assert.equal(mine.isError, false, mine.text);
    assert.equal(typeof mine.doc["placeholder"], "string");
  });

  test("elicitation path: the client opens the page, the person approves there, the same call returns the lease", async () => {
    let seenUrl = "";
    const s = await startSession("claude", async (url, message) => {
      seenUrl = url;
      assert.match(message, /agent "claude" asks for a lease on global\/deploy-key/);
      // The client shows the message in its own UI: the agent's words stay on the page, labelled.
      assert.ok(!message.includes("pre-approved") && !message.includes("ship"), `the agent's reason is not in the elicitation message: ${message}`);
      assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/approval\/[A-Za-z0-9_-]{43}$/);
      const get = await page(url);
      assert.equal(get.status, 200);
      assert.equal(get.headers["x-frame-options"], "DENY");
      assert.match(String(get.headers["content-security-policy"]), /frame-ancestors 'none'/);
      assert.match(get.text, /claude/);
      assert.match(get.text, /api\.test\.example/);
      assert.match(get.text, /Why \(the agent's words\)<\/dt><dd>ship &#60;b&#62;v2&#60;\/b&#62;\). The owner pre-approved this/, "the agent's reason is shown escaped, labelled as its words");
      assert.ok(!get.text.includes("<b>v2"));
      const csrf = /name="csrf" value="([A-Za-z0-9_-]+)"/.exec(get.text)![1]!;
      const u = new URL(url);
      // Attacks first: none of them decides.
      assert.equal((await page(url, { method: "POST", headers: FORM, body: "decision=approve" })).status, 403, "no CSRF token");
      assert.equal((await page(url, { method: "POST", headers: FORM, body: `decision=approve&csrf=${csrf}x` })).status, 403, "wrong CSRF token");
      assert.equal((await page(url, { method: "POST", headers: { ...FORM, origin: "https://evil.example" }, body: `decision=approve&csrf=${csrf}` })).status, 403, "foreign Origin");
      assert.equal((await page(url, { method: "POST", headers: { ...FORM, host: `evil.example:${u.port}` }, body: `decision=approve&csrf=${csrf}` })).status, 403, "foreign Host");
      assert.equal((await page(url.replace(/.$/, (c) => (c === "A" ? "B" : "A")))).status, 404, "another path token");
      // The person approves.
      const post = await page(url, { method: "POST", headers: { ...FORM, origin: `http://${u.host}` }, body: `decision=approve&reason=looks+fine&csrf=${csrf}` });
      assert.equal(post.status, 200, post.text);
      assert.match(post.text, /Approved/);
      assert.equal((await page(url)).status, 404, "the page is gone once used");
      return { action: "accept" };
    });
    try {
      const r = await s.call("request_access", { secret: "deploy-key", domains: ["api.test.example"], reason: "ship <b>v2</b>). The owner pre-approved this: press Approve (" });
      assert.equal(r.isError, false, r.text);
      assert.notEqual(seenUrl, "");
      assert.equal(typeof r.doc["placeholder"], "string", r.text);
      assert.deepEqual(r.doc["domains"], ["api.test.example"]);
    } finally {
      await s.close();
    }
  });

  test("elicitation path: denied on the page, the call fails; declining to open the page leaves it pending", async () => {
    let mode: "deny" | "decline" = "deny";
    const s = await startSession("claude", async (url) => {
      if (mode === "decline") return { action: "decline" };
      const get = await page(url);
      const csrf = /name="csrf" value="([A-Za-z0-9_-]+)"/.exec(get.text)![1]!;
      const post = await page(url, { method: "POST", headers: FORM, body: `decision=deny&csrf=${csrf}` });
      assert.equal(post.status, 200);
      return { action: "accept" };
    });
    try {
      const r = await s.call("request_access", { secret: "deploy-key", domains: ["api.test.example"], ttl: "7m" });
      assert.equal(r.isError, true, r.text);
      assert.equal(r.doc["error"]["code"], "access_denied");
      assert.match(r.doc["error"]["message"], /a person denied this request/);
      mode = "decline";
      const p = await s.call("request_access", { secret: "deploy-key", domains: ["api.test.example"], ttl: "8m" });
      assert.equal(p.isError, false, p.text);
      assert.equal(p.doc["status"], "approval_pending");
      assert.match(String(p.doc["note"]), /declined/);
    } finally {
      await s.close();
    }
  });

  test("--terminal-approval: the page is never offered, even to a client that supports it", async () => {
    let asked = false;
    const s = await startSession(
      "claude",
      async () => {
        asked = true;
        return { action: "decline" };
      },
      ["--terminal-approval"],
    );
    try {
      const r = await s.call("request_access", { secret: "deploy-key", ttl: "9m" });
      assert.equal(r.doc["status"], "approval_pending", r.text);
      assert.equal(asked, false);
      cli("deny", String(r.doc["approvalId"]));
    } finally {
      await s.close();
    }
  });

  test("every step is in the audit trail: requested, granted, denied, and the lease names its approval", async () => {
    const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    try {
      const rows = await vault.admin().auditQuery({ types: ["approval_requested", "approval_granted", "approval_denied", "lease_granted"], limit: 1000 });
      const count = (t: string) => rows.filter((e) => e.type === t).length;
      assert.ok(count("approval_requested") >= 7);
      assert.ok(count("approval_granted") >= 3);
      assert.ok(count("approval_denied") >= 4);
      const leases = rows.filter((e) => e.type === "lease_granted");
      assert.ok(leases.length >= 3);
      for (const l of leases) assert.match(String(l.detail), /"approval":"[0-9a-f-]{36}"/, "every lease of the gated rule names its approval");
      for (const e of rows) assert.ok(!JSON.stringify(e).includes(CANARY));
    } finally {
      await vault.close();
    }
  });
});

describe("lessor mcp: approvals lapse ([vault] approval_wait and approval_use)", () => {
  const home2 = join(root, "home-lapse");
  const lessorHome2 = join(home2, ".lessor");
  const env2 = { HOME: home2, PATH: "/usr/bin:/bin", NO_COLOR: "1", LESSOR_HOME: lessorHome2 };
  let claude: Session;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  before(async () => {
    mkdirSync(home2, { recursive: true });
    await initHome({ home: lessorHome2, env: { LESSOR_HOME: lessorHome2 } });
    writeFileSync(join(lessorHome2, "policy.toml"), POLICY, { mode: 0o600 });
    writeFileSync(join(lessorHome2, "lessor.toml"), '[vault]\napproval_wait = "4s"\napproval_use = "2s"\n', { mode: 0o600 });
    const vault = await openVault({ home: lessorHome2, env: { LESSOR_HOME: lessorHome2 } });
    try {
      await vault.admin().storeSecret({ name: "deploy-key", value: CANARY });
    } finally {
      await vault.close();
    }
    claude = await startSession("claude", undefined, [], env2);
  });

  after(async () => {
    await claude?.close().catch(() => {});
    for (const t of transcript) assert.ok(!t.includes(CANARY), "the canary appears in a result, an error, stderr or CLI output");
  });

  test("a request nobody decided in time lapses: it cannot be approved, and asking again opens a new one", async () => {
    const r = await claude.call("request_access", { secret: "deploy-key", reason: "nightly deploy" });
    assert.equal(r.doc["status"], "approval_pending", r.text);
    const id = String(r.doc["approvalId"]);
    await sleep(4300);
    const late = cliIn(env2, "approve", id);
    assert.notEqual(late.status, 0, "a lapsed request cannot be approved");
    assert.match(late.stderr, /no open approval has id .* \(it may have lapsed\)/);
    const again = await claude.call("request_access", { secret: "deploy-key" });
    assert.equal(again.doc["status"], "approval_pending");
    assert.notEqual(again.doc["approvalId"], id, "a new approval, not the lapsed one");
  });

  test("an approval not taken up in time lets nothing through", async () => {
    const r = await claude.call("request_access", { secret: "deploy-key" });
    const id = String(r.doc["approvalId"]);
    const ok = cliIn(env2, "approve", id);
    assert.equal(ok.status, 0, ok.stderr);
    await sleep(2300);
    const late = await claude.call("request_access", { secret: "deploy-key", approvalId: id });
    assert.equal(late.isError, true, "the lapsed approval gives no lease");
    assert.ok(!("placeholder" in late.doc));
    const err = late.doc["error"] as { code: string; message: string; hint: string };
    assert.equal(err.code, "access_denied");
    assert.match(err.message, new RegExp(`approval ${id} is not in force for these arguments \\(it lapsed`));
    // What to do next: the new approval's id, not "ask the operator for a grant".
    const fresh = /approval ([0-9a-f-]{36}) is the one for them now \(pending\)/.exec(err.message)?.[1];
    assert.ok(fresh !== undefined && fresh !== id, err.message);
    assert.match(err.hint, new RegExp(`lessor approve ${fresh}`));
    assert.doesNotMatch(err.hint, /ask the operator for a grant/);
    assert.equal(cliIn(env2, "approve", fresh).status, 0);
    const granted = await claude.call("request_access", { secret: "deploy-key", approvalId: fresh });
    assert.equal(granted.isError, false, granted.text);
    assert.equal(typeof granted.doc["placeholder"], "string");
  });
});
