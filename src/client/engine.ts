/**
 * The client's connection engine: one duplex stream to the daemon (opened by a
 * {@link ClientTransport}), the handshake, and many calls in flight over it.
 *
 * Every request gets a UUIDv7 id and responses are matched by id in any order. A call that gets no
 * answer within `requestTimeoutMs` fails with `unavailable` and its id is forgotten. When the stream
 * drops, every call in flight fails with `unavailable` and is never resent (access_secret is not
 * idempotent); with `reconnect` on, the next call opens a new stream.
 *
 * The engine authenticates the daemon before it writes anything that matters (docs/client.md,
 * "Daemon authentication"): the transport's check first (a Unix socket: the daemon's uid), before even
 * the hello; with a token, the daemon must prove it holds the token's hash before the token is sent,
 * and nothing else (no request, no value) is sent until then.
 *
 * A request whose params carry a secret value (`value`) is framed in a buffer of its own and zeroed
 * once written; a response frame that carried a value is zeroed as soon as it is parsed. The JSON text
 * of a frame is a JavaScript string, which cannot be wiped.
 */
import type { Duplex } from "node:stream";
import { encodeFrame, FrameDecoder, FrameTooLarge } from "../protocol/framing.js";
import type { WireIdentity } from "../protocol/messages.js";
import { VaultError } from "../base/errors.js";
import { isWireErrorShape, parseChallenge, parseWelcome, PROTOCOL_NAME, PROTOCOL_VERSION, toVaultError } from "./codecs.js";
import type { ClientTransport } from "./transport.js";

type ProofLib = typeof import("../crypto/token-proof.js");
let proofModule: Promise<ProofLib> | null = null;
/** The token proof (node:crypto), loaded on first use. */
function loadProof(): Promise<ProofLib> {
  return (proofModule ??= import("../crypto/token-proof.js"));
}

/** How an engine behaves (checked by the caller, src/client/client.ts). */
export interface EngineOptions {
  /** A lessor token, shown only once the daemon proved it holds its hash; undefined: none. */
  token: string | undefined;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  reconnect: boolean;
  /** Let calls go out right behind the hello, before the welcome (see ClientOptions.pipeline). */
  pipeline: boolean;
  /** Refuse a reconnection the daemon gives another identity than the first connection's (see ClientOptions.keepIdentity). */
  keepIdentity: boolean;
  maxFrameBytes: number;
}

/** Frames of calls pipelined on a connecting stream, held until the daemon is authenticated. */
interface Gate {
  open: boolean;
  held: { frame: Buffer; wipe: boolean }[];
}

interface Pending {
  resolve: (v: any) => void;
  reject: (e: unknown) => void;
  deadline: number;
  method: string;
}

const IDLE = 0;
const CONNECTING = 1;
const READY = 2;
const CLOSED = 3;

let requestSeq = 0;

/**
 * A request id in the protocol's UUIDv7 form: the time, then a per-process counter, so ids are
 * unique among the requests of this process. They are not secrets, so no CSPRNG is used, which
 * keeps node:crypto (several ms to load) out of the CLI's start-up.
 */
function requestId(): string {
  const ms = Date.now().toString(16).padStart(12, "0");
  requestSeq = (requestSeq + 1) % 0x1_0000_0000_0000;
  const r = Math.floor(Math.random() * 0x1000).toString(16).padStart(3, "0");
  return `${ms.slice(0, 8)}-${ms.slice(8)}-7${r}-8000-${requestSeq.toString(16).padStart(12, "0")}`;
}

/** True when a request's params carry a secret value (by the protocol's convention, the `value` param). */
function carriesValue(params: unknown): boolean {
  return typeof params === "object" && params !== null && "value" in params;
}

/** One connection to the daemon at a time, reopened on demand; see the module comment. */
export class ClientEngine {
  readonly #transport: ClientTransport;
  readonly #o: EngineOptions;

  #state = IDLE;
  #stream: Duplex | null = null;
  #decoder: FrameDecoder | null = null;
  #connecting: Promise<void> | null = null;
  #connectingStream: Duplex | null = null;
  #pending = new Map<string, Pending>();
  #sweep: NodeJS.Timeout | null = null;
  #lastStreamError: string | undefined;
  #identity: WireIdentity | null = null;
  /** Frames of calls pipelined on the connecting stream, held until the daemon is authenticated. */
  #gate: Gate | null = null;
  /** Why the last connection attempt failed (null once one succeeds): what later calls report when reconnect is off. */
  #connectError: VaultError | null = null;

