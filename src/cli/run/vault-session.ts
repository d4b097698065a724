/**
 * `lessor run --vault-session` (issue 14): the sandboxed child may talk to the vault, as agent A and for
 * this run only, never as the owner. The run serves protocol v1 on `vault.sock` in its private
 * directory (shown read-only in the sandbox at /run/lessor) and sets LESSOR_SOCKET to it, so `lessor …`
 * and LessorClient inside work unchanged. Two backends:
 *
 * - embedded (the run opened the vault in-process): a {@link LessorServer} on that socket, whose
 *   authenticate gives every connection the same identity, `run:<random>:A`, role agent, agent A,
 *   a session (random: no later run is this run's identity, whose approvals serve only it; and no pid,
 *   nothing of the host the agent does not need).
 * - daemon (the run is the owner's client, so admin): a raw relay to the daemon's socket would arrive
 *   as the owner's uid, that is admin. Instead the run makes a short-lived agent token for A
 *   (token_create, ttl = the run's --ttl or 1h), and relays each child connection with its hello
 *   replaced (a session token, token_create session: true: named `session:<this process's stamp>`, its identity `token:session:run/<id>`, without the stamp);
 *   the child's first frame must be a valid hello of at most 64 KiB (src/cli/run/session-hello.ts);
 *   whatever token it carries is dropped, and the relay does the token handshake with the daemon
 *   itself (checking the daemon's uid and its proof before showing the token, as LessorClient does),
 *   then pipes the rest both ways. The token never enters the sandbox. It is revoked when the run ends
 *   (on every path: the run's finally), which also closes every connection made with it; if the run is
 *   killed outright, the daemon sees its process gone and revokes the token, its leases and approvals
 *   within a second (src/server/session-sweep.ts; over TCP, where the daemon cannot see the process, it
 *   expires with its ttl).
 *
 * Either way the session is bound to its own leases: the child sees, uses, renews and revokes only the
 * leases granted through this run's session (Identity.session), never another run's of the same agent.
 *
 * The client inside checks the socket's owner (issue 12: SO_PEERCRED, or the file checks): the peer
 * is this run, whose uid the sandbox maps to the same uid inside, so it is accepted.
 */
import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { join } from "node:path";
import { VaultError, wireCode } from "../../base/errors.js";
import type { Identity } from "../../base/types.js";
import type { Backend, BackendApi } from "../../backend/backend.js";
import { listAllLeases } from "../../backend/all-leases.js";
import { daemonTarget } from "../../backend/daemon-target.js";
import { parseChallenge } from "../../client/codecs.js";
import { checkUnixDaemon } from "../../client/daemon-check.js";
import { describeEndpoint, type Endpoint } from "../../client/transport.js";
import { checkServerProof, endpointBinding, hashTokenSecret, newNonce, splitToken } from "../../crypto/token-proof.js";
import { encodeFrame } from "../../protocol/framing.js";
import { SANDBOX_PROXY_DIR } from "../../sandbox/bridge.js";
import { refusalFrame } from "../../server/connection.js";
import { LessorServer } from "../../server/server.js";
import { listenUnix, type UnixListener } from "../../server/transports/uds.js";
import { VERSION } from "../../version.js";
import { cutFirstFrame, isChildHello, relayHello } from "./session-hello.js";
import { makePrivateDir } from "../../proxy/private-dir.js";
import { tokenIdentityIds } from "../../vault/tokens.js";

/** The session socket's name in the run's private directory. */
export const VAULT_SOCKET_NAME = "vault.sock";

/** Where the child finds it (its LESSOR_SOCKET). */
export const SANDBOX_VAULT_SOCKET = `${SANDBOX_PROXY_DIR}/${VAULT_SOCKET_NAME}`;

/** How long a relayed connection may take to send its hello, and the daemon to answer the relay's. */
const HANDSHAKE_MS = 10_000;

