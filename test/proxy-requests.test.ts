/**
 * record_proxy_requests (src/vault/proxy-requests.ts), attacked by a hostile agent: it may report its
 * own proxied requests, but never write events for another agent, name another agent's lease, or use
 * a "tripwire" report to revoke a lease that is not its own. A refused batch writes nothing.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { agent, codeOf, grant, makeVault } from "./helpers.js";
import type { ProxyRequestReport } from "../src/vault/proxy-requests.js";

const POLICY = grant("gh", ["claude", "mallory"], ["tok"], ["api.example.com"]);

function report(over: Partial<ProxyRequestReport>): ProxyRequestReport {
  return { agent: "mallory", leaseIds: [], method: "GET", host: "api.example.com", path: "/x", status: 200, bytesOut: 0, bytesIn: 1, ms: 1, outcome: "ok", ...over };
}

test("an agent reports its own requests, and cannot report for another agent or name another agent's lease; a refused batch writes nothing", async () => {
  const { vault } = await makeVault({ policy: POLICY });
  const admin = vault.admin();
  await admin.storeSecret({ name: "tok", value: "ghp_0123456789abcdef" });
  const victims = await admin.requestLease({ agent: "claude", secret: "tok", domains: ["api.example.com"] });
  const own = await admin.requestLease({ agent: "mallory", secret: "tok", domains: ["api.example.com"] });
  const mallory = vault.session(agent("mallory"));
  const count = async (): Promise<number> => (await admin.auditQuery({ types: ["proxy_request"], limit: 1000 })).length;

  assert.deepEqual(await mallory.recordProxyRequests([report({ leaseIds: [own.id] })]), { revoked: 0 });
  assert.equal(await count(), 1);

  // Another agent's name, another agent's lease (alone or behind a valid report): refused, nothing written.
  assert.equal(await codeOf(mallory.recordProxyRequests([report({ agent: "claude", leaseIds: [victims.id] })])), "access_denied");
  assert.equal(await codeOf(mallory.recordProxyRequests([report({ leaseIds: [victims.id] })])), "access_denied");
  assert.equal(await codeOf(mallory.recordProxyRequests([report({ leaseIds: [own.id] }), report({ leaseIds: [victims.id], outcome: "tripwire" })])), "access_denied");
  assert.equal(await count(), 1, "a refused batch writes no proxy_request event");
  const still = (await admin.listLeases({ agent: "claude" })).find((l) => l.id === victims.id)!;
  assert.equal(still.revokedAt, null, "a forged tripwire revokes nothing");

  // Its own tripwire report revokes its own lease and is an alarm.
  assert.deepEqual(await mallory.recordProxyRequests([report({ leaseIds: [own.id], outcome: "tripwire", status: 403 })]), { revoked: 1 });
  const alarm = (await admin.auditQuery({ types: ["proxy_request"], limit: 1000 })).at(-1)!;
  assert.equal(JSON.parse(alarm.detail ?? "{}").alarm, true);
});

test("bad reports are refused with invalid_request: no reports, too many, a bad outcome, an unsafe path", async () => {
  const { vault } = await makeVault({ policy: POLICY });
  const admin = vault.admin();
  assert.equal(await codeOf(admin.recordProxyRequests([])), "invalid_request");
  assert.equal(await codeOf(admin.recordProxyRequests(Array.from({ length: 257 }, () => report({})))), "invalid_request");
  assert.equal(await codeOf(admin.recordProxyRequests([report({ outcome: "fine" as never })])), "invalid_request");
  assert.equal(await codeOf(admin.recordProxyRequests([report({ path: "/x\u001b[31m" })])), "invalid_request");
});
