/**
 * Leases: request (policy-checked, bound to the requesting agent), access (every check and the use
 * count in one transaction), request-and-access in one transaction, renew, revoke, revoke-all, killswitch, list and garbage collection.
 * Every grant, use, denial, renewal and revocation is audited inside the same transaction.
 */
import { openValue } from "../crypto/envelope.js";
import type { SecretBytes } from "../crypto/secret-bytes.js";
import type { StoreTx } from "./ports.js";
import { mayActFor, resolveAgent, roleError } from "./access.js";
import { commit, type AuditFn, type VaultContext } from "./context.js";
import { denied } from "./denied.js";
import { matchDomain, parseDomainPattern, type DomainPattern } from "./domain.js";
import { formatDuration, parseDuration } from "./duration.js";
import { VaultError } from "../base/errors.js";
import { bytesFitError, type ValueFit } from "../base/value-fit.js";
import { extractField } from "./json-field.js";
import { objectParam, optionalObjectParam } from "../base/shape.js";
import { isUuid, uuidv7 } from "../base/ids.js";
import { checkAgentId, checkRef, parseRefString, refString } from "../base/names.js";
import { canonicalRequestPath, matchPathPrefixes, requestBoundsReason } from "./http-path.js";
import { checkPlainText, quoteText } from "../base/text.js";
import { checkDomainsText, checkTarget } from "./target.js";
import { decide, leaseDomains, reasonFor, type Rule } from "./policy.js";
import { bindingOf, checkApprovalId, gateGrant, withdrawForAgent } from "./approvals.js";
import type { Identity, LeaseFilter, LeaseRecord, SecretRef, VersionRecord } from "../base/types.js";
import { isRevocable, leaseState } from "../base/lease-state.js";
import { engageKillswitchIn, formatKillswitch, KILLSWITCH_META, lockoutError, readKillswitch, sawKillswitch, type KillswitchState } from "./lockout.js";
import { deadmanIn, firedSignal, heartbeatIn, limitsStale, missedDeadlineIn, recordIn } from "./heartbeat.js";
import { policyGateIn } from "./policy-sync.js";
import { requireKeyIn } from "./key-reload.js";
import { retiredVersionError } from "./value-key.js";
import { rolledBackError } from "./version-floor.js";

export { leaseState, type LeaseState } from "../base/lease-state.js";

/** What {@link requestLease} takes. */
export interface LeaseRequest {
  /** The agent the lease is for. Agents may omit it (their own id is used); others must give it. */
  agent?: string;
  secret: SecretRef | string;
  /** Hosts (or `*.x` patterns) the lease is for; each must be allowed by the rule. Default: the rule's. */
  domains?: string[];
  /** Lifetime (ms or a duration such as "5m"); capped by the rule's ttl. */
  ttl?: number | string;
  /** Use cap; capped by the rule's max_uses. */
  maxUses?: number;
  /**
   * For a rule with `approval = "required"`: the id of the approval a person gave this exact request
   * (optional: an approved approval for the same request is found without it). See ./approvals.ts.
   */
  approval?: string;
}

/** Where the value is going to be used; checked against the lease. */
export interface AccessTarget {
  /** The host the credential is for. Required unless the lease was granted with any_domain. */
  domain?: string;
  /** HTTP method (checked when the lease restricts methods). */
  method?: string;
  /** HTTP path (checked when the lease restricts path prefixes). */
  path?: string;
  /**
   * "proxy": the value goes into a request an injecting proxy sends for the agent, not to the agent
   * (lessor run, lessor proxy, lessor mcp). Taken only from the owner or an orchestrator on the
   * host: the only way to use a lease whose rule says `reveal = false`. An agent's own call cannot
   * claim it, nor can a VM guest's (an identity whose transport is `vsock`), whatever its role.
   */
  via?: "proxy";
  /**
   * Where the value is about to go (src/base/value-fit.ts): a value that cannot go there (not UTF-8
   * text; a control character or line break, or for "header" any character outside ASCII) is refused
   * `invalid_request` before the use is counted, audited. What an injecting proxy asks, so that a use
   * it spends is a request it sends. Checked after every other check, so it tells nothing to a caller
   * the value would not be handed to.
   */
  fit?: ValueFit;
  /**
   * The field of the secret's JSON value that is about to go (a reference's `secret#field`,
   * ./json-field.ts): a value without it, or whose field cannot go as `fit` says (default "utf8"),
   * is refused `invalid_request` before the use is counted, as for `fit`. The whole value is still
   * what the access returns.
   */
  field?: string;
}

/** A granted value; wipe `value` (or `using`) when done. */
export interface AccessResult {
  value: SecretBytes;
  version: number;
  lease: LeaseRecord;
  /** Present when the use was checked against a method or path restriction: see {@link UseBounds}. */
  bounds?: UseBounds;
}

/**
 * The method and path restrictions one use was checked against: the lease's, and the rule's in force
 * (a reload may have narrowed them since the grant). An injecting proxy sends the request within them
 * (src/proxy/lease-egress.ts): it forwards `path` rather than the path as sent.
 */
export interface UseBounds {
  /** The methods both the lease and the rule in force allow (upper case); null: any. */
  methods: string[] | null;
  /** The canonical path the use was matched on (src/vault/http-path.ts), under a `paths` restriction; else null. */
  path: string | null;
}

const patternCache = new Map<string, DomainPattern>();
function pattern(p: string): DomainPattern {
  let d = patternCache.get(p);
  if (!d) {
    if (patternCache.size > 10_000) patternCache.clear();
    d = parseDomainPattern(p);
    patternCache.set(p, d);
  }
  return d;
}

function toMs(ttl: number | string): number {
  const ms = typeof ttl === "string" ? parseDuration(ttl) : ttl;
  if (!Number.isSafeInteger(ms) || ms <= 0) throw new VaultError("invalid_request", "ttl must be a positive number of milliseconds or a duration such as \"5m\"");
  return ms;
}

/**
 * A copy of `target`, each field read once, checked (./target.ts): what the checks passed is what the
 * use is decided, matched and audited by (an in-process caller's getter cannot answer otherwise later).
 */
