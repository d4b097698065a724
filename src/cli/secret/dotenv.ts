/**
 * The dotenv export format (docs/cli/secret.md). One secret per line, `NAME="value"`, the name being
 * the secret's name (one scope per file). Inside double quotes the escapes are `\\ \" \n \r \t \$`;
 * `$` is escaped so no tool interpolates it. A value that is not valid UTF-8 text, or that holds a
 * control character other than tab, CR and LF (C1 included), a bidi or invisible format character or
 * a line or paragraph separator, is written unquoted as `NAME=base64:<standard base64>`.
 * An unquoted `base64:` value is therefore bytes; a quoted one is plain text.
 *
 * The parser also reads hand-written files: `export NAME=…`, `# comments`, blank lines, single-quoted
 * literals, unquoted values (trimmed, ending at ` #`), and double-quoted values spanning lines.
 */
import { decodeBase64Strict, isText } from "./entry.js";
import { errorAt, position } from "./parse-error.js";

/** A dotenv key: what shells and most tools accept as an environment variable name. */
export const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** A name and its bytes. */
export interface DotenvEntry {
  name: string;
  value: Buffer;
  /** 1-based line of the key (parse results only). */
  line?: number;
}

/**
 * What a quoted value may not hold: C0 controls but tab, CR and LF (which are escaped), DEL, the C1
 * controls (U+009B is CSI to many terminals), format characters (bidi overrides, zero-width), lone
 * surrogates and the line and paragraph separators: an export printed to a terminal (no `-o`) would
 * act on it or read as something else. Such values go as base64, which imports back to the bytes.
 */
const NEEDS_BASE64 = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/u;

/** The right-hand side for one value: a double-quoted escaped string, or `base64:…` for bytes. */
export function dotenvValue(value: Buffer): string {
  if (isText(value)) {
    const text = value.toString("utf8");
    if (!NEEDS_BASE64.test(text))
      return `"${text.replace(/[\\"\n\r\t$]/g, (c) => ({ "\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", $: "\\$" })[c]!)}"`;
  }
  return `base64:${value.toString("base64")}`;
}

/** Writes entries as dotenv lines after `header` comment lines. Names must match {@link ENV_KEY}. */
export function formatDotenv(entries: readonly DotenvEntry[], header: readonly string[] = []): string {
  const lines = header.map((h) => `# ${h}`);
  for (const e of [...entries].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    if (!ENV_KEY.test(e.name)) throw new Error(`not a dotenv key: ${e.name}`);
    lines.push(`${e.name}=${dotenvValue(e.value)}`);
  }
  return `${lines.join("\n")}\n`;
}

const DQ_ESCAPES: Record<string, string> = { "\\": "\\", '"': '"', n: "\n", r: "\r", t: "\t", $: "$" };

/** Parses dotenv text. Throws ParseError (line and column) on anything it does not understand. */
export function parseDotenv(text: string): DotenvEntry[] {
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  const out: DotenvEntry[] = [];
  const seen = new Map<string, number>();
  const fail = (at: number, msg: string) => errorAt(text, at, msg);
  const blanks = () => {
    while (text[i] === " " || text[i] === "\t") i++;
  };
  const atEol = () => i >= text.length || text[i] === "\n" || (text[i] === "\r" && text[i + 1] === "\n");
  const skipEol = () => {
    if (text[i] === "\r") i++;
    if (text[i] === "\n") i++;
  };
  const restOfLine = () => {
    while (!atEol()) i++;
  };

  while (i < text.length) {
    blanks();
    if (atEol()) {
      skipEol();
      continue;
    }
    if (text[i] === "#") {
      restOfLine();
      skipEol();
      continue;
    }
    if (/^export[ \t]/.test(text.slice(i, i + 7))) {
      i += 6;
      blanks();
    }
    const keyAt = i;
    const key = /^[A-Za-z_][A-Za-z0-9_]*/.exec(text.slice(i, i + 200))?.[0];
    if (key === undefined) throw fail(i, "expected NAME=VALUE; a name starts with a letter or _ and has only letters, digits and _");
    i += key.length;
    if (key.length > 128) throw fail(keyAt, "a name has at most 128 characters");
    blanks();
    if (text[i] !== "=") throw fail(i, `expected "=" after the name`);
    i++;
    blanks();

    let value: Buffer;
    const valueAt = i;
    if (text[i] === '"') {
      i++;
      let s = "";
      for (;;) {
        if (i >= text.length) throw fail(valueAt, `the double-quoted value of ${key} is never closed`);
        const c = text[i]!;
        if (c === '"') {
          i++;
          break;
        }
        if (c === "\\") {
          const e = text[i + 1];
          const r = e === undefined ? undefined : DQ_ESCAPES[e];
          if (r === undefined) throw fail(i, `unknown escape in the value of ${key}; use \\\\ \\" \\n \\r \\t or \\$`);
          s += r;
          i += 2;
          continue;
        }
        s += c;
        i++;
      }
      value = Buffer.from(s, "utf8");
    } else if (text[i] === "'") {
      const end = text.indexOf("'", i + 1);
      if (end < 0) throw fail(valueAt, `the single-quoted value of ${key} is never closed`);
      value = Buffer.from(text.slice(i + 1, end), "utf8");
      i = end + 1;
    } else {
      const start = i;
      while (!atEol() && !((text[i] === " " || text[i] === "\t") && text[i + 1] === "#")) i++;
      const raw = text.slice(start, i).replace(/[ \t]+$/, "");
      if (raw.startsWith("base64:")) {
        const b = decodeBase64Strict(raw.slice(7));
        if (b === null) throw fail(start + 7, `the base64: value of ${key} is not valid standard base64 (with = padding)`);
        value = b;
      } else value = Buffer.from(raw, "utf8");
    }
    blanks();
    if (text[i] === "#") restOfLine();
    if (!atEol()) throw fail(i, `unexpected text after the value of ${key}; put a comment after " #", or quote the whole value`);
    skipEol();

    const line = position(text, keyAt).line;
    const before = seen.get(key);
    if (before !== undefined) throw fail(keyAt, `${key} is set twice (first on line ${before})`);
    seen.set(key, line);
    out.push({ name: key, value, line });
  }
  return out;
}
