/**
 * The window that aggregated audit rows share: failed authentications (./auth-failures.ts) and
 * refused calls (./refusals.ts). Events are tallied by a key (a source, an identity). Time is cut into
 * windows of `limits.authFailureWindowMs`:
 * - a key's first `burst` events in a window are written one row each, while the window's `budget` of
 *   such rows lasts ({@link AuditWindow.admit});
 * - later ones are counted ({@link AuditWindow.count}); when the window closes (and at close) each key
 *   with events counted is written as one summary row, all in one commit; counts of a summary that
 *   could not be written are kept for the next window;
 * - a key still counting when its window closes gets no new burst; a key quiet for a whole window is
 *   forgotten; past `maxKeys` keys, events are tallied under the overflow key the caller names.
 */
import type { AuditDraft } from "../base/types.js";
import { commit, type VaultContext } from "./context.js";

/** What every tally holds; callers add their own fields. */
export interface Tally {
  /** Rows written one each this window (`burst` when the key has no burst left). */
  written: number;
  /** Events counted, not yet written. */
  count: number;
  /** Time of the first event counted. */
  since: number;
  /** Events counted, by reason (at most 32 reasons). */
  reasons: Map<string, number>;
}

/** How one kind of aggregated event is tallied and summarised. */
export interface WindowRules<T extends Tally> {
  burst: number;
  budget: number;
  maxKeys: number;
  /** The key of a tally (so that a summary not written goes back to it). */
  keyOf(t: T): string;
  /** The tally events like `t`'s are counted under past `maxKeys` keys (its burst spent). */
  overflow(t: T): T;
  /** A fresh tally like `t` (same key), with `written` rows of its burst spent. */
  fresh(t: T, written: number): T;
  /** Adds what `from` holds beyond the common fields into `into` (a summary put back). */
  merge?(into: T, from: T): void;
  /** The row standing for a tally's counted events. */
  summary(t: T): AuditDraft;
}

/** The tallies of one kind of event, for one vault. */
export class AuditWindow<T extends Tally> {
  readonly #ctx: VaultContext;
  readonly #rules: WindowRules<T>;
  #tallies = new Map<string, T>();
  /** Rows written one each this window, all keys together. */
  #spent = 0;
  #timer: ReturnType<typeof setInterval> | null = null;
  #closed = false;
  /** The summaries' commit under way, if any: close() waits for it (its counts may come back). */
  #writing: Promise<void> | null = null;

  constructor(ctx: VaultContext, rules: WindowRules<T>) {
    this.#ctx = ctx;
    this.#rules = rules;
  }

  /** True once {@link close} began. */
  get closed(): boolean {
    return this.#closed;
  }

  /** How many keys tallied now begin with `prefix`. */
  keysWith(prefix: string): number {
    let n = 0;
    for (const k of this.#tallies.keys()) if (k.startsWith(prefix)) n++;
    return n;
  }

  /** True when `key` has a tally now. */
  has(key: string): boolean {
    return this.#tallies.has(key);
  }

  /** The tally under `key`, made by `make` if needed (or the overflow key's, past `maxKeys`). */
  tally(key: string, make: () => T): T {
    let t = this.#tallies.get(key);
    if (t !== undefined) return t;
    if (this.#tallies.size >= this.#rules.maxKeys) {
      const over = this.#rules.overflow(make());
      const k = this.#rules.keyOf(over);
      t = this.#tallies.get(k);
      if (t === undefined) this.#tallies.set(k, (t = over));
      return t;
    }
    this.#tallies.set(key, (t = make()));
    return t;
  }

  /** True when an event of `t` may be written now (one of its burst, within the budget); false: count it. */
  admit(t: T): boolean {
    this.#start();
    if (t.written >= this.#rules.burst || this.#spent >= this.#rules.budget) return false;
    t.written++;
    this.#spent++;
    return true;
  }

  /**
   * Gives back an admission of `t` whose row was not written after all (its transaction rolled back,
   * or is run again and admits anew). Nothing once `t`'s window has closed: the new window started
   * from zero.
   */
  release(t: T): void {
    if (t.written === 0 || this.#tallies.get(this.#rules.keyOf(t)) !== t) return;
    t.written--;
    if (this.#spent > 0) this.#spent--;
  }

  /** Counts an event of `t` that was not written. */
  count(t: T, reason: string, now: number): void {
    if (t.count === 0) t.since = now;
    t.count++;
    if (t.reasons.size < 32 || t.reasons.has(reason)) t.reasons.set(reason, (t.reasons.get(reason) ?? 0) + 1);
    this.#start();
  }

  #start(): void {
    if (this.#timer !== null || this.#closed) return;
    this.#timer = setInterval(() => {
      this.flush().catch(() => {
        // Kept for the next window; close() reports a last failure.
      });
    }, this.#ctx.limits.authFailureWindowMs);
    this.#timer.unref?.();
  }

  /** Closes the window: one row per key with events counted; forgets keys that had none. */
  async flush(): Promise<void> {
    const due: T[] = [];
    const next = new Map<string, T>();
    for (const [key, t] of this.#tallies) {
      if (t.count === 0) continue;
      due.push(t);
      // Still counting: no new burst for this key next window.
      if (!this.#closed) next.set(key, this.#rules.fresh(t, this.#rules.burst));
    }
    this.#tallies = next;
    this.#spent = 0;
    if (next.size === 0 && this.#timer !== null) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
    if (due.length === 0) return;
    const writing = commit(this.#ctx, async (_tx, audit) => {
      for (const t of due) await audit(this.#rules.summary(t));
    }).then(
      () => undefined,
      (e: unknown) => {
        for (const t of due) this.#putBack(t);
        throw e;
      },
    );
    const settled = writing.then(
      () => undefined,
      () => undefined,
    );
    this.#writing = settled;
    void settled.then(() => {
      if (this.#writing === settled) this.#writing = null;
    });
    await writing;
  }

  /** Puts back the counts of a summary that could not be written. */
  #putBack(t: T): void {
    const key = this.#rules.keyOf(t);
    let into = this.#tallies.get(key);
    if (into === undefined) this.#tallies.set(key, (into = this.#rules.fresh(t, this.#rules.burst)));
    if (into.count === 0 || t.since < into.since) into.since = t.since;
    into.count += t.count;
    for (const [r, n] of t.reasons) into.reasons.set(r, (into.reasons.get(r) ?? 0) + n);
    this.#rules.merge?.(into, t);
    this.#start();
  }

  /**
   * Stops the timer and writes what is counted, after any summaries' commit under way has settled (a
   * failed one puts its counts back, and they are written here); throws if this last write fails.
   */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    while (this.#writing !== null) await this.#writing;
    await this.flush();
  }
}

/** `reasons` as "a ×3; b ×1" (most first, at most 500 characters), and the reason a summary row gives. */
export function reasonsText(reasons: Map<string, number>): { text: string; top: string | null } {
  const sorted = [...reasons].sort((a, b) => b[1] - a[1]);
  const text = sorted.map(([r, n]) => `${r} ×${n}`).join("; ");
  return { text: text.length > 500 ? `${text.slice(0, 499)}…` : text, top: sorted.length === 1 ? sorted[0]![0] : null };
}
