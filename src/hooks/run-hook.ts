/**
 * Runs a rotation hook's command (src/vault/rotation-hooks.ts): directly, never through a shell, so
 * its arguments reach it exactly as written in lessor.toml, in its own process group so that a time
 * limit kills whatever it started too.
 *
 * - Environment: only PATH, HOME, LANG, LC_ALL and TZ from the vault's own (when set). Nothing else:
 *   no LESSOR_* variable (the master key can be one), no token, no database URL. PATH keeps only the
 *   directories no other user can add a program to (a directory of yours or root's that no one else
 *   can write, not even a sticky one, on a way no one else can change).
 * - stdin: the current value when the hook has `stdin = "current"` (rotation scripts often need the
 *   old credential to authenticate the change), else /dev/null.
 * - stdout: the new value; one trailing "\n" or "\r\n" is removed; it must not be empty, and more
 *   than `maxBytes` kills the command.
 * - stderr: read (so the command never blocks on a full pipe), counted and dropped. It may hold the
 *   old or the new value (a script that echoes what it did), so it is never shown, logged or
 *   audited; run the command yourself to debug it.
 *
 * - The program: found as a shell would (a path with a slash from the lessor home, a bare name on the
 *   hook's PATH), then run by the path found, with no second lookup. It is handed the current value
 *   (`stdin = "current"`) and decides the secret's next one, so it is held to what the key command is
 *   (src/crypto/keys/command.ts): a regular file of yours or root's that no one else can write, in
 *   directories no one else can write, as found and as its real path. So is what it runs or reads as
 *   code: the interpreter of a `#!` line (through `/usr/bin/env NAME`, every PATH directory searched
 *   for NAME up to the one found, too); what `env` runs when the program is env (`["/usr/bin/env",
 *   NAME]`, found on PATH the same way) and each file named by its `NAME=value` arguments
 *   (`BASH_ENV=file`); each argument that names a program on PATH (what a launcher such as `timeout
 *   20 NAME`, `nice` or `nohup` runs), found as it finds it; and each argument that names an existing
 *   file or directory (the script of `["bash", "rotate.sh"]`, the directory of `["python3", "app"]`,
 *   from the lessor home; a directory no one else may write, not even a sticky one). Otherwise it is not run (a failure of kind
 *   "untrusted", naming the file or directory at fault and the fix).
 *
 * Every buffer that held output is zeroed once it has been copied.
 */
import { spawn } from "node:child_process";
import { delimiter, join, resolve as resolvePath } from "node:path";
import { commandTrustProblem, isExecutableFile, trustedPath } from "../fs/perms.js";
import type { HookFailure, HookRunResult, RotationHook, RotationHooks } from "../vault/rotation-hooks.js";
import type { SecretRef } from "../base/types.js";

/** The environment variables a hook inherits from the vault, when set. */
export const HOOK_ENV_KEEP = ["PATH", "HOME", "LANG", "LC_ALL", "TZ"] as const;

/** The minimal environment for a hook, built from the vault's own. */
export function hookEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const k of HOOK_ENV_KEEP) if (typeof env[k] === "string") out[k] = env[k];
  out.PATH ??= "/usr/local/bin:/usr/bin:/bin";
  return out;
}

/**
 * The environment the hook runs with: {@link hookEnv}, its PATH cut to the directories no other user
 * can add a program to (src/fs/perms.ts trustedPath), so that what the hook runs that looks a name up
 * itself (a script's `curl`, `env NAME`, `timeout 20 NAME`) never finds another user's.
 */
function runEnv(opts: RunHookOptions): NodeJS.ProcessEnv {
  const env = hookEnv(opts.env);
  return { ...env, PATH: trustedPath(env["PATH"] ?? "", opts.cwd) };
}

/** Removes one trailing "\n" or "\r\n". */
function trimNewline(b: Buffer): Buffer {
  if (b.length >= 2 && b[b.length - 2] === 0x0d && b[b.length - 1] === 0x0a) return b.subarray(0, b.length - 2);
  if (b.length >= 1 && b[b.length - 1] === 0x0a) return b.subarray(0, b.length - 1);
  return b;
}

/** Options of {@link runHookCommand}. */
export interface RunHookOptions {
  /** The working directory (the vault's home). */
  cwd: string;
  /** The vault's environment, from which {@link hookEnv} keeps a few variables. */
  env: NodeJS.ProcessEnv;
}

