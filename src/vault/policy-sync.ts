/**
 * One policy on every instance sharing a store (several `lessor serve` over one PostgreSQL database).
 * Each instance reads its own policy file; the store holds a stamp ({@link POLICY_META}) naming the
 * policy in force: the one the last `lessor policy reload` on any instance loaded (by the sha-256 of its
 * text), or, before any reload, the one the first instance opened with ({@link openPolicyStamp}).
 *
 * An instance whose policy is not the stamped one is stale, and grants nothing by its own copy: every
 * grant, access, renewal and approval request reads the stamp inside its own transaction
 * ({@link policyGateIn}), so no grant commits after a reload elsewhere committed unless this instance
 * is in line with it. On a mismatch it first reads its own policy file again (once a second at most,
 * {@link POLICY_RETRY_MS}): when the file is the stamped policy, it is put in force and the request
 * goes on. Otherwise the request is refused with `unavailable`, naming both digests and the fix (copy
 * the policy in force to this instance, or reload this instance's own to put it in force everywhere).
 * The stamp pins the `[vault]` limits grants decide by too ({@link limitsText}: the per-agent lease
 * cap, the approval times, the heartbeat), written with the digest by every reload, by the first
 * instance to open, and by every daemon that starts ({@link openPolicyStamp}): an instance on other
 * limits grants nothing either, until it is restarted with the limits in force (limits are read at
 * start, so there is no catching up). Otherwise an agent that can reach several instances would get
 * the laxest limits.
 * Brakes (revoke, killswitch, token revocation), audit and status never read the stamp: they keep
 * working on a stale instance. `status` and `policy explain` report the staleness
 * (the `stale` field of the policy version).
 *
 * One SQLite file is shared too: a daemon, embedded `lessor` commands and programs on the embedded API
 * may each hold it open, for hours (`lessor run`, `proxy`, `mcp` without a daemon), each with the
 * policy it read when it opened. There the stamp's digest binds every grant, use, renewal and approval
 * request in the same way ({@link shared}), so that a reload in any of them (which stamps it) binds
 * the others at their next call: each reads its policy file again, and refuses while that file is not
 * the one reloaded (it was edited since: reload it to put it in force). What stays for the team only
 * ({@link team}): the stamp written by the first instance to open, and the pinned `[vault]` limits;
 * on SQLite, before any reload, each process decides by the file it read at open. The memory store
 * has no stamp check: one process owns it.
 */
import { VaultError } from "../base/errors.js";
import { markBehind } from "./behind.js";
import type { StoreReader, StoreTx } from "./ports.js";
import { commit, type AuditFn, type VaultContext } from "./context.js";
import type { Identity } from "../base/types.js";
import { installPolicy, loadOrBroken, notePolicyStamp, policyStaleness } from "./policy-state.js";
import { differingLimits, limitsText, RULE_SEMANTICS, RULE_SEMANTICS_NAME } from "./limits.js";

/** The store metadata key naming the policy the last reload (on any instance) put in force. */
export const POLICY_META = "policy";

/** After a stale instance read its policy file again, how long it refuses grants before reading it again. */
export const POLICY_RETRY_MS = 1000;

/** Who a stamp written by {@link openPolicyStamp} names. */
const FIRST_OPEN = "the first lessor instance to open this vault";

/** How long a stamp read stands for the stored one in status() and explain. */
const STAMP_MAX_AGE_MS = 1000;

/** What {@link POLICY_META} holds. */
export interface PolicyStamp {
  /** The sha-256 of the policy text that was loaded. */
  digest: string;
  state: "ok" | "broken";
  /** Epoch ms of the reload. */
  at: number;
  /** Who reloaded it (an identity id). */
  by: string;
  /**
   * The `[vault]` limits in force ({@link limitsText}); absent in a stamp written before they were
   * pinned (then each instance keeps its own, until the next reload or open stamps them).
   */
  limits?: string;
}