  constructor(transport: ClientTransport, opts: EngineOptions) {
    this.#transport = transport;
    this.#o = opts;
  }

  /** Where the daemon is, for messages (`uds /path`, `tcp host:port`). */
  get where(): string {
    return this.#transport.where;
  }

  /** Who the daemon says this connection is, once it said so; else null. */
  get identity(): WireIdentity | null {
    return this.#identity;
  }

  /** True while a connection is open and ready. */
  get ready(): boolean {
    return this.#state === READY;
  }

  /** True once {@link close} was called. */
  get closed(): boolean {
    return this.#state === CLOSED;
  }

  /** Sends one request and resolves to its result as sent on the wire; connects first when needed. */
  request(method: string, params: unknown): Promise<any> {
    const secret = carriesValue(params);
    if (this.#state === READY) return this.#send(method, params, secret);
    return this.#callAfterConnect(method, params, secret);
  }

  /** Closes the connection. Calls still in flight fail with `unavailable`; later calls fail too. */
  async close(): Promise<void> {
    if (this.#state === CLOSED) return;
    this.#state = CLOSED;
    const stream = this.#stream;
    this.#stream = null;
    this.#decoder = null;
    this.#connectingStream?.destroy();
    this.#rejectAll(() => new VaultError("unavailable", "the LessorClient was closed before the lessor daemon answered"));
    if (stream === null || stream.closed) return;
    await new Promise<void>((resolve) => {
      stream.once("close", () => resolve());
      // Every call was answered or has just been rejected, so nothing written is still wanted:
      // destroy at once rather than wait for the daemon to see the end of the stream.
      stream.destroy();
    });
  }

  async #callAfterConnect(method: string, params: unknown, secret: boolean): Promise<any> {
    if (this.#state === CLOSED) throw new VaultError("unavailable", "this LessorClient was closed; connect a new one");
    // Behind the hello on the connecting stream: the daemon answers once it has accepted the hello.
    // Not on a reconnection that must keep the identity: the call waits for the welcome, which says
    // who the new connection is.
    if (this.#state === CONNECTING && this.#o.pipeline && this.#connectingStream && !(this.#o.keepIdentity && this.#identity !== null))
      return this.#send(method, params, secret, this.#connectingStream);
    if (this.#state === CONNECTING) await this.#connecting;
    else if (!this.#o.reconnect)
      // A pipelined connect resolves before the handshake: its failure is this call's answer.
      throw this.#connectError ?? new VaultError("unavailable", "the connection to the lessor daemon was lost and reconnect is off; connect a new LessorClient");
    else await this.connect();
    if (this.#state !== READY) throw new VaultError("unavailable", "the connection to the lessor daemon was lost again right after reconnecting; check the daemon");
    return this.#send(method, params, secret);
  }

  #send(method: string, params: unknown, secret: boolean, stream: Duplex = this.#stream!): Promise<any> {
    const id = requestId();
    const message = { id, method, params };
    let frame: Buffer;
    try {
      frame = encodeFrame(message, secret);
    } catch {
      return Promise.reject(new VaultError("invalid_request", `the ${method} params cannot be sent as JSON; pass plain values`));
    }
    const max = this.#o.maxFrameBytes;
    if (frame.length - 4 > max) {
      if (secret) frame.fill(0);
      return Promise.reject(new VaultError("invalid_request", `the ${method} request is ${frame.length - 4} bytes, over the ${max}-byte frame limit; send a smaller value`));
    }
    const deadline = monotonicMs() + this.#o.requestTimeoutMs;
    const promise = new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, deadline, method });
    });
    if (this.#sweep === null) this.#armSweep(this.#o.requestTimeoutMs);
    const gate = this.#gate;
    if (stream !== this.#stream && gate !== null && !gate.open) gate.held.push({ frame, wipe: secret }); // not before the daemon proved itself
    else if (secret) stream.write(frame, () => frame.fill(0));
    else stream.write(frame);
    return promise;
  }

  /**
   * One timer for all timeouts: every call has the same timeout, so the pending map (insertion order)
   * is also deadline order, and a sweep stops at the first call still within its time.
   */
  #armSweep(ms: number): void {
    this.#sweep = setTimeout(this.#onSweep, Math.max(1, Math.ceil(ms)));
    this.#sweep.unref();
  }

  #onSweep = (): void => {
    this.#sweep = null;
    const now = monotonicMs();
    for (const [id, p] of this.#pending) {
      if (p.deadline > now) {
        this.#armSweep(p.deadline - now);
        return;
      }
      this.#pending.delete(id);
      p.reject(
        new VaultError(
          "unavailable",
          `no answer from the lessor daemon within ${this.#o.requestTimeoutMs} ms for ${p.method}; it may or may not have taken effect, so check before retrying`,
        ),
      );
    }
  };

  #rejectAll(make: () => VaultError): void {
    if (this.#sweep !== null) {
      clearTimeout(this.#sweep);
      this.#sweep = null;
    }
    const pending = this.#pending;
    this.#pending = new Map();
    for (const p of pending.values()) p.reject(make());
  }

  /** Drops the connection `stream` (if still current) and fails every call in flight with `error`. */
  #fail(stream: Duplex, make: () => VaultError): void {
    if (stream !== this.#stream) return;
    this.#stream = null;
    this.#decoder = null;
    if (this.#state !== CLOSED) this.#state = IDLE;
    stream.destroy();
    this.#rejectAll(make);
  }

  #onData(stream: Duplex, chunk: Buffer): void {
    if (stream !== this.#stream) return;
    let bodies: Buffer[];
    try {
      bodies = this.#decoder!.push(chunk);
    } catch (e) {
      const size = e instanceof FrameTooLarge ? `${e.length} bytes` : "unknown size";
      this.#fail(stream, () => new VaultError("internal", `the lessor daemon sent a frame of ${size}, over the ${this.#o.maxFrameBytes}-byte limit; the connection was closed`));
      return;
    }
    for (let i = 0; i < bodies.length; i++) if (!this.#onFrame(stream, bodies[i]!)) return;
  }

  /** Handles one response frame; false when it broke the connection. */
  #onFrame(stream: Duplex, body: Buffer): boolean {
    let msg: any;
    try {
      msg = JSON.parse(body.toString("utf8"));
    } catch {
      msg = undefined;
    }
    if (typeof msg !== "object" || msg === null || typeof msg.ok !== "boolean" || (typeof msg.id !== "string" && msg.id !== null)) {
      body.fill(0);
      this.#fail(stream, () => new VaultError("internal", "the lessor daemon sent a malformed message; the connection was closed"));
      return false;
    }
    if (msg.ok) {
      if (!("result" in msg)) return this.#malformed(stream);
      const r = msg.result;
      // A value, or a token's secret (token_create): the frame that carried it is zeroed too.
      if (typeof r === "object" && r !== null && (typeof r.value === "string" || typeof r.token === "string")) body.fill(0);
    } else if (!isWireErrorShape(msg.error)) return this.#malformed(stream);
    if (msg.id === null) {
      if (msg.ok) return this.#malformed(stream); // only an error answer is for no request
      const e = toVaultError(msg.error);
      // A frame for no request: the daemon is closing the connection (a frame it could not read, or
      // the token revoked or expired, or the connection's lifetime over), and says why.
      const why = e.code === "invalid_request" ? "could not read a request and closed the connection" : "closed the connection";
      this.#fail(stream, () => new VaultError(e.code, `the lessor daemon ${why}: ${e.message}`));
      return false;
    }
    const p = this.#pending.get(msg.id);
    if (p === undefined) return true; // a late answer to a call that timed out
    this.#pending.delete(msg.id);
    if (msg.ok) p.resolve(msg.result);
    else p.reject(toVaultError(msg.error));
    return true;
  }

  #malformed(stream: Duplex): false {
    this.#fail(stream, () => new VaultError("internal", "the lessor daemon sent a malformed response; the connection was closed"));
    return false;
  }

  /**
   * Opens a connection and does the handshake; shared by every call that waits for it.
   * `connected` is called once the stream is connected (before the handshake is done).
   *
   * Order on the wire: nothing until the daemon is checked (the transport's check), then the hello;
   * with a token, the hello names it and carries a nonce, the daemon answers with its proof, and only a
   * proof that checks out lets the token, and any calls pipelined meanwhile, go out.
   */
  connect(connected?: () => void): Promise<void> {
    this.#state = CONNECTING;
    const p = new Promise<void>((resolve, reject) => {
      const transport = this.#transport;
      const where = transport.where;
      const token = this.#o.token;
      const maxFrame = this.#o.maxFrameBytes;
      // Loaded while the stream connects, only when this connection needs it.
      const proofLib = token !== undefined ? loadProof() : null;
      proofLib?.catch(() => {});
      const dial = transport.dial();
      const stream = dial.stream;
      const decoder = new FrameDecoder(maxFrame);
      const gate: Gate = { open: false, held: [] };
      this.#connectingStream = stream;
      this.#gate = gate;
      let isConnected = false;
      let done = false;
      /** What the next frame from the daemon must be. */
      let stage: "check" | "challenge" | "welcome" = "check";
      /**
       * True once the server is known to be the daemon: the transport's check passed, or the token proof
       * did, or there is nothing to check and no token to prove it with. Until then a refusal is taken
       * only as an unverified server's (src/client/codecs.ts handshakeRefusal).
       */
      let proven = dial.verify === undefined && token === undefined;
      /** True while the transport's check runs: what the server sends meanwhile waits for its outcome. */
      let verifying = dial.verify !== undefined;
      /** The first frame the server sent while it was being checked (any frame there ends the handshake). */
      let early: Buffer | null = null;
      /** How the stream ended while the server was being checked: reported only if the check passes. */
      let lostEarly: VaultError | null = null;
      /** The token handshake in progress (after the hello that names the token went out). */
      let pending: { lib: ProofLib; id: string; secret: string; nonce: Buffer; binding: string } | null = null;
      const timer = setTimeout(() => {
        finish(
          new VaultError(
            "unavailable",
            isConnected
              ? `the lessor daemon at ${where} did not finish the handshake within ${this.#o.connectTimeoutMs} ms; check that it is healthy`
              : `could not connect to the lessor daemon at ${where} within ${this.#o.connectTimeoutMs} ms; check that it is running`,
          ),
        );
      }, this.#o.connectTimeoutMs);
      const finish = (err: VaultError | null, identity?: WireIdentity, rest?: Buffer[]): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.#connectingStream = null;
        this.#connecting = null;
        if (this.#gate === gate) this.#gate = null;
        if (this.#state === CLOSED && err === null) err = new VaultError("unavailable", "the LessorClient was closed while connecting");
        const first = this.#identity;
        if (err === null && this.#o.keepIdentity && first !== null && !sameIdentity(first, identity!))
          err = new VaultError(
            "unauthenticated",
            `the lessor daemon at ${where} now knows this client as ${who(identity!)}, not as ${who(first)} as when it first connected; nothing was sent on the new connection: connect a new client to act as ${who(identity!)}`,
          );
        if (err !== null) {
          this.#connectError = err;
          stream.destroy();
          for (const h of gate.held.splice(0)) if (h.wipe) h.frame.fill(0); // never sent
          if (this.#state !== CLOSED) this.#state = IDLE;
          this.#rejectAll(() => err); // calls pipelined behind the hello
          reject(err);
          return;
        }
        this.#connectError = null;
        this.#identity = identity!;
        this.#stream = stream;
        this.#decoder = decoder;
        this.#lastStreamError = undefined;
        this.#state = READY;
        resolve();
        for (let i = 0; i < rest!.length; i++) if (!this.#onFrame(stream, rest![i]!)) return;
      };
      /** Lets the held calls out: the daemon is authenticated (or, without a token, checked by the transport). */
      const openGate = (): void => {
        gate.open = true;
        for (const h of gate.held.splice(0)) {
          const f = h.frame;
          if (h.wipe) stream.write(f, () => f.fill(0));
          else stream.write(f);
        }
      };
      const writeHello = async (): Promise<void> => {
        if (dial.verify !== undefined) {
          const refusal = await dial.verify();
          if (done) return;
          if (refusal !== null) return finish(refusal);
          verifying = false;
          proven = true;
          // What the daemon said while it was checked (a refusal at its connection cap), now known to be its.
          if (early !== null) return onFrames([early]);
          if (lostEarly !== null) return finish(lostEarly);
        }
        const hello: Record<string, unknown> = { protocol: PROTOCOL_NAME, version: PROTOCOL_VERSION };
        if (token === undefined) {
          stream.write(encodeFrame(hello));
          stage = "welcome";
          openGate(); // pipelined calls go right behind the hello
          return;
        }
        const lib = await proofLib!;
        if (done) return;
        const parts = lib.splitToken(token)!;
        const nonce = lib.newNonce();
        const b = dial.binding();
        const binding = lib.endpointBinding(b.transport, b.address, b.port);
        pending = { lib, id: parts.id, secret: parts.secret, nonce, binding };
        hello.tokenId = parts.id;
        hello.nonce = nonce.toString("base64url");
        stage = "challenge";
        stream.write(encodeFrame(hello));
      };
      /** The daemon's proof checked out: shows the token, then lets the held calls out. */
      const showToken = (body: Buffer): void => {
        const p = pending!;
        const proof = parseChallenge(body, where, proven);
        if (proof instanceof VaultError) return finish(proof);
        if (!p.lib.checkServerProof(p.lib.hashTokenSecret(p.secret), p.nonce, proof.nonce, p.id, p.binding, proof.proof))
          return finish(
            new VaultError(
              "daemon_unverified",
              `the server at ${where} could not prove that it holds this token, so the token was not sent: either something other than your lessor daemon is listening there, or that daemon does not know this token (another vault, or a mistyped token id)`,
            ),
          );
        pending = null;
        proven = true;
        stage = "welcome";
        const frame = encodeFrame({ token }, true);
        stream.write(frame, () => frame.fill(0));
        openGate();
      };
      dial.connected.then(
        () => {
          if (done) return;
          isConnected = true;
          connected?.();
          writeHello().catch((e: unknown) => finish(new VaultError("internal", `could not start the handshake with the lessor daemon at ${where}: ${(e as Error).message}`)));
        },
        (e: NodeJS.ErrnoException) => finish(transport.connectError(e)),
      );
      // While the server is being checked, how the stream ended waits for the check's outcome: a squatter
      // of another uid that hangs up at once is still reported as one.
      const checking = (): boolean => verifying && isConnected && this.#state !== CLOSED;
      stream.on("error", (e: NodeJS.ErrnoException) => {
        if (!done && checking()) lostEarly ??= transport.connectError(e);
        else if (!done) finish(transport.connectError(e));
        else this.#lastStreamError = e.code ?? "socket error";
      });
      stream.on("close", () => {
        if (!done) {
          const lost = new VaultError(
            "unavailable",
            this.#state === CLOSED
              ? "the LessorClient was closed while connecting"
              : `the lessor daemon at ${where} closed the connection during the handshake; check its log`,
          );
          if (checking()) lostEarly ??= lost;
          else finish(lost);
          return;
        }
        const why = this.#lastStreamError === undefined ? "" : ` (${this.#lastStreamError})`;
        this.#fail(
          stream,
          () =>
            new VaultError(
              "unavailable",
              `the connection to the lessor daemon was lost${why}; calls in flight may or may not have taken effect, so check before retrying`,
            ),
        );
      });
      stream.on("data", (chunk: Buffer) => {
        if (done) {
          this.#onData(stream, chunk);
          return;
        }
        let bodies: Buffer[];
        try {
          bodies = decoder.push(chunk);
        } catch {
          finish(new VaultError("internal", `the lessor daemon at ${where} sent a handshake reply over the ${maxFrame}-byte limit`));
          return;
        }
        if (verifying) {
          early ??= bodies[0] ?? null; // the check decides first; the first frame is all that will be read
          return;
        }
        onFrames(bodies);
      });
      /** Handles the handshake frames `bodies`, in order, until the handshake is over. */
      const onFrames = (bodies: Buffer[]): void => {
        for (let i = 0; i < bodies.length && !done; i++) {
          const body = bodies[i]!;
          if (stage === "challenge") {
            showToken(body);
            continue;
          }
          // Before the hello (stage check) only a refusal is acceptable: a daemon at its connection cap
          // or shutting down says so at once. Anything else there is not the daemon's welcome.
          const welcome = parseWelcome(body, where, proven, stage === "check");
          if (welcome instanceof VaultError) return finish(welcome);
          return finish(null, welcome, bodies.slice(i + 1));
        }
      };
    });
    this.#connecting = p;
    return p;
  }
}

/** True when two handshakes gave the same identity (the same id, role and agent). */
function sameIdentity(a: WireIdentity, b: WireIdentity): boolean {
  return a.id === b.id && a.role === b.role && a.agent === b.agent;
}

/** An identity for messages: `agent "A"`, `admin "owner"`. */
function who(id: WireIdentity): string {
  return id.role === "agent" ? `agent ${JSON.stringify(id.agent ?? id.id)}` : `${id.role} ${JSON.stringify(id.id)}`;
}

/** Milliseconds on a monotonic clock, from process.hrtime (node:perf_hooks costs start-up time to load). */
function monotonicMs(): number {
  const [s, ns] = process.hrtime();
  return s * 1e3 + ns / 1e6;
}
