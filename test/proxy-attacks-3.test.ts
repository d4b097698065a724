/**
 * The injecting proxy attacked from both ends, on its less-travelled paths: a hostile covered upstream
 * answering what Node's HTTP client accepts but Node's HTTP server will not write (a control byte in
 * the reason phrase, a status below 100), over HTTP/1.1, a WebSocket handshake and plain http; a
 * covered upstream reflecting the injected credential into a response header's *name* (HTTP/1.1,
 * the WebSocket 101 head, HTTP/2 trailers); and informational (1xx) answers carrying it.
 *
 * Two rigs, as test/standalone-proxy-attacks.test.ts has them:
 * - the built CLI `lessor proxy` as a child process (a crash must not take the test runner with it),
 *   its names mapped to 127.0.0.1 by `[proxy] hosts` and `[proxy] allow` opening 127.0.0.1 only;
 * - in process: ForwardProxy + LeaseEgress over a real vault, a table resolver and the instrumented
 *   `loopbackOnly` connect step.
 *
 * Every upstream is a loopback server this file creates; nothing else is ever reached.
 */
import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import { connect as netConnect, createServer as netServer, type AddressInfo, type Server } from "node:net";
import { dirname, join } from "node:path";
import * as tls from "node:tls";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { cliHome, envOf, liveLeases, seedHome, startCli, type RunningCli } from "./cli-harness.js";
import { grant, makeVault } from "./helpers.js";
import { h2Get as h2GetOver, headsServer, loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";

const HOST = "api.pa3.example"; // HTTPS upstream (hostile), covered by the lease
const H2HOST = "h2.pa3.example"; // HTTP/2 upstream (hostile), covered by the lease
const PLAIN = "plain.pa3.example"; // plain-HTTP upstream, covered by nothing (open egress only)
// Lower-case hex, as many API keys are: a header name keeps it whole even once lower-cased.
const CANARY = "sk-" + randomBytes(20).toString("hex");

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const b64 = (s: string): string => Buffer.from(s).toString("base64");

// --- hostile upstreams on 127.0.0.1 ------------------------------------------------------------------

const upCa = LocalCa.create({ permitted: [HOST, H2HOST] });

/** Request heads as the HTTPS upstream received them. */
const heads: string[] = [];

/**
 * What the hostile HTTPS upstream answers to a request head (raw bytes, latin1). It reads the
 * Authorization header the proxy injected, so its answers can carry the credential.
 */
function hostileAnswer(head: string): string {
  const path = /^[A-Z]+ (\S+)/.exec(head)?.[1] ?? "/";
  const auth = /\r\nauthorization: *Bearer ([^\r\n]*)/i.exec(head)?.[1] ?? "";
  const body = (s: string): string => `Content-Length: ${Buffer.byteLength(s)}\r\nConnection: close\r\n\r\n${s}`;
  switch (path) {
    case "/ok/reason-ctl":
      return "HTTP/1.1 200 O\x01K\r\n" + body("hi");
    case "/ok/status-000":
      return "HTTP/1.1 000 OK\r\n" + body("hi");
    case "/ok/ws-refused":
      // A WebSocket handshake the upstream does not take: relayed as a response.
      return "HTTP/1.1 403 No\x01pe\r\n" + body("no");
    case "/ok/name-echo":
      // The credential reflected into a header name (a debugging echo, a reflected "header: 1" map).
      return `HTTP/1.1 200 OK\r\nX-Seen-${auth}: 1\r\n` + body("ok");
    case "/ok/ws-name-echo":
      return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        `Sec-WebSocket-Accept: ${/\r\nsec-websocket-key: *([^\r\n]*)/i.exec(head)?.[1] ?? ""}\r\nX-Seen-${auth}: 1\r\n\r\n`
      );
    case "/ok/early-hints":
      // 103 Early Hints and a 100 carrying the credential, before the real answer.
      return `HTTP/1.1 103 Early Hints\r\nLink: </s?k=${auth}>; rel=preload\r\n\r\nHTTP/1.1 100 Continue\r\nX-Echo: ${auth}\r\n\r\nHTTP/1.1 200 OK\r\n` + body("fine");
    default:
      return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + body("fine");
  }
}

const upTls = headsServer(upCa, (head, s) => {
  heads.push(head);
  const answer = hostileAnswer(head);
  if (answer.startsWith("HTTP/1.1 101")) s.write(answer, "latin1");
  else s.end(answer, "latin1");
});

