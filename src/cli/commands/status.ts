/** `lessor status`: where the vault is and what state it is in (never a secret). See docs/cli/admin.md. */
import type { Command } from "commander";
import type { Cli } from "../cli.js";
import { formatDuration } from "../../vault/duration.js";
import { relative, shortTime } from "../format/time.js";
import type { KillswitchState } from "../../vault/lockout.js";
import type { PolicyStatus } from "../../vault/vault.js";
import { policyVersionText, storedText } from "../format/policy-version.js";

/** What a non-admin is shown for a file path the daemon keeps to admins. */
const HIDDEN = "(shown to admins only)";

function policyLine(p: PolicyStatus): string {
  const source = p.source ?? HIDDEN;
  if (p.stale !== undefined && p.stale.stored === p.digest)
    return `${source}: ${p.rules} rule${p.rules === 1 ? "" : "s"}, digest ${p.digest}; STALE LIMITS, every lease is denied here: this instance's [vault] limits (${(p.stale.limits ?? []).join(", ")}) are not the ones in force on the shared database (another instance started or reloaded since with other limits); give it the same [vault] section as the instance in force and restart it`;
  if (p.stale !== undefined)
    return `${source}: STALE, every lease is denied here: digest ${p.digest}, but the shared database has ${storedText(p.stale.stored, true)} in force${p.stale.at > 0 ? ` (since ${new Date(p.stale.at).toISOString()}${p.stale.by === "" ? "" : `, by ${p.stale.by}`})` : ""}; copy that policy file here, or run lessor policy reload here to put this one in force everywhere`;
  if (p.state === "broken") return `${source}: BROKEN, every lease is denied until it is fixed and reloaded (lessor policy reload): ${p.error ?? "it could not be loaded"}`;
  return `${source}: ${p.rules} rule${p.rules === 1 ? "" : "s"}, digest ${p.digest}`;
}

function killswitchLine(k: KillswitchState): string {
  if (!k.engaged) return k.at === null ? "off" : `off (released ${new Date(k.at).toISOString()}${k.by === null ? "" : ` by ${k.by}`})`;
  const since = k.at === null ? "" : ` since ${new Date(k.at).toISOString()}`;
  return `ENGAGED${since}${k.by === null ? "" : ` by ${k.by}`}${k.reason === null ? "" : ` (${JSON.stringify(k.reason)})`}: no lease is granted until lessor killswitch --release`;
}

function heartbeatLine(h: { everyMs: number | null; lastAt: number | null; lastBy: string | null; dueAt: number | null }, killswitch: KillswitchState | undefined, staleLimits: readonly string[] | undefined): string {
  if (h.everyMs === null) return "off (no dead-man switch: [vault] heartbeat is not set)";
  // This instance's [vault] limits are not the ones in force: it neither arms nor fires its switch
  // (the instances in line decide, by theirs), so its own deadline means nothing here.
  if (staleLimits?.includes("heartbeat") === true) return `every ${formatDuration(h.everyMs)} here, but not in force (STALE LIMITS, see policy): the instances in line decide the dead-man switch`;
  if (h.dueAt === null) return `every ${formatDuration(h.everyMs)}, not armed yet (it arms at the next open of the vault or lessor heartbeat)`;
  const last = h.lastAt === null ? "" : `; last ${shortTime(h.lastAt)}${h.lastBy === null ? "" : ` by ${h.lastBy}`}`;
  const due =
    h.dueAt >= Date.now()
      ? `the killswitch is pulled ${relative(h.dueAt)} without lessor heartbeat`
      : killswitch?.engaged === true
        ? `overdue since ${shortTime(h.dueAt)} (the killswitch is engaged)`
        : `overdue since ${shortTime(h.dueAt)}: the killswitch is pulled at the next grant, use or daemon check`;
  return `every ${formatDuration(h.everyMs)}: ${due}${last}`;
}

export function registerStatus(program: Command, cli: Cli): void {
  program
    .command("status")
    .description("show the mode (daemon or embedded), home, identity, store, master key, policy, killswitch, heartbeat and audit head")
    .option("--json", "print the status as JSON")
    .addHelpText("after", "\nExamples:\n  lessor status\n  lessor status --json | jq .policy.digest")
    .action((o: { json?: boolean }) =>
      cli.run(async () => {
        const backend = await cli.backend();
        const s = await backend.api.describe();
        const daemon = backend.mode === "daemon" ? s.daemon : null;
        if (o.json) {
          cli.json({
            mode: backend.mode,
            home: backend.endpoint === null ? backend.home : null,
            endpoint: backend.endpoint,
            identity: s.identity,
            store: s.store,
            keySource: s.keySource,
            keyId: s.keyId,
            keyIds: s.keyIds,
            cipher: s.cipher,
            policy: s.policy,
            killswitch: s.killswitch,
            heartbeat: s.heartbeat ?? null,
            auditHead: s.auditHead,
            version: s.daemon.version,
            daemon,
          });
          return;
        }
        const who = s.identity.agent !== undefined ? `${s.identity.role} ${s.identity.id} (agent ${s.identity.agent})` : `${s.identity.role} ${s.identity.id}`;
        const rows: [string, string][] = [
          ["mode", backend.mode === "daemon" ? "daemon (connected over its socket)" : "embedded (no daemon running; the vault is opened in this process)"],
          backend.endpoint === null ? ["home", backend.home] : ["daemon at", backend.endpoint],
          ["identity", `${who} via ${s.identity.transport}`],
          ["store", s.store],
          ["key source", s.keySource ?? HIDDEN],
          ["key id", s.keyIds.length > 1 ? `${s.keyId} (also loaded: ${s.keyIds.filter((k) => k !== s.keyId).join(", ")})` : s.keyId],
          ["cipher", s.cipher],
          ["policy", policyLine(s.policy)],
          ["policy version", s.policy.load === undefined ? "unknown (a daemon older than this CLI)" : policyVersionText(s.policy)],
          ["killswitch", s.killswitch === undefined ? "unknown (a daemon older than this CLI)" : killswitchLine(s.killswitch)],
          ["heartbeat", s.heartbeat === undefined ? "unknown (a daemon older than this CLI)" : heartbeatLine(s.heartbeat, s.killswitch, s.policy.stale?.limits)],
          ["audit head", `event ${s.auditHead}`],
        ];
        if (daemon !== null)
          rows.push(["daemon", `version ${daemon.version}${daemon.pid === null ? "" : `, pid ${daemon.pid}`}, up ${formatDuration(Math.floor(daemon.uptimeMs / 1000) * 1000)}, ${daemon.connections} connection${daemon.connections === 1 ? "" : "s"}`]);
        const width = Math.max(...rows.map(([k]) => k.length)) + 1;
        for (const [k, v] of rows) cli.out(`${`${k}:`.padEnd(width)} ${v}`);
      }),
    );
}
