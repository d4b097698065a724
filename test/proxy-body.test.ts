/**
 * Placeholders in request bodies (a `[[proxy.inject]]` rule with `body = true`): the forward proxy
 * streams the body of an intercepted request through the reverse patterns (placeholder → value) over
 * HTTP/1.1 and HTTP/2 (h2 upstream, and an HTTP/1.1 upstream behind an h2 client), keeps or drops the
 * Content-Length as the patterns' lengths say, and refuses a compressed body (415) rather than send it
 * unrewritten. Also the config rule and LeaseEgress's side: which credentials a request uses and the
 * patterns it gets.
 *
 * Everything on loopback: names resolve through an injected table, the guard allows 127.0.0.0/8 for
 * this test only, and the connect step is instrumented so any other address fails the test.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import * as https from "node:https";
import type { IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import * as tls from "node:tls";
import { gzipSync } from "node:zlib";
import type { BackendApi } from "../src/backend/backend.js";
import { VaultError } from "../src/base/errors.js";
import type { LeaseRecord } from "../src/base/types.js";
import { parseProxyConfig } from "../src/config/proxy-config.js";
import { LocalCa } from "../src/proxy/ca.js";
import type { Egress, EgressDecision, Prepared, ProxiedRequest, RequestOutcome } from "../src/proxy/egress.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { ProxyRefusal } from "../src/proxy/refusal.js";
import { scrub, ScrubPatterns } from "../src/proxy/scrub.js";
import { loopbackOnly, openTunnel, tableResolver } from "./proxy-harness.js";

const SECRET = "ghp_" + "B1c2D3e4F5g6H7i8J9k0L1m2N3o4P5q6R7s8";
const PLACEHOLDER = makePlaceholder(SECRET);
/** A placeholder shorter than its value: the body's length changes. */
const SHORT_PLACEHOLDER = "PH_SHORT_01";
const LONG_VALUE = "long-value-" + "v".repeat(300);

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// --- upstreams: record what they receive, answer with the body they got ----------------------------

interface Seen {
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
}

const ca1 = LocalCa.create({ permitted: ["h1.body.example"] });
const seen1: Seen[] = [];
const up1 = https.createServer({ SNICallback: ca1.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (d: Buffer) => chunks.push(d));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString();
    seen1.push({ path: req.url!, headers: req.headers, body });
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("got " + body.length);
  });
});
await new Promise<void>((r) => up1.listen(0, "127.0.0.1", r));
const port1 = (up1.address() as AddressInfo).port;

const ca2 = LocalCa.create({ permitted: ["h2.body.example"] });
const seen2: Seen[] = [];
const up2 = http2.createSecureServer({ SNICallback: ca2.sniCallback, allowHTTP1: false });
up2.on("stream", (stream, h) => {
  const chunks: Buffer[] = [];
  stream.on("error", () => {});
  stream.on("data", (d: Buffer) => chunks.push(d));
  stream.on("end", () => {
    const headers: IncomingHttpHeaders = {};
    for (const [k, v] of Object.entries(h)) if (!k.startsWith(":")) headers[k] = v as string;
    const body = Buffer.concat(chunks).toString();
    seen2.push({ path: String(h[":path"]), headers, body });
    stream.respond({ ":status": 200 });
    stream.end("got " + body.length);
  });
});
await new Promise<void>((r) => up2.listen(0, "127.0.0.1", r));
const port2 = (up2.address() as AddressInfo).port;

// --- the proxy, with a policy that gives body patterns by path ---------------------------------------

const TABLE: Record<string, string> = { "h1.body.example": "127.0.0.1", "h2.body.example": "127.0.0.1" };
const guard = new SsrfGuard({
  ports: [port1, port2],
  allow: ["127.0.0.0/8"],
  resolve: tableResolver(TABLE),
});
const connects: ConnectTo[] = [];
const connect = loopbackOnly(connects);

