/**
 * The daemon half of the backend: connects to the daemon named by the environment
 * (src/backend/daemon-target.ts), or to the one listening on the home's socket, or says there is none.
 * Kept apart from src/backend/backend.ts (which falls back to the in-process vault) so the CLI's
 * start-up fast path can load it without the vault, SQLite and the crypto.
 */
import { existsSync } from "node:fs";
import { LessorClient } from "../client/client.js";
import { loadConfig } from "../config/load.js";
import { inHome } from "../config/home.js";
import { VaultError } from "../base/errors.js";
import { isNoDaemon } from "../client/no-daemon.js";
import type { Backend } from "./backend.js";
import type { DaemonTarget } from "./daemon-target.js";

/** How a daemon backend's connection behaves once the daemon has closed it. */
export interface DaemonConnectOptions {
  /**
   * False (the default): a command's calls all go over the one connection it opened, and once the
   * daemon closed it (`idle_timeout`, `max_connection_lifetime`, a restart) every later call fails
   * with `unavailable` (src/cli/run/connection.ts opens a new backend where a command must carry on).
   * True, for a process that keeps its backend for hours (`lessor mcp`): the next call reconnects, with
   * the same token and the daemon checked again (its uid; with a token, its proof), and only as the
   * identity of the first connection (`keepIdentity`). A call cut off by the loss is never resent.
   */
  reconnect?: boolean;
}

/**
 * Connects to the daemon of `home` (an existing home directory). Null when no daemon is listening
 * there (no socket file, or a stale one left by a killed daemon); other failures — a bad
 * lessor.toml, a refused handshake — throw.
 */
export async function connectDaemon(home: string, opts: DaemonConnectOptions = {}): Promise<Backend | null> {
  const socketPath = inHome(home, loadConfig(home).server.socket);
  if (!existsSync(socketPath)) return null;
  try {
    // pipeline: the first call goes out right behind the hello (a refused handshake fails that call).
    const client = await LessorClient.connect({ socketPath }, { ...reconnecting(opts), pipeline: true });
    return { mode: "daemon", home, endpoint: null, api: client, close: () => client.close() };
  } catch (e) {
    if (isNoDaemon(e)) return null;
    throw e;
  }
}

/**
 * Connects to the daemon the environment names. There is no fallback: when nothing answers there,
 * it throws VaultError("unavailable") naming the variable and the address. `home` is only reported.
 */
export async function connectTarget(target: DaemonTarget, home: string, opts: DaemonConnectOptions = {}): Promise<Backend> {
  try {
    const client = await LessorClient.connect(target.endpoint, {
      ...reconnecting(opts),
      pipeline: true,
      ...(target.token !== undefined ? { token: target.token } : {}),
      ...(target.expectedUid !== undefined ? { expectedUid: target.expectedUid } : {}),
      // In CLI terms, a daemon run by another user is accepted with LESSOR_DAEMON_UID.
      expectedUidRemedy: () => "set LESSOR_DAEMON_UID to that user's uid (ask the operator; do not take it from the socket)",
    });
    return { mode: "daemon", home, endpoint: target.where, api: client, close: () => client.close() };
  } catch (e) {
    if (e instanceof VaultError && e.code === "unavailable") {
      if (/permission denied/.test(e.message))
        throw new VaultError(
          "unavailable",
          `permission denied connecting to the lessor daemon at ${target.where}: the socket does not let your user in; ask the operator for access (an [[identity]] for your uid and a wider socket_mode), or for LESSOR_ADDR and a token`,
        );
      throw new VaultError(
        "unavailable",
        `no lessor daemon answers at ${target.where}; is it running? ${target.via} is set, so lessor does not open a vault in this process: ask the operator to start the daemon, or unset ${target.via} to use a vault of your own`,
      );
    }
    throw e;
  }
}

/** The client options for {@link DaemonConnectOptions.reconnect}. */
function reconnecting(opts: DaemonConnectOptions): { reconnect: boolean; keepIdentity: boolean } {
  return opts.reconnect === true ? { reconnect: true, keepIdentity: true } : { reconnect: false, keepIdentity: false };
}
