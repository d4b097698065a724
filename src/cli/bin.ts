/**
 * The `lessor` bin as built (dist/bin/lessor.cjs; src/cli/entry.ts says what it does). For `lease`
 * and `run` it runs the fast-path bundle (dist/bin/main.cjs, from src/cli/fast-path.ts) from the V8
 * code cache the build made beside it (dist/bin/main.cache), so a start does not parse and compile
 * the bundle's functions again; a missing or unusable cache (another Node version, another build of
 * main.cjs) only costs that time, as V8 compiles as usual. Everything else imports the command tree
 * (dist/bin/full/program.mjs).
 *
 * The build puts a two-line shell preamble on top (scripts/build-cli.mjs) that runs
 * `node -- lessor.cjs ARGS`: Node 20 takes a script's own `--env-file F` argument for its option
 * unless a `--` comes first (nodejs/node#54232), so `lessor run --env-file F` would fail with
 * "node: F: not found", or find a pipe such as `<(…)` already drained.
 */
import { loadBundle } from "./code-cache.js";
import { runCli } from "./entry.js";

/** Runs dist/bin/main.cjs (the fast path) from its code cache and returns its exports. */
function loadFastPath(): typeof import("./fast-path.js") {
  // No import() may run inside the bundle (see loadBundle), so the loaders below, in this file, do
  // every import().
  return loadBundle(__dirname, "main");
}

runCli(process.argv.slice(2), {
  fast: (args) => loadFastPath().fastPath(args, process.env, () => import("./open-backend.js")),
  program: () => import("./program.js"),
});
