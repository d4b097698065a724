/**
 * Checks the whole audit trail: seq numbers without gaps, none below 1, each event's prevHash equal to the chain
 * value before it, each keyed event's MAC (format-1 events: their SHA-256) recomputed from its
 * fields, old-format events only at the start, and the head matching the keyed checkpoint. Names
 * the first bad event.
 *
 * Recoveries: an `audit_break` event (written by `lessor audit recover`, keyed like any other) says
 * what was found wrong before it, and from which event (`first_bad_seq`) the trail was unverifiable.
 * Problems at or after that event and before the break are reported with the break, not as a
 * failure; everything before `first_bad_seq`, the break's own link to the event before it, and
 * everything after the break must verify. A break cannot be forged without the audit key.
 */
import type { Keyring } from "../crypto/keyring.js";
import type { AuditReader } from "./reader.js";
import type { AuditCheckpoint, AuditHead, AuditRecord } from "../base/types.js";
import { AUDIT_FORMAT_KEYED, AUDIT_FORMAT_META, GENESIS, checkpointValid, checkpointValidV1, eventMacValid, hashEventV1 } from "./chain.js";
import { AuditKeys } from "./keys.js";
import { KEY_ROTATED, retiredBy, retiredWhere } from "./retired.js";
import { escapeUnsafe } from "../base/text.js";

/** A recovery found in the trail (an `audit_break` event): what it recorded as found. */
export interface AuditBreak {
  /** Seq of the `audit_break` event. */
  seq: number;
  time: number;
  /** Who recovered, and the reason they gave. */
  actorId: string;
  reason: string | null;
  /** What the recovery found wrong. */
  found: {
    problem: string | null;
    /** The first event that did not verify, or null when only the checkpoint was wrong (the end of the trail was cut or rolled back). */
    firstBadSeq: number | null;
    /** The trail's last event when the recovery ran, and the event the checkpoint vouched for. */
    headSeq: number;
    checkpointSeq: number | null;
  };
  /** Events before the break that cannot be verified (from `found.firstBadSeq` up to the break). */
  unverified: number;
}

/** The result of {@link verifyAudit}. */
export interface AuditVerifyResult {
  ok: boolean;
  /** Events checked. */
  events: number;
  /** Seq of the last event read (0 when empty). */
  headSeq: number;
  /** Recoveries in the trail, oldest first (empty when there were none): each says what was found wrong before it. */
  breaks: AuditBreak[];
  /** The first event found wrong, when there is one (`seq` of where the problem shows). */
  firstBad?: { seq: number; id: string | null };
  /** One plain sentence on what is wrong. */
  problem?: string;
}

/** A problem at one place in the trail. */
export interface AuditFault {
  seq: number;
  id: string | null;
  problem: string;
}

/** What {@link checkTrail} found, for the vault's own use (recovery, upgrade). */
export interface TrailCheck {
  result: AuditVerifyResult;
  /** The first event that does not verify (not covered by a recovery), or null. */
  eventFault: AuditFault | null;
  /** What is wrong with the checkpoint, when the events are fine, or null. */
  checkpointFault: AuditFault | null;
  /** The last event read, and the checkpoint read. */
  head: AuditHead | null;
  checkpoint: AuditCheckpoint | null;
}

const PAGE = 2000;

/** Walks the trail in pages from the store's committed state. */
export async function verifyAudit(store: AuditReader, keyring: Keyring, vaultId: string | null): Promise<AuditVerifyResult> {
  const keys = new AuditKeys(keyring, vaultId);
  try {
    return (await checkTrail(store, keys)).result;
  } finally {
    keys.wipe();
  }
}

const eq = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;

function readBreak(rec: AuditRecord): { firstBad: number | null; found: AuditBreak["found"] } {
  let d: Record<string, unknown> = {};
  try {
    const o = JSON.parse(rec.detail ?? "{}") as unknown;
    if (typeof o === "object" && o !== null) d = o as Record<string, unknown>;
  } catch {
    // a keyed break with unreadable detail cannot exist; treat it as having found nothing
  }
  const num = (v: unknown): number | null => (typeof v === "number" && Number.isSafeInteger(v) ? v : null);
  // A genuine break is the first event its recovery appended, right after the head it recorded: one
  // that says otherwise (a forged event chained by some other path) excuses nothing.
  const headSeq = num(d.head_seq);
  const headHash = typeof d.head_hash === "string" ? d.head_hash : null;
  const linked = headSeq === rec.seq - 1 && (headSeq === 0 ? headHash === null : headHash === Buffer.from(rec.prevHash).toString("hex"));
  const firstBad = linked ? num(d.first_bad_seq) : null;
  return {
    firstBad,
    found: {
      problem: typeof d.problem === "string" ? d.problem : null,
      firstBadSeq: firstBad,
      headSeq: num(d.head_seq) ?? rec.seq - 1,
      checkpointSeq: num(d.checkpoint_seq),
    },
  };
}

