/**
 * Rows of the SQL stores (SQLite, PostgreSQL) turned into the core's records, and the core's records
 * into the values an INSERT binds. The two stores have the same columns, listed here once; they
 * differ only in how a list column (`tags`: JSON text in SQLite, a text[] in PostgreSQL) and a
 * boolean column (0/1 in SQLite, a boolean in PostgreSQL) are stored.
 */
import type { AuditRecord, LeaseRecord, SecretKind, SecretRecord, TokenRecord, VersionRecord } from "../base/types.js";

/** A row as a SQL driver returns it: column name → value. */
export type Row = Record<string, unknown>;

/** The lease columns, in the order {@link rowMappers}' `leaseValues` gives them (an INSERT adds `done`). */
export const LEASE_COLS =
  "id, agent, scope, name, domains, any_domain, methods, paths, rule, issued_at, expires_at, max_expires_at, " +
  "uses, max_uses, renewals, max_renewals, renewable, revoked_at, revoke_reason, issued_by, bound, proxy_only";
/** The audit columns, in the order of `auditValues`. */
export const AUDIT_COLS =
  "seq, id, time, type, actor_id, actor_role, transport, agent, secret, lease_id, domain, outcome, reason, detail, prev_hash, hash, key_id";
/** The token columns, in the order of `tokenValues`. */
export const TOKEN_COLS = "id, name, role, agent, act_for, created_at, expires_at, revoked_at, created_by, hash, mac";

/** How one store's driver returns, and takes, the columns that differ between the stores. */
export interface ColumnCodec {
  /** `tags`. */
  list(v: unknown): string[];
  bool(v: unknown): boolean;
  /** A boolean as the driver binds it. */
  boolValue(b: boolean): unknown;
}

