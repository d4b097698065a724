/** A lease's state at a time: one rule for the core's checks and for every display of a lease. */
import type { LeaseRecord } from "./types.js";

/** Where a lease stands. */
export type LeaseState = "live" | "expired" | "revoked" | "exhausted";

/** The state of `lease` at `now`: revoked, else expired, else used up, else live. */
export function leaseState(lease: LeaseRecord, now: number = Date.now()): LeaseState {
  if (lease.revokedAt !== null) return "revoked";
  if (lease.expiresAt <= now) return "expired";
  if (lease.maxUses !== null && lease.uses >= lease.maxUses) return "exhausted";
  return "live";
}

/**
 * True when a revocation (by id, agent, secret, or the killswitch) marks `lease` at `now`: it is not
 * revoked already and not expired. A used-up lease is revoked too: the requests that took its uses
 * may still stream (a WebSocket riding on its handshake's use), and a revocation must end them, so
 * it has to be told apart from a lease that merely ran out of uses.
 */
export function isRevocable(lease: LeaseRecord, now: number): boolean {
  return lease.revokedAt === null && lease.expiresAt > now;
}
