/**
 * What every listener has in common, whatever its transport: it hands each accepted connection to the
 * server as a duplex stream plus the {@link PeerInfo} it found, and it can be closed. The server never
 * sees a socket type, so a transport whose connections are not net.Sockets (vsock) drops in.
 */
import type { Duplex } from "node:stream";
import type { PeerInfo } from "../connection.js";

/** Called once per accepted connection. */
export type OnConnection = (stream: Duplex, peer: PeerInfo) => void;

/** Which listener to open, as the configuration describes it. */
export type ListenerSpec =
  /** A Unix socket at `path` (absolute), its file made with permission bits `mode`. */
  | { kind: "uds"; path: string; mode: number }
  /** Loopback TCP; port 0 picks a free port. */
  | { kind: "tcp"; host: string; port: number }
  /**
   * A Firecracker VM's vsock socket: the Unix socket `path` (= `<uds_path>_<port>`) where Firecracker
   * delivers the guest's connections to host port `port`. Every connection is the VM named `vm`; when
   * `uid` is set, only that uid (the Firecracker process) may be the peer.
   */
  | { kind: "vsock-uds"; path: string; mode: number; vm: string; port: number; uid?: number }
  /** AF_VSOCK on any local CID (QEMU/vhost-vsock guests; needs the native/vsock addon). */
  | { kind: "vsock"; port: number };

/** An open listener. */
export interface Listener {
  /** What it listens on; for TCP the bound address and port (a configured port 0 becomes the one picked). */
  readonly bound: ListenerSpec;
  /** Stops accepting (connections already handed over are the server's to close); a Unix socket's file is removed. */
  close(): void;
}
