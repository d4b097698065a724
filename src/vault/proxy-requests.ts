/**
 * The audit record of one request the injecting proxy handled (src/proxy/lease-egress.ts): who, which
 * leases' credentials it carried, method, host, normalised path, status, bytes and duration; never a
 * header or body byte. A tripwire record (a credential or its placeholder sent to a host its grant
 * does not cover) revokes the leases it names in the same commit and is written as an alarm.
 */
import { VaultError } from "../base/errors.js";
import { isUuid } from "../base/ids.js";
import { checkAgentId } from "../base/names.js";
import { checkPlainText } from "../base/text.js";
import type { AuditDraft, Identity, LeaseRecord } from "../base/types.js";
import { mayActFor } from "./access.js";
import { commit, type VaultContext } from "./context.js";
import { denied } from "./denied.js";
import { sessionError } from "./leases.js";
import { canonicalRequestPath } from "./http-path.js";
import { checkTarget } from "./target.js";
import { vouchProxyRequest } from "./refusals.js";

/** How a proxied request ended. */
export const PROXY_OUTCOMES = ["ok", "refused", "error", "tripwire"] as const;
export type ProxyOutcome = (typeof PROXY_OUTCOMES)[number];

/** What the proxy reports about one request. */
export interface ProxyRequestReport {
  agent: string;
  /** The leases whose credentials the request carried (for a tripwire: the leases to revoke). */
  leaseIds: string[];
  method: string;
  host: string;
  /** The request path (the query is dropped here: it may hold a credential). */
  path: string;
  status: number;
  bytesOut: number;
  bytesIn: number;
  ms: number;
  outcome: ProxyOutcome;
  /** Why it was refused or failed; plain text, never a credential. */
  reason?: string;
}

/** At most this many leases per report. */
const MAX_LEASES = 32;

function count(n: unknown, what: string, max: number): number {
  if (typeof n !== "number" || !Number.isFinite(n) || n < 0 || n > max) throw new VaultError("invalid_request", `${what} must be a number from 0 to ${max}`);
  return Math.round(n);
}

/** At most this many reports per call. */
export const MAX_REPORTS = 256;

/**
 * Per vault: how many reports of requests that went were written vouched for each lease (see
 * {@link vouches}), at most {@link MAX_VOUCHED_LEASES} leases (the oldest forgotten first: a lease
 * forgotten starts again from none, still bounded by its uses).
 */
const vouchedReports = new WeakMap<VaultContext, Map<string, number>>();
const MAX_VOUCHED_LEASES = 4096;

/**
 * True when a report of a request that went (ok or error) carried credentials whose use the vault
 * counted: it names at least one lease, and each has more counted uses than reports already written
 * vouched for it. Such a report is written as a row of its own however many come (src/vault/refusals.ts);
 * a report an agent makes up past its leases' real uses goes to the tally. Counts the report for its
 * leases when it says yes. Within one transaction run, so a batch rerun may count a report twice:
 * that only sends a later one to the tally, never lets a made-up one through.
 */
function vouches(ctx: VaultContext, leases: readonly LeaseRecord[]): boolean {
  if (leases.length === 0) return false;
  let m = vouchedReports.get(ctx);
  if (m === undefined) vouchedReports.set(ctx, (m = new Map()));
  const book = m;
  if (!leases.every((l) => (book.get(l.id) ?? 0) < l.uses)) return false;
  for (const l of leases) {
    const n = (book.get(l.id) ?? 0) + 1;
    book.delete(l.id); // re-inserted last: the most recently reported are kept longest
    book.set(l.id, n);
  }
  while (book.size > MAX_VOUCHED_LEASES) book.delete(book.keys().next().value as string);
  return true;
}

/** One report checked and shaped for its audit event. */
interface Checked {
  r: ProxyRequestReport;
  agent: string;
  reason: string | null;
  detail: Record<string, string | number | boolean>;
}

