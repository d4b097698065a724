/**
 * The methods of protocol v1, in one table: for each, who may call it, its params schema (strict:
 * unknown fields are refused), its result schema (the wire shape), whether the result carries secret
 * material, whether it is audited, and its binding to the core. Everything else is derived from here:
 * the server's dispatch (src/server/dispatch.ts), the client's typed calls (`LessorClient.call` and
 * `.api`, src/client/api.ts), the in-process backend (src/backend/in-process.ts), and later the MCP
 * tools. Adding a method is one entry here plus its function in the core.
 *
 * The core stays the authority on roles and audit: `roles` says who the core lets through (for docs
 * and tool lists; test/registry.test.ts checks it against the core), and the core audits refusals.
 *
 * The bindings import the core's types only, so the client can import this table's types without
 * loading the vault; the client never loads this module at run time (it would load zod).
 */
import { z } from "zod";
import { VaultError } from "../base/errors.js";
import { CLIENT_NAME_RE, parseRefString } from "../base/names.js";
import { MAX_TOOL_CALL_MS, TOOL_CODES, TOOL_NAME_RE, TOOL_OUTCOMES } from "../base/tool-call.js";
import { AUDIT_TYPES, SECRET_KINDS, type Role } from "../base/types.js";
import type { SecretBytes } from "../crypto/secret-bytes.js";
import type { VaultSession } from "../vault/vault.js";
import { issuesMessage } from "./issues.js";
import { leaseId, plain, reason, scope, secretName, str, target, ttl, value, version } from "./params.js";
import * as R from "./results.js";
import { decodeValue, wireAudit, wireExplanation, wireIdentity } from "./wire.js";

/** What a binding may need beyond the session: facts about the process serving the call (`status`). */
export interface CallContext {
  version: string;
  startedAt: number;
  connections(): number;
  /**
   * The stamp of the process at the other end of this connection (`<pid>.<start>.<boot id>.<pid namespace>`,
   * src/server/process-stamp.ts), from the Unix socket's peer credentials; null when unknown (TCP, no
   * peer pid, the in-process API). token_create with session: true binds the token to it.
   */
  callerProcess?(): string | null;
}

/**
 * A wire result as an API hands it out: a secret value (`value` in base64 with `encoding`) becomes
 * wipeable SecretBytes. The bindings return this form; the server encodes it, the client decodes it.
 */
export type Decoded<W> = W extends { value: string; encoding: "base64" } ? Omit<W, "value" | "encoding"> & { value: SecretBytes } : W;

/**
 * What an entry says about audit. "audited": a call that does something writes an audit event in the
 * same transaction. "read-only": it changes nothing and writes no event. Either way the core audits a
 * refusal for role or policy as `access_denied`.
 */
export type AuditBehaviour = "audited" | "read-only";

/** One method of protocol v1. */
export interface MethodSpec<P extends z.ZodObject = z.ZodObject, Res extends z.ZodType = z.ZodType> {
  /** One sentence for docs and tool lists. */
  description: string;
  /** The roles the core lets call it (each may still be refused for a reason of its own: agent, policy). */
  roles: readonly Role[];
  params: P;
  result: Res;
  /** True when the result carries secret material (the server wipes the response frame once written). */
  secret: boolean | ((params: z.output<P>) => boolean);
  audit: AuditBehaviour;
  /** Calls the core; returns the result in its {@link Decoded} form. */
  call(session: VaultSession, params: z.output<P>, ctx: CallContext): Promise<Decoded<z.output<Res>>>;
}

/** Types one entry (the table below is checked entry by entry). */
function method<P extends z.ZodObject, Res extends z.ZodType>(spec: MethodSpec<P, Res>): MethodSpec<P, Res> {
  return spec;
}

const ALL: readonly Role[] = ["admin", "orchestrator", "agent"];
const ADMIN: readonly Role[] = ["admin"];
const READERS: readonly Role[] = ["admin", "orchestrator"];
const none = z.strictObject({});

