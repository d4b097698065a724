/**
 * The tripwire attacked again by a hostile agent (second round): compressed-body framing tricks, HTTP/2
 * pseudo-headers, pipelining and smuggling, Expect: 100-continue, bodies on GET/HEAD, WebSocket framing,
 * header oddities, and whether a refusal can wedge or crash the proxy.
 *
 * Same rig as test/proxy-attacks.test.ts (copied, self-contained): a real vault and LeaseEgress, a real
 * ForwardProxy, local HTTPS upstreams on 127.0.0.1 (HTTP/1.1 and HTTP/2) that record every byte they get.
 * Traffic goes to loopback only (names resolve through a table; the connect step fails the test for any
 * other address). Each test asserts the promise of docs/proxy.md ("Tripwire", "Tripwire in bodies",
 * "Compressed bodies under the tripwire"): a test FAILS when no byte of the mark may reach the upstream
 * but some did. Three breaks this round found are fixed and held here: a mark in a gzip header field
 * or a brotli metadata block (decoders skip them), and a placeholder sent as the HTTP/2 :method. Gaps
 * it found outside the promise are listed under "Not yet" in docs/proxy.md.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import * as https from "node:https";
import type { IncomingHttpHeaders, IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import * as tls from "node:tls";
import { brotliDecompressSync, constants as zc, gunzipSync, gzipSync, deflateSync } from "node:zlib";
import { createHash, randomBytes } from "node:crypto";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential, type InjectionRule } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";
import { closeUpstreams, loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";

const HOST = "api.attack2.example"; // covered by tok/bas/qry; HTTP/1.1 upstream on port1, HTTP/2 on port2
const H2HOST = "h2.attack2.example";
const OTHER = "other.attack2.example"; // covered by oth only (no method or path rule)

const TOK = "ghp_" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa12";
const BAS = "bas-" + "CANARYbasicPw0rd9876543210zz";
const QRY = "qk+A/b=Cd+Ef/Gh=Ij+Kl/Mn=Op+Qr/CANARY";
const OTH = "sk-oth-" + "CANARYotherHost0123456789abcd";

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

// --- upstreams: record everything ------------------------------------------------------------------

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}
const seen: Seen[] = [];
/** Body bytes as the upstreams parsed them, in order (aborted requests' too). */
const arrived: Buffer[] = [];
/** Every raw byte the HTTP/1.1 upstream's TLS sockets received (head, body, frames). */
const rawUp1: Buffer[] = [];
/** Unmasked payloads of the WebSocket frames the upstream received, and the raw frames' opcodes. */
const wsPayloads: { opcode: number; fin: boolean; rsv: number; payload: Buffer }[] = [];
const h2Trailers: IncomingHttpHeaders[] = [];

const upCa = LocalCa.create({ permitted: [HOST, H2HOST, OTHER] });

