/**
 * The PostgreSQL store (node-postgres, a pool of pipelined connections): one vault shared by several
 * lessor instances. See docs/storage.md, "PostgreSQL".
 *
 * Transactions. Each instance runs its transaction functions one after another on one pooled
 * connection, several to a database transaction ("group commit", as the SQLite store does). Every
 * database transaction takes a row lock on the one row of `lessor_commits` (the vault's write lock,
 * {@link LOCK_SQL}: only a role that may update the vault's tables can hold it), so the commits of
 * all instances happen one at a time: serialisable, and the audit chain has one writer. A lock not
 * had within lock_timeout fails the batch `unavailable` at once, rolled back whole: no rerun waits
 * for it again.
 *
 * The late lock. A batch takes the lock at BEGIN only when it must; otherwise (this instance's cache
 * is carried from its last commit and no late batch had to run again lately) its calls run first,
 * and the lock is taken at the commit, with the counters, head and checkpoint in one round trip
 * ({@link PostgresStoreImpl.validate}). While its calls run, a late batch may only read and insert
 * leases (the vault writes audit rows in beforeCommit functions, which run under the lock); any other
 * write throws NeedsLock and the batch runs again under the lock. Under the lock the batch is valid
 * when every commit since this instance's last was plain (new leases, audit rows and the checkpoint
 * only: the `plain` counter) and, if a call read a live-lease count, none inserted a live lease;
 * otherwise it runs again under the lock. See docs/storage.md, "The late lock".
 *
 * Use counts are changed by one conditional UPDATE … RETURNING, so even a writer that skipped the
 * lock could not use a lease twice past its limit, and a trigger refuses any audit row that does not
 * follow the head.
 *
 * Round trips (the Store contract, src/vault/ports.ts). Connections run in pipeline mode: a statement
 * is written without waiting for the answers to those before it. BEGIN, the lock and the read of the
 * commit counter go out with the batch's first reads; writes that return nothing are sent and not
 * waited for (their failure surfaces at the next read or at the commit and fails the transaction);
 * reads issued together (`Promise.all`) travel together. The hot rows (metadata, the audit head and
 * checkpoint, current versions) and a bound of each agent's live leases are cached between
 * transactions: every writing transaction bumps the counters of `lessor_commits` under the lock (`n`
 * always, `cfg` when it changed secrets or metadata, `live` when it inserted a lease that may be
 * live), and before a transaction's first call runs, the counters read under the lock (in BEGIN's
 * round trip, with the audit head and checkpoint) tell what another instance changed since this one's
 * last commit: only those kinds are dropped, and the head and checkpoint are taken from that round
 * trip. So a batch after another instance's commit costs neither a re-run nor a round trip more, and a
 * lease+access whose agent's bound is below the cap waits for no read at all.
 *
 * Failure of one function among several in a batch: the database aborts the whole transaction on
 * any error, and a deferred write's failure cannot always be told apart from a sibling's, so the
 * batch is rolled back and run again with a savepoint per function, each function's writes waited
 * for at its end; then only the failing function fails.
 *
 * Lost connections (the server stopped, crashed or cut off; docs/team.md, "When PostgreSQL restarts"):
 * the batch fails "unavailable" (after COMMIT was sent, saying the outcome is unknown), the connection
 * is dropped from the pool, and the next request opens a new one, after the change feed has caught up
 * on what other instances committed meanwhile.
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
import type { ChangeListener, Store, StoreChange, StoreReader, StoreTx, TokenFilter } from "../../vault/ports.js";
import { changeStatement, notifyStatement, DEFAULT_FEED_OPTIONS, MAX_LISTED_LEASES, PgChangeFeed, type FeedOptions, type FeedState } from "./change-feed.js";
import { DbClock } from "./db-clock.js";
import { batchFinishers, nestedBeforeCommit, txFinished } from "../semantics.js";
import { BatchQueue } from "../batch-queue.js";
import { isTxTimeout, TxTimeout } from "../tx-timeout.js";
import { MISS, WriterCache } from "../sqlite/writer-cache.js";
import { describeTarget, poolConfig, sessionTimeouts, type ConnectionSettings } from "./connection.js";
import { commitOutcomeUnknown, inFailedTransaction, isConnectionError, isLockTimeout, pgError, silentServer } from "./errors.js";
import * as Q from "./queries.js";
import type { Exec, Row, Stmt } from "./queries.js";
import { migrate, SCHEMA_VERSION, VAULT_NAMES } from "./schema.js";
import { assertSchemaTrusted } from "./schema-trust.js";

/** Options for {@link openPostgresStore}. */
export interface PostgresStoreOptions extends ConnectionSettings {
  /** How long one transaction function may run before it is rolled back and rejected (default 10000). */
  txTimeoutMs?: number;
  /**
   * Take the write lock only to commit, when the batch's writes allow it (see "The late lock" in this
   * file's comment); default true. False takes it at BEGIN for every batch (benchmarks compare both).
   */
  lateLock?: boolean;
  /** The change feed's LISTEN and polling (src/store/postgres/change-feed.ts); default listen, poll every 1000 ms. */
  feed?: Partial<FeedOptions>;
}

/**
 * `commits`: database transactions committed; `transactions`: transaction functions run (a function
 * run again counts again); `reruns`: batches run again with savepoints because a function failed;
 * `behind`: transactions that found, under the lock, that another instance had written since this
 * one's last commit (and dropped what that changed from the cache); `flights`: round trips of
 * transactions (a statement sent while none was outstanding on the connection); `late`: batches that
 * ran before taking the write lock and committed so; `relocked`: late batches run again under the
 * lock (another instance's commit changed what they decided by, or a call needed the lock).
 */
