/**
 * Where CLI commands send their calls: the daemon for the home when one is listening on its socket,
 * otherwise the vault opened in-process from the home (same policy, same audit). Both present the
 * {@link CliApi} surface — the client SDK's methods — so every command works in both modes.
 */
import { existsSync } from "node:fs";
import type { LessorClient } from "../client/client.js";
import { resolveHome } from "../config/home.js";
import { VaultError } from "../vault/errors.js";
import { connectDaemon } from "./daemon-backend.js";

/** The calls CLI commands make (the client SDK's surface). */
export type CliApi = Pick<
  LessorClient,
  | "status"
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
  | "listLeases"
  | "auditQuery"
  | "auditVerify"
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
  home: string;
  api: CliApi;
  close(): Promise<void>;
}

/** Connects to the home's daemon, or opens the vault in-process when no daemon is listening. */
export async function openBackend(opts: { home?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Backend> {
  const env = opts.env ?? process.env;
  const home = resolveHome(opts.home, env);
  if (!existsSync(home)) throw new VaultError("key_unavailable", `there is no lessor home at ${home}; run lessor init (or pass --home / set LESSOR_HOME)`);
  const daemon = await connectDaemon(home);
  if (daemon) return daemon;
  const [{ openVault }, { embeddedApi }] = await Promise.all([import("../config/open-vault.js"), import("./embedded-api.js")]);
  const vault = await openVault({ home, env });
  return { mode: "embedded", home, api: embeddedApi(vault), close: () => vault.close() };
}