const up1 = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  const chunks: Buffer[] = [];
  req.on("error", () => {});
  req.on("data", (d: Buffer) => (chunks.push(d), arrived.push(d)));
  req.on("end", () => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks) });
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
  });
});
up1.on("secureConnection", (s: tls.TLSSocket) => {
  s.on("data", (d: Buffer) => rawUp1.push(Buffer.from(d)));
});
up1.on("clientError", (_e, s: Duplex) => s.destroy());
up1.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
  socket.on("error", () => {});
  const key = String(req.headers["sec-websocket-key"] ?? "");
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${createHash("sha1").update(key + GUID).digest("base64")}\r\n\r\n`);
  let buf = Buffer.from(head);
  const parse = (): void => {
    for (;;) {
      if (buf.length < 2) return;
      const masked = (buf[1]! & 0x80) !== 0;
      let len = buf[1]! & 0x7f;
      let at = 2;
      if (len === 126) {
        if (buf.length < 4) return;
        len = buf.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (buf.length < 10) return;
        len = Number(buf.readBigUInt64BE(2));
        at = 10;
      }
      const keyAt = at;
      if (masked) at += 4;
      if (buf.length < at + len) return;
      const payload = Buffer.from(buf.subarray(at, at + len));
      if (masked) for (let i = 0; i < payload.length; i++) payload[i] = payload[i]! ^ buf[keyAt + (i & 3)]!;
      wsPayloads.push({ opcode: buf[0]! & 0x0f, fin: (buf[0]! & 0x80) !== 0, rsv: buf[0]! & 0x70, payload });
      buf = buf.subarray(at + len);
    }
  };
  parse();
  socket.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    parse();
  });
});
await new Promise<void>((r) => up1.listen(0, "127.0.0.1", r));
const port1 = (up1.address() as AddressInfo).port;

const up2 = http2.createSecureServer({ SNICallback: upCa.sniCallback, allowHTTP1: false });
up2.on("stream", (stream, h) => {
  stream.on("error", () => {});
  const chunks: Buffer[] = [];
  stream.on("data", (d: Buffer) => (chunks.push(d), arrived.push(d)));
  stream.on("trailers", (t: IncomingHttpHeaders) => h2Trailers.push(t));
  stream.on("end", () => {
    const headers: IncomingHttpHeaders = {};
    for (const [k, v] of Object.entries(h)) if (!k.startsWith(":")) headers[k] = v as string;
    seen.push({ method: String(h[":method"]), url: String(h[":path"]), headers, body: Buffer.concat(chunks) });
    if (stream.destroyed || stream.closed) return;
    stream.respond({ ":status": 200 });
    stream.end("ok");
  });
});
await new Promise<void>((r) => up2.listen(0, "127.0.0.1", r));
const port2 = (up2.address() as AddressInfo).port;

after(async () => {
  await closeUpstreams(up1, up2);
});

// --- the rig ------------------------------------------------------------------------------------------

const POLICY =
  grant("api", ["bot"], ["tok", "bas", "qry"], [HOST, H2HOST], 'paths = ["/ok/"]\nmethods = ["GET", "POST", "HEAD"]') +
  grant("other", ["bot"], ["oth"], [OTHER]);

interface Rig {
  port: number;
  creds: ProxyCredential[];
  ph: (name: "tok" | "bas" | "qry" | "oth") => string;
  warns: string[];
  alarmed(): Promise<boolean>;
  revoked(name: "tok" | "oth"): Promise<boolean>;
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
    alarmed: async () => (await admin.auditQuery({ types: ["proxy_request"], limit: 10_000 })).some((e) => JSON.parse(e.detail ?? "{}").alarm === true),
    revoked: async (name) => {
      const id = creds.find((c) => c.secret === `global/${name}`)!.lease.id;
      return !(await admin.listLeases({ agent: "bot" })).some((l) => l.id === id && l.revokedAt === null);
    },
    close: async () => {
      await proxy.close();
      await egress.close();
    },
  };
}

// --- clients -------------------------------------------------------------------------------------------

/** A CONNECT tunnel to `host:port` through the proxy, TLS inside with the given ALPN. */
const tunnel = (r: Rig, host: string, port: number, alpn = "http/1.1"): Promise<tls.TLSSocket> => openTunnel(r.port, host, port, { alpn });

async function rawH1(r: Rig, bytes: string | Buffer | (string | Buffer)[], host = HOST, ms = 2500, port = port1): Promise<string> {
  const s = await tunnel(r, host, port);
  const parts = Array.isArray(bytes) ? bytes : [bytes];
  for (let i = 0; i < parts.length; i++) {
    if (i > 0) await delay(60);
    s.write(parts[i]!);
  }
  return readAll(s, ms);
}

const statusOf = (answer: string): number => Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0);
const allStatuses = (answer: string): number[] => [...answer.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));

/** One h2 stream in a fresh tunnel; body written in `parts` (80 ms apart). Resolves with the status (0 on a reset). */
async function h2Send(r: Rig, host: string, port: number, headers: http2.OutgoingHttpHeaders, parts?: (string | Buffer)[], trailers?: http2.OutgoingHttpHeaders): Promise<number> {
  const s = await tunnel(r, host, port, "h2");
  const session = http2.connect(`https://${host}`, { createConnection: () => s });
  session.on("error", () => {});
  try {
    return await new Promise<number>((resolve) => {
      const req = session.request({ ":method": "POST", ":path": "/ok/t", ...headers }, { endStream: parts === undefined, ...(trailers ? { waitForTrailers: true } : {}) });
      let st = 0;
      req.on("response", (h) => (st = Number(h[":status"])));
      req.on("data", () => {});
      req.on("end", () => resolve(st));
      req.on("close", () => resolve(st));
      req.on("error", () => resolve(st));
      if (trailers) req.on("wantTrailers", () => req.sendTrailers(trailers));
      if (parts !== undefined) {
        void (async () => {
          for (let i = 0; i < parts.length; i++) {
            if (i > 0) await delay(80);
            if (i === parts.length - 1) req.end(parts[i]);
            else req.write(parts[i]);
          }
          if (parts.length === 0) req.end();
        })();
      }
    });
  } finally {
    session.destroy();
  }
}

/** Every upstream-received byte since the given marks, as one latin1 string. */
function upstreamBytes(from: { arrived: number; raw: number; seen: number }): string {
  return (
    Buffer.concat(arrived.slice(from.arrived)).toString("latin1") +
    "\n" +
    Buffer.concat(rawUp1.slice(from.raw)).toString("latin1") +
    "\n" +
    seen
      .slice(from.seen)
      .map((s) => `${s.method} ${s.url} ${JSON.stringify(s.headers)}`)
      .join("\n")
  );
}
const mark0 = (): { arrived: number; raw: number; seen: number } => ({ arrived: arrived.length, raw: rawUp1.length, seen: seen.length });

/** Fails if `text` (what the upstream got) holds `mark` or any 12+ byte piece of it. */
function assertNoMarkBytes(text: string, mark: string, what: string): void {
  assert.ok(!text.includes(mark), `${what}: the whole mark reached the upstream`);
  for (let i = 0; i + 12 <= mark.length; i++) assert.ok(!text.includes(mark.slice(i, i + 12)), `${what}: a 12-byte piece of the mark (at ${i}) reached the upstream`);
}

