/**
 * The policy language and its decisions attacked: domain spoofing and path tricks against the core
 * decision (a real vault on SQLite, test/helpers.ts) and against the injecting proxy's per-request
 * check (a real ForwardProxy with TLS on both sides, loopback upstreams, LeaseEgress as `lessor run`
 * wires it). Names resolve through a fixed table to 127.0.0.1 and the connect step refuses anything
 * else (test/proxy-harness.ts loopbackOnly), so no packet leaves loopback.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { createMemoryStore } from "../src/store/memory.js";
import { parsePolicy, type Policy } from "../src/vault/policy.js";
import { Vault } from "../src/vault/vault.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { canonicalRequestPath } from "../src/vault/http-path.js";
import { agent, codeOf, grant, hexKey, makeVault } from "./helpers.js";
import { closeUpstreams, loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";

const HOST = "api.pol.example";
const H2HOST = "h2.pol.example";
const TOK = "ghp_" + "POLcanary0123456789abcdefghijklmnopqrs";

// --- upstreams: record the request target exactly as it arrived ---------------------------------------

interface Seen {
  method: string;
  url: string;
  auth: string;
}
const seen: Seen[] = [];
const upCa = LocalCa.create({ permitted: [HOST, H2HOST] });

const up1 = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  req.resume();
  req.on("end", () => {
    seen.push({ method: req.method!, url: req.url!, auth: String(req.headers.authorization ?? "") });
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
  });
});
// A WebSocket handshake: recorded, answered 101 and closed (the test reads the target only).
up1.on("upgrade", (req, socket) => {
  seen.push({ method: `${req.method!} upgrade`, url: req.url!, auth: String(req.headers.authorization ?? "") });
  socket.end("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
});
await new Promise<void>((r) => up1.listen(0, "127.0.0.1", r));
const port1 = (up1.address() as AddressInfo).port;

const up2 = http2.createSecureServer({ SNICallback: upCa.sniCallback, allowHTTP1: false });
up2.on("stream", (stream, h) => {
  stream.on("error", () => {});
  stream.resume();
  stream.on("end", () => {
    seen.push({ method: String(h[":method"]), url: String(h[":path"]), auth: String(h.authorization ?? "") });
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

// --- the rig ----------------------------------------------------------------------------------------

const PROXY_POLICY = grant("api", ["bot"], ["tok"], [HOST, H2HOST], 'paths = ["/ok/"]\nmethods = ["GET"]');

interface Rig {
  port: number;
  ph: string;
  connects: ConnectTo[];
  audit(): Promise<string>;
  close(): Promise<void>;
}

async function rig(policy = PROXY_POLICY): Promise<Rig> {
  return rigOn((await makeVault({ policy })).vault);
}

async function rigOn(vault: Vault): Promise<Rig> {
  const admin = vault.admin();
  await admin.storeSecret({ name: "tok", value: TOK });
  const lease = await admin.requestLease({ agent: "bot", secret: "tok", domains: [HOST, H2HOST] });
  const ph = makePlaceholder(TOK);
  const creds: ProxyCredential[] = [{ lease, secret: "global/tok", placeholder: ph, value: TOK, rule: { mode: "placeholder" } }];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict" });
  const guard = new SsrfGuard({ ports: [port1, port2], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1", [H2HOST]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST, H2HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly(connects) });
  const port = await proxy.listen();
  return {
    port,
    ph,
    connects,
    audit: async () => JSON.stringify(await admin.auditQuery({ limit: 10_000 })),
    close: async () => {
      await proxy.close();
      await egress.close();
    },
  };
}

async function rawH1(r: Rig, bytes: string): Promise<string> {
  const s = await openTunnel(r.port, HOST, port1);
  s.write(bytes);
  return readAll(s, 3000);
}

const statusOf = (answer: string): number => Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0);

async function h2Get(r: Rig, path: string, auth: string): Promise<number> {
  const s = await openTunnel(r.port, H2HOST, port2, { alpn: "h2" });
  const session = http2.connect(`https://${H2HOST}`, { createConnection: () => s });
  session.on("error", () => {});
  try {
    return await new Promise<number>((resolve, reject) => {
      const req = session.request({ ":method": "GET", ":path": path, authorization: auth });
      let status = 0;
      req.on("response", (h) => (status = Number(h[":status"])));
      req.on("data", () => {});
      req.on("end", () => resolve(status));
      req.on("error", reject);
    });
  } finally {
    session.destroy();
  }
}

/** The path a WHATWG-URL-based upstream (new URL(req.url, base), as Node services commonly do) routes on. */
const routedPath = (url: string): string => new URL(url, `https://${HOST}`).pathname;

