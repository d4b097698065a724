/**
 * The SDK's ergonomic methods (`storeSecret`, `leaseAndAccess`, …) over any {@link Api}: a daemon
 * connection (LessorClient) or an in-process vault (src/backend/in-process.ts). They only shape
 * arguments (a secret named `scope/name` or as an object, a value as bytes or text) and narrow
 * results; every method of the protocol is also reachable as `api.<wire name>(params)`, including
 * ones added to the registry after this file was written.
 */
import { SecretBytes } from "../crypto/secret-bytes.js";
import type { Params, Results } from "../protocol/registry.js";
import type { WireAuditEvent } from "../protocol/wire.js";
import { VaultError } from "../base/errors.js";
import { objectParam, optionalObjectParam } from "../base/shape.js";
import { parseRefString } from "../base/names.js";
import type { LeaseRecord, SecretKind, SecretRecord, TokenInfo } from "../base/types.js";
import { apiOf, type Api, type Caller } from "./api.js";
import { wireValueOf, type SecretInput } from "./codecs.js";

/** A secret named as `scope/name`, a bare name (scope `global`), or an object. */
export type SecretSpec = string | { scope?: string; name: string };

/** What {@link LessorMethods.storeSecret} takes. */
export interface StoreSecretInput {
  scope?: string;
  name: string;
  value: SecretInput;
  kind?: SecretKind;
  description?: string;
  tags?: string[];
  mode?: "upsert" | "create";
}

/** What {@link LessorMethods.requestLease} takes. */
export interface LeaseRequestInput {
  /** The agent the lease is for; agents may omit it. */
  agent?: string;
  secret: SecretSpec;
  domains?: string[];
  /** Lifetime in ms or a duration such as "5m"; capped by policy. */
  ttl?: number | string;
  maxUses?: number;
}

/** Where a leased credential is about to be used. */
export interface AccessTargetInput {
  domain?: string;
  method?: string;
  path?: string;
  /**
   * "proxy": the value goes into a request your injecting proxy sends for the agent, not to the agent.
   * Honoured for the owner and orchestrators only; the only way to use a lease whose rule says
   * `reveal = false` (docs/policy.md).
   */
  via?: "proxy";
  /**
   * Where the value is about to go ("header": as it is in a header; "base64": as the base64 of its
   * UTF-8 in a header; "text": as text in a body or query; "utf8": any UTF-8 text; src/base/value-fit.ts):
   * a value that cannot go there is refused `invalid_request` before the use is counted.
   */
  fit?: "header" | "base64" | "text" | "utf8";
  /**
   * The field of a JSON secret that is about to go (`secret#field`; keys joined by ".", `\.` for a dot
   * in a key): a value without it, or whose field cannot go as `fit` says, is refused
   * `invalid_request` before the use is counted. The whole value is still what comes back.
   */
  field?: string;
}

/** A value from the daemon; wipe it (or `using`) when done. */
export interface ClientAccessResult {
  value: SecretBytes;
  version: number;
  lease: LeaseRecord;
  /**
   * When a method or path restriction applied: the methods the lease and the rule in force allow (null:
   * any) and the canonical path the use was matched on (null: no `paths` restriction). An injecting
   * proxy sends the request within them (docs/proxy.md).
   */
  bounds?: { methods: string[] | null; path: string | null };
}

/** Filters of {@link LessorMethods.listLeases}. */
export interface LeaseListFilter {
  /** Only the lease with this id. */
  id?: string;
  agent?: string;
  secret?: SecretSpec;
  /** Only leases that are live now. */
  live?: boolean;
  /** Only leases listed after this one (its id): the next page, newest first. */
  before?: string;
  limit?: number;
}

/** The ergonomic methods over an {@link Api}; see the module comment. */
export class LessorMethods {
  /** Every method of the protocol by wire name, results decoded (values as SecretBytes). */
  readonly api: Api;

  constructor(call: Caller, api: Api = apiOf(call)) {
    this.api = api;
  }

  // ---- secrets (admin; listing also orchestrator) ----

