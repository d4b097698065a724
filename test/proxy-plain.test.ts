/**
 * Plain-HTTP (absolute-form) requests through the forward proxy (src/proxy/plain-http.ts) and the cap
 * on header lines (src/proxy/header-cap.ts). A local plain HTTP upstream records what it receives; names
 * resolve through an injected table, the guard allows 127.0.0.0/8 for this test only (never 10/8 or
 * the metadata address), and the connect step is instrumented so that a refused target fails the test
 * if it ever reaches it.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createServer, request, type IncomingHttpHeaders } from "node:http";
import { connect as netConnect, createServer as createNetServer, type AddressInfo } from "node:net";
import { promisify } from "node:util";
import { isVaultError } from "../src/base/errors.js";
import { LocalCa } from "../src/proxy/ca.js";
import { fixedIntercept, type Egress, type EgressDecision } from "../src/proxy/egress.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { parseAbsoluteTarget } from "../src/proxy/plain-http.js";
import { ProxyRefusal } from "../src/proxy/refusal.js";
import { tempDir } from "./helpers.js";
import { loopbackOnly, tableResolver } from "./proxy-harness.js";

const run = promisify(execFile);

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

// --- the rig ------------------------------------------------------------------------------------

const seen: Seen[] = [];
const upstream = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    seen.push({ method: req.method!, url: req.url!, headers: req.headers, body });
    res.writeHead(200, { "content-type": "application/json", "x-upstream": "yes", connection: "keep-alive, x-up-hop", "x-up-hop": "1" });
    res.end(JSON.stringify({ path: req.url, method: req.method, got: body.length }));
  });
});
await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
const upPort = (upstream.address() as AddressInfo).port;
// A port on the allow-list with nothing behind it.
const dead = createNetServer();
await new Promise<void>((r) => dead.listen(0, "127.0.0.1", r));
const deadPort = (dead.address() as AddressInfo).port;
await new Promise<void>((r) => dead.close(() => r()));

const TABLE: Record<string, string> = {
  "open.test.example": "127.0.0.1",
  "covered.test.example": "127.0.0.1",
  "private.test.example": "10.0.0.1",
  "meta.test.example": "169.254.169.254",
};
const guard = new SsrfGuard({
  ports: [upPort, deadPort, 80],
  allow: ["127.0.0.0/8"],
  resolve: tableResolver(TABLE),
});

const connects: ConnectTo[] = [];
const connect = loopbackOnly(connects);

const decisions: string[] = [];
const egress: Egress = {
  decide(host: string, port: number): EgressDecision {
    decisions.push(`${host}:${port}`);
    if (host === "covered.test.example") return fixedIntercept((h) => ({ ...h, authorization: "Bearer real-secret" }));
    // Open egress for these: the guard must still refuse the private and metadata ones.
    if (["open.test.example", "private.test.example", "meta.test.example", "169.254.169.254", "10.0.0.1"].includes(host)) return { kind: "tunnel" };
    return { kind: "refuse", refusal: new ProxyRefusal({ reason: "not_granted", host, port }, `no grant of this agent covers ${host}`) };
  },
};

const ca = LocalCa.create({ permitted: ["covered.test.example"] });
const proxy = new ForwardProxy({ egress, ca, guard, connect });
const proxyPort = await proxy.listen();

after(async () => {
  await proxy.close();
  upstream.closeAllConnections();
  await new Promise<void>((r) => upstream.close(() => r()));
});

/** Sends `head` (and `body`) to the proxy as raw bytes; reads the whole answer (Connection: close). */
async function raw(head: string, body = ""): Promise<{ status: number; head: string; body: string }> {
  const s = netConnect(proxyPort, "127.0.0.1");
  s.write(head + body);
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString("latin1");
  const i = text.indexOf("\r\n\r\n");
  assert.ok(i > 0, "an answer came: " + JSON.stringify(text));
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]), head: text.slice(0, i), body: text.slice(i + 4) };
}

/** A request through the proxy with node's http client (absolute-form target, as HTTP_PROXY clients send). */
function viaProxy(target: string, opts: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port: proxyPort, method: opts.method ?? "GET", path: target, headers: opts.headers ?? {}, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(opts.body);
  });
}

// --- the tests ----------------------------------------------------------------------------------

