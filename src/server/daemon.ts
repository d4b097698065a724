/**
 * The daemon: one per home (a lock), the vault opened from the home, the server, and the listeners the
 * configuration asks for (the Unix socket, and optionally loopback TCP; see transports/listeners.ts).
 * `lessor serve` runs it in the foreground.
 */
import { join } from "node:path";
import { loadConfig, openVault } from "../config/open-vault.js";
import { HOME_FILES, resolveHome } from "../config/home.js";
import type { PassphraseProvider } from "../crypto/keys/passphrase.js";
import { VERSION } from "../version.js";
import { withheldQuotes } from "../vault/policy.js";
import type { Vault } from "../vault/vault.js";
import { makeAuthenticator } from "./authenticate.js";
import { acquireDaemonLock } from "./lock.js";
import { noopLogger, type Logger } from "./logger.js";
import { loadPeerCred } from "../native/peercred.js";
import { forbidDumps } from "../native/no-dump.js";
import { loadVsock } from "../native/vsock.js";
import { decidePeerTrust } from "./peer-trust.js";
import { LessorServer } from "./server.js";
import { startSessionSweep } from "./session-sweep.js";
import { scheduleRotations } from "./rotation-schedule.js";
import { listenerSpecs, openListener, type Listener } from "./transports/listeners.js";
import { escapeUnsafe } from "../base/text.js";

/** How to start a daemon. */
export interface DaemonOptions {
  home?: string;
  env?: NodeJS.ProcessEnv;
  getPassphrase?: PassphraseProvider;
  log?: Logger;
  /** Where to load the peer-credential addon from (tests simulate a missing one); default: the package's own. */
  peercredAddonPath?: string;
  /** Where to load the AF_VSOCK addon from, when `[server] vsock_port` is set; default: the package's own. */
  vsockAddonPath?: string;
}

/** A running daemon. */
export interface Daemon {
  readonly home: string;
  readonly socketPath: string;
  readonly tcp: { host: string; port: number } | null;
  readonly vault: Vault;
  /**
   * Re-reads the policy file (what SIGHUP does in `lessor serve`), audited as done by
   * {@link RELOAD_IDENTITY}. A broken file puts deny-all in force; the outcome is logged, never thrown.
   */
  reloadPolicy(): Promise<void>;
  /** Stops accepting, finishes in-flight requests, flushes and closes the store, releases the lock. */
  close(): Promise<void>;
}

/** Who a policy reload asked by a signal to the daemon is audited as. */
export const RELOAD_IDENTITY = Object.freeze({ id: "signal:SIGHUP", role: "admin", transport: "signal" } as const);

/** How often the daemon looks for a killswitch pulled or released by another process sharing the store. */
const KILLSWITCH_POLL_MS = 1000;

