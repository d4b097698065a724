/**
 * A process stamp names one process for as long as the machine runs: `<pid>.<start>.<boot>`, its pid,
 * its start time (clock ticks after boot, field 22 of /proc/<pid>/stat) and the first 12 hex digits of
 * the kernel's boot id. A pid is reused; a pid with the same start time in the same boot is the same
 * process. A session token (lessor run --vault-session) carries the stamp of the run that asked for
 * it, and the daemon revokes the token once that process is gone (src/server/session-sweep.ts), so a
 * run killed outright (kill -9: its finally never runs) does not leave its token valid for its ttl.
 * Linux only (/proc); elsewhere there is no stamp, and such a token ends with the run or its ttl.
 */
import { readFileSync } from "node:fs";
import { PROCESS_STAMP_RE } from "../vault/tokens.js";

let boot: string | null | undefined;

/** The first 12 hex digits of this boot's id, or null when it cannot be read. */
export function bootId(): string | null {
  if (boot !== undefined) return boot;
  try {
    const id = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim().replaceAll("-", "").toLowerCase();
    boot = /^[0-9a-f]{12}/.test(id) ? id.slice(0, 12) : null;
  } catch {
    boot = null;
  }
  return boot;
}

/** The start time of process `pid` (clock ticks after boot), or null when there is no such process. */
function startTime(pid: number): string | null {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "latin1");
  } catch {
    return null;
  }
  // The command name (field 2) is in parentheses and may hold spaces and ')': count after the last one.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields from the state (field 3) on: the start time is field 22, index 19 here.
  const t = fields[19];
  // A zombie is gone for this purpose: it runs no code and holds no connection.
  return t !== undefined && /^\d{1,20}$/.test(t) && fields[0] !== "Z" && fields[0] !== "X" ? t : null;
}

/** The stamp of live process `pid`, or null (no such process, not Linux). */
export function processStamp(pid: number | undefined): string | null {
  if (pid === undefined || !Number.isSafeInteger(pid) || pid <= 0) return null;
  const b = bootId();
  const t = b === null ? null : startTime(pid);
  return b === null || t === null ? null : `${pid}.${t}.${b}`;
}

/**
 * Whether the process `stamp` names still runs: "gone" when it is of this boot and its pid is no
 * process, or another one (a different start time); "alive" when it runs; "foreign" when the stamp is
 * not one this host can judge (another boot, or another machine sharing the database: its daemon sweeps it).
 */
export function stampState(stamp: string): "alive" | "gone" | "foreign" {
  const m = PROCESS_STAMP_RE.exec(stamp);
  const b = bootId();
  if (m === null || b === null || m[3] !== b) return "foreign";
  return processStamp(Number(m[1])) === stamp ? "alive" : "gone";
}
