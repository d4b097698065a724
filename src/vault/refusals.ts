/**
 * Refused calls, audited in aggregate past a burst. Every refusal was one `access_denied` row, and so
 * one durable commit: an authenticated agent looping on refused calls (a lease it does not hold, a
 * secret no grant gives it, guessed lease ids) could fill the disk with rows and slow every other
 * client with fsyncs. Failed authentications were already aggregated (./auth-failures.ts); this does
 * the same for callers that did authenticate.
 *
 * Refusals are tallied per **identity** (transport and identity id), in the windows of
 * `limits.authFailureWindowMs` (10 s by default):
 * - An identity's first {@link BURST} refusals in a window are written as before: one row each, in the
 *   refused call's own transaction, while the window's budget of {@link WINDOW_BUDGET} such rows lasts.
 * - Its later refusals are counted, not written: the call is refused all the same, and its transaction
 *   writes nothing. When the window closes (and when the vault closes) each identity with refusals
 *   counted writes **one** `access_denied` row: `detail.count` the refusals it stands for,
 *   `detail.reasons` how many of each error code (a refusal for the caller's role names the step it
 *   tried, `access_denied (may not create tokens)`, so an escalation attempt is not read as a policy
 *   denial), `detail.since` the time of the first, and what they named: `detail.secrets` (up to
 *   {@link MAX_SECRETS}), `detail.domains` and `detail.agents` (up to {@link MAX_NAMED} each; the agent
 *   an orchestrator acted for), each list with a `…_omitted` count of the refusals that named one not
 *   listed, so that a list cut short by decoys says so. A row without `count` stands for one refusal.
 *   Past the burst, which lease id each refusal named is not kept: a flood is itself the signal, and
 *   it shows as the count.
 * - An identity still refused when its window closes gets no new burst; one quiet for a whole window
 *   is forgotten. At most {@link MAX_IDENTITIES} are tallied at once; refusals of further identities are
 *   counted together under actor id `*` of their transport.
 *
 * The injecting proxy's reports of requests it refused (`proxy_request`, outcome denied, not a
 * tripwire alarm: src/vault/proxy-requests.ts) are tallied the same way, apart from the identity's
 * `access_denied` ones (their own burst, their own summary row, of type `proxy_request`): a hostile
 * agent sending thousands of refused requests, each costing it nothing upstream, must not fill the
 * disk either. They are tallied per identity **and agent**: one identity reports for every agent
 * it serves a proxy to (the owner's `lessor proxy` and `lessor run` sessions, through one daemon),
 * and one agent's flood must not spend the burst that the others' refusals are written from, nor
 * keep it spent window after window, leaving their refusals a count in a summary that lists both.
 * At most {@link MAX_AGENT_TALLIES} agents of one identity have tallies of their own at once; reports
 * for further agents share the identity's: an orchestrator whose `act_for` is a pattern could
 * otherwise name made-up agents, each with a burst, until the window's budget is spent for everyone.
 * A tripwire alarm is never counted: each is written.
 *
 * Reports of requests that went (`proxy_request`, outcome ok or error) made by an agent or a VM guest
 * are tallied too, in a window of their own with a larger burst (`[vault] proxy_request_rows`,
 * {@link Limits.proxyRequestRows}, per identity and agent, for the first {@link MAX_AGENT_TALLIES}
 * agents of an identity; the window's budget {@link TRAFFIC_BUDGET_BURSTS} bursts):
 * `record_proxy_requests` is open to every role, for the proxy an agent runs with its own token, and
 * 256 reports of 8 KiB paths a call, each a row, let one agent write gigabytes an hour to the disk
 * everyone's vault is on, with no request made. Not tallied: the reports of the owner's and of
 * orchestrators' proxies on the host (they cannot make up the agent's traffic), and reports vouched
 * for by their leases (a request that carried a credential whose use the vault counted, never more
 * than the leases' uses: src/vault/proxy-requests.ts), so that a flood cannot hide a real request.
 * Past the burst each is counted, by outcome and status, in one summary row per window (`detail.count`,
 * `detail.reasons` like `ok 200 ×5000; error 0 ×12`, `detail.domains`), filed under its agent.
 *
 * Two more kinds of row an agent (or a VM guest) can have written at will, each one call, are traffic
 * too, each in tallies of its own beside the proxy reports' (same burst and budget, per identity and
 * agent): its own `tool_call` reports (`record_tool_call` is open to an agent, for an MCP server it runs
 * with its own token: ./tool-calls.ts), counted past the burst by outcome and error code; and its
 * revocations that changed nothing (`revoke_lease` of a lease already ended, `revoke_all_for_agent`
 * with nothing live, `lease_revoked` with `changed`/`count` 0), counted as `no change`. A revocation that
 * ended a lease is always written, and so is every row of the owner's MCP server (actor the owner).
 *
 * A refusal is counted once its call's transaction has committed, so a call run again (a batch rerun,
 * a catch-up) counts once; a refusal written holds its place in the burst only if its transaction
 * commits (a rerun or a rollback gives it back), so a rerun does not spend the burst twice either.
 * Whether a refusal waits for a commit depends on its identity's count and the budget, never on its
 * reason: the time of an answer does not tell a lease that exists but is another agent's from one
 * that does not.
 */
