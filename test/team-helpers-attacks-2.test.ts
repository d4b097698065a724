/**
 * An attack pass on a team server (docs/team.md, docs/storage.md "PostgreSQL") and on the git and
 * docker credential helpers (docs/cli/credential-helpers.md), after the earlier passes
 * (test/postgres-team*.test.ts, test/credential-helper*.test.ts):
 *
 * - another PostgreSQL role on the vault's database that has **no privilege at all** on the vault's
 *   schema (only CONNECT, which PUBLIC holds by default, as in the database docs/team.md step 1
 *   makes, or another team's vault in another schema of the same database, as step 1 suggests):
 *   NOTIFY and advisory locks need no privilege;
 * - an embedded `lessor` command beside the daemons on one schema (its killswitch and token
 *   revocation reach a daemon's open connections);
 * - the database URL's password in lessor.toml: never in the daemon's log, `status`, `describe`, or
 *   an error;
 * - a hostile repository's own git config turning `credential.useHttpPath` off, so a rule's
 *   `paths` stop choosing the repository; docker's `list`.
 *
 * Needs LESSOR_TEST_PG_URL for the PostgreSQL part (skips, saying so, without it) and git for the
 * git part. Nothing leaves the machine: PostgreSQL is on 127.0.0.1, and `git credential fill`
 * connects nowhere.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import pg from "pg";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { channelFor } from "../src/store/postgres/change-feed.js";
import { LOCK_CLASS } from "../src/store/postgres/schema.js";
import { BIN, cliHome, runCli, runProcess, seedHome, type CliResult } from "./cli-harness.js";
import { makeHome, startServe, startTwo, type RunningDaemon } from "./daemon-harness.js";
import { grant, tempDirUntilExit, within } from "./helpers.js";
import { admin, PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";

type Coded = Error & { code?: string };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const DOM = { domain: "api.github.com" };
const GH = { secret: "github-token", domains: ["api.github.com"] };
const POLICY = grant("gh", ["claude"], ["github-token"], ["api.github.com"], 'ttl = "1h"');
const GH_CANARY = "ghp_team_" + randomBytes(16).toString("hex");

// ------------------------------------------------------------------------------------------------
// PostgreSQL: two daemons (and an embedded CLI) on one schema

interface Team {
  a: RunningDaemon;
  b: RunningDaemon;
  adminA: LessorClient;
  adminB: LessorClient;
  schema: string;
  url: string;
  homeA: string;
  closeLater(c: { close(): unknown }): void;
}

/** Daemons A and B (TCP on loopback) with one master key and policy on a fresh schema. */
async function team(t: TestContext, opts: { urlA?: (u: string) => string } = {}): Promise<Team> {
  const daemons: RunningDaemon[] = [];
  const clients: { close(): unknown }[] = [];
  const s = await testSchema();
  t.after(async () => {
    await Promise.allSettled(clients.map(async (c) => c.close()));
    await Promise.allSettled(daemons.map((d) => d.stop()));
    await s.drop();
  });
  const config = (u: string) => `[vault]\nstore = "postgres"\ndatabase_url = ${JSON.stringify(u)}\n[server]\ntcp = "127.0.0.1:0"\n`;
  const homeA = await makeHome({ config: config(opts.urlA ? opts.urlA(s.url) : s.url), policy: POLICY });
  const homeB = await makeHome({ config: config(s.url), policy: POLICY });
  copyFileSync(join(homeA, "master.key"), join(homeB, "master.key"));
  const v = await openVault({ home: homeA, env: { LESSOR_HOME: homeA } });
  await v.admin().storeSecret({ name: "github-token", value: GH_CANARY });
  await v.close();
  const { a, b, adminA, adminB } = await startTwo([startServe(homeA), startServe(homeB)], daemons, clients);
  return { a, b, adminA, adminB, schema: s.schema, url: s.url, homeA, closeLater: (c) => void clients.push(c) };
}

