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
import { escapeUnsafe, safeJson } from "../../base/text.js";

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
