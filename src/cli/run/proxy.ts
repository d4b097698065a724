/**
 * `lessor run`'s injecting proxy (docs/proxy.md): a session CA, the SSRF guard, the lease-backed egress
 * policy and the forward proxy, listening on a Unix socket in a private directory that the sandbox
 * shows at /run/lessor (src/sandbox/bridge.ts). Also the child's environment for it: the proxy
 * variables and the CA bundle paths that curl, git, Node and Python read.
 *
 * `lessor proxy` (src/cli/run/serve-proxy.ts) starts the same proxy for an agent that runs elsewhere:
 * listening on a loopback port or a socket path it names (./proxy-listen.ts), requiring a session
 * token from its clients, and with the environment pointing at those real places.
 */
import { closeSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import { rootCertificates } from "node:tls";
import { VaultError } from "../../base/errors.js";
import type { BackendApi } from "../../backend/backend.js";
import type { ProxyConfig } from "../../config/proxy-config.js";
import { LocalCa } from "../../proxy/ca.js";
import { ForwardProxy } from "../../proxy/forward.js";
import { basicProxyAuth } from "../../proxy/proxy-auth.js";
import { SsrfGuard } from "../../proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../../proxy/lease-egress.js";
import { BRIDGE_PORT, PROXY_SOCKET_NAME, SANDBOX_PROXY_DIR } from "../../sandbox/bridge.js";
import { bindPrivateSocket, type BoundSocket, type ProxyListen } from "./proxy-listen.js";
import { readUpstreamCa, resolverWith } from "../../proxy/upstream-settings.js";
import { makePrivateDir } from "../../proxy/private-dir.js";

/** The system's CA bundle, where Debian, Fedora and Alpine keep it. */
const SYSTEM_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/** How the agent reaches the proxy: the proxy URL and the CA files, as the agent sees them. */
export interface ProxyView {
  /** The HTTPS_PROXY value (with the session's credentials when there is a token). */
  url: string;
  /** The session CA certificate alone (NODE_EXTRA_CA_CERTS). */
  caFile: string;
  /** The session CA then the system's roots (SSL_CERT_FILE, CURL_CA_BUNDLE, …). */
  bundleFile: string;
}

/** A running proxy for one run. */
export interface RunProxy {
  /** The private directory (socket, CA files) to show in the sandbox at {@link SANDBOX_PROXY_DIR}. */
  dir: string;
  /**
   * Where it listens: the loopback address and port, the socket path, or nowhere (guests: connections
   * handed over) or not yet (adopt: on the socket {@link RunProxy.adopt} is given).
   */
  address: { host: string; port: number } | { socket: string } | { guests: true } | { adopt: true };
  /** Serves a connection accepted elsewhere (a VM guest's, let through by src/cli/guest-gate.ts). */
  accept(socket: Duplex): void;
  /**
   * Accepts on `fd`, a listening socket (the sandbox's native bridge's, on 127.0.0.1 in the sandbox's
   * network namespace), which the proxy owns from now on: closed with it, or at once if it is closed.
   */
  adopt(fd: number): void;
  /** The session CA's certificate (public), or null when no lease covers a host (nothing is intercepted). */
  caPem: string | null;
  /**
   * `env` with the proxy variables and CA bundle paths added: as the sandbox sees them (the bridge's
   * port, {@link SANDBOX_PROXY_DIR}), or as `view` says.
   */
  childEnv(env: Record<string, string>, view?: ProxyView): Record<string, string>;
  /** Stops the proxy (closing every tunnel), waits for its audit reports, removes the directory. */
  close(): Promise<void>;
}

/** Options of {@link startRunProxy}. */
export interface RunProxyOptions {
  config: ProxyConfig;
  api: BackendApi | null;
  agent: string;
  credentials: ProxyCredential[];
  /** Says one line on stderr (alarms, audit failures). */
  warn(line: string): void;
  /** Where the run's private directory is made (default: /tmp, where no sandbox shows it: src/proxy/private-dir.ts). */
  tmp?: string;
  /** Where to listen (default: a socket in the private directory, for the sandbox's Node bridge). */
  listen?: ProxyListen;
  /** When given, clients must send `Proxy-Authorization: Basic base64("lessor:" + token)` (src/proxy/proxy-auth.ts). */
  token?: string;
}

/** The CA bundle for the child: the session CA, then the system's roots (for hosts tunnelled untouched). */
export function caBundle(caPem: string): string {
  for (const f of SYSTEM_BUNDLES)
    if (existsSync(f)) {
      try {
        return `${caPem.trim()}\n${readFileSync(f, "utf8")}`;
      } catch {
        // unreadable: fall through to Node's roots
      }
    }
  return [caPem.trim(), ...rootCertificates].join("\n") + "\n";
}

/** What the sandboxed child sees: the bridge's port and the directory shown at {@link SANDBOX_PROXY_DIR}. */
const SANDBOX_VIEW: ProxyView = { url: `http://127.0.0.1:${BRIDGE_PORT}`, caFile: `${SANDBOX_PROXY_DIR}/ca.pem`, bundleFile: `${SANDBOX_PROXY_DIR}/ca-bundle.pem` };

/** The child's variables for the proxy: every spelling tools read, and git's own settings. */
function childEnv(withCa: boolean, parentGitCount: string | undefined, view: ProxyView): Record<string, string> {
  const proxy = view.url;
  const env: Record<string, string> = {
    HTTPS_PROXY: proxy,
    HTTP_PROXY: proxy,
    https_proxy: proxy,
    http_proxy: proxy,
    ALL_PROXY: proxy,
    NO_PROXY: "localhost,127.0.0.1,::1",
    no_proxy: "localhost,127.0.0.1,::1",
  };
  // git reads http.proxy and http.sslCAInfo from GIT_CONFIG_* (git 2.31+), after any the parent set.
  const start = Number.isSafeInteger(Number(parentGitCount)) && Number(parentGitCount) > 0 ? Number(parentGitCount) : 0;
  const git: [string, string][] = [["http.proxy", proxy]];
  if (withCa) {
    const { caFile, bundleFile } = view;
    Object.assign(env, {
      NODE_EXTRA_CA_CERTS: caFile,
      SSL_CERT_FILE: bundleFile,
      REQUESTS_CA_BUNDLE: bundleFile,
      CURL_CA_BUNDLE: bundleFile,
      GIT_SSL_CAINFO: bundleFile,
    });
    git.push(["http.sslCAInfo", bundleFile]);
  }
  git.forEach(([k, v], i) => {
    env[`GIT_CONFIG_KEY_${start + i}`] = k;
    env[`GIT_CONFIG_VALUE_${start + i}`] = v;
  });
  env["GIT_CONFIG_COUNT"] = String(start + git.length);
  return env;
}

/**
 * Starts the run's proxy: the CA names only the hosts the leases cover (its name constraints), the
 * guard applies `[proxy]` ports, allow and hosts, and the egress policy is the leases'.
 */
export async function startRunProxy(o: RunProxyOptions): Promise<RunProxy> {
  // Under /tmp, not $TMPDIR: a place no other run's sandbox shows (src/proxy/private-dir.ts).
  const dir = o.tmp !== undefined ? mkdtempSync(join(o.tmp, "lessor-run-")) : makePrivateDir("lessor-run-"); // mode 0700
  let proxy: ForwardProxy | null = null;
  let egress: LeaseEgress | null = null;
  let ca: LocalCa | null = null;
  let socket: BoundSocket | null = null;
  let address: RunProxy["address"];
  try {
    const hosts = [...new Set(o.credentials.flatMap((c) => c.lease.domains))];
    ca = hosts.length > 0 ? LocalCa.create({ permitted: hosts }) : null;
    if (ca) {
      writeFileSync(join(dir, "ca.pem"), ca.certPem, { mode: 0o644 });
      writeFileSync(join(dir, "ca-bundle.pem"), caBundle(ca.certPem), { mode: 0o644 });
    }
    if (o.credentials.length > 0 && o.api === null) throw new VaultError("internal", "the run's proxy has credentials but no vault to check them with");
    egress = new LeaseEgress({ api: o.api as BackendApi, agent: o.agent, credentials: o.credentials, egress: o.config.egress, warn: o.warn });
    const guard = new SsrfGuard({ ports: o.config.ports, allow: o.config.allow, resolve: resolverWith(o.config.hosts) });
    const extraCa = readUpstreamCa(o.config.upstreamCa);
    proxy = new ForwardProxy({
      egress,
      // Without credentials nothing is intercepted; the CA is still needed by the type.
      ca: ca ?? LocalCa.create({ permitted: ["lessor.invalid"] }),
      guard,
      ...(extraCa !== undefined ? { upstreamCa: extraCa } : {}),
      ...(o.token !== undefined ? { authorize: basicProxyAuth(o.token) } : {}),
    });
    const at = o.listen;
    if (at === undefined) {
      await proxy.listenUnix(join(dir, PROXY_SOCKET_NAME));
      address = { socket: join(dir, PROXY_SOCKET_NAME) };
    } else if ("socket" in at) {
      socket = await bindPrivateSocket(proxy.server, at.socket);
      address = { socket: socket.path };
    } else if ("guests" in at) address = { guests: true };
    else if ("adopt" in at) address = { adopt: true };
    else address = { host: at.host, port: await proxy.listen(at.port, at.host) };
    egress.start();
  } catch (e) {
    await proxy?.close().catch(() => {});
    socket?.remove();
    await egress?.close();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const p = proxy;
  const eg = egress;
  const withCa = ca !== null;
  const sock = socket;
  const addr = address;
  let closing: Promise<void> | null = null;
  return {
    dir,
    address: addr,
    caPem: ca?.certPem ?? null,
    childEnv: (env, view = SANDBOX_VIEW) => ({ ...env, ...childEnv(withCa, env["GIT_CONFIG_COUNT"], view) }),
    accept: (s) => p.accept(s),
    adopt: (fd) => {
      if (closing !== null || p.server.listening) {
        closeSync(fd);
        return;
      }
      p.server.once("error", (e) => o.warn(`lessor: the run's proxy cannot accept on the sandbox's bridge (${e.message}); the agent cannot reach it`));
      p.server.listen({ fd });
    },
    close: () =>
      (closing ??= (async () => {
        await p.close().catch(() => {});
        sock?.remove();
        await eg.close();
        rmSync(dir, { recursive: true, force: true });
      })()),
  };
}
