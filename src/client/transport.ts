/**
 * How the client reaches the daemon: a {@link ClientTransport} opens a duplex byte stream and says
 * what the handshake needs to know about it. The connection engine (src/client/engine.ts) sees only
 * this, so any stream will do (a Unix or TCP socket here; an AF_VSOCK descriptor later).
 */
import { createConnection, isIPv4, isIPv6 } from "node:net";
import type { Duplex } from "node:stream";
import { VaultError } from "../base/errors.js";
import { noDaemonError } from "./no-daemon.js";

/** Where the daemon listens: a Unix socket path, or a TCP host and port (loopback). */
export type Endpoint = { socketPath: string } | { host: string; port: number };

/** What the daemon's token proof is bound to (src/crypto/token-proof.ts `endpointBinding`). */
export interface Binding {
  transport: string;
  address?: string | undefined;
  port?: number | undefined;
}

/** One stream being opened to the daemon. */
export interface Dial {
  stream: Duplex;
  /** Settles once the stream can carry bytes; rejects with the error that stopped it. */
  connected: Promise<void>;
  /**
   * Checks, before anything is written, that the daemon is who it should be (a Unix socket: the uid
   * it runs as): null when it is, else the error to fail the connection with. Absent: no check.
   */
  verify?(): Promise<VaultError | null>;
  /** What the token proof is bound to, once connected. */
  binding(): Binding;
}

/** A way to reach the daemon. */
export interface ClientTransport {
  /** For messages: `uds /path` or `tcp host:port`. */
  readonly where: string;
  /** True when only a token lets the client check the daemon before sending anything (TCP). */
  readonly needsToken: boolean;
  /** Starts opening a stream. */
  dial(): Dial;
  /** The error to report when the stream fails before the handshake is done. */
  connectError(e: NodeJS.ErrnoException): VaultError;
}

/** How a Unix-socket transport checks the daemon's uid (see src/client/daemon-check.ts). */
export interface UnixCheckOptions {
  /** The uid the daemon must run as (root is also accepted); undefined: no check. */
  expectedUid: number | undefined;
  /** How a user accepts a daemon that runs as another uid (ends the `daemon_unverified` message). */
  remedy: ((uid: number) => string) | undefined;
}

type UnixCheck = typeof import("./daemon-check.js").checkUnixDaemon;
let unixCheckModule: Promise<UnixCheck> | null = null;
/** The Unix-socket daemon check (node:fs and the peer-credential addon), loaded on first use. */
function loadUnixCheck(): Promise<UnixCheck> {
  return (unixCheckModule ??= import("./daemon-check.js").then((m) => m.checkUnixDaemon));
}

/** The endpoint, checked and copied. */
export function checkEndpoint(ep: Endpoint): Endpoint {
  if (ep !== null && typeof ep === "object") {
    if ("socketPath" in ep && typeof ep.socketPath === "string" && ep.socketPath !== "") return { socketPath: ep.socketPath };
    if ("host" in ep && typeof ep.host === "string" && ep.host !== "" && Number.isInteger(ep.port) && ep.port > 0 && ep.port < 65536) {
      const host = loopbackHost(ep.host);
      if (host === null)
        throw new VaultError(
          "invalid_request",
          `the daemon's host must be a loopback address (127.x.x.x, ::1 or localhost): lessor daemons listen on loopback only, and a token must not cross a network in the clear; ${JSON.stringify(ep.host.slice(0, 80))} is not one${zoneIdHint(ep.host)}`,
        );
      return { host, port: ep.port };
    }
  }
  throw new VaultError("invalid_request", "the endpoint must be { socketPath } or { host, port } with a port from 1 to 65535");
}

/**
 * `host` as the loopback IP literal to dial, or null when it is not one: an IPv4 address in
 * 127.0.0.0/8 or ::1 as written, or `localhost` (dialled as 127.0.0.1, never looked up). Anything
 * else, such as `127.0.0.256` (no address: a name a resolver would answer for), is refused.
 */
export function loopbackHost(host: string): string | null {
  if (host === "localhost") return "127.0.0.1";
  // No zone ids ("::1%lo", "fe80::1%eth0"): isIPv6 takes them, new URL throws on them, and the daemon
  // (isLoopbackAddress in src/server/transports/tcp.ts) refuses them too. Loopback ::1 is spelled "::1".
  if (host.includes("%")) return null;
  if (isIPv4(host) && host.startsWith("127.")) return host;
  if (isIPv6(host) && URL.canParse(`http://[${host}]/`) && new URL(`http://[${host}]/`).hostname === "[::1]") return host;
  return null;
}

/** A hint for a refused host written with an IPv6 zone id ("" for any other). */
export function zoneIdHint(host: string): string {
  return host.includes("%") ? " (an IPv6 zone id such as %lo is not accepted: write ::1)" : "";
}

/** `uds /path` or `tcp host:port`. */
export function describeEndpoint(ep: Endpoint): string {
  return "socketPath" in ep ? `uds ${ep.socketPath}` : `tcp ${ep.host}:${ep.port}`;
}

/** The transport for a Unix socket or loopback TCP endpoint (node:net). */
export function netTransport(endpoint: Endpoint, unix: UnixCheckOptions): ClientTransport {
  const ep = checkEndpoint(endpoint);
  return {
    where: describeEndpoint(ep),
    needsToken: "host" in ep,
    dial(): Dial {
      // Loaded while the socket connects, only when this connection needs it.
      const check = "socketPath" in ep && unix.expectedUid !== undefined ? loadUnixCheck() : null;
      check?.catch(() => {});
      const sock = "socketPath" in ep ? createConnection({ path: ep.socketPath }) : createConnection({ host: ep.host, port: ep.port, noDelay: true });
      const connected = new Promise<void>((resolve, reject) => {
        sock.once("connect", resolve);
        sock.once("error", reject);
      });
      connected.catch(() => {}); // the engine also sees the error event
      return {
        stream: sock,
        connected,
        ...(check !== null
          ? { verify: async () => (await check)(sock, (ep as { socketPath: string }).socketPath, unix.expectedUid!, unix.remedy) }
          : {}),
        binding: () => ("socketPath" in ep ? { transport: "uds" } : { transport: "tcp", address: sock.remoteAddress, port: sock.remotePort }),
      };
    },
    connectError: (e) => connectError(e, ep),
  };
}

function connectError(e: NodeJS.ErrnoException, ep: Endpoint): VaultError {
  const code = e.code ?? "";
  if ("socketPath" in ep) {
    if (code === "ENOENT" || code === "ECONNREFUSED")
      return noDaemonError(`no lessor daemon is listening on ${ep.socketPath}; start one with \`lessor serve\``);
    if (code === "EACCES" || code === "EPERM")
      return new VaultError("unavailable", `permission denied opening ${ep.socketPath}; run as the daemon's user or use a token over TCP`);
  } else {
    const where = `${ep.host}:${ep.port}`;
    if (code === "ECONNREFUSED")
      return noDaemonError(`no lessor daemon is listening on ${where}; start one with \`lessor serve\` and \`[server] tcp = "${where}"\` in lessor.toml`);
    if (code === "ENOTFOUND" || code === "EAI_AGAIN")
      return new VaultError("unavailable", `cannot resolve the host "${ep.host}"; check the daemon's address`);
  }
  return new VaultError("unavailable", `cannot connect to the lessor daemon at ${describeEndpoint(ep)} (${code || "connection error"}); check that it is running`);
}
