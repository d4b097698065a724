/**
 * HTTP/2 through the injecting forward proxy (src/proxy/h2.ts, src/proxy/upstream.ts): node:http2
 * clients and curl --http2 inside CONNECT tunnels, against real local upstreams that speak h2 (and one
 * that speaks HTTP/1.1 only) and record what they receive. Everything is on loopback: names resolve
 * through an injected table, the guard allows 127.0.0.0/8 for this test only, and the connect step is
 * instrumented so any other address fails the test.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import * as https from "node:https";
import type { IncomingHttpHeaders } from "node:http";
import { connect as netConnect, type AddressInfo, type Socket } from "node:net";
import { join } from "node:path";
import * as tls from "node:tls";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { LocalCa } from "../src/proxy/ca.js";
import type { Egress, EgressDecision, Prepared, ProxiedRequest, RequestOutcome, TunnelHandle } from "../src/proxy/egress.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { ProxyRefusal } from "../src/proxy/refusal.js";
import { ScrubPatterns } from "../src/proxy/scrub.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { tempDir } from "./helpers.js";
import { inTime, loopbackOnly, tableResolver } from "./proxy-harness.js";

const run = promisify(execFile);
const SECRET = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2";
const PLACEHOLDER = makePlaceholder(SECRET);

interface Seen {
  protocol: string;
  method: string;
  path: string;
  authority: string | undefined;
  headers: IncomingHttpHeaders;
}

const within = inTime;

// --- upstreams ----------------------------------------------------------------------------------

interface Upstream {
  port: number;
  ca: LocalCa;
  seen: Seen[];
  connections: () => number;
  /** Streams of /slow that the upstream saw closed. */
  slowClosed: () => number;
  close: () => Promise<void>;
}

/** Request trailers the h2 upstreams received. */
const requestTrailers: IncomingHttpHeaders[] = [];

/** An HTTP/2-only upstream (ALPN h2) with its own CA. */
async function h2Upstream(names: string[]): Promise<Upstream> {
  const ca = LocalCa.create({ permitted: names });
  const seen: Seen[] = [];
  let connections = 0;
  let slowClosed = 0;
  const server = http2.createSecureServer({ SNICallback: ca.sniCallback, allowHTTP1: false });
  server.on("secureConnection", () => connections++);
  server.on("stream", (stream, h) => {
    const path = String(h[":path"]);
    const headers: IncomingHttpHeaders = {};
    for (const [k, v] of Object.entries(h)) if (!k.startsWith(":")) headers[k] = v as string;
    seen.push({ protocol: stream.session?.alpnProtocol ?? "?", method: String(h[":method"]), path, authority: h[":authority"], headers });
    stream.on("error", () => {});
    if (path === "/grpc") {
      // Answers each message as it arrives, then ends with gRPC's status in trailers.
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("data", (d: Buffer) => stream.write(`ack:${d.toString()};`));
      stream.on("end", () => stream.end());
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0", "grpc-message": "fine" }));
    } else if (path === "/req-trailers") {
      stream.resume();
      stream.on("trailers", (tr: IncomingHttpHeaders) => requestTrailers.push(tr));
      stream.on("end", () => {
        stream.respond({ ":status": 200 });
        stream.end("ok");
      });
    } else if (path === "/trailers-only") {
      stream.resume();
      stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "5", "grpc-message": "not found" }, { endStream: true });
    } else if (path === "/echo") {
      // The secret it received, cut across writes, so the scrubber must hold back a prefix.
      stream.resume();
      const auth = String(h.authorization ?? "");
      stream.respond({ ":status": 200, "content-type": "text/plain", "content-length": String(11 + auth.length) });
      stream.write("you sent: " + auth.slice(0, 15));
      setTimeout(() => stream.end(auth.slice(15) + "\n"), 20);
    } else if (path === "/echo-gzip") {
      stream.resume();
      const body = gzipSync("gz: " + String(h.authorization ?? ""));
      stream.respond({ ":status": 200, "content-encoding": "gzip", "content-length": String(body.length) });
      stream.end(body);
    } else if (path === "/slow") {
      stream.resume();
      stream.on("close", () => slowClosed++);
      stream.respond({ ":status": 200, "content-type": "text/plain" });
      stream.write("first;"); // and never ends
    } else {
      const chunks: Buffer[] = [];
      stream.on("data", (d: Buffer) => chunks.push(d));
      stream.on("end", () => {
        stream.respond({ ":status": 200, "content-type": "application/json", "x-upstream": "h2" });
        stream.end(JSON.stringify({ path, body: Buffer.concat(chunks).toString() }));
      });
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as AddressInfo).port,
    ca,
    seen,
    connections: () => connections,
    slowClosed: () => slowClosed,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** An HTTPS upstream that speaks HTTP/1.1 only (no ALPN h2). */
async function h1Upstream(names: string[]): Promise<Upstream> {
  const ca = LocalCa.create({ permitted: names });
  const seen: Seen[] = [];
  let connections = 0;
  const server = https.createServer({ SNICallback: ca.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
    seen.push({ protocol: `http/${req.httpVersion}`, method: req.method!, path: req.url!, authority: req.headers.host, headers: req.headers });
    const chunks: Buffer[] = [];
    req.on("data", (d: Buffer) => chunks.push(d));
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json", "x-upstream": "h1", trailer: "x-checksum" });
      res.write(JSON.stringify({ path: req.url, body: Buffer.concat(chunks).toString() }));
      res.addTrailers({ "x-checksum": "abc" });
      res.end();
    });
  });
  server.on("secureConnection", () => connections++);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as AddressInfo).port,
    ca,
    seen,
    connections: () => connections,
    slowClosed: () => 0,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

