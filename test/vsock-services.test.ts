/**
 * Issue 17, the last part: the injecting proxy and the MCP server offered to VM guests over vsock.
 *
 * Firecracker form, end to end (it is a Unix socket): the built CLI serves `lessor proxy --socket
 * <uds_path>_3128` and `lessor mcp --socket <uds_path>_5000` for a `[[vm]]`; the test plays the guest
 * on that socket, where Firecracker delivers the guest's connections to host ports 3128 and 5000. The
 * proxy client gets its credential injected on the way to a real local HTTPS upstream; the MCP client
 * is the SDK's real Client started exactly as a guest would start it (`socat - UNIX-CONNECT:…`; in a
 * guest `socat - VSOCK-CONNECT:2:5000`), and its identity is the VM's agent, never a tool argument.
 * A socket of another agent's VM, or no VM's socket without --agent, is refused before anything is
 * leased.
 *
 * AF_VSOCK form, apart from the kernel (this machine is itself a guest: AF_VSOCK loopback does not
 * connect and its host must never be contacted, so nothing here connects over AF_VSOCK): the accept
 * path every connection takes (acceptVsock: CID check, relay) is driven with a Unix socketpair
 * standing in for the guest's descriptor, into the guest gate `--vsock-port` uses, and from there into
 * a real MCP session (the SDK's Client over the guest's end) and a real proxy. Mapped CIDs get their
 * agent; unmapped CIDs, CIDs mapped to another agent and the host's CID are refused and counted; the
 * per-guest cap holds.
 *
 * A canary value never appears in a tool result, a response, stdout or stderr. Nothing leaves the
 * machine: the upstream listens on 127.0.0.1 and its name resolves through `[proxy] hosts`.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { request as httpRequest, type IncomingHttpHeaders } from "node:http";
import * as https from "node:https";
import { connect, Socket, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { ReadBuffer, serializeMessage } from "@modelcontextprotocol/sdk/shared/stdio.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import { inProcessApi } from "../src/backend/in-process.js";
import { GuestGate, listenGuests } from "../src/cli/guest-gate.js";
import { guestAgent, vmOfSocket } from "../src/config/guest-map.js";
import type { VmConfig } from "../src/config/vm-config.js";
import { loadPeerCred } from "../src/native/peercred.js";
import { startRunProxy, type RunProxy } from "../src/cli/run/proxy.js";
import { DEFAULT_PROXY_CONFIG } from "../src/config/proxy-config.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { createMcpSession } from "../src/mcp/server.js";
import { refuseMcpStream, StreamSessions } from "../src/mcp/stream.js";
import { hasVsockDevice, loadVsock } from "../src/native/vsock.js";
import { LocalCa } from "../src/proxy/ca.js";
import { acceptVsock } from "../src/server/transports/vsock.js";
import type { Vault } from "../src/vault/vault.js";
import { seedHome, startCli, type RunningCli } from "./cli-harness.js";

const HAVE_SOCAT = spawnSync("socat", ["-V"]).status === 0;
const CANARY = "ghp_" + randomBytes(18).toString("hex"); // shaped like a GitHub token

const root = mkdtempSync(join(tmpdir(), "lessor-vsock-svc-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const LESSOR_HOME = join(HOME, ".lessor");
const FC = join(root, "fc");

let port = 0;
let upstream: https.Server;
const seen: { url: string; headers: IncomingHttpHeaders }[] = [];
/** Everything a guest or a log showed, checked for the canary at the end. */
const transcript: string[] = [];

const POLICY = `
[[rule]]
name = "github"
effect = "allow"
agents = ["claude", "codex"]
secrets = ["github-token"]
domains = ["api.test.example"]
`;

function noCanary(where: string, text: string): void {
  assert.ok(!text.includes(CANARY), `the credential appears in ${where}`);
}

type Running = RunningCli;

/** Starts the built CLI with `args`; resolves once stderr matches `ready` (or it exits). */
function start(args: string[], ready: RegExp, env: Record<string, string> = {}): Promise<Running> {
  return startCli(args, ready, { PATH: "/usr/bin:/bin", HOME, LESSOR_HOME, NO_COLOR: "1", ...env });
}