function checkedTarget(target: AccessTarget): AccessTarget {
  checkTarget(target);
  const copy: AccessTarget = { ...target };
  checkTarget(copy);
  return copy;
}

/** A {@link LeaseRequest} after its shape was checked (before any transaction); also read by ./approval-calls.ts. */
export interface CheckedRequest {
  ref: SecretRef;
  /** `scope/name`, for audit rows. */
  secret: string;
  agent: string | undefined;
  ttl: number | undefined;
  maxUses: number | undefined;
  domains: string[] | undefined;
  approval: string | undefined;
}

export function checkRequest(req: LeaseRequest): CheckedRequest {
  objectParam(req, "a lease request");
  // Each field read once, and the domains copied: what is checked is what is decided and granted
  // (an in-process caller's getter, or a list changed while the grant waits, cannot swap a host in).
  const { secret: asked, agent, ttl: askedTtl, maxUses, domains: askedDomains, approval: askedApproval } = req;
  const ref = typeof asked === "string" ? parseRefString(asked) : checkRef(asked);
  if (agent !== undefined) checkAgentId(agent);
  const ttl = askedTtl === undefined ? undefined : toMs(askedTtl);
  if (maxUses !== undefined && (!Number.isSafeInteger(maxUses) || maxUses < 1))
    throw new VaultError("invalid_request", "maxUses must be a whole number from 1");
  const domains = askedDomains === undefined ? undefined : Array.isArray(askedDomains) && askedDomains.length <= 64 ? Array.from(askedDomains as unknown[]) : null;
  if (domains === null || (domains !== undefined && (domains.length > 64 || !domains.every((d) => typeof d === "string"))))
    throw new VaultError("invalid_request", "domains must be a list of at most 64 host names");
  if (domains !== undefined) checkDomainsText(domains);
  const approval = askedApproval === undefined ? undefined : checkApprovalId(askedApproval);
  return { ref, secret: refString(ref), agent, ttl, maxUses, domains: domains as string[] | undefined, approval };
}

/** A lease granted in a transaction, with the secret's current version when the grant read it. */
interface Granted {
  lease: LeaseRecord;
  version: VersionRecord | null;
}

/**
 * The grant itself, inside a transaction: policy, limits, the lease row and its audit event. With
 * `useNext` the secret's existence is checked by reading its current version, and the lease row is
 * not written: the caller uses the lease in the same transaction and writes the row once, in its
 * final state (see {@link requestLeaseAndAccess}). Otherwise the existence check reads the secret's
 * metadata row and the row is written here.
 */
async function grantIn(
  ctx: VaultContext,
  tx: StoreTx,
  audit: AuditFn,
  now: number,
  who: Identity,
  req: CheckedRequest,
  useNext = false,
): Promise<Granted | VaultError> {
  const { ref, secret } = req;
  const agent = resolveAgent(who, req.agent);
  if (agent instanceof VaultError) return denied(audit, who, agent, { agent: req.agent ?? null, secret });
  // The reads a grant needs, issued together so that a store over a network can answer them in one
  // round trip (src/vault/ports.ts). The killswitch lockout is read in this transaction: no grant
  // commits after a killswitch did; so is the policy stamp of a shared store: no grant commits by a
  // policy other than the one in force there (src/vault/policy-sync.ts).
  // With the dead-man switch on, its last heartbeat too: no grant commits past its deadline (./heartbeat.ts).
  const [lockout, version, exists, live, stale, beat] = await Promise.all([
    readKillswitch(tx),
    useNext ? tx.getCurrentVersion(ref) : null,
    useNext ? null : tx.getSecret(ref),
    tx.countLiveLeases(agent, now, ctx.limits.maxLiveLeasesPerAgent),
    policyGateIn(ctx, tx),
    heartbeatIn(ctx, tx),
  ]);
  // A stale instance (its policy or limits not the ones in force) never fires the switch by its own period.
  const fired = lockout.engaged || stale ? null : await deadmanIn(ctx, tx, audit, now, beat);
  if (lockout.engaged || fired) return denied(audit, who, lockoutError(fired ?? lockout), { agent, secret, domain: req.domains?.join(",") ?? null });
  if (stale) return denied(audit, who, stale, { agent, secret, domain: req.domains?.join(",") ?? null });
  const q = { agent, secret: ref, domains: req.domains };
  const decision = decide(ctx.policy, q);
  if (!decision.allow || !decision.rule)
    return denied(audit, who, new VaultError("access_denied", reasonFor(ctx.policy, who.role, decision.reason)), { agent, secret, domain: req.domains?.join(",") ?? null });
  const rule = decision.rule;
  // Audited as any refusal (and tallied past the burst, ./refusals.ts): a rule that grants names by
  // pattern must not let its agent probe which secrets exist without a trace.
  if (!version && !(exists ?? (await tx.getSecret(ref))))
    return denied(audit, who, new VaultError("secret_not_found", `secret ${secret} does not exist; ask an admin to store it`), { agent, secret, domain: req.domains?.join(",") ?? null });
  if (live >= ctx.limits.maxLiveLeasesPerAgent)
    return denied(audit, who, new VaultError("rate_limited", `agent "${agent}" already holds ${live} live leases (the limit is ${ctx.limits.maxLiveLeasesPerAgent}); revoke some or wait for them to expire`), { agent, secret });
  const leaseId = uuidv7(now);
  let approvalId: string | null = null;
  const named = req.domains?.length ?? 0;
  if (rule.approval === "required") {
    // Never granted on the rule alone: only for a request a person approved (./approvals.ts).
    const hosts = leaseDomains(rule, q);
    const gate = await gateGrant(tx, audit, now, who, bindingOf(agent, secret, req.domains, req.ttl, req.maxUses, rule, hosts), hosts, rule.anyDomain && named === 0, leaseId, req.approval, ctx.limits);
    if (!gate.ok) return gate.error;
    approvalId = gate.approval.id;
  } else if (req.approval !== undefined)
    return denied(audit, who, new VaultError("invalid_request", `rule "${rule.name}" needs no approval; ask without one`), { agent, secret });
  const terms = rule.terms;
  // A run's session is for that run only: its leases end with its token at the latest, so that none
  // outlives a session the sweep no longer sees (a run past its --ttl, then killed; src/server/session-sweep.ts).
  const sessionEnd = who.session === true ? (who.token?.expiresAt ?? null) : null;
  const maxExpiresAt = sessionEnd === null ? now + terms.maxTtlMs : Math.min(now + terms.maxTtlMs, sessionEnd);
  const lease: LeaseRecord = {
    id: leaseId,
    agent,
    scope: ref.scope,
    name: ref.name,
    domains: leaseDomains(rule, q),
    // A request that names domains gets a lease for exactly those, any_domain rule or not.
    anyDomain: rule.anyDomain && named === 0,
    methods: rule.methods ? [...rule.methods] : null,
    paths: rule.paths ? [...rule.paths] : null,
    rule: rule.name,
    issuedAt: now,
    expiresAt: Math.min(now + Math.min(req.ttl ?? terms.ttlMs, terms.ttlMs), maxExpiresAt),
    maxExpiresAt,
    uses: 0,
    maxUses: req.maxUses !== undefined ? Math.min(req.maxUses, terms.maxUses ?? req.maxUses) : terms.maxUses,
    renewals: 0,
    maxRenewals: terms.maxRenewals,
    // A person approved this lease as shown to them: renewing it past that needs a new approval.
    renewable: terms.renewable && rule.approval !== "required",
    revokedAt: null,
    revokeReason: null,
    issuedBy: who.id,
    // A person approved it for the identity that asked: bound to it on its row (useIn), whatever rule
    // bears this rule's name later.
    bound: approvalId !== null,
    // Granted proxy-only, it stays so: a later reload that makes the rule reveal does not hand this
    // lease's value to the agent (useIn); a person who approved it approved proxy use only.
    proxyOnly: !rule.reveal,
  };
  if (!useNext) await tx.insertLease(lease);
  await audit({
    type: "lease_granted",
    actor: who,
    agent,
    secret,
    leaseId: lease.id,
    outcome: "ok",
    detail: { rule: rule.name, expires_at: lease.expiresAt, max_uses: lease.maxUses, domains: lease.domains.join(","), ...(approvalId !== null ? { approval: approvalId } : {}) },
  });
  return { lease, version };
}

