/** A bound on the connections one HTTP server of `lessor mcp` holds open at once. */
import type { Server, Socket } from "node:net";
import { SparseLog } from "../base/sparse-log.js";

/**
 * Closes every connection to `srv` past the first `max` open at once, logging the refusals sparsely
 * (`what`, if not empty, says which server in the line). Counted on `connection` rather than with maxConnections,
 * which sockets emitted by another listener (a loopback twin) would pass.
 */
export function capConnections(srv: Server, max: number, what: string, log: (line: string) => void): void {
  let open = 0;
  const says = `lessor mcp: ${max} connections${what === "" ? "" : ` ${what}`} are open; a new one was closed`;
  const dropped = new SparseLog(
    log,
    () => says,
    (n) => `${says} (${n} so far)`,
  );
  srv.on("connection", (socket: Socket) => {
    if (open >= max) {
      socket.destroy();
      dropped.add();
      return;
    }
    open++;
    socket.once("close", () => open--);
  });
}
