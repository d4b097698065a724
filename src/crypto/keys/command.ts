/**
 * Master keys printed by a command (`[keys] command` in lessor.toml), e.g. a KMS or password-manager CLI.
 * The command runs directly, never through a shell, so its arguments are passed exactly as written.
 * It must print one or more lines of 64 hex characters: the current key first, then older keys that
 * must stay readable. Read-only: to rotate, make the command print the new key first.
 *
 * Errors name the command (argv[0] only, since arguments may hold references or tokens) and never
 * include anything it printed, on stdout or stderr: a KMS tool could print key material on either.
 *
 * The program decides the master key, so it is held to what lessor.toml is: given by its full path or
 * found on PATH's absolute directories (never the working directory), a file of yours or root's that
 * no one else can write, in directories no one else can write. It runs in a process group of its own,
 * killed whole at the time limit, in the lessor home (not the directory lessor was started from), with
 * stdin closed and lessor's own secrets (LESSOR_MASTER_KEY,
 * LESSOR_PASSPHRASE, LESSOR_TOKEN, the database URL) withheld from its environment, and PATH cut to
 * the directories no other user can add a program to (src/fs/perms.ts trustedPath).
 */
import { spawn } from "node:child_process";
import { delimiter, isAbsolute, join } from "node:path";
import { VaultError } from "../../base/errors.js";
import { withoutLessorSecrets } from "../../base/secret-env.js";
import type { KeySource } from "../../vault/ports.js";
import { commandTrustProblem, isExecutableFile, trustedPath } from "../../fs/perms.js";
import { hexToKey, isHexKey, ringOf } from "./common.js";

/** Default time limit for the key command. */
export const DEFAULT_KEY_COMMAND_TIMEOUT_MS = 10_000;
const MAX_OUTPUT = 64 * 1024;
/** After the command exited 0, how long its stdout may stay open (a child it left holding it). */
const EXIT_GRACE_MS = 250;

/**
 * The program `file` names, as an absolute path: a path as written (it must be absolute: a relative
 * one would be looked up from wherever lessor happens to run), or a bare name looked up once in the
 * absolute directories of PATH. The program is then run by that path, with no second lookup.
 */
function locate(file: string, env: NodeJS.ProcessEnv, name: string): string {
  if (file.includes("/")) {
    if (!isAbsolute(file)) throw new VaultError("config_invalid", `the key command ${name} is a relative path, which would be looked up from the directory lessor runs in; write its full path under [keys] command in lessor.toml`);
    return file;
  }
  for (const dir of (env.PATH ?? "").split(delimiter)) {
    if (!isAbsolute(dir)) continue; // "" and "." mean the working directory: never searched
    const p = join(dir, file);
    if (isExecutableFile(p)) return p;
  }
  throw new VaultError("key_unavailable", `the key command ${name} was not found on PATH; check command under [keys] in lessor.toml (or give its full path)`);
}

/**
 * Refuses a program another user could change (it decides the vault's master key): it must be a
 * regular file of yours or root's that no one else can write, in directories no one else can write
 * either (src/fs/perms.ts assertSafeAncestors), as found and as its real path; so must the
 * interpreter of its `#!` line, what env or a launcher among its arguments runs, the files its
 * `NAME=value` arguments name, and each argument that names an existing file or directory (a script
 * handed to an interpreter: src/fs/perms.ts commandTrustProblem).
 */
function assertTrustedProgram(path: string, name: string, args: readonly string[], env: NodeJS.ProcessEnv, cwd: string): void {
  let problem: ReturnType<typeof commandTrustProblem>;
  try {
    // As it runs: in `cwd`, with lessor's PATH (withoutLessorSecrets keeps it).
    problem = commandTrustProblem(path, args, cwd, env.PATH ?? "", { what: `the key command ${name}`, who: "who could make it print any key", elsewhere: "install it in a directory only you or root can write" });
  } catch (e) {
    throw new VaultError("key_unavailable", `the key command ${name} was not found (${(e as NodeJS.ErrnoException).code ?? "error"}); check command under [keys] in lessor.toml`);
  }
  if (problem?.kind === "not_file") throw new VaultError("key_unavailable", `the key command ${name} is not a regular file; check command under [keys] in lessor.toml`);
  if (problem) throw new VaultError("insecure_permissions", problem.message);
}

/**
 * Runs the program at `path` with `args` (no shell, stdin closed, lessor's own secrets withheld from
 * its environment) in a process group of its own, killed whole at the time limit; resolves to what it
 * printed on stdout (at most 64 KiB, stderr discarded unread).
 */
