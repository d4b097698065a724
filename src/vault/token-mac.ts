/**
 * Token records are authenticated under the master key. The stored hash must stay plain SHA-256 of
 * the token's secret part (the daemon uses it as the proof key of the token handshake,
 * docs/protocol.md), so a row written into the database by someone without the key (SHA-256 of a
 * secret of their choosing, role admin) would otherwise be a token the vault accepts. Each row
 * therefore carries a MAC:
 *
 *   mac = HMAC-SHA256(key = HKDF-SHA256(master key, salt = "", info = "lessor token mac v1", 32),
 *                     encodeAad(["lessor", "token", "1", id, name, role, agent, act_for,
 *                                created_at, expires_at, created_by, hash] (+ ["vault", vault_id])))
 *
 * with agent, act_for and expires_at as JSON (so null and a value differ) and the hash as hex; a vault
 * made by this version adds its id (src/vault/vault-id.ts), so a row copied from another vault that
 * shares the master key is no token here. The
 * revocation time is left out: revoking must not need the key, and a writer who clears revoked_at
 * brings a revoked token back (a documented limit, as for leases). A row is accepted when its MAC
 * verifies under a key of the keyring (the current one, or an older one still loaded during a
 * rotation); `lessor key rotate` MACs every such row again under the new key before the old keys are
 * retired.
 */
import { createHmac, hkdfSync, timingSafeEqual } from "node:crypto";
import { encodeAad } from "../crypto/envelope.js";
import type { Keyring, MasterKey } from "../crypto/keyring.js";
import type { TokenRecord } from "../base/types.js";

const LABEL = "lessor token mac v1";
const EMPTY = Buffer.alloc(0);

/** The fields a token MAC covers (everything but the MAC and the revocation time). */
export type MacedToken = Omit<TokenRecord, "mac" | "revokedAt">;

function message(t: MacedToken, vaultId: string | null): Buffer {
  const fields = [
    "lessor",
    "token",
    "1",
    t.id,
    t.name,
    t.role,
    JSON.stringify(t.agent),
    JSON.stringify(t.actFor),
    String(t.createdAt),
    JSON.stringify(t.expiresAt),
    t.createdBy,
    Buffer.from(t.hash).toString("hex"),
  ];
  return encodeAad(vaultId === null ? fields : [...fields, "vault", vaultId]);
}

/** The MAC of a token record under one master key, for vault `vaultId` (null: a vault made before vaults had ids). */
export function tokenMac(master: MasterKey, t: MacedToken, vaultId: string | null): Buffer {
  const key = Buffer.from(hkdfSync("sha256", master.key, EMPTY, LABEL, 32));
  try {
    return createHmac("sha256", key).update(message(t, vaultId)).digest();
  } finally {
    key.fill(0);
  }
}

/**
 * The id of the keyring's key under which the record's MAC verifies (the current key tried first),
 * or null when it has no MAC or none verifies (a row not written by lessor with the key).
 */
export function tokenMacKey(ring: Keyring, t: TokenRecord, vaultId: string | null): string | null {
  const mac = t.mac;
  if (mac === null || mac.length !== 32) return null;
  for (const id of ring.ids()) {
    const want = tokenMac(ring.get(id)!, t, vaultId);
    if (timingSafeEqual(want, mac)) return id;
  }
  return null;
}