/** `{ scope?, name }` params as the core's SecretRef. */
function ref(p: { scope?: string | undefined; name: string }): { scope: string; name: string } {
  return { scope: p.scope ?? "global", name: p.name };
}

/** Runs `f` with a client's value decoded into a buffer that is wiped after. */
async function withValue<T>(p: { value: string; encoding?: "utf8" | "base64" | undefined }, f: (bytes: Buffer) => Promise<T>): Promise<T> {
  const bytes = decodeValue(p.value, p.encoding);
  try {
    return await f(bytes);
  } finally {
    bytes.fill(0);
  }
}

const nullableString = z.string().nullable();
const nullableNumber = z.number().nullable();

/** An approval on the wire (src/vault/approvals.ts): the request it is bound to and its decision; never a value. */
const APPROVAL = z.strictObject({
  id: z.string(),
  agent: z.string(),
  secret: z.string(),
  domains: z.array(z.string()).nullable(),
  hosts: z.array(z.string()),
  anyDomain: z.boolean(),
  ttlMs: nullableNumber,
  maxUses: nullableNumber,
  rule: z.string(),
  reason: nullableString,
  requestedBy: z.string(),
  requestedAt: z.number(),
  expiresAt: z.number(),
  state: z.enum(["pending", "approved", "denied", "used"]),
  decidedBy: nullableString,
  decidedAt: nullableNumber,
  decisionReason: nullableString,
  leaseId: nullableString,
  /** Whether the rule hands the value to the requester (null: an approval from before this was kept). */
  reveal: z.boolean().nullable(),
  /** The methods and path prefixes the rule lets the proxy send (null: any). */
  methods: z.array(z.string()).nullable(),
  paths: z.array(z.string()).nullable(),
});

/**
 * The serving process's facts. Its pid is null for an agent: it has no use for it, and under
 * `lessor run --vault-session` the process serving it is lessor run (embedded) or the daemon, whose pid
 * the sandbox is meant to keep from it (as the session's identity id holds none).
 */
function daemonFacts(c: CallContext, who: { role: string }): { version: string; pid: number | null; uptimeMs: number; connections: number } {
  return { version: c.version, pid: who.role === "agent" ? null : process.pid, uptimeMs: Date.now() - c.startedAt, connections: c.connections() };
}

