/**
 * Secret references: the one grammar for pointing at a secret from env values, templates and config
 * (docs/references.md). Three forms, all meaning `{ scope, name, field? }`:
 *
 * - canonical `lessor://<scope>/<name>[#<field>]`
 * - ZLayer `$S:name[/field]`, `$S:@service/name[/field]`, `$S::env/name[/field]`,
 *   `$S:project:env/name[/field]` (scope `env:<env>@<project>`)
 * - `$secret://<env>/<KEY>[/field]` (scope `env:<env>`)
 *
 * This is the scanner the other parts share: ./reference.ts (one whole reference: parse, format),
 * ./text.ts (references inside a larger text), ./json-field.ts (the field part, applied to a value).
 * Parsing is strict and every failure names the 0-based position of what is wrong. No I/O here.
 */
import { VaultError } from "../../base/errors.js";
import { isScope, isSecretName } from "../../base/names.js";
import type { SecretRef } from "../../base/types.js";

/** Points at one secret, optionally at one field of its JSON value. */
export interface SecretFieldRef extends SecretRef {
  /** A JSON field path: dot-separated keys, `\.` for a dot inside a key. */
  field?: string;
}

/** How a reference was (or is to be) written. */
export type ReferenceForm = "canonical" | "zlayer" | "secret-url";

/** A parsed reference and the form it was written in. */
export type ParsedReference = SecretFieldRef & { form: ReferenceForm };

export const CANONICAL = "lessor://";
export const ZLAYER = "$S:";
export const SECRET_URL = "$secret://";
const PREFIXES = [CANONICAL, ZLAYER, SECRET_URL];
const FORMS_HINT = `a reference starts with "lessor://", "$S:" or "$secret://"`;

const MAX_KIND = 32;
const MAX_ID = 128;
const MAX_NAME = 128;
/** Longest field path, in characters as written. */
const MAX_FIELD_LENGTH = 256;

// ---- character classes (char codes; -1 means "past the end") ----

const isLower = (c: number) => c >= 97 && c <= 122;
const isUpper = (c: number) => c >= 65 && c <= 90;
const isDigit = (c: number) => c >= 48 && c <= 57;
const isAlnum = (c: number) => isLower(c) || isUpper(c) || isDigit(c);
/** Scope kind: `[a-z0-9_-]` (must start with a lowercase letter). */
const isKindChar = (c: number) => isLower(c) || isDigit(c) || c === 95 || c === 45;
/** Scope id: `[A-Za-z0-9._@-]`, as src/base/names.ts allows (must start with a letter or digit). */
const isIdChar = (c: number) => isAlnum(c) || c === 95 || c === 46 || c === 64 || c === 45;
/** ZLayer environment: `[A-Za-z0-9_.-]` (must start with a letter or digit); a project also refuses `_`. */
const isEnvChar = (c: number) => isAlnum(c) || c === 95 || c === 46 || c === 45;
/** Secret name: `[A-Za-z0-9_.-]`. */
const isNameChar = (c: number) => isAlnum(c) || c === 95 || c === 46 || c === 45;
/** Field key: `[A-Za-z0-9_-]`, plus the escape `\.`. */
const isKeyChar = (c: number) => isAlnum(c) || c === 95 || c === 45;
/** Characters that make `xlessor://` part of another URL scheme rather than a reference. */
export const isSchemeChar = (c: number) => isAlnum(c) || c === 43 || c === 45 || c === 46 || c === 95;

const code = (s: string, i: number) => (i < s.length ? s.charCodeAt(i) : -1);

function runOf(s: string, i: number, pred: (c: number) => boolean): number {
  while (i < s.length && pred(s.charCodeAt(i))) i++;
  return i;
}

function keyStartsAt(s: string, i: number): boolean {
  return isKeyChar(code(s, i)) || (s[i] === "\\" && s[i + 1] === ".");
}

// ---- failures ----

