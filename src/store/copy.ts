/**
 * Copying a whole vault from one store to another (`lessor migrate`, src/config/migrate.ts): every
 * secret with every version, leases, tokens, metadata, the audit trail and its checkpoint, row for row.
 *
 * Nothing is decrypted or re-sealed: a version's AAD binds its scope, name, version, algorithm and
 * key id, never where the row is stored, so the sealed bytes stay valid in another store; the audit
 * rows keep their chain values and the checkpoint its MAC, so the trail verifies on the target under
 * the same audit keys. The copy goes through the {@link Store} interface only, so any pair of stores
 * works (SQLite, PostgreSQL, memory).
 *
 * The copy is several target transactions (a transaction function must not wait on the source: it
 * may hold a write lock other callers wait on), so it is not atomic: a failed copy leaves a partly
 * written target, which {@link assertEmptyStore} then refuses; empty it and run again. The source must
 * not change meanwhile; {@link storeSummary} taken before and after tells if it did.
 */
import { createHash } from "node:crypto";
import { VaultError } from "../base/errors.js";
import type { AuditRecord, LeaseRecord, SecretRecord, TokenRecord, VersionRecord } from "../base/types.js";
import type { Store, StoreReader, StoreTx } from "../vault/ports.js";
import { CURRENT_KEY_META } from "../vault/key-reload.js";
import { INIT_KEY_META } from "../vault/vault.js";
import { VAULT_ID_META } from "../vault/vault-id.js";

/** Rows per table (`checkpoint`: 0 or 1). */
export interface TableCounts {
  secrets: number;
  versions: number;
  leases: number;
  tokens: number;
  meta: number;
  audit: number;
  checkpoint: number;
}

/** The tables, in the order they are copied and reported. */
export const TABLES: readonly (keyof TableCounts)[] = ["secrets", "versions", "leases", "tokens", "meta", "audit", "checkpoint"];

/** A store's content in short: rows per table and a SHA-256 over each table's rows in a fixed order. */
export interface StoreSummary {
  counts: TableCounts;
  /** Hex SHA-256 per table, over every field of every row (bytes as hex), so equal digests mean equal content. */
  digests: Record<keyof TableCounts, string>;
}

/** How {@link copyStore} batches its writes. */
export interface CopyOptions {
  /** Audit rows, leases or tokens per target transaction (default 1000). */
  batchRows?: number;
  /** Secrets (with all their versions) per target transaction (default 100). */
  batchSecrets?: number;
  /** Called after each committed batch (progress output). */
  onBatch?: (table: keyof TableCounts, copied: number) => void;
  /** The target in messages (default "the target store"). */
  describe?: string;
}

/** The audit page size: the most rows a store's queryAudit returns at once. */
const AUDIT_PAGE = 10_000;

function chunks<T>(rows: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < rows.length; i += size) out.push(rows.slice(i, i + size));
  return out;
}

/** JSON with byte fields as hex, so a digest does not depend on Buffer vs Uint8Array. */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (v instanceof Uint8Array ? `hex:${Buffer.from(v).toString("hex")}` : v));
}

/** A running digest over one table's rows. */
class TableHash {
  private readonly h = createHash("sha256");
  n = 0;
  add(row: unknown): void {
    this.h.update(canonical(row));
    this.h.update("\n");
    this.n++;
  }
  hex(): string {
    return this.h.digest("hex");
  }
}

/** Field order fixed by hand, so two stores that build their records in another key order still agree. */
const secretRow = (s: SecretRecord) => [s.scope, s.name, s.kind, s.description, s.tags, s.currentVersion, s.createdAt, s.updatedAt];
const versionRow = (v: VersionRecord) => [v.scope, v.name, v.version, v.alg, v.keyId, v.wrappedDek, v.ciphertext, v.size, v.createdAt, v.createdBy];
const leaseRow = (l: LeaseRecord) => [
  l.id, l.agent, l.scope, l.name, l.domains, l.anyDomain, l.methods, l.paths, l.rule, l.issuedAt, l.expiresAt, l.maxExpiresAt,
  l.uses, l.maxUses, l.renewals, l.maxRenewals, l.renewable, l.revokedAt, l.revokeReason, l.issuedBy, l.bound, l.proxyOnly,
];
const tokenRow = (t: TokenRecord) => [t.id, t.name, t.role, t.agent, t.actFor, t.createdAt, t.expiresAt, t.revokedAt, t.createdBy, t.hash, t.mac];
const auditRow = (a: AuditRecord) => [
  a.seq, a.id, a.time, a.type, a.actorId, a.actorRole, a.transport, a.agent, a.secret, a.leaseId, a.domain, a.outcome, a.reason,
  a.detail, a.prevHash, a.hash, a.keyId,
];

