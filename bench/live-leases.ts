/** Fills a store with live leases of 1,000 background agents, for the lease-table scaling figures. */
import type { Store } from "../src/vault/ports.js";
import { uuidv7 } from "../src/base/ids.js";
import type { LeaseRecord } from "../src/base/types.js";

/** Inserts `count` leases live for an hour, 5,000 per transaction. */
export async function addLiveLeases(store: Store, count: number, now = Date.now()): Promise<void> {
  for (let done = 0; done < count; ) {
    const batch = Math.min(5000, count - done);
    await store.transaction(async (tx) => {
      for (let i = 0; i < batch; i++) {
        const lease: LeaseRecord = {
          id: uuidv7(now),
          agent: `bg-${(done + i) % 1000}`,
          scope: "global",
          name: "token",
          domains: ["api.example.com"],
          anyDomain: false,
          methods: null,
          paths: null,
          rule: "bg",
          issuedAt: now,
          expiresAt: now + 3600_000,
          maxExpiresAt: now + 3600_000,
          uses: 0,
          maxUses: null,
          renewals: 0,
          maxRenewals: null,
          renewable: true,
          revokedAt: null,
          revokeReason: null,
          issuedBy: "bench",
          bound: false,
          proxyOnly: false,
        };
        await tx.insertLease(lease);
      }
    });
    done += batch;
  }
}
