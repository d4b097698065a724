/**
 * Attacks on the programs lessor runs as the owner beyond their first word: the script a rotation
 * hook or the key command hands to an interpreter (`["bash", "/x/rotate.sh"]`), the interpreter a
 * script's `#!` line names (directly, or through `/usr/bin/env NAME` on PATH), and what is left when
 * a hook's run is cut (kill -9 of the CLI) or its value cannot be stored. Real parts: the built CLI
 * (dist/bin/lessor.cjs), real homes, real hook processes, another local user (uid 65534 through setpriv).
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { openVault } from "../src/config/open-vault.js";
import { commandKeySource } from "../src/crypto/keys/command.js";
import { VaultError } from "../src/base/errors.js";
import { BIN, runCli, runCliWithEnv } from "./cli-harness.js";
import { HAVE_BWRAP } from "./run-harness.js";
import { DEFAULT_CONFIG, type Config } from "../src/config/config.js";
import { configuredPrograms, refuseWritablePrograms } from "../src/cli/run/owner-programs.js";
import { planLayout } from "../src/sandbox/layout.js";
import { makeHome } from "./daemon-harness.js";
import { asNobody, currentOf, HAVE_SETPRIV, q, reachableBase, rotateInBackground, replaceAsNobody, rotateToml, seedDb as seedDbWith, startRotate, waitFor, whileWriteLocked } from "./rotate-harness.js";

const CANARY = {
  old: `CANARY-old-${randomBytes(8).toString("hex")}`,
  new: `CANARY-new-${randomBytes(8).toString("hex")}`,
};
const SKIP = HAVE_SETPRIV ? false : "needs root and setpriv (another local user)";

/** A base directory another local user can reach (but not write). */
const base = reachableBase("lessor-atk-hooktrust-");

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

/**
 * A file `name` of yours holding `text` (mode `mode`) in a shared directory of a fresh dirOf(prefix),
 * which the other user then replaces with `theirs(stolen)` (executable when `exec`); `stolen` is a
 * fresh dropPath().
 */
function replacedInSharedDir(prefix: string, name: string, text: string, mode: number, theirs: (stolen: string) => string, exec = false): { path: string; stolen: string } {
  const path = join(sharedDir(dirOf(prefix)), name);
  writeFileSync(path, text, { mode });
  const stolen = dropPath();
  replaceAsNobody(path, theirs(stolen), exec);
  return { path, stolen };
}

/** Where the attacker drops what it stole; a fresh path in a sticky 1777 directory. */
function dropPath(): string {
  const drop = join(base, "drop");
  mkdirSync(drop, { recursive: true, mode: 0o1777 });
  chmodSync(drop, 0o1777);
  return join(drop, `stolen-${randomBytes(4).toString("hex")}`);
}

/** What the attacker's code does as the owner: keeps stdin (the current value), prints a value it knows. */
const stealBody = (stolen: string) => `cat > ${q(stolen)}\necho attacker-chosen-value\n`;

const seedDb = (home: string) => seedDbWith(home, CANARY.old);

/** Rotates db by its hook in a fresh home and checks the attacker's code never ran and nothing changed. */
async function assertRefused(name: string, command: string[], stolen: string, message: RegExp, env?: Record<string, string>): Promise<void> {
  const home = await makeHome({ config: rotateToml(command) });
  await seedDb(home);
  const r = await runCli(["secret", "rotate", "db", "--hook"], { home, env, timeoutMs: 60_000 });
  assert.equal(existsSync(stolen), false, `${name}: the other user's code ran as the owner and was handed the current value (${existsSync(stolen) ? readFileSync(stolen, "utf8").includes(CANARY.old) : ""})`);
  assert.notEqual(r.code, 0, `${name}: rotate succeeded (${r.stdout})`);
  assert.deepEqual(await currentOf(home), { version: 1, value: CANARY.old }, `${name}: the secret changed`);
  assert.match(r.stderr, message, `${name}: the message does not say why: ${r.stderr}`);
  assert.ok(!(r.stdout + r.stderr).includes(CANARY.old), `${name}: the value in the output`);
}

async function assertRotates(name: string, command: string[], env?: Record<string, string>): Promise<void> {
  const home = await makeHome({ config: rotateToml(command) });
  await seedDb(home);
  const r = await runCli(["secret", "rotate", "db", "--hook"], { home, env, timeoutMs: 60_000 });
  assert.equal(r.code, 0, `${name}: ${r.stderr}`);
  assert.deepEqual(await currentOf(home), { version: 2, value: CANARY.new }, name);
}

