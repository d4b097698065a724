/**
 * Starting a command in the sandbox, and reaching it once started. bwrap runs a small init as the
 * sandbox's PID 1 and the command as its child; bwrap itself does not pass signals on, so lessor
 * sends each one to the command directly (its host PID, found from the init's, which bwrap reports
 * on its status pipe).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, constants, fstatSync, openSync, readdirSync, readFileSync } from "node:fs";
import { encodeArgs, SECCOMP_FD } from "./bwrap-args.js";
import { keyringFilter } from "./seccomp.js";
import { isRunning, startTime, type ProcessId } from "../fs/process-identity.js";

/** How one of the command's standard streams is given: lessor's own, or a pipe to lessor. */
export type StdioKind = "inherit" | "pipe" | "ignore";

/** A started sandbox. */
export interface Sandboxed {
  /** The bwrap process: its exit code is the command's (128 + N when signal N killed it). */
  child: ChildProcess;
  /** Sends `signal` to the command inside (not to bwrap, which would die and take the sandbox with it). */
  signal(signal: NodeJS.Signals): void;
  /** Resolves true once the sandbox is made and the command started, false if bwrap failed before. */
  started: Promise<boolean>;
}

/** The children of `pid` (Linux ≥ 3.5 with /proc/PID/task/PID/children, else a scan of /proc). */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    const out: number[] = [];
    for (const e of readdirSync("/proc")) {
      if (!/^\d+$/.test(e)) continue;
      try {
        // "pid (comm) state ppid …": comm may hold spaces and parentheses, so read after the last ")".
        const stat = readFileSync(`/proc/${e}/stat`, "utf8");
        if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) out.push(Number(e));
      } catch {
        // gone
      }
    }
    return out;
  }
}

/**
 * A file of a shadow tree opened for bwrap to copy (close-on-exec, as Node opens every file: the
 * spawn gives it to bwrap alone): a regular file anyone may read, never through a link, never a
 * fifo's wait; /dev/null (an empty file inside) when it is gone or became something else since the
 * layout was planned.
 */
function openCopy(path: string): number {
  try {
    if (path !== "/dev/null") {
      const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
      // Still a file anyone may read: one replaced by a private file since the layout was planned is
      // not copied in (lessor reads as the owner, who may read more than "anyone").
      const st = fstatSync(fd);
      if (st.isFile() && (st.mode & 0o004) !== 0) return fd;
      closeSync(fd);
    }
  } catch {
    // gone, or unreadable now
  }
  return openSync("/dev/null", "r");
}

/**
 * SIGKILLs the sandbox's init `init` if it is still that process (its start time checked: not a pid
 * reused since), then waits (at most 2 s) until it is a zombie or gone: a PID namespace's init exits
 * only once every other process of the namespace is dead.
 */
function endInit(init: ProcessId): void {
  if (!isRunning(init)) return;
  try {
    process.kill(init.pid, "SIGKILL");
  } catch {
    return; // gone meanwhile, or not ours
  }
  const nap = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < 400 && isRunning(init); i++) Atomics.wait(nap, 0, 0, 5);
}

/** O_CLOEXEC as /proc/PID/fdinfo/N's octal `flags:` line shows it (Linux: 02000000). */
const O_CLOEXEC = 0o2000000;

/**
 * Closes, in this process, every descriptor above stderr that is not close-on-exec: those lessor
 * inherited from whoever started it (a shell's `exec 5<file`, a careless parent, a supervisor's
 * pipe). bwrap passes on every descriptor it inherits, so without this the agent would find them
 * under /proc/self/fd and read the owner's files through them. lessor's own descriptors (Node and
 * libuv open everything with O_CLOEXEC) are kept, and so is a Node IPC channel
 * (`NODE_CHANNEL_FD`). Returns the descriptors closed. Linux only; elsewhere it closes nothing.
 */
export function closeInheritedDescriptors(): number[] {
  let fds: number[];
  try {
    fds = readdirSync("/proc/self/fd").map(Number).filter((n) => Number.isInteger(n) && n > 2);
  } catch {
    return [];
  }
  const keep = Number(process.env["NODE_CHANNEL_FD"] ?? -1);
  const closed: number[] = [];
  for (const fd of fds) {
    if (fd === keep) continue;
    let flags: number;
    try {
      const m = /^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"));
      if (!m) continue;
      flags = parseInt(m[1]!, 8);
    } catch {
      continue; // the directory's own descriptor (gone by now), or closed meanwhile
    }
    if ((flags & O_CLOEXEC) !== 0) continue;
    try {
      closeSync(fd);
      closed.push(fd);
    } catch {
      // already closed
    }
  }
  return closed;
}

