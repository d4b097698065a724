/**
 * Protocol-level denial of service and resource attacks on the injecting proxy (src/proxy/forward.ts,
 * h2.ts, intercept.ts, websocket.ts), by a hostile agent that holds a valid grant for the hosts it
 * attacks through: HTTP/2 rapid reset, CONTINUATION floods, an HPACK bomb, SETTINGS / PING floods,
 * flow-control abuse, clients and upstreams that never read, WebSocket fragment and ping floods,
 * HTTP/1.1 pipelining, a slowloris head and a body of tiny chunks inside a tunnel; and whether each
 * injected request still counts exactly one lease use and one audit event under resets.
 *
 * The rig is the proxy as `lessor run` wires it: ForwardProxy over LeaseEgress over a real vault, the
 * SSRF guard with a table resolver, and the instrumented connect step that fails the test for any
 * address but 127.0.0.1. The upstreams are local TLS servers (HTTP/2 and HTTP/1.1 + WebSocket) this
 * file creates. Raw HTTP/2 frames are written by hand over a TLS socket with ALPN h2.
 *
 * Four breaks this pass found are fixed and held here: pipelined requests each opened an upstream
 * connection (and spent a use) at once; a request granted while its upstream connection was being
 * made went out after the tunnel closed (a revoked lease, the proxy closing); refused requests were
 * an unthrottled audit flood.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import * as https from "node:https";
import type { IncomingHttpHeaders } from "node:http";
import { connect as netConnect, createConnection, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import * as tls from "node:tls";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault, within } from "./helpers.js";
import { inTime, loopbackOnly, tableResolver } from "./proxy-harness.js";

const H2 = "h2.dos.test.example"; // upstream speaking HTTP/2 only
const H1 = "h1.dos.test.example"; // upstream speaking HTTP/1.1 only (and WebSocket)
const TOKEN = "ghp_" + "Q1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k8"; // injected as a bearer token
const WS_VALUE = "sk-" + "wsv0123456789abcdefABCDEF0123456789ab"; // a placeholder rule with websocket = true
const AWAY_VALUE = "sk-" + "away0123456789abcdef0123456789abcdef"; // a lease for another host: turns the body tripwire on

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));


// --- upstreams ----------------------------------------------------------------------------------

interface Seen {
  proto: "h2" | "h1" | "ws";
  path: string;
  auth: string;
  at: number;
}
/** Every request an upstream received, with the time it arrived. */
const seen: Seen[] = [];
const seenUnder = (prefix: string): Seen[] => seen.filter((s) => s.path.startsWith(prefix));
/** Bytes the upstreams managed to write or receive in the flow-control tests. */
const counters = { bigWritten: 0, wsServerWritten: 0 };
const BIG_CAP = 256 * 1024 * 1024;

const upCa = LocalCa.create({ permitted: [H2, H1] });

const h2up = http2.createSecureServer({ SNICallback: upCa.sniCallback, allowHTTP1: false });
h2up.on("stream", (stream, h) => {
  const path = String(h[":path"]);
  seen.push({ proto: "h2", path, auth: String(h.authorization ?? ""), at: Date.now() });
  stream.on("error", () => {});
  if (path.startsWith("/hang")) return void stream.resume(); // reads, never answers
  if (path.startsWith("/sink")) return void stream.pause(); // never reads
  if (path.startsWith("/big")) {
    // Streams as fast as flow control lets it, honouring backpressure (so what it managed to write is
    // what the proxy took off it).
    stream.respond({ ":status": 200, "content-type": "application/octet-stream" });
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    const pump = (): void => {
      while (!stream.destroyed && counters.bigWritten < BIG_CAP) {
        counters.bigWritten += chunk.length;
        if (!stream.write(chunk)) return void stream.once("drain", pump);
      }
    };
    pump();
    return;
  }
  stream.resume();
  stream.on("end", () => {
    if (stream.closed || stream.destroyed) return;
    stream.respond({ ":status": 200, "content-type": "text/plain" });
    stream.end("ok " + path);
  });
});

const h1up = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  const path = req.url!;
  seen.push({ proto: "h1", path, auth: String(req.headers.authorization ?? ""), at: Date.now() });
  req.on("error", () => {});
  res.on("error", () => {});
  if (path.startsWith("/sink")) return void req.pause();
  if (path.startsWith("/hang")) return void req.resume();
  if (path.startsWith("/big")) {
    req.resume();
    res.writeHead(200, { "content-type": "application/octet-stream" });
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    const pump = (): void => {
      while (!res.destroyed && counters.bigWritten < BIG_CAP) {
        counters.bigWritten += chunk.length;
        if (!res.write(chunk)) return void res.once("drain", pump);
      }
    };
    pump();
    return;
  }
  let n = 0;
  req.on("data", (d: Buffer) => (n += d.length));
  req.on("end", () => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`ok ${path} bytes=${n}`);
  });
});

/** What the WebSocket upstream (/ws-count) parsed from the client's frames. */
const wsSeen: { frames: number; pings: number; message: Buffer; messages: number; payloadBytes: number } = { frames: 0, pings: 0, message: Buffer.alloc(0), messages: 0, payloadBytes: 0 };

/** Parses client frames (masked) as they come; collects the first data message whole. */
function countFrames(sock: Socket): void {
  let buf: Buffer = Buffer.alloc(0);
  let msg: Buffer[] = [];
  sock.on("data", (d: Buffer) => {
    buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
    for (;;) {
      if (buf.length < 2) break;
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
      const fin = (buf[0]! & 0x80) !== 0;
      const op = buf[0]! & 0x0f;
      buf = buf.subarray(headLen + len);
      wsSeen.frames++;
      if (op === 9) wsSeen.pings++;
      if (op < 8) {
        wsSeen.payloadBytes += len;
        if (wsSeen.messages === 0) msg.push(payload);
        if (fin) {
          if (wsSeen.messages === 0) wsSeen.message = Buffer.concat(msg);
          wsSeen.messages++;
          msg = [];
        }
      }
    }
  });
}

h1up.on("upgrade", (req, sock: Socket) => {
  seen.push({ proto: "ws", path: req.url!, auth: String(req.headers.authorization ?? ""), at: Date.now() });
  sock.on("error", () => {});
  sock.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
  if (req.url!.startsWith("/ws-flood")) {
    // Unmasked binary frames of 60,000 bytes, as fast as backpressure lets it.
    const f = Buffer.concat([Buffer.from([0x82, 126, 60000 >> 8, 60000 & 255]), Buffer.alloc(60000, 0x62)]);
    const pump = (): void => {
      while (!sock.destroyed && counters.wsServerWritten < BIG_CAP) {
        counters.wsServerWritten += f.length;
        if (!sock.write(f)) return void sock.once("drain", pump);
      }
    };
    pump();
  } else if (req.url!.startsWith("/ws-sink")) sock.pause();
  else countFrames(sock);
});

