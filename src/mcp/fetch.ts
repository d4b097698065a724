/**
 * One HTTPS request through the session's injecting proxy (./session-proxy.ts): a CONNECT over the
 * proxy's Unix socket, TLS inside the tunnel trusting the session CA only (the proxy presents a leaf
 * for the host; the real upstream's certificate is the proxy's to check), then HTTP/1.1. The answer is
 * read up to a cap; the rest is dropped and the result says it was truncated.
 *
 * A refusal by the proxy comes back as its problem document (`application/problem+json` with a
 * `urn:lessor:` type): on the CONNECT (the guard, or no lease covers the host) or inside the tunnel
 * (the vault refused this use of the lease). Both become {@link ProxyRefused}. Inside the tunnel only
 * an answer with the proxy's mark (src/proxy/headers.ts, `isProxyAnswer`) is one: an upstream's problem
 * document of the same shape is the upstream's answer, returned as any other.
 */
import { request, type IncomingHttpHeaders, type OutgoingHttpHeaders } from "node:http";
import { connect as tlsConnect } from "node:tls";
import type { Duplex } from "node:stream";
import { isProxyAnswer } from "../proxy/headers.js";
import { ERROR_CODES, VaultError, type ErrorCode } from "../base/errors.js";

/** What {@link fetchThroughProxy} sends. */
export interface ProxiedFetch {
  /** The proxy's Unix socket. */
  socket: string;
  /** The session CA, the only root trusted inside the tunnel. */
  caPem: string;
  method: string;
  url: URL;
  headers: OutgoingHttpHeaders;
  body?: Buffer;
  /** Bytes of the response body kept; the rest is dropped. */
  maxBody: number;
  /** The whole exchange's deadline, ms. */
  timeoutMs: number;
}

/** The upstream's answer, capped. */
export interface FetchedResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** True when the body was longer than the cap (then `body` is its first `maxBody` bytes). */
  truncated: boolean;
}

/** The proxy refused the request: nothing (or nothing more) went upstream. */
export class ProxyRefused extends VaultError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly reason: string,
    readonly status: number,
  ) {
    super(code, message);
  }
}

/** Most bytes of a proxy's problem document read. */
const MAX_PROBLEM = 16 * 1024;

/** A problem document's fields, or null when `body` is not one of lessor's. */
function lessorProblem(headers: IncomingHttpHeaders, body: Buffer): { reason: string; detail: string } | null {
  if (!String(headers["content-type"] ?? "").startsWith("application/problem+json")) return null;
  try {
    const p = JSON.parse(body.toString("utf8")) as { type?: unknown; detail?: unknown; reason?: unknown };
    if (typeof p.type !== "string" || !p.type.startsWith("urn:lessor:")) return null;
    const reason = typeof p.reason === "string" ? p.reason : p.type.slice(p.type.lastIndexOf(":") + 1);
    return { reason, detail: typeof p.detail === "string" ? p.detail : "refused" };
  } catch {
    return null;
  }
}

/** The error code for a proxy refusal's reason: the vault's own code when it is one, else by status. */
function codeFor(reason: string, status: number): ErrorCode {
  if (Object.prototype.hasOwnProperty.call(ERROR_CODES, reason)) return reason as ErrorCode;
  if (reason === "lease_ended") return "lease_revoked";
  return status === 502 || status === 503 ? "unavailable" : "access_denied";
}

