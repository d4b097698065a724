/**
 * The intercepting half of the forward proxy: the HTTP/1.1 requests inside a TLS tunnel the proxy
 * terminated. Each request gets the credential from the egress decision's `inject`, goes to the real
 * upstream over TLS that verifies the upstream's certificate (never over plain HTTP: no downgrade), and
 * its response streams back (through the scrubber if the decision says so). One upstream keep-alive
 * connection per tunnel, made only after its certificate verified, to the address the SSRF guard checked.
 */
import { Agent, type ClientRequest, type IncomingMessage, type OutgoingHttpHeaders, request, type ServerResponse } from "node:http";
import { pipeline, type Duplex, type Readable } from "node:stream";
import { connect as tlsConnect, rootCertificates, type TLSSocket, createSecureContext, type SecureContext } from "node:tls";
import { safeJson } from "../base/text.js";
import type { Prepared, ProxiedRequest, TunnelHandle } from "./egress.js";
import { connectChecked, type CheckedTarget, type ConnectTo } from "./guard.js";
import { ANSWER_MARK, ANSWER_MARK_HEADER, askPolicy, authority, endToEnd, hostOf, relayableStatus, scrubHeaders, scrubText } from "./headers.js";
import { BodyTripwire, type TripwireHit } from "./body-tripwire.js";
import { decodableCoding, DecodingTripwire } from "./encoded-tripwire.js";
import { bodyRewriter, closeAfter, encodedBody, encodedBodyRefusal, ENCODED_BODY_REASON, framedBodyHeaders, h1HasBody, rewrittenBodyHeaders } from "./request-body.js";
import { Scrubber, type ScrubPatterns } from "./scrub.js";
import { relayBody } from "./relay.js";
import { askWhole, responseCoding } from "./response-coding.js";
import { lineOf, MAX_PIPELINED } from "./tunnel-line.js";


/** Everything the proxy knows about one intercepted tunnel. */
export interface Tunnel {
  /** The CONNECT host, canonical. */
  readonly host: string;
  readonly port: number;
  readonly target: CheckedTarget;
  /** The egress policy's answer for each request (src/proxy/egress.ts). */
  readonly prepare: (req: ProxiedRequest, tunnel: TunnelHandle) => Prepared | Promise<Prepared>;
  /** Ends the tunnel (client connection and upstream). */
  readonly handle: TunnelHandle;
  /** Upstream connections of this tunnel (keep-alive, made lazily). */
  readonly agent: Agent;
}

/** How upstream connections are made (shared by every tunnel of one proxy). */
export interface UpstreamTls {
  /** Opens the TCP connection to the checked address (instrumentable in tests). */
  connect: (to: ConnectTo) => Duplex;
  /**
   * The TLS context every upstream connection verifies with: the system roots plus any extra CA,
   * built once per proxy ({@link upstreamTrust}; building one from ~145 PEM roots costs tens of ms).
   */
  trust: SecureContext;
  /** Idle timeout of an upstream connection, ms. */
  idleTimeoutMs: number;
}

/** The TLS context for upstreams: Node's bundled roots plus the extra PEM certificates given, TLS 1.2 at least. */
export function upstreamTrust(extra: string | readonly string[] | undefined): SecureContext {
  const more = extra === undefined ? [] : typeof extra === "string" ? [extra] : [...extra];
  return createSecureContext({ ca: [...rootCertificates, ...more], minVersion: "TLSv1.2" });
}

/**
 * An http.Agent whose every connection is TLS to the checked address, handed over only once the
 * upstream certificate verified against `servername` (so no request byte is written to an upstream
 * that failed verification). One connection per tunnel: requests that come while it is being made
 * wait for it (node's Agent counts a connection only once it is handed over, so without this each
 * would open its own: a pipelining agent could open a thousand). `destroy()` also ends the connection
 * being made, and a request still waiting for it: once a tunnel is closed (its lease revoked, the
 * proxy closing) nothing it granted before goes out.
 */