/** A parse failure at 0-based index `at`; turned into a VaultError by the public functions. */
export class ParseFail {
  constructor(
    readonly at: number,
    readonly what: string,
  ) {}
}

/** The whole character (code point) at `at`, or "" past the end. */
export function charAt(s: string, at: number): string {
  const cp = s.codePointAt(at);
  return cp === undefined ? "" : String.fromCodePoint(cp);
}

/** `whitespace`, or the character quoted. */
function describe(s: string, at: number): string {
  const ch = charAt(s, at);
  return /^\s$/u.test(ch) ? "whitespace" : JSON.stringify(ch);
}

/** `expected X`, plus what was found instead (nothing when the input ends there). */
export function expected(s: string, at: number, what: string): ParseFail {
  return new ParseFail(at, at >= s.length ? `expected ${what}` : `expected ${what}, found ${describe(s, at)}`);
}

/** The input quoted for a message, clipped at 80 characters. */
export function show(s: string): string {
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 80)}…` : s);
}

// ---- the scanner ----
// `text` mode is used inside larger texts: optional parts (`#field`, `/field`, `.key`) are taken only
// when they are complete, a trailing "." is left out of a name or field, and `$S:a:` is read as the
// project form only when an environment and "/" follow. Outside text mode every part is required to
// be well formed and anything unexpected fails.

export interface Scan {
  ref: ParsedReference;
  end: number;
}

/** Scans the reference that starts at `i` (in `text` mode inside a larger text, see above). */
export function scanAt(s: string, i: number, text: boolean): Scan {
  if (s.startsWith(CANONICAL, i)) return scanCanonical(s, i + CANONICAL.length, text);
  if (s.startsWith(ZLAYER, i)) return scanZlayer(s, i + ZLAYER.length, text);
  if (s.startsWith(SECRET_URL, i)) return scanSecretUrl(s, i + SECRET_URL.length, text);
  throw prefixFail(s, i);
}

function prefixFail(s: string, i: number): ParseFail {
  if (i >= s.length) return new ParseFail(i, `the reference is empty; ${FORMS_HINT}`);
  for (const p of PREFIXES)
    if (s.slice(i, i + p.length).toLowerCase() === p.toLowerCase()) {
      let k = 0;
      while (s[i + k] === p[k]) k++;
      return new ParseFail(i + k, `expected ${JSON.stringify(p)} (references are case-sensitive)`);
    }
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(s.slice(i, i + 64));
  if (scheme && scheme[1] !== "lessor" && scheme[1] !== "secret")
    return new ParseFail(i, `unknown scheme ${JSON.stringify(scheme[1])}; ${FORMS_HINT}`);
  let best = 0;
  let prefix = "";
  for (const p of PREFIXES) {
    let k = 0;
    while (k < p.length && s[i + k] === p[k]) k++;
    if (k > best) [best, prefix] = [k, p];
  }
  const at = i + best;
  // Two or more matching characters pick out one form ("lessor:/x", "$sec"): say which.
  if (best >= 2) return expected(s, at, JSON.stringify(prefix));
  const found = at >= s.length ? "the reference ends there" : `found ${describe(s, at)}`;
  return new ParseFail(at, `${FORMS_HINT}; ${found}`);
}

