/**
 * The layering check: reads the allowed arrows from the table in docs/architecture.md, parses every
 * import of every file under src/ with the TypeScript compiler (static and dynamic imports, re-exports,
 * `import type`, `typeof import("…")`, `require("…")`), and reports each import the table does not
 * allow as "file → import (rule)". Used by test/package.test.ts.
 *
 * Besides the table, three rules hold whatever the table says (so that widening a row cannot hide them):
 * the core's closure (everything src/vault reaches, type imports included) does no I/O, the core's
 * closure reaches no adapter, and the client's runtime closure reaches no server, core, store or config.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { builtinModules } from "node:module";
import { dirname, join, relative, resolve } from "node:path";
import ts from "typescript";

/** One row of the layer table. */
export interface Layer {
  name: string;
  /** Folders (ending in "/") and files, relative to the package root, e.g. "src/vault/". */
  paths: string[];
  /** Layers this one may import (its own is implied). */
  imports: string[];
  /** npm packages and node built-ins (as "node:x"; "node:*" for any) it may import. */
  packages: string[];
}

/** One row of the exceptions table: an import the layer table would refuse, allowed until fixed. */
export interface Exception {
  file: string;
  target: string;
  why: string;
  /** The row's reason starts with "Type only": it covers `import type` only, never a runtime import. */
  typeOnly: boolean;
}

/** The arrows, as docs/architecture.md writes them. */
export interface Rules {
  layers: Layer[];
  exceptions: Exception[];
}

/** One import of one source file. */
export interface Import {
  /** The specifier as written, or `<computed>` for `import(expr)`. */
  spec: string;
  /** Erased at compile time: `import type`, `export type … from`, `typeof import("…")`. */
  typeOnly: boolean;
  line: number;
}

/** Where an import leads: a source file (relative to the root) or an external module. */
type Target = { file: string } | { external: string } | { unresolved: string };

/** What the check found wrong, one line each. */
export interface Violation {
  file: string;
  spec: string;
  rule: string;
}

export function formatViolation(v: Violation): string {
  return `${v.file} → ${v.spec} (${v.rule})`;
}

const BACKTICKED = /`([^`]+)`/g;

function cells(line: string): string[] {
  return line
    .trim()
    .replace(/^\||\|$/g, "")
    .split("|")
    .map((c) => c.trim());
}

/** The rows of the first table after the heading `heading` in `markdown`. */
function tableAfter(markdown: string, heading: string): string[][] {
  const lines = markdown.split("\n");
  const at = lines.findIndex((l) => l.trim() === heading);
  if (at < 0) throw new Error(`docs/architecture.md has no "${heading}" heading`);
  const rows: string[][] = [];
  let i = at + 1;
  while (i < lines.length && !lines[i]!.trimStart().startsWith("|")) {
    if (lines[i]!.startsWith("#")) throw new Error(`no table under "${heading}"`);
    i++;
  }
  for (; i < lines.length && lines[i]!.trimStart().startsWith("|"); i++) rows.push(cells(lines[i]!));
  return rows.slice(2); // the header and the |---| line
}

function backticked(cell: string): string[] {
  return [...cell.matchAll(BACKTICKED)].map((m) => m[1]!);
}

function names(cell: string): string[] {
  if (cell === "—" || cell === "-" || cell === "") return [];
  return cell.split(",").map((s) => s.trim().replace(/`/g, "")).filter((s) => s.length > 0);
}

/** Reads the layer table and the exceptions table from the text of docs/architecture.md. */
export function parseRules(markdown: string): Rules {
  const layers = tableAfter(markdown, "## Layers").map(([name, files, imports, packages]) => ({
    name: name!.replace(/\*/g, ""),
    paths: backticked(files ?? ""),
    imports: names(imports ?? ""),
    packages: names(packages ?? ""),
  }));
  const known = new Set(layers.map((l) => l.name));
  for (const l of layers) {
    if (l.paths.length === 0) throw new Error(`layer ${l.name} names no files`);
    for (const i of l.imports) if (!known.has(i)) throw new Error(`layer ${l.name} may import "${i}", which is no layer`);
  }
  const exceptions = tableAfter(markdown, "## Exceptions").map(([file, target, why]) => ({
    file: backticked(file ?? "")[0]!,
    target: backticked(target ?? "")[0]!,
    why: why ?? "",
    typeOnly: /^type only\b/i.test(why ?? ""),
  }));
  return { layers, exceptions };
}

/** Parsed files by text: the tests check many variants of the same tree. */
const parsed = new Map<string, Import[]>();

/** Every import of one file's text, type-only ones included. */
export function importsOf(fileName: string, text: string): Import[] {
  const key = `${fileName}\0${text}`;
  let found = parsed.get(key);
  if (found === undefined) parsed.set(key, (found = parseImports(fileName, text)));
  return found;
}

