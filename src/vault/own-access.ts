/**
 * What an agent may learn about its own access, and nothing about anyone else's: the secrets its
 * grants cover ({@link listGranted}: names, kinds, descriptions and the granting rule; never a value,
 * never a secret it is not granted), and why a request of its own would be allowed or denied
 * ({@link explainAccess}, narrowed to the rules that name it). An agent identity is always asking about
 * itself: naming another agent is refused (access_denied, audited). Admins ask about any agent,
 * orchestrators about the agents they act for (listing) or any agent (explain, as before).
 */
import { VaultError } from "../base/errors.js";
import { checkAgentId, checkRef, checkScope } from "../base/names.js";
import { checkPlainText } from "../base/text.js";
import type { Identity, SecretKind, SecretRef } from "../base/types.js";
import { resolveAgent } from "./access.js";
import { commit, type VaultContext } from "./context.js";
import { denied } from "./denied.js";
import { decide, explain, reasonFor, type Explanation, type PolicyVersion } from "./policy.js";
import { compiledOf } from "./policy/compiled.js";
import { policyVersion } from "./policy-state.js";

/** One secret an agent's grants cover, as {@link listGranted} gives it (never a value). */
export interface GrantedSecret {
  scope: string;
  name: string;
  kind: SecretKind;
  description: string;
  /** The rule that grants it (the first rule matching the agent and the secret, asked without a domain). */
  rule: string;
  /** That rule's domains: where the agent may ask to use it. */
  domains: string[];
  anyDomain: boolean;
  /** "required" when a person must approve each lease (docs/policy.md, "Approval"). */
  approval: "none" | "required";
}

/** What {@link listGranted} filters by. */
export interface GrantedFilter {
  /** The agent asked about: an agent identity may leave it out (it is then itself); others must name it. */
  agent?: string | undefined;
  scope?: string | undefined;
  namePrefix?: string | undefined;
}

/** An {@link Explanation} plus the version of the policy that answered. */
export interface OwnExplanation extends Explanation {
  policy: PolicyVersion;
}

/** The agent `who` asks about; a refusal is audited (access_denied) and thrown. */
async function subject(ctx: VaultContext, who: Identity, requested: string | undefined, what: string): Promise<string> {
  const asked = requested === undefined ? undefined : checkAgentId(requested);
  if (asked === undefined && who.role !== "agent") throw new VaultError("invalid_request", `role ${who.role} must name the agent to ${what} (param "agent")`);
  const agent = resolveAgent(who, asked);
  if (typeof agent === "string") return agent;
  const err = who.role === "agent" && agent.code === "access_denied" ? new VaultError("access_denied", `agent "${who.agent}" may ${what} only for itself, not for agent "${asked}"`) : agent;
  return commit<string>(ctx, (_tx, audit) => denied(audit, who, err, { agent: asked ?? who.agent ?? null }));
}

/**
 * The secrets `filter.agent`'s grants cover: every stored secret (matching the filter) that the
 * policy in force allows the agent when asked without a domain, with the rule that allows it. Any
 * role; an agent only for itself, an orchestrator for the agents it acts for. Read-only.
 */
export async function listGranted(ctx: VaultContext, who: Identity, filter: GrantedFilter = {}): Promise<GrantedSecret[]> {
  const scope = filter.scope === undefined ? undefined : checkScope(filter.scope);
  const namePrefix = filter.namePrefix === undefined ? undefined : checkPlainText(filter.namePrefix, "namePrefix", 128);
  const agent = await subject(ctx, who, filter.agent, "list granted secrets");
  const policy = ctx.policy;
  const out: GrantedSecret[] = [];
  for (const s of await ctx.store.listSecrets({ ...(scope !== undefined ? { scope } : {}), ...(namePrefix !== undefined ? { namePrefix } : {}) })) {
    const d = decide(policy, { agent, secret: { scope: s.scope, name: s.name } });
    if (!d.allow || d.rule === null) continue;
    out.push({
      scope: s.scope,
      name: s.name,
      kind: s.kind,
      description: s.description,
      rule: d.rule.name,
      domains: [...d.rule.domains],
      anyDomain: d.rule.anyDomain,
      approval: d.rule.approval,
    });
  }
  return out;
}

/**
 * Which rule decides `agent` × `secret` × `domain`, and why, and which version of the policy answered.
 * Admin for any agent; an orchestrator for the agents it acts for, an agent only for itself (another
 * agent's name is refused, audited). Their answer is narrowed to what concerns that agent: the steps
 * of rules that name other agents are left out, and a broken policy's load error (which may quote any
 * rule) is not shown.
 */
export async function explainAccess(ctx: VaultContext, who: Identity, agentIn: string, secretIn: SecretRef, domain?: string): Promise<OwnExplanation> {
  const agent = who.role === "admin" ? checkAgentId(agentIn) : await subject(ctx, who, agentIn, "explain access");
  const q = { agent, secret: checkRef(secretIn), domains: domain === undefined ? undefined : [domain] };
  const policy = ctx.policy;
  const version = policyVersion(ctx);
  const e = explain(policy, q);
  if (who.role === "admin") return { ...e, policy: version };
  const mine = new Set(compiledOf(policy).filter((c) => c.agents.some((f) => f(agent))).map((c) => c.rule.index));
  const reason = reasonFor(policy, who.role, e.reason);
  return { ...e, reason, steps: e.steps.filter((s) => mine.has(s.index)), policy: version };
}
