/**
 * The injecting proxy's response scrubbing attacked: a covered upstream echoes the credential the proxy
 * injected, in forms a real client decodes, and the agent tries to read it back unmasked.
 *
 * Rig: ForwardProxy wired as `lessor run` wires it (LeaseEgress over a real vault on SQLite, the SSRF
 * guard with a table resolver and the instrumented `loopbackOnly` connect step). Upstreams are loopback
 * HTTPS servers this file starts (HTTP/1.1, HTTP/2, and a raw TLS one for hand-made framing), certified
 * by a test CA given to the proxy as its extra upstream CA. Nothing leaves 127.0.0.1.
 *
 * Each upstream echoes what it received (the real value the proxy put in the request), never the test's
 * canary constants: the attack needs no help from the upstream beyond what real services do.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as https from "node:https";
import * as tls from "node:tls";
import type { AddressInfo } from "node:net";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { brotliCompressSync, deflateRawSync, deflateSync, gunzipSync, gzipSync } from "node:zlib";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress, type InjectionRule, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";
import { closeUpstreams, loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";

const HOST = "api.scrub.example"; // HTTP/1.1 upstream (node's https server)
const H2HOST = "h2.scrub.example"; // HTTP/2 upstream
const RAWHOST = "raw.scrub.example"; // raw TLS upstream, hand-made HTTP/1.1 framing

const alnum = (n: number): string => {
  const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  return [...randomBytes(n)].map((b) => abc[b % abc.length]).join("");
};
// Canary values: none may reach the agent in a form it can decode.
const TOK = "ghp_" + "CANARY" + alnum(30); // a GitHub-like token (40 chars)
const SEC = "wJalrXUt/nFEMI+K7MDENG/bPxRfiCY+CANARYkey"; // an AWS-secret-like value: base64 alphabet, `/` and `+`
const QRY = "qk+A/b=Cd+Ef/Gh=Ij+Kl/Mn=Op+Qr/CANARY"; // a query-rule key with reserved characters
const PWD = "Pässwörd-CANARY-" + alnum(12); // a password with non-ASCII letters
const VALUES = { TOK, SEC, QRY, PWD };

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// --- upstreams ---------------------------------------------------------------------------------------

const upCa = LocalCa.create({ permitted: [HOST, H2HOST, RAWHOST] });
/** Bodies stored by POST /ok/blobs (a Git-data-like API), by the HTTP/1.1 upstream. */
let stored = Buffer.alloc(0);
/** What each upstream received, for the "the attack is real" checks. */
const got: { path: string; headers: http.IncomingHttpHeaders; body: string }[] = [];

