/**
 * `lessor proxy`: lessor run's injecting proxy (./proxy.ts) for an agent that runs elsewhere — in a VM
 * or a container — and is pointed at the proxy. The secrets are named as for `lessor run` (references
 * in the environment and in env files), leased through the same LeaseBook, and rendered as
 * placeholders (./placeholders.ts); the values stay in this process.
 *
 * It prints (or writes to --env-out, 0600) the agent's environment: the variables that held
 * references, now with placeholders; HTTPS_PROXY and friends with the session's credentials; the CA
 * file paths. Then it serves until SIGINT, SIGTERM or SIGHUP, stops the proxy, revokes the leases,
 * removes the files it wrote, and exits 0.
 *
 * Clients authenticate with a random per-session token (src/proxy/proxy-auth.ts), on a socket too:
 * a socket is usually forwarded into the VM or container as a TCP port again, where every user there
 * could reach it.
 */
import { lstatSync, unlinkSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import type { Duplex } from "node:stream";
import { VaultError } from "../../base/errors.js";
import { EGRESS_MODES, type EgressMode } from "../../config/proxy-config.js";
import { resolveHome } from "../../config/home.js";
import { loadConfig } from "../../config/load.js";
import { writeFileAtomic } from "../../fs/atomic-file.js";
import { newProxyToken, proxyUrl } from "../../proxy/proxy-auth.js";
import { BRIDGE_PORT } from "../../sandbox/bridge.js";
import { UsageError, type Cli } from "../cli.js";
import { EXIT } from "../exit-codes.js";
import { baseEnv, resolveEnv, scanEnv } from "./child-env.js";
import { LeaseBook } from "./leases.js";
import { Connection, revokeLeases } from "./connection.js";
import { RunCredentials } from "./placeholders.js";
import { caBundle, startRunProxy, type ProxyView, type RunProxy } from "./proxy.js";
import { checkSocketDir, parseListen, type ProxyListen } from "./proxy-listen.js";
import { Interrupted, signalExitCode, StopSignals } from "./signals.js";
import { holdLeases } from "../holding.js";
import { GuestGate, guestSourceOf, listenGuests, preflightGuests, type GuestListener } from "../guest-gate.js";

/** Options of {@link serveProxy}. */
export interface ServeProxyOptions {
  agent: string;
  envFiles: string[];
  domains: string[];
  ttl?: string;
  /** --listen HOST:PORT (loopback only; default 127.0.0.1:0, a free port). */
  listen?: string;
  /** --socket PATH instead of a TCP port (a `[[vm]]`'s `<uds_path>_<P>`: that VM's guests only). */
  socket?: string;
  /** --vsock-port P: AF_VSOCK, for the guest CIDs `[[vsock]]` maps to the agent. */
  vsockPort?: string;
  /** --egress strict|open (default: `[proxy] egress`). */
  egress?: string;
  /** --env-out FILE: write the agent's environment there (0600) instead of stdout. */
  envOut?: string;
}

/** Why the proxy's leases are revoked, in the audit. */
const REASON = "lessor proxy ended";

/** A file this command wrote, removed at the end only if it is still that file. */
interface Written {
  path: string;
  dev: number;
  ino: number;
}

function written(path: string): Written {
  const st = lstatSync(path);
  return { path, dev: st.dev, ino: st.ino };
}

function removeWritten(f: Written): void {
  try {
    const st = lstatSync(f.path);
    if (st.dev === f.dev && st.ino === f.ino) unlinkSync(f.path);
  } catch {
    // gone already, or replaced: not ours to remove
  }
}

function parseEgress(text: string | undefined, fallback: EgressMode): EgressMode {
  if (text === undefined) return fallback;
  if (!(EGRESS_MODES as readonly string[]).includes(text)) throw new UsageError(`--egress ${JSON.stringify(text)}: expected strict (hosts no lease covers are refused) or open (tunnelled untouched)`);
  return text as EgressMode;
}

/** An environment line: `KEY=VALUE`, as docker's and systemd's env files and lessor's --env-file read it. */
function envLine(key: string, value: string): string {
  return `${key}=${value}`;
}

/**
 * Checks that a variable can go on one line of an env file as it is (docker reads values literally,
 * without quotes or escapes): no control character, no leading or trailing white space.
 */
function assertOneLine(key: string, value: string, from: string): void {
  if (/[\x00-\x1f\x7f]/.test(value) || value !== value.trim())
    throw new UsageError(`$${key} (from ${from}) has a control character or surrounding white space, which an env file line cannot carry as it is; remove them`);
}

/** Answers a refused guest with a 403 before its connection is closed. */
function refuseHttp(stream: Duplex, message: string): void {
  const body = `${message}\n`;
  stream.write(`HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

/** Runs `lessor proxy`; resolves with the exit code. */
export async function serveProxy(cli: Cli, o: ServeProxyOptions): Promise<number> {
  const flags = [o.listen !== undefined ? "--listen" : "", o.socket !== undefined ? "--socket" : "", o.vsockPort !== undefined ? "--vsock-port" : ""].filter((f) => f !== "");
  if (flags.length > 1) throw new UsageError(`${flags.join(" and ")}: give one (a loopback TCP address, a Unix socket path, or an AF_VSOCK port)`);
  const home = resolveHome(cli.home, process.env);
  const full = loadConfig(home);
  const config = full.proxy;
  // A VM's socket or an AF_VSOCK port: each connection is let through only for a guest mapped to this agent.
  const guests = guestSourceOf(o, full, home);
  const gate = guests === null ? null : new GuestGate(guests, { what: "lessor proxy", agent: o.agent, onGuest: (s) => (proxy ? proxy.accept(s) : s.destroy()), refuse: refuseHttp, log: (l) => cli.err(l) });
  const addons = guests === null ? {} : preflightGuests(guests);
  const listen: ProxyListen = guests !== null ? { guests: true } : o.socket !== undefined ? { socket: o.socket } : parseListen(o.listen ?? "127.0.0.1:0");
  if (o.socket !== undefined) checkSocketDir(o.socket);
  const egress = parseEgress(o.egress, config.egress);
  const vars = baseEnv(process.env, o.envFiles);
  const found = scanEnv(vars);
  if (found.length === 0)
    throw new UsageError("no variable in the environment or the env files refers to a secret, so the proxy would add no credential; name them as for lessor run, e.g. GITHUB_TOKEN='$S:github-token' lessor proxy --agent claude");
  for (const f of found) assertOneLine(f.key, f.v.value, f.v.from);

  const stop = new StopSignals();
  // stdout closing after the environment was printed (| head) must not end the proxy unrevoked.
  const release = holdLeases(async () => {
    for (const f of files) removeWritten(f);
    if (book) await revokeLeases(cli, conn, book, REASON, "this proxy");
  });
  const abort = (): void => {
    if (stop.first) throw new Interrupted(stop.first);
  };
  // The proxy asks the vault through it for as long as it serves: it reconnects after a daemon restart.
  const conn = new Connection(cli, undefined, { longLived: true });
  let book: LeaseBook | null = null;
  let creds: RunCredentials | null = null;
  let proxy: RunProxy | null = null;
  let door: GuestListener | null = null;
  const files: Written[] = [];
  let code: number = EXIT.ok;
  let failed = 0;
  try {
    const backend = await conn.open();
    abort();
    book = new LeaseBook(backend.api, { agent: o.agent, domains: o.domains, ...(o.ttl !== undefined ? { ttl: o.ttl } : {}), via: "proxy" });
    creds = new RunCredentials(o.agent, book, config.inject);
    let resolved;
    try {
      resolved = await resolveEnv(vars, found, book, abort, creds.render);
    } catch (e) {
      if (e instanceof VaultError) throw new VaultError(e.code, `${e.message}. The proxy was not started.`);
      throw e;
    }
    // The agent gets placeholders; this process keeps only the proxy's credentials (no output to mask).
    for (const m of resolved.masks) m.value.fill(0);
    book.wipe();
    const token = newProxyToken();
    proxy = await startRunProxy({ config: { ...config, egress }, api: backend.api, agent: o.agent, credentials: creds.credentials, warn: (line) => cli.err(line), listen, token });
    if (guests !== null && gate !== null) door = await listenGuests(guests, gate, addons);
    abort();

    const view = agentView(proxy, token, o.envOut, files);
    const lines = found.map((f) => envLine(f.key, resolved.env[f.key]!));
    for (const [k, v] of Object.entries(proxy.childEnv({}, view))) lines.push(envLine(k, v));
    const text = lines.join("\n") + "\n";
    if (o.envOut !== undefined) {
      const out = resolve(o.envOut);
      writeFileAtomic(out, text, 0o600);
      files.push(written(out));
    } else cli.stdout.write(text);
    const at = door !== null ? `${door.where} (the printed HTTPS_PROXY assumes the guest forwards 127.0.0.1:${BRIDGE_PORT} to it)` : "socket" in proxy.address ? `the Unix socket ${proxy.address.socket} (the printed HTTPS_PROXY assumes the agent reaches it at 127.0.0.1:${BRIDGE_PORT})` : `${view.url.replace(/\/\/[^@]*@/, "//")}`;
    cli.err(
      `lessor: proxy for agent ${o.agent} on ${at}: ${book.leases.length} lease(s), egress ${egress}${proxy.caPem ? `, CA ${view.caFile}` : ""}${o.envOut !== undefined ? `; the agent's environment is in ${resolve(o.envOut)}` : ""}. Stop it with Ctrl-C or SIGTERM.`,
    );
    const signal = await stop.stopped;
    cli.err(`lessor: ${signal}: stopping the proxy and revoking its leases`);
  } catch (e) {
    if (!(e instanceof Interrupted)) throw e;
    cli.err(`lessor: stopped by ${e.signal} before the proxy served; the leases taken so far are revoked`);
    code = signalExitCode(e.signal);
  } finally {
    // Guests are shut out, the proxy stops (its last audit reports written), then the leases end.
    gate?.close();
    door?.close();
    if (gate !== null && gate.refused > 0) cli.err(`lessor: ${gate.refused} guest connection(s) were refused`);
    await proxy?.close();
    creds?.wipe();
    for (const f of files) removeWritten(f);
    failed = book ? (await revokeLeases(cli, conn, book, REASON, "this proxy")).length : 0;
    await conn.close();
    stop.dispose();
    release();
  }
  return failed > 0 && code === EXIT.ok ? EXIT.error : code;
}

/**
 * Where the agent finds the proxy and the CA: the loopback URL with the session's credentials (the
 * bridge's port for a socket), and the CA files — next to --env-out when given (mode 0644: they are
 * public, and a container's user must read them), else in the proxy's private directory.
 */
function agentView(proxy: RunProxy, token: string, envOut: string | undefined, files: Written[]): ProxyView {
  const a = proxy.address;
  const url = "host" in a ? proxyUrl(token, a.host, a.port) : proxyUrl(token, "127.0.0.1", BRIDGE_PORT);
  if (envOut === undefined || proxy.caPem === null) return { url, caFile: join(proxy.dir, "ca.pem"), bundleFile: join(proxy.dir, "ca-bundle.pem") };
  const out = resolve(envOut);
  const caFile = join(dirname(out), `${basename(out)}.ca.pem`);
  const bundleFile = join(dirname(out), `${basename(out)}.ca-bundle.pem`);
  writeFileAtomic(caFile, proxy.caPem, 0o644);
  files.push(written(caFile));
  writeFileAtomic(bundleFile, caBundle(proxy.caPem), 0o644);
  files.push(written(bundleFile));
  return { url, caFile, bundleFile };
}
