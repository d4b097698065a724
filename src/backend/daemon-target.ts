/**
 * The daemon the environment names, for a CLI run by a restricted caller (an agent, a CI job):
 *
 * - `LESSOR_SOCKET=/path/lessor.sock`: the daemon's Unix socket; the daemon tells who the caller is
 *   from its uid (an `[[identity]]` entry), or from a token if one is set too;
 * - `LESSOR_ADDR=host:port`: the daemon's loopback TCP listener; needs a token;
 * - the token: `LESSOR_TOKEN_FILE` naming a 0600 file of the user's own (preferred), or `LESSOR_TOKEN`.
 * - `LESSOR_DAEMON_UID`: with LESSOR_SOCKET, the uid the daemon runs as when it is not the caller's
 *   own (nor root); the client refuses to talk to a socket served by any other uid.
 *   There is deliberately no command-line option for it: arguments show in `ps` and shell history.
 *
 * When one is set, every command goes to that daemon as that identity and never falls back to a
 * vault opened in-process (src/backend/backend.ts, src/cli/fast-path.ts). Nothing here touches the network.
 */
import { isAbsolute } from "node:path";
import type { Endpoint } from "../client/client.js";
import { loopbackHost, zoneIdHint } from "../client/transport.js";
import { VaultError } from "../base/errors.js";
import { readTokenFile, TOKEN_LOOKS_LIKE, tokenShaped } from "./token-file.js";

/** The environment variables that pick a daemon (LESSOR_HOME aside). */
export const TARGET_VARS = ["LESSOR_SOCKET", "LESSOR_ADDR", "LESSOR_TOKEN", "LESSOR_TOKEN_FILE"] as const;

/** A daemon named by the environment. */
export interface DaemonTarget {
  endpoint: Endpoint;
  /** The bearer token to send in the hello (never printed). */
  token?: string;
  /** For a Unix socket: the uid the daemon must run as (LESSOR_DAEMON_UID; default: the client's own, or root). */
  expectedUid?: number;
  /** The variable that named the daemon. */
  via: "LESSOR_SOCKET" | "LESSOR_ADDR";
  /** Where, for messages: `$LESSOR_SOCKET (/run/lessor/lessor.sock)`. */
  where: string;
}


function set(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const v = env[name];
  return v === undefined || v === "" ? undefined : v;
}

/** True when any variable of {@link TARGET_VARS} is set (non-empty). */
export function targetConfigured(env: NodeJS.ProcessEnv): boolean {
  return TARGET_VARS.some((n) => set(env, n) !== undefined);
}


/** Parses `host:port` or `[v6]:port`. */
function parseAddr(addr: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(addr) ?? /^([^:[\]]+):(\d{1,5})$/.exec(addr);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 1 && port <= 65535))
    throw new VaultError("config_invalid", `LESSOR_ADDR must be host:port, such as 127.0.0.1:7391 (or [::1]:7391), not ${JSON.stringify(addr.slice(0, 80))}`);
  // A loopback IP literal (or localhost, dialled as 127.0.0.1): a name, even one shaped like an
  // address (127.0.0.256), would be looked up and go wherever the resolver says.
  const host = loopbackHost(m[1]!);
  if (host === null)
    throw new VaultError("config_invalid", `LESSOR_ADDR host ${JSON.stringify(m[1]!.slice(0, 80))} is not a loopback address${zoneIdHint(m[1]!)}; lessor daemons listen on loopback only (127.0.0.1, ::1 or localhost), and a token must not cross a network in the clear`);
  return { host, port };
}

function tokenFrom(env: NodeJS.ProcessEnv): string | undefined {
  const file = set(env, "LESSOR_TOKEN_FILE");
  const inline = set(env, "LESSOR_TOKEN");
  if (file !== undefined && inline !== undefined)
    throw new VaultError("config_invalid", "LESSOR_TOKEN and LESSOR_TOKEN_FILE are both set; keep one (LESSOR_TOKEN_FILE, a 0600 file, keeps the token out of the environment of every child process)");
  if (file !== undefined) return readTokenFile(file);
  if (inline !== undefined && !tokenShaped(inline.trim()))
    throw new VaultError("config_invalid", `LESSOR_TOKEN does not hold a lessor token; ${TOKEN_LOOKS_LIKE}`);
  return inline?.trim();
}

/**
 * The daemon named by the environment, or null when none of {@link TARGET_VARS} is set. Throws
 * VaultError (`config_invalid`, `insecure_permissions`) for a setting that cannot be used, saying
 * what to change; never quotes a token.
 */
export function daemonTarget(env: NodeJS.ProcessEnv): DaemonTarget | null {
  if (!targetConfigured(env)) return null;
  const socket = set(env, "LESSOR_SOCKET");
  const addr = set(env, "LESSOR_ADDR");
  if (socket !== undefined && addr !== undefined)
    throw new VaultError("config_invalid", "LESSOR_SOCKET and LESSOR_ADDR are both set; set only the one the operator gave you");
  if (socket === undefined && addr === undefined)
    throw new VaultError(
      "config_invalid",
      "a token is set (LESSOR_TOKEN or LESSOR_TOKEN_FILE) but no daemon to send it to; set LESSOR_ADDR=host:port (the daemon's TCP listener) or LESSOR_SOCKET=/path/to/lessor.sock",
    );
  const token = tokenFrom(env);
  if (socket !== undefined) {
    if (!isAbsolute(socket)) throw new VaultError("config_invalid", `LESSOR_SOCKET must be an absolute path, such as /home/op/.lessor/lessor.sock, not ${JSON.stringify(socket.slice(0, 200))}`);
    const uid = set(env, "LESSOR_DAEMON_UID");
    if (uid !== undefined && !/^\d{1,10}$/.test(uid))
      throw new VaultError("config_invalid", `LESSOR_DAEMON_UID must be the daemon's numeric uid (see ls -n on the socket), not ${JSON.stringify(uid.slice(0, 40))}`);
    const target: DaemonTarget = {
      endpoint: { socketPath: socket },
      ...(uid !== undefined ? { expectedUid: Number(uid) } : {}),
      via: "LESSOR_SOCKET",
      where: `$LESSOR_SOCKET (${socket})`,
    };
    // Not enumerable, as below.
    if (token !== undefined) Object.defineProperty(target, "token", { value: token, enumerable: false });
    return target;
  }
  const ep = parseAddr(addr!);
  if (token === undefined)
    throw new VaultError("config_invalid", "LESSOR_ADDR needs a token: set LESSOR_TOKEN_FILE to a 0600 file holding it (or LESSOR_TOKEN); an admin makes one with lessor token create");
  const target: DaemonTarget = { endpoint: ep, via: "LESSOR_ADDR", where: `$LESSOR_ADDR (${addr})` };
  // Not enumerable: a target logged, inspected or JSON-encoded by mistake never shows the token.
  Object.defineProperty(target, "token", { value: token, enumerable: false });
  return target;
}
