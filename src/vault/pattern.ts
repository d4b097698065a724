/**
 * Glob patterns for agent ids and secret refs in policy rules. Only two characters are special:
 * `*` (any run of characters, possibly empty, except "/") and `?` (one character except "/").
 * Everything else is literal.
 *
 * Matching never backtracks: a glob is split at its stars into chunks, and each chunk is matched at
 * the leftmost place it fits (see {@link matchGlob}), so a match costs at most one comparison per
 * (subject character × pattern character), whatever the pattern. A regex would backtrack: `*a*a*a*b`
 * against a long run of "a"s takes time that grows with the subject's length to the power of the
 * number of stars, and both the pattern (policy) and the subject (a secret name an agent chose) can be
 * long enough for that to hang the daemon.
 */
import { VaultError } from "../base/errors.js";
import type { SecretRef } from "../base/types.js";
import { globCanMatch, KIND_ID_SCOPE, SECRET_NAME } from "./pattern-fit.js";

function show(s: string): string {
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 80)}…` : s);
}

/** A compiled glob: the chunks between its stars (a glob without a star is one chunk). */
type Chunks = readonly (readonly string[])[];

/** Characters of `s`, one per code point (so "?" matches one character, as it always did). */
function chars(s: string): readonly string[] {
  return /[\uD800-\uDFFF]/.test(s) ? Array.from(s) : (s as unknown as readonly string[]);
}

/** Counts comparisons when a test asks for it (see {@link globSteps}); null otherwise. */
let steps: { n: number } | null = null;

/** Does `chunk` match `s` at `at`? `?` is any character except "/"; the rest is literal. */
function matchAt(chunk: readonly string[], s: readonly string[], at: number): boolean {
  for (let j = 0; j < chunk.length; j++) {
    if (steps) steps.n++;
    const p = chunk[j]!;
    const c = s[at + j]!;
    if (p === "?" ? c === "/" : p !== c) return false;
  }
  return true;
}

/**
 * Matches chunks against `s`: the first chunk at the start, the last at the end, each middle one at
 * the leftmost place after the previous one; what a star skips may not hold "/". Leftmost is always
 * right: any later fit leaves no more room for the chunks after it, and skips a superset of what the
 * leftmost skips. O(|s| × |pattern|) at worst, no backtracking.
 */
export function matchGlob(glob: Chunks, subject: string): boolean {
  const s = chars(subject);
  const n = s.length;
  const first = glob[0]!;
  if (glob.length === 1) return n === first.length && matchAt(first, s, 0);
  const last = glob[glob.length - 1]!;
  const lastAt = n - last.length;
  if (lastAt < first.length || !matchAt(first, s, 0)) return false;
  let pos = first.length;
  for (let k = 1; k < glob.length - 1; k++) {
    const chunk = glob[k]!;
    const lastStart = lastAt - chunk.length;
    let at = pos;
    // A star cannot skip a "/": the chunk must start at or before the next one.
    for (; at <= lastStart; at++) {
      if (matchAt(chunk, s, at)) break;
      if (s[at] === "/") return false;
    }
    if (at > lastStart) return false;
    pos = at + chunk.length;
  }
  for (let i = pos; i < lastAt; i++) {
    if (steps) steps.n++;
    if (s[i] === "/") return false;
  }
  return matchAt(last, s, lastAt);
}

/** Splits a glob into the chunks between its stars (consecutive stars are one). */
function chunksOf(pattern: string): Chunks {
  return pattern.split(/\*+/).map(chars);
}

/**
 * Compiles a glob into a predicate. `*` matches any run of characters except "/", `?` one character
 * except "/"; every other character matches itself. Linear in the subject for a fixed pattern (see
 * {@link matchGlob}). Throws VaultError("invalid_request") for "".
 */
export function compileGlob(pattern: string): (s: string) => boolean {
  if (typeof pattern !== "string" || pattern.length === 0)
    throw new VaultError("invalid_request", "a glob pattern is empty: write at least one character, or \"*\" for anything");
  if (!pattern.includes("*") && !pattern.includes("?")) return (s) => s === pattern;
  if (pattern === "*") return (s) => !s.includes("/");
  const glob = chunksOf(pattern);
  return (s) => matchGlob(glob, s);
}

/**
 * Runs `fn` counting the character comparisons glob matching makes meanwhile (for tests that prove
 * matching is never worse than |subject| × |pattern|). Not for production use: not reentrant.
 */
export function globSteps(fn: () => void): number {
  const counter = { n: 0 };
  steps = counter;
  try {
    fn();
  } finally {
    steps = null;
  }
  return counter.n;
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
  checkCanMatch(p, scope, name);
  const scopeMatch = compileGlob(scope);
  const nameMatch = compileGlob(name);
  return (ref) => scopeMatch(ref.scope) && nameMatch(ref.name);
}

/** Scope part `scope` with its kind (the text before its first ":") in lower case, or null without one. */
function lowerKind(scope: string): string | null {
  const colon = scope.indexOf(":");
  return colon > 0 ? scope.slice(0, colon).toLowerCase() + scope.slice(colon) : null;
}

/** Can the scope part match "global" or some `kind:id`? */
function scopeCanMatch(scope: string): boolean {
  return compileGlob(scope)("global") || globCanMatch(scope, KIND_ID_SCOPE);
}

/**
 * Refuses a pattern whose scope or name part no real scope or secret name can match (src/base/names.ts):
 * such a rule matches nothing, which on a deny rule is a silent hole. Suggests the likely fix.
 */
function checkCanMatch(p: string, scope: string, name: string): void {
  if (!scopeCanMatch(scope)) {
    const kind = lowerKind(scope);
    const fix =
      scope.toLowerCase() === "global"
        ? `write "global/${name}"`
        : kind !== null && kind !== scope && scopeCanMatch(kind)
          ? `kinds are lower case: write "${kind}/${name}"`
          : !scope.includes(":") && scopeCanMatch(`env:${scope}`)
            ? `it has no kind: write "<kind>:${scope}/${name}", e.g. "env:${scope}/${name}"`
            : 'write "global", a "<kind>:<id>" such as "env:prod", or a glob such as "env:*" or "*" (any scope)';
    throw invalid(
      "secret pattern",
      p,
      `its scope part ${show(scope)} can match no scope (scopes are "global" or "<kind>:<id>": a lower-case kind of at most 32 characters, ":", then an id of at most 128 letters, digits, ".", "_", "@" or "-"); ${fix}`,
    );
  }
  if (!globCanMatch(name, SECRET_NAME) || name.includes(".."))
    throw invalid(
      "secret pattern",
      p,
      `its name part ${show(name)} can match no secret name: names are 1-128 letters, digits, "_", "." or "-", start with a letter, digit or "_", and hold no ".."`,
    );
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
