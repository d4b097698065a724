/**
 * The server's default limits, written once: the server applies them to what it is not given, and
 * lessor.toml's `[server]` table defaults to them. A module of its own (no sockets, no vault), so the
 * configuration can read them without loading the server.
 */
import { MAX_FRAME_BYTES } from "../protocol/framing.js";
import type { ServerLimits } from "./connection.js";

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
  maxHandshakes: 128,
  maxHandshakesPerPeer: 64,
  maxFrameBytes: MAX_FRAME_BYTES,
  shutdownGraceMs: 10_000,
  maxConnectionLifetimeMs: 86_400_000,
});