/** The plain-HTTP server (not covered, open egress): answers with a control byte in its reason phrase. */
const upPlain: Server = netServer((s) => {
  s.on("error", () => {});
  s.once("data", () => s.end("HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi", "latin1"));
});

/** The hostile HTTP/2 upstream: reflects the credential into a trailer's name and a 103's header. */
const upH2 = http2.createSecureServer({ SNICallback: upCa.sniCallback, allowHTTP1: false });
upH2.on("stream", (stream, h) => {
  stream.on("error", () => {});
  const auth = String(h.authorization ?? "").replace(/^Bearer /, "");
  stream.resume();
  stream.on("end", () => {
    if (stream.closed) return;
    if (h[":path"] === "/ok/h2-early") stream.additionalHeaders({ ":status": 103, link: `</s?k=${auth}>; rel=preload`, "x-echo": auth });
    stream.respond({ ":status": 200, "content-type": "text/plain" }, { waitForTrailers: true });
    stream.on("wantTrailers", () => stream.sendTrailers(h[":path"] === "/ok/h2-trailer-name" ? { [`x-seen-${auth.toLowerCase()}`]: "1" } : { "x-done": "1" }));
    stream.end("ok");
  });
});

await new Promise<void>((r) => upTls.listen(0, "127.0.0.1", r));
await new Promise<void>((r) => upPlain.listen(0, "127.0.0.1", r));
await new Promise<void>((r) => upH2.listen(0, "127.0.0.1", r));
const tlsPort = (upTls.address() as AddressInfo).port;
const plainPort = (upPlain.address() as AddressInfo).port;
const h2Port = (upH2.address() as AddressInfo).port;

after(async () => {
  await new Promise<void>((r) => upTls.close(() => r()));
  await new Promise<void>((r) => upPlain.close(() => r()));
  await new Promise<void>((r) => upH2.close(() => r()));
});

// --- raw clients -------------------------------------------------------------------------------------

/** One raw HTTP/1.1 exchange in a fresh tunnel to HOST; the answer as latin1 text. */
async function h1(port: number, request: string, auth?: string, ms = 3000): Promise<string> {
  const s = await openTunnel(port, HOST, tlsPort, { proxyAuth: auth });
  s.write(request);
  return readAll(s, ms);
}

const get = (path: string, placeholder: string, extra = ""): string =>
  `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${placeholder}\r\n${extra}Connection: close\r\n\r\n`;