await new Promise<void>((r) => h2up.listen(0, "127.0.0.1", r));
await new Promise<void>((r) => h1up.listen(0, "127.0.0.1", r));
const h2port = (h2up.address() as AddressInfo).port;
const h1port = (h1up.address() as AddressInfo).port;

/** Every connection the upstreams accepted (WebSocket ones included), destroyed when the file ends. */
const upstreamSockets = new Set<Socket>();
const upstreamSessions = new Set<http2.ServerHttp2Session>();
h2up.on("session", (s) => {
  upstreamSessions.add(s);
  s.on("error", () => {});
  s.once("close", () => upstreamSessions.delete(s));
});
for (const server of [h2up, h1up])
  server.on("secureConnection", (s: Socket) => {
    upstreamSockets.add(s);
    s.once("close", () => upstreamSockets.delete(s));
  });

// --- the rig: ForwardProxy over LeaseEgress over a real vault -------------------------------------

interface Rig {
  port: number;
  proxy: ForwardProxy;
  ca: LocalCa;
  egress: LeaseEgress;
  admin: ReturnType<Awaited<ReturnType<typeof makeVault>>["vault"]["admin"]>;
  leaseId: string;
  wsPlaceholder: string;
  /** Every connect the proxy made (the upstream port it asked for). */
  connects: ConnectTo[];
  /** Audit events of `type` (outcome "ok" unless given). */
  events(type: string, outcome?: string): Promise<number>;
  /** Writes the refusals the vault counted but did not write yet (their summary rows). */
  flushRefusals(): Promise<void>;
  close(): Promise<void>;
}

const rigs: Rig[] = [];
after(async () => {
  for (const r of rigs) await r.close().catch(() => {});
  for (const s of upstreamSessions) s.destroy();
  for (const s of upstreamSockets) s.destroy();
  h1up.closeAllConnections();
  await inTime(Promise.all([new Promise<void>((r) => h1up.close(() => r())), new Promise<void>((r) => h2up.close(() => r()))]), 5000, "closing the upstreams").catch(() => {});
});

/**
 * A proxy with one bearer credential (`tok`) for both upstreams. `extras`: also a placeholder rule
 * with `body` and `websocket` for both, and a lease for another host (so the body and frame
 * tripwire is on). `connectDelayMs`: every upstream connection goes through a loopback relay that
 * holds it that long before joining it to the upstream (a far upstream, a slow handshake).
 */
async function rig(o: { maxUses?: number; paths?: string; extras?: boolean; connectDelayMs?: number; headersTimeoutMs?: number; idleTimeoutMs?: number } = {}): Promise<Rig> {
  const policy =
    grant("tok", ["bot"], ["tok"], [H2, H1], o.paths ?? "") + grant("wsk", ["bot"], ["wsk"], [H2, H1]) + grant("away", ["bot"], ["away"], ["elsewhere.test.example"]);
  const { vault } = await makeVault({ policy, store: "memory" });
  const admin = vault.admin();
  await admin.storeSecret({ name: "tok", value: TOKEN });
  const lease = await admin.requestLease({ agent: "bot", secret: "tok", domains: [H2, H1], ...(o.maxUses !== undefined ? { maxUses: o.maxUses } : {}) });
  const creds: ProxyCredential[] = [{ lease, secret: "global/tok", placeholder: makePlaceholder(TOKEN), value: TOKEN, rule: { mode: "bearer" } }];
  const wsPlaceholder = makePlaceholder(WS_VALUE);
  if (o.extras) {
    await admin.storeSecret({ name: "wsk", value: WS_VALUE });
    await admin.storeSecret({ name: "away", value: AWAY_VALUE });
    const l2 = await admin.requestLease({ agent: "bot", secret: "wsk", domains: [H2, H1] });
    const l3 = await admin.requestLease({ agent: "bot", secret: "away", domains: ["elsewhere.test.example"] });
    creds.push({ lease: l2, secret: "global/wsk", placeholder: wsPlaceholder, value: WS_VALUE, rule: { mode: "placeholder", body: true, websocket: true } });
    creds.push({ lease: l3, secret: "global/away", placeholder: makePlaceholder(AWAY_VALUE), value: AWAY_VALUE, rule: { mode: "placeholder" } });
  }
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: () => {} });
  const guard = new SsrfGuard({ ports: [h2port, h1port], allow: ["127.0.0.0/8"], resolve: tableResolver({ [H2]: "127.0.0.1", [H1]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const direct = loopbackOnly();
  const relays: Server[] = [];
  const relayPort = new Map<number, number>();
  if (o.connectDelayMs !== undefined) {
    for (const target of [h2port, h1port]) {
      const relay = createServer((c) => {
        c.on("error", () => {});
        c.pause();
        setTimeout(() => {
          if (c.destroyed) return; // the proxy gave up on this connection: it never reaches the upstream
          const u = createConnection({ host: "127.0.0.1", port: target });
          u.on("error", () => c.destroy());
          c.on("close", () => u.destroy());
          u.on("close", () => c.destroy());
          c.pipe(u);
          u.pipe(c);
          c.resume();
        }, o.connectDelayMs).unref();
      });
      await new Promise<void>((r) => relay.listen(0, "127.0.0.1", r));
      relays.push(relay);
      relayPort.set(target, (relay.address() as AddressInfo).port);
    }
  }
  const ca = LocalCa.create({ permitted: [H2, H1] });
  const proxy = new ForwardProxy({
    egress,
    ca,
    guard,
    upstreamCa: upCa.certPem,
    connect: (to) => {
      connects.push(to);
      return direct(relayPort.has(to.port) ? { ...to, port: relayPort.get(to.port)! } : to);
    },
    ...(o.headersTimeoutMs !== undefined ? { headersTimeoutMs: o.headersTimeoutMs } : {}),
    ...(o.idleTimeoutMs !== undefined ? { idleTimeoutMs: o.idleTimeoutMs } : {}),
  });
  const port = await proxy.listen();
  egress.start();
  let closed = false;
  const r: Rig = {
    port,
    proxy,
    ca,
    egress,
    admin,
    leaseId: lease.id,
    wsPlaceholder,
    connects,
    events: async (type, outcome = "ok") => (await admin.auditQuery({ types: [type], limit: 100_000 })).filter((e) => e.outcome === outcome).length,
    flushRefusals: () => vault.flushRefusals(),
    close: async () => {
      if (closed) return;
      closed = true;
      await proxy.close();
      await egress.close();
      for (const relay of relays) relay.close();
    },
  };
  rigs.push(r);
  return r;
}

/** A CONNECT tunnel to `host` through the rig, then TLS inside it with `alpn`, trusting the proxy's CA. */
async function tunnel(r: Rig, host: string, alpn: string[]): Promise<tls.TLSSocket> {
  const upPort = host === H2 ? h2port : h1port;
  const raw = netConnect(r.port, "127.0.0.1");
  raw.on("error", () => {});
  raw.write(`CONNECT ${host}:${upPort} HTTP/1.1\r\nHost: ${host}:${upPort}\r\n\r\n`);
  const head = await inTime(
    new Promise<string>((resolve, reject) => {
      let buf = Buffer.alloc(0);
      const onData = (d: Buffer): void => {
        buf = Buffer.concat([buf, d]);
        if (buf.indexOf("\r\n\r\n") < 0) return;
        raw.off("data", onData);
        raw.pause();
        resolve(buf.toString("latin1"));
      };
      raw.on("data", onData);
      raw.once("error", reject);
      raw.once("close", () => reject(new Error("the proxy closed the CONNECT")));
    }),
    5000,
    "the CONNECT answer",
  );
  assert.match(head, /^HTTP\/1\.1 200 /, head);
  const s = tls.connect({ socket: raw, servername: host, ca: r.ca.certPem, ALPNProtocols: alpn });
  s.on("error", () => {});
  await inTime(new Promise<void>((resolve, reject) => {
    s.once("secureConnect", () => resolve());
    s.once("error", reject);
  }), 5000, "the TLS handshake with the proxy");
  return s;
}

/** A node:http2 client session inside a tunnel. */
async function h2session(r: Rig, host: string): Promise<http2.ClientHttp2Session> {
  const s = await tunnel(r, host, ["h2"]);
  const session = http2.connect(`https://${host}`, { createConnection: () => s });
  session.on("error", () => {});
  return session;
}

/** One GET on `session`: its status and body. */
function h2get(session: http2.ClientHttp2Session, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const st = session.request({ ":path": path });
    let status = 0;
    const chunks: Buffer[] = [];
    st.on("response", (h) => (status = Number(h[":status"])));
    st.on("data", (d: Buffer) => chunks.push(d));
    st.on("end", () => resolve({ status, body: Buffer.concat(chunks).toString() }));
    st.on("error", reject);
  });
}

/** A well-behaved client on a tunnel of its own: one GET to the h2 upstream must succeed within `ms`. */
async function wellBehaved(r: Rig, path: string, ms = 20_000): Promise<void> {
  const session = await inTime(h2session(r, H2), ms, "a well-behaved client's tunnel");
  try {
    const a = await inTime(h2get(session, path), ms, `a well-behaved client's GET ${path}`);
    assert.equal(a.status, 200);
    assert.equal(a.body, "ok " + path);
  } finally {
    session.destroy();
  }
}

// --- raw HTTP/2 frames ----------------------------------------------------------------------------

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const T = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8, CONTINUATION: 9 } as const;
const END_STREAM = 0x1;
const END_HEADERS = 0x4;

