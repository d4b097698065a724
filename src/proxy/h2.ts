/**
 * HTTP/2 inside an intercepted tunnel: when the client picked h2 by ALPN, the proxy serves the tunnel
 * with a node:http2 session on the TLS socket it terminated. Each stream is one request: it must be in
 * origin form and name the tunnel's host in `:authority` (else 400 / 421), the egress policy's
 * `prepare` decides what goes out (the credential added) or refuses it, and the exchange streams both
 * ways without buffering: request DATA as it arrives, response DATA as it arrives (through the
 * scrubber if asked), and trailers both ways, so gRPC (whose status travels in trailers) works.
 *
 * Upstream, the tunnel speaks what the upstream picked by ALPN (./upstream.ts): h2 on one session per
 * tunnel, or HTTP/1.1 through the tunnel's agent (request trailers cannot pass to HTTP/1.1 and are
 * dropped; HTTP/1.1 chunked trailers do come back as HTTP/2 trailers).
 */
import type { ClientRequest, IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders } from "node:http";
import { METHODS, request as h1Request } from "node:http";
import { constants, performServerHandshake, type ClientHttp2Session, type IncomingHttpHeaders as H2Headers, type ServerHttp2Stream } from "node:http2";
import { pipeline, type Readable } from "node:stream";
import type { TLSSocket } from "node:tls";
import { safeJson } from "../base/text.js";
import type { Prepared, ProxiedRequest } from "./egress.js";
import { ANSWER_MARK, ANSWER_MARK_HEADER, askPolicy, authority, endToEnd, hostOf, NOT_END_TO_END_H2, scrubHeaders } from "./headers.js";
import type { Tunnel, UpstreamTls } from "./intercept.js";
import { BodyTripwire, type TripwireMarks } from "./body-tripwire.js";
import { type BodyUnreadable, decodableCoding, type DecodableCoding, DecodingTripwire } from "./encoded-tripwire.js";
import { bodyRewriter, closeAfter, encodedBody, encodedBodyRefusal, ENCODED_BODY_REASON, framedBodyHeaders, rewrittenBodyHeaders } from "./request-body.js";
import { Scrubber, type ScrubPatterns } from "./scrub.js";
import { relayBody } from "./relay.js";
import { askWhole, responseCoding } from "./response-coding.js";
import { lineOf, MAX_PIPELINED, type LineEntry } from "./tunnel-line.js";
import { TunnelUpstream } from "./upstream.js";

const { NGHTTP2_FLAG_END_STREAM, NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR, NGHTTP2_NO_ERROR } = constants;

/** Default cap on concurrent streams a client may open in one tunnel (node's own default is 2^32-1). */
export const DEFAULT_MAX_CONCURRENT_STREAMS = 128;


/** Settings of {@link serveH2}. */
export interface H2Options {
  /** Cap on one request's header list (SETTINGS_MAX_HEADER_LIST_SIZE), bytes. */
  maxHeaderListSize: number;
  /** Cap on the number of header fields of one request (pseudo-headers not counted); the stream is reset above it. */
  maxHeaders?: number;
  /** Cap on concurrent streams per tunnel (default {@link DEFAULT_MAX_CONCURRENT_STREAMS}). */
  maxConcurrentStreams?: number;
}

/** The HTTP/2 side of one tunnel. */
export interface H2Tunnel {
  /** Ends the client session and the upstream session at once (open streams are reset). */
  close(): void;
}

/**
 * Serves the intercepted tunnel `t` with HTTP/2 on `tls` (a TLS socket the proxy terminated, whose
 * handshake is done and whose ALPN protocol is h2). Upstream connections follow `up`.
 */
