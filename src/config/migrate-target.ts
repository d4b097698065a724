/**
 * Where `lessor migrate` copies a vault to, and from where it may read that: a SQLite file named on the
 * command line (`--to sqlite:PATH`, no secret in it), or a PostgreSQL URL. A URL with a password is
 * never taken from the command line (any user on the machine can read a process's arguments in
 * /proc): it comes from `LESSOR_MIGRATE_TO` or from a file (`--to-file PATH`, readable by its owner
 * only); a password-free URL may be given with `--to` (the password then comes from `PGPASSWORD` or
 * `~/.pgpass`, which node-postgres reads). No message here ever shows the URL itself.
 */
import { readTrustedFile } from "../fs/trusted-file.js";
import { resolve } from "node:path";
import { VaultError } from "../base/errors.js";
import { describeTarget } from "../store/postgres/connection.js";

/** The environment variable `lessor migrate` reads the target from. */
export const MIGRATE_TO_ENV = "LESSOR_MIGRATE_TO";

/** A migration target. */
export type MigrateTarget = { kind: "sqlite"; path: string } | { kind: "postgres"; url: string };

/** Query parameters node-postgres or libpq take a secret from. */
const SECRET_PARAMS = ["password", "sslpassword", "sslkey"];

const FORMS = "sqlite:PATH or postgres://user@host:5432/database";

/** True when the URL carries a password (in its user part or a parameter). */
function hasPassword(u: URL): boolean {
  return u.password !== "" || SECRET_PARAMS.some((p) => u.searchParams.has(p));
}

/**
 * Parses a target written as `sqlite:PATH` (relative to `cwd`) or a `postgres://` / `postgresql://`
 * URL. `from` names where it came from, for messages; `passwordAllowed` is false for the command line.
 */
export function parseMigrateTarget(text: string, from: string, passwordAllowed: boolean, cwd: string = process.cwd()): MigrateTarget {
  const t = text.trim();
  if (t.startsWith("sqlite:")) {
    const path = t.slice("sqlite:".length);
    if (path === "") throw new VaultError("invalid_request", `${from}: sqlite: needs a file path, as in sqlite:/srv/lessor/lessor.db`);
    return { kind: "sqlite", path: resolve(cwd, path) };
  }
  let u: URL | null = null;
  try {
    u = new URL(t);
  } catch {
    u = null;
  }
  // Never echo what was given: a password typed in the wrong place would end up on the terminal.
  if (u === null || (u.protocol !== "postgres:" && u.protocol !== "postgresql:"))
    throw new VaultError("invalid_request", `${from} is not a migration target (not shown, in case it holds a password); write ${FORMS}`);
  if (!passwordAllowed && hasPassword(u))
    throw new VaultError(
      "invalid_request",
      `${from} holds a database password, and any user on this machine can read a command line; nothing was done. Give the URL in ${MIGRATE_TO_ENV} or in a file only you can read (--to-file PATH), or keep the password in PGPASSWORD or ~/.pgpass`,
    );
  return { kind: "postgres", url: t };
}

/** The most a target file may hold: one URL. */
const MAX_TARGET_FILE_BYTES = 64 * 1024;

/**
 * Reads a target from a file: a regular file of yours (or root's) that no one else can write (its
 * owner or a writer could choose where the vault is copied), read by src/fs/trusted-file.ts with a
 * cap (a fifo or a device such as /dev/zero is refused, never waited on); one holding a password must
 * be readable by you only.
 */
export function readMigrateTargetFile(path: string): MigrateTarget {
  let text: string;
  let mode: number;
  try {
    ({ text, mode } = readTrustedFile(path, "the target file", "invalid_request", MAX_TARGET_FILE_BYTES));
  } catch (e) {
    if (e instanceof VaultError) throw e;
    throw new VaultError("invalid_request", `cannot read the target file ${path} (${(e as NodeJS.ErrnoException).code ?? "error"})`);
  }
  const lines = text.split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"));
  if (lines.length !== 1) throw new VaultError("invalid_request", `the target file ${path} must hold exactly one line: ${FORMS}`);
  if (lines[0]!.includes("\u0000")) throw new VaultError("invalid_request", `the target file ${path} holds a NUL byte; it must hold one line: ${FORMS}`);
  const target = parseMigrateTarget(lines[0]!, `the target file ${path}`, true);
  if (target.kind === "postgres" && hasPassword(new URL(target.url)) && (mode & 0o077) !== 0)
    throw new VaultError(
      "insecure_permissions",
      `the target file ${path} holds a database password and other users can read it (mode ${(mode & 0o777).toString(8)}); chmod 600 ${path}`,
    );
  return target;
}

/** Which of the three ways of naming a target were used. */
export interface TargetSources {
  /** `--to` (the command line: no password). */
  to?: string | undefined;
  /** `--to-file`. */
  toFile?: string | undefined;
  env?: NodeJS.ProcessEnv;
}

/** The one target given by `--to`, `--to-file` or LESSOR_MIGRATE_TO; exactly one must be. */
export function resolveMigrateTarget(s: TargetSources): MigrateTarget {
  const fromEnv = (s.env ?? process.env)[MIGRATE_TO_ENV];
  const given = [s.to !== undefined, s.toFile !== undefined, fromEnv !== undefined && fromEnv !== ""].filter(Boolean).length;
  if (given === 0) throw new VaultError("invalid_request", `say where to migrate to: --to sqlite:PATH, --to-file PATH, or ${MIGRATE_TO_ENV}=postgres://… in the environment`);
  if (given > 1) throw new VaultError("invalid_request", `give one target only: --to, --to-file or ${MIGRATE_TO_ENV}`);
  if (s.to !== undefined) return parseMigrateTarget(s.to, "--to", false);
  if (s.toFile !== undefined) return readMigrateTargetFile(s.toFile);
  return parseMigrateTarget(fromEnv!, MIGRATE_TO_ENV, true);
}

/** The target for messages: the file path, or `postgres host:port/database` and the schema; never a user or password. */
export function describeMigrateTarget(t: MigrateTarget): string {
  if (t.kind === "sqlite") return `sqlite ${t.path}`;
  let schema = "";
  try {
    const m = /search_path\s*=\s*([A-Za-z0-9_]+)/.exec(new URL(t.url).searchParams.get("options") ?? "");
    if (m) schema = ` (schema ${m[1]})`;
  } catch {
    /* describeTarget says it does not parse */
  }
  return `postgres ${describeTarget(t.url)}${schema}`;
}
