/** A bound on the connections one HTTP server of `lessor mcp` holds open at once. */
import type { Server, Socket } from "node:net";
import { SparseLog } from "../base/sparse-log.js";

/**
 * Closes every connection to `srv` past the first `max` open at once, logging the refusals sparsely
 * (`what`, if not empty, says which server in the line). Counted on `connection` rather than with
 * maxConnections, which sockets emitted by another listener (a loopback twin) would pass. With
 * `group`, each group of connections has its own `max` (so that one group cannot fill another's).
 */
export function capConnections(srv: Server, max: number, what: string, log: (line: string) => void, group: (socket: Socket) => string = () => ""): void {
  const open = new Map<string, number>();
  const says = `lessor mcp: ${max} connections${what === "" ? "" : ` ${what}`} are open; a new one was closed`;
  const dropped = new SparseLog(
    log,
    () => says,
    (n) => `${says} (${n} so far)`,
  );
  srv.on("connection", (socket: Socket) => {
    const g = group(socket);
    const n = open.get(g) ?? 0;
    if (n >= max) {
      socket.destroy();
      dropped.add();
      return;
    }
    open.set(g, n + 1);
    socket.once("close", () => {
      const left = (open.get(g) ?? 1) - 1;
      if (left === 0) open.delete(g);
      else open.set(g, left);
    });
  });
}
