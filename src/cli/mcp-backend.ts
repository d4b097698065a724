/**
 * The backend `lessor mcp` serves its sessions through (over stdio, `--http`, `--socket` or
 * `--vsock-port`), and how each session's leases are revoked when it ends: as `lessor run` revokes its
 * own (./run/connection.ts).
 *
 * The backend is kept for the whole run, which a person's chat leaves idle far longer than the
 * daemon's `idle_timeout`, so it reconnects once the daemon has closed its connection (idle_timeout,
 * max_connection_lifetime, a restart), only ever as the identity it started with
 * (src/backend/daemon.ts). At a session's end its leases are revoked on it and, if that fails, once
 * more on a new backend (the daemon, or with no daemon left, the vault itself); a lease still left is
 * named on stderr with `lessor revoke <id>`, and `lessor mcp` exits 1 ({@link McpBackend.exitCode}).
 */
import type { Backend } from "../backend/backend.js";
import { PendingLeases } from "../backend/pending-leases.js";
import type { Cli } from "./cli.js";
import { EXIT } from "./exit-codes.js";
import { Connection, revokeLeases } from "./run/connection.js";

/** `lessor mcp`'s backend, shared by its sessions; see the module comment. */
export class McpBackend {
  /** Leases of ended sessions that could not be revoked. */
  readonly #left = new Set<string>();

  private constructor(
    readonly cli: Cli,
    readonly backend: Backend,
  ) {}

  /** Opens the backend (the daemon, reconnecting; else the vault in-process). The caller closes it. */
  static async open(cli: Cli): Promise<McpBackend> {
    return new McpBackend(cli, await cli.openBackend({ longLived: true }));
  }

  /** Revokes one ended session's leases (McpSessionOptions.revoke); resolves to those left live. */
  readonly revoke = async (ids: readonly string[], reason: string): Promise<readonly string[]> => {
    const conn = new Connection(this.cli, this.backend);
    try {
      const left = await revokeLeases(this.cli, conn, new PendingLeases(ids), reason, "this MCP session");
      for (const id of left) this.#left.add(id);
      return left;
    } finally {
      await conn.close();
    }
  };

  /** 0, or 1 ({@link EXIT.error}) once a session left a lease it could not revoke. */
  get exitCode(): number {
    return this.#left.size > 0 ? EXIT.error : EXIT.ok;
  }

  /** Closes the backend (once every session has ended). */
  close(): Promise<void> {
    return this.backend.close();
  }
}