// --- clients ------------------------------------------------------------------------------------

/** Opens a CONNECT tunnel through the proxy; resolves to the socket once the proxy answered 200. */
async function tunnel(proxyPort: number, target: string): Promise<Socket> {
  const socket = netConnect(proxyPort, "127.0.0.1");
  socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  let buf = Buffer.alloc(0);
  const head = await new Promise<string>((resolve, reject) => {
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const i = buf.indexOf("\r\n\r\n");
      if (i >= 0) {
        socket.off("data", onData);
        socket.pause();
        const rest = buf.subarray(i + 4);
        if (rest.length > 0) socket.unshift(rest);
        resolve(buf.subarray(0, i).toString("latin1"));
      }
    };
    socket.on("data", onData);
    socket.once("error", reject);
    socket.once("end", () => reject(new Error("proxy closed before answering")));
  });
  assert.match(head, /^HTTP\/1\.1 200 /, "the CONNECT was accepted");
  return socket;
}

/** An HTTP/2 client session to `host:port` inside a CONNECT tunnel, trusting the proxy's CA. */
async function h2Through(host: string, port: number): Promise<{ session: http2.ClientHttp2Session; alpn: () => string | false | null }> {
  const socket = await tunnel(proxyPort, `${host}:${port}`);
  const t = tls.connect({ socket, servername: host, ca: proxyCa.certPem, ALPNProtocols: ["h2"] });
  await new Promise<void>((resolve, reject) => {
    t.once("secureConnect", () => resolve());
    t.once("error", reject);
  });
  const session = http2.connect(`https://${host}:${port}`, { createConnection: () => t });
  session.on("error", () => {});
  return { session, alpn: () => t.alpnProtocol };
}

interface Answer {
  status: number;
  headers: http2.IncomingHttpHeaders;
  body: string;
  trailers: http2.IncomingHttpHeaders | undefined;
}

/** One request on `session`; collects the answer. */
function h2Request(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const s = session.request({ ":method": body === undefined ? "GET" : "POST", ...headers }, { endStream: body === undefined });
    let status = 0;
    let rh: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders | undefined;
    const chunks: Buffer[] = [];
    s.on("response", (h) => {
      rh = h;
      status = Number(h[":status"]);
    });
    s.on("trailers", (tr) => (trailers = tr));
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("end", () => resolve({ status, headers: rh, body: Buffer.concat(chunks).toString(), trailers }));
    s.on("error", reject);
    if (body !== undefined) s.end(body);
  });
}

/** Waits for the next DATA chunk on `s`. */
function nextData(s: http2.ClientHttp2Stream): Promise<string> {
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer): void => {
      s.off("error", onErr);
      resolve(d.toString());
    };
    const onErr = (e: Error): void => {
      s.off("data", onData);
      reject(e);
    };
    s.once("data", onData);
    s.once("error", onErr);
  });
}

// --- the rig ------------------------------------------------------------------------------------

