/**
 * Approvals: a person in the loop for the grants of rules that say `approval = "required"`.
 *
 * A lease request such a rule decides is not granted on its own. Instead an approval is opened for
 * that exact request — agent, secret, requested domains, ttl, use cap, and the deciding rule — and
 * the request is refused (`access_denied`, naming the approval's id). A person then approves or
 * denies it (`approval_decide`: admin only; `lessor approve ID` / `lessor deny ID`). Once approved,
 * the same request from the same requester (the identity that asked: a token, the owner, a run's
 * vault session) gets the lease, once: the approval is used up by the grant. A different request
 * (another agent, secret, domain, ttl or cap) or another requester does not match it (a denial
 * stands for the agent, whoever asks), and an
 * approval expires: pending ones {@link APPROVAL_PENDING_MS} after they were asked for, approved ones
 * {@link APPROVAL_USE_MS} after the decision. Asking, approving, denying and the grant are audited
 * (approval_requested, approval_granted, approval_denied, lease_granted with the approval's id).
 *
 * They live in the vault's meta as one JSON document (key {@link APPROVALS_META}), read and written
 * inside the transaction that decides: every store (memory, SQLite, PostgreSQL) has transactional
 * meta, so no new store surface is needed, and two requests can never both use one approval. The
 * document is small by construction: entries are dropped when they expire, and their number is capped.
 */
import { VaultError } from "../base/errors.js";
import { uuidv7, isUuid } from "../base/ids.js";
import { checkPlainText } from "../base/text.js";
import type { Identity } from "../base/types.js";
import type { AuditFn } from "./context.js";
import { denied } from "./denied.js";
import { formatDomainPattern, parseDomainPattern } from "./domain.js";
import type { StoreReader, StoreTx } from "./ports.js";
import type { Rule } from "./policy.js";
import { DEFAULT_LIMITS, type Limits } from "./limits.js";

/** The meta key of the approvals document. */
export const APPROVALS_META = "approvals";
/** How long a request waits for a person before it lapses (ms), unless lessor.toml sets [vault] approval_wait. */
export const APPROVAL_PENDING_MS = DEFAULT_LIMITS.approvalWaitMs;
/** How long an approved request may be taken up after the decision (ms), unless [vault] approval_use says otherwise. */
export const APPROVAL_USE_MS = DEFAULT_LIMITS.approvalUseMs;

/** How long approvals stand (the vault's limits). */
export type ApprovalLapse = Pick<Limits, "approvalWaitMs" | "approvalUseMs">;
/** Most approvals kept at once (pending, approved, denied, used: all until they expire). */
export const MAX_APPROVALS = 256;
/** Most pending approvals of one agent: an agent cannot bury the person under requests. */
export const MAX_PENDING_PER_AGENT = 16;
/**
 * Most pending approvals asked for by one orchestrator (its `requestedBy`): one acting for a pattern
 * (`--act-for "ci-*"`) can name any number of agents, so the per-agent cap alone would let it fill
 * {@link MAX_APPROVALS} and leave no other agent a way to ask a person for anything. Sixteen waiting
 * at once is more than a person decides in one sitting; an orchestrator that runs more jobs needing
 * approval at once is given one token per job group. An agent is held by the per-agent cap; the
 * owner (admin) is not capped per requester: every `lessor mcp --agent X` reaching the vault as the
 * owner asks under the owner's one identity, and one agent's sixteen must not leave the others none.
 */
export const MAX_PENDING_PER_REQUESTER = 16;
/**
 * Most pending approvals one orchestrator asks for any one agent. Several agents often share one
 * orchestrator token (a `lessor mcp --agent ci-N` each): without this, one of them, varying its ttl or
 * use cap, would hold all {@link MAX_PENDING_PER_REQUESTER} of the token's slots and leave its siblings
 * none (and renew that as they lapse). Four waiting for one agent is plenty for one job.
 */
export const MAX_PENDING_PER_REQUESTER_AGENT = 4;

/** Where an approval stands. */
export type ApprovalState = "pending" | "approved" | "denied" | "used";

