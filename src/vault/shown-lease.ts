/**
 * A lease as its caller is shown it. An agent learns nothing of who took a lease for it: the
 * orchestrator token's name and id, or the owner's uid, is not the agent's to know, as an approval's
 * `decidedBy` and `describe`'s `heartbeat.lastBy` are kept from it (src/vault/approval-calls.ts).
 */
import type { Identity, LeaseRecord } from "../base/types.js";
import { OTHER_REQUESTER } from "./approval-calls.js";

/** `lease` as `who` sees it: for an agent, another identity's id as `issuedBy` becomes {@link OTHER_REQUESTER}. */
export function shownLease(who: Identity, lease: LeaseRecord): LeaseRecord {
  if (who.role !== "agent" || lease.issuedBy === who.id) return lease;
  return { ...lease, issuedBy: OTHER_REQUESTER };
}
