/**
 * Issue 12 item 3: the audit trail cannot be laundered. Every attack here is done by a second
 * better-sqlite3 connection to the vault's real database file (an attacker with write access to it,
 * without the master key), while the vault is open or between runs; then the vault must refuse to
 * extend the tampered trail, and verify must say what happened.
 */
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import type BetterSqlite3 from "better-sqlite3";
import { GENESIS, hashEventV1 } from "../src/audit/chain.js";
import { AUDIT_KEYS_META } from "../src/audit/keys.js";
import { createKeyFile, fileKeySource } from "../src/crypto/keys/file.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { parsePolicy } from "../src/vault/policy.js";
import type { VaultSignal } from "../src/vault/signals.js";
import type { AuditRecord } from "../src/base/types.js";
import { Vault } from "../src/vault/vault.js";
import { V1_KEY } from "./fixtures/make-audit-v1-db.js";
import { codeOf, HISTORY_POLICY, tempDir, withHistory } from "./helpers.js";
import { attack, type Row } from "./db-attack.js";

const POLICY = HISTORY_POLICY;
const V1_FIXTURE = fileURLToPath(new URL("./fixtures/audit-v1.db", import.meta.url));

/** The attacker: a separate connection to the database file. */
const asRecord = (r: Row): AuditRecord => ({
  seq: r.seq,
  id: r.id,
  time: r.time,
  type: r.type,
  actorId: r.actor_id,
  actorRole: r.actor_role,
  transport: r.transport,
  agent: r.agent,
  secret: r.secret,
  leaseId: r.lease_id,
  domain: r.domain,
  outcome: r.outcome,
  reason: r.reason,
  detail: r.detail,
  prevHash: r.prev_hash,
  hash: r.hash,
  keyId: r.key_id,
});

/**
 * What an attacker without the key can do to make a trail look consistent: recompute every hash from
 * `fromSeq` on with plain SHA-256 (the old, unkeyed rule), chaining each onto the row before it.
 * `keyId` "keep" leaves the rows claiming to be keyed; null makes them claim the old format.
 */
function rehashWithoutKey(db: BetterSqlite3.Database, fromSeq: number, keyId: "keep" | null): void {
  const before = db.prepare("SELECT hash FROM audit WHERE seq < ? ORDER BY seq DESC LIMIT 1").pluck().get(fromSeq) as Buffer | undefined;
  let prev: Buffer = before ?? GENESIS;
  const rows = db.prepare("SELECT * FROM audit WHERE seq >= ? ORDER BY seq").all(fromSeq) as Row[];
  const upd = db.prepare("UPDATE audit SET prev_hash = ?, hash = ?, key_id = ? WHERE seq = ?");
  for (const r of rows) {
    const rec = { ...asRecord(r), prevHash: prev };
    const h = hashEventV1(rec);
    upd.run(prev, h, keyId === "keep" ? r.key_id : null, r.seq);
    prev = h;
  }
}

const checkpointRow = (dbPath: string) => {
  const db = new Database(dbPath, { readonly: true });
  try {
    return db.prepare("SELECT seq, hash, key_id, mac FROM audit_checkpoint").get() as { seq: number; hash: Buffer; key_id: string; mac: Buffer };
  } finally {
    db.close();
  }
};

const headSeq = (dbPath: string): number => {
  const db = new Database(dbPath, { readonly: true });
  try {
    return db.prepare("SELECT max(seq) FROM audit").pluck().get() as number;
  } finally {
    db.close();
  }
};

async function brokenMessage(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    assert.equal((e as { code?: string }).code, "audit_broken", String(e));
    return (e as Error).message;
  }
  assert.fail("the write was not refused");
}

