/**
 * The encoded forms of a value an upstream may echo it in, each paired with the same form of the
 * placeholder: what the response scrubber masks besides the value as it is, and (the forms of the
 * value) what the body tripwire looks for.
 *
 * Each form is what a common encoder writes, listed once: forms equal to each other, or to the value,
 * are dropped (a token of letters and digits has only its base64 forms). The base64 forms are also
 * matched wrapped in lines (`wrapped`: the scrubber lets a line break sit between any two of their
 * characters, ./scrub-wrapped.ts), rather than listed once per break position, which would multiply
 * the automaton's states by the value's length.
 */

import { base64CorePairs } from "../base/base64-cores.js";

/** Shortest encoded form worth matching (the tripwire and the scrubber): shorter ones could occur by chance. */
export const MIN_FORM = 12;

/** One form of a value and the same form of its placeholder. */
export interface EncodedForm {
  value: string;
  placeholder: string;
  /** A base64 form: also masked when wrapped in lines (see ./scrub.ts, `SecretPattern.wrapped`). */
  wrapped?: true;
}

/** The base64 and base64url cores of `text` at each alignment (see {@link base64Cores}), short ones too. */
function cores(text: string): { b64: string; url: string }[] {
  return base64CorePairs(Buffer.from(text, "utf8"));
}

/**
 * The base64 and base64url characters that encode `text` alone, at each of the three alignments it can
 * have inside a longer encoded string (the characters that also depend on its neighbours are left
 * out): `base64("u:" + text)`, the Basic pair, holds one of them whatever `u` is.
 */
export function base64Cores(text: string): string[] {
  return cores(text)
    .flatMap((c) => [c.b64, c.url])
    .filter((c) => c.length >= MIN_FORM);
}

/**
 * `s` percent-encoded as UTF-8 (upper-case hex), leaving ASCII letters, digits and the characters of
 * `keep` as they are; a space as `+` when `plus`.
 */
function percent(s: string, keep: string, plus = false): string {
  let out = "";
  for (const b of Buffer.from(s, "utf8")) {
    const c = String.fromCharCode(b);
    if ((b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || (b < 0x80 && keep.includes(c))) out += c;
    else if (plus && b === 0x20) out += "+";
    else out += "%" + (b < 16 ? "0" : "") + b.toString(16).toUpperCase();
  }
  return out;
}

/** The percent-encoders in common use, by what each leaves as it is. */
const PERCENT: ((s: string) => string)[] = [
  // encodeURIComponent (JavaScript)
  (s) => percent(s, "-_.!~*'()"),
  // application/x-www-form-urlencoded (URLSearchParams, Java's URLEncoder)
  (s) => percent(s, "*-._", true),
  // RFC 3986 unreserved only: Python's quote(s, safe=""), PHP's rawurlencode, Go's QueryEscape (space as +)
  (s) => percent(s, "-._~"),
  (s) => percent(s, "-._~", true),
  // Python's urllib.parse.quote (safe="/" by default)
  (s) => percent(s, "-._~/"),
  // Go's url.PathEscape
  (s) => percent(s, "-._~$&+:=@"),
  // PHP's urlencode
  (s) => percent(s, "-_.", true),
  // encodeURI (JavaScript), which keeps the reserved characters
  (s) => percent(s, "-_.!~*'();/?:@&=+$,#"),
];

const lowerHex = (s: string): string => s.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());

/** The JSON string body of `s` (JSON.stringify, no quotes). */
const json = (s: string): string => JSON.stringify(s).slice(1, -1);

/**
 * `json(s)` with the characters `which` matches (and `"` when `quote`) as `\uXXXX` escapes, in upper
 * or lower case hex. Code units, so a character above U+FFFF becomes its surrogate pair.
 */