function decodeAll(coding: string, b: Buffer): string {
  if (b.length === 0) return "";
  try {
    if (coding === "br") return brotliDecompressSync(b, { finishFlush: zc.BROTLI_OPERATION_FLUSH }).toString("latin1");
    return gunzipSync(b, { finishFlush: zc.Z_SYNC_FLUSH }).toString("latin1");
  } catch {
    return "";
  }
}

// --- compressed bodies: framing of the coding itself -------------------------------------------------

/** A gzip member of `data` whose header carries `field` (FEXTRA, FNAME or FCOMMENT) = `text`. */
function gzipWithHeaderField(data: string, field: "FEXTRA" | "FNAME" | "FCOMMENT", text: string): Buffer {
  const plain = gzipSync(data); // header is 10 bytes, no flags
  const flag = field === "FEXTRA" ? 4 : field === "FNAME" ? 8 : 16;
  const head = Buffer.from(plain.subarray(0, 10));
  head[3] = flag;
  let extra: Buffer;
  if (field === "FEXTRA") {
    const sub = Buffer.concat([Buffer.from("LX"), Buffer.from([text.length & 255, text.length >> 8]), Buffer.from(text, "latin1")]);
    const xlen = Buffer.alloc(2);
    xlen.writeUInt16LE(sub.length);
    extra = Buffer.concat([xlen, sub]);
  } else extra = Buffer.from(text + "\0", "latin1");
  return Buffer.concat([head, extra, plain.subarray(10)]);
}

/** A brotli stream holding only a metadata meta-block with `meta` (skipped by decoders), then an empty last block. */
function brotliMetadataOnly(meta: Buffer): Buffer {
  assert.ok(meta.length >= 1 && meta.length <= 256);
  const n = meta.length - 1;
  // WBITS=16 ('0'), ISLAST=0, MNIBBLES=3 (metadata), reserved 0, MSKIPBYTES=1, MSKIPLEN-1 (8 bits), pad.
  const b0 = 0x2c | ((n & 1) << 7);
  const b1 = (n >> 1) & 0x7f;
  return Buffer.concat([Buffer.from([b0, b1]), meta, Buffer.from([0x03])]);
}

test("compressed body: another host's placeholder in a gzip header field (FEXTRA, FNAME, FCOMMENT) never reaches the upstream (h1 and h2)", async () => {
  const failures: string[] = [];
  for (const field of ["FEXTRA", "FNAME", "FCOMMENT"] as const)
    for (const proto of ["h1", "h2"] as const) {
      const r = await rig();
      try {
        const ph = r.ph("oth");
        const packed = gzipWithHeaderField(`{"note":"an innocent body"}`, field, ph);
        assert.equal(gunzipSync(packed).toString(), `{"note":"an innocent body"}`, "the body is valid gzip");
        const from = mark0();
        let status: number;
        if (proto === "h1") {
          const a = await rawH1(r, [Buffer.from(`POST /ok/gz HTTP/1.1\r\nHost: ${HOST}\r\nContent-Encoding: gzip\r\nContent-Length: ${packed.length}\r\nConnection: close\r\n\r\n`), packed]);
          status = statusOf(a);
        } else status = await h2Send(r, H2HOST, port2, { "content-encoding": "gzip" }, [packed]);
        await delay(50);
        const got = upstreamBytes(from);
        if (got.includes(ph)) failures.push(`${proto} ${field}: status ${status}, the placeholder reached the upstream verbatim in the gzip header; revoked=${await r.revoked("oth")}`);
      } finally {
        await r.close();
      }
    }
  assert.deepEqual(failures, [], failures.join("\n"));
});

test("compressed body: another host's placeholder in a brotli metadata meta-block (skipped by decoders) never reaches the upstream (h1 and h2)", async () => {
  const failures: string[] = [];
  for (const proto of ["h1", "h2"] as const) {
    const r = await rig();
    try {
      const ph = r.ph("oth");
      const packed = brotliMetadataOnly(Buffer.from(`token=${ph}`));
      assert.equal(brotliDecompressSync(packed).length, 0, "a valid br stream that decodes to nothing");
      const from = mark0();
      let status: number;
      if (proto === "h1") {
        const a = await rawH1(r, [Buffer.from(`POST /ok/br HTTP/1.1\r\nHost: ${HOST}\r\nContent-Encoding: br\r\nContent-Length: ${packed.length}\r\nConnection: close\r\n\r\n`), packed]);
        status = statusOf(a);
      } else status = await h2Send(r, H2HOST, port2, { "content-encoding": "br" }, [packed]);
      await delay(50);
      if (upstreamBytes(from).includes(ph)) failures.push(`${proto}: status ${status}, the placeholder reached the upstream verbatim in a brotli metadata block`);
    } finally {
      await r.close();
    }
  }
  assert.deepEqual(failures, [], failures.join("\n"));
});

