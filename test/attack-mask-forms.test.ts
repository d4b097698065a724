/**
 * Echoes of an injected credential that the response scrubber missed (review, 2026-12-07).
 *
 * Rig as test/attack-scrub.test.ts: ForwardProxy wired as `lessor run` wires it (LeaseEgress over a
 * real vault on SQLite, SSRF guard with a table resolver, instrumented loopback-only connect). The
 * upstreams are loopback HTTPS servers (HTTP/1.1 and HTTP/2) that echo what they received the way
 * common server code does. Nothing leaves 127.0.0.1.
 *
 * 1. A 9-character password injected with `mode = "basic"`, echoed as the Authorization header the
 *    upstream received (httpbin's /headers): `base64("admin:" + value)`, and `base64(value)`. The
 *    value's 12-character base64 core (alignment 0) is a form the docs say is masked (forms of 12
 *    characters and more); it is not, because encodedForms() pairs the value's cores with the
 *    placeholder's by list position and drops them all when the lists' lengths differ (the
 *    placeholder of a 9-character value is lengthened, so all of its cores pass the 12-character
 *    filter while two of the value's do not).
 * 2. A password with `&` and a quote echoed in XML text as every XML serializer writes text (Python's
 *    ElementTree / xml.sax.saxutils.escape, Java StAX writeCharacters, .NET XmlWriter.WriteString:
 *    only `&`, `<`, `>` escaped), or with `&apos;` (PHP htmlspecialchars ENT_QUOTES|ENT_HTML5 or
 *    ENT_XML1, Apache Commons escapeXml10, .NET SecurityElement.Escape).
 * 3. A password with `%` echoed in an HTTP/2 trailer `grpc-message`, percent-encoded as the gRPC
 *    spec says (only `%` and bytes outside 0x20–0x7E encoded; what grpc-go and grpc-java write).
 */
import { randomBytes } from "node:crypto";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress, type InjectionRule, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";
import { closeUpstreams, loopbackOnly, openTunnel, tableResolver } from "./proxy-harness.js";

const HOST = "api.mask.example";
const H2HOST = "h2.mask.example";

const alnum = (n: number): string => {
  const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  return [...randomBytes(n)].map((b) => abc[b % abc.length]).join("");
};

const upCa = LocalCa.create({ permitted: [HOST, H2HOST] });

/** XML text escaping (ElementTree, saxutils.escape, StAX, XmlWriter): & < > only. */
const xmlText = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
/** XML/HTML5 escaping with &apos; (htmlspecialchars ENT_QUOTES|ENT_HTML5, escapeXml10, SecurityElement.Escape). */
const xmlApos = (s: string): string => xmlText(s).replace(/"/g, "&quot;").replace(/'/g, "&apos;");
/** gRPC's grpc-message percent-encoding (PROTOCOL-HTTP2.md): % and bytes outside 0x20–0x7E as %XX. */
const grpcMessage = (s: string): string =>
  [...Buffer.from(s, "utf8")].map((b) => (b >= 0x20 && b <= 0x7e && b !== 0x25 ? String.fromCharCode(b) : "%" + b.toString(16).toUpperCase().padStart(2, "0"))).join("");

const up1 = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  req.resume();
  req.on("end", () => {
    const path = req.url!.split("?")[0]!;
    if (path === "/headers") {
      // httpbin's /headers: the request's headers as JSON.
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ headers: { Authorization: req.headers.authorization } }));
      return;
    }
    if (path === "/headers-php") {
      // A PHP API echoing the request's headers with json_encode's defaults (`/` written as `\/`), and a
      // redirect keeping the Authorization value in its query (percent-encoded).
      const auth = String(req.headers.authorization ?? "");
      res.writeHead(302, { "content-type": "application/json", location: `/login?auth=${encodeURIComponent(auth)}` });
      res.end(JSON.stringify({ Authorization: auth }).replace(/\//g, "\\/"));
      return;
    }
    if (path === "/whoami") {
      // An API that echoes the credential it decoded from Basic, base64 again (a session blob).
      const basic = String(req.headers.authorization ?? "").replace(/^Basic /, "");
      const pw = Buffer.from(basic, "base64").toString("utf8").split(":").slice(1).join(":");
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ session: Buffer.from(pw).toString("base64") }));
      return;
    }
    const pw = String(req.headers["x-pw"] ?? "");
    if (path === "/xml") {
      res.writeHead(403, { "content-type": "application/xml" });
      res.end(`<?xml version="1.0"?><Error><Code>InvalidKey</Code><Message>bad key ${xmlText(pw)}</Message></Error>`);
      return;
    }
    if (path === "/xml-apos") {
      res.writeHead(403, { "content-type": "text/html" });
      res.end(`<p>bad key ${xmlApos(pw)}</p>`);
      return;
    }
    res.writeHead(404);
    res.end();
  });
});
await new Promise<void>((r) => up1.listen(0, "127.0.0.1", r));
const port1 = (up1.address() as AddressInfo).port;

