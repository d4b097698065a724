/**
 * `lessor proxy --agent A [--env-file F]… [--domain D]… [--ttl T] [--listen 127.0.0.1:PORT | --socket PATH | --vsock-port P]
 * [--egress strict|open] [--env-out FILE]`: the injecting proxy on its own, for an agent in a VM or a
 * container. See docs/cli/proxy.md and docs/proxy.md.
 */
import type { Command } from "commander";
import { checkDomains } from "../format/options.js";
import type { Cli } from "../cli.js";
import { addOptions, type OptionSpec } from "../option-spec.js";

/** `lessor proxy`'s options. */
export const PROXY_OPTIONS: readonly OptionSpec[] = [
  { name: "agent", value: "<agent>", description: "the agent the leases are for", required: true },
  { name: "env-file", value: "<file>", description: "dotenv file whose variables are added (over the environment); repeat for more, later wins", repeat: true },
  { name: "domain", value: "<host>", description: "a host the credentials are for (passed to policy); repeat for more", repeat: true },
  { name: "ttl", value: "<duration>", description: "lease lifetime such as 8h (capped by policy)" },
  { name: "listen", value: "<addr>", description: "loopback address and port to listen on, 127.0.0.1:PORT or [::1]:PORT (default 127.0.0.1:0, a free port)" },
  { name: "socket", value: "<path>", description: "listen on a Unix socket (0600, in a directory only you can change) instead of a TCP port; a [[vm]]'s <uds_path>_<port> serves that Firecracker VM only, and its agent must be --agent" },
  { name: "vsock-port", value: "<port>", description: "listen on this AF_VSOCK port (QEMU/vhost-vsock guests) instead: only guest CIDs that [[vsock]] maps to --agent are served, others refused" },
  { name: "egress", value: "<strict|open>", description: "hosts no lease covers: strict refuses them (403), open tunnels them untouched (default: [proxy] egress, else strict)" },
  { name: "env-out", value: "<file>", description: "write the agent's environment here (mode 0600; the CA files beside it) instead of stdout" },
];

/** `lessor proxy`'s parsed options. */
export interface ProxyCommandOptions {
  agent: string;
  envFile?: string[] | undefined;
  domain?: string[] | undefined;
  ttl?: string | undefined;
  listen?: string | undefined;
  socket?: string | undefined;
  vsockPort?: string | undefined;
  egress?: string | undefined;
  envOut?: string | undefined;
}

export function registerProxy(program: Command, cli: Cli): void {
  addOptions(
    program
      .command("proxy")
      .description("serve the injecting proxy for an agent in a VM or container: prints its environment (placeholders, HTTPS_PROXY, CA), serves until stopped, revokes the leases")
      .usage("--agent A [--env-file F]… [--domain D]… [--ttl T] [--listen 127.0.0.1:PORT | --socket PATH | --vsock-port P] [--egress strict|open] [--env-out FILE]"),
    PROXY_OPTIONS,
  )
    .addHelpText(
      "after",
      [
        "",
        "Secrets are named as for lessor run: references in the environment or in env files.",
        "",
        "Examples:",
        "  GITHUB_TOKEN='$S:github-token' lessor proxy --agent claude --domain api.github.com",
        "  lessor proxy --agent claude --env-file .env.lessor --listen 127.0.0.1:3128 --env-out agent.env",
        "",
        "It prints the agent's environment (or writes it to --env-out, mode 0600): the variables that",
        "held references, now holding placeholders; HTTPS_PROXY=http://lessor:TOKEN@127.0.0.1:PORT (a",
        "random token per session: other local users can reach a loopback port, so clients must send",
        "it); the session CA's files (SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, …). The proxy swaps the",
        "placeholders for the real credentials on the way to the hosts the leases cover (docs/proxy.md).",
        "It listens on loopback only, or on a VM's vsock: --socket <uds_path>_<port> of a [[vm]]",
        "(Firecracker), --vsock-port P for the guest CIDs [[vsock]] maps to the agent. Ctrl-C or SIGTERM stops",
        "it, revokes the leases and removes the files it wrote.",
      ].join("\n"),
    )
    .action((o: ProxyCommandOptions) =>
      cli.run(async () => {
        checkDomains(o.domain ?? []);
        const { serveProxy } = await import("../run/serve-proxy.js");
        return serveProxy(cli, {
          agent: o.agent,
          envFiles: o.envFile ?? [],
          domains: o.domain ?? [],
          ...(o.ttl !== undefined ? { ttl: o.ttl } : {}),
          ...(o.listen !== undefined ? { listen: o.listen } : {}),
          ...(o.socket !== undefined ? { socket: o.socket } : {}),
          ...(o.vsockPort !== undefined ? { vsockPort: o.vsockPort } : {}),
          ...(o.egress !== undefined ? { egress: o.egress } : {}),
          ...(o.envOut !== undefined ? { envOut: o.envOut } : {}),
        });
      }),
    );
}