describe("the audit trail cannot be laundered", () => {
  test("truncating the last events: the next write is refused, nothing is re-MACed, and verify reports the truncation", async () => {
    const { admin, claude, dbPath, reopen } = await withHistory();
    const cpBefore = checkpointRow(dbPath);
    attack(dbPath, (db) => db.prepare("DELETE FROM audit WHERE seq > 9").run());
    // The vault is still open (a running daemon): its very next audited write is refused.
    const msg = await brokenMessage(admin.storeSecret({ name: "new", value: "x" }));
    assert.match(msg, /the trail ends at event 9 but the checkpoint says 12: events were removed from the end/);
    assert.match(msg, /lessor audit recover --reason/);
    assert.equal(await codeOf(claude.requestLease({ secret: "tok" })), "audit_broken");
    assert.equal(await codeOf(admin.revealSecret({ scope: "global", name: "tok" })), "audit_broken", "an audited read is refused too");
    assert.equal(headSeq(dbPath), 9, "nothing was chained onto the cut trail");
    assert.deepEqual(checkpointRow(dbPath), cpBefore, "the checkpoint was not re-MACed for the cut head");
    assert.equal(await codeOf(admin.getSecretMetadata({ scope: "global", name: "new" })), "secret_not_found", "the refused write changed nothing");
    const v = await admin.auditVerify();
    assert.equal(v.ok, false);
    assert.match(v.problem!, /trail ends at event 9 but the checkpoint says 12/);
    // Reads keep working so the admin can investigate.
    assert.equal((await admin.auditQuery({ limit: 100 })).length, 9);
    assert.equal((await admin.listSecrets()).length, 1);
    assert.equal((await admin.status()).auditHead >= 9, true);
    // A restart does not launder it either.
    const t2 = await reopen();
    assert.equal(await codeOf(t2.vault.admin().storeSecret({ name: "new", value: "x" })), "audit_broken");
    assert.equal((await t2.vault.admin().auditVerify()).ok, false);
  });

  test("putting back an older checkpoint row after cutting the trail is refused by the vault that wrote past it", async () => {
    const { admin, dbPath } = await withHistory();
    const old = checkpointRow(dbPath); // the attacker keeps a copy of the checkpoint at event 12
    await admin.storeSecret({ name: "more", value: "x" });
    await admin.storeSecret({ name: "more2", value: "y" });
    attack(dbPath, (db) => {
      db.prepare("DELETE FROM audit WHERE seq > ?").run(old.seq);
      db.prepare("UPDATE audit_checkpoint SET seq = ?, hash = ?, key_id = ?, mac = ?").run(old.seq, old.hash, old.key_id, old.mac);
    });
    assert.match(await brokenMessage(admin.storeSecret({ name: "more3", value: "z" })), /this process wrote up to event 14/);
    assert.equal(headSeq(dbPath), 12);
  });

  test("an older recovery in the trail does not excuse a later cut with an older checkpoint put back", async () => {
    const { admin, dbPath } = await withHistory();
    attack(dbPath, (db) => db.prepare("DELETE FROM audit WHERE seq > 11").run());
    await admin.auditRecover({ reason: "earlier incident" }); // break at 12, found head 11
    await new Promise((r) => setTimeout(r, 5));
    await admin.storeSecret({ name: "more", value: "x" }); // 13
    const old = checkpointRow(dbPath);
    await admin.storeSecret({ name: "more2", value: "y" }); // 14
    await admin.storeSecret({ name: "more3", value: "z" }); // 15
    attack(dbPath, (db) => {
      db.prepare("DELETE FROM audit WHERE seq > ?").run(old.seq);
      db.prepare("UPDATE audit_checkpoint SET seq = ?, hash = ?, key_id = ?, mac = ?").run(old.seq, old.hash, old.key_id, old.mac);
    });
    assert.match(await brokenMessage(admin.storeSecret({ name: "more4", value: "w" })), /this process wrote up to event 15/);
  });

  for (const keyId of ["keep", null] as const) {
    test(`deleting a middle event and recomputing every later hash with plain SHA-256 (key ids ${keyId === "keep" ? "kept" : "cleared"}) is refused and detected`, async () => {
      const { admin, dbPath } = await withHistory();
      attack(dbPath, (db) => {
        db.prepare("DELETE FROM audit WHERE seq = 6").run();
        // Renumber so that there is no gap, and point the checkpoint's seq and hash at the new head.
        for (let s = 7; s <= 12; s++) db.prepare("UPDATE audit SET seq = ? WHERE seq = ?").run(s - 1, s);
        rehashWithoutKey(db, 6, keyId);
        const head = db.prepare("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").get() as { seq: number; hash: Buffer };
        db.prepare("UPDATE audit_checkpoint SET seq = ?, hash = ?").run(head.seq, head.hash);
      });
      assert.equal(await codeOf(admin.storeSecret({ name: "new", value: "x" })), "audit_broken");
      assert.equal(headSeq(dbPath), 11);
      const v = await admin.auditVerify();
      assert.equal(v.ok, false);
      assert.equal(v.firstBad!.seq, 6);
      assert.match(v.problem!, keyId === "keep" ? /event 6 was altered/ : /event 6 is in the old unkeyed format after keyed events/);
    });
  }

  test("editing an event and rehashing it and every later one without the key is detected; the next write is refused", async () => {
    const { admin, dbPath } = await withHistory();
    attack(dbPath, (db) => {
      db.prepare("UPDATE audit SET agent = 'mallory' WHERE seq = 4").run();
      rehashWithoutKey(db, 4, "keep");
    });
    assert.match(await brokenMessage(admin.storeSecret({ name: "new", value: "x" })), /head \(event 12\) is not the event the checkpoint vouches for/);
    const v = await admin.auditVerify();
    assert.equal(v.ok, false);
    assert.equal(v.firstBad!.seq, 4);
    assert.match(v.problem!, /event 4 was altered/);
  });

  test("a key id forged with terminal controls (C1, bidi) is named escaped in verify's problem, not raw", async () => {
    const { admin, dbPath } = await withHistory();
    attack(dbPath, (db) => db.prepare("UPDATE audit SET key_id = ? WHERE seq = 3").run("k\u009b31m\u202eevil"));
    const v = await admin.auditVerify();
    assert.equal(v.ok, false);
    assert.equal(v.firstBad!.seq, 3);
    assert.match(v.problem!, /master key k\\x9b31m\\u202eevil, which is neither loaded nor archived/);
    assert.doesNotMatch(v.problem!, /[\u0080-\u009f\u202a-\u202e]/);
  });

  test("editing only the head event and rehashing it is refused; editing a middle event without rehashing is named by verify", async () => {
    const a = await withHistory();
    attack(a.dbPath, (db) => {
      db.prepare("UPDATE audit SET outcome = 'ok', reason = NULL WHERE seq = 12").run();
      rehashWithoutKey(db, 12, "keep");
    });
    assert.equal(await codeOf(a.admin.storeSecret({ name: "new", value: "x" })), "audit_broken");
    const b = await withHistory();
    attack(b.dbPath, (db) => db.prepare("UPDATE audit SET agent = 'mallory' WHERE seq = 4").run());
    const v = await b.admin.auditVerify();
    assert.equal(v.firstBad!.seq, 4);
    assert.match(v.problem!, /event 4 was altered: its fields do not match its hash/);
  });

  test("a wiped trail (every event, the checkpoint and the format marker deleted) is refused, in this process and after a restart", async () => {
    const { admin, dbPath, reopen } = await withHistory();
    attack(dbPath, (db) => {
      db.prepare("DELETE FROM audit").run();
      db.prepare("DELETE FROM audit_checkpoint").run();
      db.prepare("DELETE FROM meta WHERE key = 'audit_format'").run();
    });
    assert.match(await brokenMessage(admin.storeSecret({ name: "new", value: "x" })), /every event was deleted/);
    const t2 = await reopen();
    assert.match(await brokenMessage(t2.vault.admin().storeSecret({ name: "new", value: "x" })), /the trail was wiped/);
    assert.equal(headSeq(dbPath), null);
    const v = await t2.vault.admin().auditVerify();
    assert.equal(v.ok, false);
    assert.match(v.problem!, /the trail was wiped/);
    const r = await t2.vault.admin().auditRecover({ reason: "trail wiped; restored the JSONL copy elsewhere" });
    assert.equal(r.breakSeq, 1);
    await t2.vault.admin().storeSecret({ name: "new", value: "x" });
    const v2 = await t2.vault.admin().auditVerify();
    assert.equal(v2.ok, true, v2.problem);
    assert.match(v2.breaks[0]!.found.problem!, /the trail was wiped/);
  });

  test("a checkpoint seq that is no whole number from 0 up (1.5, -1, text, a blob) is a checkpoint that does not verify, not an internal error", async () => {
    for (const seq of [1.5, -1, "twelve", Buffer.from([0])]) {
      const { admin, dbPath, reopen } = await withHistory();
      attack(dbPath, (db) => db.prepare("UPDATE audit_checkpoint SET seq = ?").run(seq));
      const msg = await brokenMessage(admin.storeSecret({ name: "new", value: "x" }));
      assert.match(msg, /the audit checkpoint was altered: its MAC does not match/, String(seq));
      const again = await reopen();
      const v = await again.vault.admin().auditVerify();
      assert.equal(v.ok, false, String(seq));
      assert.match(v.problem ?? "", /the audit checkpoint was altered/, String(seq));
    }
  });

  test("the vault raises one audit_broken signal however many writes it refuses", async () => {
    const { vault, admin, dbPath } = await withHistory();
    const got: VaultSignal[] = [];
    vault.onSignal((s) => got.push(s));
    attack(dbPath, (db) => db.prepare("DELETE FROM audit WHERE seq > 10").run());
    for (let i = 0; i < 3; i++) assert.equal(await codeOf(admin.storeSecret({ name: `n${i}`, value: "x" })), "audit_broken");
    const broken = got.filter((s) => s.type === "audit_broken");
    assert.equal(broken.length, 1);
    assert.match((broken[0] as { problem: string }).problem, /events were removed from the end/);
  });
});

