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
import { withCurrent, type Keyring } from "../crypto/keyring.js";
import { newVaultId, VAULT_ID_META } from "./vault-id.js";
import type { KeySource, Processes } from "./ports.js";
import type { SecretBytes } from "../crypto/secret-bytes.js";
import { AuditKeys } from "../audit/keys.js";
import { retiredKeys } from "../audit/retired.js";
import { auditRecover, type AuditRecoverParams, type AuditRecoverResult } from "./audit-recover.js";
import { rolledBackProblem } from "./version-floor.js";
import { guardProblem } from "./audit-guard.js";
import type { AuditSink } from "./ports.js";
import { verifyAudit, type AuditVerifyResult } from "../audit/verify.js";
import type { Store, StoreReader, TokenFilter } from "./ports.js";
import { roleError } from "./access.js";
import { auditHeadSeen, commit, DEFAULT_LIMITS, sawAuditHead, type Limits, type VaultContext } from "./context.js";
import { denied } from "./denied.js";
import { VaultError } from "../base/errors.js";
import { objectParam, optionalObjectParam } from "../base/shape.js";
import { checkPlainText } from "../base/text.js";
import * as leases from "./leases.js";
import { shownLease } from "./shown-lease.js";
import * as proxyRequests from "./proxy-requests.js";
import * as toolCalls from "./tool-calls.js";
import * as clientRefusals from "./client-refusals.js";
import * as ownAccess from "./own-access.js";
import { checkAgentId, parseRefString, refString } from "../base/names.js";
import { checkKillswitch, killswitchState, type KillswitchState } from "./lockout.js";
import * as heartbeats from "./heartbeat.js";
import { armHeartbeat, checkDeadman } from "./heartbeat.js";
import { emptyPolicy, withheldQuotes, type Explanation, type Policy, type PolicyVersion } from "./policy.js";
import { installPolicy, loadOrBroken, oneReloadAtATime, policyVersion } from "./policy-state.js";
import { closeAuthFailures, flushAuthFailures, recordAuthFailure } from "./auth-failures.js";
import { closeRefusals, flushRefusals } from "./refusals.js";
import { rotateMasterKey, type RotationResult } from "./rotation.js";
import { rotateSecretByHook, rotateSecretByHookIfDue, settleHookRuns, type HookRotationResult, type RotationHooks } from "./rotation-hooks.js";
import { Signals, type SignalListener } from "./signals.js";
import * as secrets from "./secrets.js";
import * as tokenState from "./token-state.js";
import * as tokens from "./tokens.js";
import * as approvalCalls from "./approval-calls.js";
import type { ShownApproval } from "./approvals.js";
import { whoami, type Whoami } from "./whoami.js";
import { applyRemoteChange, checkPolicyStamp, formatPolicyStamp, POLICY_META } from "./remote-changes.js";
import { openPolicyStamp, refreshPolicyStamp, reloadLimitsIn, stampedHere } from "./policy-sync.js";
import { checkLimits, type Limits as VaultLimits } from "./limits.js";

/** `limits`, checked (a program embedding the vault is held to what lessor.toml's parser allows). */
function checkedLimits(limits: VaultLimits): VaultLimits {
  checkLimits(limits);
  return limits;
}
import { catchUpKeys, CURRENT_KEY_META } from "./key-reload.js";
import { steadyClock } from "./clock.js";
import type { AuditFilter, AuditRecord, Identity, LeaseFilter, LeaseRecord, SecretFilter, SecretRecord, SecretRef, TokenInfo } from "../base/types.js";

/** How to open a vault. */
export interface VaultOptions {
  store: Store;
  keys: KeySource;
  /**
   * A policy, or a loader that `reloadPolicy` calls again. Default: deny everything. A loader that
   * fails does not stop the vault: it opens with a broken policy that denies every grant and says why
   * (see {@link VaultStatus.policy}).
   */
  policy?: Policy | (() => Promise<Policy>);
  /** Extra audit sinks (a JSONL file, a log); the store's audit table is always written. */
  sinks?: AuditSink[];
  /** AEAD for new values. Default "aes-256-gcm". */
  cipher?: Alg;
  limits?: Partial<Limits>;
  /**
   * Clock in epoch ms (tests), used as it is. Default: the store's clock when it has one
   * ({@link Store.now}), else Date.now, made steady (./clock.ts: it never goes back).
   */
  now?: () => number;
  /** Commands that make a secret's new value (`[[rotate]]` in lessor.toml; src/vault/rotation-hooks.ts). */
  rotationHooks?: RotationHooks;
  /**
   * On a store several instances share: put this vault's grant limits in force there, audited as
   * `limits_pinned` by this identity (a daemon starting). Without it the limits in force are left as
   * they are (src/vault/policy-sync.ts openPolicyStamp).
   */
  claimLimits?: Identity;
  /**
   * `lessor init`: a store that names no master key yet (no value stored, no audit checkpoint, no
   * key recorded) records this keyring's current key as the one it was made with
   * ({@link INIT_KEY_META}), so that from the first open on a different key is refused, not taken as
   * the vault's by the first write made under it.
   */
  bindKey?: boolean;
  /**
   * This process, and whether another named in the store has ended (src/config/local-processes.ts
   * localProcesses): a master-key rotation claim left by a process that died is taken over at once.
   * Absent, such a claim blocks rotations until it lapses (src/vault/rotation-claim.ts).
   */
  processes?: Processes;
}

