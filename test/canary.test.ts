/**
 * A canary value is stored and used through every path; it must never appear in the SQLite files,
 * the audit rows, the JSONL audit file, log lines, error messages or inspect/JSON output.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { inspect } from "node:util";
import { jsonlSink } from "../src/audit/jsonl-sink.js";
import { logSink } from "../src/audit/sink.js";
import { agent, codeOf, grant, makeVault, tempDir } from "./helpers.js";

const CANARY = "CANARY-7f3a9c1e-do-not-leak";

test("a canary secret never leaks into files, audit, logs, errors or inspect output", async () => {
  const dir = tempDir();
  const logs: string[] = [];
  const t = await makeVault({
    dir,
    policy: grant("g", ["claude"], ["canary"], ["api.example.com"], "max_uses = 2"),
    sinks: [jsonlSink(join(dir, "audit.jsonl")), logSink((l) => logs.push(l))],
  });
  const admin = t.vault.admin();
  const claude = t.vault.session(agent("claude"));
  const mallory = t.vault.session(agent("mallory"));
  const seen: string[] = [];
  const record = (x: unknown) => seen.push(inspect(x, { depth: 10, showHidden: true }), JSON.stringify(x) ?? "", String(x));

  record(await admin.storeSecret({ name: "canary", value: CANARY, description: "canary test", tags: ["t"] }));
  record(await admin.rotateSecret({ scope: "global", name: "canary" }, Buffer.from(CANARY)));
  const lease = await claude.requestLease({ secret: "canary" });
  record(lease);
  const got = await claude.accessSecret(lease.id, { domain: "api.example.com" });
  assert.ok(got.value.equals(Buffer.from(CANARY)), "the canary is really the value");
  record(got);
  record(got.value);
  seen.push(`${got.value}`, [got.value].join(","));
  const revealed = await admin.revealSecret({ scope: "global", name: "canary" });
  record(revealed);
  for (const attempt of [
    () => mallory.accessSecret(lease.id, { domain: "api.example.com" }),
    () => claude.accessSecret(lease.id, { domain: "api.example.com.evil.com" }),
    () => admin.storeSecret({ name: "canary", value: CANARY, mode: "create" }),
    () => admin.storeSecret({ name: "x", value: CANARY, kind: "nope" as never }),
    () => admin.storeSecret({ name: "big", value: CANARY.repeat(3000) }),
    () => admin.storeSecret({ name: "bad name", value: CANARY }),
  ]) {
    try {
      await attempt();
      assert.fail("the attempt should have been refused");
    } catch (e) {
      record(e);
      seen.push((e as Error).message, (e as Error).stack ?? "");
    }
  }
  await claude.accessSecret(lease.id, { domain: "api.example.com" });
  assert.equal(await codeOf(claude.accessSecret(lease.id, { domain: "api.example.com" })), "lease_exhausted");
  record(t.vault);
  record(claude);
  record(await admin.status());
  record(await admin.listSecrets());
  record(await admin.getSecretMetadata({ scope: "global", name: "canary" }));
  const audit = await admin.auditQuery({ limit: 1000 });
  assert.ok(audit.length >= 8);
  record(audit);
  got.value.wipe();
  revealed.value.wipe();

  for (const s of [...seen, ...logs]) assert.ok(!s.includes(CANARY), `canary leaked in: ${s.slice(0, 200)}`);
  // The vault's files (database, WAL, JSONL audit) hold no canary bytes in any encoding.
  await t.vault.close();
  const needles = [Buffer.from(CANARY), Buffer.from(CANARY, "utf16le"), Buffer.from(Buffer.from(CANARY).toString("base64")), Buffer.from(Buffer.from(CANARY).toString("hex"))];
  for (const f of readdirSync(dir)) {
    const bytes = readFileSync(join(dir, f));
    for (const n of needles) assert.ok(!bytes.includes(n), `canary found in ${f}`);
  }
});
