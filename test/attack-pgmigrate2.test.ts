/**
 * A second attack pass on `lessor migrate` between PostgreSQL schemas and databases (docs/cli/migrate.md,
 * src/config/migrate.ts, src/store/copy.ts, src/store/postgres/fresh-schema.ts), complementing
 * test/migrate-attacks.test.ts and test/attack-migrate-audit.test.ts: the same store given as source and
 * target, PostgreSQL to PostgreSQL inside one database, a copy killed before its audit rows went over
 * (from a vault whose killswitch is pulled), and a canary password in the URLs through every connection
 * failure. Real SQLite files, the real PostgreSQL server of LESSOR_TEST_PG_URL (a fresh schema per test,
 * dropped after; skipped without it) and the built CLI (dist/bin/lessor.cjs) as child processes.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { isVaultError } from "../src/base/errors.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { storeSummary, type StoreSummary } from "../src/store/copy.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { BIN, runCli, type CliResult } from "./cli-harness.js";
import { agent, grant, tempDirUntilExit } from "./helpers.js";
import { admin, PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";

const CANARY = `CANARY-pgm2-${randomBytes(10).toString("hex")}`;
const PW = `pw-pgm2-${randomBytes(9).toString("hex")}`;
const DOM = { domain: "api.example.com" };
const POLICY = grant("g", ["claude"], ["canary", "s*"], ["api.example.com"], 'max_uses = 1\nttl = "1h"');

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

async function newHome(): Promise<string> {
  const home = join(tempDirUntilExit("lessor-pgm2-"), "home");
  await initHome({ home, env: { LESSOR_HOME: home } });
  writeFileSync(join(home, "policy.toml"), POLICY, { mode: 0o600 });
  return home;
}

/** A home on PostgreSQL sharing `like`'s key and policy (its URL comes from LESSOR_DATABASE_URL). */
function pgHome(like: string): string {
  const home = join(tempDirUntilExit("lessor-pgm2-"), "home");
  mkdirSync(home, { mode: 0o700 });
  for (const f of ["master.key", "policy.toml"]) writeFileSync(join(home, f), readFileSync(join(like, f)), { mode: 0o600 });
  writeFileSync(join(home, "lessor.toml"), '[vault]\nstore = "postgres"\n', { mode: 0o600 });
  return home;
}

/** The canary, a lease used up (max_uses = 1), a live lease, an agent token; `killswitch`: pulled last. */
async function seed(home: string, env: Record<string, string>, o: { killswitch?: boolean } = {}): Promise<{ usedUp: string; live: string }> {
  const v = await openVault({ home, env });
  try {
    const adm = v.admin();
    const claude = v.session(agent("claude"));
    await adm.storeSecret({ name: "canary", value: CANARY });
    await adm.storeSecret({ name: "s1", value: "s1-value" });
    const usedUp = await claude.requestLease({ secret: "canary" });
    (await claude.accessSecret(usedUp.id, DOM)).value.wipe();
    const live = await claude.requestLease({ secret: "s1" });
    await adm.createToken({ name: "ci", role: "agent", agent: "claude" });
    if (o.killswitch) await adm.killswitch("incident under way");
    return { usedUp: usedUp.id, live: live.id };
  } finally {
    await v.close();
  }
}

/** A fresh empty schema (dropped after the file); its URL, and the same with a canary password. */
async function schema(): Promise<{ schema: string; url: string; urlWithPw: string }> {
  const s = await testSchema();
  cleanups.push(s.drop);
  const u = new URL(s.url);
  u.password = PW;
  return { schema: s.schema, url: s.url, urlWithPw: u.toString() };
}

async function pgSummary(url: string): Promise<StoreSummary> {
  const s = await openPostgresStore({ url, feed: { listen: false } });
  try {
    return await storeSummary(s);
  } finally {
    await s.close();
  }
}

