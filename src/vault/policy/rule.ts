/**
 * One `[[rule]]`: its fields read and checked one by one (name, effect, agents, secrets, then for
 * allow rules domains, methods, paths, reveal and terms), each error naming the file, the rule and the field.
 */
import { VaultError } from "../../base/errors.js";
import { formatDomainPattern, parseDomainPattern, type DomainPattern } from "../domain.js";
import { canonicalPathPrefix } from "../http-path.js";
import { compileAgentPattern, compileSecretPattern } from "../pattern.js";
import { makeCompiled, type Compiled } from "./compiled.js";
import { checkKeys, compileEach, isTable, readBool, readRequiredList, readStringList, type Table } from "./fields.js";
import { describe, expected, fieldError, ruleLabel } from "./messages.js";
import { readTerms, TERM_KEYS, type Origins } from "./terms.js";
import type { ApprovalMode, LeaseTerms, Rule } from "./types.js";

const RULE_KEYS = ["name", "effect", "agents", "secrets", "domains", "any_domain", "methods", "paths", "reveal", "approval", ...TERM_KEYS] as const;
const ALLOW_ONLY_KEYS = ["domains", "any_domain", "methods", "paths", "reveal", "approval", ...TERM_KEYS] as const;

const RULE_NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,63}$/;
/** An HTTP method token (RFC 9110). */
const METHOD_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$/;
/** A path prefix: "/" then printable ASCII without "?" or "#" (percent-encode anything else). */
const PATH_RE = /^\/[\x21-\x22\x24-\x3e\x40-\x7e]{0,1023}$/;

const AGENTS_EXAMPLE = '["claude", "claude-*"]';
const SECRETS_EXAMPLE = '["github-token", "workspace:*/gh-*"]';
const DOMAINS_EXAMPLE = '["api.github.com", "*.githubusercontent.com"]';

/** What a rule is read against: the file, the terms it inherits, and the names taken so far. */
export interface RuleContext {
  source: string;
  defaults: LeaseTerms;
  origins: Origins;
  /** rule name -> index of the rule that has it */
  seen: Map<string, number>;
}

/** Reads and compiles the `index`th (1-based) `[[rule]]`. */
export function parseRule(raw: unknown, index: number, cx: RuleContext): Compiled {
  const at = `${cx.source}: rule ${index}`;
  if (!isTable(raw))
    throw new VaultError("policy_invalid", `${at}: expected a table written under [[rule]], got ${describe(raw)}`);
  const t = raw;
  const name = readName(t, at, index, cx);
  const where = `${cx.source}: ${ruleLabel(index, name)}`;
  checkKeys(t, RULE_KEYS, where, "field");
  const effect = readEffect(t, where);
  const agents = readRequiredList(t, "agents", where, AGENTS_EXAMPLE);
  const agentFns = compileEach(agents, where, "agents", compileAgentPattern);
  const secrets = readRequiredList(t, "secrets", where, SECRETS_EXAMPLE);
  const secretFns = compileEach(secrets, where, "secrets", compileSecretPattern);
  const common = { name, index, effect, agents: Object.freeze([...agents]), secrets: Object.freeze([...secrets]) };

  if (effect === "deny") {
    refuseAllowOnly(t, where);
    const rule: Rule = Object.freeze({
      ...common,
      domains: Object.freeze([]),
      anyDomain: false,
      methods: null,
      paths: null,
      reveal: false,
      terms: cx.defaults,
      approval: "none",
    });
    return makeCompiled(rule, agentFns, secretFns, []);
  }

  const anyDomain = readBool(t, "any_domain", where) ?? false;
  const { domains, patterns } = readDomains(t, where, anyDomain);
  const methods = readMethods(t, where);
  const paths = readPaths(t, where);
  // A rule that restricts methods or paths keeps the value from the agent unless it says otherwise:
  // an agent holding the value could send it with any method to any path.
  const reveal = readBool(t, "reveal", where) ?? (methods === null && paths === null);
  const terms = readTerms(t, where, cx.defaults, cx.origins);
  const approval = readApproval(t, where);
  const rule: Rule = Object.freeze({
    ...common,
    domains: Object.freeze(domains),
    anyDomain,
    methods: methods === null ? null : Object.freeze(methods),
    paths: paths === null ? null : Object.freeze(paths),
    reveal,
    terms,
    approval,
  });
  return makeCompiled(rule, agentFns, secretFns, patterns);
}

