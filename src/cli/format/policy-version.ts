/** How the CLI names a policy version (in `policy explain` and `status`). */
import type { PolicyVersion } from "../../vault/policy.js";

/**
 * `#3 (digest 0d4c1a2b3c4d…, loaded 2025-01-31T14:00:00.000Z)`, with `, broken` when that load
 * failed. The load number counts the policies the vault (or daemon) has put in force since it opened.
 */
export function policyVersionText(v: PolicyVersion): string {
  const digest = v.digest === "" ? "no file read" : `digest ${v.digest.slice(0, 12)}…`;
  return `#${v.load} (${digest}, loaded ${new Date(v.loadedAt).toISOString()}${v.state === "broken" ? ", broken" : ""})`;
}
