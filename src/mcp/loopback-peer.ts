/**
 * Who is at the other end of a loopback TCP connection. On Linux the kernel lists both ends of a
 * loopback connection in /proc/net/tcp (tcp6 for IPv6), each with the uid that owns its socket: the
 * entry whose local end is our peer's address and whose remote end is ours is the peer's socket.
 * Used where a capability URL alone guards a page (./approval-page.ts): a URL that leaked to another
 * local user (a browser's argv, readable in /proc/PID/cmdline) is still refused to them.
 */
import { readFileSync } from "node:fs";
import { isIPv4 } from "node:net";
import type { Socket } from "node:net";

/** An IPv4 address and port as /proc/net/tcp writes them: the address's bytes in host order (little-endian here), hex. */
function procEndpoint(ip: string, port: number): string | null {
  if (!isIPv4(ip)) return null;
  const b = ip.split(".").map(Number);
  const hex = (n: number): string => n.toString(16).toUpperCase().padStart(2, "0");
  return `${hex(b[3]!)}${hex(b[2]!)}${hex(b[1]!)}${hex(b[0]!)}:${port.toString(16).toUpperCase().padStart(4, "0")}`;
}

/**
 * The uid owning the socket at the other end of `socket` (an IPv4 loopback TCP connection), or null
 * when that cannot be told: not Linux, no /proc, an IPv6 connection, or no such entry (the peer
 * already gone).
 */
export function loopbackPeerUid(socket: Socket, table = "/proc/net/tcp"): number | null {
  const peer = socket.remoteAddress !== undefined && socket.remotePort !== undefined ? procEndpoint(socket.remoteAddress, socket.remotePort) : null;
  const self = socket.localAddress !== undefined && socket.localPort !== undefined ? procEndpoint(socket.localAddress, socket.localPort) : null;
  if (peer === null || self === null) return null;
  let text: string;
  try {
    text = readFileSync(table, "latin1");
  } catch {
    return null;
  }
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid …
    if (f[1] === peer && f[2] === self && f[7] !== undefined && /^\d+$/.test(f[7])) return Number(f[7]);
  }
  return null;
}
