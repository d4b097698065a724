/**
 * The names the local CA may certify. A leaf is issued to one host, a DNS name or an IP literal; the CA
 * itself carries the list of permitted hosts (exact, or `*.suffix` for any host strictly below) both as
 * an X.509 name constraint and as a check before minting.
 */
import { VaultError } from "../base/errors.js";
import { quoteText } from "../base/text.js";
import { parseHostLiteral } from "./guard.js";

/** A host a leaf certificate names: a lower-case ASCII DNS name, or a canonical IP address. */
export type LeafHost = { kind: "dns"; name: string } | { kind: "ip"; ip: string; version: 4 | 6 };

/** One entry of the permitted list. */
export type PermittedName =
  | { kind: "dns"; name: string } // this host (X.509 also lets it cover hosts below it; we refuse those before minting)
  | { kind: "below"; suffix: string } // any host strictly below the suffix (`*.suffix`)
  | { kind: "ip"; ip: string; version: 4 | 6 };

function bad(input: string, why: string): VaultError {
  return new VaultError("invalid_request", `host ${quoteText(input)} cannot be certified: it ${why}`);
}

/**
 * Parses the host a leaf is for (an SNI server name or a CONNECT target without its port), with the
 * proxy's one host parser (parseHostLiteral in guard.ts), so the CA and the guard agree on what a host
 * is: IP literals in canonical form, DNS names lower-case ASCII (IDNs in punycode), odd numeric forms refused.
 */
export function parseLeafHost(input: string): LeafHost {
  if (typeof input !== "string") throw new VaultError("invalid_request", "a host to certify must be a string");
  // The CA takes canonical hosts only: an IDN comes already in punycode, so a look-alike in Unicode is refused, not converted.
  if (/[^\x00-\x7f]/.test(input)) throw bad(input, "is not ASCII; use punycode for IDNs");
  const h = parseHostLiteral(input);
  if (h === "numeric") throw bad(input, "ends in a number, so it is neither a DNS name nor an IP address");
  if (h === "invalid") throw bad(input, 'is not a DNS name (letters, digits, "-" and "." only) or an IP address');
  return h.ip ? { kind: "ip", ip: h.ip.text, version: h.ip.family } : { kind: "dns", name: h.name };
}

/** Parses one permitted entry: a host, `*.suffix`, or an IP literal. */
export function parsePermittedName(input: string): PermittedName {
  if (typeof input !== "string") throw new VaultError("invalid_request", "a permitted host must be a string");
  if (input.startsWith("*.")) {
    const suffix = parseLeafHost(input.slice(2));
    if (suffix.kind !== "dns") throw bad(input, "puts *. before an IP address");
    return { kind: "below", suffix: suffix.name };
  }
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
