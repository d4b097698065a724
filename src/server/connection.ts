/**
 * One client connection: framing, the hello/welcome handshake, request validation, concurrent
 * dispatch with a per-connection in-flight cap (backpressure by pausing the stream), deadlines
 * (handshake, partial frame, idle; checked by the server's sweep), and closing.
 *
 * States: `hello` (waiting for the first frame) → `auth` (authenticate running; later frames are
 * queued) → `open` → `closing` (a final frame may be on its way; input is discarded) → `closed`.
 * A token handshake (docs/protocol.md) goes `hello` → `challenge` (the vault computes its proof) →
 * `proof` (waiting for the frame that shows the token) → `auth` → `open`. An oversize frame on an open
 * connection stops reading and starting requests; the connection stays `open` until the requests
 * running have answered (at most `shutdownGraceMs`), then closes with the error (`#lastWord`).
 *
 * A connection that authenticated with a token is re-checked at every request (from the vault's
 * memory, no store read) and by the sweep: once the token is revoked or expires it is closed, with an
 * auth_failed audit event. Every connection is also closed after `maxConnectionLifetimeMs`, however busy.
 */
import type { Duplex } from "node:stream";
import { encodeFrame, FrameDecoder, frameText, FrameTooLarge, MAX_FRAME_BYTES } from "../protocol/framing.js";
import { helloSchema, PROTOCOL, tokenFrameSchema, VERSION, type Challenge, type Hello, type Response, type WireError } from "../protocol/messages.js";
import { isMethod, parseParams, type MethodName } from "../protocol/registry.js";
import { VaultError, wireCode, type WireErrorCode } from "../base/errors.js";
import { isUuid } from "../base/ids.js";
import { endpointBinding, splitToken } from "../crypto/token-proof.js";
import type { Identity } from "../base/types.js";
import type { Vault, VaultSession } from "../vault/vault.js";
import { carriesSecret, dispatch, type DispatchContext } from "./dispatch.js";
import type { Logger } from "./logger.js";
import { processStamp } from "./process-stamp.js";
import { issuesMessage, safeName } from "../protocol/issues.js";
import { wireIdentity } from "../protocol/wire.js";

/**
 * Who is at the other end of a connection, and where it arrived, as the listener saw it. The server
 * gets only this and a duplex stream, so any transport that yields a stream (a Unix or TCP socket, an
 * AF_VSOCK descriptor, an in-process pipe) can be served.
 */
export interface PeerInfo {
  transport: "uds" | "tcp" | "vsock";
  uid?: number;
  gid?: number;
  pid?: number;
  remoteAddress?: string;
  cid?: number;
  /** vsock from a Firecracker VM: the `[[vm]]` name, known from the Unix socket the connection arrived on. */
  vm?: string;
  /** TCP: the local address and port the connection arrived on; the token handshake's proof is bound to them. */
  localAddress?: string;
  localPort?: number;
}

/**
 * The peer an audit row names as `remote`: the VM (`vm:<name>`) or guest CID (`cid:<n>`) of a vsock
 * peer, the address of a TCP one, null for a Unix-socket peer (its row names its uid).
 */
export function peerRemote(peer: PeerInfo): string | null {
  if (peer.transport === "vsock") return peer.vm !== undefined ? `vm:${peer.vm}` : peer.cid !== undefined ? `cid:${peer.cid}` : null;
  return peer.remoteAddress ?? null;
}

import type { ServerLimits } from "../config/server-limits.js";
export type { ServerLimits };

/** What a connection needs from its server. */
export interface ConnectionHost {
  readonly vault: Vault;
  readonly limits: ServerLimits;
  readonly log: Logger;
  readonly dispatch: DispatchContext;
  readonly closing: boolean;
  authenticate(peer: PeerInfo, hello: Hello): Promise<Identity>;
  /**
   * Called once authenticate decided who the peer is, before the welcome: counts the connection for
   * its principal, or throws VaultError("rate_limited") when the principal has too many open.
   */
  admit(c: Connection, identity: Identity): void;
  /** Runs `job` (one request) when the fair scheduler admits it; see src/server/scheduler.ts. */
  schedule(principal: string, job: () => Promise<void>): void;
  requestStarted(): void;
  requestDone(): void;
  /**
   * The connection began closing (it lingers up to a second so the client reads its last frame).
   * `inHandshake`: it was refused or dropped before it opened, so it leaves the handshake budget now,
   * not when its socket finally closes.
   */
  connectionClosing(c: Connection, inHandshake: boolean): void;
  connectionClosed(c: Connection): void;
}

