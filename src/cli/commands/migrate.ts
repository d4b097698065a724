/**
 * `lessor migrate`: copies the home's vault to another store (SQLite ↔ PostgreSQL) and verifies the
 * copy (src/config/migrate.ts). A PostgreSQL URL with a password never comes from the command line:
 * LESSOR_MIGRATE_TO or --to-file (src/config/migrate-target.ts). See docs/cli/migrate.md.
 */
import type { Command } from "commander";
import type { Cli } from "../cli.js";
import { TABLES } from "../../store/copy.js";

export function registerMigrate(program: Command, cli: Cli): void {
  program
    .command("migrate")
    .description("copy this vault to another store (SQLite <-> PostgreSQL) with every version, lease, token and the audit trail, then verify the copy")
    .option("--to <target>", "sqlite:PATH, or a postgres:// URL without a password (the password from PGPASSWORD or ~/.pgpass)")
    .option("--to-file <path>", "a file (mode 0600 if it holds a password) whose one line is the target")
    .option("--json", "print the summary as JSON")
    .addHelpText(
      "after",
      "\nThe daemon must be stopped, and the target empty. A URL with a password is refused on the command line:\n" +
        "give it in LESSOR_MIGRATE_TO or in a --to-file.\n\nExamples:\n" +
        "  LESSOR_MIGRATE_TO='postgres://lessor:…@db.internal/lessor' lessor migrate\n" +
        "  lessor migrate --to-file ~/.lessor-target\n" +
        "  lessor migrate --to sqlite:/srv/lessor/copy.db",
    )
    .action((o: { to?: string; toFile?: string; json?: boolean }) =>
      cli.run(async () => {
        const [{ migrateHome }, { resolveMigrateTarget }, { terminalPassphrase }, { acquireDaemonLock }] = await Promise.all([
          import("../../config/migrate.js"),
          import("../../config/migrate-target.js"),
          import("../passphrase.js"),
          import("../../server/lock.js"),
        ]);
        const target = resolveMigrateTarget({ to: o.to, toFile: o.toFile, env: process.env });
        const report = await migrateHome({
          ...(cli.home ? { home: cli.home } : {}),
          env: process.env,
          target,
          lockHome: acquireDaemonLock,
          getPassphrase: (about) => terminalPassphrase(process.env)(about),
          ...(o.json ? {} : { progress: (line: string) => cli.err(line) }),
        });
        if (o.json) return void cli.json(report);
        cli.out(`migrated ${report.source} -> ${report.target} in ${(report.ms / 1000).toFixed(1)} s`);
        for (const t of TABLES) cli.out(`  ${t.padEnd(10)} ${report.counts[t]}`);
        cli.out(`verified: every table equal on both sides; audit trail ok (${report.audit.events} events, head ${report.audit.headSeq})`);
        if (report.spotChecked.length > 0) cli.out(`  opened on both sides, same value: ${report.spotChecked.join(", ")}`);
        cli.out(report.next);
      }),
    );
}
