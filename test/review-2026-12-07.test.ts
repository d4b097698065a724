/**
 * A review of the daemon's audit promises (2026-12-07) found rows an agent could have written without
 * bound, or a step it could take without a trace:
 * - `record_tool_call` is open to an agent (for an MCP server it runs with its own token), and every
 *   made-up report was a row of its own: ~2,500 rows a second, ~90 GB a day, on the disk every agent's
 *   vault is on. Now an agent's own reports are written one row each up to `[vault] proxy_request_rows`
 *   per window, then counted in one summary row (src/vault/refusals.ts, "traffic").
 * - A revocation that changed nothing (a lease already ended, no live lease at all) was a row each, the
 *   same flood through `revoke_lease` and `revoke_all_for_agent`. Now tallied the same way; a
 *   revocation that ends a lease is always written.
 * - `request_lease` (and `approval_request`) of a secret that does not exist, under a rule that grants
 *   names by pattern, was refused `secret_not_found` with no row: an agent could probe which secrets
 *   exist unseen. Now audited as any refusal (and tallied past the burst).
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import type { AuditRecord } from "../src/base/types.js";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { DEFAULT_LIMITS } from "../src/vault/limits.js";
import { serveWithAgentTokens } from "./daemon-harness.js";
import { agent, grant, makeVault } from "./helpers.js";

const CANARY = "canary-review1207-5e1f9a3c7b";
const POLICY = grant("gh", ["claude", "bob"], ["github-token"], ["api.github.com"]);
const BURST = DEFAULT_LIMITS.proxyRequestRows;

const detailOf = (r: AuditRecord): Record<string, unknown> => ((typeof r.detail === "string" ? JSON.parse(r.detail) : r.detail) ?? {}) as Record<string, unknown>;

/** A daemon on a fresh home with the owner's client and agent tokens for claude and bob; stopped after the test. */
async function daemon(): Promise<{ home: string; admin: LessorClient; claude: LessorClient; bob: LessorClient; stop: () => Promise<void> }> {
  const d = await serveWithAgentTokens({ policy: POLICY, secret: { name: "github-token", value: CANARY }, tokens: { mallory: "claude", bob: "bob" } });
  return { home: d.home, admin: d.admin, claude: d.agents["mallory"]!, bob: d.agents["bob"]!, stop: d.stop };
}

async function trail(home: string, types: string[]): Promise<AuditRecord[]> {
  const vault = await openVault({ home, env: {} });
  try {
    const v = await vault.admin().auditVerify();
    assert.equal(v.ok, true, `the trail verifies: ${JSON.stringify(v)}`);
    return (await vault.admin().auditQuery({ types, limit: 100_000 })) as AuditRecord[];
  } finally {
    await vault.close();
  }
}

test("attack: an agent token floods record_tool_call with made-up reports over lessor serve: a bounded number of rows, every report counted, the owner's and another agent's reports still one row each", async () => {
  const { home, admin, claude, bob, stop } = await daemon();
  const CALLS = 1500;
  for (let i = 0; i < CALLS; i += 64)
    await Promise.all(
      Array.from({ length: Math.min(64, CALLS - i) }, (_, j) =>
        claude.api.record_tool_call({ tool: `t${"x".repeat(60)}${(i + j) % 10}`, outcome: (i + j) % 3 ? "error" : "ok", ...((i + j) % 3 ? { code: "access_denied" as const } : {}), ms: 1 }),
      ),
    );
  // Within the same window: bob's own reports, and the owner's MCP server's for claude, are rows each.
  for (let i = 0; i < 3; i++) {
    await bob.api.record_tool_call({ tool: `bob_${i}`, outcome: "ok", ms: 2 });
    await admin.api.record_tool_call({ agent: "claude", tool: `owner_${i}`, outcome: "ok", ms: 3 });
  }
  await stop();

  const rows = await trail(home, ["tool_call"]);
  const forged = rows.filter((r) => r.agent === "claude" && r.actorRole === "agent");
  const total = forged.reduce((n, r) => n + (typeof detailOf(r)["count"] === "number" ? (detailOf(r)["count"] as number) : 1), 0);
  assert.equal(total, CALLS, "every report is in the trail, written or counted");
  assert.ok(forged.length <= BURST + 4, `${forged.length} rows for ${CALLS} made-up reports (at most [vault] proxy_request_rows = ${BURST} a window, then a summary)`);
  const summary = forged.find((r) => typeof detailOf(r)["count"] === "number");
  assert.ok(summary, "the reports past the burst are one summary row");
  assert.match(String(summary.reason), /tool calls .*proxy_request_rows/);
  assert.match(String(detailOf(summary)["reasons"]), /error access_denied ×\d+/, "the summary counts them by outcome and code");
  assert.deepEqual(rows.filter((r) => r.agent === "bob").map((r) => detailOf(r)["tool"]), ["bob_0", "bob_1", "bob_2"]);
  assert.deepEqual(
    rows.filter((r) => r.actorRole === "admin").map((r) => detailOf(r)["tool"]),
    ["owner_0", "owner_1", "owner_2"],
    "the owner's server's rows are never tallied",
  );
  assert.ok(!JSON.stringify(rows).includes(CANARY));
});

