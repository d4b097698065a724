/**
 * LessorClient: the protocol v1 client over a Unix socket or loopback TCP (DESIGN.md, "Wire protocol"),
 * put together from the connection engine (src/client/engine.ts, over a transport from
 * src/client/transport.ts), the wire codecs (src/client/codecs.ts) and the SDK's methods
 * (src/client/facade.ts). Every method of the protocol is reachable as `client.api.<wire name>()`
 * (typed from the method registry) or `client.call(name, params)` (the result as sent on the wire).
 *
 * Secret values travel base64-encoded and are decoded straight into a {@link SecretBytes}.
 *
 * This module and those it loads import no zod (the schemas stay with the server), so the CLI starts
 * fast; the peer-credential check and node:crypto are loaded only when a connection needs them.
 */
import type { SecretBytes } from "../crypto/secret-bytes.js";
import { MAX_FRAME_BYTES } from "../protocol/framing.js";
import type { WireIdentity } from "../protocol/messages.js";
import type { MethodName, Params, Results } from "../protocol/registry.js";
import { VaultError } from "../base/errors.js";
import { TOKEN_RE } from "../base/token-shape.js";
import { decodeResult } from "./codecs.js";
import { ClientEngine, type EngineOptions } from "./engine.js";
import { LessorMethods } from "./facade.js";
import { netTransport, type ClientTransport, type Endpoint } from "./transport.js";

export type { Endpoint } from "./transport.js";
export type { SecretInput } from "./codecs.js";
export type { AccessTargetInput, ClientAccessResult, LeaseListFilter, LeaseRequestInput, SecretSpec, StoreSecretInput } from "./facade.js";

const inspectSymbol = Symbol.for("nodejs.util.inspect.custom");

/** Options of {@link LessorClient.connect}. */
export interface ClientOptions {
  /**
   * Bearer token (required over TCP; optional on a Unix socket). It is sent only after the daemon has
   * proved it holds the token's hash (see docs/protocol.md, "Token handshake").
   */
  token?: string;
  /**
   * On a Unix socket, the uid the daemon must run as (root is also accepted: it is outside the threat
   * model). Default: this process's uid. Before writing anything the client checks the listening
   * process's uid (SO_PEERCRED) or, without the peer-credential addon, that the socket file and its
   * directory belong to this uid and the directory is not writable by others; otherwise `connect`
   * fails with `daemon_unverified` and nothing is sent.
   */
  expectedUid?: number;
  /**
   * How a program's users accept a daemon that runs as another uid, ending the `daemon_unverified`
   * message ("…, or, if the daemon really runs as uid N, <this>"). Default: "pass expectedUid: N".
   * The CLI says "set LESSOR_DAEMON_UID…".
   */
  expectedUidRemedy?: (uid: number) => string;
  /** Time allowed to connect and finish the handshake, in ms (default 5000). */
  connectTimeoutMs?: number;
  /** Time allowed for each call's answer, in ms (default 30000). */
  requestTimeoutMs?: number;
  /** Reconnect on the next call after the connection was lost (default true). */
  reconnect?: boolean;
  /**
   * With `reconnect`: a new connection the daemon gives another identity than the first connection
   * had (another id, role or agent: a daemon restarted with other identities, say) is refused
   * (`unauthenticated`) before any call goes out on it, and so is every call until a connection with
   * the first identity is made. For a program that decided what to do from the identity it started
   * with (lessor mcp acts for the agent the daemon named then). Default false.
   */
  keepIdentity?: boolean;
  /** Frame size cap in bytes, for both directions (default and maximum 1 MiB). */
  maxFrameBytes?: number;
  /**
   * Let {@link LessorClient.connect} resolve once the socket is connected instead of after the
   * handshake (default false). Calls made meanwhile are sent right behind the hello, saving a round
   * trip; the daemon answers them only after it accepts the hello, and a refused handshake fails
   * them with its error (`unauthenticated`, …). For short-lived callers such as the CLI.
   */
  pipeline?: boolean;
}

/** A client of the lessor daemon. Create with {@link LessorClient.connect} (or {@link LessorClient.over}). */
export class LessorClient extends LessorMethods {
  readonly #engine: ClientEngine;

  private constructor(engine: ClientEngine) {
    super((method, params) => engine.request(method, params).then(decodeResult));
    this.#engine = engine;
  }