import type { AuditDraft, Identity } from "../base/types.js";
import type { Limits } from "./limits.js";
import { AuditWindow, reasonsText, type Tally as WindowTally } from "./audit-window.js";
import type { VaultContext } from "./context.js";

/**
 * Refusals of one identity written one row each per window, before counting starts: more than a
 * failed hello's burst, since an authenticated caller's refusals are what an operator reads to see
 * what an agent tried (a mistake makes a few; only a loop makes more).
 */
export const BURST = 32;
/** Refusals written one row each per window, all identities together. */
export const WINDOW_BUDGET = 256;
/** Identities tallied at once; refusals of further identities are counted under actor id "*". */
export const MAX_IDENTITIES = 256;
/**
 * Secrets named in one summary row, at most (the first ones the counted refusals named): enough that
 * hiding one behind decoys takes a flood of names, and the row says how many it left out.
 */
export const MAX_SECRETS = 128;
/** Domains, and agents, named in one summary row, at most each. */
export const MAX_NAMED = 32;

/**
 * Agents of one identity whose refused proxy requests are tallied apart, at most, at once (each with
 * a burst of {@link BURST}): with the identity's shared tally, 5 × 32 rows a window, short of the
 * window's budget.
 */
export const MAX_AGENT_TALLIES = 4;

/**
 * The window's budget of unvouched reports of requests that went, all identities together, in bursts
 * of `[vault] proxy_request_rows`: one identity gets at most {@link MAX_AGENT_TALLIES} + 1 bursts, so
 * it takes several identities to spend it (and reports that carried a counted use are never in it).
 */
export const TRAFFIC_BUDGET_BURSTS = 16;

/** Distinct names a summary lists, at most `max`, and how many refusals named one left out. */
interface Named {
  names: Set<string>;
  omitted: number;
}

/** One identity's refusals in the current window (reasons: by error code). */
interface Tally extends WindowTally {
  actor: Identity;
  /** What is tallied: the identity's refused calls, or the refused requests its proxy reported. */
  type: TalliedType;
  /** For `proxy_request`: the agent the requests were for (each has its own tally); else null. */
  forAgent: string | null;
  /** `scope/name` of the secrets the counted refusals named. */
  secrets: Named;
  /** The domains they named. */
  domains: Named;
  /** The agents they were for (an orchestrator's, or another agent's an agent asked for). */
  agents: Named;
}

/** The audit types whose rows are tallied: refusals, and the traffic rows of the module comment. */
type TalliedType = "access_denied" | "proxy_request" | "tool_call" | "lease_revoked";

/** Summary drafts: written past the tally (see {@link isTallied}). */
const summaries = new WeakSet<AuditDraft>();

type RefusalLog = AuditWindow<Tally>;

