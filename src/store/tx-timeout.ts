/**
 * The guard both stores put around a transaction function: one that never settles (it waited on
 * something other than the tx) is rejected after `ms`, so the store rolls it back and goes on.
 */
import { VaultError } from "../base/errors.js";

const timeouts = new WeakSet<VaultError>();

function timeoutError(ms: number): VaultError {
  const e = new VaultError("internal", `a store transaction did not finish within ${ms} ms and was rolled back; transaction functions must only use the tx`);
  timeouts.add(e);
  return e;
}

/** True for the error a transaction function is rejected with when it runs past its deadline. */
export function isTxTimeout(e: unknown): boolean {
  return e instanceof VaultError && timeouts.has(e);
}

/** Resolves or rejects as `work` does, or rejects with VaultError("internal") after `ms`. */
export function withTxTimeout<T>(work: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(timeoutError(ms)), ms);
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

/**
 * {@link withTxTimeout} for a store that runs its transaction functions one at a time (both stores
 * do): one timer, re-armed with `refresh()` for each function, instead of a timer made and cleared
 * per function on the hot path. Keeps the process alive only while a function runs. A function
 * started while another still runs (which a store should not do) gets a timer of its own.
 */
export class TxTimeout {
  readonly #ms: number;
  #timer: NodeJS.Timeout | undefined;
  /** Rejects the function running now; null when none runs. */
  #reject: ((e: unknown) => void) | null = null;

  constructor(ms: number) {
    this.#ms = ms;
  }

  /** Resolves or rejects as `work` does, or rejects with VaultError("internal") after the timeout. */
  run<T>(work: Promise<T>): Promise<T> {
    if (this.#reject !== null) return withTxTimeout(work, this.#ms);
    return new Promise<T>((resolve, reject) => {
      this.#reject = reject;
      if (this.#timer === undefined) this.#timer = setTimeout(() => this.#fire(), this.#ms);
      else this.#timer.refresh().ref();
      work.then(
        (v) => {
          this.#settled(reject);
          resolve(v);
        },
        (e: unknown) => {
          this.#settled(reject);
          reject(e);
        },
      );
    });
  }

  #settled(reject: (e: unknown) => void): void {
    if (this.#reject !== reject) return; // already timed out
    this.#reject = null;
    this.#timer?.unref();
  }

  #fire(): void {
    const reject = this.#reject;
    this.#reject = null;
    this.#timer?.unref();
    reject?.(timeoutError(this.#ms));
  }
}
