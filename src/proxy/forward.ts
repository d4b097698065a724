/**
 * The injecting forward proxy (first cut): an HTTP/1.1 proxy server that handles CONNECT host:port.
 * For each CONNECT it asks the {@link Egress} policy, then refuses (403 + problem document), tunnels the
 * bytes untouched, or intercepts: terminates the client's TLS with the session's {@link LocalCa}, adds
 * the credential to each request inside and forwards it over verified TLS (./intercept.ts). Every
 * upstream connection goes through the SSRF guard first and connects to the checked address only.
 *
 * The egress policy decides per CONNECT and, inside an intercepted tunnel, per request (the credential,
 * use counts, audit: src/proxy/lease-egress.ts); it can close a tunnel at any time (a lease revoked).
 *
 * WebSocket upgrades inside a tunnel: ./websocket.ts. Plain-HTTP (absolute-form) requests: ./plain-http.ts.
 * HTTP/2: the client side offers ALPN h2 and http/1.1; a tunnel whose client picks h2 is served by
 * ./h2.ts (which picks h2 or HTTP/1.1 upstream by ALPN), one that picks http/1.1 by the inner server.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createConnection, type AddressInfo, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import { TLSSocket, type SecureContext } from "node:tls";
import { isVaultError, VaultError } from "../base/errors.js";
import { refusalForAgent } from "../vault/policy.js";
import { safeJson } from "../base/text.js";
import type { Egress, EgressDecision } from "./egress.js";
import { connectChecked, parseHostLiteral, type CheckedTarget, type ConnectTo, type SsrfGuard } from "./guard.js";
import { forwardIntercepted, problemResponse, tunnelAgent, upstreamTrust, type Tunnel, type UpstreamTls } from "./intercept.js";
import type { LocalCa } from "./ca.js";
import { serveH2, type H2Tunnel } from "./h2.js";
import { ProxyRefusal } from "./refusal.js";
import { applyHeaderCount, DEFAULT_MAX_HEADERS, tooManyHeaders, tooManyHeadersDetail } from "./header-cap.js";
import { forwardPlain } from "./plain-http.js";
import { forwardUpgrade } from "./websocket.js";

/** Default cap on a request head, bytes (node's own default is 16 KiB). */
export const DEFAULT_MAX_HEADER_SIZE = 16 * 1024;
/** Default time a client has to send a complete request head, ms. */
export const DEFAULT_HEADERS_TIMEOUT_MS = 10_000;
/** Default time a connection (client or upstream) may sit without traffic, ms. */
export const DEFAULT_IDLE_TIMEOUT_MS = 60_000;

/** Default cap on client connections that have not sent a request yet. */
export const DEFAULT_MAX_PENDING_CONNECTIONS = 256;

/** Settings of {@link ForwardProxy}. */
export interface ForwardProxyOptions {
  /** The policy asked for each CONNECT. */
  egress: Egress;
  /** The session CA that certifies intercepted hosts to the client. */
  ca: LocalCa;
  /** The SSRF guard every upstream connection goes through. */
  guard: SsrfGuard;
  /** Extra CA certificates (PEM) trusted for upstreams, besides the system roots (private upstreams, tests). */
  upstreamCa?: string | readonly string[];
  /** Cap on a request head (CONNECT and intercepted requests), bytes. */
  maxHeaderSize?: number;
  /** Cap on the number of header lines of a request (CONNECT, plain HTTP, inside a tunnel); 431 above it. Default 100. */
  maxHeaders?: number;
  /** Time to receive a complete request head, ms. */
  headersTimeoutMs?: number;
  /** Idle timeout of client connections, tunnels and upstream connections, ms. */
  idleTimeoutMs?: number;
  /**
   * Client connections that have not sent a request yet (no CONNECT, no plain request), at most this
   * many (default {@link DEFAULT_MAX_PENDING_CONNECTIONS}); past it the oldest is closed. On a TCP port
   * every local user can connect, token or not: without this, connections that never send anything
   * (each held up to headersTimeoutMs) would use up the proxy's open files, and the agent's own
   * connections would be closed unanswered. A real client sends its request at once.
   */
  maxPendingConnections?: number;
  /**
   * Opens the TCP connection to a checked address (default `net.createConnection`). Tests instrument
   * it to prove a refused target never reaches it.
   */
  connect?: (to: ConnectTo) => Duplex;
  /**
   * Who may use the proxy, asked first for each CONNECT and each plain-HTTP request (requests inside
   * an intercepted tunnel belong to its CONNECT); false answers 407 with `Proxy-Authenticate: Basic
   * realm="lessor"` and nothing is forwarded. Default: whoever can connect (a private Unix socket).
   * `lessor proxy` on a TCP port passes ./proxy-auth.ts's basicProxyAuth.
   */
  authorize?: (req: IncomingMessage) => boolean;
}

