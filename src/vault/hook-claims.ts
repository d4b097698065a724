/**
 * Which rotation hooks run now, kept in the store so that every lessor process sharing it sees the
 * same answer: two embedded `lessor secret rotate --hook` runs, a CLI beside a daemon, or two daemons
 * on one PostgreSQL store. A hook changes the credential at its issuer, so two runs at once would leave
 * the issuer holding one value and the vault possibly the other.
 *
 * One metadata document (`rotation_hooks_running`, JSON `{v: 1, runs: {secret: {owner, until}}}`) is
 * read and written inside a commit; commits are serialised by every store (SQLite's write lock, the
 * PostgreSQL store's advisory lock), so two claims of one secret cannot both succeed. A claim lasts
 * the hook's time limit plus {@link CLAIM_SLACK_MS}. A damaged document counts as empty.
 *
 * A run whose process died before it stored or audited anything (kill -9, a crash, a lost host) left
 * its claim behind, and its hook may have changed the credential at the issuer with no one to store
 * what it printed. The claim names the process (pid, start time, host: ports.ts Processes), the
 * command, who ran it and, once started, the hook's own process: while that hook runs on (a killed
 * lessor leaves it running) the claim holds, so that no second run races it at the issuer. The next
 * claim of any hook finds it (its process and its hook known to have ended, or the claim lapsed),
 * audits it as `secret_rotated` with outcome "error", reason `hook_interrupted`, and clears it. The
 * next run of that same secret's hook is refused once with a message saying the issuer may hold a
 * credential the vault does not (the run after it goes ahead): running the hook again over a value
 * the issuer may no longer accept is for the owner to decide, knowingly.
 */
import { VaultError } from "../base/errors.js";
import { uuidv7 } from "../base/ids.js";
import type { Identity } from "../base/types.js";
import type { ProcessRef, StoreReader, StoreTx } from "./ports.js";
import { commit, type AuditFn, type VaultContext } from "./context.js";
import { isProcessRef } from "./rotation-claim.js";
import { brokenError, inspectChain, noteAuditState } from "./audit-guard.js";

/** The metadata key of the document. */
export const HOOK_RUNS_META = "rotation_hooks_running";

/** How long past its hook's time limit a claim outlives a process that died holding it. */
export const CLAIM_SLACK_MS = 60_000;

/** One claimed run: who holds it and until when; the rest (newer claims) says what was running. */
interface Run {
  owner: string;
  until: number;
  started?: number;
  /** The hook's program name (argv[0]). */
  command?: string;
  /** The identity that ran it. */
  by?: string;
  process?: ProcessRef;
  /** The hook's own process once it started (its process group's leader): it may outlive `process`. */
  hook?: ProcessRef;
}
type Runs = Record<string, Run>;

/** The claims in the document: those `live`, and those whose run was cut (lapsed, or its process ended). */
async function readAllRuns(ctx: VaultContext, r: Pick<StoreReader, "getMeta">, now: number): Promise<{ live: Runs; cut: Runs }> {
  const live: Runs = {};
  const cut: Runs = {};
  const text = await r.getMeta(HOOK_RUNS_META);
  if (!text) return { live, cut };
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return { live, cut };
  }
  const runs = (doc as { v?: unknown; runs?: unknown }).runs;
  if ((doc as { v?: unknown }).v !== 1 || typeof runs !== "object" || runs === null || Array.isArray(runs)) return { live, cut };
  for (const [secret, run] of Object.entries(runs as Record<string, unknown>)) {
    const r = run as Partial<Run> | null;
    if (!r || typeof r.owner !== "string" || typeof r.until !== "number") continue;
    const one: Run = { owner: r.owner, until: r.until };
    if (typeof r.started === "number") one.started = r.started;
    if (typeof r.command === "string") one.command = r.command;
    if (typeof r.by === "string") one.by = r.by;
    if (isProcessRef(r.process)) one.process = r.process;
    if (isProcessRef(r.hook)) one.hook = r.hook;
    // Cut when the process that ran it ended and so did its hook, if it had started: a hook left
    // running by a killed lessor may still be changing the credential at the issuer, and a second run
    // beside it would race it there (its claim still lapses at `until`).
    const ended = one.process !== undefined && ctx.processes?.ended(one.process) === true && (one.hook === undefined || ctx.processes?.ended(one.hook) === true);
    if (r.until > now && !ended) live[secret] = one;
    else cut[secret] = one;
  }
  return { live, cut };
}

/** Every claim in the document, lapsed or not (damaged: none). */
async function readRuns(r: Pick<StoreReader, "getMeta">): Promise<Runs> {
  const runs: Runs = {};
  const text = await r.getMeta(HOOK_RUNS_META);
  if (!text) return runs;
  try {
    const doc = JSON.parse(text) as { v?: unknown; runs?: unknown };
    if (doc.v !== 1 || typeof doc.runs !== "object" || doc.runs === null || Array.isArray(doc.runs)) return runs;
    for (const [secret, run] of Object.entries(doc.runs as Record<string, unknown>)) {
      const x = run as Partial<Run> | null;
      if (x && typeof x.owner === "string" && typeof x.until === "number") runs[secret] = x as Run;
    }
  } catch {
    // damaged: empty
  }
  return runs;
}

