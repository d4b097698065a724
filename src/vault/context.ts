/**
 * The state every vault operation works with, and `commit`, the one way operations write: a store
 * transaction whose audit events are chained at its end and then handed to the sinks before the
 * caller sees a result. Denials are returned (not thrown) from inside the transaction so that their
 * audit rows commit; `commit` throws them afterwards. Before the first event, the audit guard
 * (src/vault/audit-guard.ts) checks the head it extends against the keyed checkpoint.
 */
import { revokesItself, tokenGateIn } from "./token-state.js";
import type { Alg } from "../crypto/aead.js";
import type { Keyring } from "../crypto/keyring.js";
import { chainEvent, makeCheckpoint } from "../audit/chain.js";
import { AuditKeys } from "../audit/keys.js";
import type { AuditSink } from "./ports.js";
import type { Store, StoreTx } from "./ports.js";
import type { KeySource, Processes } from "./ports.js";
import { VaultError } from "../base/errors.js";
import type { Limits } from "./limits.js";

export { DEFAULT_LIMITS, type Limits } from "./limits.js";
import type { Policy } from "./policy.js";
import type { Signals } from "./signals.js";
import type { RotationHooks } from "./rotation-hooks.js";
import { behindOf, type Behind } from "./behind.js";
import { catchUpKey, checkKeysIn } from "./key-reload.js";
import { catchUpPolicy } from "./policy-sync.js";
import { admitRefusal, countRefusals, isTallied, releaseRefusals } from "./refusals.js";
import type { AuditDraft, AuditHead, AuditRecord } from "../base/types.js";
import {
  brokenError,
  chainedInCommit,
  deferBrake,
  inspectChain,
  isBrake,
  markKeyed,
  noteAuditState,
  noteChained,
  noteCheckpoint,
  noteCommitted,
  preflight,
} from "./audit-guard.js";

/** Shared, mutable state of one open vault. */
export interface VaultContext {
  readonly store: Store;
  readonly keys: KeySource;
  keyring: Keyring;
  /** Audit keys (chain and checkpoint MACs), derived from the keyring or opened from the archive. */
  auditKeys: AuditKeys;
  /** What the last commit found wrong with the audit trail (audited writes are refused), or null. */
  auditBroken: string | null;
  policy: Policy;
  readonly loadPolicy: (() => Promise<Policy>) | null;
  readonly sinks: readonly AuditSink[];
  readonly now: () => number;
  readonly cipher: Alg;
  /** The vault's id, bound into every wrapped DEK and token MAC (./vault-id.ts); null for a vault made before vaults had ids. */
  readonly vaultId: string | null;
  readonly limits: Limits;
  /**
   * True in a daemon (`lessor serve`): on a store several instances share, its opening and its
   * reloads put its grant limits in force (src/vault/policy-sync.ts); an embedded vault never does.
   */
  readonly claimsLimits: boolean;
  closed: boolean;
  /** Where committed changes that live connections must see (token revoked, killswitch) are announced. */
  readonly signals: Signals;
  /**
   * The audit trail's last seq as this process last wrote or read it, and when (performance.now()):
   * what status() reports while it is fresh (see {@link auditHeadSeen}). null until the first.
   */
  auditSeen: { seq: number; at: number } | null;
  /** The configured rotation hooks (src/vault/rotation-hooks.ts), if any. */
  readonly rotationHooks?: RotationHooks;
  /** This process and whether another has ended, for claims in the store (src/vault/rotation-claim.ts); absent, a claim ends only when it lapses. */
  readonly processes?: Processes;
}

/**
 * How long a head this process wrote or read stands for the trail's head in status(). Writes by this
 * process update it at once; writes by another process sharing the store show within this time.
 */
export const AUDIT_HEAD_MAX_AGE_MS = 1000;

/** Records that the trail's head is at least `seq`, as of now. */
export function sawAuditHead(ctx: VaultContext, seq: number): void {
  ctx.auditSeen = { seq: Math.max(seq, ctx.auditSeen?.seq ?? 0), at: performance.now() };
}

