/**
 * `lessor whoami`: who the daemon (or the embedded vault) takes the caller for — identity id, role,
 * agent, act-for patterns, transport, and for a token its name, id and expiry — and which vault
 * answered. Any role may ask. See docs/cli/admin.md.
 */
import type { Command } from "commander";
import type { Cli } from "../cli.js";
import { iso, relative, shortTime } from "../format/time.js";
import { fields } from "../secret/render.js";

export function registerWhoami(program: Command, cli: Cli): void {
  program
    .command("whoami")
    .description("show who the daemon (or the embedded vault) takes you for: identity, role, agent, act-for, transport, token")
    .option("--json", "print { id, role, agent, actFor, transport, token, mode, home, endpoint } as JSON")
    .addHelpText("after", "\nExamples:\n  lessor whoami\n  LESSOR_SOCKET=/srv/lessor/lessor.sock lessor whoami --json")
    .action((o: { json?: boolean }) =>
      cli.run(async () => {
        const backend = await cli.backend();
        const { identity: who, token } = await backend.api.whoami();
        const where =
          backend.endpoint !== null
            ? `the daemon at ${backend.endpoint}`
            : backend.mode === "daemon"
              ? `the daemon for ${backend.home}`
              : `the vault at ${backend.home}, opened in this process (no daemon is running)`;
        if (o.json) {
          cli.json({
            id: who.id,
            role: who.role,
            agent: who.agent ?? null,
            actFor: who.actFor ?? null,
            transport: who.transport,
            token: token === null ? null : { id: token.id, name: token.name, expiresAt: iso(token.expiresAt) },
            mode: backend.mode,
            home: backend.endpoint === null ? backend.home : null,
            endpoint: backend.endpoint,
          });
          return;
        }
        const now = Date.now();
        const rows: [string, string][] = [
          ["identity", who.id],
          ["role", who.role],
        ];
        if (who.agent !== undefined) rows.push(["agent", who.agent]);
        if (who.actFor !== undefined) rows.push(["acts for", who.actFor.join(", ")]);
        rows.push(["transport", who.transport]);
        if (token !== null)
          rows.push(["token", `${token.name} (id ${token.id}), ${token.expiresAt === null ? "does not expire" : `expires ${shortTime(token.expiresAt)} (${relative(token.expiresAt, now)})`}`]);
        rows.push(["answered by", where]);
        for (const line of fields(rows)) cli.out(line);
      }),
    );
}
