/**
 * The `lessor` bin as built (dist/bin/lessor.cjs; src/cli/entry.ts says what it does). For `lease`
 * and `run` it runs the fast-path bundle (dist/bin/main.cjs, from src/cli/fast-path.ts) from the V8
 * code cache the build made beside it (dist/bin/main.cache), so a start does not parse and compile
 * the bundle's functions again; a missing or unusable cache (another Node version, another build of
 * main.cjs) only costs that time, as V8 compiles as usual. Everything else runs the command tree
 * (dist/bin/full.cjs, from src/cli/full.ts) the same way, from its own cache (dist/bin/full.cache).
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
  return loadBundle(__dirname, "main");
}

/** Runs dist/bin/full.cjs (the command tree, src/cli/full.ts) from its code cache, once. */
let full: typeof import("./full.js") | undefined;
async function loadFull(): Promise<typeof import("./full.js")> {
  full ??= loadBundle<typeof import("./full.js")>(__dirname, "full");
  return full;
}

runCli(process.argv.slice(2), {
  fast: (args) => loadFastPath().fastPath(args, process.env, loadFull),
  program: loadFull,
});
