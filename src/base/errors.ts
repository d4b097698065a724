/**
 * Typed errors. Every error lessor raises on purpose is a {@link VaultError} whose `code` is one of
 * {@link ERROR_CODES}. Messages say what went wrong and what to do, and never contain a secret value.
 *
 * The first twelve codes are the wire protocol's closed set (DESIGN.md, "Wire protocol"); the rest are
 * local to the core and map onto a wire code through {@link wireCode}.
 */

/** The closed list of error codes, with what each means. Documented in docs/errors.md. */
export const ERROR_CODES = {
  lease_expired: "the lease has passed its expiry time",
  lease_revoked: "the lease was revoked",
  lease_not_found: "no lease has that id",
  lease_exhausted: "the lease has used all of its allowed uses",
  access_denied: "policy or role does not allow this",
  secret_not_found: "no secret has that scope and name (or version)",
  secret_exists: "a secret with that scope and name already exists",
  invalid_request: "the request is malformed or a value is out of range",
  unauthenticated: "the caller could not be identified",
  rate_limited: "too many requests or live leases",
  unavailable: "the vault cannot serve the request right now",
  internal: "an unexpected failure inside the vault",
  value_too_large: "a secret value is over the size cap",
  decrypt_failed: "a stored value could not be opened (wrong key, or moved or tampered ciphertext)",
  key_unavailable: "no master key could be loaded, or it does not match this vault",
  insecure_permissions: "a file or directory holding key material is readable by others",
  policy_invalid: "the policy file could not be loaded",
  config_invalid: "the configuration file could not be loaded",
  audit_failed: "the audit trail could not be written, so the operation was refused (or, committed, its result was withheld)",
  audit_broken: "the audit trail was found cut or altered, so audited operations are refused until an admin recovers it",
  daemon_unverified: "the client could not verify that it reached the real lessor daemon, so it sent nothing",
} as const;

/** One of the documented error codes. */
export type ErrorCode = keyof typeof ERROR_CODES;

/** The wire protocol's closed set of codes. */
export type WireErrorCode =
  | "lease_expired"
  | "lease_revoked"
  | "lease_not_found"
  | "lease_exhausted"
  | "access_denied"
  | "secret_not_found"
  | "secret_exists"
  | "invalid_request"
  | "unauthenticated"
  | "rate_limited"
  | "unavailable"
  | "internal";

const WIRE: Record<ErrorCode, WireErrorCode> = {
  lease_expired: "lease_expired",
  lease_revoked: "lease_revoked",
  lease_not_found: "lease_not_found",
  lease_exhausted: "lease_exhausted",
  access_denied: "access_denied",
  secret_not_found: "secret_not_found",
  secret_exists: "secret_exists",
  invalid_request: "invalid_request",
  unauthenticated: "unauthenticated",
  rate_limited: "rate_limited",
  unavailable: "unavailable",
  internal: "internal",
  value_too_large: "invalid_request",
  decrypt_failed: "internal",
  key_unavailable: "unavailable",
  insecure_permissions: "unavailable",
  policy_invalid: "invalid_request",
  config_invalid: "unavailable",
  audit_failed: "unavailable",
  audit_broken: "unavailable",
  daemon_unverified: "unauthenticated",
};

/** Maps any core code onto the wire protocol's closed set. */
export function wireCode(code: ErrorCode): WireErrorCode {
  return WIRE[code];
}

/** Marks VaultErrors, so that `instanceof` knows them whichever copy of this module made them. */
const BRAND: unique symbol = Symbol.for("lessor.VaultError") as never;

/** The one error type lessor throws on purpose. `message` is safe to show to the caller. */
export class VaultError extends Error {
  /**
   * True for a VaultError made by any copy of this module: the CLI's entry bundle and its command
   * tree are built apart (scripts/build-cli.mjs) and each holds one, and an application may load two
   * versions of lessor. Code and message are what matter, not which copy of the class.
   */
  static override [Symbol.hasInstance](x: unknown): boolean {
    // A subclass inherits this method: for it, the plain prototype check (a ProxyRefusal is not any
    // VaultError). Subclasses are checked within the bundle that made them.
    if (this !== VaultError) return Function.prototype[Symbol.hasInstance].call(this, x);
    return typeof x === "object" && x !== null && (x as { [BRAND]?: unknown })[BRAND] === true;
  }

  override readonly name = "VaultError";
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }

  /** A plain object for logs and the wire: code and message only (never the cause). */
  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

Object.defineProperty(VaultError.prototype, BRAND, { value: true });

/** True when `e` is a VaultError, optionally with the given code. */
export function isVaultError(e: unknown, code?: ErrorCode): e is VaultError {
  return e instanceof VaultError && (code === undefined || e.code === code);
}