export interface PgStats {
  commits: number;
  transactions: number;
  reruns: number;
  behind: number;
  flights: number;
  late: number;
  relocked: number;
}

/** A {@link Store} on PostgreSQL, with counters for tests and benchmarks. */
export interface PostgresStore extends Store {
  /** Counters for tests and benchmarks (see {@link PgStats}). */
  stats(): PgStats;
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
 * VaultError("config_invalid") for a malformed URL, and VaultError("insecure_permissions") when
 * another role could have put objects on the connection's search_path or owns one of the vault's
 * tables (./schema-trust.ts).
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
    // A checked-out client has no error listener of the pool's: one that dies between statements would
    // otherwise end the process. Its statements fail by themselves.
    let broken: Error | undefined;
    const onError = (e: Error): void => void (broken ??= e);
    client.on("error", onError);
    try {
      // Before any statement of the vault's runs: no other role can have put objects on the path.
      await assertSchemaTrusted(client, VAULT_NAMES, target);
      applied = await migrate(client);
    } finally {
      client.removeListener("error", onError);
      client.release(broken);
    }
  } catch (e) {
    await pool.end().catch(() => {});
    throw pgError(e, "open the vault database", target);
  }
  const feedOpts = { ...DEFAULT_FEED_OPTIONS, ...opts.feed };
  if (!Number.isSafeInteger(feedOpts.pollMs) || feedOpts.pollMs < 10)
    throw new VaultError("config_invalid", `the change feed's poll interval must be a whole number of milliseconds, at least 10 (got ${String(feedOpts.pollMs)})`);
  let clock: DbClock;
  try {
    clock = await DbClock.open(pool);
  } catch (e) {
    await pool.end().catch(() => {});
    throw pgError(e, "read the database server's clock", target);
  }
  const origin = randomBytes(9).toString("base64url");
  const feed = new PgChangeFeed(pool, { ...cfg, types: TYPES }, origin, feedOpts);
  const { lockMs, statementMs } = sessionTimeouts(opts);
  const wait = lockWait(lockMs, statementMs);
  return new PostgresStoreImpl(pool, target, opts.txTimeoutMs ?? 10_000, applied, origin, feed, opts.lateLock ?? true, clock, wait);
}

/** Read methods over one {@link Exec}; `x()` decides which connection and when reads are allowed. */
abstract class PgReads implements StoreReader {
  protected abstract x(): Exec;