/** How long a closing socket may take to say goodbye before it is destroyed. */
const LINGER_MS = 1000;
/**
 * Bytes of request frames a connection may have started and not finished (waiting for the scheduler or
 * running): past it, nothing more starts and the socket is not read until one finishes. One request
 * always starts when none is in flight. Without it, 64 connections × 64 pipelined 1 MiB requests held
 * 4 GiB of parsed params for one principal, at the daemon's heap limit.
 */
const MAX_IN_FLIGHT_BYTES = 2 * MAX_FRAME_BYTES;
/** A hello is small; an unauthenticated peer may not make the daemon buffer more than this. */
const MAX_HELLO_BYTES = 8192;
/** The hello to ask for: never one carrying a token (a token is shown only after the daemon's proof; see "Token handshake" in docs/protocol.md). */
const HELLO_SHAPE = `{"protocol":"${PROTOCOL}","version":${VERSION}} (with a token: "tokenId" and "nonce", see "Token handshake" in docs/protocol.md)`;

/** A welcome-shaped refusal frame (sent instead of a welcome, then the socket is closed). */
export function refusalFrame(code: WireErrorCode, message: string): Buffer {
  return encodeFrame({ protocol: PROTOCOL, version: VERSION, ok: false, error: { code, message } });
}

function wireError(code: WireErrorCode, message: string): WireError {
  return { code, message };
}

let nextId = 1;

type State = "hello" | "challenge" | "proof" | "auth" | "open" | "closing" | "closed";

/** The audit reason of a token handshake the client left without showing the token (it did not accept the daemon's proof). */
const ABANDONED = "the client closed the connection during the token handshake without showing the token";

/** Why a token connection is cut. */
type TokenCut = "token revoked" | "token expired";

const CUT_MESSAGE: Record<TokenCut, string> = {
  "token revoked": "the token this connection authenticated with was revoked, so the daemon closed the connection; ask an admin for a new token",
  "token expired": "the token this connection authenticated with has expired, so the daemon closed the connection; ask an admin for a new token",
};

/** One client connection. Created by LessorServer.handle. */
export class Connection {
  /** A small number naming the connection in logs. */
  readonly id = nextId++;
  /** The connection's byte stream (a socket, or any duplex stream a listener hands over). */
  readonly stream: Duplex;
  readonly peer: PeerInfo;
  readonly #host: ConnectionHost;
  readonly #decoder: FrameDecoder;
  readonly #maxInFlight: number;
  #state: State = "hello";
  #session: VaultSession | null = null;
  /** Frames received but not started (in-flight cap reached, or still authenticating). */
  #queue: Buffer[] = [];
  #inFlight = 0;
  /** Bytes of the request frames in flight (see MAX_IN_FLIGHT_BYTES). */
  #inFlightBytes = 0;
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
  /** The token handshake under way: the id the hello named (null: none). */
  #tokenId: string | null = null;
  /** The hello carried a token, or began a token handshake. */
  #showsToken = false;
  /** True once the token handshake's outcome is settled for auditing (token shown, or failure audited). */
  #tokenShown = false;
  /** The token the connection authenticated with, once open (null: none). */
  #token: { id: string; expiresAt: number | null } | null = null;
  /**
   * An oversize frame arrived on the open connection: nothing more is read or started, and this error
   * is sent and the connection closed once the requests running have answered (null: none).
   */
  #lastWord: Buffer | null = null;
  /** When {@link #lastWord} was set: the requests running get `shutdownGraceMs` from then to answer. */
  #drainingSince = 0;

