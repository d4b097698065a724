/** How the CLI names a policy version (in `policy explain` and `status`). */
import type { PolicyVersion } from "../../vault/policy.js";

/**
 * `#3 (digest 0d4c1a2b3c4d…, loaded 2025-01-31T14:00:00.000Z)`, with `, broken` when that load
 * failed and `, STALE: …` when another instance sharing the store put another policy in force. The load number counts the policies the vault (or daemon) has put in force since it opened.
 */
export function policyVersionText(v: PolicyVersion): string {
  const digest = v.digest === "" ? "no file read" : `digest ${v.digest.slice(0, 12)}…`;
  const stale =
    v.stale === undefined
      ? ""
      : v.stale.stored === v.digest
        ? `, STALE: this instance's [vault] limits (${(v.stale.limits ?? []).join(", ")}) are not the ones in force on the shared database, so it grants nothing`
        : `, STALE: the shared database has ${storedText(v.stale.stored)} in force, so this instance grants nothing`;
  return `#${v.load} (${digest}, loaded ${new Date(v.loadedAt).toISOString()}${v.state === "broken" ? ", broken" : ""}${stale})`;
}

/** The policy a stamp names (`full`: the whole digest): `""` is a reload's file that could not be read, a non-digest a damaged stamp. */
export function storedText(stored: string, full = false): string {
  if (stored === "") return "a policy whose file could not be read (every grant denied)";
  if (!/^[0-9a-f]{64}$/.test(stored)) return "a damaged policy stamp (a reload puts a policy in force again)";
  return `digest ${full ? stored : `${stored.slice(0, 12)}…`}`;
}
