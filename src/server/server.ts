/**
 * The protocol v1 server: takes connected duplex streams, with the peer info their listener found,
 * from any transport (Unix socket, loopback TCP, vsock), runs the handshake through the daemon's
 * `authenticate`, and serves requests against a VaultSession per connection. It owns limits (connection cap, deadlines, in-flight cap) and graceful
 * shutdown; it never opens listeners or closes the vault — the daemon does both.
 *
 * ```ts
 * const server = new LessorServer({ vault, authenticate, version: VERSION, log });
 * const tcp = await listenTcp("127.0.0.1", 7878, (stream, peer) => server.handle(stream, peer));
 * // on SIGTERM: tcp.close(); await server.close(); await vault.close();
 * ```
 */
import type { Duplex } from "node:stream";
import { MAX_FRAME_BYTES } from "../protocol/framing.js";
import type { Hello } from "../protocol/messages.js";
import { VaultError } from "../base/errors.js";
import type { Identity } from "../base/types.js";
import type { Vault } from "../vault/vault.js";
import { Admission } from "./admission.js";
import { Connection, refusalFrame, type ConnectionHost, type PeerInfo, type ServerLimits } from "./connection.js";
import { DEFAULT_SERVER_LIMITS } from "../config/server-limits.js";
import type { DispatchContext } from "./dispatch.js";
import { noopLogger, type Logger } from "./logger.js";
import { Scheduler } from "./scheduler.js";

export type { PeerInfo, ServerLimits } from "./connection.js";
export { DEFAULT_SERVER_LIMITS } from "../config/server-limits.js";

/**
 * How often the server re-reads the tokens its connections hold, to notice a revocation made by
 * another process sharing the store (this process's own revocations act at once, by signal).
 */
export const TOKEN_RECHECK_MS = 500;

/** The sweep runs at least this often, so a token's expiry closes its connections within a second. */
const MAX_SWEEP_MS = 500;

/** How to build a {@link LessorServer}. */
export interface ServerOptions {
  vault: Vault;
  /** Decides who a peer is after its hello (token or peer credentials). Throw VaultError("unauthenticated") to refuse. */
  authenticate(peer: PeerInfo, hello: Hello): Promise<Identity>;
  limits?: Partial<ServerLimits>;
  log?: Logger;
  /** The daemon's version, reported by the status method's `daemon` object. */
  version: string;
  /**
   * The uid the daemon runs as: its Unix-socket peers (by peer credentials) that authenticate as that
   * uid, with no token, may use the owner's reserve of connections past maxConnections
   * (ownerReservedConnections), so the owner can always connect to use the brakes. Absent: no reserve.
   */
  ownerUid?: number;
  /** The socket is reachable by its owner only (peer-trust.ts): a peer without credentials is the owner. */
  ownerWithoutPeerCred?: boolean;
}

/** How long a refused stream may linger before it is destroyed. */
const REFUSE_LINGER_MS = 1000;

function checkLimits(l: ServerLimits): ServerLimits {
  for (const [k, v] of Object.entries(l))
    if (!Number.isSafeInteger(v) || v < 1) throw new VaultError("config_invalid", `server limit ${k} must be a whole number of at least 1 (got ${String(v)})`);
  if (l.maxFrameBytes > MAX_FRAME_BYTES)
    throw new VaultError("config_invalid", `server limit maxFrameBytes may only be lowered: it is at most ${MAX_FRAME_BYTES} (got ${l.maxFrameBytes})`);
  return l;
}

/** Writes a welcome-shaped refusal and closes, reading and dropping anything the peer sends meanwhile. */
function refuse(stream: Duplex, frame: Buffer): void {
  stream.on("error", () => {});
  stream.resume();
  stream.end(frame);
  setTimeout(() => stream.destroy(), REFUSE_LINGER_MS).unref();
}

