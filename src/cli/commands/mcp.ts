/**
 * `lessor mcp [--agent A] [--http 127.0.0.1:PORT | --socket PATH | --vsock-port P]`: an MCP server on
 * stdio (or streamable HTTP on loopback: src/mcp/http.ts; or a socket / AF_VSOCK port for VM guests,
 * one session per connection: ../mcp-guests.ts) for an LLM agent, acting for agent A. The agent
 * works with names, leases and placeholders; `http_request` goes through an injecting proxy this
 * process runs, so a value never enters the model's context. See docs/mcp.md.
 */
import type { Command } from "commander";
import { VaultError } from "../../base/errors.js";
import type { LoopbackAddress } from "../../mcp/http.js";
import type { McpSession } from "../../mcp/server.js";
import type { Cli } from "../cli.js";
import { parseDuration } from "../../vault/duration.js";
import { holdLeases } from "../holding.js";
import { McpBackend } from "../mcp-backend.js";
import { addOptions, type OptionSpec } from "../option-spec.js";

/** `lessor mcp`'s options. */
export const MCP_OPTIONS: readonly OptionSpec[] = [
  {
    name: "agent",
    value: "<agent>",
    description: "the agent the server acts for (its grants apply); required unless the daemon (LESSOR_SOCKET / LESSOR_TOKEN_FILE) already knows this process as an agent, and then it must match, or --socket / --vsock-port map each guest to its agent (then it narrows them to this one)",
  },
  {
    name: "http",
    value: "<addr>",
    description: "serve streamable HTTP on this loopback address and port (127.0.0.1:PORT or [::1]:PORT; port 0 picks one) instead of stdio; clients must send the bearer token",
  },
  {
    name: "socket",
    value: "<path>",
    description: "serve on a Unix socket instead of stdio, one MCP session per connection: a [[vm]]'s <uds_path>_<port> serves that Firecracker VM as its agent; another path is a 0600 socket for --agent",
  },
  {
    name: "vsock-port",
    value: "<port>",
    description: "serve on this AF_VSOCK port (QEMU/vhost-vsock guests), one MCP session per connection, as the agent [[vsock]] maps the guest's CID to; other CIDs are refused",
  },
  {
    name: "terminal-approval",
    description: "never offer the approval page to the client (URL-mode elicitation): requests that need a person's approval are decided with lessor approve / lessor deny only",
  },
  {
    name: "idle-timeout",
    value: "<duration>",
    description: "with --http: end an MCP session that has had no request and no open stream for this long, revoking its leases (default 5m; from 1s to 24h)",
  },
  {
    name: "token-file",
    value: "<path>",
    description: "with --http: write the bearer token to this file (mode 0600) instead of printing it on stderr",
  },
];

/** `lessor mcp`'s parsed options. */
export interface McpCommandOptions {
  agent?: string | undefined;
  http?: string | undefined;
  tokenFile?: string | undefined;
  idleTimeout?: string | undefined;
  socket?: string | undefined;
  vsockPort?: string | undefined;
  terminalApproval?: boolean | undefined;
}

/**
 * Serves MCP on stdio (or as the options say) until the client closes it (or a stop signal). Resolves
 * to exit code 1 when a session's lease could not be revoked at its end (named on stderr).
 */
export function mcpAction(cli: Cli, o: McpCommandOptions): Promise<void> {
  return cli.run(async () => {
    if (o.tokenFile !== undefined && o.http === undefined) throw new VaultError("invalid_request", "--token-file goes with --http (over stdio and sockets there is no token)");
    if (o.idleTimeout !== undefined && o.http === undefined) throw new VaultError("invalid_request", "--idle-timeout goes with --http (over stdio and sockets a session ends when its connection closes)");
    const ways = [o.http !== undefined ? "--http" : "", o.socket !== undefined ? "--socket" : "", o.vsockPort !== undefined ? "--vsock-port" : ""].filter((w) => w !== "");
    if (ways.length > 1) throw new VaultError("invalid_request", `${ways.join(" and ")}: give one (or none, for stdio)`);
    if (o.socket !== undefined || o.vsockPort !== undefined) {
      const { serveMcpGuests } = await import("../mcp-guests.js");
      return serveMcpGuests(cli, o);
    }
    const [{ createMcpSession, serveStdio }, http, { resolveAgent }, { loadConfig }] = await Promise.all([
      import("../../mcp/server.js"),
      import("../../mcp/http.js"),
      import("../../mcp/identity.js"),
      import("../../config/load.js"),
    ]);
    // Refused before the vault is opened: a non-loopback address is never listened on.
    const address = o.http === undefined ? undefined : http.parseLoopbackAddress(o.http);
    const idleMs = o.idleTimeout === undefined ? undefined : idleTimeout(o.idleTimeout);
    const mcp = await McpBackend.open(cli);
    try {
      const backend = mcp.backend;
      const who = await backend.api.whoami();
      const identity = resolveAgent(o.agent, who.identity);
      const log = (line: string): void => cli.err(line);
      let proxyConfig;
      try {
        proxyConfig = loadConfig(backend.home).proxy;
      } catch (e) {
        // An agent reaching a daemon named by the environment may well not read the owner's home.
        if (backend.endpoint === null) throw e;
        const { DEFAULT_PROXY_CONFIG } = await import("../../config/proxy-config.js");
        proxyConfig = structuredClone(DEFAULT_PROXY_CONFIG);
        log(`lessor mcp: cannot read the [proxy] settings of ${backend.home}; using the defaults`);
      }
      // The sessions open now, so that a crash can still end them (their leases revoked).
      const open = new Set<McpSession>();
      const newSession = (): McpSession => {
        const s = createMcpSession({ api: backend.api, identity, proxyConfig, log, approvalPage: o.terminalApproval !== true, revoke: mcp.revoke });
        const close = s.close;
        s.close = () => {
          open.delete(s);
          return close();
        };
        open.add(s);
        return s;
      };
      const via = `${backend.mode === "daemon" ? `daemon${backend.endpoint ? ` ${backend.endpoint}` : ""}` : "vault in-process"}, as ${identity.role}`;
      // The session's leases are revoked when it ends: a closed stdout must not end the process first.
      const release = holdLeases(() => Promise.allSettled([...open].map((s) => s.close())));
      try {
        if (address === undefined) {
          log(`lessor mcp: serving agent ${JSON.stringify(identity.agent)} on stdio (${via})`);
          await serveStdio(newSession(), log);
        } else await serveOverHttp(newSession, address, o.tokenFile, idleMs, log, `agent ${JSON.stringify(identity.agent)} (${via})`);
      } finally {
        release();
      }
      // A lease a session could not revoke was named on stderr (lessor revoke <id>) when it ended.
      return mcp.exitCode;
    } finally {
      await mcp.close().catch(() => {});
    }
  });
}

