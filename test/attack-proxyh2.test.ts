/**
 * The injecting proxy attacked over HTTP/2 and through authority confusion (docs/proxy.md "Per
 * CONNECT, per request", "Protocols"; src/proxy/h2.ts, intercept.ts, forward.ts, request-bounds.ts).
 *
 * A hostile agent holding placeholders for leases bounded by `methods` (and `paths`) sends, over a
 * real ForwardProxy on LeaseEgress on a real vault (SQLite file), requests an HTTP/2 client library
 * would never send: hand-built HPACK with connection-specific headers, upper-case names, duplicate
 * pseudo-headers, `:protocol`, odd `:path` values; and requests whose method or path an upstream
 * framework reads from somewhere the proxy does not look.
 *
 * Upstreams are loopback TLS servers this file starts (HTTP/2 only, HTTP/1.1 only), resolved through
 * a fixed table; the connect step fails the test for anything but 127.0.0.1. Nothing leaves loopback.
 */
import { randomBytes } from "node:crypto";
import * as http2 from "node:http2";
import * as https from "node:https";
import type { IncomingHttpHeaders } from "node:http";
import { connect as netConnect, type AddressInfo, type Socket } from "node:net";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import type * as tls from "node:tls";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import type { Egress, EgressDecision } from "../src/proxy/egress.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type InjectionRule, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";
import { connectRaw, connectTunnel, inTime, loopbackOnly, openTunnel, readAll, tableResolver, tlsIn } from "./proxy-harness.js";

const H2 = "h2.confuse.test.example"; // HTTP/2-only upstream
const H1 = "h1.confuse.test.example"; // HTTP/1.1-only upstream
const AWAY = "away.confuse.test.example"; // covered by the "away" lease only
const CANARY = "ghp_" + randomBytes(18).toString("hex");
const CANARY_AWAY = "sk-" + randomBytes(18).toString("hex");

// --- upstreams ----------------------------------------------------------------------------------

interface Seen {
  proto: "h2" | "h1";
  host: string;
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  /** Header names as they came on the wire (h1: rawHeaders), for CGI-style mapping. */
  names: string[];
  trailers: IncomingHttpHeaders;
  body: string;
}
const seen: Seen[] = [];
const withCred = (s: Seen): boolean => JSON.stringify(s.headers).includes(CANARY) || JSON.stringify(s.trailers).includes(CANARY);

const upCa = LocalCa.create({ permitted: [H2, H1, AWAY] });

const h2up = http2.createSecureServer({ SNICallback: upCa.sniCallback, allowHTTP1: false });
h2up.on("stream", (stream, h) => {
  stream.on("error", () => {});
  const chunks: Buffer[] = [];
  let trailers: IncomingHttpHeaders = {};
  stream.on("trailers", (t: IncomingHttpHeaders) => (trailers = t));
  stream.on("data", (d: Buffer) => chunks.push(d));
  stream.on("end", () => {
    const headers: IncomingHttpHeaders = {};
    for (const [k, v] of Object.entries(h)) if (!k.startsWith(":")) headers[k] = v as string;
    seen.push({ proto: "h2", host: String(h[":authority"]), method: String(h[":method"]), path: String(h[":path"]), headers, names: Object.keys(headers), trailers, body: Buffer.concat(chunks).toString("latin1") });
    if (stream.closed || stream.destroyed) return;
    stream.respond({ ":status": 200, "content-type": "text/plain" });
    stream.end("ok");
  });
});

const h1up = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  req.on("error", () => {});
  res.on("error", () => {});
  const chunks: Buffer[] = [];
  req.on("data", (d: Buffer) => chunks.push(d));
  req.on("end", () => {
    const names = req.rawHeaders.filter((_, i) => i % 2 === 0);
    seen.push({ proto: "h1", host: String(req.headers.host), method: req.method!, path: req.url!, headers: req.headers, names, trailers: req.trailers, body: Buffer.concat(chunks).toString("latin1") });
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
  });
});

await new Promise<void>((r) => h2up.listen(0, "127.0.0.1", r));
await new Promise<void>((r) => h1up.listen(0, "127.0.0.1", r));
const h2port = (h2up.address() as AddressInfo).port;
const h1port = (h1up.address() as AddressInfo).port;
const portOf = (host: string): number => (host === H2 ? h2port : h1port);

