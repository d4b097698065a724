/**
 * Who a connection is, decided by the daemon from what the transport knows — never from a request:
 * - a token in the hello → the token's identity (any transport);
 * - TCP without a token → refused;
 * - a Unix-socket peer → its uid from SO_PEERCRED, mapped by `[[identity]]` in lessor.toml; the
 *   daemon's own uid is admin unless mapped; other uids are refused. A peer whose credentials are
 *   unknown gets no identity from a uid (refused; it may still send a token), except when the daemon
 *   decided at start that the socket is reachable by its owner only (`ownerWithoutPeerCred`, see
 *   peer-trust.ts): then it is the owner.
 * Every refusal is audited as auth_failed.
 */
import type { UidIdentity } from "../config/config.js";
import type { Hello } from "../protocol/messages.js";
import { VaultError } from "../base/errors.js";
import type { Identity } from "../base/types.js";
import type { Vault } from "../vault/vault.js";
import type { PeerInfo } from "./connection.js";

/** How Unix-socket peers without credentials are treated (from decidePeerTrust). */
export interface UdsTrust {
  /** Take a Unix-socket peer without credentials for the owner. Default false: refuse it. */
  ownerWithoutPeerCred?: boolean;
}

/** Builds the daemon's authenticate function. */
export function makeAuthenticator(
  vault: Vault,
  identities: readonly UidIdentity[],
  ownerUid: number,
  trust: UdsTrust = {},
): (peer: PeerInfo, hello: Hello) => Promise<Identity> {
  const byUid = new Map(identities.map((i) => [i.uid, i]));
  return async (peer, hello) => {
    if (hello.token !== undefined) return vault.authenticateToken(hello.token, peer.transport);
    if (peer.transport === "uds") {
      if (peer.uid === undefined && trust.ownerWithoutPeerCred !== true) {
        await vault.recordAuthFailure("uds", "no peer credentials", { pid: null });
        throw new VaultError(
          "unauthenticated",
          "the daemon could not read this connection's peer credentials, so it cannot tell who you are; connect with a token (an admin creates one with lessor token create), or build the peer-credential addon (see native/peercred/README.md)",
        );
      }
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