  /**
   * Connects and does the handshake. Throws VaultError (`unavailable`, `unauthenticated`, …) on
   * failure. With `pipeline`, resolves once the socket is connected (see {@link ClientOptions.pipeline}).
   */
  static async connect(endpoint: Endpoint, opts: ClientOptions = {}): Promise<LessorClient> {
    const transport = netTransport(endpoint, { expectedUid: opts.expectedUid ?? process.getuid?.(), remedy: opts.expectedUidRemedy });
    checkToken(transport, opts.token);
    if (opts.expectedUid !== undefined && (!Number.isSafeInteger(opts.expectedUid) || opts.expectedUid < 0))
      throw new VaultError("invalid_request", "expectedUid must be a uid (a whole number of at least 0)");
    return LessorClient.over(transport, opts);
  }

  /**
   * Connects over any transport (a duplex stream and what the handshake needs to know about it; see
   * src/client/transport.ts). `expectedUid` and `expectedUidRemedy` belong to the transport here.
   */
  static async over(transport: ClientTransport, opts: Omit<ClientOptions, "expectedUid" | "expectedUidRemedy"> = {}): Promise<LessorClient> {
    const engine = new ClientEngine(transport, engineOptions(transport, opts));
    const client = new LessorClient(engine);
    if (opts.pipeline) await new Promise<void>((connected, reject) => engine.connect(connected).catch(reject));
    else await engine.connect();
    return client;
  }

  /** Who the daemon says this connection is (from the handshake; with `pipeline`, after the first answer). */
  get identity(): WireIdentity {
    return this.#engine.identity!;
  }

  /** True while a connection is open and ready. */
  get connected(): boolean {
    return this.#engine.ready;
  }

  /** Calls one protocol method and returns its result as sent on the wire (values stay base64). */
  call<M extends MethodName>(method: M, params: Params<M>): Promise<Results[M]> {
    return this.#engine.request(method, params);
  }

  /** Closes the connection. Calls still in flight fail with `unavailable`; later calls fail too. */
  close(): Promise<void> {
    return this.#engine.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  [inspectSymbol](): string {
    const id = this.#engine.identity;
    const who = id === null ? "no identity" : id.role === "agent" ? `agent ${id.agent ?? id.id}` : `${id.role} ${id.id}`;
    const state = this.#engine.closed ? ", closed" : this.#engine.ready ? "" : ", disconnected";
    return `LessorClient(${this.#engine.where}, ${who}${state})`;
  }

  toJSON(): { endpoint: string; identity: WireIdentity | null } {
    return { endpoint: this.#engine.where, identity: this.#engine.identity };
  }
}

/** Refuses a token that is not one, and a transport that needs a token without one. */
function checkToken(transport: ClientTransport, token: string | undefined): void {
  if (token !== undefined && (typeof token !== "string" || !TOKEN_RE.test(token)))
    throw new VaultError("unauthenticated", "the token is not a lessor token (lsr_ followed by 16 hex characters, _ and 43 more); check that it was copied whole");
  if (token === undefined && transport.needsToken)
    throw new VaultError(
      "unauthenticated",
      `a TCP connection (${transport.where}) needs a token: over TCP only a token lets the client check that it reached the real daemon before sending anything; pass { token } (lessor token create makes one) or use the Unix socket`,
    );
}

/** The engine's options from the client's, checked. */
function engineOptions(transport: ClientTransport, opts: ClientOptions): EngineOptions {
  checkToken(transport, opts.token);
  return {
    token: opts.token,
    connectTimeoutMs: positive(opts.connectTimeoutMs, 5000, "connectTimeoutMs"),
    requestTimeoutMs: positive(opts.requestTimeoutMs, 30_000, "requestTimeoutMs"),
    reconnect: opts.reconnect ?? true,
    pipeline: opts.pipeline ?? false,
    keepIdentity: opts.keepIdentity ?? false,
    maxFrameBytes: Math.min(positive(opts.maxFrameBytes, MAX_FRAME_BYTES, "maxFrameBytes"), MAX_FRAME_BYTES),
  };
}

function positive(v: number | undefined, dflt: number, what: string): number {
  if (v === undefined) return dflt;
  if (!Number.isFinite(v) || v <= 0) throw new VaultError("invalid_request", `${what} must be a positive number`);
  return v;
}
