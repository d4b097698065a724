/** `lessor status`: where the vault is and what state it is in (never a secret). See docs/cli/admin.md. */
import type { Command } from "commander";
import type { Cli } from "../cli.js";
import { formatDuration } from "../../vault/duration.js";

export function registerStatus(program: Command, cli: Cli): void {
  program
    .command("status")
    .description("show the mode (daemon or embedded), home, identity, store, master key, policy and audit head")
    .option("--json", "print the status as JSON")
    .addHelpText("after", "\nExamples:\n  lessor status\n  lessor status --json | jq .policy.digest")
    .action((o: { json?: boolean }) =>
      cli.run(async () => {
        const backend = await cli.backend();
        const s = await backend.api.status();
        const daemon = backend.mode === "daemon" ? s.daemon : null;
        if (o.json) {
          cli.json({
            mode: backend.mode,
            home: backend.home,
            identity: s.identity,
            store: s.store,
            keySource: s.keySource,
            keyId: s.keyId,
            keyIds: s.keyIds,
            cipher: s.cipher,
            policy: s.policy,
            auditHead: s.auditHead,
            version: s.daemon.version,
            daemon,
          });
          return;
        }
        const who = s.identity.agent !== undefined ? `${s.identity.role} ${s.identity.id} (agent ${s.identity.agent})` : `${s.identity.role} ${s.identity.id}`;
        const rows: [string, string][] = [
          ["mode", backend.mode === "daemon" ? "daemon (connected over its socket)" : "embedded (no daemon running; the vault is opened in this process)"],
          ["home", backend.home],
          ["identity", `${who} via ${s.identity.transport}`],
          ["store", s.store],
          ["key source", s.keySource],
          ["key id", s.keyIds.length > 1 ? `${s.keyId} (also loaded: ${s.keyIds.filter((k) => k !== s.keyId).join(", ")})` : s.keyId],
          ["cipher", s.cipher],
          ["policy", `${s.policy.source}: ${s.policy.rules} rule${s.policy.rules === 1 ? "" : "s"}, digest ${s.policy.digest}`],
          ["audit head", `event ${s.auditHead}`],
        ];
        if (daemon !== null)
          rows.push(["daemon", `version ${daemon.version}, pid ${daemon.pid}, up ${formatDuration(Math.floor(daemon.uptimeMs / 1000) * 1000)}, ${daemon.connections} connection${daemon.connections === 1 ? "" : "s"}`]);
        const width = Math.max(...rows.map(([k]) => k.length)) + 1;
        for (const [k, v] of rows) cli.out(`${`${k}:`.padEnd(width)} ${v}`);
      }),
    );
}
