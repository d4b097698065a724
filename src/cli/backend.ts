/**
 * Where CLI commands send their calls:
 * 1. the daemon the environment names (LESSOR_SOCKET, or LESSOR_ADDR with a token; see
 *    src/cli/daemon-target.ts), as the identity that daemon gives this caller — with no fallback;
 * 2. else the daemon for the home when one is listening on its socket;
 * 3. else the vault opened in-process from the home (same policy, same audit).
 * All present the {@link CliApi} surface — the client SDK's methods — so every command works in each mode.
 */
import { existsSync } from "node:fs";
import type { LessorClient } from "../client/client.js";
import { resolveHome } from "../config/home.js";
import type { PassphraseProvider } from "../crypto/keys/passphrase.js";
import { VaultError } from "../base/errors.js";
import { connectDaemon, connectTarget } from "./daemon-backend.js";
import { daemonTarget } from "./daemon-target.js";

/** The calls CLI commands make (the client SDK's surface). */
export type CliApi = Pick<
  LessorClient,
  | "status"
  | "whoami"
  | "storeSecret"
  | "rotateSecret"
  | "rollbackSecret"
  | "deleteSecret"
  | "revealSecret"
  | "listSecrets"
  | "getSecretMetadata"
  | "secretHistory"
  | "requestLease"
  | "accessSecret"
  | "leaseAndAccess"
  | "renewLease"
  | "revokeLease"
  | "revokeAllForAgent"
  | "killswitch"
  | "releaseKillswitch"
  | "listLeases"
  | "auditQuery"
  | "auditVerify"
  | "auditRecover"
  | "reloadPolicy"
  | "explain"
  | "rotateMasterKey"
  | "createToken"
  | "listTokens"
  | "revokeToken"
>;

/** An open backend. */
export interface Backend {
  mode: "daemon" | "embedded";
  /** The home (for a daemon named by the environment: the home that would be used otherwise). */
  home: string;
  /** For a daemon named by the environment, where it is (`$LESSOR_SOCKET (/path)`); else null. */
  endpoint: string | null;
  api: CliApi;
  close(): Promise<void>;
}

/** How {@link openBackend} opens a backend. */
export interface OpenBackendOptions {
  /** The --home option, when given (LESSOR_HOME or ~/.lessor otherwise). */
  home?: string;
  env?: NodeJS.ProcessEnv;
  /** Asks for the passphrase of a passphrase-sealed vault (default: src/cli/passphrase.ts). */
  getPassphrase?: PassphraseProvider;
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
  const target = daemonTarget(env);
  if (target) {
    if (opts.home !== undefined)
      throw new VaultError("config_invalid", `--home and ${target.via} are both given: --home opens a vault, ${target.via} names a daemon; drop --home, or unset ${target.via}`);
    return connectTarget(target, resolveHome(undefined, env));
  }
  const home = resolveHome(opts.home, env);
  if (!existsSync(home)) throw noVaultError(home);
  const daemon = await connectDaemon(home);
  if (daemon) return daemon;
  const [{ openVault }, { embeddedApi }, { terminalPassphrase }] = await Promise.all([
    import("../config/open-vault.js"),
    import("./embedded-api.js"),
    import("./passphrase.js"),
  ]);
  const vault = await openVault({ home, env, getPassphrase: opts.getPassphrase ?? terminalPassphrase(env) });
  return { mode: "embedded", home, endpoint: null, api: embeddedApi(vault), close: () => vault.close() };
}
