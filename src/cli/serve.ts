/**
 * `lessor serve`: runs the daemon in the foreground, logging JSON lines to stderr, until SIGTERM or
 * SIGINT, then shuts down gracefully (stop accepting, finish in-flight requests, close the store).
 */
import { destination, pino } from "pino";
import { startDaemon } from "../server/daemon.js";

/** Runs until a signal; resolves with the exit code. */
export async function serve(opts: { home?: string }): Promise<number> {
  const log = pino({ name: "lessor", base: { pid: process.pid } }, destination({ dest: 2, sync: true }));
  const daemon = await startDaemon({ ...(opts.home ? { home: opts.home } : {}), log });
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) return;
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
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
  });
}