function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(9 + payload.length);
  b.writeUIntBE(payload.length, 0, 3);
  b[3] = type;
  b[4] = flags;
  b.writeUInt32BE(stream & 0x7fffffff, 5);
  payload.copy(b, 9);
  return b;
}
/** An HPACK integer with an N-bit prefix. */
function hpackInt(n: number, bits: number, first: number): Buffer {
  const max = (1 << bits) - 1;
  if (n < max) return Buffer.from([first | n]);
  const out = [first | max];
  n -= max;
  while (n >= 128) {
    out.push((n % 128) + 128);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}
const hpackStr = (s: string): Buffer => Buffer.concat([hpackInt(Buffer.byteLength(s, "latin1"), 7, 0), Buffer.from(s, "latin1")]);
/** Literal header field without indexing, new name (RFC 7541 §6.2.2). */
const literal = (n: string, v: string): Buffer => Buffer.concat([Buffer.from([0x00]), hpackStr(n), hpackStr(v)]);
/** Literal header field with incremental indexing, new name: it enters the dynamic table (§6.2.1). */
const literalIndexed = (n: string, v: string): Buffer => Buffer.concat([Buffer.from([0x40]), hpackStr(n), hpackStr(v)]);
/** Indexed header field (§6.1): one byte for index 62, the newest dynamic-table entry. */
const indexed = (i: number): Buffer => hpackInt(i, 7, 0x80);
const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
};
function settingsPayload(pairs: [number, number][]): Buffer {
  const b = Buffer.alloc(6 * pairs.length);
  pairs.forEach(([id, v], i) => {
    b.writeUInt16BE(id, i * 6);
    b.writeUInt32BE(v >>> 0, i * 6 + 2);
  });
  return b;
}
const requestBlock = (path: string, host = H2, port = h2port): Buffer =>
  Buffer.concat([literal(":method", "GET"), literal(":scheme", "https"), literal(":authority", `${host}:${port}`), literal(":path", path)]);
/** A GET with END_STREAM on stream `id`. */
const getFrame = (id: number, path: string): Buffer => frame(T.HEADERS, END_HEADERS | END_STREAM, id, requestBlock(path));

interface RawH2 {
  socket: tls.TLSSocket;
  /** RST_STREAM frames received, by stream. */
  resets: number[];
  goaway: { last: number; code: number } | null;
  closed: boolean;
  bytes: number;
}

/** A raw h2 connection through the rig: the preface and an empty SETTINGS are sent; frames received are parsed. */
async function rawH2(r: Rig, settings: [number, number][] = []): Promise<RawH2> {
  const socket = await tunnel(r, H2, ["h2"]);
  assert.equal(socket.alpnProtocol, "h2");
  const st: RawH2 = { socket, resets: [], goaway: null, closed: false, bytes: 0 };
  let buf = Buffer.alloc(0);
  socket.on("data", (d: Buffer) => {
    st.bytes += d.length;
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      const type = buf[3]!;
      const stream = buf.readUInt32BE(5) & 0x7fffffff;
      const payload = buf.subarray(9, 9 + len);
      if (type === T.RST_STREAM) st.resets.push(stream);
      if (type === T.GOAWAY) st.goaway = { last: payload.readUInt32BE(0) & 0x7fffffff, code: payload.readUInt32BE(4) };
      if (type === T.SETTINGS && (buf[4]! & 1) === 0) socket.write(frame(T.SETTINGS, 1, 0));
      buf = buf.subarray(9 + len);
    }
  });
  socket.on("close", () => (st.closed = true));
  socket.write(Buffer.concat([PREFACE, frame(T.SETTINGS, 0, 0, settingsPayload(settings))]));
  return st;
}

