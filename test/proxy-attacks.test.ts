/**
 * The injecting proxy attacked by a hostile agent: each test is one attack, run through a real
 * ForwardProxy with real TLS on both sides, real loopback upstreams (HTTP/1.1 and HTTP/2) and a real
 * vault (SQLite, policy with method and path rules, audit) behind LeaseEgress, as `lessor run` wires it.
 *
 * - domain spoofing: Host / :authority / SNI / CONNECT authority that disagree, userinfo, absolute form;
 * - path rule bypass: dot segments in their encodings, backslashes, `;`, `//`, a keep-alive switch;
 * - tripwire evasion: a placeholder percent-encoded, base64-encoded, in a header name, split across
 *   two headers, in a request body (split across chunks, encoded; HTTP/1.1 and HTTP/2), in HTTP/2
 *   request trailers;
 * - response masking: a credential reflected by the upstream in response headers (CORS `Origin`
 *   reflection, a redirect keeping the query), the reason phrase, HTTP/2 trailers, and in encoded forms
 *   (the base64 of a Basic pair, the percent-encoded query value);
 * - request smuggling between agent, proxy and upstream (CL+TE, two Content-Lengths, obs-fold, an h2
 *   body longer than its content-length);
 * - SSRF through the proxy's CONNECT path, every address form, mixed answers, a second lookup.
 *
 * Traffic goes to loopback only: names resolve through an injected table, and the connect step is
 * instrumented so that any other address fails the test (and, for the SSRF test, any connect at all).
 * The canary values never appear in the audit, the warnings or an answer the agent gets.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import * as https from "node:https";
import type { IncomingHttpHeaders } from "node:http";
import { connect as netConnect, type AddressInfo } from "node:net";
import * as tls from "node:tls";
import { brotliCompressSync, brotliDecompressSync, constants as zc, gunzipSync, gzipSync } from "node:zlib";
import { randomBytes } from "node:crypto";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import type { Egress, EgressDecision } from "../src/proxy/egress.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo, type Resolver } from "../src/proxy/guard.js";
import { LeaseEgress, WITHHELD_PATH, type ProxyCredential, type InjectionRule } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";
import { closeUpstreams, connectRaw, loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";

const HOST = "api.attack.example"; // HTTP/1.1 upstream
const H2HOST = "h2.attack.example"; // HTTP/2 upstream
const OTHER = "other.attack.example"; // covered by OTH's lease only

// Canary values: none may ever reach the agent, the audit or a warning.
const TOK = "ghp_" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa12";
const BAS = "bas-" + "CANARYbasicPw0rd9876543210zz";
const QRY = "qk+A/b=Cd+Ef/Gh=Ij+Kl/Mn=Op+Qr/CANARY";
const OTH = "sk-oth-" + "CANARYotherHost0123456789abcd";
const VALUES = [TOK, BAS, QRY, OTH];

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// --- upstreams: record what they got; reflect request data into response headers and trailers ------

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}
const seen: Seen[] = [];

const upCa = LocalCa.create({ permitted: [HOST, H2HOST, OTHER] });

/** Request body bytes as each upstream received them, in order (an aborted request's too). */
const arrived: string[] = [];

const up1 = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  const chunks: Buffer[] = [];
  req.on("error", () => {});
  req.on("data", (d: Buffer) => (chunks.push(d), arrived.push(d.toString("latin1"))));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("latin1");
    seen.push({ method: req.method!, url: req.url!, headers: req.headers, body });
    const url = new URL(req.url!, `https://${HOST}`);
    if (url.pathname === "/ok/gz2") {
      // Compressed twice, labelled so: one decode is not enough to see the secret.
      res.writeHead(200, { "content-encoding": "gzip, gzip" });
      res.end(gzipSync(gzipSync(JSON.stringify(req.headers))));
      return;
    }
    if (url.pathname === "/ok/zstd") {
      res.writeHead(200, { "content-encoding": "zstd" });
      res.end(JSON.stringify(req.headers));
      return;
    }
    // A CORS-style reflection of Origin, a redirect that keeps the query, an echo of Authorization, a
    // reason phrase from a header, and a trailer: all things real services do with request data.
    const origin = String(req.headers.origin ?? "*");
    res.writeHead(200, String(req.headers["x-reason"] ?? "OK"), {
      "content-type": "application/json",
      "access-control-allow-origin": origin,
      location: `https://${HOST}/ok/next${url.search}`,
      "x-echo-auth": String(req.headers.authorization ?? ""),
      trailer: "x-trailer-echo",
    });
    res.addTrailers({ "x-trailer-echo": origin });
    res.end(JSON.stringify({ url: req.url, headers: req.headers }));
  });
});
await new Promise<void>((r) => up1.listen(0, "127.0.0.1", r));
const port1 = (up1.address() as AddressInfo).port;

const up2 = http2.createSecureServer({ SNICallback: upCa.sniCallback, allowHTTP1: false });
/** Request trailers as the HTTP/2 upstream received them. */
const arrivedTrailers: IncomingHttpHeaders[] = [];
up2.on("stream", (stream, h) => {
  stream.on("error", () => {});
  const chunks: Buffer[] = [];
  stream.on("data", (d: Buffer) => (chunks.push(d), arrived.push(d.toString("latin1"))));
  stream.on("trailers", (t: IncomingHttpHeaders) => arrivedTrailers.push(t));
  stream.on("end", () => {
    const headers: IncomingHttpHeaders = {};
    for (const [k, v] of Object.entries(h)) if (!k.startsWith(":")) headers[k] = v as string;
    seen.push({ method: String(h[":method"]), url: String(h[":path"]), headers, body: Buffer.concat(chunks).toString("latin1") });
    if (stream.destroyed || stream.closed) return; // reset by the proxy (the body tripwire, say)
    const origin = String(h.origin ?? "*");
    stream.respond({ ":status": 200, "access-control-allow-origin": origin, "x-echo-auth": String(h.authorization ?? "") }, { waitForTrailers: true });
    stream.on("wantTrailers", () => stream.sendTrailers({ "x-trailer-echo": origin }));
    stream.end(JSON.stringify({ url: h[":path"], headers }));
  });
});
await new Promise<void>((r) => up2.listen(0, "127.0.0.1", r));
const port2 = (up2.address() as AddressInfo).port;

after(async () => {
  await closeUpstreams(up1, up2);
});

const portOf = (host: string): number => (host === H2HOST ? port2 : port1);

// --- the rig: a real vault, its leases, LeaseEgress, the proxy --------------------------------------

