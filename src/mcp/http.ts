/**
 * `lessor mcp --http 127.0.0.1:PORT`: the MCP session over streamable HTTP (the SDK's
 * StreamableHTTPServerTransport on node:http), for clients that connect to a URL instead of starting
 * a process. It listens on a loopback address only, and every request must pass, in this order:
 * 1. `Host` is exactly the address and port listened on: a DNS-rebinding page reaches us under its own
 *    name, so a foreign Host is refused (403) before anything else;
 * 2. `Origin`, when present, is a loopback origin (http(s)://127.x.x.x, [::1] or localhost): a web page
 *    of any other site that makes the browser post here is refused (403);
 * 3. `Authorization: Bearer <token>` with the random token of this run (compared in constant time);
 *    else 401. The token is printed once on stderr, or written to a 0600 file (--token-file).
 * The MCP endpoint is `/mcp`; each MCP session (initialize) is an MCP session of its own (./server.ts):
 * its own leases, placeholders and injecting proxy, all acting for the same agent.
 *
 * A session ends, and its leases are revoked, on DELETE, when the server stops, or when it has had no
 * request and no open stream for the idle period ({@link DEFAULT_HTTP_IDLE_MS}): a client that quits
 * sends no DELETE (the SDK's `close()` only drops its connections), so without that every client that
 * ever connected would hold a place for good. When {@link MAX_HTTP_SESSIONS} are open, a new session
 * ends the one idle the longest; one with a request being answered or a stream open is never ended so.
 */
