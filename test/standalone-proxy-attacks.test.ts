/**
 * `lessor proxy` (the injecting proxy on its own, for an agent in a VM or a container) attacked by a
 * client that does not hold the session's proxy token, and by one that does but misbehaves.
 *
 * Two rigs:
 * - in process: ForwardProxy wired as src/cli/run/proxy.ts wires it for `lessor proxy` (LeaseEgress over
 *   a real vault, basicProxyAuth(token), the SSRF guard), with a table resolver and the instrumented
 *   `loopbackOnly` connect step, so that nothing but 127.0.0.1 is ever reached;
 * - the built CLI `lessor proxy` as a child process, its names resolved by `[proxy] hosts` to
 *   127.0.0.1 and `[proxy] allow` opening 127.0.0.1 only.
 *
 * Traffic goes to loopback servers and Unix sockets this file creates, nowhere else.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, chmodSync, existsSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import type { IncomingHttpHeaders } from "node:http";
import { connect as netConnect, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import * as tls from "node:tls";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { basicProxyAuth, newProxyToken } from "../src/proxy/proxy-auth.js";
import { bindPrivateSocket } from "../src/cli/run/proxy-listen.js";
import { openVault } from "../src/config/open-vault.js";
import { dechunked, grant, makeVault } from "./helpers.js";
import { loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";
import { cliHome, envOf, liveLeases, seedHome, startCli, type RunningCli } from "./cli-harness.js";

const HOST = "api.sap.example"; // HTTPS upstream, covered by the lease
const PLAIN = "plain.sap.example"; // plain-HTTP upstream, covered by nothing (open egress only)
const OTHER = "other.sap.example"; // HTTPS upstream covered by nothing
const CANARY = "ghp_" + randomBytes(18).toString("hex"); // shaped like a GitHub token

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const b64 = (s: string): string => Buffer.from(s).toString("base64");
const basic = (user: string, pass: string): string => "Basic " + b64(`${user}:${pass}`);

// --- upstreams on 127.0.0.1 that record what reaches them ---------------------------------------

interface Seen {
  url: string;
  headers: IncomingHttpHeaders;
}
const seenTls: Seen[] = [];
const seenPlain: Seen[] = [];

const upCa = LocalCa.create({ permitted: [HOST, OTHER] });
const upTls = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  seenTls.push({ url: req.url!, headers: req.headers });
  req.resume();
  req.on("end", () => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`you sent: ${String(req.headers.authorization ?? "")} ${String(req.headers["proxy-authorization"] ?? "")}\n`);
  });
});
const upPlain = http.createServer((req, res) => {
  seenPlain.push({ url: req.url!, headers: req.headers });
  req.resume();
  req.on("end", () => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`plain ok ${String(req.headers["proxy-authorization"] ?? "")}\n`);
  });
});
await new Promise<void>((r) => upTls.listen(0, "127.0.0.1", r));
await new Promise<void>((r) => upPlain.listen(0, "127.0.0.1", r));
const tlsPort = (upTls.address() as AddressInfo).port;
const plainPort = (upPlain.address() as AddressInfo).port;

after(async () => {
  upTls.closeAllConnections();
  upPlain.closeAllConnections();
  await new Promise<void>((r) => upTls.close(() => r()));
  await new Promise<void>((r) => upPlain.close(() => r()));
});

// --- the in-process rig: ForwardProxy as lessor proxy wires it ------------------------------------

const POLICY = grant("gh", ["bot"], ["github-token"], [HOST], 'paths = ["/ok/"]');

interface Rig {
  port: number;
  token: string;
  placeholder: string;
  proxy: ForwardProxy;
  connects: ConnectTo[];
  warns: string[];
  audit(): Promise<string>;
  proxyRequests(): Promise<{ status?: number; outcome?: string; path?: string; host?: string }[]>;
  connections(): Promise<number>;
  close(): Promise<void>;
}

async function rig(o: { egress?: "strict" | "open"; headersTimeoutMs?: number; idleTimeoutMs?: number; socket?: string } = {}): Promise<Rig> {
  const { vault } = await makeVault({ policy: POLICY });
  const admin = vault.admin();
  await admin.storeSecret({ name: "github-token", value: CANARY });
  const lease = await admin.requestLease({ agent: "bot", secret: "github-token", domains: [HOST] });
  const creds: ProxyCredential[] = [{ lease, secret: "global/github-token", placeholder: makePlaceholder(CANARY), value: CANARY, rule: { mode: "placeholder" } }];
  const warns: string[] = [];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: o.egress ?? "strict", warn: (l) => warns.push(l) });
  const guard = new SsrfGuard({ ports: [tlsPort, plainPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1", [PLAIN]: "127.0.0.1", [OTHER]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const token = newProxyToken();
  const proxy = new ForwardProxy({
    egress,
    ca: LocalCa.create({ permitted: [HOST] }),
    guard,
    upstreamCa: upCa.certPem,
    connect: loopbackOnly(connects),
    authorize: basicProxyAuth(token),
    ...(o.headersTimeoutMs !== undefined ? { headersTimeoutMs: o.headersTimeoutMs } : {}),
    ...(o.idleTimeoutMs !== undefined ? { idleTimeoutMs: o.idleTimeoutMs } : {}),
  });
  let port = 0;
  let removeSocket = (): void => {};
  if (o.socket !== undefined) removeSocket = (await bindPrivateSocket(proxy.server, o.socket)).remove;
  else port = await proxy.listen();
  egress.start();
  return {
    port,
    token,
    placeholder: creds[0]!.placeholder,
    proxy,
    connects,
    warns,
    audit: async () => JSON.stringify(await admin.auditQuery({ limit: 10_000 })),
    proxyRequests: async () => {
      await egress.close().catch(() => {}); // flushes the batched reports
      return (await admin.auditQuery({ types: ["proxy_request"], limit: 10_000 })).map((e) => JSON.parse(e.detail ?? "{}"));
    },
    connections: () => new Promise<number>((r) => proxy.server.getConnections((_e, n) => r(n))),
    close: async () => {
      await proxy.close();
      removeSocket();
      await egress.close();
    },
  };
}

// --- raw clients ---------------------------------------------------------------------------------

type To = { port: number } | { path: string };
const dial = (to: To, halfOpen = false): Socket =>
  "path" in to ? netConnect({ path: to.path, allowHalfOpen: halfOpen }) : netConnect({ port: to.port, host: "127.0.0.1", allowHalfOpen: halfOpen });

/** Writes `bytes` (a string or chunks written `gapMs` apart) and returns everything answered until close or `ms`. */
function exchange(to: To, bytes: string | Buffer, ms = 3000): Promise<string> {
  return new Promise((resolve) => {
    const s = dial(to);
    const got: Buffer[] = [];
    const done = (): void => {
      clearTimeout(t);
      s.destroy();
      resolve(Buffer.concat(got).toString("latin1"));
    };
    const t = setTimeout(done, ms);
    s.on("data", (d: Buffer) => got.push(d));
    s.on("error", done);
    s.on("close", done);
    s.write(bytes);
  });
}

