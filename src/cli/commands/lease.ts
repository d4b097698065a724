/**
 * `lessor lease` (take a lease and print the value, for `$(...)`), `renew`, `revoke`, `killswitch`, `heartbeat` and
 * `leases`. See docs/cli/leases.md.
 */
import type { Command } from "commander";
import { UsageError, type Cli } from "../cli.js";
import { EXIT } from "../exit-codes.js";
import { leaseJson, leaseState } from "../format/lease.js";
import { checkDomains, positiveInt } from "../format/options.js";
import { addOptions, type OptionSpec } from "../option-spec.js";
import { list, table } from "../format/table.js";
import { relative, shortTime } from "../format/time.js";
import { unsafeForTerminal } from "../format/terminal-safe.js";
import { VaultError } from "../../base/errors.js";
import { parseDuration } from "../../vault/duration.js";
import { describeEngaged } from "../../vault/lockout.js";
import type { LeaseRecord } from "../../base/types.js";

function leaseLine(l: LeaseRecord, now: number): string {
  const uses = l.maxUses === null ? `${l.uses} uses` : `${l.uses}/${l.maxUses} uses`;
  return `lease ${l.id} for agent ${l.agent}, secret ${l.scope}/${l.name}: ${leaseState(l, now)}, expires ${shortTime(l.expiresAt)} (${relative(l.expiresAt, now)}), ${uses}, domains ${l.anyDomain ? "any" : list(l.domains)}`;
}

/**
 * Says on stderr (stdout and --json unchanged) when a renewal ends sooner than `--ttl` asked: the
 * rule's ttl caps a renewal, and its max_ttl the lease's whole life (docs/policy.md).
 */
function noteCappedRenewal(cli: Cli, lease: LeaseRecord, ttl: string, asked: number): void {
  // A second of slack for the time between `asked` and the daemon's own clock reading.
  if (lease.expiresAt >= asked + parseDuration(ttl) - 1000) return;
  const why =
    lease.expiresAt >= lease.maxExpiresAt
      ? `the lease may not live past its max_ttl from issue (${shortTime(lease.maxExpiresAt)})`
      : `a renewal lasts at most the ttl of rule ${JSON.stringify(lease.rule)}`;
  cli.err(`lessor: note: the lease expires ${shortTime(lease.expiresAt)} (${relative(lease.expiresAt, Date.now())}), shorter than --ttl ${ttl} asked: ${why}`);
}

const KILL_REFUSAL = "the killswitch revokes every live lease and stdin is not a terminal to confirm on; pass --yes to do it";

/** `lessor lease`'s lifetime unless --ttl says otherwise (the policy's ttl caps it too). */
export const DEFAULT_LEASE_TTL = "5m";

/** `lessor lease`'s options (shared with the start-up fast path). */
export const LEASE_OPTIONS: readonly OptionSpec[] = [
  { name: "agent", value: "<agent>", description: "the agent the lease is for (an agent connected as itself may leave it out)" },
  { name: "domain", value: "<host>", description: "a host (or *.suffix) the credential is for; repeat for more", repeat: true },
  { name: "ttl", value: "<duration>", description: `lease lifetime such as 5m or 1h (default ${DEFAULT_LEASE_TTL}; capped by policy)` },
  { name: "max-uses", value: "<n>", description: "how many times the lease may be used (default: 1 when printing the value, the one use being the print; capped by policy)" },
  { name: "json", description: "print the lease grant as JSON and do not access the value" },
];

/** `lessor lease`'s parsed options. */
export interface LeaseOptions {
  agent?: string | undefined;
  domain?: string[] | undefined;
  ttl?: string | undefined;
  maxUses?: string | undefined;
  json?: boolean | undefined;
}

/** Checks a --ttl before anything is asked, so that the message names the option. */
function checkTtl(ttl: string): void {
  try {
    parseDuration(ttl);
  } catch (e) {
    throw new UsageError(`--ttl: ${(e as Error).message}`);
  }
}

/**
 * Runs `lessor lease NAME`: takes the lease and prints the value (or, with --json, the grant), and
 * the lease's id on stderr. Casual `$(lessor lease …)` use must not pile up live leases against the
 * per-agent cap, so the lease lasts {@link DEFAULT_LEASE_TTL} unless --ttl says otherwise, and when
 * the value is printed the print is its one use (unless --max-uses says otherwise): it is then used
 * up at once and no longer counts as live.
 */
