// Bundles the CLI with esbuild into dist/bin, in two parts, so a command loads only what it needs:
//
//   dist/bin/lessor.cjs     the `lessor` bin (src/cli/bin.ts): answers --version, else runs main.cjs
//                           from V8's code cache (main.cache, made here), so no start compiles it;
//   dist/bin/main.cjs       the fast path for `lease` and `run` against a running daemon
//                           (src/cli/fast-path.ts), a small CommonJS bundle (CommonJS starts faster
//                           than an ES module);
//   dist/bin/run.cjs, dist/bin/run-proxy.cjs, dist/bin/run-vault-session.cjs
//                           `lessor run`, and parts of it that only some runs need, each with its own
//                           code cache, loaded from main.cjs when a command needs it (below);
//   dist/bin/full.cjs       the whole command tree (src/cli/full.ts: src/cli/program.ts), run by the
//                           entry from its own code cache when the fast path does not apply; its
//                           commands' heavy modules run only when a command imports them.
//   dist/bin/docker-credential-lessor.cjs
//                           docker's credential helper bin: `lessor docker-credential ACTION`
//                           through lessor.cjs (written below, not bundled).
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { chmodSync, rmSync, writeFileSync } from "node:fs";

rmSync("dist/bin", { recursive: true, force: true });

const common = {
  bundle: true,
  platform: "node",
  target: "node20",
  // Pure-JS dependencies are bundled (fewer files to resolve and read at start-up); native addons and
  // pino (which loads worker files by path) stay external and resolve from node_modules.
  external: ["better-sqlite3", "@node-rs/argon2", "pino"],
  sourcemap: true,
  legalComments: "none",
  logLevel: "warning",
  metafile: true,
};

// Code that only some commands need is in bundles of its own, each loaded from its own code cache
// (<name>.cache) as main.cjs is from its: an import of one becomes a module that runs it through
// src/cli/code-cache.ts's loadBundle. `lessor run` itself (the sandbox, the child's environment: half
// of the fast path, which `lease` never needs), and in it the proxy (CA, x509, http2: more than the
// rest together) only for a proxied run, and the vault session (a protocol server and the session
// relay) only for --vault-session. A value crossing bundles keeps its type: VaultError and SecretBytes
// are recognised by a brand, not by which copy of the class made them.
const APART = [
  // [importer, import specifier, bundle]
  [/src\/cli\/fast-path\.ts$/, "./run/run.js", "run"],
  [/src\/cli\/commands\/run\.ts$/, "../run/run.js", "run"],
  [/src\/cli\/run\/run\.ts$/, "./proxy.js", "run-proxy"],
  [/src\/cli\/run\/run\.ts$/, "./vault-session.js", "run-vault-session"],
];
const bundlesApart = {
  name: "bundles-apart",
  setup(b) {
    b.onResolve({ filter: /^\.\.?\/(run\/run|proxy|vault-session)\.js$/ }, (a) => {
      const hit = APART.find(([importer, spec]) => spec === a.path && importer.test(a.importer));
      return hit ? { path: hit[2], namespace: "lessor-apart" } : undefined;
    });
    b.onLoad({ filter: /.*/, namespace: "lessor-apart" }, (a) => ({
      contents: `module.exports = require("./src/cli/code-cache.ts").loadBundle(__dirname, ${JSON.stringify(a.path)});`,
      loader: "js",
      resolveDir: process.cwd(),
    }));
  },
};

// zod's classic API and its core re-export every locale's messages (`z.locales`, ~210 KB, a third of
// main.cjs); lessor uses only the English messages zod configures by default (its own locales/en.js),
// so the bundles get an empty module in place of the index of the others: less to read, compile and
// deserialise at every start.
const noZodLocales = {
  name: "no-zod-locales",
  setup(b) {
    b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (a) =>
      /[\\/]zod[\\/]v4[\\/](classic[\\/]external|core[\\/]index)\.js$/.test(a.importer) ? { path: "zod-locales", namespace: "lessor-empty" } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: "lessor-empty" }, () => ({ contents: "export {};", loader: "js" }));
  },
};