/** A PostgreSQL role that may log in to the test database and holds no privilege on anything of lessor's. */
async function outsiderRole(t: TestContext): Promise<{ role: string; connect: () => Promise<pg.Client> }> {
  const role = `lessor_outsider_${randomBytes(5).toString("hex")}`;
  await admin(`CREATE ROLE ${role} LOGIN`);
  const opened: pg.Client[] = [];
  t.after(async () => {
    await Promise.allSettled(opened.map((c) => c.end()));
    await admin(`DROP ROLE IF EXISTS ${role}`).catch(() => {});
  });
  return {
    role,
    connect: async () => {
      const u = new URL(PG_URL!);
      u.username = role;
      u.password = "";
      u.search = "";
      const c = new pg.Client({ connectionString: u.toString() });
      c.on("error", () => {});
      await c.connect();
      opened.push(c);
      return c;
    },
  };
}

async function tokenOn(tm: Team, d: RunningDaemon, role: "agent" | "admin"): Promise<{ client: LessorClient; id: string; token: string }> {
  const tok = await tm.adminA.createToken({ name: `${role}-${randomBytes(3).toString("hex")}`, role, ...(role === "agent" ? { agent: "claude" } : {}) });
  const client = await LessorClient.connect(d.tcp!, { token: tok.token, reconnect: false });
  tm.closeLater(client);
  return { client, id: tok.id, token: tok.token };
}

