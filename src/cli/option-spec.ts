/**
 * A command's options, declared once and read by both parsers of the CLI: commander (the full
 * command tree, with help and error messages) and the start-up fast path (src/cli/fast-path.ts),
 * which parses the hot commands with Node's own `util.parseArgs` so it need not load commander.
 *
 * The fast path takes an argument list only when parseArgs accepts it strictly and it has the
 * exact shape it expects; anything else (help, a typo, an unusual form) goes to commander, which
 * parses it again and prints its usual help or error. So for any input the fast path handles, both
 * parsers must agree — test/cli-fast-path.test.ts checks that they do.
 */
import { parseArgs } from "node:util";
import type { Command } from "commander";
import { collect } from "./format/options.js";

/** One option: `--name <value>` (or a flag when `value` is absent). */
export interface OptionSpec {
  /** The long name without dashes, e.g. `max-uses`. */
  name: string;
  /** The value's placeholder, e.g. `<n>`; absent for a boolean flag. */
  value?: `<${string}>`;
  description: string;
  required?: boolean;
  /** May be given more than once; the values are collected in order (undefined when not given). */
  repeat?: boolean;
}

/** Options of the root command, accepted before or after a command's name. */
export const GLOBAL_OPTIONS: readonly OptionSpec[] = [{ name: "home", value: "<dir>", description: "the lessor home (default: $LESSOR_HOME or ~/.lessor)" }];

/** Parsed option values by commander's key (camelCase): string, string[] or true. */
export type OptionValues = Record<string, string | string[] | boolean | undefined>;

/** The key commander gives an option: `max-uses` → `maxUses`. */
export function optionKey(name: string): string {
  return name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** Adds the options to a commander command. */
export function addOptions(cmd: Command, specs: readonly OptionSpec[]): Command {
  for (const s of specs) {
    const flags = s.value ? `--${s.name} ${s.value}` : `--${s.name}`;
    if (s.required) cmd.requiredOption(flags, s.description);
    else if (s.repeat) cmd.option(flags, s.description, collect);
    else cmd.option(flags, s.description);
  }
  return cmd;
}

/** What {@link parseStrict} returns: options by commander key, and the positional arguments. */
export interface Parsed {
  options: OptionValues;
  positionals: string[];
  /** Positionals given after `--` (parseArgs keeps them in `positionals` too, after the others). */
  afterDashes: string[];
}

/**
 * Parses `args` (after the command name) with util.parseArgs, strictly: null for anything it
 * refuses (an unknown option, `-h`/`--help` included, so commander prints help), for a missing
 * required option and for a repeated single-value option. Options not given are undefined, as with
 * commander.
 */
export function parseStrict(args: readonly string[], specs: readonly OptionSpec[], globals: readonly OptionSpec[]): Parsed | null {
  const all = [...specs, ...globals];
  const config: Record<string, { type: "string" | "boolean"; multiple: boolean }> = {};
  for (const s of all) config[s.name] = { type: s.value ? "string" : "boolean", multiple: true };
  let parsed;
  try {
    parsed = parseArgs({ args: [...args], options: config, strict: true, allowPositionals: true, tokens: true });
  } catch {
    return null;
  }
  const options: OptionValues = {};
  for (const s of all) {
    const got = parsed.values[s.name] as (string | boolean)[] | undefined;
    // commander reads a flag `--no-x` as option `x`: true unless the flag is given.
    const negated = !s.value && s.name.startsWith("no-");
    const key = optionKey(negated ? s.name.slice(3) : s.name);
    if (negated) options[key] = got === undefined;
    else if (s.repeat) options[key] = got as string[] | undefined;
    else if (got !== undefined && got.length > 1) return null; // commander keeps the last; be conservative
    else options[key] = got?.[0];
    if (s.required && options[key] === undefined) return null;
  }
  // `--agent=x` and `--agent x` both arrive as tokens; an inline value for a flag is refused above.
  const term = parsed.tokens.findIndex((t) => t.kind === "option-terminator");
  const positionals: string[] = [];
  const afterDashes: string[] = [];
  parsed.tokens.forEach((t, i) => {
    if (t.kind === "positional") (term >= 0 && i > term ? afterDashes : positionals).push(t.value);
  });
  return { options, positionals, afterDashes };
}
