/** Process CPU time for the benches (Linux /proc). */
import { readFileSync } from "node:fs";

/**
 * CPU time (user + system, ms) the process `pid` has used, from /proc (Linux; undefined elsewhere).
 * /proc counts in USER_HZ ticks, which Linux fixes at 100 per second for user space.
 */
export function cpuMs(pid: number | undefined): number | undefined {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return undefined;
  }
}