/** placeholder → value, lengths kept. */
const SAME = new ScrubPatterns([{ value: PLACEHOLDER, placeholder: SECRET }]);
/** placeholder → value, one of them longer than its placeholder. */
const LONGER = new ScrubPatterns([
  { value: PLACEHOLDER, placeholder: SECRET },
  { value: SHORT_PLACEHOLDER, placeholder: LONG_VALUE },
]);

const asked: ProxiedRequest[] = [];
const outcomes: { target: string; outcome: RequestOutcome }[] = [];
function prepare(req: ProxiedRequest): Prepared {
  asked.push(req);
  const done = (outcome: RequestOutcome): void => void outcomes.push({ target: req.target, outcome });
  // /plain: no body rule. /long: a length-changing pattern. Anything else: same-length patterns.
  const requestBody = req.target.startsWith("/plain") ? undefined : req.target.startsWith("/long") ? LONGER : SAME;
  return { kind: "forward", headers: { ...req.headers }, target: req.target, ...(requestBody ? { requestBody } : {}), done };
}
const egress: Egress = {
  decide(host: string, port: number): EgressDecision {
    if (TABLE[host] !== undefined) return { kind: "intercept", prepare };
    return { kind: "refuse", refusal: new ProxyRefusal({ reason: "not_granted", host, port }, `no grant covers ${host}`) };
  },
};
const proxyCa = LocalCa.create({ permitted: Object.keys(TABLE) });
const proxy = new ForwardProxy({ egress, ca: proxyCa, guard, upstreamCa: [ca1.certPem, ca2.certPem], connect });
const proxyPort = await proxy.listen();

after(async () => {
  await proxy.close();
  up1.closeAllConnections();
  await new Promise<void>((r) => up1.close(() => r()));
  await new Promise<void>((r) => up2.close(() => r()));
});

// --- clients --------------------------------------------------------------------------------------

/** A CONNECT tunnel through the proxy, then TLS to it with the proxy's CA. */
const tunnel = (host: string, port: number, alpn: string): Promise<tls.TLSSocket> => openTunnel(proxyPort, host, port, { alpn, ca: proxyCa.certPem });

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** An HTTP/1.1 POST through the proxy whose body is written in `parts`, 15 ms apart (separate chunks). */
async function h1Post(path: string, parts: (string | Buffer)[], headers: Record<string, string> = {}): Promise<Answer> {
  const s = await tunnel("h1.body.example", port1, "http/1.1");
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: "h1.body.example", port: port1, path, method: "POST", headers, createConnection: () => s },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          s.destroy();
          resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() });
        });
      },
    );
    req.on("error", reject);
    void (async () => {
      for (const [i, p] of parts.entries()) {
        if (i > 0) await delay(15);
        req.write(p);
      }
      req.end();
    })();
  });
}

/** An HTTP/2 POST through the proxy to `host`, the body written in `parts`, 15 ms apart. */
async function h2Post(host: string, port: number, path: string, parts: (string | Buffer)[], headers: http2.OutgoingHttpHeaders = {}): Promise<Answer> {
  const s = await tunnel(host, port, "h2");
  const session = http2.connect(`https://${host}:${port}`, { createConnection: () => s });
  session.on("error", () => {});
  try {
    return await new Promise<Answer>((resolve, reject) => {
      const st = session.request({ ":method": "POST", ":path": path, ...headers });
      let status = 0;
      let rh: IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      st.on("response", (h) => {
        status = Number(h[":status"]);
        rh = h as IncomingHttpHeaders;
      });
      st.on("data", (d: Buffer) => chunks.push(d));
      st.on("end", () => resolve({ status, headers: rh, body: Buffer.concat(chunks).toString() }));
      st.on("error", reject);
      void (async () => {
        for (const [i, p] of parts.entries()) {
          if (i > 0) await delay(15);
          st.write(p);
        }
        st.end();
      })();
    });
  } finally {
    session.destroy();
  }
}

