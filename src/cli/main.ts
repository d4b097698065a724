/**
 * Entry point of the `lessor` command. `lessor --version` answers before anything else loads;
 * `lessor lease` and `lessor run` against a running daemon take the start-up fast path
 * (src/cli/fast-path.ts); every other command loads the command tree (src/cli/program.ts).
 *
 * The build (scripts/build-cli.mjs) makes this file a small CommonJS bundle with the fast path in
 * it, and the command tree a separate ES-module build it imports on demand; under tsx it runs as is.
 */
import { writeSync } from "node:fs";
import { VERSION } from "../version.js";
import { EXIT } from "./exit-codes.js";

const args = process.argv.slice(2);
if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) {
  // Written straight to fd 1: setting up process.stdout would cost more than the rest of this path.
  try {
    writeSync(1, `${VERSION}\n`);
  } catch {
    // a closed stdout (`| true`) is not an error here
  }
} else {
  // `lessor … | head` closes the pipe early: that is not an error, so end quietly instead of crashing.
  for (const stream of [process.stdout, process.stderr])
    stream.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "EPIPE") process.exit(process.exitCode ?? 0);
      throw e;
    });
  const fast = args[0] === "lease" || args[0] === "run" ? import("./fast-path.js").then((m) => m.fastPath(args)) : Promise.resolve(false);
  void fast
    .then(async (done) => {
      if (!done) (await import("./program.js")).main();
    })
    .catch((e: unknown) => {
      process.stderr.write(`lessor: internal error: ${e instanceof Error ? e.message : String(e)} (this is a bug; please report it)\n`);
      process.exitCode = EXIT.internal;
    });
}
