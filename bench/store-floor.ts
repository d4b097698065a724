/**
 * The store floor of a lease+access: the SQLite store's reads and writes for one lease taken and used
 * as requestLeaseAndAccess (src/vault/leases.ts) does them (key check, current version, live-lease
 * count, the lease row written once already used, audit head, two audit rows, checkpoint), with none
 * of the vault's other work (policy, crypto, hash chain) and no protocol. What the daemon's
 * lease+access figures could reach on this machine if everything but the store were free: a ceiling
 * set by the data model (the lease and audit tables and their indexes) and the disk.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { uuidv7 } from "../src/base/ids.js";
import type { AuditRecord, LeaseRecord } from "../src/base/types.js";

/** Runs `clients` loops of one lease+access's store work for `ms`; returns ops/s and commits. */
export async function storeFloor(clients: number, ms: number): Promise<{ opsPerS: number; opsPerCommit: number }> {
  const dir = mkdtempSync(join(tmpdir(), "lessor-bench-floor-"));
  const store = openSqliteStore(join(dir, "lessor.db"));
  const ref = { scope: "global", name: "token" };
  const hash = randomBytes(32);
  try {
    await store.transaction(async (tx) => {
      await tx.putSecret({ ...ref, kind: "api_key", description: "", tags: [], currentVersion: 1, createdAt: Date.now(), updatedAt: Date.now() });
      await tx.insertVersion({
        ...ref,
        version: 1,
        alg: "aes-256-gcm",
        keyId: "bench",
        wrappedDek: randomBytes(60),
        ciphertext: randomBytes(68),
        size: 40,
        createdAt: Date.now(),
        createdBy: "bench",
      });
    });
    let seq = 0;
    const audit = (type: string, agent: string, leaseId: string, now: number): AuditRecord => ({
      seq: ++seq,
      id: uuidv7(now),
      time: now,
      type,
      actorId: `uid:${agent}`,
      actorRole: "agent",
      transport: "uds",
      agent,
      secret: "global/token",
      leaseId,
      domain: "api.example.com",
      outcome: "ok",
      reason: null,
      detail: null,
      prevHash: hash,
      hash,
      keyId: "bench",
    });
    const op = (c: number) =>
      store.transaction(async (tx) => {
        const now = Date.now();
        const agent = `bench-${c}`;
        await tx.getMeta("master_key_id");
        await tx.getCurrentVersion(ref);
        await tx.countLiveLeases(agent, now);
        const lease: LeaseRecord = {
          id: uuidv7(now),
          agent,
          ...ref,
          domains: ["api.example.com"],
          anyDomain: false,
          methods: null,
          paths: null,
          rule: "bench",
          issuedAt: now,
          expiresAt: now + 3600_000,
          maxExpiresAt: now + 3600_000,
          uses: 1,
          maxUses: 1,
          renewals: 0,
          maxRenewals: null,
          renewable: false,
          revokedAt: null,
          revokeReason: null,
          issuedBy: `uid:${agent}`,
          bound: false,
          proxyOnly: false,
        };
        await tx.insertLease(lease);
        await tx.auditHead();
        // seq is taken inside the transaction, where calls run one at a time, so it has no gaps.
        await tx.insertAudit(audit("lease_granted", agent, lease.id, now));
        await tx.insertAudit(audit("secret_accessed", agent, lease.id, now));
        await tx.putCheckpoint({ seq, hash, keyId: "bench", mac: hash });
      });
    let done = 0;
    const before = store.stats().commits;
    const t0 = performance.now();
    const end = t0 + ms;
    await Promise.all(
      Array.from({ length: clients }, async (_, c) => {
        while (performance.now() < end) {
          await op(c);
          done++;
        }
      }),
    );
    const opsPerS = done / ((performance.now() - t0) / 1000);
    return { opsPerS, opsPerCommit: done / Math.max(1, store.stats().commits - before) };
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
