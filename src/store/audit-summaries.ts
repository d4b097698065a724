/**
 * How an audit query by agent or secret finds summaries of counted refusals (src/vault/refusals.ts):
 * one `access_denied` or `proxy_request` row (with `detail.count`) stands for many refusals and lists
 * what they named in `detail.agents` and `detail.secrets` (comma-separated), naming one in its `agent`
 * or `secret` column only when it is the only one. Every store answers `agent`/`secret` filters with
 * the rows whose column holds the name **and** the summaries that list it, so that refusals counted
 * behind decoys still show (docs/cli/admin.md, `lessor audit query --agent/--secret`).
 *
 * A store reads candidate summaries cheaply (their type, a substring of their detail text) and keeps
 * those {@link summaryMatches} accepts: the name must be one of the list's entries exactly
 * (`prod` does not match `prod-db`). Names are checked by parsing the stored JSON, never by pattern.
 */
import type { AuditFilter, AuditRecord } from "../base/types.js";

/** The types whose counted refusals are written as summary rows. */
export const SUMMARY_TYPES: readonly string[] = ["access_denied", "proxy_request"];

/** The text every summary's stored detail starts with (JSON.stringify of `{ count, … }`). */
export const SUMMARY_DETAIL_PREFIX = '{"count":';

/** A name filter: the column holding one name, the summary's detail list, the name asked for. */
export interface NameFilter {
  column: "agent" | "secret";
  list: "agents" | "secrets";
  value: string;
}

/** The filter's agent and secret conditions (empty when it has neither). */
export function nameFilters(filter: AuditFilter): NameFilter[] {
  const out: NameFilter[] = [];
  if (filter.agent !== undefined) out.push({ column: "agent", list: "agents", value: filter.agent });
  if (filter.secret !== undefined) out.push({ column: "secret", list: "secrets", value: filter.secret });
  return out;
}

/**
 * True when the query may also need summaries: it filters by agent or secret, not by lease (a summary
 * names no lease), and its types (if any) include a summarised one.
 */
export function wantsSummaries(filter: AuditFilter): boolean {
  if (filter.leaseId !== undefined || nameFilters(filter).length === 0) return false;
  return filter.types === undefined || filter.types.length === 0 || filter.types.some((t) => SUMMARY_TYPES.includes(t));
}

/**
 * True when `rec` is a summary of counted refusals that each of the filter's names is in: in its
 * column, or as an entry of its detail list.
 */
export function summaryMatches(rec: AuditRecord, filter: AuditFilter): boolean {
  if (!SUMMARY_TYPES.includes(rec.type) || rec.detail === null || !rec.detail.startsWith(SUMMARY_DETAIL_PREFIX)) return false;
  let detail: Record<string, unknown>;
  try {
    const d = JSON.parse(rec.detail) as unknown;
    if (typeof d !== "object" || d === null) return false;
    detail = d as Record<string, unknown>;
  } catch {
    return false; // the vault writes only JSON: this row was altered (audit verify names it)
  }
  return nameFilters(filter).every((n) => {
    if (rec[n.column] === n.value) return true;
    const list = detail[n.list];
    return typeof list === "string" && list.split(",").includes(n.value);
  });
}

/** `a` and `b` (each in `order` of seq) merged without duplicates, the first `limit`. */
export function mergeAudit(a: AuditRecord[], b: AuditRecord[], order: "asc" | "desc", limit: number): AuditRecord[] {
  if (b.length === 0) return a.slice(0, limit);
  const bySeq = new Map<number, AuditRecord>();
  for (const r of [...a, ...b]) if (!bySeq.has(r.seq)) bySeq.set(r.seq, r);
  const all = [...bySeq.values()].sort((x, y) => (order === "desc" ? y.seq - x.seq : x.seq - y.seq));
  return all.slice(0, limit);
}