/**
 * The program `file` names, as an absolute path, as the hook has always found it: a path with a slash
 * from `cwd` (the lessor home), a bare name on `pathValue` (each entry taken from `cwd`, as a shell
 * does; src/cli/run/owner-programs.ts checks the same places); null when there is none.
 */
export function locateHookProgram(file: string, pathValue: string, cwd: string): string | null {
  if (file.includes("/")) return resolvePath(cwd, file);
  for (const dir of pathValue.split(delimiter)) {
    const p = join(resolvePath(cwd, dir || "."), file);
    if (isExecutableFile(p)) return p;
  }
  return null;
}

/**
 * Why the program at `path` (named `name` in lessor.toml) must not run as the vault's owner, or null:
 * it is another user's file, others can write it, or a directory or link on the way to it (or to its
 * real path) lets another user replace it. Nothing is checked on Windows.
 */
export function untrustedHookProgram(path: string, name: string, args: readonly string[] = [], cwd = "/", pathValue = ""): string | null {
  try {
    const place = { what: `the rotation hook ${name}`, who: "who could read the value it is handed and choose the secret's next one", elsewhere: "install it in a directory only you or root can write (such as /usr/local/bin) and name it by its full path" };
    return commandTrustProblem(path, args, cwd, pathValue, place)?.message ?? null;
  } catch {
    return null; // missing: spawn says not found
  }
}

/** The hook's program as an absolute path to run, or why it cannot run. */
function programOf(file: string, args: readonly string[], opts: RunHookOptions): { path: string } | { failure: HookFailure } {
  try {
    const pathValue = hookEnv(opts.env)["PATH"] ?? "";
    const path = locateHookProgram(file, pathValue, opts.cwd);
    if (path === null) return { failure: { kind: "not_found" } };
    const problem = untrustedHookProgram(path, file, args, opts.cwd, pathValue);
    return problem === null ? { path } : { failure: { kind: "untrusted", problem } };
  } catch (e) {
    // Changed while it was looked at (removed between the lookup and the checks): not run.
    const code = String((e as NodeJS.ErrnoException).code ?? "error");
    return { failure: code === "ENOENT" ? { kind: "not_found" } : { kind: "spawn", code } };
  }
}

/**
 * The process groups of the hooks running in this process, killed when it exits: a hook is watched
 * by the process that started it (its time limit, its output), and one left running after lessor
 * exits (a second Ctrl-C, a fatal error) would change the issuer with no one to store what it makes.
 * One listener for all of them.
 */
const running = new Set<() => void>();
function onProcessExit(): void {
  for (const kill of running) kill();
}

/** How long what a hook left in its process group may go on after the hook exited (a filter its stdout goes through finishing), before it is killed. */
export const EXIT_GRACE_MS = 1000;