import { createHash, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { closeSync, fsyncSync, openSync, renameSync, writeSync } from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as net from "node:net";
import { isIP } from "node:net";
import { basename, dirname, join } from "node:path";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { isInitializeRequest } from "@modelcontextprotocol/sdk/types.js";
import { VaultError } from "../base/errors.js";
import { SparseLog } from "../base/sparse-log.js";
import { capConnections } from "./connection-cap.js";
import { isOwnersUid, loopbackPeerUid } from "./loopback-peer.js";
import { formatDuration } from "../vault/duration.js";
import type { Server } from "@modelcontextprotocol/sdk/server/index.js";
import type { McpSession } from "./server.js";

/** Largest request body read, bytes (an http_request body of 1 MiB characters, JSON-escaped, fits). */
export const MAX_HTTP_BODY = 8 * 1024 * 1024;
/** Most MCP sessions open at once on one server. */
export const MAX_HTTP_SESSIONS = 32;

/**
 * Most connections open at once, authenticated or not (any local user can connect): more are closed
 * at once, so a flood cannot use up the process's file descriptors. Past them the owner's (and
 * root's) connections are let in up to as many again (./connection-cap.ts, ./loopback-peer.ts), so
 * that another local user holding the cap cannot keep the agent's client out.
 */
export const MAX_HTTP_CONNECTIONS = 256;
/** How long an MCP session may have no request and no open stream before it ends (5 minutes). */
export const DEFAULT_HTTP_IDLE_MS = 5 * 60_000;
/** The endpoint path. */
export const MCP_PATH = "/mcp";

/** A loopback address and port to listen on. */
export interface LoopbackAddress {
  /** An IP literal: 127.x.x.x or ::1. */
  host: string;
  port: number;
}

/** True for an IPv4 address in 127.0.0.0/8 or the IPv6 loopback (also written as ::ffff:127.x). */
export function isLoopbackIp(ip: string): boolean {
  const v = isIP(ip);
  if (v === 4) return ip.split(".")[0] === "127";
  if (v === 6) {
    const l = ip.toLowerCase();
    if (l === "::1" || l === "0:0:0:0:0:0:0:1") return true;
    const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(l);
    return m !== null && isLoopbackIp(m[1]!);
  }
  return false;
}

/**
 * Parses `--http`: `127.0.0.1:PORT`, `[::1]:PORT` or `localhost:PORT` (taken as 127.0.0.1). Anything
 * that is not a loopback IP literal is refused: this server lends credentials to whoever holds its
 * token, and must not be reachable from another machine.
 */
export function parseLoopbackAddress(text: string): LoopbackAddress {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  if (!m) throw new VaultError("invalid_request", "--http takes a loopback address and port such as 127.0.0.1:8765 or [::1]:8765");
  let host = (m[1] ?? m[2])!;
  const port = Number(m[3]);
  if (port > 65535) throw new VaultError("invalid_request", "--http: the port must be from 0 to 65535");
  if (host.toLowerCase() === "localhost") host = "127.0.0.1";
  if (!isLoopbackIp(host))
    throw new VaultError("invalid_request", "--http listens on a loopback address only (127.0.0.1 or [::1]): lessor mcp lends credentials, so it must not be reachable from another machine");
  return { host, port };
}

/**
 * The other loopback address `localhost` may resolve to, for a server on 127.0.0.1 or ::1; null for
 * other loopback addresses (127.0.0.2…), which no client reaches by the name localhost.
 */
export function twinOf(host: string): string | null {
  return host === "127.0.0.1" ? "::1" : host === "::1" ? "127.0.0.1" : null;
}

/** Errors that say the machine has no such address family or address (no IPv6): nobody can listen there either. */
const NO_SUCH_ADDRESS = new Set(["EADDRNOTAVAIL", "EAFNOSUPPORT"]);

/**
 * Listens `srv` on `address`, and, for 127.0.0.1 or ::1, on the same port of the other loopback
 * address too (its connections handed to `srv`). A client told `http://localhost:PORT` resolves
 * localhost to ::1 first on many systems (Debian's stock /etc/hosts): were that port free, any local
 * user could listen there and be sent this server's bearer token. A twin port already taken refuses
 * the start (port 0: another free port is tried); a machine without the other family needs no twin.
 */
async function listenWithTwin(srv: http.Server, address: LoopbackAddress): Promise<net.Server | null> {
  const twinHost = twinOf(address.host);
  for (let attempt = 0; ; attempt++) {
    try {
      await listenOn(srv, address.port, address.host);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === undefined) throw e;
      throw new VaultError("config_invalid", `--http: cannot listen on ${hostPort(address.host, address.port)} (${code}); pick a free port (0 picks one) or stop the program that holds it`);
    }
    if (twinHost === null) return null;
    const port = (srv.address() as AddressInfo).port;
    const twin = net.createServer((socket) => srv.emit("connection", socket));
    try {
      await listenOn(twin, port, twinHost);
      return twin;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? "";
      if (NO_SUCH_ADDRESS.has(code)) return null;
      await new Promise<void>((r) => srv.close(() => r()));
      if (code === "EADDRINUSE" && address.port === 0 && attempt < 8) continue;
      if (code === "EADDRINUSE")
        throw new VaultError(
          "unavailable",
          `--http: ${hostPort(twinHost, port)} is taken by another program; a client told http://localhost:${port} could reach it instead of lessor mcp and hand it the bearer token. Stop that program or choose another port`,
        );
      throw e;
    }
  }
}

function listenOn(server: net.Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const fail = (e: Error): void => reject(e);
    server.once("error", fail);
    server.listen(port, host, () => {
      server.off("error", fail);
      resolve();
    });
  });
}