const upSockets = new Set<Socket>();
const upSessions = new Set<http2.ServerHttp2Session>();
h2up.on("session", (s) => {
  upSessions.add(s);
  s.on("error", () => {});
  s.once("close", () => upSessions.delete(s));
});
for (const server of [h2up, h1up])
  server.on("secureConnection", (s: Socket) => {
    upSockets.add(s);
    s.once("close", () => upSockets.delete(s));
  });

// --- the rig --------------------------------------------------------------------------------------

interface CredSpec {
  name: string;
  value: string;
  rule: InjectionRule;
  /** Extra TOML lines of its policy rule (methods, paths). */
  extra?: string;
  domains?: string[];
}
interface Rig {
  port: number;
  ph: Record<string, string>;
  connects: ConnectTo[];
  uses(name: string): Promise<number>;
  close(): Promise<void>;
}
const rigs: Rig[] = [];
after(async () => {
  for (const r of rigs) await r.close().catch(() => {});
  for (const s of upSessions) s.destroy();
  for (const s of upSockets) s.destroy();
  h1up.closeAllConnections();
  await inTime(Promise.all([new Promise<void>((r) => h1up.close(() => r())), new Promise<void>((r) => h2up.close(() => r()))]), 5000, "closing the upstreams").catch(() => {});
});

async function rig(specs: CredSpec[]): Promise<Rig> {
  const hosts = [H2, H1];
  const policy = specs.map((c) => grant(c.name, ["bot"], [c.name], c.domains ?? hosts, c.extra ?? "")).join("");
  const { vault } = await makeVault({ policy });
  const admin = vault.admin();
  const creds: ProxyCredential[] = [];
  const ph: Record<string, string> = {};
  const leaseId: Record<string, string> = {};
  for (const c of specs) {
    await admin.storeSecret({ name: c.name, value: c.value });
    const lease = await admin.requestLease({ agent: "bot", secret: c.name, domains: c.domains ?? hosts });
    ph[c.name] = makePlaceholder(c.value);
    leaseId[c.name] = lease.id;
    creds.push({ lease, secret: `global/${c.name}`, placeholder: ph[c.name]!, value: c.value, rule: c.rule });
  }
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: () => {} });
  const guard = new SsrfGuard({ ports: [h2port, h1port], allow: ["127.0.0.1"], resolve: tableResolver({ [H2]: "127.0.0.1", [H1]: "127.0.0.1", [AWAY]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [H2, H1, AWAY] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly(connects) });
  const port = await proxy.listen();
  egress.start();
  let closed = false;
  const r: Rig = {
    port,
    ph,
    connects,
    uses: async (name) => (await admin.listLeases({ agent: "bot", id: leaseId[name]! }))[0]!.uses,
    close: async () => {
      if (closed) return;
      closed = true;
      await proxy.close();
      await egress.close();
    },
  };
  rigs.push(r);
  return r;
}

/** Raw HTTP/1.1 text through a tunnel to `host`; everything that comes back within `ms`. */
async function rawH1(r: Rig, host: string, text: string, ms = 2000): Promise<string> {
  const s = await openTunnel(r.port, host, portOf(host));
  s.write(text);
  return readAll(s, ms);
}
const statusOf = (answer: string): number => Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0);

async function h2session(r: Rig, host: string): Promise<http2.ClientHttp2Session> {
  const raw = await connectTunnel(r.port, host, portOf(host));
  const s: tls.TLSSocket = await tlsIn(raw, host, "h2");
  const session = http2.connect(`https://${host}`, { createConnection: () => s });
  session.on("error", () => {});
  return session;
}
function h2req(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    let st: http2.ClientHttp2Stream;
    try {
      st = session.request(headers, { endStream: body === undefined });
    } catch (e) {
      return resolve({ status: -2, body: String(e) });
    }
    let status = 0;
    const chunks: Buffer[] = [];
    st.on("response", (h) => (status = Number(h[":status"])));
    st.on("data", (d: Buffer) => chunks.push(d));
    st.on("end", () => resolve({ status, body: Buffer.concat(chunks).toString() }));
    st.on("error", () => resolve({ status: -1, body: "" }));
    st.on("close", () => resolve({ status, body: Buffer.concat(chunks).toString() }));
    if (body !== undefined) st.end(body);
  });
}