function jsonU(s: string, which: RegExp, upper: boolean, quote = false): string {
  const u = (c: string): string => {
    const hex = c.charCodeAt(0).toString(16).padStart(4, "0");
    return `\\u${upper ? hex.toUpperCase() : hex}`;
  };
  const j = quote ? json(s).replace(/\\"/g, u('"')) : json(s);
  return j.replace(which, u);
}

/** The JSON encoders in common use, beyond JSON.stringify's own. */
const JSON_FORMS: ((s: string) => string)[] = [
  json,
  (s) => json(s).replace(/\//g, "\\/"),
  // Go's encoding/json (HTML-safe by default), and in upper case hex
  (s) => jsonU(s, /[&<>\u2028\u2029]/g, false),
  (s) => jsonU(s, /[&<>\u2028\u2029]/g, true),
  // .NET's System.Text.Json (JavaScriptEncoder.Default): HTML-sensitive characters, `+` and all but ASCII
  (s) => jsonU(s, /[+<>&'`\u007f-\uffff]/g, true, true),
  // Python's json.dumps (ensure_ascii), Jackson's ESCAPE_NON_ASCII (upper case), PHP's json_encode (`\/` too)
  (s) => jsonU(s, /[\u007f-\uffff]/g, false),
  (s) => jsonU(s, /[\u007f-\uffff]/g, true),
  (s) => jsonU(s, /[\u007f-\uffff]/g, false).replace(/\//g, "\\/"),
  // Gson (HTML-safe by default)
  (s) => jsonU(s, /[<>&='\u2028\u2029]/g, false),
];

/** `s` HTML-escaped: `&`, `<`, `>` by name, the quotes (and `+` when given) as `entities` says. */
function html(s: string, entities: Record<string, string>): string {
  return s.replace(/[&<>"'+]/g, (c) => (c === "&" ? "&amp;" : c === "<" ? "&lt;" : c === ">" ? "&gt;" : (entities[c] ?? c)));
}

/** HTML escapers (an error page quoting the request), with the common entities for quotes. */
const HTML_FORMS: ((s: string) => string)[] = [
  (s) => html(s, { '"': "&quot;", "'": "&#39;" }),
  (s) => html(s, { '"': "&quot;", "'": "&#x27;" }),
  (s) => html(s, { '"': "&#34;", "'": "&#39;" }),
  (s) => html(s, { '"': "&quot;", "'": "&#039;" }),
  // Go's html/template
  (s) => html(s, { '"': "&#34;", "'": "&#39;", "+": "&#43;" }),
];

/** Text forms: each percent-encoder in both hex cases, each twice over (a URL kept in a query), and the JSON and HTML escapes. */
const TEXT_FORMS: ((s: string) => string)[] = [
  ...PERCENT.flatMap((f) => [f, (s: string) => lowerHex(f(s))]),
  // A URL holding the value, percent-encoded as a whole (a login redirect's `next=`): the value is
  // encoded twice, by the first and by the second encoder (each of encodeURIComponent and form).
  ...[PERCENT[0]!, PERCENT[1]!].flatMap((inner) =>
    [PERCENT[0]!, PERCENT[1]!].flatMap((outer) => [(s: string) => outer(inner(s)), (s: string) => outer(lowerHex(inner(s)))]),
  ),
  ...JSON_FORMS,
  ...HTML_FORMS,
];

/**
 * Encoded forms of `value`, each paired with the same form of `placeholder`, for the response
 * scrubber: see {@link TEXT_FORMS}, then base64 and base64url at each alignment (the base64 ones
 * `wrapped`). Forms equal to the value, to another form, or too short to match safely, are left out.
 */
export function encodedForms(value: string, placeholder: string): EncodedForm[] {
  const pairs = new Map<string, EncodedForm>();
  for (const f of TEXT_FORMS) {
    const v = f(value);
    if (!pairs.has(v)) pairs.set(v, { value: v, placeholder: f(placeholder) });
  }
  const cv = base64Cores(value);
  const cp = base64Cores(placeholder);
  // Both lists drop short cores alike only when lengths match: pair them by position when they do. A
  // core with no `+` or `/` is its own base64url form: it keeps the placeholder's base64 form (the
  // base64url one may hold `-` or `_`, which would spoil a base64 text).
  if (cv.length === cp.length) cv.forEach((c, i) => pairs.has(c) || pairs.set(c, { value: c, placeholder: cp[i]! }));
  // Base64 (not base64url) is what gets wrapped in lines (PEM, MIME, GitHub's blob API); the scrubber
  // matches a wrapped form only against a placeholder form of its length.
  for (const { b64 } of cores(value)) {
    const f = pairs.get(b64);
    if (f && f.placeholder.length === b64.length) f.wrapped = true;
  }
  pairs.delete(value);
  return [...pairs.values()].filter((f) => f.value.length >= MIN_FORM);
}
