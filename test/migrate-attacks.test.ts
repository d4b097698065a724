/**
 * An attack pass on `lessor migrate` (docs/cli/migrate.md; src/config/migrate.ts, src/store/copy.ts,
 * src/config/migrate-target.ts). Every sentence of the page is taken as a promise and attacked by
 * another local user (nobody, through setpriv), another PostgreSQL role, a hostile writer of the
 * target or the source, and an admin following the docs literally. Everything is real: SQLite files,
 * the PostgreSQL server of LESSOR_TEST_PG_URL (a fresh schema per test, dropped after; the tests that
 * need it skip with one line without it), `lessor migrate` and `lessor serve` as child processes run
 * from source (node --import tsx src/cli/main.ts, so a dist/ rebuilt meanwhile does not matter). No
 * traffic leaves loopback: the one URL naming another host (db.invalid) carries a `host` parameter
 * that node-postgres connects to instead, and the name is never resolved.
 *
 * A canary value is stored in every vault and a canary password in every URL; neither may appear in
 * any output. A comment "Was broken (fixed since)" above a test says what happened before the fix.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import pg from "pg";
import { isVaultError } from "../src/base/errors.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { copyStore, storeSummary, TargetNotEmpty, type StoreSummary } from "../src/store/copy.js";
import { createMemoryStore } from "../src/store/memory.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import type { Store } from "../src/vault/ports.js";
import { agent, grant, tempDirUntilExit } from "./helpers.js";
import { admin, asRole, PG_SKIP, PG_URL, testSchema, urlAs } from "./pg-helpers.js";

const REPO = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(REPO, "src/cli/main.ts");
const CANARY = `CANARY-mig-${randomBytes(10).toString("hex")}`;
const PW = `pw-${randomBytes(9).toString("hex")}`;
const NOBODY = 65534;
const isRoot = process.getuid?.() === 0;
const hasSetpriv = spawnSync("setpriv", ["--version"]).error === undefined;
const ROOT_SKIP: false | string = isRoot && hasSetpriv ? false : "needs root and setpriv to act as another local user (nobody): skipped";
const DOM = { domain: "api.example.com" };
const POLICY =
  grant("g", ["claude"], ["canary", "many", "big", "Key", "key", "KEY", "x*"], ["api.example.com"], 'max_uses = 3\nttl = "1h"') +
  grant("gated", ["claude"], ["gated"], ["api.example.com"], 'approval = "required"');
/** Every version kept, no cap on live leases: what is copied must all be there. */
const CONFIG = "[vault]\nkeep_versions = 1000\nmax_live_leases_per_agent = 100000\nmax_secret_bytes = 524288\n";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- homes ----

/** A fresh home (file key, POLICY, CONFIG) under a private dir; returns the home's path. */
async function newHome(): Promise<string> {
  const home = join(tempDirUntilExit("lessor-mig-atk-"), "home");
  await initHome({ home, env: { LESSOR_HOME: home } });
  writeFileSync(join(home, "policy.toml"), POLICY, { mode: 0o600 });
  writeFileSync(join(home, "lessor.toml"), CONFIG, { mode: 0o600 });
  return home;
}

/** A home with `like`'s key and policy whose store is `config`'s, with no database of its own. */
function siblingHome(like: string, config: string): string {
  const home = join(tempDirUntilExit("lessor-mig-atk-"), "home");
  mkdirSync(home, { mode: 0o700 });
  for (const f of ["master.key", "policy.toml"]) writeFileSync(join(home, f), readFileSync(join(like, f)), { mode: 0o600 });
  writeFileSync(join(home, "lessor.toml"), config, { mode: 0o600 });
  return home;
}

/** A home on PostgreSQL (LESSOR_DATABASE_URL in its env) sharing `like`'s key and policy. */
function pgHome(like: string): string {
  return siblingHome(like, CONFIG.replace("[vault]\n", '[vault]\nstore = "postgres"\n'));
}

interface Seeded {
  home: string;
  env: Record<string, string>;
  /** A live lease of claude's on the canary, used once of 3. */
  liveLease: string;
  usedUpLease: string;
  revokedLease: string;
  token: string;
  tokenId: string;
  revokedToken: string;
  adminToken: string;
}

/**
 * Fills the vault of `home`: the canary (two versions, the canary value last), a live lease used once,
 * a lease used up, a revoked lease, an agent token, a revoked token and an admin token, the killswitch
 * pulled and released, and `names` more secrets (value `v-<name>`).
 */
async function seed(home: string, env: Record<string, string> = { LESSOR_HOME: home }, names: string[] = []): Promise<Seeded> {
  const vault = await openVault({ home, env });
  try {
    const adm = vault.admin();
    const claude = vault.session(agent("claude"));
    await adm.storeSecret({ name: "canary", value: "canary-old-version", description: "the canary" });
    await adm.rotateSecret({ scope: "global", name: "canary" }, CANARY);
    for (const n of names) await adm.storeSecret({ name: n, value: `v-${n}` });
    await adm.killswitch("drill");
    await adm.releaseKillswitch("drill over");
    const live = await claude.requestLease({ secret: "canary" });
    (await claude.accessSecret(live.id, DOM)).value.wipe();
    const usedUp = await claude.requestLease({ secret: "canary" });
    for (let i = 0; i < 3; i++) (await claude.accessSecret(usedUp.id, DOM)).value.wipe();
    const revoked = await claude.requestLease({ secret: "canary" });
    await claude.revokeLease(revoked.id);
    const token = await adm.createToken({ name: "ci", role: "agent", agent: "claude" });
    const gone = await adm.createToken({ name: "old", role: "agent", agent: "claude" });
    await adm.revokeToken(gone.id);
    const adminToken = await adm.createToken({ name: "ops", role: "admin" });
    return { home, env, liveLease: live.id, usedUpLease: usedUp.id, revokedLease: revoked.id, token: token.token, tokenId: token.id, revokedToken: gone.token, adminToken: adminToken.token };
  } finally {
    await vault.close();
  }
}

async function summaryOf(open: () => Store | Promise<Store>): Promise<StoreSummary> {
  const s = await open();
  try {
    return await storeSummary(s);
  } finally {
    await s.close();
  }
}
const sqliteSummary = (path: string) => summaryOf(() => openSqliteStore(path));
const pgSummary = (url: string) => summaryOf(() => openPostgresStore({ url, feed: { listen: false } }));

// ---- the CLI as a child process ----

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

interface Running {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  done: Promise<Result>;
}

/**
 * Starts `lessor <args>` from source with exactly PATH, HOME, NO_COLOR, LESSOR_HOME=`home` and `env`.
 * `umask`: run through sh with that umask; `nodeArgs`: before the script (a preload). Killed after
 * `timeoutMs` (default 60 s).
 */
function start(args: string[], opts: { home?: string; env?: Record<string, string>; timeoutMs?: number; umask?: string; nodeArgs?: string[] } = {}): Running {
  const env = { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", ...(opts.home ? { LESSOR_HOME: opts.home } : {}), ...opts.env };
  const argv = [...(opts.nodeArgs ?? []), "--import", "tsx", CLI, ...args];
  const child =
    opts.umask === undefined
      ? spawn(process.execPath, argv, { cwd: REPO, env, stdio: ["ignore", "pipe", "pipe"] })
      : spawn("sh", ["-c", `umask ${opts.umask}; exec "$0" "$@"`, process.execPath, ...argv], { cwd: REPO, env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  let timedOut = false;
  child.stdout!.on("data", (d: Buffer) => (out += d.toString("utf8")));
  child.stderr!.on("data", (d: Buffer) => (err += d.toString("utf8")));
  const timer = setTimeout(() => ((timedOut = true), child.kill("SIGKILL")), opts.timeoutMs ?? 60_000);
  const done = new Promise<Result>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: out, stderr: err, timedOut });
    });
  });
  return { child, stdout: () => out, stderr: () => err, done };
}

const lessor = (args: string[], opts: Parameters<typeof start>[1] = {}): Promise<Result> => start(args, opts).done;

/**
 * Runs `lessor migrate` (to a new SQLite file) `times` times while another process's vault — this
 * test process, opened on `writer` — stores secrets without pause; returns each run's exit and message.
 */
