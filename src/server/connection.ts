/**
 * One client connection: framing, the hello/welcome handshake, request validation, concurrent
 * dispatch with a per-connection in-flight cap (backpressure by pausing the socket), deadlines
 * (handshake, partial frame, idle; checked by the server's sweep), and closing.
 *
 * States: `hello` (waiting for the first frame) → `auth` (authenticate running; later frames are
 * queued) → `open` → `closing` (a final frame may be on its way; input is discarded) → `closed`.
 */
import type { Socket } from "node:net";
import { encodeFrame, FrameDecoder, FrameTooLarge, MAX_FRAME_BYTES } from "../protocol/framing.js";
import { helloSchema, PROTOCOL, VERSION, type Hello, type Response, type WireError } from "../protocol/messages.js";
import { isMethod, METHODS, type MethodName } from "../protocol/methods.js";
import { VaultError, wireCode, type WireErrorCode } from "../vault/errors.js";
import type { Identity } from "../vault/types.js";
import type { Vault, VaultSession } from "../vault/vault.js";
import { carriesSecret, HANDLERS, type DispatchContext } from "./dispatch.js";
import type { Logger } from "./logger.js";
import { issuesMessage, safeName, wireIdentity } from "./wire.js";

/** Who is at the other end of a connection, as the transport saw it. */
export interface PeerInfo {
  transport: "uds" | "tcp" | "vsock";
  uid?: number;
  gid?: number;
  pid?: number;
  remoteAddress?: string;
  cid?: number;
}

/** Per-connection and daemon-wide limits. */
export interface ServerLimits {
  /** Connections served at once; more are refused with rate_limited. Default 1024. */
  maxConnections: number;
  /** The hello must arrive (and be accepted) within this. Default 5000 ms. */
  handshakeTimeoutMs: number;
  /** A connection with no request and nothing in flight is closed after this. Default 300000 ms. */
  idleTimeoutMs: number;
  /** A partial frame must complete within this. Default 10000 ms. */
  readTimeoutMs: number;
  /** Requests running at once per connection; beyond it the socket is paused. Default 64. */
  maxInFlight: number;
  /** Largest request frame body. Default (and at most) MAX_FRAME_BYTES. */
  maxFrameBytes: number;
  /** How long close() waits for in-flight requests. Default 10000 ms. */
  shutdownGraceMs: number;
}

/** What a connection needs from its server. */
export interface ConnectionHost {
  readonly vault: Vault;
  readonly limits: ServerLimits;
  readonly log: Logger;
  readonly dispatch: DispatchContext;
  readonly closing: boolean;
  authenticate(peer: PeerInfo, hello: Hello): Promise<Identity>;
  requestStarted(): void;
  requestDone(): void;
  connectionClosed(c: Connection): void;
}

/** How long a closing socket may take to say goodbye before it is destroyed. */
const LINGER_MS = 1000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** A hello is small; an unauthenticated peer may not make the daemon buffer more than this. */
const MAX_HELLO_BYTES = 8192;
const HELLO_SHAPE = `{"protocol":"${PROTOCOL}","version":${VERSION},"token"?:"…"}`;

/** A welcome-shaped refusal frame (sent instead of a welcome, then the socket is closed). */
export function refusalFrame(code: WireErrorCode, message: string): Buffer {
  return encodeFrame({ protocol: PROTOCOL, version: VERSION, ok: false, error: { code, message } });
}

function wireError(code: WireErrorCode, message: string): WireError {
  return { code, message };
}

let nextId = 1;

type State = "hello" | "auth" | "open" | "closing" | "closed";

/** One client connection. Created by LessorServer.handle. */
export class Connection {
  /** A small number naming the connection in logs. */
  readonly id = nextId++;
  readonly socket: Socket;
  readonly peer: PeerInfo;
  readonly #host: ConnectionHost;
  readonly #decoder: FrameDecoder;
  readonly #maxInFlight: number;
  #state: State = "hello";
  #session: VaultSession | null = null;
  /** Frames received but not started (in-flight cap reached, or still authenticating). */
  #queue: Buffer[] = [];
  #inFlight = 0;
  #paused = false;
  #writeBlockedSince = 0;
  #peerEnded = false;
  readonly #acceptedAt: number;
  #lastActive: number;
  /** When the partial frame now buffered started arriving (0: none). */
  #partialSince = 0;
  /** Bytes received before the hello completed. */
  #helloBytes = 0;
  #lingerTimer: NodeJS.Timeout | null = null;

