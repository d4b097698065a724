/**
 * Lease bookkeeping for `lessor run` and `lessor inject`: one lease per distinct secret for the agent,
 * taken through policy and used once; every lease taken is remembered so it can be revoked at the end,
 * and every value held is wiped.
 *
 * Domains: `--domain D` (repeatable) is passed to the lease request, so policy checks each. The
 * value is then read once (as `lessor lease` does) for the first exact host among the `--domain`s;
 * without one, with no domain when the rule has `any_domain = true`, else for the lease's first
 * exact host (the rule's `domains`). A lease bound only to `*.x` patterns needs `--domain HOST`.
 */
import type { SecretBytes } from "../../crypto/secret-bytes.js";
import { VaultError } from "../../base/errors.js";
import { refString } from "../../base/names.js";
import type { LeaseRecord, SecretRef } from "../../base/types.js";
import type { BackendApi } from "../../backend/backend.js";
import { PendingLeases } from "../../backend/pending-leases.js";

/** Who leases and for where. */
export interface LeaseBookOptions {
  agent: string;
  /** `--domain` values, in order. */
  domains: string[];
  /** Lease lifetime to ask for (capped by policy). */
  ttl?: string;
  /**
   * "proxy": the values go to lessor's injecting proxy, the agent gets placeholders (so a rule with
   * `reveal = false` may be used); left out, they go to the agent itself.
   */
  via?: "proxy";
}

/** Takes one lease per secret, reads each value once, and revokes and wipes everything at the end. */
export class LeaseBook {
  readonly #api: BackendApi;
  readonly #opts: LeaseBookOptions;
  readonly #values = new Map<string, SecretBytes>();
  readonly #byRef = new Map<string, LeaseRecord>();
  readonly #leases: LeaseRecord[] = [];
  readonly #pending = new PendingLeases();
  #revoked = false;

  constructor(api: BackendApi, opts: LeaseBookOptions) {
    this.#api = api;
    this.#opts = opts;
  }

  /** The leases taken so far. */
  get leases(): readonly LeaseRecord[] {
    return this.#leases;
  }

  /**
   * The value of the secret `ref` names (a field part, if any, is the caller's), leasing it on first
   * use. `usedBy` names where the reference is (a variable, a template position) for error messages.
   * Errors keep their code (access_denied, secret_not_found, …) and say which secret, where it is
   * used, and the policy's reason.
   */
  async value(ref: SecretRef, usedBy: string): Promise<SecretBytes> {
    const key = refString(ref);
    const held = this.#values.get(key);
    if (held) return held;
    if (this.#revoked) throw new VaultError("internal", "the leases of this run were already revoked");
    const { agent, domains, ttl, via } = this.#opts;
    let got: Awaited<ReturnType<BackendApi["leaseAndAccess"]>>;
    try {
      // One round trip and one commit: the lease and its first (only) read, for the host the vault
      // picks (see the module comment). When the read is refused the vault revokes the lease in the
      // same commit, so nothing is left to clean up.
      got = await this.#api.leaseAndAccess({
        agent,
        secret: { scope: ref.scope, name: ref.name },
        ...(domains.length > 0 ? { domains } : {}),
        ...(ttl !== undefined ? { ttl } : {}),
      }, via !== undefined ? { via } : undefined);
    } catch (e) {
      throw explain(e, `${usedBy} refers to secret ${key}, and no lease was granted to agent "${agent}"`, await lockedOut(this.#api, e));
    }
    this.#leases.push(got.lease);
    this.#pending.add(got.lease.id);
    this.#values.set(key, got.value);
    this.#byRef.set(key, got.lease);
    return got.value;
  }

  /** The ids of the leases taken and not revoked yet (those {@link LeaseBook.revokeAll} could not revoke). */
  get unrevoked(): string[] {
    return this.#pending.unrevoked;
  }

  /** The lease taken for the secret `ref` names, once {@link LeaseBook.value} has taken it. */
  leaseOf(ref: SecretRef): LeaseRecord | undefined {
    return this.#byRef.get(refString(ref));
  }

  /**
   * Revokes every lease taken and not yet revoked (best effort: one failure does not stop the
   * others) and wipes the values. `api` replaces the one the leases were taken through (a new
   * connection). Leases that could not be revoked stay pending, so a second call retries them.
   */
  async revokeAll(reason: string, api: BackendApi = this.#api): Promise<{ revoked: number; failed: number }> {
    this.#revoked = true;
    this.wipe();
    return this.#pending.revokeAll(reason, api);
  }

  /** Wipes every value held. */
  wipe(): void {
    for (const v of this.#values.values()) v.wipe();
    this.#values.clear();
  }
}

/** Prefixes a VaultError's message with `context`, keeping its code; other errors pass through. */
function explain(e: unknown, context: string, lockout = false): unknown {
  if (!(e instanceof VaultError)) return e;
  // A refusal by the killswitch's lockout says itself how it ends (an admin's release); a policy
  // rule would not help.
  const fix =
    e.code === "access_denied" && !lockout
      ? "; add or change a rule in the policy (lessor policy explain shows why), then run again"
      : e.code === "secret_not_found"
        ? "; or fix the reference"
        : "";
  return new VaultError(e.code, `${context}: ${e.message}${fix}`);
}

/**
 * True when `e` is a refusal and the vault's killswitch is engaged (asked through `api`; false when
 * that cannot be told), so that the refusal is not explained as the policy's.
 */
async function lockedOut(api: BackendApi, e: unknown): Promise<boolean> {
  if (!(e instanceof VaultError) || e.code !== "access_denied") return false;
  try {
    return (await api.status()).killswitch;
  } catch {
    return false;
  }
}

/** How {@link refuseRevoked} words its refusal: what was being made ready, and what did not happen. */
export interface RefusalWords {
  /** e.g. "lessor run made the command ready". */
  while: string;
  /** e.g. "its value is not handed to a new process. The command was not started". */
  so: string;
}

const RUN_WORDS: RefusalWords = {
  while: "lessor run made the command ready",
  so: "its value is not handed to a new process. The command was not started",
};

/**
 * Refuses (lease_revoked) when one of `leases` was revoked, or is gone, as the command is about to
 * start with its value (or, for `lessor inject`, as the output is about to be written): the killswitch
 * or `lessor revoke`, landing while the run made its sandbox ready or inject took its other leases,
 * must not be followed by a new process or file holding what it revoked (a process that already has
 * a value keeps it; this one does not have it yet). One list_leases per lease, all at once.
 */
export async function refuseRevoked(api: BackendApi, agent: string, leases: readonly LeaseRecord[], words: RefusalWords = RUN_WORDS): Promise<void> {
  const rows = await Promise.all(leases.map((l) => api.listLeases({ agent, id: l.id })));
  leases.forEach((l, i) => {
    const now = rows[i]!.find((r) => r.id === l.id);
    if (now === undefined || now.revokedAt !== null)
      throw new VaultError(
        "lease_revoked",
        `the lease on ${l.scope}/${l.name} (${l.id}) was revoked while ${words.while} (lessor killswitch or lessor revoke), so ${words.so}`,
      );
  });
}
