/**
 * WebSocket upgrades through the injecting forward proxy (src/proxy/websocket.ts): a minimal RFC 6455
 * echo server on a local HTTPS upstream, and a hand-written client (CONNECT, TLS with the proxy's CA,
 * the handshake, masked frames). Everything on loopback; names resolve through an injected table, the
 * guard allows 127.0.0.0/8 for this test only, and the connect step is instrumented.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import * as https from "node:https";
import type { IncomingHttpHeaders, IncomingMessage } from "node:http";
import { connect as netConnect, createConnection, type AddressInfo, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import * as tls from "node:tls";
import { LocalCa } from "../src/proxy/ca.js";
import type { Egress, EgressDecision, Prepared, ProxiedRequest, RequestOutcome, TunnelHandle } from "../src/proxy/egress.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { ProxyRefusal } from "../src/proxy/refusal.js";
import { ScrubPatterns } from "../src/proxy/scrub.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";

const SECRET = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2";
const PLACEHOLDER = makePlaceholder(SECRET);
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const accept = (key: string): string => createHash("sha1").update(key + GUID).digest("base64");

// --- RFC 6455 frames (just enough: FIN frames, 7/16/64-bit lengths, masking) ---------------------

function frame(opcode: number, payload: Buffer, mask: boolean): Buffer {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, (mask ? 0x80 : 0) | len]) : len < 65536 ? Buffer.alloc(4) : Buffer.alloc(10);
  if (len >= 126 && len < 65536) {
    head[0] = 0x80 | opcode;
    head[1] = (mask ? 0x80 : 0) | 126;
    head.writeUInt16BE(len, 2);
  } else if (len >= 65536) {
    head[0] = 0x80 | opcode;
    head[1] = (mask ? 0x80 : 0) | 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  if (!mask) return Buffer.concat([head, payload]);
  const key = randomBytes(4);
  const body = Buffer.from(payload.map((b, i) => b ^ key[i % 4]!));
  return Buffer.concat([head, key, body]);
}

interface Frame {
  opcode: number;
  masked: boolean;
  payload: Buffer;
}

/** Reads frames from a byte stream, as they complete. */
class FrameReader {
  #buf = Buffer.alloc(0);
  push(d: Buffer): Frame[] {
    this.#buf = Buffer.concat([this.#buf, d]);
    const out: Frame[] = [];
    for (;;) {
      const b = this.#buf;
      if (b.length < 2) break;
      const masked = (b[1]! & 0x80) !== 0;
      let len = b[1]! & 0x7f;
      let at = 2;
      if (len === 126) {
        if (b.length < 4) break;
        len = b.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (b.length < 10) break;
        len = Number(b.readBigUInt64BE(2));
        at = 10;
      }
      const keyAt = at;
      if (masked) at += 4;
      if (b.length < at + len) break;
      let payload = Buffer.from(b.subarray(at, at + len));
      if (masked) {
        const key = b.subarray(keyAt, keyAt + 4);
        payload = Buffer.from(payload.map((x, i) => x ^ key[i % 4]!));
      }
      out.push({ opcode: b[0]! & 0x0f, masked, payload });
      this.#buf = b.subarray(at + len);
    }
    return out;
  }
}

// --- the upstream: HTTPS with an RFC 6455 echo ----------------------------------------------------

interface Handshake {
  url: string;
  headers: IncomingHttpHeaders;
}

