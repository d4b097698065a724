/**
 * The SQLite store (better-sqlite3, WAL, synchronous=FULL): the embedded default. One file, two
 * connections: a writer that runs transactions with group commit, and a reader for committed reads.
 * See docs/storage.md for the schema, durability and sharing one file between processes.
 */
import fs from "node:fs";
import { resolve } from "node:path";
import Database from "better-sqlite3";
import type BetterSqlite3 from "better-sqlite3";
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
import type { Store, StoreReader, StoreTx, TokenFilter } from "../../vault/ports.js";
import { Queries, sqliteError } from "./queries.js";
import { migrate } from "./schema.js";
import { batchFinishers, nestedBeforeCommit, txFinished } from "../semantics.js";
import { BatchQueue } from "../batch-queue.js";
import { TxTimeout } from "../tx-timeout.js";
import { MISS, WriterCache } from "./writer-cache.js";

/** Options for {@link openSqliteStore}. */
export interface SqliteStoreOptions {
  /** How long to wait for another process's write lock before failing with "unavailable" (default 5000). */
  busyTimeoutMs?: number;
  /** How long one transaction function may run before it is rolled back and rejected (default 10000). */
  txTimeoutMs?: number;
}

/** A {@link Store} on one SQLite file, with commit counters for tests and benchmarks. */
export interface SqliteStore extends Store {
  /**
   * `commits`: durable COMMITs so far; `transactions`: transaction functions run so far (a function
   * run again after a sibling's failure counts twice); `reruns`: batches run again, with a savepoint
   * per call, because a call threw.
   */
  stats(): { commits: number; transactions: number; reruns: number };
  /** The writer connection's settings, for status output and tests. */
  settings(): { journalMode: string; synchronous: number; foreignKeys: boolean; busyTimeoutMs: number; schemaVersion: number };
}

/** Most transaction functions sharing one commit. */
const MAX_BATCH = 256;

const LOCKED_MESSAGE = "the vault database is locked by another process; try again, or stop the other lessor process";

/**
 * Opens (creating with mode 0600 if missing) and migrates the vault database at `path`.
 * Throws VaultError("unavailable") if it cannot be opened or was written by a newer lessor.
 */
export function openSqliteStore(path: string, opts: SqliteStoreOptions = {}): SqliteStore {
  const busyTimeoutMs = opts.busyTimeoutMs ?? 5000;
  if (path === "" || path === ":memory:" || path.startsWith("file:"))
    throw new VaultError("invalid_request", "the SQLite store needs a plain file path; use createMemoryStore() for a store in memory");
  path = resolve(path); // as SQLite keeps it: a later chdir does not change which file it names
  let file: FileId;
  try {
    const fd = fs.openSync(path, "a", 0o600);
    try {
      const st = fs.fstatSync(fd);
      file = { dev: st.dev, ino: st.ino };
    } finally {
      fs.closeSync(fd);
    }
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "error";
    throw new VaultError("unavailable", `cannot open the vault database ${path} (${code}); check that its directory exists and is writable`, {
      cause: e,
    });
  }
  let writer: BetterSqlite3.Database | undefined;
  let reader: BetterSqlite3.Database | undefined;
  try {
    writer = new Database(path);
    writer.pragma(`busy_timeout = ${Math.max(0, Math.floor(busyTimeoutMs))}`);
    writer.pragma("journal_mode = WAL");
    writer.pragma("synchronous = FULL");
    writer.pragma("foreign_keys = ON");
    // Statement journals (kept by writes inside a savepoint, and by statements that may have to undo
    // part of their own work) and other transient data in memory rather than in temp files; nothing
    // durable lives there.
    writer.pragma("temp_store = MEMORY");
    migrate(writer);
    reader = new Database(path);
    reader.pragma(`busy_timeout = ${Math.max(0, Math.floor(busyTimeoutMs))}`);
    reader.pragma("foreign_keys = ON");
    return new SqliteStoreImpl(writer, reader, opts.txTimeoutMs ?? 10_000, path, file);
  } catch (e) {
    reader?.close();
    writer?.close();
    if (e instanceof VaultError) throw e;
    throw sqliteError(e, `open the vault database ${path}`);
  }
}

