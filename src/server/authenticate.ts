/**
 * Who a connection is, decided by the daemon from what the transport knows — never from a request:
 * - a token in the hello → the token's identity (any transport);
 * - TCP without a token → refused;
 * - a Unix-socket peer → its uid from SO_PEERCRED, mapped by `[[identity]]` in lessor.toml; the
 *   daemon's own uid is admin unless mapped; other uids are refused. Without the peer-credential
 *   addon every Unix-socket peer is taken for the socket's owner (the daemon says so at start).
 * Every refusal is audited as auth_failed.
 */
import type { UidIdentity } from "../config/config.js";
import type { Hello } from "../protocol/messages.js";
import { VaultError } from "../vault/errors.js";
import type { Identity } from "../vault/types.js";
import type { Vault } from "../vault/vault.js";
import type { PeerInfo } from "./connection.js";

/** Builds the daemon's authenticate function. */
export function makeAuthenticator(vault: Vault, identities: readonly UidIdentity[], ownerUid: number): (peer: PeerInfo, hello: Hello) => Promise<Identity> {
  const byUid = new Map(identities.map((i) => [i.uid, i]));
  return async (peer, hello) => {
    if (hello.token !== undefined) return vault.authenticateToken(hello.token, peer.transport);
    if (peer.transport === "uds") {
      const uid = peer.uid ?? ownerUid;
      const mapped = byUid.get(uid);
      if (mapped)
        return {
          id: `uid:${uid}`,
          role: mapped.role,
          ...(mapped.agent ? { agent: mapped.agent } : {}),
          ...(mapped.actFor ? { actFor: mapped.actFor } : {}),
          transport: "uds",
        };
      if (uid === ownerUid) return { id: `uid:${uid}`, role: "admin", transport: "uds" };
      await vault.recordAuthFailure("uds", "unknown uid", { uid, pid: peer.pid ?? null });
      throw new VaultError("unauthenticated", `uid ${uid} is not mapped to an identity; add an [[identity]] entry for it in lessor.toml, or connect with a token`);
    }
    await vault.recordAuthFailure(peer.transport, "no token", { remote: peer.remoteAddress ?? null });
    throw new VaultError("unauthenticated", `${peer.transport} clients must send a token in the hello; an admin creates one with lessor token create`);
  };
}