test("open egress: an absolute-form request goes to the checked address, hop-by-hop headers removed, Host from the URL", async () => {
  const before = { seen: seen.length, connects: connects.length };
  const r = await viaProxy(`http://Open.Test.Example:${upPort}/a/b?q=1`, {
    method: "POST",
    body: "x".repeat(100_000),
    headers: {
      host: "evil.test.example", // not the URL's host: the URL wins
      "proxy-authorization": "Basic dXNlcjpwYXNz",
      "proxy-connection": "keep-alive",
      connection: "x-hop",
      "x-hop": "drop me",
      "x-end": "keep me",
      "content-type": "text/plain",
    },
  });
  assert.equal(r.status, 200);
  assert.deepEqual(JSON.parse(r.body), { path: "/a/b?q=1", method: "POST", got: 100_000 });
  assert.equal(r.headers["x-upstream"], "yes");
  assert.equal(r.headers["x-up-hop"], undefined, "a header the upstream's Connection listed is not relayed");
  const got = seen.slice(before.seen);
  assert.equal(got.length, 1);
  const h = got[0]!.headers;
  assert.equal(h.host, `open.test.example:${upPort}`, "Host from the URL, canonical");
  assert.equal(h["proxy-authorization"], undefined);
  assert.equal(h["proxy-connection"], undefined);
  assert.equal(h["x-hop"], undefined);
  assert.equal(h["x-end"], "keep me");
  assert.equal(h.authorization, undefined, "nothing injected on open egress");
  const c = connects.slice(before.connects);
  assert.deepEqual(
    c.map((x) => `${x.host}:${x.port}`),
    [`127.0.0.1:${upPort}`],
    "one connection, to the address the guard checked",
  );
  assert.equal(decisions[decisions.length - 1], `open.test.example:${upPort}`);
});

test("curl with -x and an http:// URL works through the proxy", async () => {
  const dir = tempDir("lessor-plain-");
  const before = seen.length;
  const { stdout } = await run("curl", ["-sS", "--fail", "--noproxy", "", "-x", `http://127.0.0.1:${proxyPort}`, `http://open.test.example:${upPort}/curl`], {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dir },
  });
  assert.equal(JSON.parse(stdout).path, "/curl");
  assert.equal(seen.length, before + 1);
  assert.match(String(seen[seen.length - 1]!.headers["user-agent"]), /curl/);
});

