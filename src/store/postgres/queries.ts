/**
 * The SQL behind the PostgreSQL store and its row mapping. Reads run through an {@link Exec} (the
 * pool for committed reads, the transaction's connection inside one); writes are built as
 * {@link Stmt}s so that the transaction can send the ones whose result nobody waits for without
 * waiting (src/store/postgres/postgres-store.ts). Every value is a bound parameter. Built-in functions
 * and operators are called with arguments of exactly their types (or by their pg_catalog names), so
 * that no same-named object elsewhere on the search_path is a better match (./catalog.ts).
 */
import { VaultError } from "../../base/errors.js";
import { auditLimit } from "../semantics.js";
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
import { AUDIT_COLS, LEASE_COLS, pgPlaceholders, rowMappers, TOKEN_COLS } from "../rows.js";
import type { TokenFilter } from "../../vault/ports.js";
import { SUMMARY_DETAIL_PREFIX, SUMMARY_TYPES, mergeAudit, nameFilters, summaryMatches, wantsSummaries } from "../audit-summaries.js";

/** A row as node-postgres returns it (int8 parsed to number by the pool's type parser). */
export type Row = Record<string, unknown>;

const { secretFromRow, versionFromRow, leaseFromRow, auditFromRow, tokenFromRow, leaseValues, auditValues, tokenValues } = rowMappers({
  list: (v) => v as string[],
  bool: (v) => v as boolean,
  boolValue: (b) => b,
});

/** One statement: what it does (for errors), its text and its bound values. */
export interface Stmt {
  what: string;
  text: string;
  values: unknown[];
}

/** Most statement texts given a name; past it, statements go unnamed (parsed and planned each time). */
const MAX_NAMED = 256;
const names = new Map<string, string>();

/**
 * `s` as node-postgres takes it. A statement with values gets a name, one per distinct text in this
 * process, so that each connection parses and plans it once and then only binds and executes it (the
 * server's work per statement, on the hot path, about halves). Every connection of a store has one
 * search_path for its life (set in the startup packet), so a named statement always means the same
 * tables on it.
 */
export function queryConfig(s: Stmt): { text: string; values?: unknown[]; name?: string } {
  if (s.values.length === 0) return { text: s.text };
  let name = names.get(s.text);
  if (name === undefined) {
    if (names.size >= MAX_NAMED) return { text: s.text, values: s.values };
    name = `lessor_${names.size + 1}`;
    names.set(s.text, name);
  }
  return { name, text: s.text, values: s.values };
}

/** Runs statements on some connection. */
export interface Exec {
  rows(s: Stmt): Promise<Row[]>;
  /** The number of rows the statement changed. */
  count(s: Stmt): Promise<number>;
}

const SECRET_COLS = "scope, name, kind, description, tags, current_version, created_at, updated_at";
const VERSION_COLS = "v.version, v.alg, v.key_id, v.wrapped_dek, v.ciphertext, v.size, v.created_at, v.created_by";
const SECRET_ID = "(SELECT id FROM secrets WHERE scope = $1 AND name = $2)";

const st = (what: string, text: string, values: unknown[]): Stmt => ({ what, text, values });
const one = async (x: Exec, s: Stmt): Promise<Row | undefined> => (await x.rows(s))[0];

// ---- reads ----

export async function getSecret(x: Exec, ref: SecretRef): Promise<SecretRecord | null> {
  const r = await one(x, st("read a secret", `SELECT ${SECRET_COLS} FROM secrets WHERE scope = $1 AND name = $2`, [ref.scope, ref.name]));
  return r === undefined ? null : secretFromRow(r);
}

export async function listSecrets(x: Exec, filter: SecretFilter): Promise<SecretRecord[]> {
  const where: string[] = [];
  const values: unknown[] = [];
  const bind = (v: unknown): string => {
    values.push(v);
    return `$${values.length}`;
  };
  if (filter.scope !== undefined) where.push(`scope = ${bind(filter.scope)}`);
  if (filter.namePrefix !== undefined && filter.namePrefix !== "") {
    // A range bound the (scope, name) index can use, and an exact match: no LIKE, so "_" and "%" are literal.
    const p = bind(filter.namePrefix);
    where.push(`name >= ${p} AND pg_catalog.left(name, pg_catalog.length(${p})) = ${p}`);
  }
  // Typed: with an untyped parameter, an operator ?(jsonb, jsonb) anywhere on the search_path would be an exact match.
  if (filter.tag !== undefined) where.push(`tags ? ${bind(filter.tag)}::text`);
  if (filter.after !== undefined) {
    const s = bind(filter.after.scope);
    where.push(`(scope > ${s} OR (scope = ${s} AND name > ${bind(filter.after.name)}))`);
  }
  const limit = filter.limit !== undefined ? ` LIMIT ${bind(filter.limit)}` : "";
  const text = `SELECT ${SECRET_COLS} FROM secrets${where.length > 0 ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY scope, name${limit}`;
  return (await x.rows(st("list secrets", text, values))).map(secretFromRow);
}

