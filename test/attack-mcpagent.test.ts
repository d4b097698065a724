/**
 * An attack pass on `lessor mcp` driven by a hostile agent: the built CLI (`dist/bin/lessor.cjs mcp
 * --agent claude`, run `npm run build:cli` first) as a real child process, spoken to over stdio by the
 * MCP SDK's client or by raw newline-delimited JSON-RPC, on a temp home with its vault in-process (no
 * daemon). `http_request` goes through the server's injecting proxy to a real local HTTPS upstream.
 *
 * Nothing leaves the machine: the upstream listens on 127.0.0.1, its names resolve through
 * `[proxy] hosts` (never a real lookup), and `[proxy] allow` opens 127.0.0.1 only.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import { createConnection, type AddressInfo, type Socket } from "node:net";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { LocalCa } from "../src/proxy/ca.js";
import { BIN } from "./cli-harness.js";

const CANARY = "ghp_" + randomBytes(18).toString("hex");

const POLICY = `
[[rule]]
name = "github"
effect = "allow"
agents = ["claude"]
secrets = ["github-token"]
domains = ["api.test.example"]
`;

const root = mkdtempSync(join(tmpdir(), "lessor-atk-mcpagent-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const LESSOR_HOME = join(HOME, ".lessor");

/** Every tool result text and stderr line, checked for the canary at the end. */
const transcript: string[] = [];

function noCanary(where: string, text: string): void {
  assert.ok(!text.includes(CANARY), `the secret value appears in ${where}`);
}

// ---- the upstream: a local HTTPS server; /held answers only when the test releases it ----
let upstream: https.Server;
let port = 0;
/** Requests /held has received and not yet answered: the test answers them. */
const held: { auth: string; answer(): void }[] = [];

async function startUpstream(): Promise<void> {
  const ca = LocalCa.create({ permitted: ["api.test.example"] });
  writeFileSync(join(root, "upstream-ca.pem"), ca.certPem);
  upstream = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, (req, res) => {
    req.resume();
    req.on("end", () => {
      const auth = String(req.headers.authorization ?? "");
      const path = (req.url ?? "/").split("?")[0];
      if (path === "/held") {
        // An API that rejects the token and names it, as many do, in a header and the body; it answers
        // only when the test says so (after the agent has revoked the lease).
        held.push({
          auth,
          answer: () => {
            if (res.headersSent) return;
            const tok = auth.replace(/^Bearer /, "");
            res.writeHead(401, { "content-type": "text/plain", "www-authenticate": `Bearer error="invalid_token", token="${tok}"`, "x-echo": auth });
            res.end(`bad token ${tok}\n`);
          },
        });
        return;
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ ok: true }));
    });
  });
  await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
  port = (upstream.address() as AddressInfo).port;
}

async function until(what: string, f: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** One `lessor mcp --agent claude` child and the SDK client talking to it. */
interface Session {
  client: Client;
  pid: number;
  stderr: () => string;
  call(name: string, args?: Record<string, unknown>): Promise<{ isError: boolean; doc: Record<string, any>; text: string }>;
  close(): Promise<void>;
}

async function startSession(agent = "claude", home = LESSOR_HOME): Promise<Session> {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [BIN, "mcp", "--agent", agent],
    env: { HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1", LESSOR_HOME: home },
    stderr: "pipe",
  });
  const err: Buffer[] = [];
  transport.stderr!.on("data", (d: Buffer) => err.push(d));
  const client = new Client({ name: "hostile-agent", version: "1.0.0" });
  await client.connect(transport);
  return {
    client,
    pid: transport.pid!,
    stderr: () => Buffer.concat(err).toString("utf8"),
    async call(name, args = {}) {
      const r = (await client.callTool({ name, arguments: args }, undefined, { timeout: 120_000 })) as { isError?: boolean; content: { type: string; text: string }[]; structuredContent?: unknown };
      const text = r.content.map((c) => c.text).join("\n") + JSON.stringify(r.structuredContent ?? null);
      transcript.push(text);
      return { isError: r.isError === true, doc: JSON.parse(r.content.map((c) => c.text).join("\n")) as Record<string, any>, text };
    },
    async close() {
      await client.close().catch(() => {});
      transcript.push(Buffer.concat(err).toString("utf8"));
    },
  };
}

