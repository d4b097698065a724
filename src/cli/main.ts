/**
 * Entry point of the `lessor` command when run from a checkout with tsx (`node --import tsx
 * src/cli/main.ts …`). The built bin is src/cli/bin.ts; both go through src/cli/entry.ts.
 */
import { runCli } from "./entry.js";

runCli(process.argv.slice(2), {
  fast: (args) => import("./fast-path.js").then((m) => m.fastPath(args, process.env, () => import("./open-backend.js"))),
  program: () => import("./program.js"),
});
