/**
 * The SSRF guard: decides whether the proxy may open a connection to `host:port`, and if so hands back
 * the exact address it checked, so the connection goes there and nowhere else (no second lookup that
 * a DNS server could answer differently: DNS rebinding).
 *
 * Order: port allow-list; host syntax (a standard IP literal, or a DNS name; numeric forms such as
 * `127.1` or `0x7f.1` are refused, since resolvers read them as addresses); `localhost` names; one
 * lookup (all addresses); every address must pass {@link classifyIp}, or the whole host is refused.
 */
import { BlockList, createConnection, type LookupFunction, type Socket } from "node:net";
import { lookup } from "node:dns/promises";
import { domainToASCII } from "node:url";
import { quoteText } from "../base/text.js";
import { VaultError } from "../base/errors.js";
import { classifyIp, describeVerdict, embeddedIpv4, parseIp, verdictSubject, type AddressClass, type IpAddress } from "./address.js";
import { ProxyRefusal, type RefusalReason } from "./refusal.js";

/** Ports the proxy connects to unless configured otherwise. */
export const DEFAULT_PORTS: readonly number[] = [443, 80];

/** One address a resolver returned. */
export interface ResolvedAddress {
  address: string;
  family: number;
}

/** Resolves a DNS name to all of its addresses. Injectable, so tests never query a real DNS server. */
export type Resolver = (host: string) => Promise<readonly ResolvedAddress[]>;

/** `dns.lookup(host, { all: true, verbatim: true })`: what the system would connect to, in its order. */
export const systemResolver: Resolver = async (host) => lookup(host, { all: true, verbatim: true });

/** Options of {@link SsrfGuard}. */
export interface SsrfGuardOptions {
  /** Ports the proxy may connect to. Default {@link DEFAULT_PORTS}. */
  ports?: Iterable<number>;
  /** Default {@link systemResolver}. */
  resolve?: Resolver;
  /** Lookups slower than this are refused as `unresolvable`. Default 5000 ms. */
  resolveTimeoutMs?: number;
  /**
   * Ranges (CIDR, or single addresses) allowed although their class is refused: a private upstream the
   * owner configured, or a test's loopback server. Only loopback, private, link-local, CGNAT, reserved
   * and documentation addresses can be allowed this way; metadata, unspecified, multicast and broadcast
   * addresses are refused whatever this says.
   */
  allow?: readonly string[];
}

/** The guard's approval: connect to `address` (and only there). Made only by {@link SsrfGuard.check}. */
export interface CheckedTarget {
  /** The host as normalised (lower case, no trailing dot, punycode; IPv6 without brackets). */
  readonly host: string;
  readonly port: number;
  /** The address to connect to: the first one the resolver returned. */
  readonly address: string;
  readonly family: 4 | 6;
  /** Every address the name resolved to, all checked, in the resolver's order (for a fallback). */
  readonly addresses: readonly { address: string; family: 4 | 6 }[];
  /** For TLS: the name to send as SNI and to verify the certificate against; unset for an IP literal. */
  readonly servername: string | undefined;
}

/** What {@link connectChecked} passes to the socket-making function. */
export interface ConnectTo {
  /** The checked address (never the name). */
  host: string;
  port: number;
  family: 4 | 6;
  /** The name for SNI and certificate checks (`tls.connect({ ...to, servername })`), if not an IP. */
  servername: string | undefined;
}

/** Classes that {@link SsrfGuardOptions.allow} may open. */
const OVERRIDABLE: ReadonlySet<AddressClass> = new Set(["loopback", "private", "link_local", "cgnat", "reserved", "documentation"]);

/** A DNS label: letters, digits, hyphen inside, and underscore (which some real hosts carry). */
const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;
/** ASCII other than letters, digits, `.`, `-`, `_`: domainToASCII would drop a path or port silently. */
const NOT_NAME_ASCII = /[\x00-\x2c\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]/;
/** A last label libc and URL parsers read as a number: `1`, `0x7f`, `017700000001`. */
const NUMERIC_LABEL = /^(?:[0-9]+|0x[0-9a-f]*)$/i;

/** The targets {@link SsrfGuard.check} made: connectChecked accepts nothing else. */
const issued = new WeakSet<CheckedTarget>();

/**
 * The SSRF guard. One instance per proxy; `check` before every upstream connection, then
 * {@link connectChecked} (or {@link pinnedLookup}) with its result.
 */
