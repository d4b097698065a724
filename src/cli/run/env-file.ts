/**
 * A strict dotenv parser for `lessor run --env-file`. Accepted, line by line:
 *
 *   # a comment             blank lines too
 *   KEY=value               unquoted: trimmed; ` #…` after whitespace is a comment
 *   export KEY=value        the `export ` prefix is ignored
 *   KEY='literal $S:x'      single quotes: taken as is, may span lines, no escapes
 *   KEY="a\nb \"q\""        double quotes: \n \r \t \\ \" \$ escapes, may span lines
 *
 * No `${VAR}` expansion (a `$` is literal, so `$S:name` references pass through). Later keys win.
 * Errors name the file, the line and the column, never the value.
 */
import { VaultError } from "../../base/errors.js";

/** One assignment, with the line it started on. */
export interface EnvEntry {
  key: string;
  value: string;
  line: number;
}

const KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

function fail(where: string, line: number, col: number, what: string): never {
  throw new VaultError("invalid_request", `${where}:${line}:${col}: ${what}`);
}

/**
 * Parses dotenv text. `where` names the source in errors (usually the file path).
 * Returns the entries in file order (a key may repeat; the caller lets the later one win).
 */
export function parseEnvFile(text: string, where: string): EnvEntry[] {
  const src = text.startsWith("\uFEFF") ? text.slice(1) : text;
  const lines = src.split(/\r?\n/);
  // No environment variable can hold a NUL byte (the process would not start): refused, naming where.
  const nul = lines.findIndex((l) => l.includes("\0"));
  if (nul >= 0) fail(where, nul + 1, lines[nul]!.indexOf("\0") + 1, "a NUL byte, which no environment variable can hold; remove it");
  const out: EnvEntry[] = [];
  for (let i = 0; i < lines.length; i++) {
    const lineNo = i + 1;
    const raw = lines[i]!;
    const body = raw.trimStart();
    if (body === "" || body.startsWith("#")) continue;
    let rest = body;
    let col = raw.length - body.length + 1;
    if (/^export\s/.test(rest)) {
      const after = rest.slice(6).trimStart();
      col += rest.length - after.length;
      rest = after;
    }
    const eq = rest.indexOf("=");
    if (eq < 0) fail(where, lineNo, col, 'expected KEY=value (no "=" on this line)');
    const key = rest.slice(0, eq).trimEnd();
    // The text is not quoted: a line that is not KEY=value may be a value (an unquoted key's first line).
    if (!KEY_RE.test(key)) fail(where, lineNo, col, 'expected KEY=value with a variable name before "=": letters, digits and "_", not starting with a digit');
    let valueCol = col + eq + 1;
    let v = rest.slice(eq + 1);
    const trimmed = v.trimStart();
    valueCol += v.length - trimmed.length;
    v = trimmed;
    const q = v[0];
    if (q === '"' || q === "'") {
      // Quoted: may continue on the following lines until the closing quote.
      let acc = "";
      let pos = 1;
      let cur = v;
      let curLine = i;
      let curCol = valueCol;
      for (;;) {
        if (pos >= cur.length) {
          if (curLine + 1 >= lines.length) fail(where, lineNo, valueCol, `the ${q === '"' ? "double" : "single"}-quoted value of ${key} is never closed; add the closing ${q}`);
          acc += "\n";
          curLine++;
          cur = lines[curLine]!;
          pos = 0;
          curCol = 1;
          continue;
        }
        const c = cur[pos]!;
        if (c === q) break;
        if (q === '"' && c === "\\") {
          const n = cur[pos + 1];
          const map: Record<string, string> = { n: "\n", r: "\r", t: "\t", "\\": "\\", '"': '"', $: "$" };
          if (n !== undefined && map[n] !== undefined) {
            acc += map[n];
            pos += 2;
            continue;
          }
          if (n === undefined) {
            // a backslash at the end of a line: keep it literally, the value goes on
            acc += "\\";
            pos += 1;
            continue;
          }
          fail(where, curLine + 1, curCol + pos, `unknown escape \\${n} in the value of ${key}; use \\n, \\r, \\t, \\\\, \\" or \\$`);
        }
        acc += c;
        pos++;
      }
      const tail = cur.slice(pos + 1);
      const junk = tail.trimStart();
      if (junk !== "" && !junk.startsWith("#"))
        fail(where, curLine + 1, curCol + pos + 1 + (tail.length - junk.length), `unexpected text after the closing quote of ${key}; put a comment after " #" or quote the whole value`);
      out.push({ key, value: acc, line: lineNo });
      i = curLine;
      continue;
    }
    // Unquoted: up to an inline comment (" #"), trimmed.
    const hash = v.search(/\s#/);
    const value = (hash >= 0 ? v.slice(0, hash) : v).trimEnd();
    out.push({ key, value, line: lineNo });
  }
  return out;
}
