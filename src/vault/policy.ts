/**
 * The policy engine. A policy is a TOML file of `[[rule]]`s, checked in file order; the first rule that
 * matches decides, and when none matches the answer is deny. Loading is strict: unknown keys, wrong
 * types and contradictions are errors that name the file, the rule and the field. Matchers are compiled
 * at load time because {@link decide} runs on every secret access. See docs/policy.md.
 */
import { createHash } from "node:crypto";
import { parse, TomlError } from "smol-toml";
import {
  coversPattern,
  formatDomainPattern,
  parseDomainPattern,
  tryParseDomainPattern,
  type DomainPattern,
} from "./domain.js";
import { formatDuration, parseDuration } from "./duration.js";
import { VaultError, isVaultError } from "../base/errors.js";
import { refString } from "../base/names.js";
import { canonicalPathPrefix } from "./http-path.js";
import { compileAgentPattern, compileSecretPattern } from "./pattern.js";
import type { SecretRef } from "../base/types.js";

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
  /** Lease terms; deny rules carry the defaults. */
  readonly terms: LeaseTerms;
}

/** A loaded policy. Immutable: a reload builds a new one. */
export interface Policy {
  readonly source: string;
  readonly rules: readonly Rule[];
  /** sha256 hex of the file text ("" when the file could not be read at all) */
  readonly digest: string;
  /**
   * Set on a broken policy (see {@link brokenPolicy}): why the file could not be loaded. A broken
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
}

/** What is asked of the policy. */
export interface PolicyQuery {
  agent: string;
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

/** One rule's part in an {@link explain} answer. */
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

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** Terms used when neither the rule nor `[defaults]` says otherwise. */
export const BUILTIN_TERMS: Readonly<LeaseTerms> = Object.freeze({
  ttlMs: 15 * MINUTE,
  maxTtlMs: 24 * HOUR,
  maxUses: null,
  renewable: true,
  maxRenewals: null,
});

/** No ttl or max_ttl may exceed this, however it is written. */
export const MAX_TTL_CEILING_MS = 30 * DAY;

const TERM_KEYS = ["ttl", "max_ttl", "max_uses", "renewable", "max_renewals"] as const;
const TOP_KEYS = ["defaults", "rule"] as const;
const RULE_KEYS = ["name", "effect", "agents", "secrets", "domains", "any_domain", "methods", "paths", ...TERM_KEYS] as const;
const ALLOW_ONLY_KEYS = ["domains", "any_domain", "methods", "paths", ...TERM_KEYS] as const;

const RULE_NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,63}$/;
/** An HTTP method token (RFC 9110). */
const METHOD_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$/;
/** A path prefix: "/" then printable ASCII without "?" or "#" (percent-encode anything else). */
const PATH_RE = /^\/[\x21-\x22\x24-\x3e\x40-\x7e]{0,1023}$/;

/* ------------------------------------------------------------------ messages */

function clip(s: string, max = 60): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

function quote(s: string, max = 60): string {
  return JSON.stringify(clip(s, max));
}

/** A short description of a found value, for "got ..." (never a huge dump). */
function describe(v: unknown): string {
  if (typeof v === "string") return quote(v);
  if (typeof v === "number" || typeof v === "boolean" || typeof v === "bigint") return String(v);
  if (v instanceof Date) return `a date (${clip(String(v.toISOString?.() ?? v), 40)})`;
  if (Array.isArray(v)) {
    if (v.length === 0) return "an empty list";
    if (v.length > 8) return `a list of ${v.length} items`;
    let json: string;
    try {
      json = JSON.stringify(v);
    } catch {
      json = "[…]";
    }
    return clip(json, 80);
  }
  if (v !== null && typeof v === "object") return "a table";
  return String(v);
}

/** Edit distance, for "did you mean" hints on unknown keys (keys are short). */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

function unknownKey(where: string, key: string, allowed: readonly string[], what: string): VaultError {
  const lower = key.toLowerCase();
  const near = allowed.find((k) => k === lower || distance(lower, k) <= 2);
  const hint = near === undefined ? "" : ` (did you mean "${near}"?)`;
  return new VaultError(
    "policy_invalid",
    `${where}: unknown ${what} ${quote(key, 40)}${hint}; expected one of: ${allowed.join(", ")}`,
  );
}

function fieldError(where: string, field: string, detail: string): VaultError {
  return new VaultError("policy_invalid", `${where}: field "${field}": ${detail}`);
}

function expected(where: string, field: string, what: string, got: unknown): VaultError {
  return fieldError(where, field, `expected ${what}, got ${describe(got)}`);
}

/* ------------------------------------------------------------------ field readers */

type Table = Record<string, unknown>;

function isTable(v: unknown): v is Table {
  return v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Date);
}