/** Every method of protocol v1, by wire name. */
export const REGISTRY = {
  status: method({
    description: "The vault's and the daemon's health in brief: audit head, killswitch, policy state (a health check; no secrets, no paths).",
    roles: ALL,
    params: none,
    result: R.status,
    secret: false,
    audit: "read-only",
    call: async (s, _p, c) => ({ ...(await s.status()), identity: wireIdentity(s.identity), daemon: daemonFacts(c, s.identity) }),
  }),
  describe: method({
    description: "The vault's and the daemon's state in full: store, master key ids, cipher, policy version, killswitch, audit head (no secrets; file paths for admins only).",
    roles: ALL,
    params: none,
    result: R.describe,
    secret: false,
    audit: "read-only",
    call: async (s, _p, c) => ({ ...(await s.describe()), identity: wireIdentity(s.identity), daemon: daemonFacts(c, s.identity) }),
  }),
  whoami: method({
    description: "Who the daemon thinks the caller is; for a token identity, the token's id, name and expiry.",
    roles: ALL,
    params: none,
    result: R.whoami,
    secret: false,
    audit: "read-only",
    call: async (s) => {
      const w = await s.whoami();
      return { identity: wireIdentity(w.identity), token: w.token };
    },
  }),

  // ---- secrets ----
  store_secret: method({
    description: "Stores a value as a new version, creating the secret if needed.",
    roles: ADMIN,
    params: z.strictObject({
      ...secretName,
      ...value,
      kind: z.enum(SECRET_KINDS).optional(),
      description: plain(z.string().max(1024)).optional(),
      tags: z.array(str(64)).max(32).optional(),
      mode: z.enum(["upsert", "create"]).optional(),
    }),
    result: R.secretMeta,
    secret: false,
    audit: "audited",
    call: (s, p) => {
      const { value: _v, encoding: _e, ...rest } = p;
      return withValue(p, (bytes) => s.storeSecret({ ...rest, value: bytes }));
    },
  }),
  rotate_secret: method({
    description: "Adds a new version to an existing secret.",
    roles: ADMIN,
    params: z.strictObject({ ...secretName, ...value }),
    result: R.secretMeta,
    secret: false,
    audit: "audited",
    call: (s, p) => withValue(p, (bytes) => s.rotateSecret(ref(p), bytes)),
  }),
  rotate_secret_hook: method({
    description: "Rotates a secret by its configured hook (a [[rotate]] command in lessor.toml): its output becomes the new version.",
    roles: ADMIN,
    params: z.strictObject(secretName),
    result: z.strictObject({ secret: R.secretMeta, version: z.number(), revokedLeases: z.number() }),
    secret: false,
    audit: "audited",
    call: (s, p) => s.rotateSecretByHook(ref(p)),
  }),
  rollback_secret: method({
    description: "Re-stores an older version's value as the newest version.",
    roles: ADMIN,
    params: z.strictObject({ ...secretName, version }),
    result: R.secretMeta,
    secret: false,
    audit: "audited",
    call: (s, p) => s.rollbackSecret(ref(p), p.version),
  }),
  delete_secret: method({
    description: "Deletes a secret and revokes its leases.",
    roles: ADMIN,
    params: z.strictObject(secretName),
    result: z.strictObject({ revokedLeases: z.number() }),
    secret: false,
    audit: "audited",
    call: (s, p) => s.deleteSecret(ref(p)),
  }),
  reveal_secret: method({
    description: "Reads a value without a lease (audited as secret_revealed).",
    roles: ADMIN,
    params: z.strictObject({ ...secretName, version: version.optional() }),
    result: R.secretValue,
    secret: true,
    audit: "audited",
    call: (s, p) => s.revealSecret(ref(p), p.version),
  }),
  list_secrets: method({
    description:
      "Lists secret metadata (never values), sorted by scope then name. `limit` and `after` (the last secret of the previous page) page through a long list.",
    roles: READERS,
    params: z.strictObject({
      scope,
      namePrefix: str(128).optional(),
      tag: str(64).optional(),
      after: z.strictObject(secretName).optional(),
      limit: z.number().int().positive().max(10_000).optional(),
    }),
    result: z.array(R.secretRecord),
    secret: false,
    audit: "read-only",
    call: (s, p) => {
      const { after, ...rest } = p;
      return s.listSecrets({ ...rest, ...(after !== undefined ? { after: ref(after) } : {}) });
    },
  }),
  list_granted: method({
    description:
      "Lists the secrets an agent's grants cover (name, kind, description, the granting rule and its domains; never a value). An agent lists its own; others name the agent.",
    roles: ALL,
    params: z.strictObject({ agent: str(128).optional(), scope, namePrefix: str(128).optional() }),
    result: z.array(R.grantedSecret),
    secret: false,
    audit: "read-only",
    call: (s, p) => s.listGranted(p),
  }),
  get_secret_metadata: method({
    description: "One secret's metadata and kept versions.",
    roles: READERS,
    params: z.strictObject(secretName),
    result: R.secretMeta,
    secret: false,
    audit: "read-only",
    call: (s, p) => s.getSecretMetadata(ref(p)),
  }),
  secret_history: method({
    description: "A secret's kept versions, oldest first.",
    roles: READERS,
    params: z.strictObject(secretName),
    result: z.array(R.versionMeta),
    secret: false,
    audit: "read-only",
    call: (s, p) => s.secretHistory(ref(p)),
  }),

  // ---- leases ----
  request_lease: method({
    description:
      "Requests a lease (policy-checked). With `access`, also uses it once in the same commit and returns the value, its version and the lease, as access_secret does.",
    roles: ALL,
    params: z.strictObject({
      agent: str(128).optional(),
      /** `scope/name`, or a bare name in scope global. */
      secret: str(300),
      domains: z.array(str(253)).max(64).optional(),
      ttl: ttl.optional(),
      maxUses: z.number().int().positive().optional(),
      /** For a rule with approval = "required": the id of the approval a person gave this request. */
      approval: str(64).optional(),
      /** Also use the new lease once, in the same commit; the result then carries the value. */
      access: z.strictObject(target).optional(),
    }),
    result: z.union([R.lease, R.leasedValue]),
    secret: (p) => p.access !== undefined,
    audit: "audited",
    call: (s, p) => {
      const { access, ...req } = p;
      return access === undefined ? s.requestLease(req) : s.requestLeaseAndAccess(req, access);
    },
  }),
  access_secret: method({
    description: "Uses a lease once: returns the value, its version and the lease after this use.",
    roles: ALL,
    params: z.strictObject({ leaseId, ...target }),
    result: R.leasedValue,
    secret: true,
    audit: "audited",
    call: (s, p) => {
      const { leaseId: id, ...where } = p;
      return s.accessSecret(id, where);
    },
  }),
  renew_lease: method({
    description: "Extends a lease within its rule's bounds.",
    roles: ALL,
    params: z.strictObject({ leaseId, ttl: ttl.optional() }),
    result: R.lease,
    secret: false,
    audit: "audited",
    call: (s, p) => s.renewLease(p.leaseId, p.ttl === undefined ? {} : { ttl: p.ttl }),
  }),
  revoke_lease: method({
    description: "Revokes one lease.",
    roles: ALL,
    params: z.strictObject({ leaseId, reason }),
    result: z.strictObject({ revoked: z.boolean() }),
    secret: false,
    audit: "audited",
    call: (s, p) => s.revokeLease(p.leaseId, p.reason),
  }),
  record_proxy_requests: method({
    description:
      "Writes the audit events of requests the injecting proxy handled (agent, leases, method, host, path, status, bytes, duration), all in one commit. Outcome \"tripwire\" also revokes the leases named, as an alarm.",
    roles: ALL,
    params: z.strictObject({
      reports: z
        .array(
          z.strictObject({
            agent: str(128),
            leaseIds: z.array(leaseId).max(32),
            method: str(32),
            host: str(253),
            path: plain(z.string().min(1).max(8192)),
            status: z.number().int().min(0).max(999),
            bytesOut: z.number().int().min(0),
            bytesIn: z.number().int().min(0),
            ms: z.number().min(0),
            outcome: z.enum(["ok", "refused", "error", "tripwire"]),
            reason: plain(z.string().max(300)).optional(),
          }),
        )
        .min(1)
        .max(256),
    }),
    result: z.strictObject({ revoked: z.number() }),
    secret: false,
    audit: "audited",
    call: (s, p) => s.recordProxyRequests(p.reports),
  }),
  record_tool_call: method({
    description:
      "Writes the tool_call audit event of one tool call an MCP server handled for an agent: the tool's name, the outcome, the error code and the duration; never an argument or a result.",
    roles: ALL,
    params: z.strictObject({
      agent: str(128).optional(),
      tool: z.string().regex(TOOL_NAME_RE, 'expected a tool name: 1 to 64 letters, digits, "_", "." or "-", starting with a letter'),
      outcome: z.enum(TOOL_OUTCOMES),
      code: z.enum(TOOL_CODES).optional(),
      ms: z.number().min(0).max(MAX_TOOL_CALL_MS),
    }),
    result: z.strictObject({ recorded: z.literal(true) }),
    secret: false,
    audit: "audited",
    call: (s, p) => s.recordToolCall(p),
  }),
  record_refusal: method({
    description:
      "Writes the access_denied audit event of a refusal a client made on its own before asking for a lease (a credential helper that answers nothing): the agent, the secret, the host and why; never a value.",
    roles: ALL,
    params: z.strictObject({
      agent: str(128).optional(),
      secret: str(300),
      domain: str(253).optional(),
      by: z.string().regex(CLIENT_NAME_RE, 'expected a client name: 1 to 32 lower-case letters, digits or "-", starting with a letter'),
      reason: str(300),
    }),
    result: z.strictObject({ recorded: z.literal(true) }),
    secret: false,
    audit: "audited",
    call: (s, p) => s.recordRefusal(p),
  }),
  revoke_all_for_agent: method({
    description: "Revokes every live lease of an agent.",
    roles: ALL,
    params: z.strictObject({ agent: str(128), reason }),
    result: z.strictObject({ revoked: z.number() }),
    secret: false,
    audit: "audited",
    call: (s, p) => s.revokeAllForAgent(p.agent, p.reason),
  }),
  list_leases: method({
    description:
      "Lists the leases the caller may see, newest first. `limit` and `before` (the id of the last lease of the previous page) page through a long list.",
    roles: ALL,
    params: z.strictObject({
      id: str(128).optional(),
      agent: str(128).optional(),
      secret: str(300).optional(),
      live: z.boolean().optional(),
      before: leaseId.optional(),
      limit: z.number().int().positive().max(10_000).optional(),
    }),
    result: z.array(R.lease),
    secret: false,
    audit: "read-only",
    call: (s, p) =>
      s.listLeases({
        ...(p.id !== undefined ? { id: p.id } : {}),
        ...(p.agent !== undefined ? { agent: p.agent } : {}),
        ...(p.secret !== undefined ? { secret: parseRefString(p.secret) } : {}),
        ...(p.live ? { liveAt: s.now() } : {}),
        ...(p.before !== undefined ? { beforeId: p.before } : {}),
        ...(p.limit !== undefined ? { limit: p.limit } : {}),
      }),
  }),
  approval_request: method({
    description:
      "Asks a person to approve a lease request whose rule says approval = \"required\" (same fields as request_lease, plus the agent's reason): the approval for exactly this request, opened now or already open. `required` is false (and nothing is opened) when the rule needs no approval. With namedHosts, a request naming no host under a grant for any host is refused before anything is opened.",
    roles: ALL,
    params: z.strictObject({
      agent: str(128).optional(),
      secret: str(300),
      domains: z.array(str(253)).max(64).optional(),
      ttl: ttl.optional(),
      maxUses: z.number().int().positive().optional(),
      reason: plain(z.string().min(1).max(300)).optional(),
      namedHosts: z.boolean().optional(),
    }),
    result: z.union([z.strictObject({ required: z.literal(false), rule: z.string() }), z.strictObject({ required: z.literal(true), rule: z.string(), created: z.boolean(), approval: APPROVAL })]),
    secret: false,
    audit: "audited",
    call: (s, p) => s.requestApproval(p),
  }),
  approval_list: method({
    description: "Lists the approvals waiting for a person (with `all`, decided ones too, until they lapse).",
    roles: READERS,
    params: z.strictObject({ all: z.boolean().optional() }),
    result: z.array(APPROVAL),
    secret: false,
    audit: "read-only",
    call: (s, p) => s.listApprovals(p.all === undefined ? {} : { all: p.all }),
  }),
  approval_decide: method({
    description: "Approves or denies a pending approval (the person in the loop); the same request then gets its lease, once, or is refused.",
    roles: ADMIN,
    params: z.strictObject({ id: str(64), approve: z.boolean(), reason: plain(z.string().min(1).max(200)).optional() }),
    result: APPROVAL,
    secret: false,
    audit: "audited",
    call: (s, p) => s.decideApproval(p.id, p.approve, p.reason),
  }),
  approval_withdraw: method({
    description: "Withdraws the approvals not yet used (pending or approved) that one identity asked for one agent: removed, not denied, so the agent's next request is asked afresh. For an identity that is gone (lessor run --vault-session calls it at its end for its session).",
    roles: ADMIN,
    params: z.strictObject({ requestedBy: plain(z.string().min(1).max(200)), agent: str(200), reason: plain(z.string().min(1).max(200)) }),
    result: z.strictObject({ withdrawn: z.number() }),
    secret: false,
    audit: "audited",
    call: (s, p) => s.withdrawApprovals(p.requestedBy, p.agent, p.reason),
  }),
  killswitch: method({
    description: "Pulls the killswitch: revokes every live lease and refuses every grant until it is released.",
    roles: ADMIN,
    params: z.strictObject({ reason }),
    result: z.strictObject({ revoked: z.number() }),
    secret: false,
    audit: "audited",
    call: (s, p) => s.killswitch(p.reason),
  }),
  killswitch_release: method({
    description: "Releases the killswitch lockout; `released` is false when it was not engaged.",
    roles: ADMIN,
    params: z.strictObject({ reason }),
    result: z.strictObject({ released: z.boolean() }),
    secret: false,
    audit: "audited",
    call: (s, p) => s.releaseKillswitch(p.reason),
  }),

  heartbeat: method({
    description: "Records a heartbeat for the dead-man switch ([vault] heartbeat): without one for that long, the killswitch is pulled.",
    roles: ADMIN,
    params: z.strictObject({ reason }),
    result: R.heartbeat,
    secret: false,
    audit: "audited",
    call: (s, p) => s.heartbeat(p.reason),
  }),

  // ---- audit, policy, keys, tokens ----
  audit_query: method({
    description: "Queries the audit trail.",
    roles: ADMIN,
    params: z.strictObject({
      agent: str(128).optional(),
      secret: str(300).optional(),
      types: z.array(z.enum(AUDIT_TYPES)).max(32).optional(),
      leaseId: leaseId.optional(),
      actorId: str(256).optional(),
      since: z.number().int().nonnegative().optional(),
      until: z.number().int().nonnegative().optional(),
      afterSeq: z.number().int().nonnegative().optional(),
      order: z.enum(["asc", "desc"]).optional(),
      limit: z.number().int().positive().max(10_000).optional(),
    }),
    result: z.array(R.auditEvent),
    secret: false,
    audit: "read-only",
    call: async (s, p) => (await s.auditQuery(p)).map(wireAudit),
  }),
  audit_verify: method({
    description: "Verifies the audit chain and checkpoint, and lists the recoveries (breaks) in the trail.",
    roles: ADMIN,
    params: none,
    result: R.auditVerify,
    secret: false,
    audit: "read-only",
    call: (s) => s.auditVerify(),
  }),
  audit_recover: method({
    description: "Records a break in a broken audit trail so that audited writes resume; `recovered` is false when it was not broken.",
    roles: ADMIN,
    params: z.strictObject({ reason: str(200) }),
    result: R.auditRecover,
    secret: false,
    audit: "audited",
    call: (s, p) => s.auditRecover({ reason: p.reason }),
  }),
  reload_policy: method({
    description: "Re-reads the policy file.",
    roles: ADMIN,
    params: none,
    result: z.strictObject({ rules: z.number(), digest: z.string() }),
    secret: false,
    audit: "audited",
    call: (s) => s.reloadPolicy(),
  }),
  explain: method({
    description:
      "Says which rule decides agent × secret × domain, and why, and which version of the policy answered. An agent may ask about itself only (the rules naming other agents left out).",
    roles: ALL,
    params: z.strictObject({ agent: str(128), secret: str(300), domain: plain(z.string().max(300)).optional() }),
    result: R.explanation,
    secret: false,
    audit: "read-only",
    call: async (s, p) => wireExplanation(await s.explain(p.agent, parseRefString(p.secret), p.domain)),
  }),
  rotate_master_key: method({
    description: "Rotates the master key, re-wrapping every data key.",
    roles: ADMIN,
    params: none,
    result: R.rotation,
    secret: false,
    audit: "audited",
    call: (s) => s.rotateMasterKey(),
  }),
  token_create: method({
    description: "Creates a bearer token bound to an identity; the result's `token` is shown only this once.",
    roles: ADMIN,
    params: z.strictObject({
      /** A label for listings, e.g. "ci" or "claude-laptop". */
      name: str(64),
      role: z.enum(["admin", "orchestrator", "agent"]),
      agent: str(128).optional(),
      actFor: z.array(str(128)).max(64).optional(),
      ttl: ttl.optional(),
      /**
       * A run's session token (lessor run --vault-session): named `session:<stamp of the calling
       * process>` (the given name is not used), its identity sees and uses only the leases issued to
       * it, and the daemon revokes it once the calling process (its Unix-socket peer) is gone.
       */
      session: z.literal(true).optional(),
    }),
    result: R.tokenInfo.extend({ token: z.string() }),
    secret: true,
    audit: "audited",
    call: (s, p, c) => {
      if (p.session !== true) return s.createToken(p);
      // The process is the transport's word (SO_PEERCRED), never the request's.
      const stamp = c.callerProcess?.() ?? null;
      return s.createToken({ ...p, ...(stamp !== null ? { process: stamp } : {}) });
    },
  }),
  token_list: method({
    description: "Lists tokens (never their secret part).",
    roles: ADMIN,
    params: none,
    result: z.array(R.tokenInfo),
    secret: false,
    audit: "read-only",
    call: (s) => s.listTokens(),
  }),
  token_revoke: method({
    description: "Revokes a token at once.",
    roles: ADMIN,
    params: z.strictObject({ id: str(64) }),
    result: z.strictObject({ revoked: z.boolean() }),
    secret: false,
    audit: "audited",
    call: (s, p) => s.revokeToken(p.id),
  }),
};

