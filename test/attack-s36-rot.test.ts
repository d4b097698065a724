/**
 * Session 36 red team (rot): rotation hooks run as the owner by code another local user controls,
 * through doors the program check does not look behind. Real parts: the built CLI
 * (dist/bin/lessor.cjs), real homes and SQLite files, real hook processes, another local user
 * (uid 65534 through setpriv).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { commandKeySource } from "../src/crypto/keys/command.js";
import { runCli } from "./cli-harness.js";
import { makeHome, startServe } from "./daemon-harness.js";
import { asNobody, currentOf, HAVE_SETPRIV, q, reachableBase, rotateToml, seedDb as seedDbWith } from "./rotate-harness.js";

const CANARY = {
  old: `CANARY-old-${randomBytes(8).toString("hex")}`,
  new: `CANARY-new-${randomBytes(8).toString("hex")}`,
};
const SKIP = HAVE_SETPRIV ? false : "needs root and setpriv (another local user)";
const base = reachableBase("lessor-atk-s36-rot-");

/** A directory of root's that others may enter, not write. */
function dirOf(prefix: string): string {
  const d = mkdtempSync(join(base, prefix));
  chmodSync(d, 0o755);
  return d;
}

/** A directory everyone may write (a shared tools directory), not sticky. */
function sharedDir(parent: string, name = "shared"): string {
  const d = join(parent, name);
  mkdirSync(d, { mode: 0o777 });
  chmodSync(d, 0o777);
  return d;
}

/** Where the attacker drops what it stole; a fresh path in a sticky 1777 directory. */
function dropPath(): string {
  const drop = join(base, "drop");
  mkdirSync(drop, { recursive: true, mode: 0o1777 });
  chmodSync(drop, 0o1777);
  return join(drop, `stolen-${randomBytes(4).toString("hex")}`);
}

/** As the other user, writes `text` to `path` (in a directory they can write), executable when `exec`. */
function plantAsNobody(path: string, text: string, exec = false): void {
  asNobody(`printf '%s' ${q(text)} > ${q(path)}${exec ? ` && chmod 755 ${q(path)}` : ""}`);
}

/** The attacker's code, run as the owner: keeps stdin (the current value), prints a value it chose. */
const stealSh = (stolen: string) => `#!/bin/sh\ncat >> ${q(stolen)}\necho attacker-chosen-value\n`;

/** Rotates db by its hook and asserts the other user's code never ran and nothing changed. */
async function assertRefused(name: string, command: string[], stolen: string, env?: Record<string, string>): Promise<void> {
  const home = await makeHome({ config: rotateToml(command) });
  await seedDbWith(home, CANARY.old);
  const r = await runCli(["secret", "rotate", "db", "--hook"], { home, env, timeoutMs: 60_000 });
  const ran = existsSync(stolen);
  const cur = await currentOf(home);
  assert.equal(
    ran,
    false,
    `${name}: the other user's code ran as the owner (exit ${r.code}); handed the current value: ${ran ? readFileSync(stolen, "utf8").includes(CANARY.old) : false}; the secret is now version ${cur.version} = ${JSON.stringify(cur.value === CANARY.old ? "old" : cur.value)}`,
  );
  assert.notEqual(r.code, 0, `${name}: rotate succeeded (${r.stdout})`);
  assert.deepEqual(cur, { version: 1, value: CANARY.old }, `${name}: the secret changed`);
}