const wrap60 = (b64: string): string => b64.replace(/(.{60})/g, "$1\n");
/** Python's urllib.parse.quote(s) (safe='/'), UTF-8. */
const pyQuote = (s: string): string => [...Buffer.from(s, "utf8")].map((b) => (/[A-Za-z0-9_.~\/-]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : "%" + b.toString(16).toUpperCase().padStart(2, "0"))).join("");
/** .NET System.Text.Json's default escaping (JavaScriptEncoder.Default): HTML-sensitive characters and `+` as \uXXXX, upper-case hex. */
const dotnetJson = (s: string): string => JSON.stringify(s).replace(/[+<>&'`]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")).replace(/\\"/g, "\\u0022");
/** Python json.dumps(s) (ensure_ascii=True, the default). */
const pyJson = (s: string): string => JSON.stringify(s).replace(/[\u0080-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
/** Go html/template's escaping of text: " ' & + < > as entities. */
const goHtml = (s: string): string => s.replace(/[&<>"'+]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;", "+": "&#43;" })[c]!);

const up1 = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (d: Buffer) => chunks.push(d));
  req.on("end", async () => {
    const url = new URL(req.url!, `https://${HOST}`);
    const body = Buffer.concat(chunks);
    got.push({ path: req.url!, headers: req.headers, body: body.toString("utf8") });
    const tok = String(req.headers["x-token"] ?? "");
    const sec = String(req.headers["x-sec"] ?? "");
    // The password from its header, or (a body rule: a non-ASCII value goes in a body, never a header) from the body as UTF-8.
    const pwd = req.headers["x-pw"] !== undefined ? Buffer.from(String(req.headers["x-pw"]), "latin1").toString("latin1") : body.toString("utf8");
    switch (url.pathname) {
      case "/ok/split": {
        // The value cut at every offset, each cut in its own chunk written after a pause.
        res.writeHead(200, { "content-type": "text/plain" });
        for (let k = 1; k < tok.length; k++) {
          res.write(`[${tok.slice(0, k)}`);
          await delay(2);
          res.write(`${tok.slice(k)}]\n`);
          await delay(2);
        }
        // One byte per chunk.
        for (const c of tok) {
          res.write(c);
          await delay(1);
        }
        res.end("\n");
        return;
      }
      case "/ok/big": {
        // Longer than any window: 3 MiB of text, the value at the very end, Content-Length framed.
        const pad = Buffer.alloc(3 * 1024 * 1024, "a");
        const tail = Buffer.from(tok + "\n");
        res.writeHead(200, { "content-type": "text/plain", "content-length": pad.length + tail.length });
        res.write(pad);
        res.end(tail);
        return;
      }
      case "/ok/headers": {
        res.writeHead(302, {
          location: `https://${HOST}/cb?token=${encodeURIComponent(tok)}&raw=${tok}`,
          "set-cookie": [`s=${tok}; Path=/`, `t=${encodeURIComponent(sec)}; HttpOnly`],
          "www-authenticate": `Bearer realm="x", error="invalid_token", token="${tok}"`,
          "x-echo": [tok, sec],
          link: `<https://${HOST}/next?t=${tok}>; rel="next"`,
        });
        res.end();
        return;
      }
      case "/ok/early": {
        res.writeEarlyHints({ link: `</style.css?t=${tok}>; rel=preload`, "x-early": tok });
        res.writeHead(200, { "content-type": "text/plain" });
        res.end("ok");
        return;
      }
      case "/ok/trailers": {
        res.writeHead(200, { "content-type": "text/plain", trailer: "x-t" });
        res.addTrailers({ "x-t": tok });
        res.end("body");
        return;
      }
      case "/ok/coded": {
        const coding = url.searchParams.get("c")!;
        const text = Buffer.from(JSON.stringify({ echo: tok }));
        const coders: Record<string, [string, (b: Buffer) => Buffer]> = {
          gzip: ["gzip", gzipSync],
          deflate: ["deflate", deflateSync],
          rawdeflate: ["deflate", deflateRawSync],
          br: ["br", brotliCompressSync],
          gzgz: ["gzip, gzip", (b) => gzipSync(gzipSync(b))],
          zstd: ["zstd", (b) => b],
          unknown: ["x-custom", (b) => b],
          upper: ["GZIP", gzipSync],
          xgzip: ["x-gzip", gzipSync],
        };
        const [label, fn] = coders[coding]!;
        res.writeHead(200, { "content-type": "application/json", "content-encoding": label });
        res.end(fn(text));
        return;
      }
      case "/ok/head":
        res.writeHead(200, { "content-type": "text/plain", "x-echo": tok, "content-length": 40 });
        res.end();
        return;
      case "/ok/forms": {
        // The encodings the docs list: the scrubber must mask each.
        const b64 = (s: string): string => Buffer.from(s).toString("base64");
        const lines = [
          `json ${JSON.stringify(tok)} ${JSON.stringify(sec)}`,
          `pct ${encodeURIComponent(sec)} ${encodeURIComponent(sec).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase())}`,
          `form ${new URLSearchParams({ k: sec }).toString()}`,
          `b64 ${b64(tok)} ${b64("x" + tok)} ${b64("xy" + tok)}`,
          `b64url ${Buffer.from("x" + sec).toString("base64url")}`,
          `basic ${b64("x-access-token:" + tok)}`,
          `sse data: ${tok}\n\n`,
        ];
        res.writeHead(200, { "content-type": "text/plain" });
        res.end(lines.join("\n"));
        return;
      }
      // --- the breaks -----------------------------------------------------------------------------
      case "/ok/dotnet":
        // An ASP.NET Core API echoing the key it was given (System.Text.Json's default encoder).
        res.writeHead(200, { "content-type": "application/json; charset=utf-8" });
        res.end(`{"key":${dotnetJson(sec)}}`);
        return;
      case "/ok/pyquote":
        // A redirect that keeps the key in the next URL, built with Python's urllib.parse.quote.
        res.writeHead(302, { location: `https://${HOST}/next?key=${pyQuote(sec)}` });
        res.end();
        return;
      case "/ok/gohtml":
        // A Go html/template error page quoting the key.
        res.writeHead(400, { "content-type": "text/html; charset=utf-8" });
        res.end(`<html><body><p>invalid key: <code>${goHtml(sec)}</code></p></body></html>`);
        return;
      case "/ok/pyjson":
        // A Python (json.dumps) API echoing the credential it was given.
        res.writeHead(200, { "content-type": "application/json" });
        res.end(`{"password": ${pyJson(pwd)}}`);
        return;
      case "/ok/login":
        // Not signed in: redirect to the login page, keeping where the client wanted to go (Express:
        // res.redirect('/login?next=' + encodeURIComponent(req.originalUrl))). The original URL holds
        // the query rule's key, form-encoded by the proxy: here it is percent-encoded a second time.
        res.writeHead(302, { location: `/login?next=${encodeURIComponent(req.url!)}` });
        res.end();
        return;
      case "/ok/blobs":
      case "/ok/blobs/1":
        if (req.method === "POST") {
          stored = body;
          res.writeHead(201, { "content-type": "application/json" });
          res.end('{"sha":"1"}');
        } else {
          // GET /repos/o/r/git/blobs/:sha as GitHub answers: base64, a line break every 60 characters.
          res.writeHead(200, { "content-type": "application/json" });
          res.end(JSON.stringify({ sha: "1", encoding: "base64", content: wrap60(stored.toString("base64")) }));
        }
        return;
      case "/ok/tarball":
        // GET /repos/o/r/tarball: an archive of what is stored, served as data (no Content-Encoding).
        res.writeHead(200, { "content-type": "application/x-gzip", "content-disposition": "attachment; filename=repo.tar.gz" });
        res.end(gzipSync(Buffer.concat([Buffer.from("stored-file\0"), stored])));
        return;
      default:
        res.writeHead(200, { "content-type": "text/plain" });
        res.end(`echo ${tok}`);
    }
  });
});
await new Promise<void>((r) => up1.listen(0, "127.0.0.1", r));
const port1 = (up1.address() as AddressInfo).port;