  /** The daemon's and the vault's health in brief: audit head, killswitch, policy state. Any role. */
  status(): Promise<Results["status"]> {
    return this.api.status();
  }

  /** The daemon's and the vault's state in full (no secrets; file paths for admins only). Any role. */
  describe(): Promise<Results["describe"]> {
    return this.api.describe();
  }

  /** Who the daemon thinks this connection is; for a token, also its id, name and expiry. Any role. */
  whoami(): Promise<Results["whoami"]> {
    return this.api.whoami();
  }

  /** Stores a value as a new version, creating the secret if needed. Admin. */
  async storeSecret(p: StoreSecretInput): Promise<Results["store_secret"]> {
    const params: Params<"store_secret"> = { ...nameParams(p), ...wireValueOf(p.value) };
    if (p.kind !== undefined) params.kind = p.kind;
    if (p.description !== undefined) params.description = p.description;
    if (p.tags !== undefined) params.tags = p.tags;
    if (p.mode !== undefined) params.mode = p.mode;
    return this.api.store_secret(params);
  }

  /** Adds a new version to an existing secret. Admin. */
  async rotateSecret(ref: SecretSpec, value: SecretInput): Promise<Results["rotate_secret"]> {
    return this.api.rotate_secret({ ...refParams(ref), ...wireValueOf(value) });
  }

  /** Re-stores an older version's value as the newest version. Admin. */
  async rollbackSecret(ref: SecretSpec, version: number): Promise<Results["rollback_secret"]> {
    return this.api.rollback_secret({ ...refParams(ref), version });
  }

  /** Deletes a secret and revokes its leases. Admin. */
  async deleteSecret(ref: SecretSpec): Promise<Results["delete_secret"]> {
    return this.api.delete_secret(refParams(ref));
  }

  /** Reads a value without a lease (audited). Admin. Wipe the result's value when done. */
  async revealSecret(ref: SecretSpec, version?: number): Promise<{ value: SecretBytes; version: number }> {
    const params: Params<"reveal_secret"> = refParams(ref);
    if (version !== undefined) params.version = version;
    return valueResult(await this.api.reveal_secret(params), "reveal_secret");
  }

  /** Lists secret metadata. Admin or orchestrator. */
  listSecrets(filter: Params<"list_secrets"> = {}): Promise<SecretRecord[]> {
    return this.api.list_secrets(objectParam(filter, "the secret filter"));
  }

  /** One secret's metadata and versions. */
  async getSecretMetadata(ref: SecretSpec): Promise<Results["get_secret_metadata"]> {
    return this.api.get_secret_metadata(refParams(ref));
  }

  /** Kept versions, oldest first. */
  async secretHistory(ref: SecretSpec): Promise<Results["secret_history"]> {
    return this.api.secret_history(refParams(ref));
  }

  // ---- leases ----

  /** Requests a lease (policy-checked). */
  async requestLease(req: LeaseRequestInput): Promise<LeaseRecord> {
    const r = await this.api.request_lease(leaseParams(req));
    if (typeof r === "object" && r !== null && "value" in r) {
      if (r.value instanceof SecretBytes) r.value.wipe();
      throw new VaultError("internal", "the lessor daemon sent a value for a lease requested without access; check that client and daemon versions match");
    }
    if (typeof r !== "object" || r === null || typeof (r as { id?: unknown }).id !== "string") throw malformed("request_lease");
    return r;
  }

  /**
   * Requests a lease and uses it once, in one round trip and one durable commit on the daemon
   * (request_lease with `access`). Without `target.domain` the daemon uses the first exact host among
   * `req.domains`, else none for an any_domain lease, else the lease's first exact host. If the use is
   * refused, the daemon revokes the new lease in the same commit and this rejects with the refusal.
   * The returned lease's `uses` counts this access. Wipe the value (or `using`) when done.
   */
  async leaseAndAccess(req: LeaseRequestInput, target?: AccessTargetInput): Promise<ClientAccessResult> {
    const r = await this.api.request_lease({ ...leaseParams(req), access: targetParams(target) });
    if (typeof r === "object" && r !== null && !("value" in r))
      throw new VaultError("internal", "the lessor daemon granted the lease but sent no value; it may predate request_lease with access, so use matching versions");
    return accessResult(r, "request_lease with access");
  }

