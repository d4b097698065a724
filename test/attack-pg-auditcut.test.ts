/**
 * Attack: the audit trail of a team server (two lessor instances on one PostgreSQL schema) cut by
 * someone who can write the database but does not hold the master key (docs/security.md, "Known
 * limits": the audit trail stays tamper-evident; docs/audit.md, "Every commit checks the head it
 * extends": "in a process that is running — a head older than one this process committed (a cut
 * trail with an older checkpoint row put back)" is refused).
 *
 * A grants a lease and reveals the secret (events s+1…s+k, A has committed up to s+k). The database
 * writer deletes those events and puts back the checkpoint row that vouched for event s (a valid MAC,
 * copied earlier). B, which last committed at or before s, chains its own events onto s. Once B's
 * head passes s+k, A's guard (which compares seqs only) accepts the new head as "newer than mine",
 * and `audit verify` on either instance says ok: A's reveal of the value is gone from the trail, with
 * every process running the whole time.
 *
 * Needs LESSOR_TEST_PG_URL; skips with the reason without it.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, describe, test } from "node:test";
import { isVaultError } from "../src/base/errors.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { Vault } from "../src/vault/vault.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { parsePolicy } from "../src/vault/policy.js";
import { agent, grant, hexKey } from "./helpers.js";
import { admin, PG_SKIP, PG_URL } from "./pg-helpers.js";

const CANARY = "pgcut_" + randomBytes(10).toString("hex");
const AT = { domain: "api.example.com" };
const POLICY = grant("g", ["claude"], ["tok"], ["api.example.com"], 'ttl = "1h"\nmax_ttl = "2h"');

describe("the audit trail of two instances on one PostgreSQL schema, cut by a database writer", { skip: PG_SKIP }, () => {
  const closers: (() => Promise<unknown>)[] = [];
  after(async () => {
    for (const c of closers.reverse()) await c().catch(() => {});
  });

  const pair = async () => {
    const schema = `pgcut_${randomBytes(5).toString("hex")}`;
    await admin(`CREATE SCHEMA ${schema}`);
    closers.unshift(async () => void (await admin(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)));
    const key = hexKey();
    const policy = parsePolicy(POLICY, "p.toml");
    const mk = async () => {
      const store = await openPostgresStore({ url: PG_URL!, schema });
      closers.push(() => store.close());
      const v = await Vault.open({ store, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy });
      closers.push(() => v.close());
      return v;
    };
    const va = await mk();
    const vb = await mk();
    return { va, vb, schema };
  };

  test("A's reveal of a value, cut from the trail with the older checkpoint put back while A and B run, is caught by A (its next audited write is refused, and its verify fails)", async () => {
    const { va, vb, schema } = await pair();
    await va.admin().storeSecret({ name: "tok", value: CANARY });
    // B commits something audited: its guard's "committed" is now the head.
    const l0 = await vb.session(agent("claude")).requestLease({ secret: "tok" });
    assert.ok(l0.id);
    const cut = Number((await admin(`SELECT seq FROM ${schema}.audit ORDER BY seq DESC LIMIT 1`)).rows[0].seq);
    const saved = (await admin(`SELECT seq, hash, key_id, mac FROM ${schema}.audit_checkpoint WHERE id = 1`)).rows[0];
    assert.equal(Number(saved.seq), cut);

    // A grants and reveals: the events the attacker wants gone.
    const g = await va.session(agent("claude")).requestLeaseAndAccess({ secret: "tok" }, AT);
    assert.equal(g.value.unsafeText(), CANARY);
    g.value.wipe();
    const aHead = Number((await admin(`SELECT seq FROM ${schema}.audit ORDER BY seq DESC LIMIT 1`)).rows[0].seq);
    assert.ok(aHead > cut);
    const revealed = await admin(`SELECT seq, type FROM ${schema}.audit WHERE lease_id = $1`, [g.lease.id]);
    assert.ok(revealed.rows.length > 0);

    // The database writer (no master key): deletes A's events, puts back the older checkpoint, and
    // bumps the commit counters as docs/storage.md tells hand edits to.
    await admin(`DELETE FROM ${schema}.audit WHERE seq > $1`, [cut]);
    await admin(`UPDATE ${schema}.audit_checkpoint SET seq = $1, hash = $2, key_id = $3, mac = $4 WHERE id = 1`, [saved.seq, saved.hash, saved.key_id, saved.mac]);
    await admin(`UPDATE ${schema}.lessor_commits SET n = n + 1, cfg = cfg + 1, live = live + 1 WHERE id = 1`);

    // B goes on: its events are chained onto the cut head until the trail is longer than A's was.
    let bHead = cut;
    while (bHead <= aHead) {
      await vb.session(agent("claude")).requestLease({ secret: "tok" });
      bHead = Number((await admin(`SELECT seq FROM ${schema}.audit ORDER BY seq DESC LIMIT 1`)).rows[0].seq);
    }
    assert.equal((await admin(`SELECT count(*)::int AS n FROM ${schema}.audit WHERE lease_id = $1`, [g.lease.id])).rows[0].n, 0, "A's events are gone");

    // A, which committed those events, must notice: its verify fails and its next audited write is refused.
    const aVerify = await va.admin().auditVerify();
    assert.equal(aVerify.ok, false, `audit verify through A says ok (${JSON.stringify(aVerify)}) although A's own events ${cut + 1}…${aHead} (a reveal of the value) were removed`);
    await assert.rejects(
      va.session(agent("claude")).requestLease({ secret: "tok" }),
      (e: unknown) => isVaultError(e) && e.code === "audit_broken",
      "A chained onto a trail from which its own committed events were cut",
    );
  });
});