/** Every audit row of `store`, oldest first, a page at a time. */
async function* auditPages(store: Store): AsyncGenerator<AuditRecord[]> {
  let after = 0;
  for (;;) {
    const page = await store.queryAudit({ afterSeq: after, order: "asc", limit: AUDIT_PAGE });
    if (page.length === 0) return;
    yield page;
    after = page[page.length - 1]!.seq;
    if (page.length < AUDIT_PAGE) return;
  }
}

/** Reads the whole of `store` (committed data) into counts and per-table digests. */
export async function storeSummary(store: Store): Promise<StoreSummary> {
  const h = { secrets: new TableHash(), versions: new TableHash(), leases: new TableHash(), tokens: new TableHash(), meta: new TableHash(), audit: new TableHash(), checkpoint: new TableHash() };
  for (const s of await store.listSecrets({})) {
    h.secrets.add(secretRow(s));
    for (const v of await store.listVersions(s)) h.versions.add(versionRow(v));
  }
  // listLeases is newest first by id; sort again so the order never depends on the store's collation.
  for (const l of sortById(await store.listLeases({}))) h.leases.add(leaseRow(l));
  for (const t of sortById(await store.listTokens())) h.tokens.add(tokenRow(t));
  for (const m of await store.listMeta()) h.meta.add([m.key, m.value]);
  for await (const page of auditPages(store)) for (const a of page) h.audit.add(auditRow(a));
  const cp = await store.getCheckpoint();
  if (cp !== null) h.checkpoint.add([cp.seq, cp.hash, cp.keyId, cp.mac]);
  const counts = {} as TableCounts;
  const digests = {} as Record<keyof TableCounts, string>;
  for (const t of TABLES) {
    counts[t] = h[t].n;
    digests[t] = h[t].hex();
  }
  return { counts, digests };
}