test("compressed body: Content-Encoding variants (case, whitespace, x-gzip, identity mixed in, duplicate header lines) are all decoded and watched", async () => {
  const variants: string[][] = [["GZIP"], ["  gzip\t"], ["x-gzip"], ["X-GZip"], ["identity, gzip"], ["gzip, identity"], ["identity", "gzip"], ["gzip", "identity"], [",gzip,"], ["gzip", ""]];
  const failures: string[] = [];
  for (const v of variants) {
    const r = await rig();
    try {
      const ph = r.ph("oth");
      const body = `{"pad":"${"a".repeat(200)}","token":"${ph}"}`;
      const packed = gzipSync(body);
      const from = mark0();
      const head = `POST /ok/ce HTTP/1.1\r\nHost: ${HOST}\r\n${v.map((x) => `Content-Encoding: ${x}\r\n`).join("")}Content-Length: ${packed.length}\r\nConnection: close\r\n\r\n`;
      const a = await rawH1(r, [Buffer.from(head), packed]);
      await delay(30);
      const got = Buffer.concat(arrived.slice(from.arrived));
      const readable = decodeAll("gzip", got);
      const st = statusOf(a);
      if (readable.includes(ph) || (st !== 403 && st !== 415 && st !== 400)) failures.push(`${JSON.stringify(v)}: status ${st}, upstream can decode ${readable.length} bytes, mark ${readable.includes(ph) ? "INCLUDED" : "not included"}`);
    } finally {
      await r.close();
    }
  }
  assert.deepEqual(failures, [], failures.join("\n"));
});

test("compressed body: a coding hidden in Transfer-Encoding (gzip, chunked) over HTTP/1.1 never reaches the upstream still labelled, with the mark inside", async () => {
  const r = await rig();
  try {
    const ph = r.ph("oth");
    const packed = gzipSync(`{"token":"${ph}"}`);
    const from = mark0();
    const a = await rawH1(r, [Buffer.from(`POST /ok/te HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n${packed.length.toString(16)}\r\n`), packed, Buffer.from("\r\n0\r\n\r\n")]);
    await delay(50);
    const st = statusOf(a);
    const got = seen.slice(from.seen);
    for (const s of got) {
      const labels = `${s.headers["content-encoding"] ?? ""} ${s.headers["transfer-encoding"] ?? ""}`;
      // If a request went, the upstream must not be told to gunzip it (then it would read the mark).
      assert.ok(!/gzip/i.test(labels) || !gunzipSync(s.body).toString().includes(ph), `status ${st}: the upstream got a gzip-labelled body with the mark (${labels})`);
    }
    assert.ok(!Buffer.concat(rawUp1.slice(from.raw)).toString("latin1").includes(ph), "the mark as is");
  } finally {
    await r.close();
  }
});

test("compressed body: the mark straddling two gzip members (and behind an empty member) is caught; no decodable byte of it goes", async () => {
  const failures: string[] = [];
  for (const proto of ["h1", "h2"] as const) {
    const r = await rig();
    try {
      const ph = r.ph("oth");
      const before = `{"pad":"${"b".repeat(300)}","token":"`;
      const half = Math.floor(ph.length / 2);
      const packed = Buffer.concat([gzipSync(before + ph.slice(0, half)), gzipSync(""), gzipSync(ph.slice(half) + `"}`)]);
      assert.ok(gunzipSync(packed).toString().includes(ph));
      const from = mark0();
      const cut = gzipSync(before + ph.slice(0, half)).length; // split at the member boundary
      let status: number;
      if (proto === "h1") {
        const a = await rawH1(r, [Buffer.from(`POST /ok/mm HTTP/1.1\r\nHost: ${HOST}\r\nContent-Encoding: gzip\r\nContent-Length: ${packed.length}\r\nConnection: close\r\n\r\n`), packed.subarray(0, cut), packed.subarray(cut)]);
        status = statusOf(a);
      } else status = await h2Send(r, H2HOST, port2, { "content-encoding": "gzip" }, [packed.subarray(0, cut), packed.subarray(cut)]);
      await delay(50);
      const got = Buffer.concat(arrived.slice(from.arrived));
      const readable = decodeAll("gzip", got);
      if (status !== 403 || readable.length > before.length || !(await r.revoked("oth"))) failures.push(`${proto}: status ${status}; the upstream can decode ${readable.length} bytes (mark starts at ${before.length})`);
    } finally {
      await r.close();
    }
  }
  assert.deepEqual(failures, [], failures.join("\n"));
});