/** `host:port` as it appears in a Host header and a URL (IPv6 in brackets). */
export function hostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** True when `origin` (an Origin header) names a loopback host, over http or https. */
export function isLoopbackOrigin(origin: string): boolean {
  let u: URL;
  try {
    u = new URL(origin);
  } catch {
    return false;
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") return false;
  if (u.origin !== origin.replace(/\/$/, "")) return false;
  const h = u.hostname.replace(/^\[|\]$/g, "");
  return h === "localhost" || isLoopbackIp(h);
}

/** A bearer-token check that takes the same time whatever the guess (both sides are hashed first). */
export function tokenMatcher(token: string): (header: string | undefined) => boolean {
  const want = createHash("sha256").update(token).digest();
  return (header) => {
    const m = header === undefined ? null : /^Bearer ([A-Za-z0-9_-]{1,512})$/.exec(header);
    const got = createHash("sha256")
      .update(m ? m[1]! : "")
      .digest();
    return timingSafeEqual(got, want) && m !== null;
  };
}

/** Writes `token` to `path` with mode 0600, atomically (a temporary file renamed over it). */
export function writeTokenFile(path: string, token: string): void {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
  const fd = openSync(tmp, "wx", 0o600);
  try {
    writeSync(fd, `${token}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** Options of {@link serveHttp}. */
export interface ServeHttpOptions {
  /** A new MCP session for the agent (its own leases and placeholders): one per MCP session a client opens. */
  newSession(): McpSession;
  /**
   * How long, in ms, a session may have no request being answered and no stream open before it ends
   * and its leases are revoked. Default {@link DEFAULT_HTTP_IDLE_MS}.
   */
  idleMs?: number;
  address: LoopbackAddress;
  /** The bearer token clients must send; {@link newToken} makes one. */
  token: string;
  log(line: string): void;
}

/** A running server. */
export interface HttpMcpServer {
  /** The URL clients connect to (`http://127.0.0.1:PORT/mcp`). */
  url: string;
  port: number;
  /** MCP sessions open now. */
  readonly sessions: number;
  /** Stops listening, ends every MCP session and revokes their leases. */
  close(): Promise<void>;
}

/** A new random bearer token (256 bits, base64url). */
export function newToken(): string {
  return randomBytes(32).toString("base64url");
}

/**
 * A plain refusal (never echoing what was sent). The connection is closed after it: a refused request's
 * body is not read, and a kept-alive connection would drain it for as long as it trickles in (no
 * request timeout, for SSE), so a local user without the token could hold every connection slot.
 */
function refuse(res: http.ServerResponse, status: number, message: string, extra: Record<string, string> = {}): void {
  if (res.headersSent) return void res.destroy();
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store", connection: "close", ...extra });
  res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32000, message }, id: null }));
}

/** Reads a JSON body of at most {@link MAX_HTTP_BODY} bytes; undefined after answering an error. */
async function readJson(req: http.IncomingMessage, res: http.ServerResponse): Promise<{ body: unknown } | undefined> {
  const declared = Number(req.headers["content-length"] ?? "0");
  if (declared > MAX_HTTP_BODY) {
    refuse(res, 413, `the request body is over ${MAX_HTTP_BODY} bytes`, { connection: "close" });
    req.resume();
    return undefined;
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_HTTP_BODY) {
      refuse(res, 413, `the request body is over ${MAX_HTTP_BODY} bytes`, { connection: "close" });
      req.destroy();
      return undefined;
    }
    chunks.push(c);
  }
  try {
    return { body: JSON.parse(Buffer.concat(chunks).toString("utf8")) };
  } catch {
    res.writeHead(400, { "content-type": "application/json" });
    res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32700, message: "Parse error: the body is not JSON" }, id: null }));
    return undefined;
  }
}

/** One MCP session of {@link serveHttp}. */
interface HttpSession {
  /** 1, 2, …: names the session in the log. */
  n: number;
  transport: StreamableHTTPServerTransport;
  server: Server;
  session: McpSession;
  /** HTTP exchanges of this session open now: requests being answered, SSE streams. */
  open: number;
  /** When the last exchange ended (performance.now()), or the session began. */
  lastUsed: number;
  /** Set once the session is ending: its leases are being revoked. */
  ending: Promise<void> | null;
}

