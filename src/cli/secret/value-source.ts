/**
 * Where `secret set` and `secret rotate` get a value: stdin when it is a pipe or file, a no-echo
 * prompt (asked twice) when it is a terminal, `--from-file`, `--random`, or — only with
 * `--force-argv`, and with a warning — `--value`. The value is never printed or put in a message.
 */
import { closeSync, fstatSync } from "node:fs";
import { readCappedSync, type Capped } from "../../fs/capped-read.js";
import { checkOwnInput, openNoWait } from "../../fs/trusted-file.js";
import { VaultError } from "../../base/errors.js";
import type { Cli } from "../cli.js";
import { UsageError } from "../cli.js";
import { promptHidden } from "../format/prompt.js";
import { isCharset, randomValue, CHARSETS } from "./random.js";
import { positiveInt } from "../format/options.js";

/** The value options shared by `set` and `rotate`. */
export interface ValueOptions {
  fromFile?: string;
  random?: boolean;
  length?: string;
  charset?: string;
  value?: string;
  forceArgv?: boolean;
  keepNewline?: boolean;
  allowEmpty?: boolean;
}

/** Longest `--random` value. */
export const MAX_RANDOM_LENGTH = 65536;

export const ARGV_REFUSED =
  "refusing to take a secret value from the command line: it would be kept in your shell history and be visible to other users in ps. " +
  "Pipe it on stdin (printf %s \"$TOKEN\" | lessor secret set NAME), type it at the prompt, or use --from-file or --random; " +
  "if you accept the risk, pass --value with --force-argv";

const ARGV_WARNING =
  "lessor: warning: the value was given on the command line, so it may be kept in your shell history and was visible in ps while this ran";

/** What to do about a value over {@link MAX_VALUE_INPUT}. */
export const VALUE_TOO_LARGE = "a secret holds at most [vault] max_secret_bytes, 65536 by default and 524288 at most";

/** Removes one trailing "\n" or "\r\n" from `b` (a view, not a copy). */
export function stripOneNewline(b: Buffer): Buffer {
  if (b.length >= 2 && b[b.length - 2] === 0x0d && b[b.length - 1] === 0x0a) return b.subarray(0, b.length - 2);
  if (b.length >= 1 && b[b.length - 1] === 0x0a) return b.subarray(0, b.length - 1);
  return b;
}

/**
 * The most `secret set` and `secret rotate` read from stdin or `--from-file`: the largest value
 * `[vault] max_secret_bytes` can allow (512 KiB), plus a trailing CRLF. More is refused before it is
 * all read, so `--from-file /dev/zero` or an endless pipe ends with an error, not with the memory.
 */
export const MAX_VALUE_INPUT = 512 * 1024 + 2;

/**
 * Reads all of a stream into one buffer, zeroing the chunks it copied from. With `max`, more than
 * `max` bytes is a {@link UsageError} saying `what` is too large (read no further; nothing kept).
 */
export async function readAll(stream: NodeJS.ReadableStream, max?: { bytes: number; what: string; fix: string }): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const c of stream) {
      const b = typeof c === "string" ? Buffer.from(c) : (c as Buffer);
      chunks.push(b);
      total += b.length;
      if (max !== undefined && total > max.bytes) {
        (stream as { destroy?: () => void }).destroy?.();
        throw new UsageError(`${max.what} is larger than ${max.bytes} bytes, the most lessor reads; nothing was stored (${max.fix})`);
      }
    }
    return Buffer.concat(chunks);
  } finally {
    for (const c of chunks) c.fill(0);
  }
}

/**
 * Reads the file at `path`, at most `max.bytes` of it ({@link readCappedSync}: a device or a file that
 * grows cannot make it read for ever). A file that cannot be opened is a {@link UsageError} naming
 * `label` and the error code; a larger one says so and what to do.
 */