async function migrateWhileWriting(writer: { home: string; env: Record<string, string> }, run: { home: string; env?: Record<string, string> }, times: number): Promise<string[]> {
  const other = await openVault(writer);
  let writes = 0;
  let stop = false;
  const loop = (async () => {
    while (!stop) {
      await other.admin().storeSecret({ name: `x-during-${writes}`, value: "v" });
      writes++;
    }
  })();
  const outcomes: string[] = [];
  try {
    await until("the other process to write", () => writes > 0);
    for (let i = 0; i < times; i++) {
      const path = join(tempDirUntilExit("lessor-mig-moving-"), "copy.db");
      const r = await lessor(["migrate", "--to", `sqlite:${path}`], { ...run, timeoutMs: 30_000 });
      assertClean("migrate of a source being written", r);
      assert.doesNotMatch(r.stdout, /verified/, "a copy of a moving source reported verified");
      outcomes.push(`exit ${r.code}: ${r.stderr.split("\n").find((l) => l.startsWith("lessor:")) ?? ""}`);
    }
  } finally {
    stop = true;
    await loop;
    await other.close();
  }
  return outcomes;
}

/** Waits until `f()` holds (polling every 20 ms), or throws after `ms`. */
async function until(what: string, f: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const show = (r: Result) => `exit ${r.code} ${r.signal ?? ""}${r.timedOut ? " (timed out)" : ""}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

/** No canary value, no password, no stack trace, no internal error in what a run printed. */
function assertClean(what: string, r: Result, secrets: string[] = []): void {
  for (const s of [CANARY, PW, ...secrets]) {
    assert.ok(!r.stdout.includes(s) && !r.stderr.includes(s), `${what}: printed a value or password it must never show:\n${show(r)}`);
  }
  assert.doesNotMatch(r.stderr, /internal error|\n\s+at .+:\d+:\d+|TypeError|RangeError|SqliteError/, `${what}: not a clean message:\n${show(r)}`);
  assert.equal(r.timedOut, false, `${what}: did not end:\n${show(r)}`);
}

// ---- PostgreSQL ----

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

/** A fresh empty schema (dropped after the file); its URL with `search_path`, optionally as `user` with PW. */
async function schema(): Promise<{ schema: string; url: string; urlWithPw: string }> {
  const s = await testSchema();
  cleanups.push(s.drop);
  return { schema: s.schema, url: s.url, urlWithPw: withUser(s.url, "postgres", PW) };
}

/** `url` with its user (and password) replaced. */
function withUser(url: string, user: string, password?: string): string {
  const u = new URL(url);
  u.username = user;
  u.password = password ?? "";
  return u.toString();
}

/** PG_URL's server as `user` with `search_path` set to `path` (raw, as written in the options). */

/** Creates the vault's (empty) tables in the schema of `url`, as lessor itself would at first start. */
async function lessorTables(url: string): Promise<void> {
  const s = await openPostgresStore({ url, feed: { listen: false } });
  await s.close();
}

// =====================================================================================================

describe("SQLite targets: the file the copy goes to", () => {
  // Was broken (fixed since). Reproduction (as root): `mkdir -m 0777 /srv/shared`; as another user (nobody)
  // `umask 0; : > /srv/shared/copy.db` (or `ln -s /home/nobody/loot.db /srv/shared/copy.db` onto an
  // empty file of theirs); then `lessor migrate --to sqlite:/srv/shared/copy.db`. Observed: exit 0,
  // "verified", the whole vault (sealed values, token hashes, the audit trail) written into nobody's
  // 0666 file, which stays nobody's: nobody reads every token hash (the key a daemon impersonator needs,
  // docs/security.md "Known limits") and can rewrite rows (un-revoke a token) before the admin moves it,
  // and after, through a descriptor opened before; moved into the home as the summary says, lessor opens
  // it as lessor.db (0666, nobody's) without a word.
  // Promised: the copy is the migrating user's own 0600 file, never written through a link or into a
  // file someone else made (as `export -o` and `lessor init` hold). Fix: src/config/migrate.ts
  // openTarget: create the file with O_CREAT|O_EXCL|O_NOFOLLOW (0600) and refuse an existing one (or at
  // least one not the user's own, not 0600, a link, or under a directory others can write, as
  // src/fs/perms.ts assertSafeLocation does for the home).
  test("a file (or a symlink to one) another user planted at the SQLite target path is refused, and nothing of the vault is written into it", { skip: ROOT_SKIP }, async () => {
    const home = await newHome();
    await seed(home);
    const shared = join(tempDirUntilExit("lessor-mig-shared-"), "shared");
    chmodSync(join(shared, ".."), 0o755);
    mkdirSync(shared);
    chmodSync(shared, 0o777);
    const asNobody = (cmd: string) => {
      const r = spawnSync("setpriv", [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", "sh", "-c", `umask 0; ${cmd}`], { cwd: shared, encoding: "utf8" });
      assert.equal(r.status, 0, r.stderr);
    };
    asNobody(": > copy.db; : > loot.db; ln -s loot.db link.db");
    assert.equal(statSync(join(shared, "copy.db")).uid, NOBODY);
    const outcomes: string[] = [];
    for (const name of ["copy.db", "link.db"]) {
      const r = await lessor(["migrate", "--to", `sqlite:${join(shared, name)}`], { home });
      assertClean(`migrate to nobody's ${name}`, r);
      const planted = join(shared, name === "copy.db" ? "copy.db" : "loot.db");
      const st = statSync(planted);
      outcomes.push(`${name}: exit ${r.code}, nobody's file now ${st.size} bytes, mode ${(st.mode & 0o777).toString(8)}, owner ${st.uid}`);
    }
    for (const name of ["copy.db", "loot.db"]) {
      const st = statSync(join(shared, name));
      assert.equal(st.size, 0, `the vault was written into a file of another user:\n${outcomes.join("\n")}`);
    }
  });

  // Was broken (fixed since). Reproduction: an SQLite file with lessor's schema and no rows, plus one trigger:
  //   sqlite3 copy.db "CREATE TRIGGER keep AFTER UPDATE OF revoked_at ON tokens WHEN NEW.revoked_at IS NOT NULL
  //                    BEGIN UPDATE tokens SET revoked_at = NULL WHERE id = NEW.id; END;"
  // (left by a hostile agent in a project directory it may write, or an old file reused), then
  // `lessor migrate --to sqlite:copy.db`. Observed: exit 0 and "verified" (the trigger changes nothing
  // during the copy); once the copy is the home's lessor.db, revoking a token (`lessor token revoke`)
  // reports success and the token keeps authenticating. Promised: "A target that is not empty ... nothing is written: migrate
  // never merges into or overwrites another vault" — this target holds something (its own code) and is
  // written to. Fix: src/config/migrate.ts openTarget (or src/store/copy.ts assertEmptyStore): take only a
  // file that does not exist yet (or is zero bytes), so that every object in it is lessor's own.
  test("an SQLite target with no rows but a planted trigger is refused, so the trigger never runs in the copied vault", async () => {
    const home = await newHome();
    const s = await seed(home);
    const path = join(tempDirUntilExit("lessor-mig-trig-"), "copy.db");
    openSqliteStore(path).close();
    const db = new Database(path);
    db.exec(`CREATE TRIGGER keep AFTER UPDATE OF revoked_at ON tokens WHEN NEW.revoked_at IS NOT NULL
             BEGIN UPDATE tokens SET revoked_at = NULL WHERE id = NEW.id; END;`);
    db.close();
    const r = await lessor(["migrate", "--to", `sqlite:${path}`], { home });
    assertClean("migrate onto a file with a trigger", r);
    let impact = "";
    if (r.code === 0) {
      // What the admin gets by following the summary: the copy as the home's database.
      const used = siblingHome(home, CONFIG);
      writeFileSync(join(used, "lessor.db"), readFileSync(path), { mode: 0o600 });
      const v = await openVault({ home: used, env: { LESSOR_HOME: used } });
      try {
        await v.admin().revokeToken(s.tokenId);
      } finally {
        await v.close();
      }
      const v2 = await openVault({ home: used, env: { LESSOR_HOME: used } });
      try {
        const who = await v2.authenticateToken(s.token, "tcp").then(
          (w) => `authenticates as ${w.agent}`,
          (e: Error) => `refused (${e.message})`,
        );
        impact = `; on the copy, a token revoked with revokeToken then ${who}`;
      } finally {
        await v2.close();
      }
    }
    assert.equal(r.code, 2, `migrate took a target holding a planted trigger${impact}\n${show(r)}`);
    assert.match(r.stderr, /not empty|holds|refus|exists/i);
  });

  test("under umask 000 the copy is a new file of mode 0600 (and so are its -wal and -shm while it is open)", async () => {
    const home = await newHome();
    await seed(home);
    const dir = tempDirUntilExit("lessor-mig-umask-");
    const path = join(dir, "copy.db");
    // Stopped right after the copy starts, the target's files are all open: their modes are checked then.
    const preload = join(dir, "pause.cjs");
    writeFileSync(preload, PAUSE_PRELOAD);
    const run = start(["migrate", "--to", `sqlite:${path}`], { home, umask: "000", nodeArgs: ["--require", preload], env: { LESSOR_TEST_PAUSE_AT: "verifying" } });
    await until("migrate to reach its verification", () => run.stderr().includes("verifying") || run.child.exitCode !== null);
    await sleep(100);
    const open = readdirSync(dir).filter((f) => f.startsWith("copy.db"));
    const modes = open.map((f) => `${f} ${(lstatSync(join(dir, f)).mode & 0o777).toString(8)}`);
    run.child.kill("SIGCONT");
    const r = await run.done;
    assertClean("migrate under umask 000", r);
    assert.equal(r.code, 0, show(r));
    assert.deepEqual(open.sort(), ["copy.db", "copy.db-shm", "copy.db-wal"], modes.join());
    for (const m of modes) assert.match(m, / 600$/, `a file of the copy is not 0600 under umask 000: ${modes.join(", ")}`);
    assert.equal(statSync(path).mode & 0o777, 0o600);
    // Nothing but the copy was written beside it, and the canary is in no file as plain text (sealed in both databases).
    assert.deepEqual(readdirSync(dir).filter((f) => f !== "pause.cjs").sort(), ["copy.db"]);
    for (const d of [dir, home]) for (const f of readdirSync(d)) assert.ok(!readFileSync(join(d, f)).includes(CANARY), `the canary in plain text in ${f}`);
  });

  test("a fifo, /dev/zero, a directory, and a hard link or symlink to the home's own lessor.db are refused as targets, promptly; the source is untouched", async () => {
    const home = await newHome();
    await seed(home);
    const dir = tempDirUntilExit("lessor-mig-odd-");
    spawnSync("mkfifo", [join(dir, "fifo")]);
    mkdirSync(join(dir, "adir"));
    linkSync(join(home, "lessor.db"), join(dir, "hard.db"));
    symlinkSync(join(home, "lessor.db"), join(dir, "soft.db"));
    const before = await sqliteSummary(join(home, "lessor.db"));
    for (const target of [join(dir, "fifo"), "/dev/zero", join(dir, "adir"), join(dir, "hard.db"), join(dir, "soft.db"), `${home}/./lessor.db`]) {
      const r = await lessor(["migrate", "--to", `sqlite:${target}`], { home, timeoutMs: 15_000 });
      assertClean(`migrate --to sqlite:${target}`, r);
      assert.equal(r.code, 2, `${target}: ${show(r)}`);
      assert.match(r.stderr, /not a file|not empty|own database|exists/, target);
    }
    assert.deepEqual(await sqliteSummary(join(home, "lessor.db")), before, "the source changed");
    const v = await lessor(["audit", "verify"], { home });
    assert.equal(v.code, 0, show(v));
  });
});

