/**
 * `lessor run --agent A [--env-file F] [--domain D] -- CMD ARGS…`: start a command with the secrets
 * its environment refers to, leased for agent A and revoked when it exits, confined by the sandbox
 * unless --no-sandbox. See docs/cli/run.md and docs/sandbox.md.
 */
import type { Command } from "commander";
import { checkDomains } from "../format/options.js";
import { UsageError, type Cli } from "../cli.js";
import { escapeUnsafe } from "../../base/text.js";
import { addOptions, type OptionSpec } from "../option-spec.js";

/** `lessor run`'s options (shared with the start-up fast path). */
export const RUN_OPTIONS: readonly OptionSpec[] = [
  { name: "agent", value: "<agent>", description: "the agent the leases are for", required: true },
  { name: "env-file", value: "<file>", description: "dotenv file whose variables are added (over the environment); repeat for more, later wins", repeat: true },
  { name: "domain", value: "<host>", description: "a host the credentials are for (passed to policy); repeat for more", repeat: true },
  { name: "ttl", value: "<duration>", description: "lease lifetime such as 1h (capped by policy)" },
  { name: "project", value: "<dir>", description: "the project directory the sandbox shows the command (default: the current directory)" },
  { name: "network", value: "<proxy|none|host>", description: "the sandbox's network: proxy (default: only lessor's injecting proxy), none (loopback only) or host (any host, unscoped: warns once)" },
  { name: "vault-session", description: "let the sandboxed command use the vault as the agent, for this run only (LESSOR_SOCKET=/run/lessor/vault.sock); also [run] vault_session" },
  { name: "no-sandbox", description: "run the command unconfined, as you (it can read your files and the vault's key); warns once" },
];

/** `lessor run`'s parsed options. */
export interface RunCommandOptions {
  agent: string;
  envFile?: string[] | undefined;
  domain?: string[] | undefined;
  ttl?: string | undefined;
  project?: string | undefined;
  network?: string | undefined;
  /** True when --vault-session is given. */
  vaultSession?: boolean | undefined;
  /** False when --no-sandbox is given (commander's `--no-` flags default to true). */
  sandbox?: boolean | undefined;
}

/** Runs `lessor run … -- COMMAND…`; the exit code becomes the command's. */
export function runAction(cli: Cli, command: string[], o: RunCommandOptions): Promise<void> {
  return cli.run(async () => {
    checkDomains(o.domain ?? []);
    const { runChild } = await import("../run/run.js");
    return runChild(
      cli,
      {
        agent: o.agent,
        envFiles: o.envFile ?? [],
        domains: o.domain ?? [],
        ...(o.ttl !== undefined ? { ttl: o.ttl } : {}),
        sandbox: o.sandbox !== false,
        ...(o.project !== undefined ? { project: o.project } : {}),
        ...(o.network !== undefined ? { network: o.network } : {}),
        ...(o.vaultSession === true ? { vaultSession: true } : {}),
      },
      command,
    );
  });
}

export function registerRun(program: Command, cli: Cli): void {
  addOptions(
    program
      .command("run")
      .description("run a command with the secrets its environment refers to, leased for an agent; masks them in piped output, revokes the leases when it exits")
      .usage("--agent A [--env-file F]… [--domain D]… [--ttl T] [--project DIR] [--network proxy|none|host] [--vault-session] [--no-sandbox] -- CMD [ARGS…]")
      .argument("<command...>", "the command and its arguments (put them after --)"),
    RUN_OPTIONS,
  )
    .addHelpText(
      "after",
      [
        "",
        "References (in any variable's value): lessor://scope/name[#field], $S:name, $S:name/field,",
        "$S:@service/name, $S::env/name, $S:project:env/name, $secret://env/KEY/field.",
        "",
        "Examples:",
        "  GITHUB_TOKEN='$S:github-token' lessor run --agent claude --domain api.github.com -- claude",
        "  lessor run --agent deployer --env-file .env.lessor -- npm run deploy",
        "  DATABASE_URL='postgres://app:$S:db-password@db/app' lessor run --agent app -- node server.js",
        "",
        "The command runs in a sandbox (bubblewrap) that shows only the system, the project directory",
        "and the [run] paths of lessor.toml; never the lessor home, the key, the daemon socket or ~/.ssh,",
        "~/.aws and other credential stores (docs/sandbox.md). Its only way out is lessor's injecting",
        "proxy (HTTPS_PROXY is set): it holds placeholders, and the proxy adds the real credentials on",
        "the way out to the hosts the leases cover (docs/proxy.md). --no-sandbox runs it unconfined, as",
        "you, with the real values in its environment.",
        "",
        "--vault-session (or [run] vault_session = true) lets the sandboxed command talk to the vault",
        "itself, as agent A and only within A's policy: lessor commands inside reach it through",
        "LESSOR_SOCKET=/run/lessor/vault.sock. With a daemon, the run makes an agent token for it",
        "(never shown to the command) and revokes it when the command exits; never the owner's identity.",
        "",
        "The exit code is the command's own (128+N if signal N killed it; 127 if it was not found).",
      ].join("\n"),
    )
    .action((command: string[], o: RunCommandOptions, cmd: Command) =>
      afterDashes(cmd, command)
        ? runAction(cli, command, o)
        : cli.run(async () => {
            throw new UsageError(
              `put -- before the command: lessor run --agent A [options] -- ${escapeUnsafe(command[0] ?? "CMD")} … (without it, options written after the command, such as --no-sandbox, --network or --agent, are taken as lessor's own, not the command's); the command was not started`,
            );
          }),
    );
}

/**
 * True when every word of `command` came after a `--` (commander reads options anywhere before one,
 * even after the command's name: `lessor run --agent a ./agent.sh --no-sandbox` would run it unconfined).
 */
function afterDashes(cmd: Command, command: readonly string[]): boolean {
  const raw = (cmd.parent as (Command & { rawArgs?: string[] }) | null)?.rawArgs ?? [];
  const at = raw.indexOf("--");
  if (at < 0) return false;
  const tail = raw.slice(at + 1);
  return tail.length === command.length && tail.every((w, i) => w === command[i]);
}
