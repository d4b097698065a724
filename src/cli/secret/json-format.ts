/**
 * The JSON export format (docs/cli/secret.md):
 *
 * { "<scope/name>": { "value": "…", "encoding": "utf8" | "base64", "kind": "…", "description": "…", "tags": ["…"] } }
 *
 * `encoding` is "utf8" when the bytes are valid UTF-8 (the value is that text) and "base64" otherwise
 * (standard base64 with padding), so any value survives export then import byte for byte.
 */
import { VaultError } from "../../base/errors.js";
import { parseRefString, refString } from "../../base/names.js";
import { SECRET_KINDS, type SecretKind } from "../../base/types.js";
import { decodeBase64Strict, isText, type SecretEntry } from "./entry.js";
import { hasLoneSurrogate, safeJson } from "../../base/text.js";
import { parseJson, type JsonNode } from "./json-parse.js";
import { errorAt, position } from "./parse-error.js";
import { checkDescription, checkTags } from "../../vault/secrets.js";

/** One entry of the JSON export file. */
export interface JsonExportEntry {
  value: string;
  encoding: "utf8" | "base64";
  kind?: SecretKind;
  description?: string;
  tags?: string[];
}

/** Writes entries as the JSON export file (keys sorted, two-space indent, final newline). */
export function formatJson(entries: readonly SecretEntry[]): string {
  const out: Record<string, JsonExportEntry> = {};
  const sorted = [...entries].sort((a, b) => (refString(a) < refString(b) ? -1 : refString(a) > refString(b) ? 1 : 0));
  for (const e of sorted) {
    const text = isText(e.value);
    const item: JsonExportEntry = { value: e.value.toString(text ? "utf8" : "base64"), encoding: text ? "utf8" : "base64" };
    if (e.kind !== undefined) item.kind = e.kind;
    if (e.description !== undefined) item.description = e.description;
    if (e.tags !== undefined) item.tags = e.tags;
    out[refString(e)] = item;
  }
  // C1 controls, bidi and invisible characters as \u escapes (JSON.stringify leaves them raw): an
  // export printed to a terminal cannot act on it, and the text parses back to the same values.
  return `${safeJson(out, 2)}\n`;
}

const FIELDS = ["value", "encoding", "kind", "description", "tags"];

/** Parses a JSON export file. Throws ParseError (with line and column) on anything unexpected. */
export function parseJsonExport(text: string): SecretEntry[] {
  const root = parseJson(text);
  const fail = (node: { at: number }, msg: string) => errorAt(text, node.at, msg);
  if (root.type !== "object") throw fail(root, 'expected an object of "scope/name": { "value": … } entries');
  const entries: SecretEntry[] = [];
  /** Where each secret was named first: `x` and `global/x` are one secret. */
  const named = new Map<string, number>();
  for (const { key, keyAt, value: node } of root.entries) {
    let ref;
    try {
      ref = parseRefString(key);
    } catch (e) {
      throw errorAt(text, keyAt, e instanceof VaultError ? e.message : "not a secret name");
    }
    const first = named.get(refString(ref));
    if (first !== undefined) throw errorAt(text, keyAt, `${key} is ${refString(ref)}, named already at line ${position(text, first).line}; give each secret once`);
    named.set(refString(ref), keyAt);
    if (node.type !== "object") throw fail(node, `the entry for ${key} must be an object with a "value"`);
    const get = (f: string): JsonNode | undefined => node.entries.find((x) => x.key === f)?.value;
    for (const f of node.entries)
      if (!FIELDS.includes(f.key)) throw errorAt(text, f.keyAt, `unknown field in the entry for ${key}; the fields are ${FIELDS.join(", ")}`);

    const enc = get("encoding");
    let encoding = "utf8";
    if (enc !== undefined) {
      if (enc.type !== "string" || (enc.value !== "utf8" && enc.value !== "base64")) throw fail(enc, 'encoding must be "utf8" or "base64"');
      encoding = enc.value;
    }
    const v = get("value");
    if (v === undefined) throw fail(node, `the entry for ${key} has no "value"`);
    if (v.type !== "string") throw fail(v, `the value of ${key} must be a string`);
    let bytes: Buffer;
    if (encoding === "base64") {
      const b = decodeBase64Strict(v.value);
      if (b === null) throw fail(v, `the value of ${key} is not valid standard base64 (with = padding)`);
      bytes = b;
    } else {
      if (hasLoneSurrogate(v.value)) throw fail(v, `the value of ${key} has an unpaired \\u surrogate, which UTF-8 cannot hold; give the bytes with "encoding": "base64"`);
      bytes = Buffer.from(v.value, "utf8");
    }
    const entry: SecretEntry = { ...ref, value: bytes, line: position(text, keyAt).line };

    const kind = get("kind");
    if (kind !== undefined) {
      if (kind.type !== "string" || !(SECRET_KINDS as readonly string[]).includes(kind.value))
        throw fail(kind, `kind must be one of ${SECRET_KINDS.join(", ")}`);
      entry.kind = kind.value as SecretKind;
    }
    const desc = get("description");
    if (desc !== undefined) {
      if (desc.type !== "string") throw fail(desc, "description must be a string");
      // The vault's own rules, here, so that nothing is stored when a later entry breaks them.
      try {
        entry.description = checkDescription(desc.value);
      } catch (e) {
        throw fail(desc, e instanceof VaultError ? e.message : "description is not valid");
      }
    }
    const tags = get("tags");
    if (tags !== undefined) {
      if (tags.type !== "array" || !tags.items.every((t) => t.type === "string")) throw fail(tags, "tags must be an array of strings");
      try {
        entry.tags = checkTags(tags.items.map((t) => (t as { value: string }).value));
      } catch (e) {
        throw fail(tags, e instanceof VaultError ? e.message : "tags are not valid");
      }
    }
    entries.push(entry);
  }
  return entries;
}
