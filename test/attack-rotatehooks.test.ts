/**
 * Attacks on secret rotation by hooks (`lessor secret rotate --hook`, `[[rotate]]` in lessor.toml,
 * src/vault/rotation-hooks.ts, src/hooks/run-hook.ts). Real parts: the built CLI (dist/bin/lessor.cjs)
 * as child processes, a real vault on a temp home, real hook processes, another local user (uid 65534
 * through setpriv) as the attacker.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import Database from "better-sqlite3";
import { openVault } from "../src/config/open-vault.js";
import { runCli } from "./cli-harness.js";
import { makeHome, startServe } from "./daemon-harness.js";
import { LessorClient } from "../src/client/index.js";
import { createKeyFile, fileKeySource } from "../src/crypto/keys/file.js";
import { commandRotationHooks } from "../src/hooks/run-hook.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { Vault } from "../src/vault/vault.js";
import { PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";
import { asNobody, currentOf, HAVE_SETPRIV, q, reachableBase, replaceAsNobody, rotateToml, seedDb as seedDbWith, startRotate } from "./rotate-harness.js";

const CANARY = {
  old: `CANARY-old-${randomBytes(8).toString("hex")}`,
  new: `CANARY-new-${randomBytes(8).toString("hex")}`,
};

/** A base directory another local user can reach (but not write). */
const base = reachableBase("lessor-atk-rotatehooks-");

/** The attacker's hook: keeps the current value it is handed and makes the secret a value it knows. */
const evilHook = (stolen: string) => `#!/bin/sh\ncat > ${q(stolen)}\necho attacker-chosen-value\n`;

/** Stores CANARY.old as version 1 of global/db in `home`. */
const seedDb = (home: string) => seedDbWith(home, CANARY.old);