export function serveH2(t: Tunnel, tls: TLSSocket, up: UpstreamTls, opts: H2Options): H2Tunnel {
  const upstream = new TunnelUpstream(t, up);
  // A TLSSocket made by hand keeps `secureConnecting` set after its handshake (node's tls.Server clears
  // it before 'secureConnection'); the http2 session would wait for a 'secureConnect' that never comes.
  (tls as unknown as { secureConnecting: boolean }).secureConnecting = false;
  const session = performServerHandshake(tls, {
    // node counts the four request pseudo-headers too.
    ...(opts.maxHeaders !== undefined ? { maxHeaderListPairs: opts.maxHeaders + 4 } : {}),
    settings: {
      enablePush: false,
      maxConcurrentStreams: opts.maxConcurrentStreams ?? DEFAULT_MAX_CONCURRENT_STREAMS,
      maxHeaderListSize: opts.maxHeaderListSize,
    },
  });
  session.on("error", () => session.destroy());
  // A client that ends its side of the connection ends the session (HTTP/2 ends gracefully by GOAWAY,
  // not by a half-close): its streams are reset at once, those waiting in the line are never asked,
  // and the upstream requests in flight end with them.
  tls.once("end", () => session.destroy());
  // No upstream session outlives its client session.
  session.on("close", () => upstream.close());
  session.on("stream", (stream: ServerHttp2Stream, headers: H2Headers, flags: number) => onStream(t, upstream, stream, headers, flags));
  return {
    close: (): void => {
      upstream.close();
      session.destroy();
    },
  };
}

/** True if the `te` header asks for trailers (gRPC requires it to reach the server). */
function wantsTrailers(te: string | string[] | undefined): boolean {
  const v = Array.isArray(te) ? te.join(",") : (te ?? "");
  return v.split(",").some((p) => p.trim().toLowerCase().split(";")[0] === "trailers");
}

/** Answers a stream with a problem document (the proxy's own answer), or resets it if the answer began. */
function problem(cs: ServerHttp2Stream, status: number, reason: string, detail: string): void {
  if (cs.destroyed || cs.closed) return;
  cs.resume(); // a request body still coming is read and dropped
  if (cs.headersSent) {
    cs.close(NGHTTP2_INTERNAL_ERROR);
    return;
  }
  const body = safeJson({ type: `urn:lessor:proxy:${reason}`, title: detail.split(":")[0], status, detail, reason });
  cs.respond({ ":status": status, "content-type": "application/problem+json", "content-length": Buffer.byteLength(body), [ANSWER_MARK_HEADER]: ANSWER_MARK });
  cs.end(body);
}

/** The methods forwarded over HTTP/2: node's HTTP/1.1 list (CONNECT is refused before). */
const H1_METHODS = new Set(METHODS);

function onStream(t: Tunnel, upstream: TunnelUpstream, cs: ServerHttp2Stream, h: H2Headers, flags: number): void {
  const began = performance.now();
  // Failures surface as 'close' (and through the pipelines): a stream error must not reach the process.
  cs.on("error", () => {});
  const method = String(h[":method"] ?? "");
  if (method === "CONNECT") {
    problem(cs, 501, "connect", "Not implemented: CONNECT (and WebSocket over HTTP/2) inside an intercepted tunnel is not supported");
    return;
  }
  // HTTP/2 takes any token as a method; the HTTP/1.1 side takes node's list only. The same list here,
  // so that a method cannot carry what the policy and the tripwire do not read as a method.
  if (!H1_METHODS.has(method)) {
    problem(cs, 501, "method", "Not implemented: the proxy forwards the standard HTTP methods only (as node's HTTP/1.1 parser knows them), in upper case");
    return;
  }
  const path = h[":path"];
  if (typeof path !== "string" || !path.startsWith("/")) {
    problem(cs, 400, "request_target", "Bad request target: inside a tunnel the proxy takes origin-form targets (/path) only");
    return;
  }
  if (h[":scheme"] !== "https") {
    problem(cs, 400, "scheme", "Bad request: inside an intercepted tunnel the scheme must be https");
    return;
  }
  // One tunnel, one host: both :authority and a Host header, where present, must name it.
  for (const v of [h[":authority"], h.host]) {
    if (v !== undefined && hostOf(String(v)) !== t.host) {
      problem(cs, 421, "misdirected", `Misdirected request: this tunnel is for ${t.host}, not for the :authority's host`);
      return;
    }
  }
  // Request trailers can arrive while the policy decides (they are not held back with the body).
  let reqTrailers: IncomingHttpHeaders | undefined;
  cs.once("trailers", (tr: IncomingHttpHeaders) => (reqTrailers = tr));
  const ended = (flags & NGHTTP2_FLAG_END_STREAM) !== 0;
  const asked: ProxiedRequest = {
    method: method.toUpperCase(),
    host: t.host,
    port: t.port,
    target: path,
    headers: endToEnd(h, NOT_END_TO_END_H2),
    protocol: "h2",
    hasBody: !ended,
  };
  const ex: Exchange = {
    t,
    cs,
    method,
    ended,
    encoding: h["content-encoding"],
    te: wantsTrailers(h.te),
    trailers: () => reqTrailers,
    began,
  };
  const ask = (free?: () => void): void =>
    void askPolicy(t.prepare, asked, t.handle).then(
      (p) => send(ex, upstream, p, free),
      // A policy failure must not take the proxy down, and the request must not go out without it.
      () => problem(cs, 500, "inject", "Proxy error: the credential could not be added; the request was not sent"),
    ).catch(() => problem(cs, 502, "upstream", "Bad gateway: the request could not be sent upstream")); // a throw while sending must not end the process
  // An HTTP/2 upstream takes the streams side by side. To an HTTP/1.1 one (or one not reached yet, which
  // may be) they wait in the tunnel's line as HTTP/1.1 requests do (./tunnel-line.ts): the policy is asked
  // (a use counted) only when a stream's turn comes, and a stream reset or a session ended while it
  // waited is never asked.
  if (upstream.kind === "h2") return ask();
  const line = lineOf(t);
  const entry: LineEntry = {
    serve: (free) => {
      cs.once("close", free);
      // The upstream turned out to speak HTTP/2 while this one waited: the next need not wait.
      if (upstream.kind === "h2") free();
      ask(free);
    },
    gone: () => cs.destroyed || cs.closed,
    drop: () => void (cs.closed || cs.close(NGHTTP2_CANCEL)),
    tooMany: () => problem(cs, 503, "pipelined", `Service unavailable: more than ${MAX_PIPELINED} requests wait in this tunnel for its HTTP/1.1 upstream; send fewer at once`),
  };
  cs.once("close", () => line.leave(entry));
  // Capped once the upstream is known to speak HTTP/1.1 (`send` trims the line then).
  line.join(entry, upstream.kind === "h1");
}