function parseImports(fileName: string, text: string): Import[] {
  const sf = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, false, ts.ScriptKind.TS);
  const out: Import[] = [];
  const add = (spec: string, typeOnly: boolean, node: ts.Node): void => {
    out.push({ spec, typeOnly, line: sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1 });
  };
  const visit = (n: ts.Node): void => {
    if (ts.isImportDeclaration(n) && ts.isStringLiteral(n.moduleSpecifier)) {
      // Under verbatimModuleSyntax only `import type` is erased; `import { type X }` still loads the module.
      add(n.moduleSpecifier.text, n.importClause?.isTypeOnly === true, n);
    } else if (ts.isExportDeclaration(n) && n.moduleSpecifier && ts.isStringLiteral(n.moduleSpecifier)) {
      add(n.moduleSpecifier.text, n.isTypeOnly, n);
    } else if (ts.isImportEqualsDeclaration(n) && ts.isExternalModuleReference(n.moduleReference) && ts.isStringLiteral(n.moduleReference.expression)) {
      add(n.moduleReference.expression.text, n.isTypeOnly, n);
    } else if (ts.isImportTypeNode(n)) {
      const arg = n.argument;
      if (ts.isLiteralTypeNode(arg) && ts.isStringLiteral(arg.literal)) add(arg.literal.text, true, n);
    } else if (ts.isCallExpression(n)) {
      const callee = n.expression;
      const isImport = callee.kind === ts.SyntaxKind.ImportKeyword;
      const isRequire = ts.isIdentifier(callee) && callee.text === "require";
      if (isImport || isRequire) {
        const arg = n.arguments[0];
        if (arg !== undefined && (ts.isStringLiteral(arg) || ts.isNoSubstitutionTemplateLiteral(arg))) add(arg.text, false, n);
        else if (isImport) add("<computed>", false, n);
      }
    }
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return out;
}

const BUILTINS = new Set(builtinModules);

/** The package an external specifier names: "node:fs/promises" → "node:fs/promises", "@a/b/c.js" → "@a/b". */
function externalName(spec: string): string {
  if (spec.startsWith("node:")) return spec;
  if (BUILTINS.has(spec)) return `node:${spec}`;
  const parts = spec.split("/");
  return spec.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0]!;
}

/** The source file a relative specifier of `from` names (".js" written for ".ts"), relative to `root`. */
function resolveTarget(root: string, from: string, spec: string): Target {
  if (spec === "<computed>") return { unresolved: spec };
  if (!spec.startsWith(".")) return { external: externalName(spec) };
  const abs = resolve(root, dirname(from), spec);
  for (const c of [abs.replace(/\.js$/, ".ts"), abs, `${abs}.ts`, join(abs, "index.ts")]) if (c.endsWith(".ts") && existsSync(c)) return { file: relative(root, c) };
  return { unresolved: spec };
}

/** The layer a file belongs to: the row naming it or its closest folder. */
export function layerOf(layers: Layer[], file: string): Layer | null {
  let best: Layer | null = null;
  let bestLen = -1;
  for (const l of layers)
    for (const p of l.paths) {
      const hit = p.endsWith("/") ? file.startsWith(p) : file === p;
      if (hit && p.length > bestLen) {
        best = l;
        bestLen = p.length;
      }
    }
  return best;
}

/** A source tree to check: file names (relative to the root) and their text. */
export type Sources = Map<string, string>;

/** Reads every .ts file under `root`/src. */
export function readSources(root: string): Sources {
  const out: Sources = new Map();
  const walk = (dir: string): void => {
    for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".ts")) out.set(p, readFileSync(join(root, p), "utf8"));
    }
  };
  walk("src");
  return out;
}

/** Built-ins that reach files, sockets, processes or threads: never in the core's closure. */
const IO_BUILTINS = ["fs", "fs/promises", "net", "tls", "http", "https", "http2", "dgram", "child_process", "worker_threads", "cluster", "module", "dns", "dns/promises", "os", "readline", "inspector", "vm"].map((m) => `node:${m}`);

/** The layers that make up the core and what it may import. */
const CORE_CLOSURE = ["base", "crypto", "audit", "core"];
/** What the client's runtime closure must never reach. */
const CLIENT_NEVER = ["core", "server", "store", "config", "key sources", "audit sink", "backend", "cli"];
const NATIVE_PACKAGES = ["better-sqlite3", "@node-rs/argon2"];

/**
 * Checks `sources` (an in-memory copy of src/, so tests can plant a violation) against `rules`.
 * `root` is where the files would live (relative imports resolve against the disk only for files not in
 * `sources`, so a planted import of an existing file resolves).
 */
