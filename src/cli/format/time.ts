/** Times for people and for --json: ISO 8601 text, "in 4m59s" / "3m ago", and --since/--until parsing. */
import { UsageError } from "../cli.js";
import { formatDuration, parseDuration } from "../../vault/duration.js";

/** Epoch ms as ISO 8601 UTC text; null stays null. */
export function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

/** Epoch ms as local-free UTC text for tables: "2025-01-31 14:05:09Z". */
export function shortTime(ms: number): string {
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d{3}Z$/, "Z");
}

/** How far `ms` is from `now`, to the second: "in 14m59s", "3m2s ago", "now". */
export function relative(ms: number, now = Date.now()): string {
  const d = Math.round((ms - now) / 1000) * 1000;
  if (d === 0) return "now";
  return d > 0 ? `in ${formatDuration(d)}` : `${formatDuration(-d)} ago`;
}

/**
 * Reads a --since/--until value: a duration back from now ("90s", "1h", "2d") or an ISO 8601 date or
 * time ("2025-01-31", "2025-01-31T14:00:00Z"). Throws UsageError naming the option, for a day the month
 * does not have ("2025-02-30") too.
 */
export function parseTimeOption(option: string, text: string, now = Date.now()): number {
  if (/^\d/.test(text) && /[dhms]$/.test(text) && !/[-:T]/.test(text)) {
    try {
      return now - parseDuration(text);
    } catch {
      // fall through to the message below
    }
  }
  const ymd = /^(\d{4})-(\d{2})-(\d{2})/.exec(text);
  if (ymd) {
    const t = Date.parse(text);
    // Date.parse rolls a day the month does not have over into the next ("2025-02-30" is 2025-03-02):
    // the written day must exist in the written month.
    const [y, m, d] = [Number(ymd[1]), Number(ymd[2]), Number(ymd[3])];
    if (Number.isFinite(t) && m >= 1 && m <= 12 && d >= 1 && d <= new Date(Date.UTC(y, m, 0)).getUTCDate()) return t;
  }
  throw new UsageError(
    `${option} ${JSON.stringify(text.slice(0, 40))} is not a time: give a duration back from now such as "1h" or "2d", or an ISO date such as "2025-01-31T14:00:00Z"`,
  );
}
