/**
 * Deciding: the first rule that matches the agent, the secret and every requested domain decides;
 * when none matches the answer is deny. {@link explain} gives the same answer with each rule checked
 * on the way and why it matched or not.
 */
import { coversPattern, formatDomainPattern, parseDomainPattern, tryParseDomainPattern, type DomainPattern } from "../domain.js";
import { refString } from "../../base/names.js";
import type { Role } from "../../base/types.js";
import { compiledOf } from "./compiled.js";
import { clip, quote, withheldQuotes } from "./messages.js";
import type { Decision, Explanation, ExplainStep, Policy, PolicyQuery, Rule } from "./types.js";

/** How a broken policy's refusal begins, before the load error. */
const BROKEN_PREFIX = "the policy is invalid, so every grant is denied: ";

/** Why a broken policy denies: the load error (its quoted texts withheld: the reason is audited) and what to do. */
export function brokenReason(policy: Policy): string {
  return `${BROKEN_PREFIX}${policy.error === undefined ? "it could not be loaded" : withheldQuotes(policy.error)}; lessor policy check shows it whole; fix it and run lessor policy reload`;
}

/**
 * What a broken policy's refusal tells a caller other than an admin: that it is broken and whom to
 * ask, not the load error (which may quote any rule, another agent's included).
 */
export const BROKEN_REASON_BRIEF = "the policy is invalid, so every grant is denied; ask the operator to fix it (lessor policy check)";

/**
 * `message`, a refusal the vault worded for an admin, as an agent may be told it: when it carries a
 * broken policy's load error ({@link brokenReason}), {@link BROKEN_REASON_BRIEF} instead. For adapters
 * that reach the vault as the owner on an agent's behalf (lessor mcp, lessor run's proxy) and pass
 * its refusals on to the agent.
 */
export function refusalForAgent(message: string): string {
  return message.includes(BROKEN_PREFIX) ? BROKEN_REASON_BRIEF : message;
}

/** `reason`, a decision's, as a caller of `role` is told it: see {@link BROKEN_REASON_BRIEF}. */
export function reasonFor(policy: Policy, role: Role, reason: string): string {
  return policy.error !== undefined && role !== "admin" ? BROKEN_REASON_BRIEF : reason;
}

function listText(items: readonly string[]): string {
  return clip(JSON.stringify(items), 100);
}

/** Index of the first requested pattern no rule pattern covers, or -1. */
function firstUncovered(rule: readonly DomainPattern[], requested: readonly DomainPattern[]): number {
  outer: for (let i = 0; i < requested.length; i++) {
    const want = requested[i]!;
    for (let j = 0; j < rule.length; j++) if (coversPattern(rule[j]!, want)) continue outer;
    return i;
  }
  return -1;
}

function matchesAny<T>(fns: readonly ((x: T) => boolean)[], x: T): boolean {
  for (let i = 0; i < fns.length; i++) if (fns[i]!(x)) return true;
  return false;
}

function defaultDeny(q: PolicyQuery, requested: readonly DomainPattern[] | null): string {
  let s = `no rule allows agent ${quote(String(q.agent), 80)} secret ${quote(refString(q.secret), 120)}`;
  if (requested !== null) {
    const names = requested.map((p) => JSON.stringify(formatDomainPattern(p))).join(", ");
    s += requested.length === 1 ? ` for domain ${names}` : ` for domains ${clip(names, 200)}`;
  }
  return `${s}; lessor denies by default`;
}

function evaluate(policy: Policy, q: PolicyQuery, steps: ExplainStep[] | null): Decision {
  if (policy.error !== undefined) return { allow: false, rule: null, reason: brokenReason(policy) };
  const compiled = compiledOf(policy);
  let requested: DomainPattern[] | null = null;
  const wanted = q.domains;
  if (wanted !== undefined && wanted.length > 0) {
    requested = [];
    for (const d of wanted) {
      const r = tryParseDomainPattern(d);
      if (r.problem !== null)
        return { allow: false, rule: null, reason: `requested domain ${quote(String(d), 80)} is not valid: ${r.problem}` };
      requested.push(r.pattern);
    }
  }
  for (const c of compiled) {
    const rule = c.rule;
    if (!matchesAny(c.agents, q.agent)) {
      if (steps !== null)
        steps.push(step(rule, false, `agent ${quote(String(q.agent))} does not match its agents ${listText(rule.agents)}`));
      continue;
    }
    if (!matchesAny(c.secrets, q.secret)) {
      if (steps !== null)
        steps.push(
          step(rule, false, `secret ${quote(refString(q.secret))} does not match its secrets ${listText(rule.secrets)}`),
        );
      continue;
    }
    if (rule.effect === "allow" && requested !== null && !rule.anyDomain) {
      const miss = firstUncovered(c.domains, requested);
      if (miss >= 0) {
        if (steps !== null)
          steps.push(
            step(
              rule,
              false,
              `domain ${JSON.stringify(formatDomainPattern(requested[miss]!))} is not in its domains ${listText(rule.domains)}`,
            ),
          );
        continue;
      }
    }
    if (steps !== null) steps.push(step(rule, true, matchedWhy(rule, requested)));
    return { allow: rule.effect === "allow", rule, reason: c.reason };
  }
  return { allow: false, rule: null, reason: defaultDeny(q, requested) };
}

function step(rule: Rule, matched: boolean, why: string): ExplainStep {
  return { rule: rule.name, index: rule.index, effect: rule.effect, matched, why };
}

function matchedWhy(rule: Rule, requested: readonly DomainPattern[] | null): string {
  if (rule.effect === "deny") return "agent and secret match (deny rules apply to every domain)";
  if (requested === null) return "agent and secret match (no domain was requested)";
  if (rule.anyDomain) return "agent and secret match, and any_domain = true allows every domain";
  return "agent, secret and every requested domain match";
}

/**
 * Decides whether `q.agent` may have `q.secret` (for `q.domains`, when given). The first matching
 * rule decides; no match denies. Invalid requested domains deny (never throw).
 */
export function decide(policy: Policy, q: PolicyQuery): Decision {
  return evaluate(policy, q, null);
}

/** Like {@link decide}, plus each rule checked on the way and why it matched or not. */
export function explain(policy: Policy, q: PolicyQuery): Explanation {
  const steps: ExplainStep[] = [];
  const d = evaluate(policy, q, steps);
  return { ...d, steps };
}

/**
 * The domains a lease granted by `rule` for `q` gets: the requested ones (normalised, without
 * duplicates) when given, else the rule's. Throws VaultError("invalid_request") for an invalid domain.
 */
export function leaseDomains(rule: Rule, q: PolicyQuery): string[] {
  const wanted = q.domains;
  if (wanted === undefined || wanted.length === 0) return [...rule.domains];
  const out: string[] = [];
  for (const d of wanted) {
    const text = formatDomainPattern(parseDomainPattern(d));
    if (!out.includes(text)) out.push(text);
  }
  return out;
}
