/**
 * The backend a command that holds leases (`lessor run`, `lessor inject`, `lessor proxy`) takes them
 * through, and how it revokes them when it ends: on that connection, and if that fails (the daemon
 * closed it for `idle_timeout` or `max_connection_lifetime` while the command ran, or was restarted)
 * once more on a new one — to the daemon, or with no daemon left, to the vault itself
 * (src/backend/backend.ts).
 */
import type { Backend } from "../../backend/backend.js";
import type { Cli } from "../cli.js";
import type { LeaseBook } from "./leases.js";

/** A command's own backend: opened when leases are taken, reopened if it failed when revoking them. */
export class Connection {
  #backend: Backend | null = null;
  constructor(readonly cli: Cli) {}

  /** The backend if one is open. */
  async current(): Promise<Backend | null> {
    return this.#backend;
  }

  /** The open backend, or a new one. */
  async open(): Promise<Backend> {
    this.#backend ??= await this.cli.openBackend();
    return this.#backend;
  }

  /** Closes the backend, if one is open; the next {@link Connection.open} opens a new one. */
  async close(): Promise<void> {
    const b = this.#backend;
    this.#backend = null;
    await b?.close().catch(() => {});
  }
}

/**
 * Revokes the leases of `book` with `reason`, retrying once on a new connection when the first
 * attempt leaves some. Returns the ids of the leases that could still not be revoked, after saying
 * on stderr which they are and how to end them; `of` names the command ("this run").
 */
export async function revokeLeases(cli: Cli, conn: Connection, book: LeaseBook, reason: string, of: string): Promise<readonly string[]> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      if ((await book.revokeAll(reason, (await conn.open()).api)).failed === 0) return [];
    } catch {
      // no backend could be opened: the leases stay pending
    }
    await conn.close();
  }
  const ids = book.unrevoked;
  if (ids.length > 0)
    cli.err(
      `lessor: ${ids.length} lease(s) of ${of} could not be revoked (${ids.join(", ")}); they end when they expire. End them now with: ${ids.map((id) => `lessor revoke ${id}`).join("; ")}`,
    );
  return ids;
}
