/**
 * The names the local CA may certify. A leaf is issued to one host, a DNS name or an IP literal; the CA
 * itself carries the list of permitted hosts (exact, or `*.suffix` for any host strictly below) both as
 * an X.509 name constraint and as a check before minting.
 */
import { isIP } from "node:net";
import { VaultError } from "../base/errors.js";
import { quoteText } from "../base/text.js";

/** A host a leaf certificate names: a lower-case ASCII DNS name, or a canonical IP address. */
export type LeafHost = { kind: "dns"; name: string } | { kind: "ip"; ip: string; version: 4 | 6 };

/** One entry of the permitted list. */
export type PermittedName =
  | { kind: "dns"; name: string } // this host (X.509 also lets it cover hosts below it; we refuse those before minting)
  | { kind: "below"; suffix: string } // any host strictly below the suffix (`*.suffix`)
  | { kind: "ip"; ip: string; version: 4 | 6 };

const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

function bad(input: string, why: string): VaultError {
  return new VaultError("invalid_request", `host ${quoteText(input)} cannot be certified: it ${why}`);
}

/** Canonical text of an IP literal (IPv6 without brackets, compressed, lower-case), or null. */
function canonicalIp(s: string): { ip: string; version: 4 | 6 } | null {
  const bare = s.startsWith("[") && s.endsWith("]") ? s.slice(1, -1) : s;
  if (bare.includes("%")) return null; // zone ids name an interface, not a host
  const v = isIP(bare);
  if (v === 4) return { ip: bare, version: 4 };
  // The WHATWG URL parser prints the one canonical form (RFC 5952), so equal addresses compare equal.
  if (v === 6) return { ip: new URL(`http://[${bare}]/`).hostname.slice(1, -1), version: 6 };
  return null;
}

function dnsName(input: string): string {
  let s = input.toLowerCase();
  if (s.endsWith(".")) s = s.slice(0, -1);
  if (s.length === 0) throw bad(input, "is empty");
  if (s.length > 253) throw bad(input, "is longer than 253 characters");
  const labels = s.split(".");
  for (const l of labels)
    if (!LABEL.test(l)) throw bad(input, 'is not a DNS name (ASCII letters, digits, "-" and "." only; use punycode for IDNs)');
  if (/^[0-9]+$/.test(labels[labels.length - 1]!)) throw bad(input, "ends in a number, so it is neither a DNS name nor an IP address");
  return s;
}

/** Parses the host a leaf is for (an SNI server name or a CONNECT target without its port). */
export function parseLeafHost(input: string): LeafHost {
  if (typeof input !== "string") throw new VaultError("invalid_request", "a host to certify must be a string");
  const ip = canonicalIp(input);
  if (ip !== null) return { kind: "ip", ...ip };
  return { kind: "dns", name: dnsName(input) };
}

/** Parses one permitted entry: a host, `*.suffix`, or an IP literal. */
export function parsePermittedName(input: string): PermittedName {
  if (typeof input !== "string") throw new VaultError("invalid_request", "a permitted host must be a string");
  if (input.startsWith("*.")) return { kind: "below", suffix: dnsName(input.slice(2)) };
  const h = parseLeafHost(input);
  return h.kind === "dns" ? { kind: "dns", name: h.name } : h;
}

/** A stable text key for a leaf host (used for the cache). */
export function leafKey(h: LeafHost): string {
  return h.kind === "dns" ? h.name : h.ip;
}

/** True when `host` is one the permitted list names (exactly, or strictly below a `*.` suffix). */
export function isPermitted(permitted: readonly PermittedName[], host: LeafHost): boolean {
  for (const p of permitted) {
    if (host.kind === "ip") {
      if (p.kind === "ip" && p.ip === host.ip) return true;
    } else if (p.kind === "dns") {
      if (p.name === host.name) return true;
    } else if (p.kind === "below") {
      if (host.name.length > p.suffix.length + 1 && host.name.endsWith(`.${p.suffix}`)) return true;
    }
  }
  return false;
}