/** The body `a + PLACEHOLDER + b`, cut inside the placeholder (and once more inside the value's prefix). */
function splitBody(a: string, b: string): string[] {
  const whole = a + PLACEHOLDER + b;
  const at = a.length + 9;
  return [whole.slice(0, a.length + 4), whole.slice(a.length + 4, at), whole.slice(at)];
}

// --- HTTP/1.1 ---------------------------------------------------------------------------------------

test("h1: a placeholder split across body chunks reaches the upstream as the value; the Content-Length stays", async () => {
  const before = seen1.length;
  const parts = splitBody('{"token":"', '","n":1}');
  const length = Buffer.byteLength(parts.join(""));
  const a = await h1Post("/body", parts, { "content-type": "application/json", "content-length": String(length) });
  assert.equal(a.status, 200);
  const got = seen1.slice(before);
  assert.equal(got.length, 1);
  assert.equal(got[0]!.body, `{"token":"${SECRET}","n":1}`);
  assert.equal(got[0]!.headers["content-length"], String(length), "same-length patterns keep the Content-Length");
  assert.equal(got[0]!.headers["transfer-encoding"], undefined);
  assert.equal(a.body, `got ${length}`);
  // The policy was told the request has a body.
  assert.equal(asked[asked.length - 1]!.hasBody, true);
});

test("h1: a chunked body is rewritten too, and a placeholder at a chunk's very end is caught", async () => {
  const before = seen1.length;
  const a = await h1Post("/body-chunked", ["a=" + PLACEHOLDER, "&b=" + PLACEHOLDER.slice(0, PLACEHOLDER.length - 1), PLACEHOLDER.slice(-1) + "&c=1"]);
  assert.equal(a.status, 200);
  const got = seen1.slice(before)[0]!;
  assert.equal(got.body, `a=${SECRET}&b=${SECRET}&c=1`);
  assert.equal(got.headers["transfer-encoding"], "chunked");
});

test("h1: a pattern that changes the length drops the Content-Length and sends the body chunked", async () => {
  const before = seen1.length;
  const body = `k=${SHORT_PLACEHOLDER}&t=${PLACEHOLDER}`;
  const a = await h1Post("/long", [body.slice(0, 5), body.slice(5)], { "content-length": String(body.length) });
  assert.equal(a.status, 200);
  const got = seen1.slice(before)[0]!;
  assert.equal(got.body, `k=${LONG_VALUE}&t=${SECRET}`);
  assert.equal(got.headers["content-length"], undefined, "the client's Content-Length would be false");
  assert.equal(got.headers["transfer-encoding"], "chunked");
});

test("h1: a gzip body with a body rule is refused (415 problem+json) and nothing is sent upstream", async () => {
  const before = { seen: seen1.length, connects: connects.length };
  const gz = gzipSync(`token=${PLACEHOLDER}`);
  const a = await h1Post("/body-gz", [gz], { "content-encoding": "gzip", "content-length": String(gz.length) });
  assert.equal(a.status, 415);
  assert.equal(a.headers["content-type"], "application/problem+json");
  const doc = JSON.parse(a.body) as { reason: string; detail: string };
  assert.equal(doc.reason, "request_encoding");
  assert.match(doc.detail, /content-encoding gzip/);
  assert.equal(seen1.length, before.seen, "the upstream got nothing");
  assert.equal(connects.length, before.connects, "no upstream connection was even made");
  assert.equal(outcomes[outcomes.length - 1]!.outcome.status, 415);
});

test("h1: without a body rule the body passes untouched (the placeholder arrives as is), and a GET is known to have no body", async () => {
  const before = seen1.length;
  const body = `token=${PLACEHOLDER}`;
  const a = await h1Post("/plain", [body.slice(0, 10), body.slice(10)], { "content-length": String(body.length) });
  assert.equal(a.status, 200);
  const got = seen1.slice(before)[0]!;
  assert.equal(got.body, body);
  assert.equal(got.headers["content-length"], String(body.length));
  // A gzip body with no body rule is not the proxy's business: it passes.
  const gz = gzipSync("x");
  const b = await h1Post("/plain-gz", [gz], { "content-encoding": "gzip", "content-length": String(gz.length) });
  assert.equal(b.status, 200);

  const s = await tunnel("h1.body.example", port1, "http/1.1");
  await new Promise<void>((resolve, reject) => {
    https.get({ host: "h1.body.example", port: port1, path: "/get", createConnection: () => s }, (res) => {
      res.resume();
      res.on("end", () => resolve());
    }).on("error", reject);
  });
  s.destroy();
  assert.equal(asked[asked.length - 1]!.target, "/get");
  assert.equal(asked[asked.length - 1]!.hasBody, false);
});

