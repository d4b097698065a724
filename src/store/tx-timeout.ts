/**
 * The guard both stores put around a transaction function: one that never settles (it waited on
 * something other than the tx) is rejected after `ms`, so the store rolls it back and goes on.
 */
import { VaultError } from "../vault/errors.js";

/** Resolves or rejects as `work` does, or rejects with VaultError("internal") after `ms`. */
export async function withTxTimeout<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new VaultError(
            "internal",
            `a store transaction did not finish within ${ms} ms and was rolled back; transaction functions must only use the tx`,
          ),
        ),
      ms,
    );
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
