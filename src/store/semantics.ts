/**
 * Rules every store applies the same way: when a lease is live, audit query limits, the errors both
 * stores raise. Kept here so the memory and SQLite stores cannot drift apart.
 */
import { VaultError } from "../base/errors.js";
import { leaseState } from "../base/lease-state.js";
import type { LeaseRecord } from "../base/types.js";
import type { StoreTx } from "../vault/ports.js";

/** Default and maximum number of audit rows one query returns. */
export const AUDIT_DEFAULT_LIMIT = 100;
export const AUDIT_MAX_LIMIT = 10_000;

/**
 * A lease is live at `t` when it is not revoked, not expired (`expiresAt > t`) and has uses left:
 * the core's own rule (src/base/lease-state.ts), which the SQL of the SQLite store spells out too.
 */
export function isLeaseLive(l: LeaseRecord, t: number): boolean {
  return leaseState(l, t) === "live";
}

/** The effective row limit for an audit query: default 100, at most 10,000. */
export function auditLimit(limit: number | undefined): number {
  if (limit === undefined || Number.isNaN(limit)) return AUDIT_DEFAULT_LIMIT;
  return Math.min(Math.max(0, Math.floor(limit)), AUDIT_MAX_LIMIT);
}

/** The error for an audit row whose seq does not follow the trail's head. */
export function auditGap(seq: number, head: number): VaultError {
  return new VaultError(
    "audit_failed",
    `audit row ${seq} does not follow the trail's last row ${head}; the audit chain must have no gaps`,
  );
}

/** The error for a tx used after its transaction function settled. */
export function txFinished(): VaultError {
  return new VaultError("internal", "this transaction has already finished; use a tx only inside its own transaction function");
}

/** The error for a beforeCommit function that registers another. */
export function nestedBeforeCommit(): VaultError {
  return new VaultError("internal", "a beforeCommit function cannot register another");
}

/** A beforeCommit function (StoreTx.beforeCommit). */
export type Finisher = (tx: StoreTx) => Promise<void>;

/**
 * The beforeCommit functions of a batch's successful calls, each once, in the place of its last
 * registration (StoreTx.beforeCommit), with the calls that registered it: when one registered by a
 * single call throws, that call fails alone and its siblings commit without it.
 */
export function batchFinishers<C extends { ok: boolean; finishers?: Set<Finisher> | undefined }>(batch: readonly C[]): Map<Finisher, C[]> {
  const out = new Map<Finisher, C[]>();
  for (const c of batch) {
    if (!c.ok || c.finishers === undefined) continue;
    for (const f of c.finishers) {
      const owners = out.get(f) ?? [];
      out.delete(f);
      owners.push(c);
      out.set(f, owners);
    }
  }
  return out;
}
