/**
 * The Vault facade: open a vault over a store, a key source and a policy, then act through a
 * {@link VaultSession} bound to one caller identity. This is the embedded API; the daemon wraps the
 * same sessions around connections.
 *
 * ```ts
 * const vault = await Vault.open({ store, keys, policy });
 * const admin = vault.admin();
 * await admin.storeSecret({ name: "github-token", value: token, kind: "pat" });
 * const agent = vault.session({ id: "uid:1000", role: "agent", agent: "claude", transport: "embedded" });
 * const lease = await agent.requestLease({ secret: "github-token", domains: ["api.github.com"] });
 * using got = (await agent.accessSecret(lease.id, { domain: "api.github.com" })).value;
 * ```
 */
import type { Alg } from "../crypto/aead.js";
import type { KeySource } from "../crypto/keyring.js";
import type { SecretBytes } from "../crypto/secret-bytes.js";
import { checkpointKey } from "../audit/chain.js";
import type { AuditSink } from "../audit/sink.js";
import { verifyAudit, type AuditVerifyResult } from "../audit/verify.js";
import type { Store } from "../store/types.js";
import { roleError } from "./access.js";
import { auditHeadSeen, commit, DEFAULT_LIMITS, sawAuditHead, type Limits, type VaultContext } from "./context.js";
import { VaultError } from "./errors.js";
import * as leases from "./leases.js";
import { checkAgentId, checkRef } from "./names.js";
import { emptyPolicy, explain, type Explanation, type Policy } from "./policy.js";
import { rotateMasterKey, type RotationResult } from "./rotation.js";
import { Signals, type SignalListener } from "./signals.js";
import * as secrets from "./secrets.js";
import * as tokens from "./tokens.js";
import type { AuditFilter, AuditRecord, Identity, LeaseFilter, LeaseRecord, SecretFilter, SecretRecord, SecretRef, TokenInfo } from "./types.js";

/** How to open a vault. */
export interface VaultOptions {
  store: Store;
  keys: KeySource;
  /** A policy, or a loader that `reloadPolicy` calls again. Default: deny everything. */
  policy?: Policy | (() => Promise<Policy>);
  /** Extra audit sinks (a JSONL file, a log); the store's audit table is always written. */
  sinks?: AuditSink[];
  /** AEAD for new values. Default "aes-256-gcm". */
  cipher?: Alg;
  limits?: Partial<Limits>;
  /** Clock in epoch ms (tests). Default Date.now. */
  now?: () => number;
}

/** The identity of the program embedding the vault. */
export const EMBEDDED_ADMIN: Identity = Object.freeze({ id: "embedded", role: "admin", transport: "embedded" });

/** What {@link VaultSession.status} reports. */
export interface VaultStatus {
  store: string;
  keySource: string;
  keyId: string;
  keyIds: string[];
  cipher: Alg;
  policy: { source: string; digest: string; rules: number };
  auditHead: number;
}

/** An open vault. Create sessions from it; close it when done. */
export class Vault {
  readonly #ctx: VaultContext;

  private constructor(ctx: VaultContext) {
    this.#ctx = ctx;
  }

  /**
   * Loads the keyring and the policy, and checks that the keyring holds every key the stored data
   * needs (a wrong master key fails here with key_unavailable, before any request).
   */
  static async open(opts: VaultOptions): Promise<Vault> {
    const ring = await opts.keys.load();
    try {
      const needed = new Set(await opts.store.keyIdsInUse());
      const cp = await opts.store.getCheckpoint();
      if (cp) needed.add(cp.keyId);
      const missing = [...needed].filter((id) => !ring.get(id));
      if (missing.length > 0)
        throw new VaultError(
          "key_unavailable",
          `the master key from ${opts.keys.describe} does not match this vault (it needs key ${missing.join(", ")}, loaded ${ring.ids().join(", ")}); use the key this vault was created with`,
        );
      const loadPolicy = typeof opts.policy === "function" ? opts.policy : null;
      const policy = typeof opts.policy === "function" ? await opts.policy() : (opts.policy ?? emptyPolicy());
      const ctx: VaultContext = {
        store: opts.store,
        keys: opts.keys,
        keyring: ring,
        auditKey: checkpointKey(ring.current),
        policy,
        loadPolicy,
        sinks: opts.sinks ?? [],
        now: opts.now ?? Date.now,
        cipher: opts.cipher ?? "aes-256-gcm",
        limits: { ...DEFAULT_LIMITS, ...opts.limits },
        closed: false,
        signals: new Signals(),
        auditSeen: null,
      };
      return new Vault(ctx);
    } catch (e) {
      ring.wipe();
      throw e;
    }
  }

