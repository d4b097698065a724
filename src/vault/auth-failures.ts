/**
 * Failed authentications, audited in aggregate. Every refused hello used to be one audit row, and so
 * one durable commit (an fsync): a flood of bad tokens or unmapped uids became a flood of fsyncs that
 * slowed every other client, and a trail of thousands of identical rows.
 *
 * Now failures are tallied per **source**: the transport plus the peer when known (`uid` for a Unix
 * socket, `remote` for TCP; the token check does not know its peer, so there the source is the
 * transport). Time is cut into windows of `limits.authFailureWindowMs` (10 s by default).
 * - A source's first {@link BURST} failures in a window are written at once, one row each, as before
 *   (the reason and detail as given), while the window's budget of {@link WINDOW_BUDGET} such rows
 *   lasts.
 * - Its later failures are counted, not written. When the window closes (and when the vault closes)
 *   each source with failures counted writes **one** row: type `auth_failed`, `detail.count` the
 *   failures it stands for, `detail.reasons` how many of each reason, `detail.token_ids` up to
 *   {@link MAX_TOKEN_IDS} token ids named (public ids, never a token's secret), `detail.since` the
 *   time of the first, plus `uid` or `remote`. A row without `count` stands for one failure.
 * - A source still failing when its window closes gets no new burst: while a flood goes on it costs
 *   one row per window. A source quiet for a whole window is forgotten.
 * - At most {@link MAX_SOURCES} sources are tallied at once; failures from further sources are
 *   counted together under `peer: "*"` of their transport (a client choosing among loopback
 *   addresses cannot make every connection a new source).
 *
 * Whether a failure waits for a commit depends on its source's count and the window's budget, never
 * on its reason: a known token id with a wrong secret and an unknown id cost the same, so timing
 * tells nothing about which token ids exist.
 *
 * All summaries of a window share one commit. A summary that cannot be written keeps its counts for
 * the next window; {@link closeAuthFailures} makes the last attempt and throws if it fails.
 */
import { commit, type VaultContext } from "./context.js";
import { VaultError } from "../base/errors.js";
import type { AuditDraft, Identity } from "../base/types.js";

/** Failures of one source written one row each per window, before counting starts. */
export const BURST = 8;
/** Failures written one row each per window, all sources together. */
export const WINDOW_BUDGET = 64;
/** Sources tallied at once; failures from further sources are counted under peer "*". */
export const MAX_SOURCES = 256;
/** Token ids named in one summary row, at most. */
export const MAX_TOKEN_IDS = 8;

type Detail = Record<string, string | number | boolean | null>;

/** One source's failures in the current window. */
interface Tally {
  transport: string;
  /** The detail field naming the peer, or null (unknown, or the overflow source "*"). */
  peerField: "uid" | "remote" | null;
  peer: string | number | null;
  /** Rows written one each this window (BURST when the source has no burst left). */
  written: number;
  /** Failures counted, not yet written. */
  count: number;
  since: number;
  reasons: Map<string, number>;
  tokenIds: Set<string>;
}

/** The tallies of one vault. */
class AuthFailureLog {
  readonly #ctx: VaultContext;
  #sources = new Map<string, Tally>();
  /** Rows written one each this window, all sources together. */
  #spent = 0;
  #timer: ReturnType<typeof setInterval> | null = null;
  #closed = false;

  constructor(ctx: VaultContext) {
    this.#ctx = ctx;
  }

  async record(transport: string, reason: string, detail: Detail | null): Promise<void> {
    if (this.#ctx.closed || this.#closed) throw new VaultError("unavailable", "the vault is closed; open it again");
    const tally = this.#tallyFor(transport, detail);
    this.#start();
    if (tally.written >= BURST || this.#spent >= WINDOW_BUDGET) {
      count(tally, reason, detail, this.#ctx.now());
      return;
    }
    tally.written++;
    this.#spent++;
    try {
      await commit(this.#ctx, async (_tx, audit) => {
        await audit({ type: "auth_failed", actor: unknownActor(transport), outcome: "denied", reason, detail });
      });
    } catch (e) {
      // Not written: counted instead, so a later summary has it (the source may be gone from the
      // map if a window closed meanwhile).
      count(this.#tallyFor(transport, detail), reason, detail, this.#ctx.now());
      throw e;
    }
  }

  /** The source's tally, made if needed (or the overflow source's, past MAX_SOURCES). */
  #tallyFor(transport: string, detail: Detail | null): Tally {
    const { field, peer } = peerOf(detail);
    const key = sourceKey(transport, field, peer);
    let t = this.#sources.get(key);
    if (t !== undefined) return t;
    if (this.#sources.size >= MAX_SOURCES) {
      const over = sourceKey(transport, null, "*");
      t = this.#sources.get(over);
      if (t === undefined) this.#sources.set(over, (t = newTally(transport, null, "*", BURST)));
      return t;
    }
    this.#sources.set(key, (t = newTally(transport, field, peer, 0)));
    return t;
  }

  #start(): void {
    if (this.#timer !== null || this.#closed) return;
    this.#timer = setInterval(() => {
      this.flush().catch(() => {
        // Kept for the next window; closeAuthFailures reports a last failure.
      });
    }, this.#ctx.limits.authFailureWindowMs);
    this.#timer.unref?.();
  }

