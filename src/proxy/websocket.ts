/**
 * WebSocket upgrades inside an intercepted tunnel (HTTP/1.1 `Upgrade: websocket`, RFC 6455).
 *
 * The handshake is one request like any other: the egress policy's `prepare` decides what it carries
 * (the credential added) or refuses it, and it counts as one request. It goes upstream over the
 * tunnel's verified TLS (the tunnel's agent: never plain text). If the upstream answers 101 the client
 * gets 101 with the upstream's headers and the two connections are joined, bytes passing untouched both
 * ways until either side closes; any other answer is relayed as a normal response (scrubbed if the
 * policy asks) and the client connection is closed, since the server handed it over for the upgrade.
 *
 * Only `websocket` is upgraded: `h2c` and anything else get 501. Closing the tunnel (a lease revoked)
 * ends the joined pair at once.
 *
 * When the policy's answer has `frames` (a rule with `websocket = true`) or `scrub`, the bytes do not
 * pass untouched: both directions are parsed as frames (./ws-frames.ts), the client's payloads have
 * placeholders replaced by values (`frames`) and the server's have values replaced by placeholders
 * (`scrub`). Then no extension is offered upstream (the client's Sec-WebSocket-Extensions is dropped:
 * a permessage-deflate frame could not be rewritten), an upstream that turns one on anyway gets 502,
 * and a frame the rewriter refuses closes both sides with a close frame (1009 too big, 1002 protocol).
 * A frame that trips the body tripwire closes them with 1008: the upstream at once, the client once the
 * policy's revocation has landed, as a request body's 403 waits for it (./intercept.ts).
 */