  /** Uses a lease once and returns the value. Wipe the value (or `using`) when done. */
  async accessSecret(leaseId: string, target?: AccessTargetInput): Promise<ClientAccessResult> {
    return accessResult(await this.api.access_secret({ leaseId, ...targetParams(target) }), "access_secret", leaseId);
  }

  /** Extends a lease within its rule's bounds. */
  renewLease(leaseId: string, opts?: { ttl?: number | string }): Promise<LeaseRecord> {
    const params: Params<"renew_lease"> = { leaseId };
    const ttl = optionalObjectParam(opts, "the renewal's options").ttl;
    if (ttl !== undefined) params.ttl = ttl;
    return this.api.renew_lease(params);
  }

  /** Revokes one lease. */
  revokeLease(leaseId: string, reason?: string): Promise<Results["revoke_lease"]> {
    return this.api.revoke_lease(reason === undefined ? { leaseId } : { leaseId, reason });
  }

  /** Revokes every live lease of an agent. */
  revokeAllForAgent(agent: string, reason?: string): Promise<Results["revoke_all_for_agent"]> {
    return this.api.revoke_all_for_agent(reason === undefined ? { agent } : { agent, reason });
  }

  /** Pulls the killswitch: revokes every live lease and refuses every grant until it is released. Admin. */
  killswitch(reason?: string): Promise<Results["killswitch"]> {
    return this.api.killswitch(reason === undefined ? {} : { reason });
  }

  /** Releases the killswitch lockout; `released` is false when it was not engaged. Admin. */
  releaseKillswitch(reason?: string): Promise<Results["killswitch_release"]> {
    return this.api.killswitch_release(reason === undefined ? {} : { reason });
  }

  /** Records a heartbeat for the dead-man switch (`[vault] heartbeat`); says when it fires next. Admin. */
  heartbeat(note?: string): Promise<Results["heartbeat"]> {
    return this.api.heartbeat(note === undefined ? {} : { reason: note });
  }

  /** Lists leases visible to this caller. */
  listLeases(filter: LeaseListFilter = {}): Promise<LeaseRecord[]> {
    objectParam(filter, "the lease filter");
    const params: Params<"list_leases"> = {};
    if (filter.id !== undefined) params.id = filter.id;
    if (filter.agent !== undefined) params.agent = filter.agent;
    if (filter.secret !== undefined) params.secret = secretString(filter.secret);
    if (filter.live !== undefined) params.live = filter.live;
    if (filter.before !== undefined) params.before = filter.before;
    if (filter.limit !== undefined) params.limit = filter.limit;
    return this.api.list_leases(params);
  }

  // ---- audit, policy, keys, tokens (admin) ----

  /** Queries the audit trail. Admin. */
  auditQuery(filter: Params<"audit_query"> = {}): Promise<WireAuditEvent[]> {
    return this.api.audit_query(objectParam(filter, "the audit filter"));
  }

  /** Verifies the audit chain. Admin. */
  auditVerify(): Promise<Results["audit_verify"]> {
    return this.api.audit_verify();
  }

  /**
   * Recovers a broken audit trail: the daemon appends an `audit_break` event recording what it found
   * and `reason`, and audited writes resume. Admin. See docs/audit.md.
   */
  auditRecover(reason: string): Promise<Results["audit_recover"]> {
    return this.api.audit_recover({ reason });
  }

  /** Re-reads the policy file. Admin. */
  reloadPolicy(): Promise<Results["reload_policy"]> {
    return this.api.reload_policy();
  }

  /** Says which rule decides `agent` × `secret` × `domain`, and why. */
  explain(agent: string, secret: SecretSpec, domain?: string): Promise<Results["explain"]> {
    const params: Params<"explain"> = { agent, secret: secretString(secret) };
    if (domain !== undefined) params.domain = domain;
    return this.api.explain(params);
  }

  /** Rotates the master key, re-wrapping every DEK. Admin. */
  rotateMasterKey(): Promise<Results["rotate_master_key"]> {
    return this.api.rotate_master_key();
  }

