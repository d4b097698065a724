/**
 * The child of `lessor run`: started without a shell, its output copied through the mask when that
 * output is a pipe or file, and its end awaited. Loaded apart from src/cli/run/run.ts so that the
 * child-process and stream modules load while the daemon is answering the lease requests.
 */
import { spawn, type ChildProcess } from "node:child_process";
import type { Readable, Writable } from "node:stream";
import { VaultError } from "../../base/errors.js";
import { MaskStream, type MaskPattern } from "./mask.js";
import type { BwrapFeatures } from "../../sandbox/detect.js";
import type { RunSandbox } from "./sandbox.js";

export { maskPatterns, type MaskPattern } from "./mask.js";

/** A started child and the copies of its output (each resolves when its stream is done). */
export interface Started {
  child: ChildProcess;
  flushed: Promise<void>[];
  /** Passes a signal on to the command (in a sandbox: to the command inside, not to bwrap). */
  signal(s: NodeJS.Signals): void;
  /** In a sandbox: resolves false when bwrap failed before starting the command. */
  started: Promise<boolean>;
  /** With the sandbox's native bridge: its listening socket, for the proxy (src/cli/run/sandbox.ts). */
  listener?: Promise<number>;
}

/** The sandbox to start the child in, and what its bwrap supports. */
export interface SandboxStart {
  sandbox: RunSandbox;
  features: BwrapFeatures;
  /** The run's proxy directory (network "proxy"): the command runs behind the bridge to it. */
  proxyDir?: string;
  /** Without a proxy: the vault session's directory, shown at /run/lessor (src/cli/run/vault-session.ts). */
  runDir?: string;
}

/**
 * Starts `cmd` with `env`, in `sandbox` when given (src/cli/run/sandbox.ts). stdin is inherited;
 * stdout and stderr are inherited when they are terminals (nothing is masked for a person
 * watching), else piped through a mask of `patterns`.
 */
export function startChild(cmd: string, args: string[], env: Record<string, string>, patterns: MaskPattern[], sandbox?: SandboxStart): Started {
  // The system cannot pass a NUL byte in a variable, and node's refusal would quote the value.
  for (const [k, v] of Object.entries(env))
    if (k.includes("\0") || k.includes("=") || v.includes("\0"))
      throw new VaultError("invalid_request", `the environment variable ${JSON.stringify(k.replace(/\0/g, "\\0").slice(0, 100))} has a NUL byte (or "=" in its name), which no environment can carry; nothing was started`);
  const maskOut = process.stdout.isTTY !== true;
  const maskErr = process.stderr.isTTY !== true;
  const stdio = ["inherit", maskOut ? "pipe" : "inherit", maskErr ? "pipe" : "inherit"] as const;
  let child: ChildProcess;
  let signal: (s: NodeJS.Signals) => void;
  let started: Promise<boolean>;
  let listener: Promise<number> | undefined;
  if (sandbox) {
    const s = sandbox.sandbox.start(sandbox.features, args, env, [...stdio], sandbox.proxyDir, sandbox.runDir);
    ({ child, signal, started, listener } = s);
  } else {
    const c = spawn(cmd, args, { env, stdio: [...stdio] });
    child = c;
    signal = (s) => c.kill(s);
    started = Promise.resolve(true);
  }
  const flushed: Promise<void>[] = [];
  if (maskOut && child.stdout) flushed.push(relayOutput(child.stdout, process.stdout, patterns));
  if (maskErr && child.stderr) flushed.push(relayOutput(child.stderr, process.stderr, patterns));
  return { child, flushed, signal, started, ...(listener !== undefined ? { listener } : {}) };
}

/** Resolves when the child exits, or with the spawn error when it could not start. */
export function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: NodeJS.ErrnoException }> {
  return new Promise((resolve) => {
    child.once("exit", (code, signal) => resolve({ code, signal }));
    child.once("error", (error: NodeJS.ErrnoException) => resolve({ code: null, signal: null, error }));
  });
}

/**
 * Copies the child's output to lessor's through a {@link MaskStream}. When lessor's own output is
 * closed (`| head`), the child's pipe is closed too, so the child sees EPIPE as it would without lessor.
 */
function relayOutput(from: Readable, to: Writable, patterns: MaskPattern[]): Promise<void> {
  const mask = new MaskStream(patterns);
  return new Promise((resolve) => {
    const done = (): void => resolve();
    to.once("error", () => {
      from.destroy();
      mask.destroy();
      done();
    });
    from.once("error", () => mask.end());
    mask.once("end", done);
    mask.once("close", done);
    from.pipe(mask).pipe(to, { end: false });
  });
}
