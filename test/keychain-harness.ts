/**
 * What the keychain tests (test/keychain.test.ts, test/keychain-attacks.test.ts) share: whether the
 * machine can run them, and a session bus pointed nowhere. Importing this module points this
 * process's DBUS_SESSION_BUS_ADDRESS at a path that does not exist: the keychain helper inherits the
 * environment, and a test outside its own private session must never reach the user's keychain (nor
 * wait on its unlock prompt).
 */
import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { createRequire } from "node:module";
import { delimiter, join } from "node:path";

process.env.DBUS_SESSION_BUS_ADDRESS = "unix:path=/nonexistent/lessor-test-bus";

/** True when `cmd` is an executable in a PATH directory. */
export function onPath(cmd: string): boolean {
  return (process.env.PATH ?? "").split(delimiter).some((d) => {
    try {
      accessSync(join(d, cmd), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

function keyringInstalled(): boolean {
  try {
    createRequire(import.meta.url).resolve("@napi-rs/keyring");
    return true;
  } catch {
    return false;
  }
}

/**
 * What is missing for a private Secret Service (dbus-run-session, gnome-keyring-daemon, the optional
 * package @napi-rs/keyring), then the `more` checks in order (a reason, or null when present); null
 * when nothing is.
 */
export function keychainMissing(more: (() => string | null)[] = []): string | null {
  if (!onPath("dbus-run-session")) return "dbus-run-session is not installed (Debian: apt-get install dbus-bin)";
  if (!onPath("gnome-keyring-daemon")) return "gnome-keyring-daemon is not installed (Debian: apt-get install gnome-keyring)";
  if (!keyringInstalled()) return "the optional package @napi-rs/keyring is not installed (npm install)";
  for (const check of more) {
    const why = check();
    if (why !== null) return why;
  }
  return null;
}

/** What a script run by {@link runInBusSession} left: its RESULT object, and its whole output. */
export interface BusSessionResult {
  out: Record<string, unknown>;
  stdout: string;
  stderr: string;
}

/**
 * Runs `sh -c "<start>; exec node --import <tsx> $SCRATCH"` under `dbus-run-session` (with `busArgs`
 * before its `--`, e.g. a config file), in a process group of its own that is killed at `timeoutMs`
 * and once it ends (a keyring daemon left behind); resolves to the object the script printed on its
 * `RESULT ` line, or rejects with all its output when there is none.
 */
export function runInBusSession(o: {
  busArgs?: string[];
  start: string;
  tsx: string;
  script: string;
  cwd: string;
  env: NodeJS.ProcessEnv;
  timeoutMs: number;
}): Promise<BusSessionResult> {
  const killGroup = (pid: number | undefined): void => {
    try {
      if (pid !== undefined) process.kill(-pid, "SIGKILL");
    } catch {
      // gone
    }
  };
  return new Promise((resolve, reject) => {
    const child = spawn("dbus-run-session", [...(o.busArgs ?? []), "--", "sh", "-c", `${o.start}; exec node --import "$TSX" "$SCRATCH"`], {
      cwd: o.cwd,
      env: { ...o.env, SCRATCH: o.script, TSX: o.tsx },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true, // its own process group: a timeout ends the bus and the keyring daemon too
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    const timer = setTimeout(() => killGroup(child.pid), o.timeoutMs);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      killGroup(child.pid);
      const stdout = Buffer.concat(out).toString("utf8");
      const stderr = Buffer.concat(err).toString("utf8");
      const line = stdout.split("\n").find((l) => l.startsWith("RESULT "));
      if (line === undefined) return reject(new Error(`the keychain session ended (${code ?? signal}) without a result:\n${stdout}\n${stderr}`));
      resolve({ out: JSON.parse(line.slice("RESULT ".length)) as Record<string, unknown>, stdout, stderr });
    });
  });
}
