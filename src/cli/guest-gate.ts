/**
 * The door through which `lessor proxy` and `lessor mcp` take connections from VM guests over vsock,
 * in both forms the daemon knows (docs/vm.md):
 *
 * - Firecracker: the Unix socket `<uds_path>_<P>` of a `[[vm]]` (P: the service's guest port), made
 *   exactly like the daemon's socket for that VM (src/server/transports/firecracker.ts: its directory
 *   checked, the entry's `socket_mode`, and its `uid` checked by SO_PEERCRED); every connection on it is
 *   that VM;
 * - AF_VSOCK: a listener on port P (src/server/transports/vsock.ts, the native/vsock addon); each
 *   connection is the `[[vsock]]` entry of its peer CID, which the host kernel sets.
 *
 * {@link GuestGate} decides, for each connection, which agent it is offered (src/config/guest-map.ts:
 * the guest's own agent, or one an orchestrator guest's act_for covers) or refuses it: an unmapped
 * CID, a CID mapped to another agent, a wrong uid on a VM socket, more connections than the caps
 * allow. Refusals are counted and logged (the first ones, then every hundredth); the guest gets a short
 * message from the service (`refuse`), then the connection is closed. Nothing the guest sends is read
 * before the decision.
 */
import type { Socket } from "node:net";
import { resolve } from "node:path";
import type { Duplex } from "node:stream";
import { VaultError } from "../base/errors.js";
import { SparseLog } from "../base/sparse-log.js";
import { guestAgent, vmOfSocket, type GuestAgent } from "../config/guest-map.js";
import type { VmConfig, VsockGuest } from "../config/vm-config.js";
import { loadPeerCred, type PeerCredLoader } from "../native/peercred.js";
import { loadVsock, type VsockLoader } from "../native/vsock.js";
import type { PeerInfo } from "../server/connection.js";
import { listenFirecracker } from "../server/transports/firecracker.js";
import { listenUnix } from "../server/transports/uds.js";
import { listenVsock } from "../server/transports/vsock.js";
import { UsageError } from "./cli.js";

/** A guest let through: who it is (`vm:<name>`, `cid:<n>`, or `socket`) and the agent it is offered. */
export interface Guest {
  principal: string;
  agent: string;
}

/** Where the guests' connections arrive. */
export type GuestSource =
  /** A Firecracker VM's socket `<uds_path>_<port>` (path absolute). */
  | { kind: "vm"; vm: VmConfig; path: string; port: number }
  /** An AF_VSOCK port; peers are mapped by `[[vsock]]`. */
  | { kind: "vsock"; port: number; guests: readonly VsockGuest[] }
  /** A plain 0600 Unix socket for one agent (a container, a forwarder): whoever can connect is that agent. */
  | { kind: "socket"; path: string; agent: string };

/** Options of {@link GuestGate}. */
export interface GuestGateOptions {
  /** The command, for log lines ("lessor proxy"). */
  what: string;
  /** The agent the command was asked for (`--agent`), if any: guests mapped to another are refused. */
  agent: string | undefined;
  /** A further check of an agent (may this command act for it?): the reason it may not, or null. */
  check?(agent: string): string | null;
  /** Takes a connection let through (its owner from now on). */
  onGuest(stream: Duplex, guest: Guest): void;
  /** Says why to a refused guest before the gate closes the connection (default: closed without a word); `message` names no other guest or agent. */
  refuse?(stream: Duplex, message: string): void;
  log(line: string): void;
  /** Most connections open at once from one guest (default 64). */
  maxPerGuest?: number;
  /** Most connections open at once in all (default 256). */
  maxTotal?: number;
}


/** Decides who each guest connection is; see the module comment. */
export class GuestGate {
  readonly #o: GuestGateOptions;
  readonly #source: GuestSource;
  /** The `[[vm]]`'s agent, or each CID's. */
  readonly #vmAgent: GuestAgent | null = null;
  readonly #byCid = new Map<number, GuestAgent>();
  readonly #live = new Map<string, number>();
  #total = 0;
  readonly #refused: SparseLog;
  #closed = false;