/** The identity of the program embedding the vault. */
export const EMBEDDED_ADMIN: Identity = Object.freeze({ id: "embedded", role: "admin", transport: "embedded" });

/** The policy part of {@link VaultStatus}: the file, its version, and whether it loaded. */
export interface PolicyStatus extends PolicyVersion {
  /** Where the policy is read from (admins only; null for other roles). */
  source: string | null;
  rules: number;
  /** For a broken policy: why it could not be loaded (every grant is denied until it is fixed and reloaded); else null (and always null for roles other than admin). */
  error: string | null;
}

/**
 * What {@link VaultSession.status} reports: the brief state a health check needs, the same for
 * every role. The detail is in {@link VaultSession.describe}.
 */
export interface VaultHealth {
  /** The trail's last seq (see {@link VaultSession.status} for how fresh). */
  auditHead: number;
  /** True while the killswitch lockout is engaged (no lease is granted). */
  killswitch: boolean;
  /**
   * "ok"; "broken" when the policy file did not load (every grant denied); "stale" when the shared
   * store has another policy in force (every grant denied here until it is in line).
   */
  policy: "ok" | "broken" | "stale";
}

/**
 * What {@link VaultSession.describe} reports. File paths (`keySource`, `policy.source`) and the
 * policy's load error are shown to admins only; for other roles they are null.
 */
export interface VaultStatus {
  store: string;
  keySource: string | null;
  keyId: string;
  keyIds: string[];
  cipher: Alg;
  policy: PolicyStatus;
  /** The killswitch lockout (see src/vault/lockout.ts): while engaged, no lease is granted. */
  killswitch: KillswitchState;
  /** The heartbeat dead-man switch (see src/vault/heartbeat.ts). */
  heartbeat: heartbeats.HeartbeatStatus;
  auditHead: number;
}

/** An {@link Explanation} plus the version of the policy that answered. */
export interface VaultExplanation extends Explanation {
  policy: PolicyVersion;
}

/** An open vault. Create sessions from it; close it when done. */
/**
 * The store's clock when it keeps one (a shared store), else this process's, made steady
 * (./clock.ts): never back, not even across a restart, from the time of the trail's last event.
 */
async function vaultClock(store: Store): Promise<() => number> {
  const wall = store.now ? () => store.now!() : () => Date.now();
  const [last] = await store.queryAudit({ order: "desc", limit: 1 });
  return steadyClock(wall, last?.time ?? null);
}

/**
 * The meta key naming the master key id `lessor init` made the vault with. It binds the vault to that
 * key while nothing else does: once a value is stored or an audit event written, their key ids do
 * (and a rotation may retire this one).
 */
export const INIT_KEY_META = "init_key_id";

/** True when a rotation recorded in `store` (its trail, or its archive of audit keys) retired master key `id`. */
async function isRetired(store: Store, ring: Keyring, id: string, vaultId: string | null): Promise<boolean> {
  const keys = new AuditKeys(ring, vaultId);
  try {
    return (await retiredKeys(store, keys)).has(id);
  } finally {
    keys.wipe();
  }
}

/** True when the archive of audit keys holds `id`, sealed under a key of `ring`. */
async function isArchived(store: Store, ring: Keyring, id: string): Promise<boolean> {
  if (ring.get(id)) return false;
  // Which entries open depends on the keyring alone, not on the vault's id.
  const keys = new AuditKeys(ring, null);
  try {
    return (await keys.archivedIds(store)).includes(id);
  } finally {
    keys.wipe();
  }
}

/**
 * For a store that holds no vault yet (no key named, no checkpoint, no value): records a new vault id
 * (./vault-id.ts) and, with `bind` ({@link VaultOptions.bindKey}), `keyId` as the key the store was
 * made with. Returns the vault's id as the store holds it afterwards (null: a vault made before vaults
 * had ids).
 */
async function bindVault(store: Store, keyId: string, bind: boolean): Promise<string | null> {
  // A store is bare with no key named, no checkpoint and no value; a new id also needs no token row
  // (one written without the id would stop authenticating). Read one at a time, first outside a
  // transaction: opening a vault that has its id takes one read and no write lock (and, on a shared
  // store, one connection).
  const wants = async (r: StoreReader): Promise<{ id: boolean; made: boolean }> => {
    const id = (await r.getMeta(VAULT_ID_META)) === null;
    const made = bind && (await r.getMeta(INIT_KEY_META)) === null;
    if (!id && !made) return { id, made };
    const bare = (await r.getMeta(CURRENT_KEY_META)) === null && (await r.getCheckpoint()) === null && (await r.keyIdsInUse()).length === 0;
    return { id: id && bare && (await r.listTokens()).length === 0, made: made && bare };
  };
  const seen = await wants(store);
  if (seen.id || seen.made)
    await store.transaction(async (tx) => {
      const now = await wants(tx);
      if (now.id) await tx.setMeta(VAULT_ID_META, newVaultId());
      if (now.made) await tx.setMeta(INIT_KEY_META, keyId);
    });
  return store.getMeta(VAULT_ID_META);
}

