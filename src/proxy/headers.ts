/**
 * Header handling every protocol path of the proxy shares (HTTP/1.1, HTTP/2, WebSocket, plain HTTP):
 * which headers are end to end, which host a Host or `:authority` value names, the authority the
 * upstream is addressed by, and asking the egress policy about one request.
 */
import { randomBytes } from "node:crypto";
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import type { Prepared, ProxiedRequest, TunnelHandle } from "./egress.js";
import { parseHostLiteral } from "./guard.js";
import { scrub, type ScrubPatterns } from "./scrub.js";

/**
 * The header that marks an answer the proxy made itself inside a tunnel (a refusal's problem
 * document), with {@link ANSWER_MARK}, a random value of this process: a client in this process
 * (lessor mcp's fetch, src/mcp/fetch.ts) tells the proxy's refusals from an upstream's answer that
 * looks like one. The header is dropped from every upstream answer ({@link HOP_BY_HOP}), so an upstream
 * cannot set it, whatever it knows.
 */
export const ANSWER_MARK_HEADER = "lessor-proxy-answer";
/** See {@link ANSWER_MARK_HEADER}. */
export const ANSWER_MARK = randomBytes(16).toString("hex");

/** True when `h` are the headers of an answer this process's proxy made itself ({@link ANSWER_MARK_HEADER}). */
export function isProxyAnswer(h: IncomingHttpHeaders): boolean {
  return h[ANSWER_MARK_HEADER] === ANSWER_MARK;
}

/** Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus the proxy's own. */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  ANSWER_MARK_HEADER,
  "connection",
  "proxy-connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/** {@link HOP_BY_HOP}, the headers HTTP/2 forbids (RFC 9113 §8.2.2), and Host (HTTP/2 says `:authority`). */
export const NOT_END_TO_END_H2: ReadonlySet<string> = new Set([...HOP_BY_HOP, "http2-settings", "host"]);

/**
 * The end-to-end headers of `h`: names lower case, no pseudo-headers, none of `drop`, none that the
 * Connection header lists, and none that names one of those, or Content-Length, with `_` for `-`.
 *
 * Node's parsers frame a message by `Transfer-Encoding` and `Content-Length` spelled exactly; some
 * servers (unicorn; Puma before 6.4.3) read `_` as `-` in a name. A request with `Content-Length: N`
 * and `Transfer_Encoding: chunked` was framed here by its length and went upstream with both, where
 * such a server framed it as chunked: the rest of the body became a second request, which took the
 * next request's head (with the credential injected for it) as its own, past the grant's methods and
 * paths. Such spellings never go on.
 */
export function endToEnd(h: IncomingHttpHeaders | OutgoingHttpHeaders, drop: ReadonlySet<string> = HOP_BY_HOP): IncomingHttpHeaders {
  const listed = new Set(
    String(h.connection ?? "")
      .split(",")
      .map((s) => folded(s.trim().toLowerCase()))
      .filter(Boolean),
  );
  const out: Record<string, string | string[] | number> = {};
  for (const [k, v] of Object.entries(h)) {
    const name = k.toLowerCase();
    if (v === undefined || name.startsWith(":") || drop.has(name) || listed.has(folded(name))) continue;
    if (name.includes("_")) {
      const as = folded(name);
      if (drop.has(as) || as === "content-length") continue;
    }
    out[name] = v;
  }
  return out as IncomingHttpHeaders;
}

/** `name` with each `_` read as `-`, as some servers read header names. */
function folded(name: string): string {
  return name.includes("_") ? name.replace(/_/g, "-") : name;
}

/** The host named by a Host or `:authority` value, canonical, or undefined if it names none (userinfo included). */
export function hostOf(value: string): string | undefined {
  const m = /^(\[[^\]]*\]|[^:@]*)(?::[0-9]*)?$/.exec(value);
  if (!m) return undefined;
  const parsed = parseHostLiteral(m[1]!);
  return typeof parsed === "object" ? (parsed.ip ? parsed.ip.text : parsed.name) : undefined;
}

/** The authority (`host[:port]`) of a tunnel's upstream, for Host and `:authority`: the port unless it is 443. */
export function authority(t: { readonly host: string; readonly port: number }): string {
  const h = t.host.includes(":") ? `[${t.host}]` : t.host;
  return t.port === 443 ? h : `${h}:${t.port}`;
}

/** Asks the egress policy about one request; a policy that throws becomes a rejected promise. */
export function askPolicy(
  prepare: (req: ProxiedRequest, tunnel: TunnelHandle) => Prepared | Promise<Prepared>,
  req: ProxiedRequest,
  tunnel: TunnelHandle,
): Promise<Prepared> {
  try {
    return Promise.resolve(prepare(req, tunnel));
  } catch (e) {
    return Promise.reject(e);
  }
}

/**
 * `h` with every header value scrubbed (a credential the upstream reflects, in a CORS
 * `Access-Control-Allow-Origin` echoing `Origin`, a `Location` keeping the query, a cookie, a trailer,
 * becomes its placeholder), as bytes: values are taken as latin1, as node's parsers give them. Names
 * are kept; a value with nothing to replace is the same string.
 */
export function scrubHeaders<T extends IncomingHttpHeaders | OutgoingHttpHeaders>(h: T, patterns: ScrubPatterns | undefined): T {
  if (!patterns) return h;
  const out: Record<string, unknown> = {};
  // Names too: an upstream may put what it received into a header's name (`x-seen-<value>: 1`).
  for (const [k, v] of Object.entries(h)) out[scrubName(k, patterns)] = Array.isArray(v) ? v.map((one: string) => scrubText(one, patterns)) : typeof v === "string" ? scrubText(v, patterns) : v;
  return out as T;
}

/**
 * A header name scrubbed. Names arrive lower-cased (Node's parser, HTTP/2), or in any case, and mean
 * the same in every case: the name is looked at in lower case against the values in lower case, and
 * when one is found the name goes on in lower case with the placeholder's lower-case form.
 */
export function scrubName(name: string, patterns: ScrubPatterns | undefined): string {
  if (!patterns || name.length < patterns.shortest) return name;
  const exact = scrubText(name, patterns);
  const lower = exact.toLowerCase();
  const scrubbed = scrubText(lower, patterns.lowerCased());
  return scrubbed === lower ? exact : scrubbed;
}

/**
 * An upstream's status line as it may be passed on: the status when it is a three-digit code of a
 * final answer (200–599; Node's client also reads `000` or `099`, which its server refuses to
 * write), and the reason phrase without the control bytes Node's server refuses (which its client
 * takes). Null status: answer 502 instead.
 */
export function relayableStatus(statusCode: number | undefined, statusMessage: string | undefined): { status: number | null; reason: string | undefined } {
  const status = statusCode !== undefined && Number.isInteger(statusCode) && statusCode >= 200 && statusCode <= 599 ? statusCode : null;
  const reason = (statusMessage ?? "").replace(/[^\t\x20-\x7e\x80-\xff]/g, "");
  return { status, reason: reason === "" ? undefined : reason };
}

/** One header value (or a reason phrase) scrubbed, latin1 in and out. */
export function scrubText(value: string, patterns: ScrubPatterns | undefined): string {
  // Latin1: one byte per character, so text shorter than the shortest secret cannot hold one.
  if (!patterns || value.length < patterns.shortest) return value;
  return scrub(Buffer.from(value, "latin1"), patterns).toString("latin1");
}
