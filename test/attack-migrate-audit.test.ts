/**
 * An attack pass on `lessor migrate` (docs/cli/migrate.md, src/config/migrate.ts, src/store/copy.ts,
 * src/store/postgres/fresh-schema.ts), `lessor audit verify|recover` (docs/audit.md, src/audit/verify.ts)
 * and `lessor init` on an existing home, by a newcomer following the docs literally and by another
 * local user / database role. Real SQLite files, the real PostgreSQL server of LESSOR_TEST_PG_URL, real
 * `lessor serve` and CLI child processes. A canary value is stored in every vault and must never show.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import Database from "better-sqlite3";
import pg from "pg";
import { initHome, openVault } from "../src/config/open-vault.js";
import { migrateHome } from "../src/config/migrate.js";
import { isVaultError } from "../src/base/errors.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { agent, grant, tempDirUntilExit } from "./helpers.js";
import { admin as pgAdmin, asRole, PG_SKIP, PG_URL, urlAs } from "./pg-helpers.js";
import { runCli } from "./cli-harness.js";
import { startServe } from "./daemon-harness.js";

const CANARY = `CANARY-atkmigr-${randomBytes(10).toString("hex")}`;
const DOM = { domain: "api.example.com" };
const POLICY = grant("g", ["claude"], ["canary", "s*"], ["api.example.com"], 'max_uses = 5\nttl = "1h"');

async function newHome(): Promise<string> {
  const home = join(tempDirUntilExit("lessor-atkmigr-"), "home");
  await initHome({ home, env: { LESSOR_HOME: home } });
  writeFileSync(join(home, "policy.toml"), POLICY, { mode: 0o600 });
  return home;
}

/** The canary, a live lease used once, a revoked lease, an agent token. */
async function seed(home: string): Promise<{ live: string; revoked: string }> {
  const vault = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    const adm = vault.admin();
    const claude = vault.session(agent("claude"));
    await adm.storeSecret({ name: "canary", value: CANARY });
    const live = await claude.requestLease({ secret: "canary" });
    (await claude.accessSecret(live.id, DOM)).value.wipe();
    const revoked = await claude.requestLease({ secret: "canary" });
    await claude.revokeLease(revoked.id);
    await adm.createToken({ name: "ci", role: "agent", agent: "claude" });
    return { live: live.id, revoked: revoked.id };
  } finally {
    await vault.close();
  }
}

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});


/** A login role for lessor, another one (eve) and a schema name, all dropped when the file ends. */
async function rolesAndSchemaName(): Promise<{ lessorRole: string; eve: string; sch: string }> {
  const tag = randomBytes(4).toString("hex");
  const lessorRole = `lessor_am_l_${tag}`;
  const eve = `lessor_am_e_${tag}`;
  const sch = `lessor_am_s_${tag}`;
  await pgAdmin(`CREATE ROLE ${lessorRole} LOGIN`);
  await pgAdmin(`CREATE ROLE ${eve} LOGIN`);
  cleanups.push(async () => {
    await pgAdmin(`DROP SCHEMA IF EXISTS ${sch} CASCADE`);
    for (const r of [lessorRole, eve]) {
      await pgAdmin(`DROP OWNED BY ${r} CASCADE`).catch(() => {});
      await pgAdmin(`DROP ROLE IF EXISTS ${r}`);
    }
  });
  return { lessorRole, eve, sch };
}

// =====================================================================================================