const STATUS_TEXT: Record<number, string> = { 400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 407: "Proxy Authentication Required", 431: "Request Header Fields Too Large", 500: "Internal Server Error", 502: "Bad Gateway" };

/**
 * How long a refused CONNECT's socket stays open after its answer, for the client to read it and close.
 * Then it is destroyed: a client that keeps its half open must not hold one of the proxy's descriptors
 * (ending our half alone would leave it open for as long as the client likes).
 */
const REFUSED_LINGER_MS = 1000;

/** Writes a complete HTTP/1.1 answer with a problem document on a raw CONNECT socket and closes it. */
function answerRaw(socket: Duplex, status: number, problem: object, extraHeaders = ""): void {
  const body = safeJson(problem);
  const linger = setTimeout(() => socket.destroy(), REFUSED_LINGER_MS);
  linger.unref();
  socket.once("close", () => clearTimeout(linger));
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? "Error"}\r\n` +
      extraHeaders +
      "Content-Type: application/problem+json\r\n" +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      "Connection: close\r\n\r\n" +
      body,
  );
}

/** The 407 problem document, and the challenge that makes clients send their credentials. */
const AUTH_PROBLEM = { type: "urn:lessor:proxy:proxy_auth", title: "Proxy authentication required", status: 407, detail: "this proxy takes requests only with its session's credentials (HTTPS_PROXY=http://lessor:TOKEN@host:port, as lessor proxy printed it)", reason: "proxy_auth" };
const AUTH_CHALLENGE = 'Basic realm="lessor"';

function answerRefusal(socket: Duplex, r: ProxyRefusal): void {
  answerRaw(socket, r.status, r.problem());
}

/** Splits a CONNECT target `host:port` (IPv6 in brackets). */
function parseAuthority(target: string): { host: string; port: number } | undefined {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+):([0-9]{1,5})$/.exec(target);
  if (!m) return undefined;
  const port = Number(m[2]);
  return port >= 1 && port <= 65535 ? { host: m[1]!, port } : undefined;
}

/** The injecting forward proxy. `listen`, give the child `HTTPS_PROXY=http://127.0.0.1:<port>`, `close`. */
export class ForwardProxy {
  readonly server: Server;
  readonly #opts: ForwardProxyOptions;
  readonly #up: UpstreamTls;
  /** Terminated TLS sockets are handed to this server; it never listens itself. */
  readonly #inner: Server;
  readonly #tunnels = new WeakMap<object, Tunnel>();
  readonly #sockets = new Set<Duplex>();
  /** Client connections with no request yet, oldest first. */
  readonly #pending = new Set<Duplex>();
  readonly #maxPending: number;
  readonly #idleMs: number;
  readonly #maxHeaders: number;
  #closed = false;
  #checking = false;

