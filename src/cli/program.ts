/**
 * The lessor command tree. Command groups live in src/cli/commands/, one file each, and load their
 * heavy modules (the vault, SQLite, the client) only when they run, so start-up stays fast; the build
 * bundles this with esbuild code splitting (scripts/build-cli.mjs).
 */
import { Command, CommanderError, Help, Option } from "commander";
import { Cli, UsageError } from "./cli.js";
import { EXIT } from "./exit-codes.js";
import { VERSION } from "../version.js";
import * as commands from "./commands/index.js";
import { addOptions, GLOBAL_OPTIONS } from "./option-spec.js";
import { escapeLines } from "./format/terminal-safe.js";
import { redactOptionValues } from "./format/redact-options.js";
import { asksVersion } from "./version-flag.js";

const cli = new Cli((home, opts) => import("./open-backend.js").then((m) => m.openCliBackend(home || undefined, opts)));
const program = new Command()
  .name("lessor")
  .description("A credential vault for AI agents: encrypted secrets lent out through leases.")
  .showSuggestionAfterError()
  .exitOverride()
  // Commander's messages quote the command line; each of their lines is escaped as cli.err escapes,
  // and what a mistyped option carried is hidden (it may be a value or a token).
  .configureOutput({ outputError: (s, write) => write(escapeLines(redactOptionValues(s.startsWith("error:") ? `lessor: ${s.slice(7)}` : s, { argv: process.argv.slice(2), longFlags: longFlags() }))) })
  .hook("preAction", (cmd) => {
    const o = cmd.optsWithGlobals<{ home?: string; token?: string }>();
    if (o.token !== undefined) throw new UsageError(TOKEN_ON_ARGV);
    cli.home = o.home;
  });

addOptions(program, GLOBAL_OPTIONS);
// A token on the command line shows in `ps` to every local user and stays in shell history, so
// there is no such option; this hidden one only refuses it with what to do instead.
const TOKEN_ON_ARGV =
  "lessor takes no token on the command line (other users see it in ps, and shell history keeps it); put it in a file only you can read (chmod 600) and set LESSOR_TOKEN_FILE to its path, with LESSOR_ADDR or LESSOR_SOCKET. If you typed a real token here, ask for a new one";
program.addOption(new Option("--token <token>").hideHelp());
// No commander .version(): it would take `--version` after any command too, so `secret get NAME
// --version 2` printed lessor's version. The entry points answer it before a command only
// (src/cli/version-flag.ts); the root's help still lists it.
const versionOption = new Option("-V, --version", "output the version number (before any command)");
program.configureHelp({
  visibleOptions(cmd) {
    const options = Help.prototype.visibleOptions.call(this, cmd);
    return cmd === program ? [versionOption, ...options] : options;
  },
});
for (const register of Object.values(commands)) register(program, cli);

/** Every long option of the program (what a glued value may follow: src/cli/format/redact-options.ts). */
function longFlags(): Set<string> {
  const out = new Set<string>(["--help", "--version"]);
  const walk = (c: Command): void => {
    for (const o of c.options) if (o.long !== undefined) out.add(o.long);
    for (const sub of c.commands) walk(sub);
  };
  walk(program);
  return out;
}

/** Parses process.argv and runs the command. */
export function main(): void {
  if (asksVersion(process.argv.slice(2))) {
    process.stdout.write(`${VERSION}\n`);
    return;
  }
  program.parseAsync().catch((e: unknown) => {
    if (e instanceof CommanderError) {
      // --help ends here with code 0; usage mistakes were already printed.
      process.exitCode = e.exitCode === 0 ? EXIT.ok : EXIT.usage;
      return;
    }
    process.exitCode = cli.fail(e);
  });
}
