/**
 * The data model shared by the core, the stores and (later) the protocol. Times are epoch milliseconds.
 */

/** The three roles a caller can hold (DESIGN.md, "Data model"). */
export type Role = "admin" | "orchestrator" | "agent";

/**
 * Who is calling. The transport decides it (peer credentials, a token, the embedding program); it is
 * never taken from request parameters.
 */
export interface Identity {
  /** A stable name for the caller, e.g. `uid:1000`, `token:ci`, `embedded`. */
  readonly id: string;
  readonly role: Role;
  /** For role `agent`: the one agent id this caller is bound to. */
  readonly agent?: string;
  /** For role `orchestrator`: agent id patterns (`*` globs) it may act for. */
  readonly actFor?: readonly string[];
  /** How the caller reached the vault: `embedded`, `uds`, `tcp`, `vsock`. */
  readonly transport: string;
  /**
   * Set when the identity comes from a bearer token: its public id and expiry (epoch ms, or null),
   * so a server can close the connection the moment the token is revoked or expires.
   */
  readonly token?: {
    readonly id: string;
    readonly expiresAt: number | null;
    /**
     * Who made the token, at the root of its chain: the `createdBy` of the first token made by
     * something other than a token (`uid:1000`, `vm:vm1`, `embedded`). A server counts the
     * connections of every token one issuer made together (max_connections_per_issuer).
     */
    readonly issuer?: string;
  };
  /**
   * Set for one `lessor run --vault-session`'s identity (a session token, named `session:…`, or the
   * embedded run's `run:<random>:A`): it sees and uses only the leases issued to it (their
   * `issuedBy` is its id), never those of another run of the same agent, nor the agent's own.
   */
  readonly session?: true;
}

/** Secret kinds. */
export const SECRET_KINDS = ["api_key", "pat", "basic_auth", "oauth2", "ssh_key", "client_cert", "opaque"] as const;
export type SecretKind = (typeof SECRET_KINDS)[number];

/** Points at one secret: `scope` (`global`, `workspace:<id>`, `env:<name>`, …) and `name`. */
export interface SecretRef {
  readonly scope: string;
  readonly name: string;
}

/** A secret's metadata as stored (never its value). */
export interface SecretRecord {
  scope: string;
  name: string;
  kind: SecretKind;
  description: string;
  tags: string[];
  /** The newest version number; versions count up from 1 and are never reused for one secret. */
  currentVersion: number;
  createdAt: number;
  updatedAt: number;
}

/** One sealed version of a secret's value (see src/crypto/envelope.ts for the blob layouts). */
export interface VersionRecord {
  scope: string;
  name: string;
  version: number;
  /** AEAD algorithm used for both the value and the wrapped DEK. */
  alg: string;
  /** Id of the master key that wraps the DEK. */
  keyId: string;
  wrappedDek: Uint8Array;
  ciphertext: Uint8Array;
  /** Plaintext length in bytes. */
  size: number;
  createdAt: number;
  /** Identity id of the writer. */
  createdBy: string;
}

/** A lease: one agent's time-limited, use-capped, revocable right to one secret for listed domains. */
export interface LeaseRecord {
  /** UUIDv7. */
  id: string;
  agent: string;
  scope: string;
  name: string;
  /** Domain patterns the lease may be used against (exact hosts or `*.suffix`). */
  domains: string[];
  /** True when the granting rule said `any_domain = true`: the lease may be used without a domain. */
  anyDomain: boolean;
  /** Allowed HTTP methods for the proxy, or null for any. */
  methods: string[] | null;
  /** Allowed path prefixes for the proxy, or null for any. */
  paths: string[] | null;
  /** Name of the policy rule that granted it. */
  rule: string;
  issuedAt: number;
  expiresAt: number;
  /** Renewals never push expiry past this. */
  maxExpiresAt: number;
  uses: number;
  maxUses: number | null;
  renewals: number;
  maxRenewals: number | null;
  renewable: boolean;
  revokedAt: number | null;
  revokeReason: string | null;
  /** Identity id that requested it (the agent itself, or an orchestrator). */
  issuedBy: string;
  /**
   * True when only `issuedBy` (or an admin) may use it: a person approved it for that identity
   * (src/vault/approvals.ts). Recorded at grant, so that no later policy (a rule renamed, its name
   * given to another rule) unbinds it. False on leases granted before lessor recorded it (their rule
   * as in force still binds them).
   */
  bound: boolean;
  /**
   * True when its value may go only into an injecting proxy's request: the rule that granted it did
   * not reveal the value then (`reveal = false`; what a person approved, for a lease through an
   * approval). Recorded at grant, so that no later policy (the rule made to reveal) hands the value
   * of a lease granted proxy-only to its agent. False on leases granted revealing, and on leases
   * granted before lessor recorded it (their rule as in force decides, as it always does too).
   */
  proxyOnly: boolean;
}

/** Audit event types. */
export const AUDIT_TYPES = [
  "lease_granted",
  "secret_accessed",
  "access_denied",
  "lease_renewed",
  "lease_revoked",
  "killswitch",
  "heartbeat",
  "secret_stored",
  "secret_rotated",
  "secret_rolled_back",
  "secret_deleted",
  "secret_revealed",
  "policy_reloaded",
  "limits_pinned",
  "key_rotation_started",
  "key_rotated",
  "auth_failed",
  "token_created",
  "token_revoked",
  "proxy_request",
  "audit_upgraded",
  "audit_break",
  "approval_requested",
  "approval_granted",
  "approval_denied",
  "tool_call",
] as const;
export type AuditType = (typeof AUDIT_TYPES)[number];