/** Grants a lease if policy allows it. */
export async function requestLease(ctx: VaultContext, who: Identity, req: LeaseRequest): Promise<LeaseRecord> {
  const checked = checkRequest(req);
  return commit(ctx, async (tx, audit, now) => {
    const got = await grantIn(ctx, tx, audit, now, who, checked);
    return got instanceof VaultError ? got : got.lease;
  });
}

/**
 * The domain a lease taken and used in one call is used for when the caller names none: the first
 * exact (non-`*`) host among the requested domains; else none when the lease is any_domain; else the
 * lease's first exact host. Undefined means "no domain" (which only an any_domain lease accepts).
 */
export function defaultAccessDomain(requested: readonly string[], lease: Pick<LeaseRecord, "domains" | "anyDomain">): string | undefined {
  const exact = (d: string): boolean => !d.includes("*");
  return requested.find(exact) ?? (lease.anyDomain ? undefined : lease.domains.find(exact));
}

/** The revocation reason of a lease whose first access, in the same call as its grant, was refused. */
export const REFUSED_FIRST_ACCESS = "its first access, requested with the grant, was refused";

/**
 * Grants a lease and uses it once, in one transaction (one durable commit): the lease_granted and
 * secret_accessed events are chained in it as two separate calls would chain them. Every check of
 * {@link requestLease} and then of {@link accessSecret} applies, unchanged. When the grant is refused,
 * nothing is granted (as with requestLease). When the access is refused, the refusal is audited
 * (access_denied) and the new lease is revoked in the same transaction (lease_revoked), so no usable
 * lease ever becomes visible; the access error is thrown. `target.domain` defaults as
 * {@link defaultAccessDomain} says; a lease bound only to `*.x` patterns needs it.
 *
 * The lease row is written once, after the access, in its final state (used once, or revoked),
 * rather than inserted live and then updated: the same committed state for one row write instead of
 * two, and no entry added to and removed from the live-lease indexes in the same commit.
 */
export async function requestLeaseAndAccess(ctx: VaultContext, who: Identity, req: LeaseRequest, asked: AccessTarget = {}): Promise<AccessResult> {
  const checked = checkRequest(req);
  const target = checkedTarget(asked);
  return commitUse(ctx, async (tx, audit, now, held) => {
    const granted = await grantIn(ctx, tx, audit, now, who, checked, true);
    if (granted instanceof VaultError) return granted;
    const lease = granted.lease;
    const domain = target.domain ?? defaultAccessDomain(checked.domains ?? [], lease);
    const used =
      domain === undefined && !lease.anyDomain
        ? await denied(
            audit,
            who,
            new VaultError(
              "access_denied",
              `this lease is bound only to domain patterns (${lease.domains.join(", ") || "none"}); name the exact host the credential is for (access.domain; --domain HOST in the CLI)`,
            ),
            { agent: lease.agent, secret: checked.secret, leaseId: lease.id, domain: null },
          )
        : await useIn(ctx, tx, audit, now, who, lease, domain === undefined ? target : { ...target, domain }, held, granted.version, true);
    if (used instanceof VaultError) {
      // As revokeLeases would: a lease born expired stays so.
      const revocable = isRevocable(lease, now);
      await tx.insertLease(revocable ? { ...lease, revokedAt: now, revokeReason: REFUSED_FIRST_ACCESS } : lease);
      await audit({ type: "lease_revoked", actor: who, agent: lease.agent, secret: checked.secret, leaseId: lease.id, outcome: "ok", reason: REFUSED_FIRST_ACCESS, detail: { changed: revocable ? 1 : 0 } });
    } else await tx.insertLease(used.lease);
    return used;
  });
}

