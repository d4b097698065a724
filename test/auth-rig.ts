/**
 * A real daemon stack in this process for the token and daemon-authentication tests: a vault on a
 * temp SQLite file, the daemon's own authenticator, the server, a Unix socket (with the peer-credential
 * addon) and a loopback TCP listener. Everything is closed after the test file.
 */
import { randomUUID } from "node:crypto";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { after } from "node:test";
import { inspect } from "node:util";
import { encodeFrame, FrameDecoder } from "../src/protocol/framing.js";
import { makeAuthenticator } from "../src/server/authenticate.js";
import type { Logger } from "../src/server/logger.js";
import { loadPeerCred } from "../src/native/peercred.js";
import { LessorServer, type ServerLimits } from "../src/server/server.js";
import { listenTcp } from "../src/server/transports/tcp.js";
import { listenUnix } from "../src/server/transports/uds.js";
import { checkServerProof, endpointBinding, hashTokenSecret, newNonce, splitToken } from "../src/crypto/token-proof.js";
import type { Vault } from "../src/vault/vault.js";
import { makeVault, tempDir, type TestVault } from "./helpers.js";

export interface AuthRig {
  vault: Vault;
  test: TestVault;
  server: LessorServer;
  socketPath: string;
  tcp: { host: string; port: number };
  log: Logger & { lines: string[] };
}

/** A logger that keeps every line. */
export function captureLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const put = (level: string) => (obj: Record<string, unknown>, msg: string) => void lines.push(`${level} ${msg} ${inspect(obj, { depth: 4 })}`);
  return { lines, info: put("info"), warn: put("warn"), error: put("error") };
}

/** Starts the stack; `policy` is policy TOML, `limits` the server's, `now` the vault's clock. */
export async function authRig(opts: { policy?: string; limits?: Partial<ServerLimits>; now?: () => number } = {}): Promise<AuthRig> {
  const test = await makeVault({ ...(opts.policy === undefined ? {} : { policy: opts.policy }), ...(opts.now ? { now: opts.now } : {}) });
  const vault = test.vault;
  const log = captureLogger();
  const server = new LessorServer({
    vault,
    authenticate: makeAuthenticator(vault, [], process.getuid!()),
    ...(opts.limits ? { limits: opts.limits } : {}),
    log,
    version: "test",
  });
  const socketPath = join(tempDir("lessor-auth-"), "lessor.sock");
  const uds = await listenUnix(socketPath, { peercred: loadPeerCred(), onConnection: (s, peer) => server.handle(s, peer) });
  const tcp = await listenTcp("127.0.0.1", 0, (s, peer) => server.handle(s, peer));
  after(async () => {
    uds.close();
    tcp.close();
    await server.close();
  });
  const addr = tcp.address() as { address: string; port: number };
  return { vault, test, server, socketPath, tcp: { host: addr.address, port: addr.port }, log };
}

/** A raw protocol connection (frames in, frames out) for watching exactly what the daemon sends. */
export class RawConn {
  readonly frames: any[] = [];
  /** Date.now() when the socket closed, or null. */
  closedAt: number | null = null;
  readonly #dec = new FrameDecoder();
  #waiters: (() => void)[] = [];

  private constructor(readonly socket: Socket) {
    socket.on("data", (c: Buffer) => {
      for (const f of this.#dec.push(c)) this.frames.push(JSON.parse(f.toString("utf8")));
      this.#wake();
    });
    socket.on("close", () => {
      this.closedAt = Date.now();
      this.#wake();
    });
    socket.on("error", () => {});
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Connects to a Unix socket path or a TCP endpoint. */
  static open(where: string | { host: string; port: number }): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = typeof where === "string" ? connect(where) : connect({ host: where.host, port: where.port });
      s.once("connect", () => resolve(new RawConn(s)));
      s.once("error", reject);
    });
  }

  /**
   * Opens a connection and does the token handshake by hand, checking the daemon's proof as the
   * client does; resolves once welcomed.
   */
  static async withToken(where: { host: string; port: number } | string, token: string): Promise<RawConn> {
    const c = await RawConn.open(where);
    const { id, secret } = splitToken(token)!;
    const nonce = newNonce();
    c.send({ protocol: "lessor", version: 1, tokenId: id, nonce: nonce.toString("base64url") });
    const ch = (await c.next()).challenge as { nonce: string; proof: string };
    const binding = typeof where === "string" ? "uds" : endpointBinding("tcp", c.socket.remoteAddress, c.socket.remotePort);
    if (!checkServerProof(hashTokenSecret(secret), nonce, Buffer.from(ch.nonce, "base64url"), id, binding, Buffer.from(ch.proof, "base64url")))
      throw new Error("the daemon's proof did not check out");
    c.send({ token });
    const w = await c.next();
    if (w.ok !== true) throw new Error(`refused: ${JSON.stringify(w)}`);
    return c;
  }

  send(obj: unknown): void {
    this.socket.write(encodeFrame(obj));
  }

  /** Sends a request; returns its id. */
  request(method: string, params: Record<string, unknown> = {}): string {
    const id = randomUUID();
    this.send({ id, method, params });
    return id;
  }

  #read = 0;

  /** The next frame not yet returned (waits up to `ms`); throws if the socket closes first. */
  async next(ms = 5000): Promise<any> {
    const end = Date.now() + ms;
    while (this.frames.length <= this.#read) {
      if (this.closedAt !== null) throw new Error("closed before the next frame");
      if (Date.now() > end) throw new Error("no frame in time");
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 50).unref();
      });
    }
    return this.frames[this.#read++];
  }

  /** Resolves with Date.now() at close, or rejects after `ms`. */
  async closed(ms = 5000): Promise<number> {
    const end = Date.now() + ms;
    while (this.closedAt === null) {
      if (Date.now() > end) throw new Error(`still open after ${ms} ms`);
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 20).unref();
      });
    }
    return this.closedAt;
  }

  close(): void {
    this.socket.destroy();
  }
}