// --- a raw HTTP/2 client: HPACK literals by hand, so nothing the client library refuses is held back ---

/** An HPACK integer with an `n`-bit prefix and the high bits `first`. */
function hpackInt(value: number, n: number, first: number): number[] {
  const max = (1 << n) - 1;
  if (value < max) return [first | value];
  const out = [first | max];
  let v = value - max;
  while (v >= 128) {
    out.push((v % 128) + 128);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
}
/** One header as an HPACK "literal without indexing, new name" (no Huffman): any bytes, as given. */
function hpackLiteral(name: string, value: string): Buffer {
  const n = Buffer.from(name, "latin1");
  const v = Buffer.from(value, "latin1");
  return Buffer.concat([Buffer.from([0x00]), Buffer.from(hpackInt(n.length, 7, 0)), n, Buffer.from(hpackInt(v.length, 7, 0)), v]);
}
function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const END_STREAM = 0x1;
const END_HEADERS = 0x4;

/** What came back on one stream of a raw session: its status (0: none), a reset code, or GOAWAY. */
interface RawAnswer {
  status: number;
  rst: number | null;
  goaway: boolean;
}

/**
 * Opens an h2 tunnel to `host` and sends, on stream 1, a HEADERS frame made of `fields` exactly as
 * given (then DATA `body` if set, then trailers `trailers` if set); reads frames for `ms` and says what
 * came back on stream 1. The response HEADERS are decoded for `:status` only (the proxy's server
 * sends it as an indexed or literal field: both read).
 */
async function rawH2(r: Rig, host: string, fields: [string, string][], opts: { body?: string; trailers?: [string, string][]; ms?: number } = {}): Promise<RawAnswer> {
  const raw = await connectTunnel(r.port, host, portOf(host));
  const s = await tlsIn(raw, host, "h2");
  const hasMore = opts.body !== undefined || opts.trailers !== undefined;
  const block = Buffer.concat(fields.map(([n, v]) => hpackLiteral(n, v)));
  const out = [PREFACE, frame(0x4, 0, 0, Buffer.alloc(0)), frame(0x1, END_HEADERS | (hasMore ? 0 : END_STREAM), 1, block)];
  if (opts.body !== undefined) out.push(frame(0x0, opts.trailers ? 0 : END_STREAM, 1, Buffer.from(opts.body, "latin1")));
  if (opts.trailers) out.push(frame(0x1, END_HEADERS | END_STREAM, 1, Buffer.concat(opts.trailers.map(([n, v]) => hpackLiteral(n, v)))));
  s.write(Buffer.concat(out));
  const ans: RawAnswer = { status: 0, rst: null, goaway: false };
  let buf = Buffer.alloc(0);
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, opts.ms ?? 1500);
    const done = (): void => (clearTimeout(timer), resolve());
    s.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 9) {
        const len = buf.readUIntBE(0, 3);
        if (buf.length < 9 + len) break;
        const type = buf[3]!;
        const flags = buf[4]!;
        const id = buf.readUInt32BE(5) & 0x7fffffff;
        const payload = buf.subarray(9, 9 + len);
        buf = buf.subarray(9 + len);
        if (type === 0x4 && (flags & 0x1) === 0) s.write(frame(0x4, 0x1, 0, Buffer.alloc(0))); // SETTINGS ack
        if (type === 0x7) ans.goaway = true;
        if (id !== 1) continue;
        if (type === 0x3) ans.rst = payload.readUInt32BE(0);
        if (type === 0x1 && ans.status === 0) ans.status = statusIn(payload, flags);
        if ((type === 0x1 || type === 0x0) && (flags & END_STREAM) !== 0) return done();
        if (type === 0x3) return done();
      }
    });
    s.on("close", done);
  });
  s.destroy();
  return ans;
}
/** `:status` in a response HEADERS block: an indexed static entry (8..14) or a literal with indexed name 8. */
function statusIn(payload: Buffer, flags: number): number {
  let p = payload;
  if (flags & 0x8) p = p.subarray(1, p.length - p[0]!); // PADDED
  if (flags & 0x20) p = p.subarray(5); // PRIORITY
  const b = p[0]!;
  const STATIC: Record<number, number> = { 8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500 };
  if (b & 0x80) return STATIC[b & 0x7f] ?? -1;
  // Literal with indexed name :status (index 8): 0x48 (incremental), 0x08 (without), 0x18 (never).
  if ((b & 0x3f) === 8 || (b & 0x0f) === 8) {
    const lenByte = p[1]!;
    const len = lenByte & 0x7f;
    const bytes = p.subarray(2, 2 + len);
    return Number(lenByte & 0x80 ? huffmanDigits(bytes) : bytes.toString("latin1"));
  }
  return -1;
}

