/**
 * LessorClient: the protocol v1 client over a Unix socket or loopback TCP (DESIGN.md, "Wire protocol").
 *
 * One connection, many calls in flight: every request gets a UUIDv7 id and responses are matched by id
 * in any order. A call that gets no answer within `requestTimeoutMs` fails with `unavailable` and its
 * id is forgotten. When the connection drops, every call in flight fails with `unavailable` and is never
 * resent (access_secret is not idempotent); with `reconnect` on, the next call opens a new connection.
 *
 * Secret values travel base64-encoded and are decoded straight into a {@link SecretBytes}. The JSON
 * text of a frame is a JavaScript string, which cannot be wiped; the frame buffers that carried a value
 * are zeroed as soon as they are used.
 *
 * The client authenticates the daemon before it writes anything that matters (docs/client.md,
 * "Daemon authentication"): on a Unix socket it checks, before even the hello, that the listening
 * process runs as the expected uid (SO_PEERCRED, or the socket's and its directory's owners when the
 * addon is missing); with a token it has the daemon prove it holds the token's hash before the token
 * is sent, and sends nothing else (no request, no value) until then. Over TCP a token is required.
 *
 * This module imports no zod (the schemas stay on the server side), so the CLI starts fast; the
 * peer-credential check and node:crypto are loaded only when a connection needs them.
 */
import { createConnection, type Socket } from "node:net";
import { SecretBytes } from "../crypto/secret-bytes.js";
import { encodeFrame, FrameDecoder, FrameTooLarge, MAX_FRAME_BYTES } from "../protocol/framing.js";
import type { PROTOCOL, VERSION, WireIdentity } from "../protocol/messages.js";
import type { MethodName, Params, Results, WireAuditEvent } from "../protocol/methods.js";
import { ERROR_CODES, VaultError, wireCode, type ErrorCode, type WireErrorCode } from "../base/errors.js";
import { parseRefString } from "../base/names.js";
import { BASE64URL_32, TOKEN_RE } from "../base/token-shape.js";
import type { LeaseRecord, SecretKind, SecretRecord, TokenInfo } from "../base/types.js";

type UnixCheck = typeof import("./daemon-check.js").checkUnixDaemon;
type ProofLib = typeof import("../vault/token-proof.js");
let unixCheckModule: Promise<UnixCheck> | null = null;
let proofModule: Promise<ProofLib> | null = null;
/** The Unix-socket daemon check (node:fs and the peer-credential addon), loaded on first use. */
function loadUnixCheck(): Promise<UnixCheck> {
  return (unixCheckModule ??= import("./daemon-check.js").then((m) => m.checkUnixDaemon));
}
/** The token proof (node:crypto), loaded on first use. */
function loadProof(): Promise<ProofLib> {
  return (proofModule ??= import("../vault/token-proof.js"));
}

/** Frames of calls pipelined on a connecting socket, held until the daemon is authenticated. */
interface Gate {
  open: boolean;
  held: { frame: Buffer; wipe: boolean }[];
}


const PROTOCOL_NAME: typeof PROTOCOL = "lessor";
const PROTOCOL_VERSION: typeof VERSION = 1;
const inspectSymbol = Symbol.for("nodejs.util.inspect.custom");

/** Where the daemon listens: a Unix socket path, or a TCP host and port (loopback). */
export type Endpoint = { socketPath: string } | { host: string; port: number };

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

/** A secret named as `scope/name`, a bare name (scope `global`), or an object. */
export type SecretSpec = string | { scope?: string; name: string };

/** A value to store: bytes, UTF-8 text, or a SecretBytes (which is not wiped). */
export type SecretInput = Uint8Array | string | SecretBytes;

/** What {@link LessorClient.storeSecret} takes. */
export interface StoreSecretInput {
  scope?: string;
  name: string;
  value: SecretInput;
  kind?: SecretKind;
  description?: string;
  tags?: string[];
  mode?: "upsert" | "create";
}

/** What {@link LessorClient.requestLease} takes. */
export interface LeaseRequestInput {
  /** The agent the lease is for; agents may omit it. */
  agent?: string;
  secret: SecretSpec;
  domains?: string[];
  /** Lifetime in ms or a duration such as "5m"; capped by policy. */
  ttl?: number | string;
  maxUses?: number;
}

/** Where a leased credential is about to be used. */
export interface AccessTargetInput {
  domain?: string;
  method?: string;
  path?: string;
}

/** A value from the daemon; wipe it (or `using`) when done. */
export interface ClientAccessResult {
  value: SecretBytes;
  version: number;
  lease: LeaseRecord;
}

/** Filters of {@link LessorClient.listLeases}. */
export interface LeaseListFilter {
  agent?: string;
  secret?: SecretSpec;
  /** Only leases that are live now. */
  live?: boolean;
  limit?: number;
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

/** A client of the lessor daemon. Create with {@link LessorClient.connect}. */
export class LessorClient {
  readonly #endpoint: Endpoint;
  readonly #token: string | undefined;
  readonly #expectedUid: number | undefined;
  readonly #expectedUidRemedy: ((uid: number) => string) | undefined;
  readonly #connectTimeoutMs: number;
  readonly #requestTimeoutMs: number;
  readonly #reconnect: boolean;
  readonly #pipeline: boolean;
  readonly #maxFrame: number;

