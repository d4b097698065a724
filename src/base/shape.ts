/**
 * The shape of a call's parameters, checked where a program hands them to the vault in-process (the
 * daemon checks what arrives on a socket against the registry's schemas first): a mistake is answered
 * with VaultError("invalid_request") naming what was expected, never a TypeError from deeper down.
 */
import { VaultError } from "./errors.js";

/** True for an object that is not null and not an array. */
function isObject(v: unknown): v is object {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** `v`, refused unless it is an object; `what` names it in the message ("the lease request"). */
export function objectParam<T>(v: T, what: string): T {
  if (!isObject(v)) throw new VaultError("invalid_request", `${what} must be an object, not ${v === null ? "null" : Array.isArray(v) ? "a list" : typeof v}`);
  return v;
}

/** An optional object parameter: undefined stands for `{}`; anything else but an object is refused. */
export function optionalObjectParam<T extends object>(v: T | undefined, what: string): T {
  return v === undefined ? ({} as T) : objectParam(v, what);
}
