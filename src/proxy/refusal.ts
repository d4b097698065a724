/**
 * The proxy's typed refusal: a {@link VaultError} that also says which rule refused, so the proxy can
 * answer with a status and an `application/problem+json` body an agent can act on.
 */
import { VaultError, type ErrorCode } from "../base/errors.js";
import type { AddressClass } from "./address.js";

/**
 * Why the proxy refused an upstream: an address class (the host resolved to such an address), `port`
 * (not on the port allow-list), `host_invalid` (not an IP address in standard form and not a valid DNS
 * name, e.g. `0x7f.1`), `unresolvable` (the name has no address, or the lookup failed or timed out),
 * or `not_granted` (the egress policy: no grant of the agent covers the host).
 */
export type RefusalReason = AddressClass | "port" | "host_invalid" | "unresolvable" | "not_granted";

/** Marks ProxyRefusals across copies of this module, as VaultError does. */
const BRAND: unique symbol = Symbol.for("lessor.ProxyRefusal") as never;

/** What a refusal names. `address` is set when a resolved (or literal) address was refused. */
export interface RefusalDetail {
  reason: RefusalReason;
  host: string;
  port: number;
  address?: string;
}

/**
 * The guard refused an upstream. `code` is `access_denied` (a rule refused it) or `unavailable` (the
 * name could not be resolved); `status` is the HTTP status the proxy should answer with (403 or 502).
 * The message names the host, the address and the rule, never a credential.
 */
export class ProxyRefusal extends VaultError {
  // VaultError's own check accepts any VaultError; this one accepts only ProxyRefusals.
  static override [Symbol.hasInstance](x: unknown): boolean {
    return typeof x === "object" && x !== null && (x as { [BRAND]?: unknown })[BRAND] === true;
  }

  readonly reason: RefusalReason;
  readonly host: string;
  readonly port: number;
  readonly address: string | undefined;
  readonly status: 403 | 502;

  constructor(detail: RefusalDetail, message: string, options?: { cause?: unknown }) {
    const code: ErrorCode = detail.reason === "unresolvable" ? "unavailable" : "access_denied";
    super(code, message, options);
    this.reason = detail.reason;
    this.host = detail.host;
    this.port = detail.port;
    this.address = detail.address;
    this.status = detail.reason === "unresolvable" ? 502 : 403;
  }

  /**
   * An RFC 9457 problem document for the proxy's answer (`application/problem+json`). `host` is the
   * agent's text as given: serialise with `safeJson` (src/base/text.ts), not bare JSON.stringify.
   */
  problem(): { type: string; title: string; status: number; detail: string; reason: RefusalReason; host: string; port: number; address?: string } {
    return {
      type: `urn:lessor:egress:${this.reason}`,
      title:
        this.status === 502
          ? "Upstream host could not be resolved"
          : this.reason === "not_granted"
            ? "Host not covered by any grant of this agent"
            : "Upstream refused by the proxy's SSRF guard",
      status: this.status,
      detail: this.message,
      reason: this.reason,
      host: this.host,
      port: this.port,
      ...(this.address !== undefined ? { address: this.address } : {}),
    };
  }
}

Object.defineProperty(ProxyRefusal.prototype, BRAND, { value: true });