describe("PostgreSQL target: who else can reach the tables migrate creates", { skip: PG_SKIP }, () => {
  test(
    "a target schema whose default privileges would grant the tables migrate creates to another role is refused, naming that role and the statement that removes the grant; the role reaches no row",
    { timeout: 60_000 },
    async () => {
      const { lessorRole, eve, sch } = await rolesAndSchemaName();
      // docs/team.md: "give each its own role, owning its schema, and REVOKE ALL ON SCHEMA … FROM PUBLIC".
      await pgAdmin(`CREATE SCHEMA ${sch} AUTHORIZATION ${lessorRole}`);
      await pgAdmin(`REVOKE ALL ON SCHEMA ${sch} FROM PUBLIC`);
      // Left over from before (a reporting or backup role the DBA set up for whatever the role creates):
      // the schema is the role's own, empty, and no other role may CREATE in it, so every check passes.
      await pgAdmin(`GRANT USAGE ON SCHEMA ${sch} TO ${eve}`);
      await pgAdmin(`ALTER DEFAULT PRIVILEGES FOR ROLE ${lessorRole} IN SCHEMA ${sch} GRANT SELECT, UPDATE ON TABLES TO ${eve}`);

      const home = await newHome();
      const s = await seed(home);
      let refusal = "";
      try {
        const report = await migrateHome({ home, env: { LESSOR_HOME: home }, target: { kind: "postgres", url: urlAs(lessorRole, sch) } });
        assert.ok(report.counts.tokens >= 1);
      } catch (e) {
        assert.ok(isVaultError(e, "invalid_request"), String(e));
        refusal = e.message;
      }
      assert.match(refusal, new RegExp(`grant the tables it creates in schema ${sch} .* to ${eve}\\b`));
      assert.ok(refusal.includes(`ALTER DEFAULT PRIVILEGES FOR ROLE ${lessorRole} IN SCHEMA ${sch} REVOKE ALL ON TABLES FROM ${eve};`), refusal);
      assert.equal(Number((await pgAdmin(`SELECT count(*) AS n FROM pg_class WHERE relnamespace = '${sch}'::regnamespace`)).rows[0].n), 0, "migrate left tables behind");

      let read = 0;
      let unrevoked = 0;
      try {
        read = Number((await asRole(eve, `SELECT count(*) AS n FROM ${sch}.tokens`)).rows[0].n) + Number((await asRole(eve, `SELECT count(*) AS n FROM ${sch}.secret_versions`)).rows[0].n);
        unrevoked = (await asRole(eve, `UPDATE ${sch}.leases SET revoked_at = NULL, revoke_reason = NULL, done = false WHERE id = '${s.revoked}'`)).rowCount ?? 0;
      } catch {
        // eve was refused: the promise holds
      }
      assert.equal(
        read + unrevoked,
        0,
        `lessor migrate reported success into schema ${sch}, yet role ${eve} (not the owner, no CREATE) read ${read} token/version rows and un-revoked ${unrevoked} lease(s) there: ` +
          `docs/cli/migrate.md promises the target schema is one no other role can reach ("its owner could read the vault's rows or change them"), but pg_default_acl grants on the tables lessor creates are not checked`,
      );
    },
  );

  test(
    "role-wide default privileges are refused too: by migrate before it creates anything, and by the first open of a fresh schema (the daemon's), which rolls its tables back; after the REVOKE it names, the open succeeds",
    { timeout: 60_000 },
    async () => {
      const { lessorRole, eve, sch } = await rolesAndSchemaName();
      await pgAdmin(`CREATE SCHEMA ${sch} AUTHORIZATION ${lessorRole}`);
      await pgAdmin(`REVOKE ALL ON SCHEMA ${sch} FROM PUBLIC`);
      await pgAdmin(`GRANT USAGE ON SCHEMA ${sch} TO ${eve}`);
      // In every schema (pg_default_acl.defaclnamespace = 0), for sequences as well as tables.
      await pgAdmin(`ALTER DEFAULT PRIVILEGES FOR ROLE ${lessorRole} GRANT SELECT ON TABLES TO ${eve}`);
      await pgAdmin(`ALTER DEFAULT PRIVILEGES FOR ROLE ${lessorRole} GRANT USAGE ON SEQUENCES TO ${eve}`);
      const url = urlAs(lessorRole, sch);
      const tables = async () => Number((await pgAdmin(`SELECT count(*) AS n FROM pg_class WHERE relnamespace = '${sch}'::regnamespace`)).rows[0].n);

      const home = await newHome();
      await seed(home);
      await assert.rejects(migrateHome({ home, env: { LESSOR_HOME: home }, target: { kind: "postgres", url } }), (e) => {
        assert.ok(isVaultError(e, "invalid_request"), String(e));
        for (const what of ["TABLES", "SEQUENCES"]) assert.ok(e.message.includes(`ALTER DEFAULT PRIVILEGES FOR ROLE ${lessorRole} REVOKE ALL ON ${what} FROM ${eve};`), e.message);
        return true;
      });
      assert.equal(await tables(), 0);

      // The daemon's first open of the schema (no migrate pre-check): the tables are made, seen to be
      // granted to eve, and rolled back.
      await assert.rejects(openPostgresStore({ url, feed: { listen: false } }), (e) => {
        assert.ok(isVaultError(e, "insecure_permissions"), String(e));
        assert.match(e.message, new RegExp(`schema ${sch} would be reachable by ${eve}\\b.*ALTER DEFAULT PRIVILEGES FOR ROLE ${lessorRole} REVOKE ALL ON TABLES FROM ${eve};`, "s"));
        return true;
      });
      assert.equal(await tables(), 0, "the refused first open left tables behind");

      await asRole(lessorRole, `ALTER DEFAULT PRIVILEGES FOR ROLE ${lessorRole} REVOKE ALL ON TABLES FROM ${eve}`);
      await asRole(lessorRole, `ALTER DEFAULT PRIVILEGES FOR ROLE ${lessorRole} REVOKE ALL ON SEQUENCES FROM ${eve}`);
      const store = await openPostgresStore({ url, feed: { listen: false } });
      await store.close();
      assert.ok((await tables()) > 0);
      await assert.rejects(asRole(eve, `SELECT count(*) FROM ${sch}.tokens`), /permission denied/);
    },
  );

  test(
    "another role's own table in the schema (a shared public), granted to PUBLIC, does not stop the first open: only the vault's tables must be private",
    { timeout: 60_000 },
    async () => {
      const { lessorRole, eve, sch } = await rolesAndSchemaName();
      await pgAdmin(`CREATE SCHEMA ${sch} AUTHORIZATION ${lessorRole}`);
      await pgAdmin(`GRANT USAGE ON SCHEMA ${sch} TO ${eve}`);
      // Another application's table beside where the vault goes, owned by its own role and open to all.
      await pgAdmin(`CREATE TABLE ${sch}.other_app (x int)`);
      await pgAdmin(`ALTER TABLE ${sch}.other_app OWNER TO ${eve}`);
      await pgAdmin(`GRANT SELECT ON ${sch}.other_app TO PUBLIC`);
      const store = await openPostgresStore({ url: urlAs(lessorRole, sch), feed: { listen: false } });
      await store.close();
      await assert.rejects(asRole(eve, `SELECT count(*) FROM ${sch}.tokens`), /permission denied/);
    },
  );
});

