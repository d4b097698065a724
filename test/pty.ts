/** A command under a real pseudo-terminal (util-linux `script`), for tests of prompts without echo. */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";

/** Whether util-linux `script` is installed (suites that need a terminal skip without it). */
export const hasScript = (() => {
  try {
    execFileSync("script", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

export interface PtyOptions {
  /** The child is killed (SIGKILL) after this long. */
  killAfterMs: number;
  /** How long `waitFor` waits for the terminal to show something before it fails. */
  waitForMs: number;
}

export interface Pty {
  /** Everything the terminal showed so far. */
  readonly out: string;
  type(s: string): boolean;
  /** Resolves once the terminal has shown `s` (after `from`); fails after `waitForMs`. */
  waitFor(s: string, from?: number): Promise<void>;
  /** Resolves with the exit code once the command has exited. */
  exit(): Promise<number | null>;
}

/** Runs `command` under a real pseudo-terminal; `out` is everything the terminal showed. */
export function pty(command: string, env: Record<string, string>, opts: PtyOptions): Pty {
  const child = spawn("script", ["-qec", command, "/dev/null"], {
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", TERM: "dumb", ...env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString("utf8")));
  child.stderr.on("data", (d: Buffer) => (out += d.toString("utf8")));
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  const timer = setTimeout(() => child.kill("SIGKILL"), opts.killAfterMs);
  void exited.then(() => clearTimeout(timer));
  return {
    get out() {
      return out;
    },
    type: (s: string) => child.stdin.write(s),
    async waitFor(s: string, from = 0): Promise<void> {
      const end = Date.now() + opts.waitForMs;
      while (!out.slice(from).includes(s)) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${JSON.stringify(s)}; terminal showed ${JSON.stringify(out)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async exit(): Promise<number | null> {
      const code = await exited;
      child.stdin.destroy();
      return code;
    },
  };
}

/**
 * Asserts that the pty echoes typed input by default, so that a test's "the secret never showed"
 * checks mean something.
 */
export async function assertPtyEchoes(opts: PtyOptions): Promise<void> {
  const t = pty(`sh -c 'echo ready; read x; echo done'`, {}, opts);
  await t.waitFor("ready");
  t.type("ECHO-CHECK-typed\r");
  await t.waitFor("done");
  assert.equal(await t.exit(), 0);
  assert.match(t.out, /ECHO-CHECK-typed/);
}
