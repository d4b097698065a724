/**
 * An upstream that reflects the injected credential into Content-Encoding, Transfer-Encoding or
 * grpc-encoding gets it back to the agent unmasked, inside the proxy's own 502 problem document:
 * src/proxy/response-coding.ts quotes the header value in its `problem` sentence, and
 * src/proxy/intercept.ts relayResponse / src/proxy/h2.ts pass that sentence to problemResponse, which
 * was never scrubbed (now only registered coding names are quoted). docs/security.md: "Make a covered upstream reflect the injected credential: in a
 * response header … | Masked into the placeholder".
 *
 * Rig as `lessor run` wires it (ForwardProxy + LeaseEgress over a real vault, loopback upstream).
 * The second part shows the same through `lessor mcp` (createMcpSession + http_request), where the
 * last guard masks it only while the session still holds the value: the agent revokes the lease while
 * its request is in flight and reads the credential in the tool's error message.
 */
import { randomBytes } from "node:crypto";
import * as http from "node:http";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { PassThrough } from "node:stream";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { createMcpSession } from "../src/mcp/server.js";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { ReadBuffer, serializeMessage } from "@modelcontextprotocol/sdk/shared/stdio.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import { grant, makeVault } from "./helpers.js";
import { loopbackOnly, openTunnel, tableResolver } from "./proxy-harness.js";

const HOST = "api.coding.example";
const TOK = "ghp_CANARY" + randomBytes(15).toString("hex");

const upCa = LocalCa.create({ permitted: [HOST] });
let release: (() => void) | null = null;
const up = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  req.resume();
  req.on("end", async () => {
    const tok = String(req.headers["x-token"] ?? req.headers["authorization"] ?? "").replace(/^Bearer /, "");
    const url = new URL(req.url!, `https://${HOST}`);
    if (url.searchParams.get("wait") === "1") await new Promise<void>((r) => (release = r));
    const which = url.searchParams.get("h") ?? "content-encoding";
    // A service that reflects a request value into a coding header (a misconfigured gateway, a
    // "response-headers" echo endpoint); any response header is documented as masked.
    if (which === "transfer-encoding") {
      res.socket!.write(`HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: ${tok}, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n`);
      res.socket!.end();
      return;
    }
    res.writeHead(200, { "content-type": "text/plain", [which]: tok });
    res.end("x");
  });
});
await new Promise<void>((r) => up.listen(0, "127.0.0.1", r));
const upPort = (up.address() as AddressInfo).port;
after(() => up.close());

test("attack: lessor run's proxy: a credential reflected into a coding header does not come back in the 502 problem", async () => {
  const { vault } = await makeVault({ policy: grant("api", ["bot"], ["tok"], [HOST]) });
  const admin = vault.admin();
  await admin.storeSecret({ name: "tok", value: TOK });
  const lease = await admin.requestLease({ agent: "bot", secret: "tok", domains: [HOST] });
  const ph = makePlaceholder(TOK);
  const creds: ProxyCredential[] = [{ lease, secret: "global/tok", placeholder: ph, value: TOK, rule: { mode: "placeholder" } }];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: () => {} });
  const guard = new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1" }) });
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly() });
  const port = await proxy.listen();
  try {
    for (const h of ["content-encoding", "grpc-encoding", "transfer-encoding"]) {
      const s = await openTunnel(port, HOST, upPort, { alpn: "http/1.1" });
      const a = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = http.request({ createConnection: () => s, host: HOST, path: `/r?h=${h}`, headers: { connection: "close", "x-token": ph } }, (res) => {
          const c: Buffer[] = [];
          res.on("data", (d: Buffer) => c.push(d));
          res.on("end", () => resolve({ status: res.statusCode!, body: Buffer.concat(c).toString("latin1") }));
        });
        req.on("error", reject);
        req.end();
      });
      // content-encoding and transfer-encoding are quoted lower-cased: the value, case-folded.
      assert.ok(!a.body.toLowerCase().includes(TOK.toLowerCase()), `the agent read the credential in the proxy's ${a.status} answer to an upstream reflecting it into ${h}: ${a.body}`);
    }
  } finally {
    await proxy.close();
    await egress.close();
    vault.close?.();
  }
});