  /**
   * Subscribes to changes live connections must act on at once (a token revoked, the killswitch);
   * returns the function that unsubscribes. See {@link VaultSignal}.
   */
  onSignal(listener: SignalListener): () => void {
    return this.#ctx.signals.on(listener);
  }

  /** A session acting as `identity` (as decided by the transport, never by a request). */
  session(identity: Identity): VaultSession {
    if (identity.role === "agent") checkAgentId(identity.agent);
    else if (identity.role !== "admin" && identity.role !== "orchestrator")
      throw new VaultError("invalid_request", `role ${JSON.stringify(identity.role)} is not one of admin, orchestrator, agent`);
    const actFor = identity.actFor ? Object.freeze([...identity.actFor]) : undefined;
    return new VaultSession(this.#ctx, Object.freeze({ ...identity, ...(actFor ? { actFor } : {}) }));
  }

  /** A session for the embedding program itself, with role admin. */
  admin(): VaultSession {
    return this.session(EMBEDDED_ADMIN);
  }

  /**
   * The identity a bearer token stands for (transports without peer credentials call this after the
   * hello). Throws VaultError("unauthenticated"), audited as auth_failed.
   */
  authenticateToken(token: string, transport: string): Promise<Identity> {
    return tokens.authenticateToken(this.#ctx, token, transport);
  }

  /**
   * Audits a refused connection (an unknown uid, a missing token) as auth_failed. Transports call it;
   * `reason` and `detail` must never hold a secret (a token's secret part, a passphrase).
   */
  async recordAuthFailure(transport: string, reason: string, detail?: Record<string, string | number | boolean | null>): Promise<void> {
    const actor: Identity = { id: "unknown", role: "agent", transport };
    await commit(this.#ctx, async (_tx, audit) => {
      await audit({ type: "auth_failed", actor, outcome: "denied", reason, detail: detail ?? null });
    });
  }

  /** Closes the store and sinks and wipes the keys. */
  async close(): Promise<void> {
    if (this.#ctx.closed) return;
    this.#ctx.closed = true;
    await this.#ctx.store.close();
    for (const s of this.#ctx.sinks) await s.close?.();
    this.#ctx.keyring.wipe();
    this.#ctx.auditKey.key.fill(0);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Redacted: a vault never prints its state. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `Vault(${this.#ctx.store.kind}, ${this.#ctx.closed ? "closed" : "open"})`;
  }
}

/** One caller's view of the vault. Every method checks the caller's role and audits what it did. */
export class VaultSession {
  readonly #ctx: VaultContext;
  /** Who this session acts as. */
  readonly identity: Identity;

  /** @internal Use {@link Vault.session}. */
  constructor(ctx: VaultContext, identity: Identity) {
    this.#ctx = ctx;
    this.identity = identity;
  }

  // ---- secrets ----
  /** Stores a value as a new version, creating the secret if needed. Admin. */
  storeSecret(p: secrets.StoreSecretParams): Promise<secrets.SecretMeta> {
    return secrets.storeSecret(this.#ctx, this.identity, p);
  }
  /** Adds a new version to an existing secret. Admin. */
  rotateSecret(ref: SecretRef, value: secrets.StoreSecretParams["value"]): Promise<secrets.SecretMeta> {
    return secrets.rotateSecret(this.#ctx, this.identity, ref, value);
  }
  /** Re-stores an older version's value as the newest version. Admin. */
  rollbackSecret(ref: SecretRef, version: number): Promise<secrets.SecretMeta> {
    return secrets.rollbackSecret(this.#ctx, this.identity, ref, version);
  }
  /** Deletes a secret and revokes its leases. Admin. */
  deleteSecret(ref: SecretRef): Promise<{ revokedLeases: number }> {
    return secrets.deleteSecret(this.#ctx, this.identity, ref);
  }
  /** Reads a value without a lease (audited as secret_revealed). Admin. */
  revealSecret(ref: SecretRef, version?: number): Promise<{ value: SecretBytes; version: number }> {
    return secrets.revealSecret(this.#ctx, this.identity, ref, version);
  }
  /** Lists secret metadata. Admin or orchestrator. */
  listSecrets(filter?: SecretFilter): Promise<SecretRecord[]> {
    return secrets.listSecrets(this.#ctx, this.identity, filter);
  }
  /** One secret's metadata and versions. Admin or orchestrator. */
  getSecretMetadata(ref: SecretRef): Promise<secrets.SecretMeta> {
    return secrets.getSecretMetadata(this.#ctx, this.identity, ref);
  }
  /** Kept versions, oldest first. Admin or orchestrator. */
  secretHistory(ref: SecretRef): Promise<secrets.VersionMeta[]> {
    return secrets.secretHistory(this.#ctx, this.identity, ref);
  }

  // ---- leases ----
  /** Requests a lease (policy-checked). */
  requestLease(req: leases.LeaseRequest): Promise<LeaseRecord> {
    return leases.requestLease(this.#ctx, this.identity, req);
  }
  /**
   * Requests a lease and uses it once, in one transaction: one durable commit holding the grant, the
   * use and both audit events. If the use is refused, the new lease is revoked in that same commit and
   * the refusal is thrown. See {@link leases.requestLeaseAndAccess}.
   */
  requestLeaseAndAccess(req: leases.LeaseRequest, target?: leases.AccessTarget): Promise<leases.AccessResult> {
    return leases.requestLeaseAndAccess(this.#ctx, this.identity, req, target);
  }
  /** Uses a lease once and returns the value. */
  accessSecret(leaseId: string, target?: leases.AccessTarget): Promise<leases.AccessResult> {
    return leases.accessSecret(this.#ctx, this.identity, leaseId, target);
  }
  /** Extends a lease within its rule's bounds. */
  renewLease(leaseId: string, opts?: { ttl?: number | string }): Promise<LeaseRecord> {
    return leases.renewLease(this.#ctx, this.identity, leaseId, opts);
  }
  /** Revokes one lease. */
  revokeLease(leaseId: string, reason?: string): Promise<{ revoked: boolean }> {
    return leases.revokeLease(this.#ctx, this.identity, leaseId, reason);
  }
  /** Revokes every live lease of an agent. */
  revokeAllForAgent(agent: string, reason?: string): Promise<{ revoked: number }> {
    return leases.revokeAllForAgent(this.#ctx, this.identity, agent, reason);
  }
  /** Revokes every live lease. Admin. */
  killswitch(reason?: string): Promise<{ revoked: number }> {
    return leases.killswitch(this.#ctx, this.identity, reason);
  }
  /** Lists leases visible to this caller. */
  listLeases(filter?: LeaseFilter): Promise<LeaseRecord[]> {
    return leases.listLeases(this.#ctx, this.identity, filter);
  }

  // ---- admin ----
  /** Queries the audit trail. Admin. */
  async auditQuery(filter: AuditFilter = {}): Promise<AuditRecord[]> {
    await this.#requireAdmin("read the audit trail");
    return this.#ctx.store.queryAudit({ ...filter, limit: Math.min(filter.limit ?? 100, 10_000) });
  }
  /** Verifies the audit chain and checkpoint. Admin. */
  async auditVerify(): Promise<AuditVerifyResult> {
    await this.#requireAdmin("verify the audit trail");
    return verifyAudit(this.#ctx.store, this.#ctx.keyring);
  }
  /** Re-reads the policy; on error the old policy stays and the error is thrown. Admin. */
  async reloadPolicy(): Promise<{ rules: number; digest: string }> {
    await this.#requireAdmin("reload the policy");
    const ctx = this.#ctx;
    if (!ctx.loadPolicy) throw new VaultError("invalid_request", "this vault was opened with a fixed policy; there is nothing to reload");
    let next: Policy;
    try {
      next = await ctx.loadPolicy();
    } catch (e) {
      const msg = e instanceof VaultError ? e.message : "the policy could not be read";
      await commit(ctx, async (_tx, audit) => {
        await audit({ type: "policy_reloaded", actor: this.identity, outcome: "error", reason: msg.slice(0, 500) });
      });
      throw e;
    }
    await commit(ctx, async (_tx, audit) => {
      await audit({ type: "policy_reloaded", actor: this.identity, outcome: "ok", detail: { digest: next.digest, rules: next.rules.length, source: next.source } });
    });
    ctx.policy = next;
    return { rules: next.rules.length, digest: next.digest };
  }
  /** Says which rule decides `agent` × `secret` × `domain`, and why. Admin or orchestrator. */
  async explain(agent: string, secret: SecretRef, domain?: string): Promise<Explanation> {
    if (this.identity.role === "agent") await this.#requireAdmin("explain policy");
    return explain(this.#ctx.policy, { agent: checkAgentId(agent), secret: checkRef(secret), domains: domain === undefined ? undefined : [domain] });
  }
  /** Rotates the master key, re-wrapping every DEK. Admin. */
  rotateMasterKey(onBatch?: (done: number) => void): Promise<RotationResult> {
    return rotateMasterKey(this.#ctx, this.identity, onBatch);
  }
  /** Creates a bearer token bound to an identity; the token string is returned once. Admin. */
  createToken(p: tokens.TokenParams): Promise<TokenInfo & { token: string }> {
    return tokens.createToken(this.#ctx, this.identity, p);
  }
  /** Lists tokens (never their secrets). Admin. */
  listTokens(): Promise<TokenInfo[]> {
    return tokens.listTokens(this.#ctx, this.identity);
  }
  /** Revokes a token at once. Admin. */
  revokeToken(id: string): Promise<{ revoked: boolean }> {
    return tokens.revokeToken(this.#ctx, this.identity, id);
  }
  /** Deletes long-expired leases. Admin. */
  async gc(): Promise<{ leasesDeleted: number }> {
    await this.#requireAdmin("collect garbage");
    return { leasesDeleted: await leases.gcLeases(this.#ctx) };
  }
  /**
   * A summary of the vault's state (no secrets). `auditHead` is the trail's last seq: exact for this
   * process's own writes; writes by another process sharing the store show within
   * AUDIT_HEAD_MAX_AGE_MS (one second), so that a status call, which clients use as a health check,
   * costs no database read while the head is fresh.
   */
  async status(): Promise<VaultStatus> {
    const ctx = this.#ctx;
    let head = auditHeadSeen(ctx);
    if (head === undefined) {
      head = (await ctx.store.auditHead())?.seq ?? 0;
      sawAuditHead(ctx, head);
    }
    return {
      store: ctx.store.kind,
      keySource: ctx.keys.describe,
      keyId: ctx.keyring.current.id,
      keyIds: ctx.keyring.ids(),
      cipher: ctx.cipher,
      policy: { source: ctx.policy.source, digest: ctx.policy.digest, rules: ctx.policy.rules.length },
      auditHead: head,
    };
  }

  async #requireAdmin(what: string): Promise<void> {
    const err = roleError(this.identity, ["admin"], what);
    if (!err) return;
    await commit(this.#ctx, async (_tx, audit) => {
      await audit({ type: "access_denied", actor: this.identity, agent: this.identity.agent ?? null, outcome: "denied", reason: `${err.code}: ${err.message}` });
      return err;
    });
  }
}