  constructor(host: ConnectionHost, socket: Socket, peer: PeerInfo) {
    this.#host = host;
    this.socket = socket;
    this.peer = peer;
    this.#decoder = new FrameDecoder(host.limits.maxFrameBytes);
    this.#maxInFlight = host.limits.maxInFlight;
    this.#acceptedAt = this.#lastActive = Date.now();
    socket.on("data", this.#onData);
    socket.on("drain", this.#onDrain);
    socket.on("end", this.#onEnd);
    socket.on("error", this.#onError);
    socket.on("close", this.#onClose);
  }

  /** Requests running now. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** The identity, once the handshake succeeded. */
  get identity(): Identity | null {
    return this.#session?.identity ?? null;
  }

  // ---- socket events ----

  #onData = (chunk: Buffer): void => {
    if (this.#state === "closing" || this.#state === "closed") return; // discard input after a final frame
    let frames: Buffer[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (e) {
      if (!(e instanceof FrameTooLarge)) throw e;
      const message = `frame of ${e.length} bytes is over the ${e.max}-byte limit`;
      this.#host.log.warn({ conn: this.id, transport: this.peer.transport, bytes: e.length, max: e.max }, "closing a connection that sent an oversize frame");
      if (this.#state === "hello" || this.#state === "auth") this.#finish(refusalFrame("invalid_request", message));
      else this.#finish(encodeFrame({ id: null, ok: false, error: wireError("invalid_request", message) } satisfies Response));
      return;
    }
    if (this.#state === "hello" && frames.length === 0 && (this.#helloBytes += chunk.length) > MAX_HELLO_BYTES + 4)
      return this.#refuse("invalid_request", `the hello is over ${MAX_HELLO_BYTES} bytes; send ${HELLO_SHAPE} as the first frame`);
    const now = Date.now();
    this.#lastActive = now;
    if (!this.#decoder.pending) this.#partialSince = 0;
    else if (frames.length > 0 || this.#partialSince === 0) this.#partialSince = now;
    if (frames.length === 0) return;
    let i = 0;
    if (this.#state === "hello") this.#hello(frames[i++]!);
    if (this.#state === "auth" || this.#state === "open") for (; i < frames.length; i++) this.#queue.push(frames[i]!);
    this.#pump();
  };

  #onDrain = (): void => {
    this.#writeBlockedSince = 0;
    this.#flow();
  };

  #onEnd = (): void => {
    // The client will send no more. Finish what is running, then close our side.
    this.#peerEnded = true;
    if (this.#inFlight === 0 && this.#queue.length === 0 && this.#state !== "closed") this.#finish();
  };

  #onError = (e: NodeJS.ErrnoException): void => {
    if (e.code !== "EPIPE" && e.code !== "ECONNRESET" && e.code !== "ERR_STREAM_DESTROYED")
      this.#host.log.warn({ conn: this.id, transport: this.peer.transport, code: e.code, err: e.message }, "connection error");
    // 'close' follows: the socket destroys itself on error.
  };

  #onClose = (): void => {
    this.#state = "closed";
    this.#queue.length = 0;
    if (this.#lingerTimer) clearTimeout(this.#lingerTimer);
    this.#host.connectionClosed(this);
  };

  // ---- handshake ----

  #hello(body: Buffer): void {
    this.#state = "auth";
    let msg: unknown;
    try {
      msg = JSON.parse(body.toString("utf8"));
    } catch {
      return this.#refuse("invalid_request", `the first frame must be a hello ${HELLO_SHAPE}; it was not valid JSON`);
    }
    if (typeof msg !== "object" || msg === null || Array.isArray(msg) || (msg as { protocol?: unknown }).protocol !== PROTOCOL)
      return this.#refuse("invalid_request", `the first frame must be a hello ${HELLO_SHAPE}; this is a lessor daemon speaking protocol version ${VERSION}`);
    const v = (msg as { version?: unknown }).version;
    if (v !== VERSION) {
      const asked = typeof v === "number" && Number.isSafeInteger(v) ? `version ${v}` : "no valid version";
      return this.#refuse("invalid_request", `this daemon speaks lessor protocol version ${VERSION} and the hello asked for ${asked}; use a client for version ${VERSION}`);
    }
    const parsed = helloSchema.safeParse(msg);
    if (!parsed.success) return this.#refuse("invalid_request", issuesMessage("hello", parsed.error.issues, Object.keys(helloSchema.shape)));
    if (this.#host.closing) return this.#refuse("unavailable", "the daemon is shutting down; try again when it is back");
    void this.#authenticate(parsed.data);
  }

  async #authenticate(hello: Hello): Promise<void> {
    let session: VaultSession;
    try {
      const identity = await this.#host.authenticate(this.peer, hello);
      session = this.#host.vault.session(identity);
    } catch (e) {
      if (this.#state !== "auth") return;
      const peer = { conn: this.id, ...this.peer };
      if (e instanceof VaultError) {
        this.#host.log.warn({ ...peer, code: e.code }, "refused a connection at the handshake");
        const code = wireCode(e.code);
        return this.#refuse(code === "invalid_request" ? "unauthenticated" : code, e.message);
      }
      this.#host.log.error({ ...peer, err: e }, "authenticating a connection failed");
      return this.#refuse("internal", "an unexpected error occurred while authenticating; see the daemon log");
    }
    if (this.#state !== "auth") return; // timed out or closed meanwhile
    this.#session = session;
    this.#state = "open";
    this.#lastActive = Date.now();
    this.#write(encodeFrame({ protocol: PROTOCOL, version: VERSION, ok: true, identity: wireIdentity(session.identity) }), false);
    this.#pump();
  }

  #refuse(code: WireErrorCode, message: string): void {
    this.#finish(refusalFrame(code, message));
  }

  // ---- requests ----

  /** Starts queued frames while under the in-flight cap, then pauses or resumes reading. */
  #pump(): void {
    if (this.#state === "open") {
      while (this.#queue.length > 0 && this.#inFlight < this.#maxInFlight && this.#state === "open") this.#request(this.#queue.shift()!);
      if (this.#peerEnded && this.#inFlight === 0 && this.#queue.length === 0) return this.#finish();
    }
    this.#flow();
  }

  /** Pauses the socket while anything waits (queue, cap, unflushed output, authentication); resumes otherwise. */
  #flow(): void {
    const s = this.#state;
    if (s === "closing" || s === "closed") return;
    const hold = s === "auth" || this.#queue.length > 0 || this.#inFlight >= this.#maxInFlight || this.#writeBlockedSince !== 0;
    if (hold && !this.#paused) {
      this.#paused = true;
      this.socket.pause();
    } else if (!hold && this.#paused) {
      this.#paused = false;
      if (this.#partialSince !== 0) this.#partialSince = Date.now(); // the read deadline restarts when we read again
      this.socket.resume();
    }
  }

  /** Validates one request frame and starts it, or answers it with an error at once. */
  #request(body: Buffer): void {
    let msg: unknown;
    try {
      msg = JSON.parse(body.toString("utf8"));
    } catch {
      return this.#reply(null, "invalid_request", "the frame is not valid JSON; send one JSON request object per frame (see docs/protocol.md)");
    }
    if (typeof msg !== "object" || msg === null || Array.isArray(msg))
      return this.#reply(null, "invalid_request", 'a request must be a JSON object {"id":"<uuid>","method":"…","params":{…}}');
    const m = msg as Record<string, unknown>;
    const id = typeof m.id === "string" && UUID.test(m.id) ? m.id : null;
    if (id === null)
      return this.#reply(null, "invalid_request", m.id === undefined ? "the request has no id; send a UUIDv7 string as id" : "the request id must be a lowercase UUID string (clients send UUIDv7)");
    for (const k in m) {
      if (k !== "id" && k !== "method" && k !== "params")
        return this.#reply(id, "invalid_request", `unknown field ${safeName(k) ?? "(with an unusual name)"} in the request; a request has only id, method and params`);
    }
    const method = m.method;
    if (typeof method !== "string" || method.length === 0 || method.length > 64)
      return this.#reply(id, "invalid_request", "method must be a method name: a string of 1-64 characters (see docs/protocol.md)");
    const params = m.params;
    if (params !== undefined && (typeof params !== "object" || params === null || Array.isArray(params)))
      return this.#reply(id, "invalid_request", "params must be a JSON object (or left out)");
    if (!isMethod(method)) return this.#reply(id, "invalid_request", `unknown method ${safeName(method) ?? "(with an unusual name)"}; see docs/protocol.md`);
    if (this.#host.closing) return this.#reply(id, "unavailable", "the daemon is shutting down; retry once it is back");
    const parsed = METHODS[method].safeParse(params ?? {});
    if (!parsed.success) return this.#reply(id, "invalid_request", issuesMessage(method, parsed.error.issues, Object.keys(METHODS[method].shape)));
    this.#inFlight++;
    this.#host.requestStarted();
    void this.#run(id, method, parsed.data);
  }

  async #run(id: string, method: MethodName, params: unknown): Promise<void> {
    try {
      const handler = HANDLERS[method] as (s: VaultSession, p: unknown, c: DispatchContext) => Promise<unknown>;
      const result = await handler(this.#session!, params, this.#host.dispatch);
      this.#respond({ id, ok: true, result }, carriesSecret(method, params), method);
    } catch (e) {
      if (e instanceof VaultError) this.#reply(id, wireCode(e.code), e.message);
      else {
        // Params are never logged: they may hold secret values.
        this.#host.log.error({ conn: this.id, method, err: e }, "a request failed unexpectedly");
        this.#reply(id, "internal", "an unexpected error occurred; see the daemon log");
      }
    } finally {
      this.#inFlight--;
      this.#lastActive = Date.now();
      this.#host.requestDone();
      this.#pump();
    }
  }

  #reply(id: string | null, code: WireErrorCode, message: string): void {
    this.#write(encodeFrame({ id, ok: false, error: { code, message } } satisfies Response), false);
  }

  /** Encodes and writes a success response; a result over the protocol's frame cap becomes an error. */
  #respond(res: Response, secret: boolean, method: string): void {
    if (this.#state !== "open") return; // the client left: the request ran, its answer is dropped
    // A secret goes into a buffer of its own, zeroed once the kernel has it.
    const frame = encodeFrame(res, secret);
    if (frame.length - 4 > MAX_FRAME_BYTES) {
      if (secret) frame.fill(0);
      return this.#reply(res.id, "invalid_request", `the result of ${method} is ${frame.length - 4} bytes, over the ${MAX_FRAME_BYTES}-byte frame limit; ask for less (a smaller limit or narrower filters)`);
    }
    this.#write(frame, secret);
  }

  #write(frame: Buffer, wipe: boolean): void {
    const s = this.socket;
    if (this.#state === "closing" || this.#state === "closed" || s.destroyed || !s.writable) {
      if (wipe) frame.fill(0);
      return;
    }
    const flushed = wipe ? s.write(frame, () => frame.fill(0)) : s.write(frame);
    if (!flushed && this.#writeBlockedSince === 0) {
      // The client is not reading its answers: stop reading its requests until it catches up.
      this.#writeBlockedSince = Date.now();
      this.#flow();
    }
  }

  // ---- deadlines and closing ----

  /** Enforces deadlines; called by the server's sweep. */
  check(now: number): void {
    const lim = this.#host.limits;
    switch (this.#state) {
      case "hello":
      case "auth":
        if (now - this.#acceptedAt >= lim.handshakeTimeoutMs) {
          this.#host.log.warn({ conn: this.id, transport: this.peer.transport }, "closing a connection that sent no hello in time");
          this.#refuse("invalid_request", `no hello within ${lim.handshakeTimeoutMs} ms; send ${HELLO_SHAPE} as the first frame`);
        }
        return;
      case "open":
        if (this.#partialSince !== 0 && !this.#paused && now - this.#partialSince >= lim.readTimeoutMs) {
          this.#host.log.warn({ conn: this.id, transport: this.peer.transport, timeoutMs: lim.readTimeoutMs }, "closing a connection that left a frame unfinished");
          this.#finish();
        } else if (this.#writeBlockedSince !== 0 && now - this.#writeBlockedSince >= lim.idleTimeoutMs) {
          this.#host.log.warn({ conn: this.id, transport: this.peer.transport }, "closing a connection that stopped reading its answers");
          this.socket.destroy();
        } else if (this.#inFlight === 0 && this.#queue.length === 0 && this.#partialSince === 0 && now - this.#lastActive >= lim.idleTimeoutMs) {
          this.#host.log.info({ conn: this.id, transport: this.peer.transport, idleMs: now - this.#lastActive }, "closing an idle connection");
          this.#finish();
        }
        return;
      default:
        return;
    }
  }

  /** Server shutdown has begun: a connection still in its handshake is refused now. */
  beginShutdown(): void {
    if (this.#state === "hello" || this.#state === "auth") this.#refuse("unavailable", "the daemon is shutting down; try again when it is back");
  }

  /** Closes the connection: writes `last` if given, ends our side, discards input, destroys after a short linger. */
  end(last?: Buffer): void {
    this.#finish(last);
  }

  #finish(last?: Buffer): void {
    if (this.#state === "closing" || this.#state === "closed") return;
    this.#state = "closing";
    this.#queue.length = 0;
    const s = this.socket;
    if (last && !s.destroyed && s.writable) s.end(last);
    else s.end();
    // Keep reading (and discarding) so the kernel closes with FIN, not RST, and the client reads our last frame.
    if (this.#paused) {
      this.#paused = false;
      s.resume();
    }
    this.#lingerTimer = setTimeout(() => s.destroy(), LINGER_MS);
    this.#lingerTimer.unref();
  }
}
