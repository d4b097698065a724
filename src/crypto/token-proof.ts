/**
 * The daemon's proof that it holds a token, shown to a client before the client reveals the token
 * (docs/protocol.md, "Token handshake"). Shared by the vault (which computes it from the stored hash)
 * and the client (which computes it from the token it holds), so both sides use the same bytes.
 *
 *   proof = HMAC-SHA256(key = SHA-256(secret part of the token),
 *                       "lessor server proof v1" || 0x00 || client nonce (32 bytes)
 *                       || server nonce (32 bytes) || token id (16 ASCII hex) || binding (UTF-8))
 *
 * `binding` names the endpoint the connection reached, as each side sees it (`tcp 127.0.0.1:7391`,
 * `uds`), so a squatter that relays the handshake to the real daemon through another endpoint gets a
 * proof the client rejects. Everything but the binding has a fixed length, so the message is unambiguous.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { TOKEN_RE } from "../base/token-shape.js";

export { TOKEN_ID_RE, TOKEN_RE } from "../base/token-shape.js";

/** The length in bytes of each side's nonce. */
export const NONCE_BYTES = 32;

const LABEL = Buffer.from("lessor server proof v1\0", "utf8");

/** The id and secret parts of a token, or null when it is not shaped like one. */
export function splitToken(token: unknown): { id: string; secret: string } | null {
  const m = typeof token === "string" ? TOKEN_RE.exec(token) : null;
  return m ? { id: m[1]!, secret: m[2]! } : null;
}

/** A fresh random nonce for one side of the handshake. */
export function newNonce(): Buffer {
  return randomBytes(NONCE_BYTES);
}

/** SHA-256 of a token's secret part: what the vault stores, and the key of the server proof. */
export function hashTokenSecret(secret: string): Buffer {
  return createHash("sha256").update(secret, "utf8").digest();
}

/** The endpoint binding of a connection: `tcp <address>:<port>` (IPv4-mapped addresses unwrapped), or the transport name. */
export function endpointBinding(transport: string, address?: string, port?: number): string {
  if (transport !== "tcp") return transport;
  const a = (address ?? "").toLowerCase().replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1");
  return `tcp ${a}:${port ?? 0}`;
}

/** The server proof (see the module comment). */
export function serverProof(key: Uint8Array, clientNonce: Uint8Array, serverNonce: Uint8Array, tokenId: string, binding: string): Buffer {
  return createHmac("sha256", key).update(LABEL).update(clientNonce).update(serverNonce).update(tokenId, "utf8").update(binding, "utf8").digest();
}

/** True when `proof` is the proof `key` makes for these inputs; compared in constant time. */
export function checkServerProof(key: Uint8Array, clientNonce: Uint8Array, serverNonce: Uint8Array, tokenId: string, binding: string, proof: Uint8Array): boolean {
  const want = serverProof(key, clientNonce, serverNonce, tokenId, binding);
  return proof.length === want.length && timingSafeEqual(want, proof);
}