async function stopped(r: Running): Promise<number | null> {
  if (r.child.exitCode === null) r.child.kill("SIGTERM");
  const { code } = await r.exited;
  transcript.push(r.stdout(), r.stderr());
  return code;
}

async function liveLeases(agent: string): Promise<number> {
  const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  try {
    return (await vault.admin().listLeases({ agent, liveAt: Date.now() })).length;
  } finally {
    await vault.close();
  }
}

const basic = (token: string): string => "Basic " + Buffer.from(`lessor:${token}`).toString("base64");

/** A guest's HTTPS request through the proxy at Unix socket `path`: CONNECT with the token, TLS with the session CA, then GET. */
function guestGet(path: string, token: string, ca: string, placeholder: string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const req = httpRequest({ socketPath: path, method: "CONNECT", path: `api.test.example:${port}`, headers: { "proxy-authorization": basic(token) } });
    req.on("error", reject);
    req.on("connect", (res, socket) => {
      if (res.statusCode !== 200) return reject(new Error(`CONNECT ${res.statusCode}`));
      const agent = new https.Agent();
      agent.createConnection = () => tlsConnect({ socket, servername: "api.test.example", ca });
      const get = https.request({ host: "api.test.example", port, path: "/vm", headers: { authorization: `Bearer ${placeholder}` }, agent, lookup: () => reject(new Error("no lookup may happen")) }, (r) => {
        const got: Buffer[] = [];
        r.on("data", (d: Buffer) => got.push(d));
        r.on("end", () => resolve(`${r.statusCode} ${Buffer.concat(got).toString("utf8")}`));
      });
      get.on("error", reject);
      get.end();
    });
    req.end();
  });
}

/** The SDK's Transport over a connected stream (the guest's end of a socket): newline-delimited JSON-RPC. */
class StreamClientTransport implements Transport {
  onmessage?: (m: JSONRPCMessage) => void;
  onclose?: () => void;
  onerror?: (e: Error) => void;
  readonly #buf = new ReadBuffer();
  constructor(readonly socket: Socket) {}
  async start(): Promise<void> {
    this.socket.on("data", (d: Buffer) => {
      this.#buf.append(d);
      for (let m = this.#buf.readMessage(); m !== null; m = this.#buf.readMessage()) this.onmessage?.(m);
    });
    this.socket.on("error", (e) => this.onerror?.(e));
    this.socket.on("close", () => this.onclose?.());
  }
  async send(m: JSONRPCMessage): Promise<void> {
    this.socket.write(serializeMessage(m));
  }
  async close(): Promise<void> {
    this.socket.end();
  }
}

/** Everything that arrives on `s` until it closes. */
function readAll(s: Socket): Promise<string> {
  return new Promise((resolve) => {
    const got: Buffer[] = [];
    s.on("data", (d: Buffer) => got.push(d));
    s.on("error", () => {});
    s.on("close", () => resolve(Buffer.concat(got).toString("utf8")));
    s.setTimeout(10_000, () => s.destroy());
  });
}

before(async () => {
  mkdirSync(HOME, { recursive: true });
  mkdirSync(FC, { mode: 0o700 });
  const ca = LocalCa.create({ permitted: ["api.test.example"] });
  writeFileSync(join(root, "upstream-ca.pem"), ca.certPem);
  upstream = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, (req, res) => {
    seen.push({ url: req.url!, headers: req.headers });
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(`you sent: ${String(req.headers.authorization ?? "")}\n`);
    });
  });
  await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
  port = (upstream.address() as AddressInfo).port;
  await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  const base = readFileSync(join(LESSOR_HOME, "lessor.toml"), "utf8");
  writeFileSync(
    join(LESSOR_HOME, "lessor.toml"),
    `${base}\n[proxy]\nports = [${port}]\nallow = ["127.0.0.1"]\nhosts = { "api.test.example" = "127.0.0.1" }\nupstream_ca = "${join(root, "upstream-ca.pem")}"\n` +
      `\n[[vm]]\nname = "vm1"\nuds_path = "${FC}/vm1.vsock"\nport = 7391\nagent = "claude"\n` +
      `\n[[vm]]\nname = "vm2"\nuds_path = "${FC}/vm2.vsock"\nport = 7391\nagent = "codex"\n` +
      // No [server] vsock_port: the entries serve lessor proxy/mcp --vsock-port only.
      `\n[[vsock]]\ncid = 5\nagent = "claude"\n\n[[vsock]]\ncid = 6\nagent = "codex"\n`,
    { mode: 0o600 },
  );
  await seedHome(LESSOR_HOME, POLICY, [{ name: "github-token", value: CANARY, kind: "pat" }]);
});