const POLICY =
  grant("api", ["bot"], ["tok", "bas", "qry"], [HOST, H2HOST], 'paths = ["/ok/"]\nmethods = ["GET", "POST", "HEAD"]') +
  grant("other", ["bot"], ["oth"], [OTHER]);

interface Rig {
  port: number;
  creds: ProxyCredential[];
  ph: (name: "tok" | "bas" | "qry" | "oth") => string;
  warns: string[];
  connects: ConnectTo[];
  /** Every audit row, as text. */
  audit(): Promise<string>;
  /** True when a proxy_request alarm is in the audit. */
  alarmed(): Promise<boolean>;
  /** The audit rows of these types. */
  auditRows(types: string[]): Promise<{ detail: string | null }[]>;
  /** Live (not revoked) lease ids. */
  live(): Promise<Set<string>>;
  /** Rotates a secret in the vault (the owner, while the run goes on). */
  rotate(name: "tok" | "bas" | "qry" | "oth", value: string): Promise<void>;
  close(): Promise<void>;
}

async function rig(): Promise<Rig> {
  const { vault } = await makeVault({ policy: POLICY });
  const admin = vault.admin();
  const creds: ProxyCredential[] = [];
  const add = async (name: string, value: string, domains: string[], rule: InjectionRule): Promise<void> => {
    await admin.storeSecret({ name, value });
    const lease = await admin.requestLease({ agent: "bot", secret: name, domains });
    creds.push({ lease, secret: `global/${name}`, placeholder: makePlaceholder(value), value, rule });
  };
  await add("tok", TOK, [HOST, H2HOST], { mode: "placeholder" });
  await add("bas", BAS, [HOST, H2HOST], { mode: "basic", username: "x-access-token" });
  await add("qry", QRY, [HOST, H2HOST], { mode: "query", param: "api_key" });
  await add("oth", OTH, [OTHER], { mode: "placeholder" });
  const warns: string[] = [];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: (l) => warns.push(l) });
  const guard = new SsrfGuard({ ports: [port1, port2], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1", [H2HOST]: "127.0.0.1", [OTHER]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST, H2HOST, OTHER] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly(connects) });
  const port = await proxy.listen();
  return {
    port,
    creds,
    ph: (name) => creds.find((c) => c.secret === `global/${name}`)!.placeholder,
    warns,
    connects,
    audit: async () => JSON.stringify(await admin.auditQuery({ limit: 10_000 })),
    alarmed: async () => (await admin.auditQuery({ types: ["proxy_request"], limit: 10_000 })).some((e) => JSON.parse(e.detail ?? "{}").alarm === true),
    auditRows: (types) => admin.auditQuery({ types, limit: 10_000 }),
    live: async () => new Set((await admin.listLeases({ agent: "bot" })).filter((l) => l.revokedAt === null).map((l) => l.id)),
    rotate: async (name, value) => void (await admin.rotateSecret({ scope: "global", name }, value)),
    close: async () => {
      await proxy.close();
      await egress.close();
    },
  };
}

// --- clients ----------------------------------------------------------------------------------------

/** A CONNECT tunnel to `host` through the proxy, TLS inside with the given SNI and ALPN. */
const tunnel = (r: Rig, host: string, alpn = "http/1.1", sni = host): Promise<tls.TLSSocket> => openTunnel(r.port, host, portOf(host), { alpn, sni });

/** Writes raw HTTP/1.1 bytes in a fresh tunnel and reads until the proxy closes it (or `ms` pass). */
async function rawH1(r: Rig, bytes: string, host = HOST, ms = 3000): Promise<string> {
  const s = await tunnel(r, host);
  s.write(bytes);
  return readAll(s, ms);
}


const statusOf = (answer: string): number => Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0);
const allStatuses = (answer: string): number[] => [...answer.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));

interface H2Answer {
  headers: http2.IncomingHttpHeaders;
  body: string;
  trailers: http2.IncomingHttpHeaders;
}

async function h2Request(r: Rig, host: string, headers: http2.OutgoingHttpHeaders, body?: string | Buffer): Promise<H2Answer> {
  const s = await tunnel(r, host, "h2");
  const session = http2.connect(`https://${host}`, { createConnection: () => s });
  try {
    return await new Promise<H2Answer>((resolve, reject) => {
      const req = session.request({ ":method": "GET", ":path": "/ok/reflect", ...headers }, { endStream: body === undefined });
      let got: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      req.on("response", (h) => (got = h));
      req.on("trailers", (t) => (trailers = t));
      req.on("data", (d: Buffer) => chunks.push(d));
      req.on("end", () => resolve({ headers: got, body: Buffer.concat(chunks).toString("latin1"), trailers }));
      req.on("error", reject);
      if (body !== undefined) req.end(body);
    });
  } finally {
    session.destroy();
  }
}

/**
 * Fails if `text` holds a canary value in any form the agent could turn back into it: as is,
 * percent-decoded (once or twice), or inside base64 (standard or URL-safe) at any alignment.
 */
