/**
 * A review of the injecting proxy (2026-12-07) found two ways past its promises:
 * - A framing header spelled with `_` (`Transfer_Encoding: chunked` beside `Content-Length`) went
 *   upstream as it was. Node frames by the exact names; servers that read `_` as `-` (unicorn; Puma
 *   before 6.4.3) framed the body as chunked, and its rest became a second request (`DELETE
 *   /admin/repo`) that swallowed the next request's head, with the credential injected for it: past
 *   the grant's methods and paths. Such spellings of framing and hop-by-hop headers are dropped now
 *   (src/proxy/headers.ts, endToEnd), from HTTP/1.1 and HTTP/2 clients alike.
 * - An answer still streaming when the secret was rotated under the run (an event feed, a long poll)
 *   kept the masking patterns of before: the new value, written into it by the upstream, reached the
 *   agent unmasked. Now a rotation closes the connections with answers on their way; idle ones go on
 *   (src/proxy/lease-egress.ts).
 * Each upstream here records what it receives; all traffic is on loopback.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import type { ServerResponse } from "node:http";
import * as http2 from "node:http2";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { after, test } from "node:test";
import * as tls from "node:tls";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";
import { loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";

/**
 * lessor run's injecting proxy (LeaseEgress over an in-process vault) for agent "bot", lending secret
 * `tok` (its value `value`) for `host` under a rule with `extra` terms, to the upstream on `upPort`.
 */
async function leasedProxy(o: { host: string; value: string; upPort: number; upCa: LocalCa; extra?: string }) {
  const { vault } = await makeVault({ policy: grant("api", ["bot"], ["tok"], [o.host], o.extra ?? "") });
  const admin = vault.admin();
  await admin.storeSecret({ name: "tok", value: o.value });
  const lease = await admin.requestLease({ agent: "bot", secret: "tok", domains: [o.host] });
  const ph = makePlaceholder(o.value);
  const creds: ProxyCredential[] = [{ lease, secret: "global/tok", placeholder: ph, value: o.value, rule: { mode: "placeholder" } }];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict" });
  egress.start();
  const guard = new SsrfGuard({ ports: [o.upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [o.host]: "127.0.0.1" }) });
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [o.host] }), guard, upstreamCa: o.upCa.certPem, connect: loopbackOnly() });
  const port = await proxy.listen();
  return {
    port,
    ph,
    admin,
    close: async (): Promise<void> => {
      await proxy.close();
      await egress.close();
      await vault.close();
    },
  };
}

// --- framing headers spelled with "_" ---------------------------------------------------------------

const HOST = "api.us.example";
const TOK = "ghp_" + "USCOREcanary0123456789abcdefghijklmnop";

interface Seen { method: string; url: string; auth: string }
const seen: Seen[] = [];
const upCa = LocalCa.create({ permitted: [HOST] });

/** A small HTTP/1.1 server with unicorn's rules: header names upper-cased with `-` and `_` alike, chunked over Content-Length. */
const up = tls.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (s) => {
  s.on("error", () => {});
  let buf = Buffer.alloc(0);
  s.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = buf.subarray(0, end).toString("latin1").split("\r\n");
      const [method, url] = head[0]!.split(" ");
      const h = new Map<string, string>();
      for (const line of head.slice(1)) {
        const i = line.indexOf(":");
        const name = line.slice(0, i).toUpperCase().replace(/-/g, "_"); // unicorn: snake_upcase_char
        h.set(name, (h.has(name) ? h.get(name) + "," : "") + line.slice(i + 1).trim());
      }
      let rest = buf.subarray(end + 4);
      if (/chunked/i.test(h.get("TRANSFER_ENCODING") ?? "")) {
        // chunked wins over Content-Length; read chunks to the 0 chunk
        let p = 0;
        for (;;) {
          const le = rest.indexOf("\r\n", p);
          if (le < 0) return; // wait for more
          const n = parseInt(rest.subarray(p, le).toString("latin1"), 16);
          if (n === 0) {
            if (rest.length < le + 4) return;
            rest = rest.subarray(le + 4);
            break;
          }
          if (rest.length < le + 2 + n + 2) return;
          p = le + 2 + n + 2;
        }
      } else {
        const n = Number(h.get("CONTENT_LENGTH") ?? 0);
        if (rest.length < n) return;
        rest = rest.subarray(n);
      }
      buf = rest;
      seen.push({ method: method!, url: url!, auth: h.get("AUTHORIZATION") ?? "" });
      s.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    }
  });
});
await new Promise<void>((r) => up.listen(0, "127.0.0.1", r));
const upPort = (up.address() as AddressInfo).port;
after(() => new Promise<void>((r) => up.close(() => r())));

