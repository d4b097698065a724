/**
 * The Firecracker form of the vsock transport. Firecracker's vsock device forwards a guest's
 * connection to host port P as a connection to the Unix socket `<uds_path>_P` on the host; lessor
 * listens there, one socket per `[[vm]]`, and every connection arriving on it is that VM: the peer
 * it hands the server is `{ transport: "vsock", vm }`, whatever the guest later says in its hello.
 *
 * The socket is made exactly like the daemon's own (uds.ts: a directory no other user can change, a
 * stale socket of ours replaced and anything else refused, the file born owner-only and linked into
 * place with its final mode), because whoever can connect to it *is* the VM. When the `[[vm]]` entry
 * names the Firecracker process's `uid`, the peer's uid (SO_PEERCRED) travels with the connection and
 * the authenticator refuses any other; that needs the peer-credential addon, checked here at start.
 */
import { VaultError } from "../../base/errors.js";
import type { PeerCredLoader } from "../../native/peercred.js";
import type { PeerInfo } from "../connection.js";
import type { OnConnection } from "./listener.js";
import { listenUnix, type UnixListener } from "./uds.js";

/** What {@link listenFirecracker} needs. */
export interface FirecrackerSpec {
  /** `<uds_path>_<port>`, absolute. */
  path: string;
  mode: number;
  /** The `[[vm]]` name every connection here is. */
  vm: string;
  /** The Firecracker process's uid, when only it may connect. */
  uid?: number;
}

/**
 * Listens on a VM's vsock socket. Throws like {@link listenUnix} (insecure_permissions, unavailable,
 * config_invalid), and `config_invalid` when `uid` is set but peer credentials cannot be read.
 */
export async function listenFirecracker(
  spec: FirecrackerSpec,
  opts: { onConnection: OnConnection; onError: (e: Error) => void; peercred?: PeerCredLoader },
): Promise<UnixListener> {
  if (spec.uid !== undefined && opts.peercred?.available !== true) {
    const why = opts.peercred && !opts.peercred.available ? opts.peercred.reason : "the peer-credential addon was not loaded";
    throw new VaultError(
      "config_invalid",
      `[[vm]] "${spec.vm}" sets uid = ${spec.uid}, so only that uid may connect to ${spec.path}, but the daemon cannot read peer credentials (${why}); build the addon (native/peercred/README.md) or remove uid and keep socket_mode "0600"`,
    );
  }
  return listenUnix(spec.path, {
    mode: spec.mode,
    onError: opts.onError,
    // Credentials are read when available: they name the connecting process in the audit, and the
    // authenticator needs the uid when the entry restricts it.
    ...(opts.peercred ? { peercred: opts.peercred } : {}),
    onConnection: (socket, uds) => {
      const peer: PeerInfo = { transport: "vsock", vm: spec.vm };
      if (uds.uid !== undefined) peer.uid = uds.uid;
      if (uds.gid !== undefined) peer.gid = uds.gid;
      if (uds.pid !== undefined) peer.pid = uds.pid;
      opts.onConnection(socket, peer);
    },
  });
}