function scanCanonical(s: string, p: number, text: boolean): Scan {
  const kindEnd = runOf(s, p, isKindChar);
  let scopeEnd: number;
  if (kindEnd === p) {
    if (isUpper(code(s, p))) throw new ParseFail(p, `a scope is written in lower case ("global", "env:prod")`);
    throw expected(s, p, `a scope such as "global" or "env:prod"`);
  }
  const kind = s.slice(p, kindEnd);
  if (kind === "global" && s[kindEnd] === "/") scopeEnd = kindEnd;
  else {
    if (!isLower(code(s, p))) throw new ParseFail(p, `a scope kind starts with a lowercase letter`);
    if (kind.length > MAX_KIND) throw new ParseFail(p + MAX_KIND, `a scope kind is at most ${MAX_KIND} characters`);
    if (s[kindEnd] !== ":")
      throw expected(s, kindEnd, `":" after the scope kind ${JSON.stringify(kind)} (a scope is "global" or "<kind>:<id>")`);
    scopeEnd = scanWord(s, kindEnd + 1, isIdChar, "a scope id", MAX_ID);
  }
  const scope = s.slice(p, scopeEnd);
  if (s[scopeEnd] !== "/") throw expected(s, scopeEnd, `"/" and a secret name after the scope`);
  return finish(s, scope, scopeEnd + 1, "#", "canonical", text);
}

function scanZlayer(s: string, p: number, text: boolean): Scan {
  if (s[p] === "@") {
    const e = scanWord(s, p + 1, isIdChar, "a service name", MAX_ID);
    if (s[e] !== "/") throw expected(s, e, `"/" and a secret name after the service`);
    return finish(s, `service:${s.slice(p + 1, e)}`, e + 1, "/", "zlayer", text);
  }
  if (s[p] === ":") {
    const e = scanWord(s, p + 1, isEnvChar, "an environment name", MAX_ID);
    if (s[e] === "@")
      throw new ParseFail(
        e,
        `an environment in "$S::env/name" cannot contain "@"; write scope env:<env>@<project> as "$S:project:env/name"`,
      );
    if (s[e] !== "/") throw expected(s, e, `"/" and a secret name after the environment`);
    return finish(s, `env:${s.slice(p + 1, e)}`, e + 1, "/", "zlayer", text);
  }
  const tokenEnd = runOf(s, p, isNameChar);
  if (tokenEnd > p && s[tokenEnd] === ":" && (!text || projectFormAhead(s, tokenEnd + 1))) {
    // $S:project:env/name[/field]  ->  scope env:<env>@<project>
    if (!isAlnum(code(s, p))) throw new ParseFail(p, `a project name starts with a letter or digit`);
    const bad = s.slice(p, tokenEnd).indexOf("_");
    if (bad >= 0) throw new ParseFail(p + bad, `a project name may contain only letters, digits, "." and "-"`);
    const e = scanWord(s, tokenEnd + 1, isEnvChar, "an environment name after the project", MAX_ID);
    if (s[e] !== "/") throw expected(s, e, `"/" and a secret name after the environment`);
    const project = s.slice(p, tokenEnd);
    const env = s.slice(tokenEnd + 1, e);
    if (env.length + 1 + project.length > MAX_ID)
      throw new ParseFail(p, `project and environment together are at most ${MAX_ID - 1} characters`);
    return finish(s, `env:${env}@${project}`, e + 1, "/", "zlayer", text);
  }
  return finish(s, "global", p, "/", "zlayer", text);
}

function projectFormAhead(s: string, i: number): boolean {
  const e = runOf(s, i, isEnvChar);
  return e > i && s[e] === "/";
}

function scanSecretUrl(s: string, p: number, text: boolean): Scan {
  const e = scanWord(s, p, isIdChar, "an environment name", MAX_ID);
  if (s[e] !== "/") throw expected(s, e, `"/" and a secret name after the environment`);
  return finish(s, `env:${s.slice(p, e)}`, e + 1, "/", "secret-url", text);
}

/** A scope id, service, environment or project: starts with a letter or digit. Returns its end. */
function scanWord(s: string, p: number, pred: (c: number) => boolean, what: string, max: number): number {
  const e = runOf(s, p, pred);
  if (e === p) throw expected(s, p, what);
  if (!isAlnum(code(s, p))) throw new ParseFail(p, `${what.replace(/^an? /, "")} starts with a letter or digit`);
  if (e - p > max) throw new ParseFail(p + max, `${what.replace(/^an? /, "")} is at most ${max} characters`);
  return e;
}

