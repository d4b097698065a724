/**
 * Path rules against servers that percent-decode a request path before they split off its query and
 * fragment (Apache mod_rewrite's encoded "?" in a back-reference, CVE-2024-38474; apps that unquote the
 * path and then parse it as a URL). Under paths = ["/ok/"], "/ok/..%3F" and "/ok/..%23" are canonical
 * as sent (no dot segment, no "//"), so the proxy forwards them with the credential; such a server reads
 * "/ok/..?" and "/ok/..#", that is "/ok/..": the parent of the granted prefix. The same reason the
 * vault refuses "..;" and "..%3B" (a server that reads ";" as the end of the segment sees "..").
 *
 * A real ForwardProxy with TLS on both sides and LeaseEgress as `lessor run` wires it; names resolve to
 * 127.0.0.1 through a fixed table and the connect step refuses anything else.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { canonicalRequestPath, matchPathPrefixes } from "../src/vault/http-path.js";
import { grant, makeVault } from "./helpers.js";
import { closeUpstreams, loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";

const HOST = "api.match.example";
const TOK = "ghp_" + "MATCHcanary0123456789abcdefghijklmnop";

const seen: { url: string; auth: string }[] = [];
const upCa = LocalCa.create({ permitted: [HOST] });
const up = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  req.resume();
  req.on("end", () => {
    seen.push({ url: req.url!, auth: String(req.headers.authorization ?? "") });
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
  });
});
await new Promise<void>((r) => up.listen(0, "127.0.0.1", r));
const upPort = (up.address() as AddressInfo).port;
after(async () => {
  await closeUpstreams(up);
});

/** The path a server that decodes the target before it splits off "?" and "#" routes on. */
function decodedRoute(url: string): string {
  let decoded: string;
  try {
    decoded = decodeURIComponent(url);
  } catch {
    return url;
  }
  return new URL(decoded, `https://${HOST}`).pathname;
}

const ATTACKS = ["/ok/..%3F", "/ok/..%3f", "/ok/%2e%2e%3F", "/ok/..%23", "/ok/.%3F", "/ok/x/..%3Fq=1"];

test("the vault refuses, under a paths rule, a dot segment followed by an encoded \"?\" or \"#\" (as it does \"..%3B\")", () => {
  const allowed: string[] = [];
  for (const p of ATTACKS) {
    const m = matchPathPrefixes(["/ok/"], p);
    if (m.allowed && !decodedRoute(m.path).startsWith("/ok/")) allowed.push(`${p} (canonical ${m.path}, a decoding server routes it as ${decodedRoute(m.path)})`);
  }
  assert.deepEqual(allowed, [], `paths = ["/ok/"] lets these through:\n${allowed.join("\n")}`);
  // Windows servers (IIS) drop a segment's trailing dots and spaces: "..." and "..%20" are ".." there.
  for (const p of ["/ok/...", "/ok/..%20", "/ok/.%20.", "/ok/%2e%2e%2e", "/ok/x/..../y"]) {
    const m = matchPathPrefixes(["/ok/"], p);
    assert.equal(m.allowed, false, `${p} was allowed under paths = ["/ok/"]`);
    assert.match(canonicalRequestPath(p).problem ?? "", /only dots and spaces/);
  }
  assert.equal(canonicalRequestPath("/ok/a../b.").path, "/ok/a../b.", "dots inside a name stay allowed");
  assert.equal(canonicalRequestPath("/ok/%20").path, "/ok/%20", "a space alone is no dot segment");
  // Still allowed: an encoded "?" that is not after a dot segment.
  assert.equal(canonicalRequestPath("/ok/a%3Fb").path, "/ok/a%3Fb");
  assert.equal(matchPathPrefixes(["/ok/"], "/ok/a%3Fb").allowed, true);
});

test("the proxy never sends the credential, under paths = [\"/ok/\"], with a path a decoding server routes outside /ok/", async () => {
  const { vault } = await makeVault({ policy: grant("api", ["bot"], ["tok"], [HOST], 'paths = ["/ok/"]') });
  const admin = vault.admin();
  await admin.storeSecret({ name: "tok", value: TOK });
  const lease = await admin.requestLease({ agent: "bot", secret: "tok", domains: [HOST] });
  const ph = makePlaceholder(TOK);
  const creds: ProxyCredential[] = [{ lease, secret: "global/tok", placeholder: ph, value: TOK, rule: { mode: "placeholder" } }];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict" });
  const guard = new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly(connects) });
  const port = await proxy.listen();
  try {
    const leaked: string[] = [];
    for (const path of ATTACKS) {
      const before = seen.length;
      const s = await openTunnel(port, HOST, upPort);
      s.write(`GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${ph}\r\nConnection: close\r\n\r\n`);
      await readAll(s, 3000);
      for (const got of seen.slice(before))
        if (got.auth === `Bearer ${TOK}` && !decodedRoute(got.url).startsWith("/ok/"))
          leaked.push(`${path} -> upstream got ${JSON.stringify(got.url)} with the real credential; a decoding server routes it as ${decodedRoute(got.url)}`);
    }
    assert.deepEqual(leaked, [], `the credential went upstream outside paths = ["/ok/"]:\n${leaked.join("\n")}`);
  } finally {
    await proxy.close();
    await egress.close();
  }
});
