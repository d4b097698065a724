/**
 * The store conformance suite: every Store implementation must pass it unchanged. Call
 * {@link storeConformance} from a `*.test.ts` file with a factory that makes a fresh, empty store.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { isVaultError } from "../src/base/errors.js";
import { leaseState } from "../src/base/lease-state.js";
import type { Store, StoreTx } from "../src/vault/ports.js";
import type { AuditRecord, LeaseRecord, SecretRecord, TokenRecord, VersionRecord } from "../src/base/types.js";

/** A fresh empty store and how to dispose of it. */
export type StoreFactory = () => Promise<{ store: Store; cleanup: () => Promise<void> }>;

export const T0 = 1_700_000_000_000;

export function secretRec(scope: string, name: string, over: Partial<SecretRecord> = {}): SecretRecord {
  return {
    scope,
    name,
    kind: "api_key",
    description: `the ${name} key`,
    tags: [],
    currentVersion: 1,
    createdAt: T0,
    updatedAt: T0,
    ...over,
  };
}

export function versionRec(scope: string, name: string, version: number, over: Partial<VersionRecord> = {}): VersionRecord {
  return {
    scope,
    name,
    version,
    alg: "aes-256-gcm",
    keyId: "k1",
    wrappedDek: Buffer.from([version, 0xde, 0xad, 0x00, 0xff]),
    ciphertext: Buffer.from(`sealed ${scope}/${name} v${version}\u0000\u00ff`, "latin1"),
    size: 12,
    createdAt: T0 + version,
    createdBy: "uid:1000",
    ...over,
  };
}

export function leaseRec(id: string, over: Partial<LeaseRecord> = {}): LeaseRecord {
  return {
    id,
    agent: "agent-a",
    scope: "global",
    name: "github",
    domains: ["api.github.com", "*.github.com"],
    anyDomain: false,
    methods: null,
    paths: null,
    rule: "rule-1",
    issuedAt: T0,
    expiresAt: T0 + 60_000,
    maxExpiresAt: T0 + 3_600_000,
    uses: 0,
    maxUses: null,
    renewals: 0,
    maxRenewals: null,
    renewable: true,
    revokedAt: null,
    revokeReason: null,
    issuedBy: "agent:agent-a",
    bound: false,
    proxyOnly: false,
    ...over,
  };
}

export function auditRec(seq: number, over: Partial<AuditRecord> = {}): AuditRecord {
  return {
    seq,
    id: `audit-${String(seq).padStart(6, "0")}`,
    time: T0 + seq * 1000,
    type: "secret_accessed",
    actorId: "uid:1000",
    actorRole: "agent",
    transport: "uds",
    agent: "agent-a",
    secret: "global/github",
    leaseId: null,
    domain: null,
    outcome: "ok",
    reason: null,
    detail: null,
    prevHash: Buffer.alloc(32, seq - 1),
    hash: Buffer.alloc(32, seq),
    keyId: "k1",
    ...over,
  };
}

const G = { scope: "global", name: "github" };

/** Asserts that `p` rejects with a VaultError. */
async function rejectsVault(p: Promise<unknown>, code?: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(isVaultError(e), `expected a VaultError, got ${String(e)}`);
    if (code !== undefined) assert.equal(e.code, code);
    return true;
  });
}

function plainBytes(b: Uint8Array): number[] {
  return [...b];
}

