/**
 * Every tool call `lessor mcp` handles is written to the vault's audit trail as one `tool_call` event
 * (`record_tool_call`, src/vault/tool-calls.ts): the agent, the tool, the outcome, the error code and
 * the duration. Never an argument, a URL, a header, a body or anything a tool returned: the tool name
 * is one of the server's own (or {@link UNKNOWN_TOOL} for a name it does not know, never the name as
 * sent) and the code is lessor's error code.
 *
 * The row is written before the agent sees the result. If it cannot be written, the result is
 * withheld and the agent gets `audit_failed` instead (what the tool did in the vault is audited by the
 * vault itself either way).
 */
import { isVaultError, VaultError } from "../base/errors.js";
import type { ToolCode, ToolOutcome } from "../base/tool-call.js";
import type { BackendApi } from "../backend/backend.js";
import type { McpIdentity } from "./identity.js";

/** The tool name recorded for a call naming no tool of this server (or too malformed to name one). */
export const UNKNOWN_TOOL = "unknown";

/** The code recorded for a call to a tool this server does not have. */
export const UNKNOWN_TOOL_CODE: ToolCode = "unknown_tool";

/** Codes that mean the vault said no (policy, role, a lease that ended), as opposed to a failure. */
const REFUSALS: ReadonlySet<string> = new Set(["access_denied", "unauthenticated", "rate_limited", "lease_expired", "lease_revoked", "lease_exhausted"]);

/** The outcome a call that ended with `code` (null: it succeeded) is recorded with. */
export function outcomeOf(code: ToolCode | null): ToolOutcome {
  if (code === null) return "ok";
  return REFUSALS.has(code) ? "refused" : "error";
}

/** Writes the `tool_call` events of one MCP server's agent. */
export class CallAudit {
  constructor(
    readonly api: BackendApi,
    readonly identity: McpIdentity,
    readonly log: (line: string) => void,
  ) {}

  /**
   * Records that `tool` ended with `code` (null: ok), `startedAt` being `performance.now()` when the
   * call arrived. Resolves to null once the row is written, or to the error to answer instead of the
   * result when it could not be (logged on stderr by its code only).
   */
  async record(tool: string, code: ToolCode | null, startedAt: number): Promise<VaultError | null> {
    const ms = Math.max(0, performance.now() - startedAt);
    try {
      // An agent identity records for itself; the owner or an orchestrator names the agent it serves.
      await this.api.api.record_tool_call({
        ...(this.identity.role === "agent" ? {} : { agent: this.identity.agent }),
        tool,
        outcome: outcomeOf(code),
        ...(code !== null ? { code } : {}),
        ms,
      });
      return null;
    } catch (e) {
      const why = isVaultError(e) ? e.code : "internal";
      this.log(`lessor mcp: a ${tool} call could not be audited (${why}); its result was withheld`);
      return new VaultError("audit_failed", `this tool call could not be written to the audit trail (${why}), so its result was withheld; retry, and tell the operator if it keeps failing`);
    }
  }
}
