/**
 * Turns node-postgres and server failures into VaultErrors with plain messages: a lost or refused
 * connection is "unavailable" (the daemon retries by opening new connections), a broken rule is
 * "internal", a gap in the audit chain "audit_failed". Messages never include bound values or the
 * database URL; `target` is {@link describeTarget}'s host:port/database.
 */
import { VaultError } from "../../base/errors.js";

/** The SQLSTATE the audit trigger raises for a row that does not follow the head (schema.ts). */
export const AUDIT_GAP_STATE = "LSGAP";

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
  return /Connection terminated|connection error|not queryable|timeout exceeded when trying to connect|Connection closed/i.test(msg);
}

/** The VaultError for `e`, raised while the store tried to `what` ("read a lease"). */
export function pgError(e: unknown, what: string, target: string): VaultError {
  if (e instanceof VaultError) return e;
  const code = codeOf(e);
  if (isConnectionError(e)) {
    const err = new VaultError(
      "unavailable",
      `could not ${what}: the PostgreSQL server at ${target} cannot be reached (${code || "connection lost"}); check that it is running and reachable, lessor reconnects by itself`,
      { cause: e },
    );
    (err as { connection?: boolean }).connection = true;
    return err;
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
      msg = "another lessor instance held the vault's write lock for too long; try again";
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
