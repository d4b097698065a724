/**
 * Failed authentications, audited in aggregate. Every refused hello used to be one audit row, and so
 * one durable commit (an fsync): a flood of bad tokens or unmapped uids became a flood of fsyncs that
 * slowed every other client, and a trail of thousands of identical rows.
 *
 * Now failures are tallied per **source**: the transport plus the peer when known — `remote` when
 * the detail names one (a TCP address, a VM guest's `vm:<name>` or `cid:<n>`), else `uid` (a Unix
 * socket). A remote comes first because it is the narrower: every Firecracker VM's connections
 * arrive from the same uid (the daemon's, or Firecracker's), so grouping them by uid would let one
 * VM's flood hide another's failures under a row naming no VM. A token check names the peer's
 * address when its transport knows one (TCP); where none is named (an embedded vault, a Unix-socket
 * token client) the source is the transport. Time is cut into windows of
 * `limits.authFailureWindowMs` (10 s by default).
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
 * The window's mechanics are shared with refused calls (./audit-window.ts, ./refusals.ts).
 *
 * All summaries of a window share one commit. A summary that cannot be written keeps its counts for
 * the next window; {@link closeAuthFailures} makes the last attempt and throws if it fails.
 */
import { commit, type VaultContext } from "./context.js";
import { VaultError } from "../base/errors.js";
import type { AuditDraft, Identity } from "../base/types.js";
import { AuditWindow, reasonsText, type Tally as WindowTally } from "./audit-window.js";

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
interface Tally extends WindowTally {
  transport: string;
  /** The detail field naming the peer, or null (unknown, or the overflow source "*"). */
  peerField: "uid" | "remote" | null;
  peer: string | number | null;
  tokenIds: Set<string>;
}

/** The tallies of one vault. */
class AuthFailureLog {
  readonly #ctx: VaultContext;
  readonly #window: AuditWindow<Tally>;

  constructor(ctx: VaultContext) {
    this.#ctx = ctx;
    this.#window = new AuditWindow<Tally>(ctx, {
      burst: BURST,
      budget: WINDOW_BUDGET,
      maxKeys: MAX_SOURCES,
      keyOf: (t) => sourceKey(t.transport, t.peerField, t.peer),
      overflow: (t) => newTally(t.transport, null, "*", BURST),
      fresh: (t, written) => newTally(t.transport, t.peerField, t.peer, written),
      merge: (into, from) => {
        for (const id of from.tokenIds) if (into.tokenIds.size < MAX_TOKEN_IDS) into.tokenIds.add(id);
      },
      summary,
    });
  }

  async record(transport: string, reason: string, detail: Detail | null): Promise<void> {
    if (this.#ctx.closed || this.#window.closed) throw new VaultError("unavailable", "the vault is closed; open it again");
    const tally = this.#tallyFor(transport, detail);
    if (!this.#window.admit(tally)) {
      this.#count(tally, reason, detail);
      return;
    }
    try {
      await commit(this.#ctx, async (_tx, audit) => {
        await audit({ type: "auth_failed", actor: unknownActor(transport), outcome: "denied", reason, detail });
      });
    } catch (e) {
      // Not written: counted instead, so a later summary has it (the source may be gone from the
      // map if a window closed meanwhile).
      this.#count(this.#tallyFor(transport, detail), reason, detail);
      throw e;
    }
  }

  /** The source's tally, made if needed (or the overflow source's, past MAX_SOURCES). */
  #tallyFor(transport: string, detail: Detail | null): Tally {
    const { field, peer } = peerOf(detail);
    return this.#window.tally(sourceKey(transport, field, peer), () => newTally(transport, field, peer, 0));
  }

  #count(t: Tally, reason: string, detail: Detail | null): void {
    this.#window.count(t, reason, this.#ctx.now());
    const id = detail?.token_id;
    if (typeof id === "string" && t.tokenIds.size < MAX_TOKEN_IDS) t.tokenIds.add(id);
  }

  flush(): Promise<void> {
    return this.#window.flush();
  }

  close(): Promise<void> {
    return this.#window.close();
  }
}

function sourceKey(transport: string, field: Tally["peerField"], peer: Tally["peer"]): string {
  return `${transport}\u0000${field ?? ""}\u0000${String(peer ?? "")}`;
}

function unknownActor(transport: string): Identity {
  return { id: "unknown", role: "agent", transport };
}

/** The peer a failure is tallied under: its remote when named (the narrower), else its uid. */
function peerOf(detail: Detail | null): { field: Tally["peerField"]; peer: Tally["peer"] } {
  const remote = detail?.remote;
  if (typeof remote === "string") return { field: "remote", peer: remote };
  const uid = detail?.uid;
  if (typeof uid === "number") return { field: "uid", peer: uid };
  return { field: null, peer: null };
}

function newTally(transport: string, peerField: Tally["peerField"], peer: Tally["peer"], written: number): Tally {
  return { transport, peerField, peer, written, count: 0, since: 0, reasons: new Map(), tokenIds: new Set() };
}

/** The row standing for a tally's counted failures. */
function summary(t: Tally): AuditDraft {
  const { text, top } = reasonsText(t.reasons);
  const detail: Detail = { count: t.count, since: t.since, reasons: text };
  if (t.peerField !== null) detail[t.peerField] = t.peer;
  else if (t.peer === "*") detail.peer = "*";
  if (t.tokenIds.size > 0) detail.token_ids = [...t.tokenIds].join(",");
  return { type: "auth_failed", actor: unknownActor(t.transport), outcome: "denied", reason: top ?? "several reasons (see detail.reasons)", detail };
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
