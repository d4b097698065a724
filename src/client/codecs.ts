/**
 * What the client reads from and writes to the wire, apart from framing: the daemon's handshake
 * replies (welcome, token challenge), wire errors, and secret values in both directions (a result's
 * `value` decoded straight into SecretBytes; a value to send as text or base64).
 *
 * No zod here (the schemas stay with the server and the in-process backend), so the CLI starts fast.
 */
import { SecretBytes } from "../crypto/secret-bytes.js";
import type { PROTOCOL, VERSION, WireIdentity } from "../protocol/messages.js";
import type { Decoded } from "../protocol/registry.js";
import { checkTextValue } from "../base/text.js";
import { ERROR_CODES, VaultError, wireCode, type ErrorCode, type WireErrorCode } from "../base/errors.js";
import { BASE64URL_32 } from "../base/token-shape.js";

/** Standard base64 with padding: a value in any other form is refused, never decoded leniently into other bytes. */
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

export const PROTOCOL_NAME: typeof PROTOCOL = "lessor";
export const PROTOCOL_VERSION: typeof VERSION = 1;

/** A value to store: bytes, UTF-8 text, or a SecretBytes (which is not wiped). */
export type SecretInput = Uint8Array | string | SecretBytes;

function isWireCode(code: unknown): code is WireErrorCode {
  return typeof code === "string" && Object.prototype.hasOwnProperty.call(ERROR_CODES, code) && wireCode(code as ErrorCode) === code;
}

/** True when `e` looks like a wire error (`{ code, message }`). */
export function isWireErrorShape(e: any): boolean {
  return typeof e === "object" && e !== null && typeof e.code === "string" && typeof e.message === "string";
}

/** A wire error as a VaultError; an unknown code becomes `internal`. */
export function toVaultError(e: { code: string; message: string }): VaultError {
  const message = e.message.length > 2000 ? `${e.message.slice(0, 2000)}…` : e.message;
  return isWireCode(e.code) ? new VaultError(e.code, message) : new VaultError("internal", `the lessor daemon answered with an unknown error (${e.code.slice(0, 64)}): ${message}`);
}

/** The identity from the daemon's welcome, or the error its refusal (or a malformed reply) means. */
export function parseWelcome(body: Buffer, where: string): WireIdentity | VaultError {
  let msg: any;
  try {
    msg = JSON.parse(body.toString("utf8"));
  } catch {
    msg = undefined;
  }
  const bad = new VaultError("internal", `the server at ${where} sent a malformed handshake reply; is it a lessor daemon?`);
  if (typeof msg !== "object" || msg === null || msg.protocol !== PROTOCOL_NAME || typeof msg.ok !== "boolean") return bad;
  if (!msg.ok) return isWireErrorShape(msg.error) ? toVaultError(msg.error) : bad;
  if (msg.version !== PROTOCOL_VERSION)
    return new VaultError("unavailable", `the lessor daemon at ${where} speaks protocol version ${String(msg.version)}, this client speaks ${PROTOCOL_VERSION}; use matching versions`);
  const id = msg.identity;
  if (typeof id !== "object" || id === null || typeof id.id !== "string" || typeof id.transport !== "string" || !["admin", "orchestrator", "agent"].includes(id.role))
    return bad;
  return id as WireIdentity;
}

/** The daemon's nonce and proof from its answer to a token handshake hello, or why there are none. */
export function parseChallenge(body: Buffer, where: string): { nonce: Buffer; proof: Buffer } | VaultError {
  let msg: any;
  try {
    msg = JSON.parse(body.toString("utf8"));
  } catch {
    msg = undefined;
  }
  const unverified = (what: string) =>
    new VaultError("daemon_unverified", `the server at ${where} ${what}, so the token was not sent; something other than your lessor daemon may be listening there`);
  if (typeof msg !== "object" || msg === null || msg.protocol !== PROTOCOL_NAME || typeof msg.ok !== "boolean")
    return unverified("did not answer the token handshake as a lessor daemon does");
  if (!msg.ok) {
    if (!isWireErrorShape(msg.error)) return unverified("sent a malformed refusal");
    const e = toVaultError(msg.error);
    if (e.code !== "invalid_request") return e; // a cap or a shutdown; nothing was sent
    return new VaultError("unavailable", `the lessor daemon at ${where} refused the token handshake (${e.message}); it may be older than this client, so upgrade it. The token was not sent`);
  }
  const c = msg.challenge;
  if (typeof c !== "object" || c === null) return unverified("answered without proving that it holds the token");
  if (typeof c.nonce !== "string" || typeof c.proof !== "string" || !BASE64URL_32.test(c.nonce) || !BASE64URL_32.test(c.proof))
    return unverified("sent a malformed proof");
  return { nonce: Buffer.from(c.nonce, "base64url"), proof: Buffer.from(c.proof, "base64url") };
}

/**
 * A wire result in its {@link Decoded} form: a top-level `value` with `encoding: "base64"` (the one
 * place a result carries a secret value, docs/protocol.md) becomes a SecretBytes, never through an
 * unwiped intermediate buffer. Other results are returned as they are.
 */
export function decodeResult<W>(r: W): Decoded<W> {
  if (typeof r !== "object" || r === null || (r as { encoding?: unknown }).encoding !== "base64" || !("value" in r)) return r as Decoded<W>;
  const { value: s, encoding: _e, ...rest } = r as unknown as { value: unknown; encoding: string };
  if (typeof s !== "string" || s.length % 4 !== 0 || !BASE64.test(s))
    throw new VaultError("internal", "the lessor daemon sent a value in an unexpected form; check that client and daemon versions match");
  const buf = Buffer.alloc(Buffer.byteLength(s, "base64"));
  const n = buf.write(s, "base64");
  (r as { value: unknown }).value = ""; // drop our reference to the text (strings cannot be wiped)
  return { ...rest, value: SecretBytes.adopt(n === buf.length ? buf : buf.subarray(0, n)) } as Decoded<W>;
}

/**
 * A value for the wire. Bytes go as base64; text goes as UTF-8 text (it is already an unwipeable
 * string, so encoding it again would only add copies).
 */
export function wireValueOf(v: SecretInput): { value: string; encoding: "utf8" | "base64" } {
  if (typeof v === "string") {
    checkTextValue(v);
    return { value: v, encoding: "utf8" };
  }
  if (v instanceof SecretBytes) {
    if (v.wiped) throw new VaultError("invalid_request", "the SecretBytes value was already wiped; pass a live value");
    return { value: v.expose().toString("base64"), encoding: "base64" };
  }
  if (v instanceof Uint8Array) return { value: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64"), encoding: "base64" };
  throw new VaultError("invalid_request", "a secret value must be bytes (Uint8Array), text or SecretBytes");
}
