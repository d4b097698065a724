/**
 * `lessor proxy` (the injecting proxy on its own) and HTTP parsing edge cases in src/proxy/, attacked by
 * the token holder (the agent) against the lease's `methods`/`paths` bounds, and by a local user
 * without the token.
 *
 * Rig: ForwardProxy wired as `lessor proxy` wires it (LeaseEgress over a real vault on SQLite,
 * basicProxyAuth(token), the SSRF guard with a table resolver and the instrumented `loopbackOnly`
 * connect step). Upstreams are loopback HTTPS servers this file starts, certified by a test CA passed
 * to the proxy as its extra upstream CA. Nothing leaves 127.0.0.1.
 */
import { randomBytes } from "node:crypto";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as https from "node:https";
import { createConnection, type AddressInfo } from "node:net";
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { basicProxyAuth, newProxyToken } from "../src/proxy/proxy-auth.js";
import { grant, makeVault } from "./helpers.js";
import { loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";

const HOST = "api.sta.example"; // HTTP/1.1-only upstream, covered by the lease
const PLAIN = "plain.sta.example"; // plain-http upstream, covered by nothing (open egress only)
const CANARY = "ghp_" + randomBytes(18).toString("hex");

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const basic = (user: string, pass: string): string => "Basic " + Buffer.from(`${user}:${pass}`).toString("base64");

// --- an HTTP/1.1-only upstream on 127.0.0.1 that records every request it parses -------------------

interface Seen {
  method: string;
  url: string;
  auth: string;
  /** The body it read for this request (latin1). */
  body: string;
}
const seen: Seen[] = [];
const upCa = LocalCa.create({ permitted: [HOST] });
const up = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  const one: Seen = { method: req.method!, url: req.url!, auth: String(req.headers.authorization ?? ""), body: "" };
  seen.push(one);
  req.on("data", (d: Buffer) => (one.body += d.toString("latin1")));
  req.on("end", () => {
    res.writeHead(200, { "content-type": "text/plain", "content-length": "2" });
    res.end("ok");
  });
});
await new Promise<void>((r) => up.listen(0, "127.0.0.1", r));
const upPort = (up.address() as AddressInfo).port;

/** The same, over plain http (for absolute-form requests under open egress). */
const plainUp = http.createServer((req, res) => {
  const one: Seen = { method: req.method!, url: req.url!, auth: String(req.headers.authorization ?? ""), body: "" };
  seen.push(one);
  req.on("data", (d: Buffer) => (one.body += d.toString("latin1")));
  req.on("end", () => {
    res.writeHead(200, { "content-type": "text/plain", "content-length": "2" });
    res.end("ok");
  });
});
await new Promise<void>((r) => plainUp.listen(0, "127.0.0.1", r));
const plainPort = (plainUp.address() as AddressInfo).port;

after(async () => {
  up.closeAllConnections();
  plainUp.closeAllConnections();
  await new Promise<void>((r) => up.close(() => r()));
  await new Promise<void>((r) => plainUp.close(() => r()));
});

// --- the rig: ForwardProxy as `lessor proxy` wires it --------------------------------------------

/** The grant: GET under /ok/ only. */
const POLICY = grant("sta", ["bot"], ["github-token"], [HOST], 'paths = ["/ok/"]\nmethods = ["GET"]');

interface Rig {
  port: number;
  token: string;
  placeholder: string;
  connects: ConnectTo[];
  close(): Promise<void>;
}

