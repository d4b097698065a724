/**
 * The person in the loop (src/vault/approvals.ts): `lessor approvals` lists the lease requests waiting
 * for a decision, `lessor approve ID` and `lessor deny ID` decide one. Admin only (the owner, or an
 * admin token); every decision is audited.
 */
import type { Command } from "commander";
import type { Cli } from "../cli.js";
import type { WireApproval } from "../../protocol/registry.js";
import { approvalValueText, type ApprovalTerms } from "../../protocol/approval-value.js";
import { quoteText } from "../../base/text.js";
import { confirm, PromptCancelled } from "../format/prompt.js";
import { EXIT } from "../exit-codes.js";

type ApprovalRow = WireApproval;

/** The `value:` line (src/protocol/approval-value.ts): who will hold the value, and what the proxy may send with it. */
export function valueLine(a: ApprovalTerms): string {
  return `value: ${approvalValueText(a)}`;
}

/**
 * The lines that show one approval to the person deciding it. The reason is the agent's own text: it is
 * quoted, so that one padded with spaces to wrap like the lines around it (a made-up "to send it to:")
 * still reads as what the agent wrote.
 */
export function describeApproval(a: ApprovalRow): string[] {
  return [
    `${a.id}  ${a.state}`,
    `  agent ${JSON.stringify(a.agent)} asks for ${a.secret} (rule ${JSON.stringify(a.rule)})`,
    `  to send it to: ${a.anyDomain && a.hosts.length === 0 ? "any host" : a.hosts.join(", ")}`,
    `  ${valueLine(a)}`,
    `  lease: ${a.ttlMs === null ? "the rule's ttl" : `ttl ${Math.round(a.ttlMs / 1000)}s`}${a.maxUses === null ? "" : `, at most ${a.maxUses} uses`}`,
    `  why (the agent's words): ${a.reason === null ? "(no reason given)" : quoteText(a.reason, 200)}`,
    `  asked by ${a.requestedBy} at ${new Date(a.requestedAt).toISOString()}; lapses at ${new Date(a.expiresAt).toISOString()}`,
    ...(a.decidedBy !== null ? [`  decided by ${a.decidedBy}${a.decisionReason ? `: ${quoteText(a.decisionReason, 200)}` : ""}`] : []),
  ];
}

export function registerApproval(program: Command, cli: Cli): void {
  program
    .command("approvals")
    .description("list the lease requests waiting for a person's approval (rules with approval = \"required\")")
    .option("--all", "also the decided and used ones, until they lapse")
    .option("--json", "print an array of approvals as JSON")
    .addHelpText("after", "\nThen: lessor approve ID, or lessor deny ID.\n\nExamples:\n  lessor approvals\n  lessor approvals --all --json")
    .action((o: { all?: boolean; json?: boolean }) =>
      cli.run(async () => {
        const { api } = await cli.backend();
        const rows = await api.api.approval_list(o.all ? { all: true } : {});
        if (o.json) return void cli.json(rows);
        if (rows.length === 0) return void cli.out(o.all ? "no approvals" : "no request is waiting for approval");
        for (const [i, a] of rows.entries()) {
          if (i > 0) cli.out();
          for (const line of describeApproval(a)) cli.out(line);
        }
      }),
    );

  for (const approve of [true, false]) {
    const name = approve ? "approve" : "deny";
    const cmd = program
      .command(`${name} <id>`)
      .description(approve ? "approve a pending lease request: the same request from the same agent then gets its lease, once (within 10 minutes)" : "deny a pending lease request: the same request is refused until the decision lapses (10 minutes)")
      .option("--reason <text>", "why, recorded in the audit trail (and shown to the agent on a denial)")
      .option("--json", "print the decided approval as JSON");
    // On a terminal, approve shows the request and asks first (the id may be the agent's choice).
    if (approve) cmd.option("--yes", "on a terminal, approve without showing the request and asking first");
    cmd
      .addHelpText("after", `\nAn id that names no open approval (unknown, lapsed or already decided) exits 2.\n\nExamples:\n  lessor approvals\n  lessor ${name} 01890a5d-ac96-774b-bcce-b302099a8057${approve ? "" : ' --reason "not during the freeze"'}`)
      .action((id: string, o: { reason?: string; json?: boolean; yes?: boolean }) =>
        cli.run(async () => {
          const { api } = await cli.backend();
          // The id a person types is often the one the agent handed them: on a terminal, show what it
          // approves and decide only on a "y" (an unknown or decided id falls through to its error).
          if (approve && o.yes !== true && process.stdin.isTTY === true) {
            const shown = (await api.api.approval_list({ all: true })).find((x) => x.id === id && x.state === "pending");
            if (shown !== undefined) {
              for (const line of describeApproval(shown)) cli.err(line);
              let yes = false;
              try {
                yes = await confirm("Approve this request? [y/N] ", process.stdin, process.stderr);
              } catch (e) {
                if (!(e instanceof PromptCancelled)) throw e;
              }
              if (!yes) {
                cli.err("lessor: not approved; the request is still pending");
                return EXIT.error;
              }
            }
          }
          const a = await api.api.approval_decide({ id, approve, ...(o.reason !== undefined ? { reason: o.reason } : {}) });
          if (o.json) return void cli.json(a);
          cli.out(approve ? `approved: agent ${JSON.stringify(a.agent)} may now take its lease on ${a.secret} (until ${new Date(a.expiresAt).toISOString()})` : `denied: agent ${JSON.stringify(a.agent)} is refused ${a.secret}`);
          for (const line of describeApproval(a).slice(1)) cli.out(line);
        }),
      );
  }
}