export function tunnelAgent(target: CheckedTarget, up: UpstreamTls): Agent {
  const agent = new Agent({ keepAlive: true, maxSockets: 1, timeout: up.idleTimeoutMs });
  type AddRequest = (req: ClientRequest, options: unknown) => void;
  const inner = agent as unknown as { addRequest: AddRequest; createConnection: unknown };
  const addRequest = inner.addRequest.bind(agent);
  /** The connection being made, if any. */
  let making: { tcp?: Duplex; tls?: TLSSocket } | null = null;
  /** Requests that came while it was being made. */
  let waiting: [ClientRequest, unknown][] = [];
  let destroyed = false;
  const closedError = (): Error => Object.assign(new Error("the tunnel was closed"), { code: "ETUNNELCLOSED" });
  inner.addRequest = (req, options) => {
    if (destroyed) return void req.destroy(closedError());
    if (making !== null) return void waiting.push([req, options]);
    addRequest(req, options);
  };
  /** The connection is made (or failed): the waiting requests go to the agent, one connection at a time. */
  const release = (): void => {
    making = null;
    const next = waiting;
    waiting = [];
    for (const [req, options] of next) inner.addRequest(req, options);
  };
  const destroy = agent.destroy.bind(agent);
  agent.destroy = (): void => {
    destroyed = true;
    making?.tls?.destroy();
    making?.tcp?.destroy();
    making = null;
    const dropped = waiting;
    waiting = [];
    for (const [req] of dropped) req.destroy(closedError());
    destroy();
  };
  inner.createConnection = (_opts: unknown, done: (err: Error | null, socket?: Duplex) => void): undefined => {
    const mine: { tcp?: Duplex; tls?: TLSSocket } = {};
    making = mine;
    let settled = false;
    const finish = (err: Error | null, s?: Duplex): void => {
      if (settled) return;
      settled = true;
      // Closed meanwhile: the connection is not handed over, and no request byte goes out on it.
      if (err === null && destroyed) {
        s?.destroy();
        done(closedError());
      } else done(err, s);
      // After the agent holds it (or heard the failure), so that the waiting requests queue on it.
      if (making === mine) release();
    };
    if (destroyed) {
      finish(closedError());
      return undefined;
    }
    let tls: TLSSocket;
    try {
      const tcp = connectChecked(target, up.connect);
      mine.tcp = tcp;
      tcp.once("error", (e) => finish(e));
      tls = tlsConnect({
        socket: tcp,
        ...(target.servername !== undefined ? { servername: target.servername } : { host: target.address }),
        secureContext: up.trust,
        rejectUnauthorized: true,
        ALPNProtocols: ["http/1.1"],
      });
      mine.tls = tls;
    } catch (e) {
      finish(e as Error);
      return undefined;
    }
    tls.once("close", () => finish(closedError()));
    tls.once("secureConnect", () => finish(null, tls));
    tls.once("error", (e) => {
      tls.destroy();
      finish(e);
    });
    return undefined;
  };
  return agent;
}

/** Answers an intercepted request with a problem document (the proxy's own answer, not the upstream's). */
export function problemResponse(res: ServerResponse, status: number, reason: string, detail: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = safeJson({ type: `urn:lessor:proxy:${reason}`, title: detail.split(":")[0], status, detail, reason });
  res.writeHead(status, { "content-type": "application/problem+json", "content-length": Buffer.byteLength(body), [ANSWER_MARK_HEADER]: ANSWER_MARK });
  res.end(body);
}

/** Counts the bytes passing through a stream without changing them. */
function counted(from: NodeJS.ReadableStream, onBytes: (n: number) => void): void {
  from.on("data", (c: Buffer | string) => onBytes(typeof c === "string" ? Buffer.byteLength(c) : c.length));
}

/**
 * Forwards one request from an intercepted tunnel to its upstream and streams the answer back. The
 * request must be in origin form and name the tunnel's host (else 400 / 421): an intercepted tunnel
 * carries requests for its CONNECT host only. The egress policy's `prepare` decides, per request,
 * what is sent (the credential added) or refuses it; `done` hears how the exchange ended.
 */
export function forwardIntercepted(t: Tunnel, req: IncomingMessage, res: ServerResponse): void {
  const began = performance.now();
  const url = req.url ?? "";
  if (!url.startsWith("/")) {
    problemResponse(res, 400, "request_target", "Bad request target: inside a tunnel the proxy takes origin-form targets (/path) only");
    return;
  }
  const host = req.headers.host;
  if (host !== undefined && hostOf(host) !== t.host) {
    problemResponse(res, 421, "misdirected", `Misdirected request: this tunnel is for ${t.host}, not for the Host header's host`);
    return;
  }
  if (req.headers.upgrade !== undefined) {
    // A real upgrade (Connection: upgrade) goes to the inner server's 'upgrade' event (./websocket.ts).
    problemResponse(res, 501, "upgrade", "Not implemented: an Upgrade header without Connection: upgrade (a WebSocket handshake needs both)");
    return;
  }
  // The request body waits (paused) while the policy decides, and while the requests before it are answered.
  req.pause();
  lineOf(t).join({
    serve: (free) => {
      // 'close' comes once the answer is written, or its connection ended first.
      res.once("close", free);
      ask(t, req, res, url, began);
    },
    gone: () => res.destroyed,
    drop: () => res.destroy(),
    tooMany: () => {
      res.shouldKeepAlive = false;
      problemResponse(res, 503, "pipelined", `Service unavailable: more than ${MAX_PIPELINED} requests wait in this tunnel; send fewer at once (this connection closes)`);
    },
  });
}

