/**
 * The heartbeat dead-man switch. With `[vault] heartbeat = "8h"` in lessor.toml, an admin (the person
 * watching the agents, or a supervisor they trust with an admin token) must check in at least that
 * often (`lessor heartbeat`). When none came for that long, the killswitch is pulled on its own: every
 * live lease revoked, every grant refused until an admin releases it. Agents left running unattended
 * lose their credentials when no one is watching.
 *
 * The last heartbeat is kept in the store (metadata `heartbeat`: `{at, by}`), so every process sharing
 * it agrees. The deadline is checked inside every grant's, use's and renewal's transaction (so no lease
 * is granted, used or extended past it, daemon or not), and by the daemon once a second (so live leases end and
 * agents' connections close within about a second of it, even when no one asks for anything).
 *
 * The switch arms when a vault is opened with the setting and no heartbeat is stored (the deadline
 * counts from then), and with every heartbeat; releasing the killswitch counts as one. A heartbeat or
 * release that comes after the deadline, when nothing fired the switch yet (no daemon watching, nothing
 * asked), fires it first ({@link missedDeadlineIn}): a late check-in never revives what the switch
 * would have ended at the deadline. A stored record
 * lessor cannot read (an empty one too), one dated more than {@link HEARTBEAT_FUTURE_SLACK_MS} ahead of
 * the clock (lessor dates each at the moment it writes it), and no record at all once the vault is open
 * (lessor never deletes it: it was deleted under it) count as a heartbeat at time 0: past due, so the
 * switch fails closed. The record is not authenticated: someone who can write the database can store
 * a current one again and again, but they can as well clear the killswitch itself (./lockout.ts), so
 * that is a known limit of the database's writers (docs/security.md), not something a MAC here would close.
 * Without the setting nothing is read or checked.
 */
import { checkPlainText } from "../base/text.js";
import { VaultError } from "../base/errors.js";
import type { Identity } from "../base/types.js";
import { roleError } from "./access.js";
import { commit, type AuditFn, type VaultContext } from "./context.js";
import { denied } from "./denied.js";
import { formatDuration } from "./duration.js";
import { pinnedLimit } from "./limits.js";
import { engageKillswitchIn, forgetKillswitch, readKillswitch, sawKillswitch, type KillswitchState } from "./lockout.js";
import type { StoreReader, StoreTx } from "./ports.js";
import { policyStaleness } from "./policy-state.js";
import { parsePolicyStamp, POLICY_META, type PolicyStamp } from "./policy-sync.js";

/** The store metadata key holding the last heartbeat (JSON of {@link HeartbeatRecord}). */
export const HEARTBEAT_META = "heartbeat";

/** Who the switch acts as when it fires, and when it arms. */
export const DEADMAN_IDENTITY: Identity = Object.freeze({ id: "dead-man-switch", role: "admin", transport: "internal" });

/** The last heartbeat: when (epoch ms) and by whom (an identity id). */
export interface HeartbeatRecord {
  at: number;
  by: string;
}

/** What a heartbeat, or a look at the switch, reports. */
export interface HeartbeatStatus {
  /** The configured period in ms, or null when the switch is off. */
  everyMs: number | null;
  /** When the last heartbeat was recorded (epoch ms); 0 for a record that counts as past due (unreadable, dated ahead, missing); null when the switch is off. */
  lastAt: number | null;
  /** Who sent it (an identity id; shown to admins only, else null). */
  lastBy: string | null;
  /** When the switch fires unless another heartbeat comes (epoch ms), or null when it is off. */
  dueAt: number | null;
}

/**
 * Reads a stored record: null when none is stored; one lessor did not write (an empty one included:
 * lessor never writes that) counts as a heartbeat at time 0 (past due).
 */
export function parseHeartbeat(text: string | null): HeartbeatRecord | null {
  if (text === null) return null;
  try {
    const o = JSON.parse(text) as { at?: unknown; by?: unknown };
    if (typeof o.at === "number" && Number.isFinite(o.at) && typeof o.by === "string") return { at: o.at, by: o.by.slice(0, 300) };
  } catch {
    // falls through: unreadable
  }
  return { at: 0, by: UNREADABLE };
}

