/**
 * The policy's data: rules as loaded, the policy they form, what is asked of it and what it answers.
 * Parsing is in ./parse.ts (with ./rule.ts per rule), deciding in ./decide.ts. See docs/policy.md.
 */
import type { SecretRef } from "../../base/types.js";

/** The terms a lease granted by a rule gets. Times in milliseconds; null means unlimited. */
export interface LeaseTerms {
  ttlMs: number;
  maxTtlMs: number;
  maxUses: number | null;
  renewable: boolean;
  maxRenewals: number | null;
}

/** One `[[rule]]`, validated and normalised. */
export interface Rule {
  readonly name: string;
  /** 1-based position in the file. */
  readonly index: number;
  readonly effect: "allow" | "deny";
  /** Agent-id globs, as written. */
  readonly agents: readonly string[];
  /** Secret patterns (`scope/name` or bare `name`), as written. */
  readonly secrets: readonly string[];
  /** Normalised domain patterns (exact hosts or `*.suffix`); empty for deny rules. */
  readonly domains: readonly string[];
  readonly anyDomain: boolean;
  /** Upper-case HTTP methods, or null for any. */
  readonly methods: readonly string[] | null;
  /** Path prefixes in canonical form (src/vault/http-path.ts), or null for any. */
  readonly paths: readonly string[] | null;
  /**
   * Whether an access may hand the value to the agent (`reveal` in the rule; default true, false when
   * the rule sets methods or paths). False: only an injecting proxy run by the owner or an
   * orchestrator uses it (an access with `via: "proxy"`), so the agent never holds it. Deny rules: false.
   */
  readonly reveal: boolean;
  /** Lease terms; deny rules carry the defaults. */
  readonly terms: LeaseTerms;
  /**
   * "required": a lease is granted only for a request a person approved (src/vault/approvals.ts);
   * "none" (the default, and always for deny rules): the rule grants on its own.
   */
  readonly approval: ApprovalMode;
}

/** Whether a rule's grants need a person's approval. */
export type ApprovalMode = "none" | "required";

/** A loaded policy. Immutable: a reload builds a new one. */
export interface Policy {
  readonly source: string;
  readonly rules: readonly Rule[];
  /** sha256 hex of the file text ("" when the file could not be read at all) */
  readonly digest: string;
  /**
   * Set on a broken policy (see `brokenPolicy`): why the file could not be loaded. A broken
   * policy has no rules and denies everything, saying why.
   */
  readonly error?: string;
}

/**
 * Which policy answered: the digest of the file, the how-manyth load of this vault it is (1 at open,
 * then one more per reload, failed reloads included) and when it was loaded (epoch ms).
 */
export interface PolicyVersion {
  load: number;
  digest: string;
  loadedAt: number;
  /** "ok", or "broken": the file could not be loaded and every grant is denied. */
  state: "ok" | "broken";
  /**
   * Present when the store is shared by several instances (PostgreSQL) and the policy the last reload
   * on any of them put in force is not this one (src/vault/policy-sync.ts): this instance grants
   * nothing until they match. `stored` is that policy's digest, `at` (epoch ms) and `by` (an identity
   * id) say when and by whom it was put in force.
   */
  stale?: PolicyStaleness;
}

/** See {@link PolicyVersion.stale}. */
export interface PolicyStaleness {
  stored: string;
  at: number;
  by: string;
  /**
   * Present when this instance's `[vault]` limits differ from those pinned beside the policy: their
   * names (as in lessor.toml). `stored` may then equal this instance's own digest.
   */
  limits?: string[];
}

/** What is asked of the policy. */
export interface PolicyQuery {
  agent: string;
  /** Which secret (the field keeps the name of the public API it is part of). */
  secret: SecretRef;
  /** hosts or domain patterns the caller wants; undefined or [] = not domain-specific */
  domains?: readonly string[];
}

/** The answer, with the deciding rule (null when nothing matched) and one plain sentence. */
export interface Decision {
  allow: boolean;
  rule: Rule | null;
  /** one plain sentence, e.g. 'rule 2 ("claude-github") allows it' or 'no rule allows agent "x" secret "global/y"; lessor denies by default' */
  reason: string;
}

/** One rule's part in an `explain` answer. */
export interface ExplainStep {
  rule: string;
  index: number;
  effect: "allow" | "deny";
  matched: boolean;
  /** why it matched or not: "agent does not match", "domain api.x.com is not in its domains", ... */
  why: string;
}

/** A decision plus the rules checked on the way to it, in order (rules after the deciding one are not checked). */
export interface Explanation extends Decision {
  steps: ExplainStep[];
}