/** Decodes a Huffman-coded string of digits (RFC 7541 Appendix B: 0-2 in 5 bits, 3-9 in 6). */
function huffmanDigits(bytes: Buffer): string {
  const bits = [...bytes].map((b) => b.toString(2).padStart(8, "0")).join("");
  const codes: Record<string, string> = { "00000": "0", "00001": "1", "00010": "2", "011001": "3", "011010": "4", "011011": "5", "011100": "6", "011101": "7", "011110": "8", "011111": "9" };
  let out = "";
  let cur = "";
  for (const b of bits) {
    cur += b;
    if (codes[cur] !== undefined) {
      out += codes[cur];
      cur = "";
    }
    if (cur.length > 6) return "-1";
  }
  return out;
}

// Placeholder tests are added below.
// --- how common upstream frameworks read a request's method and path --------------------------------

/**
 * The CGI-style variable a header becomes (Rack on Puma or WEBrick, PHP's $_SERVER, WSGI): upper
 * case, `-` as `_`, so `X-HTTP-Method-Override` and `x_http_method_override` are one variable.
 */
const cgiName = (header: string): string => "HTTP_" + header.toUpperCase().replace(/-/g, "_");

/**
 * The names PHP gives query parameters ($_GET): leading spaces dropped, the name ended at its first NUL
 * (php_register_variable_ex copies it with strlen), then `.` and ` ` as `_`.
 */
function phpQuery(target: string): Record<string, string> {
  const q = target.indexOf("?");
  const out: Record<string, string> = {};
  if (q < 0) return out;
  for (const [k, v] of new URLSearchParams(target.slice(q + 1))) {
    const name = k.replace(/^ +/, "").split("\0", 1)[0]!.replace(/[ .]/g, "_");
    if (!name.includes("[")) out[name] = v;
  }
  return out;
}

/**
 * The method and path an upstream built on Rack (Rails, Sinatra: Rack::MethodOverride) or on Symfony
 * (Laravel: Request::getMethod with the method parameter override on, as Laravel sets it) acts on,
 * from what it received: on a POST, the X-HTTP-Method-Override variable, else (Symfony) `_method`
 * from the query; the path from the X-Original-URL / X-Rewrite-URL variables when set (older Symfony
 * and Zend, IIS).
 */
function actedOn(s: Seen): { method: string; path: string } {
  const env: Record<string, string> = {};
  for (const name of s.names) {
    const v = s.headers[name.toLowerCase()];
    if (v !== undefined) env[cgiName(name)] = Array.isArray(v) ? v.join(", ") : v;
  }
  let method = s.method;
  if (method === "POST") {
    const o = env["HTTP_X_HTTP_METHOD_OVERRIDE"] ?? phpQuery(s.path)["_method"];
    if (o !== undefined) method = o.toUpperCase();
  }
  const path = env["HTTP_X_ORIGINAL_URL"] ?? env["HTTP_X_REWRITE_URL"] ?? s.path.split("?")[0]!;
  return { method, path };
}

// =================================================================================================
// Method and URL overrides the proxy does not recognise, though the upstream does
// =================================================================================================

