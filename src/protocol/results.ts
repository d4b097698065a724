/**
 * The wire shapes of results (src/protocol/registry.ts names which method returns which). These
 * schemas define the wire, not the core's return types: a binding must return a value of this shape
 * (the compiler checks it), and test/registry.test.ts checks every method's actual answer against
 * its schema. Times are epoch milliseconds.
 *
 * A result that carries a secret value carries it as `value` (base64) with `encoding: "base64"` at its
 * top level, and nowhere else: clients decode exactly that into wipeable bytes.
 */
import { z } from "zod";
import { SECRET_KINDS } from "../base/types.js";

const nullableString = z.string().nullable();
const nullableNumber = z.number().nullable();

/** The identity as told to the client in the welcome and in `status`/`whoami`. */
export const identity = z.strictObject({
  id: z.string(),
  role: z.enum(["admin", "orchestrator", "agent"]),
  agent: z.string().optional(),
  actFor: z.array(z.string()).optional(),
  transport: z.string(),
});

/** A secret's metadata (never its value). */
export const secretRecord = z.strictObject({
  scope: z.string(),
  name: z.string(),
  kind: z.enum(SECRET_KINDS),
  description: z.string(),
  tags: z.array(z.string()),
  currentVersion: z.number(),
  createdAt: z.number(),
  updatedAt: z.number(),
});

/** A secret an agent's grants cover (list_granted; src/vault/own-access.ts): never a value, never another agent's. */
export const grantedSecret = z.strictObject({
  scope: z.string(),
  name: z.string(),
  kind: z.enum(SECRET_KINDS),
  description: z.string(),
  rule: z.string(),
  domains: z.array(z.string()),
  anyDomain: z.boolean(),
  approval: z.enum(["none", "required"]),
});

/** One kept version's metadata. */
export const versionMeta = z.strictObject({ version: z.number(), size: z.number(), alg: z.string(), keyId: z.string(), createdAt: z.number(), createdBy: z.string() });

/** A secret's metadata with its kept versions. */
export const secretMeta = secretRecord.extend({ versions: z.array(versionMeta) });

/** A lease (see src/base/types.ts LeaseRecord for each field). */
export const lease = z.strictObject({
  id: z.string(),
  agent: z.string(),
  scope: z.string(),
  name: z.string(),
  domains: z.array(z.string()),
  anyDomain: z.boolean(),
  methods: z.array(z.string()).nullable(),
  paths: z.array(z.string()).nullable(),
  rule: z.string(),
  issuedAt: z.number(),
  expiresAt: z.number(),
  maxExpiresAt: z.number(),
  uses: z.number(),
  maxUses: nullableNumber,
  renewals: z.number(),
  maxRenewals: nullableNumber,
  renewable: z.boolean(),
  revokedAt: nullableNumber,
  revokeReason: nullableString,
  issuedBy: z.string(),
  bound: z.boolean(),
  proxyOnly: z.boolean(),
});

/** A secret value on the wire, with the version it came from. */
export const secretValue = z.strictObject({ value: z.string(), encoding: z.literal("base64"), version: z.number() });

/**
 * A leased value: the value, its version, the lease as it stands after this use and, when a method or
 * path restriction applied, the bounds the use was checked against (src/vault/leases.ts UseBounds).
 */
export const leasedValue = secretValue.extend({
  lease,
  bounds: z.strictObject({ methods: z.array(z.string()).nullable(), path: z.string().nullable() }).optional(),
});

/** A token as listed (never its secret part). */
export const tokenInfo = z.strictObject({
  id: z.string(),
  name: z.string(),
  role: z.enum(["admin", "orchestrator", "agent"]),
  agent: nullableString,
  actFor: z.array(z.string()).nullable(),
  createdAt: z.number(),
  expiresAt: nullableNumber,
  revokedAt: nullableNumber,
  createdBy: z.string(),
});