/** Stops the process (SIGSTOP to itself) right after it writes a stderr line holding LESSOR_TEST_PAUSE_AT. */
const PAUSE_PRELOAD = `
const needle = process.env.LESSOR_TEST_PAUSE_AT;
const write = process.stderr.write;
process.stderr.write = function (chunk, ...rest) {
  const r = write.call(this, chunk, ...rest);
  if (needle && String(chunk).includes(needle)) process.kill(process.pid, "SIGSTOP");
  return r;
};
`;

// =====================================================================================================

describe("claiming the target", () => {
  test("a copy whose target was filled after its emptiness check writes nothing: its first write finds the other vault in its own transaction", async () => {
    const a = await newHome();
    const b = await newHome();
    await seed(a, undefined, ["only-in-a"]);
    await seed(b, undefined, ["only-in-b"]);
    const srcA = openSqliteStore(join(a, "lessor.db"));
    const srcB = openSqliteStore(join(b, "lessor.db"));
    const target = createMemoryStore();
    try {
      // Both passed their emptiness checks; B copies first, then A starts writing.
      await copyStore(srcB, target);
      const afterB = await storeSummary(target);
      await assert.rejects(copyStore(srcA, target, { describe: "sqlite /srv/copy.db" }), (e) => e instanceof TargetNotEmpty && /the target sqlite \/srv\/copy.db is not empty/.test(e.message));
      assert.deepEqual(await storeSummary(target), afterB, "A wrote nothing into B's copy");
      assert.deepEqual(afterB, await storeSummary(srcB));
    } finally {
      await Promise.all([srcA.close(), srcB.close(), target.close()]);
    }
  });

  test("a copy whose target gained only a vault's metadata after its emptiness check (a `lessor init` meanwhile) writes nothing", async () => {
    const a = await newHome();
    await seed(a, undefined, ["only-in-a"]);
    const srcA = openSqliteStore(join(a, "lessor.db"));
    for (const key of ["init_key_id", "master_key_id", "audit_format"]) {
      const target = openSqliteStore(join(await newHome(), "target.db"));
      try {
        // The target was empty at the check; then another vault's first metadata entry landed in it.
        await target.transaction(async (tx) => tx.setMeta(key, "someone-elses"));
        await assert.rejects(copyStore(srcA, target, { describe: "sqlite /srv/copy.db" }), (e) => e instanceof TargetNotEmpty && /holds 1 metadata entry/.test(e.message), key);
        assert.deepEqual(await target.listSecrets({}), [], `nothing was merged into a target holding ${key}`);
        assert.equal(await target.getMeta(key), "someone-elses");
      } finally {
        await target.close();
      }
    }
    await srcA.close();
  });
});

