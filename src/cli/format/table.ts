/** Plain aligned text tables for listings (two spaces between columns, no borders). */

/** Lays out `rows` under `headers`; the last column is not padded. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string[] {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(headers), ...rows.map(line)];
}

/** A list as short text: "a, b, c", or "-" when empty or null. */
export function list(items: readonly string[] | null | undefined): string {
  return items === null || items === undefined || items.length === 0 ? "-" : items.join(",");
}
