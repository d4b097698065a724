/**
 * A process stamp names one process for as long as the machine runs: `<pid>.<start>.<boot>.<ns>`, its
 * pid, its start time (clock ticks after boot, field 22 of /proc/<pid>/stat), the first 12 hex digits of
 * the kernel's boot id and the inode of the pid namespace the pid is counted in (this process's: the
 * kernel gives a Unix-socket peer's pid as seen from the receiver's namespace). A pid is reused; a pid
 * with the same start time in the same boot and namespace is the same process. Two daemons sharing a
 * store on one kernel in different pid namespaces (containers) each judge only their own stamps. A session token (lessor run --vault-session) carries the stamp of the run that asked for
 * it, and the daemon revokes the token once that process is gone (src/server/session-sweep.ts), so a
 * run killed outright (kill -9: its finally never runs) does not leave its token valid for its ttl.
 * Linux only (/proc); elsewhere there is no stamp, and such a token ends with the run or its ttl.
 *
 * A fifth part, `.<machine>`, names the machine (a hash of /etc/machine-id, when there is one): a stamp
 * of this machine but another boot names a process that died with that boot, so the daemon started
 * after a reboot sweeps a session token of a run the reboot ended (a copy the sandboxed command made
 * of it would otherwise work for the token's ttl). A stamp of another machine, or one without the part
 * (made before it existed, or where there is no machine id), is judged only by its own boot.
 * Machines cloned with one machine id that share a PostgreSQL store judge each other's stamps as past
 * boots: a live run's session there is ended (the failure is a refusal, never a wider grant).
 */
import { createHash } from "node:crypto";
import { readFileSync, readlinkSync } from "node:fs";
import { procStat } from "../fs/process-identity.js";
import { PROCESS_STAMP_RE } from "../vault/tokens.js";

let place: string | null | undefined;

/**
 * Where this process counts pids: `<first 12 hex digits of the boot id>.<pid namespace inode>`, or null
 * when either cannot be read (not Linux, no /proc).
 */
export function pidPlace(): string | null {
  if (place !== undefined) return place;
  try {
    const id = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim().replaceAll("-", "").toLowerCase();
    const ns = /^pid:\[(\d{1,20})\]$/.exec(readlinkSync("/proc/self/ns/pid"));
    place = /^[0-9a-f]{12}/.test(id) && ns !== null ? `${id.slice(0, 12)}.${ns[1]}` : null;
  } catch {
    place = null;
  }
  return place;
}

let machine: string | null | undefined;

/**
 * This machine's part of a stamp: 12 hex digits of a hash of /etc/machine-id (the id itself is not
 * written anywhere), or null when there is none.
 */
export function machineTag(): string | null {
  if (machine !== undefined) return machine;
  try {
    const id = readFileSync("/etc/machine-id", "utf8").trim().toLowerCase();
    machine = /^[0-9a-f]{32}$/.test(id) ? createHash("sha256").update(`lessor process stamp\0${id}`).digest("hex").slice(0, 12) : null;
  } catch {
    machine = null;
  }
  return machine;
}

/** The start time of process `pid` (clock ticks after boot), or null when there is no such process. */
function startTime(pid: number): string | null {
  const stat = procStat(pid);
  // A zombie is gone for this purpose: it runs no code and holds no connection.
  return stat === null || stat.state === "Z" || stat.state === "X" || stat.start.length > 20 ? null : stat.start;
}

/** The stamp of live process `pid`, or null (no such process, not Linux). */
export function processStamp(pid: number | undefined): string | null {
  if (pid === undefined || !Number.isSafeInteger(pid) || pid <= 0) return null;
  const p = pidPlace();
  const t = p === null ? null : startTime(pid);
  if (p === null || t === null) return null;
  const m = machineTag();
  return m === null ? `${pid}.${t}.${p}` : `${pid}.${t}.${p}.${m}`;
}

/**
 * Whether the process `stamp` names still runs: "gone" when it is of this boot and pid namespace and
 * its pid is no process, or another one (a different start time), or when it is of this machine and an
 * earlier boot (every process of that boot is dead); "alive" when it runs; "foreign" when the stamp is
 * not one this process can judge (another pid namespace, another machine sharing the database, or
 * another boot of a stamp naming no machine: the daemon there sweeps it).
 */
export function stampState(stamp: string): "alive" | "gone" | "foreign" {
  const m = PROCESS_STAMP_RE.exec(stamp);
  const p = pidPlace();
  if (m === null || p === null) return "foreign";
  const here = machineTag();
  if (m[5] !== undefined && here !== null && m[5] === here && m[3] !== p.slice(0, 12)) return "gone";
  if (`${m[3]}.${m[4]}` !== p) return "foreign";
  return processStamp(Number(m[1])) === stamp ? "alive" : "gone";
}