function ask(t: Tunnel, req: IncomingMessage, res: ServerResponse, url: string, began: number): void {
  const asked: ProxiedRequest = {
    method: (req.method ?? "GET").toUpperCase(),
    host: t.host,
    port: t.port,
    target: url,
    headers: endToEnd(req.headers),
    protocol: "h1",
    hasBody: h1HasBody(req.headers),
  };
  askPolicy(t.prepare, asked, t.handle).then(
    (p) => send(t, req, res, p, began),
    () => {
      // A policy failure must not take the proxy down, and the request must not go out without it.
      problemResponse(res, 500, "inject", "Proxy error: the credential could not be added; the request was not sent");
    },
  ).catch(() => {
    // Nor a throw while sending (Node's client refusing a header): a rejection nobody handles ends the process.
    problemResponse(res, 502, "upstream", "Bad gateway: the request could not be sent upstream");
  });
}

function send(t: Tunnel, req: IncomingMessage, res: ServerResponse, p: Prepared, began: number): void {
  let bytesOut = 0;
  let bytesIn = 0;
  let reported = false;
  const report = (status: number, error?: string): void => {
    if (reported) return;
    reported = true;
    p.done?.({ status, bytesOut, bytesIn, ms: performance.now() - began, ...(error !== undefined ? { error } : {}) });
  };
  if (p.kind === "refuse") {
    req.resume();
    problemResponse(res, p.status, p.reason, p.detail);
    report(p.status);
    return;
  }
  if (t.handle.closed) {
    res.destroy();
    report(0, "tunnel closed");
    return;
  }
  const headers: OutgoingHttpHeaders = { ...p.headers, host: authority(t) };
  // The scrubber reads whole plain answers: ask for an identity body and no range (./response-coding.ts).
  if (p.scrub) askWhole(headers);
  // A body rule: the body streams through the reverse patterns (./request-body.ts).
  const rewrite = p.requestBody !== undefined && h1HasBody(req.headers) ? p.requestBody : undefined;
  // The body tripwire (./body-tripwire.ts, ./encoded-tripwire.ts for a compressed body).
  const watch = p.bodyTripwire !== undefined && h1HasBody(req.headers) ? p.bodyTripwire : undefined;
  // A compressed body that must be rewritten, or that the tripwire cannot read, is refused before
  // anything goes upstream (a policy that knows this refuses it first, before any use: ./lease-egress.ts).
  const encoded = encodedBodyRefusal(req.headers["content-encoding"], rewrite !== undefined, watch !== undefined);
  if (encoded !== null) {
    req.resume();
    problemResponse(res, 415, ENCODED_BODY_REASON, encoded);
    report(415, "compressed request body");
    return;
  }
  if (rewrite) rewrittenBodyHeaders(headers, rewrite, true);
  // Any body goes framed (Content-Length or chunked), whatever the method: else it is the next request.
  if (h1HasBody(req.headers)) framedBodyHeaders(headers);
  const watchedCoding = watch ? encodedBody(req.headers["content-encoding"]) : null;

  const up: ClientRequest = request({
    agent: t.agent,
    host: t.target.address,
    port: t.port,
    method: req.method,
    path: p.target,
    headers,
    setHost: false,
  });
  if (h1HasBody(req.headers)) closeAfter(up);
  // The agent went away (or the tunnel closed) before its answer was written: the upstream request ends too.
  res.once("close", () => {
    if (!res.writableFinished) up.destroy();
  });
  // At a mark the upstream request ends, and once the policy has revoked what tripped it, the agent
  // gets 403 (or, if the answer had begun, a closed connection). A compressed body that cannot be read
  // to its end stops it the same way, with no revocation.
  let stopped = false;
  up.on("response", (ur) => {
    if (stopped) return void ur.destroy();
    relayResponse(p.scrub, ur, res, (err) => report(ur.statusCode ?? 0, err), (n) => (bytesIn += n));
  });
  // A 101 the agent did not ask for (this is not an upgrade): Node's client would take it as one and
  // answer nothing; the agent gets 502.
  up.on("upgrade", (ur, socket) => {
    socket.destroy();
    if (stopped) return;
    problemResponse(res, 502, "upstream", `Bad gateway: the upstream ${t.host} port ${t.port} answered ${ur.statusCode} to a request that did not ask to switch protocols`);
    report(502, "unasked upgrade");
  });
  up.on("error", (e) => {
    if (stopped) return;
    const code = (e as { code?: unknown }).code;
    const why = typeof code === "string" ? code : e.message;
    problemResponse(res, 502, "upstream", `Bad gateway: the upstream ${t.host} port ${t.port} failed (${why})`);
    report(502, why);
  });
  req.on("error", () => up.destroy());
  counted(req, (n) => (bytesOut += n));
  let body: NodeJS.ReadableStream = req;
  if (watch) {
    const stop = (): void => {
      stopped = true;
      up.destroy();
      // The rest of the body is never read: the connection closes after the answer.
      res.shouldKeepAlive = false;
    };
    const onHit = (hit: TripwireHit<unknown>): void => {
      stop();
      watch.trip(hit.owners).then(
        (detail) => problemResponse(res, 403, "tripwire", detail),
        () => res.destroy(),
      );
      report(403, "tripwire");
    };
    const coding = watchedCoding === null ? null : decodableCoding(watchedCoding);
    const wire =
      coding === null
        ? new BodyTripwire(watch.marks, onHit)
        : new DecodingTripwire(watch.marks, coding, {
            onHit,
            onUnreadable: (e) => {
              stop();
              problemResponse(res, e.status, ENCODED_BODY_REASON, e.detail);
              report(e.status, "unreadable compressed request body");
            },
          });
    wire.on("error", () => {});
    body = body.pipe(wire);
  }
  if (rewrite) {
    const swap = bodyRewriter(rewrite);
    swap.on("error", () => up.destroy());
    body = body.pipe(swap);
  }
  body.pipe(up);
  req.resume();
}

