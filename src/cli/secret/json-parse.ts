/**
 * A strict JSON parser that keeps where each value starts, so import errors can name a line and
 * column, and that refuses duplicate keys (JSON.parse keeps the last one silently). Its messages
 * never quote the text around the error, which may be a secret value.
 */
import { errorAt, position } from "./parse-error.js";

/** A parsed JSON value with the offset where it starts. */
export type JsonNode =
  | { type: "object"; at: number; entries: { key: string; keyAt: number; value: JsonNode }[] }
  | { type: "array"; at: number; items: JsonNode[] }
  | { type: "string"; at: number; value: string }
  | { type: "number"; at: number; value: number }
  | { type: "boolean"; at: number; value: boolean }
  | { type: "null"; at: number };

const ESCAPES: Record<string, string> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

/** Parses `text` as one JSON value. Throws ParseError. */
export function parseJson(text: string): JsonNode {
  let i = 0;
  const lineOf = (at: number) => position(text, at).line;
  const fail = (at: number, msg: string) => errorAt(text, at, msg);
  const ws = () => {
    while (i < text.length && (text[i] === " " || text[i] === "\t" || text[i] === "\n" || text[i] === "\r")) i++;
  };
  const expect = (ch: string, what: string) => {
    ws();
    if (text[i] !== ch) throw fail(i, i >= text.length ? `the file ends where ${what} was expected` : `expected ${what}`);
    i++;
  };

  const str = (): string => {
    const start = i;
    i++; // the opening quote
    let out = "";
    for (;;) {
      if (i >= text.length) throw fail(start, "this string is never closed");
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        return out;
      }
      if (c < 0x20) throw fail(i, "a control character must be escaped inside a string (for example \\n)");
      if (c === 0x5c) {
        const e = text[i + 1];
        if (e === "u") {
          const hex = text.slice(i + 2, i + 6);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) throw fail(i, "\\u must be followed by four hex digits");
          out += String.fromCharCode(parseInt(hex, 16));
          i += 6;
        } else if (e !== undefined && ESCAPES[e] !== undefined) {
          out += ESCAPES[e];
          i += 2;
        } else throw fail(i, "unknown escape in a string");
        continue;
      }
      out += text[i];
      i++;
    }
  };

  const value = (depth: number): JsonNode => {
    if (depth > 64) throw fail(i, "nested too deeply");
    ws();
    const at = i;
    const c = text[i];
    if (c === "{") {
      i++;
      const entries: { key: string; keyAt: number; value: JsonNode }[] = [];
      const seen = new Map<string, number>();
      ws();
      if (text[i] === "}") {
        i++;
        return { type: "object", at, entries };
      }
      for (;;) {
        ws();
        if (text[i] !== '"') throw fail(i, i >= text.length ? "the file ends inside an object" : 'expected a key in double quotes');
        const keyAt = i;
        const key = str();
        const first = seen.get(key);
        if (first !== undefined) throw fail(keyAt, `this key appears twice in the same object (first at line ${lineOf(first)})`);
        seen.set(key, keyAt);
        expect(":", '":" after the key');
        entries.push({ key, keyAt, value: value(depth + 1) });
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "}") {
          i++;
          return { type: "object", at, entries };
        }
        throw fail(i, i >= text.length ? "the file ends inside an object" : 'expected "," or "}"');
      }
    }
    if (c === "[") {
      i++;
      const items: JsonNode[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return { type: "array", at, items };
      }
      for (;;) {
        items.push(value(depth + 1));
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "]") {
          i++;
          return { type: "array", at, items };
        }
        throw fail(i, i >= text.length ? "the file ends inside an array" : 'expected "," or "]"');
      }
    }
    if (c === '"') return { type: "string", at, value: str() };
    for (const [word, node] of [
      ["true", { type: "boolean", at, value: true }],
      ["false", { type: "boolean", at, value: false }],
      ["null", { type: "null", at }],
    ] as const) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return node;
      }
    }
    const m = /^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/.exec(text.slice(i, i + 400));
    if (m) {
      i += m[0].length;
      return { type: "number", at, value: Number(m[0]) };
    }
    throw fail(i, i >= text.length ? "the file ends where a value was expected" : "expected a JSON value");
  };

  const root = value(0);
  ws();
  if (i < text.length) throw fail(i, "unexpected text after the JSON value");
  return root;
}