/** Why `target` may not use `lease`, or null when it may. */
function targetError(lease: LeaseRecord, target: AccessTarget): VaultError | null {
  if (target.domain === undefined) {
    if (!lease.anyDomain) return new VaultError("access_denied", "this lease is bound to domains; say which domain the credential is for");
  } else if (typeof target.domain !== "string" || (!lease.anyDomain && !lease.domains.some((p) => matchDomain(pattern(p), target.domain as string))))
    return new VaultError("access_denied", `domain ${quoteText(String(target.domain))} is not one this lease was granted for`);
  return requestError(lease.methods, lease.paths, target, "this lease");
}

/**
 * Why `target`'s method or path is outside `methods`/`paths` (null: any) of `whose` ("this lease",
 * or the rule that decides now), or null when they allow it.
 */
function requestError(methods: readonly string[] | null, paths: readonly string[] | null, target: AccessTarget, whose: string): VaultError | null {
  // Canonicalised first: "..", "%2e%2e", "//" and the like cannot step out of a prefix (src/vault/http-path.ts).
  const m = paths && target.path !== undefined ? matchPathPrefixes(paths, String(target.path)) : null;
  const why = requestBoundsReason(methods, paths, target.method === undefined ? undefined : String(target.method), m, whose);
  return why === null ? null : new VaultError("access_denied", why);
}

/**
 * Why `lease` is past `issued + max_ttl` of `own` (the rule that granted it, as it is now) or of
 * `deciding` (the rule that decides this use), or null: a reload that lowered `max_ttl` ends leases
 * granted before it at the new bound.
 */
function outlivedError(lease: LeaseRecord, now: number, ...rules: (Rule | null | undefined)[]): VaultError | null {
  for (const rule of rules)
    if (rule != null && now >= lease.issuedAt + rule.terms.maxTtlMs)
      return new VaultError(
        "lease_expired",
        `lease ${lease.id} has outlived rule "${rule.name}" of the policy in force, whose max_ttl (${formatDuration(rule.terms.maxTtlMs)}) ended it at ${new Date(lease.issuedAt + rule.terms.maxTtlMs).toISOString()}; request a new one`,
      );
  return null;
}

function stateError(lease: LeaseRecord, now: number): VaultError | null {
  switch (leaseState(lease, now)) {
    case "revoked":
      return new VaultError("lease_revoked", `lease ${lease.id} was revoked (${lease.revokeReason ?? "no reason given"}); request a new one`);
    case "expired":
      return new VaultError("lease_expired", `lease ${lease.id} expired at ${new Date(lease.expiresAt).toISOString()}; request a new one`);
    case "exhausted":
      return new VaultError("lease_exhausted", `lease ${lease.id} has used all ${lease.maxUses} of its uses; request a new one`);
    case "live":
      return null;
  }
}

/** Throws VaultError("invalid_request") unless `id` has a lease id's form (a UUID). */
export function checkLeaseId(id: unknown): string {
  if (!isUuid(id)) throw new VaultError("invalid_request", "a lease id is a UUID such as 01890a5d-ac96-774b-bcce-b302099a8057");
  return id;
}

/** Loads a lease and checks that `who` may use it; returns the lease or the error to return. */
async function ownLease(tx: StoreTx, audit: AuditFn, who: Identity, id: string): Promise<LeaseRecord | VaultError> {
  const lease = await tx.getLease(id);
  if (!lease) return denied(audit, who, new VaultError("lease_not_found", `no lease has id ${id}`), { leaseId: id });
  if (!mayActFor(who, lease.agent))
    return denied(audit, who, new VaultError("access_denied", `lease ${id} was not granted to you`), { leaseId: id, agent: who.agent ?? null, secret: `${lease.scope}/${lease.name}` });
  const foreign = sessionError(who, lease);
  if (foreign) return denied(audit, who, foreign, { leaseId: id, agent: lease.agent, secret: `${lease.scope}/${lease.name}` });
  return lease;
}

/**
 * A run's vault session (Identity.session) uses, renews, revokes and reports on only the leases it was
 * issued: another run of the same agent, at the same time, has its own session and leases, and the
 * agent's own leases (granted to it outside the run) are not the run's either. Null when `who` may.
 */
export function sessionError(who: Identity, lease: LeaseRecord): VaultError | null {
  if (who.session !== true || lease.issuedBy === who.id) return null;
  return new VaultError(
    "access_denied",
    `lease ${lease.id} was not granted to this lessor run's vault session (it was granted to ${lease.issuedBy.startsWith("run:") || lease.issuedBy.startsWith("token:session:run/") ? "another run's session" : "agent \"" + lease.agent + "\" outside this run"}); a run's session uses only the leases it was granted: request one`,
  );
}

/** A use counted in a transaction: the version to open (after the commit) and the updated lease. */
interface Use {
  version: VersionRecord;
  lease: LeaseRecord;
  bounds?: UseBounds;
}

/** Where a use's transaction leaves the value it opened to check where it goes (`fit`): see {@link commitUse}. */
interface Held {
  value?: SecretBytes | undefined;
}

/** The bounds of a use of `lease` decided by `rule` (the rule in force), or undefined when neither restricts. */
function boundsOf(lease: LeaseRecord, rule: Rule | null, target: AccessTarget): UseBounds | undefined {
  const a = lease.methods;
  const b = rule?.methods ?? null;
  const methods = a === null ? (b === null ? null : [...b]) : b === null ? [...a] : a.filter((m) => b.includes(m));
  const paths = lease.paths !== null || (rule?.paths ?? null) !== null;
  if (methods === null && !paths) return undefined;
  // The path was matched (requestError) before the use was counted, so it canonicalises.
  const path = paths && target.path !== undefined ? canonicalRequestPath(String(target.path)).path : null;
  return { methods, path };
}

/**
 * The access itself, inside a transaction, for a lease `who` may use: every check, the count, the
 * audit event. `known` is the secret's current version when this transaction has already read it.
 * `unwritten`: the lease was granted in this transaction and its row is not written yet, so the use
 * is counted on the returned lease only and the caller writes the row.
 */
