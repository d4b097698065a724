/** Turns a command's NAME argument and `--scope` option into one secret reference. */
import { UsageError } from "../cli.js";
import { checkScope, parseRefString } from "../../base/names.js";
import type { SecretRef } from "../../base/types.js";

/** `scope/name` or a bare name (scope `--scope`, else `global`). Throws when the two disagree. */
export function secretRef(arg: string, scope?: string): SecretRef {
  const parsed = parseRefString(arg);
  if (scope === undefined) return parsed;
  checkScope(scope);
  if (arg.includes("/") && parsed.scope !== scope)
    throw new UsageError(`the secret ${JSON.stringify(arg)} names scope ${parsed.scope} but --scope says ${scope}; give the scope once`);
  return { scope, name: parsed.name };
}
