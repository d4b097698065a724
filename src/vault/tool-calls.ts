/**
 * The audit record of one tool call an agent made through an MCP server (`lessor mcp`,
 * src/mcp/server.ts): which agent, which tool, how it ended, the error code, how long it took. Nothing
 * the agent sent (arguments, URLs, headers, bodies) and nothing a tool returned is ever part of it: a
 * tool name is a short token from a fixed character set, an error code one of a closed list, the
 * duration a number.
 *
 * One call, one `tool_call` event, one commit. The proxy batches its `proxy_request` events
 * (./proxy-requests.ts) because one agent request may make many HTTP requests; a tool call is one
 * step of a model's loop (seconds apart), and its row should be in the trail before the agent sees the
 * result, so it is written at once.
 *
 * The agent is the caller's own (an agent identity), or one the caller may act for (an admin, an
 * orchestrator for the agents its token names): never taken on trust from the params.
 */
import { VaultError } from "../base/errors.js";
import { checkAgentId } from "../base/names.js";
import { MAX_TOOL_CALL_MS as MAX_MS, TOOL_CODES, TOOL_NAME_RE, TOOL_OUTCOMES, type ToolCode, type ToolOutcome } from "../base/tool-call.js";
import type { Identity } from "../base/types.js";
import { resolveAgent } from "./access.js";
import { commit, type VaultContext } from "./context.js";
import { denied } from "./denied.js";

export { TOOL_OUTCOMES, type ToolOutcome } from "../base/tool-call.js";

/** What an MCP server reports about one tool call. */
export interface ToolCallReport {
  /** The agent the call was made for; an agent identity may leave it out (it is then the caller's own). */
  agent?: string | undefined;
  /** The tool's name ({@link TOOL_NAME_RE}); an unknown or malformed name is reported as a placeholder, never as sent. */
  tool: string;
  outcome: ToolOutcome;
  /** Required when the outcome is not "ok", refused when it is: one of {@link TOOL_CODES}. */
  code?: ToolCode | undefined;
  /** How long the call took, ms. */
  ms: number;
}

/** Checks a report's fields; throws VaultError("invalid_request") naming the field, never quoting it. */
function check(r: ToolCallReport): { tool: string; outcome: ToolOutcome; code: string | null; ms: number } {
  if (typeof r !== "object" || r === null) throw new VaultError("invalid_request", "a tool call report must be an object with tool, outcome and ms");
  if (typeof r.tool !== "string" || !TOOL_NAME_RE.test(r.tool))
    throw new VaultError("invalid_request", 'tool must be a tool name: 1 to 64 letters, digits, "_", "." or "-", starting with a letter');
  if (!(TOOL_OUTCOMES as readonly unknown[]).includes(r.outcome)) throw new VaultError("invalid_request", `outcome must be one of ${TOOL_OUTCOMES.join(", ")}`);
  let code: string | null = null;
  if (r.outcome === "ok") {
    if (r.code !== undefined) throw new VaultError("invalid_request", 'code is for a call that failed: leave it out when outcome is "ok"');
  } else {
    if (!(TOOL_CODES as readonly unknown[]).includes(r.code))
      throw new VaultError("invalid_request", `code is required when outcome is "${r.outcome}": one of lessor's error codes (docs/errors.md, such as access_denied) or unknown_tool`);
    code = r.code as ToolCode;
  }
  if (typeof r.ms !== "number" || !Number.isFinite(r.ms) || r.ms < 0 || r.ms > MAX_MS) throw new VaultError("invalid_request", `ms must be a number from 0 to ${MAX_MS}`);
  return { tool: r.tool, outcome: r.outcome, code, ms: Math.round(r.ms) };
}

/**
 * Writes one `tool_call` audit event for `report`: the agent, `detail: {tool, ms}`, outcome `ok`,
 * `denied` (refused) or `error`, and the error code as `reason`. A caller that may not act for the
 * agent named is refused (audited as access_denied) and nothing else is written.
 */
export async function recordToolCall(ctx: VaultContext, who: Identity, report: ToolCallReport): Promise<{ recorded: true }> {
  const r = check(report);
  const requested = report.agent === undefined ? undefined : checkAgentId(report.agent);
  if (requested === undefined && who.role !== "agent")
    throw new VaultError("invalid_request", `role ${who.role} must name the agent the tool call was made for (param "agent")`);
  return commit(ctx, async (_tx, audit) => {
    const agent = resolveAgent(who, requested);
    if (agent instanceof VaultError) return denied(audit, who, agent, { agent: requested ?? who.agent ?? null });
    await audit({
      type: "tool_call",
      actor: who,
      agent,
      outcome: r.outcome === "ok" ? "ok" : r.outcome === "refused" ? "denied" : "error",
      reason: r.code,
      detail: { tool: r.tool, ms: r.ms },
    });
    return { recorded: true as const };
  });
}