test("compressed body: deflate with stored blocks split inside the mark, and a body bomb-ish stream, are stopped before the mark; the proxy then serves the next request", async () => {
  const r = await rig();
  try {
    const ph = r.ph("oth");
    const body = `x=${"c".repeat(100)}&t=${ph}&y=1`;
    const packed = deflateSync(body, { level: 0 }); // stored: the mark is verbatim in the compressed bytes
    const at = packed.indexOf(ph);
    assert.ok(at > 0);
    const from = mark0();
    const a = await rawH1(r, [Buffer.from(`POST /ok/df HTTP/1.1\r\nHost: ${HOST}\r\nContent-Encoding: deflate\r\nContent-Length: ${packed.length}\r\nConnection: close\r\n\r\n`), packed.subarray(0, at + 10), packed.subarray(at + 10)]);
    assert.equal(statusOf(a), 403, a.slice(0, 200));
    assertNoMarkBytes(Buffer.concat(arrived.slice(from.arrived)).toString("latin1"), ph, "deflate stored");
    assert.ok(!Buffer.concat(arrived.slice(from.arrived)).toString("latin1").includes(ph.slice(0, 10)), "not even the first 10 bytes");
    // The proxy still works.
    const ok = await rawH1(r, `GET /ok/after HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(ok), 200, ok.slice(0, 200));
  } finally {
    await r.close();
  }
});

// --- HTTP/2 pseudo-headers ------------------------------------------------------------------------------

test("HTTP/2: another host's placeholder as the :method is refused and never reaches the upstream (h2 and h1 upstreams)", async () => {
  const failures: string[] = [];
  for (const port of [port2, port1]) {
    const r = await rig();
    try {
      const ph = r.ph("tok"); // tok's lease covers api/h2, not OTHER
      const from = mark0();
      const status = await h2Send(r, OTHER, port, { ":method": ph, ":path": "/x" });
      await delay(80);
      const got = upstreamBytes(from);
      // Refused either way: 501 (a method outside node's list, as the HTTP/1.1 parser refuses it) or 403.
      if (got.includes(ph) || got.includes(ph.toUpperCase()) || (status !== 403 && status !== 501))
        failures.push(`upstream on ${port === port2 ? "h2" : "h1"}: status ${status}; placeholder reached upstream: ${got.includes(ph)} (upper-cased: ${got.includes(ph.toUpperCase())}); tok revoked: ${await r.revoked("tok")}; alarm: ${await r.alarmed()}`);
    } finally {
      await r.close();
    }
  }
  assert.deepEqual(failures, [], failures.join("\n"));
});

test("HTTP/2: the mark in a header with percent-encoding, base64, or split across two headers still trips the wire over h2", async () => {
  const r = await rig();
  try {
    const ph = r.ph("oth");
    const cases: http2.OutgoingHttpHeaders[] = [
      { "x-a": encodeURIComponent(encodeURIComponent(ph)) },
      { authorization: "Basic " + Buffer.from("u:" + ph).toString("base64") },
      { "x-a": ph.slice(0, 15), "x-b": ph.slice(15) },
      { cookie: [`a=${ph.slice(0, 15)}`, `b=${ph}`] as unknown as string },
    ];
    for (const h of cases) {
      const from = mark0();
      const st = await h2Send(r, H2HOST, port2, { ":method": "GET", ...h });
      assert.equal(st, 403, JSON.stringify(h));
      assert.equal(seen.length, from.seen, "nothing went upstream");
    }
  } finally {
    await r.close();
  }
});

test("HTTP/2: END_STREAM on an empty DATA frame after the body, and a body after headers with content-length 0 declared, are still watched", async () => {
  const r = await rig();
  try {
    const ph = r.ph("oth");
    const from = mark0();
    const st = await h2Send(r, H2HOST, port2, {}, [`a=${ph.slice(0, 10)}`, `${ph.slice(10)}&b`, ""]);
    assert.equal(st, 403);
    assertNoMarkBytes(Buffer.concat(arrived.slice(from.arrived)).toString("latin1"), ph, "split DATA");
    // GET and HEAD with a body on h2
    for (const method of ["GET", "HEAD"]) {
      const r2 = await rig();
      try {
        const from2 = mark0();
        const s2 = await h2Send(r2, H2HOST, port2, { ":method": method }, [`t=${r2.ph("oth")}`]);
        await delay(30);
        assert.equal(s2, 403, method);
        assertNoMarkBytes(Buffer.concat(arrived.slice(from2.arrived)).toString("latin1"), r2.ph("oth"), `h2 ${method} with a body`);
      } finally {
        await r2.close();
      }
    }
  } finally {
    await r.close();
  }
});

test("HTTP/2 trailers: the mark split across two trailer fields, or percent-encoded twice in one", async () => {
  const failures: string[] = [];
  for (const [name, tr] of [
    ["split across two trailers", (ph: string) => ({ "x-a": ph.slice(0, 15), "x-b": ph.slice(15) })],
    ["percent-encoded twice", (ph: string) => ({ "x-a": encodeURIComponent(encodeURIComponent(ph)) })],
  ] as const) {
    const r = await rig();
    try {
      const ph = r.ph("oth");
      const before = h2Trailers.length;
      const st = await h2Send(r, H2HOST, port2, { te: "trailers" }, ["clean body"], tr(ph));
      await delay(50);
      const got = JSON.stringify(h2Trailers.slice(before));
      if (st !== 403) failures.push(`${name}: status ${st}; trailers upstream: ${got.slice(0, 200)}`);
    } finally {
      await r.close();
    }
  }
  assert.deepEqual(failures, [], failures.join("\n"));
});

// --- HTTP/1.1 framing -----------------------------------------------------------------------------------

test("HTTP/1.1: Expect: 100-continue, then a body carrying the mark, is stopped before the mark", async () => {
  const r = await rig();
  try {
    const ph = r.ph("oth");
    const body = `{"a":"${"d".repeat(64)}","t":"${ph}"}`;
    const from = mark0();
    const s = await tunnel(r, HOST, port1);
    s.write(`POST /ok/ex HTTP/1.1\r\nHost: ${HOST}\r\nExpect: 100-continue\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`);
    await delay(150);
    s.write(body);
    const a = await readAll(s, 2500);
    assert.ok(allStatuses(a).includes(403), a.slice(0, 300));
    assertNoMarkBytes(Buffer.concat(arrived.slice(from.arrived)).toString("latin1"), ph, "expect-continue");
    assert.ok(await r.revoked("oth"));
  } finally {
    await r.close();
  }
});

test("HTTP/1.1: GET and HEAD with a body (Content-Length and chunked) carrying the mark are stopped", async () => {
  for (const method of ["GET", "HEAD"])
    for (const chunked of [false, true]) {
      const r = await rig();
      try {
        const ph = r.ph("oth");
        const body = `t=${ph}`;
        const from = mark0();
        const framing = chunked ? `Transfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n` : `Content-Length: ${body.length}\r\n\r\n${body}`;
        const a = await rawH1(r, `${method} /ok/gb HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n${framing}`);
        await delay(30);
        assert.equal(statusOf(a), 403, `${method} ${chunked}: ${a.slice(0, 200)}`);
        assertNoMarkBytes(upstreamBytes(from), ph, `${method} chunked=${chunked}`);
      } finally {
        await r.close();
      }
    }
});

test("HTTP/1.1: pipelined requests on one keep-alive connection; the second and third carry the mark (body, header): none of it reaches the upstream", async () => {
  const r = await rig();
  try {
    const ph = r.ph("oth");
    const b = `t=${ph}`;
    const from = mark0();
    const a = await rawH1(
      r,
      `GET /ok/p1 HTTP/1.1\r\nHost: ${HOST}\r\n\r\n` +
        `POST /ok/p2 HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: ${b.length}\r\n\r\n${b}` +
        `GET /ok/p3 HTTP/1.1\r\nHost: ${HOST}\r\nX-T: ${ph}\r\n\r\n` +
        `GET /ok/p4?x=${ph} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`,
    );
    await delay(50);
    assert.equal(allStatuses(a)[0], 200, a.slice(0, 300));
    assert.ok(allStatuses(a).includes(403), a.slice(0, 400));
    assertNoMarkBytes(upstreamBytes(from), ph, "pipelined");
  } finally {
    await r.close();
  }
});

test("HTTP/1.1 smuggling: body bytes framed as a second request carrying the mark (CL:0 + body, CL covering a request, bad chunk sizes) never carry it upstream", async () => {
  const r = await rig();
  try {
    const ph = r.ph("oth");
    const inner = `GET /ok/sm?x=${ph} HTTP/1.1\r\nHost: ${HOST}\r\nX-T: ${ph}\r\n\r\n`;
    const attacks = [
      `POST /ok/s1 HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: 0\r\n\r\n${inner}`,
      `POST /ok/s2 HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: ${inner.length}\r\n\r\n${inner}`,
      `POST /ok/s3 HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: chunked\r\n\r\n${inner.length.toString(16)}\r\n${inner}\r\n0\r\n\r\n`,
      `POST /ok/s4 HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000000000${(inner.length).toString(16)}\r\n${inner}\r\n0\r\n\r\n`,
      `POST /ok/s5 HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=${ph}\r\nz\r\n0\r\nX-Trailer: ${ph}\r\n\r\n`,
      `POST /ok/s6 HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello${inner}`,
      `POST /ok/s7 HTTP/1.0\r\nHost: ${HOST}\r\n\r\n${inner}`,
    ];
    for (const bytes of attacks) {
      const from = mark0();
      await rawH1(r, bytes, HOST, 1500);
      await delay(30);
      assertNoMarkBytes(upstreamBytes(from), ph, bytes.split("\r\n")[0]!);
    }
  } finally {
    await r.close();
  }
});

test("HTTP/1.1 headers: obs-fold, a mark spread over a folded value, 99 junk headers then the mark, ~15 KiB of headers then the mark", async () => {
  const r = await rig();
  try {
    const ph = r.ph("oth");
    const junk = (n: number): string => Array.from({ length: n }, (_, i) => `X-J${i}: ${"j".repeat(8)}\r\n`).join("");
    const attacks = [
      `GET /ok/f1 HTTP/1.1\r\nHost: ${HOST}\r\nX-A: ${ph.slice(0, 15)}\r\n ${ph.slice(15)}\r\nConnection: close\r\n\r\n`,
      `GET /ok/f2 HTTP/1.1\r\nHost: ${HOST}\r\nX-A: ${ph.slice(0, 15)}\r\n\t${ph.slice(15)}\r\nConnection: close\r\n\r\n`,
      `GET /ok/f3 HTTP/1.1\r\nHost: ${HOST}\r\n${junk(97)}X-T: ${ph}\r\nConnection: close\r\n\r\n`,
      `GET /ok/f4 HTTP/1.1\r\nHost: ${HOST}\r\nX-Big: ${"k".repeat(15_000)}\r\nX-T: ${ph}\r\nConnection: close\r\n\r\n`,
      `GET /ok/f5 HTTP/1.1\r\nHost: ${HOST}\r\nX-Big: ${"k".repeat(20_000)}\r\nX-T: ${ph}\r\nConnection: close\r\n\r\n`,
      `GET /ok/f6 HTTP/1.1\r\nHost: ${HOST}\r\n${junk(120)}X-T: ${ph}\r\nConnection: close\r\n\r\n`,
      `GET /ok/f7 HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close, X-T\r\nX-T: ${ph}\r\n\r\n`,
    ];
    for (const bytes of attacks) {
      const from = mark0();
      const a = await rawH1(r, bytes, HOST, 1500);
      await delay(30);
      const st = statusOf(a);
      const got = upstreamBytes(from);
      // A folded mark reaching the upstream would be one with whitespace inside: look for both halves.
      assert.ok(!(got.includes(ph.slice(0, 15)) && got.includes(ph.slice(15))), `${bytes.slice(0, 20)}: status ${st}, both halves of the mark reached the upstream`);
      assertNoMarkBytes(got, ph, `${bytes.slice(0, 20)} (status ${st})`);
    }
  } finally {
    await r.close();
  }
});

// --- WebSocket -------------------------------------------------------------------------------------------

function wsFrame(opcode: number, payload: Buffer, fin = true, rsv = 0): Buffer {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([(fin ? 0x80 : 0) | rsv | opcode, 0x80 | len]) : Buffer.from([(fin ? 0x80 : 0) | rsv | opcode, 0x80 | 126, len >> 8, len & 255]);
  const key = randomBytes(4);
  return Buffer.concat([head, key, Buffer.from(payload.map((b, i) => b ^ key[i & 3]!))]);
}
const handshake = (path = "/ok/ws"): string =>
  `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\nSec-WebSocket-Version: 13\r\n\r\n`;

/** Opens a WebSocket through the proxy, writes `parts` (the first right behind the handshake when `withHead`), returns what the client read. */
async function wsSend(r: Rig, parts: Buffer[], withHead: boolean): Promise<string> {
  const s = await tunnel(r, HOST, port1);
  if (withHead) s.write(Buffer.concat([Buffer.from(handshake()), parts[0]!]));
  else s.write(handshake());
  const out = readAll(s, 2000);
  await delay(200);
  for (const p of withHead ? parts.slice(1) : parts) {
    s.write(p);
    await delay(40);
  }
  return out;
}

test("WebSocket: frames right behind the handshake (same write), a mark split across fragments with pings and pongs interleaved, and RSV1 set, never pass the mark", async () => {
  const failures: string[] = [];
  const cases: [string, (ph: string) => Buffer[], boolean][] = [
    ["whole frame in the handshake's packet", (ph) => [wsFrame(1, Buffer.from(`t=${ph}`))], true],
    ["split across fragments, ping and pong between", (ph) => [wsFrame(1, Buffer.from(`t=${ph.slice(0, 9)}`), false), wsFrame(9, Buffer.from("p")), wsFrame(0, Buffer.from(ph.slice(9, 20)), false), wsFrame(10, Buffer.from("q")), wsFrame(0, Buffer.from(ph.slice(20)), true)], false],
    ["one byte per fragment", (ph) => [...Buffer.from(ph)].map((b, i, all) => wsFrame(i === 0 ? 2 : 0, Buffer.from([b]), i === all.length - 1)), false],
    ["RSV1 set (claims permessage-deflate)", (ph) => [wsFrame(1, Buffer.from(`t=${ph}`), true, 0x40)], false],
    ["in a close frame's reason", (ph) => [wsFrame(8, Buffer.concat([Buffer.from([3, 232]), Buffer.from(ph)]))], false],
  ];
  for (const [name, make, withHead] of cases) {
    const r = await rig();
    try {
      const ph = r.ph("oth");
      const before = wsPayloads.length;
      await wsSend(r, make(ph), withHead);
      await delay(50);
      const got = wsPayloads.slice(before);
      const text = got.map((f) => f.payload.toString("latin1")).join("");
      if (text.includes(ph) || got.some((f) => f.payload.toString("latin1").includes(ph.slice(0, 12)))) failures.push(`${name}: the upstream got the mark (${got.length} frames)`);
      for (let i = 0; i + 12 <= ph.length; i++) if (text.includes(ph.slice(i, i + 12))) { failures.push(`${name}: 12 bytes of the mark at ${i} went`); break; }
    } finally {
      await r.close();
    }
  }
  assert.deepEqual(failures, [], failures.join("\n"));
});

// --- encoded forms near the documented ones -----------------------------------------------------------

// --- refusals must not crash or wedge the proxy ----------------------------------------------------------

test("refusals (tripwire, 415, 400 undecodable, 400 trailing bytes) on h1 and h2 leave the proxy serving: a later request on the same h2 session and on a fresh tunnel succeeds", async () => {
  const r = await rig();
  try {
    const ph = r.ph("oth");
    const gz = gzipSync("hello");
    const h1Cases: [string, (string | Buffer)[], number][] = [
      ["415 zstd", [`POST /ok/r1 HTTP/1.1\r\nHost: ${HOST}\r\nContent-Encoding: zstd\r\nContent-Length: 5\r\n\r\nhello`], 415],
      ["400 not gzip", [`POST /ok/r2 HTTP/1.1\r\nHost: ${HOST}\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello`], 400],
      ["400 trailing", [Buffer.from(`POST /ok/r3 HTTP/1.1\r\nHost: ${HOST}\r\nContent-Encoding: gzip\r\nContent-Length: ${gz.length + 4}\r\n\r\n`), Buffer.concat([gz, Buffer.from("junk")])], 400],
      ["400 truncated, chunked", [Buffer.from(`POST /ok/r4 HTTP/1.1\r\nHost: ${HOST}\r\nContent-Encoding: br\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\x8b\x02\x80\r\n0\r\n\r\n`)], 400],
    ];
    for (const [name, parts, want] of h1Cases) {
      const a = await rawH1(r, parts, HOST, 1500);
      assert.equal(statusOf(a), want, `${name}: ${a.slice(0, 200)}`);
      const ok = await rawH1(r, `GET /ok/after HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`, HOST, 1500);
      assert.equal(statusOf(ok), 200, `after ${name}: ${ok.slice(0, 200)}`);
    }
    // h2: one session, a tripwire stream then a clean one.
    const s = await tunnel(r, H2HOST, port2, "h2");
    const session = http2.connect(`https://${H2HOST}`, { createConnection: () => s });
    session.on("error", () => {});
    try {
      const one = (headers: http2.OutgoingHttpHeaders, body?: string): Promise<number> =>
        new Promise((resolve) => {
          const req = session.request({ ":method": "POST", ":path": "/ok/t", ...headers }, { endStream: body === undefined });
          let st = 0;
          req.on("response", (h) => (st = Number(h[":status"])));
          req.on("data", () => {});
          req.on("close", () => resolve(st));
          req.on("error", () => resolve(st));
          if (body !== undefined) req.end(body);
        });
      assert.equal(await one({}, `t=${ph}`), 403);
      assert.equal(await one({ "content-encoding": "gzip" }, "not gzip"), 400);
      assert.equal(await one({ "content-encoding": "zstd" }, "x"), 415);
      assert.equal(await one({ ":method": "GET" }), 200, "the session still serves");
    } finally {
      session.destroy();
    }
    const ok = await rawH1(r, `GET /ok/final HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`, HOST, 1500);
    assert.equal(statusOf(ok), 200);
  } finally {
    await r.close();
  }
});

// --- raw HTTP/2: a content-encoding header field sent twice ------------------------------------------

/** One HTTP/2 frame. */
function h2Frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
}
/** An HPACK header block of literal fields without indexing (no Huffman), names and values under 127 bytes. */
function hpack(fields: [string, string][]): Buffer {
  return Buffer.concat(fields.map(([k, v]) => Buffer.concat([Buffer.from([0x00, k.length]), Buffer.from(k), Buffer.from([v.length]), Buffer.from(v)])));
}

