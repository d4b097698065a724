/** Plain aligned text tables for listings (two spaces between columns, no borders). */
import { terminalSafe } from "./terminal-safe.js";

/**
 * Lays out `rows` under `headers`; the last column is not padded. Every cell is escaped first
 * (src/cli/format/terminal-safe.ts): a cell is one line, so a line break, ESC or bidi character in
 * stored text shows as `\x0a`, `\x1b`, `\u202e` and can neither forge a row nor drive the terminal.
 */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string[] {
  const safeRows = rows.map((r) => r.map(terminalSafe));
  const widths = headers.map((h, i) => Math.max(h.length, ...safeRows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(headers.map(terminalSafe)), ...safeRows.map(line)];
}

/** A list as short text: "a, b, c", or "-" when empty or null. */
export function list(items: readonly string[] | null | undefined): string {
  return items === null || items === undefined || items.length === 0 ? "-" : items.join(",");
}
