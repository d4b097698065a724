/**
 * Every secret a listing matches, fetched page by page. One answer holds at most {@link PAGE}
 * records (a record is at most a few KiB: a 1,024-character description, 32 tags), so no answer from a
 * daemon nears its 1 MiB frame limit, however many secrets the vault holds.
 */
import type { BackendApi } from "../../backend/backend.js";
import type { SecretRecord } from "../../base/types.js";

/** Secrets per list_secrets call. */
export const PAGE = 100;

/** The filter of `secret list` and `secret export`. */
export interface ListFilter {
  scope?: string;
  namePrefix?: string;
  tag?: string;
}

/** Every matching secret, sorted by scope then name, in pages of {@link PAGE}. */
export async function listAllSecrets(api: BackendApi, filter: ListFilter): Promise<SecretRecord[]> {
  const all: SecretRecord[] = [];
  for (;;) {
    const last = all.at(-1);
    const page = await api.listSecrets({ ...filter, ...(last !== undefined ? { after: { scope: last.scope, name: last.name } } : {}), limit: PAGE });
    all.push(...page);
    if (page.length < PAGE) return all;
  }
}