function readBool(t: Table, key: string, where: string): boolean | undefined {
  const v = t[key];
  if (v === undefined || typeof v === "boolean") return v;
  throw expected(where, key, "true or false", v);
}

function readDuration(t: Table, key: string, where: string): number | undefined {
  const v = t[key];
  if (v === undefined) return undefined;
  const what = 'a duration such as "15m" or "1h"';
  if (typeof v !== "string") throw expected(where, key, what, v);
  let ms: number;
  try {
    ms = parseDuration(v);
  } catch {
    throw fieldError(
      where,
      key,
      `expected ${what} (a positive number and a unit d, h, m, s or ms, largest first, e.g. "1h30m"), got ${describe(v)}`,
    );
  }
  if (ms > MAX_TTL_CEILING_MS)
    throw fieldError(where, key, `${formatDuration(ms)} is above the hard ceiling of 30d; use at most "30d"`);
  return ms;
}

function readInt(t: Table, key: string, where: string, min: 0 | 1): number | undefined {
  const v = t[key];
  if (v === undefined) return undefined;
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= min) return v;
  const what = min === 1 ? "a whole number of at least 1, such as 100" : "a whole number of at least 0, such as 3";
  throw expected(where, key, what, v);
}

/** A list of strings; `example` is shown in the message when the type is wrong. */
function readStringList(t: Table, key: string, where: string, example: string): string[] | undefined {
  const v = t[key];
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.some((x) => typeof x !== "string"))
    throw expected(where, key, `a list of strings such as ${example}`, v);
  return v as string[];
}

function requireNonEmpty(list: string[] | undefined, where: string, key: string, example: string): string[] {
  if (list === undefined) throw fieldError(where, key, `is required: give a non-empty list such as ${example}`);
  if (list.length === 0) throw fieldError(where, key, `expected a non-empty list such as ${example}, got an empty list`);
  return list;
}

/** Compiles each item, turning a compile error into one that names the field and item. */
function compileEach<T>(list: readonly string[], where: string, key: string, compile: (s: string) => T): T[] {
  return list.map((item, i) => {
    try {
      return compile(item);
    } catch (e) {
      if (!isVaultError(e)) throw e;
      throw fieldError(where, key, `item ${i + 1}: ${e.message}`);
    }
  });
}

/** Where each inherited term comes from, for messages. */
type Origins = Record<"ttl" | "max_ttl", string>;

/** Reads ttl/max_ttl/max_uses/renewable/max_renewals from `t` over `base`. */
function readTerms(t: Table, where: string, base: LeaseTerms, origins: Origins): LeaseTerms {
  const ttl = readDuration(t, "ttl", where);
  const maxTtl = readDuration(t, "max_ttl", where);
  const terms: LeaseTerms = {
    ttlMs: ttl ?? base.ttlMs,
    maxTtlMs: maxTtl ?? base.maxTtlMs,
    maxUses: readInt(t, "max_uses", where, 1) ?? base.maxUses,
    renewable: readBool(t, "renewable", where) ?? base.renewable,
    maxRenewals: readInt(t, "max_renewals", where, 0) ?? base.maxRenewals,
  };
  if (terms.ttlMs > terms.maxTtlMs) {
    const t1 = formatDuration(terms.ttlMs);
    const t2 = formatDuration(terms.maxTtlMs);
    if (ttl !== undefined)
      throw fieldError(
        where,
        "ttl",
        `ttl ${t1} is longer than max_ttl ${t2}${maxTtl === undefined ? ` (from ${origins.max_ttl})` : ""}; lower ttl or raise max_ttl`,
      );
    throw fieldError(
      where,
      "max_ttl",
      `max_ttl ${t2} is shorter than the ttl ${t1} from ${origins.ttl}; also set a ttl of at most ${t2} here`,
    );
  }
  return Object.freeze(terms);
}

/* ------------------------------------------------------------------ compiled rules */

interface Compiled {
  readonly rule: Rule;
  readonly agents: readonly ((agent: string) => boolean)[];
  readonly secrets: readonly ((ref: SecretRef) => boolean)[];
  readonly domains: readonly DomainPattern[];
  /** The decision sentence when this rule decides. */
  readonly reason: string;
}

const compiledPolicies = new WeakMap<Policy, readonly Compiled[]>();

function ruleLabel(index: number, name: string): string {
  return `rule ${index} (${JSON.stringify(name)})`;
}