/** Which file a path named when it was opened. */
interface FileId {
  dev: number;
  ino: number;
}

/** How often reads look again at which file the path names (writes look at every batch). */
const READ_FILE_CHECK_MS = 1000;

/** Read methods over one connection; `exec` decides which connection and when reads are allowed. */
abstract class SqliteReads implements StoreReader {
  protected abstract exec<T>(what: string, f: (q: Queries) => T): Promise<T>;

  getSecret(ref: SecretRef): Promise<SecretRecord | null> {
    return this.exec("read a secret", (q) => q.getSecret(ref));
  }
  listSecrets(filter: SecretFilter): Promise<SecretRecord[]> {
    return this.exec("list secrets", (q) => q.listSecrets(filter));
  }
  getVersion(ref: SecretRef, version: number): Promise<VersionRecord | null> {
    return this.exec("read a secret version", (q) => q.getVersion(ref, version));
  }
  getCurrentVersion(ref: SecretRef): Promise<VersionRecord | null> {
    return this.exec("read a secret version", (q) => q.getCurrentVersion(ref));
  }
  listVersions(ref: SecretRef): Promise<VersionRecord[]> {
    return this.exec("list secret versions", (q) => q.listVersions(ref));
  }
  versionsNotUnderKey(keyId: string, limit: number): Promise<VersionRecord[]> {
    return this.exec("list versions to re-wrap", (q) => q.versionsNotUnderKey(keyId, limit));
  }
  keyIdsInUse(): Promise<string[]> {
    return this.exec("list key ids in use", (q) => q.keyIdsInUse());
  }
  getLease(id: string): Promise<LeaseRecord | null> {
    return this.exec("read a lease", (q) => q.getLease(id));
  }
  listLeases(filter: LeaseFilter): Promise<LeaseRecord[]> {
    return this.exec("list leases", (q) => q.listLeases(filter));
  }
  countLiveLeases(agent: string, now: number): Promise<number> {
    return this.exec("count live leases", (q) => q.countLiveLeases(agent, now));
  }
  queryAudit(filter: AuditFilter): Promise<AuditRecord[]> {
    return this.exec("query the audit trail", (q) => q.queryAudit(filter));
  }
  auditHead(): Promise<AuditHead | null> {
    return this.exec("read the audit head", (q) => q.auditHead());
  }
  getCheckpoint(): Promise<AuditCheckpoint | null> {
    return this.exec("read the audit checkpoint", (q) => q.getCheckpoint());
  }
  getMeta(key: string): Promise<string | null> {
    return this.exec("read metadata", (q) => q.getMeta(key));
  }
  /** Every metadata entry, sorted by key (Store.listMeta). */
  listMeta(): Promise<{ key: string; value: string }[]> {
    return this.exec("list metadata", (q) => q.listMeta());
  }
  getToken(id: string): Promise<TokenRecord | null> {
    return this.exec("read a token", (q) => q.getToken(id));
  }
  listTokens(filter?: TokenFilter): Promise<TokenRecord[]> {
    return this.exec("list tokens", (q) => q.listTokens(filter));
  }
}

/** The tx handed to one transaction function; valid only until that function settles. */
class SqliteTx extends SqliteReads implements StoreTx {
  active = true;
  /** What this transaction function registered to run before the commit (see StoreTx.beforeCommit). */
  readonly finishers = new Set<(tx: StoreTx) => Promise<void>>();

  constructor(
    private readonly q: Queries,
    /** The writer's cache of hot rows (src/store/sqlite/writer-cache.ts), kept current by this tx's writes. */
    private readonly cache: WriterCache,
    /** A tx handed to a beforeCommit function: it may not register more. */
    private readonly finishing = false,
  ) {
    super();
  }

  beforeCommit(f: (tx: StoreTx) => Promise<void>): void {
    if (!this.active) throw txFinished();
    if (this.finishing) throw nestedBeforeCommit();
    this.finishers.delete(f); // registered again: it moves after those registered since
    this.finishers.add(f);
  }

