/**
 * Method dispatch: a lookup in the method registry (src/protocol/registry.ts). The connection has
 * already checked the params against the entry's schema; the entry's binding calls the session, and
 * the result goes on the wire with a secret value encoded as base64 (its SecretBytes wiped). Role
 * checks and audit happen inside the core; the identity is the session's, never a request param.
 */
import { SecretBytes } from "../crypto/secret-bytes.js";
import { entryOf, type CallContext, type MethodName } from "../protocol/registry.js";
import type { VaultSession } from "../vault/vault.js";

export { carriesSecret } from "../protocol/registry.js";

/** What a binding may need beyond the session: daemon facts for `status`. */
export type DispatchContext = CallContext;

/** Calls `method` with (parsed) `params` as `session`; resolves to the result as sent on the wire. */
export async function dispatch(session: VaultSession, method: MethodName, params: unknown, ctx: DispatchContext): Promise<unknown> {
  return toWire(await entryOf(method).call(session, params as never, ctx));
}

/** A result with its secret value (`value` as SecretBytes) encoded as base64; the bytes are wiped. */
function toWire(result: unknown): unknown {
  if (typeof result !== "object" || result === null || !((result as { value?: unknown }).value instanceof SecretBytes)) return result;
  const { value, ...rest } = result as { value: SecretBytes };
  try {
    return { value: value.expose().toString("base64"), encoding: "base64", ...rest };
  } finally {
    value.wipe();
  }
}
