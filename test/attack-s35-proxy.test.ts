/**
 * Session 35 red team of the injecting proxy (src/proxy): a hostile agent inside `lessor run`.
 *
 * Rig: ForwardProxy over LeaseEgress over a real vault (SQLite file), the SSRF guard with a table
 * resolver and the instrumented loopback-only connect step; a loopback TLS HTTP/1.1 upstream this file
 * starts. Nothing leaves 127.0.0.1.
 */
import { randomBytes } from "node:crypto";
import * as http2 from "node:http2";
import * as https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import type * as tls from "node:tls";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type InjectionRule, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";
import { connectTunnel, inTime, loopbackOnly, openTunnel, tableResolver, tlsIn } from "./proxy-harness.js";

const H1 = "h1.s35.test.example"; // the HTTP/1.1 upstream, covered by credential "a"
const AWAY = "away.s35.test.example"; // covered by credential "b" only: b's marks are watched on H1
const CANARY_A = "ghp_" + randomBytes(18).toString("hex");
const CANARY_B = "sk-" + randomBytes(18).toString("hex");

const upCa = LocalCa.create({ permitted: [H1, AWAY] });
/** Bytes of request bodies the upstream received, per path. */
const received = new Map<string, number>();
const h1up = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  const path = req.url!;
  req.on("error", () => {});
  res.on("error", () => {});
  let n = 0;
  req.on("data", (d: Buffer) => {
    n += d.length;
    received.set(path, n);
  });
  req.on("end", () => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`ok ${path} bytes=${n}`);
  });
});
await new Promise<void>((r) => h1up.listen(0, "127.0.0.1", r));
const h1port = (h1up.address() as AddressInfo).port;
const upSockets = new Set<Socket>();
h1up.on("secureConnection", (s: Socket) => {
  upSockets.add(s);
  s.once("close", () => upSockets.delete(s));
});

interface CredSpec {
  name: string;
  value: string;
  rule: InjectionRule;
  domains: string[];
  extra?: string;
}
interface Rig {
  port: number;
  ph: Record<string, string>;
  connects: ConnectTo[];
  close(): Promise<void>;
}
const rigs: Rig[] = [];
after(async () => {
  for (const r of rigs) await r.close().catch(() => {});
  for (const s of upSockets) s.destroy();
  h1up.closeAllConnections();
  await inTime(new Promise<void>((r) => h1up.close(() => r())), 5000, "closing the upstream").catch(() => {});
});

