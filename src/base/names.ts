/**
 * Validation of the names people and agents type: scopes, secret names, agent ids. Each check throws
 * VaultError("invalid_request") naming the bad value's role and the allowed form.
 */
import { VaultError } from "./errors.js";
import { quoteText } from "./text.js";
import type { SecretRef } from "./types.js";

/** `global`, or `<kind>:<id>` such as `workspace:acme`, `principal:bob`, `env:prod`, `service:api`. */
const SCOPE_RE = /^(?:global|[a-z][a-z0-9_-]{0,31}:[A-Za-z0-9][A-Za-z0-9._@-]{0,127})$/;
/** Letters, digits, `_`, `.`, `-`; starts with a letter, digit or `_`; at most 128 chars. */
const NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
/** Letters, digits, `_`, `.`, `-`, `@`, `:`; starts with a letter, digit or `_`; at most 128 chars. */
const AGENT_RE = /^[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,127}$/;
/** A client's name as an audit event records it (`git-credential`, `docker-credential`; src/vault/client-refusals.ts). */
export const CLIENT_NAME_RE = /^[a-z][a-z0-9-]{0,31}$/;

export function isScope(s: unknown): s is string {
  return typeof s === "string" && SCOPE_RE.test(s);
}
export function isSecretName(s: unknown): s is string {
  return typeof s === "string" && NAME_RE.test(s) && !s.includes("..");
}
export function isAgentId(s: unknown): s is string {
  return typeof s === "string" && AGENT_RE.test(s);
}

/** The value quoted for a message: clipped, and with control and invisible characters escaped. */
function show(v: unknown): string {
  return quoteText(typeof v === "string" ? v : String(v));
}

/** Throws unless `s` is a valid scope. */
export function checkScope(s: unknown): string {
  if (!isScope(s))
    throw new VaultError(
      "invalid_request",
      `scope ${show(s)} is not valid: use "global" or "<kind>:<id>" such as "workspace:acme" or "env:prod"`,
    );
  return s;
}

/** Throws unless `s` is a valid secret name. */
export function checkSecretName(s: unknown): string {
  if (!isSecretName(s))
    throw new VaultError(
      "invalid_request",
      `secret name ${show(s)} is not valid: use 1-128 letters, digits, "_", "." or "-", starting with a letter, digit or "_"`,
    );
  return s;
}

/** Throws unless `s` is a valid agent id. */
export function checkAgentId(s: unknown): string {
  if (!isAgentId(s))
    throw new VaultError(
      "invalid_request",
      `agent id ${show(s)} is not valid: use 1-128 letters, digits, "_", ".", "-", "@" or ":", starting with a letter, digit or "_"`,
    );
  return s;
}

/** Validates and returns a SecretRef. */
export function checkRef(ref: { scope?: unknown; name?: unknown }): SecretRef {
  if (typeof ref !== "object" || ref === null)
    throw new VaultError("invalid_request", 'a secret is given as { scope?, name } (or as "scope/name" where a string is taken)');
  return { scope: checkScope(ref.scope ?? "global"), name: checkSecretName(ref.name) };
}

/** `scope/name`: the one string form of a ref used in policy, audit and errors. */
export function refString(ref: SecretRef): string {
  return `${ref.scope}/${ref.name}`;
}

/**
 * Parses `scope/name` or a bare `name` (scope `global`). Neither part may contain `/`.
 */
export function parseRefString(s: string): SecretRef {
  const i = s.indexOf("/");
  if (i < 0) return { scope: "global", name: checkSecretName(s) };
  if (s.indexOf("/", i + 1) >= 0)
    throw new VaultError("invalid_request", `secret ${show(s)} has more than one "/": write it as "scope/name"`);
  return { scope: checkScope(s.slice(0, i)), name: checkSecretName(s.slice(i + 1)) };
}
