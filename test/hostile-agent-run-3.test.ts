/**
 * A hostile agent started by `lessor run --agent X -- CMD` (the default sandbox with the injecting
 * proxy, and --network none), third pass: what it leaves behind for the owner's later git in places
 * the git guard (src/sandbox/git-guard.ts) does not look at, and what it can do through the run's
 * proxy and lifetime. Each attack that should be stopped is also shown to work with --no-sandbox, so a
 * failure inside proves the sandbox and not a broken probe.
 *
 * Only loopback and temporary directories: the vault is embedded (its master key in lessor run's own
 * environment), the HTTPS upstream listens on 127.0.0.1 and is reached through `[proxy] hosts`.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { BIN, runCliWithEnv, type CliResult } from "./cli-harness.js";
import { inTime } from "./proxy-harness.js";
import { ATTACKERS_POLICY, evilCommonDir, git, gitInit, gitOk, HAVE_BWRAP, makeOwner as newOwner, plantScript, runAgent } from "./run-harness.js";

const NODE = process.execPath;
const REPO = fileURLToPath(new URL("..", import.meta.url));
const HAVE_GIT = spawnSync("git", ["--version"]).status === 0;
const skip = !HAVE_BWRAP ? "bwrap is not installed or user namespaces are off" : false;
const skipGit = skip || (!HAVE_GIT ? "git is not installed" : false);

const root = mkdtempSync(join(tmpdir(), "lessor-hostile3-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

const MASTER_KEY = randomBytes(32).toString("hex");
const GRANTED = `granted-${randomBytes(12).toString("hex")}`;

/** A fake owner: a home, ~/.lessor with the env key (a granted secret stored), and a project directory. */
const makeOwner = (name: string, config = "") => newOwner({ root, name, masterKey: MASTER_KEY, policy: ATTACKERS_POLICY, secrets: [{ name: "granted", value: GRANTED }], config });

describe("what the agent leaves in git's own directory for the owner's git, outside the sandbox", { skip: skipGit }, () => {
  test("an existing submodule's config under .git/modules is read-only in the sandbox: core.fsmonitor written there (as --no-sandbox can) would run at the owner's next `git status` at the project root", async () => {
    for (const confined of [true, false]) {
      const o = await makeOwner(`submodule-${confined}`);
      const upstream = join(root, `submodule-${confined}`, "subsrc");
      mkdirSync(upstream);
      gitInit(upstream);
      gitInit(o.project);
      gitOk(o.project, "submodule", "add", "-q", upstream, "sub");
      gitOk(o.project, "commit", "-qm", "a submodule");
      assert.ok(existsSync(join(o.project, ".git/modules/sub/config")));
      const marker = join(root, `submodule-${confined}`, "marker");
      const evil = join(o.project, "evil.sh");
      const r = await runAgent(
        o.project,
        o.env,
        "attacker-submodule",
        confined ? [] : ["--no-sandbox"],
        `${plantScript(evil, marker)} && { git config -f .git/modules/sub/config core.fsmonitor ${evil} && echo planted || echo refused; }`,
      );
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, confined ? /refused/ : /planted/, "inside the sandbox the submodule's config is read-only");
      git(o.project, "status");
      assert.equal(existsSync(marker), !confined, `${confined ? "confined" : "unconfined"}: the owner's git status ran the agent's fsmonitor from .git/modules/sub/config`);
    }
  });

  test("around a submodule the sandbox keeps the ways to swap its git directory: .git/modules cannot be renamed away, the checkout's .git file is read-only, its directory cannot be replaced; a nested submodule's config is read-only too", async () => {
    for (const confined of [true, false]) {
      const o = await makeOwner(`submodule-swap-${confined}`);
      const inner = join(root, `submodule-swap-${confined}`, "inner");
      const outer = join(root, `submodule-swap-${confined}`, "outer");
      for (const d of [inner, outer]) {
        mkdirSync(d);
        gitInit(d);
      }
      gitOk(outer, "-c", "protocol.file.allow=always", "submodule", "add", "-q", inner, "in");
      gitOk(outer, "commit", "-qm", "nested");
      gitInit(o.project);
      gitOk(o.project, "-c", "protocol.file.allow=always", "submodule", "add", "-q", outer, "sub");
      gitOk(o.project, "-c", "protocol.file.allow=always", "submodule", "update", "--init", "--recursive", "-q");
      gitOk(o.project, "commit", "-qm", "a submodule with one inside");
      assert.ok(existsSync(join(o.project, ".git/modules/sub/modules/in/config")));
      const tries = [
        "git config -f .git/modules/sub/modules/in/config core.fsmonitor /bin/true",
        "echo 'gitdir: ../evil-gitdir' > sub/.git",
        "mv sub sub-old",
        "mv .git/modules .git/modules-old",
      ];
      const script = tries.map((t, i) => `if ${t} 2>/dev/null; then echo "try${i}:done"; else echo "try${i}:refused"; fi`).join("\n");
      const r = await runAgent(o.project, o.env, "attacker-swap", confined ? [] : ["--no-sandbox"], script);
      assert.equal(r.code, 0, r.stderr);
      for (let i = 0; i < tries.length; i++) assert.match(r.stdout, new RegExp(`try${i}:${confined ? "refused" : "done"}`), `${confined ? "confined" : "unconfined"}: ${tries[i]}`);
    }
  });

  test(".git/worktrees/NAME/commondir of the owner's linked worktree (kept outside the project) is read-only in the sandbox: rewritten (as --no-sandbox can), the owner's next `git status` there would run the agent's config", async () => {
    for (const confined of [true, false]) {
      const o = await makeOwner(`worktree-${confined}`);
      gitInit(o.project);
      const wt = join(root, `worktree-${confined}`, "wt");
      gitOk(o.project, "worktree", "add", "-q", wt);
      assert.equal(readFileSync(join(o.project, ".git/worktrees/wt/commondir"), "utf8").trim(), "../..");
      const marker = join(root, `worktree-${confined}`, "marker");
      const evil = join(o.project, "evil.sh");
      // A common directory of the agent's: the repository's objects and refs, and a config with core.fsmonitor.
      const r = await runAgent(
        o.project,
        o.env,
        "attacker-worktree",
        confined ? [] : ["--no-sandbox"],
        [
          "set -e",
          plantScript(evil, marker),
          ...evilCommonDir(evil),
          "set +e",
          `if echo "$PWD/evil-common" > .git/worktrees/wt/commondir; then echo planted; else echo refused; fi`,
        ].join("\n"),
      );
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, confined ? /refused/ : /planted/, "inside the sandbox the worktree's commondir is read-only");
      git(wt, "status");
      assert.equal(existsSync(marker), !confined, `${confined ? "confined" : "unconfined"}: the owner's git status in the linked worktree ran the agent's fsmonitor`);
    }
  });
});

