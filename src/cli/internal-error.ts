/**
 * How the CLI reports an error it did not expect (a bug): its class and code, not its message, unless
 * LESSOR_DEBUG=1. node's own errors quote the values they refused (an argument, an environment
 * variable's value), and such a value may be a secret; a bug report needs the class and the code
 * first, and the person reporting can re-run with the message shown.
 */

/** The line printed for an unexpected error `e` (after "lessor: "), given the environment. */
export function internalErrorLine(e: unknown, env: NodeJS.ProcessEnv = process.env): string {
  const name = e instanceof Error ? e.name : typeof e;
  const code = e instanceof Error && typeof (e as NodeJS.ErrnoException).code === "string" ? ` ${(e as NodeJS.ErrnoException).code}` : "";
  if (env["LESSOR_DEBUG"] === "1") return `internal error: ${name}${code}: ${e instanceof Error ? e.message : String(e)} (this is a bug; please report it)`;
  return `internal error: ${name}${code} (this is a bug; please report it; run again with LESSOR_DEBUG=1 to see its message, which may quote your input)`;
}
