/** Hiding what a mistyped option carried in commander's error messages. */

/** What {@link redactOptionValues} knows of the command line it redacts the errors of. */
export interface RedactContext {
  /** The arguments as typed (process.argv without node and the script). */
  argv: readonly string[];
  /** Every long option of the program (`--value`, `--agent`, …). */
  longFlags: ReadonlySet<string>;
}

/**
 * Commander echoes an unknown option whole (`unknown option '--valeu=VALUE'`, `'-vVALUE'`, then at most
 * an unquoted "(Did you mean …)" line), and what it echoes may carry a secret value or a token, with
 * quotes and line breaks of its own: everything up to the last quote is judged, and only what is
 * certainly an option's name is shown.
 * - `--name=…`: what follows "=" is hidden.
 * - `--knownVALUE` (a value glued to a long option, its "=" forgotten): shown as `--known…`, the longest
 *   long option of the program it starts with (before any "=" too).
 * - another `--name` with no "=": shown when commander found a near option to suggest (it is then a
 *   typo of one, within 3 edits) or when it has the shape of an option's name (lower-case words joined
 *   by "-", at most {@link MAX_SHOWN_NAME} characters: `--sekret-flag`), else hidden as `--…`, since it
 *   may be a typo with a value glued on (`--valeuGhp_…`; a value of lower-case letters and digits short
 *   enough to pass as a name is the one form still shown).
 * - `-xVALUE`: shown as `-x…` when it is a whole argument as typed; else it is what is left of a group
 *   whose first letters were known flags (`-fVALUE` with `-f` a flag leaves `-VALUE`), and its first
 *   letter may be the value's: shown as `-…`.
 * Without a context nothing is known to be typed whole: `-…`, and `--…` unless suggested.
 */
export function redactOptionValues(s: string, ctx?: RedactContext): string {
  const m = /(unknown option )'(-[\s\S]*)'/.exec(s);
  if (m === null) return s.replace(/'(--?[^'=\s]+)=[\s\S]*'/, "'$1=…'");
  const flag = m[2]!;
  const rest = s.slice(m.index + m[0].length);
  const suggested = /^\n\(Did you mean /.test(rest) && !rest.slice(1).includes("'");
  return `${s.slice(0, m.index)}${m[1]}'${shownFlag(flag, suggested, ctx)}'${rest}`;
}

/** The longest unknown long option shown by its shape alone (lessor's own are shorter). */
const MAX_SHOWN_NAME = 32;

function shownFlag(flag: string, suggested: boolean, ctx: RedactContext | undefined): string {
  if (flag.startsWith("--")) {
    const eq = flag.indexOf("=");
    const name = eq < 0 ? flag : flag.slice(0, eq);
    let known = "";
    for (const f of ctx?.longFlags ?? []) if (name.startsWith(f) && f.length > known.length) known = f;
    if (known !== "" && known !== name) return `${known}…`;
    if (!/^--[A-Za-z0-9][A-Za-z0-9-]*$/.test(name)) return "--…";
    if (eq >= 0) return `${name}=…`;
    return known === name || suggested || (name.length <= MAX_SHOWN_NAME && /^--[a-z][a-z0-9]*(?:-[a-z0-9]+)*$/.test(name)) ? name : "--…";
  }
  if (ctx?.argv.includes(flag) !== true || !/^-[A-Za-z0-9]/.test(flag)) return "-…";
  return flag.length > 2 ? `${flag.slice(0, 2)}…` : flag;
}
