/**
 * The ports of the core: the interfaces it is driven through, which adapters implement — the store
 * ({@link Store}), audit sinks ({@link AuditSink}) and key sources ({@link KeySource}).
 *
 * The storage interface: Stores hold only sealed values, metadata, leases
 * and audit rows; they know nothing of keys, policy or roles.
 *
 * Consistency contract (checked by test/store-conformance.ts against every store):
 * - Reads on {@link Store} see only committed data.
 * - {@link Store.transaction} runs its function with exclusive write access (serialisable); every
 *   write inside it commits together or not at all. A store may commit several concurrent
 *   transactions' functions together in one durable commit ("group commit"), but each function's
 *   writes still succeed or fail as one, and its promise settles only after the commit is durable.
 * - Functions passed to `transaction` must only call the tx and do pure computation: never wait on
 *   anything else (I/O, timers), since other callers' work may be waiting in the same commit. A store
 *   may run a function more than once before it commits (the SQLite store does when a sibling in the
 *   same batch throws); only the last run's writes and result count, so a function must not change
 *   anything outside the tx that a second run would change again.
 *
 * Round trips (for a store behind a network, such as PostgreSQL): a transaction should cost as few
 * as its reads need, not one per call. The contract allows it:
 * - Writes that resolve to nothing (`Promise<void>`: putSecret, insertVersion, insertLease,
 *   renewLease, insertAudit, putCheckpoint, setMeta, insertToken) are batchable: a store may defer
 *   them and send them with the transaction's next read or with its commit. Their failure may then
 *   surface at that later call or at the commit, and fails the whole transaction (the core never
 *   needs a void write's failure before its next read). Writes that return a value (useLease,
 *   revokeLeases, deleteSecret, …) are sent when called.
 * - The core issues reads it needs together (`Promise.all`) where one does not depend on another,
 *   so a store can send them in one round trip (a lease grant reads the killswitch, the secret's
 *   current version and the agent's live-lease count at once).
 * - Some reads are nearly always the same from one transaction to the next: getMeta,
 *   getCheckpoint, auditHead and getCurrentVersion. Inside a transaction a store may answer them
 *   from a cache, provided the cache is kept exact: updated or dropped by the store's own writes,
 *   dropped when a transaction (or part of one) rolls back, and dropped when another writer may
 *   have committed (the SQLite store checks `PRAGMA data_version` under its write lock:
 *   src/store/sqlite/writer-cache.ts). A cache must never let a transaction decide on a value
 *   another writer has since committed over.
 */
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
} from "../base/types.js";
import type { Keyring } from "../crypto/keyring.js";

/** Reads, available both on the store (committed data) and inside a transaction (its own view). */
export interface StoreReader {
  getSecret(ref: SecretRef): Promise<SecretRecord | null>;
  /** Sorted by scope, then name. */
  listSecrets(filter: SecretFilter): Promise<SecretRecord[]>;
  getVersion(ref: SecretRef, version: number): Promise<VersionRecord | null>;
  /** The secret's current version in one read; null when the secret, or the version it names, is missing. */
  getCurrentVersion(ref: SecretRef): Promise<VersionRecord | null>;
  /** Every stored version of a secret, oldest first. */
  listVersions(ref: SecretRef): Promise<VersionRecord[]>;
  /** Up to `limit` versions (of any secret) whose DEK is wrapped by a key other than `keyId`. */
  versionsNotUnderKey(keyId: string, limit: number): Promise<VersionRecord[]>;
  /** Distinct master key ids that stored versions point at. */
  keyIdsInUse(): Promise<string[]>;

  getLease(id: string): Promise<LeaseRecord | null>;
  /**
   * Ordered by id, descending. The vault makes each lease id a UUIDv7 at issue, so this is newest
   * first (and a store can walk its primary key instead of keeping an index on the issue time).
   */
  listLeases(filter: LeaseFilter): Promise<LeaseRecord[]>;
  /**
   * Leases of `agent` that are live at `now`; must use an index, never scan every lease. With `cap`,
   * the caller only needs to know whether the count reaches `cap`: a store may then answer any number
   * below `cap` that it knows to be at least the count (a bound it keeps, so that a grant need not
   * wait for a read), and must answer the exact count when that count is `cap` or more.
   */
  countLiveLeases(agent: string, now: number, cap?: number): Promise<number>;

  queryAudit(filter: AuditFilter): Promise<AuditRecord[]>;
  /** The last audit row's seq, hash and key id, or null when the trail is empty. */
  auditHead(): Promise<AuditHead | null>;
  getCheckpoint(): Promise<AuditCheckpoint | null>;

  getMeta(key: string): Promise<string | null>;

  /** A token by its public id (with its hash), or null. */
  getToken(id: string): Promise<TokenRecord | null>;
  /** Every token, oldest first; with `filter`, those it selects. */
  listTokens(filter?: TokenFilter): Promise<TokenRecord[]>;
}

