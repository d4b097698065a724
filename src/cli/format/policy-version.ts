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
        : `, STALE: the shared database has digest ${v.stale.stored.slice(0, 12)}… in force, so this instance grants nothing`;
  return `#${v.load} (${digest}, loaded ${new Date(v.loadedAt).toISOString()}${v.state === "broken" ? ", broken" : ""}${stale})`;
}
