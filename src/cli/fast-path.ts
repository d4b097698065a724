/**
 * The start-up fast path for the commands agents run most: `lessor lease` and `lessor run` against
 * a running daemon. Loading commander and the whole command tree costs more than the command itself
 * (see bench/cli.ts), so these two are parsed with node:util's parseArgs from the same option
 * declarations (src/cli/option-spec.ts) and run through the same action functions as the full CLI.
 *
 * It handles a command only when all of this holds, and otherwise returns false before doing
 * anything, so the full CLI runs instead and behaves exactly as without the fast path: the
 * arguments parse strictly into the expected shape (no help, no mistakes — commander prints those),
 * the home exists, and a daemon answers on its socket (the embedded vault needs the full CLI) — or,
 * when LESSOR_SOCKET or LESSOR_ADDR names a daemon (src/backend/daemon-target.ts), that daemon answers.
 */
import { existsSync } from "node:fs";
import { resolveHome } from "../config/home.js";
import type { Backend } from "../backend/backend.js";
import { Cli } from "./cli.js";
import { LEASE_OPTIONS, leaseAction, type LeaseOptions } from "./commands/lease.js";
import { RUN_OPTIONS, runAction, type RunCommandOptions } from "./commands/run.js";
import { connectDaemon, connectTarget } from "../backend/daemon.js";
import { daemonTarget } from "../backend/daemon-target.js";
import type { FAST_COMMANDS } from "./entry.js";
import { GLOBAL_OPTIONS, parseStrict, type OptionSpec, type OptionValues, type Parsed } from "./option-spec.js";

/** A command the fast path can run: its options, the arguments it takes from a parse (null = not its shape), its action. */
interface FastCommand {
  options: readonly OptionSpec[];
  args(p: Parsed): string[] | null;
  run(cli: Cli, args: string[], options: OptionValues): Promise<void>;
  /** Loads what the action will need, while the daemon takes the handshake. */
  preload?(): Promise<unknown>;
  /** The command serves through its backend for long (src/backend/backend.ts's `longLived`). */
  longLived?: boolean;
}

const COMMANDS: Record<(typeof FAST_COMMANDS)[number], FastCommand> = {
  // lessor lease NAME --agent A …
  lease: {
    options: LEASE_OPTIONS,
    args: (p) => (p.positionals.length === 1 && p.afterDashes.length === 0 ? p.positionals : null),
    run: (cli, args, o) => leaseAction(cli, args[0]!, o as unknown as LeaseOptions),
  },
  // lessor run --agent A … -- CMD ARGS…
  run: {
    options: RUN_OPTIONS,
    args: (p) => (p.positionals.length === 0 && p.afterDashes.length > 0 ? p.afterDashes : null),
    run: (cli, args, o) => runAction(cli, args, o as unknown as RunCommandOptions),
    // After one turn of the event loop: by then the socket has connected and sent the hello.
    preload: () => new Promise((next) => setImmediate(next)).then(() => import("./run/run.js")),
    longLived: true,
  },
};

/** What the fast path would run for `args`, or null when the full CLI must take them. */
export function fastParse(args: readonly string[]): { command: FastCommand; options: OptionValues; args: string[] } | null {
  const command = Object.hasOwn(COMMANDS, args[0] ?? "") ? COMMANDS[args[0] as keyof typeof COMMANDS] : null;
  if (!command) return null;
  const p = parseStrict(args.slice(1), command.options, GLOBAL_OPTIONS);
  const rest = p && command.args(p);
  return p && rest ? { command, options: p.options, args: rest } : null;
}

/** The full CLI's backend module (src/cli/open-backend.ts), loaded only if the embedded vault is needed. */
export type BackendModule = Pick<typeof import("./open-backend.js"), "openCliBackend">;

/**
 * Runs `args` (process.argv after the script) on the fast path. Resolves true when it ran the
 * command (process.exitCode is set), false when the full CLI must run it instead. `loadBackend`
 * imports src/cli/open-backend.ts, for `run` to revoke through the vault if the daemon goes away.
 */
export async function fastPath(args: readonly string[], env: NodeJS.ProcessEnv, loadBackend: () => Promise<BackendModule>): Promise<boolean> {
  const parsed = fastParse(args);
  if (!parsed) return false;
  const homeOption = parsed.options["home"] as string | undefined;
  let first: Backend | null;
  try {
    // A daemon named by the environment (LESSOR_SOCKET, LESSOR_ADDR) is the only one to use; if it
    // cannot be reached, the full CLI says so (it never falls back to a vault either).
    const target = daemonTarget(env);
    if (target && homeOption !== undefined) return false; // the full CLI refuses the mix
    const home = resolveHome(homeOption, env);
    if (!target && !existsSync(home)) return false;
    const opts = { reconnect: parsed.command.longLived === true };
    [first] = await Promise.all([target ? connectTarget(target, home, opts) : connectDaemon(home, opts), parsed.command.preload?.()]);
  } catch {
    return false; // the full CLI reports it (a bad lessor.toml, a refused handshake, an unreachable $LESSOR_SOCKET, …)
  }
  if (!first) return false;
  let unused: Backend | null = first;
  const cli = new Cli(async (home, opts) => {
    // The connection made to decide is the command's first backend. A later one (`run` revoking
    // after the daemon went away) is opened as the full CLI opens it: the daemon, else the vault.
    const b = unused;
    unused = null;
    return b ?? (await loadBackend()).openCliBackend(home, opts);
  });
  cli.home = homeOption;
  await parsed.command.run(cli, parsed.args, parsed.options);
  await (unused as Backend | null)?.close();
  return true;
}
