/**
 * The audit guard: before a commit appends its first event, it checks that the head it extends is
 * the one the keyed checkpoint vouches for (same seq and chain value, checkpoint MAC valid), reading
 * the database's actual head row and checkpoint inside the transaction. A commit never chains onto,
 * and never re-MACs a checkpoint for, a head that was cut, edited or rehashed: it is refused instead
 * (fail closed) with VaultError("audit_broken") until an admin runs `lessor audit recover`.
 *
 * Cheap by design: two one-row reads, and a MAC check only for a checkpoint this process has not
 * itself written or checked. A head this process chained in the commit being built (a store may
 * commit several transactions together, writing the checkpoint once at the end) is known by its
 * chain value. A head older than the last one this process committed is refused even under a valid
 * checkpoint (an old checkpoint row put back).
 *
 * Brakes (a lease revoked, the killswitch pulled, a token revoked) still take effect while the trail
 * is broken: their events cannot be chained, so they are kept in the store's `audit_deferred` meta row
 * and appended right after the recovery's `audit_break` event.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { AUDIT_FORMAT_KEYED, AUDIT_FORMAT_META, checkpointValid, eventMacValid } from "../audit/chain.js";
import type { AuditKey } from "../audit/keys.js";
import { retiredKeys, retiredWhere } from "../audit/retired.js";
import { checkTrail } from "../audit/verify.js";
import type { Store, StoreReader, StoreTx } from "./ports.js";
import type { VaultContext } from "./context.js";
import { VaultError } from "../base/errors.js";
import type { AuditCheckpoint, AuditDraft, AuditHead, Identity } from "../base/types.js";

/** Who the vault's own audit events (the format upgrade) are recorded as. */
export const VAULT_IDENTITY: Identity = Object.freeze({ id: "lessor", role: "admin", transport: "internal" });

/** What this process knows of a store's trail (shared by every vault context on that store object). */
interface GuardState {
  /** The last event this process chained (possibly in a commit still being built). */
  chained: { seq: number; hash: Buffer } | null;
  /** The head of the last commit this process made that appended events (0: none), and its events' time. */
  committed: number;
  committedAt: number;
  /** The chain value of event `committed` (null: none noted): another writer's head past it must still hold it. */
  committedHash: Buffer | null;
  /** A head (another writer's) found to still hold event `committed` as written: found again, it is not read again. */
  vouched: { seq: number; hash: Buffer } | null;
  /** The last checkpoint this process wrote or found valid: its MAC need not be checked again. */
  checkpoint: AuditCheckpoint | null;
  /** Whether {@link preflight} ran, and what it found: an empty trail in a vault that holds secrets. */
  preflighted: boolean;
  wiped: string | null;
}

const states = new WeakMap<Store, GuardState>();

function state(ctx: VaultContext): GuardState {
  let s = states.get(ctx.store);
  if (s === undefined) states.set(ctx.store, (s = { chained: null, committed: 0, committedAt: 0, committedHash: null, vouched: null, checkpoint: null, preflighted: false, wiped: null }));
  return s;
}

const eq = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;

function sameCheckpoint(a: AuditCheckpoint, b: AuditCheckpoint | null): boolean {
  return b !== null && a.seq === b.seq && a.keyId === b.keyId && eq(a.hash, b.hash) && eq(a.mac, b.mac);
}

/** What the guard found at the start of a commit's first event. */
export interface ChainState {
  head: AuditHead | null;
  /** Why the head may not be extended, or null when it may. */
  problem: string | null;
  /**
   * Events the vault must append before the caller's, when the head may be extended: the format
   * upgrade of a format-1 trail.
   */
  prelude: AuditDraft[];
  /** True when the commit's first event makes the trail keyed (sets the format marker). */
  marksFormat: boolean;
}

/**
 * Runs once per process and store, before the first commit, on committed data: an empty trail in a
 * vault that holds secrets was wiped (storing a secret is always audited). Inside a transaction this
 * cannot be told apart from the transaction's own first secret, hence here.
 */
export async function preflight(ctx: VaultContext): Promise<void> {
  const s = state(ctx);
  if (s.preflighted) return;
  const empty = (await ctx.store.getCheckpoint()) === null && (await ctx.store.keyIdsInUse()).length > 0 && (await ctx.store.auditHead()) === null;
  if (empty)
    s.wiped = "the audit trail is empty, but the vault holds secrets whose storing was audited: the trail was wiped";
  s.preflighted = true;
}