/** Relayed connections open at once; more are closed (each one is a connection to the daemon). */
const MAX_RELAYED = 64;

/** Where the run's daemon is, for the relay (the daemon the run itself is connected to). */
export interface DaemonEndpoint {
  endpoint: Endpoint;
  /** For a Unix socket: the uid the daemon must run as (root also accepted); as LessorClient checks it. */
  expectedUid: number | undefined;
}

/** The daemon the run's backend reached: the one the environment names, else the home's socket (as src/backend/backend.ts picks). */
export function daemonEndpoint(env: NodeJS.ProcessEnv, homeSocket: string): DaemonEndpoint {
  const target = daemonTarget(env);
  const ownUid = process.getuid?.();
  if (target === null) return { endpoint: { socketPath: homeSocket }, expectedUid: ownUid };
  return { endpoint: target.endpoint, expectedUid: target.expectedUid ?? ownUid };
}

/** Options of {@link startVaultSession}. */
export interface VaultSessionOptions {
  backend: Backend;
  agent: string;
  /** The run's private directory (the proxy's); absent: one is made here, and removed at close. */
  dir?: string;
  /** The token's lifetime (daemon mode): the run's --ttl, else 1h. */
  ttl?: string;
  /** Daemon mode: where to relay to. */
  daemon: DaemonEndpoint;
}

/** A running vault session. */
export interface VaultSession {
  mode: "embedded" | "daemon";
  /** The private directory holding the socket (shown at /run/lessor). */
  dir: string;
  /** The socket's path outside the sandbox. */
  socket: string;
  /** Daemon mode: the run's agent token's id (never its secret); null in embedded mode. */
  tokenId: string | null;
  /** `env` with LESSOR_SOCKET pointing at the session socket as the sandbox shows it. */
  childEnv(env: Record<string, string>): Record<string, string>;
  /**
   * Stops serving (closing every session connection), revokes the token (daemon mode) and every live
   * lease granted through the session, denies the approvals it asked for that still wait, through `api` (one retry on a fresh connection from
   * `reconnect`), removes a directory it made. Resolves false when that failed (the token and those
   * leases then end with their ttl).
   */
  close(api: () => Promise<BackendApi>, reconnect: () => Promise<void>): Promise<boolean>;
}

