/**
 * Lease terms: the built-in defaults, the hard ceiling, and reading ttl / max_ttl / max_uses /
 * renewable / max_renewals from `[defaults]` or a rule over the terms it inherits.
 */
import { formatDuration, parseDuration } from "../duration.js";
import { readBool, readInt, type Table } from "./fields.js";
import { describe, expected, fieldError } from "./messages.js";
import type { LeaseTerms } from "./types.js";

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** Terms used when neither the rule nor `[defaults]` says otherwise. */
export const BUILTIN_TERMS: Readonly<LeaseTerms> = Object.freeze({
  ttlMs: 15 * MINUTE,
  maxTtlMs: 24 * HOUR,
  maxUses: null,
  renewable: true,
  maxRenewals: null,
});

/** No ttl or max_ttl may exceed this, however it is written. */
export const MAX_TTL_CEILING_MS = 30 * DAY;

/** The keys that set lease terms, in `[defaults]` and in allow rules. */
export const TERM_KEYS = ["ttl", "max_ttl", "max_uses", "renewable", "max_renewals"] as const;

/** Where each inherited term comes from, for messages. */
export type Origins = Record<"ttl" | "max_ttl", string>;

/** A duration such as "15m", at most {@link MAX_TTL_CEILING_MS}. */
function readDuration(t: Table, key: string, where: string): number | undefined {
  const v = t[key];
  if (v === undefined) return undefined;
  const what = 'a duration such as "15m" or "1h"';
  if (typeof v !== "string") throw expected(where, key, what, v);
  let ms: number;
  try {
    ms = parseDuration(v);
  } catch {
    throw fieldError(
      where,
      key,
      `expected ${what} (a positive number and a unit d, h, m, s or ms, largest first, e.g. "1h30m"), got ${describe(v)}`,
    );
  }
  if (ms > MAX_TTL_CEILING_MS)
    throw fieldError(where, key, `${formatDuration(ms)} is above the hard ceiling of 30d; use at most "30d"`);
  return ms;
}

/** Reads ttl/max_ttl/max_uses/renewable/max_renewals from `t` over `base`. */
export function readTerms(t: Table, where: string, base: LeaseTerms, origins: Origins): LeaseTerms {
  const ttl = readDuration(t, "ttl", where);
  const maxTtl = readDuration(t, "max_ttl", where);
  const terms: LeaseTerms = {
    ttlMs: ttl ?? base.ttlMs,
    maxTtlMs: maxTtl ?? base.maxTtlMs,
    maxUses: readInt(t, "max_uses", where, 1) ?? base.maxUses,
    renewable: readBool(t, "renewable", where) ?? base.renewable,
    maxRenewals: readInt(t, "max_renewals", where, 0) ?? base.maxRenewals,
  };
  if (terms.ttlMs > terms.maxTtlMs) {
    const t1 = formatDuration(terms.ttlMs);
    const t2 = formatDuration(terms.maxTtlMs);
    if (ttl !== undefined)
      throw fieldError(
        where,
        "ttl",
        `ttl ${t1} is longer than max_ttl ${t2}${maxTtl === undefined ? ` (from ${origins.max_ttl})` : ""}; lower ttl or raise max_ttl`,
      );
    throw fieldError(
      where,
      "max_ttl",
      `max_ttl ${t2} is shorter than the ttl ${t1} from ${origins.ttl}; also set a ttl of at most ${t2} here`,
    );
  }
  return Object.freeze(terms);
}