describe("recovery", () => {
  test("brakes still work while the trail is broken; recovery records the break and them, writes resume, verify shows the break", async () => {
    const { admin, claude, dbPath, reopen } = await withHistory();
    const live = await claude.requestLease({ secret: "tok" }); // event 13
    const live2 = await claude.requestLease({ secret: "tok" }); // event 14
    attack(dbPath, (db) => db.prepare("DELETE FROM audit WHERE seq > 12").run());
    // Fail-safe direction: a revocation and the killswitch still take effect.
    assert.deepEqual(await claude.revokeLease(live.id, "done"), { revoked: true });
    assert.deepEqual(await admin.killswitch("suspicious audit"), { revoked: 1 });
    const leases = await admin.listLeases({ agent: "claude" });
    for (const id of [live.id, live2.id]) assert.notEqual(leases.find((l) => l.id === id)!.revokedAt, null, "revoked");
    assert.notEqual(await codeOf(claude.accessSecret(live2.id, { domain: "api.example.com" })), "resolved");
    // Loosening is an audited write like any other: refused.
    assert.equal(await codeOf(admin.releaseKillswitch("all clear")), "audit_broken");
    assert.equal(headSeq(dbPath), 12, "the brakes' events were not chained onto the cut trail");
    // Only an admin may recover; the refusal says so even though it cannot be audited now.
    assert.equal(await codeOf(claude.auditRecover({ reason: "me" })), "access_denied");
    assert.equal(await codeOf(admin.auditRecover({ reason: "" })), "invalid_request");
    assert.equal(await codeOf(admin.auditRecover({ reason: "ok\u202egnp.exe" })), "invalid_request", "one line of plain text");

    const r = await admin.auditRecover({ reason: "disk restored from a bad snapshot; incident 42" });
    assert.equal(r.recovered, true);
    assert.equal(r.breakSeq, 13);
    assert.deepEqual(r.found, {
      problem: "the trail ends at event 12 but the checkpoint says 14: events were removed from the end",
      firstBadSeq: null,
      headSeq: 12,
      checkpointSeq: 14,
    });
    assert.equal(r.deferred, 2);
    const after = await admin.auditQuery({ afterSeq: 12 });
    assert.deepEqual(after.map((e) => [e.seq, e.type]), [[13, "audit_break"], [14, "lease_revoked"], [15, "killswitch"]]);
    assert.equal(after[0]!.reason, "disk restored from a bad snapshot; incident 42");
    assert.equal(after[0]!.actorId, "embedded");
    const deferredAt = JSON.parse(after[1]!.detail!) as { deferred_at: number; changed: number };
    assert.equal(typeof deferredAt.deferred_at, "number");
    assert.equal(after[1]!.actorId, "test:claude", "a deferred event keeps who did it");

    // Writes resume.
    assert.deepEqual(await admin.releaseKillswitch("all clear"), { released: true });
    await admin.storeSecret({ name: "new", value: "x" });
    const v = await admin.auditVerify();
    assert.equal(v.ok, true, v.problem);
    assert.equal(v.breaks.length, 1);
    assert.equal(v.breaks[0]!.seq, 13);
    assert.equal(v.breaks[0]!.found.checkpointSeq, 14);
    assert.equal(v.breaks[0]!.unverified, 0);
    assert.equal(v.breaks[0]!.reason, "disk restored from a bad snapshot; incident 42");
    assert.deepEqual(await admin.auditRecover({ reason: "again" }), { recovered: false, breakSeq: null, found: null, deferred: 0, dropped: 0 });
    // Another process on the same file agrees.
    const t2 = await reopen();
    assert.equal((await t2.vault.admin().auditVerify()).ok, true);
    await t2.vault.admin().storeSecret({ name: "newer", value: "y" });
  });

  test("after an edit, events from the first bad one to the break are reported unverified; tampering outside that span still fails", async () => {
    const { admin, dbPath, reopen } = await withHistory();
    attack(dbPath, (db) => {
      db.prepare("UPDATE audit SET agent = 'mallory' WHERE seq = 4").run();
      rehashWithoutKey(db, 4, "keep");
    });
    assert.equal(await codeOf(admin.storeSecret({ name: "new", value: "x" })), "audit_broken");
    const r = await admin.auditRecover({ reason: "investigated: row 4 edited by mallory" });
    assert.equal(r.breakSeq, 13);
    assert.equal(r.found!.firstBadSeq, 4);
    await admin.storeSecret({ name: "new", value: "x" });
    const t2 = await reopen();
    const v = await t2.vault.admin().auditVerify();
    assert.equal(v.ok, true, v.problem);
    assert.deepEqual(v.breaks.map((b) => [b.seq, b.found.firstBadSeq, b.unverified]), [[13, 4, 9]]);
    await t2.vault.close();
    // The recovery vouches for nothing before the first bad event, and for nothing after the break.
    attack(dbPath, (db) => db.prepare("UPDATE audit SET reason = 'hidden' WHERE seq = 2").run());
    const t3 = await t2.reopen();
    const v2 = await t3.vault.admin().auditVerify();
    assert.equal(v2.ok, false);
    assert.equal(v2.firstBad!.seq, 2);
    await t3.vault.close();
    attack(dbPath, (db) => db.prepare("UPDATE audit SET reason = NULL WHERE seq = 2").run());
    attack(dbPath, (db) => db.prepare("UPDATE audit SET reason = 'forged' WHERE seq = 13").run());
    const t4 = await t3.reopen();
    const v3 = await t4.vault.admin().auditVerify();
    assert.equal(v3.ok, false, "the break itself is keyed: a forged one covers nothing");
    assert.deepEqual(v3.breaks, []);
    assert.equal(v3.firstBad!.seq, 4);
  });

  test("a recovery made by another process stands for a process that had written past the cut", async () => {
    const a = await withHistory(); // "process" A wrote up to event 12
    const storeB = openSqliteStore(a.dbPath);
    const b = await Vault.open({ store: storeB, keys: envKeySource({ LESSOR_MASTER_KEY: a.key })!, policy: parsePolicy(POLICY, "p.toml") });
    try {
      attack(a.dbPath, (db) => db.prepare("DELETE FROM audit WHERE seq > 10").run());
      assert.equal(await codeOf(b.admin().storeSecret({ name: "x", value: "1" })), "audit_broken");
      const r = await b.admin().auditRecover({ reason: "recovered from process B" });
      assert.equal(r.breakSeq, 11);
      // A's trail is now shorter than what A wrote (12), but a valid recovery says the cut was seen.
      await a.admin.storeSecret({ name: "y", value: "2" });
      assert.equal((await a.admin.auditVerify()).ok, true);
    } finally {
      await b.close();
    }
  });

  test("a second break can cover a problem found before the first one", async () => {
    const { admin, dbPath } = await withHistory();
    attack(dbPath, (db) => db.prepare("DELETE FROM audit WHERE seq > 10").run());
    await admin.auditRecover({ reason: "first" }); // break at 11, nothing before it was bad
    await admin.storeSecret({ name: "a", value: "1" });
    // An edit that leaves the hashes alone does not touch the head: writes go on, verify names it.
    attack(dbPath, (db) => db.prepare("UPDATE audit SET agent = 'mallory' WHERE seq = 5").run());
    await admin.storeSecret({ name: "b", value: "2" });
    assert.equal((await admin.auditVerify()).firstBad!.seq, 5);
    const r = await admin.auditRecover({ reason: "second" });
    assert.equal(r.found!.firstBadSeq, 5);
    const v = await admin.auditVerify();
    assert.equal(v.ok, true, v.problem);
    assert.deepEqual(v.breaks.map((b) => [b.seq, b.found.firstBadSeq]), [[11, null], [14, 5]]);
  });
});