// --- HTTP/2 -----------------------------------------------------------------------------------------

test("h2: a placeholder split across DATA frames reaches an h2 upstream as the value; the Content-Length stays", async () => {
  const before = seen2.length;
  const parts = splitBody("token=", "&x=1");
  const length = Buffer.byteLength(parts.join(""));
  const a = await h2Post("h2.body.example", port2, "/body", parts, { "content-length": String(length) });
  assert.equal(a.status, 200);
  const got = seen2.slice(before);
  assert.equal(got.length, 1);
  assert.equal(got[0]!.body, `token=${SECRET}&x=1`);
  assert.equal(got[0]!.headers["content-length"], String(length));
  assert.equal(asked[asked.length - 1]!.hasBody, true);
});

test("h2: a length-changing pattern drops the Content-Length, to an h2 upstream and to an HTTP/1.1 one (chunked)", async () => {
  const body = `k=${SHORT_PLACEHOLDER}`;
  const before2 = seen2.length;
  const a = await h2Post("h2.body.example", port2, "/long", [body.slice(0, 4), body.slice(4)], { "content-length": String(body.length) });
  assert.equal(a.status, 200);
  assert.equal(seen2[before2]!.body, `k=${LONG_VALUE}`);
  assert.equal(seen2[before2]!.headers["content-length"], undefined);

  const before1 = seen1.length;
  const b = await h2Post("h1.body.example", port1, "/long", [body.slice(0, 4), body.slice(4)], { "content-length": String(body.length) });
  assert.equal(b.status, 200);
  assert.equal(seen1[before1]!.body, `k=${LONG_VALUE}`);
  assert.equal(seen1[before1]!.headers["content-length"], undefined);
  assert.equal(seen1[before1]!.headers["transfer-encoding"], "chunked");
});

test("h2: a gzip body with a body rule gets 415 and nothing goes upstream; without a rule the placeholder passes as is", async () => {
  const before = seen2.length;
  const a = await h2Post("h2.body.example", port2, "/body-gz", [gzipSync(`t=${PLACEHOLDER}`)], { "content-encoding": "gzip" });
  assert.equal(a.status, 415);
  assert.equal(JSON.parse(a.body).reason, "request_encoding");
  await delay(30);
  assert.equal(seen2.length, before);

  const b = await h2Post("h2.body.example", port2, "/plain", [`t=${PLACEHOLDER}`]);
  assert.equal(b.status, 200);
  assert.equal(seen2[seen2.length - 1]!.body, `t=${PLACEHOLDER}`);
});

// --- the config rule --------------------------------------------------------------------------------

test("config: body and websocket are booleans on a placeholder rule only", () => {
  const cfg = parseProxyConfig("t", { inject: [{ secret: "a", body: true, websocket: true }, { secret: "b", mode: "placeholder", body: false }] });
  assert.deepEqual(cfg.inject[0], { secret: "global/a", mode: "placeholder", body: true, websocket: true });
  assert.deepEqual(cfg.inject[1], { secret: "global/b", mode: "placeholder" });
  assert.throws(() => parseProxyConfig("t", { inject: [{ secret: "a", mode: "bearer", body: true }] }), /only mode = "placeholder" takes body/);
  assert.throws(() => parseProxyConfig("t", { inject: [{ secret: "a", mode: "header", header: "X-K", websocket: false }] }), /only mode = "placeholder" takes websocket/);
  assert.throws(() => parseProxyConfig("t", { inject: [{ secret: "a", body: "yes" }] }), /body: expected true or false/);
  assert.throws(() => parseProxyConfig("t", { inject: [{ secret: "a", bodies: true }] }), /unknown field "bodies"/);
});

