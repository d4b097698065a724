/** Turns a command's NAME argument and `--scope` option into one secret reference. */
import { UsageError } from "../cli.js";
import { checkScope, parseRefString } from "../../base/names.js";
import type { SecretRef } from "../../base/types.js";

/** `scope/name` or a bare name (scope `--scope`, else `global`). Throws when the two disagree. */
export function secretRef(arg: string, scope?: string): SecretRef {
  // NAME=VALUE (as fly and heroku take values): what follows "=" may be the value, so the argument is
  // never quoted back; no secret name holds "=".
  const eq = arg.indexOf("=");
  if (eq >= 0)
    throw new UsageError(
      `a secret name has no "=", and lessor does not take a value as NAME=VALUE (it would be in your shell history and visible in ps; the argument is not shown here). ` +
        `Pipe the value on stdin instead: printf %s "$VALUE" | lessor secret set ${/^[A-Za-z0-9_.:/@-]{1,80}$/.test(arg.slice(0, eq)) ? arg.slice(0, eq) : "NAME"}`,
    );
  const parsed = parseRefString(arg);
  if (scope === undefined) return parsed;
  checkScope(scope);
  if (arg.includes("/") && parsed.scope !== scope)
    throw new UsageError(`the secret ${JSON.stringify(arg)} names scope ${parsed.scope} but --scope says ${scope}; give the scope once`);
  return { scope, name: parsed.name };
}