/** Reads the last heartbeat through `r` (a transaction, or the store). */
export async function readHeartbeat(r: Pick<StoreReader, "getMeta">): Promise<HeartbeatRecord | null> {
  return parseHeartbeat(await r.getMeta(HEARTBEAT_META));
}

/**
 * How far ahead of the clock a stored heartbeat may be dated and still count: lessor dates a record
 * when it writes it, so only a clock stepped back since (an NTP correction, a resumed VM) puts one
 * ahead. One dated further ahead is not lessor's: it would hold the switch off until then.
 */
export const HEARTBEAT_FUTURE_SLACK_MS = 3600_000;

/** Who the heartbeats at time 0 that stand for a record lessor cannot count are "by", and the reason's words for each. */
const UNREADABLE = "(an unreadable heartbeat record)";
const FROM_THE_FUTURE = "(a heartbeat record dated in the future)";
const MISSING = "(no heartbeat record: it was deleted)";
const SENTINELS: Record<string, string> = {
  [UNREADABLE]: "an unreadable heartbeat record",
  [FROM_THE_FUTURE]: "a heartbeat record dated in the future",
  [MISSING]: "no heartbeat record (it was deleted from the database)",
};

/**
 * `stored` (read with the switch on) as the switch counts it at `now`: one dated too far ahead, and
 * none at all, are a heartbeat at time 0. None at all is not "not armed yet": the vault arms the switch
 * when it opens (armHeartbeat), and lessor never deletes the record, so it was deleted under the vault.
 */
function counted(stored: HeartbeatRecord | null, now: number): HeartbeatRecord {
  if (stored === null) return { at: 0, by: MISSING };
  return stored.at <= now + HEARTBEAT_FUTURE_SLACK_MS ? stored : { at: 0, by: FROM_THE_FUTURE };
}

function dueAt(ctx: VaultContext, last: HeartbeatRecord | null, every: number | null = ctx.limits.heartbeatMs): number | null {
  return every === null || last === null ? null : last.at + every;
}

/** The reason the switch gives when it fires. */
function firedReason(ctx: VaultContext, last: HeartbeatRecord, every: number | null = ctx.limits.heartbeatMs): string {
  const since = last.at !== 0 ? new Date(last.at).toISOString() : (SENTINELS[last.by] ?? SENTINELS[UNREADABLE]!);
  return `dead-man switch: no heartbeat for ${formatDuration(every ?? 0)} (the last: ${since})`;
}

/**
 * Inside a transaction that has read `beat` with {@link heartbeatIn} (null when the switch is off, or
 * when the caller checked it earlier in the transaction): when the deadline has passed, pulls the
 * killswitch as {@link DEADMAN_IDENTITY} and returns the lockout now in force; otherwise null. The
 * caller then refuses what it was doing with lockoutError(state).
 */
export async function deadmanIn(
  ctx: VaultContext,
  tx: StoreTx,
  audit: AuditFn,
  now: number,
  beat: HeartbeatRead | null,
  every: number | null = ctx.limits.heartbeatMs,
): Promise<KillswitchState | null> {
  if (beat === null) return null;
  const last = counted(beat.stored, now);
  const due = dueAt(ctx, last, every);
  if (due === null || now <= due) return null;
  const { state } = await engageKillswitchIn(tx, audit, now, DEADMAN_IDENTITY, firedReason(ctx, last, every));
  // The caller refuses and its commit throws: the next look at the lockout (status, the daemon's
  // once-a-second check, which then raises the signal) must read what this commit stored.
  forgetKillswitch(ctx);
  return state;
}

/** True when the limits pinned on a shared store are not this instance's (src/vault/policy-sync.ts). */
export function limitsStale(ctx: VaultContext): boolean {
  return policyStaleness(ctx)?.limits !== undefined;
}