/** The secret name at `p` and an optional field after `sep`. */
function finish(s: string, scope: string, p: number, sep: string, form: ReferenceForm, text: boolean): Scan {
  let e = runOf(s, p, isNameChar);
  const trailer = (at: number) => s[at] === sep && (!text || keyStartsAt(s, at + 1));
  if (text && !trailer(e)) while (e > p && s[e - 1] === ".") e--;
  if (e === p) throw expected(s, p, "a secret name");
  if (!isAlnum(code(s, p)) && s[p] !== "_") throw new ParseFail(p, `a secret name starts with a letter, digit or "_"`);
  const dots = s.slice(p, e).indexOf("..");
  if (dots >= 0) throw new ParseFail(p + dots, `a secret name must not contain ".."`);
  if (e - p > MAX_NAME) throw new ParseFail(p + MAX_NAME, `a secret name is at most ${MAX_NAME} characters`);
  const ref: ParsedReference = { scope, name: s.slice(p, e), form };
  if (!isScope(scope) || !isSecretName(ref.name)) throw new ParseFail(p, "the scope or secret name is not valid");
  if (!trailer(e)) return { ref, end: e };
  const f = scanField(s, e + 1, text);
  ref.field = f.field;
  return { ref, end: f.end };
}

/** A field path at `p`: key ("." key)*, keys of `[A-Za-z0-9_-]` and `\.`. */
function scanField(s: string, p: number, text: boolean): { field: string; end: number } {
  let q = p;
  for (;;) {
    const keyStart = q;
    for (;;) {
      const c = code(s, q);
      if (isKeyChar(c)) q++;
      else if (c === 92) {
        if (s[q + 1] === ".") q += 2;
        else if (text) break;
        else throw new ParseFail(q, `the only escape in a field path is "\\." (a "." inside a key)`);
      } else break;
    }
    if (q === keyStart) {
      const after = keyStart === p ? s[p - 1] : ".";
      throw expected(s, q, `a field name after ${JSON.stringify(after)}`);
    }
    if (s[q] === "." && (!text || keyStartsAt(s, q + 1))) {
      q++;
      continue;
    }
    break;
  }
  if (q - p > MAX_FIELD_LENGTH) throw new ParseFail(p + MAX_FIELD_LENGTH, `a field path is at most ${MAX_FIELD_LENGTH} characters`);
  return { field: s.slice(p, q), end: q };
}

function trailingFail(s: string, scan: Scan): ParseFail {
  const at = scan.end;
  const c = s[at];
  const found = describe(s, at);
  if (c === "/" && scan.ref.form === "canonical")
    return new ParseFail(at, `unexpected "/": a secret name cannot contain "/"`);
  if (c === "/" && scan.ref.field !== undefined)
    return new ParseFail(at, `unexpected "/": a reference has one field path; separate nested keys with "."`);
  if (c === "#" && scan.ref.form !== "canonical")
    return new ParseFail(at, `unexpected "#": in this form a field follows a "/"`);
  return new ParseFail(at, `unexpected ${found} after the reference`);
}

/** The reference that is the whole of `s`. */
export function scanWhole(s: string): ParsedReference {
  const scan = scanAt(s, 0, false);
  if (scan.end !== s.length) throw trailingFail(s, scan);
  return scan.ref;
}

/** Throws VaultError("invalid_request") unless `field` is a well-formed field path. */
export function checkField(field: string): void {
  try {
    const { end } = scanField(field, 0, false);
    if (end !== field.length) throw new ParseFail(end, `unexpected ${describe(field, end)}`);
  } catch (e) {
    if (e instanceof ParseFail)
      throw new VaultError(
        "invalid_request",
        `field path ${show(field)}: position ${e.at + 1}: ${e.what} (a field path is keys of letters, digits, "_" and "-" joined by ".", with "\\." for a dot inside a key)`,
      );
    throw e;
  }
}