export class Vault {
  readonly #ctx: VaultContext;
  #closing: Promise<void> | null = null;

  private constructor(ctx: VaultContext) {
    this.#ctx = ctx;
  }

  /**
   * Loads the keyring and the policy, and checks that the keyring holds every key the stored data
   * needs (a wrong master key fails here with key_unavailable, before any request).
   */
  static async open(opts: VaultOptions): Promise<Vault> {
    let ring = await opts.keys.load();
    let auditKeys: AuditKeys | undefined;
    try {
      // The keys the stored values and the audit checkpoint name; before either exists, the key
      // lessor init made the vault with: a vault made under one key never opens under another.
      const missingFrom = async (r: Keyring): Promise<string[]> => {
        const needed = new Set(await opts.store.keyIdsInUse());
        const cp = await opts.store.getCheckpoint();
        // A checkpoint under a key this keyring archived (a retired key; verify and the audit guard
        // refuse it) does not keep the vault from opening: audit verify and recover must run.
        if (cp && !(await isArchived(opts.store, r, cp.keyId))) needed.add(cp.keyId);
        const made = needed.size === 0 ? await opts.store.getMeta(INIT_KEY_META) : null;
        if (made !== null) needed.add(made);
        return [...needed].filter((id) => !r.get(id));
      };
      let missing = await missingFrom(ring);
      if (missing.length > 0) {
        // Another process may be rotating the master key: it promoted a new key after the source was
        // read here and has begun to wrap under it. Read the source once more before refusing.
        const again = await opts.keys.load();
        ring.wipe();
        ring = again;
        missing = await missingFrom(ring);
      }
      if (missing.length > 0)
        throw new VaultError(
          "key_unavailable",
          `the master key from ${opts.keys.describe} does not match this vault (it needs key ${missing.join(", ")}, loaded ${ring.ids().join(", ")}); use the key this vault was created with`,
        );
      const vaultId = await bindVault(opts.store, ring.current.id, opts.bindKey === true);
      // The key the store records as current is the one written under, whatever the source gives
      // first (a retired key put back, a planted one): src/vault/key-reload.ts checkKeysIn.
      // Never a key a rotation retired (the row is not authenticated): then the source's order stands,
      // and the first write is refused with what to do (checkKeysIn).
      const recorded = await opts.store.getMeta(CURRENT_KEY_META);
      if (recorded !== null && ring.current.id !== recorded && ring.get(recorded) && !(await isRetired(opts.store, ring, recorded, vaultId))) {
        const reordered = withCurrent(ring, recorded);
        ring.wipe();
        ring = reordered;
      }
      const loadPolicy = typeof opts.policy === "function" ? opts.policy : null;
      const policy = loadPolicy !== null ? await loadOrBroken(loadPolicy) : ((opts.policy as Policy | undefined) ?? emptyPolicy());
      const ctx: VaultContext = {
        store: opts.store,
        keys: opts.keys,
        keyring: ring,
        auditKeys: (auditKeys = new AuditKeys(ring, vaultId)),
        auditBroken: null,
        policy,
        loadPolicy,
        sinks: opts.sinks ?? [],
        now: opts.now ?? (await vaultClock(opts.store)),
        vaultId,
        cipher: opts.cipher ?? "aes-256-gcm",
        // A limit given as undefined keeps its default (a Partial<Limits> built from optional settings).
        limits: checkedLimits({ ...DEFAULT_LIMITS, ...Object.fromEntries(Object.entries(opts.limits ?? {}).filter(([, v]) => v !== undefined)) }),
        claimsLimits: opts.claimLimits !== undefined,
        closed: false,
        signals: new Signals(),
        auditSeen: null,
        ...(opts.rotationHooks !== undefined ? { rotationHooks: opts.rotationHooks } : {}),
        ...(opts.processes !== undefined ? { processes: opts.processes } : {}),
      };
      installPolicy(ctx, policy);
      await checkKillswitch(ctx);
      // On a shared store, whether this policy is the one in force there (src/vault/policy-sync.ts).
      await openPolicyStamp(ctx, opts.claimLimits ?? null);
      // The dead-man switch arms on the first open with [vault] heartbeat set. A vault whose audit trail
      // refuses writes opens all the same (an admin must be able to recover it); grants are refused there.
      await armHeartbeat(ctx).catch(() => undefined);
      return new Vault(ctx);
    } catch (e) {
      auditKeys?.wipe();
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

  /**
   * Follows the changes other instances sharing the store commit (when the store has a change feed,
   * as PostgreSQL does): their token revocations, killswitch and policy reloads raise this vault's
   * signals as local ones do (src/vault/remote-changes.ts). A daemon calls this once; one-shot users
   * (the CLI) need not. Also raises `policy_stale` at once if this instance's policy is not the one
   * the store names as in force (it then grants nothing: src/vault/policy-sync.ts). Returns the
   * function that stops following (close() stops it too).
   */
  followChanges(): () => void {
    const ctx = this.#ctx;
    if (ctx.closed || ctx.store.changes === undefined) return () => {};
    const off = ctx.store.changes((c) => applyRemoteChange(ctx, c));
    void checkPolicyStamp(ctx).catch(() => {});
    return off;
  }

  /**
   * Re-reads the persisted killswitch lockout; when another process sharing the store pulled or
   * released it since this process last looked, raises the killswitch signal (so a server closes its
   * agents' connections). A daemon calls this about once a second. Returns the state read.
   */
  async checkKillswitch(): Promise<KillswitchState> {
    if (this.#ctx.closed) throw new VaultError("unavailable", "the vault is closed; open it again");
    // The dead-man switch's deadline passed with nothing asked: it fires here (./heartbeat.ts).
    await checkDeadman(this.#ctx);
    return checkKillswitch(this.#ctx);
  }

  /** A session acting as `identity` (as decided by the transport, never by a request). */
  session(identity: Identity): VaultSession {
    objectParam(identity, "an identity");
    // Audited as given: an id or transport that is not one line of text would be stored other than it was hashed.
    for (const k of ["id", "transport"] as const) {
      checkPlainText(identity[k], `the identity's ${k}`, 200);
      if (identity[k] === "") throw new VaultError("invalid_request", `the identity's ${k} must not be empty`);
    }
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
   * hello). Throws VaultError("unauthenticated"), audited as auth_failed, naming `remote` (the
   * peer's address, a TCP client's) when given.
   */
  authenticateToken(token: string, transport: string, remote?: string | null): Promise<Identity> {
    return tokens.authenticateToken(this.#ctx, token, transport, remote);
  }

  /**
   * The daemon's side of the token handshake: a fresh nonce and the proof that it holds the hash of
   * token `tokenId`, bound to the client's nonce and the endpoint `binding` (see src/crypto/token-proof.ts).
   * An unknown id gets a proof under a stand-in key, after the same work. Nothing is audited.
   */
  tokenChallenge(tokenId: string, clientNonce: Uint8Array, binding: string): Promise<{ nonce: Buffer; proof: Buffer }> {
    return tokens.tokenChallenge(this.#ctx, tokenId, clientNonce, binding);
  }

  /**
   * The vault's clock, in epoch ms: the shared store's when it keeps one ({@link Store.now}), so a
   * transport judges a token's expiry as the vault does.
   */
  now(): number {
    return this.#ctx.now();
  }

  /**
   * Why a token that authenticated in this process may no longer be used ("token revoked", "token
   * expired"), or null while it may. From memory, no store read: cheap enough for every request.
   * Revocations by this process count at once; by another process, once {@link recheckTokens} saw them.
   */
  tokenStanding(tokenId: string): "token revoked" | "token expired" | null {
    return tokenState.tokenStanding(this.#ctx, tokenId);
  }

  /**
   * Reads the given tokens from the store and raises the `token_revoked` signal for each that another
   * process revoked since this one last looked. A server calls this about twice a second with the
   * tokens its connections hold. Returns the ids newly found revoked.
   */
  recheckTokens(tokenIds: Iterable<string>): Promise<string[]> {
    if (this.#ctx.closed) return Promise.resolve([]);
    return tokenState.recheckTokens(this.#ctx, tokenIds);
  }

  /**
   * Audits, as auth_failed by `who`, that an authenticated connection was cut because its credentials
   * stopped holding (`reason`: "token revoked", "token expired"). `detail` must never hold a secret.
   */
  async recordConnectionCut(who: Identity, reason: string, detail?: Record<string, string | number | boolean | null>): Promise<void> {
    const actor: Identity = { id: who.id, role: who.role, transport: who.transport };
    await commit(this.#ctx, async (_tx, audit) => {
      await audit({ type: "auth_failed", actor, agent: who.agent ?? null, outcome: "denied", reason, detail: detail ?? null });
    });
  }

  /**
   * Audits a refused connection (an unknown uid, a missing token) as auth_failed, in aggregate: the
   * first failure from a source (transport plus `detail.uid` or `detail.remote`) is written before
   * this resolves; later ones are counted and written as one row per source and window, with
   * `detail.count` (see src/vault/auth-failures.ts). Transports call it; `reason` and `detail` must
   * never hold a secret (a token's secret part, a passphrase).
   */
  recordAuthFailure(transport: string, reason: string, detail?: Record<string, string | number | boolean | null>): Promise<void> {
    return recordAuthFailure(this.#ctx, transport, reason, detail ?? null);
  }

  /** Writes the failed authentications counted but not yet audited (see {@link recordAuthFailure}). */
  flushAuthFailures(): Promise<void> {
    return flushAuthFailures(this.#ctx);
  }

  /**
   * Writes the refused calls counted but not yet audited: past a burst per identity and window, a
   * refusal is counted and written in one summary row per identity and window (src/vault/refusals.ts).
   */
  flushRefusals(): Promise<void> {
    return flushRefusals(this.#ctx);
  }

  /**
   * Writes the failed authentications and refused calls still counted, closes the store and sinks and
   * wipes the keys. Throws (after closing) if those could not be audited.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    if (this.#ctx.closed) return;
    // A rotation hook running has changed, or is changing, the credential at its issuer: what it makes
    // is stored (or its failure audited) before the store closes. Each is bounded by its time limit.
    await settleHookRuns(this.#ctx);
    // The failed authentications and refusals still counted are written first, while the store is open.
    let unwritten: unknown = null;
    try {
      await closeAuthFailures(this.#ctx);
    } catch (e) {
      unwritten = e;
    }
    try {
      await closeRefusals(this.#ctx);
    } catch (e) {
      unwritten ??= e;
    }
    this.#ctx.closed = true;
    await this.#ctx.store.close();
    for (const s of this.#ctx.sinks) await s.close?.();
    this.#ctx.keyring.wipe();
    this.#ctx.auditKeys.wipe();
    if (unwritten !== null) throw unwritten;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Redacted: a vault never prints its state. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `Vault(${this.#ctx.store.kind}, ${this.#ctx.closed ? "closed" : "open"})`;
  }
}

/**
 * One caller's view of the vault. Every method checks the caller's role and audits what it did.
 * The methods a daemon serves are bound to these in one table, src/protocol/registry.ts: a new method
 * there needs only its function here.
 */
export class VaultSession {
  readonly #ctx: VaultContext;
  /** Who this session acts as. */
  declare readonly identity: Identity;

  /** @internal Use {@link Vault.session}. */
  constructor(ctx: VaultContext, identity: Identity) {
    this.#ctx = ctx;
    // Fixed for the session's life: code holding an agent's session must not rewrite (or shadow with a
    // getter) the identity every method acts as.
    Object.defineProperty(this, "identity", { value: identity, enumerable: true, writable: false, configurable: false });
  }

  /** The vault's clock, epoch ms ({@link Vault.now}): what "live" and "expired" are judged by. */
  now(): number {
    return this.#ctx.now();
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
  /** Rotates a secret by its configured hook: the command's output becomes the new version. Admin. */
  rotateSecretByHook(ref: SecretRef): Promise<HookRotationResult> {
    return rotateSecretByHook(this.#ctx, this.identity, ref);
  }
  /**
   * Rotates by the hook only while the current version is at least `everyMs` old, judged as the run is
   * claimed (a schedule shared by several daemons asks the issuer once per period); null when not due.
   * Admin. In-process only (the daemon's schedule), not a protocol method.
   */
  rotateSecretByHookIfDue(ref: SecretRef, everyMs: number): Promise<HookRotationResult | null> {
    return rotateSecretByHookIfDue(this.#ctx, this.identity, ref, everyMs);
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
  /** Requests a lease (policy-checked). Leases come back as {@link shownLease} shows them to this caller. */
  async requestLease(req: leases.LeaseRequest): Promise<LeaseRecord> {
    return shownLease(this.identity, await leases.requestLease(this.#ctx, this.identity, req));
  }
  /**
   * Requests a lease and uses it once, in one transaction: one durable commit holding the grant, the
   * use and both audit events. If the use is refused, the new lease is revoked in that same commit and
   * the refusal is thrown. See {@link leases.requestLeaseAndAccess}.
   */
  async requestLeaseAndAccess(req: leases.LeaseRequest, target?: leases.AccessTarget): Promise<leases.AccessResult> {
    const got = await leases.requestLeaseAndAccess(this.#ctx, this.identity, req, target);
    return { ...got, lease: shownLease(this.identity, got.lease) };
  }
  /** Uses a lease once and returns the value. */
  async accessSecret(leaseId: string, target?: leases.AccessTarget): Promise<leases.AccessResult> {
    const got = await leases.accessSecret(this.#ctx, this.identity, leaseId, target);
    return { ...got, lease: shownLease(this.identity, got.lease) };
  }
  /** Extends a lease within its rule's bounds. */
  async renewLease(leaseId: string, opts?: { ttl?: number | string }): Promise<LeaseRecord> {
    return shownLease(this.identity, await leases.renewLease(this.#ctx, this.identity, leaseId, opts));
  }
  /** Revokes one lease. */
  revokeLease(leaseId: string, reason?: string): Promise<{ revoked: boolean }> {
    return leases.revokeLease(this.#ctx, this.identity, leaseId, reason);
  }
  /** Writes the audit events of requests the injecting proxy handled, in one commit (src/vault/proxy-requests.ts). */
  recordProxyRequests(reports: readonly proxyRequests.ProxyRequestReport[]): Promise<{ revoked: number }> {
    return proxyRequests.recordProxyRequests(this.#ctx, this.identity, reports);
  }

  /** Writes the `tool_call` audit event of one tool call an MCP server made for an agent (src/vault/tool-calls.ts). */
  recordToolCall(report: toolCalls.ToolCallReport): Promise<{ recorded: true }> {
    return toolCalls.recordToolCall(this.#ctx, this.identity, report);
  }

  /** Writes the `access_denied` event of a refusal a client made before asking the vault (src/vault/client-refusals.ts). */
  recordRefusal(refusal: clientRefusals.ClientRefusal): Promise<{ recorded: true }> {
    return clientRefusals.recordClientRefusal(this.#ctx, this.identity, refusal);
  }

  /** Revokes every lease of an agent not yet revoked or expired (used-up ones too). */
  revokeAllForAgent(agent: string, reason?: string): Promise<{ revoked: number }> {
    return leases.revokeAllForAgent(this.#ctx, this.identity, agent, reason);
  }
  /**
   * Pulls the killswitch: revokes every unexpired lease (used up or not) and engages a persisted lockout under which no
   * lease is granted until {@link releaseKillswitch}. Admin.
   */
  killswitch(reason?: string): Promise<{ revoked: number }> {
    return leases.killswitch(this.#ctx, this.identity, reason);
  }
  /** Releases the killswitch lockout; `released` is false when it was not engaged. Admin. */
  releaseKillswitch(reason?: string): Promise<{ released: boolean }> {
    return leases.releaseKillswitch(this.#ctx, this.identity, reason);
  }
  /**
   * Records a heartbeat for the dead-man switch (`[vault] heartbeat`): its deadline moves to now plus
   * the period. Admin. See {@link heartbeats.heartbeat}.
   */
  heartbeat(note?: string): Promise<heartbeats.HeartbeatStatus> {
    return heartbeats.heartbeat(this.#ctx, this.identity, note);
  }
  /** Lists leases visible to this caller (an agent is not told who took a lease for it: {@link shownLease}). */
  async listLeases(filter?: LeaseFilter): Promise<LeaseRecord[]> {
    return (await leases.listLeases(this.#ctx, this.identity, filter)).map((l) => shownLease(this.identity, l));
  }

  // ---- approvals (src/vault/approvals.ts) ----
  /** Asks a person to approve a lease request whose rule needs approval; see {@link approvalCalls.requestApproval}. */
  async requestApproval(ask: approvalCalls.ApprovalAsk): Promise<approvalCalls.ApprovalAnswer> {
    return approvalCalls.requestApproval(this.#ctx, this.identity, objectParam(ask, "the approval request"));
  }
  /** Pending approvals (all, with `all`) the caller may see. Admin or orchestrator. */
  async listApprovals(opts?: { all?: boolean }): Promise<ShownApproval[]> {
    return approvalCalls.listApprovals(this.#ctx, this.identity, opts === undefined ? undefined : objectParam(opts, "the options"));
  }
  /** Approves or denies a pending approval. Admin. */
  decideApproval(id: string, approve: boolean, reason?: string): Promise<ShownApproval> {
    return approvalCalls.decideApproval(this.#ctx, this.identity, id, approve, reason);
  }
  /** Withdraws the approvals not yet used that `requestedBy` asked for `agent` (removed, not denied). Admin. */
  withdrawApprovals(requestedBy: string, agent: string, reason: string): Promise<{ withdrawn: number }> {
    return approvalCalls.withdrawApprovals(this.#ctx, this.identity, requestedBy, agent, reason);
  }

  // ---- admin ----
  /**
   * Queries the audit trail. Admin. An agent, secret (`scope/name`, or a bare name in scope `global`)
   * or lease id no event can carry is refused (invalid_request) rather than answered with no events,
   * so that a mistyped filter is not read as "nothing happened".
   */
  async auditQuery(filter: AuditFilter = {}): Promise<AuditRecord[]> {
    optionalObjectParam(filter, "the audit filter");
    if (filter.limit !== undefined && (!Number.isSafeInteger(filter.limit) || filter.limit < 1))
      throw new VaultError("invalid_request", "the audit filter's limit must be a whole number from 1");
    if (filter.agent !== undefined) checkAgentId(filter.agent);
    if (filter.leaseId !== undefined) leases.checkLeaseId(filter.leaseId);
    if (filter.secret !== undefined && typeof filter.secret !== "string")
      throw new VaultError("invalid_request", 'the audit filter\'s secret is a string "scope/name"');
    const secret = filter.secret === undefined ? undefined : refString(parseRefString(filter.secret));
    await this.#requireAdmin("read the audit trail");
    return this.#ctx.store.queryAudit({ ...filter, ...(secret !== undefined ? { secret } : {}), limit: Math.min(filter.limit ?? 100, 10_000) });
  }
  /**
   * Verifies the audit chain and checkpoint, and lists the recoveries (breaks) in the trail. Admin.
   * A trail that verifies on its own but that this process's commit guard refuses (in a running
   * process: a head older than one it committed, an older checkpoint put back) does not verify either,
   * nor one a secret's current version contradicts (an older version put back: src/vault/version-floor.ts).
   */
  async auditVerify(): Promise<AuditVerifyResult> {
    await this.#requireAdmin("verify the audit trail");
    // Another instance may have rotated the master key: load it first (src/vault/key-reload.ts).
    await catchUpKeys(this.#ctx);
    const r = await verifyAudit(this.#ctx.store, this.#ctx.keyring, this.#ctx.vaultId);
    if (!r.ok) return r;
    // A trail that verifies can still show a store edited behind it: a secret put back to an older version.
    const problem = (await guardProblem(this.#ctx)) ?? (await rolledBackProblem(this.#ctx.store));
    return problem === null ? r : { ...r, ok: false, problem };
  }
  /**
   * Recovers a broken audit trail: appends an `audit_break` event recording what was found and
   * `reason`, then the brake events deferred meanwhile, so that audited writes resume. Does nothing
   * (recovered: false) when the trail is not broken. Admin. See src/vault/audit-recover.ts.
   */
  async auditRecover(p: AuditRecoverParams): Promise<AuditRecoverResult> {
    return auditRecover(this.#ctx, this.identity, objectParam(p, "the recovery's parameters"));
  }
  /**
   * Re-reads the policy. A file that does not load puts a broken policy in force (fail closed: every
   * grant is denied, saying why, until a reload succeeds), is audited as policy_reloaded with outcome
   * error, and throws VaultError("policy_invalid"). Either way the vault raises the policy_reloaded
   * signal. Admin. Reloads run one at a time.
   */
  async reloadPolicy(): Promise<{ rules: number; digest: string }> {
    await this.#requireAdmin("reload the policy");
    const ctx = this.#ctx;
    if (!ctx.loadPolicy) throw new VaultError("invalid_request", "this vault was opened with a fixed policy; there is nothing to reload");
    const loader = ctx.loadPolicy;
    return oneReloadAtATime(ctx, () => this.#reloadFrom(loader));
  }
  /** One reload (see {@link reloadPolicy}), never overlapping another. */
  async #reloadFrom(loader: () => Promise<Policy>): Promise<{ rules: number; digest: string }> {
    const ctx = this.#ctx;
    const next = await loadOrBroken(loader);
    if (next.error !== undefined) {
      // Deny first: the file the admin just edited may have meant to take a grant away.
      const v = installPolicy(ctx, next);
      let limits: string | undefined;
      await commit(ctx, async (tx, audit, now) => {
        limits = await reloadLimitsIn(ctx, tx, audit, this.identity);
        // The stamp tells the other instances sharing the store to reload too (src/vault/remote-changes.ts).
        await tx.setMeta(POLICY_META, formatPolicyStamp({ digest: next.digest, state: "broken", at: now, by: this.identity.id, ...(limits === undefined ? {} : { limits }) }));
        await audit({ type: "policy_reloaded", actor: this.identity, outcome: "error", reason: withheldQuotes(next.error!).slice(0, 500), detail: { digest: next.digest, source: next.source.slice(0, 300), load: v.load, state: "broken" } });
      });
      stampedHere(ctx, { digest: next.digest, state: "broken", at: ctx.now(), by: this.identity.id, ...(limits === undefined ? {} : { limits }) });
      ctx.signals.emit({ type: "policy_reloaded", ok: false });
      throw new VaultError("policy_invalid", `${next.error}; every grant is now denied until you fix the policy and run lessor policy reload again`);
    }
    // In force before the reload's commit is queued: a grant decided by the old rules cannot commit
    // after the policy_reloaded event (the old rules may be what the admin meant to take away).
    const previous = ctx.policy;
    const load = installPolicy(ctx, next).load;
    let limits: string | undefined;
    try {
      await commit(ctx, async (tx, audit, now) => {
        limits = await reloadLimitsIn(ctx, tx, audit, this.identity);
        await tx.setMeta(POLICY_META, formatPolicyStamp({ digest: next.digest, state: "ok", at: now, by: this.identity.id, ...(limits === undefined ? {} : { limits }) }));
        await audit({ type: "policy_reloaded", actor: this.identity, outcome: "ok", detail: { digest: next.digest, rules: next.rules.length, source: next.source, load } });
      });
    } catch (e) {
      // Unless the store's own news put another policy in force meanwhile (src/vault/policy-sync.ts followPolicy).
      if (ctx.policy === next) installPolicy(ctx, previous);
      throw e;
    }
    stampedHere(ctx, { digest: next.digest, state: "ok", at: ctx.now(), by: this.identity.id, ...(limits === undefined ? {} : { limits }) });
    ctx.signals.emit({ type: "policy_reloaded", ok: true });
    return { rules: next.rules.length, digest: next.digest };
  }
  /**
   * Says which rule decides `agent` × `secret` × `domain`, and why, and which version of the policy
   * answered (a broken policy answers deny, with the load error to admins). Admin for any agent; an
   * orchestrator for the agents it acts for and an agent for itself, narrowed to the rules that name
   * that agent (src/vault/own-access.ts).
   */
  async explain(agent: string, secret: SecretRef, domain?: string): Promise<VaultExplanation> {
    this.#open();
    // As status does: read the stamp, so that an instance whose policy is not the one in force says
    // so (its version is STALE) instead of answering "allow" while every grant it decides is refused.
    await refreshPolicyStamp(this.#ctx);
    return ownAccess.explainAccess(this.#ctx, this.identity, agent, secret, domain);
  }
  /**
   * The secrets an agent's grants cover (name, kind, description, granting rule; never a value). Any
   * role: an agent for itself only, an orchestrator for the agents it acts for. See src/vault/own-access.ts.
   */
  async listGranted(filter?: ownAccess.GrantedFilter): Promise<ownAccess.GrantedSecret[]> {
    this.#open();
    return ownAccess.listGranted(this.#ctx, this.identity, optionalObjectParam(filter, "the filter"));
  }
  /** Rotates the master key, re-wrapping every DEK. Admin. */
  rotateMasterKey(onBatch?: (done: number) => void): Promise<RotationResult> {
    return rotateMasterKey(this.#ctx, this.identity, onBatch);
  }
  /** Creates a bearer token bound to an identity; the token string is returned once. Admin. */
  createToken(p: tokens.TokenParams): Promise<TokenInfo & { token: string }> {
    return tokens.createToken(this.#ctx, this.identity, p);
  }
  /** Lists tokens (never their secrets), every one or those `filter` selects. Admin. */
  listTokens(filter?: TokenFilter): Promise<TokenInfo[]> {
    return tokens.listTokens(this.#ctx, this.identity, filter);
  }
  /** Revokes a token at once. Admin. */
  revokeToken(id: string): Promise<{ revoked: boolean }> {
    return tokens.revokeToken(this.#ctx, this.identity, id);
  }
  /** Who this session acts as, and for a token identity the token's name, id and expiry. Any role. */
  async whoami(): Promise<Whoami> {
    this.#open();
    return whoami(this.#ctx, this.identity);
  }
  /** Deletes long-expired leases. Admin. */
  async gc(): Promise<{ leasesDeleted: number }> {
    await this.#requireAdmin("collect garbage");
    return { leasesDeleted: await leases.gcLeases(this.#ctx) };
  }
  /**
   * The vault's health in brief (no secrets, no paths): audit head, killswitch, policy state. It is
   * what clients use as a health check, so it is small and costs no database read while what it
   * reports is fresh: `auditHead` is exact for this process's own writes, and writes by another
   * process sharing the store show within AUDIT_HEAD_MAX_AGE_MS (one second); the killswitch and the
   * policy stamp are read at most a second ago likewise. Any role.
   */
  async status(): Promise<VaultHealth> {
    this.#open();
    const ctx = this.#ctx;
    const auditHead = await this.#auditHead();
    const killswitch = (await killswitchState(ctx)).engaged;
    await refreshPolicyStamp(ctx);
    const v = policyVersion(ctx);
    return { auditHead, killswitch, policy: v.stale ? "stale" : v.state };
  }

  /**
   * The vault's state in full (no secrets): store, master key ids, cipher, policy version, killswitch
   * detail, audit head (as fresh as in {@link status}). Any role; the key source and policy file
   * paths and a broken policy's load error are shown to admins only (null for others), so an agent
   * learns nothing about the owner's files from it.
   */
  async describe(): Promise<VaultStatus> {
    this.#open();
    const ctx = this.#ctx;
    const auditHead = await this.#auditHead();
    const killswitch = await killswitchState(ctx);
    await refreshPolicyStamp(ctx);
    const v = policyVersion(ctx);
    const admin = this.identity.role === "admin";
    return {
      store: ctx.store.kind,
      keySource: admin ? ctx.keys.describe : null,
      keyId: ctx.keyring.current.id,
      keyIds: ctx.keyring.ids(),
      cipher: ctx.cipher,
      policy: {
        load: v.load,
        digest: v.digest,
        loadedAt: v.loadedAt,
        state: v.state,
        ...(v.stale ? { stale: v.stale } : {}),
        source: admin ? ctx.policy.source : null,
        rules: ctx.policy.rules.length,
        error: admin ? (ctx.policy.error ?? null) : null,
      },
      killswitch,
      heartbeat: await heartbeats.heartbeatStatus(ctx, this.identity),
      auditHead,
    };
  }

  async #auditHead(): Promise<number> {
    const ctx = this.#ctx;
    let head = auditHeadSeen(ctx);
    if (head === undefined) {
      head = (await ctx.store.auditHead())?.seq ?? 0;
      sawAuditHead(ctx, head);
    }
    return head;
  }

  /** Refuses once the vault is closed: its keys are wiped, and what it would report is no longer kept. */
  #open(): void {
    if (this.#ctx.closed) throw new VaultError("unavailable", "the vault is closed; open it again");
  }

  async #requireAdmin(what: string): Promise<void> {
    const err = roleError(this.identity, ["admin"], what);
    if (!err) return;
    await commit(this.#ctx, (_tx, audit) => denied(audit, this.identity, err));
  }
}

