/**
 * Master keys a rotation retired. A `key_rotated` event (MACed under the key the rotation moved to)
 * names in its detail the keys it retired (`from`); the rotation also archives their audit roots,
 * sealed under the new key (./keys.ts). From that event on, a retired key authenticates nothing: no
 * later event, no checkpoint, no deferred row, and it is never made the vault's current key again.
 * Whoever still holds a retired key (the leak a rotation answers) can compute MACs under it, so
 * anything under it after its retirement is tampering (docs/audit.md, "Master-key rotation").
 */
import type { AuditRecord } from "../base/types.js";
import { eventMacValid } from "./chain.js";
import type { AuditKeys } from "./keys.js";
import type { AuditReader } from "./reader.js";

/** The event type that retires keys. */
export const KEY_ROTATED = "key_rotated";

/** The keys a `key_rotated` event retired: the ids in its detail's `from`, never its `to`. */
export function retiredBy(rec: AuditRecord): string[] {
  try {
    const d = JSON.parse(rec.detail ?? "{}") as { from?: unknown; to?: unknown } | null;
    if (typeof d !== "object" || d === null || typeof d.from !== "string") return [];
    return d.from.split(",").filter((id) => id !== "" && id !== d.to);
  } catch {
    return [];
  }
}

const PAGE = 1000;

/**
 * The retired keys, by id: the seq of the `key_rotated` event that retired each (trail order; an
 * event that does not verify, or is MACed under a key retired before it, retires nothing), and 0 for
 * a key only the archive shows retired (the events were cut: verify reports that on its own).
 */
export async function retiredKeys(reader: AuditReader, keys: AuditKeys): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (let after = 0; ; ) {
    const page = await reader.queryAudit({ types: [KEY_ROTATED], afterSeq: after, order: "asc", limit: PAGE });
    for (const rec of page) {
      after = rec.seq;
      if (rec.keyId === null || out.has(rec.keyId)) continue;
      const key = await keys.get(rec.keyId, reader);
      if (key === null || !eventMacValid(rec, key)) continue;
      for (const id of retiredBy(rec)) if (!out.has(id)) out.set(id, rec.seq);
    }
    if (page.length < PAGE) break;
  }
  for (const id of await keys.archivedIds(reader)) if (!out.has(id)) out.set(id, 0);
  return out;
}

/** Where a key was retired, for messages: "the rotation at event N", or "an earlier rotation". */
export function retiredWhere(seq: number): string {
  return seq > 0 ? `the rotation at event ${seq}` : "an earlier rotation (its audit key is archived)";
}