// =====================================================================================================

describe("audit verify through a running daemon after the tail was cut and an older checkpoint put back", () => {
  test(
    "lessor audit verify through a daemon that refuses writes because the trail was cut exits 1 and names the cut",
    { timeout: 60_000 },
    async () => {
      const home = await newHome();
      await seed(home);
      const db = join(home, "lessor.db");
      const d = await startServe(home);
      try {
        const env = { LESSOR_SOCKET: d.socket };
        // The attacker (a database writer, no key) keeps the checkpoint row as it is now…
        const old = (() => {
          const c = new Database(db, { readonly: true });
          try {
            return c.prepare("SELECT seq, hash, key_id, mac FROM audit_checkpoint").get() as { seq: number; hash: Buffer; key_id: string; mac: Buffer };
          } finally {
            c.close();
          }
        })();
        // …the daemon records more events (two secrets stored: the events an attacker wants gone)…
        for (const n of ["s1", "s2"]) {
          const r = await runCli(["secret", "set", n], { home, env, input: "value\n" });
          assert.equal(r.code, 0, r.stderr);
        }
        // …then the last events are deleted and the old checkpoint row put back.
        const c = new Database(db);
        c.pragma("busy_timeout = 5000");
        c.transaction(() => {
          c.prepare("DELETE FROM audit WHERE seq > ?").run(old.seq);
          c.prepare("UPDATE audit_checkpoint SET seq = ?, hash = ?, key_id = ?, mac = ?").run(old.seq, old.hash, old.key_id, old.mac);
        })();
        c.close();

        const w = await runCli(["secret", "set", "s3"], { home, env, input: "value\n" });
        assert.notEqual(w.code, 0, "the daemon should refuse to build on the cut trail");
        assert.match(w.stderr, /audit trail is broken.*lessor audit verify/s);

        const v = await runCli(["audit", "verify"], { home, env });
        assert.ok(!v.stdout.includes(CANARY) && !v.stderr.includes(CANARY));
        assert.equal(
          v.code,
          1,
          `the running daemon refuses every audited write because the trail's last events were removed (${w.stderr.trim()}), and tells the admin to check with lessor audit verify; ` +
            `but lessor audit verify through that same daemon exits ${v.code}: ${v.stdout.trim()}. docs/cli/admin.md: "exit 1 when [the trail] does not [verify]"; docs/audit.md: cuts are caught under a running process`,
        );
        assert.match(v.stdout, /does NOT verify: the trail ends at event \d+ but this process wrote up to event \d+/);
      } finally {
        await d.stop();
      }
    },
  );
});

