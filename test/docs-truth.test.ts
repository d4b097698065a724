/**
 * Keeps the docs (README.md and docs/**) true to the code, both ways, with the lists read from the
 * code and from the docs wherever they can be, so that the checks follow both as they change:
 *
 * - lessor.toml (and policy.toml): the keys the real parsers accept — read from their own refusals of
 *   an unknown key, which name the known ones — are each documented under the same table; every
 *   table and key the docs show (TOML blocks, commented-out lines included, and `[table] key` spans) is
 *   accepted; every documented block loads through the real loader; a misspelt key is refused by name
 *   rather than silently ignored.
 * - The CLI: every command and option of the real commander program (src/cli/program.ts, caught as it
 *   is built) is documented beside its command on the CLI pages (docs/cli.md, docs/cli/*.md and the
 *   pages docs/cli.md's command table links to); every `lessor …` command line in the docs, and in the
 *   commands' own --help, names commands and options the program has; a misspelt option is refused.
 * - Exit codes (src/cli/exit-codes.ts) against the exit-code tables of the CLI pages; error codes of
 *   docs/errors.md and docs/protocol.md against src/base/errors.ts (test/package.test.ts checks that
 *   every code is in docs/errors.md with its wire code; this checks the other way).
 * - The LESSOR_* environment variables the code reads against those the docs name.
 *
 * A check that finds the docs and the code apart lists every mismatch with file:line in its message.
 * The last tests plant mistakes to show that each check sees them.
 */
import assert from "node:assert/strict";
import type { EventEmitter } from "node:events";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { Command, CommanderError, type Option } from "commander";
import { ERROR_CODES, wireCode, type ErrorCode } from "../src/base/errors.js";
import { parseConfig, STARTER_CONFIG } from "../src/config/config.js";
import { loadConfig } from "../src/config/load.js";
import { EXIT, exitCodeFor } from "../src/cli/exit-codes.js";
import { parsePolicy } from "../src/vault/policy.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const read = (f: string): string => readFileSync(join(root, f), "utf8");
const escapeRe = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

function filesUnder(dir: string, re: RegExp): string[] {
  return readdirSync(join(root, dir), { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? filesUnder(`${dir}/${e.name}`, re) : re.test(e.name) ? [`${dir}/${e.name}`] : []))
    .sort();
}

// ═════════════════════════════ Markdown ═════════════════════════════

/** A fenced code block: its language, and its lines without the fence's indentation. */
interface CodeBlock {
  file: string;
  /** 1-based line of the block's first content line. */
  line: number;
  lang: string;
  lines: string[];
}

/** A prose block: a paragraph, one list item, one table row (with the header row), or a heading; with the headings it sits under. */
interface Block {
  file: string;
  line: number;
  text: string;
  /** The headings above the block, outermost first (for a heading: itself last). */
  headings: string[];
  kind: "paragraph" | "table" | "heading";
}

interface Doc {
  file: string;
  code: CodeBlock[];
  blocks: Block[];
}

