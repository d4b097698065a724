/** `lessor key rotate`: master-key rotation from the command line. See docs/cli/admin.md and docs/crypto.md. */
import type { Command } from "commander";
import type { Cli } from "../cli.js";

export function registerKey(program: Command, cli: Cli): void {
  const key = program
    .command("key")
    .description("the master key: rotate it (every data key re-wrapped, values untouched)")
    .addHelpText("after", "\nExamples:\n  lessor key rotate\n  lessor key rotate --json");

  key
    .command("rotate")
    .description("make a new master key current in the key source, re-wrap every secret's data key under it, and retire the old one (through the daemon when one runs; admin only)")
    .option("--json", "print { from, to, rewrapped, resumed, retired } as JSON")
    .addHelpText("after", "\nExamples:\n  lessor key rotate\n  lessor key rotate --json")
    .action((o: { json?: boolean }) =>
      cli.run(async () => {
        const { api } = await cli.backend();
        const r = await api.rotateMasterKey();
        if (o.json) {
          cli.json(r);
          return;
        }
        if (r.from.length === 0) {
          // A key source lessor does not write (LESSOR_MASTER_KEY, a key command) offered no second key.
          cli.err(`lessor: the key source holds only key ${r.to}, so nothing was rotated: with LESSOR_MASTER_KEY or a key command, make the new key current and give the old one after it (docs/crypto.md, "Rotation"), then run this again`);
          return;
        }
        cli.out(`master key rotated${r.resumed ? " (resumed)" : ""}: ${r.from.join(", ")} → ${r.to}; ${r.rewrapped} data key${r.rewrapped === 1 ? "" : "s"} re-wrapped`);
        if (!r.retired) cli.err("lessor: lessor does not write this key source (LESSOR_MASTER_KEY, a key command): drop the old key from it yourself now that nothing uses it (docs/crypto.md, \"Rotation\")");
      }),
    );
}
