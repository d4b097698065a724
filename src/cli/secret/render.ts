/** Small text helpers for `lessor secret` output: times and aligned tables. */

/** An epoch-ms time as `2025-01-02T03:04:05Z`. */
export function isoTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** Formats rows as left-aligned columns separated by two spaces (the last column is not padded). */
export function table(header: string[], rows: string[][]): string[] {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? "").length)));
  return all.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd());
}

/** `label: value` lines with the values aligned. */
export function fields(pairs: [string, string][]): string[] {
  const w = Math.max(...pairs.map(([k]) => k.length)) + 1;
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(w)} ${v}`);
}