describe("an agent that will not stop", { skip: skipGit }, () => {
  /** A script that plants .git/commondir (a common directory whose config runs `evil`), ignores every stop signal and waits. */
  const stubborn = (evil: string, marker: string): string =>
    [
      "set -e",
      plantScript(evil, marker),
      "mkdir -p evil-common/hooks evil-common/objects evil-common/refs/heads",
      "echo 'ref: refs/heads/main' > evil-common/HEAD",
      `printf '[core]\\n\\trepositoryformatversion = 0\\n\\tbare = false\\n\\tfsmonitor = ${evil}\\n' > evil-common/config`,
      `echo "$PWD/evil-common" > .git/commondir`,
      "trap '' INT TERM HUP QUIT USR1 USR2",
      "echo ready",
      "while :; do sleep 1; done",
    ].join("\n");

  async function startStubborn(o: { project: string; env: Record<string, string> }, agent: string, script: string) {
    const child = spawn(NODE, ["--", BIN, "run", "--agent", agent, "--", "/bin/sh", "-c", script], { cwd: o.project, env: o.env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const closed = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
    for (let i = 0; i < 300 && !out.includes("ready"); i++) await new Promise((r) => setTimeout(r, 50));
    assert.match(out, /ready/, err);
    return { child, closed, err: () => err };
  }

  test("a second SIGTERM ends a sandbox that ignores signals: lessor run still moves the planted .git/commondir aside, and the owner's git status runs nothing of the agent's", async () => {
    const o = await makeOwner("sigterm");
    gitInit(o.project);
    const marker = join(root, "sigterm", "marker");
    const run = await startStubborn(o, "attacker-sigterm", stubborn(join(o.project, "evil.sh"), marker));
    try {
      run.child.kill("SIGINT"); // passed on, ignored: SIGINT alone never escalates
      await new Promise((r) => setTimeout(r, 300));
      run.child.kill("SIGTERM");
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(run.child.exitCode, null, "after one SIGTERM the command has its grace period");
      run.child.kill("SIGTERM");
      const code = await inTime(run.closed, 10_000, "lessor run ends after the second SIGTERM");
      assert.equal(code, 128 + 9, "the command was killed (SIGKILL)");
    } finally {
      run.child.kill("SIGKILL");
    }
    assert.match(run.err(), /a second SIGTERM, lessor ends it \(SIGKILL\)/);
    assert.match(run.err(), /planted .*\.git\/commondir.*moved it to/);
    assert.ok(!existsSync(join(o.project, ".git/commondir")));
    git(o.project, "status");
    assert.equal(existsSync(marker), false, "the owner's git status ran the agent's fsmonitor");
  });

  test("lessor run killed with SIGKILL skips its check: the next lessor run moves the planted .git/commondir aside before it starts", async () => {
    const o = await makeOwner("sigkill");
    gitInit(o.project);
    const marker = join(root, "sigkill", "marker");
    const run = await startStubborn(o, "attacker-sigkill", stubborn(join(o.project, "evil.sh"), marker));
    run.child.kill("SIGKILL");
    await run.closed;
    assert.ok(existsSync(join(o.project, ".git/commondir")), "the plant survived lessor's death (nothing can check then)");
    const next = await runAgent(o.project, o.env, "attacker-sigkill", [], "git status >/dev/null 2>&1; echo ran");
    assert.equal(next.code, 0, next.stderr);
    assert.match(next.stderr, /\.git\/commondir was there before this run.*moved it to/);
    assert.ok(!existsSync(join(o.project, ".git/commondir")));
    git(o.project, "status");
    assert.equal(existsSync(marker), false, "git, inside or out, ran the agent's fsmonitor through the planted .git/commondir");
  });
});

describe("files lessor reads for the run, in the writable project", { skip }, () => {
  test("an --env-file the agent turned into a symbolic link to another file of the owner's is refused, naming the link; the same file in place works", async () => {
    const o = await makeOwner("env-file-link");
    const elsewhere = join(o.home, "other-project");
    mkdirSync(elsewhere);
    const CANARY_ENV = "other-" + randomBytes(12).toString("hex");
    writeFileSync(join(elsewhere, ".env"), `OTHER_DB_PASSWORD=${CANARY_ENV}\n`);
    // What an earlier run's agent leaves in place of the owner's .env.lessor (it cannot read the target).
    symlinkSync(join(elsewhere, ".env"), join(o.project, ".env.lessor"));
    const spawnRun = (): Promise<CliResult> =>
      runCliWithEnv(["run", "--agent", "attacker-envfile", "--env-file", ".env.lessor", "--", "/bin/sh", "-c", "env"], { cwd: o.project, env: o.env, timeoutMs: Infinity });
    const r = await spawnRun();
    assert.notEqual(r.code, 0);
    assert.ok(!r.stdout.includes(CANARY_ENV) && !r.stderr.includes(CANARY_ENV), "the other file's value reached the agent or the output");
    assert.match(r.stderr, /--env-file \.env\.lessor is reached through the symbolic link .*\.env\.lessor, which the sandboxed agent can change/);
    rmSync(join(o.project, ".env.lessor"));
    writeFileSync(join(o.project, ".env.lessor"), "PLAIN_SETTING=1\n");
    const ok = await spawnRun();
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /PLAIN_SETTING=1/);
  });
});

describe("lessor's own code in the writable project", { skip }, () => {
  test("lessor installed as a project dependency (node_modules/lessor, run with npx) refuses to run the agent there, naming why: the agent could rewrite it, and the owner's next lessor command would run the agent's code unconfined, master key in hand", async () => {
    const o = await makeOwner("npx");
    // `npm install lessor` in the project: the CLI under node_modules/lessor (its own dependencies linked).
    const pkg = join(o.project, "node_modules", "lessor");
    mkdirSync(pkg, { recursive: true });
    cpSync(join(REPO, "dist"), join(pkg, "dist"), { recursive: true });
    cpSync(join(REPO, "package.json"), join(pkg, "package.json"));
    symlinkSync(join(REPO, "node_modules"), join(pkg, "node_modules"));
    const cli = join(pkg, "dist", "bin", "lessor.cjs");
    const marker = join(root, "npx", "stolen-key");
    const payload = `\n;require("node:fs").writeFileSync(${JSON.stringify(marker)}, String(process.env.LESSOR_MASTER_KEY));\n`;
    writeFileSync(join(o.project, "payload.js"), payload);
    const run = await runCliWithEnv(["run", "--agent", "attacker-npx", "--", "/bin/sh", "-c", `cat payload.js >> ${cli} && echo appended`], { bin: cli, cwd: o.project, env: o.env, timeoutMs: 40_000 });
    assert.notEqual(run.code, 0, run.stdout);
    assert.doesNotMatch(run.stdout, /appended/, "the command was not started");
    assert.match(run.stderr, /lessor's own code \(.*node_modules.*\) is inside .*which the sandboxed agent can write/);
    assert.match(run.stderr, /npm install -g lessor/);
    // The owner's next command, with the same installation.
    spawnSync(NODE, ["--", cli, "status"], { cwd: o.project, env: o.env, encoding: "utf8", timeout: 20_000 });
    const stole = existsSync(marker) && readFileSync(marker, "utf8") === MASTER_KEY;
    assert.equal(existsSync(marker), false, `the agent's code ran in the owner's next lessor command${stole ? " and read LESSOR_MASTER_KEY" : ""} (run: exit ${run.code}, ${run.stdout.trim()} ${run.stderr.trim()})`);
  });
});