/** The seq of the rotation that retired master key `id` (0: only the archive shows it), or undefined when it was not retired. */
async function retiredIn(ctx: VaultContext, r: StoreReader, id: string): Promise<number | undefined> {
  return (await retiredKeys(r, ctx.auditKeys)).get(id);
}

/** True when `head` is an event this process chained in the commit being built (not yet committed). */
export function chainedInCommit(ctx: VaultContext, head: { seq: number; hash: Uint8Array } | null): boolean {
  const s = state(ctx);
  return head !== null && s.chained !== null && s.chained.seq > s.committed && s.chained.seq === head.seq && eq(s.chained.hash, head.hash);
}

/**
 * Reads the head row and checkpoint through `tx` and decides whether the head may be extended.
 * Changes nothing in the store; caches only what it proved (a checkpoint's MAC, a recovery).
 */
export async function inspectChain(ctx: VaultContext, tx: StoreTx): Promise<ChainState> {
  const head = await tx.auditHead();
  const s = state(ctx);
  const out = (problem: string | null, prelude: AuditDraft[] = [], marksFormat = false): ChainState => ({ head, problem, prelude, marksFormat });
  // An event this process chained in the commit being built: a store may run several transactions in
  // one commit and writes the checkpoint once, at its end; no one else can write meanwhile.
  if (chainedInCommit(ctx, head)) return out(null);
  const cp = await tx.getCheckpoint();
  if (head === null) {
    if (cp !== null) return out(`the audit trail is empty but its checkpoint vouches for event ${cp.seq}: every event was deleted`);
    if (s.committed > 0) return out(`the audit trail is empty but this process wrote event ${s.committed}: every event was deleted`);
    if ((await tx.getMeta(AUDIT_FORMAT_META)) === AUDIT_FORMAT_KEYED) return out("the audit trail is empty, but this vault has written events: the trail was wiped");
    if (s.wiped !== null) return out(s.wiped);
    return out(null, [], true);
  }
  if (head.keyId === null) {
    // This process wrote or checked the keyed chain: a trail ending in old-format events now had its
    // keyed events cut and its old checkpoint put back (the format marker is only a meta row).
    if (s.committed > head.seq || s.checkpoint !== null)
      return out(`the trail ends at event ${head.seq}, of the old unkeyed format, but this process has written or checked the keyed chain (up to event ${Math.max(s.committed, s.checkpoint?.seq ?? 0)}): its keyed events were removed and an old checkpoint put back`);
    return inspectFormat1(ctx, tx, head, out);
  }
  if (cp === null) return out("the audit checkpoint is missing: the trail cannot be shown to be complete");
  if (!sameCheckpoint(cp, s.checkpoint)) {
    const key = await ctx.auditKeys.get(cp.keyId, tx);
    if (key === null) return out(`the audit checkpoint was made under master key ${cp.keyId}, which is neither loaded nor archived`);
    if (!checkpointValid(cp, key)) return out("the audit checkpoint was altered: its MAC does not match");
    // Never under a key a rotation retired (whoever still holds it, the leak the rotation answered,
    // could cut the trail and vouch for the cut). This process's current key was checked at its
    // first commit (src/vault/key-reload.ts), so only another key is looked up.
    if (cp.keyId !== ctx.keyring.current.id) {
      const gone = await retiredIn(ctx, tx, cp.keyId);
      if (gone !== undefined) return out(`the audit checkpoint is MACed under master key ${cp.keyId}, which ${retiredWhere(gone)} retired: it was rewritten with the retired key`);
    }
    s.checkpoint = cp;
  }
  if (cp.seq === head.seq && eq(cp.hash, head.hash)) {
    if (head.seq === s.committed && s.committedHash !== null && !eq(head.hash, s.committedHash) && !(await recoveredBelow(ctx, tx, s.committed + 1, s.committedAt)))
      return out(`event ${head.seq} is not the one this process wrote there: the trail was cut and other events chained in its place`);
    if (head.seq > s.committed && s.committed > 0 && s.committedHash !== null) {
      // Another writer (a PostgreSQL instance sharing the vault) moved the head past this process's
      // last event: that event must still be in the trail, as written. Otherwise a database writer cut
      // this process's events, put back an older checkpoint and let the other instance chain past them.
      const v = s.vouched;
      if (v !== null && v.seq === head.seq && eq(v.hash, head.hash)) return out(null);
      // A head past one already vouched for: that one still in place vouches for the event before it.
      const holds = async (at: { seq: number; hash: Buffer }): Promise<boolean> => {
        const [row] = await tx.queryAudit({ afterSeq: at.seq - 1, limit: 1 });
        return row !== undefined && row.seq === at.seq && eq(row.hash, at.hash);
      };
      const viaVouched = v !== null && v.seq > s.committed && v.seq < head.seq && (await holds(v));
      if (!viaVouched && !(await holds({ seq: s.committed, hash: s.committedHash }))) {
        if (await recoveredBelow(ctx, tx, s.committed + 1, s.committedAt)) {
          s.committed = 0;
          s.committedHash = null;
          s.vouched = null;
          return out(null);
        }
        return out(`event ${s.committed}, which this process wrote, is no longer in the trail as written: the trail was cut, an older checkpoint put back and other events chained in their place`);
      }
      s.vouched = { seq: head.seq, hash: Buffer.from(head.hash) };
      return out(null);
    }
    if (head.seq >= s.committed) return out(null);
    if (await recoveredBelow(ctx, tx, s.committed, s.committedAt)) {
      s.committed = 0;
      return out(null);
    }
    return out(`the trail ends at event ${head.seq} but this process wrote up to event ${s.committed}: events were removed from the end and an older checkpoint put back`);
  }
  if (head.seq < cp.seq) return out(`the trail ends at event ${head.seq} but the checkpoint says ${cp.seq}: events were removed from the end`);
  return out(`the trail's head (event ${head.seq}) is not the event the checkpoint vouches for (event ${cp.seq}): events were altered, replaced or added without the audit key`);
}

