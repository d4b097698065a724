/**
 * The backend a command that holds leases (`lessor run`, `lessor inject`, `lessor proxy`, each
 * `lessor mcp` session) takes them through, and how it revokes them when it ends: on that connection,
 * and if that fails (the daemon closed it for `idle_timeout` or `max_connection_lifetime` while the
 * command ran, or was restarted) once more on a new one — to the daemon, or with no daemon left, to
 * the vault itself (src/backend/backend.ts).
 */
import type { Backend } from "../../backend/backend.js";
import type { PendingLeases } from "../../backend/pending-leases.js";
import type { Cli } from "../cli.js";

/** How a {@link Connection} opens its backend. */
export interface ConnectionOptions {
  /**
   * True for a command that serves for hours through its backend (`lessor run`'s and `lessor proxy`'s
   * proxies ask the vault on each request and watch their leases): a daemon backend reconnects once the
   * daemon closed the connection (restart, `max_connection_lifetime`), with the daemon checked again
   * and only as the same identity; an embedded one keeps the daemon's one-second brake checks
   * (src/backend/backend.ts, `longLived`). False: a lost connection fails every later call until
   * {@link Connection.close}.
   */
  longLived?: boolean;
}

/** A command's own backend: opened when leases are taken, reopened if it failed when revoking them. */
export class Connection {
  #backend: Backend | null;
  /** True while {@link Connection.#backend} is the one given to the constructor (another's: never closed here). */
  #borrowed: boolean;

  /** Backends this connection opens are long-lived (see {@link ConnectionOptions.longLived}). */
  readonly #longLived: boolean;

  /**
   * `shared`: a backend to use first that belongs to the caller (`lessor mcp`'s, which all its sessions
   * use): {@link Connection.close} only lets go of it, and the next {@link Connection.open} opens one of
   * this connection's own.
   */
  constructor(
    readonly cli: Cli,
    shared?: Backend,
    opts: ConnectionOptions = {},
  ) {
    this.#backend = shared ?? null;
    this.#borrowed = shared !== undefined;
    this.#longLived = opts.longLived === true;
  }

  /** The backend if one is open. */
  async current(): Promise<Backend | null> {
    return this.#backend;
  }

  /** The open backend, or a new one. */
  async open(): Promise<Backend> {
    this.#backend ??= await (this.#longLived ? this.cli.openBackend({ longLived: true }) : this.cli.openBackend());
    return this.#backend;
  }

  /** Closes the backend (a shared one is only let go of); the next {@link Connection.open} opens a new one. */
  async close(): Promise<void> {
    const b = this.#backend;
    const borrowed = this.#borrowed;
    this.#backend = null;
    this.#borrowed = false;
    if (!borrowed) await b?.close().catch(() => {});
  }
}

/** What {@link revokeLeases} revokes: a LeaseBook (src/cli/run/leases.ts), or bare {@link PendingLeases}. */
export type Revocable = Pick<PendingLeases, "revokeAll" | "unrevoked">;

/**
 * Revokes the leases of `book` with `reason`, retrying once on a new connection when the first
 * attempt leaves some. Returns the ids of the leases that could still not be revoked, after saying
 * on stderr which they are and how to end them; `of` names the command ("this run").
 */
export async function revokeLeases(cli: Cli, conn: Connection, book: Revocable, reason: string, of: string): Promise<readonly string[]> {
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
