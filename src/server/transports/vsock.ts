/**
 * The AF_VSOCK form of the vsock transport, for QEMU/vhost-vsock guests. The addon (native/vsock)
 * listens on `VMADDR_CID_ANY:port` and its accept thread reports each connection's descriptor and the
 * peer's CID, which the host kernel fills in (a guest cannot choose it). {@link acceptVsock} is the
 * one code path every accepted connection takes: it checks the CID is a guest's, relays the
 * descriptor through a Unix socketpair (Node cannot wrap an AF_VSOCK descriptor itself) and hands the
 * server a net.Socket with `{ transport: "vsock", cid }`; the authenticator maps the CID through
 * `[[vsock]]` and refuses any other.
 *
 * What is tested on a machine where AF_VSOCK loopback does not connect (docs/vm.md): the addon loads,
 * a socket binds and listens, and acceptVsock with a socketpair standing in for the guest — the
 * relay, the CID check and the identity, end to end through the daemon's server.
 */
import { closeSync } from "node:fs";
import { Socket } from "node:net";
import { VaultError } from "../../base/errors.js";
import type { VsockAccepted, VsockAddon, VsockLoader } from "../../native/vsock.js";
import type { PeerInfo } from "../connection.js";
import type { OnConnection } from "./listener.js";

/** The lowest CID a guest can have (0: hypervisor, 1: local, 2: host). */
const MIN_GUEST_CID = 3;
/** VMADDR_CID_ANY: never a peer. */
const CID_ANY = 2 ** 32 - 1;

/** An open AF_VSOCK listener. */
export interface VsockListener {
  readonly port: number;
  close(): void;
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}

/**
 * Takes one accepted connection (its descriptor is owned from here on) to the server: refuses a peer
 * CID that cannot be a guest (closing the descriptor and telling `onError`), relays the descriptor
 * through a socketpair, and calls `onConnection` with the peer `{ transport: "vsock", cid }`.
 */
export function acceptVsock(addon: Pick<VsockAddon, "bridge">, a: VsockAccepted, onConnection: OnConnection, onError: (e: Error) => void): void {
  if (!Number.isSafeInteger(a.cid) || a.cid < MIN_GUEST_CID || a.cid >= CID_ANY) {
    closeQuietly(a.fd);
    onError(new Error(`refused an AF_VSOCK connection from CID ${a.cid}: not a guest's CID`));
    return;
  }
  let socket: Socket;
  try {
    const fd = addon.bridge(a.fd); // owns a.fd now, also on failure
    socket = new Socket({ fd, readable: true, writable: true });
  } catch (e) {
    onError(e instanceof Error ? e : new Error(String(e)));
    return;
  }
  socket.on("error", () => {});
  const peer: PeerInfo = { transport: "vsock", cid: a.cid };
  try {
    onConnection(socket, peer);
  } catch (e) {
    socket.destroy();
    onError(e instanceof Error ? e : new Error(String(e)));
  }
}

/**
 * Listens on AF_VSOCK `port` (any local CID). Throws `config_invalid` when the addon is unavailable,
 * `unavailable` when the kernel refuses (no vsock on this machine, the port taken).
 */
export function listenVsock(port: number, loader: VsockLoader | undefined, onConnection: OnConnection, onError: (e: Error) => void): VsockListener {
  if (loader === undefined || !loader.available) {
    const why = loader !== undefined && !loader.available ? loader.reason : "the vsock addon was not loaded";
    throw new VaultError("config_invalid", `[server] vsock_port = ${port} needs the AF_VSOCK addon, which is not available: ${why}; build it (native/vsock/README.md) or remove vsock_port`);
  }
  const { addon } = loader;
  let fd: number;
  try {
    fd = addon.listen(port, 1024);
  } catch (e) {
    const code = (e as { code?: string }).code ?? "";
    const msg = (e as Error).message;
    const hint =
      code === "EADDRINUSE"
        ? "another process listens on that vsock port; pick another vsock_port"
        : code === "EAFNOSUPPORT" || code === "ENODEV"
          ? "this kernel has no vsock transport loaded; on a host, load vhost_vsock (modprobe vhost_vsock)"
          : "check that this machine has vsock (/dev/vsock or /dev/vhost-vsock)";
    throw new VaultError("unavailable", `cannot listen on AF_VSOCK port ${port} (${msg}); ${hint}`);
  }
  let watcher;
  try {
    watcher = addon.watch(fd, (a) => acceptVsock(addon, a, onConnection, onError));
  } catch (e) {
    closeQuietly(fd);
    throw new VaultError("unavailable", `cannot accept on AF_VSOCK port ${port} (${(e as Error).message})`);
  }
  let closed = false;
  return {
    port,
    close() {
      if (closed) return;
      closed = true;
      addon.unwatch(watcher);
      closeQuietly(fd);
    },
  };
}
