/**
 * The Unix-socket listener: the default transport. The socket file is owner-only (0600) from the moment
 * it exists, a stale socket left by a dead daemon is replaced, a live one or any other file is refused,
 * and each connection comes with the peer's uid/gid/pid when the peer-credential addon is available.
 */
import { chmodSync, lstatSync, statSync, unlinkSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { VaultError } from "../../vault/errors.js";
import type { PeerCredLoader } from "../peercred.js";

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

/** Longest socket path the kernel accepts (sun_path minus the terminating NUL). */
const MAX_PATH_BYTES = process.platform === "linux" ? 107 : 103;

/** How long to wait for an existing socket to answer before judging it live. */
const PROBE_TIMEOUT_MS = 1000;

/**
 * Listens on a Unix socket at `path`.
 *
 * Race-free permissions: the process umask is set to 0o177 for the synchronous bind inside
 * `server.listen()` and restored straight after, so the socket file is created 0600 and never
 * world-accessible, even briefly; it is then chmod-ed to `mode` and the result verified with stat.
 * (process.umask cannot be set in worker threads; there the socket relies on the chmod and on the
 * home directory being 0700.)
 */
export async function listenUnix(path: string, opts: ListenUnixOptions): Promise<Server> {
  const mode = opts.mode ?? 0o600;
  const bytes = Buffer.byteLength(path);
  if (bytes > MAX_PATH_BYTES) {
    throw new VaultError(
      "config_invalid",
      `the socket path ${path} is ${bytes} bytes long, over the ${MAX_PATH_BYTES}-byte limit for Unix sockets; use a shorter LESSOR_HOME or socket path.`,
    );
  }
  await clearStaleSocket(path);

  const onError = opts.onError ?? (() => {});
  const server = createServer((socket) => accept(socket, opts, onError));
  await bindOwnerOnly(server, path);
  server.on("error", onError);

  try {
    chmodSync(path, mode);
    const st = statSync(path);
    if (!st.isSocket() || (st.mode & 0o777) !== mode) {
      throw new Error(`mode is ${(st.mode & 0o777).toString(8)}, wanted ${mode.toString(8)}`);
    }
  } catch (e) {
    server.close();
    const why = e instanceof Error ? e.message : String(e);
    throw new VaultError("unavailable", `could not set the permissions of the socket ${path} (${why}); check the directory and try again.`);
  }
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

/** listen() with a 0o177 umask around the synchronous bind, resolving once listening. */
function bindOwnerOnly(server: Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onListenError = (e: NodeJS.ErrnoException): void => {
      server.off("listening", onListening);
      if (e.code === "EADDRINUSE") {
        reject(new VaultError("unavailable", `another lessor daemon is listening on ${path}; stop it first.`));
      } else {
        reject(new VaultError("unavailable", `cannot listen on ${path} (${e.code ?? e.message}); check that its directory exists and is writable.`));
      }
    };
    const onListening = (): void => {
      server.off("error", onListenError);
      resolve();
    };
    server.once("error", onListenError);
    server.once("listening", onListening);
    let previous: number | null = null;
    try {
      previous = process.umask(0o177);
    } catch {
      // Worker threads cannot change the umask; the chmod after listen() still applies.
    }
    try {
      server.listen({ path, backlog: 1024 });
    } finally {
      if (previous !== null) process.umask(previous);
    }
  });
}

/**
 * Makes `path` free for a new socket: nothing there is fine; a socket nobody answers on is stale and
 * removed; a socket that answers, or anything that is not a socket, is refused and left alone.
 */
async function clearStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw new VaultError("unavailable", `cannot inspect the socket path ${path} (${(e as NodeJS.ErrnoException).code}); check its directory.`);
  }
  if (!st.isSocket()) {
    throw new VaultError("unavailable", `${path} exists and is not a socket; move it away or choose another socket path.`);
  }
  const { state, code } = await probe(path);
  if (state === "live") {
    throw new VaultError("unavailable", `another lessor daemon is listening on ${path}; stop it first.`);
  }
  if (state === "unknown") {
    throw new VaultError("unavailable", `the socket ${path} exists but could not be probed (${code}); if no lessor daemon is running, remove it.`);
  }
  if (state === "stale") {
    try {
      unlinkSync(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") {
        throw new VaultError("unavailable", `cannot remove the stale socket ${path} (${(e as NodeJS.ErrnoException).code}); remove it by hand.`);
      }
    }
  }
}

interface ProbeResult {
  state: "live" | "stale" | "gone" | "unknown";
  code?: string;
}

/**
 * Connects to an existing socket file: "stale" if refused, "gone" if it vanished, "live" if it answers
 * (or is too busy to: EAGAIN, or no answer in time), "unknown" for anything else (e.g. EACCES).
 */
function probe(path: string): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const s = connect(path);
    const done = (r: ProbeResult): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ state: "live" }), PROBE_TIMEOUT_MS);
    s.once("connect", () => done({ state: "live" }));
    s.once("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "ECONNREFUSED") done({ state: "stale" });
      else if (e.code === "ENOENT") done({ state: "gone" });
      else if (e.code === "EAGAIN") done({ state: "live" });
      else done({ state: "unknown", code: e.code ?? e.message });
    });
  });
}