/** Which tokens {@link StoreReader.listTokens} returns: every one, unless narrowed. */
export interface TokenFilter {
  /** Only tokens neither revoked nor expired at this time (epoch ms). */
  liveAt?: number;
  /** Only tokens whose name starts with this. */
  namePrefix?: string;
}

/** Writes, only inside {@link Store.transaction}. */
export interface StoreTx extends StoreReader {
  /** Inserts or replaces the secret's metadata row (keyed by scope and name). */
  putSecret(rec: SecretRecord): Promise<void>;
  /** Inserts a version; throws if that (scope, name, version) exists or the secret row does not. */
  insertVersion(rec: VersionRecord): Promise<void>;
  /** Deletes versions numbered below `version`; returns how many. */
  deleteVersionsBelow(ref: SecretRef, version: number): Promise<number>;
  /** Deletes the secret and all its versions; returns false if it did not exist. */
  deleteSecret(ref: SecretRef): Promise<boolean>;
  /**
   * Replaces one version's wrapped DEK and key id, only if it is still wrapped by `fromKeyId`.
   * Returns whether a row changed.
   */
  rewrapVersion(ref: SecretRef, version: number, fromKeyId: string, toKeyId: string, wrappedDek: Uint8Array): Promise<boolean>;

  insertLease(rec: LeaseRecord): Promise<void>;
  /**
   * Atomically counts one use: succeeds only if the lease exists, is not revoked, `expiresAt > now`
   * and it has uses left: fewer than its own `maxUses`, and fewer than `cap` when one is given (the
   * `max_uses` of the rule in force, which a reload may have lowered below the lease's). Returns the
   * lease's use count after this use, or null if nothing changed. (The caller has the rest of the
   * lease: it read it in the same transaction.)
   */
  useLease(id: string, now: number, cap?: number | null): Promise<number | null>;
  /** Sets a live lease's expiry and renewal count (a renewal). */
  renewLease(id: string, expiresAt: number, renewals: number): Promise<void>;
  /**
   * Revokes the selected leases that are not yet revoked nor expired, used up ones included (what
   * streams on a lease's last use must end with a revocation: src/base/lease-state.ts isRevocable);
   * returns how many.
   */
  revokeLeases(sel: RevokeSelector, now: number, reason: string): Promise<number>;
  /** Deletes up to `limit` leases whose expiry is before `before`; returns how many. */
  deleteExpiredLeases(before: number, limit: number): Promise<number>;

  /** Appends an audit row; its seq must be the head's seq + 1. */
  insertAudit(rec: AuditRecord): Promise<void>;
  putCheckpoint(cp: AuditCheckpoint): Promise<void>;

  /**
   * Runs `f` once more before this transaction commits, after every transaction function sharing
   * the commit (a store may commit several together), with a tx of its own that sees all their
   * writes, in the order they were registered. Registering the same `f` again for the same commit
   * runs it once still, in the place of its last registration (after those registered before it),
   * so a function every transaction registers last runs after all the others. What a transaction
   * function registered is dropped if it throws. If `f` throws, nothing in the commit is kept and
   * every transaction function sharing it rejects. The vault chains each call's audit events this
   * way, onto the head as it is just before the commit, and then writes its audit checkpoint: once
   * per commit, for the head that the commit leaves.
   */
  beforeCommit(f: (tx: StoreTx) => Promise<void>): void;

  setMeta(key: string, value: string): Promise<void>;

  /** Inserts a token; throws if the id exists. */
  insertToken(rec: TokenRecord): Promise<void>;
  /** Marks a token revoked at `now` if it is not already; returns whether it changed. */
  revokeToken(id: string, now: number): Promise<boolean>;
  /** Replaces a token's MAC (key rotation, src/vault/token-mac.ts); returns whether the token exists. */
  setTokenMac(id: string, mac: Uint8Array): Promise<boolean>;
}

/** A store: committed reads plus serialisable transactions. */
export interface Store extends StoreReader {
  /** A short name for status output: "sqlite", "memory", "postgres". */
  readonly kind: string;
  transaction<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T>;
  close(): Promise<void>;
  /**
   * Every metadata entry, as committed, sorted by key (code point order). Only `lessor migrate`
   * needs it (to copy a vault without a list of the keys the core happens to use today).
   */
  listMeta(): Promise<MetaEntry[]>;
  /**
   * The change feed, for a store that several processes share over a network (PostgreSQL): calls
   * `listener` with what other processes' commits changed that live connections must see at once
   * (see {@link StoreChange}), soon after each commit; returns the function that unsubscribes. A
   * store announces a commit's changes from inside that commit, so they are delivered only if it
   * commits. Changes made through this store object itself are not delivered (the vault acted on
   * them already). Absent for stores one process owns (memory; SQLite, where several processes on
   * one file rely on the daemon's polls instead: src/server/daemon.ts).
   */
  changes?(listener: ChangeListener): () => void;
  /**
   * The time by the store's own clock, in epoch ms, for a store several machines share (PostgreSQL:
   * the database server's clock). The vault decides every time by it (expiry of leases, tokens and
   * approvals, issue times, the killswitch's live leases, the dead-man switch), so that instances
   * whose clocks differ still agree. Absent: this process's clock (stores on one machine).
   */
  now?(): number;
}

