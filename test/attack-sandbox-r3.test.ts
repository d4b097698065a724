/**
 * Sandbox, third review round (a review helper's findings): a git config file the repository's
 * config includes from a directory the agent can write (its core.fsmonitor runs as the owner at the
 * next git status), credentials in the owner's environment under names and shapes the filter missed,
 * and well-known credential stores missing from the default hide list. Real lessor run, bwrap, git.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { spawnSync } from "node:child_process";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { withheldReason } from "../src/sandbox/env.js";
import { planGlobalGit } from "../src/sandbox/git-guard.js";
import { ATTACKERS_POLICY, HAVE_BWRAP, git, gitInit, gitOk, makeOwner as newOwner, runAgent } from "./run-harness.js";

const skip = !HAVE_BWRAP ? "bwrap is not installed or user namespaces are off" : false;
const root = mkdtempSync(join(tmpdir(), "lessor-review-r3-sbx-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const MASTER_KEY = randomBytes(32).toString("hex");
const makeOwner = (name: string, config?: string) =>
  newOwner({ root, name, masterKey: MASTER_KEY, policy: ATTACKERS_POLICY, secrets: [{ name: "granted", value: "gv" }], ...(config ? { config } : {}) });

/** The agent's script: appends a core.fsmonitor that writes `marker` to `file` (relative to the project); says planted or refused. */
const plantFsmonitor = (file: string, marker: string): string =>
  `(printf '[core]\\n\\tfsmonitor = "echo ran-as-owner >> ${marker}; false"\\n' >> ${file} && echo planted) 2>/dev/null || echo refused`;

