/**
 * The optional AF_VSOCK addon (native/vsock): a listening socket on any local CID for QEMU/vhost-vsock
 * guests, an accept thread that reports each connection's fd and peer CID, and a relay that turns an
 * AF_VSOCK descriptor into a Unix socketpair end Node can wrap (net.Socket({ fd }) refuses AF_VSOCK
 * descriptors: libuv knows only TCP and Unix sockets). Loaded only when `[server] vsock_port` is set;
 * when it cannot be, the result says why, and the daemon refuses to start with that reason.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildScript, findPackageRoot } from "./peercred.js";

/** One accepted connection, as the accept thread reports it. cid and port are -1 for a socket that is not AF_VSOCK. */
export interface VsockAccepted {
  fd: number;
  cid: number;
  port: number;
}

/** An accept thread started by {@link VsockAddon.watch}. */
export type VsockWatcher = object & { readonly __brand?: "vsock-watcher" };

/** The addon's functions (see native/vsock/vsock.c). */
export interface VsockAddon {
  /** A listening AF_VSOCK stream socket bound to VMADDR_CID_ANY:port. Binding contacts nobody. */
  listen(port: number, backlog?: number): number;
  /** Starts a thread accepting on `fd`; `onAccept` runs on the main thread for each connection. */
  watch(fd: number, onAccept: (a: VsockAccepted) => void): VsockWatcher;
  /** Stops the accept thread (the listening fd stays open). */
  unwatch(w: VsockWatcher): void;
  /** Relays `fd` (owned from now on) through a new Unix socketpair; returns the end to wrap. */
  bridge(fd: number): number;
  /** A connected Unix stream pair (tests stand it in for a guest's connection). */
  socketpair(): [number, number];
  close(fd: number): void;
}

/** The result of {@link loadVsock}. */
export type VsockLoader = { available: true; addon: VsockAddon; path: string } | { available: false; reason: string };

/** Where the built addon lives: `<package root>/native/vsock/build/Release/vsock.node`. */
export function defaultVsockAddonPath(): string | null {
  const root = findPackageRoot(dirname(fileURLToPath(import.meta.url)));
  return root === null ? null : join(root, "native", "vsock", "build", "Release", "vsock.node");
}

/** Whether this machine has the vsock device at all (a host with vhost_vsock, or a guest). */
export function hasVsockDevice(): boolean {
  return existsSync("/dev/vsock") || existsSync("/dev/vhost-vsock");
}

const FUNCTIONS = ["listen", "watch", "unwatch", "bridge", "socketpair", "close"] as const;

/** Loads the vsock addon. Never throws: when it cannot be used the result says why and what to do. */
export function loadVsock(opts: { addonPath?: string } = {}): VsockLoader {
  if (process.platform !== "linux") return { available: false, reason: `AF_VSOCK is only supported on Linux (this is ${process.platform})` };
  const path = opts.addonPath ?? defaultVsockAddonPath();
  if (path === null) return { available: false, reason: "the vsock addon was not found (no package root above this module)" };
  if (!existsSync(path)) return { available: false, reason: `the vsock addon was not built (${path} is missing; build it with: node ${buildScript(path)})` };
  try {
    const addon = createRequire(import.meta.url)(path) as Record<string, unknown>;
    for (const f of FUNCTIONS) if (typeof addon[f] !== "function") throw new Error(`it exports no ${f} function`);
    return { available: true, addon: addon as unknown as VsockAddon, path };
  } catch (e) {
    const why = e instanceof Error ? e.message.split("\n")[0] : String(e);
    return { available: false, reason: `the vsock addon at ${path} could not be loaded (${why}); rebuild it with: node ${buildScript(path)}` };
  }
}