export function leaseAction(cli: Cli, name: string, o: LeaseOptions): Promise<void> {
  return cli.run(async () => {
    const domains = o.domain ?? [];
    checkDomains(domains);
    const maxUses = o.maxUses === undefined ? (o.json ? undefined : 1) : positiveInt("--max-uses", o.maxUses);
    if (o.ttl !== undefined) checkTtl(o.ttl);
    const { api } = await cli.backend();
    const request = {
      ...(o.agent !== undefined ? { agent: o.agent } : {}),
      secret: name,
      ...(domains.length > 0 ? { domains } : {}),
      ttl: o.ttl ?? DEFAULT_LEASE_TTL,
      ...(maxUses !== undefined ? { maxUses } : {}),
    };
    try {
      if (o.json) {
        const lease = await api.requestLease(request);
        cli.json(leaseJson(lease));
        cli.err(`lessor: lease ${lease.id} expires ${relative(lease.expiresAt, Date.now())}`);
        return;
      }
      // The lease and its read in one call. With no target the vault reads it for the first exact
      // --domain, else for the lease's first exact host (none when the rule has any_domain), and a
      // refused read leaves no live lease behind (it is revoked in the same commit).
      const got = await api.leaseAndAccess(request);
      try {
        const bytes = got.value.expose();
        // On a terminal the value is shown: one holding escapes would act on it instead (as secret get --reveal).
        const unsafe = cli.stdout.isTTY ? unsafeForTerminal(bytes) : null;
        if (unsafe !== null) {
          await api.revokeLease(got.lease.id, "lease: the value was not printed to a terminal").catch(() => undefined);
          throw new VaultError(
            "invalid_request",
            `the value of ${got.lease.scope}/${got.lease.name} holds ${unsafe}, which would act on this terminal rather than be shown, so it was not printed and lease ${got.lease.id} was revoked; take it into a file or a pipe ($(lessor lease …), lessor lease … > FILE)`,
          );
        }
        await new Promise<void>((resolve, reject) => cli.stdout.write(bytes, (e) => (e ? reject(e) : resolve())));
        if (cli.stdout.isTTY) cli.stdout.write("\n");
      } finally {
        got.value.wipe();
      }
      const l = got.lease;
      const left = l.maxUses === null ? "" : l.uses >= l.maxUses ? "; used up by this print" : `; ${l.maxUses - l.uses} use${l.maxUses - l.uses === 1 ? "" : "s"} left`;
      cli.err(`lessor: lease ${l.id} expires ${relative(l.expiresAt, Date.now())}${left}`);
    } catch (e) {
      // Only a caller connected as an agent may leave --agent out; say so in the CLI's terms.
      if (o.agent === undefined && e instanceof VaultError && e.code === "invalid_request" && /must name the agent/.test(e.message))
        throw new UsageError("say which agent the lease is for with --agent AGENT (only a caller connected as an agent, e.g. through LESSOR_SOCKET, may leave it out)");
      throw e;
    }
  });
}

