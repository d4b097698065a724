/**
 * The in-process backend: every method of the registry (src/protocol/registry.ts) served by a vault
 * opened in this process, through the same bindings the daemon uses. Results stay in their decoded
 * form: a value is never turned into text on its way to the caller.
 *
 * The params schemas guard a transport's boundary (the server checks what arrives on a socket; an MCP
 * server will check what an agent sends); a caller in this process is the program itself, so its
 * params go to the core as they are, and the core's own checks answer a mistake, as they did before
 * the registry (the CLI's messages in embedded mode stay the same).
 */
import { LessorMethods } from "../client/facade.js";
import { apiOf, type Caller } from "../client/api.js";
import { entryOf, isMethod, REGISTRY, type CallContext } from "../protocol/registry.js";
import { safeName } from "../protocol/issues.js";
import { VaultError } from "../base/errors.js";
import type { Identity } from "../base/types.js";
import type { Vault, VaultSession } from "../vault/vault.js";
import { VERSION } from "../version.js";

/** A {@link Caller} that runs each method on `session`, as the daemon would for a connection. */
export function inProcessCaller(session: VaultSession, ctx: CallContext): Caller {
  return (async (method: string, params: unknown) => {
    if (!isMethod(method)) throw new VaultError("invalid_request", `unknown method ${safeName(method) ?? "(with an unusual name)"}; see docs/protocol.md`);
    return entryOf(method).call(session, (params ?? {}) as never, ctx);
  }) as Caller;
}

/**
 * The SDK's surface over an open vault, for the CLI's embedded mode. The caller is the local user, so
 * the session is admin (as the daemon treats its own uid), audited with transport "cli".
 */
export function inProcessApi(vault: Vault): LessorMethods {
  const who: Identity = { id: `uid:${process.getuid?.() ?? 0}`, role: "admin", transport: "cli" };
  const call = inProcessCaller(vault.session(who), { version: VERSION, startedAt: Date.now(), connections: () => 0 });
  return new LessorMethods(call, apiOf(call, Object.keys(REGISTRY)));
}
