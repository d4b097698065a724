/** Keeps the package, the docs and the layering true to the code. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { ERROR_CODES, wireCode } from "../src/base/errors.js";
import { withheldReason } from "../src/sandbox/env.js";
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
  // The probe sees them when they are loaded: the SQLite store loads better-sqlite3; argon2's addon
  // (which the passphrase key source imports only when it derives a key) is seen too.
  assert.ok(nativeLoads("src/store/sqlite/sqlite-store.ts").cjs.some((f) => f.includes("/better-sqlite3/")));
  const argon2 = nativeLoads("node_modules/@node-rs/argon2/index.js");
  assert.ok(argon2.dlopened.some((f) => /argon2.*\.node$/.test(f)), JSON.stringify(argon2));
  if (process.platform === "linux") assert.ok(argon2.mapped!.some((f) => /argon2.*\.node$/.test(f)), JSON.stringify(argon2));
});

test("dependencies are pinned to exact versions", () => {
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as Record<string, Record<string, string>>;
  for (const deps of [pkg.dependencies, pkg.devDependencies])
    for (const [name, v] of Object.entries(deps ?? {})) assert.match(v, /^\d+\.\d+\.\d+$/, `${name}@${v}`);
  assert.match(readFileSync(join(root, ".npmrc"), "utf8"), /engine-strict=true/);
});

/** Shell built-ins and keywords: their arguments are in no process's argv (`printf %s "$T" | tool` shows `tool` only). */
const NO_PROCESS = new Set(["echo", "printf", "export", "read", "local", "readonly", "test", "[", ":", "set", "unset", "cd", "if", "then", "do", "while", "until"]);
/** What runs the command after it with the same arguments: look past it for the command. */
const WRAPPERS = new Set(["env", "exec", "command", "nohup", "time", "sudo", "then", "do"]);

/**
 * The variables a shell command line expands into another program's arguments, among those
 * `isSecret` names: `tool --token "$TOKEN"`, `curl -H "Authorization: Bearer $TOKEN"`, inside
 * `sh -c '…'` too. Single-quoted text expands nothing; a built-in's arguments (`printf %s "$TOKEN" |`)
 * are in no argv; nor is a variable written as a command's name or an assignment.
 */
function secretsInArgv(line: string, isSecret: (name: string) => boolean): string[] {
  const found: string[] = [];
  let text = line.replace(/\\\|/g, "|").replace(/\b(?:ba|da|z)?sh -c '([^']*)'/g, (_m, body: string) => {
    found.push(...secretsInArgv(body, isSecret));
    return "sh -c ''";
  });
  // single quotes expand nothing; a reference ($S:name, $secret://name) is no variable; nor is a comment
  text = text.replace(/'[^']*'/g, "''").replace(/\$(S:|secret:\/\/)[^\s"'`]*/g, "").replace(/(^|\s)#.*$/, "");
  for (const segment of text.split(/\|\||&&|[|;&()`]/)) {
    const words = segment.trim().split(/\s+/).filter((w) => w !== "");
    for (;;) {
      if (words.length > 0 && /^[A-Za-z_][A-Za-z0-9_]*=/.test(words[0]!)) words.shift();
      else if (words.length > 0 && WRAPPERS.has(words[0]!)) words.shift();
      else break;
    }
    const command = words.shift();
    if (command === undefined || NO_PROCESS.has(command) || command.startsWith("$")) continue;
    for (const m of words.join(" ").matchAll(/\$\{?([A-Za-z_][A-Za-z0-9_]*)/g)) if (isSecret(m[1]!)) found.push(m[1]!);
  }
  return found;
}

/** The example lines of a Markdown file: each line of a code block (with its language) and each inline code span. */
function markdownExamples(text: string): { line: number; code: string; block: string | null }[] {
  const out: { line: number; code: string; block: string | null }[] = [];
  let block: string | null = null;
  text.split("\n").forEach((line, i) => {
    const fence = /^\s*```(\S*)/.exec(line);
    if (fence) {
      block = block === null ? fence[1]! : null;
      return;
    }
    if (block !== null) out.push({ line: i + 1, code: line, block });
    else for (const m of line.matchAll(/`([^`]+)`/g)) out.push({ line: i + 1, code: m[1]!, block: null });
  });
  return out;
}