  constructor(opts: ForwardProxyOptions) {
    this.#opts = opts;
    this.#idleMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    this.#maxHeaders = opts.maxHeaders ?? DEFAULT_MAX_HEADERS;
    this.#maxPending = opts.maxPendingConnections ?? DEFAULT_MAX_PENDING_CONNECTIONS;
    const serverOpts = {
      maxHeaderSize: opts.maxHeaderSize ?? DEFAULT_MAX_HEADER_SIZE,
      headersTimeout: opts.headersTimeoutMs ?? DEFAULT_HEADERS_TIMEOUT_MS,
      keepAliveTimeout: this.#idleMs,
      // The header timeout is enforced by node's periodic check: make it fine enough for short timeouts.
      connectionsCheckingInterval: Math.min(1000, opts.headersTimeoutMs ?? DEFAULT_HEADERS_TIMEOUT_MS),
      requestTimeout: 0,
    };
    // Built on the first upstream connection, not here: ~145 PEM roots cost 30 ms or more, which
    // every lessor run would otherwise pay at start-up.
    let trust: SecureContext | undefined;
    this.#up = {
      connect: opts.connect ?? ((to) => createConnection({ host: to.host, port: to.port, family: to.family })),
      get trust(): SecureContext {
        return (trust ??= upstreamTrust(opts.upstreamCa));
      },
      idleTimeoutMs: this.#idleMs,
    };
    this.server = createServer(serverOpts, (req, res) => this.#plainRequest(req, res));
    this.server.on("connect", (req: IncomingMessage, socket: Duplex, head: Buffer) => void this.#connect(req, socket, head));
    this.server.on("connection", (s: Socket) => {
      this.#track(s);
      this.#admitPending(s);
    });
    // Its first request (of any kind) takes a connection out of the pending ones: an unauthorized one
    // is then answered 407 and closed, an authorized one is the agent's.
    const served = (req: IncomingMessage): void => void this.#pending.delete(req.socket);
    this.server.prependListener("request", served);
    this.server.prependListener("connect", served);
    this.#inner = createServer(serverOpts, (req, res) => {
      const t = this.#tunnels.get(req.socket);
      if (!t) {
        res.destroy();
        return;
      }
      if (tooManyHeaders(req, this.#maxHeaders)) {
        problemResponse(res, 431, "header_count", tooManyHeadersDetail(this.#maxHeaders));
        return;
      }
      forwardIntercepted(t, req, res);
    });
    // Upgrade requests (Connection: upgrade) come here instead; only WebSocket is taken (./websocket.ts).
    this.#inner.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      const t = this.#tunnels.get(req.socket);
      if (!t) {
        socket.destroy();
        return;
      }
      forwardUpgrade(t, req, socket, head, { idleTimeoutMs: this.#idleMs, maxHeaders: this.#maxHeaders });
    });
    applyHeaderCount(this.server, this.#maxHeaders);
    applyHeaderCount(this.#inner, this.#maxHeaders);
    this.#inner.timeout = this.#idleMs;
    // node starts tracking connections (the header timeout check) when a server starts listening; this
    // one never listens, as its sockets come from CONNECT tunnels, so start it by hand.
    this.#inner.emit("listening");
  }

  /** Listens on `host:port` (default 127.0.0.1 and a free port); resolves to the port. */
  async listen(port = 0, host = "127.0.0.1"): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      // A port taken (or not ours to take) is the caller's setting, said as such, not an internal error.
      const fail = (e: NodeJS.ErrnoException): void =>
        reject(e.code === undefined ? e : new VaultError("config_invalid", `the proxy cannot listen on ${host.includes(":") ? `[${host}]` : host}:${port} (${e.code}); pick a free port (0 picks one) or stop the program that holds it`));
      this.server.once("error", fail);
      this.server.listen(port, host, () => {
        this.server.off("error", fail);
        resolve();
      });
    });
    return (this.server.address() as AddressInfo).port;
  }

  /**
   * Listens on a Unix socket at `path` (lessor run: the socket a bridge inside the sandbox forwards to).
   * The directory must be private to the owner (the caller makes it); the socket is made 0600.
   */
  async listenUnix(path: string): Promise<void> {
    const old = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        this.server.once("error", reject);
        this.server.listen(path, () => {
          this.server.off("error", reject);
          resolve();
        });
      });
    } finally {
      process.umask(old);
    }
  }

  /**
   * Serves a client connection accepted elsewhere (a VM guest's, which `lessor proxy` takes from a vsock
   * listener after deciding who it is) as if it had arrived on a listening socket, timeouts included.
   * After {@link close} it is destroyed.
   */
  accept(socket: Duplex): void {
    if (this.#closed) {
      socket.destroy();
      return;
    }
    // node's header-timeout check starts when a server starts listening; one that only takes handed-over
    // connections never does, so start it here (as for the inner server).
    if (!this.server.listening && !this.#checking) this.server.emit("listening");
    this.#checking = true;
    this.server.emit("connection", socket);
  }

  /** Stops listening and closes every client, tunnel and upstream connection. */
  async close(): Promise<void> {
    this.#closed = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.#sockets) s.destroy();
    this.#inner.closeAllConnections();
    this.#inner.close(() => {}); // stops its header-timeout check; it was never listening
    this.server.closeAllConnections();
    await closed;
  }

  /** Counts a new client connection as pending; past the cap, the oldest pending one is closed. */
  #admitPending(s: Duplex): void {
    this.#pending.add(s);
    s.once("close", () => this.#pending.delete(s));
    while (this.#pending.size > this.#maxPending) {
      const oldest = this.#pending.values().next().value as Duplex;
      this.#pending.delete(oldest);
      oldest.destroy();
    }
  }

  #track(s: Duplex): void {
    this.#sockets.add(s);
    s.once("close", () => this.#sockets.delete(s));
  }

  /** Absolute-form (plain HTTP) requests: forwarded untouched for open egress, else refused (./plain-http.ts). */
  #plainRequest(req: IncomingMessage, res: ServerResponse): void {
    if (this.#opts.authorize && !this.#opts.authorize(req)) {
      // The body (if any) is not read: the connection ends with the answer.
      const body = safeJson(AUTH_PROBLEM);
      res.writeHead(407, { "proxy-authenticate": AUTH_CHALLENGE, "content-type": "application/problem+json", "content-length": Buffer.byteLength(body), connection: "close" });
      res.end(body);
      return;
    }
    // Tracked, so that close() ends plain-HTTP upstream connections too.
    const connect = (to: ConnectTo): Duplex => {
      const s = this.#up.connect(to);
      this.#track(s);
      return s;
    };
    void forwardPlain(req, res, { egress: this.#opts.egress, guard: this.#opts.guard, connect, idleTimeoutMs: this.#idleMs, maxHeaders: this.#maxHeaders });
  }

  async #connect(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on("error", () => socket.destroy());
    if (this.#opts.authorize && !this.#opts.authorize(req)) {
      answerRaw(socket, 407, AUTH_PROBLEM, `Proxy-Authenticate: ${AUTH_CHALLENGE}\r\n`);
      return;
    }
    if (tooManyHeaders(req, this.#maxHeaders)) {
      answerRaw(socket, 431, { type: "urn:lessor:proxy:header_count", title: "Request header fields too large", status: 431, detail: `more than ${this.#maxHeaders} header lines`, reason: "header_count" });
      return;
    }
    const at = parseAuthority(req.url ?? "");
    if (!at) {
      answerRaw(socket, 400, { type: "urn:lessor:proxy:connect_target", title: "Bad CONNECT target", status: 400, detail: "CONNECT takes host:port" });
      return;
    }
    try {
      // Canonical host for the policy: a grant for api.github.com must match API.GitHub.com. too.
      const lit = parseHostLiteral(at.host);
      if (typeof lit !== "object") await this.#opts.guard.check(at.host, at.port); // throws the guard's own refusal
      const host = typeof lit === "object" ? (lit.ip ? lit.ip.text : lit.name) : at.host;
      const decision: EgressDecision = await this.#opts.egress.decide(host, at.port);
      if (decision.kind === "refuse") {
        answerRefusal(socket, decision.refusal);
        return;
      }
      const target = await this.#opts.guard.check(host, at.port);
      if (decision.kind === "tunnel") await this.#tunnel(target, socket, head);
      else this.#intercept(host, at.port, target, decision, socket, head);
    } catch (e) {
      if (e instanceof ProxyRefusal) answerRefusal(socket, e);
      else if (isVaultError(e) && e.code === "access_denied")
        answerRaw(socket, 403, { type: "urn:lessor:proxy:access_denied", title: "Forbidden", status: 403, detail: refusalForAgent(e.message) });
      else answerRaw(socket, 500, { type: "urn:lessor:proxy:internal", title: "Proxy error", status: 500, detail: "the proxy failed to handle the CONNECT" });
    }
  }

  /** Opens the checked upstream, then answers 200 and pipes bytes both ways, untouched. */
  async #tunnel(target: CheckedTarget, socket: Duplex, head: Buffer): Promise<void> {
    const up = connectChecked(target, this.#up.connect);
    this.#track(up);
    try {
      await new Promise<void>((resolve, reject) => {
        up.once("connect", resolve);
        up.once("error", reject);
      });
    } catch (e) {
      up.destroy();
      const code = (e as { code?: unknown }).code;
      answerRaw(socket, 502, {
        type: "urn:lessor:proxy:upstream",
        title: "Bad gateway",
        status: 502,
        detail: `could not connect to ${target.host} port ${target.port} (${typeof code === "string" ? code : "error"})`,
      });
      return;
    }
    const closeBoth = (): void => {
      up.destroy();
      socket.destroy();
    };
    up.on("error", closeBoth);
    socket.on("error", closeBoth);
    up.on("close", () => socket.destroy());
    socket.on("close", () => up.destroy());
    setIdle(socket, this.#idleMs, closeBoth);
    socket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
    if (head.length > 0) up.write(head);
    socket.pipe(up);
    up.pipe(socket);
  }

  /** Answers 200, terminates the client's TLS with a leaf for `host` and serves HTTP/1.1 or HTTP/2 inside. */
  #intercept(host: string, port: number, target: CheckedTarget, decision: Extract<EgressDecision, { kind: "intercept" }>, socket: Duplex, head: Buffer): void {
    // Throws access_denied for a host the CA may not certify: answered 403 before the tunnel opens.
    const tlsOpts = this.#opts.ca.tlsSocketOptions(host);
    const agent = tunnelAgent(target, this.#up);
    socket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
    // Bytes the client sent right after the CONNECT head (an eager ClientHello) go back into the stream.
    if (head.length > 0) {
      socket.pause();
      socket.unshift(head);
    }
    // ALPN offers h2 and http/1.1 (tlsOpts): the protocol the client picks decides the handler below.
    const tls = new TLSSocket(socket as Socket, tlsOpts);
    this.#track(tls);
    let closed = false;
    let h2: H2Tunnel | undefined;
    const handle = {
      close: (): void => {
        closed = true;
        h2?.close();
        tls.destroy();
        agent.destroy();
        socket.destroy();
      },
      get closed(): boolean {
        return closed;
      },
    };
    const tunnel: Tunnel = { host, port, target, prepare: (r, h) => decision.prepare(r, h), handle, agent };
    this.#tunnels.set(tls, tunnel);
    tls.on("error", () => tls.destroy());
    tls.once("close", () => {
      closed = true;
      h2?.close();
      agent.destroy();
      socket.destroy();
    });
    tls.once("secure", () => {
      // The client's SNI must name the CONNECT host: one tunnel, one host.
      const sni = (tls as unknown as { servername?: string | false }).servername;
      if (typeof sni === "string" && sni.toLowerCase().replace(/\.$/, "") !== host) {
        tls.destroy();
        return;
      }
      // Handed over once the handshake is done (as an https server does), so ALPN is known.
      if (tls.alpnProtocol === "h2")
        h2 = serveH2(tunnel, tls, this.#up, { maxHeaderListSize: this.#opts.maxHeaderSize ?? DEFAULT_MAX_HEADER_SIZE, maxHeaders: this.#maxHeaders });
      else this.#inner.emit("connection", tls);
    });
    setIdle(tls, this.#idleMs, () => tls.destroy());
  }
}

function setIdle(s: Duplex, ms: number, onIdle: () => void): void {
  const sock = s as Partial<Socket>;
  if (typeof sock.setTimeout === "function") {
    sock.setTimeout(ms);
    s.on("timeout", onIdle);
  }
}
