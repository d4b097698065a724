/**
 * Entry point of the `lessor` command. `lessor --version` answers before anything else loads; every
 * other command loads the command tree (src/cli/program.ts).
 */
import { VERSION } from "../version.js";

const args = process.argv.slice(2);
if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) {
  process.stdout.write(`${VERSION}\n`);
} else {
  const { main } = await import("./program.js");
  main();
}
