/**
 * Entry point of the `lessor` command. `lessor --version` answers before anything else loads; every
 * other command loads the command tree (src/cli/program.ts).
 */
import { VERSION } from "../version.js";

// `lessor … | head` closes the pipe early: that is not an error, so end quietly instead of crashing.
for (const stream of [process.stdout, process.stderr])
  stream.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code === "EPIPE") process.exit(process.exitCode ?? 0);
    throw e;
  });

const args = process.argv.slice(2);
if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) {
  process.stdout.write(`${VERSION}\n`);
} else {
  const { main } = await import("./program.js");
  main();
}