/** How many times {@link checkTrail} reads on when a concurrent commit moved the checkpoint past the events it read. */
const MAX_CATCH_UP = 20;

/**
 * Walks the trail through `reader` (the store, or a transaction) with `keys`, and checks the
 * checkpoint. Every event is checked on its own (its seq, its link to the stored event before it,
 * its MAC), so a recovery further on can cover a problem found earlier.
 */
export async function checkTrail(reader: AuditReader, keys: AuditKeys): Promise<TrailCheck> {
  let prev: Uint8Array = GENESIS;
  let expect = 1;
  let events = 0;
  let keyed = false;
  let last: AuditRecord | null = null;
  /** The first problem not (yet) covered by a recovery after it. */
  let pending: AuditFault | null = null;
  const breaks: AuditBreak[] = [];
  /** Keys retired by the rotations read so far, with the seq of the `key_rotated` event that retired each. */
  const retired = new Map<string, number>();
  const fault = (seq: number, id: string | null, problem: string): void => {
    pending ??= { seq, id, problem };
  };
  /** Reads and checks the events from `expect` to the end of what is stored now. */
  const walk = async (): Promise<void> => {
    for (;;) {
      const page = await reader.queryAudit({ afterSeq: expect - 1, order: "asc", limit: PAGE });
      for (const rec of page) {
        events++;
        const gap = rec.seq !== expect;
        if (gap) fault(expect, null, `event ${expect} is missing (the next event found is ${rec.seq}): events were deleted`);
        if (rec.keyId === null) {
          if (keyed) fault(rec.seq, rec.id, `event ${rec.seq} is in the old unkeyed format after keyed events: it was rewritten without the audit key`);
          else if (!gap && !eq(rec.prevHash, prev)) fault(rec.seq, rec.id, `event ${rec.seq} does not follow event ${rec.seq - 1}: its previous-hash link is wrong`);
          else if (!hashEventV1(rec).equals(Buffer.from(rec.hash))) fault(rec.seq, rec.id, `event ${rec.seq} was altered: its fields do not match its hash`);
        } else {
          keyed = true;
          const key = await keys.get(rec.keyId, reader);
          if (key === null)
            fault(rec.seq, rec.id, `event ${rec.seq} was written under master key ${escapeUnsafe(rec.keyId)}, which is neither loaded nor archived: load that key (as a previous key) to verify it`);
          else if (!eventMacValid(rec, key)) fault(rec.seq, rec.id, `event ${rec.seq} was altered: its fields do not match its hash`);
          else if (retired.has(rec.keyId))
            // Whoever still holds a retired key (the leak the rotation answered) can MAC under it.
            fault(rec.seq, rec.id, `event ${rec.seq} is MACed under master key ${escapeUnsafe(rec.keyId)}, which ${retiredWhere(retired.get(rec.keyId)!)} retired: it was written after that with the retired key, not by this vault`);
          else {
            if (rec.type === KEY_ROTATED) for (const id of retiredBy(rec)) if (!retired.has(id)) retired.set(id, rec.seq);
            const isBreak = rec.type === "audit_break";
            if (isBreak) {
              const b = readBreak(rec);
              const first = pending as AuditFault | null; // set by fault(), which TypeScript does not follow
              if (first !== null && b.firstBad !== null && first.seq >= b.firstBad) pending = null;
              breaks.push({
                seq: rec.seq,
                time: rec.time,
                actorId: rec.actorId,
                reason: rec.reason,
                found: b.found,
                unverified: b.firstBad === null ? 0 : Math.max(0, rec.seq - b.firstBad),
              });
            }
            // A break must still link to the event it was appended after, as stored now.
            if ((isBreak || !gap) && !eq(rec.prevHash, prev))
              fault(rec.seq, rec.id, isBreak
                ? `event ${rec.seq} (a recovery) does not follow event ${rec.seq - 1}: the event it was appended after was changed or removed since`
                : `event ${rec.seq} does not follow event ${rec.seq - 1}: its previous-hash link is wrong`);
          }
        }
        prev = rec.hash;
        last = rec;
        expect = rec.seq + 1;
      }
      if (page.length < PAGE) break;
    }
  };
  // The walk reads from event 1 on: a row numbered below 1 (which no vault writes, but a writer of the
  // database can insert, and a query shows like any other) is named here, the lowest first.
  const [lowest] = await reader.queryAudit({ order: "asc", limit: 1 });
  if (lowest !== undefined && lowest.seq < 1)
    fault(lowest.seq, lowest.id, `event ${lowest.seq} is numbered below 1, where the trail has no events: it was inserted into the database, not written by this vault`);
  await walk();
  let cp = await reader.getCheckpoint();
  // Read outside a transaction (the store itself), a commit made after the events were read has moved
  // the checkpoint past them (events and checkpoint are written in one commit): read on to it, a few
  // times, rather than call a busy trail cut. A checkpoint past every event stored is still a cut.
  for (let round = 0; round < MAX_CATCH_UP && cp !== null && cp.seq > ((last as AuditRecord | null)?.seq ?? 0); round++) {
    const before = events;
    await walk();
    if (events === before) break;
    cp = await reader.getCheckpoint();
  }
  const end = last as AuditRecord | null; // set inside walk(), which TypeScript does not follow
  const head: AuditHead | null = end === null ? null : { seq: end.seq, hash: end.hash, keyId: end.keyId };
  const headSeq = head?.seq ?? 0;
  const done = (eventFault: AuditFault | null, checkpointFault: AuditFault | null): TrailCheck => {
    const f = eventFault ?? checkpointFault;
    const result: AuditVerifyResult =
      f === null ? { ok: true, events, headSeq, breaks } : { ok: false, events, headSeq, breaks, firstBad: { seq: f.seq, id: f.id }, problem: f.problem };
    return { result, eventFault, checkpointFault, head, checkpoint: cp };
  };
  const unresolved = pending as AuditFault | null;
  if (unresolved !== null) return done(unresolved, null);
  const cpFault = (problem: string): TrailCheck => done(null, { seq: headSeq + 1, id: null, problem });
  const format = await reader.getMeta(AUDIT_FORMAT_META);
  if (cp === null) {
    if (head === null) {
      if (format === AUDIT_FORMAT_KEYED) return cpFault("the audit trail is empty, but this vault has written events: the trail was wiped");
      // Storing a secret is always audited.
      if ((await reader.keyIdsInUse()).length > 0) return cpFault("the audit trail is empty, but the vault holds secrets whose storing was audited: the trail was wiped");
      return done(null, null);
    }
    return cpFault("the audit checkpoint is missing: the trail cannot be shown to be complete");
  }
  if (head === null || head.keyId === null) {
    if (format === AUDIT_FORMAT_KEYED)
      return cpFault(
        head === null
          ? "the audit trail is empty, but its checkpoint vouches for events: the trail was wiped"
          : "the trail ends in events of the old unkeyed format, but this vault had moved to the keyed chain: its keyed events were removed",
      );
    const master = keys.master(cp.keyId);
    if (!master) return cpFault(`the audit checkpoint was made with master key ${escapeUnsafe(cp.keyId)}, which is not loaded`);
    if (!checkpointValidV1(cp, master)) return cpFault("the audit checkpoint was altered: its MAC does not match");
  } else {
    const key = await keys.get(cp.keyId, reader);
    if (key === null) return cpFault(`the audit checkpoint was made under master key ${escapeUnsafe(cp.keyId)}, which is neither loaded nor archived`);
    if (!checkpointValid(cp, key)) return cpFault("the audit checkpoint was altered: its MAC does not match");
    // The checkpoint is written under the key in force: never one a rotation retired (the trail's, or the archive's).
    const gone = retired.get(cp.keyId) ?? ((await keys.archivedIds(reader)).includes(cp.keyId) ? 0 : undefined);
    if (gone !== undefined)
      return cpFault(`the audit checkpoint is MACed under master key ${escapeUnsafe(cp.keyId)}, which ${retiredWhere(gone)} retired: it was rewritten with the retired key, not by this vault`);
  }
  if (cp.seq > headSeq)
    return cpFault(`the trail ends at event ${headSeq} but the checkpoint says ${cp.seq}: events were removed from the end`);
  if (cp.seq < headSeq || !eq(cp.hash, head!.hash))
    return cpFault(`the checkpoint (event ${cp.seq}) does not match the trail's head (event ${headSeq})`);
  return done(null, null);
}