export class SsrfGuard {
  readonly ports: ReadonlySet<number>;
  private readonly resolve: Resolver;
  private readonly timeoutMs: number;
  private readonly allowList: BlockList | undefined;

  constructor(options: SsrfGuardOptions = {}) {
    const ports = [...(options.ports ?? DEFAULT_PORTS)];
    for (const p of ports)
      if (!Number.isInteger(p) || p < 1 || p > 65535) throw new VaultError("invalid_request", `port ${p} in the proxy's port allow-list is not a port number (1-65535)`);
    this.ports = new Set(ports);
    this.resolve = options.resolve ?? systemResolver;
    this.timeoutMs = options.resolveTimeoutMs ?? 5000;
    this.allowList = options.allow?.length ? allowList(options.allow) : undefined;
  }

  /**
   * Checks `host:port` and resolves the name once. Resolves to the target to connect to, or rejects
   * with a {@link ProxyRefusal} naming the reason. `host` may be an IPv6 literal in brackets.
   */
  async check(host: string, port: number): Promise<CheckedTarget> {
    const refuse = (reason: RefusalReason, why: string, address?: string): ProxyRefusal =>
      new ProxyRefusal({ reason, host, port, ...(address !== undefined ? { address } : {}) }, `proxy refused ${quoteText(host)} port ${port}: ${why}`);

    if (!Number.isInteger(port) || !this.ports.has(port))
      throw refuse("port", `port ${port} is not on the proxy's port allow-list (${[...this.ports].join(", ")})`);

    const literal = parseHostLiteral(host);
    if (literal === "invalid") throw refuse("host_invalid", "not an IP address in standard form and not a valid DNS name");
    if (literal === "numeric")
      throw refuse("host_invalid", "a numeric host in a non-standard form (resolvers read it as an IP address); write the address as a.b.c.d");

    let name: string;
    let addresses: IpAddress[];
    if (literal.ip) {
      name = literal.ip.text;
      addresses = [literal.ip];
    } else {
      name = literal.name;
      if (name === "localhost" || name.endsWith(".localhost"))
        throw refuse("loopback", "localhost names always mean this host (RFC 6761)");
      addresses = await this.lookup(name, refuse);
    }

    for (const ip of addresses) {
      const v = classifyIp(ip);
      if (v.allowed || this.allowed(ip, v.class)) continue;
      const how = literal.ip ? describeVerdict(v) : `it resolves to ${verdictSubject(v)}, which is in ${v.range}: ${v.about}`;
      const hint = OVERRIDABLE.has(v.class) ? " (the owner can allow a range in the proxy's configuration)" : "";
      throw refuse(v.class, `${how}; the proxy connects to public addresses only${hint}`, v.address);
    }

    const first = addresses[0]!;
    const target: CheckedTarget = Object.freeze({
      host: name,
      port,
      address: first.text,
      family: first.family,
      addresses: Object.freeze(addresses.map((a) => Object.freeze({ address: a.text, family: a.family }))),
      servername: literal.ip ? undefined : name,
    });
    issued.add(target);
    return target;
  }

  private async lookup(name: string, refuse: (r: RefusalReason, why: string) => ProxyRefusal): Promise<IpAddress[]> {
    let timer: NodeJS.Timeout | undefined;
    let found: readonly ResolvedAddress[];
    try {
      found = await Promise.race([
        this.resolve(name),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(Object.assign(new Error("timeout"), { code: "ETIMEOUT" })), this.timeoutMs);
        }),
      ]);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      throw refuse("unresolvable", `the name could not be resolved (${typeof code === "string" ? code : "lookup failed"})`);
    } finally {
      clearTimeout(timer);
    }
    const seen = new Map<string, IpAddress>();
    for (const r of found) {
      const ip = typeof r?.address === "string" ? parseIp(r.address) : undefined;
      if (!ip) throw refuse("unresolvable", `the resolver returned ${quoteText(String(r?.address))}, which is not an IP address`);
      seen.set(ip.text, ip);
    }
    if (seen.size === 0) throw refuse("unresolvable", "the name has no address");
    return [...seen.values()];
  }

  private allowed(ip: IpAddress, cls: AddressClass): boolean {
    if (!this.allowList || !OVERRIDABLE.has(cls)) return false;
    // An embedded IPv4 address is what was refused, so it is what an allow range must name.
    const inner = embeddedIpv4(ip);
    if (inner.length > 0) return inner.every((e) => this.allowList!.check(e.ipv4.text, "ipv4") || isPublic(e.ipv4));
    return this.allowList.check(ip.text, ip.family === 4 ? "ipv4" : "ipv6");
  }
}