// =================================================================================================
// HTTP/1.1 inside a tunnel
// =================================================================================================

test("HTTP/1.1 pipelining: 50 requests in one write to one tunnel take one upstream connection, one request in flight at a time", { timeout: 30_000 }, async () => {
  const r = await rig();
  const s = await tunnel(r, H1, ["http/1.1"]);
  s.resume();
  let burst = "";
  for (let i = 0; i < 50; i++) burst += `GET /hang/pipe-${i} HTTP/1.1\r\nHost: ${H1}:${h1port}\r\n\r\n`;
  s.write(burst); // ~2.5 KB from the agent
  await within(10_000, "the first pipelined request reaching the upstream", () => seenUnder("/hang/pipe-").length >= 1);
  await delay(1000);
  const upstreamConnections = r.connects.length;
  const inFlight = seenUnder("/hang/pipe-").length;
  const uses = await r.events("secret_accessed");
  s.destroy();
  await r.close();
  // The agent's 50 pipelined requests (whose first answer never comes) are 50 upstream connections, 50
  // requests in flight upstream and 50 uses counted at once; 1,000 of them are 1,000 TLS connections
  // (2,000 descriptors with a local upstream), or, for large answers, hundreds of MB of socket buffers.
  assert.ok(
    upstreamConnections <= 1 && inFlight <= 1,
    `one tunnel opened ${upstreamConnections} upstream connections and has ${inFlight} requests in flight upstream (${uses} uses counted) while the first answer is still pending`,
  );
  // The requests behind it wait in line, unasked: no use is spent on a request that has not gone.
  assert.ok(uses <= 1, `${uses} uses counted for requests queued behind one whose answer is pending`);
});

test("requests waiting in a tunnel's line when its lease is revoked are dropped unasked: no policy decision, no use, no report for them", { timeout: 30_000 }, async () => {
  const r = await rig();
  const s = await tunnel(r, H1, ["http/1.1"]);
  s.resume();
  const closed = new Promise<void>((res) => s.once("close", () => res()));
  let burst = "";
  for (let i = 0; i < 10; i++) burst += `GET /hang/line-${i} HTTP/1.1\r\nHost: ${H1}:${h1port}\r\n\r\n`;
  s.write(burst);
  await within(10_000, "the first request reaching the upstream", () => seenUnder("/hang/line-").length >= 1);
  await r.admin.revokeLease(r.leaseId, "the owner pulls it");
  await inTime(closed, 5000, "the tunnel closing after the revocation");
  await delay(500);
  const reports = (await r.admin.auditQuery({ types: ["proxy_request"], limit: 10_000 })).filter((e) => String(JSON.parse(e.detail ?? "{}").path ?? "").startsWith("/hang/line-"));
  await r.close();
  assert.deepEqual(
    reports.map((e) => JSON.parse(e.detail ?? "{}").path),
    ["/hang/line-0"],
    "only the request being served when the tunnel closed is reported; the nine behind it were never asked",
  );
});

test("HTTP/2 client to an HTTP/1.1 upstream: once the tunnel's first upstream connection is gone, 60 concurrent streams open one more, not 60", { timeout: 30_000 }, async () => {
  const r = await rig();
  const session = await h2session(r, H1);
  try {
    const first = await inTime(h2get(session, "/ok/h2h1-first"), 10_000, "the first request");
    assert.equal(first.status, 200);
    assert.equal(r.connects.length, 1, "the first request took one upstream connection");
    h1up.closeIdleConnections(); // the upstream ends its idle keep-alive connections, as servers do
    await delay(300);
    for (let i = 0; i < 60; i++) {
      const st = session.request({ ":path": `/hang/h2h1-${i}` });
      st.on("error", () => {});
      st.resume();
    }
    await within(10_000, "the streams reaching the upstream", () => seenUnder("/hang/h2h1-").length >= 1);
    await delay(1000);
    const opened = r.connects.length - 1;
    assert.ok(opened <= 1, `60 concurrent h2 streams of one tunnel opened ${opened} HTTP/1.1 upstream connections (${seenUnder("/hang/h2h1-").length} requests in flight upstream at once)`);
  } finally {
    session.destroy();
    await r.close();
  }
});

test("a granted HTTP/1.1 request whose upstream connection is still being made never reaches the upstream once its lease was revoked and its tunnel closed", { timeout: 30_000 }, async () => {
  const r = await rig({ connectDelayMs: 600 });
  const s = await tunnel(r, H1, ["http/1.1"]);
  s.resume();
  s.write(`GET /ok/h1-after-revoke HTTP/1.1\r\nHost: ${H1}:${h1port}\r\n\r\n`);
  await within(5000, "the request's use being counted", async () => (await r.events("secret_accessed")) >= 1);
  await r.admin.revokeLease(r.leaseId, "the owner pulls it");
  await inTime(new Promise<void>((res) => (s.destroyed ? res() : s.once("close", () => res()))), 5000, "the tunnel closing after the revocation");
  const closedAt = Date.now();
  await delay(1500); // the relay joins the pending connection after 0.6 s
  const late = seen.filter((x) => x.path === "/ok/h1-after-revoke" && x.at >= closedAt);
  await r.close();
  assert.deepEqual(
    late.map((x) => ({ path: x.path, injected: x.auth === `Bearer ${TOKEN}`, msAfterClose: x.at - closedAt > 0 })),
    [],
    "requests that reached the upstream after the lease was revoked and the tunnel closed",
  );
});

test("a granted HTTP/1.1 request whose upstream connection is still being made never reaches the upstream after ForwardProxy.close()", { timeout: 30_000 }, async () => {
  const r = await rig({ connectDelayMs: 600 });
  const s = await tunnel(r, H1, ["http/1.1"]);
  s.resume();
  s.write(`GET /ok/h1-after-close HTTP/1.1\r\nHost: ${H1}:${h1port}\r\n\r\n`);
  await within(5000, "the request's use being counted", async () => (await r.events("secret_accessed")) >= 1);
  await r.proxy.close();
  const closedAt = Date.now();
  await delay(1500);
  const late = seen.filter((x) => x.path === "/ok/h1-after-close" && x.at >= closedAt);
  await r.close();
  assert.equal(late.length, 0, `${late.length} request(s) carrying the credential reached the upstream after the proxy closed`);
});

