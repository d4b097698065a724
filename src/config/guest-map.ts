/**
 * Which agent a VM guest is, for the host services lessor offers it beside the daemon (`lessor proxy`
 * and `lessor mcp` with `--socket <uds_path>_P` or `--vsock-port P`). The same `[[vm]]` and `[[vsock]]`
 * entries that tell the daemon who a guest is tell these services which agent's credentials the guest
 * may use, so a guest reaches, on every port, only what its own entry grants:
 *
 * - a Firecracker VM's socket `<uds_path>_<P>` (any port P) is that `[[vm]]`'s, however the path is
 *   spelled (by its text, its real directory, or its directory's device and inode);
 * - an AF_VSOCK connection is the `[[vsock]]` entry of its peer CID; a CID without one is nobody.
 *
 * An agent guest is its agent; an orchestrator guest may be offered an agent its `act_for` covers
 * (the service's `--agent` names it). Nothing a guest sends changes this.
 */
import { realpathSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, join, resolve } from "node:path";
import { compileAgentPattern } from "../vault/pattern.js";
import { fail, show } from "./fields.js";
import { inHome } from "./home.js";
import type { GuestIdentity, VmConfig } from "./vm-config.js";

/** The agent a guest is offered, or why it is offered none. */
export type GuestAgent = { agent: string } | { refused: string };

/**
 * The `[[vm]]` whose Firecracker socket `path` is: `<uds_path>_<P>` for a port P other than the
 * daemon's own (the entry's `port`), relative paths taken in `home`. Null when it is no VM's.
 */
export function vmOfSocket(vms: readonly VmConfig[], home: string, path: string): { vm: VmConfig; port: number } | null {
  // By the real directory too: a path through a symlinked directory (/var/run for /run, a link of
  // one's own) is the same socket Firecracker delivers the guest to.
  const forms = [resolve(path), canonicalSocketPath(path)];
  // And by the directory itself, its (dev, ino): a spelling no text comparison sees through (a bind
  // mount of the directory, say) still names the file Firecracker connects to.
  const real = canonicalSocketPath(path);
  const dir = dirOf(real);
  for (const vm of vms) {
    const uds = inHome(home, vm.udsPath);
    const rests: string[] = [];
    for (const prefix of [`${resolve(uds)}_`, `${canonicalSocketPath(uds)}_`]) for (const f of forms) if (f.startsWith(prefix)) rests.push(f.slice(prefix.length));
    const udsName = `${basename(uds)}_`;
    if (dir !== null && basename(real).startsWith(udsName) && sameDir(dir, dirOf(canonicalSocketPath(uds)))) rests.push(basename(real).slice(udsName.length));
    const port = rests.map(portOf).find((p): p is number => p !== null);
    if (port !== undefined) return { vm, port };
  }
  return null;
}

/** The vsock port a socket name's suffix spells (`5000` of `vm1.vsock_5000`), or null. */
function portOf(rest: string): number | null {
  if (!/^[1-9][0-9]{0,9}$/.test(rest)) return null;
  const port = Number(rest);
  return port > 2 ** 32 - 2 ? null : port;
}

/** The (dev, ino) of the directory holding `path`, or null when it cannot be read. */
function dirOf(path: string): { dev: bigint; ino: bigint } | null {
  try {
    const st = statSync(dirname(path), { bigint: true });
    return st.isDirectory() ? { dev: st.dev, ino: st.ino } : null;
  } catch {
    return null;
  }
}

function sameDir(a: { dev: bigint; ino: bigint }, b: { dev: bigint; ino: bigint } | null): boolean {
  return b !== null && a.dev === b.dev && a.ino === b.ino;
}

/**
 * Refuses two `[[vm]]` entries whose sockets are one file once their paths are resolved in `home` and
 * their directories' links followed (a relative and an absolute spelling, say): parsing compares the
 * paths as written, and the daemon would otherwise stop at the second listen, blaming another daemon.
 */
export function checkVmSockets(source: string, vms: readonly VmConfig[], home: string): void {
  const seen = new Map<string, string>();
  vms.forEach((vm, i) => {
    const path = canonicalSocketPath(inHome(home, `${vm.udsPath}_${vm.port}`));
    const other = seen.get(path);
    if (other !== undefined)
      fail(source, `vm ${i + 1}: uds_path`, `${show(vm.udsPath)} (port ${vm.port}) is the socket ${path}, which VM ${show(other)} uses too; each VM needs its own socket, so give one of them another uds_path`);
    seen.set(path, vm.name);
  });
}

/**
 * `path` with its directory's symlinks resolved (the file itself may not exist yet: a socket about to
 * be made); the path as resolved when the directory cannot be.
 */
export function canonicalSocketPath(path: string): string {
  // The path as written, resolved by the kernel (`realpathSync.native`): a `..` after a link in it is
  // applied after following the link, as listen() will, not as text first.
  const raw = isAbsolute(path) ? path : `${process.cwd()}/${path}`;
  try {
    return join(realpathSync.native(dirname(raw)), basename(raw));
  } catch {
    return resolve(path);
  }
}

/**
 * The agent `guest` is offered when the service was asked for `wanted` (its `--agent`, if any): an
 * agent guest's own agent (and `wanted`, when given, must be it); for an orchestrator guest `wanted`,
 * which must be given and covered by its `act_for`.
 */
export function guestAgent(guest: GuestIdentity, wanted: string | undefined): GuestAgent {
  if (guest.role === "agent") {
    const own = guest.agent ?? "";
    if (wanted !== undefined && wanted !== own) return { refused: `it is mapped to agent ${JSON.stringify(own)}, not ${JSON.stringify(wanted)}` };
    return { agent: own };
  }
  if (wanted === undefined) return { refused: "it is an orchestrator guest, so the agent it is offered must be named with --agent" };
  const covered = (guest.actFor ?? []).some((p) => {
    try {
      return compileAgentPattern(p)(wanted);
    } catch {
      return false;
    }
  });
  return covered ? { agent: wanted } : { refused: `it is an orchestrator guest whose act_for does not cover agent ${JSON.stringify(wanted)}` };
}
