/**
 * The CLI's exit codes: distinct per kind of failure so scripts can branch on them
 * (docs/cli.md). `lessor run` exits with its child's code instead.
 */
import type { ErrorCode } from "../base/errors.js";

export const EXIT = {
  ok: 0,
  /** Anything else that went wrong (bad key, decrypt failure, failed audit write). */
  error: 1,
  /** The command line or a value was malformed. */
  usage: 2,
  /** Refused: policy, role, authentication, or a lease that is revoked, expired or used up. */
  denied: 3,
  /** The secret, version or lease does not exist. */
  notFound: 4,
  /** The daemon or the database could not be reached or is busy. */
  unavailable: 5,
  /** A bug: an unexpected failure. */
  internal: 70,
} as const;

const BY_CODE: Partial<Record<ErrorCode, number>> = {
  invalid_request: EXIT.usage,
  value_too_large: EXIT.usage,
  policy_invalid: EXIT.usage,
  config_invalid: EXIT.usage,
  access_denied: EXIT.denied,
  unauthenticated: EXIT.denied,
  daemon_unverified: EXIT.denied,
  lease_expired: EXIT.denied,
  lease_revoked: EXIT.denied,
  lease_exhausted: EXIT.denied,
  secret_not_found: EXIT.notFound,
  lease_not_found: EXIT.notFound,
  secret_exists: EXIT.usage,
  unavailable: EXIT.unavailable,
  rate_limited: EXIT.unavailable,
  internal: EXIT.internal,
};

/** The exit code for a VaultError code. */
export function exitCodeFor(code: ErrorCode): number {
  return BY_CODE[code] ?? EXIT.error;
}
