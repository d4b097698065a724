/**
 * Host names and domain patterns. Leases are granted to DNS names, so every host is normalised the
 * same way before it is compared: lower-case, IDN → punycode, one trailing dot removed, and checked
 * label by label. Anything that is not a plain host (ports, paths, userinfo, IP literals, escapes,
 * invisible characters) is refused rather than guessed at.
 */
import { domainToASCII } from "node:url";
import { VaultError } from "../base/errors.js";
import { quoteText } from "../base/text.js";

/** An exact host (`api.github.com`) or a wildcard (`*.github.com`: any host strictly below the suffix). */
export type DomainPattern = { kind: "exact"; host: string } | { kind: "wildcard"; suffix: string };

/** Normalised host, or the reason it is not one (a phrase that follows "it"). */
export type HostResult = { host: string; problem: null } | { host: null; problem: string };

const MAX_INPUT = 1024;
/** Control, format (zero-width, soft hyphen, bidi), separator and unassigned characters. */
const INVISIBLE = /[\p{C}\p{Z}]/u;

/** The value quoted for a message: clipped, and with control and invisible characters escaped. */
function show(v: unknown): string {
  return quoteText(typeof v === "string" ? v : String(v));
}

function fail(problem: string): HostResult {
  return { host: null, problem };
}

/** Explains why an ASCII character that is not a letter, digit, "." or "-" cannot be in a host. */
function badAscii(input: string, c: number): string {
  const ch = String.fromCharCode(c);
  if (c <= 0x20 || c === 0x7f) return "contains whitespace or a control character";
  if (ch === ":" || ch === "[" || ch === "]") {
    if (input.startsWith("[") || input.indexOf(":") !== input.lastIndexOf(":"))
      return "is an IPv6 address; leases are granted to DNS names such as \"api.example.com\"";
    return 'has a port or another ":"; give the bare host name, such as "api.example.com"';
  }
  if (ch === "/") return 'has a path or another "/"; give only the host name, such as "api.example.com"';
  if (ch === "@") return 'has userinfo ("@"); give only the host name, such as "api.example.com"';
  if (ch === "*") return 'has a "*"; wildcards belong in domain patterns such as "*.example.com", not in hosts';
  return `has the character ${JSON.stringify(ch)}, which is not allowed in host names (use letters, digits, "-" and ".")`;
}

function isAlnum(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39);
}

/** Checks an already lower-case ASCII host; returns a problem or null. */
function checkLabels(s: string): string | null {
  if (s.length === 0) return "is empty";
  if (s.length > 253) return "is longer than 253 characters";
  let labels = 0;
  let start = 0;
  let lastStart = 0;
  for (let i = 0; i <= s.length; i++) {
    const c = i < s.length ? s.charCodeAt(i) : 0x2e;
    if (c === 0x2e) {
      const len = i - start;
      if (len === 0) return 'has an empty label (a leading dot or "..")';
      if (len > 63) return "has a label longer than 63 characters";
      if (s.charCodeAt(start) === 0x2d || s.charCodeAt(i - 1) === 0x2d)
        return 'has a label that starts or ends with "-"';
      labels++;
      lastStart = start;
      start = i + 1;
    } else if (!isAlnum(c) && c !== 0x2d) {
      return `has the character ${JSON.stringify(s[i])}, which is not allowed in host names (use letters, digits, "-" and ".")`;
    }
  }
  if (labels < 2) return 'has only one label; use a full domain name such as "example.com"';
  // WHATWG URL parsers treat a host whose last label is a number (decimal or 0x hex) as IPv4.
  if (/^(?:[0-9]+|0x[0-9a-f]*)$/.test(s.slice(lastStart)))
    return 'is an IPv4 address or ends in a number; leases are granted to DNS names such as "api.example.com"';
  return null;
}

function normalize(input: unknown): HostResult {
  if (typeof input !== "string") return fail("is not a string");
  if (input.length === 0) return fail("is empty");
  if (input.length > MAX_INPUT) return fail("is longer than 253 characters");
  let nonAscii = false;
  for (let i = 0; i < input.length; i++) {
    const c = input.charCodeAt(i);
    if (c >= 0x80) {
      nonAscii = true;
      continue;
    }
    if (isAlnum(c) || (c >= 0x41 && c <= 0x5a) || c === 0x2e || c === 0x2d) continue;
    return fail(badAscii(input, c));
  }
  let s: string;
  if (nonAscii) {
    if (INVISIBLE.test(input)) return fail("contains an invisible, space or control character");
    s = domainToASCII(input);
    if (s === "") return fail("is not a valid internationalized domain name");
  } else {
    s = input.toLowerCase();
    if (s.includes("xn--")) {
      s = domainToASCII(s);
      if (s === "") return fail('has an "xn--" label that is not valid punycode');
    }
  }
  if (s.endsWith(".")) s = s.slice(0, -1);
  const problem = checkLabels(s);
  return problem === null ? { host: s, problem: null } : fail(problem);
}