test(
  "a method- or URL-override header written with underscores (x_http_method_override, X_Original_URL), which Rack/Puma and PHP read as the hyphenated one, is refused before any use on a methods/paths grant (HTTP/1.1 and HTTP/2)",
  { timeout: 30_000 },
  async () => {
    const r = await rig([{ name: "b", value: CANARY, rule: { mode: "placeholder" }, extra: 'methods = ["GET", "POST"]\npaths = ["/ok/"]' }]);
    const ph = r.ph.b!;
    try {
      // The hyphenated forms are refused (403 override_header, before any use): the rig is sound.
      for (const [method, header] of [["POST", "X-HTTP-Method-Override: DELETE"], ["GET", "X-Original-URL: /admin/drop"]] as const) {
        const before = seen.length;
        const a = await rawH1(r, H1, `${method} /ok/x HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${ph}\r\n${header}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
        assert.equal(statusOf(a), 403, `${header}: ${a.slice(0, 120)}`);
        assert.equal(seen.length, before);
      }
      assert.equal(await r.uses("b"), 0);

      const variants: [string, string, string][] = [
        ["POST", "x_http_method_override", "DELETE"],
        ["POST", "X_HTTP_Method_Override", "DELETE"],
        ["POST", "X-HTTP_Method-Override", "DELETE"],
        ["GET", "x_original_url", "/admin/drop"],
        ["GET", "X_Rewrite_URL", "/admin/drop"],
      ];
      const through: string[] = [];
      for (const [method, name, value] of variants) {
        // HTTP/1.1 to an HTTP/1.1 upstream.
        let before = seen.length;
        await rawH1(r, H1, `${method} /ok/x HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${ph}\r\n${name}: ${value}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
        for (const s of seen.slice(before).filter(withCred)) {
          const acted = actedOn(s);
          if (acted.method !== "GET" && acted.method !== "POST") through.push(`h1 ${name}: the upstream performs ${acted.method} ${acted.path}`);
          else if (!acted.path.startsWith("/ok/")) through.push(`h1 ${name}: the upstream serves ${acted.method} ${acted.path}`);
        }
        // HTTP/2 to an HTTP/2 upstream (names in lower case, as HTTP/2 requires).
        before = seen.length;
        const session = await h2session(r, H2);
        await h2req(session, { ":method": method, ":path": "/ok/x", authorization: `Bearer ${ph}`, [name.toLowerCase()]: value }, method === "POST" ? "" : undefined);
        session.destroy();
        for (const s of seen.slice(before).filter(withCred)) {
          const acted = actedOn(s);
          if (acted.method !== "GET" && acted.method !== "POST") through.push(`h2 ${name}: the upstream performs ${acted.method} ${acted.path}`);
          else if (!acted.path.startsWith("/ok/")) through.push(`h2 ${name}: the upstream serves ${acted.method} ${acted.path}`);
        }
      }
      assert.deepEqual(
        through,
        [],
        'docs/proxy.md ("a request carrying a method-override header ... any case ... is refused"; "the upstream gets the canonical path checked, and no method- or URL-override header"): with the grant methods = ["GET", "POST"], paths = ["/ok/"], these went upstream with the real credential',
      );
    } finally {
      await r.close();
    }
  },
);

test(
  "a _method query parameter written as PHP names it (.method, +_method, %20_method, %2Emethod, _method%00, _method%00x) is refused before any use on a POST under methods = [\"GET\", \"POST\"] (HTTP/1.1 and HTTP/2)",
  { timeout: 30_000 },
  async () => {
    const r = await rig([{ name: "b", value: CANARY, rule: { mode: "placeholder" }, extra: 'methods = ["GET", "POST"]' }]);
    const ph = r.ph.b!;
    try {
      // The plain form is refused: the rig is sound.
      const plain = await rawH1(r, H1, `POST /ok/x?_method=DELETE HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${ph}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
      assert.equal(statusOf(plain), 403, plain.slice(0, 120));
      const through: string[] = [];
      for (const q of ["?.method=DELETE", "?+_method=DELETE", "?%20_method=DELETE", "?%2Emethod=DELETE", "?a=1&.method=delete", "?_method%00=DELETE", "?_method%00x=DELETE", "?a=1&_METHOD%00=delete"]) {
        let before = seen.length;
        await rawH1(r, H1, `POST /ok/x${q} HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${ph}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
        for (const s of seen.slice(before).filter(withCred)) if (actedOn(s).method === "DELETE") through.push(`h1 POST /ok/x${q}: the upstream performs DELETE`);
        before = seen.length;
        const session = await h2session(r, H2);
        await h2req(session, { ":method": "POST", ":path": `/ok/x${q}`, authorization: `Bearer ${ph}` }, "");
        session.destroy();
        for (const s of seen.slice(before).filter(withCred)) if (actedOn(s).method === "DELETE") through.push(`h2 POST /ok/x${q}: the upstream performs DELETE`);
      }
      assert.deepEqual(
        through,
        [],
        'docs/proxy.md ("a _method query parameter is refused like a method-override header"): PHP turns a leading space and "." in a parameter name into "_" and ends the name at a NUL (Symfony\'s Request::getMethod then reads _method), so these reached the upstream with the real credential',
      );
    } finally {
      await r.close();
    }
  },
);

// =================================================================================================
// Malformed HTTP/2 requests, as no client library would send them
// =================================================================================================

test(
  "held: hand-built HTTP/2 requests with connection-specific headers, te other than trailers, upper-case names, duplicate or late pseudo-headers, :protocol, an empty :path or one with a space, tab or DEL are reset; nothing reaches either upstream, no use is counted",
  { timeout: 60_000 },
  async () => {
    const r = await rig([{ name: "b", value: CANARY, rule: { mode: "placeholder" }, extra: 'methods = ["GET", "POST"]\npaths = ["/ok/"]' }]);
    const ph = r.ph.b!;
    try {
      const bad: string[] = [];
      for (const host of [H1, H2]) {
        const base = (m = "GET", p = "/ok/x"): [string, string][] => [[":method", m], [":scheme", "https"], [":authority", host], [":path", p]];
        const auth: [string, string] = ["authorization", `Bearer ${ph}`];
        const rows: Record<string, [string, string][]> = {
          "connection: close": [...base(), ["connection", "close"], auth],
          "transfer-encoding: chunked": [...base("POST"), ["transfer-encoding", "chunked"], auth],
          "keep-alive": [...base(), ["keep-alive", "timeout=5"], auth],
          "upgrade: websocket": [...base(), ["upgrade", "websocket"], auth],
          "proxy-connection": [...base(), ["proxy-connection", "keep-alive"], auth],
          "te: gzip": [...base(), ["te", "gzip"], auth],
          "Authorization (upper case)": [...base(), ["Authorization", `Bearer ${ph}`]],
          "X-HTTP-Method-Override (upper case) on POST": [...base("POST"), ["X-HTTP-Method-Override", "DELETE"], auth],
          "two :path": [...base(), [":path", "/admin"], auth],
          "two :method": [...base(), [":method", "DELETE"], auth],
          "two :authority": [...base(), [":authority", AWAY], auth],
          ":authority after a header": [[":method", "GET"], [":scheme", "https"], auth, [":authority", AWAY], [":path", "/ok/x"]],
          "extended CONNECT (:protocol websocket)": [[":method", "CONNECT"], [":protocol", "websocket"], [":scheme", "https"], [":authority", host], [":path", "/ok/x"], auth],
          ":protocol on a GET": [...base(), [":protocol", "websocket"], auth],
          "empty :path": [...base("GET", ""), auth],
          ":path with a space": [...base("GET", "/ok/x /admin"), auth],
          ":path with a tab": [...base("GET", "/ok/x\t/admin"), auth],
          ":path with DEL": [...base("GET", "/ok/\x7f"), auth],
        };
        for (const [what, fields] of Object.entries(rows)) {
          const before = seen.length;
          const a = await rawH2(r, host, fields, { ms: 1000 });
          if (seen.length !== before) bad.push(`${host}: ${what} reached the upstream as ${seen.slice(before).map((s) => `${s.method} ${s.path}`).join(", ")}`);
          if (a.status === 200) bad.push(`${host}: ${what} was answered 200`);
          if (a.rst === null && a.status === 0 && !a.goaway) bad.push(`${host}: ${what} got no answer at all`);
        }
        // The same tunnel kind serves a well-formed request (the rows were refused for what they are).
        const before = seen.length;
        const ok = await rawH2(r, host, [...base(), auth]);
        assert.equal(ok.status, 200, `${host}: a well-formed request`);
        assert.equal(seen.slice(before).filter(withCred).length, 1);
      }
      assert.deepEqual(bad, []);
      assert.equal(await r.uses("b"), 2, "one use per well-formed request, none for the malformed ones");
    } finally {
      await r.close();
    }
  },
);

test(
  "held: over HTTP/2, a stream with no :authority whose Host names another covered host is 421, and a :path with a fragment is refused under paths before any use; a placeholder split across two cookie fields is neither filled in nor counted",
  { timeout: 30_000 },
  async () => {
    const r = await rig([
      { name: "b", value: CANARY, rule: { mode: "placeholder" }, extra: 'paths = ["/ok/"]' },
      { name: "away", value: CANARY_AWAY, rule: { mode: "placeholder" }, domains: [AWAY] },
    ]);
    const ph = r.ph.b!;
    try {
      for (const host of [H1, H2]) {
        const before = seen.length;
        const hostOnly = await rawH2(r, host, [[":method", "GET"], [":scheme", "https"], [":path", "/ok/x"], ["host", AWAY], ["authorization", `Bearer ${ph}`]]);
        assert.equal(hostOnly.status, 421, `${host}: Host naming ${AWAY} without :authority`);
        const frag = await rawH2(r, host, [[":method", "GET"], [":scheme", "https"], [":authority", host], [":path", "/ok/x#/../../admin"], ["authorization", `Bearer ${ph}`]]);
        assert.equal(frag.status, 403, `${host}: a fragment in :path`);
        assert.equal(seen.length, before, `${host}: nothing reached the upstream`);
        // Cookie crumbs (RFC 9113 8.2.3): joined with "; ", so halves of a placeholder stay halves.
        const split = await rawH2(r, host, [[":method", "GET"], [":scheme", "https"], [":authority", host], [":path", "/ok/c"], ["cookie", `s=${ph.slice(0, 12)}`], ["cookie", ph.slice(12)]]);
        assert.equal(split.status, 200);
        const got = seen.slice(before);
        assert.equal(got.filter(withCred).length, 0, `${host}: the cookie halves were not joined into the placeholder and filled in`);
      }
      assert.equal(await r.uses("b"), 0);
      assert.equal(await r.uses("away"), 0);
    } finally {
      await r.close();
    }
  },
);

// =================================================================================================
// The proxy's own port, under open egress
// =================================================================================================

test("held: under open egress, a CONNECT or plain-http request to the proxy's own listening port (by address, localhost, a name mapped to loopback) is refused even when [proxy] ports lists that port; nothing is connected", { timeout: 20_000 }, async () => {
  const connects: ConnectTo[] = [];
  const egress: Egress = { decide: (): EgressDecision => ({ kind: "tunnel" }) };
  const proxy = new ForwardProxy({
    egress,
    ca: LocalCa.create({ permitted: ["lessor.invalid"] }),
    // The default port list: the proxy's own port is not on it.
    guard: new SsrfGuard({ ports: [443, 80], resolve: tableResolver({ "self.confuse.test.example": "127.0.0.1" }) }),
    connect: (to) => {
      connects.push(to);
      assert.fail(`the proxy connected to ${to.host} port ${to.port}`);
    },
  });
  const port = await proxy.listen();
  // The owner listed the first proxy's port (as a newcomer might, to reach a service on it) but allowed
  // no private range: loopback is still refused by its class.
  const proxy2 = new ForwardProxy({
    egress,
    ca: LocalCa.create({ permitted: ["lessor.invalid"] }),
    guard: new SsrfGuard({ ports: [443, port], resolve: tableResolver({ "self.confuse.test.example": "127.0.0.1" }) }),
    connect: (to) => {
      connects.push(to);
      assert.fail(`the proxy connected to ${to.host} port ${to.port}`);
    },
  });
  const port2 = await proxy2.listen();
  try {
    for (const [at, own] of [[port, port], [port2, port]] as const) {
      for (const h of ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "self.confuse.test.example", "127.0.0.1."]) {
        const { head, raw } = await connectRaw(at, `${h}:${own}`);
        raw.destroy();
        assert.match(head, /^HTTP\/1\.1 (400|403) /, `CONNECT ${h}:${own}: ${head.split("\r\n")[0]}`);
        const plain = await new Promise<string>((res) => {
          const s = netConnect(at, "127.0.0.1");
          const chunks: Buffer[] = [];
          s.write(`GET http://${h}:${own}/ HTTP/1.1\r\nHost: ${h}:${own}\r\nConnection: close\r\n\r\n`);
          s.on("data", (d: Buffer) => chunks.push(d));
          s.on("close", () => res(Buffer.concat(chunks).toString("latin1")));
          s.on("error", () => res(Buffer.concat(chunks).toString("latin1")));
        });
        assert.match(plain, /^HTTP\/1\.1 (400|403) /, `GET http://${h}:${own}/: ${plain.split("\r\n")[0]}`);
      }
    }
    assert.deepEqual(connects, []);
  } finally {
    await proxy.close();
    await proxy2.close();
  }
});
