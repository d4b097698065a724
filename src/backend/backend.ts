/**
 * Where a caller (the CLI; later the MCP server and the proxy) sends its calls:
 * 1. the daemon the environment names (LESSOR_SOCKET, or LESSOR_ADDR with a token; see
 *    src/backend/daemon-target.ts), as the identity that daemon gives this caller — with no fallback;
 * 2. else the daemon for the home when one is listening on its socket;
 * 3. else the vault opened in-process from the home (same policy, same audit; src/backend/in-process.ts).
 * All present the same {@link BackendApi}: the client SDK's methods and `api`, every method of the
 * protocol typed from the registry, so a caller works alike in each mode.
 */
import { existsSync } from "node:fs";
import type { LessorMethods } from "../client/facade.js";
import { resolveHome } from "../config/home.js";
import type { PassphraseProvider } from "../crypto/keys/passphrase.js";
import { VaultError } from "../base/errors.js";
import type { Vault } from "../vault/vault.js";
import { connectDaemon, connectTarget, type DaemonConnectOptions } from "./daemon.js";
import { daemonTarget } from "./daemon-target.js";

/** What a backend serves in every mode: the SDK's methods over a daemon connection or an in-process vault. */
export type BackendApi = LessorMethods;

/** An open backend. */
export interface Backend {
  mode: "daemon" | "embedded";
  /** The home (for a daemon named by the environment: the home that would be used otherwise). */
  home: string;
  /** For a daemon named by the environment, where it is (`$LESSOR_SOCKET (/path)`); else null. */
  endpoint: string | null;
  api: BackendApi;
  /** Embedded mode only: the vault opened in this process (`lessor run --vault-session` serves it to its sandbox). */
  vault?: Vault;
  close(): Promise<void>;
}

/** How {@link openBackend} opens a backend. */
export interface OpenBackendOptions {
  /** The home to open (the --home option), when given (LESSOR_HOME or ~/.lessor otherwise). */
  home?: string;
  env?: NodeJS.ProcessEnv;
  /**
   * Asks for the passphrase of a passphrase-sealed vault opened in-process (the CLI asks on the
   * terminal). Without it, only LESSOR_PASSPHRASE is used.
   */
  getPassphrase?: PassphraseProvider;
  /**
   * The caller keeps the backend for long (`lessor run`, `lessor proxy`, `lessor mcp`). A daemon
   * backend then reconnects after the daemon closed the connection ({@link DaemonConnectOptions.reconnect}).
   * An embedded one does what a daemon does each second ({@link watchBrakes}): re-reads the killswitch
   * (pulled by another process) and fires the dead-man switch once its deadline passed, so leases
   * end, and the proxy's tunnels with them, with no request needed to notice.
   */
  longLived?: boolean;
}

/**
 * The error for "no daemon and no vault", worded for both of its readers: an agent, who must ask
 * the operator how to reach the vault (and never make one of its own), and a person setting up.
 */
export function noVaultError(home: string): VaultError {
  return new VaultError(
    "key_unavailable",
    `no lessor daemon is running and there is no vault at ${home}. If you are an agent, do not create one: ask the operator for LESSOR_SOCKET (or LESSOR_ADDR and LESSOR_TOKEN_FILE). To create a vault of your own, run lessor init (or pass --home / set LESSOR_HOME to use another one)`,
  );
}

/**
 * Connects to the daemon the environment names; else the home's daemon; else opens the vault
 * in-process. With LESSOR_SOCKET or LESSOR_ADDR set there is no fallback: an unreachable daemon is
 * an error (`unavailable`), and no vault is opened or created.
 */
export async function openBackend(opts: OpenBackendOptions = {}): Promise<Backend> {
  const env = opts.env ?? process.env;
  const daemonOpts: DaemonConnectOptions = opts.longLived === true ? { reconnect: true } : {};
  const target = daemonTarget(env);
  if (target) {
    if (opts.home !== undefined)
      throw new VaultError("config_invalid", `--home and ${target.via} are both given: --home opens a vault, ${target.via} names a daemon; drop --home, or unset ${target.via}`);
    return connectTarget(target, resolveHome(undefined, env), daemonOpts);
  }
  const home = resolveHome(opts.home, env);
  if (!existsSync(home)) throw noVaultError(home);
  const daemon = await connectDaemon(home, daemonOpts);
  if (daemon) return daemon;
  const [{ openVault }, { inProcessApi }] = await Promise.all([import("../config/open-vault.js"), import("./in-process.js")]);
  const vault = await openVault({ home, env, ...(opts.getPassphrase ? { getPassphrase: opts.getPassphrase } : {}) });
  const stop = opts.longLived === true ? watchBrakes(vault) : () => {};
  return {
    mode: "embedded",
    home,
    endpoint: null,
    api: inProcessApi(vault),
    vault,
    close: () => {
      stop();
      return vault.close();
    },
  };
}

/** How often an embedded long-lived backend checks the brakes: as often as the daemon does. */
export const BRAKES_CHECK_MS = 1000;

/**
 * Checks the killswitch and the dead-man switch of `vault` every {@link BRAKES_CHECK_MS}, as the
 * daemon does (src/server/daemon.ts); returns the function that stops it. A failed check is tried
 * again at the next tick (a busy database, a closed vault).
 */
export function watchBrakes(vault: Pick<Vault, "checkKillswitch">): () => void {
  const timer = setInterval(() => void vault.checkKillswitch().catch(() => {}), BRAKES_CHECK_MS);
  timer.unref();
  return () => clearInterval(timer);
}