/** The wire name of a method. */
export type MethodName = keyof typeof REGISTRY;
/** What a method's params may be, as a caller writes them. */
export type Params<M extends MethodName> = z.input<(typeof REGISTRY)[M]["params"]>;
/** A method's result as sent on the wire (values in base64). */
export type WireResult<M extends MethodName> = z.output<(typeof REGISTRY)[M]["result"]>;
/** A method's result as an API hands it out (values as SecretBytes): see {@link Decoded}. */
export type Result<M extends MethodName> = Decoded<WireResult<M>>;
/** The wire result of every method. */
export type Results = { [M in MethodName]: WireResult<M> };
/** An approval as the protocol gives it (approval_list, approval_decide, approval_request). */
export type WireApproval = z.output<typeof APPROVAL>;
/** An audit event on the wire: the stored record with hashes in hex and detail parsed. */
export type { WireAuditEvent } from "./wire.js";

/** True when `m` is a method of protocol v1. */
export function isMethod(m: string): m is MethodName {
  return Object.prototype.hasOwnProperty.call(REGISTRY, m);
}

/** The entry of `m`, typed loosely (for code that handles every method alike). */
export function entryOf(m: MethodName): MethodSpec {
  return REGISTRY[m] as unknown as MethodSpec;
}

/**
 * Checks `params` (absent: `{}`) against the schema of `m`: the parsed params, or the
 * VaultError("invalid_request") that says which field is wrong (never quoting a value).
 */
export function parseParams(m: MethodName, params: unknown): Record<string, unknown> | VaultError {
  const schema = entryOf(m).params;
  const parsed = schema.safeParse(params ?? {});
  if (parsed.success) return parsed.data as Record<string, unknown>;
  return new VaultError("invalid_request", issuesMessage(m, parsed.error.issues, Object.keys(schema.shape)));
}

/** True when the result of `m`, called with (parsed) `params`, carries secret material. */
export function carriesSecret(m: MethodName, params: unknown): boolean {
  const s = entryOf(m).secret;
  return typeof s === "function" ? s(params as never) : s;
}
