/**
 * A secret's current version never goes down under a running vault, and `audit verify` finds one that
 * went down while none ran. Versions only count up (set, rotate and rollback each add one; only
 * `secret rm` starts again, after a `secret_deleted` event), and each is audited with its number in
 * the same commit. A current version below one already seen, or below the last one the trail records
 * storing, was put back by someone who can write the database (the row's `current_version` edited, the
 * newer rows dropped): the version the owner rotated away, perhaps because it leaked. It is sealed to
 * its place and would open.
 *
 * Free where it matters: each process keeps, per vault, the highest version of each secret it has seen
 * current or stored (a map look-up per use); the trail is read only when a version below that shows up
 * (a `secret rm` and store again on another instance, or such an edit), and by `audit verify`, which
 * reads every version event. A rollback made while no process ran, or to a version at or above the one
 * this process saw while another instance stored a later one, is not refused at use: `audit verify`
 * reports it.
 */
import type { AuditReader } from "../audit/reader.js";
import type { AuditRecord } from "../base/types.js";
import { refString } from "../base/names.js";
import { VaultError } from "../base/errors.js";
import type { Store } from "./ports.js";
import type { VaultContext } from "./context.js";

/** Per vault: the highest version of each secret ("scope/name") this process has seen current or stored. */
const floors = new WeakMap<VaultContext, Map<string, number>>();

function floorsOf(ctx: VaultContext): Map<string, number> {
  let m = floors.get(ctx);
  if (m === undefined) floors.set(ctx, (m = new Map()));
  return m;
}

/** Notes that this process stores `version` of `ref` (inside the commit; should it roll back, the next use reads the trail once). */
export function noteStoredVersion(ctx: VaultContext, ref: { scope: string; name: string }, version: number): void {
  floorsOf(ctx).set(refString(ref), version);
}

/** The events that set a secret's current version (outcome ok), and the one that ends it. */
const VERSION_EVENTS = ["secret_stored", "secret_rotated", "secret_rolled_back", "secret_deleted"];

/** `detail.version` of an event when it is a safe integer, else null (a detail that does not parse names none). */
function versionIn(e: AuditRecord): number | null {
  if (e.detail === null) return null;
  try {
    const v = (JSON.parse(e.detail) as { version?: unknown } | null)?.version;
    return typeof v === "number" && Number.isSafeInteger(v) ? v : null;
  } catch {
    return null;
  }
}

/** The version the trail last records storing for `secret` since its last deletion, or null when none. */
async function trailVersion(r: AuditReader, secret: string): Promise<number | null> {
  const events = await r.queryAudit({ secret, types: VERSION_EVENTS, order: "desc", limit: 10_000 });
  for (const e of events) {
    if (e.outcome !== "ok" || e.secret !== secret) continue;
    if (e.type === "secret_deleted") return null;
    const v = versionIn(e);
    if (v !== null) return v;
  }
  return null;
}

function rolledBack(secret: string, current: number, stored: number): VaultError {
  return new VaultError(
    "decrypt_failed",
    `secret ${secret} names version ${current} as current, but the audit trail records version ${stored} stored since: the database was edited to put an older value back, and it is not handed out. Check the trail (lessor audit verify), then store the secret again (lessor secret set ${secret}), or restore lessor.db from a backup`,
  );
}

/**
 * The refusal to hand out `v` as the current version of its secret when this process has seen a later
 * one current and the trail records storing a later one, or null. Names the secret and both versions
 * (none of them secret), never the value.
 */
export async function rolledBackError(ctx: VaultContext, r: AuditReader, v: { scope: string; name: string; version: number }): Promise<VaultError | null> {
  const secret = refString(v);
  const seen = floorsOf(ctx);
  const floor = seen.get(secret);
  if (floor === undefined || v.version >= floor) {
    if (floor !== v.version) seen.set(secret, v.version);
    return null;
  }
  const trail = await trailVersion(r, secret);
  if (trail !== null && v.version < trail) return rolledBack(secret, v.version, trail);
  seen.set(secret, v.version); // deleted and stored again since (another instance): the new secret's own count
  return null;
}

/**
 * For `audit verify`: the first secret whose current version is below the last version the trail
 * records storing for it (since its last deletion), as a sentence, or null. Reads every version event
 * (few: one per set, rotate, rollback and delete) and every secret's record, before and after them.
 */
export async function rolledBackProblem(store: Store): Promise<string | null> {
  // The secrets are read before the trail and again after it (neither read is one snapshot with the
  // trail): a secret rotated while the trail was read is ahead in the second, one removed and stored
  // again (version 1 anew) is not behind in the first. Only a version behind in both is reported.
  const before = new Map((await store.listSecrets({})).map((s) => [refString(s), s.currentVersion]));
  const last = new Map<string, number>();
  for (let afterSeq = 0; ; ) {
    const page = await store.queryAudit({ types: VERSION_EVENTS, order: "asc", afterSeq, limit: 10_000 });
    for (const e of page) {
      if (e.outcome !== "ok" || e.secret === null) continue;
      if (e.type === "secret_deleted") last.delete(e.secret);
      else {
        const v = versionIn(e);
        if (v !== null) last.set(e.secret, v);
      }
    }
    if (page.length < 10_000) break;
    afterSeq = page[page.length - 1]!.seq;
  }
  for (const s of await store.listSecrets({})) {
    const stored = last.get(refString(s));
    const earlier = before.get(refString(s));
    if (stored !== undefined && s.currentVersion < stored && earlier !== undefined && earlier < stored)
      return rolledBack(refString(s), s.currentVersion, stored).message;
  }
  return null;
}
