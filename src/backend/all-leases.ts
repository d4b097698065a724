/**
 * Every lease a listing matches, fetched page by page. One answer holds at most {@link PAGE} leases
 * (a lease is at most ~20 KiB: 64 domains of 253 characters and the rule's paths), so no answer from a
 * daemon nears its 1 MiB frame limit however many leases an agent holds
 * (`[vault] max_live_leases_per_agent` may be raised to a million).
 */
import type { LeaseRecord } from "../base/types.js";
import type { LeaseListFilter } from "../client/facade.js";
import type { BackendApi } from "./backend.js";

/** Leases per list_leases call. */
export const PAGE = 50;

/**
 * Every matching lease, newest first, in pages of {@link PAGE}; with `max`, stops once it has at least
 * that many (a count shown to a person need not read a million rows).
 */
export async function listAllLeases(api: BackendApi, filter: Omit<LeaseListFilter, "before" | "limit">, max = Infinity): Promise<LeaseRecord[]> {
  const all: LeaseRecord[] = [];
  for (;;) {
    const last = all.at(-1);
    const page = await api.listLeases({ ...filter, ...(last !== undefined ? { before: last.id } : {}), limit: PAGE });
    all.push(...page);
    if (page.length < PAGE || all.length >= max) return all;
  }
}