/** A raw TLS upstream: hand-made framing (a body delimited by the connection's close). */
const raw = tls.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (s) => {
  s.on("error", () => {});
  let buf = "";
  s.on("data", async (d: Buffer) => {
    buf += d.toString("latin1");
    const end = buf.indexOf("\r\n\r\n");
    if (end < 0) return;
    const head = buf.slice(0, end);
    buf = "";
    const tok = /\r\nx-token: ([^\r]*)/i.exec(head)?.[1] ?? "";
    s.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n");
    for (let k = 1; k < tok.length; k += 3) {
      s.write(`<${tok.slice(0, k)}`);
      await delay(2);
      s.write(`${tok.slice(k)}>`);
      await delay(2);
    }
    s.write(tok.slice(0, 20));
    await delay(2);
    s.end(tok.slice(20));
  });
});
await new Promise<void>((r) => raw.listen(0, "127.0.0.1", r));
const portRaw = (raw.address() as AddressInfo).port;

const up2 = http2.createSecureServer({ SNICallback: upCa.sniCallback, allowHTTP1: false });
up2.on("stream", async (stream, h) => {
  stream.on("error", () => {});
  const tok = String(h["x-token"] ?? "");
  const path = String(h[":path"]).split("?")[0]!;
  got.push({ path, headers: h as unknown as http.IncomingHttpHeaders, body: "" });
  if (path === "/ok/split") {
    stream.respond({ ":status": 200, "content-type": "text/plain" });
    for (let k = 1; k < tok.length; k++) {
      stream.write(`[${tok.slice(0, k)}`);
      await delay(2);
      stream.write(`${tok.slice(k)}]`);
      await delay(2);
    }
    stream.end();
    return;
  }
  if (path === "/ok/early") {
    stream.additionalHeaders({ ":status": 103, link: `</s.css?t=${tok}>; rel=preload` });
    stream.respond({ ":status": 200, "x-echo": tok }, { waitForTrailers: true });
    stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "3", "grpc-message": `bad token ${tok}` }));
    stream.end("ok");
    return;
  }
  if (path === "/ok/grpc") {
    // A gRPC server that compresses its messages because the client accepts it (grpc-accept-encoding).
    const accepts = String(h["grpc-accept-encoding"] ?? "").split(",").map((x) => x.trim());
    const msg = Buffer.concat([Buffer.from([0x0a, Buffer.byteLength(tok)]), Buffer.from(tok)]); // protobuf: field 1, a string
    // ?force=1: compressed whatever the client accepts (as a server that ignores grpc-accept-encoding).
    const compress = accepts.includes("gzip") || String(h[":path"]).includes("force=1");
    const payload = compress ? gzipSync(msg) : msg;
    const frame = Buffer.alloc(5 + payload.length);
    frame[0] = compress ? 1 : 0;
    frame.writeUInt32BE(payload.length, 1);
    payload.copy(frame, 5);
    stream.respond({ ":status": 200, "content-type": "application/grpc+proto", ...(compress ? { "grpc-encoding": "gzip" } : {}) }, { waitForTrailers: true });
    stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
    stream.end(frame);
    return;
  }
  stream.respond({ ":status": 200 });
  stream.end(`echo ${tok}`);
});
await new Promise<void>((r) => up2.listen(0, "127.0.0.1", r));
const port2 = (up2.address() as AddressInfo).port;