describe("rotation hooks: the program that runs", () => {
  test(
    "a [[rotate]] program another local user can change (their file, a writable file or directory, a name found in their PATH directory) is never run: the current value is not handed to it and the secret keeps its version",
    { skip: HAVE_SETPRIV ? false : "needs root and setpriv (another local user)", timeout: 120_000 },
    async () => {
      const cases: { name: string; setup: (dir: string, stolenAt: string) => { command: string[]; env?: Record<string, string> } }[] = [
        {
          name: "a hook in a directory another user can write (they replace it)",
          setup: (dir, stolen) => {
            const shared = join(dir, "shared");
            mkdirSync(shared, { mode: 0o777 });
            chmodSync(shared, 0o777);
            const hook = join(shared, "rotate-db");
            writeFileSync(hook, "#!/bin/sh\necho fine\n", { mode: 0o755 });
            replaceAsNobody(hook, evilHook(stolen), true);
            return { command: [hook] };
          },
        },
        {
          name: "a hook file others may write (mode 0757)",
          setup: (dir, stolen) => {
            const hook = join(dir, "rotate-db");
            writeFileSync(hook, "#!/bin/sh\necho fine\n", { mode: 0o757 });
            chmodSync(hook, 0o757);
            asNobody(`printf '%s' ${q(evilHook(stolen))} > ${q(hook)}`);
            return { command: [hook] };
          },
        },
        {
          name: "a hook file that belongs to another user",
          setup: (dir, stolen) => {
            const theirs = join(dir, "theirs");
            mkdirSync(theirs);
            chmodSync(theirs, 0o777);
            asNobody(`printf '%s' ${q(evilHook(stolen))} > ${q(join(theirs, "x"))} && chmod 755 ${q(join(theirs, "x"))}`);
            // The file is theirs; the directory it is in is root's and closed to them.
            spawnSync("mv", [join(theirs, "x"), join(dir, "rotate-db")]);
            return { command: [join(dir, "rotate-db")] };
          },
        },
        {
          name: "a bare name found in a PATH directory another user can write",
          setup: (dir, stolen) => {
            const bin = join(dir, "bin");
            mkdirSync(bin, { mode: 0o777 });
            chmodSync(bin, 0o777);
            asNobody(`printf '%s' ${q(evilHook(stolen))} > ${q(join(bin, "lessor-rotate-db"))} && chmod 755 ${q(join(bin, "lessor-rotate-db"))}`);
            return { command: ["lessor-rotate-db"], env: { PATH: `${bin}:${process.env.PATH ?? "/usr/bin:/bin"}` } };
          },
        },
      ];
      for (const c of cases) {
        const dir = mkdtempSync(join(base, "case-"));
        chmodSync(dir, 0o755);
        // Somewhere the attacker may write the stolen value to.
        const drop = join(base, "drop");
        mkdirSync(drop, { recursive: true, mode: 0o777 });
        chmodSync(drop, 0o1777);
        const stolenAt = join(drop, `stolen-${randomBytes(4).toString("hex")}`);
        const { command, env } = c.setup(dir, stolenAt);
        const home = await makeHome({ config: rotateToml(command) });
        await seedDb(home);
        const r = await runCli(["secret", "rotate", "db", "--hook"], { home, env, timeoutMs: 60_000 });
        const now = await currentOf(home);
        assert.equal(existsSync(stolenAt), false, `${c.name}: the other user's program ran and was handed the current value (${existsSync(stolenAt) ? readFileSync(stolenAt, "utf8").includes(CANARY.old) : ""})`);
        assert.notEqual(r.code, 0, `${c.name}: rotate succeeded (${r.stdout})`);
        assert.deepEqual(now, { version: 1, value: CANARY.old }, `${c.name}: the secret changed`);
        assert.match(r.stderr, /other users|belongs to uid 65534/, `${c.name}: the message does not say why: ${r.stderr}`);
        assert.ok(!(r.stdout + r.stderr).includes(CANARY.old), `${c.name}: the value in the output`);
      }
      // The same hook, yours and closed to others, runs.
      const dir = mkdtempSync(join(base, "ok-"));
      const hook = join(dir, "rotate-db");
      writeFileSync(hook, `#!/bin/sh\ncat >/dev/null\necho ${CANARY.new}\n`, { mode: 0o755 });
      const home = await makeHome({ config: rotateToml([hook]) });
      await seedDb(home);
      const r = await runCli(["secret", "rotate", "db", "--hook"], { home, timeoutMs: 60_000 });
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(await currentOf(home), { version: 2, value: CANARY.new });
    },
  );
});


describe("rotation hooks: the lessor process stopped mid-run", () => {
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    test(`lessor secret rotate stopped by ${signal} while its hook runs: lessor waits for the hook and stores what it made (never leaves it changing the issuer unwatched), the attempt is audited, and the secret's hook can run again at once`, { timeout: 120_000 }, async () => {
      const dir = mkdtempSync(join(base, "sig-"));
      const hook = join(dir, "rotate-db");
      const issuer = join(dir, "issuer");
      const started = join(dir, "started");
      // The issuer changes 3 s in; then the value is printed.
      writeFileSync(hook, `#!/bin/sh\ntouch ${q(started)}\nsleep 3\necho ${CANARY.new} > ${q(issuer)}\necho ${CANARY.new}\n`, { mode: 0o755 });
      const home = await makeHome({ config: rotateToml([hook], 'timeout = "60s"') });
      await seedDb(home);
      const rot = startRotate(home);
      const { child, exited } = rot;
      try {
        for (let i = 0; i < 400 && !existsSync(started); i++) await new Promise((r) => setTimeout(r, 50));
        assert.ok(existsSync(started), "the hook never started");
        child.kill(signal);
        const end = await exited;
        // Longer than the hook would have needed to change the issuer.
        await new Promise((r) => setTimeout(r, 4500));
        const now = await currentOf(home);
        const issuerHas = existsSync(issuer);
        assert.ok(!(issuerHas && now.value !== CANARY.new), `the hook went on after lessor ${signal === "SIGINT" ? "was interrupted" : "stopped"} (exit ${end.code ?? end.signal}) and changed the issuer; the vault kept version ${now.version}: the new credential is lost`);
        assert.ok(!rot.out().includes(CANARY.old) && !rot.out().includes(CANARY.new), "a value in lessor's output");
        const v = await openVault({ home, env: { LESSOR_HOME: home } });
        try {
          const rows = (await v.admin().auditQuery({ limit: 1000 })).filter((r) => r.secret === "global/db" && r.type === "secret_rotated");
          assert.ok(rows.length >= 1, "the interrupted run is not in the audit trail");
        } finally {
          await v.close();
        }
        // Not held up as "already running" by a run that ended with its process.
        writeFileSync(hook, `#!/bin/sh\necho ${CANARY.new}\n`, { mode: 0o755 });
        const again = await runCli(["secret", "rotate", "db", "--hook"], { home, timeoutMs: 60_000 });
        assert.equal(again.code, 0, again.stderr);
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      }
    });
  }
});

