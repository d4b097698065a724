/**
 * The calls on approvals (./approvals.ts): ask for one without taking a lease (`approval_request`,
 * what `lessor mcp`'s request_access uses to learn an approval's id and state), list them
 * (`approval_list`), decide one (`approval_decide`, admin only: the person in the loop) and withdraw
 * those of an identity that is gone (`approval_withdraw`, admin only: a run's vault session ended).
 */
import { VaultError } from "../base/errors.js";
import { checkAgentId } from "../base/names.js";
import { checkPlainText } from "../base/text.js";
import type { Identity } from "../base/types.js";
import { mayActFor, resolveAgent, roleError } from "./access.js";
import { bindingOf, checkApprovalId, checkDecisionReason, decideIn, findOrOpen, readApprovals, shownApproval, withdrawForRequester, type ShownApproval } from "./approvals.js";
import { commit, type AuditFn, type VaultContext } from "./context.js";
import { denied } from "./denied.js";
import { checkRequest, type LeaseRequest } from "./leases.js";
import { decide, leaseDomains, reasonFor } from "./policy.js";
import { policyGateIn } from "./policy-sync.js";
import { describeEngaged, readKillswitch, type KillswitchState } from "./lockout.js";
import { deadmanIn, heartbeatIn } from "./heartbeat.js";
import type { StoreTx } from "./ports.js";

/**
 * The lockout as an approval call must see it, inside its transaction: engaged, or fired now by the
 * dead-man switch when its deadline has passed (as a grant fires it: ./leases.ts grantIn), or null.
 * A stale instance (its policy or limits not the ones in force) never fires the switch by its own period.
 */
async function lockoutIn(ctx: VaultContext, tx: StoreTx, audit: AuditFn, now: number, stale: boolean): Promise<KillswitchState | null> {
  const [lockout, beat] = await Promise.all([readKillswitch(tx), heartbeatIn(ctx, tx)]);
  if (lockout.engaged) return lockout;
  return stale ? null : deadmanIn(ctx, tx, audit, now, beat);
}

/**
 * The refusal of an approval request, or of a person's approval, while the lockout is engaged: an
 * approval is a lease in waiting, and the killswitch withdrew every one; one asked for or granted
 * during the lockout would be a lease waiting for the release, decided in the middle of the incident
 * (and a hostile agent could queue its requests for the person to face right after it).
 */
export function approvalLockoutError(state: KillswitchState, approving: boolean): VaultError {
  return new VaultError(
    "access_denied",
    approving
      ? `${describeEngaged(state)}; no approval is granted until an admin releases it with lessor killswitch --release (a denial still goes), and the request is asked again afterwards`
      : `${describeEngaged(state)}; no approval can be asked for until an admin releases it with lessor killswitch --release; ask again afterwards`,
  );
}

/** What {@link requestApproval} takes: a lease request, and why the agent asks. */
export interface ApprovalAsk extends Omit<LeaseRequest, "approval"> {
  /** The agent's reason, shown to the person (one line of plain text, at most 300 characters). */
  reason?: string;
  /**
   * The lease will be of use only for hosts it names (lessor mcp's proxy): under a grant for any
   * host, a request naming none is refused `invalid_request` before an approval is opened.
   */
  namedHosts?: boolean;
}

/** What {@link requestApproval} answers. */
export type ApprovalAnswer = { required: false; rule: string } | { required: true; rule: string; created: boolean; approval: ShownApproval };

/**
 * Asks a person to approve a lease request, when the rule that would grant it needs approval:
 * returns the approval for exactly this request (opened now, or the one already open: pending,
 * approved or denied). When the rule needs none, says so (`required: false`) and opens nothing.
 * Refused like the lease itself when policy does not allow the request at all.
 */
export async function requestApproval(ctx: VaultContext, who: Identity, ask: ApprovalAsk): Promise<ApprovalAnswer> {
  const { reason: why, namedHosts, ...req } = ask;
  const checked = checkRequest(req);
  const reason = why === undefined ? null : checkPlainText(why, "a reason", 300);
  return commit(ctx, async (tx, audit, now) => {
    const agent = resolveAgent(who, checked.agent);
    if (agent instanceof VaultError) return denied(audit, who, agent, { agent: checked.agent ?? null, secret: checked.secret });
    // A stale instance (src/vault/policy-sync.ts) opens no approval by its own copy of the policy.
    const stale = await policyGateIn(ctx, tx);
    if (stale) return denied(audit, who, stale, { agent, secret: checked.secret, domain: checked.domains?.join(",") ?? null });
    const q = { agent, secret: checked.ref, domains: checked.domains };
    const decision = decide(ctx.policy, q);
    if (!decision.allow || !decision.rule)
      return denied(audit, who, new VaultError("access_denied", reasonFor(ctx.policy, who.role, decision.reason)), { agent, secret: checked.secret, domain: checked.domains?.join(",") ?? null });
    const rule = decision.rule;
    if (rule.approval !== "required") return { required: false as const, rule: rule.name };
    // No approval is opened while the killswitch (or the dead-man switch, firing now if due) holds the
    // vault: read in this transaction, so none commits after a killswitch did, in any process.
    const locked = await lockoutIn(ctx, tx, audit, now, false);
    if (locked) return denied(audit, who, approvalLockoutError(locked, false), { agent, secret: checked.secret, domain: checked.domains?.join(",") ?? null });
    if (!(await tx.getSecret(checked.ref)))
      return denied(audit, who, new VaultError("secret_not_found", `secret ${checked.secret} does not exist; ask an admin to store it`), { agent, secret: checked.secret, domain: checked.domains?.join(",") ?? null });
    if (namedHosts === true && rule.anyDomain && (checked.domains?.length ?? 0) === 0)
      return new VaultError(
        "invalid_request",
        `the grant of ${checked.secret} allows any host, so the request must name the hosts it will call: the credential is added only to requests for hosts the lease names; nothing was opened for approval`,
      );
    const hosts = leaseDomains(rule, q);
    const got = await findOrOpen(tx, audit, now, who, bindingOf(agent, checked.secret, checked.domains, checked.ttl, checked.maxUses, rule, hosts), hosts, rule.anyDomain && (checked.domains?.length ?? 0) === 0, reason, ctx.limits);
    if (got instanceof VaultError) return got;
    return { required: true as const, rule: rule.name, created: got.created, approval: shownToRequester(who, shownApproval(got.approval)) };
  });
}