/**
 * What this process's guard finds wrong with the committed trail now, or null: for `auditVerify()`,
 * whose walk cannot see a cut with an older checkpoint put back (the shorter trail verifies on its
 * own), which a process that committed past it refuses to build on. Reads the head and checkpoint in a
 * transaction that writes nothing, as a commit's first event would, and notes what it found (as a
 * commit does: a new problem raises the `audit_broken` signal, none clears the note).
 */
export async function guardProblem(ctx: VaultContext): Promise<string | null> {
  const { problem } = await ctx.store.transaction((tx) => inspectChain(ctx, tx));
  noteAuditState(ctx, problem);
  return problem;
}

/**
 * True when the latest recovery (a valid `audit_break`) was made after this process's last commit
 * (at `since`), on a trail cut below `seq`: another process recovered the cut this process sees, so
 * the shorter trail stands. Only read when the head is below what this process wrote, which never
 * happens otherwise. An older break does not count (it cannot vouch for a later cut).
 */
async function recoveredBelow(ctx: VaultContext, tx: StoreTx, seq: number, since: number): Promise<boolean> {
  const [b] = await tx.queryAudit({ types: ["audit_break"], order: "desc", limit: 1 });
  if (b === undefined || b.keyId === null || b.time < since) return false;
  const key = await ctx.auditKeys.get(b.keyId, tx);
  if (key === null || !eventMacValid(b, key)) return false;
  if (b.keyId !== ctx.keyring.current.id && (await retiredIn(ctx, tx, b.keyId)) !== undefined) return false;
  try {
    const found = (JSON.parse(b.detail ?? "{}") as { head_seq?: unknown }).head_seq;
    return typeof found === "number" && found < seq;
  } catch {
    return false;
  }
}

/**
 * A trail whose head is a format-1 (unkeyed) event: it is verified whole under the old rules and
 * its old checkpoint, once, and then continued keyed after an `audit_upgraded` event recording the
 * old head. Refused if the vault had already moved to the keyed chain (its keyed events were cut).
 */
async function inspectFormat1(
  ctx: VaultContext,
  tx: StoreTx,
  head: AuditHead,
  out: (problem: string | null, prelude?: AuditDraft[], marksFormat?: boolean) => ChainState,
): Promise<ChainState> {
  if ((await tx.getMeta(AUDIT_FORMAT_META)) === AUDIT_FORMAT_KEYED)
    return out("the trail ends in events of the old unkeyed format, but this vault had moved to the keyed chain: its keyed events were removed");
  const check = await checkTrail(tx, ctx.auditKeys);
  if (!check.result.ok) return out(`the audit trail of the old unkeyed format does not verify, so it cannot be carried into the keyed chain: ${check.result.problem}`);
  const upgrade: AuditDraft = {
    type: "audit_upgraded",
    actor: VAULT_IDENTITY,
    outcome: "ok",
    reason: "the trail continues under the keyed chain; the events before this one were verified under the old rules and their checkpoint",
    detail: { from_format: 1, to_format: 2, events: check.result.events, head_seq: head.seq, head_hash: Buffer.from(head.hash).toString("hex") },
  };
  return out(null, [upgrade], true);
}