const iso = (ms: number): string => new Date(ms).toISOString();

/** Audits each cut run of `cut` (see the module comment); returns the refusal for `secret`'s, if it is one. */
async function auditCut(audit: AuditFn, who: Identity, cut: Runs, secret: string): Promise<VaultError | null> {
  let refusal: VaultError | null = null;
  for (const [s, run] of Object.entries(cut)) {
    const how = run.process !== undefined ? "process_ended" : "claim_lapsed";
    await audit({
      type: "secret_rotated",
      actor: who,
      secret: s,
      outcome: "error",
      reason: "hook_interrupted",
      detail: {
        hook: true,
        failure: how,
        ...(run.command !== undefined ? { command: run.command } : {}),
        ...(run.by !== undefined ? { by: run.by } : {}),
        ...(run.started !== undefined ? { started: iso(run.started) } : {}),
        ...(run.process !== undefined ? { pid: run.process.pid } : {}),
      },
    });
    if (s !== secret) continue;
    const when = run.started !== undefined ? ` started ${iso(run.started)}` : "";
    const by = run.by !== undefined ? ` by ${run.by}` : "";
    const pid = run.process !== undefined ? ` in process ${run.process.pid}` : "";
    const cmd = run.command !== undefined ? ` (command ${JSON.stringify(run.command)})` : "";
    refusal = new VaultError(
      "unavailable",
      `the last run of the rotation hook of ${s}${cmd},${when}${by}${pid}, was cut off before what it made was stored: ${how === "process_ended" ? "that process ended (killed, or crashed) while the hook ran" : "it never finished within its time limit plus a minute"}. The hook may have changed the credential at its issuer, so the issuer may now hold a value the vault does not have. Check the credential at its issuer: if it changed, store its new value with lessor secret rotate ${s} (the value on stdin); otherwise run the hook again. This run was not started; it is audited as hook_interrupted, and the next run goes ahead`,
    );
  }
  return refusal;
}

async function writeRuns(tx: StoreTx, runs: Runs): Promise<void> {
  await tx.setMeta(HOOK_RUNS_META, Object.keys(runs).length === 0 ? "" : JSON.stringify({ v: 1, runs }));
}

/**
 * Claims the run of `secret`'s hook for `timeoutMs` (plus slack), or throws `rate_limited` when a run
 * is claimed already, by this process or another. Returns the claim's owner id for {@link releaseHookRun};
 * null, claiming nothing, when `wanted` (asked in the claim's own transaction) says the run is no
 * longer wanted (a schedule's rotation another process has made since it looked). Runs that were cut
 * off are audited and cleared first; the secret's own refuses this run once (the module comment).
 */
export async function claimHookRun(
  ctx: VaultContext,
  secret: string,
  timeoutMs: number,
  wanted: ((tx: StoreTx, now: number) => Promise<boolean>) | undefined,
  run: { who: Identity; command: string },
): Promise<string | null> {
  const owner = uuidv7();
  return commit(ctx, async (tx, audit, now) => {
    // What would refuse the run's audited commit refuses it now, before the hook changes the issuer:
    // a broken trail, or an audit sink that cannot record (otherwise the issuer would hold a value
    // the vault then refuses to store, and the trail would not even show the attempt).
    const { problem } = await inspectChain(ctx, tx);
    noteAuditState(ctx, problem);
    if (problem !== null) return brokenError(problem);
    for (const sink of ctx.sinks) sink.check?.();
    const { live: runs, cut } = await readAllRuns(ctx, tx, now);
    if (Object.keys(cut).length > 0) {
      const refusal = await auditCut(audit, run.who, cut, secret);
      await writeRuns(tx, runs);
      if (refusal !== null) return refusal;
    }
    const held = runs[secret];
    if (held !== undefined) {
      const orphan = held.process !== undefined && held.hook !== undefined && ctx.processes?.ended(held.process) === true;
      return new VaultError(
        "rate_limited",
        orphan
          ? `the rotation hook of ${secret} is already running: the lessor process that ran it (pid ${held.process!.pid}) ended, but its hook (pid ${held.hook!.pid}) still runs and may change the credential at the issuer; wait for it to finish, or end it (kill -- -${held.hook!.pid}), then run the hook again`
          : `the rotation hook of ${secret} is already running; wait for it to finish`,
      );
    }
    if (wanted !== undefined && !(await wanted(tx, now))) return null;
    runs[secret] = {
      owner,
      until: now + timeoutMs + CLAIM_SLACK_MS,
      started: now,
      command: run.command,
      by: run.who.id,
      ...(ctx.processes !== undefined ? { process: ctx.processes.self } : {}),
    };
    await writeRuns(tx, runs);
    return owner;
  });
}

