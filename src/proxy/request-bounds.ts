/**
 * What the injecting proxy checks of a request, beyond the vault's method and path check, before it
 * sends a credential that a `methods` or `paths` rule bounds: that the upstream will act on the method
 * and path the vault checked, and not on others the request names another way.
 *
 * - Method-override headers (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`: Rails and
 *   Rack, Express's method-override, Laravel, Google APIs read them as the real method) are refused
 *   under a `methods` rule unless they name one method it allows; names with `_` for `-` count too.
 * - A `_method` query parameter (Rails, Laravel, Express's method-override read it, on POST; also as
 *   PHP names it: `.method`, ` _method`) is refused under a `methods` rule unless it names one method
 *   the rule allows. (A `_method` field in
 *   a form body is not seen: the body streams; docs/proxy.md says so.)
 * - URL-override headers (`X-Original-URL`, `X-Rewrite-URL`: IIS URL Rewrite, older Symfony and Zend
 *   read them as the real path) are refused under a `paths` rule, whatever they say.
 * - Under a `paths` rule, a path whose canonical form drops segments (`/a/../ok/x`, `/a/%2e%2e/ok/x`,
 *   `//ok/x`) is refused: whether the upstream reads it as the canonical path depends on how it
 *   resolves segments, and ordinary clients (curl, fetch, git) resolve them before sending. Any other
 *   path goes upstream in the canonical form the vault matched, the query as sent.
 *
 * Pure: the caller (./lease-egress.ts) turns a refusal into the agent's answer and the audit report.
 */
import { rewritesSegments } from "../vault/http-path.js";
import type { IncomingHttpHeaders } from "node:http";

/** Headers that common frameworks read as the request's real method. */
const METHOD_OVERRIDES = [
  ["x-http-method-override", "X-HTTP-Method-Override"],
  ["x-http-method", "X-HTTP-Method"],
  ["x-method-override", "X-Method-Override"],
] as const;

/** Headers that some servers read as the request's real path. */
const URL_OVERRIDES = [
  ["x-original-url", "X-Original-URL"],
  ["x-rewrite-url", "X-Rewrite-URL"],
] as const;

/** A request the proxy may not send with a bounded credential: the status, the reason code and the agent's detail. */
export interface BoundsRefusal {
  status: 400 | 403;
  reason: "override_header" | "request_path";
  detail: string;
}

/**
 * Why `headers` name a method or path other than the one checked, under the `methods` (null: any) and
 * `paths` (restricted or not) bounds of a credential, or null. Header names arrive in lower case (h1
 * and h2 alike). A header value is never quoted: the agent chose it.
 */
export function overrideRefusal(headers: IncomingHttpHeaders, methods: readonly string[] | null, paths: boolean): BoundsRefusal | null {
  if (!paths && methods === null) return null;
  const byName = overrideHeaders(headers);
  if (byName === null) return null;
  if (paths)
    for (const [name, shown] of URL_OVERRIDES)
      if (byName.has(name))
        return {
          status: 403,
          reason: "override_header",
          detail: `the request carries ${shown}, which some servers read as the path to serve instead of the one requested; the grant restricts paths, so lessor does not send its credential with it: drop the header and request that path itself`,
        };
  if (methods === null) return null;
  for (const [name, shown] of METHOD_OVERRIDES) {
    const v = byName.get(name);
    if (v === undefined) continue;
    const values = v.flatMap((one) => one.split(","));
    const named = values.map((one) => one.trim().toUpperCase());
    if (named.length === 1 && methods.includes(named[0]!)) continue;
    return {
      status: 403,
      reason: "override_header",
      detail: `the request carries ${shown}, which servers read as its method, naming ${named.length === 1 ? "a method" : "methods"} the grant does not allow (it allows ${methods.join(", ")}); lessor does not send its credential with it: drop the header, or send the request with that method if the grant allows it`,
    };
  }
  return null;
}

/**
 * The values of the override headers in `headers` by their hyphenated lower-case name, or null when
 * there is none. A name is matched with `_` read as `-`: Rack and Puma, PHP and other CGI-style servers
 * turn both into the same variable (`HTTP_X_HTTP_METHOD_OVERRIDE`), so `x_http_method_override` and
 * `X-HTTP_Method-Override` are the header too.
 */
function overrideHeaders(headers: IncomingHttpHeaders): Map<string, string[]> | null {
  let out: Map<string, string[]> | null = null;
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined || !k.startsWith("x")) continue;
    const name = k.replace(/_/g, "-");
    if (!OVERRIDE_NAMES.has(name)) continue;
    out ??= new Map();
    out.set(name, [...(out.get(name) ?? []), ...(Array.isArray(v) ? v : [v])]);
  }
  return out;
}

/** Every override header's lower-case hyphenated name. */
const OVERRIDE_NAMES: ReadonlySet<string> = new Set([...METHOD_OVERRIDES, ...URL_OVERRIDES].map(([name]) => name));

/**
 * A query parameter's name as PHP stores it (leading spaces dropped, the name ended at its first NUL,
 * since php_register_variable_ex copies it as a C string; space `.` `[` as `_`) in lower case:
 * `.method`, ` _method`, `_method%00x` and `_METHOD` are all taken for `_method`.
 */
const phpName = (k: string): string => k.replace(/^ +/, "").split("\0", 1)[0]!.replace(/[ .[]/g, "_").toLowerCase();

/**
 * Why the query of `target` names a method other than the ones `methods` allows (a `_method`
 * parameter, in any case and encoding), or null. The value is not quoted: the agent chose it.
 */
export function queryMethodRefusal(target: string, methods: readonly string[] | null): BoundsRefusal | null {
  if (methods === null) return null;
  const q = target.indexOf("?");
  if (q < 0) return null;
  let params: URLSearchParams;
  try {
    params = new URLSearchParams(target.slice(q + 1));
  } catch {
    return null;
  }
  const named: string[] = [];
  for (const [k, v] of params) if (phpName(k) === "_method") named.push(v.trim().toUpperCase());
  if (named.length === 0 || (named.length === 1 && methods.includes(named[0]!))) return null;
  return {
    status: 403,
    reason: "override_header",
    detail: `the query carries _method, which servers read as the request's method, naming ${named.length === 1 ? "a method" : "methods"} the grant does not allow (it allows ${methods.join(", ")}); lessor does not send its credential with it: drop the parameter, or send the request with that method if the grant allows it`,
  };
}

/**
 * Why the path of `target` (origin form) may not go upstream under a `paths` rule, or null: its
 * canonical form drops segments. `canonical` is the canonical path, for the message (printable ASCII).
 */
export function pathRefusal(target: string, canonical: string): BoundsRefusal | null {
  if (!rewritesSegments(target)) return null;
  const shown = canonical.length > 120 ? `${canonical.slice(0, 120)}…` : canonical;
  return {
    status: 400,
    reason: "request_path",
    detail: `the path has "." or ".." segments (encoded ones too) or "//", which servers resolve differently; the grant restricts paths, so lessor sends its credential only with the canonical path: send ${JSON.stringify(shown)} instead`,
  };
}

/** `target` with its path replaced by `canonical`, the query (after the first `?`) as sent. */
export function withCanonicalPath(target: string, canonical: string): string {
  const q = target.indexOf("?");
  return q < 0 ? canonical : canonical + target.slice(q);
}