/** Records the trail as keyed (with the commit's first keyed event). */
export async function markKeyed(tx: StoreTx): Promise<void> {
  await tx.setMeta(AUDIT_FORMAT_META, AUDIT_FORMAT_KEYED);
}

/** The refusal of an audited operation while the trail is broken. */
export function brokenError(problem: string): VaultError {
  return new VaultError(
    "audit_broken",
    `the audit trail is broken (${problem}), so audited operations are refused; an admin should check it with lessor audit verify and then run lessor audit recover --reason "…"`,
  );
}

/**
 * True for the events of brakes, which still take effect while the trail is broken (their events
 * are deferred): a lease revoked, the killswitch pulled (not released), a token revoked, and the
 * approvals the killswitch withdraws in its own transaction (were those refused, so would the
 * killswitch be, whenever an approval is open).
 */
export function isBrake(draft: AuditDraft): boolean {
  if (draft.outcome !== "ok") return false;
  if (draft.type === "lease_revoked" || draft.type === "token_revoked") return true;
  if (draft.type === "approval_denied") return draft.detail?.withdrawn_by === "killswitch" || draft.detail?.withdrawn_by === "agent_revoked";
  return draft.type === "killswitch" && draft.detail?.engaged === true;
}

/** The store meta key holding brake events done while the trail was broken. */
export const DEFERRED_META = "audit_deferred";

/** Most deferred events kept; more are counted in `dropped`. */
const MAX_DEFERRED = 1000;

/** A brake event kept while the trail is broken: the draft's fields and when it happened. */
export interface DeferredEvent {
  time: number;
  draft: AuditDraft;
}

/** What {@link readDeferred} found. */
export interface Deferred {
  events: DeferredEvent[];
  dropped: number;
  /**
   * True when the row was there but not as this vault wrote it (its MAC under the audit key does not
   * verify, or it cannot be read): none of its events is appended, and the recovery records that.
   */
  rejected: boolean;
}

const DEFERRED_LABEL = "lessor audit deferred v1";

/** The MAC of a deferred row's content under the audit key `key` (its checkpoint key, own label). */
function deferredMac(key: AuditKey, body: string): string {
  return createHmac("sha256", key.checkpoint).update(DEFERRED_LABEL).update("\0").update(body).digest("hex");
}

/**
 * A brake's draft rebuilt from the fields a brake may carry (never the stored object spread), or
 * null when it is not a brake's: the deferred row can only ever yield revocations, a killswitch and its withdrawals.
 */
function brakeDraft(d: unknown): AuditDraft | null {
  if (typeof d !== "object" || d === null) return null;
  const o = d as Record<string, unknown>;
  const a = o.actor as Record<string, unknown> | undefined;
  const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);
  if (a === undefined || typeof a !== "object" || a === null || typeof a.id !== "string" || typeof a.transport !== "string") return null;
  if (a.role !== "admin" && a.role !== "orchestrator" && a.role !== "agent") return null;
  const draft: AuditDraft = {
    type: o.type as AuditDraft["type"],
    actor: { id: a.id, role: a.role, transport: a.transport, ...(typeof a.agent === "string" ? { agent: a.agent } : {}) },
    outcome: o.outcome as AuditDraft["outcome"],
    ...(str(o.agent) !== undefined ? { agent: str(o.agent)! } : {}),
    ...(str(o.secret) !== undefined ? { secret: str(o.secret)! } : {}),
    ...(str(o.leaseId) !== undefined ? { leaseId: str(o.leaseId)! } : {}),
    ...(str(o.reason) !== undefined ? { reason: str(o.reason)! } : {}),
    ...(typeof o.detail === "object" && o.detail !== null ? { detail: o.detail as AuditDraft["detail"] } : {}),
  };
  return isBrake(draft) ? draft : null;
}

/**
 * Reads the deferred events. The row is MACed under the audit key when written, so someone who can
 * write the database but does not hold the master key cannot add, change or reorder its events
 * (a recovery would otherwise chain them under the key); a row that does not verify is `rejected`.
 * Deleting the whole row cannot be told from there having been none (docs/audit.md).
 */
