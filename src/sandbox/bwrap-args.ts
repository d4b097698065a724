/**
 * The bwrap arguments for a {@link Layout} and an environment. They reach bwrap through `--args FD`
 * (a pipe), not its command line: /proc/PID/cmdline is readable by every user of the machine, and
 * the environment holds the leased values.
 */
import { existsSync } from "node:fs";
import type { Layout } from "./layout.js";
import { copySources, FIRST_COPY_FD, shadowArgs } from "./shadow.js";

/** The descriptor bwrap reads the seccomp filter from (src/sandbox/seccomp.ts); launch.ts writes it. */
export const SECCOMP_FD = 5;

/** Options of {@link bwrapArgs}. */
export interface BwrapOptions {
  /** Pass `--disable-userns` (bwrap 0.8 and later): the agent cannot make user namespaces of its own. */
  disableUserns: boolean;
  /**
   * Share the host's network namespace (`[run] network = "host"`, `--network host`): the agent can
   * then reach any host, loopback services and abstract Unix sockets. Off by default: the sandbox's
   * network namespace holds only a loopback interface.
   */
  shareNet?: boolean;
  /**
   * Host paths shown read-only at another path inside (the run's proxy directory at /run/lessor, a
   * Node binary the layout does not show), made after the layout's mounts.
   */
  binds?: { from: string; to: string }[];
}

/**
 * The namespaces and process settings: own user, PID, IPC, UTS, cgroup and network namespaces
 * (the network one holds only a loopback interface: no route out), killed with lessor, a new
 * terminal session (no TIOCSTI typing into the owner's terminal), no capabilities even when run as
 * root, and the seccomp filter that keeps the kernel's keyrings out of reach.
 */
function namespaceArgs(o: BwrapOptions): string[] {
  return [
    "--unshare-all",
    ...(o.shareNet ? ["--share-net"] : []),
    "--unshare-user",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
    "--seccomp",
    String(SECCOMP_FD),
    ...(o.disableUserns ? ["--disable-userns"] : []),
  ];
}

