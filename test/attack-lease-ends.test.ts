/**
 * Attack: every component that takes leases gives them back on every way it ends — or, when it
 * cannot, says so loudly (the lease ids and `lessor revoke <id>`) and exits non-zero.
 *
 * Real parts only: `lessor serve` as a child process (test/daemon-harness.ts), the built CLI
 * (`dist/bin/lessor.cjs mcp`) driven by the MCP SDK's real `Client` over the child's stdio. Leases are
 * checked afterwards in the vault itself (listLeases, revokeReason). A canary value must never show on
 * any stdout or stderr.
 *
 * Ways to end covered here: the MCP client closing stdin after the daemon closed the server's idle
 * connection (`[server] idle_timeout`) or was restarted; the client going away mid-call; EPIPE on the
 * server's stdout; a second MCP session of the same agent; over `--http`, a session ended by DELETE and
 * the server stopped, both after the daemon closed the idle connection or went away; over `--socket`, a
 * guest's connection closed after the daemon closed the idle connection.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import { connect as netConnect, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ReadBuffer, serializeMessage } from "@modelcontextprotocol/sdk/shared/stdio.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import { LessorClient } from "../src/client/client.js";
import { CredentialProvider } from "../src/client/credential-provider.js";
import { VaultError } from "../src/base/errors.js";
import { openVault } from "../src/config/open-vault.js";
import { LocalCa } from "../src/proxy/ca.js";
import { BIN } from "./cli-harness.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";

const CANARY = "ghp_" + randomBytes(18).toString("hex");

const POLICY = `
[[rule]]
name = "github"
effect = "allow"
agents = ["claude"]
secrets = ["github-token"]
domains = ["api.test.example"]
`;

/** A home with the canary stored and `config` as its lessor.toml. */
async function seededHome(config = ""): Promise<string> {
  const home = await makeHome({ policy: POLICY, ...(config !== "" ? { config } : {}) });
  const v = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    await v.admin().storeSecret({ name: "github-token", value: CANARY, kind: "pat" });
  } finally {
    await v.close();
  }
  return home;
}

/** Every lease of claude, read from the vault itself (the daemon stopped, or through it). */
async function leasesOf(home: string, d?: RunningDaemon): Promise<{ id: string; revokedAt: number | null; revokeReason: string | null }[]> {
  const pick = (ls: { id: string; revokedAt: number | null; revokeReason: string | null }[]) => ls.map((l) => ({ id: l.id, revokedAt: l.revokedAt, revokeReason: l.revokeReason }));
  if (d) {
    const c = await LessorClient.connect({ socketPath: d.socket });
    try {
      return pick(await c.listLeases({ agent: "claude", limit: 1000 }));
    } finally {
      await c.close();
    }
  }
  const v = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    return pick(await v.admin().listLeases({ agent: "claude", limit: 1000 }));
  } finally {
    await v.close();
  }
}