test("held: over HTTP/2 (both sides) and for a WebSocket handshake, a granted request whose upstream connection is still being made never reaches the upstream once the lease is revoked", { timeout: 30_000 }, async () => {
  {
    const r = await rig({ connectDelayMs: 600 });
    const session = await h2session(r, H2);
    const st = session.request({ ":path": "/ok/h2-after-revoke" });
    st.on("error", () => {});
    st.resume();
    await within(5000, "the stream's use being counted", async () => (await r.events("secret_accessed")) >= 1);
    await r.admin.revokeLease(r.leaseId, "the owner pulls it");
    await within(5000, "the tunnel closing after the revocation", () => session.destroyed || session.closed);
    await delay(1200);
    assert.equal(seenUnder("/ok/h2-after-revoke").length, 0, "the h2 request never reached the upstream");
    session.destroy();
    await r.close();
  }
  {
    const r = await rig({ connectDelayMs: 600 });
    const s = await tunnel(r, H1, ["http/1.1"]);
    s.resume();
    s.write(`GET /ws-count-after-revoke HTTP/1.1\r\nHost: ${H1}:${h1port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
    await within(5000, "the handshake's use being counted", async () => (await r.events("secret_accessed")) >= 1);
    await r.admin.revokeLease(r.leaseId, "the owner pulls it");
    await inTime(new Promise<void>((res) => (s.destroyed ? res() : s.once("close", () => res()))), 5000, "the tunnel closing");
    await delay(1200);
    assert.equal(seenUnder("/ws-count-after-revoke").length, 0, "the WebSocket handshake never reached the upstream");
    await r.close();
  }
});

test("held: a slowloris head inside a tunnel (one byte every 50 ms) is cut at the header timeout; nothing is asked of the vault", { timeout: 20_000 }, async () => {
  const r = await rig({ headersTimeoutMs: 800, idleTimeoutMs: 5000 });
  try {
    const s = await tunnel(r, H1, ["http/1.1"]);
    s.resume();
    const head = `GET /ok/slowloris HTTP/1.1\r\nHost: ${H1}:${h1port}\r\nX-Slow: ${"z".repeat(400)}\r\n\r\n`;
    let i = 0;
    const t0 = Date.now();
    const timer = setInterval(() => {
      if (i < head.length && !s.destroyed) s.write(head[i++]!);
    }, 50);
    await inTime(new Promise<void>((res) => s.once("close", () => res())), 8000, "the header timeout cutting a trickled head").finally(() => clearInterval(timer));
    assert.ok(Date.now() - t0 < 6000, `cut after ${Date.now() - t0} ms`);
    assert.ok(i < head.length, "the head was cut before it was complete");
    assert.equal(await r.events("secret_accessed"), 0);
    assert.equal(seenUnder("/ok/slowloris").length, 0);
    await wellBehaved(r, "/ok/after-slowloris");
  } finally {
    await r.close();
  }
});

test("held: a chunked body of 100,000 one-byte chunks (with the body tripwire and a body rule on) arrives whole, once, for one use of each credential", { timeout: 40_000 }, async () => {
  const r = await rig({ extras: true });
  try {
    const s = await tunnel(r, H1, ["http/1.1"]);
    let got = "";
    s.on("data", (d: Buffer) => (got += d.toString("latin1")));
    const N = 100_000;
    s.write(`POST /ok/tiny-chunks HTTP/1.1\r\nHost: ${H1}:${h1port}\r\nTransfer-Encoding: chunked\r\n\r\n`);
    s.write(Buffer.from("1\r\na\r\n".repeat(N) + "0\r\n\r\n", "latin1"));
    await within(30_000, "the answer to the tiny-chunk body", () => /bytes=\d+/.test(got.replace(/\r\n[0-9a-f]+\r\n/g, "")));
    const text = got.replace(/\r\n[0-9a-f]+\r\n/g, "");
    assert.match(got, /^HTTP\/1\.1 200 /);
    assert.match(text, new RegExp(`bytes=${N}\\b`), "the upstream received every byte");
    assert.equal(seenUnder("/ok/tiny-chunks").length, 1);
    // One use of the bearer credential and one of the body rule's: one request.
    assert.equal(await r.events("secret_accessed"), 2);
    s.destroy();
  } finally {
    await r.close();
  }
});

test("held: an HTTP/1.1 client that never reads a large answer, and one that uploads to an upstream that never reads (a plain body and one of tiny chunks), make the proxy buffer a bounded amount", { timeout: 30_000 }, async () => {
  const r = await rig({ extras: true });
  try {
    counters.bigWritten = 0;
    const s = await tunnel(r, H1, ["http/1.1"]);
    s.write(`GET /big/h1-noread HTTP/1.1\r\nHost: ${H1}:${h1port}\r\n\r\n`);
    s.pause(); // never reads
    await within(5000, "the answer starting", () => counters.bigWritten > 0);
    await delay(1500);
    assert.ok(counters.bigWritten < 64e6, `the upstream pushed ${(counters.bigWritten / 1e6).toFixed(1)} MB into the proxy for a client that reads nothing`);
    s.destroy();

    for (const [what, head, chunk] of [
      ["a Content-Length body", `POST /sink/cl HTTP/1.1\r\nHost: ${H1}:${h1port}\r\nContent-Length: 1000000000\r\n\r\n`, Buffer.alloc(64 * 1024, 0x41)],
      ["one-byte chunks", `POST /sink/chunked HTTP/1.1\r\nHost: ${H1}:${h1port}\r\nTransfer-Encoding: chunked\r\n\r\n`, Buffer.from("1\r\nz\r\n".repeat(10_000), "latin1")],
    ] as const) {
      const u = await tunnel(r, H1, ["http/1.1"]);
      u.write(head);
      let accepted = 0;
      const t0 = Date.now();
      const pump = (): void => {
        while (!u.destroyed && Date.now() - t0 < 1500) {
          accepted += chunk.length;
          if (!u.write(chunk)) return void u.once("drain", pump);
        }
      };
      pump();
      await delay(1500);
      u.destroy();
      assert.ok(accepted < 64e6, `${what}: the proxy took ${(accepted / 1e6).toFixed(1)} MB for an upstream that reads nothing`);
    }
    await wellBehaved(r, "/ok/after-h1-noread");
  } finally {
    await r.close();
  }
});

// =================================================================================================
// HTTP/2
// =================================================================================================

test("held: HTTP/2 rapid reset (5,000 HEADERS + RST_STREAM in one write): GOAWAY after a bounded burst; each use counted is audited; nothing reaches the upstream past its uses; another client is served", { timeout: 40_000 }, async () => {
  const r = await rig();
  try {
    const heap0 = process.memoryUsage().heapUsed;
    const raw = await rawH2(r);
    const burst: Buffer[] = [];
    for (let i = 0, id = 1; i < 5000; i++, id += 2) burst.push(getFrame(id, `/ok/rr-${i}`), frame(T.RST_STREAM, 0, id, u32(8 /* CANCEL */)));
    raw.socket.write(Buffer.concat(burst));
    // Meanwhile, a well-behaved client on its own tunnel.
    await wellBehaved(r, "/ok/during-rapid-reset");
    await within(15_000, "GOAWAY or a closed connection for the flood", () => raw.goaway !== null || raw.closed);
    // The uses settle, and each is audited as a proxy_request.
    let uses = -1;
    await within(10_000, "every use counted for the flood to be audited", async () => {
      const now = await r.events("secret_accessed");
      const rows = (await r.admin.auditQuery({ types: ["proxy_request"], limit: 100_000 })).filter((e) => (e.detail ?? "").includes("/ok/rr-")).length;
      const settled = now === uses && rows === now - 1; // -1: the well-behaved client's request
      uses = now;
      return settled;
    }, 200);
    const floodUses = uses - 1;
    const upstream = seenUnder("/ok/rr-").length;
    assert.ok(floodUses <= 1500, `${floodUses} uses counted for one connection's rapid reset (nghttp2 stops it after about 1,000)`);
    assert.ok(upstream <= floodUses, `${upstream} reset streams reached the upstream, ${floodUses} uses counted`);
    assert.ok(upstream < 50, `${upstream} streams reset in the same write as their HEADERS were still sent upstream`);
    const grew = (process.memoryUsage().heapUsed - heap0) / 1e6;
    assert.ok(grew < 200, `the heap grew by ${grew.toFixed(0)} MB`);
    raw.socket.destroy();
    await wellBehaved(r, "/ok/after-rapid-reset");
  } finally {
    await r.close();
  }
});

test("held: resets cannot buy injection past max_uses: 20 streams (half reset at once) and 10 more on a max_uses = 5 lease reach the upstream at most 5 times", { timeout: 30_000 }, async () => {
  const r = await rig({ maxUses: 5 });
  const session = await h2session(r, H2);
  try {
    const closed: Promise<void>[] = [];
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++) {
      const st = session.request({ ":path": `/ok/mu-${i}` });
      st.on("error", () => {});
      st.on("response", (h) => statuses.push(Number(h[":status"])));
      st.resume();
      closed.push(new Promise((res) => st.once("close", () => res())));
      if (i % 2 === 0) st.close(http2.constants.NGHTTP2_CANCEL);
    }
    await inTime(Promise.all(closed), 15_000, "the 20 streams closing");
    for (let i = 20; i < 30; i++) {
      const a = await inTime(h2get(session, `/ok/mu-${i}`), 10_000, `stream ${i}`);
      assert.equal(a.status, 403, `stream ${i} after the uses ran out: ${a.body}`);
    }
    const injected = seenUnder("/ok/mu-").filter((x) => x.auth === `Bearer ${TOKEN}`).length;
    assert.ok(injected <= 5, `${injected} requests reached the upstream with the credential on a max_uses = 5 lease`);
    assert.equal(seenUnder("/ok/mu-").length, injected, "nothing reached the upstream without the credential either");
    assert.equal(await r.events("secret_accessed"), 5, "exactly the 5 uses were counted");
    assert.ok(statuses.filter((s) => s === 200).length <= 5);
  } finally {
    session.destroy();
    await r.close();
  }
});

