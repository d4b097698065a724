/**
 * Client authentication for a proxy reachable by other local users (`lessor proxy` on a loopback TCP
 * port: every user of the machine can connect to it, and the proxy adds the agent's credentials to
 * whatever it forwards). Each session has a random token; a client proves it with
 * `Proxy-Authorization: Basic base64("lessor:" + token)`, which curl, git, pip and most HTTP stacks
 * send on their own when `HTTPS_PROXY=http://lessor:TOKEN@127.0.0.1:PORT`.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";

/** The user name of the proxy's Basic credentials (the token is the password). */
export const PROXY_USER = "lessor";

/** The realm named in `Proxy-Authenticate`. */
export const PROXY_REALM = "lessor";

/** A new session token: 32 random bytes, base64url (43 characters, safe in a URL's user info). */
export function newProxyToken(): string {
  return randomBytes(32).toString("base64url");
}

/** The proxy URL with the credentials in it, as clients take it from HTTPS_PROXY. */
export function proxyUrl(token: string, host: string, port: number): string {
  const h = host.includes(":") ? `[${host}]` : host;
  return `http://${PROXY_USER}:${token}@${h}:${port}`;
}

const digest = (b: Buffer): Buffer => createHash("sha256").update(b).digest();

/**
 * An `authorize` function for {@link import("./forward.js").ForwardProxyOptions}: true only for a
 * request whose `Proxy-Authorization` is `Basic` with `lessor:TOKEN`. The comparison runs over SHA-256
 * digests with timingSafeEqual, so neither the token's bytes nor its length show in the timing.
 */
export function basicProxyAuth(token: string): (req: IncomingMessage) => boolean {
  if (token.length < 16) throw new RangeError("the proxy token is too short");
  const want = digest(Buffer.from(`${PROXY_USER}:${token}`, "utf8"));
  return (req) => {
    const h = req.headers["proxy-authorization"];
    if (typeof h !== "string") return false;
    // RFC 9110: the scheme is case-insensitive, one or more spaces before the credentials.
    const m = /^basic +([A-Za-z0-9+/]+={0,2}) *$/i.exec(h);
    if (!m) return false;
    return timingSafeEqual(digest(Buffer.from(m[1]!, "base64")), want);
  };
}
