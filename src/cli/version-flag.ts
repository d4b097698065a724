/**
 * `lessor --version` (or `-V`) is lessor's own version only when it comes before any command, after
 * nothing but global options (`--home DIR`). After a command name it is that command's business:
 * `lessor secret get NAME --version 2` asks for version 2 of a secret, and must never print lessor's
 * version and exit 0 — which commander does for a program-level `.version()` flag found anywhere.
 * So the program declares no such flag; both entry points ask this instead.
 */

/** True when `args` (the arguments after the script) ask for lessor's version. */
export function asksVersion(args: readonly string[]): boolean {
  let i = 0;
  // Global options that may precede the command (src/cli/option-spec.ts GLOBAL_OPTIONS; kept literal
  // here so that `lessor --version` loads nothing more).
  while (i < args.length) {
    if (args[i] === "--home") i += 2;
    else if (args[i]!.startsWith("--home=")) i += 1;
    else break;
  }
  return args[i] === "--version" || args[i] === "-V";
}
