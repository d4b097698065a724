/**
 * The methods of protocol v1: the params schema of each (strict: unknown fields are refused) and the
 * TypeScript shape of each result. Values travel base64-encoded (`encoding: "base64"`) unless a
 * request says `encoding: "utf8"` for a text value it sends.
 */
import { z } from "zod";
import type { AuditVerifyResult } from "../audit/verify.js";
import type { AuditRecoverResult } from "../vault/audit-recover.js";
import type { RotationResult } from "../vault/rotation.js";
import type { SecretMeta, VersionMeta } from "../vault/secrets.js";
import { AUDIT_TYPES, SECRET_KINDS, type AuditRecord, type LeaseRecord, type SecretRecord, type TokenInfo } from "../base/types.js";
import type { VaultExplanation, VaultStatus } from "../vault/vault.js";
import type { WhoamiToken } from "../vault/whoami.js";
import { hasUnsafeText } from "../base/text.js";
import type { WireIdentity } from "./messages.js";

/**
 * Text params refuse control characters and invisible or bidirectional formatting characters
 * (src/base/text.ts), so that nothing an agent sends can drive a terminal that later shows it.
 * Secret values are the one exception: they are bytes, never shown.
 */
const plain = (s: z.ZodString) =>
  s.refine((v) => !hasUnsafeText(v), {
    message: "must not contain control characters (such as ESC or a line break) or invisible or bidirectional formatting characters (such as U+202E)",
  });
const str = (max = 256) => plain(z.string().min(1).max(max));
const scope = str(160).optional();
const name = str(128);
const secretName = { scope, name };
const ttl = z.union([z.number().int().positive().max(366 * 24 * 3600_000), str(32)]);
const reason = plain(z.string().max(200)).optional();
const uuid = z.string().regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, "expected a lease id (a UUID)");
const value = {
  /** The value: UTF-8 text, or base64 when `encoding` is "base64". */
  value: z.string().max(2 * 1024 * 1024),
  encoding: z.enum(["utf8", "base64"]).optional(),
};

/** Where a leased value is about to be used (access_secret, and request_lease's `access`). */
const target = { domain: plain(z.string().max(300)).optional(), method: str(16).optional(), path: plain(z.string().max(8192)).optional() };

/** Params schema of every method. */
export const METHODS = {
  status: z.strictObject({}),
  /** Who the daemon thinks the caller is (any role). */
  whoami: z.strictObject({}),
  store_secret: z.strictObject({
    ...secretName,
    ...value,
    kind: z.enum(SECRET_KINDS).optional(),
    description: plain(z.string().max(1024)).optional(),
    tags: z.array(str(64)).max(32).optional(),
    mode: z.enum(["upsert", "create"]).optional(),
  }),
  rotate_secret: z.strictObject({ ...secretName, ...value }),
  rollback_secret: z.strictObject({ ...secretName, version: z.number().int().positive() }),
  delete_secret: z.strictObject(secretName),
  reveal_secret: z.strictObject({ ...secretName, version: z.number().int().positive().optional() }),
  list_secrets: z.strictObject({ scope, namePrefix: str(128).optional(), tag: str(64).optional() }),
  get_secret_metadata: z.strictObject(secretName),
  secret_history: z.strictObject(secretName),
  request_lease: z.strictObject({
    agent: str(128).optional(),
    /** `scope/name`, or a bare name in scope global. */
    secret: str(300),
    domains: z.array(str(253)).max(64).optional(),
    ttl: ttl.optional(),
    maxUses: z.number().int().positive().optional(),
    /** Also use the new lease once, in the same commit; the result then carries the value. */
    access: z.strictObject(target).optional(),
  }),
  access_secret: z.strictObject({ leaseId: uuid, ...target }),
  renew_lease: z.strictObject({ leaseId: uuid, ttl: ttl.optional() }),
  revoke_lease: z.strictObject({ leaseId: uuid, reason }),
  revoke_all_for_agent: z.strictObject({ agent: str(128), reason }),
  list_leases: z.strictObject({ agent: str(128).optional(), secret: str(300).optional(), live: z.boolean().optional(), limit: z.number().int().positive().max(10_000).optional() }),
  killswitch: z.strictObject({ reason }),
  /** Releases the killswitch lockout (admin). */
  killswitch_release: z.strictObject({ reason }),
  audit_query: z.strictObject({
    agent: str(128).optional(),
    secret: str(300).optional(),
    types: z.array(z.enum(AUDIT_TYPES)).max(32).optional(),
    leaseId: uuid.optional(),
    actorId: str(256).optional(),
    since: z.number().int().nonnegative().optional(),
    until: z.number().int().nonnegative().optional(),
    afterSeq: z.number().int().nonnegative().optional(),
    order: z.enum(["asc", "desc"]).optional(),
    limit: z.number().int().positive().max(10_000).optional(),
  }),
  audit_verify: z.strictObject({}),
  /** Records a break in a broken audit trail so audited writes resume (admin; src/vault/audit-recover.ts). */
  audit_recover: z.strictObject({ reason: str(200) }),
  reload_policy: z.strictObject({}),
  explain: z.strictObject({ agent: str(128), secret: str(300), domain: plain(z.string().max(300)).optional() }),
  rotate_master_key: z.strictObject({}),
  token_create: z.strictObject({
    /** A label for listings, e.g. "ci" or "claude-laptop". */
    name: str(64),
    role: z.enum(["admin", "orchestrator", "agent"]),
    agent: str(128).optional(),
    actFor: z.array(str(128)).max(64).optional(),
    ttl: ttl.optional(),
  }),
  token_list: z.strictObject({}),
  token_revoke: z.strictObject({ id: str(64) }),
} as const;

