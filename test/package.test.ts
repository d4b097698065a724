/** Keeps the package, the docs and the layering true to the code. */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { ERROR_CODES, wireCode } from "../src/base/errors.js";
import { VERSION } from "../src/version.js";

const root = fileURLToPath(new URL("..", import.meta.url));

test("VERSION matches package.json", () => {
  assert.equal(VERSION, (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string }).version);
});

test("docs/errors.md lists every error code with its wire code", () => {
  const doc = readFileSync(join(root, "docs/errors.md"), "utf8");
  for (const code of Object.keys(ERROR_CODES) as (keyof typeof ERROR_CODES)[])
    assert.match(doc, new RegExp(`\\| \`${code}\` \\|.*\\| \`${wireCode(code)}\` \\|`), code);
});

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)]));
}

test("the core (src/vault) imports no sockets, files, processes or adapters", () => {
  const banned = /from "(node:)?(fs|net|child_process|http|https|tls|dgram|os|worker_threads|fs\/promises)"|from "\.\.\/(store\/(sqlite|memory)|config|cli|audit\/jsonl-sink)/;
  for (const f of files(join(root, "src/vault"))) {
    const text = readFileSync(f, "utf8");
    assert.ok(!banned.test(text), `${f} imports an adapter or I/O module`);
  }
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
