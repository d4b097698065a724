/**
 * `lessor secret set|get|list|rm|rotate|history|rollback|export|import` (docs/cli/secret.md).
 * Only the command definitions live here; the bodies are in ../secret/ and load when a command runs.
 */
import type { Command } from "commander";
import type { Cli } from "../cli.js";

const collect = (v: string, prev: string[] | undefined): string[] => [...(prev ?? []), v];

/** The value-source options of `set` and `rotate`. */
function valueOptions(cmd: Command): Command {
  return cmd
    .option("--from-file <path>", "read the value from a file, bytes as they are (binary is fine)")
    .option("--random", "generate a random value")
    .option("--length <n>", "with --random: the value's length in characters (default 32)")
    .option("--charset <set>", "with --random: base64url (default), hex or alnum")
    .option("--keep-newline", "keep the trailing newline of a value read from stdin (by default one \\n or \\r\\n is removed)")
    .option("--allow-empty", "allow storing an empty value")
    .option("--value <value>", "the value itself: refused unless --force-argv, as it leaks into shell history and ps")
    .option("--force-argv", "accept --value despite the leak (a warning is printed)")
    .allowExcessArguments(true);
}

const VALUE_HELP = `
Where the value comes from (one of):
  stdin           when stdin is a pipe or a file; one trailing newline is removed unless --keep-newline
  the prompt      when stdin is a terminal: typed twice, never echoed
  --from-file F   the file's bytes as they are
  --random        --length N characters (default 32) from --charset base64url|hex|alnum
  --value V       only with --force-argv: a value on the command line is kept in shell history and shown by ps`;