/**
 * Starts `bwrap --args 3 --json-status-fd 4 -- CMD ARGS…` with the arguments of
 * src/sandbox/bwrap-args.ts written to fd 3 (then wiped), the seccomp filter of
 * src/sandbox/seccomp.ts to fd 5 (`--seccomp 5` among those arguments), and an empty environment of
 * its own.
 * `stdio` gives the command's stdin, stdout and stderr; no other descriptor of lessor's reaches the
 * sandbox ({@link closeInheritedDescriptors}) but `handoff`, when given: shown to the command as
 * descriptor 6 (the native bridge's socket to lessor, src/sandbox/bridge.ts). `copies` are the
 * files bwrap copies into a shadow tree (src/sandbox/bwrap-args.ts copiedFiles), given from
 * descriptor 7 on.
 */
export function startSandboxed(bwrap: string, args: string[], cmd: string, cmdArgs: string[], stdio: StdioKind[], handoff?: number, copies: string[] = []): Sandboxed {
  // Encoded first: an argument it refuses (a NUL byte) must not leave bwrap started, waiting on fd 3.
  const blob = encodeArgs(args);
  const filter = keyringFilter();
  closeInheritedDescriptors();
  // Opened one by one, and those already open closed if one fails (EMFILE): none is left behind.
  const files: number[] = [];
  try {
    for (const c of copies) files.push(openCopy(c));
  } catch (e) {
    for (const fd of files) closeSync(fd);
    throw e;
  }
  const extra: (number | "ignore")[] = files.length > 0 ? [handoff ?? "ignore", ...files] : handoff !== undefined ? [handoff] : [];
  let child: ChildProcess;
  try {
    child = spawn(bwrap, ["--args", "3", "--json-status-fd", "4", "--", cmd, ...cmdArgs], { env: {}, stdio: [...stdio, "pipe", "pipe", "pipe", ...extra] });
  } finally {
    for (const fd of files) closeSync(fd);
  }
  const argsPipe = child.stdio[3] as NonNullable<ChildProcess["stdin"]>;
  argsPipe.on("error", () => {}); // bwrap gone before reading: its exit says why
  argsPipe.end(blob, () => blob.fill(0));
  const filterPipe = (child.stdio as unknown as ChildProcess["stdin"][])[SECCOMP_FD]!;
  filterPipe.on("error", () => {});
  filterPipe.end(filter);

  let init: number | null = null;
  let initStart: string | null = null; // null off Linux: the init is then left to its death signal
  // bwrap's monitor exits with the command, and the init (PID 1 inside) is meant to die with it
  // (its PR_SET_PDEATHSIG); but the init runs as the agent's uid, and an agent that took it over
  // could keep it, and so every process of the sandbox, alive. lessor ends it itself: killing a PID
  // namespace's init kills everything in it. Synchronous, before any other listener (the after-run
  // git check assumes every process of the sandbox is gone).
  child.once("exit", () => {
    if (init !== null && initStart !== null) endInit({ pid: init, start: initStart });
  });
  const started = new Promise<boolean>((resolve) => {
    const status = child.stdio[4] as NonNullable<ChildProcess["stdout"]>;
    let text = "";
    status.on("data", (d: Buffer) => {
      text += d.toString("utf8");
      const m = /"child-pid"\s*:\s*(\d+)/.exec(text);
      if (m && init === null) {
        init = Number(m[1]);
        initStart = startTime(init);
        resolve(true);
      }
    });
    status.on("error", () => resolve(false));
    status.on("close", () => resolve(init !== null));
  });

  const signal = (s: NodeJS.Signals, tries = 0): void => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const pids = init === null ? [] : childrenOf(init);
    if (pids.length === 0) {
      // The command is not started yet (bwrap is still making the sandbox, or its init has not
      // forked): try again shortly, then stop bwrap, which takes the whole sandbox with it.
      if (tries < 20) setTimeout(() => signal(s, tries + 1), 10).unref();
      else child.kill(s);
      return;
    }
    for (const pid of pids) {
      try {
        process.kill(pid, s);
      } catch {
        // already gone
      }
    }
  };
  return { child, signal: (s) => signal(s), started };
}