test("a host a grant covers is refused over plain http (403 plaintext): the credential is never sent in clear text", async () => {
  const before = { seen: seen.length, connects: connects.length };
  const r = await viaProxy(`http://covered.test.example:${upPort}/v1/user`);
  assert.equal(r.status, 403);
  assert.equal(r.headers["content-type"], "application/problem+json");
  const p = JSON.parse(r.body);
  assert.equal(p.reason, "plaintext");
  assert.match(p.detail, /https:\/\//);
  assert.match(p.detail, /covered\.test\.example/);
  assert.equal(seen.length, before.seen, "the upstream was never contacted");
  assert.equal(connects.length, before.connects, "connect never reached");
  // The policy's own view of the host is canonical, so case and a trailing dot do not slip past it.
  const r2 = await viaProxy(`http://COVERED.test.example.:${upPort}/`);
  assert.equal(r2.status, 403);
  assert.equal(JSON.parse(r2.body).reason, "plaintext");
  assert.equal(connects.length, before.connects);
});

test("SSRF: metadata and private targets are refused (403) and connect is never reached", async () => {
  const before = { seen: seen.length, connects: connects.length };
  const cases: [string, string][] = [
    ["http://169.254.169.254/latest/meta-data/", "metadata"],
    [`http://169.254.169.254:${upPort}/`, "metadata"],
    ["http://10.0.0.1/", "private"],
    [`http://private.test.example:${upPort}/`, "private"],
    [`http://meta.test.example:${upPort}/`, "metadata"],
    ["http://127.1/", "host_invalid"], // a numeric form resolvers read as 127.0.0.1
    ["http://0x7f.0.0.1/", "host_invalid"],
    [`http://open.test.example:8080/`, "port"], // not on the port allow-list
  ];
  for (const [url, reason] of cases) {
    const r = await viaProxy(url);
    assert.equal(r.status, 403, url);
    assert.equal(r.headers["content-type"], "application/problem+json");
    assert.equal(JSON.parse(r.body).reason, reason, url);
  }
  assert.equal(connects.length, before.connects, "connect never reached for a refused target");
  assert.equal(seen.length, before.seen);
});

test("a host no grant covers is refused (403 not_granted) before any lookup or connection", async () => {
  const before = connects.length;
  const r = await viaProxy("http://elsewhere.test.example/");
  assert.equal(r.status, 403);
  const p = JSON.parse(r.body);
  assert.equal(p.reason, "not_granted");
  assert.equal(p.host, "elsewhere.test.example");
  assert.equal(connects.length, before);
});

test("strict targets: https absolute-form, other schemes, user info, fragments, origin form: 400", async () => {
  const before = { seen: seen.length, connects: connects.length };
  const https = await viaProxy(`https://open.test.example:${upPort}/`);
  assert.equal(https.status, 400);
  assert.equal(JSON.parse(https.body).reason, "use_connect");
  assert.match(JSON.parse(https.body).detail, /CONNECT/);
  for (const t of ["ftp://open.test.example/", `http://user:pw@open.test.example:${upPort}/`, `http://open.test.example:${upPort}/#frag`, "/just/a/path", `http://open.test.example:/`, "http://open.test.example:99999/"]) {
    const r = await raw(`GET ${t} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    assert.equal(r.status, 400, t);
    assert.equal(JSON.parse(r.body).reason, "request_target", t);
  }
  assert.equal(seen.length, before.seen);
  assert.equal(connects.length, before.connects);
});

test("parseAbsoluteTarget: the forms it takes and the forms it refuses", () => {
  assert.deepEqual(parseAbsoluteTarget("http://a.example"), { host: "a.example", port: 80, path: "/" });
  assert.deepEqual(parseAbsoluteTarget("HTTP://a.example:8080?x=1"), { host: "a.example", port: 8080, path: "/?x=1" });
  assert.deepEqual(parseAbsoluteTarget("http://[2001:db8::1]:81/p"), { host: "[2001:db8::1]", port: 81, path: "/p" });
  for (const bad of ["http://a.example:0/", "http://a@b.example/", "http:/a.example/", "http://a.example:80:80/", "http://[::1/", "http://a.example\\@b/"]) {
    const r = parseAbsoluteTarget(bad);
    assert.ok("reason" in r, bad);
  }
});

test("an upgrade over plain http is refused (501), nothing forwarded", async () => {
  const before = seen.length;
  const r = await raw(`GET http://open.test.example:${upPort}/ws HTTP/1.1\r\nHost: open.test.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n`);
  assert.equal(r.status, 501);
  assert.equal(seen.length, before);
});

test("an allowed upstream that is down gives 502", async () => {
  const r = await viaProxy(`http://open.test.example:${deadPort}/`);
  assert.equal(r.status, 502);
  assert.equal(JSON.parse(r.body).reason, "upstream");
});

test("header lines: 101 > the default cap of 100 → 431 (plain request and CONNECT); 100 pass", async () => {
  const before = { seen: seen.length, connects: connects.length };
  const lines = (n: number): string => Array.from({ length: n }, (_, i) => `X-H${i}: ${i}\r\n`).join("");
  // Host + Connection + 99 = 101 header lines.
  const over = await raw(`GET http://open.test.example:${upPort}/over HTTP/1.1\r\nHost: open.test.example\r\nConnection: close\r\n${lines(99)}\r\n`);
  assert.equal(over.status, 431);
  assert.equal(JSON.parse(over.body).reason, "header_count");
  const connect = await raw(`CONNECT open.test.example:${upPort} HTTP/1.1\r\nHost: open.test.example\r\n${lines(100)}\r\n`);
  assert.equal(connect.status, 431);
  assert.equal(seen.length, before.seen);
  assert.equal(connects.length, before.connects, "nothing was opened for a request over the cap");
  // Exactly 100: forwarded, and every one of them arrives (node would otherwise drop extras silently).
  const at = await raw(`GET http://open.test.example:${upPort}/at HTTP/1.1\r\nHost: open.test.example\r\nConnection: close\r\n${lines(98)}\r\n`);
  assert.equal(at.status, 200);
  assert.equal(seen[seen.length - 1]!.headers["x-h97"], "97");
});

test("maxHeaders is an option; a value that is not a sane count is refused", async () => {
  const small = new ForwardProxy({ egress, ca, guard, connect, maxHeaders: 5 });
  const port = await small.listen();
  try {
    const s = netConnect(port, "127.0.0.1");
    s.write(`GET http://open.test.example:${upPort}/ HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nConnection: close\r\n\r\n`);
    const chunks: Buffer[] = [];
    for await (const c of s) chunks.push(c as Buffer);
    assert.match(Buffer.concat(chunks).toString(), /^HTTP\/1\.1 431 /);
  } finally {
    await small.close();
  }
  for (const bad of [0, -1, 1.5, Number.NaN, 1e9])
    assert.throws(
      () => new ForwardProxy({ egress, ca, guard, connect, maxHeaders: bad }),
      (e: unknown) => isVaultError(e) && e.code === "invalid_request",
    );
});
