/**
 * An attack pass on the audit trail's outputs and the dead-man switch (docs/audit.md, docs/security.md
 * "The audit trail" and "The dead-man switch", src/audit/, src/vault/heartbeat.ts, `lessor audit`).
 * Real SQLite files, a second connection to lessor.db as the attacker without the key, the built CLI
 * as a child process (under a file-size limit standing for a full disk). A canary value is stored in
 * every vault and must never show.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { appendFileSync, readFileSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { initHome, openVault } from "../src/config/open-vault.js";
import { agent, clock, codeOf, refusalOf, grant, makeVault, orchestrator, tempDirUntilExit } from "./helpers.js";
import { BIN, runCli, runProcess } from "./cli-harness.js";
import { attack, type Row } from "./db-attack.js";
import { BURST } from "../src/vault/refusals.js";

const CANARY = `CANARY-auditsink-${randomBytes(10).toString("hex")}`;
const POLICY = grant("g", ["claude"], ["canary"], ["api.example.com"], 'max_uses = 5\nttl = "1h"');

async function newHome(opts: { jsonl?: boolean } = {}): Promise<string> {
  const home = join(tempDirUntilExit("lessor-atkas-"), "home");
  await initHome({ home, env: { LESSOR_HOME: home } });
  writeFileSync(join(home, "policy.toml"), POLICY, { mode: 0o600 });
  if (opts.jsonl) {
    const toml = readFileSync(join(home, "lessor.toml"), "utf8").replace('# jsonl = "audit.jsonl"', 'jsonl = "audit.jsonl"');
    writeFileSync(join(home, "lessor.toml"), toml, { mode: 0o600 });
  }
  const vault = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    await vault.admin().storeSecret({ name: "canary", value: CANARY });
    const claude = vault.session(agent("claude"));
    const l = await claude.requestLease({ secret: "canary" });
    (await claude.accessSecret(l.id, { domain: "api.example.com" })).value.wipe();
  } finally {
    await vault.close();
  }
  return home;
}

const cliEnv = (home: string): Record<string, string> => ({ PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", LESSOR_HOME: home });

const noCanary = (what: string, text: string): void => assert.ok(!text.includes(CANARY), `the canary shows in ${what}`);

// ---------------------------------------------------------------------------------------------------
// The chain: rows planted by a writer of lessor.db without the key.

test("rows planted at seq 0 and below by a database writer without the key, which lessor audit query/tail show, make lessor audit verify fail and name the lowest", async () => {
  const home = await newHome();
  const db = join(home, "lessor.db");
  const before = await runCli(["audit", "verify", "--json"], { home });
  assert.equal(before.code, 0, before.stdout + before.stderr);
  const events = (JSON.parse(before.stdout) as { events: number }).events;
  // The attacker copies a real row's chain fields (it cannot compute a MAC) onto forged events at seq 0
  // and -7: an admin revealing the canary, an agent using it from another host.
  attack(db, (d) => {
    const first = d.prepare("SELECT * FROM audit WHERE seq = 1").get() as Row;
    const ins = d.prepare(
      "INSERT INTO audit (seq,id,time,type,actor_id,actor_role,transport,agent,secret,lease_id,domain,outcome,reason,detail,prev_hash,hash,key_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    );
    ins.run(0, "0190aaaa-0000-7000-8000-000000000000", Date.now(), "secret_revealed", "uid:0", "admin", "cli", null, "global/canary", null, null, "ok", null, null, first.prev_hash, first.hash, first.key_id);
    ins.run(-7, "0190aaaa-0000-7000-8000-000000000001", Date.now(), "secret_accessed", "token:bob", "agent", "tcp", "bob", "global/canary", null, "evil.example", "ok", null, null, first.prev_hash, first.hash, first.key_id);
  });
  // What an incident responder reads: the forged events are there, as real as the others.
  const q = await runCli(["audit", "query", "--since", "1h", "--json"], { home });
  assert.equal(q.code, 0, q.stderr);
  const shown = JSON.parse(q.stdout) as { seq: number; type: string; domain: string | null }[];
  assert.ok(shown.some((e) => e.domain === "evil.example"), "the planted row is shown by audit query");
  const tail = await runCli(["audit", "tail"], { home });
  assert.match(tail.stdout, /evil\.example|secret_revealed/);
  noCanary("audit query", q.stdout + q.stderr + tail.stdout + tail.stderr);
  // Promise (docs/audit.md "Tamper evidence": "an edited, inserted, reordered or renumbered event …
  // fails its MAC or its link, and verify names it"): verify must fail on rows it cannot vouch for.
  const v = await runCli(["audit", "verify", "--json"], { home });
  const r = JSON.parse(v.stdout) as { ok: boolean; events: number };
  assert.equal(r.events, events, "verify walks exactly the events it walked before (it never reads seq <= 0)");
  assert.equal(v.code, 1, `audit verify must not vouch for a trail that audit query shows forged events in: ${v.stdout}`);
  assert.equal(r.ok, false);
  assert.equal((JSON.parse(v.stdout) as { firstBad?: { seq: number } }).firstBad?.seq, -7, v.stdout);
  assert.match(v.stdout, /numbered below 1/);
});

test("the trail's last event cut with the checkpoint left as it was: audit verify fails (holds)", async () => {
  const home = await newHome();
  const db = join(home, "lessor.db");
  const max = attack(db, (d) => d.prepare("SELECT max(seq) FROM audit").pluck().get() as number);
  assert.ok(max >= 3);
  // Tail cut, checkpoint left as it was.
  attack(db, (d) => d.prepare("DELETE FROM audit WHERE seq = ?").run(max));
  const v = await runCli(["audit", "verify"], { home });
  assert.equal(v.code, 1, v.stdout);
  assert.match(v.stdout, /removed from the end/);
});

// ---------------------------------------------------------------------------------------------------
// Filters: summaries of counted refusals.

test("lessor audit query --secret S finds an agent's refusals for S counted into a summary row after decoys spent the burst, and only for S exactly", async () => {
  const home = await newHome();
  const vault = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    const claude = vault.session(agent("claude"));
    // The burst of rows written one each is spent on decoys...
    for (let i = 0; i < BURST; i++) await claude.requestLease({ secret: `decoy-${i}` }).catch(() => {});
    // ...then the secret that matters is probed, ten times.
    for (let i = 0; i < 10; i++) await claude.requestLease({ secret: "prod-db" }).catch(() => {});
  } finally {
    await vault.close(); // writes the window's summary
  }
  const all = await runCli(["audit", "query", "--type", "access_denied", "--limit", "1000", "--json"], { home });
  const denied = JSON.parse(all.stdout) as { secret: string | null; detail: { secrets?: string; count?: number } | null }[];
  const summary = denied.find((e) => e.detail?.count !== undefined);
  assert.ok(summary, "a summary row was written");
  assert.equal(summary!.detail!.secrets, "global/prod-db", "the summary names the probed secret (detail.secrets)");
  assert.equal(summary!.detail!.count, 10);
  // What the admin asks: which events are about global/prod-db?
  const q = await runCli(["audit", "query", "--secret", "global/prod-db", "--json"], { home });
  assert.equal(q.code, 0, q.stderr);
  const about = JSON.parse(q.stdout) as unknown[];
  assert.ok(about.length > 0, "audit query --secret global/prod-db answers 'no events' although ten refusals for it are in the trail");
  assert.equal(summary!.secret, "global/prod-db", "a summary naming one secret is filed under it");
  // A name is matched exactly, not as a part of another.
  const part = await runCli(["audit", "query", "--secret", "global/prod", "--json"], { home });
  assert.deepEqual(JSON.parse(part.stdout), []);
});

test("lessor audit query --agent A finds an orchestrator's refusals for A counted into a summary that lists other agents too, and only for A exactly", async () => {
  const home = await newHome();
  const vault = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    const orch = vault.session(orchestrator(["claude", "decoy"]));
    for (let i = 0; i < BURST; i++) await orch.requestLease({ secret: `decoy-${i}`, agent: "decoy" }).catch(() => {});
    for (let i = 0; i < 10; i++) await orch.requestLease({ secret: "prod-db", agent: "claude" }).catch(() => {});
    await orch.requestLease({ secret: "x", agent: "decoy" }).catch(() => {});
  } finally {
    await vault.close();
  }
  const all = await runCli(["audit", "query", "--type", "access_denied", "--limit", "1000", "--json"], { home });
  const denied = JSON.parse(all.stdout) as { agent: string | null; detail: { agents?: string; count?: number } | null }[];
  const summary = denied.find((e) => e.detail?.count !== undefined);
  assert.ok(summary, "a summary row was written");
  assert.ok(summary!.detail!.agents?.split(",").includes("claude"), "the summary names claude (detail.agents)");
  const q = await runCli(["audit", "query", "--agent", "claude", "--type", "access_denied", "--json"], { home });
  const about = JSON.parse(q.stdout) as unknown[];
  assert.ok(about.length > 0, "audit query --agent claude answers 'no events' although ten refusals made for claude are in the trail");
  assert.ok((about as { detail: { count?: number } | null }[]).some((e) => e.detail?.count !== undefined), "the summary is among them");
  const both = await runCli(["audit", "query", "--agent", "claude", "--secret", "global/prod-db", "--type", "access_denied", "--json"], { home });
  assert.ok((JSON.parse(both.stdout) as unknown[]).length > 0, "--agent with --secret finds the summary listing both");
  const part = await runCli(["audit", "query", "--agent", "clau", "--json"], { home });
  assert.deepEqual(JSON.parse(part.stdout), []);
});

test("the memory store's audit query by agent and secret finds a summary that lists them (exactly)", async () => {
  const { vault } = await makeVault({ store: "memory", policy: POLICY });
  const orch = vault.session(orchestrator(["claude", "decoy"]));
  for (let i = 0; i < BURST; i++) await orch.requestLease({ secret: `decoy-${i}`, agent: "decoy" }).catch(() => {});
  for (let i = 0; i < 3; i++) await orch.requestLease({ secret: "prod-db", agent: "claude" }).catch(() => {});
  await orch.requestLease({ secret: "x", agent: "decoy" }).catch(() => {});
  await vault.flushRefusals();
  const adm = vault.admin();
  const q = await adm.auditQuery({ agent: "claude", secret: "global/prod-db", limit: 100 });
  assert.ok(q.some((e) => e.detail !== null && JSON.parse(e.detail).count === 4), JSON.stringify(q));
  assert.deepEqual(await adm.auditQuery({ agent: "clau", limit: 100 }), []);
  assert.deepEqual(await adm.auditQuery({ secret: "global/prod", limit: 100 }), []);
});

// ---------------------------------------------------------------------------------------------------
// The JSONL sink.

test("the JSONL sink on a full disk: a short write is not taken as written; the operation fails as committed-but-withheld and the file is cut back, never torn (docs/audit.md: no operation returns before its lines are written)", async () => {
  const home = await newHome({ jsonl: true });
  const file = join(home, "audit.jsonl");
  // A full disk, as RLIMIT_FSIZE gives it: the file may grow to LIMIT, then write() is short, then EFBIG.
  const LIMIT = 4 << 20;
  const have = statSync(file).size;
  appendFileSync(file, `{"pad":"${"x".repeat(LIMIT - 100 - have - 11)}"}\n`);
  assert.equal(statSync(file).size, LIMIT - 100);
  const r = await runProcess("prlimit", [`--fsize=${LIMIT}`, "--", process.execPath, "--", BIN, "killswitch", "--release", "--reason", "back at the desk"], { env: cliEnv(home) });
  const text = readFileSync(file, "utf8");
  const last = text.slice(text.lastIndexOf("\n", text.length - 2) + 1);
  noCanary("the JSONL file", text);
  // Either the operation is refused (audit_failed, exit != 0), or its line is whole.
  if (r.code === 0) {
    assert.ok(last.endsWith("\n"), `lessor said the operation succeeded (exit 0: ${r.stdout.trim()}) but its audit line is torn: ${JSON.stringify(last.slice(0, 120))}…`);
    assert.doesNotThrow(() => JSON.parse(last));
  } else {
    assert.match(r.stderr, /audit/);
  }
  // Either way the file ends in a whole line: a failed write is cut back to where it began.
  assert.ok(text.endsWith("\n"), "the audit file ends in a torn line");
  assert.doesNotThrow(() => JSON.parse(last));
  assert.equal(r.code, 1, "the release's line did not fit, so its result is withheld");
  assert.equal(text.length, LIMIT - 100, "the file is cut back to its length before the failed write");
  assert.match(r.stderr, /committed, but its audit line could not be written/);
});

test("a JSONL file removed under a running vault: the operation is refused (audit_failed) before it changes anything", async () => {
  const home = await newHome({ jsonl: true });
  const file = join(home, "audit.jsonl");
  const vault = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    const adm = vault.admin();
    unlinkSync(file); // logrotate without copytruncate, or an accident
    let msg = "";
    await adm.deleteSecret({ scope: "global", name: "canary" }).catch((e: Error) => (msg = e.message));
    assert.match(msg, /refused/, "the admin is told the deletion was refused");
    assert.match(msg, /nothing was changed/);
    // Promise (docs/security.md "lessor's own files": "one removed or replaced meanwhile refuses the
    // operations (audit_failed)"; the error: "the operation was refused"): nothing changed.
    const left = await adm.listSecrets();
    assert.ok(left.some((s) => s.name === "canary"), "the secret the admin was told was not deleted is gone");
  } finally {
    await vault.close().catch(() => {});
  }
});

test("JSONL lines cannot be split or forged by a newline, CR, ESC, U+2028 or bidi in an agent-chosen reason or domain (holds)", async () => {
  const home = await newHome({ jsonl: true });
  const vault = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    const claude = vault.session(agent("claude"));
    const l = await claude.requestLease({ secret: "canary" });
    for (const bad of ["x\n{\"seq\":1}", "x\r\u001b[2J", "x\u2028y", "x\u202ey", "x\u009b31m"]) {
      await claude.revokeLease(l.id, bad).catch(() => {});
      await claude.accessSecret(l.id, { domain: bad }).then((v) => v.value.wipe(), () => {});
    }
  } finally {
    await vault.close();
  }
  const text = readFileSync(join(home, "audit.jsonl"), "utf8");
  noCanary("the JSONL file", text);
  for (const line of text.split("\n").filter((s) => s !== "")) {
    assert.doesNotThrow(() => JSON.parse(line));
    assert.ok(!/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/.test(line), `a raw control character in ${line.slice(0, 80)}`);
  }
});

// ---------------------------------------------------------------------------------------------------
// The dead-man switch.

test("dead-man switch: an agent's and an orchestrator's heartbeats are refused and move nothing; a clock stepped back over an hour fails closed (holds)", async () => {
  const c = clock();
  const { vault } = await makeVault({ policy: POLICY, now: c.now, limits: { heartbeatMs: 10_000 } });
  const adm = vault.admin();
  await adm.storeSecret({ name: "canary", value: CANARY });
  await adm.heartbeat();
  const claude = vault.session(agent("claude"));
  const orch = vault.session(orchestrator(["claude"]));
  c.advance(8_000);
  assert.equal(await codeOf(claude.heartbeat()), "access_denied");
  assert.equal(await codeOf(orch.heartbeat()), "access_denied");
  c.advance(3_000);
  assert.match((await refusalOf(claude.requestLease({ secret: "canary" }))).message, /killswitch|dead-man/);
  // A heartbeat does not release it; the release counts as one; then a clock stepped back 2 h.
  await adm.heartbeat();
  assert.match((await refusalOf(claude.requestLease({ secret: "canary" }))).message, /killswitch|dead-man/);
  await adm.releaseKillswitch();
  (await claude.requestLease({ secret: "canary" })).id;
  c.advance(-2 * 3600_000);
  assert.match((await refusalOf(claude.requestLease({ secret: "canary" }))).message, /killswitch|dead-man/);
  const rows = await adm.auditQuery({ limit: 1000 });
  noCanary("the audit rows", JSON.stringify(rows));
});