/** The head last seen, if seen within {@link AUDIT_HEAD_MAX_AGE_MS}; otherwise undefined. */
export function auditHeadSeen(ctx: VaultContext): number | undefined {
  const s = ctx.auditSeen;
  return s !== null && performance.now() - s.at < AUDIT_HEAD_MAX_AGE_MS ? s.seq : undefined;
}

/**
 * Records an audit event inside a transaction. The event is chained just before the commit (see
 * {@link commit}), so this resolves to null; only the recovery's events (CommitOptions.recovery) are
 * chained at once and resolve to their record. A brake's event while the trail is broken is deferred
 * (see src/vault/audit-guard.ts).
 */
export type AuditFn = (draft: AuditDraft) => Promise<AuditRecord | null>;

/** The meta key naming the vault's current master key id (set when a rotation starts). */
export { CURRENT_KEY_META } from "./key-reload.js";

/** Installs a new keyring (after load or rotation) and the audit keys derived from it. */
export function setKeyring(ctx: VaultContext, ring: Keyring): void {
  ctx.keyring = ring;
  ctx.auditKeys.wipe();
  ctx.auditKeys = new AuditKeys(ring, ctx.vaultId);
}

/** True when `a` is the head `b` (same seq and chain value; both null counts). */
function sameHead(a: { seq: number; hash: Uint8Array } | null, b: { seq: number; hash: Uint8Array } | null): boolean {
  if (a === null || b === null) return a === b;
  return a.seq === b.seq && Buffer.compare(a.hash, b.hash) === 0;
}

const checkpointWriters = new WeakMap<VaultContext, (tx: StoreTx) => Promise<void>>();

/**
 * The function that writes the keyed checkpoint for the chain head, one per vault context: a store
 * that commits several transactions together runs it once for all of them (StoreTx.beforeCommit),
 * so a commit of 32 lease+access calls writes one checkpoint row and one MAC, not 32.
 */
function checkpointWriter(ctx: VaultContext): (tx: StoreTx) => Promise<void> {
  let w = checkpointWriters.get(ctx);
  if (w === undefined) {
    w = async (tx) => {
      const head = await tx.auditHead();
      if (head === null) return;
      const cp = makeCheckpoint(head, ctx.auditKeys.current);
      await tx.putCheckpoint(cp);
      noteCheckpoint(ctx, cp);
    };
    checkpointWriters.set(ctx, w);
  }
  return w;
}

/** How many times {@link commit} catches up with another process sharing the store and runs a call again. */
const MAX_CATCH_UPS = 3;

/** Catches this process up on what a transaction found it behind on (src/vault/behind.ts). */
async function catchUp(ctx: VaultContext, b: Behind): Promise<void> {
  if (b.kind === "key") await catchUpKey(ctx, b.keyId, b.hard);
  else await catchUpPolicy(ctx);
}

/** Options of {@link commit}. */
export interface CommitOptions {
  /**
   * Chain onto the database's actual head without the guard's check: only for the recovery
   * (src/vault/audit-recover.ts), which checks the trail itself and records what it found.
   */
  recovery?: boolean;
}

/**
 * Runs `fn` in a store transaction with an audit appender. If `fn` returns a VaultError, the
 * transaction still commits (with the audit rows of the denial) and the error is thrown after.
 * Events reach every sink before this resolves; a sink failure throws VaultError("audit_failed").
 *
 * Within one call the master-key check, the read of the chain head and the guard's check of it
 * against the checkpoint happen once, at the first event. A head that fails the check refuses the
 * call with VaultError("audit_broken"), except that a brake's event is deferred (see
 * src/vault/audit-guard.ts). The events themselves are chained just before the commit
 * (StoreTx.beforeCommit), onto the head as it is then: a store that commits several calls together
 * chains them in their order, and a store that takes its write lock only for the commit (PostgreSQL)
 * reads that head under the lock; a head that moved since the guard's check is checked again. The
 * keyed checkpoint is written once per commit, after every call's events, for the head the commit
 * leaves (see {@link checkpointWriter}): it commits with the events, so every committed state still
 * has a checkpoint on its head.
 */