test("held: each stream is one use and one proxy_request event, whether it completes, is reset before it is sent, or is reset mid-answer", { timeout: 30_000 }, async () => {
  const r = await rig();
  const session = await h2session(r, H2);
  try {
    counters.bigWritten = 0;
    const done: Promise<void>[] = [];
    const closes = (st: http2.ClientHttp2Stream): Promise<void> => new Promise((res) => st.once("close", () => res()));
    for (let i = 0; i < 20; i++) done.push(h2get(session, `/ok/acct-ok-${i}`).then((a) => assert.equal(a.status, 200)));
    for (let i = 0; i < 20; i++) {
      const st = session.request({ ":path": `/ok/acct-rst-${i}` });
      st.on("error", () => {});
      st.close(http2.constants.NGHTTP2_CANCEL);
      done.push(closes(st));
    }
    for (let i = 0; i < 5; i++) {
      const st = session.request({ ":path": `/big/acct-mid-${i}` });
      st.on("error", () => {});
      st.once("data", () => st.close(http2.constants.NGHTTP2_CANCEL));
      done.push(closes(st));
    }
    await inTime(Promise.all(done), 15_000, "every stream closing");
    const rowsFor = async (): Promise<number> =>
      (await r.admin.auditQuery({ types: ["proxy_request"], limit: 100_000 })).filter((e) => /\/(ok|big)\/acct-/.test(e.detail ?? "")).length;
    await within(5000, "the proxy_request events being written", async () => (await rowsFor()) >= (await r.events("secret_accessed")), 100);
    const uses = await r.events("secret_accessed");
    assert.equal(await rowsFor(), uses, "one proxy_request event per use");
    assert.ok(uses >= 25 && uses <= 45, `${uses} uses for 45 streams of which 25 went upstream`);
    const up = seen.filter((x) => x.path.includes("/acct-"));
    assert.ok(up.length <= uses, `${up.length} upstream requests for ${uses} uses`);
    for (let i = 0; i < 20; i++) assert.equal(seenUnder(`/ok/acct-ok-${i}`).filter((x) => x.path === `/ok/acct-ok-${i}`).length, 1, `request ${i} went upstream once`);
    assert.equal(seenUnder("/big/acct-mid-").length, 5);
  } finally {
    session.destroy();
    await r.close();
  }
});

test("held: a client that never reads a large HTTP/2 answer (window exhausted, or its socket not read with a 2 GiB window) or uploads to an upstream that never reads: bounded", { timeout: 30_000 }, async () => {
  const r = await rig();
  try {
    // Flow-control window left at 64 KiB and never replenished.
    counters.bigWritten = 0;
    const session = await h2session(r, H2);
    const st = session.request({ ":path": "/big/h2-noread" });
    st.on("error", () => {});
    st.pause();
    await within(5000, "the answer starting", () => counters.bigWritten > 0);
    await delay(1500);
    assert.ok(counters.bigWritten < 64e6, `window exhausted: the upstream pushed ${(counters.bigWritten / 1e6).toFixed(1)} MB`);
    session.destroy();

    // A window of 2^31 - 1 on the stream and the connection, and a client that stops reading its socket.
    counters.bigWritten = 0;
    const raw = await rawH2(r, [[4, 0x7fffffff]]);
    raw.socket.write(Buffer.concat([frame(T.WINDOW_UPDATE, 0, 0, u32(0x7fffffff - 65535)), getFrame(1, "/big/h2-noread-raw")]));
    raw.socket.pause();
    await within(5000, "the answer starting", () => counters.bigWritten > 0);
    await delay(1500);
    assert.ok(counters.bigWritten < 64e6, `socket not read: the upstream pushed ${(counters.bigWritten / 1e6).toFixed(1)} MB`);
    raw.socket.destroy();

    // Uploads to an upstream that never reads, h2 to h2 and h2 to HTTP/1.1.
    for (const host of [H2, H1]) {
      const up = await h2session(r, host);
      const w = up.request({ ":path": "/sink/h2-upload", ":method": "POST" });
      w.on("error", () => {});
      let accepted = 0;
      const t0 = Date.now();
      const chunk = Buffer.alloc(64 * 1024, 0x41);
      const pump = (): void => {
        while (!w.destroyed && Date.now() - t0 < 1500) {
          accepted += chunk.length;
          if (!w.write(chunk)) return void w.once("drain", pump);
        }
      };
      pump();
      await delay(1500);
      up.destroy();
      assert.ok(accepted < 64e6, `upload to ${host}: the proxy took ${(accepted / 1e6).toFixed(1)} MB for an upstream that reads nothing`);
    }
    await wellBehaved(r, "/ok/after-h2-noread");
  } finally {
    await r.close();
  }
});