function sortById<T extends { id: string }>(rows: T[]): T[] {
  return rows.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/**
 * Throws VaultError("invalid_request") naming what the target already holds unless it holds nothing at all:
 * a migration never merges into, or overwrites, another vault.
 */
export async function assertEmptyStore(target: Store, describe: string): Promise<void> {
  const found = await storeHoldings(target);
  if (found.length > 0) throw new TargetNotEmpty(describe, found);
}

/** What `store` holds of a vault, in words ("2 secret(s)", "5 audit event(s)", …, metadata included); empty when nothing. */
export async function storeHoldings(store: Store): Promise<string[]> {
  const found = await heldBy(store);
  const meta = await store.listMeta();
  if (meta.length > 0) found.push(`${meta.length} metadata entr${meta.length === 1 ? "y" : "ies"}`);
  return found;
}

/** Metadata keys every vault is made with (`lessor init` writes them before anything else); the rest, such as `audit_format`, the source holds too. */
const VAULT_META_KEYS = [INIT_KEY_META, CURRENT_KEY_META, VAULT_ID_META];

/** What `r` holds of a vault, in words (metadata aside: a transaction cannot list it); empty when nothing. */
async function heldBy(r: StoreReader): Promise<string[]> {
  const [secrets, leases, tokens, head, cp] = await Promise.all([r.listSecrets({}), r.listLeases({ limit: 1 }), r.listTokens(), r.auditHead(), r.getCheckpoint()]);
  const found: string[] = [];
  if (secrets.length > 0) found.push(`${secrets.length} secret(s)`);
  if (leases.length > 0) found.push("leases");
  if (tokens.length > 0) found.push(`${tokens.length} token(s)`);
  if (head !== null) found.push(`${head.seq} audit event(s)`);
  if (cp !== null) found.push("an audit checkpoint");
  return found;
}

/** The refusal of a target that holds something: nothing of this copy was written into it. */
export class TargetNotEmpty extends VaultError {
  constructor(describe: string, found: string[]) {
    super(
      "invalid_request",
      `the target ${describe} is not empty (it holds ${found.join(", ")}); lessor migrate copies only into an empty store, never over another vault. Use a new file or schema. Delete or drop nothing before you have made sure it is not a live vault (compare it with the home's store and every other lessor home's): only a failed earlier migration's leftovers may go`,
    );
  }
}

/**
 * Copies everything in `source` into `target`, which must be empty (see {@link assertEmptyStore}),
 * in batches of target transactions: secrets with their versions, leases, tokens, the audit trail in
 * seq order, the checkpoint, and the metadata last (so a target cut short holds no master key id or
 * audit format that would make it look like a whole vault). Returns the counts copied.
 */
export async function copyStore(source: Store, target: Store, opts: CopyOptions = {}): Promise<TableCounts> {
  const rows = Math.max(1, opts.batchRows ?? 1000);
  const perSecrets = Math.max(1, opts.batchSecrets ?? 100);
  const counts: TableCounts = { secrets: 0, versions: 0, leases: 0, tokens: 0, meta: 0, audit: 0, checkpoint: 0 };
  // The first write checks, in its own transaction (under the store's write lock), that the target
  // is still empty: another migration that passed the same check meanwhile cannot merge into this one.
  // A transaction cannot list metadata, so it looks up each key the source holds and the keys every
  // vault is made with: a target that gained only metadata since its check (a `lessor init` run into
  // it meanwhile) is another vault too.
  const metaKeys = [...new Set([...VAULT_META_KEYS, ...(await source.listMeta()).map((m) => m.key)])];
  let claimed = false;
  const write = async (f: (tx: StoreTx) => Promise<void>): Promise<void> => {
    await target.transaction(async (tx) => {
      if (!claimed) {
        const found = await heldBy(tx);
        const meta = (await Promise.all(metaKeys.map((k) => tx.getMeta(k)))).filter((v) => v !== null).length;
        if (meta > 0) found.push(`${meta} metadata entr${meta === 1 ? "y" : "ies"}`);
        if (found.length > 0) throw new TargetNotEmpty(opts.describe ?? "store", found);
      }
      await f(tx);
    });
    claimed = true;
  };

  for (const group of chunks(await source.listSecrets({}), perSecrets)) {
    // Read the group's versions first: the target transaction must only talk to its tx.
    const withVersions = await Promise.all(group.map(async (s) => ({ s, versions: await source.listVersions(s) })));
    await write(async (tx) => {
      for (const { s, versions } of withVersions) {
        await tx.putSecret(s);
        for (const v of versions) await tx.insertVersion(v);
      }
    });
    counts.secrets += group.length;
    for (const g of withVersions) counts.versions += g.versions.length;
    opts.onBatch?.("secrets", counts.secrets);
  }

  for (const group of chunks(await source.listLeases({}), rows)) {
    await write(async (tx) => {
      for (const l of group) await tx.insertLease(l);
    });
    counts.leases += group.length;
    opts.onBatch?.("leases", counts.leases);
  }

  for (const group of chunks(await source.listTokens(), rows)) {
    await write(async (tx) => {
      for (const t of group) await tx.insertToken(t);
    });
    counts.tokens += group.length;
    opts.onBatch?.("tokens", counts.tokens);
  }

  for await (const page of auditPages(source))
    for (const group of chunks(page, rows)) {
      await write(async (tx) => {
        for (const a of group) await tx.insertAudit(a);
      });
      counts.audit += group.length;
      opts.onBatch?.("audit", counts.audit);
    }

  const cp = await source.getCheckpoint();
  const meta = await source.listMeta();
  await write(async (tx) => {
    if (cp !== null) await tx.putCheckpoint(cp);
    for (const m of meta) await tx.setMeta(m.key, m.value);
  });
  counts.checkpoint = cp === null ? 0 : 1;
  counts.meta = meta.length;
  opts.onBatch?.("meta", counts.meta);
  return counts;
}