describe("trails of the old unkeyed format (written by lessor before the keyed chain)", () => {
  function v1Copy(): string {
    const dir = tempDir();
    const p = join(dir, "lessor.db");
    copyFileSync(V1_FIXTURE, p);
    return p;
  }
  const open = (p: string) => Vault.open({ store: openSqliteStore(p), keys: envKeySource({ LESSOR_MASTER_KEY: V1_KEY })!, policy: parsePolicy(POLICY, "p.toml") });

  test("migrates: the old trail is verified under the old rules and its old checkpoint, then continues keyed after an audit_upgraded event", async () => {
    const p = v1Copy();
    const vault = await open(p);
    try {
      const admin = vault.admin();
      assert.deepEqual(await admin.auditVerify(), { ok: true, events: 14, headSeq: 14, breaks: [] }, "readable before any write");
      await admin.storeSecret({ name: "after", value: "x" });
      const events = await admin.auditQuery({ limit: 100 });
      assert.equal(events.length, 16);
      assert.ok(events.slice(0, 14).every((e) => e.keyId === null), "old events keep their format");
      assert.equal(events[14]!.type, "audit_upgraded");
      assert.ok(events[14]!.keyId !== null && events[15]!.keyId === events[14]!.keyId);
      const d = JSON.parse(events[14]!.detail!) as { head_seq: number; events: number; head_hash: string };
      assert.equal(d.head_seq, 14);
      assert.equal(d.events, 14);
      assert.equal(d.head_hash, Buffer.from(events[13]!.hash).toString("hex"));
      assert.deepEqual(await admin.auditVerify(), { ok: true, events: 16, headSeq: 16, breaks: [] });
      assert.equal((await admin.revealSecret({ scope: "global", name: "tok" })).value.unsafeText(), "v2");
    } finally {
      await vault.close();
    }
    const again = await open(p);
    try {
      await again.admin().storeSecret({ name: "later", value: "y" });
      assert.equal((await again.admin().auditVerify()).ok, true);
    } finally {
      await again.close();
    }
  });

  test("after the upgrade, the old events are sealed by the keyed chain: rewriting one of them is detected", async () => {
    const p = v1Copy();
    const vault = await open(p);
    try {
      await vault.admin().storeSecret({ name: "after", value: "x" });
      // The old rule is public: the attacker recomputes events 5..14 consistently, but event 15 (keyed) links to the real 14.
      attack(p, (db) => {
        db.prepare("UPDATE audit SET agent = 'mallory' WHERE seq = 5").run();
        const rows = db.prepare("SELECT * FROM audit WHERE seq >= 5 AND seq <= 14 ORDER BY seq").all() as Row[];
        let prev = (db.prepare("SELECT hash FROM audit WHERE seq = 4").pluck().get() as Buffer);
        for (const r of rows) {
          const h = hashEventV1({ ...asRecord(r), prevHash: prev });
          db.prepare("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?").run(prev, h, r.seq);
          prev = h;
        }
      });
      const v = await vault.admin().auditVerify();
      assert.equal(v.ok, false);
      assert.equal(v.firstBad!.seq, 15);
      assert.match(v.problem!, /event 15 does not follow event 14/);
    } finally {
      await vault.close();
    }
  });

  test("an old trail cut before the upgrade is not carried into the keyed chain", async () => {
    const p = v1Copy();
    attack(p, (db) => db.prepare("DELETE FROM audit WHERE seq > 12").run());
    const vault = await open(p);
    try {
      const msg = await brokenMessage(vault.admin().storeSecret({ name: "after", value: "x" }));
      assert.match(msg, /old unkeyed format does not verify.*trail ends at event 12 but the checkpoint says 14/);
      assert.equal(headSeq(p), 12);
      const r = await vault.admin().auditRecover({ reason: "old trail was cut before the upgrade" });
      assert.equal(r.breakSeq, 13);
      await vault.admin().storeSecret({ name: "after", value: "x" });
      const v = await vault.admin().auditVerify();
      assert.equal(v.ok, true, v.problem);
      assert.equal(v.breaks.length, 1);
    } finally {
      await vault.close();
    }
  });

  test("a running vault refuses the old trail put back under it, even with the format marker deleted", async () => {
    const p = v1Copy();
    const oldCp = checkpointRow(p);
    const vault = await open(p);
    try {
      const admin = vault.admin();
      await admin.storeSecret({ name: "a1", value: "x" });
      await admin.revealSecret({ scope: "global", name: "a1" });
      attack(p, (db) => {
        db.prepare("DELETE FROM audit WHERE key_id IS NOT NULL").run();
        db.prepare("DELETE FROM meta WHERE key = 'audit_format'").run();
        db.prepare("UPDATE audit_checkpoint SET seq = ?, hash = ?, key_id = ?, mac = ?").run(oldCp.seq, oldCp.hash, oldCp.key_id, oldCp.mac);
      });
      assert.match(await brokenMessage(admin.storeSecret({ name: "a3", value: "x" })), /this process has written or checked the keyed chain/);
    } finally {
      await vault.close();
    }
  });

  test("after the upgrade, cutting the keyed events and putting the old checkpoint back is refused (no downgrade)", async () => {
    const p = v1Copy();
    const oldCp = checkpointRow(p);
    const vault = await open(p);
    await vault.admin().storeSecret({ name: "after", value: "x" });
    await vault.close();
    attack(p, (db) => {
      db.prepare("DELETE FROM audit WHERE seq > 14").run();
      db.prepare("UPDATE audit_checkpoint SET seq = ?, hash = ?, key_id = ?, mac = ?").run(oldCp.seq, oldCp.hash, oldCp.key_id, oldCp.mac);
    });
    const v2 = await open(p);
    try {
      assert.match(await brokenMessage(v2.admin().storeSecret({ name: "x2", value: "y" })), /old unkeyed format, but this vault had moved to the keyed chain/);
      assert.equal((await v2.admin().auditVerify()).ok, false);
    } finally {
      await v2.close();
    }
  });
});

