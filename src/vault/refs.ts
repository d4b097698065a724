/**
 * Secret references: the one grammar for pointing at a secret from env values, templates and config
 * (docs/references.md). Three forms, all meaning `{ scope, name, field? }`:
 *
 * - canonical `lessor://<scope>/<name>[#<field>]`
 * - ZLayer `$S:name[/field]`, `$S:@service/name[/field]`, `$S::env/name[/field]`,
 *   `$S:project:env/name[/field]` (scope `env:<env>@<project>`)
 * - `$secret://<env>/<KEY>[/field]` (scope `env:<env>`)
 *
 * Parsing is strict and every error names the 1-based position of what is wrong. No I/O here.
 */
import { SecretBytes } from "../crypto/secret-bytes.js";
import { VaultError } from "../base/errors.js";
import { isScope, isSecretName } from "../base/names.js";

/** Points at one secret, optionally at one field of its JSON value. */
export interface SecretReference {
  scope: string;
  name: string;
  /** A JSON field path: dot-separated keys, `\.` for a dot inside a key. */
  field?: string;
}

/** How a reference was (or is to be) written. */
export type ReferenceForm = "canonical" | "zlayer" | "secret-url";

/** A parsed reference and the form it was written in. */
export type ParsedReference = SecretReference & { form: ReferenceForm };

/** A reference found in a larger text: `text.slice(start, end)` is the whole reference (braces included). */
export interface FoundReference {
  start: number;
  end: number;
  ref: ParsedReference;
}

const CANONICAL = "lessor://";
const ZLAYER = "$S:";
const SECRET_URL = "$secret://";
const PREFIXES = [CANONICAL, ZLAYER, SECRET_URL];
const FORMS_HINT = `a reference starts with "lessor://", "$S:" or "$secret://"`;

const MAX_KIND = 32;
const MAX_ID = 128;
const MAX_NAME = 128;
/** Longest field path, in characters as written. */
export const MAX_FIELD_LENGTH = 256;

// ---- character classes (char codes; -1 means "past the end") ----

const isLower = (c: number) => c >= 97 && c <= 122;
const isUpper = (c: number) => c >= 65 && c <= 90;
const isDigit = (c: number) => c >= 48 && c <= 57;
const isAlnum = (c: number) => isLower(c) || isUpper(c) || isDigit(c);
/** Scope kind: `[a-z0-9_-]` (must start with a lowercase letter). */
const isKindChar = (c: number) => isLower(c) || isDigit(c) || c === 95 || c === 45;
/** Scope id: `[A-Za-z0-9._@-]` (must start with a letter or digit). */
const isIdChar = (c: number) => isAlnum(c) || c === 46 || c === 64 || c === 45;
/** ZLayer environment and project: `[A-Za-z0-9._-]` (must start with a letter or digit). */
const isEnvChar = (c: number) => isAlnum(c) || c === 46 || c === 45;
/** Secret name: `[A-Za-z0-9_.-]`. */
const isNameChar = (c: number) => isAlnum(c) || c === 95 || c === 46 || c === 45;
/** Field key: `[A-Za-z0-9_-]`, plus the escape `\.`. */
const isKeyChar = (c: number) => isAlnum(c) || c === 95 || c === 45;
/** Characters that make `xlessor://` part of another URL scheme rather than a reference. */
const isSchemeChar = (c: number) => isAlnum(c) || c === 43 || c === 45 || c === 46 || c === 95;

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
class ParseFail {
  constructor(
    readonly at: number,
    readonly what: string,
  ) {}
}

function charAt(s: string, at: number): string {
  const cp = s.codePointAt(at);
  return cp === undefined ? "" : String.fromCodePoint(cp);
}

/** `whitespace`, or the character quoted. */
function describe(s: string, at: number): string {
  const ch = charAt(s, at);
  return /^\s$/u.test(ch) ? "whitespace" : JSON.stringify(ch);
}

