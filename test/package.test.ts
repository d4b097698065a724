/** Keeps the package, the docs and the layering true to the code. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { ERROR_CODES, wireCode } from "../src/base/errors.js";
import { VERSION } from "../src/version.js";
import { checkLayering, formatViolation, layerOf, parseRules, readSources } from "./layering.js";

const root = fileURLToPath(new URL("..", import.meta.url));

test("VERSION matches package.json", () => {
  assert.equal(VERSION, (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string }).version);
});

test("docs/errors.md lists every error code with its wire code", () => {
  const doc = readFileSync(join(root, "docs/errors.md"), "utf8");
  for (const code of Object.keys(ERROR_CODES) as (keyof typeof ERROR_CODES)[])
    assert.match(doc, new RegExp(`\\| \`${code}\` \\|.*\\| \`${wireCode(code)}\` \\|`), code);
});

const architecture = (): string => readFileSync(join(root, "docs/architecture.md"), "utf8");

test("every import under src/ follows the layers of docs/architecture.md", () => {
  const violations = checkLayering(parseRules(architecture()), readSources(root), root);
  assert.deepEqual(violations.map(formatViolation), [], `imports against docs/architecture.md:\n${violations.map(formatViolation).join("\n")}`);
});

test("the layering check catches an adapter imported by the core", () => {
  const sources = readSources(root);
  const leases = sources.get("src/vault/leases.ts")!;
  sources.set("src/vault/leases.ts", `import "../store/sqlite/sqlite-store.js";\n${leases}`);
  const found = checkLayering(parseRules(architecture()), sources, root).map(formatViolation);
  assert.ok(found.includes("src/vault/leases.ts:1 → ../store/sqlite/sqlite-store.js (layer core may not import layer store)"), found.join("\n"));
  // The closure rule names the path, and what the store brings with it.
  assert.ok(found.some((v) => v.startsWith("src/vault/leases.ts:1 → ../store/sqlite/sqlite-store.js (the core imports no adapter: it may not reach src/store/sqlite/sqlite-store.ts")), found.join("\n"));
});

test("the layering check sees type-only, dynamic, re-exported and required imports, and I/O built-ins", () => {
  const rules = parseRules(architecture());
  const planted: [string, string, string][] = [
    ["src/vault/secrets.ts", 'import type { Store } from "../store/memory.js";', "layer core may not import layer store"],
    ["src/vault/secrets.ts", 'export { createMemoryStore } from "../store/memory.js";', "layer core may not import layer store"],
    ["src/vault/secrets.ts", 'const m = () => import("../config/load.js");', "layer core may not import layer config"],
    ["src/vault/secrets.ts", 'type T = typeof import("../server/server.js");', "layer core may not import layer server"],
    ["src/vault/secrets.ts", 'import { readFileSync } from "fs";', "layer core may not import node:fs"],
    ["src/vault/secrets.ts", 'const n = require("node:net");', "layer core may not import node:net"],
    ["src/vault/secrets.ts", "const x = (s: string) => import(s);", "an import() of a computed name cannot be checked"],
    ["src/base/ids.ts", 'import "../vault/vault.js";', "layer base may not import layer core"],
    ["src/store/memory.ts", 'import "../config/load.js";', "layer store may not import layer config"],
    ["src/client/index.ts", 'import "../server/server.js";', "layer client may not import layer server"],
    ["src/protocol/messages.ts", 'import type { Vault } from "../vault/vault.js";', "layer protocol may not import layer core"],
  ];
  for (const [file, line, rule] of planted) {
    const sources = readSources(root);
    sources.set(file, `${line}\n${sources.get(file)!}`);
    const found = checkLayering(rules, sources, root).map(formatViolation);
    assert.ok(found.some((v) => v.startsWith(`${file}:1 → `) && v.includes(`(${rule}`)), `${file}: ${line}\nexpected (${rule}), got:\n${found.join("\n")}`);
  }
  // An exception whose reason starts "Type only" covers `import type` of that file, never a runtime import.
  const withException = { layers: rules.layers, exceptions: [{ file: "src/protocol/messages.ts", target: "src/vault/vault.ts", why: "Type only: a test", typeOnly: true }] };
  const typed = readSources(root);
  typed.set("src/protocol/messages.ts", `import type { Vault } from "../vault/vault.js";\n${typed.get("src/protocol/messages.ts")!}`);
  assert.ok(!checkLayering(withException, typed, root).some((v) => v.file.startsWith("src/protocol/messages.ts")));
  typed.set("src/protocol/messages.ts", `import "../vault/vault.js";\n${typed.get("src/protocol/messages.ts")!}`);
  const untyped = checkLayering(withException, typed, root).map(formatViolation);
  assert.ok(untyped.includes("src/protocol/messages.ts:1 → ../vault/vault.js (layer protocol may not import layer core (its exception covers type imports only))"), untyped.join("\n"));
  // The core's closure: a crypto file (which the core imports) reaching node:fs breaks the core too.
  const sources = readSources(root);
  sources.set("src/crypto/aead.ts", `import "node:fs";\n${sources.get("src/crypto/aead.ts")!}`);
  const found = checkLayering(rules, sources, root).map(formatViolation);
  assert.ok(found.some((v) => v.startsWith("src/crypto/aead.ts:1 → node:fs (the core does no I/O: it may not reach node:fs; via src/vault/")), found.join("\n"));
  // lessor/client's runtime closure: loading the store through an allowed-looking file is caught.
  const client = readSources(root);
  client.set("src/crypto/secret-bytes.ts", `import "../store/sqlite/sqlite-store.js";\n${client.get("src/crypto/secret-bytes.ts")!}`);
  const got = checkLayering(rules, client, root).map(formatViolation);
  assert.ok(got.some((v) => v.includes("(the client never loads layer store at runtime; via src/client/index.ts → ")), got.join("\n"));
});

test("the layer table parses: every src folder has a layer, every named layer exists", () => {
  const { layers } = parseRules(architecture());
  for (const name of ["base", "crypto", "audit", "core", "store", "protocol", "server", "client", "config", "cli"]) assert.ok(layers.some((l) => l.name === name), name);
  for (const dir of readdirSync(join(root, "src"), { withFileTypes: true }).filter((e) => e.isDirectory()))
    assert.ok(layerOf(layers, `src/${dir.name}/x.ts`) !== null, `src/${dir.name}/ has no row in the layer table of docs/architecture.md`);
});

test("package.json exports lessor, lessor/client, lessor/vault and lessor/server from what npm run build compiles", () => {
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { exports: Record<string, { types: string; import: string } | string> };
  const entries: Record<string, string> = { ".": "src/index.ts", "./client": "src/client/index.ts", "./vault": "src/vault/index.ts", "./server": "src/server/index.ts" };
  for (const [subpath, src] of Object.entries(entries)) {
    const e = pkg.exports[subpath];
    assert.ok(e !== undefined && typeof e === "object", `exports["${subpath}"]`);
    // tsc -p tsconfig.json compiles src/ to dist/ (rootDir src): src/x/index.ts → dist/x/index.js and .d.ts.
    const out = `./dist/${src.slice("src/".length).replace(/\.ts$/, "")}`;
    assert.deepEqual(e, { types: `${out}.d.ts`, import: `${out}.js` }, subpath);
    assert.ok(readdirSync(join(root, src, "..")).includes("index.ts"), src);
  }
});

/** What importing `module` in a fresh process loads of native code (see test/fixtures/load-probe.mjs). */
function nativeLoads(module: string): { dlopened: string[]; cjs: string[]; mapped: string[] | null } {
  const r = spawnSync(process.execPath, ["--import", "tsx", join(root, "test/fixtures/load-probe.mjs"), join(root, module)], { cwd: root, encoding: "utf8", timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  const got = JSON.parse(r.stdout) as { dlopened: string[]; cjs: string[]; mapped: string[] | null };
  const native = /node_modules\/(better-sqlite3|@node-rs\/argon2)/;
  return { dlopened: got.dlopened, cjs: got.cjs.filter((f) => native.test(f)), mapped: got.mapped };
}

test("importing lessor/client or lessor/vault loads no native module (no SQLite, no argon2, no addon)", () => {
  const none = { dlopened: [], cjs: [], mapped: process.platform === "linux" ? [] : null };
  for (const entry of ["src/client/index.ts", "src/vault/index.ts"]) assert.deepEqual(nativeLoads(entry), none, entry);
  // The probe sees them when they are loaded: the SQLite store loads better-sqlite3; a passphrase key source, argon2's addon.
  assert.ok(nativeLoads("src/store/sqlite/sqlite-store.ts").cjs.some((f) => f.includes("/better-sqlite3/")));
  const argon2 = nativeLoads("src/crypto/keys/passphrase.ts");
  assert.ok(argon2.dlopened.some((f) => /argon2.*\.node$/.test(f)), JSON.stringify(argon2));
  if (process.platform === "linux") assert.ok(argon2.mapped!.some((f) => /argon2.*\.node$/.test(f)), JSON.stringify(argon2));
});

test("dependencies are pinned to exact versions", () => {
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as Record<string, Record<string, string>>;
  for (const deps of [pkg.dependencies, pkg.devDependencies])
    for (const [name, v] of Object.entries(deps ?? {})) assert.match(v, /^\d+\.\d+\.\d+$/, `${name}@${v}`);
  assert.match(readFileSync(join(root, ".npmrc"), "utf8"), /engine-strict=true/);
});

test("the README and docs never show a leased value expanded into another command's arguments (ps shows argv to every user)", () => {
  const files = ["README.md", ...readdirSync(join(root, "docs")).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`), ...readdirSync(join(root, "docs/cli")).map((f) => `docs/cli/${f}`)];
  for (const f of files) {
    const lines = readFileSync(join(root, f), "utf8").split("\n");
    let inCode = false;
    lines.forEach((line, i) => {
      if (line.trimStart().startsWith("```")) inCode = !inCode;
      if (!inCode) return; // prose may quote the mistake; examples in code blocks may not make it
      // `X=$(lessor lease …)` only sets a variable; `cmd "…$(lessor lease …)…"` hands the value to cmd's argv.
      const bad = /\b(curl|wget|http|gh|git|ssh|docker|psql|mysql)\b[^|#]*\$\(lessor (lease|secret get)/.test(line);
      assert.ok(!bad, `${f}:${i + 1} puts a value on a command line: ${line.trim()}`);
    });
  }
});

test("the README's program example runs as written (its home in a temporary directory, its fetch recorded instead of sent)", () => {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const block = /In a program:\s*```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  assert.ok(block, "the README has a TypeScript example after 'In a program:'");
  const dir = mkdtempSync(join(tmpdir(), "lessor-readme-"));
  try {
    const home = join(dir, "home");
    const script = [
      'const token = "ghp_READMEexample0123456789abcdefghijklmn";',
      "const sent: unknown[] = [];",
      "const fetch = async (url: string, init: unknown) => void sent.push({ url, init }); // no packet leaves",
      block.replaceAll("/home/me/.lessor", home).replace('from "lessor"', `from ${JSON.stringify(join(root, "src/index.ts"))}`),
      "console.log(JSON.stringify({ sent }));",
    ].join("\n");
    const file = join(dir, "example.mts");
    writeFileSync(file, script);
    const r = spawnSync(process.execPath, ["--import", "tsx", file], { encoding: "utf8", env: { PATH: process.env.PATH, HOME: dir }, timeout: 60_000 });
    assert.equal(r.status, 0, `the example failed:\n${r.stderr}`);
    assert.match(r.stdout, /ok: true, events: 4/, r.stdout);
    const sent = JSON.parse(r.stdout.trim().split("\n").at(-1)!) as { sent: { url: string; init: { headers: { authorization: string } } }[] };
    assert.deepEqual(sent.sent.map((s) => [s.url, s.init.headers.authorization]), [["https://api.github.com/user", "Bearer ghp_READMEexample0123456789abcdefghijklmn"]]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