/** A stamp's limits line as lessor writes it: `name=value` pairs. */
const LIMITS_SHAPE = /^[a-z_]{1,40}=[0-9a-z]{1,20}( [a-z_]{1,40}=[0-9a-z]{1,20}){0,63}$/;

/** The stored form of a stamp. */
export function formatPolicyStamp(p: PolicyStamp): string {
  return JSON.stringify({ digest: p.digest, state: p.state, at: p.at, by: p.by, ...(p.limits === undefined ? {} : { limits: p.limits }) });
}

/** The last stamp text parsed, and what it gave: every grant on a shared store reads the same text. */
let lastParsed: { text: string; stamp: PolicyStamp | null } | null = null;

/**
 * The digest a stamp that is not one lessor wrote (damaged, or edited by hand) stands for: it matches
 * no policy, so every instance is stale (grants nothing) until a reload writes a stamp again.
 */
export const UNREADABLE_STAMP = "unreadable";

/**
 * Reads a stamp; null only when there is none. A stamp that does not parse names the policy
 * {@link UNREADABLE_STAMP} (fail closed: it is never taken for no stamp, which would let every
 * instance grant by its own file, and the next to open put its own in force). A broken reload of a
 * file that could not be read stamps digest `""` (the digest of such a policy), so that every
 * instance whose file was read is stale. The result is shared: do not change it.
 */
export function parsePolicyStamp(text: string | null): PolicyStamp | null {
  if (text === null) return null;
  if (lastParsed?.text === text) return lastParsed.stamp;
  const stamp = parseStampText(text);
  lastParsed = { text, stamp };
  return stamp;
}

function parseStampText(text: string): PolicyStamp {
  const unreadable: PolicyStamp = { digest: UNREADABLE_STAMP, state: "broken", at: 0, by: "" };
  try {
    const o = JSON.parse(text) as Record<string, unknown>;
    if (o === null || typeof o !== "object") return unreadable;
    const broken = o.state === "broken";
    // `""` only for a broken policy (a file that could not be read): a stamp of a policy in force always names its text's digest.
    if (typeof o.digest !== "string" || !(/^[0-9a-f]{64}$/.test(o.digest) || (broken && o.digest === ""))) return unreadable;
    return {
      digest: o.digest,
      state: broken ? "broken" : "ok",
      at: typeof o.at === "number" ? o.at : 0,
      by: typeof o.by === "string" ? o.by.slice(0, 200) : "",
      // A limits field lessor did not write (damaged, or edited by hand) pins nothing readable: it differs from every instance's.
      ...(o.limits === undefined ? {} : { limits: typeof o.limits === "string" && LIMITS_SHAPE.test(o.limits) ? o.limits : "unreadable" }),
    };
  } catch {
    return unreadable;
  }
}

/** How a refusal names a stamped digest. */
function digestText(digest: string): string {
  if (digest === "") return "none: the last reload could not read its policy file, so every grant is denied until a reload succeeds";
  if (digest === UNREADABLE_STAMP) return "unreadable: the stamp naming the policy in force is damaged";
  return digest;
}

interface SyncState {
  /** performance.now() of the last stamp read into policy-state (status freshness). */
  readAt: number;
  /** The (stored, local) digests a catch-up last ended on, and when: within POLICY_RETRY_MS, refuse without trying again. */
  tried: { pair: string; at: number } | null;
  running: Promise<void> | null;
  /** The (local, stored) pair `policy_stale` was last raised for. */
  said: string | null;
}

const states = new WeakMap<VaultContext, SyncState>();

function state(ctx: VaultContext): SyncState {
  let s = states.get(ctx);
  if (s === undefined) states.set(ctx, (s = { readAt: -Infinity, tried: null, running: null, said: null }));
  return s;
}

/** True for a store several instances share over a network (it has a change feed: PostgreSQL). */
function team(ctx: VaultContext): boolean {
  return ctx.store.changes !== undefined;
}

/**
 * True for a store other processes may hold open at the same time, where the policy stamp's digest
 * binds every grant: a team's, and a SQLite file (a daemon, embedded commands and programs on the
 * embedded API on one home). Not the memory store (one process owns it).
 */