  #state = IDLE;
  #socket: Socket | null = null;
  #decoder: FrameDecoder | null = null;
  #connecting: Promise<void> | null = null;
  #connectingSocket: Socket | null = null;
  #pending = new Map<string, Pending>();
  #sweep: NodeJS.Timeout | null = null;
  #lastSocketError: string | undefined;
  #identity: WireIdentity | null = null;
  /** Frames of calls pipelined on the connecting socket, held until the daemon is authenticated. */
  #gate: Gate | null = null;
  /** Why the last connection attempt failed (null once one succeeds): what later calls report when reconnect is off. */
  #connectError: VaultError | null = null;

  private constructor(endpoint: Endpoint, opts: ClientOptions) {
    this.#endpoint = checkEndpoint(endpoint);
    if (opts.token !== undefined && (typeof opts.token !== "string" || !TOKEN_RE.test(opts.token)))
      throw new VaultError("unauthenticated", "the token is not a lessor token (lsr_ followed by 16 hex characters, _ and 43 more); check that it was copied whole");
    if (opts.token === undefined && "host" in this.#endpoint)
      throw new VaultError(
        "unauthenticated",
        `a TCP connection (${describe(this.#endpoint)}) needs a token: over TCP only a token lets the client check that it reached the real daemon before sending anything; pass { token } (lessor token create makes one) or use the Unix socket`,
      );
    this.#token = opts.token;
    if (opts.expectedUid !== undefined && (!Number.isSafeInteger(opts.expectedUid) || opts.expectedUid < 0))
      throw new VaultError("invalid_request", "expectedUid must be a uid (a whole number of at least 0)");
    this.#expectedUid = opts.expectedUid ?? process.getuid?.();
    this.#expectedUidRemedy = opts.expectedUidRemedy;
    this.#connectTimeoutMs = positive(opts.connectTimeoutMs, 5000, "connectTimeoutMs");
    this.#requestTimeoutMs = positive(opts.requestTimeoutMs, 30_000, "requestTimeoutMs");
    this.#reconnect = opts.reconnect ?? true;
    this.#pipeline = opts.pipeline ?? false;
    this.#maxFrame = Math.min(positive(opts.maxFrameBytes, MAX_FRAME_BYTES, "maxFrameBytes"), MAX_FRAME_BYTES);
  }

  /**
   * Connects and does the handshake. Throws VaultError (`unavailable`, `unauthenticated`, …) on
   * failure. With `pipeline`, resolves once the socket is connected (see {@link ClientOptions.pipeline}).
   */
  static async connect(endpoint: Endpoint, opts: ClientOptions = {}): Promise<LessorClient> {
    const client = new LessorClient(endpoint, opts);
    if (opts.pipeline) await new Promise<void>((connected, reject) => client.#connect(connected).catch(reject));
    else await client.#connect();
    return client;
  }

  /** Who the daemon says this connection is (from the handshake; with `pipeline`, after the first answer). */
  get identity(): WireIdentity {
    return this.#identity!;
  }

  /** True while a connection is open and ready. */
  get connected(): boolean {
    return this.#state === READY;
  }

  /** Calls one protocol method and returns its result as sent on the wire (values stay base64). */
  call<M extends MethodName>(method: M, params: Params<M>): Promise<Results[M]> {
    if (this.#state === READY) return this.#send(method, params, false);
    return this.#callAfterConnect(method, params, false);
  }

  // ---- secrets (admin; listing also orchestrator) ----

  /** The daemon's and the vault's state (no secrets). */
  status(): Promise<Results["status"]> {
    return this.call("status", {});
  }

  /** Who the daemon thinks this connection is; for a token, also its id, name and expiry. Any role. */
  whoami(): Promise<Results["whoami"]> {
    return this.call("whoami", {});
  }

  /** Stores a value as a new version, creating the secret if needed. Admin. */
  async storeSecret(p: StoreSecretInput): Promise<Results["store_secret"]> {
    const params: Params<"store_secret"> = { ...nameParams(p), ...wireValueOf(p.value) };
    if (p.kind !== undefined) params.kind = p.kind;
    if (p.description !== undefined) params.description = p.description;
    if (p.tags !== undefined) params.tags = p.tags;
    if (p.mode !== undefined) params.mode = p.mode;
    return this.#callSecret("store_secret", params);
  }

  /** Adds a new version to an existing secret. Admin. */
  async rotateSecret(ref: SecretSpec, value: SecretInput): Promise<Results["rotate_secret"]> {
    return this.#callSecret("rotate_secret", { ...refParams(ref), ...wireValueOf(value) });
  }

  /** Re-stores an older version's value as the newest version. Admin. */
  async rollbackSecret(ref: SecretSpec, version: number): Promise<Results["rollback_secret"]> {
    return this.call("rollback_secret", { ...refParams(ref), version });
  }

  /** Deletes a secret and revokes its leases. Admin. */
  async deleteSecret(ref: SecretSpec): Promise<Results["delete_secret"]> {
    return this.call("delete_secret", refParams(ref));
  }

  /** Reads a value without a lease (audited). Admin. Wipe the result's value when done. */
  async revealSecret(ref: SecretSpec, version?: number): Promise<{ value: SecretBytes; version: number }> {
    const params: Params<"reveal_secret"> = refParams(ref);
    if (version !== undefined) params.version = version;
    return this.call("reveal_secret", params).then(toRevealed);
  }

  /** Lists secret metadata. Admin or orchestrator. */
  listSecrets(filter: Params<"list_secrets"> = {}): Promise<SecretRecord[]> {
    return this.call("list_secrets", filter);
  }

  /** One secret's metadata and versions. */
  async getSecretMetadata(ref: SecretSpec): Promise<Results["get_secret_metadata"]> {
    return this.call("get_secret_metadata", refParams(ref));
  }

  /** Kept versions, oldest first. */
  async secretHistory(ref: SecretSpec): Promise<Results["secret_history"]> {
    return this.call("secret_history", refParams(ref));
  }

  // ---- leases ----

  /** Requests a lease (policy-checked). */
  requestLease(req: LeaseRequestInput): Promise<LeaseRecord> {
    return this.call("request_lease", leaseParams(req));
  }

  /**
   * Requests a lease and uses it once, in one round trip and one durable commit on the daemon
   * (request_lease with `access`). Without `target.domain` the daemon uses the first exact host among
   * `req.domains`, else none for an any_domain lease, else the lease's first exact host. If the use is
   * refused, the daemon revokes the new lease in the same commit and this rejects with the refusal.
   * The returned lease's `uses` counts this access. Wipe the value (or `using`) when done.
   */
  leaseAndAccess(req: LeaseRequestInput, target?: AccessTargetInput): Promise<ClientAccessResult> {
    const params = leaseParams(req);
    const access: NonNullable<Params<"request_lease">["access"]> = {};
    if (target?.domain !== undefined) access.domain = target.domain;
    if (target?.method !== undefined) access.method = target.method;
    if (target?.path !== undefined) access.path = target.path;
    params.access = access;
    return this.call("request_lease", params).then(toLeasedAndAccessed);
  }

  /** Uses a lease once and returns the value. Wipe the value (or `using`) when done. */
  accessSecret(leaseId: string, target?: AccessTargetInput): Promise<ClientAccessResult> {
    const params: Params<"access_secret"> = { leaseId };
    if (target?.domain !== undefined) params.domain = target.domain;
    if (target?.method !== undefined) params.method = target.method;
    if (target?.path !== undefined) params.path = target.path;
    return this.call("access_secret", params).then(toAccessed);
  }

  /** Extends a lease within its rule's bounds. */
  renewLease(leaseId: string, opts?: { ttl?: number | string }): Promise<LeaseRecord> {
    const params: Params<"renew_lease"> = { leaseId };
    if (opts?.ttl !== undefined) params.ttl = opts.ttl;
    return this.call("renew_lease", params);
  }

  /** Revokes one lease. */
  revokeLease(leaseId: string, reason?: string): Promise<Results["revoke_lease"]> {
    return this.call("revoke_lease", reason === undefined ? { leaseId } : { leaseId, reason });
  }

  /** Revokes every live lease of an agent. */
  revokeAllForAgent(agent: string, reason?: string): Promise<Results["revoke_all_for_agent"]> {
    return this.call("revoke_all_for_agent", reason === undefined ? { agent } : { agent, reason });
  }

  /** Pulls the killswitch: revokes every live lease and refuses every grant until it is released. Admin. */
  killswitch(reason?: string): Promise<Results["killswitch"]> {
    return this.call("killswitch", reason === undefined ? {} : { reason });
  }

  /** Releases the killswitch lockout; `released` is false when it was not engaged. Admin. */
  releaseKillswitch(reason?: string): Promise<Results["killswitch_release"]> {
    return this.call("killswitch_release", reason === undefined ? {} : { reason });
  }

  /** Lists leases visible to this caller. */
  listLeases(filter: LeaseListFilter = {}): Promise<LeaseRecord[]> {
    const params: Params<"list_leases"> = {};
    if (filter.agent !== undefined) params.agent = filter.agent;
    if (filter.secret !== undefined) params.secret = secretString(filter.secret);
    if (filter.live !== undefined) params.live = filter.live;
    if (filter.limit !== undefined) params.limit = filter.limit;
    return this.call("list_leases", params);
  }

  // ---- audit, policy, keys, tokens (admin) ----

  /** Queries the audit trail. Admin. */
  auditQuery(filter: Params<"audit_query"> = {}): Promise<WireAuditEvent[]> {
    return this.call("audit_query", filter);
  }

  /** Verifies the audit chain. Admin. */
  auditVerify(): Promise<Results["audit_verify"]> {
    return this.call("audit_verify", {});
  }

  /**
   * Recovers a broken audit trail: the daemon appends an `audit_break` event recording what it found
   * and `reason`, and audited writes resume. Admin. See docs/audit.md.
   */
  auditRecover(reason: string): Promise<Results["audit_recover"]> {
    return this.call("audit_recover", { reason });
  }

  /** Re-reads the policy file. Admin. */
  reloadPolicy(): Promise<Results["reload_policy"]> {
    return this.call("reload_policy", {});
  }

  /** Says which rule decides `agent` × `secret` × `domain`, and why. */
  explain(agent: string, secret: SecretSpec, domain?: string): Promise<Results["explain"]> {
    const params: Params<"explain"> = { agent, secret: secretString(secret) };
    if (domain !== undefined) params.domain = domain;
    return this.call("explain", params);
  }

  /** Rotates the master key, re-wrapping every DEK. Admin. */
  rotateMasterKey(): Promise<Results["rotate_master_key"]> {
    return this.call("rotate_master_key", {});
  }

  /** Creates a bearer token; the result's `token` is shown only this once. Admin. */
  createToken(p: Params<"token_create">): Promise<Results["token_create"]> {
    return this.call("token_create", p);
  }

  /** Lists tokens (never their secret part). Admin. */
  listTokens(): Promise<TokenInfo[]> {
    return this.call("token_list", {});
  }

  /** Revokes a token by id. Admin. */
  revokeToken(id: string): Promise<Results["token_revoke"]> {
    return this.call("token_revoke", { id });
  }

  // ---- lifecycle ----

  /** Closes the connection. Calls still in flight fail with `unavailable`; later calls fail too. */
  async close(): Promise<void> {
    if (this.#state === CLOSED) return;
    this.#state = CLOSED;
    const sock = this.#socket;
    this.#socket = null;
    this.#decoder = null;
    this.#connectingSocket?.destroy();
    this.#rejectAll(() => new VaultError("unavailable", "the LessorClient was closed before the lessor daemon answered"));
    if (sock === null || sock.closed) return;
    await new Promise<void>((resolve) => {
      sock.once("close", () => resolve());
      // Every call was answered or has just been rejected, so nothing written is still wanted:
      // destroy at once rather than wait for the daemon to see the end of the stream.
      sock.destroy();
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  [inspectSymbol](): string {
    const id = this.#identity;
    const who = id === null ? "no identity" : id.role === "agent" ? `agent ${id.agent ?? id.id}` : `${id.role} ${id.id}`;
    const state = this.#state === CLOSED ? ", closed" : this.#state === READY ? "" : ", disconnected";
    return `LessorClient(${describe(this.#endpoint)}, ${who}${state})`;
  }

  toJSON(): { endpoint: string; identity: WireIdentity | null } {
    return { endpoint: describe(this.#endpoint), identity: this.#identity };
  }

  // ---- internals ----

  /** Sends a request whose params carry a secret value: its frame is zeroed once written. */
  #callSecret<M extends MethodName>(method: M, params: Params<M>): Promise<Results[M]> {
    if (this.#state === READY) return this.#send(method, params, true);
    return this.#callAfterConnect(method, params, true);
  }

  async #callAfterConnect<M extends MethodName>(method: M, params: Params<M>, secret: boolean): Promise<Results[M]> {
    if (this.#state === CLOSED) throw new VaultError("unavailable", "this LessorClient was closed; connect a new one");
    // Behind the hello on the connecting socket: the daemon answers once it has accepted the hello.
    if (this.#state === CONNECTING && this.#pipeline && this.#connectingSocket) return this.#send(method, params, secret, this.#connectingSocket);
    if (this.#state === CONNECTING) await this.#connecting;
    else if (!this.#reconnect)
      // A pipelined connect resolves before the handshake: its failure is this call's answer.
      throw this.#connectError ?? new VaultError("unavailable", "the connection to the lessor daemon was lost and reconnect is off; connect a new LessorClient");
    else await this.#connect();
    if (this.#state !== READY) throw new VaultError("unavailable", "the connection to the lessor daemon was lost again right after reconnecting; check the daemon");
    return this.#send(method, params, secret);
  }

  #send(method: string, params: unknown, secret: boolean, sock: Socket = this.#socket!): Promise<any> {
    const id = requestId();
    const message = { id, method, params };
    let frame: Buffer;
    try {
      frame = encodeFrame(message, secret);
    } catch {
      return Promise.reject(new VaultError("invalid_request", `the ${method} params cannot be sent as JSON; pass plain values`));
    }
    if (frame.length - 4 > this.#maxFrame) {
      if (secret) frame.fill(0);
      return Promise.reject(
        new VaultError("invalid_request", `the ${method} request is ${frame.length - 4} bytes, over the ${this.#maxFrame}-byte frame limit; send a smaller value`),
      );
    }
    const deadline = monotonicMs() + this.#requestTimeoutMs;
    const promise = new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, deadline, method });
    });
    if (this.#sweep === null) this.#armSweep(this.#requestTimeoutMs);
    const gate = this.#gate;
    if (sock !== this.#socket && gate !== null && !gate.open) gate.held.push({ frame, wipe: secret }); // not before the daemon proved itself
    else if (secret) sock.write(frame, () => frame.fill(0));
    else sock.write(frame);
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
          `no answer from the lessor daemon within ${this.#requestTimeoutMs} ms for ${p.method}; it may or may not have taken effect, so check before retrying`,
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

  /** Drops the connection `sock` (if still current) and fails every call in flight with `error`. */
  #fail(sock: Socket, make: () => VaultError): void {
    if (sock !== this.#socket) return;
    this.#socket = null;
    this.#decoder = null;
    if (this.#state !== CLOSED) this.#state = IDLE;
    sock.destroy();
    this.#rejectAll(make);
  }

  #onData(sock: Socket, chunk: Buffer): void {
    if (sock !== this.#socket) return;
    let bodies: Buffer[];
    try {
      bodies = this.#decoder!.push(chunk);
    } catch (e) {
      const size = e instanceof FrameTooLarge ? `${e.length} bytes` : "unknown size";
      this.#fail(sock, () => new VaultError("internal", `the lessor daemon sent a frame of ${size}, over the ${this.#maxFrame}-byte limit; the connection was closed`));
      return;
    }
    for (let i = 0; i < bodies.length; i++) if (!this.#onFrame(sock, bodies[i]!)) return;
  }

  /** Handles one response frame; false when it broke the connection. */
  #onFrame(sock: Socket, body: Buffer): boolean {
    let msg: any;
    try {
      msg = JSON.parse(body.toString("utf8"));
    } catch {
      msg = undefined;
    }
    if (typeof msg !== "object" || msg === null || typeof msg.ok !== "boolean" || (typeof msg.id !== "string" && msg.id !== null)) {
      body.fill(0);
      this.#fail(sock, () => new VaultError("internal", "the lessor daemon sent a malformed message; the connection was closed"));
      return false;
    }
    if (msg.ok) {
      if (!("result" in msg)) return this.#malformed(sock);
      const r = msg.result;
      if (typeof r === "object" && r !== null && typeof r.value === "string") body.fill(0);
    } else if (!isWireErrorShape(msg.error)) return this.#malformed(sock);
    if (msg.id === null) {
      const e = toVaultError(msg.error);
      // A frame for no request: the daemon is closing the connection (a frame it could not read, or
      // the token revoked or expired, or the connection's lifetime over), and says why.
      const why = e.code === "invalid_request" ? "could not read a request and closed the connection" : "closed the connection";
      this.#fail(sock, () => new VaultError(e.code, `the lessor daemon ${why}: ${e.message}`));
      return false;
    }
    const p = this.#pending.get(msg.id);
    if (p === undefined) return true; // a late answer to a call that timed out
    this.#pending.delete(msg.id);
    if (msg.ok) p.resolve(msg.result);
    else p.reject(toVaultError(msg.error));
    return true;
  }

  #malformed(sock: Socket): false {
    this.#fail(sock, () => new VaultError("internal", "the lessor daemon sent a malformed response; the connection was closed"));
    return false;
  }

  /**
   * Opens a connection and does the handshake; shared by every call that waits for it.
   * `connected` is called once the socket is connected (before the handshake is done).
   *
   * Order on the wire: nothing until the daemon is checked (Unix socket: its uid), then the hello;
   * with a token, the hello names it and carries a nonce, the daemon answers with its proof, and only a
   * proof that checks out lets the token, and any calls pipelined meanwhile, go out.
   */
  #connect(connected?: () => void): Promise<void> {
    this.#state = CONNECTING;
    const p = new Promise<void>((resolve, reject) => {
      const ep = this.#endpoint;
      const where = describe(ep);
      const token = this.#token;
      // Loaded while the socket connects; each only when this connection needs it.
      const unixCheck = "socketPath" in ep && this.#expectedUid !== undefined ? loadUnixCheck() : null;
      const proofLib = token !== undefined ? loadProof() : null;
      unixCheck?.catch(() => {});
      proofLib?.catch(() => {});
      const sock = "socketPath" in ep ? createConnection({ path: ep.socketPath }) : createConnection({ host: ep.host, port: ep.port, noDelay: true });
      const decoder = new FrameDecoder(this.#maxFrame);
      const gate: Gate = { open: false, held: [] };
      this.#connectingSocket = sock;
      this.#gate = gate;
      let isConnected = false;
      let done = false;
      /** What the next frame from the daemon must be. */
      let stage: "check" | "challenge" | "welcome" = "check";
      /** The token handshake in progress (after the hello that names the token went out). */
      let pending: { lib: ProofLib; id: string; secret: string; nonce: Buffer; binding: string } | null = null;
      const timer = setTimeout(() => {
        finish(
          new VaultError(
            "unavailable",
            isConnected
              ? `the lessor daemon at ${where} did not finish the handshake within ${this.#connectTimeoutMs} ms; check that it is healthy`
              : `could not connect to the lessor daemon at ${where} within ${this.#connectTimeoutMs} ms; check that it is running`,
          ),
        );
      }, this.#connectTimeoutMs);
      const finish = (err: VaultError | null, identity?: WireIdentity, rest?: Buffer[]): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.#connectingSocket = null;
        this.#connecting = null;
        if (this.#gate === gate) this.#gate = null;
        if (this.#state === CLOSED && err === null) err = new VaultError("unavailable", "the LessorClient was closed while connecting");
        if (err !== null) {
          this.#connectError = err;
          sock.destroy();
          for (const h of gate.held.splice(0)) if (h.wipe) h.frame.fill(0); // never sent
          if (this.#state !== CLOSED) this.#state = IDLE;
          this.#rejectAll(() => err); // calls pipelined behind the hello
          reject(err);
          return;
        }
        this.#connectError = null;
        this.#identity = identity!;
        this.#socket = sock;
        this.#decoder = decoder;
        this.#lastSocketError = undefined;
        this.#state = READY;
        resolve();
        for (let i = 0; i < rest!.length; i++) if (!this.#onFrame(sock, rest![i]!)) return;
      };
      /** Lets the held calls out: the daemon is authenticated (or, without a token, its uid checked). */
      const openGate = (): void => {
        gate.open = true;
        for (const h of gate.held.splice(0)) {
          const f = h.frame;
          if (h.wipe) sock.write(f, () => f.fill(0));
          else sock.write(f);
        }
      };
      const writeHello = async (): Promise<void> => {
        if (unixCheck !== null) {
          const check = await unixCheck;
          if (done) return;
          const refusal = check(sock, (ep as { socketPath: string }).socketPath, this.#expectedUid!, this.#expectedUidRemedy);
          if (refusal !== null) return finish(refusal);
        }
        const hello: Record<string, unknown> = { protocol: PROTOCOL_NAME, version: PROTOCOL_VERSION };
        if (token === undefined) {
          sock.write(encodeFrame(hello));
          stage = "welcome";
          openGate(); // pipelined calls go right behind the hello
          return;
        }
        const lib = await proofLib!;
        if (done) return;
        const parts = lib.splitToken(token)!;
        const nonce = lib.newNonce();
        const binding = "socketPath" in ep ? "uds" : lib.endpointBinding("tcp", sock.remoteAddress, sock.remotePort);
        pending = { lib, id: parts.id, secret: parts.secret, nonce, binding };
        hello.tokenId = parts.id;
        hello.nonce = nonce.toString("base64url");
        stage = "challenge";
        sock.write(encodeFrame(hello));
      };
      /** The daemon's proof checked out: shows the token, then lets the held calls out. */
      const showToken = (body: Buffer): void => {
        const p = pending!;
        const proof = parseChallenge(body, where);
        if (proof instanceof VaultError) return finish(proof);
        if (!p.lib.checkServerProof(p.lib.hashTokenSecret(p.secret), p.nonce, proof.nonce, p.id, p.binding, proof.proof))
          return finish(
            new VaultError(
              "daemon_unverified",
              `the server at ${where} could not prove that it holds this token, so the token was not sent: either something other than your lessor daemon is listening there, or that daemon does not know this token (another vault, or a mistyped token id)`,
            ),
          );
        pending = null;
        stage = "welcome";
        const frame = encodeFrame({ token }, true);
        sock.write(frame, () => frame.fill(0));
        openGate();
      };
      sock.on("connect", () => {
        isConnected = true;
        connected?.();
        writeHello().catch((e: unknown) => finish(new VaultError("internal", `could not start the handshake with the lessor daemon at ${where}: ${(e as Error).message}`)));
      });
      sock.on("error", (e: NodeJS.ErrnoException) => {
        if (!done) finish(connectError(e, ep));
        else this.#lastSocketError = e.code ?? "socket error";
      });
      sock.on("close", () => {
        if (!done) {
          finish(
            new VaultError(
              "unavailable",
              this.#state === CLOSED
                ? "the LessorClient was closed while connecting"
                : `the lessor daemon at ${where} closed the connection during the handshake; check its log`,
            ),
          );
          return;
        }
        const why = this.#lastSocketError === undefined ? "" : ` (${this.#lastSocketError})`;
        this.#fail(
          sock,
          () =>
            new VaultError(
              "unavailable",
              `the connection to the lessor daemon was lost${why}; calls in flight may or may not have taken effect, so check before retrying`,
            ),
        );
      });
      sock.on("data", (chunk: Buffer) => {
        if (done) {
          this.#onData(sock, chunk);
          return;
        }
        let bodies: Buffer[];
        try {
          bodies = decoder.push(chunk);
        } catch {
          finish(new VaultError("internal", `the lessor daemon at ${where} sent a handshake reply over the ${this.#maxFrame}-byte limit`));
          return;
        }
        for (let i = 0; i < bodies.length && !done; i++) {
          const body = bodies[i]!;
          if (stage === "challenge") {
            showToken(body);
            continue;
          }
          // Before the hello (stage check) only a refusal is acceptable: a daemon at its connection cap
          // or shutting down says so at once. Anything else there is not the daemon's welcome.
          const welcome = parseWelcome(body, where);
          if (welcome instanceof VaultError) return finish(welcome);
          if (stage === "check")
            return finish(new VaultError("daemon_unverified", `the server at ${where} sent a welcome before the client said hello; it is not behaving as a lessor daemon, so nothing was sent`));
          return finish(null, welcome, bodies.slice(i + 1));
        }
      });
    });
    this.#connecting = p;
    return p;
  }
}

// ---- helpers (module-level, so calls allocate no closures) ----

function checkEndpoint(ep: Endpoint): Endpoint {
  if (ep !== null && typeof ep === "object") {
    if ("socketPath" in ep && typeof ep.socketPath === "string" && ep.socketPath !== "") return { socketPath: ep.socketPath };
    if ("host" in ep && typeof ep.host === "string" && ep.host !== "" && Number.isInteger(ep.port) && ep.port > 0 && ep.port < 65536)
      return { host: ep.host, port: ep.port };
  }
  throw new VaultError("invalid_request", "the endpoint must be { socketPath } or { host, port } with a port from 1 to 65535");
}

function positive(v: number | undefined, dflt: number, what: string): number {
  if (v === undefined) return dflt;
  if (!Number.isFinite(v) || v <= 0) throw new VaultError("invalid_request", `${what} must be a positive number`);
  return v;
}

function describe(ep: Endpoint): string {
  return "socketPath" in ep ? `uds ${ep.socketPath}` : `tcp ${ep.host}:${ep.port}`;
}

function connectError(e: NodeJS.ErrnoException, ep: Endpoint): VaultError {
  const code = e.code ?? "";
  if ("socketPath" in ep) {
    if (code === "ENOENT" || code === "ECONNREFUSED")
      return new VaultError("unavailable", `no lessor daemon is listening on ${ep.socketPath}; start one with \`lessor serve\``);
    if (code === "EACCES" || code === "EPERM")
      return new VaultError("unavailable", `permission denied opening ${ep.socketPath}; run as the daemon's user or use a token over TCP`);
  } else {
    const where = `${ep.host}:${ep.port}`;
    if (code === "ECONNREFUSED")
      return new VaultError("unavailable", `no lessor daemon is listening on ${where}; start one with \`lessor serve\` and \`[server] tcp = "${where}"\` in lessor.toml`);
    if (code === "ENOTFOUND" || code === "EAI_AGAIN")
      return new VaultError("unavailable", `cannot resolve the host "${ep.host}"; check the daemon's address`);
  }
  return new VaultError("unavailable", `cannot connect to the lessor daemon at ${describe(ep)} (${code || "connection error"}); check that it is running`);
}

function isWireCode(code: unknown): code is WireErrorCode {
  return typeof code === "string" && Object.prototype.hasOwnProperty.call(ERROR_CODES, code) && wireCode(code as ErrorCode) === code;
}

function isWireErrorShape(e: any): boolean {
  return typeof e === "object" && e !== null && typeof e.code === "string" && typeof e.message === "string";
}

/** A wire error as a VaultError; an unknown code becomes `internal`. */
function toVaultError(e: { code: string; message: string }): VaultError {
  const message = e.message.length > 2000 ? `${e.message.slice(0, 2000)}…` : e.message;
  return isWireCode(e.code) ? new VaultError(e.code, message) : new VaultError("internal", `the lessor daemon answered with an unknown error (${e.code.slice(0, 64)}): ${message}`);
}

function parseWelcome(body: Buffer, where: string): WireIdentity | VaultError {
  let msg: any;
  try {
    msg = JSON.parse(body.toString("utf8"));
  } catch {
    msg = undefined;
  }
  const bad = new VaultError("internal", `the server at ${where} sent a malformed handshake reply; is it a lessor daemon?`);
  if (typeof msg !== "object" || msg === null || msg.protocol !== PROTOCOL_NAME || typeof msg.ok !== "boolean") return bad;
  if (!msg.ok) return isWireErrorShape(msg.error) ? toVaultError(msg.error) : bad;
  if (msg.version !== PROTOCOL_VERSION)
    return new VaultError("unavailable", `the lessor daemon at ${where} speaks protocol version ${String(msg.version)}, this client speaks ${PROTOCOL_VERSION}; use matching versions`);
  const id = msg.identity;
  if (typeof id !== "object" || id === null || typeof id.id !== "string" || typeof id.transport !== "string" || !["admin", "orchestrator", "agent"].includes(id.role))
    return bad;
  return id as WireIdentity;
}


/** The daemon's nonce and proof from its answer to a token handshake hello, or why there are none. */
function parseChallenge(body: Buffer, where: string): { nonce: Buffer; proof: Buffer } | VaultError {
  let msg: any;
  try {
    msg = JSON.parse(body.toString("utf8"));
  } catch {
    msg = undefined;
  }
  const unverified = (what: string) =>
    new VaultError("daemon_unverified", `the server at ${where} ${what}, so the token was not sent; something other than your lessor daemon may be listening there`);
  if (typeof msg !== "object" || msg === null || msg.protocol !== PROTOCOL_NAME || typeof msg.ok !== "boolean")
    return unverified("did not answer the token handshake as a lessor daemon does");
  if (!msg.ok) {
    if (!isWireErrorShape(msg.error)) return unverified("sent a malformed refusal");
    const e = toVaultError(msg.error);
    if (e.code !== "invalid_request") return e; // a cap or a shutdown; nothing was sent
    return new VaultError("unavailable", `the lessor daemon at ${where} refused the token handshake (${e.message}); it may be older than this client, so upgrade it. The token was not sent`);
  }
  const c = msg.challenge;
  if (typeof c !== "object" || c === null) return unverified("answered without proving that it holds the token");
  if (typeof c.nonce !== "string" || typeof c.proof !== "string" || !BASE64URL_32.test(c.nonce) || !BASE64URL_32.test(c.proof))
    return unverified("sent a malformed proof");
  return { nonce: Buffer.from(c.nonce, "base64url"), proof: Buffer.from(c.proof, "base64url") };
}

/** request_lease params (without `access`) from a LeaseRequestInput. */
function leaseParams(req: LeaseRequestInput): Params<"request_lease"> {
  const params: Params<"request_lease"> = { secret: secretString(req.secret) };
  if (req.agent !== undefined) params.agent = req.agent;
  if (req.domains !== undefined) params.domains = req.domains;
  if (req.ttl !== undefined) params.ttl = req.ttl;
  if (req.maxUses !== undefined) params.maxUses = req.maxUses;
  return params;
}

/** `{ scope?, name }` params from a SecretSpec. */
function refParams(ref: SecretSpec): { scope?: string; name: string } {
  if (typeof ref === "string") return parseRefString(ref);
  return nameParams(ref);
}

function nameParams(ref: { scope?: string; name: string }): { scope?: string; name: string } {
  return ref.scope === undefined ? { name: ref.name } : { scope: ref.scope, name: ref.name };
}

/** `scope/name` (or a bare name) from a SecretSpec. */
function secretString(s: SecretSpec): string {
  if (typeof s === "string") return s;
  return s.scope === undefined ? s.name : `${s.scope}/${s.name}`;
}

/**
 * A value for the wire. Bytes go as base64; text goes as UTF-8 text (it is already an unwipeable
 * string, so encoding it again would only add copies).
 */
function wireValueOf(v: SecretInput): { value: string; encoding: "utf8" | "base64" } {
  if (typeof v === "string") return { value: v, encoding: "utf8" };
  if (v instanceof SecretBytes) {
    if (v.wiped) throw new VaultError("invalid_request", "the SecretBytes value was already wiped; pass a live value");
    return { value: v.expose().toString("base64"), encoding: "base64" };
  }
  if (v instanceof Uint8Array) return { value: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64"), encoding: "base64" };
  throw new VaultError("invalid_request", "a secret value must be bytes (Uint8Array), text or SecretBytes");
}

/** Decodes a wire value into a fresh SecretBytes, never through an unwiped intermediate buffer. */
function decodeValue(r: { value?: unknown; encoding?: unknown }): SecretBytes {
  const s = r.value;
  if (typeof s !== "string" || r.encoding !== "base64")
    throw new VaultError("internal", "the lessor daemon sent a value in an unexpected form; check that client and daemon versions match");
  const buf = Buffer.alloc(Buffer.byteLength(s, "base64"));
  const n = buf.write(s, "base64");
  r.value = ""; // drop our reference to the text (strings cannot be wiped)
  return SecretBytes.adopt(n === buf.length ? buf : buf.subarray(0, n));
}

function toRevealed(r: Results["reveal_secret"]): { value: SecretBytes; version: number } {
  return { value: decodeValue(r), version: r.version };
}

function toAccessed(r: Results["access_secret"]): ClientAccessResult {
  return { value: decodeValue(r), version: r.version, lease: r.lease };
}

function toLeasedAndAccessed(r: Results["request_lease"]): ClientAccessResult {
  const version = r.version;
  if (typeof version !== "number")
    throw new VaultError("internal", "the lessor daemon granted the lease but sent no value; it may predate request_lease with access, so use matching versions");
  const value = decodeValue(r);
  const { value: _v, encoding: _e, version: _n, ...lease } = r;
  return { value, version, lease };
}

/** Milliseconds on a monotonic clock, from process.hrtime (node:perf_hooks costs start-up time to load). */
function monotonicMs(): number {
  const [s, ns] = process.hrtime();
  return s * 1e3 + ns / 1e6;
}
