/**
 * How policy load errors are worded: every message names the file, the rule and the field, says what
 * was expected and what was found (briefly: never a dump of the file), and for an unknown key
 * suggests the nearest known one.
 */
import { VaultError } from "../../base/errors.js";

/** `s`, cut to `max` characters with "…" when longer. */
export function clip(s: string, max = 60): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

/** `s` clipped and JSON-quoted, for messages. */
export function quote(s: string, max = 60): string {
  return JSON.stringify(clip(s, max));
}

/** A short description of a found value, for "got ..." (never a huge dump). */
export function describe(v: unknown): string {
  if (typeof v === "string") return quote(v);
  if (typeof v === "number" || typeof v === "boolean" || typeof v === "bigint") return String(v);
  if (v instanceof Date) return `a date (${clip(String(v.toISOString?.() ?? v), 40)})`;
  if (Array.isArray(v)) {
    if (v.length === 0) return "an empty list";
    if (v.length > 8) return `a list of ${v.length} items`;
    // Item by item, each string quoted whole (clipped inside its quotes), so that withheldQuotes()
    // finds every one.
    const items: string[] = [];
    let size = 2;
    for (const item of v) {
      const one = typeof item === "string" ? quote(item, 24) : Array.isArray(item) ? "[…]" : describe(item);
      if (size + one.length > 80) {
        items.push("…");
        break;
      }
      items.push(one);
      size += one.length + 2;
    }
    return `[${items.join(", ")}]`;
  }
  if (v !== null && typeof v === "object") return "a table";
  return String(v);
}

/**
 * A policy load error as the audit trail, the logs and a broken policy's refusals hold it: every
 * quoted text withheld (`"…"`) but the names of fields and rules and a "did you mean" key. A value
 * pasted into the file by mistake is quoted in the error `lessor policy check` and `lessor policy
 * reload` show the admin, never kept in the trail.
 */
export function withheldQuotes(message: string): string {
  return message.replace(/(: field |rule \d+ \(|did you mean )?"(?:[^"\\]|\\.)*"/g, (m: string, keep: string | undefined) => (keep !== undefined ? m : '"…"'));
}

/** Edit distance, for "did you mean" hints on unknown keys (keys are short). */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

/** An unknown key in `where`, with the nearest allowed one when it is close. */
export function unknownKey(where: string, key: string, allowed: readonly string[], what: string): VaultError {
  const lower = key.toLowerCase();
  const near = allowed.find((k) => k === lower || distance(lower, k) <= 2);
  const hint = near === undefined ? "" : ` (did you mean "${near}"?)`;
  return new VaultError(
    "policy_invalid",
    `${where}: unknown ${what} ${quote(key, 40)}${hint}; expected one of: ${allowed.join(", ")}`,
  );
}

/** A problem with one field of a table. */
export function fieldError(where: string, field: string, detail: string): VaultError {
  return new VaultError("policy_invalid", `${where}: field "${field}": ${detail}`);
}

/** A field of the wrong type or form: what was expected, and what was found. */
export function expected(where: string, field: string, what: string, got: unknown): VaultError {
  return fieldError(where, field, `expected ${what}, got ${describe(got)}`);
}

/** `rule 2 ("claude-github")`: how messages and decisions name a rule. */
export function ruleLabel(index: number, name: string): string {
  return `rule ${index} (${JSON.stringify(name)})`;
}
