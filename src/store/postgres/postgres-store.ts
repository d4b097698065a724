/**
 * The PostgreSQL store (node-postgres, a pool of pipelined connections): one vault shared by several
 * lessor instances. See docs/storage.md, "PostgreSQL".
 *
 * Transactions. Each instance runs its transaction functions one after another on one pooled
 * connection, several to a database transaction ("group commit", as the SQLite store does). Every
 * database transaction first takes a transaction-scoped advisory lock keyed by the schema (the
 * vault's write lock), so transactions of all instances run one at a time: serialisable, and the
 * audit chain has one writer. Use counts are changed by one conditional UPDATE … RETURNING, so even a
 * writer that skipped the lock could not use a lease twice past its limit, and a trigger refuses any
 * audit row that does not follow the head.
 *
 * Round trips (the Store contract, src/vault/ports.ts). Connections run in pipeline mode: a statement
 * is written without waiting for the answers to those before it. BEGIN, the lock and the read of the
 * commit counter go out with the batch's first reads; writes that return nothing are sent and not
 * waited for (their failure surfaces at the next read or at the commit and fails the transaction);
 * reads issued together (`Promise.all`) travel together. The hot rows (metadata, the audit head and
 * checkpoint, current versions) are cached while no other instance writes: every writing transaction
 * bumps `lessor_commits.n` under the lock, and a batch that answered from the cache checks, before
 * it commits, that n is still what this instance's last commit left; if not, it is rolled back and
 * run again with the cache emptied (the contract lets a store run a function again).
 *
 * Failure of one function among several in a batch: the database aborts the whole transaction on
 * any error, and a deferred write's failure cannot always be told apart from a sibling's, so the
 * batch is rolled back and run again with a savepoint per function, each function's writes waited
 * for at its end; then only the failing function fails.
 */
import { randomBytes } from "node:crypto";
import pg from "pg";
import type { Pool, PoolClient } from "pg";
import { VaultError } from "../../base/errors.js";
import type {
  AuditCheckpoint,
  AuditFilter,
  AuditHead,
  AuditRecord,
  LeaseFilter,
  LeaseRecord,
  RevokeSelector,
  SecretFilter,
  SecretRecord,
  SecretRef,
  TokenRecord,
  VersionRecord,
} from "../../base/types.js";
import type { ChangeListener, Store, StoreChange, StoreReader, StoreTx } from "../../vault/ports.js";
import { changeStatement, DEFAULT_FEED_OPTIONS, MAX_LISTED_LEASES, PgChangeFeed, type FeedOptions, type FeedState } from "./change-feed.js";
import { nestedBeforeCommit, txFinished } from "../semantics.js";
import { TxTimeout } from "../tx-timeout.js";
import { MISS, WriterCache } from "../sqlite/writer-cache.js";
import { describeTarget, poolConfig, type ConnectionSettings } from "./connection.js";
import { isConnectionError, pgError } from "./errors.js";
import * as Q from "./queries.js";
import type { Exec, Row, Stmt } from "./queries.js";
import { LOCK_CLASS, migrate, SCHEMA_KEY, SCHEMA_VERSION } from "./schema.js";

/** Options for {@link openPostgresStore}. */
export interface PostgresStoreOptions extends ConnectionSettings {
  /** How long one transaction function may run before it is rolled back and rejected (default 10000). */
  txTimeoutMs?: number;
  /** The change feed's LISTEN and polling (src/store/postgres/change-feed.ts); default listen, poll every 1000 ms. */
  feed?: Partial<FeedOptions>;
}

/** A {@link Store} on PostgreSQL, with counters for tests and benchmarks. */
export interface PostgresStore extends Store {
  /**
   * `commits`: database transactions committed; `transactions`: transaction functions run (a function
   * run again counts again); `reruns`: batches run again with savepoints because a function failed;
   * `stale`: batches run again because another instance had written while they answered from the cache.
   */
  stats(): { commits: number; transactions: number; reruns: number; stale: number };
  /** Migration steps this open applied (0 when the schema was current, or another instance migrated it). */
  readonly migrationsApplied: number;
  readonly schemaVersion: number;
  /** Delivers other instances' revocations, killswitch and metadata changes (see {@link Store.changes}). */
  changes(listener: ChangeListener): () => void;
  /** The change feed's state (tests). */
  feedState(): FeedState;
}