function check(r: ProxyRequestReport): Checked {
  const agent = checkAgentId(r.agent);
  if (!Array.isArray(r.leaseIds) || r.leaseIds.length > MAX_LEASES || !r.leaseIds.every(isUuid))
    throw new VaultError("invalid_request", `leaseIds must be a list of at most ${MAX_LEASES} lease ids`);
  checkTarget({ domain: r.host, method: r.method, path: r.path });
  if (!(PROXY_OUTCOMES as readonly string[]).includes(r.outcome)) throw new VaultError("invalid_request", `outcome must be one of ${PROXY_OUTCOMES.join(", ")}`);
  const reason = r.reason === undefined ? null : checkPlainText(r.reason, "the reason", 300);
  const canon = canonicalRequestPath(r.path);
  const detail = {
    method: r.method.toUpperCase(),
    path: canon.path ?? "(unparseable path)",
    status: count(r.status, "status", 999),
    bytes_out: count(r.bytesOut, "bytesOut", Number.MAX_SAFE_INTEGER),
    bytes_in: count(r.bytesIn, "bytesIn", Number.MAX_SAFE_INTEGER),
    ms: count(r.ms, "ms", 7 * 24 * 3600_000),
    leases: r.leaseIds.join(","),
    ...(r.outcome === "tripwire" ? { alarm: true } : {}),
  };
  return { r, agent, reason, detail };
}

/**
 * Writes one `proxy_request` audit event per report, all in one commit (the proxy batches them: one
 * durable commit for many requests). The caller must be allowed to act for each report's agent, and
 * every lease a report names must be that agent's; otherwise nothing of the batch is written. For
 * outcome "tripwire" the named leases are revoked in the same commit and the event is flagged `alarm`.
 * Returns how many leases it revoked.
 */
export async function recordProxyRequests(ctx: VaultContext, who: Identity, reports: readonly ProxyRequestReport[]): Promise<{ revoked: number }> {
  if (!Array.isArray(reports) || reports.length === 0 || reports.length > MAX_REPORTS)
    throw new VaultError("invalid_request", `reports must be a list of 1 to ${MAX_REPORTS} proxied requests`);
  const checked = reports.map(check);
  return commit(ctx, async (tx, audit, now) => {
    // Every report is checked before any event is written: a refusal commits only its own
    // access_denied event, so a valid report ahead of a forged one must not be written either.
    const leasesOf: LeaseRecord[][] = [];
    // A proxy's batch names the same few leases again and again: each is read once per transaction
    // (nothing here changes a lease before every report is checked).
    const read = new Map<string, LeaseRecord | null>();
    for (const { r, agent } of checked) {
      if (!mayActFor(who, agent))
        return denied(audit, who, new VaultError("access_denied", `you may not report proxy requests of agent "${agent}"`), { agent });
      const leases: LeaseRecord[] = [];
      for (const id of r.leaseIds) {
        let lease = read.get(id);
        if (lease === undefined) read.set(id, (lease = await tx.getLease(id)));
        if (!lease || lease.agent !== agent)
          return denied(audit, who, new VaultError("access_denied", `lease ${id} is not a lease of agent "${agent}"`), { agent, leaseId: id });
        // A run's session reports (and trips the wire on) only its own leases: not another run's.
        const foreign = sessionError(who, lease);
        if (foreign) return denied(audit, who, foreign, { agent, leaseId: id });
        leases.push(lease);
      }
      leasesOf.push(leases);
    }
    let revoked = 0;
    for (const [i, { r, agent, reason, detail }] of checked.entries()) {
      const leases = leasesOf[i]!;
      const tripwire = r.outcome === "tripwire";
      const first = leases[0];
      const went = r.outcome === "ok" || r.outcome === "error";
      await audit((went && vouches(ctx, leases) ? vouchProxyRequest : (d: AuditDraft) => d)({
        type: "proxy_request",
        actor: who,
        agent,
        secret: first ? `${first.scope}/${first.name}` : null,
        leaseId: first?.id ?? null,
        domain: r.host,
        outcome: r.outcome === "ok" ? "ok" : r.outcome === "error" ? "error" : "denied",
        reason: tripwire ? `tripwire: ${reason ?? "a credential was sent to a host its grant does not cover"}` : reason,
        detail,
      }));
      if (tripwire)
        for (const l of leases) {
          const why = `tripwire: its credential was sent to ${r.host}, which its grant does not cover`.slice(0, 200);
          const n = await tx.revokeLeases({ id: l.id }, now, why);
          revoked += n;
          await audit({ type: "lease_revoked", actor: who, agent, secret: `${l.scope}/${l.name}`, leaseId: l.id, outcome: "ok", reason: why, detail: { changed: n, alarm: true } });
        }
    }
    return { revoked };
  });
}
