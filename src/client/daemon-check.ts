/**
 * Before a client writes anything on a Unix socket (not even the hello), it checks that what listens
 * there is the lessor daemon's user and not a process of another user squatting the path: a socket
 * path is just a name, and a client that sent a token, a value or an admin request to a squatter
 * would hand it over.
 *
 * - With the peer-credential addon (src/native/peercred.ts): the kernel's record of the uid that
 *   created the listening socket (SO_PEERCRED on the client's end) must be the expected uid or root.
 *   This is exact: no other user can produce it.
 * - Without it: the socket file and the directory holding it must belong to the expected uid (or
 *   root), and the directory must not be writable by group or others, so that no other user could
 *   have put a socket there. This is weaker: it trusts the path at the moment it is checked (a
 *   directory higher up that another user can rename is not examined), so build the addon.
 *
 * Loaded lazily by the client (it pulls node:fs and the addon loader, never SQLite or argon2).
 */
import { lstatSync, type Stats } from "node:fs";
import type { Socket } from "node:net";
import { dirname, resolve } from "node:path";
import { loadPeerCred, type PeerCredLoader } from "../native/peercred.js";
import { VaultError } from "../base/errors.js";
import { othersMayWrite } from "../fs/private-group.js";

let cached: PeerCredLoader | null = null;

/** The peer-credential addon, loaded once per process; never throws. */
export function peerCredForClients(): PeerCredLoader {
  if (cached === null) {
    try {
      cached = loadPeerCred();
    } catch (e) {
      cached = { available: false, reason: `the peer-credential addon could not be located (${(e as Error).message})` };
    }
  }
  return cached;
}

const nothingSent = "nothing was sent";

function who(uid: number): string {
  return uid === 0 ? "root" : `uid ${uid}`;
}

/**
 * Checks the daemon on the connected Unix socket `socket` (reached at `socketPath`): null when it runs
 * as `expectedUid` (or root), else the `daemon_unverified` VaultError to fail the connection with.
 * `peercred` is for tests (default: the addon, loaded once).
 */
export function checkUnixDaemon(
  socket: Socket,
  socketPath: string,
  expectedUid: number,
  remedy: (uid: number) => string = (uid) => `pass expectedUid: ${uid}`,
  peercred: PeerCredLoader = peerCredForClients(),
): VaultError | null {
  const okUid = (uid: number) => uid === expectedUid || uid === 0;
  if (peercred.available) {
    let cred;
    try {
      cred = peercred.get(socket);
    } catch (e) {
      return new VaultError("unavailable", `could not read the peer credentials of ${socketPath} (${(e as Error).message}); ${nothingSent}, try again`);
    }
    if (cred !== null) {
      if (okUid(cred.uid)) return null;
      return new VaultError(
        "daemon_unverified",
        `the process listening on ${socketPath} runs as ${who(cred.uid)} (pid ${cred.pid}), not as ${who(expectedUid)}, the user the lessor daemon should run as; ${nothingSent}. Another user may be squatting the socket path: stop that process and restart lessor serve, or, if the daemon really runs as uid ${cred.uid}, ${remedy(cred.uid)}`,
      );
    }
    // No file descriptor on this socket: fall through to the file checks.
  }
  return checkSocketFiles(socketPath, expectedUid, peercred.available ? "this socket exposes no file descriptor" : peercred.reason);
}

/** The fallback: the socket file and its directory belong to the expected user and only it can write there. */
export function checkSocketFiles(socketPath: string, expectedUid: number, why: string): VaultError | null {
  const okUid = (uid: number) => uid === expectedUid || uid === 0;
  const path = resolve(socketPath);
  const dir = dirname(path);
  const refuse = (problem: string) =>
    new VaultError(
      "daemon_unverified",
      `cannot verify the lessor daemon on ${socketPath}: without peer credentials (${why}) the client trusts only a socket that ${who(expectedUid)} owns in a directory that ${who(expectedUid)} owns and nobody else can write to, and ${problem}; ${nothingSent}. Build the peer-credential addon (native/peercred), or fix the ownership and mode`,
    );
  let sockStat: Stats;
  let dirStat: Stats;
  try {
    sockStat = lstatSync(path);
    dirStat = lstatSync(dir);
  } catch (e) {
    return refuse(`it could not be examined (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (!sockStat.isSocket()) return refuse(`${path} is not a socket`);
  if (!okUid(sockStat.uid)) return refuse(`the socket file is owned by ${who(sockStat.uid)}`);
  if (!dirStat.isDirectory()) return refuse(`${dir} is not a directory`);
  if (!okUid(dirStat.uid)) return refuse(`its directory ${dir} is owned by ${who(dirStat.uid)}`);
  if (othersMayWrite(dirStat, undefined, dir)) return refuse(`its directory ${dir} is writable by ${dirStat.mode & 0o002 ? "others" : "its group"} (mode ${(dirStat.mode & 0o7777).toString(8)})`);
  return null;
}