/** Most transaction functions sharing one commit. */
const MAX_BATCH = 256;

const LOCK_SQL = `SELECT pg_advisory_xact_lock(${LOCK_CLASS.write}, ${SCHEMA_KEY})`;

/** int8 (oid 20) as a JS number: times are epoch milliseconds and seqs count events, far below 2^53. */
const INT8_OID = 20;
const TYPES = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === INT8_OID && format !== "binary" ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as "text")) as typeof pg.types.getTypeParser,
};

/**
 * Opens a pool to the database at `opts.url`, and creates or migrates the vault's tables in
 * `opts.schema` (which must exist). Throws VaultError("unavailable") when the server cannot be reached
 * or refuses the login (the message names host, port and database, never the password), and
 * VaultError("config_invalid") for a malformed URL.
 */
export async function openPostgresStore(opts: PostgresStoreOptions): Promise<PostgresStore> {
  const cfg = poolConfig(opts);
  const target = describeTarget(opts.url);
  const pool = new pg.Pool({ ...cfg, types: TYPES });
  // An idle connection that dies (the server restarted) emits 'error' on the pool; without a listener
  // that would end the process. The pool drops it and opens a new one when next needed.
  pool.on("error", () => {});
  let applied: number;
  try {
    const client = await pool.connect();
    try {
      applied = await migrate(client);
    } finally {
      client.release();
    }
  } catch (e) {
    await pool.end().catch(() => {});
    throw pgError(e, "open the vault database", target);
  }
  const feedOpts = { ...DEFAULT_FEED_OPTIONS, ...opts.feed };
  if (!Number.isSafeInteger(feedOpts.pollMs) || feedOpts.pollMs < 10)
    throw new VaultError("config_invalid", `the change feed's poll interval must be a whole number of milliseconds, at least 10 (got ${String(feedOpts.pollMs)})`);
  const origin = randomBytes(9).toString("base64url");
  const feed = new PgChangeFeed(pool, { ...cfg, types: TYPES }, origin, feedOpts);
  return new PostgresStoreImpl(pool, target, opts.txTimeoutMs ?? 10_000, applied, origin, feed);
}

/** Read methods over one {@link Exec}; `x()` decides which connection and when reads are allowed. */
abstract class PgReads implements StoreReader {
  protected abstract x(): Exec;

  protected read<T>(f: (x: Exec) => Promise<T>): Promise<T> {
    let x: Exec;
    try {
      x = this.x();
    } catch (e) {
      return Promise.reject(e);
    }
    return f(x);
  }

  getSecret(ref: SecretRef): Promise<SecretRecord | null> {
    return this.read((x) => Q.getSecret(x, ref));
  }
  listSecrets(filter: SecretFilter): Promise<SecretRecord[]> {
    return this.read((x) => Q.listSecrets(x, filter));
  }
  getVersion(ref: SecretRef, version: number): Promise<VersionRecord | null> {
    return this.read((x) => Q.getVersion(x, ref, version));
  }
  getCurrentVersion(ref: SecretRef): Promise<VersionRecord | null> {
    return this.read((x) => Q.getCurrentVersion(x, ref));
  }
  listVersions(ref: SecretRef): Promise<VersionRecord[]> {
    return this.read((x) => Q.listVersions(x, ref));
  }
  versionsNotUnderKey(keyId: string, limit: number): Promise<VersionRecord[]> {
    return this.read((x) => Q.versionsNotUnderKey(x, keyId, limit));
  }
  keyIdsInUse(): Promise<string[]> {
    return this.read((x) => Q.keyIdsInUse(x));
  }
  getLease(id: string): Promise<LeaseRecord | null> {
    return this.read((x) => Q.getLease(x, id));
  }
  listLeases(filter: LeaseFilter): Promise<LeaseRecord[]> {
    return this.read((x) => Q.listLeases(x, filter));
  }
  countLiveLeases(agent: string, now: number): Promise<number> {
    return this.read((x) => Q.countLiveLeases(x, agent, now));
  }
  queryAudit(filter: AuditFilter): Promise<AuditRecord[]> {
    return this.read((x) => Q.queryAudit(x, filter));
  }
  auditHead(): Promise<AuditHead | null> {
    return this.read((x) => Q.auditHead(x));
  }
  getCheckpoint(): Promise<AuditCheckpoint | null> {
    return this.read((x) => Q.getCheckpoint(x));
  }
  getMeta(key: string): Promise<string | null> {
    return this.read((x) => Q.getMeta(x, key));
  }
  /** Every metadata entry, sorted by key (Store.listMeta; added for lessor migrate). */
  listMeta(): Promise<{ key: string; value: string }[]> {
    return this.read((x) => Q.listMeta(x));
  }
  getToken(id: string): Promise<TokenRecord | null> {
    return this.read((x) => Q.getToken(x, id));
  }
  listTokens(): Promise<TokenRecord[]> {
    return this.read((x) => Q.listTokens(x));
  }
}