async function useIn(
  ctx: VaultContext,
  tx: StoreTx,
  audit: AuditFn,
  now: number,
  who: Identity,
  lease: LeaseRecord,
  target: AccessTarget,
  held: Held,
  known?: VersionRecord | null,
  unwritten = false,
): Promise<Use | VaultError> {
  const id = lease.id;
  const secret = `${lease.scope}/${lease.name}`;
  const fields = { agent: lease.agent, secret, leaseId: id, domain: target.domain === undefined ? null : String(target.domain).slice(0, 253) };
  const err = stateError(lease, now) ?? targetError(lease, target);
  if (err) return denied(audit, who, err, fields);
  // The policy stamp (a shared store), the version and (with the dead-man switch on, for a lease not
  // granted in this transaction) the last heartbeat are read together: one round trip.
  const [stale, version, beat] = await Promise.all([policyGateIn(ctx, tx), known ?? tx.getCurrentVersion(lease), unwritten ? null : heartbeatIn(ctx, tx)]);
  if (stale) return denied(audit, who, stale, fields);
  const fired = await deadmanIn(ctx, tx, audit, now, beat);
  if (fired) return denied(audit, who, lockoutError(fired), fields);
  const decision = decide(ctx.policy, { agent: lease.agent, secret: lease, domains: target.domain === undefined ? undefined : [target.domain] });
  if (!decision.allow)
    return denied(audit, who, new VaultError("access_denied", `access denied: policy no longer allows it (${reasonFor(ctx.policy, who.role, decision.reason)})`), fields);
  // The rule that granted the lease, as it is in the policy in force (undefined: no longer there).
  const own = decision.rule?.name === lease.rule ? decision.rule : ctx.policy.rules.find((r) => r.name === lease.rule && r.effect === "allow");
  // A use without a domain (an any_domain lease) needs its own rule to still say any_domain: asked
  // without domains, any allow rule for the agent and secret would match.
  if (target.domain === undefined && !own?.anyDomain)
    return denied(
      audit,
      who,
      new VaultError("access_denied", `access denied: the policy in force no longer lets this lease be used without a domain (rule "${lease.rule}" ${own ? "has no any_domain = true" : "is no longer in it"}); name the host it is for, or request a new lease`),
      fields,
    );
  // A person approved this lease for the identity that asked for it (./approvals.ts): another
  // identity of the same agent (another run's vault session, another token) does not use it. The
  // lease records it (bound), so that a reload that renamed the rule, and gave its old name to a rule
  // without approval, does not unbind it; and its rule as in force binds it too: a lease granted
  // before a reload made its rule need approval (or before lessor recorded `bound`) is held to this
  // as well, as it is to no renewal.
  if ((lease.bound || own?.approval === "required") && who.role !== "admin" && who.id !== lease.issuedBy)
    return denied(audit, who, new VaultError("access_denied", `lease ${id} is under rule "${lease.rule}", which needs a person's approval, and only the identity it was issued to may use such a lease; request the lease yourself (a person will be asked)`), fields);
  // A reload that narrowed the methods or paths binds leases granted before it too.
  const narrowed = decision.rule ? requestError(decision.rule.methods, decision.rule.paths, target, `rule "${decision.rule.name}" of the policy in force`) : null;
  if (narrowed) return denied(audit, who, narrowed, fields);
  // A domain another rule decides, one that needs a person's approval for each lease: a lease granted
  // without one is not used there. (A request naming that domain with one only a later rule covers
  // is granted by the later rule: first match; without this, bundling a second domain would skip the
  // approval the first rule asks for that domain.)
  if (decision.rule && decision.rule.name !== lease.rule && decision.rule.approval === "required" && !lease.bound)
    return denied(
      audit,
      who,
      new VaultError(
        "access_denied",
        `${target.domain ?? "this use"} is decided by rule "${decision.rule.name}" of the policy in force, which needs a person's approval for each lease, and lease ${id} was granted by rule "${lease.rule}" without one; request a lease for that domain alone (a person will be asked)`,
      ),
      fields,
    );
  // So does one that lowered `max_ttl`, of the rule that granted the lease or of the one deciding now:
  // "a lease never lives past issued + max_ttl" holds for leases granted before it.
  const outlived = outlivedError(lease, now, own, decision.rule);
  if (outlived) return denied(audit, who, outlived, fields);
  // The value goes to the caller only when the lease was not granted proxy-only and both the rule
  // that granted it (as it is now) and the rule deciding this use reveal it: the caller picks the
  // domain, and so which rule decides.
  const hidden = revealError(own, lease, decision.rule, who, target, secret);
  if (hidden) return denied(audit, who, hidden, fields);
  if (!version) {
    if (!(await tx.getSecret(lease))) return denied(audit, who, new VaultError("secret_not_found", `secret ${secret} was deleted`), fields);
    return new VaultError("unavailable", `secret ${secret} has no current version: the database is damaged or was edited; run lessor audit verify, and restore it from a backup (or store the secret again)`);
  }
  // Its DEK may be wrapped under a key another instance rotated to: load it before the use counts.
  requireKeyIn(ctx, version.keyId);
  // Wrapped under a key a rotation retired: written by whoever holds that key, not by this vault.
  const gone = await retiredVersionError(ctx, tx, version);
  if (gone) return denied(audit, who, gone, fields);
  // Older than the version the trail last records storing: put back by a database edit.
  const back = await rolledBackError(ctx, tx, version);
  if (back) return denied(audit, who, back, fields);
  // A value that cannot go where the caller is about to put it: refused before the use is counted.
  if (target.fit !== undefined || target.field !== undefined) {
    const unfit = fitError(ctx, version, target.fit ?? "utf8", secret, held, target.field);
    if (unfit) return denied(audit, who, unfit, fields);
  }
  // An unwritten lease is this transaction's own, and stateError found it live: its use is certain.
  // A reload that lowered the rule's max_uses binds leases granted before it too (the store counts
  // the use only under both caps, atomically).
  const cap = decision.rule?.terms.maxUses ?? null;
  const uses = unwritten ? lease.uses + 1 : await tx.useLease(id, now, cap);
  if (uses === null)
    return denied(
      audit,
      who,
      new VaultError(
        "lease_exhausted",
        cap !== null && lease.uses >= cap && (lease.maxUses === null || cap < lease.maxUses)
          ? `lease ${id} has no uses left: rule "${decision.rule!.name}" of the policy in force allows ${cap}`
          : `lease ${id} has no uses left`,
      ),
      fields,
    );
  // `lease` was read (or written) in this transaction, so only its use count has changed.
  const used: LeaseRecord = { ...lease, uses };
  await audit({ type: "secret_accessed", actor: who, ...fields, outcome: "ok", detail: { version: version.version, uses: used.uses } });
  const bounds = boundsOf(lease, decision.rule, target);
  return { version, lease: used, ...(bounds ? { bounds } : {}) };
}

