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

/**
 * The codes a lessor daemon refuses with before it has proved who it is (docs/protocol.md): its
 * connection caps and handshake budget (`rate_limited`) and its shutdown (`unavailable`). Before the
 * proof (a token handshake over TCP) any other refusal is not taken as the daemon's.
 */
const BEFORE_PROOF = new Set(["rate_limited", "unavailable"]);

/** A server's own words, cut short, for a message about a server that has not proved who it is. */
function clip(text: string): string {
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

/**
 * A handshake refusal as the VaultError to fail the connection with. `proven`: the server is known
 * to be the daemon (the transport's check passed, or there is nothing to check and no token to prove
 * it with), so its refusal is the daemon's. Otherwise only a code a daemon sends before its proof is
 * kept, worded as the unverified server's and cut short; any other is `daemon_unverified`, without
 * the server's words (a squatter chooses them: "the token was revoked, paste it into …").
 */
export function handshakeRefusal(e: { code: string; message: string }, where: string, proven: boolean): VaultError {
  if (proven) return toVaultError(e);
  if (BEFORE_PROOF.has(e.code)) return new VaultError(e.code as WireErrorCode, `the server at ${where} (not verified) refused: ${clip(e.message)}`);
  return new VaultError(
    "daemon_unverified",
    `the server at ${where} refused with ${isWireCode(e.code) ? e.code : "an unknown code"} before proving that it holds the token; a lessor daemon refuses that early only with rate_limited or unavailable, so nothing it said is taken as the daemon's and the token was not sent; something other than your lessor daemon may be listening there`,
  );
}

/**
 * The identity from the daemon's welcome, or the error its refusal (or a malformed reply) means.
 * `proven`: see {@link handshakeRefusal}. `beforeHello`: the client has not said hello yet, so only a
 * refusal is a daemon's answer.
 */
export function parseWelcome(body: Buffer, where: string, proven: boolean, beforeHello: boolean): WireIdentity | VaultError {
  let msg: any;
  try {
    msg = JSON.parse(body.toString("utf8"));
  } catch {
    msg = undefined;
  }
  const bad = new VaultError("internal", `the server at ${where} sent a malformed handshake reply; is it a lessor daemon?`);
  if (typeof msg !== "object" || msg === null || msg.protocol !== PROTOCOL_NAME || typeof msg.ok !== "boolean") return bad;
  if (!msg.ok) return isWireErrorShape(msg.error) ? handshakeRefusal(msg.error, where, proven) : bad;
  if (beforeHello)
    return new VaultError("daemon_unverified", `the server at ${where} sent a welcome before the client said hello; it is not behaving as a lessor daemon, so nothing was sent`);
  if (msg.version !== PROTOCOL_VERSION) {
    const v = msg.version;
    const theirs = typeof v === "number" && Number.isSafeInteger(v) ? `protocol version ${v}` : "no valid protocol version";
    return new VaultError("unavailable", `the lessor daemon at ${where} speaks ${theirs}, this client speaks ${PROTOCOL_VERSION}; use matching versions`);
  }
  const id = msg.identity;
  if (typeof id !== "object" || id === null || typeof id.id !== "string" || typeof id.transport !== "string" || !["admin", "orchestrator", "agent"].includes(id.role))
    return bad;
  return id as WireIdentity;
}

/**
 * The daemon's nonce and proof from its answer to a token handshake hello, or why there are none.
 * `proven`: the transport's check already showed this is the daemon (a Unix socket of the right uid).
 */
export function parseChallenge(body: Buffer, where: string, proven: boolean): { nonce: Buffer; proof: Buffer } | VaultError {
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
    if (msg.error.code !== "invalid_request") return handshakeRefusal(msg.error, where, proven); // a cap or a shutdown; nothing was sent
    const who = proven ? `the lessor daemon at ${where}` : `the server at ${where} (not verified)`;
    return new VaultError("unavailable", `${who} refused the token handshake (${clip(msg.error.message)}); it may be older than this client, so upgrade it. The token was not sent`);
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
