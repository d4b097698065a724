/**
 * Master keys printed by a command (`[keys] command` in lessor.toml), e.g. a KMS or password-manager CLI.
 * The command runs directly, never through a shell, so its arguments are passed exactly as written.
 * It must print one or more lines of 64 hex characters: the current key first, then older keys that
 * must stay readable. Read-only: to rotate, make the command print the new key first.
 *
 * Errors name the command (argv[0] only, since arguments may hold references or tokens) and never
 * include anything it printed, on stdout or stderr: a KMS tool could print key material on either.
 */
import { execFile, type ExecFileException } from "node:child_process";
import { VaultError } from "../../base/errors.js";
import type { KeySource } from "../../vault/ports.js";
import { hexToKey, isHexKey, ringOf } from "./common.js";

/** Default time limit for the key command. */
export const DEFAULT_KEY_COMMAND_TIMEOUT_MS = 10_000;
const MAX_OUTPUT = 64 * 1024;

function run(argv: readonly string[], timeoutMs: number, env: NodeJS.ProcessEnv): Promise<Buffer> {
  const [file, ...args] = argv;
  const name = JSON.stringify(file);
  return new Promise((resolve, reject) => {
    execFile(
      file!,
      args,
      { encoding: "buffer", timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: MAX_OUTPUT, env, shell: false, windowsHide: true },
      (err: ExecFileException | null, stdout: Buffer, stderr: Buffer) => {
        stderr.fill(0);
        if (err === null) return resolve(stdout);
        stdout.fill(0);
        // No `cause`: the child-process error carries stdout and stderr.
        if (err.code === "ENOENT") {
          return reject(new VaultError("key_unavailable", `the key command ${name} was not found; check command under [keys] in lessor.toml`));
        }
        if (err.code === "EACCES") {
          return reject(new VaultError("key_unavailable", `the key command ${name} could not be run (permission denied); check command under [keys] in lessor.toml`));
        }
        if (err.code === "ERR_CHILD_PROCESS_STDIO_MAXBUFFER") {
          return reject(new VaultError("key_unavailable", `the key command ${name} printed more than ${MAX_OUTPUT / 1024} KiB; it must print only keys, one per line`));
        }
        if (err.killed) {
          return reject(
            new VaultError(
              "key_unavailable",
              `the key command ${name} did not finish within ${timeoutMs} ms; raise command_timeout under [keys] in lessor.toml if it needs longer`,
            ),
          );
        }
        if (typeof err.code === "number") {
          return reject(new VaultError("key_unavailable", `the key command ${name} failed with exit code ${err.code}; run it yourself to see why`));
        }
        if (err.signal) {
          return reject(new VaultError("key_unavailable", `the key command ${name} was stopped by signal ${err.signal}; run it yourself to see why`));
        }
        return reject(new VaultError("key_unavailable", `the key command ${name} could not be run (${String(err.code ?? "unknown error")}); check command under [keys] in lessor.toml`));
      },
    );
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
export function commandKeySource(argv: readonly string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): KeySource {
  if (argv.length === 0 || argv[0] === "") {
    throw new VaultError("config_invalid", "[keys] command in lessor.toml is empty; give the program and its arguments as a list");
  }
  const timeoutMs = opts.timeoutMs ?? DEFAULT_KEY_COMMAND_TIMEOUT_MS;
  const name = JSON.stringify(argv[0]);
  const list = [...argv];
  return {
    kind: "command",
    describe: `key command ${name}`,
    writable: false,
    load: async () => ringOf(parse(await run(list, timeoutMs, opts.env ?? process.env), name)),
  };
}
