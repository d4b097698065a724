/**
 * The policy engine, the one place its public names come from. A policy is a TOML file of
 * `[[rule]]`s, checked in file order; the first rule that matches decides, and when none matches the
 * answer is deny. The parts: ./policy/types.ts (the data), ./policy/parse.ts and ./policy/rule.ts
 * (loading, strict), ./policy/decide.ts (deciding and explaining). See docs/policy.md.
 */
export type { Decision, Explanation, ExplainStep, LeaseTerms, Policy, PolicyQuery, PolicyStaleness, PolicyVersion, Rule } from "./policy/types.js";
export { BUILTIN_TERMS, MAX_TTL_CEILING_MS } from "./policy/terms.js";
export { brokenPolicy, emptyPolicy, parsePolicy } from "./policy/parse.js";
export { BROKEN_REASON_BRIEF, brokenReason, decide, explain, leaseDomains, reasonFor, refusalForAgent } from "./policy/decide.js";
export { withheldQuotes } from "./policy/messages.js";
