/**
 * `lessor secret export` and `lessor secret import`: a lossless backup and restore of secret values
 * in JSON or dotenv (formats in json-format.ts and dotenv.ts). Export reveals every value it writes,
 * and each reveal is audited as `secret_revealed`; files it writes are created 0600.
 */
import { lstat, open, readdir, rename, unlink } from "node:fs/promises";
import { dirname, basename, join } from "node:path";
import type { Cli } from "../cli.js";
import { UsageError } from "../cli.js";
import { EXIT } from "../exit-codes.js";
import { checkScope, refString } from "../../base/names.js";
import { isRunning, startTime } from "../../fs/process-identity.js";
import type { SecretEntry } from "./entry.js";
import { listAllSecrets } from "./list-all.js";
import { ENV_KEY, formatDotenv, parseDotenv } from "./dotenv.js";
import { formatJson, parseJsonExport } from "./json-format.js";
import { ParseError } from "./parse-error.js";
import { readAll, readFileCapped } from "./value-source.js";

type Format = "dotenv" | "json";

function formatOf(f: string | undefined, fallback: Format): Format {
  if (f === undefined) return fallback;
  if (f !== "dotenv" && f !== "json") throw new UsageError(`--format must be dotenv or json, not ${JSON.stringify(f)}`);
  return f;
}

function examples(names: string[]): string {
  const shown = names.slice(0, 3).join(", ");
  return names.length > 3 ? `${shown}, …` : shown;
}

/**
 * Removes the temporary files an export to `path` that was killed before its rename left behind
 * (`.<base>.<pid>.<start>.tmp`, or `.<base>.<pid>.tmp` from older versions; 0600, holding values):
 * regular files of this user whose process is gone. A process is the same one only while its pid has
 * the start time in the name, so a pid reused by another process does not keep the values on disk.
 * Links, other users' files and files of a live export are left alone. Returns how many it removed.
 */
async function removeStaleTemps(path: string): Promise<number> {
  const dir = dirname(path);
  const prefix = `.${basename(path)}.`;
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return 0;
  }
  let removed = 0;
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith(".tmp")) continue;
    const m = /^([1-9][0-9]{0,9})(?:\.([0-9]{1,20}))?$/.exec(name.slice(prefix.length, -".tmp".length));
    if (m === null || Number(m[1]) === process.pid || isRunning({ pid: Number(m[1]), start: m[2] ?? null })) continue;
    const p = join(dir, name);
    try {
      const st = await lstat(p);
      if (!st.isFile() || st.uid !== process.getuid?.()) continue;
      await unlink(p);
      removed++;
    } catch {
      // gone meanwhile, or not ours to remove
    }
  }
  return removed;
}

/** Writes `data` to `path` through a 0600 temporary file renamed into place. */
async function writePrivate(cli: Cli, path: string, data: Buffer): Promise<void> {
  const stale = await removeStaleTemps(path);
  if (stale > 0) cli.err(`lessor: removed ${stale} temporary file${stale === 1 ? "" : "s"} holding secret values that an interrupted export to ${path} left beside it`);
  const start = startTime(process.pid);
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}${start !== null ? `.${start}` : ""}.tmp`);
  let fh;
  try {
    fh = await open(tmp, "wx", 0o600);
    await fh.writeFile(data);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, path);
  } catch (e) {
    await fh?.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    const code = (e as NodeJS.ErrnoException).code ?? "error";
    throw new UsageError(`cannot write ${path} (${code}); check the directory exists and is writable`);
  }
}

/** `secret export`. */
export async function exportSecrets(
  cli: Cli,
  o: { format?: string; scope?: string; output?: string; prefix?: string; tag?: string },
): Promise<number> {
  const toFile = o.output !== undefined && o.output !== "-";
  // Every value on a terminal lands in its scrollback, a screen share or a recording: as `secret get`
  // needs --reveal there, an export to a terminal is asked for by name (-o -), before anything is read.
  if (o.output === undefined && cli.stdout.isTTY === true)
    throw new UsageError("secret export writes every value in the clear, and stdout is a terminal; give -o FILE for a backup file (0600), or -o - to print the values here");
  const format = formatOf(o.format, toFile && o.output!.toLowerCase().endsWith(".json") ? "json" : "dotenv");
  if (o.scope !== undefined) checkScope(o.scope);
  const { api } = await cli.backend();
  const list = await listAllSecrets(api, {
    ...(o.scope !== undefined ? { scope: o.scope } : {}),
    ...(o.prefix !== undefined ? { namePrefix: o.prefix } : {}),
    ...(o.tag !== undefined ? { tag: o.tag } : {}),
  });

  const scope = o.scope ?? "global";
  if (format === "dotenv") {
    const others = list.filter((s) => s.scope !== scope);
    if (others.length > 0)
      throw new UsageError(
        `a dotenv file holds one scope, and ${others.length} secret${others.length === 1 ? " is" : "s are"} outside ${scope} (${examples(others.map(refString))}); ` +
          `pass --scope ${others[0]!.scope} to export that scope, or use --format json to export every scope`,
      );
    const bad = list.filter((s) => !ENV_KEY.test(s.name));
    if (bad.length > 0)
      throw new UsageError(
        `${bad.length === 1 ? "1 secret name is not a valid dotenv name" : `${bad.length} secret names are not valid dotenv names`} (${examples(bad.map((s) => s.name))}): ` +
          `a dotenv name has only letters, digits and _ and does not start with a digit; use --format json, which keeps any name`,
      );
  }

  const entries: SecretEntry[] = [];
  try {
    for (const s of list) {
      const { value } = await api.revealSecret({ scope: s.scope, name: s.name });
      try {
        entries.push({ scope: s.scope, name: s.name, value: Buffer.from(value.expose()), kind: s.kind, description: s.description, tags: s.tags });
      } finally {
        value.wipe();
      }
    }
    const text =
      format === "json"
        ? formatJson(entries)
        : formatDotenv(entries, [
            `lessor secret export: scope ${scope}, ${entries.length} secret${entries.length === 1 ? "" : "s"}, ${new Date().toISOString()}`,
            `values: "text" with \\\\ \\" \\n \\r \\t \\$ escapes, or base64:<bytes>; read back with lessor secret import --scope ${scope}`,
          ]);
    const data = Buffer.from(text, "utf8");
    try {
      if (toFile) {
        await writePrivate(cli, o.output!, data);
        cli.err(`exported ${entries.length} secret${entries.length === 1 ? "" : "s"} as ${format} to ${o.output} (0600)`);
      } else await new Promise<void>((resolve, reject) => cli.stdout.write(data, (e) => (e ? reject(e) : resolve())));
    } finally {
      data.fill(0);
    }
  } finally {
    for (const e of entries) e.value.fill(0);
  }
  return EXIT.ok;
}