  /** Closes the window: one row per source with failures counted; forgets sources that had none. */
  async flush(): Promise<void> {
    const due: Tally[] = [];
    const next = new Map<string, Tally>();
    for (const [key, t] of this.#sources) {
      if (t.count === 0) continue;
      due.push(t);
      // Still failing: no new burst for this source next window.
      if (!this.#closed) next.set(key, newTally(t.transport, t.peerField, t.peer, BURST));
    }
    this.#sources = next;
    this.#spent = 0;
    if (next.size === 0 && this.#timer !== null) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
    if (due.length === 0) return;
    try {
      await commit(this.#ctx, async (_tx, audit) => {
        for (const t of due) await audit(summary(t));
      });
    } catch (e) {
      for (const t of due) this.#putBack(t);
      throw e;
    }
  }

  /** Puts back the counts of a summary that could not be written. */
  #putBack(t: Tally): void {
    const key = sourceKey(t.transport, t.peerField, t.peer);
    let into = this.#sources.get(key);
    if (into === undefined) this.#sources.set(key, (into = newTally(t.transport, t.peerField, t.peer, BURST)));
    if (into.count === 0 || t.since < into.since) into.since = t.since;
    into.count += t.count;
    for (const [r, n] of t.reasons) into.reasons.set(r, (into.reasons.get(r) ?? 0) + n);
    for (const id of t.tokenIds) if (into.tokenIds.size < MAX_TOKEN_IDS) into.tokenIds.add(id);
    this.#start();
  }

  /** Stops the timer and writes what is counted; later failures are refused (the vault is closing). */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    await this.flush();
  }
}

function sourceKey(transport: string, field: Tally["peerField"], peer: Tally["peer"]): string {
  return `${transport}\u0000${field ?? ""}\u0000${String(peer ?? "")}`;
}

function unknownActor(transport: string): Identity {
  return { id: "unknown", role: "agent", transport };
}

function peerOf(detail: Detail | null): { field: Tally["peerField"]; peer: Tally["peer"] } {
  const uid = detail?.uid;
  if (typeof uid === "number") return { field: "uid", peer: uid };
  const remote = detail?.remote;
  if (typeof remote === "string") return { field: "remote", peer: remote };
  return { field: null, peer: null };
}

function newTally(transport: string, peerField: Tally["peerField"], peer: Tally["peer"], written: number): Tally {
  return { transport, peerField, peer, written, count: 0, since: 0, reasons: new Map(), tokenIds: new Set() };
}

function count(t: Tally, reason: string, detail: Detail | null, now: number): void {
  if (t.count === 0) t.since = now;
  t.count++;
  if (t.reasons.size < 32 || t.reasons.has(reason)) t.reasons.set(reason, (t.reasons.get(reason) ?? 0) + 1);
  const id = detail?.token_id;
  if (typeof id === "string" && t.tokenIds.size < MAX_TOKEN_IDS) t.tokenIds.add(id);
}

/** The row standing for a tally's counted failures. */
function summary(t: Tally): AuditDraft {
  const reasons = [...t.reasons].sort((a, b) => b[1] - a[1]);
  const text = reasons.map(([r, n]) => `${r} ×${n}`).join("; ");
  const detail: Detail = { count: t.count, since: t.since, reasons: text.length > 500 ? `${text.slice(0, 499)}…` : text };
  if (t.peerField !== null) detail[t.peerField] = t.peer;
  else if (t.peer === "*") detail.peer = "*";
  if (t.tokenIds.size > 0) detail.token_ids = [...t.tokenIds].join(",");
  const reason = reasons.length === 1 ? reasons[0]![0] : "several reasons (see detail.reasons)";
  return { type: "auth_failed", actor: unknownActor(t.transport), outcome: "denied", reason, detail };
}

const logs = new WeakMap<VaultContext, AuthFailureLog>();

/**
 * Audits a failed authentication, in aggregate (see the module comment): written before this
 * resolves while its source's burst lasts; otherwise counted, and written with the others once per
 * window. `reason` and `detail` must never hold a secret (a token's secret part, a passphrase).
 */
export function recordAuthFailure(ctx: VaultContext, transport: string, reason: string, detail: Detail | null): Promise<void> {
  let log = logs.get(ctx);
  if (log === undefined) logs.set(ctx, (log = new AuthFailureLog(ctx)));
  return log.record(transport, reason, detail);
}

/** Closes the current window now: writes every failure counted but not yet written. */
export function flushAuthFailures(ctx: VaultContext): Promise<void> {
  return logs.get(ctx)?.flush() ?? Promise.resolve();
}

/** The vault is closing: stops the window timer and writes every failure still counted. */
export async function closeAuthFailures(ctx: VaultContext): Promise<void> {
  await logs.get(ctx)?.close();
}
