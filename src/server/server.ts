/**
 * The protocol v1 server: takes connected sockets from any transport (Unix socket, loopback TCP,
 * vsock), runs the handshake through the daemon's `authenticate`, and serves requests against a
 * VaultSession per connection. It owns limits (connection cap, deadlines, in-flight cap) and graceful
 * shutdown; it never opens listeners or closes the vault — the daemon does both.
 *
 * ```ts
 * const server = new LessorServer({ vault, authenticate, version: VERSION, log });
 * const tcp = await listenTcp("127.0.0.1", 7878, (socket, peer) => server.handle(socket, peer));
 * // on SIGTERM: tcp.close(); await server.close(); await vault.close();
 * ```
 */
import type { Socket } from "node:net";
import { MAX_FRAME_BYTES } from "../protocol/framing.js";
import type { Hello } from "../protocol/messages.js";
import { VaultError } from "../vault/errors.js";
import type { Identity } from "../vault/types.js";
import type { Vault } from "../vault/vault.js";
import { Connection, refusalFrame, type ConnectionHost, type PeerInfo, type ServerLimits } from "./connection.js";
import type { DispatchContext } from "./dispatch.js";
import { noopLogger, type Logger } from "./logger.js";

export type { PeerInfo, ServerLimits } from "./connection.js";

/** The default limits. */
export const DEFAULT_SERVER_LIMITS: Readonly<ServerLimits> = Object.freeze({
  maxConnections: 1024,
  handshakeTimeoutMs: 5000,
  idleTimeoutMs: 300_000,
  readTimeoutMs: 10_000,
  maxInFlight: 64,
  maxFrameBytes: MAX_FRAME_BYTES,
  shutdownGraceMs: 10_000,
});

/** How to build a {@link LessorServer}. */
export interface ServerOptions {
  vault: Vault;
  /** Decides who a peer is after its hello (token or peer credentials). Throw VaultError("unauthenticated") to refuse. */
  authenticate(peer: PeerInfo, hello: Hello): Promise<Identity>;
  limits?: Partial<ServerLimits>;
  log?: Logger;
  /** The daemon's version, reported by the status method's `daemon` object. */
  version: string;
}

/** How long a refused socket may linger before it is destroyed. */
const REFUSE_LINGER_MS = 1000;

function checkLimits(l: ServerLimits): ServerLimits {
  for (const [k, v] of Object.entries(l))
    if (!Number.isSafeInteger(v) || v < 1) throw new VaultError("config_invalid", `server limit ${k} must be a whole number of at least 1 (got ${String(v)})`);
  if (l.maxFrameBytes > MAX_FRAME_BYTES)
    throw new VaultError("config_invalid", `server limit maxFrameBytes may only be lowered: it is at most ${MAX_FRAME_BYTES} (got ${l.maxFrameBytes})`);
  return l;
}

/** Writes a welcome-shaped refusal and closes, reading and dropping anything the peer sends meanwhile. */
function refuse(socket: Socket, frame: Buffer): void {
  socket.on("error", () => {});
  socket.resume();
  socket.end(frame);
  setTimeout(() => socket.destroy(), REFUSE_LINGER_MS).unref();
}

const SHUTTING_DOWN = refusalFrame("unavailable", "the daemon is shutting down; try again when it is back");

/** Serves protocol v1 on sockets handed to {@link handle}. */
export class LessorServer {
  readonly #host: ConnectionHost;
  readonly #conns = new Set<Connection>();
  readonly #limits: ServerLimits;
  readonly #log: Logger;
  readonly #rateLimited: Buffer;
  #closing = false;
  #closed: Promise<void> | null = null;
  #inFlight = 0;
  #onIdle: (() => void) | null = null;
  #onEmpty: (() => void) | null = null;
  #capLoggedAt = 0;
  #capRefused = 0;
  readonly #sweep: NodeJS.Timeout;

  constructor(opts: ServerOptions) {
    const limits = checkLimits({ ...DEFAULT_SERVER_LIMITS, ...opts.limits });
    this.#limits = limits;
    this.#log = opts.log ?? noopLogger;
    this.#rateLimited = refusalFrame("rate_limited", `the daemon has too many connections (${limits.maxConnections}); try again`);
    const startedAt = Date.now();
    const conns = this.#conns;
    const dispatch: DispatchContext = { version: opts.version, startedAt, connections: () => conns.size };
    const server = this;
    this.#host = {
      vault: opts.vault,
      limits,
      log: this.#log,
      dispatch,
      get closing() {
        return server.#closing;
      },
      authenticate: (peer, hello) => opts.authenticate(peer, hello),
      requestStarted: () => {
        this.#inFlight++;
      },
      requestDone: () => {
        if (--this.#inFlight === 0 && this.#onIdle) this.#onIdle();
      },
      connectionClosed: (c) => {
        this.#conns.delete(c);
        if (this.#conns.size === 0 && this.#onEmpty) this.#onEmpty();
      },
    };
    // One timer for every deadline of every connection, instead of timers per connection or request.
    const tick = Math.max(5, Math.min(1000, Math.floor(Math.min(limits.handshakeTimeoutMs, limits.readTimeoutMs, limits.idleTimeoutMs) / 4)));
    this.#sweep = setInterval(() => {
      const now = Date.now();
      for (const c of this.#conns) c.check(now);
    }, tick);
    this.#sweep.unref();
  }

  /** The limits in force. */
  get limits(): Readonly<ServerLimits> {
    return this.#limits;
  }

  /** Connections being served (handshaking, open, or closing). */
  get connectionCount(): number {
    return this.#conns.size;
  }

  /** Takes ownership of a connected socket (any transport). */
  handle(socket: Socket, peer: PeerInfo): void {
    if (socket.destroyed) return;
    if (this.#closing) return refuse(socket, SHUTTING_DOWN);
    if (this.#conns.size >= this.#limits.maxConnections) {
      // One log line per second at most, however hard the daemon is being hit.
      this.#capRefused++;
      const now = Date.now();
      if (now - this.#capLoggedAt >= 1000) {
        this.#log.warn({ refused: this.#capRefused, connections: this.#conns.size }, "refusing connections: the connection cap is reached");
        this.#capLoggedAt = now;
        this.#capRefused = 0;
      }
      return refuse(socket, this.#rateLimited);
    }
    if (peer.transport === "tcp") socket.setNoDelay(true);
    this.#conns.add(new Connection(this.#host, socket, peer));
  }

  /**
   * Stops taking connections, lets in-flight requests finish (up to shutdownGraceMs), then closes
   * every connection. New requests meanwhile get `unavailable`. Does not close the vault.
   */
  close(): Promise<void> {
    this.#closed ??= this.#close();
    return this.#closed;
  }

  async #close(): Promise<void> {
    this.#closing = true;
    for (const c of this.#conns) c.beginShutdown();
    if (this.#inFlight > 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.#onIdle = resolve;
        timer = setTimeout(() => {
          this.#log.warn({ inFlight: this.#inFlight, graceMs: this.#limits.shutdownGraceMs }, "shutdown grace period over; dropping the answers of requests still running");
          resolve();
        }, this.#limits.shutdownGraceMs);
      });
      clearTimeout(timer);
      this.#onIdle = null;
    }
    if (this.#conns.size > 0) {
      const empty = new Promise<void>((resolve) => (this.#onEmpty = resolve));
      for (const c of this.#conns) c.end();
      await empty;
      this.#onEmpty = null;
    }
    clearInterval(this.#sweep);
  }
}
