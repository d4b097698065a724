/**
 * The reads the audit code needs from a store: a subset of the core's StoreReader port
 * (src/vault/ports.ts), declared here so that audit depends on the base module only, not on the vault.
 */
import type { AuditCheckpoint, AuditFilter, AuditRecord } from "../base/types.js";

/** Reads of the audit trail, its checkpoint and metadata (every StoreReader is one). */
export interface AuditReader {
  queryAudit(filter: AuditFilter): Promise<AuditRecord[]>;
  getCheckpoint(): Promise<AuditCheckpoint | null>;
  getMeta(key: string): Promise<string | null>;
  /** Distinct master key ids that stored versions point at. */
  keyIdsInUse(): Promise<string[]>;
}
