/**
 * The SQL behind the SQLite store, for one connection: cached prepared statements and row mapping.
 * Everything here is synchronous; src/store/sqlite/sqlite-store.ts decides which connection runs what.
 */
import type BetterSqlite3 from "better-sqlite3";
import { VaultError } from "../../base/errors.js";
import { auditGap, auditLimit } from "../semantics.js";
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
import { AUDIT_COLS, LEASE_COLS, rowMappers, sqlitePlaceholders, TOKEN_COLS } from "../rows.js";
import type { TokenFilter } from "../../vault/ports.js";
import { SUMMARY_DETAIL_PREFIX, SUMMARY_TYPES, mergeAudit, nameFilters, summaryMatches, wantsSummaries } from "../audit-summaries.js";

type Stmt = BetterSqlite3.Statement<unknown[], unknown>;
type Row = Record<string, unknown>;

const { secretFromRow, versionFromRow, leaseFromRow, auditFromRow, tokenFromRow, leaseValues, auditValues, tokenValues } = rowMappers({
  list: (v) => JSON.parse(v as string) as string[],
  bool: (v) => v === 1,
  boolValue: (b) => (b ? 1 : 0),
});

const SECRET_COLS = "scope, name, kind, description, tags, current_version, created_at, updated_at";
const VERSION_COLS =
  "v.version, v.alg, v.key_id, v.wrapped_dek, v.ciphertext, v.size, v.created_at, v.created_by";
const SECRET_ID = "(SELECT id FROM secrets WHERE scope = ? AND name = ?)";
/** A lease row that is neither revoked nor used up, and not yet expired at the bound time. */
const LIVE = "done = 0 AND expires_at > ?";


/** The audit's agent and secret indexes lead with `seq >> RUN_SHIFT` (schema step 4 spells out 10). */
const RUN_SHIFT = 10;
const RUN_SIZE = 2 ** RUN_SHIFT;

/**
 * Revocation by selector, of the leases not yet revoked nor expired: used up ones too
 * (src/base/lease-state.ts isRevocable), so that what streams on their last use can be ended.
 */
const REVOKE_SET = "UPDATE leases SET revoked_at = ?, revoke_reason = ?, done = 1 WHERE ";
const REVOCABLE = "revoked_at IS NULL AND expires_at > ?";

/**
 * The fixed statements built from the column lists, made once: a statement's text is its cache key,
 * and a template evaluated per call would build and hash a new string every time.
 */
const SQL = {
  getSecret: `SELECT ${SECRET_COLS} FROM secrets WHERE scope = ? AND name = ?`,
  getVersion: `SELECT ${VERSION_COLS} FROM secret_versions v WHERE v.secret = ${SECRET_ID} AND v.version = ?`,
  getCurrentVersion: `SELECT ${VERSION_COLS} FROM secrets s JOIN secret_versions v ON v.secret = s.id AND v.version = s.current_version
       WHERE s.scope = ? AND s.name = ?`,
  listVersions: `SELECT ${VERSION_COLS} FROM secret_versions v WHERE v.secret = ${SECRET_ID} ORDER BY v.version`,
  versionsByKey: `SELECT s.scope, s.name, ${VERSION_COLS} FROM secret_versions v JOIN secrets s ON s.id = v.secret
       WHERE v.key_id = ? LIMIT ?`,
  deleteVersionsBelow: `DELETE FROM secret_versions WHERE secret = ${SECRET_ID} AND version < ?`,
  rewrapVersion: `UPDATE secret_versions SET key_id = ?, wrapped_dek = ? WHERE secret = ${SECRET_ID} AND version = ? AND key_id = ?`,
  getLease: `SELECT ${LEASE_COLS} FROM leases WHERE id = ?`,
  countLiveLeases: `SELECT count(*) FROM leases WHERE agent = ? AND ${LIVE}`,
  insertLease: `INSERT INTO leases (${LEASE_COLS}, done) VALUES (${sqlitePlaceholders(23)})`,
  revokeById: `${REVOKE_SET}id = ? AND ${REVOCABLE}`,
  revokeByAgent: `${REVOKE_SET}agent = ? AND ${REVOCABLE}`,
  revokeBySecret: `${REVOKE_SET}scope = ? AND name = ? AND ${REVOCABLE}`,
  revokeAll: `${REVOKE_SET}${REVOCABLE}`,
  insertAudit: `INSERT INTO audit (${AUDIT_COLS}) VALUES (${sqlitePlaceholders(17)})`,
  getToken: `SELECT ${TOKEN_COLS} FROM tokens WHERE id = ?`,
  listTokens: `SELECT ${TOKEN_COLS} FROM tokens ORDER BY created_at, id`,
  listTokensWhere: `SELECT ${TOKEN_COLS} FROM tokens
    WHERE (@liveAt IS NULL OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > @liveAt)))
      AND (@prefix IS NULL OR substr(name, 1, length(@prefix)) = @prefix)
    ORDER BY created_at, id`,
  insertToken: `INSERT INTO tokens (${TOKEN_COLS}) VALUES (${sqlitePlaceholders(11)})`,
} as const;

