/**
 * Which agent a VM guest is, for the host services lessor offers it beside the daemon (`lessor proxy`
 * and `lessor mcp` with `--socket <uds_path>_P` or `--vsock-port P`). The same `[[vm]]` and `[[vsock]]`
 * entries that tell the daemon who a guest is tell these services which agent's credentials the guest
 * may use, so a guest reaches, on every port, only what its own entry grants:
 *
 * - a Firecracker VM's socket `<uds_path>_<P>` (any port P) is that `[[vm]]`'s;
 * - an AF_VSOCK connection is the `[[vsock]]` entry of its peer CID; a CID without one is nobody.
 *
 * An agent guest is its agent; an orchestrator guest may be offered an agent its `act_for` covers
 * (the service's `--agent` names it). Nothing a guest sends changes this.
 */
import { realpathSync } from "node:fs";
import { basename, dirname, isAbsolute, join, resolve } from "node:path";
import { compileAgentPattern } from "../vault/pattern.js";
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
  for (const vm of vms) {
    const uds = inHome(home, vm.udsPath);
    const prefixes = [`${resolve(uds)}_`, `${canonicalSocketPath(uds)}_`];
    const abs = forms.find((f) => prefixes.some((p) => f.startsWith(p)));
    if (abs === undefined) continue;
    const prefix = prefixes.find((p) => abs.startsWith(p))!;
    const rest = abs.slice(prefix.length);
    if (!/^[1-9][0-9]{0,9}$/.test(rest)) continue;
    const port = Number(rest);
    if (port > 2 ** 32 - 2) continue;
    return { vm, port };
  }
  return null;
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