const SHUTTING_DOWN = refusalFrame("unavailable", "the daemon is shutting down; try again when it is back");
const RESERVE_EVICTED = refusalFrame(
  "rate_limited",
  "closed to make room: the daemon's connections kept for its owner were all taken and this one had not finished its handshake; send the hello right after connecting, and try again",
);
const EVICTED = refusalFrame(
  "rate_limited",
  "closed to make room: the daemon had too many connections in their handshake and this one had not finished its own; send the hello right after connecting, and try again",
);

/** Serves protocol v1 on streams handed to {@link handle}. */
export class LessorServer {
  readonly #host: ConnectionHost;
  readonly #conns = new Set<Connection>();
  /** Connections closing (lingering up to a second): the first to go when the connection cap is reached. */
  readonly #lingering = new Set<Connection>();
  /**
   * Connections closed to make room whose close event has not come yet (still in #conns): destroyed
   * lingering ones, and those replaced in the owner's reserve (they linger up to a second with their
   * refusal). Counted in no limit.
   */
  readonly #dropped = new Set<Connection>();
  /**
   * Connections let in past maxConnections from the daemon's owner (in #conns too, in arrival order):
   * they must authenticate as the owner without a token, or leave when there is no room for them.
   */
  readonly #reserve = new Set<Connection>();
  readonly #isOwner: (peer: PeerInfo) => boolean;
  readonly #limits: ServerLimits;
  readonly #log: Logger;
  readonly #rateLimited: Buffer;
  #closing = false;
  #closed: Promise<void> | null = null;
  #inFlight = 0;
  #onIdle: (() => void) | null = null;
  #onEmpty: (() => void) | null = null;
  readonly #admission: Admission<Connection>;
  readonly #scheduler: Scheduler;
  /** Connections refused or replaced since the last log line about them, by why. */
  #refused = new Map<string, number>();
  #refusedLoggedAt = 0;
  readonly #sweep: NodeJS.Timeout;
  readonly #tokenRecheck: NodeJS.Timeout;
  readonly #offTokens: () => void;
  readonly #offKillswitch: () => void;