const up2 = await h2Upstream(["h2.test.example"]);
const up1 = await h1Upstream(["h1.test.example"]);
const untrusted = await h2Upstream(["bad.test.example"]); // its CA is never given to the proxy

const TABLE: Record<string, string> = { "h2.test.example": "127.0.0.1", "h1.test.example": "127.0.0.1", "bad.test.example": "127.0.0.1" };
const guard = new SsrfGuard({
  ports: [up2.port, up1.port, untrusted.port],
  allow: ["127.0.0.0/8"],
  resolve: tableResolver(TABLE),
});

/** The instrumented connect step: only loopback is ever reached. */
const connects: ConnectTo[] = [];
const connect = loopbackOnly(connects);

/** What the policy was asked, the tunnels it was given, and the outcomes it heard. */
const asked: ProxiedRequest[] = [];
const handles: TunnelHandle[] = [];
const outcomes: { target: string; outcome: RequestOutcome }[] = [];
const scrub = new ScrubPatterns([{ value: SECRET, placeholder: PLACEHOLDER }]);

function prepare(req: ProxiedRequest, handle: TunnelHandle): Prepared {
  asked.push(req);
  handles.push(handle);
  const done = (outcome: RequestOutcome): void => void outcomes.push({ target: req.target, outcome });
  if (req.target.startsWith("/forbidden"))
    return { kind: "refuse", status: 403, reason: "rule", detail: "Forbidden: no rule of this lease allows this request", done };
  return { kind: "forward", headers: { ...req.headers, authorization: `Bearer ${SECRET}` }, target: req.target, scrub, done };
}

const egress: Egress = {
  decide(host: string, port: number): EgressDecision {
    if (TABLE[host] !== undefined) return { kind: "intercept", prepare };
    return { kind: "refuse", refusal: new ProxyRefusal({ reason: "not_granted", host, port }, `no grant covers ${host}`) };
  },
};

const proxyCa = LocalCa.create({ permitted: ["h2.test.example", "h1.test.example", "bad.test.example"] });
const proxy = new ForwardProxy({ egress, ca: proxyCa, guard, upstreamCa: [up2.ca.certPem, up1.ca.certPem], connect });
const proxyPort = await proxy.listen();

after(async () => {
  await proxy.close();
  await up2.close();
  await up1.close();
  await untrusted.close();
});

// --- the tests ----------------------------------------------------------------------------------

test("an h2 request gets the injected credential; the upstream saw h2, the client never sent the credential", async () => {
  const { session, alpn } = await h2Through("h2.test.example", up2.port);
  try {
    const before = up2.seen.length;
    const conns = up2.connections();
    const a = await within(h2Request(session, { ":path": "/hello?x=1", "x-client": "yes" }), 5000, "first request");
    const b = await within(h2Request(session, { ":path": "/second" }, "payload"), 5000, "second request");
    assert.equal(alpn(), "h2", "the proxy spoke h2 to the client");
    assert.equal(a.status, 200);
    assert.equal(a.headers["x-upstream"], "h2");
    assert.deepEqual(JSON.parse(a.body), { path: "/hello?x=1", body: "" });
    assert.deepEqual(JSON.parse(b.body), { path: "/second", body: "payload" });
    const got = up2.seen.slice(before);
    assert.equal(got.length, 2);
    for (const s of got) {
      assert.equal(s.protocol, "h2", "the upstream was reached over h2");
      assert.equal(s.headers.authorization, `Bearer ${SECRET}`);
      assert.equal(s.authority, `h2.test.example:${up2.port}`);
    }
    assert.equal(got[0]!.headers["x-client"], "yes");
    assert.equal(up2.connections() - conns, 1, "one upstream connection (one h2 session) for both streams");
    const mine = asked.slice(-2);
    assert.deepEqual(
      mine.map((r) => [r.protocol, r.method, r.target, r.headers.authorization, r.headers[":path"], r.headers.host]),
      [
        ["h2", "GET", "/hello?x=1", undefined, undefined, undefined],
        ["h2", "POST", "/second", undefined, undefined, undefined],
      ],
    );
    await within(
      (async () => {
        while (!outcomes.some((o) => o.target === "/second")) await new Promise((r) => setTimeout(r, 5));
      })(),
      2000,
      "the outcome report",
    );
    const o = outcomes.find((x) => x.target === "/second")!.outcome;
    assert.equal(o.status, 200);
    assert.equal(o.bytesOut, "payload".length);
    assert.ok(o.bytesIn > 0);
    assert.equal(o.error, undefined);
  } finally {
    session.destroy();
  }
});

