// Bundles the CLI with esbuild (code splitting) so a command loads only the modules it needs.
// Output: dist/bin/lessor.js (the `lessor` bin) and its chunks. Dependencies stay external.
import { build } from "esbuild";

await build({
  entryPoints: { lessor: "src/cli/main.ts" },
  outdir: "dist/bin",
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20",
  packages: "external",
  sourcemap: true,
  legalComments: "none",
  chunkNames: "chunks/[name]-[hash]",
  logLevel: "warning",
});

// npm makes bins executable when it links them; do it here too for direct runs from a checkout.
const { chmodSync } = await import("node:fs");
chmodSync("dist/bin/lessor.js", 0o755);