  protected exec<T>(what: string, f: (q: Queries) => T): Promise<T> {
    if (!this.active) return Promise.reject(txFinished());
    try {
      return Promise.resolve(f(this.q));
    } catch (e) {
      return Promise.reject(sqliteError(e, what));
    }
  }

  override getCurrentVersion(ref: SecretRef): Promise<VersionRecord | null> {
    return this.exec("read a secret version", (q) =>
      readThrough(this.cache.currentVersion(ref), () => q.getCurrentVersion(ref), (v) => this.cache.setCurrentVersion(ref, v)),
    );
  }
  putSecret(rec: SecretRecord): Promise<void> {
    this.cache.dropSecret(rec);
    return this.exec("write a secret", (q) => q.putSecret(rec));
  }
  insertVersion(rec: VersionRecord): Promise<void> {
    this.cache.dropSecret(rec);
    return this.exec("write a secret version", (q) => q.insertVersion(rec));
  }
  deleteVersionsBelow(ref: SecretRef, version: number): Promise<number> {
    this.cache.dropSecret(ref);
    return this.exec("delete old secret versions", (q) => q.deleteVersionsBelow(ref, version));
  }
  deleteSecret(ref: SecretRef): Promise<boolean> {
    this.cache.dropSecret(ref);
    return this.exec("delete a secret", (q) => q.deleteSecret(ref));
  }
  rewrapVersion(ref: SecretRef, version: number, fromKeyId: string, toKeyId: string, wrappedDek: Uint8Array): Promise<boolean> {
    this.cache.dropSecret(ref);
    return this.exec("re-wrap a secret version", (q) => q.rewrapVersion(ref, version, fromKeyId, toKeyId, wrappedDek));
  }
  insertLease(rec: LeaseRecord): Promise<void> {
    return this.exec("write a lease", (q) => q.insertLease(rec));
  }
  useLease(id: string, now: number, cap: number | null = null): Promise<number | null> {
    return this.exec("count a lease use", (q) => q.useLease(id, now, cap));
  }
  renewLease(id: string, expiresAt: number, renewals: number): Promise<void> {
    return this.exec("renew a lease", (q) => q.renewLease(id, expiresAt, renewals));
  }
  revokeLeases(sel: RevokeSelector, now: number, reason: string): Promise<number> {
    return this.exec("revoke leases", (q) => q.revokeLeases(sel, now, reason));
  }
  deleteExpiredLeases(before: number, limit: number): Promise<number> {
    return this.exec("delete expired leases", (q) => q.deleteExpiredLeases(before, limit));
  }
  override auditHead(): Promise<AuditHead | null> {
    return this.exec("read the audit head", (q) => {
      const hit = this.cache.head();
      const h = hit !== MISS ? hit : q.auditHead();
      this.cache.setHead(h);
      return h;
    });
  }
  insertAudit(rec: AuditRecord): Promise<void> {
    return this.exec("append to the audit trail", (q) => {
      // The head's seq when the cache knows it (this batch read or wrote it); otherwise insertAudit reads it.
      const cached = this.cache.head();
      q.insertAudit(rec, cached !== MISS ? (cached?.seq ?? 0) : undefined);
      this.cache.setHead({ seq: rec.seq, hash: rec.hash, keyId: rec.keyId });
    });
  }
  override getCheckpoint(): Promise<AuditCheckpoint | null> {
    return this.exec("read the audit checkpoint", (q) => readThrough(this.cache.checkpoint(), () => q.getCheckpoint(), (cp) => this.cache.setCheckpoint(cp)));
  }
  putCheckpoint(cp: AuditCheckpoint): Promise<void> {
    return this.exec("write the audit checkpoint", (q) => {
      q.putCheckpoint(cp);
      this.cache.setCheckpoint(cp);
    });
  }
  override getMeta(key: string): Promise<string | null> {
    return this.exec("read metadata", (q) => readThrough(this.cache.meta(key), () => q.getMeta(key), (v) => this.cache.setMeta(key, v)));
  }
  setMeta(key: string, value: string): Promise<void> {
    return this.exec("write metadata", (q) => {
      q.setMeta(key, value);
      this.cache.setMeta(key, value);
    });
  }
  insertToken(rec: TokenRecord): Promise<void> {
    return this.exec("write a token", (q) => q.insertToken(rec));
  }
  revokeToken(id: string, now: number): Promise<boolean> {
    return this.exec("revoke a token", (q) => q.revokeToken(id, now));
  }
  setTokenMac(id: string, mac: Uint8Array): Promise<boolean> {
    return this.exec("write a token's MAC", (q) => q.setTokenMac(id, mac));
  }
}

