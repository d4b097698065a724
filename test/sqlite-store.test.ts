/** SQLite-specific behaviour: pragmas, file mode, migrations, index use, group commit, several writers. */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { Queries } from "../src/store/sqlite/queries.js";
import { MIGRATIONS, SCHEMA_VERSION } from "../src/store/sqlite/schema.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import type { Store, StoreTx } from "../src/vault/ports.js";
import type { AuditFilter, LeaseRecord } from "../src/base/types.js";
import { LEASE_COLS } from "../src/store/rows.js";
import { isVaultError } from "../src/base/errors.js";
import { auditRec, leaseRec, secretRec, T0, versionRec } from "./store-conformance.js";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "lessor-sqlite-"));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshPath = (): string => path.join(root, `vault-${++n}.db`);
const here = path.dirname(fileURLToPath(import.meta.url));
const writerScript = path.join(here, "fixtures", "sqlite-writer.ts");

/** Appends one audit row whose seq is read from the head inside the transaction. */
function append(store: Store, id: string): Promise<void> {
  return store.transaction(async (t) => {
    const head = await t.auditHead();
    await t.insertAudit(auditRec((head?.seq ?? 0) + 1, { id }));
  });
}

/** Every audit row, checked to have seqs 1..n with no gaps. */
async function allAudit(store: Store): Promise<string[]> {
  const ids: string[] = [];
  let after = 0;
  for (;;) {
    const rows = await store.queryAudit({ afterSeq: after, limit: 10_000 });
    if (rows.length === 0) break;
    for (const r of rows) {
      assert.equal(r.seq, after + 1, "audit seqs must have no gaps");
      after = r.seq;
      ids.push(r.id);
    }
  }
  return ids;
}

function startWriter(args: string[]): { child: ChildProcess; lines: AsyncIterator<string> } {
  const child = spawn(process.execPath, ["--import", "tsx", writerScript, ...args], {
    stdio: ["pipe", "pipe", "inherit"],
    cwd: path.join(here, ".."),
  });
  const lines = readline.createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  return { child, lines };
}

async function expectLine(lines: AsyncIterator<string>, want: string): Promise<void> {
  const r = await lines.next();
  assert.equal(r.value, want);
}