export function checkLayering(rules: Rules, sources: Sources, root: string): Violation[] {
  const { layers, exceptions } = rules;
  const violations: Violation[] = [];
  const exceptionUsed = new Set<Exception>();
  const exceptionFor = (file: string, target: string, imp: Import): Exception | undefined =>
    exceptions.find((e) => e.file === file && e.target === target && (imp.typeOnly || !e.typeOnly));
  const resolveIn = (from: string, spec: string): Target => {
    const t = resolveTarget(root, from, spec);
    if ("unresolved" in t && spec.startsWith(".")) {
      const base = join(dirname(from), spec).replace(/\.js$/, ".ts");
      if (sources.has(base)) return { file: base };
    }
    return t;
  };
  const graph = new Map<string, { imp: Import; target: Target }[]>();
  for (const [file, text] of sources) graph.set(file, importsOf(file, text).map((imp) => ({ imp, target: resolveIn(file, imp.spec) })));

  // 1. Every direct import follows the table.
  for (const [file, edges] of graph) {
    const from = layerOf(layers, file);
    if (from === null) {
      violations.push({ file, spec: "(any)", rule: "the file belongs to no layer: add its folder to the table in docs/architecture.md" });
      continue;
    }
    for (const { imp, target } of edges) {
      const where = `${file}:${imp.line}`;
      if ("unresolved" in target) {
        violations.push({ file: where, spec: imp.spec, rule: imp.spec === "<computed>" ? "an import() of a computed name cannot be checked" : "the import names no source file" });
      } else if ("external" in target) {
        const builtin = target.external.startsWith("node:") && from.packages.includes("node:*");
        if (!builtin && !from.packages.includes(target.external))
          violations.push({ file: where, spec: imp.spec, rule: `layer ${from.name} may not import ${target.external}` });
      } else {
        const to = layerOf(layers, target.file);
        if (to === null) {
          violations.push({ file: where, spec: imp.spec, rule: "the import leaves every layer (only files under src/ may be imported)" });
          continue;
        }
        if (to === from || from.imports.includes(to.name)) continue;
        const ex = exceptionFor(file, target.file, imp);
        if (ex) exceptionUsed.add(ex);
        else violations.push({ file: where, spec: imp.spec, rule: `layer ${from.name} may not import layer ${to.name}${imp.typeOnly ? "" : exceptions.some((e) => e.file === file && e.target === target.file) ? " (its exception covers type imports only)" : ""}` });
      }
    }
  }

  // 2. Closures: walk from every file of a layer, remembering the path, and report what is reached.
  const closure = (starts: string[], runtimeOnly: boolean, bad: (t: Target) => string | null): void => {
    const seen = new Set<string>();
    const queue: { file: string; path: string[] }[] = starts.map((f) => ({ file: f, path: [f] }));
    while (queue.length > 0) {
      const { file, path } = queue.shift()!;
      if (seen.has(file)) continue;
      seen.add(file);
      for (const { imp, target } of graph.get(file) ?? []) {
        if (runtimeOnly && imp.typeOnly) continue; // (no exception applies here: these rules hold whatever the doc says)
        const why = bad(target);
        const shown = [...path, "external" in target ? target.external : "file" in target ? target.file : imp.spec].join(" → ");
        if (why !== null) violations.push({ file: `${file}:${imp.line}`, spec: imp.spec, rule: `${why}; via ${shown}` });
        else if ("file" in target && !seen.has(target.file)) queue.push({ file: target.file, path: [...path, target.file] });
      }
    }
  };
  const filesOf = (name: string): string[] => [...sources.keys()].filter((f) => layerOf(layers, f)?.name === name);
  closure(filesOf("core"), false, (t) => {
    if ("external" in t) return IO_BUILTINS.includes(t.external) || NATIVE_PACKAGES.includes(t.external) ? `the core does no I/O: it may not reach ${t.external}` : null;
    if ("file" in t) {
      const l = layerOf(layers, t.file);
      return l !== null && !CORE_CLOSURE.includes(l.name) ? `the core imports no adapter: it may not reach ${t.file} (layer ${l.name})` : null;
    }
    return null;
  });
  const clientEntry = "src/client/index.ts";
  if (sources.has(clientEntry))
    closure([clientEntry], true, (t) => {
      if ("external" in t) return NATIVE_PACKAGES.includes(t.external) ? `lessor/client loads no native module: it may not reach ${t.external}` : null;
      if ("file" in t) {
        const l = layerOf(layers, t.file);
        return l !== null && CLIENT_NEVER.includes(l.name) ? `the client never loads layer ${l.name} at runtime` : null;
      }
      return null;
    });

  // 3. An exception no longer needed is taken out of the table, so it cannot cover a new import later.
  for (const e of exceptions)
    if (!exceptionUsed.has(e) && !(graph.get(e.file) ?? []).some(({ target }) => "file" in target && target.file === e.target))
      violations.push({ file: e.file, spec: e.target, rule: "this exception is no longer used: remove its row from the Exceptions table of docs/architecture.md" });
  return violations;
}
