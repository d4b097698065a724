/**
 * The V8 code caches of the CLI's CommonJS bundles (dist/bin/main.cjs, the fast path; run.cjs,
 * `lessor run`; run-proxy.cjs and run-vault-session.cjs, parts of it only some runs need; see
 * src/cli/bin.ts and scripts/build-cli.mjs): made by the build,
 * read by {@link loadBundle}. The build ends a bundle with a random build id
 * (`//# lessor-build=<id>`); its cache file (`<name>.cache` beside `<name>.cjs`) is that id on one
 * line, then V8's data. V8 itself checks little more than the source's length, so the id is what
 * keeps a cache from running with another build of the bundle.
 *
 * A cache is trusted as much as the bundle it sits beside: both are written by the build into the
 * package's own directory, never into a shared or temporary one.
 */
import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { Script } from "node:vm";

/** The CommonJS wrapper the bundle runs in; the bin and the build must use the same one. */
export function wrapCommonJs(source: string): string {
  return `(function (exports, require, module, __filename, __dirname) {${source}\n})`;
}

const MARK = "\n//# lessor-build=";

/** The build id a bundle ends with, or undefined. */
export function buildIdOf(source: string): string | undefined {
  const at = source.lastIndexOf(MARK);
  const id = at < 0 ? "" : source.slice(at + MARK.length).trim();
  return /^[0-9a-f]{32}$/.test(id) ? id : undefined;
}

/** The V8 data of `cache` when it was made for this build of `source`, else undefined. */
export function cachedDataFor(cache: Buffer, source: string): Buffer | undefined {
  const nl = cache.indexOf(10);
  if (nl !== 32) return undefined;
  const id = buildIdOf(source);
  return id !== undefined && cache.subarray(0, nl).toString("latin1") === id ? cache.subarray(nl + 1) : undefined;
}

/**
 * Runs the CommonJS bundle `<dir>/<name>.cjs` from its code cache (`<name>.cache`) and returns its
 * exports; a missing or unusable cache (another Node version, another build) only costs the compile.
 * No import() may run inside such a bundle: Node 20 loses the dynamic-import hook of a script built
 * from a code cache (the build turns the bundles' import() into require).
 */
export function loadBundle<T>(dir: string, name: string): T {
  const file = join(dir, `${name}.cjs`);
  const source = readFileSync(file, "utf8");
  let cachedData: Buffer | undefined;
  try {
    cachedData = cachedDataFor(readFileSync(join(dir, `${name}.cache`)), source);
  } catch {
    // no cache: compile as usual
  }
  const script = new Script(wrapCommonJs(source), { filename: file, ...(cachedData ? { cachedData } : {}) });
  const mod = { exports: {} as T };
  (script.runInThisContext() as (...a: unknown[]) => void)(mod.exports, createRequire(file), mod, file, dir);
  return mod.exports;
}

/**
 * Ends the bundle `file` with a new build id, compiles it, runs its top level (what every start runs:
 * the bundled modules' own code, such as building the protocol's schemas) and writes its cache to
 * `out`. The cache holds the functions that ran, compiled; the rest stay for V8 to compile lazily
 * when a command needs them. A cache of every function (V8's --no-lazy) was four times the size
 * and took longer to read and deserialise than the compiling it saved.
 */
export function writeCodeCache(file: string, out: string): void {
  const id = randomBytes(16).toString("hex");
  const source = `${readFileSync(file, "utf8").trimEnd()}${MARK}${id}\n`;
  writeFileSync(file, source);
  const script = new Script(wrapCommonJs(source), { filename: file });
  const path = resolve(file);
  const mod = { exports: {} };
  (script.runInThisContext() as (...a: unknown[]) => void)(mod.exports, createRequire(path), mod, path, dirname(path));
  writeFileSync(out, Buffer.concat([Buffer.from(`${id}\n`, "latin1"), script.createCachedData()]));
}