/**
 * One database transaction on one pooled connection. Statements are written as they come (pipeline
 * mode); those whose answer nobody waits for are kept in `deferred`, and the first of them to fail is
 * the transaction's `failure`: every later statement fails with "transaction aborted", and is blamed
 * on that first one instead.
 */
class Conn implements Exec {
  deferred: Promise<void>[] = [];
  failure: VaultError | null = null;
  /** A statement that changes rows was sent: the commit bumps the commit counter. */
  wrote = false;
  /**
   * A read was answered from the cache. When the cache held entries from earlier transactions
   * (`inherited`), the commit first checks that no other instance wrote since.
   */
  hits = false;
  /** `lessor_commits.n` as BEGIN found it, under the write lock. */
  readonly counter: Promise<number>;

  constructor(
    readonly client: PoolClient,
    private readonly target: string,
    readonly inherited: boolean,
  ) {
    this.send({ what: "start a transaction", text: "BEGIN", values: [] });
    this.send({ what: "take the vault's write lock", text: LOCK_SQL, values: [] });
    this.counter = this.rows({ what: "start a transaction", text: "SELECT n FROM lessor_commits WHERE id = 1", values: [] }).then((r) =>
      Number(r[0]?.n ?? 0),
    );
    this.counter.catch(() => {}); // a failure here is seen again by whatever waits next
  }

  /** Sends a statement without waiting for its answer. */
  send(s: Stmt): void {
    const p = this.client.query(s.text, s.values).then(
      () => undefined,
      (e: unknown) => {
        this.failure ??= pgError(e, s.what, this.target);
      },
    );
    this.deferred.push(p);
  }

  async rows(s: Stmt): Promise<Row[]> {
    try {
      return (await this.client.query(s.text, s.values)).rows as Row[];
    } catch (e) {
      throw await this.blame(e, s.what);
    }
  }

  async count(s: Stmt): Promise<number> {
    try {
      return (await this.client.query(s.text, s.values)).rowCount ?? 0;
    } catch (e) {
      throw await this.blame(e, s.what);
    }
  }

  /** Waits for every statement sent without waiting; throws the first failure. */
  async settle(): Promise<void> {
    await Promise.all(this.deferred);
    this.deferred = [];
    if (this.failure !== null) throw this.failure;
  }

  /** The error to report for `e`: the first deferred failure (the cause of an aborted transaction), or `e`'s own. */
  private async blame(e: unknown, what: string): Promise<VaultError> {
    await Promise.all(this.deferred);
    return this.failure ?? pgError(e, what, this.target);
  }

  /** Forgets failures of statements undone by a ROLLBACK TO SAVEPOINT. */
  reset(): void {
    this.deferred = [];
    this.failure = null;
  }
}

/** The tx handed to one transaction function; valid only until that function settles. */
class PgTx extends PgReads implements StoreTx {
  active = true;
  readonly finishers = new Set<(tx: StoreTx) => Promise<void>>();
  /** What this function changed that other instances must hear of (the change feed). */
  readonly changes: StoreChange[] = [];

  constructor(
    private readonly conn: Conn,
    private readonly cache: WriterCache,
    private readonly finishing = false,
  ) {
    super();
  }

  protected x(): Exec {
    if (!this.active) throw txFinished();
    return this.conn;
  }

  beforeCommit(f: (tx: StoreTx) => Promise<void>): void {
    if (!this.active) throw txFinished();
    if (this.finishing) throw nestedBeforeCommit();
    this.finishers.add(f);
  }

  /** A write whose result nobody needs: sent, not waited for. */
  private put(s: () => Stmt, after?: () => void): Promise<void> {
    if (!this.active) return Promise.reject(txFinished());
    let stmt: Stmt;
    try {
      stmt = s();
    } catch (e) {
      return Promise.reject(e);
    }
    this.conn.wrote = true;
    this.conn.send(stmt);
    after?.();
    return Promise.resolve();
  }

