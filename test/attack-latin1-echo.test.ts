/**
 * A hostile agent reads back a proxy-only credential whose value holds Latin-1 letters ("ü", "ß",
 * "é", "£": U+00A0 to U+00FF), found by a red-team helper. Sent in a header such a character goes as
 * one byte; an honest upstream that echoes the header's bytes as received (Go's
 * `w.Write([]byte(r.Header.Get(...)))`, a raw error page) answers with bytes that are not UTF-8, and
 * the proxy's masking of answers (the value's UTF-8 and its encodings) and lessor mcp's last guard did
 * not match them: the agent decoded the real value. So did an ISO-8859-1 answer to the same value
 * sent with mode = "basic", in a query or in a body. Now no value outside ASCII is injected
 * (src/base/value-fit.ts): it is refused before its use (502, invalid_request, nothing upstream).
 * Real vault (SQLite), real proxy and loopback HTTPS upstreams; real `lessor mcp` over stdio.
 */
import { randomBytes } from "node:crypto";
import * as http from "node:http";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { after, test } from "node:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { BIN } from "./cli-harness.js";
import assert from "node:assert/strict";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress, type InjectionRule, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";
import { loopbackOnly, openTunnel, tableResolver } from "./proxy-harness.js";

const HOST = "api.latin1.example";
const alnum = (n: number): string => [...randomBytes(n)].map((b) => "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"[b % 62]).join("");
const PWD = "Grüße-aus-München-CANARY-" + alnum(12); // a password with Latin-1 letters (all ≤ U+00FF)

const upCa = LocalCa.create({ permitted: [HOST] });
const up = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (d: Buffer) => chunks.push(d));
  req.on("end", () => answer(req, res, Buffer.concat(chunks)));
});

/** The upstream's answers: honest ones, each echoing what it got in its own way. */
function answer(req: http.IncomingMessage, res: http.ServerResponse, body: Buffer): void {
  const u = new URL(req.url!, "https://x");
  const auth = String(req.headers["authorization"] ?? "");
  if (["/basic", "/query", "/body", "/basic-latin1"].includes(u.pathname)) {
    let got = "";
    if (u.pathname === "/basic") got = Buffer.from(auth.replace(/^Basic /, ""), "base64").toString("utf8").split(":").slice(1).join(":");
    if (u.pathname === "/query") got = u.searchParams.get("key") ?? "";
    if (u.pathname === "/body") got = new URLSearchParams(body.toString("utf8")).get("password") ?? "";
    if (u.pathname === "/basic-latin1") {
      // Basic decoded as ISO-8859-1 (Tomcat's BasicAuthenticator default), echoed as UTF-8 JSON.
      got = Buffer.from(auth.replace(/^Basic /, ""), "base64").toString("latin1").split(":").slice(1).join(":");
      res.writeHead(401, { "content-type": "application/json; charset=utf-8" });
      res.end(JSON.stringify({ error: "bad credentials", password: got }));
      return;
    }
    // An error page in a servlet's default encoding (ISO-8859-1), quoting what it could not accept.
    res.writeHead(401, { "content-type": "text/html; charset=ISO-8859-1" });
    res.end(Buffer.from(`<p>rejected credential: ${got}</p>`, "latin1"));
    return;
  }
  const xpw = String(req.headers["x-pw"] ?? "");
  const seen = xpw || auth.replace(/^Bearer /, "");
  if (req.url === "/echo-header") {
    // Reflect what was received into a response header (as many APIs reflect a request id, a token
    // in WWW-Authenticate's error, CORS headers...). Node writes header strings as latin1.
    res.setHeader("x-echo", seen);
    res.setHeader("www-authenticate", `Bearer error="invalid_token", token="${seen}"`);
    res.end("ok");
    return;
  }
  if (req.url === "/echo-body") {
    // Echo the header's bytes as received (Go's w.Write([]byte(r.Header.Get(...)))).
    res.setHeader("content-type", "application/octet-stream");
    res.end(Buffer.concat([Buffer.from("you sent: "), Buffer.from(seen, "latin1"), Buffer.from("\n")]));
    return;
  }
  res.end("ok");
}
await new Promise<void>((r) => up.listen(0, "127.0.0.1", () => r()));
const upPort = (up.address() as AddressInfo).port;
after(async () => {
  up.closeAllConnections();
  await new Promise<void>((r) => up.close(() => r()));
});

