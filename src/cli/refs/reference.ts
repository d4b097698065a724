/**
 * One whole secret reference (the grammar is in ./grammar.ts): parsing one, with an error that says
 * what is wrong and at which 1-based position, and writing one in any of the three forms.
 */
import { VaultError } from "../../base/errors.js";
import { isScope, isSecretName } from "../../base/names.js";
import { CANONICAL, checkField, ParseFail, scanWhole, SECRET_URL, show, ZLAYER, type ParsedReference, type ReferenceForm, type SecretFieldRef } from "./grammar.js";

/**
 * Parses one reference (the whole string). Throws VaultError("invalid_request") saying what is wrong
 * and where (1-based position), e.g. `reference "lessor://global/": position 17: expected a secret name`.
 */
export function parseReference(s: string): ParsedReference {
  if (typeof s !== "string") throw new VaultError("invalid_request", "a reference must be a string");
  try {
    return scanWhole(s);
  } catch (e) {
    if (e instanceof ParseFail)
      throw new VaultError("invalid_request", `reference ${show(s)}: position ${e.at + 1}: ${e.what}`);
    throw e;
  }
}

/** Like {@link parseReference}, but null instead of an error. */
export function tryParseReference(s: string): ParsedReference | null {
  if (typeof s !== "string") return null;
  try {
    return scanWhole(s);
  } catch (e) {
    if (e instanceof ParseFail) return null;
    throw e;
  }
}

/** True when the whole string is one reference. */
export function isReference(s: string): boolean {
  return tryParseReference(s) !== null;
}

/**
 * Writes a reference in `form` (default canonical). Throws VaultError("invalid_request") when a part
 * is not valid or the form cannot express the scope (ZLayer: global, `service:*`, `env:*`, a project
 * without `_`; `$secret://`: `env:*` only): what it returns always parses back to `r` in `form`.
 */
export function formatReference(r: SecretFieldRef, form: ReferenceForm = "canonical"): string {
  const { scope, name, field } = r;
  if (!isScope(scope))
    throw new VaultError("invalid_request", `scope ${show(String(scope))} is not valid: use "global" or "<kind>:<id>" such as "env:prod"`);
  if (!isSecretName(name))
    throw new VaultError("invalid_request", `secret name ${show(String(name))} is not valid: use 1-128 letters, digits, "_", "." or "-", starting with a letter, digit or "_"`);
  if (field !== undefined) {
    if (typeof field !== "string") throw new VaultError("invalid_request", "a reference's field must be a string");
    checkField(field);
  }
  const cannot = (why: string) =>
    new VaultError("invalid_request", `scope ${show(scope)} cannot be written as a ${form} reference: ${why}; use the canonical form`);
  const text = write(r, form, cannot);
  // The promise is a round trip: refuse whatever this form's grammar would not read back as `r`.
  let back: ParsedReference;
  try {
    back = scanWhole(text);
  } catch (e) {
    if (!(e instanceof ParseFail)) throw e;
    const part = form === "canonical" ? "the scope" : "a part of the scope";
    throw cannot(`${part} cannot be read back in this form (${show(text)}: position ${e.at + 1}: ${e.what})`);
  }
  if (back.scope !== scope || back.name !== name || back.field !== field || back.form !== form)
    throw cannot(`${show(text)} would be read back as ${show(`${back.scope}/${back.name}`)}`);
  return text;
}

/** The text of `r` in `form`, before the round-trip check; `cannot` makes the refusal for a scope the form has no syntax for. */
function write(r: SecretFieldRef, form: ReferenceForm, cannot: (why: string) => VaultError): string {
  const { scope, name, field } = r;
  switch (form) {
    case "canonical":
      return `${CANONICAL}${scope}/${name}${field === undefined ? "" : `#${field}`}`;
    case "zlayer": {
      const tail = `${name}${field === undefined ? "" : `/${field}`}`;
      if (scope === "global") return `${ZLAYER}${tail}`;
      if (scope.startsWith("service:")) return `${ZLAYER}@${scope.slice(8)}/${tail}`;
      if (scope.startsWith("env:")) {
        const id = scope.slice(4);
        const at = id.indexOf("@");
        if (at < 0) return `${ZLAYER}:${id}/${tail}`;
        const env = id.slice(0, at);
        const project = id.slice(at + 1);
        if (!/^[A-Za-z0-9][A-Za-z0-9.-]*$/.test(project))
          throw cannot(`in env:<env>@<project> the project must be letters, digits, "." and "-", starting with a letter or digit`);
        return `${ZLAYER}${project}:${env}/${tail}`;
      }
      throw cannot(`ZLayer references name only global, service:<name> and env:<name> scopes`);
    }
    case "secret-url":
      if (!scope.startsWith("env:")) throw cannot(`"$secret://" names only env:<name> scopes`);
      return `${SECRET_URL}${scope.slice(4)}/${name}${field === undefined ? "" : `/${field}`}`;
    default:
      throw new VaultError("invalid_request", `unknown reference form ${show(String(form))}: use canonical, zlayer or secret-url`);
  }
}
