/** Durations written as text: "500ms", "90s", "15m", "1h30m", "2d". */
import { VaultError } from "../base/errors.js";

const UNITS = [
  ["d", 86_400_000],
  ["h", 3_600_000],
  ["m", 60_000],
  ["s", 1_000],
  ["ms", 1],
] as const;

/** Units in this order, each at most once, each with up to 12 digits. */
const DURATION_RE = /^(?:(\d{1,12})d)?(?:(\d{1,12})h)?(?:(\d{1,12})m)?(?:(\d{1,12})s)?(?:(\d{1,12})ms)?$/;

function invalid(s: unknown): VaultError {
  const text = typeof s === "string" ? (s.length > 40 ? `${s.slice(0, 40)}…` : s) : String(s);
  return new VaultError(
    "invalid_request",
    `duration ${JSON.stringify(text)} is not valid: use a positive number and a unit, such as "90s", "15m", "1h30m" or "2d" (units d, h, m, s, ms, largest first)`,
  );
}

/** Parses a duration into milliseconds. It must be positive. Throws VaultError("invalid_request"). */
export function parseDuration(s: string): number {
  if (typeof s !== "string" || s.length === 0) throw invalid(s);
  const m = DURATION_RE.exec(s);
  if (m === null) throw invalid(s);
  let ms = 0;
  for (let i = 0; i < UNITS.length; i++) {
    const part = m[i + 1];
    if (part !== undefined) ms += Number(part) * UNITS[i]![1];
  }
  if (!(ms > 0) || !Number.isSafeInteger(ms)) throw invalid(s);
  return ms;
}

/** Formats milliseconds the way {@link parseDuration} reads them, largest unit first: 5400000 → "1h30m". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return String(ms);
  let rest = Math.round(Math.abs(ms));
  if (rest === 0) return "0s";
  let out = ms < 0 ? "-" : "";
  for (const [unit, size] of UNITS) {
    const n = Math.floor(rest / size);
    if (n > 0) {
      out += `${n}${unit}`;
      rest -= n * size;
    }
  }
  return out;
}