// --- the proxy forwards what it matched ---------------------------------------------------------------

test("under a paths rule the upstream never gets, with the credential, a path other than the canonical one the vault matched (dot segments, %2e, //; HTTP/1.1 and HTTP/2)", async () => {
  const r = await rig();
  try {
    // Each canonicalises into "/ok/…" (so the vault allows the use), but as sent is outside "/ok/".
    const attacks = ["/admin/../ok/x", "/admin/%2e%2e/ok/x", "//ok/admin"];
    const broken: string[] = [];
    for (const path of attacks) {
      const canonical = canonicalRequestPath(path);
      assert.ok(canonical.path !== null && canonical.path.startsWith("/ok/"), `${path} canonicalises under /ok/`);
      const before = seen.length;
      const answer = await rawH1(r, `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\nConnection: close\r\n\r\n`);
      const got = seen.slice(before);
      if (statusOf(answer) !== 200 || got.length === 0) continue; // refused: the promise holds for this one
      const up = got[0]!;
      if (up.url !== canonical.path) broken.push(`h1 ${path} -> upstream got ${JSON.stringify(up.url)} (routes as ${routedPath(up.url)}) with ${up.auth === `Bearer ${TOK}` ? "the real credential" : "no credential"}`);
    }
    for (const path of attacks) {
      const canonical = canonicalRequestPath(path);
      const before = seen.length;
      const status = await h2Get(r, path, `Bearer ${r.ph}`);
      const got = seen.slice(before);
      if (status !== 200 || got.length === 0) continue;
      const up = got[0]!;
      if (up.url !== canonical.path) broken.push(`h2 ${path} -> upstream got ${JSON.stringify(up.url)} (routes as ${routedPath(up.url)}) with ${up.auth === `Bearer ${TOK}` ? "the real credential" : "no credential"}`);
    }
    assert.deepEqual(
      broken,
      [],
      'docs/policy.md:220: "The injecting proxy forwards the canonical path it matched, so the upstream server sees exactly the path the grant allowed" (paths = ["/ok/"]) does not hold:\n' + broken.join("\n"),
    );
  } finally {
    await r.close();
  }
});