/** One stream being forwarded. */
interface Exchange {
  readonly t: Tunnel;
  readonly cs: ServerHttp2Stream;
  /** As the client sent it. */
  readonly method: string;
  /** The client's request had no body (END_STREAM on its headers). */
  readonly ended: boolean;
  /** The request's Content-Encoding, if any. */
  readonly encoding: string | string[] | undefined;
  /** The client sent `te: trailers`. */
  readonly te: boolean;
  /** The client's request trailers, once they came. */
  readonly trailers: () => IncomingHttpHeaders | undefined;
  readonly began: number;
}

/** What the outcome report of one stream counts, and the report itself (once). */
interface Tally {
  bytesOut: number;
  bytesIn: number;
  status: number;
  report(error?: string): void;
}

/** `free` (a stream in the tunnel's line) lets the next stream go: called here once the upstream speaks HTTP/2. */
function send(ex: Exchange, upstream: TunnelUpstream, p: Prepared, free?: () => void): void {
  const { t, cs } = ex;
  let reported = false;
  const tally: Tally = {
    bytesOut: 0,
    bytesIn: 0,
    status: 0,
    report(error) {
      if (reported) return;
      reported = true;
      p.done?.({ status: this.status, bytesOut: this.bytesOut, bytesIn: this.bytesIn, ms: performance.now() - ex.began, ...(error !== undefined ? { error } : {}) });
    },
  };
  if (p.kind === "refuse") {
    problem(cs, p.status, p.reason, p.detail);
    tally.status = p.status;
    tally.report();
    return;
  }
  // A body rule and a compressed body, or a body the tripwire must read in a coding it cannot decode:
  // refused before anything goes upstream (./request-body.ts; a policy that knows this refuses it
  // first, before any use: ./lease-egress.ts).
  const encoded = ex.ended ? null : encodedBodyRefusal(ex.encoding, p.requestBody !== undefined, p.bodyTripwire !== undefined);
  if (encoded !== null) {
    tally.status = 415;
    problem(cs, 415, ENCODED_BODY_REASON, encoded);
    tally.report("compressed request body");
    return;
  }
  if (t.handle.closed || cs.destroyed || cs.closed) {
    cs.close(NGHTTP2_CANCEL);
    tally.report(t.handle.closed ? "tunnel closed" : "client closed");
    return;
  }
  cs.once("close", () => tally.report(cs.rstCode !== undefined && cs.rstCode !== NGHTTP2_NO_ERROR ? `stream reset (code ${cs.rstCode})` : undefined));
  upstream.link().then(
    (link) => {
      if (cs.destroyed || cs.closed) return;
      if (link.kind === "h2") {
        free?.();
        viaH2(ex, link.session, p, tally);
      } else {
        // HTTP/1.1 upstream: the streams that came before it was known wait capped from now on.
        if (free) lineOf(ex.t).trim();
        viaH1(ex, p, tally);
      }
    },
    (e: Error) => badGateway(ex, tally, e),
  );
}

