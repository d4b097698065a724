/**
 * The core's {@link Processes} port for this machine: how a claim in the store (a master-key
 * rotation's, src/vault/rotation-claim.ts) names this process, and whether a process a claim names has
 * ended (src/fs/process-identity.ts judges a pid with its start time).
 */
import { readFileSync, readlinkSync } from "node:fs";
import { hostname } from "node:os";
import { isRunning, startTime } from "../fs/process-identity.js";
import type { ProcessRef, Processes } from "../vault/ports.js";

/**
 * Which kernel and pid namespace this process's pid is in: on Linux the boot id and the pid namespace
 * (containers on one kernel share the boot id, not their pids); elsewhere the host name.
 */
function hostKey(): string {
  if (process.platform === "linux") {
    try {
      const boot = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
      return `linux:${boot}:${readlinkSync("/proc/self/ns/pid")}`;
    } catch {
      // no /proc: fall back to the host name
    }
  }
  return `host:${hostname()}`;
}

/**
 * This process as a claim in the store names it, and a judge of whether a process a claim names has
 * ended: only one on this host and in this pid namespace, found not running (src/vault/ports.ts Processes).
 */
export function localProcesses(): Processes {
  const self: ProcessRef = { host: hostKey(), pid: process.pid, start: startTime(process.pid) };
  return {
    self,
    ended: (p) => p.host === self.host && p.pid !== process.pid && !isRunning({ pid: p.pid, start: p.start }),
    ref: (pid) => ({ host: self.host, pid, start: startTime(pid) }),
  };
}