describe("where the target comes from: --to, --to-file, LESSOR_MIGRATE_TO", () => {
  // Was broken (fixed since). Reproduction: `mkfifo /tmp/t; lessor migrate --to-file /tmp/t` hangs for ever (readFileSync
  // on a fifo with no writer); `lessor migrate --to-file /dev/zero` reads until memory or the string
  // limit runs out (still reading after 20 s, 3.3 GB resident after 8 s). Promised (docs/security.md,
  // "Input lessor cannot use"): a file given where a small text file is expected is read capped and
  // refused past the cap, at once.
  // Fix: src/config/migrate-target.ts readMigrateTargetFile: open with O_NONBLOCK, fstat the descriptor
  // (a regular file only), and read it with src/fs/capped-read.ts readCappedSync (a few KiB).
  test("--to-file naming a fifo or /dev/zero is refused within seconds, not read for ever", async () => {
    const home = await newHome();
    const dir = tempDirUntilExit("lessor-mig-tofile-");
    const fifo = join(dir, "fifo");
    spawnSync("mkfifo", [fifo]);
    const results: string[] = [];
    for (const f of [fifo, "/dev/zero"]) {
      const t0 = Date.now();
      // 4 s is ample for a refusal (the CLI starts in under 1 s), and bounds what /dev/zero costs (about 1.5 GB).
      const r = await lessor(["migrate", "--to-file", f], { home, timeoutMs: 4000 });
      results.push(`${f}: exit ${r.code}${r.timedOut ? " (still reading after 4 s: killed)" : ""} in ${Date.now() - t0} ms`);
      assert.ok(!r.stderr.includes(PW));
    }
    for (const line of results) assert.match(line, /exit 2 in/, results.join("\n"));
  });

  // Was broken (fixed since). Reproduction (as root): a file of another user (nobody), mode 0600, holding
  // `postgres://lessor:PW@…`; `lessor migrate --to-file that-file`. Observed: taken (migrate goes on
  // to connect there). Promised: "from a file only you can read (one line; mode 0600 when it holds a
  // password)": this file is readable by its owner, another user, who also chooses where the vault is
  // sent. (LESSOR_TOKEN_FILE's rule is the same: "a regular file of the user's own".) Fix:
  // src/config/migrate-target.ts readMigrateTargetFile: fstat the opened descriptor and refuse a file
  // whose uid is not the caller's (or root's), as src/fs/perms.ts privateProblem does.
  test("--to-file holding a password must be the user's own file: one of another user, even 0600, is refused", { skip: ROOT_SKIP }, async () => {
    const home = await newHome();
    const dir = tempDirUntilExit("lessor-mig-tofile-");
    const f = join(dir, "target");
    // A loopback URL where nothing listens (port 1): taking the file shows as an attempt to connect.
    writeFileSync(f, `postgres://lessor:${PW}@127.0.0.1:1/lessor\n`, { mode: 0o600 });
    spawnSync("chown", [`${NOBODY}:${NOBODY}`, f]);
    chmodSync(f, 0o600);
    const r = await lessor(["migrate", "--to-file", f], { home, timeoutMs: 20_000 });
    assertClean("--to-file of another user", r);
    assert.equal(r.code, 2, `a target file of another user was taken:\n${show(r)}`);
    assert.match(r.stderr, /own|owner|another user/i);
  });

  test("a password is never taken from argv, never echoed; malformed targets are refused without echo (exit 2)", async () => {
    const home = await newHome();
    await seed(home);
    const cases: [string[], Record<string, string>][] = [
      [["--to", `postgres://lessor:${PW}@127.0.0.1:1/db`], {}],
      [["--to", `postgresql://lessor@127.0.0.1:1/db?password=${PW}`], {}],
      [["--to", `postgres://lessor@127.0.0.1:1/db?pass%77ord=${PW}`], {}],
      [["--to", `postgres://lessor@127.0.0.1:1/db?sslpassword=${PW}`], {}],
      [["--to", `${PW}`], {}],
      [[], { LESSOR_MIGRATE_TO: `postgres://lessor:${PW}@127.0.0.1:99999/db` }],
      [[], { LESSOR_MIGRATE_TO: `mysql://lessor:${PW}@127.0.0.1/db` }],
      [[], { LESSOR_MIGRATE_TO: ` ${PW} ` }],
      [[], { LESSOR_MIGRATE_TO: "sqlite:" }],
      [["--to", "sqlite:/x.db"], { LESSOR_MIGRATE_TO: `postgres://lessor:${PW}@127.0.0.1:1/db` }],
    ];
    for (const [args, env] of cases) {
      const r = await lessor(["migrate", ...args], { home, env });
      assertClean(`migrate ${args.join(" ")} ${JSON.stringify(env)}`, r);
      assert.equal(r.code, 2, `${args.join(" ")} ${JSON.stringify(env)}: ${show(r)}`);
      assert.ok(!r.stderr.includes("lessor:" + PW) && !r.stderr.includes("127.0.0.1:99999"), show(r));
    }
    // A wide file with a password: refused, naming chmod, not the password.
    const f = join(tempDirUntilExit("lessor-mig-tofile-"), "t");
    writeFileSync(f, `postgres://lessor:${PW}@127.0.0.1:1/db\n`);
    chmodSync(f, 0o640);
    const r = await lessor(["migrate", "--to-file", f], { home });
    assertClean("a wide --to-file", r);
    assert.ok(r.code === 1 || r.code === 2, show(r)); // insecure_permissions: exit 1
    assert.match(r.stderr, /chmod 600/);
  });
});

// =====================================================================================================

describe("the source: a daemon serving it, other writers, a broken trail", () => {
  // Was broken (fixed since). Reproduction: `lessor serve` running; its socket file removed (`rm ~/.lessor/lessor.sock`,
  // or a tmp cleaner; or lessor.toml edited to name another socket while it runs); `lessor migrate
  // --to sqlite:/tmp/copy.db`. Observed: exit 0, "verified", while the daemon (lessor.pid names it,
  // alive) keeps serving and writing: a token it revokes after the copy is live again in the copy the
  // admin switches to. Promised: "A running daemon. ... migrate stops: the copy needs a source nothing
  // writes to." Fix: src/config/migrate.ts assertNoDaemon: also take the home's daemon lock
  // (src/server/lock.ts acquireDaemonLock, held for the whole migration, which also keeps a daemon
  // from starting during the copy), not only knock on the socket.
  test("a running daemon stops migrate even when its socket file is gone (lessor.pid names it, alive)", { timeout: 60_000 }, async () => {
    const home = await newHome();
    await seed(home);
    const d = start(["--home", home, "serve"], { home, timeoutMs: 55_000 });
    try {
      await until("lessor serve to be ready", () => d.stderr().includes("lessor daemon ready") || d.child.exitCode !== null);
      assert.ok(existsSync(join(home, "lessor.pid")), "the daemon holds lessor.pid");
      rmSync(join(home, "lessor.sock"));
      const path = join(tempDirUntilExit("lessor-mig-d-"), "copy.db");
      const r = await lessor(["migrate", "--to", `sqlite:${path}`], { home });
      assertClean("migrate beside a daemon without its socket", r);
      assert.equal(d.child.exitCode, null, "the daemon still runs");
      assert.equal(r.code, 5, `migrate copied a vault a live daemon (pid in lessor.pid) serves:\n${show(r)}`);
      assert.equal(existsSync(path), false);
    } finally {
      d.child.kill("SIGTERM");
      await d.done;
    }
  });

  test("no daemon starts on the home while migrate copies it: lessor serve is refused, naming the lock, and the copy completes", { timeout: 60_000 }, async () => {
    const home = await newHome();
    await seed(home);
    const preload = join(tempDirUntilExit("lessor-mig-pause-"), "pause.cjs");
    writeFileSync(preload, PAUSE_PRELOAD);
    const path = join(tempDirUntilExit("lessor-mig-l-"), "copy.db");
    const run = start(["migrate", "--to", `sqlite:${path}`], { home, env: { LESSOR_TEST_PAUSE_AT: "copying to" }, nodeArgs: ["--require", preload] });
    await until("migrate to be copying", () => run.stderr().includes("copying to") || run.child.exitCode !== null);
    const d = start(["--home", home, "serve"], { home, timeoutMs: 30_000 });
    await until("lessor serve to start or give up", () => d.stderr().includes("lessor daemon ready") || d.child.exitCode !== null);
    const ready = d.stderr().includes("lessor daemon ready");
    if (ready) d.child.kill("SIGTERM");
    const served = await d.done;
    run.child.kill("SIGCONT");
    const r = await run.done;
    assert.ok(!ready && served.code !== 0, `a daemon started on the home during the copy:\n${show(served)}`);
    assert.match(served.stderr, /lessor\.pid|another lessor daemon|pid \d+/);
    assertClean("migrate with a daemon refused beside it", r);
    assert.equal(r.code, 0, show(r));
    assert.ok(!existsSync(join(home, "lessor.pid")), "migrate released the home's lock");
  });

  // Was broken (fixed since). Reproduction: no daemon; another `lessor` process (an embedded CLI, a script on the vault)
  // stores secrets while `lessor migrate --to sqlite:/tmp/copy.db` runs. Observed, every run here: exit
  // 1, "the source's audit trail does not verify (the trail ends at event 858 but the checkpoint says
  // 890: events were removed from the end) ... lessor audit recover if you accept the break" for a
  // healthy trail: the source check walks the trail, then reads a checkpoint a later commit moved.
  // Promised: a source something writes to during the copy is caught as such ("the source changed
  // while it was copied ... something else writes to it", exit 5); exit 1 means the trail is broken.
  // Fix: src/config/migrate.ts migrateHome's source check (verifyAudit, src/audit/verify.ts
  // checkTrail): read the walk and the checkpoint in one read transaction (SQLite: one BEGIN on the
  // reader connection), or read the checkpoint first and accept events past it.
  test("another lessor process writing to the SQLite source during the copy is caught as a changing source (exit 5), never reported as a broken audit trail to recover", { timeout: 60_000 }, async () => {
    const home = await newHome();
    await seed(home, undefined, Array.from({ length: 150 }, (_, i) => `x${i}`));
    const outcomes = await migrateWhileWriting({ home, env: { LESSOR_HOME: home } }, { home }, 3);
    for (const o of outcomes) assert.match(o, /^exit 5: .*source changed while it was copied/, `a source another process writes to, migrated ${outcomes.length} times:\n${outcomes.join("\n")}`);
  });

  test("a daemon that accepts but never answers (SIGSTOP) is refused with exit 5; a dead daemon's stale socket is not a daemon", { timeout: 60_000 }, async () => {
    const home = await newHome();
    await seed(home);
    const d = start(["--home", home, "serve"], { home, timeoutMs: 55_000 });
    const path = join(tempDirUntilExit("lessor-mig-d-"), "copy.db");
    try {
      await until("lessor serve to be ready", () => d.stderr().includes("lessor daemon ready") || d.child.exitCode !== null);
      d.child.kill("SIGSTOP");
      const t0 = Date.now();
      const r = await lessor(["migrate", "--to", `sqlite:${path}`], { home });
      assertClean("migrate beside a stopped daemon", r);
      assert.equal(r.code, 5, show(r));
      assert.match(r.stderr, /daemon is serving/);
      assert.ok(Date.now() - t0 < 15_000);
      assert.equal(existsSync(path), false, "nothing created while a daemon serves");
    } finally {
      d.child.kill("SIGKILL");
      await d.done;
    }
    assert.ok(existsSync(join(home, "lessor.sock")), "a SIGKILLed daemon leaves its socket");
    const r = await lessor(["migrate", "--to", `sqlite:${path}`], { home });
    assertClean("migrate after the daemon died", r);
    assert.equal(r.code, 0, show(r));
    assert.deepEqual(await sqliteSummary(path), await sqliteSummary(join(home, "lessor.db")));
  });

  test("a source whose trail lost its last events (and checkpoint) or whose checkpoint was deleted is refused with exit 1, before any target exists", async () => {
    for (const cut of ["DELETE FROM audit WHERE seq > (SELECT max(seq) - 2 FROM audit); DELETE FROM audit_checkpoint", "DELETE FROM audit_checkpoint"]) {
      const home = await newHome();
      await seed(home);
      const db = new Database(join(home, "lessor.db"));
      db.exec(cut);
      db.close();
      const path = join(tempDirUntilExit("lessor-mig-broken-"), "copy.db");
      const r = await lessor(["migrate", "--to", `sqlite:${path}`], { home });
      assertClean(`migrate after ${cut}`, r);
      assert.equal(r.code, 1, `${cut}: ${show(r)}`);
      assert.match(r.stderr, /audit trail does not verify.*nothing was copied/);
      assert.equal(existsSync(path), false);
    }
  });
});