async function rig(egressMode: "strict" | "open" = "strict"): Promise<Rig> {
  const { vault } = await makeVault({ policy: POLICY });
  const admin = vault.admin();
  await admin.storeSecret({ name: "github-token", value: CANARY });
  const lease = await admin.requestLease({ agent: "bot", secret: "github-token", domains: [HOST] });
  const creds: ProxyCredential[] = [{ lease, secret: "global/github-token", placeholder: makePlaceholder(CANARY), value: CANARY, rule: { mode: "placeholder" } }];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: egressMode });
  const guard = new SsrfGuard({ ports: [upPort, plainPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1", [PLAIN]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const token = newProxyToken();
  const proxy = new ForwardProxy({
    egress,
    ca: LocalCa.create({ permitted: [HOST] }),
    guard,
    upstreamCa: upCa.certPem,
    connect: loopbackOnly(connects),
    authorize: basicProxyAuth(token),
  });
  const port = await proxy.listen();
  egress.start();
  return {
    port,
    token,
    placeholder: creds[0]!.placeholder,
    connects,
    close: async () => {
      await proxy.close();
      await egress.close();
    },
  };
}

/** The requests the upstream parsed that carried the real credential but not GET under /ok/. */
const outOfBounds = (from: number): Seen[] => seen.slice(from).filter((q) => q.auth.includes(CANARY) && (q.method !== "GET" || !q.url.startsWith("/ok/")));
const describeSeen = (from: number): string => JSON.stringify(seen.slice(from).map((q) => `${q.method} ${q.url} auth=${q.auth.includes(CANARY) ? "CREDENTIAL" : q.auth === "" ? "none" : "other"}`));

// The smuggled prefix: a request line and an unterminated header whose value will be the next request
// line the proxy writes on the same upstream connection; the next request's headers (the injected
// credential among them) then belong to this DELETE.
const PREFIX = "DELETE /admin/repo HTTP/1.1\r\nX-Swallow: ";

/** What the upstream parsed since `from`, as `METHOD url body`. */
const parsed = (from: number): string[] => seen.slice(from).map((q) => `${q.method} ${q.url} ${JSON.stringify(q.body)}`);

describe("request smuggling proxy → upstream through a body on a method node sends unframed", () => {
  test("an HTTP/1.1 GET with a chunked body goes upstream framed: its body smuggles no request past the lease's methods/paths", async () => {
    const r = await rig();
    const from = seen.length;
    try {
      const s = await openTunnel(r.port, HOST, upPort, { proxyAuth: basic("lessor", r.token) });
      const chunk = Buffer.from(PREFIX, "latin1");
      // 1. A GET under /ok/ with no credential, carrying a chunked body: the proxy forwards it with neither
      //    Content-Length nor Transfer-Encoding, so the upstream reads the body as the start of a request.
      s.write(`GET /ok/first HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: chunked\r\n\r\n${chunk.length.toString(16)}\r\n${PREFIX}\r\n0\r\n\r\n`);
      await delay(400);
      // 2. A GET under /ok/ with the placeholder: the vault checks GET /ok/second, the proxy injects.
      s.write(`GET /ok/second HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.placeholder}\r\n\r\n`);
      const got = await readAll(s, 1500);
      assert.ok(!got.includes(CANARY), "the credential reached the agent");
      assert.deepEqual(outOfBounds(from), [], `the upstream executed a request outside GET /ok/ with the credential: ${describeSeen(from)}`);
      // The body arrived as the GET's body, and the next request as itself, with the credential.
      assert.deepEqual(parsed(from), [`GET /ok/first ${JSON.stringify(PREFIX)}`, `GET /ok/second ""`]);
      assert.ok(seen[from + 1]!.auth.includes(CANARY), "the granted request got its credential");
    } finally {
      await r.close();
    }
  });

  test("an HTTP/2 GET with DATA, forwarded to an HTTP/1.1 upstream, goes framed: its body smuggles no request past the lease's methods/paths", async () => {
    const r = await rig();
    const from = seen.length;
    try {
      const s = await openTunnel(r.port, HOST, upPort, { proxyAuth: basic("lessor", r.token), alpn: "h2" });
      const session = http2.connect(`https://${HOST}`, { createConnection: () => s });
      session.on("error", () => {});
      const one = (headers: http2.OutgoingHttpHeaders, body?: string): Promise<number> =>
        new Promise((resolve) => {
          const req = session.request(headers, { endStream: body === undefined });
          let status = 0;
          req.on("response", (h) => (status = Number(h[":status"])));
          req.on("data", () => {});
          req.on("end", () => resolve(status));
          req.on("error", () => resolve(-1));
          req.on("close", () => resolve(status));
          if (body !== undefined) req.end(body);
        });
      await Promise.race([one({ ":method": "GET", ":path": "/ok/first" }, PREFIX), delay(1500)]);
      await Promise.race([one({ ":method": "GET", ":path": "/ok/second", authorization: `Bearer ${r.placeholder}` }), delay(1500)]);
      session.destroy();
      await delay(200);
      assert.deepEqual(outOfBounds(from), [], `the upstream executed a request outside GET /ok/ with the credential: ${describeSeen(from)}`);
      assert.deepEqual(parsed(from), [`GET /ok/first ${JSON.stringify(PREFIX)}`, `GET /ok/second ""`]);
      assert.ok(seen[from + 1]!.auth.includes(CANARY), "the granted request got its credential");
    } finally {
      await r.close();
    }
  });

  test("a POST with a chunked body stays framed (chunked upstream): nothing outside GET /ok/ gets the credential", async () => {
    const r = await rig();
    const from = seen.length;
    try {
      const s = await openTunnel(r.port, HOST, upPort, { proxyAuth: basic("lessor", r.token) });
      const chunk = Buffer.from(PREFIX, "latin1");
      s.write(`POST /ok/first HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: chunked\r\n\r\n${chunk.length.toString(16)}\r\n${PREFIX}\r\n0\r\n\r\n`);
      await delay(400);
      s.write(`GET /ok/second HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.placeholder}\r\n\r\n`);
      await readAll(s, 1500);
      assert.deepEqual(outOfBounds(from), [], describeSeen(from));
    } finally {
      await r.close();
    }
  });

  test("plain http under open egress: a GET or DELETE with a chunked body reaches the upstream as its body", async () => {
    const r = await rig("open");
    const from = seen.length;
    try {
      for (const method of ["GET", "DELETE"]) {
        const s = createConnection(r.port, "127.0.0.1");
        s.on("error", () => {});
        s.write(
          `${method} http://${PLAIN}:${plainPort}/x HTTP/1.1\r\nHost: ${PLAIN}:${plainPort}\r\nProxy-Authorization: ${basic("lessor", r.token)}\r\n` +
            `Transfer-Encoding: chunked\r\n\r\n${Buffer.byteLength(PREFIX).toString(16)}\r\n${PREFIX}\r\n0\r\n\r\n`,
        );
        const got = await readAll(s, 800);
        assert.match(got, /^HTTP\/1\.1 200 /, got);
      }
      assert.deepEqual(parsed(from), [`GET /x ${JSON.stringify(PREFIX)}`, `DELETE /x ${JSON.stringify(PREFIX)}`]);
    } finally {
      await r.close();
    }
  });
});
