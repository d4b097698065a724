/**
 * `lessor mcp --socket PATH` and `lessor mcp --vsock-port P`: the MCP server for VM guests (and other
 * clients that connect to a socket), one MCP session per connection (src/mcp/stream.ts), each acting
 * for the agent the connection's socket or peer CID maps to (src/cli/guest-gate.ts):
 *
 * - `--socket <uds_path>_<P>` of a `[[vm]]` (Firecracker): that VM's agent (`--agent` may repeat it;
 *   for an orchestrator VM it names an agent the VM's act_for covers);
 * - `--socket PATH` that is no VM's: a 0600 socket for `--agent` (or the daemon's agent);
 * - `--vsock-port P`: each peer CID's `[[vsock]]` agent; CIDs without an entry, or mapped to an agent
 *   other than `--agent` when it is given, are refused and counted.
 *
 * The approval page is never offered here: it is on the host's loopback, which a guest cannot reach;
 * approvals are decided on the host (`lessor approve`).
 */
import { resolve } from "node:path";
import { VaultError } from "../base/errors.js";
import type { ProxyConfig } from "../config/proxy-config.js";
import type { VmConfig, VsockGuest } from "../config/vm-config.js";
import { resolveAgent, type McpIdentity } from "../mcp/identity.js";
import { createMcpSession } from "../mcp/server.js";
import { refuseMcpStream, StreamSessions } from "../mcp/stream.js";
import type { Cli } from "./cli.js";
import { GuestGate, guestSourceOf, listenGuests, preflightGuests, type GuestSource } from "./guest-gate.js";
import { holdLeases } from "./holding.js";
import { McpBackend } from "./mcp-backend.js";

/** Most MCP sessions open at once from one guest, and in all. */
export const MAX_GUEST_SESSIONS = 8;
export const MAX_STREAM_SESSIONS = 32;

/** What {@link serveMcpGuests} needs from `lessor mcp`'s options. */
export interface McpGuestOptions {
  agent?: string | undefined;
  socket?: string | undefined;
  vsockPort?: string | undefined;
}

/**
 * Serves MCP on a socket or an AF_VSOCK port until SIGINT/SIGTERM/SIGHUP; then ends every session.
 * Resolves to the exit code: 1 when a session's lease could not be revoked at its end.
 */
export async function serveMcpGuests(cli: Cli, o: McpGuestOptions): Promise<number> {
  const mcp = await McpBackend.open(cli);
  try {
    return await serveGuests(cli, o, mcp);
  } finally {
    await mcp.close().catch(() => {});
  }
}

async function serveGuests(cli: Cli, o: McpGuestOptions, mcp: McpBackend): Promise<number> {
  const log = (line: string): void => cli.err(line);
  const backend = mcp.backend;
  const who = (await backend.api.whoami()).identity;
  const { proxy, vms, vsockGuests } = await readConfig(backend.home, o.vsockPort !== undefined ? `--vsock-port ${o.vsockPort}` : `--socket ${o.socket!}`);
  const source: GuestSource = guestSourceOf(o, { vms, vsockGuests }, backend.home) ?? { kind: "socket", path: resolve(o.socket!), agent: resolveAgent(o.agent, who).agent };
  const identities = new Map<string, McpIdentity>();
  const sessions = new StreamSessions({ log, newSession: (identity) => createMcpSession({ api: backend.api, identity, proxyConfig: proxy, log, approvalPage: false, revoke: mcp.revoke }) });
  const gate = new GuestGate(source, {
    what: "lessor mcp",
    agent: o.agent,
    // May this process act for the agent (a daemon that knows it as another agent says no)?
    check: (agent) => {
      try {
        identities.set(agent, resolveAgent(agent, who));
        return null;
      } catch (e) {
        return e instanceof Error ? e.message : String(e);
      }
    },
    onGuest: (stream, guest) => void sessions.serve(stream, identities.get(guest.agent)!, guest.principal),
    refuse: refuseMcpStream,
    log,
    maxPerGuest: MAX_GUEST_SESSIONS,
    maxTotal: MAX_STREAM_SESSIONS,
  });
  // On a bug (an error nothing catches) the entry closes the open sessions, which revokes their leases.
  const release = holdLeases(async () => sessions.close());
  let stop: () => void = () => {};
  const stopped = new Promise<void>((r) => (stop = r));
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  for (const s of signals) process.on(s, stop);
  try {
    const door = await listenGuests(source, gate, preflightGuests(source));
    const via = `${backend.mode === "daemon" ? `daemon${backend.endpoint ? ` ${backend.endpoint}` : ""}` : "vault in-process"}, as ${who.role}`;
    log(`lessor mcp: serving ${door.where} (${via}); one MCP session per connection, for ${gate.agent !== null ? `agent ${JSON.stringify(gate.agent)}` : "the agent of each guest CID"}`);
    try {
      await stopped;
    } finally {
      gate.close();
      door.close();
      await sessions.close();
      if (gate.refused > 0) log(`lessor mcp: ${gate.refused} connection(s) were refused`);
    }
  } finally {
    for (const s of signals) process.off(s, stop);
    release();
  }
  // A lease a session could not revoke was named on stderr (lessor revoke <id>) when it ended.
  return mcp.exitCode;
}

/**
 * The home's `[proxy]`, `[[vm]]` and `[[vsock]]` settings. There is no fallback: without the `[[vm]]`
 * entries a VM's socket would pass for a plain one, served as `--agent` rather than as the VM's agent,
 * so a configuration that cannot be read or parsed stops the command (`flag` names the one given).
 */
async function readConfig(home: string, flag: string): Promise<{ proxy: ProxyConfig; vms: VmConfig[]; vsockGuests: VsockGuest[] }> {
  const { loadConfig } = await import("../config/load.js");
  try {
    const c = loadConfig(home);
    return { proxy: c.proxy, vms: c.vms, vsockGuests: c.vsockGuests };
  } catch (e) {
    if (!(e instanceof VaultError)) throw e;
    throw new VaultError(
      e.code,
      `${flag}: lessor mcp needs the [[vm]] and [[vsock]] entries of lessor.toml to tell which agent each guest is, and cannot use those of ${home}: ${e.message}. Fix lessor.toml (lessor serve refuses it too), or point LESSOR_HOME at a home whose lessor.toml you can read`,
    );
  }
}