/** An audit event: the stored record with hashes in hex and `detail` parsed. */
export const auditEvent = z.strictObject({
  seq: z.number(),
  id: z.string(),
  time: z.number(),
  type: z.string(),
  actorId: z.string(),
  actorRole: z.string(),
  transport: z.string(),
  agent: nullableString,
  secret: nullableString,
  leaseId: nullableString,
  domain: nullableString,
  outcome: z.string(),
  reason: nullableString,
  detail: z.record(z.string(), z.unknown()).nullable(),
  prevHash: z.string(),
  hash: z.string(),
  keyId: nullableString,
});

/**
 * Which load of the policy file answered, and whether it loaded; `stale` when another instance sharing
 * the store put another policy in force (this one then grants nothing; src/vault/policy-sync.ts).
 */
const policyVersion = {
  load: z.number(),
  digest: z.string(),
  loadedAt: z.number(),
  state: z.enum(["ok", "broken"]),
  stale: z.strictObject({ stored: z.string(), at: z.number(), by: z.string(), limits: z.array(z.string()).optional() }).optional(),
};

const daemon = z.strictObject({ version: z.string(), pid: z.number().nullable(), uptimeMs: z.number(), connections: z.number() });

/** The vault's and the daemon's health in brief (a health check's answer; no secrets, no paths). */
export const status = z.strictObject({
  auditHead: z.number(),
  killswitch: z.boolean(),
  policy: z.enum(["ok", "broken", "stale"]),
  identity,
  daemon,
});

/** The heartbeat dead-man switch (src/vault/heartbeat.ts): its period, last heartbeat and deadline. */
export const heartbeat = z.strictObject({ everyMs: nullableNumber, lastAt: nullableNumber, lastBy: nullableString, dueAt: nullableNumber });

/** The vault's and the daemon's state in full (no secrets; file paths for admins only). */
export const describe = z.strictObject({
  store: z.string(),
  keySource: nullableString,
  keyId: z.string(),
  keyIds: z.array(z.string()),
  cipher: z.string(),
  policy: z.strictObject({ ...policyVersion, source: nullableString, rules: z.number(), error: nullableString }),
  killswitch: z.strictObject({ engaged: z.boolean(), at: nullableNumber, by: nullableString, reason: nullableString }),
  /** Absent from daemons older than the switch. */
  heartbeat: heartbeat.optional(),
  auditHead: z.number(),
  identity,
  daemon,
});

/** The caller's identity; for a token identity, the token's id, name and expiry. */
export const whoami = z.strictObject({
  identity,
  token: z.strictObject({ id: z.string(), name: z.string(), expiresAt: nullableNumber }).nullable(),
});

/** A policy decision with the rules checked on the way, and the policy version that answered. */
export const explanation = z.strictObject({
  allow: z.boolean(),
  rule: nullableString,
  reason: z.string(),
  steps: z.array(z.strictObject({ rule: z.string(), index: z.number(), effect: z.enum(["allow", "deny"]), matched: z.boolean(), why: z.string() })),
  policy: z.strictObject(policyVersion),
});

const found = { problem: z.string(), firstBadSeq: nullableNumber, headSeq: z.number(), checkpointSeq: nullableNumber };

/** What verifying the audit trail found. */
export const auditVerify = z.strictObject({
  ok: z.boolean(),
  events: z.number(),
  headSeq: z.number(),
  breaks: z.array(
    z.strictObject({
      seq: z.number(),
      time: z.number(),
      actorId: z.string(),
      reason: nullableString,
      found: z.strictObject({ ...found, problem: nullableString }),
      unverified: z.number(),
    }),
  ),
  firstBad: z.strictObject({ seq: z.number(), id: nullableString }).optional(),
  problem: z.string().optional(),
});

/** What recovering the audit trail did. */
export const auditRecover = z.strictObject({
  recovered: z.boolean(),
  breakSeq: nullableNumber,
  found: z.strictObject(found).nullable(),
  deferred: z.number(),
  dropped: z.number(),
});

/** What a master key rotation did. */
export const rotation = z.strictObject({ from: z.array(z.string()), to: z.string(), rewrapped: z.number(), resumed: z.boolean(), retired: z.boolean() });