describe("git configuration the owner's .git/config includes from the worktree", { skip }, () => {
  test("attack: .git/config has include.path = ../.gitconfig (a shared, committed repo config): the agent writes core.fsmonitor there and the owner's next git status runs it", async () => {
    const o = await makeOwner("include-path");
    gitInit(o.project);
    writeFileSync(join(o.project, ".gitconfig"), "[alias]\n\tst = status\n");
    gitOk(o.project, "config", "--local", "include.path", "../.gitconfig");
    const marker = join(o.base, "fsmonitor-ran");
    const r = await runAgent(o.project, o.env, "attacker-include", [], plantFsmonitor(".gitconfig", marker));
    assert.equal(r.code, 0, r.stderr);
    // The owner, later, outside the sandbox.
    git(o.project, "status", "--porcelain");
    assert.ok(!existsSync(marker), `the agent's core.fsmonitor, in a file .git/config includes, ran as the owner outside the sandbox (${marker}); agent said: ${r.stdout}`);
  });

  test("attack: an includeIf path that does not exist yet, in the project: the agent cannot create it, and the empty file made for the run is gone after it", async () => {
    const o = await makeOwner("include-missing");
    gitInit(o.project);
    gitOk(o.project, "config", "--local", "includeIf.gitdir:/.path", "../.gitconfig-local");
    const marker = join(o.base, "fsmonitor-ran-2");
    const r = await runAgent(o.project, o.env, "attacker-include", [], `${plantFsmonitor(".gitconfig-local", marker)}; rm -f .gitconfig-local 2>/dev/null; mv .gitconfig-local x 2>/dev/null; true`);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /refused/);
    assert.ok(!existsSync(join(o.project, ".gitconfig-local")), "the empty file made for the run was left behind");
    git(o.project, "status", "--porcelain");
    assert.ok(!existsSync(marker), "the agent's core.fsmonitor ran as the owner");
  });

  test("an include reached through a symbolic link in the project refuses the run (the agent could point the link at its own file)", async () => {
    const o = await makeOwner("include-link");
    gitInit(o.project);
    mkdirSync(join(o.project, "conf"));
    writeFileSync(join(o.project, "conf", "shared"), "[alias]\n\tst = status\n");
    symlinkSync("conf", join(o.project, "conf-link"));
    gitOk(o.project, "config", "--local", "include.path", "../conf-link/shared");
    const r = await runAgent(o.project, o.env, "attacker-include", [], "echo started");
    assert.notEqual(r.code, 0);
    assert.doesNotMatch(r.stdout, /started/);
    assert.match(r.stderr, /runs through the symbolic link \S*conf-link in a directory the sandboxed agent can write/);
  });

  test("an included file that itself sets core.hooksPath into the project: the hooks directory is kept from the agent too", async () => {
    const o = await makeOwner("include-hookspath");
    gitInit(o.project);
    writeFileSync(join(o.project, ".gitconfig"), "[core]\n\thooksPath = githooks\n");
    gitOk(o.project, "config", "--local", "include.path", "../.gitconfig");
    const r = await runAgent(o.project, o.env, "attacker-include", [], "(mkdir -p githooks && printf '#!/bin/sh\\necho hooked\\n' > githooks/pre-commit && echo planted) 2>/dev/null || echo refused");
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /refused/);
    assert.equal(existsSync(join(o.project, "githooks", "pre-commit")), false);
    assert.equal(readFileSync(join(o.project, ".gitconfig"), "utf8"), "[core]\n\thooksPath = githooks\n");
  });

  test("attack: a linked worktree's config.worktree includes a file in the project", async () => {
    const o = await makeOwner("wt-include");
    gitInit(o.project);
    const wt = join(o.base, "wt");
    gitOk(o.project, "worktree", "add", "-q", wt);
    gitOk(o.project, "config", "extensions.worktreeConfig", "true");
    writeFileSync(join(o.project, ".wt.gitconfig"), "[alias]\n\tst = status\n");
    gitOk(wt, "config", "--worktree", "include.path", join(o.project, ".wt.gitconfig"));
    const marker = join(o.base, "fsmonitor-ran-wt");
    const r = await runAgent(o.project, o.env, "attacker-include", [], plantFsmonitor(".wt.gitconfig", marker));
    assert.equal(r.code, 0, r.stderr);
    git(wt, "status", "--porcelain");
    assert.ok(!existsSync(marker), `core.fsmonitor planted by the agent ran as the owner in the linked worktree (agent: ${r.stdout.trim()})`);
  });

  /** The owner's git with their global config (HOME), outside the sandbox, in another repository. */
  const ownerGitIn = (home: string, cwd: string, ...args: string[]) =>
    spawnSync("git", ["-c", "safe.directory=*", ...args], { cwd, env: { PATH: "/usr/bin:/bin", HOME: home, GIT_CONFIG_NOSYSTEM: "1" }, encoding: "utf8" });

  for (const how of ["includes a file in the project", "is a dotfiles symlink into the project"] as const) {
    test(`attack: the owner's global ~/.gitconfig ${how}; the agent writes core.fsmonitor there, which any repository's git would run`, async () => {
      const o = await makeOwner(`global-${how.startsWith("is") ? "link" : "include"}`);
      gitInit(o.project);
      if (how === "includes a file in the project") {
        writeFileSync(join(o.project, ".gitconfig-shared"), "[alias]\n\tst = status\n");
        writeFileSync(join(o.home, ".gitconfig"), "[include]\n\tpath = ~/project/.gitconfig-shared\n");
      } else {
        writeFileSync(join(o.project, ".gitconfig-shared"), "[user]\n\tname = o\n");
        symlinkSync(join(o.project, ".gitconfig-shared"), join(o.home, ".gitconfig"));
      }
      const marker = join(o.base, `fsmonitor-ran-global-${how.length}`);
      const r = await runAgent(o.project, o.env, "attacker-include", [], plantFsmonitor(".gitconfig-shared", marker));
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /refused/);
      const other = join(o.base, "other-repo");
      mkdirSync(other);
      gitInit(other);
      ownerGitIn(o.home, other, "status", "--porcelain");
      assert.ok(!existsSync(marker), "core.fsmonitor planted by the agent ran as the owner");
    });
  }

  test("a global git config that includes a file the agent could create in the project refuses the run", async () => {
    const o = await makeOwner("global-missing");
    gitInit(o.project);
    writeFileSync(join(o.home, ".gitconfig"), '[includeIf "gitdir:~/project/"]\n\tpath = ~/project/.gitconfig-work\n');
    const r = await runAgent(o.project, o.env, "attacker-include", [], "echo started");
    assert.notEqual(r.code, 0);
    assert.doesNotMatch(r.stdout, /started/);
    assert.match(r.stderr, /\.gitconfig-work \(an included git config\), which does not exist, in a directory the sandboxed agent can write/);
  });

  /** The agent plants core.fsmonitor in the project's .gitconfig-shared, which `setup` makes the owner's git include; then the owner's git runs in another repository. */
  const attackThrough = async (name: string, setup: (o: Awaited<ReturnType<typeof makeOwner>>) => Record<string, string>): Promise<{ stdout: string; ran: boolean }> => {
    const o = await makeOwner(name);
    gitInit(o.project);
    writeFileSync(join(o.project, ".gitconfig-shared"), "[alias]\n\tst = status\n");
    const extra = setup(o);
    const marker = join(o.base, "fsmonitor-ran");
    const r = await runAgent(o.project, { ...o.env, ...extra }, "attacker-include", [], plantFsmonitor(".gitconfig-shared", marker));
    const other = join(o.base, "other-repo");
    mkdirSync(other);
    gitInit(other);
    spawnSync("git", ["-c", "safe.directory=*", "status", "--porcelain"], { cwd: other, env: { PATH: "/usr/bin:/bin", HOME: o.home, ...extra }, encoding: "utf8" });
    return { stdout: r.stdout + r.stderr, ran: existsSync(marker) };
  };

  test("attack: ~/.gitconfig is a dotfiles symlink with a relative include, which git resolves from the link's directory (~), not the file's", async () => {
    const { stdout, ran } = await attackThrough("rel-link", (o) => {
      mkdirSync(join(o.home, "dotfiles"));
      writeFileSync(join(o.home, "dotfiles", "gitconfig"), "[include]\n\tpath = project/.gitconfig-shared\n");
      symlinkSync("dotfiles/gitconfig", join(o.home, ".gitconfig"));
      return { GIT_CONFIG_NOSYSTEM: "1" };
    });
    assert.ok(!ran, `the agent's core.fsmonitor ran as the owner (${stdout.trim()})`);
  });

  test("attack: ~/.gitconfig includes ~USER/project/… (git expands ~user from the password database)", { skip: process.getuid?.() === 0 ? false : "needs root to add a user" }, async () => {
    const user = `lrev${randomBytes(3).toString("hex")}`;
    let made = false;
    try {
      const { stdout, ran } = await attackThrough("tilde-user", (o) => {
        const u = spawnSync("useradd", ["-M", "-d", o.home, "-s", "/bin/false", user]);
        assert.equal(u.status, 0, String(u.stderr));
        made = true;
        writeFileSync(join(o.home, ".gitconfig"), `[include]\n\tpath = ~${user}/project/.gitconfig-shared\n`);
        return { GIT_CONFIG_NOSYSTEM: "1" };
      });
      assert.ok(!ran, `the agent's core.fsmonitor ran as the owner (${stdout.trim()})`);
    } finally {
      if (made) spawnSync("userdel", [user]);
    }
  });

  test("attack: the system git config ($GIT_CONFIG_SYSTEM, as /etc/gitconfig) includes a file in the project", async () => {
    const { stdout, ran } = await attackThrough("system-inc", (o) => {
      const sys = join(o.base, "system-gitconfig");
      writeFileSync(sys, `[include]\n\tpath = ${join(o.project, ".gitconfig-shared")}\n`);
      return { GIT_CONFIG_SYSTEM: sys };
    });
    assert.ok(!ran, `the agent's core.fsmonitor ran as the owner (${stdout.trim()})`);
  });
});