export async function readDeferred(ctx: VaultContext, r: StoreReader): Promise<Deferred> {
  const text = await r.getMeta(DEFERRED_META);
  if (text === null || text === "") return { events: [], dropped: 0, rejected: false };
  const none: Deferred = { events: [], dropped: 0, rejected: true };
  let o: { body?: unknown; keyId?: unknown; mac?: unknown };
  try {
    o = JSON.parse(text) as typeof o;
  } catch {
    return none;
  }
  if (typeof o.body !== "string" || typeof o.keyId !== "string" || typeof o.mac !== "string") return none;
  const key = await ctx.auditKeys.get(o.keyId, r);
  if (key === null) return none;
  if (o.keyId !== ctx.keyring.current.id && (await retiredIn(ctx, r, o.keyId)) !== undefined) return none;
  const want = Buffer.from(deferredMac(key, o.body), "hex");
  const got = Buffer.from(o.mac, "hex");
  if (got.length !== want.length || !timingSafeEqual(got, want)) return none;
  let body: { events?: unknown; dropped?: unknown };
  try {
    body = JSON.parse(o.body) as typeof body;
  } catch {
    return none;
  }
  const events: DeferredEvent[] = [];
  for (const e of Array.isArray(body.events) ? body.events : []) {
    const draft = brakeDraft((e as { draft?: unknown })?.draft);
    const time = (e as { time?: unknown })?.time;
    if (draft === null || typeof time !== "number") return none;
    events.push({ time, draft });
  }
  return { events, dropped: typeof body.dropped === "number" ? body.dropped : 0, rejected: false };
}

/** Keeps a brake's event, to be appended after the recovery (the row is re-MACed under the current audit key). */
export async function deferBrake(ctx: VaultContext, tx: StoreTx, draft: AuditDraft, now: number): Promise<void> {
  const d = await readDeferred(ctx, tx);
  // A row that does not verify is not extended (its events would gain this MAC): it is replaced, and
  // the loss is counted so the recovery records it.
  const events = d.rejected ? [] : d.events;
  let dropped = d.rejected ? d.dropped + 1 : d.dropped;
  if (events.length >= MAX_DEFERRED) dropped++;
  else {
    const rebuilt = brakeDraft(draft);
    if (rebuilt !== null) events.push({ time: now, draft: rebuilt });
  }
  const body = JSON.stringify({ events, dropped, rejectedBefore: d.rejected });
  const key = ctx.auditKeys.current;
  await tx.setMeta(DEFERRED_META, JSON.stringify({ body, keyId: key.id, mac: deferredMac(key, body) }));
}

/** Empties the deferred events (after they were appended). */
export async function clearDeferred(tx: StoreTx): Promise<void> {
  await tx.setMeta(DEFERRED_META, "");
}

/** Notes an event this process chained (its commit may still be being built). */
export function noteChained(ctx: VaultContext, seq: number, hash: Buffer): void {
  state(ctx).chained = { seq, hash };
}

/** Notes a committed head (its last event's seq and time). */
export function noteCommitted(ctx: VaultContext, seq: number, time: number, hash: Uint8Array | null = null): void {
  const s = state(ctx);
  if (seq >= s.committed) {
    s.committed = seq;
    s.committedAt = time;
    s.committedHash = hash === null ? null : Buffer.from(hash);
    s.vouched = null;
  }
}

/** Notes a checkpoint this process wrote (valid by construction). */
export function noteCheckpoint(ctx: VaultContext, cp: AuditCheckpoint): void {
  state(ctx).checkpoint = cp;
}

/**
 * Records what the last commit found: a problem raises the `audit_broken` signal when it is new (so a
 * daemon logs it once), null clears it.
 */
export function noteAuditState(ctx: VaultContext, problem: string | null): void {
  if (problem === null) {
    ctx.auditBroken = null;
    return;
  }
  if (ctx.auditBroken === problem) return;
  ctx.auditBroken = problem;
  ctx.signals.emit({ type: "audit_broken", problem });
}

/**
 * Called by a recovery as it appends its break: the head it commits may be below what this process
 * wrote before (the trail was cut), so the last committed head is forgotten (the commit notes the new one).
 */
export function noteRecovered(ctx: VaultContext): void {
  const s = state(ctx);
  s.committed = 0;
  s.committedAt = 0;
  s.committedHash = null;
  s.vouched = null;
  s.wiped = null;
}
