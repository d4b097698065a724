/**
 * The upstream side of an intercepted tunnel whose client speaks HTTP/2: one TLS connection to the
 * checked address offering ALPN h2 and http/1.1, made lazily. If the upstream picks h2, the tunnel
 * keeps one HTTP/2 client session on it and sends every stream there; if it picks HTTP/1.1 (or no
 * ALPN), the connection is handed to the tunnel's HTTP/1.1 agent and the tunnel stays on HTTP/1.1
 * upstream for its life. The certificate is verified before a request byte is written; there is no
 * plain-text fallback.
 */
import { connect as h2Connect, type ClientHttp2Session } from "node:http2";
import type { Agent } from "node:http";
import type { Duplex } from "node:stream";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { VaultError } from "../base/errors.js";
import { connectChecked } from "./guard.js";
import { authority } from "./headers.js";
import type { Tunnel, UpstreamTls } from "./intercept.js";

/** The protocols offered to upstreams, in order of preference. */
export const UPSTREAM_ALPN: readonly string[] = Object.freeze(["h2", "http/1.1"]);

/** How a tunnel reaches its upstream: an HTTP/2 session, or the tunnel's HTTP/1.1 agent. */
export type UpstreamLink = { readonly kind: "h2"; readonly session: ClientHttp2Session } | { readonly kind: "h1"; readonly agent: Agent };

/**
 * Makes the first `createConnection` call of `agent` answer with `socket` (an upstream connection
 * already open and verified) instead of opening another one; later calls open their own as before.
 */
function lendSocket(agent: Agent, socket: Duplex): void {
  const a = agent as unknown as { createConnection: (opts: unknown, done: (err: Error | null, s?: Duplex) => void) => unknown };
  const own = a.createConnection;
  a.createConnection = function (opts, done) {
    a.createConnection = own;
    if (socket.destroyed) return own.call(this, opts, done);
    done(null, socket);
    return undefined;
  };
}

/** The upstream of one tunnel, chosen by ALPN on first use. */
export class TunnelUpstream {
  readonly #t: Tunnel;
  readonly #up: UpstreamTls;
  #session: ClientHttp2Session | undefined;
  #pending: Promise<UpstreamLink> | undefined;
  /** Set once the upstream answered with HTTP/1.1: the tunnel stays there. */
  #h1 = false;
  #closed = false;
  /** The connection being opened, so that close() can end it mid-handshake. */
  #opening: TLSSocket | undefined;
  /** The HTTP/1.1 connection lent to the agent (which may not have taken it yet when the tunnel closes). */
  #lent: TLSSocket | undefined;

  constructor(t: Tunnel, up: UpstreamTls) {
    this.#t = t;
    this.#up = up;
  }

  /** What the upstream speaks, once known: "h2" while its session is open, "h1" for good; undefined before (or between sessions). */
  get kind(): "h2" | "h1" | undefined {
    if (this.#h1) return "h1";
    const s = this.#session;
    return s && !s.closed && !s.destroyed ? "h2" : undefined;
  }

  /** The link to send the next request on (opens the connection on first use, or after the last one closed). */
  link(): Promise<UpstreamLink> {
    if (this.#closed) return Promise.reject(new VaultError("unavailable", "the tunnel is closed"));
    if (this.#h1) return Promise.resolve({ kind: "h1", agent: this.#t.agent });
    const s = this.#session;
    // A session that got GOAWAY is `closed`: its open streams go on, new ones need a new connection.
    if (s && !s.closed && !s.destroyed) return Promise.resolve({ kind: "h2", session: s });
    this.#pending ??= this.#open().finally(() => (this.#pending = undefined));
    return this.#pending;
  }

  /** Ends the upstream session and any connection being opened, at once (open streams are reset). */
  close(): void {
    this.#closed = true;
    this.#session?.destroy();
    this.#session = undefined;
    this.#opening?.destroy();
    this.#lent?.destroy();
  }

  async #open(): Promise<UpstreamLink> {
    const t = this.#t;
    const tcp = connectChecked(t.target, this.#up.connect);
    const tls = tlsConnect({
      socket: tcp,
      ...(t.target.servername !== undefined ? { servername: t.target.servername } : { host: t.target.address }),
      secureContext: this.#up.trust,
      rejectUnauthorized: true,
      ALPNProtocols: [...UPSTREAM_ALPN],
    });
    this.#opening = tls;
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once("error", reject);
        tls.once("error", reject);
        tls.once("close", () => reject(new VaultError("unavailable", "the upstream connection closed during the TLS handshake")));
        tls.once("secureConnect", () => resolve());
      });
    } catch (e) {
      tls.destroy();
      tcp.destroy();
      throw e;
    } finally {
      this.#opening = undefined;
    }
    tls.on("error", () => tls.destroy());
    if (this.#closed) {
      tls.destroy();
      throw new VaultError("unavailable", "the tunnel is closed");
    }
    if (tls.alpnProtocol !== "h2") {
      // HTTP/1.1 (or an upstream without ALPN): this connection becomes the agent's first one.
      this.#h1 = true;
      this.#lent = tls;
      lendSocket(t.agent, tls);
      return { kind: "h1", agent: t.agent };
    }
    const session = h2Connect(`https://${authority(t)}`, {
      // The connection is made and verified above; the session must not open another (nor look a name up).
      createConnection: () => tls,
      settings: { enablePush: false },
    });
    session.on("error", () => session.destroy());
    session.on("close", () => {
      if (this.#session === session) this.#session = undefined;
    });
    // An idle upstream session ends gracefully (streams still open finish first).
    session.setTimeout(this.#up.idleTimeoutMs, () => session.close());
    this.#session = session;
    return { kind: "h2", session };
  }
}
