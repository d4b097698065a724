/**
 * Changes committed by another instance sharing the store, turned into this vault's own signals, so
 * that a server acts on them exactly as on a local change: a token revoked there closes the token's
 * connections here; a killswitch pulled there closes this instance's agent connections; a policy
 * reloaded there is reloaded here (from this instance's own policy source), and when the two differ
 * this instance says so. The store delivers the changes (Store.changes, a change feed such as
 * PostgreSQL's LISTEN/NOTIFY with polling); this file only decides what each one means.
 *
 * Lease revocations need nothing here: every access reads its lease in its own transaction, so a
 * lease revoked on any instance is refused on every instance from that commit on.
 */
import type { StoreChange } from "./ports.js";
import type { VaultContext } from "./context.js";
import { checkKillswitch, KILLSWITCH_META } from "./lockout.js";
import { installPolicy, loadOrBroken } from "./policy-state.js";
import { liveTokenIds, markRevoked, recheckTokens } from "./token-state.js";

/** The store metadata key naming the policy the last reload (on any instance) put in force. */
export const POLICY_META = "policy";

/** What {@link POLICY_META} holds. */
export interface PolicyStamp {
  /** The sha-256 of the policy text that was loaded. */
  digest: string;
  state: "ok" | "broken";
  /** Epoch ms of the reload. */
  at: number;
  /** Who reloaded it (an identity id). */
  by: string;
}

/** The stored form of a stamp. */
export function formatPolicyStamp(p: PolicyStamp): string {
  return JSON.stringify({ digest: p.digest, state: p.state, at: p.at, by: p.by });
}

/** Reads a stamp; null when absent or not one lessor wrote. */
export function parsePolicyStamp(text: string | null): PolicyStamp | null {
  if (text === null) return null;
  try {
    const o = JSON.parse(text) as Record<string, unknown>;
    if (typeof o.digest !== "string" || !/^[0-9a-f]{64}$/.test(o.digest)) return null;
    return {
      digest: o.digest,
      state: o.state === "broken" ? "broken" : "ok",
      at: typeof o.at === "number" ? o.at : 0,
      by: typeof o.by === "string" ? o.by.slice(0, 200) : "",
    };
  } catch {
    return null;
  }
}

/**
 * Acts on one change from another instance. Never throws: a read that fails here is repeated by the
 * daemon's own polls (killswitch, tokens), which stay on as a safety net.
 */
export function applyRemoteChange(ctx: VaultContext, change: StoreChange): void {
  if (ctx.closed) return;
  switch (change.kind) {
    case "token_revoked":
      markRevoked(ctx, change.tokenId);
      return;
    case "meta":
      if (change.key === KILLSWITCH_META) void checkKillswitch(ctx).catch(() => {});
      else if (change.key === POLICY_META) void followPolicy(ctx).catch(() => {});
      return;
    case "leases_revoked":
      return;
    case "resync":
      // Anything may have changed: re-read all of it.
      void checkKillswitch(ctx).catch(() => {});
      void recheckTokens(ctx, liveTokenIds(ctx)).catch(() => {});
      void followPolicy(ctx).catch(() => {});
      return;
  }
}

/**
 * Brings this instance's policy in line with the stamp the last reload stored: when the stored digest
 * differs from the policy in force, reloads from this instance's loader (its policy file); when they
 * still differ, raises `policy_stale`. A vault opened with a fixed policy cannot reload: it only says
 * it is stale. Not audited: the reload that caused it was, on the instance that did it.
 */
export async function followPolicy(ctx: VaultContext): Promise<void> {
  const stamp = parsePolicyStamp(await ctx.store.getMeta(POLICY_META));
  if (stamp === null || ctx.closed) return;
  if (stamp.digest === ctx.policy.digest) return;
  if (ctx.loadPolicy !== null) {
    const next = await loadOrBroken(ctx.loadPolicy);
    if (ctx.closed) return;
    installPolicy(ctx, next);
    ctx.signals.emit({ type: "policy_reloaded", ok: next.error === undefined, remote: true });
  }
  if (ctx.policy.digest !== stamp.digest) ctx.signals.emit({ type: "policy_stale", local: ctx.policy.digest, stored: stamp.digest });
}

/** At start: raises `policy_stale` when the policy in force is not the one the last reload stored (no reload). */
export async function checkPolicyStamp(ctx: VaultContext): Promise<void> {
  const stamp = parsePolicyStamp(await ctx.store.getMeta(POLICY_META));
  if (stamp !== null && !ctx.closed && stamp.digest !== ctx.policy.digest)
    ctx.signals.emit({ type: "policy_stale", local: ctx.policy.digest, stored: stamp.digest });
}