/** The row mappers for one store. */
export function rowMappers(c: ColumnCodec) {
  return {
    secretFromRow(r: Row): SecretRecord {
      return {
        scope: r.scope as string,
        name: r.name as string,
        kind: r.kind as SecretKind,
        description: r.description as string,
        tags: c.list(r.tags),
        currentVersion: r.current_version as number,
        createdAt: r.created_at as number,
        updatedAt: r.updated_at as number,
      };
    },
    versionFromRow(scope: string, name: string, r: Row): VersionRecord {
      return {
        scope,
        name,
        version: r.version as number,
        alg: r.alg as string,
        keyId: r.key_id as string,
        wrappedDek: r.wrapped_dek as Buffer,
        ciphertext: r.ciphertext as Buffer,
        size: r.size as number,
        createdAt: r.created_at as number,
        createdBy: r.created_by as string,
      };
    },
    leaseFromRow(r: Row): LeaseRecord {
      return {
        id: r.id as string,
        agent: r.agent as string,
        scope: r.scope as string,
        name: r.name as string,
        domains: JSON.parse(r.domains as string) as string[],
        anyDomain: c.bool(r.any_domain),
        methods: r.methods === null ? null : (JSON.parse(r.methods as string) as string[]),
        paths: r.paths === null ? null : (JSON.parse(r.paths as string) as string[]),
        rule: r.rule as string,
        issuedAt: r.issued_at as number,
        expiresAt: r.expires_at as number,
        maxExpiresAt: r.max_expires_at as number,
        uses: r.uses as number,
        maxUses: r.max_uses as number | null,
        renewals: r.renewals as number,
        maxRenewals: r.max_renewals as number | null,
        renewable: c.bool(r.renewable),
        revokedAt: r.revoked_at as number | null,
        revokeReason: r.revoke_reason as string | null,
        issuedBy: r.issued_by as string,
        bound: c.bool(r.bound),
        proxyOnly: c.bool(r.proxy_only),
      };
    },
    auditFromRow(r: Row): AuditRecord {
      // A damaged row (a NULL or a value of another type where the schema says NOT NULL, read from a
      // corrupted page) reads as empty fields: the chain check then reports the event as altered, and
      // listings print it, instead of a crash further on.
      const text = (v: unknown): string => (typeof v === "string" ? v : "");
      const textOrNull = (v: unknown): string | null => (typeof v === "string" ? v : null);
      const num = (v: unknown): number => (typeof v === "number" ? v : typeof v === "bigint" ? Number(v) : 0);
      const bytes = (v: unknown): Uint8Array => (v instanceof Uint8Array ? v : new Uint8Array(0));
      return {
        seq: num(r.seq),
        id: text(r.id),
        time: num(r.time),
        type: text(r.type),
        actorId: text(r.actor_id),
        actorRole: text(r.actor_role),
        transport: text(r.transport),
        agent: textOrNull(r.agent),
        secret: textOrNull(r.secret),
        leaseId: textOrNull(r.lease_id),
        domain: textOrNull(r.domain),
        outcome: text(r.outcome),
        reason: textOrNull(r.reason),
        detail: textOrNull(r.detail),
        prevHash: bytes(r.prev_hash),
        hash: bytes(r.hash),
        keyId: textOrNull(r.key_id),
      };
    },
    tokenFromRow(r: Row): TokenRecord {
      return {
        id: r.id as string,
        name: r.name as string,
        role: r.role as TokenRecord["role"],
        agent: (r.agent as string | null) ?? null,
        actFor: r.act_for === null ? null : (JSON.parse(r.act_for as string) as string[]),
        createdAt: r.created_at as number,
        expiresAt: (r.expires_at as number | null) ?? null,
        revokedAt: (r.revoked_at as number | null) ?? null,
        createdBy: r.created_by as string,
        hash: r.hash as Buffer,
        mac: (r.mac as Buffer | null) ?? null,
      };
    },
    /** A lease's values in {@link LEASE_COLS} order, then `done` (revoked or used up: never live again). */
    leaseValues(rec: LeaseRecord): unknown[] {
      const done = rec.revokedAt !== null || (rec.maxUses !== null && rec.uses >= rec.maxUses);
      return [
        rec.id,
        rec.agent,
        rec.scope,
        rec.name,
        JSON.stringify(rec.domains),
        c.boolValue(rec.anyDomain),
        rec.methods === null ? null : JSON.stringify(rec.methods),
        rec.paths === null ? null : JSON.stringify(rec.paths),
        rec.rule,
        rec.issuedAt,
        rec.expiresAt,
        rec.maxExpiresAt,
        rec.uses,
        rec.maxUses,
        rec.renewals,
        rec.maxRenewals,
        c.boolValue(rec.renewable),
        rec.revokedAt,
        rec.revokeReason,
        rec.issuedBy,
        c.boolValue(rec.bound),
        c.boolValue(rec.proxyOnly),
        c.boolValue(done),
      ];
    },
    /** An audit record's values in {@link AUDIT_COLS} order. */
    auditValues(rec: AuditRecord): unknown[] {
      return [
        rec.seq,
        rec.id,
        rec.time,
        rec.type,
        rec.actorId,
        rec.actorRole,
        rec.transport,
        rec.agent,
        rec.secret,
        rec.leaseId,
        rec.domain,
        rec.outcome,
        rec.reason,
        rec.detail,
        Buffer.from(rec.prevHash),
        Buffer.from(rec.hash),
        rec.keyId ?? null,
      ];
    },
    /** A token's values in {@link TOKEN_COLS} order (its hash, never the token). */
    tokenValues(t: TokenRecord): unknown[] {
      return [t.id, t.name, t.role, t.agent, t.actFor === null ? null : JSON.stringify(t.actFor), t.createdAt, t.expiresAt, t.revokedAt, t.createdBy, Buffer.from(t.hash), t.mac === null ? null : Buffer.from(t.mac)];
    },
  };
}

/** `n` placeholders in SQLite's form: `?, ?, …`. */
export const sqlitePlaceholders = (n: number): string => Array.from({ length: n }, () => "?").join(", ");

/** `n` placeholders in PostgreSQL's form: `$1, $2, …`. */
export const pgPlaceholders = (n: number): string => Array.from({ length: n }, (_, i) => `$${i + 1}`).join(", ");