function badGateway(ex: Exchange, tally: Tally, e: Error): void {
  const code = (e as { code?: unknown }).code;
  const why = typeof code === "string" ? code : e.message;
  tally.status = 502;
  problem(ex.cs, 502, "upstream", `Bad gateway: the upstream ${ex.t.host} port ${ex.t.port} failed (${why})`);
  tally.report(why);
}

/** Counts the bytes passing through a stream without changing them. */
function counted(from: Readable, onBytes: (n: number) => void): void {
  from.on("data", (c: Buffer | string) => onBytes(typeof c === "string" ? Buffer.byteLength(c) : c.length));
}

/** The body tripwire of one stream (./body-tripwire.ts). */
interface Trip {
  readonly marks: TripwireMarks<unknown>;
  /** The body's coding, read by ./encoded-tripwire.ts; null for a plain body. */
  readonly coding: DecodableCoding | null;
  /** True once it fired (or refused the body). */
  tripped: boolean;
  /** Fires it (once): ends the upstream request; the client gets 403 once the policy has revoked what tripped it. */
  fire(owners: readonly unknown[]): void;
  /** A compressed body that could not be read to its end: ends the upstream request, answers `e.status`. */
  refuse(e: BodyUnreadable): void;
}

/** The stream's body tripwire, if the policy asked for one and the body can be read (`stop` ends the upstream request). */
function tripFor(ex: Exchange, p: Extract<Prepared, { kind: "forward" }>, tally: Tally, stop: () => void): Trip | undefined {
  const w = p.bodyTripwire;
  if (w === undefined || ex.ended) return undefined;
  const coding = encodedBody(ex.encoding);
  const trip: Trip = {
    marks: w.marks,
    // `send` refused any coding the tripwire cannot read.
    coding: coding === null ? null : decodableCoding(coding),
    tripped: false,
    refuse(e) {
      if (trip.tripped) return;
      trip.tripped = true;
      stop();
      tally.status = e.status;
      problem(ex.cs, e.status, ENCODED_BODY_REASON, e.detail);
      tally.report("unreadable compressed request body");
    },
    fire(owners) {
      if (trip.tripped) return;
      trip.tripped = true;
      stop();
      tally.status = 403;
      w.trip(owners).then(
        (detail) => problem(ex.cs, 403, "tripwire", detail),
        () => void (ex.cs.closed || ex.cs.close(NGHTTP2_INTERNAL_ERROR)),
      );
      tally.report("tripwire");
    },
  };
  return trip;
}

/** Header names and values of `tr`, for the tripwire; and the values joined (a mark split across two). */
function trailerTexts(tr: IncomingHttpHeaders): string[] {
  const values = Object.values(tr).flatMap((v) => (v === undefined ? [] : Array.isArray(v) ? v : [String(v)]));
  return [...Object.keys(tr), ...values, ...(values.length > 1 ? [values.join("")] : [])];
}

/**
 * Streams the client's request body (if any) into `to`, counting it: watched by `trip` if set, then
 * through `rewrite` (placeholder → value) if set.
 */
function sendBody(ex: Exchange, to: NodeJS.WritableStream & { destroy(): void }, tally: Tally, rewrite: ScrubPatterns | undefined, trip?: Trip): void {
  if (ex.ended) return;
  counted(ex.cs, (n) => (tally.bytesOut += n));
  let body: NodeJS.ReadableStream = ex.cs;
  if (trip) {
    const wire =
      trip.coding === null
        ? new BodyTripwire(trip.marks, (hit) => trip.fire(hit.owners))
        : new DecodingTripwire(trip.marks, trip.coding, { onHit: (hit) => trip.fire(hit.owners), onUnreadable: (e) => trip.refuse(e) });
    wire.on("error", () => {});
    body = body.pipe(wire);
  }
  if (rewrite) {
    const swap = bodyRewriter(rewrite);
    swap.on("error", () => to.destroy());
    body = body.pipe(swap);
  }
  body.pipe(to);
}

