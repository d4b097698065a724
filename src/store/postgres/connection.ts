/**
 * How the PostgreSQL store connects: the pool's settings from a `postgres://` URL, a schema and the
 * timeouts, and {@link redactUrl}, the only form in which a URL may appear in an error or a log (its
 * password, and any `password` parameter, replaced). The TLS files a URL names are checked here,
 * before node-postgres reads them (it does so as it builds a client, where a missing one would be a
 * bare ENOENT).
 */
import { accessSync, constants, statSync } from "node:fs";
import type { PoolConfig } from "pg";
import { VaultError } from "../../base/errors.js";

/** How much longer than statement_timeout the client waits for an answer before it gives the connection up. */
export const QUERY_TIMEOUT_MARGIN_MS = 2000;

/** A schema name the store will put in `search_path`: a plain lower-case SQL identifier. */
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/** Query-string parameters that name a file node-postgres reads as it builds a client. */
const TLS_FILE_PARAMS = ["sslrootcert", "sslcert", "sslkey"] as const;

/** Query-string parameters whose values are secret (libpq's and node-postgres's spellings). */
const SECRET_PARAMS = ["password", "sslpassword", "sslkey"];

/**
 * The URL with its password (and any password-like query parameter) replaced by "***", for errors
 * and logs. Something that does not parse as a URL is not echoed at all: it may be a password typed
 * in the wrong place.
 */
export function redactUrl(raw: string): string {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return "(a database URL that does not parse; not shown)";
  }
  if (u.password !== "") u.password = "***";
  for (const p of SECRET_PARAMS) if (u.searchParams.has(p)) u.searchParams.set(p, "***");
  return u.toString();
}