/** What {@link heartbeatIn} read: the stored record, null when none is stored (which counts as past due). */
export interface HeartbeatRead {
  readonly stored: HeartbeatRecord | null;
}

/** Reads the last heartbeat in `tx` when the switch is on; null (nothing read) when it is off. */
export function heartbeatIn(ctx: VaultContext, tx: StoreTx): Promise<HeartbeatRead> | null {
  return ctx.limits.heartbeatMs === null ? null : readHeartbeat(tx).then((stored) => ({ stored }));
}

/**
 * Records a heartbeat by `who` (admin only): the switch's deadline moves to now + the period. Audited
 * (`heartbeat`). It does not release a killswitch the switch (or anyone) pulled: that is
 * `lessor killswitch --release`. With the switch off it is recorded all the same, and `everyMs` says so.
 */
export async function heartbeat(ctx: VaultContext, who: Identity, reasonIn?: string): Promise<HeartbeatStatus> {
  const reason = reasonIn === undefined ? null : checkPlainText(reasonIn, "a heartbeat note", 200);
  const got = await commit(ctx, async (tx, audit, now) => {
    const err = roleError(who, ["admin"], "send the heartbeat");
    if (err) return denied(audit, who, err, {});
    // An instance whose limits are not the ones in force cannot judge the deadline in force (its own
    // period is not it), so it could not fire a missed one first: it records no heartbeat.
    if (limitsStale(ctx))
      return denied(audit, who, new VaultError("unavailable", "this lessor instance's [vault] limits are not the ones in force on the shared database, so it cannot tell whether the dead-man deadline has passed; send the heartbeat through an instance whose limits are in force (or restart this one with them)"), {});
    // A heartbeat after the deadline is too late: the switch fires first (as a watching daemon would
    // have), then the heartbeat is recorded, as one sent to an engaged killswitch is.
    const fired = await missedDeadlineIn(ctx, tx, audit, now);
    return { status: await recordIn(ctx, tx, audit, now, who, reason), fired };
  });
  if (got.fired) firedSignal(ctx, got.fired);
  return got.status;
}

/**
 * Inside the transaction of an admin's heartbeat or killswitch release, before it records the
 * heartbeat: when the deadline has passed and the switch has not fired (no daemon or long-lived
 * command was watching, and nothing was asked since), it fires now, as it would have at the deadline.
 * Otherwise the late heartbeat would move the deadline over the missed one, and the leases granted
 * before it (which a watching daemon would have revoked) would work again. Returns the lockout it
 * engaged, or null (the switch off, not due, already engaged, or this instance's limits stale).
 */
export async function missedDeadlineIn(ctx: VaultContext, tx: StoreTx, audit: AuditFn, now: number): Promise<KillswitchState | null> {
  if (ctx.limits.heartbeatMs === null || limitsStale(ctx)) return null;
  const [lockout, beat] = await Promise.all([readKillswitch(tx), heartbeatIn(ctx, tx)]);
  if (lockout.engaged) return null;
  return deadmanIn(ctx, tx, audit, now, beat);
}

/** After the commit in which the switch fired: records the lockout and raises the signal (a server closes its agents' connections). */
export function firedSignal(ctx: VaultContext, state: KillswitchState): void {
  sawKillswitch(ctx, state);
  ctx.signals.emit({ type: "killswitch", engaged: true });
}

/** Writes and audits a heartbeat by `who` inside a transaction. */
export async function recordIn(ctx: VaultContext, tx: StoreTx, audit: AuditFn, now: number, who: Identity, reason: string | null, armed = false): Promise<HeartbeatStatus> {
  const last = { at: now, by: who.id };
  await tx.setMeta(HEARTBEAT_META, JSON.stringify(last));
  const status = { everyMs: ctx.limits.heartbeatMs, lastAt: now, lastBy: who.id, dueAt: dueAt(ctx, last) };
  await audit({ type: "heartbeat", actor: who, outcome: "ok", reason, detail: { every_ms: status.everyMs, due_at: status.dueAt, ...(armed ? { armed: true } : {}) } });
  return status;
}

