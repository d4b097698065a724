/**
 * The `[proxy]` table of lessor.toml: the injecting proxy that `lessor run` starts (docs/proxy.md).
 *
 * ```toml
 * [proxy]
 * egress = "strict"                  # hosts no lease covers: "strict" refuses (403), "open" tunnels untouched
 * ports = [443, 80]                  # upstream ports the proxy may connect to
 * allow = ["10.20.0.0/16"]           # private ranges the SSRF guard lets through (your own upstreams)
 * hosts = { "git.internal" = "10.20.0.5" }  # fixed addresses for names (as curl --resolve)
 * upstream_ca = "~/corp-ca.pem"      # extra CA trusted for upstreams, besides the system roots
 *
 * [[proxy.inject]]                   # how a secret's credential is added (default: placeholder in headers)
 * secret = "github-token"            # scope/name or name (global scope)
 * mode = "bearer"                    # placeholder | bearer | basic | header | query
 * header = "X-Api-Key"               # mode = "header"
 * param = "api_key"                  # mode = "query"
 * username = "x-access-token"        # mode = "basic" (the secret is the password)
 * body = true                        # mode = "placeholder": also replace it in request bodies
 * websocket = true                   # mode = "placeholder": also replace it in WebSocket client frames
 * ```
 *
 * `body` and `websocket` widen where a placeholder is swapped for its credential. Since the proxy cannot
 * read a body (or a future frame) before deciding, a rule with either one spends one use of the lease
 * for every request with a body (or every WebSocket handshake) to a host the lease covers, whether the
 * placeholder turns up in it or not (src/proxy/lease-egress.ts).
 */
import { isIP } from "node:net";
import { VaultError } from "../base/errors.js";
import { parseRefString, refString } from "../base/names.js";
import { fail } from "./fields.js";

/** How hosts no lease covers are treated. */
export const EGRESS_MODES = ["strict", "open"] as const;
export type EgressMode = (typeof EGRESS_MODES)[number];

/** How a secret's credential is added to a request. */
export const INJECT_MODES = ["placeholder", "bearer", "basic", "header", "query"] as const;
export type InjectMode = (typeof INJECT_MODES)[number];

/** One `[[proxy.inject]]` rule. */
export interface InjectRule {
  /** `scope/name`. */
  secret: string;
  mode: InjectMode;
  /** mode "header": the header's name (lower case). */
  header?: string;
  /** mode "query": the query parameter. */
  param?: string;
  /** mode "basic": the user name (the secret is the password). */
  username?: string;
  /** mode "placeholder": the placeholder is replaced in request bodies too (set only when true). */
  body?: true;
  /** mode "placeholder": the placeholder is replaced in WebSocket client frames too (set only when true). */
  websocket?: true;
}

/** The `[proxy]` table, with defaults filled in. */
export interface ProxyConfig {
  egress: EgressMode;
  ports: number[];
  allow: string[];
  hosts: Record<string, string>;
  /** A path as written (`~/` is the owner's home), or null. */
  upstreamCa: string | null;
  inject: InjectRule[];
}

export const DEFAULT_PROXY_CONFIG: ProxyConfig = { egress: "strict", ports: [443, 80], allow: [], hosts: {}, upstreamCa: null, inject: [] };

const FIELDS = ["egress", "ports", "allow", "hosts", "upstream_ca", "inject"] as const;
const RULE_FIELDS = ["secret", "mode", "header", "param", "username", "body", "websocket"] as const;
/** An HTTP header name (RFC 9110 token). */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/;
/** Headers the proxy owns or that frame the message: a rule may not set them. */
const RESERVED_HEADERS = new Set(["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "proxy-authorization", "keep-alive"]);


function table(source: string, where: string, v: unknown): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) fail(source, where, "expected a table");
  return v as Record<string, unknown>;
}

function text(source: string, where: string, v: unknown, max = 256): string {
  if (typeof v !== "string" || v.length === 0 || v.length > max || /[\x00-\x1f\x7f]/.test(v)) fail(source, where, `expected a string of 1 to ${max} printable characters`);
  return v;
}

