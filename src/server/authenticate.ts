/**
 * Who a connection is, decided by the daemon from what the transport knows — never from a request:
 * - a token in the hello → the token's identity (any transport);
 * - TCP without a token → refused;
 * - a Unix-socket peer → its uid from SO_PEERCRED, mapped by `[[identity]]` in lessor.toml; the
 *   daemon's own uid is admin unless mapped; other uids are refused. A peer whose credentials are
 *   unknown gets no identity from a uid (refused; it may still send a token), except when the daemon
 *   decided at start that the socket is reachable by its owner only (`ownerWithoutPeerCred`, see
 *   peer-trust.ts): then it is the owner.
 * - a vsock peer → the guest it is: a Firecracker VM by the `[[vm]]` socket the connection arrived
 *   on (`vm:<name>`; if the entry names the Firecracker process's uid, another uid is refused), an
 *   AF_VSOCK guest by its CID through `[[vsock]]` (`cid:<n>`); anything else is refused. A token in
 *   the hello (the token itself, or a token handshake's tokenId and nonce: the connection starts no
 *   handshake on vsock) is refused on vsock, before it is looked up: the guest is its VM and nothing
 *   more, so a token that reached a guest (an admin's, say) cannot raise it above its VM's identity.
 * Every refusal is audited as auth_failed.
 */
import type { GuestIdentity, UidIdentity, VmConfig, VsockGuest } from "../config/config.js";
import type { Hello } from "../protocol/messages.js";
import { VaultError } from "../base/errors.js";
import type { Identity } from "../base/types.js";
import type { Vault } from "../vault/vault.js";
import { peerRemote, type PeerInfo } from "./connection.js";
import { splitToken } from "../crypto/token-proof.js";

/** How Unix-socket peers without credentials are treated (from decidePeerTrust). */
export interface UdsTrust {
  /** Take a Unix-socket peer without credentials for the owner. Default false: refuse it. */
  ownerWithoutPeerCred?: boolean;
}

/** The VM guests of lessor.toml: Firecracker VMs by name, AF_VSOCK guests by CID. */
export interface Guests {
  vms?: readonly VmConfig[];
  vsock?: readonly VsockGuest[];
}

function guestIdentity(id: string, g: GuestIdentity): Identity {
  return { id, role: g.role, ...(g.agent ? { agent: g.agent } : {}), ...(g.actFor ? { actFor: [...g.actFor] } : {}), transport: "vsock" };
}

/** Builds the daemon's authenticate function. */
export function makeAuthenticator(
  vault: Vault,
  identities: readonly UidIdentity[],
  ownerUid: number,
  trust: UdsTrust = {},
  guests: Guests = {},
): (peer: PeerInfo, hello: Hello) => Promise<Identity> {
  const byUid = new Map(identities.map((i) => [i.uid, i]));
  const byVm = new Map((guests.vms ?? []).map((v) => [v.name, v]));
  const byCid = new Map((guests.vsock ?? []).map((g) => [g.cid, g]));

  /** Refuses a vsock peer, audited with the VM or CID it came from. */
  const refuseGuest = async (peer: PeerInfo, reason: string, message: string, extra: Record<string, string> = {}): Promise<never> => {
    await vault.recordAuthFailure("vsock", reason, { remote: peerRemote(peer), uid: peer.uid ?? null, pid: peer.pid ?? null, ...extra });
    throw new VaultError("unauthenticated", message);
  };

  const authenticateGuest = async (peer: PeerInfo, hello: Hello): Promise<Identity> => {
    // Either form: the one-step token, or the token handshake's hello (refused before any lookup, so
    // no proof is made from the token's hash). The row names the token's public id, never its secret.
    if (hello.token !== undefined || hello.tokenId !== undefined || hello.nonce !== undefined) {
      const tokenId = hello.tokenId ?? splitToken(hello.token)?.id;
      return refuseGuest(
        peer,
        "token on vsock",
        "a VM guest is identified by its vsock connection, never by a token: connect without one (the daemon refuses tokens on vsock so that a guest cannot be raised above its VM's identity)",
        tokenId !== undefined ? { token_id: tokenId } : {},
      );
    }
    if (peer.vm !== undefined) {
      const vm = byVm.get(peer.vm);
      if (vm === undefined) return refuseGuest(peer, "unknown vm", `VM ${JSON.stringify(peer.vm)} is not in lessor.toml; add a [[vm]] entry for it`);
      if (vm.uid !== undefined && peer.uid !== vm.uid)
        return refuseGuest(
          peer,
          "wrong uid for vm",
          `only uid ${vm.uid} (the Firecracker process of VM ${JSON.stringify(vm.name)}) may connect to its socket; this connection is from uid ${peer.uid ?? "unknown"}`,
        );
      return guestIdentity(`vm:${vm.name}`, vm);
    }
    if (peer.cid !== undefined) {
      const g = byCid.get(peer.cid);
      if (g === undefined) return refuseGuest(peer, "unknown cid", `guest CID ${peer.cid} is not mapped to an identity; add a [[vsock]] entry for it in lessor.toml`);
      return guestIdentity(`cid:${g.cid}`, g);
    }
    return refuseGuest(peer, "unknown guest", "this vsock connection names neither a VM nor a guest CID, so the daemon cannot tell who it is");
  };

  return async (peer, hello) => {
    // Decided by the transport before anything else: a vsock guest never authenticates by token.
    if (peer.transport === "vsock") return authenticateGuest(peer, hello);
    if (hello.token !== undefined) return vault.authenticateToken(hello.token, peer.transport, peerRemote(peer));
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
    await vault.recordAuthFailure(peer.transport, "no token", { remote: peerRemote(peer) });
    throw new VaultError("unauthenticated", `${peer.transport} clients must send a token in the hello; an admin creates one with lessor token create`);
  };
}
