/**
 * Use counting and lease bounds through the injecting proxy (docs/proxy.md "each injected request
 * counts one use", docs/security.md "The injecting proxy"; src/proxy/lease-egress.ts, intercept.ts,
 * h2.ts, websocket.ts), attacked by a hostile agent holding leases with small `max_uses`, short TTLs
 * and `methods`/`paths` rules.
 *
 * Rig: ForwardProxy over LeaseEgress over a real vault on a SQLite file, the SSRF guard with a table
 * resolver and the instrumented `loopbackOnly` connect step. Upstreams are loopback TLS servers this
 * file starts (HTTP/2 only; HTTP/1.1 with WebSocket; a port that resets every connection). Nothing
 * leaves 127.0.0.1.
 */
import { randomBytes } from "node:crypto";
import * as http2 from "node:http2";
import * as https from "node:https";
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import type * as tls from "node:tls";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type InjectionRule, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault, within } from "./helpers.js";
import { connectTunnel, inTime, loopbackOnly, openTunnel, readAll, tableResolver, tlsIn } from "./proxy-harness.js";

const H2 = "h2.uses.test.example"; // HTTP/2-only upstream
const H1 = "h1.uses.test.example"; // HTTP/1.1 upstream (and WebSocket)
const RST = "rst.uses.test.example"; // a port that resets every connection
const AWAY = "away.uses.test.example"; // covered by the "away" lease only (turns the body tripwire on)
const CANARY = "ghp_" + randomBytes(18).toString("hex"); // the credential A
const CANARY_B = "sk-" + randomBytes(18).toString("hex"); // the credential B
const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// --- upstreams ----------------------------------------------------------------------------------

interface Seen {
  proto: "h2" | "h1" | "ws";
  method: string;
  path: string;
  /** Every header value joined: where a credential would be. */
  heads: string;
  at: number;
}
const seen: Seen[] = [];
const wsPayloads: string[] = [];
const withCred = (s: Seen): boolean => s.heads.includes(CANARY) || s.heads.includes(CANARY_B);
const under = (prefix: string): Seen[] => seen.filter((s) => s.path.startsWith(prefix));

const upCa = LocalCa.create({ permitted: [H2, H1, RST] });

const h2up = http2.createSecureServer({ SNICallback: upCa.sniCallback, allowHTTP1: false });
h2up.on("stream", (stream, h) => {
  const path = String(h[":path"]);
  seen.push({ proto: "h2", method: String(h[":method"]), path, heads: JSON.stringify(h), at: Date.now() });
  stream.on("error", () => {});
  if (path.startsWith("/hang")) return void stream.resume();
  stream.resume();
  stream.on("end", () => {
    if (stream.closed || stream.destroyed) return;
    stream.respond({ ":status": 200, "content-type": "text/plain" });
    stream.end("ok " + path);
  });
});

const h1up = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  const path = req.url!;
  seen.push({ proto: "h1", method: req.method!, path, heads: JSON.stringify(req.headers), at: Date.now() });
  req.on("error", () => {});
  res.on("error", () => {});
  if (path.startsWith("/hang")) return void req.resume();
  if (path.startsWith("/reset")) return void req.socket.destroy();
  if (path.startsWith("/redir")) {
    req.resume();
    res.writeHead(path.startsWith("/redir308") ? 308 : 307, { location: "/target" + path, "content-length": 0 });
    return void res.end();
  }
  let n = 0;
  req.on("data", (d: Buffer) => (n += d.length));
  req.on("end", () => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`ok ${path} bytes=${n}`);
  });
});
h1up.on("upgrade", (req, sock: Socket) => {
  seen.push({ proto: "ws", method: req.method!, path: req.url!, heads: JSON.stringify(req.headers), at: Date.now() });
  sock.on("error", () => {});
  sock.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
  let buf: Buffer = Buffer.alloc(0);
  sock.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 2) {
      const len7 = buf[1]! & 0x7f;
      const ext = len7 === 126 ? 2 : len7 === 127 ? 8 : 0;
      const masked = (buf[1]! & 0x80) !== 0;
      const headLen = 2 + ext + (masked ? 4 : 0);
      if (buf.length < headLen) break;
      const len = ext === 0 ? len7 : ext === 2 ? buf.readUInt16BE(2) : Number(buf.readBigUInt64BE(2));
      if (buf.length < headLen + len) break;
      const payload = Buffer.from(buf.subarray(headLen, headLen + len));
      if (masked) {
        const key = buf.subarray(headLen - 4, headLen);
        for (let i = 0; i < payload.length; i++) payload[i] = payload[i]! ^ key[i & 3]!;
      }
      wsPayloads.push(payload.toString("latin1"));
      buf = buf.subarray(headLen + len);
    }
  });
});

