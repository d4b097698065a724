/**
 * What the CLI prints is safe for a terminal. Text from the vault (audit reasons, agent ids, secret
 * names, descriptions, token names, error messages) may have been written by an agent, by an older
 * version that let anything through, or by another tool writing to the same database: before it is
 * printed, every control character (C0 such as ESC, DEL, C1 such as CSI U+009B), every invisible or
 * bidirectional formatting character (U+202E, U+2066, U+200B, …) and every line or paragraph separator
 * is shown as a visible escape (`\x1b`, `\x9b`, `\u202e`), so none can move the cursor, clear the
 * screen, set the clipboard (OSC 52), forge a line or reorder what is read.
 *
 * JSON output (--json) is for programs; JSON.stringify already escapes C0, and {@link jsonText}
 * escapes the rest as `\uXXXX` too, so the same value parses back and a person who prints it to a
 * terminal is safe as well.
 */
import { isUtf8 } from "node:buffer";
import { codePointName, escapeUnsafe, hasUnsafeText, safeJson } from "../../base/text.js";

/** `s` with every unsafe character as a visible escape (see src/base/text.ts). */
export function terminalSafe(s: string): string {
  return escapeUnsafe(s);
}

/** Multi-line text with each line escaped as {@link terminalSafe} does (the line breaks are kept). */
export function escapeLines(s: string): string {
  return s.split("\n").map(terminalSafe).join("\n");
}

/** JSON text of `value` (indented by `indent`) with no raw control, bidi or invisible character. */
export function jsonText(value: unknown, indent?: number): string {
  return safeJson(value, indent);
}

/**
 * What in `bytes` a terminal would obey rather than show, described without quoting it, or null:
 * bytes that are not UTF-8 (a lone 0x9b is CSI to a terminal not in UTF-8 mode), or a character
 * src/base/text.ts calls unsafe (controls, C1, bidi and invisible ones) other than tab and line feed.
 * Read one character at a time, so the value never becomes one JavaScript string.
 */
export function unsafeForTerminal(bytes: Uint8Array): string | null {
  if (!isUtf8(bytes)) return "bytes that are not UTF-8 text";
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i]!;
    const n = b < 0x80 ? 1 : b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
    let cp = n === 1 ? b : b & (0xff >> (n + 1));
    for (let k = 1; k < n; k++) cp = (cp << 6) | (bytes[i + k]! & 0x3f);
    i += n;
    if (cp === 0x09 || cp === 0x0a) continue;
    const ch = String.fromCodePoint(cp);
    if (hasUnsafeText(ch)) return `a control or invisible character (${codePointName(ch)})`;
  }
  return null;
}
