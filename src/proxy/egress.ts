/**
 * The egress policy port of the forward proxy: for each CONNECT, what to do with `host:port`. The proxy
 * asks; the vault side (grants, leases) answers. Nothing here knows about leases.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import type { ProxyRefusal } from "./refusal.js";
import type { ScrubPatterns } from "./scrub.js";

/**
 * Adds the credential to one intercepted request. Given a fresh copy of the request's end-to-end headers
 * (hop-by-hop headers already removed, names lower case), returns the headers to send upstream.
 */
export type InjectHeaders = (headers: IncomingHttpHeaders) => OutgoingHttpHeaders;

/** What the proxy does with one CONNECT. */
export type EgressDecision =
  /** Terminate TLS with the local CA, add the credential to each request, forward over verified TLS. */
  | {
      kind: "intercept";
      inject: InjectHeaders;
      /** If set, response bodies are streamed through the scrubber (a secret echoed back becomes its placeholder). */
      scrub?: ScrubPatterns;
    }
  /** Pass the bytes both ways untouched (open egress). */
  | { kind: "tunnel" }
  /** Answer the CONNECT with the refusal's status and its problem document. */
  | { kind: "refuse"; refusal: ProxyRefusal };

/** The policy the proxy asks for each CONNECT. `host` is canonical (lower case, punycode, no brackets). */
export interface Egress {
  decide(host: string, port: number): EgressDecision | Promise<EgressDecision>;
}