after(async () => {
  await closeUpstreams(up1, raw, up2);
});

const portOf = (host: string): number => (host === H2HOST ? port2 : host === RAWHOST ? portRaw : port1);

// --- the rig ---------------------------------------------------------------------------------------

const POLICY = grant("api", ["bot"], ["tok", "sec", "qry", "pwd"], [HOST, H2HOST, RAWHOST]);

interface Rig {
  port: number;
  ph: (name: keyof typeof VALUES) => string;
  close(): Promise<void>;
}

async function rig(tokRule: InjectionRule = { mode: "placeholder" }): Promise<Rig> {
  const { vault } = await makeVault({ policy: POLICY });
  const admin = vault.admin();
  const creds: ProxyCredential[] = [];
  const phs = {} as Record<keyof typeof VALUES, string>;
  const add = async (key: keyof typeof VALUES, name: string, rule: InjectionRule): Promise<void> => {
    const value = VALUES[key];
    await admin.storeSecret({ name, value });
    const lease = await admin.requestLease({ agent: "bot", secret: name, domains: [HOST, H2HOST, RAWHOST] });
    phs[key] = makePlaceholder(value);
    creds.push({ lease, secret: `global/${name}`, placeholder: phs[key], value, rule });
  };
  await add("TOK", "tok", tokRule);
  await add("SEC", "sec", { mode: "placeholder" });
  await add("QRY", "qry", { mode: "query", param: "api_key" });
  await add("PWD", "pwd", { mode: "placeholder" });
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: () => {} });
  const guard = new SsrfGuard({ ports: [port1, port2, portRaw], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1", [H2HOST]: "127.0.0.1", [RAWHOST]: "127.0.0.1" }) });
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST, H2HOST, RAWHOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly() });
  const port = await proxy.listen();
  return {
    port,
    ph: (k) => phs[k],
    close: async () => {
      await proxy.close();
      await egress.close();
    },
  };
}

// --- clients (the agent) ---------------------------------------------------------------------------------

interface H1Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
  trailers: http.IncomingHttpHeaders;
  early: string[];
}

