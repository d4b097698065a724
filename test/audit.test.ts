import assert from "node:assert/strict";
import { createHmac, hkdfSync } from "node:crypto";
import { readFileSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import Database from "better-sqlite3";
import { eventMacValid, GENESIS, hashEventV1, macEvent } from "../src/audit/chain.js";
import { deriveAuditKey } from "../src/audit/keys.js";
import { jsonlSink } from "../src/audit/jsonl-sink.js";
import { openSqliteStore, type SqliteStore } from "../src/store/sqlite/sqlite-store.js";
import type { Store } from "../src/vault/ports.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { AUDIT_HEAD_MAX_AGE_MS } from "../src/vault/context.js";
import { parsePolicy } from "../src/vault/policy.js";
import { Vault } from "../src/vault/vault.js";
import { agent, codeOf, grant, hexKey, HISTORY_POLICY, makeVault, tempDir, withHistory } from "./helpers.js";

const POLICY = HISTORY_POLICY;

function tamper(dbPath: string, sql: string, ...args: unknown[]): void {
  const db = new Database(dbPath);
  db.prepare(sql).run(...args);
  db.close();
}

/** The event of the test vectors below, but for seq, reason, prevHash and keyId. */
const VECTOR_EVENT = {
  id: "01890a5d-ac96-774b-bcce-b302099a8057",
  time: 1700000000000,
  type: "lease_granted",
  actorId: "uid:1000",
  actorRole: "agent",
  transport: "uds",
  agent: "claude",
  secret: "global/github-token",
  leaseId: null,
  domain: "api.github.com",
  outcome: "ok",
  detail: '{"rule":"gh"}',
};

describe("audit trail", () => {
  test("the chain hash matches a fixed test vector (the encoding in docs/audit.md)", () => {
    const rec = { seq: 1, ...VECTOR_EVENT, reason: null, prevHash: GENESIS };
    // Computed independently from the layout: SHA-256("lessor audit chain v1" field ‖ prev ‖ fields).
    assert.equal(hashEventV1(rec).toString("hex"), "729325c398a833fddfa8698e4f9a4b27ec6bc0c0d39d750f120a2e2ab62eb90d");
    assert.notEqual(hashEventV1({ ...rec, reason: "" }).toString("hex"), hashEventV1(rec).toString("hex"), "null and empty differ");
    assert.notEqual(hashEventV1({ ...rec, agent: "claud", secret: "eglobal/github-token" }).toString("hex"), hashEventV1(rec).toString("hex"), "field boundaries are unambiguous");
  });

  test("the keyed chain value is HMAC-SHA256 under the audit key derived from the master key (checked against node:crypto)", () => {
    const master = { id: "0123456789abcdef", key: Buffer.alloc(32, 7) };
    const key = deriveAuditKey(master, null);
    const rec = { seq: 2, ...VECTOR_EVENT, reason: "é ✓", prevHash: Buffer.alloc(32, 9), keyId: master.id };
    // The layout of docs/audit.md, built independently: keys by HKDF, the MAC by node:crypto's HMAC.
    const root = Buffer.from(hkdfSync("sha256", master.key, Buffer.alloc(0), "lessor audit key v2", 32));
    const chainKey = Buffer.from(hkdfSync("sha256", root, Buffer.alloc(0), "chain", 32));
    const f = (v: string | number | null): Buffer => {
      if (v === null) return Buffer.from([0xff, 0xff, 0xff, 0xff]);
      const b = Buffer.from(String(v), "utf8");
      const n = Buffer.alloc(4);
      n.writeUInt32BE(b.length);
      return Buffer.concat([n, b]);
    };
    const msg = Buffer.concat([
      f("lessor audit chain v2"),
      rec.prevHash,
      ...[rec.seq, rec.id, rec.time, rec.type, rec.actorId, rec.actorRole, rec.transport, rec.agent, rec.secret, rec.leaseId, rec.domain, rec.outcome, rec.reason, rec.detail, rec.keyId].map(f),
    ]);
    const want = createHmac("sha256", chainKey).update(msg).digest();
    assert.deepEqual(macEvent(rec, key), want);
    assert.ok(eventMacValid({ ...rec, hash: want }, key));
    assert.ok(!eventMacValid({ ...rec, agent: "mallory", hash: want }, key), "any field change breaks it");
    assert.ok(!eventMacValid({ ...rec, keyId: "fedcba9876543210", hash: want }, key), "the key id is covered");
    const other = deriveAuditKey({ id: master.id, key: Buffer.alloc(32, 8) }, null);
    assert.notDeepEqual(macEvent(rec, deriveAuditKey(master, "00112233445566778899aabbccddeeff")), want, "a vault's id gives its own MAC");
    assert.notDeepEqual(macEvent(rec, other), want, "another master key gives another MAC");
    // A long field grows the scratch buffer; the MAC stays right.
    const long = { ...rec, detail: JSON.stringify({ x: "y".repeat(5000) }) };
    assert.deepEqual(macEvent(long, key), createHmac("sha256", chainKey).update(Buffer.concat([f("lessor audit chain v2"), long.prevHash, ...[long.seq, long.id, long.time, long.type, long.actorId, long.actorRole, long.transport, long.agent, long.secret, long.leaseId, long.domain, long.outcome, long.reason, long.detail, long.keyId].map(f)])).digest());
  });

  test("every step is an event, chained, and verify passes", async () => {
    const { admin } = await withHistory();
    const events = await admin.auditQuery({ limit: 1000 });
    assert.deepEqual(
      events.map((e) => e.type),
      ["secret_stored", "secret_rotated", ...Array(3).fill(["lease_granted", "secret_accessed", "lease_revoked"]).flat(), "access_denied"],
    );
    assert.deepEqual(events.map((e) => e.seq), events.map((_, i) => i + 1));
    const v = await admin.auditVerify();
    assert.deepEqual(v, { ok: true, events: events.length, headSeq: events.length, breaks: [] });
  });

  test("calls sharing a commit leave one checkpoint, on the head the commit leaves; verify passes", async () => {
    const { admin, claude, store } = await withHistory();
    const c0 = (store as SqliteStore).stats().commits;
    await Promise.all(Array.from({ length: 30 }, () => claude.requestLeaseAndAccess({ secret: "tok" }, { domain: "api.example.com" })));
    assert.ok((store as SqliteStore).stats().commits - c0 < 30, "the calls shared commits");
    const head = await store.auditHead();
    const cp = await store.getCheckpoint();
    assert.equal(cp!.seq, head!.seq);
    assert.deepEqual(Buffer.from(cp!.hash), Buffer.from(head!.hash));
    assert.deepEqual(await admin.auditVerify(), { ok: true, events: head!.seq, headSeq: head!.seq, breaks: [] });
  });

  test("queries filter by agent, secret, type and time, newest first on request", async () => {
    const { admin } = await withHistory();
    assert.equal((await admin.auditQuery({ agent: "claude", types: ["secret_accessed"] })).length, 3);
    assert.equal((await admin.auditQuery({ secret: "global/tok", types: ["secret_stored", "secret_rotated"] })).length, 2);
    const newest = await admin.auditQuery({ order: "desc", limit: 1 });
    assert.equal(newest[0]!.type, "access_denied");
    assert.equal((await admin.auditQuery({ since: Date.now() + 60_000 })).length, 0);
  });

  const attacks: [string, string, (db: string) => void, RegExp][] = [
    ["an edited field", "secret_accessed", (db) => tamper(db, "UPDATE audit SET agent = 'mallory' WHERE seq = 4"), /event 4 was altered/],
    ["an edited outcome", "", (db) => tamper(db, "UPDATE audit SET outcome = 'ok' WHERE seq = 12"), /event 12 was altered/],
    ["a deleted middle event", "", (db) => tamper(db, "DELETE FROM audit WHERE seq = 6"), /event 6 is missing/],
    ["a truncated tail", "", (db) => tamper(db, "DELETE FROM audit WHERE seq >= 10"), /trail ends at event 9 but the checkpoint says 12/],
    [
      "a re-hashed edit (hash recomputed without the key)",
      "",
      (db) => {
        // An attacker who rewrites a row and every later hash still cannot forge the keyed checkpoint.
        tamper(db, "DELETE FROM audit WHERE seq = 12");
        tamper(db, "UPDATE audit_checkpoint SET seq = 11, hash = (SELECT hash FROM audit WHERE seq = 11)");
      },
      /checkpoint was altered/,
    ],
    [
      "two events swapped",
      "",
      (db) => {
        const d = new Database(db);
        d.exec("UPDATE audit SET seq = -1 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = -1;");
        d.close();
      },
      /event 3 does not follow event 2|event 3 was altered/,
    ],
    ["a deleted checkpoint", "", (db) => tamper(db, "DELETE FROM audit_checkpoint"), /checkpoint is missing/],
  ];
  for (const [what, , attack, expected] of attacks) {
    test(`verify catches ${what} and names the first bad event`, async () => {
      const { admin, dbPath, reopen } = await withHistory();
      assert.equal((await admin.auditVerify()).ok, true);
      const t2 = await reopen();
      await t2.vault.close();
      attack(dbPath!);
      const t3 = await t2.reopen();
      const v = await t3.vault.admin().auditVerify();
      assert.equal(v.ok, false);
      assert.match(v.problem!, expected);
      assert.ok(v.firstBad && v.firstBad.seq > 0);
    });
  }

  test("a failing audit write fails the operation and changes nothing (fail closed)", async () => {
    const { admin, claude, dbPath } = await withHistory();
    const lease = await claude.requestLease({ secret: "tok" });
    const db = new Database(dbPath!);
    db.exec("CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit disk full'); END;");
    db.close();
    const refused = ["internal", "unavailable"];
    assert.ok(refused.includes(await codeOf(admin.storeSecret({ name: "new", value: "x" }))));
    assert.ok(refused.includes(await codeOf(claude.accessSecret(lease.id, { domain: "api.example.com" }))));
    const db2 = new Database(dbPath!);
    db2.exec("DROP TRIGGER no_audit");
    db2.close();
    assert.equal(await codeOf(admin.revealSecret({ scope: "global", name: "new" })), "secret_not_found", "the store was rolled back");
    const again = await claude.accessSecret(lease.id, { domain: "api.example.com" });
    assert.equal(again.lease.uses, 1, "the failed access did not count a use");
    assert.equal((await admin.auditVerify()).ok, true);
  });

  test("a call that fails in the middle of a shared commit leaves its siblings' events once each, chained, and verify passes", async () => {
    const { vault, admin, claude, store, dbPath } = await withHistory({ policy: POLICY + grant("m", ["mallory"], ["tok"], ["api.example.com"]) });
    const mallory = vault.session(agent("mallory"));
    const db = new Database(dbPath!);
    // Mallory's audit rows cannot be written: her calls throw inside the transactions they share with Claude's.
    db.exec("CREATE TRIGGER no_mallory BEFORE INSERT ON audit WHEN NEW.agent = 'mallory' BEGIN SELECT RAISE(ABORT, 'disk trouble'); END;");
    db.close();
    const sqlite = store as SqliteStore;
    const before = (await store.auditHead())!.seq;
    const r0 = sqlite.stats().reruns;
    const c0 = sqlite.stats().commits;
    const isMallory = (i: number): boolean => i % 4 === 2;
    const out = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        isMallory(i)
          ? codeOf(mallory.requestLeaseAndAccess({ secret: "tok" }, { domain: "api.example.com" }))
          : claude.requestLeaseAndAccess({ secret: "tok" }, { domain: "api.example.com" }).then((g) => g.lease.id),
      ),
    );
    assert.ok(sqlite.stats().commits - c0 < 12, "the calls shared commits");
    assert.ok(sqlite.stats().reruns - r0 >= 1, "a batch was run again");
    assert.ok(out.filter((_, i) => isMallory(i)).every((c) => c === "internal" || c === "unavailable"));
    const claudes = out.filter((_, i) => !isMallory(i)) as string[];
    const rows = (await admin.auditQuery({ afterSeq: before, limit: 1000 })).sort((a, b) => a.seq - b.seq);
    assert.deepEqual(rows.map((r) => r.seq), rows.map((_, i) => before + 1 + i), "gapless");
    assert.ok(rows.every((r) => r.agent === "claude"));
    for (const id of claudes) assert.deepEqual(rows.filter((r) => r.leaseId === id).map((r) => r.type), ["lease_granted", "secret_accessed"], "once each");
    assert.equal(rows.length, claudes.length * 2);
    assert.equal((await admin.listLeases({ agent: "mallory" })).length, 0, "none of Mallory's leases was kept");
    assert.equal((await admin.auditVerify()).ok, true);
  });

  test("a failing sink withholds the value; the JSONL sink mirrors every event", async () => {
    const dir = tempDir();
    const path = join(dir, "audit.jsonl");
    let fail = false;
    const { admin, claude } = await withHistory({
      dir,
      sinks: [jsonlSink(path), { write: () => { if (fail) throw new Error("log pipe closed"); } }],
    });
    const lines = readFileSync(path, "utf8").trim().split("\n").map((l) => JSON.parse(l) as { seq: number; type: string; hash: string });
    const events = await admin.auditQuery({ limit: 1000 });
    assert.deepEqual(lines.map((l) => l.seq), events.map((e) => e.seq));
    assert.deepEqual(lines.map((l) => l.hash), events.map((e) => Buffer.from(e.hash).toString("hex")));
    const lease = await claude.requestLease({ secret: "tok" });
    fail = true;
    assert.equal(await codeOf(claude.accessSecret(lease.id, { domain: "api.example.com" })), "audit_failed");
  });

  test("the JSONL sink writes concurrent operations' events together, in chain order, and fails them together", async () => {
    const dir = tempDir();
    const path = join(dir, "audit.jsonl");
    const t = await makeVault({ dir, policy: POLICY, sinks: [jsonlSink(path)], limits: { maxLiveLeasesPerAgent: 1000 } });
    const admin = t.vault.admin();
    const claude = t.vault.session(agent("claude"));
    await admin.storeSecret({ name: "tok", value: "v" });
    const got = await Promise.all(Array.from({ length: 40 }, () => claude.requestLeaseAndAccess({ secret: "tok" })));
    for (const g of got) g.value.wipe();
    const lines = readFileSync(path, "utf8").trim().split("\n").map((l) => JSON.parse(l) as { seq: number; hash: string });
    const events = await admin.auditQuery({ limit: 1000 });
    assert.equal(lines.length, 81);
    assert.deepEqual(lines.map((l) => l.seq), events.map((e) => e.seq));
    assert.deepEqual(lines.map((l) => l.hash), events.map((e) => Buffer.from(e.hash).toString("hex")));
    // A sink whose writes would fail (here its file removed; a full disk in test/durability-attacks.test.ts
    // and test/attack-auditsink.test.ts) refuses every operation it could not record, before it changes
    // anything; the lease request, which finds no secret, is a refusal it could not record either
    // (secret_not_found is audited: test/review-2026-12-07.test.ts).
    const gonePath = join(tempDir(), "gone.jsonl");
    const gone = jsonlSink(gonePath);
    unlinkSync(gonePath);
    const full = await makeVault({ policy: POLICY, sinks: [gone] });
    const codes = await Promise.all([
      codeOf(full.vault.admin().storeSecret({ name: "tok", value: "v" })),
      codeOf(full.vault.admin().storeSecret({ name: "tok2", value: "v" })),
      codeOf(full.vault.session(agent("claude")).requestLease({ secret: "tok" })),
    ]);
    assert.deepEqual(codes, ["audit_failed", "audit_failed", "audit_failed"]);
    assert.deepEqual(await full.vault.admin().listSecrets(), [], "the refused operations changed nothing");
  });

  describe("status's audit head", () => {
    /** A vault on `path` whose store counts the committed-read auditHead calls (tx reads are not counted). */
    async function counted(path: string, key: string) {
      const inner = openSqliteStore(path);
      const reads = { n: 0 };
      const store = new Proxy(inner, {
        get(target, prop, receiver) {
          if (prop === "auditHead") return () => (reads.n++, target.auditHead());
          const v = Reflect.get(target, prop, receiver) as unknown;
          return typeof v === "function" ? v.bind(target) : v;
        },
      }) as Store;
      const vault = await Vault.open({ store, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy: parsePolicy(POLICY, "p.toml") });
      return { vault, admin: vault.admin(), store: inner, reads };
    }

    test("shows this process's writes at once, with no database read while the head is fresh", async () => {
      const a = await counted(join(tempDir(), "lessor.db"), hexKey());
      try {
        assert.equal((await a.admin.status()).auditHead, 0);
        assert.equal(a.reads.n, 1, "the first status reads the head");
        await a.admin.storeSecret({ name: "tok", value: "v1" });
        await a.vault.session(agent("claude")).requestLeaseAndAccess({ secret: "tok" }, { domain: "api.example.com" });
        await codeOf(a.vault.session(agent("claude")).requestLease({ secret: "other" }));
        const head = (await a.store.auditHead())!.seq;
        assert.equal(head, 4, "stored, granted, accessed, denied");
        for (let i = 0; i < 5; i++) assert.equal((await a.admin.status()).auditHead, head);
        assert.equal(a.reads.n, 1, "statuses after this process's own commits read nothing");
      } finally {
        await a.vault.close();
      }
    });

    test("shows another process's writes within AUDIT_HEAD_MAX_AGE_MS", async () => {
      const path = join(tempDir(), "lessor.db");
      const key = hexKey();
      const a = await counted(path, key);
      const b = await counted(path, key); // another process's vault on the same file
      try {
        assert.equal((await a.admin.status()).auditHead, 0);
        await b.admin.storeSecret({ name: "tok", value: "v1" });
        const t0 = performance.now();
        while ((await a.admin.status()).auditHead !== 1) {
          assert.ok(performance.now() - t0 < AUDIT_HEAD_MAX_AGE_MS + 1000, "status never showed the other vault's event");
          await new Promise((r) => setTimeout(r, 25));
        }
        assert.ok(a.reads.n >= 2, "the head was read again once it was no longer fresh");
      } finally {
        await a.vault.close();
        await b.vault.close();
      }
    });
  });
});