/** The switch as stored now (for status); `lastBy` only for an admin `who`. */
export async function heartbeatStatus(ctx: VaultContext, who: Identity): Promise<HeartbeatStatus> {
  const last = ctx.limits.heartbeatMs === null ? null : counted(await readHeartbeat(ctx.store), ctx.now());
  return { everyMs: ctx.limits.heartbeatMs, lastAt: last?.at ?? null, lastBy: who.role === "admin" ? (last?.by ?? null) : null, dueAt: dueAt(ctx, last) };
}

/**
 * Arms the switch when it is on and no heartbeat is stored (a vault opened with the setting for the
 * first time): the deadline counts from now. Audited as a heartbeat by {@link DEADMAN_IDENTITY} with
 * `armed: true`. Does nothing otherwise.
 */
export async function armHeartbeat(ctx: VaultContext): Promise<void> {
  if (ctx.limits.heartbeatMs === null || limitsStale(ctx)) return;
  if ((await ctx.store.getMeta(HEARTBEAT_META)) !== null) return;
  await commit(ctx, async (tx, audit, now) => {
    if ((await tx.getMeta(HEARTBEAT_META)) !== null) return;
    await recordIn(ctx, tx, audit, now, DEADMAN_IDENTITY, "armed: [vault] heartbeat is set and no heartbeat was stored", true);
  });
}

/**
 * The dead-man period `stamp` pins as in force on a shared store (ms), null when it pins the switch
 * off, or undefined when it pins no heartbeat lessor can read.
 */
function pinnedHeartbeat(stamp: PolicyStamp | null): number | null | undefined {
  const v = stamp?.limits === undefined ? undefined : pinnedLimit(stamp.limits, "heartbeatMs");
  if (v === undefined) return undefined;
  if (v === "off") return null;
  const n = /^[0-9]{1,16}$/.test(v) ? Number(v) : NaN;
  return Number.isSafeInteger(n) && n >= MIN_HEARTBEAT_MS && n <= MAX_HEARTBEAT_MS ? n : undefined;
}

/**
 * Fires the switch when its deadline has passed and the killswitch is not engaged (the daemon calls
 * this once a second, so that live leases end even when nothing is asked). Returns true when it fired.
 *
 * An instance whose limits are not the ones in force (another daemon started with others) does not
 * fire by its own period but by the one in force, which the policy stamp pins (read in the firing
 * transaction): firing is a brake, and when the instances in line are down (killed, say) no other
 * would. Only on a deadline some instance armed: with no record stored it leaves the arming to the
 * instances in line (one may be arming it now).
 */
export async function checkDeadman(ctx: VaultContext): Promise<boolean> {
  const stale = limitsStale(ctx);
  if (ctx.limits.heartbeatMs === null && !stale) return false;
  const period = async (r: Pick<StoreReader, "getMeta">): Promise<number | null> => (stale ? (pinnedHeartbeat(parsePolicyStamp(await r.getMeta(POLICY_META))) ?? null) : ctx.limits.heartbeatMs);
  const now = ctx.now();
  const every = await period(ctx.store);
  const stored = every === null ? null : await readHeartbeat(ctx.store);
  if (every === null || (stale && stored === null)) return false;
  if (now <= counted(stored, now).at + every) return false;
  if ((await readKillswitch(ctx.store)).engaged) return false;
  const state = await commit(ctx, async (tx, audit, now) => {
    if ((await readKillswitch(tx)).engaged) return null;
    const p = await period(tx);
    const beat = p === null ? null : await readHeartbeat(tx);
    if (p === null || (stale && beat === null)) return null;
    return deadmanIn(ctx, tx, audit, now, { stored: beat }, p);
  });
  if (state === null) return false;
  firedSignal(ctx, state);
  return true;
}

/** The shortest and longest heartbeat periods allowed. */
export const MIN_HEARTBEAT_MS = 2000;
export const MAX_HEARTBEAT_MS = 366 * 24 * 3600_000;