/** Registers the conformance tests for one store implementation. */
export function storeConformance(label: string, make: StoreFactory): void {
  const withStore = (fn: (s: Store) => Promise<void>) => async () => {
    const { store, cleanup } = await make();
    try {
      await fn(store);
    } finally {
      await cleanup();
    }
  };
  const tx = <T>(s: Store, fn: (t: StoreTx) => Promise<T>): Promise<T> => s.transaction(fn);

  describe(`store conformance: ${label}`, () => {
    describe("secrets", () => {
      test("putSecret / getSecret round-trip, fresh objects, missing is null", withStore(async (s) => {
        const rec = secretRec("global", "github", { tags: ["ci", "prod"], kind: "pat", description: "d" });
        await tx(s, (t) => t.putSecret(rec));
        const got = await s.getSecret(G);
        assert.deepEqual(got, rec);
        got!.tags.push("mutated");
        got!.description = "mutated";
        assert.deepEqual(await s.getSecret(G), rec);
        rec.tags.push("after-put"); // the store must not hold the caller's object either
        assert.deepEqual((await s.getSecret(G))!.tags, ["ci", "prod"]);
        assert.equal(await s.getSecret({ scope: "global", name: "nope" }), null);
        assert.equal(await s.getSecret({ scope: "env:prod", name: "github" }), null);
      }));

      test("putSecret replaces metadata by scope and name and keeps versions", withStore(async (s) => {
        await tx(s, async (t) => {
          await t.putSecret(secretRec("global", "github"));
          await t.insertVersion(versionRec("global", "github", 1));
        });
        const upd = secretRec("global", "github", { currentVersion: 2, description: "new", tags: ["x"], updatedAt: T0 + 5 });
        await tx(s, async (t) => {
          await t.putSecret(upd);
          await t.insertVersion(versionRec("global", "github", 2));
        });
        assert.deepEqual(await s.getSecret(G), upd);
        assert.deepEqual(
          (await s.listVersions(G)).map((v) => v.version),
          [1, 2],
        );
        assert.equal((await s.listSecrets({})).length, 1);
      }));

      test("listSecrets sorts by scope then name and filters by scope, prefix and exact tag", withStore(async (s) => {
        await tx(s, async (t) => {
          await t.putSecret(secretRec("global", "b_key", { tags: ["prod"] }));
          await t.putSecret(secretRec("global", "a_key", { tags: ["production"] }));
          await t.putSecret(secretRec("global", "axkey", { tags: ["prod", "ci"] }));
          await t.putSecret(secretRec("env:prod", "a_key", { tags: [] }));
          await t.putSecret(secretRec("workspace:acme", "a%b", { tags: ["prod"] }));
          await t.putSecret(secretRec("workspace:acme", "aXb", { tags: ["pro"] }));
        });
        const ids = (rs: SecretRecord[]) => rs.map((r) => `${r.scope}/${r.name}`);
        assert.deepEqual(ids(await s.listSecrets({})), [
          "env:prod/a_key",
          "global/a_key",
          "global/axkey",
          "global/b_key",
          "workspace:acme/a%b",
          "workspace:acme/aXb",
        ]);
        assert.deepEqual(ids(await s.listSecrets({ scope: "global" })), ["global/a_key", "global/axkey", "global/b_key"]);
        // "_" and "%" are literal characters in a prefix, not wildcards.
        assert.deepEqual(ids(await s.listSecrets({ namePrefix: "a_" })), ["env:prod/a_key", "global/a_key"]);
        assert.deepEqual(ids(await s.listSecrets({ namePrefix: "a%" })), ["workspace:acme/a%b"]);
        assert.deepEqual(ids(await s.listSecrets({ namePrefix: "a" })).length, 5);
        assert.deepEqual(ids(await s.listSecrets({ namePrefix: "A" })), []);
        assert.deepEqual(ids(await s.listSecrets({ namePrefix: "zzz" })), []);
        assert.deepEqual(ids(await s.listSecrets({ tag: "prod" })), ["global/axkey", "global/b_key", "workspace:acme/a%b"]);
        assert.deepEqual(ids(await s.listSecrets({ tag: "prod", scope: "global", namePrefix: "b" })), ["global/b_key"]);
        assert.deepEqual(ids(await s.listSecrets({ tag: "pr" })), []);
        assert.deepEqual(ids(await s.listSecrets({ scope: "env:none" })), []);
      }));

      test("listSecrets pages with limit and after, in the same order, filters kept", withStore(async (s) => {
        await tx(s, async (t) => {
          for (const [scope, name] of [["global", "b"], ["global", "a"], ["env:x", "z"], ["env:x_y", "a"], ["global", "B"], ["env:x", "a"]] as const)
            await t.putSecret(secretRec(scope, name, { tags: name === "a" ? ["t"] : [] }));
        });
        const ids = (rs: SecretRecord[]) => rs.map((r) => `${r.scope}/${r.name}`);
        const whole = ids(await s.listSecrets({}));
        const paged: string[] = [];
        for (let after: SecretRecord | undefined; ; ) {
          const page = await s.listSecrets({ limit: 2, ...(after !== undefined ? { after: { scope: after.scope, name: after.name } } : {}) });
          assert.ok(page.length <= 2);
          paged.push(...ids(page));
          if (page.length < 2) break;
          after = page.at(-1);
        }
        assert.deepEqual(paged, whole);
        assert.deepEqual(ids(await s.listSecrets({ after: { scope: "env:x", name: "z" }, limit: 1 })), ["env:x_y/a"]);
        assert.deepEqual(ids(await s.listSecrets({ tag: "t", after: { scope: "env:x", name: "a" } })), ["env:x_y/a", "global/a"]);
        assert.deepEqual(ids(await s.listSecrets({ scope: "global", after: { scope: "global", name: "a" } })), ["global/b"]);
      }));

      test("insertVersion / getVersion round-trip with byte blobs as Buffers", withStore(async (s) => {
        const v = versionRec("global", "github", 1, { alg: "xchacha20-poly1305", keyId: "k9", size: 99 });
        await tx(s, async (t) => {
          await t.putSecret(secretRec("global", "github"));
          await t.insertVersion(v);
        });
        const got = await s.getVersion(G, 1);
        assert.ok(got);
        assert.ok(Buffer.isBuffer(got.wrappedDek) && Buffer.isBuffer(got.ciphertext));
        assert.deepEqual({ ...got, wrappedDek: plainBytes(got.wrappedDek), ciphertext: plainBytes(got.ciphertext) }, {
          ...v,
          wrappedDek: plainBytes(v.wrappedDek),
          ciphertext: plainBytes(v.ciphertext),
        });
        got.ciphertext[0] = 0; // mutating a returned record does not reach the store
        assert.deepEqual(plainBytes((await s.getVersion(G, 1))!.ciphertext), plainBytes(v.ciphertext));
        assert.equal(await s.getVersion(G, 2), null);
        assert.equal(await s.getVersion({ scope: "global", name: "other" }, 1), null);
      }));

      test("getCurrentVersion reads the version the secret row names, or null", withStore(async (s) => {
        await tx(s, async (t) => {
          await t.putSecret(secretRec("global", "github", { currentVersion: 2 }));
          await t.insertVersion(versionRec("global", "github", 1));
          await t.insertVersion(versionRec("global", "github", 2, { keyId: "k2" }));
          await t.putSecret(secretRec("global", "dangling", { currentVersion: 3 }));
          await t.insertVersion(versionRec("global", "dangling", 1));
        });
        const cur = await s.getCurrentVersion(G);
        assert.deepEqual({ ...cur!, wrappedDek: plainBytes(cur!.wrappedDek), ciphertext: plainBytes(cur!.ciphertext) }, {
          ...versionRec("global", "github", 2, { keyId: "k2" }),
          wrappedDek: plainBytes(versionRec("global", "github", 2).wrappedDek),
          ciphertext: plainBytes(versionRec("global", "github", 2).ciphertext),
        });
        assert.equal(await tx(s, async (t) => (await t.getCurrentVersion(G))?.version), 2);
        assert.equal(await s.getCurrentVersion({ scope: "global", name: "dangling" }), null);
        assert.equal(await s.getCurrentVersion({ scope: "global", name: "nope" }), null);
        await tx(s, (t) => t.putSecret(secretRec("global", "github", { currentVersion: 1 })));
        assert.equal((await s.getCurrentVersion(G))?.version, 1);
      }));

      test("insertVersion refuses a duplicate version and a missing secret row", withStore(async (s) => {
        await tx(s, async (t) => {
          await t.putSecret(secretRec("global", "github"));
          await t.insertVersion(versionRec("global", "github", 1));
        });
        await rejectsVault(tx(s, (t) => t.insertVersion(versionRec("global", "github", 1, { keyId: "other" }))));
        await rejectsVault(tx(s, (t) => t.insertVersion(versionRec("global", "ghost", 1))));
        assert.equal((await s.getVersion(G, 1))!.keyId, "k1");
        assert.equal(await s.getVersion({ scope: "global", name: "ghost" }, 1), null);
      }));

      test("listVersions is oldest first; deleteVersionsBelow prunes and counts", withStore(async (s) => {
        await tx(s, async (t) => {
          await t.putSecret(secretRec("global", "github"));
          await t.putSecret(secretRec("global", "other"));
          for (const v of [3, 1, 4, 2]) await t.insertVersion(versionRec("global", "github", v));
          await t.insertVersion(versionRec("global", "other", 1));
        });
        assert.deepEqual((await s.listVersions(G)).map((v) => v.version), [1, 2, 3, 4]);
        assert.equal(await tx(s, (t) => t.deleteVersionsBelow(G, 3)), 2);
        assert.deepEqual((await s.listVersions(G)).map((v) => v.version), [3, 4]);
        assert.equal(await tx(s, (t) => t.deleteVersionsBelow(G, 3)), 0);
        assert.equal((await s.listVersions({ scope: "global", name: "other" })).length, 1);
        assert.deepEqual(await s.listVersions({ scope: "global", name: "none" }), []);
      }));

      test("deleteSecret removes the secret and all its versions", withStore(async (s) => {
        await tx(s, async (t) => {
          await t.putSecret(secretRec("global", "github"));
          await t.insertVersion(versionRec("global", "github", 1));
          await t.insertVersion(versionRec("global", "github", 2));
          await t.putSecret(secretRec("global", "keep"));
          await t.insertVersion(versionRec("global", "keep", 1));
        });
        assert.equal(await tx(s, (t) => t.deleteSecret(G)), true);
        assert.equal(await tx(s, (t) => t.deleteSecret(G)), false);
        assert.equal(await s.getSecret(G), null);
        assert.equal(await s.getVersion(G, 1), null);
        assert.deepEqual(await s.listVersions(G), []);
        assert.equal((await s.listVersions({ scope: "global", name: "keep" })).length, 1);
        // the name can be reused, starting again with no versions
        await tx(s, async (t) => {
          await t.putSecret(secretRec("global", "github"));
          await t.insertVersion(versionRec("global", "github", 1, { keyId: "fresh" }));
        });
        assert.deepEqual((await s.listVersions(G)).map((v) => v.keyId), ["fresh"]);
      }));

      test("rewrapVersion only changes a row still under fromKeyId", withStore(async (s) => {
        await tx(s, async (t) => {
          await t.putSecret(secretRec("global", "github"));
          await t.insertVersion(versionRec("global", "github", 1, { keyId: "old" }));
        });
        const dek = Buffer.from([7, 7, 7]);
        assert.equal(await tx(s, (t) => t.rewrapVersion(G, 1, "wrong", "new", dek)), false);
        assert.equal((await s.getVersion(G, 1))!.keyId, "old");
        assert.equal(await tx(s, (t) => t.rewrapVersion(G, 1, "old", "new", dek)), true);
        const v = (await s.getVersion(G, 1))!;
        assert.equal(v.keyId, "new");
        assert.deepEqual(plainBytes(v.wrappedDek), [7, 7, 7]);
        assert.deepEqual(plainBytes(v.ciphertext), plainBytes(versionRec("global", "github", 1).ciphertext));
        assert.equal(await tx(s, (t) => t.rewrapVersion(G, 1, "old", "newer", dek)), false);
        assert.equal(await tx(s, (t) => t.rewrapVersion(G, 9, "new", "newer", dek)), false);
      }));

      test("versionsNotUnderKey and keyIdsInUse; a rotation loop terminates", withStore(async (s) => {
        await tx(s, async (t) => {
          for (let i = 0; i < 10; i++) {
            await t.putSecret(secretRec("global", `s${i}`));
            await t.insertVersion(versionRec("global", `s${i}`, 1, { keyId: i < 3 ? "k1" : i < 7 ? "k2" : "k3" }));
          }
        });
        assert.deepEqual((await s.keyIdsInUse()).sort(), ["k1", "k2", "k3"]);
        assert.equal((await s.versionsNotUnderKey("k2", 100)).length, 6);
        assert.ok((await s.versionsNotUnderKey("k2", 100)).every((v) => v.keyId !== "k2"));
        assert.equal((await s.versionsNotUnderKey("k2", 4)).length, 4);
        assert.equal((await s.versionsNotUnderKey("k9", 100)).length, 10);
        let rounds = 0;
        for (;;) {
          const batch = await s.versionsNotUnderKey("k4", 3);
          if (batch.length === 0) break;
          assert.ok(batch.length <= 3);
          rounds++;
          await tx(s, async (t) => {
            for (const v of batch) assert.equal(await t.rewrapVersion(v, v.version, v.keyId, "k4", Buffer.from([4])), true);
          });
        }
        assert.equal(rounds, 4);
        assert.deepEqual(await s.keyIdsInUse(), ["k4"]);
        assert.deepEqual(await s.versionsNotUnderKey("k4", 10), []);
      }));
    });

    describe("leases", () => {
      test("insertLease / getLease round-trip every field; fresh objects", withStore(async (s) => {
        const a = leaseRec("l1", { methods: ["GET", "POST"], paths: ["/repos/"], maxUses: 3, maxRenewals: 2, anyDomain: true, renewable: false, bound: true, proxyOnly: true });
        const b = leaseRec("l2", { revokedAt: T0 + 1, revokeReason: "because", domains: [] });
        await tx(s, async (t) => {
          await t.insertLease(a);
          await t.insertLease(b);
        });
        const got = await s.getLease("l1");
        assert.deepEqual(got, a);
        assert.deepEqual(await s.getLease("l2"), b);
        assert.equal(await s.getLease("l3"), null);
        got!.domains.push("evil.example");
        got!.methods!.push("DELETE");
        assert.deepEqual(await s.getLease("l1"), a);
        await rejectsVault(tx(s, (t) => t.insertLease(leaseRec("l1"))));
      }));

      test("useLease counts uses and refuses expired, revoked, used-up and unknown leases", withStore(async (s) => {
        await tx(s, async (t) => {
          await t.insertLease(leaseRec("ok", { maxUses: 2 }));
          await t.insertLease(leaseRec("unlimited"));
          await t.insertLease(leaseRec("revoked", { revokedAt: T0, revokeReason: "r" }));
          await t.insertLease(leaseRec("expiring", { expiresAt: T0 + 10 }));
        });
        assert.equal(await tx(s, (t) => t.useLease("ok", T0 + 1)), 1);
        assert.equal((await s.getLease("ok"))!.uses, 1);
        assert.equal(await tx(s, (t) => t.useLease("ok", T0 + 1)), 2);
        assert.equal(await tx(s, (t) => t.useLease("ok", T0 + 1)), null);
        assert.equal((await s.getLease("ok"))!.uses, 2);
        for (let i = 1; i <= 5; i++) assert.equal(await tx(s, (t) => t.useLease("unlimited", T0)), i);
        assert.equal(await tx(s, (t) => t.useLease("revoked", T0 + 1)), null);
        assert.equal((await s.getLease("revoked"))!.uses, 0);
        assert.equal(await tx(s, (t) => t.useLease("expiring", T0 + 9)), 1);
        assert.equal(await tx(s, (t) => t.useLease("expiring", T0 + 10)), null, "expiresAt must be > now");
        assert.equal(await tx(s, (t) => t.useLease("expiring", T0 + 11)), null);
        assert.equal(await tx(s, (t) => t.useLease("nope", T0)), null);
        // a cap (the rule's max_uses in force) binds below the lease's own, and never adds uses
        await tx(s, (t) => t.insertLease(leaseRec("capped", { maxUses: 5 })));
        assert.equal(await tx(s, (t) => t.useLease("capped", T0, 2)), 1);
        assert.equal(await tx(s, (t) => t.useLease("capped", T0, 2)), 2);
        assert.equal(await tx(s, (t) => t.useLease("capped", T0, 2)), null);
        assert.equal(await tx(s, (t) => t.useLease("unlimited", T0, 5)), null, "5 uses already");
        assert.equal(await tx(s, (t) => t.useLease("capped", T0, 9)), 3);
        assert.equal(await tx(s, (t) => t.useLease("capped", T0, null)), 4);
        assert.equal(await tx(s, (t) => t.useLease("capped", T0, 9)), 5);
        assert.equal(await tx(s, (t) => t.useLease("capped", T0, 9)), null, "the lease's own max_uses still binds");
        assert.equal((await s.getLease("capped"))!.uses, 5);
        // a lease revoked after some use is no longer usable
        await tx(s, (t) => t.revokeLeases({ id: "unlimited" }, T0 + 2, "stop"));
        assert.equal(await tx(s, (t) => t.useLease("unlimited", T0 + 3)), null);
      }));

      test("useLease race: 50 concurrent transactions on a max_uses=1 lease, exactly one wins", withStore(async (s) => {
        await tx(s, (t) => t.insertLease(leaseRec("once", { maxUses: 1 })));
        const results = await Promise.all(Array.from({ length: 50 }, () => tx(s, (t) => t.useLease("once", T0 + 1))));
        assert.equal(results.filter((r) => r !== null).length, 1);
        assert.equal((await s.getLease("once"))!.uses, 1);
      }));

      test("useLease race: 20 concurrent on max_uses=5, exactly five win", withStore(async (s) => {
        await tx(s, (t) => t.insertLease(leaseRec("five", { maxUses: 5 })));
        const results = await Promise.all(Array.from({ length: 20 }, () => tx(s, (t) => t.useLease("five", T0 + 1))));
        const wins = results.filter((r) => r !== null);
        assert.equal(wins.length, 5);
        assert.deepEqual(wins.sort(), [1, 2, 3, 4, 5]);
        assert.equal((await s.getLease("five"))!.uses, 5);
        assert.equal(await s.countLiveLeases("agent-a", T0 + 1), 0);
      }));

      test("renewLease sets expiry and renewal count", withStore(async (s) => {
        await tx(s, (t) => t.insertLease(leaseRec("l1", { expiresAt: T0 + 10 })));
        await tx(s, (t) => t.renewLease("l1", T0 + 5000, 1));
        const l = (await s.getLease("l1"))!;
        assert.equal(l.expiresAt, T0 + 5000);
        assert.equal(l.renewals, 1);
        assert.equal(await s.countLiveLeases("agent-a", T0 + 100), 1);
        assert.equal(await tx(s, (t) => t.useLease("l1", T0 + 100)), 1);
      }));

      test("countLiveLeases counts only the agent's live leases", withStore(async (s) => {
        await tx(s, async (t) => {
          await t.insertLease(leaseRec("a1"));
          await t.insertLease(leaseRec("a2", { expiresAt: T0 + 500 }));
          await t.insertLease(leaseRec("a3", { revokedAt: T0, revokeReason: "x" }));
          await t.insertLease(leaseRec("a4", { maxUses: 1, uses: 1 }));
          await t.insertLease(leaseRec("a5", { maxUses: 1 }));
          await t.insertLease(leaseRec("b1", { agent: "agent-b" }));
        });
        assert.equal(await s.countLiveLeases("agent-a", T0), 3);
        assert.equal(await s.countLiveLeases("agent-a", T0 + 500), 2);
        await tx(s, (t) => t.useLease("a5", T0));
        assert.equal(await s.countLiveLeases("agent-a", T0), 2);
        assert.equal(await s.countLiveLeases("agent-b", T0), 1);
        assert.equal(await s.countLiveLeases("agent-c", T0), 0);
        assert.equal(await s.countLiveLeases("agent-a", T0 + 60_000), 0);
      }));

      test("listLeases: by id descending (newest first for UUIDv7 ids), filters by agent, secret, liveAt, beforeId, and limits", withStore(async (s) => {
        await tx(s, async (t) => {
          await t.insertLease(leaseRec("l1", { issuedAt: T0 + 1 }));
          await t.insertLease(leaseRec("l2", { issuedAt: T0 + 2, agent: "agent-b" }));
          await t.insertLease(leaseRec("l3", { issuedAt: T0 + 3, name: "slack" }));
          await t.insertLease(leaseRec("l4", { issuedAt: T0 + 4, expiresAt: T0 + 100 }));
          await t.insertLease(leaseRec("l5", { issuedAt: T0 + 5, revokedAt: T0 + 6, revokeReason: "x" }));
          await t.insertLease(leaseRec("l6", { issuedAt: T0 + 5, maxUses: 0 }));
        });
        const ids = (ls: LeaseRecord[]) => ls.map((l) => l.id);
        assert.deepEqual(ids(await s.listLeases({})), ["l6", "l5", "l4", "l3", "l2", "l1"]);
        assert.deepEqual(ids(await s.listLeases({ limit: 2 })), ["l6", "l5"]);
        assert.deepEqual(ids(await s.listLeases({ agent: "agent-b" })), ["l2"]);
        assert.deepEqual(ids(await s.listLeases({ agent: "agent-a", secret: G })), ["l6", "l5", "l4", "l1"]);
        assert.deepEqual(ids(await s.listLeases({ secret: { scope: "global", name: "slack" } })), ["l3"]);
        assert.deepEqual(ids(await s.listLeases({ liveAt: T0 + 10 })), ["l4", "l3", "l2", "l1"]);
        assert.deepEqual(ids(await s.listLeases({ liveAt: T0 + 100 })), ["l3", "l2", "l1"]);
        assert.deepEqual(ids(await s.listLeases({ liveAt: T0 + 10, agent: "agent-a", limit: 2 })), ["l4", "l3"]);
        assert.deepEqual(ids(await s.listLeases({ agent: "nobody" })), []);
        // The next page of a listing: ids before the last one seen.
        assert.deepEqual(ids(await s.listLeases({ beforeId: "l5", limit: 2 })), ["l4", "l3"]);
        assert.deepEqual(ids(await s.listLeases({ beforeId: "l4", agent: "agent-a" })), ["l3", "l1"]);
        assert.deepEqual(ids(await s.listLeases({ beforeId: "l1" })), []);
        // The order is the id's, not issuedAt's: the vault's ids are UUIDv7 made at issue, so the two agree.
        await tx(s, (t) => t.insertLease(leaseRec("l7", { issuedAt: T0 })));
        assert.deepEqual(ids(await s.listLeases({ limit: 2 })), ["l7", "l6"]);
      }));

      test("revokeLeases by id, agent, secret and all touches only unexpired leases not yet revoked (used up or not)", withStore(async (s) => {
        const now = T0 + 1000;
        await tx(s, async (t) => {
          await t.insertLease(leaseRec("a-live"));
          await t.insertLease(leaseRec("a-live2", { name: "slack" }));
          await t.insertLease(leaseRec("a-expired", { expiresAt: now }));
          await t.insertLease(leaseRec("a-revoked", { revokedAt: T0, revokeReason: "earlier" }));
          await t.insertLease(leaseRec("a-usedup", { maxUses: 2, uses: 2 }));
          await t.insertLease(leaseRec("b-live", { agent: "agent-b" }));
          await t.insertLease(leaseRec("c-live", { agent: "agent-c", name: "slack" }));
          await t.insertLease(leaseRec("d-live", { agent: "agent-d" }));
        });
        assert.equal(await tx(s, (t) => t.revokeLeases({ id: "a-expired" }, now, "r0")), 0);
        assert.equal(await tx(s, (t) => t.revokeLeases({ id: "a-revoked" }, now, "r0")), 0);
        assert.equal(await tx(s, (t) => t.revokeLeases({ id: "nope" }, now, "r0")), 0);
        assert.equal(await tx(s, (t) => t.revokeLeases({ id: "d-live" }, now, "r1")), 1);
        assert.equal(await tx(s, (t) => t.revokeLeases({ id: "d-live" }, now, "r1")), 0);
        // a-live, a-live2 and the used-up a-usedup
        assert.equal(await tx(s, (t) => t.revokeLeases({ agent: "agent-a" }, now, "r2")), 3);
        assert.equal(await tx(s, (t) => t.revokeLeases({ secret: { scope: "global", name: "slack" } }, now, "r3")), 1);
        assert.equal(await tx(s, (t) => t.revokeLeases({ all: true }, now, "killswitch")), 1);
        assert.equal(await tx(s, (t) => t.revokeLeases({ all: true }, now, "killswitch")), 0);
        const state = async (id: string) => {
          const l = (await s.getLease(id))!;
          return [l.revokedAt, l.revokeReason];
        };
        assert.deepEqual(await state("d-live"), [now, "r1"]);
        assert.deepEqual(await state("a-live"), [now, "r2"]);
        assert.deepEqual(await state("a-live2"), [now, "r2"]);
        assert.deepEqual(await state("a-usedup"), [now, "r2"]);
        assert.deepEqual(await state("c-live"), [now, "r3"]);
        assert.deepEqual(await state("b-live"), [now, "killswitch"]);
        assert.deepEqual(await state("a-expired"), [null, null]);
        assert.deepEqual(await state("a-revoked"), [T0, "earlier"]);
        for (const a of ["agent-a", "agent-b", "agent-c", "agent-d"]) assert.equal(await s.countLiveLeases(a, now), 0);
        assert.deepEqual(await s.listLeases({ liveAt: now }), []);
      }));

      test("revoking a used-up unexpired lease (by id, and by the killswitch) marks it revoked; a used-up expired one is left as it is", withStore(async (s) => {
        const now = T0 + 1000;
        await tx(s, async (t) => {
          await t.insertLease(leaseRec("spent-1", { maxUses: 1, uses: 1 }));
          await t.insertLease(leaseRec("spent-2", { agent: "agent-b", maxUses: 2, uses: 2 }));
          await t.insertLease(leaseRec("spent-old", { agent: "agent-c", maxUses: 1, uses: 1, expiresAt: now }));
        });
        const state = async (id: string) => {
          const l = (await s.getLease(id))!;
          return [leaseState(l, now), l.revokedAt, l.revokeReason];
        };
        assert.deepEqual(await state("spent-1"), ["exhausted", null, null]);
        assert.equal(await tx(s, (t) => t.revokeLeases({ id: "spent-1" }, now, "incident")), 1);
        assert.deepEqual(await state("spent-1"), ["revoked", now, "incident"]);
        assert.equal(await tx(s, (t) => t.revokeLeases({ all: true }, now, "killswitch")), 1);
        assert.deepEqual(await state("spent-2"), ["revoked", now, "killswitch"]);
        assert.deepEqual(await state("spent-old"), ["expired", null, null]);
        // Still not live, and still unusable.
        assert.deepEqual((await s.listLeases({ liveAt: now - 1 })).map((l) => l.id), []);
        assert.equal(await tx(s, (t) => t.useLease("spent-2", now - 1)), null);
      }));

      test("deleteExpiredLeases deletes up to limit leases that expired before the cut-off", withStore(async (s) => {
        await tx(s, async (t) => {
          for (let i = 0; i < 7; i++) await t.insertLease(leaseRec(`old${i}`, { expiresAt: T0 + i }));
          await t.insertLease(leaseRec("edge", { expiresAt: T0 + 100 }));
          await t.insertLease(leaseRec("fresh", { expiresAt: T0 + 1000 }));
        });
        assert.equal(await tx(s, (t) => t.deleteExpiredLeases(T0 + 100, 3)), 3);
        assert.equal((await s.listLeases({})).length, 6);
        assert.equal(await tx(s, (t) => t.deleteExpiredLeases(T0 + 100, 10)), 4);
        assert.equal(await tx(s, (t) => t.deleteExpiredLeases(T0 + 100, 10)), 0);
        assert.deepEqual((await s.listLeases({})).map((l) => l.id).sort(), ["edge", "fresh"]);
        assert.equal(await s.getLease("old0"), null);
        assert.equal(await s.countLiveLeases("agent-a", T0), 2);
      }));
    });

    describe("audit", () => {
      test("insertAudit appends in seq order and refuses gaps and repeats; auditHead reads the last row", withStore(async (s) => {
        assert.equal(await s.auditHead(), null);
        await rejectsVault(tx(s, (t) => t.insertAudit(auditRec(2))));
        await rejectsVault(tx(s, (t) => t.insertAudit(auditRec(0))));
        await tx(s, async (t) => {
          await t.insertAudit(auditRec(1));
          await t.insertAudit(auditRec(2));
        });
        await rejectsVault(tx(s, (t) => t.insertAudit(auditRec(2, { id: "other" }))));
        await rejectsVault(tx(s, (t) => t.insertAudit(auditRec(4))));
        await tx(s, (t) => t.insertAudit(auditRec(3)));
        const head = (await s.auditHead())!;
        assert.equal(head.seq, 3);
        assert.deepEqual(plainBytes(head.hash), plainBytes(Buffer.alloc(32, 3)));
        const rows = await s.queryAudit({});
        assert.deepEqual(rows.map((r) => r.seq), [1, 2, 3]);
        const r2 = rows[1]!;
        assert.ok(Buffer.isBuffer(r2.prevHash) && Buffer.isBuffer(r2.hash));
        const want = auditRec(2);
        assert.deepEqual({ ...r2, prevHash: plainBytes(r2.prevHash), hash: plainBytes(r2.hash) }, {
          ...want,
          prevHash: plainBytes(want.prevHash),
          hash: plainBytes(want.hash),
        });
      }));

      test("each row keeps its key id (null for a format-1 row), and auditHead reads it", withStore(async (s) => {
        await tx(s, async (t) => {
          await t.insertAudit(auditRec(1, { keyId: null }));
          await t.insertAudit(auditRec(2, { keyId: "0123456789abcdef" }));
        });
        assert.deepEqual((await s.queryAudit({})).map((r) => r.keyId), [null, "0123456789abcdef"]);
        assert.equal((await s.auditHead())!.keyId, "0123456789abcdef");
        await tx(s, (t) => t.insertAudit(auditRec(3, { keyId: null })));
        const head = await tx(s, (t) => t.auditHead());
        assert.deepEqual({ seq: head!.seq, keyId: head!.keyId }, { seq: 3, keyId: null }, "inside a tx too");
      }));

      test("the tx sees its own audit head", withStore(async (s) => {
        await tx(s, async (t) => {
          for (let i = 1; i <= 5; i++) {
            const head = await t.auditHead();
            await t.insertAudit(auditRec((head?.seq ?? 0) + 1));
          }
        });
        assert.equal((await s.auditHead())!.seq, 5);
      }));

      test("queryAudit filters (AND), orders and limits", withStore(async (s) => {
        const types = ["lease_granted", "secret_accessed", "access_denied"];
        await tx(s, async (t) => {
          for (let i = 1; i <= 150; i++)
            await t.insertAudit(
              auditRec(i, {
                agent: i % 2 === 0 ? "agent-a" : i % 3 === 0 ? null : "agent-b",
                secret: i % 5 === 0 ? "global/slack" : "global/github",
                type: types[i % 3]!,
                leaseId: i % 10 === 0 ? `lease-${i % 20}` : null,
                actorId: i % 7 === 0 ? "uid:0" : "uid:1000",
                detail: i === 1 ? '{"n":1}' : null,
              }),
            );
        });
        const seqs = (rs: AuditRecord[]) => rs.map((r) => r.seq);
        const all = Array.from({ length: 150 }, (_, i) => i + 1);
        const expect = (pred: (i: number) => boolean) => all.filter(pred);
        assert.deepEqual(seqs(await s.queryAudit({})), all.slice(0, 100), "default limit 100, ascending");
        assert.deepEqual(seqs(await s.queryAudit({ order: "desc", limit: 3 })), [150, 149, 148]);
        assert.deepEqual(seqs(await s.queryAudit({ limit: 1000 })), all);
        assert.deepEqual(seqs(await s.queryAudit({ limit: 1000, agent: "agent-a" })), expect((i) => i % 2 === 0));
        assert.deepEqual(seqs(await s.queryAudit({ limit: 1000, secret: "global/slack" })), expect((i) => i % 5 === 0));
        assert.deepEqual(
          seqs(await s.queryAudit({ limit: 1000, types: ["access_denied", "lease_granted"] })),
          expect((i) => i % 3 !== 1),
        );
        assert.deepEqual(seqs(await s.queryAudit({ limit: 1000, leaseId: "lease-10" })), expect((i) => i % 20 === 10));
        assert.deepEqual(seqs(await s.queryAudit({ limit: 1000, actorId: "uid:0" })), expect((i) => i % 7 === 0));
        assert.deepEqual(
          seqs(await s.queryAudit({ since: T0 + 10_000, until: T0 + 20_000 })),
          expect((i) => i >= 10 && i < 20),
          "since inclusive, until exclusive",
        );
        assert.deepEqual(seqs(await s.queryAudit({ afterSeq: 145 })), [146, 147, 148, 149, 150]);
        assert.deepEqual(seqs(await s.queryAudit({ afterSeq: 145, order: "desc", limit: 2 })), [150, 149]);
        assert.deepEqual(
          seqs(await s.queryAudit({ agent: "agent-a", secret: "global/slack", types: ["secret_accessed"], order: "desc" })),
          expect((i) => i % 2 === 0 && i % 5 === 0 && i % 3 === 1).reverse(),
        );
        assert.deepEqual(seqs(await s.queryAudit({ agent: "agent-a", actorId: "uid:0", since: T0 + 50_000, limit: 2 })), [56, 70]);
        assert.deepEqual(await s.queryAudit({ agent: "nobody" }), []);
        assert.equal((await s.queryAudit({ limit: 1 }))[0]!.detail, '{"n":1}');
      }));

      test("queryAudit by agent or secret also finds the summaries of counted refusals that list it, exactly", withStore(async (s) => {
        const summary = (d: Record<string, unknown>): string => JSON.stringify({ count: 5, since: T0, reasons: "access_denied:5", ...d });
        await tx(s, async (t) => {
          for (let i = 1; i <= 40; i++) {
            const over: Partial<AuditRecord> =
              i === 7 ? { type: "access_denied", outcome: "denied", agent: null, secret: null, detail: summary({ secrets: "global/a,global/prod-db,global/z", agents: "claude,decoy" }) }
              : i === 9 ? { type: "proxy_request", outcome: "denied", agent: "claude", secret: null, detail: summary({ secrets: "global/prod-db-2,global/prod" }) }
              // Candidates the substring finds but the list does not name exactly: more than a page of them.
              : i >= 10 && i <= 30 ? { type: "access_denied", outcome: "denied", agent: null, secret: null, detail: summary({ secrets: "global/prod-db-old", agents: "claude-2" }) }
              // Not a summary (no count first), and a type that is never summarised.
              : i === 31 ? { type: "access_denied", agent: null, secret: null, detail: '{"secrets":"global/prod-db"}' }
              : i === 32 ? { type: "secret_accessed", agent: null, secret: null, detail: summary({ secrets: "global/prod-db" }) }
              : i === 33 ? { type: "access_denied", agent: null, secret: null, detail: "not json {\"count\":" }
              : i === 35 ? { agent: "claude", secret: "global/prod-db" }
              : {};
            await t.insertAudit(auditRec(i, over));
          }
        });
        const seqs = (rs: AuditRecord[]) => rs.map((r) => r.seq);
        assert.deepEqual(seqs(await s.queryAudit({ secret: "global/prod-db" })), [7, 35]);
        assert.deepEqual(seqs(await s.queryAudit({ secret: "global/prod-db", order: "desc" })), [35, 7]);
        assert.deepEqual(seqs(await s.queryAudit({ secret: "global/prod-db", limit: 1 })), [7]);
        assert.deepEqual(seqs(await s.queryAudit({ secret: "global/prod-db", limit: 1, order: "desc" })), [35]);
        assert.deepEqual(seqs(await s.queryAudit({ secret: "global/prod-db", afterSeq: 7 })), [35]);
        // Pages of candidates that do not name it exactly are read past, both ways.
        assert.deepEqual(seqs(await s.queryAudit({ secret: "global/prod-db", afterSeq: 7, limit: 2 })), [35]);
        assert.deepEqual(seqs(await s.queryAudit({ secret: "global/prod-db", order: "desc", limit: 2 })), [35, 7]);
        assert.deepEqual(seqs(await s.queryAudit({ secret: "global/prod-db", until: T0 + 35_000, order: "desc", limit: 1 })), [7]);
        assert.deepEqual(seqs(await s.queryAudit({ secret: "global/prod" })), [9]);
        assert.deepEqual(seqs(await s.queryAudit({ secret: "global/prod-d" })), []);
        assert.deepEqual(seqs(await s.queryAudit({ agent: "claude" })), [7, 9, 35]);
        assert.deepEqual(seqs(await s.queryAudit({ agent: "claude", secret: "global/prod-db" })), [7, 35]);
        assert.deepEqual(seqs(await s.queryAudit({ agent: "claude", secret: "global/prod-db", types: ["access_denied"] })), [7]);
        assert.deepEqual(seqs(await s.queryAudit({ agent: "claude", types: ["secret_accessed"] })), [35]);
        assert.deepEqual(seqs(await s.queryAudit({ agent: "decoy", secret: "global/prod-db-2" })), []);
        assert.deepEqual(seqs(await s.queryAudit({ agent: "claude", leaseId: "x" })), [], "a summary names no lease");
        assert.equal((await s.queryAudit({ agent: "claude-2", limit: 1000 })).length, 21);
      }));

      test("queryAudit caps the limit at 10,000", withStore(async (s) => {
        await tx(s, async (t) => {
          for (let i = 1; i <= 10_005; i++) await t.insertAudit(auditRec(i));
        });
        assert.equal((await s.queryAudit({ limit: 50_000 })).length, 10_000);
        const tail = await s.queryAudit({ limit: 50_000, afterSeq: 10 });
        assert.equal(tail.length, 9_995);
        assert.equal(tail.at(-1)!.seq, 10_005);
        assert.equal((await s.queryAudit({ limit: 50_000, order: "desc" }))[0]!.seq, 10_005);
      }));

      test("checkpoint: null at first, then upserted as one row", withStore(async (s) => {
        assert.equal(await s.getCheckpoint(), null);
        await tx(s, (t) => t.putCheckpoint({ seq: 1, hash: Buffer.alloc(32, 1), keyId: "k1", mac: Buffer.alloc(32, 0xaa) }));
        await tx(s, (t) => t.putCheckpoint({ seq: 7, hash: Buffer.alloc(32, 7), keyId: "k2", mac: Buffer.alloc(32, 0xbb) }));
        const cp = (await s.getCheckpoint())!;
        assert.equal(cp.seq, 7);
        assert.equal(cp.keyId, "k2");
        assert.ok(Buffer.isBuffer(cp.hash) && Buffer.isBuffer(cp.mac));
        assert.deepEqual(plainBytes(cp.hash), plainBytes(Buffer.alloc(32, 7)));
        assert.deepEqual(plainBytes(cp.mac), plainBytes(Buffer.alloc(32, 0xbb)));
      }));
    });

    describe("meta", () => {
      test("getMeta / setMeta store strings by key", withStore(async (s) => {
        assert.equal(await s.getMeta("vault_id"), null);
        await tx(s, async (t) => {
          await t.setMeta("vault_id", "v-1");
          await t.setMeta("empty", "");
        });
        await tx(s, (t) => t.setMeta("vault_id", "v-2"));
        assert.equal(await s.getMeta("vault_id"), "v-2");
        assert.equal(await s.getMeta("empty"), "");
      }));
    });

    describe("transactions", () => {
      test("beforeCommit runs once per registered function, after the function, and its writes commit with it", withStore(async (s) => {
        const runs: string[] = [];
        const finish = async (t: StoreTx): Promise<void> => {
          runs.push(`finish saw ${await t.getMeta("m")}`);
          await t.setMeta("finished", String(runs.length));
        };
        const v = await tx(s, async (t) => {
          t.beforeCommit(finish);
          t.beforeCommit(finish); // the same function again adds no second run
          await t.setMeta("m", "written after registering");
          runs.push("fn done");
          return 7;
        });
        assert.equal(v, 7);
        assert.deepEqual(runs, ["fn done", "finish saw written after registering"]);
        assert.equal(await s.getMeta("finished"), "2");
      }));

      test("beforeCommit functions run in registration order; one registered again moves after those registered since", withStore(async (s) => {
        const order: string[] = [];
        const last = async (): Promise<void> => void order.push("last");
        // Concurrent calls (a store may commit them together): each registers its own function, then the shared one.
        await Promise.all(
          ["a", "b", "c"].map((name) =>
            tx(s, async (t) => {
              t.beforeCommit(last);
              t.beforeCommit(async () => void order.push(name));
              t.beforeCommit(last);
            }),
          ),
        );
        // Each call's own function ran in call order; the shared one ran once per commit, after the
        // own functions of every call in that commit (never right after "a" with "b" still to come
        // in the same commit: that is what "moved to its last registration" means).
        assert.deepEqual(order.filter((x) => x !== "last"), ["a", "b", "c"]);
        assert.equal(order[order.length - 1], "last");
        assert.ok(order.indexOf("last") > order.indexOf("a"));
        assert.ok(order.filter((x) => x === "last").length <= 3);
      }));

      test("a throwing beforeCommit function that one call registered fails that call, not its concurrent siblings", withStore(async (s) => {
        const out = await Promise.allSettled([
          tx(s, (t) => t.setMeta("sib1", "1")),
          tx(s, async (t) => {
            await t.setMeta("owner", "1");
            t.beforeCommit(async () => {
              throw new Error("its audit write failed");
            });
          }),
          tx(s, (t) => t.setMeta("sib2", "1")),
        ]);
        assert.deepEqual(out.map((r) => r.status), ["fulfilled", "rejected", "fulfilled"]);
        assert.equal(await s.getMeta("owner"), null);
        assert.equal(await s.getMeta("sib1"), "1");
        assert.equal(await s.getMeta("sib2"), "1");
      }));

      test("a throwing beforeCommit function undoes the whole transaction; a throwing transaction drops what it registered", withStore(async (s) => {
        await tx(s, (t) => t.setMeta("m", "before"));
        await assert.rejects(
          tx(s, async (t) => {
            await t.setMeta("m", "after");
            t.beforeCommit(async (ft) => {
              await ft.setMeta("f", "1");
              throw new Error("finisher failed");
            });
          }),
          /finisher failed/,
        );
        assert.equal(await s.getMeta("m"), "before");
        assert.equal(await s.getMeta("f"), null);
        let ran = false;
        await assert.rejects(
          tx(s, async (t) => {
            t.beforeCommit(async () => void (ran = true));
            throw new Error("no");
          }),
          /no/,
        );
        assert.equal(ran, false, "a function that threw has nothing run for it");
        await assert.rejects(
          tx(s, async (t) => t.beforeCommit(async (ft) => ft.beforeCommit(async () => {}))),
          (e) => isVaultError(e, "internal"),
        );
      }));

      test("returns the function's value and sees its own writes", withStore(async (s) => {
        const v = await tx(s, async (t) => {
          await t.putSecret(secretRec("global", "github"));
          await t.insertLease(leaseRec("l1"));
          await t.setMeta("m", "1");
          return [await t.getSecret(G), await t.getLease("l1"), await t.countLiveLeases("agent-a", T0), await t.getMeta("m")];
        });
        assert.equal((v[0] as SecretRecord).name, "github");
        assert.equal((v[1] as LeaseRecord).id, "l1");
        assert.equal(v[2], 1);
        assert.equal(v[3], "1");
      }));

      test("a throwing function's writes are all undone and its error comes back unchanged", withStore(async (s) => {
        await tx(s, async (t) => {
          await t.putSecret(secretRec("global", "github", { description: "before" }));
          await t.insertVersion(versionRec("global", "github", 1));
          await t.insertVersion(versionRec("global", "github", 2));
          await t.putSecret(secretRec("global", "doomed"));
          await t.insertVersion(versionRec("global", "doomed", 1));
          await t.insertLease(leaseRec("keep", { maxUses: 5 }));
          await t.insertLease(leaseRec("old", { expiresAt: T0 - 1 }));
          await t.insertAudit(auditRec(1));
          await t.putCheckpoint({ seq: 1, hash: Buffer.alloc(32, 1), keyId: "k1", mac: Buffer.alloc(32, 1) });
          await t.setMeta("m", "before");
        });
        const snapshot = async () =>
          JSON.stringify([
            await s.listSecrets({}),
            await s.listVersions(G),
            await s.listVersions({ scope: "global", name: "doomed" }),
            await s.listLeases({}),
            await s.queryAudit({}),
            await s.auditHead(),
            await s.getCheckpoint(),
            await s.getMeta("m"),
            await s.getMeta("new"),
            await s.keyIdsInUse(),
          ]);
        const before = await snapshot();
        const boom = new Error("boom");
        await assert.rejects(
          tx(s, async (t) => {
            await t.putSecret(secretRec("global", "github", { description: "after" }));
            await t.putSecret(secretRec("global", "fresh"));
            await t.insertVersion(versionRec("global", "fresh", 1, { keyId: "k-new" }));
            await t.insertVersion(versionRec("global", "github", 3));
            await t.deleteVersionsBelow(G, 2);
            await t.rewrapVersion(G, 2, "k1", "k2", Buffer.from([1]));
            assert.equal(await t.deleteSecret({ scope: "global", name: "doomed" }), true);
            await t.insertLease(leaseRec("new"));
            assert.ok(await t.useLease("keep", T0));
            await t.renewLease("keep", T0 + 99_999, 3);
            assert.equal(await t.revokeLeases({ all: true }, T0, "x"), 2);
            assert.equal(await t.deleteExpiredLeases(T0, 10), 1);
            await t.insertAudit(auditRec(2));
            await t.putCheckpoint({ seq: 2, hash: Buffer.alloc(32, 2), keyId: "k2", mac: Buffer.alloc(32, 2) });
            await t.setMeta("m", "after");
            await t.setMeta("new", "x");
            throw boom;
          }),
          (e) => e === boom,
        );
        assert.equal(await snapshot(), before);
        // and the store still works normally afterwards
        await tx(s, (t) => t.insertAudit(auditRec(2)));
        assert.equal((await s.auditHead())!.seq, 2);
        assert.equal(await s.countLiveLeases("agent-a", T0), 1);
      }));

      test("a failed transaction does not undo a concurrent sibling's writes", withStore(async (s) => {
        const results = await Promise.allSettled([
          tx(s, async (t) => {
            await t.putSecret(secretRec("global", "a"));
            await t.insertAudit(auditRec(1));
          }),
          tx(s, async (t) => {
            await t.putSecret(secretRec("global", "b"));
            await t.insertLease(leaseRec("lb"));
            throw new Error("b fails");
          }),
          tx(s, async (t) => {
            await t.putSecret(secretRec("global", "c"));
            await t.insertAudit(auditRec(2));
          }),
        ]);
        assert.deepEqual(results.map((r) => r.status), ["fulfilled", "rejected", "fulfilled"]);
        assert.deepEqual((await s.listSecrets({})).map((r) => r.name), ["a", "c"]);
        assert.equal(await s.getLease("lb"), null);
        assert.equal((await s.auditHead())!.seq, 2);
      }));

      test("reads on the store do not see a running transaction's writes", withStore(async (s) => {
        await tx(s, (t) => t.insertLease(leaseRec("l0")));
        const seen = await tx(s, async (t) => {
          await t.putSecret(secretRec("global", "github"));
          await t.insertVersion(versionRec("global", "github", 1));
          await t.insertLease(leaseRec("l1"));
          await t.revokeLeases({ id: "l0" }, T0, "x");
          await t.insertAudit(auditRec(1));
          await t.putCheckpoint({ seq: 1, hash: Buffer.alloc(32), keyId: "k", mac: Buffer.alloc(32) });
          await t.setMeta("m", "v");
          return {
            secret: await s.getSecret(G),
            secrets: (await s.listSecrets({})).length,
            version: await s.getVersion(G, 1),
            keys: await s.keyIdsInUse(),
            lease: await s.getLease("l1"),
            l0: (await s.getLease("l0"))!.revokedAt,
            live: await s.countLiveLeases("agent-a", T0),
            leases: (await s.listLeases({ liveAt: T0 })).length,
            audit: (await s.queryAudit({})).length,
            head: await s.auditHead(),
            cp: await s.getCheckpoint(),
            meta: await s.getMeta("m"),
          };
        });
        assert.deepEqual(seen, {
          secret: null,
          secrets: 0,
          version: null,
          keys: [],
          lease: null,
          l0: null,
          live: 1,
          leases: 1,
          audit: 0,
          head: null,
          cp: null,
          meta: null,
        });
        // after the commit they are visible
        assert.ok(await s.getSecret(G));
        assert.ok(await s.getLease("l1"));
        assert.equal((await s.getLease("l0"))!.revokedAt, T0);
        assert.equal((await s.auditHead())!.seq, 1);
        assert.equal(await s.getMeta("m"), "v");
      }));

      test("a tx cannot be used after its function settled", withStore(async (s) => {
        let leaked: StoreTx | undefined;
        await tx(s, async (t) => {
          leaked = t;
        });
        await rejectsVault(leaked!.setMeta("m", "x"));
        await rejectsVault(leaked!.getMeta("m"));
        let leaked2: StoreTx | undefined;
        await assert.rejects(
          tx(s, async (t) => {
            leaked2 = t;
            throw new Error("x");
          }),
        );
        await rejectsVault(leaked2!.insertLease(leaseRec("l1")));
        assert.equal(await s.getMeta("m"), null);
        assert.equal(await s.getLease("l1"), null);
      }));

      test("tokens: insert, get by id, list oldest first, revoke once, set a MAC, rollback undoes", withStore(async (s) => {
        const tok = (id: string, over: Partial<TokenRecord> = {}): TokenRecord => ({
          id,
          name: `n-${id}`,
          role: "agent",
          agent: "claude",
          actFor: null,
          createdAt: T0,
          expiresAt: null,
          revokedAt: null,
          createdBy: "test",
          hash: Buffer.alloc(32, 7),
          mac: Buffer.alloc(32, 9),
          ...over,
        });
        await tx(s, async (t) => {
          await t.insertToken(tok("bbbb", { createdAt: T0 + 1, mac: null }));
          await t.insertToken(tok("aaaa", { role: "orchestrator", agent: null, actFor: ["x-*"], expiresAt: T0 + 99 }));
        });
        const got = await s.getToken("aaaa");
        assert.deepEqual(
          { ...got!, hash: plainBytes(got!.hash), mac: plainBytes(got!.mac!) },
          { ...tok("aaaa", { role: "orchestrator", agent: null, actFor: ["x-*"], expiresAt: T0 + 99 }), hash: plainBytes(Buffer.alloc(32, 7)), mac: plainBytes(Buffer.alloc(32, 9)) },
        );
        assert.ok(Buffer.isBuffer(got!.hash) && Buffer.isBuffer(got!.mac));
        assert.equal((await s.getToken("bbbb"))!.mac, null, "a row without a MAC reads as null");
        assert.equal(await tx(s, (t) => t.setTokenMac("bbbb", Buffer.alloc(32, 3))), true);
        assert.equal(await tx(s, (t) => t.setTokenMac("nope", Buffer.alloc(32, 3))), false);
        assert.deepEqual(plainBytes((await s.getToken("bbbb"))!.mac!), plainBytes(Buffer.alloc(32, 3)));
        got!.actFor!.push("mutated");
        assert.deepEqual((await s.getToken("aaaa"))!.actFor, ["x-*"]);
        assert.equal(await s.getToken("nope"), null);
        assert.deepEqual((await s.listTokens()).map((t) => t.id), ["aaaa", "bbbb"]);
        await rejectsVault(tx(s, (t) => t.insertToken(tok("aaaa"))));
        assert.equal(await tx(s, (t) => t.revokeToken("bbbb", T0 + 5)), true);
        assert.equal(await tx(s, (t) => t.revokeToken("bbbb", T0 + 6)), false);
        assert.equal(await tx(s, (t) => t.revokeToken("nope", T0 + 6)), false);
        assert.equal((await s.getToken("bbbb"))!.revokedAt, T0 + 5);
        await assert.rejects(
          tx(s, async (t) => {
            await t.insertToken(tok("cccc"));
            await t.revokeToken("aaaa", T0 + 7);
            await t.setTokenMac("aaaa", Buffer.alloc(32, 4));
            throw new Error("roll back");
          }),
        );
        assert.equal(await s.getToken("cccc"), null);
        assert.equal((await s.getToken("aaaa"))!.revokedAt, null);
        assert.deepEqual(plainBytes((await s.getToken("aaaa"))!.mac!), plainBytes(Buffer.alloc(32, 9)));
      }));

      test("tokens: a filter selects the live ones (neither revoked nor expired) and a name prefix", withStore(async (s) => {
        const tok = (id: string, name: string, over: Partial<TokenRecord> = {}): TokenRecord => ({
          id, name, role: "agent", agent: "claude", actFor: null, createdAt: T0, expiresAt: null, revokedAt: null, createdBy: "test", hash: Buffer.alloc(32, 7), mac: null, ...over,
        });
        await tx(s, async (t) => {
          await t.insertToken(tok("t1", "session:1.2.3"));
          await t.insertToken(tok("t2", "session:9", { createdAt: T0 + 1, expiresAt: T0 + 10 }));
          await t.insertToken(tok("t3", "session:8", { createdAt: T0 + 2, revokedAt: T0 + 3 }));
          await t.insertToken(tok("t4", "ci-session:x", { createdAt: T0 + 3 }));
          await t.insertToken(tok("t5", "sess%on:_", { createdAt: T0 + 4 }));
        });
        const ids = async (f: Parameters<typeof s.listTokens>[0]) => (await s.listTokens(f)).map((t) => t.id);
        assert.deepEqual(await ids({}), ["t1", "t2", "t3", "t4", "t5"]);
        assert.deepEqual(await ids({ namePrefix: "session:" }), ["t1", "t2", "t3"], "a prefix, not a pattern: % and _ match only themselves");
        assert.deepEqual(await ids({ liveAt: T0 + 5 }), ["t1", "t2", "t4", "t5"]);
        assert.deepEqual(await ids({ liveAt: T0 + 10 }), ["t1", "t4", "t5"], "expired at its expiry");
        assert.deepEqual(await ids({ liveAt: T0 + 5, namePrefix: "session:" }), ["t1", "t2"]);
        assert.deepEqual(await ids({ namePrefix: "sess%" }), ["t5"]);
      }));

      test("many concurrent transactions all commit, in a serial order", withStore(async (s) => {
        // Each reads the head and appends the next seq: only a serialisable store gets 1..100.
        await Promise.all(
          Array.from({ length: 100 }, (_, i) =>
            tx(s, async (t) => {
              const head = await t.auditHead();
              await t.insertAudit(auditRec((head?.seq ?? 0) + 1, { id: `c-${i}` }));
            }),
          ),
        );
        const rows = await s.queryAudit({ limit: 1000 });
        assert.equal(rows.length, 100);
        assert.deepEqual(new Set(rows.map((r) => r.id)).size, 100);
      }));
    });
  });
}