/** Splits Markdown into code blocks and prose blocks. */
function parseDoc(file: string, source: string): Doc {
  const code: CodeBlock[] = [];
  const blocks: Block[] = [];
  const headings: { level: number; text: string }[] = [];
  let fence: { marker: string; indent: number; block: CodeBlock } | null = null;
  let cur: { line: number; lines: string[]; kind: "paragraph" } | null = null;
  let tableHeader: string | null = null;
  const flush = (): void => {
    if (cur) blocks.push({ file, line: cur.line, text: cur.lines.join("\n"), headings: headings.map((h) => h.text), kind: cur.kind });
    cur = null;
  };
  source.split("\n").forEach((raw, i) => {
    if (fence) {
      const close = /^\s*(`{3,}|~{3,})\s*$/.exec(raw);
      if (close && close[1]!.startsWith(fence.marker)) {
        code.push(fence.block);
        fence = null;
      } else fence.block.lines.push(raw.slice(Math.min(fence.indent, raw.length - raw.trimStart().length)));
      return;
    }
    const open = /^(\s*)(`{3,}|~{3,})\s*([\w-]*)/.exec(raw);
    if (open) {
      flush();
      fence = { marker: open[2]!, indent: open[1]!.length, block: { file, line: i + 2, lang: open[3]!.toLowerCase(), lines: [] } };
      return;
    }
    const h = /^(#{1,6})\s+(.*)$/.exec(raw);
    if (h) {
      flush();
      tableHeader = null;
      while (headings.length > 0 && headings.at(-1)!.level >= h[1]!.length) headings.pop();
      headings.push({ level: h[1]!.length, text: h[2]! });
      blocks.push({ file, line: i + 1, text: h[2]!, headings: headings.map((x) => x.text), kind: "heading" });
      return;
    }
    if (raw.trim() === "") {
      flush();
      tableHeader = null;
      return;
    }
    const kind = raw.trimStart().startsWith("|") ? "table" : "paragraph";
    if (kind === "table") {
      // Each row of a table is a block of its own, with the header row (which may name the table: "`[server]` field").
      flush();
      if (tableHeader === null) tableHeader = raw;
      else if (!/^\s*\|[\s:|-]*$/.test(raw)) blocks.push({ file, line: i + 1, text: `${tableHeader}\n${raw}`, headings: headings.map((h) => h.text), kind });
      return;
    }
    tableHeader = null;
    // Each list item is a block of its own.
    if (cur && /^\s*([-*+]|\d+\.)\s/.test(raw)) flush();
    cur ??= { line: i + 1, lines: [], kind };
    cur.lines.push(raw);
  });
  flush();
  return { file, code, blocks };
}

/** README.md and every Markdown file under docs/, read once. */
const realDocs: Doc[] = ["README.md", ...filesUnder("docs", /\.md$/)].map((f) => parseDoc(f, read(f)));

/** The inline code spans of a text (a span may run over a line break), with `\|` read as `|`. */
function spans(text: string): string[] {
  return [...text.replace(/\n/g, " ").matchAll(/(`+)(.+?)\1(?!`)/g)].map((m) => m[2]!.trim().replace(/\\\|/g, "|"));
}

/** The line a span of a block starts on. */
function lineOf(b: Block, span: string): number {
  if (b.kind !== "paragraph") return b.line; // a heading; a table row (its text starts with the header row)
  const lines = b.text.split("\n");
  for (let k = span.length; k > 0; k--) {
    const i = lines.findIndex((l) => l.replace(/\\\|/g, "|").includes(span.slice(0, k)));
    if (i >= 0) return b.line + i;
  }
  return b.line;
}

/** The table names in a text: `[vault]`, `[[vm]]`, `[[proxy.inject]]` → vault, vm, proxy.inject. */
const tablesNamedIn = (text: string): string[] => [...text.matchAll(/\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?/g)].map((m) => m[1]!);

// ═════════════════════════════ TOML in the docs ═════════════════════════════

/** One `key = …` line of a TOML snippet (commented out or not), under the table it is written in. */
interface KeyLine {
  table: string;
  key: string;
  /** The keys of an inline-table value, `{ a = 1, b = 2 }`. */
  inline: string[];
  line: number;
}

/**
 * The tables and keys a TOML snippet shows, commented-out ones included (`# uid = 1234` under
 * `[[vm]]`, `# [[identity]]` as a header): what a reader takes from it. A key whose comment says it
 * belongs elsewhere (`# vsock_port = 7391  # in [server] above`) counts there.
 */
function tomlLines(lines: readonly string[], firstLine: number): { headers: { table: string; line: number }[]; keys: KeyLine[] } {
  const headers: { table: string; line: number }[] = [];
  const keys: KeyLine[] = [];
  let table = "";
  lines.forEach((raw, i) => {
    const header = /^\s*(?:#\s*)?\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$/.exec(raw);
    if (header) {
      table = header[1]!;
      headers.push({ table, line: firstLine + i });
      return;
    }
    const kv = /^\s*(?:#\s*)?([A-Za-z0-9_-]+|"[^"]*")\s*=\s*(.*)$/.exec(raw);
    if (!kv) return;
    const value = kv[2]!;
    const elsewhere = /#.*\bin \[\[?([a-z_.]+)\]\]?/.exec(value);
    const inline = value.startsWith("{")
      ? [...value.slice(1, value.lastIndexOf("}")).matchAll(/(?:^|,)\s*([A-Za-z0-9_-]+|"[^"]*")\s*=/g)].map((m) => m[1]!.replace(/^"|"$/g, ""))
      : [];
    keys.push({ table: elsewhere?.[1] ?? table, key: kv[1]!.replace(/^"|"$/g, ""), inline, line: firstLine + i });
  });
  return { headers, keys };
}

// ═════════════════════════════ the parsers' own key lists ═════════════════════════════

/**
 * What a parser accepts, read from its refusals: the parsers of lessor.toml and policy.toml refuse an
 * unknown key naming the keys they know. `tables` maps a table ("" for the top level; "vm";
 * "proxy.inject"; "docker.*" for the entries of a map) to its keys; `arrays` are those written `[[…]]`.
 */
interface Schema {
  tables: Map<string, Set<string>>;
  arrays: Set<string>;
}

const PROBE = "zz_probe";

function refusal(f: () => unknown): string | null {
  try {
    f();
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}

/** The key list a refusal of the probe key names; null for any other outcome. */
function knownList(message: string | null, re: RegExp): string[] | null {
  if (message === null || !message.includes(`"${PROBE}"`)) return null;
  const m = re.exec(message);
  return m ? m[1]!.split(",").map((s) => s.trim()).filter((s) => s.length > 0) : null;
}

/** `prelude(table)`: lines a table needs before its keys are checked (a policy rule's name). */
function probeSchema(parse: (text: string) => unknown, re: RegExp, prelude: (table: string) => string): Schema {
  const tables = new Map<string, Set<string>>();
  const arrays = new Set<string>();
  const top = knownList(refusal(() => parse(`${PROBE} = 1\n`)), re);
  assert.ok(top, `the parser no longer names its tables when it refuses an unknown top-level key: ${refusal(() => parse(`${PROBE} = 1\n`))}`);
  tables.set("", new Set(top.map((t) => t.replace(/^\[\[?|\]\]?$/g, ""))));
  const probe = (name: string): void => {
    for (const array of [false, true]) {
      const head = `${array ? `[[${name}]]` : `[${name}]`}\n${prelude(name)}`;
      // A map of entries (`[docker]`: `"ghcr.io" = { … }`): the keys of an entry.
      const entry = knownList(refusal(() => parse(`${head}"probe.example" = { ${PROBE} = 1 }\n`)), re);
      if (entry !== null) {
        tables.set(`${name}.*`, new Set(entry));
        if (array) arrays.add(name);
        return;
      }
      const keys = knownList(refusal(() => parse(`${head}${PROBE} = 1\n`)), re);
      if (keys === null) continue;
      tables.set(name, new Set(keys));
      if (array) arrays.add(name);
      for (const k of keys) probe(`${name}.${k}`); // sub-tables such as [[proxy.inject]]
      return;
    }
  };
  for (const t of tables.get("")!) probe(t);
  return { tables, arrays };
}

const configSchema = probeSchema((text) => parseConfig(text, "probe.toml"), /\(known: ([^)]*)\)/, () => "");
// A rule is read up to its name before its keys are checked.
const policySchema = probeSchema((text) => parsePolicy(text, "probe.toml"), /expected one of: (.*)$/m, (t) => (t === "rule" ? 'name = "probe"\n' : ""));

function accepts(schema: Schema, table: string, key: string): boolean {
  return table === "" ? schema.tables.get("")!.has(key) : schema.tables.get(table)?.has(key) === true;
}

/** `[table] key` for messages. */
const show = (table: string, key: string): string =>
  table === "" ? key : table.endsWith(".*") ? `[${table.slice(0, -2)}] "<entry>" = { ${key} = … }` : `[${table}] ${key}`;

/** Which file a TOML block of the docs is: lessor.toml, policy.toml, or null (a table neither has). */
function tomlKind(block: CodeBlock): "config" | "policy" | null {
  const first = (block.lines.find((l) => l.trim() !== "") ?? "").trim();
  if (/^#\s*policy\.toml\b/.test(first)) return "policy";
  if (/^#\s*lessor\.toml\b/.test(first)) return "config";
  const tops = tomlLines(block.lines, block.line).headers.map((h) => h.table.split(".")[0]!);
  if (tops.length === 0 || tops.every((t) => configSchema.tables.get("")!.has(t))) return "config";
  if (tops.every((t) => policySchema.tables.get("")!.has(t))) return "policy";
  return null;
}

/** The TOML blocks of the docs: fenced as toml, or unlabelled ones with a `[table]` header line. */
function tomlBlocks(docs: readonly Doc[]): CodeBlock[] {
  return docs
    .flatMap((d) => d.code)
    .filter((b) => b.lang === "toml" || (b.lang === "" && b.lines.some((l) => /^\s*\[\[?[A-Za-z0-9_.-]+\]\]?\s*(#.*)?$/.test(l))));
}

/**
 * A (table, key) the docs name: on a TOML line; in a `[table] key` span or as "`key` under `[table]`"
 * ("span"); or in prose that names `[table]` beside a `key` span ("prose": enough to document a key,
 * too loose to judge one, since such a paragraph has other spans too).
 */
interface DocKey {
  table: string;
  key: string;
  /** For a span `[table] key = value`: the value. */
  value?: string;
  where: string;
  source: "toml" | "span" | "prose";
}

function documentedKeys(kind: "config" | "policy", docs: readonly Doc[]): DocKey[] {
  const schema = kind === "config" ? configSchema : policySchema;
  const out: DocKey[] = [];
  for (const b of tomlBlocks(docs)) {
    if (tomlKind(b) !== kind) continue;
    for (const u of tomlLines(b.lines, b.line).keys) {
      const where = `${b.file}:${u.line}`;
      if (schema.tables.has(`${u.table}.*`)) {
        // `"ghcr.io" = { secret = … }`: the entry's name is free, its keys are not.
        for (const k of u.inline) out.push({ table: `${u.table}.*`, key: k, where, source: "toml" });
        continue;
      }
      out.push({ table: u.table, key: u.key, where, source: "toml" });
      if (schema.tables.has(`${u.table}.${u.key}`)) for (const k of u.inline) out.push({ table: `${u.table}.${u.key}`, key: k, where, source: "toml" });
    }
  }
  for (const d of docs)
    for (const blk of d.blocks) {
      const where = `${d.file}:${blk.line}`;
      const named = new Set(tablesNamedIn([...blk.headings, blk.text].join("\n")));
      for (const s of spans(blk.text)) {
        const direct = /^\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?\s+([A-Za-z0-9_]+)\b(?:\s*=\s*(.+))?$/.exec(s) ?? /^\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?\s+([A-Za-z0-9_]+)\b/.exec(s);
        if (direct) out.push({ table: direct[1]!, key: direct[2]!, ...(direct[3] !== undefined ? { value: direct[3] } : {}), where: `${d.file}:${lineOf(blk, s)}`, source: "span" });
        const bare = /^([a-z][a-z0-9_]*)(\s*=.*)?$/.exec(s);
        if (bare) for (const t of named) out.push({ table: t, key: bare[1]!, where, source: "prose" });
      }
      // "`command_timeout` under `[keys]`"
      for (const m of blk.text.replace(/\n/g, " ").matchAll(/`([a-z][a-z0-9_]*)`[^`]{0,12}\b(?:under|in)\s+`\[\[?([A-Za-z0-9_.-]+)\]\]?`/g))
        out.push({ table: m[2]!, key: m[1]!, where, source: "span" });
    }
  // Only this file's tables: `[policy] file` is a lessor.toml key, `[[rule]]` a policy.toml table; a
  // `[table] key` span of a table neither file has (`[sever] socket`) is judged as lessor.toml's.
  const tops = schema.tables.get("")!;
  const top = (k: DocKey): string => k.table.split(".")[0]!;
  return out.filter(
    (k) => k.source === "toml" || tops.has(top(k)) || (kind === "config" && k.source === "span" && !policySchema.tables.get("")!.has(top(k))),
  );
}

/** Keys (and tables) the parser accepts that no doc names under their table. */
function undocumentedKeys(kind: "config" | "policy", docs: readonly Doc[]): string[] {
  const schema = kind === "config" ? configSchema : policySchema;
  const documented = new Set(documentedKeys(kind, docs).map((d) => `${d.table}\0${d.key}`));
  const missing: string[] = [];
  for (const [table, keys] of schema.tables) {
    if (table === "") continue;
    for (const k of keys) if (!documented.has(`${table}\0${k}`) && !schema.tables.has(`${table}.${k}`)) missing.push(show(table, k));
  }
  const named = new Set(docs.flatMap((d) => [...d.blocks.map((b) => b.text), ...d.code.flatMap((c) => c.lines)].flatMap(tablesNamedIn)));
  for (const t of schema.tables.get("")!) if (!named.has(t)) missing.push(`[${t}] (the table itself)`);
  return missing;
}

/** Tables and keys the docs show (TOML lines and `[table] key` spans) that the parser refuses, and TOML blocks of neither file. */
function refusedKeys(kind: "config" | "policy", docs: readonly Doc[]): string[] {
  const schema = kind === "config" ? configSchema : policySchema;
  const bad = documentedKeys(kind, docs)
    .filter((d) => d.source !== "prose" && !accepts(schema, d.table, d.key))
    .map((d) => `${d.where}: ${show(d.table, d.key)}`);
  if (kind === "config")
    for (const b of tomlBlocks(docs).filter((x) => tomlKind(x) === null))
      bad.push(`${b.file}:${b.line}: a TOML block with a table neither lessor.toml nor policy.toml has (${tomlLines(b.lines, b.line).headers.map((h) => `[${h.table}]`).join(", ")})`);
  return [...new Set(bad)];
}

/** A temporary directory, removed after this file's tests. */
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "lessor-docs-truth-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Loads `text` as the lessor.toml of a fresh home through the real loader: null, or the refusal. */
function loadSnippet(text: string): string | null {
  const home = join(tempDir(), "home");
  mkdirSync(home, { mode: 0o700 });
  chmodSync(home, 0o700);
  writeFileSync(join(home, "lessor.toml"), text, { mode: 0o600 });
  try {
    loadConfig(home);
    return null;
  } catch (e) {
    return `${(e as { code?: string }).code ?? "error"}: ${(e as Error).message.replace(join(home, "lessor.toml"), "lessor.toml")}`;
  }
}

/** The documented lessor.toml blocks, and the `[table] key = value` spans of plain tables, that the loader refuses. */
function unloadableSnippets(docs: readonly Doc[]): string[] {
  const blocks = tomlBlocks(docs).filter((b) => tomlKind(b) === "config");
  const bad = blocks.flatMap((b) => {
    const err = loadSnippet(b.lines.join("\n"));
    return err === null ? [] : [`${b.file}:${b.line}: ${err}`];
  });
  for (const d of documentedKeys("config", docs))
    if (d.source === "span" && d.value !== undefined && configSchema.tables.has(d.table) && !configSchema.arrays.has(d.table) && !d.table.includes(".")) {
      const err = loadSnippet(`[${d.table}]\n${d.key} = ${d.value}\n`);
      if (err !== null) bad.push(`${d.where}: \`[${d.table}] ${d.key} = ${d.value}\`: ${err}`);
    }
  return bad;
}

/** A misspelling of `key`: a letter dropped from its middle (or its last doubled when it is short). */
function typo(key: string): string {
  const i = Math.floor(key.length / 2);
  return key.length > 3 ? key.slice(0, i) + key.slice(i + 1) : `${key}${key.at(-1)}`;
}

// ═════════════════════════════ 1. lessor.toml ═════════════════════════════

test("the lessor.toml and policy.toml schemas are read from the parsers: every table and its keys", () => {
  const c = configSchema;
  for (const t of ["vault", "keys", "policy", "audit", "server", "identity", "vm", "vsock", "run", "proxy", "proxy.inject", "docker.*", "rotate"])
    assert.ok(c.tables.get(t)?.size, `no keys read for [${t}] of lessor.toml (read: ${[...c.tables.keys()].join(", ")})`);
  assert.ok(c.tables.get("vault")!.has("max_live_leases_per_agent") && c.tables.get("server")!.has("max_connections"));
  assert.ok(c.arrays.has("identity") && c.arrays.has("proxy.inject") && c.arrays.has("rotate") && !c.arrays.has("vault"));
  assert.ok(policySchema.tables.get("rule")?.has("domains") && policySchema.tables.get("defaults")?.has("ttl"), [...policySchema.tables.keys()].join(", "));
});

test("every lessor.toml key the parser accepts is documented under its table in README.md or docs/", () => {
  const missing = undocumentedKeys("config", realDocs);
  assert.deepEqual(missing, [], `lessor.toml keys the parser (src/config/config.ts and what it imports) accepts that no doc names under their table:\n  ${missing.join("\n  ")}`);
});

test("every lessor.toml table and key the docs show (TOML blocks, `[table] key` spans) is one the parser accepts", () => {
  const bad = refusedKeys("config", realDocs);
  assert.deepEqual(bad, [], `the docs show lessor.toml keys the parser refuses:\n  ${bad.join("\n  ")}`);
});

test("every lessor.toml block and `[table] key = value` span in the docs loads through the real loader", () => {
  assert.ok(tomlBlocks(realDocs).filter((b) => tomlKind(b) === "config").length >= 5, "fewer than 5 lessor.toml blocks found in the docs");
  const bad = unloadableSnippets(realDocs);
  assert.deepEqual(bad, [], `documented lessor.toml the loader refuses:\n  ${bad.join("\n  ")}`);
});

test("the starter lessor.toml that lessor init writes shows only keys the parser accepts, each under its table", () => {
  const bad = tomlLines(STARTER_CONFIG.split("\n"), 1)
    .keys.filter((u) => !accepts(configSchema, u.table, u.key))
    .map((u) => `STARTER_CONFIG (src/config/config.ts) line ${u.line}: ${show(u.table, u.key)}`);
  assert.deepEqual(bad, []);
  assert.equal(loadSnippet(STARTER_CONFIG), null);
});

/** A lessor.toml that has `line` in `table`, with what the table needs to be read up to its keys. */
function configWith(table: string, line: string): string {
  if (table === "") return `${line}\n`;
  if (table.endsWith(".*")) return `[${table.slice(0, -2)}]\n"registry.example" = { ${line} }\n`;
  return configSchema.arrays.has(table) ? `[[${table}]]\n${line}\n` : `[${table}]\n${line}\n`;
}

test("a misspelt lessor.toml table or key is refused by name (config_invalid), never silently ignored", () => {
  const ignored: string[] = [];
  for (const [table, keys] of configSchema.tables)
    for (const k of keys) {
      const t = typo(k);
      if (keys.has(t)) continue;
      const err = loadSnippet(table === "" ? `[${t}]\n` : configWith(table, `${t} = 1`));
      if (err === null || !err.startsWith("config_invalid") || !err.includes(`"${t}"`)) ignored.push(`${table === "" ? `[${t}]` : show(table, t)} (for ${k}): ${err ?? "accepted"}`);
    }
  assert.deepEqual(ignored, [], `misspelt keys not refused by name:\n  ${ignored.join("\n  ")}`);
  // The security limit a typo would silently lift: refused, and the right spelling takes effect.
  assert.match(String(loadSnippet("[vault]\nmax_live_lease_per_agent = 5\n")), /^config_invalid: .*unknown field "max_live_lease_per_agent"/);
  assert.equal(parseConfig("[vault]\nmax_live_leases_per_agent = 5\n", "x").limits.maxLiveLeasesPerAgent, 5);
});

/** The names src/ uses in code (comments left out): identifiers, keys, string contents. */
const codeNames: Set<string> = (() => {
  const names = new Set<string>();
  for (const f of filesUnder("src", /\.ts$/)) {
    const code = read(f)
      .replace(/\/\*[\s\S]*?\*\//g, "")
      .replace(/(^|[^:"'`\\])\/\/.*$/gm, "$1");
    for (const m of code.matchAll(/[A-Za-z_][A-Za-z0-9_]*/g)) names.add(m[0]);
  }
  return names;
})();

/**
 * Spans that read as a lessor.toml key written `<table>_<key>` (`key_command` for `[keys] command`)
 * but are no key of any table and no name the code uses: a reader would write them into lessor.toml
 * and be refused.
 */
function misnamedKeys(docs: readonly Doc[]): string[] {
  const keys = new Set([...configSchema.tables.values()].flatMap((k) => [...k]));
  const bad: string[] = [];
  for (const d of docs)
    for (const b of d.blocks)
      for (const s of new Set(spans(b.text))) {
        const m = /^([a-z]+)_([a-z][a-z0-9_]*)$/.exec(s);
        if (!m || keys.has(s) || codeNames.has(s)) continue;
        const table = [m[1]!, `${m[1]}s`].find((t) => configSchema.tables.get(t)?.has(m[2]!));
        if (table) bad.push(`${d.file}:${lineOf(b, s)}: \`${s}\` (lessor.toml has [${table}] ${m[2]}, no ${s})`);
      }
  return bad;
}

test("no doc calls a lessor.toml key by a name the parser does not have", () => {
  const bad = misnamedKeys(realDocs);
  assert.deepEqual(bad, [], `names in the docs that read as lessor.toml keys the parser refuses:\n  ${bad.join("\n  ")}`);
});

/** A default as the docs write it ("5 s", "24 h", "7 days", "1 MiB", "1024", `"15m"`, `true`) as a TOML value, or null. */
function tomlValue(text: string): string | null {
  const v = text.trim().replace(/^`|`$/g, "");
  if (/^(true|false)$/.test(v) || /^"[^"]*"$/.test(v)) return v;
  const m = /^(\d[\d,]*)\s*(ms|s|sec|seconds?|min|minutes?|h|hours?|d|days?|KiB|MiB|GiB|bytes?)?$/.exec(v);
  if (!m) return null;
  const n = Number(m[1]!.replace(/,/g, ""));
  const unit = m[2];
  if (unit === undefined || /^bytes?$/.test(unit)) return String(n);
  const size = ({ KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 } as Record<string, number>)[unit];
  if (size !== undefined) return String(n * size);
  return `"${n}${unit === "ms" ? "ms" : unit.startsWith("min") ? "m" : unit.startsWith("h") ? "h" : unit.startsWith("d") ? "d" : "s"}"`;
}

const DEFAULT_VALUE = "\\d[\\d,]*(?:\\s*(?:ms|s|min|minutes?|h|hours?|d|days?|KiB|MiB|GiB))?";

/**
 * The defaults the docs state for lessor.toml keys: "`key` (5 s…", "`key`, 100 by default", "`key`,
 * default 7 days", and the "default" column of a table whose first cell names the key. Only keys of one
 * plain table (not `[[…]]`), and named in one table only.
 */
function documentedDefaults(docs: readonly Doc[]): { table: string; key: string; value: string; where: string }[] {
  const owner = new Map<string, string | null>();
  for (const [t, keys] of configSchema.tables)
    if (t !== "" && !t.includes(".") && !configSchema.arrays.has(t)) for (const k of keys) owner.set(k, owner.has(k) ? null : t);
  for (const [t, keys] of configSchema.tables) if (configSchema.arrays.has(t) || t.includes(".")) for (const k of keys) if (owner.has(k)) owner.set(k, null);
  const out: { table: string; key: string; value: string; where: string }[] = [];
  const add = (key: string, value: string, where: string): void => {
    const table = owner.get(key);
    if (table) out.push({ table, key, value: value.trim(), where });
  };
  for (const d of docs)
    for (const b of d.blocks) {
      const where = `${d.file}:${b.line}`;
      if (b.kind === "table") {
        const [head, row] = b.text.split("\n").map((r) => r.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim()));
        const col = head!.findIndex((c) => /\bdefault\b/i.test(c));
        const keys = spans(row![0] ?? "").filter((k) => owner.get(k));
        if (col > 0 && keys.length === 1 && row![col] !== undefined) add(keys[0]!, row![col]!, where);
        continue;
      }
      const text = b.text.replace(/\n/g, " ");
      // "`key` (5 s", "`key` under `[keys]` (30 s by default", "`key` (`[keys]`, 30 s by default"
      for (const m of text.matchAll(new RegExp(`\`([a-z][a-z0-9_]*)\`(?:\\s+under\\s+\`\\[[^\`]*\\]\`)?\\s*\\((?:\`\\[[^\`]*\\]\`,\\s*)?(?:default\\s+)?(${DEFAULT_VALUE})(?=[\\s;),])`, "g"))) add(m[1]!, m[2]!, where);
      for (const m of text.matchAll(new RegExp(`\`([a-z][a-z0-9_]*)\`,\\s*(?:default\\s+(${DEFAULT_VALUE})|(${DEFAULT_VALUE})\\s+by default)`, "g"))) add(m[1]!, (m[2] ?? m[3])!, where);
    }
  return out;
}

/** Where two parsed configurations differ, as `path: a → b`. */
function diff(a: unknown, b: unknown, path = ""): string[] {
  if (typeof a === "object" && a !== null && typeof b === "object" && b !== null)
    return [...new Set([...Object.keys(a), ...Object.keys(b)])].flatMap((k) => diff((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], path ? `${path}.${k}` : k));
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [`${path}: ${JSON.stringify(a)} → ${JSON.stringify(b)}`];
}

/** The documented defaults of lessor.toml keys that are not the parser's. */
function wrongDefaults(docs: readonly Doc[]): string[] {
  const defaults = parseConfig("", "x");
  return documentedDefaults(docs).flatMap((d) => {
    const value = tomlValue(d.value);
    if (value === null) return [];
    const err = refusal(() => parseConfig(configWith(d.table, `${d.key} = ${value}`), "x"));
    if (err !== null) return [`${d.where}: [${d.table}] ${d.key} "${d.value}" (${value}) is not a value the parser takes: ${err}`];
    const changed = diff(defaults, parseConfig(configWith(d.table, `${d.key} = ${value}`), "x"));
    return changed.length === 0 ? [] : [`${d.where}: the docs give [${d.table}] ${d.key} the default ${d.value}, but the parser's default differs (${changed.join("; ")})`];
  });
}

test("the defaults the docs state for lessor.toml and policy.toml keys are the parsers' defaults", () => {
  const found = documentedDefaults(realDocs);
  assert.ok(found.length >= 20, `only ${found.length} documented defaults found:\n${found.map((f) => `${f.where} ${f.key} ${f.value}`).join("\n")}`);
  const bad = wrongDefaults(realDocs);
  // policy.toml: the "built-in default" column under `[defaults]`.
  const rule = '[[rule]]\nname = "r"\neffect = "allow"\nagents = ["a"]\nsecrets = ["s"]\nany_domain = true\n';
  const builtin = parsePolicy(rule, "p").rules[0]!.terms;
  let policyRows = 0;
  for (const d of realDocs)
    for (const b of d.blocks) {
      if (b.kind !== "table" || !b.headings.some((h) => /`\[defaults\]`/.test(h))) continue;
      const [head, row] = b.text.split("\n").map((r) => r.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim()));
      const col = head!.findIndex((c) => /\bdefault\b/i.test(c));
      const key = spans(row![0] ?? "")[0];
      if (col <= 0 || key === undefined || !policySchema.tables.get("defaults")!.has(key)) continue;
      policyRows++;
      const value = tomlValue(row![col]!);
      if (value === null) continue; // "unlimited"
      const set = refusal(() => parsePolicy(`[defaults]\n${key} = ${value}\n${rule}`, "p"));
      const changed = set === null ? diff(builtin, parsePolicy(`[defaults]\n${key} = ${value}\n${rule}`, "p").rules[0]!.terms) : [set];
      if (changed.length > 0) bad.push(`${d.file}:${b.line}: policy.toml [defaults] ${key} documented as ${row![col]}: ${changed.join("; ")}`);
    }
  assert.ok(policyRows >= 5, `only ${policyRows} rows of policy.toml defaults found`);
  assert.deepEqual(bad, [], `documented defaults that are not the code's:\n  ${bad.join("\n  ")}`);
});

// ═════════════════════════════ policy.toml ═════════════════════════════

test("every policy.toml key the parser accepts is documented, every one the docs show is accepted, every policy block loads", () => {
  const blocks = tomlBlocks(realDocs).filter((b) => tomlKind(b) === "policy");
  assert.ok(blocks.length >= 2, "fewer than 2 policy.toml blocks found in the docs");
  const unloadable = blocks.flatMap((b) => {
    const err = refusal(() => parsePolicy(b.lines.join("\n"), "policy.toml"));
    return err === null ? [] : [`${b.file}:${b.line}: ${err}`];
  });
  const got = { undocumented: undocumentedKeys("policy", realDocs), refused: refusedKeys("policy", realDocs), unloadable };
  assert.deepEqual(got, { undocumented: [], refused: [], unloadable: [] });
});

test("a misspelt policy.toml table or key is refused by name (policy_invalid)", () => {
  const ignored: string[] = [];
  for (const [table, keys] of policySchema.tables)
    for (const k of keys) {
      const t = typo(k);
      if (keys.has(t)) continue;
      const text = table === "" ? `[${t}]\n` : policySchema.arrays.has(table) ? `[[${table}]]\nname = "x"\n${t} = 1\n` : `[${table}]\n${t} = 1\n`;
      const err = refusal(() => parsePolicy(text, "p.toml"));
      if (err === null || !err.includes(t)) ignored.push(`${show(table, t)} (for ${k}): ${err ?? "accepted"}`);
    }
  assert.deepEqual(ignored, []);
});

// ═════════════════════════════ 2. the CLI ═════════════════════════════

/** The real program of src/cli/program.ts (which does not export it), caught as it is named "lessor". */
const program: Command = await (async () => {
  let caught: Command | null = null;
  const name = Command.prototype.name;
  Command.prototype.name = function (this: Command, ...a: unknown[]) {
    if (a[0] === "lessor" && caught === null) caught = this;
    return (name as (...x: unknown[]) => unknown).apply(this, a);
  } as typeof Command.prototype.name;
  try {
    await import("../src/cli/program.js");
  } finally {
    Command.prototype.name = name;
  }
  assert.ok(caught, 'src/cli/program.ts no longer builds a commander program named "lessor"');
  return caught as Command;
})();

interface Cmd {
  /** "secret set", "lease"; "" for the root. */
  path: string;
  cmd: Command;
  parent: Cmd | null;
}

/** Every visible command of the program, the root first. */
const allCommands: Cmd[] = (() => {
  const out: Cmd[] = [];
  const walk = (cmd: Command, parent: Cmd | null): void => {
    const c: Cmd = { path: parent === null ? "" : `${parent.path} ${cmd.name()}`.trim(), cmd, parent };
    out.push(c);
    for (const sub of cmd.commands) if (!(sub as unknown as { _hidden?: boolean })._hidden) walk(sub, c);
  };
  walk(program, null);
  return out;
})();

const visibleOptions = (c: Command): readonly Option[] => c.options.filter((o) => !o.hidden);
const flagsOf = (o: Option): string[] => [o.long, o.short].filter((f): f is string => f !== undefined);

/** The CLI pages: docs/cli.md, docs/cli/*.md, and the pages docs/cli.md's command table links to (docs/mcp.md). */
function cliPages(docs: readonly Doc[]): Doc[] {
  const files = new Set(["docs/cli.md", ...docs.map((d) => d.file).filter((f) => f.startsWith("docs/cli/"))]);
  for (const m of read("docs/cli.md").matchAll(/^\|.*\]\(([\w./-]+\.md)\)\s*\|\s*$/gm)) files.add(join("docs", m[1]!).replace(/\\/g, "/"));
  return docs.filter((d) => files.has(d.file));
}

/**
 * Does one of `texts` (a block and the headings above it) name command `c`: `lessor PATH`, its parent
 * with the name among alternatives (`secret set|get`), or a span starting with the name (`` `set` ``,
 * `` `approvals` ``) — for a subcommand, only where its parent is named too (`` `list` `` alone could
 * be any command's).
 */
function mentions(texts: string | readonly string[], c: Cmd): boolean {
  const all = (typeof texts === "string" ? [texts] : texts).map((t) => t.replace(/\\\|/g, "|"));
  const names = [c.cmd.name(), ...c.cmd.aliases()].map(escapeRe).join("|");
  const end = "(?![\\w-])";
  const span = new RegExp(`\`(?:lessor )?(?:${names})${end}`);
  if (c.parent === null || c.parent.path === "") return all.some((t) => new RegExp(`lessor (?:--home \\S+ )?(?:${names})${end}`).test(t) || span.test(t));
  const parent = escapeRe(c.parent.path);
  if (all.some((t) => new RegExp(`${parent} (?:[\\w-]+\\|)*(?:${names})${end}`).test(t))) return true;
  return all.some((t) => span.test(t)) && all.some((t) => mentions(t, c.parent!));
}

/** Does `text` name option `flag` (`--ttl`, `-o`), not as the start of a longer one? */
const namesOption = (text: string, flag: string): boolean => new RegExp(`(^|[^\\w-])${escapeRe(flag)}(?![\\w-])`).test(text);

/** Commands no CLI page names. */
function undocumentedCommands(docs: readonly Doc[]): string[] {
  const pages = cliPages(docs);
  return allCommands
    .filter((c) => c.path !== "")
    .filter((c) => !pages.some((d) => d.blocks.some((b) => mentions([...b.headings, b.text], c)) || d.code.some((k) => k.lines.some((l) => mentions(l, c)))))
    .map((c) => `lessor ${c.path}`);
}

/**
 * A statement about a whole group ("Commands that take a `NAME` also take `--scope S`" on the page of
 * `lessor secret`): a block under the group's name that names none of its subcommands.
 */
function forTheGroup(b: Block, c: Cmd): boolean {
  const group = c.parent;
  if (group === null || group.path === "") return false;
  return mentions([...b.headings, b.text], group) && !group.cmd.commands.some((s) => mentions(b.text, { path: `${group.path} ${s.name()}`, cmd: s, parent: group }));
}

/**
 * Options no CLI page documents beside their command: in a block (paragraph, list item, table, heading)
 * that, with the headings above it, names the command; or on a `lessor …` line of a code block. An
 * option with fixed choices must have each choice there too.
 */
function undocumentedOptions(docs: readonly Doc[]): string[] {
  const pages = cliPages(docs);
  const missing: string[] = [];
  for (const c of allCommands) {
    const near = (test: (text: string) => boolean): boolean =>
      pages.some(
        (d) =>
          d.blocks.some((b) => test(b.text) && (c.path === "" || mentions([...b.headings, b.text], c) || forTheGroup(b, c))) ||
          d.code.some((k) => k.lines.some((l) => invocations(l, "", true).some((inv) => test(inv.words.join(" ")) && mentions(`lessor ${inv.words.join(" ")}`, c)))),
      );
    for (const o of visibleOptions(c.cmd)) {
      const named = (t: string): boolean => flagsOf(o).some((f) => namesOption(t, f));
      if (!near(named)) missing.push(`lessor ${c.path} ${o.flags}`.replace(/ {2,}/g, " "));
      else for (const choice of o.argChoices ?? []) if (!near((t) => named(t) && new RegExp(`(^|[^\\w-])${escapeRe(choice)}(?![\\w-])`).test(t))) missing.push(`lessor ${c.path} ${o.long} ${choice}`);
    }
    for (const a of c.cmd.registeredArguments)
      for (const choice of a.argChoices ?? []) if (!near((t) => new RegExp(`(^|[^\\w-])${escapeRe(choice)}(?![\\w-])`).test(t))) missing.push(`lessor ${c.path} ${choice}`);
  }
  return missing;
}

test("every command of the program is documented on the CLI pages", () => {
  const missing = undocumentedCommands(realDocs);
  assert.deepEqual(missing, [], `commands no CLI page (${cliPages(realDocs).map((d) => d.file).join(", ")}) names:\n  ${missing.join("\n  ")}`);
});

test("every option of every command is documented beside its command on the CLI pages", () => {
  const missing = undocumentedOptions(realDocs);
  assert.deepEqual(missing, [], `options (src/cli/commands/*.ts) no CLI page documents beside their command:\n  ${missing.join("\n  ")}`);
});

/** One `lessor …` command line found in a text; `strict` when it surely is one (shell code, --help, an MCP configuration). */
interface Invocation {
  where: string;
  words: string[];
  strict: boolean;
}

/**
 * Where `lessor` starts a command: at the start, or after a pipe, `;`, `&&`, `$(`, `<(`, `!` (git's
 * `'!lessor …'`), `exec`/`sudo`/`env`, and variable assignments (`LESSOR_HOME=/srv/lessor lessor init`).
 */
const COMMAND_POSITION = /(?:^|[|;&]|\$\(|<\(|!|\b(?:exec|sudo|time|env|then|do|watch)\s)\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*$/;

/** A placeholder rather than a literal word: `NAME`, `<agent>`, `[options]`, `…`, `A`, `$X`. */
const placeholder = (w: string): boolean => w === "" || /^<|^\{|^\[[^-]|…|\.\.\.|^\$|^[A-Z][A-Z0-9_]*(\|[A-Z][A-Z0-9_]*)*$/.test(w);

/**
 * The `lessor …` command lines of a text. In shell code (`code`) a ` | ` is a pipe and `#` starts a
 * comment; in a usage line or a code span a ` | ` lists alternatives (`revoke LEASE_ID | --agent A |
 * --all`) unless a command follows it.
 */
function invocations(text: string, where: string, code: boolean, strict = code): Invocation[] {
  const out: Invocation[] = [];
  const line = code ? text.replace(/(^|\s)#.*$/, "") : text;
  for (const m of line.matchAll(/lessor(?=\s+\S)/g)) {
    if (!COMMAND_POSITION.test(line.slice(0, m.index).replace(/['"`]$/, ""))) continue;
    const rest = line.slice(m.index + m[0].length).trim().split(/\s+/);
    const words: string[] = [];
    for (let k = 0; k < rest.length; k++) {
      const raw = rest[k]!;
      if (/^(\|\||&&|;|>|>>|<|2>|2>&1|&|\|)$/.test(raw)) {
        const next = rest[k + 1] ?? "";
        if (code || raw !== "|" || !(next.startsWith("-") || next.startsWith("[") || placeholder(next))) break;
        continue;
      }
      if (/^['"`]|^\$\(/.test(raw) && words.length > 0) break; // a quoted value: the rest is its text
      const w = raw.replace(/[`'")]+[.,;:]?$|[.,;:]$/, "");
      if (w.length > 0) words.push(w);
      if (w !== raw.replace(/[.,;:]$/, "")) break; // a closing quote or parenthesis ends the command
    }
    out.push({ where, words, strict });
  }
  return out;
}

const SHELL_LANGS = new Set(["", "sh", "bash", "shell", "console", "zsh", "fish"]);

/** The command lines of the docs: shell code blocks, MCP client configurations, and code spans. */
function docInvocations(docs: readonly Doc[]): Invocation[] {
  const out: Invocation[] = [];
  for (const d of docs) {
    for (const b of d.code) {
      if (SHELL_LANGS.has(b.lang)) b.lines.forEach((l, i) => out.push(...invocations(l.replace(/^\s*\$ /, ""), `${d.file}:${b.line + i}`, true)));
      if (b.lang === "json") {
        // An MCP client's configuration: "command": "lessor", "args": [...].
        const text = b.lines.join("\n");
        for (const m of text.matchAll(/"command"\s*:\s*"lessor"\s*,\s*"args"\s*:\s*(\[[^\]]*\])/g))
          out.push({ where: `${d.file}:${b.line + text.slice(0, m.index).split("\n").length - 1}`, words: JSON.parse(m[1]!) as string[], strict: true });
      }
    }
    for (const blk of d.blocks) for (const s of spans(blk.text)) out.push(...invocations(s, `${d.file}:${lineOf(blk, s)}`, false));
  }
  return out;
}

/** What a command line gets wrong: an unknown command, or an option (or an option's value) the command refuses. */
interface Problem {
  kind: "command" | "option";
  message: string;
}

function checkInvocation(words: readonly string[]): Problem | null {
  let i = 0;
  let cmd: Command = program;
  const path: string[] = [];
  const find = (c: Command, flag: string): Option | undefined => {
    for (let x: Command | null = c; x; x = x.parent) {
      const o = x.options.find((op) => op.long === flag || op.short === flag);
      if (o) return o;
    }
    return undefined;
  };
  const clean = (w: string): string => w.replace(/^\[+/, "").replace(/(\]|…|\.\.\.)+$/, "");
  for (; i < words.length; i++) {
    const w = clean(words[i]!);
    if (w === "--home") i++;
    else if (!w.startsWith("--home=")) break;
  }
  // `lessor --version` answers before any command (src/cli/version-flag.ts); help is everywhere.
  if (["--version", "-V", "--help", "-h"].includes(clean(words[i] ?? ""))) return null;
  for (; i < words.length; i++) {
    const raw = words[i]!;
    if (placeholder(raw)) return null; // `lessor <command>`, `lessor audit [command]`
    const w = clean(raw);
    if (w.startsWith("-") || cmd.commands.length === 0) break;
    const alts = w.split("|");
    const subs = alts.map((a) => cmd.commands.find((s) => s.name() === a || s.aliases().includes(a)));
    if (subs.some((s) => s === undefined)) return { kind: "command", message: `lessor ${[...path, ""].join(" ")}has no command ${JSON.stringify(w)}` };
    if (subs.length > 1) return alts.map((a) => checkInvocation([...path, a, ...words.slice(i + 1)])).find((e) => e !== null) ?? null;
    cmd = subs[0]!;
    path.push(w);
  }
  const at = `lessor ${path.join(" ")}`.trim();
  for (; i < words.length; i++) {
    const w = clean(words[i]!);
    if (w === "--") break; // the command `run` starts
    if (!/^--?[A-Za-z]/.test(w)) continue;
    const eq = w.indexOf("=");
    const [flag, inlineValue] = eq > 0 ? [w.slice(0, eq), w.slice(eq + 1)] : [w, undefined];
    if (flag === "--help" || flag === "-h") continue;
    const o = find(cmd, flag);
    if (o === undefined || o.hidden) return { kind: "option", message: `${at} has no option ${flag}${o?.hidden ? " (a hidden option that is refused)" : ""}` };
    if (!o.required && !o.optional) continue;
    const values: string[] = [];
    if (inlineValue !== undefined) values.push(inlineValue);
    else if (i + 1 < words.length) values.push(clean(words[++i]!));
    if (o.variadic) while (i + 1 < words.length && !clean(words[i + 1]!).startsWith("-")) values.push(clean(words[++i]!));
    for (const v of values.flatMap((x) => x.split("|")))
      if (o.argChoices && !placeholder(v) && !o.argChoices.includes(v)) return { kind: "option", message: `${at} ${flag} takes ${o.argChoices.join(", ")}, not ${JSON.stringify(v)}` };
  }
  return null;
}

/** The problems of command lines: all for strict ones; for prose spans only past the command name (a span may say "lessor daemon"). */
function problems(invs: readonly Invocation[]): string[] {
  return invs.flatMap((inv) => {
    const p = checkInvocation(inv.words);
    return p === null || (p.kind === "command" && !inv.strict) ? [] : [`${inv.where}: ${p.message}  [lessor ${inv.words.join(" ")}]`];
  });
}

test("every `lessor …` command line in README.md and docs/ names commands and options the program has", () => {
  const invs = docInvocations(realDocs);
  assert.ok(invs.filter((x) => x.strict).length > 50 && invs.length > 200, `only ${invs.length} command lines found in the docs`);
  const bad = problems(invs);
  assert.deepEqual(bad, [], `command lines in the docs the CLI would refuse:\n  ${bad.join("\n  ")}`);
});

/**
 * What a command's --help says in its own words: the usage line and the text added before and after
 * it (the examples). The generated lists of commands and options are left out: their descriptions are prose.
 */
function helpText(c: Cmd): string {
  let text = `Usage: ${["lessor", ...(c.path ? [c.path] : []), c.cmd.usage()].join(" ")}\n`;
  const context = { error: false, command: c.cmd, write: (s: string) => void (text += s) };
  for (const event of ["beforeAllHelp", "beforeHelp", "afterHelp", "afterAllHelp"])
    for (let x: Command | null = c.cmd; x; x = event.endsWith("AllHelp") ? x.parent : null)
      // addHelpText() adds these listeners (a Command is an EventEmitter, which its typings do not say).
      for (const l of (x as unknown as EventEmitter).listeners(event)) (l as (ctx: typeof context) => void)(context);
  return text;
}

test("every `lessor …` line in the commands' own --help (usage and examples) names commands and options the program has", () => {
  const invs = allCommands.flatMap((c) =>
    helpText(c)
      .split("\n")
      .flatMap((l, i) => invocations(l.replace(/^Usage: /, ""), `lessor ${c.path} --help, line ${i + 1}`, !l.startsWith("Usage: "), true)),
  );
  assert.ok(invs.length > 100, `only ${invs.length} command lines found in --help`);
  const bad = problems(invs);
  assert.deepEqual(bad, [], bad.join("\n"));
});

test("a misspelt option is refused by every command, never silently ignored", async () => {
  // Nothing may run: each action is replaced by one that only records that it would have run.
  let ran = "";
  for (const c of allCommands) {
    c.cmd.action(() => void (ran = c.path || "(root)"));
    c.cmd.configureOutput({ writeOut: () => {}, writeErr: () => {}, outputError: () => {} });
    c.cmd.exitOverride();
  }
  const silent: string[] = [];
  for (const c of allCommands) {
    if (c.cmd.commands.length > 0) continue;
    const real = visibleOptions(c.cmd).flatMap((o) => (o.long ? [o.long] : []));
    const wrong = real.length > 0 ? `--${typo(real[0]!.slice(2))}` : "--zz-typo";
    if (real.includes(wrong)) continue;
    const args = [
      ...c.path.split(" "),
      ...c.cmd.registeredArguments.filter((a) => a.required).map((a) => a.argChoices?.[0] ?? "x"),
      ...c.cmd.options.filter((o) => o.mandatory).flatMap((o) => [flagsOf(o)[0]!, o.argChoices?.[0] ?? "x"]),
      wrong,
    ];
    ran = "";
    let code = "accepted";
    try {
      await program.parseAsync(args, { from: "user" });
    } catch (e) {
      code = e instanceof CommanderError ? e.code : String(e);
    }
    if (code !== "commander.unknownOption" || ran !== "") silent.push(`lessor ${args.join(" ")}: ${code}${ran ? " (the action ran)" : ""}`);
  }
  assert.deepEqual(silent, []);
});

// ═════════════════════════════ 3. exit codes and error codes ═════════════════════════════

/** The rows of the first table under a heading matching `heading` in `file`: its first cell, and the rest. */
function tableUnder(file: string, heading: RegExp): { first: string; text: string; line: number }[] {
  const lines = read(file).split("\n");
  const h = lines.findIndex((l) => /^#{1,6}\s/.test(l) && heading.test(l.replace(/^#+\s+/, "")));
  if (h < 0) return [];
  let i = h + 1;
  while (i < lines.length && !lines[i]!.trimStart().startsWith("|") && !/^#{1,6}\s/.test(lines[i]!)) i++;
  const rows: { first: string; text: string; line: number }[] = [];
  for (let k = i + 2; k < lines.length && lines[k]!.trimStart().startsWith("|"); k++) {
    const cells = lines[k]!.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim());
    if (cells.length >= 2) rows.push({ first: cells[0]!, text: cells.slice(1).join(" | "), line: k + 1 });
  }
  return rows;
}

const EXIT_HEADING = /^Exit codes$/i;
/** The CLI pages with an exit-code table. */
const exitPages = (): string[] => cliPages(realDocs).filter((d) => d.blocks.some((b) => b.kind === "heading" && EXIT_HEADING.test(b.text))).map((d) => d.file);

test("docs/cli.md's exit-code table is exactly src/cli/exit-codes.ts's EXIT, each row the kind its constant names", () => {
  const rows = tableUnder("docs/cli.md", EXIT_HEADING);
  assert.ok(rows.length > 0, "docs/cli.md has no table under ## Exit codes");
  const sorted = (xs: number[]): number[] => [...new Set(xs)].sort((a, b) => a - b);
  assert.deepEqual(sorted(rows.map((r) => Number(r.first))), sorted(Object.values(EXIT)));
  // `notFound` reads "not found…"; 0 and 1 read "success" and "another failure".
  const words: Record<string, string> = { ok: "success", error: "another failure" };
  for (const [name, code] of Object.entries(EXIT)) {
    const row = rows.find((r) => Number(r.first) === code)!;
    const want = words[name] ?? name.replace(/[A-Z]/g, (ch) => ` ${ch.toLowerCase()}`);
    assert.ok(row.text.toLowerCase().startsWith(want), `docs/cli.md:${row.line}: exit ${code} (EXIT.${name}) should read "${want}…", reads "${row.text}"`);
  }
});

test("every exit code of the docs' exit-code tables is one the CLI has a constant for; each error code a row names exits with that code", () => {
  // EXIT, and the other exit constants of src/cli (EXIT_CANCELLED = 130, …).
  const known = new Set<number>(Object.values(EXIT));
  for (const f of filesUnder("src/cli", /\.ts$/)) for (const m of read(f).matchAll(/export const EXIT_[A-Z_]+ = (\d+);/g)) known.add(Number(m[1]));
  const pages = exitPages();
  assert.ok(pages.includes("docs/cli.md") && pages.length >= 3, pages.join(", "));
  const bad: string[] = [];
  for (const f of pages)
    for (const r of tableUnder(f, EXIT_HEADING)) {
      if (!known.has(Number(r.first))) bad.push(`${f}:${r.line}: exit ${r.first}, which no constant of src/cli gives`);
      for (const s of spans(r.text))
        if (s in ERROR_CODES && exitCodeFor(s as ErrorCode) !== Number(r.first)) bad.push(`${f}:${r.line}: \`${s}\` under exit ${r.first}, but exitCodeFor gives ${exitCodeFor(s as ErrorCode)}`);
    }
  assert.deepEqual(bad, []);
});

test("docs/errors.md lists no code src/base/errors.ts lacks, each once; docs/protocol.md's error table is exactly the wire codes", () => {
  const rows = tableUnder("docs/errors.md", /^Errors$/).map((r) => r.first.replace(/`/g, ""));
  assert.ok(rows.length >= Object.keys(ERROR_CODES).length, `docs/errors.md: ${rows.length} rows`);
  assert.deepEqual(rows.filter((c) => !(c in ERROR_CODES)), [], "codes in docs/errors.md that src/base/errors.ts does not have");
  assert.deepEqual(rows.filter((c, i) => rows.indexOf(c) !== i), [], "codes listed twice in docs/errors.md");
  const wire = [...new Set((Object.keys(ERROR_CODES) as ErrorCode[]).map(wireCode))].sort();
  assert.deepEqual(tableUnder("docs/protocol.md", /^Errors$/).map((r) => r.first.replace(/`/g, "")).sort(), wire, "docs/protocol.md ## Errors against wireCode()");
});

// ═════════════════════════════ 4. environment variables ═════════════════════════════

/** The LESSOR_* names `files` read: `env.X`, `env["X"]`, or the name as a whole string literal. */
function envNamesIn(files: readonly string[]): Set<string> {
  const names = new Set<string>();
  for (const f of files) {
    const text = read(f);
    for (const m of text.matchAll(/env(?:\.|\[\s*["'`])(LESSOR_[A-Z0-9_]*[A-Z0-9])\b/g)) names.add(m[1]!);
    for (const m of text.matchAll(/["'`](LESSOR_[A-Z0-9_]*[A-Z0-9])["'`]/g)) names.add(m[1]!);
  }
  return names;
}

/** The LESSOR_* names the docs mention, each with its first place. */
function documentedEnv(): Map<string, string> {
  const out = new Map<string, string>();
  for (const f of ["README.md", ...filesUnder("docs", /\.md$/)])
    read(f)
      .split("\n")
      .forEach((l, i) => {
        for (const m of l.matchAll(/\bLESSOR_[A-Z0-9_]*[A-Z0-9]\b/g)) if (!out.has(m[0])) out.set(m[0], `${f}:${i + 1}`);
      });
  return out;
}

const CODE = /\.(ts|mts|cts|js|mjs|cjs)$/;

test("every LESSOR_* variable the code reads is documented", () => {
  const used = envNamesIn(filesUnder("src", CODE));
  assert.ok(used.has("LESSOR_HOME") && used.has("LESSOR_SOCKET") && used.has("LESSOR_MASTER_KEY"), [...used].join(", "));
  const docs = documentedEnv();
  assert.deepEqual([...used].filter((n) => !docs.has(n)).sort(), []);
});

test("every LESSOR_* variable the docs name is read by the code (src/; test/, bench/ or scripts/ for the test-only ones)", () => {
  const used = envNamesIn(["src", "test", "bench", "scripts"].flatMap((d) => filesUnder(d, CODE)));
  const bad = [...documentedEnv()].filter(([n]) => !used.has(n)).map(([n, where]) => `${where}: ${n}`);
  assert.deepEqual(bad, []);
});

test("no config snippet in the docs holds a bearer token itself: a client config is a file others may read or git may commit", () => {
  const bad: string[] = [];
  for (const f of ["README.md", ...filesUnder("docs", /\.md$/)])
    read(f)
      .split("\n")
      .forEach((l, i) => {
        // In a JSON or TOML value: "Bearer <anything but a ${VAR} the client expands>".
        if (/"Authorization"\s*[:=]\s*"Bearer (?!\$\{[A-Z_][A-Z0-9_]*\}")/i.test(l)) bad.push(`${f}:${i + 1}: ${l.trim()}`);
      });
  assert.deepEqual(bad, []);
});

// ═════════════════════════════ the checks see planted mistakes ═════════════════════════════

test("the checks catch planted mistakes", () => {
  const planted = parseDoc(
    "docs/cli/zz-planted.md",
    [
      "# planted",
      "",
      "```toml",
      "[vault]",
      "max_live_lease_per_agent = 5",
      "# keep_version = 3",
      "```",
      "",
      "```toml",
      "[sever]",
      "socket = \"x\"",
      "```",
      "",
      "Set `[run] netwrk = \"none\"` and `[run] network = \"nowhere\"` and `[sever] socket`.",
      "",
      "```sh",
      "lessor lease tok --max-use 1",
      "export T=$(lessor secret gett tok)",
      "lessor token create ci --role root",
      "lessor run --agent a -- curl --anything",
      "```",
      "",
      "Also `lessor leases --alive` and `lessor daemon answers`.",
      "",
      "`idle_timeout` (7 min); `max_connections`, 99 by default; `max_in_flight` (64 at once).",
      "",
      "The `run_hide` list, `rotate_secret` calls.",
    ].join("\n"),
  );
  const docs = [...realDocs, planted];
  const refused = refusedKeys("config", docs).filter((m) => m.startsWith("docs/cli/zz-planted.md"));
  assert.deepEqual(refused.sort(), [
    "docs/cli/zz-planted.md:10: a TOML block with a table neither lessor.toml nor policy.toml has ([sever])",
    "docs/cli/zz-planted.md:14: [run] netwrk",
    "docs/cli/zz-planted.md:14: [sever] socket",
    "docs/cli/zz-planted.md:5: [vault] max_live_lease_per_agent",
    "docs/cli/zz-planted.md:6: [vault] keep_version",
  ]);
  assert.ok(unloadableSnippets([planted]).some((m) => m.startsWith("docs/cli/zz-planted.md:14: `[run] network = \"nowhere\"`: config_invalid")), unloadableSnippets([planted]).join("\n"));
  assert.deepEqual(problems(docInvocations([planted])), [
    "docs/cli/zz-planted.md:17: lessor lease has no option --max-use  [lessor lease tok --max-use 1]",
    'docs/cli/zz-planted.md:18: lessor secret has no command "gett"  [lessor secret gett tok]',
    'docs/cli/zz-planted.md:19: lessor token create --role takes admin, orchestrator, agent, not "root"  [lessor token create ci --role root]',
    "docs/cli/zz-planted.md:23: lessor leases has no option --alive  [lessor leases --alive]",
  ]);
  assert.deepEqual(
    wrongDefaults([planted]).map((m) => m.replace(/ \(.*$/, "")),
    ["docs/cli/zz-planted.md:25: the docs give [server] idle_timeout the default 7 min, but the parser's default differs", "docs/cli/zz-planted.md:25: the docs give [server] max_connections the default 99, but the parser's default differs"],
  );
  assert.deepEqual(misnamedKeys([planted]), ["docs/cli/zz-planted.md:27: `run_hide` (lessor.toml has [run] hide, no run_hide)"]);
  // Without the docs, everything is undocumented; a page that names a command and its option documents both.
  const bare = parseDoc("docs/cli.md", "");
  assert.ok(undocumentedKeys("config", [bare]).includes("[vault] max_live_leases_per_agent"));
  assert.ok(undocumentedCommands([bare]).includes("lessor secret set"));
  assert.ok(undocumentedOptions([bare]).includes("lessor lease --max-uses <n>"));
  const page = parseDoc("docs/cli.md", "## `lessor lease NAME [--max-uses N]`\n\n- `secret get NAME`: with `--reveal`\n\nThe limits in `[vault]`: `max_live_leases_per_agent`.\n");
  assert.ok(!undocumentedCommands([page]).includes("lessor secret get") && !undocumentedCommands([page]).includes("lessor lease"));
  assert.ok(!undocumentedOptions([page]).includes("lessor lease --max-uses <n>") && !undocumentedOptions([page]).includes("lessor secret get --reveal"));
  assert.ok(undocumentedOptions([page]).includes("lessor secret get --json"));
  assert.ok(!undocumentedKeys("config", [page]).includes("[vault] max_live_leases_per_agent"));
});
