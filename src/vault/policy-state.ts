/**
 * The policy a vault is using and which version of it: a broken policy file never stops the vault.
 * {@link loadOrBroken} turns a loader's failure into a broken policy (no rules, every decision denies
 * and says why), so the vault still opens and the brakes (revoke, killswitch, audit, status, key
 * rotation) keep working while grants are refused. {@link installPolicy} counts each policy put in
 * force, so `explain` and `status` can say which version answered.
 */
import { isVaultError } from "../base/errors.js";
import { brokenPolicy, type Policy, type PolicyStaleness, type PolicyVersion } from "./policy.js";
import type { VaultContext } from "./context.js";
import { differingLimits, limitsText } from "./limits.js";

const versions = new WeakMap<VaultContext, { load: number; loadedAt: number }>();

/** Where a policy that came from a loader (not a file lessor read itself) is said to come from. */
const LOADER_SOURCE = "(policy loader)";

/**
 * Runs `loader`; when it fails, returns a broken policy carrying the error's message instead of
 * throwing. (The home's loader, in src/config/open-vault.ts, already returns a broken policy that
 * names its file.)
 */
export async function loadOrBroken(loader: () => Promise<Policy>): Promise<Policy> {
  try {
    return await loader();
  } catch (e) {
    const why = isVaultError(e) ? e.message : `the policy loader failed unexpectedly (${e instanceof Error ? e.name : typeof e})`;
    return brokenPolicy(LOADER_SOURCE, why);
  }
}

/** Puts `policy` in force and counts it as the next version; returns that version. */
export function installPolicy(ctx: VaultContext, policy: Policy): PolicyVersion {
  const next = { load: (versions.get(ctx)?.load ?? 0) + 1, loadedAt: ctx.now() };
  versions.set(ctx, next);
  ctx.policy = policy;
  return policyVersion(ctx);
}

/** The end of the last reload queued on each vault (src/vault/vault.ts reloadPolicy). */
const reloads = new WeakMap<VaultContext, Promise<unknown>>();

/**
 * Runs `reload` once every reload of this vault queued before it has ended, so that reloads never
 * overlap: a reload whose commit fails puts back the policy in force before it, which must be the
 * last one committed (not another reload's, still uncommitted or failed, nor the rules a broken reload
 * took away).
 */
export function oneReloadAtATime<T>(ctx: VaultContext, reload: () => Promise<T>): Promise<T> {
  const run = (reloads.get(ctx) ?? Promise.resolve()).then(reload);
  reloads.set(ctx, run.catch(() => {}));
  return run;
}

/** The policy the store last said is in force (its digest and limits, when and by whom), as this process last read it. */
const stamps = new WeakMap<VaultContext, Stamp | null>();

type Stamp = { digest: string; at: number; by: string; limits?: string };

/** Records the policy stamp just read from the store, or written by this process (src/vault/policy-sync.ts). */
export function notePolicyStamp(ctx: VaultContext, stamp: Stamp | null): void {
  stamps.set(ctx, stamp === null ? null : { digest: stamp.digest, at: stamp.at, by: stamp.by, ...(stamp.limits === undefined ? {} : { limits: stamp.limits }) });
}

/**
 * How the policy in force (or the `[vault]` limits) differs from the last stamp read, or undefined
 * when it does not (or none was read).
 */
export function policyStaleness(ctx: VaultContext): PolicyStaleness | undefined {
  const s = stamps.get(ctx);
  if (s === undefined || s === null) return undefined;
  const limits = s.limits === undefined ? [] : differingLimits(limitsText(ctx.limits), s.limits);
  if (s.digest === ctx.policy.digest && limits.length === 0) return undefined;
  return { stored: s.digest, at: s.at, by: s.by, ...(limits.length > 0 ? { limits } : {}) };
}

/** The version of the policy in force (with `stale` when the store says another one is in force). */
export function policyVersion(ctx: VaultContext): PolicyVersion {
  const v = versions.get(ctx) ?? { load: 1, loadedAt: 0 };
  const stale = policyStaleness(ctx);
  return { load: v.load, digest: ctx.policy.digest, loadedAt: v.loadedAt, state: ctx.policy.error === undefined ? "ok" : "broken", ...(stale ? { stale } : {}) };
}