after(async () => {
  upstream?.close();
  for (const t of transcript) noCanary("a guest's output or a log", t);
});

describe("the proxy on a Firecracker VM's vsock socket (<uds_path>_3128)", () => {
  const sock = join(FC, "vm1.vsock_3128");
  const proxyArgs = (agent: string, path: string): string[] => ["proxy", "--agent", agent, "--domain", "api.test.example", "--socket", path];

  test("the guest's HTTPS request through the VM's socket gets the credential added; the leases end with the proxy", async () => {
    const p = await start(proxyArgs("claude", sock), /lessor: proxy for agent/, { GITHUB_TOKEN: "$S:github-token" });
    try {
      assert.match(p.stderr(), /on VM "vm1"'s vsock socket .*vm1\.vsock_3128 \(guest port 3128\)/, p.stderr());
      const st = statSync(sock);
      assert.ok(st.isSocket());
      assert.equal(st.mode & 0o777, 0o600, "the [[vm]]'s socket_mode (default 0600)");
      const env = Object.fromEntries(p.stdout().trim().split("\n").map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
      const m = /^http:\/\/lessor:([A-Za-z0-9_-]{43})@127\.0\.0\.1:3128$/.exec(env["HTTPS_PROXY"] ?? "");
      assert.ok(m, env["HTTPS_PROXY"]);
      assert.notEqual(env["GITHUB_TOKEN"], CANARY);
      const ca = readFileSync(env["NODE_EXTRA_CA_CERTS"]!, "utf8");
      const before = seen.length;
      const body = await guestGet(sock, m[1]!, ca, env["GITHUB_TOKEN"]!);
      transcript.push(body);
      assert.equal(body, `200 you sent: Bearer ${env["GITHUB_TOKEN"]}\n`, "the echoed credential came back as the placeholder");
      assert.equal(seen.slice(before)[0]?.headers.authorization, `Bearer ${CANARY}`, "the upstream got the real credential");
      // Without the session token the guest gets nothing.
      await assert.rejects(guestGet(sock, "x".repeat(43), ca, env["GITHUB_TOKEN"]!), /CONNECT 407/);
      assert.equal(await stopped(p), 0, p.stderr());
      assert.ok(!existsSync(sock), "the socket is removed");
      assert.equal(await liveLeases("claude"), 0);
    } finally {
      if (p.child.exitCode === null) p.child.kill("SIGKILL");
    }
  });

  test("a VM's socket for an agent it is not mapped to, or the daemon's own VM socket, is refused before any lease", async () => {
    const p = await start(proxyArgs("codex", sock), /(?!)/, { GITHUB_TOKEN: "$S:github-token" });
    assert.notEqual(await stopped(p), 0);
    assert.match(p.stderr(), /vm1\.vsock_3128 is the socket of \[\[vm\]\] "vm1" \(guest port 3128\), and lessor proxy cannot serve that VM: it is mapped to agent "claude", not "codex"/, p.stderr());
    assert.equal(p.stdout(), "");
    assert.ok(!existsSync(sock));
    assert.equal(await liveLeases("codex"), 0);
    const q = await start(proxyArgs("claude", join(FC, "vm1.vsock_7391")), /(?!)/, { GITHUB_TOKEN: "$S:github-token" });
    assert.notEqual(await stopped(q), 0);
    assert.match(q.stderr(), /that is the daemon's own socket for VM "vm1"/, q.stderr());
  });
});

describe("who a VM's socket serves", () => {
  const vm = (extra: Partial<VmConfig>): VmConfig => ({ name: "vm9", udsPath: join(FC, "vm9.vsock"), port: 7391, socketMode: 0o600, role: "agent", agent: "claude", ...extra });

  test("<uds_path>_<P> is the VM's for any port P; other paths are no VM's", () => {
    const vms = [vm({}), vm({ name: "rel", udsPath: "fc/rel.vsock" })];
    assert.equal(vmOfSocket(vms, "/home/x", join(FC, "vm9.vsock_3128"))?.vm.name, "vm9");
    assert.equal(vmOfSocket(vms, "/home/x", join(FC, "vm9.vsock_3128"))?.port, 3128);
    assert.equal(vmOfSocket(vms, "/home/x", "/home/x/fc/rel.vsock_5000")?.vm.name, "rel");
    for (const other of [join(FC, "vm9.vsock"), join(FC, "vm9.vsock_"), join(FC, "vm9.vsock_03128"), join(FC, "vm9.vsock_3128x"), join(FC, "vm9.vsock_4294967295"), join(FC, "vm9.vsockX_1")])
      assert.equal(vmOfSocket(vms, "/home/x", other), null, other);
  });

  test("an orchestrator VM is offered only an agent its act_for covers, named with --agent", () => {
    const orch = vm({ role: "orchestrator", actFor: ["claude-*"] });
    delete orch.agent;
    assert.deepEqual(guestAgent(orch, "claude-1"), { agent: "claude-1" });
    assert.match((guestAgent(orch, "codex") as { refused: string }).refused, /act_for does not cover agent "codex"/);
    assert.match((guestAgent(orch, undefined) as { refused: string }).refused, /must be named with --agent/);
  });

  test("a VM whose [[vm]] names the Firecracker process's uid refuses a connection from any other uid (SO_PEERCRED)", { skip: loadPeerCred().available ? false : "the peer-credential addon is not built" }, async () => {
    const path = join(FC, "vm9.vsock_5000");
    const logs: string[] = [];
    let served = 0;
    const gate = new GuestGate({ kind: "vm", vm: vm({ socketMode: 0o660, uid: 4242 }), path, port: 5000 }, { what: "lessor mcp", agent: undefined, onGuest: (s) => (served++, s.destroy()), refuse: refuseMcpStream, log: (l) => void logs.push(l) });
    const door = await listenGuests({ kind: "vm", vm: vm({ socketMode: 0o660, uid: 4242 }), path, port: 5000 }, gate);
    try {
      assert.equal(statSync(path).mode & 0o777, 0o660);
      const s = connect(path);
      const said = await readAll(s);
      assert.equal(served, 0);
      assert.match(said, /this socket takes connections from the VM's Firecracker process only/);
      assert.match(logs.join("\n"), new RegExp(`only uid 4242 \\(the Firecracker process of VM "vm9"\\) may connect to .*; this connection is from uid ${process.getuid!()}`));
      assert.equal(gate.refused, 1);
    } finally {
      door.close();
    }
    assert.ok(!existsSync(path), "the socket is removed on close");
  });
});

describe("lessor mcp on a Firecracker VM's vsock socket (<uds_path>_5000)", { skip: HAVE_SOCAT ? false : "socat is not installed (apt-get install socat)" }, () => {
  const sock = join(FC, "vm1.vsock_5000");
  let m: Running;

  /** The SDK's client, started as a guest starts it: socat to the VM's socket. */
  async function guestClient(): Promise<{ client: Client; call(name: string, args?: Record<string, unknown>): Promise<{ isError: boolean; doc: any; text: string }> }> {
    const client = new Client({ name: "guest", version: "1.0.0" });
    await client.connect(new StdioClientTransport({ command: "socat", args: ["-", `UNIX-CONNECT:${sock}`], env: { PATH: "/usr/bin:/bin" }, stderr: "ignore" }));
    return {
      client,
      async call(name, args = {}) {
        const r = (await client.callTool({ name, arguments: args })) as { isError?: boolean; content: { text: string }[] };
        const text = r.content.map((c) => c.text).join("\n");
        transcript.push(text);
        return { isError: r.isError === true, doc: JSON.parse(text), text };
      },
    };
  }

  before(async () => {
    // No --agent: the VM's [[vm]] entry says who its guests are.
    m = await start(["mcp", "--socket", sock], /lessor mcp: serving/);
    assert.match(m.stderr(), /serving VM "vm1"'s vsock socket .*vm1\.vsock_5000 \(guest port 5000\) .*for agent "claude"/, m.stderr());
  });
  after(async () => {
    if (m) await stopped(m);
  });

  test("a guest's MCP client lists the tools, leases, and its http_request gets the credential injected, as the VM's agent", async () => {
    assert.equal(statSync(sock).mode & 0o777, 0o600);
    const g = await guestClient();
    try {
      const { tools } = await g.client.listTools();
      assert.deepEqual(tools.map((t) => t.name).sort(), ["explain_access", "http_request", "list_leases", "list_secrets", "request_access", "revoke"]);
      const lease = await g.call("request_access", { secret: "github-token" });
      assert.equal(lease.isError, false, lease.text);
      assert.notEqual(lease.doc.placeholder, CANARY);
      const before = seen.length;
      const r = await g.call("http_request", { method: "GET", url: `https://api.test.example:${port}/mcp`, headers: { Authorization: `Bearer ${lease.doc.placeholder}` } });
      assert.equal(r.isError, false, r.text);
      assert.equal(r.doc.status, 200);
      assert.equal(r.doc.body, `you sent: Bearer ${lease.doc.placeholder}\n`);
      assert.equal(seen.slice(before)[0]?.headers.authorization, `Bearer ${CANARY}`);
      // The lease is claude's (the VM's agent), whatever the guest says.
      assert.equal(await liveLeases("claude"), 1);
      assert.equal(await liveLeases("codex"), 0);
      const bad = await g.call("list_leases", { agent: "codex" });
      assert.equal(bad.isError, true, "no tool takes an agent");
    } finally {
      await g.client.close();
    }
    // Closing the connection ends its session and revokes its lease.
    for (let i = 0; i < 250 && !/session 1 \(vm:vm1, agent "claude"\) closed/.test(m.stderr()); i++) await new Promise((s) => setTimeout(s, 20));
    assert.match(m.stderr(), /session 1 \(vm:vm1, agent "claude"\) closed; its leases are revoked/);
    assert.equal(await liveLeases("claude"), 0);
  });

  test("two guest connections are two sessions, each with its own leases", async () => {
    const a = await guestClient();
    const b = await guestClient();
    try {
      const got = await a.call("request_access", { secret: "github-token" });
      assert.equal(got.isError, false, got.text);
      // Both are the VM's agent; the placeholder belongs to the session that took the lease.
      const inA = await a.call("list_leases");
      const inB = await b.call("list_leases");
      assert.equal(inA.doc.agent, "claude");
      assert.equal(inB.doc.agent, "claude");
      assert.equal(inA.doc.leases.find((l: any) => l.leaseId === got.doc.leaseId)?.placeholder, got.doc.placeholder);
      const seenByB = inB.doc.leases.find((l: any) => l.leaseId === got.doc.leaseId);
      assert.ok(seenByB && !("placeholder" in seenByB), "the other session has no placeholder for it");
      assert.equal(await liveLeases("claude"), 1);
    } finally {
      await a.client.close();
      await b.client.close();
    }
  });

  test("no VM's socket without --agent, or a VM's socket for another agent: refused at start", async () => {
    const p = await start(["mcp", "--socket", join(FC, "nobody.sock")], /(?!)/);
    assert.notEqual(await stopped(p), 0);
    assert.match(p.stderr(), /--agent is required/, p.stderr());
    assert.ok(!existsSync(join(FC, "nobody.sock")));
    const q = await start(["mcp", "--agent", "codex", "--socket", join(FC, "vm1.vsock_5001")], /(?!)/);
    assert.notEqual(await stopped(q), 0);
    assert.match(q.stderr(), /is the socket of \[\[vm\]\] "vm1".*mapped to agent "claude", not "codex"/, q.stderr());
    assert.ok(!existsSync(join(FC, "vm1.vsock_5001")));
  });

  test("SIGTERM ends the sessions and removes the socket", async () => {
    const g = await guestClient();
    assert.equal((await g.call("request_access", { secret: "github-token" })).isError, false);
    assert.equal(await stopped(m), 0, m.stderr());
    assert.ok(!existsSync(sock));
    assert.equal(await liveLeases("claude"), 0);
    await g.client.close().catch(() => {});
  });
});

const vs = loadVsock();
const skipKernel = !vs.available ? `the AF_VSOCK addon is not available (${vs.reason})` : hasVsockDevice() ? false : "this machine has no /dev/vsock";

describe("--vsock-port on the command line (binds on VMADDR_CID_ANY, which contacts nobody; no test connects)", { skip: skipKernel }, () => {
  /** A port unlikely to be taken: the listen fails clearly if it is. */
  const vport = (): number => 20_000 + Math.floor(Math.random() * 40_000);

  test("lessor proxy --vsock-port serves the CIDs mapped to its agent, then stops and revokes", async () => {
    const P = vport();
    const p = await start(["proxy", "--agent", "claude", "--domain", "api.test.example", "--vsock-port", String(P)], /lessor: proxy for agent/, { GITHUB_TOKEN: "$S:github-token" });
    try {
      assert.match(p.stderr(), new RegExp(`on AF_VSOCK port ${P}, for guest CID 5 \\(agent "claude"\\) \\(the printed HTTPS_PROXY assumes the guest forwards 127\\.0\\.0\\.1:3128 to it\\)`), p.stderr());
      assert.match(p.stdout(), /^HTTPS_PROXY=http:\/\/lessor:[A-Za-z0-9_-]{43}@127\.0\.0\.1:3128$/m);
      assert.equal(await liveLeases("claude"), 1);
      assert.equal(await stopped(p), 0, p.stderr());
      assert.equal(await liveLeases("claude"), 0);
    } finally {
      if (p.child.exitCode === null) p.child.kill("SIGKILL");
    }
  });

  test("lessor mcp --vsock-port serves each mapped CID as its agent; --agent narrows it; an agent no CID maps to is refused at start", async () => {
    const P = vport();
    const m = await start(["mcp", "--vsock-port", String(P)], /lessor mcp: serving/);
    assert.match(m.stderr(), new RegExp(`serving AF_VSOCK port ${P}, for guest CID 5 \\(agent "claude"\\), 6 \\(agent "codex"\\) .*for the agent of each guest CID`), m.stderr());
    assert.equal(await stopped(m), 0, m.stderr());
    const n = await start(["mcp", "--agent", "codex", "--vsock-port", String(P)], /lessor mcp: serving/);
    assert.match(n.stderr(), new RegExp(`serving AF_VSOCK port ${P}, for guest CID 6 \\(agent "codex"\\) `), n.stderr());
    assert.equal(await stopped(n), 0, n.stderr());
    const q = await start(["mcp", "--agent", "nobody", "--vsock-port", String(P)], /(?!)/);
    assert.notEqual(await stopped(q), 0);
    assert.match(q.stderr(), /no \[\[vsock\]\] entry in lessor\.toml maps a guest CID to agent "nobody"/, q.stderr());
  });
});

describe("AF_VSOCK guests (--vsock-port), apart from the kernel: a socketpair stands in for the guest", { skip: vs.available ? false : `the AF_VSOCK addon is not available (${vs.reason})` }, () => {
  const addon = vs.available ? vs.addon : null;
  const guests = [
    { cid: 5, role: "agent" as const, agent: "claude" },
    { cid: 6, role: "agent" as const, agent: "codex" },
  ];
  let vault: Vault;
  const logs: string[] = [];
  const log = (l: string): void => void logs.push(l);

  /** acceptVsock on one end of a new pair as if the kernel had accepted it from `cid`; returns the guest's end. */
  function connectAs(gate: GuestGate, cid: number): Socket {
    const [inner, outer] = addon!.socketpair();
    acceptVsock(addon!, { fd: inner!, cid, port: 5000 }, gate.handle, gate.onError);
    return new Socket({ fd: outer!, readable: true, writable: true });
  }

  before(async () => {
    vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  });
  after(async () => {
    await vault?.close();
    for (const l of logs) noCanary("the log", l);
  });

  test("lessor mcp: each mapped CID is a session of its own agent; an unmapped CID and the host's CID are refused and counted", async () => {
    const api = inProcessApi(vault);
    const sessions = new StreamSessions({ log, newSession: (identity) => createMcpSession({ api, identity, proxyConfig: structuredClone(DEFAULT_PROXY_CONFIG), log, approvalPage: false }) });
    const gate = new GuestGate({ kind: "vsock", port: 5000, guests }, { what: "lessor mcp", agent: undefined, onGuest: (s, g) => void sessions.serve(s, { agent: g.agent, role: "admin" }, g.principal), refuse: refuseMcpStream, log, maxPerGuest: 2 });
    try {
      const opened: Client[] = [];
      for (const [cid, agent] of [
        [5, "claude"],
        [6, "codex"],
      ] as const) {
        const client = new Client({ name: "guest", version: "1.0.0" });
        await client.connect(new StreamClientTransport(connectAs(gate, cid)));
        opened.push(client);
        assert.equal((await client.listTools()).tools.length, 6);
        const r = (await client.callTool({ name: "request_access", arguments: { secret: "github-token" } })) as { content: { text: string }[] };
        const doc = JSON.parse(r.content[0]!.text) as { placeholder: string };
        noCanary("a tool result", r.content[0]!.text);
        assert.equal(typeof doc.placeholder, "string");
        assert.equal(await liveLeases(agent), 1, `CID ${cid}'s lease is ${agent}'s`);
      }
      assert.ok(logs.some((l) => /session \d+ \(cid:5, agent "claude"\) opened/.test(l)), logs.join("\n"));
      assert.ok(logs.some((l) => /session \d+ \(cid:6, agent "codex"\) opened/.test(l)), logs.join("\n"));
      // An unmapped CID: a JSON-RPC error line, then the end; nothing it sends is read.
      const stranger = connectAs(gate, 7);
      const said = readAll(stranger);
      stranger.write(`${JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" })}\n`);
      const line = JSON.parse((await said).trim()) as { id: unknown; error: { message: string } };
      assert.equal(line.id, null);
      assert.equal(line.error.message, "lessor mcp: guest CID 7 is not mapped to an agent here");
      // The host's CID never reaches the gate's decision: the listener closes it.
      assert.equal(await readAll(connectAs(gate, 2)), "");
      assert.equal(gate.refused, 2);
      assert.ok(logs.some((l) => /refused a connection from cid:7: guest CID 7 is not mapped to an agent; add a \[\[vsock\]\] entry/.test(l)));
      assert.ok(logs.some((l) => /CID 2: not a guest's CID/.test(l)));
      // The per-guest cap: CID 5 already has one session; a second is let through, a third refused.
      const second = new Client({ name: "guest", version: "1.0.0" });
      await second.connect(new StreamClientTransport(connectAs(gate, 5)));
      opened.push(second);
      const third = await readAll(connectAs(gate, 5));
      assert.match(third, /too many connections open at once from cid:5 \(2\)/);
      assert.equal(gate.refused, 3);
      for (const c of opened) await c.close();
    } finally {
      gate.close();
      await sessions.close();
    }
    assert.equal(await liveLeases("claude"), 0, "closing the sessions revoked their leases");
    assert.equal(await liveLeases("codex"), 0);
  });

  test("lessor proxy --agent claude: CID 5 reaches the proxy; CID 6 (codex's) and unmapped CIDs get a 403 and never reach it", async () => {
    let proxy: RunProxy | null = null;
    const gate = new GuestGate(
      { kind: "vsock", port: 3128, guests },
      { what: "lessor proxy", agent: "claude", onGuest: (s) => proxy!.accept(s), refuse: (s, msg) => s.write(`HTTP/1.1 403 Forbidden\r\ncontent-length: ${msg.length + 1}\r\nconnection: close\r\n\r\n${msg}\n`), log },
    );
    assert.deepEqual(gate.mappedCids(), [{ cid: 5, agent: "claude" }]);
    proxy = await startRunProxy({ config: structuredClone(DEFAULT_PROXY_CONFIG), api: null, agent: "claude", credentials: [], warn: log, listen: { guests: true }, token: "t".repeat(43) });
    try {
      const ask = async (cid: number): Promise<string> => {
        const s = connectAs(gate, cid);
        const got = readAll(s);
        s.write(`CONNECT api.test.example:${port} HTTP/1.1\r\nHost: api.test.example\r\n\r\n`);
        return got;
      };
      assert.match(await ask(5), /^HTTP\/1\.1 407 /, "the proxy answered (it wants its session token)");
      assert.match(await ask(6), /^HTTP\/1\.1 403 Forbidden[\s\S]*lessor proxy: guest CID 6 is not served here\n$/);
      assert.match(await ask(9), /^HTTP\/1\.1 403 Forbidden[\s\S]*guest CID 9 is not mapped to an agent here/);
      assert.equal(gate.refused, 2);
      assert.ok(logs.some((l) => /cid:6: guest CID 6 is not served here: it is mapped to agent "codex", not "claude"/.test(l)), logs.join("\n"));
    } finally {
      gate.close();
      await proxy.close();
    }
  });

  test("a message over 8 MiB without a newline ends the session (and its leases) instead of growing without bound", async () => {
    const api = inProcessApi(vault);
    const sessions = new StreamSessions({ log, newSession: (identity) => createMcpSession({ api, identity, proxyConfig: structuredClone(DEFAULT_PROXY_CONFIG), log, approvalPage: false }) });
    const gate = new GuestGate({ kind: "vsock", port: 5000, guests }, { what: "lessor mcp", agent: undefined, onGuest: (s, g) => void sessions.serve(s, { agent: g.agent, role: "admin" }, g.principal), log });
    try {
      const client = new Client({ name: "guest", version: "1.0.0" });
      const transport = new StreamClientTransport(connectAs(gate, 5));
      await client.connect(transport);
      assert.equal((await client.callTool({ name: "request_access", arguments: { secret: "github-token" } })).isError, undefined);
      assert.equal(await liveLeases("claude"), 1);
      const closed = new Promise<void>((r) => transport.socket.once("close", () => r()));
      const chunk = Buffer.alloc(1024 * 1024, "a");
      for (let i = 0; i < 9 && !transport.socket.destroyed; i++) transport.socket.write(chunk);
      await closed;
      for (let i = 0; i < 250 && sessions.size > 0; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(sessions.size, 0);
      for (let i = 0; i < 250 && (await liveLeases("claude")) > 0; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(await liveLeases("claude"), 0, "its lease was revoked");
    } finally {
      gate.close();
      await sessions.close();
    }
  });

  test("a gate that would serve no CID refuses to start, naming why", () => {
    assert.throws(
      () => new GuestGate({ kind: "vsock", port: 3128, guests }, { what: "lessor proxy", agent: "nobody", onGuest: () => {}, log }),
      /--vsock-port 3128: no \[\[vsock\]\] entry in lessor\.toml maps a guest CID to agent "nobody" \(CID 5: it is mapped to agent "claude", not "nobody"; CID 6: .*\)/,
    );
    assert.throws(() => new GuestGate({ kind: "vsock", port: 3128, guests: [] }, { what: "lessor mcp", agent: undefined, onGuest: () => {}, log }), /no \[\[vsock\]\] entry/);
  });
});
