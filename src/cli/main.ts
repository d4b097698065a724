#!/usr/bin/env node
/**
 * The lessor command. For now: `demo` and `--version`; the full CLI comes with its own issue.
 */
import { Command } from "commander";
import { VaultError } from "../vault/errors.js";
import { VERSION } from "../version.js";

const program = new Command()
  .name("lessor")
  .description("A credential vault for AI agents: encrypted secrets lent out through leases.")
  .version(VERSION);

program
  .command("demo")
  .description("walk the life of a secret on the embedded SQLite vault in a throwaway home")
  .option("--home <dir>", "use this home instead of a temporary one (kept afterwards)")
  .action(async (o: { home?: string }) => {
    const { runDemo } = await import("./demo.js");
    process.exitCode = await runDemo(o.home ? { home: o.home } : {});
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