describe("sqlite store", () => {
  test("the batch cache of the audit head and meta never outlives a rolled-back call", async () => {
    const store = openSqliteStore(freshPath());
    try {
      await append(store, "a1");
      await store.transaction((t) => t.setMeta("k", "v1"));
      // Three calls queued in the same turn share one batch: the middle one writes and then throws.
      const before = store.stats().commits;
      const results = await Promise.allSettled([
        append(store, "a2"),
        store.transaction(async (t) => {
          const head = await t.auditHead();
          await t.insertAudit(auditRec((head?.seq ?? 0) + 1, { id: "rolled-back" }));
          await t.setMeta("k", "rolled-back");
          assert.equal(await t.getMeta("k"), "rolled-back");
          throw new Error("undo me");
        }),
        store.transaction(async (t) => {
          assert.equal(await t.getMeta("k"), "v1", "the rolled-back meta value is not served from a cache");
          const head = await t.auditHead();
          assert.equal(head?.seq, 2, "the rolled-back audit row is not the head");
          await t.insertAudit(auditRec(head!.seq + 1, { id: "a3" }));
        }),
      ]);
      assert.deepEqual(results.map((r) => r.status), ["fulfilled", "rejected", "fulfilled"]);
      assert.equal(store.stats().commits, before + 1, "the three calls shared one commit");
      assert.deepEqual(await allAudit(store), ["a1", "a2", "a3"]);
    } finally {
      await store.close();
    }
  });

  test("a batch re-reads the audit head another connection moved", async () => {
    const file = freshPath();
    const a = openSqliteStore(file);
    const b = openSqliteStore(file);
    try {
      await append(a, "a1");
      await append(b, "b1");
      await append(a, "a2");
      await append(b, "b2");
      assert.deepEqual(await allAudit(a), ["a1", "b1", "a2", "b2"]);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("the writer's cache of meta, checkpoint and current versions is dropped when another connection commits", async () => {
    const file = freshPath();
    const a = openSqliteStore(file);
    const b = openSqliteStore(file);
    const ref = { scope: "global", name: "token" };
    try {
      await a.transaction(async (t) => {
        await t.putSecret(secretRec("global", "token"));
        await t.insertVersion(versionRec("global", "token", 1));
        await t.setMeta("killswitch", "off");
        await t.putCheckpoint({ seq: 1, hash: Buffer.alloc(32, 1), keyId: "k1", mac: Buffer.alloc(32, 1) });
      });
      // a reads (and caches) all three in a transaction of its own.
      const seen = await a.transaction(async (t) => [(await t.getCurrentVersion(ref))?.version, await t.getMeta("killswitch"), (await t.getCheckpoint())?.seq]);
      assert.deepEqual(seen, [1, "off", 1]);
      // Another connection (as another lessor process would) rotates the secret, engages the killswitch, moves the checkpoint.
      await b.transaction(async (t) => {
        await t.insertVersion(versionRec("global", "token", 2));
        await t.putSecret(secretRec("global", "token", { currentVersion: 2 }));
        await t.setMeta("killswitch", "on");
        await t.putCheckpoint({ seq: 2, hash: Buffer.alloc(32, 2), keyId: "k1", mac: Buffer.alloc(32, 2) });
      });
      const after = await a.transaction(async (t) => [(await t.getCurrentVersion(ref))?.version, await t.getMeta("killswitch"), (await t.getCheckpoint())?.seq]);
      assert.deepEqual(after, [2, "on", 2], "a's next transaction sees b's commit, not its cache");
      // a's own writes are seen by its next transaction (kept in, or dropped from, the cache as written).
      await a.transaction(async (t) => {
        await t.insertVersion(versionRec("global", "token", 3));
        await t.putSecret(secretRec("global", "token", { currentVersion: 3 }));
        await t.setMeta("killswitch", "off");
      });
      const own = await a.transaction(async (t) => [(await t.getCurrentVersion(ref))?.version, await t.getMeta("killswitch")]);
      assert.deepEqual(own, [3, "off"]);
      // A call that rotates and then throws leaves no trace in the cache for the next one.
      await assert.rejects(
        a.transaction(async (t) => {
          await t.insertVersion(versionRec("global", "token", 4));
          await t.putSecret(secretRec("global", "token", { currentVersion: 4 }));
          assert.equal((await t.getCurrentVersion(ref))?.version, 4);
          throw new Error("undo me");
        }),
      );
      assert.equal((await a.transaction((t) => t.getCurrentVersion(ref)))?.version, 3);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("sets WAL, synchronous=FULL, foreign keys and the busy timeout", async () => {
    const store = openSqliteStore(freshPath(), { busyTimeoutMs: 1234 });
    assert.deepEqual(store.settings(), {
      journalMode: "wal",
      synchronous: 2,
      foreignKeys: true,
      busyTimeoutMs: 1234,
      schemaVersion: SCHEMA_VERSION,
    });
    assert.equal(store.kind, "sqlite");
    await store.close();
  });

  test("creates the database file with mode 0600, and its WAL too", async () => {
    const p = freshPath();
    const old = process.umask(0o000); // even with a permissive umask
    try {
      const store = openSqliteStore(p);
      await store.transaction((t) => t.setMeta("k", "v"));
      assert.equal(fs.statSync(p).mode & 0o777, 0o600);
      assert.equal(fs.statSync(`${p}-wal`).mode & 0o777, 0o600);
      await store.close();
    } finally {
      process.umask(old);
    }
  });

  test("data survives close and reopen", async () => {
    const p = freshPath();
    let store = openSqliteStore(p);
    await store.transaction(async (t) => {
      await t.putSecret(secretRec("global", "github", { tags: ["a"] }));
      await t.insertVersion(versionRec("global", "github", 1));
      await t.insertLease(leaseRec("l1", { maxUses: 3 }));
      await t.insertAudit(auditRec(1));
      await t.putCheckpoint({ seq: 1, hash: Buffer.alloc(32, 1), keyId: "k1", mac: Buffer.alloc(32, 2) });
      await t.setMeta("vault_id", "abc");
    });
    await store.transaction((t) => t.useLease("l1", T0));
    await store.close();
    await assert.rejects(store.getMeta("vault_id"), (e) => isVaultError(e, "unavailable"));
    await assert.rejects(store.transaction(async () => 1), (e) => isVaultError(e, "unavailable"));

    store = openSqliteStore(p);
    assert.deepEqual((await store.getSecret({ scope: "global", name: "github" }))!.tags, ["a"]);
    assert.deepEqual([...(await store.getVersion({ scope: "global", name: "github" }, 1))!.wrappedDek], [...versionRec("global", "github", 1).wrappedDek]);
    assert.equal((await store.getLease("l1"))!.uses, 1);
    assert.equal((await store.auditHead())!.seq, 1);
    assert.equal((await store.getCheckpoint())!.keyId, "k1");
    assert.equal(await store.getMeta("vault_id"), "abc");
    await store.close();
  });

  test("a schema-2 database migrates to the current schema and keeps its leases and audit", async () => {
    const p = freshPath();
    const db = new Database(p);
    db.exec(MIGRATIONS[0]!);
    db.exec(MIGRATIONS[1]!);
    db.pragma("user_version = 2");
    // The leases table of that schema has no bound column: rows written as the old code wrote them.
    const oldLease = (l: LeaseRecord): void =>
      void db
        .prepare(`INSERT INTO leases (${LEASE_COLS.replace(", bound, proxy_only", "")}, done) VALUES (${Array(21).fill("?").join(", ")})`)
        .run(l.id, l.agent, l.scope, l.name, JSON.stringify(l.domains), 0, null, null, l.rule, l.issuedAt, l.expiresAt, l.maxExpiresAt, l.uses, l.maxUses, l.renewals, l.maxRenewals, 1, l.revokedAt, l.revokeReason, l.issuedBy, 0);
    oldLease(leaseRec("0190a000-0000-7000-8000-000000000001", { issuedAt: T0 + 1 }));
    oldLease(leaseRec("0190a000-0000-7000-8000-000000000002", { issuedAt: T0 + 2, agent: "agent-b" }));
    const a = auditRec(1, { agent: "agent-b" });
    // The audit table of that schema has no key_id column: the row is written as the old code wrote it.
    db.prepare(
      "INSERT INTO audit (seq, id, time, type, actor_id, actor_role, transport, agent, secret, lease_id, domain, outcome, reason, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ).run(a.seq, a.id, a.time, a.type, a.actorId, a.actorRole, a.transport, a.agent, a.secret, a.leaseId, a.domain, a.outcome, a.reason, a.detail, a.prevHash, a.hash);
    db.close();

    const store = openSqliteStore(p);
    try {
      assert.equal(store.settings().schemaVersion, SCHEMA_VERSION);
      assert.deepEqual(
        (await store.listLeases({})).map((l) => l.agent),
        ["agent-b", "agent-a"],
        "newest first, from the primary key",
      );
      assert.equal(await store.countLiveLeases("agent-a", T0), 1);
      assert.deepEqual((await store.listLeases({})).map((l) => l.bound), [false, false], "a lease from before bound was recorded reads unbound");
      assert.deepEqual((await store.listLeases({})).map((l) => l.proxyOnly), [false, false], "a lease from before proxy_only was recorded reads not proxy-only (its rule as in force decides)");
      assert.deepEqual((await store.queryAudit({ agent: "agent-b" })).map((r) => r.seq), [1]);
      assert.equal((await store.queryAudit({}))[0]!.keyId, null, "a row from before the keyed chain reads as format 1");
      assert.equal((await store.auditHead())!.keyId, null);
    } finally {
      await store.close();
    }
    const check = new Database(p, { readonly: true });
    const indexes = (table: string) =>
      check.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL ORDER BY name").pluck().all(table) as string[];
    assert.deepEqual(indexes("leases"), ["leases_expiry", "leases_live_agent", "leases_live_secret"], "the lease-history indexes are gone");
    assert.deepEqual(
      indexes("audit"),
      ["audit_agent_run", "audit_lease", "audit_secret_run", "audit_time", "audit_type"],
      "the audit's agent and secret indexes lead with the run",
    );
    check.close();
  });

  test("refuses a database written by a newer schema, with a plain message", async () => {
    const p = freshPath();
    const db = new Database(p);
    db.pragma(`user_version = ${SCHEMA_VERSION + 5}`);
    db.close();
    assert.throws(
      () => openSqliteStore(p),
      (e: unknown) => {
        assert.ok(isVaultError(e, "unavailable"));
        assert.equal(
          e.message,
          `this vault database was written by a newer lessor (schema ${SCHEMA_VERSION + 5}, this build knows ${SCHEMA_VERSION}); upgrade lessor`,
        );
        return true;
      },
    );
  });

  test("a file that is not a database is refused as unavailable", async () => {
    const p = freshPath();
    fs.writeFileSync(p, "this is not sqlite, just text that is long enough to look like a header".repeat(20));
    assert.throws(() => openSqliteStore(p), (e: unknown) => isVaultError(e, "unavailable") && /damaged|not a lessor/.test(e.message));
  });

  test("lease and audit queries use indexes, never a scan of the table", async () => {
    const p = freshPath();
    await openSqliteStore(p).close();
    const db = new Database(p);
    const q = new Queries(db);
    const planOf = (f: () => unknown): string => {
      const before = new Set(q.preparedSql());
      f();
      const added = q.preparedSql().filter((s) => !before.has(s));
      assert.ok(added.length > 0);
      return added
        .map((sql) => {
          const params = Array((sql.match(/\?/g) ?? []).length).fill(null);
          return (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...params) as { detail: string }[]).map((r) => r.detail).join(" | ");
        })
        .join(" || ");
    };
    const noScan = (plan: string, index: RegExp) => {
      assert.doesNotMatch(plan, /SCAN (leases|secret_versions|audit)\b(?! USING)/, plan);
      assert.match(plan, index, plan);
    };
    noScan(planOf(() => q.countLiveLeases("a", T0)), /COVERING INDEX leases_live_agent/);
    noScan(planOf(() => q.getLease("x")), /leases USING PRIMARY KEY/);
    noScan(planOf(() => q.useLease("x", T0)), /leases USING PRIMARY KEY/);
    // A revocation marks used-up leases too (done, so outside the live indexes): it searches the
    // unexpired leases by expiry, never the whole table.
    noScan(planOf(() => q.revokeLeases({ agent: "a" }, T0, "r")), /INDEX leases_expiry/);
    noScan(planOf(() => q.revokeLeases({ secret: { scope: "g", name: "n" } }, T0, "r")), /INDEX leases_expiry/);
    noScan(planOf(() => q.revokeLeases({ all: true }, T0, "r")), /INDEX leases_expiry/);
    noScan(planOf(() => q.deleteExpiredLeases(T0, 10)), /INDEX leases_expiry/);
    noScan(planOf(() => q.listLeases({ agent: "a", liveAt: T0 })), /INDEX leases_live_agent/);
    // History listings walk the primary key newest first and stop at the limit: no sort of every lease.
    const history = planOf(() => q.listLeases({ agent: "a", limit: 10 }));
    assert.match(history, /SCAN leases/, history);
    assert.doesNotMatch(history, /TEMP B-TREE/, history);
    noScan(planOf(() => q.versionsNotUnderKey("k", 10)), /INDEX secret_versions_key \(key_id=\?\)/);
    noScan(planOf(() => q.queryAudit({ agent: "a" })), /INDEX audit_agent_run \(<expr>=\? AND agent=\?\)/);
    noScan(planOf(() => q.queryAudit({ secret: "g/n", order: "desc" })), /INDEX audit_secret_run \(<expr>=\? AND secret=\?\)/);
    noScan(planOf(() => q.queryAudit({ leaseId: "a" })), /INDEX audit_lease/);
    db.close();
  });

  test("audit queries by agent or secret, which seek run by run of 1,024 seqs, match a plain filter", async () => {
    const store = openSqliteStore(freshPath());
    try {
      const rows = Array.from({ length: 3500 }, (_, i) => {
        const seq = i + 1;
        return auditRec(seq, {
          agent: seq % 7 === 0 ? "rare" : seq % 3 === 0 ? null : `agent-${seq % 2}`,
          secret: seq % 5 === 0 ? "global/other" : "global/github",
          type: seq % 2 === 0 ? "secret_accessed" : "lease_granted",
        });
      });
      await store.transaction(async (t) => {
        for (const r of rows) await t.insertAudit(r);
      });
      const cases: AuditFilter[] = [
        { agent: "rare", limit: 10_000 },
        { agent: "rare", order: "desc", limit: 50 },
        { agent: "agent-1", afterSeq: 1000, limit: 700 },
        { agent: "agent-0", since: T0 + 900_000, until: T0 + 2_100_000, limit: 10_000 },
        { secret: "global/other", order: "desc" },
        { agent: "rare", secret: "global/other", types: ["lease_granted"], limit: 10_000 },
        { agent: "rare", afterSeq: 1023, limit: 3 },
        { agent: "nobody" },
        { agent: "rare", limit: 0 },
        { agent: "rare", afterSeq: 3500 },
      ];
      for (const f of cases) {
        const want = rows
          .filter(
            (r) =>
              (f.agent === undefined || r.agent === f.agent) &&
              (f.secret === undefined || r.secret === f.secret) &&
              (f.types === undefined || f.types.includes(r.type)) &&
              (f.since === undefined || r.time >= f.since) &&
              (f.until === undefined || r.time < f.until) &&
              (f.afterSeq === undefined || r.seq > f.afterSeq),
          )
          .map((r) => r.seq);
        if (f.order === "desc") want.reverse();
        const got = (await store.queryAudit(f)).map((r) => r.seq);
        assert.deepEqual(got, want.slice(0, f.limit ?? 100), JSON.stringify(f));
      }
    } finally {
      await store.close();
    }
  });

  test("group commit: 200 concurrent transactions share a few commits and all land", async () => {
    const store = openSqliteStore(freshPath());
    const before = store.stats();
    await Promise.all(Array.from({ length: 200 }, (_, i) => store.transaction((t) => t.insertLease(leaseRec(`l${i}`)))));
    const st = store.stats();
    assert.equal(st.transactions - before.transactions, 200);
    assert.ok(st.commits - before.commits <= 10, `expected few commits, got ${st.commits - before.commits}`);
    assert.equal((await store.listLeases({})).length, 200);
    await store.close();
  });

  test("beforeCommit: one run per batch for a function many calls registered; a failing one fails the calls that registered it", async () => {
    const store = openSqliteStore(freshPath());
    try {
      let shared = 0;
      let fromFailed = 0;
      const sharedFn = async (t: StoreTx): Promise<void> => {
        shared++;
        await t.setMeta("calls-seen", String((await t.listLeases({})).length));
      };
      const c0 = store.stats().commits;
      const results = await Promise.allSettled([
        ...Array.from({ length: 10 }, (_, i) =>
          store.transaction(async (t) => {
            await t.insertLease(leaseRec(`l${i}`));
            t.beforeCommit(sharedFn);
          }),
        ),
        store.transaction(async (t) => {
          t.beforeCommit(async () => void fromFailed++);
          throw new Error("rolled back");
        }),
      ]);
      assert.equal(store.stats().commits - c0, 1, "one batch");
      assert.deepEqual(results.map((r) => r.status), [...Array(10).fill("fulfilled"), "rejected"]);
      assert.equal(shared, 1, "run once for the ten calls that registered it");
      assert.equal(fromFailed, 0, "nothing runs for a call that was rolled back");
      assert.equal(await store.getMeta("calls-seen"), "10", "it ran after every call of the batch");

      // A beforeCommit function that only one call registered and that throws fails that call alone:
      // its writes are undone, its siblings commit (a call's own audit events work this way).
      const failing = await Promise.allSettled([
        store.transaction((t) => t.setMeta("sibling", "1")),
        store.transaction(async (t) => {
          await t.setMeta("owner", "1");
          t.beforeCommit(async (ft) => {
            await ft.setMeta("owner-finisher", "1");
            throw new Error("its audit write failed");
          });
        }),
        store.transaction(async () => {
          throw new Error("its own error");
        }),
      ]);
      const outcome = (rs: PromiseSettledResult<unknown>[]) => rs.map((r) => (r.status === "rejected" ? (r.reason as Error).message : "fulfilled"));
      assert.deepEqual(outcome(failing), ["fulfilled", "its audit write failed", "its own error"], "a call that had already failed keeps its own error");
      assert.equal(await store.getMeta("sibling"), "1");
      assert.equal(await store.getMeta("owner"), null, "the owner's own writes are undone");
      assert.equal(await store.getMeta("owner-finisher"), null);
      // One that several calls registered and that throws takes the whole batch with it.
      const sharedFailing = async (): Promise<void> => {
        throw new Error("checkpoint write failed");
      };
      const all = await Promise.allSettled([
        store.transaction(async (t) => {
          await t.setMeta("first", "1");
          t.beforeCommit(sharedFailing);
        }),
        store.transaction(async (t) => {
          await t.setMeta("second", "1");
          t.beforeCommit(sharedFailing);
        }),
      ]);
      assert.deepEqual(outcome(all), ["checkpoint write failed", "checkpoint write failed"]);
      assert.equal(await store.getMeta("first"), null);
      assert.equal(await store.getMeta("second"), null);
      await store.transaction((t) => t.setMeta("after", "1"));
      assert.equal(await store.getMeta("after"), "1", "the store goes on");
    } finally {
      await store.close();
    }
  });

  test("a function that throws inside a batch does not undo its batch siblings", async () => {
    const store = openSqliteStore(freshPath());
    const before = store.stats().commits;
    const results = await Promise.allSettled([
      store.transaction((t) => t.setMeta("a", "1")),
      store.transaction(async (t) => {
        await t.setMeta("b", "1");
        await t.insertLease(leaseRec("doomed"));
        throw new Error("no");
      }),
      store.transaction((t) => t.setMeta("c", "1")),
      store.transaction((t) => t.insertLease(leaseRec("l1"))),
      store.transaction((t) => t.insertLease(leaseRec("l1"))), // duplicate id: fails alone
    ]);
    assert.deepEqual(results.map((r) => r.status), ["fulfilled", "rejected", "fulfilled", "fulfilled", "rejected"]);
    assert.ok(results[4]!.status === "rejected" && isVaultError(results[4]!.reason, "internal"));
    assert.equal(store.stats().commits - before, 1, "all five ran in one batch");
    assert.equal(await store.getMeta("a"), "1");
    assert.equal(await store.getMeta("b"), null);
    assert.equal(await store.getMeta("c"), "1");
    assert.equal(await store.getLease("doomed"), null);
    assert.ok(await store.getLease("l1"));
    await store.close();
  });

  test("a batch runs without savepoints until a call throws; then its siblings run again, each once in the commit", async () => {
    const store = openSqliteStore(freshPath());
    try {
      const runs: number[] = [0, 0, 0, 0, 0];
      // Each call reads a counter and writes it back one higher: a write left over from a first run would count twice.
      const bump = (i: number) => async (t: StoreTx) => {
        runs[i]!++;
        const n = Number((await t.getMeta("n")) ?? "0");
        await t.setMeta("n", String(n + 1));
        await t.setMeta(`by-${i}`, String(runs[i]));
        return n + 1;
      };
      const r0 = store.stats().reruns;
      const c0 = store.stats().commits;
      const ok = await Promise.all([0, 1, 2].map((i) => store.transaction(bump(i))));
      assert.deepEqual(ok, [1, 2, 3]);
      assert.deepEqual(runs.slice(0, 3), [1, 1, 1], "no call failed: each function ran once");
      assert.equal(store.stats().reruns - r0, 0);
      runs.fill(0);
      await store.transaction((t) => t.setMeta("n", "0"));
      const results = await Promise.allSettled([
        store.transaction(bump(0)),
        store.transaction(bump(1)),
        store.transaction(async (t) => {
          runs[2]!++;
          await t.setMeta("n", "1000");
          await t.insertLease(leaseRec("doomed"));
          throw new Error("no");
        }),
        store.transaction(bump(3)),
        store.transaction(bump(4)),
      ]);
      assert.deepEqual(results.map((r) => (r.status === "fulfilled" ? r.value : (r.reason as Error).message)), [1, 2, "no", 3, 4]);
      assert.equal(store.stats().commits - c0, 3, "one commit per batch (the reset between them is its own)");
      assert.equal(store.stats().reruns - r0, 1);
      assert.deepEqual(runs, [2, 2, 1, 1, 1], "the two calls before the failure ran again; the failing one did not");
      assert.equal(await store.getMeta("n"), "4", "each successful call counted once");
      assert.equal(await store.getMeta("by-0"), "2", "what a call's last run wrote is what commits");
      assert.equal(await store.getLease("doomed"), null);
    } finally {
      await store.close();
    }
  });

  test("a function that never settles is rolled back after the timeout; its siblings and later calls commit", async () => {
    const store = openSqliteStore(freshPath(), { txTimeoutMs: 150 });
    let leaked: Parameters<Parameters<Store["transaction"]>[0]>[0] | undefined;
    const stuck = store.transaction(async (t) => {
      leaked = t;
      await t.setMeta("stuck", "1");
      await new Promise(() => {});
    });
    const sibling = store.transaction((t) => t.setMeta("sibling", "1"));
    await assert.rejects(stuck, (e) => isVaultError(e, "internal") && /did not finish within 150 ms/.test(e.message));
    await sibling;
    await store.transaction((t) => t.setMeta("later", "1"));
    await assert.rejects(leaked!.setMeta("stuck", "2"), (e) => isVaultError(e, "internal"));
    assert.equal(await store.getMeta("stuck"), null);
    assert.equal(await store.getMeta("sibling"), "1");
    assert.equal(await store.getMeta("later"), "1");
    // One timer serves every function, re-armed for each: a call that settled is never rejected
    // later, and the next function that never settles times out as the first did.
    await store.transaction((t) => t.setMeta("quick", "1"));
    await new Promise((r) => setTimeout(r, 200));
    await assert.rejects(
      store.transaction(async () => new Promise(() => {})),
      (e) => isVaultError(e, "internal") && /did not finish within 150 ms/.test(e.message),
    );
    assert.equal(await store.getMeta("quick"), "1");
    await store.close();
  });

  test("the transaction timer does not keep an idle process alive", async () => {
    const file = freshPath();
    const code = `const { openSqliteStore } = await import(${JSON.stringify(path.join(here, "..", "src", "store", "sqlite", "sqlite-store.ts"))});
const s = openSqliteStore(${JSON.stringify(file)}, { txTimeoutMs: 60000 });
await s.transaction((t) => t.setMeta("k", "v"));
console.log("done");`;
    const t0 = Date.now();
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    const exit = await new Promise<number | null>((r) => child.on("exit", r));
    assert.equal(exit, 0);
    assert.match(out, /done/);
    assert.ok(Date.now() - t0 < 30_000, "the process exited without waiting out the 60 s transaction timeout");
  });

  test("a write lock held elsewhere past the busy timeout fails the batch as unavailable", async () => {
    const p = freshPath();
    const store = openSqliteStore(p, { busyTimeoutMs: 100 });
    const other = new Database(p);
    other.exec("BEGIN IMMEDIATE");
    const results = await Promise.allSettled([store.transaction((t) => t.setMeta("a", "1")), store.transaction((t) => t.setMeta("b", "1"))]);
    for (const r of results) {
      assert.equal(r.status, "rejected");
      assert.ok(isVaultError(r.reason, "unavailable"));
      assert.equal(
        r.reason.message,
        "the vault database is locked by another process; try again, or stop the other lessor process",
      );
    }
    other.exec("ROLLBACK");
    other.close();
    await store.transaction((t) => t.setMeta("a", "2"));
    assert.equal(await store.getMeta("a"), "2");
    await store.close();
  });

  test("close waits for queued transactions", async () => {
    const p = freshPath();
    const store = openSqliteStore(p);
    const pending = Array.from({ length: 20 }, (_, i) => store.transaction((t) => t.setMeta(`k${i}`, "v")));
    await store.close();
    await Promise.all(pending);
    const again = openSqliteStore(p);
    for (let i = 0; i < 20; i++) assert.equal(await again.getMeta(`k${i}`), "v");
    await again.close();
  });

  test("two stores on one file (a CLI beside a daemon) write concurrently without losing rows", async () => {
    const p = freshPath();
    const a = openSqliteStore(p);
    const b = openSqliteStore(p);
    const work: Promise<void>[] = [];
    for (let i = 0; i < 150; i++) {
      work.push(append(a, `a-${i}`));
      work.push(append(b, `b-${i}`));
    }
    await Promise.all(work);
    const ids = await allAudit(a);
    assert.equal(ids.length, 300);
    assert.equal(new Set(ids).size, 300);
    assert.deepEqual(await allAudit(b), ids);
    await a.close();
    await b.close();
  });

  test("a second process writing at the same time: every row from both lands, seqs stay gapless", async () => {
    const p = freshPath();
    const store = openSqliteStore(p, { busyTimeoutMs: 10_000 });
    await append(store, "init"); // create the schema before the child opens
    const { child, lines } = startWriter(["audit", p, "child", "300"]);
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    await expectLine(lines, "ready");
    child.stdin!.write("go\n");
    let childDone = false;
    const done = expectLine(lines, "done").finally(() => {
      childDone = true;
    });
    // Keep writing until the child has finished, so the two really overlap.
    let written = 0;
    while ((!childDone || written < 300) && written < 200_000) {
      await Promise.all(Array.from({ length: 10 }, () => append(store, `parent-${written++}`)));
      await new Promise((r) => setImmediate(r));
    }
    await done;
    assert.equal(await exited, 0);
    const ids = await allAudit(store);
    assert.equal(ids.length, 1 + 300 + written);
    const got = new Set(ids);
    for (let i = 0; i < written; i++) assert.ok(got.has(`parent-${i}`), `parent-${i}`);
    for (let i = 0; i < 300; i++) assert.ok(got.has(`child-${i}`), `child-${i}`);
    await store.close();
  });

  test("every acknowledged transaction survives kill -9 of the writer", async () => {
    const p = freshPath();
    await openSqliteStore(p).close();
    const { child, lines } = startWriter(["ack", p, "k"]);
    const exited = new Promise<NodeJS.Signals | null>((r) => child.on("exit", (_c, sig) => r(sig)));
    const acked: string[] = [];
    while (acked.length < 150) {
      const r = await lines.next();
      assert.ok(!r.done, "writer ended early");
      acked.push(r.value.replace(/^ack /, ""));
    }
    child.kill("SIGKILL");
    assert.equal(await exited, "SIGKILL");
    const store = openSqliteStore(p);
    const ids = new Set(await allAudit(store));
    for (const id of acked) assert.ok(ids.has(id), `acknowledged ${id} was lost`);
    await store.close();
  });
});

describe("the file replaced under an open store", () => {
  for (const how of ["replaced", "removed"] as const)
    test(`${how}: the next transaction is refused with unavailable naming it (never written into the old file), later reads too, and a store opened again sees the file now at the path`, async () => {
      const p = freshPath();
      const store = openSqliteStore(p);
      await append(store, "before");
      const copy = freshPath();
      fs.copyFileSync(p, copy); // the WAL holds "before": the copy is an empty vault
      if (how === "replaced") fs.renameSync(copy, p);
      else fs.rmSync(p);
      for (const s of ["-wal", "-shm"]) fs.rmSync(p + s, { force: true });
      const refused = await append(store, "after").then(
        () => null,
        (e: unknown) => e,
      );
      assert.ok(isVaultError(refused) && refused.code === "unavailable", String(refused));
      assert.match(refused.message, new RegExp(`${path.basename(p)} was ${how === "replaced" ? "replaced by another file .*" : "removed"} while this process had it open.*restart lessor serve`));
      await assert.rejects(store.auditHead(), (e: unknown) => isVaultError(e) && e.message === refused.message);
      await store.close();
      if (how === "removed") return;
      const again = openSqliteStore(p);
      assert.deepEqual(await allAudit(again), []);
      await append(again, "on the restored file");
      await again.close();
    });
});
