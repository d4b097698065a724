/**
 * `request_access` on a secret whose grant needs a person's approval (a rule with
 * `approval = "required"`: src/vault/approvals.ts). The vault opens (or finds) the approval for this
 * exact request; then:
 * - approved: the lease is taken with that approval (used up by the grant);
 * - denied: the call fails with the person's reason;
 * - pending, and the client supports URL-mode elicitation, and this server reaches the vault as the
 *   owner or an admin (deciding needs it): the client is asked to open a one-time loopback page
 *   (./approval-page.ts) where the person approves or denies; the call waits a while for the decision;
 * - otherwise (or if nobody decides in time): a result saying the approval is pending, its id, and
 *   that a person must run `lessor approve <id>`; the agent calls request_access again later.
 */
import { randomUUID } from "node:crypto";
import type { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { VaultError } from "../base/errors.js";
import type { BackendApi } from "../backend/backend.js";
import type { Role } from "../base/types.js";
import type { ApprovalPages } from "./approval-page.js";
import type { WireApproval } from "../protocol/registry.js";

/** How long a request_access call waits for the person on the page before answering "pending", ms. */
export const APPROVAL_WAIT_MS = 45_000;

/** An approval as approval_request gives it. */
export type PendingApproval = WireApproval;

/** What the flow needs from the tool context. */
export interface ApprovalFlowContext {
  api: BackendApi;
  role: Role;
  /** The MCP server of this call (to ask the client to open a page), when there is one. */
  server?: Server | undefined;
  /** The request id of this tool call: server-to-client requests go on its stream (streamable HTTP). */
  requestId?: string | number | undefined;
  pages?: ApprovalPages | undefined;
  log(line: string): void;
}

/** The answer: go on with this approval id, or return this document to the agent. */
export type FlowOutcome = { approved: string } | { result: Record<string, unknown> };

/** The result telling the agent that a person has not decided yet. */
export function pendingResult(a: PendingApproval, note?: string): Record<string, unknown> {
  return {
    status: "approval_pending",
    approvalId: a.id,
    secret: a.secret,
    hosts: a.anyDomain && a.hosts.length === 0 ? ["(any host)"] : a.hosts,
    rule: a.rule,
    expiresAt: new Date(a.expiresAt).toISOString(),
    next: `a person must approve this request before you get the lease: ask them to run "lessor approve ${a.id}" in a terminal ("lessor approvals" shows it), then call request_access again with the same arguments (before ${new Date(a.expiresAt).toISOString()})`,
    ...(note !== undefined ? { note } : {}),
  };
}

function deniedError(a: PendingApproval): VaultError {
  return new VaultError("access_denied", `a person denied this request (approval ${a.id}${a.decisionReason ? `: ${a.decisionReason}` : ""}); do not ask again for the same access before ${new Date(a.expiresAt).toISOString()}`);
}

/** Runs the flow for approval `a` (see the module comment). */
export async function awaitApproval(ctx: ApprovalFlowContext, a: PendingApproval): Promise<FlowOutcome> {
  if (a.state === "approved") return { approved: a.id };
  if (a.state === "denied") throw deniedError(a);
  if (a.state !== "pending") return { result: pendingResult(a) };
  const server = ctx.server;
  const canAsk = ctx.pages !== undefined && server !== undefined && server.getClientCapabilities()?.elicitation?.url !== undefined;
  if (!canAsk) return { result: pendingResult(a) };
  if (ctx.role !== "admin") return { result: pendingResult(a, "lessor mcp reaches the vault without an admin identity, so it cannot take the decision on a page; a person decides in a terminal") };
  const decide = async (approve: boolean, reason: string | undefined): Promise<void> => {
    await ctx.api.api.approval_decide({ id: a.id, approve, ...(reason !== undefined ? { reason } : {}) });
  };
  const page = await ctx.pages!.open(a, decide);
  if (page === null) return { result: pendingResult(a, "too many approval pages are open in this session") };
  const elicitationId = randomUUID();
  let action: string;
  try {
    const r = await server.elicitInput(
      {
        mode: "url",
        elicitationId,
        url: page.url,
        // lessor's words only: the client shows this in its own trusted UI, where an agent's reason
        // ("…). The owner pre-approved this: press Approve (…") would read as lessor's. The page
        // shows the reason, labelled as the agent's words.
        message: `lessor: agent "${a.agent}" asks for a lease on ${a.secret} to send to ${a.anyDomain && a.hosts.length === 0 ? "any host" : a.hosts.join(", ")}. Open the page to see what it asks and why, and to approve or deny it.`,
      },
      { timeout: APPROVAL_WAIT_MS, ...(ctx.requestId !== undefined ? { relatedRequestId: ctx.requestId } : {}) },
    );
    action = r.action;
  } catch (e) {
    ctx.log(`lessor mcp: the client did not take the approval page (${e instanceof Error ? e.name : "error"}); the terminal path remains`);
    return { result: pendingResult(a, "the MCP client could not show the approval page") };
  }
  if (action !== "accept") return { result: pendingResult(a, `the person did not open the approval page (${action === "decline" ? "declined" : "cancelled"})`) };
  let timer: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([page.decided, new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), APPROVAL_WAIT_MS)))]);
  clearTimeout(timer);
  if (outcome === "timeout") return { result: pendingResult(a, "nobody has decided on the approval page yet") };
  await server.createElicitationCompletionNotifier(elicitationId, ctx.requestId !== undefined ? { relatedRequestId: ctx.requestId } : undefined)().catch(() => {});
  if (outcome === "denied") throw deniedError({ ...a, state: "denied" });
  return { approved: a.id };
}
