/**
 * Who may hold a connection: the counts behind the per-principal connection cap and the handshake
 * budget, so that one principal cannot take the daemon's connections from the others.
 *
 * - **Principals.** A Unix-socket peer counts by uid (`uid:1000`), a vsock peer by cid (`cid:3`) or,
 *   from a Firecracker VM's socket, by VM (`vm:vm1`),
 *   from the moment it connects, whatever state its connections are in, until it authenticates with a
 *   token: from then on it counts by the token's id (`token:<id>`, on any transport) alone. Each may
 *   hold `maxConnectionsPerPrincipal`.
 * - **Issuers.** A token's connections also count for who made the token, at the root of a chain of
 *   tokens made with tokens (`issuer:uid:1000`, `issuer:embedded`): all the tokens one principal made
 *   hold at most `maxConnectionsPerIssuer` together, so that making tokens (an admin token handed to
 *   an orchestrator, one `lessor run --vault-session` token per run) does not multiply a principal's
 *   share of the daemon's connections by the number of tokens.
 * - **The owner.** A Unix-socket peer with the daemon's own uid (by peer credentials) counts for no
 *   principal and no handshake budget until it authenticates with a token: its processes are the
 *   daemon's admin (they could stop the daemon outright), and the connections its relays open for
 *   others (`lessor run --vault-session`, a sandboxed agent's, up to 64 per run in their handshake
 *   at once) must not use up a cap its own `lessor killswitch` needs. It is bounded by the daemon's
 *   connection cap, past which it has a reserve of its own (server.ts).
 * - **Handshakes.** A connection with no identity yet (before its hello is accepted) is in the
 *   handshake budget of its transport: at most `maxHandshakesPerPeer` from one peer (uid, cid or
 *   TCP address) and `maxHandshakes` in all. When the budget is full, a newcomer replaces the oldest
 *   connection that is waiting on its client (no hello yet first, else no token after the daemon's
 *   proof) among the peers with the most such connections; only if none waits on its client is the
 *   newcomer refused. Past `maxHandshakesPerPeer`, a uid or cid (one principal, by the kernel's
 *   word) is refused, but a TCP address (127.0.0.1 is every local user) replaces its own oldest
 *   connection waiting on its client, so that one user's flood cannot keep another's client out. A
 *   flood of connections that never say hello therefore neither reaches the global connection cap
 *   nor keeps a real client (which says hello at once, and is the newest) from its handshake.
 */
import { VaultError } from "../base/errors.js";
import type { Identity } from "../base/types.js";
import type { PeerInfo } from "./connection.js";

/** The limits admission applies (a part of ServerLimits). */
export interface AdmissionLimits {
  /** The daemon's own uid, whose Unix-socket peers no per-peer count holds (see above); absent: none. */
  ownerUid?: number;
  /** A Unix-socket peer without credentials is the owner (the socket is the owner's alone). */
  ownerWithoutPeerCred?: boolean;
  maxConnectionsPerPrincipal: number;
  maxConnectionsPerIssuer: number;
  maxHandshakes: number;
  maxHandshakesPerPeer: number;
}

/** What admission needs to know of a connection. */
export interface Admittable {
  /** True while its handshake waits on the client (so it may be replaced). */
  readonly awaitingPeer: boolean;
  /** True while it waits for the client's hello (replaced before one waiting for the token); absent: as awaitingPeer. */
  readonly awaitingHello?: boolean;
}

/** The answer for a new connection. */
export type Verdict<C> = { ok: true; evict: C | null } | { ok: false; why: string; message: string };

/** Where one connection is counted. */
interface Entry {
  transport: PeerInfo["transport"];
  peer: string;
  principals: string[];
  handshaking: boolean;
  /** Arrival order. */
  at: number;
}

/** The peer a connection's handshake counts against. */
function peerKey(peer: PeerInfo): string {
  if (peer.transport === "uds") return `uid:${peer.uid ?? "unknown"}`;
  if (peer.transport === "vsock") return peer.vm !== undefined ? `vm:${peer.vm}` : `cid:${peer.cid ?? "unknown"}`;
  return `tcp:${peer.remoteAddress ?? "unknown"}`;
}

/** The principal a connection counts for as soon as it is accepted (a uid or cid), or null (TCP). */
function acceptPrincipal(peer: PeerInfo): string | null {
  if (peer.transport === "uds" && peer.uid !== undefined) return `uid:${peer.uid}`;
  if (peer.transport === "vsock" && peer.vm !== undefined) return `vm:${peer.vm}`;
  if (peer.transport === "vsock" && peer.cid !== undefined) return `cid:${peer.cid}`;
  return null;
}

