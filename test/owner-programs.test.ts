/**
 * src/cli/run/owner-programs.ts: the programs lessor runs as the owner (the key command, the
 * rotation hooks), found the way they are run, and `lessor run` refusing a sandbox in which the
 * agent could change one: the file, a directory or link on the way, or a PATH directory searched
 * before it.
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { DEFAULT_CONFIG, type Config } from "../src/config/config.js";
import { configuredPrograms, lookupPlaces, refuseWritablePrograms } from "../src/cli/run/owner-programs.js";
import { planLayout, type Layout } from "../src/sandbox/layout.js";

const dir = realpathSync(mkdtempSync(join(tmpdir(), "lessor-owner-programs-")));
after(() => rmSync(dir, { recursive: true, force: true }));
const home = join(dir, "home");
const lessorHome = join(home, ".lessor");
const writable = join(home, ".local");
const safe = join(dir, "safe");
for (const d of [join(home, "p"), join(writable, "bin"), lessorHome, safe]) mkdirSync(d, { recursive: true });
const program = (p: string): string => {
  writeFileSync(p, "#!/bin/sh\n", { mode: 0o700 });
  return p;
};

function layout(): Layout {
  return planLayout({ home, project: join(home, "p"), projectWritable: true, read: [], write: [writable], protect: [{ path: lessorHome, what: "the lessor home" }] });
}

function config(keys: string[] | null, hooks: string[][] = []): Config {
  return {
    ...DEFAULT_CONFIG,
    keys: { ...DEFAULT_CONFIG.keys, command: keys },
    rotate: hooks.map((command, i) => ({ secret: { scope: "global", name: `s${i}` }, command, timeoutMs: 1000, revoke: "none", stdin: "none", everyMs: null }) as unknown as Config["rotate"][number]),
  };
}

const refuse = (c: Config, env: NodeJS.ProcessEnv = { PATH: "/usr/bin:/bin" }): void => refuseWritablePrograms(layout(), configuredPrograms(c, lessorHome, env));

describe("programs lessor runs as the owner, in a lessor run sandbox", () => {
  test("a key command or hook outside the writable paths passes; inside one, the run is refused, naming the file, the key and the path", () => {
    const ok = program(join(safe, "key"));
    refuse(config([ok], [[ok]]));
    const bad = program(join(writable, "bin", "key"));
    assert.throws(() => refuse(config([bad])), (e: Error) => e.message.includes(`the [keys] command in lessor.toml runs ${bad}`) && e.message.includes(`inside ${writable} (the [run] write path)`) && /narrow \[run\] write/.test(e.message));
    assert.throws(() => refuse(config([ok], [[ok], [bad, "--x"]])), /the \[\[rotate\]\] command of global\/s1 in lessor\.toml runs .*\/\.local\/bin\/key/);
    // In the project (writable by default), the advice is the project's.
    const inProject = program(join(home, "p", "hook"));
    assert.throws(() => refuse(config(null, [[inProject]])), /project directory.*\[run\] project = "read-only"/);
  });

  test("a missing program in a writable path is refused too: the agent could make it", () => {
    assert.throws(() => refuse(config([join(writable, "nowhere", "key")])), /\[keys\] command/);
  });

  test("a symbolic link on the way, or a real file, in a writable path is refused", () => {
    const real = program(join(writable, "real-key"));
    const link = join(safe, "key-link");
    symlinkSync(real, link);
    assert.throws(() => refuse(config([link])), (e: Error) => e.message.includes(`${real}, on the way to it,`));
    mkdirSync(join(writable, "d"));
    symlinkSync(safe, join(writable, "d", "to-safe"));
    program(join(safe, "key2"));
    assert.throws(() => refuse(config(null, [[join(writable, "d", "to-safe", "key2")]])), /\[\[rotate\]\] command/);
    // A link outside the writable paths to a file outside them passes.
    const outside = join(safe, "key3-link");
    symlinkSync(join(safe, "key2"), outside);
    refuse(config([outside]));
  });

  test("a bare name looked up on PATH: a writable directory searched before it (or holding it) is refused", () => {
    program(join(safe, "kc"));
    refuse(config(["kc"]), { PATH: `${safe}:${join(writable, "bin")}` });
    assert.throws(() => refuse(config(["kc"]), { PATH: `${join(writable, "bin")}:${safe}` }), /"kc" \(the \[keys\] command in lessor\.toml\) is looked up on PATH, and .*\.local\/bin, searched for it before the directory that holds it/);
    // Not found anywhere: any writable PATH directory could take it.
    assert.throws(() => refuse(config(null, [["nothere"]]), { PATH: `/usr/bin:${join(writable, "bin")}` }), /"nothere" .*looked up on PATH/);
    // A hook's relative PATH entry is the hook's working directory (the home).
    assert.deepEqual(lookupPlaces("h", `bin:${safe}`, lessorHome, false), [join(lessorHome, "bin", "h"), join(safe, "h")]);
    // The key command skips relative PATH entries (src/crypto/keys/command.ts never searches them).
    assert.deepEqual(lookupPlaces("h", `bin:${safe}`, lessorHome, true), [join(safe, "h")]);
  });
});