/** Statements and row mapping for one better-sqlite3 connection. */
export class Queries {
  private readonly cache = new Map<string, Stmt>();

  constructor(private readonly db: BetterSqlite3.Database) {}

  /** The cached prepared statement for `sql`. */
  stmt(sql: string): Stmt {
    let s = this.cache.get(sql);
    if (s === undefined) {
      s = this.db.prepare(sql) as Stmt;
      this.cache.set(sql, s);
    }
    return s;
  }

  /** The SQL text of every statement prepared so far (for EXPLAIN QUERY PLAN checks). */
  preparedSql(): string[] {
    return [...this.cache.keys()];
  }

  // ---- secrets and versions ----

  getSecret(ref: SecretRef): SecretRecord | null {
    const r = this.stmt(SQL.getSecret).get(ref.scope, ref.name);
    return r === undefined ? null : secretFromRow(r as Row);
  }

  listSecrets(filter: SecretFilter): SecretRecord[] {
    const where: string[] = [];
    const params: unknown[] = [];
    if (filter.scope !== undefined) {
      where.push("scope = ?");
      params.push(filter.scope);
    }
    if (filter.namePrefix !== undefined && filter.namePrefix !== "") {
      // The range bound lets the (scope, name) index help; substr() makes the match exact.
      where.push("name >= ? AND substr(name, 1, length(?)) = ?");
      params.push(filter.namePrefix, filter.namePrefix, filter.namePrefix);
    }
    if (filter.tag !== undefined) {
      where.push("EXISTS (SELECT 1 FROM json_each(secrets.tags) WHERE json_each.value = ?)");
      params.push(filter.tag);
    }
    if (filter.after !== undefined) {
      where.push("(scope > ? OR (scope = ? AND name > ?))");
      params.push(filter.after.scope, filter.after.scope, filter.after.name);
    }
    if (filter.limit !== undefined) params.push(filter.limit);
    const sql =
      `SELECT ${SECRET_COLS} FROM secrets` +
      (where.length > 0 ? ` WHERE ${where.join(" AND ")}` : "") +
      " ORDER BY scope, name" +
      (filter.limit !== undefined ? " LIMIT ?" : "");
    return (this.stmt(sql).all(...params) as Row[]).map(secretFromRow);
  }

  getVersion(ref: SecretRef, version: number): VersionRecord | null {
    const r = this.stmt(SQL.getVersion).get(
      ref.scope,
      ref.name,
      version,
    );
    return r === undefined ? null : versionFromRow(ref.scope, ref.name, r as Row);
  }

  getCurrentVersion(ref: SecretRef): VersionRecord | null {
    const r = this.stmt(SQL.getCurrentVersion).get(ref.scope, ref.name);
    return r === undefined ? null : versionFromRow(ref.scope, ref.name, r as Row);
  }

  listVersions(ref: SecretRef): VersionRecord[] {
    const rows = this.stmt(SQL.listVersions).all(ref.scope, ref.name) as Row[];
    return rows.map((r) => versionFromRow(ref.scope, ref.name, r));
  }

