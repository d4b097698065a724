/**
 * Changes committed by another instance sharing the store, turned into this vault's own signals, so
 * that a server acts on them exactly as on a local change: a token revoked there closes the token's
 * connections here; a killswitch pulled there closes this instance's agent connections; a policy
 * reloaded there is reloaded here (from this instance's own policy source), and when the two differ
 * this instance says so and grants nothing (src/vault/policy-sync.ts); a master key rotated there is
 * loaded here from this instance's own key source (src/vault/key-reload.ts). The store delivers the
 * changes (Store.changes, a change feed such as PostgreSQL's LISTEN/NOTIFY with polling); this file
 * only decides what each one means.
 *
 * Lease revocations need nothing here: every access reads its lease in its own transaction, so a
 * lease revoked on any instance is refused on every instance from that commit on.
 */
import type { StoreChange } from "./ports.js";
import type { VaultContext } from "./context.js";
import { checkKillswitch, KILLSWITCH_META } from "./lockout.js";
import { catchUpKeys, CURRENT_KEY_META, followKeyRotation } from "./key-reload.js";
import { followPolicy, POLICY_META } from "./policy-sync.js";
import { liveTokenIds, markRevoked, recheckTokens } from "./token-state.js";

export { checkPolicyStamp, followPolicy, formatPolicyStamp, parsePolicyStamp, POLICY_META, type PolicyStamp } from "./policy-sync.js";

/**
 * Acts on one change from another instance. Never throws: a read that fails here is repeated by the
 * daemon's own polls (killswitch, tokens), which stay on as a safety net.
 */
export function applyRemoteChange(ctx: VaultContext, change: StoreChange): void {
  if (ctx.closed) return;
  switch (change.kind) {
    case "token_revoked":
      // Marked only once the store says so: a mark lasts until the process restarts, and a change is
      // a notice to look, not a verdict (a read failure marks it: the notice came from the store's own
      // log, and failing closed is the safe way).
      void recheckTokens(ctx, [change.tokenId]).catch(() => markRevoked(ctx, change.tokenId));
      return;
    case "meta":
      if (change.key === KILLSWITCH_META) void checkKillswitch(ctx).catch(() => {});
      else if (change.key === POLICY_META) void followPolicy(ctx).catch(() => {});
      else if (change.key === CURRENT_KEY_META) void followKeyRotation(ctx);
      return;
    case "leases_revoked":
      return;
    case "resync":
      // Anything may have changed: re-read all of it.
      void checkKillswitch(ctx).catch(() => {});
      void recheckTokens(ctx, liveTokenIds(ctx)).catch(() => {});
      void followPolicy(ctx).catch(() => {});
      void catchUpKeys(ctx);
      return;
  }
}
