/**
 * What an approval gives away besides its hosts, said to the person deciding it: who will hold the
 * value, and what the proxy may send with it (the approval is bound to these terms, src/vault/approvals.ts).
 * Shared by `lessor approvals` and the approval page of `lessor mcp`, so that both say the same.
 */
import type { WireApproval } from "./registry.js";

/** The part of an approval this reads. Fields an older daemon does not send are undefined. */
export type ApprovalTerms = Partial<Pick<WireApproval, "reveal" | "methods" | "paths">> & Pick<WireApproval, "requestedBy">;

/**
 * One line of plain text (the caller escapes it for its medium): "the rule reveals it: …", "proxy
 * only: …", or "not known …" when the approval does not say (kept by an older lessor, or sent by an
 * older daemon): then nothing is claimed either way.
 */
export function approvalValueText(a: ApprovalTerms): string {
  const list = (xs: readonly string[] | null | undefined): string => (xs == null ? "any" : xs.join(", "));
  const scope = `methods: ${list(a.methods)}; paths: ${list(a.paths)}`;
  if (a.reveal === undefined) return "not known (this daemon is older and does not say): check the rule's reveal, methods and paths in the policy before you approve";
  if (a.reveal === null) return "not known (an approval kept by an older lessor: it grants nothing; the request is asked again)";
  if (!a.reveal)
    return `proxy only (reveal = false): no agent reads it; an injecting proxy adds it to requests with ${scope}`;
  const bound = a.methods == null && a.paths == null ? "" : ` (${scope} bind only the proxy)`;
  return `the rule reveals it: the requester (${a.requestedBy}) may read the value itself and send it anywhere, not only to the hosts above${bound}`;
}