function makeCompiled(
  rule: Rule,
  agents: ((agent: string) => boolean)[],
  secrets: ((ref: SecretRef) => boolean)[],
  domains: DomainPattern[],
): Compiled {
  const verb = rule.effect === "allow" ? "allows" : "denies";
  return { rule, agents, secrets, domains, reason: `${ruleLabel(rule.index, rule.name)} ${verb} it` };
}

/** Compiles a rule that did not come from {@link parsePolicy} (e.g. a hand-built policy). */
function compileRule(rule: Rule): Compiled {
  return makeCompiled(
    rule,
    rule.agents.map(compileAgentPattern),
    rule.secrets.map(compileSecretPattern),
    rule.domains.map(parseDomainPattern),
  );
}

function compiledOf(policy: Policy): readonly Compiled[] {
  let c = compiledPolicies.get(policy);
  if (c === undefined) {
    c = policy.rules.map(compileRule);
    compiledPolicies.set(policy, c);
  }
  return c;
}

/* ------------------------------------------------------------------ loading */

function parseRule(
  raw: unknown,
  index: number,
  source: string,
  defaults: LeaseTerms,
  origins: Origins,
  seen: Map<string, number>,
): Compiled {
  const at = `${source}: rule ${index}`;
  if (!isTable(raw))
    throw new VaultError("policy_invalid", `${at}: expected a table written under [[rule]], got ${describe(raw)}`);
  const t = raw;

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
  const where = `${source}: ${ruleLabel(index, name)}`;
  const prev = seen.get(name);
  if (prev !== undefined)
    throw fieldError(where, "name", `${JSON.stringify(name)} is already used by rule ${prev}; rule names must be unique`);
  seen.set(name, index);

  for (const key of Object.keys(t))
    if (!(RULE_KEYS as readonly string[]).includes(key)) throw unknownKey(where, key, RULE_KEYS, "field");

  const effect = t.effect;
  if (effect === undefined) throw fieldError(where, "effect", 'is required: write effect = "allow" or effect = "deny"');
  if (effect !== "allow" && effect !== "deny") throw expected(where, "effect", '"allow" or "deny"', effect);

  const agentsEx = '["claude", "claude-*"]';
  const agents = requireNonEmpty(readStringList(t, "agents", where, agentsEx), where, "agents", agentsEx);
  const agentFns = compileEach(agents, where, "agents", compileAgentPattern);
  const secretsEx = '["github-token", "workspace:*/gh-*"]';
  const secrets = requireNonEmpty(readStringList(t, "secrets", where, secretsEx), where, "secrets", secretsEx);
  const secretFns = compileEach(secrets, where, "secrets", compileSecretPattern);

  if (effect === "deny") {
    for (const key of ALLOW_ONLY_KEYS)
      if (t[key] !== undefined)
        throw fieldError(
          where,
          key,
          key === "domains"
            ? "is not allowed on a deny rule: deny rules match on agents and secrets only, for every domain; remove it"
            : "is not allowed on a deny rule (it only applies to allow rules); remove it",
        );
    const rule: Rule = Object.freeze({
      name,
      index,
      effect,
      agents: Object.freeze([...agents]),
      secrets: Object.freeze([...secrets]),
      domains: Object.freeze([]),
      anyDomain: false,
      methods: null,
      paths: null,
      terms: defaults,
    });
    return makeCompiled(rule, agentFns, secretFns, []);
  }

  const anyDomain = readBool(t, "any_domain", where) ?? false;
  const domainsEx = '["api.github.com", "*.githubusercontent.com"]';
  const domainList = readStringList(t, "domains", where, domainsEx) ?? [];
  if (domainList.length === 0 && !anyDomain)
    throw fieldError(
      where,
      "domains",
      `allow rules need a non-empty list of domains such as ${domainsEx}, or any_domain = true for secrets used without a domain`,
    );
  const patterns: DomainPattern[] = [];
  const domains: string[] = [];
  compileEach(domainList, where, "domains", parseDomainPattern).forEach((p) => {
    const text = formatDomainPattern(p);
    if (!domains.includes(text)) {
      domains.push(text);
      patterns.push(p);
    }
  });

  let methods: string[] | null = null;
  const methodList = readStringList(t, "methods", where, '["GET", "POST"]');
  if (methodList !== undefined) {
    if (methodList.length === 0)
      throw fieldError(where, "methods", 'expected a non-empty list such as ["GET", "POST"], or leave it out to allow any method');
    methods = [];
    for (const [i, m] of methodList.entries()) {
      if (!METHOD_RE.test(m))
        throw fieldError(where, "methods", `item ${i + 1}: expected an HTTP method such as "GET", got ${describe(m)}`);
      const up = m.toUpperCase();
      if (!methods.includes(up)) methods.push(up);
    }
  }

  let paths: string[] | null = null;
  const pathList = readStringList(t, "paths", where, '["/repos/"]');
  if (pathList !== undefined) {
    if (pathList.length === 0)
      throw fieldError(where, "paths", 'expected a non-empty list such as ["/repos/"], or leave it out to allow any path');
    paths = [];
    for (const [i, p] of pathList.entries()) {
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
  }

  const terms = readTerms(t, where, defaults, origins);
  const rule: Rule = Object.freeze({
    name,
    index,
    effect,
    agents: Object.freeze([...agents]),
    secrets: Object.freeze([...secrets]),
    domains: Object.freeze(domains),
    anyDomain,
    methods: methods === null ? null : Object.freeze(methods),
    paths: paths === null ? null : Object.freeze(paths),
    terms,
  });
  return makeCompiled(rule, agentFns, secretFns, patterns);
}

function digestOf(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

function syntaxError(source: string, e: TomlError): VaultError {
  const first = (e.message.split("\n")[0] ?? "").replace(/^Invalid TOML document:\s*/, "");
  return new VaultError(
    "policy_invalid",
    `${source}: TOML syntax error at line ${e.line}, column ${e.column}: ${clip(first, 120)}`,
    { cause: e },
  );
}

/**
 * Parses and validates a policy file. `source` names the file in messages. Throws
 * VaultError("policy_invalid") naming the file, rule and field on any problem.
 */
export function parsePolicy(text: string, source: string): Policy {
  let doc: Table;
  try {
    doc = parse(text.startsWith("\uFEFF") ? text.slice(1) : text) as Table;
  } catch (e) {
    if (e instanceof TomlError) throw syntaxError(source, e);
    throw new VaultError("policy_invalid", `${source}: could not be read as TOML: ${clip(String(e), 120)}`, { cause: e });
  }
  for (const key of Object.keys(doc))
    if (!(TOP_KEYS as readonly string[]).includes(key)) throw unknownKey(source, key, ["defaults", "rule"], "top-level key");

  let defaults: LeaseTerms = BUILTIN_TERMS;
  const origins: Origins = { ttl: "the built-in default", max_ttl: "the built-in default" };
  const rawDefaults = doc.defaults;
  if (rawDefaults !== undefined) {
    const where = `${source}: [defaults]`;
    if (!isTable(rawDefaults))
      throw new VaultError("policy_invalid", `${where}: expected one [defaults] table, got ${describe(rawDefaults)}`);
    for (const key of Object.keys(rawDefaults))
      if (!(TERM_KEYS as readonly string[]).includes(key)) throw unknownKey(where, key, TERM_KEYS, "field");
    defaults = readTerms(rawDefaults, where, BUILTIN_TERMS, origins);
    if (rawDefaults.ttl !== undefined) origins.ttl = "[defaults]";
    if (rawDefaults.max_ttl !== undefined) origins.max_ttl = "[defaults]";
  }

  const rawRules = doc.rule ?? [];
  if (!Array.isArray(rawRules))
    throw new VaultError(
      "policy_invalid",
      `${source}: "rule" must be a list of tables: write each rule under [[rule]] (double brackets), got ${describe(rawRules)}`,
    );
  const seen = new Map<string, number>();
  const compiled = rawRules.map((raw, i) => parseRule(raw, i + 1, source, defaults, origins, seen));
  const policy: Policy = Object.freeze({
    source,
    rules: Object.freeze(compiled.map((c) => c.rule)),
    digest: digestOf(text),
  });
  compiledPolicies.set(policy, Object.freeze(compiled));
  return policy;
}

/** A policy with no rules: it denies everything. */
export function emptyPolicy(source = "(empty policy)"): Policy {
  const policy: Policy = Object.freeze({ source, rules: Object.freeze([]), digest: digestOf("") });
  compiledPolicies.set(policy, []);
  return policy;
}

/**
 * The policy in force when the policy file could not be loaded: no rules, and every decision denies
 * with {@link brokenReason}. `error` is the load error's message (it names the file, rule and field);
 * `text` is the file's text when it could be read, so that the digest names the broken file.
 */
export function brokenPolicy(source: string, error: string, text?: string): Policy {
  const policy: Policy = Object.freeze({
    source,
    rules: Object.freeze([]),
    digest: text === undefined ? "" : digestOf(text),
    error: clip(error, 600),
  });
  compiledPolicies.set(policy, []);
  return policy;
}

/** Why a broken policy denies: the load error and what to do. */
export function brokenReason(policy: Policy): string {
  return `the policy is invalid, so every grant is denied: ${policy.error ?? "it could not be loaded"}; fix it and run lessor policy reload`;
}

/* ------------------------------------------------------------------ deciding */

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
