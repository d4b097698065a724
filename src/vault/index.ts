/**
 * `lessor/vault`: the core and its ports, without any adapter. Drive it with a store, a key source and
 * audit sinks of your own (or the package's: `lessor` exports the SQLite and memory stores and the key
 * sources). Loads no native module and does no I/O of its own.
 *
 * ```ts
 * import { Vault, type Store, type KeySource } from "lessor/vault";
 * const vault = await Vault.open({ store: myStore, keys: myKeySource });
 * ```
 */
export { Vault, VaultSession, EMBEDDED_ADMIN, type VaultOptions, type VaultStatus } from "./vault.js";
export { VaultError, ERROR_CODES, isVaultError, wireCode, type ErrorCode, type WireErrorCode } from "../base/errors.js";
export type * from "../base/types.js";
export type { StoreSecretParams, SecretMeta, VersionMeta } from "./secrets.js";
export { leaseState, type LeaseRequest, type AccessTarget, type AccessResult, type LeaseState } from "./leases.js";
export type { RotationResult } from "./rotation.js";
export type { RotationHook, RotationHooks, HookRunResult, HookFailure, HookRotationResult } from "./rotation-hooks.js";
export type { Limits } from "./context.js";
export { parsePolicy, emptyPolicy, decide, explain, type Policy, type Rule, type Decision, type Explanation } from "./policy.js";
export { matchDomain, parseDomainPattern, normalizeHost } from "./domain.js";
export type { AuditRecoverParams, AuditRecoverResult } from "./audit-recover.js";
export type { Store, StoreTx, StoreReader, AuditSink, KeySource } from "./ports.js";
export { SecretBytes } from "../crypto/secret-bytes.js";
export type { Alg } from "../crypto/aead.js";
export type { Keyring, MasterKey } from "../crypto/keyring.js";
export { verifyAudit, type AuditVerifyResult, type AuditBreak } from "../audit/verify.js";