  /**
   * Checks the mapping at start: throws `config_invalid` when the VM is not offered the agent, or when
   * no `[[vsock]]` entry maps a CID to an agent this command serves.
   */
  constructor(source: GuestSource, o: GuestGateOptions) {
    this.#o = o;
    this.#source = source;
    this.#refused = new SparseLog(
      (l) => o.log(l),
      (line) => line,
      (n, line) => `${o.what}: ${n} guest connections refused so far (latest: ${line.slice(o.what.length + 2)})`,
    );
    const checked = (g: GuestAgent): GuestAgent => {
      if ("refused" in g) return g;
      const why = o.check?.(g.agent) ?? null;
      return why === null ? g : { refused: why };
    };
    if (source.kind === "vm") {
      const g = checked(guestAgent(source.vm, o.agent));
      if ("refused" in g) throw new VaultError("config_invalid", `${source.path} is the socket of [[vm]] ${JSON.stringify(source.vm.name)} (guest port ${source.port}), and ${o.what} cannot serve that VM: ${g.refused}`);
      this.#vmAgent = g;
    } else if (source.kind === "socket") {
      const g = checked({ agent: source.agent });
      if ("refused" in g) throw new VaultError("config_invalid", `${o.what} cannot serve agent ${JSON.stringify(source.agent)} on ${source.path}: ${g.refused}`);
      this.#vmAgent = g;
    } else {
      for (const guest of source.guests) this.#byCid.set(guest.cid, checked(guestAgent(guest, o.agent)));
      if (![...this.#byCid.values()].some((g) => "agent" in g)) {
        const want = o.agent !== undefined ? ` to agent ${JSON.stringify(o.agent)}` : "";
        const why = [...this.#byCid].map(([cid, g]) => `CID ${cid}: ${"refused" in g ? g.refused : ""}`).join("; ");
        throw new VaultError("config_invalid", `--vsock-port ${source.port}: no [[vsock]] entry in lessor.toml maps a guest CID${want}${why ? ` (${why})` : ""}; add one (cid = <the guest's CID>, agent = "<agent>")`);
      }
    }
  }

  /** Connections refused (or failed before they reached the service) so far. */
  get refused(): number {
    return this.#refused.count;
  }

  /** The CIDs let through, each with its agent (AF_VSOCK only). */
  mappedCids(): { cid: number; agent: string }[] {
    return [...this.#byCid].flatMap(([cid, g]) => ("agent" in g ? [{ cid, agent: g.agent }] : []));
  }

  /** The agent a VM or plain socket is offered (null for AF_VSOCK). */
  get agent(): string | null {
    return this.#vmAgent !== null && "agent" in this.#vmAgent ? this.#vmAgent.agent : null;
  }

  /** Takes one accepted connection and its peer, as a listener hands them over. */
  readonly handle = (stream: Duplex, peer: PeerInfo): void => {
    const who = this.#decide(peer);
    if ("refused" in who) return this.#refuse(stream, who.principal, who.refused, who.tell);
    const max = this.#o.maxPerGuest ?? 64;
    const total = this.#o.maxTotal ?? 256;
    const live = this.#live.get(who.principal) ?? 0;
    if (this.#total >= total || live >= max) {
      const why = this.#total >= total ? `too many connections open at once (${total}); close some first` : `too many connections open at once from ${who.principal} (${max}); close some first`;
      return this.#refuse(stream, who.principal, why, why);
    }
    this.#live.set(who.principal, live + 1);
    this.#total++;
    stream.once("close", () => {
      this.#total--;
      const n = (this.#live.get(who.principal) ?? 1) - 1;
      if (n > 0) this.#live.set(who.principal, n);
      else this.#live.delete(who.principal);
    });
    this.#o.onGuest(stream, { principal: who.principal, agent: who.agent });
  };

  /** A listener's error (an accept that failed, a reserved CID closed by the listener): counted and logged. */
  readonly onError = (e: Error): void => {
    this.#count(`${this.#o.what}: ${e.message}`);
  };

  /** Stops letting connections through (each later one is closed). */
  close(): void {
    this.#closed = true;
  }

  /** Who the peer is and its agent, or why not: `refused` for the log, `tell` for the guest (naming no other guest or agent). */
  #decide(peer: PeerInfo): { principal: string; agent: string } | { principal: string; refused: string; tell: string } {
    const s = this.#source;
    if (this.#closed) return { principal: "guest", refused: `${this.#o.what} is stopping`, tell: `${this.#o.what} is stopping` };
    if (s.kind === "vm" || s.kind === "socket") {
      const principal = s.kind === "vm" ? `vm:${s.vm.name}` : "socket";
      if (s.kind === "vm" && s.vm.uid !== undefined && peer.uid !== s.vm.uid)
        return {
          principal,
          tell: "this socket takes connections from the VM's Firecracker process only",
          refused: `only uid ${s.vm.uid} (the Firecracker process of VM ${JSON.stringify(s.vm.name)}) may connect to ${s.path}; this connection is from ${peer.uid === undefined ? "an unknown uid" : `uid ${peer.uid}`}`,
        };
      return { principal, agent: (this.#vmAgent as { agent: string }).agent };
    }
    if (peer.transport !== "vsock" || peer.cid === undefined) return { principal: "unknown", refused: "this connection names no guest CID", tell: "this connection names no guest CID" };
    const principal = `cid:${peer.cid}`;
    const g = this.#byCid.get(peer.cid);
    if (g === undefined)
      return { principal, refused: `guest CID ${peer.cid} is not mapped to an agent; add a [[vsock]] entry for it in lessor.toml`, tell: `guest CID ${peer.cid} is not mapped to an agent here` };
    if ("refused" in g) return { principal, refused: `guest CID ${peer.cid} is not served here: ${g.refused}`, tell: `guest CID ${peer.cid} is not served here` };
    return { principal, agent: g.agent };
  }

  #refuse(stream: Duplex, principal: string, why: string, tell: string): void {
    this.#count(`${this.#o.what}: refused a connection from ${principal}: ${why}`);
    stream.on("error", () => {});
    try {
      this.#o.refuse?.(stream, `${this.#o.what}: ${tell}`);
    } finally {
      // The message, if any, is flushed first; a guest that does not read it is cut off after a second.
      stream.end();
      setTimeout(() => stream.destroy(), 1000).unref();
    }
  }

  #count(line: string): void {
    this.#refused.add(line);
  }
}

/** An open guest listener. */
export interface GuestListener {
  /** What it listens on, for the start-up line. */
  where: string;
  close(): void;
}

/**
 * Checks, before anything is leased, that the listener for `source` can be opened: the AF_VSOCK addon
 * for a vsock port, the peer-credential addon for a `[[vm]]` that names its Firecracker `uid`. Throws
 * `config_invalid` naming the fix; returns the loaders {@link listenGuests} takes.
 */
export function preflightGuests(source: GuestSource): { vsock?: VsockLoader; peercred?: PeerCredLoader } {
  if (source.kind === "vsock") {
    const vsock = loadVsock();
    if (!vsock.available) throw new VaultError("config_invalid", `--vsock-port needs the AF_VSOCK addon, which is not available: ${vsock.reason}`);
    return { vsock };
  }
  if (source.kind !== "vm") return {};
  const peercred = loadPeerCred();
  if (source.vm.uid !== undefined && !peercred.available)
    throw new VaultError("config_invalid", `[[vm]] ${JSON.stringify(source.vm.name)} sets uid = ${source.vm.uid}, so only that uid may connect to ${source.path}, but peer credentials cannot be read (${peercred.reason}); build the addon (native/peercred/README.md) or remove uid`);
  return { peercred };
}

/**
 * Opens the listener for `source` and hands every connection to `gate`. Throws VaultErrors naming the
 * fix: an unsafe socket directory, a path taken, the AF_VSOCK addon missing, the vsock port taken.
 */
export async function listenGuests(source: GuestSource, gate: GuestGate, opts: { vsock?: VsockLoader; peercred?: PeerCredLoader } = {}): Promise<GuestListener> {
  if (source.kind === "vm") {
    const { vm, path } = source;
    const l = await listenFirecracker(
      { path, mode: vm.socketMode, vm: vm.name, ...(vm.uid !== undefined ? { uid: vm.uid } : {}) },
      { onConnection: gate.handle, onError: gate.onError, peercred: opts.peercred ?? loadPeerCred() },
    );
    return { where: `VM ${JSON.stringify(vm.name)}'s vsock socket ${path} (guest port ${source.port})`, close: () => void l.close() };
  }
  if (source.kind === "socket") {
    const l = await listenUnix(source.path, { mode: 0o600, onError: gate.onError, onConnection: (socket: Socket) => gate.handle(socket, { transport: "uds" }) });
    return { where: `the Unix socket ${source.path}`, close: () => void l.close() };
  }
  const loader = opts.vsock ?? loadVsock();
  if (!loader.available) throw new VaultError("config_invalid", `--vsock-port needs the AF_VSOCK addon, which is not available: ${loader.reason}`);
  let l;
  try {
    l = listenVsock(source.port, loader, gate.handle, gate.onError);
  } catch (e) {
    // Its hints name the daemon's setting.
    if (e instanceof VaultError) throw new VaultError(e.code, e.message.replace("pick another vsock_port", "pick another --vsock-port"));
    throw e;
  }
  const cids = gate.mappedCids().map((c) => `${c.cid} (agent ${JSON.stringify(c.agent)})`);
  return { where: `AF_VSOCK port ${source.port}, for guest CID ${cids.join(", ")}`, close: () => l.close() };
}

/** Parses `--vsock-port P`: a whole number from 1 to 4294967294. */
export function parseVsockPortFlag(text: string): number {
  const n = /^[0-9]{1,10}$/.test(text) ? Number(text) : NaN;
  if (!(n >= 1 && n <= 2 ** 32 - 2)) throw new UsageError(`--vsock-port ${JSON.stringify(text)}: expected a vsock port, a whole number from 1 to 4294967294`);
  return n;
}

/**
 * Where a command's guests come from, given its `--socket` and `--vsock-port`: a `[[vm]]`'s
 * Firecracker socket (`<uds_path>_<P>`), an AF_VSOCK port mapped by `[[vsock]]`, or null for a
 * `--socket` that is no VM's (a plain socket) or neither flag.
 */
export function guestSourceOf(o: { socket?: string | undefined; vsockPort?: string | undefined }, config: { vms: readonly VmConfig[]; vsockGuests: readonly VsockGuest[] }, home: string): GuestSource | null {
  if (o.vsockPort !== undefined) return { kind: "vsock", port: parseVsockPortFlag(o.vsockPort), guests: config.vsockGuests };
  if (o.socket === undefined) return null;
  const m = vmOfSocket(config.vms, home, o.socket);
  if (m !== null && m.port === m.vm.port)
    throw new UsageError(`--socket ${o.socket}: that is the daemon's own socket for VM ${JSON.stringify(m.vm.name)} (port ${m.vm.port} in its [[vm]] entry); give this service another guest port, e.g. ${m.vm.udsPath}_3128`);
  return m === null ? null : { kind: "vm", vm: m.vm, path: resolve(o.socket), port: m.port };
}
