/**
 * The CLI's backend (src/backend/backend.ts: the daemon if one answers, else the vault in-process),
 * asking for the passphrase of a passphrase-sealed vault on the terminal. The prompt module is loaded
 * only if a passphrase is asked for.
 */
import { openBackend, type Backend } from "../backend/backend.js";
import type { BackendOpenOptions } from "./cli.js";

/** Opens the backend for `home` (the --home option, when given). */
export function openCliBackend(home: string | undefined, opts: BackendOpenOptions = {}): Promise<Backend> {
  const env = process.env;
  return openBackend({
    ...(home !== undefined ? { home } : {}),
    ...(opts.longLived === true ? { longLived: true } : {}),
    env,
    getPassphrase: (about) => import("./passphrase.js").then((m) => m.terminalPassphrase(env)(about)),
  });
}
