/**
 * Two `lessor run` at once in one project, a hostile agent in one of them.
 *
 * A run makes, for the git files it seals that did not exist (`.git/config.worktree`, a config
 * include that is missing), an empty file on the host for bwrap to mount an empty read-only file on,
 * and removes it after the run. A second run started meanwhile finds that empty file there and shows
 * it read-only like any existing file. Were the first run to remove it when it ends, the kernel would
 * detach every mount on it in other mount namespaces (Linux 3.18 on), so the second run's agent could
 * create the file and fill it with `core.fsmonitor`, which the owner's next `git status` runs. Fixed:
 * a run leaves its placeholders while another run of the home is alive, and the last to end removes
 * them (src/sandbox/run-holds.ts); a run killed with SIGKILL neither keeps them forever nor unseals one. */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { spawn } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { ATTACKERS_POLICY, HAVE_BWRAP, git, gitInit, gitOk, makeOwner, runAgent } from "./run-harness.js";
import { startTime } from "../src/fs/process-identity.js";

const root = mkdtempSync(join(tmpdir(), "s35-conc-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const KEY = randomBytes(32).toString("hex");
const owner = (name: string) => makeOwner({ root, name, masterKey: KEY, policy: ATTACKERS_POLICY, secrets: [{ name: "granted", value: "gv" }] });

/**
 * Run 1 (any agent) starts and waits; run 2 (the attacker) starts, tells run 1 to end, and then tries
 * for a while to write `target` (relative to the project) with a `core.fsmonitor` appending to `marker`.
 */
async function race(project: string, env: Record<string, string>, target: string, marker: string) {
  const first = runAgent(project, env, "attacker-one", [], `touch one.started; i=0; while [ ! -e two.started ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done; echo one-done`);
  for (let i = 0; i < 150 && !existsSync(join(project, "one.started")); i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(existsSync(join(project, "one.started")), "run 1 did not start");
  const plant = `printf '[core]\\n\\tfsmonitor = "echo ran >> ${marker}; false"\\n' > ${target}`;
  const second = runAgent(
    project,
    env,
    "attacker-two",
    [],
    `(${plant}) 2>/dev/null && echo planted-at-once; touch two.started; i=0; while [ $i -lt 100 ]; do if (${plant}) 2>/dev/null; then echo planted; break; fi; sleep 0.1; i=$((i+1)); done; echo two-done`,
  );
  const [r1, r2] = await Promise.all([first, second]);
  assert.equal(r1.code, 0, r1.stderr);
  assert.equal(r2.code, 0, r2.stderr);
  assert.ok(!/planted-at-once/.test(r2.stdout), `the file was writable from the start: ${r2.stdout}`);
  return r2;
}

describe("two lessor runs in one project: one run's clean-up of its sealed git files", { skip: HAVE_BWRAP ? false : "no bwrap" }, () => {
  test("attack: extensions.worktreeConfig on, no .git/config.worktree; run 1 ends while run 2's agent writes core.fsmonitor there: its empty one stays sealed, the last run removes it", async () => {
    const o = await owner("cw");
    gitInit(o.project);
    gitOk(o.project, "config", "extensions.worktreeConfig", "true");
    writeFileSync(join(o.project, ".gitignore"), "*.started\n");
    const marker = join(o.base, "ran");
    const r2 = await race(o.project, o.env, ".git/config.worktree", marker);
    assert.doesNotMatch(r2.stdout, /planted/, "run 1's end opened the file to run 2's agent");
    assert.ok(!existsSync(join(o.project, ".git/config.worktree")), "the last run to end did not remove the empty file");
    git(o.project, "status", "--porcelain");
    assert.ok(!existsSync(marker), `the agent's core.fsmonitor ran as the owner; run 2 said: ${r2.stdout} ${r2.stderr}`);
  });

  test("attack: a missing include (include.path = ../local.gitconfig); run 1 ends while run 2's agent writes core.fsmonitor there: its empty one stays sealed, the last run removes it", async () => {
    const o = await owner("inc");
    gitInit(o.project);
    gitOk(o.project, "config", "include.path", "../local.gitconfig");
    writeFileSync(join(o.project, ".gitignore"), "*.started\n");
    const marker = join(o.base, "ran");
    const r2 = await race(o.project, o.env, "local.gitconfig", marker);
    assert.doesNotMatch(r2.stdout, /planted/, "run 1's end opened the file to run 2's agent");
    assert.ok(!existsSync(join(o.project, "local.gitconfig")), "the last run to end did not remove the empty file");
    git(o.project, "status", "--porcelain");
    assert.ok(!existsSync(marker), `the agent's core.fsmonitor ran as the owner; run 2 said: ${r2.stdout} ${r2.stderr}`);
  });
});

describe("two lessor runs in one project: the owner's git while the second still runs", { skip: HAVE_BWRAP ? false : "no bwrap" }, () => {
  test(
    "attack: after run 1 ends, the owner's git status in the project runs nothing run 2's agent wrote to .git/config.worktree while run 2 still runs",
    async () => {
      const o = await owner("window");
      gitInit(o.project);
      gitOk(o.project, "config", "extensions.worktreeConfig", "true");
      writeFileSync(join(o.project, ".gitignore"), "*.started\n*.planted\nowner.done\n");
      const marker = join(o.base, "ran");
      const first = runAgent(o.project, o.env, "attacker-one", [], `touch one.started; i=0; while [ ! -e two.started ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done`);
      for (let i = 0; i < 150 && !existsSync(join(o.project, "one.started")); i++) await new Promise((r) => setTimeout(r, 100));
      const plant = `printf '[core]\\n\\tfsmonitor = "echo ran >> ${marker}; false"\\n' > .git/config.worktree`;
      const second = runAgent(o.project, o.env, "attacker-two", [], `touch two.started; i=0; while [ $i -lt 100 ]; do if (${plant}) 2>/dev/null; then touch two.planted; break; fi; sleep 0.1; i=$((i+1)); done; i=0; while [ ! -e owner.done ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done`);
      assert.equal((await first).code, 0);
      for (let i = 0; i < 100 && !existsSync(join(o.project, "two.planted")); i++) await new Promise((r) => setTimeout(r, 100));
      git(o.project, "status", "--porcelain"); // the owner, working in the project meanwhile
      writeFileSync(join(o.project, "owner.done"), "");
      const r2 = await second;
      assert.equal(r2.code, 0, r2.stderr);
      assert.ok(!existsSync(marker), "the owner's git status ran run 2's agent's core.fsmonitor while run 2 was still running");
    },
  );
});

describe("two lessor runs in one project: a run killed with SIGKILL", { skip: HAVE_BWRAP ? false : "no bwrap" }, () => {
  test("attack: run 1's lessor is killed with SIGKILL while run 2 runs; run 2's agent still cannot write .git/config.worktree", async () => {
    const o = await owner("kill");
    gitInit(o.project);
    gitOk(o.project, "config", "extensions.worktreeConfig", "true");
    writeFileSync(join(o.project, ".gitignore"), "*.started\n");
    const holds = join(o.lessorHome, "run-holds");
    const first = runAgent(o.project, o.env, "attacker-one", [], "touch one.started; sleep 30");
    for (let i = 0; i < 150 && !existsSync(join(o.project, "one.started")); i++) await new Promise((r) => setTimeout(r, 100));
    const one = readdirSync(holds).map((n) => Number(n.split(".")[0]));
    assert.equal(one.length, 1, "run 1 is not registered");
    const marker = join(o.base, "ran");
    const plant = `printf '[core]\\n\\tfsmonitor = "echo ran >> ${marker}; false"\\n' > .git/config.worktree`;
    const second = runAgent(o.project, o.env, "attacker-two", [], `touch two.started; i=0; while [ $i -lt 40 ]; do if (${plant}) 2>/dev/null; then echo planted; break; fi; sleep 0.1; i=$((i+1)); done; echo two-done`);
    for (let i = 0; i < 150 && !existsSync(join(o.project, "two.started")); i++) await new Promise((r) => setTimeout(r, 100));
    process.kill(one[0]!, "SIGKILL");
    const r1 = await first;
    assert.equal(r1.signal ?? "SIGKILL", "SIGKILL");
    git(o.project, "status", "--porcelain"); // the owner, meanwhile
    const r2 = await second;
    assert.equal(r2.code, 0, r2.stderr);
    assert.doesNotMatch(r2.stdout, /planted/, "run 1's death opened the file to run 2's agent");
    git(o.project, "status", "--porcelain");
    assert.ok(!existsSync(marker), "the agent's core.fsmonitor ran as the owner");
    assert.deepEqual(readdirSync(holds).filter((n) => n !== "pending"), [], "a registration is left behind");
  });

  test("a registration left by a run killed with SIGKILL does not keep the next run's placeholders forever", async () => {
    const o = await owner("stale");
    gitInit(o.project);
    gitOk(o.project, "config", "extensions.worktreeConfig", "true");
    // A dead lessor run's registration (a process that is gone, named with its start time).
    const dead = spawn("sleep", ["30"], { stdio: "ignore" });
    const start = startTime(dead.pid!);
    dead.kill("SIGKILL");
    await new Promise((r) => dead.once("exit", r));
    const holds = join(o.lessorHome, "run-holds");
    mkdirSync(holds, { recursive: true, mode: 0o700 });
    writeFileSync(join(holds, `${dead.pid}.${start ?? "unknown"}.1`), "");
    const r = await runAgent(o.project, o.env, "attacker-one", [], "test -e .git/config.worktree && echo sealed");
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /sealed/);
    assert.ok(!existsSync(join(o.project, ".git/config.worktree")), "the run left its empty .git/config.worktree for a dead run");
    assert.deepEqual(readdirSync(holds), [], "the dead run's registration is left");
  });
});

describe("run holds (src/sandbox/run-holds.ts), in one process", () => {
  test("a run that ends beside another leaves its placeholders; the last removes them, empty ones only", async () => {
    const { holdRun } = await import("../src/sandbox/run-holds.js");
    const base = mkdtempSync(join(root, "holds-"));
    const home = join(base, "home");
    mkdirSync(home);
    const [f1, f2, d1] = [join(base, "a.config"), join(base, "b.config"), join(base, "worktrees")];
    writeFileSync(f1, "");
    writeFileSync(f2, "");
    mkdirSync(d1);
    const a = holdRun(home);
    const b = holdRun(home);
    assert.deepEqual(a.end([f1, f2], [d1]), []);
    assert.ok(existsSync(f1) && existsSync(f2) && existsSync(d1), "removed while another run may have them mounted");
    writeFileSync(f2, "[core]\n"); // not a placeholder any more: never removed
    assert.deepEqual(b.end([], []), []);
    assert.ok(!existsSync(f1) && !existsSync(d1), "the last run did not remove the placeholders left for it");
    assert.ok(existsSync(f2));
    assert.deepEqual(readdirSync(join(home, "run-holds")), []);
  });
});
