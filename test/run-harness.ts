/**
 * What the `lessor run` attack tests share: a fake owner (a home with ~/.lessor on the env key and a
 * project directory in it), `lessor run … -- sh -c SCRIPT` started as that owner would, and the
 * owner's own git outside any sandbox.
 *
 * The owner's environment is exactly what `makeOwner` returns (no PATH or HOME of the test's): the
 * passwd-like HOME decides the sandbox's layout.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import assert from "node:assert/strict";
import { initHome, openVault } from "../src/config/open-vault.js";
import type { StoreSecretParams } from "../src/vault/secrets.js";
import { runCliWithEnv, type CliResult } from "./cli-harness.js";

export const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"]).status === 0;

/** A policy for hostile agents: every agent named attacker* may use the secret "granted" on any domain. */
export const ATTACKERS_POLICY = `
[[rule]]
name = "attackers"
effect = "allow"
agents = ["attacker*"]
secrets = ["granted"]
any_domain = true
`;

export interface Owner {
  /** root/name: room for the test's own files next to the owner's home. */
  base: string;
  home: string;
  project: string;
  lessorHome: string;
  /** lessor's environment as the owner starts it: PATH=/usr/bin:/bin, HOME, NO_COLOR, LESSOR_HOME, LESSOR_MASTER_KEY. */
  env: Record<string, string>;
}

/**
 * A fake owner under `root`/`name`: home/, its ~/.lessor (or `lessorHome(home, project)`) initialised
 * with the env key `masterKey`, and home/project/. `policy` is written as policy.toml, `config` appended
 * to lessor.toml, and `secrets` stored through the vault itself.
 */
export async function makeOwner(o: {
  root: string;
  name: string;
  masterKey: string;
  policy?: string;
  config?: string;
  secrets?: StoreSecretParams[];
  lessorHome?: (home: string, project: string) => string;
}): Promise<Owner> {
  const base = join(o.root, o.name);
  const home = join(base, "home");
  const project = join(home, "project");
  mkdirSync(project, { recursive: true });
  const lessorHome = o.lessorHome ? o.lessorHome(home, project) : join(home, ".lessor");
  const env = { LESSOR_HOME: lessorHome, LESSOR_MASTER_KEY: o.masterKey };
  await initHome({ home: lessorHome, env, keySource: "env" });
  if (o.policy !== undefined) writeFileSync(join(lessorHome, "policy.toml"), o.policy, { mode: 0o600 });
  if (o.config) writeFileSync(join(lessorHome, "lessor.toml"), readFileSync(join(lessorHome, "lessor.toml"), "utf8") + o.config, { mode: 0o600 });
  if (o.secrets?.length) {
    const vault = await openVault({ home: lessorHome, env });
    try {
      for (const s of o.secrets) await vault.admin().storeSecret(s);
    } finally {
      await vault.close();
    }
  }
  return { base, home, project, lessorHome, env: { PATH: "/usr/bin:/bin", HOME: home, NO_COLOR: "1", ...env } };
}

/** `lessor run --agent AGENT EXTRA -- /bin/sh -c SCRIPT` from `cwd` with exactly `env`, as the owner would start it. */
export function runAgent(cwd: string, env: Record<string, string>, agent: string, extra: string[], script: string, timeoutMs = 40_000): Promise<CliResult> {
  return runCliWithEnv(["run", "--agent", agent, ...extra, "--", "/bin/sh", "-c", script], { cwd, env, timeoutMs });
}

const GIT_ENV = { PATH: "/usr/bin:/bin", HOME: "/nonexistent", GIT_CONFIG_NOSYSTEM: "1", GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@t", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@t" };

/** The owner's git, outside any sandbox (no user or system config; file:// submodules allowed). */
export function git(cwd: string, ...args: string[]) {
  return spawnSync("git", ["-c", "safe.directory=*", "-c", "protocol.file.allow=always", "-c", "init.defaultBranch=main", ...args], { cwd, env: GIT_ENV, encoding: "utf8", timeout: 15_000 });
}

/** The owner's git; the test fails unless it exits 0. */
export function gitOk(cwd: string, ...args: string[]): void {
  const r = git(cwd, ...args);
  assert.equal(r.status, 0, `git ${args.join(" ")}: ${r.stderr}`);
}

/** A repository at `dir` with one commit (README), made by the owner's git. */
export function gitInit(dir: string): void {
  gitOk(dir, "init", "-q");
  writeFileSync(join(dir, "README"), "the project\n");
  gitOk(dir, "add", "README");
  gitOk(dir, "commit", "-qm", "init");
}

/** A shell line writing an executable script at `path` that appends a line to `marker` when run. */
export const plantScript = (path: string, marker: string): string => `printf '#!/bin/sh\\necho ran >> ${marker}\\n' > ${path} && chmod 755 ${path}`;

/**
 * Shell lines, run in the project, making the agent's own git directory evil-common/: a copy of the
 * repository's objects, refs and HEAD, with a config whose core.fsmonitor is `evil` (git runs it on status).
 */
export const evilCommonDir = (evil: string): string[] => [
  "mkdir -p evil-common/hooks && cp -r .git/objects .git/refs evil-common/ && cp .git/HEAD evil-common/",
  `printf '[core]\\n\\trepositoryformatversion = 0\\n\\tbare = false\\n\\tfsmonitor = ${evil}\\n' > evil-common/config`,
];
