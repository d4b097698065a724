/**
 * The injecting forward proxy (src/proxy/forward.ts) with real clients (curl, node https, raw CONNECT)
 * against real local HTTPS upstreams that record what they receive. Everything is on loopback: names
 * resolve through an injected table (never a real lookup), the guard allows 127.0.0.0/8 for this test
 * only, and the connect step is instrumented so a refused target fails the test if it ever reaches it.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import * as https from "node:https";
import type { IncomingHttpHeaders } from "node:http";
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Socket } from "node:net";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import * as tls from "node:tls";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { LocalCa } from "../src/proxy/ca.js";
import { fixedIntercept, type Egress, type EgressDecision } from "../src/proxy/egress.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { ProxyRefusal } from "../src/proxy/refusal.js";
import { ScrubPatterns } from "../src/proxy/scrub.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { tempDir } from "./helpers.js";
import { loopbackOnly, tableResolver } from "./proxy-harness.js";

const run = promisify(execFile);
const SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8";
const PLACEHOLDER = makePlaceholder(SECRET);

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

/** A local HTTPS upstream with its own CA; records each request and how many TLS connections it took. */
async function upstream(names: string[]): Promise<{ port: number; ca: LocalCa; seen: Seen[]; connections: () => number; close: () => Promise<void> }> {
  const ca = LocalCa.create({ permitted: names });
  const seen: Seen[] = [];
  let connections = 0;
  const server = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor(names[0]!) }, (req, res) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers });
    req.resume();
    req.on("end", () => {
      if (req.url === "/echo") {
        // The secret it received, cut across writes, so the scrubber must hold back a prefix.
        const auth = String(req.headers.authorization ?? "");
        res.writeHead(200, { "content-type": "text/plain" });
        res.write("you sent: " + auth.slice(0, 15));
        setTimeout(() => res.end(auth.slice(15) + "\n"), 20);
      } else if (req.url === "/echo-len") {
        const body = "len: " + String(req.headers.authorization ?? "");
        res.writeHead(200, { "content-type": "text/plain", "content-length": Buffer.byteLength(body) });
        res.end(body);
      } else if (req.url === "/echo-gzip") {
        const body = gzipSync("gz: " + String(req.headers.authorization ?? ""));
        res.writeHead(200, { "content-type": "text/plain", "content-encoding": "gzip", "content-length": body.length });
        res.end(body);
      } else {
        res.writeHead(200, { "content-type": "application/json", "x-upstream": "yes" });
        res.end(JSON.stringify({ path: req.url, ok: true }));
      }
    });
  });
  server.on("secureConnection", () => connections++);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as AddressInfo).port,
    ca,
    seen,
    connections: () => connections,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** Reads a CONNECT answer by hand: status line, headers, and (for a refusal) the body to the end. */
async function rawConnect(proxyPort: number, target: string): Promise<{ status: number; head: string; body: string; socket: Socket }> {
  const socket = netConnect(proxyPort, "127.0.0.1");
  socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  let buf = Buffer.alloc(0);
  const head = await new Promise<string>((resolve, reject) => {
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const i = buf.indexOf("\r\n\r\n");
      if (i >= 0) {
        socket.off("data", onData);
        socket.pause(); // removing the listener does not stop the flow: the rest would be lost
        const rest = buf.subarray(i + 4);
        if (rest.length > 0) socket.unshift(rest);
        resolve(buf.subarray(0, i).toString("latin1"));
      }
    };
    socket.on("data", onData);
    socket.once("error", reject);
    socket.once("end", () => reject(new Error("proxy closed before answering: " + buf.toString())));
  });
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1]);
  let body = "";
  if (status !== 200) {
    const chunks: Buffer[] = [];
    for await (const c of socket) chunks.push(c as Buffer);
    body = Buffer.concat(chunks).toString("utf8");
  }
  return { status, head, body, socket };
}

/** A node https agent whose connections are CONNECT tunnels through the proxy. */
function tunnelledAgent(proxyPort: number, caPem: string, counter: { connects: number }): https.Agent {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  (agent as unknown as { createConnection: unknown }).createConnection = (
    opts: { host: string; port: number; servername?: string },
    done: (err: Error | null, s?: tls.TLSSocket) => void,
  ) => {
    counter.connects++;
    rawConnect(proxyPort, `${opts.host}:${opts.port}`).then(
      ({ status, body, socket }) => {
        if (status !== 200) return done(new Error(`CONNECT answered ${status}: ${body}`));
        const s = tls.connect({ socket, servername: opts.host, ca: caPem });
        s.once("secureConnect", () => done(null, s));
        s.once("error", (e) => done(e));
      },
      (e: Error) => done(e),
    );
    return undefined;
  };
  return agent;
}

