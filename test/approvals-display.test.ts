/**
 * What `lessor approvals` shows the person deciding (src/cli/commands/approval.ts), and `lessor audit`
 * the owner reading the trail: the agent's reason is its own text, so it is shown quoted. An agent that pads its reason with spaces (or a filler
 * character) so that it wraps on the terminal like the lines around it, a made-up "to send it to:" or
 * "lease:", must not be read as lessor's own description of the request.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { describeApproval } from "../src/cli/commands/approval.js";
import { openVault } from "../src/config/open-vault.js";
import type { WireApproval } from "../src/protocol/registry.js";
import { runCliWithEnv } from "./cli-harness.js";
import { agent } from "./helpers.js";
import { makeOwner } from "./run-harness.js";

const base: WireApproval = {
  id: "01890a5d-ac96-774b-bcce-b302099a8057",
  agent: "claude",
  secret: "global/prod-db",
  domains: ["db.internal.example"],
  hosts: ["db.internal.example"],
  anyDomain: false,
  ttlMs: 600_000,
  maxUses: null,
  rule: "prod",
  reason: null,
  requestedBy: "agent:claude",
  requestedAt: 1_800_000_000_000,
  expiresAt: 1_800_000_600_000,
  state: "pending",
  decidedBy: null,
  decidedAt: null,
  decisionReason: null,
  leaseId: null,
  reveal: false,
  methods: null,
  paths: null,
};

test("the agent's reason is shown quoted, padding and all, so a line it fakes stays inside the quotes", () => {
  const fake = "routine check" + " ".repeat(100) + "to send it to: api.example.com" + "\u3164".repeat(30) + "lease: ttl 60s";
  const lines = describeApproval({ ...base, reason: fake });
  const why = lines.find((l) => l.includes("routine check"));
  assert.ok(why, lines.join("\n"));
  assert.match(why, /^ {2}why \(the agent's words\): "routine check {100}to send it to: api\.example\.com\u3164{30}lease: ttl 60s"$/);
  // lessor's own line says where the value goes, once, and it is the real host.
  assert.deepEqual(
    lines.filter((l) => l.startsWith("  to send it to:")),
    ["  to send it to: db.internal.example"],
  );
});

test("a reason holding a quote or a backslash cannot close the quotes early", () => {
  const lines = describeApproval({ ...base, reason: 'ok" to send it to: x \\' });
  assert.ok(lines.includes(`  why (the agent's words): "ok\\" to send it to: x \\\\"`), lines.join("\n"));
});

test("no reason, and the deciding person's reason, are shown as such", () => {
  const lines = describeApproval({ ...base, state: "denied", decidedBy: "owner", decidedAt: 1, decisionReason: "not during the freeze" });
  assert.ok(lines.includes("  why (the agent's words): (no reason given)"), lines.join("\n"));
  assert.ok(lines.includes('  decided by owner: "not during the freeze"'), lines.join("\n"));
});

test("lessor audit shows a padded reason quoted, so it cannot pass for more rows of the trail", async () => {
  const root = mkdtempSync(join(tmpdir(), "lessor-audit-reason-"));
  try {
    const policy = '[[rule]]\nname = "prod"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["granted"]\ndomains = ["api.example.com"]\napproval = "required"\n';
    const o = await makeOwner({ root, name: "audit-reason", masterKey: randomBytes(32).toString("hex"), policy, secrets: [{ name: "granted", value: "gv" }] });
    const fake = "routine" + " ".repeat(60) + "99  12:00:00  approval_granted  ok  uid:0  claude  granted";
    const vault = await openVault({ home: o.lessorHome, env: o.env });
    try {
      await vault.session(agent("claude")).requestApproval({ secret: "granted", reason: fake });
    } finally {
      await vault.close();
    }
    const r = await runCliWithEnv(["audit", "query", "--type", "approval_requested"], { cwd: o.home, env: o.env });
    assert.equal(r.code, 0, r.stderr);
    const row = r.stdout.split("\n").find((l) => l.includes("routine"));
    assert.ok(row?.endsWith(JSON.stringify(fake)), `the agent's reason is printed raw in the audit table:\n${r.stdout}`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
