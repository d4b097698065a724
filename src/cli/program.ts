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
import { addOptions, GLOBAL_OPTIONS } from "./option-spec.js";

const cli = new Cli((home) => import("./backend.js").then((m) => m.openBackend(home ? { home } : {})));
const program = new Command()
  .name("lessor")
  .description("A credential vault for AI agents: encrypted secrets lent out through leases.")
  .version(VERSION)
  .showSuggestionAfterError()
  .exitOverride()
  .configureOutput({ outputError: (s, write) => write(s.startsWith("error:") ? `lessor: ${s.slice(7)}` : s) })
  .hook("preAction", (cmd) => {
    cli.home = cmd.optsWithGlobals<{ home?: string }>().home;
  });

addOptions(program, GLOBAL_OPTIONS);
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
