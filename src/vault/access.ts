/**
 * Role rules. admin may do everything; orchestrator may act for the agents its `actFor` patterns
 * cover and use read-only operations on secret metadata, but nothing admin-only; agent may act only as
 * the one agent id its transport bound it to. The agent a request concerns is never taken on trust:
 * {@link resolveAgent} decides it from the identity.
 */
import { VaultError } from "../base/errors.js";
import { compileAgentPattern } from "./pattern.js";
import type { Identity, Role } from "../base/types.js";

const compiled = new WeakMap<readonly string[], ((s: string) => boolean)[]>();

/** True when `who` may act for `agent`. */
export function mayActFor(who: Identity, agent: string): boolean {
  if (who.role === "admin") return true;
  if (who.role === "agent") return who.agent === agent;
  const pats = who.actFor ?? [];
  let fns = compiled.get(pats);
  if (!fns) {
    fns = pats.map((p) => compileAgentPattern(p));
    compiled.set(pats, fns);
  }
  return fns.some((f) => f(agent));
}

/** Null if `who` holds one of `roles`, else the error to return (and audit). */
export function roleError(who: Identity, roles: readonly Role[], what: string): VaultError | null {
  if (roles.includes(who.role)) return null;
  return new VaultError("access_denied", `role ${who.role} may not ${what}; it needs role ${roles.join(" or ")}`);
}

/**
 * The agent a request is for: an agent's own id (a different `requested` one is refused); for an
 * orchestrator or admin, `requested`, which must be given (and, for an orchestrator, be one it acts for).
 */
export function resolveAgent(who: Identity, requested: string | undefined): string | VaultError {
  if (who.role === "agent") {
    if (!who.agent) return new VaultError("unauthenticated", "this connection is not bound to an agent id");
    if (requested !== undefined && requested !== who.agent)
      return new VaultError("access_denied", `agent "${who.agent}" may not act as agent "${requested}"`);
    return who.agent;
  }
  if (requested === undefined)
    return new VaultError("invalid_request", `role ${who.role} must name the agent the lease is for (param "agent")`);
  if (!mayActFor(who, requested))
    return new VaultError("access_denied", `orchestrator "${who.id}" is not configured to act for agent "${requested}"`);
  return requested;
}
