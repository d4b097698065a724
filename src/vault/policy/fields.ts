/**
 * Readers for the fields of a TOML table: each returns the value when it is there and of the right
 * type, undefined when it is absent, and throws a policy_invalid error naming the field otherwise.
 */
import { isVaultError } from "../../base/errors.js";
import { expected, fieldError, unknownKey } from "./messages.js";

/** A TOML table as smol-toml returns it. */
export type Table = Record<string, unknown>;

/** True for a TOML table (not a list, not a date). */
export function isTable(v: unknown): v is Table {
  return v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Date);
}

/** Throws unless every key of `t` is one of `allowed` (`what` names them in the message: "field"). */
export function checkKeys(t: Table, allowed: readonly string[], where: string, what: string): void {
  for (const key of Object.keys(t)) if (!allowed.includes(key)) throw unknownKey(where, key, allowed, what);
}

/** true or false. */
export function readBool(t: Table, key: string, where: string): boolean | undefined {
  const v = t[key];
  if (v === undefined || typeof v === "boolean") return v;
  throw expected(where, key, "true or false", v);
}

/** A whole number of at least `min`. */
export function readInt(t: Table, key: string, where: string, min: 0 | 1): number | undefined {
  const v = t[key];
  if (v === undefined) return undefined;
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= min) return v;
  const what = min === 1 ? "a whole number of at least 1, such as 100" : "a whole number of at least 0, such as 3";
  throw expected(where, key, what, v);
}

/** A list of strings; `example` is shown in the message when the type is wrong. */
export function readStringList(t: Table, key: string, where: string, example: string): string[] | undefined {
  const v = t[key];
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.some((x) => typeof x !== "string"))
    throw expected(where, key, `a list of strings such as ${example}`, v);
  return v as string[];
}

/** A list of strings that must be there and not be empty. */
export function readRequiredList(t: Table, key: string, where: string, example: string): string[] {
  const list = readStringList(t, key, where, example);
  if (list === undefined) throw fieldError(where, key, `is required: give a non-empty list such as ${example}`);
  if (list.length === 0) throw fieldError(where, key, `expected a non-empty list such as ${example}, got an empty list`);
  return list;
}

/** Compiles each item, turning a compile error into one that names the field and item. */
export function compileEach<T>(list: readonly string[], where: string, key: string, compile: (s: string) => T): T[] {
  return list.map((item, i) => {
    try {
      return compile(item);
    } catch (e) {
      if (!isVaultError(e)) throw e;
      throw fieldError(where, key, `item ${i + 1}: ${e.message}`);
    }
  });
}
