/**
 * Signals the vault raises when something it decided must reach live connections at once: a token
 * revoked, the killswitch engaged or released, the policy reloaded, the audit trail found broken. The
 * core knows no connections; an adapter (the server) subscribes with {@link Vault.onSignal} and
 * closes or re-checks what it holds, or logs.
 * Listeners run synchronously after the change has committed; a throwing listener is ignored (it
 * must not undo or hide a committed change).
 */

/** What changed. Carries ids and names only, never a secret or a token's secret part. */
export type VaultSignal =
  | { type: "token_revoked"; tokenId: string }
  | { type: "killswitch"; engaged: boolean }
  /** `remote`: reloaded because another instance sharing the store reloaded (src/vault/remote-changes.ts). */
  | { type: "policy_reloaded"; ok: boolean; remote?: true }
  /**
   * This instance's policy differs from the one the last reload on any instance sharing the store put
   * in force (by digest), or its `[vault]` limits differ from those pinned with it (`limits`: their
   * names): it grants nothing until they match, and says so through this signal.
   */
  | { type: "policy_stale"; local: string; stored: string; limits?: string[] }
  /**
   * The keyring was read again because another process sharing the store rotated the master key
   * (src/vault/key-reload.ts): `ok` with the key ids now loaded; or not ok, with why the key needed
   * could not be loaded (what needs it is refused until it can be). Raised when the key ids change,
   * or once per distinct failure.
   */
  | { type: "keys_reloaded"; ok: boolean; keyIds: string[]; error?: string }
  /**
   * A commit found the audit trail broken (cut, edited or rehashed; see src/vault/audit-guard.ts):
   * audited writes are refused until an admin runs `lessor audit recover`. Raised once per problem.
   */
  | { type: "audit_broken"; problem: string };

/** A subscriber. */
export type SignalListener = (signal: VaultSignal) => void;

/** The listener set behind {@link Vault.onSignal}. */
export class Signals {
  readonly #listeners = new Set<SignalListener>();

  /** Subscribes; returns the function that unsubscribes. */
  on(listener: SignalListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Tells every listener; never throws. */
  emit(signal: VaultSignal): void {
    for (const l of this.#listeners) {
      try {
        l(signal);
      } catch {
        // A listener's failure must not reach the operation that committed the change.
      }
    }
  }
}