/** Outcome of an audited step. */
export type AuditOutcome = "ok" | "denied" | "error";

/** What the core asks to be audited; the chain fields are added by src/audit. */
export interface AuditDraft {
  type: AuditType;
  actor: Identity;
  /** The agent the step concerns, when there is one. */
  agent?: string | null;
  /** `scope/name` of the secret concerned. */
  secret?: string | null;
  leaseId?: string | null;
  domain?: string | null;
  outcome: AuditOutcome;
  /** Why (an error code and/or rule name); never a secret value. */
  reason?: string | null;
  /** Small non-secret extras (version numbers, counts, rule names). */
  detail?: Record<string, string | number | boolean | null> | null;
}

/** An audit row as stored: every field is covered by `hash`. */
export interface AuditRecord {
  /** 1, 2, 3, … with no gaps. */
  seq: number;
  /** UUIDv7. */
  id: string;
  time: number;
  type: string;
  actorId: string;
  actorRole: string;
  transport: string;
  agent: string | null;
  secret: string | null;
  leaseId: string | null;
  domain: string | null;
  outcome: string;
  reason: string | null;
  /** JSON text of the detail object, or null. */
  detail: string | null;
  /** Chain value of the previous event (32 zero bytes for the first). */
  prevHash: Uint8Array;
  /**
   * The chain value: HMAC-SHA256 under the audit key `keyId` over prevHash and every other field,
   * length-prefixed (src/audit/chain.ts). For a format-1 event (`keyId` null), plain SHA-256.
   */
  hash: Uint8Array;
  /**
   * Id of the audit key whose MAC `hash` is (the id of the master key it was derived from); null for
   * an event written before the keyed chain (format 1), which only the start of a trail may hold.
   */
  keyId: string | null;
}

/** A keyed MAC over the chain head, rewritten in every commit that appends, so that truncation is detected. */
export interface AuditCheckpoint {
  seq: number;
  hash: Uint8Array;
  /** Id of the audit key (the master key it was derived from) the MAC is under. */
  keyId: string;
  mac: Uint8Array;
}

/** The head of the audit trail as a store reads it: the last row's seq, chain value and key id. */
export interface AuditHead {
  seq: number;
  hash: Uint8Array;
  /** null for a format-1 (unkeyed) event. */
  keyId: string | null;
}

/** Filters for audit queries; all optional and combined with AND. */
export interface AuditFilter {
  /**
   * Events about this agent; with `secret`, events about both. Each also matches a summary of counted
   * refusals (src/vault/refusals.ts) whose `detail.agents` / `detail.secrets` lists it exactly
   * (src/store/audit-summaries.ts), so refusals counted behind decoys still show.
   */
  agent?: string;
  /** `scope/name`; see `agent`. */
  secret?: string;
  types?: string[];
  leaseId?: string;
  actorId?: string;
  /** Inclusive lower bound on time. */
  since?: number;
  /** Exclusive upper bound on time. */
  until?: number;
  /** Only events with seq greater than this. */
  afterSeq?: number;
  /** Newest first when "desc" (default "asc"). */
  order?: "asc" | "desc";
  /** Default 100, at most 10,000. */
  limit?: number;
}

/** Filters for listing secrets. */
export interface SecretFilter {
  scope?: string;
  namePrefix?: string;
  tag?: string;
  /** Only secrets after this one in (scope, name) order: the next page of a listing. */
  after?: SecretRef;
  /** At most this many (default: every match). */
  limit?: number;
}

/** Filters for listing leases. */
export interface LeaseFilter {
  /** Only the lease with this id (none when it is not there, or the other fields exclude it). */
  id?: string;
  agent?: string;
  secret?: SecretRef;
  /** When set, only leases that are live at this time (not revoked, not expired, not used up). */
  liveAt?: number;
  /** When set, only leases whose id sorts before this one (the next page of a listing, newest first). */
  beforeId?: string;
  limit?: number;
}

/** Which leases to revoke. */
export type RevokeSelector = { id: string } | { agent: string } | { secret: SecretRef } | { all: true };

/** A bearer token for the TCP transport, as stored: only a hash of its secret part is kept. */
export interface TokenRecord {
  /** Public id, also the token's lookup prefix (`lsr_<id>_<secret>`). */
  id: string;
  /** A label for listings. */
  name: string;
  role: Role;
  agent: string | null;
  actFor: string[] | null;
  createdAt: number;
  expiresAt: number | null;
  revokedAt: number | null;
  createdBy: string;
  /** SHA-256 of the token's secret part. */
  hash: Uint8Array;
  /**
   * HMAC of the record (all but `revokedAt`) under a key derived from the master key
   * (src/vault/token-mac.ts); null for a row written without it, which authenticates no one.
   */
  mac: Uint8Array | null;
}

/**
 * A token as listed (no hash nor MAC). `unverified` marks a row whose MAC is missing or wrong (made
 * before lessor MACed tokens, or written into the database without the key): it authenticates no one.
 */
export type TokenInfo = Omit<TokenRecord, "hash" | "mac"> & { unverified?: true };