test("attack: an agent loops on revocations that change nothing (revoke_lease of an ended lease, revoke_all_for_agent with nothing live): a bounded number of rows, every call counted; a revocation that ends a lease is still written", async () => {
  const { home, claude, stop } = await daemon();
  const ended = await claude.requestLease({ secret: "github-token", domains: ["api.github.com"] });
  await claude.api.revoke_lease({ leaseId: ended.id });
  const CALLS = 800;
  for (let i = 0; i < CALLS; i += 50)
    await Promise.all(
      Array.from({ length: 50 }, (_, j) =>
        (i + j) % 2 ? claude.api.revoke_all_for_agent({ agent: "claude", reason: "x".repeat(200) }) : claude.api.revoke_lease({ leaseId: ended.id, reason: "x".repeat(200) }),
      ),
    );
  // The burst is spent; a revocation that does end a lease is written all the same.
  const live = await claude.requestLease({ secret: "github-token", domains: ["api.github.com"] });
  assert.deepEqual(await claude.api.revoke_lease({ leaseId: live.id, reason: "done with it" }), { revoked: true });
  await stop();

  const rows = (await trail(home, ["lease_revoked"])).filter((r) => r.agent === "claude");
  const noop = rows.filter((r) => detailOf(r)["changed"] === 0 || detailOf(r)["count"] === 0);
  const calls = noop.reduce((n, r) => n + (typeof detailOf(r)["calls"] === "number" ? (detailOf(r)["calls"] as number) : 1), 0);
  assert.equal(calls, CALLS, "every revocation call is in the trail, written or counted");
  assert.ok(noop.length <= BURST + 4, `${noop.length} rows for ${CALLS} revocations that changed nothing`);
  const summary = noop.find((r) => typeof detailOf(r)["calls"] === "number");
  assert.ok(summary, "the calls past the burst are one summary row");
  assert.match(String(summary.reason), /revocations that changed nothing/);
  assert.equal(detailOf(summary)["count"], undefined, "a summary does not say `count`, which on a revocation row means leases revoked");
  const real = rows.filter((r) => r.leaseId === ended.id && detailOf(r)["changed"] === 1);
  assert.equal(real.length, 1, "the first revocation of the lease is written");
  const last = rows.filter((r) => r.leaseId === live.id);
  assert.equal(last.length, 1, "the revocation that ended a lease past the burst is written");
  assert.equal(last[0]!.reason, "done with it");
  assert.equal(detailOf(last[0]!)["changed"], 1);
});

test("attack: an agent whose rule grants names by pattern probes which secrets exist: each refusal secret_not_found is audited (request_lease, lease with access, approval request)", async () => {
  const { vault } = await makeVault({
    policy: grant("gh", ["claude"], ["github-*", "probe-*"], ["api.github.com"]) + grant("gated", ["claude"], ["deploy-*"], ["api.github.com"], 'approval = "required"\nttl = "15m"'),
  });
  after(() => vault.close());
  await vault.admin().storeSecret({ name: "github-token", value: CANARY });
  const head = (await vault.admin().auditQuery({ order: "desc", limit: 1 }))[0]?.seq ?? 0;
  const s = vault.session(agent("claude"));
  const notFound = (e: unknown): boolean => (e as { code?: string }).code === "secret_not_found";
  await assert.rejects(s.requestLease({ secret: "probe-one" }), notFound);
  await assert.rejects(s.requestLeaseAndAccess({ secret: "probe-two" }, { domain: "api.github.com" }), notFound);
  await assert.rejects(s.requestApproval({ secret: "deploy-probe", domains: ["api.github.com"], reason: "probe" }), notFound);
  // A secret that exists is still leased as before.
  const got = await s.requestLeaseAndAccess({ secret: "github-token" }, { domain: "api.github.com" });
  got.value.wipe();
  const rows = (await vault.admin().auditQuery({ afterSeq: head, limit: 100 })) as AuditRecord[];
  for (const name of ["global/probe-one", "global/probe-two", "global/deploy-probe"]) {
    const row = rows.find((r) => r.type === "access_denied" && r.secret === name);
    assert.ok(row, `the refused probe of ${name} is audited: ${JSON.stringify(rows.map((r) => [r.type, r.secret, r.reason]))}`);
    assert.equal(row.agent, "claude");
    assert.equal(row.outcome, "denied");
    assert.match(String(row.reason), /^secret_not_found: /);
  }
  assert.ok(!JSON.stringify(rows).includes(CANARY));
});