test("with methods = [\"GET\"] and paths = [\"/ok/\"], a GET /ok/… carrying a method-override or URL-override header never goes upstream with the credential", async () => {
  const r = await rig();
  try {
    // Headers that common frameworks read as the real method (Rails/Rack, Express method-override,
    // Laravel, Google APIs) or the real path (IIS URL Rewrite, older Symfony/Zend): the upstream
    // performs DELETE /admin while the grant said GET under /ok/.
    const overrides = [
      "X-HTTP-Method-Override: DELETE",
      "X-HTTP-Method: DELETE",
      "X-Method-Override: DELETE",
      "X-Original-URL: /admin/delete-everything",
      "X-Rewrite-URL: /admin/delete-everything",
    ];
    const through: string[] = [];
    for (const h of overrides) {
      const before = seen.length;
      const answer = await rawH1(r, `GET /ok/x HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\n${h}\r\nConnection: close\r\n\r\n`);
      const got = seen.slice(before);
      if (statusOf(answer) === 200 && got.some((s) => s.auth === `Bearer ${TOK}`)) through.push(h);
    }
    assert.deepEqual(
      through,
      [],
      'docs/proxy.md:168 ("it cannot use a credential against a host, method or path its grant does not name") and docs/policy.md ("methods and paths restrict what the HTTP proxy will send with the secret"): these override headers went upstream with the real credential on a GET-only, /ok/-only grant:\n' +
        through.join("\n"),
    );
    // The `_method` query parameter (Rails, Laravel, Express's method-override): refused unless it
    // names the one method allowed, in any case or encoding.
    const queries = ["/ok/x?_method=DELETE", "/ok/x?a=1&_METHOD=delete", "/ok/x?%5Fmethod=PUT", "/ok/x?_method=GET&_method=DELETE"];
    const viaQuery: string[] = [];
    for (const q of queries) {
      const before = seen.length;
      const answer = await rawH1(r, `GET ${q} HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\nConnection: close\r\n\r\n`);
      if (statusOf(answer) !== 403 || seen.slice(before).some((x) => x.auth === `Bearer ${TOK}`)) viaQuery.push(`${q}: ${statusOf(answer)}`);
    }
    assert.deepEqual(viaQuery, [], "a _method query parameter naming a method the grant does not allow went upstream with the credential");
    const allowed = await rawH1(r, `GET /ok/x?_method=get HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(allowed), 200, "a _method naming the allowed method passes");
  } finally {
    await r.close();
  }
});

test("methods through the proxy: HEAD is not GET, and lower-case, unknown or overlong methods never reach the upstream with the credential (HTTP/1.1 and HTTP/2)", async () => {
  const r = await rig();
  try {
    const before = seen.length;
    for (const m of ["HEAD", "OPTIONS", "get", "Get", "FOO", "G".repeat(40), "GET\u0000", "DELETE"]) {
      const answer = await rawH1(r, `${m} /ok/x HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\nConnection: close\r\n\r\n`);
      const st = statusOf(answer);
      assert.ok(st === 0 || st === 400 || st === 403 || st === 501, `h1 ${JSON.stringify(m)}: ${st}`);
    }
    for (const m of ["HEAD", "get", "FOO", "PATCH", "G".repeat(40)]) {
      const s = await openTunnel(r.port, H2HOST, port2, { alpn: "h2" });
      const session = http2.connect(`https://${H2HOST}`, { createConnection: () => s });
      session.on("error", () => {});
      const st = await new Promise<number>((resolve) => {
        const req = session.request({ ":method": m, ":path": "/ok/x", authorization: `Bearer ${r.ph}` });
        let status = 0;
        req.on("response", (h) => (status = Number(h[":status"])));
        req.on("data", () => {});
        req.on("end", () => resolve(status));
        req.on("error", () => resolve(-1));
        req.on("close", () => resolve(status));
      });
      session.destroy();
      assert.ok(st === -1 || st === 0 || st === 403 || st === 501 || st === 400, `h2 ${JSON.stringify(m)}: ${st}`);
    }
    assert.deepEqual(seen.slice(before), [], "nothing reached an upstream");
    // The one allowed method still works.
    const ok = await rawH1(r, `GET /ok/x HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(ok), 200);
    assert.ok(!(await r.audit()).includes(TOK), "the audit never holds the credential");
  } finally {
    await r.close();
  }
});

test("CONNECT names: case and a trailing dot name the covered host; confusables, fullwidth or ideographic dots, IPv4 odd forms, IPv6 zone ids and escapes are never intercepted nor connected", async () => {
  const { connectRaw } = await import("./proxy-harness.js");
  const r = await rig();
  try {
    for (const a of [`API.POL.EXAMPLE:${port1}`, `api.pol.example.:${port1}`]) {
      const { raw, head } = await connectRaw(r.port, a);
      raw.destroy();
      assert.match(head, /^HTTP\/1\.1 200 /, `${a}: ${head}`);
    }
    const refused = [
      `ap\u0456.pol.example:${port1}`, // Cyrillic i
      `api\uff0epol\uff0eexample:${port1}`,
      `api\u3002pol\u3002example:${port1}`,
      `api.pol.example.evil.net:${port1}`,
      `evil-api.pol.example:${port1}`,
      `api.pol.example%2e:${port1}`,
      `api%2epol.example:${port1}`,
      `0x7f.1:${port1}`,
      `2130706433:${port1}`,
      `0177.0.0.1:${port1}`,
      `[fe80::1%25lo]:${port1}`,
      `[::ffff:127.0.0.1]:${port1}`,
      `api.pol.example:${port1}:${port1}`,
    ];
    for (const a of refused) {
      const before = r.connects.length;
      const { raw, head } = await connectRaw(r.port, a);
      raw.destroy();
      assert.doesNotMatch(head, /^HTTP\/1\.1 200 /, `${JSON.stringify(a)} must not be tunnelled: ${head}`);
      assert.equal(r.connects.length, before, `${JSON.stringify(a)}: nothing connected`);
    }
  } finally {
    await r.close();
  }
});

// --- what goes upstream under a paths rule, and the override headers --------------------------------

/** The problem+json body of a raw HTTP/1.1 answer, parsed. */
const problemOf = (answer: string): { reason?: string; detail?: string } => {
  assert.match(answer, /\r\ncontent-type: application\/problem\+json/i, answer.slice(0, 200));
  return JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4)) as { reason?: string; detail?: string };
};

const wsHandshake = (path: string, ph: string): string =>
  `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${ph}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`;

test("under a paths rule the upstream gets the canonical path the vault matched, the query as sent; a path that drops segments is refused 400 saying which path to send (HTTP/1.1, HTTP/2, WebSocket)", async () => {
  const r = await rig();
  try {
    const before = seen.length;
    // Only the spelling differs: forwarded in the canonical spelling, the query untouched.
    const spelled = await rawH1(r, `GET /ok/%78?q=/../admin&b=%2e%2e HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(spelled), 200, spelled.slice(0, 200));
    assert.equal(seen.at(-1)!.url, "/ok/x?q=/../admin&b=%2e%2e");
    assert.equal(statusOf(await rawH1(r, `GET /ok/a|b HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\nConnection: close\r\n\r\n`)), 200);
    assert.equal(seen.at(-1)!.url, "/ok/a%7Cb");
    assert.equal(await h2Get(r, "/ok/%78", `Bearer ${r.ph}`), 200);
    assert.equal(seen.at(-1)!.url, "/ok/x");
    const sent = seen.length;

    // Segments dropped (inside the grant once resolved): refused, nothing upstream, the canonical path named.
    for (const path of ["/admin/../ok/x", "/admin/%2e%2e/ok/x", "/ok/./x", "//ok/x", "/ok//x"]) {
      const answer = await rawH1(r, `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\nConnection: close\r\n\r\n`);
      assert.equal(statusOf(answer), 400, `${path}: ${answer.slice(0, 200)}`);
      const p = problemOf(answer);
      assert.equal(p.reason, "request_path");
      assert.match(p.detail ?? "", /send "\/ok\/x" instead/);
      assert.equal(await h2Get(r, path, `Bearer ${r.ph}`), 400, `h2 ${path}`);
    }
    // A WebSocket handshake follows the same rule.
    const ws = await rawH1(r, wsHandshake("/admin/%2e%2e/ok/ws", r.ph));
    assert.equal(statusOf(ws), 400, ws.slice(0, 200));
    assert.equal(problemOf(ws).reason, "request_path");
    assert.equal(seen.length, sent, "no refused request reached the upstream");
    assert.match(await rawH1(r, wsHandshake("/ok/%77s", r.ph)), /^HTTP\/1\.1 101 /);
    assert.equal(seen.at(-1)!.url, "/ok/ws");
    assert.equal(seen.at(-1)!.auth, `Bearer ${TOK}`);
    assert.ok(seen.slice(before).every((s) => s.url.startsWith("/ok/")), JSON.stringify(seen.slice(before)));
    // A path outside the grant is still the vault's refusal (403), resolved or not.
    assert.equal(statusOf(await rawH1(r, `GET /ok/../admin HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\nConnection: close\r\n\r\n`)), 403);
  } finally {
    await r.close();
  }
});

