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
