/**
 * The listener factory: opens the listeners the configuration asks for. A new transport is one more
 * {@link ListenerSpec} kind, one case here and one file beside this one; the server and the daemon do
 * not change.
 */
import { VaultError } from "../../base/errors.js";
import type { ServerConfig } from "../../config/config.js";
import { inHome } from "../../config/home.js";
import type { PeerCredLoader } from "../../native/peercred.js";
import type { Listener, ListenerSpec, OnConnection } from "./listener.js";
import { listenTcp } from "./tcp.js";
import { listenUnix } from "./uds.js";

export type { Listener, ListenerSpec, OnConnection } from "./listener.js";

/** What every listener is given. */
export interface ListenerOptions {
  onConnection: OnConnection;
  /** Told about failures the listener survives (accept errors). Default: ignored. */
  onError?: (e: Error) => void;
  /** The peer-credential addon, for Unix sockets (without it their peers carry no uid). */
  peercred?: PeerCredLoader;
}

/** The listeners a `[server]` table asks for: always the Unix socket, then loopback TCP if set. */
export function listenerSpecs(server: Pick<ServerConfig, "socket" | "socketMode" | "tcp">, home: string): ListenerSpec[] {
  const specs: ListenerSpec[] = [{ kind: "uds", path: inHome(home, server.socket), mode: server.socketMode }];
  if (server.tcp) specs.push({ kind: "tcp", host: server.tcp.host, port: server.tcp.port });
  return specs;
}

/** Opens one listener. Errors as the transport's (config_invalid, insecure_permissions, unavailable). */
export async function openListener(spec: ListenerSpec, opts: ListenerOptions): Promise<Listener> {
  const onError = opts.onError ?? (() => {});
  switch (spec.kind) {
    case "uds": {
      const server = await listenUnix(spec.path, {
        mode: spec.mode,
        onConnection: opts.onConnection,
        onError,
        ...(opts.peercred ? { peercred: opts.peercred } : {}),
      });
      // close() removes the socket file, if it is still the one created.
      return { bound: spec, close: () => void server.close() };
    }
    case "tcp": {
      const server = await listenTcp(spec.host, spec.port, opts.onConnection, onError);
      const addr = server.address();
      const bound: ListenerSpec = addr !== null && typeof addr === "object" ? { kind: "tcp", host: addr.address, port: addr.port } : spec;
      return { bound, close: () => void server.close() };
    }
    case "vsock":
      throw new VaultError("config_invalid", `the vsock listener (port ${spec.port}) is not built yet; use the Unix socket or loopback TCP`);
  }
}
