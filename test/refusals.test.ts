/**
 * Refused calls audited in aggregate past a burst (src/vault/refusals.ts): an authenticated agent
 * looping on refused calls cannot fill the trail with one durable row per refusal, every refusal is
 * still counted, and another identity's refusals are written at once meanwhile. Real SQLite vaults; the
 * flood through a real `lessor serve` and its Unix socket.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { isVaultError } from "../src/base/errors.js";
import type { AuditRecord } from "../src/base/types.js";
import { makeHome, startServe } from "./daemon-harness.js";
import { grant, makeVault } from "./helpers.js";
import { BURST, MAX_IDENTITIES, WINDOW_BUDGET } from "../src/vault/refusals.js";

const POLICY = grant("gh", ["claude", "bob"], ["github-token"], ["api.github.com"]);

const codeOf = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
    return "ok";
  } catch (e) {
    return isVaultError(e) ? e.code : String(e);
  }
};

const details = (rows: AuditRecord[]): Record<string, unknown>[] => rows.map((r) => (r.detail === null ? {} : (JSON.parse(r.detail) as Record<string, unknown>)));
/** Refusals the rows stand for: a row with detail.count stands for that many, any other for one. */
const total = (rows: AuditRecord[]): number => details(rows).reduce<number>((n, d) => n + (typeof d.count === "number" ? d.count : 1), 0);

test("an identity's refusals past its burst are counted into one row per window; another identity's are written at once", async () => {
  const { vault } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: 3_600_000 } }); // windows closed by hand
  after(() => vault.close());
  const admin = vault.admin();
  await admin.storeSecret({ name: "github-token", value: "ghp_" + "c".repeat(36) });
  await admin.storeSecret({ name: "not-granted", value: "x".repeat(20) });
  const mallory = vault.session({ id: "token:mallory", role: "agent", agent: "claude", transport: "tcp" });
  const bob = vault.session({ id: "token:bob", role: "agent", agent: "bob", transport: "tcp" });
  const denied = async (): Promise<AuditRecord[]> => (await admin.auditQuery({ types: ["access_denied"], limit: 10_000 })) as AuditRecord[];

  // 100 refusals of two kinds: each still refused with its own code.
  const codes: string[] = [];
  for (let i = 0; i < 100; i++)
    codes.push(await codeOf(i % 2 === 0 ? mallory.accessSecret(randomUUID(), { domain: "api.github.com" }) : mallory.requestLease({ secret: "not-granted", domains: ["api.github.com"] })));
  assert.deepEqual(new Set(codes), new Set(["lease_not_found", "access_denied"]));
  let rows = await denied();
  assert.equal(BURST, 32);
  assert.equal(rows.length, BURST, "mallory's burst: a row each, written with their calls");
  assert.ok(rows.every((r) => r.actorId === "token:mallory" && r.detail === null));
  // Bob's refusal during mallory's flood is written at once: one identity's flood holds back no other.
  assert.equal(await codeOf(bob.accessSecret(randomUUID())), "lease_not_found");
  rows = await denied();
  assert.equal(rows.length, BURST + 1);
  assert.equal(rows[BURST]!.actorId, "token:bob");

  await vault.flushRefusals(); // the window closes
  rows = await denied();
  assert.equal(rows.length, BURST + 2);
  const summary = rows[BURST + 1]!;
  assert.equal(summary.actorId, "token:mallory");
  assert.equal(summary.agent, "claude");
  const d = details([summary])[0]!;
  assert.equal(d.count, 68);
  assert.match(String(d.reasons), /^(lease_not_found ×34; access_denied ×34|access_denied ×34; lease_not_found ×34)$/);
  assert.match(String(summary.reason), /^several: 68 refusals counted/);
  assert.equal(d.secrets, "global/not-granted", "the secrets the counted refusals named");
  assert.equal(total(rows.filter((r) => r.actorId === "token:mallory")), 100, "every refusal is counted");

  // Still refused in the next window: counted, not written at once (no new burst during a flood).
  await codeOf(mallory.accessSecret(randomUUID()));
  assert.equal((await denied()).length, BURST + 2);
  await vault.flushRefusals();
  rows = await denied();
  assert.equal(rows.length, BURST + 3);
  assert.equal(details(rows)[BURST + 2]!.count, 1);
  // A quiet window: forgotten, and its next refusal is written at once.
  await vault.flushRefusals();
  await codeOf(mallory.accessSecret(randomUUID()));
  rows = await denied();
  assert.equal(rows.length, BURST + 4);
  assert.equal(rows[BURST + 3]!.detail, null);
  // The trail with its summary rows verifies.
  assert.equal((await admin.auditVerify()).ok, true);
});

