/**
 * A review of the sandbox (2026-12-07) found two ways for the agent to act outside it:
 *
 * 1. The git guard made an existing hooks directory read-only (core.hooksPath, or the target of a
 *    symlinked .git/hooks) but does not pin the directories above it: the agent renames the parent
 *    away (a directory holding a mount point can be renamed) and makes its own hooks directory at the
 *    same path; the owner's next `git commit` ran the agent's hook, unconfined. Now the directories
 *    between the writable bind and a read-only or sealed hooks path are pinned (src/sandbox/git-guard.ts).
 * 2. bwrap follows symlinks in mount destinations: an agent that made the project's .git (no repository
 *    there before) plants `.git/config.worktree` as a symlink to `/oldroot/<host path>`; at the next
 *    run lessor seals the "missing" config.worktree (`--ro-bind /dev/null`), and bwrap creat()s the
 *    symlink's target on the host, outside the sandbox. Same with a core.hooksPath through a symlink
 *    (`--tmpfs`: bwrap mkdirs on the host). Now such a link refuses the run, naming it.
 */
import { randomBytes } from "node:crypto";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { ATTACKERS_POLICY, HAVE_BWRAP, git, gitInit, gitOk, makeOwner as newOwner, runAgent } from "./run-harness.js";

const skip = !HAVE_BWRAP ? "bwrap is not installed or user namespaces are off" : false;
const root = mkdtempSync(join(tmpdir(), "lessor-review1207-sbx-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const MASTER_KEY = randomBytes(32).toString("hex");
const makeOwner = (name: string) => newOwner({ root, name, masterKey: MASTER_KEY, policy: ATTACKERS_POLICY, secrets: [{ name: "granted", value: "gv" }] });

const hook = (marker: string) => `printf '#!/bin/sh\\necho ran-as-owner >> ${marker}\\n' > tools/hooks/pre-commit && chmod 755 tools/hooks/pre-commit`;

describe("hooks directory's parent renamed away", { skip }, () => {
  for (const kind of ["core.hooksPath = tools/hooks", ".git/hooks -> ../tools/hooks"]) {
    test(`attack: ${kind}: the agent cannot rename the hooks directory's parent away and plant its own, so the owner's next git commit runs nothing of the agent's`, async () => {
      const o = await makeOwner(`hooks-${kind.startsWith("core") ? "path" : "link"}`);
      gitInit(o.project);
      mkdirSync(join(o.project, "tools/hooks"), { recursive: true });
      if (kind.startsWith("core")) gitOk(o.project, "config", "core.hooksPath", "tools/hooks");
      else {
        rmSync(join(o.project, ".git/hooks"), { recursive: true, force: true });
        symlinkSync("../tools/hooks", join(o.project, ".git/hooks"));
      }
      const marker = join(o.base, "hook-ran");
      // Writing into the guarded directory fails (read-only) ...
      const r = await runAgent(o.project, o.env, "attacker-hooks", [], [
        `(echo x > tools/hooks/pre-commit) 2>/dev/null && echo direct-write=ok || echo direct-write=refused`,
        `(mv tools tools.moved && mkdir -p tools/hooks && ${hook(marker)}) 2>/dev/null && echo rename=ok || echo rename=refused`,
      ].join("; "));
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /direct-write=refused/, r.stdout); // the guard is there
      assert.match(r.stdout, /rename=refused/, `the agent renamed the hooks directory's parent away and planted its own:\n${r.stdout}${r.stderr}`);
      assert.ok(existsSync(join(o.project, "tools/hooks")) && !existsSync(join(o.project, "tools.moved")), "the owner's hooks directory is where it was");
      // The owner, later, outside the sandbox.
      git(o.project, "commit", "-q", "--allow-empty", "-m", "owner");
      assert.ok(!existsSync(marker), `the agent's pre-commit hook ran as the owner, outside the sandbox (${marker})`);
    });
  }
});

describe("a symlink the agent planted at a mount destination bwrap would make", { skip }, () => {
  test("attack: .git/config.worktree -> /oldroot/<host path>: the next run is refused, naming it, and nothing is made on the host", async () => {
    const o = await makeOwner("sealed-file");
    const planted = join(o.base, "created-outside-the-sandbox"); // not shown in the sandbox
    const r1 = await runAgent(o.project, o.env, "attacker-sealed", [], `mkdir -p .git/objects .git/refs && echo 'ref: refs/heads/main' > .git/HEAD && ln -s /oldroot${planted} .git/config.worktree && echo planted`);
    assert.match(r1.stdout, /planted/, r1.stderr);
    assert.ok(!existsSync(planted));
    const r2 = await runAgent(o.project, o.env, "attacker-sealed", [], "echo started");
    assert.ok(!existsSync(planted), `the owner's next lessor run created ${planted} outside the sandbox (mode ${existsSync(planted) ? statSync(planted).mode.toString(8) : ""})`);
    assert.equal(r2.code, 2, r2.stdout + r2.stderr);
    assert.doesNotMatch(r2.stdout, /started/);
    assert.match(r2.stderr, /config\.worktree is a symbolic link, which git never makes/);
  });

  test("attack: core.hooksPath through a symlink to /oldroot/<host dir>: the next run is refused, naming the link, and no directory is made on the host", async () => {
    const o = await makeOwner("sealed-dir");
    const planted = join(o.base, "dir-made-outside");
    const r1 = await runAgent(o.project, o.env, "attacker-sealed", [], [
      "mkdir -p .git/objects .git/refs .git/hooks && echo 'ref: refs/heads/main' > .git/HEAD",
      `printf '[core]\\n\\thooksPath = evil/dir-made-outside\\n' > .git/config`,
      `ln -s /oldroot${o.base} evil && echo planted`,
    ].join(" && "));
    assert.match(r1.stdout, /planted/, r1.stderr);
    const r2 = await runAgent(o.project, o.env, "attacker-sealed", [], "echo started");
    assert.ok(!existsSync(planted), `the owner's next lessor run made the directory ${planted} outside the sandbox`);
    assert.equal(r2.code, 2, r2.stdout + r2.stderr);
    assert.doesNotMatch(r2.stdout, /started/);
    assert.match(r2.stderr, /runs through .*evil, which is a symbolic link|runs through the symbolic link \S*evil in a directory the sandboxed agent can write/);
  });
});

describe("a hooks path git config names that does not exist yet (husky's .husky/_)", { skip }, () => {
  test("attack: the agent cannot rename the missing hooks path's parent away to make its own hooks there: the parent is made and pinned, the path sealed", async () => {
    const o = await makeOwner("sealed-husky");
    gitInit(o.project);
    gitOk(o.project, "config", "core.hooksPath", ".husky/_");
    const marker = join(o.base, "husky-hook-ran");
    const r = await runAgent(o.project, o.env, "attacker-husky", [], [
      `(mkdir -p .husky/_ && printf '#!/bin/sh\\necho ran >> ${marker}\\n' > .husky/_/pre-commit) 2>/dev/null && echo direct=ok || echo direct=refused`,
      `(mv .husky .husky.moved && mkdir -p .husky/_ && printf '#!/bin/sh\\necho ran >> ${marker}\\n' > .husky/_/pre-commit && chmod 755 .husky/_/pre-commit) 2>/dev/null && echo rename=ok || echo rename=refused`,
    ].join("; "));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /direct=refused/, r.stdout);
    assert.match(r.stdout, /rename=refused/, r.stdout);
    git(o.project, "commit", "-q", "--allow-empty", "-m", "owner");
    assert.ok(!existsSync(marker), "the agent's hook ran as the owner");
  });
});