/**
 * The largest file `secret import` reads (64 MiB: about 750 values of 64 KiB as base64, or many
 * thousands of ordinary ones). More is refused before it is all read, so an endless pipe or a device
 * ends with an error, not with the memory.
 */
export const MAX_IMPORT_BYTES = 64 * 1024 * 1024;

/** `secret import FILE|-`: parses the whole file strictly first, then stores each secret (a new version if it exists). */
export async function importSecrets(cli: Cli, file: string, o: { format?: string; scope?: string; json?: boolean }): Promise<number> {
  if (o.scope !== undefined) checkScope(o.scope);
  const label = file === "-" ? "stdin" : file;
  const cap = { bytes: MAX_IMPORT_BYTES, fix: "split it: export with --scope, --prefix or --tag, and import each part" };
  const bytes = file === "-" ? await readAll(process.stdin, { ...cap, what: "stdin" }) : readFileCapped(file, file, cap);
  let entries: SecretEntry[];
  try {
    const { isUtf8 } = await import("node:buffer");
    if (!isUtf8(bytes)) throw new UsageError(`${label} is not UTF-8 text; an export file keeps binary values as base64`);
    const text = bytes.toString("utf8");
    const format = formatOf(o.format, /^\ufeff?\s*\{/.test(text) ? "json" : "dotenv");
    if (format === "json") {
      entries = parseJsonExport(text.replace(/^\ufeff/, ""));
      if (o.scope !== undefined) {
        const seen = new Map<string, string>();
        for (const e of entries) {
          const was = seen.get(e.name);
          if (was !== undefined)
            throw new UsageError(`${label}: ${was} and ${refString(e)} would both become ${o.scope}/${e.name} with --scope; import without --scope, or split the file`);
          seen.set(e.name, refString(e));
          e.scope = o.scope;
        }
      }
    } else {
      const scope = o.scope ?? "global";
      entries = parseDotenv(text).map((d) => ({ scope, name: d.name, value: d.value, ...(d.line !== undefined ? { line: d.line } : {}) }));
    }
  } catch (e) {
    if (e instanceof ParseError) throw new UsageError(`${label}: line ${e.line}, column ${e.column}: ${e.message}; nothing was imported`);
    throw e;
  } finally {
    bytes.fill(0);
  }

  const { api } = await cli.backend();
  const done: { secret: string; scope: string; name: string; version: number }[] = [];
  try {
    for (const e of entries) {
      const meta = await api.storeSecret({
        scope: e.scope,
        name: e.name,
        value: e.value,
        ...(e.kind !== undefined ? { kind: e.kind } : {}),
        ...(e.description !== undefined ? { description: e.description } : {}),
        ...(e.tags !== undefined ? { tags: e.tags } : {}),
      });
      done.push({ secret: refString(e), scope: e.scope, name: e.name, version: meta.currentVersion });
      if (!o.json) cli.out(`stored ${refString(e)} version ${meta.currentVersion}`);
    }
  } catch (err) {
    if (entries.length > 1) cli.err(`lessor: stored ${done.length} of ${entries.length} secrets from ${label} before this error:`);
    throw err;
  } finally {
    for (const e of entries) e.value.fill(0);
  }
  if (o.json) cli.json(done);
  else cli.out(`imported ${done.length} secret${done.length === 1 ? "" : "s"} from ${label}`);
  return EXIT.ok;
}