export async function commit<T>(
  ctx: VaultContext,
  fn: (tx: StoreTx, audit: AuditFn, now: number) => Promise<T | VaultError>,
  opts: CommitOptions = {},
): Promise<T> {
  // A function that finds this process behind another sharing the store (a master key rotated, a
  // policy reloaded there) throws a marked error: its transaction rolls back, this process catches
  // up outside it (src/vault/key-reload.ts, src/vault/policy-sync.ts), and the call runs again.
  for (let attempt = 1; ; attempt++) {
    try {
      return await commitOnce(ctx, fn, opts);
    } catch (e) {
      const b = behindOf(e);
      if (b === undefined || attempt >= MAX_CATCH_UPS) throw e;
      await catchUp(ctx, b);
    }
  }
}

async function commitOnce<T>(
  ctx: VaultContext,
  fn: (tx: StoreTx, audit: AuditFn, now: number) => Promise<T | VaultError>,
  opts: CommitOptions,
): Promise<T> {
  if (ctx.closed) throw new VaultError("unavailable", "the vault is closed; open it again");
  await preflight(ctx);
  const events: AuditRecord[] = [];
  /** Refusals of this call counted, not written (./refusals.ts): tallied once the transaction commits. */
  const counted: AuditDraft[] = [];
  /** Places in the refusal burst this call's run took (./refusals.ts): kept if it commits, given back otherwise. */
  let held: unknown[] | null = null;
  let result: T | VaultError;
  /** What the guard found at the first event: undefined when no event was attempted. */
  let found: string | null | undefined;
  try {
    result = await ctx.store.transaction(async (tx) => {
      events.length = 0;
      counted.length = 0;
      // Run again (a batch rerun): what the last run admitted was rolled back; this run decides anew.
      if (held !== null) releaseRefusals(ctx, held);
      found = undefined;
      const now = ctx.now();
      /** The head the guard checked at this call's first event; undefined until then. */
      let head: AuditHead | { seq: number; hash: Uint8Array } | null | undefined;
      /** True when the trail is broken and this call's brake events are deferred. */
      let deferring = false;
      /** Events waiting to be chained by {@link chainPending}, in order. */
      const pending: AuditDraft[] = [];
      /** What the guard's check asked to go first, if the events are chained onto the head it checked. */
      let prelude: AuditDraft[] = [];
      let marksFormat = false;
      /** The token of this call's identity was read in this transaction (see below). */
      let tokenChecked = false;
      const chainOnto = async (at: AuditHead | { seq: number; hash: Uint8Array } | null, drafts: readonly AuditDraft[], into: StoreTx): Promise<AuditRecord | null> => {
        let rec: AuditRecord | null = null;
        for (const draft of drafts) {
          rec = chainEvent(at, draft, now, ctx.auditKeys.current);
          await into.insertAudit(rec);
          noteChained(ctx, rec.seq, rec.hash as Buffer);
          events.push(rec);
          at = rec;
        }
        return rec;
      };
      // Chains this call's events onto the head as it is just before the commit: a store that commits
      // several calls together runs it after all of them, in their order (a store that takes its write
      // lock late, such as PostgreSQL's, reads that head under the lock). A head other than the one
      // the guard checked, and not one this process chained in the same commit, is checked again.
      // The format upgrade (prelude, marker) is decided by the head the events go onto: the first call
      // of a commit upgrades, later ones extend what it chained.
      const chainPending = async (ftx: StoreTx): Promise<void> => {
        let at = await ftx.auditHead();
        let first = prelude;
        let marks = marksFormat;
        if (chainedInCommit(ctx, at)) {
          first = [];
          marks = false;
        } else if (!sameHead(at, head!)) {
          const again = await inspectChain(ctx, ftx);
          if (again.problem !== null) throw brokenError(again.problem);
          at = again.head;
          first = again.prelude;
          marks = again.marksFormat;
        }
        if (marks) await markKeyed(ftx);
        await chainOnto(at, first.length > 0 ? [...first, ...pending] : pending, ftx);
      };
      const audit: AuditFn = async (draft) => {
        // The first event of a token's identity: the token is read in this transaction, so that
        // nothing it does commits after another instance committed its revocation (./token-state.ts).
        if (!tokenChecked && draft.actor.token !== undefined && !opts.recovery && !revokesItself(draft)) {
          tokenChecked = true;
          const dead = await tokenGateIn(ctx, tx, draft.actor, now);
          if (dead !== null) throw dead;
        }
        // A refusal past its identity's burst is counted, not written (./refusals.ts).
        if (!opts.recovery && isTallied(draft) && !admitRefusal(ctx, draft, (held ??= []))) {
          // A trail last seen broken is checked first, as for any audited step: while it is broken a
          // refusal is answered audit_broken, whatever the caller's count (a check that finds it
          // mended clears the note).
          if (ctx.auditBroken !== null) {
            const chain = await inspectChain(ctx, tx);
            found = chain.problem;
            if (chain.problem !== null) throw brokenError(chain.problem);
          }
          counted.push(draft);
          return null;
        }
        if (head === undefined) {
          // A sink that could not record the events refuses the call now, before anything changes. A
          // brake is not refused: it takes effect, and a sink that fails it does so after the commit.
          if (!isBrake(draft)) for (const sink of ctx.sinks) sink.check?.();
          await checkKeysIn(ctx, tx, { brake: isBrake(draft) });
          if (opts.recovery) {
            head = await tx.auditHead();
            found = null;
          } else {
            const chain = await inspectChain(ctx, tx);
            found = chain.problem;
            if (chain.problem !== null) {
              if (!isBrake(draft)) throw brokenError(chain.problem);
              deferring = true;
              head = null;
            } else {
              head = chain.head;
              prelude = chain.prelude;
              marksFormat = chain.marksFormat;
            }
          }
        }
        if (deferring) {
          if (!isBrake(draft)) throw brokenError(found!);
          await deferBrake(ctx, tx, draft, now);
          return null;
        }
        // The recovery chains at once onto the head it found (it checks the trail itself).
        if (opts.recovery) {
          const rec = await chainOnto(head, [draft], tx);
          head = rec;
          return rec;
        }
        pending.push(draft);
        return null;
      };
      const out = await fn(tx, audit, now);
      if (pending.length > 0) tx.beforeCommit(chainPending);
      // Registered by every call that appends, so it runs once, after every call's events are chained.
      if (pending.length > 0 || events.length > 0) tx.beforeCommit(checkpointWriter(ctx));
      return out;
    });
  } catch (e) {
    if (held !== null) releaseRefusals(ctx, held);
    if (found !== undefined) noteAuditState(ctx, found);
    if (e instanceof VaultError) throw e;
    throw new VaultError(
      "unavailable",
      "the change and its audit record could not be written durably, so nothing was changed; check the disk and the database file, then retry",
      { cause: e },
    );
  }
  if (found !== undefined) noteAuditState(ctx, found);
  countRefusals(ctx, counted, ctx.now());
  if (events.length > 0) {
    noteCommitted(ctx, events[events.length - 1]!.seq, events[events.length - 1]!.time, events[events.length - 1]!.hash);
    sawAuditHead(ctx, events[events.length - 1]!.seq);
    for (const sink of ctx.sinks) {
      try {
        await sink.write(events);
      } catch (e) {
        if (e instanceof VaultError && e.code === "audit_failed") throw e;
        throw new VaultError("audit_failed", "the change was committed, but an audit sink failed to record it, so its result was withheld; check the audit file or log target", { cause: e });
      }
    }
  }
  if (result instanceof VaultError) throw result;
  return result;
}
