/**
 * Refused calls, audited in aggregate past a burst. Every refusal was one `access_denied` row, and so
 * one durable commit: an authenticated agent looping on refused calls (a lease it does not hold, a
 * secret no grant gives it, guessed lease ids) could fill the disk with rows and slow every other
 * client with fsyncs. Failed authentications were already aggregated (./auth-failures.ts); this does
 * the same for callers that did authenticate.
 *
 * Refusals are tallied per **identity** (transport and identity id), in the windows of
 * `limits.authFailureWindowMs` (10 s by default):
 * - An identity's first {@link BURST} refusals in a window are written as before: one row each, in the
 *   refused call's own transaction, while the window's budget of {@link WINDOW_BUDGET} such rows lasts.
 * - Its later refusals are counted, not written: the call is refused all the same, and its transaction
 *   writes nothing. When the window closes (and when the vault closes) each identity with refusals
 *   counted writes **one** `access_denied` row: `detail.count` the refusals it stands for,
 *   `detail.reasons` how many of each error code, `detail.secrets` the first {@link MAX_SECRETS}
 *   secrets they named, `detail.since` the time of the first. A row without `count` stands for one
 *   refusal. Past the burst, which lease id each refusal named is not kept: a flood is itself the
 *   signal, and it shows as the count.
 * - An identity still refused when its window closes gets no new burst; one quiet for a whole window
 *   is forgotten. At most {@link MAX_IDENTITIES} are tallied at once; refusals of further identities are
 *   counted together under actor id `*` of their transport.
 *
 * A refusal is counted once its call's transaction has committed, so a call run again (a batch rerun,
 * a catch-up) counts once. Whether a refusal waits for a commit depends on its identity's count and
 * the budget, never on its reason: the time of an answer does not tell a lease that exists but is
 * another agent's from one that does not.
 */
import type { AuditDraft, Identity } from "../base/types.js";
import { AuditWindow, reasonsText, type Tally as WindowTally } from "./audit-window.js";
import type { VaultContext } from "./context.js";

/**
 * Refusals of one identity written one row each per window, before counting starts: more than a
 * failed hello's burst, since an authenticated caller's refusals are what an operator reads to see
 * what an agent tried (a mistake makes a few; only a loop makes more).
 */
export const BURST = 32;
/** Refusals written one row each per window, all identities together. */
export const WINDOW_BUDGET = 256;
/** Identities tallied at once; refusals of further identities are counted under actor id "*". */
export const MAX_IDENTITIES = 256;
/** Secrets named in one summary row, at most (the first ones the counted refusals named). */
export const MAX_SECRETS = 16;

/** One identity's refusals in the current window (reasons: by error code). */
interface Tally extends WindowTally {
  actor: Identity;
  /** `scope/name` of the secrets the counted refusals named, the first {@link MAX_SECRETS}. */
  secrets: Set<string>;
}

/** Summary drafts: written past the tally (see {@link isTallied}). */
const summaries = new WeakSet<AuditDraft>();

type RefusalLog = AuditWindow<Tally>;

function newLog(ctx: VaultContext): RefusalLog {
  return new AuditWindow<Tally>(ctx, {
    burst: BURST,
    budget: WINDOW_BUDGET,
    maxKeys: MAX_IDENTITIES,
    keyOf: (t) => identityKey(t.actor),
    overflow: (t) => newTally({ id: "*", role: t.actor.role, transport: t.actor.transport }, BURST),
    fresh: (t, written) => newTally(t.actor, written),
    merge: (into, from) => addSecrets(into, from.secrets),
    summary,
  });
}

function identityKey(actor: Identity): string {
  return `${actor.transport}\u0000${actor.id}`;
}

function newTally(actor: Identity, written: number): Tally {
  return { actor, written, count: 0, since: 0, reasons: new Map(), secrets: new Set() };
}

function addSecrets(t: Tally, names: Iterable<string | null | undefined>): void {
  for (const n of names) if (typeof n === "string" && t.secrets.size < MAX_SECRETS) t.secrets.add(n);
}

function tallyOf(log: RefusalLog, actor: Identity): Tally {
  return log.tally(identityKey(actor), () => newTally(actor, 0));
}

/** The error code at the head of a refusal's reason (`code: message`, src/vault/denied.ts). */
function codeOf(reason: string | null | undefined): string {
  const m = /^([a-z_]+):/.exec(reason ?? "");
  return m ? m[1]! : "refused";
}

/** The row standing for a tally's counted refusals. */
function summary(t: Tally): AuditDraft {
  const { text, top } = reasonsText(t.reasons);
  const draft: AuditDraft = {
    type: "access_denied",
    actor: t.actor,
    agent: t.actor.agent ?? null,
    outcome: "denied",
    reason: `${top ?? "several"}: ${t.count} refusals counted in this window (detail.reasons says why)`,
    detail: { count: t.count, since: t.since, reasons: text, ...(t.secrets.size > 0 ? { secrets: [...t.secrets].join(",") } : {}) },
  };
  summaries.add(draft);
  return draft;
}

const logs = new WeakMap<VaultContext, RefusalLog>();

function logOf(ctx: VaultContext): RefusalLog {
  let log = logs.get(ctx);
  if (log === undefined) logs.set(ctx, (log = newLog(ctx)));
  return log;
}

/** True for an `access_denied` draft that goes through the tally (not a summary this module made). */
export function isTallied(draft: AuditDraft): boolean {
  return draft.type === "access_denied" && draft.outcome === "denied" && !summaries.has(draft);
}

/** Decides for a refusal's draft ({@link isTallied}): true to write it now, false to count it once its call commits. */
export function admitRefusal(ctx: VaultContext, draft: AuditDraft): boolean {
  const log = logOf(ctx);
  // The vault is closing: written as before.
  return log.closed || log.admit(tallyOf(log, draft.actor));
}

/** Counts refusals that were not written, once their call's transaction committed. */
export function countRefusals(ctx: VaultContext, drafts: readonly AuditDraft[], now: number): void {
  if (drafts.length === 0) return;
  const log = logOf(ctx);
  for (const d of drafts) {
    const t = tallyOf(log, d.actor);
    log.count(t, codeOf(d.reason), now);
    addSecrets(t, [d.secret]);
  }
}

/** Closes the current window now: writes every refusal counted but not yet written. */
export function flushRefusals(ctx: VaultContext): Promise<void> {
  return logs.get(ctx)?.flush() ?? Promise.resolve();
}

/** The vault is closing: stops the window timer and writes every refusal still counted. */
export async function closeRefusals(ctx: VaultContext): Promise<void> {
  await logs.get(ctx)?.close();
}