// --- LeaseEgress: which credentials a request uses, and its patterns ---------------------------------

function lease(id: string, name: string, domains: string[]): LeaseRecord {
  const now = Date.now();
  return {
    id,
    agent: "bot",
    scope: "global",
    name,
    domains,
    anyDomain: false,
    methods: null,
    paths: null,
    rule: "r",
    issuedAt: now,
    expiresAt: now + 3_600_000,
    maxExpiresAt: now + 3_600_000,
    uses: 0,
    maxUses: null,
    renewals: 0,
    maxRenewals: null,
    renewable: false,
    revokedAt: null,
    revokeReason: null,
    issuedBy: "bot",
    bound: false,
    proxyOnly: false,
  };
}

/** A LeaseEgress on a fake vault that records each access (and refuses the lease ids in `refuse`). */
function leaseEgress(credentials: ProxyCredential[], refuse = new Set<string>()): { egress: LeaseEgress; accessed: string[]; reports: unknown[] } {
  const accessed: string[] = [];
  const reports: unknown[] = [];
  const byId = new Map(credentials.map((c) => [c.lease.id, c.value]));
  const api = {
    accessSecret: async (id: string) => {
      accessed.push(id);
      if (refuse.has(id)) throw new VaultError("access_denied", "POST is not allowed by the lease");
      const v = Buffer.from(byId.get(id)!);
      return { value: { expose: () => v, wipe: () => v.fill(0) } };
    },
    api: { record_proxy_requests: async (p: { reports: unknown[] }) => void reports.push(...p.reports) },
    listLeases: async () => [],
  } as unknown as BackendApi;
  return { egress: new LeaseEgress({ api, agent: "bot", credentials, egress: "strict" }), accessed, reports };
}

const handle = { close: (): void => {}, closed: false };
const request = (over: Partial<ProxiedRequest>): ProxiedRequest => ({ method: "POST", host: "api.example", port: 443, target: "/x", headers: {}, protocol: "h1", ...over });
async function prepareWith(e: LeaseEgress, req: ProxiedRequest): Promise<Prepared> {
  const d = await e.decide(req.host, req.port);
  assert.equal(d.kind, "intercept");
  return (d as Extract<EgressDecision, { kind: "intercept" }>).prepare(req, handle);
}

const BODY_VALUE = "sk-body-" + "0123456789abcdef0123";
const WS_VALUE = "sk-wsws-" + "0123456789abcdef0123";
const HDR_VALUE = "sk-head-" + "0123456789abcdef0123";
const ELSEWHERE = "sk-else-" + "0123456789abcdef0123";
const creds = (): ProxyCredential[] => [
  { lease: lease("L-body", "body", ["api.example"]), secret: "body", placeholder: makePlaceholder(BODY_VALUE), value: BODY_VALUE, rule: { mode: "placeholder", body: true } },
  { lease: lease("L-ws", "ws", ["api.example"]), secret: "ws", placeholder: makePlaceholder(WS_VALUE), value: WS_VALUE, rule: { mode: "placeholder", websocket: true } },
  { lease: lease("L-head", "head", ["api.example"]), secret: "head", placeholder: makePlaceholder(HDR_VALUE), value: HDR_VALUE, rule: { mode: "placeholder" } },
  // A body rule whose lease covers another host: its placeholder is never swapped at api.example.
  { lease: lease("L-else", "else", ["other.example"]), secret: "else", placeholder: makePlaceholder(ELSEWHERE), value: ELSEWHERE, rule: { mode: "placeholder", body: true } },
];