/** Initialises `home` with the upstream in [proxy], `policy`, and the canary stored as github-token. */
describe("lessor mcp (stdio child): a client that cancels every request it sends", () => {
  // The transport stops reading while 64 requests are being served (src/mcp/paced-transport.ts). A
  // cancellation once counted a request out at once, though lessor's handlers do not stop for one:
  // "request + cancel" in a loop ran any number of http_requests at once (each holding its body and
  // an upstream connection), the bound gone.
  test("http_requests each cancelled at once: no more than 64 are served at a time, and every one is answered when the upstream answers", { timeout: 180_000 }, async () => {
    const c = rawChild();
    const answers: string[] = [];
    let text = "";
    c.child.stdout.on("data", (d: Buffer) => {
      text += d.toString("utf8");
      const lines = text.split("\n");
      text = lines.pop()!;
      answers.push(...lines.filter((l) => l.trim() !== ""));
    });
    const before = held.length;
    try {
      c.line(INITIALIZE);
      await until("the initialize answer", () => answers.some((a) => a.includes('"id":"init"')));
      c.line({ jsonrpc: "2.0", method: "notifications/initialized" });
      c.line({ jsonrpc: "2.0", id: "acc", method: "tools/call", params: { name: "request_access", arguments: { secret: "github-token" } } });
      await until("the request_access answer", () => answers.some((a) => a.includes('"id":"acc"')));
      const acc = JSON.parse(answers.find((a) => a.includes('"id":"acc"'))!) as { result: { content: { text: string }[] } };
      const placeholder = (JSON.parse(acc.result.content[0]!.text) as { placeholder: string }).placeholder;
      assert.ok(placeholder, JSON.stringify(acc));
      const N = 150;
      for (let i = 0; i < N; i++) {
        c.line({ jsonrpc: "2.0", id: `h${i}`, method: "tools/call", params: { name: "http_request", arguments: { method: "GET", url: `https://api.test.example:${port}/held`, headers: { Authorization: `Bearer ${placeholder}` } } } });
        c.line({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: `h${i}`, reason: "never mind" } });
      }
      // Wait until the upstream holds as many as it will get (growth stops for 3 s).
      let last = -1;
      let stableSince = Date.now();
      const end = Date.now() + 60_000;
      while (Date.now() < end && Date.now() - stableSince < 3000) {
        const n = held.length - before;
        if (n !== last) {
          last = n;
          stableSince = Date.now();
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      const served = held.length - before;
      assert.ok(served > 0, "sanity: the http_requests reached the upstream");
      assert.ok(served <= 64, `${served} cancelled http_requests were served at once: the cap of 64 requests in flight does not hold`);
      // The upstream answers everything (now and as the rest arrive): every request is answered.
      const drain = setInterval(() => {
        for (const h of held.slice(before)) h.answer();
      }, 50);
      try {
        await until("every http_request to be answered", () => answers.filter((a) => /"id":"h\d+"/.test(a)).length === N, 150_000);
      } finally {
        clearInterval(drain);
      }
      for (const a of answers) noCanary("an http_request answer", a);
    } finally {
      for (const h of held.slice(before)) h.answer();
      c.child.stdin.end();
      await new Promise<void>((r) => {
        if (c.child.exitCode !== null) return r();
        const t = setTimeout(() => c.child.kill("SIGKILL"), 30_000);
        c.child.once("exit", () => (clearTimeout(t), r()));
      });
    }
    noCanary("the server's stderr", c.stderr());
  });
});

async function makeHome(home: string, policy: string): Promise<void> {
  await initHome({ home, env: { LESSOR_HOME: home } });
  const base = readFileSync(join(home, "lessor.toml"), "utf8");
  writeFileSync(
    join(home, "lessor.toml"),
    `${base}\n[proxy]\nports = [${port}]\nallow = ["127.0.0.1"]\nhosts = { "api.test.example" = "127.0.0.1" }\nupstream_ca = "${join(root, "upstream-ca.pem")}"\n`,
    { mode: 0o600 },
  );
  writeFileSync(join(home, "policy.toml"), policy, { mode: 0o600 });
  const vault = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    await vault.admin().storeSecret({ name: "github-token", value: CANARY, kind: "pat" });
  } finally {
    await vault.close();
  }
}

