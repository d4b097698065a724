/**
 * Review of the git guard's second pass (src/sandbox/git-guard.ts: submodules under .git/modules,
 * linked worktrees' admin files, commondir before and after a run), as a hostile agent started by
 * `lessor run --agent X -- CMD` in the default sandbox would attack it: what it can leave behind in
 * the repository's git directories that the owner's next `git status`, outside the sandbox, follows.
 *
 * Each attack is also shown to work with --no-sandbox where that proves the probe, so a failure
 * inside shows the guard and not a broken probe. Only temporary directories and loopback.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cpSync, existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { BIN, runCliWithEnv } from "./cli-harness.js";
import { gitOk, git, HAVE_BWRAP, makeOwner as newOwner, runAgent } from "./run-harness.js";

const NODE = process.execPath;
const REPO = fileURLToPath(new URL("..", import.meta.url));
const HAVE_GIT = spawnSync("git", ["--version"]).status === 0;
const skip = !HAVE_BWRAP ? "bwrap is not installed or user namespaces are off" : !HAVE_GIT ? "git is not installed" : false;

const root = mkdtempSync(join(tmpdir(), "lessor-review-1205-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

const MASTER_KEY = randomBytes(32).toString("hex");

/** `lessor run --agent AGENT EXTRA -- sh -c SCRIPT` from `cwd`, as the owner would start it. */
const lessorRun = (cwd: string, env: Record<string, string>, agent: string, extra: string[], script: string) => runAgent(cwd, env, agent, extra, script, 25_000);

/** A fake owner: a home, ~/.lessor (env key, the default empty policy) and a project directory. */
const makeOwner = (name: string) => newOwner({ root, name, masterKey: MASTER_KEY });

function gitInit(dir: string): void {
  mkdirSync(join(dir, "src"), { recursive: true });
  gitOk(dir, "init", "-q");
  spawnSync("/bin/sh", ["-c", "echo the project > README && echo code > src/main"], { cwd: dir });
  gitOk(dir, "add", "README", "src/main");
  gitOk(dir, "commit", "-qm", "init");
}

/** A shell line writing an executable script at `path` that appends a line to `marker` when run. */
const plantScript = (path: string, marker: string): string => `printf '#!/bin/sh\\necho ran >> ${marker}\\n' > ${path} && chmod 755 ${path}`;
/** A shell line writing a git config file at `path` whose core.fsmonitor is `evil`. */
const plantFsmonitor = (path: string, evil: string): string => `printf '[core]\\n\\tfsmonitor = ${evil}\\n' > ${path}`;