  constructor(host: ConnectionHost, stream: Duplex, peer: PeerInfo) {
    this.#host = host;
    this.stream = stream;
    this.peer = peer;
    this.#decoder = new FrameDecoder(host.limits.maxFrameBytes);
    this.#maxInFlight = host.limits.maxInFlight;
    this.#acceptedAt = this.#lastActive = Date.now();
    stream.on("data", this.#onData);
    stream.on("drain", this.#onDrain);
    stream.on("end", this.#onEnd);
    stream.on("error", this.#onError);
    stream.on("close", this.#onClose);
  }

  /** Requests waiting for the scheduler or running now. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /**
   * True while the handshake waits on the client (for its hello, or for the token after the daemon's
   * proof): such a connection may be closed to make room for a new one (see maxHandshakes).
   */
  get awaitingPeer(): boolean {
    return this.#state === "hello" || this.#state === "proof";
  }

  /** True while the handshake waits for the client's hello (it has said nothing yet). */
  get awaitingHello(): boolean {
    return this.#state === "hello";
  }

  /** True once the hello carried a token or began a token handshake (the connection will be a token's, if anyone's). */
  get showsToken(): boolean {
    return this.#showsToken;
  }

  /** The identity, once the handshake succeeded. */
  get identity(): Identity | null {
    return this.#session?.identity ?? null;
  }

  /** The id of the token this connection authenticated with, or null. */
  get tokenId(): string | null {
    return this.#token?.id ?? null;
  }

  // ---- stream events ----

  #onData = (chunk: Buffer): void => {
    // Discard input after a final frame, or once an oversize frame was seen.
    if (this.#state === "closing" || this.#state === "closed" || this.#lastWord !== null) return;
    let frames: Buffer[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (e) {
      if (!(e instanceof FrameTooLarge)) throw e;
      const message = `frame of ${e.length} bytes is over the ${e.max}-byte limit`;
      this.#host.log.warn({ conn: this.id, transport: this.peer.transport, bytes: e.length, max: e.max }, "closing a connection that sent an oversize frame");
      if (this.#state !== "open") return this.#finish(refusalFrame("invalid_request", message));
      // The stream cannot be read past this frame. Requests the daemon started still run to the end:
      // their answers go out first (a client must learn what took effect), then this error and the
      // close. Frames not started (queued, or in this read) never run. See "Framing" in docs/protocol.md.
      this.#lastWord = encodeFrame({ id: null, ok: false, error: wireError("invalid_request", message) } satisfies Response);
      this.#drainingSince = Date.now();
      this.#queue.length = 0;
      this.#partialSince = 0;
      return this.#pump();
    }
    if ((this.#state === "hello" || this.#state === "proof") && frames.length === 0 && (this.#helloBytes += chunk.length) > MAX_HELLO_BYTES + 4)
      return this.#refuse("invalid_request", `the hello is over ${MAX_HELLO_BYTES} bytes; send ${HELLO_SHAPE} as the first frame`);
    const now = Date.now();
    this.#lastActive = now;
    if (!this.#decoder.pending) this.#partialSince = 0;
    else if (frames.length > 0 || this.#partialSince === 0) this.#partialSince = now;
    if (frames.length === 0) return;
    let i = 0;
    if (this.#state === "hello") this.#hello(frames[i++]!);
    if (this.#state === "challenge" || this.#state === "proof" || this.#state === "auth" || this.#state === "open") for (; i < frames.length; i++) this.#queue.push(frames[i]!);
    this.#pump();
  };

  #onDrain = (): void => {
    // The client read every answer: start what waits, and read again.
    this.#writeBlockedSince = 0;
    this.#pump();
  };

  #onEnd = (): void => {
    // The client will send no more. Finish what is running, then close our side.
    this.#peerEnded = true;
    if (this.#state === "challenge" || this.#state === "proof") this.#abandoned(ABANDONED);
    if (this.#inFlight === 0 && this.#queue.length === 0 && this.#state !== "closed") this.#finish();
  };

  #onError = (e: NodeJS.ErrnoException): void => {
    if (e.code !== "EPIPE" && e.code !== "ECONNRESET" && e.code !== "ERR_STREAM_DESTROYED")
      this.#host.log.warn({ conn: this.id, transport: this.peer.transport, code: e.code, err: e.message }, "connection error");
    // 'close' follows: the stream destroys itself on error.
  };

  #onClose = (): void => {
    if (this.#state === "challenge" || this.#state === "proof") this.#abandoned(ABANDONED);
    this.#state = "closed";
    this.#queue.length = 0;
    if (this.#lingerTimer) clearTimeout(this.#lingerTimer);
    this.#host.connectionClosed(this);
  };

  // ---- handshake ----

  #hello(body: Buffer): void {
    this.#state = "auth";
    const text = frameText(body);
    if (text === null) return this.#refuse("invalid_request", `the first frame must be a hello ${HELLO_SHAPE}; it was not valid UTF-8`);
    let msg: unknown;
    try {
      msg = JSON.parse(text);
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
    const h = parsed.data;
    this.#showsToken = h.token !== undefined || h.tokenId !== undefined;
    // A vsock guest never authenticates by token (authenticate.ts): its token hello goes straight to
    // the refusal, before any token is looked up, so the daemon proves nothing to a guest.
    if (this.peer.transport === "vsock") return void this.#authenticate(h);
    if (h.tokenId !== undefined || h.nonce !== undefined) {
      if (h.tokenId === undefined || h.nonce === undefined || h.token !== undefined)
        return this.#refuse("invalid_request", 'a token handshake hello has both tokenId and nonce and no token; see "Token handshake" in docs/protocol.md');
      void this.#challenge(h.tokenId, h.nonce);
      return;
    }
    void this.#authenticate(h);
  }

  /** The token handshake's first step: answers with the vault's nonce and proof, then waits for the token. */
  async #challenge(tokenId: string, nonce: string): Promise<void> {
    this.#state = "challenge";
    this.#tokenId = tokenId;
    let answer: { nonce: Buffer; proof: Buffer };
    try {
      const binding = endpointBinding(this.peer.transport, this.peer.localAddress, this.peer.localPort);
      answer = await this.#host.vault.tokenChallenge(tokenId, Buffer.from(nonce, "base64url"), binding);
    } catch (e) {
      if (this.#state !== "challenge") return;
      this.#tokenShown = true; // the daemon failed, not the client: no auth_failed event
      if (e instanceof VaultError) return this.#refuse(wireCode(e.code), e.message);
      this.#host.log.error({ conn: this.id, transport: this.peer.transport, err: e }, "answering a token handshake failed");
      return this.#refuse("internal", "an unexpected error occurred while authenticating; see the daemon log");
    }
    if (this.#state !== "challenge") return; // timed out or closed meanwhile
    this.#state = "proof";
    const challenge: Challenge = { protocol: PROTOCOL, version: VERSION, ok: true, challenge: { nonce: answer.nonce.toString("base64url"), proof: answer.proof.toString("base64url") } };
    this.#write(encodeFrame(challenge), false);
    this.#pump();
  }

  /** The token handshake's second step: the frame that shows the token, which must be the one the hello named. */
  #proof(body: Buffer): void {
    const tokenId = this.#tokenId!;
    let msg: unknown;
    try {
      const text = frameText(body);
      msg = text === null ? undefined : JSON.parse(text);
    } catch {
      msg = undefined;
    }
    const parsed = tokenFrameSchema.safeParse(msg);
    if (!parsed.success) {
      this.#abandoned("the frame after the daemon's proof was not {\"token\":\"lsr_…\"}");
      return this.#refuse("invalid_request", 'after the daemon\'s proof, send the token as {"token":"lsr_…"}; see "Token handshake" in docs/protocol.md');
    }
    if (splitToken(parsed.data.token)?.id !== tokenId) {
      this.#abandoned("the token shown is not the one the hello named");
      return this.#refuse("unauthenticated", "the token shown is not the one named in the hello (tokenId); send the token whose id you named");
    }
    this.#tokenShown = true; // from here on, authenticateToken audits a failure
    this.#state = "auth";
    void this.#authenticate({ protocol: PROTOCOL, version: VERSION, token: parsed.data.token });
  }

  /** Audits, once, a token handshake that ended before a token was shown. */
  #abandoned(why: string): void {
    if (this.#tokenId === null || this.#tokenShown) return;
    this.#tokenShown = true;
    const transport = this.peer.transport;
    const detail: Record<string, string | number | null> = { token_id: this.#tokenId, remote: peerRemote(this.peer) };
    this.#host.vault.recordAuthFailure(transport, why, detail).catch((e: unknown) => {
      this.#host.log.warn({ conn: this.id, transport, err: (e as Error).message }, "could not audit a failed token handshake");
    });
  }

  async #authenticate(hello: Hello): Promise<void> {
    let session: VaultSession;
    try {
      const identity = await this.#host.authenticate(this.peer, hello);
      session = this.#host.vault.session(identity);
      this.#host.admit(this, identity); // the principal's connection cap (throws rate_limited)
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
    const t = session.identity.token;
    this.#token = t ? { id: t.id, expiresAt: t.expiresAt } : null;
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
    if (this.#state === "proof" && this.#queue.length > 0) this.#proof(this.#queue.shift()!);
    if (this.#state === "open") {
      // Nothing starts while the client leaves more than maxBufferedBytes of answers unread.
      while (this.#queue.length > 0 && this.#inFlight < this.#maxInFlight && !this.#bytesFull() && this.#writeBlockedSince === 0 && this.#state === "open")
        this.#request(this.#queue.shift()!);
      if (this.#inFlight === 0 && (this.#lastWord !== null || (this.#peerEnded && this.#queue.length === 0))) return this.#finish(this.#lastWord);
    }
    this.#flow();
  }

  /** Pauses the stream while anything waits (queue, cap, unflushed output, authentication); resumes otherwise. */
  #flow(): void {
    const s = this.#state;
    if (s === "closing" || s === "closed") return;
    const hold = s === "auth" || s === "challenge" || this.#lastWord !== null || this.#queue.length > 0 || this.#inFlight >= this.#maxInFlight || this.#bytesFull() || this.#writeBlockedSince !== 0;
    if (hold && !this.#paused) {
      this.#paused = true;
      this.stream.pause();
    } else if (!hold && this.#paused) {
      this.#paused = false;
      if (this.#partialSince !== 0) this.#partialSince = Date.now(); // the read deadline restarts when we read again
      this.stream.resume();
    }
  }

  /** True when the requests in flight hold MAX_IN_FLIGHT_BYTES of frames (never with none in flight). */
  #bytesFull(): boolean {
    return this.#inFlight > 0 && this.#inFlightBytes >= MAX_IN_FLIGHT_BYTES;
  }

  /** Validates one request frame and starts it, or answers it with an error at once. */
  #request(body: Buffer): void {
    // Strict UTF-8: invalid bytes are refused, never turned into U+FFFD (see frameText).
    const text = frameText(body);
    if (text === null)
      return this.#reply(null, "invalid_request", "the frame is not valid UTF-8; send one JSON request object per frame, encoded as UTF-8 (binary secret values go in base64, see docs/protocol.md)");
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch {
      return this.#reply(null, "invalid_request", "the frame is not valid JSON; send one JSON request object per frame (see docs/protocol.md)");
    }
    if (typeof msg !== "object" || msg === null || Array.isArray(msg))
      return this.#reply(null, "invalid_request", 'a request must be a JSON object {"id":"<uuid>","method":"…","params":{…}}');
    const m = msg as Record<string, unknown>;
    const id = isUuid(m.id) ? m.id : null;
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
    const parsed = parseParams(method, params);
    if (parsed instanceof VaultError) return this.#reply(id, "invalid_request", parsed.message);
    this.#inFlight++;
    const bytes = body.length;
    this.#inFlightBytes += bytes;
    this.#host.requestStarted();
    this.#host.schedule(this.#session!.identity.id, () => this.#run(id, method, parsed, bytes));
  }

  async #run(id: string, method: MethodName, params: unknown, bytes: number): Promise<void> {
    try {
      // Closed while it waited for the scheduler, or an oversize frame came meanwhile: never run.
      if (this.#state !== "open" || this.#lastWord !== null) return;
      if (this.#cutIfDue(Date.now(), id)) return; // once per request, as it starts: after any wait for the scheduler
      const peer = this.peer;
      // The calling process, for a session token (token_create): known from a Unix socket's peer credentials only.
      const ctx: DispatchContext = method === "token_create" ? { ...this.#host.dispatch, callerProcess: () => (peer.transport === "uds" ? processStamp(peer.pid) : null) } : this.#host.dispatch;
      const result = await dispatch(this.#session!, method, params, ctx);
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
      this.#inFlightBytes -= bytes;
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
    const s = this.stream;
    if (this.#state === "closing" || this.#state === "closed" || s.destroyed || !s.writable) {
      if (wipe) frame.fill(0);
      return;
    }
    if (wipe) s.write(frame, () => frame.fill(0));
    else s.write(frame);
    if (this.#writeBlockedSince === 0 && s.writableLength > this.#host.limits.maxBufferedBytes) {
      // The client is not reading its answers: read and start nothing more until it has read them
      // all ('drain'). Requests already running still answer, so the buffer holds at most the
      // bound plus their answers.
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
      case "challenge":
      case "proof":
        if (now - this.#acceptedAt >= lim.handshakeTimeoutMs) {
          this.#host.log.warn({ conn: this.id, transport: this.peer.transport }, "closing a connection that did not finish the token handshake in time");
          this.#abandoned(`no token within the ${lim.handshakeTimeoutMs} ms handshake deadline after the daemon's proof`);
          this.#refuse("invalid_request", `the token handshake did not finish within ${lim.handshakeTimeoutMs} ms; send {"token":"lsr_…"} once the daemon's proof checks out`);
        }
        return;
      case "open":
        if (this.#cutIfDue(now, null)) return;
        if (this.#lastWord !== null) {
          if (now - this.#drainingSince < lim.shutdownGraceMs) return;
          // Past the grace: answers of requests still running are dropped, as at shutdown.
          this.#host.log.warn({ conn: this.id, transport: this.peer.transport, inFlight: this.#inFlight, graceMs: lim.shutdownGraceMs }, "closing a connection after an oversize frame; dropping the answers of requests still running");
          this.#finish(this.#lastWord);
        } else if (this.#partialSince !== 0 && !this.#paused && now - this.#partialSince >= lim.readTimeoutMs) {
          this.#host.log.warn({ conn: this.id, transport: this.peer.transport, timeoutMs: lim.readTimeoutMs }, "closing a connection that left a frame unfinished");
          this.#finish();
        } else if (this.#writeBlockedSince !== 0 && now - this.#writeBlockedSince >= lim.idleTimeoutMs) {
          this.#host.log.warn({ conn: this.id, transport: this.peer.transport }, "closing a connection that stopped reading its answers");
          this.stream.destroy();
        } else if (this.#inFlight === 0 && this.#queue.length === 0 && this.#partialSince === 0 && now - this.#lastActive >= lim.idleTimeoutMs) {
          this.#host.log.info({ conn: this.id, transport: this.peer.transport, idleMs: now - this.#lastActive }, "closing an idle connection");
          this.#finish();
        }
        return;
      default:
        return;
    }
  }

  /**
   * Closes the connection if its token has expired or its lifetime is over, and, at a request
   * (`requestId` set), if the vault's memory says the token no longer holds; true when it did. (The
   * sweep need not ask the vault: a revocation reaches the server as a signal.)
   */
  #cutIfDue(now: number, requestId: string | null): boolean {
    const t = this.#token;
    if (t !== null) {
      // By the vault's clock (a shared store's), as the vault judged it at the hello: not this host's.
      const expired = t.expiresAt !== null && t.expiresAt <= this.#host.vault.now();
      const why: TokenCut | null = expired ? "token expired" : requestId !== null ? this.#host.vault.tokenStanding(t.id) : null;
      if (why !== null) {
        this.cutToken(why, requestId);
        return true;
      }
    }
    const lifetime = this.#host.limits.maxConnectionLifetimeMs;
    if (now - this.#acceptedAt >= lifetime) {
      this.#host.log.info({ conn: this.id, transport: this.peer.transport, lifetimeMs: lifetime }, "closing a connection that reached its maximum lifetime");
      const message = `the connection reached the daemon's maximum connection lifetime (${lifetime} ms); reconnect`;
      this.#finish(encodeFrame({ id: requestId, ok: false, error: wireError("unavailable", message) } satisfies Response));
      return true;
    }
    return false;
  }

  /**
   * The connection's token was revoked or has expired: closes it at once (answers still in flight are
   * dropped), telling the client why, and audits it as auth_failed. Called by the server when the
   * vault signals a revocation, and by the per-request check and the sweep.
   */
  cutToken(why: TokenCut, requestId: string | null = null): void {
    if (this.#state === "closing" || this.#state === "closed" || this.#token === null) return;
    const who = this.#session!.identity;
    const tokenId = this.#token.id;
    this.#host.log.warn({ conn: this.id, transport: this.peer.transport, tokenId, reason: why, inFlight: this.#inFlight }, "closing a connection whose token no longer holds");
    this.#finish(encodeFrame({ id: requestId, ok: false, error: wireError("unauthenticated", CUT_MESSAGE[why]) } satisfies Response));
    const detail = { token_id: tokenId, conn: this.id, remote: peerRemote(this.peer), in_flight: this.#inFlight };
    this.#host.vault.recordConnectionCut(who, why, detail).catch((e: unknown) => {
      this.#host.log.warn({ conn: this.id, err: (e as Error).message }, "could not audit a connection closed for its token");
    });
  }

  /** Server shutdown has begun: a connection still in its handshake is refused now. */
  beginShutdown(): void {
    if (this.#state === "hello" || this.#state === "challenge" || this.#state === "proof" || this.#state === "auth") this.#refuse("unavailable", "the daemon is shutting down; try again when it is back");
  }

  /** Closes the connection: writes `last` if given, ends our side, discards input, destroys after a short linger. */
  end(last?: Buffer): void {
    this.#finish(last);
  }

  #finish(last?: Buffer | null): void {
    if (this.#state === "closing" || this.#state === "closed") return;
    const inHandshake = this.#state !== "open";
    this.#state = "closing";
    this.#host.connectionClosing(this, inHandshake);
    this.#queue.length = 0;
    const s = this.stream;
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