/** One approval: the exact request it is for, and the decision. Never holds a value. */
export interface ApprovalRecord {
  id: string;
  agent: string;
  /** `scope/name` */
  secret: string;
  /** The domains as requested (normalised, sorted), or null when the request named none (the rule's). */
  domains: string[] | null;
  /** The hosts the lease would be bound to (what the person is shown). */
  hosts: string[];
  anyDomain: boolean;
  /** Requested ttl (ms), or null for the rule's. */
  ttlMs: number | null;
  /** Requested use cap, or null for the rule's. */
  maxUses: number | null;
  /** The rule that decided when it was asked for; a grant must be decided by the same rule. */
  rule: string;
  /**
   * What the rule gave the lease when it was asked for (hosts, any_domain, methods, paths, lease
   * terms), in canonical form: a grant must find the same, so a rule widened after the approval asks
   * again. Absent from approvals stored before it was kept: those match nothing.
   */
  terms?: string;
  /** Why the agent asks (its own words; plain text), or null. */
  reason: string | null;
  requestedBy: string;
  requestedAt: number;
  /** When it lapses: pending, {@link APPROVAL_PENDING_MS} after asking; decided, {@link APPROVAL_USE_MS} after the decision. */
  expiresAt: number;
  state: ApprovalState;
  decidedBy: string | null;
  decidedAt: number | null;
  decisionReason: string | null;
  /** The lease granted with it (state "used"). */
  leaseId: string | null;
}

/** The request an approval is bound to. */
export interface ApprovalBinding {
  agent: string;
  secret: string;
  domains: string[] | null;
  ttlMs: number | null;
  maxUses: number | null;
  rule: string;
  /** See {@link ApprovalRecord.terms}. */
  terms: string;
}

/**
 * The binding of a lease request, with its domains normalised and sorted (so order does not matter),
 * and what the deciding rule gives it (`hosts`: the lease's domains, as the person is shown them).
 */
export function bindingOf(agent: string, secret: string, domains: readonly string[] | undefined, ttlMs: number | undefined, maxUses: number | undefined, rule: Rule, hosts: readonly string[]): ApprovalBinding {
  const norm = domains === undefined || domains.length === 0 ? null : [...new Set(domains.map((d) => formatDomainPattern(parseDomainPattern(d))))].sort();
  const t = rule.terms;
  const terms = JSON.stringify({
    hosts: [...hosts].sort(),
    anyDomain: rule.anyDomain,
    methods: rule.methods,
    paths: rule.paths,
    // Only when false, so that approvals of rules that reveal keep their text across the upgrade.
    ...(rule.reveal ? {} : { reveal: false }),
    terms: [t.ttlMs, t.maxTtlMs, t.maxUses, t.renewable, t.maxRenewals],
  });
  return { agent, secret, domains: norm, ttlMs: ttlMs ?? null, maxUses: maxUses ?? null, rule: rule.name, terms };
}

function sameBinding(a: ApprovalRecord, b: ApprovalBinding): boolean {
  return (
    a.agent === b.agent &&
    a.secret === b.secret &&
    a.rule === b.rule &&
    a.terms === b.terms &&
    a.ttlMs === b.ttlMs &&
    a.maxUses === b.maxUses &&
    (a.domains === null ? b.domains === null : b.domains !== null && a.domains.length === b.domains.length && a.domains.every((d, i) => d === b.domains![i]))
  );
}

/**
 * An approval as callers see it: without its internal {@link ApprovalRecord.terms}, but with what in
 * them the person gives away by approving, so that every place that asks a person shows it:
 * - `reveal`: whether the rule hands the value to the requester (true: it may read the value itself
 *   and send it anywhere, not only to the hosts), or only an injecting proxy uses it (false); null for
 *   an approval stored before the terms were kept (it matches no request, so it grants nothing);
 * - `methods`, `paths`: what the rule lets the proxy send (null: any).
 */
export type ShownApproval = Omit<ApprovalRecord, "terms"> & { reveal: boolean | null; methods: string[] | null; paths: string[] | null };

/** The {@link ShownApproval} of `a`. */
export function shownApproval(a: ApprovalRecord): ShownApproval {
  const { terms, ...shown } = a;
  type Terms = { reveal?: unknown; methods?: unknown; paths?: unknown };
  let t: Terms | null = null;
  try {
    const parsed: unknown = typeof terms === "string" ? JSON.parse(terms) : null;
    if (typeof parsed === "object" && parsed !== null) t = parsed as Terms;
  } catch {
    t = null;
  }
  const list = (v: unknown): string[] | null => (Array.isArray(v) && v.every((x) => typeof x === "string") ? [...(v as string[])] : null);
  // bindingOf writes `reveal` only when false.
  return { ...shown, reveal: t === null ? null : t.reveal !== false, methods: list(t?.methods), paths: list(t?.paths) };
}

