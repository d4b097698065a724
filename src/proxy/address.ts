/**
 * IP addresses for the SSRF guard: a strict parser and a classifier that says whether the proxy may
 * connect to an address, and if not, why.
 *
 * Parsing is strict on purpose. Only the standard forms are IP addresses: dotted-decimal IPv4 with four
 * parts and no leading zeros (what `net.isIPv4` accepts), and IPv6 text (`net.isIPv6`) without a zone
 * id. Forms such as `127.1`, `0x7f.1`, `017700000001` or `2130706433` are not addresses here: libc and
 * URL parsers read them as 127.0.0.1, and a guard that parsed them differently from the code that
 * connects would be bypassed. The guard (./guard.ts) refuses them as host names instead.
 *
 * Classification is by range tables, most specific first. IPv6 addresses that carry an IPv4 address
 * (mapped, compatible, SIIT, NAT64, 6to4, Teredo) are judged by the IPv4 address inside, because that
 * is where the packets can end up. IPv6 outside global unicast (2000::/3) is refused as reserved.
 */
import { isIPv4, isIPv6 } from "node:net";

/** Why an address is refused. */
export type AddressClass =
  | "loopback"
  | "private"
  | "link_local"
  | "cgnat"
  | "metadata"
  | "unspecified"
  | "multicast"
  | "broadcast"
  | "reserved"
  | "documentation";

/** A parsed IP address: 4 bytes (IPv4) or 16 bytes (IPv6), network order. */
export interface IpAddress {
  readonly family: 4 | 6;
  readonly bytes: Uint8Array;
  /** Canonical text: dotted decimal, or RFC 5952 IPv6 (lower case, longest zero run as `::`). */
  readonly text: string;
}

/** How an IPv6 address carries an IPv4 address. */
export type EmbeddingForm =
  | "IPv4-mapped (::ffff:0:0/96)"
  | "IPv4-translated (::ffff:0:0:0/96)"
  | "IPv4-compatible (::/96)"
  | "NAT64 (64:ff9b::/96)"
  | "local NAT64 (64:ff9b:1::/48)"
  | "6to4 (2002::/16)"
  | "Teredo server (2001::/32)"
  | "Teredo client (2001::/32)";

/** An IPv4 address found inside an IPv6 address. */
export interface Embedded {
  readonly form: EmbeddingForm;
  readonly ipv4: string;
}

/** The classifier's answer for one address. */
export type AddressVerdict =
  | { readonly allowed: true; readonly address: string; readonly embedded?: Embedded }
  | {
      readonly allowed: false;
      readonly address: string;
      readonly class: AddressClass;
      /** The range that matched, e.g. `10.0.0.0/8` (for an embedded address, the IPv4 range). */
      readonly range: string;
      /** What the range is, for people, e.g. `private network (RFC 1918)`. */
      readonly about: string;
      /** Set when the refused address is an IPv4 address inside this IPv6 address. */
      readonly embedded?: Embedded;
    };

interface Range {
  readonly bytes: Uint8Array;
  readonly bits: number;
  readonly text: string;
  readonly class: AddressClass;
  readonly about: string;
}

function range(cidr: string, cls: AddressClass, about: string): Range {
  const [net, bits] = cidr.split("/") as [string, string];
  const ip = parseIp(net);
  if (!ip) throw new Error(`bad range ${cidr}`);
  return { bytes: ip.bytes, bits: Number(bits), text: cidr, class: cls, about };
}

const METADATA = "cloud metadata service";

/**
 * The range tables, made at the first address checked rather than when the module loads: parsing
 * their IPv6 text runs node:net's IPv6 pattern, whose first use compiles it (~10 ms), and every
 * `lessor run` loads this module before its child starts but checks no address until the child
 * connects somewhere.
 */
let tables: { V4: readonly Range[]; V6: readonly Range[]; V6_IETF: Range; V6_GLOBAL: Range } | null = null;
function ranges(): NonNullable<typeof tables> {
  return (tables ??= makeTables());
}