/** Serves MCP sessions made by `o.newSession` over streamable HTTP on `o.address` until closed. */
export async function serveHttp(o: ServeHttpOptions): Promise<HttpMcpServer> {
  const authorized = tokenMatcher(o.token);
  const idleMs = o.idleMs ?? DEFAULT_HTTP_IDLE_MS;
  if (!Number.isFinite(idleMs) || idleMs <= 0) throw new VaultError("invalid_request", "the MCP session idle period must be a positive number of milliseconds");
  /** Every session not yet ending, from its initialize on (before it has an id, too). */
  const live = new Set<HttpSession>();
  const byId = new Map<string, HttpSession>();
  const endings = new Set<Promise<void>>();
  let count = 0;
  let expectedHosts: string[] = [];

  /** Counts one HTTP exchange of `s` until `res` closes (answered, stream ended, or the client gone). */
  const use = (s: HttpSession, res: http.ServerResponse): void => {
    s.open++;
    res.once("close", () => {
      s.open--;
      s.lastUsed = performance.now();
    });
  };

  /** Ends `s` as a DELETE does: its transport and server closed, its leases revoked. Idempotent. */
  const end = (s: HttpSession, why: string): Promise<void> =>
    (s.ending ??= (async () => {
      live.delete(s);
      if (s.transport.sessionId !== undefined) byId.delete(s.transport.sessionId);
      // transport.close() calls onclose at once: let `ending` be set first, or that call would end the
      // session a second time, logged as "closed by the client" whatever ended it.
      await Promise.resolve();
      await s.transport.close().catch(() => {});
      await s.server.close().catch(() => {});
      await s.session.close();
      o.log(`lessor mcp: MCP session ${s.n} ended (${why}); its leases are revoked`);
    })());
  const retire = (s: HttpSession, why: string): void => {
    const p = end(s, why);
    endings.add(p);
    const done = (): void => void endings.delete(p);
    p.then(done, (e: unknown) => {
      done();
      o.log(`lessor mcp: MCP session ${s.n} could not end cleanly (${e instanceof Error ? e.name : "error"})`);
    });
  };

  /** The session with no exchange open that has been idle the longest, or undefined. */
  const idlest = (): HttpSession | undefined => {
    let best: HttpSession | undefined;
    for (const s of live) if (s.open === 0 && (best === undefined || s.lastUsed < best.lastUsed)) best = s;
    return best;
  };

  const sweep = setInterval(
    () => {
      const now = performance.now();
      for (const s of [...live]) if (s.open === 0 && now - s.lastUsed >= idleMs) retire(s, `idle for ${formatDuration(idleMs)}`);
    },
    Math.min(Math.max(idleMs / 4, 10), 15_000),
  );
  sweep.unref();

  // Refusals come from anyone who can connect: the first few are logged, then every hundredth.
  const refusals = new SparseLog(
    (l) => o.log(l),
    (what) => `lessor mcp: ${what}`,
    (n, what) => `lessor mcp: ${what}; ${n} requests refused so far (only every hundredth is logged)`,
  );
  const logRefusal = (what: string): void => refusals.add(what);

  /** Set when {@link close} starts: every request is refused from then on, so no session begins after its sweep. */
  let stopping = false;
  const STOPPING = "lessor mcp is stopping; start a new session once it is running again";

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    if (stopping) return refuse(res, 503, STOPPING);
    // 1. Host: the exact address and port (a rebinding attacker's name never matches).
    const host = req.headers.host?.toLowerCase();
    if (host === undefined || !expectedHosts.includes(host)) return refuse(res, 403, "forbidden: the Host header must be the address lessor mcp listens on");
    // 2. Origin: absent (not a browser) or a loopback origin.
    const origin = req.headers.origin;
    if (origin !== undefined && !isLoopbackOrigin(origin)) {
      logRefusal("a request with a foreign Origin was refused (403)");
      return refuse(res, 403, "forbidden: requests from web pages of other origins are refused");
    }
    // 3. The bearer token.
    if (!authorized(req.headers.authorization)) {
      logRefusal("a request without the right bearer token was refused (401)");
      return refuse(res, 401, "unauthorized: send Authorization: Bearer <the token lessor mcp printed or wrote to --token-file>", { "www-authenticate": 'Bearer realm="lessor mcp"' });
    }
    const path = (req.url ?? "/").split("?")[0];
    if (path !== MCP_PATH) return refuse(res, 404, `not found: the MCP endpoint is ${MCP_PATH}`);
    const sid = req.headers["mcp-session-id"];
    if (Array.isArray(sid)) return refuse(res, 400, "one Mcp-Session-Id header, please");
    if (sid !== undefined) {
      const s = byId.get(sid);
      if (!s) return refuse(res, 404, "unknown or closed MCP session; initialize a new one");
      // Counted from here: a session reading a large body is not idle.
      use(s, res);
      if (req.method === "POST") {
        const got = await readJson(req, res);
        if (got) await s.transport.handleRequest(req, res, got.body);
      } else await s.transport.handleRequest(req, res);
      return;
    }
    if (req.method !== "POST") return refuse(res, 400, "no Mcp-Session-Id: start with an initialize request (POST)");
    const got = await readJson(req, res);
    if (!got) return;
    if (!isInitializeRequest(got.body)) return refuse(res, 400, "no Mcp-Session-Id: start with an initialize request");
    // Checked again after the body was read: close() may have swept the sessions meanwhile.
    if (stopping) return refuse(res, 503, STOPPING);
    if (live.size >= MAX_HTTP_SESSIONS) {
      // A client that quit sent no DELETE: the session idle the longest makes room. Never a busy one.
      const victim = idlest();
      if (victim === undefined) return refuse(res, 503, `too many MCP sessions (${MAX_HTTP_SESSIONS}), every one busy; close one (DELETE) or try again later`);
      retire(victim, `the session idle the longest, ended to make room for a new one (at most ${MAX_HTTP_SESSIONS})`);
    }
    const session = o.newSession();
    const server = session.server;
    const transport: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => void byId.set(id, s),
    });
    const s: HttpSession = { n: ++count, transport, server, session, open: 0, lastUsed: performance.now(), ending: null };
    live.add(s);
    use(s, res);
    transport.onclose = () => retire(s, "closed by the client");
    server.onerror = (e) => o.log(`lessor mcp: a message from the client could not be handled (${e.name})`);
    try {
      await server.connect(transport);
      await transport.handleRequest(req, res, got.body);
    } finally {
      // An initialize the transport refused leaves a session no client can name.
      if (transport.sessionId === undefined) retire(s, "its initialize failed");
    }
  };

  const srv = http.createServer({ maxHeaderSize: 16 * 1024 }, (req, res) => {
    handle(req, res).catch((e: unknown) => {
      o.log(`lessor mcp: an HTTP request failed (${e instanceof Error ? e.name : "error"})`);
      if (!res.headersSent) refuse(res, 500, "internal error");
      else res.destroy();
    });
  });
  capConnections(srv, MAX_HTTP_CONNECTIONS, "", (l) => o.log(l), (socket) => isOwnersUid(loopbackPeerUid(socket)));
  srv.headersTimeout = 10_000;
  srv.requestTimeout = 0; // SSE streams stay open
  let twin: net.Server | null;
  try {
    twin = await listenWithTwin(srv, o.address);
  } catch (e) {
    clearInterval(sweep);
    throw e;
  }
  const port = (srv.address() as AddressInfo).port;
  // localhost:PORT too, when there is a twin (a client told localhost reaches this server on either
  // address): a rebinding page's own name is never "localhost". The twin's literal is not taken.
  expectedHosts = [hostPort(o.address.host, port).toLowerCase(), ...(twinOf(o.address.host) !== null ? [`localhost:${port}`] : [])];
  return {
    url: `http://${hostPort(o.address.host, port)}${MCP_PATH}`,
    port,
    get sessions() {
      return live.size;
    },
    async close() {
      stopping = true;
      clearInterval(sweep);
      // No new connection from here; those open get 503 for anything new while the sessions end.
      const closed = new Promise<void>((r) => srv.close(() => r()));
      twin?.close();
      // A session is begun only while not stopping, so one sweep finds them all; the loop is a backstop.
      while (live.size > 0 || endings.size > 0) {
        for (const s of [...live]) retire(s, "the server stopped");
        await Promise.allSettled([...endings]);
      }
      srv.closeAllConnections();
      await closed;
    },
  };
}