/** Opens a CONNECT tunnel to `host:port` through the proxy's socket. */
function openTunnel(o: ProxiedFetch, host: string, port: number, signal: AbortSignal): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const authority = `${host.includes(":") ? `[${host}]` : host}:${port}`;
    const req = request({ socketPath: o.socket, method: "CONNECT", path: authority, headers: { host: authority }, signal });
    req.once("connect", (res, socket, head) => {
      if (res.statusCode === 200) {
        if (head.length > 0) socket.unshift(head);
        resolve(socket);
        return;
      }
      // The proxy's answer to the CONNECT: its problem document, in `head` and what follows.
      const chunks: Buffer[] = [head];
      let size = head.length;
      socket.on("data", (c: Buffer) => {
        if (size < MAX_PROBLEM) chunks.push(c);
        size += c.length;
      });
      const done = (): void => {
        const status = res.statusCode ?? 0;
        const p = lessorProblem(res.headers, Buffer.concat(chunks).subarray(0, MAX_PROBLEM));
        reject(
          p
            ? new ProxyRefused(codeFor(p.reason, status), p.detail, p.reason, status)
            : new ProxyRefused(status >= 500 ? "unavailable" : "access_denied", `the proxy refused the connection to ${authority} (HTTP ${status})`, "proxy", status),
        );
        socket.destroy();
      };
      socket.once("end", done);
      socket.once("close", done);
      socket.once("error", done);
    });
    req.once("response", (res) => {
      res.resume();
      reject(new ProxyRefused("unavailable", `the proxy answered the CONNECT with HTTP ${res.statusCode ?? 0}`, "proxy", res.statusCode ?? 0));
    });
    req.once("error", (e) => reject(e));
    req.end();
  });
}

/** Sends the request through the proxy; resolves with the upstream's (capped) answer. */
export async function fetchThroughProxy(o: ProxiedFetch): Promise<FetchedResponse> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), o.timeoutMs);
  timer.unref();
  const host = o.url.hostname.startsWith("[") ? o.url.hostname.slice(1, -1) : o.url.hostname;
  const port = o.url.port === "" ? 443 : Number(o.url.port);
  let tunnel: Duplex | null = null;
  try {
    tunnel = await openTunnel(o, host, port, ac.signal);
    const t = tunnel;
    const servername = /^[0-9.]+$/.test(host) || host.includes(":") ? undefined : host;
    const tls = tlsConnect({ socket: t as never, ...(servername ? { servername } : {}), ca: o.caPem, ALPNProtocols: ["http/1.1"] });
    return await new Promise<FetchedResponse>((resolve, reject) => {
      const req = request({
        method: o.method,
        host,
        port,
        path: `${o.url.pathname}${o.url.search}`,
        headers: o.headers,
        // No agent: the request goes over this tunnel's TLS socket and nowhere else.
        createConnection: () => tls as never,
        signal: ac.signal,
      });
      req.once("error", reject);
      tls.once("error", reject);
      req.once("response", (res) => {
        const chunks: Buffer[] = [];
        let kept = 0;
        let truncated = false;
        const finish = (): void => {
          const body = Buffer.concat(chunks);
          // The proxy's own answer inside the tunnel (its mark: an upstream's problem document that
          // looks like one is the upstream's answer): the vault refused this use of a lease.
          const p = isProxyAnswer(res.headers) ? lessorProblem(res.headers, body) : null;
          const status = res.statusCode ?? 0;
          if (p && status >= 400) reject(new ProxyRefused(codeFor(p.reason, status), p.detail, p.reason, status));
          else resolve({ status, headers: res.headers, body, truncated });
          tls.destroy();
        };
        res.on("data", (c: Buffer) => {
          if (truncated) return;
          const room = o.maxBody - kept;
          if (c.length > room) {
            chunks.push(c.subarray(0, room));
            kept += room;
            truncated = true;
            // The rest is not wanted: stop reading and close the tunnel.
            finish();
            res.destroy();
            return;
          }
          chunks.push(c);
          kept += c.length;
        });
        res.once("end", () => {
          if (!truncated) finish();
        });
        res.once("error", (e) => {
          if (!truncated) reject(e);
        });
      });
      req.end(o.body);
    });
  } catch (e) {
    if (ac.signal.aborted) throw new VaultError("unavailable", `the request to ${o.url.host} took longer than ${Math.round(o.timeoutMs / 1000)} s and was stopped`);
    if (e instanceof VaultError) throw e;
    const code = (e as { code?: unknown }).code;
    throw new VaultError("unavailable", `the request to ${o.url.host} failed (${typeof code === "string" ? code : "connection error"})`);
  } finally {
    clearTimeout(timer);
    tunnel?.destroy();
  }
}
