/**
 * Review of the run session identity change (9e97b3b): a session token's identity was
 * `token:session:<stamp>/<id>` and is now `token:session:run/<id>` (src/vault/tokens.ts tokenIdentityId).
 * Leases and approvals stored under the former (a vault whose daemon was upgraded while a run was
 * going on) carry the former in their issuedBy/requestedBy; the daemon's sweep of a run that is gone
 * must still revoke them, or they stay live for their ttl after the run's death, usable by the agent's
 * other identities (src/server/session-sweep.ts).
 */
import { spawn } from "node:child_process";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { grant, makeVault } from "./helpers.js";
import { processStamp, stampState } from "../src/server/process-stamp.js";
import { sweepSessions } from "../src/server/session-sweep.js";

test("the session sweep revokes the live leases a gone run's session took under the former identity form (token:session:<stamp>/<id>)", async () => {
  const { vault } = await makeVault({ policy: grant("g", ["claude"], ["tok"], [], "any_domain = true\n") });
  const admin = vault.admin();
  await admin.storeSecret({ name: "tok", value: "canary-s35-review-value" });
  const run = spawn("sleep", ["600"], { stdio: "ignore" });
  after(() => run.kill("SIGKILL"));
  const stamp = processStamp(run.pid)!;
  assert.ok(stamp, "process stamps work here");
  const t = await vault.session({ id: "uid:0", role: "admin", transport: "uds" }).createToken({ name: "ignored", role: "agent", agent: "claude", session: true, process: stamp, ttl: "1h" });
  // What the daemon before 9e97b3b named this token's identity, and so stored as its leases' issuedBy.
  const former = { id: `token:${t.name}/${t.id}`, role: "agent" as const, agent: "claude", transport: "uds" as const, session: true as const };
  const lease = await vault.session(former).requestLease({ secret: "tok", ttl: "1h" });
  assert.equal(lease.issuedBy, former.id);
  run.kill("SIGKILL");
  await new Promise<void>((r) => (run.exitCode !== null || run.signalCode !== null ? r() : run.once("exit", () => r())));
  assert.equal(stampState(stamp), "gone");
  assert.equal(await sweepSessions(vault), 1, "the token is swept");
  const now = (await admin.listLeases({ agent: "claude" })).find((l) => l.id === lease.id);
  assert.notEqual(now?.revokedAt ?? null, null, "the lease the gone run's session took is revoked with its token");
});

/**
 * The approval page's connection cap (MAX_PAGE_CONNECTIONS, 9e97b3b) counts every connection, whoever
 * opens it: another local user, who is refused the page anyway (403, src/mcp/approval-page.ts), holds
 * 64 idle connections (each closed only after the headers timeout, and opened again) and the owner's
 * browser is cut off from the page while the approval waits.
 */
test("another local user holding the approval page's connection cap does not keep the owner from the page", { skip: process.getuid?.() !== 0 || process.platform !== "linux" ? "needs root on Linux (setpriv to uid 65534)" : false, timeout: 30_000 }, async () => {
  const { ApprovalPages, MAX_PAGE_CONNECTIONS } = await import("../src/mcp/approval-page.js");
  const { execFile } = await import("node:child_process");
  const { promisify } = await import("node:util");
  const pages = new ApprovalPages(() => {});
  const view = { id: "01940000-0000-7000-8000-0000000000a1", agent: "claude", secret: "global/tok", hosts: ["api.example.com"], anyDomain: false, ttlMs: 60_000, maxUses: null, rule: "g", reason: null, expiresAt: Date.now() + 60_000, requestedBy: "uid:0", reveal: false, methods: null, paths: null };
  const opened = await pages.open(view, async () => {});
  assert.ok(opened);
  const port = Number(new URL(opened.url).port);
  // uid 65534 opens the cap's worth of connections, says nothing, and holds them 8 s.
  const holder = `const net=require("net");let n=0;for(let i=0;i<${MAX_PAGE_CONNECTIONS + 8};i++){const c=net.connect(${port},"127.0.0.1",()=>{if(++n===${MAX_PAGE_CONNECTIONS + 8})console.log("held")});c.on("error",()=>{})}setTimeout(()=>process.exit(0),8000)`;
  const child = spawn("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, "-e", holder], { stdio: ["ignore", "pipe", "inherit"] });
  after(() => child.kill("SIGKILL"));
  await new Promise<void>((r) => child.stdout!.on("data", (d: Buffer) => d.toString().includes("held") && r()));
  await new Promise((r) => setTimeout(r, 200));
  try {
    const { stdout } = await promisify(execFile)("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", opened.url], { encoding: "utf8" }).catch((e: { stdout?: string }) => ({ stdout: e.stdout ?? "" }));
    assert.equal(stdout, "200", "the owner's browser gets the page");
  } finally {
    child.kill("SIGKILL");
    await pages.close();
  }
});
