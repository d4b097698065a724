/**
 * `lessor mcp --http`'s connection cap (MAX_HTTP_CONNECTIONS) counted every connection together:
 * another local user, who has no token, held 256 idle connections and the agent's client, with the
 * token, could not connect. The owner's connections and other users' are now counted apart.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { randomBytes } from "node:crypto";
import { MAX_HTTP_CONNECTIONS, serveHttp } from "../src/mcp/http.js";
import { createMcpSession } from "../src/mcp/server.js";
import { inProcessApi } from "../src/backend/in-process.js";
import { initHome, openVault } from "../src/config/open-vault.js";

test("another local user holding the MCP endpoint's connection cap does not keep the agent's client out", { skip: process.getuid?.() !== 0 || process.platform !== "linux" ? "needs root on Linux (setpriv to uid 65534)" : false, timeout: 30_000 }, async () => {
  const root = mkdtempSync(join(tmpdir(), "s36-mcpcap-"));
  after(() => rmSync(root, { recursive: true, force: true }));
  const home = join(root, "home");
  await initHome({ home, env: { LESSOR_HOME: home } });
  const vault = await openVault({ home, env: { LESSOR_HOME: home } });
  const token = randomBytes(32).toString("base64url");
  const logs: string[] = [];
  const srv = await serveHttp({ newSession: () => createMcpSession({ api: inProcessApi(vault), identity: { agent: "claude", role: "admin" }, proxyConfig: { egress: "strict", ports: [443], allow: [], hosts: {}, upstreamCa: null, inject: [] }, log: (l: string) => logs.push(l), tmp: root }), address: { host: "127.0.0.1", port: 0 }, token, log: (l: string) => logs.push(l) });
  const extra = 8;
  const holder = `const net=require("net");let n=0;for(let i=0;i<${MAX_HTTP_CONNECTIONS + extra};i++){const c=net.connect(${srv.port},"127.0.0.1",()=>{if(++n===${MAX_HTTP_CONNECTIONS + extra})console.log("held")});c.on("error",()=>{})}setTimeout(()=>process.exit(0),8000)`;
  const child = spawn("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, "-e", holder], { stdio: ["ignore", "pipe", "inherit"] });
  after(() => child.kill("SIGKILL"));
  try {
    await new Promise<void>((r) => child.stdout!.on("data", (d: Buffer) => d.toString().includes("held") && r()));
    await new Promise((r) => setTimeout(r, 300));
    const res = await fetch(`http://127.0.0.1:${srv.port}/mcp`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json, text/event-stream" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-03-26", capabilities: {}, clientInfo: { name: "t", version: "1" } } }),
      signal: AbortSignal.timeout(5000),
    }).catch((e: unknown) => e as Error);
    assert.ok(!(res instanceof Error), `the agent's client could not connect while another user held ${MAX_HTTP_CONNECTIONS} connections: ${String(res)}`);
    assert.equal(res.status, 200);
    await res.body?.cancel();
  } finally {
    child.kill("SIGKILL");
    await srv.close();
    await vault.close();
  }
});