export async function getVersion(x: Exec, ref: SecretRef, version: number): Promise<VersionRecord | null> {
  const r = await one(
    x,
    st("read a secret version", `SELECT ${VERSION_COLS} FROM secret_versions v WHERE v.secret = ${SECRET_ID} AND v.version = $3`, [ref.scope, ref.name, version]),
  );
  return r === undefined ? null : versionFromRow(ref.scope, ref.name, r);
}

export async function getCurrentVersion(x: Exec, ref: SecretRef): Promise<VersionRecord | null> {
  const r = await one(
    x,
    st(
      "read a secret version",
      `SELECT ${VERSION_COLS} FROM secrets s JOIN secret_versions v ON v.secret = s.id AND v.version = s.current_version WHERE s.scope = $1 AND s.name = $2`,
      [ref.scope, ref.name],
    ),
  );
  return r === undefined ? null : versionFromRow(ref.scope, ref.name, r);
}

export async function listVersions(x: Exec, ref: SecretRef): Promise<VersionRecord[]> {
  const rows = await x.rows(
    st("list secret versions", `SELECT ${VERSION_COLS} FROM secret_versions v WHERE v.secret = ${SECRET_ID} ORDER BY v.version`, [ref.scope, ref.name]),
  );
  return rows.map((r) => versionFromRow(ref.scope, ref.name, r));
}

export async function versionsNotUnderKey(x: Exec, keyId: string, limit: number): Promise<VersionRecord[]> {
  if (limit <= 0) return [];
  const rows = await x.rows(
    st(
      "list versions to re-wrap",
      `SELECT s.scope, s.name, ${VERSION_COLS} FROM secret_versions v JOIN secrets s ON s.id = v.secret WHERE v.key_id <> $1 LIMIT $2`,
      [keyId, Math.floor(limit)],
    ),
  );
  return rows.map((r) => versionFromRow(r.scope as string, r.name as string, r));
}

export async function keyIdsInUse(x: Exec): Promise<string[]> {
  const rows = await x.rows(st("list key ids in use", "SELECT DISTINCT key_id FROM secret_versions ORDER BY key_id", []));
  return rows.map((r) => r.key_id as string);
}

export async function getLease(x: Exec, id: string): Promise<LeaseRecord | null> {
  const r = await one(x, st("read a lease", `SELECT ${LEASE_COLS} FROM leases WHERE id = $1`, [id]));
  return r === undefined ? null : leaseFromRow(r);
}

export async function listLeases(x: Exec, filter: LeaseFilter): Promise<LeaseRecord[]> {
  const where: string[] = [];
  const values: unknown[] = [];
  const bind = (v: unknown): string => {
    values.push(v);
    return `$${values.length}`;
  };
  if (filter.id !== undefined) where.push(`id = ${bind(filter.id)}`);
  if (filter.agent !== undefined) where.push(`agent = ${bind(filter.agent)}`);
  if (filter.secret !== undefined) where.push(`scope = ${bind(filter.secret.scope)} AND name = ${bind(filter.secret.name)}`);
  if (filter.liveAt !== undefined) where.push(`NOT done AND expires_at > ${bind(filter.liveAt)}`);
  if (filter.beforeId !== undefined) where.push(`id < ${bind(filter.beforeId)}`);
  const limit = filter.limit === undefined ? "" : ` LIMIT ${bind(Math.max(0, Math.floor(filter.limit)))}`;
  const text = `SELECT ${LEASE_COLS} FROM leases${where.length > 0 ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY id DESC${limit}`;
  return (await x.rows(st("list leases", text, values))).map(leaseFromRow);
}

export async function countLiveLeases(x: Exec, agent: string, now: number): Promise<number> {
  const r = await one(x, st("count live leases", "SELECT count(*) AS n FROM leases WHERE agent = $1 AND NOT done AND expires_at > $2", [agent, now]));
  return Number(r?.n ?? 0);
}