describe("a team server on PostgreSQL, attacked from the database's other roles and from beside it", { skip: PG_SKIP }, () => {
  test("a database role with no privilege on the vault's schema cannot revoke live tokens by a forged NOTIFY: a notification only makes the daemons read the change log", async (t) => {
    const tm = await team(t);
    const agentB = await tokenOn(tm, tm.b, "agent");
    const opsB = await tokenOn(tm, tm.b, "admin");
    (await agentB.client.leaseAndAccess(GH, DOM)).value.wipe();
    assert.equal((await opsB.client.status()).identity.role, "admin");

    const outsider = await outsiderRole(t);
    const c = await outsider.connect();
    // The outsider can read and write nothing of the vault's...
    const priv = await c.query("SELECT has_schema_privilege($1, $2, 'USAGE') AS u", [outsider.role, tm.schema]);
    assert.equal(priv.rows[0].u, false, "the outsider has no privilege on the vault's schema");
    await assert.rejects(c.query(`SELECT * FROM ${tm.schema}.lessor_changes`), (e: Coded) => e.code === "42501");
    await assert.rejects(c.query(`INSERT INTO ${tm.schema}.lessor_changes (seq, at, origin, changes) VALUES (1, 0, 'x', '[]')`), (e: Coded) => e.code === "42501");
    // ...but any role may NOTIFY on any channel, and the channel is the md5 of the schema's name.
    // Token ids are public (the `lsr_<id>_…` prefix, `lessor token list`, every audit actor id); the
    // change feed's seq is not known, so one statement sends 1..400 (a daemon once applied the one that
    // followed its last seq, and every one after it: it now reads `lessor_changes` instead).
    await c.query(
      `SELECT pg_notify($1, json_build_object('seq', g, 'origin', 'forged', 'changes',
         json_build_array(json_build_object('kind', 'token_revoked', 'tokenId', $2::text),
                          json_build_object('kind', 'token_revoked', 'tokenId', $3::text)))::text)
       FROM generate_series(1, 400) g`,
      [channelFor(tm.schema), agentB.id, opsB.id],
    );
    await sleep(1500); // past a poll (and the resync it does when the forged seqs ran ahead)

    const rows = (await admin(`SELECT id, revoked_at FROM ${tm.schema}.tokens WHERE id = ANY($1)`, [[agentB.id, opsB.id]])).rows;
    assert.equal(rows.length, 2);
    for (const r of rows) assert.equal(r.revoked_at, null, "the tokens are live in the database: nobody revoked them");

    const broken: string[] = [];
    // The open connections on B.
    for (const [what, f] of [
      ["agent token's open connection on B: lease + access", async () => (await agentB.client.leaseAndAccess(GH, DOM)).value.wipe()],
      ["admin token's open connection on B: status", async () => void (await opsB.client.status())],
    ] as const) {
      try {
        await f();
      } catch (e) {
        broken.push(`${what}: ${(e as Coded).code} ${(e as Error).message}`);
      }
    }
    // A fresh connection with the same (live) token, on B and on A.
    for (const [name, d] of [["B", tm.b], ["A", tm.a]] as const) {
      try {
        const fresh = await LessorClient.connect(d.tcp!, { token: agentB.token, reconnect: false });
        tm.closeLater(fresh);
        (await fresh.leaseAndAccess(GH, DOM)).value.wipe();
      } catch (e) {
        broken.push(`a new connection on ${name} with the live agent token: ${(e as Coded).code} ${(e as Error).message}`);
      }
    }
    assert.deepEqual(broken, [], "a role with no privilege on the vault cut and locked out live tokens (until the daemons restart)");
  });

  test("a database role with no privilege on the vault's schema holding the advisory locks of the vault's keys stops no killswitch, revocation or embedded command", async (t) => {
    const tm = await team(t);
    const agentB = await tokenOn(tm, tm.b, "agent");
    const lease = await agentB.client.requestLease(GH);

    const outsider = await outsiderRole(t);
    const c = await outsider.connect();
    // Advisory locks need no privilege; the key is (a constant, hashtext of the schema's name). The
    // vault's write lock is now a row lock on its own table, which the outsider cannot take.
    await c.query("SELECT pg_advisory_lock($1, hashtext($2))", [LOCK_CLASS.write, tm.schema]);

    const failed: string[] = [];
    const t0 = Date.now();
    const [ks, rv] = await Promise.allSettled([tm.adminA.killswitch("incident: token leaked"), tm.adminB.revokeLease(lease.id, "incident")]);
    const took = Date.now() - t0;
    if (ks.status === "rejected") failed.push(`killswitch on A: ${(ks.reason as Coded).code} ${(ks.reason as Error).message}`);
    if (rv.status === "rejected") failed.push(`revoke on B: ${(rv.reason as Coded).code} ${(rv.reason as Error).message}`);
    // The migration lock, held the same way: an open of a current schema does not take it.
    const c2 = await outsider.connect();
    await c2.query("SELECT pg_advisory_lock($1, hashtext($2))", [LOCK_CLASS.migrate, tm.schema]);
    const home = await cliHome();
    writeFileSync(join(home, "lessor.toml"), `[vault]\nstore = "postgres"\ndatabase_url = ${JSON.stringify(tm.url)}\n`, { mode: 0o600 });
    writeFileSync(join(home, "policy.toml"), POLICY, { mode: 0o600 });
    copyFileSync(join(tm.homeA, "master.key"), join(home, "master.key"));
    const emb = await runCli(["killswitch", "--yes", "--reason", "incident"], { home, timeoutMs: 30_000 });
    if (emb.code !== 0) failed.push(`embedded lessor killswitch: exit ${emb.code}: ${emb.stderr.trim().split("\n")[0]}`);
    await c.end();
    await c2.end();
    console.log(`# with the lock held by ${outsider.role}: killswitch/revoke answered in ${took} ms`);
    assert.deepEqual(failed, [], "the brakes failed while a role with no privilege on the vault held its advisory lock");
    assert.ok(took < 4000, `the brakes waited for the outsider's lock: ${took} ms`);
  });

  test("a write that waits out lock_timeout on the vault's write lock fails `unavailable` (the lock's own error), after one wait", async (t) => {
    const tm = await team(t);
    const agentB = await tokenOn(tm, tm.b, "agent");
    const lease = await agentB.client.requestLease(GH);
    // Whoever holds the lock (another instance stuck mid-commit, an operator's psql session as the
    // vault's role): docs/storage.md, "Errors": "a lock held past lock_timeout: unavailable with the fix".
    const holder = new pg.Client({ connectionString: PG_URL });
    holder.on("error", () => {});
    await holder.connect();
    t.after(() => holder.end().catch(() => {}));
    await holder.query("BEGIN");
    await holder.query(`SELECT 1 FROM ${tm.schema}.lessor_commits WHERE id = 1 FOR UPDATE`);
    const got: string[] = [];
    const t0 = Date.now();
    const names = ["revokeLease on A", "killswitch on B"];
    const settled = await Promise.allSettled([tm.adminA.revokeLease(lease.id, "incident"), tm.adminB.killswitch("incident")]);
    settled.forEach((r, i) =>
      got.push(r.status === "fulfilled" ? `${names[i]}: ok` : `${names[i]}: ${(r.reason as Coded).code}: ${(r.reason as Error).message}`),
    );
    const took = Date.now() - t0;
    console.log(`# lock held: answered in ${took} ms: ${got.join(" | ")}`);
    await holder.query("ROLLBACK");
    for (const g of got) assert.match(g, /: unavailable: .*(write lock|lock_timeout).*try again/, `while the lock was held: ${got.join(" | ")}`);
    // lock_timeout is 5 s (src/store/postgres/connection.ts): waited once, not again for a rerun, and
    // not twice for the one waiting second on the row (the tuple lock, then the holder: see the next test).
    assert.ok(took < 9000, `waited ${took} ms: more than one lock_timeout`);
    // Released, both work again.
    await tm.adminA.revokeLease(lease.id, "incident");
    await tm.adminB.killswitch("incident");
  });

  test("a write queued behind another session waiting for the write lock still fails after one lock_timeout, not one per lock PostgreSQL makes it wait for", async (t) => {
    // PostgreSQL arms lock_timeout afresh for each lock a statement waits for; a row lock's second
    // waiter waits for the tuple lock behind the first waiter, then for the holder's transaction. With
    // a first waiter that gives up after 2.5 s, a write limited by lock_timeout alone answered after
    // 2.5 + 5 s.
    const tm = await team(t);
    const agentB = await tokenOn(tm, tm.b, "agent");
    const lease = await agentB.client.requestLease(GH);
    const session = async (): Promise<pg.Client> => {
      const c = new pg.Client({ connectionString: PG_URL });
      c.on("error", () => {});
      await c.connect();
      t.after(() => c.end().catch(() => {}));
      return c;
    };
    const holder = await session();
    await holder.query("BEGIN");
    await holder.query(`SELECT 1 FROM ${tm.schema}.lessor_commits WHERE id = 1 FOR UPDATE`);
    const first = await session();
    await first.query("SET lock_timeout = 2500");
    const firstPid = ((await first.query("SELECT pg_backend_pid() AS pid")).rows[0] as { pid: number }).pid;
    const firstWait = first.query(`SELECT 1 FROM ${tm.schema}.lessor_commits WHERE id = 1 FOR UPDATE`).then(
      () => "had it",
      (e: Coded) => e.code,
    );
    // The first waiter is queued on the row before the daemon's write starts.
    await within(2000, "the first waiter queued on the row", async () => {
      const q = await holder.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", [firstPid]);
      return (q.rows[0] as { n: number }).n === 1;
    }, 20);
    const t0 = Date.now();
    const r = await tm.adminA.revokeLease(lease.id, "incident").then(
      () => "ok",
      (e: Coded) => `${e.code}: ${e.message}`,
    );
    const took = Date.now() - t0;
    console.log(`# queued second: answered in ${took} ms: ${r}; the first waiter: ${await firstWait}`);
    await holder.query("ROLLBACK");
    assert.equal(await firstWait, "55P03", "the test's first waiter did not give up as set up");
    assert.match(r, /^unavailable: .*write lock.*lock_timeout.*try again/);
    assert.ok(took < 6500, `waited ${took} ms behind the first waiter: more than one lock_timeout (5 s)`);
    await tm.adminA.revokeLease(lease.id, "incident");
  });

  test("an embedded lessor command beside the daemons (no daemon in its home): its killswitch closes B's agent connections and stops B's grants; its token revocation closes the token's connection on B", async (t) => {
    const tm = await team(t);
    const home = await cliHome();
    writeFileSync(join(home, "lessor.toml"), `[vault]\nstore = "postgres"\ndatabase_url = ${JSON.stringify(tm.url)}\n`, { mode: 0o600 });
    writeFileSync(join(home, "policy.toml"), POLICY, { mode: 0o600 });
    copyFileSync(join(tm.homeA, "master.key"), join(home, "master.key"));

    const victim = await tokenOn(tm, tm.b, "agent");
    const rev = await runCli(["token", "revoke", victim.id], { home });
    assert.equal(rev.code, 0, rev.stderr);
    await within(3000, "B closing the revoked token's connection", () => !victim.client.connected, 10);

    const agentB = await tokenOn(tm, tm.b, "agent");
    const lease = await agentB.client.requestLease(GH);
    const ks = await runCli(["killswitch", "--yes", "--reason", "drill"], { home });
    assert.equal(ks.code, 0, ks.stderr);
    await within(3000, "B closing its agents' connections", () => !agentB.client.connected, 10);
    const late = await tokenOn(tm, tm.b, "agent");
    await assert.rejects(late.client.requestLease(GH), (e: Coded) => e.code === "access_denied" && /killswitch/.test(e.message));
    await assert.rejects(late.client.accessSecret(lease.id, DOM), (e: Coded) => e.code === "lease_revoked");
    for (const c of [tm.adminA, tm.adminB]) {
      const v = await c.auditVerify();
      assert.equal(v.ok, true, v.problem);
    }
  });

  test("the database URL's password (in lessor.toml) is in no daemon log line, status, describe or connection error", async (t) => {
    const pw = `pgpw_${randomBytes(12).toString("hex")}`;
    // The test server trusts the loopback: the password is sent nowhere that checks it, but lessor holds it.
    const withPw = (raw: string) => {
      const u = new URL(raw);
      u.password = pw;
      return u.toString();
    };
    const tm = await team(t, { urlA: withPw });
    const st = await runCli(["status"], { home: tm.homeA });
    const stj = await runCli(["status", "--json"], { home: tm.homeA });
    const desc = JSON.stringify(await tm.adminA.describe());
    const stat = JSON.stringify(await tm.adminA.status());
    // A connection error: the same URL (password and all) at a port where nothing listens.
    const home = await cliHome();
    const dead = new URL(withPw(tm.url));
    dead.port = "1";
    writeFileSync(join(home, "lessor.toml"), `[vault]\nstore = "postgres"\ndatabase_url = ${JSON.stringify(dead.toString())}\n`, { mode: 0o600 });
    const err1 = await runCli(["status"], { home });
    const err2 = await runCli(["lease", "github-token", "--agent", "claude"], { home, env: { LESSOR_DATABASE_URL: dead.toString() } });
    assert.notEqual(err1.code, 0);
    for (const [what, text] of [
      ["daemon A's log", tm.a.stderr()],
      ["lessor status", st.stdout + st.stderr],
      ["lessor status --json", stj.stdout + stj.stderr],
      ["describe", desc],
      ["status (protocol)", stat],
      ["an unreachable server (lessor.toml)", err1.stdout + err1.stderr],
      ["an unreachable server (LESSOR_DATABASE_URL)", err2.stdout + err2.stderr],
    ] as const) {
      assert.ok(!text.includes(pw), `${what} shows the database password: ${text.slice(0, 400)}`);
      assert.ok(!text.includes(GH_CANARY), `${what} shows the secret`);
    }
  });
});