/** A client/server pair over newline-delimited JSON (the stdio framing). */
function pipePair(): { client: Transport; server: StdioServerTransport } {
  const toServer = new PassThrough();
  const toClient = new PassThrough();
  const server = new StdioServerTransport(toServer, toClient);
  const rb = new ReadBuffer();
  const client: Transport = {
    async start() {
      toClient.on("data", (d: Buffer) => {
        rb.append(d);
        for (let m = rb.readMessage(); m; m = rb.readMessage()) client.onmessage?.(m);
      });
    },
    async send(m: JSONRPCMessage) {
      toServer.write(serializeMessage(m));
    },
    async close() {
      toServer.end();
      client.onclose?.();
    },
  };
  return { client, server };
}

test("attack: lessor mcp: revoking the lease while the request is in flight, the reflected credential does not reach the agent in the tool error", async () => {
  const { vault } = await makeVault({ policy: grant("api", ["claude"], ["tok"], [HOST]) });
  const dir = mkdtempSync(join(tmpdir(), "rev-mcp-"));
  const caFile = join(dir, "ca.pem");
  writeFileSync(caFile, upCa.certPem);
  await vault.admin().storeSecret({ name: "tok", value: TOK });
  const session = createMcpSession({
    api: inProcessApi(vault),
    identity: { agent: "claude", role: "admin" },
    proxyConfig: { ports: [upPort], allow: ["127.0.0.1"], hosts: { [HOST]: "127.0.0.1" }, inject: [], egress: "strict", upstreamCa: caFile },
    log: () => {},
    tmp: dir,
  });
  // The upstream's CA: the session proxy reads [proxy] upstream_ca from a file; pass it via env-free route.
  const { client, server } = pipePair();
  await session.server.connect(server);
  const c = new Client({ name: "agent", version: "1" });
  await c.connect(client);
  try {
    let leaked = "";
    for (let i = 0; i < 10 && leaked === ""; i++) {
      const got = (await c.callTool({ name: "request_access", arguments: { secret: "tok" } })) as unknown as { structuredContent: { leaseId: string; placeholder: string } };
      const { leaseId, placeholder } = got.structuredContent;
      const inFlight = c.callTool({ name: "http_request", arguments: { method: "GET", url: `https://${HOST}:${upPort}/r?wait=1&h=grpc-encoding`, headers: { "x-token": placeholder } } });
      while (release === null) await new Promise((r) => setTimeout(r, 5));
      await c.callTool({ name: "revoke", arguments: { leaseId } });
      release!();
      release = null;
      const r = (await inFlight) as { content: { text: string }[] };
      const text = r.content.map((x) => x.text).join("\n");
      if (text.includes(TOK)) leaked = text;
      console.error(`attempt ${i}: ${text.includes(TOK) ? "leaked" : "masked"}`);
    }
    assert.equal(leaked, "", `the agent read the credential through http_request: ${leaked}`);
  } finally {
    await c.close();
    await session.close();
  }
});

test("lessor mcp's last guard: a value revoked while a tool call is under way stays masked until that call's result is scrubbed", async () => {
  const { SessionCredentials } = await import("../src/mcp/credentials.js");
  const creds = new SessionCredentials("claude", []);
  const value = "ghp_LINGER" + randomBytes(15).toString("hex");
  const lease = { id: "0190f0f0-0000-7000-8000-000000000001", scope: "global", name: "github-token" } as unknown as Parameters<typeof creds.add>[0];
  const c = creds.add(lease, Buffer.from(value));
  const settled = creds.busy();
  assert.equal(creds.remove(lease.id), true);
  assert.equal(creds.scrub(`echo: ${value}`), `echo: ${c.placeholder}`, "masked while the call that may carry it is under way");
  settled();
  settled(); // twice: no effect
  assert.equal(creds.scrub(`echo: ${value}`), `echo: ${value}`, "forgotten once no call is under way");
  // Removed with no call under way: forgotten at once.
  const c2 = creds.add({ ...lease, id: "0190f0f0-0000-7000-8000-000000000002" } as typeof lease, Buffer.from(value));
  assert.ok(c2.placeholder.length > 0);
  creds.remove("0190f0f0-0000-7000-8000-000000000002");
  assert.equal(creds.scrub(value), value);
});
