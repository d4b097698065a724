/**
 * The writer connection's cache of rows that nearly every transaction reads and few write: metadata
 * (the current master key id, the killswitch, the audit format), the audit head and checkpoint, and
 * each secret's current version. A lease+access reads all of them; with the cache, a batch of such
 * transactions reads each once.
 *
 * Why it is safe: the cache is only used inside the writer's transactions, which hold SQLite's write
 * lock (BEGIN IMMEDIATE), so no other connection commits while they run. Between two transactions
 * another connection (another lessor process on the same file) may commit; SQLite's `data_version`
 * (per connection: it changes when any other connection commits) tells, and the store checks it at
 * each BEGIN and empties the cache when it moved ({@link WriterCache.sync}). This store's own writes
 * update or drop the entries they touch as they are made, and every rollback (a whole batch, one
 * call's savepoint, a failed commit) empties the cache, since what it holds may have been undone.
 *
 * The PostgreSQL store keeps one more kind of entry here: an upper bound of each agent's live leases
 * ({@link WriterCache.liveBound}), and drops entries by kind when another instance's commit changed
 * that kind ({@link WriterCache.dropConfig}, {@link WriterCache.dropAudit}, {@link WriterCache.dropLive}).
 *
 * Entries are shared objects: callers must not mutate what a read returns (the vault never does).
 */
import type { AuditCheckpoint, AuditHead, SecretRef, VersionRecord } from "../../base/types.js";

/** Most secrets' current versions kept; past it the map is emptied and refilled as read. */
const MAX_VERSIONS = 4096;

/** A miss: not cached. (null is a cached "there is none".) */
export const MISS = Symbol("miss");

const refKey = (ref: SecretRef): string => `${ref.scope}\0${ref.name}`;

/** See the module comment. */
export class WriterCache {
  #dataVersion: number | undefined;
  readonly #meta = new Map<string, string | null>();
  #head: AuditHead | null | typeof MISS = MISS;
  #checkpoint: AuditCheckpoint | null | typeof MISS = MISS;
  readonly #versions = new Map<string, VersionRecord | null>();
  readonly #live = new Map<string, number>();

  /** Called at each BEGIN with the writer's `data_version`: empties the cache if another connection committed. */
  sync(dataVersion: number): void {
    if (dataVersion !== this.#dataVersion) this.clear();
    this.#dataVersion = dataVersion;
  }

  /** Forgets everything (after a rollback, or another connection's commit). */
  clear(): void {
    this.dropConfig();
    this.dropAudit();
    this.dropLive();
  }

  /** Forgets metadata and current versions (another writer changed secrets or metadata). */
  dropConfig(): void {
    this.#meta.clear();
    this.#versions.clear();
  }

  /** Forgets the audit head and checkpoint (another writer appended to the trail). */
  dropAudit(): void {
    this.#head = MISS;
    this.#checkpoint = MISS;
  }

  /** Forgets the live-lease bounds (another writer inserted a lease that may be live). */
  dropLive(): void {
    this.#live.clear();
  }

  meta(key: string): string | null | typeof MISS {
    const v = this.#meta.get(key);
    return v === undefined ? MISS : v;
  }
  setMeta(key: string, value: string | null): void {
    this.#meta.set(key, value);
  }

  head(): AuditHead | null | typeof MISS {
    return this.#head;
  }
  setHead(head: AuditHead | null): void {
    this.#head = head;
  }

  checkpoint(): AuditCheckpoint | null | typeof MISS {
    return this.#checkpoint;
  }
  setCheckpoint(cp: AuditCheckpoint | null): void {
    this.#checkpoint = cp;
  }

  currentVersion(ref: SecretRef): VersionRecord | null | typeof MISS {
    const v = this.#versions.get(refKey(ref));
    return v === undefined ? MISS : v;
  }
  setCurrentVersion(ref: SecretRef, v: VersionRecord | null): void {
    if (this.#versions.size >= MAX_VERSIONS) this.#versions.clear();
    this.#versions.set(refKey(ref), v);
  }
  /** A write touched the secret's rows (metadata, versions): its current version is read again. */
  dropSecret(ref: SecretRef): void {
    this.#versions.delete(refKey(ref));
  }

  /**
   * An upper bound of `agent`'s live leases: the exact count when it was read, plus every lease this
   * writer inserted for the agent since. Leases only stop being live over time (expiry, use,
   * revocation) and only an insert adds one, so while no other writer inserted a lease the bound
   * holds; a bound below a cap proves the count is below it.
   */
  liveBound(agent: string): number | typeof MISS {
    return this.#live.get(agent) ?? MISS;
  }
  setLiveBound(agent: string, n: number): void {
    if (this.#live.size >= MAX_VERSIONS) this.#live.clear();
    this.#live.set(agent, n);
  }
  /** This writer inserted a lease of `agent` that may be live: its bound grows by one. */
  noteLiveInsert(agent: string): void {
    const n = this.#live.get(agent);
    if (n !== undefined) this.#live.set(agent, n + 1);
  }
}
