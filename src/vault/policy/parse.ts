/**
 * Loading a policy: TOML text to a {@link Policy} of `[[rule]]`s checked in file order. Loading is
 * strict: unknown keys, wrong types and contradictions are errors that name the file, the rule and
 * the field. Matchers are compiled here (./compiled.ts) because deciding runs on every secret access.
 * Also the two policies that come from no file: the empty one and the broken one.
 */
import { createHash } from "node:crypto";
import { parse, TomlError } from "smol-toml";
import { VaultError } from "../../base/errors.js";
import { rememberCompiled } from "./compiled.js";
import { checkKeys, isTable, type Table } from "./fields.js";
import { clip, describe } from "./messages.js";
import { parseRule } from "./rule.js";
import { BUILTIN_TERMS, readTerms, TERM_KEYS, type Origins } from "./terms.js";
import type { LeaseTerms, Policy } from "./types.js";

const TOP_KEYS = ["defaults", "rule"] as const;

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

function parseToml(text: string, source: string): Table {
  try {
    return parse(text.startsWith("\uFEFF") ? text.slice(1) : text) as Table;
  } catch (e) {
    if (e instanceof TomlError) throw syntaxError(source, e);
    throw new VaultError("policy_invalid", `${source}: could not be read as TOML: ${clip(String(e), 120)}`, { cause: e });
  }
}

/** The `[defaults]` terms over the built-in ones; records in `origins` which terms it sets. */
function readDefaults(raw: unknown, source: string, origins: Origins): LeaseTerms {
  if (raw === undefined) return BUILTIN_TERMS;
  const where = `${source}: [defaults]`;
  if (!isTable(raw)) throw new VaultError("policy_invalid", `${where}: expected one [defaults] table, got ${describe(raw)}`);
  checkKeys(raw, TERM_KEYS, where, "field");
  const defaults = readTerms(raw, where, BUILTIN_TERMS, origins);
  if (raw.ttl !== undefined) origins.ttl = "[defaults]";
  if (raw.max_ttl !== undefined) origins.max_ttl = "[defaults]";
  return defaults;
}

/**
 * Parses and validates a policy file. `source` names the file in messages. Throws
 * VaultError("policy_invalid") naming the file, rule and field on any problem.
 */
export function parsePolicy(text: string, source: string): Policy {
  const doc = parseToml(text, source);
  checkKeys(doc, TOP_KEYS, source, "top-level key");
  const origins: Origins = { ttl: "the built-in default", max_ttl: "the built-in default" };
  const defaults = readDefaults(doc.defaults, source, origins);
  const rawRules = doc.rule ?? [];
  if (!Array.isArray(rawRules))
    throw new VaultError(
      "policy_invalid",
      `${source}: "rule" must be a list of tables: write each rule under [[rule]] (double brackets), got ${describe(rawRules)}`,
    );
  const cx = { source, defaults, origins, seen: new Map<string, number>() };
  const compiled = rawRules.map((raw, i) => parseRule(raw, i + 1, cx));
  const policy: Policy = Object.freeze({
    source,
    rules: Object.freeze(compiled.map((c) => c.rule)),
    digest: digestOf(text),
  });
  rememberCompiled(policy, compiled);
  return policy;
}

/** A policy with no rules: it denies everything. */
export function emptyPolicy(source = "(empty policy)"): Policy {
  const policy: Policy = Object.freeze({ source, rules: Object.freeze([]), digest: digestOf("") });
  rememberCompiled(policy, []);
  return policy;
}

/**
 * The policy in force when the policy file could not be loaded: no rules, and every decision denies
 * with `brokenReason` (./decide.ts). `error` is the load error's message (it names the file, rule and
 * field); `text` is the file's text when it could be read, so that the digest names the broken file.
 */
export function brokenPolicy(source: string, error: string, text?: string): Policy {
  const policy: Policy = Object.freeze({
    source,
    rules: Object.freeze([]),
    digest: text === undefined ? "" : digestOf(text),
    error: clip(error, 600),
  });
  rememberCompiled(policy, []);
  return policy;
}