test("attack: refusals spread over many identities (one token each) are bounded by the window's budget and the identity cap; all are counted", async () => {
  const { vault } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: 3_600_000 } });
  after(() => vault.close());
  const admin = vault.admin();
  const n = MAX_IDENTITIES + 44;
  for (let i = 0; i < n; i++) {
    const s = vault.session({ id: `token:sybil-${i}`, role: "agent", agent: "claude", transport: "tcp" });
    for (let k = 0; k < 2; k++) assert.equal(await codeOf(s.accessSecret(randomUUID())), "lease_not_found");
  }
  const rows = async (): Promise<AuditRecord[]> => (await admin.auditQuery({ types: ["access_denied"], limit: 10_000 })) as AuditRecord[];
  assert.equal((await rows()).length, WINDOW_BUDGET, "one row each only while the window's budget lasts");
  await vault.flushRefusals();
  const all = await rows();
  assert.equal(total(all), 2 * n, "every refusal is counted");
  // One summary per identity tallied, and the identities past the cap under "*".
  const summaries = all.filter((r) => r.detail !== null);
  assert.ok(summaries.length <= MAX_IDENTITIES + 1, `${summaries.length} summary rows`);
  assert.ok(summaries.some((r) => r.actorId === "*"), "identities past the cap are counted together");
});

test("refusals counted when the vault closes are written by close()", async () => {
  const { vault, reopen } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: 3_600_000 } });
  const mallory = vault.session({ id: "token:mallory", role: "agent", agent: "claude", transport: "uds" });
  for (let i = 0; i < BURST + 20; i++) await codeOf(mallory.accessSecret(randomUUID()));
  await vault.close();
  const again = (await reopen()).vault;
  after(() => again.close());
  const rows = (await again.admin().auditQuery({ types: ["access_denied"], limit: 1000 })) as AuditRecord[];
  assert.equal(rows.length, BURST + 1);
  assert.equal(total(rows), BURST + 20);
});

test("attack: 500 refused calls from one agent token over lessor serve (TCP) are a handful of rows, each refusal counted, and the trail verifies", async () => {
  const home = await makeHome({ policy: POLICY, config: '[server]\ntcp = "127.0.0.1:0"\n' });
  const d = await startServe(home);
  let stopped = false;
  after(async () => {
    if (!stopped) await d.stop();
  });
  const admin = await LessorClient.connect({ socketPath: d.socket });
  const tok = await admin.createToken({ name: "mallory", role: "agent", agent: "claude" });
  await admin.close();
  const agent = await LessorClient.connect(d.tcp!, { token: tok.token });
  const codes = new Map<string, number>();
  for (let i = 0; i < 500; i++) {
    const c = await codeOf(agent.accessSecret(randomUUID(), { domain: "api.github.com" }));
    codes.set(c, (codes.get(c) ?? 0) + 1);
  }
  await agent.close();
  assert.deepEqual([...codes], [["lease_not_found", 500]], "every call is refused as before");
  assert.equal(await d.stop(), 0);
  stopped = true;
  // What is counted is written at shutdown; read the trail from the home.
  const vault = await openVault({ home, env: {} });
  after(() => vault.close());
  const rows = (await vault.admin().auditQuery({ types: ["access_denied"], limit: 10_000 })) as AuditRecord[];
  const mine = rows.filter((r) => r.actorId === `token:mallory/${tok.id}`);
  assert.equal(total(mine), 500, `every refusal is counted: ${JSON.stringify(mine.map((r) => [r.reason, r.detail]))}`);
  assert.ok(mine.length <= BURST + 4, `${mine.length} rows for 500 refusals`);
  assert.ok(details(mine).some((x) => x.count !== undefined && /^lease_not_found ×\d+$/.test(String(x.reasons))));
  assert.equal((await vault.admin().auditVerify()).ok, true);
});
