/**
 * For denial-of-service tests on a real `lessor serve`: attackers in their own processes
 * (test/fixtures/dos-client.mjs), as user nobody where a second uid matters, and a home whose socket
 * that user can reach.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { after } from "node:test";
import { makeHome } from "./daemon-harness.js";
import type { Msg } from "./raw-client.js";

const CLIENT = fileURLToPath(new URL("./fixtures/dos-client.mjs", import.meta.url));
/** The attackers' uid. */
export const NOBODY = 65534;
export const LINUX_ROOT = process.platform === "linux" && process.getuid?.() === 0;
const HAS_SETPRIV = spawnSync("setpriv", ["--version"]).error === undefined;
/** The `skip` option for tests that attack as another uid (nobody). */
export const AS_NOBODY: false | string = !LINUX_ROOT ? "needs root on Linux, to attack as another uid (nobody)" : !HAS_SETPRIV ? "setpriv (util-linux) is not installed" : false;

export interface Attacker {
  proc: ChildProcessWithoutNullStreams;
  /** The JSON lines the attacker printed, in order, as they come (waits up to `timeoutMs`, by default the attacker's). */
  line(n: number, timeoutMs?: number): Promise<Msg>;
  /** Closes its stdin (it drops its connections and exits) and waits for the exit. */
  stop(): Promise<void>;
}

/** Runs test/fixtures/dos-client.mjs with `args`, as user nobody when asked; killed after the test (file). */
export function attacker(args: string[], asNobody: boolean, lineTimeoutMs = 30_000): Attacker {
  const cmd = asNobody ? "setpriv" : process.execPath;
  const argv = asNobody ? [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", process.execPath, CLIENT, ...args] : [CLIENT, ...args];
  const proc = spawn(cmd, argv, { cwd: "/", stdio: ["pipe", "pipe", "pipe"] });
  const lines: Msg[] = [];
  const waiters: (() => void)[] = [];
  let err = "";
  proc.stderr.on("data", (d) => (err += d));
  createInterface({ input: proc.stdout }).on("line", (l) => {
    lines.push(JSON.parse(l));
    for (const w of waiters.splice(0)) w();
  });
  const exited = new Promise<void>((r) => proc.on("exit", () => (r(), waiters.splice(0).forEach((w) => w()))));
  after(() => proc.kill());
  return {
    proc,
    async line(n, timeoutMs = lineTimeoutMs) {
      const end = Date.now() + timeoutMs;
      while (lines.length <= n) {
        if (proc.exitCode !== null || Date.now() > end) throw new Error(`the attacker printed ${lines.length} lines (wanted ${n + 1}); stderr: ${err}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 200).unref();
        });
      }
      return lines[n];
    },
    async stop() {
      proc.stdin.end();
      await exited;
    },
  };
}

/** Directories made here are removed when the test process exits (suites' after() hooks run too early for before()). */
const dirs: string[] = [];
process.on("exit", () => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/**
 * A home for user nobody to reach, with `policy`: the socket in a 0755 directory, mode 0666, TCP on
 * loopback, nobody mapped to agent claude; `server` and `vault` add to those tables.
 */
export async function sharedHome(policy: string, server: string, vault = ""): Promise<{ home: string; socket: string }> {
  const run = mkdtempSync(join(tmpdir(), "lessor-dos-"));
  dirs.push(run);
  chmodSync(run, 0o755);
  const socket = join(run, "agents.sock");
  const config = `[vault]\nmax_live_leases_per_agent = 1000000\n${vault}\n[server]\nsocket = ${JSON.stringify(socket)}\nsocket_mode = "0666"\ntcp = "127.0.0.1:0"\n${server}\n[[identity]]\nuid = ${NOBODY}\nrole = "agent"\nagent = "claude"\n`;
  return { home: await makeHome({ config, policy }), socket };
}