/** Where the store connects, for messages: `host:port/database`, never a user or password. */
export function describeTarget(raw: string): string {
  try {
    const u = new URL(raw);
    // node-postgres takes ?host= and ?port= over the URL's own parts: so does this.
    const host = u.searchParams.get("host") ?? (u.hostname !== "" ? u.hostname : "localhost");
    const port = u.searchParams.get("port") ?? (u.port !== "" ? u.port : "5432");
    const db = decodeURIComponent(u.pathname.replace(/^\//, "")) || "(default database)";
    return `${host}:${port}/${db}`;
  } catch {
    return "(the configured database)";
  }
}

/** The settings {@link poolConfig} turns into a pool's configuration. */
export interface ConnectionSettings {
  /** A `postgres://` or `postgresql://` URL. */
  url: string;
  /** The schema the store's tables live in (first in `search_path`); the URL's (or "public") when absent. */
  schema?: string | undefined;
  /** Most connections in the pool (default 8): one runs the transactions, the rest serve committed reads. */
  poolSize?: number | undefined;
  /** How long to wait for a connection to open (default 5000 ms). */
  connectTimeoutMs?: number | undefined;
  /** How long a transaction waits for another instance's write lock before failing "unavailable" (default 5000 ms). */
  lockTimeoutMs?: number | undefined;
  /** Server-side cap on one statement (default 30000 ms; 0: none); the client gives up 2 s after it. */
  statementTimeoutMs?: number | undefined;
}

/**
 * The pool configuration for `s`. Throws VaultError("config_invalid") for a URL that is not a
 * PostgreSQL URL or a schema that is not a plain identifier; the message shows the URL redacted.
 */
export function poolConfig(s: ConnectionSettings): PoolConfig {
  let u: URL;
  try {
    u = new URL(s.url);
  } catch {
    throw new VaultError("config_invalid", `the database URL does not parse; write it as postgres://user@host:5432/database`);
  }
  if (u.protocol !== "postgres:" && u.protocol !== "postgresql:")
    throw new VaultError("config_invalid", `the database URL ${redactUrl(s.url)} is not a postgres:// URL; write it as postgres://user@host:5432/database`);
  assertTlsFilesReadable(u);
  if (s.schema !== undefined && !SCHEMA_NAME.test(s.schema))
    throw new VaultError("config_invalid", `the schema name ${JSON.stringify(s.schema)} is not a plain lower-case identifier (letters, digits, _)`);
  // Session settings travel in the startup packet's `options`: the schema first in search_path, and
  // the timeouts. node-postgres lets the URL's own `options` override the config, so they are merged
  // here and the URL's copy removed.
  const opts: string[] = [];
  const fromUrl = u.searchParams.get("options");
  if (fromUrl !== null) {
    opts.push(fromUrl);
    u.searchParams.delete("options");
  }
  if (s.schema !== undefined) opts.push(`-c search_path=${s.schema}`);
  const { lockMs, statementMs } = sessionTimeouts(s);
  opts.push(`-c lock_timeout=${lockMs}`);
  opts.push(`-c statement_timeout=${statementMs}`);
  opts.push("-c idle_in_transaction_session_timeout=60000");
  return {
    connectionString: u.toString(),
    options: opts.join(" "),
    max: Math.max(2, Math.floor(s.poolSize ?? 8)),
    connectionTimeoutMillis: ms(s.connectTimeoutMs, 5000),
    // The client's own bound on one statement's answer, for a server or network that stops answering
    // without closing the connection (the server's statement_timeout cannot fire then): a little past
    // statement_timeout, so it never cuts a statement the server would still finish. On a pipelined
    // connection it destroys the connection, failing the transaction as "unavailable".
    query_timeout: statementMs === 0 ? 0 : statementMs + QUERY_TIMEOUT_MARGIN_MS,
    idleTimeoutMillis: 30_000,
    // Several statements are written before the first answer comes back (see the Store contract's
    // round trips); node-postgres keeps their answers in order.
    pipeline: true,
    application_name: "lessor",
    keepAlive: true,
  };
}

/** Why a file named by a URL's TLS parameter cannot be read, in words, for an fs error code. */
export function tlsFileProblem(code: string): string {
  switch (code) {
    case "ENOENT":
    case "ENOTDIR":
      return "does not exist";
    case "EACCES":
    case "EPERM":
      return "cannot be read by this user";
    case "EISDIR":
      return "is a directory";
    default:
      return `cannot be read (${code || "error"})`;
  }
}

/**
 * Throws VaultError("config_invalid") when a file the URL's `sslrootcert`, `sslcert` or `sslkey`
 * names is not a readable file. The message names the parameter, never its value or the URL.
 */
function assertTlsFilesReadable(u: URL): void {
  for (const param of TLS_FILE_PARAMS) {
    const path = u.searchParams.get(param);
    if (path === null || path === "") continue;
    let problem: string | null = null;
    try {
      if (statSync(path).isDirectory()) problem = tlsFileProblem("EISDIR");
      else accessSync(path, constants.R_OK);
    } catch (e) {
      problem = tlsFileProblem((e as NodeJS.ErrnoException).code ?? "");
    }
    if (problem !== null)
      throw new VaultError(
        "config_invalid",
        `the file the database URL's ${param} parameter names ${problem}; put the ${param === "sslrootcert" ? "server's CA certificate" : param === "sslcert" ? "client certificate" : "client key"} there, or fix or remove ${param} in the URL`,
      );
  }
}

/** The session's lock_timeout and statement_timeout for `s`, in milliseconds (0: none), as {@link poolConfig} sets them. */
export function sessionTimeouts(s: Pick<ConnectionSettings, "lockTimeoutMs" | "statementTimeoutMs">): { lockMs: number; statementMs: number } {
  return { lockMs: ms(s.lockTimeoutMs, 5000), statementMs: ms(s.statementTimeoutMs, 30_000) };
}

function ms(v: number | undefined, dflt: number): number {
  return v === undefined || !Number.isFinite(v) || v < 0 ? dflt : Math.floor(v);
}