/** `--idle-timeout`: a duration from 1 s to 24 h, in ms. */
function idleTimeout(text: string): number {
  let ms: number;
  try {
    ms = parseDuration(text);
  } catch {
    ms = NaN;
  }
  if (!(ms >= 1000 && ms <= 24 * 3600_000)) throw new VaultError("invalid_request", "--idle-timeout takes a duration from 1s to 24h, such as 5m or 1h");
  return ms;
}

/** Serves streamable HTTP until SIGINT/SIGTERM/SIGHUP; then ends the sessions, revoking their leases. */
async function serveOverHttp(newSession: () => McpSession, address: LoopbackAddress, tokenFile: string | undefined, idleMs: number | undefined, log: (line: string) => void, who: string): Promise<void> {
  const http = await import("../../mcp/http.js");
  const token = http.newToken();
  const server = await http.serveHttp({ newSession, address, token, log, ...(idleMs !== undefined ? { idleMs } : {}) });
  // Written once the server holds its address (and its twin's): a start refused leaves no token file.
  if (tokenFile !== undefined) {
    try {
      http.writeTokenFile(tokenFile, token);
    } catch (e) {
      await server.close();
      throw e;
    }
  }
  log(`lessor mcp: serving ${who} on ${server.url}`);
  // Shown once: whoever holds it acts as this agent (the MCP client's configuration needs it).
  log(tokenFile !== undefined ? `lessor mcp: the bearer token is in ${tokenFile}` : `lessor mcp: bearer token: ${token}`);
  let stop: () => void = () => {};
  const stopped = new Promise<void>((r) => (stop = r));
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  for (const s of signals) process.on(s, stop);
  try {
    await stopped;
  } finally {
    for (const s of signals) process.off(s, stop);
    await server.close();
  }
}

export function registerMcp(program: Command, cli: Cli): void {
  addOptions(
    program
      .command("mcp")
      .description("serve the Model Context Protocol (stdio, streamable HTTP on loopback with --http, or a socket / AF_VSOCK port for VM guests) for an LLM agent: secret names, leases, placeholders and HTTPS through the injecting proxy; never a value")
      .usage("[--agent A] [--http 127.0.0.1:PORT [--token-file PATH] [--idle-timeout D] | --socket PATH | --vsock-port P]"),
    MCP_OPTIONS,
  )
    .addHelpText(
      "after",
      [
        "",
        "Tools: list_secrets, explain_access, request_access, http_request, revoke, list_leases.",
        "",
        "Examples (the command an MCP client starts):",
        "  lessor mcp --agent claude",
        "  LESSOR_SOCKET=/run/lessor/agent.sock lessor mcp      # the daemon says which agent",
        "  lessor mcp --agent claude --http 127.0.0.1:8765 --token-file ~/.lessor/mcp.token [--idle-timeout 15m]",
        "  lessor mcp --socket /run/fc/vm1.vsock_5000     # Firecracker VM vm1 ([[vm]]): in the guest, socat - VSOCK-CONNECT:2:5000",
        "  lessor mcp --vsock-port 5000                   # QEMU guests by CID ([[vsock]])",
        "",
        "stdout carries the protocol; one line per tool call goes to stderr. The leases the session",
        "took are revoked when the client closes the connection; one that cannot be is named on stderr",
        "(lessor revoke <id>) and lessor mcp exits 1. See docs/mcp.md.",
      ].join("\n"),
    )
    .action((o: McpCommandOptions) => mcpAction(cli, o));
}