function shared(ctx: VaultContext): boolean {
  return team(ctx) || ctx.store.kind === "sqlite";
}

/** Records a stamp read (or written) now. Off a team's store its limits pin nothing, so they are not kept. */
function note(ctx: VaultContext, stamp: PolicyStamp | null): void {
  notePolicyStamp(ctx, stamp === null || stamp.limits === undefined || team(ctx) ? stamp : { ...stamp, limits: undefined });
  state(ctx).readAt = performance.now();
}

/** Reads the stamp through `r` and records it. */
async function readStamp(ctx: VaultContext, r: StoreReader): Promise<PolicyStamp | null> {
  const stamp = parsePolicyStamp(await r.getMeta(POLICY_META));
  note(ctx, stamp);
  return stamp;
}

/** Raises `policy_stale` once per (local, stored) pair, and forgets the pair once in line. */
function sayIfStale(ctx: VaultContext): void {
  const s = state(ctx);
  const stale = policyStaleness(ctx);
  if (stale === undefined) {
    s.said = null;
    return;
  }
  const pair = `${ctx.policy.digest}/${stale.stored}/${stale.limits?.join(",") ?? ""}`;
  if (s.said === pair) return;
  s.said = pair;
  ctx.signals.emit({ type: "policy_stale", local: ctx.policy.digest, stored: stale.stored, ...(stale.limits ? { limits: stale.limits } : {}) });
}

/** The refusal of a grant by an instance whose `[vault]` limits are not the ones in force. */
function limitsError(names: string[]): VaultError {
  if (names.includes(RULE_SEMANTICS_NAME))
    return new VaultError(
      "unavailable",
      "this lessor instance reads policy rules differently from the instance in force on the shared database (another version of lessor: what reveal, methods and paths mean), so it grants nothing: run the same lessor version on every instance and restart this one",
    );
  // Names only: agents read this message, and the values are the admin's business (`lessor status` on the instance).
  return new VaultError(
    "unavailable",
    `this lessor instance's [vault] limits in lessor.toml (${names.join(", ")}) are not the ones in force on the shared database (another instance started or reloaded since with other limits), so this instance grants nothing until they match: give it the same [vault] section as the instance in force and restart it (a daemon that starts puts its own limits in force on every instance)`,
  );
}

/** The refusal of a grant by a stale instance: both digests, and what to do. */
export function staleError(ctx: VaultContext, stamp: PolicyStamp): VaultError {
  // Who reloaded it and the policy file's path are left out: agents read this message (`lessor status` shows both to an admin).
  const when = stamp.at > 0 ? `, put in force on ${new Date(stamp.at).toISOString()}` : "";
  if (!team(ctx))
    return new VaultError(
      "unavailable",
      `this lessor process's policy (digest ${ctx.policy.digest || "none"}) is not the one the last lessor policy reload put in force on this vault (digest ${digestText(stamp.digest)}${when}), so this process grants nothing until they match: the policy file was changed since (or this process was given another policy); run lessor policy reload to put the file as it is now in force, or put back the file that was reloaded (it is picked up within a second)`,
    );
  return new VaultError(
    "unavailable",
    `this lessor instance's policy file (digest ${ctx.policy.digest || "none"}) is not the policy in force on the shared database (digest ${digestText(stamp.digest)}${when}), so this instance grants nothing until they match: copy the policy file in force to this instance (it is picked up within a second), or run lessor policy reload on this instance to put its own file in force on every instance`,
  );
}

/**
 * Inside a grant's (or access's, renewal's, approval request's) transaction, before the policy
 * decides: null when the policy in force here is the stamped one (or the store is not shared, or
 * has no stamp). Otherwise throws an error marked "behind" (src/vault/behind.ts), so that `commit`
 * reads this instance's policy file again and retries; once that was tried in the last
 * {@link POLICY_RETRY_MS} for the same pair of digests, returns the refusal to audit and return.
 */