const upCa = LocalCa.create({ permitted: ["ws.test.example"] });
const handshakes: Handshake[] = [];
const upSockets: Duplex[] = [];
const plainRequests: string[] = [];
let upConnections = 0;
const upstream = https.createServer({ SNICallback: upCa.sniCallback, secureContext: upCa.secureContextFor("ws.test.example") }, (req, res) => {
  plainRequests.push(req.url!);
  res.writeHead(200, { "content-type": "text/plain" });
  res.end("plain " + req.url);
});
upstream.on("secureConnection", () => upConnections++);
upstream.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
  handshakes.push({ url: req.url!, headers: req.headers });
  const auth = String(req.headers.authorization ?? "");
  if (req.url === "/deny") {
    // A refusal that echoes the credential it got: the proxy must relay it, scrubbed.
    const body = `no access for ${auth}`;
    socket.end(`HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    return;
  }
  if (req.url === "/h2c") {
    socket.end("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n");
    return;
  }
  const key = String(req.headers["sec-websocket-key"] ?? "");
  // A header echoing the credential (as a server echoing a token subprotocol would).
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${accept(key)}\r\nX-Echo: ${auth}\r\n\r\n`,
  );
  upSockets.push(socket);
  const reader = new FrameReader();
  const onData = (d: Buffer): void => {
    for (const f of reader.push(d)) {
      if (!f.masked) {
        socket.destroy(); // RFC 6455 5.1: a client frame must be masked
        return;
      }
      if (f.opcode === 0x1 || f.opcode === 0x2) socket.write(frame(f.opcode, Buffer.concat([Buffer.from("echo:"), f.payload]), false));
      else if (f.opcode === 0x8) socket.end(frame(0x8, f.payload, false));
    }
  };
  socket.on("data", onData);
  socket.on("error", () => socket.destroy());
  if (head.length > 0) onData(head);
});
await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
const upPort = (upstream.address() as AddressInfo).port;

// --- the proxy ----------------------------------------------------------------------------------

const guard = new SsrfGuard({
  ports: [upPort],
  allow: ["127.0.0.0/8"],
  resolve: async (host) => {
    if (host === "ws.test.example") return [{ address: "127.0.0.1", family: 4 }];
    throw Object.assign(new Error("not in the test's table"), { code: "ENOTFOUND" });
  },
});
const connects: ConnectTo[] = [];
function connect(to: ConnectTo): Socket {
  connects.push(to);
  if (to.host !== "127.0.0.1") assert.fail(`the proxy tried to connect to ${to.host}`);
  return createConnection({ host: to.host, port: to.port, family: to.family });
}

/** What the policy saw and the handles it was given; `mode` says how it answers the next request. */
const asked: ProxiedRequest[] = [];
const handles: TunnelHandle[] = [];
const outcomes: RequestOutcome[] = [];
let mode: "forward" | "refuse" = "forward";
const scrubPatterns = new ScrubPatterns([{ value: SECRET, placeholder: PLACEHOLDER }]);
const egress: Egress = {
  decide(host: string, port: number): EgressDecision {
    if (host !== "ws.test.example") return { kind: "refuse", refusal: new ProxyRefusal({ reason: "not_granted", host, port }, `no grant covers ${host}`) };
    return {
      kind: "intercept",
      prepare(req, handle): Prepared {
        asked.push(req);
        handles.push(handle);
        const done = (o: RequestOutcome): void => void outcomes.push(o);
        if (mode === "refuse") return { kind: "refuse", status: 403, reason: "lease_used_up", detail: "Forbidden: the lease has no uses left", done };
        return { kind: "forward", headers: { ...req.headers, authorization: `Bearer ${SECRET}` }, target: req.target, scrub: scrubPatterns, done };
      },
    };
  },
};
const proxyCa = LocalCa.create({ permitted: ["ws.test.example"] });
const proxy = new ForwardProxy({ egress, ca: proxyCa, guard, upstreamCa: upCa.certPem, connect, maxHeaders: 20 });
const proxyPort = await proxy.listen();

after(async () => {
  await proxy.close();
  upstream.closeAllConnections();
  await new Promise<void>((r) => upstream.close(() => r()));
});

// --- the client ---------------------------------------------------------------------------------

/** CONNECT through the proxy, then TLS to it (HTTP/1.1) with the proxy's CA. */
async function tunnel(): Promise<tls.TLSSocket> {
  const raw = netConnect(proxyPort, "127.0.0.1");
  raw.write(`CONNECT ws.test.example:${upPort} HTTP/1.1\r\nHost: ws.test.example:${upPort}\r\n\r\n`);
  await new Promise<void>((resolve, reject) => {
    let buf = "";
    const onData = (d: Buffer): void => {
      buf += d.toString("latin1");
      if (buf.includes("\r\n\r\n")) {
        raw.off("data", onData);
        raw.pause();
        if (!buf.startsWith("HTTP/1.1 200")) reject(new Error("CONNECT answered " + buf));
        else resolve();
      }
    };
    raw.on("data", onData);
    raw.once("error", reject);
  });
  const s = tls.connect({ socket: raw, servername: "ws.test.example", ca: proxyCa.certPem, ALPNProtocols: ["http/1.1"] });
  await new Promise<void>((resolve, reject) => {
    s.once("secureConnect", resolve);
    s.once("error", reject);
  });
  return s;
}