/** Runs `hook.command` once; see the module comment. Never rejects. */
export function runHookCommand(hook: RotationHook, stdin: Uint8Array | null, maxBytes: number, opts: RunHookOptions, onStart?: (pid: number) => void): Promise<HookRunResult> {
  const [file, ...args] = hook.command;
  const program = programOf(file!, args, opts);
  if ("failure" in program) return Promise.resolve({ ok: false, failure: program.failure });
  // Room for the trailing newline that is removed.
  const cap = maxBytes + 2;
  return new Promise<HookRunResult>((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let overflow = false;
    let timedOut = false;
    let settled = false;
    const wipe = () => {
      for (const c of chunks.splice(0)) c.fill(0);
    };
    const finish = (r: HookRunResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      running.delete(killGroup);
      if (running.size === 0) process.removeListener("exit", onProcessExit);
      wipe();
      resolve(r);
    };
    let child: ReturnType<typeof spawn>;
    try {
      child = spawn(program.path, args, {
        argv0: file, // as the command is written; the path found is what runs
        cwd: opts.cwd,
        env: runEnv(opts),
        shell: false,
        detached: true, // its own process group, killed whole on a time limit
        windowsHide: true,
        stdio: [stdin === null ? "ignore" : "pipe", "pipe", "pipe"],
      });
    } catch (e) {
      const code = String((e as NodeJS.ErrnoException).code ?? "error");
      return resolve({ ok: false, failure: code === "ENOENT" ? { kind: "not_found" } : { kind: "spawn", code } });
    }
    const killGroup = () => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
      } catch {
        child.kill("SIGKILL"); // the group is gone already, or was never made
      }
      // A process that left the group could hold the pipes open and delay "close" forever.
      child.stdout?.destroy();
      child.stderr?.destroy();
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup();
    }, hook.timeoutMs);
    if (running.size === 0) process.on("exit", onProcessExit);
    running.add(killGroup);
    if (child.pid !== undefined && onStart !== undefined) {
      try {
        onStart(child.pid);
      } catch {
        // the caller's note of the process is best effort
      }
    }
    child.on("error", (e: NodeJS.ErrnoException) => {
      const code = String(e.code ?? "error");
      finish({ ok: false, failure: code === "ENOENT" ? { kind: "not_found" } : { kind: "spawn", code } });
    });
    child.stdout!.on("data", (d: Buffer) => {
      if (overflow) return d.fill(0);
      size += d.length;
      if (size > cap) {
        overflow = true;
        d.fill(0);
        wipe();
        killGroup();
        return;
      }
      chunks.push(d);
    });
    child.stderr!.on("data", (d: Buffer) => d.fill(0));
    if (stdin !== null && child.stdin) {
      // A command that exits without reading its stdin makes this write fail with EPIPE: not an error.
      // The current value is copied for the pipe and the copy zeroed once written (or once the write
      // failed, or the command ended): the caller wipes its own bytes, not this copy.
      const copy = Buffer.from(stdin);
      const zero = (): void => void copy.fill(0);
      child.stdin.on("error", zero);
      child.stdin.end(copy, zero);
      child.once("close", zero);
    }
    // The hook is done when its own process exits. What it left running in its process group (a
    // `cmd &` in a shell script) inherits its stdout and would hold "close" back until the time
    // limit, which would then throw away the value the hook printed and exited for after it changed
    // the credential at the issuer (the vault keeping a credential the issuer no longer takes). So
    // its group is ended now, as the time limit would end it: what the hook wrote stays readable
    // in the pipe, and the hook is judged by its own exit status and output. (A process that left
    // the group, into a session of its own, still holds the run to its time limit.)
    // What it left gets a short grace first: a filter its stdout goes through (bash's
    // `exec > >(tee -a LOG)`) forwards what the hook printed only after the hook exits, and ends by
    // itself once it has; killed at once, it took the value with it (the issuer holding a
    // credential the vault never stored).
    child.once("exit", () => {
      if (settled || timedOut || child.pid === undefined) return;
      const pid = child.pid;
      const grace = setTimeout(() => {
        if (settled || timedOut) return;
        try {
          process.kill(-pid, "SIGKILL");
        } catch {
          // nothing left in the group
        }
      }, EXIT_GRACE_MS);
      grace.unref();
      child.once("close", () => clearTimeout(grace));
    });
    child.on("close", (code, signal) => {
      if (settled) return;
      if (timedOut) return finish({ ok: false, failure: { kind: "timeout", timeoutMs: hook.timeoutMs } });
      if (overflow) return finish({ ok: false, failure: { kind: "too_large", maxBytes } });
      if (code !== 0) {
        if (code === null) return finish({ ok: false, failure: { kind: "signal", signal: String(signal ?? "unknown") } });
        return finish({ ok: false, failure: { kind: "exit", exitCode: code } });
      }
      const all = Buffer.concat(chunks);
      const kept = trimNewline(all);
      if (kept.length === 0) {
        all.fill(0);
        return finish({ ok: false, failure: { kind: "empty" } });
      }
      if (kept.length > maxBytes) {
        all.fill(0);
        return finish({ ok: false, failure: { kind: "too_large", maxBytes } });
      }
      const value = Buffer.alloc(kept.length);
      kept.copy(value);
      all.fill(0);
      finish({ ok: true, value });
    });
  });
}

/** The {@link RotationHooks} port over configured hooks, run by {@link runHookCommand}. */
export function commandRotationHooks(hooks: readonly RotationHook[], opts: RunHookOptions): RotationHooks {
  const list = [...hooks];
  const same = (a: SecretRef, b: SecretRef) => a.scope === b.scope && a.name === b.name;
  return {
    find: (ref) => list.find((h) => same(h.secret, ref)) ?? null,
    list: () => list,
    run: (hook, stdin, maxBytes, onStart) => runHookCommand(hook, stdin, maxBytes, opts, onStart),
  };
}
