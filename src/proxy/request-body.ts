/**
 * Placeholders in request bodies (a `[[proxy.inject]]` rule with `body = true`): the pieces HTTP/1.1
 * (./intercept.ts) and HTTP/2 (./h2.ts) share. The body streams through the reverse patterns
 * (placeholder → value, ./scrub.ts) chunk by chunk, never buffered whole; a placeholder split across
 * chunks is caught because the scrubber holds back a possible prefix.
 *
 * A compressed body (any Content-Encoding but identity) cannot be rewritten without decompressing and
 * recompressing it, which would change what the client signed or hashed and open a decompression bomb:
 * the proxy refuses it (415) instead of sending the placeholder on unreplaced, so the agent learns why.
 */
import type { ClientRequest, IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import { decodableCoding } from "./encoded-tripwire.js";
import { ScrubStream, type ScrubPatterns } from "./scrub.js";

/** The reason word of the 415 problem document. */
export const ENCODED_BODY_REASON = "request_encoding";

/** True when a message with these HTTP/1.1 headers has a body (RFC 9112 §6.3: Transfer-Encoding, or Content-Length above 0). */
export function h1HasBody(headers: IncomingHttpHeaders): boolean {
  if (headers["transfer-encoding"] !== undefined) return true;
  const cl = headers["content-length"];
  return cl !== undefined && !/^0+$/.test(cl.trim());
}

/** The body's content coding (lower case) if it is anything but identity, else null. */
export function encodedBody(value: string | string[] | number | undefined): string | null {
  if (value === undefined) return null;
  const codings = (Array.isArray(value) ? value.join(",") : String(value))
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s !== "" && s !== "identity");
  return codings.length > 0 ? codings.join(", ") : null;
}

/** The 415 detail for a compressed body that a body rule would have to rewrite. */
export function encodedBodyDetail(coding: string): string {
  return `Unsupported media type: the request body has content-encoding ${coding}, and a [[proxy.inject]] rule with body = true replaces placeholders in bodies, which the proxy cannot do in a compressed body; the request was not sent. Send the body uncompressed`;
}

/**
 * The 415 detail for a body the tripwire must read (other credentials' marks are watched on this host)
 * in a coding it cannot decode (./encoded-tripwire.ts reads gzip, deflate and br, one at a time).
 */
export function unwatchableBodyDetail(coding: string): string {
  return `Unsupported media type: the request body has content-encoding ${coding}; the proxy reads request bodies to this host to check that no other credential leaves with them, and reads only gzip, deflate or br (one coding); the request was not sent. Send the body uncompressed or in one of those`;
}

/**
 * The 415 detail for a request whose body is in `encoding` (its Content-Encoding), decided from its
 * head: a body a rule rewrites (`rewritten`) must be uncompressed, one the body tripwire reads
 * (`watched`) must be plain or in a coding it decodes. Null when the body may go as it is.
 */
export function encodedBodyRefusal(encoding: string | string[] | number | undefined, rewritten: boolean, watched: boolean): string | null {
  const coding = rewritten || watched ? encodedBody(encoding) : null;
  if (coding === null) return null;
  if (rewritten) return encodedBodyDetail(coding);
  return decodableCoding(coding) === null ? unwatchableBodyDetail(coding) : null;
}

/**
 * Adjusts the outgoing headers for a rewritten body: a Content-Length stays only if every pattern
 * keeps the length (the usual case: placeholders are shaped like their values). Otherwise it goes,
 * and over HTTP/1.1 (`chunked` true) the body is sent chunked.
 */
export function rewrittenBodyHeaders(headers: OutgoingHttpHeaders, patterns: ScrubPatterns, chunked: boolean): void {
  if (patterns.lengthPreserving && headers["content-length"] !== undefined) return;
  delete headers["content-length"];
  if (chunked) headers["transfer-encoding"] = "chunked";
}

/**
 * Frames a request body that goes to an HTTP/1.1 upstream: without a Content-Length it is sent
 * chunked. Call it whenever a body is forwarded. Node's client chunks a body on its own only for the
 * methods it expects one on (not GET, HEAD, DELETE, OPTIONS, TRACE): on those it writes the bytes bare,
 * and on a keep-alive connection the upstream reads them as the start of the next request, whose
 * head (the credential the proxy injects for the next, granted request) it takes as its own: a
 * request smuggled past the grant's methods and paths.
 */
export function framedBodyHeaders(headers: OutgoingHttpHeaders): void {
  const names = Object.keys(headers).map((k) => k.toLowerCase());
  if (names.includes("content-length")) return;
  for (const k of Object.keys(headers)) if (k.toLowerCase() === "transfer-encoding") delete headers[k];
  headers["transfer-encoding"] = "chunked";
}

/**
 * Makes sure the upstream connection that carries a body is never given to another request. The
 * agent's body is bytes it chose, on the connection the next request (and its injected credential)
 * would take; framing is not enough against an upstream that does not read it as framed (CL.0: a
 * server ignoring Content-Length on a GET, or on an endpoint that expects no body, takes the body as
 * the start of the next request: a smuggled `DELETE /admin HTTP/1.1\r\nX: ` whose headers the next
 * granted request completes, or a `POST /comments` whose body captures that head, credential and
 * all). Marked before its head is written, the request goes with `Connection: close` (Node writes
 * it, the client's own Connection header being hop-by-hop and dropped), and its socket is closed after
 * the answer even when the upstream's answer does not say close.
 */
export function closeAfter(up: ClientRequest): void {
  up.shouldKeepAlive = false;
}

/** The stream that swaps placeholders for values in a body (patterns are placeholder → value). */
export function bodyRewriter(patterns: ScrubPatterns): ScrubStream {
  return new ScrubStream(patterns);
}