function describe(principal: string): string {
  const [kind, id] = [principal.slice(0, principal.indexOf(":")), principal.slice(principal.indexOf(":") + 1)];
  return kind === "token" ? `token ${id}` : `${kind} ${id}`;
}

/** The connection counts of one server. */
export class Admission<C extends Admittable> {
  readonly #limits: AdmissionLimits;
  readonly #entries = new Map<C, Entry>();
  readonly #open = new Map<string, number>();
  /** Connections in their handshake, by transport, then by peer (each set in arrival order). */
  readonly #handshakes = new Map<string, Map<string, Set<C>>>();
  readonly #handshaking = new Map<string, number>();
  #arrivals = 0;

  constructor(limits: AdmissionLimits) {
    this.#limits = limits;
  }

  /** Connections open for `principal` ("uid:1000", "token:<id>"). */
  openFor(principal: string): number {
    return this.#open.get(principal) ?? 0;
  }

  /** Connections of `transport` in their handshake. */
  handshaking(transport: PeerInfo["transport"]): number {
    return this.#handshaking.get(transport) ?? 0;
  }

  /** True for a Unix-socket peer with the daemon's own uid (see the module comment). */
  isOwner(peer: PeerInfo): boolean {
    const lim = this.#limits;
    return lim.ownerUid !== undefined && peer.transport === "uds" && (peer.uid === lim.ownerUid || (peer.uid === undefined && lim.ownerWithoutPeerCred === true));
  }

  /** Decides on a new connection from `peer`, before it is counted. */
  check(peer: PeerInfo): Verdict<C> {
    const lim = this.#limits;
    if (this.isOwner(peer)) return { ok: true, evict: null };
    const principal = acceptPrincipal(peer);
    if (principal !== null && this.openFor(principal) >= lim.maxConnectionsPerPrincipal)
      return {
        ok: false,
        why: "principal cap",
        message: `${describe(principal)} already has ${lim.maxConnectionsPerPrincipal} connections open to the daemon (max_connections_per_principal); close some, or ask the admin to raise the limit in lessor.toml [server]`,
      };
    const pool = this.#handshakes.get(peer.transport);
    const key = peerKey(peer);
    const mine = pool?.get(key);
    if ((mine?.size ?? 0) >= lim.maxHandshakesPerPeer) {
      // A TCP peer is a source address, 127.0.0.1 for every local user and agent alike: its cap
      // must not let one of them keep the others out. The newcomer takes the place of that address's
      // oldest connection still waiting on its client, as at max_handshakes; the address keeps its
      // max_handshakes_per_peer. A uid or a cid is one principal: its own flood keeps only itself out.
      const victim = peer.transport === "tcp" && mine !== undefined ? this.#victim([new Map([[key, mine]])]) : null;
      if (victim !== null) return { ok: true, evict: victim };
      return {
        ok: false,
        why: "peer handshake cap",
        message: `${mine?.size ?? 0} connections from you are still in their handshake (max_handshakes_per_peer); send the hello right after connecting, or close them, then try again`,
      };
    }
    if (this.handshaking(peer.transport) < lim.maxHandshakes) return { ok: true, evict: null };
    const victim = pool === undefined ? null : this.#victim([pool]);
    if (victim === null)
      return {
        ok: false,
        why: "handshake budget",
        message: `the daemon has ${lim.maxHandshakes} connections in their handshake already (max_handshakes); try again in a moment`,
      };
    return { ok: true, evict: victim };
  }