/** Reads the document; entries that expired by `now` are dropped. A damaged document counts as empty. */
export async function readApprovals(r: Pick<StoreReader, "getMeta">, now: number): Promise<ApprovalRecord[]> {
  const text = await r.getMeta(APPROVALS_META);
  if (text === null) return [];
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return [];
  }
  const items = (doc as { v?: unknown; items?: unknown }).items;
  if ((doc as { v?: unknown }).v !== 1 || !Array.isArray(items)) return [];
  return (items as ApprovalRecord[]).filter((a) => typeof a === "object" && a !== null && typeof a.id === "string" && typeof a.expiresAt === "number" && a.expiresAt > now);
}

async function writeApprovals(tx: StoreTx, items: readonly ApprovalRecord[]): Promise<void> {
  await tx.setMeta(APPROVALS_META, JSON.stringify({ v: 1, items }));
}

/** What the approval gate says about a lease request that needs approval. */
export type GateResult = { ok: true; approval: ApprovalRecord } | { ok: false; error: VaultError; approval: ApprovalRecord | null };

/** The refusal of a request whose approval is pending (or was just asked for). */
function pendingError(a: ApprovalRecord, created: boolean): VaultError {
  return new VaultError(
    "access_denied",
    `rule "${a.rule}" needs a person's approval for this request: approval ${a.id} ${created ? "was opened" : "is pending"} and lapses at ${new Date(a.expiresAt).toISOString()}; a person approves it with lessor approve ${a.id} (or refuses it with lessor deny ${a.id}), then the same request gets the lease`,
  );
}

/**
 * Finds the approval for `b`, or opens one (audited as approval_requested). Returns the approval, and
 * whether it was opened now. Refuses with rate_limited when the agent has too many pending.
 */
export async function findOrOpen(
  tx: StoreTx,
  audit: AuditFn,
  now: number,
  who: Identity,
  b: ApprovalBinding,
  hosts: string[],
  anyDomain: boolean,
  reason: string | null,
  lapse: ApprovalLapse,
): Promise<{ approval: ApprovalRecord; created: boolean } | VaultError> {
  const items = await readApprovals(tx, now);
  // An approved one first (it is what the request is waiting for), then a denial (it stands until it
  // lapses: asking again does not reopen the question), then a pending one.
  // An approved or pending one only if this identity asked for it: the person approved that
  // requester's request (they are shown its requested_by), and a run's vault session, a token, ends
  // with it; another session of the same agent (the next run's) asks afresh. A denial stands for the
  // agent, whoever asks: a fresh session must not reopen a question a person answered.
  const order: ApprovalState[] = ["approved", "denied", "pending"];
  for (const st of order) {
    const hit = items.find((a) => a.state === st && sameBinding(a, b) && (st === "denied" || a.requestedBy === who.id));
    if (hit) return { approval: hit, created: false };
  }
  if (items.filter((a) => a.state === "pending" && a.agent === b.agent).length >= MAX_PENDING_PER_AGENT)
    return denied(audit, who, new VaultError("rate_limited", `agent "${b.agent}" already has ${MAX_PENDING_PER_AGENT} requests waiting for a person's approval; wait for them to be decided or to lapse`), { agent: b.agent, secret: b.secret });
  if (who.role === "orchestrator" && items.filter((a) => a.state === "pending" && a.requestedBy === who.id && a.agent === b.agent).length >= MAX_PENDING_PER_REQUESTER_AGENT)
    return denied(
      audit,
      who,
      new VaultError("rate_limited", `you (${who.id}) already have ${MAX_PENDING_PER_REQUESTER_AGENT} requests waiting for a person's approval for agent "${b.agent}", the most one identity may have for one agent (so that the agents sharing it each keep room); wait for them to be decided or to lapse`),
      { agent: b.agent, secret: b.secret },
    );
  if (who.role === "orchestrator" && items.filter((a) => a.state === "pending" && a.requestedBy === who.id).length >= MAX_PENDING_PER_REQUESTER)
    return denied(
      audit,
      who,
      new VaultError("rate_limited", `you (${who.id}) already have ${MAX_PENDING_PER_REQUESTER} requests waiting for a person's approval, the most one identity may have (for whichever agents); wait for them to be decided or to lapse, or ask an admin for a separate token for other jobs`),
      { agent: b.agent, secret: b.secret },
    );
  if (items.length >= MAX_APPROVALS)
    return denied(audit, who, new VaultError("rate_limited", `${MAX_APPROVALS} approvals are open; wait for some to be decided or to lapse`), { agent: b.agent, secret: b.secret });
  const approval: ApprovalRecord = {
    id: uuidv7(now),
    ...b,
    hosts,
    anyDomain,
    reason,
    requestedBy: who.id,
    requestedAt: now,
    expiresAt: now + lapse.approvalWaitMs,
    state: "pending",
    decidedBy: null,
    decidedAt: null,
    decisionReason: null,
    leaseId: null,
  };
  await writeApprovals(tx, [...items, approval]);
  await audit({
    type: "approval_requested",
    actor: who,
    agent: b.agent,
    secret: b.secret,
    outcome: "ok",
    ...(reason !== null ? { reason } : {}),
    detail: { approval: approval.id, rule: b.rule, domains: hosts.join(","), expires_at: approval.expiresAt },
  });
  return { approval, created: true };
}