describe("the after-run quarantine of git directories", { skip }, () => {
  test("attack: .git/worktrees.lessor-quarantine planted as a symlink to an owner directory: lessor's quarantine neither deletes nor writes there", async () => {
    const o = await makeOwner("quarantine-link");
    gitInit(o.project);
    mkdirSync(join(o.project, ".git/worktrees"));
    const victim = join(o.base, "victim"); // an owner directory the sandbox does not show
    mkdirSync(join(victim, "feature"), { recursive: true });
    writeFileSync(join(victim, "feature", "owner-data"), "precious\n");
    const run = runAgent(o.project, o.env, "attacker-quar", [], `ln -s ${victim} .git/worktrees.lessor-quarantine && echo planted; sleep 3`);
    // The owner, meanwhile, outside: `git worktree add ../feature` makes .git/worktrees/feature, which
    // the after-run check then moves out of git's sight (it cannot tell it from the agent's).
    await new Promise((r) => setTimeout(r, 1500));
    mkdirSync(join(o.project, ".git/worktrees/feature"));
    writeFileSync(join(o.project, ".git/worktrees/feature/gitdir"), "/somewhere/feature/.git\n");
    const r = await run;
    assert.match(r.stdout, /planted/, r.stderr);
    assert.equal(readFileSync(join(victim, "feature", "owner-data"), "utf8"), "precious\n", "the quarantine followed the agent's symlink and deleted the owner's directory");
    assert.deepEqual(readdirSync(victim), ["feature"], "nothing was written into the owner's directory");
    const q = join(o.project, ".git/worktrees.lessor-quarantine");
    assert.ok(lstatSync(q).isDirectory() && !lstatSync(q).isSymbolicLink(), "the quarantine is a real directory lessor made");
    assert.ok(existsSync(join(q, "feature", "gitdir")), "the new entry is quarantined there");
    assert.match(r.stderr, /moved it to .*worktrees\.lessor-quarantine\/feature/);
  });
});

