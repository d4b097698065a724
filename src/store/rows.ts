/**
 * Rows of the SQL stores (SQLite, PostgreSQL) turned into the core's records. The two stores have the
 * same columns; they differ only in how a list column (`tags`: JSON text in SQLite, a text[] in
 * PostgreSQL) and a boolean column (0/1 in SQLite, a boolean in PostgreSQL) come back.
 */
import type { AuditRecord, LeaseRecord, SecretKind, SecretRecord, TokenRecord, VersionRecord } from "../base/types.js";

/** A row as a SQL driver returns it: column name → value. */
export type Row = Record<string, unknown>;

/** How one store's driver returns the columns that differ between the stores. */
export interface ColumnCodec {
  /** `tags`. */
  list(v: unknown): string[];
  bool(v: unknown): boolean;
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
      };
    },
    auditFromRow(r: Row): AuditRecord {
      return {
        seq: r.seq as number,
        id: r.id as string,
        time: r.time as number,
        type: r.type as string,
        actorId: r.actor_id as string,
        actorRole: r.actor_role as string,
        transport: r.transport as string,
        agent: r.agent as string | null,
        secret: r.secret as string | null,
        leaseId: r.lease_id as string | null,
        domain: r.domain as string | null,
        outcome: r.outcome as string,
        reason: r.reason as string | null,
        detail: r.detail as string | null,
        prevHash: r.prev_hash as Buffer,
        hash: r.hash as Buffer,
        keyId: (r.key_id as string | null) ?? null,
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
      };
    },
  };
}
