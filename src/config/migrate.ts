/**
 * `lessor migrate`: copies a home's vault from the store its lessor.toml names to another store
 * (SQLite ↔ PostgreSQL), then proves the copy. Steps:
 *
 * 1. Refuse while a daemon serves the home (its socket answers, or it holds the home's lock, which
 *    migrate then holds until it ends): the copy needs a quiescent source.
 *    Other instances on a shared PostgreSQL source cannot be seen from here; a source that changes
 *    during the copy is caught in step 5.
 * 2. Load the master keys (the same key source the vault opens with) and check the source's audit
 *    trail verifies: a broken trail is recovered first (`lessor audit recover`), not carried over.
 * 3. Refuse a target that holds anything (src/store/copy.ts, assertEmptyStore).
 * 4. Copy, row for row, nothing decrypted (src/store/copy.ts).
 * 5. Verify: every table's row count and SHA-256 digest equal on source and target; `verifyAudit` on
 *    the target under the same keys; and a spot check that secrets open on the target to the same
 *    bytes as on the source. The source's summary is taken again last, after every other read, and
 *    must equal the one taken before the copy (else "unavailable": the source changed).
 *
 * The home's lessor.toml is not changed: the report says what to set to switch to the target.
 */
import { createConnection } from "node:net";
import { closeSync, constants, existsSync, fchmodSync, lstatSync, openSync, realpathSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { VaultError } from "../base/errors.js";
import type { Keyring } from "../crypto/keyring.js";
import { openValue } from "../crypto/envelope.js";
import { VAULT_ID_META } from "../vault/vault-id.js";
import type { PassphraseProvider } from "../crypto/keys/passphrase.js";
import { verifyAudit } from "../audit/verify.js";
import type { Store } from "../vault/ports.js";
import { assertEmptyStore, copyStore, storeSummary, TABLES, TargetNotEmpty, type StoreSummary, type TableCounts } from "../store/copy.js";
import { openSqliteStore } from "../store/sqlite/sqlite-store.js";
import { openPostgresStore } from "../store/postgres/postgres-store.js";
import { describeTarget } from "../store/postgres/connection.js";
import { assertFreshSchema, storeIdentity } from "../store/postgres/fresh-schema.js";
import { assertPrivateDir, assertSafeLocation, assertUnsharedDir } from "../fs/perms.js";
import { HOME_FILES, inHome, resolveHome } from "./home.js";
import { loadConfig } from "./load.js";
import { DATABASE_URL_ENV, openStore } from "./store-factory.js";
import { describeMigrateTarget, type MigrateTarget } from "./migrate-target.js";
import { homeKeySource } from "./open-vault.js";
import type { Config } from "./config.js";

/** How to run {@link migrateHome}. */
export interface MigrateOptions {
  /** The home whose vault is copied (default LESSOR_HOME or ~/.lessor). */
  home?: string;
  env?: NodeJS.ProcessEnv;
  target: MigrateTarget;
  /** For a passphrase-sealed key store (else LESSOR_PASSPHRASE). */
  getPassphrase?: PassphraseProvider;
  /** How many secrets the spot check opens on both sides (default 3). */
  spotChecks?: number;
  /** Progress, one short line at a time (never a value or a URL). */
  progress?: (line: string) => void;
  /**
   * Takes the home's daemon lock (`lessor.pid`, src/server/lock.ts, which the CLI passes in) for the
   * whole migration: a daemon still running without its socket file is found, and none can start
   * during the copy. Throws when a live daemon holds it.
   */
  lockHome?: (home: string) => { release(): void };
}

/** What {@link migrateHome} did and checked. */
export interface MigrateReport {
  /** The source, as `sqlite PATH` or `postgres host:port/db`. */
  source: string;
  target: string;
  counts: TableCounts;
  audit: { events: number; headSeq: number };
  /** Secrets opened on both sides and found equal (`scope/name@version`). */
  spotChecked: string[];
  ms: number;
  /** What to set in lessor.toml (or the environment) to use the target. */
  next: string;
}

/**
 * Throws VaultError("unavailable") when something answers on the home's socket: a daemon is serving
 * this vault, and a copy taken under it could miss writes made during the copy.
 */
export async function assertNoDaemon(home: string, cfg: Config): Promise<void> {
  const path = inHome(home, cfg.server.socket);
  if (!existsSync(path)) return;
  const answers = await new Promise<boolean>((done) => {
    const s = createConnection({ path });
    const t = setTimeout(() => (s.destroy(), done(true)), 2000); // a socket that accepts but stalls is still a daemon
    s.once("connect", () => (clearTimeout(t), s.destroy(), done(true)));
    s.once("error", () => (clearTimeout(t), done(false))); // ECONNREFUSED: a stale socket left by a killed daemon
  });
  if (answers)
    throw new VaultError(
      "unavailable",
      `a lessor daemon is serving this vault (${path} answers); stop it (and every other instance sharing its database) before lessor migrate, which copies a vault that nothing is writing to`,
    );
}

function describeSource(home: string, cfg: Config, env: NodeJS.ProcessEnv): string {
  if (cfg.store === "sqlite") return `sqlite ${inHome(home, HOME_FILES.database)}`;
  if (cfg.store === "postgres") return `postgres ${describeTarget(env[DATABASE_URL_ENV] || cfg.databaseUrl || "")}`;
  return cfg.store;
}

/**
 * Makes the SQLite target: a new file of this user's, mode 0600, in a place no other user can swap it
 * in. A path that exists is refused whatever it is (another user's file, a link, a file with objects
 * planted in it such as a trigger, another vault), as is a leftover journal of one: migrate never
 * writes into what it did not create. Its directory must be one only this user (or root) can write,
 * sticky or not: SQLite opens the `-wal` and `-shm` beside the file by name, later than this check, so
 * in a shared directory such as /tmp another user could create them first and read the copy from them.
 */
function createSqliteTarget(path: string): void {
  assertSafeLocation(path, "the migration target");
  let dir = dirname(resolve(path));
  try {
    dir = realpathSync.native(dir);
  } catch {
    // missing: the create below says so
  }
  assertUnsharedDir(dir, `the migration target ${path}`);
  for (const p of [path, `${path}-wal`, `${path}-shm`, `${path}-journal`]) {
    let there = true;
    try {
      lstatSync(p);
    } catch {
      there = false;
    }
    if (there)
      throw new VaultError(
        "invalid_request",
        `the target ${p} exists; lessor migrate writes a new file, never into one that exists (it may be another vault, or hold what someone planted in it): name a path that does not exist yet`,
      );
  }
  let fd: number;
  try {
    fd = openSync(path, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY | constants.O_NOFOLLOW, 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "error";
    throw new VaultError("invalid_request", `cannot create the target ${path} (${code}); name a new file in a directory that exists and that you can write`);
  }
  try {
    fchmodSync(fd, 0o600); // the umask may have widened or narrowed the mode
  } finally {
    closeSync(fd);
  }
}

/** How to clear away a failed copy so that the next run takes the target (it refuses anything that exists). */
function dropHow(t: MigrateTarget): string {
  return t.kind === "sqlite" ? `delete ${t.path} (and its -wal and -shm)` : "drop the schema (or everything in it) and create it again";
}

/**
 * Opens the target store, made new for this copy; `describe`: where it really is, for the report.
 * `sourceUrl`: the PostgreSQL source's URL, if it is one; a target leading to the same server,
 * database and schema (however its URL is spelled) is refused as the home's own store.
 */
async function openTarget(t: MigrateTarget, describe: string, sourceUrl: string | null): Promise<{ store: Store; describe: string }> {
  if (t.kind === "sqlite") {
    createSqliteTarget(t.path);
    return { store: openSqliteStore(t.path), describe };
  }
  const notSource = sourceUrl === null ? null : await storeIdentity(sourceUrl);
  const place = await assertFreshSchema(t.url, { notSource });
  // No LISTEN: the migration neither needs nor should hold the change feed's connection.
  const store = await openPostgresStore({ url: t.url, feed: { listen: false, pollMs: 600_000 } });
  return { store, describe: `postgres ${place.where} (schema ${place.schema})` };
}

function diff(a: StoreSummary, b: StoreSummary): string[] {
  return TABLES.filter((t) => a.counts[t] !== b.counts[t] || a.digests[t] !== b.digests[t]).map(
    (t) => `${t} (${a.counts[t]} vs ${b.counts[t]} rows${a.counts[t] === b.counts[t] ? ", same count, different content" : ""})`,
  );
}

/** Opens up to `n` secrets' current versions on both stores and compares the plaintexts; returns what was checked. */
async function spotCheck(source: Store, target: Store, keyring: Keyring, n: number): Promise<string[]> {
  const secrets = await target.listSecrets({});
  // Spread the picks over the list (first, middle, last…), not only its start.
  const picks = new Set<number>();
  for (let i = 0; i < Math.min(n, secrets.length); i++) picks.add(Math.floor((i * (secrets.length - 1)) / Math.max(1, Math.min(n, secrets.length) - 1)));
  const out: string[] = [];
  // Each store's own vault id, as a vault opened on it binds (src/vault/vault-id.ts).
  const [targetId, sourceId] = await Promise.all([target.getMeta(VAULT_ID_META), source.getMeta(VAULT_ID_META)]);
  for (const i of picks) {
    const s = secrets[i]!;
    const [tv, sv] = await Promise.all([target.getCurrentVersion(s), source.getCurrentVersion(s)]);
    const where = `${s.scope}/${s.name}@${s.currentVersion}`;
    if (tv === null || sv === null) throw new VaultError("internal", `spot check: ${where} has no current version on the ${tv === null ? "target" : "source"}`);
    const a = openValue(tv, tv, keyring, targetId);
    try {
      const b = openValue(sv, sv, keyring, sourceId);
      try {
        if (!a.equals(b)) throw new VaultError("internal", `spot check: ${where} opens to a different value on the target`);
      } finally {
        b.wipe();
      }
    } finally {
      a.wipe();
    }
    out.push(where);
  }
  return out;
}

/** Copies the vault of a home to `opts.target` and verifies the copy. See the module comment. */
export async function migrateHome(opts: MigrateOptions): Promise<MigrateReport> {
  const started = Date.now();
  const env = opts.env ?? process.env;
  const say = opts.progress ?? (() => {});
  const home = resolveHome(opts.home, env);
  if (!existsSync(home)) throw new VaultError("key_unavailable", `there is no lessor home at ${home}; nothing to migrate`);
  assertPrivateDir(home, "the lessor home");
  const cfg = loadConfig(home);
  if (cfg.store === "memory") throw new VaultError("invalid_request", `this home's store is "memory": nothing outlives its process, so there is nothing to migrate`);
  const source = describeSource(home, cfg, env);
  const target = describeMigrateTarget(opts.target);
  if (opts.target.kind === "sqlite" && cfg.store === "sqlite" && resolve(opts.target.path) === resolve(inHome(home, HOME_FILES.database)))
    throw new VaultError("invalid_request", `the target ${opts.target.path} is this home's own database; name another file`);
  await assertNoDaemon(home, cfg);
  let lock: { release(): void } | null = null;
  if (opts.lockHome !== undefined) {
    try {
      lock = opts.lockHome(home);
    } catch (e) {
      if (!(e instanceof VaultError)) throw e;
      throw new VaultError("unavailable", `${e.message}; stop it (and every other instance sharing its database) before lessor migrate, which copies a vault that nothing is writing to`);
    }
  }
  try {
    return await migrateLocked(opts, home, cfg, env, source, target, started, say);
  } finally {
    lock?.release();
  }
}

async function migrateLocked(opts: MigrateOptions, home: string, cfg: Config, env: NodeJS.ProcessEnv, source: string, target0: string, started: number, say: (line: string) => void): Promise<MigrateReport> {
  let target = target0;
  const keys = homeKeySource(home, cfg, env, opts.getPassphrase);
  const keyring = await keys.load();

  const src = await openStore(cfg.store, home, { databaseUrl: cfg.databaseUrl, env, changeFeed: { listen: false, pollMs: 600_000 } });
  let dst: Store | null = null;
  try {
    const srcAudit = await verifyAudit(src, keyring, await src.getMeta(VAULT_ID_META));
    if (!srcAudit.ok)
      throw new VaultError(
        "audit_broken",
        `the source's audit trail does not verify (${srcAudit.problem ?? "unknown problem"}); nothing was copied. Run lessor audit verify, and lessor audit recover if you accept the break, then migrate`,
      );
    say(`reading ${source}`);
    const before = await storeSummary(src);
    const opened = await openTarget(opts.target, target, cfg.store === "postgres" ? env[DATABASE_URL_ENV] || cfg.databaseUrl || null : null);
    dst = opened.store;
    target = opened.describe;
    await assertEmptyStore(dst, target);
    say(`copying to ${target}`);
    try {
      await copyStore(src, dst, { describe: target, onBatch: (table, n) => say(`  ${table}: ${n}`) });
    } catch (e) {
      if (e instanceof TargetNotEmpty) throw e; // nothing of this copy was written
      const why = e instanceof VaultError ? e.message : `an unexpected ${e instanceof Error ? e.name : "error"}`;
      throw new VaultError(
        e instanceof VaultError ? e.code : "internal",
        `the copy to ${target} failed part way (${why}); the target now holds part of the vault: ${dropHow(opts.target)} before running lessor migrate again`,
      );
    }

    say("verifying");
    // The target first (its summary, its trail, the spot check, which reads the source too), and the
    // source's summary last of all: whatever another instance commits to the source before that read
    // is caught by comparing it with the summary the copy started from. A write after it is the only
    // one that can be missed (docs/cli/migrate.md).
    const copied = await storeSummary(dst);
    const audit = await verifyAudit(dst, keyring, await dst.getMeta(VAULT_ID_META));
    let spotChecked: string[] = [];
    let spotFailed: unknown = null;
    try {
      spotChecked = await spotCheck(src, dst, keyring, opts.spotChecks ?? 3);
    } catch (e) {
      spotFailed = e; // reported after the source is read again: a source that changed explains it
    }
    const after = await storeSummary(src);
    const changed = diff(before, after);
    if (changed.length > 0)
      throw new VaultError(
        "unavailable",
        `the source changed while it was copied or verified (${changed.join(", ")}): something else writes to it (another lessor instance?). Stop every instance, ${dropHow(opts.target)}, and migrate again`,
      );
    const wrong = diff(after, copied);
    if (wrong.length > 0) throw new VaultError("internal", `the copy on ${target} differs from the source in: ${wrong.join(", ")}; do not use it`);
    if (!audit.ok) throw new VaultError("audit_broken", `the audit trail on ${target} does not verify after the copy (${audit.problem ?? "unknown problem"}); do not use it`);
    if (spotFailed !== null) throw spotFailed;

    const next =
      opts.target.kind === "sqlite"
        ? `to use it: set [vault] store = "sqlite" in ${inHome(home, HOME_FILES.config)} and move ${opts.target.path} to ${inHome(home, HOME_FILES.database)} (keep the old one until you have checked)`
        : `to use it: set [vault] store = "postgres" in ${inHome(home, HOME_FILES.config)} and give the same URL in ${DATABASE_URL_ENV} (or [vault] database_url, without the password); every instance needs this home's master key`;
    return { source, target, counts: copied.counts, audit: { events: audit.events, headSeq: audit.headSeq }, spotChecked, ms: Date.now() - started, next };
  } finally {
    await src.close();
    await dst?.close();
  }
}
