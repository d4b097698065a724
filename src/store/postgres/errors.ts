/**
 * Turns node-postgres and server failures into VaultErrors with plain messages: a lost or refused
 * connection is "unavailable" (the daemon retries by opening new connections), a broken rule is
 * "internal", a gap in the audit chain "audit_failed". Messages never include bound values or the
 * database URL; `target` is {@link describeTarget}'s host:port/database.
 */
import { VaultError } from "../../base/errors.js";
import { tlsFileProblem } from "./connection.js";

/** The SQLSTATE the audit trigger raises for a row that does not follow the head (schema.ts). */
export const AUDIT_GAP_STATE = "LSGAP";

/** True when `e` (or the database error behind a VaultError) is lock_not_available: a lock not had within lock_timeout. */
export function isLockTimeout(e: unknown): boolean {
  return codeOf(e instanceof VaultError ? e.cause : e) === "55P03";
}

/** True when `e` (or the error behind it) is "current transaction is aborted": the effect of an earlier failure, never a cause. */
export function inFailedTransaction(e: unknown): boolean {
  return codeOf(e instanceof VaultError ? e.cause : e) === "25P02";
}

/** Socket-level error codes that mean the server cannot be reached. */
const NET_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH", "ENETUNREACH", "ENOENT"]);

function codeOf(e: unknown): string {
  const c = (e as { code?: unknown })?.code;
  return typeof c === "string" ? c : "";
}

/** True when `e` means the connection is gone or could not be made (so retrying the batch is pointless). */
export function isConnectionError(e: unknown): boolean {
  if (e instanceof VaultError) return e.code === "unavailable" && (e as { connection?: boolean }).connection === true;
  const code = codeOf(e);
  if (NET_CODES.has(code) || code.startsWith("08") || code === "57P01" || code === "57P02" || code === "57P03" || code === "53300") return true;
  const msg = e instanceof Error ? e.message : "";
  return /Connection terminated|connection error|not queryable|timeout exceeded when trying to connect|Connection closed|Query read timeout/i.test(msg);
}

/** Why a connection failed, in words, for the codes a stopped, restarting or unreachable server gives. */
function connectionReason(code: string, e: unknown): string {
  switch (code) {
    case "ECONNREFUSED":
      return "nothing accepts connections there (the server is stopped or restarting)";
    case "57P01":
    case "57P02":
      return "the server is shutting down";
    case "57P03":
      return "the server is starting up or recovering and does not accept connections yet";
    case "53300":
      return "the server has no free connection slots";
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return "the host name does not resolve";
    case "ECONNRESET":
    case "EPIPE":
      return "the connection was cut";
  }
  const msg = e instanceof Error ? e.message : "";
  if (/timeout exceeded when trying to connect|due to connection timeout/i.test(msg)) return "no answer within the connect timeout";
  if (/Query read timeout/i.test(msg)) return "no answer within the statement timeout; the connection was given up";
  if (/Connection terminated|Connection closed|not queryable/i.test(msg)) return "the connection was cut";
  return "";
}

/** The "unavailable" error for a lost or refused connection; {@link isConnectionError} knows it again. */
function connectionError(message: string, cause: unknown): VaultError {
  const err = new VaultError("unavailable", message, { cause });
  (err as { connection?: boolean }).connection = true;
  return err;
}

/**
 * A transaction ran past its deadline while a statement of it was still unanswered: the server (or
 * the network to it) went silent. A connection error, so the connection is dropped, not reused.
 */
export function silentServer(target: string, ms: number): VaultError {
  return connectionError(
    `the PostgreSQL server at ${target} did not answer within ${ms} ms (it or the network to it stopped responding); the connection was dropped and lessor reconnects by itself, so try again once the server answers`,
    undefined,
  );
}

/** Node's codes for a TLS handshake that failed on a certificate (the server's not trusted, expired, another host's). */
const TLS_CERT_CODE = /CERT|^ERR_TLS_|^UNABLE_TO_|^HOSTNAME_MISMATCH$/;

/**
 * The VaultError for a connection whose TLS settings cannot be met, or null: a TLS file the URL names
 * that node-postgres could not read (a file error, not a socket's), a server that offers no TLS to a
 * URL whose sslmode requires it, a certificate not accepted. None is a bug, none says the URL.
 */
