/** `lessor audit tail|query|verify|recover`: read, check and recover the audit trail. See docs/cli/admin.md. */
import type { Command } from "commander";
import { UsageError, type Cli } from "../cli.js";
import { EXIT } from "../exit-codes.js";
import { table } from "../format/table.js";
import { jsonText } from "../format/terminal-safe.js";
import { iso, parseTimeOption, shortTime } from "../format/time.js";
import type { WireAuditEvent } from "../../protocol/registry.js";
import { AUDIT_TYPES } from "../../base/types.js";
import { escapeUnsafe, quoteText } from "../../base/text.js";
import type { AuditBreak } from "../../audit/verify.js";
import { positiveInt } from "../format/options.js";

/** An audit event as printed by --json: the wire event plus `timeIso`. */
function eventJson(e: WireAuditEvent): WireAuditEvent & { timeIso: string } {
  return { ...e, timeIso: iso(e.time)! };
}

function dash(s: string | null): string {
  return s === null || s === "" ? "-" : s;
}

/**
 * A reason as the table shows it: quoted when it holds a run of spaces or anything but printable
 * ASCII, since some reasons are an agent's own words (an approval's), and one padded to wrap on the
 * terminal could pass for more rows of the trail.
 */
function reasonCell(r: string | null): string {
  if (r === null || r === "") return "-";
  return /\s{2,}|[^\x20-\x7e]/.test(r) ? quoteText(r, 200) : r;
}

function rows(events: readonly WireAuditEvent[]): string[][] {
  return events.map((e) => [
    String(e.seq),
    shortTime(e.time),
    e.type,
    e.outcome,
    e.actorId,
    dash(e.agent),
    dash(e.secret),
    dash(e.leaseId),
    reasonCell(e.reason),
  ]);
}

const HEADERS = ["SEQ", "TIME", "TYPE", "OUTCOME", "ACTOR", "AGENT", "SECRET", "LEASE", "REASON"];

function printEvents(cli: Cli, events: readonly WireAuditEvent[], header: boolean): void {
  const lines = table(HEADERS, rows(events));
  for (const line of header ? lines : lines.slice(1)) cli.out(line);
}

/** Event types from --type values (repeated or comma-separated), checked against the known list. */
function readTypes(values: readonly string[]): string[] {
  const out = values.flatMap((v) => v.split(",")).map((s) => s.trim()).filter((s) => s !== "");
  for (const t of out)
    if (!(AUDIT_TYPES as readonly string[]).includes(t))
      throw new UsageError(`unknown audit event type ${JSON.stringify(t.slice(0, 40))}; use one of: ${AUDIT_TYPES.join(", ")}`);
  return out;
}

function sleep(ms: number, stop: { wake?: () => void }): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    stop.wake = () => {
      clearTimeout(t);
      resolve();
    };
  });
}