function run(path: string, args: readonly string[], timeoutMs: number, env: NodeJS.ProcessEnv, name: string, cwd: string): Promise<Buffer> {
  // PATH cut to the directories no other user can add a program to: what it runs that looks a name
  // up itself (`env NAME`, a script's `aws`) never finds another user's.
  const childEnv = { ...withoutLessorSecrets(env), ...(env.PATH !== undefined ? { PATH: trustedPath(env.PATH, cwd) } : {}) };
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    let why: "timeout" | "too_large" | null = null;
    const wipe = () => {
      for (const c of chunks.splice(0)) c.fill(0);
    };
    const fail = (message: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      wipe();
      reject(new VaultError("key_unavailable", message));
    };
    let child: ReturnType<typeof spawn>;
    try {
      // A process group of its own, killed whole at the time limit; but not while lessor runs on a
      // terminal, where a group of its own would cut the command off the terminal it may prompt on
      // (age -d, sudo, ssh ask on /dev/tty): there the person at it can stop what is left.
      const detached = !(process.stdin.isTTY || process.stderr.isTTY);
      child = spawn(path, [...args], { cwd, env: childEnv, shell: false, detached, windowsHide: true, stdio: ["ignore", "pipe", "pipe"] });
    } catch (e) {
      return reject(new VaultError("key_unavailable", `the key command ${name} could not be run (${String((e as NodeJS.ErrnoException).code ?? "error")}); check command under [keys] in lessor.toml`));
    }
    const killGroup = () => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
      child.stdout?.destroy();
      child.stderr?.destroy();
    };
    const timer = setTimeout(() => {
      why = "timeout";
      killGroup();
    }, timeoutMs);
    child.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return fail(`the key command ${name} was not found; check command under [keys] in lessor.toml`);
      if (e.code === "EACCES") return fail(`the key command ${name} could not be run (permission denied); check command under [keys] in lessor.toml`);
      fail(`the key command ${name} could not be run (${String(e.code ?? "unknown error")}); check command under [keys] in lessor.toml`);
    });
    child.stdout!.on("data", (d: Buffer) => {
      if (why !== null) return d.fill(0);
      size += d.length;
      if (size > MAX_OUTPUT) {
        why = "too_large";
        d.fill(0);
        wipe();
        killGroup();
        return;
      }
      chunks.push(d);
    });
    child.stderr!.on("data", (d: Buffer) => d.fill(0)); // never read: a KMS tool may print key material there
    // Exited well, but a child it left (an agent such as op's) still holds stdout open: what was
    // printed is taken after a short grace, and the child is left alone.
    child.on("exit", (code) => {
      if (code !== 0) return;
      setTimeout(() => {
        if (settled || why !== null) return;
        child.stdout?.destroy();
        child.stderr?.destroy();
        settled = true;
        clearTimeout(timer);
        const out = Buffer.concat(chunks);
        wipe();
        resolve(out);
      }, EXIT_GRACE_MS).unref();
    });
    child.on("close", (code, signal) => {
      if (settled) return;
      if (why === "timeout") return fail(`the key command ${name} did not finish within ${timeoutMs} ms; raise command_timeout under [keys] in lessor.toml if it needs longer`);
      if (why === "too_large") return fail(`the key command ${name} printed more than ${MAX_OUTPUT / 1024} KiB on stdout; it must print only keys, one per line`);
      if (code === null) return fail(`the key command ${name} was stopped by signal ${String(signal ?? "unknown")}; run it yourself to see why`);
      if (code !== 0) return fail(`the key command ${name} failed with exit code ${code}; run it yourself to see why`);
      settled = true;
      clearTimeout(timer);
      const out = Buffer.concat(chunks);
      wipe();
      resolve(out);
    });
  });
}

/** Parses the command's output into fresh key buffers, current first. Never echoes the output. */
function parse(stdout: Buffer, name: string): Buffer[] {
  try {
    const lines = stdout.toString("utf8").split("\n").map((l) => l.trim());
    while (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
    if (lines.length === 0 || !lines.every(isHexKey)) {
      throw new VaultError(
        "key_unavailable",
        `the key command ${name} did not print keys in the expected form: one or more lines of 64 hex characters, the current key first`,
      );
    }
    return lines.map(hexToKey);
  } finally {
    stdout.fill(0);
  }
}

/**
 * The command key source: runs `argv` (no shell) on each load, with a time limit (default 10 s) and a
 * 64 KiB output cap. `env` defaults to the vault's own environment.
 */
export function commandKeySource(argv: readonly string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}): KeySource {
  if (argv.length === 0 || argv[0] === "") {
    throw new VaultError("config_invalid", "[keys] command in lessor.toml is empty; give the program and its arguments as a list");
  }
  const timeoutMs = opts.timeoutMs ?? DEFAULT_KEY_COMMAND_TIMEOUT_MS;
  const name = JSON.stringify(argv[0]);
  const [file, ...args] = argv;
  return {
    kind: "command",
    describe: `key command ${name}`,
    writable: false,
    load: async () => {
      const env = opts.env ?? process.env;
      const path = locate(file!, env, name);
      const cwd = opts.cwd ?? "/";
      assertTrustedProgram(path, name, args, env, cwd);
      return ringOf(parse(await run(path, args, timeoutMs, env, name, cwd), name));
    },
  };
}