describe("the owner's other repositories below the project directory", { skip }, () => {
  test("attack: an existing repository one and two directories below the project: the agent cannot plant a hook or a core.fsmonitor there that the owner's git runs later", async () => {
    const o = await makeOwner("nested-repos");
    const repos = [join(o.project, "app"), join(o.project, "libs", "util")];
    for (const r of repos) {
      mkdirSync(r, { recursive: true });
      gitInit(r); // the owner's own repositories, there before the run
    }
    mkdirSync(join(o.project, "node_modules", "dep"), { recursive: true }); // skipped by the search, harmless
    const marker = join(o.base, "hook-ran");
    const plant = (dir: string): string =>
      `(printf '#!/bin/sh\\necho ran-as-owner >> ${marker}\\n' > ${dir}/.git/hooks/pre-commit && chmod 755 ${dir}/.git/hooks/pre-commit && echo planted-hook) 2>/dev/null || echo hook=refused; ` +
      `(git config -f ${dir}/.git/config core.fsmonitor "/bin/sh -c 'echo ran-as-owner >> ${marker}'" && echo planted-fsmonitor) 2>/dev/null || echo fsmonitor=refused`;
    const r = await runAgent(o.project, o.env, "attacker-nested", [], `${plant("app")}; ${plant("libs/util")}; git -c user.name=a -c user.email=a@example.com -C app commit -q --allow-empty -m agent && echo agent-commit=ok`);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /planted-/, r.stdout);
    assert.match(r.stdout, /agent-commit=ok/, "git still works in the nested repository inside");
    // The owner, later, outside the sandbox.
    for (const dir of repos) git(dir, "commit", "-q", "--allow-empty", "-m", "owner");
    assert.ok(!existsSync(marker), "the agent's hook or fsmonitor ran as the owner");
  });

  test("the search for the owner's repositories goes through directories only: not node_modules, not a symbolic link", async () => {
    const { nestedRepositories, MAX_REPO_SEARCH } = await import("../src/sandbox/git-guard.js");
    const top = mkdtempSync(join(root, "search-"));
    for (let i = 0; i < 30; i++) mkdirSync(join(top, `d${i}`, "x"), { recursive: true });
    mkdirSync(join(top, "d3", "x", ".git"));
    mkdirSync(join(top, "node_modules", "pkg", ".git"), { recursive: true });
    symlinkSync(join(top, "d3"), join(top, "link"));
    assert.deepEqual(nestedRepositories(top), { dirs: [join(top, "d3", "x")], complete: true }, "found through directories only, not through node_modules or a link");
    assert.ok(MAX_REPO_SEARCH >= 10_000);
  });
});

describe("the layout's plan, checked mount by mount", () => {
  /** Whether `p` is writable in the sandbox bwrap's arguments make: the last mount holding it decides. */
  const writableInside = (args: string[], p: string): boolean => {
    let w = false;
    const within = (a: string, b: string): boolean => a === b || a.startsWith(b + "/");
    for (let i = 0; i < args.length; i++) {
      const a = args[i]!;
      if ((a === "--bind" || a === "--ro-bind") && within(p, args[i + 2]!)) w = a === "--bind";
      if (a === "--tmpfs" && within(p, args[i + 1]!)) w = true;
      if (a === "--remount-ro" && within(p, args[i + 1]!)) w = false;
    }
    return w;
  };

  test("a read-only [run] read path below the project stays read-only when a nested repository's core.hooksPath points into it (no pin makes it writable)", async () => {
    const { planLayout } = await import("../src/sandbox/layout.js");
    const { bwrapArgs } = await import("../src/sandbox/bwrap-args.js");
    const base = realpathSync(mkdtempSync(join(root, "plan-ro-")));
    const src = join(base, "src");
    const tools = join(src, "tools");
    mkdirSync(join(tools, "hooks"), { recursive: true });
    writeFileSync(join(tools, "lint.sh"), "#!/bin/sh\n");
    mkdirSync(join(src, "app", ".git", "hooks"), { recursive: true });
    writeFileSync(join(src, "app", ".git", "config"), "[core]\n\thooksPath = ../tools/hooks\n");
    const layout = planLayout({ home: join(base, "home"), project: src, projectWritable: true, read: [tools], write: [], protect: [] });
    const args = bwrapArgs(layout, {}, { disableUserns: false });
    assert.equal(writableInside(args, join(src, "app", "x")), true, "the project is writable");
    assert.equal(writableInside(args, join(src, "app", ".git", "config")), false, "the nested repository's config is read-only");
    assert.equal(writableInside(args, join(tools, "lint.sh")), false, `the [run] read path became writable: pinned ${JSON.stringify(layout.pinned)}`);
    assert.equal(writableInside(args, join(tools, "hooks", "pre-commit")), false);
  });

  test("decoy directories an earlier run made past the search's limit refuse the run: the owner's nested repository is never left unguarded", async () => {
    const { planLayout } = await import("../src/sandbox/layout.js");
    const { MAX_REPO_SEARCH } = await import("../src/sandbox/git-guard.js");
    const base = realpathSync(mkdtempSync(join(root, "plan-decoys-")));
    const src = join(base, "src");
    mkdirSync(join(src, "zapp", ".git", "hooks"), { recursive: true });
    for (let i = 0; i <= MAX_REPO_SEARCH; i++) mkdirSync(join(src, `d${i}`)); // one mkdir loop in an earlier run
    try {
      assert.throws(
        () => planLayout({ home: join(base, "home"), project: src, projectWritable: true, read: [], write: [], protect: [] }),
        (e: Error & { code?: string }) => e.code === "invalid_request" && /holds more than 50000 directories/.test(e.message) && /did not start the command/.test(e.message),
      );
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});
