/**
 * The field part of a reference applied to a value: src/vault/json-field.ts, with a malformed path
 * explained by the reference grammar (which position, what was expected) before it is used.
 */
import type { SecretBytes } from "../../crypto/secret-bytes.js";
import { VaultError } from "../../base/errors.js";
import { extractField as pick, fieldKeys as keys } from "../../vault/json-field.js";
import { checkField } from "./grammar.js";

/** The keys of a field path, unescaped (`a\.b.c` -> ["a.b", "c"]). Throws on a malformed path. */
export function fieldKeys(field: string): string[] {
  if (typeof field !== "string") throw new VaultError("invalid_request", "a field path must be a string");
  checkField(field);
  return keys(field);
}

/**
 * Picks `field` out of a secret whose value is a JSON object (numeric keys also index arrays). A
 * string comes back as its UTF-8 bytes; any other JSON value as compact JSON with numbers exactly as
 * stored. Throws VaultError("invalid_request") naming the field, never showing the value.
 */
export function extractField(value: SecretBytes, field: string): SecretBytes {
  fieldKeys(field);
  return pick(value, field);
}