export async function policyGateIn(ctx: VaultContext, tx: StoreReader): Promise<VaultError | null> {
  if (!shared(ctx)) return null;
  const stamp = parsePolicyStamp(await tx.getMeta(POLICY_META));
  if (stamp === null) return null;
  if (stamp.digest === ctx.policy.digest) {
    if (!team(ctx)) return null;
    const mine = limitsText(ctx.limits);
    return stamp.limits === undefined || stamp.limits === mine ? null : limitsError(differingLimits(mine, stamp.limits));
  }
  const tried = state(ctx).tried;
  if (tried !== null && tried.pair === `${stamp.digest}/${ctx.policy.digest}` && performance.now() - tried.at < POLICY_RETRY_MS) return staleError(ctx, stamp);
  throw markBehind(new VaultError("unavailable", "the policy was reloaded on another lessor instance and this one is catching up; retry"), { kind: "policy" });
}

/** After {@link policyGateIn} asked: reads the stamp and this instance's policy file again (one at a time). */
export async function catchUpPolicy(ctx: VaultContext): Promise<void> {
  const s = state(ctx);
  if (s.running !== null) return s.running;
  s.running = (async () => {
    try {
      await followPolicy(ctx);
    } finally {
      const stale = policyStaleness(ctx);
      s.tried = { pair: `${stale?.stored ?? ctx.policy.digest}/${ctx.policy.digest}`, at: performance.now() };
      s.running = null;
    }
  })();
  return s.running;
}

/**
 * Brings this instance's policy in line with the stamp the last reload stored: when the stored digest
 * differs from the policy in force, reloads from this instance's loader (its policy file) and puts
 * it in force if it changed; when they still differ, raises `policy_stale` (once per pair of
 * digests). A vault opened with a fixed policy cannot reload: it only says it is stale. Not audited:
 * the reload that caused it was, on the instance that did it.
 */
export async function followPolicy(ctx: VaultContext): Promise<void> {
  const stamp = await readStamp(ctx, ctx.store);
  if (stamp === null || ctx.closed) return;
  if (stamp.digest !== ctx.policy.digest && ctx.loadPolicy !== null) {
    const next = await loadOrBroken(ctx.loadPolicy);
    if (ctx.closed) return;
    if (next.digest !== ctx.policy.digest) {
      installPolicy(ctx, next);
      ctx.signals.emit({ type: "policy_reloaded", ok: next.error === undefined, remote: true });
    }
  }
  sayIfStale(ctx);
}

/** At start: raises `policy_stale` when the policy in force is not the one the last reload stored (no reload). */
export async function checkPolicyStamp(ctx: VaultContext): Promise<void> {
  await readStamp(ctx, ctx.store);
  if (!ctx.closed) sayIfStale(ctx);
}

/**
 * When a vault opens on a team's store (PostgreSQL; not SQLite, where only reloads stamp): reads the stamp and records it (for `stale` in the policy
 * version), raising nothing yet. A store that has no stamp (no reload ever ran) gets this vault's
 * policy and limits stamped as the ones in force (unless the policy is broken), so that an instance
 * started later with another file is stale rather than silently different: the first to open wins.
 * Not audited (no policy file was reloaded; the store only learns which one is in force).
 *
 * With `claimLimits` (a daemon starting, `lessor serve`), this vault's `[vault]` limits are put in
 * force if they are not the pinned ones, audited as `limits_pinned`: a restart with a changed
 * lessor.toml applies it, and every instance still on other limits grants nothing until it is
 * restarted with these. Without it (an embedded lessor command) the stamp's limits are left as they
 * are, except that a stamp of this same policy written before limits were pinned gets this vault's,
 * and one whose limits differ only in an older rule semantics is brought up to this lessor's.
 * A trail that refuses writes leaves the limits unclaimed (this instance is then the stale one).
 */