import { type IncomingMessage, type OutgoingHttpHeaders, request, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { Prepared, ProxiedRequest } from "./egress.js";
import { tooManyHeaders, tooManyHeadersDetail } from "./header-cap.js";
import { askPolicy, authority, endToEnd, hostOf, scrubName } from "./headers.js";
import { problemResponse, relayResponse, type Tunnel } from "./intercept.js";
import { askWhole } from "./response-coding.js";
import { scrub, type ScrubPatterns } from "./scrub.js";
import type { TripwireMarks } from "./body-tripwire.js";
import { closeFrame, FrameError, FrameRewriter, type FrameRewriterOptions } from "./ws-frames.js";

/** Settings of {@link forwardUpgrade} (the proxy's own). */
export interface UpgradeOptions {
  /** Idle timeout of the joined connections, ms. */
  idleTimeoutMs: number;
  /** Cap on the handshake's header lines (431 above it). */
  maxHeaders: number;
  /** Cap on one frame's payload when frames are rewritten, bytes (default 16 MiB; 1009 above it). */
  maxFrameBytes?: number;
}

/**
 * A response written straight on a connection the HTTP server handed over (its 'upgrade' event), for
 * the proxy's own answers and a relayed non-101 answer. It says `Connection: close` and ends the
 * connection when done: the server no longer reads requests from it.
 */
function detachedResponse(req: IncomingMessage, socket: Duplex): ServerResponse {
  const res = new ServerResponse(req);
  res.shouldKeepAlive = false;
  try {
    res.assignSocket(socket as Socket);
  } catch {
    // Another response still owns the connection (a pipelined request): nothing sane can be written.
    socket.destroy();
    return res;
  }
  res.once("finish", () => {
    res.detachSocket(socket as Socket);
    socket.end();
  });
  res.once("close", () => socket.destroy());
  return res;
}

/** True if `value` (an Upgrade header) names exactly the WebSocket protocol. */
function isWebSocket(value: string | undefined): boolean {
  return value !== undefined && value.trim().toLowerCase() === "websocket";
}

/**
 * Handles one upgrade request inside an intercepted tunnel (the inner server's 'upgrade' event):
 * checks it, asks the policy, and joins the client to the upstream if the upstream switches protocols.
 */
export function forwardUpgrade(t: Tunnel, req: IncomingMessage, client: Duplex, head: Buffer, opts: UpgradeOptions): void {
  const began = performance.now();
  const answer = (status: number, reason: string, detail: string): void => problemResponse(detachedResponse(req, client), status, reason, detail);
  if (tooManyHeaders(req, opts.maxHeaders)) {
    answer(431, "header_count", tooManyHeadersDetail(opts.maxHeaders));
    return;
  }
  if (!isWebSocket(req.headers.upgrade)) {
    answer(501, "upgrade", "Not implemented: the proxy upgrades to WebSocket only (Upgrade: websocket)");
    return;
  }
  const url = req.url ?? "";
  if (!url.startsWith("/")) {
    answer(400, "request_target", "Bad request target: inside a tunnel the proxy takes origin-form targets (/path) only");
    return;
  }
  if (req.method !== "GET" || req.httpVersion !== "1.1") {
    answer(400, "websocket_handshake", "Bad WebSocket handshake: it must be a GET in HTTP/1.1 (RFC 6455 section 4.1)");
    return;
  }
  // A handshake has no body. One declared here would be read upstream as frames after the 101.
  const length = req.headers["content-length"];
  if (req.headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0")) {
    answer(400, "websocket_handshake", "Bad WebSocket handshake: a handshake request has no body");
    return;
  }
  const host = req.headers.host;
  if (host !== undefined && hostOf(host) !== t.host) {
    answer(421, "misdirected", `Misdirected request: this tunnel is for ${t.host}, not for the Host header's host`);
    return;
  }
  const asked: ProxiedRequest = { method: "GET", host: t.host, port: t.port, target: url, headers: endToEnd(req.headers), protocol: "h1", upgrade: "websocket", hasBody: false };
  askPolicy(t.prepare, asked, t.handle).then(
    (p) => handshake(t, req, client, head, p, began, opts),
    () => answer(500, "inject", "Proxy error: the credential could not be added; the request was not sent"),
  ).catch(() => client.destroy()); // a throw while sending must not end the process
}

function handshake(t: Tunnel, req: IncomingMessage, client: Duplex, head: Buffer, p: Prepared, began: number, opts: UpgradeOptions): void {
  let reported = false;
  const report = (status: number, bytesOut: number, bytesIn: number, error?: string): void => {
    if (reported) return;
    reported = true;
    p.done?.({ status, bytesOut, bytesIn, ms: performance.now() - began, ...(error !== undefined ? { error } : {}) });
  };
  if (p.kind === "refuse") {
    problemResponse(detachedResponse(req, client), p.status, p.reason, p.detail);
    report(p.status, 0, 0);
    return;
  }
  if (t.handle.closed || client.destroyed) {
    client.destroy();
    report(0, 0, 0, "tunnel closed");
    return;
  }
  const headers: OutgoingHttpHeaders = { ...p.headers, host: authority(t), connection: "Upgrade", upgrade: "websocket" };
  // The scrubber reads plain bytes (a non-101 answer is relayed through it).
  if (p.scrub) askWhole(headers);
  // Frames to rewrite: no extension (a compressed frame cannot be rewritten).
  // The body tripwire watches the client's frames (./ws-frames.ts): at a mark the connection closes
  // with 1008, and the policy revokes what tripped it; the client hears of it once that has landed.
  const wire = p.bodyTripwire;
  const tripwire = wire ? { marks: wire.marks, onHit: (owners: readonly unknown[]) => wire.trip(owners) } : undefined;
  const rewrite: Rewrite | undefined =
    p.frames || p.scrub || tripwire ? { fromClient: p.frames, fromServer: p.scrub, maxFrameBytes: opts.maxFrameBytes, ...(tripwire ? { tripwire } : {}) } : undefined;
  if (rewrite) delete headers["sec-websocket-extensions"];
  const up = request({ agent: t.agent, host: t.target.address, port: t.port, method: "GET", path: p.target, headers, setHost: false });
  // The tunnel closed (or the client left) before the upstream answered: drop the handshake.
  const onClientClose = (): void => {
    up.destroy();
    report(0, 0, 0, "client closed");
  };
  client.once("close", onClientClose);

  up.on("upgrade", (ur: IncomingMessage, upSocket: Duplex, upHead: Buffer) => {
    client.off("close", onClientClose);
    if (ur.statusCode !== 101 || !isWebSocket(ur.headers.upgrade)) {
      upSocket.destroy();
      problemResponse(detachedResponse(req, client), 502, "upstream", `Bad gateway: the upstream ${t.host} switched to a protocol other than WebSocket`);
      report(502, 0, 0, "upgrade to another protocol");
      return;
    }
    if (rewrite && ur.headers["sec-websocket-extensions"] !== undefined) {
      upSocket.destroy();
      problemResponse(detachedResponse(req, client), 502, "upstream", `Bad gateway: the upstream ${t.host} turned on a WebSocket extension the proxy did not offer`);
      report(502, 0, 0, "unrequested websocket extension");
      return;
    }
    if (t.handle.closed || client.destroyed) {
      upSocket.destroy();
      client.destroy();
      report(0, 0, 0, "tunnel closed");
      return;
    }
    // The upstream's own 101 head, header lines as it sent them (llhttp already refused CR/LF in them).
    // A value that echoes the credential (a token sent as a subprotocol), or a name made of it, is
    // scrubbed like a body.
    const clean = (t: string): string => (p.scrub ? scrub(Buffer.from(t, "latin1"), p.scrub).toString("latin1") : t);
    let text = "HTTP/1.1 101 Switching Protocols\r\n";
    for (let i = 0; i + 1 < ur.rawHeaders.length; i += 2) text += `${scrubName(ur.rawHeaders[i]!, p.scrub)}: ${clean(ur.rawHeaders[i + 1]!)}\r\n`;
    client.write(text + "\r\n", "latin1");
    join(client, upSocket, head, upHead, opts.idleTimeoutMs, rewrite, (bytesOut, bytesIn, error) => report(101, bytesOut, bytesIn, error));
  });

  up.on("response", (ur) => {
    client.off("close", onClientClose);
    let bytesIn = 0;
    ur.on("data", (c: Buffer) => (bytesIn += c.length));
    relayResponse(p.scrub, ur, detachedResponse(req, client), (err) => report(ur.statusCode ?? 0, 0, bytesIn, err));
  });

  up.on("error", (e) => {
    client.off("close", onClientClose);
    const code = (e as { code?: unknown }).code;
    const why = typeof code === "string" ? code : e.message;
    if (client.destroyed) {
      report(0, 0, 0, why);
      return;
    }
    problemResponse(detachedResponse(req, client), 502, "upstream", `Bad gateway: the upstream ${t.host} port ${t.port} failed (${why})`);
    report(502, 0, 0, why);
  });
  up.end();
}

/** How the frames of a joined pair are rewritten: patterns per direction (./ws-frames.ts). */
interface Rewrite {
  /** placeholder → value, on the client's frames. */
  fromClient: ScrubPatterns | undefined;
  /** value → placeholder, on the server's frames. */
  fromServer: ScrubPatterns | undefined;
  maxFrameBytes: number | undefined;
  /**
   * Marks watched in the client's frames (./body-tripwire.ts); `onHit` settles once the policy's
   * revocation has landed.
   */
  tripwire?: { marks: TripwireMarks<unknown>; onHit(owners: readonly unknown[]): Promise<unknown> };
}

/**
 * Joins the client and upstream connections after a 101: bytes both ways until either side closes or
 * errs, or both are idle for `idleMs`; then both close and `done` hears the byte counts (as received).
 * Without `rewrite` the bytes pass untouched; with it, each direction goes through a FrameRewriter,
 * and a frame it refuses ends both sides with a close frame carrying its code.
 */
function join(
  client: Duplex,
  upstream: Duplex,
  clientHead: Buffer,
  upstreamHead: Buffer,
  idleMs: number,
  rewrite: Rewrite | undefined,
  done: (bytesOut: number, bytesIn: number, error?: string) => void,
): void {
  let bytesOut = clientHead.length;
  let bytesIn = upstreamHead.length;
  let error: string | undefined;
  let open = 2;
  // Set when the tripwire fired: settles once the policy's revocation has landed. Until then the
  // client hears nothing (no close frame, no end), as a request body's 403 waits for it
  // (./intercept.ts): the agent cannot learn of the trip, nor act on it, before the lease is revoked.
  // The upstream is cut at once.
  let held: Promise<void> | null = null;
  let failed = false;
  const closeBoth = (): void => {
    upstream.destroy();
    // Once the tripwire fired, the frame error it throws ends the client (onFrameError), when it may.
    if (held === null) client.destroy();
  };
  const onClose = (): void => {
    closeBoth();
    if (--open === 0) done(bytesOut, bytesIn, error);
  };
  const onError = (e: Error): void => {
    const code = (e as { code?: unknown }).code;
    error ??= typeof code === "string" ? code : e.message;
    closeBoth();
  };
  client.once("close", onClose);
  upstream.once("close", onClose);
  client.on("error", onError);
  upstream.on("error", onError);
  const up = upstream as Partial<Socket>;
  if (typeof up.setTimeout === "function") {
    up.setTimeout(idleMs);
    upstream.on("timeout", closeBoth);
  }
  client.on("data", (c: Buffer) => (bytesOut += c.length));
  upstream.on("data", (c: Buffer) => (bytesIn += c.length));
  if (!rewrite) {
    if (upstreamHead.length > 0) client.write(upstreamHead);
    if (clientHead.length > 0) upstream.write(clientHead);
    client.pipe(upstream);
    upstream.pipe(client);
    return;
  }
  const wire = rewrite.tripwire;
  const tripwire: FrameRewriterOptions["tripwire"] = wire && {
    marks: wire.marks,
    onHit: (owners) => {
      held ??= wire.onHit(owners).then(
        () => {},
        () => {},
      );
    },
  };
  const fromClient = new FrameRewriter({
    from: "client",
    patterns: rewrite.fromClient,
    ...(rewrite.maxFrameBytes !== undefined ? { maxFrameBytes: rewrite.maxFrameBytes } : {}),
    ...(tripwire ? { tripwire } : {}),
  });
  const fromServer = new FrameRewriter({ from: "server", patterns: rewrite.fromServer, ...(rewrite.maxFrameBytes !== undefined ? { maxFrameBytes: rewrite.maxFrameBytes } : {}) });
  const onFrameError = (e: Error): void => {
    if (failed) return;
    failed = true;
    error ??= `websocket frame: ${e.message}`;
    // Both outputs hold whole frames only, so a close frame can follow on each side: the proxy speaks
    // as the server to the client (unmasked) and as the client to the upstream (masked).
    const code = e instanceof FrameError ? e.code : 1011;
    client.unpipe(fromClient);
    upstream.unpipe(fromServer);
    fromClient.unpipe(upstream);
    fromServer.unpipe(client);
    if (!upstream.destroyed) upstream.end(closeFrame(code, true));
    const toClient = (): void => void (client.destroyed || client.end(closeFrame(code, false), () => client.destroy()));
    if (held === null) toClient();
    else void held.then(toClient);
  };
  fromClient.on("error", onFrameError);
  fromServer.on("error", onFrameError);
  client.pipe(fromClient).pipe(upstream);
  upstream.pipe(fromServer).pipe(client);
  if (clientHead.length > 0) fromClient.write(clientHead);
  if (upstreamHead.length > 0) fromServer.write(upstreamHead);
}
