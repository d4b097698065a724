/** The vault's size and count limits, with their defaults (set in lessor.toml [vault]). */

/** Limits with their defaults (lessor.toml [vault]). */
export interface Limits {
  /** Largest secret value in bytes. Default 65,536. */
  maxSecretBytes: number;
  /** Live leases one agent may hold at once. Default 100. */
  maxLiveLeasesPerAgent: number;
  /** Versions kept per secret (older ones are pruned on write). Default 10. */
  keepVersions: number;
  /** How long expired leases are kept before garbage collection deletes them. Default 7 days. */
  leaseRetentionMs: number;
  /**
   * Failed authentications after a source's first are counted and audited as one row per source
   * this often (see src/vault/auth-failures.ts). Default 10 s.
   */
  authFailureWindowMs: number;
  /** How long a request waits for a person's approval before it lapses. Default 10 minutes. */
  approvalWaitMs: number;
  /** How long an approved (or denied) request stands after the decision. Default 10 minutes. */
  approvalUseMs: number;
  /**
   * The heartbeat dead-man switch's period (./heartbeat.ts): with no heartbeat for this long the
   * killswitch is pulled. Default null: off.
   */
  heartbeatMs: number | null;
}

export const DEFAULT_LIMITS: Limits = {
  maxSecretBytes: 64 * 1024,
  maxLiveLeasesPerAgent: 100,
  keepVersions: 10,
  leaseRetentionMs: 7 * 24 * 3600 * 1000,
  authFailureWindowMs: 10_000,
  approvalWaitMs: 10 * 60_000,
  approvalUseMs: 10 * 60_000,
  heartbeatMs: null,
};


/** The name each limit has in lessor.toml's `[vault]` section (auth_failure_window only an embedding program sets). */
const LIMIT_NAMES: Record<keyof Limits, string> = {
  maxSecretBytes: "max_secret_bytes",
  maxLiveLeasesPerAgent: "max_live_leases_per_agent",
  keepVersions: "keep_versions",
  leaseRetentionMs: "lease_retention",
  authFailureWindowMs: "auth_failure_window",
  approvalWaitMs: "approval_wait",
  approvalUseMs: "approval_use",
  heartbeatMs: "heartbeat",
};

const texts = new WeakMap<Limits, string>();

/**
 * The limits as one line of `name=value` pairs in a fixed order (durations in ms, `off` for no
 * heartbeat): what a store shared by several instances pins beside the policy digest
 * (src/vault/policy-sync.ts), so that every instance grants under the same limits. Computed once per
 * limits object: do not change a Limits after a vault opened with it.
 */
export function limitsText(limits: Limits): string {
  let t = texts.get(limits);
  if (t === undefined) {
    t = (Object.keys(LIMIT_NAMES) as (keyof Limits)[]).map((k) => `${LIMIT_NAMES[k]}=${limits[k] ?? "off"}`).join(" ");
    texts.set(limits, t);
  }
  return t;
}

/**
 * The names of the limits whose values differ between two {@link limitsText} lines, in this
 * vault's order; a name present in only one of them counts as differing (a newer lessor's limit).
 */
export function differingLimits(a: string, b: string): string[] {
  const pairs = (t: string): Map<string, string> => new Map(t.split(" ").map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)]));
  const x = pairs(a);
  const y = pairs(b);
  return [...new Set([...x.keys(), ...y.keys()])].filter((k) => k !== "" && x.get(k) !== y.get(k));
}