interface Answer {
  status: number;
  head: string;
  headers: Record<string, string>;
  /** Bytes after the head (frames, or a body). */
  rest: Buffer;
}

/** Writes `request` and reads the answer's head; for a non-101 answer, the body to the end. */
async function exchange(s: tls.TLSSocket, request: string | Buffer): Promise<Answer> {
  s.write(request);
  let buf = Buffer.alloc(0);
  const { head, rest } = await new Promise<{ head: string; rest: Buffer }>((resolve, reject) => {
    const onEnd = (): void => reject(new Error("closed before an answer: " + buf.toString()));
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const i = buf.indexOf("\r\n\r\n");
      if (i < 0) return;
      s.off("data", onData);
      s.off("end", onEnd);
      s.pause();
      resolve({ head: buf.subarray(0, i).toString("latin1"), rest: Buffer.from(buf.subarray(i + 4)) });
    };
    s.on("data", onData);
    s.once("error", reject);
    s.once("end", onEnd);
  });
  return finish(s, head, rest);
}

async function finish(s: tls.TLSSocket, headText: string, rest: Buffer): Promise<Answer> {
  const lines = headText.split("\r\n");
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(lines[0]!)?.[1]);
  const headers: Record<string, string> = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(":");
    headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  if (status === 101) return { status, head: headText, headers, rest };
  const chunks: Buffer[] = [rest];
  s.resume();
  for await (const c of s) chunks.push(c as Buffer);
  const body = Buffer.concat(chunks);
  return { status, head: headText, headers, rest: headers["transfer-encoding"] === "chunked" ? dechunk(body) : body };
}

/** Decodes a complete chunked body (no extensions, no trailers: what node writes). */
function dechunk(b: Buffer): Buffer {
  const out: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = b.indexOf("\r\n", at);
    const size = parseInt(b.subarray(at, eol).toString("latin1"), 16);
    assert.ok(eol > at && Number.isInteger(size), "a chunk size line");
    if (size === 0) return Buffer.concat(out);
    out.push(b.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
}

function handshakeRequest(path: string, key: string, extra = ""): string {
  return (
    `GET ${path} HTTP/1.1\r\nHost: ws.test.example:${upPort}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`
  );
}

/** Reads frames from `s` until `n` have come. */
function readFrames(s: tls.TLSSocket, first: Buffer, n: number): Promise<Frame[]> {
  const reader = new FrameReader();
  const got = reader.push(first);
  if (got.length >= n) return Promise.resolve(got);
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer): void => {
      got.push(...reader.push(d));
      if (got.length >= n) {
        s.off("data", onData);
        resolve(got);
      }
    };
    s.on("data", onData);
    s.once("close", () => reject(new Error(`closed after ${got.length} frames`)));
    s.resume();
  });
}

const closed = (s: Duplex): Promise<void> => (s.closed ? Promise.resolve() : new Promise<void>((r) => s.once("close", () => r())));

// --- the tests ----------------------------------------------------------------------------------

