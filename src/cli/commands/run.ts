/**
 * `lessor run --agent A [--env-file F] [--domain D] -- CMD ARGS…`: start a command with the secrets
 * its environment refers to, leased for agent A and revoked when it exits. See docs/cli/run.md.
 */
import type { Command } from "commander";
import type { Cli } from "../cli.js";
import { addOptions, type OptionSpec } from "../option-spec.js";

/** `lessor run`'s options (shared with the start-up fast path). */
export const RUN_OPTIONS: readonly OptionSpec[] = [
  { name: "agent", value: "<agent>", description: "the agent the leases are for", required: true },
  { name: "env-file", value: "<file>", description: "dotenv file whose variables are added (over the environment); repeat for more, later wins", repeat: true },
  { name: "domain", value: "<host>", description: "a host the credentials are for (passed to policy); repeat for more", repeat: true },
  { name: "ttl", value: "<duration>", description: "lease lifetime such as 1h (capped by policy)" },
];

/** `lessor run`'s parsed options. */
export interface RunCommandOptions {
  agent: string;
  envFile?: string[] | undefined;
  domain?: string[] | undefined;
  ttl?: string | undefined;
}

/** Runs `lessor run … -- COMMAND…`; the exit code becomes the command's. */
export function runAction(cli: Cli, command: string[], o: RunCommandOptions): Promise<void> {
  return cli.run(async () => {
    const { runChild } = await import("../run/run.js");
    return runChild(cli, { agent: o.agent, envFiles: o.envFile ?? [], domains: o.domain ?? [], ...(o.ttl !== undefined ? { ttl: o.ttl } : {}) }, command);
  });
}

export function registerRun(program: Command, cli: Cli): void {
  addOptions(
    program
      .command("run")
      .description("run a command with the secrets its environment refers to, leased for an agent; masks them in piped output, revokes the leases when it exits")
      .usage("--agent A [--env-file F]… [--domain D]… [--ttl T] -- CMD [ARGS…]")
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
        "The exit code is the command's own (128+N if signal N killed it; 127 if it was not found).",
      ].join("\n"),
    )
    .action((command: string[], o: RunCommandOptions) => runAction(cli, command, o));
}