test("held: CONTINUATION floods, an HPACK bomb, SETTINGS and PING floods, WINDOW_UPDATE overflow, bad and backwards stream ids, and 300 streams over the 128 announced: no use counted for any of them, the proxy stays up", { timeout: 40_000 }, async () => {
  const r = await rig();
  try {
    const uses = (): Promise<number> => r.events("secret_accessed");
    const waitClosed = (raw: RawH2, what: string): Promise<number> => within(8000, what, () => raw.closed || raw.goaway !== null);

    // CONTINUATION flood: HEADERS without END_HEADERS, then 20,000 CONTINUATION frames (with and without fields).
    for (const withFields of [true, false]) {
      const u0 = await uses();
      const raw = await rawH2(r);
      const parts = [frame(T.HEADERS, 0, 1, literal(":method", "GET"))];
      for (let i = 0; i < 20_000; i++) parts.push(frame(T.CONTINUATION, 0, 1, withFields ? literal("x-c", "c".repeat(100)) : Buffer.alloc(0)));
      raw.socket.write(Buffer.concat(parts));
      await waitClosed(raw, `the CONTINUATION flood (${withFields ? "with" : "without"} fields) being stopped`);
      raw.socket.destroy();
      assert.equal(await uses(), u0);
    }

    // HPACK bomb: a 4,000-byte header put in the dynamic table, then referenced 10,000 times (one byte each: 40 MB decoded).
    {
      const u0 = await uses();
      const raw = await rawH2(r);
      const parts = [requestBlock("/ok/hpack-bomb"), literalIndexed("x-bomb", "x".repeat(4000))];
      for (let i = 0; i < 10_000; i++) parts.push(indexed(62));
      raw.socket.write(frame(T.HEADERS, END_HEADERS | END_STREAM, 1, Buffer.concat(parts)));
      await within(8000, "the HPACK bomb's stream being refused", () => raw.resets.includes(1) || raw.closed || raw.goaway !== null);
      await delay(200);
      assert.equal(await uses(), u0, "no use for the bomb's stream");
      assert.equal(seenUnder("/ok/hpack-bomb").length, 0);
      raw.socket.destroy();
    }

    // SETTINGS and PING floods from a client that does not read the ACKs.
    for (const [what, f] of [
      ["PING", frame(T.PING, 0, 0, Buffer.alloc(8))],
      ["SETTINGS", frame(T.SETTINGS, 0, 0, settingsPayload([[3, 100]]))],
    ] as const) {
      const raw = await rawH2(r);
      raw.socket.pause();
      const heap0 = process.memoryUsage().heapUsed;
      raw.socket.write(Buffer.concat(Array.from({ length: 50_000 }, () => f)));
      await delay(800);
      const grew = (process.memoryUsage().heapUsed - heap0) / 1e6;
      assert.ok(grew < 100, `${what} flood: the heap grew by ${grew.toFixed(0)} MB`);
      raw.socket.destroy();
    }

    // WINDOW_UPDATE overflow on the connection: a connection error.
    {
      const raw = await rawH2(r);
      raw.socket.write(Buffer.concat([frame(T.WINDOW_UPDATE, 0, 0, u32(0x7fffffff)), frame(T.WINDOW_UPDATE, 0, 0, u32(0x7fffffff))]));
      await waitClosed(raw, "the connection window overflow being refused");
      raw.socket.destroy();
    }
    // ... and on a stream: the stream is reset; whatever use its request took, nothing went upstream.
    {
      const u0 = await uses();
      const raw = await rawH2(r);
      raw.socket.write(Buffer.concat([getFrame(1, "/hang/wu-overflow"), frame(T.WINDOW_UPDATE, 0, 1, u32(0x7fffffff)), frame(T.WINDOW_UPDATE, 0, 1, u32(0x7fffffff))]));
      await within(8000, "the stream window overflow being refused", () => raw.resets.includes(1) || raw.closed || raw.goaway !== null);
      await delay(300);
      assert.ok((await uses()) - u0 <= 1);
      assert.ok(seenUnder("/hang/wu-overflow").length <= (await uses()) - u0);
      raw.socket.destroy();
    }
    // An even (server-initiated) stream id, and stream ids going backwards.
    {
      const u0 = await uses();
      const raw = await rawH2(r);
      raw.socket.write(getFrame(2, "/ok/even-id"));
      await waitClosed(raw, "an even stream id being refused");
      raw.socket.destroy();
      const back = await rawH2(r);
      back.socket.write(Buffer.concat([getFrame(5, "/ok/backwards-5"), getFrame(3, "/ok/backwards-3")]));
      await delay(800);
      assert.equal(seenUnder("/ok/even-id").length, 0);
      assert.equal(seenUnder("/ok/backwards-3").length, 0, "a stream id below the last one is never forwarded");
      assert.ok((await uses()) - u0 <= 1, "only stream 5 took a use");
      back.socket.destroy();
    }
    // 300 streams at once on a connection that announced 128: the rest are refused before the policy is asked.
    {
      const u0 = await uses();
      const raw = await rawH2(r);
      raw.socket.write(Buffer.concat(Array.from({ length: 300 }, (_, i) => getFrame(1 + 2 * i, `/hang/over-${i}`))));
      await within(8000, "the streams over the limit being refused", () => raw.resets.length >= 172);
      await delay(500);
      assert.ok((await uses()) - u0 <= 128, `${(await uses()) - u0} uses for 300 streams on a 128-stream connection`);
      assert.ok(seenUnder("/hang/over-").length <= 128);
      raw.socket.destroy();
    }
    await wellBehaved(r, "/ok/after-h2-abuse");
  } finally {
    await r.close();
  }
});

