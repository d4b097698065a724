/**
 * The server's limits and their defaults, written once: the server applies them to what it is not given, and
 * lessor.toml's `[server]` table defaults to them. A module of its own (no sockets, no vault), so the
 * configuration can read them without loading the server.
 */
import { MAX_FRAME_BYTES } from "../protocol/framing.js";

/** Per-connection and daemon-wide limits. */
export interface ServerLimits {
  /** Connections served at once; more are refused with rate_limited. Default 1024. */
  maxConnections: number;
  /** The hello must arrive (and be accepted) within this. Default 5000 ms. */
  handshakeTimeoutMs: number;
  /** A connection with no request and nothing in flight is closed after this. Default 300000 ms. */
  idleTimeoutMs: number;
  /** A partial frame must complete within this. Default 10000 ms. */
  readTimeoutMs: number;
  /**
   * Requests waiting or running at once per connection; beyond it the socket is paused. Default 64.
   * They start as the scheduler admits them (see maxInFlightPerPrincipal, maxInFlightTotal).
   */
  maxInFlight: number;
  /**
   * Requests running at once for one principal (identity), all its connections together, while it
   * is the only principal active. Default 32.
   */
  maxInFlightPerPrincipal: number;
  /**
   * The same while another principal has sent a request within the last second: small, so that the
   * store's batches (during which the daemon answers nothing else) stay short. Default 4.
   */
  maxInFlightPerPrincipalShared: number;
  /** Requests running at once in the daemon, all principals together. Default 256. */
  maxInFlightTotal: number;
  /**
   * Answers a connection may leave unread: past this many bytes waiting in the socket's send
   * buffer, the daemon stops reading its requests and starts none of those it has, until the client
   * has read them all. Default 1048576 (1 MiB).
   */
  maxBufferedBytes: number;
  /**
   * Connections one principal may hold open: a Unix-socket or vsock peer counts by uid or cid from
   * the moment it connects, a token by its id once it authenticated. Default 64.
   */
  maxConnectionsPerPrincipal: number;
  /**
   * Token connections held by all the tokens one principal made, together: a token made with a
   * token counts for the principal at the root of that chain (the uid, VM or `embedded` that made the
   * first of them). So a principal that makes tokens (an admin token handed to an orchestrator, the
   * owner's `lessor run --vault-session` runs, another uid mapped as admin) cannot multiply its share
   * of maxConnections by the number of tokens it makes. Default 512.
   */
  maxConnectionsPerIssuer: number;
  /**
   * Connections kept for the daemon's owner, past maxConnections: a Unix-socket peer whose uid (by
   * its peer credentials) is the daemon's, which authenticates as that uid (no token), may connect
   * when every other slot is taken, so that `lessor killswitch`, `revoke` and `token revoke` always
   * get in. Default 16.
   */
  ownerReservedConnections: number;
  /**
   * Connections of one transport still in their handshake (no identity yet). A new one past it
   * replaces the oldest that is waiting on its client, from the peers with the most; if none waits
   * on its client, it is refused. Default 128.
   */
  maxHandshakes: number;
  /** Connections from one peer (uid, cid or TCP address) still in their handshake. Default 64. */
  maxHandshakesPerPeer: number;
  /** Largest request frame body. Default (and at most) MAX_FRAME_BYTES. */
  maxFrameBytes: number;
  /**
   * How long close() waits for in-flight requests, and a connection that sent an oversize frame
   * waits for its requests running before it sends the error and closes. Default 10000 ms.
   */
  shutdownGraceMs: number;
  /**
   * A connection is closed this long after it was accepted, however busy it is (requests do not
   * extend it); clients reconnect. Default 86400000 ms (24 h).
   */
  maxConnectionLifetimeMs: number;
}

/** The default limits. */
export const DEFAULT_SERVER_LIMITS: Readonly<ServerLimits> = Object.freeze({
  maxConnections: 1024,
  handshakeTimeoutMs: 5000,
  idleTimeoutMs: 300_000,
  readTimeoutMs: 10_000,
  maxInFlight: 64,
  maxInFlightPerPrincipal: 32,
  maxInFlightPerPrincipalShared: 4,
  maxInFlightTotal: 256,
  maxBufferedBytes: 1024 * 1024,
  maxConnectionsPerPrincipal: 64,
  maxConnectionsPerIssuer: 512,
  ownerReservedConnections: 16,
  maxHandshakes: 128,
  maxHandshakesPerPeer: 64,
  maxFrameBytes: MAX_FRAME_BYTES,
  shutdownGraceMs: 10_000,
  maxConnectionLifetimeMs: 86_400_000,
});