export function registerSecret(program: Command, cli: Cli): void {
  const secret = program
    .command("secret")
    .description("store, read, rotate, back up and restore secrets (NAME is scope/name, or a name in scope global)")
    .addHelpText(
      "after",
      `
Examples:
  gh auth token | lessor secret set github-token --kind pat
  lessor secret list
  lessor secret get github-token --reveal
  lessor secret export --output backup.json`,
    );

  valueOptions(
    secret
      .command("set <name>")
      .description("store a value as a new version, creating the secret if needed")
      .option("--scope <scope>", "the scope, when NAME has none (default global)")
      .option("--kind <kind>", "api_key, pat, basic_auth, oauth2, ssh_key, client_cert or opaque (default opaque)")
      .option("--description <text>", "what the secret is for")
      .option("--tag <tag>", "a tag (repeatable, or comma-separated)", collect)
      .option("--create", "fail if the secret already exists")
      .option("--json", "print the secret's metadata as JSON"),
  )
    .addHelpText(
      "after",
      `${VALUE_HELP}

Prints "stored scope/name version N".

Examples:
  lessor secret set github-token --kind pat            # prompts, no echo
  printf %s "$TOKEN" | lessor secret set env:prod/stripe-key --tag billing
  gh auth token | lessor secret set github-token       # the trailing newline is removed
  lessor secret set deploy-key --from-file ~/.ssh/id_ed25519 --kind ssh_key
  lessor secret set session-secret --random --length 48 --charset alnum`,
    )
    .action((name: string, o, cmd: Command) =>
      cli.run(async () => (await import("../secret/actions.js")).setSecret(cli, name, o, cmd.args.slice(1))),
    );

  secret
    .command("get <name>")
    .description("show a secret's metadata with the value redacted; --reveal prints the value (audited)")
    .option("--scope <scope>", "the scope, when NAME has none (default global)")
    .option("--version <n>", "a kept version instead of the current one (see lessor secret history)")
    .option("--ver <n>", "the same as --version <n>")
    .option("--reveal", "print the value's bytes to stdout exactly (a newline is added only on a terminal); audited as secret_revealed")
    .option("--json", "JSON: metadata with value and encoding null, or with --reveal the value in base64")
    .addHelpText(
      "after",
      `
Examples:
  lessor secret get github-token
  lessor secret get github-token --reveal | gh auth login --with-token
  lessor secret get github-token --version 2
  lessor secret get env:prod/stripe-key --version 2 --reveal --json`,
    )
    .action((name: string, o) => cli.run(async () => (await import("../secret/actions.js")).getSecret(cli, name, o)));

  secret
    .command("list")
    .alias("ls")
    .description("list secrets (never their values)")
    .option("--scope <scope>", "only this scope")
    .option("--prefix <prefix>", "only names starting with this")
    .option("--tag <tag>", "only secrets with this tag")
    .option("--json", "print a JSON array")
    .addHelpText(
      "after",
      `
Examples:
  lessor secret list
  lessor secret list --scope env:prod --tag billing
  lessor secret list --json | jq -r '.[] | "\\(.scope)/\\(.name)"'`,
    )
    .action((o) => cli.run(async () => (await import("../secret/actions.js")).listSecrets(cli, o)));

  secret
    .command("rm <name>")
    .alias("delete")
    .description("delete a secret and every version, revoking its leases (asks first on a terminal)")
    .option("--scope <scope>", "the scope, when NAME has none (default global)")
    .option("--yes", "do not ask; required when stdin is not a terminal")
    .option("--json", "print the result as JSON")
    .addHelpText(
      "after",
      `
Examples:
  lessor secret rm old-token
  lessor secret rm env:staging/db-password --yes`,
    )
    .action((name: string, o) => cli.run(async () => (await import("../secret/actions.js")).removeSecret(cli, name, o)));

  valueOptions(
    secret
      .command("rotate <name>")
      .description("add a new version to an existing secret: a value you give, or one its rotation hook makes")
      .option("--scope <scope>", "the scope, when NAME has none (default global)")
      .option("--hook", "run the secret's rotation hook ([[rotate]] in lessor.toml) even if stdin has data")
      .option("--json", "print the secret's metadata as JSON"),
  )
    .addHelpText(
      "after",
      `${VALUE_HELP}

With a rotation hook ([[rotate]] in lessor.toml): when no value is given (stdin is a terminal or
empty) or with --hook, its command runs where the vault is (the daemon, else here) and what it prints
becomes the new version; live leases are revoked as its revoke says. Neither its output nor its
stderr is ever shown (either may hold a value): a failure says the exit code or the time limit.

Examples:
  lessor secret rotate github-token                    # prompts, no echo (no hook configured)
  gh auth refresh && gh auth token | lessor secret rotate github-token
  lessor secret rotate session-secret --random
  lessor secret rotate db-password --hook              # runs its [[rotate]] command`,
    )
    .action((name: string, o, cmd: Command) =>
      cli.run(async () => (await import("../secret/actions.js")).rotateSecret(cli, name, o, cmd.args.slice(1))),
    );

  secret
    .command("history <name>")
    .description("list the kept versions of a secret, oldest first (* marks the current one)")
    .option("--scope <scope>", "the scope, when NAME has none (default global)")
    .option("--json", "print a JSON array")
    .addHelpText("after", "\nExamples:\n  lessor secret history github-token\n  lessor secret history env:prod/stripe-key --json")
    .action((name: string, o) => cli.run(async () => (await import("../secret/actions.js")).secretHistory(cli, name, o)));

  secret
    .command("rollback <name> <version>")
    .description("store the value of an older version as a new, current version")
    .option("--scope <scope>", "the scope, when NAME has none (default global)")
    .option("--json", "print the secret's metadata as JSON")
    .addHelpText("after", "\nExamples:\n  lessor secret history github-token\n  lessor secret rollback github-token 3")
    .action((name: string, version: string, o) =>
      cli.run(async () => (await import("../secret/actions.js")).rollbackSecret(cli, name, version, o)),
    );

  secret
    .command("export")
    .description("write every secret WITH ITS VALUE, as dotenv or JSON, for a backup (each value read is audited as secret_revealed)")
    .option("--format <format>", "dotenv (one scope) or json (any scopes, with kind, description and tags); default json when --output ends in .json, else dotenv")
    .option("--scope <scope>", "only this scope (dotenv exports scope global unless told)")
    .option("--prefix <prefix>", "only names starting with this")
    .option("--tag <tag>", "only secrets with this tag")
    .option("-o, --output <file>", "write to this file, created 0600 (default stdout)")
    .addHelpText(
      "after",
      `
The output holds real values: keep it like the vault itself. Export then import gives back the same
bytes for any value (quotes, newlines, #, =, unicode, empty, binary). In dotenv, values are double-quoted
with \\\\ \\" \\n \\r \\t \\$ escapes, and bytes that are not UTF-8 text are written unquoted as base64:<base64>.

Examples:
  lessor secret export --output backup.json
  lessor secret export --scope env:prod --format dotenv --output prod.env
  lessor secret export --format json | ssh other-host lessor secret import -`,
    )
    .action((o) => cli.run(async () => (await import("../secret/transfer.js")).exportSecrets(cli, o)));

  secret
    .command("import <file>")
    .description("store every secret of a dotenv or JSON file (from export, or written by hand); existing ones get a new version")
    .option("--format <format>", "dotenv or json (default: json when the file starts with {)")
    .option("--scope <scope>", "store into this scope (dotenv default global; for JSON it replaces each entry's scope)")
    .option("--json", "print what was stored as a JSON array")
    .addHelpText(
      "after",
      `
The whole file is checked before anything is stored; a mistake is reported with its line and column.
FILE - reads stdin.

Examples:
  lessor secret import backup.json
  lessor secret import .env --scope env:dev
  lessor secret export --scope env:prod --format json | lessor secret import - --scope env:staging`,
    )
    .action((file: string, o) => cli.run(async () => (await import("../secret/transfer.js")).importSecrets(cli, file, o)));
}
