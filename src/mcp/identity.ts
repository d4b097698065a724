/**
 * Which agent an MCP server acts for, fixed when it starts and never taken from a tool argument:
 * - reached as an agent (a daemon named by LESSOR_SOCKET, or LESSOR_ADDR with a token, that knows this
 *   process as agent A): the server is A; `--agent`, if given, must say A;
 * - reached as the owner (the vault in-process, or the home's daemon as its own user) or as an
 *   orchestrator: `--agent` names the agent, and the vault applies that agent's grants (an
 *   orchestrator only for the agents its token may act for).
 */
import { VaultError } from "../base/errors.js";
import type { Role } from "../base/types.js";
import { hasUnsafeText } from "../base/text.js";

/** The backend's identity as whoami reports it. */
export interface WhoamiIdentity {
  id: string;
  role: Role;
  agent?: string | undefined;
}

/** Who the server is: the agent, and the role through which it reaches the vault. */
export interface McpIdentity {
  agent: string;
  role: Role;
}

/** The agent this server acts for, from `--agent` and the backend's identity; see the module comment. */
export function resolveAgent(flag: string | undefined, who: WhoamiIdentity): McpIdentity {
  if (flag !== undefined && (flag.length === 0 || flag.length > 128 || hasUnsafeText(flag)))
    throw new VaultError("invalid_request", "--agent must be 1 to 128 characters of plain text");
  if (who.role === "agent") {
    const self = who.agent ?? who.id;
    if (flag !== undefined && flag !== self)
      throw new VaultError("access_denied", `the daemon knows this process as agent "${self}", so lessor mcp can act only for that agent; drop --agent or pass --agent ${self}`);
    return { agent: self, role: "agent" };
  }
  if (flag === undefined) throw new VaultError("invalid_request", "--agent is required: name the agent this MCP server acts for (its grants in the policy apply)");
  return { agent: flag, role: who.role };
}