describe("config.worktree: a configuration file git reads once extensions.worktreeConfig is on (git sparse-checkout turns it on)", { skip }, () => {
  test("a .git/worktrees/NAME/config.worktree the agent tries to plant for the owner's linked worktree (kept outside the project) is an empty read-only file in the sandbox: the owner's next `git status` there runs nothing of the agent's", async () => {
    for (const confined of [true, false]) {
      const o = await makeOwner(`wt-config-${confined}`);
      gitInit(o.project);
      // The owner has a linked worktree outside the project, and uses a sparse checkout in the main
      // one (this sets extensions.worktreeConfig in .git/config and writes .git/config.worktree only).
      const wt = join(o.base, "wt");
      gitOk(o.project, "worktree", "add", "-q", wt);
      gitOk(o.project, "sparse-checkout", "set", "src");
      assert.ok(!existsSync(join(o.project, ".git/worktrees/wt/config.worktree")));
      const marker = join(o.base, "marker");
      const evil = join(o.project, "evil.sh");
      const r = await lessorRun(
        o.project,
        o.env,
        "attacker-wt-config",
        confined ? [] : ["--no-sandbox"],
        `${plantScript(evil, marker)} && { ${plantFsmonitor(".git/worktrees/wt/config.worktree", evil)} && echo planted || echo refused; }`,
      );
      assert.equal(r.code, 0, r.stderr);
      git(wt, "status");
      assert.equal(
        existsSync(marker),
        !confined,
        `${confined ? "confined" : "unconfined"}: the owner's git status in the linked worktree ran the agent's fsmonitor from .git/worktrees/wt/config.worktree (agent: ${r.stdout.trim()}; lessor said: ${r.stderr.trim() || "nothing"})`,
      );
    }
  });

  test("a missing .git/config.worktree is an empty read-only file in the sandbox, so nothing is planted there even by a run lessor cannot check (killed with SIGKILL): the owner's git status runs nothing of the agent's", async () => {
    const o = await makeOwner("config-worktree-killed");
    gitInit(o.project);
    gitOk(o.project, "config", "extensions.worktreeConfig", "true"); // as git sparse-checkout in a linked worktree leaves it
    assert.ok(!existsSync(join(o.project, ".git/config.worktree")));
    const marker = join(o.base, "marker");
    const evil = join(o.project, "evil.sh");
    const script = [plantScript(evil, marker), plantFsmonitor(".git/config.worktree", evil), "trap '' INT TERM HUP", "echo ready", "while :; do sleep 1; done"].join("\n");
    const child = spawn(NODE, ["--", BIN, "run", "--agent", "attacker-killed", "--", "/bin/sh", "-c", script], { cwd: o.project, env: o.env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const closed = new Promise<void>((r) => child.on("close", () => r()));
    try {
      for (let i = 0; i < 300 && !out.includes("ready"); i++) await new Promise((r) => setTimeout(r, 50));
      assert.match(out, /ready/, err);
    } finally {
      child.kill("SIGKILL"); // the machine stopped, the OOM killer, kill -9 on lessor run: its check does not run
      await closed;
    }
    assert.ok(existsSync(join(o.project, ".git/config.worktree")), "the plant survived lessor's death (nothing can check then)");
    // The owner's next run, of anything: the guard checks before it starts, as it does for commondir.
    const next = await lessorRun(o.project, o.env, "attacker-killed", [], "echo second");
    assert.equal(next.code, 0, next.stderr);
    git(o.project, "status");
    assert.equal(existsSync(marker), false, `the owner's git status ran the agent's fsmonitor from the .git/config.worktree planted in the killed run (next run said: ${next.stderr.trim() || "nothing"})`);
  });
});

describe("submodule git directories the walk of .git/modules does not reach", { skip }, () => {
  /** The owner's project with a submodule at `path` (its git directory at .git/modules/<path>). */
  async function withSubmodule(name: string, path: string) {
    const o = await makeOwner(name);
    const upstream = join(o.base, "upstream");
    mkdirSync(upstream);
    gitInit(upstream);
    gitInit(o.project);
    gitOk(o.project, "submodule", "add", "-q", upstream, path);
    gitOk(o.project, "commit", "-qm", "a submodule");
    assert.ok(existsSync(join(o.project, ".git/modules", path, "config")));
    return o;
  }

  test("255 look-alike git directories in .git/modules make the next run refuse (naming the limit) rather than leave the owner's submodule vendor/lib unguarded; a sandboxed agent can no longer plant them", async () => {
    const o = await withSubmodule("decoys", "vendor/lib");
    const marker = join(o.base, "marker");
    const evil = join(o.project, "evil.sh");
    const attempt = `${plantScript(evil, marker)} && { git config -f .git/modules/vendor/lib/config core.fsmonitor ${evil} 2>/dev/null && echo planted || echo refused; }`;
    const first = await lessorRun(o.project, o.env, "attacker-decoys", [], attempt);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /refused/, "the submodule's config is read-only in a first run (as the fix intends)");
    // Directories named to sort before "vendor", each passing the walk's HEAD/objects/refs test.
    const plantDecoys = `i=100; while [ $i -lt 355 ]; do d=.git/modules/0$i; mkdir -p $d/objects $d/refs && echo 'ref: refs/heads/main' > $d/HEAD; i=$((i+1)); done; echo decoys`;
    // In the sandbox .git/modules takes no new entry (test/leftover-suspicions.test.ts, describe 1):
    // the agent plants none. The limit still holds for decoys put there another way (an unconfined
    // run, by hand).
    const decoys = await lessorRun(o.project, o.env, "attacker-decoys", [], plantDecoys);
    assert.equal(decoys.code, 0, decoys.stderr);
    assert.match(decoys.stdout, /decoys/);
    assert.deepEqual(readdirSync(join(o.project, ".git/modules")), ["vendor"], "the sandboxed agent planted nothing in .git/modules");
    assert.equal(spawnSync("/bin/sh", ["-c", plantDecoys], { cwd: o.project }).status, 0);
    const second = await lessorRun(o.project, o.env, "attacker-decoys", [], attempt);
    assert.notEqual(second.code, 0, "the run is refused rather than leave a submodule unguarded");
    assert.doesNotMatch(second.stdout, /planted|refused/, "the command was not started");
    assert.match(second.stderr, /\.git\/modules holds more than 256 git directories, more than lessor guards/);
    git(o.project, "status");
    assert.equal(existsSync(marker), false, `the owner's git status ran the agent's fsmonitor from .git/modules/vendor/lib/config (second run: ${second.stdout.trim()}; lessor said: ${second.stderr.trim() || "nothing"})`);
  });

  test("the owner's submodule at a path ten directories deep (.git/modules/a/…/i/lib) is guarded: its config is read-only in the sandbox", async () => {
    const path = "a/b/c/d/e/f/g/h/i/lib";
    const o = await withSubmodule("deep", path);
    const marker = join(o.base, "marker");
    const evil = join(o.project, "evil.sh");
    const r = await lessorRun(o.project, o.env, "attacker-deep", [], `${plantScript(evil, marker)} && { git config -f .git/modules/${path}/config core.fsmonitor ${evil} 2>/dev/null && echo planted || echo refused; }`);
    assert.equal(r.code, 0, r.stderr);
    git(o.project, "status");
    assert.equal(existsSync(marker), false, `the owner's git status ran the agent's fsmonitor from .git/modules/${path}/config (agent: ${r.stdout.trim()}; lessor said: ${r.stderr.trim() || "nothing"})`);
  });
});

describe("lessor's own code reached through a hard link in the writable project", { skip }, () => {
  /** A copy of this build of lessor at `dir` (the owner's global install, outside the project); its bin. */
  const installAt = (dir: string): string => {
    mkdirSync(dir, { recursive: true });
    cpSync(join(REPO, "dist"), join(dir, "dist"), { recursive: true });
    cpSync(join(REPO, "package.json"), join(dir, "package.json"));
    // The addon and the sandbox's bridge helper, as the install script builds them.
    cpSync(join(REPO, "native", "peercred", "build", "Release"), join(dir, "native", "peercred", "build", "Release"), { recursive: true });
    symlinkSync(join(REPO, "node_modules"), join(dir, "node_modules"));
    return join(dir, "dist", "bin", "lessor.cjs");
  };

  test("lessor installed outside the project but its files hard-linked from the project's node_modules (pnpm's store links every install of lessor@x to the same file): lessor run refuses, naming both files", async () => {
    const o = await makeOwner("hardlink");
    // The owner's global install (pnpm add -g lessor): outside every directory the agent may write.
    const cli = installAt(join(o.base, "pnpm-global", "lessor"));
    // The project depends on the same lessor (a devDependency): pnpm links its file to the same store inode.
    const local = join(o.project, "node_modules", ".pnpm", "lessor@0.1.0", "node_modules", "lessor", "dist", "bin");
    mkdirSync(local, { recursive: true });
    linkSync(cli, join(local, "lessor.cjs"));
    assert.ok(statSync(cli).nlink > 1);
    const marker = join(o.base, "stolen-key");
    writeFileSync(join(o.project, "payload.js"), `\n;require("node:fs").writeFileSync(${JSON.stringify(marker)}, String(process.env.LESSOR_MASTER_KEY));\n`);
    const run = await runCliWithEnv(["run", "--agent", "attacker-hardlink", "--", "/bin/sh", "-c", `cat payload.js >> node_modules/.pnpm/lessor@0.1.0/node_modules/lessor/dist/bin/lessor.cjs && echo appended`], { bin: cli, cwd: o.project, env: o.env, timeoutMs: 25_000 });
    assert.notEqual(run.code, 0);
    assert.doesNotMatch(run.stdout, /appended/, "the command was not started");
    assert.match(run.stderr, /is the same file \(a hard link, as pnpm and bun install\) as .*node_modules\/\.pnpm\/lessor@0\.1\.0/);
    // The owner's next command, with the global install.
    spawnSync(NODE, ["--", cli, "status"], { cwd: o.project, env: o.env, encoding: "utf8", timeout: 20_000 });
    const stole = existsSync(marker) && readFileSync(marker, "utf8") === MASTER_KEY;
    assert.equal(existsSync(marker), false, `the agent's code ran in the owner's next lessor command${stole ? " and read LESSOR_MASTER_KEY" : ""} (run: exit ${run.code}, ${run.stdout.trim()} ${run.stderr.trim()})`);
  });

  test("only one of the bundles lessor run loads apart (dist/bin/run.cjs), or its code cache, or a bundle a later build adds, or its addon or the sandbox's bridge helper, hard-linked from the project: refused too", async () => {
    const release = "native/peercred/build/Release";
    for (const file of ["dist/bin/run.cjs", "dist/bin/run-proxy.cache", "dist/bin/later-part.cjs", `${release}/peercred.node`, `${release}/lessor-netbridge`]) {
      const o = await makeOwner(`hardlink-${file.replace(/[./]/g, "-")}`);
      const cli = installAt(join(o.base, "global", "lessor"));
      const pkg = join(o.base, "global", "lessor");
      // A bundle that no list in lessor names: the check reads dist/bin itself.
      if (file.endsWith("later-part.cjs")) writeFileSync(join(pkg, file), "module.exports = {};\n");
      // A deduplicating tool (pnpm's side-effects cache for built files) linked the identical file of a copy in the project (and only that one).
      const local = join(o.project, "node_modules", "lessor", file);
      mkdirSync(dirname(local), { recursive: true });
      linkSync(join(pkg, file), local);
      const run = await runCliWithEnv(["run", "--agent", "attacker-hardlink", "--", "/bin/sh", "-c", "echo started"], { bin: cli, cwd: o.project, env: o.env, timeoutMs: 25_000 });
      assert.notEqual(run.code, 0, `${file}: ${run.stdout}`);
      assert.doesNotMatch(run.stdout, /started/, "the command was not started");
      const quoted = file.replace(/[.]/g, "\\.");
      assert.match(run.stderr, new RegExp(`${quoted} is the same file \\(a hard link, as pnpm and bun install\\) as .*node_modules/lessor/${quoted}`), `${file}: ${run.stderr}`);
    }
  });

  test("a native addon of a package lessor loads (better-sqlite3's build/Release, argon2's platform package at its top) hard-linked from the project: refused", async () => {
    const addons = [
      ["better-sqlite3", "build/Release/better_sqlite3.node"],
      ["@node-rs/argon2-linux-x64-gnu", "argon2.linux-x64-gnu.node"],
    ].filter(([pkg, file]) => existsSync(join(REPO, "node_modules", pkg!, file!)));
    assert.ok(addons.length > 0, "no addon of lessor's dependencies is installed here (this test checks nothing)");
    for (const [pkg, file] of addons as [string, string][]) {
      const o = await makeOwner(`hardlink-dep-${pkg.replace(/[@/]/g, "-")}`);
      const cli = installAt(join(o.base, "global", "lessor"));
      // The project's own copy of the same package version, its built addon linked to the one lessor loads.
      const local = join(o.project, "node_modules", pkg, file);
      mkdirSync(dirname(local), { recursive: true });
      linkSync(join(REPO, "node_modules", pkg, file), local);
      try {
        const run = await runCliWithEnv(["run", "--agent", "attacker-hardlink", "--", "/bin/sh", "-c", "echo started"], { bin: cli, cwd: o.project, env: o.env, timeoutMs: 25_000 });
        assert.notEqual(run.code, 0, `${pkg}: ${run.stdout}`);
        assert.doesNotMatch(run.stdout, /started/, "the command was not started");
        const quoted = file.replace(/[.]/g, "\\.");
        assert.match(run.stderr, new RegExp(`${quoted} is the same file \\(a hard link, as pnpm and bun install\\) as .*node_modules/${pkg}/${quoted}`), `${pkg}: ${run.stderr}`);
      } finally {
        rmSync(local); // the link only: the installed addon stays as it was
      }
    }
  });
});