/**
 * Streams an upstream response to the client (through the scrubber if `scrub` is set); `done` once, at
 * the end. `onBytes` hears the size of each chunk of the upstream's body as it arrived (before decoding).
 */
export function relayResponse(scrub: ScrubPatterns | undefined, ur: IncomingMessage, res: ServerResponse, done: (error?: string) => void, onBytes?: (n: number) => void): void {
  // Header values and the reason phrase are scrubbed too: an upstream may reflect a request header
  // (the credential the proxy put there) into a response header.
  const headers: OutgoingHttpHeaders = scrubHeaders(endToEnd(ur.headers), scrub);
  let from: Readable = ur;
  if (scrub) {
    const coding = responseCoding(ur.statusCode ?? 0, ur.headers);
    if ("problem" in coding) {
      ur.destroy();
      problemResponse(res, 502, "encoding", coding.problem);
      done("unscrubbable encoding");
      return;
    }
    const decode = coding.decode;
    // A decoded body is longer than the encoded one, and a placeholder may be longer than its value:
    // then the length is unknown and the answer goes chunked. Placeholders of the same length as their
    // values (the usual case) keep an identity body's Content-Length true, so it stays.
    if (decode || !scrub.lengthPreserving) delete headers["content-length"];
    delete headers["content-encoding"];
    if (decode) {
      // (rare: the proxy asked for an identity body) a failure of either ends the other, and the relay below.
      if (onBytes) counted(ur, onBytes);
      from = pipeline(ur, decode, () => {});
    }
  }
  const head = relayableStatus(ur.statusCode, scrubText(ur.statusMessage ?? "", scrub));
  if (head.status === null) {
    ur.destroy();
    from.destroy();
    problemResponse(res, 502, "upstream", `Bad gateway: the upstream answered with status ${String(ur.statusCode).slice(0, 8)}, which is not a status of a final answer`);
    done("invalid upstream status");
    return;
  }
  try {
    res.writeHead(head.status, head.reason, headers);
  } catch {
    // A header Node's client read but its server will not write: nothing of the answer has gone yet.
    ur.destroy();
    from.destroy();
    problemResponse(res, 502, "upstream", "Bad gateway: the upstream's answer has a header that cannot be passed on");
    done("unrelayable upstream header");
    return;
  }
  relayBody(from, res, { ...(scrub ? { scrubber: new Scrubber(scrub) } : {}), ...(onBytes && from === ur ? { onBytes } : {}) }, (err) => {
    if (err) {
      ur.destroy();
      done(err.message);
    } else done();
  });
}