const wsHandshake = (path: string, placeholder: string): string =>
  `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${placeholder}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
  `Sec-WebSocket-Key: ${b64(randomBytes(16).toString("latin1"))}\r\nSec-WebSocket-Version: 13\r\n\r\n`;

// =====================================================================================================
// The built CLI: lessor proxy, fed answers Node's server will not write
// =====================================================================================================

const CLI_POLICY = `
[[rule]]
name = "api"
effect = "allow"
agents = ["ca", "cb", "cc", "cd", "ce"]
secrets = ["api-key"]
domains = ["${HOST}"]
`;

/** `lessor proxy` for `agent` (its credential API_KEY), once it says it serves; the test fails if it does not. */
async function startLessorProxy(home: string, agent: string, args: string[]): Promise<RunningCli> {
  const env = { PATH: "/usr/bin:/bin", HOME: dirname(home), LESSOR_HOME: home, NO_COLOR: "1", API_KEY: "$S:api-key" };
  const c = await startCli(["proxy", "--agent", agent, "--domain", HOST, ...args], /lessor: proxy for agent/, env, { killAfterMs: Infinity });
  assert.match(c.stderr(), /lessor: proxy for agent/, `lessor proxy did not start: ${c.stderr()}`);
  return c;
}

describe("the built CLI: lessor proxy and answers Node's HTTP server refuses to write", () => {
  let home = "";
  before(async () => {
    home = await cliHome();
    writeFileSync(join(dirname(home), "upstream-ca.pem"), upCa.certPem);
    const base = readFileSync(join(home, "lessor.toml"), "utf8");
    writeFileSync(
      join(home, "lessor.toml"),
      `${base}\n[proxy]\nports = [${tlsPort}, ${plainPort}]\nallow = ["127.0.0.1"]\nhosts = { "${HOST}" = "127.0.0.1", "${PLAIN}" = "127.0.0.1" }\nupstream_ca = "${join(dirname(home), "upstream-ca.pem")}"\n`,
      { mode: 0o600 },
    );
    await seedHome(home, CLI_POLICY, [{ name: "api-key", value: CANARY, kind: "opaque" }]);
  });

  /**
   * Starts `lessor proxy`, sends `attack` (given the proxy port, a Proxy-Authorization value and the
   * placeholder), then checks that the proxy still serves an ordinary request and, on SIGTERM, exits 0
   * with its leases revoked. Returns what went wrong, if anything ("" when it held).
   */
  async function survives(agent: string, args: string[], attack: (port: number, auth: string, placeholder: string) => Promise<string>): Promise<string> {
    const p = await startLessorProxy(home, agent, args);
    try {
      const env = envOf(p.stdout());
      const m = /^http:\/\/lessor:([A-Za-z0-9_-]+)@127\.0\.0\.1:(\d+)$/.exec(env["HTTPS_PROXY"] ?? "");
      assert.ok(m, `HTTPS_PROXY: ${env["HTTPS_PROXY"]}`);
      const auth = "Basic " + b64(`lessor:${m[1]!}`);
      const port = Number(m[2]);
      const placeholder = env["API_KEY"]!;
      const answer = await attack(port, auth, placeholder).catch((e: Error) => `(attack failed: ${e.message})`);
      assert.ok(!answer.includes(CANARY), "the credential reached the agent");
      await delay(200);
      if (p.child.exitCode !== null || p.child.signalCode !== null) {
        const live = await liveLeases(home, agent);
        const why = /Error[^\n]*/.exec(p.stderr())?.[0] ?? "no message";
        return `the proxy died (exit ${p.child.exitCode}, ${why}), leaving ${live} live lease(s) of agent ${agent}; the agent got: ${JSON.stringify(answer.slice(0, 80))}`;
      }
      const next = await h1(port, get("/ok/next", placeholder), auth).catch((e: Error) => `(${e.message})`);
      if (!/^HTTP\/1\.1 200 /.test(next)) return `the next request was not served: ${JSON.stringify(next.slice(0, 80))}`;
      p.child.kill("SIGTERM");
      const { code } = await p.exited;
      const live = await liveLeases(home, agent);
      if (code !== 0 || live !== 0) return `after SIGTERM: exit ${code}, ${live} live lease(s)`;
      return "";
    } finally {
      assert.ok(!p.stdout().includes(CANARY) && !p.stderr().includes(CANARY), "the credential is in lessor proxy's output");
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
    }
  }

  test(
    "a covered upstream answering with a control byte in its reason phrase, or status 000, does not kill lessor proxy: the byte is dropped, the status answered 502 (HTTP/1.1 and a refused WebSocket handshake)",
    { timeout: 60_000 },
    async () => {
      const broken: string[] = [];
      const cases: [string, string, (port: number, auth: string, ph: string) => Promise<string>][] = [
        ["reason phrase O\\x01K (HTTP/1.1)", "ca", (port, auth, ph) => h1(port, get("/ok/reason-ctl", ph), auth)],
        ["status 000 (HTTP/1.1)", "cb", (port, auth, ph) => h1(port, get("/ok/status-000", ph), auth)],
        ["a WebSocket handshake refused with reason No\\x01pe", "cc", (port, auth, ph) => h1(port, wsHandshake("/ok/ws-refused", ph), auth)],
      ];
      for (const [what, agent, attack] of cases) {
        const wrong = await survives(agent, [], attack);
        if (wrong !== "") broken.push(`${what}: ${wrong}`);
      }
      assert.deepEqual(broken, [], "the proxy must answer 502 (or cut the one exchange) and go on serving; it must never die with live leases");
    },
  );

  test(
    "under open egress, a plain http:// server no lease covers cannot kill lessor proxy with a control byte in its reason phrase",
    { timeout: 30_000 },
    async () => {
      const wrong = await survives("cd", ["--egress", "open"], async (port, auth) => {
        const s = netConnect(port, "127.0.0.1");
        s.on("error", () => {});
        s.write(`GET http://${PLAIN}:${plainPort}/ HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\nProxy-Authorization: ${auth}\r\nConnection: close\r\n\r\n`);
        return readAll(s, 2000);
      });
      assert.equal(wrong, "", "the proxy must answer 502 and go on serving");
    },
  );
});

// =====================================================================================================
// In process: the credential reflected where the scrubber does not look
// =====================================================================================================

const POLICY = grant("api", ["bot"], ["key"], [HOST, H2HOST], 'paths = ["/ok/"]');

interface Rig {
  port: number;
  placeholder: string;
  connects: ConnectTo[];
  warns: string[];
  close(): Promise<void>;
}