/** The MCP SDK's client over a child's stdin/stdout (so the test controls each pipe and sees the exit). */
class ChildTransport implements Transport {
  onclose?: () => void;
  onerror?: (e: Error) => void;
  onmessage?: (m: JSONRPCMessage) => void;
  readonly #buf = new ReadBuffer();
  constructor(readonly child: ChildProcess) {}
  async start(): Promise<void> {
    this.child.stdout!.on("data", (d: Buffer) => {
      this.#buf.append(d);
      for (let m = this.#buf.readMessage(); m !== null; m = this.#buf.readMessage()) this.onmessage?.(m);
    });
    this.child.on("close", () => this.onclose?.());
  }
  async send(m: JSONRPCMessage): Promise<void> {
    if (this.child.stdin!.writable) this.child.stdin!.write(serializeMessage(m));
  }
  async close(): Promise<void> {
    this.child.stdin!.end();
  }
}

interface Mcp {
  client: Client;
  child: ChildProcess;
  stderr(): string;
  stdout(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  call(name: string, args?: Record<string, unknown>): Promise<{ isError: boolean; doc: Record<string, any>; text: string }>;
}

/** `lessor mcp --agent claude` for `home` (through its daemon when one listens there). */
async function startMcp(home: string, extraEnv: Record<string, string> = {}): Promise<Mcp> {
  const child = spawn(process.execPath, ["--", BIN, "mcp", "--agent", "claude"], {
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", LESSOR_HOME: home, ...extraEnv },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const err: Buffer[] = [];
  const out: Buffer[] = [];
  child.stderr!.on("data", (d: Buffer) => err.push(d));
  child.stdout!.on("data", (d: Buffer) => out.push(d));
  child.stdin!.on("error", () => {});
  const killer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.on("close", (code, signal) => {
      clearTimeout(killer);
      r({ code, signal });
    }),
  );
  const client = new Client({ name: "attack-lease-ends", version: "1.0.0" });
  await client.connect(new ChildTransport(child));
  return {
    client,
    child,
    stderr: () => Buffer.concat(err).toString("utf8"),
    stdout: () => Buffer.concat(out).toString("utf8"),
    exited,
    async call(name, args = {}) {
      const r = (await client.callTool({ name, arguments: args })) as { isError?: boolean; content: { text: string }[] };
      const text = r.content.map((c) => c.text).join("\n");
      return { isError: r.isError === true, doc: JSON.parse(text) as Record<string, any>, text };
    },
  };
}

async function within<T>(p: Promise<T>, ms: number): Promise<T | null> {
  let t: NodeJS.Timeout | undefined;
  const r = await Promise.race([p, new Promise<null>((res) => (t = setTimeout(() => res(null), ms)))]);
  clearTimeout(t);
  return r;
}

/** Polls `f` until it is true or `ms` pass. */
async function until(f: () => Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await f()) return true;
    await sleep(100);
  }
  return f();
}

const ENDED = "lessor mcp session ended";

describe("lessor mcp over stdio: the session's leases when the daemon connection went away", () => {
  // docs/mcp.md "When the session ends": "When the client closes stdin ... every lease the session took
  // is revoked (lease_revoked, reason "lessor mcp session ended"), as lessor run revokes its leases when
  // its command exits." lessor run reconnects when the daemon closed its connection (docs/cli/run.md);
  // lessor mcp keeps its one backend for the whole session, which a person's chat keeps idle far longer
  // than the daemon's default idle_timeout of 5 minutes: that backend must reconnect.
  type Way = { name: string; config: string; meanwhile: (d: RunningDaemon) => Promise<RunningDaemon> };
  async function sessionOutlives(ways: Way[]): Promise<void> {
    const left: string[] = [];
    for (const w of ways) {
      const home = await seededHome(w.config);
      let d = await startServe(home);
      let m: Mcp | undefined;
      try {
        m = await startMcp(home);
        const got = await m.call("request_access", { secret: "github-token" });
        assert.equal(got.isError, false, got.text);
        d = await w.meanwhile(d);
        m.child.stdin!.end();
        const e = await within(m.exited, 20_000);
        assert.ok(e !== null, `${w.name}: lessor mcp did not end after stdin closed`);
        assert.ok(!m.stderr().includes(CANARY) && !m.stdout().includes(CANARY), "no value on stdout or stderr");
        const mine = (await leasesOf(home, d)).filter((l) => l.id === got.doc["leaseId"]);
        assert.equal(mine.length, 1);
        if (mine[0]!.revokedAt === null || mine[0]!.revokeReason !== ENDED)
          left.push(`${w.name}: lease ${mine[0]!.id} still live after lessor mcp exited ${e.code}; its stderr ends: ${m.stderr().trim().split("\n").slice(-1)[0]}`);
      } finally {
        m?.child.kill("SIGKILL");
        await d.stop();
      }
    }
    assert.deepEqual(left, [], "the session's lease outlives the session until its expiry");
  }

  test("lessor mcp revokes its session's leases when the client closes stdin, also after the daemon closed its idle connection (idle_timeout) or cut it at max_connection_lifetime", { timeout: 30_000 }, () =>
    sessionOutlives([
      { name: "idle_timeout = 1s", config: `[server]\nidle_timeout = "1s"\n`, meanwhile: async (d) => (await sleep(2500), d) },
      { name: "max_connection_lifetime = 2s", config: `[server]\nmax_connection_lifetime = "2s"\n`, meanwhile: async (d) => (await sleep(3000), d) },
    ]));

  test("lessor mcp revokes its session's leases when the client closes stdin, also after the daemon was restarted while it held them", { timeout: 30_000 }, () =>
    sessionOutlives([
      {
        name: "daemon restarted",
        config: "",
        meanwhile: async (d) => {
          await d.stop();
          return startServe(d.home);
        },
      },
    ]));

  // What lessor run, lessor proxy and lessor inject promise when a lease cannot be revoked (src/cli/run/
  // connection.ts): the ids on stderr with the lessor revoke command, and a non-zero exit — so whoever
  // started lessor mcp (an MCP client, a supervisor) learns that live leases were left, and which.
  test("a lease lessor mcp cannot revoke at the session's end (its daemon, named by LESSOR_SOCKET, is gone) is named on stderr with lessor revoke <id>, and lessor mcp exits non-zero", { timeout: 30_000 }, async () => {
    const home = await seededHome();
    const d = await startServe(home);
    let m: Mcp | undefined;
    let stopped = false;
    try {
      m = await startMcp(home, { LESSOR_SOCKET: d.socket });
      const got = await m.call("request_access", { secret: "github-token" });
      assert.equal(got.isError, false, got.text);
      const id = got.doc["leaseId"] as string;
      await d.stop();
      stopped = true;
      m.child.stdin!.end();
      const e = await within(m.exited, 20_000);
      assert.ok(e !== null, "lessor mcp did not end after stdin closed");
      assert.ok(!m.stderr().includes(CANARY), "no value on stderr");
      assert.equal((await leasesOf(home)).find((l) => l.id === id)?.revokedAt, null, "the lease is live (nothing could revoke it)");
      const err = m.stderr();
      assert.ok(err.includes(id) && err.includes(`lessor revoke ${id}`) && e.code !== 0, `lessor mcp exited ${e.code} and said: ${err.trim().split("\n").slice(-2).join(" | ")}`);
    } finally {
      m?.child.kill("SIGKILL");
      if (!stopped) await d.stop();
    }
  });

  // docs/mcp.md: "revoke — revokes one of the agent's leases ... The placeholder stops working at once."
  // The agent's own way to give a lease back must survive the session sitting idle past idle_timeout
  // (5 min by default), as must every other call (and its audit).
  test("an agent can revoke its lease through lessor mcp's revoke tool after the session sat idle past the daemon's idle_timeout", { timeout: 30_000 }, async () => {
    const home = await seededHome(`[server]\nidle_timeout = "1s"\n`);
    const d = await startServe(home);
    let m: Mcp | undefined;
    try {
      m = await startMcp(home);
      const got = await m.call("request_access", { secret: "github-token" });
      assert.equal(got.isError, false, got.text);
      const id = got.doc["leaseId"] as string;
      await sleep(2500); // the person reads the answer; the daemon closes the idle connection
      const r = await m.call("revoke", { leaseId: id });
      const lease = (await leasesOf(home, d)).find((l) => l.id === id)!;
      assert.ok(!r.text.includes(CANARY));
      assert.ok(r.isError === false && lease.revokedAt !== null, `revoke answered ${r.text.replace(/\s+/g, " ")}; the lease is ${lease.revokedAt === null ? "still live" : "revoked"}`);
    } finally {
      m?.child.kill("SIGKILL");
      await d.stop();
    }
  });
});

describe("lessor mcp over stdio: the client going away mid-call", () => {
  test("the client dies mid-call (its stdout read end closed, EPIPE on the answer; stdin closed): both leases, the one answered and the one still being granted, are revoked and lessor mcp exits", { timeout: 30_000 }, async () => {
    const home = await seededHome();
    const d = await startServe(home);
    let m: Mcp | undefined;
    try {
      m = await startMcp(home);
      const first = await m.call("request_access", { secret: "github-token" });
      assert.equal(first.isError, false, first.text);
      void m.client.callTool({ name: "request_access", arguments: { secret: "github-token" } }).catch(() => {});
      await sleep(5);
      m.child.stdout!.destroy();
      m.child.stdin!.end();
      const e = await within(m.exited, 20_000);
      assert.ok(e !== null, `lessor mcp did not end: ${m.stderr()}`);
      assert.ok(!m.stderr().includes(CANARY), "no value on stderr");
      const all = await leasesOf(home, d);
      assert.equal(all.length, 2, `the second request_access was granted while the client went away: ${JSON.stringify(all)}`);
      assert.deepEqual(all.filter((l) => l.revokedAt === null || l.revokeReason !== ENDED), [], `stderr: ${m.stderr()}`);
    } finally {
      m?.child.kill("SIGKILL");
      await d.stop();
    }
  });
});

describe("lessor mcp: two sessions of one agent", () => {
  // docs/mcp.md: each session has "its own leases and placeholders"; the leases the session took are
  // revoked when it ends. Session B (same agent, same daemon) sends session A's placeholder, before and
  // after A ended; A's end must not take B's lease with it.
  test("another session of the same agent cannot use a session's lease (its placeholder goes out as text), and one session's end revokes only its own leases", { timeout: 30_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "lessor-ends-"));
    const ca = LocalCa.create({ permitted: ["api.test.example"] });
    writeFileSync(join(dir, "ca.pem"), ca.certPem);
    const auths: string[] = [];
    const upstream = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, (req, res) => {
      auths.push(String(req.headers.authorization ?? ""));
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("ok\n");
    });
    await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
    const port = (upstream.address() as AddressInfo).port;
    const home = await seededHome(`[proxy]\nports = [${port}]\nallow = ["127.0.0.1"]\nhosts = { "api.test.example" = "127.0.0.1" }\nupstream_ca = "${join(dir, "ca.pem")}"\n`);
    const d = await startServe(home);
    let a: Mcp | undefined;
    let b: Mcp | undefined;
    try {
      a = await startMcp(home);
      b = await startMcp(home);
      const la = await a.call("request_access", { secret: "github-token" });
      const lb = await b.call("request_access", { secret: "github-token" });
      assert.equal(la.isError || lb.isError, false, la.text + lb.text);
      const send = async (s: Mcp, placeholder: string) => {
        const r = await s.call("http_request", { method: "GET", url: `https://api.test.example:${port}/x`, headers: { Authorization: `Bearer ${placeholder}` } });
        assert.ok(!r.text.includes(CANARY));
        return auths.at(-1);
      };
      assert.equal(await send(b, lb.doc["placeholder"]), `Bearer ${CANARY}`, "sanity: B's own placeholder works");
      assert.notEqual(await send(b, la.doc["placeholder"]), `Bearer ${CANARY}`, "B used A's lease while A was open");
      a.child.stdin!.end();
      assert.ok((await within(a.exited, 20_000)) !== null, "A did not end");
      const all = await leasesOf(home, d);
      assert.equal(all.find((l) => l.id === la.doc["leaseId"])?.revokeReason, ENDED, "A's lease revoked with A");
      assert.equal(all.find((l) => l.id === lb.doc["leaseId"])?.revokedAt, null, "B's lease lives on");
      assert.notEqual(await send(b, la.doc["placeholder"]), `Bearer ${CANARY}`, "B used A's lease after A ended");
      assert.equal(await send(b, lb.doc["placeholder"]), `Bearer ${CANARY}`, "B keeps working after A ended");
      assert.ok(!a.stderr().includes(CANARY) && !b.stderr().includes(CANARY));
    } finally {
      a?.child.kill("SIGKILL");
      b?.child.kill("SIGKILL");
      await d.stop();
      upstream.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("lessor mcp --http: one backend for every session, after the daemon connection went away", () => {
  /** `lessor mcp --http 127.0.0.1:0` for `home`, with its URL and bearer token once it serves. */
  async function startHttp(home: string, extraEnv: Record<string, string> = {}) {
    const dir = mkdtempSync(join(tmpdir(), "lessor-ends-http-"));
    const tokenFile = join(dir, "mcp.token");
    const child = spawn(process.execPath, ["--", BIN, "mcp", "--agent", "claude", "--http", "127.0.0.1:0", "--token-file", tokenFile], {
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", LESSOR_HOME: home, ...extraEnv },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr!.on("data", (d: Buffer) => (err += d.toString("utf8")));
    const killer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
      child.on("close", (code, signal) => {
        clearTimeout(killer);
        r({ code, signal });
      }),
    );
    assert.ok(await until(async () => /on (http:\/\/\S+\/mcp)/.test(err), 20_000), `lessor mcp --http did not start: ${err}`);
    const url = new URL(/on (http:\/\/\S+\/mcp)/.exec(err)![1]!);
    const token = readFileSync(tokenFile, "utf8").trim();
    const session = async () => {
      const transport = new StreamableHTTPClientTransport(url, { requestInit: { headers: { Authorization: `Bearer ${token}` } } });
      const client = new Client({ name: "attack-lease-ends-http", version: "1.0.0" });
      await client.connect(transport);
      const call = async (name: string, args: Record<string, unknown> = {}) => {
        const r = (await client.callTool({ name, arguments: args })) as { isError?: boolean; content: { text: string }[] };
        const text = r.content.map((c) => c.text).join("\n");
        assert.ok(!text.includes(CANARY));
        return { isError: r.isError === true, doc: JSON.parse(text) as Record<string, any>, text };
      };
      return { client, transport, call };
    };
    return { child, exited, session, stderr: () => err, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
  }

  test("a session's revoke tool and its end (DELETE) revoke its leases after the daemon closed the idle connection; the server's stop revokes the rest, through the vault itself once the daemon is gone", { timeout: 40_000 }, async () => {
    const home = await seededHome(`[server]\nidle_timeout = "1s"\n`);
    let d: RunningDaemon | null = await startServe(home);
    const m = await startHttp(home);
    try {
      const a = await m.session();
      const a1 = await a.call("request_access", { secret: "github-token" });
      assert.equal(a1.isError, false, a1.text);
      await sleep(2500); // the daemon closes the idle connection every session shares
      const r = await a.call("revoke", { leaseId: a1.doc["leaseId"] });
      assert.equal(r.isError, false, `revoke after the idle period: ${r.text}`);
      const a2 = await a.call("request_access", { secret: "github-token" });
      assert.equal(a2.isError, false, a2.text);
      const b = await m.session();
      const b1 = await b.call("request_access", { secret: "github-token" });
      assert.equal(b1.isError, false, b1.text);
      await sleep(2500);
      await a.transport.terminateSession();
      await a.client.close();
      assert.ok(
        await until(async () => (await leasesOf(home, d!)).find((l) => l.id === a2.doc["leaseId"])?.revokeReason === ENDED, 10_000),
        `session A's lease was not revoked when it ended (DELETE): ${m.stderr()}`,
      );
      const mid = await leasesOf(home, d);
      assert.ok(mid.find((l) => l.id === a1.doc["leaseId"])?.revokedAt !== null, "the lease the revoke tool revoked");
      assert.equal(mid.find((l) => l.id === b1.doc["leaseId"])?.revokedAt, null, "session B's lease lives on");
      await b.client.close();
      await d.stop();
      d = null;
      m.child.kill("SIGTERM");
      const e = await within(m.exited, 20_000);
      assert.ok(e !== null, "lessor mcp --http did not stop");
      const end = await leasesOf(home);
      assert.equal(end.find((l) => l.id === b1.doc["leaseId"])?.revokeReason, ENDED, `session B's lease, at the server's stop with no daemon left: ${m.stderr()}`);
      assert.equal(e.code, 0, m.stderr());
      assert.ok(!m.stderr().includes(CANARY));
    } finally {
      m.child.kill("SIGKILL");
      await d?.stop();
      m.cleanup();
    }
  });

  test("a lease lessor mcp --http cannot revoke at its stop (its daemon, named by LESSOR_SOCKET, is gone) is named on stderr with lessor revoke <id>, and lessor mcp exits 1", { timeout: 30_000 }, async () => {
    const home = await seededHome();
    const d = await startServe(home);
    let stopped = false;
    const m = await startHttp(home, { LESSOR_SOCKET: d.socket });
    try {
      const s = await m.session();
      const got = await s.call("request_access", { secret: "github-token" });
      assert.equal(got.isError, false, got.text);
      const id = got.doc["leaseId"] as string;
      await s.client.close();
      await d.stop();
      stopped = true;
      m.child.kill("SIGTERM");
      const e = await within(m.exited, 20_000);
      assert.ok(e !== null, "lessor mcp --http did not stop");
      assert.equal((await leasesOf(home)).find((l) => l.id === id)?.revokedAt, null, "the lease is live (nothing could revoke it)");
      const err = m.stderr();
      assert.ok(!err.includes(CANARY));
      assert.ok(err.includes(`lessor revoke ${id}`) && e.code === 1, `lessor mcp exited ${e.code} and said: ${err.trim().split("\n").slice(-2).join(" | ")}`);
    } finally {
      m.child.kill("SIGKILL");
      if (!stopped) await d.stop();
      m.cleanup();
    }
  });
});

describe("lessor mcp --socket: one backend for every guest connection, after the daemon connection went away", () => {
  /** The MCP SDK's client over a socket connection (newline-delimited JSON-RPC, as socat relays it). */
  class SocketTransport implements Transport {
    onclose?: () => void;
    onerror?: (e: Error) => void;
    onmessage?: (m: JSONRPCMessage) => void;
    readonly #buf = new ReadBuffer();
    constructor(readonly sock: Socket) {}
    async start(): Promise<void> {
      this.sock.on("data", (d: Buffer) => {
        this.#buf.append(d);
        for (let m = this.#buf.readMessage(); m !== null; m = this.#buf.readMessage()) this.onmessage?.(m);
      });
      this.sock.on("close", () => this.onclose?.());
      this.sock.on("error", () => {});
    }
    async send(m: JSONRPCMessage): Promise<void> {
      this.sock.write(serializeMessage(m));
    }
    async close(): Promise<void> {
      this.sock.end();
    }
  }

  test("a connection's session revokes its lease when the guest closes it after the daemon closed the idle connection; the revoke tool works after the idle period", { timeout: 30_000 }, async () => {
    const home = await seededHome(`[server]\nidle_timeout = "1s"\n`);
    const d = await startServe(home);
    const dir = mkdtempSync(join(tmpdir(), "lessor-ends-sock-"));
    const path = join(dir, "mcp.sock");
    const child = spawn(process.execPath, ["--", BIN, "mcp", "--agent", "claude", "--socket", path], {
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", LESSOR_HOME: home },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr!.on("data", (b: Buffer) => (err += b.toString("utf8")));
    const exited = new Promise<{ code: number | null }>((r) => child.on("close", (code) => r({ code })));
    try {
      assert.ok(await until(async () => err.includes("lessor mcp: serving"), 20_000), `lessor mcp --socket did not start: ${err}`);
      const guest = async () => {
        const sock = netConnect(path);
        await new Promise<void>((r, j) => sock.once("connect", r).once("error", j));
        const client = new Client({ name: "attack-lease-ends-socket", version: "1.0.0" });
        await client.connect(new SocketTransport(sock));
        const call = async (name: string, args: Record<string, unknown> = {}) => {
          const r = (await client.callTool({ name, arguments: args })) as { isError?: boolean; content: { text: string }[] };
          const text = r.content.map((c) => c.text).join("\n");
          assert.ok(!text.includes(CANARY));
          return { isError: r.isError === true, doc: JSON.parse(text) as Record<string, any>, text };
        };
        return { client, call };
      };
      const g = await guest();
      const l1 = await g.call("request_access", { secret: "github-token" });
      assert.equal(l1.isError, false, l1.text);
      await sleep(2500);
      const r = await g.call("revoke", { leaseId: l1.doc["leaseId"] });
      assert.equal(r.isError, false, `revoke after the idle period: ${r.text}`);
      const l2 = await g.call("request_access", { secret: "github-token" });
      assert.equal(l2.isError, false, l2.text);
      await sleep(2500);
      await g.client.close();
      assert.ok(
        await until(async () => (await leasesOf(home, d)).find((l) => l.id === l2.doc["leaseId"])?.revokeReason === ENDED, 10_000),
        `the connection's lease was not revoked when it closed: ${err}`,
      );
      child.kill("SIGTERM");
      const e = await within(exited, 20_000);
      assert.ok(e !== null && e.code === 0, `lessor mcp --socket exited ${e?.code}: ${err}`);
      assert.ok(!err.includes(CANARY));
    } finally {
      child.kill("SIGKILL");
      await d.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the SDK's LeasedCredential (await using)", () => {
  // docs/client.md: "Disposing the credential revokes the lease ... throws any other error (such as
  // unavailable when the daemon is gone)". The caller retries the disposal once the daemon is back, as
  // that error invites: the retry resolves at once and sends nothing (the credential marked itself
  // released before the first attempt), so the lease stays live and value() now claims it was released.
  test("a disposal that failed because the daemon was down revokes the lease when it is retried once the daemon is back (or fails again), never resolves with the lease live", { timeout: 30_000 }, async () => {
    const home = await seededHome();
    let d = await startServe(home);
    const client = await LessorClient.connect({ socketPath: d.socket });
    try {
      const cred = await new CredentialProvider(client, { agent: "claude" }).lease("github-token", { domains: ["api.test.example"] });
      const v = await cred.value({ domain: "api.test.example" });
      assert.equal(v.unsafeText(), CANARY);
      await d.stop();
      await assert.rejects(cred[Symbol.asyncDispose](), (e: unknown) => e instanceof VaultError && e.code === "unavailable");
      assert.equal(v.wiped, true, "the values were wiped even though the revocation failed");
      d = await startServe(home);
      let retry: unknown = null;
      try {
        await cred[Symbol.asyncDispose]();
      } catch (e) {
        retry = e;
      }
      const lease = (await leasesOf(home, d)).find((l) => l.id === cred.lease.id)!;
      assert.ok(
        lease.revokedAt !== null || retry !== null,
        `the retried disposal resolved without error, yet lease ${lease.id} is still live (until its expiry); value() says: ${await cred.value().then(
          () => "a value",
          (e: Error) => e.message,
        )}`,
      );
    } finally {
      await client.close();
      await d.stop();
    }
  });
});
