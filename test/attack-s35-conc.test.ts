/**
 * Two `lessor run` at once in one project, a hostile agent in one of them.
 *
 * A run makes, for the git files it seals that did not exist (`.git/config.worktree`, a config
 * include that is missing), an empty file on the host for bwrap to mount an empty read-only file on,
 * and removes it after the run. A second run started meanwhile finds that empty file there and shows
 * it read-only like any existing file. When the first run ends and removes it, the kernel detaches
 * every mount on it in other mount namespaces (Linux 3.18 on), so the second run's agent can now
 * create the file and fill it with `core.fsmonitor`, which the owner's next `git status` runs.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { ATTACKERS_POLICY, HAVE_BWRAP, git, gitInit, gitOk, makeOwner, runAgent } from "./run-harness.js";

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
  test("attack: extensions.worktreeConfig on, no .git/config.worktree; run 1 ends and removes its empty one while run 2's agent writes core.fsmonitor there", async () => {
    const o = await owner("cw");
    gitInit(o.project);
    gitOk(o.project, "config", "extensions.worktreeConfig", "true");
    writeFileSync(join(o.project, ".gitignore"), "*.started\n");
    const marker = join(o.base, "ran");
    const r2 = await race(o.project, o.env, ".git/config.worktree", marker);
    assert.match(r2.stdout, /planted/, "run 1's end did not open the file to run 2's agent (nothing to check)");
    assert.match(r2.stderr, /config\.worktree, a git config file that was missing or empty .* moved it to/);
    git(o.project, "status", "--porcelain");
    assert.ok(!existsSync(marker), `the agent's core.fsmonitor ran as the owner; run 2 said: ${r2.stdout} ${r2.stderr}`);
  });

  test("attack: a missing include (include.path = ../local.gitconfig); run 1 ends and removes its empty one while run 2's agent writes core.fsmonitor there", async () => {
    const o = await owner("inc");
    gitInit(o.project);
    gitOk(o.project, "config", "include.path", "../local.gitconfig");
    writeFileSync(join(o.project, ".gitignore"), "*.started\n");
    const marker = join(o.base, "ran");
    const r2 = await race(o.project, o.env, "local.gitconfig", marker);
    assert.match(r2.stdout, /planted/, "run 1's end did not open the file to run 2's agent (nothing to check)");
    assert.match(r2.stderr, /local\.gitconfig, a git config file that was missing or empty .* moved it to/);
    git(o.project, "status", "--porcelain");
    assert.ok(!existsSync(marker), `the agent's core.fsmonitor ran as the owner; run 2 said: ${r2.stdout} ${r2.stderr}`);
  });
});

describe("two lessor runs in one project: the owner's git while the second still runs", { skip: HAVE_BWRAP ? false : "no bwrap" }, () => {
  test(
    "not fixed: after run 1 ends, the owner's git status in the project runs what run 2's agent wrote to .git/config.worktree while run 2 still runs",
    { todo: "run 1's removal of its empty .git/config.worktree detaches run 2's read-only mount on it; the after-run check only repairs it when run 2 ends" },
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
