/**
 * Peer credentials of Unix-socket clients, through the optional native addon in native/peercred
 * (getsockopt SO_PEERCRED on Linux). When the addon is missing the daemon treats every Unix-socket
 * client as the socket's owner, which is safe only because the socket is created 0600.
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
       * the internal `_handle.fd`; if a future Node hides it, the caller falls back as if the addon were
       * unavailable for this socket). Throws when the kernel refuses the query (e.g. the socket is closed).
       */
      get(socket: Socket): PeerCred | null;
    }
  | { available: false; reason: string };

interface Addon {
  peercred(fd: number): PeerCred;
}

const FALLBACK = "every Unix-socket client is treated as the socket's owner";

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
    return { available: false, reason: `the peer-credential addon was not built (${path} is missing; see native/peercred/README.md); ${FALLBACK}` };
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

/** The OS file descriptor behind a connected net.Socket, or null when Node does not expose it. */
function socketFd(socket: Socket): number | null {
  const handle = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle;
  const fd = handle?.fd;
  return typeof fd === "number" && Number.isInteger(fd) && fd >= 0 ? fd : null;
}