/** One HTTP/1.1 request through the proxy by node's client (as an agent's tool would send it). */
async function h1(r: Rig, path: string, headers: http.OutgoingHttpHeaders = {}, opts: { host?: string; method?: string; body?: string } = {}): Promise<H1Answer> {
  const host = opts.host ?? HOST;
  const s = await openTunnel(r.port, host, portOf(host), { alpn: "http/1.1" });
  return await new Promise<H1Answer>((resolve, reject) => {
    const early: string[] = [];
    const req = http.request({ createConnection: () => s, host, path, method: opts.method ?? "GET", headers: { connection: "close", ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (d: Buffer) => chunks.push(d));
      res.on("error", () => resolve({ status: res.statusCode!, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks), trailers: res.trailers, early }));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks), trailers: res.trailers, early }));
    });
    req.on("information", (i) => early.push(JSON.stringify(i)));
    req.on("error", (e) => reject(e));
    req.end(opts.body);
  });
}

/** Everything the agent got, as raw bytes (head, framing, body), for one request. */
async function rawH1(r: Rig, bytes: string, host = HOST, ms = 3000): Promise<string> {
  const s = await openTunnel(r.port, host, portOf(host), { alpn: "http/1.1" });
  s.write(bytes);
  return readAll(s, ms);
}

interface H2Answer {
  heads: http2.IncomingHttpHeaders[];
  headers: http2.IncomingHttpHeaders;
  body: Buffer;
  trailers: http2.IncomingHttpHeaders;
}

async function h2(r: Rig, host: string, path: string, headers: http2.OutgoingHttpHeaders): Promise<H2Answer> {
  const s = await openTunnel(r.port, host, portOf(host), { alpn: "h2" });
  const session = http2.connect(`https://${host}`, { createConnection: () => s });
  session.on("error", () => {});
  try {
    return await new Promise<H2Answer>((resolve, reject) => {
      const req = session.request({ ":method": "GET", ":path": path, ...headers });
      const heads: http2.IncomingHttpHeaders[] = [];
      let resp: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      req.on("headers", (hh) => heads.push(hh));
      req.on("response", (hh) => (resp = hh));
      req.on("trailers", (t) => (trailers = t));
      req.on("data", (d: Buffer) => chunks.push(d));
      req.on("end", () => resolve({ heads, headers: resp, body: Buffer.concat(chunks), trailers }));
      req.on("error", reject);
      req.end();
    });
  } finally {
    session.destroy();
  }
}

/** Fails if `text` holds a canary value as it is. */
function assertNoCanary(text: string, what: string): void {
  for (const [k, v] of Object.entries(VALUES)) {
    assert.ok(!text.includes(v), `${what} holds ${k} as it is`);
    assert.ok(!text.includes(Buffer.from(v, "utf8").toString("latin1")), `${what} holds ${k} (UTF-8 bytes)`);
  }
}

const lastGot = (path: string): (typeof got)[number] => [...got].reverse().find((g) => g.path.startsWith(path))!;

// --- what holds --------------------------------------------------------------------------------------

test("a value split across chunks at every offset (HTTP/1.1 chunked, close-delimited, HTTP/2 DATA, one byte per chunk) and one at the end of a 3 MiB body come back masked", async () => {
  const r = await rig();
  try {
    const a = await h1(r, "/ok/split", { "x-token": r.ph("TOK") });
    assert.equal(a.status, 200);
    assert.equal(lastGot("/ok/split").headers["x-token"], TOK, "the upstream got the value");
    assertNoCanary(a.body.toString("latin1"), "a split echo");
    assert.ok(a.body.toString().includes(`[${r.ph("TOK")}]`));

    const c = await rawH1(r, `GET /x HTTP/1.1\r\nHost: ${RAWHOST}\r\nX-Token: ${r.ph("TOK")}\r\nConnection: close\r\n\r\n`, RAWHOST, 5000);
    assert.match(c, /^HTTP\/1\.1 200/);
    // De-chunk (the proxy may re-frame a close-delimited body as chunked).
    assertNoCanary(c.replace(/\r\n[0-9a-f]+\r\n/g, ""), "a close-delimited echo (de-chunked)");
    assert.ok(c.replace(/\r\n[0-9a-f]+\r\n/g, "").includes(`<${r.ph("TOK")}>`) || c.includes(r.ph("TOK").slice(0, 20)));

    const d = await h2(r, H2HOST, "/ok/split", { "x-token": r.ph("TOK") });
    assert.equal(d.headers[":status"], 200);
    assertNoCanary(d.body.toString("latin1"), "an h2 echo split across DATA frames");

    const big = await h1(r, "/ok/big", { "x-token": r.ph("TOK") });
    assert.equal(big.body.length, 3 * 1024 * 1024 + TOK.length + 1);
    assertNoCanary(big.body.subarray(-200).toString("latin1"), "the end of a 3 MiB body");
  } finally {
    await r.close();
  }
});