function makeTables(): NonNullable<typeof tables> {
  /** IPv4 ranges the proxy never connects to, most specific first (metadata before link-local). */
  const V4: readonly Range[] = [
    range("169.254.169.254/32", "metadata", `${METADATA} (AWS, GCP, Azure, OCI, DigitalOcean, OpenStack)`),
    range("169.254.170.2/32", "metadata", `${METADATA} (AWS ECS task credentials)`),
    range("169.254.170.23/32", "metadata", `${METADATA} (AWS EKS Pod Identity)`),
    range("100.100.100.200/32", "metadata", `${METADATA} (Alibaba Cloud)`),
    range("192.0.0.192/32", "metadata", `${METADATA} (Oracle Cloud, legacy)`),
    range("0.0.0.0/8", "unspecified", "unspecified / this network (connecting to 0.0.0.0 reaches this host)"),
    range("127.0.0.0/8", "loopback", "loopback (this host)"),
    range("10.0.0.0/8", "private", "private network (RFC 1918)"),
    range("172.16.0.0/12", "private", "private network (RFC 1918)"),
    range("192.168.0.0/16", "private", "private network (RFC 1918)"),
    range("100.64.0.0/10", "cgnat", "carrier-grade NAT shared space (RFC 6598)"),
    range("169.254.0.0/16", "link_local", "link-local (RFC 3927)"),
    range("192.0.0.0/24", "reserved", "IETF protocol assignments (RFC 6890)"),
    range("192.0.2.0/24", "documentation", "documentation TEST-NET-1 (RFC 5737)"),
    range("198.51.100.0/24", "documentation", "documentation TEST-NET-2 (RFC 5737)"),
    range("203.0.113.0/24", "documentation", "documentation TEST-NET-3 (RFC 5737)"),
    range("198.18.0.0/15", "reserved", "benchmarking (RFC 2544)"),
    range("192.88.99.0/24", "reserved", "deprecated 6to4 relay anycast (RFC 7526)"),
    range("224.0.0.0/4", "multicast", "multicast"),
    range("255.255.255.255/32", "broadcast", "limited broadcast"),
    range("240.0.0.0/4", "reserved", "reserved for future use (RFC 1112)"),
  ];

  /** IPv6 ranges refused outright (before the embedded forms are looked at). */
  const V6: readonly Range[] = [
    range("fd00:ec2::254/128", "metadata", `${METADATA} (AWS, IPv6)`),
    range("fd00:ec2::23/128", "metadata", `${METADATA} (AWS EKS Pod Identity, IPv6)`),
    range("fd20:ce::254/128", "metadata", `${METADATA} (GCP, IPv6)`),
    range("::/128", "unspecified", "unspecified (connecting to :: reaches this host)"),
    range("::1/128", "loopback", "loopback (this host)"),
    range("100::/64", "reserved", "discard-only (RFC 6666)"),
    range("2001:db8::/32", "documentation", "documentation (RFC 3849)"),
    range("3fff::/20", "documentation", "documentation (RFC 9637)"),
    range("fc00::/7", "private", "unique local addresses (RFC 4193)"),
    range("fe80::/10", "link_local", "link-local (RFC 4291)"),
    range("fec0::/10", "private", "deprecated site-local (RFC 3879)"),
    range("ff00::/8", "multicast", "multicast"),
  ];

  /** IETF protocol assignments, checked after Teredo (2001::/32), which lies inside it. */
  const V6_IETF = range("2001::/23", "reserved", "IETF protocol assignments (RFC 6890)");
  /** Global unicast: everything outside it that no rule above matched is refused as reserved. */
  const V6_GLOBAL = range("2000::/3", "reserved", "outside global unicast 2000::/3 (not routable)");
  return { V4, V6, V6_IETF, V6_GLOBAL };
}

function inRange(bytes: Uint8Array, r: Range): boolean {
  if (bytes.length !== r.bytes.length) return false;
  const full = r.bits >> 3;
  for (let i = 0; i < full; i++) if (bytes[i] !== r.bytes[i]) return false;
  const rest = r.bits & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return ((bytes[full]! ^ r.bytes[full]!) & mask) === 0;
}

function prefixIs(bytes: Uint8Array, prefix: readonly number[]): boolean {
  return prefix.every((b, i) => bytes[i] === b);
}

function v4Text(b: Uint8Array): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

function v6Text(b: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((b[i]! << 8) | b[i + 1]!);
  // RFC 5952: the longest run of two or more zero groups becomes "::" (the first one on a tie).
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestAt = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestAt < 0) return hex.join(":");
  return `${hex.slice(0, bestAt).join(":")}::${hex.slice(bestAt + bestLen).join(":")}`;
}