export async function queryAudit(x: Exec, filter: AuditFilter): Promise<AuditRecord[]> {
  const limit = auditLimit(filter.limit);
  const where: string[] = [];
  const values: unknown[] = [];
  const bind = (v: unknown): string => {
    values.push(v);
    return `$${values.length}`;
  };
  if (filter.leaseId !== undefined) where.push(`lease_id = ${bind(filter.leaseId)}`);
  if (filter.actorId !== undefined) where.push(`actor_id = ${bind(filter.actorId)}`);
  if (filter.types !== undefined && filter.types.length > 0) where.push(`type = ANY(${bind(filter.types)}::text[])`);
  if (filter.since !== undefined) where.push(`time >= ${bind(filter.since)}`);
  if (filter.until !== undefined) where.push(`time < ${bind(filter.until)}`);
  if (filter.afterSeq !== undefined) where.push(`seq > ${bind(filter.afterSeq)}`);
  const order = filter.order === "desc" ? "DESC" : "ASC";
  // The filters all rows share, before the agent and secret ones (summaries match those otherwise).
  const common = { where: [...where], values: [...values] };
  if (filter.agent !== undefined) where.push(`agent = ${bind(filter.agent)}`);
  if (filter.secret !== undefined) where.push(`secret = ${bind(filter.secret)}`);
  const text = `SELECT ${AUDIT_COLS} FROM audit${where.length > 0 ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY seq ${order} LIMIT ${bind(limit)}`;
  const direct = (await x.rows(st("query the audit trail", text, values))).map(auditFromRow);
  if (!wantsSummaries(filter)) return direct;
  return mergeAudit(direct, await auditSummaries(x, common.where, common.values, filter, order, limit), filter.order ?? "asc", limit);
}

/**
 * The summaries of counted refusals that list the filter's agent or secret (src/store/audit-summaries.ts),
 * at most `limit`: candidates by type and a substring of their detail, in pages, kept when they match.
 * `where` binds `values` as $1…; the detail is text, matched without a JSON cast (a row that is not
 * JSON is one the vault did not write, and must not fail the query).
 */
async function auditSummaries(x: Exec, where: string[], values: unknown[], filter: AuditFilter, order: "ASC" | "DESC", limit: number): Promise<AuditRecord[]> {
  const out: AuditRecord[] = [];
  if (limit === 0) return out;
  const vals = [...values];
  const bind = (v: unknown): string => {
    vals.push(v);
    return `$${vals.length}`;
  };
  const cond = [
    ...where,
    `type = ANY(${bind(SUMMARY_TYPES)}::text[])`,
    `starts_with(detail, ${bind(SUMMARY_DETAIL_PREFIX)})`,
    ...nameFilters(filter).map((n) => `strpos(detail, ${bind(JSON.stringify(n.value).slice(1, -1))}) > 0`),
  ];
  const cursorAt = vals.length;
  const text = `SELECT ${AUDIT_COLS} FROM audit WHERE ${cond.join(" AND ")} AND seq ${order === "ASC" ? ">" : "<"} ${bind(0)} ORDER BY seq ${order} LIMIT ${bind(limit)}`;
  let cursor = order === "ASC" ? Number.MIN_SAFE_INTEGER : Number.MAX_SAFE_INTEGER;
  for (;;) {
    vals[cursorAt] = cursor;
    const page = (await x.rows(st("query the audit trail", text, [...vals]))).map(auditFromRow);
    for (const r of page) if (out.length < limit && summaryMatches(r, filter)) out.push(r);
    if (page.length < limit || out.length >= limit) return out;
    cursor = page[page.length - 1]!.seq;
  }
}

export async function auditHead(x: Exec): Promise<AuditHead | null> {
  const r = await one(x, st("read the audit head", "SELECT seq, hash, key_id FROM audit ORDER BY seq DESC LIMIT 1", []));
  return r === undefined ? null : { seq: r.seq as number, hash: r.hash as Buffer, keyId: (r.key_id as string | null) ?? null };
}

export async function getCheckpoint(x: Exec): Promise<AuditCheckpoint | null> {
  const r = await one(x, st("read the audit checkpoint", "SELECT seq, hash, key_id, mac FROM audit_checkpoint WHERE id = 1", []));
  return r === undefined ? null : { seq: r.seq as number, hash: r.hash as Buffer, keyId: r.key_id as string, mac: r.mac as Buffer };
}

export async function getMeta(x: Exec, key: string): Promise<string | null> {
  const r = await one(x, st("read metadata", "SELECT value FROM meta WHERE key = $1", [key]));
  return r === undefined ? null : (r.value as string);
}

