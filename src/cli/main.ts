#!/usr/bin/env node
/**
 * The lessor command: `init`, `serve` and `demo` for now; the full CLI comes with its own issue.
 * Each command loads its module on demand so start-up stays fast.
 */
import { Command } from "commander";
import { VaultError } from "../vault/errors.js";
import { VERSION } from "../version.js";

const program = new Command()
  .name("lessor")
  .description("A credential vault for AI agents: encrypted secrets lent out through leases.")
  .version(VERSION)
  .option("--home <dir>", "the lessor home (default: $LESSOR_HOME or ~/.lessor)");

const home = (): { home?: string } => {
  const h = program.opts<{ home?: string }>().home;
  return h ? { home: h } : {};
};

program
  .command("init")
  .description("create the lessor home: 0700 directory, master key, lessor.toml, policy.toml, database")
  .option("--key-source <kind>", "file (a 0600 key file, default), passphrase (LESSOR_PASSPHRASE), or env (LESSOR_MASTER_KEY)")
  .addHelpText("after", "\nExamples:\n  lessor init\n  LESSOR_HOME=/srv/lessor lessor init\n  LESSOR_PASSPHRASE=… lessor init --key-source passphrase")
  .action(async (o: { keySource?: string }) => {
    const { init } = await import("./init.js");
    process.exitCode = await init({ ...home(), ...(o.keySource ? { keySource: o.keySource } : {}) });
  });

program
  .command("serve")
  .description("run the daemon in the foreground on the home's Unix socket (and TCP if configured); logs JSON lines to stderr")
  .addHelpText("after", "\nExamples:\n  lessor serve\n  lessor --home /srv/lessor serve")
  .action(async () => {
    const { serve } = await import("./serve.js");
    process.exitCode = await serve(home());
  });

program
  .command("demo")
  .description("walk the life of a secret on the embedded SQLite vault in a throwaway home")
  .action(async () => {
    const { runDemo } = await import("./demo.js");
    process.exitCode = await runDemo(home());
  });

program.parseAsync().catch((e: unknown) => {
  if (e instanceof VaultError) {
    process.stderr.write(`lessor: ${e.message}\n`);
    process.exitCode = 1;
  } else {
    process.stderr.write(`lessor: internal error: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 70;
  }
});