/**
 * Why the value of `version` cannot go as `fit` says (src/base/value-fit.ts), or null. A value that
 * fits is left in `held`, to be handed out after the commit without opening it again. A value that
 * cannot be opened here is left to the access's own opening after the commit, which says so.
 */
function fitError(ctx: VaultContext, version: VersionRecord, fit: ValueFit, secret: string, held: Held, field: string | undefined): VaultError | null {
  let value: SecretBytes;
  try {
    value = openValue(version, version, ctx.keyring, ctx.vaultId);
  } catch {
    return null;
  }
  let e: VaultError | null;
  if (field === undefined) e = bytesFitError(value.expose(), secret, fit);
  else {
    let part: SecretBytes | undefined;
    try {
      part = extractField(value, field);
      e = bytesFitError(part.expose(), `${secret}#${field}`, fit);
    } catch (err) {
      if (!(err instanceof VaultError)) {
        value.wipe();
        throw err;
      }
      e = new VaultError(err.code, `${secret}: ${err.message}`);
    } finally {
      part?.wipe();
    }
  }
  if (e !== null) {
    value.wipe();
    return new VaultError(e.code, `${e.message}; the use was not counted`);
  }
  held.value?.wipe();
  held.value = value;
  return null;
}

/**
 * Why an access may not hand the value to `who`, or null when it may: when it goes into an injecting
 * proxy's request (`via: "proxy"` from the owner or an orchestrator on the host), or when the lease
 * was not granted proxy-only (LeaseRecord.proxyOnly) and both its granting rule (`own`: as it is in
 * the policy now) and the `deciding` rule reveal it. A granting rule no longer in the policy reveals
 * nothing: nothing says its value may be handed out.
 *
 * `via: "proxy"` is the caller's word. It is taken from an admin or orchestrator on the host, never
 * from an agent, nor from a VM guest (transport `vsock`) of any role: the injecting proxies run on the
 * host and never reach the vault over vsock, and code in a VM is not trusted with values that stay
 * on the host (docs/vm.md).
 */
function revealError(own: Rule | undefined, lease: LeaseRecord, deciding: Rule | null, who: Identity, target: AccessTarget, secret: string): VaultError | null {
  if (target.via === "proxy" && who.role !== "agent" && who.transport !== "vsock") return null;
  const granted = lease.rule;
  const keeper = own === undefined ? null : !own.reveal ? own : deciding && !deciding.reveal ? deciding : null;
  if (own !== undefined && keeper === null && !lease.proxyOnly) return null;
  const why =
    own === undefined
      ? `rule "${granted}", which granted this lease, is no longer in the policy, so nothing says its value may be handed out`
      : keeper === null
        ? `this lease was granted proxy-only (rule "${granted}" did not reveal the value of ${secret} when it was granted${lease.bound ? ", and a person approved it so" : ""}), and a later policy does not change that`
        : `rule "${keeper.name}" does not hand the value of ${secret} to the agent (${keeper.methods !== null || keeper.paths !== null ? "reveal = false, the default for a rule with methods or paths" : "reveal = false"})`;
  return new VaultError(
    "access_denied",
    who.role === "agent"
      ? `${why}: use it through the injecting proxy (lessor run --agent ${who.agent ?? "AGENT"} -- …), which adds it to the requests the rule allows`
      : who.transport === "vsock"
        ? `${why}: only an injecting proxy on the host may use it; a VM guest's via "proxy" is not taken (run lessor proxy on the host for the VM's requests, see docs/vm.md)`
        : `${why}: only an injecting proxy may use it (lessor run or lessor proxy; in code, an access with via "proxy")`,
  );
}

/**
 * Runs a use in one commit and returns its value. The value the transaction opened to check where it
 * goes (`fit`, {@link fitError}) is the one handed out, not opened a second time (on the injecting
 * proxy's path, about 40 µs per request in a profile of bench/proxy.ts); without one, the value is opened
 * after the commit. A value opened by a run that does not commit (a refusal, a failed commit, a run
 * done again after a rollback) is wiped: nothing opened outlives the transaction unless it is handed out.
 */
async function commitUse(ctx: VaultContext, fn: (tx: StoreTx, audit: AuditFn, now: number, held: Held) => Promise<Use | VaultError>): Promise<AccessResult> {
  const held: Held = {};
  const drop = (): void => {
    held.value?.wipe();
    held.value = undefined;
  };
  let got: Use;
  try {
    got = await commit(ctx, (tx, audit, now) => {
      drop();
      return fn(tx, audit, now, held);
    });
  } catch (e) {
    drop();
    throw e;
  }
  const value = held.value ?? openValue(got.version, got.version, ctx.keyring, ctx.vaultId);
  held.value = undefined;
  return { value, version: got.version.version, lease: got.lease, ...(got.bounds ? { bounds: got.bounds } : {}) };
}

/** Uses a lease once: returns the secret's current value if every check passes. */
export async function accessSecret(ctx: VaultContext, who: Identity, leaseId: string, asked: AccessTarget = {}): Promise<AccessResult> {
  const id = checkLeaseId(leaseId);
  const target = checkedTarget(asked);
  return commitUse(ctx, async (tx, audit, now, held) => {
    const lease = await ownLease(tx, audit, who, id);
    if (lease instanceof VaultError) return lease;
    return useIn(ctx, tx, audit, now, who, lease, target, held);
  });
}