  protected read<T>(f: (x: Exec) => Promise<T>): Promise<T> {
    try {
      return f(this.x());
    } catch (e) {
      return Promise.reject(e);
    }
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
  listTokens(filter?: TokenFilter): Promise<TokenRecord[]> {
    return this.read((x) => Q.listTokens(x, filter));
  }
}

/** The row of `lessor_commits`: commits that wrote, and of those, ones that changed each cached kind. */
interface Counters {
  /** Every committed transaction that wrote. */
  n: number;
  /** Those that changed secrets, versions or metadata. */
  cfg: number;
  /** Those that inserted a lease that may be live. */
  live: number;
  /** Those whose only writes were new leases, audit rows and the checkpoint ("plain"; see {@link PgTx}). */
  plain: number;
}

function counters(row: Row | undefined): Counters {
  return { n: Number(row?.n ?? 0), cfg: Number(row?.cfg ?? 0), live: Number(row?.live ?? 0), plain: Number(row?.plain ?? 0) };
}

/** True when a counter is below what this instance saw: the database is not the one its cache came from. */
function wentBack(now: Counters, was: Counters): boolean {
  return now.n < was.n || now.cfg < was.cfg || now.live < was.live || now.plain < was.plain;
}

/**
 * The vault's write lock, and the commit counters read under it, in one statement: a row lock on the
 * one row of `lessor_commits`, which only a role that may update the vault's tables can take (an
 * advisory lock, keyed by numbers anyone can work out, can be taken by any role that may connect to
 * the database, and was). In READ COMMITTED, a `FOR UPDATE` that waited returns the row as the commit
 * it waited for left it. Every writing commit updates that row anyway, so the lock costs no more than
 * the advisory lock did, and vacuum never conflicts with a row lock.
 */
const LOCK_SQL = "SELECT n, cfg, live, plain FROM lessor_commits WHERE id = 1 FOR UPDATE";

/**
 * The wait for the write lock, bounded as a whole. PostgreSQL arms lock_timeout afresh for each lock
 * a statement waits for, and a row lock's second waiter waits twice: for the tuple lock, behind the
 * first waiter, then for the holder's transaction. So the lock statement runs under a
 * statement_timeout of lock_timeout (set just before it; its own set_config puts the session's back
 * for the statements after it, which a statement's own change does not affect), and that timeout on
 * it is the lock's error ({@link lockWaitError}): one wait of lock_timeout at most, however many
 * instances queue. Without a lock_timeout (0), the lock statement is {@link LOCK_SQL} alone.
 */
interface LockWait {
  /** `SELECT set_config('statement_timeout', lock_timeout, true)`, sent before the lock. */
  before: Stmt;
  /** {@link LOCK_SQL} that also sets statement_timeout back to the session's. */
  lock: Stmt;
}

function lockWait(lockMs: number, statementMs: number): LockWait | null {
  if (lockMs === 0) return null;
  return {
    before: { what: "take the vault's write lock", text: "SELECT pg_catalog.set_config('statement_timeout', $1, true)", values: [String(lockMs)] },
    lock: {
      what: "take the vault's write lock",
      text: "SELECT n, cfg, live, plain, pg_catalog.set_config('statement_timeout', $1, true) FROM lessor_commits WHERE id = 1 FOR UPDATE",
      values: [String(statementMs)],
    },
  };
}

/** The lock statement's statement_timeout (57014) is the lock's own timeout: reported, and handled, as lock_not_available. */
function lockWaitError(e: unknown): unknown {
  if ((e as { code?: unknown })?.code !== "57014") return e;
  return Object.assign(new Error("the vault's write lock was not had within lock_timeout"), { code: "55P03", cause: e });
}

/** Thrown by a write a batch without the write lock may not make: the batch runs again under the lock. */
class NeedsLock extends Error {
  constructor() {
    super("this write needs the vault's write lock");
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
  /** A statement that changes secrets, versions or metadata was sent: the commit bumps `cfg` too. */
  wroteConfig = false;
  /** Leases that may be live were inserted: the commit bumps `live` too. */
  wroteLive = false;
  /** Something other than new leases, audit rows and the checkpoint was written: the commit is not plain. */
  wroteOther = false;
  /** A late batch: a write that needs the lock was attempted (see {@link NeedsLock}). */
  needsLock = false;
  /** A late batch read an agent's live-lease count (or bound): another instance's live lease invalidates it. */
  readLive = false;
  /** The cache was checked against the counters ({@link PostgresStoreImpl.sync}); reads may use it. */
  synced = false;
  /**
   * The transaction cannot go on: a guarded call failed where its savepoint cannot undo it alone (the
   * savepoint was never made, or a lock was not had within lock_timeout).
   */
  aborted = false;
  /** The commit counters under the write lock (as BEGIN found them; for a late batch, as {@link lock} did). */
  counters!: Promise<Counters>;
  /** The audit head and checkpoint read with the counters, in the same round trip. */
  audit!: Promise<[AuditHead | null, AuditCheckpoint | null]>;

  /** Statements sent and not yet answered. */
  private outstanding = 0;

  /** True while a statement waits for its answer. */
  get waiting(): boolean {
    return this.outstanding > 0;
  }

  constructor(
    readonly client: PoolClient,
    private readonly target: string,
    /** Called when a statement goes out while none is outstanding: it starts a round trip. */
    private readonly onFlight: () => void,
    /** Run the calls first and take the write lock only to commit (see PostgresStoreImpl, "The late lock"). */
    readonly late = false,
    /** The lock statements that bound the wait for the lock (null: {@link LOCK_SQL} under lock_timeout alone). */
    private readonly wait: LockWait | null = null,
  ) {
    // A late batch sends BEGIN with its first statement: one whose first call needs the lock (an
    // admin's write) then costs nothing to abandon.
    if (!late) this.lock();
  }

  /** BEGIN was sent. */
  begun = false;

  /** Takes the vault's write lock and reads the counters, head and checkpoint under it (one round trip). */
  lock(): void {
    if (this.wait === null) {
      this.counters = this.rows({ what: "take the vault's write lock", text: LOCK_SQL, values: [] }).then((r) => counters(r[0]));
    } else {
      this.send(this.wait.before);
      const lock = this.wait.lock;
      this.counters = this.query(lock).then(
        (r) => counters(r.rows[0] as Row),
        async (e: unknown) => {
          throw await this.blame(lockWaitError(e), lock.what);
        },
      );
    }
    this.audit = Promise.all([Q.auditHead(this), Q.getCheckpoint(this)]);
    // A failure here is seen again by whatever waits next.
    this.counters.catch(() => {});
    this.audit.catch(() => {});
  }

  /** The connection's socket is corked until the current tick ends (see {@link query}). */
  private corked = false;

  /** Audit rows written and not yet sent: they go as one multi-row INSERT before the next statement. */
  private auditRows: AuditRecord[] = [];

  /** Appends an audit row (sent with the next statement, see {@link auditRows}). */
  appendAudit(rec: AuditRecord): void {
    this.auditRows.push(rec);
  }

  private flushAudit(): void {
    const rows = this.auditRows;
    this.auditRows = [];
    for (const s of Q.insertAuditRows(rows)) this.send(s);
  }

  /**
   * Sends one statement (pipelined: without waiting for those before it). Statements sent in one
   * tick of the event loop leave in one write: the socket is corked at the first and uncorked when the
   * tick's callbacks have run (a write per statement cost more CPU than the statement itself).
   */
  private query(s: Stmt): Promise<pg.QueryResult> {
    if (!this.begun) {
      this.begun = true;
      this.send({ what: "start a transaction", text: "BEGIN", values: [] });
    }
    if (this.auditRows.length > 0) this.flushAudit();
    if (this.outstanding++ === 0) this.onFlight();
    if (!this.corked) {
      // node-postgres's socket (Client.connection.stream, not a public API): when a version lacks it,
      // statements simply leave one write each, as before.
      const stream = (this.client as unknown as { connection?: { stream?: { cork?: () => void; uncork?: () => void } } }).connection?.stream;
      if (stream?.cork !== undefined && stream.uncork !== undefined) {
        stream.cork();
        this.corked = true;
        process.nextTick(() => {
          this.corked = false;
          stream.uncork!();
        });
      }
    }
    const p = this.client.query(Q.queryConfig(s));
    const answered = (): void => void this.outstanding--;
    p.then(answered, answered);
    return p;
  }

  /** Sends SAVEPOINT s without waiting; resolves to whether it was made. */
  savepoint(): Promise<boolean> {
    const s: Stmt = { what: "start a transaction", text: "SAVEPOINT s", values: [] };
    const made = this.query(s).then(
      () => true,
      (e: unknown) => {
        this.failure ??= pgError(e, s.what, this.target);
        return false;
      },
    );
    this.deferred.push(made.then(() => undefined));
    return made;
  }

  /**
   * Sends a statement without waiting for its answer, as {@link send} (its failure is the
   * transaction's); resolves to its rows, or null when it failed.
   */
  sendForRows(s: Stmt): Promise<Row[] | null> {
    const p = this.query(s).then(
      (r) => r.rows as Row[],
      (e: unknown) => {
        this.failure ??= pgError(e, s.what, this.target);
        return null;
      },
    );
    this.deferred.push(p.then(() => undefined));
    return p;
  }

  /** Sends a statement without waiting for its answer. */
  send(s: Stmt): void {
    const p = this.query(s).then(
      () => undefined,
      (e: unknown) => {
        this.failure ??= pgError(e, s.what, this.target);
      },
    );
    this.deferred.push(p);
  }

  async rows(s: Stmt): Promise<Row[]> {
    try {
      return (await this.query(s)).rows as Row[];
    } catch (e) {
      throw await this.blame(e, s.what);
    }
  }

  async count(s: Stmt): Promise<number> {
    try {
      return (await this.query(s)).rowCount ?? 0;
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
    const own = pgError(e, what, this.target);
    // A deferred statement sent after this one failed only because this one did ("current
    // transaction is aborted"): this one's error is the cause (the write lock, say, and the SAVEPOINT
    // pipelined after it).
    if (this.failure !== null && inFailedTransaction(this.failure) && !inFailedTransaction(own)) this.failure = own;
    return this.failure ?? own;
  }

  /** Forgets failures of statements undone by a ROLLBACK TO SAVEPOINT, and audit rows not yet sent. */
  reset(): void {
    this.deferred = [];
    this.failure = null;
    this.auditRows = [];
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

  /**
   * Notes a write of `kind`. In a late batch (no write lock yet) only new leases may be written while
   * the calls run (audit rows and the checkpoint are written by beforeCommit functions, which run
   * under the lock): any other write throws {@link NeedsLock} before it is sent. A commit whose writes
   * were all new leases, audit rows and the checkpoint is plain.
   */
  private writes(kind: "lease" | "audit" | "other"): void {
    if (!this.active) throw txFinished();
    if (this.conn.late && !this.finishing && kind !== "lease") {
      this.conn.needsLock = true;
      throw new NeedsLock();
    }
    this.conn.wrote = true;
    if (kind === "other") this.conn.wroteOther = true;
  }

  beforeCommit(f: (tx: StoreTx) => Promise<void>): void {
    if (!this.active) throw txFinished();
    if (this.finishing) throw nestedBeforeCommit();
    this.finishers.delete(f); // registered again: it moves after those registered since
    this.finishers.add(f);
  }

  /** A write whose result nobody needs: sent, not waited for. */
  private put(s: () => Stmt, after?: () => void, kind: "lease" | "audit" | "other" = "other"): Promise<void> {
    let stmt: Stmt;
    try {
      this.writes(kind);
      stmt = s();
    } catch (e) {
      return Promise.reject(e);
    }
    this.conn.send(stmt);
    after?.();
    return Promise.resolve();
  }

  /** A write whose count of changed rows the caller needs. */
  private change(s: () => Stmt): Promise<number> {
    return this.read((x) => {
      this.writes("other");
      return x.count(s());
    });
  }

  /** A cached value, or `load()` kept in the cache. */
  private async cached<T>(hit: T | typeof MISS, load: (x: Exec) => Promise<T>, keep: (v: T) => void): Promise<T> {
    const x = this.x();
    if (hit !== MISS) return hit;
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
  /** With `cap`, a bound below it from the cache when there is one (see WriterCache.liveBound); else the count, kept as the bound. */
  override countLiveLeases(agent: string, now: number, cap?: number): Promise<number> {
    this.conn.readLive = true;
    const bound = cap === undefined ? MISS : this.cache.liveBound(agent);
    return this.cached(bound !== MISS && bound < cap! ? bound : MISS, (x) => Q.countLiveLeases(x, agent, now), (n) => this.cache.setLiveBound(agent, n));
  }

  /** A write to secrets, versions or metadata (other instances drop those entries of their caches). */
  private config(): void {
    this.conn.wroteConfig = true;
  }

  putSecret(rec: SecretRecord): Promise<void> {
    return this.put(() => Q.putSecret(rec), () => (this.config(), this.cache.dropSecret(rec)));
  }
  insertVersion(rec: VersionRecord): Promise<void> {
    return this.put(() => Q.insertVersion(rec), () => (this.config(), this.cache.dropSecret(rec)));
  }
  deleteVersionsBelow(ref: SecretRef, version: number): Promise<number> {
    this.cache.dropSecret(ref);
    this.config();
    return this.change(() => Q.deleteVersionsBelow(ref, version));
  }
  async deleteSecret(ref: SecretRef): Promise<boolean> {
    this.cache.dropSecret(ref);
    this.config();
    return (await this.change(() => Q.deleteSecret(ref))) > 0;
  }
  async rewrapVersion(ref: SecretRef, version: number, fromKeyId: string, toKeyId: string, wrappedDek: Uint8Array): Promise<boolean> {
    this.cache.dropSecret(ref);
    this.config();
    return (await this.change(() => Q.rewrapVersion(ref, version, fromKeyId, toKeyId, wrappedDek))) > 0;
  }
  insertLease(rec: LeaseRecord): Promise<void> {
    // Expiry is left out: a lease counted as live that has expired only loosens the bound.
    const live = rec.revokedAt === null && (rec.maxUses === null || rec.uses < rec.maxUses);
    return this.put(
      () => Q.insertLease(rec),
      () => {
        if (!live) return;
        this.conn.wroteLive = true;
        this.cache.noteLiveInsert(rec.agent);
      },
      "lease",
    );
  }
  useLease(id: string, now: number, cap: number | null = null): Promise<number | null> {
    return this.read((x) => {
      this.writes("other");
      return Q.useLease(x, id, now, cap);
    });
  }
  renewLease(id: string, expiresAt: number, renewals: number): Promise<void> {
    return this.put(() => Q.renewLease(id, expiresAt, renewals));
  }
  revokeLeases(sel: RevokeSelector, now: number, reason: string): Promise<number> {
    return this.read(async (x) => {
      this.writes("other");
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
    try {
      this.writes("audit");
    } catch (e) {
      return Promise.reject(e);
    }
    this.conn.appendAudit(rec);
    this.cache.setHead({ seq: rec.seq, hash: rec.hash, keyId: rec.keyId ?? null });
    return Promise.resolve();
  }
  putCheckpoint(cp: AuditCheckpoint): Promise<void> {
    return this.put(() => Q.putCheckpoint(cp), () => this.cache.setCheckpoint(cp), "audit");
  }
  setMeta(key: string, value: string): Promise<void> {
    return this.put(() => Q.setMeta(key, value), () => {
      this.config();
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
  async setTokenMac(id: string, mac: Uint8Array): Promise<boolean> {
    return (await this.change(() => Q.setTokenMac(id, mac))) > 0;
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
  /** Failed by a beforeCommit function of its own: left out when its batch runs again. */
  dropped?: boolean;
}

/** Why a batch must be run again: with savepoints, to find which call failed. */
const RERUN_GUARDED = Symbol("guarded");
/** Why a late batch must be run again: under the lock from BEGIN (what it decided by changed). */
const RERUN_LOCKED = Symbol("locked");
/**
 * The batch's transaction could not go on (a lock not had within lock_timeout, a savepoint never made):
 * it was rolled back and every call of it rejected; go on with a new transaction.
 */
const ENDED = Symbol("ended");
/** Batches that take the lock at BEGIN after a late one had to run again (doubling while late ones keep failing). */
const LOCKED_AFTER_RELOCK = 8;
const MAX_LOCKED_AFTER_RELOCK = 128;

class PostgresStoreImpl extends PgReads implements PostgresStore {
  readonly kind = "postgres";
  readonly schemaVersion = SCHEMA_VERSION;
  private readonly poolExec: Exec;
  private readonly cache = new WriterCache();
  /** `lessor_commits` after this instance's last transaction: while `n` is unchanged, the cache holds. */
  private seen: Counters | undefined;
  /** The cache holds entries from committed transactions (not only ones read under the current lock). */
  private carried = false;
  private readonly timeout: TxTimeout;
  private readonly calls = new BatchQueue<Call>(() => this.runBatch());
  /** The pool is ended: reads are refused too. */
  private closed = false;
  private closedP: Promise<void> | null = null;
  private counts = { commits: 0, transactions: 0, reruns: 0, behind: 0, flights: 0, late: 0, relocked: 0 };
  /** Batches still to take the lock at BEGIN (after a late one had to run again). */
  private lockedBatches = 0;
  /** How many batches the next relock keeps under the lock from BEGIN. */
  private relockRun = LOCKED_AFTER_RELOCK;
  /** Connection losses noted, and how many of them the change feed has caught up after (see caughtUp). */
  private lostCount = 0;
  private caughtUpTo = 0;
  private catching: Promise<void> | null = null;

  constructor(
    private readonly pool: Pool,
    private readonly target: string,
    private readonly txTimeoutMs: number,
    readonly migrationsApplied: number,
    private readonly origin: string,
    private readonly feed: PgChangeFeed,
    private readonly lateLock: boolean,
    private readonly clock: DbClock,
    /** How the wait for the write lock is bounded (see {@link LockWait}). */
    private readonly lockWait: LockWait | null,
  ) {
    super();
    this.timeout = new TxTimeout(txTimeoutMs);
    this.poolExec = {
      rows: async (s) => {
        try {
          await this.caughtUp();
          return (await pool.query(Q.queryConfig(s))).rows as Row[];
        } catch (e) {
          throw this.noteLost(pgError(e, s.what, target));
        }
      },
      count: async (s) => {
        try {
          await this.caughtUp();
          return (await pool.query(Q.queryConfig(s))).rowCount ?? 0;
        } catch (e) {
          throw this.noteLost(pgError(e, s.what, target));
        }
      },
    };
  }

  /** Notes a lost or refused connection (the next request first catches up, see {@link caughtUp}); returns `e`. */
  private noteLost<E>(e: E): E {
    if (isConnectionError(e)) this.lostCount++;
    return e;
  }

  /**
   * After this instance lost the database, applies what other instances committed meanwhile (the change
   * feed's catch-up) before anything is served again: "an instance that was disconnected catches up
   * before it serves again". One catch-up at a time, shared by every waiting request; while the database
   * is still unreachable it fails at once with "unavailable".
   */
  private caughtUp(): Promise<void> | undefined {
    if (this.caughtUpTo === this.lostCount) return undefined;
    if (this.catching === null) {
      const upTo = this.lostCount;
      this.catching = this.feed.catchUpNow().then(
        () => {
          this.catching = null;
          // A loss noted during the catch-up is caught up on by the next request.
          if (this.caughtUpTo < upTo) this.caughtUpTo = upTo;
        },
        (e: unknown) => {
          this.catching = null;
          throw pgError(e, "reconnect to the vault database (and catch up on other instances' changes)", this.target);
        },
      );
    }
    return this.catching;
  }

  protected x(): Exec {
    if (this.closed) throw closedError();
    return this.poolExec;
  }

  stats(): PgStats {
    return { ...this.counts };
  }

  changes(listener: ChangeListener): () => void {
    if (this.calls.closing) return () => {};
    return this.feed.subscribe(listener);
  }

  feedState(): FeedState {
    return this.feed.state();
  }

  transaction<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    if (this.calls.closing) return Promise.reject(closedError());
    return new Promise<T>((resolve, reject) => {
      this.calls.push({ fn, resolve: resolve as (v: unknown) => void, reject, ok: false, value: undefined, error: undefined });
    });
  }

  /** The database server's time (src/store/postgres/db-clock.ts): every instance on this database decides time alike. */
  now(): number {
    return this.clock.now();
  }

  close(): Promise<void> {
    this.closedP ??= this.calls.close().then(async () => {
      this.closed = true;
      this.clock.close();
      await this.feed.close();
      await this.pool.end().catch(() => {});
    });
    return this.closedP;
  }

  /** A database transaction on `client`, under the write lock from BEGIN unless `late`. */
  private begin(client: PoolClient, late = false): Conn {
    return new Conn(client, this.target, () => void this.counts.flights++, late, this.lockWait);
  }

  /**
   * A new batch's transaction: late when this instance's cache holds what its last commit left (so the
   * counters tell what changed since) and no late batch had to run again in the last few.
   */
  private startBatch(client: PoolClient): Conn {
    const late = this.lateLock && this.carried && this.seen !== undefined && this.lockedBatches === 0;
    if (this.lockedBatches > 0) this.lockedBatches--;
    return this.begin(client, late);
  }

  /** A late batch must run again under the lock: so do the next few (a conflict tends to recur). */
  private relock(): void {
    this.counts.relocked++;
    this.lockedBatches = this.relockRun;
    this.relockRun = Math.min(this.relockRun * 2, MAX_LOCKED_AFTER_RELOCK);
  }

  /**
   * Gives a late batch up, to run it again under the lock ({@link relock}): its ROLLBACK is sent
   * without waiting (the next BEGIN follows it on the same connection). The cache is kept when the
   * batch wrote nothing, since what it read was committed, and the locked run's check of the counters
   * drops what changed; writes put their own effects in the cache, so then it is emptied.
   */
  private abandon(conn: Conn): void {
    this.relock();
    if (conn.wrote) this.clearCache();
    if (conn.begun) conn.client.query("ROLLBACK").catch(() => {});
    conn.reset();
  }

  /**
   * Under the lock a late batch has just taken: true when what its calls decided by still holds,
   * that is when every commit since this instance's last was plain (new leases and audit rows only),
   * none changed secrets, versions or metadata, and none inserted a live lease if a call read a live
   * count. Then the cache takes the head and checkpoint read under the lock, for the audit chaining.
   */
  private async validate(conn: Conn): Promise<boolean> {
    const now = await conn.counters;
    const was = this.seen!;
    // Counters that went back (a database restored from a backup) vouch for nothing.
    if (wentBack(now, was)) return false;
    if (now.n === was.n) return true;
    if (now.cfg !== was.cfg || now.n - was.n !== now.plain - was.plain) return false;
    if (now.live !== was.live) {
      if (conn.readLive) return false;
      this.cache.dropLive();
    }
    this.counts.behind++;
    const [head, checkpoint] = await conn.audit;
    this.cache.setHead(head);
    this.cache.setCheckpoint(checkpoint);
    this.seen = now;
    return true;
  }

  /**
   * Runs `batch` again in a new transaction under the lock, with savepoints once a call fails.
   * Returns the transaction and mode to go on with, or the error that broke the connection.
   */
  private async again(client: PoolClient, batch: Call[], guarded: boolean): Promise<{ conn: Conn; guarded: boolean; broke?: unknown }> {
    for (;;) {
      const conn = this.begin(client);
      const broke = await this.rerun(conn, batch, guarded);
      if (broke !== RERUN_GUARDED) return broke === undefined ? { conn, guarded } : { conn, guarded, broke };
      this.counts.reruns++;
      guarded = true;
    }
  }

  /**
   * Before a transaction's first call: checks the cache against the commit counters read under the
   * write lock, and drops what another instance's commits may have changed since this one's last
   * commit (by kind: secrets and metadata, leases that may be live, and always the audit head and
   * checkpoint, which it takes from the same first round trip). From then until the commit no other
   * instance writes, so the cache answers for the whole batch.
   */
  private async sync(conn: Conn): Promise<void> {
    conn.synced = true;
    if (!this.carried) return; // the cache holds nothing from before this transaction
    const now = await conn.counters;
    const was = this.seen;
    // Counters that went back (a database restored from a backup) vouch for nothing.
    const back = was !== undefined && wentBack(now, was);
    if (was !== undefined && now.n === was.n && !back) return;
    this.counts.behind++;
    if (was === undefined || back || now.cfg !== was.cfg) this.cache.dropConfig();
    if (was === undefined || back || now.live !== was.live) this.cache.dropLive();
    const [head, checkpoint] = await conn.audit;
    this.cache.setHead(head);
    this.cache.setCheckpoint(checkpoint);
    this.seen = now;
  }

  private clearCache(): void {
    this.cache.clear();
    this.carried = false;
  }

  /**
   * Sends the notification of a change that committed (./change-feed.ts notifyStatement) on the
   * connection that committed it, not waited for: one that fails (a full notification queue) leaves
   * the other instances to their poll, and the commit stands.
   */
  private announce(client: PoolClient, seq: number, changes: readonly StoreChange[]): void {
    if (!Number.isSafeInteger(seq)) return;
    client.query(Q.queryConfig(notifyStatement(seq, this.origin, changes))).catch(() => {});
  }

  /** One batch on one pooled connection; the connection is dropped from the pool if it broke. */
  private async runBatch(): Promise<void> {
    let client: PoolClient;
    try {
      await this.caughtUp();
      client = await this.pool.connect();
    } catch (e) {
      const err = this.noteLost(pgError(e, "start a transaction", this.target));
      for (let i = 0; i < MAX_BATCH; i++) this.calls.take()?.reject(err);
      return;
    }
    let broken: unknown = undefined;
    // While checked out the client has no error listener of the pool's: a connection that dies between
    // statements (the server shut down) emits 'error' here instead of ending the process. Its pending
    // and later statements fail with a connection error, which fails the batch.
    let died: Error | undefined;
    const onError = (e: Error): void => void (died ??= e);
    client.on("error", onError);
    const batch: Call[] = [];
    try {
      broken = await this.batchOn(client, batch);
    } catch (e) {
      // Not expected: every path settles its calls. Reject what is left rather than hang.
      broken = e;
      for (const c of batch) c.reject(e instanceof VaultError ? e : pgError(e, "run a transaction", this.target));
    } finally {
      client.removeListener("error", onError);
      client.release(broken instanceof Error ? broken : died);
    }
  }

  /**
   * Takes calls from the queue and runs them in one database transaction, then commits. Returns the
   * error that broke the connection, if one did (every call of the batch is then rejected).
   */
  private async batchOn(client: PoolClient, batch: Call[]): Promise<unknown> {
    let conn = this.startBatch(client);
    let guarded = false;
    let call: Call | undefined;
    for (;;) {
      while (batch.length < MAX_BATCH && (call = this.calls.take()) !== undefined) {
        batch.push(call);
        await this.runCall(conn, call, guarded);
        if (!call.ok && (conn.aborted || isLockTimeout(call.error))) {
          // Waited out lock_timeout (the lock is taken before the first call), or a guarded call whose
          // savepoint cannot undo it: no rerun would do better, and none should wait for the lock again.
          await this.endBatch(conn, batch, call.error);
          conn = this.begin(client);
          guarded = false;
          continue;
        }
        if (conn.needsLock || (conn.late && !call.ok && !isConnectionError(call.error))) {
          // A late batch's call made a write that needs the lock, or failed: it may have failed on what
          // another instance has since changed (a key, a secret's version), which only the lock can
          // tell. Run the batch again under the lock, where a real failure fails again.
          this.abandon(conn);
          const r = await this.again(client, batch, guarded);
          if (r.broke === ENDED) {
            conn = this.begin(client);
            guarded = false;
            continue;
          }
          if (r.broke !== undefined) return this.fail(batch, r.broke);
          ({ conn, guarded } = r);
          continue;
        }
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
        if (broke === ENDED) {
          conn = this.begin(client);
          guarded = false;
          continue;
        }
        if (broke !== undefined) return this.fail(batch, broke);
      }
      if (batch.length === 0) {
        await this.rollback(conn);
        return undefined;
      }
      const outcome = await this.finish(conn, batch, guarded);
      if (outcome === undefined) return undefined;
      if (outcome === ENDED) {
        conn = this.begin(client);
        guarded = false;
        continue;
      }
      if (outcome === RERUN_LOCKED) {
        const r = await this.again(client, batch, guarded);
        if (r.broke === ENDED) {
          conn = this.begin(client);
          guarded = false;
          continue;
        }
        if (r.broke !== undefined) return this.fail(batch, r.broke);
        ({ conn, guarded } = r);
        continue; // then take more calls, and finish again
      }
      if (outcome === RERUN_GUARDED) {
        this.counts.reruns++;
        guarded = true;
        let broke: unknown;
        do {
          if (broke === RERUN_GUARDED) {
            this.counts.reruns++;
            guarded = true;
          }
          conn = this.begin(client);
          broke = await this.rerun(conn, batch, guarded);
        } while (broke === RERUN_GUARDED);
        if (broke === ENDED) {
          conn = this.begin(client);
          guarded = false;
          continue;
        }
        if (broke !== undefined) return this.fail(batch, broke);
        continue; // then take more calls, and finish again
      }
      return this.fail(batch, outcome);
    }
  }

  /**
   * Runs every call of `batch` again in the fresh transaction `conn`. Returns a connection error if
   * one broke it, RERUN_GUARDED when an unguarded rerun had a call fail, or ENDED when the
   * transaction could not go on (every call rejected, the batch emptied).
   */
  private async rerun(conn: Conn, batch: Call[], guarded: boolean): Promise<unknown> {
    for (const c of batch) {
      if (c.dropped) continue; // it keeps its error
      c.ok = false;
      c.value = c.error = c.finishers = c.changes = undefined;
      await this.runCall(conn, c, guarded);
      if (!c.ok && isConnectionError(c.error)) return c.error;
      if (!c.ok && (conn.aborted || isLockTimeout(c.error))) {
        await this.endBatch(conn, batch, c.error);
        return ENDED;
      }
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
    if (conn.late) {
      // The late lock: taken now, with the counters, head and checkpoint in one round trip.
      conn.lock();
      let valid: boolean;
      try {
        valid = await this.validate(conn);
      } catch (e) {
        if (isConnectionError(e)) return e;
        if (isLockTimeout(e)) {
          // Waited out lock_timeout: running the batch again under the lock would wait as long again.
          await this.endBatch(conn, batch, e);
          return ENDED;
        }
        valid = false; // a deferred lease insert failed, say: find out under the lock
      }
      if (!valid) {
        this.abandon(conn);
        return RERUN_LOCKED;
      }
      this.counts.late++;
      this.relockRun = LOCKED_AFTER_RELOCK;
    }
    const changes: StoreChange[] = [];
    for (const c of batch) if (c.ok && c.changes) changes.push(...c.changes);
    for (const [f, owners] of batchFinishers(batch)) {
      const tx = new PgTx(conn, this.cache, true);
      try {
        await this.timeout.run(f(tx));
        changes.push(...tx.changes);
      } catch (e) {
        tx.active = false;
        if (isConnectionError(e)) return e;
        if (isLockTimeout(e)) {
          await this.endBatch(conn, batch, e);
          return ENDED;
        }
        if (conn.late) {
          this.abandon(conn);
          return RERUN_LOCKED;
        }
        await this.rollback(conn);
        // Unguarded, the failure may be a deferred write of one of the calls: find out with savepoints.
        if (!guarded && batch.length > 1) return RERUN_GUARDED;
        // Guarded, a function only one call registered (its audit events) fails that call alone.
        if (owners.length === 1 && batch.some((c) => c.ok && c !== owners[0])) {
          owners[0]!.ok = false;
          owners[0]!.error = e;
          owners[0]!.dropped = true;
          return RERUN_GUARDED;
        }
        for (const c of batch) c.reject(c.ok ? e : c.error);
        return undefined;
      } finally {
        tx.active = false;
      }
    }
    let bumped: Promise<Row[]> | null = null;
    let commitSent = false;
    try {
      if (conn.wrote)
        bumped = conn.rows({
          what: "commit a transaction",
          text: "UPDATE lessor_commits SET n = n + 1, cfg = cfg + $1, live = live + $2, plain = plain + $3 WHERE id = 1 RETURNING n, cfg, live, plain",
          values: [conn.wroteConfig ? 1 : 0, conn.wroteLive ? 1 : 0, conn.wroteOther ? 0 : 1],
        });
      bumped?.catch(() => {});
      // In the same transaction: recorded only if it commits; announced after (./change-feed.ts).
      const recorded = changes.length > 0 ? conn.sendForRows(changeStatement(this.origin, changes, Date.now())) : null;
      commitSent = true;
      await conn.rows({ what: "commit a transaction", text: "COMMIT", values: [] });
      // COMMIT of a transaction a deferred write aborted answers ROLLBACK, not an error: check.
      await conn.settle();
      if (recorded !== null) this.announce(conn.client, Number((await recorded)?.[0]?.seq), changes);
      // The cache now holds what this transaction left (sync dropped anything older another instance
      // changed). Under the lock only this commit moved the counters; if not, trust nothing cached.
      const before = await conn.counters;
      const now = bumped !== null ? counters((await bumped)[0]) : before;
      if (bumped !== null && now.n !== before.n + 1) this.clearCache();
      this.seen = now;
      this.carried = true;
      this.counts.commits++;
    } catch (e) {
      // Lost after COMMIT went out: it may have committed. Never reported ok, and not as "nothing happened".
      if (isConnectionError(e)) return commitSent ? commitOutcomeUnknown(e, this.target) : e;
      if (isLockTimeout(e)) {
        await this.endBatch(conn, batch, e);
        return ENDED;
      }
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
    const err = this.noteLost(e instanceof VaultError ? e : pgError(e, "run a transaction", this.target));
    for (const c of batch) c.reject(err);
    return err;
  }

  /**
   * Rolls the whole transaction back and rejects every call of `batch` with `e` (a call failed by its
   * own beforeCommit function keeps its own error); empties the batch.
   */
  private async endBatch(conn: Conn, batch: Call[], e: unknown): Promise<void> {
    await this.rollback(conn);
    for (const c of batch) c.reject(c.dropped ? c.error : e);
    batch.length = 0;
  }

  /** Rolls the connection's transaction back (if the server still has one) and empties the cache. */
  private async rollback(conn: Conn): Promise<void> {
    if (!conn.begun) return; // a late batch that sent nothing: nothing to undo, the cache still holds
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
    const saved = guarded ? conn.savepoint() : null;
    try {
      // The first call of a transaction waits for the lock and the counters (under its deadline) first.
      // (A late batch has no lock to wait for: it is checked against the counters at its commit.)
      call.value = await this.timeout.run(conn.synced || conn.late ? call.fn(tx) : this.sync(conn).then(() => call.fn(tx)));
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
      // Past the deadline with a statement unanswered: the server went silent, not the function astray.
      call.error = isTxTimeout(e) && conn.waiting ? silentServer(this.target, this.txTimeoutMs) : e;
      if (guarded && !isConnectionError(call.error)) {
        this.clearCache(); // what this call put in the cache is being undone
        // A savepoint never made (the transaction failed before it: the lock it waited for at BEGIN,
        // say) undoes nothing, and ROLLBACK TO it would fail in place of the real cause; a lock not had
        // within lock_timeout is the transaction's failure, not this call's. The batch ends.
        if (!(await saved!) || isLockTimeout(call.error)) {
          conn.aborted = true;
          return;
        }
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
