/**
 * Attacks on secret rotation by hooks (`lessor secret rotate --hook`, `[[rotate]]` in lessor.toml,
 * src/vault/rotation-hooks.ts, src/hooks/run-hook.ts). Real parts: the built CLI (dist/bin/lessor.cjs)
 * as child processes, a real vault on a temp home, real hook processes, another local user (uid 65534
 * through setpriv) as the attacker.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { openVault } from "../src/config/open-vault.js";
import { BIN, runCli } from "./cli-harness.js";
import { makeHome } from "./daemon-harness.js";

const NOBODY = 65534;
const CANARY = {
  old: `CANARY-old-${randomBytes(8).toString("hex")}`,
  new: `CANARY-new-${randomBytes(8).toString("hex")}`,
};

/** A base directory another local user can reach (but not write). */
const base = mkdtempSync(join(tmpdir(), "lessor-atk-rotatehooks-"));
chmodSync(base, 0o755);
process.on("exit", () => rmSync(base, { recursive: true, force: true }));

const HAVE_SETPRIV = spawnSync("setpriv", ["--version"]).status === 0 && process.getuid?.() === 0;

/** Runs `script` with /bin/sh as uid 65534 (another local user). */
function asNobody(script: string): void {
  const r = spawnSync("setpriv", [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", "/bin/sh", "-c", script], { encoding: "utf8" });
  assert.equal(r.status, 0, `as uid ${NOBODY}: ${script}\n${r.stderr}`);
}

const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** The attacker's hook: keeps the current value it is handed and makes the secret a value it knows. */
const evilHook = (stolen: string) => `#!/bin/sh\ncat > ${q(stolen)}\necho attacker-chosen-value\n`;

/** Stores CANARY.old as version 1 of global/db in `home`. */
async function seedDb(home: string): Promise<void> {
  const v = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    await v.admin().storeSecret({ name: "db", value: CANARY.old });
  } finally {
    await v.close();
  }
}

async function currentOf(home: string): Promise<{ version: number; value: string }> {
  const v = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    const meta = await v.admin().getSecretMetadata({ scope: "global", name: "db" });
    const got = await v.admin().revealSecret({ scope: "global", name: "db" });
    return { version: meta.currentVersion, value: got.value.expose().toString() };
  } finally {
    await v.close();
  }
}

const rotateToml = (command: string[], extra = 'stdin = "current"') => `[[rotate]]\nsecret = "db"\ncommand = ${JSON.stringify(command)}\n${extra}\n`;

describe("rotation hooks: the program that runs", () => {
  test(
    "a [[rotate]] program another local user can change (their file, a writable file or directory, a name found in their PATH directory) is never run: the current value is not handed to it and the secret keeps its version",
    { skip: HAVE_SETPRIV ? false : "needs root and setpriv (another local user)", timeout: 120_000 },
    async () => {
      const cases: { name: string; setup: (dir: string, stolen: string) => { command: string[]; env?: Record<string, string> } }[] = [
        {
          name: "a hook in a directory another user can write (they replace it)",
          setup: (dir, stolen) => {
            const shared = join(dir, "shared");
            mkdirSync(shared, { mode: 0o777 });
            chmodSync(shared, 0o777);
            const hook = join(shared, "rotate-db");
            writeFileSync(hook, "#!/bin/sh\necho fine\n", { mode: 0o755 });
            asNobody(`printf '%s' ${q(evilHook(stolen))} > ${q(hook)}.new && chmod 755 ${q(hook)}.new && mv -f ${q(hook)}.new ${q(hook)}`);
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
        const stolen = join(base, `stolen-${randomBytes(4).toString("hex")}`);
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
        void stolen;
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

void spawn;
void BIN;
