/**
 * `lessor mcp [--agent A]`: an MCP server on stdio for an LLM agent, acting for agent A. The agent
 * works with names, leases and placeholders; `http_request` goes through an injecting proxy this
 * process runs, so a value never enters the model's context. See docs/mcp.md.
 */
import type { Command } from "commander";
import type { Cli } from "../cli.js";
import { holdLeases } from "../holding.js";
import { addOptions, type OptionSpec } from "../option-spec.js";

/** `lessor mcp`'s options. */
export const MCP_OPTIONS: readonly OptionSpec[] = [
  {
    name: "agent",
    value: "<agent>",
    description: "the agent the server acts for (its grants apply); required unless the daemon (LESSOR_SOCKET / LESSOR_TOKEN_FILE) already knows this process as an agent, and then it must match",
  },
];

/** `lessor mcp`'s parsed options. */
export interface McpCommandOptions {
  agent?: string | undefined;
}

/** Serves MCP on stdio until the client closes it. */
export function mcpAction(cli: Cli, o: McpCommandOptions): Promise<void> {
  return cli.run(async () => {
    const [{ createMcpSession, serveStdio }, { resolveAgent }, { loadConfig }] = await Promise.all([
      import("../../mcp/server.js"),
      import("../../mcp/identity.js"),
      import("../../config/load.js"),
    ]);
    const backend = await cli.backend();
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
    const session = createMcpSession({ api: backend.api, identity, proxyConfig, log });
    log(`lessor mcp: serving agent ${JSON.stringify(identity.agent)} on stdio (${backend.mode === "daemon" ? `daemon${backend.endpoint ? ` ${backend.endpoint}` : ""}` : "vault in-process"}, as ${identity.role})`);
    // The session's leases are revoked when it ends: a closed stdout must not end the process first.
    const release = holdLeases();
    try {
      await serveStdio(session, log);
    } finally {
      release();
    }
  });
}

export function registerMcp(program: Command, cli: Cli): void {
  addOptions(
    program
      .command("mcp")
      .description("serve the Model Context Protocol on stdio for an LLM agent: secret names, leases, placeholders and HTTPS through the injecting proxy; never a value")
      .usage("[--agent A]"),
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
        "",
        "stdout carries the protocol; one line per tool call goes to stderr. The leases the session",
        "took are revoked when the client closes the connection. See docs/mcp.md.",
      ].join("\n"),
    )
    .action((o: McpCommandOptions) => mcpAction(cli, o));
}