/** The 16 bytes of IPv6 text that `net.isIPv6` accepted (no zone id). */
function v6Bytes(text: string): Uint8Array {
  const out = new Uint8Array(16);
  const groupsOf = (part: string): number[] => {
    if (part === "") return [];
    const gs: number[] = [];
    for (const g of part.split(":")) {
      if (g.includes(".")) {
        const v4 = g.split(".").map(Number);
        gs.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else gs.push(parseInt(g, 16));
    }
    return gs;
  };
  const at = text.indexOf("::");
  const head = groupsOf(at < 0 ? text : text.slice(0, at));
  const tail = at < 0 ? [] : groupsOf(text.slice(at + 2));
  const groups = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  groups.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  return out;
}

/**
 * Parses the standard text of an IP address, or returns undefined. IPv6 is given without brackets;
 * a zone id (`fe80::1%eth0`) is not accepted (it names a local interface, never a public host).
 */
export function parseIp(text: string): IpAddress | undefined {
  if (isIPv4(text)) {
    const bytes = Uint8Array.from(text.split(".").map(Number));
    return { family: 4, bytes, text: v4Text(bytes) };
  }
  // Every IPv6 text has a colon: a host name is told apart without node:net's IPv6 pattern, whose
  // first use compiles it (~10 ms, at the start of every proxy, which checks its CA's host names).
  if (text.includes(":") && !text.includes("%") && isIPv6(text)) {
    const bytes = v6Bytes(text);
    return { family: 6, bytes, text: v6Text(bytes) };
  }
  return undefined;
}

/** The IPv4 address inside `b` (16 bytes) at `at`, optionally bit-inverted (Teredo's client). */
function v4At(b: Uint8Array, at: number, invert = false): IpAddress {
  const bytes = b.slice(at, at + 4).map((x) => (invert ? ~x & 0xff : x));
  return { family: 4, bytes, text: v4Text(bytes) };
}

/** The IPv4 addresses an IPv6 address carries, by the forms the guard knows. */
export function embeddedIpv4(ip: IpAddress): { form: EmbeddingForm; ipv4: IpAddress }[] {
  const b = ip.bytes;
  if (ip.family !== 6) return [];
  const zero = (from: number, to: number): boolean => b.slice(from, to).every((x) => x === 0);
  if (zero(0, 10) && b[10] === 0xff && b[11] === 0xff) return [{ form: "IPv4-mapped (::ffff:0:0/96)", ipv4: v4At(b, 12) }];
  if (zero(0, 8) && b[8] === 0xff && b[9] === 0xff && zero(10, 12))
    return [{ form: "IPv4-translated (::ffff:0:0:0/96)", ipv4: v4At(b, 12) }];
  // ::/96 minus :: and ::1, which the range table has already refused.
  if (zero(0, 12)) return [{ form: "IPv4-compatible (::/96)", ipv4: v4At(b, 12) }];
  if (prefixIs(b, [0x00, 0x64, 0xff, 0x9b]) && zero(4, 12)) return [{ form: "NAT64 (64:ff9b::/96)", ipv4: v4At(b, 12) }];
  if (prefixIs(b, [0x00, 0x64, 0xff, 0x9b, 0x00, 0x01])) return [{ form: "local NAT64 (64:ff9b:1::/48)", ipv4: v4At(b, 12) }];
  if (prefixIs(b, [0x20, 0x02])) return [{ form: "6to4 (2002::/16)", ipv4: v4At(b, 2) }];
  if (prefixIs(b, [0x20, 0x01, 0x00, 0x00]))
    return [
      { form: "Teredo server (2001::/32)", ipv4: v4At(b, 4) },
      { form: "Teredo client (2001::/32)", ipv4: v4At(b, 12, true) },
    ];
  return [];
}

function refused(address: string, r: Range, embedded?: Embedded): AddressVerdict {
  return { allowed: false, address, class: r.class, range: r.text, about: r.about, ...(embedded ? { embedded } : {}) };
}

function classifyV4(ip: IpAddress): Range | undefined {
  return ranges().V4.find((r) => inRange(ip.bytes, r));
}

/**
 * Whether the proxy may connect to `ip`, and if not, which range refused it. Accepts a parsed address
 * or its text; text that {@link parseIp} does not accept throws a TypeError (the guard never passes
 * one: it parses first and refuses what does not parse).
 */
export function classifyIp(ip: IpAddress | string): AddressVerdict {
  const addr = typeof ip === "string" ? parseIp(ip) : ip;
  if (!addr) throw new TypeError(`not an IP address: ${JSON.stringify(ip)}`);
  if (addr.family === 4) {
    const r = classifyV4(addr);
    return r ? refused(addr.text, r) : { allowed: true, address: addr.text };
  }
  const { V6, V6_IETF, V6_GLOBAL } = ranges();
  const direct = V6.find((r) => inRange(addr.bytes, r));
  if (direct) return refused(addr.text, direct);
  const inner = embeddedIpv4(addr);
  for (const e of inner) {
    const r = classifyV4(e.ipv4);
    if (r) return refused(addr.text, r, { form: e.form, ipv4: e.ipv4.text });
  }
  if (inner.length > 0) {
    const first = inner[0]!;
    // Teredo lies in 2001::/23, which is otherwise refused; its embedded addresses were judged above.
    return { allowed: true, address: addr.text, embedded: { form: first.form, ipv4: first.ipv4.text } };
  }
  if (inRange(addr.bytes, V6_IETF)) return refused(addr.text, V6_IETF);
  if (!inRange(addr.bytes, V6_GLOBAL)) return refused(addr.text, V6_GLOBAL);
  return { allowed: true, address: addr.text };
}

/** The address as messages name it: `::ffff:7f00:1 (IPv4-mapped (::ffff:0:0/96) of 127.0.0.1)`. */
export function verdictSubject(v: AddressVerdict): string {
  return v.embedded ? `${v.address} (${v.embedded.form} of ${v.embedded.ipv4})` : v.address;
}

/** For people: `10.0.0.1 is in 10.0.0.0/8: private network (RFC 1918)`. */
export function describeVerdict(v: AddressVerdict): string {
  return v.allowed ? `${verdictSubject(v)} is a public address` : `${verdictSubject(v)} is in ${v.range}: ${v.about}`;
}
