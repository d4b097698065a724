/**
 * lessor's embedded API. See README.md and docs/.
 */
export { Vault, VaultSession, EMBEDDED_ADMIN, type VaultOptions, type VaultStatus } from "./vault/vault.js";
export { VaultError, ERROR_CODES, isVaultError, wireCode, type ErrorCode, type WireErrorCode } from "./base/errors.js";
export type * from "./base/types.js";
export type { StoreSecretParams, SecretMeta, VersionMeta } from "./vault/secrets.js";
export { leaseState, type LeaseRequest, type AccessTarget, type AccessResult, type LeaseState } from "./vault/leases.js";
export type { RotationResult } from "./vault/rotation.js";
export type { Limits } from "./vault/context.js";
export { parsePolicy, emptyPolicy, decide, explain, type Policy, type Rule, type Decision, type Explanation } from "./vault/policy.js";
export { matchDomain, parseDomainPattern, normalizeHost } from "./vault/domain.js";
export { SecretBytes } from "./crypto/secret-bytes.js";
export type { Alg } from "./crypto/aead.js";
export type { Keyring, MasterKey } from "./crypto/keyring.js";
export { envKeySource } from "./crypto/keys/env.js";
export { fileKeySource, createKeyFile } from "./crypto/keys/file.js";
export { passphraseKeySource, createPassphraseKeyStore } from "./crypto/keys/passphrase.js";
export { commandKeySource } from "./crypto/keys/command.js";
export { selectKeySource } from "./crypto/keys/select.js";
export type { Store, StoreTx, StoreReader, AuditSink, KeySource } from "./vault/ports.js";
export { createMemoryStore } from "./store/memory.js";
export { openSqliteStore } from "./store/sqlite/sqlite-store.js";
export { verifyAudit, type AuditVerifyResult, type AuditBreak } from "./audit/verify.js";
export type { AuditRecoverParams, AuditRecoverResult } from "./vault/audit-recover.js";
export { jsonlSink } from "./audit/jsonl-sink.js";
export { logSink } from "./audit/sink.js";
export { openVault, initHome, type OpenVaultOptions, type InitOptions } from "./config/open-vault.js";
export { VERSION } from "./version.js";
export * from "./client/index.js";