describe("what an attacker without the key cannot get the vault to sign", () => {
  test("a deferred-brakes row planted or edited in the database is not chained by the recovery: no forged break, no framed event, and the break says so", async () => {
    const { admin, dbPath, reopen, vault } = await withHistory();
    attack(dbPath, (db) => {
      db.prepare("DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)").run(); // so that the admin must recover
      const forged = {
        events: [
          // a break that would excuse every edit from event 1 on, and an event framing agent bob
          { time: 1, draft: { type: "audit_break", actor: { id: "owner", role: "admin", transport: "uds" }, outcome: "ok", reason: "routine", detail: { problem: "x", first_bad_seq: 1, head_seq: 0 } } },
          { time: 2, draft: { type: "secret_revealed", actor: { id: "test:bob", role: "agent", transport: "uds", agent: "bob" }, agent: "bob", secret: "global/tok", outcome: "ok", reason: "framed" } },
          { time: 3, draft: { type: "lease_revoked", actor: { id: "test:bob", role: "agent", transport: "uds", agent: "bob" }, agent: "bob", outcome: "ok", reason: "framed" } },
        ],
        dropped: 0,
      };
      db.prepare("INSERT OR REPLACE INTO meta(key, value) VALUES ('audit_deferred', ?)").run(JSON.stringify(forged));
    });
    const r = await admin.auditRecover({ reason: "investigated the cut head" });
    assert.equal(r.recovered, true);
    assert.equal(r.deferred, 0, "nothing from the planted row is appended");
    const after = await admin.auditQuery({ afterSeq: r.breakSeq! - 1 });
    assert.deepEqual(after.map((e) => e.type), ["audit_break"]);
    assert.equal((JSON.parse(after[0]!.detail!) as { deferred_rejected: boolean }).deferred_rejected, true, "the break records the rejected row");
    await vault.close();
    // The attacker then rewrites old events, hoping the planted break excuses them: verify still fails.
    attack(dbPath, (db) => db.prepare("UPDATE audit SET reason = 'rewritten' WHERE seq BETWEEN 2 AND 5").run());
    const t2 = await reopen();
    try {
      const v = await t2.vault.admin().auditVerify();
      assert.equal(v.ok, false, "the rewrite is named");
      assert.match(v.problem ?? "", /event 2 was altered/);
    } finally {
      await t2.vault.close();
    }
  });

  test("brakes deferred by the vault itself are still appended after the recovery, and one edited entry rejects the row", async () => {
    const { admin, dbPath, vault, claude } = await withHistory();
    const lease = await claude.requestLease({ secret: "tok", domains: ["api.example.com"] });
    attack(dbPath, (db) => db.prepare("DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)").run());
    await admin.revokeLease(lease.id, "while broken");
    const kept = await admin.auditRecover({ reason: "checked" });
    assert.equal(kept.deferred, 1, "the vault's own deferred revocation is appended");
    attack(dbPath, (db) => db.prepare("DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)").run());
    const lease2 = await claude.requestLease({ secret: "tok", domains: ["api.example.com"] }).catch(() => null);
    assert.equal(lease2, null, "the trail is broken again: grants are refused");
    await admin.killswitch("while broken again"); // a brake: deferred, under the audit key's MAC
    attack(dbPath, (db) => {
      const row = db.prepare("SELECT value FROM meta WHERE key = 'audit_deferred'").get() as { value: string };
      db.prepare("UPDATE meta SET value = ? WHERE key = 'audit_deferred'").run(row.value.replace("while broken again", "while broken agaim"));
    });
    const r = await admin.auditRecover({ reason: "checked again" });
    assert.equal(r.deferred, 0, "an edited row is appended not at all");
    const brk = (await admin.auditQuery({ types: ["audit_break"], order: "desc", limit: 1 }))[0]!;
    assert.equal((JSON.parse(brk.detail!) as { deferred_rejected: boolean }).deferred_rejected, true);
    await vault.close();
  });
});

