/** A bound on the connections one HTTP server of `lessor mcp` holds open at once. */
import type { Server, Socket } from "node:net";
import { SparseLog } from "../base/sparse-log.js";

/**
 * Closes every connection to `srv` past the first `max` open at once, logging the refusals sparsely
 * (`what`, if not empty, says which server in the line). Counted on `connection` rather than with
 * maxConnections, which sockets emitted by another listener (a loopback twin) would pass.
 *
 * With `preferred`, a connection past the first `max` that it says yes to (the owner's: another local
 * user holding the cap must not keep the owner's clients out) is let in, up to `max` more. It is asked
 * only then: telling a loopback peer's user reads /proc/net/tcp, whose cost grows with every socket on
 * the machine, so a server that is not being flooded never pays it.
 */
export function capConnections(srv: Server, max: number, what: string, log: (line: string) => void, preferred?: (socket: Socket) => boolean): void {
  let shared = 0;
  let extra = 0;
  const says = `lessor mcp: ${max} connections${what === "" ? "" : ` ${what}`} are open; a new one was closed`;
  const dropped = new SparseLog(
    log,
    () => says,
    (n) => `${says} (${n} so far)`,
  );
  srv.on("connection", (socket: Socket) => {
    if (shared < max) {
      shared++;
      socket.once("close", () => shared--);
      return;
    }
    if (preferred !== undefined && extra < max && preferred(socket)) {
      extra++;
      socket.once("close", () => extra--);
      return;
    }
    socket.destroy();
    dropped.add();
  });
}
