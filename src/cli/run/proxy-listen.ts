/**
 * Where lessor's proxy listens when it serves an agent outside lessor's own sandbox (`lessor proxy`):
 * a TCP port on a loopback address, or a Unix socket at a path the owner names.
 *
 * Never another address: the proxy adds the agent's credentials to what it forwards, so a listener on
 * a network interface would lend them to the network (the session token is the only guard left, and
 * it crosses the wire in clear text). A VM reaches a loopback port through a forwarded port.
 *
 * The socket is bound as the daemon binds its own (src/server/transports/): its directory must be one
 * no other user can change, a stale socket of ours is replaced and anything else refused, and the file
 * is born 0600 in a private directory and linked into place.
 */
import { BlockList, isIPv4, isIPv6, type Server } from "node:net";
import { basename, dirname, join, resolve } from "node:path";
import { UsageError } from "../cli.js";
import { assertSafeSocketDir } from "../../server/transports/socket-dir.js";
import { bindSocketFile, removeSocketFile, type SocketFile } from "../../server/transports/socket-file.js";
import { clearStaleSocket } from "../../server/transports/stale-socket.js";

/**
 * Where the proxy listens: a loopback TCP address (port 0: any free port), a Unix socket path, or
 * nowhere: `guests`, whose connections a guest listener hands over (`RunProxy.accept`; src/cli/guest-gate.ts),
 * or `adopt`, on a listening socket given later (`RunProxy.adopt`: the sandbox's native bridge's).
 */
export type ProxyListen = { host: string; port: number } | { socket: string } | { guests: true } | { adopt: true };

const LOOPBACK_V4 = new BlockList();
LOOPBACK_V4.addSubnet("127.0.0.0", 8, "ipv4");

/**
 * True for an IPv4 address in 127.0.0.0/8 or the IPv6 loopback address `::1` (any spelling of it;
 * not the IPv4-mapped forms, which BlockList would match against the IPv4 rule).
 */
export function isLoopbackAddress(host: string): boolean {
  if (isIPv4(host)) return LOOPBACK_V4.check(host, "ipv4");
  if (isIPv6(host)) return new URL(`http://[${host}]/`).hostname === "[::1]";
  return false;
}

/**
 * Parses `--listen HOST:PORT` strictly: HOST an IPv4 loopback address (127.x.x.x) or `[::1]`, PORT 0
 * to 65535. Anything else is a UsageError saying why the proxy stays on loopback.
 */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):([0-9]{1,5})$/.exec(text);
  if (!m) throw new UsageError(`--listen ${JSON.stringify(text)}: expected HOST:PORT with a loopback address, e.g. 127.0.0.1:3128 or [::1]:3128 (port 0: any free port)`);
  const host = (m[1] ?? m[2])!;
  const port = Number(m[3]);
  if (port > 65535) throw new UsageError(`--listen ${text}: the port must be 0 to 65535`);
  if (!isLoopbackAddress(host))
    throw new UsageError(
      `--listen ${text}: the proxy listens on loopback only (127.0.0.1 or [::1]): it adds the agent's credentials to what it forwards, so it must not be reachable from the network. A VM reaches it through a forwarded port; a container through --socket`,
    );
  return { host, port };
}

/**
 * Checks, before anything is leased, that the directory of socket `path` is one no other user can
 * change (the same check {@link bindPrivateSocket} makes again when it binds).
 */
export function checkSocketDir(path: string): void {
  const uid = typeof process.getuid === "function" ? process.getuid() : null;
  if (uid !== null) assertSafeSocketDir(dirname(resolve(path)), uid);
}

/** A Unix socket the proxy listens on; `remove` deletes the file if it is still the one created. */
export interface BoundSocket {
  path: string;
  remove(): void;
}

/**
 * Binds `server` to a 0600 Unix socket at `path` (made absolute) with the daemon's checks: see the
 * module comment. Errors are VaultErrors naming the path and the fix.
 */
export async function bindPrivateSocket(server: Server, path: string): Promise<BoundSocket> {
  const abs = resolve(path);
  const uid = typeof process.getuid === "function" ? process.getuid() : null;
  const real = join(uid === null ? dirname(abs) : assertSafeSocketDir(dirname(abs), uid), basename(abs));
  await clearStaleSocket(real, uid);
  const file: SocketFile = await bindSocketFile(server, real, 0o600, uid);
  return { path: real, remove: () => removeSocketFile(file) };
}