describe("master-key rotation", () => {
  /** A fresh dir with a new master key file (keys/master.key) and a database path; `open` opens a vault on both. */
  function withKeyFile() {
    const dir = tempDir();
    mkdirSync(join(dir, "keys"), { mode: 0o700 });
    const keyPath = join(dir, "keys", "master.key");
    createKeyFile(keyPath);
    const dbPath = join(dir, "lessor.db");
    const open = () => Vault.open({ store: openSqliteStore(dbPath), keys: fileKeySource(keyPath), policy: parsePolicy(POLICY, "p.toml") });
    return { keyPath, dbPath, open };
  }

  test("is refused while the trail is broken, before a new key is made", async () => {
    const { keyPath, dbPath, open } = withKeyFile();
    const vault = await open();
    try {
      await vault.admin().storeSecret({ name: "a", value: "1" });
      await vault.admin().storeSecret({ name: "b", value: "2" });
      attack(dbPath, (db) => db.prepare("DELETE FROM audit WHERE seq = 2").run());
      const signals: VaultSignal[] = [];
      vault.onSignal((s) => signals.push(s));
      assert.equal(await codeOf(vault.admin().rotateMasterKey()), "audit_broken");
      assert.deepEqual(signals.map((s) => s.type), ["audit_broken"], "the refusal raises the alarm a daemon logs");
      assert.equal((await fileKeySource(keyPath).load()).ids().length, 1, "the key file was not touched");
    } finally {
      await vault.close();
    }
  });

  test("with keys from the environment: after the operator drops the old key, the trail still verifies and extends", async () => {
    const dbPath = join(tempDir(), "lessor.db");
    const oldKey = "33".repeat(32);
    const newKey = "44".repeat(32);
    const open = (env: Record<string, string>) => Vault.open({ store: openSqliteStore(dbPath), keys: envKeySource(env)!, policy: parsePolicy(POLICY, "p.toml") });
    let vault = await open({ LESSOR_MASTER_KEY: oldKey });
    await vault.admin().storeSecret({ name: "tok", value: "v1" });
    await vault.close();
    vault = await open({ LESSOR_MASTER_KEY: newKey, LESSOR_MASTER_KEY_PREVIOUS: oldKey });
    const r = await vault.admin().rotateMasterKey();
    assert.equal(r.retired, false);
    await vault.close();
    vault = await open({ LESSOR_MASTER_KEY: newKey });
    try {
      assert.equal((await vault.admin().auditVerify()).ok, true);
      await vault.admin().storeSecret({ name: "tok2", value: "v2" });
      const v = await vault.admin().auditVerify();
      assert.deepEqual(v, { ok: true, events: 4, headSeq: 4, breaks: [] }, "stored, rotation started, rotated, stored");
      const keyIds = (await vault.admin().auditQuery({})).map((e) => e.keyId);
      assert.equal(keyIds[0], r.from[0]);
      assert.ok(keyIds.slice(1).every((k) => k === r.to));
    } finally {
      await vault.close();
    }
  });

  test("keeps the trail verifying after the old key is retired: old events verify under their archived audit key", async () => {
    const { dbPath, open } = withKeyFile();
    let vault = await open();
    const admin = vault.admin();
    await admin.storeSecret({ name: "tok", value: "v1" });
    const oldKey = (await admin.describe()).keyId;
    const r1 = await admin.rotateMasterKey();
    assert.equal(r1.retired, true);
    await admin.storeSecret({ name: "tok2", value: "v2" });
    const r2 = await admin.rotateMasterKey();
    assert.equal(r2.retired, true);
    await admin.storeSecret({ name: "tok3", value: "v3" });
    const events = await admin.auditQuery({ limit: 100 });
    assert.equal(events[0]!.keyId, oldKey);
    assert.deepEqual([...new Set(events.map((e) => e.keyId))], [oldKey, r1.to, r2.to], "each event names the key it was MACed under");
    assert.equal((await admin.auditVerify()).ok, true);
    await vault.close();
    // A new process holds only the newest key.
    vault = await open();
    assert.deepEqual((await vault.admin().describe()).keyIds, [r2.to]);
    assert.deepEqual(await vault.admin().auditVerify(), { ok: true, events: events.length, headSeq: events.length, breaks: [] });
    await vault.admin().storeSecret({ name: "tok4", value: "v4" });
    assert.equal((await vault.admin().auditVerify()).ok, true);
    await vault.close();
    // The archive is what keeps the old segments verifiable: without it, verify names the missing key.
    attack(dbPath, (db) => db.prepare("DELETE FROM meta WHERE key = ?").run(AUDIT_KEYS_META));
    vault = await open();
    const v = await vault.admin().auditVerify();
    assert.equal(v.ok, false);
    assert.equal(v.firstBad!.seq, 1);
    assert.match(v.problem!, new RegExp(`written under master key ${oldKey}, which is neither loaded nor archived`));
    await vault.close();
  });
});