/** `expected X`, plus what was found instead (nothing when the input ends there). */
function expected(s: string, at: number, what: string): ParseFail {
  return new ParseFail(at, at >= s.length ? `expected ${what}` : `expected ${what}, found ${describe(s, at)}`);
}

function show(s: string): string {
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 80)}…` : s);
}

// ---- the scanner ----
// `text` mode is used inside larger texts: optional parts (`#field`, `/field`, `.key`) are taken only
// when they are complete, a trailing "." is left out of a name or field, and `$S:a:` is read as the
// project form only when an environment and "/" follow. Outside text mode every part is required to
// be well formed and anything unexpected fails.

interface Scan {
  ref: ParsedReference;
  end: number;
}

function scanAt(s: string, i: number, text: boolean): Scan {
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

function scanWhole(s: string): ParsedReference {
  const scan = scanAt(s, 0, false);
  if (scan.end !== s.length) throw trailingFail(s, scan);
  return scan.ref;
}

// ---- public API ----

/**
 * Parses one reference (the whole string). Throws VaultError("invalid_request") saying what is wrong
 * and where (1-based position), e.g. `reference "lessor://global/": position 17: expected a secret name`.
 */
export function parseReference(s: string): ParsedReference {
  if (typeof s !== "string") throw new VaultError("invalid_request", "a reference must be a string");
  try {
    return scanWhole(s);
  } catch (e) {
    if (e instanceof ParseFail)
      throw new VaultError("invalid_request", `reference ${show(s)}: position ${e.at + 1}: ${e.what}`);
    throw e;
  }
}

/** Like {@link parseReference}, but null instead of an error. */
export function tryParseReference(s: string): ParsedReference | null {
  if (typeof s !== "string") return null;
  try {
    return scanWhole(s);
  } catch (e) {
    if (e instanceof ParseFail) return null;
    throw e;
  }
}

/** True when the whole string is one reference. */
export function isReference(s: string): boolean {
  return tryParseReference(s) !== null;
}

function checkField(field: string): void {
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

/**
 * Writes a reference in `form` (default canonical). Throws VaultError("invalid_request") when a part
 * is not valid or the form cannot express the scope (ZLayer: global, `service:*`, `env:*`;
 * `$secret://`: `env:*` only).
 */
export function formatReference(r: SecretReference, form: ReferenceForm = "canonical"): string {
  const { scope, name, field } = r;
  if (!isScope(scope))
    throw new VaultError("invalid_request", `scope ${show(String(scope))} is not valid: use "global" or "<kind>:<id>" such as "env:prod"`);
  if (!isSecretName(name))
    throw new VaultError("invalid_request", `secret name ${show(String(name))} is not valid: use 1-128 letters, digits, "_", "." or "-", starting with a letter, digit or "_"`);
  if (field !== undefined) {
    if (typeof field !== "string") throw new VaultError("invalid_request", "a reference's field must be a string");
    checkField(field);
  }
  const cannot = (why: string) =>
    new VaultError("invalid_request", `scope ${show(scope)} cannot be written as a ${form} reference: ${why}; use the canonical form`);
  switch (form) {
    case "canonical":
      return `${CANONICAL}${scope}/${name}${field === undefined ? "" : `#${field}`}`;
    case "zlayer": {
      const tail = `${name}${field === undefined ? "" : `/${field}`}`;
      if (scope === "global") return `${ZLAYER}${tail}`;
      if (scope.startsWith("service:")) return `${ZLAYER}@${scope.slice(8)}/${tail}`;
      if (scope.startsWith("env:")) {
        const id = scope.slice(4);
        const at = id.indexOf("@");
        if (at < 0) return `${ZLAYER}:${id}/${tail}`;
        const env = id.slice(0, at);
        const project = id.slice(at + 1);
        if (!/^[A-Za-z0-9][A-Za-z0-9.-]*$/.test(project))
          throw cannot(`in env:<env>@<project> the project must be letters, digits, "." and "-", starting with a letter or digit`);
        return `${ZLAYER}${project}:${env}/${tail}`;
      }
      throw cannot(`ZLayer references name only global, service:<name> and env:<name> scopes`);
    }
    case "secret-url":
      if (!scope.startsWith("env:")) throw cannot(`"$secret://" names only env:<name> scopes`);
      return `${SECRET_URL}${scope.slice(4)}/${name}${field === undefined ? "" : `/${field}`}`;
    default:
      throw new VaultError("invalid_request", `unknown reference form ${show(String(form))}: use canonical, zlayer or secret-url`);
  }
}

const CANDIDATE = /\{\{[ \t]*(?=lessor:\/\/|\$S:|\$secret:\/\/)|lessor:\/\/|\$S:|\$secret:\/\//g;

function textError(text: string, start: number, f: ParseFail): VaultError {
  const before = text.slice(0, f.at);
  const line = before.split("\n").length;
  const column = [...before.slice(before.lastIndexOf("\n") + 1)].length + 1;
  const upto = Math.min(text.length, f.at + charAt(text, f.at).length);
  return new VaultError(
    "invalid_request",
    `reference ${show(text.slice(start, upto))} at line ${line}, column ${column}: ${f.what}`,
  );
}

/**
 * Every reference in a larger text (env value, template), in order, with 0-based offsets (`end`
 * exclusive). A bare reference ends at the first character that cannot continue it (whitespace,
 * quotes, `@`, `:`, `,`, …; see docs/references.md); `{{ ref }}` wraps one explicitly. Anything that
 * starts like a reference but is malformed throws VaultError("invalid_request") with its line and column.
 */
export function findReferences(text: string): FoundReference[] {
  const out: FoundReference[] = [];
  const re = new RegExp(CANDIDATE.source, "g");
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    const start = m.index;
    try {
      if (m[0].startsWith("{{")) {
        const scan = scanAt(text, start + m[0].length, false);
        let q = scan.end;
        while (text[q] === " " || text[q] === "\t") q++;
        if (!text.startsWith("}}", q)) throw expected(text, q, `"}}" to close "{{"`);
        out.push({ start, end: q + 2, ref: scan.ref });
        re.lastIndex = q + 2;
      } else {
        if (m[0] === CANONICAL && start > 0 && isSchemeChar(text.charCodeAt(start - 1))) {
          re.lastIndex = start + 1;
          continue;
        }
        const scan = scanAt(text, start, true);
        out.push({ start, end: scan.end, ref: scan.ref });
        re.lastIndex = scan.end;
      }
    } catch (e) {
      if (e instanceof ParseFail) throw textError(text, start, e);
      throw e;
    }
  }
  return out;
}

/** The reference without its form. */
function plain(r: SecretReference): SecretReference {
  return r.field === undefined ? { scope: r.scope, name: r.name } : { scope: r.scope, name: r.name, field: r.field };
}

/**
 * Replaces every reference in `text` with what `resolve` returns for it (called once per occurrence,
 * in order, one at a time), keeping all other text exactly as it was.
 */
export async function renderReferences(text: string, resolve: (ref: SecretReference) => Promise<string>): Promise<string> {
  let out = "";
  let at = 0;
  for (const f of findReferences(text)) {
    const value = await resolve(plain(f.ref));
    if (typeof value !== "string")
      throw new VaultError("internal", `the resolver returned a ${typeof value} for ${formatReference(f.ref)}, not a string`);
    out += text.slice(at, f.start) + value;
    at = f.end;
  }
  return out + text.slice(at);
}

// ---- JSON fields ----

/** The keys of a field path, unescaped (`a\.b.c` -> ["a.b", "c"]). Throws on a malformed path. */
export function fieldKeys(field: string): string[] {
  if (typeof field !== "string") throw new VaultError("invalid_request", "a field path must be a string");
  checkField(field);
  return field.split(/(?<!\\)\./).map((k) => k.replaceAll("\\.", "."));
}

function isWs(c: string | undefined): boolean {
  return c === " " || c === "\t" || c === "\n" || c === "\r";
}
function skipWs(t: string, i: number): number {
  while (isWs(t[i])) i++;
  return i;
}
function skipString(t: string, i: number): number {
  i++;
  while (t[i] !== '"') i += t[i] === "\\" ? 2 : 1;
  return i + 1;
}
/** End of the (valid) JSON value starting at `i`. */
function skipValue(t: string, i: number): number {
  const c = t[i];
  if (c === '"') return skipString(t, i);
  if (c === "{" || c === "[") {
    let depth = 0;
    for (;;) {
      const d = t[i];
      if (d === '"') {
        i = skipString(t, i);
        continue;
      }
      if (d === "{" || d === "[") depth++;
      else if ((d === "}" || d === "]") && --depth === 0) return i + 1;
      i++;
    }
  }
  while (i < t.length && !isWs(t[i]) && t[i] !== "," && t[i] !== "]" && t[i] !== "}") i++;
  return i;
}
/** Start of the value of `key` in the object at `i` (the last one, as JSON.parse does), or -1. */
function member(t: string, i: number, key: string): number {
  let found = -1;
  i = skipWs(t, i + 1);
  if (t[i] === "}") return -1;
  for (;;) {
    const keyEnd = skipString(t, i);
    const k = JSON.parse(t.slice(i, keyEnd)) as string;
    i = skipWs(t, skipWs(t, keyEnd) + 1);
    if (k === key) found = i;
    i = skipWs(t, skipValue(t, i));
    if (t[i] === "}") return found;
    i = skipWs(t, i + 1);
  }
}
/** Start of element `index` of the array at `i`, or -1. */
function element(t: string, i: number, index: number): number {
  i = skipWs(t, i + 1);
  if (t[i] === "]") return -1;
  for (let n = 0; ; n++) {
    if (n === index) return i;
    i = skipWs(t, skipValue(t, i));
    if (t[i] === "]") return -1;
    i = skipWs(t, i + 1);
  }
}
/** Drops insignificant whitespace; numbers keep their exact digits. */
function compact(t: string): string {
  let out = "";
  for (let i = 0; i < t.length; ) {
    if (t[i] === '"') {
      const e = skipString(t, i);
      out += t.slice(i, e);
      i = e;
    } else {
      if (!isWs(t[i])) out += t[i];
      i++;
    }
  }
  return out;
}

/**
 * Picks `field` out of a secret whose value is a JSON object (numeric keys also index arrays). A
 * string comes back as its UTF-8 bytes; any other JSON value as compact JSON with numbers exactly as
 * stored. Throws VaultError("invalid_request") naming the field, never showing the value.
 */
export function extractField(value: SecretBytes, field: string): SecretBytes {
  const keys = fieldKeys(field);
  const where = `field ${JSON.stringify(field)}`;
  let t: string;
  try {
    t = new TextDecoder("utf-8", { fatal: true }).decode(value.expose());
    JSON.parse(t);
  } catch {
    // Never pass the parse error on: its message quotes the value.
    throw new VaultError(
      "invalid_request",
      `the secret's value is not JSON, so ${where} cannot be picked out of it: store a JSON object, or drop the field from the reference`,
    );
  }
  let i = skipWs(t, 0);
  for (let n = 0; n < keys.length; n++) {
    const key = keys[n]!;
    const path = n === 0 ? "the top level" : JSON.stringify(keys.slice(0, n).map((k) => k.replaceAll(".", "\\.")).join("."));
    const c = t[i];
    let next = -1;
    if (c === "{") next = member(t, i, key);
    else if (c === "[") next = /^(?:0|[1-9][0-9]{0,8})$/.test(key) ? element(t, i, Number(key)) : -1;
    else
      throw new VaultError(
        "invalid_request",
        `${where} cannot be picked out: the value at ${path} is not a JSON object or array`,
      );
    if (next < 0)
      throw new VaultError("invalid_request", `${where} is not in the secret's value: nothing named ${JSON.stringify(key)} at ${path}`);
    i = next;
  }
  const raw = t.slice(i, skipValue(t, i));
  return SecretBytes.from(raw.startsWith('"') ? (JSON.parse(raw) as string) : compact(raw));
}