/** Every metadata entry, in code point order of the key (COLLATE "C", whatever the database's locale). */
export async function listMeta(x: Exec): Promise<{ key: string; value: string }[]> {
  const rows = await x.rows(st("list metadata", 'SELECT key, value FROM meta ORDER BY key COLLATE "C"', []));
  return rows.map((r) => ({ key: r.key as string, value: r.value as string }));
}

export async function getToken(x: Exec, id: string): Promise<TokenRecord | null> {
  const r = await one(x, st("read a token", `SELECT ${TOKEN_COLS} FROM tokens WHERE id = $1`, [id]));
  return r === undefined ? null : tokenFromRow(r);
}

export async function listTokens(x: Exec, f: TokenFilter = {}): Promise<TokenRecord[]> {
  if (f.liveAt === undefined && f.namePrefix === undefined)
    return (await x.rows(st("list tokens", `SELECT ${TOKEN_COLS} FROM tokens ORDER BY created_at, id`, []))).map(tokenFromRow);
  const where = `($1::bigint IS NULL OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1::bigint)))
      AND ($2::text IS NULL OR left(name, length($2::text)) = $2::text)`;
  return (await x.rows(st("list tokens", `SELECT ${TOKEN_COLS} FROM tokens WHERE ${where} ORDER BY created_at, id`, [f.liveAt ?? null, f.namePrefix ?? null]))).map(tokenFromRow);
}

// ---- writes that return nothing (a transaction may send them without waiting) ----

export function putSecret(rec: SecretRecord): Stmt {
  return st(
    "write a secret",
    `INSERT INTO secrets (${SECRET_COLS}) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)
     ON CONFLICT (scope, name) DO UPDATE SET kind = excluded.kind, description = excluded.description, tags = excluded.tags,
       current_version = excluded.current_version, created_at = excluded.created_at, updated_at = excluded.updated_at`,
    [rec.scope, rec.name, rec.kind, rec.description, JSON.stringify(rec.tags), rec.currentVersion, rec.createdAt, rec.updatedAt],
  );
}

/** Fails (NOT NULL) when the secret row is missing, (primary key) when the version exists. */
export function insertVersion(rec: VersionRecord): Stmt {
  return st(
    "write a secret version (it must be new, and its secret's row written first)",
    `INSERT INTO secret_versions (secret, version, alg, key_id, wrapped_dek, ciphertext, size, created_at, created_by)
     VALUES (${SECRET_ID}, $3, $4, $5, $6, $7, $8, $9, $10)`,
    [rec.scope, rec.name, rec.version, rec.alg, rec.keyId, Buffer.from(rec.wrappedDek), Buffer.from(rec.ciphertext), rec.size, rec.createdAt, rec.createdBy],
  );
}

export function insertLease(rec: LeaseRecord): Stmt {
  return st("write a lease (its id must be new)", `INSERT INTO leases (${LEASE_COLS}, done) VALUES (${pgPlaceholders(23)})`, leaseValues(rec));
}

export function renewLease(id: string, expiresAt: number, renewals: number): Stmt {
  return st("renew a lease", "UPDATE leases SET expires_at = $2, renewals = $3 WHERE id = $1", [id, expiresAt, renewals]);
}

/** The database's trigger refuses a row that does not follow the head (schema.ts). */
/** Row counts of the multi-row audit INSERTs (each a prepared statement of its own). */
const AUDIT_CHUNKS = [32, 8, 1] as const;
const auditInsertText = new Map<number, string>();

/**
 * Audit rows appended in order, as few multi-row INSERTs as {@link AUDIT_CHUNKS} allow (32 rows cost
 * the server about a tenth less as one statement than as 32, and the client one query, not 32). The
 * gap trigger runs per row and sees the rows before it in the same statement.
 */
export function insertAuditRows(recs: readonly AuditRecord[]): Stmt[] {
  const out: Stmt[] = [];
  let i = 0;
  while (i < recs.length) {
    const n = AUDIT_CHUNKS.find((c) => c <= recs.length - i)!;
    let text = auditInsertText.get(n);
    if (text === undefined) {
      const rows = Array.from({ length: n }, (_, r) => `(${Array.from({ length: 17 }, (_, k) => `$${r * 17 + k + 1}`).join(", ")})`);
      text = `INSERT INTO audit (${AUDIT_COLS}) VALUES ${rows.join(", ")}`;
      auditInsertText.set(n, text);
    }
    const values: unknown[] = [];
    for (let r = 0; r < n; r++) values.push(...auditValues(recs[i + r]!));
    out.push(st(n === 1 ? "append to the audit trail" : `append ${n} rows to the audit trail`, text, values));
    i += n;
  }
  return out;
}

