/**
 * CL.0 desync between the injecting proxy and a covered HTTP/1.1 upstream that ignores
 * `Content-Length` on a GET (as many real servers do on endpoints that expect no body: static files,
 * server-level redirects, some load balancers). The proxy keeps one keep-alive upstream connection per
 * tunnel and forwards a GET's body framed by its Content-Length; such an upstream reads the body as
 * the start of the NEXT request, and the next request the proxy writes on that connection (the
 * credential injected for it) completes it.
 *
 * Rig: ForwardProxy with LeaseEgress over a real vault on SQLite (grant: GET under /ok/ only), the SSRF
 * guard with a table resolver and the instrumented `loopbackOnly` connect step, an upstream on
 * 127.0.0.1 over TLS certified by a local test CA. Nothing leaves 127.0.0.1.
 */
import { randomBytes } from "node:crypto";
import * as tls from "node:tls";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";
import { loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";

const HOST = "api.cl0.example";
const CANARY = "ghp_" + randomBytes(18).toString("hex");
const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// --- a CL.0 upstream: Content-Length is honoured on POST only; a GET's body is the next request ---

interface Seen {
  method: string;
  url: string;
  auth: string;
  body: string;
}
const seen: Seen[] = [];
/** What POST /ok/comments stored (a public comment box: anyone may post, anyone may read). */
const comments: string[] = [];
const upCa = LocalCa.create({ permitted: [HOST] });

function serve(s: tls.TLSSocket): void {
  let buf = Buffer.alloc(0);
  const answer = (status: number, body: string, close = false): void => {
    s.write(`HTTP/1.1 ${status} X\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${close ? "connection: close\r\n" : ""}\r\n${body}`);
    if (close) s.end();
  };
  const step = (): void => {
    for (;;) {
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = buf.subarray(0, end).toString("latin1");
      const lines = head.split("\r\n");
      const m = /^([A-Z]+) (\S+) HTTP\/1\.1$/.exec(lines[0]!);
      if (m === null) {
        buf = Buffer.alloc(0);
        return answer(400, "bad request", true);
      }
      const headers = new Map<string, string>();
      for (const l of lines.slice(1)) {
        const i = l.indexOf(":");
        if (i > 0) headers.set(l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim());
      }
      // The CL.0 quirk: a GET has no body, whatever its Content-Length says.
      const len = m[1] === "POST" ? Number(headers.get("content-length") ?? "0") : 0;
      if (buf.length < end + 4 + len) return;
      const body = buf.subarray(end + 4, end + 4 + len).toString("latin1");
      buf = buf.subarray(end + 4 + len);
      seen.push({ method: m[1]!, url: m[2]!, auth: headers.get("authorization") ?? "", body });
      // Worst case: it also keeps the connection open after a request that said `Connection: close`.
      const close = false;
      if (m[1] === "POST" && m[2] === "/ok/comments") {
        comments.push(body);
        answer(201, "stored", close);
      } else if (m[1] === "GET" && m[2] === "/ok/comments") answer(200, comments.join("\n---\n"), close);
      else answer(200, "ok", close);
      if (close) return;
    }
  };
  s.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    step();
  });
  s.on("error", () => {});
}
const up = tls.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, serve);
await new Promise<void>((r) => up.listen(0, "127.0.0.1", r));
const upPort = (up.address() as AddressInfo).port;
after(() => new Promise<void>((r) => up.close(() => r())));

// --- the rig ------------------------------------------------------------------------------------

const POLICY = grant("cl0", ["bot"], ["github-token"], [HOST], 'paths = ["/ok/"]\nmethods = ["GET"]');

async function rig(): Promise<{ port: number; placeholder: string; connects: ConnectTo[]; close(): Promise<void> }> {
  const { vault } = await makeVault({ policy: POLICY });
  const admin = vault.admin();
  await admin.storeSecret({ name: "github-token", value: CANARY });
  const lease = await admin.requestLease({ agent: "bot", secret: "github-token", domains: [HOST] });
  const creds: ProxyCredential[] = [{ lease, secret: "global/github-token", placeholder: makePlaceholder(CANARY), value: CANARY, rule: { mode: "placeholder" } }];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict" });
  const guard = new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly(connects) });
  const port = await proxy.listen();
  egress.start();
  return {
    port,
    placeholder: creds[0]!.placeholder,
    connects,
    close: async () => {
      await proxy.close();
      await egress.close();
    },
  };
}

/** Sends `first` (a GET with a body), waits for its answer, then `second` on the same tunnel; returns what the agent read. */
async function twoInOneTunnel(port: number, first: string, second: string): Promise<string> {
  const s = await openTunnel(port, HOST, upPort);
  const got: Buffer[] = [];
  s.on("data", (d: Buffer) => got.push(d));
  s.write(first);
  await delay(400);
  s.write(second);
  await delay(600);
  s.destroy();
  return Buffer.concat(got).toString("latin1");
}

