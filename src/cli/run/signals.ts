/**
 * Signal handling for `lessor run`. Handlers go in before the first lease is taken, so a signal that
 * arrives while leases are being taken stops the run (and the leases are revoked) instead of killing
 * lessor with leases left live. Once the child runs, each signal is passed on to it, and lessor waits
 * for the child to exit.
 */
import type { ChildProcess } from "node:child_process";
import { constants } from "node:os";

/** The signals passed on to the child. */
export const FORWARDED_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"] as const;

/** The exit code for death by `signal`: 128 + its number, as shells report it. */
export function signalExitCode(signal: NodeJS.Signals): number {
  return 128 + (constants.signals[signal] ?? 0);
}

/** Catches {@link FORWARDED_SIGNALS} from the moment it is made until {@link SignalRelay.dispose}. */
export class SignalRelay {
  #child: ChildProcess | null = null;
  #send: (s: NodeJS.Signals) => void = () => {};
  #first: NodeJS.Signals | null = null;
  readonly #handlers = new Map<NodeJS.Signals, () => void>();

  constructor() {
    for (const s of FORWARDED_SIGNALS) {
      const h = (): void => this.#receive(s);
      this.#handlers.set(s, h);
      process.on(s, h);
    }
  }

  /** The first signal received before a child was attached, if any. */
  get early(): NodeJS.Signals | null {
    return this.#first;
  }

  /**
   * From now on, signals go to `child`, through `send` when given (a sandboxed command is not the
   * process lessor started: src/sandbox/launch.ts).
   */
  attach(child: ChildProcess, send?: (s: NodeJS.Signals) => void): void {
    this.#child = child;
    this.#send = send ?? ((s) => child.kill(s));
  }

  #receive(s: NodeJS.Signals): void {
    const child = this.#child;
    if (child === null) {
      this.#first ??= s;
      return;
    }
    if (child.exitCode === null && child.signalCode === null) {
      try {
        this.#send(s);
      } catch {
        // the child is already gone
      }
    }
  }

  /** Removes the handlers. */
  dispose(): void {
    for (const [s, h] of this.#handlers) process.off(s, h);
    this.#handlers.clear();
  }
}
