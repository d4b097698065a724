/**
 * `lessor inject`: renders the references in a template through leases (taken as `lessor run` takes
 * them, revoked when done, as `lessor run` revokes them) and writes the result to stdout or to a file
 * created 0600, atomically (temporary file, fsync, rename). Nothing is written unless every reference
 * resolved.
 */
import { lstatSync } from "node:fs";
import { writeFileAtomic } from "../../fs/atomic-file.js";
import { VaultError } from "../../base/errors.js";
import { findReferences } from "../refs/text.js";
import type { Cli } from "../cli.js";
import { readTextFile, referencedBytes } from "./child-env.js";
import { LeaseBook, refuseRevoked } from "./leases.js";
import { Connection, revokeLeases } from "./connection.js";
import { Interrupted, signalExitCode, StopSignals } from "./signals.js";
import { holdLeases } from "../holding.js";
import { EXIT } from "../exit-codes.js";
import { unsafeForTerminal } from "../format/terminal-safe.js";
import { codePointName, hasUnsafeText } from "../../base/text.js";

/** Options of {@link injectTemplate}. */
export interface InjectOptions {
  /** Template path, or "-" for stdin. */
  input: string;
  /** Output path; stdout when absent or "-". */
  output?: string;
  agent: string;
  domains: string[];
  ttl?: string;
}

/**
 * 1-based line and column of each offset in `offsets` (ascending) in `text`; columns count UTF-16
 * code units. One pass over the text for all of them: a template with many references on many lines
 * costs linear time, not a scan from the start per reference.
 */
export function lineCols(text: string, offsets: readonly number[]): { line: number; col: number }[] {
  const out: { line: number; col: number }[] = [];
  let line = 1;
  let start = 0;
  let next = text.indexOf("\n");
  for (const at of offsets) {
    while (next >= 0 && next < at) {
      line++;
      start = next + 1;
      next = text.indexOf("\n", start);
    }
    out.push({ line, col: at - start + 1 });
  }
  return out;
}

function readTemplate(path: string): string {
  return readTextFile(path, "the template", "-i");
}

/**
 * Renders the template and writes it; returns the exit code. The leases are revoked when it ends,
 * also when the daemon closed the connection meanwhile ({@link revokeLeases}); leases that could
 * not be make the exit code 1. SIGINT, SIGTERM or SIGHUP stops it: nothing more is written, the
 * leases are revoked, and it exits 128 + the signal's number.
 */
