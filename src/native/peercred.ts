/**
 * Peer credentials of Unix sockets, through the optional native addon in native/peercred
 * (getsockopt SO_PEERCRED on Linux). Without them a Unix-socket peer has no uid, and lessor never
 * guesses one: the daemon refuses to start when other uids could reach its socket, and otherwise
 * (a 0600 socket and no `[[identity]]` entries) relies on the file mode, saying so at start
 * (src/server/peer-trust.ts).
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import type { Socket } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** Who is at the other end of a Unix socket, as recorded by the kernel at connect() time. */
export interface PeerCred {
  uid: number;
  gid: number;
  pid: number;
}

/** The result of {@link loadPeerCred}. */
export type PeerCredLoader =
  | {
      available: true;
      /**
       * The peer's credentials, or `null` when this socket exposes no file descriptor (Node keeps it on
       * the internal `_handle.fd`; if a future Node hides it, that peer has no uid and gets no identity
       * from one). Throws when the kernel refuses the query (e.g. the socket is closed). Works on both
       * ends: on an accepted socket it is the client (as of its connect()); on a client socket it is
       * the process that created the listening socket (as of its listen()).
       */
      get(socket: Socket): PeerCred | null;
    }
  | { available: false; reason: string };

interface Addon {
  peercred(fd: number): PeerCred;
}

/** What the missing credentials mean, appended to every reason. */
const FALLBACK = "Unix-socket peers cannot be identified by uid";

/** The nearest directory at or above `start` that holds a package.json (the package root). */
export function findPackageRoot(start: string): string | null {
  let dir = start;
  for (;;) {
    if (existsSync(join(dir, "package.json"))) return dir;
    const up = dirname(dir);
    if (up === dir) return null;
    dir = up;
  }
}

/** Where the built addon lives: `<package root>/native/peercred/build/Release/peercred.node`. */
export function defaultAddonPath(): string | null {
  const root = findPackageRoot(dirname(fileURLToPath(import.meta.url)));
  return root === null ? null : join(root, "native", "peercred", "build", "Release", "peercred.node");
}

/**
 * Loads the peer-credential addon. `addonPath` overrides where it is looked for (tests). Never throws:
 * when the addon cannot be used the result says why, in words fit for the daemon's start-up log line.
 */
export function loadPeerCred(opts: { addonPath?: string } = {}): PeerCredLoader {
  if (process.platform !== "linux") {
    return { available: false, reason: `peer credentials are only read on Linux (this is ${process.platform}); ${FALLBACK}` };
  }
  const path = opts.addonPath ?? defaultAddonPath();
  if (path === null) {
    return { available: false, reason: `the peer-credential addon was not found (no package root above this module); ${FALLBACK}` };
  }
  if (!existsSync(path)) {
    return { available: false, reason: `the peer-credential addon was not built (${path} is missing; build it with: node ${buildScript(path)}); ${FALLBACK}` };
  }
  let addon: Addon;
  try {
    addon = createRequire(import.meta.url)(path) as Addon;
    if (typeof addon.peercred !== "function") throw new Error("it exports no peercred function");
  } catch (e) {
    const why = e instanceof Error ? e.message.split("\n")[0] : String(e);
    return { available: false, reason: `the peer-credential addon at ${path} could not be loaded (${why}); ${FALLBACK}` };
  }
  return {
    available: true,
    get(socket: Socket): PeerCred | null {
      const fd = socketFd(socket);
      if (fd === null) return null;
      const c = addon.peercred(fd);
      return { uid: c.uid, gid: c.gid, pid: c.pid };
    },
  };
}

/**
 * The addon at `path` (the file {@link defaultAddonPath} names), loaded; Node keeps one copy for every
 * loader. Or why it cannot be: not built (with the command that builds it), or not loadable.
 */
export function requireAddon(path: string | null): { addon: Record<string, unknown> } | { reason: string } {
  if (path === null || !existsSync(path)) return { reason: `the native addon is not built (${path ?? "no package root"}; build it with: node scripts/build-addon.mjs)` };
  try {
    return { addon: createRequire(import.meta.url)(path) as Record<string, unknown> };
  } catch (e) {
    return { reason: `the native addon at ${path} could not be loaded (${e instanceof Error ? e.message.split("\n")[0] : String(e)})` };
  }
}

/** The build script beside an addon at `<root>/native/peercred/build/Release/peercred.node`, for messages. */
export function buildScript(addonPath: string): string {
  const root = findPackageRoot(dirname(addonPath)) ?? findPackageRoot(dirname(fileURLToPath(import.meta.url)));
  return join(root ?? ".", "scripts", "build-addon.mjs");
}

/** The OS file descriptor behind a connected net.Socket, or null when Node does not expose it. */
function socketFd(socket: Socket): number | null {
  const handle = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle;
  const fd = handle?.fd;
  return typeof fd === "number" && Number.isInteger(fd) && fd >= 0 ? fd : null;
}
