/**
 * What both entry points of the `lessor` command do (src/cli/main.ts, run by tsx from a checkout, and
 * src/cli/bin.ts, the built bin): `--version` at once (only before a command: src/cli/version-flag.ts), the start-up fast path for the commands that
 * have one (src/cli/fast-path.ts), else the full command tree (src/cli/program.ts). They differ only
 * in how they load those two.
 */
import { internalErrorLine } from "./internal-error.js";
import { writeSync } from "node:fs";
import { VERSION } from "../version.js";
import { EXIT } from "./exit-codes.js";
import { asksVersion } from "./version-flag.js";
import { crashCleanups, holdingLeases } from "./holding.js";
import { forbidDumps } from "../native/no-dump.js";

/** How long a crashed command's cleanups may take before lessor exits all the same, ms. */
const CRASH_CLEANUP_MS = 5000;

/** The SIGUSR1 listener: its presence is what keeps Node's inspector shut. */
function ignoreSignal(): void {}

/** The commands the fast path may take (src/cli/fast-path.ts has one entry for each). */
export const FAST_COMMANDS = ["lease", "run"] as const;

/** How an entry point loads the two halves of the CLI. */
export interface CliLoaders {
  /** Runs `args` on the fast path; false when the full CLI must run them. */
  fast(args: readonly string[]): Promise<boolean>;
  /** The full command tree. */
  program(): Promise<{ main(): void }>;
}

/** Runs the `lessor` command with `args` (process.argv after the script). */
export function runCli(args: readonly string[], load: CliLoaders): void {
  if (asksVersion(args)) {
    // Written straight to fd 1: setting up process.stdout would cost more than the rest of this path.
    try {
      writeSync(1, `${VERSION}\n`);
    } catch {
      // a closed stdout (`| true`) is not an error here
    }
    return;
  }
  // With no listener, SIGUSR1 makes Node open its inspector on 127.0.0.1:9229, with no authentication:
  // any local user could then run code in this process (the daemon holds the key and every value).
  // Operators send it out of habit (log reopening), so lessor takes it and does nothing; `lessor run`
  // passes it on to its command (src/cli/run/signals.ts).
  process.on("SIGUSR1", ignoreSignal);
  // Another process of the owner's uid (an agent run with --no-sandbox, any program the owner runs)
  // could otherwise read this one's memory and environment through /proc or ptrace: the key, a
  // passphrase, LESSOR_MASTER_KEY, values. And a crash leaves no core file. `lessor serve` says so
  // at start when the addon that does this is missing (src/native/no-dump.ts).
  forbidDumps();
  // `lessor … | head` closes the pipe early: that is not an error, so end quietly instead of crashing;
  // unless a command holds leases (run, proxy, mcp): it goes on, and revokes them when it ends.
  for (const stream of [process.stdout, process.stderr])
    stream.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "EPIPE") {
        if (holdingLeases()) return;
        process.exit(process.exitCode ?? 0);
      }
      throw e;
    });
  // An error nothing caught (a bug): said as a bug is (Node's own report would print its message,
  // which may quote a value), the leases of the command revoked, and lessor exits.
  let crashed = false;
  const crash = (e: unknown): void => {
    try {
      writeSync(2, `lessor: ${internalErrorLine(e)}\n`);
    } catch {
      // stderr is gone
    }
    if (crashed) return;
    crashed = true;
    const cleanups = crashCleanups().map((f) => f().catch(() => {}));
    if (cleanups.length > 0)
      try {
        writeSync(2, "lessor: revoking the leases this command holds before it exits\n");
      } catch {
        // stderr is gone
      }
    const timer = setTimeout(() => process.exit(EXIT.internal), CRASH_CLEANUP_MS);
    void Promise.allSettled(cleanups).then(() => {
      clearTimeout(timer);
      process.exit(EXIT.internal);
    });
  };
  process.on("uncaughtException", crash);
  process.on("unhandledRejection", crash);
  const fast = (FAST_COMMANDS as readonly string[]).includes(args[0] ?? "") ? load.fast(args) : Promise.resolve(false);
  void fast
    .then(async (done) => {
      if (!done) (await load.program()).main();
    })
    .catch((e: unknown) => {
      process.stderr.write(`lessor: ${internalErrorLine(e)}\n`);
      process.exitCode = EXIT.internal;
    });
}