test("LeaseEgress: a body rule's credential is used by every request with a body to a covered host; the patterns swap only covered placeholders", async () => {
  const c = creds();
  const { egress: e, accessed } = leaseEgress(c);
  const p = await prepareWith(e, request({ hasBody: true }));
  assert.equal(p.kind, "forward");
  const fwd = p as Extract<Prepared, { kind: "forward" }>;
  assert.deepEqual(accessed, ["L-body"], "one use of the body credential, though no header carries it");
  assert.ok(fwd.requestBody, "body patterns");
  assert.equal(fwd.frames, undefined, "no frames outside a WebSocket handshake");
  const body = `a=${c[0]!.placeholder}&b=${c[2]!.placeholder}&c=${c[3]!.placeholder}`;
  // Only the covered body credential is swapped: the header-only one and the other host's stay placeholders.
  assert.equal(scrub(body, fwd.requestBody!).toString(), `a=${BODY_VALUE}&b=${c[2]!.placeholder}&c=${c[3]!.placeholder}`);

  // A request known to have no body uses nothing.
  accessed.length = 0;
  const g = await prepareWith(e, request({ method: "GET", hasBody: false }));
  assert.deepEqual(accessed, []);
  assert.equal((g as Extract<Prepared, { kind: "forward" }>).requestBody, undefined);
});

test("LeaseEgress: a WebSocket handshake uses the websocket rule's credential once and gets frame patterns", async () => {
  const c = creds();
  const { egress: e, accessed } = leaseEgress(c);
  const p = (await prepareWith(e, request({ method: "GET", upgrade: "websocket", hasBody: false }))) as Extract<Prepared, { kind: "forward" }>;
  assert.deepEqual(accessed, ["L-ws"]);
  assert.ok(p.frames);
  assert.equal(p.requestBody, undefined);
  assert.equal(scrub(`x${c[1]!.placeholder}x`, p.frames).toString(), `x${WS_VALUE}x`);
});

test("LeaseEgress: the body tripwire watches bodies and WebSocket frames for the credentials away from the host, and nothing else", async () => {
  const c = creds();
  const { egress: e, reports } = leaseEgress(c);
  const fwd = async (o: Parameters<typeof request>[0]) => (await prepareWith(e, request(o))) as Extract<Prepared, { kind: "forward" }>;
  // A body to api.example: "else" (other.example only) is away; the covered ones are not watched.
  const post = await fwd({ hasBody: true });
  assert.ok(post.bodyTripwire);
  const found = post.bodyTripwire.marks.find([`x=${c[3]!.placeholder}`]) as ProxyCredential[];
  assert.deepEqual(found.map((k) => k.lease.id), ["L-else"]);
  assert.equal(post.bodyTripwire.marks.find([`x=${c[0]!.placeholder}&y=${c[2]!.placeholder}`]).length, 0, "covered placeholders are no alarm");
  // Encoded forms of the away credential are marks too.
  const pct = [...Buffer.from(c[3]!.placeholder)].map((b) => "%" + b.toString(16).padStart(2, "0")).join("");
  assert.equal(post.bodyTripwire.marks.find([pct, Buffer.from(c[3]!.placeholder).toString("base64")]).length, 1);
  // A WebSocket handshake has no body, but its frames are watched.
  assert.ok((await fwd({ method: "GET", upgrade: "websocket", hasBody: false })).bodyTripwire);
  // No body, nothing to watch.
  assert.equal((await fwd({ method: "GET", hasBody: false })).bodyTripwire, undefined);
  // Firing it revokes the away lease (a tripwire report naming it) and says where.
  const detail = await post.bodyTripwire.trip(post.bodyTripwire.marks.find([c[3]!.placeholder]));
  assert.match(detail, /^Forbidden: the credential of else was sent in the request body to api\.example/);
  assert.ok(reports.some((r) => (r as { outcome: string; leaseIds: string[] }).outcome === "tripwire" && (r as { leaseIds: string[] }).leaseIds[0] === "L-else"));

  // Every credential covers the host: nothing watched.
  const { egress: only } = leaseEgress(c.slice(0, 3));
  assert.equal(((await prepareWith(only, request({ hasBody: true }))) as Extract<Prepared, { kind: "forward" }>).bodyTripwire, undefined);
});