function tlsError(e: unknown, code: string, what: string, target: string): VaultError | null {
  const fsErr = e as { syscall?: unknown; path?: unknown } | null;
  if (fsErr?.syscall === "open" && typeof fsErr.path === "string" && code !== "")
    return new VaultError(
      "config_invalid",
      `could not ${what}: a TLS file the database URL names (sslrootcert, sslcert or sslkey) ${tlsFileProblem(code)}; fix that parameter of the URL`,
      { cause: e },
    );
  const msg = e instanceof Error ? e.message : "";
  if (/server does not support SSL/i.test(msg))
    return new VaultError(
      "unavailable",
      `could not ${what}: the PostgreSQL server at ${target} does not offer TLS, and the database URL's sslmode (or ssl) requires it; enable TLS on the server, or change sslmode in the URL if the network to it is trusted`,
      { cause: e },
    );
  if (TLS_CERT_CODE.test(code))
    return new VaultError(
      "unavailable",
      `could not ${what}: the TLS connection to the PostgreSQL server at ${target} failed (${code}): its certificate was not accepted under the database URL's sslmode and sslrootcert; check both`,
      { cause: e },
    );
  return null;
}

/** The VaultError for `e`, raised while the store tried to `what` ("read a lease"). */
export function pgError(e: unknown, what: string, target: string): VaultError {
  if (e instanceof VaultError) return e;
  const code = codeOf(e);
  const tls = tlsError(e, code, what, target);
  if (tls !== null) return tls;
  if (isConnectionError(e)) {
    const why = connectionReason(code, e);
    return connectionError(
      `could not ${what}: the PostgreSQL server at ${target} cannot be reached (${code || "connection lost"})${why ? `: ${why}` : ""}; lessor reconnects by itself, so try again once the server is back`,
      e,
    );
  }
  let vcode: "unavailable" | "internal" | "audit_failed" = "internal";
  let msg: string;
  switch (code) {
    case AUDIT_GAP_STATE:
      vcode = "audit_failed";
      msg = "the audit row does not follow the trail's last row; the audit chain must have no gaps";
      break;
    case "28P01":
    case "28000":
      vcode = "unavailable";
      msg = `PostgreSQL at ${target} refused the login; check the user and password of the database URL`;
      break;
    case "3D000":
      vcode = "unavailable";
      msg = `the database at ${target} does not exist; create it (createdb) or fix the database URL`;
      break;
    case "3F000":
      vcode = "unavailable";
      msg = `the schema named in the connection's search_path does not exist at ${target}; create it first`;
      break;
    case "55P03":
      vcode = "unavailable";
      msg =
        "another session of the vault's database role (another lessor instance mid-commit, or an operator's session) held a lock the vault needs for longer than lock_timeout; try again";
      break;
    case "40001":
    case "40P01":
      vcode = "unavailable";
      msg = "the transaction conflicted with another lessor instance's; try again";
      break;
    case "57014":
      vcode = "unavailable";
      msg = "a statement took longer than the statement timeout; try again";
      break;
    case "53100":
    case "53200":
      vcode = "unavailable";
      msg = `the PostgreSQL server at ${target} is out of disk or memory; free some and try again`;
      break;
    case "23505":
      msg = "a row with the same key already exists";
      break;
    case "23502":
    case "23503":
      msg = "a row it points at is missing";
      break;
    case "42501":
      vcode = "unavailable";
      msg = `the database user may not use the vault's tables at ${target}; grant it access to the schema`;
      break;
    default:
      msg = code !== "" ? `unexpected database error (${code})` : "unexpected database error";
  }
  return new VaultError(vcode, `could not ${what}: ${msg}`, { cause: e });
}

/**
 * The error for a connection lost after COMMIT was sent: the server may have committed before the
 * connection went, so the caller must not take it for a failure that changed nothing (nor, of course,
 * for a success). Still "unavailable" and a connection error.
 */
export function commitOutcomeUnknown(e: unknown, target: string): VaultError {
  const root = e instanceof VaultError && e.cause !== undefined ? e.cause : e;
  const code = codeOf(root);
  const why = connectionReason(code, root);
  return connectionError(
    `could not confirm a commit: the PostgreSQL server at ${target} cannot be reached (${code || "connection lost"})${why ? `: ${why}` : ""}; the commit was sent before the connection was lost, so the change may or may not have been saved: check before repeating it (lessor reconnects by itself)`,
    root,
  );
}