function newLog(ctx: VaultContext, traffic = false): RefusalLog {
  const burst = traffic ? ctx.limits.proxyRequestRows : BURST;
  return new AuditWindow<Tally>(ctx, {
    burst,
    budget: traffic ? burst * TRAFFIC_BUDGET_BURSTS : WINDOW_BUDGET,
    maxKeys: MAX_IDENTITIES,
    keyOf: (t) => tallyKey(t.actor, t.type, t.forAgent),
    overflow: (t) => newTally({ id: "*", role: t.actor.role, transport: t.actor.transport }, burst, t.type, null),
    fresh: (t, written) => newTally(t.actor, written, t.type, t.forAgent),
    merge: (into, from) => {
      mergeNamed(into.secrets, from.secrets, MAX_SECRETS);
      mergeNamed(into.domains, from.domains, MAX_NAMED);
      mergeNamed(into.agents, from.agents, MAX_NAMED);
    },
    summary: traffic ? (t) => trafficSummary(t, burst) : summary,
  });
}

function tallyKey(actor: Identity, type: TalliedType, forAgent: string | null): string {
  return `${actor.transport}\u0000${actor.id}\u0000${type}\u0000${forAgent ?? ""}`;
}

function named(): Named {
  return { names: new Set(), omitted: 0 };
}

function newTally(actor: Identity, written: number, type: TalliedType, forAgent: string | null): Tally {
  return { actor, type, forAgent, written, count: 0, since: 0, reasons: new Map(), secrets: named(), domains: named(), agents: named() };
}

/** Notes one refusal naming `name` (nothing when it named none). */
function addNamed(into: Named, raw: string | null | undefined, max: number): void {
  if (typeof raw !== "string") return;
  const name = raw.length > 256 ? `${raw.slice(0, 255)}…` : raw;
  if (into.names.has(name) || into.names.size < max) into.names.add(name);
  else into.omitted++;
}

function mergeNamed(into: Named, from: Named, max: number): void {
  for (const n of from.names) addNamed(into, n, max);
  into.omitted += from.omitted;
}

/** The one name the counted refusals named, when they all named the same one; else null. */
function only(n: Named): string | null {
  return n.names.size === 1 && n.omitted === 0 ? [...n.names][0]! : null;
}

/** A summary's fields for one list: `key` (comma-separated) and `key_omitted`, when there is anything. */
function namedDetail(key: string, n: Named): Record<string, string | number> {
  return {
    ...(n.names.size > 0 ? { [key]: [...n.names].join(",") } : {}),
    ...(n.omitted > 0 ? { [`${key}_omitted`]: n.omitted } : {}),
  };
}

function tallyOf(log: RefusalLog, d: AuditDraft): Tally {
  const type: TalliedType = d.type === "proxy_request" || d.type === "tool_call" || d.type === "lease_revoked" ? d.type : "access_denied";
  // A proxy's refused requests (and traffic rows), by the agent they were for: each agent its own
  // burst, for the first few agents of the identity at once (module comment).
  let forAgent = type !== "access_denied" ? (d.agent ?? null) : null;
  if (forAgent !== null && !log.has(tallyKey(d.actor, type, forAgent))) {
    const shared = tallyKey(d.actor, type, null);
    if (log.keysWith(shared) - (log.has(shared) ? 1 : 0) >= MAX_AGENT_TALLIES) forAgent = null;
  }
  return log.tally(tallyKey(d.actor, type, forAgent), () => newTally(d.actor, 0, type, forAgent));
}

/**
 * What a summary counts a refusal under: the error code at the head of its reason (`code: message`,
 * src/vault/denied.ts); for a refusal of the caller's role (./access.ts, `roleError`), the code and
 * the step it may not take, from a fixed set written in the code (never a caller's text).
 */
function codeOf(reason: string | null | undefined): string {
  const text = reason ?? "";
  const role = /^access_denied: role [a-z]+ may not ([a-z][a-z ()]*?)(?: \(agents use leases\))?; it needs role /.exec(text);
  if (role) return `access_denied (may not ${role[1]!})`;
  const m = /^([a-z_]+):/.exec(text);
  return m ? m[1]! : "refused";
}

