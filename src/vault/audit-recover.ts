/**
 * Recovery of a broken audit trail (`lessor audit recover --reason "…"`, admin only). It does not
 * repair or hide anything: it appends an `audit_break` event, keyed and chained onto the database's
 * actual head, that records what was found (the problem, the first event that does not verify, the
 * head and the checkpoint as found) and the admin's reason; then the brake events deferred while the
 * trail was broken; and a new checkpoint. From there the trail is keyed and checked as before, and
 * `auditVerify()` reports the break (`breaks`) while verifying everything after it.
 */
import { checkTrail } from "../audit/verify.js";
import { roleError } from "./access.js";
import { denied } from "./denied.js";
import { clearDeferred, inspectChain, markKeyed, noteRecovered, readDeferred } from "./audit-guard.js";
import { commit, type VaultContext } from "./context.js";
import { isVaultError, VaultError } from "../base/errors.js";
import { checkPlainText } from "../base/text.js";
import type { AuditHead, Identity } from "../base/types.js";

/** Parameters of {@link auditRecover}. */
export interface AuditRecoverParams {
  /** Why the admin recovers (one line, at most 200 characters): recorded in the `audit_break` event. */
  reason: string;
}

/** What {@link auditRecover} did. */
export interface AuditRecoverResult {
  /** False when the trail was not broken: nothing was written. */
  recovered: boolean;
  /** Seq of the `audit_break` event, or null. */
  breakSeq: number | null;
  /** What was found wrong, as recorded in the break; null when nothing was. */
  found: { problem: string; firstBadSeq: number | null; headSeq: number; checkpointSeq: number | null } | null;
  /** Brake events (revocations, killswitch) done while the trail was broken, appended after the break. */
  deferred: number;
  /** Deferred brake events over the cap, counted but not kept. */
  dropped: number;
}

const NOTHING: AuditRecoverResult = { recovered: false, breakSeq: null, found: null, deferred: 0, dropped: 0 };

function checkReason(r: unknown): string {
  if (typeof r !== "string" || r.trim() === "")
    throw new VaultError("invalid_request", "a recovery needs a reason: one line of 1 to 200 characters saying why (it is recorded in the audit trail)");
  return checkPlainText(r, "a recovery reason", 200);
}

const sameHead = (a: AuditHead | null, b: AuditHead | null): boolean =>
  a === null || b === null ? a === b : a.seq === b.seq && Buffer.compare(a.hash, b.hash) === 0;

const hex = (b: Uint8Array | undefined): string | null => (b === undefined ? null : Buffer.from(b).toString("hex"));

/**
 * Records a break in a broken audit trail and resumes audited writes after it. Admin only. The trail
 * is checked first (outside the transaction, as `auditVerify()` does); the transaction then refuses
 * if the head or checkpoint changed meanwhile (VaultError "unavailable": run it again).
 */
export async function auditRecover(ctx: VaultContext, who: Identity, p: AuditRecoverParams): Promise<AuditRecoverResult> {
  const err = roleError(who, ["admin"], "recover the audit trail");
  if (err) {
    try {
      await commit(ctx, async (_tx, audit) => denied(audit, who, err));
    } catch (e) {
      // With the trail broken the denial cannot be recorded; the caller is refused all the same.
      if (isVaultError(e, "audit_broken")) throw err;
      throw e;
    }
  }
  const reason = checkReason(p.reason);
  const check = await checkTrail(ctx.store, ctx.auditKeys);
  const out = await commit(
    ctx,
    async (tx, audit) => {
      const chain = await inspectChain(ctx, tx);
      const cp = await tx.getCheckpoint();
      const cpSame =
        cp === null || check.checkpoint === null
          ? cp === check.checkpoint
          : cp.seq === check.checkpoint.seq && Buffer.compare(cp.mac, check.checkpoint.mac) === 0;
      if (!sameHead(chain.head, check.head) || !cpSame) {
        if (chain.problem === null) return NOTHING;
        throw new VaultError("unavailable", "the audit trail changed while it was being checked; run lessor audit recover again");
      }
      const problem = check.result.ok ? chain.problem : check.result.problem!;
      if (problem === null) return NOTHING;
      const head = chain.head;
      const firstBadSeq = check.eventFault?.seq ?? null;
      const deferred = await readDeferred(ctx, tx);
      await markKeyed(tx);
      const rec = await audit({
        type: "audit_break",
        actor: who,
        outcome: "ok",
        reason,
        detail: {
          problem: problem.slice(0, 500),
          first_bad_seq: firstBadSeq,
          head_seq: head?.seq ?? 0,
          head_hash: hex(head?.hash),
          checkpoint_seq: cp?.seq ?? null,
          checkpoint_hash: hex(cp?.hash),
          deferred: deferred.events.length,
          dropped: deferred.dropped,
          // The row of deferred brakes was there but did not verify (changed without the audit key):
          // none of it was appended, and the brakes it claims cannot be vouched for.
          deferred_rejected: deferred.rejected,
        },
      });
      for (const e of deferred.events) await audit({ ...e.draft, detail: { ...(e.draft.detail ?? {}), deferred_at: e.time } });
      if (deferred.events.length > 0 || deferred.dropped > 0 || deferred.rejected) await clearDeferred(tx);
      noteRecovered(ctx);
      const result: AuditRecoverResult = {
        recovered: true,
        breakSeq: rec!.seq,
        found: { problem, firstBadSeq, headSeq: head?.seq ?? 0, checkpointSeq: cp?.seq ?? null },
        deferred: deferred.events.length,
        dropped: deferred.dropped,
      };
      return result;
    },
    { recovery: true },
  );
  return out;
}
