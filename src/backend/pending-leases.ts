/**
 * Leases a process took and must give back when it ends (`lessor run`, `lessor inject`, `lessor proxy`,
 * each `lessor mcp` session): their ids until each is revoked. Revoking is best effort and may be
 * repeated — on a new connection when the first one was lost (src/cli/run/connection.ts) — so every
 * lease that could not be revoked stays here until one attempt succeeds.
 */
import { VaultError } from "../base/errors.js";
import type { BackendApi } from "./backend.js";

/** Codes that mean a lease has already ended: as good as revoked. */
const ENDED: ReadonlySet<string> = new Set(["lease_revoked", "lease_expired", "lease_not_found"]);

/** The ids of leases taken and not revoked yet. */
export class PendingLeases {
  readonly #ids = new Set<string>();

  constructor(ids: Iterable<string> = []) {
    for (const id of ids) this.#ids.add(id);
  }

  /** Remembers a lease just taken. */
  add(id: string): void {
    this.#ids.add(id);
  }

  /** The ids of the leases not revoked yet (those {@link PendingLeases.revokeAll} could not revoke). */
  get unrevoked(): string[] {
    return [...this.#ids];
  }

  /**
   * Revokes every pending lease through `api` with `reason` (best effort: one failure does not stop the
   * others). A lease that has already ended counts as revoked; any other failure leaves it pending, so
   * a second call retries it.
   */
  async revokeAll(reason: string, api: BackendApi): Promise<{ revoked: number; failed: number }> {
    let revoked = 0;
    // All at once: pipelined on one connection, and committed together by the store's group commit.
    await Promise.all(
      [...this.#ids].map(async (id) => {
        try {
          await api.revokeLease(id, reason);
        } catch (e) {
          if (!(e instanceof VaultError && ENDED.has(e.code))) return;
        }
        this.#ids.delete(id);
        revoked++;
      }),
    );
    return { revoked, failed: this.#ids.size };
  }
}
