/** The vault's size and count limits, with their defaults (set in lessor.toml [vault]). */
import { VaultError } from "../base/errors.js";

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
  /**
   * `proxy_request` rows of requests that went (outcome ok or error) written one each per identity and
   * agent in one window of {@link authFailureWindowMs}; past it they are counted, one summary row per
   * window (src/vault/refusals.ts). The same burst, in tallies of their own, for an agent's own
   * `tool_call` reports and its revocations that changed nothing. Default 200.
   */
  proxyRequestRows: number;
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
  proxyRequestRows: 200,
  approvalWaitMs: 10 * 60_000,
  approvalUseMs: 10 * 60_000,
  heartbeatMs: null,
};


/**
 * The limits a grant (or an access, a renewal, an approval) decides by, pinned beside the policy on a
 * store several instances share (src/vault/policy-sync.ts), by the name each has in lessor.toml's
 * `[vault]` section. The others (value size, versions kept, retention, the refusal window) change what
 * an admin's writes or the trail's housekeeping do, never what an agent is granted.
 */
const PINNED: Partial<Record<keyof Limits, string>> = {
  maxLiveLeasesPerAgent: "max_live_leases_per_agent",
  approvalWaitMs: "approval_wait",
  approvalUseMs: "approval_use",
  heartbeatMs: "heartbeat",
};

/**
 * Throws VaultError("invalid_request") unless every limit is a whole number from 1 (the heartbeat may
 * be null: off). lessor.toml's parser already holds them to this; a program embedding the vault is
 * held to it here.
 */
export function checkLimits(limits: Limits): void {
  for (const [k, v] of Object.entries(limits) as [keyof Limits, unknown][]) {
    if (k === "heartbeatMs" && v === null) continue;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1) throw new VaultError("invalid_request", `the vault limit ${k} must be a whole number from 1, not ${String(v)}`);
  }
}

/**
 * What policy rules mean, pinned with the limits as `rule_semantics=N`: 2 since `reveal` (a rule with
 * methods or paths keeps the value from the agent). An older lessor sharing the store reads it as a
 * limit it does not have and grants nothing under that stamp, rather than hand out values a newer
 * instance keeps back; every instance must run a lessor of the same rule semantics.
 */
export const RULE_SEMANTICS = 2;

/** The pseudo-limit's name in {@link limitsText}. */
export const RULE_SEMANTICS_NAME = "rule_semantics";

const texts = new WeakMap<Limits, string>();

/**
 * The pinned limits as one line of `name=value` pairs in a fixed order (durations in ms, `off` for no
 * heartbeat): what a shared store holds beside the policy digest, so that every instance grants under
 * the same limits. Computed once per limits object: do not change a Limits after a vault opened with it.
 */
export function limitsText(limits: Limits): string {
  let t = texts.get(limits);
  if (t === undefined) {
    t = [...(Object.keys(PINNED) as (keyof Limits)[]).map((k) => `${PINNED[k]}=${limits[k] ?? "off"}`), `${RULE_SEMANTICS_NAME}=${RULE_SEMANTICS}`].join(" ");
    texts.set(limits, t);
  }
  return t;
}

/**
 * The names of the limits whose values differ between two {@link limitsText} lines; a name present in
 * only one of them counts as differing (a newer lessor's limit), and a line that is not pairs at all
 * (a damaged stamp) differs in every limit.
 */
export function differingLimits(a: string, b: string): string[] {
  const x = limitPairs(a);
  const y = limitPairs(b);
  if (x === null || y === null) return [...(Object.values(PINNED) as string[]), RULE_SEMANTICS_NAME];
  return [...new Set([...x.keys(), ...y.keys()])].filter((k) => x.get(k) !== y.get(k));
}

/** A {@link limitsText} line's pairs by name; null for a line that is not pairs at all (damaged). */
function limitPairs(t: string): Map<string, string> | null {
  const m = new Map<string, string>();
  for (const p of t.split(" ")) {
    const eq = p.indexOf("=");
    if (eq <= 0) return null;
    m.set(p.slice(0, eq), p.slice(eq + 1));
  }
  return m;
}

/**
 * The value a {@link limitsText} line pins for one limit, as written (`off`, or a whole number);
 * undefined when the line does not name it or is damaged.
 */
export function pinnedLimit(text: string, limit: keyof Limits): string | undefined {
  const name = PINNED[limit];
  return name === undefined ? undefined : limitPairs(text)?.get(name);
}
