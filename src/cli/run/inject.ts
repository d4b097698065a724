/**
 * `lessor inject`: renders the references in a template through leases (taken as `lessor run` takes
 * them, revoked when done) and writes the result to stdout or to a file created 0600, atomically
 * (temporary file, fsync, rename). Nothing is written unless every reference resolved.
 */
import { lstatSync } from "node:fs";
import { writeFileAtomic } from "../../fs/atomic-file.js";
import { VaultError } from "../../base/errors.js";
import { findReferences } from "../refs/text.js";
import type { Cli } from "../cli.js";
import { readTextFile, referencedBytes } from "./child-env.js";
import { LeaseBook } from "./leases.js";
import { holdLeases } from "../holding.js";
import { EXIT } from "../exit-codes.js";

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

/** Renders the template and writes it; returns the exit code. */
export async function injectTemplate(cli: Cli, o: InjectOptions): Promise<number> {
  const text = readTemplate(o.input);
  const where = o.input === "-" ? "<stdin>" : o.input;
  let refs;
  try {
    refs = findReferences(text);
  } catch (e) {
    if (e instanceof VaultError) throw new VaultError(e.code, `${where}: ${e.message}. Nothing was written.`);
    throw e;
  }
  let book: LeaseBook | null = null;
  const parts: Buffer[] = [];
  let out: Buffer | null = null;
  // A closed stdout (EPIPE) must not end the process before the leases below are revoked, nor
  // must a bug (an error nothing catches): the entry then revokes them (holding.ts).
  const release = holdLeases(async () => book?.revokeAll("lessor inject failed"));
  try {
    if (refs.length > 0) {
      const positions = lineCols(text, refs.map((r) => r.start));
      book = new LeaseBook((await cli.backend()).api, { agent: o.agent, domains: o.domains, ...(o.ttl !== undefined ? { ttl: o.ttl } : {}) });
      let at = 0;
      for (const [i, r] of refs.entries()) {
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
        parts.push(Buffer.from(text.slice(at, r.start), "utf8"), Buffer.from(piece.bytes.expose()));
        if (piece.owned) piece.bytes.wipe();
        at = r.end;
      }
      parts.push(Buffer.from(text.slice(at), "utf8"));
      out = Buffer.concat(parts);
    } else {
      out = Buffer.from(text, "utf8");
    }
    if (o.output === undefined || o.output === "-") {
      const data = out;
      const failed = await new Promise<NodeJS.ErrnoException | null>((resolve) => cli.stdout.write(data, (e) => resolve(e ?? null)));
      if (failed) {
        cli.err(`lessor: could not write the output (${failed.code ?? "error"}${failed.code === "EPIPE" ? ": its reader closed the pipe" : ""}); it is incomplete, and its leases are revoked`);
        return EXIT.error;
      }
    } else {
      writeOutput(cli, o.output, out);
    }
    return 0;
  } finally {
    for (const p of parts) p.fill(0);
    out?.fill(0);
    if (book) {
      const { failed } = await book.revokeAll("lessor inject done").catch(() => ({ failed: -1 }));
      if (failed !== 0) cli.err("lessor: some leases of this inject could not be revoked; they end when they expire (lessor revoke --agent can end them now)");
    }
    release();
  }
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