async function rig(rule: InjectionRule): Promise<{ port: number; ph: string; close(): Promise<void> }> {
  const { vault } = await makeVault({ policy: grant("api", ["bot"], ["pwd"], [HOST]) });
  const admin = vault.admin();
  await admin.storeSecret({ name: "pwd", value: PWD });
  const lease = await admin.requestLease({ agent: "bot", secret: "pwd", domains: [HOST] });
  const ph = makePlaceholder(PWD);
  const creds: ProxyCredential[] = [{ lease, secret: "global/pwd", placeholder: ph, value: PWD, rule }];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: () => {} });
  const guard = new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1" }) });
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly() });
  const port = await proxy.listen();
  return { port, ph, close: async () => { await proxy.close(); await egress.close(); } };
}

async function get(port: number, path: string, headers: http.OutgoingHttpHeaders, method = "GET", body?: string): Promise<{ headers: http.IncomingHttpHeaders; rawHeaders: string[]; body: Buffer }> {
  const s = await openTunnel(port, HOST, upPort, { alpn: "http/1.1" });
  return await new Promise((resolve, reject) => {
    const req = http.request({ createConnection: () => s, host: HOST, method, path, headers: { connection: "close", ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (d: Buffer) => chunks.push(d));
      res.on("end", () => resolve({ headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks) }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** The real value, as the agent would decode the bytes it got (latin1: one byte per character). */
function holdsValue(text: string): boolean {
  return text.includes(PWD);
}

for (const [label, rule, hdr] of [
  ["placeholder in X-PW", { mode: "placeholder" } as InjectionRule, (ph: string) => ({ "x-pw": ph })],
  ["mode = bearer", { mode: "bearer" } as InjectionRule, (_ph: string) => ({})],
] as const) {
  test(`a Latin-1 value (${label}) reflected into a response header is not read back`, async () => {
    const r = await rig(rule);
    try {
      const a = await get(r.port, "/echo-header", hdr(r.ph));
      const heads = a.rawHeaders.join("\n");
      assert.ok(!holdsValue(heads), `the agent read the real value from a reflected response header: ${JSON.stringify(a.headers["x-echo"])}`);
    } finally {
      await r.close();
    }
  });

  test(`a Latin-1 value (${label}) echoed as raw bytes in the body is not read back: the request is refused before its use`, async () => {
    const r = await rig(rule);
    try {
      const a = await get(r.port, "/echo-body", hdr(r.ph));
      const text = a.body.toString("latin1");
      assert.ok(!holdsValue(text), `the agent read the real value from the echoed body: ${JSON.stringify(text)}`);
      assert.match(text, /outside ASCII, which lessor does not inject/, text);
      assert.ok(!text.includes(PWD.slice(0, 6)), "the refusal quotes the value");
    } finally {
      await r.close();
    }
  });
}

// Where the refusal of a value in a header sends it (mode = "basic", a query, a body), an honest
// upstream answering in ISO-8859-1 (a servlet's default), or decoding Basic as ISO-8859-1 and echoing
// it as UTF-8, gave the value back in forms the masking does not model: no value outside ASCII is
// injected anywhere (src/base/value-fit.ts).
const elsewhere: [string, InjectionRule, (ph: string) => [string, string, http.OutgoingHttpHeaders, string | undefined]][] = [
  ["mode = basic", { mode: "basic", username: "svc" }, () => ["GET", "/basic", {}, undefined]],
  ["mode = basic, decoded as ISO-8859-1 and echoed as UTF-8", { mode: "basic", username: "svc" }, () => ["GET", "/basic-latin1", {}, undefined]],
  ["mode = query", { mode: "query", param: "key" }, () => ["GET", "/query", {}, undefined]],
  ["a placeholder in a form body", { mode: "placeholder", body: true }, (ph) => ["POST", "/body", { "content-type": "application/x-www-form-urlencoded" }, `user=svc&password=${encodeURIComponent(ph)}`]],
];
for (const [label, rule, mk] of elsewhere)
  test(`a Latin-1 value (${label}) echoed in an ISO-8859-1 answer is not read back: it is refused before its use`, async () => {
    const r = await rig(rule);
    try {
      const [m, p, h, b] = mk(r.ph);
      const a = await get(r.port, p, h, m, b);
      let text = a.body.toString("latin1");
      // Mojibake undone, as the agent would: the UTF-8 of the Latin-1 reading, read as UTF-8.
      if (p === "/basic-latin1" && a.headers["content-type"]?.startsWith("application/json;")) text = Buffer.from(JSON.parse(a.body.toString("utf8")).password, "latin1").toString("utf8");
      assert.ok(!holdsValue(text), `the agent read the real value: ${JSON.stringify(text)}`);
      assert.match(a.body.toString(), /outside ASCII, which lessor does not inject/);
    } finally {
      await r.close();
    }
  });

// --- lessor mcp ---------------------------------------------------------------------------------

const MCP_VALUE = "Grüße-aus-München-CANARY-" + randomBytes(8).toString("hex");
const root = mkdtempSync(join(tmpdir(), "lessor-latin1-mcp-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const LESSOR_HOME = join(HOME, ".lessor");

const mcpCa = LocalCa.create({ permitted: ["api.test.example"] });
writeFileSync(join(root, "upstream-ca.pem"), mcpCa.certPem);
const mcpUp = https.createServer({ SNICallback: mcpCa.sniCallback }, (req, res) => {
  const auth = String(req.headers.authorization ?? "");
  res.writeHead(200, { "content-type": "application/octet-stream" });
  res.end(Buffer.concat([Buffer.from("you sent: "), Buffer.from(auth, "latin1"), Buffer.from("\n")]));
});
await new Promise<void>((r) => mcpUp.listen(0, "127.0.0.1", r));
const mcpPort = (mcpUp.address() as AddressInfo).port;
after(() => new Promise<void>((r) => { mcpUp.closeAllConnections(); mcpUp.close(() => r()); }));

test("lessor mcp http_request: a Latin-1 value echoed as the bytes received is not read back (the request is refused)", { timeout: 60_000 }, async () => {
  mkdirSync(HOME, { recursive: true });
  await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  const base = readFileSync(join(LESSOR_HOME, "lessor.toml"), "utf8");
  writeFileSync(join(LESSOR_HOME, "lessor.toml"), `${base}\n[proxy]\nports = [${mcpPort}]\nallow = ["127.0.0.1"]\nhosts = { "api.test.example" = "127.0.0.1" }\nupstream_ca = "${join(root, "upstream-ca.pem")}"\n`, { mode: 0o600 });
  writeFileSync(join(LESSOR_HOME, "policy.toml"), `[[rule]]\nname = "api"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["pw"]\ndomains = ["api.test.example"]\n`, { mode: 0o600 });
  const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  try {
    await vault.admin().storeSecret({ name: "pw", value: MCP_VALUE });
  } finally {
    await vault.close();
  }
  const transport = new StdioClientTransport({ command: process.execPath, args: [BIN, "mcp", "--agent", "claude"], env: { HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1", LESSOR_HOME }, stderr: "pipe" });
  const client = new Client({ name: "rev", version: "1.0.0" });
  await client.connect(transport);
  try {
    const call = async (name: string, args: Record<string, unknown>) => {
      const r = (await client.callTool({ name, arguments: args })) as { isError?: boolean; content: { text: string }[] };
      return JSON.parse(r.content.map((c) => c.text).join("\n")) as Record<string, any>;
    };
    const lease = await call("request_access", { secret: "pw" });
    assert.ok(typeof lease["placeholder"] === "string", JSON.stringify(lease));
    assert.ok(!JSON.stringify(lease).includes(MCP_VALUE));
    const r = await call("http_request", { method: "GET", url: `https://api.test.example:${mcpPort}/echo`, headers: { Authorization: `Bearer ${lease["placeholder"]}` } });
    const decoded = r["bodyEncoding"] === "base64" ? Buffer.from(r["body"], "base64").toString("latin1") : String(r["body"]);
    assert.ok(!decoded.includes(MCP_VALUE), `the agent decoded the real value from http_request's answer: ${JSON.stringify(decoded)} (bodyEncoding ${r["bodyEncoding"]})`);
  } finally {
    await client.close();
  }
});