test("a second SIGTERM ends lessor secret rotate at once, and the hook's whole process group dies with it (no hook left changing the issuer with no one to store the value)", { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(base, "sig2-"));
  const hook = join(dir, "rotate-db");
  const issuer = join(dir, "issuer");
  const started = join(dir, "started");
  writeFileSync(hook, `#!/bin/sh\ntouch ${q(started)}\nsleep 3\necho ${CANARY.new} > ${q(issuer)}\necho ${CANARY.new}\n`, { mode: 0o755 });
  const home = await makeHome({ config: rotateToml([hook], 'timeout = "60s"') });
  await seedDb(home);
  const rot = startRotate(home);
  const { child, exited } = rot;
  try {
    for (let i = 0; i < 400 && !existsSync(started); i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok(existsSync(started), "the hook never started");
    child.kill("SIGTERM");
    for (let i = 0; i < 100 && !/waiting for the rotation hook/.test(rot.err()); i++) await new Promise((r) => setTimeout(r, 20));
    child.kill("SIGTERM");
    const end = await exited;
    assert.equal(end.code, 143, `exit ${end.code ?? end.signal}: ${rot.err()}`);
    await new Promise((r) => setTimeout(r, 4500));
    assert.equal(existsSync(issuer), false, "the hook kept running after lessor exited and changed the issuer");
    assert.deepEqual(await currentOf(home), { version: 1, value: CANARY.old });
    assert.ok(!rot.err().includes(CANARY.old) && !rot.err().includes(CANARY.new), "a value on stderr");
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
});

describe("rotation hooks in a daemon that is stopped", () => {
  test("lessor serve stopped (SIGTERM) while an on-demand hook runs longer than shutdown_grace: the daemon waits for the hook and stores what it made, rather than closing the vault under it", { timeout: 120_000 }, async () => {
    const dir = mkdtempSync(join(base, "serve-"));
    const hook = join(dir, "rotate-db");
    const issuer = join(dir, "issuer");
    const started = join(dir, "started");
    writeFileSync(hook, `#!/bin/sh\ntouch ${q(started)}\nsleep 3\necho ${CANARY.new} > ${q(issuer)}\necho ${CANARY.new}\n`, { mode: 0o755 });
    const home = await makeHome({ config: `[server]\nshutdown_grace = "1s"\n\n${rotateToml([hook], 'timeout = "60s"')}` });
    await seedDb(home);
    const d = await startServe(home);
    let stopped = false;
    try {
      const client = await LessorClient.connect({ socketPath: d.socket });
      const call = client.api.rotate_secret_hook({ scope: "global", name: "db" }).then(
        (r) => ({ ok: true as const, r }),
        (e: Error) => ({ ok: false as const, e }),
      );
      for (let i = 0; i < 400 && !existsSync(started); i++) await new Promise((r) => setTimeout(r, 50));
      assert.ok(existsSync(started), "the hook never started");
      const code = await d.stop("SIGTERM");
      stopped = true;
      await call;
      await client.close().catch(() => {});
      await new Promise((r) => setTimeout(r, 4000));
      const now = await currentOf(home);
      assert.ok(!(existsSync(issuer) && now.value !== CANARY.new), `the hook changed the issuer, but the daemon (exit ${code}) closed the vault first: version ${now.version} stays and the new credential is lost`);
      assert.ok(!d.stderr().includes(CANARY.new) && !d.stderr().includes(CANARY.old), "a value in the daemon's log");
    } finally {
      if (!stopped) await d.stop("SIGKILL");
    }
  });
});

describe("rotation hooks and the master key", () => {
  for (const kind of ["sqlite", "postgres"] as const) {
    test(`${kind}: the master key rotated by another instance while a hook runs (stdin = "current"): the hook's value is stored under a key the vault keeps, opens on both instances and after a restart`, { skip: kind === "postgres" ? PG_SKIP : false, timeout: 120_000 }, async () => {
      const dir = mkdtempSync(join(base, "mk-"));
      const keyFile = join(dir, "keys", "master.key");
      createKeyFile(keyFile);
      const started = join(dir, "started");
      const hook = join(dir, "rotate-db");
      writeFileSync(hook, `#!/bin/sh\ncat >/dev/null\ntouch ${q(started)}\nsleep 2\necho ${CANARY.new}\n`, { mode: 0o755 });
      const hooks = commandRotationHooks([{ secret: { scope: "global", name: "db" }, command: [hook], timeoutMs: 30_000, revoke: "all", stdin: "current", everyMs: null }], { cwd: dir, env: { PATH: "/usr/bin:/bin" } });
      const pg = kind === "postgres" ? await testSchema() : null;
      const dbPath = join(dir, "lessor.db");
      const open = async (withHooks: boolean) =>
        Vault.open({
          store: pg !== null ? await openPostgresStore({ url: PG_URL!, schema: pg.schema }) : openSqliteStore(dbPath),
          keys: fileKeySource(keyFile),
          ...(withHooks ? { rotationHooks: hooks } : {}),
        });
      const a = await open(true);
      const b = await open(false);
      try {
        await a.admin().storeSecret({ name: "db", value: CANARY.old });
        const run = a.admin().rotateSecretByHook({ scope: "global", name: "db" });
        for (let i = 0; i < 400 && !existsSync(started); i++) await new Promise((r) => setTimeout(r, 25));
        assert.ok(existsSync(started), "the hook never started");
        await b.admin().rotateMasterKey();
        const r = await run.then(
          (x) => ({ ok: true as const, version: x.version }),
          (e: Error & { code?: string }) => ({ ok: false as const, e }),
        );
        // Either stored (and readable) or refused with the old version kept: never stored under a key the vault dropped.
        for (const v of [a, b]) {
          const got = await v.admin().revealSecret({ scope: "global", name: "db" });
          assert.equal(got.value.expose().toString(), r.ok ? CANARY.new : CANARY.old);
          got.value.wipe();
        }
        await b.close();
        const c = await open(false);
        try {
          const got = await c.admin().revealSecret({ scope: "global", name: "db" });
          assert.equal(got.value.expose().toString(), r.ok ? CANARY.new : CANARY.old, "after a restart");
          if (!r.ok) assert.doesNotMatch(r.e.message, new RegExp(CANARY.new));
        } finally {
          await c.close();
        }
      } finally {
        await a.close();
        await b.close();
        await pg?.drop();
      }
    });
  }
});

test("postgres, two instances: the same secret rotated by its hook on both at once, again and again, runs the hook once per round (the other rate_limited) and loses no version", { skip: PG_SKIP, timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(base, "pg2-"));
  const keyFile = join(dir, "keys", "master.key");
  createKeyFile(keyFile);
  const count = join(dir, "count");
  const hook = join(dir, "rotate-db");
  // Counts its runs; prints a value naming the run.
  writeFileSync(hook, `#!/bin/sh\nn=$(cat ${q(count)} 2>/dev/null || echo 0)\nn=$((n+1))\necho $n > ${q(count)}\nsleep 0.5\necho value-$n\n`, { mode: 0o755 });
  const hooks = commandRotationHooks([{ secret: { scope: "global", name: "db" }, command: [hook], timeoutMs: 30_000, revoke: "all", stdin: "none", everyMs: null }], { cwd: dir, env: { PATH: "/usr/bin:/bin" } });
  const pg = await testSchema();
  const open = async () => Vault.open({ store: await openPostgresStore({ url: PG_URL!, schema: pg.schema }), keys: fileKeySource(keyFile), rotationHooks: hooks });
  const a = await open();
  const b = await open();
  try {
    await a.admin().storeSecret({ name: "db", value: CANARY.old });
    for (let round = 1; round <= 4; round++) {
      const outcomes = await Promise.all([a, b].map((v) => v.admin().rotateSecretByHook({ scope: "global", name: "db" }).then((r) => `ok ${r.version}`, (e: Error & { code?: string }) => `${e.code}`)));
      assert.deepEqual(outcomes.filter((o) => o.startsWith("ok")), [`ok ${round + 1}`], outcomes.join(" | "));
      assert.deepEqual(outcomes.filter((o) => !o.startsWith("ok")), ["rate_limited"], outcomes.join(" | "));
      assert.equal(readFileSync(count, "utf8").trim(), String(round), "the hook ran more than once in a round");
      const got = await b.admin().revealSecret({ scope: "global", name: "db" });
      assert.equal(got.value.expose().toString(), `value-${round}`, "the vault holds what the issuer was last given");
      got.value.wipe();
    }
  } finally {
    await a.close();
    await b.close();
    await pg.drop();
  }
});

