/**
 * The killswitch lockout. Pulling the killswitch revokes every lease not yet revoked or expired (used-up
 * ones too, so that a stream riding on a last use ends with them), withdraws every approval not yet
 * used (a person's decision from before the emergency must not grant after it), and engages a lockout kept in
 * the store's metadata, so that a restart and every other process sharing the store see it: while it is
 * engaged no lease is granted (request_lease, lease-and-access), until an admin releases it. Grants read
 * the flag inside their own transaction, so no grant commits after the killswitch did, in any process.
 * Status reads it through a short cache; {@link checkKillswitch} notices a change made by another
 * process and raises the killswitch signal, so a daemon closes its agents' connections.
 */
import { VaultError } from "../base/errors.js";
import type { Identity } from "../base/types.js";
import type { StoreReader, StoreTx } from "./ports.js";
import type { AuditFn, VaultContext } from "./context.js";
import { withdrawAll } from "./approvals.js";

/** The store metadata key holding the lockout (JSON of {@link KillswitchState}). */
export const KILLSWITCH_META = "killswitch";

/** How long a lockout state read from the store stands for it in status(). */
export const KILLSWITCH_MAX_AGE_MS = 1000;

/**
 * The lockout and its last change: when `engaged`, `at`/`by`/`reason` say when, by whom and why it
 * was engaged; when released, they describe the release (all null if it was never engaged).
 */
export interface KillswitchState {
  engaged: boolean;
  /** Epoch ms of the last change, or null. */
  at: number | null;
  /** Identity id of who made the last change, or null. */
  by: string | null;
  reason: string | null;
}

/** The state of a vault whose killswitch was never pulled. */
export const NEVER_ENGAGED: Readonly<KillswitchState> = Object.freeze({ engaged: false, at: null, by: null, reason: null });

const str = (v: unknown): string | null => (typeof v === "string" ? v.slice(0, 300) : null);

/**
 * Reads the stored lockout. A value that is not one lessor wrote (a damaged or edited row) counts as
 * engaged: the lockout fails closed, and an admin's release writes a good one.
 */
export function parseKillswitch(text: string | null): KillswitchState {
  if (text === null) return NEVER_ENGAGED;
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    o = null;
  }
  if (typeof o !== "object" || o === null || typeof (o as { engaged?: unknown }).engaged !== "boolean")
    return { engaged: true, at: null, by: null, reason: "the stored killswitch record is unreadable, so it counts as engaged" };
  const r = o as Record<string, unknown>;
  return { engaged: r.engaged as boolean, at: typeof r.at === "number" && Number.isFinite(r.at) ? r.at : null, by: str(r.by), reason: str(r.reason) };
}

/** The stored form of a state. */
export function formatKillswitch(state: KillswitchState): string {
  return JSON.stringify({ engaged: state.engaged, at: state.at, by: state.by, reason: state.reason });
}

/** Reads the lockout through `r` (a transaction, for grants; the store, for status). */
export async function readKillswitch(r: StoreReader): Promise<KillswitchState> {
  return parseKillswitch(await r.getMeta(KILLSWITCH_META));
}

/** One line on an engaged lockout: since when, by whom, why. */
export function describeEngaged(state: KillswitchState): string {
  const since = state.at === null ? "" : ` since ${new Date(state.at).toISOString()}`;
  const by = state.by === null ? "" : ` by ${state.by}`;
  const why = state.reason === null ? "" : ` (reason: ${JSON.stringify(state.reason)})`;
  return `the killswitch is engaged${since}${by}${why}`;
}

/** The refusal of a grant while the lockout is engaged. */
export function lockoutError(state: KillswitchState): VaultError {
  return new VaultError("access_denied", `${describeEngaged(state)}; no lease is granted until an admin releases it with lessor killswitch --release`);
}