/** Extends a live lease, bounded by its rule's ttl, its max_ttl and max_renewals. */
export async function renewLease(ctx: VaultContext, who: Identity, leaseId: string, opts: { ttl?: number | string } = {}): Promise<LeaseRecord> {
  const id = checkLeaseId(leaseId);
  const asked = optionalObjectParam(opts, "the renewal's options").ttl;
  const ttl = asked === undefined ? undefined : toMs(asked);
  return commit(ctx, async (tx, audit, now) => {
    const lease = await ownLease(tx, audit, who, id);
    if (lease instanceof VaultError) return lease;
    const fields = { agent: lease.agent, secret: `${lease.scope}/${lease.name}`, leaseId: id };
    const err = stateError(lease, now);
    if (err) return denied(audit, who, err, fields);
    if (!lease.renewable) return denied(audit, who, new VaultError("access_denied", "this lease is not renewable; request a new one"), fields);
    // As for a use: past the dead-man deadline the switch fires here, and nothing is extended.
    const [stale, beat] = await Promise.all([policyGateIn(ctx, tx), heartbeatIn(ctx, tx)]);
    if (stale) return denied(audit, who, stale, fields);
    const fired = await deadmanIn(ctx, tx, audit, now, beat);
    if (fired) return denied(audit, who, lockoutError(fired), fields);
    // The policy in force decides, for the lease's own domains, and must still grant it by the rule
    // that granted it; that rule's terms as they are now bound the renewal (a reload that lowered
    // them, or made the rule not renewable, applies to leases granted before it).
    const decision = decide(ctx.policy, { agent: lease.agent, secret: lease, ...(lease.anyDomain ? {} : { domains: lease.domains }) });
    const rule = decision.allow ? decision.rule : null;
    if (!rule || rule.name !== lease.rule || (lease.anyDomain && !rule.anyDomain))
      return denied(audit, who, new VaultError("access_denied", ctx.policy.error !== undefined ? reasonFor(ctx.policy, who.role, decision.reason) : "policy no longer grants this lease as it was granted; request a new one"), fields);
    if (!rule.terms.renewable) return denied(audit, who, new VaultError("access_denied", `rule "${rule.name}" no longer lets its leases be renewed; request a new one`), fields);
    // As at grant time: a rule that needs a person's approval has leases that are not renewable, so a
    // reload that put a person in the loop stops leases granted before it from being renewed without one.
    if (rule.approval === "required")
      return denied(audit, who, new VaultError("access_denied", `rule "${rule.name}" now needs a person's approval for each lease, so its leases are not renewable; request a new one`), fields);
    // Past issued + max_ttl of the rule as it is now (a reload lowered it): ended, not renewed.
    const outlived = outlivedError(lease, now, rule);
    if (outlived) return denied(audit, who, outlived, fields);
    const maxRenewals = lease.maxRenewals === null ? rule.terms.maxRenewals : rule.terms.maxRenewals === null ? lease.maxRenewals : Math.min(lease.maxRenewals, rule.terms.maxRenewals);
    if (maxRenewals !== null && lease.renewals >= maxRenewals)
      return denied(audit, who, new VaultError("access_denied", `this lease was already renewed ${lease.renewals} times, its limit; request a new one`), fields);
    const maxExpiresAt = Math.min(lease.maxExpiresAt, lease.issuedAt + rule.terms.maxTtlMs);
    // The new expiry is `ttl` from now (capped by the rule and by max_ttl): a shorter ttl shortens.
    const expiresAt = Math.min(now + Math.min(ttl ?? rule.terms.ttlMs, rule.terms.ttlMs), maxExpiresAt);
    if (lease.expiresAt >= maxExpiresAt && expiresAt >= lease.expiresAt)
      return denied(audit, who, new VaultError("access_denied", `this lease has reached its maximum lifetime (until ${new Date(maxExpiresAt).toISOString()}); request a new one`), fields);
    await tx.renewLease(id, expiresAt, lease.renewals + 1);
    await audit({ type: "lease_renewed", actor: who, ...fields, outcome: "ok", detail: { expires_at: expiresAt, renewals: lease.renewals + 1 } });
    return { ...lease, expiresAt, renewals: lease.renewals + 1 };
  });
}

/** Revokes one lease. Its agent, an orchestrator acting for it, or an admin. */
export async function revokeLease(ctx: VaultContext, who: Identity, leaseId: string, reason = "revoked"): Promise<{ revoked: boolean }> {
  const id = checkLeaseId(leaseId);
  const why = checkReason(reason);
  return commit(ctx, async (tx, audit, now) => {
    const lease = await ownLease(tx, audit, who, id);
    if (lease instanceof VaultError) return lease;
    const n = await tx.revokeLeases({ id }, now, why);
    await audit({ type: "lease_revoked", actor: who, agent: lease.agent, secret: `${lease.scope}/${lease.name}`, leaseId: id, outcome: "ok", reason: why, detail: { changed: n } });
    return { revoked: n > 0 };
  });
}

/** Revokes every lease of `agent` not yet revoked or expired (used-up ones too: src/base/lease-state.ts isRevocable). */
export async function revokeAllForAgent(ctx: VaultContext, who: Identity, agentIn: string, reason = "revoked for agent"): Promise<{ revoked: number }> {
  const agent = checkAgentId(agentIn);
  const why = checkReason(reason);
  return commit(ctx, async (tx, audit, now) => {
    if (!mayActFor(who, agent))
      return denied(audit, who, new VaultError("access_denied", `you may not revoke the leases of agent "${agent}"`), { agent });
    if (who.session === true) {
      // A run's session revokes the leases it was issued, not the agent's others (sessionError).
      let n = 0;
      for (const l of await pagedList(tx, { agent, liveAt: now, limit: 10_000 }, (x) => x.issuedBy === who.id)) n += await tx.revokeLeases({ id: l.id }, now, why);
      await audit({ type: "lease_revoked", actor: who, agent, outcome: "ok", reason: why, detail: { count: n, session: true } });
      await withdrawForAgent(tx, audit, now, who, agent, who.id);
      return { revoked: n };
    }
    const n = await tx.revokeLeases({ agent }, now, why);
    await audit({ type: "lease_revoked", actor: who, agent, outcome: "ok", reason: why, detail: { count: n } });
    await withdrawForAgent(tx, audit, now, who, agent);
    return { revoked: n };
  });
}