export function readFileCapped(path: string, label: string, max: { bytes: number; fix: string }): Buffer {
  let got: Capped;
  try {
    const fd = openNoWait(path);
    try {
      checkOwnInput(fstatSync(fd), label, path, "choose the values you store", undefined, fd);
      got = readCappedSync(fd, max.bytes);
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    if (e instanceof VaultError) throw e;
    const code = (e as NodeJS.ErrnoException).code ?? "error";
    throw new UsageError(`cannot read ${label} (${code}); check the path and its permissions`);
  }
  if ("tooLarge" in got) throw new UsageError(`${label} is larger than ${max.bytes} bytes, the most lessor reads; nothing was stored (${max.fix})`);
  return got.bytes;
}

/** Checks the options before anything is read (so a mistake is reported before a prompt). */
export function checkValueOptions(o: ValueOptions, extraArgs: readonly string[]): void {
  if (extraArgs.length > 0) throw new UsageError(ARGV_REFUSED);
  const sources = [o.fromFile !== undefined, o.random === true, o.value !== undefined].filter(Boolean).length;
  if (sources > 1) throw new UsageError("choose one value source: stdin, the prompt, --from-file, --random or --value");
  if ((o.length !== undefined || o.charset !== undefined) && !o.random) throw new UsageError("--length and --charset go with --random");
  if (o.length !== undefined) positiveInt("--length", o.length, MAX_RANDOM_LENGTH);
  if (o.charset !== undefined && !isCharset(o.charset))
    throw new UsageError(`--charset must be one of ${Object.keys(CHARSETS).join(", ")}`);
  if (o.value !== undefined && !o.forceArgv) throw new UsageError(ARGV_REFUSED);
  if (o.forceArgv && o.value === undefined) throw new UsageError("--force-argv goes with --value");
}

/** True when the value will come from an interactive prompt. */
export function willPrompt(o: ValueOptions, stdin: NodeJS.ReadStream = process.stdin): boolean {
  return o.fromFile === undefined && !o.random && o.value === undefined && stdin.isTTY === true;
}

/**
 * Reads the value from the chosen source. The caller owns (and should zero) the result.
 * Throws PromptCancelled (from ./prompt.js) when the user cancels the prompt.
 */
export async function readSecretValue(cli: Cli, o: ValueOptions, label: string): Promise<Buffer> {
  let value: Buffer;
  if (o.value !== undefined) {
    cli.err(ARGV_WARNING);
    value = Buffer.from(o.value, "utf8");
  } else if (o.fromFile !== undefined) {
    value = readFileCapped(o.fromFile, `--from-file ${o.fromFile}`, { bytes: MAX_VALUE_INPUT, fix: VALUE_TOO_LARGE });
  } else if (o.random) {
    const charset = o.charset !== undefined && isCharset(o.charset) ? o.charset : "base64url";
    return randomValue(o.length === undefined ? 32 : positiveInt("--length", o.length, MAX_RANDOM_LENGTH), charset);
  } else if (process.stdin.isTTY) {
    const [first, second] = await promptHidden([`Value for ${label}: `, "Again, to confirm: "], process.stdin, process.stderr);
    if (first !== second) throw new UsageError("the two values did not match; nothing was stored, try again");
    value = Buffer.from(first!, "utf8");
  } else {
    const all = await readAll(process.stdin, { bytes: MAX_VALUE_INPUT, what: "the value on stdin", fix: VALUE_TOO_LARGE });
    if (o.keepNewline) value = all;
    else {
      const kept = stripOneNewline(all);
      value = Buffer.alloc(kept.length);
      kept.copy(value);
      all.fill(0);
    }
  }
  if (value.length === 0 && !o.allowEmpty) {
    const from = o.fromFile !== undefined ? `the file ${o.fromFile}` : o.value !== undefined ? "--value" : process.stdin.isTTY ? "the prompt" : "stdin";
    throw new UsageError(`the value from ${from} is empty; nothing was stored (pass --allow-empty to store an empty value)`);
  }
  return value;
}