function viaH2(ex: Exchange, session: ClientHttp2Session, p: Extract<Prepared, { kind: "forward" }>, tally: Tally): void {
  const { t, cs } = ex;
  const headers: OutgoingHttpHeaders = {
    ...endToEnd(p.headers, NOT_END_TO_END_H2),
    ":method": ex.method,
    ":scheme": "https",
    ":authority": authority(t),
    ":path": p.target,
  };
  if (ex.te) headers.te = "trailers";
  // The scrubber reads whole plain answers: ask for an identity body and no range (./response-coding.ts).
  if (p.scrub) askWhole(headers);
  if (p.requestBody && !ex.ended) rewrittenBodyHeaders(headers, p.requestBody, false);
  let us: ReturnType<ClientHttp2Session["request"]>;
  try {
    us = session.request(headers, { endStream: ex.ended, waitForTrailers: !ex.ended });
  } catch (e) {
    badGateway(ex, tally, e as Error);
    return;
  }
  const trip = tripFor(ex, p, tally, () => {
    if (!us.closed) us.close(NGHTTP2_CANCEL);
  });
  us.on("wantTrailers", () => {
    const tr = ex.trailers();
    const found = trip && tr ? [...new Set([...trip.marks.find(trailerTexts(tr)), ...(p.bodyTripwire?.fields?.(tr) ?? [])])] : [];
    if (found.length > 0) return trip!.fire(found);
    us.sendTrailers(tr ? endToEnd(tr, NOT_END_TO_END_H2) : {});
  });
  let upTrailers: IncomingHttpHeaders | undefined;
  us.on("trailers", (tr: IncomingHttpHeaders) => (upTrailers = tr));
  us.on("continue", () => {
    if (!cs.headersSent && !cs.closed) cs.additionalHeaders({ ":status": 100 });
  });
  us.on("error", (e: Error) => {
    if (trip?.tripped) return;
    if (!cs.headersSent) badGateway(ex, tally, e);
    // An upstream reset after the answer began is passed on as a reset, with its code.
    else if (!cs.closed) cs.close(us.rstCode || NGHTTP2_INTERNAL_ERROR);
  });
  // The client gave up: so does the upstream stream.
  cs.once("close", () => {
    if (!us.closed) us.close(NGHTTP2_CANCEL);
  });
  us.once("response", (rh: H2Headers, rflags: number) => {
    if (trip?.tripped) return;
    tally.status = Number(rh[":status"]);
    counted(us, (n) => (tally.bytesIn += n));
    relay(cs, p.scrub, tally, rh, us, (rflags & NGHTTP2_FLAG_END_STREAM) !== 0, () => upTrailers);
  });
  sendBody(ex, us, tally, p.requestBody, trip);
}

