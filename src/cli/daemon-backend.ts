/**
 * The daemon half of the CLI's backend: connects to the daemon listening on the home's socket, or
 * says there is none. Kept apart from src/cli/backend.ts (which falls back to the embedded vault) so
 * the start-up fast path can load it without the vault, SQLite and the crypto.
 */
import { existsSync } from "node:fs";
import { LessorClient } from "../client/client.js";
import { loadConfig } from "../config/load.js";
import { inHome } from "../config/home.js";
import { VaultError } from "../vault/errors.js";
import type { Backend } from "./backend.js";

/**
 * Connects to the daemon of `home` (an existing home directory). Null when no daemon is listening
 * there (no socket file, or a stale one left by a killed daemon); other failures — a bad
 * lessor.toml, a refused handshake — throw.
 */
export async function connectDaemon(home: string): Promise<Backend | null> {
  const socketPath = inHome(home, loadConfig(home).server.socket);
  if (!existsSync(socketPath)) return null;
  try {
    // pipeline: the first call goes out right behind the hello (a refused handshake fails that call).
    const client = await LessorClient.connect({ socketPath }, { reconnect: false, pipeline: true });
    return { mode: "daemon", home, api: client, close: () => client.close() };
  } catch (e) {
    if (e instanceof VaultError && e.code === "unavailable" && /no lessor daemon is listening/.test(e.message)) return null;
    throw e;
  }
}