async function readComments(port: number, placeholder: string): Promise<string> {
  const s = await openTunnel(port, HOST, upPort);
  s.write(`GET /ok/comments HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${placeholder}\r\nConnection: close\r\n\r\n`);
  return readAll(s, 1500);
}

describe("CL.0 upstream: a GET's body smuggled onto the tunnel's keep-alive upstream connection", () => {
  test("header-prefix: the next granted request's head (the injected credential) completes a smuggled DELETE outside the grant's methods and paths", async () => {
    const r = await rig();
    const from = seen.length;
    try {
      const prefix = "DELETE /admin/repo HTTP/1.1\r\nX-Swallow: ";
      await twoInOneTunnel(
        r.port,
        `GET /ok/first HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: ${prefix.length}\r\n\r\n${prefix}`,
        `GET /ok/second HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.placeholder}\r\n\r\n`,
      );
      const bad = seen.slice(from).filter((q) => q.auth.includes(CANARY) && (q.method !== "GET" || !q.url.startsWith("/ok/")));
      assert.deepEqual(bad, [], `the upstream ran a request outside GET /ok/ with the real credential: ${JSON.stringify(seen.slice(from).map((q) => `${q.method} ${q.url}`))}`);
      assert.ok(r.connects.every((c) => c.host === "127.0.0.1"));
    } finally {
      await r.close();
    }
  });

  test("header-prefix from an HTTP/2 client (GET with DATA) to the HTTP/1.1 upstream: no smuggled DELETE runs with the credential", async () => {
    const r = await rig();
    const from = seen.length;
    try {
      const prefix = "DELETE /admin/repo HTTP/1.1\r\nX-Swallow: ";
      const s = await openTunnel(r.port, HOST, upPort, { alpn: "h2" });
      const session = http2.connect(`https://${HOST}`, { createConnection: () => s });
      session.on("error", () => {});
      const one = (headers: http2.OutgoingHttpHeaders, body?: string): Promise<void> =>
        new Promise((resolve) => {
          const req = session.request(headers, { endStream: body === undefined });
          req.on("data", () => {});
          req.on("close", () => resolve());
          req.on("error", () => resolve());
          if (body !== undefined) req.end(body);
        });
      await Promise.race([one({ ":method": "GET", ":path": "/ok/first", "content-length": String(prefix.length) }, prefix), delay(1500)]);
      await Promise.race([one({ ":method": "GET", ":path": "/ok/second", authorization: `Bearer ${r.placeholder}` }), delay(1500)]);
      session.destroy();
      const bad = seen.slice(from).filter((q) => q.auth.includes(CANARY) && (q.method !== "GET" || !q.url.startsWith("/ok/")));
      assert.deepEqual(bad, [], `the upstream ran a request outside GET /ok/ with the real credential: ${JSON.stringify(seen.slice(from).map((q) => `${q.method} ${q.url}`))}`);
    } finally {
      await r.close();
    }
  });

  test("capture: the next granted request (with the injected credential) becomes the body of a smuggled POST to a public comment box; read back cut one byte short, the scrubber does not mask it", async () => {
    const r = await rig();
    try {
      const second = `GET /ok/second HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.placeholder}\r\n\r\n`;
      // 1. Learn the layout of the head the proxy writes upstream: capture a request with no credential.
      const probe = `GET /ok/second HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${"P".repeat(CANARY.length)}\r\n\r\n`;
      const smuggle = (n: number): string => `POST /ok/comments HTTP/1.1\r\nContent-Length: ${n}\r\n\r\n`;
      const ask = (body: string): string => `GET /ok/first HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
      await twoInOneTunnel(r.port, ask(smuggle(200)), probe);
      const layout = comments.at(-1) ?? "";
      // (With the fix nothing is captured: the offset the unfixed proxy's layout gives is tried anyway.)
      const found = layout.indexOf("P".repeat(CANARY.length));
      const at = found > 0 ? found : `GET /ok/second HTTP/1.1\r\nhost: ${HOST}:${upPort}\r\nauthorization: Bearer `.length;
      // 2. The real capture: every byte of the head up to the credential's last character.
      await twoInOneTunnel(r.port, ask(smuggle(at + CANARY.length - 1)), second);
      const read = await readComments(r.port, r.placeholder);
      const leaked = CANARY.slice(0, -1);
      assert.ok(!read.includes(leaked), `the agent read back the real credential (all but its last character): ${JSON.stringify(read.slice(-200))}`);
      assert.ok(!comments.some((c) => c.includes(CANARY.slice(0, 12))), "the upstream stored a piece of the real credential where the agent can read it");
    } finally {
      await r.close();
    }
  });
});