function get(agent: https.Agent, host: string, port: number, path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request({ host, port, path, agent, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

// --- the rig ------------------------------------------------------------------------------------

const good = await upstream(["api.test.example"]);
const bad = await upstream(["bad.test.example"]); // its CA is never given to the proxy
const echo = createNetServer((s) => s.pipe(s));
await new Promise<void>((r) => echo.listen(0, "127.0.0.1", r));
const echoPort = (echo.address() as AddressInfo).port;

const TABLE: Record<string, string> = {
  "api.test.example": "127.0.0.1",
  "bad.test.example": "127.0.0.1",
  "tunnel.test.example": "127.0.0.1",
  "private.test.example": "10.0.0.1",
};
const guard = new SsrfGuard({
  ports: [good.port, bad.port, echoPort, 443],
  allow: ["127.0.0.0/8"],
  resolve: tableResolver(TABLE),
});

/** The instrumented connect step: only loopback is ever reached; anything else fails the test. */
const connects: ConnectTo[] = [];
const connect = loopbackOnly(connects);

/** What the agent sent to the proxy inside the tunnel, before injection. */
const beforeInjection: IncomingHttpHeaders[] = [];
const inject = (h: IncomingHttpHeaders): IncomingHttpHeaders => {
  beforeInjection.push(h);
  return { ...h, authorization: `Bearer ${SECRET}` };
};
const decisions: string[] = [];
const egress: Egress = {
  decide(host: string, port: number): EgressDecision {
    decisions.push(`${host}:${port}`);
    if (host === "api.test.example" || host === "bad.test.example" || host === "private.test.example")
      return fixedIntercept(inject, new ScrubPatterns([{ value: SECRET, placeholder: PLACEHOLDER }]));
    // The metadata address is tunnelled by this policy: the guard must still refuse it.
    if (host === "tunnel.test.example" || host === "169.254.169.254") return { kind: "tunnel" };
    return {
      kind: "refuse",
      refusal: new ProxyRefusal({ reason: "not_granted", host, port }, `no grant of this agent covers ${host}; ask the owner for one`),
    };
  },
};

const proxyCa = LocalCa.create({ permitted: ["api.test.example", "bad.test.example", "private.test.example"] });
const proxy = new ForwardProxy({ egress, ca: proxyCa, guard, upstreamCa: good.ca.certPem, connect, maxHeaderSize: 8192 });
const proxyPort = await proxy.listen();

after(async () => {
  await proxy.close();
  await good.close();
  await bad.close();
  await new Promise<void>((r) => echo.close(() => r()));
});

// --- the tests ----------------------------------------------------------------------------------

test("listening on a port another program holds is refused as a setting (config_invalid, naming the address), not an internal error", async () => {
  const other = new ForwardProxy({ egress, ca: proxyCa, guard, upstreamCa: good.ca.certPem, connect });
  await assert.rejects(other.listen(proxyPort), (e: Error & { code?: string }) => e.code === "config_invalid" && e.message.includes(`127.0.0.1:${proxyPort} (EADDRINUSE)`));
});

test("curl through the proxy gets the upstream's answer; the upstream saw the injected credential, curl never sent it", async () => {
  const dir = tempDir("lessor-proxy-");
  const caFile = join(dir, "ca.pem");
  writeFileSync(caFile, proxyCa.certPem);
  const before = good.seen.length;
  const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dir };
  const { stdout } = await run(
    "curl",
    ["-sS", "--fail", "--noproxy", "", "-x", `http://127.0.0.1:${proxyPort}`, "--cacert", caFile, `https://api.test.example:${good.port}/path?q=1`],
    { env },
  );
  assert.deepEqual(JSON.parse(stdout), { path: "/path?q=1", ok: true });
  const got = good.seen.slice(before);
  assert.equal(got.length, 1);
  assert.equal(got[0]!.headers.authorization, `Bearer ${SECRET}`);
  assert.equal(got[0]!.headers.host, `api.test.example:${good.port}`);
  assert.equal(got[0]!.headers["proxy-connection"], undefined);
  const sent = beforeInjection[beforeInjection.length - 1]!;
  assert.equal(sent.authorization, undefined, "curl sent no credential");
  assert.match(String(sent["user-agent"]), /curl/);
});

test("a node https client keeps one tunnel alive for two requests, each injected", async () => {
  const counter = { connects: 0 };
  const agent = tunnelledAgent(proxyPort, proxyCa.certPem, counter);
  const before = good.seen.length;
  const upBefore = good.connections();
  const a = await get(agent, "api.test.example", good.port, "/one");
  const b = await get(agent, "api.test.example", good.port, "/two");
  agent.destroy();
  assert.equal(a.status, 200);
  assert.equal(a.headers["x-upstream"], "yes");
  assert.equal(JSON.parse(b.body).path, "/two");
  assert.equal(counter.connects, 1, "one CONNECT for both requests");
  assert.equal(good.connections() - upBefore, 1, "one upstream connection for both requests");
  const got = good.seen.slice(before);
  assert.deepEqual(
    got.map((s) => [s.url, s.headers.authorization]),
    [
      ["/one", `Bearer ${SECRET}`],
      ["/two", `Bearer ${SECRET}`],
    ],
  );
});

test("a host no grant covers is refused with 403 and a problem+json body naming the reason", async () => {
  const n = connects.length;
  const r = await rawConnect(proxyPort, "elsewhere.test.example:443");
  assert.equal(r.status, 403);
  assert.match(r.head, /content-type: application\/problem\+json/i);
  const p = JSON.parse(r.body);
  assert.equal(p.reason, "not_granted");
  assert.equal(p.status, 403);
  assert.equal(p.host, "elsewhere.test.example");
  assert.match(p.detail, /no grant/);
  assert.equal(connects.length, n, "no upstream connection");
});

test("the policy sees the canonical host", async () => {
  const r = await rawConnect(proxyPort, "Elsewhere.TEST.example.:443");
  assert.equal(r.status, 403);
  assert.equal(decisions[decisions.length - 1], "elsewhere.test.example:443");
});

test("a CONNECT to a port not on the allow-list is refused before any connection", async () => {
  const n = connects.length;
  const r = await rawConnect(proxyPort, "api.test.example:8443");
  assert.equal(r.status, 403);
  const p = JSON.parse(r.body);
  assert.equal(p.reason, "port");
  assert.equal(connects.length, n);
});

test("a host resolving to a refused address is refused; the connect step is never reached", async () => {
  const n = connects.length;
  const r = await rawConnect(proxyPort, "private.test.example:443");
  assert.equal(r.status, 403);
  const p = JSON.parse(r.body);
  assert.equal(p.reason, "private");
  assert.equal(p.address, "10.0.0.1");
  const m = await rawConnect(proxyPort, "169.254.169.254:443");
  assert.equal(m.status, 403);
  assert.equal(JSON.parse(m.body).reason, "metadata");
  const u = await rawConnect(proxyPort, "unknown.test.example:443");
  assert.equal(u.status, 403, "the policy refuses first"); // not granted: never looked up
  assert.equal(connects.length, n, "connect never reached for a refused target");
});

test("a malformed CONNECT target gets 400", async () => {
  const r = await rawConnect(proxyPort, "api.test.example");
  assert.equal(r.status, 400);
});

test("a tunnelled host passes bytes untouched both ways", async () => {
  const r = await rawConnect(proxyPort, `tunnel.test.example:${echoPort}`);
  assert.equal(r.status, 200);
  const payload = Buffer.concat([Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), randomBytes(64 * 1024)]);
  const back: Buffer[] = [];
  let got = 0;
  await new Promise<void>((resolve) => {
    r.socket.on("data", (d: Buffer) => {
      back.push(d);
      got += d.length;
      if (got >= payload.length) resolve();
    });
    r.socket.resume(); // rawConnect paused it
    r.socket.write(payload);
  });
  r.socket.destroy();
  assert.ok(Buffer.concat(back).equals(payload), "the echo came back byte for byte (no injection, no change)");
});

test("an upstream whose certificate does not verify gives 502 and gets no request", async () => {
  const counter = { connects: 0 };
  const agent = tunnelledAgent(proxyPort, proxyCa.certPem, counter);
  const r = await get(agent, "bad.test.example", bad.port, "/x");
  agent.destroy();
  assert.equal(r.status, 502);
  assert.equal(r.headers["content-type"], "application/problem+json");
  assert.match(JSON.parse(r.body).detail, /bad\.test\.example/);
  assert.equal(bad.seen.length, 0, "no request reached the unverified upstream");
});

test("a request inside the tunnel for another host is refused (421)", async () => {
  const counter = { connects: 0 };
  const agent = tunnelledAgent(proxyPort, proxyCa.certPem, counter);
  const before = good.seen.length;
  const r = await get(agent, "api.test.example", good.port, "/x", { host: "evil.test.example" });
  agent.destroy();
  assert.equal(r.status, 421);
  assert.equal(good.seen.length, before);
});

test("a request head over the size cap is refused (431) and not forwarded", async () => {
  const counter = { connects: 0 };
  const agent = tunnelledAgent(proxyPort, proxyCa.certPem, counter);
  const before = good.seen.length;
  const r = await get(agent, "api.test.example", good.port, "/big", { "x-big": "a".repeat(10_000) }).catch((e: Error) => e);
  agent.destroy();
  if (r instanceof Error) assert.match(r.message, /socket hang up|ECONNRESET/);
  else assert.equal(r.status, 431);
  assert.equal(good.seen.length, before);
});

test("an upstream echoing the secret returns the placeholder (split across writes, and gzip)", async () => {
  const counter = { connects: 0 };
  const agent = tunnelledAgent(proxyPort, proxyCa.certPem, counter);
  const plain = await get(agent, "api.test.example", good.port, "/echo");
  const gz = await get(agent, "api.test.example", good.port, "/echo-gzip");
  const len = await get(agent, "api.test.example", good.port, "/echo-len");
  agent.destroy();
  // The placeholder has the value's length: an identity body keeps its Content-Length (no chunking).
  assert.equal(len.body, `len: Bearer ${PLACEHOLDER}`);
  assert.equal(len.headers["content-length"], String(Buffer.byteLength(len.body)));
  assert.equal(plain.body, `you sent: Bearer ${PLACEHOLDER}\n`);
  assert.ok(!plain.body.includes(SECRET));
  assert.equal(gz.body, `gz: Bearer ${PLACEHOLDER}`);
  assert.equal(gz.headers["content-encoding"], undefined);
});

test("a client whose SNI names another host than the CONNECT is cut off; nothing is forwarded", async () => {
  const before = good.seen.length;
  const r = await rawConnect(proxyPort, `api.test.example:${good.port}`);
  assert.equal(r.status, 200);
  r.socket.resume();
  // private.test.example is a name the proxy's CA may certify, but not this tunnel's host.
  const s = tls.connect({ socket: r.socket, servername: "private.test.example", ca: proxyCa.certPem });
  const outcome = await new Promise<string>((resolve) => {
    s.on("error", (e) => resolve(`error ${e.message}`));
    s.on("close", () => resolve("closed"));
    s.on("data", (d: Buffer) => resolve(`data ${d.toString()}`));
    s.once("secureConnect", () => s.write(`GET /sni HTTP/1.1\r\nHost: api.test.example:${good.port}\r\n\r\n`));
  });
  s.destroy();
  assert.doesNotMatch(outcome, /^data/, "no answer came back");
  assert.equal(good.seen.length, before, "no request forwarded");
});

test("a client that does not finish its request head in time is cut off (proxy and inside a tunnel)", { timeout: 10_000 }, async () => {
  const slow = new ForwardProxy({ egress, ca: proxyCa, guard, upstreamCa: good.ca.certPem, connect, headersTimeoutMs: 300 });
  const port = await slow.listen();
  try {
    const t0 = Date.now();
    const raw = netConnect(port, "127.0.0.1");
    raw.write("CONNECT api.test.example:443 HTTP/1.1\r\n"); // never finished
    raw.resume();
    await new Promise<void>((r) => raw.once("close", () => r()));
    assert.ok(Date.now() - t0 < 5000, "the proxy closed the half-sent CONNECT");

    const before = good.seen.length;
    const r = await rawConnect(port, `api.test.example:${good.port}`);
    assert.equal(r.status, 200);
    r.socket.resume();
    const s = tls.connect({ socket: r.socket, servername: "api.test.example", ca: proxyCa.certPem });
    await new Promise<void>((res) => s.once("secureConnect", () => res()));
    const t1 = Date.now();
    s.write("GET /slow HTTP/1.1\r\nHost: api.test.example\r\n"); // never finished
    s.resume();
    await new Promise<void>((res) => s.once("close", () => res()));
    assert.ok(Date.now() - t1 < 5000, "the tunnel was closed");
    assert.equal(good.seen.length, before);
  } finally {
    await slow.close();
  }
});