test("response headers (Location, Set-Cookie, WWW-Authenticate, Link, a repeated custom header), HTTP/1.1 trailers, 103 Early Hints, HEAD and h2 trailers (grpc-message) are masked or not relayed", async () => {
  const r = await rig();
  try {
    const a = await h1(r, "/ok/headers", { "x-token": r.ph("TOK"), "x-sec": r.ph("SEC") });
    assert.equal(a.status, 302);
    const heads = a.rawHeaders.join("\n");
    assertNoCanary(heads, "the redirect's headers");
    assertNoCanary(decodeURIComponent(heads), "the redirect's headers, percent-decoded");
    assert.ok(heads.includes(r.ph("TOK")));

    const t = await rawH1(r, `GET /ok/trailers HTTP/1.1\r\nHost: ${HOST}\r\nX-Token: ${r.ph("TOK")}\r\nTE: trailers\r\nConnection: close\r\n\r\n`);
    assertNoCanary(t, "an HTTP/1.1 answer with a trailer");

    const e = await h1(r, "/ok/early", { "x-token": r.ph("TOK") });
    assert.equal(e.status, 200);
    assertNoCanary(e.early.join("\n"), "103 Early Hints");

    const hd = await rawH1(r, `HEAD /ok/head HTTP/1.1\r\nHost: ${HOST}\r\nX-Token: ${r.ph("TOK")}\r\nConnection: close\r\n\r\n`);
    assert.match(hd, /^HTTP\/1\.1 200/);
    assertNoCanary(hd, "a HEAD answer");

    for (const host of [H2HOST, HOST]) {
      const x = await h2(r, host, host === H2HOST ? "/ok/early" : "/ok/trailers", { "x-token": r.ph("TOK"), te: "trailers" });
      assertNoCanary(JSON.stringify(x.heads) + JSON.stringify(x.trailers) + x.body.toString("latin1"), `an h2 answer from ${host}`);
    }
  } finally {
    await r.close();
  }
});

test("codings: gzip, x-gzip, GZIP, deflate and br are decoded and masked; raw deflate, stacked, zstd and unknown codings never hand the value over", async () => {
  const r = await rig();
  try {
    for (const c of ["gzip", "xgzip", "upper", "deflate", "br"]) {
      const a = await h1(r, `/ok/coded?c=${c}`, { "x-token": r.ph("TOK") });
      assert.equal(a.status, 200, c);
      assert.equal(a.headers["content-encoding"], undefined, c);
      assertNoCanary(a.body.toString("latin1"), c);
      assert.deepEqual(JSON.parse(a.body.toString()), { echo: r.ph("TOK") }, c);
    }
    for (const c of ["rawdeflate", "gzgz", "zstd", "unknown"]) {
      const a = await rawH1(r, `GET /ok/coded?c=${c} HTTP/1.1\r\nHost: ${HOST}\r\nX-Token: ${r.ph("TOK")}\r\nConnection: close\r\n\r\n`);
      assertNoCanary(a, c);
      const body = Buffer.from(a.slice(a.indexOf("\r\n\r\n") + 4), "latin1");
      let again: Buffer | null = null;
      try {
        again = gunzipSync(body);
      } catch {
        // not gzip: nothing more to read
      }
      if (again) assertNoCanary(again.toString("latin1"), `${c}, decoded once more by the agent`);
    }
  } finally {
    await r.close();
  }
});

