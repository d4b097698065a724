/**
 * `lessor git-credential get|store|erase` and `lessor docker-credential get|store|erase|list`: the
 * credential helpers git and docker already call (docs/cli/credential-helpers.md). The work is in
 * src/cli/credentials/, loaded only when one runs.
 */
import type { Command } from "commander";
import type { Cli } from "../cli.js";

export function registerCredentialHelpers(program: Command, cli: Cli): void {
  program
    .command("git-credential <action>")
    .description("git's credential helper: answers get for an https host the policy covers with a one-use lease; store and erase do nothing (lessor is the store)")
    .option("--agent <agent>", "the agent the lease is for (an agent connected as itself may leave it out)")
    .option("--secret <name>", "the secret git's password is (scope/name or a bare name)")
    .option("--username <name>", "the username to give git (default: the URL's, else x-access-token)")
    .addHelpText(
      "after",
      '\ngit appends the action (get, store, erase) to the helper\'s command line. Configure it per host, as the only\nhelper for that URL (git hands an accepted credential to every helper configured for it, such as a\ncredential.helper = store, and lessor answers nothing while another would get it):\n  git config --global credential.https://github.com.helper \'\'\n  git config --global --add credential.https://github.com.helper \'!lessor git-credential --agent claude --secret github-token\'\n  git config --global credential.https://github.com.useHttpPath false\n\nAnswers only https:// requests, for hosts a policy rule lets the agent have the secret for; otherwise it prints\nnothing (one line on stderr says why) and git goes on as if there were no helper.',
    )
    .action((action: string, o: { agent?: string; secret?: string; username?: string }) =>
      import("../credentials/git-credential.js").then((m) => m.gitCredentialAction(cli, action, o)),
    );

  program
    .command("docker-credential <action>")
    .description("docker's credential helper (installed as docker-credential-lessor): get, list; store is refused and erase does nothing (lessor is the store)")
    .addHelpText(
      "after",
      '\nRegistries are mapped to secrets in lessor.toml:\n  [docker]\n  "ghcr.io" = { secret = "ghcr-token", username = "octocat", agent = "builder" }\nand docker is told to use it in ~/.docker/config.json:\n  { "credHelpers": { "ghcr.io": "lessor" } }',
    )
    .action((action: string) => import("../credentials/docker-credential.js").then((m) => m.dockerCredentialAction(cli, action)));
}
