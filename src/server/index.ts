/**
 * `lessor/server`: the protocol server, its listeners and the daemon, for programs that serve a vault
 * over a socket of their own or start a daemon in-process.
 *
 * ```ts
 * import { LessorServer, openListener } from "lessor/server";
 * const server = new LessorServer({ vault, authenticate, version: "1.0.0" });
 * const tcp = await openListener({ kind: "tcp", host: "127.0.0.1", port: 7391 }, { onConnection: (stream, peer) => server.handle(stream, peer) });
 * ```
 */
export { LessorServer, DEFAULT_SERVER_LIMITS, TOKEN_RECHECK_MS, type ServerOptions, type PeerInfo, type ServerLimits } from "./server.js";
export { listenerSpecs, openListener, type Listener, type ListenerOptions, type ListenerSpec, type OnConnection } from "./transports/listeners.js";
export { listenUnix, UnixListener, type ListenUnixOptions, type UdsPeer } from "./transports/uds.js";
export { listenTcp, isLoopbackAddress } from "./transports/tcp.js";
export { makeAuthenticator } from "./authenticate.js";
export { startDaemon, RELOAD_IDENTITY, type Daemon, type DaemonOptions } from "./daemon.js";
export type { Logger } from "./logger.js";
