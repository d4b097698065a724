/**
 * The shapes of a token and of the token handshake's values, with no crypto and no schema library, so
 * that the client, the wire schemas and the vault check them alike (src/crypto/token-proof.ts does the
 * crypto).
 */

/** A token: `lsr_<16 hex id>_<43 base64url characters of secret>`. */
export const TOKEN_RE = /^lsr_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;

/** A token id: 16 lowercase hex characters. */
export const TOKEN_ID_RE = /^[0-9a-f]{16}$/;

/** 32 bytes in base64url without padding (a handshake nonce or proof). */
export const BASE64URL_32 = /^[A-Za-z0-9_-]{43}$/;
