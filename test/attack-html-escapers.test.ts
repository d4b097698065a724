/**
 * An honest upstream quotes the request's credential in an HTML page escaped by one of the most common
 * template engines (Mustache.js, Handlebars, ASP.NET Core's HtmlEncoder.Default). Each escapes
 * characters a base64 key holds (`/`, `=`, `+`) with numeric entities the masking's HTML forms
 * (src/base/text-forms.ts HTML_FORMS) did not list, so the agent unescaped the page and read the value
 * (found by a red-team helper). Real vault, real proxy, loopback HTTPS upstream.
 */
import { randomBytes } from "node:crypto";
import * as http from "node:http";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";
import { loopbackOnly, openTunnel, tableResolver } from "./proxy-harness.js";

const HOST = "api.html.example";
// A base64 key (AWS secret access key / Azure storage key shape): '/', '+' and '=' padding.
const b64 = randomBytes(27).toString("base64").replace(/[+/]/g, "A");
const VALUE = `${b64.slice(0, 12)}/${b64.slice(12, 24)}+${b64.slice(24)}Zq==`;

const esc = (map: Record<string, string>) => (s: string) => s.replace(/[\s\S]/g, (c) => map[c] ?? c);
const ESCAPERS: Record<string, (s: string) => string> = {
  // mustache.js entityMap (also Hogan): / ` = as hex entities
  mustache: esc({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "/": "&#x2F;", "`": "&#x60;", "=": "&#x3D;" }),
  // Handlebars.Utils.escapeExpression
  handlebars: esc({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;", "`": "&#x60;", "=": "&#x3D;" }),
  // ASP.NET Core Razor: System.Text.Encodings.Web.HtmlEncoder.Default (`+` and `'` as hex entities)
  dotnet: esc({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;", "+": "&#x2B;" }),
};
const unescape = (s: string): string =>
  s.replace(/&#x([0-9a-f]+);/gi, (_m, h) => String.fromCharCode(parseInt(h, 16))).replace(/&#([0-9]+);/g, (_m, d) => String.fromCharCode(Number(d)))
    .replace(/&quot;/g, '"').replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");

const upCa = LocalCa.create({ permitted: [HOST] });
const up = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  const seen = String(req.headers["authorization"] ?? "").replace(/^Bearer /, "");
  const f = ESCAPERS[(req.url ?? "/").slice(1)] ?? ((s: string) => s);
  res.writeHead(401, { "content-type": "text/html; charset=utf-8" });
  res.end(`<html><body><p>Invalid token: <code>${f(seen)}</code></p></body></html>`);
});
await new Promise<void>((r) => up.listen(0, "127.0.0.1", () => r()));
const upPort = (up.address() as AddressInfo).port;
after(async () => {
  up.closeAllConnections();
  await new Promise<void>((r) => up.close(() => r()));
});

async function rig(): Promise<{ port: number; close(): Promise<void> }> {
  const { vault } = await makeVault({ policy: grant("api", ["bot"], ["key"], [HOST]) });
  const admin = vault.admin();
  await admin.storeSecret({ name: "key", value: VALUE });
  const lease = await admin.requestLease({ agent: "bot", secret: "key", domains: [HOST] });
  const creds: ProxyCredential[] = [{ lease, secret: "global/key", placeholder: makePlaceholder(VALUE), value: VALUE, rule: { mode: "bearer" } }];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: () => {} });
  const guard = new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1" }) });
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly() });
  const port = await proxy.listen();
  return { port, close: async () => { await proxy.close(); await egress.close(); } };
}

async function get(port: number, path: string): Promise<string> {
  const s = await openTunnel(port, HOST, upPort, { alpn: "http/1.1" });
  return await new Promise((resolve, reject) => {
    const req = http.request({ createConnection: () => s, host: HOST, path, headers: { connection: "close" } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (d: Buffer) => chunks.push(d));
      res.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    });
    req.on("error", reject);
    req.end();
  });
}

for (const name of Object.keys(ESCAPERS)) {
  test(`a bearer value quoted in an HTML page escaped by ${name} is masked`, async () => {
    const r = await rig();
    try {
      const page = await get(r.port, `/${name}`);
      assert.ok(!unescape(page).includes(VALUE), `the agent unescaped the real value from the ${name} page: ${page}`);
    } finally {
      await r.close();
    }
  });
}
