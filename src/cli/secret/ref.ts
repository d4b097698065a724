/** Turns a command's NAME argument and `--scope` option into one secret reference. */
import { UsageError } from "../cli.js";
import { checkScope, parseRefString, refString } from "../../base/names.js";
import type { SecretRef } from "../../base/types.js";

/** `scope/name` or a bare name (scope `--scope`, else `global`). Throws when the two disagree. */
export function secretRef(arg: string, scope?: string): SecretRef & { ref: string } {
  const parsed = parseRefString(arg);
  if (scope !== undefined) {
    checkScope(scope);
    if (arg.includes("/") && parsed.scope !== scope)
      throw new UsageError(`the secret ${JSON.stringify(arg)} names scope ${parsed.scope} but --scope says ${scope}; give the scope once`);
    const r = { scope, name: parsed.name };
    return { ...r, ref: refString(r) };
  }
  return { ...parsed, ref: refString(parsed) };
}