export function registerLease(program: Command, cli: Cli): void {
  addOptions(
    program
      .command("lease <name>")
      .description("take a lease on a secret for an agent and print the value (only the value, for $(...)); --json prints the grant instead; the lease id goes to stderr"),
    LEASE_OPTIONS,
  )
    .addHelpText(
      "after",
      "\nThe lease lasts 5m unless --ttl says otherwise, and printing the value is its one use unless --max-uses says otherwise;\nits id goes to stderr. An agent connected as itself (LESSOR_SOCKET, or LESSOR_ADDR with a token) may leave out --agent.\n\nExamples:\n  export GITHUB_TOKEN=$(lessor lease github-token --agent claude --domain api.github.com)\n  LESSOR_SOCKET=/srv/lessor/lessor.sock lessor lease github-token --domain api.github.com\n  lessor lease env:prod/db-password --agent deployer --domain db.internal --ttl 5m --max-uses 1\n  lessor lease github-token --agent claude --domain api.github.com --json",
    )
    .action((name: string, o: LeaseOptions) => leaseAction(cli, name, o));

  program
    .command("renew <lease-id>")
    .description("extend a lease to now + --ttl (at most its rule's ttl, never past its max_ttl from issue; within max_renewals)")
    .option("--ttl <duration>", "new lifetime from now, such as 10m (default and upper bound: the rule's ttl)")
    .option("--json", "print the renewed lease as JSON")
    .addHelpText(
      "after",
      "\nA renewal lasts at most the granting rule's ttl (15m unless the policy says otherwise): a longer --ttl is cut\nto it, and a note on stderr says so. Its max_ttl bounds the lease's whole life from issue.\n\nExamples:\n  lessor renew 01940000-0000-7000-8000-000000000000\n  lessor renew 01940000-0000-7000-8000-000000000000 --ttl 10m --json",
    )
    .action((id: string, o: { ttl?: string; json?: boolean }) =>
      cli.run(async () => {
        if (o.ttl !== undefined) checkTtl(o.ttl);
        const { api } = await cli.backend();
        const asked = Date.now();
        const lease = await api.renewLease(id, o.ttl === undefined ? undefined : { ttl: o.ttl });
        if (o.json) cli.json(leaseJson(lease));
        else cli.out(`renewed ${leaseLine(lease, Date.now())}`);
        if (o.ttl !== undefined) noteCappedRenewal(cli, lease, o.ttl, asked);
      }),
    );

  program
    .command("revoke [lease-id]")
    .description("revoke one lease, every lease of an agent (--agent), or every lease (--all, like killswitch)")
    .option("--agent <agent>", "revoke every lease of this agent not yet revoked or expired (used-up ones too)")
    .option("--all", "revoke every lease not yet revoked or expired (asks for confirmation unless --yes)")
    .option("--reason <text>", "why, recorded in the audit trail")
    .option("--yes", "do not ask for confirmation (needed for --all when stdin is not a terminal)")
    .option("--json", 'print { "revoked": N } as JSON')
    .addHelpText(
      "after",
      "\nExamples:\n  lessor revoke 01940000-0000-7000-8000-000000000000\n  lessor revoke --agent claude --reason \"session ended\"\n  lessor revoke --all --yes --reason \"laptop lost\"",
    )
    .action((id: string | undefined, o: { agent?: string; all?: boolean; reason?: string; yes?: boolean; json?: boolean }) =>
      cli.run(async () => {
        const picked = [id !== undefined, o.agent !== undefined, o.all === true].filter(Boolean).length;
        if (picked !== 1) throw new UsageError("say what to revoke: a lease id, --agent AGENT, or --all (exactly one of them)");
        let revoked: number;
        let what: string;
        if (id !== undefined) {
          const { api } = await cli.backend();
          revoked = (await api.revokeLease(id, o.reason)).revoked ? 1 : 0;
          what = revoked === 1 ? `revoked lease ${id}` : `lease ${id} was already revoked or expired; nothing changed`;
        } else if (o.agent !== undefined) {
          const { api } = await cli.backend();
          revoked = (await api.revokeAllForAgent(o.agent, o.reason)).revoked;
          what = `revoked ${revoked} lease${revoked === 1 ? "" : "s"} of agent ${o.agent}`;
        } else {
          const r = await killswitch(cli, o);
          if (r === null) return EXIT.error;
          revoked = r;
          what = `revoked ${revoked} lease${revoked === 1 ? "" : "s"}`;
        }
        if (o.json) cli.json({ revoked });
        else cli.out(what);
      }),
    );

  program
    .command("killswitch")
    .description("revoke every live lease now and refuse every new lease until an admin releases it (asks for confirmation unless --yes); --release lifts it")
    .option("--reason <text>", "why, recorded in the audit trail")
    .option("--release", "release the killswitch: leases are granted again as the policy allows")
    .option("--yes", "do not ask (required when stdin is not a terminal)")
    .option("--json", 'print { "revoked": N } (with --release: { "released": true|false }) as JSON')
    .addHelpText("after", '\nExamples:\n  lessor killswitch\n  lessor killswitch --yes --reason "token leaked in a log"\n  lessor killswitch --release --reason "leaked token rotated"')
    .action((o: { reason?: string; release?: boolean; yes?: boolean; json?: boolean }) =>
      cli.run(async () => {
        if (o.release) {
          const { api } = await cli.backend();
          const r = await api.releaseKillswitch(o.reason);
          if (o.json) cli.json(r);
          else cli.out(r.released ? "killswitch released: leases are granted again as the policy allows" : "the killswitch was not engaged; nothing changed");
          return;
        }
        const revoked = await killswitch(cli, o);
        if (revoked === null) return EXIT.error;
        if (o.json) cli.json({ revoked });
        else cli.out(`killswitch: revoked ${revoked} lease${revoked === 1 ? "" : "s"}`);
      }),
    );

  program
    .command("heartbeat")
    .description("check in with the dead-man switch ([vault] heartbeat in lessor.toml): without a heartbeat for that long, the killswitch is pulled")
    .option("--reason <text>", "a note, recorded in the audit trail")
    .option("--json", 'print { "everyMs", "lastAt", "lastBy", "dueAt" } as JSON')
    .addHelpText("after", '\nExamples:\n  lessor heartbeat\n  */30 * * * * lessor heartbeat --reason "still watching"   (a crontab line)')
    .action((o: { reason?: string; json?: boolean }) =>
      cli.run(async () => {
        const { api } = await cli.backend();
        const r = await api.heartbeat(o.reason);
        // A heartbeat never releases the killswitch, and one that came after the deadline fired the
        // switch first: say so, or a crontab line would report all is well while nothing is granted.
        const ks = r.dueAt === null ? null : (await api.describe().catch(() => null))?.killswitch;
        if (ks?.engaged === true) cli.err(`lessor: ${describeEngaged(ks)}: a heartbeat does not release it; no lease is granted until an admin runs lessor killswitch --release`);
        if (o.json) cli.json(r);
        else if (r.dueAt === null)
          cli.err("lessor: heartbeat recorded, but no dead-man switch is set: add heartbeat = \"8h\" (or another period) to [vault] in lessor.toml to arm one");
        else cli.out(`heartbeat recorded: the dead-man switch pulls the killswitch at ${shortTime(r.dueAt)} (${relative(r.dueAt)}) unless another comes`);
      }),
    );

  program
    .command("leases")
    .description("list leases, newest first")
    .option("--agent <agent>", "only this agent's leases")
    .option("--secret <name>", "only leases on this secret (scope/name or a bare name)")
    .option("--live", "only leases that can still be used")
    .option("--limit <n>", "at most this many (default 1000)")
    .option("--json", "print an array of leases as JSON")
    .addHelpText("after", "\nExamples:\n  lessor leases --live\n  lessor leases --agent claude --json")
    .action((o: { agent?: string; secret?: string; live?: boolean; limit?: string; json?: boolean }) =>
      cli.run(async () => {
        const limit = o.limit === undefined ? undefined : positiveInt("--limit", o.limit);
        const { api } = await cli.backend();
        const rows = await api.listLeases({
          ...(o.agent !== undefined ? { agent: o.agent } : {}),
          ...(o.secret !== undefined ? { secret: o.secret } : {}),
          ...(o.live ? { live: true } : {}),
          ...(limit !== undefined ? { limit } : {}),
        });
        const now = Date.now();
        if (o.json) {
          cli.json(rows.map((l) => leaseJson(l, now)));
          return;
        }
        if (rows.length === 0) {
          cli.err(o.live ? "no live leases" : "no leases");
          return;
        }
        const lines = table(
          ["ID", "AGENT", "SECRET", "STATE", "EXPIRES", "USES", "DOMAINS"],
          rows.map((l) => [
            l.id,
            l.agent,
            `${l.scope}/${l.name}`,
            leaseState(l, now),
            relative(l.expiresAt, now),
            l.maxUses === null ? String(l.uses) : `${l.uses}/${l.maxUses}`,
            l.anyDomain ? "any" : list(l.domains),
          ]),
        );
        for (const line of lines) cli.out(line);
      }),
    );
}