/** Ends the claim `owner` holds on `secret` inside `tx` (nothing when another holds it); other claims stay as they are. */
export async function releaseHookRunIn(tx: StoreTx, secret: string, owner: string, now: number): Promise<void> {
  void now;
  const runs = await readRuns(tx);
  if (runs[secret]?.owner !== owner) return;
  delete runs[secret];
  await writeRuns(tx, runs);
}

/**
 * Records in `owner`'s claim on `secret` the hook's process once it started (best effort, in a commit
 * of its own): a run whose lessor process is killed then holds its claim while the hook runs on.
 */
export async function noteHookProcess(ctx: VaultContext, secret: string, owner: string, pid: number): Promise<void> {
  if (ctx.processes === undefined) return;
  const hook = ctx.processes.ref(pid);
  await commit(ctx, async (tx) => {
    const runs = await readRuns(tx);
    const run = runs[secret];
    if (run?.owner !== owner) return;
    run.hook = hook;
    await writeRuns(tx, runs);
  }).catch(() => undefined);
}

/** Whether `owner` still holds the claim on `secret` (lapsed or not), inside `tx`. */
export async function holdsHookRunIn(tx: StoreTx, secret: string, owner: string): Promise<boolean> {
  return (await readRuns(tx))[secret]?.owner === owner;
}

/**
 * The metadata key of the runs whose value was stored, by claim owner: `{v: 1, stored: {owner: {secret,
 * version, revokedLeases, at}}}`. Written in the very commit that stores a hook's value, so that a retry
 * of that store whose earlier attempt committed with its answer lost finds for certain that ITS value
 * is in (not a version someone else stored meanwhile). Entries older than {@link STORED_KEEP_MS} go.
 */
export const HOOK_STORED_META = "rotation_hooks_stored";
const STORED_KEEP_MS = 10 * 60_000;

interface Stored {
  secret: string;
  version: number;
  revokedLeases: number;
  at: number;
}

async function readStored(r: Pick<StoreReader, "getMeta">): Promise<Record<string, Stored>> {
  const out: Record<string, Stored> = {};
  const text = await r.getMeta(HOOK_STORED_META);
  if (!text) return out;
  try {
    const doc = JSON.parse(text) as { v?: unknown; stored?: unknown };
    if (doc.v !== 1 || typeof doc.stored !== "object" || doc.stored === null || Array.isArray(doc.stored)) return out;
    for (const [owner, x] of Object.entries(doc.stored as Record<string, Partial<Stored> | null>)) {
      if (x && typeof x.secret === "string" && typeof x.version === "number" && typeof x.revokedLeases === "number" && typeof x.at === "number")
        out[owner] = { secret: x.secret, version: x.version, revokedLeases: x.revokedLeases, at: x.at };
    }
  } catch {
    // damaged: empty
  }
  return out;
}

/** Records, inside the commit that stored it, that the run `owner` stored `version` of `secret`. */
export async function noteHookStoredIn(tx: StoreTx, secret: string, owner: string, version: number, revokedLeases: number, now: number): Promise<void> {
  const stored = await readStored(tx);
  for (const [o, x] of Object.entries(stored)) if (x.at + STORED_KEEP_MS <= now || x.at > now + STORED_KEEP_MS) delete stored[o];
  stored[owner] = { secret, version, revokedLeases, at: now };
  await tx.setMeta(HOOK_STORED_META, JSON.stringify({ v: 1, stored }));
}

/** What the run `owner` stored of `secret`, if a commit of it went through; null when it stored nothing. */
export async function hookStoredIn(tx: Pick<StoreReader, "getMeta">, secret: string, owner: string): Promise<{ version: number; revokedLeases: number } | null> {
  const x = (await readStored(tx))[owner];
  return x !== undefined && x.secret === secret ? { version: x.version, revokedLeases: x.revokedLeases } : null;
}

/**
 * Keeps, inside `tx`, the record of the run `owner` of `secret` whose value could not be stored after
 * its claim was lost (lapsed and cleared by another process's claim): put back as a lapsed claim, so the
 * next hook claim audits it (hook_interrupted) and refuses that secret's next run once. When another
 * run holds the secret's claim now, that claim stays; the caller's audit row is then the record.
 */
export async function keepLostHookRunIn(tx: StoreTx, secret: string, owner: string, run: { who: Identity; command: string }, now: number): Promise<boolean> {
  const runs = await readRuns(tx);
  if (runs[secret] !== undefined) return runs[secret].owner === owner;
  runs[secret] = { owner, until: now, command: run.command, by: run.who.id };
  await writeRuns(tx, runs);
  return true;
}

/** Ends the claim in a transaction of its own; best effort (a lapsed claim ends by itself). */
export async function releaseHookRun(ctx: VaultContext, secret: string, owner: string): Promise<void> {
  await commit(ctx, async (tx, _audit, now) => releaseHookRunIn(tx, secret, owner, now)).catch(() => undefined);
}
