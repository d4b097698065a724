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

