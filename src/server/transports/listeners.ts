/**
 * The listener factory: opens the listeners the configuration asks for. A new transport is one more
 * {@link ListenerSpec} kind, one case here and one file beside this one; the server and the daemon do
 * not change.
 */
import { VaultError } from "../../base/errors.js";
import type { ServerConfig, VmConfig } from "../../config/config.js";
import { inHome } from "../../config/home.js";
import type { PeerCredLoader } from "../../native/peercred.js";
import type { VsockLoader } from "../../native/vsock.js";
import { listenFirecracker } from "./firecracker.js";
import type { Listener, ListenerSpec, OnConnection } from "./listener.js";
import { listenTcp } from "./tcp.js";
import { listenUnix } from "./uds.js";
import { listenVsock } from "./vsock.js";

export type { Listener, ListenerSpec, OnConnection } from "./listener.js";

/** What every listener is given. */
export interface ListenerOptions {
  onConnection: OnConnection;
  /** Told about failures the listener survives (accept errors). Default: ignored. */
  onError?: (e: Error) => void;
  /** The peer-credential addon, for Unix sockets (without it their peers carry no uid). */
  peercred?: PeerCredLoader;
  /** The AF_VSOCK addon, for a "vsock" listener (without it that listener cannot open). */
  vsock?: VsockLoader;
}

/** A Firecracker VM's socket path: where Firecracker delivers its guest's connections to host port `port`. */
export function firecrackerSocketPath(vm: Pick<VmConfig, "udsPath" | "port">, home: string): string {
  return `${inHome(home, vm.udsPath)}_${vm.port}`;
}

/**
 * The listeners the configuration asks for: always the Unix socket, then loopback TCP if set, one
 * socket per `[[vm]]` (Firecracker), and AF_VSOCK if `[server] vsock_port` is set.
 */
export function listenerSpecs(server: Pick<ServerConfig, "socket" | "socketMode" | "tcp"> & Partial<Pick<ServerConfig, "vsockPort">>, home: string, vms: readonly VmConfig[] = []): ListenerSpec[] {
  const specs: ListenerSpec[] = [{ kind: "uds", path: inHome(home, server.socket), mode: server.socketMode }];
  if (server.tcp) specs.push({ kind: "tcp", host: server.tcp.host, port: server.tcp.port });
  for (const vm of vms)
    specs.push({ kind: "vsock-uds", path: firecrackerSocketPath(vm, home), mode: vm.socketMode, vm: vm.name, port: vm.port, ...(vm.uid !== undefined ? { uid: vm.uid } : {}) });
  if (server.vsockPort !== undefined && server.vsockPort !== null) specs.push({ kind: "vsock", port: server.vsockPort });
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
    case "vsock-uds": {
      const server = await listenFirecracker(spec, { onConnection: opts.onConnection, onError, ...(opts.peercred ? { peercred: opts.peercred } : {}) });
      return { bound: spec, close: () => void server.close() };
    }
    case "vsock": {
      const l = listenVsock(spec.port, opts.vsock, opts.onConnection, onError);
      return { bound: spec, close: () => l.close() };
    }
    default:
      throw new VaultError("config_invalid", `unknown listener kind ${JSON.stringify((spec as { kind: unknown }).kind)}`);
  }
}
