/**
 * Compiled rules: each rule's agent and secret patterns as matcher functions and its domains parsed,
 * made once per policy because `decide` runs on every secret access. Kept beside the policy (a
 * WeakMap), so the Policy itself stays plain data.
 */
import { parseDomainPattern, type DomainPattern } from "../domain.js";
import { compileAgentPattern, compileSecretPattern } from "../pattern.js";
import type { SecretRef } from "../../base/types.js";
import { ruleLabel } from "./messages.js";
import type { Policy, Rule } from "./types.js";

/** A rule with its matchers. */
export interface Compiled {
  readonly rule: Rule;
  readonly agents: readonly ((agent: string) => boolean)[];
  readonly secrets: readonly ((ref: SecretRef) => boolean)[];
  readonly domains: readonly DomainPattern[];
  /** The decision sentence when this rule decides. */
  readonly reason: string;
}

const compiledPolicies = new WeakMap<Policy, readonly Compiled[]>();

/** A rule and the matchers made while parsing it. */
export function makeCompiled(
  rule: Rule,
  agents: ((agent: string) => boolean)[],
  secrets: ((ref: SecretRef) => boolean)[],
  domains: DomainPattern[],
): Compiled {
  const verb = rule.effect === "allow" ? "allows" : "denies";
  const approval = rule.approval === "required" ? " once a person approves the request (approval = \"required\")" : "";
  return { rule, agents, secrets, domains, reason: `${ruleLabel(rule.index, rule.name)} ${verb} it${approval}` };
}

/** Compiles a rule that did not come from `parsePolicy` (e.g. a hand-built policy). */
function compileRule(rule: Rule): Compiled {
  return makeCompiled(
    rule,
    rule.agents.map(compileAgentPattern),
    rule.secrets.map(compileSecretPattern),
    rule.domains.map(parseDomainPattern),
  );
}

/** Keeps the rules compiled while loading `policy`. */
export function rememberCompiled(policy: Policy, compiled: readonly Compiled[]): void {
  compiledPolicies.set(policy, Object.freeze(compiled));
}

/** The compiled rules of `policy`, compiling them on first use when it was built by hand. */
export function compiledOf(policy: Policy): readonly Compiled[] {
  let c = compiledPolicies.get(policy);
  if (c === undefined) {
    c = policy.rules.map(compileRule);
    compiledPolicies.set(policy, c);
  }
  return c;
}