const up2 = http2.createSecureServer({ SNICallback: upCa.sniCallback, allowHTTP1: false });
up2.on("stream", (stream, h) => {
  stream.on("error", () => {});
  const pw = String(h["x-pw"] ?? "");
  // A gRPC server answering UNAUTHENTICATED with the key in its status message (Trailers-Only would be
  // headers; here a normal answer and the status in the trailers).
  stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
  stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "16", "grpc-message": grpcMessage(`invalid api key ${pw}`) }));
  stream.end();
});
await new Promise<void>((r) => up2.listen(0, "127.0.0.1", r));
const port2 = (up2.address() as AddressInfo).port;

after(async () => {
  await closeUpstreams(up1, up2);
});

const portOf = (host: string): number => (host === H2HOST ? port2 : port1);

interface Rig {
  port: number;
  ph: string;
  close(): Promise<void>;
}

async function rig(value: string, rule: InjectionRule): Promise<Rig> {
  const { vault } = await makeVault({ policy: grant("api", ["bot"], ["pw"], [HOST, H2HOST]) });
  const admin = vault.admin();
  await admin.storeSecret({ name: "pw", value });
  const lease = await admin.requestLease({ agent: "bot", secret: "pw", domains: [HOST, H2HOST] });
  const ph = makePlaceholder(value);
  const creds: ProxyCredential[] = [{ lease, secret: "global/pw", placeholder: ph, value, rule }];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: () => {} });
  const guard = new SsrfGuard({ ports: [port1, port2], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1", [H2HOST]: "127.0.0.1" }) });
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST, H2HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly() });
  const port = await proxy.listen();
  return {
    port,
    ph,
    close: async () => {
      await proxy.close();
      await egress.close();
    },
  };
}

async function h1(r: Rig, path: string, headers: http.OutgoingHttpHeaders = {}): Promise<{ status: number; body: string }> {
  const s = await openTunnel(r.port, HOST, portOf(HOST), { alpn: "http/1.1" });
  return await new Promise((resolve, reject) => {
    const req = http.request({ createConnection: () => s, host: HOST, path, headers: { connection: "close", ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (d: Buffer) => chunks.push(d));
      res.on("end", () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString("utf8") }));
    });
    req.on("error", reject);
    req.end();
  });
}

async function h2Trailers(r: Rig, headers: http2.OutgoingHttpHeaders): Promise<http2.IncomingHttpHeaders> {
  const s = await openTunnel(r.port, H2HOST, portOf(H2HOST), { alpn: "h2" });
  const session = http2.connect(`https://${H2HOST}`, { createConnection: () => s });
  session.on("error", () => {});
  try {
    return await new Promise((resolve, reject) => {
      const req = session.request({ ":method": "POST", ":path": "/pkg.Svc/Call", "content-type": "application/grpc", te: "trailers", ...headers });
      let trailers: http2.IncomingHttpHeaders = {};
      req.on("trailers", (t) => (trailers = t));
      req.on("data", () => {});
      req.on("end", () => resolve(trailers));
      req.on("error", reject);
      req.end();
    });
  } finally {
    session.destroy();
  }
}