/** The rule's name: required, well formed, and not used by an earlier rule (recorded in `cx.seen`). */
function readName(t: Table, at: string, index: number, cx: RuleContext): string {
  const name = t.name;
  if (name === undefined)
    throw fieldError(at, "name", 'is required: give each rule a unique name such as "claude-github"');
  if (typeof name !== "string" || !RULE_NAME_RE.test(name))
    throw expected(
      at,
      "name",
      'a name of 1-64 letters, digits, "_", ".", "-", ":" or "@", starting with a letter, digit or "_"',
      name,
    );
  const prev = cx.seen.get(name);
  if (prev !== undefined)
    throw fieldError(
      `${cx.source}: ${ruleLabel(index, name)}`,
      "name",
      `${JSON.stringify(name)} is already used by rule ${prev}; rule names must be unique`,
    );
  cx.seen.set(name, index);
  return name;
}

function readEffect(t: Table, where: string): "allow" | "deny" {
  const effect = t.effect;
  if (effect === undefined) throw fieldError(where, "effect", 'is required: write effect = "allow" or effect = "deny"');
  if (effect !== "allow" && effect !== "deny") throw expected(where, "effect", '"allow" or "deny"', effect);
  return effect;
}

/**
 * `approval = "required"` (a person approves each grant: src/vault/approvals.ts) or `"none"` (the
 * default). Anything else is an error rather than a guess: a typo must not silently drop the approval.
 */
function readApproval(t: Table, where: string): ApprovalMode {
  const v = t.approval;
  if (v === undefined) return "none";
  if (v !== "required" && v !== "none") throw expected(where, "approval", '"required" (a person approves each grant) or "none"', v);
  return v;
}

/** A deny rule matches on agents and secrets only: any allow-only field is an error. */
function refuseAllowOnly(t: Table, where: string): void {
  for (const key of ALLOW_ONLY_KEYS)
    if (t[key] !== undefined)
      throw fieldError(
        where,
        key,
        key === "domains"
          ? "is not allowed on a deny rule: deny rules match on agents and secrets only, for every domain; remove it"
          : "is not allowed on a deny rule (it only applies to allow rules); remove it",
      );
}

/**
 * The domains, normalised and without duplicates; required unless any_domain = true, and refused
 * beside it: any_domain would make the list mean nothing, and whoever wrote both meant one of them.
 */
function readDomains(t: Table, where: string, anyDomain: boolean): { domains: string[]; patterns: DomainPattern[] } {
  if (anyDomain && t.domains !== undefined)
    throw fieldError(
      where,
      "domains",
      "is set together with any_domain = true, which would grant the secret for every domain and ignore the list: remove domains, or any_domain",
    );
  const list = readStringList(t, "domains", where, DOMAINS_EXAMPLE) ?? [];
  if (list.length === 0 && !anyDomain)
    throw fieldError(
      where,
      "domains",
      `allow rules need a non-empty list of domains such as ${DOMAINS_EXAMPLE}, or any_domain = true for secrets used without a domain`,
    );
  const patterns: DomainPattern[] = [];
  const domains: string[] = [];
  for (const p of compileEach(list, where, "domains", parseDomainPattern)) {
    const text = formatDomainPattern(p);
    if (!domains.includes(text)) {
      domains.push(text);
      patterns.push(p);
    }
  }
  return { domains, patterns };
}

/** Upper-case HTTP methods without duplicates, or null (any method) when the field is absent. */
function readMethods(t: Table, where: string): string[] | null {
  const list = readStringList(t, "methods", where, '["GET", "POST"]');
  if (list === undefined) return null;
  if (list.length === 0)
    throw fieldError(where, "methods", 'expected a non-empty list such as ["GET", "POST"], or leave it out to allow any method');
  const methods: string[] = [];
  for (const [i, m] of list.entries()) {
    if (!METHOD_RE.test(m))
      throw fieldError(where, "methods", `item ${i + 1}: expected an HTTP method such as "GET", got ${describe(m)}`);
    const up = m.toUpperCase();
    if (!methods.includes(up)) methods.push(up);
  }
  return methods;
}

/** Canonical path prefixes without duplicates, or null (any path) when the field is absent. */
function readPaths(t: Table, where: string): string[] | null {
  const list = readStringList(t, "paths", where, '["/repos/"]');
  if (list === undefined) return null;
  if (list.length === 0)
    throw fieldError(where, "paths", 'expected a non-empty list such as ["/repos/"], or leave it out to allow any path');
  const paths: string[] = [];
  for (const [i, p] of list.entries()) {
    if (!PATH_RE.test(p))
      throw fieldError(
        where,
        "paths",
        `item ${i + 1}: expected a path prefix that starts with "/" (printable ASCII, no spaces, "?" or "#"), such as "/repos/", got ${describe(p)}`,
      );
    // Canonical, as request paths are before they are matched (src/vault/http-path.ts).
    const c = canonicalPathPrefix(p);
    if (c.problem !== null)
      throw fieldError(where, "paths", `item ${i + 1}: path prefix ${describe(p)} is refused: it ${c.problem}`);
    if (!paths.includes(c.prefix)) paths.push(c.prefix);
  }
  return paths;
}