describe("credentials in the owner's environment that pass to the agent", { skip }, () => {
  const PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ" + randomBytes(8).toString("hex") + "\n-----END OPENSSH PRIVATE KEY-----";
  const cases: Record<string, string> = {
    // A private key under a name with no credential word (CI secrets: DEPLOY_KEY, SSH_KEY, SIGNING_KEY).
    DEPLOY_KEY: PEM,
    // Terraform's google provider reads the service account's JSON from this variable.
    GOOGLE_CLOUD_KEYFILE_JSON: JSON.stringify({ type: "service_account", private_key: "-----BEGIN PRIVATE KEY-----\nMIIE" + randomBytes(8).toString("hex") + "\n-----END PRIVATE KEY-----\n" }),
    // Password managers' CLI session keys: Bitwarden's unlocks the local vault, 1Password's is a session.
    BW_SESSION: randomBytes(48).toString("base64"),
    OP_SESSION_my: randomBytes(32).toString("base64url"),
    // npm's basic auth (`_auth`, base64 of user:password) and Yarn Berry's npmAuthIdent (user:password).
    NPM_CONFIG__AUTH: Buffer.from(`ci:${randomBytes(8).toString("hex")}`).toString("base64"),
    YARN_NPM_AUTH_IDENT: `ci:${randomBytes(8).toString("hex")}`,
  };
  for (const [name, value] of Object.entries(cases)) {
    test(`attack: the owner's ${name} reaches the agent (docs/sandbox.md: plain credentials from the environment are withheld)`, async () => {
      const o = await makeOwner(`env-${name.toLowerCase()}`);
      const r = await runAgent(o.project, { ...o.env, [name]: value }, "attacker-env", [], `printenv ${name} || echo absent`);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /absent/, `${name} reached the agent:\n${r.stdout.slice(0, 300)}`);
    });
  }
});

