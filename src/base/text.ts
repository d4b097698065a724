/**
 * Text that people will read: what is safe to store and show, and how to show the rest. Agents are
 * untrusted, and what they write (reasons, names, hosts, paths) ends up in the audit trail, in error
 * messages and in `lessor` output on an admin's terminal. A control character there can drive the
 * terminal (ESC sequences: clear the screen, rewrite lines, set the clipboard with OSC 52), and a
 * bidirectional override or an invisible character can make the text read as something else.
 *
 * The rule (docs/errors.md, docs/audit.md): such characters are **refused** in every identifier and
 * in free text (reasons, descriptions), and **escaped** wherever text is shown, so that old rows and
 * rows from other writers cannot drive a terminal either.
 */
import { VaultError } from "./errors.js";

/**
 * The characters that are never stored in text and never shown raw:
 * - `Cc`: C0 controls (U+0000–U+001F, including ESC, CR, LF and TAB), DEL (U+007F) and the C1 controls
 *   (U+0080–U+009F, among them CSI U+009B and OSC U+009D, which some terminals obey as ESC [ and ESC ]);
 * - `Cf`: format characters: the bidirectional marks, embeddings, overrides and isolates (U+061C,
 *   U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), zero-width characters (U+200B–U+200D, U+2060),
 *   the soft hyphen, the BOM, and the invisible tag characters (U+E0001–U+E007F);
 * - `Cs`: a lone surrogate (a UTF-16 half that is no character at all);
 * - `Zl`, `Zp`: the Unicode line and paragraph separators (U+2028, U+2029).
 */
const UNSAFE = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/u;
const UNSAFE_ALL = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/gu;
/**
 * The unsafe characters JSON.stringify leaves raw: all but C0 (which it escapes inside strings, and
 * which outside strings is only the whitespace of indented output).
 */
