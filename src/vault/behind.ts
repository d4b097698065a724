/**
 * "This process is behind another one sharing the store": a transaction function found that the store
 * names a master key this process has not loaded (another instance rotated it), or a policy other than
 * the one in force here (another instance reloaded it). The function throws the error marked with
 * {@link markBehind}; the transaction rolls back; `commit` (src/vault/context.ts) catches this process
 * up outside the transaction (no I/O may happen inside one) and runs the function again. The marked
 * error is an ordinary VaultError that says what happened, so it can also be thrown as it is.
 */
import type { VaultError } from "../base/errors.js";

/** What to catch up on. */
export type Behind =
  /**
   * Re-read the key source for `keyId`. `hard`: nothing may be done without it (the store's current
   * key, the key of a value to open); otherwise (the audit checkpoint's key) the caller decides.
   */
  | { kind: "key"; keyId: string; hard: boolean }
  /** Re-read this instance's policy, which differs from the one the store says is in force. */
  | { kind: "policy" };

const marks = new WeakMap<object, Behind>();

/** Marks `err` as "catch up on `b`, then try again"; returns it. */
export function markBehind(err: VaultError, b: Behind): VaultError {
  marks.set(err, b);
  return err;
}

/** What `e` says to catch up on, or undefined when it is not such an error. */
export function behindOf(e: unknown): Behind | undefined {
  return typeof e === "object" && e !== null ? marks.get(e) : undefined;
}