test("the encodings the docs list (JSON, percent upper and lower, form, base64 at three alignments, base64url, a Basic pair, SSE) are masked", async () => {
  const r = await rig();
  try {
    const a = await h1(r, "/ok/forms", { "x-token": r.ph("TOK"), "x-sec": r.ph("SEC") });
    const text = a.body.toString("latin1");
    assertNoCanary(text, "the forms");
    for (const run of text.match(/[A-Za-z0-9+/_-]{12,}={0,2}/g) ?? [])
      for (let cut = 0; cut < 4; cut++) assertNoCanary(Buffer.from(run.slice(cut).replace(/-/g, "+").replace(/_/g, "/"), "base64").toString("latin1"), "a base64 run");
    assertNoCanary(decodeURIComponent(text.replace(/\+/g, " ")), "the forms, percent-decoded");
  } finally {
    await r.close();
  }
});

// --- breaks ----------------------------------------------------------------------------------------

test("JSON-escaped forms are masked: .NET System.Text.Json's default escaping (`+` as \\u002B)", async () => {
  const r = await rig();
  try {
    const a = await h1(r, "/ok/dotnet", { "x-sec": r.ph("SEC") });
    assert.equal(lastGot("/ok/dotnet").headers["x-sec"], SEC, "the upstream got the value");
    const echoed = JSON.parse(a.body.toString()).key as string; // what any JSON client reads
    assert.notEqual(echoed, SEC, "the agent read the real value out of a .NET JSON echo");
  } finally {
    await r.close();
  }
});

test("a value with non-ASCII letters is not injected at all (so no Python json.dumps echo, nor any other encoding of it, can carry it back)", async () => {
  const r = await rig();
  try {
    const before = got.length;
    const a = await h1(r, "/ok/pyjson", { "x-pw": r.ph("PWD") });
    assert.equal(a.status, 502);
    assert.match(a.body.toString(), /outside ASCII, which lessor does not inject/);
    assert.ok(!a.body.toString().includes(PWD.slice(0, 5)));
    assert.equal(got.length, before, "the upstream got the request");
  } finally {
    await r.close();
  }
});

test("percent-encoded forms are masked: a Location built with Python's urllib.parse.quote (`/` kept, `+` as %2B)", async () => {
  const r = await rig();
  try {
    const a = await h1(r, "/ok/pyquote", { "x-sec": r.ph("SEC") });
    assert.equal(a.status, 302);
    const key = new URL(String(a.headers.location)).searchParams.get("key");
    assert.notEqual(key, SEC, "the agent read the real value out of the redirect's Location");
  } finally {
    await r.close();
  }
});

test("percent-encoded forms are masked: a login redirect keeping the original URL (next=…, the query rule's key percent-encoded twice)", async () => {
  const r = await rig();
  try {
    const a = await h1(r, "/ok/login?page=2", {});
    assert.equal(new URL(lastGot("/ok/login").path, "https://x").searchParams.get("api_key"), QRY, "the proxy added the key");
    assert.equal(a.status, 302);
    const next = new URL(String(a.headers.location), `https://${HOST}`).searchParams.get("next")!;
    const key = new URL(next, `https://${HOST}`).searchParams.get("api_key");
    assert.notEqual(key, QRY, "the agent read the query rule's key out of the login redirect");
  } finally {
    await r.close();
  }
});