async function rig(): Promise<Rig> {
  const { vault } = await makeVault({ policy: POLICY });
  const admin = vault.admin();
  await admin.storeSecret({ name: "key", value: CANARY });
  const lease = await admin.requestLease({ agent: "bot", secret: "key", domains: [HOST, H2HOST] });
  const creds: ProxyCredential[] = [{ lease, secret: "global/key", placeholder: makePlaceholder(CANARY), value: CANARY, rule: { mode: "placeholder" } }];
  const warns: string[] = [];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: (l) => warns.push(l) });
  const guard = new SsrfGuard({ ports: [tlsPort, h2Port], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1", [H2HOST]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST, H2HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly(connects) });
  const port = await proxy.listen();
  return {
    port,
    placeholder: creds[0]!.placeholder,
    connects,
    warns,
    close: async () => {
      await proxy.close();
      await egress.close();
    },
  };
}

/**
 * One HTTP/2 request in a fresh tunnel (to H2HOST, an h2 upstream, unless `host` says HOST, an
 * HTTP/1.1-only one): everything the agent gets (informational heads too), as JSON.
 */
async function h2Get(r: Rig, path: string, host = H2HOST): Promise<string> {
  const s = await openTunnel(r.port, host, host === HOST ? tlsPort : h2Port, { alpn: "h2" });
  return h2GetOver(s, host, path, { authorization: `Bearer ${r.placeholder}` }, { allHeads: true });
}

describe("in process: a covered upstream reflecting the injected credential", () => {
  test("reflected into a response header's name, the credential is masked (HTTP/1.1, the WebSocket 101 head, HTTP/2 trailers)", { timeout: 20_000 }, async () => {
    const r = await rig();
    try {
      const leaks: string[] = [];
      const plain = await h1(r.port, get("/ok/name-echo", r.placeholder));
      assert.match(plain, /^HTTP\/1\.1 200 /, plain.slice(0, 200));
      assert.ok(heads.some((h) => h.includes(`Bearer ${CANARY}`)), "the upstream got the credential (the proxy injected it)");
      if (plain.toLowerCase().includes(CANARY)) leaks.push("HTTP/1.1 response header name");

      const ws = await h1(r.port, wsHandshake("/ok/ws-name-echo", r.placeholder), undefined, 1500);
      assert.match(ws, /^HTTP\/1\.1 101 /, ws.slice(0, 200));
      if (ws.toLowerCase().includes(CANARY)) leaks.push("WebSocket 101 header name");

      const h2 = await h2Get(r, "/ok/h2-trailer-name");
      if (h2.toLowerCase().includes(CANARY)) leaks.push("HTTP/2 trailer name");

      assert.deepEqual(leaks, [], "header names must be scrubbed like header values: the agent must never get the credential");
      assert.ok(r.connects.every((c) => c.host === "127.0.0.1"));
    } finally {
      await r.close();
    }
  });

  test("informational answers (103 Early Hints, 100 Continue) that carry the credential are not passed on unscrubbed (HTTP/1.1 and HTTP/2 upstreams)", { timeout: 20_000 }, async () => {
    const r = await rig();
    try {
      const plain = await h1(r.port, get("/ok/early-hints", r.placeholder));
      assert.match(plain, /HTTP\/1\.1 200 /, plain.slice(0, 300));
      assert.ok(!plain.includes(CANARY), `the credential in a relayed 1xx: ${plain.slice(0, 300)}`);
      const h2 = await h2Get(r, "/ok/h2-early");
      assert.match(h2, /"ok"/, h2);
      assert.ok(!h2.includes(CANARY), `the credential in a relayed h2 1xx: ${h2.slice(0, 300)}`);
      assert.ok(!r.warns.join("\n").includes(CANARY));
    } finally {
      await r.close();
    }
  });

  test("held: for an HTTP/2 client, an HTTP/1.1 upstream's control byte in its reason phrase is dropped (h2 has none), its status 000 crashes nothing; the proxy serves on", { timeout: 20_000 }, async () => {
    const r = await rig();
    try {
      const reason = await h2Get(r, "/ok/reason-ctl", HOST);
      assert.match(reason, /":status":200.*"hi"/, reason.slice(0, 200));
      // Node's h2 respond() takes :status 0 as "unset" (200): odd, but the exchange is the upstream's own.
      const zero = await h2Get(r, "/ok/status-000", HOST);
      assert.match(zero, /":status":(200|502)/, zero.slice(0, 200));
      const ok = await h2Get(r, "/ok/after", HOST);
      assert.match(ok, /":status":200/, ok.slice(0, 200));
    } finally {
      await r.close();
    }
  });
});