  /** A write whose count of changed rows the caller needs. */
  private change(s: () => Stmt): Promise<number> {
    return this.read((x) => {
      this.conn.wrote = true;
      return x.count(s());
    });
  }

  /** A cached value, or `load()` kept in the cache. */
  private async cached<T>(hit: T | typeof MISS, load: (x: Exec) => Promise<T>, keep: (v: T) => void): Promise<T> {
    const x = this.x();
    if (hit !== MISS) {
      this.conn.hits = true;
      return hit;
    }
    const v = await load(x);
    keep(v);
    return v;
  }

  override getCurrentVersion(ref: SecretRef): Promise<VersionRecord | null> {
    return this.cached(this.cache.currentVersion(ref), (x) => Q.getCurrentVersion(x, ref), (v) => this.cache.setCurrentVersion(ref, v));
  }
  override auditHead(): Promise<AuditHead | null> {
    return this.cached(this.cache.head(), (x) => Q.auditHead(x), (v) => this.cache.setHead(v));
  }
  override getCheckpoint(): Promise<AuditCheckpoint | null> {
    return this.cached(this.cache.checkpoint(), (x) => Q.getCheckpoint(x), (v) => this.cache.setCheckpoint(v));
  }
  override getMeta(key: string): Promise<string | null> {
    return this.cached(this.cache.meta(key), (x) => Q.getMeta(x, key), (v) => this.cache.setMeta(key, v));
  }

  putSecret(rec: SecretRecord): Promise<void> {
    return this.put(() => Q.putSecret(rec), () => this.cache.dropSecret(rec));
  }
  insertVersion(rec: VersionRecord): Promise<void> {
    return this.put(() => Q.insertVersion(rec), () => this.cache.dropSecret(rec));
  }
  deleteVersionsBelow(ref: SecretRef, version: number): Promise<number> {
    this.cache.dropSecret(ref);
    return this.change(() => Q.deleteVersionsBelow(ref, version));
  }
  async deleteSecret(ref: SecretRef): Promise<boolean> {
    this.cache.dropSecret(ref);
    return (await this.change(() => Q.deleteSecret(ref))) > 0;
  }
  async rewrapVersion(ref: SecretRef, version: number, fromKeyId: string, toKeyId: string, wrappedDek: Uint8Array): Promise<boolean> {
    this.cache.dropSecret(ref);
    return (await this.change(() => Q.rewrapVersion(ref, version, fromKeyId, toKeyId, wrappedDek))) > 0;
  }
  insertLease(rec: LeaseRecord): Promise<void> {
    return this.put(() => Q.insertLease(rec));
  }
  useLease(id: string, now: number): Promise<number | null> {
    return this.read((x) => {
      this.conn.wrote = true;
      return Q.useLease(x, id, now);
    });
  }
  renewLease(id: string, expiresAt: number, renewals: number): Promise<void> {
    return this.put(() => Q.renewLease(id, expiresAt, renewals));
  }
  revokeLeases(sel: RevokeSelector, now: number, reason: string): Promise<number> {
    return this.read(async (x) => {
      this.conn.wrote = true;
      const s = Q.revokeLeases(sel, now, reason);
      const rows = await x.rows({ ...s, text: `${s.text} RETURNING id` });
      if (rows.length > 0)
        this.changes.push({ kind: "leases_revoked", count: rows.length, leaseIds: rows.length <= MAX_LISTED_LEASES ? rows.map((r) => r.id as string) : null });
      return rows.length;
    });
  }
  deleteExpiredLeases(before: number, limit: number): Promise<number> {
    if (limit <= 0) return this.read(async () => 0);
    return this.change(() => Q.deleteExpiredLeases(before, limit));
  }
  insertAudit(rec: AuditRecord): Promise<void> {
    // The trigger checks that it follows the head; the cache follows this transaction's own appends.
    return this.put(() => Q.insertAudit(rec), () => this.cache.setHead({ seq: rec.seq, hash: rec.hash, keyId: rec.keyId ?? null }));
  }
  putCheckpoint(cp: AuditCheckpoint): Promise<void> {
    return this.put(() => Q.putCheckpoint(cp), () => this.cache.setCheckpoint(cp));
  }
  setMeta(key: string, value: string): Promise<void> {
    return this.put(() => Q.setMeta(key, value), () => {
      this.cache.setMeta(key, value);
      this.changes.push({ kind: "meta", key });
    });
  }
  insertToken(rec: TokenRecord): Promise<void> {
    return this.put(() => Q.insertToken(rec));
  }
  async revokeToken(id: string, now: number): Promise<boolean> {
    const changed = (await this.change(() => Q.revokeToken(id, now))) > 0;
    if (changed) this.changes.push({ kind: "token_revoked", tokenId: id });
    return changed;
  }
}

