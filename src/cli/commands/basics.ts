/** `init`, `serve` and `demo`. */
import type { Command } from "commander";
import type { Cli } from "../cli.js";

export function registerBasics(program: Command, cli: Cli): void {
  program
    .command("init")
    .description("create the lessor home: 0700 directory, master key, lessor.toml, policy.toml, database")
    .option("--key-source <kind>", "file (a 0600 key file, default), passphrase (asked on the terminal, or LESSOR_PASSPHRASE), keychain (the OS keychain; needs the optional package @napi-rs/keyring), or env (LESSOR_MASTER_KEY)")
    .option("--passphrase", "seal the master key with a passphrase, typed twice without echo (or LESSOR_PASSPHRASE); the same as --key-source passphrase")
    .addHelpText(
      "after",
      "\nExamples:\n  lessor init\n  LESSOR_HOME=/srv/lessor lessor init\n  lessor init --passphrase                             # asks twice, no echo\n  read -rs LESSOR_PASSPHRASE && export LESSOR_PASSPHRASE   # bash: no echo, not in your history\n  lessor init --key-source passphrase                  # reads LESSOR_PASSPHRASE\n  lessor init --key-source keychain                    # the key in the OS keychain, no key file",
    )
    .action((o: { keySource?: string; passphrase?: boolean }) =>
      cli.run(async () => {
        const { init } = await import("../init.js");
        return init({ ...(cli.home ? { home: cli.home } : {}), ...(o.keySource ? { keySource: o.keySource } : {}), ...(o.passphrase ? { passphrase: true } : {}) });
      }),
    );

  program
    .command("serve")
    .description("run the daemon in the foreground on the home's Unix socket (and TCP if configured); logs JSON lines to stderr")
    .addHelpText("after", "\nExamples:\n  lessor serve\n  lessor --home /srv/lessor serve")
    .action(() =>
      cli.run(async () => {
        const { serve } = await import("../serve.js");
        return serve(cli.home ? { home: cli.home } : {});
      }),
    );

  program
    .command("demo")
    .description("walk the life of a secret on the embedded SQLite vault in a throwaway home")
    .action(() =>
      cli.run(async () => {
        const { runDemo } = await import("../demo.js");
        return runDemo(cli.home ? { home: cli.home } : {});
      }),
    );
}
