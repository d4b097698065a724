/**
 * Protocol v1 envelopes (DESIGN.md, "Wire protocol"). Field names are camelCase; method names are
 * snake_case. Every message is one frame (see framing.ts).
 *
 *   client → server  {"protocol":"lessor","version":1}                                  (hello, Unix socket)
 *   server → client  {"protocol":"lessor","version":1,"ok":true,"identity":{…}}        (welcome)
 *                 or {"protocol":"lessor","version":1,"ok":false,"error":{code,message}} and close
 *
 * With a token, the daemon proves it holds the token's hash before the client shows it:
 *
 *   client → server  {"protocol":"lessor","version":1,"tokenId":"<16 hex>","nonce":"<32 bytes, base64url>"}
 *   server → client  {"protocol":"lessor","version":1,"ok":true,"challenge":{"nonce":"…","proof":"…"}}
 *   client → server  {"token":"lsr_…"}           (only once the proof checks out; see src/crypto/token-proof.ts)
 *   server → client  welcome or refusal, as above
 *
 * (A hello carrying `token` directly, as clients before the token handshake sent it, is still
 * accepted; lessor's client never sends one.)
 *   client → server  {"id":"<uuidv7>","method":"request_lease","params":{…}}           (request)
 *   server → client  {"id":"…","ok":true,"result":…} | {"id":"…","ok":false,"error":{…}}
 *
 * Requests may be pipelined; responses carry the request's id and may come in any order. A response
 * to a request whose id could not be read has `id: null`.
 */
import { z } from "zod";
import type { WireErrorCode } from "../base/errors.js";
import { BASE64URL_32, TOKEN_ID_RE } from "../base/token-shape.js";

export const PROTOCOL = "lessor";
export const VERSION = 1;

/** The wire error codes: a closed set (docs/protocol.md). */
export const WIRE_ERROR_CODES = [
  "lease_expired",
  "lease_revoked",
  "lease_not_found",
  "lease_exhausted",
  "access_denied",
  "secret_not_found",
  "secret_exists",
  "invalid_request",
  "unauthenticated",
  "rate_limited",
  "unavailable",
  "internal",
] as const satisfies readonly WireErrorCode[];

/** An error as sent on the wire. */
export interface WireError {
  code: WireErrorCode;
  message: string;
}


export const helloSchema = z.strictObject({
  protocol: z.literal(PROTOCOL),
  version: z.number().int(),
  /** The token itself (the old one-step form; the daemon cannot prove itself first). */
  token: z.string().min(1).max(512).optional(),
  /** The token handshake: the public id of the token the client holds… */
  tokenId: z.string().regex(TOKEN_ID_RE, "expected the 16 hex characters after lsr_ in the token").optional(),
  /** …and 32 random bytes (base64url, no padding) the daemon's proof must cover. */
  nonce: z.string().regex(BASE64URL_32, "expected 32 random bytes in base64url without padding (43 characters)").optional(),
});
export type Hello = z.infer<typeof helloSchema>;

/** The frame that shows the token, sent once the daemon's proof checked out. */
export const tokenFrameSchema = z.strictObject({ token: z.string().min(1).max(512) });

/** The daemon's answer to a token handshake hello: its nonce and proof (base64url). */
export interface Challenge {
  protocol: typeof PROTOCOL;
  version: typeof VERSION;
  ok: true;
  challenge: { nonce: string; proof: string };
}

/** The identity the server tells the client it has. */
export interface WireIdentity {
  id: string;
  role: "admin" | "orchestrator" | "agent";
  agent?: string;
  actFor?: string[];
  transport: string;
}

/**
 * A request: `id` a lowercase UUID (clients send UUIDv7), `method` a method name (1-64 characters),
 * `params` an object or absent. The server checks the envelope field by field (src/server/connection.ts)
 * and the params against the method's schema (src/protocol/registry.ts).
 */
export interface Request {
  id: string;
  method: string;
  params?: Record<string, unknown> | undefined;
}

export type Response = { id: string | null; ok: true; result: unknown } | { id: string | null; ok: false; error: WireError };