/** A cached value (`hit`), or `read()` kept with `keep` when the cache has none. */
function readThrough<T>(hit: T | typeof MISS, read: () => T, keep: (v: T) => void): T {
  if (hit !== MISS) return hit;
  const v = read();
  keep(v);
  return v;
}

/** One queued transaction call. */
interface Call {
  fn: (tx: StoreTx) => Promise<unknown>;
  /** What the function registered with beforeCommit, kept only if it succeeded. */
  finishers?: Set<(tx: StoreTx) => Promise<void>>;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  ok: boolean;
  value: unknown;
  error: unknown;
}

class SqliteStoreImpl extends SqliteReads implements SqliteStore {
  readonly kind = "sqlite";
  private readonly rq: Queries;
  private readonly wq: Queries;
  /** Hot rows the writer's transactions read, valid while no other connection commits (writer-cache.ts). */
  private readonly cache = new WriterCache();
  /** The timeout of each transaction function (they run one at a time). */
  private readonly timeout: TxTimeout;
  private readonly calls = new BatchQueue<Call>(() => this.runBatch());
  /** The connections are closed: reads are refused too. */
  private closed = false;
  private closedP: Promise<void> | null = null;
  private commits = 0;
  private transactions = 0;
  private reruns = 0;
  /**
   * Set once the path no longer names the file the connections have open (it was replaced, e.g. by
   * a restored backup moved over it, or removed): from then on every transaction and read is refused
   * with it, since whatever is written would go into a file no one will open again.
   */
  private replaced: VaultError | null = null;
  /** When a read last looked at the path (see {@link READ_FILE_CHECK_MS}). */
  private readCheckedAt = 0;

  constructor(
    private readonly writer: BetterSqlite3.Database,
    private readonly reader: BetterSqlite3.Database,
    txTimeoutMs: number,
    /** The database's absolute path, and the file it named when the connections opened it. */
    private readonly path: string,
    private readonly file: FileId,
  ) {
    super();
    this.rq = new Queries(reader);
    this.wq = new Queries(writer);
    this.timeout = new TxTimeout(txTimeoutMs);
  }

  protected exec<T>(what: string, f: (q: Queries) => T): Promise<T> {
    if (this.closed) return Promise.reject(closedError());
    // Reads look too, at most once a second (the daemon reads the killswitch every second), so that
    // an idle daemon notices a replaced file without waiting for a write.
    const now = Date.now();
    if (this.replaced === null && now - this.readCheckedAt >= READ_FILE_CHECK_MS) {
      this.readCheckedAt = now;
      this.checkFile();
    }
    if (this.replaced !== null) return Promise.reject(this.replaced);
    try {
      return Promise.resolve(f(this.rq));
    } catch (e) {
      return Promise.reject(sqliteError(e, what));
    }
  }

  stats(): { commits: number; transactions: number; reruns: number } {
    return { commits: this.commits, transactions: this.transactions, reruns: this.reruns };
  }

  settings(): { journalMode: string; synchronous: number; foreignKeys: boolean; busyTimeoutMs: number; schemaVersion: number } {
    if (this.closed) throw closedError();
    const p = (name: string): unknown => this.writer.pragma(name, { simple: true });
    return {
      journalMode: String(p("journal_mode")),
      synchronous: Number(p("synchronous")),
      foreignKeys: Number(p("foreign_keys")) === 1,
      busyTimeoutMs: Number(p("busy_timeout")),
      schemaVersion: Number(p("user_version")),
    };
  }