const seen = new WeakMap<VaultContext, { state: KillswitchState; at: number }>();
/** Per vault: reads of the lockout started (and local changes recorded), and the latest of those applied. */
const reads = new WeakMap<VaultContext, { started: number; applied: number }>();

/**
 * Records `state` as this process's latest view (after a commit that changed it): a read of the
 * lockout started before it finishes as an older one (see {@link checkKillswitch}).
 */
export function sawKillswitch(ctx: VaultContext, state: KillswitchState): void {
  const r = reads.get(ctx);
  if (r !== undefined) r.applied = ++r.started;
  seen.set(ctx, { state, at: performance.now() });
}

/**
 * Drops this process's view, so that the next look reads the store (and raises the signal if the
 * lockout changed): for a transaction that engages it where the caller cannot record the outcome
 * after the commit (the dead-man switch, firing inside a grant).
 */
export function forgetKillswitch(ctx: VaultContext): void {
  seen.delete(ctx);
}

/** The lockout as status() reports it: this process's view if fresher than {@link KILLSWITCH_MAX_AGE_MS}, else read. */
export async function killswitchState(ctx: VaultContext): Promise<KillswitchState> {
  const s = seen.get(ctx);
  if (s !== undefined && performance.now() - s.at < KILLSWITCH_MAX_AGE_MS) return s.state;
  return checkKillswitch(ctx);
}

/** True when `a` and `b` are one engagement (its time and actor), or both released. */
function sameEngagement(a: KillswitchState, b: KillswitchState): boolean {
  return a.engaged === b.engaged && (!a.engaged || (a.at === b.at && a.by === b.by));
}

/**
 * Reads the stored lockout; when it differs from what this process last saw (another process pulled
 * or released the killswitch), raises the killswitch signal. Returns the state read.
 *
 * An engagement other than the one last seen (another time or actor) raises the signal too:
 * the killswitch was released and pulled again between two looks (this process cut off from the
 * store meanwhile, within one poll, or both changes of the change feed read at once), and the agent
 * connections opened here since the first pull must close as they did then. A read that finishes
 * after one started later is not taken as the latest.
 */
export async function checkKillswitch(ctx: VaultContext): Promise<KillswitchState> {
  let r = reads.get(ctx);
  if (r === undefined) reads.set(ctx, (r = { started: 0, applied: 0 }));
  const mine = ++r.started;
  const state = await readKillswitch(ctx.store);
  if (mine < r.applied) return state;
  r.applied = mine;
  const before = seen.get(ctx)?.state ?? NEVER_ENGAGED;
  seen.set(ctx, { state, at: performance.now() });
  if (!sameEngagement(before, state)) ctx.signals.emit({ type: "killswitch", engaged: state.engaged });
  return state;
}

/**
 * The killswitch itself, inside a transaction: engages the lockout (keeping the first engagement's
 * time, actor and reason when it is engaged already), revokes every unexpired lease (used up or not),
 * withdraws every approval not yet used (src/vault/approvals.ts withdrawAll: an approval given before
 * the emergency is a lease in waiting, and the release must not revive it), and audits it as done
 * by `who`. The caller checks the role, and afterwards records the state ({@link sawKillswitch}) and
 * raises the signal.
 */
export async function engageKillswitchIn(tx: StoreTx, audit: AuditFn, now: number, who: Identity, reason: string): Promise<{ revoked: number; state: KillswitchState }> {
  const before = await readKillswitch(tx);
  const state: KillswitchState = before.engaged ? before : { engaged: true, at: now, by: who.id, reason };
  if (!before.engaged) await tx.setMeta(KILLSWITCH_META, formatKillswitch(state));
  const revoked = await tx.revokeLeases({ all: true }, now, reason);
  const withdrawn = await withdrawAll(tx, audit, now, who);
  await audit({ type: "killswitch", actor: who, outcome: "ok", reason, detail: { count: revoked, engaged: true, already_engaged: before.engaged, approvals_withdrawn: withdrawn } });
  return { revoked, state };
}