describe("s36 rot: rotation hooks launched through a program that finds another", () => {
  test(
    'attack: a hook ["/usr/bin/env", NAME, ...] (env run as the command, not a #! line) finds NAME in a PATH directory another local user can write: their NAME must not run as the owner with the current value',
    { skip: SKIP, timeout: 120_000 },
    async () => {
      // The owner's own rotator, in a closed directory, later on PATH; a shared tools directory earlier.
      const dir = dirOf("envcmd-");
      const shared = sharedDir(dir);
      const good = join(dir, "good");
      mkdirSync(good, { mode: 0o755 });
      writeFileSync(join(good, "lessor-s36-rotator"), `#!/bin/sh\ncat >/dev/null\necho ${CANARY.new}\n`, { mode: 0o755 });
      const stolen = dropPath();
      plantAsNobody(join(shared, "lessor-s36-rotator"), stealSh(stolen), true);
      const PATH = `${shared}:${good}:${process.env.PATH ?? "/usr/bin:/bin"}`;
      // The same lookup written as a bare command name is refused today (the program found is checked);
      // through env, and through a #! line naming env, it must be too.
      await assertRefused("[\"/usr/bin/env\", NAME]", ["/usr/bin/env", "lessor-s36-rotator"], stolen, { PATH });
      await assertRefused("[\"env\", \"-S\", NAME]", ["env", "-S", "lessor-s36-rotator --user app"], stolen, { PATH });
    },
  );

  test(
    'attack: a hook ["/usr/bin/timeout", "20", NAME] (a launcher that looks NAME up on PATH, as nice, nohup and flock do) finds it in a PATH directory another local user can write: it must not run',
    { skip: SKIP, timeout: 120_000 },
    async () => {
      const dir = dirOf("launcher-");
      const shared = sharedDir(dir);
      const good = join(dir, "good");
      mkdirSync(good, { mode: 0o755 });
      writeFileSync(join(good, "lessor-s36-rotator"), `#!/bin/sh\ncat >/dev/null\necho ${CANARY.new}\n`, { mode: 0o755 });
      const stolen = dropPath();
      plantAsNobody(join(shared, "lessor-s36-rotator"), stealSh(stolen), true);
      await assertRefused("[\"/usr/bin/timeout\", \"20\", NAME]", ["/usr/bin/timeout", "20", "lessor-s36-rotator"], stolen, { PATH: `${shared}:${good}:${process.env.PATH ?? "/usr/bin:/bin"}` });
    },
  );

  test(
    'attack: the same ["/usr/bin/env", NAME] hook on lessor serve\'s schedule (every = "1s"): the daemon must not run the other user\'s NAME',
    { skip: SKIP, timeout: 120_000 },
    async () => {
      const dir = dirOf("envsched-");
      const shared = sharedDir(dir);
      const good = join(dir, "good");
      mkdirSync(good, { mode: 0o755 });
      writeFileSync(join(good, "lessor-s36-rotator"), `#!/bin/sh\ncat >/dev/null\necho ${CANARY.new}\n`, { mode: 0o755 });
      const stolen = dropPath();
      plantAsNobody(join(shared, "lessor-s36-rotator"), stealSh(stolen), true);
      const home = await makeHome({ config: rotateToml(["/usr/bin/env", "lessor-s36-rotator"], 'stdin = "current"\nevery = "1s"') });
      await seedDbWith(home, CANARY.old);
      const d = await startServe(home, { env: { PATH: `${shared}:${good}:${process.env.PATH ?? "/usr/bin:/bin"}` } });
      try {
        for (let i = 0; i < 40 && !existsSync(stolen); i++) await new Promise((r) => setTimeout(r, 100));
        await new Promise((r) => setTimeout(r, 1500));
      } finally {
        await d.stop();
      }
      const ran = existsSync(stolen);
      const cur = await currentOf(home);
      assert.equal(ran, false, `the daemon ran the other user's code as the owner; handed the current value: ${ran ? readFileSync(stolen, "utf8").includes(CANARY.old) : false}; the secret is now version ${cur.version} = ${JSON.stringify(cur.value === CANARY.old ? "old" : cur.value)}`);
      assert.deepEqual(cur, { version: 1, value: CANARY.old });
      assert.ok(!d.stderr().includes(CANARY.old), "the old value in the daemon's log");
    },
  );

  test(
    'attack: a hook ["/usr/bin/env", "BASH_ENV=FILE", "/bin/bash", SCRIPT] whose FILE (sourced by bash before the script) another local user can change must not run',
    { skip: SKIP, timeout: 120_000 },
    async () => {
      const dir = dirOf("bashenv-");
      const shared = sharedDir(dir);
      const script = join(dirOf("bashenv-mine-"), "rotate.sh");
      writeFileSync(script, `cat >/dev/null\necho ${CANARY.new}\n`, { mode: 0o644 });
      const env = join(shared, "rotate-env.sh");
      writeFileSync(env, "export RETRIES=3\n", { mode: 0o644 });
      const stolen = dropPath();
      // The other user replaces the shared env file (the directory is theirs to write).
      asNobody(`printf '%s' ${q(`cat >> ${q(stolen)}\necho attacker-chosen-value\nexit 0\n`)} > ${q(env)}.new && mv -f ${q(env)}.new ${q(env)}`);
      await assertRefused("env BASH_ENV=FILE bash SCRIPT", ["/usr/bin/env", `BASH_ENV=${env}`, "/bin/bash", script], stolen);
    },
  );

  test(
    'attack: a hook ["/usr/bin/python3", DIR] runs DIR/__main__.py; a DIR another local user can write must not be run',
    { skip: SKIP || !existsSync("/usr/bin/python3") ? "needs root, setpriv and /usr/bin/python3" : false, timeout: 120_000 },
    async () => {
      const dir = dirOf("pydir-");
      const app = sharedDir(dir, "rotator");
      writeFileSync(join(app, "__main__.py"), `import sys\nsys.stdin.read()\nprint(${JSON.stringify(CANARY.new)})\n`, { mode: 0o644 });
      const stolen = dropPath();
      asNobody(
        `printf '%s' ${q(`import sys\nopen(${JSON.stringify(stolen)}, "w").write(sys.stdin.read())\nprint("attacker-chosen-value")\n`)} > ${q(join(app, "__main__.py"))}.new && mv -f ${q(join(app, "__main__.py"))}.new ${q(join(app, "__main__.py"))}`,
      );
      await assertRefused("python3 DIR", ["/usr/bin/python3", app], stolen);
    },
  );

  // Fix checks (rotfix): the hook's and the key command's PATH keep only directories no other user can add to.

  test(
    "fix: a hook of the owner's that looks a helper up itself (a script's `jq`) never finds the other user's helper in a shared PATH directory; the owner's runs",
    { skip: SKIP, timeout: 120_000 },
    async () => {
      const dir = dirOf("selfpath-");
      const shared = sharedDir(dir);
      const good = join(dir, "good");
      mkdirSync(good, { mode: 0o755 });
      writeFileSync(join(good, "lessor-s36-helper"), `#!/bin/sh\ncat >/dev/null\necho ${CANARY.new}\n`, { mode: 0o755 });
      const hook = join(good, "rotate.sh");
      writeFileSync(hook, "#!/bin/sh\nlessor-s36-helper\n", { mode: 0o755 });
      const stolen = dropPath();
      plantAsNobody(join(shared, "lessor-s36-helper"), stealSh(stolen), true);
      const home = await makeHome({ config: rotateToml([hook]) });
      await seedDbWith(home, CANARY.old);
      const r = await runCli(["secret", "rotate", "db", "--hook"], { home, env: { PATH: `${shared}:${good}:${process.env.PATH ?? "/usr/bin:/bin"}` }, timeoutMs: 60_000 });
      assert.equal(existsSync(stolen), false, `the other user's helper ran as the owner (exit ${r.code})`);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(await currentOf(home), { version: 2, value: CANARY.new });
    },
  );

  test(
    "fix: the [keys] command shares the check: [\"/usr/bin/env\", NAME] and [\"/usr/bin/timeout\", \"5\", NAME] finding the other user's NAME are refused, and a key command's own lookups skip the shared directory",
    { skip: SKIP, timeout: 120_000 },
    async () => {
      const dir = dirOf("keycmd-");
      const shared = sharedDir(dir);
      const good = join(dir, "good");
      mkdirSync(good, { mode: 0o755 });
      const key = randomBytes(32).toString("hex");
      writeFileSync(join(good, "lessor-s36-getkey"), `#!/bin/sh\necho ${key}\n`, { mode: 0o755 });
      const stolen = dropPath();
      plantAsNobody(join(shared, "lessor-s36-getkey"), `#!/bin/sh\nenv >> ${q(stolen)}\necho ${"ab".repeat(32)}\n`, true);
      const env = { PATH: `${shared}:${good}:${process.env.PATH ?? "/usr/bin:/bin"}` };
      for (const argv of [["/usr/bin/env", "lessor-s36-getkey"], ["/usr/bin/timeout", "5", "lessor-s36-getkey"]]) {
        await assert.rejects(
          commandKeySource(argv, { env, cwd: dir }).load(),
          (e: Error) => /insecure|belongs to uid 65534/.test(`${(e as { code?: string }).code} ${e.message}`) && e.message.includes("lessor-s36-getkey"),
          JSON.stringify(argv),
        );
        assert.equal(existsSync(stolen), false, `${JSON.stringify(argv)}: the other user's program ran as the owner`);
      }
      // A key command of the owner's that looks its helper up itself gets the owner's.
      const wrapper = join(good, "getkey-wrapper");
      writeFileSync(wrapper, "#!/bin/sh\nexec lessor-s36-getkey\n", { mode: 0o755 });
      const ring = await commandKeySource([wrapper], { env, cwd: dir }).load();
      try {
        assert.equal(existsSync(stolen), false, "the other user's program ran as the owner");
        assert.equal(Buffer.from(ring.current.key).toString("hex"), key);
      } finally {
        ring.wipe();
      }
    },
  );
});