describe("rotation hooks: the script an interpreter is handed", () => {
  test(
    'a hook ["/bin/sh", SCRIPT] (or a --opt=SCRIPT argument) whose script another local user can change (a writable file, a shared directory, their file) is never run: the current value is not handed to their code',
    { skip: SKIP, timeout: 180_000 },
    async () => {
      // The script sits in a directory everyone may write: the attacker replaces it.
      {
        const { path: script, stolen } = replacedInSharedDir("argdir-", "rotate.sh", "cat >/dev/null\necho fine\n", 0o644, stealBody);
        await assertRefused("script in a shared directory", ["/bin/sh", script], stolen, /can be written by other users|belongs to uid 65534/);
      }
      // The script file itself is writable by others (0646).
      {
        const dir = dirOf("argmode-");
        const script = join(dir, "rotate.sh");
        writeFileSync(script, "cat >/dev/null\necho fine\n");
        chmodSync(script, 0o646);
        const stolen = dropPath();
        asNobody(`printf '%s' ${q(stealBody(stolen))} > ${q(script)}`);
        await assertRefused("script file writable by others", ["/bin/bash", script], stolen, /can be changed by other users \(mode 0646\)/);
      }
      // A relative script name, found from the lessor home... through a symlink into a shared directory.
      {
        const dir = dirOf("argown-");
        const theirs = sharedDir(dir, "theirs");
        const stolen = dropPath();
        asNobody(`printf '%s' ${q(stealBody(stolen))} > ${q(join(theirs, "r.sh"))}`);
        await assertRefused("a --file=SCRIPT argument of another user's", ["/bin/sh", "-c", '. "${0#--file=}"', `--file=${join(theirs, "r.sh")}`], stolen, /belongs to uid 65534|can be written by other users/);
      }
      // Yours, closed to others: runs, and so do ordinary arguments (flags, a missing path, /dev/null).
      {
        const dir = dirOf("argok-");
        const script = join(dir, "rotate.sh");
        writeFileSync(script, `cat >/dev/null\necho ${CANARY.new}\n`, { mode: 0o644 });
        await assertRotates("your own script", ["/bin/sh", script, "--user", "app", "/dev/null", "/no/such/file", "--out=/tmp/x"]);
      }
    },
  );

  test("the key command [\"/bin/sh\", SCRIPT] whose script another local user can change is refused (insecure_permissions) and never run; your own script runs", { skip: SKIP, timeout: 60_000 }, async () => {
    const dir = dirOf("keyarg-");
    const shared = sharedDir(dir);
    const script = join(shared, "key.sh");
    const key = randomBytes(32).toString("hex");
    writeFileSync(script, `echo ${key}\n`, { mode: 0o644 });
    const stolen = dropPath();
    replaceAsNobody(script, `echo ran > ${q(stolen)}\necho ${"ab".repeat(32)}\n`);
    await assert.rejects(
      commandKeySource(["/bin/sh", script]).load(),
      (e: unknown) => e instanceof VaultError && e.code === "insecure_permissions" && /belongs to uid 65534|can be written by other users/.test(e.message) && e.message.includes(shared) && e.message.includes("is given"),
    );
    assert.equal(existsSync(stolen), false, "the other user's key script ran as the owner");
    const mine = join(dirOf("keyok-"), "key.sh");
    writeFileSync(mine, `echo ${key}\n`, { mode: 0o644 });
    const ring = await commandKeySource(["/bin/sh", mine]).load();
    assert.equal(Buffer.from(ring.current.key).toString("hex"), key);
  });
});

