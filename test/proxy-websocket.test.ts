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
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import * as tls from "node:tls";
import { LocalCa } from "../src/proxy/ca.js";
import type { Egress, EgressDecision, Prepared, ProxiedRequest, RequestOutcome, TunnelHandle } from "../src/proxy/egress.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { ProxyRefusal } from "../src/proxy/refusal.js";
import { ScrubPatterns } from "../src/proxy/scrub.js";
import { TripwireMarks } from "../src/proxy/body-tripwire.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { loopbackOnly, openTunnel, tableResolver } from "./proxy-harness.js";

const SECRET = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2";
const PLACEHOLDER = makePlaceholder(SECRET);
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const accept = (key: string): string => createHash("sha1").update(key + GUID).digest("base64");

// --- RFC 6455 frames (just enough: FIN and fragments, 7/16/64-bit lengths, masking) --------------

function frame(opcode: number, payload: Buffer, mask: boolean, fin = true): Buffer {
  const len = payload.length;
  const b0 = (fin ? 0x80 : 0) | opcode;
  const head = len < 126 ? Buffer.from([b0, (mask ? 0x80 : 0) | len]) : len < 65536 ? Buffer.alloc(4) : Buffer.alloc(10);
  if (len >= 126 && len < 65536) {
    head[0] = b0;
    head[1] = (mask ? 0x80 : 0) | 126;
    head.writeUInt16BE(len, 2);
  } else if (len >= 65536) {
    head[0] = b0;
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
  fin: boolean;
  masked: boolean;
  payload: Buffer;
  /** The masking key as sent (masked frames). */
  key?: Buffer;
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
      const key = masked ? Buffer.from(b.subarray(keyAt, keyAt + 4)) : undefined;
      if (key) payload = Buffer.from(payload.map((x, i) => x ^ key[i % 4]!));
      out.push({ opcode: b[0]! & 0x0f, fin: (b[0]! & 0x80) !== 0, masked, payload, ...(key ? { key } : {}) });
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
/** Every frame the upstream received, in order (unmasked). */
const upFrames: Frame[] = [];
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
  if (req.url === "/frames/ext") {
    // Turns on compression though the proxy offered no extension.
    socket.end(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept(key)}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n`);
    return;
  }
  // A header echoing the credential (as a server echoing a token subprotocol would).
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${accept(key)}\r\nX-Echo: ${auth}\r\n\r\n`,
  );
  upSockets.push(socket);
  const reader = new FrameReader();
  // A fragmented message is collected and echoed whole, once its last fragment came.
  let message: { opcode: number; parts: Buffer[] } | null = null;
  const onData = (d: Buffer): void => {
    for (const f of reader.push(d)) {
      upFrames.push(f);
      if (!f.masked) {
        socket.destroy(); // RFC 6455 5.1: a client frame must be masked
        return;
      }
      if (f.opcode === 0x1 || f.opcode === 0x2 || f.opcode === 0x0) {
        if (f.opcode !== 0x0) message = { opcode: f.opcode, parts: [] };
        message!.parts.push(f.payload);
        if (!f.fin) continue;
        const whole = Buffer.concat(message!.parts);
        const op = message!.opcode;
        message = null;
        // Asked to close: a close frame whose reason echoes the secret (the proxy must scrub it).
        if (whole.toString() === "close-with-secret") socket.end(frame(0x8, Buffer.concat([Buffer.from([0x03, 0xe8]), Buffer.from(`bye ${SECRET}`)]), false));
        else socket.write(frame(op, Buffer.concat([Buffer.from("echo:"), whole]), false));
      } else if (f.opcode === 0x9) socket.write(frame(0xa, f.payload, false));
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
  resolve: tableResolver({ "ws.test.example": "127.0.0.1" }),
});
const connects: ConnectTo[] = [];
const connect = loopbackOnly(connects);

/** What the policy saw and the handles it was given; `mode` says how it answers the next request. */
const asked: ProxiedRequest[] = [];
const handles: TunnelHandle[] = [];
const outcomes: RequestOutcome[] = [];
let mode: "forward" | "refuse" = "forward";
const scrubPatterns = new ScrubPatterns([{ value: SECRET, placeholder: PLACEHOLDER }]);
/** A second credential whose placeholder is shorter than its value: frames must be re-measured. */
const SHORT_PLACEHOLDER = "PH_SHORT_01";
const LONG_VALUE = "long-value-" + "v".repeat(200);
/** What a `websocket = true` rule gives for handshakes to /frames…: placeholder → value. */
const framePatterns = new ScrubPatterns([
  { value: PLACEHOLDER, placeholder: SECRET },
  { value: SHORT_PLACEHOLDER, placeholder: LONG_VALUE },
]);
/** Another host's placeholder: the tripwire's mark for handshakes to /trip…, and what it reported. */
const OTHER_PH = "sk-oth-" + "PLACEHOLDERforAnotherHost0123456789";
const tripMarks = new TripwireMarks([["other", [OTHER_PH]]]);
const tripped: unknown[][] = [];
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
        const frames = req.target.startsWith("/frames") ? { frames: framePatterns } : {};
        // /trip…: the client's frames are watched for another host's placeholder (the body tripwire).
        const wire = req.target.startsWith("/trip") ? { bodyTripwire: { marks: tripMarks, trip: async (owners: readonly unknown[]) => (tripped.push([...owners]), "Forbidden: tripped") } } : {};
        return { kind: "forward", headers: { ...req.headers, authorization: `Bearer ${SECRET}` }, target: req.target, scrub: scrubPatterns, ...frames, ...wire, done };
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
const tunnel = (): Promise<tls.TLSSocket> => openTunnel(proxyPort, "ws.test.example", upPort, { ca: proxyCa.certPem });

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

// --- frames rewritten (a `websocket = true` rule, and the server's frames scrubbed) ----------------

/** Reads every frame from `s` until it closes. */
function framesUntilClosed(s: tls.TLSSocket, first: Buffer): Promise<Frame[]> {
  const reader = new FrameReader();
  const got = reader.push(first);
  return new Promise((resolve) => {
    s.on("data", (d: Buffer) => got.push(...reader.push(d)));
    s.once("close", () => resolve(got));
    s.on("error", () => {});
    s.resume();
  });
}

/** A WebSocket through the proxy to `path`, handshake done; `extra` header lines for the handshake. */
async function open(path: string, extra = ""): Promise<{ s: tls.TLSSocket; rest: Buffer; hs: Handshake }> {
  const before = handshakes.length;
  const s = await tunnel();
  const a = await exchange(s, handshakeRequest(path, randomBytes(16).toString("base64"), extra));
  assert.equal(a.status, 101);
  assert.equal(handshakes.length, before + 1);
  return { s, rest: a.rest, hs: handshakes[handshakes.length - 1]! };
}

test("frames rule: a placeholder in a client frame reaches the upstream as the value (re-masked, re-measured); the echo comes back as the placeholder", async () => {
  mode = "forward";
  const { s, rest, hs } = await open("/frames", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
  // No extension is offered upstream: a compressed frame could not be rewritten.
  assert.equal(hs.headers["sec-websocket-extensions"], undefined);
  const first = upFrames.length;
  const text = frame(0x1, Buffer.from(`{"token":"${PLACEHOLDER}"}`), true);
  const binary = frame(0x2, Buffer.concat([Buffer.from([0, 1, 2]), Buffer.from(PLACEHOLDER), Buffer.from([255])]), true);
  // 100 bytes with a short placeholder whose value is 211 bytes: the frame grows past the 7-bit length.
  const grows = frame(0x1, Buffer.from(`k=${SHORT_PLACEHOLDER};`.padEnd(100, ".")), true);
  // Written byte by byte in part, so the proxy parses frames across reads.
  s.write(text.subarray(0, 1));
  await new Promise((r) => setTimeout(r, 10));
  s.write(text.subarray(1, 5));
  await new Promise((r) => setTimeout(r, 10));
  // And a frame with a 64-bit length, the placeholder at its very end.
  const big = frame(0x2, Buffer.concat([Buffer.alloc(70_000, 0x2e), Buffer.from(PLACEHOLDER)]), true);
  s.write(Buffer.concat([text.subarray(5), binary, grows, big]));
  const echoed = await readFrames(s, rest, 4);

  const got = upFrames.slice(first);
  assert.equal(got.length, 4);
  assert.equal(got[3]!.payload.length, 70_000 + SECRET.length);
  assert.equal(got[3]!.payload.subarray(70_000).toString(), SECRET);
  assert.equal(got[0]!.opcode, 0x1);
  assert.equal(got[0]!.payload.toString(), `{"token":"${SECRET}"}`, "the upstream got the value");
  assert.deepEqual(got[1]!.payload, Buffer.concat([Buffer.from([0, 1, 2]), Buffer.from(SECRET), Buffer.from([255])]), "in a binary frame too");
  assert.equal(got[2]!.payload.toString(), `k=${LONG_VALUE};`.padEnd(100 - SHORT_PLACEHOLDER.length + LONG_VALUE.length, "."));
  assert.equal(got[2]!.payload.length, 100 - SHORT_PLACEHOLDER.length + LONG_VALUE.length, "the length was recomputed (16-bit form)");
  for (const f of got) {
    assert.equal(f.masked, true, "re-masked");
    assert.equal(f.fin, true);
  }
  // A fresh key, not the client's: the client's key for the first frame is at bytes 2..6.
  assert.notDeepEqual(got[0]!.key, text.subarray(2, 6));

  // The upstream echoed the value: the client sees the placeholder only.
  assert.equal(echoed[0]!.payload.toString(), `echo:{"token":"${PLACEHOLDER}"}`);
  assert.equal(echoed[0]!.masked, false);
  assert.ok(!echoed[1]!.payload.includes(SECRET));
  assert.ok(echoed[1]!.payload.includes(PLACEHOLDER));
  s.destroy();
});

test("frames rule: a placeholder split across the fragments of one message, with a ping between them, is replaced", async () => {
  mode = "forward";
  const { s, rest } = await open("/frames/fragmented");
  const first = upFrames.length;
  const cut = 13;
  s.write(frame(0x1, Buffer.from("abc" + PLACEHOLDER.slice(0, cut)), true, false));
  await new Promise((r) => setTimeout(r, 10));
  s.write(frame(0x9, Buffer.from("ping-" + PLACEHOLDER.slice(0, 5)), true)); // a control frame inside the message
  s.write(frame(0x0, Buffer.from(PLACEHOLDER.slice(cut, cut + 7)), true, false));
  s.write(frame(0x0, Buffer.from(PLACEHOLDER.slice(cut + 7) + "xyz"), true, true));
  const echoed = await readFrames(s, rest, 2);

  const got = upFrames.slice(first);
  const data = got.filter((f) => f.opcode !== 0x9);
  assert.deepEqual(
    data.map((f) => [f.opcode, f.fin]),
    [
      [0x1, false],
      [0x0, false],
      [0x0, true],
    ],
    "the fragmentation is kept (the fragments' sizes may move)",
  );
  assert.equal(Buffer.concat(data.map((f) => f.payload)).toString(), "abc" + SECRET + "xyz", "the upstream got the value, whole");
  for (const f of data) assert.ok(!f.payload.toString().includes(PLACEHOLDER.slice(0, cut)), "no piece of the placeholder went upstream");
  // The ping passed as it was (control frames are not rewritten), and its pong came back.
  const ping = got.find((f) => f.opcode === 0x9)!;
  assert.equal(ping.payload.toString(), "ping-" + PLACEHOLDER.slice(0, 5));
  assert.deepEqual(
    echoed.map((f) => f.opcode),
    [0xa, 0x1],
  );
  assert.equal(echoed[1]!.payload.toString(), "echo:abc" + PLACEHOLDER + "xyz");
  s.destroy();
});

test("without a frames rule the client's frames are not rewritten: a placeholder reaches the upstream as is", async () => {
  mode = "forward";
  const { s, rest } = await open("/chat");
  const first = upFrames.length;
  s.write(frame(0x1, Buffer.from(`t=${PLACEHOLDER}`), true));
  await readFrames(s, rest, 1);
  assert.equal(upFrames[first]!.payload.toString(), `t=${PLACEHOLDER}`);
  s.destroy();
});

test("tripwire in frames: another host's placeholder split across a message's fragments closes both sides with 1008; no byte of it goes upstream", async () => {
  mode = "forward";
  const { s, rest } = await open("/trip/a");
  const first = upFrames.length;
  const firstTrip = tripped.length;
  const cut = 13;
  s.write(frame(0x1, Buffer.from("abc" + OTHER_PH.slice(0, cut)), true, false));
  await new Promise((r) => setTimeout(r, 20));
  s.write(frame(0x0, Buffer.from(OTHER_PH.slice(cut) + "xyz"), true, true));
  const got = await framesUntilClosed(s, rest);
  const close = got.find((f) => f.opcode === 0x8);
  assert.ok(close, "the client got a close frame");
  assert.equal(close.payload.readUInt16BE(0), 1008);
  await waitFor(() => tripped.length > firstTrip);
  assert.deepEqual(tripped[firstTrip], ["other"], "the policy heard whose mark it was");
  const up = upFrames.slice(first);
  for (const f of up) assert.ok(!f.payload.toString("latin1").includes(OTHER_PH.slice(0, 6)), "no piece of the mark went upstream");
  assert.equal(Buffer.concat(up.filter((f) => f.opcode < 8).map((f) => f.payload)).toString(), "abc", "the bytes before it did");
  assert.ok(up.some((f) => f.opcode === 0x8 && f.payload.readUInt16BE(0) === 1008), "the upstream got a close frame");
});

test("tripwire in frames: a client ping carrying the mark closes with 1008; clean frames pass unchanged (re-masked)", async () => {
  mode = "forward";
  const clean = await open("/trip/b");
  const first = upFrames.length;
  clean.s.write(frame(0x1, Buffer.from(`hello ${OTHER_PH.slice(0, 20)} and ${PLACEHOLDER}`), true));
  const echoed = await readFrames(clean.s, clean.rest, 1);
  assert.equal(upFrames[first]!.payload.toString(), `hello ${OTHER_PH.slice(0, 20)} and ${PLACEHOLDER}`, "a prefix of the mark alone is no alarm");
  assert.equal(upFrames[first]!.masked, true);
  assert.equal(echoed[0]!.payload.toString(), `echo:hello ${OTHER_PH.slice(0, 20)} and ${PLACEHOLDER}`);
  // A clean ping reaches the upstream intact (its pong echoes the payload back).
  const pingAt = upFrames.length;
  clean.s.write(frame(0x9, Buffer.from("are you there"), true));
  const pong = await readFrames(clean.s, Buffer.alloc(0), 1);
  assert.equal(upFrames[pingAt]!.opcode, 0x9);
  assert.equal(upFrames[pingAt]!.payload.toString(), "are you there");
  assert.equal(upFrames[pingAt]!.masked, true);
  assert.equal(pong[0]!.opcode, 0xa);
  assert.equal(pong[0]!.payload.toString(), "are you there");
  clean.s.destroy();

  const firstTrip = tripped.length;
  const { s, rest } = await open("/trip/c");
  const before = upFrames.length;
  s.write(frame(0x9, Buffer.from("p " + OTHER_PH), true));
  const got = await framesUntilClosed(s, rest);
  assert.equal(got.find((f) => f.opcode === 0x8)?.payload.readUInt16BE(0), 1008);
  await waitFor(() => tripped.length > firstTrip);
  assert.ok(!upFrames.slice(before).some((f) => f.opcode === 0x9), "the ping never went upstream");
});

test("a close frame from the server whose reason echoes the secret reaches the client scrubbed", async () => {
  mode = "forward";
  const { s, rest } = await open("/frames/close");
  s.write(frame(0x1, Buffer.from("close-with-secret"), true));
  const frames = await framesUntilClosed(s, rest);
  const close = frames.find((f) => f.opcode === 0x8)!;
  assert.ok(close, "a close frame came");
  assert.equal(close.payload.readUInt16BE(0), 1000);
  assert.equal(close.payload.subarray(2).toString(), `bye ${PLACEHOLDER}`);
});

test("a frame above the 16 MiB cap closes both sides with 1009 before its payload is read; nothing of it goes upstream", async () => {
  mode = "forward";
  const { s, rest } = await open("/frames/big");
  const first = upFrames.length;
  const up = upSockets[upSockets.length - 1]!;
  // The head of a masked binary frame of 16 MiB + 1 bytes, and a little of its payload.
  const head = Buffer.alloc(14);
  head[0] = 0x82;
  head[1] = 0x80 | 127;
  head.writeBigUInt64BE(BigInt(16 * 1024 * 1024 + 1), 2);
  randomBytes(4).copy(head, 10);
  s.write(Buffer.concat([head, randomBytes(1000)]));
  const frames = await framesUntilClosed(s, rest);
  assert.deepEqual(
    frames.map((f) => f.opcode),
    [0x8],
  );
  assert.equal(frames[0]!.payload.readUInt16BE(0), 1009);
  await closed(up);
  const got = upFrames.slice(first);
  assert.ok(
    got.every((f) => f.opcode === 0x8),
    "the upstream got no data frame",
  );
  if (got.length > 0) assert.equal(got[0]!.payload.readUInt16BE(0), 1009);
});

test("attack: an unmasked client frame, RSV bits, or a continuation with no message close with 1002 and are not forwarded", async () => {
  mode = "forward";
  const bad = [
    frame(0x1, Buffer.from(`x=${PLACEHOLDER}`), false),
    (() => {
      const f = frame(0x1, Buffer.from(`x=${PLACEHOLDER}`), true);
      f[0] = f[0]! | 0x40; // RSV1: a "compressed" frame nobody negotiated
      return f;
    })(),
    frame(0x0, Buffer.from(`x=${PLACEHOLDER}`), true),
    frame(0x9, Buffer.alloc(126), true), // a control frame above 125 bytes
  ];
  for (const b of bad) {
    const { s, rest } = await open("/frames/attack");
    const first = upFrames.length;
    s.write(b);
    const frames = await framesUntilClosed(s, rest);
    assert.equal(frames.length, 1);
    assert.equal(frames[0]!.opcode, 0x8);
    assert.equal(frames[0]!.payload.readUInt16BE(0), 1002);
    await new Promise((r) => setTimeout(r, 20));
    assert.ok(
      upFrames.slice(first).every((f) => f.opcode === 0x8),
      "nothing but a close frame reached the upstream",
    );
  }
});

test("an upstream that turns on an extension the proxy did not offer gets 502 when frames are rewritten", async () => {
  mode = "forward";
  const s = await tunnel();
  const a = await exchange(s, handshakeRequest("/frames/ext", randomBytes(16).toString("base64")));
  assert.equal(a.status, 502);
  assert.match(a.rest.toString(), /extension/);
});