/** Accepts a TCP connection and resets it at once (an upstream that fails mid-connect). */
const rstServer: Server = createServer((s) => {
  s.on("error", () => {});
  s.resetAndDestroy();
});

await new Promise<void>((r) => h2up.listen(0, "127.0.0.1", r));
await new Promise<void>((r) => h1up.listen(0, "127.0.0.1", r));
await new Promise<void>((r) => rstServer.listen(0, "127.0.0.1", r));
const h2port = (h2up.address() as AddressInfo).port;
const h1port = (h1up.address() as AddressInfo).port;
const rstPort = (rstServer.address() as AddressInfo).port;
const portOf = (host: string): number => (host === H2 ? h2port : host === RST ? rstPort : h1port);

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
  maxUses?: number;
  ttlMs?: number;
  /** Extra TOML lines of its policy rule (methods, paths). */
  extra?: string;
  domains?: string[];
}
interface Rig {
  port: number;
  ph: Record<string, string>;
  leaseId: Record<string, string>;
  connects: ConnectTo[];
  admin: Awaited<ReturnType<typeof makeVault>>["vault"] extends { admin(): infer A } ? A : never;
  uses(name: string): Promise<number>;
  close(): Promise<void>;
}
const rigs: Rig[] = [];
after(async () => {
  for (const r of rigs) await r.close().catch(() => {});
  for (const s of upSessions) s.destroy();
  for (const s of upSockets) s.destroy();
  h1up.closeAllConnections();
  rstServer.close();
  await inTime(Promise.all([new Promise<void>((r) => h1up.close(() => r())), new Promise<void>((r) => h2up.close(() => r()))]), 5000, "closing the upstreams").catch(() => {});
});

