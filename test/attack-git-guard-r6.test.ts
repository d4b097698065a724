/**
 * The git guard (src/sandbox/git-guard.ts) against what real git reads or runs, from a review of the
 * include fixes: a hooks path git parses and a hand-written parser did not (a trailing comment, a key
 * on its section's line), a hooks path or a hook that is a symbolic link into the project, the
 * bare-repository-plus-worktrees layout (`.git` is `gitdir: ./.bare`), and config given in the
 * environment (GIT_CONFIG_COUNT). Unit level (planGit/planGlobalGit with a `writable` predicate, each
 * case first shown with real git), then end to end with a real lessor run under bwrap.
 */
import { chmodSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { nestedRepositories, planGit, planGlobalGit, type GitPlan } from "../src/sandbox/git-guard.js";
import { planLayout } from "../src/sandbox/layout.js";

const G = (cwd: string, env: Record<string, string>, ...args: string[]) =>
  spawnSync("git", args, { cwd, env: { PATH: "/usr/bin:/bin", GIT_CONFIG_NOSYSTEM: "1", ...env }, encoding: "utf8" });

function setup(name: string) {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), `rev5-${name}-`)));
  const home = join(dir, "home");
  const project = join(home, "project");
  mkdirSync(project, { recursive: true });
  const writable = (p: string) => p === project || p.startsWith(project + "/");
  const env = { HOME: home, GIT_CONFIG_NOSYSTEM: "1" };
  return { dir, home, project, writable, env, done: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Whether the plan keeps the agent from writing `p` (read-only or sealed itself, or below a read-only/sealed dir). */
const guarded = (plan: GitPlan, p: string) =>
  [...plan.readOnly, ...plan.sealed, ...plan.sealedFiles].some((r) => p === r || p.startsWith(r + "/"));

/** Commits in `repo` with git's hooks: returns whether the pre-commit hook at `hookFile` ran. */
function hookRuns(repo: string, env: Record<string, string>, hookFile: string, marker: string): boolean {
  writeFileSync(hookFile, `#!/bin/sh\necho ran > ${marker}\n`);
  chmodSync(hookFile, 0o755);
  G(repo, env, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "--allow-empty", "-m", "x");
  return existsSync(marker);
}

describe("the git guard against what git reads", () => {
  test("core.hooksPath written the way git allows but coreValue does not parse (a trailing ; comment): the real hooks directory stays writable", () => {
    const s = setup("hp-comment");
    try {
      G(s.project, s.env, "init", "-q");
      mkdirSync(join(s.project, ".githooks"));
      writeFileSync(join(s.project, ".git", "config"), "[core]\n\trepositoryformatversion = 0\n\tbare = false\n\thooksPath = .githooks ; shared hooks\n");
      assert.ok(hookRuns(s.project, s.env, join(s.project, ".githooks", "pre-commit"), join(s.dir, "m1")), "git runs .githooks/pre-commit");
      const plan = planGit(s.project, s.writable, s.home);
      assert.ok(guarded(plan, join(s.project, ".githooks")), `.githooks is writable; plan: ${JSON.stringify({ ro: plan.readOnly, sealed: plan.sealed })}`);
    } finally {
      s.done();
    }
  });

  test("core.hooksPath on the section header's line ([core] hooksPath = …): not seen by coreValue", () => {
    const s = setup("hp-sameline");
    try {
      G(s.project, s.env, "init", "-q");
      mkdirSync(join(s.project, ".githooks"));
      writeFileSync(join(s.project, ".git", "config"), "[core] hooksPath = .githooks\n[core]\n\trepositoryformatversion = 0\n");
      assert.ok(hookRuns(s.project, s.env, join(s.project, ".githooks", "pre-commit"), join(s.dir, "m2")), "git runs .githooks/pre-commit");
      const plan = planGit(s.project, s.writable, s.home);
      assert.ok(guarded(plan, join(s.project, ".githooks")), `.githooks is writable; plan: ${JSON.stringify({ ro: plan.readOnly, sealed: plan.sealed })}`);
    } finally {
      s.done();
    }
  });

  test("an existing core.hooksPath reached through a symbolic link in the project: the agent can repoint the link", () => {
    const s = setup("hp-link");
    try {
      G(s.project, s.env, "init", "-q");
      mkdirSync(join(s.project, "tools", "hooks"), { recursive: true });
      symlinkSync("tools/hooks", join(s.project, ".githooks"));
      G(s.project, s.env, "config", "core.hooksPath", ".githooks");
      // The target alone read-only would not do: the link is an ordinary entry of the (writable)
      // project, `ln -sfn evil .githooks` inside the sandbox, and git follows the new link.
      let refused = false;
      let plan: GitPlan = { pinned: [], readOnly: [], locked: [], sealed: [], sealedFiles: [], guards: [], walked: 0 };
      try {
        plan = planGit(s.project, s.writable, s.home);
      } catch (e) {
        refused = /runs through the symbolic link \S*\.githooks in a directory the sandboxed agent can write/.test((e as Error).message);
      }
      mkdirSync(join(s.project, "evil"));
      rmSync(join(s.project, ".githooks"));
      symlinkSync("evil", join(s.project, ".githooks"));
      assert.ok(hookRuns(s.project, s.env, join(s.project, "evil", "pre-commit"), join(s.dir, "m3")), "git follows the repointed link");
      assert.ok(refused || guarded(plan, join(s.project, ".githooks")), `neither refused nor the link guarded; plan.readOnly: ${JSON.stringify(plan.readOnly)}`);
    } finally {
      s.done();
    }
  });

  test("a hook in .git/hooks that is a symbolic link to a script in the project (ln -s ../../scripts/pre-commit): the script stays writable", () => {
    const s = setup("hook-file-link");
    try {
      G(s.project, s.env, "init", "-q");
      mkdirSync(join(s.project, "scripts"));
      writeFileSync(join(s.project, "scripts", "pre-commit"), "#!/bin/sh\ntrue\n");
      symlinkSync("../../scripts/pre-commit", join(s.project, ".git", "hooks", "pre-commit"));
      const plan = planGit(s.project, s.writable, s.home);
      assert.ok(hookRuns(s.project, s.env, join(s.project, "scripts", "pre-commit"), join(s.dir, "m5")), "git runs what the agent writes to scripts/pre-commit");
      assert.ok(guarded(plan, join(s.project, "scripts", "pre-commit")), `scripts/pre-commit is writable; plan.readOnly: ${JSON.stringify(plan.readOnly)}`);
    } finally {
      s.done();
    }
  });

  test("the bare-repository-plus-worktrees layout (project/.git is 'gitdir: ./.bare'): .bare/config is not guarded", () => {
    const s = setup("bare");
    try {
      const src = join(s.dir, "src");
      mkdirSync(src);
      G(src, s.env, "init", "-q");
      G(src, s.env, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "--allow-empty", "-m", "x");
      G(s.project, s.env, "clone", "-q", "--bare", src, ".bare");
      writeFileSync(join(s.project, ".git"), "gitdir: ./.bare\n");
      const w = G(s.project, s.env, "worktree", "add", "-q", "main");
      assert.equal(w.status, 0, w.stderr);
      writeFileSync(join(s.project, ".bare", "config"), "[core]\n\tbare = true\n\tfsmonitor = echo pwned\n");
      const g = G(join(s.project, "main"), s.env, "config", "--show-origin", "core.fsmonitor");
      assert.match(g.stdout, /\.bare\/config.*echo pwned/, `git: ${g.stdout}${g.stderr}`);
      // What layout.ts guards: the project, then each repository nestedRepositories finds below it.
      const plans = [s.project, ...nestedRepositories(s.project).dirs].map((d) => planGit(d, s.writable, s.home));
      const bareConfig = join(s.project, ".bare", "config");
      assert.ok(plans.some((p) => guarded(p, bareConfig)), `.bare/config is writable; read-only: ${JSON.stringify(plans.flatMap((p) => p.readOnly))}`);
    } finally {
      s.done();
    }
  });

  test("include.path from GIT_CONFIG_COUNT/KEY/VALUE in the owner's environment, naming a file in the project", () => {
    const s = setup("envcfg");
    try {
      const inc = join(s.project, "local.gitconfig");
      writeFileSync(inc, "[core]\n\tfsmonitor = echo pwned\n");
      const env = { GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_COUNT: "1", GIT_CONFIG_KEY_0: "include.path", GIT_CONFIG_VALUE_0: inc };
      const other = join(s.dir, "other");
      mkdirSync(other);
      G(other, s.env, "init", "-q");
      const g = G(other, { ...s.env, ...env }, "config", "--show-origin", "core.fsmonitor");
      assert.match(g.stdout, /local\.gitconfig.*echo pwned/, `git: ${g.stdout}${g.stderr}`);
      const plan = planGlobalGit(s.writable, s.home, env);
      assert.ok(guarded(plan, inc), `${inc} is writable; plan.readOnly: ${JSON.stringify(plan.readOnly)}`);
    } finally {
      s.done();
    }
  });
});


/** What layout.ts does: the global configs first (their relative hooks path), then the project and each repository below it. */
const allPlans = (s: ReturnType<typeof setup>): GitPlan[] => {
  const global = planGlobalGit(s.writable, s.home, s.env);
  return [global, ...[s.project, ...nestedRepositories(s.project).dirs].map((d) => planGit(d, s.writable, s.home, global.relativeHooks ?? []))];
};
const commit = (cwd: string, env: Record<string, string>) => G(cwd, env, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "--allow-empty", "-m", "x");
function plant(file: string, marker: string): void {
  writeFileSync(file, `#!/bin/sh\necho ran > ${marker}\n`);
  chmodSync(file, 0o755);
}

describe("relative hooks paths resolved where git runs, and config given by git -c in the environment", () => {
  test("bare+worktrees layout with husky (core.hooksPath = .husky/_ relative): git runs <worktree>/.husky/_ which stays writable", () => {
    const s = setup("bare-husky");
    try {
      const src = join(s.dir, "src");
      mkdirSync(src);
      G(src, s.env, "init", "-q");
      commit(src, s.env);
      G(s.project, s.env, "clone", "-q", "--bare", src, ".bare");
      writeFileSync(join(s.project, ".git"), "gitdir: ./.bare\n");
      assert.equal(G(s.project, s.env, "worktree", "add", "-q", "main").status, 0);
      const main = join(s.project, "main");
      // what `npx husky` does inside the worktree
      mkdirSync(join(main, ".husky", "_"), { recursive: true });
      G(main, s.env, "config", "core.hooksPath", ".husky/_");
      const hook = join(main, ".husky", "_", "pre-commit");
      plant(hook, join(s.dir, "m1"));
      commit(main, s.env);
      assert.ok(existsSync(join(s.dir, "m1")), "git runs main/.husky/_/pre-commit");
      const plans = allPlans(s);
      assert.ok(plans.some((p) => guarded(p, hook)), `main/.husky/_ writable; guarded: ${JSON.stringify(plans.flatMap((p) => [...p.readOnly, ...p.sealed]))}`);
    } finally {
      s.done();
    }
  });

  test("normal repo, core.hooksPath = .githooks, a linked worktree inside the project: <wt>/.githooks stays writable", () => {
    const s = setup("wt-hp");
    try {
      G(s.project, s.env, "init", "-q");
      mkdirSync(join(s.project, ".githooks"));
      writeFileSync(join(s.project, ".githooks", "keep"), "");
      G(s.project, s.env, "add", ".githooks");
      commit(s.project, s.env);
      G(s.project, s.env, "config", "core.hooksPath", ".githooks");
      assert.equal(G(s.project, s.env, "worktree", "add", "-q", "wt").status, 0);
      const hook = join(s.project, "wt", ".githooks", "pre-commit");
      plant(hook, join(s.dir, "m2"));
      commit(join(s.project, "wt"), s.env);
      assert.ok(existsSync(join(s.dir, "m2")), "git runs wt/.githooks/pre-commit");
      const plans = allPlans(s);
      assert.ok(plans.some((p) => guarded(p, hook)), `wt/.githooks writable; guarded: ${JSON.stringify(plans.flatMap((p) => [...p.readOnly, ...p.sealed]))}`);
    } finally {
      s.done();
    }
  });

  test("global ~/.gitconfig core.hooksPath = .githooks (relative, every repo's own): project/.githooks stays writable", () => {
    const s = setup("global-rel-hp");
    try {
      writeFileSync(join(s.home, ".gitconfig"), "[core]\n\thooksPath = .githooks\n");
      G(s.project, s.env, "init", "-q");
      mkdirSync(join(s.project, ".githooks"));
      const hook = join(s.project, ".githooks", "pre-commit");
      plant(hook, join(s.dir, "m3"));
      commit(s.project, s.env);
      assert.ok(existsSync(join(s.dir, "m3")), "git runs project/.githooks/pre-commit");
      const plans = [...allPlans(s), planGlobalGit(s.writable, s.home, { HOME: s.home, GIT_CONFIG_NOSYSTEM: "1" })];
      assert.ok(plans.some((p) => guarded(p, hook)), `project/.githooks writable; guarded: ${JSON.stringify(plans.flatMap((p) => [...p.readOnly, ...p.sealed]))}`);
    } finally {
      s.done();
    }
  });

  test("GIT_CONFIG_PARAMETERS (git -c in the environment) include.path naming a file in the project", () => {
    const s = setup("gcp");
    try {
      const inc = join(s.project, "local.gitconfig");
      writeFileSync(inc, "[core]\n\tfsmonitor = echo pwned\n");
      const env = { GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_PARAMETERS: `'include.path'='${inc}'` };
      const other = join(s.dir, "other");
      mkdirSync(other);
      G(other, s.env, "init", "-q");
      const g = G(other, { ...s.env, ...env }, "config", "--show-origin", "core.fsmonitor");
      assert.match(g.stdout, /echo pwned/, `git: ${g.stdout}${g.stderr}`);
      const plan = planGlobalGit(s.writable, s.home, { HOME: s.home, ...env });
      assert.ok(guarded(plan, inc), `${inc} writable; plan.readOnly: ${JSON.stringify(plan.readOnly)}`);
    } finally {
      s.done();
    }
  });
});

import { randomBytes } from "node:crypto";
import { ATTACKERS_POLICY, HAVE_BWRAP, git, gitInit, gitOk, makeOwner as newOwner, plantScript, runAgent } from "./run-harness.js";
const e2eRoot = mkdtempSync(join(tmpdir(), "rev5-e2e-"));
process.on("exit", () => rmSync(e2eRoot, { recursive: true, force: true }));
const KEY = randomBytes(32).toString("hex");
const owner = (name: string) => newOwner({ root: e2eRoot, name, masterKey: KEY, policy: ATTACKERS_POLICY, secrets: [{ name: "granted", value: "gv" }] });

describe("the layout's git guards", () => {
  test("a repository reached twice (bare + worktrees layout, a nested repository with a linked worktree) is sealed and checked once", () => {
    const s = setup("dedupe");
    try {
      const sub = join(s.project, "sub");
      mkdirSync(sub);
      const g = (cwd: string, ...a: string[]) => assert.equal(G(cwd, s.env, "-c", "user.name=x", "-c", "user.email=x@x", ...a).status, 0, a.join(" "));
      g(sub, "init", "-q");
      g(sub, "commit", "-q", "--allow-empty", "-m", "x");
      g(s.project, "clone", "-q", "--bare", "sub", ".bare");
      writeFileSync(join(s.project, ".git"), "gitdir: ./.bare\n");
      g(s.project, "worktree", "add", "-q", "main");
      g(sub, "worktree", "add", "-q", join(s.project, "wt2"));
      const l = planLayout({ home: s.home, project: s.project, projectWritable: true, read: [], write: [], protect: [] });
      const dupes = (xs: string[]) => xs.filter((x, i) => xs.indexOf(x) !== i);
      assert.deepEqual(l.git.map((x) => x.gitDir).sort(), [join(s.project, ".bare"), join(sub, ".git")].sort());
      assert.deepEqual(dupes(l.sealed), [], "sealed directories");
      assert.deepEqual(dupes(l.sealedFiles), [], "sealed files");
    } finally {
      s.done();
    }
  });
});

describe("the git guard end to end (real lessor run, bwrap)", { skip: HAVE_BWRAP ? false : "no bwrap" }, () => {
  test("attack: .git/hooks/pre-commit -> ../../scripts/pre-commit; the agent rewrites scripts/pre-commit and the owner's next commit runs it", async () => {
    const o = await owner("hooklink");
    gitInit(o.project);
    mkdirSync(join(o.project, "scripts"));
    writeFileSync(join(o.project, "scripts", "pre-commit"), "#!/bin/sh\ntrue\n", { mode: 0o755 });
    symlinkSync("../../scripts/pre-commit", join(o.project, ".git", "hooks", "pre-commit"));
    const marker = join(o.base, "ran");
    const r = await runAgent(o.project, o.env, "attacker-hooklink", [], `(${plantScript("scripts/pre-commit", marker)} && echo planted) 2>/dev/null || echo refused`);
    assert.equal(r.code, 0, r.stderr);
    git(o.project, "commit", "-q", "--allow-empty", "-m", "owner");
    assert.ok(!existsSync(marker), `the agent's pre-commit ran as the owner; agent said: ${r.stdout}`);
  });

  test("attack: project/.git is 'gitdir: ./.bare' (bare repo + worktrees layout); the agent writes .bare/config core.fsmonitor", async () => {
    const o = await owner("bare");
    const src = join(o.base, "src");
    mkdirSync(src);
    gitInit(src);
    gitOk(o.project, "clone", "-q", "--bare", src, ".bare");
    writeFileSync(join(o.project, ".git"), "gitdir: ./.bare\n");
    gitOk(o.project, "worktree", "add", "-q", "wt");
    const marker = join(o.base, "ran");
    const r = await runAgent(o.project, o.env, "attacker-bare", [], `(printf '[core]\\n\\tfsmonitor = "echo ran >> ${marker}; false"\\n' >> .bare/config && echo planted) 2>/dev/null || echo refused`);
    assert.equal(r.code, 0, r.stderr);
    git(join(o.project, "wt"), "status", "--porcelain");
    assert.ok(!existsSync(marker), `the agent's core.fsmonitor ran as the owner; agent said: ${r.stdout}`);
  });

  test("attack: core.hooksPath = .githooks ; comment — the agent writes .githooks/pre-commit", async () => {
    const o = await owner("hpcomment");
    gitInit(o.project);
    mkdirSync(join(o.project, ".githooks"));
    writeFileSync(join(o.project, ".git", "config"), "[core]\n\trepositoryformatversion = 0\n\tbare = false\n\thooksPath = .githooks ; shared hooks\n");
    const marker = join(o.base, "ran");
    const r = await runAgent(o.project, o.env, "attacker-hpc", [], `(${plantScript(".githooks/pre-commit", marker)} && echo planted) 2>/dev/null || echo refused`);
    assert.equal(r.code, 0, r.stderr);
    git(o.project, "commit", "-q", "--allow-empty", "-m", "owner");
    assert.ok(!existsSync(marker), `the agent's pre-commit ran as the owner; agent said: ${r.stdout}`);
  });
  test("attack: bare+worktrees layout with husky (core.hooksPath .husky/_): the agent writes main/.husky/_/pre-commit", async () => {
    const o = await owner("barehusky");
    const src = join(o.base, "src");
    mkdirSync(src);
    gitInit(src);
    gitOk(o.project, "clone", "-q", "--bare", src, ".bare");
    writeFileSync(join(o.project, ".git"), "gitdir: ./.bare\n");
    gitOk(o.project, "worktree", "add", "-q", "main");
    mkdirSync(join(o.project, "main", ".husky", "_"), { recursive: true });
    gitOk(join(o.project, "main"), "config", "core.hooksPath", ".husky/_");
    const marker = join(o.base, "ran");
    const r = await runAgent(o.project, o.env, "attacker-bh", [], `(${plantScript("main/.husky/_/pre-commit", marker)} && echo planted) 2>/dev/null || echo refused`);
    assert.equal(r.code, 0, r.stderr);
    git(join(o.project, "main"), "commit", "-q", "--allow-empty", "-m", "owner");
    assert.ok(!existsSync(marker), `the agent's pre-commit ran as the owner; agent said: ${r.stdout}`);
  });
});