/**
 * Normalises a host name: lower-case, IDN → punycode, one trailing dot removed. Throws
 * VaultError("invalid_request") for anything that is not a plain DNS name of at least two labels.
 */
export function normalizeHost(input: string): string {
  const r = normalize(input);
  if (r.problem !== null) throw new VaultError("invalid_request", `host ${show(String(input))} is not valid: it ${r.problem}`);
  return r.host;
}

/** Pattern, or the reason it is not one (a full sentence fragment after the quoted input). */
export type PatternResult = { pattern: DomainPattern; problem: null } | { pattern: null; problem: string };

function parsePattern(input: unknown): PatternResult {
  if (typeof input !== "string") return { pattern: null, problem: "it is not a string" };
  if (input.startsWith("*.")) {
    const rest = input.slice(2);
    if (rest.includes("*"))
      return { pattern: null, problem: 'it may have only one "*", as the whole first label, as in "*.example.com"' };
    const r = normalize(rest);
    if (r.problem !== null) return { pattern: null, problem: `the part after "*." (${show(rest)}) ${r.problem}` };
    return { pattern: { kind: "wildcard", suffix: r.host }, problem: null };
  }
  if (input.includes("*")) {
    if (input.trim() === "*")
      return {
        pattern: null,
        problem: 'a bare "*" would match every host; list the domains, or use any_domain = true in the policy',
      };
    if (input.trim() !== input) return { pattern: null, problem: "it has leading or trailing whitespace" };
    return { pattern: null, problem: '"*" must be the whole first label, followed by a dot, as in "*.example.com"' };
  }
  const r = normalize(input);
  if (r.problem !== null) return { pattern: null, problem: `it ${r.problem}` };
  return { pattern: { kind: "exact", host: r.host }, problem: null };
}

/**
 * Parses an exact host (`api.github.com`) or a wildcard (`*.github.com`, where `*` is the whole first
 * label and the suffix has at least two labels). Throws VaultError("invalid_request") otherwise.
 */
export function parseDomainPattern(input: string): DomainPattern {
  const r = parsePattern(input);
  if (r.problem !== null)
    throw new VaultError("invalid_request", `domain pattern ${show(String(input))} is not valid: ${r.problem}`);
  return r.pattern;
}

/** Like {@link parseDomainPattern} but returns the problem text instead of throwing. */
export function tryParseDomainPattern(input: string): PatternResult {
  return parsePattern(input);
}

/** The canonical text of a pattern: the host, or `*.` and the suffix. */
export function formatDomainPattern(p: DomainPattern): string {
  return p.kind === "exact" ? p.host : `*.${p.suffix}`;
}

/** True when normalised `host` lies strictly below normalised `suffix`. */
function below(host: string, suffix: string): boolean {
  return (
    host.length > suffix.length + 1 && host.endsWith(suffix) && host.charCodeAt(host.length - suffix.length - 1) === 0x2e
  );
}

/**
 * True when `host` (normalised first; an invalid host never matches) is allowed by `pattern`:
 * equal to an exact pattern, or at least one label below a wildcard's suffix. Never throws.
 */
export function matchDomain(pattern: DomainPattern, host: string): boolean {
  const h = normalize(host).host;
  if (h === null) return false;
  return pattern.kind === "exact" ? h === pattern.host : below(h, pattern.suffix);
}

/**
 * True when `rule` allows everything `requested` allows. Both must be parsed (normalised) patterns.
 * An exact host is covered by the same host or a wildcard above it; `*.x` is covered by `*.y` when
 * x is y or lies below y.
 */
export function coversPattern(rule: DomainPattern, requested: DomainPattern): boolean {
  if (requested.kind === "exact")
    return rule.kind === "exact" ? rule.host === requested.host : below(requested.host, rule.suffix);
  if (rule.kind === "exact") return false;
  return requested.suffix === rule.suffix || below(requested.suffix, rule.suffix);
}