test("curl --http2 through the proxy reaches an h2 upstream over h2, with the credential", async () => {
  const dir = tempDir("lessor-proxy-h2-");
  const caFile = join(dir, "ca.pem");
  writeFileSync(caFile, proxyCa.certPem);
  const before = up2.seen.length;
  const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dir };
  const { stdout } = await run(
    "curl",
    ["-sS", "--fail", "--http2", "--noproxy", "", "-x", `http://127.0.0.1:${proxyPort}`, "--cacert", caFile, "-w", "\n%{http_version}", `https://h2.test.example:${up2.port}/curl`],
    { env, timeout: 10_000 },
  );
  const [body, version] = stdout.split("\n");
  assert.equal(version, "2", "curl spoke HTTP/2 to the proxy");
  assert.deepEqual(JSON.parse(body!), { path: "/curl", body: "" });
  const got = up2.seen.slice(before);
  assert.equal(got.length, 1);
  assert.equal(got[0]!.protocol, "h2");
  assert.equal(got[0]!.headers.authorization, `Bearer ${SECRET}`);
  assert.match(String(got[0]!.headers["user-agent"]), /curl/);
  assert.equal(asked[asked.length - 1]!.headers.authorization, undefined, "curl sent no credential");
});

test("a gRPC-style bidirectional stream flows message by message and keeps its trailers", async () => {
  const { session } = await h2Through("h2.test.example", up2.port);
  try {
    const before = up2.seen.length;
    const s = session.request(
      { ":method": "POST", ":path": "/grpc", "content-type": "application/grpc", te: "trailers" },
      { endStream: false },
    );
    let trailers: http2.IncomingHttpHeaders | undefined;
    s.on("trailers", (t) => (trailers = t));
    const response = new Promise<http2.IncomingHttpHeaders>((r) => s.once("response", r));
    // Each answer must arrive before the next message is sent: no buffering either way.
    s.write("one");
    assert.equal(await within(nextData(s), 3000, "answer to the first message"), "ack:one;");
    s.write("two");
    assert.equal(await within(nextData(s), 3000, "answer to the second message"), "ack:two;");
    const ended = new Promise<void>((r) => s.once("end", () => r()));
    s.resume();
    s.end("three");
    await within(ended, 3000, "the end of the stream");
    assert.equal((await response)[":status"], 200);
    assert.equal(trailers?.["grpc-status"], "0", "gRPC status passed in trailers");
    assert.equal(trailers?.["grpc-message"], "fine");
    const got = up2.seen.slice(before);
    assert.equal(got[0]!.headers.te, "trailers", "te: trailers reached the upstream (gRPC needs it)");
    assert.equal(got[0]!.headers.authorization, `Bearer ${SECRET}`);
  } finally {
    session.destroy();
  }
});

