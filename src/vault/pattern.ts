/**
 * Glob patterns for agent ids and secret refs in policy rules. Only two characters are special:
 * `*` (any run of characters, possibly empty, except "/") and `?` (one character except "/").
 * Everything else is literal.
 */
import { VaultError } from "./errors.js";
import type { SecretRef } from "./types.js";

const REGEX_SYNTAX = /[\\^$.*+?()[\]{}|/]/g;

function show(s: string): string {
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 80)}…` : s);
}

/**
 * Compiles a glob into a predicate. `*` matches any run of characters except "/", `?` one character
 * except "/"; every other character matches itself. Throws VaultError("invalid_request") for "".
 */
export function compileGlob(pattern: string): (s: string) => boolean {
  if (typeof pattern !== "string" || pattern.length === 0)
    throw new VaultError("invalid_request", "a glob pattern is empty: write at least one character, or \"*\" for anything");
  if (!pattern.includes("*") && !pattern.includes("?")) return (s) => s === pattern;
  if (pattern === "*") return (s) => !s.includes("/");
  let src = "^";
  for (const ch of pattern) {
    if (ch === "*") src += "[^/]*";
    else if (ch === "?") src += "[^/]";
    else src += ch.replace(REGEX_SYNTAX, "\\$&");
  }
  const re = new RegExp(`${src}$`, "u");
  return (s) => re.test(s);
}

/** Characters a scope part may use (scope characters plus the wildcards). */
const SCOPE_PART = /^[A-Za-z0-9_.:@*?-]{1,160}$/;
/** Characters a name part may use (secret-name characters plus the wildcards). */
const NAME_PART = /^[A-Za-z0-9_.*?-]{1,160}$/;
/** Characters an agent pattern may use (agent-id characters plus the wildcards). */
const AGENT_PATTERN = /^[A-Za-z0-9_.@:*?-]{1,160}$/;

function invalid(what: string, p: unknown, why: string): VaultError {
  return new VaultError("policy_invalid", `${what} ${show(String(p))} is not valid: ${why}`);
}

/**
 * Compiles a secret pattern: `scope/name` (globs allowed in either part; `*\/token` is any scope) or a
 * bare `name`, which means scope `global`. Throws VaultError("policy_invalid") when malformed.
 */
export function compileSecretPattern(p: string): (ref: SecretRef) => boolean {
  if (typeof p !== "string" || p.length === 0) throw invalid("secret pattern", p, "it is empty");
  const slash = p.indexOf("/");
  if (slash >= 0 && p.indexOf("/", slash + 1) >= 0)
    throw invalid("secret pattern", p, 'it has more than one "/"; write "scope/name" or a bare "name"');
  const scope = slash < 0 ? "global" : p.slice(0, slash);
  const name = slash < 0 ? p : p.slice(slash + 1);
  if (scope.length === 0 || name.length === 0)
    throw invalid("secret pattern", p, 'the scope or the name around "/" is empty; write "scope/name", e.g. "*/github-token"');
  if (/\s/.test(p)) throw invalid("secret pattern", p, "it contains whitespace");
  if (!SCOPE_PART.test(scope))
    throw invalid(
      "secret pattern",
      p,
      'its scope part may use letters, digits, "_", ".", "-", ":", "@" and the wildcards "*" and "?"',
    );
  if (!NAME_PART.test(name))
    throw invalid("secret pattern", p, 'its name part may use letters, digits, "_", ".", "-" and the wildcards "*" and "?"');
  const scopeMatch = compileGlob(scope);
  const nameMatch = compileGlob(name);
  return (ref) => scopeMatch(ref.scope) && nameMatch(ref.name);
}

/** Compiles an agent-id glob such as `claude-*`. Throws VaultError("policy_invalid") when malformed. */
export function compileAgentPattern(p: string): (agent: string) => boolean {
  if (typeof p !== "string" || p.length === 0) throw invalid("agent pattern", p, "it is empty");
  if (/\s/.test(p)) throw invalid("agent pattern", p, "it contains whitespace");
  if (!AGENT_PATTERN.test(p))
    throw invalid(
      "agent pattern",
      p,
      'use agent-id characters (letters, digits, "_", ".", "-", "@", ":") and the wildcards "*" and "?"',
    );
  return compileGlob(p);
}