before(async () => {
  mkdirSync(HOME, { recursive: true });
  await startUpstream();
  await makeHome(LESSOR_HOME, POLICY);
});

after(async () => {
  for (const h of held.splice(0)) h.answer();
  upstream?.closeAllConnections();
  upstream?.close();
});

describe("lessor mcp (stdio child): a hostile agent racing its own calls", () => {
  test("an http_request answered after the agent revoked its lease mid-flight: the credential the upstream echoes in headers and body is still masked", { timeout: 90_000 }, async () => {
    const s = await startSession();
    try {
      const got = await s.call("request_access", { secret: "github-token" });
      assert.equal(got.isError, false, got.text);
      const placeholder = got.doc["placeholder"] as string;
      const leaseId = got.doc["leaseId"] as string;
      const before = held.length;
      // The request goes out with the real value; the upstream holds its answer.
      const inFlight = s.call("http_request", { method: "GET", url: `https://api.test.example:${port}/held`, headers: { Authorization: `Bearer ${placeholder}` } });
      await until("the upstream to receive the request", () => held.length > before);
      assert.equal(held[before]!.auth, `Bearer ${CANARY}`, "sanity: the upstream got the credential");
      // The agent revokes the lease while its request is in flight; then the upstream answers.
      const r = await s.call("revoke", { leaseId });
      assert.equal(r.isError, false, r.text);
      held[before]!.answer();
      const answer = await inFlight;
      noCanary("the http_request result answered after the revocation", answer.text);
      // Either the proxy closed the revoked lease's tunnel first (unavailable), or the answer came
      // through with the echo masked: never the value.
      if (answer.isError) assert.equal(answer.doc["error"]["code"], "unavailable", answer.text);
      else {
        assert.equal(answer.doc["status"], 401);
        assert.ok(answer.text.includes(placeholder), "the echo comes back as the placeholder");
      }
    } finally {
      await s.close();
    }
    noCanary("the server's stderr", s.stderr());
  });
});