describe("rotation hooks: the interpreter of a #! line", () => {
  test(
    "a hook script of yours whose #! line names an interpreter another local user can change (their file, a shared directory, `env NAME` found in or after a PATH directory they can write) is never run",
    { skip: SKIP, timeout: 180_000 },
    async () => {
      // #!/shared/interp: the interpreter file sits in a directory everyone may write.
      {
        const { path: interp, stolen } = replacedInSharedDir("sbdir-", "interp", "#!/bin/sh\nexec /bin/sh \"$@\"\n", 0o755, (st) => `#!/bin/sh\n${stealBody(st)}`, true);
        const hook = join(dirOf("sbhook-"), "rotate");
        writeFileSync(hook, `#!${interp}\necho fine\n`, { mode: 0o755 });
        await assertRefused("#! interpreter in a shared directory", [hook], stolen, /interpreter ".*" named in the #! line/);
      }
      // #!/usr/bin/env lessor-test-interp, the name found on PATH in a directory everyone may write.
      {
        const dir = dirOf("sbenv-");
        const shared = sharedDir(dir);
        const stolen = dropPath();
        asNobody(`printf '%s' ${q(`#!/bin/sh\n${stealBody(stolen)}`)} > ${q(join(shared, "lessor-test-interp"))} && chmod 755 ${q(join(shared, "lessor-test-interp"))}`);
        const hook = join(dirOf("sbhook-"), "rotate");
        writeFileSync(hook, "#!/usr/bin/env lessor-test-interp\necho fine\n", { mode: 0o755 });
        await assertRefused("#!/usr/bin/env NAME found in a shared PATH directory", [hook], stolen, /lessor-test-interp/, { PATH: `${shared}:${process.env.PATH ?? "/usr/bin:/bin"}` });
      }
      // #!/usr/bin/env -S NAME: NAME is yours in /usr/local-like dir, but a directory searched before it is shared
      // (the other user could put their NAME there between the check and the run, or before the next one).
      {
        const dir = dirOf("sbsearch-");
        const shared = sharedDir(dir);
        const good = join(dir, "good");
        mkdirSync(good, { mode: 0o755 });
        writeFileSync(join(good, "lessor-test-interp"), `#!/bin/sh\nexec /bin/sh "$@"\n`, { mode: 0o755 });
        const stolen = dropPath();
        const hook = join(dirOf("sbhook-"), "rotate");
        writeFileSync(hook, "#!/usr/bin/env -S lessor-test-interp -e\necho fine\n", { mode: 0o755 });
        await assertRefused("a shared PATH directory searched before env's interpreter", [hook], stolen, /searched on PATH for "lessor-test-interp"/, { PATH: `${shared}:${good}:${process.env.PATH ?? "/usr/bin:/bin"}` });
      }
      // Yours all the way (an interpreter of yours found through env, in a closed directory): runs.
      {
        const good = join(dirOf("sbok-"), "bin");
        mkdirSync(good, { mode: 0o755 });
        writeFileSync(join(good, "lessor-test-interp"), `#!/bin/sh\nexec /bin/sh "$@"\n`, { mode: 0o755 });
        const hook = join(dirOf("sbhook-"), "rotate");
        writeFileSync(hook, `#!/usr/bin/env lessor-test-interp\ncat >/dev/null\necho ${CANARY.new}\n`, { mode: 0o755 });
        await assertRotates("an env interpreter of yours", [hook], { PATH: `${good}:${process.env.PATH ?? "/usr/bin:/bin"}` });
      }
    },
  );
});

describe("rotation hooks: a run cut off", () => {
  test(
    "lessor secret rotate killed with SIGKILL while its hook runs: the next rotate of that secret is not held up as already running; it says the run was cut off and the issuer may hold a credential the vault does not, audits it as hook_interrupted, and the run after it goes ahead",
    { timeout: 180_000 },
    async () => {
      const dir = dirOf("kill9-");
      const hook = join(dir, "rotate-db");
      const issuer = join(dir, "issuer");
      const started = join(dir, "started");
      // The issuer changes 2 s in; then the value is printed (to no one: lessor is gone).
      writeFileSync(hook, `#!/bin/sh
echo $$ > ${q(started)}
sleep 2
echo ${CANARY.new} > ${q(issuer)}
echo ${CANARY.new}
`, { mode: 0o755 });
      const home = await makeHome({ config: rotateToml([hook], 'timeout = "120s"') });
      await seedDb(home);
      const rot = startRotate(home);
      const { child, exited } = rot;
      let hookPid = 0;
      try {
        for (let i = 0; i < 600 && !existsSync(started); i++) await new Promise((r) => setTimeout(r, 50));
        assert.ok(existsSync(started), "the hook never started");
        hookPid = Number(readFileSync(started, "utf8").trim());
        child.kill("SIGKILL");
        await exited;
        // The orphaned hook changes the issuer; what it prints is lost. (While it still runs, the claim
        // holds: test/rotation-hooks.test.ts "a process SIGKILLed mid-hook…".) It ends.
        for (let i = 0; i < 200 && !existsSync(issuer); i++) await new Promise((r) => setTimeout(r, 50));
        const alive = (): boolean => {
          try {
            process.kill(hookPid, 0);
            return !/^\S+ \(.*\) [ZX] /s.test(readFileSync(`/proc/${hookPid}/stat`, "utf8"));
          } catch {
            return false;
          }
        };
        for (let i = 0; i < 400 && alive(); i++) await new Promise((r) => setTimeout(r, 50));
        assert.ok(!alive(), "the orphaned hook did not end");
        assert.deepEqual(await currentOf(home), { version: 1, value: CANARY.old });
        // The next rotate, at once (well inside the claim's 120 s + 60 s).
        writeFileSync(hook, `#!/bin/sh
cat >/dev/null
echo ${CANARY.new}-2
`, { mode: 0o755 });
        const next = await runCli(["secret", "rotate", "db", "--hook"], { home, timeoutMs: 60_000 });
        assert.notEqual(next.code, 0, `the next rotate ran the hook again as if nothing had happened: ${next.stdout}`);
        assert.doesNotMatch(next.stderr, /already running/, "held up by the dead run's claim");
        assert.match(next.stderr, /cut off/, next.stderr);
        assert.match(next.stderr, /issuer may now hold a value the vault does not have/, next.stderr);
        const v = await openVault({ home, env: { LESSOR_HOME: home } });
        try {
          const rows = (await v.admin().auditQuery({ limit: 1000 })).filter((r) => r.secret === "global/db" && r.type === "secret_rotated");
          const cut = rows.find((r) => r.reason === "hook_interrupted");
          assert.ok(cut, `the cut run is not in the audit trail: ${JSON.stringify(rows.map((r) => r.reason))}`);
          assert.equal(cut.outcome, "error");
          assert.equal((JSON.parse(cut.detail ?? "{}") as Record<string, unknown>)["failure"], "process_ended");
          assert.ok(!JSON.stringify(rows).includes(CANARY.old) && !JSON.stringify(rows).includes(CANARY.new), "a value in the audit trail");
        } finally {
          await v.close();
        }
        // Told once: the run after it goes ahead.
        const after = await runCli(["secret", "rotate", "db", "--hook"], { home, timeoutMs: 60_000 });
        assert.equal(after.code, 0, after.stderr);
        assert.deepEqual(await currentOf(home), { version: 2, value: `${CANARY.new}-2` });
        assert.ok(!(rot.out() + next.stderr + after.stderr).includes(CANARY.old), "a value in lessor's output");
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
        if (hookPid > 0) {
          try {
            process.kill(-hookPid, "SIGKILL");
          } catch {
            // ended
          }
        }
      }
    },
  );
});

describe("rotation hooks: the value made but not stored", () => {
  /** Starts `lessor secret rotate db --hook` in `home`; resolves its result. */
  /** A home whose db hook marks its start in `started`, waits for `go`, and prints CANARY.new; rotated in the background. */
  async function gatedRotate(prefix: string): Promise<{ home: string; started: string; go: string; run: Promise<{ code: number | null; out: string }> }> {
    const dir = dirOf(prefix);
    const hook = join(dir, "rotate-db");
    const started = join(dir, "started");
    const go = join(dir, "go");
    writeFileSync(hook, `#!/bin/sh\ntouch ${q(started)}\nwhile [ ! -e ${q(go)} ]; do sleep 0.1; done\necho ${CANARY.new}\n`, { mode: 0o755 });
    const home = await makeHome({ config: rotateToml([hook]) });
    await seedDb(home);
    const run = rotateInBackground(home);
    await waitFor(started);
    return { home, started, go, run };
  }

  test(
    "the vault database locked by another process (past SQLite's 5 s busy wait) when the hook's value is to be stored: the store is tried again and the value is kept, not lost with the issuer already changed",
    { timeout: 180_000 },
    async () => {
      const { home, go, run } = await gatedRotate("locked-");
      // Another process holds the write lock for 9 s: longer than one attempt's busy wait.
      await whileWriteLocked(join(home, "lessor.db"), go, () => new Promise((r) => setTimeout(r, 9000)));
      const r = await run;
      assert.equal(r.code, 0, `the value the hook made was not stored: ${r.out}`);
      assert.deepEqual(await currentOf(home), { version: 2, value: CANARY.new });
      assert.ok(!r.out.includes(CANARY.old) && !r.out.includes(CANARY.new), "a value in lessor's output");
    },
  );

  test(
    "the database stays locked past every retry: rotate says loudly that the issuer may hold a credential the vault does not, and the next hook run of the secret reports it (hook_interrupted) rather than running over it",
    { timeout: 240_000 },
    async () => {
      const { home, go, run } = await gatedRotate("locked2-");
      const r = await whileWriteLocked(join(home, "lessor.db"), go, () => run, "ROLLBACK");
      assert.notEqual(r.code, 0, r.out);
      assert.match(r.out, /made a new value, but the vault could not store it/, r.out);
      assert.match(r.out, /issuer may now hold a credential the vault does not have/, r.out);
      assert.ok(!r.out.includes(CANARY.old) && !r.out.includes(CANARY.new), "a value in lessor's output");
      assert.deepEqual(await currentOf(home), { version: 1, value: CANARY.old });
      const next = await runCli(["secret", "rotate", "db", "--hook"], { home, timeoutMs: 60_000 });
      assert.notEqual(next.code, 0, `the next run went ahead as if nothing had happened: ${next.stdout}`);
      assert.match(next.stderr, /cut off/, next.stderr);
      const v = await openVault({ home, env: { LESSOR_HOME: home } });
      try {
        const rows = (await v.admin().auditQuery({ limit: 1000 })).filter((x) => x.secret === "global/db" && x.reason === "hook_interrupted");
        assert.equal(rows.length, 1, "the lost value is not in the audit trail");
      } finally {
        await v.close();
      }
    },
  );
});

describe("lessor run: what a hook or the key command hands to an interpreter, in the sandbox's reach", () => {
  test("a [[rotate]] or [keys] command whose script, #! interpreter or env-searched PATH directory is in a [run] write path refuses the run (the agent, running as you, could rewrite it for your next rotation or key load); the same command with all of them outside passes", () => {
    const root = mkdtempSync(join(base, "run-"));
    const home = join(root, "home");
    const lessorHome = join(home, ".lessor");
    const writable = join(home, ".local");
    const safe = join(root, "safe");
    for (const d of [join(home, "p"), join(writable, "bin"), lessorHome, safe]) mkdirSync(d, { recursive: true });
    const layout = planLayout({ home, project: join(home, "p"), projectWritable: true, read: [], write: [writable], protect: [{ path: lessorHome, what: "the lessor home" }] });
    const config = (keys: string[] | null, hooks: string[][]): Config => ({
      ...DEFAULT_CONFIG,
      keys: { ...DEFAULT_CONFIG.keys, command: keys },
      rotate: hooks.map((command, i) => ({ secret: { scope: "global", name: `s${i}` }, command, timeoutMs: 1000, revoke: "none", stdin: "none", everyMs: null })),
    });
    const refuse = (c: Config, env: NodeJS.ProcessEnv = { PATH: "/usr/bin:/bin" }) => refuseWritablePrograms(layout, configuredPrograms(c, lessorHome, env));
    const script = (p: string, text = "echo x\n") => {
      writeFileSync(p, text, { mode: 0o700 });
      return p;
    };
    // A script handed to /bin/sh, in the write path.
    const agentScript = script(join(writable, "bin", "rotate.sh"));
    assert.throws(() => refuse(config(null, [["/bin/sh", agentScript]])), (e: Error) => e instanceof VaultError && e.code === "invalid_request" && e.message.includes(agentScript) && /\[\[rotate\]\] command of global\/s0/.test(e.message));
    assert.throws(() => refuse(config(["/bin/sh", agentScript], [])), (e: Error) => e instanceof VaultError && e.message.includes(agentScript) && /\[keys\] command/.test(e.message));
    // A hook of yours outside, whose #! interpreter is in the write path.
    const interp = script(join(writable, "bin", "interp"), "#!/bin/sh\nexec /bin/sh \"$@\"\n");
    const hook = script(join(safe, "hook"), `#!${interp}\necho x\n`);
    assert.throws(() => refuse(config(null, [[hook]])), (e: Error) => e instanceof VaultError && e.message.includes(interp));
    // #!/usr/bin/env NAME with the write path searched on PATH before NAME's directory.
    const envHook = script(join(safe, "env-hook"), "#!/usr/bin/env lessor-test-interp\necho x\n");
    script(join(safe, "lessor-test-interp"), "#!/bin/sh\n");
    assert.throws(() => refuse(config(null, [[envHook]]), { PATH: `${join(writable, "bin")}:${safe}:/usr/bin:/bin` }), (e: Error) => e instanceof VaultError && /searched for it/.test(e.message) && e.message.includes(join(writable, "bin")));
    // All outside: passes.
    const mine = script(join(safe, "rotate.sh"));
    refuse(config(["/bin/sh", mine], [["/bin/sh", mine], [envHook]]), { PATH: `${safe}:/usr/bin:/bin` });
  });
});

describe("the key command's working directory", () => {
  test(
    "a key command run by an interpreter that looks in its working directory for code (python3 -c \"import json…\") does not run another user's json.py from the directory lessor was started in: it runs in the lessor home",
    { skip: HAVE_SETPRIV && existsSync("/usr/bin/python3") ? false : "needs root, setpriv and /usr/bin/python3", timeout: 120_000 },
    async () => {
      const home = await makeHome();
      // The key, moved out of the home into a file of the owner's that the command reads.
      const safe = dirOf("keysafe-");
      const keyJson = join(safe, "keys.json");
      writeFileSync(keyJson, readFileSync(join(home, "master.key")), { mode: 0o600 });
      rmSync(join(home, "master.key"));
      const code = `import json; print(json.load(open(${JSON.stringify(keyJson)}))["keys"][0])`;
      writeFileSync(join(home, "lessor.toml"), `[keys]\ncommand = ${JSON.stringify(["/usr/bin/python3", "-c", code])}\n`, { mode: 0o600 });
      // The owner works in a directory everyone may write (a shared checkout, /tmp/x); the other user plants json.py there.
      const shared = sharedDir(dirOf("cwd-"));
      const stolen = dropPath();
      asNobody(`printf '%s' ${q(`open(${JSON.stringify(stolen)}, "w").write("ran")\nraise SystemExit(1)\n`)} > ${q(join(shared, "json.py"))}`);
      const r = await runProcessIn(shared, ["status"], home);
      assert.equal(existsSync(stolen), false, "the other user's json.py ran as the owner, in place of the key command's json");
      assert.equal(r.code, 0, r.out);
    },
  );
});

/** `lessor ARGS` started from `cwd`. */
function runProcessIn(cwd: string, args: string[], home: string): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, ["--", BIN, ...args], {
    cwd,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", LESSOR_HOME: home },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
  return new Promise((r) => child.on("close", (code) => r({ code, out })));
}

describe("lessor run: the bwrap it runs as the owner", () => {
  test(
    "a bwrap another local user can change (theirs, in a PATH directory everyone may write) is never run: lessor run refuses (insecure_permissions) before starting it; the system bwrap still runs",
    { skip: HAVE_SETPRIV && HAVE_BWRAP ? false : "needs root, setpriv and a usable bwrap", timeout: 120_000 },
    async () => {
      const dir = dirOf("bwrap-");
      const shared = sharedDir(dir);
      const marker = dropPath();
      const real = spawnSync("sh", ["-c", "command -v bwrap"], { encoding: "utf8" }).stdout.trim();
      asNobody(`printf '%s' ${q(`#!/bin/sh\necho ran > ${q(marker)}\nexec ${real} "$@"\n`)} > ${q(join(shared, "bwrap"))} && chmod 755 ${q(join(shared, "bwrap"))}`);
      const home = await makeHome();
      const project = dirOf("proj-");
      const env = { PATH: `${shared}:/usr/bin:/bin`, HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", LESSOR_HOME: home };
      const r = await runCliWithEnv(["run", "--agent", "a1", "--network", "none", "--", "/bin/true"], { cwd: project, env, timeoutMs: 60_000 });
      assert.equal(existsSync(marker), false, "the other user's bwrap ran as the owner, outside any sandbox");
      assert.notEqual(r.code, 0, r.stderr);
      assert.match(r.stderr, /the bwrap found on PATH .*belongs to uid 65534/, r.stderr);
      const ok = await runCliWithEnv(["run", "--agent", "a1", "--network", "none", "--", "/bin/true"], { cwd: project, env: { ...env, PATH: "/usr/bin:/bin" }, timeoutMs: 60_000 });
      assert.equal(ok.code, 0, ok.stderr);
    },
  );
});