describe("the home shown read-only: well-known credential stores not on the default list", { skip }, () => {
  const STORES: Record<string, string> = {
    // podman/buildah/skopeo registry logins (Docker's ~/.docker/config.json is covered)
    ".config/containers/auth.json": '{"auths":{"quay.io":{"auth":"CANARY"}}}',
    // Docker's TLS client key for a remote daemon (DOCKER_CERT_PATH's default directory)
    ".docker/key.pem": "-----BEGIN RSA PRIVATE KEY-----\nCANARY\n-----END RSA PRIVATE KEY-----\n",
    // GitHub Copilot's OAuth token (editors' Copilot plugins, copilot.vim, the Copilot CLI)
    ".config/github-copilot/apps.json": '{"github.com:Iv1":{"oauth_token":"CANARY"}}',
    // Maven and Gradle repository passwords, RubyGems' API key
    ".m2/settings.xml": "<settings><servers><server><password>CANARY</password></server></servers></settings>",
    ".gradle/gradle.properties": "ossrhPassword=CANARY\n",
    ".gem/credentials": "---\n:rubygems_api_key: CANARY\n",
    // Terraform's older credentials file, hub's and glab's tokens, Yarn Berry's and Composer's auth
    ".terraformrc": 'credentials "app.terraform.io" { token = "CANARY" }\n',
    ".config/hub": "github.com:\n- oauth_token: CANARY\n",
    ".config/glab-cli/config.yml": "hosts:\n  gitlab.com:\n    token: CANARY\n",
    ".yarnrc.yml": 'npmAuthToken: "CANARY"\n',
    ".config/composer/auth.json": '{"github-oauth":{"github.com":"CANARY"}}',
    // rclone's remotes, s3cmd's and boto's keys, OCI's API key config
    ".config/rclone/rclone.conf": "[s3]\nsecret_access_key = CANARY\n",
    ".s3cfg": "[default]\nsecret_key = CANARY\n",
    ".boto": "[Credentials]\naws_secret_access_key = CANARY\n",
    ".oci/config": "[DEFAULT]\nkey_file=~/.oci/key.pem\nfingerprint=CANARY\n",
    // Password managers' CLI state
    ".config/Bitwarden CLI/data.json": '{"CANARY":1}',
    ".config/op/config": '{"accounts":[{"CANARY":1}]}',
    // Shell history (tokens typed or pasted on command lines)
    ".bash_history": "export GITHUB_TOKEN=CANARY\n",
  };
  test("run from the home with [run] project = \"read-only\": each of these is readable by the agent", async () => {
    const o = await makeOwner("home-stores", '\n[run]\nproject = "read-only"\n');
    const canaries: Record<string, string> = {};
    for (const [rel, text] of Object.entries(STORES)) {
      const c = `canary-${randomBytes(6).toString("hex")}`;
      canaries[rel] = c;
      mkdirSync(dirname(join(o.home, rel)), { recursive: true });
      writeFileSync(join(o.home, rel), text.replace("CANARY", c), { mode: 0o600 });
    }
    const script = Object.keys(STORES).map((rel) => `cat "$HOME/${rel}" 2>/dev/null; echo`).join("; ");
    const r = await runAgent(o.home, o.env, "attacker-home", [], script);
    assert.equal(r.code, 0, r.stderr);
    const read = Object.entries(canaries).filter(([, c]) => r.stdout.includes(c)).map(([rel]) => `~/${rel}`);
    assert.deepEqual(read, [], `the agent read these credential stores of the owner's: ${read.join(", ")}`);
  });
});