/** The text of every string in a TypeScript file (a help text's examples), each `${…}` as `…`, by line. */
function tsStrings(file: string): { line: number; code: string }[] {
  const source = ts.createSourceFile(file, readFileSync(join(root, file), "utf8"), ts.ScriptTarget.Latest, true);
  const out: { line: number; code: string }[] = [];
  const visit = (node: ts.Node): void => {
    let text: string | undefined;
    if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) text = node.text;
    else if (ts.isTemplateExpression(node)) text = node.head.text + node.templateSpans.map((s) => `…${s.literal.text}`).join("");
    if (text !== undefined) {
      const line = source.getLineAndCharacterOfPosition(node.getStart()).line + 1;
      for (const code of text.split("\n")) out.push({ line, code });
      return;
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return out;
}

const markdownFiles = (): string[] => {
  const docs = (dir: string): string[] =>
    readdirSync(join(root, dir), { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? docs(`${dir}/${e.name}`) : e.name.endsWith(".md") ? [`${dir}/${e.name}`] : []));
  return ["README.md", ...docs("docs")];
};
const cliSources = (): string[] => {
  const walk = (dir: string): string[] =>
    readdirSync(join(root, dir), { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(`${dir}/${e.name}`) : e.name.endsWith(".ts") ? [`${dir}/${e.name}`] : []));
  return walk("src/cli");
};
/** `X=$(lessor lease …)` only sets a variable; `cmd "…$(lessor lease …)…"` hands the value to cmd's argv. */
const LEASE_IN_ARGV = /\b(curl|wget|http|gh|git|ssh|docker|psql|mysql)\b[^|#]*\$\(lessor (lease|secret get)/;
/** A secret typed into the shell line itself (kept in its history): `LESSOR_PASSPHRASE=… lessor init`. */
const SECRET_TYPED = /(^|[\s;&|(])(LESSOR_PASSPHRASE|LESSOR_MASTER_KEY(_PREVIOUS)?|LESSOR_TOKEN|PGPASSWORD|MYSQL_PWD)=(?![$"'`]|\s|$)/;
const SHELL_BLOCKS = new Set(["", "sh", "bash", "shell", "console", "zsh"]);

/** Which variables hold a secret in `text`: credential names (as the sandbox reads them) and those assigned a reference or a lease. */
function secretVariables(text: string): (name: string) => boolean {
  const assigned = new Set([...text.matchAll(/\b([A-Za-z_][A-Za-z0-9_]*)=['"]?(\$S:|lessor:\/\/|\{\{ ?lessor:|\$\(lessor (lease|secret get))/g)].map((m) => m[1]!));
  return (name) => assigned.has(name) || withheldReason(name) === "credential" || /^LESSOR_(MASTER_KEY|MASTER_KEY_PREVIOUS|PASSPHRASE|TOKEN)$/.test(name);
}

test("the README, the docs and the CLI's help never show a secret expanded into another command's arguments (ps shows argv to every user) nor typed into the shell line", () => {
  const bad: string[] = [];
  for (const f of markdownFiles()) {
    const text = readFileSync(join(root, f), "utf8");
    const isSecret = secretVariables(text);
    for (const { line, code, block } of markdownExamples(text)) {
      // prose may describe the mistake in words; code (a block or an inline span) may not make it
      if (LEASE_IN_ARGV.test(code)) bad.push(`${f}:${line} puts a leased value on a command line: ${code.trim()}`);
      if (block === null || SHELL_BLOCKS.has(block))
        for (const v of secretsInArgv(code, isSecret)) bad.push(`${f}:${line} expands $${v} into a command's arguments: ${code.trim()}`);
      if (block !== null && SHELL_BLOCKS.has(block) && SECRET_TYPED.test(code)) bad.push(`${f}:${line} types a secret into the shell line: ${code.trim()}`);
    }
  }
  for (const f of cliSources()) {
    const strings = tsStrings(f);
    const isSecret = secretVariables(strings.map((s) => s.code).join("\n"));
    for (const { line, code } of strings) {
      if (LEASE_IN_ARGV.test(code)) bad.push(`${f}:${line} puts a leased value on a command line: ${code.trim()}`);
      for (const v of secretsInArgv(code, isSecret)) bad.push(`${f}:${line} expands $${v} into a command's arguments: ${code.trim()}`);
      if (SECRET_TYPED.test(code)) bad.push(`${f}:${line} types a secret into the shell line: ${code.trim()}`);
    }
  }
  assert.deepEqual(bad, []);
});

test("the argv check flags a secret expanded into a program's arguments, and passes built-ins, pipes, single quotes and assignments", () => {
  const isSecret = secretVariables("X=$S:x");
  const flagged = [
    `sh -c 'tool --token "$TOKEN"'`,
    `curl -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/user`,
    `lessor run --agent a -- bash -c 'curl -u "me:\${DB_PASSWORD}" https://x'`,
    `printf %s "$TOKEN" | tool --token "$TOKEN"`,
    `env A=1 tool --key=$X`,
    `lessor run … -- sh -c 'tool --token "$TOKEN"'`,
  ];
  for (const l of flagged) assert.notDeepEqual(secretsInArgv(l, isSecret), [], l);
  const passed = [
    `sh -c 'printf %s "$TOKEN" | tool --token-stdin'`,
    `echo "$GITHUB_TOKEN" | lessor secret set github-token --kind pat`,
    `printf 'Authorization: Bearer %s\\n' "$GITHUB_TOKEN" | curl -H @- https://api.github.com/user`,
    `GITHUB_TOKEN='$S:github-token' lessor run --agent claude -- claude`,
    `export GITHUB_TOKEN=$(lessor lease github-token --agent claude --domain api.github.com)`,
    `tool --socket "$SSH_AUTH_SOCK" --home "$HOME"`,
    `$GITHUB_TOKEN`,
    `echo '$TOKEN' | tool --x '$TOKEN'`,
    `tool   # reads $TOKEN itself`,
    `reference "x": a reference starts with "lessor://", "$S:" or "$secret://"`,
    `tool --env-file <(printf 'TOKEN=$S:tok\\n')`,
  ];
  for (const l of passed) assert.deepEqual(secretsInArgv(l, isSecret), [], l);
  assert.ok(SECRET_TYPED.test("LESSOR_PASSPHRASE=… lessor init --key-source passphrase"));
  assert.ok(!SECRET_TYPED.test(`LESSOR_PASSPHRASE="$(pass show lessor)" lessor init`));
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