  keyIdsInUse(): string[] {
    // A loose index scan over secret_versions(key_id): one index seek per distinct key id.
    return this.stmt(
      `WITH RECURSIVE k(id) AS (
         SELECT min(key_id) FROM secret_versions
         UNION ALL
         SELECT (SELECT min(key_id) FROM secret_versions WHERE key_id > k.id) FROM k WHERE k.id IS NOT NULL
       ) SELECT id FROM k WHERE id IS NOT NULL`,
    )
      .pluck()
      .all() as string[];
  }

  versionsNotUnderKey(keyId: string, limit: number): VersionRecord[] {
    const out: VersionRecord[] = [];
    if (limit <= 0) return out;
    const byKey = this.stmt(SQL.versionsByKey);
    for (const k of this.keyIdsInUse()) {
      if (k === keyId) continue;
      for (const r of byKey.all(k, limit - out.length) as Row[]) out.push(versionFromRow(r.scope as string, r.name as string, r));
      if (out.length >= limit) break;
    }
    return out;
  }

  putSecret(rec: SecretRecord): void {
    this.stmt(
      `INSERT INTO secrets (scope, name, kind, description, tags, current_version, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (scope, name) DO UPDATE SET kind = excluded.kind, description = excluded.description,
         tags = excluded.tags, current_version = excluded.current_version, created_at = excluded.created_at,
         updated_at = excluded.updated_at`,
    ).run(rec.scope, rec.name, rec.kind, rec.description, JSON.stringify(rec.tags), rec.currentVersion, rec.createdAt, rec.updatedAt);
  }