test("HTTP/2 raw frames: content-encoding sent twice (identity then gzip, gzip then identity) never gets a gzip-labelled body with the mark past the proxy", async () => {
  const failures: string[] = [];
  for (const order of [["identity", "gzip"], ["gzip", "identity"], ["gzip", "gzip"]]) {
    const r = await rig();
    try {
      const ph = r.ph("oth");
      const packed = gzipSync(`{"t":"${ph}"}`);
      const from = mark0();
      const s = await tunnel(r, H2HOST, port2, "h2");
      s.on("error", () => {});
      const head = hpack([[":method", "POST"], [":scheme", "https"], [":authority", H2HOST], [":path", "/ok/t"], ...order.map((c) => ["content-encoding", c] as [string, string])]);
      s.write(Buffer.concat([Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), h2Frame(4, 0, 0, Buffer.alloc(0)), h2Frame(1, 0x4, 1, head), h2Frame(0, 0x1, 1, packed)]));
      const answer = await readAll(s, 1200);
      const got = seen.slice(from.seen);
      for (const g of got) {
        const label = String(g.headers["content-encoding"] ?? "");
        let decoded = "";
        try {
          decoded = gunzipSync(g.body).toString();
        } catch {
          /* not gzip */
        }
        if (/gzip/.test(label) && decoded.includes(ph)) failures.push(`${order.join(" + ")}: the upstream got content-encoding "${label}" and a gzip body with the mark`);
      }
      const readable = decodeAll("gzip", Buffer.concat(arrived.slice(from.arrived)));
      if (readable.includes(ph) && got.some((g) => /gzip/.test(String(g.headers["content-encoding"] ?? "")))) failures.push(`${order.join(" + ")}: decodable mark upstream`);
    } finally {
      await r.close();
    }
  }
  assert.deepEqual(failures, [], failures.join("\n"));
});
