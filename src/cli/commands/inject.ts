/**
 * `lessor inject -i TEMPLATE [-o FILE] --agent A`: render the secret references in a template, leased
 * for agent A (revoked when done); the output file is created 0600. See docs/cli/run.md.
 */
import type { Command } from "commander";
import type { Cli } from "../cli.js";
import { checkDomains, collect } from "../format/options.js";

export function registerInject(program: Command, cli: Cli): void {
  program
    .command("inject")
    .description("render the secret references in a template (leased for an agent, revoked after) to stdout or a 0600 file")
    .usage("-i TEMPLATE [-o FILE] --agent A [--domain D]… [--ttl T]")
    .requiredOption("-i, --in <template>", 'the template file ("-" for stdin)')
    .option("-o, --out <file>", "write here (created or replaced atomically with mode 0600) instead of stdout")
    .requiredOption("--agent <agent>", "the agent the leases are for")
    .option("--domain <host>", "a host the credentials are for (passed to policy); repeat for more", collect, [])
    .option("--ttl <duration>", "lease lifetime such as 5m (capped by policy)")
    .addHelpText(
      "after",
      [
        "",
        "References: lessor://scope/name[#field], $S:name, $S:name/field, $S:@service/name,",
        "$S::env/name, $S:project:env/name, $secret://env/KEY/field.",
        "",
        "Examples:",
        "  lessor inject -i config.yml.tmpl -o config.yml --agent deployer",
        "  lessor inject -i .env.tmpl -o .env --agent app --domain db.internal",
        "  echo 'token: $S:github-token' | lessor inject -i - --agent claude --domain api.github.com",
      ].join("\n"),
    )
    .action((o: { in: string; out?: string; agent: string; domain: string[]; ttl?: string }) =>
      cli.run(async () => {
        checkDomains(o.domain);
        const { injectTemplate } = await import("../run/inject.js");
        return injectTemplate(cli, {
          input: o.in,
          agent: o.agent,
          domains: o.domain,
          ...(o.out !== undefined ? { output: o.out } : {}),
          ...(o.ttl !== undefined ? { ttl: o.ttl } : {}),
        });
      }),
    );
}