/** One metadata entry, as {@link Store.listMeta} lists it. */
export interface MetaEntry {
  key: string;
  value: string;
}

/**
 * What another process's commit changed, as a change feed reports it: ids and names only, never a
 * secret or a token's secret part.
 * - `leases_revoked`: leases were revoked (by id, agent, secret or all); `leaseIds` is null when
 *   there were too many to list.
 * - `token_revoked`: a bearer token was revoked.
 * - `meta`: a metadata key was written (the killswitch lockout, the policy version, the master key id).
 * - `resync`: the feed may have missed changes (it was disconnected longer than the store keeps its
 *   change log, or the log was cut): re-read everything that matters.
 */
export type StoreChange =
  | { kind: "leases_revoked"; count: number; leaseIds: string[] | null }
  | { kind: "token_revoked"; tokenId: string }
  | { kind: "meta"; key: string }
  | { kind: "resync"; reason: string };

/** A change-feed subscriber; called once per change, in commit order. Must not throw (it is ignored if it does). */
export type ChangeListener = (change: StoreChange) => void;

/**
 * An audit sink: a place every committed audit event is also written to, after the store's own audit
 * table (src/audit/jsonl-sink.ts, the log sink in src/audit/sink.ts). Receives committed events, in order. Throwing (or rejecting) fails the operation. */
export interface AuditSink {
  write(events: readonly AuditRecord[]): void | Promise<void>;
  /**
   * Throws VaultError("audit_failed") when the sink can tell already that it could not record events
   * (its file removed or replaced), so that an operation is refused before it changes anything rather
   * than committed with its result withheld. Called inside a transaction, at an operation's first
   * audited event (not a brake's: src/vault/audit-guard.ts isBrake), so it must be quick and
   * synchronous and change nothing. A failure that only writing shows still comes from `write`.
   */
  check?(): void;
  close?(): void | Promise<void>;
}

/** A process as other lessor processes sharing the store can name it (src/vault/rotation-claim.ts). */
export interface ProcessRef {
  /** Which kernel and pid namespace `pid` is in (on Linux the boot id and the pid namespace; else the host name). */
  host: string;
  pid: number;
  /** Its start time where known (a pid alone is reused). */
  start: string | null;
}

/**
 * This process, and whether a process named by a claim in the store has ended (src/config/local-processes.ts
 * localProcesses): a claim left by a process that died is taken over at once instead of when it lapses.
 */
export interface Processes {
  readonly self: ProcessRef;
  /** True only when `p` certainly ended: it ran on this host, in this pid namespace, and runs no more. */
  ended(p: ProcessRef): boolean;
  /** Process `pid` of this host (a child this process started, say), as a claim names it. */
  ref(pid: number): ProcessRef;
}

/**
 * Where master keys come from (env, passphrase file, key file, OS keychain, command). Sources that can
 * store keys (the key file, the passphrase file and the keychain) support rotation through {@link KeySource.promote} and
 * {@link KeySource.retire}; read-only sources (env, command) rotate by the operator supplying the new
 * key as current and the old one as previous.
 */
export interface KeySource {
  /** "env", "passphrase", "file", "keychain" or "command". */
  readonly kind: string;
  /** Human-readable description for status output and errors (a path or variable name; never a key). */
  readonly describe: string;
  /** Loads the keyring. Throws VaultError("key_unavailable" | "insecure_permissions") with the fix. */
  load(): Promise<Keyring>;
  /**
   * Reads the keys again, after another process sharing the store rotated the master key
   * (src/vault/key-reload.ts), without asking anyone for anything: `ring` is the keyring in use (a
   * passphrase store re-opens its file with the key derived when `ring` was loaded). Absent: the
   * vault calls {@link KeySource.load} again (the key file is re-read, the key command run again).
   */
  reload?(ring: Keyring): Promise<Keyring>;
  /** True when this source can store a new key itself. */
  readonly writable: boolean;
  /**
   * Durably stores `newKey` as the current key, keeping every key of `ring` readable, and returns the
   * new ring. Must be durable (fsynced, atomically replaced) before it returns. Writable sources only.
   */
  promote?(ring: Keyring, newKey: Buffer): Promise<Keyring>;
  /** Durably drops every key whose id is not in `keep`; returns the new ring. Writable sources only. */
  retire?(ring: Keyring, keep: readonly string[]): Promise<Keyring>;
}