// =====================================================================================================

const isRoot = process.getuid?.() === 0;
const hasSetpriv = spawnSync("setpriv", ["--version"]).error === undefined;
const ROOT_SKIP: false | string = isRoot && hasSetpriv ? false : "needs root and setpriv to act as another local user (nobody): skipped";
const REPO = new URL("..", import.meta.url).pathname;

/**
 * Preload for the migrating process: when SQLite's store is about to open the target (its first
 * openSync of the path, after migrate created it), the process is held for a moment, as a scheduler
 * may hold it at any point. This only widens a window that exists anyway (an attacker watching the
 * shared directory with inotify needs microseconds); it changes nothing of what lessor does.
 */
const SLOW_OPEN = `
const fs = require("fs");
const orig = fs.openSync;
let done = false;
fs.openSync = function (p, flags, mode) {
  if (!done && String(p) === process.env.ATK_TARGET && flags === "a") {
    done = true;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500);
  }
  return orig.apply(this, arguments);
};
require("module").syncBuiltinESMExports();
`;

/** Another local user: waits for TARGET, plants TARGET-wal and TARGET-shm (0666), then reads what lands in the -wal through its own descriptor. */
const PLANTER = `
const fs = require("fs");
const t = process.argv[1];
const seen = { planted: false, bytes: 0, auditRows: false, tokenName: false };
let fd = -1;
const tick = () => {
  if (fd < 0 && fs.existsSync(t)) {
    try {
      fd = fs.openSync(t + "-wal", "wx+", 0o666); fs.fchmodSync(fd, 0o666);
      const s = fs.openSync(t + "-shm", "wx+", 0o666); fs.fchmodSync(s, 0o666);
      seen.planted = true;
    } catch (e) { seen.err = e.code; }
  }
  if (fd >= 0) {
    const size = fs.fstatSync(fd).size;
    if (size > 0) {
      const b = Buffer.alloc(size); fs.readSync(fd, b, 0, size, 0);
      seen.bytes = Math.max(seen.bytes, size);
      if (b.includes("secret_stored")) seen.auditRows = true;
      if (b.includes("atk-token-name")) seen.tokenName = true;
    }
  }
};
const iv = setInterval(tick, 2);
process.stdin.on("data", () => {});
process.stdin.on("end", () => { clearInterval(iv); tick(); process.stdout.write(JSON.stringify(seen)); process.exit(0); });
`;