const rig = (): ReturnType<typeof leasedProxy> => leasedProxy({ host: HOST, value: TOK, upPort, upCa, extra: 'paths = ["/ok/"]\nmethods = ["GET"]' });

const SMUGGLED = "0\r\n\r\nDELETE /admin/repo HTTP/1.1\r\nX-Swallow: ";

test("attack: Transfer_Encoding (with an underscore) beside Content-Length over HTTP/1.1: dropped, so an upstream that reads _ as - sees no smuggled request and the credential goes only with the granted GET", async () => {
  seen.length = 0;
  const r = await rig();
  try {
    const s = await openTunnel(r.port, HOST, upPort);
    s.write(`GET /ok/first HTTP/1.1\r\nHost: ${HOST}\r\nTransfer_Encoding: chunked\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`);
    await new Promise((res) => setTimeout(res, 300));
    s.write(`GET /ok/second HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\nConnection: close\r\n\r\n`);
    const answer = await readAll(s, 3000);
    assert.equal(seen.find((x) => x.method === "DELETE"), undefined, `the upstream ran a smuggled request: ${JSON.stringify(seen)}`);
    assert.deepEqual(
      seen.map((x) => `${x.method} ${x.url}`),
      ["GET /ok/first", "GET /ok/second"],
      "both granted requests went, framed by their length",
    );
    assert.equal(seen[1]!.auth, `Bearer ${TOK}`, "the credential went with the granted request");
    assert.equal(seen[0]!.auth, "");
    assert.ok(!answer.includes(TOK));
  } finally {
    await r.close();
  }
});

test("attack: transfer_encoding (with an underscore) from an HTTP/2 client to an HTTP/1.1 upstream: dropped the same way", async () => {
  seen.length = 0;
  const r = await rig();
  try {
    const s = await openTunnel(r.port, HOST, upPort, { alpn: "h2" });
    const session = http2.connect(`https://${HOST}`, { createConnection: () => s });
    session.on("error", () => {});
    const one = (headers: http2.OutgoingHttpHeaders, body?: string) =>
      new Promise<number>((resolve, reject) => {
        const req = session.request(headers, { endStream: body === undefined });
        let st = 0;
        req.on("response", (h) => (st = Number(h[":status"])));
        req.on("data", () => {});
        req.on("end", () => resolve(st));
        req.on("error", reject);
        if (body !== undefined) req.end(body);
      });
    const a = await one({ ":method": "GET", ":path": "/ok/first", transfer_encoding: "chunked", "content-length": String(SMUGGLED.length) }, SMUGGLED);
    const b = await one({ ":method": "GET", ":path": "/ok/second", authorization: `Bearer ${r.ph}` });
    session.destroy();
    assert.equal(seen.find((x) => x.method === "DELETE"), undefined, `the upstream ran a smuggled request: ${JSON.stringify(seen)}`);
    assert.deepEqual([a, b], [200, 200]);
    assert.deepEqual(
      seen.map((x) => `${x.method} ${x.url} ${x.auth}`),
      ["GET /ok/first ", `GET /ok/second Bearer ${TOK}`],
    );
  } finally {
    await r.close();
  }
});

// --- a rotation while an answer streams ------------------------------------------------------------

const ROT_HOST = "api.rot.example";
const ROT_TOK = "ghp_" + "ROTcanary0123456789abcdefghijklmnopqrs";
const rotCa = LocalCa.create({ permitted: [ROT_HOST] });

/** /events: an event stream that stays open; every other request's X-Token is written into it (an upstream's request log feed). */
let feed: ServerResponse | null = null;
/** The X-Token of every request other than /events, as the upstream received it. */
const tokens: string[] = [];
const rotUp = https.createServer({ SNICallback: rotCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  req.resume();
  if (req.url === "/events") {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write(`data: hello ${String(req.headers["x-token"])}\n\n`);
    feed = res;
    return;
  }
  tokens.push(String(req.headers["x-token"]));
  feed?.write(`data: request with token ${String(req.headers["x-token"])}\n\n`);
  res.writeHead(200, { "content-type": "text/plain", "content-length": "2" });
  res.end("ok");
});
await new Promise<void>((r) => rotUp.listen(0, "127.0.0.1", r));
const rotPort = (rotUp.address() as AddressInfo).port;
after(async () => {
  feed?.end();
  rotUp.closeAllConnections();
  await new Promise<void>((r) => rotUp.close(() => r()));
});