/** An embedded address that is public needs no allow range (Teredo carries two). */
function isPublic(ip: IpAddress): boolean {
  return classifyIp(ip).allowed;
}

function allowList(ranges: readonly string[]): BlockList {
  const list = new BlockList();
  for (const r of ranges) {
    const [net, bits, extra] = r.split("/");
    const ip = net === undefined ? undefined : parseIp(net);
    const max = ip?.family === 4 ? 32 : 128;
    const prefix = bits === undefined ? max : /^[0-9]{1,3}$/.test(bits) ? Number(bits) : NaN;
    if (!ip || extra !== undefined || !(prefix >= 0 && prefix <= max))
      throw new VaultError("invalid_request", `${quoteText(r)} in the proxy's allowed ranges is not an address or a CIDR range (e.g. 10.1.2.0/24)`);
    list.addSubnet(ip.text, prefix, ip.family === 4 ? "ipv4" : "ipv6");
  }
  return list;
}

/**
 * What `host` is: an IP literal in standard form (IPv6 with or without brackets), a DNS name
 * (normalised), `numeric` (a form resolvers would read as an IPv4 address) or `invalid`.
 */
export function parseHostLiteral(host: string): { ip: IpAddress; name?: undefined } | { ip?: undefined; name: string } | "numeric" | "invalid" {
  if (host.startsWith("[")) {
    const ip = host.endsWith("]") ? parseIp(host.slice(1, -1)) : undefined;
    return ip?.family === 6 ? { ip } : "invalid";
  }
  const ip = parseIp(host);
  if (ip) return { ip };
  if (host.length === 0 || host.length > 254 || NOT_NAME_ASCII.test(host)) return "invalid";
  const bare = host.endsWith(".") ? host.slice(0, -1) : host;
  const labels = bare.split(".");
  // Checked before IDNA: domainToASCII itself turns "0x7f.1" into "127.0.0.1".
  if (NUMERIC_LABEL.test(labels[labels.length - 1]!)) return "numeric";
  const name = domainToASCII(bare);
  if (name === "" || parseIp(name) || name.length > 253) return "invalid";
  const asciiLabels = name.split(".");
  if (!asciiLabels.every((l) => LABEL.test(l))) return "invalid";
  if (NUMERIC_LABEL.test(asciiLabels[asciiLabels.length - 1]!)) return "numeric";
  return { name };
}

/**
 * Opens the connection the guard approved: calls `create` with the checked address (never the name),
 * the port, the family and the name for TLS. `create` defaults to `net.createConnection`; pass
 * `(to) => tls.connect({ ...to, servername: to.servername })` for TLS. Throws if `target` was not made
 * by {@link SsrfGuard.check}, so a hand-made object cannot skip the guard.
 */
export function connectChecked<T = Socket>(target: CheckedTarget, create?: (to: ConnectTo) => T): T {
  if (!issued.has(target)) throw new VaultError("internal", "connectChecked was given a target the SSRF guard did not check");
  const to: ConnectTo = { host: target.address, port: target.port, family: target.family, servername: target.servername };
  return create ? create(to) : (createConnection({ host: to.host, port: to.port, family: to.family }) as T);
}

/**
 * A `lookup` option for `http.request`, `https.request`, `tls.connect` or `net.connect` that answers
 * with the checked address only: use it where the client must be given the name (Host header, SNI)
 * but must connect to what the guard checked. It fails for any other name.
 */
export function pinnedLookup(target: CheckedTarget): LookupFunction {
  if (!issued.has(target)) throw new VaultError("internal", "pinnedLookup was given a target the SSRF guard did not check");
  return ((hostname: string, options: { all?: boolean }, callback: (...args: unknown[]) => void) => {
    const asked = hostname.startsWith("[") ? hostname.slice(1, -1) : hostname;
    const normal = parseHostLiteral(asked);
    const same = typeof normal === "object" && (normal.ip ? normal.ip.text : normal.name) === target.host;
    if (!same) {
      const err = Object.assign(new Error(`pinned lookup for ${target.host} was asked for ${JSON.stringify(hostname)}`), { code: "ENOTFOUND" });
      process.nextTick(callback, err);
      return;
    }
    if (options?.all) process.nextTick(callback, null, [{ address: target.address, family: target.family }]);
    else process.nextTick(callback, null, target.address, target.family);
  }) as LookupFunction;
}
