/**
 * Which rotation hooks run now, kept in the store so that every lessor process sharing it sees the
 * same answer: two embedded `lessor secret rotate --hook` runs, a CLI beside a daemon, or two daemons
 * on one PostgreSQL store. A hook changes the credential at its issuer, so two runs at once would leave
 * the issuer holding one value and the vault possibly the other.
 *
 * One metadata document (`rotation_hooks_running`, JSON `{v: 1, runs: {secret: {owner, until}}}`) is
 * read and written inside a commit; commits are serialised by every store (SQLite's write lock, the
 * PostgreSQL store's advisory lock), so two claims of one secret cannot both succeed. A claim lasts
 * the hook's time limit plus {@link CLAIM_SLACK_MS}: a process that dies mid-run blocks the secret's
 * hook only that long. A damaged document counts as empty.
 */
import { VaultError } from "../base/errors.js";
import { uuidv7 } from "../base/ids.js";
import type { StoreReader, StoreTx } from "./ports.js";
import { commit, type VaultContext } from "./context.js";
import { brokenError, inspectChain, noteAuditState } from "./audit-guard.js";

/** The metadata key of the document. */
export const HOOK_RUNS_META = "rotation_hooks_running";

/** How long past its hook's time limit a claim outlives a process that died holding it. */
export const CLAIM_SLACK_MS = 60_000;

type Runs = Record<string, { owner: string; until: number }>;

async function readRuns(r: Pick<StoreReader, "getMeta">, now: number): Promise<Runs> {
  const text = await r.getMeta(HOOK_RUNS_META);
  if (!text) return {};
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return {};
  }
  const runs = (doc as { v?: unknown; runs?: unknown }).runs;
  if ((doc as { v?: unknown }).v !== 1 || typeof runs !== "object" || runs === null || Array.isArray(runs)) return {};
  const out: Runs = {};
  for (const [secret, run] of Object.entries(runs as Record<string, unknown>)) {
    const r = run as { owner?: unknown; until?: unknown } | null;
    if (r && typeof r.owner === "string" && typeof r.until === "number" && r.until > now) out[secret] = { owner: r.owner, until: r.until };
  }
  return out;
}

async function writeRuns(tx: StoreTx, runs: Runs): Promise<void> {
  await tx.setMeta(HOOK_RUNS_META, Object.keys(runs).length === 0 ? "" : JSON.stringify({ v: 1, runs }));
}

/**
 * Claims the run of `secret`'s hook for `timeoutMs` (plus slack), or throws `rate_limited` when a run
 * is claimed already, by this process or another. Returns the claim's owner id for {@link releaseHookRun};
 * null, claiming nothing, when `wanted` (asked in the claim's own transaction) says the run is no
 * longer wanted (a schedule's rotation another process has made since it looked).
 */
export async function claimHookRun(
  ctx: VaultContext,
  secret: string,
  timeoutMs: number,
  wanted?: (tx: StoreTx, now: number) => Promise<boolean>,
): Promise<string | null> {
  const owner = uuidv7();
  return commit(ctx, async (tx, _audit, now) => {
    // What would refuse the run's audited commit refuses it now, before the hook changes the issuer:
    // a broken trail, or an audit sink that cannot record (otherwise the issuer would hold a value
    // the vault then refuses to store, and the trail would not even show the attempt).
    const { problem } = await inspectChain(ctx, tx);
    noteAuditState(ctx, problem);
    if (problem !== null) return brokenError(problem);
    for (const sink of ctx.sinks) sink.check?.();
    const runs = await readRuns(tx, now);
    if (runs[secret] !== undefined)
      return new VaultError("rate_limited", `the rotation hook of ${secret} is already running; wait for it to finish`);
    if (wanted !== undefined && !(await wanted(tx, now))) return null;
    runs[secret] = { owner, until: now + timeoutMs + CLAIM_SLACK_MS };
    await writeRuns(tx, runs);
    return owner;
  });
}

/** Ends the claim `owner` holds on `secret` inside `tx` (nothing when it lapsed or another holds it). */
export async function releaseHookRunIn(tx: StoreTx, secret: string, owner: string, now: number): Promise<void> {
  const runs = await readRuns(tx, now);
  if (runs[secret]?.owner !== owner) return;
  delete runs[secret];
  await writeRuns(tx, runs);
}

/** Ends the claim in a transaction of its own; best effort (a lapsed claim ends by itself). */
export async function releaseHookRun(ctx: VaultContext, secret: string, owner: string): Promise<void> {
  await commit(ctx, async (tx, _audit, now) => releaseHookRunIn(tx, secret, owner, now)).catch(() => undefined);
}
