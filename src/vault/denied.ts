/**
 * The one way a refusal is audited: an `access_denied` event saying who was refused and why (the
 * error's code and message), in the same transaction as the step refused, so that no refusal goes
 * unrecorded and no two operations record one differently.
 */
import type { VaultError } from "../base/errors.js";
import type { AuditDraft, Identity } from "../base/types.js";
import type { AuditFn } from "./context.js";

/** What an `access_denied` event says about the step refused, beyond who and why. */
export type DeniedFields = Pick<AuditDraft, "agent" | "secret" | "leaseId" | "domain">;

/**
 * Audits `err` as an `access_denied` event by `who` and returns it, so that a transaction body can
 * `return denied(...)` (the commit then throws it). Without `fields` the event names the caller's own
 * agent (null for a non-agent); a caller that passes `fields` names exactly what it gives.
 */
export async function denied(audit: AuditFn, who: Identity, err: VaultError, fields?: DeniedFields): Promise<VaultError> {
  await audit({ type: "access_denied", actor: who, ...(fields ?? { agent: who.agent ?? null }), outcome: "denied", reason: `${err.code}: ${err.message}` });
  return err;
}
