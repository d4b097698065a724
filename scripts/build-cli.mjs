// Bundles the CLI with esbuild (code splitting) so a command loads only the modules it needs.
// Output: dist/bin/lessor.js (the `lessor` bin) and its chunks.
import { build } from "esbuild";

const { rmSync } = await import("node:fs");
rmSync("dist/bin", { recursive: true, force: true });

const result = await build({
  entryPoints: { lessor: "src/cli/main.ts" },
  outdir: "dist/bin",
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20",
  // Pure-JS dependencies are bundled (fewer files to resolve and read at start-up); native addons and
  // pino (which loads worker files by path) stay external and resolve from node_modules.
  external: ["better-sqlite3", "@node-rs/argon2", "pino"],
  sourcemap: true,
  legalComments: "none",
  // The shebang for the bin, and a `require` for the bundled CommonJS dependencies (commander) in ESM.
  banner: { js: '#!/usr/bin/env node\nimport { createRequire as __lessorRequire } from "node:module";\nconst require = __lessorRequire(import.meta.url);' },
  chunkNames: "chunks/[name]-[hash]",
  logLevel: "warning",
  metafile: true,
});

// npm makes bins executable when it links them; do it here too for direct runs from a checkout.
const { chmodSync } = await import("node:fs");
chmodSync("dist/bin/lessor.js", 0o755);
if (process.env.LESSOR_BUILD_ANALYZE) {
  const { analyzeMetafile } = await import("esbuild");
  console.log(await analyzeMetafile(result.metafile));
}