test("override headers: one naming an allowed method passes; HTTP/2 and any case are refused alike; a paths-only rule lets a method override through and refuses a URL override", async () => {
  const r = await rig();
  try {
    const ok = await rawH1(r, `GET /ok/x HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\nx-http-method-override: get\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(ok), 200, ok.slice(0, 200));
    for (const h of ["x-HTTP-method: DELETE", "X-HTTP-Method-Override: GET, DELETE", "X-Method-Override: ", "x-original-url: /ok/x"]) {
      const before = seen.length;
      const answer = await rawH1(r, `GET /ok/x HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\n${h}\r\nConnection: close\r\n\r\n`);
      assert.equal(statusOf(answer), 403, `${h}: ${answer.slice(0, 200)}`);
      const p = problemOf(answer);
      assert.equal(p.reason, "override_header");
      assert.match(p.detail ?? "", /X-(HTTP-Method|Method-Override|Original-URL)/i);
      assert.equal(seen.length, before, h);
    }
    for (const [name, value] of [["x-http-method-override", "DELETE"], ["x-rewrite-url", "/admin/"]] as const) {
      const s = await openTunnel(r.port, H2HOST, port2, { alpn: "h2" });
      const session = http2.connect(`https://${H2HOST}`, { createConnection: () => s });
      session.on("error", () => {});
      const st = await new Promise<number>((resolve) => {
        const req = session.request({ ":method": "GET", ":path": "/ok/x", authorization: `Bearer ${r.ph}`, [name]: value });
        let status = 0;
        req.on("response", (h) => (status = Number(h[":status"])));
        req.on("data", () => {});
        req.on("end", () => resolve(status));
        req.on("error", () => resolve(-1));
      });
      session.destroy();
      assert.equal(st, 403, `h2 ${name}`);
    }
  } finally {
    await r.close();
  }
  const paths = await rig(grant("api", ["bot"], ["tok"], [HOST, H2HOST], 'paths = ["/ok/"]'));
  try {
    const m = await rawH1(paths, `POST /ok/x HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${paths.ph}\r\nX-HTTP-Method-Override: DELETE\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(m), 200, m.slice(0, 200));
    assert.equal(statusOf(await rawH1(paths, `GET /ok/x HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${paths.ph}\r\nX-Rewrite-URL: /ok/y\r\nConnection: close\r\n\r\n`)), 403);
  } finally {
    await paths.close();
  }
});

test("a reload that adds methods and paths to the rule binds the proxy too: the canonical path goes upstream, dropped segments and override headers are refused", async () => {
  const open = grant("api", ["bot"], ["tok"], [HOST, H2HOST]);
  let policy: Policy = parsePolicy(open, "p.toml");
  const vault = await Vault.open({ store: createMemoryStore(), keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!, policy: async () => policy });
  const r = await rigOn(vault);
  try {
    policy = parsePolicy(PROXY_POLICY, "p.toml");
    await vault.admin().reloadPolicy();
    const get = (path: string, extra = ""): Promise<string> => rawH1(r, `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph}\r\n${extra}Connection: close\r\n\r\n`);
    assert.equal(statusOf(await get("/ok/%78")), 200);
    assert.equal(seen.at(-1)!.url, "/ok/x");
    const before = seen.length;
    assert.equal(statusOf(await get("/admin/../ok/x")), 400);
    assert.equal(statusOf(await get("/ok/x", "X-HTTP-Method-Override: DELETE\r\n")), 403);
    assert.equal(statusOf(await get("/ok/x", "X-Original-URL: /admin/\r\n")), 403);
    assert.equal(seen.length, before, "nothing went upstream");
  } finally {
    await r.close();
    await vault.close();
  }
});