/**
 * Pulls the killswitch: revokes every unexpired lease of every agent (used up or not), withdraws every
 * approval not yet used, and engages the lockout (see
 * src/vault/lockout.ts) in one transaction, then raises the killswitch signal so that a server closes
 * its agents' connections. Pulling it again while engaged revokes again and keeps the first
 * engagement's time, actor and reason. Admin only.
 */
export async function killswitch(ctx: VaultContext, who: Identity, reason = "killswitch"): Promise<{ revoked: number }> {
  const why = checkReason(reason);
  const got = await commit(ctx, async (tx, audit, now) => {
    const err = roleError(who, ["admin"], "pull the killswitch");
    if (err) return denied(audit, who, err, {});
    return engageKillswitchIn(tx, audit, now, who, why);
  });
  sawKillswitch(ctx, got.state);
  ctx.signals.emit({ type: "killswitch", engaged: true });
  return { revoked: got.revoked };
}

/**
 * Releases the killswitch lockout: grants are decided by the policy again. Audited (a killswitch event
 * with detail engaged = false) whether or not it was engaged; `released` says whether it was. Admin only.
 */
export async function releaseKillswitch(ctx: VaultContext, who: Identity, reason = "released"): Promise<{ released: boolean }> {
  const why = checkReason(reason);
  const got = await commit(ctx, async (tx, audit, now) => {
    const err = roleError(who, ["admin"], "release the killswitch");
    if (err) return denied(audit, who, err, {});
    // A dead-man deadline that passed unnoticed (nothing watched, nothing asked) fires first, before
    // this release's heartbeat moves it: the leases from before the deadline stay revoked, and the
    // release then lifts the lockout the switch engaged, as it would had a daemon fired it on time.
    const fired = await missedDeadlineIn(ctx, tx, audit, now);
    // An admin is here: that is a heartbeat, or the dead-man switch would fire again at once.
    if (ctx.limits.heartbeatMs !== null && !limitsStale(ctx)) await recordIn(ctx, tx, audit, now, who, "killswitch released");
    const before = await readKillswitch(tx);
    const state: KillswitchState = before.engaged ? { engaged: false, at: now, by: who.id, reason: why } : before;
    if (before.engaged) await tx.setMeta(KILLSWITCH_META, formatKillswitch(state));
    await audit({
      type: "killswitch",
      actor: who,
      outcome: "ok",
      reason: why,
      detail: { engaged: false, was_engaged: before.engaged, engaged_at: before.engaged ? before.at : null, engaged_by: before.engaged ? before.by : null },
    });
    return { released: before.engaged, state, fired };
  });
  if (got.fired) firedSignal(ctx, got.fired);
  sawKillswitch(ctx, got.state);
  if (got.released) ctx.signals.emit({ type: "killswitch", engaged: false });
  return { released: got.released };
}

/** A revocation or killswitch reason: one line of plain text (src/base/text.ts), at most 200 characters. */
function checkReason(r: unknown): string {
  return checkPlainText(r, "a revocation reason", 200);
}

/** Lists leases: agents see their own; orchestrators those of agents they act for; admins all. */
export async function listLeases(ctx: VaultContext, who: Identity, filter: LeaseFilter = {}): Promise<LeaseRecord[]> {
  const f: LeaseFilter = { ...optionalObjectParam(filter, "the lease filter"), limit: Math.min(filter.limit ?? 1000, 10_000) };
  // A name no agent can have matches nothing: say so rather than answer "no leases".
  if (f.agent !== undefined) checkAgentId(f.agent);
  // Naming another agent is refused and audited under the caller, as every other call naming one is.
  const refuse = (err: VaultError): Promise<never> => commit<never>(ctx, (_tx, audit) => denied(audit, who, err, { agent: f.agent ?? null }));
  if (who.role === "agent") {
    if (f.agent !== undefined && f.agent !== who.agent)
      return refuse(new VaultError("access_denied", `agent "${who.agent}" may not list the leases of agent "${f.agent}"`));
    f.agent = who.agent;
  }
  // A run's session lists the leases it was issued only (sessionError), paging past the agent's others.
  if (who.session === true) return pagedList(ctx.store, f, (l) => l.issuedBy === who.id);
  if (who.role !== "orchestrator") return ctx.store.listLeases(f);
  if (f.agent !== undefined) {
    if (!mayActFor(who, f.agent))
      return refuse(new VaultError("access_denied", `orchestrator "${who.id}" is not configured to act for agent "${f.agent}", so it may not list its leases`));
    return ctx.store.listLeases(f);
  }
  // The leases of the agents it acts for, newest first: page through the others' rather than let
  // them fill the limit (another agent's thousand expired leases would hide these).
  return pagedList(ctx.store, f, (l) => mayActFor(who, l.agent));
}

/** The leases `f` selects that `keep` keeps, newest first, up to f.limit: paged, so that the others do not fill the limit. */
async function pagedList(reader: Pick<StoreTx, "listLeases">, f: LeaseFilter, keep: (l: LeaseRecord) => boolean): Promise<LeaseRecord[]> {
  const want = f.limit!;
  const out: LeaseRecord[] = [];
  let page: LeaseRecord[];
  let beforeId = f.beforeId;
  do {
    page = await reader.listLeases({ ...f, ...(beforeId !== undefined ? { beforeId } : {}), limit: LIST_PAGE });
    for (const l of page) if (keep(l) && out.length < want) out.push(l);
    beforeId = page.at(-1)?.id;
  } while (out.length < want && page.length === LIST_PAGE);
  return out;
}

/** Leases read per page when an orchestrator's listing is filtered to the agents it acts for. */
const LIST_PAGE = 1000;

/** Deletes leases that expired more than the retention period ago, in bounded batches. */
export async function gcLeases(ctx: VaultContext): Promise<number> {
  let total = 0;
  for (;;) {
    const n = await ctx.store.transaction((tx) => tx.deleteExpiredLeases(ctx.now() - ctx.limits.leaseRetentionMs, 1000));
    total += n;
    if (n < 1000) return total;
  }
}