test("with the audit trail broken (events cut from its end), a rotation hook is refused before it runs: it never changes the issuer for a value the vault would then refuse to store", { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(base, "audit-"));
  const keyFile = join(dir, "keys", "master.key");
  createKeyFile(keyFile);
  const issuer = join(dir, "issuer");
  const hook = join(dir, "rotate-db");
  writeFileSync(hook, `#!/bin/sh\necho ${CANARY.new} > ${q(issuer)}\necho ${CANARY.new}\n`, { mode: 0o755 });
  const hooks = commandRotationHooks([{ secret: { scope: "global", name: "db" }, command: [hook], timeoutMs: 30_000, revoke: "all", stdin: "none", everyMs: null }], { cwd: dir, env: { PATH: "/usr/bin:/bin" } });
  const dbPath = join(dir, "lessor.db");
  const open = () => Vault.open({ store: openSqliteStore(dbPath), keys: fileKeySource(keyFile), rotationHooks: hooks });
  const v0 = await open();
  for (let i = 0; i < 5; i++) await v0.admin().storeSecret({ name: i === 4 ? "db" : `s${i}`, value: i === 4 ? CANARY.old : `v${i}` });
  await v0.close();
  const db = new Database(dbPath);
  db.pragma("busy_timeout = 5000");
  db.prepare("DELETE FROM audit WHERE seq > 3").run();
  db.close();
  const v = await open();
  try {
    const e = await v.admin().rotateSecretByHook({ scope: "global", name: "db" }).then(
      () => null,
      (err: Error & { code?: string }) => err,
    );
    assert.ok(e !== null, "the rotation succeeded with the trail broken");
    assert.equal(existsSync(issuer), false, `the hook ran (changed the issuer) although the vault then refused to store its value (${e.code}: ${e.message})`);
    assert.equal(e.code, "audit_broken", e.message);
    assert.doesNotMatch(e.message, new RegExp(CANARY.new));
  } finally {
    await v.close();
  }
});