// The CommonJS bundles run from a code cache (src/cli/code-cache.ts): whitespace and syntax minified
// (names stay, for stack traces: a third less source to read and hash at every start, and a smaller
// cache to deserialise). CommonJS has no import.meta: modules that locate files from their own URL
// (the native addons' loaders) get the bundle's URL instead. No import() may run in them (a script
// run from a cache cannot import()): those they have become requires of their own modules, and those
// of the bundles apart loadBundle calls (above).
const fastCjs = {
  ...common,
  minifyWhitespace: true,
  minifySyntax: true,
  outdir: "dist/bin",
  format: "cjs",
  outExtension: { ".js": ".cjs" },
  supported: { "dynamic-import": false },
  plugins: [bundlesApart, noZodLocales],
  define: { "import.meta.url": "__lessorImportMetaUrl" },
  banner: { js: 'var __lessorImportMetaUrl = require("node:url").pathToFileURL(__filename).href;' },
};

const parts = await build({ ...fastCjs, entryPoints: { run: "src/cli/run/run.ts", "run-proxy": "src/cli/run/proxy.ts", "run-vault-session": "src/cli/run/vault-session.ts" } });
const fast = await build({ ...fastCjs, entryPoints: { main: "src/cli/fast-path.ts" } });

// The bin starts as a shell script that re-runs it as `node -- lessor.cjs ARGS` (to JavaScript the
// second line is a string and a comment): without the `--`, Node 20 reads a script's own
// `--env-file F` argument as its option (nodejs/node#54232; see src/cli/bin.ts).
const entry = await build({
  ...common,
  entryPoints: { lessor: "src/cli/bin.ts" },
  outdir: "dist/bin",
  format: "cjs",
  outExtension: { ".js": ".cjs" },
  // import.meta.url as in main.cjs: the entry makes the process non-dumpable through the addon, which
  // it finds from its own URL (src/native/no-dump.ts).
  define: { "import.meta.url": "__lessorImportMetaUrl" },
  banner: { js: `#!/bin/sh\n':' //; exec node -- "$0" "$@"\nvar __lessorImportMetaUrl = require("node:url").pathToFileURL(__filename).href;` },
});

// The command tree: one CommonJS bundle run from a code cache, as main.cjs is. As ES modules with code
// splitting (what it was), every command paid for Node's ES module loader (resolving and linking each
// chunk) and compiled its chunks anew, since Node 20 keeps no code cache for them: a third of an
// in-process command such as `lessor secret list`. Each command's heavy modules (the vault, the
// stores, the MCP server) are still run only when it imports them (the import() becomes a require of a
// module of the bundle); `lessor run` is run.cjs, as from main.cjs.
const tree = await build({ ...fastCjs, entryPoints: { full: "src/cli/full.ts" } });

// The code caches of the CommonJS bundles, made with the Node that will run them (a cache from
// another version is ignored at run time, costing only the compile it would have saved).
const cached = [parts, fast, tree].flatMap((r) => Object.keys(r.metafile.outputs).filter((f) => f.endsWith(".cjs")));
execFileSync(
  process.execPath,
  ["--import", "tsx", "-e", 'import("./src/cli/code-cache.ts").then((m) => { for (const f of process.argv.slice(1)) m.writeCodeCache(f, f.replace(/\\.cjs$/, ".cache")); })', ...cached],
  { stdio: "inherit" },
);
// docker-credential-lessor: docker runs a credential helper by that name (docker-credential-<name>),
// so it is a bin of its own; it is `lessor docker-credential ACTION` through the same entry
// (src/cli/credentials/docker-credential.ts), with the same shell preamble as lessor.cjs.
writeFileSync(
  "dist/bin/docker-credential-lessor.cjs",
  `#!/bin/sh\n':' //; exec node -- "$0" "$@"\n// docker's credential helper: runs \`lessor docker-credential ACTION\` (see docs/cli/credential-helpers.md).\nprocess.argv.splice(2, 0, "docker-credential");\nrequire("./lessor.cjs");\n`,
);
// npm makes bins executable when it links them; do it here too for direct runs from a checkout.
chmodSync("dist/bin/lessor.cjs", 0o755);
chmodSync("dist/bin/docker-credential-lessor.cjs", 0o755);
if (process.env.LESSOR_BUILD_ANALYZE) {
  const { analyzeMetafile } = await import("esbuild");
  console.log(await analyzeMetafile(fast.metafile));
  console.log(await analyzeMetafile(entry.metafile));
  console.log(await analyzeMetafile(tree.metafile));
}