/** One queued transaction call. */
interface Call {
  fn: (tx: StoreTx) => Promise<unknown>;
  finishers?: Set<(tx: StoreTx) => Promise<void>> | undefined;
  /** What the call's successful run changed (for the change feed). */
  changes?: StoreChange[] | undefined;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  ok: boolean;
  value: unknown;
  error: unknown;
}

/** Why a batch must be run again, with savepoints or with the cache emptied. */
const RERUN_GUARDED = Symbol("guarded");
const RERUN_STALE = Symbol("stale");

class PostgresStoreImpl extends PgReads implements PostgresStore {
  readonly kind = "postgres";
  readonly schemaVersion = SCHEMA_VERSION;
  private readonly poolExec: Exec;
  private readonly cache = new WriterCache();
  /** `lessor_commits.n` after this instance's last transaction: while it is unchanged, the cache holds. */
  private seen: number | undefined;
  /** The cache holds entries from committed transactions (not only ones read under the current lock). */
  private carried = false;
  private readonly timeout: TxTimeout;
  private queue: Call[] = [];
  private qhead = 0;
  private scheduled = false;
  private running = false;
  private closing = false;
  private closed = false;
  private idleWaiters: (() => void)[] = [];
  private counts = { commits: 0, transactions: 0, reruns: 0, stale: 0 };

  constructor(
    private readonly pool: Pool,
    private readonly target: string,
    txTimeoutMs: number,
    readonly migrationsApplied: number,
    private readonly origin: string,
    private readonly feed: PgChangeFeed,
  ) {
    super();
    this.timeout = new TxTimeout(txTimeoutMs);
    this.poolExec = {
      rows: async (s) => {
        try {
          return (await pool.query(s.text, s.values)).rows as Row[];
        } catch (e) {
          throw pgError(e, s.what, target);
        }
      },
      count: async (s) => {
        try {
          return (await pool.query(s.text, s.values)).rowCount ?? 0;
        } catch (e) {
          throw pgError(e, s.what, target);
        }
      },
    };
  }

  protected x(): Exec {
    if (this.closed) throw closedError();
    return this.poolExec;
  }

  stats(): { commits: number; transactions: number; reruns: number; stale: number } {
    return { ...this.counts };
  }

  changes(listener: ChangeListener): () => void {
    if (this.closing) return () => {};
    return this.feed.subscribe(listener);
  }

  feedState(): FeedState {
    return this.feed.state();
  }