test("a 9-character Basic password echoed in its Authorization header (base64 of admin:value, alignment 0) comes back masked", async () => {
  const PW = "Q" + alnum(8); // 9 characters: a short password, as many Basic APIs have
  const r = await rig(PW, { mode: "basic", username: "admin" });
  try {
    const a = await h1(r, "/headers");
    assert.equal(a.status, 200);
    const auth = String((JSON.parse(a.body) as { headers: { Authorization: string } }).headers.Authorization);
    assert.match(auth, /^Basic /);
    const decoded = Buffer.from(auth.slice(6), "base64").toString("latin1");
    assert.ok(!decoded.includes(PW), `the agent decoded the real password from the echoed Basic pair: ${JSON.stringify(decoded)} (value ${PW})`);

    const b = await h1(r, "/whoami");
    const session = (JSON.parse(b.body) as { session: string }).session;
    assert.ok(!Buffer.from(session, "base64").toString("latin1").includes(PW), `base64(value), 12 characters, came back unmasked: ${session}`);
  } finally {
    await r.close();
  }
});

test("a password with & and a quote echoed in XML text (only & < > escaped) or with &apos; comes back masked", async () => {
  const PW = `Tr0ub4dor'&3"xY${alnum(8)}`;
  const r = await rig(PW, { mode: "header", header: "x-pw" });
  try {
    const a = await h1(r, "/xml");
    assert.equal(a.status, 403);
    assert.ok(!a.body.includes(xmlText(PW)), `XML text escaping of the value came back unmasked: ${a.body}`);
    const b = await h1(r, "/xml-apos");
    assert.ok(!b.body.includes(xmlApos(PW)), `&apos; escaping of the value came back unmasked: ${b.body}`);
  } finally {
    await r.close();
  }
});

test("a password with % echoed in an HTTP/2 grpc-message trailer (gRPC's percent-encoding) comes back masked", async () => {
  const PW = `pa%ss w0rd{${alnum(10)}}`;
  const r = await rig(PW, { mode: "header", header: "x-pw" });
  try {
    const t = await h2Trailers(r, {});
    const msg = String(t["grpc-message"] ?? "");
    assert.ok(msg.length > 0, "the trailer came");
    assert.ok(!decodeURIComponent(msg).includes(PW), `the grpc-message trailer decodes to the real value: ${msg}`);
  } finally {
    await r.close();
  }
});

test("a Basic pair echoed by PHP's json_encode (`/` as `\\/` inside the base64) or percent-encoded in a Location comes back masked", async () => {
  // A password with symbols whose Basic pair's base64 holds `/` and `+` in the value's part.
  const PW = "ib?Y6~~ZD*?gRssq";
  const r = await rig(PW, { mode: "basic", username: "admin" });
  try {
    const s = await openTunnel(r.port, HOST, portOf(HOST), { alpn: "http/1.1" });
    const a = await new Promise<{ body: string; location: string }>((resolve, reject) => {
      const req = http.request({ createConnection: () => s, host: HOST, path: "/headers-php", headers: { connection: "close" } }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (d: Buffer) => chunks.push(d));
        res.on("end", () => resolve({ body: Buffer.concat(chunks).toString("utf8"), location: String(res.headers.location) }));
      });
      req.on("error", reject);
      req.end();
    });
    const auth = String((JSON.parse(a.body) as { Authorization: string }).Authorization);
    assert.match(auth, /^Basic /);
    assert.ok(!Buffer.from(auth.slice(6), "base64").toString("latin1").includes(PW), `the PHP-escaped Basic pair decodes to the real password: ${a.body}`);
    const q = decodeURIComponent(new URL(a.location, "https://x").searchParams.get("auth") ?? "");
    assert.ok(!Buffer.from(q.replace(/^Basic /, ""), "base64").toString("latin1").includes(PW), `the percent-encoded Basic pair in Location decodes to the real password: ${a.location}`);
  } finally {
    await r.close();
  }
});