/** `s` with HTTP/1.1 chunk framing (`\r\n<hex>\r\n`) taken out, so a value split across chunks reads whole. */
const unchunk = (s: string): string => s.replace(/\r\n[0-9a-f]+\r\n/gi, "");

/** Reads one HTTP/1.1 answer with a Content-Length from `s`, leaving the connection open. */
function oneAnswer(s: tls.TLSSocket): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = "";
    const onData = (d: Buffer): void => {
      buf += d.toString("latin1");
      const end = buf.indexOf("\r\n\r\n");
      const len = /content-length: *(\d+)/i.exec(buf.slice(0, end));
      if (end >= 0 && len && buf.length >= end + 4 + Number(len[1])) {
        s.off("data", onData);
        resolve(buf);
      }
    };
    s.on("data", onData);
    s.once("error", reject);
  });
}

test("attack: the secret rotated while an answer streams (an event feed): that connection is closed before the new value is injected, so the upstream's echo of it never reaches the agent; an idle connection goes on", async () => {
  const { port, ph, admin, close } = await leasedProxy({ host: ROT_HOST, value: ROT_TOK, upPort: rotPort, upCa: rotCa });
  try {
    // An idle keep-alive connection: one request answered before the rotation.
    const idle = await openTunnel(port, ROT_HOST, rotPort);
    idle.write(`GET /before HTTP/1.1\r\nHost: ${ROT_HOST}\r\nX-Token: ${ph}\r\n\r\n`);
    assert.match(await oneAnswer(idle), /^HTTP\/1\.1 200/);
    // The agent opens the event stream (the old value is injected, and masked in what comes back).
    const stream = await openTunnel(port, ROT_HOST, rotPort);
    stream.write(`GET /events HTTP/1.1\r\nHost: ${ROT_HOST}\r\nX-Token: ${ph}\r\n\r\n`);
    // Its first event has come back (the answer is on its way) before the rotation: the whole event,
    // not only the answer's head or the event's start (under load the rotation closed the connection
    // while the scrubber still held the placeholder back as a possible secret's start).
    let shown = "";
    const first = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the first event never came through the proxy: ${JSON.stringify(shown)}`)), 5000);
      const onData = (d: Buffer): void => {
        shown += d.toString("latin1");
        const body = unchunk(shown); // the placeholder may be split across chunks (the scrubber holds a tail back)
        if (!body.includes("data: hello ") || !body.includes(ph)) return;
        clearTimeout(timer);
        stream.off("data", onData);
        resolve();
      };
      stream.on("data", onData);
    });
    const got = readAll(stream, 5000);
    await first;
    // The owner rotates the secret under the run.
    const fresh = "ghp_" + randomBytes(18).toString("hex").slice(0, 36);
    await admin.rotateSecret({ scope: "global", name: "tok" }, fresh);
    // Another request: the proxy injects the new value; the upstream writes it into the feed.
    const t0 = performance.now();
    const other = await openTunnel(port, ROT_HOST, rotPort);
    other.write(`GET /ping HTTP/1.1\r\nHost: ${ROT_HOST}\r\nX-Token: ${ph}\r\nConnection: close\r\n\r\n`);
    const pong = await readAll(other, 3000);
    assert.match(pong, /^HTTP\/1\.1 200/);
    const text = unchunk(await got);
    assert.ok(text.includes("data: hello ") && text.includes(ph), "the stream carried its answer, masked, before the rotation");
    assert.ok(!text.includes(ROT_TOK), "the old value never reached the agent");
    assert.ok(!text.includes(fresh), "the new value, echoed into a stream opened before the rotation, never reached the agent");
    assert.ok(!text.includes("request with token"), "nothing written into the feed after the rotation reached the agent");
    assert.ok(performance.now() - t0 < 4000, "the stream's connection was closed, not left to time out");
    // The idle connection was not closed: its next request goes, with the new value, masked in its answer.
    idle.write(`GET /after HTTP/1.1\r\nHost: ${ROT_HOST}\r\nX-Token: ${ph}\r\nConnection: close\r\n\r\n`);
    const later = await readAll(idle, 3000);
    assert.match(later, /^HTTP\/1\.1 200/);
    assert.deepEqual(tokens, [ROT_TOK, fresh, fresh], "the upstream got the old value before the rotation and the new one after");
  } finally {
    await close();
  }
});