export async function injectTemplate(cli: Cli, o: InjectOptions): Promise<number> {
  const text = readTemplate(o.input);
  const where = o.input === "-" ? "<stdin>" : o.input;
  const toTerminal = (o.output === undefined || o.output === "-") && cli.stdout.isTTY === true;
  let refs;
  try {
    refs = findReferences(text);
  } catch (e) {
    if (e instanceof VaultError) throw new VaultError(e.code, `${where}: ${e.message}. Nothing was written.`);
    throw e;
  }
  // Rendered to a terminal, the template's own text is shown around the values too: escapes in it
  // would act on the terminal, and wrap a clean value in a hyperlink to elsewhere (OSC 8), the
  // clipboard (OSC 52) or the window title. Refused before any lease, as a value holding them is.
  const unsafeAt = toTerminal && refs.length > 0 ? firstUnsafe(text) : null;
  if (unsafeAt !== null) {
    const { line, col } = lineCols(text, [unsafeAt.index])[0]!;
    throw new VaultError(
      "invalid_request",
      `${where}:${line}:${col}: the template holds ${unsafeAt.what}, which would act on this terminal around the secrets it writes rather than be shown; render to a file (-o FILE) or a pipe. Nothing was written.`,
    );
  }
  // From before the first lease: SIGINT, SIGTERM and SIGHUP stop inject, which then revokes its
  // leases, instead of killing it with them live.
  const stop = new StopSignals();
  const abort = (): void => {
    if (stop.first) throw new Interrupted(stop.first);
  };
  const conn = new Connection(cli);
  let book: LeaseBook | null = null;
  const parts: Buffer[] = [];
  let out: Buffer | null = null;
  /** True while stdout has not taken the whole output (its reader is slow, or gone). */
  let writing = false;
  let code: number = EXIT.ok;
  let unrevoked: readonly string[] = [];
  // A closed stdout (EPIPE) must not end the process before the leases below are revoked, nor
  // must a bug (an error nothing catches): the entry then revokes them (holding.ts).
  const release = holdLeases(async () => book && revokeLeases(cli, conn, book, "lessor inject failed", "this inject"));
  try {
    if (refs.length > 0) {
      const positions = lineCols(text, refs.map((r) => r.start));
      book = new LeaseBook((await conn.open()).api, { agent: o.agent, domains: o.domains, ...(o.ttl !== undefined ? { ttl: o.ttl } : {}) });
      let at = 0;
      for (const [i, r] of refs.entries()) {
        abort();
        const { line, col } = positions[i]!;
        const pos = `${where}:${line}:${col}`;
        let whole;
        try {
          whole = await book.value(r.ref, pos);
        } catch (e) {
          if (e instanceof VaultError) throw new VaultError(e.code, `${e.message}. Nothing was written.`);
          throw e;
        }
        let piece;
        try {
          piece = referencedBytes(whole, r.ref);
        } catch (e) {
          if (e instanceof VaultError) throw new VaultError(e.code, `${pos}: ${e.message}. Nothing was written.`);
          throw e;
        }
        // Rendered to a terminal, the values are shown: one holding escapes would act on it instead
        // (as secret get --reveal and lessor lease refuse). Files and pipes get the bytes.
        const unsafe = toTerminal ? unsafeForTerminal(piece.bytes.expose()) : null;
        if (unsafe !== null) {
          if (piece.owned) piece.bytes.wipe();
          throw new VaultError(
            "invalid_request",
            `${pos}: the value it names holds ${unsafe}, which would act on this terminal rather than be shown; render to a file (-o FILE) or a pipe. Nothing was written.`,
          );
        }
        parts.push(Buffer.from(text.slice(at, r.start), "utf8"), Buffer.from(piece.bytes.expose()));
        if (piece.owned) piece.bytes.wipe();
        at = r.end;
      }
      parts.push(Buffer.from(text.slice(at), "utf8"));
      out = Buffer.concat(parts);
      // The leases were taken one after another: one revoked while a later one was granted (lessor
      // revoke, the killswitch) must not have its value written now. A single lease has no such gap:
      // its value is written as soon as it comes, no round trip between.
      abort();
      if (book.leases.length > 1)
        await refuseRevoked((await conn.open()).api, o.agent, book.leases, {
          while: "lessor inject took the template's other leases",
          so: "its value is not written. Nothing was written",
        });
    } else {
      out = Buffer.from(text, "utf8");
    }
    abort();
    if (o.output === undefined || o.output === "-") {
      const data = out;
      writing = true;
      const written = new Promise<NodeJS.ErrnoException | null>((resolve) =>
        cli.stdout.write(data, (e) => {
          writing = false;
          resolve(e ?? null);
        }),
      );
      // A signal while the reader has not taken it all (a pager, a slow pipeline) stops the wait.
      const ended = await Promise.race([written.then((failed) => ({ failed })), stop.stopped.then((signal) => ({ signal }))]);
      if ("signal" in ended) throw new Interrupted(ended.signal);
      if (ended.failed) {
        const failed = ended.failed;
        cli.err(`lessor: could not write the output (${failed.code ?? "error"}${failed.code === "EPIPE" ? ": its reader closed the pipe" : ""}); it is incomplete, and its leases are revoked`);
        code = EXIT.error;
      }
    } else {
      writeOutput(cli, o.output, out);
    }
  } catch (e) {
    if (!(e instanceof Interrupted)) throw e;
    cli.err(`lessor: stopped by ${e.signal}; ${writing ? "the output is incomplete" : "nothing was written"}; revoking the leases taken`);
  } finally {
    for (const p of parts) p.fill(0);
    out?.fill(0);
    if (book) unrevoked = await revokeLeases(cli, conn, book, "lessor inject done", "this inject");
    await conn.close();
    stop.dispose();
    release();
  }
  // A signal that came after the output was written (while its leases were being revoked) counts too.
  if (stop.first) code = signalExitCode(stop.first);
  else if (unrevoked.length > 0 && code === EXIT.ok) code = EXIT.error;
  // The output its reader has not taken would keep lessor waiting for it: lessor ends, as the signal
  // would have ended it (the rest of the output is not written).
  if (writing) process.exit(code);
  return code;
}

/** Writes `data` to `path` as a new 0600 file (temp + rename); says so when it replaces a wider file. */
function writeOutput(cli: Cli, path: string, data: Buffer): void {
  let before: number | null = null;
  try {
    const st = lstatSync(path);
    if (st.isDirectory()) throw new VaultError("invalid_request", `${path} is a directory; give -o a file path`);
    if (st.isFile()) before = st.mode & 0o777;
  } catch (e) {
    if (e instanceof VaultError) throw e;
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw new VaultError("invalid_request", `cannot check ${path} (${(e as NodeJS.ErrnoException).code ?? "error"}); check the -o path`);
  }
  try {
    writeFileAtomic(path, data, 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new VaultError("invalid_request", `cannot write ${path} (${code ?? "error"}); check that its directory exists and is writable`);
  }
  if (before !== null && (before & 0o077) !== 0)
    cli.err(`lessor: ${path} had mode ${before.toString(8).padStart(4, "0")}; it was replaced by a file with mode 0600`);
}

/**
 * The first character of `text` a terminal would obey rather than show, or null: tab, line feed and a
 * carriage return before a line feed (a template saved with CRLF line ends) aside.
 */
function firstUnsafe(text: string): { index: number; what: string } | null {
  for (let i = 0; i < text.length; ) {
    const cp = text.codePointAt(i)!;
    const ch = String.fromCodePoint(cp);
    const shown = cp === 0x09 || cp === 0x0a || (cp === 0x0d && text.charCodeAt(i + 1) === 0x0a);
    if (!shown && hasUnsafeText(ch)) return { index: i, what: `a control or invisible character (${codePointName(ch)})` };
    i += ch.length;
  }
  return null;
}