describe("SQLite target in a shared (sticky, world-writable) directory", () => {
  test(
    "a target in a directory other users can write (even sticky) is refused before anything is created, so no other user can plant its -wal and -shm and read the copy",
    { skip: ROOT_SKIP, timeout: 60_000 },
    async () => {
      const home = await newHome();
      await seed(home);
      {
        const v = await openVault({ home, env: { LESSOR_HOME: home } });
        await v.admin().createToken({ name: "atk-token-name", role: "agent", agent: "claude" });
        await v.close();
      }
      // docs: "The directories on the way must not let another user swap the file (as for the home)":
      // a sticky directory such as /tmp is accepted (no one else can rename or delete our entries).
      const top = tempDirUntilExit("lessor-atkmigr-shared-");
      chmodSync(top, 0o755);
      const shared = join(top, "shared");
      mkdirSync(shared);
      chmodSync(shared, 0o1777);
      const target = join(shared, "copy.db");
      const scripts = tempDirUntilExit("lessor-atkmigr-scripts-");
      chmodSync(scripts, 0o755);
      writeFileSync(join(scripts, "slow.cjs"), SLOW_OPEN, { mode: 0o644 });
      writeFileSync(join(scripts, "planter.cjs"), PLANTER, { mode: 0o644 });

      const planter = spawn("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, "-e", PLANTER, target], { stdio: ["pipe", "pipe", "pipe"] });
      let pout = "";
      planter.stdout!.on("data", (d: Buffer) => (pout += d.toString()));
      const pdone = new Promise<void>((r) => planter.on("close", () => r()));

      const mig = spawn(process.execPath, ["--require", join(scripts, "slow.cjs"), "--import", "tsx", join(REPO, "src/cli/main.ts"), "migrate", "--to", `sqlite:${target}`], {
        cwd: REPO,
        env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", LESSOR_HOME: home, ATK_TARGET: target },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let out = "";
      let err = "";
      mig.stdout!.on("data", (d: Buffer) => (out += d.toString()));
      mig.stderr!.on("data", (d: Buffer) => (err += d.toString()));
      const code = await new Promise<number | null>((r) => mig.on("close", (c) => r(c)));
      planter.stdin!.end();
      await pdone;
      const seen = JSON.parse(pout || "{}") as { planted?: boolean; bytes?: number; auditRows?: boolean; tokenName?: boolean; err?: string };
      for (const s of [out, err]) assert.ok(!s.includes(CANARY), "migrate printed the canary");
      // Refused up front: nothing is created, so there is nothing to plant beside.
      assert.notEqual(code, 0, `migrate into the shared directory ${shared} exited 0: ${out}`);
      assert.match(err, /can be written by other users \(mode 1777\).*-wal or -shm.*choose a directory that only you can write/s);
      assert.equal(existsSync(target), false, "migrate created the target in the shared directory");
      const leaked = code === 0 && (seen.auditRows === true || seen.tokenName === true);
      assert.ok(
        !leaked,
        `lessor migrate exited ${code} (${out.trim().split("\n")[0]}) into ${target}, yet uid 65534, who planted ${target}-wal and -shm (mode 0666) after migrate's check, read ${seen.bytes} bytes of the copy's WAL through its own descriptor ` +
          `(audit rows: ${seen.auditRows}, token names: ${seen.tokenName}). docs/cli/migrate.md: migrate refuses "a leftover -wal, -shm or -journal beside it" and "never writes into what it did not create"; ` +
          `src/config/migrate.ts createSqliteTarget checks them only before creating the file, and SQLite then opens whatever is at those paths`,
      );
    },
  );
});