test("a WebSocket echo works through the proxy; only the handshake carries the injected credential", async () => {
  mode = "forward";
  const before = { hs: handshakes.length, asked: asked.length, outcomes: outcomes.length };
  const s = await tunnel();
  const key = randomBytes(16).toString("base64");
  const a = await exchange(s, handshakeRequest("/chat?room=1", key, "Sec-WebSocket-Protocol: chat\r\n"));
  assert.equal(a.status, 101);
  assert.equal(a.headers["upgrade"]?.toLowerCase(), "websocket");
  assert.equal(a.headers["sec-websocket-accept"], accept(key), "the upstream's accept, relayed");
  // The upstream echoed the credential in a 101 header: the client gets the placeholder only.
  assert.equal(a.headers["x-echo"], `Bearer ${PLACEHOLDER}`);
  assert.ok(!a.head.includes(SECRET));

  s.write(frame(0x1, Buffer.from("hello"), true));
  s.write(frame(0x2, randomBytes(70_000), true)); // a 64-bit length frame, binary
  const frames = await readFrames(s, a.rest, 2);
  assert.equal(frames[0]!.opcode, 0x1);
  assert.equal(frames[0]!.payload.toString(), "echo:hello");
  assert.equal(frames[0]!.masked, false);
  assert.equal(frames[1]!.payload.length, 70_005);

  // The upstream saw one handshake, with the credential the client never sent.
  const hs = handshakes.slice(before.hs);
  assert.equal(hs.length, 1);
  assert.equal(hs[0]!.url, "/chat?room=1");
  assert.equal(hs[0]!.headers.authorization, `Bearer ${SECRET}`);
  assert.equal(hs[0]!.headers["sec-websocket-key"], key);
  assert.equal(hs[0]!.headers["sec-websocket-protocol"], "chat");
  assert.equal(hs[0]!.headers.host, `ws.test.example:${upPort}`);
  // The policy was asked once, for a GET handshake it can tell apart from a plain request.
  const q = asked.slice(before.asked);
  assert.equal(q.length, 1);
  assert.equal(q[0]!.method, "GET");
  assert.equal(q[0]!.upgrade, "websocket");
  assert.equal(q[0]!.target, "/chat?room=1");
  assert.equal(q[0]!.headers.authorization, undefined);
  assert.equal(q[0]!.headers.upgrade, undefined, "hop-by-hop headers are not the policy's business");

  // A close frame: the upstream answers and closes; the proxy closes the client and reports.
  s.write(frame(0x8, Buffer.from([0x03, 0xe8]), true));
  s.resume();
  await closed(s);
  await waitFor(() => outcomes.length > before.outcomes);
  const o = outcomes[outcomes.length - 1]!;
  assert.equal(o.status, 101);
  assert.ok(o.bytesOut >= 70_000 && o.bytesIn >= 70_000, `bytes both ways counted (${o.bytesOut} out, ${o.bytesIn} in)`);
  assert.equal(o.error, undefined);
});

test("frames sent together with the handshake (before the 101) reach the upstream", async () => {
  mode = "forward";
  const s = await tunnel();
  const key = randomBytes(16).toString("base64");
  const a = await exchange(s, Buffer.concat([Buffer.from(handshakeRequest("/eager", key)), frame(0x1, Buffer.from("early"), true)]));
  assert.equal(a.status, 101);
  const frames = await readFrames(s, a.rest, 1);
  assert.equal(frames[0]!.payload.toString(), "echo:early");
  s.destroy();
});

test("closing the tunnel (a lease revoked) ends the WebSocket on both sides within 100 ms", async () => {
  mode = "forward";
  const s = await tunnel();
  const a = await exchange(s, handshakeRequest("/live", randomBytes(16).toString("base64")));
  assert.equal(a.status, 101);
  const up = upSockets[upSockets.length - 1]!;
  s.write(frame(0x1, Buffer.from("ping"), true));
  await readFrames(s, a.rest, 1);
  const handle = handles[handles.length - 1]!;
  const reported = outcomes.length;
  const t0 = performance.now();
  handle.close();
  await Promise.all([closed(s), closed(up)]);
  const ms = performance.now() - t0;
  assert.ok(ms < 100, `both sides closed in ${ms.toFixed(1)} ms`);
  assert.equal(handle.closed, true);
  // The exchange is reported once, when the pair closed, with the frames counted.
  await waitFor(() => outcomes.length > reported);
  assert.equal(outcomes.length, reported + 1);
  assert.equal(outcomes[reported]!.status, 101);
  assert.ok(outcomes[reported]!.bytesOut > 0 && outcomes[reported]!.bytesIn > 0);
});

test("a refusal from the policy answers 403 to the handshake and no upstream connection is made", async () => {
  mode = "refuse";
  try {
    const s = await tunnel();
    const before = { connects: connects.length, up: upConnections, hs: handshakes.length };
    const a = await exchange(s, handshakeRequest("/chat", randomBytes(16).toString("base64")));
    assert.equal(a.status, 403);
    assert.equal(a.headers["content-type"], "application/problem+json");
    assert.equal(JSON.parse(a.rest.toString()).reason, "lease_used_up");
    assert.equal(connects.length, before.connects, "connect never reached");
    assert.equal(upConnections, before.up);
    assert.equal(handshakes.length, before.hs);
    assert.equal(outcomes[outcomes.length - 1]!.status, 403);
  } finally {
    mode = "forward";
  }
});

