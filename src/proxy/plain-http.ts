/**
 * Plain-HTTP proxying: a request in absolute form (`GET http://host/path HTTP/1.1`) sent to the proxy
 * itself, as clients do for `http://` URLs when `HTTP_PROXY` is set.
 *
 * The target is parsed strictly (http only; an `https://` target is refused with a pointer to CONNECT,
 * no user info, no fragment), its host made canonical, and the egress policy asked as for a CONNECT:
 * - refuse: the refusal's status and problem document;
 * - tunnel (open egress): the request goes on untouched (hop-by-hop headers removed, Host from the
 *   URL) over plain TCP to the address the SSRF guard checked, and the answer streams back;
 * - intercept (a host a grant covers): refused, 403 `plaintext`. The proxy never sends a credential in
 *   clear text and never turns an https request into http; the agent must use the https:// URL.
 */
import { type IncomingMessage, request, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { isVaultError } from "../base/errors.js";
import { refusalForAgent } from "../vault/policy.js";
import { safeJson } from "../base/text.js";
import type { Egress } from "./egress.js";
import { connectChecked, parseHostLiteral, type ConnectTo, type SsrfGuard } from "./guard.js";
import { tooManyHeaders, tooManyHeadersDetail } from "./header-cap.js";
import { ANSWER_MARK, ANSWER_MARK_HEADER, endToEnd, relayableStatus } from "./headers.js";
import { problemResponse } from "./intercept.js";
import { framedBodyHeaders, h1HasBody } from "./request-body.js";
import { ProxyRefusal } from "./refusal.js";
import { relayBody } from "./relay.js";

/** What {@link forwardPlain} needs from the proxy. */
export interface PlainHttpOptions {
  egress: Egress;
  guard: SsrfGuard;
  /** Opens the TCP connection to a checked address. */
  connect: (to: ConnectTo) => Duplex;
  /** Idle timeout of the upstream connection, ms. */
  idleTimeoutMs: number;
  /** Cap on the request's header lines (431 above it). */
  maxHeaders: number;
}

/** An absolute-form `http://` target, split. `host` is as written (brackets kept for IPv6). */
export interface PlainTarget {
  host: string;
  port: number;
  /** Origin form: `/path?query` (at least `/`). */
  path: string;
}

/** Why a request target is not a plain-HTTP absolute-form target the proxy takes. */
export interface TargetError {
  status: 400;
  reason: "request_target" | "use_connect";
  detail: string;
}

const ABSOLUTE = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)(.*)$/s;
const AUTHORITY = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]]+)(?::([0-9]{1,5}))?$/;

/**
 * Parses an absolute-form request target strictly: `http://host[:port][/path][?query]`. Refuses user
 * info (`user@host`), a fragment, an empty or out-of-range port, and every scheme but http; `https://`
 * is refused with the advice to use CONNECT (a proxy that fetched https for the client would hold the
 * plain text of a request the client meant to encrypt end to end).
 */
export function parseAbsoluteTarget(target: string): PlainTarget | TargetError {
  const bad = (detail: string): TargetError => ({ status: 400, reason: "request_target", detail: `Bad request target: ${detail}` });
  const m = ABSOLUTE.exec(target);
  if (!m) return bad("the proxy takes absolute-form targets (http://host/path) or CONNECT host:port");
  const scheme = m[1]!.toLowerCase();
  if (scheme === "https")
    return { status: 400, reason: "use_connect", detail: "Bad request target: for an https:// URL the client must open a tunnel with CONNECT host:443 (set HTTPS_PROXY)" };
  if (scheme !== "http") return bad(`the proxy forwards http:// targets only, not ${scheme}://`);
  const auth = m[2]!;
  if (auth.includes("@")) return bad("user information (user@host) in the URL is not allowed");
  const a = AUTHORITY.exec(auth);
  if (!a) return bad("the URL has no valid host[:port]");
  const port = a[2] === undefined ? 80 : Number(a[2]);
  if (!(port >= 1 && port <= 65535)) return bad("the port is not a number from 1 to 65535");
  const rest = m[3]!;
  if (rest.includes("#")) return bad("a request target has no fragment (#)");
  if (rest !== "" && !rest.startsWith("/") && !rest.startsWith("?")) return bad("the path must start with /");
  return { host: a[1]!, port, path: rest === "" ? "/" : rest.startsWith("?") ? "/" + rest : rest };
}