test("HTML-escaped forms are masked: a Go html/template page (`+` as &#43;)", async () => {
  const r = await rig();
  try {
    const a = await h1(r, "/ok/gohtml", { "x-sec": r.ph("SEC") });
    assert.equal(a.status, 400);
    const code = /<code>(.*)<\/code>/.exec(a.body.toString())![1]!;
    const shown = code.replace(/&#(\d+);/g, (_, n: string) => String.fromCharCode(Number(n))).replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
    assert.notEqual(shown, SEC, "the agent read the real value out of a Go error page");
  } finally {
    await r.close();
  }
});

test("base64 forms are masked wrapped in lines: base64 wrapped every 60 characters in a JSON string (GitHub's git blob API)", async () => {
  const r = await rig({ mode: "placeholder", body: true });
  try {
    // The agent stores a blob holding its placeholder (a body rule swaps in the value), then reads it back.
    const ph = r.ph("TOK");
    const post = await h1(r, "/ok/blobs", { "content-type": "application/json", "x-token": ph }, { method: "POST", body: JSON.stringify({ encoding: "utf-8", content: `${"#".repeat(36)} token ${ph}\n` }) });
    assert.equal(post.status, 201);
    assert.ok(stored.includes(TOK), "the upstream stored the real value");
    const a = await h1(r, "/ok/blobs/1", { "x-token": ph });
    const content = JSON.parse(a.body.toString()).content as string;
    assert.ok(content.includes("\n"), "wrapped as GitHub wraps it");
    const decoded = Buffer.from(content, "base64").toString(); // what every base64 decoder does with the line breaks
    assert.ok(!decoded.includes(TOK), "the agent read the real value out of a wrapped base64 blob");
  } finally {
    await r.close();
  }
});

test("gRPC per-message compression: the proxy asks for identity messages, and an answer with grpc-encoding: gzip is refused (502)", async () => {
  const r = await rig();
  try {
    const a = await h2(r, H2HOST, "/ok/grpc", { ":method": "POST", "content-type": "application/grpc+proto", te: "trailers", "grpc-accept-encoding": "gzip", "x-token": r.ph("TOK") });
    assert.equal(lastGot("/ok/grpc").headers["x-token"], TOK, "the upstream got the value");
    // What grpc-js / grpc-go do with the message: read the frame, inflate it if its flag says so.
    const body = a.body;
    if (Number(a.headers[":status"]) !== 200 || body.length < 5) return; // refused: the promise holds
    const msg = body[0] === 1 ? gunzipSync(body.subarray(5, 5 + body.readUInt32BE(1))) : body.subarray(5);
    assert.ok(!msg.toString("latin1").includes(TOK), `the agent read the real value out of a compressed gRPC message (grpc-encoding ${String(a.headers["grpc-encoding"])})`);
    assert.equal(lastGot("/ok/grpc").headers["grpc-accept-encoding"], "identity", "the proxy asked for uncompressed messages");
    assert.ok(msg.toString("latin1").includes(r.ph("TOK")), "the message came uncompressed, masked");
    // A server that compresses anyway: refused, none of the message relayed.
    const f = await h2(r, H2HOST, "/ok/grpc?force=1", { ":method": "POST", "content-type": "application/grpc+proto", te: "trailers", "grpc-accept-encoding": "gzip", "x-token": r.ph("TOK") });
    assert.equal(f.headers[":status"], 502);
    assert.match(f.body.toString(), /grpc-encoding gzip/);
    assertNoCanary(f.body.toString("latin1"), "the refused gRPC answer");
  } finally {
    await r.close();
  }
});

// Not a break the scrubber can fix without opening archives: a documented limit of body rules
// (docs/proxy.md, "Not yet"). The test holds the documentation to what happens.
test("documented limit: an archive of what a body rule let the agent store (a .tar.gz served as data, no Content-Encoding) passes as is, and docs/proxy.md says so", async () => {
  const r = await rig({ mode: "placeholder", body: true });
  try {
    const ph = r.ph("TOK");
    const post = await h1(r, "/ok/blobs", { "content-type": "application/json", "x-token": ph }, { method: "POST", body: JSON.stringify({ content: `token ${ph}` }) });
    assert.equal(post.status, 201);
    const a = await h1(r, "/ok/tarball", { "x-token": ph });
    assert.equal(a.status, 200);
    assert.ok(gunzipSync(a.body).toString().includes(TOK), "the archive passes undecoded (what the docs warn of)");
    const docs = readFileSync(new URL("../docs/proxy.md", import.meta.url), "utf8").replace(/\s+/g, " ");
    assert.ok(docs.includes("an archive of what it stored (a `.tar.gz` or `.zip` download served as data, `application/gzip` with no `Content-Encoding`)"), "docs/proxy.md warns of archives under body rules");
  } finally {
    await r.close();
  }
});
