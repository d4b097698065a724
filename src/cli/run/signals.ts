/**
 * Signal handling for the commands that hold leases. {@link StopSignals}: `lessor proxy` and
 * `lessor inject` stop on SIGINT, SIGTERM or SIGHUP and revoke their leases before they exit.
 * {@link SignalRelay}: `lessor run`. Handlers go in before the first lease is taken, so a signal that
 * arrives while leases are being taken stops the run (and the leases are revoked) instead of killing
 * lessor with leases left live. Once the child runs, each signal is passed on to it, and lessor waits
 * for the child to exit. A child that outlives a stop request is ended: SIGTERM or SIGHUP is passed on,
 * and if the child has not exited {@link STOP_GRACE_MS} later, or another SIGTERM or SIGHUP comes, it
 * gets SIGKILL (the whole sandbox with it), so that lessor's own end of the run (the git check,
 * revoking the leases) still happens and nobody has to kill lessor itself. SIGINT is only passed on:
 * interactive agents take a second Ctrl-C as "exit", in their own time.
 */
import type { ChildProcess } from "node:child_process";
import { constants } from "node:os";

/** The signals passed on to the child. */
export const FORWARDED_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"] as const;

/** Signals that ask the run to stop: the child gets them, then SIGKILL if it does not stop. */
const STOP_SIGNALS: readonly NodeJS.Signals[] = ["SIGTERM", "SIGHUP"];

/** How long a child may take to exit after a SIGTERM or SIGHUP before it gets SIGKILL, ms. */
export const STOP_GRACE_MS = 10_000;

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
  readonly #say: (line: string) => void;
  readonly #graceMs: number;
  #stopTimer: NodeJS.Timeout | null = null;

  /** `say` hears the one line said when the child is killed; `graceMs` defaults to {@link STOP_GRACE_MS}. */
  constructor(o: { say?: (line: string) => void; graceMs?: number } = {}) {
    this.#say = o.say ?? (() => {});
    this.#graceMs = o.graceMs ?? STOP_GRACE_MS;
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
    if (child.exitCode !== null || child.signalCode !== null) return;
    try {
      this.#send(s);
    } catch {
      // the child is already gone
    }
    if (!STOP_SIGNALS.includes(s)) return;
    if (this.#stopTimer !== null) this.#kill(`a second ${s}`);
    else this.#stopTimer = setTimeout(() => this.#kill(`${this.#graceMs / 1000} s after ${s}`), this.#graceMs);
  }

  /** Ends the child at once (SIGKILL, the whole sandbox with it), quietly: lessor itself is failing. */
  killNow(): void {
    const child = this.#child;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    try {
      this.#send("SIGKILL");
    } catch {
      // the child is already gone
    }
  }

  #kill(why: string): void {
    const child = this.#child;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    this.#say(`lessor: the command did not stop; ${why}, lessor ends it (SIGKILL)`);
    try {
      this.#send("SIGKILL");
    } catch {
      // the child is already gone
    }
  }

  /** Removes the handlers. */
  dispose(): void {
    if (this.#stopTimer !== null) clearTimeout(this.#stopTimer);
    this.#stopTimer = null;
    for (const [s, h] of this.#handlers) process.off(s, h);
    this.#handlers.clear();
  }
}

/** The signals that stop `lessor proxy` and `lessor inject`. */
const STOP_ON = ["SIGINT", "SIGTERM", "SIGHUP"] as const;

/**
 * Catches SIGINT, SIGTERM and SIGHUP from the moment it is made until {@link StopSignals.dispose}, so
 * that they stop the command (which then revokes its leases) instead of killing lessor with leases
 * left live. `stopped` resolves with the first one.
 */
export class StopSignals {
  first: NodeJS.Signals | null = null;
  readonly stopped: Promise<NodeJS.Signals>;
  readonly #handlers: [NodeJS.Signals, () => void][] = [];

  constructor() {
    let done: (s: NodeJS.Signals) => void = () => {};
    this.stopped = new Promise((r) => (done = r));
    for (const s of STOP_ON) {
      const h = (): void => {
        this.first ??= s;
        done(s);
      };
      this.#handlers.push([s, h]);
      process.on(s, h);
    }
  }

  /** Removes the handlers. */
  dispose(): void {
    for (const [s, h] of this.#handlers) process.off(s, h);
  }
}

/** Thrown inside a command when a signal stops it before it is done (see {@link StopSignals}, {@link SignalRelay.early}). */
export class Interrupted extends Error {
  constructor(readonly signal: NodeJS.Signals) {
    super(signal);
  }
}