  transaction<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    if (this.calls.closing) return Promise.reject(closedError());
    return new Promise<T>((resolve, reject) => {
      this.calls.push({ fn, resolve: resolve as (v: unknown) => void, reject, ok: false, value: undefined, error: undefined });
    });
  }

  close(): Promise<void> {
    this.closedP ??= this.calls.close().then(() => {
      this.closed = true;
      this.reader.close();
      this.writer.close(); // the last connection to close checkpoints the WAL into the main file
    });
    return this.closedP;
  }

  /**
   * Null while the path still names the file the connections opened (same device and inode, as
   * src/audit/jsonl-sink.ts checks its file); otherwise the error to refuse with, kept in
   * {@link replaced} when the file was replaced or removed. One stat.
   */
  private checkFile(): VaultError | null {
    if (this.replaced !== null) return this.replaced;
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(this.path, { throwIfNoEntry: false });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? "error";
      return new VaultError("unavailable", `cannot check the vault database ${this.path} (${code}); nothing was written; check the path and its directory's permissions`, { cause: e });
    }
    if (st !== undefined && st.dev === this.file.dev && st.ino === this.file.ino) return null;
    this.replaced = new VaultError(
      "unavailable",
      `the vault database ${this.path} was ${st === undefined ? "removed" : "replaced by another file (a backup restored over it?)"} while this process had it open; ` +
        "this process refuses every write and read, since they would go to the old file no one opens again. " +
        "Check who replaced it, then restart lessor serve (or this command) so that it opens the file now at that path",
    );
    return this.replaced;
  }

  /** BEGIN IMMEDIATE; false (with `onError` given the error to reject with) when it failed. */
  private begin(onError: (err: unknown) => void): boolean {
    try {
      this.wq.stmt("BEGIN IMMEDIATE").run();
      // Under the write lock: another connection's commit since our last one shows here, and none can happen until ours.
      this.cache.sync(this.wq.stmt("PRAGMA data_version").pluck().get() as number);
      return true;
    } catch (e) {
      onError(isBusy(e) ? new VaultError("unavailable", LOCKED_MESSAGE, { cause: e }) : sqliteError(e, "start a transaction"));
      return false;
    }
  }

  /**
   * One batch, one commit. BEGIN IMMEDIATE, then the calls one after another with no savepoint (a
   * savepoint makes SQLite copy every page a call touches, that earlier calls of the batch touched
   * too, into a statement journal). If a call throws, the batch so far is rolled back and run again,
   * each call in its own savepoint, so that only the failing call fails; the failing call is not run
   * again, it rejects with its error; later calls of the batch also get savepoints. Then the
   * beforeCommit functions the successful calls registered, each once (one that a single call
   * registered and that throws fails that call the same way); COMMIT; then settle every call.
   */
  private async runBatch(): Promise<void> {
    const w = this.wq;
    const rejectQueued = (err: unknown): void => {
      for (let i = 0; i < MAX_BATCH; i++) this.calls.take()?.reject(err);
    };
    // Once per batch, before anything is written: the path must still name the file open here.
    const gone = this.checkFile();
    if (gone !== null) return rejectQueued(gone);
    if (!this.begin(rejectQueued)) return;
    const batch: Call[] = [];
    let call: Call | undefined;
    let guarded = false;
    while (batch.length < MAX_BATCH && (call = this.calls.take()) !== undefined) {
      batch.push(call);
      if (!(await this.step(call, guarded, batch))) return;
      if (!call.ok && !guarded) {
        // Its writes so far are mixed with its siblings': undo the batch, run the siblings again.
        this.rollback();
        this.reruns++;
        guarded = true;
        if (!this.begin((err) => batch.forEach((c) => c.reject(err)))) return;
        for (const c of batch) {
          if (c === call) continue; // the one that failed keeps its error
          c.ok = false;
          c.value = c.error = c.finishers = undefined;
          if (!(await this.step(c, true, batch))) return;
        }
      }
    }
    // The beforeCommit functions, each once. One that a single call registered (its audit events)
    // and that throws fails that call alone: the batch is undone and its siblings run again without it.
    for (;;) {
      let failed: { owners: Call[]; e: unknown } | undefined;
      for (const [f, owners] of batchFinishers(batch)) {
        const tx = new SqliteTx(w, this.cache, true);
        try {
          await this.timeout.run(f(tx));
        } catch (e) {
          failed = { owners, e };
          break;
        } finally {
          tx.active = false;
        }
      }
      if (failed === undefined) break;
      // The commit cannot be kept without what the function writes.
      this.rollback();
      const e = failed.e;
      if (failed.owners.length !== 1 || batch.filter((c) => c.ok).length === 1) {
        for (const c of batch) c.reject(c.ok ? e : c.error);
        return;
      }
      const owner = failed.owners[0]!;
      owner.ok = false;
      owner.error = e;
      owner.finishers = undefined;
      this.reruns++;
      guarded = true;
      if (!this.begin((err) => batch.forEach((c) => c.reject(err)))) return;
      for (const c of batch) {
        if (!c.ok) continue; // a failed call keeps its error
        c.ok = false;
        c.value = c.error = c.finishers = undefined;
        if (!(await this.step(c, true, batch))) return;
      }
    }
    try {
      w.stmt("COMMIT").run();
      this.commits++;
    } catch (e) {
      this.rollback();
      const err = isBusy(e) ? new VaultError("unavailable", LOCKED_MESSAGE, { cause: e }) : sqliteError(e, "commit a transaction");
      for (const c of batch) c.reject(err);
      return;
    }
    for (const c of batch) {
      if (c.ok) c.resolve(c.value);
      else c.reject(c.error);
    }
  }

  /**
   * Runs `call` in the open transaction. False when SQLite rolled the whole transaction back by
   * itself (disk full, I/O error): nothing was kept, and every call of `batch` is rejected.
   */
  private async step(call: Call, guarded: boolean, batch: Call[]): Promise<boolean> {
    await this.runCall(call, guarded);
    if (this.writer.inTransaction) return true;
    this.cache.clear();
    const err = sqliteError(call.error, "write to the vault database");
    for (const c of batch) c.reject(err);
    return false;
  }

  /** Rolls the writer's transaction back, if SQLite has not already. */
  private rollback(): void {
    this.cache.clear();
    try {
      if (this.writer.inTransaction) this.wq.stmt("ROLLBACK").run();
    } catch {
      // nothing more to undo
    }
  }

  /**
   * Runs one call's function. `guarded`: inside a savepoint, rolled back to it if the function
   * throws, so that its siblings' writes stay. Unguarded, a throw leaves its writes for the caller
   * to undo with the whole transaction.
   */
  private async runCall(call: Call, guarded: boolean): Promise<void> {
    const w = this.wq;
    const tx = new SqliteTx(w, this.cache);
    if (guarded) {
      try {
        w.stmt("SAVEPOINT s").run();
      } catch (e) {
        call.error = sqliteError(e, "start a transaction");
        tx.active = false;
        return;
      }
    }
    try {
      call.value = await this.timeout.run(call.fn(tx));
      tx.active = false;
      if (guarded) w.stmt("RELEASE s").run();
      call.ok = true;
      if (tx.finishers.size > 0) call.finishers = tx.finishers;
    } catch (e) {
      tx.active = false;
      call.error = e;
      if (guarded) this.cache.clear(); // what this call wrote to the cache is being undone
      if (guarded && this.writer.inTransaction) {
        try {
          w.stmt("ROLLBACK TO s").run();
          w.stmt("RELEASE s").run();
        } catch {
          // the savepoint is gone with the whole transaction; runBatch sees inTransaction === false
        }
      }
    } finally {
      this.transactions++;
    }
  }
}

function isBusy(e: unknown): boolean {
  const code = (e as { code?: unknown })?.code;
  return typeof code === "string" && (code.startsWith("SQLITE_BUSY") || code.startsWith("SQLITE_LOCKED"));
}

function closedError(): VaultError {
  return new VaultError("unavailable", "the vault store is closed; open it again to continue");
}
