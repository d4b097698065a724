/**
 * Who is at the other end of a loopback TCP connection. On Linux the kernel lists both ends of a
 * loopback connection, each with the uid that owns its socket: IPv4 sockets in /proc/net/tcp, IPv6
 * ones in /proc/net/tcp6 — including an IPv6 socket connected to an IPv4 listener through its
 * IPv4-mapped address (`::ffff:127.0.0.1`), which the listener sees as plain 127.0.0.1. The entry
 * whose local end is our peer's address and whose remote end is ours is the peer's socket.
 * Used where a capability URL alone guards a page (./approval-page.ts): a URL that leaked to another
 * local user (a browser's argv, readable in /proc/PID/cmdline) is still refused to them.
 */
import { readFileSync } from "node:fs";
import { isIPv4 } from "node:net";
import type { Socket } from "node:net";

/** The /proc tables searched by default: IPv4, then IPv6 (a peer on an IPv4-mapped IPv6 socket). */
export const PROC_TCP_TABLES: readonly string[] = ["/proc/net/tcp", "/proc/net/tcp6"];

const hex2 = (n: number): string => n.toString(16).toUpperCase().padStart(2, "0");
const hexPort = (port: number): string => port.toString(16).toUpperCase().padStart(4, "0");

/** An IPv4 address's bytes in host order (little-endian here), hex, as /proc/net/tcp writes them. */
function procV4(ip: string): string | null {
  if (!isIPv4(ip)) return null;
  const b = ip.split(".").map(Number);
  return `${hex2(b[3]!)}${hex2(b[2]!)}${hex2(b[1]!)}${hex2(b[0]!)}`;
}

/**
 * The forms an endpoint `ip:port` of an IPv4 connection may take in the tables: as an IPv4 socket's
 * (/proc/net/tcp) and as an IPv6 socket's IPv4-mapped address (/proc/net/tcp6: four 32-bit words,
 * each in host order).
 */
function procForms(ip: string, port: number): string[] {
  const v4 = procV4(ip.startsWith("::ffff:") ? ip.slice(7) : ip);
  if (v4 === null) return [];
  return [`${v4}:${hexPort(port)}`, `0000000000000000FFFF0000${v4}:${hexPort(port)}`];
}

/**
 * The uid owning the socket at the other end of `socket` (an IPv4 loopback TCP connection; the peer's
 * socket IPv4 or IPv6), or null when that cannot be told: not Linux, no /proc, an IPv6 listener, or
 * no such entry (the peer already gone). A caller guarding something must treat null as "not you".
 */
export function loopbackPeerUid(socket: Socket, tables: readonly string[] | string = PROC_TCP_TABLES): number | null {
  const peer = socket.remoteAddress !== undefined && socket.remotePort !== undefined ? procForms(socket.remoteAddress, socket.remotePort) : [];
  const self = socket.localAddress !== undefined && socket.localPort !== undefined ? procForms(socket.localAddress, socket.localPort) : [];
  if (peer.length === 0 || self.length === 0) return null;
  for (const table of typeof tables === "string" ? [tables] : tables) {
    let text: string;
    try {
      text = readFileSync(table, "latin1");
    } catch {
      continue;
    }
    for (const line of text.split("\n")) {
      const f = line.trim().split(/\s+/);
      // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid …
      if (f[1] !== undefined && f[2] !== undefined && peer.includes(f[1]) && self.includes(f[2]) && f[7] !== undefined && /^\d+$/.test(f[7])) return Number(f[7]);
    }
  }
  return null;
}

/**
 * True when `uid` (a peer's, from {@link loopbackPeerUid}) is the user running this process or root;
 * false for another user and for a peer whose user cannot be told. Connection caps count the two
 * apart (./connection-cap.ts), so that another local user cannot hold the cap and keep the owner's
 * clients out.
 */
export function isOwnersUid(uid: number | null): boolean {
  return uid !== null && typeof process.getuid === "function" && (uid === 0 || uid === process.getuid());
}
