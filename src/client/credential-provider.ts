/**
 * Leases as objects: a {@link CredentialProvider} hands out {@link LeasedCredential}s, which fetch the
 * value on demand and, when disposed (`await using`), revoke the lease and wipe every value they
 * handed out.
 */
import type { SecretBytes } from "../crypto/secret-bytes.js";
import { VaultError } from "../base/errors.js";
import { optionalObjectParam } from "../base/shape.js";
import type { LeaseRecord } from "../base/types.js";
import type { AccessTargetInput, LessorMethods, SecretSpec } from "./facade.js";

const inspectSymbol = Symbol.for("nodejs.util.inspect.custom");

/** Defaults applied to every lease a provider requests. */
export interface ProviderDefaults {
  agent?: string;
  ttl?: number | string;
}

/** Options of {@link CredentialProvider.lease}. */
export interface LeaseOptions {
  domains?: string[];
  ttl?: number | string;
  maxUses?: number;
  agent?: string;
}

/** Requests leases through a LessorClient (or any {@link LessorMethods}, such as an in-process backend). */
export class CredentialProvider {
  readonly #client: LessorMethods;
  readonly #defaults: ProviderDefaults;

  constructor(client: LessorMethods, defaults: ProviderDefaults = {}) {
    this.#client = client;
    this.#defaults = { ...defaults };
  }

  /** Requests a lease on `secret`; dispose the result (or `await using`) to revoke it. */
  async lease(secret: SecretSpec, opts: LeaseOptions = {}): Promise<LeasedCredential> {
    optionalObjectParam(opts, "the lease options");
    const agent = opts.agent ?? this.#defaults.agent;
    const ttl = opts.ttl ?? this.#defaults.ttl;
    const lease = await this.#client.requestLease({
      secret,
      ...(agent !== undefined ? { agent } : {}),
      ...(ttl !== undefined ? { ttl } : {}),
      ...(opts.domains !== undefined ? { domains: opts.domains } : {}),
      ...(opts.maxUses !== undefined ? { maxUses: opts.maxUses } : {}),
    });
    return new LeasedCredential(this.#client, lease);
  }

  [inspectSymbol](): string {
    return `CredentialProvider(${this.#defaults.agent === undefined ? "own agent" : `agent ${this.#defaults.agent}`})`;
  }
}

/** Codes that mean the lease is already over, so there is nothing left to revoke. */
const ALREADY_OVER = new Set(["lease_revoked", "lease_expired", "lease_not_found"]);

/** One lease. {@link value} fetches the secret; disposal revokes the lease and wipes every value. */
export class LeasedCredential {
  readonly #client: LessorMethods;
  #lease: LeaseRecord;
  #values: SecretBytes[] = [];
  #released = false;
  /** Set by the first disposal: no value is handed out after it, even while its revocation is retried. */
  #disposing = false;

  /** @internal Use {@link CredentialProvider.lease}. */
  constructor(client: LessorMethods, lease: LeaseRecord) {
    this.#client = client;
    this.#lease = lease;
  }

  /** The lease as last seen from the daemon (uses are updated by {@link value}). */
  get lease(): LeaseRecord {
    return this.#lease;
  }

  /** True once the lease is known to be over: revoked here (or found already revoked, expired or gone). */
  get released(): boolean {
    return this.#released;
  }

  /**
   * Uses the lease once and returns the value. The credential keeps track of it and wipes it on
   * disposal; wipe it sooner yourself if you can.
   */
  async value(target?: AccessTargetInput): Promise<SecretBytes> {
    if (this.#released || this.#disposing) throw new VaultError("lease_revoked", `lease ${this.#lease.id} was already released; request a new lease`);
    const r = await this.#client.accessSecret(this.#lease.id, target);
    if (this.#released || this.#disposing) {
      r.value.wipe();
      throw new VaultError("lease_revoked", `lease ${this.#lease.id} was released while the value was being fetched; request a new lease`);
    }
    this.#lease = { ...r.lease, id: this.#lease.id }; // the id stays the one this credential revokes
    if (this.#values.length >= 64) this.#values = this.#values.filter((v) => !v.wiped);
    this.#values.push(r.value);
    return r.value;
  }

  /**
   * Revokes the lease at the daemon (every error surfaces). A lease that was already revoked, expired
   * or gone counts as released too, so `value()` no longer asks for it. Values already handed out stay
   * readable until disposal.
   */
  async revoke(reason?: string): Promise<void> {
    try {
      await this.#client.revokeLease(this.#lease.id, reason);
    } catch (e) {
      if (e instanceof VaultError && ALREADY_OVER.has(e.code)) this.#released = true;
      throw e;
    }
    this.#released = true;
  }

  /** Wipes every value handed out so far. */
  wipe(): void {
    for (const v of this.#values) v.wipe();
    this.#values = [];
  }

  /**
   * Revokes the lease (a lease that is already revoked, expired or gone is fine) and wipes every value
   * handed out. Other errors (e.g. the daemon is unreachable) are thrown after wiping, and the
   * credential hands out no value from then on; disposing again retries the revocation, so a caller
   * that retries once the daemon is back does end the lease.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    this.#disposing = true;
    try {
      if (!this.#released) await this.#client.revokeLease(this.#lease.id, "released by its holder");
      this.#released = true;
    } catch (e) {
      if (!(e instanceof VaultError && ALREADY_OVER.has(e.code))) throw e;
      this.#released = true;
    } finally {
      this.wipe();
    }
  }

  [inspectSymbol](): string {
    const l = this.#lease;
    return `LeasedCredential(lease ${l.id} ${l.scope}/${l.name} for ${l.agent}, ${this.#values.length} value(s) handed out${this.#released ? ", released" : ""})`;
  }

  toJSON(): { lease: LeaseRecord; released: boolean } {
    return { lease: this.#lease, released: this.#released };
  }
}
