/**
 * The injecting proxy an MCP session runs in-process for `http_request`: the same pieces as
 * `lessor run`'s (src/cli/run/proxy.ts; docs/proxy.md) — a session CA whose name constraints allow only
 * the hosts the leases cover, the SSRF guard with `[proxy]` ports, allow and hosts, the lease-backed
 * egress policy (one vault access per request, audited as proxy_request; scrubbed responses; the
 * tripwire) and the forward proxy — listening on a Unix socket in a private directory (0700) that only
 * this process uses.
 *
 * The egress policy and the CA are built for a fixed set of leases, and `request_access` and `revoke`
 * change that set: so the proxy is rebuilt for the new set on the next request, and the old one
 * closes once the requests still using it have finished.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";
import { VaultError } from "../base/errors.js";
import type { BackendApi } from "../backend/backend.js";
import type { ProxyConfig } from "../config/proxy-config.js";
import { LocalCa } from "../proxy/ca.js";
import { ForwardProxy } from "../proxy/forward.js";
import { SsrfGuard } from "../proxy/guard.js";
import { LeaseEgress } from "../proxy/lease-egress.js";
import { makePrivateDir } from "../proxy/private-dir.js";
import type { SessionCredentials } from "./credentials.js";
import { readUpstreamCa, resolverWith } from "../proxy/upstream-settings.js";

/** Where a running proxy is, for one request. */
export interface ProxyLease {
  socket: string;
  /** The session CA (PEM) the request must trust for intercepted hosts. */
  caPem: string;
  /** Says the request is over (the proxy may close if it was replaced). */
  release(): void;
}

interface Running {
  generation: number;
  dir: string;
  socket: string;
  caPem: string;
  proxy: ForwardProxy;
  egress: LeaseEgress;
  users: number;
  retired: boolean;
}

/** Options of {@link SessionProxy}. */
export interface SessionProxyOptions {
  api: BackendApi;
  agent: string;
  config: ProxyConfig;
  credentials: SessionCredentials;
  /** One line on stderr (alarms, audit failures); never a credential. */
  warn(line: string): void;
  /** Where the private directory is made (default: /tmp, where no run's sandbox shows it: src/proxy/private-dir.ts). */
  tmp?: string;
}

/** The session's proxy, built on demand for the current set of leases. */
export class SessionProxy {
  readonly #o: SessionProxyOptions;
  readonly #upstreamCa: string | undefined;
  readonly #guard: SsrfGuard;
  #current: Running | null = null;
  #starting: Promise<Running> | null = null;
  readonly #all = new Set<Running>();
  #closed = false;

  constructor(o: SessionProxyOptions) {
    this.#o = o;
    this.#upstreamCa = readUpstreamCa(o.config.upstreamCa);
    this.#guard = new SsrfGuard({ ports: o.config.ports, allow: o.config.allow, resolve: resolverWith(o.config.hosts) });
  }

  /**
   * Refuses an IP-literal target the SSRF guard refuses (a metadata, private or loopback address not
   * allowed, a port not on the list) before anything is sent: the proxy asks its egress policy first
   * for a literal in standard form, and an address must be refused as such, not as merely uncovered.
   * A name is left to the proxy, which refuses an uncovered name before resolving it.
   */
  async checkLiteral(host: string, port: number): Promise<void> {
    if (isIP(host) !== 0) await this.#guard.check(host, port);
  }

  /** A proxy for the current leases, held until `release`. */
  async acquire(): Promise<ProxyLease> {
    if (this.#closed) throw new VaultError("unavailable", "the MCP session is closing");
    const gen = this.#o.credentials.generation;
    let r = this.#current;
    if (r === null || r.generation !== gen) {
      if (r !== null) this.#retire(r);
      this.#current = null;
      this.#starting ??= this.#start(gen).finally(() => (this.#starting = null));
      r = await this.#starting;
      // Another change landed while it started: use it anyway (it covers what the request was sent with).
      this.#current = r;
    }
    const held = r;
    held.users++;
    let released = false;
    return {
      socket: held.socket,
      caPem: held.caPem,
      release: () => {
        if (released) return;
        released = true;
        held.users--;
        if (held.retired && held.users === 0) void this.#stop(held);
      },
    };
  }

  /** Stops every proxy (their last audit reports written) and removes their directories. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#starting?.catch(() => {});
    await Promise.all([...this.#all].map((r) => this.#stop(r)));
  }

  #retire(r: Running): void {
    r.retired = true;
    if (r.users === 0) void this.#stop(r);
  }

  async #start(generation: number): Promise<Running> {
    const o = this.#o;
    const creds = o.credentials.credentials;
    // Under /tmp, not $TMPDIR: a place no run's sandbox shows (src/proxy/private-dir.ts); the socket takes no token.
    const dir = o.tmp !== undefined ? mkdtempSync(join(o.tmp, "lessor-mcp-")) : makePrivateDir("lessor-mcp-"); // mode 0700
    let proxy: ForwardProxy | null = null;
    let egress: LeaseEgress | null = null;
    try {
      const hosts = [...new Set(creds.flatMap((c) => c.lease.domains))];
      // Without a covered host nothing is intercepted; the CA is still needed by the type.
      const ca = LocalCa.create({ permitted: hosts.length > 0 ? hosts : ["lessor.invalid"] });
      // Strict egress whatever [proxy] egress says: http_request exists to use the agent's leases, and
      // an uncovered host tunnelled untouched would be a request lessor cannot scrub or audit by lease.
      egress = new LeaseEgress({ api: o.api, agent: o.agent, credentials: creds, egress: "strict", warn: o.warn, onValue: (id, v) => o.credentials.rotated(id, v) });
      proxy = new ForwardProxy({ egress, ca, guard: this.#guard, ...(this.#upstreamCa !== undefined ? { upstreamCa: this.#upstreamCa } : {}) });
      const socket = join(dir, "proxy.sock");
      await proxy.listenUnix(socket);
      egress.start();
      const r: Running = { generation, dir, socket, caPem: ca.certPem, proxy, egress, users: 0, retired: false };
      this.#all.add(r);
      return r;
    } catch (e) {
      await proxy?.close().catch(() => {});
      await egress?.close();
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
  }

  async #stop(r: Running): Promise<void> {
    if (!this.#all.delete(r)) return;
    await r.proxy.close().catch(() => {});
    await r.egress.close();
    rmSync(r.dir, { recursive: true, force: true });
  }
}