/**
 * The gate of a grant by a rule that needs approval, inside the grant's transaction. With an approved,
 * unexpired approval for exactly this request (and, when `approvalId` is given, that one), the approval
 * is used up (its lease id recorded) and the grant may go on. Otherwise the request is refused, and
 * an approval is opened for it when there is none: so any client (the CLI, the SDK) learns the id.
 */
export async function gateGrant(
  tx: StoreTx,
  audit: AuditFn,
  now: number,
  who: Identity,
  b: ApprovalBinding,
  hosts: string[],
  anyDomain: boolean,
  leaseId: string,
  approvalId: string | undefined,
  lapse: ApprovalLapse,
): Promise<GateResult> {
  const fields = { agent: b.agent, secret: b.secret, domain: b.domains?.join(",") ?? null };
  if (approvalId !== undefined) {
    const items = await readApprovals(tx, now);
    const a = items.find((x) => x.id === approvalId);
    // Another agent's approval, another requester's, a lapsed one and an unknown id get the same answer.
    if (!a || !sameBinding(a, b) || (a.requestedBy !== who.id && a.state !== "denied"))
      return { ok: false, approval: null, error: await denied(audit, who, new VaultError("access_denied", `approval ${approvalId} is not one for this request (agent, secret, domains, ttl and use cap must be those approved, and the rule must give the lease what it gave when the person approved), or it lapsed; ask again without it`), fields) };
  }
  const got = await findOrOpen(tx, audit, now, who, b, hosts, anyDomain, null, lapse);
  if (got instanceof VaultError) return { ok: false, error: got, approval: null };
  const a = got.approval;
  if (approvalId !== undefined && a.id !== approvalId && a.state !== "approved")
    return { ok: false, approval: a, error: await denied(audit, who, new VaultError("access_denied", `approval ${approvalId} is no longer in force; ask again`), fields) };
  if (a.state === "denied")
    return { ok: false, approval: a, error: await denied(audit, who, new VaultError("access_denied", `a person denied this request (approval ${a.id}${a.decisionReason ? `: ${a.decisionReason}` : ""}); it stands until ${new Date(a.expiresAt).toISOString()}`), fields) };
  if (a.state === "pending") return { ok: false, approval: a, error: await denied(audit, who, pendingError(a, got.created), fields) };
  // Approved: use it up in this transaction, so no second grant can.
  const items = await readApprovals(tx, now);
  const used: ApprovalRecord = { ...a, state: "used", leaseId };
  await writeApprovals(
    tx,
    items.map((x) => (x.id === a.id ? used : x)),
  );
  return { ok: true, approval: used };
}

/**
 * Withdraws every approval `which` selects that is not yet used (pending or approved), inside the
 * caller's transaction. Each is audited as approval_denied by `who`, with `reason` ("withdrawn: …").
 * Returns how many.
 */
async function withdrawIn(tx: StoreTx, audit: AuditFn, now: number, who: Identity, which: (a: ApprovalRecord) => boolean, reason: string, by: "killswitch" | "secret_deleted" | "requester_ended" | "agent_revoked"): Promise<number> {
  const items = await readApprovals(tx, now);
  const gone = items.filter((a) => which(a) && (a.state === "pending" || a.state === "approved"));
  if (gone.length === 0) return 0;
  await writeApprovals(
    tx,
    items.filter((a) => !gone.includes(a)),
  );
  for (const a of gone)
    await audit({ type: "approval_denied", actor: who, agent: a.agent, secret: a.secret, outcome: "ok", reason, detail: { approval: a.id, rule: a.rule, domains: a.hosts.join(","), expires_at: a.expiresAt, withdrawn_by: by } });
  return gone.length;
}

/**
 * Withdraws every approval for `secret` (`scope/name`) not yet used, inside the transaction that
 * deletes it: a person approved that secret, not one stored again under its name later. Each is
 * audited as approval_denied (reason "withdrawn: …"). Returns how many.
 */
