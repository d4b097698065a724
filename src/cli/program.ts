/**
 * The lessor command tree. Command groups live in src/cli/commands/, one file each, and load their
 * heavy modules (the vault, SQLite, the client) only when they run, so start-up stays fast; the build
 * bundles this with esbuild code splitting (scripts/build-cli.mjs).
 */
import { Command, CommanderError } from "commander";
import { Cli } from "./cli.js";
import { EXIT } from "./exit-codes.js";
import { VERSION } from "../version.js";
import * as commands from "./commands/index.js";

const cli = new Cli();
const program = new Command()
  .name("lessor")
  .description("A credential vault for AI agents: encrypted secrets lent out through leases.")
  .version(VERSION)
  .option("--home <dir>", "the lessor home (default: $LESSOR_HOME or ~/.lessor)")
  .showSuggestionAfterError()
  .exitOverride()
  .configureOutput({ outputError: (s, write) => write(s.startsWith("error:") ? `lessor: ${s.slice(7)}` : s) })
  .hook("preAction", (cmd) => {
    cli.home = cmd.optsWithGlobals<{ home?: string }>().home;
  });

for (const register of Object.values(commands)) register(program, cli);

/** Parses process.argv and runs the command. */
export function main(): void {
  program.parseAsync().catch((e: unknown) => {
    if (e instanceof CommanderError) {
      // --help and --version end here with code 0; usage mistakes were already printed.
      process.exitCode = e.exitCode === 0 ? EXIT.ok : EXIT.usage;
      return;
    }
    process.exitCode = cli.fail(e);
  });
}