  transaction<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    if (this.closing) return Promise.reject(closedError());
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ fn, resolve: resolve as (v: unknown) => void, reject, ok: false, value: undefined, error: undefined });
      this.schedule();
    });
  }

  async close(): Promise<void> {
    if (this.closing) {
      if (!this.closed) await new Promise<void>((r) => this.idleWaiters.push(r));
      return;
    }
    this.closing = true;
    if (this.running || this.scheduled || this.pending() > 0) await new Promise<void>((r) => this.idleWaiters.push(r));
    this.closed = true;
    await this.feed.close();
    await this.pool.end().catch(() => {});
    for (const w of this.idleWaiters.splice(0)) w();
  }

  private pending(): number {
    return this.queue.length - this.qhead;
  }

  private take(): Call | undefined {
    if (this.qhead >= this.queue.length) return undefined;
    const c = this.queue[this.qhead]!;
    this.queue[this.qhead++] = undefined as unknown as Call;
    if (this.qhead === this.queue.length) {
      this.queue = [];
      this.qhead = 0;
    } else if (this.qhead > 1024 && this.qhead * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.qhead);
      this.qhead = 0;
    }
    return c;
  }

  /** Starts a batch on a later turn (so callers queued in this turn share it), unless one is due. */
  private schedule(): void {
    if (this.running || this.scheduled || this.pending() === 0) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    try {
      await this.runBatch();
    } finally {
      this.running = false;
    }
    if (this.pending() > 0) this.schedule();
    else if (this.closing) for (const w of this.idleWaiters.splice(0)) w();
  }

  /** A database transaction on `client`, noting whether the cache carries entries from before it. */
  private begin(client: PoolClient): Conn {
    return new Conn(client, this.target, this.carried);
  }

  private clearCache(): void {
    this.cache.clear();
    this.carried = false;
  }

  /** One batch on one pooled connection; the connection is dropped from the pool if it broke. */
  private async runBatch(): Promise<void> {
    let client: PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      const err = pgError(e, "start a transaction", this.target);
      for (let i = 0; i < MAX_BATCH; i++) this.take()?.reject(err);
      return;
    }
    let broken: unknown = undefined;
    const batch: Call[] = [];
    try {
      broken = await this.batchOn(client, batch);
    } catch (e) {
      // Not expected: every path settles its calls. Reject what is left rather than hang.
      broken = e;
      for (const c of batch) c.reject(e instanceof VaultError ? e : pgError(e, "run a transaction", this.target));
    } finally {
      client.release(broken instanceof Error ? broken : undefined);
    }
  }

  /**
   * Takes calls from the queue and runs them in one database transaction, then commits. Returns the
   * error that broke the connection, if one did (every call of the batch is then rejected).
   */
  private async batchOn(client: PoolClient, batch: Call[]): Promise<unknown> {
    let conn = this.begin(client);
    let guarded = false;
    let call: Call | undefined;
    for (;;) {
      while (batch.length < MAX_BATCH && (call = this.take()) !== undefined) {
        batch.push(call);
        await this.runCall(conn, call, guarded);
        if (call.ok) continue;
        if (isConnectionError(call.error)) return this.fail(batch, call.error);
        if (guarded) continue; // its savepoint undid it alone
        await this.rollback(conn);
        if (batch.length === 1) {
          // Alone in its transaction: the failure is its own. Settle it and start afresh.
          call.reject(call.error);
          batch.length = 0;
          conn = this.begin(client);
          continue;
        }
        this.counts.reruns++;
        guarded = true;
        conn = this.begin(client);
        const broke = await this.rerun(conn, batch, true);
        if (broke !== undefined) return this.fail(batch, broke);
      }
      if (batch.length === 0) {
        await this.rollback(conn);
        return undefined;
      }
      const outcome = await this.finish(conn, batch, guarded);
      if (outcome === undefined) return undefined;
      if (outcome === RERUN_GUARDED || outcome === RERUN_STALE) {
        if (outcome === RERUN_GUARDED) {
          this.counts.reruns++;
          guarded = true;
        } else this.counts.stale++;
        let broke: unknown;
        do {
          if (broke === RERUN_GUARDED) {
            this.counts.reruns++;
            guarded = true;
          }
          conn = this.begin(client);
          broke = await this.rerun(conn, batch, guarded);
        } while (broke === RERUN_GUARDED);
        if (broke !== undefined) return this.fail(batch, broke);
        continue; // then take more calls, and finish again
      }
      return this.fail(batch, outcome);
    }
  }

  /**
   * Runs every call of `batch` again in the fresh transaction `conn`. Returns a connection error if
   * one broke it, or RERUN_GUARDED when an unguarded rerun (for a stale cache) had a call fail.
   */
  private async rerun(conn: Conn, batch: Call[], guarded: boolean): Promise<unknown> {
    for (const c of batch) {
      c.ok = false;
      c.value = c.error = c.finishers = c.changes = undefined;
      await this.runCall(conn, c, guarded);
      if (!c.ok && isConnectionError(c.error)) return c.error;
      if (!c.ok && !guarded) {
        await this.rollback(conn);
        return RERUN_GUARDED;
      }
    }
    return undefined;
  }

  /**
   * The beforeCommit functions, the commit-counter check and bump, COMMIT; then settles every call.
   * Returns undefined when done, a rerun marker, or the error that broke the connection.
   */
  private async finish(conn: Conn, batch: Call[], guarded: boolean): Promise<unknown> {
    const finishers = new Set<(tx: StoreTx) => Promise<void>>();
    for (const c of batch) if (c.ok && c.finishers) for (const f of c.finishers) finishers.add(f);
    const changes: StoreChange[] = [];
    for (const c of batch) if (c.ok && c.changes) changes.push(...c.changes);
    for (const f of finishers) {
      const tx = new PgTx(conn, this.cache, true);
      try {
        await this.timeout.run(f(tx));
        changes.push(...tx.changes);
      } catch (e) {
        tx.active = false;
        if (isConnectionError(e)) return e;
        await this.rollback(conn);
        // Unguarded, the failure may be a deferred write of one of the calls: find out with savepoints.
        if (!guarded && batch.length > 1) return RERUN_GUARDED;
        for (const c of batch) c.reject(c.ok ? e : c.error);
        return undefined;
      } finally {
        tx.active = false;
      }
    }
    let bumped: Promise<Row[]> | null = null;
    try {
      if (conn.hits && conn.inherited) {
        const n = await conn.counter;
        if (n !== this.seen) {
          // Another instance wrote since this one last committed: what the cache answered may be stale.
          await this.rollback(conn);
          this.seen = n;
          return RERUN_STALE;
        }
      }
      if (conn.wrote) bumped = conn.rows({ what: "commit a transaction", text: "UPDATE lessor_commits SET n = n + 1 WHERE id = 1 RETURNING n", values: [] });
      bumped?.catch(() => {});
      // In the same transaction: announced (and NOTIFY delivered) only if it commits.
      if (changes.length > 0) conn.send(changeStatement(this.origin, changes, Date.now()));
      await conn.rows({ what: "commit a transaction", text: "COMMIT", values: [] });
      // COMMIT of a transaction a deferred write aborted answers ROLLBACK, not an error: check.
      await conn.settle();
      const n = bumped !== null ? Number((await bumped)[0]?.n) : await conn.counter;
      if (bumped === null && n !== this.seen) this.clearCache();
      else if (bumped !== null && n !== (this.seen ?? 0) + 1) this.clearCache();
      this.seen = n;
      this.carried = true;
      this.counts.commits++;
    } catch (e) {
      if (isConnectionError(e)) return e;
      await this.rollback(conn);
      if (!guarded && batch.length > 1) return RERUN_GUARDED;
      for (const c of batch) c.reject(c.ok ? e : c.error);
      return undefined;
    }
    for (const c of batch) {
      if (c.ok) c.resolve(c.value);
      else c.reject(c.error);
    }
    return undefined;
  }

  /** Rejects every call of the batch with the connection error; the cache is emptied (nothing is known). */
  private fail(batch: Call[], e: unknown): unknown {
    this.clearCache();
    this.seen = undefined;
    const err = e instanceof VaultError ? e : pgError(e, "run a transaction", this.target);
    for (const c of batch) c.reject(err);
    return err;
  }

  /** Rolls the connection's transaction back (if the server still has one) and empties the cache. */
  private async rollback(conn: Conn): Promise<void> {
    this.clearCache();
    try {
      await conn.client.query("ROLLBACK");
    } catch {
      // the connection is gone; the server rolls back by itself
    }
    conn.reset();
  }

  /**
   * Runs one call's function. `guarded`: inside a savepoint, its writes waited for at its end and
   * undone alone if it fails. Unguarded, its writes may still be in flight when it returns.
   */
  private async runCall(conn: Conn, call: Call, guarded: boolean): Promise<void> {
    const tx = new PgTx(conn, this.cache);
    if (guarded) conn.send({ what: "start a transaction", text: "SAVEPOINT s", values: [] });
    try {
      call.value = await this.timeout.run(call.fn(tx));
      tx.active = false;
      if (guarded) {
        await conn.rows({ what: "write to the vault database", text: "RELEASE SAVEPOINT s", values: [] });
        await conn.settle();
      }
      call.ok = true;
      if (tx.finishers.size > 0) call.finishers = tx.finishers;
      if (tx.changes.length > 0) call.changes = tx.changes;
    } catch (e) {
      tx.active = false;
      call.error = e;
      if (guarded && !isConnectionError(e)) {
        this.clearCache(); // what this call put in the cache is being undone
        try {
          await conn.client.query("ROLLBACK TO SAVEPOINT s");
          await conn.client.query("RELEASE SAVEPOINT s");
          await Promise.all(conn.deferred);
          conn.reset();
        } catch (e2) {
          call.error = pgError(e2, "undo a failed transaction", this.target);
        }
      }
    } finally {
      this.counts.transactions++;
    }
  }
}

function closedError(): VaultError {
  return new VaultError("unavailable", "the vault store is closed; open it again to continue");
}