// =====================================================================================================

describe("PostgreSQL targets and sources", { skip: PG_SKIP }, () => {
  // Was broken (fixed since). Reproduction: a role with CREATE on the database (mallory) makes the schema the admin was
  // given (`CREATE SCHEMA team_a`), lets a lessor of its own create the vault's empty tables there,
  // adds `CREATE TRIGGER grab AFTER INSERT ON tokens/secret_versions … INSERT INTO loot …` and grants
  // everything to the lessor role; the admin runs `LESSOR_MIGRATE_TO='postgres://lessor:…@db/lessor?
  // options=-c%20search_path%3Dteam_a' lessor migrate`. Observed: exit 0, "verified"; mallory owns
  // every table the vault now lives in (reads every token hash and sealed value, and can rewrite
  // revocations at will), and the trigger copied the rows out as they went in. The same happens with
  // the docs' own URL (no search_path) when mallory names a schema after the lessor role ("$user" comes
  // first in the default search_path). Promised: migrate copies only into an empty store, "never over
  // another vault"; a schema of another role's tables is not empty. Fix: src/config/migrate.ts
  // openTarget: before opening the store, refuse a schema that holds any relation, trigger or function
  // (pg_class/pg_proc/pg_trigger in current_schema()), or one not owned by current_user.
  test("a target schema another role prepared (lessor's tables, empty, plus a trigger) is refused, and that role reads nothing of the vault", async () => {
    const tag = randomBytes(4).toString("hex");
    const victim = `lessor_atk_v_${tag}`;
    const mallory = `lessor_atk_m_${tag}`;
    const sch = `lessor_atk_s_${tag}`;
    const db = new URL(PG_URL!).pathname.slice(1) || "postgres";
    await admin(`CREATE ROLE ${victim} LOGIN`);
    await admin(`CREATE ROLE ${mallory} LOGIN`);
    cleanups.push(async () => {
      await admin(`DROP SCHEMA IF EXISTS ${sch} CASCADE`);
      for (const r of [victim, mallory]) {
        await admin(`DROP OWNED BY ${r} CASCADE`).catch(() => {});
        await admin(`DROP ROLE IF EXISTS ${r}`);
      }
    });
    await admin(`GRANT CREATE ON DATABASE "${db}" TO ${mallory}`);
    await asRole(mallory, `CREATE SCHEMA ${sch}`);
    await lessorTables(urlAs(mallory, sch));
    await asRole(
      mallory,
      `CREATE TABLE ${sch}.loot (tbl text, row jsonb);
       CREATE FUNCTION ${sch}.grab() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO ${sch}.loot VALUES (TG_TABLE_NAME, to_jsonb(NEW)); RETURN NEW; END $$;
       CREATE TRIGGER grab AFTER INSERT ON ${sch}.tokens FOR EACH ROW EXECUTE FUNCTION ${sch}.grab();
       CREATE TRIGGER grab AFTER INSERT ON ${sch}.secret_versions FOR EACH ROW EXECUTE FUNCTION ${sch}.grab();
       GRANT USAGE, CREATE ON SCHEMA ${sch} TO ${victim};
       GRANT ALL ON ALL TABLES IN SCHEMA ${sch} TO ${victim};
       GRANT ALL ON ALL SEQUENCES IN SCHEMA ${sch} TO ${victim};`,
    );
    const home = await newHome();
    await seed(home);
    const r = await lessor(["migrate"], { home, env: { LESSOR_MIGRATE_TO: withUser(urlAs(victim, sch), victim, PW) } });
    assertClean("migrate into another role's schema", r);
    const loot = Number((await asRole(mallory, `SELECT count(*) AS n FROM ${sch}.loot`)).rows[0].n);
    const seen = Number((await asRole(mallory, `SELECT count(*) AS n FROM ${sch}.tokens`)).rows[0].n);
    assert.equal(r.code, 2, `migrate wrote the vault into tables another role owns (it now reads ${seen} token rows; its trigger copied out ${loot} rows)\n${show(r)}`);
    assert.equal(loot + seen, 0);
  });

  test("the schema must be the connecting role's own: a superuser is refused another role's empty schema, and a schema where another role may CREATE is refused; a schema holding only an extension's objects is taken", async () => {
    const tag = randomBytes(4).toString("hex");
    const other = `lessor_atk_o_${tag}`;
    const theirs = `lessor_atk_t_${tag}`;
    const open = `lessor_atk_c_${tag}`;
    const ext = `lessor_atk_e_${tag}`;
    await admin(`CREATE ROLE ${other} LOGIN`);
    cleanups.push(async () => {
      for (const x of [theirs, open, ext]) await admin(`DROP SCHEMA IF EXISTS ${x} CASCADE`);
      await admin(`DROP OWNED BY ${other} CASCADE`).catch(() => {});
      await admin(`DROP ROLE IF EXISTS ${other}`);
    });
    await admin(`CREATE SCHEMA ${theirs} AUTHORIZATION ${other}`); // empty, but another role's: it could drop and replace lessor's tables later
    await admin(`CREATE SCHEMA ${open}`);
    await admin(`GRANT CREATE ON SCHEMA ${open} TO ${other}`); // ours, but another role may plant objects (a trigger) in it
    await admin(`CREATE SCHEMA ${ext}`);
    const hasTrgm = (await admin("SELECT count(*) AS n FROM pg_available_extensions WHERE name = 'pg_trgm'")).rows[0].n > 0;
    if (hasTrgm) await admin(`CREATE EXTENSION pg_trgm SCHEMA ${ext}`);
    const home = await newHome();
    await seed(home);
    const as = (sch: string) => ({ LESSOR_MIGRATE_TO: withUser(urlAs("postgres", sch), "postgres", PW) });
    const r1 = await lessor(["migrate"], { home, env: as(theirs) });
    assertClean("migrate into another role's schema as a superuser", r1);
    assert.equal(r1.code, 2, show(r1));
    assert.match(r1.stderr, /belongs to another role/);
    const r2 = await lessor(["migrate"], { home, env: as(open) });
    assertClean("migrate into a schema others may create in", r2);
    assert.equal(r2.code, 2, show(r2));
    assert.match(r2.stderr, /other roles may create objects/);
    for (const sch of [theirs, open]) assert.equal(Number((await admin(`SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '${sch}'`)).rows[0].n), 0, `nothing was created in ${sch}`);
    if (!hasTrgm) return void console.log("# pg_trgm is not available here: the extension case was not checked");
    const r3 = await lessor(["migrate"], { home, env: as(ext) });
    assertClean("migrate into a schema holding an extension", r3);
    assert.equal(r3.code, 0, show(r3));
  });

  // Was broken (fixed since). Reproduction: a schema whose vault tables (empty) carry
  //   CREATE FUNCTION s.mark() RETURNS trigger AS $$ BEGIN NEW.done := true; RETURN NEW; END $$ LANGUAGE plpgsql;
  //   CREATE TRIGGER mark BEFORE INSERT ON s.leases FOR EACH ROW EXECUTE FUNCTION s.mark();
  // then `LESSOR_MIGRATE_TO=…search_path=s lessor migrate`. Observed: exit 0, "verified: every table
  // equal on both sides", though every live lease is stored as done: on the copy, revoking the lease or
  // pulling the killswitch (`… WHERE NOT done`) leaves it usable to its last use, and it escapes the
  // per-agent live-lease cap. Promised: "compares every table: row counts and a SHA-256 over every field
  // of every row". The digest (src/store/copy.ts storeSummary) covers only what the Store interface
  // returns: not leases.done, nor the ids that tie versions to secrets. Fix: refuse a target with objects
  // lessor did not create (above), and/or digest the stored rows themselves (a per-store raw digest).
  test("the verification sees every stored field: a target that marks each lease done on insert is not reported verified", async () => {
    const t = await schema();
    await lessorTables(t.url);
    await admin(
      `CREATE FUNCTION ${t.schema}.mark() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.done := true; RETURN NEW; END $$;
       CREATE TRIGGER mark BEFORE INSERT ON ${t.schema}.leases FOR EACH ROW EXECUTE FUNCTION ${t.schema}.mark();`,
    );
    const home = await newHome();
    const s = await seed(home);
    const r = await lessor(["migrate"], { home, env: { LESSOR_MIGRATE_TO: t.urlWithPw } });
    assertClean("migrate onto leases marked done", r);
    let impact = "";
    if (r.code === 0) {
      const b = pgHome(home);
      const env = { LESSOR_HOME: b, LESSOR_DATABASE_URL: t.url };
      const v = await openVault({ home: b, env });
      try {
        await v.admin().killswitch("incident").catch(() => {});
        await v.admin().releaseKillswitch("over").catch(() => {});
        const got = await v.session(agent("claude")).accessSecret(s.liveLease, DOM).then(
          (a) => (a.value.wipe(), "still served its value"),
          (e: Error) => `refused (${(e as Error & { code?: string }).code})`,
        );
        impact = `; on the copy, after the killswitch was pulled (and released), the lease granted before it ${got}`;
      } finally {
        await v.close();
      }
    }
    assert.notEqual(r.code, 0, `reported verified although every lease row differs in what revocation reads${impact}\n${show(r)}`);
    assert.doesNotMatch(r.stdout, /verified/);
  });

  test("a target that alters rows as they are copied (un-revoking tokens, zeroing use counts) is caught: never reported verified, told not to use it", async () => {
    for (const body of ["NEW.revoked_at := NULL", "NEW.uses := 0"]) {
      const t = await schema();
      await lessorTables(t.url);
      const table = body.includes("uses") ? "leases" : "tokens";
      await admin(
        `CREATE FUNCTION ${t.schema}.f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN ${body}; RETURN NEW; END $$;
         CREATE TRIGGER f BEFORE INSERT ON ${t.schema}.${table} FOR EACH ROW EXECUTE FUNCTION ${t.schema}.f();`,
      );
      const home = await newHome();
      await seed(home);
      const r = await lessor(["migrate"], { home, env: { LESSOR_MIGRATE_TO: t.urlWithPw } });
      assertClean(`migrate onto ${body}`, r);
      assert.notEqual(r.code, 0, `${body}: ${show(r)}`);
      assert.doesNotMatch(r.stdout, /verified/, body);
      assert.match(r.stderr, new RegExp(`differs from the source in: .*${table}|not empty|refus`), body);
    }
  });

  test("a target edited from another connection between the copy and its verification (a token un-revoked, a use count zeroed) is caught: never verified", { timeout: 60_000 }, async () => {
    const preload = join(tempDirUntilExit("lessor-mig-pause-"), "pause.cjs");
    writeFileSync(preload, PAUSE_PRELOAD);
    for (const edit of ["UPDATE %s.tokens SET revoked_at = NULL", "UPDATE %s.leases SET uses = 0, done = false"]) {
      const t = await schema();
      const home = await newHome();
      await seed(home);
      const run = start(["migrate"], { home, env: { LESSOR_MIGRATE_TO: t.urlWithPw, LESSOR_TEST_PAUSE_AT: "verifying" }, nodeArgs: ["--require", preload] });
      await until("the copy to end", () => run.stderr().includes("verifying") || run.child.exitCode !== null);
      await sleep(100);
      const changed = (await admin(edit.replace("%s", t.schema))).rowCount;
      run.child.kill("SIGCONT");
      const r = await run.done;
      assertClean(`migrate with ${edit}`, r);
      assert.ok((changed ?? 0) > 0, edit);
      assert.notEqual(r.code, 0, `${edit}: ${show(r)}`);
      assert.doesNotMatch(r.stdout, /verified/);
      assert.match(r.stderr, /differs from the source in: .*(tokens|leases).*do not use it/, edit);
    }
  });

  // Was broken (fixed since). Reproduction: two `lessor migrate` runs onto one empty schema (two admins, two homes, the
  // docs' URL): B passes its emptiness check, then is slow (here: stopped) before its first write; A
  // runs whole and reports "verified"; B continues. Observed: B's secrets, leases and tokens are
  // committed into A's finished vault (B fails only at the audit trail, "failed part way"); A's admin
  // switches to a vault that holds another vault's tokens (B's admin token authenticates there) and
  // secrets. Promised: "migrate never merges into or overwrites another vault". Fix: src/store/copy.ts
  // assertEmptyStore/copyStore: claim the target atomically — check emptiness and write a marker in the
  // first target transaction, under the store's write lock (for PostgreSQL the schema's advisory lock),
  // so that a second migration's first write fails while any other's is in progress or done.
  test("two migrations onto one target never merge: a second one paused after its emptiness check writes nothing into the first one's finished copy", { timeout: 90_000 }, async () => {
    const t = await schema();
    const a = await newHome();
    // B: another vault (of the same team: the same master key) with names of its own (the same name in
    // both would fail B's first write).
    const b = join(tempDirUntilExit("lessor-mig-atk-"), "home");
    mkdirSync(b, { mode: 0o700 });
    for (const f of readdirSync(a)) writeFileSync(join(b, f), readFileSync(join(a, f)), { mode: 0o600 });
    await seed(a, undefined, ["only-in-a"]);
    {
      const v = await openVault({ home: b, env: { LESSOR_HOME: b } });
      await v.admin().storeSecret({ name: "only-in-b", value: "b-value" });
      await v.admin().createToken({ name: "b-ops", role: "admin" });
      await v.close();
    }
    const preload = join(tempDirUntilExit("lessor-mig-pause-"), "pause.cjs");
    writeFileSync(preload, PAUSE_PRELOAD);
    const runB = start(["migrate"], { home: b, env: { LESSOR_MIGRATE_TO: t.urlWithPw, LESSOR_TEST_PAUSE_AT: "copying to" }, nodeArgs: ["--require", preload] });
    await until("B to pass its emptiness check", () => runB.stderr().includes("copying to") || runB.child.exitCode !== null);
    await sleep(200);
    const ra = await lessor(["migrate"], { home: a, env: { LESSOR_MIGRATE_TO: t.urlWithPw } });
    runB.child.kill("SIGCONT");
    const rb = await runB.done;
    assertClean("migrate A", ra);
    assertClean("migrate B", rb);
    // Whichever claimed the schema first copies; the other is refused and writes nothing. Here B
    // made its tables before it stopped, so A is refused and B's copy is whole.
    assert.equal(ra.code, 2, show(ra));
    assert.match(ra.stderr, /not empty/);
    assert.doesNotMatch(ra.stdout, /verified/);
    assert.equal(rb.code, 0, show(rb));
    assert.deepEqual(await pgSummary(t.url), await sqliteSummary(join(b, "lessor.db")), "the target is B's vault alone");
  });

  // Was broken (fixed since). Reproduction: a home on PostgreSQL while another instance on the same schema keeps writing
  // (the case the page names: "every other instance sharing the database ... a source that changes
  // during the copy is caught by the verification"); `lessor migrate --to sqlite:/tmp/copy.db`.
  // Observed, every run here: exit 1, "the source's audit trail does not verify (the trail ends at event
  // 346 but the checkpoint says 353: events were removed from the end); ... lessor audit recover if you
  // accept the break": the check of the source walks the trail, then reads the checkpoint another commit
  // has moved meanwhile, and tells the admin to record a break in a healthy trail. Promised: a changing
  // source is caught as one (exit 5, "the source changed while it was copied"); exit 1 is for a trail
  // that is broken. Fix: src/config/migrate.ts migrateHome (the source check) and src/audit/verify.ts
  // checkTrail: read the trail and its checkpoint in one snapshot (a read-only REPEATABLE READ
  // transaction on PostgreSQL), or read the checkpoint before the walk and accept events past it. (The
  // vault's own auditVerify, `lessor audit verify` on a busy team server, reads the same way.)
  test("another instance writing to the PostgreSQL source is caught as a changing source (exit 5), never reported as a broken audit trail to recover", { timeout: 90_000 }, async () => {
    const t = await schema();
    const like = await newHome();
    const src = pgHome(like);
    const env = { LESSOR_HOME: src, LESSOR_DATABASE_URL: t.url };
    await seed(src, env, Array.from({ length: 150 }, (_, i) => `x${i}`));
    const outcomes = await migrateWhileWriting({ home: src, env }, { home: src, env: { LESSOR_DATABASE_URL: t.urlWithPw } }, 3);
    for (const o of outcomes) assert.match(o, /^exit 5: .*source changed while it was copied/, `a source another instance writes to, migrated ${outcomes.length} times:\n${outcomes.join("\n")}`);
  });

  test("a copy cut short (SIGKILL while its last write waits) serves nothing: audited calls on the partial target are refused, the next run refuses it, and after dropping it the copy completes", { timeout: 90_000 }, async () => {
    const t = await schema();
    const home = await newHome();
    const s = await seed(home);
    // Migrate makes its tables in the empty schema, then stops (the preload) before it copies: the lock is taken then.
    const preload = join(tempDirUntilExit("lessor-mig-pause-"), "pause.cjs");
    writeFileSync(preload, PAUSE_PRELOAD);
    const run = start(["migrate"], { home, env: { LESSOR_MIGRATE_TO: t.urlWithPw, LESSOR_TEST_PAUSE_AT: "copying to" }, nodeArgs: ["--require", preload] });
    await until("migrate to make its tables", () => run.stderr().includes("copying to") || run.child.exitCode !== null);
    const lock = new pg.Client({ connectionString: t.url });
    await lock.connect();
    await lock.query("BEGIN");
    await lock.query(`LOCK TABLE ${t.schema}.audit_checkpoint IN EXCLUSIVE MODE`); // reads pass, writes wait
    run.child.kill("SIGCONT");
    let killed: Result;
    try {
      await until("the audit trail to be copied", () => /audit: \d+/.test(run.stderr()) || run.child.exitCode !== null);
      await sleep(300);
      run.child.kill("SIGKILL");
      killed = await run.done;
      // The dead client's last transaction was pipelined whole (up to its COMMIT) and waits on the lock:
      // its server session goes as the server would once it noticed the client gone, before the lock does.
      const me = (await lock.query("SELECT pg_backend_pid() AS pid")).rows[0].pid as number;
      await admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", [me]);
    } finally {
      await lock.query("ROLLBACK");
      await lock.end();
    }
    assert.equal(killed.signal, "SIGKILL", show(killed));
    const partial = await pgSummary(t.url);
    assert.equal(partial.counts.checkpoint, 0, "the last write never committed");
    assert.equal(partial.counts.meta, 0);
    assert.ok(partial.counts.tokens > 0 && partial.counts.audit > 0, JSON.stringify(partial.counts));
    // An instance pointed at the partial copy (as the summary's "next" would tell): it serves nothing audited.
    const b = pgHome(home);
    const env = { LESSOR_HOME: b, LESSOR_DATABASE_URL: t.url };
    const v = await openVault({ home: b, env }).catch((e: Error) => e);
    if (v instanceof Error) assert.ok(isVaultError(v), `a clean refusal to open the partial copy: ${v.message}`);
    else {
      console.log("# the partial copy opens as a vault; checking it serves nothing audited");
      try {
        await assert.rejects(v.session(agent("claude")).accessSecret(s.liveLease, DOM), (e) => isVaultError(e, "audit_broken"));
        await assert.rejects(v.session(agent("claude")).requestLease({ secret: "canary" }), (e) => isVaultError(e, "audit_broken"));
        await assert.rejects(v.admin().revealSecret({ scope: "global", name: "canary" }), (e) => isVaultError(e, "audit_broken"));
      } finally {
        await v.close();
      }
    }
    const beforeAgain = await pgSummary(t.url);
    const again = await lessor(["migrate"], { home, env: { LESSOR_MIGRATE_TO: t.urlWithPw } });
    assertClean("migrate onto the partial copy", again);
    assert.equal(again.code, 2, show(again));
    assert.match(again.stderr, /not empty.*(empty this one|failed earlier migration)/);
    assert.deepEqual(await pgSummary(t.url), beforeAgain, "the refused run wrote nothing");
    await admin(`DROP SCHEMA ${t.schema} CASCADE`);
    await admin(`CREATE SCHEMA ${t.schema}`);
    const done = await lessor(["migrate"], { home, env: { LESSOR_MIGRATE_TO: t.urlWithPw } });
    assertClean("migrate after dropping the partial copy", done);
    assert.equal(done.code, 0, show(done));
    assert.deepEqual(await pgSummary(t.url), await sqliteSummary(join(home, "lessor.db")));
  });

  test("a URL naming a schema that does not exist is refused (exit 2: a bad target) and nothing is created anywhere else (public)", async () => {
    const home = await newHome();
    await seed(home);
    const count = async () => Number((await admin(`SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relname IN ('lessor_migrations', 'meta', 'secrets', 'secret_versions', 'leases', 'tokens', 'audit')`)).rows[0].n);
    const before = await count();
    const missing = `lessor_atk_missing_${randomBytes(4).toString("hex")}`;
    const r = await lessor(["migrate"], { home, env: { LESSOR_MIGRATE_TO: withUser(urlAs("postgres", missing), "postgres", PW) } });
    assertClean("migrate to a missing schema", r);
    assert.equal(r.code, 2, show(r));
    assert.match(r.stderr, /no schema named in the target's search_path exists/);
    assert.equal(await count(), before);
  });

  // Was broken (fixed since). Reproduction: LESSOR_MIGRATE_TO='postgres://lessor:…@db.internal:5432/lessor?host=other.host'
  // (or `?port=6543`, or `options=-c search_path=team_a,team_b` with team_a missing, or two
  // `-c search_path=` settings). node-postgres connects to the `host`/`port` parameters and PostgreSQL
  // writes to the first existing schema of the path (the last -c wins), but the progress line and the
  // summary say "-> postgres db.internal:5432/lessor (schema team_a)". Promised: "the target is shown as
  // postgres host:port/database (schema …)" and "the summary names what it checked". Fix:
  // src/store/postgres/connection.ts describeTarget (prefer the `host` and `port` parameters, as
  // pg-connection-string does) and src/config/migrate-target.ts describeMigrateTarget (report the
  // schema the store really used: SELECT current_schema() on the opened target).
  test("the summary names the server, port and schema the vault was really written to", { timeout: 60_000 }, async () => {
    const pgu = new URL(PG_URL!);
    const realPort = pgu.port || "5432";
    const lines: string[] = [];
    for (const variant of ["host", "port", "path"] as const) {
      const t = await schema();
      const u = new URL(t.urlWithPw);
      if (variant === "host") {
        u.hostname = "db.invalid";
        u.searchParams.set("host", pgu.hostname);
      } else if (variant === "port") {
        u.port = "1";
        u.searchParams.set("port", realPort);
      } else u.searchParams.set("options", `-c search_path=lessor_atk_missing_x,${t.schema}`);
      const home = await newHome();
      await seed(home);
      const r = await lessor(["migrate", "--json"], { home, env: { LESSOR_MIGRATE_TO: u.toString() } });
      assertClean(`migrate (${variant})`, r);
      assert.equal(r.code, 0, show(r));
      const report = JSON.parse(r.stdout) as { target: string };
      const actual = `${pgu.hostname}:${realPort}/${pgu.pathname.slice(1)} (schema ${t.schema})`;
      lines.push(`${variant}: the summary says "${report.target}", the vault went to ${actual}`);
    }
    for (const l of lines) {
      const [said, went] = /says "(.*)", the vault went to (.*)$/.exec(l)!.slice(1) as [string, string];
      assert.equal(said, `postgres ${went}`, lines.join("\n"));
    }
  });

  test("two-way exactness: edge-case names, descriptions, a 512 KiB value, 40 versions, tokens, leases, approvals and the killswitch survive SQLite -> PostgreSQL -> SQLite; nothing reset or un-revoked", { timeout: 120_000 }, async () => {
    const home = await newHome();
    const s = await seed(home);
    const big = randomBytes(384 * 1024).toString("base64").slice(0, 512 * 1024 - 16);
    const descs = ["caf\u00e9", "cafe\u0301", "trailing spaces   ", "\u{1F511} key emoji", "x".repeat(200)];
    let gatedPending = "";
    let gatedApproved = "";
    {
      const v = await openVault({ home, env: { LESSOR_HOME: home } });
      const adm = v.admin();
      const claude = v.session(agent("claude"));
      for (const [i, n] of ["Key", "key", "KEY"].entries()) await adm.storeSecret({ name: n, value: `case-${n}`, description: descs[i]!, tags: ["a", "b:c=d"] });
      await adm.storeSecret({ name: "x" + "y".repeat(127), value: "long-name", description: descs[3]! });
      await adm.storeSecret({ name: "big", value: big, description: descs[4]! });
      await adm.storeSecret({ name: "many", value: "many-0" });
      for (let i = 1; i < 40; i++) await adm.rotateSecret({ scope: "global", name: "many" }, `many-${i}`);
      await adm.storeSecret({ scope: "workspace:team", name: "canary", value: "other-scope" });
      await adm.storeSecret({ name: "gated", value: "gated-value" });
      const pending = await claude.requestApproval({ secret: "gated", domains: ["api.example.com"], reason: "pending one" });
      assert.ok(pending.required);
      gatedPending = pending.approval.id;
      const ap = await claude.requestApproval({ secret: "gated", domains: ["api.example.com"], ttl: "10m", reason: "approved one" });
      assert.ok(ap.required);
      await adm.decideApproval(ap.approval.id, true, "ok");
      gatedApproved = ap.approval.id;
      await v.close();
    }
    const t = await schema();
    const there = await lessor(["migrate"], { home, env: { LESSOR_MIGRATE_TO: t.urlWithPw } });
    assertClean("migrate to PostgreSQL", there, [big.slice(0, 64), "many-39", "case-Key"]);
    assert.equal(there.code, 0, show(there));
    const src = await sqliteSummary(join(home, "lessor.db"));
    assert.deepEqual(await pgSummary(t.url), src, "PostgreSQL holds exactly what SQLite held");
    assert.equal(src.counts.versions, 2 + 3 + 1 + 1 + 40 + 1 + 1);

    // On PostgreSQL: every value, every state.
    const b = pgHome(home);
    const envB = { LESSOR_HOME: b, LESSOR_DATABASE_URL: t.url };
    {
      const v = await openVault({ home: b, env: envB });
      try {
        const adm = v.admin();
        const claude = v.session(agent("claude"));
        const reveal = async (name: string, version?: number, scope = "global") => (await adm.revealSecret({ scope, name }, version)).value.unsafeText();
        assert.deepEqual(
          [await reveal("canary"), await reveal("canary", 1), await reveal("Key"), await reveal("key"), await reveal("KEY"), await reveal("many", 1), await reveal("many"), await reveal("canary", undefined, "workspace:team")],
          [CANARY, "canary-old-version", "case-Key", "case-key", "case-KEY", "many-0", "many-39", "other-scope"],
        );
        assert.equal(await reveal("big"), big);
        const listed = new Map((await adm.listSecrets()).map((x) => [x.name, x.description]));
        assert.deepEqual(["Key", "key", "KEY", "x" + "y".repeat(127), "big"].map((n) => listed.get(n)), descs);
        // The live lease carries its one use: two more, then used up.
        for (const uses of [2, 3]) assert.equal((await claude.accessSecret(s.liveLease, DOM)).lease.uses, uses);
        await assert.rejects(claude.accessSecret(s.liveLease, DOM), (e) => isVaultError(e, "lease_exhausted"));
        await assert.rejects(claude.accessSecret(s.usedUpLease, DOM), (e) => isVaultError(e, "lease_exhausted"));
        await assert.rejects(claude.accessSecret(s.revokedLease, DOM), (e) => isVaultError(e, "lease_revoked"));
        await assert.rejects(v.authenticateToken(s.revokedToken, "tcp"), (e) => isVaultError(e, "unauthenticated"));
        assert.equal((await v.authenticateToken(s.token, "tcp")).agent, "claude");
        const approvals = new Map((await adm.listApprovals({ all: true })).map((a) => [a.id, a.state]));
        assert.equal(approvals.get(gatedPending), "pending");
        assert.equal(approvals.get(gatedApproved), "approved");
        // The killswitch pulled on PostgreSQL: it must still be pulled after the way back.
        await adm.killswitch("incident during the move");
        assert.equal((await adm.auditVerify()).ok, true);
      } finally {
        await v.close();
      }
    }
    const dir = tempDirUntilExit("lessor-mig-back-");
    const back = await lessor(["migrate", "--to", `sqlite:${join(dir, "lessor.db")}`], { home: b, env: { LESSOR_DATABASE_URL: t.urlWithPw } });
    assertClean("migrate back to SQLite", back, [big.slice(0, 64), "many-39", "case-Key"]);
    assert.equal(back.code, 0, show(back));
    assert.deepEqual(await sqliteSummary(join(dir, "lessor.db")), await pgSummary(t.url), "SQLite holds exactly what PostgreSQL held");
    const c = siblingHome(home, CONFIG);
    writeFileSync(join(c, "lessor.db"), readFileSync(join(dir, "lessor.db")), { mode: 0o600 });
    {
      const v = await openVault({ home: c, env: { LESSOR_HOME: c } });
      try {
        const claude = v.session(agent("claude"));
        assert.equal((await v.checkKillswitch()).engaged, true, "the killswitch pulled before the move is still pulled");
        await assert.rejects(claude.requestLease({ secret: "canary" }), (e) => isVaultError(e, "access_denied") || isVaultError(e, "lease_revoked"));
        await assert.rejects(claude.accessSecret(s.liveLease, DOM), (e) => isVaultError(e, "lease_exhausted") || isVaultError(e, "lease_revoked") || isVaultError(e, "access_denied"));
        await assert.rejects(v.authenticateToken(s.revokedToken, "tcp"), (e) => isVaultError(e, "unauthenticated"));
        assert.equal((await v.admin().auditVerify()).ok, true);
        assert.equal((await v.admin().revealSecret({ scope: "global", name: "big" })).value.unsafeText(), big);
      } finally {
        await v.close();
      }
    }
  });
});