const show = (r: CliResult) => `exit ${r.code} ${r.signal ?? ""}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

/** Neither the canary value nor the password in anything printed (the failure message does not repeat them). */
function assertNoLeak(what: string, r: CliResult): void {
  for (const [name, s] of [["the canary value", CANARY], ["the URL's password", PW]] as const)
    assert.ok(!r.stdout.includes(s) && !r.stderr.includes(s), `${what}: printed ${name} (exit ${r.code})`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// =====================================================================================================

describe("PostgreSQL source and target: the same place, and two schemas of one database", { skip: PG_SKIP }, () => {
  // The SQLite path refuses the home's own file (src/config/migrate.ts, migrateHome); the PostgreSQL
  // path once had no such check: given the home's own URL (literally, or spelled so that it leads to
  // the same schema: a search_path whose first schema does not exist), the refusal came from the
  // fresh-schema check, which called the live vault "not empty" and said to "drop this one's contents
  // if it is a failed earlier migration". Now the target's server, database and schema are compared
  // with the source's (src/store/postgres/fresh-schema.ts, storeIdentity) before anything else.
  test("a PostgreSQL target that is the home's own store (same URL, or a search_path leading to the same schema) is refused as the source itself, never with advice to drop its contents", async () => {
    const t = await schema();
    const like = await newHome();
    const home = pgHome(like);
    const env = { LESSOR_HOME: home, LESSOR_DATABASE_URL: t.url };
    await seed(home, env);
    const before = await pgSummary(t.url);
    const spellings: [string, string][] = [["the same URL", t.urlWithPw]];
    const other = new URL(t.urlWithPw);
    other.protocol = "postgresql:";
    other.searchParams.set("options", `-c search_path=lessor_pgm2_missing_${randomBytes(3).toString("hex")},${t.schema}`);
    spellings.push(["a URL whose search_path leads to the same schema", other.toString()]);
    const problems: string[] = [];
    for (const [what, target] of spellings) {
      const r = await runCli(["migrate"], { home, env: { LESSOR_DATABASE_URL: t.urlWithPw, LESSOR_MIGRATE_TO: target } });
      assertNoLeak(`migrate onto ${what}`, r);
      assert.equal(r.code, 2, `migrate onto ${what} must be refused:\n${show(r)}`);
      const msg = r.stderr.split("\n").find((l) => l.startsWith("lessor:")) ?? r.stderr;
      if (/drop/i.test(msg) || !/(own|source|same|itself)/i.test(msg)) problems.push(`${what}: ${msg}`);
    }
    assert.deepEqual(await pgSummary(t.url), before, "the source vault changed");
    assert.deepEqual(problems, [], "the refusal does not say the target is the vault being migrated, and tells the admin to drop it:\n" + problems.join("\n"));
  });

  test("PostgreSQL to PostgreSQL inside one database, the target's search_path naming the source's schema after its own: everything lands in the new schema, the source is untouched, and the copy opens as the same vault (a used-up lease stays used up)", { timeout: 60_000 }, async () => {
    const src = await schema();
    const dst = await schema();
    const like = await newHome();
    const home = pgHome(like);
    const s = await seed(home, { LESSOR_HOME: home, LESSOR_DATABASE_URL: src.url });
    const before = await pgSummary(src.url);
    const target = new URL(dst.urlWithPw);
    target.searchParams.set("options", `-c search_path=${dst.schema},${src.schema}`);
    const r = await runCli(["migrate", "--json"], { home, env: { LESSOR_DATABASE_URL: src.urlWithPw, LESSOR_MIGRATE_TO: target.toString() }, timeoutMs: 60_000 });
    assertNoLeak("migrate PG -> PG", r);
    assert.equal(r.code, 0, show(r));
    assert.match(JSON.parse(r.stdout).target as string, new RegExp(`\\(schema ${dst.schema}\\)$`));
    assert.deepEqual(await pgSummary(src.url), before, "the source schema changed");
    // The target schema alone (search_path = only it) holds the whole vault.
    assert.deepEqual(await pgSummary(dst.url), before);
    const tables = await admin("SELECT n.nspname AS s, count(*)::int AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY($1) AND c.relkind = 'r' GROUP BY 1", [[src.schema, dst.schema]]);
    const counts = Object.fromEntries(tables.rows.map((x: { s: string; n: number }) => [x.s, x.n]));
    assert.equal(counts[dst.schema], counts[src.schema], JSON.stringify(counts));
    const b = pgHome(like);
    const v = await openVault({ home: b, env: { LESSOR_HOME: b, LESSOR_DATABASE_URL: dst.url } });
    try {
      const claude = v.session(agent("claude"));
      await assert.rejects(claude.accessSecret(s.usedUp, DOM), (e) => isVaultError(e), "a max_uses = 1 lease used on the source works again on the copy");
      const val = await claude.accessSecret(s.live, DOM);
      try {
        assert.ok(val.value.equals(Buffer.from("s1-value")), "the live lease opens another value on the copy");
      } finally {
        val.value.wipe();
      }
    } finally {
      await v.close();
    }
    // ...and the source still counts its own uses: the live lease was used on the copy only.
    const so = await openPostgresStore({ url: src.url, feed: { listen: false } });
    try {
      assert.equal((await so.getLease(s.live))?.uses, 0);
    } finally {
      await so.close();
    }
  });
});

// =====================================================================================================

/** Stops the process (SIGSTOP) when it writes `LESSOR_TEST_PAUSE_AT` to stderr. */
const PAUSE_PRELOAD = `
const needle = process.env.LESSOR_TEST_PAUSE_AT;
const write = process.stderr.write;
process.stderr.write = function (chunk, ...rest) {
  const r = write.call(this, chunk, ...rest);
  if (needle && String(chunk).includes(needle)) process.kill(process.pid, "SIGSTOP");
  return r;
};
`;

describe("a copy killed before its audit rows went over", { skip: PG_SKIP }, () => {
  test("from a vault whose killswitch is pulled, a copy SIGKILLed after its tokens (no audit row, no metadata) grants and reveals nothing, audit verify fails on it, and the next run refuses it", { timeout: 60_000 }, async () => {
    const t = await schema();
    const home = await newHome();
    const s = await seed(home, { LESSOR_HOME: home }, { killswitch: true });
    const pre = join(tempDirUntilExit("lessor-pgm2-pause-"), "pause.cjs");
    writeFileSync(pre, PAUSE_PRELOAD);
    const child = spawn(process.execPath, ["--require", pre, "--", BIN, "migrate"], {
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", LESSOR_HOME: home, LESSOR_MIGRATE_TO: t.urlWithPw, LESSOR_TEST_PAUSE_AT: "  tokens:" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr!.on("data", (d: Buffer) => (err += d.toString("utf8")));
    const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on("close", (code, signal) => r({ code, signal })));
    const end = Date.now() + 30_000;
    while (!err.includes("  tokens:") && child.exitCode === null && Date.now() < end) await sleep(20);
    await sleep(200);
    child.kill("SIGKILL");
    const k = await closed;
    assert.equal(k.signal, "SIGKILL", `migrate ended before it was killed:\n${err}`);
    assert.ok(!err.includes(PW) && !err.includes(CANARY));
    const partial = await pgSummary(t.url);
    assert.equal(partial.counts.audit, 0, JSON.stringify(partial.counts));
    assert.equal(partial.counts.meta, 0);
    assert.ok(partial.counts.secrets > 0 && partial.counts.leases > 0 && partial.counts.tokens > 0, JSON.stringify(partial.counts));

    // An instance pointed at the partial copy: the killswitch's lockout lives in the metadata that never
    // went over, so only the empty-trail check stands between it and a new grant.
    const b = pgHome(home);
    const env = { LESSOR_HOME: b, LESSOR_DATABASE_URL: t.url };
    const v = await openVault({ home: b, env }).catch((e: Error) => e);
    if (v instanceof Error) assert.ok(isVaultError(v), `a clean refusal to open the partial copy: ${v.message}`);
    else {
      try {
        const claude = v.session(agent("claude"));
        await assert.rejects(claude.requestLease({ secret: "s1" }), (e) => isVaultError(e), "a lease granted on the partial copy of a vault whose killswitch is pulled");
        await assert.rejects(claude.accessSecret(s.live, DOM), (e) => isVaultError(e));
        await assert.rejects(v.admin().revealSecret({ scope: "global", name: "canary" }), (e) => isVaultError(e));
      } finally {
        await v.close();
      }
    }
    const verify = await runCli(["audit", "verify"], { home: b, env: { LESSOR_DATABASE_URL: t.urlWithPw } });
    assertNoLeak("audit verify on the partial copy", verify);
    assert.notEqual(verify.code, 0, `audit verify passes on a copy that lost every audit row:\n${show(verify)}`);
    const beforeAgain = await pgSummary(t.url); // the instance above may have stamped its policy there
    const again = await runCli(["migrate"], { home, env: { LESSOR_MIGRATE_TO: t.urlWithPw } });
    assertNoLeak("migrate onto the partial copy", again);
    assert.equal(again.code, 2, show(again));
    assert.deepEqual(await pgSummary(t.url), beforeAgain, "the refused run wrote into the partial copy");
    // The source is whole: its trail verifies and it still refuses grants (the killswitch).
    const src = openSqliteStore(join(home, "lessor.db"));
    try {
      assert.ok((await storeSummary(src)).counts.audit > 0);
    } finally {
      await src.close();
    }
    const sv = await runCli(["audit", "verify"], { home });
    assert.equal(sv.code, 0, show(sv));
  });
});

// =====================================================================================================

describe("another instance on the PostgreSQL source during the verification", { skip: PG_SKIP }, () => {
  // docs/cli/migrate.md: "for a PostgreSQL source, every other instance sharing the database (migrate
  // cannot see those; a source that changes during the copy is caught by the verification below, exit
  // 5)", and only "a write that lands after the verification's last read of the source is not in the
  // copy". src/config/migrate.ts (migrateLocked) once read the source's second summary first, then the
  // target's, so a revocation committed after that read was in no comparison: "verified", exit 0, the
  // lease live in the copy. Now the source's summary is the verification's last read; here the
  // revocation lands while migrate waits on the target, before that read.
  test("a lease revoked on the source by another instance while migrate verifies (while it reads the target) is caught as a changing source (exit 5), never reported verified with the lease live in the copy", { timeout: 60_000 }, async () => {
    const src = await schema();
    const dst = await schema();
    const like = await newHome();
    const home = pgHome(like);
    const s = await seed(home, { LESSOR_HOME: home, LESSOR_DATABASE_URL: src.url });
    const pre = join(tempDirUntilExit("lessor-pgm2-pause-"), "pause.cjs");
    writeFileSync(pre, PAUSE_PRELOAD);
    const child = spawn(process.execPath, ["--require", pre, "--", BIN, "migrate"], {
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", LESSOR_HOME: home, LESSOR_DATABASE_URL: src.urlWithPw, LESSOR_MIGRATE_TO: dst.urlWithPw, LESSOR_TEST_PAUSE_AT: "verifying" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout!.on("data", (d: Buffer) => (out += d.toString("utf8")));
    child.stderr!.on("data", (d: Buffer) => (err += d.toString("utf8")));
    const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on("close", (code, signal) => r({ code, signal })));
    const until = async (what: string, f: () => boolean | Promise<boolean>) => {
      const end = Date.now() + 20_000;
      while (!(await f())) {
        if (Date.now() > end || child.exitCode !== null) throw new Error(`waiting for ${what}; migrate said:\n${out}\n${err}`);
        await sleep(20);
      }
    };
    await until("migrate to reach its verification", () => err.includes("verifying"));
    // The copy is written; the target's checkpoint table is locked, so migrate's read of the target
    // waits once it has read the source again.
    const lock = new (await import("pg")).default.Client({ connectionString: dst.url });
    await lock.connect();
    try {
      await lock.query("BEGIN");
      await lock.query(`LOCK TABLE ${dst.schema}.audit_checkpoint IN ACCESS EXCLUSIVE MODE`);
      const me = (await lock.query("SELECT pg_backend_pid() AS pid")).rows[0].pid as number;
      child.kill("SIGCONT");
      await until("migrate's read of the target to wait on the lock", async () => Number((await admin("SELECT count(*)::int AS n FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", [me])).rows[0].n) > 0);
      // Another instance sharing the source database revokes the live lease (an incident response).
      const other = pgHome(like);
      const v = await openVault({ home: other, env: { LESSOR_HOME: other, LESSOR_DATABASE_URL: src.url } });
      try {
        await v.admin().revokeLease(s.live, "leaked");
      } finally {
        await v.close();
      }
    } finally {
      await lock.query("ROLLBACK").catch(() => {});
      await lock.end();
    }
    const r = await closed;
    assert.ok(!out.includes(PW) && !err.includes(PW) && !out.includes(CANARY) && !err.includes(CANARY));
    const so = await openPostgresStore({ url: src.url, feed: { listen: false } });
    const dstStore = await openPostgresStore({ url: dst.url, feed: { listen: false } });
    let onSource: number | null | undefined;
    let onCopy: number | null | undefined;
    try {
      onSource = (await so.getLease(s.live))?.revokedAt;
      onCopy = (await dstStore.getLease(s.live))?.revokedAt;
    } finally {
      await so.close();
      await dstStore.close();
    }
    assert.ok(typeof onSource === "number", "the revocation committed on the source");
    if (r.code === 0)
      assert.ok(
        typeof onCopy === "number",
        `migrate exited 0 ("${out.split("\n").find((l) => l.startsWith("verified")) ?? ""}") but the copy holds the lease the source revoked during the verification as live`,
      );
    else assert.equal(r.code, 5, `a changing source is exit 5:\nexit ${r.code}\n${err}`);
  });
});

// =====================================================================================================

describe("a canary password in the URLs, through every way a connection fails", { skip: PG_SKIP }, () => {
  test("neither LESSOR_MIGRATE_TO's nor LESSOR_DATABASE_URL's password is printed when the server refuses, the database, role or schema is missing, the options are bad, or the schema is another's", { timeout: 90_000 }, async () => {
    const home = await newHome();
    await seed(home, { LESSOR_HOME: home });
    const t = await schema();
    const tag = randomBytes(3).toString("hex");
    const variants: [string, (u: URL) => void][] = [
      ["a refused port", (u) => void (u.port = "1")],
      ["a missing database", (u) => void (u.pathname = `/lessor_pgm2_nodb_${tag}`)],
      ["a missing role", (u) => void (u.username = `lessor_pgm2_norole_${tag}`)],
      ["a missing schema", (u) => void u.searchParams.set("options", `-c search_path=lessor_pgm2_nosch_${tag}`)],
      ["an unknown setting", (u) => void u.searchParams.set("options", `-c lessor_pgm2_nosuch=${PW} -c search_path=${t.schema}`)],
      ["pg_catalog as the schema", (u) => void u.searchParams.set("options", "-c search_path=pg_catalog")],
    ];
    for (const [what, mod] of variants) {
      const u = new URL(t.urlWithPw);
      mod(u);
      const r = await runCli(["migrate"], { home, env: { LESSOR_MIGRATE_TO: u.toString() } });
      assertNoLeak(`migrate to ${what}`, r);
      assert.notEqual(r.code, 0, `migrate to ${what} succeeded:\n${show(r)}`);
      // The same URL as a PostgreSQL home's source.
      const b = pgHome(home);
      const s = await runCli(["migrate", "--to", `sqlite:${join(tempDirUntilExit("lessor-pgm2-to-"), "copy.db")}`], { home: b, env: { LESSOR_DATABASE_URL: u.toString() } });
      assertNoLeak(`migrate from ${what}`, s);
      assert.notEqual(s.code, 0, `migrate from ${what} succeeded:\n${show(s)}`);
    }
    // Nothing was created in the schema by any of the failed runs.
    const n = await admin("SELECT count(*)::int AS n FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace WHERE ns.nspname = $1", [t.schema]);
    assert.equal(n.rows[0].n, 0);
  });

  // Exit codes (docs/cli/migrate.md): "2 refused (… bad target); 5 … the database cannot be reached".
  // A URL naming a TLS file that does not exist (sslrootcert, sslcert, sslkey) made node-postgres throw
  // ENOENT from `new pg.Client(...)`, built outside the try: "internal error … this is a bug" (exit
  // 70). TLS asked of a server that has none ("The server does not support SSL connections", no
  // SQLSTATE) was "unexpected database error", also 70. Now poolConfig checks the files and pgError
  // knows both (src/store/postgres/connection.ts, errors.ts).
  test("a target URL whose TLS settings cannot be met (a certificate file that does not exist, TLS asked of a server without it) is a clean refusal (exit 2 or 5), not an internal error", async () => {
    const home = await newHome();
    await seed(home, { LESSOR_HOME: home });
    const t = await schema();
    const ssl = (await admin("SHOW ssl")).rows[0].ssl as string;
    const variants: [string, (u: URL) => void][] = [
      ["sslrootcert naming a missing file", (u) => void u.searchParams.set("sslrootcert", `/nonexistent-${randomBytes(3).toString("hex")}/root.crt`)],
      ["sslcert naming a missing file", (u) => void u.searchParams.set("sslcert", `/nonexistent-${randomBytes(3).toString("hex")}/client.crt`)],
    ];
    if (ssl === "off") variants.push(["sslmode=verify-full against a server without TLS", (u) => void u.searchParams.set("sslmode", "verify-full")]);
    const problems: string[] = [];
    for (const [what, mod] of variants) {
      const u = new URL(t.urlWithPw);
      mod(u);
      const r = await runCli(["migrate"], { home, env: { LESSOR_MIGRATE_TO: u.toString() } });
      assertNoLeak(`migrate with ${what}`, r);
      const msg = r.stderr.split("\n").find((l) => l.startsWith("lessor:")) ?? "";
      if (!(r.code === 2 || r.code === 5) || /internal error|unexpected/.test(msg)) problems.push(`${what}: exit ${r.code}: ${msg}`);
    }
    assert.deepEqual(problems, [], problems.join("\n"));
  });
});