async function rig(specs: CredSpec[]): Promise<Rig> {
  const policy = specs.map((c) => grant(c.name, ["bot"], [c.name], c.domains, c.extra ?? "")).join("");
  const { vault } = await makeVault({ policy });
  const admin = vault.admin();
  const creds: ProxyCredential[] = [];
  const ph: Record<string, string> = {};
  for (const c of specs) {
    await admin.storeSecret({ name: c.name, value: c.value });
    const lease = await admin.requestLease({ agent: "bot", secret: c.name, domains: c.domains });
    ph[c.name] = makePlaceholder(c.value);
    creds.push({ lease, secret: `global/${c.name}`, placeholder: ph[c.name]!, value: c.value, rule: c.rule });
  }
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: () => {} });
  const guard = new SsrfGuard({ ports: [h1port], allow: ["127.0.0.0/8"], resolve: tableResolver({ [H1]: "127.0.0.1", [AWAY]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const ca = LocalCa.create({ permitted: [H1, AWAY] });
  const proxy = new ForwardProxy({ egress, ca, guard, upstreamCa: upCa.certPem, connect: loopbackOnly(connects) });
  const port = await proxy.listen();
  egress.start();
  let closed = false;
  const r: Rig = {
    port,
    ph,
    connects,
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

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Writes `data` on `s`, waiting for 'drain' when asked to. */
function write(s: { write(b: Buffer | string, cb?: () => void): boolean; once(e: "drain", f: () => void): unknown }, data: Buffer | string): Promise<void> {
  return new Promise((resolve) => {
    if (s.write(data)) resolve();
    else s.once("drain", resolve);
  });
}

// A zlib (Content-Encoding: deflate) stream: its header, a stored block whose two bytes "x%" end with
// the first byte of a watched mark (another host's placeholder, every byte percent-encoded), then
// empty stored blocks: five compressed bytes each, decoding to nothing.
const ZLIB_HEAD = Buffer.from([0x78, 0x01]);
const FIRST_BLOCK = Buffer.from([0x00, 0x02, 0x00, 0xfd, 0xff, 0x78, 0x25]);
const EMPTY_BLOCK = Buffer.from([0x00, 0x00, 0x00, 0xff, 0xff]);

test("memory: a deflate body under the tripwire whose decoded bytes end in a mark's first byte, then hundreds of MiB of empty stored blocks, is not held whole by the proxy", { timeout: 60_000 }, async () => {
  const r = await rig([
    { name: "a", value: CANARY_A, rule: { mode: "placeholder" }, domains: [H1] },
    { name: "b", value: CANARY_B, rule: { mode: "placeholder" }, domains: [AWAY] },
  ]);
  const s = await openTunnel(r.port, H1, h1port);
  s.on("error", () => {});
  let answer = "";
  s.on("data", (d: Buffer) => (answer += d.toString("latin1")));
  await write(s, `POST /up HTTP/1.1\r\nHost: ${H1}\r\nAuthorization: Bearer ${r.ph.a}\r\nContent-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n`);
  const chunk = (b: Buffer): Buffer => Buffer.concat([Buffer.from(b.length.toString(16) + "\r\n"), b, Buffer.from("\r\n")]);
  await write(s, chunk(Buffer.concat([ZLIB_HEAD, FIRST_BLOCK])));
  const piece = chunk(Buffer.concat(Array.from({ length: (256 * 1024) / EMPTY_BLOCK.length }, () => EMPTY_BLOCK)));
  global.gc?.();
  const before = process.memoryUsage().arrayBuffers;
  const TOTAL = 320 * 1024 * 1024;
  let peak = 0;
  let sent = 0;
  for (; sent < TOTAL && answer === "" && !s.destroyed; sent += piece.length) {
    // A proxy that stops reading (it refused the body) is not waited for past its answer.
    if ((await Promise.race([write(s, piece).then(() => "ok"), delay(3000).then(() => "stalled")])) === "stalled") break;
    if ((sent / piece.length) % 64 === 0) peak = Math.max(peak, process.memoryUsage().arrayBuffers - before);
  }
  await delay(300);
  peak = Math.max(peak, process.memoryUsage().arrayBuffers - before);
  const upstreamGot = received.get("/up") ?? 0;
  s.destroy();
  console.log(`sent ${sent >> 20} MiB of compressed body; the upstream got ${upstreamGot} bytes; the proxy's buffers grew by ${(peak / 2 ** 20).toFixed(0)} MiB; answer so far: ${JSON.stringify(answer.slice(0, 60))}`);
  assert.ok(peak < 64 * 1024 * 1024, `the proxy held ${(peak / 2 ** 20).toFixed(0)} MiB of one request's body (it passed ${upstreamGot} bytes upstream)`);
  // Refused (413), and the upstream never had the decoded "x%".
  assert.match(answer, /^HTTP\/1\.1 413 /);
  assert.match(answer, /request_encoding/);
  assert.equal(upstreamGot, 0);
});

test("memory: the same deflate body over HTTP/2 (DATA frames) is refused once 1 MiB of it decodes to nothing; the proxy does not hold it whole", { timeout: 60_000 }, async () => {
  const r = await rig([
    { name: "a", value: CANARY_A, rule: { mode: "placeholder" }, domains: [H1] },
    { name: "b", value: CANARY_B, rule: { mode: "placeholder" }, domains: [AWAY] },
  ]);
  const raw = await connectTunnel(r.port, H1, h1port);
  const tlsSock: tls.TLSSocket = await tlsIn(raw, H1, "h2");
  const session = http2.connect(`https://${H1}`, { createConnection: () => tlsSock });
  session.on("error", () => {});
  const st = session.request({ ":method": "POST", ":path": "/up2", authorization: `Bearer ${r.ph.a}`, "content-encoding": "deflate" }, { endStream: false });
  st.on("error", () => {});
  let status = 0;
  let body = "";
  st.on("response", (h) => (status = Number(h[":status"])));
  st.on("data", (d: Buffer) => (body += d.toString()));
  await write(st, Buffer.concat([ZLIB_HEAD, FIRST_BLOCK]));
  const piece = Buffer.concat(Array.from({ length: (256 * 1024) / EMPTY_BLOCK.length }, () => EMPTY_BLOCK));
  global.gc?.();
  const before = process.memoryUsage().arrayBuffers;
  let peak = 0;
  let sent = 0;
  for (; sent < 320 * 1024 * 1024 && status === 0 && !st.closed; sent += piece.length) {
    if ((await Promise.race([write(st, piece).then(() => "ok"), delay(3000).then(() => "stalled")])) === "stalled") break;
    if ((sent / piece.length) % 64 === 0) peak = Math.max(peak, process.memoryUsage().arrayBuffers - before);
  }
  await delay(300);
  peak = Math.max(peak, process.memoryUsage().arrayBuffers - before);
  const upstreamGot = received.get("/up2") ?? 0;
  session.destroy();
  raw.destroy();
  console.log(`h2: sent ${sent >> 20} MiB; the upstream got ${upstreamGot} bytes; the proxy's buffers grew by ${(peak / 2 ** 20).toFixed(0)} MiB; status ${status}`);
  assert.ok(peak < 64 * 1024 * 1024, `the proxy held ${(peak / 2 ** 20).toFixed(0)} MiB of one stream's body`);
  assert.equal(status, 413);
  assert.match(body, /request_encoding/);
  assert.equal(upstreamGot, 0);
});
