/**
 * Checks the whole audit trail: seq numbers without gaps, each event's prevHash equal to the hash
 * before it, each hash recomputed from its fields, and the head matching the keyed checkpoint.
 * Names the first bad event.
 */
import type { Keyring } from "../crypto/keyring.js";
import type { StoreReader } from "../store/types.js";
import { GENESIS, checkpointKey, checkpointValid, hashEvent } from "./chain.js";

/** The result of {@link verifyAudit}. */
export interface AuditVerifyResult {
  ok: boolean;
  /** Events checked. */
  events: number;
  /** Seq of the last event read (0 when empty). */
  headSeq: number;
  /** The first event found wrong, when there is one (`seq` of where the problem shows). */
  firstBad?: { seq: number; id: string | null };
  /** One plain sentence on what is wrong. */
  problem?: string;
}

const PAGE = 2000;

/** Walks the trail in pages from the store's committed state. */
export async function verifyAudit(store: StoreReader, keyring: Keyring): Promise<AuditVerifyResult> {
  let prev: Uint8Array = GENESIS;
  let expect = 1;
  let events = 0;
  let lastId: string | null = null;
  const fail = (seq: number, id: string | null, problem: string): AuditVerifyResult => ({
    ok: false,
    events,
    headSeq: expect - 1,
    firstBad: { seq, id },
    problem,
  });
  for (;;) {
    const page = await store.queryAudit({ afterSeq: expect - 1, order: "asc", limit: PAGE });
    for (const rec of page) {
      if (rec.seq !== expect)
        return fail(expect, null, `event ${expect} is missing (the next event found is ${rec.seq}): events were deleted`);
      if (!Buffer.from(rec.prevHash).equals(Buffer.from(prev)))
        return fail(rec.seq, rec.id, `event ${rec.seq} does not follow event ${rec.seq - 1}: its previous-hash link is wrong`);
      if (!hashEvent(rec).equals(Buffer.from(rec.hash)))
        return fail(rec.seq, rec.id, `event ${rec.seq} was altered: its fields do not match its hash`);
      prev = rec.hash;
      lastId = rec.id;
      expect++;
      events++;
    }
    if (page.length < PAGE) break;
  }
  const head = expect - 1;
  const cp = await store.getCheckpoint();
  if (cp === null) {
    if (head === 0) return { ok: true, events, headSeq: 0 };
    return fail(head, lastId, "the audit checkpoint is missing: the trail cannot be shown to be complete");
  }
  const master = keyring.get(cp.keyId);
  if (!master)
    return fail(head, lastId, `the audit checkpoint was made with master key ${cp.keyId}, which is not loaded`);
  const key = checkpointKey(master);
  const valid = checkpointValid(cp, key);
  key.key.fill(0);
  if (!valid) return fail(cp.seq, null, "the audit checkpoint was altered: its MAC does not match");
  if (cp.seq > head)
    return fail(head + 1, null, `the trail ends at event ${head} but the checkpoint says ${cp.seq}: events were removed from the end`);
  if (cp.seq < head || !Buffer.from(cp.hash).equals(Buffer.from(prev)))
    return fail(cp.seq, null, `the checkpoint (event ${cp.seq}) does not match the trail's head (event ${head})`);
  return { ok: true, events, headSeq: head };
}