function assertNoCanary(text: string, what: string): void {
  const forms = new Set<string>([text]);
  let t = text;
  for (let i = 0; i < 2; i++) {
    t = t.replace(/%([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
    forms.add(t);
    forms.add(t.replace(/\+/g, " "));
  }
  for (const run of text.match(/[A-Za-z0-9+/_-]{12,}={0,2}/g) ?? [])
    for (let cut = 0; cut < 4; cut++) {
      const part = run.slice(cut).replace(/-/g, "+").replace(/_/g, "/");
      forms.add(Buffer.from(part, "base64").toString("latin1"));
    }
  for (const f of forms)
    for (const v of VALUES) {
      assert.ok(!f.includes(v), `${what} leaks a canary value (${v.slice(0, 6)}…)`);
      if (v === QRY) assert.ok(!f.includes(QRY.replace(/\+/g, " ")), `${what} leaks the query canary (form-decoded)`);
    }
}

async function assertCanaryFree(r: Rig): Promise<void> {
  assertNoCanary(await r.audit(), "the audit trail");
  assertNoCanary(r.warns.join("\n"), "the warnings");
}

/** True if the upstream got a request whose target contains `part`. */
const upstreamGot = (part: string): boolean => seen.some((s) => s.url.includes(part));

// --- domain spoofing ------------------------------------------------------------------------------------

test("domain spoofing inside a tunnel: a Host, absolute-form target or userinfo naming another host is refused; nothing goes upstream", async () => {
  const r = await rig();
  try {
    const before = seen.length;
    const cases: [string, number][] = [
      [`GET /ok/a1 HTTP/1.1\r\nHost: ${OTHER}\r\nConnection: close\r\n\r\n`, 421],
      [`GET /ok/a2 HTTP/1.1\r\nHost: ${HOST}@${OTHER}\r\nConnection: close\r\n\r\n`, 421],
      [`GET /ok/a3 HTTP/1.1\r\nHost: ${OTHER}@${HOST}\r\nConnection: close\r\n\r\n`, 421],
      [`GET /ok/a4 HTTP/1.1\r\nHost: ${HOST}.${OTHER}\r\nConnection: close\r\n\r\n`, 421],
      [`GET /ok/a5 HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n`, 421],
      [`GET https://${OTHER}/ok/a6 HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`, 400],
      [`GET //${OTHER}/ok/a7 HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`, 403],
    ];
    for (const [bytes, status] of cases) {
      const answer = await rawH1(r, bytes);
      const got = statusOf(answer);
      if (status === 403) assert.ok(got === 403 || got === 400, `${JSON.stringify(bytes.split("\r\n")[0])}: ${got}`);
      else assert.equal(got, status, `${JSON.stringify(bytes.split("\r\n").slice(0, 2))}: ${answer.slice(0, 200)}`);
    }
    assert.equal(seen.length, before, "no spoofed request reached an upstream");

    // Upper case, a trailing dot and the port name the same host: served, and the upstream sees the tunnel's Host only.
    const ok = await rawH1(r, `GET /ok/b1 HTTP/1.1\r\nHost: API.Attack.Example.:${port1}\r\nHost: ${OTHER}\r\nConnection: close\r\n\r\n`);
    assert.ok([200, 400].includes(statusOf(ok)), ok.slice(0, 100));
    for (const s of seen.slice(before)) assert.equal(s.headers.host, `${HOST}:${port1}`);
    await assertCanaryFree(r);
  } finally {
    await r.close();
  }
});

test("domain spoofing at CONNECT: userinfo, junk and other hosts' names are refused before any connection; an SNI naming another covered host cuts the tunnel", async () => {
  const r = await rig();
  try {
    for (const authority of [`user@${HOST}:${port1}`, `${HOST}@${OTHER}:${port1}`, `${HOST}%00.evil:${port1}`, `${HOST}\\@x:${port1}`, `evil.attack.example:${port1}`, `xn--80ak6aa92e.com:${port1}`]) {
      const before = r.connects.length;
      const { head, raw } = await connectRaw(r.port, authority);
      raw.destroy();
      assert.match(head, /^HTTP\/1\.1 (400|403) /, `${authority}: ${head}`);
      assert.equal(r.connects.length, before, `${authority}: nothing connected`);
    }
    // A tunnel for HOST whose TLS names OTHER (which the CA may certify): closed, nothing forwarded.
    const before = seen.length;
    const { raw, head } = await connectRaw(r.port, `${HOST}:${port1}`);
    assert.match(head, /^HTTP\/1\.1 200 /);
    raw.resume();
    const s = tls.connect({ socket: raw, servername: OTHER, rejectUnauthorized: false });
    s.on("error", () => {});
    s.write(`GET /ok/sni HTTP/1.1\r\nHost: ${OTHER}\r\nConnection: close\r\n\r\n`);
    const answer = await readAll(s, 2000);
    assert.doesNotMatch(answer, /HTTP\/1\.1 200/);
    await delay(50);
    assert.equal(seen.length, before);
  } finally {
    await r.close();
  }
});

test("domain spoofing over HTTP/2: an :authority or Host naming another host is refused (421); nothing goes upstream", async () => {
  const r = await rig();
  try {
    const before = seen.length;
    for (const h of [{ ":authority": OTHER }, { ":authority": `${OTHER}@${H2HOST}` }, { ":authority": H2HOST, host: OTHER }]) {
      const a = await h2Request(r, H2HOST, h);
      assert.equal(a.headers[":status"], 421, JSON.stringify(h));
    }
    assert.equal(seen.length, before);
  } finally {
    await r.close();
  }
});

// --- method and path rules ------------------------------------------------------------------------------

test("path rule bypass: encoded dot segments, encoded slashes, backslashes, ;params, // and a keep-alive switch never reach the upstream", async () => {
  const r = await rig();
  try {
    const attacks = [
      "/ok/../nope",
      "/ok/%2e%2e/nope",
      "/ok/%2E%2E/nope",
      "/ok/.%2e/nope",
      "/ok/%252e%252e/nope",
      "/ok%2f..%2fnope",
      "/ok/..%2fnope",
      "/ok/..%5cnope",
      "/ok/..;/nope",
      "/ok;/../nope",
      "//ok/../nope",
      "/OK/nope",
      "/ok/%c0%ae%c0%ae/nope",
      "/ok/%ef%bc%8e%ef%bc%8e/nope",
      "/nope?/ok/",
      "/nope#/ok/",
      "/ok/" + "a/".repeat(3000) + "%2e%2e/".repeat(3001) + "nope",
    ];
    for (const path of attacks) {
      const answer = await rawH1(r, `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`);
      const st = statusOf(answer);
      assert.ok(st === 403 || st === 400 || st === 431 || st === 414, `${path.slice(0, 60)}: ${st}`);
    }
    // A backslash in the raw request line.
    const bs = await rawH1(r, `GET /ok\\..\\nope HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`);
    assert.ok([400, 403].includes(statusOf(bs)), bs.slice(0, 80));
    // A method the grant does not name.
    assert.equal(statusOf(await rawH1(r, `DELETE /ok/x HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`)), 403);
    assert.equal(statusOf(await rawH1(r, `get /ok/x HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`)), 400);

    // Keep-alive: an allowed request, then one outside the grant on the same connection.
    const answer = await rawH1(
      r,
      `GET /ok/first HTTP/1.1\r\nHost: ${HOST}\r\n\r\n` + `GET /nope/second HTTP/1.1\r\nHost: ${HOST}\r\n\r\n` + `GET /ok/../nope/third HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`,
    );
    assert.deepEqual(allStatuses(answer), [200, 403, 403]);
    assert.ok(upstreamGot("/ok/first"));
    assert.ok(!seen.some((s) => /nope/i.test(s.url)), "no request outside the grant reached the upstream");

    // Over HTTP/2 too.
    for (const path of ["/ok/%2e%2e/nope", "/ok/..;/nope", "/nope"]) {
      const a = await h2Request(r, H2HOST, { ":path": path });
      assert.equal(a.headers[":status"], 403, path);
    }
    assert.ok(!seen.some((s) => /nope/i.test(s.url)));
    await assertCanaryFree(r);
  } finally {
    await r.close();
  }
});

// --- tripwire evasion -------------------------------------------------------------------------------------

const pct = (s: string, lower = false): string =>
  [...Buffer.from(s)].map((b) => "%" + b.toString(16).padStart(2, "0")[lower ? "toLowerCase" : "toUpperCase"]()).join("");
const b64 = (s: string): string => Buffer.from(s).toString("base64");

test("tripwire evasion: another host's placeholder percent-encoded, base64-encoded or in a header name still trips the wire", async () => {
  const variants: [string, (ph: string) => string][] = [
    ["raw in the query", (ph) => `GET /ok/t?x=${ph} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`],
    ["percent-encoded in the query", (ph) => `GET /ok/t?x=${pct(ph)} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`],
    ["lower-case percent-encoded in the path", (ph) => `GET /ok/${pct(ph, true)} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`],
    ["double percent-encoded", (ph) => `GET /ok/t?x=${pct(pct(ph))} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`],
    ["percent-encoded in a header", (ph) => `GET /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nX-Data: ${pct(ph)}\r\nConnection: close\r\n\r\n`],
    ["base64 in a Bearer", (ph) => `GET /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${b64(ph)}\r\nConnection: close\r\n\r\n`],
    ["base64 after a one-byte prefix", (ph) => `GET /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nX-Data: ${b64("x" + ph + "y")}\r\nConnection: close\r\n\r\n`],
    ["base64url after a two-byte prefix", (ph) => `GET /ok/t?d=${Buffer.from("xy" + ph).toString("base64url")} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`],
    ["Basic pair", (ph) => `GET /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Basic ${b64("u:" + ph)}\r\nConnection: close\r\n\r\n`],
    ["in a header name", (ph) => `GET /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nX-${ph}: 1\r\nConnection: close\r\n\r\n`],
  ];
  const missed: string[] = [];
  for (const [name, request] of variants) {
    const r = await rig();
    try {
      const oth = r.creds.find((c) => c.secret === "global/oth")!;
      const before = seen.length;
      const answer = await rawH1(r, request(r.ph("oth")));
      if (statusOf(answer) !== 403 || !answer.includes('"reason":"tripwire"')) {
        missed.push(name);
        continue;
      }
      assert.equal(seen.length, before, `${name}: nothing reached the upstream`);
      assert.ok(!(await r.live()).has(oth.lease.id), `${name}: the lease is revoked`);
      assert.ok(await r.alarmed(), `${name}: an alarm is audited`);
      await assertCanaryFree(r);
    } finally {
      await r.close();
    }
  }
  assert.deepEqual(missed, [], "variants that did not trip the wire");

  // The same hidden forms of a placeholder to a host its lease covers are not an alarm: in a header,
  // still served; in the URL, where lessor replaces nothing, refused before any use, the lease live.
  const r = await rig();
  try {
    const answer = await rawH1(r, `GET /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nX-Data: ${b64("x" + r.ph("tok"))}\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(answer), 200);
    const inUrl = await rawH1(r, `GET /ok/t?x=${pct(r.ph("tok"))} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(inUrl), 403);
    assert.doesNotMatch(inUrl, /tripwire/);
    assert.ok(!(await r.alarmed()));
    assert.ok((await r.live()).has(r.creds.find((c) => c.secret === "global/tok")!.lease.id));
    assert.equal(r.warns.length, 0);
  } finally {
    await r.close();
  }
});

test("tripwire evasion: another host's placeholder split across two headers trips the wire", async () => {
  const r = await rig();
  try {
    const ph = r.ph("oth");
    const before = seen.length;
    const answer = await rawH1(r, `GET /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nX-A: ${ph.slice(0, 17)}\r\nX-B: ${ph.slice(17)}\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(answer), 403, answer.slice(0, 300));
    assert.match(answer, /"reason":"tripwire"/);
    assert.equal(seen.length, before, "nothing reached the upstream");
    assert.ok(!(await r.live()).has(r.creds.find((c) => c.secret === "global/oth")!.lease.id), "the lease is revoked");
    assert.ok(await r.alarmed());
    await assertCanaryFree(r);
  } finally {
    await r.close();
  }
});

test("a credential in a request URL never reaches the trail, the vault or a refusal: the tripwire's alarm holds the path withheld, and the covered host's own credential in its URL is refused before any use", async () => {
  const paths = async (r: Rig): Promise<string[]> => (await r.auditRows(["proxy_request"])).map((e) => String(JSON.parse(e.detail ?? "{}").path));
  // A hostile agent that got oth's value sends it out in the path, as it is or hidden, to a host oth's lease does not cover.
  for (const path of [`/ok/exfil/${OTH}/x`, `/ok/exfil/${pct(OTH, true)}`, `/ok/exfil/${b64("x" + OTH)}`]) {
    const r = await rig();
    try {
      const answer = await rawH1(r, `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`);
      assert.equal(statusOf(answer), 403, path);
      assert.match(answer, /"reason":"tripwire"/, path);
      assert.ok(!answer.includes(OTH) && !answer.includes(b64("x" + OTH)), "the answer does not repeat it");
      assert.ok(await r.alarmed(), "the alarm is audited");
      assert.deepEqual(await paths(r), [WITHHELD_PATH], "the alarm's path is withheld");
      await assertCanaryFree(r);
    } finally {
      await r.close();
    }
  }
  const r = await rig();
  try {
    // The host's own credential in the URL (as some APIs want a bot token; or a placeholder encoded
    // where lessor does not replace it): refused before any use, before the vault is asked (whose
    // refusals would quote the path), and before anything goes upstream.
    const uses = async (): Promise<number> => (await r.auditRows(["secret_accessed", "access_denied"])).length;
    const [usesBefore, seenBefore] = [await uses(), seen.length];
    for (const target of [`/ok/bot${TOK}/send`, `/no/${TOK}`, `/ok/x?k=${pct(TOK)}`, `/ok/${pct(r.ph("tok"), true)}`]) {
      const refused = await rawH1(r, `GET ${target} HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph("tok")}\r\nConnection: close\r\n\r\n`);
      assert.equal(statusOf(refused), 403, target);
      assert.match(refused, /the URL holds a credential of this run \(global\/tok/, target);
      assert.ok(!refused.includes(TOK) && !refused.includes(pct(TOK)), refused.slice(0, 600));
    }
    assert.equal(await uses(), usesBefore, "the vault was not asked");
    assert.equal(seen.length, seenBefore, "nothing went upstream");
    // A path without a credential is reported as it was.
    assert.equal(statusOf(await rawH1(r, `GET /ok/plain HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph("tok")}\r\nConnection: close\r\n\r\n`)), 200);
    for (let i = 0; i < 100 && (await paths(r)).length < 5; i++) await delay(20); // the reports go in batches
    assert.deepEqual((await paths(r)).sort(), [WITHHELD_PATH, WITHHELD_PATH, WITHHELD_PATH, "/ok/plain", "/ok/x"].sort(), "the query is never reported; the path is withheld when it holds the mark");
    await assertCanaryFree(r);
  } finally {
    await r.close();
  }
});

/** The forms of a placeholder an agent may hide in a body: each with the text the tripwire must stop before. */
const BODY_FORMS: [string, (ph: string) => { body: string; mark: string }][] = [
  ["as is, in JSON", (ph) => ({ body: `{"note":"hello","token":"${ph}","n":1}`, mark: ph })],
  ["every byte percent-encoded, in a form", (ph) => ({ body: `a=1&token=${pct(ph)}&b=2`, mark: pct(ph) })],
  ["lower-case percent-encoded", (ph) => ({ body: `token=${pct(ph, true)}`, mark: pct(ph, true) })],
  ["base64 after a one-byte prefix", (ph) => ({ body: `blob=${b64("x" + ph + "yz")}`, mark: b64("x" + ph + "yz").slice(2, -4) })],
];

/** Fails unless the upstream got no more than the bytes before `mark` (none of it, not even its first half). */
function assertStoppedBefore(got: string, body: string, mark: string, what: string): void {
  const at = body.indexOf(mark);
  assert.ok(at >= 0, `${what}: the test's mark is in the body`);
  assert.ok(body.startsWith(got), `${what}: the upstream got a prefix of the body`);
  assert.ok(got.length <= at, `${what}: the upstream got ${got.length} bytes, the mark starts at ${at}`);
}

test("tripwire in request bodies over HTTP/1.1: another host's placeholder, split across chunks or encoded, is stopped before it goes", async () => {
  for (const [name, form] of BODY_FORMS)
    for (const chunked of [false, true]) {
      const what = `${name}${chunked ? ", chunked" : ""}`;
      const r = await rig();
      try {
        const { body, mark } = form(r.ph("oth"));
        // The cut falls inside the mark: the first half must be held back until the second shows what it is.
        const cut = body.indexOf(mark) + Math.floor(mark.length / 2);
        const from = arrived.length;
        const s = await tunnel(r, HOST);
        const head = `POST /ok/t HTTP/1.1\r\nHost: ${HOST}\r\n${chunked ? "Transfer-Encoding: chunked" : `Content-Length: ${body.length}`}\r\n\r\n`;
        const piece = (t: string): string => (chunked ? `${t.length.toString(16)}\r\n${t}\r\n` : t);
        s.write(head + piece(body.slice(0, cut)));
        await delay(80);
        s.write(piece(body.slice(cut)) + (chunked ? "0\r\n\r\n" : ""));
        const answer = await readAll(s, 3000);
        assert.equal(statusOf(answer), 403, `${what}: ${answer.slice(0, 300)}`);
        assert.match(answer, /"reason":"tripwire"/, what);
        assertStoppedBefore(arrived.slice(from).join(""), body, mark, what);
        assert.ok(!(await r.live()).has(r.creds.find((c) => c.secret === "global/oth")!.lease.id), `${what}: the lease is revoked`);
        assert.ok(await r.alarmed(), `${what}: an alarm is audited`);
        assert.ok(r.warns.some((w) => /ALARM: .*global\/oth in the request body/.test(w)), `${what}: the warning says where`);
        await assertCanaryFree(r);
      } finally {
        await r.close();
      }
    }
});

test("tripwire in request bodies over HTTP/2: another host's placeholder in DATA frames, split across them, or in request trailers", async () => {
  for (const [name, form] of BODY_FORMS) {
    const r = await rig();
    try {
      const { body, mark } = form(r.ph("oth"));
      const cut = body.indexOf(mark) + Math.floor(mark.length / 2);
      const from = arrived.length;
      const s = await tunnel(r, H2HOST, "h2");
      const session = http2.connect(`https://${H2HOST}`, { createConnection: () => s });
      try {
        const status = await new Promise<number>((resolve, reject) => {
          const req = session.request({ ":method": "POST", ":path": "/ok/t" });
          let st = 0;
          req.on("response", (h) => (st = Number(h[":status"])));
          req.on("data", () => {});
          req.on("end", () => resolve(st));
          req.on("close", () => resolve(st));
          req.on("error", reject);
          req.write(body.slice(0, cut));
          setTimeout(() => req.end(body.slice(cut)), 80);
        });
        assert.equal(status, 403, name);
      } finally {
        session.destroy();
      }
      assertStoppedBefore(arrived.slice(from).join(""), body, mark, `h2, ${name}`);
      assert.ok(!(await r.live()).has(r.creds.find((c) => c.secret === "global/oth")!.lease.id), `h2, ${name}: the lease is revoked`);
      assert.ok(await r.alarmed(), `h2, ${name}: an alarm is audited`);
      await assertCanaryFree(r);
    } finally {
      await r.close();
    }
  }

  // Request trailers: the body is clean, the trailer carries the placeholder.
  const r = await rig();
  try {
    const trailersBefore = arrivedTrailers.length;
    const s = await tunnel(r, H2HOST, "h2");
    const session = http2.connect(`https://${H2HOST}`, { createConnection: () => s });
    try {
      await new Promise<void>((resolve) => {
        const req = session.request({ ":method": "POST", ":path": "/ok/t", te: "trailers" }, { waitForTrailers: true });
        req.on("wantTrailers", () => req.sendTrailers({ "x-sig": r.ph("oth") }));
        req.on("data", () => {});
        req.on("close", () => resolve());
        req.on("error", () => {});
        req.end("a clean body");
      });
    } finally {
      session.destroy();
    }
    assert.ok(!arrivedTrailers.slice(trailersBefore).some((t) => JSON.stringify(t).includes(r.ph("oth"))), "the trailer never reached the upstream");
    assert.ok(!(await r.live()).has(r.creds.find((c) => c.secret === "global/oth")!.lease.id), "trailers: the lease is revoked");
    assert.ok(await r.alarmed(), "trailers: an alarm is audited");
    await assertCanaryFree(r);
  } finally {
    await r.close();
  }
});

test("the body tripwire passes other bodies on byte for byte: the host's own placeholder, binary data, a body of 1 MiB in many chunks", async () => {
  const r = await rig();
  try {
    const own = r.ph("tok");
    // Random bytes with the host's own placeholder and the other one's first half inside: neither is an alarm.
    const bin = Buffer.concat([randomBytes(300_000), Buffer.from(own), randomBytes(300_000), Buffer.from(r.ph("oth").slice(0, 20)), randomBytes(448_576)]);
    for (const host of [HOST, H2HOST]) {
      const before = seen.length;
      if (host === HOST) {
        const s = await tunnel(r, HOST);
        s.write(`POST /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: ${bin.length}\r\nConnection: close\r\n\r\n`);
        for (let i = 0; i < bin.length; i += 7_001) s.write(bin.subarray(i, i + 7_001));
        const answer = await readAll(s, 5000);
        assert.equal(statusOf(answer), 200, answer.slice(0, 200));
      } else {
        const a = await h2Request(r, H2HOST, { ":method": "POST", ":path": "/ok/t" }, bin);
        assert.equal(a.headers[":status"], 200);
      }
      const got = seen.slice(before);
      assert.equal(got.length, 1, host);
      assert.ok(Buffer.from(got[0]!.body, "latin1").equals(bin), `${host}: the upstream got the body unchanged`);
    }
    assert.equal(r.warns.length, 0);
    assert.ok((await r.live()).has(r.creds.find((c) => c.secret === "global/oth")!.lease.id), "no lease was revoked");
  } finally {
    await r.close();
  }
});

/** What a compressed prefix decodes to (all an upstream could read of it); empty if too short to decode. */
function decodedPrefix(coding: "gzip" | "br", b: Buffer): string {
  if (b.length === 0) return "";
  try {
    return (coding === "gzip" ? gunzipSync(b, { finishFlush: zc.Z_SYNC_FLUSH }) : brotliDecompressSync(b, { finishFlush: zc.BROTLI_OPERATION_FLUSH })).toString("latin1");
  } catch {
    return "";
  }
}

test("tripwire in compressed request bodies: another host's placeholder in a gzip body (h1) or a br body (h2) is stopped before any of it goes; a zstd body is refused unsent", async () => {
  for (const coding of ["gzip", "br"] as const) {
    const r = await rig();
    try {
      const ph = r.ph("oth");
      const body = `{"note":"${"hello ".repeat(40)}","token":"${ph}","n":${randomBytes(16).toString("hex")}}`;
      const at = body.indexOf(ph);
      const packed = coding === "gzip" ? gzipSync(body) : brotliCompressSync(body);
      const cut = Math.floor(packed.length / 2);
      const from = arrived.length;
      let status: number;
      if (coding === "gzip") {
        const s = await tunnel(r, HOST);
        s.write(`POST /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nContent-Encoding: gzip\r\nContent-Length: ${packed.length}\r\n\r\n`);
        s.write(packed.subarray(0, cut));
        await delay(80);
        s.write(packed.subarray(cut));
        const answer = await readAll(s, 3000);
        status = statusOf(answer);
        assert.match(answer, /"reason":"tripwire"/, coding);
      } else {
        const s = await tunnel(r, H2HOST, "h2");
        const session = http2.connect(`https://${H2HOST}`, { createConnection: () => s });
        try {
          status = await new Promise<number>((resolve, reject) => {
            const req = session.request({ ":method": "POST", ":path": "/ok/t", "content-encoding": "br" });
            let st = 0;
            req.on("response", (h) => (st = Number(h[":status"])));
            req.on("data", () => {});
            req.on("end", () => resolve(st));
            req.on("close", () => resolve(st));
            req.on("error", reject);
            req.write(packed.subarray(0, cut));
            setTimeout(() => req.end(packed.subarray(cut)), 80);
          });
        } finally {
          session.destroy();
        }
      }
      assert.equal(status, 403, coding);
      const got = Buffer.from(arrived.slice(from).join(""), "latin1");
      assert.ok(packed.subarray(0, got.length).equals(got), `${coding}: the upstream got a prefix of the compressed body`);
      const readable = decodedPrefix(coding, got);
      assert.ok(readable.length <= at, `${coding}: what went upstream decodes to ${readable.length} bytes, the placeholder starts at ${at}`);
      assert.ok(!(await r.live()).has(r.creds.find((c) => c.secret === "global/oth")!.lease.id), `${coding}: the lease is revoked`);
      assert.ok(await r.alarmed(), `${coding}: an alarm is audited`);
      await assertCanaryFree(r);
    } finally {
      await r.close();
    }
  }

  const r = await rig();
  try {
    // A clean gzip body goes on byte for byte, still compressed.
    const clean = gzipSync(Buffer.concat([Buffer.from(r.ph("tok")), randomBytes(50_000), Buffer.from("z".repeat(100_000))]));
    const before = seen.length;
    const s = await tunnel(r, HOST);
    s.write(`POST /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nContent-Encoding: gzip\r\nContent-Length: ${clean.length}\r\nConnection: close\r\n\r\n`);
    for (let i = 0; i < clean.length; i += 4_001) s.write(clean.subarray(i, i + 4_001));
    const answer = await readAll(s, 5000);
    assert.equal(statusOf(answer), 200, answer.slice(0, 200));
    assert.equal(seen.length, before + 1);
    assert.ok(Buffer.from(seen[before]!.body, "latin1").equals(clean), "the upstream got the compressed body unchanged");
    assert.equal(seen[before]!.headers["content-encoding"], "gzip");

    // A coding the tripwire cannot read, or two: refused before anything goes, on h1 and h2.
    const n = seen.length;
    for (const enc of ["zstd", "gzip, br"]) {
      const a = await rawH1(r, `POST /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nContent-Encoding: ${enc}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello`);
      assert.equal(statusOf(a), 415, `${enc}: ${a.slice(0, 300)}`);
      assert.match(a, /reads only gzip, deflate or br/, enc);
    }
    const h2 = await h2Request(r, H2HOST, { ":method": "POST", ":path": "/ok/t", "content-encoding": "zstd" }, "hello");
    assert.equal(h2.headers[":status"], 415);
    assert.equal(seen.length, n, "nothing reached an upstream");
    assert.ok((await r.live()).has(r.creds.find((c) => c.secret === "global/oth")!.lease.id), "no lease was revoked");
  } finally {
    await r.close();
  }
});

test("a secret rotated while the run goes on: the new value is injected, its echo is masked (and the old one's), and the tripwire knows it", async () => {
  const r = await rig();
  try {
    const ph = r.ph("tok");
    const fresh = "ghp_" + randomBytes(18).toString("hex").slice(0, 36);
    // Once before the rotation, so the old value has been injected and may still be echoed.
    const before = await rawH1(r, `GET /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nX-Token: ${ph}\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(before), 200);
    await r.rotate("tok", fresh);
    const n = seen.length;
    const after = await rawH1(r, `GET /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nX-Token: ${ph}\r\nOrigin: ${ph}\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(after), 200, after.slice(0, 200));
    assert.equal(seen[n]?.headers["x-token"], fresh, "the upstream got the value as the vault has it now");
    assert.ok(!after.includes(fresh), "the new value's echo (the body, access-control-allow-origin) reached the agent");
    assert.ok(!after.includes(TOK), "the old value reached the agent");
    assert.ok(after.includes(ph), "the echo came back as the placeholder");
    // The new value (base64 too) sent to a host tok's lease does not cover trips the wire.
    const trip = await rawH1(r, `GET /x HTTP/1.1\r\nHost: ${OTHER}\r\nX-Leak: ${b64(fresh)}\r\nConnection: close\r\n\r\n`, OTHER);
    assert.equal(statusOf(trip), 403, trip.slice(0, 200));
    assert.match(trip, /"reason":"tripwire"/);
    assert.ok(await r.alarmed());
  } finally {
    await r.close();
  }
});

test("a secret rotated while the run goes on to a value too wide to mask: never injected unmasked, every request refused naming why, the old value still masked", async () => {
  // The rotation rebuilt the scrub patterns after taking the new value as the held one: the build
  // threw (value_too_large, the scrubber's table cap), that request got a 500, and the next request
  // injected the new value with the OLD patterns, so its echo reached the agent unmasked.
  const r = await rig();
  try {
    const ph = r.ph("tok");
    assert.equal(statusOf(await rawH1(r, `GET /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nX-Token: ${ph}\r\nConnection: close\r\n\r\n`)), 200);
    // 6,000 characters of every printable ASCII character: one header line the upstream takes (under
    // its 16 KiB), valid for the vault's fit check, but it and its ~37 encoded forms are more than the
    // scrubber's table holds (a JWT or a PEM key of that size fits: fewer distinct characters and forms).
    const wide = "ghp_" + Array.from(randomBytes(6_000), (b) => String.fromCharCode(33 + (b % 94))).join("");
    await r.rotate("tok", wide);
    for (let i = 0; i < 2; i++) {
      const n = seen.length;
      const answer = await rawH1(r, `GET /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nX-Token: ${ph}\r\nOrigin: ${ph}\r\nConnection: close\r\n\r\n`);
      assert.ok(!answer.includes(wide.slice(0, 200)), `request ${i + 1}: the new value reached the agent unmasked`);
      assert.equal(seen.length, n, `request ${i + 1}: a request went upstream with a value the proxy cannot mask`);
      assert.equal(statusOf(answer), 502, answer.slice(0, 300));
      assert.match(answer, /could not mask the new one/, answer.slice(0, 600));
    }
    // Rotated back to a value that fits: served again, and masked.
    const fresh = "ghp_" + randomBytes(18).toString("hex").slice(0, 36);
    await r.rotate("tok", fresh);
    const back = await rawH1(r, `GET /ok/t HTTP/1.1\r\nHost: ${HOST}\r\nX-Token: ${ph}\r\nOrigin: ${ph}\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(back), 200, back.slice(0, 300));
    assert.ok(!back.includes(fresh) && back.includes(ph), "the value that fits is masked");
    assert.ok(!(await r.audit()).includes(wide.slice(0, 200)), "the value is not in the audit");
  } finally {
    await r.close();
  }
});

// --- response masking -----------------------------------------------------------------------------------

test("response masking over HTTP/1.1: a credential reflected in response headers, the reason phrase, a redirect's query or a base64 echo never reaches the agent", async () => {
  const r = await rig();
  try {
    const before = seen.length;
    const answer = await rawH1(
      r,
      `GET /ok/reflect?q=1 HTTP/1.1\r\nHost: ${HOST}\r\nOrigin: ${r.ph("tok")}\r\nX-Reason: ${r.ph("tok")}\r\nTE: trailers\r\nConnection: close\r\n\r\n`,
    );
    assert.equal(statusOf(answer), 200, answer.slice(0, 300));
    const got = seen.slice(before);
    assert.equal(got.length, 1);
    // The attack is real: the upstream did get every value, in the places it reflects.
    assert.equal(got[0]!.headers.origin, TOK);
    assert.equal(got[0]!.headers.authorization, `Basic ${b64("x-access-token:" + BAS)}`);
    assert.equal(new URL(got[0]!.url, "https://x").searchParams.get("api_key"), QRY);
    assertNoCanary(answer, "the answer the agent got");
    // …and the agent sees the placeholders in their place.
    assert.match(answer, new RegExp(`access-control-allow-origin: ${r.ph("tok")}`, "i"));
    await assertCanaryFree(r);
  } finally {
    await r.close();
  }
});

test("response masking over HTTP/2: reflected response headers and trailers are masked (h2 upstream, and an HTTP/1.1 upstream behind an h2 client)", async () => {
  const r = await rig();
  try {
    for (const host of [H2HOST, HOST]) {
      const before = seen.length;
      const a = await h2Request(r, host, { origin: r.ph("tok"), te: "trailers" });
      assert.equal(a.headers[":status"], 200, host);
      assert.equal(seen.slice(before)[0]!.headers.origin, TOK, "the upstream got the value");
      assertNoCanary(JSON.stringify(a), `the h2 answer from ${host}`);
      assert.equal(a.headers["access-control-allow-origin"], r.ph("tok"));
      if (host === H2HOST) assert.equal(a.trailers["x-trailer-echo"], r.ph("tok"), "the trailer came, masked");
    }
    await assertCanaryFree(r);
  } finally {
    await r.close();
  }
});

test("response masking: a body the proxy cannot decode (gzip twice, zstd) is refused with 502, never passed on", async () => {
  const r = await rig();
  try {
    for (const path of ["/ok/gz2", "/ok/zstd"]) {
      const answer = await rawH1(r, `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nOrigin: ${r.ph("tok")}\r\nConnection: close\r\n\r\n`);
      assert.equal(statusOf(answer), 502, path);
    }
  } finally {
    await r.close();
  }
});

// --- request smuggling --------------------------------------------------------------------------------

test("request smuggling agent → proxy → upstream: CL+TE, two Content-Lengths, obs-fold, bad chunking and an h2 body longer than its content-length smuggle nothing", async () => {
  const r = await rig();
  try {
    const smuggled = `GET /ok/smuggled HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
    const attacks = [
      `POST /ok/s1 HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: ${4}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
      `POST /ok/s2 HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n${smuggled}`,
      `POST /ok/s3 HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: 0\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`,
      `POST /ok/s4 HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: 0, ${smuggled.length}\r\n\r\n${smuggled}`,
      `POST /ok/s5 HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${smuggled}`,
      `POST /ok/s6 HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${smuggled}`,
      `POST /ok/s7 HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n${smuggled}`,
      `POST /ok/s8 HTTP/1.1\r\nHost: ${HOST}\r\nX-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n${smuggled}`,
      `POST /ok/s9 HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: chunked\r\n\r\n5;\nx\r\nhello\r\n0\r\n\r\n${smuggled}`,
      `POST /ok/s10 HTTP/1.1\r\nHost: ${HOST}\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
    ];
    for (const bytes of attacks) {
      const answer = await rawH1(r, bytes, HOST, 1500);
      // Whatever the proxy answered, the upstream got at most one request per attack, framed by the proxy.
      void answer;
    }
    await delay(50);
    for (const s of seen) if (s.url.startsWith("/ok/s")) assert.ok(!(s.headers["content-length"] !== undefined && s.headers["transfer-encoding"] !== undefined), `${s.url}: CL and TE together`);
    assert.ok(!upstreamGot("/ok/smuggled"), "a smuggled request reached the upstream (HTTP/1.1)");

    // HTTP/2 → HTTP/1.1 upstream: a DATA body longer than the declared content-length.
    await h2Request(r, HOST, { ":method": "POST", ":path": "/ok/s-h2", "content-length": "0" }, smuggled).catch(() => undefined);
    await h2Request(r, HOST, { ":method": "POST", ":path": "/ok/s-h2b", "content-length": "3" }, "abc" + smuggled).catch(() => undefined);
    await delay(100);
    assert.ok(!upstreamGot("/ok/smuggled"), "a smuggled request reached the upstream (h2 → h1)");
  } finally {
    await r.close();
  }
});

// --- SSRF through the proxy ---------------------------------------------------------------------------

test("SSRF through CONNECT and plain http: every address form, mixed answers and a rebinding second lookup never reach connect", async () => {
  const calls = new Map<string, number>();
  const answers: Record<string, string[][]> = {
    "mixed.ssrf.example": [["93.184.216.34", "127.0.0.1"]],
    "mixed6.ssrf.example": [["2606:4700::1", "::ffff:127.0.0.1"]],
    "metadata.ssrf.example": [["169.254.169.254"]],
    "nat64.ssrf.example": [["64:ff9b::7f00:1"]],
    "sixtofour.ssrf.example": [["2002:a00:1::"]],
    "rebind.ssrf.example": [["93.184.216.34"], ["127.0.0.1"]],
  };
  const resolve: Resolver = async (host) => {
    const n = calls.get(host) ?? 0;
    calls.set(host, n + 1);
    const list = answers[host];
    if (!list) throw Object.assign(new Error("not in the table"), { code: "ENOTFOUND" });
    return list[Math.min(n, list.length - 1)]!.map((address) => ({ address, family: address.includes(":") ? 6 : 4 }));
  };
  const reached: ConnectTo[] = [];
  // Any connect at all fails this test: every target here must be refused (rebind: refused by port below).
  const connect = (to: ConnectTo): never => {
    reached.push(to);
    assert.fail(`the proxy tried to connect to ${to.host}`);
  };
  const egress: Egress = { decide: (): EgressDecision => ({ kind: "tunnel" }) };
  const guard = new SsrfGuard({ ports: [443, 80], resolve });
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: ["x.example"] }), guard, connect: connect as never });
  const port = await proxy.listen();
  try {
    const hosts = [
      "127.0.0.1", "2130706433", "017700000001", "0x7f.1", "0x7f000001", "0177.0.0.1", "127.1", "127.0.0.1.", "0.0.0.0", "0",
      "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]", "[2002:7f00:1::]", "[64:ff9b::7f00:1]", "[::]", "[0:0:0:0:0:ffff:7f00:1]",
      "[fe80::1%25eth0]", "[::ffff:169.254.169.254]", "169.254.169.254", "[fd00:ec2::254]", "10.0.0.1", "192.168.0.1", "100.64.0.1",
      "localhost", "api.localhost", "LOCALHOST.", "１２７.０.０.１",
      "mixed.ssrf.example", "mixed6.ssrf.example", "metadata.ssrf.example", "nat64.ssrf.example", "sixtofour.ssrf.example",
    ];
    for (const h of hosts) {
      const { head, raw } = await connectRaw(port, `${h}:443`);
      raw.destroy();
      assert.match(head, /^HTTP\/1\.1 (400|403|502) /, `CONNECT ${h}: ${head.split("\r\n")[0]}`);
      // Plain http:// to the same host.
      const plain = await new Promise<string>((res) => {
        const s = netConnect(port, "127.0.0.1");
        const chunks: Buffer[] = [];
        s.write(`GET http://${h}/ HTTP/1.1\r\nHost: ${h}\r\nConnection: close\r\n\r\n`);
        s.on("data", (d: Buffer) => chunks.push(d));
        s.on("close", () => res(Buffer.concat(chunks).toString("latin1")));
        s.on("error", () => res(Buffer.concat(chunks).toString("latin1")));
      });
      assert.match(plain, /^HTTP\/1\.1 (400|403|502) /, `GET http://${h}/: ${plain.split("\r\n")[0]}`);
    }
    assert.deepEqual(reached, []);
    // Rebinding: the first answer is public; the connect step (which would fail the test here) is what
    // the public answer reaches, never the second one. Checked on the guard with a recording connect.
    const target = await guard.check("rebind.ssrf.example", 443);
    assert.equal(target.address, "93.184.216.34");
    assert.equal(calls.get("rebind.ssrf.example"), 1, "one lookup per check");
  } finally {
    await proxy.close();
  }
});
