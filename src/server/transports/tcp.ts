/**
 * The loopback TCP transport. TCP carries a bearer token in the hello and has no peer credentials, so
 * anyone who can reach the port can try tokens; lessor therefore binds it to loopback only (127.0.0.0/8,
 * ::1, or "localhost", bound as 127.0.0.1 where the clients dial it). Remote access goes through an SSH
 * tunnel or a proxy the operator controls, never a public bind.
 */
import { BlockList, createServer, isIP, type Server, type Socket } from "node:net";
import { VaultError } from "../../base/errors.js";
import type { PeerInfo } from "../connection.js";

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet("127.0.0.0", 8, "ipv4");
LOOPBACK.addAddress("::1", "ipv6");

/** True for an IP literal in 127.0.0.0/8 or ::1 (including IPv4-mapped ::ffff:127.x.x.x). */
export function isLoopbackAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0 || address.includes("%")) return false; // no zone ids: "::1%lo" is spelled "::1"
  return LOOPBACK.check(address, family === 4 ? "ipv4" : "ipv6");
}

function refused(host: string, why: string): VaultError {
  const shown = host.length <= 64 ? JSON.stringify(host) : "the configured host";
  return new VaultError(
    "config_invalid",
    `TCP host ${shown} ${why}: the TCP transport is loopback-only (127.0.0.1, ::1 or localhost) because it authenticates by bearer token alone; reach a remote daemon through an SSH tunnel instead`,
  );
}

/**
 * The address to bind for `host`, refusing anything that is not loopback. IP literals are checked as
 * they are; "localhost" is 127.0.0.1, never looked up; any other name is refused.
 *
 * Every lessor client dials "localhost" as 127.0.0.1 (src/client/transport.ts, `loopbackHost`). The
 * daemon once bound the first address the resolver gave: where it answers ::1 first, the daemon sat on
 * [::1]:PORT, every client dialled 127.0.0.1:PORT, and another local user could take that address
 * while the daemon ran, to receive every client's hello (its token id and nonce) and answer it.
 */
export async function loopbackBindAddress(host: string): Promise<string> {
  if (isIP(host) !== 0) {
    if (!isLoopbackAddress(host)) throw refused(host, "is not a loopback address");
    return host;
  }
  if (host.toLowerCase() !== "localhost") throw refused(host, "is a host name other than localhost");
  return "127.0.0.1";
}

/**
 * Listens on loopback TCP and passes each connection, with its peer info (remote address, and the local
 * address and port the token handshake binds its proof to), to `onConnection`. Refuses
 * (VaultError "config_invalid") a host that is not loopback, and checks the bound address again after
 * listening. Port 0 picks a free port (see `server.address()`). Listener errors after start-up go to
 * `onError` (default: ignored, so an accept failure such as EMFILE never crashes the daemon).
 */
export async function listenTcp(
  host: string,
  port: number,
  onConnection: (socket: Socket, peer: PeerInfo) => void,
  onError: (e: Error) => void = () => {},
): Promise<Server> {
  if (!Number.isSafeInteger(port) || port < 0 || port > 65535) throw new VaultError("config_invalid", `TCP port ${String(port)} is not a port number (0-65535)`);
  const address = await loopbackBindAddress(host);
  const server = createServer({ noDelay: true }, (socket) => {
    const peer: PeerInfo = { transport: "tcp" };
    if (socket.remoteAddress !== undefined) peer.remoteAddress = socket.remoteAddress;
    if (socket.localAddress !== undefined) peer.localAddress = socket.localAddress;
    if (socket.localPort !== undefined) peer.localPort = socket.localPort;
    onConnection(socket, peer);
  });
  await new Promise<void>((resolve, reject) => {
    const fail = (e: NodeJS.ErrnoException): void => {
      reject(new VaultError("config_invalid", `cannot listen on TCP ${address} port ${port} (${e.code ?? e.message}); pick a free port or stop the other daemon`));
    };
    server.once("error", fail);
    server.listen({ host: address, port, backlog: 1024 }, () => {
      server.off("error", fail);
      resolve();
    });
  });
  server.on("error", onError);
  const bound = server.address();
  if (bound === null || typeof bound !== "object" || !isLoopbackAddress(bound.address)) {
    server.close();
    throw refused(host, "was bound to an address that is not loopback");
  }
  return server;
}