export function putCheckpoint(cp: AuditCheckpoint): Stmt {
  return st(
    "write the audit checkpoint",
    `INSERT INTO audit_checkpoint (id, seq, hash, key_id, mac) VALUES (1, $1, $2, $3, $4)
     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, key_id = excluded.key_id, mac = excluded.mac`,
    [cp.seq, Buffer.from(cp.hash), cp.keyId, Buffer.from(cp.mac)],
  );
}

export function setMeta(key: string, value: string): Stmt {
  return st("write metadata", "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", [key, value]);
}

export function insertToken(t: TokenRecord): Stmt {
  return st("write a token (its id must be new)", `INSERT INTO tokens (${TOKEN_COLS}) VALUES (${pgPlaceholders(11)})`, tokenValues(t));
}

// ---- writes whose result the caller needs ----

export function deleteVersionsBelow(ref: SecretRef, version: number): Stmt {
  return st("delete old secret versions", `DELETE FROM secret_versions WHERE secret = ${SECRET_ID} AND version < $3`, [ref.scope, ref.name, version]);
}

export function deleteSecret(ref: SecretRef): Stmt {
  // secret_versions rows go with it (ON DELETE CASCADE).
  return st("delete a secret", "DELETE FROM secrets WHERE scope = $1 AND name = $2", [ref.scope, ref.name]);
}

export function rewrapVersion(ref: SecretRef, version: number, fromKeyId: string, toKeyId: string, wrappedDek: Uint8Array): Stmt {
  return st(
    "re-wrap a secret version",
    `UPDATE secret_versions SET key_id = $4, wrapped_dek = $5 WHERE secret = ${SECRET_ID} AND version = $3 AND key_id = $6`,
    [ref.scope, ref.name, version, toKeyId, Buffer.from(wrappedDek), fromKeyId],
  );
}

/**
 * One use, counted atomically by the database: the row changes only if the lease is live at `now`,
 * so two instances racing for the last use cannot both win (the second UPDATE re-reads the row the
 * first committed, under PostgreSQL's row lock).
 */
export async function useLease(x: Exec, id: string, now: number, cap: number | null): Promise<number | null> {
  const r = await one(
    x,
    st(
      "count a lease use",
      `UPDATE leases SET uses = uses + 1, done = (max_uses IS NOT NULL AND uses + 1 >= max_uses)
       WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2 AND (max_uses IS NULL OR uses < max_uses)
         AND ($3::integer IS NULL OR uses < $3::integer)
       RETURNING uses`,
      [id, now, cap],
    ),
  );
  return r === undefined ? null : (r.uses as number);
}

/** Revokes the selected leases not yet revoked nor expired, used up ones too (src/base/lease-state.ts isRevocable). */
export function revokeLeases(sel: RevokeSelector, now: number, reason: string): Stmt {
  const set = "UPDATE leases SET revoked_at = $1, revoke_reason = $2, done = true WHERE revoked_at IS NULL AND expires_at > $1";
  const what = "revoke leases";
  if ("id" in sel) return st(what, `${set} AND id = $3`, [now, reason, sel.id]);
  if ("agent" in sel) return st(what, `${set} AND agent = $3`, [now, reason, sel.agent]);
  if ("secret" in sel) return st(what, `${set} AND scope = $3 AND name = $4`, [now, reason, sel.secret.scope, sel.secret.name]);
  if (sel.all === true) return st(what, set, [now, reason]);
  throw new VaultError("invalid_request", "unknown revoke selector; use {id}, {agent}, {secret} or {all: true}");
}

export function deleteExpiredLeases(before: number, limit: number): Stmt {
  return st(
    "delete expired leases",
    "DELETE FROM leases WHERE id IN (SELECT id FROM leases WHERE expires_at < $1 LIMIT $2)",
    [before, Math.max(0, Math.floor(limit))],
  );
}

export function revokeToken(id: string, now: number): Stmt {
  return st("revoke a token", "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", [id, now]);
}

export function setTokenMac(id: string, mac: Uint8Array): Stmt {
  return st("write a token's MAC", "UPDATE tokens SET mac = $2 WHERE id = $1", [id, Buffer.from(mac)]);
}

// ---- rows ----

