/**
 * The egress policy port of the forward proxy: for each CONNECT, what to do with `host:port`, and for
 * each request inside an intercepted tunnel, what to send. The proxy asks; the vault side (leases,
 * src/proxy/lease-egress.ts) answers. Nothing here knows about leases.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import type { ProxyRefusal } from "./refusal.js";
import type { TripwireMarks } from "./body-tripwire.js";
import type { ScrubPatterns } from "./scrub.js";

/**
 * Adds the credential to one intercepted request. Given a fresh copy of the request's end-to-end headers
 * (hop-by-hop headers already removed, names lower case), returns the headers to send upstream.
 */
export type InjectHeaders = (headers: IncomingHttpHeaders) => OutgoingHttpHeaders;

/** One request inside an intercepted tunnel, as the egress policy sees it. */
export interface ProxiedRequest {
  /** Upper case, as the client sent it. */
  readonly method: string;
  /** The tunnel's host (canonical) and port. */
  readonly host: string;
  readonly port: number;
  /** The request target in origin form (`/path?query`), as the client sent it. */
  readonly target: string;
  /** End-to-end headers (hop-by-hop ones removed), names lower case. */
  readonly headers: IncomingHttpHeaders;
  /** "h1" or "h2": the protocol the client spoke. */
  readonly protocol: "h1" | "h2";
  /**
   * Set for a WebSocket handshake (HTTP/1.1 `Upgrade: websocket`): if forwarded and the upstream
   * answers 101, the connection then carries frames both ways, untouched, until it closes.
   */
  readonly upgrade?: "websocket";
  /**
   * False when the request certainly has no body (HTTP/1.1: no Transfer-Encoding and no Content-Length
   * above 0; HTTP/2: END_STREAM on its HEADERS); true or absent when it may have one. The policy cannot
   * read the body before it decides: this is all it knows of it.
   */
  readonly hasBody?: boolean;
}

/** How one proxied request ended, for the audit event: never a header or body byte. */
export interface RequestOutcome {
  /** The upstream's status, or the proxy's own (403, 502…) when it answered itself; 0 when none. */
  status: number;
  /** Body bytes sent upstream and received from it. */
  bytesOut: number;
  bytesIn: number;
  /** From the request head to the end of the response, ms. */
  ms: number;
  /** Set when the exchange failed (client or upstream closed early, upstream error). */
  error?: string;
}

/** The proxy's answer for one request inside an intercepted tunnel. */
export type Prepared =
  /** Send it upstream with these headers (host set by the proxy) and target; scrub the answer if asked. */
  | {
      kind: "forward";
      headers: OutgoingHttpHeaders;
      target: string;
      /**
       * If set, the response body streams through the scrubber (an echoed secret becomes its placeholder);
       * after a WebSocket upgrade, so do the server's frames.
       */
      scrub?: ScrubPatterns;
      /**
       * If set, the request body streams through these patterns (used in reverse: placeholder → value),
       * never buffered whole. A body with a Content-Encoding is then refused (415): it cannot be rewritten.
       * If a pattern changes the length, the body goes without Content-Length (chunked over HTTP/1.1).
       */
      requestBody?: ScrubPatterns;
      /**
       * WebSocket only: if set, the payloads of the client's text and binary frames go through these
       * patterns (placeholder → value) and are re-masked and re-framed (src/proxy/ws-frames.ts).
       */
      frames?: ScrubPatterns;
      /**
       * If set, the request body (and HTTP/2 request trailers, and after a WebSocket upgrade the
       * client's frames) are watched on their way upstream for these marks (./body-tripwire.ts):
       * credentials that must not go to this host. At the first one the proxy ends the upstream
       * request, waits for `trip` with the owners of the marks found, and answers 403 with the detail
       * `trip` gives (or resets the exchange if the answer had begun; a WebSocket closes with 1008).
       */
      bodyTripwire?: {
        marks: TripwireMarks<unknown>;
        trip(owners: readonly unknown[]): Promise<string>;
        /**
         * HTTP/2 request trailers are header fields: the owners whose marks `fields` hide as the
         * request head's check reads them (names lower-cased, values percent-decoded up to three
         * times, all values joined), besides `marks`.
         */
        fields?(fields: Readonly<Record<string, string | readonly string[] | undefined>>): readonly unknown[];
      };
      /** Called once when the exchange is over. */
      done?(outcome: RequestOutcome): void;
    }
  /** Answer it with a problem document; nothing goes upstream. */
  | { kind: "refuse"; status: number; reason: string; detail: string; done?(outcome: RequestOutcome): void };

/** An intercepted tunnel, given to the policy so that it can end it (a lease revoked, say). */
export interface TunnelHandle {
  /** Closes the client's connection and its upstream connections at once. */
  close(): void;
  /** True once closed. */
  readonly closed: boolean;
}

/** What the proxy does with one CONNECT. */
export type EgressDecision =
  /** Terminate TLS with the local CA; ask `prepare` for each request; forward over verified TLS. */
  | {
      kind: "intercept";
      prepare(req: ProxiedRequest, tunnel: TunnelHandle): Prepared | Promise<Prepared>;
    }
  /** Pass the bytes both ways untouched (open egress). */
  | { kind: "tunnel" }
  /** Answer the CONNECT with the refusal's status and its problem document. */
  | { kind: "refuse"; refusal: ProxyRefusal };

/** The policy the proxy asks for each CONNECT. `host` is canonical (lower case, punycode, no brackets). */
export interface Egress {
  decide(host: string, port: number): EgressDecision | Promise<EgressDecision>;
}

/** An intercept decision that adds headers with `inject` to every request and scrubs with `scrub` (tests, fixed setups). */
export function fixedIntercept(inject: InjectHeaders, scrub?: ScrubPatterns): EgressDecision {
  return {
    kind: "intercept",
    prepare: (req) => ({ kind: "forward", headers: inject({ ...req.headers }), target: req.target, ...(scrub ? { scrub } : {}) }),
  };
}