test("an upstream that does not switch is relayed as a response, scrubbed, and the connection closes", async () => {
  mode = "forward";
  const s = await tunnel();
  const a = await exchange(s, handshakeRequest("/deny", randomBytes(16).toString("base64")));
  assert.equal(a.status, 401);
  assert.equal(a.rest.toString(), `no access for Bearer ${PLACEHOLDER}`);
  assert.ok(!a.rest.includes(SECRET));
  assert.match(a.head, /connection: close/i);
});

test("an upstream that switches to another protocol than WebSocket gets 502", async () => {
  mode = "forward";
  const s = await tunnel();
  const a = await exchange(s, handshakeRequest("/h2c", randomBytes(16).toString("base64")));
  assert.equal(a.status, 502);
});

test("upgrades other than WebSocket are refused (501) without asking the policy or the upstream", async () => {
  const s = await tunnel();
  const before = { asked: asked.length, hs: handshakes.length };
  const a = await exchange(s, `GET / HTTP/1.1\r\nHost: ws.test.example:${upPort}\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n`);
  assert.equal(a.status, 501);
  assert.equal(asked.length, before.asked);
  assert.equal(handshakes.length, before.hs);
});

test("attack: a handshake with a body (smuggled bytes) is refused (400), nothing forwarded", async () => {
  const s = await tunnel();
  const before = { asked: asked.length, hs: handshakes.length };
  const smuggled = "GET /admin HTTP/1.1\r\nHost: ws.test.example\r\n\r\n";
  const a = await exchange(s, handshakeRequest("/chat", randomBytes(16).toString("base64"), `Content-Length: ${smuggled.length}\r\n`) + smuggled);
  assert.equal(a.status, 400);
  assert.equal(asked.length, before.asked);
  assert.equal(handshakes.length, before.hs);
  assert.deepEqual(plainRequests, []);
});

test("attack: a handshake for another host than the tunnel's is refused (421)", async () => {
  const s = await tunnel();
  const before = handshakes.length;
  const a = await exchange(s, handshakeRequest("/chat", randomBytes(16).toString("base64")).replace(`Host: ws.test.example:${upPort}`, "Host: evil.test.example"));
  assert.equal(a.status, 421);
  assert.equal(handshakes.length, before);
});

test("attack: a POST handshake is refused (400)", async () => {
  const s = await tunnel();
  const before = handshakes.length;
  const a = await exchange(s, handshakeRequest("/chat", randomBytes(16).toString("base64")).replace(/^GET/, "POST"));
  assert.equal(a.status, 400);
  assert.equal(handshakes.length, before);
});

test("more header lines than the cap: 431 for a handshake and for a plain request inside the tunnel", async () => {
  const many = Array.from({ length: 25 }, (_, i) => `X-H${i}: ${i}\r\n`).join("");
  const before = { asked: asked.length, hs: handshakes.length, plain: plainRequests.length };
  const s = await tunnel();
  const a = await exchange(s, handshakeRequest("/chat", randomBytes(16).toString("base64"), many));
  assert.equal(a.status, 431);
  const s2 = await tunnel();
  const b = await exchange(s2, `GET /x HTTP/1.1\r\nHost: ws.test.example:${upPort}\r\n${many}Connection: close\r\n\r\n`);
  assert.equal(b.status, 431);
  assert.equal(JSON.parse(b.rest.toString()).reason, "header_count");
  assert.equal(asked.length, before.asked);
  assert.equal(handshakes.length, before.hs);
  assert.equal(plainRequests.length, before.plain);
  // Within the cap, the same request goes through.
  const s3 = await tunnel();
  const c = await exchange(s3, `GET /x HTTP/1.1\r\nHost: ws.test.example:${upPort}\r\nConnection: close\r\n\r\n`);
  assert.equal(c.status, 200);
  assert.equal(c.rest.toString(), "plain /x");
});

async function waitFor(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail("timed out waiting");
    await new Promise((r) => setTimeout(r, 5));
  }
}
