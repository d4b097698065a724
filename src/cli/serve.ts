/**
 * `lessor serve`: runs the daemon in the foreground, logging JSON lines to stderr, until SIGTERM or
 * SIGINT, then shuts down gracefully (stop accepting, finish in-flight requests, close the store).
 * SIGHUP re-reads the policy file.
 */
import { destination, pino } from "pino";
import { closeInheritedDescriptors } from "../sandbox/launch.js";
import { startDaemon } from "../server/daemon.js";

/** Runs until a signal; resolves with the exit code. */
export async function serve(opts: { home?: string }): Promise<number> {
  const log = pino({ name: "lessor", base: { pid: process.pid } }, destination({ dest: 2, sync: true }));
  // A descriptor whoever started the daemon left open without close-on-exec (a supervisor's pipe, a
  // shell's `exec 5<file`) would pass to every program the daemon starts: each rotation hook and the
  // key command (third-party CLIs). The daemon never uses one, so it closes them before anything runs.
  const closed = closeInheritedDescriptors();
  if (closed.length > 0) log.info({ descriptors: closed }, "closed descriptors inherited without close-on-exec, so that no rotation hook or key command gets them");
  // A passphrase vault asks on the terminal (no echo) unless LESSOR_PASSPHRASE is set.
  const getPassphrase = (await import("./passphrase.js")).terminalPassphrase(process.env);
  const daemon = await startDaemon({ ...(opts.home ? { home: opts.home } : {}), log, getPassphrase });
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      // Still handled after the first: a repeated SIGTERM (a supervisor, an impatient operator) would
      // otherwise kill the process mid-grace, dropping answers and leaving the socket and lock.
      if (stopping) {
        log.info({ signal }, "already shutting down: in-flight requests finish first (up to shutdown_grace)");
        return;
      }
      stopping = true;
      log.info({ signal }, "shutting down");
      daemon.close().then(
        () => resolve(0),
        (e: unknown) => {
          log.error({ err: (e as Error).message }, "shutdown failed");
          resolve(1);
        },
      );
    };
    const hup = () => {
      if (stopping) return; // still handled, so that a SIGHUP during shutdown does not kill the process
      log.info({ signal: "SIGHUP" }, "reloading the policy");
      void daemon.reloadPolicy();
    };
    process.on("SIGHUP", hup);
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
  });
}
