/**
 * The Unix-socket listener: the default transport. Before anything touches the socket path its
 * directory is checked to be one no other user can change (socket-dir.ts); a stale socket of the
 * daemon's own uid is replaced, anything else at the path is refused and left alone
 * (stale-socket.ts); the socket is created owner-only in a private directory and linked into place
 * with its final mode, never chmod-ing a path another user could swap (socket-file.ts); closing the
 * listener removes the socket only if it is still the one created. Each connection comes with the
 * peer's uid/gid/pid when the peer-credential addon is available.
 */
import { Server, type Socket } from "node:net";
import { basename, dirname, join } from "node:path";
import { VaultError } from "../../base/errors.js";
import type { PeerCredLoader } from "../../native/peercred.js";
import { assertSafeSocketDir } from "./socket-dir.js";
import { bindSocketFile, MAX_SOCKET_PATH_BYTES, removeSocketFile, type SocketFile } from "./socket-file.js";
import { clearStaleSocket } from "./stale-socket.js";

/** What the listener knows about a Unix-socket peer. uid/gid/pid are absent when credentials are unavailable. */
export interface UdsPeer {
  transport: "uds";
  uid?: number;
  gid?: number;
  pid?: number;
}

/** Options for {@link listenUnix}. */
export interface ListenUnixOptions {
  /** Mode of the socket file; default 0o600 (owner only). */
  mode?: number;
  /** Called once per accepted connection, after the peer's credentials are read. */
  onConnection: (socket: Socket, peer: UdsPeer) => void;
  /** The loaded peer-credential addon (from loadPeerCred); without it peers carry no uid/gid/pid. */
  peercred?: PeerCredLoader;
  /** Told about failures the listener survives (accept errors, a failing onConnection). Default: ignored. */
  onError?: (err: Error) => void;
}

/**
 * A listening Unix socket. `close()` also removes the socket file, if it is still the one created
 * (a file another process put there since is left alone).
 */
export class UnixListener extends Server {
  /** The socket file as created (real path, device and inode); null until listening. */
  socketFile: SocketFile | null = null;

  override close(callback?: (err?: Error) => void): this {
    if (this.socketFile !== null) removeSocketFile(this.socketFile);
    this.socketFile = null;
    return super.close(callback);
  }
}

/**
 * Listens on a Unix socket at `path` with permission bits `mode` (default 0600), as described in the
 * module comment. Throws `insecure_permissions` for a directory other users could change,
 * `config_invalid` for a path too long for a Unix socket, and `unavailable` when the path is taken.
 * The created file is verified: a socket, owned by this process's uid, exactly `mode`.
 */
export async function listenUnix(path: string, opts: ListenUnixOptions): Promise<UnixListener> {
  const mode = (opts.mode ?? 0o600) & 0o777;
  const bytes = Buffer.byteLength(path);
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    throw new VaultError(
      "config_invalid",
      `the socket path ${path} is ${bytes} bytes long, over the ${MAX_SOCKET_PATH_BYTES}-byte limit for Unix sockets; use a shorter LESSOR_HOME or socket path.`,
    );
  }
  const uid = typeof process.getuid === "function" ? process.getuid() : null;
  const real = join(uid === null ? dirname(path) : assertSafeSocketDir(dirname(path), uid), basename(path));
  await clearStaleSocket(real, uid);

  const onError = opts.onError ?? (() => {});
  const server = new UnixListener((socket) => accept(socket, opts, onError));
  server.socketFile = await bindSocketFile(server, real, mode, uid);
  server.on("error", onError);
  return server;
}

/** Hands one accepted connection to the caller; never lets a socket error or a throw crash the process. */
function accept(socket: Socket, opts: ListenUnixOptions, onError: (err: Error) => void): void {
  socket.on("error", () => {});
  const peer: UdsPeer = { transport: "uds" };
  if (opts.peercred?.available) {
    try {
      const cred = opts.peercred.get(socket);
      if (cred !== null) Object.assign(peer, cred);
    } catch (e) {
      // The kernel would not say who this is (e.g. the peer already hung up): fail closed.
      socket.destroy();
      onError(e instanceof Error ? e : new Error(String(e)));
      return;
    }
  }
  try {
    opts.onConnection(socket, peer);
  } catch (e) {
    socket.destroy();
    onError(e instanceof Error ? e : new Error(String(e)));
  }
}