test("LeaseEgress: too many marks for one automaton: bodies go unwatched with one warning; the head's tripwire still fires", async () => {
  // 50 long values away from api.example: the response scrubber compiles them, the body tripwire's
  // marks (about three times the bytes) are over the automaton's cap.
  const many: ProxyCredential[] = Array.from({ length: 50 }, (_, i) => {
    const value = `sk-${i}-` + Buffer.from(Array.from({ length: 150 }, (_, k) => (i * 31 + k * 7) % 256)).toString("base64");
    return { lease: lease(`L-${i}`, `s${i}`, ["far.example"]), secret: `s${i}`, placeholder: makePlaceholder(value), value, rule: { mode: "placeholder" } };
  });
  const api = {
    accessSecret: async () => assert.fail("the covered credential is not used by these requests"),
    api: { record_proxy_requests: async () => undefined },
    listLeases: async () => [],
  } as unknown as BackendApi;
  const warns: string[] = [];
  // One credential covers api.example; the other 49 are away from it.
  const mixed = new LeaseEgress({ api, agent: "bot", credentials: [{ ...many[0]!, lease: lease("L-near", "near", ["api.example"]) }, ...many.slice(1)], egress: "strict", warn: (l) => warns.push(l) });
  const a = (await prepareWith(mixed, request({ hasBody: true }))) as Extract<Prepared, { kind: "forward" }>;
  assert.equal(a.kind, "forward");
  assert.equal(a.bodyTripwire, undefined, "too many marks: the body goes unwatched");
  assert.equal(warns.length, 1);
  assert.match(warns[0]!, /does not watch request bodies to api\.example/);
  await prepareWith(mixed, request({ hasBody: true }));
  assert.equal(warns.length, 1, "said once");
  // The head's tripwire still fires for those credentials.
  const trip = await prepareWith(mixed, request({ headers: { "x-k": many[5]!.placeholder } }));
  assert.equal((trip as Extract<Prepared, { kind: "refuse" }>).reason, "tripwire");
});

test("LeaseEgress: a refused use of a body credential refuses the request (fail closed); the header tripwire still fires", async () => {
  const c = creds();
  const { egress: e } = leaseEgress(c, new Set(["L-body"]));
  const p = await prepareWith(e, request({ hasBody: true }));
  assert.equal(p.kind, "refuse");
  const r = p as Extract<Prepared, { kind: "refuse" }>;
  assert.equal(r.status, 403);
  assert.match(r.detail, /body may not be used for POST api\.example\/x: POST is not allowed/);

  // The header placeholder of a credential sent to a host its lease does not cover: tripwire.
  const t = leaseEgress(c);
  const trip = await prepareWith(t.egress, request({ host: "other.example", headers: { authorization: `Bearer ${c[0]!.placeholder}` } }));
  assert.equal(trip.kind, "refuse");
  assert.equal((trip as Extract<Prepared, { kind: "refuse" }>).reason, "tripwire");
});

test("LeaseEgress: a body-only credential with a line break in its value is fine in a body, refused in a header", async () => {
  const pem = "-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\n-----END KEY-----";
  const cred: ProxyCredential = { lease: lease("L-pem", "pem", ["api.example"]), secret: "pem", placeholder: makePlaceholder(pem), value: pem, rule: { mode: "placeholder", body: true } };
  const { egress: e } = leaseEgress([cred]);
  const p = (await prepareWith(e, request({ hasBody: true }))) as Extract<Prepared, { kind: "forward" }>;
  assert.equal(p.kind, "forward");
  assert.equal(scrub(`k=${cred.placeholder}`, p.requestBody!).toString(), `k=${pem}`);
  const refused = (await prepareWith(e, request({ hasBody: true, headers: { "x-key": cred.placeholder } }))) as Extract<Prepared, { kind: "refuse" }>;
  assert.equal(refused.kind, "refuse");
  assert.equal(refused.reason, "invalid_request");
  assert.match(refused.detail, /control character or line break/);
});