  constructor(opts: ServerOptions) {
    const limits = checkLimits({ ...DEFAULT_SERVER_LIMITS, ...opts.limits });
    this.#limits = limits;
    this.#log = opts.log ?? noopLogger;
    this.#rateLimited = refusalFrame("rate_limited", `the daemon has too many connections (${limits.maxConnections}); try again`);
    this.#admission = new Admission({
      ...limits,
      ...(opts.ownerUid !== undefined ? { ownerUid: opts.ownerUid } : {}),
      ownerWithoutPeerCred: opts.ownerWithoutPeerCred === true,
    });
    this.#isOwner = (peer) => this.#admission.isOwner(peer);
    this.#scheduler = new Scheduler({
      perPrincipal: limits.maxInFlightPerPrincipal,
      perPrincipalShared: limits.maxInFlightPerPrincipalShared,
      total: limits.maxInFlightTotal,
    });
    const scheduler = this.#scheduler;
    const admission = this.#admission;
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
      admit: (c, identity) => {
        // A connection in the owner's reserve that turned out to be a token (a relay such as lessor
        // run --vault-session's, or any token shown over the owner's socket), or anything but the
        // admin, is not the owner: it stays only if the common pool has room for it now.
        const outOfReserve = this.#reserve.has(c) && (identity.token !== undefined || identity.role !== "admin");
        if (outOfReserve && this.#commonCount() >= limits.maxConnections)
          throw new VaultError(
            "rate_limited",
            `the daemon has too many connections (${limits.maxConnections}); those left are kept for its owner's own (unauthenticated by token) connections; try again`,
          );
        admission.admit(c, identity);
        if (outOfReserve) this.#reserve.delete(c);
      },
      schedule: (principal, job) => scheduler.submit(principal, job),
      requestStarted: () => {
        this.#inFlight++;
      },
      requestDone: () => {
        if (--this.#inFlight === 0 && this.#onIdle) this.#onIdle();
      },
      connectionClosing: (c, inHandshake) => {
        if (inHandshake) admission.endHandshake(c);
        this.#reserve.delete(c);
        this.#lingering.add(c);
      },
      connectionClosed: (c) => {
        this.#lingering.delete(c);
        this.#reserve.delete(c);
        this.#dropped.delete(c);
        this.#conns.delete(c);
        admission.remove(c);
        if (this.#conns.size === 0 && this.#onEmpty) this.#onEmpty();
      },
    };
    // One timer for every deadline of every connection, instead of timers per connection or request.
    const tick = Math.max(5, Math.min(MAX_SWEEP_MS, Math.floor(Math.min(limits.handshakeTimeoutMs, limits.readTimeoutMs, limits.idleTimeoutMs, limits.maxConnectionLifetimeMs) / 4)));
    this.#sweep = setInterval(() => {
      const now = Date.now();
      for (const c of this.#conns) c.check(now);
    }, tick);
    this.#sweep.unref();
    // A revoked token's connections close at once: revoked here, by the vault's signal; revoked by
    // another process sharing the store, when the recheck below reads it (within TOKEN_RECHECK_MS).
    this.#offTokens = opts.vault.onSignal((signal) => {
      if (signal.type === "token_revoked") this.#closeForToken(signal.tokenId);
    });
    let rechecking = false;
    this.#tokenRecheck = setInterval(() => {
      if (rechecking) return;
      const ids = new Set<string>();
      for (const c of this.#conns) if (c.tokenId !== null) ids.add(c.tokenId);
      if (ids.size === 0) return;
      rechecking = true;
      opts.vault
        .recheckTokens(ids)
        .catch((e: unknown) => this.#log.warn({ err: (e as Error).message }, "could not re-read the tokens of open connections"))
        .finally(() => (rechecking = false));
    }, TOKEN_RECHECK_MS);
    this.#tokenRecheck.unref();
    this.#offKillswitch = opts.vault.onSignal((signal) => {
      if (signal.type === "killswitch" && signal.engaged) this.#closeForKillswitch();
    });
  }

  /**
   * The killswitch was pulled: closes every connection of an agent, and of an orchestrator (it acts
   * for agents), at once; in-flight answers are dropped. Admins keep theirs, to release it.
   */
  #closeForKillswitch(): void {
    let closed = 0;
    for (const c of this.#conns) {
      const role = c.identity?.role;
      if (role === "agent" || role === "orchestrator") {
        c.end();
        closed++;
      }
    }
    this.#log.warn({ closed }, "killswitch engaged: closed every agent and orchestrator connection");
  }

  /** Closes every connection that authenticated with token `tokenId` (it was revoked). */
  #closeForToken(tokenId: string): void {
    let closed = 0;
    for (const c of this.#conns)
      if (c.tokenId === tokenId) {
        c.cutToken("token revoked");
        closed++;
      }
    if (closed > 0) this.#log.warn({ tokenId, closed }, "token revoked: closed its connections");
  }

  /** The limits in force. */
  get limits(): Readonly<ServerLimits> {
    return this.#limits;
  }

  /** Connections being served (handshaking, open, or closing). */
  get connectionCount(): number {
    return this.#conns.size;
  }

  /**
   * Takes ownership of a connected stream (any transport: a net.Socket, or any node:stream Duplex such
   * as one over an AF_VSOCK descriptor) and the peer info its listener found. Transport options such as
   * TCP_NODELAY are the listener's to set.
   */
  handle(stream: Duplex, peer: PeerInfo): void {
    if (stream.destroyed) return;
    if (this.#closing) return refuse(stream, SHUTTING_DOWN);
    let reserved = false;
    while (this.#commonCount() >= this.#limits.maxConnections && this.#dropLingering());
    if (this.#commonCount() >= this.#limits.maxConnections) {
      // Every common slot is taken: the daemon's owner (its uid, by peer credentials) still gets in,
      // within the reserve, so that the brakes (killswitch, revoke) always work; anyone else takes
      // the place of a connection still waiting on its client to say hello, if there is one.
      if (this.#isOwner(peer) && this.#reserveRoom()) reserved = true;
      else {
        const victim = this.#admission.capVictim(peer);
        if (victim === null) {
          this.#noteRefused("connection cap", peer);
          return refuse(stream, this.#rateLimited);
        }
        this.#noteRefused("replaced at the connection cap", victim.peer);
        this.#dropped.add(victim);
        victim.end(EVICTED);
      }
    }
    const verdict = this.#admission.check(peer);
    if (!verdict.ok) {
      this.#noteRefused(verdict.why, peer);
      return refuse(stream, refusalFrame("rate_limited", verdict.message));
    }
    if (verdict.evict !== null) {
      // The handshake budget is full: the oldest connection still waiting on its client makes room.
      this.#noteRefused("replaced in the handshake budget", peer);
      verdict.evict.end(EVICTED);
    }
    const c = new Connection(this.#host, stream, peer);
    this.#conns.add(c);
    if (reserved) this.#reserve.add(c);
    this.#admission.add(c, peer);
  }

  /** Connections counted against maxConnections: all but those dropped, and those in the owner's reserve. */
  #commonCount(): number {
    return this.#conns.size - this.#dropped.size - this.#reserve.size;
  }

  /**
   * True when the owner's reserve has a slot for a new connection: a free one, or one held by a
   * connection of the reserve that is closed to make room: the oldest still in a token's handshake
   * (it can only stay if a common slot frees up: a relay's, say), else the oldest still waiting on
   * its client (its hello). The owner's own client says hello at once, with no token.
   */
  #reserveRoom(): boolean {
    if (this.#reserve.size < this.#limits.ownerReservedConnections) return true;
    const inHandshake = [...this.#reserve].filter((c) => c.identity === null);
    const victim = inHandshake.find((c) => c.showsToken) ?? inHandshake.find((c) => c.awaitingPeer);
    if (victim === undefined) return false;
    this.#reserve.delete(victim);
    this.#dropped.add(victim);
    this.#noteRefused("replaced in the owner's reserve", victim.peer);
    victim.end(RESERVE_EVICTED);
    return true;
  }

  /**
   * At the connection cap, a connection already closing (refused, or its client gone, lingering so
   * its last frame is read) is the cheapest to give up: it is destroyed to make room, so refused
   * connections that a client never closes cannot hold the cap. True when one was dropped.
   */
  #dropLingering(): boolean {
    for (const c of this.#lingering) {
      this.#lingering.delete(c);
      if (c.stream.destroyed || this.#dropped.has(c)) continue;
      // Counted as dropped from now on, not in the reserve too.
      this.#reserve.delete(c);
      this.#dropped.add(c);
      c.stream.destroy();
      return true;
    }
    return false;
  }

  /** Counts a refused connection; logs the counts at most once a second, however hard the daemon is hit. */
  #noteRefused(why: string, peer: PeerInfo): void {
    this.#refused.set(why, (this.#refused.get(why) ?? 0) + 1);
    const now = Date.now();
    if (now - this.#refusedLoggedAt < 1000) return;
    const refused = Object.fromEntries(this.#refused);
    this.#log.warn({ refused, connections: this.#conns.size, transport: peer.transport, uid: peer.uid ?? null, remote: peer.remoteAddress ?? null }, "refusing connections over the daemon's limits");
    this.#refusedLoggedAt = now;
    this.#refused = new Map();
  }

  /** Requests running now, and waiting for the scheduler (for status and tests). */
  get requests(): { running: number; waiting: number } {
    return { running: this.#scheduler.running, waiting: this.#scheduler.waiting };
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
    this.#offKillswitch();
    this.#offTokens();
    clearInterval(this.#tokenRecheck);
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