/** The row standing for a tally's counted refusals. */
function summary(t: Tally): AuditDraft {
  const { text, top } = reasonsText(t.reasons);
  const draft: AuditDraft = {
    type: t.type,
    actor: t.actor,
    // Refusals all for one agent, or all naming one secret, are filed under it; a summary listing
    // several is found by `lessor audit query --agent/--secret` through its list (src/store/audit-summaries.ts).
    agent: t.forAgent ?? t.actor.agent ?? only(t.agents),
    secret: only(t.secrets),
    outcome: "denied",
    reason: `${top ?? "several"}: ${t.count} refusals counted in this window (detail.reasons says why)`,
    detail: {
      count: t.count,
      since: t.since,
      reasons: text,
      ...namedDetail("secrets", t.secrets),
      ...namedDetail("domains", t.domains),
      ...namedDetail("agents", t.agents),
    },
  };
  summaries.add(draft);
  return draft;
}

/** What a traffic summary's rows are, and how its detail counts them, by their type. */
const TRAFFIC_COUNTED: Record<Exclude<TalliedType, "access_denied">, { what: string; how: string }> = {
  proxy_request: { what: "proxied requests", how: "detail.reasons by outcome and status" },
  tool_call: { what: "tool calls this identity reported", how: "detail.reasons by outcome and error code" },
  lease_revoked: { what: "revocations that changed nothing", how: "detail.calls counts them" },
};

/** The row standing for a tally's counted traffic: proxied requests that went (ok or error), tool calls, revocations that changed nothing. */
function trafficSummary(t: Tally, burst: number): AuditDraft {
  const { text } = reasonsText(t.reasons);
  const counted = TRAFFIC_COUNTED[t.type as Exclude<TalliedType, "access_denied">];
  const allOk = [...t.reasons.keys()].every((r) => r.startsWith("ok ") || r === "ok" || r === "no change");
  const draft: AuditDraft = {
    type: t.type,
    actor: t.actor,
    agent: t.forAgent ?? t.actor.agent ?? null,
    secret: null,
    domain: only(t.domains),
    outcome: allOk ? "ok" : "error",
    reason: `${t.count} ${counted.what} counted in this window, past the ${burst} audited one row each ([vault] proxy_request_rows; ${counted.how})`,
    // A revocation row's own `count` says how many leases it revoked: its summary says `calls` instead.
    detail:
      t.type === "lease_revoked"
        ? { changed: 0, calls: t.count, since: t.since }
        : { count: t.count, since: t.since, reasons: text, ...namedDetail("domains", t.domains) },
  };
  summaries.add(draft);
  return draft;
}

const logs = new WeakMap<VaultContext, RefusalLog>();
/** The window of traffic rows (proxied requests that went, agents' tool calls, revocations that changed nothing): see the module comment. */
const trafficLogs = new WeakMap<VaultContext, RefusalLog>();

/**
 * True for a traffic row (module comment) from an agent or a VM guest, not a summary: a `proxy_request`
 * report of a request that went (ok or error; a proxy an agent runs with its own token), a `tool_call`
 * report, or a `lease_revoked` that changed nothing: rows the one they are about can have written at
 * will. The proxies of the host's owner and its orchestrators (`lessor run`, `lessor proxy`) report
 * every request as a row of its own, however busy the agent (issue 14: every proxied request is an
 * audit event), and the owner's `lessor mcp` every tool call; a flood of those is the owner's own.
 */
function isTraffic(d: AuditDraft): boolean {
  if (d.actor.role !== "agent" && d.actor.transport !== "vsock") return false;
  if (d.type === "tool_call") return true;
  if (d.type === "lease_revoked") return d.detail?.["alarm"] !== true && (d.detail?.["changed"] === 0 || d.detail?.["count"] === 0);
  return d.type === "proxy_request" && d.outcome !== "denied" && d.detail?.["alarm"] !== true && !vouched.has(d);
}

/**
 * Reports of requests that carried a credential whose use the vault counted (src/vault/proxy-requests.ts:
 * each lease it names has more counted uses than reports written): written one row each, never tallied,
 * however many. They cannot be made up past what the leases were really used for, and they are the
 * requests an operator must be able to read one by one (a flood of others must not hide them).
 */
const vouched = new WeakSet<AuditDraft>();

/** Marks `draft` as a report that carried a credential whose use the vault counted (see {@link vouched}). */
export function vouchProxyRequest(draft: AuditDraft): AuditDraft {
  vouched.add(draft);
  return draft;
}

