/** Small readers for option values, shared by the commands. */
import { UsageError } from "../cli.js";
import { tryParseDomainPattern } from "../../vault/domain.js";

/** A positive whole number (at most `max`) from an option or argument, or a UsageError naming it. */
export function positiveInt(option: string, text: string, max = 999_999_999): number {
  if (!/^\d{1,16}$/.test(text) || Number(text) < 1 || Number(text) > max)
    throw new UsageError(`${option} takes a whole number from 1 to ${max}, got ${JSON.stringify(text.slice(0, 20))}`);
  return Number(text);
}

/** Commander reducer for an option that may be repeated: collects the values in order. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/**
 * Checks each `--domain` value's syntax before anything is asked, so that a typo is a usage error
 * (exit 2) naming the option, not a policy refusal (exit 3) that reads as if the grant were missing.
 */
export function checkDomains(values: readonly string[]): void {
  for (const d of values) {
    const r = tryParseDomainPattern(d);
    if (r.problem !== null) throw new UsageError(`--domain ${JSON.stringify(d.slice(0, 80))}: ${r.problem}`);
  }
}
