/**
 * The guard both stores put around a transaction function: one that never settles (it waited on
 * something other than the tx) is rejected after `ms`, so the store rolls it back and goes on.
 */
import { VaultError } from "../base/errors.js";

/** Resolves or rejects as `work` does, or rejects with VaultError("internal") after `ms`. */
export function withTxTimeout<T>(work: Promise<T>, ms: number): Promise<T> {
  // One promise and one timer per call (this runs for every transaction on the hot path).
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(
      () =>
        reject(
          new VaultError(
            "internal",
            `a store transaction did not finish within ${ms} ms and was rolled back; transaction functions must only use the tx`,
          ),
        ),
      ms,
    );
    work.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}
