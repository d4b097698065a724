/** Small readers for option values, shared by the commands. */
import { UsageError } from "../cli.js";

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
