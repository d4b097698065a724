/**
 * The audit record of a refusal a client made on its own, before it asked the vault for anything: a
 * credential helper (src/cli/credentials) that answers git nothing because the repository's own git
 * config routes the request elsewhere, or the URL is plain http://. The vault never saw such a
 * request, so without this its trail would hold nothing of it, and a hostile repository's attempt is
 * exactly what an operator wants to find there.
 *
 * It is written as the vault writes its own refusals (./denied.ts): one `access_denied` event, reason
 * `access_denied: <client>: <why>`, naming the agent, the secret and the host; tallied past a burst
 * like every refusal (./refusals.ts). The caller's text is plain text, bounded; never a value.
 */
import { VaultError } from "../base/errors.js";
import { checkAgentId, CLIENT_NAME_RE, parseRefString, refString } from "../base/names.js";
import { checkPlainText } from "../base/text.js";
import type { Identity } from "../base/types.js";
import { resolveAgent } from "./access.js";
import { commit, type VaultContext } from "./context.js";
import { denied } from "./denied.js";
import { checkTarget } from "./target.js";

/** What a client reports about one refusal of its own. */
export interface ClientRefusal {
  /** The agent the refused request was for; an agent identity may leave it out (its own), others may too (then none is named). */
  agent?: string | undefined;
  /** The secret it would have asked for (`scope/name` or a bare name). */
  secret: string;
  /** The host the credential would have gone to, when the client could tell. */
  domain?: string | undefined;
  /** Which client refused ({@link CLIENT_NAME_RE}). */
  by: string;
  /** Why, in one line of plain text (at most 300 characters). */
  reason: string;
}

/**
 * Writes one `access_denied` event for `r` and returns `{ recorded: true }` (past the refusal burst
 * it is counted into the window's summary row instead, as any refusal). An agent records only for
 * itself; an orchestrator only for agents it acts for; another agent named is refused and audited.
 */
export async function recordClientRefusal(ctx: VaultContext, who: Identity, r: ClientRefusal): Promise<{ recorded: true }> {
  if (typeof r !== "object" || r === null) throw new VaultError("invalid_request", "a refusal must be an object with secret, by and reason");
  if (typeof r.by !== "string" || !CLIENT_NAME_RE.test(r.by)) throw new VaultError("invalid_request", 'by must name the client: 1 to 32 lower-case letters, digits or "-", starting with a letter');
  const reason = checkPlainText(r.reason, "the reason", 300);
  if (typeof r.secret !== "string") throw new VaultError("invalid_request", "secret must be scope/name or a bare name");
  const secret = refString(parseRefString(r.secret));
  if (r.domain !== undefined) checkTarget({ domain: r.domain });
  const domain = r.domain ?? null;
  const requested = r.agent === undefined ? undefined : checkAgentId(r.agent);
  return commit(ctx, async (_tx, audit) => {
    const agent = requested === undefined && who.role !== "agent" ? null : resolveAgent(who, requested);
    if (agent instanceof VaultError) return denied(audit, who, agent, { agent: requested ?? who.agent ?? null });
    await denied(audit, who, new VaultError("access_denied", `${r.by}: ${reason}`), { agent, secret, domain, leaseId: null });
    return { recorded: true as const };
  });
}