test("refused requests are tallied as the vault's refusals are: 2,000 refused h2 streams (a path the grant does not allow) write a burst of proxy_request rows and a counted summary, not 2,000 rows", { timeout: 40_000 }, async () => {
  const r = await rig({ paths: 'paths = ["/ok/"]' });
  const session = await h2session(r, H2);
  try {
    const N = 2000;
    let next = 0;
    let refused = 0;
    await inTime(
      new Promise<void>((resolve, reject) => {
        let finished = 0;
        const one = (): void => {
          if (next >= N) return;
          const st = session.request({ ":path": `/denied/flood-${next++}` });
          st.on("response", (h) => {
            if (Number(h[":status"]) === 403) refused++;
          });
          st.resume();
          st.on("error", reject);
          st.on("close", () => (++finished === N ? resolve() : one()));
        };
        for (let k = 0; k < 100; k++) one();
      }),
      30_000,
      "2,000 refused requests",
    );
    assert.equal(refused, N, "every request was refused");
    assert.equal(seenUnder("/denied/").length, 0, "none reached the upstream");
    await r.egress.close(); // flushes the batched proxy_request reports
    const denied = await r.events("access_denied", "denied");
    const rows = await r.events("proxy_request", "denied");
    assert.ok(denied <= 64, `the vault's own refusal rows are capped (${denied})`);
    assert.ok(rows <= 200, `${rows} proxy_request rows for ${N} refused requests from one agent in one tunnel, beside ${denied} access_denied rows: the proxy's audit is not rate-limited like the vault's`);
    // Counted, not lost: the window's summary row says how many refused requests it stands for.
    await r.flushRefusals();
    const all = (await r.admin.auditQuery({ types: ["proxy_request"], limit: 100_000 })).filter((e) => e.outcome === "denied");
    const counted = all.reduce((n, e) => n + Number((JSON.parse(e.detail ?? "{}") as { count?: number }).count ?? 1), 0);
    assert.equal(counted, N, `the proxy_request rows (one each, then summaries with detail.count) stand for every refused request`);
  } finally {
    session.destroy();
    await r.close();
  }
});

// =================================================================================================
// WebSocket
// =================================================================================================

/** A WebSocket joined through the rig (the handshake answered 101); the socket is paused after the head. */
async function websocket(r: Rig, path: string): Promise<tls.TLSSocket> {
  const s = await tunnel(r, H1, ["http/1.1"]);
  s.write(`GET ${path} HTTP/1.1\r\nHost: ${H1}:${h1port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
  const head = await inTime(
    new Promise<string>((resolve) => {
      let b = "";
      const on = (d: Buffer): void => {
        b += d.toString("latin1");
        if (!b.includes("\r\n\r\n")) return;
        s.off("data", on);
        s.pause();
        resolve(b);
      };
      s.on("data", on);
    }),
    5000,
    "the 101",
  );
  assert.match(head, /^HTTP\/1\.1 101 /, head);
  return s;
}

/** A masked client frame (mask key 0: the payload goes as it is). */
function clientFrame(fin: boolean, opcode: number, payload: Buffer): Buffer {
  const len = payload.length;
  const ext = len < 126 ? 0 : len < 65536 ? 2 : 8;
  const out = Buffer.alloc(2 + ext + 4 + len);
  out[0] = (fin ? 0x80 : 0) | opcode;
  out[1] = 0x80 | (ext === 0 ? len : ext === 2 ? 126 : 127);
  if (ext === 2) out.writeUInt16BE(len, 2);
  else if (ext === 8) out.writeBigUInt64BE(BigInt(len), 2);
  payload.copy(out, 2 + ext + 4);
  return out;
}

test("held: WebSocket (frames rewritten and watched): a client that never reads a flooding upstream, a client flooding an upstream that never reads, 40,000 one-byte fragments with a placeholder split across them, 20,000 pings", { timeout: 40_000 }, async () => {
  const r = await rig({ extras: true });
  try {
    // The upstream floods; the client reads nothing.
    counters.wsServerWritten = 0;
    const flood = await websocket(r, "/ws-flood");
    await within(5000, "the upstream's frames starting", () => counters.wsServerWritten > 0);
    await delay(1500);
    assert.ok(counters.wsServerWritten < 64e6, `the upstream pushed ${(counters.wsServerWritten / 1e6).toFixed(1)} MB into the proxy for a client that reads nothing`);
    flood.destroy();

    // The client floods; the upstream reads nothing.
    const sink = await websocket(r, "/ws-sink");
    const big = clientFrame(true, 2, Buffer.alloc(60_000, 0x43));
    let accepted = 0;
    const t0 = Date.now();
    const pump = (): void => {
      while (!sink.destroyed && Date.now() - t0 < 1500) {
        accepted += big.length;
        if (!sink.write(big)) return void sink.once("drain", pump);
      }
    };
    pump();
    await delay(1500);
    sink.destroy();
    assert.ok(accepted < 64e6, `the proxy took ${(accepted / 1e6).toFixed(1)} MB of frames for an upstream that reads nothing`);

    // One message in 100,000 one-byte fragments, the placeholder of a websocket = true rule spread over
    // its first fragments; then 50,000 pings.
    wsSeen.frames = 0;
    wsSeen.pings = 0;
    wsSeen.messages = 0;
    wsSeen.payloadBytes = 0;
    const ws = await websocket(r, "/ws-count");
    ws.resume();
    const text = Buffer.from(`[${r.wsPlaceholder}]`, "latin1");
    const N = 40_000;
    const parts: Buffer[] = [clientFrame(false, 1, text.subarray(0, 1))];
    for (let i = 1; i < text.length; i++) parts.push(clientFrame(false, 0, text.subarray(i, i + 1)));
    for (let i = 0; i < N; i++) parts.push(clientFrame(false, 0, Buffer.from("b")));
    parts.push(clientFrame(true, 0, Buffer.from("!")));
    ws.write(Buffer.concat(parts));
    await within(25_000, "the fragmented message reaching the upstream", () => wsSeen.messages >= 1);
    const msg = wsSeen.message.toString("latin1");
    assert.equal(msg.length, text.length + N + 1);
    assert.ok(msg.startsWith(`[${WS_VALUE}]`), "the placeholder split over 40 fragments was replaced by the value");
    assert.ok(!msg.includes(r.wsPlaceholder));
    const pings = Buffer.concat(Array.from({ length: 20_000 }, () => clientFrame(true, 9, Buffer.from("p"))));
    ws.write(pings);
    await within(20_000, "the pings reaching the upstream", () => wsSeen.pings >= 20_000);
    ws.destroy();
    await wellBehaved(r, "/ok/after-ws");
  } finally {
    await r.close();
  }
});