// ------------------------------------------------------------------------------------------------
// git and docker credential helpers

const GIT = "/usr/bin/git";
const HAVE_GIT = spawnSync(GIT, ["--version"]).status === 0;
const PATH_CANARY = "ghp_onerepo_" + randomBytes(16).toString("hex");
const REG_CANARY = "dckr_pat_" + randomBytes(16).toString("hex");
const HELPER_POLICY = `
[[rule]]
name = "git-one-repo"
effect = "allow"
agents = ["claude"]
secrets = ["path-token"]
domains = ["git.test.example"]
paths = ["/org/allowed.git"]
# the helper hands the value to git (docs/cli/credential-helpers.md)
reveal = true

[[rule]]
name = "registry"
effect = "allow"
agents = ["builder"]
secrets = ["registry-token"]
domains = ["registry.test.example"]
`;

/** `cmd args` from `cwd` with exactly `env`, `input` on stdin. */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, input: string, cwd: string): Promise<CliResult> {
  return runProcess(cmd, args, { env: env as Record<string, string>, cwd, input, timeoutMs: 60_000 });
}

describe("credential helpers: a hostile repository's own git config, docker list", { skip: HAVE_GIT ? false : "git is not installed" }, () => {
  test("a hostile repository's .git/config turning credential.useHttpPath off gets no answer: the helper does not hand the one-repository token to a request without its path", async () => {
    const root = tempDirUntilExit("lessor-helpers2-");
    const lessorHome = await cliHome();
    await seedHome(lessorHome, HELPER_POLICY, [{ name: "path-token", value: PATH_CANARY }]);
    const home = join(root, "home");
    mkdirSync(home);
    // The owner's own git config, as docs/cli/credential-helpers.md says, with useHttpPath on so that
    // the rule's paths choose the repository.
    const globalCfg = join(root, "gitconfig");
    writeFileSync(
      globalCfg,
      `[credential "https://git.test.example"]\n\thelper = "!${process.execPath} -- ${BIN} git-credential --agent claude --secret path-token"\n\tuseHttpPath = true\n`,
    );
    const env: NodeJS.ProcessEnv = {
      PATH: "/usr/bin:/bin",
      HOME: home,
      GIT_CONFIG_NOSYSTEM: "1",
      GIT_CONFIG_GLOBAL: globalCfg,
      GIT_TERMINAL_PROMPT: "0",
      LESSOR_HOME: lessorHome,
      NO_COLOR: "1",
    };
    const git = (args: string[], cwd: string, input = "") => run(GIT, args, env, input, cwd);
    const fill = (cwd: string, path: string) => git(["credential", "fill"], cwd, `protocol=https\nhost=git.test.example\npath=${path}\n\n`);

    const clean = join(root, "clean");
    const hostile = join(root, "hostile");
    for (const d of [clean, hostile]) assert.equal((await git(["init", "-q", d], root)).code, 0);
    // What an unpacked archive or another user's checkout can carry in .git/config:
    assert.equal((await git(["config", "--local", "credential.https://git.test.example.useHttpPath", "false"], hostile)).code, 0);

    const allowed = await fill(clean, "org/allowed.git");
    assert.match(allowed.stdout, new RegExp(`password=${PATH_CANARY}`), `the granted repository gets the token: ${allowed.stderr}`);
    const other = await fill(clean, "org/other.git");
    assert.ok(!other.stdout.includes(PATH_CANARY), "another repository gets nothing in a clean repository");

    const steered = await fill(hostile, "org/other.git");
    assert.ok(
      !steered.stdout.includes(PATH_CANARY),
      "inside the hostile repository, git asked for org/other.git (the path dropped by the repository's own useHttpPath = false) and the helper answered with the token the rule keeps for /org/allowed.git",
    );
    assert.match(steered.stderr, /this repository's own git config sets credential\.https:\/\/git\.test\.example\.usehttppath/i, "the helper says why it gave no answer");
    const stillAllowed = await fill(hostile, "org/allowed.git");
    assert.ok(!stillAllowed.stdout.includes(PATH_CANARY), "nor for the allowed repository while the repository's own setting stands");
  });

  test("docker list names each configured registry and its user name only: no secret, no agent, nothing of the vault", async () => {
    const lessorHome = await cliHome();
    await seedHome(lessorHome, HELPER_POLICY, [
      { name: "registry-token", value: REG_CANARY },
      { name: "hidden-secret-name", value: "x" },
    ]);
    writeFileSync(
      join(lessorHome, "lessor.toml"),
      `[docker]\n"registry.test.example" = { secret = "registry-token", username = "robot", agent = "builder" }\n"other.test.example:5000" = { secret = "env:ci/unlisted-secret", username = "porter", agent = "deployer" }\n`,
      { mode: 0o600 },
    );
    const r = await run(join(dirname(BIN), "docker-credential-lessor.cjs"), ["list"], { PATH: `${dirname(process.execPath)}:/usr/bin:/bin`, HOME: lessorHome, LESSOR_HOME: lessorHome }, "", lessorHome);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { "registry.test.example": "robot", "other.test.example:5000": "porter" });
    for (const s of [REG_CANARY, "registry-token", "unlisted-secret", "hidden-secret-name", "builder", "deployer"]) assert.ok(!(r.stdout + r.stderr).includes(s), s);
  });
});