function viaH1(ex: Exchange, p: Extract<Prepared, { kind: "forward" }>, tally: Tally): void {
  const { t, cs } = ex;
  const headers: OutgoingHttpHeaders = { ...endToEnd(p.headers, NOT_END_TO_END_H2), host: authority(t) };
  if (p.scrub) askWhole(headers);
  if (p.requestBody && !ex.ended) rewrittenBodyHeaders(headers, p.requestBody, true);
  // The DATA goes framed (the client's content-length, or chunked), whatever the method (./request-body.ts).
  if (!ex.ended) framedBodyHeaders(headers);
  let ur: ClientRequest;
  try {
    ur = h1Request({ agent: t.agent, host: t.target.address, port: t.port, method: ex.method, path: p.target, headers, setHost: false });
    if (!ex.ended) closeAfter(ur);
  } catch (e) {
    badGateway(ex, tally, e as Error);
    return;
  }
  ur.on("continue", () => {
    if (!cs.headersSent && !cs.closed) cs.additionalHeaders({ ":status": 100 });
  });
  const trip = tripFor(ex, p, tally, () => ur.destroy());
  ur.on("error", (e: Error) => {
    if (trip?.tripped) return;
    if (!cs.headersSent) badGateway(ex, tally, e);
    else if (!cs.closed) cs.close(NGHTTP2_INTERNAL_ERROR);
  });
  cs.once("close", () => ur.destroy());
  // A 101 the agent did not ask for: Node's client would take it as an upgrade and answer nothing.
  ur.on("upgrade", (_res: IncomingMessage, socket: import("node:stream").Duplex) => {
    socket.destroy();
    if (!cs.headersSent) badGateway(ex, tally, Object.assign(new Error("the upstream switched protocols unasked"), { code: "EPROTO" }));
  });
  ur.on("response", (res: IncomingMessage) => {
    if (trip?.tripped) return void res.destroy();
    const status = res.statusCode ?? 502;
    tally.status = status;
    counted(res, (n) => (tally.bytesIn += n));
    // No body can follow: HEAD, 204, 304.
    const empty = ex.method === "HEAD" || status === 204 || status === 304;
    relay(cs, p.scrub, tally, res.headers as H2Headers, res, empty, () => res.trailers);
  });
  if (ex.ended) ur.end();
  else sendBody(ex, ur, tally, p.requestBody, trip);
}

/**
 * Sends the upstream's answer on the client stream: headers, then the body as it comes (decompressed
 * and scrubbed when `scrub` is set), then the upstream's trailers.
 */
function relay(
  cs: ServerHttp2Stream,
  scrub: ScrubPatterns | undefined,
  tally: Tally,
  rh: H2Headers,
  body: Readable,
  endNow: boolean,
  trailers: () => IncomingHttpHeaders | undefined,
): void {
  if (cs.destroyed || cs.closed) {
    body.destroy();
    return;
  }
  // Header values and trailers are scrubbed too: an upstream may reflect a request header (the
  // credential the proxy put there) into a response header or a trailer.
  const headers = scrubHeaders(endToEnd(rh, NOT_END_TO_END_H2), scrub);
  const status = tally.status;
  if (endNow) {
    // A headers-only answer (gRPC's "Trailers-Only", 204...) stays one HEADERS frame with END_STREAM.
    body.resume();
    try {
      cs.respond({ ...headers, ":status": status }, { endStream: true });
    } catch {
      tally.status = 502;
      problem(cs, 502, "upstream_headers", "Bad gateway: the upstream's answer has headers that cannot be passed on over HTTP/2");
      tally.report("bad upstream headers");
    }
    return;
  }
  let src: Readable = body;
  let scrubber: Scrubber | undefined;
  if (scrub) {
    const coding = responseCoding(status, rh);
    if ("problem" in coding) {
      body.destroy();
      tally.status = 502;
      problem(cs, 502, "encoding", coding.problem);
      tally.report("unscrubbable encoding");
      return;
    }
    const decode = coding.decode;
    // A decoded body is longer than the encoded one, and a placeholder may be longer than its value;
    // same-length placeholders (the usual case) keep an identity body's Content-Length true.
    if (decode || !scrub.lengthPreserving) delete headers["content-length"];
    delete headers["content-encoding"];
    scrubber = new Scrubber(scrub);
    // (rare: the proxy asked for an identity body) a failure of either ends the other, and the relay below.
    if (decode) src = pipeline(body, decode, () => {});
  }
  try {
    cs.respond({ ...headers, ":status": status }, { waitForTrailers: true });
  } catch {
    // A header HTTP/2 cannot carry (the upstream's, or a stream that closed meanwhile).
    src.destroy();
    body.destroy();
    tally.status = 502;
    problem(cs, 502, "upstream_headers", "Bad gateway: the upstream's answer has headers that cannot be passed on over HTTP/2");
    tally.report("bad upstream headers");
    return;
  }
  cs.once("wantTrailers", () => {
    const tr = trailers();
    try {
      cs.sendTrailers(tr ? scrubHeaders(endToEnd(tr, NOT_END_TO_END_H2), scrub) : {});
    } catch {
      cs.close(NGHTTP2_INTERNAL_ERROR);
    }
  });
  relayBody(src, cs, scrubber ? { scrubber } : {}, (err) => {
    if (err) {
      body.destroy();
      tally.report(err.message);
    }
  });
}
