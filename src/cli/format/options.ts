/** Small readers for option values, shared by the commands. */
import { UsageError } from "../cli.js";

/** A positive whole number from an option, or a UsageError naming the option. */
export function positiveInt(option: string, text: string): number {
  if (!/^\d{1,9}$/.test(text) || Number(text) < 1)
    throw new UsageError(`${option} takes a whole number of at least 1, got ${JSON.stringify(text.slice(0, 20))}`);
  return Number(text);
}

/** Commander reducer for an option that may be repeated: collects the values in order. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}