  insertVersion(rec: VersionRecord): void {
    const id = this.stmt("SELECT id FROM secrets WHERE scope = ? AND name = ?").pluck().get(rec.scope, rec.name);
    if (id === undefined)
      throw new VaultError("internal", "cannot store a version of a secret that has no metadata row; write the secret first");
    const exists = this.stmt("SELECT 1 FROM secret_versions WHERE secret = ? AND version = ?").pluck().get(id, rec.version);
    if (exists !== undefined)
      throw new VaultError("internal", `version ${rec.version} of this secret already exists; version numbers are never reused`);
    this.stmt(
      `INSERT INTO secret_versions (secret, version, alg, key_id, wrapped_dek, ciphertext, size, created_at, created_by)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(id, rec.version, rec.alg, rec.keyId, rec.wrappedDek, rec.ciphertext, rec.size, rec.createdAt, rec.createdBy);
  }

  deleteVersionsBelow(ref: SecretRef, version: number): number {
    return this.stmt(SQL.deleteVersionsBelow).run(ref.scope, ref.name, version)
      .changes;
  }

  deleteSecret(ref: SecretRef): boolean {
    // secret_versions rows go with it (ON DELETE CASCADE).
    return this.stmt("DELETE FROM secrets WHERE scope = ? AND name = ?").run(ref.scope, ref.name).changes > 0;
  }

  rewrapVersion(ref: SecretRef, version: number, fromKeyId: string, toKeyId: string, wrappedDek: Uint8Array): boolean {
    return (
      this.stmt(SQL.rewrapVersion).run(toKeyId, wrappedDek, ref.scope, ref.name, version, fromKeyId).changes > 0
    );
  }

  // ---- leases ----

  getLease(id: string): LeaseRecord | null {
    const r = this.stmt(SQL.getLease).get(id);
    return r === undefined ? null : leaseFromRow(r as Row);
  }

  listLeases(filter: LeaseFilter): LeaseRecord[] {
    const where: string[] = [];
    const params: unknown[] = [];
    if (filter.id !== undefined) {
      where.push("id = ?");
      params.push(filter.id);
    }
    if (filter.agent !== undefined) {
      where.push("agent = ?");
      params.push(filter.agent);
    }
    if (filter.secret !== undefined) {
      where.push("scope = ? AND name = ?");
      params.push(filter.secret.scope, filter.secret.name);
    }
    if (filter.liveAt !== undefined) {
      where.push(LIVE);
      params.push(filter.liveAt);
    }
    if (filter.beforeId !== undefined) {
      where.push("id < ?");
      params.push(filter.beforeId);
    }
    const sql =
      `SELECT ${LEASE_COLS} FROM leases` +
      (where.length > 0 ? ` WHERE ${where.join(" AND ")}` : "") +
      " ORDER BY id DESC LIMIT ?";
    params.push(filter.limit === undefined ? -1 : Math.max(0, Math.floor(filter.limit)));
    return (this.stmt(sql).all(...params) as Row[]).map(leaseFromRow);
  }

  countLiveLeases(agent: string, now: number): number {
    return this.stmt(SQL.countLiveLeases).pluck().get(agent, now) as number;
  }

  insertLease(rec: LeaseRecord): void {
    this.stmt(SQL.insertLease).run(...leaseValues(rec));
  }

  useLease(id: string, now: number, cap: number | null = null): number | null {
    // One conditional update: the row changes only if the lease is live at `now`.
    const uses = this.stmt(
      `UPDATE leases SET uses = uses + 1,
         done = CASE WHEN max_uses IS NOT NULL AND uses + 1 >= max_uses THEN 1 ELSE done END
       WHERE id = ? AND revoked_at IS NULL AND expires_at > ? AND (max_uses IS NULL OR uses < max_uses)
         AND (? IS NULL OR uses < ?)
       RETURNING uses`,
    )
      .pluck()
      .get(id, now, cap, cap) as number | undefined;
    return uses ?? null;
  }

  renewLease(id: string, expiresAt: number, renewals: number): void {
    this.stmt("UPDATE leases SET expires_at = ?, renewals = ? WHERE id = ?").run(expiresAt, renewals, id);
  }

  revokeLeases(sel: RevokeSelector, now: number, reason: string): number {
    if ("id" in sel) return this.stmt(SQL.revokeById).run(now, reason, sel.id, now).changes;
    if ("agent" in sel) return this.stmt(SQL.revokeByAgent).run(now, reason, sel.agent, now).changes;
    if ("secret" in sel)
      return this.stmt(SQL.revokeBySecret).run(now, reason, sel.secret.scope, sel.secret.name, now).changes;
    if (sel.all === true) return this.stmt(SQL.revokeAll).run(now, reason, now).changes;
    throw new VaultError("invalid_request", "unknown revoke selector; use {id}, {agent}, {secret} or {all: true}");
  }

  deleteExpiredLeases(before: number, limit: number): number {
    if (limit <= 0) return 0;
    return this.stmt("DELETE FROM leases WHERE id IN (SELECT id FROM leases WHERE expires_at < ? LIMIT ?)").run(
      before,
      Math.floor(limit),
    ).changes;
  }

  // ---- audit ----

  queryAudit(filter: AuditFilter): AuditRecord[] {
    const limit = auditLimit(filter.limit);
    const where: string[] = [];
    const params: unknown[] = [];
    const eq = (col: string, v: unknown): void => {
      where.push(`${col} = ?`);
      params.push(v);
    };
    if (filter.leaseId !== undefined) eq("lease_id", filter.leaseId);
    if (filter.actorId !== undefined) eq("actor_id", filter.actorId);
    if (filter.types !== undefined && filter.types.length > 0) {
      where.push(`type IN (${filter.types.map(() => "?").join(", ")})`);
      params.push(...filter.types);
    }
    if (filter.since !== undefined) {
      where.push("time >= ?");
      params.push(filter.since);
    }
    if (filter.until !== undefined) {
      where.push("time < ?");
      params.push(filter.until);
    }
    if (filter.afterSeq !== undefined) {
      where.push("seq > ?");
      params.push(filter.afterSeq);
    }
    const order = filter.order === "desc" ? "DESC" : "ASC";
    // The filters all rows share, before the agent and secret ones (summaries match those otherwise).
    const common = { where: [...where], params: [...params] };
    if (filter.agent !== undefined) eq("agent", filter.agent);
    if (filter.secret !== undefined) eq("secret", filter.secret);
    if (filter.leaseId === undefined && (filter.agent !== undefined || filter.secret !== undefined)) {
      const direct = this.queryAuditByRun(where, params, order, limit, filter.afterSeq);
      if (!wantsSummaries(filter)) return direct;
      return mergeAudit(direct, this.auditSummaries(common.where, common.params, filter, order, limit), filter.order ?? "asc", limit);
    }
    const sql =
      `SELECT ${AUDIT_COLS} FROM audit` +
      (where.length > 0 ? ` WHERE ${where.join(" AND ")}` : "") +
      ` ORDER BY seq ${order} LIMIT ?`;
    params.push(limit);
    return (this.stmt(sql).all(...params) as Row[]).map(auditFromRow);
  }

  /**
   * The summaries of counted refusals that list the filter's agent or secret (src/store/audit-summaries.ts),
   * at most `limit`: candidates by type and a substring of their detail, in pages, kept when they match.
   */
  private auditSummaries(where: string[], params: unknown[], filter: AuditFilter, order: "ASC" | "DESC", limit: number): AuditRecord[] {
    const out: AuditRecord[] = [];
    if (limit === 0) return out;
    const names = nameFilters(filter);
    const stmt = this.stmt(
      `SELECT ${AUDIT_COLS} FROM audit WHERE type IN (${sqlitePlaceholders(SUMMARY_TYPES.length)}) AND substr(detail, 1, ${SUMMARY_DETAIL_PREFIX.length}) = ?` +
        names.map(() => " AND instr(detail, ?) > 0").join("") +
        where.map((w) => ` AND ${w}`).join("") +
        ` AND seq ${order === "ASC" ? ">" : "<"} ? ORDER BY seq ${order} LIMIT ?`,
    );
    const fixed = [...SUMMARY_TYPES, SUMMARY_DETAIL_PREFIX, ...names.map((n) => JSON.stringify(n.value).slice(1, -1)), ...params];
    let cursor = order === "ASC" ? Number.MIN_SAFE_INTEGER : Number.MAX_SAFE_INTEGER;
    for (;;) {
      const page = (stmt.all(...fixed, cursor, limit) as Row[]).map(auditFromRow);
      for (const r of page) if (out.length < limit && summaryMatches(r, filter)) out.push(r);
      if (page.length < limit || out.length >= limit) return out;
      cursor = page[page.length - 1]!.seq;
    }
  }

  /**
   * An audit query by agent or secret, whose indexes lead with the run (`seq >> 10`; schema 4): one
   * index seek per run of 1,024 seqs, in order, until `limit` rows are found.
   */
  private queryAuditByRun(where: string[], params: unknown[], order: "ASC" | "DESC", limit: number, afterSeq: number | undefined): AuditRecord[] {
    const out: AuditRecord[] = [];
    const stmt = this.stmt(`SELECT ${AUDIT_COLS} FROM audit WHERE seq >> ${RUN_SHIFT} = ? AND ${where.join(" AND ")} ORDER BY seq ${order} LIMIT ?`);
    // Two queries: each of min() and max() alone is one seek on the rowid; together they scan.
    const least = this.stmt("SELECT min(seq) FROM audit").pluck().get() as number | null;
    const most = this.stmt("SELECT max(seq) FROM audit").pluck().get() as number | null;
    if (limit === 0 || least === null || most === null) return out;
    const first = Math.max(least, (afterSeq ?? 0) + 1);
    if (first > most) return out;
    const lo = Math.floor(first / RUN_SIZE);
    const hi = Math.floor(most / RUN_SIZE);
    for (let i = 0; i <= hi - lo && out.length < limit; i++) {
      const run = order === "ASC" ? lo + i : hi - i;
      for (const r of stmt.all(run, ...params, limit - out.length) as Row[]) out.push(auditFromRow(r));
    }
    return out;
  }

  auditHead(): AuditHead | null {
    const r = this.stmt("SELECT seq, hash, key_id FROM audit ORDER BY seq DESC LIMIT 1").get() as Row | undefined;
    return r === undefined ? null : { seq: r.seq as number, hash: r.hash as Buffer, keyId: r.key_id as string | null };
  }

  /**
   * Appends an audit row; it must follow the head (no gaps). `head` is the head's seq when the caller
   * knows it from this same transaction (it read or wrote it); otherwise it is read here.
   */
  insertAudit(rec: AuditRecord, head?: number): void {
    const last = head ?? ((this.stmt("SELECT seq FROM audit ORDER BY seq DESC LIMIT 1").pluck().get() as number | undefined) ?? 0);
    if (rec.seq !== last + 1) throw auditGap(rec.seq, last);
    this.stmt(SQL.insertAudit).run(...auditValues(rec));
  }

  getCheckpoint(): AuditCheckpoint | null {
    const r = this.stmt("SELECT seq, hash, key_id, mac FROM audit_checkpoint WHERE id = 1").get() as Row | undefined;
    return r === undefined
      ? null
      : { seq: r.seq as number, hash: r.hash as Buffer, keyId: r.key_id as string, mac: r.mac as Buffer };
  }

  putCheckpoint(cp: AuditCheckpoint): void {
    this.stmt(
      `INSERT INTO audit_checkpoint (id, seq, hash, key_id, mac) VALUES (1, ?, ?, ?, ?)
       ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, key_id = excluded.key_id, mac = excluded.mac`,
    ).run(cp.seq, cp.hash, cp.keyId, cp.mac);
  }

  // ---- meta ----

  getMeta(key: string): string | null {
    return (this.stmt("SELECT value FROM meta WHERE key = ?").pluck().get(key) as string | undefined) ?? null;
  }

  /** Every metadata entry; `key` is TEXT with the default BINARY collation, so this is code point order. */
  listMeta(): { key: string; value: string }[] {
    return this.stmt("SELECT key, value FROM meta ORDER BY key").all() as { key: string; value: string }[];
  }

  setMeta(key: string, value: string): void {
    this.stmt("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value").run(
      key,
      value,
    );
  }

  // ---- tokens ----

  getToken(id: string): TokenRecord | null {
    const r = this.stmt(SQL.getToken).get(id) as Row | undefined;
    return r ? tokenFromRow(r) : null;
  }

  listTokens(f: TokenFilter = {}): TokenRecord[] {
    if (f.liveAt === undefined && f.namePrefix === undefined) return (this.stmt(SQL.listTokens).all() as Row[]).map(tokenFromRow);
    return (this.stmt(SQL.listTokensWhere).all({ liveAt: f.liveAt ?? null, prefix: f.namePrefix ?? null }) as Row[]).map(tokenFromRow);
  }

  insertToken(t: TokenRecord): void {
    this.stmt(SQL.insertToken).run(...tokenValues(t));
  }

  revokeToken(id: string, now: number): boolean {
    return this.stmt("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL").run(now, id).changes > 0;
  }

  setTokenMac(id: string, mac: Uint8Array): boolean {
    return this.stmt("UPDATE tokens SET mac = ? WHERE id = ?").run(Buffer.from(mac), id).changes > 0;
  }
}

/**
 * Turns a low-level SQLite failure into a VaultError with a plain message. `what` says what the store
 * was doing ("read a lease"). Messages never include bound values.
 */
export function sqliteError(e: unknown, what: string): VaultError {
  if (e instanceof VaultError) return e;
  const code = typeof (e as { code?: unknown })?.code === "string" ? (e as { code: string }).code : "";
  const base = code.split("_").slice(0, 2).join("_"); // SQLITE_IOERR_WRITE -> SQLITE_IOERR
  let msg: string;
  let vcode: "unavailable" | "internal" = "unavailable";
  switch (base) {
    case "SQLITE_BUSY":
    case "SQLITE_LOCKED":
      msg = "the vault database is locked by another process; try again, or stop the other lessor process";
      break;
    case "SQLITE_FULL":
      msg = "the disk holding the vault database is full; free some space and try again";
      break;
    case "SQLITE_IOERR":
      msg = "the vault database could not be read or written (I/O error); check the disk and try again";
      break;
    case "SQLITE_READONLY":
    case "SQLITE_PERM":
    case "SQLITE_CANTOPEN":
    case "SQLITE_AUTH":
      msg = "the vault database cannot be opened for writing; check the file and directory permissions";
      break;
    case "SQLITE_CORRUPT":
    case "SQLITE_NOTADB":
      msg = "the vault database file is damaged or is not a lessor database; restore it from a backup";
      break;
    case "SQLITE_CONSTRAINT":
      vcode = "internal";
      msg = "a row with the same key already exists or a row it points at is missing";
      break;
    default:
      vcode = "internal";
      msg = code !== "" ? `unexpected database error (${code})` : "unexpected database error";
  }
  return new VaultError(vcode, `could not ${what}: ${msg}`, { cause: e });
}