export function registerAudit(program: Command, cli: Cli): void {
  const audit = program
    .command("audit")
    .description("read and verify the tamper-evident audit trail")
    .addHelpText("after", "\nExamples:\n  lessor audit tail -n 50\n  lessor audit query --agent claude --since 1h\n  lessor audit verify");

  audit
    .command("tail")
    .description("print the newest events; --follow keeps printing new ones until Ctrl-C")
    .option("-n, --lines <n>", "how many of the newest events", "20")
    .option("-f, --follow", "keep polling for new events (every 500 ms) until interrupted")
    .option("--json", "print a JSON array (with --follow: one JSON event per line)")
    .addHelpText("after", "\nExamples:\n  lessor audit tail\n  lessor audit tail -n 100 --json\n  lessor audit tail --follow")
    .action((o: { lines: string; follow?: boolean; json?: boolean }) =>
      cli.run(async () => {
        const n = positiveInt("-n", o.lines);
        const { api } = await cli.backend();
        const newest = (await api.auditQuery({ order: "desc", limit: Math.min(n, 10_000) })).reverse();
        if (!o.follow) {
          if (o.json) cli.json(newest.map(eventJson));
          else printEvents(cli, newest, true);
          return;
        }
        const show = (events: readonly WireAuditEvent[], header: boolean): void => {
          if (o.json) for (const e of events) cli.stdout.write(`${jsonText(eventJson(e))}\n`);
          else if (events.length > 0) printEvents(cli, events, header);
        };
        show(newest, true);
        let after = newest.at(-1)?.seq ?? 0;
        const stop: { done: boolean; wake?: () => void } = { done: false };
        const onSignal = (): void => {
          stop.done = true;
          stop.wake?.();
        };
        process.on("SIGINT", onSignal);
        process.on("SIGTERM", onSignal);
        try {
          while (!stop.done) {
            await sleep(500, stop);
            if (stop.done) break;
            for (;;) {
              const page = await api.auditQuery({ afterSeq: after, order: "asc", limit: 1000 });
              if (page.length > 0) {
                show(page, false);
                after = page.at(-1)!.seq;
              }
              if (page.length < 1000) break;
            }
          }
        } finally {
          process.off("SIGINT", onSignal);
          process.off("SIGTERM", onSignal);
        }
      }),
    );

  audit
    .command("query")
    .description("search the trail by agent, secret, type, time and lease (oldest first)")
    .option("--agent <agent>", "only events about this agent")
    .option("--secret <name>", "only events about this secret (scope/name)")
    .option("--type <type...>", "only these event types (repeat or separate with commas)")
    .option("--since <when>", 'from this time on: a duration back from now ("1h") or an ISO date')
    .option("--until <when>", "before this time: a duration back from now or an ISO date")
    .option("--lease <id>", "only events about this lease")
    .option("--limit <n>", "at most this many events (default 100, at most 10000)")
    .option("--desc", "newest first")
    .option("--json", "print a JSON array of events")
    .addHelpText(
      "after",
      "\nExamples:\n  lessor audit query --agent claude --since 1h\n  lessor audit query --type access_denied,auth_failed --since 2025-01-31 --json\n  lessor audit query --secret global/github-token --limit 10 --desc",
    )
    .action((o: { agent?: string; secret?: string; type?: string[]; since?: string; until?: string; lease?: string; limit?: string; desc?: boolean; json?: boolean }) =>
      cli.run(async () => {
        const now = Date.now();
        const types = o.type === undefined ? undefined : readTypes(o.type);
        const limit = o.limit === undefined ? undefined : positiveInt("--limit", o.limit);
        if (limit !== undefined && limit > 10_000) throw new UsageError("--limit is at most 10000");
        const since = o.since === undefined ? undefined : parseTimeOption("--since", o.since, now);
        const until = o.until === undefined ? undefined : parseTimeOption("--until", o.until, now);
        const secret = o.secret === undefined || o.secret.includes("/") ? o.secret : `global/${o.secret}`;
        const { api } = await cli.backend();
        const events = await api.auditQuery({
          ...(o.agent !== undefined ? { agent: o.agent } : {}),
          ...(secret !== undefined ? { secret } : {}),
          ...(types !== undefined && types.length > 0 ? { types: types as (typeof AUDIT_TYPES)[number][] } : {}),
          ...(since !== undefined ? { since: Math.max(0, since) } : {}),
          ...(until !== undefined ? { until: Math.max(0, until) } : {}),
          ...(o.lease !== undefined ? { leaseId: o.lease } : {}),
          ...(limit !== undefined ? { limit } : {}),
          order: o.desc ? "desc" : "asc",
        });
        if (o.json) cli.json(events.map(eventJson));
        else if (events.length === 0) cli.err("no events match");
        else printEvents(cli, events, true);
      }),
    );

  audit
    .command("verify")
    .description("check the whole hash chain and its keyed checkpoint; exit 1 when it does not verify")
    .option("--json", "print the result as JSON")
    .addHelpText("after", "\nExamples:\n  lessor audit verify\n  lessor audit verify --json || echo 'the audit trail was tampered with'")
    .action((o: { json?: boolean }) =>
      cli.run(async () => {
        const { api } = await cli.backend();
        const r = await api.auditVerify();
        let bad: WireAuditEvent | null = null;
        if (!r.ok && r.firstBad) {
          const found = await api.auditQuery({ afterSeq: r.firstBad.seq - 1, order: "asc", limit: 1 });
          bad = found[0]?.seq === r.firstBad.seq ? found[0] : null;
        }
        if (o.json) {
          cli.json({ ...r, ...(r.ok ? {} : { event: bad === null ? null : eventJson(bad) }) });
        } else if (r.ok) {
          cli.out(`audit trail verified: ${r.events} event${r.events === 1 ? "" : "s"}, head at event ${r.headSeq}, checkpoint matches`);
          for (const b of r.breaks ?? []) cli.out(breakLine(b));
        } else {
          cli.out(`audit trail does NOT verify: ${r.problem ?? "unknown problem"}`);
          if (r.firstBad) cli.out(`first bad event: ${r.firstBad.seq}${r.firstBad.id ? ` (id ${r.firstBad.id})` : ""}`);
          if (bad !== null) printEvents(cli, [bad], true);
        }
        return r.ok ? EXIT.ok : EXIT.error;
      }),
    );

  audit
    .command("recover")
    .description("record a break in a broken audit trail (what was found, and your reason) so that audited operations resume")
    .requiredOption("--reason <text>", "why you recover (one line): recorded in the audit trail")
    .option("--json", "print the result as JSON")
    .addHelpText(
      "after",
      '\nRun lessor audit verify first to see what is wrong. Nothing is repaired or hidden: the break is an\naudit event of its own, and verify reports it from then on.\n\nExamples:\n  lessor audit verify\n  lessor audit recover --reason "restored the database from backup, incident 42"',
    )
    .action((o: { reason: string; json?: boolean }) =>
      cli.run(async () => {
        const { api } = await cli.backend();
        const r = await api.auditRecover(o.reason);
        if (o.json) cli.json(r);
        else if (!r.recovered || r.found === null) cli.out("the audit trail is not broken; nothing to recover");
        else {
          cli.out(`recorded the break as event ${r.breakSeq}: ${escapeUnsafe(r.found.problem)}`);
          if (r.found.firstBadSeq !== null) cli.out(`events ${r.found.firstBadSeq} to ${r.breakSeq! - 1} cannot be verified; the rest of the trail is checked as before`);
          if (r.deferred > 0) cli.out(`${r.deferred} revocation and killswitch event${r.deferred === 1 ? "" : "s"} done while the trail was broken were appended after it`);
          cli.out("audited operations resume");
        }
        return EXIT.ok;
      }),
    );
}

/** One line on a recovery found in the trail. */
function breakLine(b: AuditBreak): string {
  const span = b.unverified > 0 ? `; events ${b.seq - b.unverified} to ${b.seq - 1} cannot be verified` : "";
  const why = b.reason === null ? "" : `, reason ${JSON.stringify(escapeUnsafe(b.reason))}`;
  return `break at event ${b.seq} (recovered ${shortTime(b.time)} by ${escapeUnsafe(b.actorId)}${why}): ${escapeUnsafe(b.found.problem ?? "unknown problem")}${span}`;
}