describe("the environment filter on its own (src/sandbox/env.ts withheldReason)", () => {
  const PGP = "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQVYBGXabcABDADx0k3y9Zq+armored+body\n=AbCd\n-----END PGP PRIVATE KEY BLOCK-----\n";
  for (const name of ["ORG_GRADLE_PROJECT_signingKey", "GPG_SIGNING_KEY", "MAVEN_GPG_KEY", "SIGNING_KEY"])
    test(`${name} holding a PGP private key is withheld`, () => assert.equal(withheldReason(name, PGP), "credential"));
  // Gradle's documented way to pass project properties from the environment: ORG_GRADLE_PROJECT_<camelCase>.
  for (const name of ["ORG_GRADLE_PROJECT_signingPassword", "ORG_GRADLE_PROJECT_mavenCentralPassword", "ORG_GRADLE_PROJECT_sonatypeToken"])
    test(`${name} (a camelCase credential word) is withheld`, () => assert.equal(withheldReason(name, "correct horse battery staple"), "credential"));
  test("public keys, and names that only hold a credential word inside another, pass", () => {
    assert.equal(withheldReason("SIGNING_PUBKEY", "-----BEGIN PGP PUBLIC KEY BLOCK-----\nabc\n-----END PGP PUBLIC KEY BLOCK-----\n"), null);
    assert.equal(withheldReason("TLS_PUB", "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n"), null);
    assert.equal(withheldReason("tokenizerParallelism", "true"), null);
    assert.equal(withheldReason("TOKENIZERS_PARALLELISM", "false"), null);
    assert.equal(withheldReason("ORG_GRADLE_PROJECT_signingKeyId", "ABCDEF12"), null);
  });
});

describe("the git guard on its own (src/sandbox/git-guard.ts planGlobalGit)", () => {
  test("one config file git opens by two paths (~/.gitconfig links to it, $GIT_CONFIG_GLOBAL names it) is followed for each: a missing relative include next to the real one, in the writable project, refuses the run", () => {
    const dir = realpathSync(mkdtempSync(join(tmpdir(), "lessor-git-seen-")));
    try {
      const home = join(dir, "home");
      const project = join(home, "dotfiles"); // the owner runs the agent in the dotfiles repository
      mkdirSync(project, { recursive: true });
      writeFileSync(join(project, "gitconfig"), "[include]\n\tpath = gitconfig.local\n");
      symlinkSync("dotfiles/gitconfig", join(home, ".gitconfig"));
      const env = { GIT_CONFIG_GLOBAL: join(project, "gitconfig"), GIT_CONFIG_NOSYSTEM: "1" };
      const writable = (p: string) => p === project || p.startsWith(project + "/");
      // What the owner's git would read once the agent wrote gitconfig.local:
      writeFileSync(join(project, "gitconfig.local"), "[core]\n\tfsmonitor = touch /tmp/x\n");
      const g = spawnSync("git", ["config", "--show-origin", "core.fsmonitor"], { cwd: dir, env: { PATH: "/usr/bin:/bin", HOME: home, ...env }, encoding: "utf8" });
      assert.match(g.stdout, /gitconfig\.local.*touch \/tmp\/x/, `git: ${g.stdout}${g.stderr}`);
      rmSync(join(project, "gitconfig.local"));
      assert.throws(() => planGlobalGit(writable, home, env), /gitconfig\.local \(an included git config\), which does not exist/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a relative include with .. after a symbolic link is guarded where the kernel finds it, not where the text folds it", () => {
    const dir = realpathSync(mkdtempSync(join(tmpdir(), "lessor-git-dotdot-")));
    try {
      const home = join(dir, "home");
      const code = join(home, "code"); // the agent's writable workspace
      mkdirSync(join(code, "dotfiles", "git"), { recursive: true });
      symlinkSync(join(code, "dotfiles"), join(home, "dotfiles"));
      writeFileSync(join(home, ".gitconfig"), "[include]\n\tpath = ~/dotfiles/git/extra\n");
      writeFileSync(join(code, "dotfiles", "git", "extra"), "[include]\n\tpath = ../../local.gitconfig\n");
      const env = { GIT_CONFIG_NOSYSTEM: "1" };
      const writable = (p: string) => p === code || p.startsWith(code + "/");
      // What the owner's git reads once the agent wrote it: ~/code/local.gitconfig, not ~/local.gitconfig.
      writeFileSync(join(code, "local.gitconfig"), "[core]\n\tfsmonitor = touch /tmp/x\n");
      const g = spawnSync("git", ["config", "--show-origin", "core.fsmonitor"], { cwd: dir, env: { PATH: "/usr/bin:/bin", HOME: home, ...env }, encoding: "utf8" });
      assert.match(g.stdout, /dotfiles\/git\/\.\.\/\.\.\/local\.gitconfig.*touch \/tmp\/x/, `git: ${g.stdout}${g.stderr}`);
      assert.ok(planGlobalGit(writable, home, env).readOnly.includes(join(code, "local.gitconfig")), "an existing one is shown read-only");
      rmSync(join(code, "local.gitconfig"));
      assert.throws(() => planGlobalGit(writable, home, env), /local\.gitconfig \(an included git config\), which does not exist, in a directory the sandboxed agent can write/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
