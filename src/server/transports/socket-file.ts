/**
 * Creating a Unix socket file with the wanted mode without ever changing the permissions of a path
 * another user could swap, and removing only the file lessor created.
 *
 * The socket is bound inside a fresh private directory (mkdtemp: 0700, the daemon's own) next to the
 * wanted path, with the umask at 0o177 so it is born owner-only; there it is checked (a socket, ours,
 * 0600) and, if a wider mode is configured, chmod-ed — safe, because no other uid can enter that
 * directory to replace the file. It is then hard-linked to the wanted path, which fails if anything
 * is already there (never replaces it), and the private directory is removed. The result is checked
 * with lstat: a socket, owned by the daemon's uid, the exact mode, the same inode as the one bound.
 *
 * Node (libuv) unlinks the path it bound when the server closes, without looking at what is there
 * now; binding in the private directory means that unlink only ever touches a name inside it. The
 * wanted path is removed by {@link removeSocketFile}, only while it is still the inode created here.
 */
import { chmodSync, linkSync, lstatSync, mkdtempSync, renameSync, rmdirSync, unlinkSync, type Stats } from "node:fs";
import type { Server } from "node:net";
import { dirname, join } from "node:path";
import { octal } from "../../fs/perms.js";
import { VaultError } from "../../base/errors.js";

/** A socket file lessor created: where, and which inode (so a replaced file is never removed). */
export interface SocketFile {
  readonly path: string;
  readonly dev: number;
  readonly ino: number;
}

/** Longest socket path the kernel accepts (sun_path minus the terminating NUL). */
export const MAX_SOCKET_PATH_BYTES = process.platform === "linux" ? 107 : 103;

/** The private directory's name prefix (mkdtemp adds six characters); short, as sun_path is short. */
const PRIVATE_PREFIX = ".lsr";

function fail(msg: string): never {
  throw new VaultError("unavailable", msg);
}

function errCode(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e as Error).message;
}

/**
 * Binds `server` so that it listens on `path` with permission bits `mode`, for a daemon running as
 * `uid` (null where uids do not exist). `path`'s directory must already have passed
 * assertSafeSocketDir and `path` must be free (clearStaleSocket). On failure the server is closed and
 * nothing is left behind.
 */
export async function bindSocketFile(server: Server, path: string, mode: number, uid: number | null): Promise<SocketFile> {
  const dir = dirname(path);
  const tmpLength = Buffer.byteLength(join(dir, `${PRIVATE_PREFIX}XXXXXX`, "s"));
  if (tmpLength > MAX_SOCKET_PATH_BYTES) {
    throw new VaultError(
      "config_invalid",
      `the socket path ${path} is too long: lessor binds it first in a private directory beside it, a ${tmpLength}-byte path, over the ${MAX_SOCKET_PATH_BYTES}-byte limit for Unix sockets; use a shorter LESSOR_HOME or socket path.`,
    );
  }
  let priv: string;
  try {
    priv = mkdtempSync(join(dir, PRIVATE_PREFIX));
  } catch (e) {
    return fail(`cannot create a private directory in ${dir} to bind the socket (${errCode(e)}); check that the directory is yours and writable.`);
  }
  const tmp = join(priv, "s");
  let placed = false;
  let listening = false;
  let bound: Stats | null = null;
  try {
    const pst = lstatSync(priv);
    if (!pst.isDirectory() || (uid !== null && pst.uid !== uid) || (pst.mode & 0o077) !== 0) {
      fail(`the private directory ${priv} is not a 0700 directory of uid ${uid}; check ${dir}.`);
    }
    await listenOwnerOnly(server, tmp, path);
    listening = true;
    let st = ownSocket(tmp, uid, path);
    if ((st.mode & 0o777) !== mode) {
      chmodSync(tmp, mode); // inside the private directory: nobody else can have replaced tmp
      st = ownSocket(tmp, uid, path);
    }
    bound = st;
    if ((st.mode & 0o777) !== mode) fail(`the socket for ${path} came out mode ${octal(st.mode)}, not ${octal(mode)}; check the file system of ${dir}.`);
    place(tmp, path);
    placed = true;
    const fin = ownSocket(path, uid, path);
    if (fin.dev !== st.dev || fin.ino !== st.ino || (fin.mode & 0o777) !== mode) {
      fail(`${path} is not the socket lessor just created there (it was replaced); check who else can write ${dir}.`);
    }
    return { path, dev: st.dev, ino: st.ino };
  } catch (e) {
    if (listening) server.close();
    // Remove what was linked only if it is still ours (a replacement is left alone).
    if (placed && bound !== null) removeSocketFile({ path, dev: bound.dev, ino: bound.ino });
    throw e;
  } finally {
    try {
      unlinkSync(tmp);
    } catch {
      // already linked away, renamed or never bound
    }
    try {
      rmdirSync(priv);
    } catch {
      // best effort: only an empty directory of ours is removed
    }
  }
}

/** Removes `file.path` if it is still the socket lessor created there; leaves anything else alone. */
export function removeSocketFile(file: SocketFile): void {
  try {
    const st = lstatSync(file.path);
    if (st.isSocket() && st.dev === file.dev && st.ino === file.ino) unlinkSync(file.path);
  } catch {
    // gone already, or not ours to remove
  }
}

/** lstat of a socket the daemon created: a socket owned by `uid`, or a clear error naming `wanted`. */
function ownSocket(p: string, uid: number | null, wanted: string): Stats {
  let st: Stats;
  try {
    st = lstatSync(p);
  } catch (e) {
    return fail(`the socket for ${wanted} vanished after it was created (${errCode(e)}); check who else can write ${dirname(wanted)}.`);
  }
  if (!st.isSocket()) fail(`${p} is not the socket lessor created (it is not a socket); check who else can write ${dirname(wanted)}.`);
  if (uid !== null && st.uid !== uid) fail(`${p} belongs to uid ${st.uid}, not to the daemon's uid ${uid}; check who else can write ${dirname(wanted)}.`);
  return st;
}

/** Links `tmp` to `path`, never replacing anything already at `path`. */
function place(tmp: string, path: string): void {
  try {
    linkSync(tmp, path);
    return;
  } catch (e) {
    const code = errCode(e);
    if (code === "EEXIST") fail(`${path} appeared while the daemon was starting; if no other lessor daemon is running, remove it and start again.`);
    if (code !== "EPERM" && code !== "ENOTSUP" && code !== "EOPNOTSUPP" && code !== "EMLINK") fail(`cannot create the socket ${path} (${code}); check its directory.`);
  }
  // A file system without hard links: rename instead. The directory is private to the daemon's uid
  // (assertSafeSocketDir), so nothing can appear at `path` between this check and the rename.
  if (lstatSync(path, { throwIfNoEntry: false }) !== undefined) fail(`${path} appeared while the daemon was starting; if no other lessor daemon is running, remove it and start again.`);
  try {
    renameSync(tmp, path);
  } catch (e) {
    fail(`cannot create the socket ${path} (${errCode(e)}); check its directory.`);
  }
}

/** listen() with a 0o177 umask around the synchronous bind, resolving once listening. */
function listenOwnerOnly(server: Server, tmp: string, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onListenError = (e: NodeJS.ErrnoException): void => {
      server.off("listening", onListening);
      reject(new VaultError("unavailable", `cannot listen on ${path} (${e.code ?? e.message}); check that its directory exists and is writable.`));
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
      // Worker threads cannot change the umask; the socket is then fixed up inside the private directory.
    }
    try {
      server.listen({ path: tmp, backlog: 1024 });
    } finally {
      if (previous !== null) process.umask(previous);
    }
  });
}