/** Parts of /proc made read-only: they act on the whole machine (runc's list). */
const PROC_READ_ONLY = ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"];
/** Parts of /proc covered (runc's list, with the keyrings' `key-users`): the kernel's memory, its keys, its timers. */
const PROC_MASKED = ["/proc/kcore", "/proc/keys", "/proc/key-users", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug"];
const PROC_MASKED_DIRS = ["/proc/acpi", "/proc/scsi"];
/**
 * The memory of bwrap's init (PID 1 inside, the agent's uid): writable through these to whoever may
 * ptrace it, and an agent that rewrites its code can clear its PR_SET_PDEATHSIG, so that the sandbox
 * outlives lessor run. Covered; ptrace(2) and process_vm_writev(2) on it are refused by the seccomp
 * filter (src/sandbox/seccomp.ts).
 */
const PROC_INIT_MEM = ["/proc/1/mem", "/proc/1/task/1/mem"];

/**
 * The covers over the fresh /proc. A uid-0 agent (a root owner's) is the owner of the files that act
 * on the whole machine, and their writes check no capability: `/proc/sys` (kernel.core_pattern runs
 * a program as root outside the sandbox, kernel.modprobe too), `/proc/sysrq-trigger` (a reboot),
 * `/proc/irq`. bwrap's own cover of `/proc/sys` looks at the directory's mode, which never allows
 * writing, and so never happens. Each is bound read-only (the host's, whose sysctls read as the
 * reader's namespaces have them, as the fresh one's do) or covered where this kernel has it.
 */
export function procCovers(exists: (path: string) => boolean = existsSync): string[] {
  const a: string[] = [];
  for (const p of PROC_READ_ONLY) if (exists(p)) a.push("--ro-bind", p, p);
  for (const p of [...PROC_MASKED, ...PROC_INIT_MEM]) if (exists(p)) a.push("--ro-bind", "/dev/null", p);
  for (const p of PROC_MASKED_DIRS) if (exists(p)) a.push("--tmpfs", p, "--remount-ro", p);
  return a;
}

/**
 * The mounts, in order: the layout's (a system directory holding covers as a tree of the sandbox's
 * own, its covers in it: src/sandbox/shadow.ts), a fresh /proc (its machine-wide parts read-only or covered,
 * {@link procCovers}) and /dev, the pinned git directories and the
 * locked directories (parents first, so a pin inside a locked directory is made after it and stays
 * writable), the read-only overlays, sealed directories and files, the masks, then the root made
 * read-only.
 */
function mountArgs(layout: Layout, binds: { from: string; to: string }[]): string[] {
  const a: string[] = [];
  // Covers made inside a system directory's own tree (src/sandbox/shadow.ts), not again below.
  const inTree = new Set<string>();
  const copyFd = new Map(copies(layout).map(([to], i) => [to, FIRST_COPY_FD + i]));
  for (const m of layout.mounts) {
    if (m.kind === "system" && m.shadow) {
      a.push(...shadowArgs(m.path, m.shadow, (p) => copyFd.get(p)!));
      for (const e of m.shadow.entries) if (e.kind === "cover") inTree.add(e.path);
    } else if (m.kind === "system") a.push("--ro-bind", m.path, m.path);
    else if (m.kind === "symlink") a.push("--symlink", m.target, m.path);
    else if (m.kind === "scratch") a.push("--tmpfs", m.path);
    else a.push(m.writable ? "--bind" : "--ro-bind", m.path, m.path);
  }
  for (const b of binds) a.push("--ro-bind", b.from, b.to);
  a.push("--proc", "/proc", ...procCovers(), "--dev", "/dev");
  const frame = [...layout.pinned.map((p) => ({ p, writable: true })), ...layout.locked.map((p) => ({ p, writable: false }))];
  // Stable: at one depth a pin comes first, and a locked directory at the same path stays read-only.
  frame.sort((x, y) => depth(x.p) - depth(y.p));
  for (const { p, writable } of frame) a.push(writable ? "--bind" : "--ro-bind", p, p);
  for (const p of layout.readOnly) a.push("--ro-bind", p, p);
  for (const p of layout.sealed) a.push("--tmpfs", p, "--remount-ro", p);
  for (const p of layout.sealedFiles) a.push("--ro-bind", "/dev/null", p);
  for (const m of layout.masks) {
    if (inTree.has(m.path)) continue;
    if (m.dir) a.push("--tmpfs", m.path, "--remount-ro", m.path);
    else a.push("--ro-bind", "/dev/null", m.path);
  }
  a.push("--remount-ro", "/", "--chdir", layout.cwd);
  return a;
}

/**
 * The files lessor opens for bwrap to copy into the layout's shadow trees (src/sandbox/shadow.ts), in
 * order: the i-th is read from descriptor FIRST_COPY_FD + i, which src/sandbox/launch.ts opens.
 */
export function copiedFiles(layout: Layout): string[] {
  return copies(layout).map(([, from]) => from);
}

function copies(layout: Layout): [string, string][] {
  return layout.mounts.flatMap((m) => (m.kind === "system" && m.shadow ? copySources(m.shadow) : []));
}

/** How many directories deep `p` is. */
function depth(p: string): number {
  return p.split("/").filter((x) => x !== "").length;
}

/** The environment as an allow-list: nothing of bwrap's own environment passes. */
function envArgs(env: Record<string, string>): string[] {
  const a = ["--clearenv"];
  for (const [k, v] of Object.entries(env)) a.push("--setenv", k, v);
  return a;
}

/** Every argument before `--` and the command, for `bwrap --args FD`. */
export function bwrapArgs(layout: Layout, env: Record<string, string>, o: BwrapOptions): string[] {
  return [...namespaceArgs(o), ...mountArgs(layout, o.binds ?? []), ...envArgs(env)];
}

/** `args` as `--args FD` reads them: each followed by a NUL byte. An argument holding NUL is refused. */
export function encodeArgs(args: string[]): Buffer {
  for (const a of args) if (a.includes("\0")) throw new TypeError("a bwrap argument cannot contain a NUL byte");
  return Buffer.from(args.map((a) => `${a}\0`).join(""), "utf8");
}