/** Past this many live leases, the killswitch's prompt says "1000+" rather than count them all. */
const KILL_COUNT_MAX = 1000;

/** Confirms (unless --yes) and pulls the killswitch; null when the user said no. */
async function killswitch(cli: Cli, o: { reason?: string; yes?: boolean }): Promise<number | null> {
  if (!o.yes) {
    if (process.stdin.isTTY !== true) throw new UsageError(KILL_REFUSAL);
    const { confirm, PromptCancelled } = await import("../format/prompt.js");
    const { api } = await cli.backend();
    const { listAllLeases } = await import("../../backend/all-leases.js");
    const n = (await listAllLeases(api, { live: true }, KILL_COUNT_MAX + 1)).length;
    const live = n > KILL_COUNT_MAX ? `${KILL_COUNT_MAX}+` : String(n);
    const ok = await confirm(`Revoke all ${live} live lease${n === 1 ? "" : "s"} now? [y/N] `, process.stdin, process.stderr).catch((e: unknown) => {
      if (e instanceof PromptCancelled) return false; // Ctrl-C or end of input: the same as no
      throw e;
    });
    if (!ok) {
      cli.err("lessor: nothing was revoked");
      return null;
    }
  }
  const { api } = await cli.backend();
  const { revoked } = await api.killswitch(o.reason);
  cli.err("lessor: the killswitch is engaged: no lease is granted until an admin runs lessor killswitch --release");
  return revoked;
}