function parseRule(source: string, i: number, raw: unknown): InjectRule {
  const where = `[[proxy.inject]] #${i + 1}`;
  const t = table(source, where, raw);
  for (const k of Object.keys(t)) if (!(RULE_FIELDS as readonly string[]).includes(k)) fail(source, where, `unknown field "${k}" (known: ${RULE_FIELDS.join(", ")})`);
  let secret: string;
  try {
    secret = refString(parseRefString(text(source, `${where} secret`, t.secret, 300)));
  } catch (e) {
    if (e instanceof VaultError && e.code !== "config_invalid") fail(source, `${where} secret`, e.message);
    throw e;
  }
  const mode = t.mode ?? "placeholder";
  if (!(INJECT_MODES as readonly unknown[]).includes(mode)) fail(source, `${where} mode`, `expected one of ${INJECT_MODES.map((m) => `"${m}"`).join(", ")}, got ${JSON.stringify(mode)}`);
  const rule: InjectRule = { secret, mode: mode as InjectMode };
  const need = (field: "header" | "param" | "username", forMode: InjectMode): void => {
    if (rule.mode === forMode && t[field] === undefined) fail(source, where, `mode = "${forMode}" needs ${field} = "…"`);
    if (rule.mode !== forMode && t[field] !== undefined) fail(source, `${where} ${field}`, `only mode = "${forMode}" takes ${field}`);
  };
  need("header", "header");
  need("param", "query");
  if (t.username !== undefined && rule.mode !== "basic") fail(source, `${where} username`, 'only mode = "basic" takes username');
  if (t.header !== undefined) {
    const h = text(source, `${where} header`, t.header, 64);
    if (!TOKEN.test(h)) fail(source, `${where} header`, `${JSON.stringify(h)} is not a header name`);
    // Spelled with "_" for "-" too: some servers read it as the same header (src/proxy/headers.ts).
    if (RESERVED_HEADERS.has(h.toLowerCase().replace(/_/g, "-"))) fail(source, `${where} header`, `${h} frames the message or belongs to the proxy; name the header the API reads the key from`);
    rule.header = h.toLowerCase();
  }
  if (t.param !== undefined) rule.param = text(source, `${where} param`, t.param, 128);
  if (t.username !== undefined) {
    const u = text(source, `${where} username`, t.username, 256);
    if (u.includes(":")) fail(source, `${where} username`, "a Basic user name cannot contain a colon");
    rule.username = u;
  }
  for (const field of ["body", "websocket"] as const) {
    const v = t[field];
    if (v === undefined) continue;
    if (typeof v !== "boolean") fail(source, `${where} ${field}`, `expected true or false, got ${JSON.stringify(v)}`);
    // The other modes add the credential themselves: there is no placeholder in a body or frame to swap.
    if (rule.mode !== "placeholder")
      fail(source, `${where} ${field}`, `only mode = "placeholder" takes ${field} (mode "${rule.mode}" adds the credential itself; there is no placeholder to replace)`);
    if (v) rule[field] = true;
  }
  return rule;
}

/** Parses the `[proxy]` table (`raw` is undefined when absent). */
export function parseProxyConfig(source: string, raw: unknown): ProxyConfig {
  const out: ProxyConfig = structuredClone(DEFAULT_PROXY_CONFIG);
  if (raw === undefined) return out;
  const t = table(source, "[proxy]", raw);
  for (const k of Object.keys(t)) if (!(FIELDS as readonly string[]).includes(k)) fail(source, "[proxy]", `unknown field "${k}" (known: ${FIELDS.join(", ")})`);
  if (t.egress !== undefined) {
    if (!(EGRESS_MODES as readonly unknown[]).includes(t.egress)) fail(source, "[proxy] egress", `expected "strict" or "open", got ${JSON.stringify(t.egress)}`);
    out.egress = t.egress as EgressMode;
  }
  if (t.ports !== undefined) {
    if (!Array.isArray(t.ports) || t.ports.length === 0 || !t.ports.every((p) => Number.isInteger(p) && (p as number) >= 1 && (p as number) <= 65535))
      fail(source, "[proxy] ports", "expected a non-empty list of port numbers, such as [443, 80]");
    out.ports = [...new Set(t.ports as number[])];
  }
  if (t.allow !== undefined) {
    if (!Array.isArray(t.allow)) fail(source, "[proxy] allow", 'expected a list of addresses or CIDR ranges, such as ["10.20.0.0/16"]');
    out.allow = (t.allow as unknown[]).map((a, i) => {
      const s = text(source, `[proxy] allow item ${i + 1}`, a, 64);
      const [addr, bits, more] = s.split("/");
      if (more !== undefined || isIP(addr!) === 0 || (bits !== undefined && !/^[0-9]{1,3}$/.test(bits)))
        fail(source, `[proxy] allow item ${i + 1}`, `${JSON.stringify(s)} is not an address or CIDR range`);
      return s;
    });
  }
  if (t.hosts !== undefined) {
    const h = table(source, "[proxy] hosts", t.hosts);
    for (const [name, addr] of Object.entries(h)) {
      if (!/^[a-z0-9_.-]{1,253}$/i.test(name) || isIP(name) !== 0) fail(source, "[proxy] hosts", `${JSON.stringify(name)} is not a host name`);
      if (typeof addr !== "string" || isIP(addr) === 0) fail(source, `[proxy] hosts ${name}`, "expected an IP address, such as \"10.20.0.5\"");
      out.hosts[name.toLowerCase().replace(/\.$/, "")] = addr;
    }
  }
  if (t.upstream_ca !== undefined) {
    const p = text(source, "[proxy] upstream_ca", t.upstream_ca, 4096);
    if (!p.startsWith("/") && !p.startsWith("~/")) fail(source, "[proxy] upstream_ca", `${JSON.stringify(p)} is not an absolute path; write /path or ~/path`);
    out.upstreamCa = p;
  }
  if (t.inject !== undefined) {
    if (!Array.isArray(t.inject)) fail(source, "[proxy] inject", "expected [[proxy.inject]] tables");
    out.inject = (t.inject as unknown[]).map((r, i) => parseRule(source, i, r));
    const seen = new Set<string>();
    for (const r of out.inject) {
      if (seen.has(r.secret)) fail(source, "[[proxy.inject]]", `secret ${r.secret} has two rules; keep one`);
      seen.add(r.secret);
    }
  }
  return out;
}
