/**
 * A field path applied to a secret's value: the keys of the path, and the piece of a JSON value they
 * pick out, read from the text as stored (numbers keep their exact digits) and never quoting the
 * value in an error. The CLI's references (`secret#field`, src/cli/refs/) pick with it, and the vault
 * checks with it, before a use counts, that the field an injecting proxy is about to send is there
 * (`access_secret`'s `field`, src/vault/leases.ts).
 */
import { SecretBytes } from "../crypto/secret-bytes.js";
import { VaultError } from "../base/errors.js";

/** The longest field path. */
export const MAX_FIELD_PATH = 256;

/** A field path: keys of ASCII letters, digits, "_" and "-" joined by ".", "\." for a dot inside a key. */
const FIELD_PATH = /^(?:[A-Za-z0-9_-]|\\\.)+(?:\.(?:[A-Za-z0-9_-]|\\\.)+)*$/;

/**
 * The keys of a field path, unescaped (`a\.b.c` -> ["a.b", "c"]). Throws VaultError("invalid_request")
 * on anything else (the CLI's reference grammar says where a path it parses goes wrong first).
 */
export function fieldKeys(field: string): string[] {
  if (typeof field !== "string") throw new VaultError("invalid_request", "a field path must be a string");
  if (field.length > MAX_FIELD_PATH || !FIELD_PATH.test(field))
    throw new VaultError(
      "invalid_request",
      `not a field path: a field path is at most ${MAX_FIELD_PATH} characters, keys of letters, digits, "_" and "-" joined by ".", with "\\." for a dot inside a key`,
    );
  return field.split(/(?<!\\)\./).map((k) => k.replaceAll("\\.", "."));
}

function isWs(c: string | undefined): boolean {
  return c === " " || c === "\t" || c === "\n" || c === "\r";
}
function skipWs(t: string, i: number): number {
  while (isWs(t[i])) i++;
  return i;
}
function skipString(t: string, i: number): number {
  i++;
  while (t[i] !== '"') i += t[i] === "\\" ? 2 : 1;
  return i + 1;
}
/** End of the (valid) JSON value starting at `i`. */
function skipValue(t: string, i: number): number {
  const c = t[i];
  if (c === '"') return skipString(t, i);
  if (c === "{" || c === "[") {
    let depth = 0;
    for (;;) {
      const d = t[i];
      if (d === '"') {
        i = skipString(t, i);
        continue;
      }
      if (d === "{" || d === "[") depth++;
      else if ((d === "}" || d === "]") && --depth === 0) return i + 1;
      i++;
    }
  }
  while (i < t.length && !isWs(t[i]) && t[i] !== "," && t[i] !== "]" && t[i] !== "}") i++;
  return i;
}
/** Start of the value of `key` in the object at `i` (the last one, as JSON.parse does), or -1. */
function member(t: string, i: number, key: string): number {
  let found = -1;
  i = skipWs(t, i + 1);
  if (t[i] === "}") return -1;
  for (;;) {
    const keyEnd = skipString(t, i);
    const k = JSON.parse(t.slice(i, keyEnd)) as string;
    i = skipWs(t, skipWs(t, keyEnd) + 1);
    if (k === key) found = i;
    i = skipWs(t, skipValue(t, i));
    if (t[i] === "}") return found;
    i = skipWs(t, i + 1);
  }
}
/** Start of element `index` of the array at `i`, or -1. */
function element(t: string, i: number, index: number): number {
  i = skipWs(t, i + 1);
  if (t[i] === "]") return -1;
  for (let n = 0; ; n++) {
    if (n === index) return i;
    i = skipWs(t, skipValue(t, i));
    if (t[i] === "]") return -1;
    i = skipWs(t, i + 1);
  }
}
/** Drops insignificant whitespace; numbers keep their exact digits. */
function compact(t: string): string {
  let out = "";
  for (let i = 0; i < t.length; ) {
    if (t[i] === '"') {
      const e = skipString(t, i);
      out += t.slice(i, e);
      i = e;
    } else {
      if (!isWs(t[i])) out += t[i];
      i++;
    }
  }
  return out;
}

/**
 * Picks `field` out of a secret whose value is a JSON object (numeric keys also index arrays). A
 * string comes back as its UTF-8 bytes; any other JSON value as compact JSON with numbers exactly as
 * stored. Throws VaultError("invalid_request") naming the field, never showing the value.
 */
export function extractField(value: SecretBytes, field: string): SecretBytes {
  const keys = fieldKeys(field);
  const where = `field ${JSON.stringify(field)}`;
  let t: string;
  try {
    t = new TextDecoder("utf-8", { fatal: true }).decode(value.expose());
    JSON.parse(t);
  } catch {
    // Never pass the parse error on: its message quotes the value.
    throw new VaultError(
      "invalid_request",
      `the secret's value is not JSON, so ${where} cannot be picked out of it: store a JSON object, or drop the field from the reference`,
    );
  }
  let i = skipWs(t, 0);
  for (let n = 0; n < keys.length; n++) {
    const key = keys[n]!;
    const path = n === 0 ? "the top level" : JSON.stringify(keys.slice(0, n).map((k) => k.replaceAll(".", "\\.")).join("."));
    const c = t[i];
    let next = -1;
    if (c === "{") next = member(t, i, key);
    else if (c === "[") next = /^(?:0|[1-9][0-9]{0,8})$/.test(key) ? element(t, i, Number(key)) : -1;
    else
      throw new VaultError(
        "invalid_request",
        `${where} cannot be picked out: the value at ${path} is not a JSON object or array`,
      );
    if (next < 0)
      throw new VaultError("invalid_request", `${where} is not in the secret's value: nothing named ${JSON.stringify(key)} at ${path}`);
    i = next;
  }
  const raw = t.slice(i, skipValue(t, i));
  return SecretBytes.from(raw.startsWith('"') ? (JSON.parse(raw) as string) : compact(raw));
}
