/**
 * git's credential helper protocol (git-credential(1), gitcredentials(7)): a request is `key=value`
 * lines ending at a blank line or the end of input; an answer is the same. Only what `lessor
 * git-credential get` needs is kept: protocol, host, path and username. Parsed strictly where a lax
 * parse could be steered (a repeated key, a NUL, a line without "="): such a request gets no answer.
 */
import { VaultError } from "../../base/errors.js";
import { normalizeHost } from "../../vault/domain.js";

/** The attributes of a request that the helper reads. */
export interface GitCredentialRequest {
  protocol: string | null;
  /** As git sent it: a host name, with `:port` when the URL had one. */
  host: string | null;
  path: string | null;
  username: string | null;
}

/** Attributes that name what the credential is for: each may be given once. */
const SINGLE = ["protocol", "host", "path", "username", "url"] as const;

/**
 * Parses a request. Unknown attributes are ignored, as the protocol asks (git adds new ones, such as
 * `capability[]` and `wwwauth[]`); a request git would never send (a NUL, a line without "=", one
 * of {@link SINGLE} twice) is refused with VaultError("invalid_request"). So is `url=`: git splits a
 * URL into the other attributes before it asks a helper, and git itself lets a later `url=` replace
 * the host given before it, so a request with both could name one host here and another to git.
 */
export function parseGitRequest(raw: Buffer): GitCredentialRequest {
  const text = raw.toString("utf8");
  if (text.includes("\0")) throw new VaultError("invalid_request", "the request holds a NUL byte, which git never sends");
  const out: GitCredentialRequest = { protocol: null, host: null, path: null, username: null };
  const seen = new Set<string>();
  for (const rawLine of text.split("\n")) {
    const line = rawLine.endsWith("\r") ? rawLine.slice(0, -1) : rawLine;
    if (line === "") break; // the blank line ends the request
    const eq = line.indexOf("=");
    if (eq <= 0) throw new VaultError("invalid_request", `a request line is not key=value (${JSON.stringify(line.slice(0, 40))})`);
    const key = line.slice(0, eq);
    const value = line.slice(eq + 1);
    if (!(SINGLE as readonly string[]).includes(key)) continue;
    if (seen.has(key)) throw new VaultError("invalid_request", `the request gives "${key}" twice`);
    seen.add(key);
    if (key === "url")
      throw new VaultError("invalid_request", "the request gives url=, which git never sends a helper (it sends protocol, host and path); give those instead");
    if (key === "protocol" || key === "host" || key === "path" || key === "username") out[key] = value;
  }
  return out;
}

/**
 * Splits git's `host` attribute (`name` or `name:port`) and normalises the name as a lease domain.
 * Throws VaultError("invalid_request") for an IP literal, userinfo or anything else not a DNS name.
 */
export function gitHost(host: string): { name: string; port: number | null } {
  const m = /^(.*):(\d{1,5})$/.exec(host);
  if (m && !m[1]!.includes(":")) {
    const port = Number(m[2]);
    if (port < 1 || port > 65535) throw new VaultError("invalid_request", `host ${JSON.stringify(host)} has a port out of range`);
    return { name: normalizeHost(m[1]!), port };
  }
  return { name: normalizeHost(host), port: null };
}

/**
 * The answer `username=…`, `password=…`: bytes, so the value is never a JavaScript string (which
 * could not be wiped). A value or username with CR, LF or NUL is refused: the protocol is line-based,
 * and such a value would add attributes of its own choosing to the answer.
 */
export function formatGitAnswer(username: string, password: Buffer): Buffer {
  if (/[\r\n\0]/.test(username)) throw new VaultError("invalid_request", "the username holds a line break or NUL, which git's credential protocol cannot carry");
  for (const b of password)
    if (b === 0x0a || b === 0x0d || b === 0x00)
      throw new VaultError("invalid_request", "the secret's value holds a line break or NUL, which git's credential protocol cannot carry (it would add lines to the answer); store the token alone");
  return Buffer.concat([Buffer.from(`username=${username}\npassword=`), password, Buffer.from("\n")]);
}