test("a gRPC trailers-only answer keeps its status in one HEADERS frame", async () => {
  const { session } = await h2Through("h2.test.example", up2.port);
  try {
    const s = session.request({ ":method": "POST", ":path": "/trailers-only", "content-type": "application/grpc", te: "trailers" });
    s.end("x");
    const [h, flags] = await within(new Promise<[http2.IncomingHttpHeaders, number]>((r) => s.once("response", (hh, f) => r([hh, f]))), 3000, "answer");
    assert.equal(h["grpc-status"], "5");
    assert.ok((flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0, "END_STREAM on the headers");
  } finally {
    session.destroy();
  }
});

test("an h2 client reaches an HTTP/1.1-only upstream (translated), with the credential and its trailers", async () => {
  const { session } = await h2Through("h1.test.example", up1.port);
  try {
    const before = up1.seen.length;
    const a = await within(h2Request(session, { ":path": "/one", "content-type": "text/plain" }, "hello"), 5000, "POST over h1");
    const b = await within(h2Request(session, { ":path": "/two" }), 5000, "GET over h1");
    assert.equal(a.status, 200);
    assert.equal(a.headers["x-upstream"], "h1");
    assert.equal(a.headers.connection, undefined, "no HTTP/1.1 connection header on an h2 answer");
    assert.deepEqual(JSON.parse(a.body), { path: "/one", body: "hello" });
    assert.equal(a.trailers?.["x-checksum"], "abc", "chunked trailers came back as h2 trailers");
    assert.deepEqual(JSON.parse(b.body), { path: "/two", body: "" });
    const got = up1.seen.slice(before);
    assert.equal(got.length, 2);
    for (const s of got) {
      assert.equal(s.protocol, "http/1.1");
      assert.equal(s.headers.authorization, `Bearer ${SECRET}`);
      assert.equal(s.headers.host, `h1.test.example:${up1.port}`);
    }
  } finally {
    session.destroy();
  }
});

test("a secret the upstream echoes in an h2 answer is scrubbed across chunks (and gzip)", async () => {
  const { session } = await h2Through("h2.test.example", up2.port);
  try {
    const plain = await within(h2Request(session, { ":path": "/echo" }), 5000, "echo");
    const gz = await within(h2Request(session, { ":path": "/echo-gzip" }), 5000, "echo-gzip");
    assert.equal(plain.body, `you sent: Bearer ${PLACEHOLDER}\n`);
    assert.ok(!plain.body.includes(SECRET));
    assert.equal(gz.body, `gz: Bearer ${PLACEHOLDER}`);
    assert.equal(gz.headers["content-encoding"], undefined);
    assert.equal(up2.seen[up2.seen.length - 1]!.headers["accept-encoding"], "identity", "asked for a body it can scrub");
  } finally {
    session.destroy();
  }
});

test("a refused stream gets 403 problem+json while another stream on the same connection goes on", async () => {
  const { session } = await h2Through("h2.test.example", up2.port);
  try {
    const before = up2.seen.length;
    const open = session.request({ ":method": "POST", ":path": "/grpc", te: "trailers" }, { endStream: false });
    open.write("a");
    assert.equal(await within(nextData(open), 3000, "first answer"), "ack:a;");
    const r = await within(h2Request(session, { ":path": "/forbidden/thing" }), 3000, "refused stream");
    assert.equal(r.status, 403);
    assert.equal(r.headers["content-type"], "application/problem+json");
    const p = JSON.parse(r.body);
    assert.equal(p.status, 403);
    assert.equal(p.reason, "rule");
    assert.match(p.detail, /no rule/);
    // The open stream still works, and so does a new one.
    open.write("b");
    assert.equal(await within(nextData(open), 3000, "answer after the refusal"), "ack:b;");
    open.end();
    open.resume();
    const ok = await within(h2Request(session, { ":path": "/after" }), 3000, "stream after the refusal");
    assert.equal(ok.status, 200);
    assert.deepEqual(
      up2.seen.slice(before).map((s) => s.path),
      ["/grpc", "/after"],
      "the refused request never reached the upstream",
    );
    assert.equal(outcomes.find((o) => o.target === "/forbidden/thing")?.outcome.status, 403);
  } finally {
    session.destroy();
  }
});

test("a stream whose :authority names another host gets 421 and never reaches the upstream", async () => {
  const { session } = await h2Through("h2.test.example", up2.port);
  try {
    const before = up2.seen.length;
    const askedBefore = asked.length;
    const a = await within(h2Request(session, { ":path": "/x", ":authority": "h1.test.example" }), 3000, ":authority");
    const b = await within(h2Request(session, { ":path": "/x", ":authority": `evil.test.example:${up2.port}` }), 3000, ":authority with port");
    const c = await within(h2Request(session, { ":path": "/x", host: "evil.test.example" }), 3000, "host header");
    const d = await within(h2Request(session, { ":path": "/x", ":authority": "user@h2.test.example" }), 3000, "userinfo");
    for (const r of [a, b, c, d]) {
      assert.equal(r.status, 421);
      assert.equal(JSON.parse(r.body).reason, "misdirected");
    }
    assert.equal(up2.seen.length, before, "no request reached the upstream");
    assert.equal(asked.length, askedBefore, "the policy was not even asked");
  } finally {
    session.destroy();
  }
});

test("TunnelHandle.close() ends an open h2 stream at once, client and upstream", async () => {
  const { session } = await h2Through("h2.test.example", up2.port);
  const s = session.request({ ":method": "GET", ":path": "/slow" });
  s.on("error", () => {});
  assert.equal(await within(nextData(s), 3000, "first chunk"), "first;");
  const handle = handles[handles.length - 1]!;
  const closedBefore = up2.slowClosed();
  const t0 = performance.now();
  const ended = new Promise<void>((r) => s.once("close", () => r()));
  handle.close();
  await within(ended, 1000, "the stream to close");
  const ms = performance.now() - t0;
  assert.ok(ms < 100, `closed in ${ms.toFixed(1)} ms`);
  assert.equal(handle.closed, true);
  await within(
    (async () => {
      while (up2.slowClosed() === closedBefore) await new Promise((r) => setTimeout(r, 5));
    })(),
    1000,
    "the upstream stream to close",
  );
  session.destroy();
});

test("an h2 upstream whose certificate does not verify gives 502 and gets no request", async () => {
  const { session } = await h2Through("bad.test.example", untrusted.port);
  try {
    const r = await within(h2Request(session, { ":path": "/x" }), 5000, "502");
    assert.equal(r.status, 502);
    assert.equal(r.headers["content-type"], "application/problem+json");
    assert.match(JSON.parse(r.body).detail, /bad\.test\.example/);
    assert.equal(untrusted.seen.length, 0, "nothing reached the unverified upstream");
  } finally {
    session.destroy();
  }
});

test("request trailers reach an h2 upstream", async () => {
  const { session } = await h2Through("h2.test.example", up2.port);
  try {
    const s = session.request({ ":method": "POST", ":path": "/req-trailers", te: "trailers" }, { waitForTrailers: true });
    s.on("wantTrailers", () => s.sendTrailers({ "x-digest": "d1" }));
    s.end("body");
    s.resume();
    await within(new Promise<void>((r) => s.once("end", () => r())), 3000, "answer");
    const tr = requestTrailers[requestTrailers.length - 1]!;
    assert.equal(tr["x-digest"], "d1");
  } finally {
    session.destroy();
  }
});

test("CONNECT, absolute-form :path and :scheme http inside the tunnel are refused; nothing reaches the upstream", async () => {
  const { session } = await h2Through("h2.test.example", up2.port);
  try {
    const before = up2.seen.length;
    const askedBefore = asked.length;
    const status = (h: http2.OutgoingHttpHeaders): Promise<number | string> =>
      within(h2Request(session, h), 3000, JSON.stringify(h)).then(
        (a) => a.status,
        (e: Error) => e.message,
      );
    assert.equal(await status({ ":method": "CONNECT", ":authority": `h2.test.example:${up2.port}` }), 501);
    // nghttp2 itself resets a stream whose :path is neither origin form nor `*`; the proxy would say 400.
    assert.match(String(await status({ ":path": `https://h2.test.example:${up2.port}/x` })), /^400$|PROTOCOL_ERROR/);
    assert.equal(await status({ ":method": "OPTIONS", ":path": "*" }), 400);
    assert.equal(await status({ ":path": "/x", ":scheme": "http" }), 400);
    assert.equal(up2.seen.length, before);
    assert.equal(asked.length, askedBefore);
  } finally {
    session.destroy();
  }
});

test("a request over the header caps (count or size) is reset and not forwarded", async () => {
  const { session } = await h2Through("h2.test.example", up2.port);
  try {
    const before = up2.seen.length;
    const askedBefore = asked.length;
    // 110 fields: over the proxy's cap of 100 (and under node's own default of 128).
    const many: http2.OutgoingHttpHeaders = { ":path": "/many" };
    for (let i = 0; i < 110; i++) many[`x-h${i}`] = "v";
    // 20 000 bytes: over the proxy's 16 KiB (and under node's own default of 64 KiB).
    const big = { ":path": "/big", "x-big": "a".repeat(20_000) };
    for (const h of [many, big]) {
      const r = await within(h2Request(session, h), 3000, String(h[":path"])).then(
        (a) => `status ${a.status}`,
        (e: Error) => e.message,
      );
      assert.match(r, /ENHANCE_YOUR_CALM|status 431/, `${String(h[":path"])}: ${r}`);
    }
    assert.equal(up2.seen.length, before, "nothing reached the upstream");
    assert.equal(asked.length, askedBefore, "the policy was not asked");
    // The connection survives: the next ordinary request works.
    assert.equal((await within(h2Request(session, { ":path": "/fine" }), 3000, "after")).status, 200);
  } finally {
    session.destroy();
  }
});