/**
 * An approval as an agent is answered with it: who decided it (an admin's uid or token name and id),
 * and who asked when another identity did (an orchestrator's token, say: a denial stands for the
 * agent whoever asked), are not the agent's to learn, as `describe` keeps `heartbeat.lastBy` from it.
 */
export function shownToRequester(who: Identity, a: ShownApproval): ShownApproval {
  if (who.role !== "agent") return a;
  return { ...a, requestedBy: a.requestedBy === who.id ? a.requestedBy : OTHER_REQUESTER, decidedBy: null };
}

/** What an agent is told in place of another identity's id as an approval's requester. */
export const OTHER_REQUESTER = "another identity";

/**
 * The approvals the caller may see, newest first: an admin all, an orchestrator those of the agents
 * it acts for. Pending ones only, unless `all` (then decided and used ones too, until they lapse).
 */
export async function listApprovals(ctx: VaultContext, who: Identity, opts: { all?: boolean } = {}): Promise<ShownApproval[]> {
  const err = roleError(who, ["admin", "orchestrator"], "list approvals");
  // A refusal is audited like every other (commit throws it after the row is written).
  if (err) await commit(ctx, async (_tx, audit) => denied(audit, who, err, { agent: who.agent ?? null }));
  const items = await readApprovals(ctx.store, ctx.now());
  return items
    .filter((a) => (opts.all === true || a.state === "pending") && (who.role === "admin" || mayActFor(who, a.agent)))
    .sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0))
    .map(shownApproval);
}

/** Approves or denies a pending approval. Admin only: the person in the loop, never the agent. */
export async function decideApproval(ctx: VaultContext, who: Identity, idIn: string, approve: boolean, reasonIn?: string): Promise<ShownApproval> {
  const id = checkApprovalId(idIn);
  const reason = reasonIn === undefined ? null : checkDecisionReason(reasonIn);
  return commit(ctx, async (tx, audit, now) => {
    const err = roleError(who, ["admin"], approve ? "approve a request" : "deny a request");
    if (err) return denied(audit, who, err, {});
    // A stale instance (its policy or its approval_use not the ones in force) decides nothing: the
    // decision would stand for its own approval_use, not the one every instance grants by.
    const stale = await policyGateIn(ctx, tx);
    // No approval is granted while the lockout holds (a denial still is): see approvalLockoutError.
    const locked = approve ? await lockoutIn(ctx, tx, audit, now, stale !== null) : null;
    if (locked) return denied(audit, who, approvalLockoutError(locked, true), {});
    if (stale) return denied(audit, who, stale, {});
    const got = await decideIn(tx, audit, now, who, id, approve, reason, ctx.limits);
    return got instanceof VaultError ? got : shownApproval(got);
  });
}

/**
 * Withdraws the approvals not yet used that `requestedBy` asked for `agent` (admin only): removed, not
 * denied, so the agent's next request is asked afresh (./approvals.ts withdrawForRequester). What
 * `lessor run --vault-session` calls at its end for its session's identity. `reason` is said after
 * "withdrawn: " in each approval_denied event.
 */
export async function withdrawApprovals(ctx: VaultContext, who: Identity, requestedByIn: string, agentIn: string, reasonIn: string): Promise<{ withdrawn: number }> {
  const requestedBy = checkPlainText(requestedByIn, "requestedBy", 200);
  if (requestedBy === "") throw new VaultError("invalid_request", "requestedBy must name the identity whose approvals are withdrawn");
  const agent = checkAgentId(agentIn);
  const reason = checkDecisionReason(reasonIn);
  return commit(ctx, async (tx, audit, now) => {
    const err = roleError(who, ["admin"], "withdraw approvals");
    if (err) return denied(audit, who, err, {});
    return { withdrawn: await withdrawForRequester(tx, audit, now, who, requestedBy, agent, `withdrawn: ${reason}`) };
  });
}