/** Starts a daemon for a home; resolves once it listens. */
export async function startDaemon(opts: DaemonOptions = {}): Promise<Daemon> {
  const env = opts.env ?? process.env;
  const log = opts.log ?? noopLogger;
  const home = resolveHome(opts.home, env);
  const lock = acquireDaemonLock(home);
  if (lock.recoveredStale) log.warn({ home, previousPid: lock.previousPid ?? null }, "replaced a stale daemon lock left by a process that is gone");
  const cleanups: (() => Promise<void> | void)[] = [() => lock.release()];
  const cleanup = async () => {
    for (const c of cleanups.splice(0).reverse()) {
      try {
        await c();
      } catch (e) {
        log.error({ err: (e as Error).message }, "error while shutting down");
      }
    }
  };
  try {
    const cfg = loadConfig(home);
    // Decided before the vault opens (and asks for a passphrase): a configuration that needs peer
    // credentials the daemon cannot read stops the start here.
    const peercred = loadPeerCred(opts.peercredAddonPath !== undefined ? { addonPath: opts.peercredAddonPath } : {});
    const trust = decidePeerTrust({
      peercred,
      socketMode: cfg.server.socketMode,
      identities: cfg.identities,
      configPath: join(home, HOME_FILES.config),
      ...(opts.peercredAddonPath !== undefined ? { addonPath: opts.peercredAddonPath } : {}),
    });
    if (trust.warning !== null) log.warn({ ownerWithoutPeerCred: true }, trust.warning);
    // The daemon holds the key and, while it serves, values: no core file, no same-uid reads of its memory.
    const nodump = forbidDumps(opts.peercredAddonPath !== undefined ? { addonPath: opts.peercredAddonPath } : {});
    if (!nodump.done) log.warn({ dumpable: true }, `this daemon's memory is not shielded from other processes of its uid: ${nodump.reason}`);
    // A daemon that starts puts its [vault] limits in force on a shared store (docs/team.md).
    const claimLimits = { id: `uid:${process.getuid?.() ?? 0}`, role: "admin" as const, transport: "serve" };
    const vault = await openVault({ home, env, claimLimits, ...(opts.getPassphrase ? { getPassphrase: opts.getPassphrase } : {}) });
    cleanups.push(() => vault.close());
    // The vault refuses audited writes once it finds the audit trail cut or altered; say so loudly, once per problem.
    const offAudit = vault.onSignal((sig) => {
      if (sig.type === "audit_broken")
        // The problem may quote a forged row (a key id): pino escapes C0 controls only, not C1 or bidi.
        log.error({ problem: escapeUnsafe(sig.problem) }, "the audit trail is broken: audited operations are refused until an admin checks it (lessor audit verify) and runs lessor audit recover --reason \"…\"");
    });
    cleanups.push(offAudit);
    // Another instance sharing the store (PostgreSQL) reloaded its policy or rotated the master key: say what happened here.
    const offPolicy = vault.onSignal((sig) => {
      if (sig.type === "policy_reloaded" && sig.remote === true)
        (sig.ok ? log.info.bind(log) : log.error.bind(log))({ ok: sig.ok }, "policy reloaded because another instance sharing the database reloaded its own");
      else if (sig.type === "policy_stale" && sig.local === sig.stored)
        log.error(
          { limits: sig.limits },
          "this instance's [vault] limits in lessor.toml differ from the ones in force on the shared database (another instance started or reloaded since with other limits): it grants nothing until they match; give it the same [vault] section as the instance in force and restart it",
        );
      else if (sig.type === "policy_stale")
        log.error(
          { local: sig.local, stored: sig.stored, ...(sig.limits ? { limits: sig.limits } : {}) },
          "this instance's policy differs from the one in force on the shared database: it grants nothing until they match; copy the policy file in force to this instance (picked up within a second), or run lessor policy reload here to put this one in force everywhere",
        );
      // Another instance rotated the master key: this one read its key source again (src/vault/key-reload.ts).
      else if (sig.type === "keys_reloaded" && sig.ok) log.info({ keyIds: sig.keyIds }, "master keys read again: another instance sharing the store rotated the master key");
      else if (sig.type === "keys_reloaded") log.error({ keyIds: sig.keyIds, err: sig.error }, "the master key another instance rotated to cannot be loaded here: what needs it is refused until it can");
    });
    cleanups.push(offPolicy);
    const ownerUid = process.getuid?.() ?? 0;
    const s = cfg.server;
    const server = new LessorServer({
      vault,
      authenticate: makeAuthenticator(vault, cfg.identities, ownerUid, { ownerWithoutPeerCred: trust.ownerWithoutPeerCred }, { vms: cfg.vms, vsock: cfg.vsockGuests }),
      limits: {
        maxConnections: s.maxConnections,
        handshakeTimeoutMs: s.handshakeTimeoutMs,
        idleTimeoutMs: s.idleTimeoutMs,
        readTimeoutMs: s.readTimeoutMs,
        maxInFlight: s.maxInFlight,
        maxInFlightPerPrincipal: s.maxInFlightPerPrincipal,
        maxInFlightPerPrincipalShared: s.maxInFlightPerPrincipalShared,
        maxInFlightTotal: s.maxInFlightTotal,
        maxBufferedBytes: s.maxBufferedBytes,
        maxConnectionsPerPrincipal: s.maxConnectionsPerPrincipal,
        maxConnectionsPerIssuer: s.maxConnectionsPerIssuer,
        ownerReservedConnections: s.ownerReservedConnections,
        maxHandshakes: s.maxHandshakes,
        maxHandshakesPerPeer: s.maxHandshakesPerPeer,
        maxFrameBytes: s.maxFrameBytes,
        shutdownGraceMs: s.shutdownGraceMs,
        maxConnectionLifetimeMs: s.maxConnectionLifetimeMs,
      },
      // The owner's exemptions and reserve (admission.ts) are for the daemon's uid as its admin: when
      // [[identity]] maps that uid to another identity (an agent, say), its processes are that identity
      // and get neither; the admin then connects with a token, held to the common limits.
      ...(cfg.identities.some((i) => i.uid === ownerUid) ? {} : { ownerUid }),
      ownerWithoutPeerCred: trust.ownerWithoutPeerCred === true,
      log,
      version: VERSION,
    });
    cleanups.push(() => server.close());
    const listeners: Listener[] = [];
    // Listeners stop accepting first (close() without waiting: a socket server's callback waits for
    // every connection), then the server drains in-flight requests, then the vault closes.
    cleanups.push(() => {
      for (const l of listeners) l.close();
    });
    let socketPath = "";
    let tcp: Daemon["tcp"] = null;
    const vmSockets: { vm: string; socket: string }[] = [];
    // The AF_VSOCK addon is loaded only when asked for; without it that listener refuses to open.
    const vsock = s.vsockPort !== null ? loadVsock(opts.vsockAddonPath !== undefined ? { addonPath: opts.vsockAddonPath } : {}) : undefined;
    for (const spec of listenerSpecs(s, home, cfg.vms)) {
      const l = await openListener(spec, {
        onConnection: (stream, peer) => server.handle(stream, peer),
        onError: (e) => log.warn({ err: e.message, transport: spec.kind }, "listener error"),
        peercred,
        ...(vsock !== undefined ? { vsock } : {}),
      });
      listeners.push(l); // a Unix socket listener's close() removes its file, if it is still the one it created
      if (l.bound.kind === "uds") socketPath = l.bound.path;
      else if (l.bound.kind === "tcp") tcp = { host: l.bound.host, port: l.bound.port };
      else if (l.bound.kind === "vsock-uds") vmSockets.push({ vm: l.bound.vm, socket: l.bound.path });
    }
    // A killswitch pulled by another process (the CLI in embedded mode, another daemon on the same
    // store) closes this daemon's agent connections too, within a second.
    // It also reads the database once a second, which is when the store notices that the path no
    // longer names the file it has open (a backup restored over it): logged once, not every second.
    let pollError: string | null = null;
    const poll = setInterval(() => {
      vault.checkKillswitch().then(
        () => (pollError = null),
        (e: unknown) => {
          const err = (e as Error).message;
          if (err !== pollError) log.error({ err }, "could not read the killswitch state");
          pollError = err;
        },
      );
    }, KILLSWITCH_POLL_MS);
    poll.unref();
    cleanups.push(() => clearInterval(poll));
    // Other instances' revocations, killswitch and policy reloads, within milliseconds (PostgreSQL's
    // LISTEN/NOTIFY and change log; a no-op for stores one process owns). The polls above stay as a
    // safety net, and are what several processes on one SQLite file rely on.
    cleanups.push(vault.followChanges());
    // The session tokens of lessor runs that are gone (killed outright) are revoked within a second,
    // with what they hold (src/server/session-sweep.ts).
    cleanups.push(startSessionSweep(vault, log));
    // [[rotate]] entries with `every`: rotated by their hook when due (src/server/rotation-schedule.ts);
    // stopped, waiting for a running hook, before the vault closes.
    const schedule = scheduleRotations(vault, cfg.rotate, log);
    cleanups.push(() => schedule.stop());
    const status = await vault.admin().describe();
    if (status.policy.state === "broken")
      log.error({ policy: status.policy.source, error: withheldQuotes(status.policy.error ?? "") }, "the policy file is invalid: every grant is denied until it is fixed and reloaded (lessor policy reload, or SIGHUP)");
    if (status.killswitch.engaged)
      log.warn({ since: status.killswitch.at, by: status.killswitch.by, reason: status.killswitch.reason }, "the killswitch is engaged: no lease is granted until an admin runs lessor killswitch --release");
    log.info(
      { home, socket: socketPath, tcp, ...(vmSockets.length > 0 ? { vms: vmSockets } : {}), ...(s.vsockPort !== null ? { vsockPort: s.vsockPort } : {}), store: status.store, keySource: status.keySource, keyId: status.keyId, policyRules: status.policy.rules, version: VERSION },
      "lessor daemon ready",
    );
    let closing: Promise<void> | null = null;
    return {
      home,
      socketPath,
      tcp,
      vault,
      reloadPolicy: async () => {
        try {
          const r = await vault.session(RELOAD_IDENTITY).reloadPolicy();
          log.info({ rules: r.rules, digest: r.digest, version: (await vault.admin().describe()).policy.load }, "policy reloaded");
        } catch (e) {
          log.error({ err: withheldQuotes((e as Error).message) }, "policy reload failed: every grant is denied until the file is fixed and reloaded");
        }
      },
      close: () => {
        closing ??= cleanup().then(() => log.info({ home }, "lessor daemon stopped"));
        return closing;
      },
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
