/**
 * The daemon's schedule of rotation hooks: every `[[rotate]]` entry with `every` is run by the daemon
 * when its secret's current version is older than `every` (the version's creation time is the last
 * rotation, whoever made it: a hook, `lessor secret rotate` or `set`).
 *
 * - One loop per secret, each awaiting its own run, so two runs for one secret never overlap here;
 *   the core also refuses a second run for a secret while one is going (`lessor secret rotate` at
 *   the same moment gets rate_limited), and checks the secret is still due in the transaction that
 *   claims the run: of several daemons sharing a store that found it due, one asks the issuer.
 * - Jitter: each wait is lengthened by a random part (up to a tenth of `every`, at most a minute), so
 *   that hooks of many secrets, or several daemons sharing a database, do not all fire together.
 * - A failing hook is logged as an error (the vault has audited it) and tried again one period later,
 *   not at once: a broken script must not hammer the issuer.
 * Logs name the secret, the version and how a hook failed; never a value (the vault never hands it out).
 */
import { VaultError } from "../base/errors.js";
import { refString } from "../base/names.js";
import type { Identity } from "../base/types.js";
import type { RotationHook } from "../vault/rotation-hooks.js";
import type { Vault } from "../vault/vault.js";
import type { Logger } from "./logger.js";

/** Who a scheduled hook rotation is audited as. */
export const SCHEDULE_IDENTITY: Identity = Object.freeze({ id: "schedule:rotate", role: "admin", transport: "schedule" } as const);

/** Longest single timer (setTimeout's limit is about 24.8 days); a longer wait is taken in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Largest jitter added to a wait. */
const MAX_JITTER_MS = 60_000;

/** Options of {@link scheduleRotations}. */
export interface ScheduleOptions {
  /** Random jitter in [0, 1) (tests pass () => 0). Default Math.random. */
  random?: () => number;
  /** Clock in epoch ms, as the vault's. Default Date.now. */
  now?: () => number;
}

/** A running schedule. */
export interface RotationSchedule {
  /** Stops the timers and waits for a hook that is running to finish. */
  stop(): Promise<void>;
}

/** Starts the schedule for the hooks with `everyMs`; returns a handle to stop it. */
export function scheduleRotations(vault: Vault, hooks: readonly RotationHook[], log: Logger, opts: ScheduleOptions = {}): RotationSchedule {
  const random = opts.random ?? Math.random;
  const now = opts.now ?? Date.now;
  const session = vault.session(SCHEDULE_IDENTITY);
  let stopped = false;
  const timers = new Set<NodeJS.Timeout>();
  const runs = new Set<Promise<void>>();

  const jitter = (every: number) => Math.floor(random() * Math.min(every / 10, MAX_JITTER_MS));

  const sleep = (ms: number, then: () => void) => {
    if (stopped) return;
    const t = setTimeout(() => {
      timers.delete(t);
      if (ms > MAX_TIMER_MS) sleep(ms - MAX_TIMER_MS, then);
      else if (!stopped) then();
    }, Math.min(ms, MAX_TIMER_MS));
    t.unref();
    timers.add(t);
  };

  /** When the secret is due: its current version's creation time plus `every`, or null when it does not exist. */
  const dueAt = async (hook: RotationHook, every: number): Promise<number | null> => {
    try {
      const meta = await session.getSecretMetadata(hook.secret);
      const current = meta.versions.find((v) => v.version === meta.currentVersion);
      return (current?.createdAt ?? meta.updatedAt) + every;
    } catch (e) {
      if (e instanceof VaultError && e.code === "secret_not_found") return null;
      throw e;
    }
  };

  const loop = (hook: RotationHook, every: number) => {
    const secret = refString(hook.secret);
    const step = async () => {
      let next = every;
      try {
        const due = await dueAt(hook, every);
        if (due === null) {
          log.warn({ secret }, "a [[rotate]] entry names a secret that does not exist; its schedule looks again one period later");
        } else if (due > now()) {
          next = due - now();
        } else {
          // Due is judged again as the run is claimed: another daemon sharing the store may have
          // rotated it since it was read here.
          const r = await session.rotateSecretByHookIfDue(hook.secret, every);
          if (r === null) log.info({ secret }, "a scheduled rotation was not due when claimed (another lessor process rotated the secret); its schedule looks again");
          else log.info({ secret, version: r.version, revokedLeases: r.revokedLeases }, "rotated a secret by its rotation hook, on schedule");
        }
      } catch (e) {
        // The message names the command (argv[0]) and how it failed, never what it printed.
        const code = e instanceof VaultError ? e.code : "internal";
        log.error({ secret, code, err: (e as Error).message }, "a scheduled rotation hook failed; the current version stays, and it is tried again one period later");
      }
      sleep(next + jitter(every), run);
    };
    const run = () => {
      const p = step().finally(() => runs.delete(p));
      runs.add(p);
    };
    run();
  };

  for (const h of hooks) if (h.everyMs !== null) loop(h, h.everyMs);
  if (hooks.some((h) => h.everyMs !== null))
    log.info({ secrets: hooks.filter((h) => h.everyMs !== null).map((h) => refString(h.secret)) }, "rotation hooks scheduled");

  return {
    stop: async () => {
      stopped = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      await Promise.allSettled([...runs]);
    },
  };
}