const statuses = (answer: string): number[] => [...answer.matchAll(/HTTP\/1\.[01] (\d{3})/g)].map((m) => Number(m[1]));

/** CONNECT with the right token, then TLS inside (the agent trusts anything: it is the attacker here). */
const tunnel = (to: To, token: string, host = HOST, port = tlsPort): Promise<tls.TLSSocket> => openTunnel(to, host, port, { proxyAuth: basic("lessor", token) });

function noSecret(where: string, text: string, token?: string): void {
  assert.ok(!text.includes(CANARY), `the credential appears in ${where}`);
  if (token !== undefined) {
    assert.ok(!text.includes(token), `the proxy token appears in ${where}`);
    assert.ok(!text.includes(b64(`lessor:${token}`)), `the proxy token (base64) appears in ${where}`);
  }
}

// =================================================================================================
// In process
// =================================================================================================

describe("lessor proxy's ForwardProxy (in process, with basicProxyAuth)", () => {
  test("no proxy credential: CONNECT, absolute-form GET, origin-form GET, OPTIONS *, a WebSocket upgrade and an h2 preface get nothing forwarded", async () => {
    for (const egress of ["strict", "open"] as const) {
      const r = await rig({ egress });
      const seen = seenTls.length + seenPlain.length;
      try {
        const attempts: [string, string][] = [
          ["CONNECT", `CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\nHost: ${HOST}:${tlsPort}\r\n\r\n`],
          ["CONNECT to an uncovered host", `CONNECT ${OTHER}:${tlsPort} HTTP/1.1\r\nHost: ${OTHER}:${tlsPort}\r\n\r\n`],
          ["CONNECT to an IP", `CONNECT 127.0.0.1:${tlsPort} HTTP/1.1\r\nHost: 127.0.0.1:${tlsPort}\r\n\r\n`],
          ["CONNECT, HTTP/1.0", `CONNECT ${OTHER}:${tlsPort} HTTP/1.0\r\n\r\n`],
          ["plain GET", `GET http://${PLAIN}:${plainPort}/x HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\n\r\n`],
          ["plain GET with a placeholder", `GET http://${HOST}:${tlsPort}/ok/ HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.placeholder}\r\n\r\n`],
          ["plain POST with a body", `POST http://${PLAIN}:${plainPort}/x HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\nContent-Length: 5\r\n\r\nhello`],
          ["origin-form GET", `GET /x HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\n\r\n`],
          ["OPTIONS *", `OPTIONS * HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\n\r\n`],
          ["WebSocket upgrade", `GET http://${PLAIN}:${plainPort}/ws HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`],
          ["h2c upgrade", `GET http://${PLAIN}:${plainPort}/ HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n`],
          ["h2 prior knowledge", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"],
          ["Expect: 100-continue", `POST http://${PLAIN}:${plainPort}/x HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello`],
        ];
        for (const [what, bytes] of attempts) {
          const answer = await exchange({ port: r.port }, bytes, 1500);
          const st = statuses(answer);
          assert.ok(!st.includes(200) && !st.includes(101), `${egress}/${what}: ${answer}`);
          if (!what.startsWith("h2 prior")) assert.ok(st.includes(407), `${egress}/${what}: expected 407, got ${answer}`);
          noSecret(what, answer, r.token);
        }
        assert.deepEqual(r.connects, [], "the proxy never connected upstream");
        assert.equal(seenTls.length + seenPlain.length, seen, "no upstream saw a request");
      } finally {
        await r.close();
      }
    }
  });

  test("wrong or malformed Proxy-Authorization: 407 (bad base64, wrong user, a prefix or extension of the token, other schemes, duplicates, a 15 KiB value); a 20 KiB value is 431; the right token works afterwards", async () => {
    const r = await rig();
    try {
      const t = r.token;
      const wrong = [
        basic("lessor", t.slice(0, -1)),
        basic("lessor", t + "x"),
        basic("lessor", t.toUpperCase()),
        basic("Lessor", t),
        basic("", t),
        basic("lessor", ""),
        "Basic " + b64(`lessor:${t}`).slice(0, -2),
        "Basic " + b64(`lessor:${t}`) + "==",
        "Basic " + b64(`lessor:${t}`) + "!",
        "Basic !!!!" + b64(`lessor:${t}`),
        "Basic " + b64(`lessor:${t}\0`),
        "Basic " + b64(`lessor:${t}`).replace(/=/g, ""),
        "Basic " + Buffer.from(`lessor:${t}`).toString("base64url"),
        "Basic",
        "Basic ",
        "Basic ====",
        `Bearer ${t}`,
        `Digest username="lessor", response="${t}"`,
        t,
        `lessor:${t}`,
        "Basic " + "A".repeat(15_000),
        "Basic " + "%%%%".repeat(100),
        "Basic \u00ff\u00fe",
      ];
      for (const a of wrong) {
        const answer = await exchange({ port: r.port }, Buffer.from(`CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: ${a}\r\n\r\n`, "latin1"), 1500);
        const st = statuses(answer);
        // "Basic lessor:TOKEN base64 without padding" decodes to the same bytes: that is the right credential, not a bypass.
        if (a === "Basic " + b64(`lessor:${t}`).replace(/=/g, "") || a === "Basic " + Buffer.from(`lessor:${t}`).toString("base64url")) continue;
        assert.deepEqual(st, [407], `${a.slice(0, 60)}: ${answer.slice(0, 200)}`);
        noSecret("a 407", answer, t);
      }
      // Two Proxy-Authorization headers, both wrong; then a wrong one in a different header name.
      for (const h of [`Proxy-Authorization: ${basic("lessor", "x".repeat(43))}\r\nProxy-Authorization: ${basic("lessor", "y".repeat(43))}`, `Authorization: ${basic("lessor", t)}`, `Proxy-Authorization : ${basic("lessor", t)}`, `X-Proxy-Authorization: ${basic("lessor", t)}`]) {
        const answer = await exchange({ port: r.port }, `CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\nHost: x\r\n${h}\r\n\r\n`, 1500);
        assert.ok(!statuses(answer).includes(200), `${h}: ${answer}`);
      }
      // Oversized: past the 16 KiB head cap.
      const huge = await exchange({ port: r.port }, `CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic ${"A".repeat(20_000)}\r\n\r\n`, 2000);
      assert.ok(statuses(huge).every((s) => s === 431) && !huge.includes(" 200 "), huge.slice(0, 200));
      const hugePlain = await exchange({ port: r.port }, `GET http://${PLAIN}:${plainPort}/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic ${"A".repeat(20_000)}\r\n\r\n`, 2000);
      assert.ok(!hugePlain.includes(" 200 "), hugePlain.slice(0, 200));
      // 100 bad attempts over 100 connections at once, then the right token still works.
      await Promise.all(Array.from({ length: 100 }, (_, i) => exchange({ port: r.port }, `CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\nProxy-Authorization: Basic ${randomBytes(40 + i).toString("base64")}\r\n\r\n`, 2000)));
      assert.deepEqual(r.connects, []);
      const s = await tunnel({ port: r.port }, t);
      s.write(`GET /ok/a HTTP/1.1\r\nHost: ${HOST}:${tlsPort}\r\nAuthorization: Bearer ${r.placeholder}\r\nConnection: close\r\n\r\n`);
      const answer = await readAll(s, 3000);
      assert.match(answer, /^HTTP\/1\.1 200 /, answer);
      // The body as the client reads it: a chunked answer may split the placeholder between two chunks
      // (the scrubber holds back what could still grow into a value, and sends it in a later write).
      const body = dechunked(answer);
      assert.ok(body.includes(r.placeholder) && !body.includes(CANARY) && !answer.includes(CANARY), answer);
      noSecret("the answer", answer, t);
      noSecret("the answer's body", body, t);
    } finally {
      await r.close();
    }
  });

  test("pipelined: after an authenticated plain-HTTP request, an unauthenticated request and an unauthenticated CONNECT on the same connection get 407 and reach nothing", async () => {
    const r = await rig({ egress: "open" });
    try {
      const before = seenPlain.length;
      const auth = `Proxy-Authorization: ${basic("lessor", r.token)}\r\n`;
      const first = `GET http://${PLAIN}:${plainPort}/first HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\n${auth}\r\n`;
      const answer = await exchange(
        { port: r.port },
        first +
          `GET http://${PLAIN}:${plainPort}/second HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\n\r\n` +
          `GET http://${PLAIN}:${plainPort}/third HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\nProxy-Authorization: ${basic("lessor", "nope")}\r\n\r\n`,
        3000,
      );
      const st = statuses(answer);
      assert.equal(st[0], 200, answer);
      assert.ok(st.length >= 2 && st.slice(1).every((s) => s === 407), answer);
      assert.deepEqual(
        seenPlain.slice(before).map((s) => s.url),
        ["/first"],
        "only the authenticated request reached the upstream",
      );
      assert.equal(seenPlain[before]!.headers["proxy-authorization"], undefined, "the proxy's credentials are not forwarded upstream");
      // An unauthenticated CONNECT pipelined behind the authenticated request: no tunnel.
      const b1 = seenPlain.length;
      const withConnect = await exchange({ port: r.port }, first + `CONNECT ${OTHER}:${tlsPort} HTTP/1.1\r\nHost: ${OTHER}:${tlsPort}\r\n\r\n`, 2000);
      assert.ok(statuses(withConnect).includes(407) && !/200 Connection Established/.test(withConnect), withConnect);
      assert.ok(seenPlain.slice(b1).every((s) => s.url === "/first"));
      // The other order: an unauthenticated request first, the authenticated one pipelined behind it.
      const b2 = seenPlain.length;
      const answer2 = await exchange(
        { port: r.port },
        `GET http://${PLAIN}:${plainPort}/unauth HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\n\r\n` + first,
        2000,
      );
      assert.equal(statuses(answer2)[0], 407, answer2);
      assert.ok(!seenPlain.slice(b2).some((s) => s.url === "/unauth"), "the unauthenticated request never went out");
      assert.ok(r.connects.every((c) => c.port === plainPort), "no tunnel was opened");
    } finally {
      await r.close();
    }
  });

  test("a second CONNECT on the same socket: behind a 407 it is never read; behind an authenticated intercepting CONNECT, a CONNECT or absolute-form request inside the tunnel reaches no other host", async () => {
    const r = await rig({ egress: "open" });
    try {
      const answer = await exchange(
        { port: r.port },
        `CONNECT ${OTHER}:${tlsPort} HTTP/1.1\r\nHost: x\r\n\r\nCONNECT ${OTHER}:${tlsPort} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: ${basic("lessor", "guess")}\r\n\r\nGET http://${PLAIN}:${plainPort}/behind HTTP/1.1\r\nHost: x\r\n\r\n`,
        2000,
      );
      assert.deepEqual(statuses(answer), [407], answer);
      assert.deepEqual(r.connects, []);
      // An unauthenticated CONNECT whose head is followed by a TLS ClientHello: no handshake answers it.
      const hello = Buffer.from("16030100c8010000c40303" + "00".repeat(200), "hex");
      const withHello = await exchange({ port: r.port }, Buffer.concat([Buffer.from(`CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\nHost: x\r\n\r\n`), hello]), 1500);
      assert.deepEqual(statuses(withHello), [407], withHello.slice(0, 200));
      assert.deepEqual(r.connects, []);
      // Inside an authenticated tunnel to HOST: a CONNECT and an absolute-form GET naming OTHER / PLAIN.
      for (const inner of [
        `CONNECT ${OTHER}:${tlsPort} HTTP/1.1\r\nHost: ${OTHER}:${tlsPort}\r\n\r\n`,
        `GET http://${PLAIN}:${plainPort}/inner HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\nConnection: close\r\n\r\n`,
        `GET https://${OTHER}:${tlsPort}/ok/inner HTTP/1.1\r\nHost: ${OTHER}:${tlsPort}\r\nAuthorization: Bearer ${r.placeholder}\r\nConnection: close\r\n\r\n`,
      ]) {
        const before = seenTls.length + seenPlain.length;
        const s = await tunnel({ port: r.port }, r.token);
        s.write(inner);
        const got = await readAll(s, 2000);
        assert.ok(!statuses(got).includes(200), `${inner.split("\r\n")[0]}: ${got}`);
        assert.equal(seenTls.length + seenPlain.length, before, `${inner.split("\r\n")[0]}: nothing reached an upstream`);
        noSecret("the answer", got, r.token);
      }
    } finally {
      await r.close();
    }
  });

  test("the proxy token is never echoed: not in an error page (400, 403, 407, 421, 431, 501, 502), not upstream (plain or intercepted), not in the audit or a warning", async () => {
    for (const egress of ["strict", "open"] as const) {
      const r = await rig({ egress });
      try {
        const auth = `Proxy-Authorization: ${basic("lessor", r.token)}\r\n`;
        const answers: string[] = [];
        const pages = [
          `CONNECT nonsense HTTP/1.1\r\n${auth}\r\n`, // 400
          `CONNECT ${OTHER}:${tlsPort} HTTP/1.1\r\n${auth}\r\n`, // 403 not_granted (strict) / tunnel (open)
          `CONNECT ${HOST}:1 HTTP/1.1\r\n${auth}\r\n`, // 403 port
          `CONNECT unknown.sap.example:${tlsPort} HTTP/1.1\r\n${auth}\r\n`, // 502 unresolvable
          `GET http://lessor:${r.token}@${PLAIN}:${plainPort}/ HTTP/1.1\r\nHost: x\r\n${auth}\r\n`, // 400 userinfo
          `GET https://${HOST}:${tlsPort}/?t=${r.token} HTTP/1.1\r\nHost: x\r\n${auth}\r\n`, // 400 use_connect
          `GET ftp://${HOST}/${r.token} HTTP/1.1\r\nHost: x\r\n${auth}\r\n`, // 400 scheme
          `GET http://${HOST}:${tlsPort}/ok/${r.token} HTTP/1.1\r\nHost: x\r\n${auth}\r\n`, // 403 plaintext (strict)
          `GET http://${PLAIN}:${plainPort}/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n${auth}\r\n`, // 501 / 407
          `GET http://${PLAIN}:1/ HTTP/1.1\r\nHost: x\r\n${auth}\r\n`, // 403 port
          `CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\n${auth}${Array.from({ length: 120 }, (_, i) => `X-H${i}: ${i}\r\n`).join("")}\r\n`, // 431
          `GET http://${PLAIN}:${plainPort}/ HTTP/1.1\r\nHost: x\r\n${auth}${"X-Big: " + "b".repeat(17_000) + "\r\n"}\r\n`, // 431 (node)
          `GET http://${PLAIN}:${plainPort}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n${auth}\r\n`, // 400 (node)
        ];
        for (const p of pages) answers.push(await exchange({ port: r.port }, p, 1500));
        // Inside an intercepted tunnel: a 421 (another Host), a 403 (path not granted), the agent sending the
        // Proxy-Authorization header again inside (it must not be forwarded).
        for (const inner of [
          `GET /ok/a HTTP/1.1\r\nHost: ${OTHER}\r\nConnection: close\r\n\r\n`,
          `GET /denied/x HTTP/1.1\r\nHost: ${HOST}:${tlsPort}\r\nAuthorization: Bearer ${r.placeholder}\r\nConnection: close\r\n\r\n`,
          `GET /ok/echo HTTP/1.1\r\nHost: ${HOST}:${tlsPort}\r\nAuthorization: Bearer ${r.placeholder}\r\n${auth}Connection: close\r\n\r\n`,
        ]) {
          const s = await tunnel({ port: r.port }, r.token);
          s.write(inner);
          answers.push(await readAll(s, 2000));
        }
        const up = JSON.stringify([...seenTls, ...seenPlain]);
        assert.ok(!up.includes(r.token), "the token reached an upstream");
        for (const a of answers) {
          // The agent's own URL echoed back to it would be harmless, but the proxy's pages never do it.
          noSecret(`an answer (${a.slice(0, 40)})`, a, r.token);
        }
        const audit = await r.audit();
        noSecret("the audit", audit, r.token);
        noSecret("the warnings", r.warns.join("\n"), r.token);
        assert.deepEqual(r.connects.filter((c) => c.host !== "127.0.0.1"), []);
      } finally {
        await r.close();
      }
    }
  });

  test("slowloris: a request head trickled one byte at a time, or never sent, is cut at the header timeout; the token holder is served meanwhile", async () => {
    const r = await rig({ headersTimeoutMs: 800, idleTimeoutMs: 1500 });
    try {
      const trickle = (text: string): { socket: Socket; closedAt: Promise<number> } => {
        const s = dial({ port: r.port });
        s.on("error", () => {});
        s.resume();
        const start = Date.now();
        let i = 0;
        const timer = setInterval(() => {
          if (i < text.length && !s.destroyed) s.write(text[i++]!);
        }, 50);
        const closedAt = new Promise<number>((resolve) => s.once("close", () => (clearInterval(timer), resolve(Date.now() - start))));
        return { socket: s, closedAt };
      };
      const head = `CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\nProxy-Authorization: ${basic("lessor", r.token)}\r\n` + "X-Slow: " + "z".repeat(400) + "\r\n\r\n";
      const slow = Array.from({ length: 20 }, () => trickle(head));
      const idle = Array.from({ length: 50 }, () => {
        const s = dial({ port: r.port });
        s.on("error", () => {});
        s.resume();
        return new Promise<void>((resolve) => s.once("close", () => resolve()));
      });
      // The token holder meanwhile.
      const s = await tunnel({ port: r.port }, r.token);
      s.write(`GET /ok/b HTTP/1.1\r\nHost: ${HOST}:${tlsPort}\r\nAuthorization: Bearer ${r.placeholder}\r\nConnection: close\r\n\r\n`);
      assert.match(await readAll(s, 3000), /^HTTP\/1\.1 200 /);
      const times = await Promise.race([Promise.all(slow.map((x) => x.closedAt)), delay(8000).then(() => null)]);
      assert.ok(times !== null, "trickling clients were never cut");
      assert.ok(Math.max(...times) < 5000, `cut after ${Math.max(...times)} ms`);
      const idleDone = await Promise.race([Promise.all(idle).then(() => true), delay(5000).then(() => false)]);
      assert.ok(idleDone, "connections that never send anything were never cut");
      assert.equal(await r.connections(), 0);
    } finally {
      await r.close();
    }
  });

  test("refused CONNECTs do not hold the proxy's sockets: unauthenticated (407), malformed (400) and refused (403) CONNECTs whose clients keep their half open are released after the header and idle timeouts", async () => {
    const r = await rig({ headersTimeoutMs: 500, idleTimeoutMs: 1000 });
    const held: Socket[] = [];
    try {
      const kinds = [
        `CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\nHost: x\r\n\r\n`, // 407
        `CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\nProxy-Authorization: Basic !!\r\n\r\n`, // 407
        `CONNECT nonsense HTTP/1.1\r\nProxy-Authorization: ${basic("lessor", r.token)}\r\n\r\n`, // 400
        `CONNECT ${OTHER}:${tlsPort} HTTP/1.1\r\nProxy-Authorization: ${basic("lessor", r.token)}\r\n\r\n`, // 403
      ];
      const answered: Promise<string>[] = [];
      for (let i = 0; i < 60; i++) {
        const s = dial({ port: r.port }, true); // a client that never closes its side
        s.on("error", () => {});
        const got: Buffer[] = [];
        answered.push(new Promise((resolve) => s.once("end", () => resolve(Buffer.concat(got).toString("latin1")))));
        s.on("data", (d: Buffer) => got.push(d));
        s.write(kinds[i % kinds.length]!);
        held.push(s);
      }
      const answers = await Promise.all(answered);
      assert.ok(answers.every((a) => /^HTTP\/1\.1 (407|400|403) /.test(a)), "each was refused");
      await delay(3500); // well past the header timeout (0.5 s) and the idle timeout (1 s)
      const left = await r.connections();
      assert.equal(left, 0, `${left} refused connections are still held open by the proxy, ${(3.5 / 1).toFixed(1)}× past its idle timeout`);
    } finally {
      for (const s of held) s.destroy();
      await r.close();
    }
  });

  test("requests the proxy refuses inside an authenticated tunnel are audited as proxy_request rows (status 403), with no credential or token in them", async () => {
    const r = await rig();
    try {
      const s = await tunnel({ port: r.port }, r.token);
      s.write(`GET /denied/x HTTP/1.1\r\nHost: ${HOST}:${tlsPort}\r\nAuthorization: Bearer ${r.placeholder}\r\nConnection: close\r\n\r\n`);
      const answer = await readAll(s, 3000);
      assert.match(answer, /^HTTP\/1\.1 403 /, answer);
      noSecret("the 403", answer, r.token);
      const rows = await r.proxyRequests();
      assert.ok(
        rows.some((x) => x.status === 403 && x.path === "/denied/x"),
        `a proxy_request row for the refused request: ${JSON.stringify(rows)}`,
      );
      noSecret("the audit", await r.audit(), r.token);
    } finally {
      await r.close();
    }
  });

  test("on a Unix socket (bound as lessor proxy --socket binds it): the token is required for CONNECT and for plain HTTP", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lessor-sap-sock-"));
    chmodSync(dir, 0o700);
    const path = join(dir, "proxy.sock");
    const r = await rig({ socket: path, egress: "open" });
    try {
      for (const bytes of [
        `CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\nHost: x\r\n\r\n`,
        `CONNECT ${OTHER}:${tlsPort} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: ${basic("lessor", "x")}\r\n\r\n`,
        `GET http://${PLAIN}:${plainPort}/sock HTTP/1.1\r\nHost: x\r\n\r\n`,
      ]) {
        const answer = await exchange({ path }, bytes, 1500);
        assert.deepEqual(statuses(answer), [407], answer);
      }
      assert.deepEqual(r.connects, []);
      const s = await tunnel({ path }, r.token);
      s.write(`GET /ok/sock HTTP/1.1\r\nHost: ${HOST}:${tlsPort}\r\nAuthorization: Bearer ${r.placeholder}\r\nConnection: close\r\n\r\n`);
      const answer = await readAll(s, 3000);
      assert.match(answer, /^HTTP\/1\.1 200 /, answer);
      assert.equal(seenTls.at(-1)?.headers.authorization, `Bearer ${CANARY}`, "with the token, the credential is injected");
      noSecret("the answer", answer, r.token);
    } finally {
      await r.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// =================================================================================================
// The built CLI: lessor proxy as a child process
// =================================================================================================

const CLI_POLICY = `
[[rule]]
name = "github"
effect = "allow"
agents = ["sa", "sb", "sc", "sd", "se", "sf", "sg", "sh"]
secrets = ["github-token"]
domains = ["${HOST}"]
`;

/** `lessor proxy` for `agent` (its credential GITHUB_TOKEN), under `prefix` if given, once it says it serves. */
const startLessorProxy = (home: string, agent: string, args: string[], prefix: string[] = []): Promise<RunningCli> =>
  startCli(["proxy", "--agent", agent, "--domain", HOST, ...args], /lessor: proxy for agent/, { PATH: "/usr/bin:/bin", HOME: dirname(home), LESSOR_HOME: home, NO_COLOR: "1", GITHUB_TOKEN: "$S:github-token" }, { prefix, killAfterMs: Infinity });

function tokenOf(env: Record<string, string>): { token: string; port: number } {
  const m = /^http:\/\/lessor:([A-Za-z0-9_-]{43})@127\.0\.0\.1:(\d+)$/.exec(env["HTTPS_PROXY"] ?? "");
  assert.ok(m, `HTTPS_PROXY: ${env["HTTPS_PROXY"]}`);
  return { token: m[1]!, port: Number(m[2]) };
}

const fdCount = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;
const rssKb = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);

/** An authenticated CONNECT + request through the CLI proxy; resolves with the answer text. */
async function served(port: number, token: string, placeholder: string): Promise<string> {
  const s = await tunnel({ port }, token);
  s.write(`GET /ok/cli HTTP/1.1\r\nHost: ${HOST}:${tlsPort}\r\nAuthorization: Bearer ${placeholder}\r\nConnection: close\r\n\r\n`);
  return readAll(s, 5000);
}

describe("the built CLI: lessor proxy", () => {
  let home = "";
  let baseToml = "";
  const allOutput: string[] = [];
  const config = (extra = ""): void =>
    writeFileSync(
      join(home, "lessor.toml"),
      `${baseToml}\n[proxy]\nports = [${tlsPort}, ${plainPort}]\nallow = ["127.0.0.1"]\nhosts = { "${HOST}" = "127.0.0.1", "${PLAIN}" = "127.0.0.1", "${OTHER}" = "127.0.0.1" }\nupstream_ca = "${join(dirname(home), "upstream-ca.pem")}"\n${extra}`,
      { mode: 0o600 },
    );

  before(async () => {
    home = await cliHome();
    writeFileSync(join(dirname(home), "upstream-ca.pem"), upCa.certPem);
    baseToml = readFileSync(join(home, "lessor.toml"), "utf8");
    config();
    await seedHome(home, CLI_POLICY, [{ name: "github-token", value: CANARY, kind: "pat" }]);
  });
  after(() => {
    for (const o of allOutput) assert.ok(!o.includes(CANARY), "the credential appeared in the CLI's output");
  });

  test("default --listen is 127.0.0.1 (no other listening address), the token never on stderr, 407 without it, and the canary nowhere in the output", async () => {
    const p = await startLessorProxy(home, "sa", []);
    try {
      const env = envOf(p.stdout());
      const { token, port } = tokenOf(env);
      const hex = port.toString(16).toUpperCase().padStart(4, "0");
      const listening = [readFileSync("/proc/net/tcp", "utf8"), existsSync("/proc/net/tcp6") ? readFileSync("/proc/net/tcp6", "utf8") : ""]
        .join("\n")
        .split("\n")
        .map((l) => l.trim().split(/\s+/))
        .filter((f) => f[1]?.endsWith(`:${hex}`) && f[3] === "0A")
        .map((f) => f[1]!);
      assert.deepEqual(listening, [`0100007F:${hex}`], `listening on ${listening.join(", ")}`);
      assert.ok(!p.stderr().includes(token), "the token is on stderr");
      const answer = await exchange({ port }, `CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\nHost: x\r\n\r\n`, 2000);
      assert.deepEqual(statuses(answer), [407]);
      const ok = await served(port, token, env["GITHUB_TOKEN"]!);
      assert.match(ok, /^HTTP\/1\.1 200 /, ok);
      noSecret("the answer", ok, token);
      p.child.kill("SIGTERM");
      assert.equal((await p.exited).code, 0, p.stderr());
      assert.equal(await liveLeases(home, "sa"), 0);
      noSecret("stderr", p.stderr(), token);
      noSecret("stdout", p.stdout());
    } finally {
      allOutput.push(p.stdout(), p.stderr());
      if (p.child.exitCode === null) p.child.kill("SIGKILL");
    }
  });

  test("10,000 connections that never send anything: the token holder is served during the flood, and they are closed after the header timeout (descriptors and memory bounded)", { timeout: 120_000 }, async () => {
    const p = await startLessorProxy(home, "sb", []);
    const flood: Socket[] = [];
    try {
      const env = envOf(p.stdout());
      const { token, port } = tokenOf(env);
      const pid = p.child.pid!;
      const fd0 = fdCount(pid);
      const rss0 = rssKb(pid);
      let closed = 0;
      for (let batch = 0; batch < 50; batch++) {
        await Promise.all(
          Array.from({ length: 200 }, () =>
            new Promise<void>((resolve) => {
              const s = netConnect({ port, host: "127.0.0.1" });
              s.on("error", () => resolve());
              s.once("connect", () => resolve());
              s.once("close", () => closed++);
              s.resume();
              flood.push(s);
            }),
          ),
        );
      }
      const fdPeak = fdCount(pid);
      const ok = await served(port, token, env["GITHUB_TOKEN"]!);
      assert.match(ok, /^HTTP\/1\.1 200 /, `the token holder during the flood: ${ok.slice(0, 200)}`);
      assert.equal(p.child.exitCode, null, "the proxy is still running");
      // The header timeout is 10 s; node checks every second.
      const start = Date.now();
      while (Date.now() - start < 20_000 && closed < flood.length) await delay(250);
      const rss1 = rssKb(pid);
      assert.equal(closed, flood.length, `${flood.length - closed} of ${flood.length} idle connections still open 20 s later (fds: ${fd0} → peak ${fdPeak} → ${fdCount(pid)})`);
      assert.ok(fdCount(pid) < fd0 + 50, `descriptors ${fd0} → peak ${fdPeak} → ${fdCount(pid)}`);
      assert.ok(rss1 - rss0 < 200 * 1024, `memory grew by ${rss1 - rss0} KiB`);
      p.child.kill("SIGTERM");
      assert.equal((await p.exited).code, 0, p.stderr());
    } finally {
      for (const s of flood) s.destroy();
      allOutput.push(p.stdout(), p.stderr());
      if (p.child.exitCode === null) p.child.kill("SIGKILL");
    }
  });

  test("descriptor exhaustion by unauthenticated clients (fd limit 512): 700 CONNECTs answered 407 whose clients never close must neither crash the proxy nor lock out the token holder", { timeout: 90_000 }, async () => {
    const p = await startLessorProxy(home, "sc", [], ["prlimit", "--nofile=512:512", "--"]);
    const held: Socket[] = [];
    try {
      const env = envOf(p.stdout());
      const { token, port } = tokenOf(env);
      for (let i = 0; i < 700 && p.child.exitCode === null; i++) {
        await new Promise<void>((resolve) => {
          const s = netConnect({ port, host: "127.0.0.1", allowHalfOpen: true });
          s.on("error", () => resolve());
          s.on("data", () => resolve());
          s.once("end", () => resolve());
          s.once("close", () => resolve());
          setTimeout(resolve, 500);
          s.write(`CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\nHost: x\r\n\r\n`);
          held.push(s);
        });
      }
      // Past the 10 s header timeout: a refused connection has long been answered; nothing should be held.
      await delay(11_000);
      const fds = p.child.exitCode === null ? fdCount(p.child.pid!) : -1;
      const alive = p.child.exitCode === null && p.child.signalCode === null;
      const stderr = p.stderr();
      assert.ok(alive, `the proxy died: exit ${p.child.exitCode}; stderr: ${stderr.split("\n").filter((l) => /Error|EMFILE|accept/.test(l)).slice(0, 4).join(" | ")}`);
      const ok = await served(port, token, env["GITHUB_TOKEN"]!).catch((e: Error) => `failed: ${e.message}`);
      assert.match(ok, /^HTTP\/1\.1 200 /, `the token holder 11 s after the flood: ${ok.slice(0, 200)} (the proxy holds ${fds} descriptors of 512; alive: ${p.child.exitCode === null})`);
    } finally {
      for (const s of held) s.destroy();
      allOutput.push(p.stdout(), p.stderr());
      const wasAlive = p.child.exitCode === null;
      if (wasAlive) p.child.kill("SIGTERM");
      await Promise.race([p.exited, delay(10_000)]);
      if (p.child.exitCode === null) p.child.kill("SIGKILL");
      // Whatever happened, leave no live lease behind for the next test.
      if (!wasAlive) {
        const vault = await openVault({ home, env: { LESSOR_HOME: home } });
        try {
          for (const l of await vault.admin().listLeases({ agent: "sc", liveAt: Date.now() })) await vault.admin().revokeLease(l.id, "test cleanup").catch(() => ({ revoked: false }));
        } catch {
          // best effort
        } finally {
          await vault.close();
        }
      }
    }
  });

  test("accept failing with EMFILE (fd limit 128, 400 connections opened at once) does not end the proxy (libuv drops what it cannot accept); the refused ones are let go, and the token holder is served a moment later", { timeout: 90_000 }, async () => {
    const p = await startLessorProxy(home, "sh", [], ["prlimit", "--nofile=128:128", "--"]);
    const held: Socket[] = [];
    try {
      const env = envOf(p.stdout());
      const { token, port } = tokenOf(env);
      const fd0 = fdCount(p.child.pid!);
      // Opened together, so accept runs out of descriptors (the refused ones linger a second each).
      await Promise.all(
        Array.from({ length: 400 }, () => {
          const s = netConnect({ port, host: "127.0.0.1", allowHalfOpen: true });
          held.push(s);
          return new Promise<void>((resolve) => {
            s.on("error", () => resolve());
            s.once("close", () => resolve());
            s.once("connect", () => s.write(`CONNECT ${HOST}:${tlsPort} HTTP/1.1\r\nHost: x\r\n\r\n`));
            setTimeout(resolve, 3000);
          });
        }),
      );
      await delay(1500);
      assert.equal(p.child.exitCode, null, `the proxy ended (started with ${fd0} descriptors): ${p.stderr().split("\n").filter((l) => /Error|EMFILE|accept/.test(l)).slice(0, 4).join(" | ")}`);
      const ok = await served(port, token, env["GITHUB_TOKEN"]!).catch((e: Error) => `failed: ${e.message}`);
      assert.match(ok, /^HTTP\/1\.1 200 /, `the token holder after the burst: ${ok.slice(0, 200)}`);
    } finally {
      for (const s of held) s.destroy();
      allOutput.push(p.stdout(), p.stderr());
      if (p.child.exitCode === null) p.child.kill("SIGTERM");
      await Promise.race([p.exited, delay(10_000)]);
      if (p.child.exitCode === null) p.child.kill("SIGKILL");
    }
  });

  test("bad configuration and options are refused with a clear message, before serving: nothing on stdout (no token), no live lease", { timeout: 120_000 }, async () => {
    const cases: { what: string; toml?: string; args?: string[]; want: RegExp }[] = [
      { what: "egress typo", toml: 'egress = "opne"', want: /egress/ },
      { what: "egress not a string", toml: "egress = true", want: /egress/ },
      { what: "allow /33", toml: 'allow = ["10.0.0.0/33"]', want: /10\.0\.0\.0\/33/ },
      { what: "allow not an address", toml: 'allow = ["localhost"]', want: /allow/ },
      { what: "ports empty", toml: "ports = []", want: /ports/ },
      { what: "ports 0", toml: "ports = [0]", want: /ports/ },
      { what: "hosts to a name", toml: 'hosts = { "a.example" = "b.example" }', want: /hosts/ },
      { what: "unknown field", toml: 'egres = "open"', want: /egres/ },
      { what: "upstream_ca missing", toml: 'upstream_ca = "/nonexistent/ca.pem"', want: /upstream_ca/ },
      { what: "inject on proxy-authorization", toml: '[[proxy.inject]]\nsecret = "github-token"\nmode = "header"\nheader = "Proxy-Authorization"', want: /Proxy-Authorization|proxy/i },
      { what: "--egress bogus", args: ["--egress", "bogus"], want: /--egress/ },
      { what: "--listen 0.0.0.0", args: ["--listen", "0.0.0.0:0"], want: /loopback only/ },
      { what: "--listen [::]", args: ["--listen", "[::]:0"], want: /loopback only/ },
      { what: "--listen 0177.0.0.1", args: ["--listen", "0177.0.0.1:0"], want: /--listen/ },
      { what: "--listen 2130706433", args: ["--listen", "2130706433:0"], want: /--listen/ },
      { what: "--listen [::ffff:7f00:1]", args: ["--listen", "[::ffff:7f00:1]:0"], want: /--listen/ },
      { what: "--listen [::1%lo]", args: ["--listen", "[::1%lo]:0"], want: /--listen/ },
      { what: "--listen with a space", args: ["--listen", " 127.0.0.1:0"], want: /--listen/ },
      { what: "--listen and --socket", args: ["--listen", "127.0.0.1:0", "--socket", join(tmpdir(), "x.sock")], want: /give one/ },
    ];
    const problems: string[] = [];
    for (const c of cases) {
      // The proxy's [proxy] keys go before any [[proxy.inject]] table.
      if (c.toml !== undefined && c.toml.startsWith("[[")) config(`\n${c.toml}\n`);
      else if (c.toml !== undefined) writeFileSync(join(home, "lessor.toml"), `${baseToml}\n[proxy]\n${c.toml}\n`, { mode: 0o600 });
      else config();
      const p = await startLessorProxy(home, "sd", c.args ?? []);
      const served = /lessor: proxy for agent/.test(p.stderr());
      if (served) p.child.kill("SIGTERM");
      const { code } = await p.exited;
      allOutput.push(p.stdout(), p.stderr());
      const err = p.stderr();
      if (served) problems.push(`${c.what}: it served`);
      else if (code === 0) problems.push(`${c.what}: exit 0`);
      else if (!c.want.test(err)) problems.push(`${c.what}: unclear message: ${err.trim().slice(0, 300)}`);
      else if (/\n\s+at .+\(.+:\d+:\d+\)/.test(err)) problems.push(`${c.what}: a stack trace on stderr`);
      if (p.stdout() !== "") problems.push(`${c.what}: stdout (with the token) printed: ${p.stdout().slice(0, 80)}`);
      config();
      if ((await liveLeases(home, "sd")) !== 0) problems.push(`${c.what}: a live lease left`);
    }
    config();
    assert.deepEqual(problems, []);
  });
});