  /**
   * At the daemon's connection cap: the connection to close for a newcomer from `peer`, if any: the
   * oldest still in its handshake waiting on its client (any transport), from the peer with the most
   * such connections, provided that peer has at least two more of them than the newcomer's own (a
   * flood does not churn through itself). So connections that never say hello do not hold
   * `max_connections` against others (the handshake budgets together may be larger than it).
   */
  capVictim(peer: PeerInfo): C | null {
    const victim = this.#victim([...this.#handshakes.values()]);
    if (victim === null) return null;
    const waiting = (p: { transport: PeerInfo["transport"]; peer: string }): number => {
      let n = 0;
      for (const c of this.#handshakes.get(p.transport)?.get(p.peer) ?? []) if (c.awaitingPeer) n++;
      return n;
    };
    return waiting(this.#entries.get(victim)!) > waiting({ transport: peer.transport, peer: peerKey(peer) }) + 1 ? victim : null;
  }

  /**
   * The oldest connection waiting on its client, among the peers (of `pools`) with the most such
   * connections: within a peer, the oldest that has not said hello, else the oldest waiting for the
   * token after the daemon's proof (a real client answers the proof at once, and is the newest).
   * A connection that authenticated is no longer in any pool: it is never chosen.
   */
  #victim(pools: Map<string, Set<C>>[]): C | null {
    let most = 0;
    let victim: C | null = null;
    let victimAt = Infinity;
    for (const set of pools.flatMap((pool) => [...pool.values()])) {
      let waiting = 0;
      let oldest: C | null = null;
      let silent: C | null = null;
      for (const c of set)
        if (c.awaitingPeer) {
          waiting++;
          oldest ??= c; // sets keep arrival order
          if (c.awaitingHello !== false) silent ??= c;
        }
      oldest = silent ?? oldest;
      if (oldest === null || waiting < most) continue;
      const at = this.#entries.get(oldest)!.at;
      if (waiting > most || at < victimAt) [most, victim, victimAt] = [waiting, oldest, at];
    }
    return victim;
  }

  /** Counts a new connection (after {@link check} said ok). */
  add(c: C, peer: PeerInfo): void {
    const owner = this.isOwner(peer);
    const principal = owner ? null : acceptPrincipal(peer);
    const e: Entry = { transport: peer.transport, peer: peerKey(peer), principals: [], handshaking: !owner, at: this.#arrivals++ };
    this.#entries.set(c, e);
    if (owner) return;
    if (principal !== null) this.#count(e, principal);
    let pool = this.#handshakes.get(e.transport);
    if (pool === undefined) this.#handshakes.set(e.transport, (pool = new Map()));
    let set = pool.get(e.peer);
    if (set === undefined) pool.set(e.peer, (set = new Set()));
    set.add(c);
    this.#handshaking.set(e.transport, this.handshaking(e.transport) + 1);
  }

  /**
   * The connection authenticated as `identity`: counts it for its token (throwing
   * VaultError("rate_limited") when the token has too many open) and takes it out of the handshake
   * budget. A connection no longer counted (closed meanwhile) is ignored.
   */
  admit(c: C, identity: Identity): void {
    const e = this.#entries.get(c);
    if (e === undefined) return;
    const token = identity.token?.id;
    if (token !== undefined) {
      const principal = `token:${token}`;
      if (!e.principals.includes(principal)) {
        if (this.openFor(principal) >= this.#limits.maxConnectionsPerPrincipal)
          throw new VaultError(
            "rate_limited",
            `token ${token} already has ${this.#limits.maxConnectionsPerPrincipal} connections open to the daemon (max_connections_per_principal); close some, or ask the admin to raise the limit in lessor.toml [server]`,
          );
        const issuer = identity.token?.issuer;
        const byIssuer = issuer === undefined ? null : `issuer:${issuer}`;
        if (byIssuer !== null && !e.principals.includes(byIssuer) && this.openFor(byIssuer) >= this.#limits.maxConnectionsPerIssuer)
          throw new VaultError(
            "rate_limited",
            `the tokens made by ${issuer} already have ${this.#limits.maxConnectionsPerIssuer} connections open to the daemon together (max_connections_per_issuer); close some, or ask the admin to raise the limit in lessor.toml [server]`,
          );
        this.#count(e, principal);
        if (byIssuer !== null && !e.principals.includes(byIssuer)) this.#count(e, byIssuer);
      }
      // From now on it counts for its token alone, no longer for the uid or cid it came from: a
      // token's connections are the token's (capped as such), and a process that relays others'
      // sessions with a token of its own (lessor run --vault-session, its sandboxed command holding
      // as many connections as it may) must not use up its uid's connections, the owner's own CLI
      // and killswitch among them.
      for (const p of e.principals.filter((x) => x !== principal && !x.startsWith("issuer:"))) this.#uncount(e, p);
    }
    this.endHandshake(c);
  }

  /** Takes a connection out of the handshake budget (it authenticated, or is being closed). */
  endHandshake(c: C): void {
    const e = this.#entries.get(c);
    if (e === undefined || !e.handshaking) return;
    e.handshaking = false;
    const pool = this.#handshakes.get(e.transport)!;
    const set = pool.get(e.peer)!;
    set.delete(c);
    if (set.size === 0) pool.delete(e.peer);
    this.#handshaking.set(e.transport, this.handshaking(e.transport) - 1);
  }

  /** Forgets a closed connection. */
  remove(c: C): void {
    const e = this.#entries.get(c);
    if (e === undefined) return;
    this.endHandshake(c);
    for (const p of e.principals) {
      const n = (this.#open.get(p) ?? 1) - 1;
      if (n <= 0) this.#open.delete(p);
      else this.#open.set(p, n);
    }
    this.#entries.delete(c);
  }

  #uncount(e: Entry, principal: string): void {
    e.principals = e.principals.filter((x) => x !== principal);
    const n = this.openFor(principal) - 1;
    if (n <= 0) this.#open.delete(principal);
    else this.#open.set(principal, n);
  }

  #count(e: Entry, principal: string): void {
    e.principals.push(principal);
    this.#open.set(principal, this.openFor(principal) + 1);
  }
}
