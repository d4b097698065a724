/**
 * What every command gets: output helpers (plain or --json, NO_COLOR respected), the backend (the
 * daemon if one is running for the home, else the vault opened in-process), and one error path that
 * prints one or two plain sentences and exits with a documented code — no stack traces for expected
 * errors.
 */
import { internalErrorLine } from "./internal-error.js";
import type { Backend } from "../backend/backend.js";
import { EXIT, exitCodeFor } from "./exit-codes.js";
import { VaultError } from "../base/errors.js";
import { VERSION } from "../version.js";
import { jsonText, terminalSafe } from "./format/terminal-safe.js";

/** How {@link Cli.openBackend} opens a backend. */
export interface BackendOpenOptions {
  /** The command keeps its backend for long (run, proxy, mcp): see src/backend/backend.ts's `longLived`. */
  longLived?: boolean;
}

/** Opens a backend for a home (undefined: $LESSOR_HOME or ~/.lessor). */
export type BackendOpener = (home: string | undefined, opts?: BackendOpenOptions) => Promise<Backend>;

/** Shared state of one CLI invocation. */
export class Cli {
  #backend: Promise<Backend> | null = null;
  readonly #open: BackendOpener;
  /** The --home option, if given. */
  home: string | undefined;
  readonly stdout: NodeJS.WriteStream = process.stdout;
  readonly stderr: NodeJS.WriteStream = process.stderr;

  /** True when stdout may carry colour (a TTY and NO_COLOR unset). */
  get color(): boolean {
    return !process.env["NO_COLOR"] && this.stdout.isTTY === true;
  }

  /** Lines made by {@link dim} and not yet printed: printed as they are (their text was escaped when they were made). */
  readonly #styled = new Set<string>();

  /** Prints one line on stdout; control, bidi and invisible characters in it are shown escaped. */
  out(line = ""): void {
    this.stdout.write(`${this.#safe(line)}\n`);
  }

  /** Prints one line on stderr, escaped as {@link out} does. */
  err(line: string): void {
    this.stderr.write(`${this.#safe(line)}\n`);
  }

  /** Prints a value as indented JSON (for --json), with C1, bidi and invisible characters as \u escapes. */
  json(value: unknown): void {
    this.stdout.write(`${jsonText(value, 2)}\n`);
  }

  /** Dims `s` when colour is on (the one escape sequence the CLI itself prints). Pass it whole to out or err. */
  dim(s: string): string {
    if (!this.color) return s;
    const line = `\u001b[2m${terminalSafe(s)}\u001b[22m`;
    this.#styled.add(line);
    return line;
  }

  #safe(line: string): string {
    // A dimmed line is printed once: forgetting it then keeps the set small in a long `audit tail --follow`.
    return this.#styled.delete(line) ? line : terminalSafe(line);
  }

  /** `open` is how backends are opened: the daemon or the embedded vault (src/cli/open-backend.ts, src/backend/backend.ts). */
  constructor(open: BackendOpener) {
    this.#open = open;
  }

  /** The daemon for the home if one is listening, else the embedded vault; opened once. */
  backend(): Promise<Backend> {
    this.#backend ??= this.#open(this.home);
    return this.#backend;
  }

  /** A new backend, apart from {@link backend}'s (the caller closes it). */
  openBackend(opts?: BackendOpenOptions): Promise<Backend> {
    return opts === undefined ? this.#open(this.home) : this.#open(this.home, opts);
  }

  /** Runs a command body: closes the backend after, maps errors to messages and exit codes. */
  async run(body: () => Promise<number | void>): Promise<void> {
    let code: number = EXIT.ok;
    try {
      code = (await body()) ?? EXIT.ok;
    } catch (e) {
      code = this.fail(await this.#olderDaemon(e));
    } finally {
      if (this.#backend) {
        try {
          await (await this.#backend).close();
        } catch {
          // already reported, or nothing to close
        }
      }
    }
    process.exitCode = code;
  }

  /**
   * A daemon older than this CLI answers a call it does not know with "unknown method …": that is
   * the daemon's age, not the user's mistake (every call the CLI makes is one it knows), so say so
   * and what to do. Other errors pass through.
   */
  async #olderDaemon(e: unknown): Promise<unknown> {
    if (!(e instanceof VaultError) || e.code !== "invalid_request" || this.#backend === null) return e;
    const m = /^unknown method ([a-z][a-z0-9_]*);/.exec(e.message);
    if (m === null) return e;
    const backend = await this.#backend.catch(() => null);
    if (backend?.mode !== "daemon") return e;
    return new VaultError(
      "unavailable",
      `the lessor daemon does not know the ${m[1]} call this CLI (lessor ${VERSION}) made: it runs an older lessor; restart it with this version (stop it, then lessor serve), or use the CLI of the daemon's version`,
      { cause: e },
    );
  }

  /** Prints an error and returns its exit code. */
  fail(e: unknown): number {
    if (e instanceof VaultError) {
      this.err(`lessor: ${e.message}`);
      return exitCodeFor(e.code);
    }
    if (e instanceof UsageError) {
      this.err(`lessor: ${e.message}`);
      return EXIT.usage;
    }
    this.err(`lessor: ${internalErrorLine(e)}`);
    return EXIT.internal;
  }
}

/** A command-line mistake found by a command itself (exit code 2). */
export class UsageError extends Error {}
