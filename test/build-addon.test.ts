/**
 * The install script (scripts/build-addon.mjs) builds the peer-credential addon on a fresh machine
 * with no network and no npm configuration, and when it cannot, says so loudly on stderr.
 * Each run works on a copy of the files the published package holds, with HOME pointing at an empty
 * directory so no node-gyp cache helps.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { loadPeerCred } from "../src/native/peercred.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const LINUX = process.platform === "linux";

/** A temp dir removed after the test file (no vault needed here, so not helpers.ts's). */
function tempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** The files of native/peercred that package.json ships (its `files`). */
function shippedAddonFiles(): string[] {
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { files: string[] };
  return pkg.files.filter((f) => f.startsWith("native/peercred/"));
}

/** A copy of what `npm install` of the package has at install time (only what it ships), and an empty HOME. */
function freshCopy(): { repo: string; home: string; addon: string } {
  const base = tempDir("lessor-addon-");
  const repo = join(base, "repo");
  for (const f of ["package.json", "scripts/build-addon.mjs", ...shippedAddonFiles()]) {
    mkdirSync(join(repo, f, ".."), { recursive: true });
    copyFileSync(join(root, f), join(repo, f));
  }
  const home = join(base, "home");
  mkdirSync(home);
  return { repo, home, addon: join(repo, "native", "peercred", "build", "Release", "peercred.node") };
}

/** The environment without any npm setting (npm_config_nodedir above all), with `extra` added. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k)) env[k] = v;
  // Should anything still try to download, it goes to a closed loopback port.
  return { ...env, http_proxy: "http://127.0.0.1:9", https_proxy: "http://127.0.0.1:9", npm_config_proxy: "http://127.0.0.1:9", ...extra };
}

/** True if this process may run a command in a new network namespace with no interfaces up. */
const unshare = LINUX ? spawnSync("sh", ["-c", "command -v unshare"], { encoding: "utf8" }).stdout.trim() : "";
const canUnshareNet = unshare !== "" && spawnSync(unshare, ["-n", "true"]).status === 0;

/** Runs the script with node, in an empty network namespace when possible. */
function runScript(repo: string, env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const cmd = [process.execPath, join(repo, "scripts", "build-addon.mjs")];
  const [file, ...args] = canUnshareNet ? [unshare, "-n", ...cmd] : cmd;
  return new Promise((resolve, reject) => {
    const child = spawn(file!, args, { cwd: repo, env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

test("package.json's install script is the build script, and the package ships it", () => {
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { scripts: Record<string, string>; files: string[] };
  assert.equal(pkg.scripts["install"], "node scripts/build-addon.mjs");
  for (const f of ["scripts/build-addon.mjs", "native/peercred/binding.gyp", "native/peercred/peercred.c"]) assert.ok(pkg.files.includes(f), f);
  // Every source of the addon and of the sandbox bridge's helper is shipped (the build needs them all).
  const sources = readdirSync(join(root, "native", "peercred")).filter((n) => /\.(c|h|gyp)$/.test(n));
  assert.ok(sources.includes("netbridge.c") && sources.includes("handoff.c"), sources.join(", "));
  for (const n of sources) assert.ok(pkg.files.includes(`native/peercred/${n}`), `native/peercred/${n} is not in package.json's files`);
});

test("the install script builds the addon with npm_config_nodedir unset, an empty HOME and no network", { skip: LINUX ? false : "the addon is built on Linux only" }, async () => {
  const { repo, home, addon } = freshCopy();
  const r = await runScript(repo, cleanEnv({ HOME: home }));
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /WARNING/, r.stderr);
  assert.match(r.stdout, /built the peer-credential addon/);
  assert.match(r.stdout, /Node headers from the prefix of /, "the headers of the running Node were found locally");
  assert.ok(existsSync(addon));
  assert.ok(existsSync(join(dirname(addon), "lessor-netbridge")), "the sandbox bridge's helper is built beside it");
  const pc = loadPeerCred({ addonPath: addon });
  assert.equal(pc.available, true, pc.available ? "" : pc.reason);
  assert.deepEqual(readdirSync(home), [], "nothing was downloaded or cached under HOME");
});

test("an npm_config_nodedir without headers is noted and the running Node's headers are used instead", { skip: LINUX ? false : "the addon is built on Linux only" }, async () => {
  const { repo, home, addon } = freshCopy();
  const r = await runScript(repo, cleanEnv({ HOME: home, npm_config_nodedir: join(home, "no-headers-here") }));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /npm_config_nodedir=\S+no-headers-here has no include\/node\/node_api\.h; looking elsewhere/);
  assert.ok(existsSync(addon), r.stderr);
});

test("when the build fails (no make or C compiler on PATH), install still succeeds and warns loudly with the consequence and the fix", { skip: LINUX ? false : "the addon is built on Linux only" }, async () => {
  const { repo, home, addon } = freshCopy();
  const bin = join(home, "..", "bin");
  mkdirSync(bin);
  symlinkSync(process.execPath, join(bin, "node"));
  const python = spawnSync("python3", ["-c", "import sys; print(sys.executable)"], { encoding: "utf8" }).stdout.trim();
  if (python !== "") symlinkSync(python, join(bin, "python3"));
  const r = await runScript(repo, cleanEnv({ HOME: home, PATH: bin }));
  assert.equal(r.code, 0, "the addon is optional: install goes on");
  assert.equal(existsSync(addon), false);
  const lines = r.stderr.split("\n").filter((l) => l.startsWith("lessor: "));
  assert.ok(lines.length >= 10, `a warning of many lines on stderr, got:\n${r.stderr}`);
  const text = r.stderr;
  assert.match(text, /WARNING: lessor's peer-credential addon \(native\/peercred\) is NOT available/);
  assert.match(text, /Why: the build failed/);
  assert.match(text, /cannot tell which local user connects/, "names the consequence");
  assert.match(text, /refuses to start otherwise/);
  assert.match(text, /apt-get install python3 make gcc/, "names the fix");
  assert.ok(text.includes(`node ${join(repo, "scripts", "build-addon.mjs")}`), "gives the command to run again");
  assert.match(text, /The build said:\n(.*\n)*.*make/, "shows what went wrong");
  assert.doesNotMatch(r.stdout, /built the peer-credential addon/);
});