export type MethodName = keyof typeof METHODS;
export type Params<M extends MethodName> = z.input<(typeof METHODS)[M]>;

/** True when `m` is a method of protocol v1. */
export function isMethod(m: string): m is MethodName {
  return Object.prototype.hasOwnProperty.call(METHODS, m);
}

/** A secret value on the wire. */
export interface WireValue {
  value: string;
  encoding: "base64";
}

/** The value fields of a result that carries one (access_secret, request_lease with `access`). */
export interface LeaseValue extends WireValue {
  version: number;
}

/** An audit event on the wire: the stored record with hashes in hex and detail parsed. */
export type WireAuditEvent = Omit<AuditRecord, "detail" | "prevHash" | "hash"> & {
  detail: Record<string, unknown> | null;
  prevHash: string;
  hash: string;
};

/** Result type of every method. */
export interface Results {
  status: VaultStatus & { identity: WireIdentity; daemon: { version: string; pid: number; uptimeMs: number; connections: number } };
  /** The caller's identity; for a token identity, the token's id, name and expiry (ms, or null). */
  whoami: { identity: WireIdentity; token: WhoamiToken | null };
  store_secret: SecretMeta;
  rotate_secret: SecretMeta;
  rollback_secret: SecretMeta;
  delete_secret: { revokedLeases: number };
  reveal_secret: WireValue & { version: number };
  list_secrets: SecretRecord[];
  get_secret_metadata: SecretMeta;
  secret_history: VersionMeta[];
  /** The lease; with `access` in the params, also the value and its version (the lease's `uses` counts that access). */
  request_lease: LeaseRecord & Partial<LeaseValue>;
  access_secret: WireValue & { version: number; lease: LeaseRecord };
  renew_lease: LeaseRecord;
  revoke_lease: { revoked: boolean };
  revoke_all_for_agent: { revoked: number };
  list_leases: LeaseRecord[];
  killswitch: { revoked: number };
  /** `released` is false when the killswitch was not engaged. */
  killswitch_release: { released: boolean };
  audit_query: WireAuditEvent[];
  audit_verify: AuditVerifyResult;
  /** `recovered` is false when the trail was not broken (nothing was written). */
  audit_recover: AuditRecoverResult;
  reload_policy: { rules: number; digest: string };
  /** The decision, and `policy`: the version of the policy that answered. */
  explain: Omit<VaultExplanation, "rule"> & { rule: string | null };
  rotate_master_key: RotationResult;
  token_create: TokenInfo & { token: string };
  token_list: TokenInfo[];
  token_revoke: { revoked: boolean };
}