/** A raw `lessor mcp --agent claude` child, spoken to in newline-delimited JSON-RPC without the SDK. */
function rawChild(): { child: ChildProcessWithoutNullStreams; stderr: () => string; rssMb: () => number; line(m: unknown): boolean } {
  const child = spawn(process.execPath, [BIN, "mcp", "--agent", "claude"], { env: { HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1", LESSOR_HOME }, stdio: ["pipe", "pipe", "pipe"] });
  let err = "";
  child.stderr.on("data", (d: Buffer) => (err += d.toString("utf8")));
  child.stdin.on("error", () => {});
  return {
    child,
    stderr: () => err,
    rssMb: () => {
      try {
        return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"))![1]) / 1024;
      } catch {
        return -1;
      }
    },
    line: (m) => child.stdin.write(`${JSON.stringify(m)}\n`),
  };
}

const INITIALIZE = { jsonrpc: "2.0", id: "init", method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "flood", version: "1" } } };

describe("lessor mcp (stdio child): a client that sends without reading the answers", () => {
  test("tools/list requests (each answered with 5 KiB) sent for 15 s by a client that reads nothing: the server stops reading instead of buffering the answers, stays small, and answers all once the client reads", { timeout: 180_000 }, async () => {
    const c = rawChild();
    const answers: string[] = [];
    let text = "";
    const onData = (d: Buffer): void => {
      text += d.toString("utf8");
      const lines = text.split("\n");
      text = lines.pop()!;
      answers.push(...lines.filter((l) => l.trim() !== ""));
    };
    try {
      c.child.stdout.on("data", onData);
      c.line(INITIALIZE);
      await until("the initialize answer", () => answers.some((a) => a.includes('"id":"init"')));
      c.line({ jsonrpc: "2.0", method: "notifications/initialized" });
      await new Promise((r) => setTimeout(r, 500));
      const baseline = c.rssMb();
      assert.ok(baseline > 0, "sanity: the child's memory can be read");
      // From here the client reads nothing.
      c.child.stdout.off("data", onData);
      c.child.stdout.pause();
      // For 15 s the client keeps the server's input full (the writes wait when the server stops reading).
      let sent = 0;
      let written = 0;
      let peak = baseline;
      const until15 = Date.now() + 15_000;
      while (Date.now() < until15 && peak - baseline <= 400) {
        if (c.child.stdin.writableLength < 64 * 1024) {
          let batch = "";
          for (let k = 0; k < 1000; k++) batch += `${JSON.stringify({ jsonrpc: "2.0", id: sent++, method: "tools/list" })}\n`;
          written += Buffer.byteLength(batch);
          c.child.stdin.write(batch);
        } else await new Promise((r) => setTimeout(r, 50));
        peak = Math.max(peak, c.rssMb());
      }
      // What the server took off the pipe (the pipe itself holds at most 64 KiB of it).
      const accepted = written - c.child.stdin.writableLength;
      assert.ok(accepted < 512 * 1024, `the server kept reading requests whose answers went unread: it took ${Math.round(accepted / 1024)} KiB of them (${sent} sent)`);
      assert.ok(peak - baseline < 100, `the server's memory grew by ${Math.round(peak - baseline)} MB while its answers went unread`);
      // The client reads again: every request sent is answered, and the server still serves.
      c.child.stdout.on("data", onData);
      c.child.stdout.resume();
      c.line({ jsonrpc: "2.0", id: "last", method: "ping" });
      await until("the answer to the last request", () => answers.some((a) => a.includes('"id":"last"')), 150_000);
      assert.equal(answers.filter((a) => a.includes('"tools":[')).length, sent, "every tools/list sent was answered");
    } finally {
      c.child.stdin.end();
      c.child.stdout.resume();
      await new Promise<void>((r) => {
        if (c.child.exitCode !== null) return r();
        const t = setTimeout(() => c.child.kill("SIGKILL"), 30_000);
        c.child.once("exit", () => (clearTimeout(t), r()));
      });
    }
  });
});

describe("lessor mcp (stdio child): malformed and oversized frames", () => {
  test("garbage lines, a JSON-RPC batch, a bare value and a request split over many writes leave the server serving; a line over 8 MiB ends the session and its lease is revoked", { timeout: 120_000 }, async () => {
    const c = rawChild();
    const answers: string[] = [];
    let text = "";
    c.child.stdout.on("data", (d: Buffer) => {
      text += d.toString("utf8");
      const lines = text.split("\n");
      text = lines.pop()!;
      answers.push(...lines.filter((l) => l.trim() !== ""));
    });
    const answer = async (id: string): Promise<Record<string, any>> => {
      await until(`the answer to ${id}`, () => answers.some((a) => a.includes(`"id":"${id}"`)), 60_000);
      return JSON.parse(answers.find((a) => a.includes(`"id":"${id}"`))!) as Record<string, any>;
    };
    const exited = new Promise<number | null>((r) => c.child.once("exit", (code) => r(code)));
    try {
      c.line(INITIALIZE);
      await answer("init");
      c.line({ jsonrpc: "2.0", method: "notifications/initialized" });
      c.child.stdin.write("not json at all\n{\"jsonrpc\":\"2.0\",\n42\nnull\n\n\r\n");
      c.line([{ jsonrpc: "2.0", id: "b1", method: "tools/call", params: { name: "request_access", arguments: { secret: "github-token" } } }, { jsonrpc: "2.0", id: "b2", method: "ping" }]);
      // One request in many writes.
      const split = `${JSON.stringify({ jsonrpc: "2.0", id: "lease", method: "tools/call", params: { name: "request_access", arguments: { secret: "github-token" } } })}\n`;
      for (let i = 0; i < split.length; i += 7) c.child.stdin.write(split.slice(i, i + 7));
      const lease = await answer("lease");
      const doc = JSON.parse(lease["result"]["content"][0]["text"]) as Record<string, any>;
      const leaseId = doc["leaseId"] as string;
      assert.ok(leaseId, JSON.stringify(lease));
      assert.ok(!answers.some((a) => a.includes('"id":"b1"')), "a batch is not served (stdio carries one message per line)");
      // A line over 8 MiB, sent in pieces: the session ends.
      const piece = "x".repeat(1024 * 1024);
      c.child.stdin.write(`{"jsonrpc":"2.0","id":"big","method":"ping","params":{"pad":"`);
      for (let i = 0; i < 9; i++) c.child.stdin.write(piece);
      const code = await Promise.race([exited, new Promise<"hung">((r) => setTimeout(() => r("hung"), 60_000).unref())]);
      assert.notEqual(code, "hung", "the server ended the session after a line over 8 MiB");
      assert.equal(code, 0, c.stderr());
      const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
      try {
        const rows = await vault.admin().listLeases({ id: leaseId });
        assert.equal(rows.length, 1);
        assert.notEqual(rows[0]!.revokedAt, null, "the session's lease was revoked when it ended");
      } finally {
        await vault.close();
      }
      noCanary("the server's answers", answers.join("\n"));
      noCanary("the server's stderr", c.stderr());
    } finally {
      if (c.child.exitCode === null) c.child.kill("SIGKILL");
      c.child.stdin.destroy();
      c.child.stdout.destroy();
      c.child.stderr.destroy();
    }
  });
});

describe("lessor mcp --socket (one process, a session per connection): one guest that sends without reading", () => {
  test("cannot grow the server's memory without bound: the server stops reading that connection, and another connection is served meanwhile", { timeout: 180_000 }, async () => {
    const dir = mkdtempSync(join(root, "sock-"));
    const sock = join(dir, "mcp.sock");
    const server = spawn(process.execPath, [BIN, "mcp", "--agent", "claude", "--socket", sock], { env: { HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1", LESSOR_HOME }, stdio: ["ignore", "pipe", "pipe"] });
    let err = "";
    server.stderr.on("data", (d: Buffer) => (err += d.toString("utf8")));
    const rssMb = (): number => {
      try {
        return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${server.pid}/status`, "utf8"))![1]) / 1024;
      } catch {
        return -1;
      }
    };
    const open = async (): Promise<{ s: Socket; answers: string[] }> => {
      const s = createConnection({ path: sock });
      await new Promise<void>((r, j) => (s.once("connect", r), s.once("error", j)));
      s.on("error", () => {});
      const answers: string[] = [];
      let text = "";
      s.on("data", (d: Buffer) => {
        text += d.toString("utf8");
        const lines = text.split("\n");
        text = lines.pop()!;
        answers.push(...lines.filter((l) => l.trim() !== ""));
      });
      s.write(`${JSON.stringify(INITIALIZE)}\n`);
      await until("the initialize answer", () => answers.some((a) => a.includes('"id":"init"')));
      s.write(`${JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" })}\n`);
      return { s, answers };
    };
    let a: Socket | undefined;
    let b: Socket | undefined;
    try {
      await until("the socket", () => existsSync(sock) && /serving/.test(err), 60_000);
      const flood = await open();
      a = flood.s;
      await new Promise((r) => setTimeout(r, 500));
      const baseline = rssMb();
      // Guest A reads nothing from here, and keeps its side full for 10 s.
      a.pause();
      let written = 0;
      let peak = baseline;
      let id = 0;
      const stop = Date.now() + 10_000;
      while (Date.now() < stop && peak - baseline <= 400) {
        if (a.writableLength < 64 * 1024) {
          let batch = "";
          for (let k = 0; k < 1000; k++) batch += `${JSON.stringify({ jsonrpc: "2.0", id: id++, method: "tools/list" })}\n`;
          written += Buffer.byteLength(batch);
          a.write(batch);
        } else await new Promise((r) => setTimeout(r, 50));
        peak = Math.max(peak, rssMb());
      }
      const accepted = written - a.writableLength;
      // Guest B is served meanwhile.
      const other = await open();
      b = other.s;
      b.write(`${JSON.stringify({ jsonrpc: "2.0", id: "b1", method: "tools/call", params: { name: "list_secrets", arguments: {} } })}\n`);
      await until("the other connection's answer", () => other.answers.some((x) => x.includes('"id":"b1"')), 60_000);
      assert.ok(other.answers.find((x) => x.includes('"id":"b1"'))!.includes("github-token"), "the other connection is served");
      assert.ok(peak - baseline < 100, `the server's memory grew by ${Math.round(peak - baseline)} MB while one connection's answers went unread`);
      assert.ok(accepted < 1024 * 1024, `the server kept reading a connection whose answers went unread: it took ${Math.round(accepted / 1024)} KiB of requests`);
    } finally {
      a?.destroy();
      b?.destroy();
      server.kill("SIGTERM");
      await new Promise<void>((r) => {
        if (server.exitCode !== null) return r();
        const t = setTimeout(() => server.kill("SIGKILL"), 30_000);
        server.once("exit", () => (clearTimeout(t), r()));
      });
    }
    noCanary("the socket server's stderr", err);
  });
});

describe("lessor mcp (stdio child, vault in-process on SQLite) and `lessor policy reload` in another process", () => {
  test("after the owner removes the agent's rules and reloads, the running server serves nothing more: its lease carries nothing, a new lease and a new approval are refused", { timeout: 120_000 }, async () => {
    const home = join(mkdtempSync(join(root, "reload-")), ".lessor");
    const gated = `
[[rule]]
name = "gated"
effect = "allow"
agents = ["claude"]
secrets = ["github-token"]
domains = ["other.test.example"]
approval = "required"
`;
    await makeHome(home, POLICY + gated);
    const s = await startSession("claude", home);
    try {
      const got = await s.call("request_access", { secret: "github-token" });
      assert.equal(got.isError, false, got.text);
      const placeholder = got.doc["placeholder"] as string;
      const ok = await s.call("http_request", { method: "GET", url: `https://api.test.example:${port}/`, headers: { Authorization: `Bearer ${placeholder}` } });
      assert.equal(ok.isError, false, ok.text);
      // The owner takes claude's rules away and reloads, embedded (no daemon), in another process.
      writeFileSync(join(home, "policy.toml"), `[[rule]]\nname = "nobody"\neffect = "allow"\nagents = ["someone-else"]\nsecrets = ["github-token"]\ndomains = ["api.test.example"]\n`, { mode: 0o600 });
      const r = spawnSync(process.execPath, [BIN, "policy", "reload"], { env: { HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1", LESSOR_HOME: home }, encoding: "utf8", timeout: 60_000 });
      assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
      const before = held.length;
      const use = await s.call("http_request", { method: "GET", url: `https://api.test.example:${port}/`, headers: { Authorization: `Bearer ${placeholder}` } });
      assert.equal(use.isError, true, `the old lease still carried the credential after the reload: ${use.text}`);
      assert.equal(held.length, before);
      const again = await s.call("request_access", { secret: "github-token" });
      assert.equal(again.isError, true, again.text);
      assert.equal(again.doc["error"]["code"], "access_denied", again.text);
      const gatedAsk = await s.call("request_access", { secret: "github-token", domains: ["other.test.example"] });
      assert.equal(gatedAsk.isError, true, `an approval was opened under a rule the reload removed: ${gatedAsk.text}`);
      const listed = await s.call("list_secrets");
      assert.deepEqual(listed.doc["secrets"], [], "list_secrets lists what the reloaded policy grants: nothing");
    } finally {
      await s.close();
    }
  });
});

describe("at the end", () => {
  test("no canary in any tool result or stderr of the whole run", () => {
    for (const t of transcript) noCanary("the transcript", t);
  });
});
