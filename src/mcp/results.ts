/**
 * What a tool call returns: a JSON document, as text for the model and as `structuredContent` for
 * programs. A failure is an `isError` result (the MCP way to tell the model a tool failed, so it can
 * act on it) carrying lessor's error code, a message that never holds a secret value, and what to do.
 */
import { isVaultError, type ErrorCode, type VaultError } from "../base/errors.js";
import { refusalForAgent } from "../vault/policy.js";

/** A tool result as the MCP SDK takes it. */
export interface ToolResult {
  [key: string]: unknown;
  content: { type: "text"; text: string }[];
  structuredContent?: Record<string, unknown>;
  isError?: boolean;
}

/** The error document of a failed tool call. */
export interface ToolErrorDoc {
  error: { code: ErrorCode; message: string; hint: string };
}

/** What an agent can do about each code. */
function hintFor(code: ErrorCode, agent: string): string {
  switch (code) {
    case "access_denied":
      return `no grant lets agent "${agent}" do this; call explain_access with the secret (and domain) to see which rule decides, then ask the operator for a grant (lessor policy) if you need it`;
    case "secret_not_found":
      return "call list_secrets for the names you may ask for";
    case "lease_revoked":
    case "lease_expired":
    case "lease_exhausted":
    case "lease_not_found":
      return "call list_leases to see your live leases, or request_access for a new one";
    case "invalid_request":
    case "value_too_large":
      return "fix the arguments as the message says (tools/list gives each tool's schema) and call again";
    case "rate_limited":
      return "wait a little and retry, or revoke leases you no longer need";
    case "unavailable":
      return "retry in a moment; if it keeps failing, tell the operator";
    default:
      return "tell the operator; this is not something a retry will fix";
  }
}

/** A successful result carrying `doc`. */
export function ok(doc: Record<string, unknown>): ToolResult {
  return { content: [{ type: "text", text: JSON.stringify(doc, null, 2) }], structuredContent: doc };
}

const hints = new WeakMap<VaultError, string>();

/** `e` with a hint of its own in place of its code's (for an error this server raises, where it knows better). */
export function withHint(e: VaultError, hint: string): VaultError {
  hints.set(e, hint);
  return e;
}

/** The error document for `e` (a VaultError keeps its code and message; anything else is `internal`). */
export function errorDoc(e: unknown, agent: string): ToolErrorDoc {
  // Only a VaultError's message is known to be safe to show; others may quote anything.
  const code: ErrorCode = isVaultError(e) ? e.code : "internal";
  // The vault may have worded it for the owner this server acts as: an agent is told less.
  const message = isVaultError(e) ? refusalForAgent(e.message) : "an unexpected error occurred in lessor mcp (see its stderr)";
  const broken = isVaultError(e) && message !== e.message;
  const hint = broken ? "no grant works until the operator fixes the policy (lessor policy check); do not retry before then" : ((isVaultError(e) ? hints.get(e) : undefined) ?? hintFor(code, agent));
  return { error: { code, message, hint } };
}

/** A failed result for `doc`. */
export function failed(doc: ToolErrorDoc): ToolResult {
  return { content: [{ type: "text", text: JSON.stringify(doc, null, 2) }], structuredContent: doc as unknown as Record<string, unknown>, isError: true };
}