/** Writes a problem document the proxy made (a refusal's own document). */
function problemDocument(res: ServerResponse, status: number, doc: object): void {
  const body = safeJson(doc);
  res.writeHead(status, { "content-type": "application/problem+json", "content-length": Buffer.byteLength(body), [ANSWER_MARK_HEADER]: ANSWER_MARK });
  res.end(body);
}

/** The Host header for `host` (canonical) on `port`: brackets for IPv6, the port unless it is 80. */
function hostHeader(host: string, port: number): string {
  const h = host.includes(":") ? `[${host}]` : host;
  return port === 80 ? h : `${h}:${port}`;
}

/**
 * Handles one request sent to the proxy's own server (not CONNECT): absolute-form http:// targets are
 * decided by the egress policy and forwarded or refused; anything else is refused with a problem.
 */
export async function forwardPlain(req: IncomingMessage, res: ServerResponse, opts: PlainHttpOptions): Promise<void> {
  if (tooManyHeaders(req, opts.maxHeaders)) {
    problemResponse(res, 431, "header_count", tooManyHeadersDetail(opts.maxHeaders));
    return;
  }
  const parsed = parseAbsoluteTarget(req.url ?? "");
  if ("reason" in parsed) {
    problemResponse(res, parsed.status, parsed.reason, parsed.detail);
    return;
  }
  if (req.headers.upgrade !== undefined) {
    // Closed after the answer: a client that goes on with frames must not have them read as requests.
    res.shouldKeepAlive = false;
    problemResponse(res, 501, "upgrade", "Not implemented: protocol upgrades over plain http through the proxy; use wss:// (CONNECT)");
    return;
  }
  try {
    // Canonical host for the policy, as for CONNECT; a host the parser refuses gets the guard's refusal.
    const lit = parseHostLiteral(parsed.host);
    if (typeof lit !== "object") await opts.guard.check(parsed.host, parsed.port); // throws
    const host = typeof lit === "object" ? (lit.ip ? lit.ip.text : lit.name) : parsed.host;
    const decision = await opts.egress.decide(host, parsed.port);
    if (decision.kind === "refuse") {
      problemDocument(res, decision.refusal.status, decision.refusal.problem());
      return;
    }
    if (decision.kind === "intercept") {
      problemResponse(
        res,
        403,
        "plaintext",
        `Forbidden: the credential for ${host} is only sent over https; use an https:// URL (the proxy never sends a credential in clear text)`,
      );
      return;
    }
    const target = await opts.guard.check(host, parsed.port);
    const headers = endToEnd(req.headers);
    headers.host = hostHeader(host, parsed.port);
    // A body goes framed whatever the method (./request-body.ts); the client's chunking was dropped above.
    if (h1HasBody(req.headers)) framedBodyHeaders(headers);
    const up = request({
      host: target.address,
      port: parsed.port,
      method: req.method,
      path: parsed.path,
      headers,
      setHost: false,
      // No agent: one fresh connection per request, to the checked address only.
      createConnection: () => connectChecked(target, opts.connect) as Socket,
    });
    up.setTimeout(opts.idleTimeoutMs, () => up.destroy(Object.assign(new Error("idle timeout"), { code: "ETIMEDOUT" })));
    up.on("response", (ur) => {
      const head = relayableStatus(ur.statusCode, ur.statusMessage);
      try {
        if (head.status === null) throw new Error("status");
        res.writeHead(head.status, head.reason, endToEnd(ur.headers));
      } catch {
        // A status or header Node's client read but its server will not write: nothing has gone yet.
        ur.destroy();
        problemResponse(res, 502, "upstream", `Bad gateway: the upstream ${host} port ${parsed.port} answered with a status line or header that cannot be passed on`);
        return;
      }
      relayBody(ur, res, {}, () => {});
    });
    up.on("error", (e) => {
      const code = (e as { code?: unknown }).code;
      problemResponse(res, 502, "upstream", `Bad gateway: the upstream ${host} port ${parsed.port} failed (${typeof code === "string" ? code : e.message})`);
    });
    // The client went away: stop the upstream exchange too.
    res.on("close", () => {
      if (!res.writableFinished) up.destroy();
    });
    req.on("error", () => up.destroy());
    req.pipe(up);
  } catch (e) {
    if (e instanceof ProxyRefusal) problemDocument(res, e.status, e.problem());
    else if (isVaultError(e) && e.code === "access_denied") problemResponse(res, 403, "access_denied", `Forbidden: ${refusalForAgent(e.message)}`);
    else problemResponse(res, 500, "internal", "Proxy error: the proxy failed to handle the request");
  }
}