export async function openPolicyStamp(ctx: VaultContext, claimLimits: Identity | null = null): Promise<void> {
  if (!team(ctx)) return;
  const mine = limitsText(ctx.limits);
  const needs = (s: PolicyStamp | null): boolean =>
    s === null
      ? ctx.policy.error === undefined && ctx.policy.digest !== ""
      : // A daemon whose policy is stale claims nothing: it would leave no instance granting at all.
        s.limits !== mine && s.digest === ctx.policy.digest && (claimLimits !== null || s.limits === undefined || olderSemanticsOnly(s.limits, mine));
  let stamp = parsePolicyStamp(await ctx.store.getMeta(POLICY_META));
  if (needs(stamp)) {
    const write = async (tx: StoreTx, audit: AuditFn | null, now: number): Promise<PolicyStamp | null> => {
      const was = parsePolicyStamp(await tx.getMeta(POLICY_META));
      if (!needs(was)) return was;
      const next: PolicyStamp = was === null ? { digest: ctx.policy.digest, state: "ok", at: now, by: FIRST_OPEN, limits: mine } : { ...was, limits: mine };
      await tx.setMeta(POLICY_META, formatPolicyStamp(next));
      if (audit !== null && was !== null && was.limits !== undefined)
        await auditPinned(audit, claimLimits!, mine, was.limits);
      return next;
    };
    if (claimLimits === null) stamp = await ctx.store.transaction((tx) => write(tx, null, ctx.now()));
    else
      try {
        stamp = await commit(ctx, (tx, audit, now) => write(tx, audit, now));
      } catch {
        stamp = parsePolicyStamp(await ctx.store.getMeta(POLICY_META)); // stays stale: status and the log say so
      }
  }
  note(ctx, stamp);
}

/**
 * True when `stamped` differs from `mine` only in an older rule semantics (an older lessor wrote it):
 * any instance of this lessor may bring it up to date, which changes no `[vault]` limit and makes
 * instances of the older lessor grant nothing (they would read rules another way).
 */
function olderSemanticsOnly(stamped: string, mine: string): boolean {
  const diff = differingLimits(mine, stamped);
  if (diff.length !== 1 || diff[0] !== RULE_SEMANTICS_NAME) return false;
  const m = new RegExp(`(?:^| )${RULE_SEMANTICS_NAME}=([0-9]+)(?: |$)`).exec(stamped);
  return m === null || Number(m[1]) < RULE_SEMANTICS;
}

/** The `limits_pinned` event: `who` put `limits` in force over `previous`. */
function auditPinned(audit: AuditFn, who: Identity, limits: string, previous: string): Promise<unknown> {
  return audit({ type: "limits_pinned", actor: who, outcome: "ok", detail: { limits, previous, changed: differingLimits(limits, previous).join(",") } });
}

/**
 * Inside a reload's transaction: the limits its stamp keeps. A daemon's reload puts its own in force
 * (audited as `limits_pinned` when they change); any other (an embedded `lessor policy reload`) keeps
 * the limits in force as they are, so that a lessor.toml on an admin's laptop cannot change what the
 * daemons grant.
 */
export async function reloadLimitsIn(ctx: VaultContext, tx: StoreTx, audit: AuditFn, who: Identity): Promise<string | undefined> {
  const was = parsePolicyStamp(await tx.getMeta(POLICY_META));
  if (!ctx.claimsLimits) return was?.limits;
  const mine = limitsText(ctx.limits);
  if (was?.limits !== undefined && was.limits !== mine)
    await auditPinned(audit, who, mine, was.limits);
  return mine;
}

/** Records the stamp this process just committed (a reload here), so status says at once that it is in line. */
export function stampedHere(ctx: VaultContext, stamp: PolicyStamp): void {
  if (!shared(ctx)) return;
  note(ctx, stamp);
  sayIfStale(ctx);
}

/**
 * Re-reads the stamp for status() when the one recorded is older than a second (a shared store only;
 * never throws: an unreadable store leaves the last stamp read), so that status says whether the
 * policy in force here is stale.
 */
export async function refreshPolicyStamp(ctx: VaultContext): Promise<void> {
  if (shared(ctx) && performance.now() - state(ctx).readAt >= STAMP_MAX_AGE_MS) await readStamp(ctx, ctx.store).catch(() => null);
}
