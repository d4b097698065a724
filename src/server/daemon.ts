/**
 * The daemon: one per home (a lock), the vault opened from the home, the server, the Unix-socket
 * listener and the optional loopback TCP listener. `lessor serve` runs it in the foreground.
 */
import { unlinkSync } from "node:fs";
import type { Server } from "node:net";
import { loadConfig, openVault } from "../config/open-vault.js";
import { inHome, resolveHome } from "../config/home.js";
import { VERSION } from "../version.js";
import type { Vault } from "../vault/vault.js";
import { makeAuthenticator } from "./authenticate.js";
import { acquireDaemonLock } from "./lock.js";
import { noopLogger, type Logger } from "./logger.js";
import { loadPeerCred } from "./peercred.js";
import { LessorServer } from "./server.js";
import { listenTcp } from "./transports/tcp.js";
import { listenUnix } from "./transports/uds.js";

/** How to start a daemon. */
export interface DaemonOptions {
  home?: string;
  env?: NodeJS.ProcessEnv;
  getPassphrase?: () => Promise<string>;
  log?: Logger;
}

/** A running daemon. */
export interface Daemon {
  readonly home: string;
  readonly socketPath: string;
  readonly tcp: { host: string; port: number } | null;
  readonly vault: Vault;
  /** Stops accepting, finishes in-flight requests, flushes and closes the store, releases the lock. */
  close(): Promise<void>;
}

/** Starts a daemon for a home; resolves once it listens. */
export async function startDaemon(opts: DaemonOptions = {}): Promise<Daemon> {
  const env = opts.env ?? process.env;
  const log = opts.log ?? noopLogger;
  const home = resolveHome(opts.home, env);
  const lock = acquireDaemonLock(home);
  if (lock.recoveredStale) log.warn({ home, previousPid: lock.previousPid ?? null }, "replaced a stale daemon lock left by a process that is gone");
  const cleanups: (() => Promise<void> | void)[] = [() => lock.release()];
  const cleanup = async () => {
    for (const c of cleanups.splice(0).reverse()) {
      try {
        await c();
      } catch (e) {
        log.error({ err: (e as Error).message }, "error while shutting down");
      }
    }
  };
  try {
    const cfg = loadConfig(home);
    const vault = await openVault({ home, env, ...(opts.getPassphrase ? { getPassphrase: opts.getPassphrase } : {}) });
    cleanups.push(() => vault.close());
    const ownerUid = process.getuid?.() ?? 0;
    const peercred = loadPeerCred();
    if (!peercred.available) log.warn({ reason: peercred.reason }, "peer credentials unavailable: every Unix-socket client is treated as the socket owner");
    const s = cfg.server;
    const server = new LessorServer({
      vault,
      authenticate: makeAuthenticator(vault, cfg.identities, ownerUid),
      limits: {
        maxConnections: s.maxConnections,
        handshakeTimeoutMs: s.handshakeTimeoutMs,
        idleTimeoutMs: s.idleTimeoutMs,
        readTimeoutMs: s.readTimeoutMs,
        maxInFlight: s.maxInFlight,
        maxFrameBytes: s.maxFrameBytes,
        shutdownGraceMs: s.shutdownGraceMs,
      },
      log,
      version: VERSION,
    });
    cleanups.push(() => server.close());
    const socketPath = inHome(home, s.socket);
    const listeners: Server[] = [];
    const uds = await listenUnix(socketPath, {
      mode: s.socketMode,
      peercred,
      onConnection: (sock, peer) => server.handle(sock, peer),
      onError: (e) => log.warn({ err: e.message }, "unix socket listener error"),
    });
    listeners.push(uds);
    cleanups.push(() => {
      try {
        unlinkSync(socketPath);
      } catch {
        // already gone
      }
    });
    // Listeners stop accepting first (close() without waiting: its callback waits for every
    // connection), then the server drains in-flight requests, then the vault closes.
    cleanups.push(() => {
      for (const l of listeners) l.close();
    });
    let tcp: Daemon["tcp"] = null;
    if (s.tcp) {
      const t = await listenTcp(s.tcp.host, s.tcp.port, (sock, peer) => server.handle(sock, peer));
      listeners.push(t);
      const addr = t.address();
      tcp = addr && typeof addr === "object" ? { host: addr.address, port: addr.port } : s.tcp;
    }
    const status = await vault.admin().status();
    log.info(
      { home, socket: socketPath, tcp, store: status.store, keySource: status.keySource, keyId: status.keyId, policyRules: status.policy.rules, version: VERSION },
      "lessor daemon ready",
    );
    let closing: Promise<void> | null = null;
    return {
      home,
      socketPath,
      tcp,
      vault,
      close: () => {
        closing ??= cleanup().then(() => log.info({ home }, "lessor daemon stopped"));
        return closing;
      },
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