async function rig(specs: CredSpec[]): Promise<Rig> {
  const hosts = [H2, H1, RST];
  const policy = specs.map((c) => grant(c.name, ["bot"], [c.name], c.domains ?? hosts, c.extra ?? "")).join("");
  const { vault } = await makeVault({ policy });
  const admin = vault.admin();
  const creds: ProxyCredential[] = [];
  const ph: Record<string, string> = {};
  const leaseId: Record<string, string> = {};
  for (const c of specs) {
    await admin.storeSecret({ name: c.name, value: c.value });
    const lease = await admin.requestLease({
      agent: "bot",
      secret: c.name,
      domains: c.domains ?? hosts,
      ...(c.maxUses !== undefined ? { maxUses: c.maxUses } : {}),
      ...(c.ttlMs !== undefined ? { ttl: c.ttlMs } : {}),
    });
    ph[c.name] = makePlaceholder(c.value);
    leaseId[c.name] = lease.id;
    creds.push({ lease, secret: `global/${c.name}`, placeholder: ph[c.name]!, value: c.value, rule: c.rule });
  }
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: () => {} });
  const guard = new SsrfGuard({ ports: [h2port, h1port, rstPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [H2]: "127.0.0.1", [H1]: "127.0.0.1", [RST]: "127.0.0.1", [AWAY]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const direct = loopbackOnly(connects);
  const ca = LocalCa.create({ permitted: [H2, H1, RST, AWAY] });
  const proxy = new ForwardProxy({
    egress,
    ca,
    guard,
    upstreamCa: upCa.certPem,
    connect: direct,
  });
  const port = await proxy.listen();
  egress.start();
  let closed = false;
  const r: Rig = {
    port,
    ph,
    leaseId,
    connects,
    admin,
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
async function rawH1(r: Rig, host: string, text: string | Buffer, ms = 3000): Promise<string> {
  const s = await openTunnel(r.port, host, portOf(host));
  s.write(text);
  return readAll(s, ms);
}
const statuses = (answer: string): number[] => [...answer.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));

async function h2session(r: Rig, host: string): Promise<http2.ClientHttp2Session> {
  return (await h2tunnel(r, host)).session;
}
/** An HTTP/2 session through a tunnel, with the tunnel's raw TCP socket (to cut the connection whole). */
async function h2tunnel(r: Rig, host: string): Promise<{ session: http2.ClientHttp2Session; raw: Socket }> {
  const raw = await connectTunnel(r.port, host, portOf(host));
  const s: tls.TLSSocket = await tlsIn(raw, host, "h2");
  const session = http2.connect(`https://${host}`, { createConnection: () => s });
  session.on("error", () => {});
  return { session, raw };
}
function h2req(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const st = session.request(headers, { endStream: body === undefined });
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

// =================================================================================================
// Concurrency: exactly max_uses go with the credential
// =================================================================================================

test("held: 50 concurrent HTTP/2 streams on one connection, and 50 over five connections, all carrying the placeholder: exactly max_uses reach the upstream with the credential", { timeout: 30_000 }, async () => {
  for (const [conns, maxUses] of [[1, 1], [5, 2]] as const) {
    const r = await rig([{ name: `c${conns}`, value: CANARY, rule: { mode: "placeholder" }, maxUses }]);
    const tag = `/conc-${conns}-`;
    const sessions = await Promise.all(Array.from({ length: conns }, () => h2session(r, H2)));
    const answers = await Promise.all(
      Array.from({ length: 50 }, (_, i) => h2req(sessions[i % conns]!, { ":path": `${tag}${i}`, authorization: `Bearer ${r.ph[`c${conns}`]}` })),
    );
    for (const s of sessions) s.destroy();
    await delay(100);
    const ok = answers.filter((a) => a.status === 200).length;
    const up = under(tag);
    assert.equal(up.filter(withCred).length, maxUses, `${conns} connection(s): ${up.filter(withCred).length} requests reached the upstream with the credential (max_uses = ${maxUses})`);
    assert.equal(up.length, maxUses, `${conns} connection(s): ${up.length} requests reached the upstream at all`);
    assert.equal(ok, maxUses);
    assert.equal(await r.uses(`c${conns}`), maxUses);
    await r.close();
  }
});

test("held: HTTP/1.1 pipelining of 10 requests on a max_uses = 2 lease: 2 go upstream with the credential, the rest are refused 403", { timeout: 30_000 }, async () => {
  const r = await rig([{ name: "pipe", value: CANARY, rule: { mode: "placeholder" }, maxUses: 2 }]);
  let burst = "";
  for (let i = 0; i < 10; i++) burst += `GET /pipe-${i} HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${r.ph.pipe}\r\n\r\n`;
  const got = await rawH1(r, H1, burst, 3000);
  assert.deepEqual(statuses(got), [200, 200, 403, 403, 403, 403, 403, 403, 403, 403]);
  assert.equal(under("/pipe-").length, 2);
  assert.equal(under("/pipe-").filter(withCred).length, 2);
  assert.equal(await r.uses("pipe"), 2);
  await r.close();
});

// =================================================================================================
// Uses spent on requests that never go
// =================================================================================================

test("HTTP/2 streams to an HTTP/1.1 upstream wait in the tunnel's line unasked: no use is spent on a stream that has not gone, and none goes once the client cut its connection", { timeout: 30_000 }, async () => {
  // docs/security.md (the DoS row): "One upstream connection per tunnel and one request in flight (32
  // more wait, then 503); a use is spent only on a request about to go, never past max_uses". Over
  // HTTP/1.1 the waiting requests are asked nothing (test/proxy-dos-attacks.test.ts "no use is spent on
  // a request that has not gone"); over HTTP/2 to an HTTP/1.1 upstream each stream is granted at once
  // and then waits in the tunnel agent's queue.
  const r = await rig([{ name: "q", value: CANARY, rule: { mode: "placeholder" }, maxUses: 5 }]);
  const { session, raw } = await h2tunnel(r, H1);
  const first = session.request({ ":path": "/hang/q-0", authorization: `Bearer ${r.ph.q}` });
  first.on("error", () => {});
  await within(5000, "the first request reaching the upstream", () => under("/hang/q-0").length === 1);
  for (let i = 1; i < 10; i++) {
    const st = session.request({ ":path": `/q-${i}`, authorization: `Bearer ${r.ph.q}` });
    st.on("error", () => {});
    st.resume();
  }
  await delay(800);
  const sent = under("/hang/q-").length + under("/q-").length;
  const usesWhileWaiting = await r.uses("q");
  // The agent gives up on the connection: the waiting streams never go.
  const destroyedAt = Date.now();
  session.destroy();
  raw.destroy();
  await delay(300);
  const sentTotal = under("/hang/q-").length + under("/q-").length;
  const afterCut = under("/q-").filter((x) => x.at >= destroyedAt && withCred(x)).length;
  // A fresh request: the lease had 5 uses and the upstream got one request with the credential.
  const after = await rawH1(r, H1, `GET /q-after HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${r.ph.q}\r\nConnection: close\r\n\r\n`);
  await r.close();
  assert.ok(
    usesWhileWaiting <= sent && afterCut === 0 && statuses(after)[0] === 200,
    `while 1 request was in flight upstream (${sent} sent), ${usesWhileWaiting} uses of a max_uses = 5 lease were counted for streams waiting in the tunnel's queue; ` +
      `the agent then cut its connection, yet ${afterCut} of the queued requests still went upstream with the credential afterwards (${sentTotal} in all), and the next request got ${statuses(after)[0]} ` +
      "(src/proxy/h2.ts onStream asks the policy per stream before viaH1 queues it on the tunnel agent; no 32-request line as src/proxy/intercept.ts inLine gives HTTP/1.1)",
  );
});

test("HTTP/2 streams to an HTTP/1.1 upstream: one in flight, 32 wait, the rest are answered 503, on a fresh tunnel and on one whose upstream is known; one use spent", { timeout: 30_000 }, async () => {
  // docs/security.md (the DoS row): "one request in flight (32 more wait, then 503)".
  const r = await rig([{ name: "cap", value: CANARY, rule: { mode: "placeholder" }, maxUses: 5 }]);
  const { session } = await h2tunnel(r, H1);
  const open = (path: string): Promise<number> =>
    new Promise((resolve) => {
      const st = session.request({ ":path": path, authorization: `Bearer ${r.ph.cap}` });
      st.on("response", (h) => resolve(Number(h[":status"])));
      st.on("error", () => resolve(-1));
      st.on("close", () => resolve(0));
      st.resume();
    });
  // 41 at once on a fresh tunnel (the upstream's protocol not known yet): 1 goes, 32 wait, 8 get 503.
  const first = Array.from({ length: 41 }, (_, i) => open(`/hang/cap-${i}`));
  await within(5000, "the first request reaching the upstream", () => under("/hang/cap-").length === 1);
  const firstAnswers = await inTime(Promise.all(first.slice(33)), 5000, "the 503s of the first burst");
  // 5 more on the tunnel now known to reach HTTP/1.1: the line is full.
  const second = await inTime(Promise.all(Array.from({ length: 5 }, (_, i) => open(`/hang/cap-more-${i}`))), 5000, "the 503s of the second burst");
  await delay(300);
  const upstream = under("/hang/cap-").length;
  const uses = await r.uses("cap");
  session.destroy();
  await r.close();
  assert.deepEqual(firstAnswers, Array(8).fill(503));
  assert.deepEqual(second, Array(5).fill(503));
  assert.equal(upstream, 1, "one request in flight upstream");
  assert.equal(uses, 1, "no use spent on a stream waiting or answered 503");
});

test("held: HTTP/2 streams granted while they wait behind a busy HTTP/1.1 upstream connection never go upstream once the lease was revoked and the tunnel closed", { timeout: 30_000 }, async () => {
  // docs/security.md (the DoS row): "a request granted while its connection is made never goes out once
  // the tunnel closed (lease revoked, proxy closing)"; docs/proxy.md "Revocation": a lease revoked
  // "stops injection at the next request, and the tunnels that used it are closed".
  const r = await rig([{ name: "rv", value: CANARY, rule: { mode: "placeholder" } }]);
  const { session, raw } = await h2tunnel(r, H1);
  let tunnelClosed = false;
  raw.on("close", () => (tunnelClosed = true));
  const first = session.request({ ":path": "/hang/rv-0", authorization: `Bearer ${r.ph.rv}` });
  first.on("error", () => {});
  await within(5000, "the first request reaching the upstream", () => under("/hang/rv-0").length === 1);
  for (let i = 1; i < 6; i++) {
    const st = session.request({ ":path": `/rv-${i}`, authorization: `Bearer ${r.ph.rv}` });
    st.on("error", () => {});
    st.resume();
  }
  await delay(500);
  assert.equal(under("/rv-").length, 0, "the five wait behind the pending answer");
  const usesGranted = await r.uses("rv");
  await r.admin.revokeLease(r.leaseId.rv!, "the owner pulls it");
  const revokedAt = Date.now();
  await within(3000, "the tunnel closing after the revocation", () => tunnelClosed, 10);
  await delay(500);
  const late = under("/rv-").filter((s) => withCred(s) && s.at >= revokedAt);
  session.destroy();
  await r.close();
  assert.deepEqual(
    late.map((s) => `${s.path} +${s.at - revokedAt} ms`),
    [],
    `${usesGranted} uses were granted while the first request hung; after the revocation closed the tunnel, these went upstream with the credential ` +
      "(src/proxy/intercept.ts tunnelAgent: destroy() drops only requests waiting for a connection being made, not those queued in node's Agent behind a busy socket; the busy socket's close makes the Agent open a new one for them)",
  );
});

test("a request carrying two credentials' placeholders, one of whose leases does not allow its method, is refused before any use: the other lease keeps its use", { timeout: 30_000 }, async () => {
  // docs/security.md: "a use is spent only on a request about to go"; docs/proxy.md: a request outside
  // the grant's methods is refused and "nothing goes upstream".
  const r = await rig([
    { name: "a", value: CANARY, rule: { mode: "placeholder" }, maxUses: 1 },
    { name: "b", value: CANARY_B, rule: { mode: "placeholder" }, extra: 'methods = ["GET"]' },
  ]);
  const refused = await rawH1(r, H1, `POST /two HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${r.ph.a}\r\nX-B: ${r.ph.b}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
  assert.equal(statuses(refused)[0], 403, "B's methods rule refuses the POST");
  assert.equal(under("/two").length, 0, "nothing went upstream");
  const usesA = await r.uses("a");
  const next = await rawH1(r, H1, `GET /a-only HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${r.ph.a}\r\nConnection: close\r\n\r\n`);
  await r.close();
  assert.ok(
    usesA === 0 && statuses(next)[0] === 200,
    `the refused request (nothing sent) spent ${usesA} use(s) of A's max_uses = 1 lease, and A's next request got ${statuses(next)[0]}: ` +
      "src/proxy/lease-egress.ts #prepare uses each credential in turn (accessSecret) and only then learns the second is refused; its pre-check tests override headers, not the lease's methods/paths",
  );
});

test("a request refused 415 for its Content-Encoding (a body rule, or an unreadable coding under the tripwire) is refused from its head, before any use", { timeout: 30_000 }, async () => {
  // docs/proxy.md: "a compressed body is refused with 415"; "Refused instead of passed unread: … before
  // anything is sent, any other coding or more than one (415, reason: "request_encoding")";
  // docs/security.md: "a use is spent only on a request about to go".
  const r = await rig([
    { name: "body", value: CANARY, rule: { mode: "placeholder", body: true }, maxUses: 1, domains: [H1] },
    { name: "bear", value: CANARY_B, rule: { mode: "bearer" }, maxUses: 1, domains: [H2] },
    { name: "away", value: "sk-" + randomBytes(18).toString("hex"), rule: { mode: "placeholder" }, domains: [AWAY] },
  ]);
  const broken: string[] = [];
  // 1. body = true and a gzip body over HTTP/1.1.
  const gz = await rawH1(r, H1, `POST /gz HTTP/1.1\r\nHost: ${H1}\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd`);
  assert.equal(statuses(gz)[0], 415, gz);
  const after1 = await rawH1(r, H1, `POST /gz-after HTTP/1.1\r\nHost: ${H1}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi`);
  if ((await r.uses("body")) !== 1 || statuses(after1)[0] !== 200)
    broken.push(`body = true: the 415 for a gzip body spent the only use; the next plain POST got ${statuses(after1)[0]}`);
  // 2. a bearer credential, the body tripwire on (a lease for another host), a zstd body over HTTP/2.
  const session = await h2session(r, H2);
  const zstd = await h2req(session, { ":method": "POST", ":path": "/zstd", "content-encoding": "zstd" }, "abcd");
  assert.equal(zstd.status, 415);
  const after2 = await h2req(session, { ":method": "GET", ":path": "/zstd-after" });
  session.destroy();
  if ((await r.uses("bear")) !== 1 || after2.status !== 200)
    broken.push(`bearer + tripwire: the 415 for a zstd body spent the only use; the next GET got ${after2.status}`);
  await r.close();
  assert.deepEqual(broken, [], "src/proxy/intercept.ts send() and src/proxy/h2.ts send() refuse the coding after LeaseEgress #prepare has counted the use:\n" + broken.join("\n"));
});

// =================================================================================================
// Failures, retries, redirects: one use per request the agent sends
// =================================================================================================

test("held: an upstream that resets the connection (at connect, or after reading the request) costs one use and is not retried: 502, one connect, the credential sent at most once", { timeout: 30_000 }, async () => {
  const r = await rig([{ name: "f", value: CANARY, rule: { mode: "placeholder" }, maxUses: 3 }]);
  const a = await rawH1(r, RST, `GET /x HTTP/1.1\r\nHost: ${RST}\r\nAuthorization: Bearer ${r.ph.f}\r\nConnection: close\r\n\r\n`);
  assert.equal(statuses(a)[0], 502);
  assert.equal(r.connects.filter((c) => c.port === rstPort).length, 1, "one connect, no retry");
  assert.equal(await r.uses("f"), 1);
  const b = await rawH1(r, H1, `GET /reset-1 HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${r.ph.f}\r\nConnection: close\r\n\r\n`);
  assert.equal(statuses(b)[0], 502);
  assert.equal(under("/reset-1").length, 1, "the request that reset reached the upstream once (no retry)");
  assert.equal(await r.uses("f"), 2);
  // Over HTTP/2 to the HTTP/1.1 upstream too.
  const session = await h2session(r, H1);
  const c = await h2req(session, { ":path": "/reset-2", authorization: `Bearer ${r.ph.f}` });
  session.destroy();
  assert.equal(c.status, 502);
  assert.equal(under("/reset-2").length, 1);
  assert.equal(await r.uses("f"), 3);
  await r.close();
});

test("held: a 307 / 308 to the same host is relayed, not followed: the client's re-send is a request of its own, one more use", { timeout: 30_000 }, async () => {
  const r = await rig([{ name: "rd", value: CANARY, rule: { mode: "placeholder" }, maxUses: 2 }]);
  const a = await rawH1(r, H1, `POST /redir307 HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${r.ph.rd}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi`);
  assert.equal(statuses(a)[0], 307);
  assert.equal(under("/target").length, 0, "the proxy did not follow the redirect");
  assert.equal(await r.uses("rd"), 1);
  const session = await h2session(r, H1);
  const b = await h2req(session, { ":method": "POST", ":path": "/redir308", authorization: `Bearer ${r.ph.rd}` }, "hi");
  assert.equal(b.status, 308);
  const c = await h2req(session, { ":path": "/target/redir308", authorization: `Bearer ${r.ph.rd}` });
  session.destroy();
  assert.equal(c.status, 403, "the third request is past max_uses = 2");
  assert.equal(under("/target").length, 0);
  await r.close();
});

test("held: the placeholder in two headers (and inside a Basic pair) is one use, and both are filled in", { timeout: 30_000 }, async () => {
  const r = await rig([{ name: "two", value: CANARY, rule: { mode: "placeholder" }, maxUses: 1 }]);
  const basic = Buffer.from(`x:${r.ph.two}`).toString("base64");
  const a = await rawH1(r, H1, `GET /twoheads HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Basic ${basic}\r\nX-Token: ${r.ph.two}\r\nX-Other: t=${r.ph.two}\r\nConnection: close\r\n\r\n`);
  assert.equal(statuses(a)[0], 200);
  assert.equal(await r.uses("two"), 1);
  const s = under("/twoheads")[0]!;
  assert.ok(s.heads.includes(`"x-token":"${CANARY}"`) && s.heads.includes(`t=${CANARY}`));
  assert.ok(!s.heads.includes(r.ph.two!));
  await r.close();
});

test("held: a placeholder only in HTTP/2 request trailers is neither counted nor filled in", { timeout: 30_000 }, async () => {
  const r = await rig([{ name: "tr", value: CANARY, rule: { mode: "placeholder" }, maxUses: 1 }]);
  const session = await h2session(r, H2);
  const got = await new Promise<number>((resolve) => {
    const st = session.request({ ":method": "POST", ":path": "/trailers" }, { waitForTrailers: true });
    st.on("wantTrailers", () => st.sendTrailers({ "x-token": r.ph.tr! }));
    st.on("response", (h) => resolve(Number(h[":status"])));
    st.on("error", () => resolve(-1));
    st.end("body");
  });
  session.destroy();
  assert.equal(got, 200);
  assert.equal(await r.uses("tr"), 0);
  assert.equal(under("/trailers").filter(withCred).length, 0);
  await r.close();
});

// =================================================================================================
// Expiry: a WebSocket past its lease, a request granted just before expiry
// =================================================================================================

/** A masked client text frame. */
function wsFrame(text: string): Buffer {
  const payload = Buffer.from(text, "latin1");
  const key = randomBytes(4);
  const masked = Buffer.from(payload.map((b, i) => b ^ key[i & 3]!));
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), key, masked]);
}

test("held: a WebSocket handshake counts one use; its frames are filled in, and the connection is cut once the lease expires", { timeout: 30_000 }, async () => {
  const r = await rig([{ name: "ws", value: CANARY, rule: { mode: "placeholder", websocket: true }, maxUses: 1, ttlMs: 1500 }]);
  const s = await openTunnel(r.port, H1, h1port);
  let closed = false;
  s.on("close", () => (closed = true));
  let head = "";
  s.on("data", (d: Buffer) => (head += d.toString("latin1")));
  s.write(`GET /ws-exp HTTP/1.1\r\nHost: ${H1}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  await within(5000, "the 101", () => head.includes("101"));
  s.write(wsFrame(`tok=${r.ph.ws}`));
  await within(3000, "the first frame upstream", () => wsPayloads.some((p) => p === `tok=${CANARY}`));
  assert.equal(await r.uses("ws"), 1);
  // Past the lease's expiry (1.5 s from its grant) the run's watch closes the connection.
  await within(4000, "the WebSocket closing after the lease expired", () => closed, 20);
  const before = wsPayloads.length;
  if (!s.destroyed) s.write(wsFrame(`late=${r.ph.ws}`));
  await delay(200);
  assert.equal(wsPayloads.slice(before).filter((p) => p.includes(CANARY)).length, 0);
  await r.close();
});

// =================================================================================================
// methods / paths bounds, however the request is written
// =================================================================================================

test("held: methods = [\"GET\"], paths = [\"/ok/\"]: HEAD, OPTIONS *, absolute form, ;params, //, backslashes, %2f, %252e, unicode dots, * and CONNECT (extended too) inside HTTP/2 never reach the upstream with the credential outside /ok/ or GET", { timeout: 30_000 }, async () => {
  const r = await rig([{ name: "b", value: CANARY, rule: { mode: "placeholder" }, extra: 'methods = ["GET"]\npaths = ["/ok/"]' }]);
  const ph = r.ph.b!;
  const start = seen.length;
  const targets = [
    "/ok/..;/admin",
    "/ok/.;/admin",
    "/ok;/../admin",
    "/ok//../admin",
    "//ok/../admin",
    "/ok/..%5cadmin",
    "/ok/..\\admin",
    "/ok/..%2fadmin",
    "/ok/%2e%2e/admin",
    "/ok/%252e%252e/admin",
    "/ok/%EF%BC%8E%EF%BC%8E/admin",
    "/ok/%E2%80%A4%E2%80%A4/admin",
    "/ok/%C0%AE%C0%AE/admin",
    "/ok/.%2e/admin",
    "*",
    "https://" + H1 + "/admin",
    "/ok/x;/../../admin",
  ];
  const h1 = [
    ...targets.map((t) => `GET ${t} HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${ph}\r\nConnection: close\r\n\r\n`),
    `HEAD /ok/x HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${ph}\r\nConnection: close\r\n\r\n`,
    `OPTIONS * HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${ph}\r\nConnection: close\r\n\r\n`,
    `POST /ok/x HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${ph}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`,
  ];
  for (const text of h1) await rawH1(r, H1, text, 1500);
  const session = await h2session(r, H2);
  for (const t of targets.filter((x) => x.startsWith("/"))) await h2req(session, { ":path": t, authorization: `Bearer ${ph}` });
  await h2req(session, { ":method": "HEAD", ":path": "/ok/x", authorization: `Bearer ${ph}` });
  await h2req(session, { ":method": "OPTIONS", ":path": "*", authorization: `Bearer ${ph}` });
  await h2req(session, { ":method": "CONNECT", ":authority": `${H2}:${h2port}`, authorization: `Bearer ${ph}` });
  session.destroy();
  await delay(200);
  const bad = seen.slice(start).filter((s) => withCred(s) && (s.method !== "GET" || !s.path.startsWith("/ok/") || /\.\.|\/\/|\\|%2f|%25|;\//i.test(s.path.slice(4))));
  await r.close();
  assert.deepEqual(bad.map((s) => `${s.proto} ${s.method} ${s.path}`), []);
});