export async function withdrawForSecret(tx: StoreTx, audit: AuditFn, now: number, who: Identity, secret: string): Promise<number> {
  return withdrawIn(tx, audit, now, who, (a) => a.secret === secret, "withdrawn: the secret was deleted", "secret_deleted");
}

/**
 * Withdraws every approval not yet used (pending or approved), inside the killswitch's transaction:
 * a decision made before the emergency must not yield a lease after the release, and a request
 * waiting from before it is asked again afterwards. Each is audited as approval_denied (reason
 * "withdrawn: the killswitch was pulled"). Returns how many.
 */
export async function withdrawAll(tx: StoreTx, audit: AuditFn, now: number, who: Identity): Promise<number> {
  // Part of the brake: each withdrawal's event (detail.withdrawn_by = "killswitch") is a brake's too,
  // so that while the audit trail is broken it is deferred like the killswitch's own, never a reason
  // to refuse the killswitch (src/vault/audit-guard.ts isBrake).
  return withdrawIn(tx, audit, now, who, () => true, "withdrawn: the killswitch was pulled", "killswitch");
}

/**
 * Withdraws every approval for `agent` not yet used (pending or approved), inside the transaction of
 * a revocation of the agent's leases (revoke_all_for_agent): an approval is a lease in waiting, and
 * the revocation must not leave one for the agent to take up at once. `requestedBy`, when given,
 * limits it to that identity's (a run's session revokes only its own). Part of the brake.
 */
export async function withdrawForAgent(tx: StoreTx, audit: AuditFn, now: number, who: Identity, agent: string, requestedBy?: string): Promise<number> {
  return withdrawIn(tx, audit, now, who, (a) => a.agent === agent && (requestedBy === undefined || a.requestedBy === requestedBy), "withdrawn: the agent's leases were revoked", "agent_revoked");
}

/**
 * Withdraws the approvals not yet used (pending or approved) that `requestedBy` asked for `agent`, in
 * the caller's transaction: that identity is gone (a `lessor run --vault-session` ended, whose session
 * was it), and an approval serves only the identity that asked, so nobody could take them up. They
 * are removed, not denied: a denial stands for the agent, and the agent's next request (the next run's)
 * is asked afresh. Each is audited as approval_denied (reason "withdrawn: …"). Returns how many.
 */
export async function withdrawForRequester(tx: StoreTx, audit: AuditFn, now: number, who: Identity, requestedBy: string, agent: string, reason: string): Promise<number> {
  return withdrawIn(tx, audit, now, who, (a) => a.requestedBy === requestedBy && a.agent === agent, reason, "requester_ended");
}

/** Checks an approval id's shape. */
export function checkApprovalId(id: unknown): string {
  if (!isUuid(id)) throw new VaultError("invalid_request", "an approval id is a UUID such as 01890a5d-ac96-774b-bcce-b302099a8057 (lessor approvals lists them)");
  return id;
}

/** A decision's reason: one line of plain text, at most 200 characters. */
export function checkDecisionReason(r: unknown): string {
  return checkPlainText(r, "a reason", 200);
}

/**
 * Decides a pending approval (inside a transaction): approved ones may then be used for
 * {@link APPROVAL_USE_MS}; denied ones refuse the same request until then. Audited as
 * approval_granted or approval_denied. The caller checks the role.
 */
export async function decideIn(
  tx: StoreTx,
  audit: AuditFn,
  now: number,
  who: Identity,
  id: string,
  approve: boolean,
  reason: string | null,
  lapse: ApprovalLapse,
): Promise<ApprovalRecord | VaultError> {
  const items = await readApprovals(tx, now);
  const a = items.find((x) => x.id === id);
  if (!a) return denied(audit, who, new VaultError("invalid_request", `no open approval has id ${id} (it may have lapsed); lessor approvals lists the pending ones`), {});
  if (a.state !== "pending") return new VaultError("invalid_request", `approval ${id} was already ${a.state === "used" ? "approved and used" : a.state}`);
  const decided: ApprovalRecord = { ...a, state: approve ? "approved" : "denied", decidedBy: who.id, decidedAt: now, decisionReason: reason, expiresAt: now + lapse.approvalUseMs };
  await writeApprovals(
    tx,
    items.map((x) => (x.id === id ? decided : x)),
  );
  await audit({
    type: approve ? "approval_granted" : "approval_denied",
    actor: who,
    agent: a.agent,
    secret: a.secret,
    outcome: approve ? "ok" : "denied",
    ...(reason !== null ? { reason } : {}),
    detail: { approval: id, rule: a.rule, domains: a.hosts.join(","), requested_by: a.requestedBy, expires_at: decided.expiresAt },
  });
  return decided;
}