/** Starts the session for `o.backend`'s mode; throws VaultError when it cannot (nothing is left behind). */
export async function startVaultSession(o: VaultSessionOptions): Promise<VaultSession> {
  const ownDir = o.dir === undefined;
  const dir = o.dir ?? makePrivateDir("lessor-run-"); // mode 0700, where no other run's sandbox shows it (src/proxy/private-dir.ts)
  const socket = join(dir, VAULT_SOCKET_NAME);
  let stop: (() => Promise<void>) | null = null;
  let tokenId: string | null = null;
  // The embedded session's identity id: random, with nothing of the host (no pid): the sandboxed
  // agent sees it (welcome, whoami, issuedBy).
  const issuer = `run:${randomBytes(8).toString("hex")}:${o.agent}`;
  /** The identity ids the session's grants may be issued by (their leases' issuedBy). */
  let issuers = [issuer];
  let revokeFirst: ((api: BackendApi) => Promise<void>) | null = null;
  try {
    if (o.backend.mode === "embedded") {
      const vault = o.backend.vault;
      if (vault === undefined) throw new VaultError("internal", "the run's embedded backend does not expose its vault");
      // A session: it sees and uses only the leases it was issued (src/vault/leases.ts sessionError).
      const who: Identity = { id: issuer, role: "agent", agent: o.agent, transport: "uds", session: true };
      // Whatever the child sends in its hello (a token included), it is agent A: the socket is this run's own.
      const server = new LessorServer({ vault, authenticate: async () => who, version: VERSION });
      let listener: UnixListener;
      try {
        listener = await listenUnix(socket, { onConnection: (s, peer) => server.handle(s, peer) });
      } catch (e) {
        await server.close();
        throw e;
      }
      stop = async () => {
        await new Promise<void>((r) => listener.close(() => r()));
        await server.close();
      };
    } else {
      // A session token: its identity uses only the leases it was issued, and the daemon revokes it
      // once this process is gone (src/server/session-sweep.ts), should the run be killed outright.
      const created = await o.backend.api.createToken({ name: "lessor-run", role: "agent", agent: o.agent, ttl: o.ttl ?? "1h", session: true });
      tokenId = created.id;
      const id = created.id;
      // As the daemon names a token's identity; a daemon still running an earlier release names a
      // session token by its name (token:<name>/<id>), and the run's leases are ended under either.
      issuers = tokenIdentityIds(created);
      revokeFirst = async (api) => {
        await api.revokeToken(id);
      };
      const relay = new Relay(created.token, o.daemon);
      let listener: UnixListener;
      try {
        listener = await listenUnix(socket, { onConnection: (s) => relay.accept(s) });
      } catch (e) {
        relay.close();
        throw e;
      }
      stop = async () => {
        await new Promise<void>((r) => {
          listener.close(() => r());
          relay.close();
        });
      };
    }
  } catch (e) {
    if (revokeFirst !== null) await revokeFirst(o.backend.api).catch(() => {});
    if (ownDir) rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const halt = stop;
  const revokeToken = revokeFirst;
  const issuedBy = issuers;
  // The session is for this run only: so are the leases the child took through it, whatever ttl it
  // asked for (after the token, so that no new one can be granted meanwhile).
  const revoke = async (api: BackendApi): Promise<void> => {
    if (revokeToken !== null) await revokeToken(api);
    for (const l of await listAllLeases(api, { agent: o.agent, live: true }))
      if (issuedBy.includes(l.issuedBy)) await api.revokeLease(l.id, "lessor run ended (a lease of its vault session)");
    // Its approvals not yet used are withdrawn: nobody can take them up now (an approval serves only
    // the identity that asked, src/vault/approvals.ts), a person should not be asked to decide them,
    // nor the agent's later sessions be held by them under its pending cap. Removed, not denied: a
    // denial would stand for the agent, refusing its next run's (and the owner's) same request. Best
    // effort: one left behind serves nobody and lapses (approval_wait), and the leases are revoked.
    for (const requestedBy of issuedBy) await api.api.approval_withdraw({ requestedBy, agent: o.agent, reason: "the lessor run that asked for it ended" }).catch(() => {});
  };
  let closing: Promise<boolean> | null = null;
  return {
    mode: o.backend.mode,
    dir,
    socket,
    tokenId,
    childEnv: (env) => ({ ...env, LESSOR_SOCKET: SANDBOX_VAULT_SOCKET }),
    close: (api, reconnect) =>
      (closing ??= (async () => {
        await halt().catch(() => {});
        if (ownDir) rmSync(dir, { recursive: true, force: true });
        for (let attempt = 0; attempt < 2; attempt++) {
          try {
            await revoke(await api());
            return true;
          } catch {
            await reconnect().catch(() => {});
          }
        }
        return false;
      })()),
  };
}

/** Relays child connections to the daemon, each authenticated with the run's agent token. */
class Relay {
  #token: string | null;
  readonly #parts: { id: string; secret: string };
  readonly #open = new Set<Socket>();

  constructor(
    token: string,
    readonly daemon: DaemonEndpoint,
  ) {
    const parts = splitToken(token);
    if (parts === null) throw new VaultError("internal", "the daemon returned a token lessor cannot read");
    this.#token = token;
    this.#parts = parts;
  }

  /** Closes every relayed connection and forgets the token. */
  close(): void {
    this.#token = null;
    for (const s of this.#open) s.destroy();
    this.#open.clear();
  }

  #track(s: Socket): void {
    this.#open.add(s);
    s.once("close", () => this.#open.delete(s));
  }

  /** A child connected: read its hello (nothing is sent upstream before a valid one). */
  accept(child: Socket): void {
    child.on("error", () => {});
    if (this.#token === null || this.#open.size >= MAX_RELAYED * 2) {
      child.destroy();
      return;
    }
    this.#track(child);
    const timer = setTimeout(() => child.destroy(), HANDSHAKE_MS);
    child.once("close", () => clearTimeout(timer));
    let got: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      got = got.length === 0 ? chunk : Buffer.concat([got, chunk]);
      const f = cutFirstFrame(got);
      if (f.kind === "more") return;
      child.off("data", onData);
      child.pause();
      clearTimeout(timer);
      if (f.kind === "too-large" || !isChildHello(f.body)) {
        child.destroy();
        return;
      }
      // The child's hello is dropped: only its validity mattered. What follows it (pipelined calls) waits.
      this.#connect(child, Buffer.from(f.rest));
    };
    child.on("data", onData);
  }

  /** Opens the daemon connection, does the token handshake as the run, then joins the two streams. */
  #connect(child: Socket, pending: Buffer): void {
    const token = this.#token;
    if (token === null) return void child.destroy();
    const ep = this.daemon.endpoint;
    const up = "socketPath" in ep ? createConnection({ path: ep.socketPath, allowHalfOpen: true }) : createConnection({ host: ep.host, port: ep.port, noDelay: true, allowHalfOpen: true });
    this.#track(up);
    let joined = false;
    const drop = (): void => {
      child.destroy();
      up.destroy();
    };
    const timer = setTimeout(drop, HANDSHAKE_MS);
    up.on("error", drop);
    up.once("close", () => {
      clearTimeout(timer);
      if (!joined) child.destroy();
    });
    child.once("close", () => {
      clearTimeout(timer);
      up.destroy();
    });
    up.once("connect", () => {
      // As LessorClient does before writing anything: the process listening is the daemon's user.
      const uidChecked = "socketPath" in ep && this.daemon.expectedUid !== undefined;
      if (uidChecked && checkUnixDaemon(up, ep.socketPath, this.daemon.expectedUid!) !== null) return drop();
      const { id, secret } = this.#parts;
      const nonce = newNonce();
      const binding = "socketPath" in ep ? endpointBinding("uds") : endpointBinding("tcp", up.remoteAddress, up.remotePort);
      up.write(encodeFrame(relayHello(id, nonce)));
      let reply: Buffer = Buffer.alloc(0);
      const onReply = (chunk: Buffer): void => {
        reply = reply.length === 0 ? chunk : Buffer.concat([reply, chunk]);
        const f = cutFirstFrame(reply);
        if (f.kind === "more") return;
        up.off("data", onReply);
        up.pause();
        clearTimeout(timer);
        if (f.kind === "too-large") return drop();
        const challenge = parseChallenge(f.body, describeEndpoint(ep), uidChecked);
        if (challenge instanceof VaultError) {
          // A refusal (connection cap, shutting down): the child reads it as the daemon's answer to its
          // hello. From a server not yet proven to be the daemon, only in the words parseChallenge chose.
          if (challenge.code === "daemon_unverified") return drop();
          up.destroy();
          child.end(uidChecked ? reply.subarray(0, 4 + f.body.length) : refusalFrame(wireCode(challenge.code), challenge.message));
          return;
        }
        // Only a daemon that holds this token's hash can make the proof: the token goes nowhere else.
        if (!checkServerProof(hashTokenSecret(secret), nonce, challenge.nonce, id, binding, challenge.proof) || f.rest.length > 0) return drop();
        const frame = encodeFrame({ token }, true);
        up.write(frame, () => frame.fill(0));
        if (pending.length > 0) up.write(pending);
        joined = true;
        up.once("close", () => child.destroy());
        child.pipe(up);
        up.pipe(child);
      };
      up.on("data", onReply);
    });
  }
}
