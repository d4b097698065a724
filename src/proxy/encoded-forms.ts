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
import { TEXT_FORMS } from "../base/text-forms.js";
import { ScrubPatterns } from "./scrub.js";

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
  // Each core of the value is paired with the placeholder's core of the same alignment and alphabet
  // (a placeholder lengthened past a short value keeps cores the value's length drops: pairing by list
  // position, only when both lists had the same length, dropped every core of a 9-character value). A
  // core with no `+` or `/` is its own base64url form: it keeps the placeholder's base64 form (the
  // base64url one may hold `-` or `_`, which would spoil a base64 text).
  const cv = cores(value);
  const cp = cores(placeholder);
  cv.forEach((c, i) => {
    for (const k of ["b64", "url"] as const) {
      const v = c[k];
      if (v.length >= MIN_FORM && !pairs.has(v) && cp[i]![k].length > 0) pairs.set(v, { value: v, placeholder: cp[i]![k] });
    }
  });
  // A base64 core as text escapers write it: `/` as `\/` (PHP's json_encode, the default of Laravel's and
  // Symfony's JSON answers echoing an Authorization header), `+` and `/` percent-encoded in either hex
  // case (a Basic pair kept in a redirect's query).
  cv.forEach((c, i) => {
    if (c.b64.length < MIN_FORM || !/[+/]/.test(c.b64)) return;
    const p = cp[i]!.b64;
    const pct = (t: string, lower: boolean): string => t.replace(/[+/]/g, (ch) => (ch === "+" ? (lower ? "%2b" : "%2B") : lower ? "%2f" : "%2F"));
    for (const f of [(t: string) => t.replace(/\//g, "\\/"), (t: string) => pct(t, false), (t: string) => pct(t, true)]) {
      const v = f(c.b64);
      if (v !== c.b64 && !pairs.has(v)) pairs.set(v, { value: v, placeholder: f(p) });
    }
  });
  // Base64 (not base64url) is what gets wrapped in lines (PEM, MIME, GitHub's blob API); the scrubber
  // matches a wrapped form only against a placeholder form of its length.
  for (const { b64 } of cores(value)) {
    const f = pairs.get(b64);
    if (f && f.placeholder.length === b64.length) f.wrapped = true;
  }
  pairs.delete(value);
  return [...pairs.values()].filter((f) => f.value.length >= MIN_FORM);
}

/**
 * The scrubber's patterns for masking `values`: each distinct non-empty value once (the first pair
 * naming it gives the placeholder), as it is and in its {@link encodedForms}; null when there are
 * none. Throws VaultError("value_too_large") when they do not fit the scrubber's table. Shared by the
 * injecting proxy (src/proxy/lease-egress.ts) and `lessor mcp` (src/mcp/credentials.ts): many leases
 * of one secret carry one value, and the forms of a 64 KiB value are not cheap to build twice.
 */
export function maskPatterns(values: Iterable<{ value: string; placeholder: string }>): ScrubPatterns | null {
  const placeholderOf = new Map<string, string>();
  for (const { value, placeholder } of values) if (value.length > 0 && !placeholderOf.has(value)) placeholderOf.set(value, placeholder);
  const pairs = [...placeholderOf].flatMap(([value, placeholder]) => [{ value, placeholder }, ...encodedForms(value, placeholder)]);
  return pairs.length === 0 ? null : new ScrubPatterns(pairs);
}
