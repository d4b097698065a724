/**
 * The native bridge of `lessor run`'s sandbox (native/peercred/netbridge.c and handoff.c): the
 * sandbox's first program listens on 127.0.0.1 inside the sandbox's network namespace and hands the
 * listening socket to lessor over a socket pair, then becomes the agent's command; lessor's proxy
 * accepts the agent's connections on it directly. Without the addon or the helper, lessor run uses
 * its Node bridge instead (src/sandbox/bridge.ts).
 */
import { accessSync, constants } from "node:fs";
import { dirname, join } from "node:path";
import { defaultAddonPath, requireAddon } from "./peercred.js";

/** What lessor run needs for the native bridge. */
export interface Handoff {
  /** The helper program's path (`lessor-netbridge`, beside the addon). */
  helper: string;
  /** A connected pair of Unix stream sockets, both close-on-exec: [lessor's end, the sandbox's end]. */
  pair(): [number, number];
  /**
   * Waits (off the event loop) for one descriptor on `fd`, and resolves with it once checked to be a
   * listening TCP socket on an IPv4 loopback address. Rejects with an Error whose `code` is EPIPE when
   * the other end closed first, ETIMEDOUT, or EPROTO for anything else arriving (closed at once).
   */
  receive(fd: number, timeoutMs: number): Promise<number>;
}

interface Addon {
  socketpair?: () => [number, number];
  recvfd?: (fd: number, timeoutMs: number) => Promise<number>;
}

let loaded: Handoff | { reason: string } | undefined;

/**
 * The native bridge, or why there is none (Linux only; the addon built with its helper). Never
 * throws; the answer is kept. `addonPath` overrides where the addon is looked for (tests; not kept).
 */
export function loadHandoff(opts: { addonPath?: string } = {}): Handoff | { reason: string } {
  if (opts.addonPath === undefined && loaded !== undefined) return loaded;
  const r = attempt(opts.addonPath ?? defaultAddonPath());
  if (opts.addonPath === undefined) loaded = r;
  return r;
}

function attempt(path: string | null): Handoff | { reason: string } {
  if (process.platform !== "linux") return { reason: `the native bridge is Linux only (this is ${process.platform})` };
  const loaded = requireAddon(path);
  if ("reason" in loaded) return loaded;
  const helper = join(dirname(path!), "lessor-netbridge");
  try {
    accessSync(helper, constants.X_OK);
  } catch {
    return { reason: `its helper ${helper} is missing or not executable` };
  }
  const { socketpair, recvfd } = loaded.addon as Addon;
  if (typeof socketpair !== "function" || typeof recvfd !== "function") return { reason: `the native addon at ${path} is an older build without the hand-over (rebuild it with: node scripts/build-addon.mjs)` };
  return { helper, pair: () => socketpair(), receive: (fd, ms) => recvfd(fd, ms) };
}