const JSON_UNSAFE = /[\u007f-\u009f\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/u;
const JSON_UNSAFE_ALL = /[\u007f-\u009f\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/gu;

/** True when `s` holds a character that is not safe to store or show as is (see {@link UNSAFE}). */
export function hasUnsafeText(s: string): boolean {
  return UNSAFE.test(s);
}

/** `U+001B`: how messages name a character. */
export function codePointName(ch: string): string {
  return `U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}`;
}

/** The first unsafe character of `s` and where it is (0-based, in UTF-16 units), or null. */
export function firstUnsafe(s: string): { char: string; index: number } | null {
  const m = UNSAFE.exec(s);
  return m === null ? null : { char: m[0], index: m.index };
}

/** The visible escape of one unsafe character: `\x1b`, `\x9b`, `\u202e`, `\u{e0041}`. */
function escapeChar(ch: string): string {
  const cp = ch.codePointAt(0)!;
  if (cp <= 0xff) return `\\x${cp.toString(16).padStart(2, "0")}`;
  if (cp <= 0xffff) return `\\u${cp.toString(16).padStart(4, "0")}`;
  return `\\u{${cp.toString(16)}}`;
}

/**
 * `s` with every unsafe character replaced by a visible escape (`\x1b`, `\u202e`): the result holds no
 * control, format or separator character, so it cannot drive a terminal or reorder what is shown.
 * Everything else, backslashes included, is kept as it is, so the escapes are for reading: the exact
 * text is in JSON output.
 */
export function escapeUnsafe(s: string): string {
  return UNSAFE.test(s) ? s.replace(UNSAFE_ALL, escapeChar) : s;
}

/**
 * `s` with every unsafe character replaced by a space: for a note a person typed into a form (which
 * may hold a line break, a tab or U+2028 pasted along), kept as one line of plain text that
 * {@link checkPlainText} accepts, rather than refused after they pressed the button.
 */
export function blankUnsafe(s: string): string {
  return UNSAFE.test(s) ? s.replace(UNSAFE_ALL, " ") : s;
}

/**
 * `s` clipped to `max` characters and quoted as a JSON string, with unsafe characters escaped: the
 * way messages quote a value they were given. JSON.stringify alone leaves DEL, C1 controls and bidi
 * characters raw.
 */
export function quoteText(s: string, max = 80): string {
  const clipped = s.length > max ? `${s.slice(0, max)}…` : s;
  return escapeJsonUnsafe(JSON.stringify(clipped));
}

/** The JSON `\uXXXX` escape of one character (a whole astral character becomes its two halves). */
function jsonEscape(ch: string): string {
  let out = "";
  for (let i = 0; i < ch.length; i++) out += `\\u${ch.charCodeAt(i).toString(16).padStart(4, "0")}`;
  return out;
}

/**
 * JSON text with every unsafe character that JSON.stringify left raw (DEL, C1, bidi, format and
 * separator characters, which can only be inside strings) written as a `\uXXXX` escape. It parses
 * back to the same value, and holds no byte a terminal acts on.
 */
export function escapeJsonUnsafe(json: string): string {
  return JSON_UNSAFE.test(json) ? json.replace(JSON_UNSAFE_ALL, jsonEscape) : json;
}

/** `JSON.stringify(value, null, indent)` with {@link escapeJsonUnsafe} applied: for output and log files. */
export function safeJson(value: unknown, indent?: number): string {
  return escapeJsonUnsafe(JSON.stringify(value, null, indent));
}

/**
 * Checks free text an agent or a person supplies (a revocation reason, a description): a string of at
 * most `max` characters with no unsafe character, so one line of plain text. `what` names it in the
 * message ("a revocation reason"). Throws VaultError("invalid_request") naming the character and where
 * it is, never echoing the text.
 */
export function checkPlainText(s: unknown, what: string, max: number): string {
  if (typeof s !== "string") throw new VaultError("invalid_request", `${what} must be text (a string)`);
  if (s.length > max) throw new VaultError("invalid_request", `${what} must be at most ${max} characters; it has ${s.length}`);
  const bad = firstUnsafe(s);
  if (bad !== null)
    throw new VaultError(
      "invalid_request",
      `${what} must be one line of plain text, but it has ${describeUnsafe(bad.char)} at character ${bad.index + 1}; remove control characters (such as ESC or a line break) and invisible or bidirectional formatting characters (such as U+202E)`,
    );
  return s;
}

/**
 * Checks that an identifier-like string (a host, an HTTP method, a path) holds no unsafe character,
 * before anything else looks at it, so that no message or audit row ever carries one. `what` names it
 * ("the domain"). Throws VaultError("invalid_request"); other checks of its form come after.
 */
export function checkNoUnsafe(s: string, what: string): string {
  const bad = firstUnsafe(s);
  if (bad !== null)
    throw new VaultError(
      "invalid_request",
      `${what} has ${describeUnsafe(bad.char)} at character ${bad.index + 1}; control characters and invisible or bidirectional formatting characters are not allowed`,
    );
  return s;
}

/** "the control character U+001B", "the invisible formatting character U+202E", … */
export function describeUnsafe(ch: string): string {
  const name = codePointName(ch);
  if (/\p{Cc}/u.test(ch)) return `the control character ${name}`;
  if (/[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/u.test(ch)) return `the bidirectional formatting character ${name}`;
  if (/\p{Cf}/u.test(ch)) return `the invisible formatting character ${name}`;
  if (/\p{Cs}/u.test(ch)) return `a lone surrogate (${name})`;
  return `the line or paragraph separator ${name}`;
}

/** True when `s` has a UTF-16 surrogate without its pair (JSON can say "\ud800"; UTF-8 cannot). */
export function hasLoneSurrogate(s: string): boolean {
  return /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
}

/**
 * Refuses a secret value given as text with a lone surrogate, which UTF-8 cannot hold: it would be
 * stored as U+FFFD, a value other than the one given.
 */
export function checkTextValue(value: string): void {
  if (hasLoneSurrogate(value))
    throw new VaultError("invalid_request", "the secret value has an unpaired UTF-16 surrogate, which UTF-8 cannot hold (it would be stored altered); send the bytes instead (base64)");
}
