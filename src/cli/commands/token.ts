/** `lessor token create|list|revoke`: bearer tokens for the daemon's TCP listener. See docs/cli/admin.md. */
import { Option, type Command } from "commander";
import { UsageError, type Cli } from "../cli.js";
import { EXIT } from "../exit-codes.js";
import { collect } from "../format/options.js";
import { list, table } from "../format/table.js";
import { iso, shortTime } from "../format/time.js";
import type { TokenInfo } from "../../base/types.js";

const ROLES = ["admin", "orchestrator", "agent"] as const;

/** A token as printed by --json (never its secret part, except `token` right after create). */
interface TokenJson {
  id: string;
  name: string;
  role: string;
  agent: string | null;
  actFor: string[] | null;
  createdAt: string;
  expiresAt: string | null;
  revokedAt: string | null;
  createdBy: string;
  /** unverified: a row without a valid MAC (made before lessor MACed tokens, or planted in the database), which authenticates no one. */
  state: "live" | "expired" | "revoked" | "unverified";
}

function tokenState(t: TokenInfo, now: number): TokenJson["state"] {
  if (t.revokedAt !== null) return "revoked";
  if (t.unverified) return "unverified";
  if (t.expiresAt !== null && t.expiresAt <= now) return "expired";
  return "live";
}

function tokenJson(t: TokenInfo, now: number): TokenJson {
  return {
    id: t.id,
    name: t.name,
    role: t.role,
    agent: t.agent,
    actFor: t.actFor,
    createdAt: iso(t.createdAt)!,
    expiresAt: iso(t.expiresAt),
    revokedAt: iso(t.revokedAt),
    createdBy: t.createdBy,
    state: tokenState(t, now),
  };
}

export function registerToken(program: Command, cli: Cli): void {
  const token = program
    .command("token")
    .description("create, list and revoke bearer tokens (for clients on the daemon's TCP listener)")
    .addHelpText("after", "\nExamples:\n  lessor token create ci --role agent --agent ci --ttl 30d\n  lessor token list\n  lessor token revoke 0123456789abcdef");

  token
    .command("create <name>")
    .description("create a token bound to a role (and agent or act-for patterns); the token is printed once, to stdout")
    .addOption(new Option("--role <role>", "admin, orchestrator or agent").choices(ROLES).makeOptionMandatory())
    .option("--agent <agent>", "for --role agent: the agent id the token acts as")
    .option("--act-for <pattern>", "for --role orchestrator: an agent id pattern it may act for; repeat for more", collect)
    .option("--ttl <duration>", "lifetime such as 30d (default: no expiry)")
    .option("--json", "print the token's record and the token as JSON")
    .addHelpText(
      "after",
      '\nExamples:\n  lessor token create claude-laptop --role agent --agent claude --ttl 30d\n  lessor token create ci-orchestrator --role orchestrator --act-for "ci-*"\n  TOKEN=$(lessor token create ops --role admin --ttl 1d)',
    )
    .action((name: string, o: { role: string; agent?: string; actFor?: string[]; ttl?: string; json?: boolean }) =>
      cli.run(async () => {
        const actFor = o.actFor ?? [];
        if (o.role === "agent" && o.agent === undefined) throw new UsageError("an agent token needs --agent AGENT: the agent id it acts as");
        if (o.role !== "agent" && o.agent !== undefined) throw new UsageError("--agent is only for --role agent");
        if (o.role === "orchestrator" && actFor.length === 0) throw new UsageError('an orchestrator token needs --act-for PATTERN (repeatable), such as --act-for "claude-*"');
        if (o.role !== "orchestrator" && actFor.length > 0) throw new UsageError("--act-for is only for --role orchestrator");
        const { api } = await cli.backend();
        const t = await api.createToken({
          name,
          role: o.role as (typeof ROLES)[number],
          ...(o.agent !== undefined ? { agent: o.agent } : {}),
          ...(actFor.length > 0 ? { actFor } : {}),
          ...(o.ttl !== undefined ? { ttl: o.ttl } : {}),
        });
        const { token: secret, ...info } = t;
        if (o.json) cli.json({ ...tokenJson(info, Date.now()), token: secret });
        else cli.out(secret);
        cli.err(`lessor: created token ${t.id} (${t.name}, ${t.role}); it is shown only this once, so store it now`);
      }),
    );

  token
    .command("list")
    .description("list tokens (never their secret part)")
    .option("--json", "print an array of tokens as JSON")
    .addHelpText("after", "\nExamples:\n  lessor token list\n  lessor token list --json")
    .action((o: { json?: boolean }) =>
      cli.run(async () => {
        const { api } = await cli.backend();
        const now = Date.now();
        const tokens = (await api.listTokens()).map((t) => tokenJson(t, now));
        if (o.json) {
          cli.json(tokens);
          return;
        }
        if (tokens.length === 0) {
          cli.err("no tokens; create one with lessor token create");
          return;
        }
        const rows = tokens.map((t) => [
          t.id,
          t.name,
          t.role,
          t.agent ?? list(t.actFor),
          t.state,
          shortTime(Date.parse(t.createdAt)),
          t.expiresAt === null ? "never" : shortTime(Date.parse(t.expiresAt)),
        ]);
        for (const line of table(["ID", "NAME", "ROLE", "FOR", "STATE", "CREATED", "EXPIRES"], rows)) cli.out(line);
        if (tokens.some((t) => t.state === "unverified"))
          cli.err("lessor: unverified tokens authenticate no one (made before this lessor MACed tokens, or written into the database without the key); revoke them and create new ones");
      }),
    );

  token
    .command("revoke <id>")
    .description("revoke a token at once (connections that used it are refused from their next handshake)")
    .option("--json", 'print { "revoked": true|false } as JSON')
    .addHelpText("after", "\nExamples:\n  lessor token revoke 0123456789abcdef")
    .action((id: string, o: { json?: boolean }) =>
      cli.run(async () => {
        const { api } = await cli.backend();
        const r = await api.revokeToken(id);
        if (o.json) cli.json(r);
        if (r.revoked) {
          if (!o.json) cli.out(`revoked token ${id}`);
          return EXIT.ok;
        }
        cli.err(`lessor: no live token has the id ${id} (unknown or already revoked); see lessor token list`);
        return EXIT.notFound;
      }),
    );
}