  /** Creates a bearer token; the result's `token` is shown only this once. Admin. */
  createToken(p: Params<"token_create">): Promise<Results["token_create"]> {
    return this.api.token_create(objectParam(p, "the token's parameters"));
  }

  /** Lists tokens (never their secret part). Admin. */
  listTokens(): Promise<TokenInfo[]> {
    return this.api.token_list();
  }

  /** Revokes a token by id. Admin. */
  revokeToken(id: string): Promise<Results["token_revoke"]> {
    return this.api.token_revoke({ id });
  }
}

/** request_lease params (without `access`) from a LeaseRequestInput. */
function leaseParams(req: LeaseRequestInput): Params<"request_lease"> {
  objectParam(req, "a lease request");
  const params: Params<"request_lease"> = { secret: secretString(req.secret) };
  if (req.agent !== undefined) params.agent = req.agent;
  if (req.domains !== undefined) params.domains = req.domains;
  if (req.ttl !== undefined) params.ttl = req.ttl;
  if (req.maxUses !== undefined) params.maxUses = req.maxUses;
  return params;
}

/** Access target params, with only the fields given. */
function targetParams(target: AccessTargetInput | undefined): AccessTargetInput {
  optionalObjectParam(target, "the access target");
  const out: AccessTargetInput = {};
  if (target?.domain !== undefined) out.domain = target.domain;
  if (target?.method !== undefined) out.method = target.method;
  if (target?.path !== undefined) out.path = target.path;
  if (target?.via !== undefined) out.via = target.via;
  if (target?.fit !== undefined) out.fit = target.fit;
  if (target?.field !== undefined) out.field = target.field;
  return out;
}

/** `{ scope?, name }` params from a SecretSpec. */
function refParams(ref: SecretSpec): { scope?: string; name: string } {
  if (typeof ref === "string") return parseRefString(ref);
  return nameParams(specObject(ref));
}

/** A SecretSpec that is not a string, refused unless it is an object. */
function specObject(ref: unknown): { scope?: string; name: string } {
  if (typeof ref !== "object" || ref === null)
    throw new VaultError("invalid_request", 'a secret is given as "scope/name" (or a bare name) or as { scope?, name }');
  return ref as { scope?: string; name: string };
}

/** The daemon answered a call with something that is not that call's result. */
function malformed(method: string): VaultError {
  return new VaultError("internal", `the lessor daemon answered ${method} in an unexpected form; check that client and daemon versions match`);
}

/** A result that must carry a value (decoded into a SecretBytes by the codecs); anything else is refused. */
function valueResult<R>(r: R, method: string): R {
  if (typeof r !== "object" || r === null || !((r as { value?: unknown }).value instanceof SecretBytes)) throw malformed(method);
  return r;
}

/**
 * A value result that must also carry the lease it was read under (with `leaseId`: that lease). A
 * result without it is refused, its value wiped: a credential keeps its lease id to revoke it.
 */
function accessResult<R>(r: R, method: string, leaseId?: string): R {
  const ok = valueResult(r, method);
  const lease = (ok as { lease?: { id?: unknown } | null }).lease;
  if (typeof lease !== "object" || lease === null || typeof lease.id !== "string" || (leaseId !== undefined && lease.id !== leaseId)) {
    (ok as { value: SecretBytes }).value.wipe();
    throw new VaultError(
      "internal",
      `the lessor daemon answered ${method} without the ${leaseId === undefined ? "lease" : `lease ${leaseId}`} it was used under; the value was wiped. Check that client and daemon versions match`,
    );
  }
  return ok;
}

function nameParams(ref: { scope?: string; name: string }): { scope?: string; name: string } {
  return ref.scope === undefined ? { name: ref.name } : { scope: ref.scope, name: ref.name };
}

/** `scope/name` (or a bare name) from a SecretSpec. */
function secretString(s: SecretSpec): string {
  if (typeof s === "string") return s;
  s = specObject(s);
  return s.scope === undefined ? s.name : `${s.scope}/${s.name}`;
}
