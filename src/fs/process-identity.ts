/**
 * Whether a process named by a file (a lock's holder, an export's temporary file) or by a claim in the
 * store (src/vault/rotation-claim.ts, through src/config/local-processes.ts) is still the one that wrote it: a pid alone is reused, so on
 * Linux its start time (field 22 of /proc/<pid>/stat) is recorded beside it and compared.
 */
import { readFileSync } from "node:fs";

/** A process as recorded: its pid and, where known, its start time. */
export interface ProcessId {
  pid: number;
  start: string | null;
}

/** `pid`'s start time in clock ticks since boot (Linux), or null when unknown. */
export function startTime(pid: number): string | null {
  return procStat(pid)?.start ?? null;
}

/** Whether `h` names a process that is alive now and (when start times are known) the same process. */
export function isRunning(h: ProcessId): boolean {
  try {
    process.kill(h.pid, 0);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ESRCH") return false;
    if (code !== "EPERM") return true; // cannot tell: assume it is alive
  }
  const stat = procStat(h.pid);
  if (stat === null) return true; // no /proc: the pid alone has to do
  if (stat.state === "Z" || stat.state === "X") return false; // exited, not yet reaped
  if (h.start !== null && stat.start !== h.start) return false; // the pid was reused by another process
  return true;
}

/** State (field 3) and start time (field 22) from /proc/<pid>/stat, or null off Linux or on error. */
export function procStat(pid: number): { state: string; start: string } | null {
  if (process.platform !== "linux") return null;
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return null;
  }
  // Field 2 (comm) is in parentheses and may itself hold spaces and ")"; fields 3.. follow the last ")".
  const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const state = rest[0];
  const start = rest[22 - 3];
  if (state === undefined || start === undefined || !/^[0-9]+$/.test(start)) return null;
  return { state, start };
}
