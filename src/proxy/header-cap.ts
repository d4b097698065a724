/**
 * The cap on the number of header lines of a request the proxy reads (CONNECT heads, plain-HTTP
 * requests, requests and WebSocket handshakes inside an intercepted tunnel).
 *
 * Node's own `server.maxHeadersCount` does not refuse a request with more headers: it silently drops
 * the extra ones from `req.headers` (they stay in `req.rawHeaders`). A proxy must not forward a request
 * it only partly read, and a header it dropped could be the one a rule looks at (a second Host, an
 * Authorization), so the proxy counts the raw header lines itself and answers 431.
 */
import type { IncomingMessage, Server } from "node:http";
import { VaultError } from "../base/errors.js";

/** Default cap on the number of header lines of one request. */
export const DEFAULT_MAX_HEADERS = 100;

/**
 * Makes `server` keep one header line more than `max` in `req.headers` (so a request over the cap is
 * still seen whole enough to be refused, and a request within it is never truncated). Throws
 * `invalid_request` unless `max` is a whole number from 1 to 10000.
 */
export function applyHeaderCount(server: Server, max: number): void {
  if (!Number.isInteger(max) || max < 1 || max > 10_000)
    throw new VaultError("invalid_request", `the proxy's header cap ${max} is not a whole number from 1 to 10000`);
  server.maxHeadersCount = max + 1;
}

/** True if `req` carries more than `max` header lines (each repeated header counts once per line). */
export function tooManyHeaders(req: IncomingMessage, max: number): boolean {
  return req.rawHeaders.length / 2 > max;
}

/** The problem document of a 431 for too many header lines. */
export function tooManyHeadersDetail(max: number): string {
  return `Request header fields too large: more than ${max} header lines`;
}