function trafficLogOf(ctx: VaultContext): RefusalLog {
  let log = trafficLogs.get(ctx);
  if (log === undefined) trafficLogs.set(ctx, (log = newLog(ctx, true)));
  return log;
}

/** What a summary counts a traffic row under: a proxied request's outcome and status, a tool call's outcome and code. */
function trafficReason(d: AuditDraft): string {
  if (d.type === "lease_revoked") return "no change";
  if (d.type === "tool_call") return d.reason === null || d.reason === undefined ? d.outcome : `${d.outcome} ${d.reason}`;
  return `${d.outcome} ${String(d.detail?.["status"] ?? "?")}`;
}

function logOf(ctx: VaultContext): RefusalLog {
  let log = logs.get(ctx);
  if (log === undefined) logs.set(ctx, (log = newLog(ctx)));
  return log;
}

/**
 * True for a draft that goes through the tally (not a summary this module made): an `access_denied`
 * refusal, a `proxy_request` that is not a tripwire alarm (refused, or one that went), or another
 * traffic row ({@link isTraffic}).
 */
export function isTallied(draft: AuditDraft): boolean {
  if (summaries.has(draft)) return false;
  if (isTraffic(draft)) return true;
  if (draft.outcome !== "denied") return false;
  return draft.type === "access_denied" || (draft.type === "proxy_request" && draft.detail?.["alarm"] !== true);
}

/**
 * Decides for a refusal's draft ({@link isTallied}), inside its call's transaction: true to write it
 * now, false to count it once its call commits. A refusal written takes its place in the burst at
 * once, noted in `held`: the place is kept if the transaction commits, and given back by
 * {@link releaseRefusals} if it rolls back or its function is run again (which decides anew).
 */
export function admitRefusal(ctx: VaultContext, draft: AuditDraft, held: unknown[]): boolean {
  const traffic = isTraffic(draft);
  const log = traffic ? trafficLogOf(ctx) : logOf(ctx);
  // The vault is closing: written as before.
  if (log.closed) return true;
  // A proxied request that went is tallied as a refused one is: per identity and agent, the first few
  // agents of an identity apart (an orchestrator naming made-up agents gets no more bursts).
  const t = tallyOf(log, draft);
  if (!log.admit(t)) return false;
  held.push([log, t]);
  return true;
}

/** Gives back the places in the burst `held` took ({@link admitRefusal}): its transaction did not keep them. */
export function releaseRefusals(ctx: VaultContext, held: unknown[]): void {
  for (const h of held) {
    const [log, t] = h as [RefusalLog, Tally];
    log.release(t);
  }
  held.length = 0;
}

/** Counts refusals that were not written, once their call's transaction committed. */
export function countRefusals(ctx: VaultContext, drafts: readonly AuditDraft[], now: number): void {
  if (drafts.length === 0) return;
  const log = logOf(ctx);
  for (const d of drafts) {
    if (isTraffic(d)) {
      const traffic = trafficLogOf(ctx);
      const t = tallyOf(traffic, d);
      traffic.count(t, trafficReason(d), now);
      addNamed(t.domains, d.domain, MAX_NAMED);
      continue;
    }
    const t = tallyOf(log, d);
    log.count(t, codeOf(d.reason), now);
    addNamed(t.secrets, d.secret, MAX_SECRETS);
    addNamed(t.domains, d.domain, MAX_NAMED);
    // The agent a refusal was for, when it is not the caller's own (an orchestrator's, say).
    if (d.agent !== (d.actor.agent ?? null)) addNamed(t.agents, d.agent, MAX_NAMED);
  }
}

/** Closes the current window now: writes every refusal counted but not yet written. */
export async function flushRefusals(ctx: VaultContext): Promise<void> {
  await logs.get(ctx)?.flush();
  await trafficLogs.get(ctx)?.flush();
}

/** The vault is closing: stops the window timer and writes every refusal still counted. */
export async function closeRefusals(ctx: VaultContext): Promise<void> {
  // Both closed even if one's last write fails; the first failure is thrown.
  const results = await Promise.allSettled([logs.get(ctx)?.close(), trafficLogs.get(ctx)?.close()]);
  for (const r of results) if (r.status === "rejected") throw r.reason;
}
