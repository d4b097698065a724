/**
 * A git repository in a writable directory the sandbox shows (the project, a `[run] write` path):
 * the agent may commit there, but what the owner's git runs later, outside the sandbox, must not be
 * the agent's. Git runs hooks and commands named in its configuration (`core.fsmonitor`,
 * `core.hooksPath`, filters…), so the sandbox keeps these read-only or out of the agent's reach, in
 * the repository's git directory and in each git directory git keeps inside it for the owner's
 * submodules (`.git/modules/…`, nested ones too):
 *
 * - `config` (and `config.worktree`, when there is one) and the hooks directory read-only; a hooks
 *   directory the repository does not have yet becomes an empty read-only one (so the agent cannot
 *   create it); a symlinked `hooks` has its target shown read-only, and `core.hooksPath` too when it
 *   points into a writable directory;
 * - each git directory bound onto itself (the directories between it and `.git` are mount points too,
 *   read-only ones: below), so that none can be renamed away and replaced with one of the agent's (the
 *   read-only mounts would move with it); a linked worktree's admin directory likewise;
 * - a `.git` file (a linked worktree or a submodule: `gitdir: …`) read-only, so it cannot be pointed at
 *   a git directory of the agent's: the project's own, and each of the owner's submodules' (found from
 *   their git directories' `core.worktree`), with the directories above it pinned;
 * - for each linked worktree of the repository (`.git/worktrees/NAME`, whose checkout may be outside
 *   the sandbox), its `commondir`, `gitdir` and `config.worktree` read-only: `commondir` says where
 *   that worktree's git finds its config and hooks; and its checkout's `.git` file, when that lies in a
 *   writable directory, read-only with the directories above it pinned (as a submodule checkout's);
 * - `worktrees` and `modules` themselves (and the directories between `modules` and a submodule's git
 *   directory) shown read-only, made before the pins inside them, so the agent can add no new entry:
 *   a new `worktrees/NAME` would be a git directory of its own that a checkout's `.git` file (or a
 *   `git worktree` command of the owner's) follows, and a new `modules/NAME` one that the owner's
 *   `git submodule update` adopts for a submodule `.gitmodules` names. A missing one is sealed (an
 *   empty read-only directory, removed after the run); a symlinked one refuses the run (a link cannot
 *   be made read-only: bwrap follows it). What git inside does there fails (`git worktree add`,
 *   `git submodule update` of a submodule not yet cloned: "Read-only file system"); the existing
 *   worktrees' and submodules' git directories stay writable;
 * - `commondir` in a repository's or submodule's own git directory (git never makes one there; it
 *   redirects git to another directory's config and hooks, and it cannot be made read-only in advance
 *   without breaking git inside) is moved aside before the run (one left by a run that was killed)
 *   and after it, and so is a new `config.worktree`; a swapped `hooks` symlink is put back; and an
 *   entry of `worktrees` or `modules` that was not there before the run is moved to
 *   `worktrees.lessor-quarantine/` or `modules.lessor-quarantine/` ({@link checkGitAfterRun}).
 *
 * Not covered (docs/sandbox.md, "What is not protected"): nested repositories and gitlinks the agent
 * adds to the index, which `git status` at the root enters and whose own configuration it honours.
 */
import { accessSync, constants, existsSync, lstatSync, statSync, mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync, renameSync, rmSync, symlinkSync, type Stats } from "node:fs";
import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { VaultError } from "../base/errors.js";
import { assertSafeAncestors, octal, programTrustProblem } from "../fs/perms.js";
import { othersMayWrite } from "../fs/private-group.js";

/** What is recorded about a git directory before the run, to check after it. */
export interface GitGuard {
  /** The git directory (a repository's `.git`, or a submodule's under `.git/modules`). */
  gitDir: string;
  /** Files that did not exist, shown as empty read-only ones: removed after the run if still empty (src/sandbox/run-holds.ts). */
  sealedFiles: string[];
  /**
   * Files at the same places that were there but empty: perhaps another live run's {@link sealedFiles},
   * which no run removes while this one lives (src/sandbox/run-holds.ts: removing it would detach this
   * sandbox's read-only mount on it). Each of these and of {@link sealedFiles} that is not an empty
   * file after the run is moved aside all the same.
   */
  emptyFiles: string[];
  /** The `hooks` symlink's text, when it is one. */
  hooksLink: string | null;
  /**
   * Directories where nothing new may appear (`worktrees`, `modules` and the directories between
   * `modules` and a submodule's git directory), with the names they held before the run.
   */
  listed: { dir: string; names: string[] }[];
  /** Of those, the ones that did not exist (sealed): bwrap made them to mount on, removed after the run if empty (src/sandbox/run-holds.ts). */
  sealedDirs: string[];
}

/** The mounts that guard one repository (see the file's comment). */
export interface GitPlan {
  /** Bound onto themselves, writable: mount points the agent cannot rename or remove. */
  pinned: string[];
  /** Shown read-only (existing paths). */
  readOnly: string[];
  /**
   * Existing directories shown read-only so that nothing new can be made in them, mounted with the
   * pins in order of depth: the pins inside them (the git directories they hold) stay writable.
   */
  locked: string[];
  /** Missing paths made empty read-only directories (bwrap leaves an empty directory behind). */
  sealed: string[];
  /** Missing files shown as empty read-only ones (bwrap makes an empty file for the mount). */
  sealedFiles: string[];
  /** One per git directory guarded, to check after the run (and before it: {@link checkGitAfterRun}). */
  guards: GitGuard[];
  /** Directories looked at under `modules` directories so far. */
  walked: number;
  /**
   * Relative `core.hooksPath` values of the global, system and environment configs
   * ({@link planGlobalGit}): every repository's git resolves them in its own checkout.
   */
  relativeHooks?: string[];
}

function lst(p: string): Stats | null {
  try {
    return lstatSync(p, { throwIfNoEntry: false }) ?? null;
  } catch {
    return null; // ENOTDIR, EACCES: nothing git could use either
  }
}

function realOrNull(p: string): string | null {
  try {
    // The kernel's own resolution: Node's JavaScript realpath applies a `..` in a link's target as
    // text, before following the link it comes after.
    return realpathSync.native(p);
  } catch {
    return null;
  }
}

/**
 * The git program lessor runs to read configs the way git does. It runs as the owner, unconfined,
 * before the sandbox exists, so it is never one the agent could have put in place: the first `git` on
 * PATH in an absolute directory that the sandbox does not let the agent write (an activated
 * virtualenv's `bin` or a direnv `PATH_add` in the project is skipped, as a link into one is), and
 * that no other user can change (src/fs/perms.ts programTrustProblem). Chosen by {@link chooseGit}
 * once planLayout knows what is writable; until then, /usr/bin/git.
 */
let gitProgram = "/usr/bin/git";
/** A `git` on PATH that chooseGit could not trust (the owner's git, which the guard cannot stand in for), or null. */
let untrustedGit: string | null = null;

/** Chooses {@link gitProgram} from `pathEnv` (the owner's PATH); returns it, or null when none qualifies. */
export function chooseGit(pathEnv: string | undefined, writable: (p: string) => boolean): string | null {
  untrustedGit = null;
  for (const dir of (pathEnv ?? "/usr/bin:/bin").split(":")) {
    if (!isAbsolute(dir)) continue; // relative: the current directory is the project
    const file = join(dir, "git");
    const real = realOrNull(file);
    if (real !== null) untrustedGit ??= file;
    if (real === null || writable(dir) || writable(file) || writable(real) || writable(realOrNull(dir) ?? dir)) continue;
    try {
      if (!statSync(real).isFile()) continue;
      accessSync(real, constants.X_OK);
      if (programTrustProblem(file, { what: "git", who: "who could run their code as you", elsewhere: "" }) !== null) continue;
      // It must answer as gitConfig runs it (from /, PATH=/usr/bin:/bin): a version manager's shim
      // with no global version fails there, and a failed run reads as "no includes" (fail open).
      if (!answers(file)) continue;
    } catch {
      continue;
    }
    gitProgram = file;
    untrustedGit = null;
    return file;
  }
  gitProgram = "/usr/bin/git";
  const usable = ((): boolean => {
    try {
      accessSync(gitProgram, constants.X_OK);
      return statSync(gitProgram).isFile() && answers(gitProgram);
    } catch {
      return false;
    }
  })();
  if (untrustedGit !== null && !usable)
    throw new VaultError("invalid_request", `the git on your PATH (${untrustedGit}) is one the sandbox could write or another user could change, and there is no other git to read your git configs with before the run (their includes, hooks paths): install git in a directory only you or root can write. The command was not started`);
  return null;
}

/** Whether `git` answers a `git config` the way {@link gitConfig} runs it. */
function answers(git: string): boolean {
  const r = spawnSync(git, ["config", "--file", "/dev/null", "--list"], { cwd: "/", encoding: "utf8", env: { PATH: "/usr/bin:/bin", GIT_CEILING_DIRECTORIES: "/", GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null", HOME: "/nonexistent" }, timeout: 10_000 });
  return r.error === undefined && r.status === 0;
}

/** Runs `git config …` with {@link gitProgram}, from `/` (no repository around it is discovered). */
function gitConfig(args: string[], env: NodeJS.ProcessEnv): SpawnSyncReturns<string> {
  return spawnSync(gitProgram, ["config", ...args], { cwd: "/", encoding: "utf8", env: { PATH: "/usr/bin:/bin", GIT_CEILING_DIRECTORIES: "/", ...env }, timeout: 10_000 });
}

/**
 * The values of `key` in the git config file `file` as git reads them (its own parser: comments,
 * quoting, continuation lines, a key on its section's line), last one last; none when git is not
 * installed (the owner's git cannot read the file either) or the file sets none.
 */
function configValues(file: string, key: string, home: string | null): string[] {
  const r = gitConfig(["--file", file, "--null", "--get-all", key], { GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null", HOME: home ?? "/nonexistent" });
  if (r.error !== undefined || typeof r.stdout !== "string") return [];
  return r.stdout.split("\0").filter((v) => v !== "");
}

/** `core.<key>` of the git config file `file` (the last one set), or null. */
function coreValue(file: string, key: string, home: string | null): string | null {
  return configValues(file, `core.${key}`, home).at(-1) ?? null;
}

/** Whether `p` is `dir` or inside it. */
function within(p: string, dir: string): boolean {
  return p === dir || p.startsWith(dir.endsWith(sep) ? dir : dir + sep);
}

/** A plain file or directory at `p` (not a link), as lstat sees it, or null. */
function plain(p: string): Stats | null {
  const st = lst(p);
  return st === null || st.isSymbolicLink() ? null : st;
}

/** The directories from `top` (excluded) down to `p` (included). */
function dirsBetween(top: string, p: string): string[] {
  const out: string[] = [];
  for (let d = p; d !== top && within(d, top); d = dirname(d)) out.unshift(d);
  return out;
}

/**
 * Limits of the walk for submodule git directories: how deep under one `modules` directory, how many
 * git directories per repository, how many directories looked at. Past one, the run is refused: a
 * git directory left unguarded would be a way out (an agent can plant decoys to reach a limit).
 */
const MAX_MODULE_DEPTH = 16;
const MAX_GIT_DIRS = 256;
const MAX_DIRS_WALKED = 4096;

/**
 * The guards for the repository at `dir/.git`, `dir` being a writable directory the sandbox shows;
 * `writable(p)` says whether a real path `p` is inside any writable one.
 */
export function planGit(dir: string, writable: (p: string) => boolean, home: string | null, globalHooks: readonly string[] = []): GitPlan {
  const plan: GitPlan = { pinned: [], readOnly: [], locked: [], sealed: [], sealedFiles: [], guards: [], walked: 0 };
  const gitPath = join(dir, ".git");
  const st = lst(gitPath);
  if (st === null || st.isSymbolicLink()) return plan;
  if (st.isFile()) {
    plan.readOnly.push(gitPath);
    guardLinkedGitDir(plan, gitPath, dir, writable, home, globalHooks);
    return plan;
  }
  if (!st.isDirectory()) return plan;
  plan.pinned.push(gitPath);
  guardGitDir(plan, gitPath, dir, dir, writable, home, globalHooks);
  return plan;
}

/**
 * A `.git` file (`gitdir: …`) naming a git directory in a writable path: the bare-repository-plus-
 * worktrees layout (`gitdir: ./.bare`), or a linked worktree whose main repository is there too. That
 * directory (the common one, when it is a worktree's admin directory) is guarded as a `.git` directory
 * is: pinned, its config, hooks and what they name kept from the agent. One outside the writable paths
 * is shown read-only already.
 */
function guardLinkedGitDir(plan: GitPlan, dotGit: string, workTree: string, writable: (p: string) => boolean, home: string | null, globalHooks: readonly string[]): void {
  let named: string;
  try {
    named = /^gitdir:\s*(.*?)\s*$/m.exec(readFileSync(dotGit, "utf8"))?.[1] ?? "";
  } catch {
    return;
  }
  if (named === "") return;
  const at = physicalPath(isAbsolute(named) ? named : `${workTree}${sep}${named}`, writable, dotGit, "a git directory of its own");
  if (!lst(at)?.isDirectory() || !writable(at)) return;
  let common = at;
  try {
    const c = readFileSync(join(at, "commondir"), "utf8").trim();
    if (c !== "") common = physicalPath(isAbsolute(c) ? c : `${at}${sep}${c}`, writable, join(at, "commondir"), "a git directory of its own");
  } catch {
    // no commondir: the directory is the repository's own
  }
  if (!isGitDir(common) || !writable(common) || plan.guards.some((g) => g.gitDir === common)) return;
  pinWay(plan, common, writable);
  let top = common;
  while (dirname(top) !== top && writable(dirname(top))) top = dirname(top);
  // Its own checkout: this one when the directory is the repository's own, the one `.git` sits in
  // when it is a `.git` (the linked worktrees' checkouts are read from its worktrees/).
  const main = common === at ? workTree : basename(common) === ".git" ? dirname(common) : null;
  guardGitDir(plan, common, main, top, writable, home, globalHooks);
}

/** What {@link guardConfigFile} needs to guard one git directory's config files. */
interface ConfigFiles {
  plan: GitPlan;
  /** The checkouts a relative `core.hooksPath` is resolved in (git resolves it where it runs); none for a global config (any repository's: kept in `relativeHooks`). */
  workTrees: string[];
  /** A global config's relative hooks paths, for every repository to resolve ({@link GitPlan.relativeHooks}). */
  relativeHooks: string[];
  /** The writable directory holding the repository; null for a global config. */
  top: string | null;
  writable: (p: string) => boolean;
  home: string | null;
  /** The git directory's sealed files (removed after the run if still empty); null for a global config: a missing file the agent could make refuses the run. */
  sealedFiles: string[] | null;
  /** The git directory's {@link GitGuard.emptyFiles}; null for a global config. */
  emptyFiles: string[] | null;
  /** Config files guarded already (an include cycle ends). */
  seen: Set<string>;
}

/** How deep git follows includes (its own limit is 10). */
const MAX_INCLUDE_DEPTH = 10;

/**
 * Guards what the git config file `file` (shown read-only, or outside the writable directories)
 * makes the owner's git follow: its `core.hooksPath`, and the files it includes (`include.path`,
 * `includeIf.*.path`, whatever their condition), each in turn: an included file in a writable
 * directory is one the agent could fill with `core.fsmonitor` or `core.hooksPath`, which the owner's
 * next `git status` would run. Each is shown read-only (pinned on its way); a missing one in a writable
 * directory becomes an empty read-only file for the run; one reached through a symbolic link in a
 * writable directory (the agent could point the link elsewhere) refuses the run.
 */
function guardConfigFile(c: ConfigFiles, file: string, depth: number): void {
  // `file` is the path as git opens it (a symlink's, say): a relative include in it is resolved from
  // that path's directory, not the real one. So one file reached by two paths is guarded for each:
  // its relative includes may name two different files.
  if (c.seen.has(file) || depth > MAX_INCLUDE_DEPTH) return;
  c.seen.add(file);
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return; // unreadable: git could not read it either
  }
  const hp = /hookspath/i.test(text) ? coreValue(file, "hooksPath", c.home) : null;
  if (hp !== null) guardHooksPath(c, hp, file);
  for (const inc of includePaths(file, text, c.home)) guardInclude(c, inc, file, depth);
}

/**
 * Guards the hooks directory `hp` that `from` names (`core.hooksPath`): absolute, or relative to each
 * checkout git may run in (a global config's relative one is kept for every repository to resolve).
 */
function guardHooksPath(c: ConfigFiles, given: string, from: string): void {
  const hp = expandTilde(given, c.home);
  if (hp === null) return;
  if (!isAbsolute(hp) && c.workTrees.length === 0) {
    once(c.relativeHooks, hp);
    return;
  }
  for (const written of isAbsolute(hp) ? [hp] : c.workTrees.map((w) => `${w}${sep}${hp}`)) {
    // Where the kernel finds it; a link on the way in a writable directory refuses the run.
    const abs = physicalPath(written, c.writable, from, "hooks of its own");
    const st = lst(abs);
    if (st !== null && c.writable(abs)) {
      readOnlyInPlace(c.plan, abs, c.writable);
      if (st.isDirectory()) guardHookEntries(c.plan, abs, c.writable);
    } else if (st === null && c.top !== null && within(abs, c.top)) sealInPlace(c.plan, abs, c.top); // the agent could create it
    else if (st === null) refuseCreatable(abs, c.writable, from, "the hooks directory");
  }
}

/**
 * The configuration the owner's environment gives git (`GIT_CONFIG_PARAMETERS`, the form `git -c`
 * passes on, and `GIT_CONFIG_COUNT`/`KEY_n`/`VALUE_n`), as git itself reads it: key and value pairs.
 */
function commandConfig(env: NodeJS.ProcessEnv): { key: string; value: string }[] {
  const given = Object.fromEntries(Object.entries(env).filter(([k]) => k === "GIT_CONFIG_PARAMETERS" || /^GIT_CONFIG_(COUNT|KEY_\d+|VALUE_\d+)$/.test(k)));
  if (Object.keys(given).length === 0) return [];
  const r = gitConfig(["--list", "--no-includes", "--null", "--show-scope"], { GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null", HOME: "/nonexistent", ...given });
  if (r.error !== undefined || typeof r.stdout !== "string") return [];
  const parts = r.stdout.split("\0");
  const out: { key: string; value: string }[] = [];
  for (let i = 0; i + 1 < parts.length; i += 2) {
    if (parts[i] !== "command") continue;
    const nl = parts[i + 1]!.indexOf("\n");
    if (nl > 0) out.push({ key: parts[i + 1]!.slice(0, nl).toLowerCase(), value: parts[i + 1]!.slice(nl + 1) });
  }
  return out;
}

/** Guards the config file `inc` that `from` includes (as git names it), and what it includes in turn. */
function guardInclude(c: ConfigFiles, inc: string, from: string, depth: number): void {
  // Where the kernel finds it: `..` after a symbolic link is the link target's parent, not the text's.
  const at = physicalPath(inc, c.writable, from);
  const st = lst(at);
  if (st?.isFile()) {
    if (st.size === 0 && c.emptyFiles !== null && c.writable(at)) once(c.emptyFiles, at);
    readOnlyInPlace(c.plan, at, c.writable);
    guardConfigFile(c, inc, depth + 1);
  } else if (st === null) {
    const dir = dirname(at);
    if (c.sealedFiles !== null && lst(dir)?.isDirectory() && c.writable(dir)) {
      // The agent could create it: an empty read-only file for the run, its directory pinned.
      pinWay(c.plan, dir, c.writable);
      once(c.sealedFiles, at);
    } else refuseCreatable(at, c.writable, from, "an included git config");
  }
}

/**
 * Refuses the run when `p` (named by the git config `from`; `what` says as what) does not exist and the
 * sandboxed agent could create it: its nearest existing directory is writable inside.
 */
function refuseCreatable(p: string, writable: (p: string) => boolean, from: string, what: string): void {
  let d = dirname(p);
  while (lst(d) === null && dirname(d) !== d) d = dirname(d);
  const r = realOrNull(d);
  if (r === null || !writable(r)) return;
  throw new VaultError(
    "invalid_request",
    `${from} names ${p} (${what}), which does not exist, in a directory the sandboxed agent can write: what it put there would run as you with your next git command. Create it yourself (an included file may be empty) or remove it from ${from}, then run again. The command was not started`,
  );
}

/**
 * The guards for the owner's global git configs (`~/.gitconfig`, `$XDG_CONFIG_HOME/git/config` or
 * `~/.config/git/config`, `$GIT_CONFIG_GLOBAL`) and the system's (`$GIT_CONFIG_SYSTEM` or
 * `/etc/gitconfig`, unless `$GIT_CONFIG_NOSYSTEM`), which every repository's git reads: one that is (or
 * links to) a file in a writable directory, and the files they include there (an `includeIf
 * "gitdir:~/work/"` whose file lies in the project), shown read-only, so the agent cannot give the
 * owner's next git command a `core.fsmonitor` of its own; one the agent could create refuses the run.
 */
export function planGlobalGit(writable: (p: string) => boolean, home: string | null, env: NodeJS.ProcessEnv): GitPlan {
  const plan: GitPlan = { pinned: [], readOnly: [], locked: [], sealed: [], sealedFiles: [], guards: [], walked: 0 };
  if (home === null) return plan;
  const xdg = env["XDG_CONFIG_HOME"] && isAbsolute(env["XDG_CONFIG_HOME"]) ? env["XDG_CONFIG_HOME"] : join(home, ".config");
  const globals = [join(home, ".gitconfig"), join(xdg, "git", "config")];
  const given = env["GIT_CONFIG_GLOBAL"];
  if (given && isAbsolute(given)) globals.push(given);
  // The system's too (every user's git reads it), unless the owner's git is told to skip it.
  if (!env["GIT_CONFIG_NOSYSTEM"]) {
    const sys = env["GIT_CONFIG_SYSTEM"];
    globals.push(sys && isAbsolute(sys) ? sys : "/etc/gitconfig");
  }
  const c: ConfigFiles = { plan, workTrees: [], relativeHooks: [], top: null, writable, home, sealedFiles: null, emptyFiles: null, seen: new Set() };
  for (const g of globals) {
    physicalPath(g, writable, "your git configuration");
    const r = realOrNull(g);
    if (r === null) {
      refuseCreatable(g, writable, "git", "your global git config");
      continue;
    }
    readOnlyInPlace(plan, r, writable);
    guardConfigFile(c, g, 0);
  }
  // Config given in the environment (GIT_CONFIG_PARAMETERS, GIT_CONFIG_COUNT/KEY_n/VALUE_n), which the
  // owner's later git commands in this shell read too: its includes (absolute only: git refuses a
  // relative one there) and hooks path.
  for (const { key, value } of commandConfig(env)) {
    const from = `your environment's git config (${key})`;
    if (/^include(if\..*)?\.path$/.test(key)) {
      const inc = expandTilde(value, home);
      if (inc !== null && isAbsolute(inc)) guardInclude(c, inc, from, 0);
    } else if (key === "core.hookspath") guardHooksPath(c, value, from);
  }
  plan.relativeHooks = c.relativeHooks;
  return plan;
}

/**
 * A path from a git config with its `~/` (the owner's home) or `~name/` (that user's home, from the
 * password database) expanded as git expands it; null when git could not expand it either (no home,
 * an unknown user), other paths as they are.
 */
function expandTilde(p: string, home: string | null): string | null {
  if (!p.startsWith("~")) return p;
  const slash = p.indexOf("/");
  const name = slash < 0 ? p.slice(1) : p.slice(1, slash);
  const rest = slash < 0 ? "" : p.slice(slash + 1);
  const base = name === "" ? home : homeOfUser(name);
  return base === null ? null : `${base}${sep}${rest}`;
}

/** The home directory of user `name` in /etc/passwd, or null. */
function homeOfUser(name: string): string | null {
  try {
    for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
      const f = line.split(":");
      if (f[0] === name && f.length >= 7 && isAbsolute(f[5]!)) return f[5]!;
    }
  } catch {
    // no passwd file: git could not expand it either
  }
  return null;
}

/**
 * The files the git config `file` (text `text`) includes, as absolute paths the way git resolves them
 * (`~/` from `home`, relative from the including file's directory), read by git itself
 * (`git config --file … --get-regexp`: its own quoting and escapes). None when git is not installed
 * (the owner's git cannot follow them either) or the text names no include.
 */
function includePaths(file: string, text: string, home: string | null): string[] {
  if (!/include/i.test(text)) return [];
  const r = gitConfig(["--file", file, "--null", "--get-regexp", "^include(if\\..*)?\\.path$"], { GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null", HOME: home ?? "/nonexistent" });
  if (r.error !== undefined || typeof r.stdout !== "string") return [];
  const out: string[] = [];
  for (const entry of r.stdout.split("\0")) {
    const nl = entry.indexOf("\n");
    if (nl < 0) continue;
    const given = entry.slice(nl + 1);
    if (given === "" || given.startsWith("%(prefix)/")) continue; // git's install prefix: not the agent's
    const v = expandTilde(given, home);
    if (v === null) continue; // a ~ git cannot expand either: it fails on it
    // As git does: appended to the including file's directory as written, `..` left to the kernel.
    out.push(isAbsolute(v) ? v : `${dirname(file)}${sep}${v}`);
  }
  return out;
}

/**
 * The path `p` (named by the git config `from`, as git names it: `..` not folded) as the kernel finds
 * it: each symbolic link on the way followed where it lies, a `..` after it going to the link target's
 * parent. Refuses the run when a link lies in a directory the agent can write (it could point it at a
 * git config of its own). The last part need not exist.
 */
function physicalPath(p: string, writable: (p: string) => boolean, from: string, what = "a git config of its own", hops = 0): string {
  const parts = p.split(sep).filter((x) => x !== "" && x !== ".");
  let at: string = sep;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    if (part === "..") {
      at = dirname(at);
      continue;
    }
    const next = join(at, part);
    if (!lst(next)?.isSymbolicLink()) {
      at = next;
      continue;
    }
    if (writable(at))
      throw new VaultError(
        "invalid_request",
        `${from} names ${p}, which runs through the symbolic link ${next} in a directory the sandboxed agent can write: it could point the link at ${what}, which would run as you with your next git command. Name it by its real path (or make the link outside what the agent can write), then run again. The command was not started`,
      );
    if (++hops > 40) return next; // a loop of links: nothing is there
    let target: string;
    try {
      target = readlinkSync(next);
    } catch {
      return next;
    }
    const rest = parts.slice(i + 1).join(sep);
    return physicalPath(`${isAbsolute(target) ? target : at + sep + target}${rest === "" ? "" : sep + rest}`, writable, from, what, hops);
  }
  return at;
}

/**
 * The hooks in the hooks directory `dir` that are symbolic links (`ln -s ../../scripts/pre-commit`, a
 * common recipe): a target in a writable directory is shown read-only, pinned on its way, since the
 * owner's git runs it; a link through another link in a writable directory refuses the run.
 */
function guardHookEntries(plan: GitPlan, dir: string, writable: (p: string) => boolean): void {
  for (const name of entries(dir)) {
    const hook = join(dir, name);
    if (!lst(hook)?.isSymbolicLink()) continue;
    let target: string;
    try {
      target = readlinkSync(hook);
    } catch {
      continue;
    }
    const at = physicalPath(isAbsolute(target) ? target : `${dir}${sep}${target}`, writable, hook, "a script of its own");
    const st = lst(at);
    if (st !== null && writable(at)) readOnlyInPlace(plan, at, writable);
    else if (st === null) refuseCreatable(at, writable, hook, "the hook's script");
  }
}

/** Adds `path` to `list` once. */
function once(list: string[], path: string): void {
  if (!list.includes(path)) list.push(path);
}

/**
 * Refuses the run when another user could change `gitDir` or swap it (it, its `worktrees` or
 * `modules`, or a directory above it, belongs to another uid or can be written by others): the
 * repairs after the run (quarantineDir, aside) create, rename and delete there by path, as the owner,
 * so whoever can rename entries there could put a link of theirs in the way and have the owner's
 * lessor move their files anywhere. (git itself refuses a repository of another user's.)
 */
function refuseSharedGitDir(gitDir: string): void {
  if (typeof process.getuid !== "function") return;
  const uid = process.getuid();
  try {
    for (const d of [gitDir, join(gitDir, "worktrees"), join(gitDir, "modules")]) {
      const st = lst(d);
      // A symbolic link's own mode says nothing (0777); a linked worktrees or modules is refused below
      // in its own words, and who may swap a link is who may write its directory (checked here too).
      if (st === null || st.isSymbolicLink()) continue;
      if (st.uid !== uid && st.uid !== 0) throw new VaultError("insecure_permissions", `${d} belongs to uid ${st.uid}`);
      if (othersMayWrite(st, undefined, d)) throw new VaultError("insecure_permissions", `${d} can be written by other users (mode ${octal(st.mode)})`);
    }
    assertSafeAncestors(gitDir, uid, { what: `the git directory ${gitDir}`, elsewhere: "run the agent on a copy of your own" });
  } catch (e) {
    if (!(e instanceof VaultError)) throw e;
    throw new VaultError(
      "invalid_request",
      `${e.message}: another user could redirect what lessor repairs there after the run (as you) to a place of their choosing; run the agent on a copy of the repository that only you can change. The command was not started`,
    );
  }
}

/**
 * Guards the git directory `gitDir` (already pinned) whose checkout is `workTree` (null: unknown),
 * inside the writable directory `top`: its config and hooks, its linked worktrees' admin files, and
 * the git directories of its submodules, each in turn.
 */
function guardGitDir(plan: GitPlan, gitDir: string, workTree: string | null, top: string, writable: (p: string) => boolean, home: string | null, globalHooks: readonly string[]): void {
  refuseSharedGitDir(gitDir);
  const hooks = join(gitDir, "hooks");
  const config = join(gitDir, "config");
  const hs = lst(hooks);
  let hooksLink: string | null = null;
  if (hs === null) once(plan.sealed, hooks);
  else if (hs.isSymbolicLink()) {
    hooksLink = readlinkSync(hooks);
    const target = realOrNull(hooks);
    if (target !== null && writable(target)) readOnlyInPlace(plan, target, writable);
    if (target !== null) guardHookEntries(plan, target, writable);
  } else {
    once(plan.readOnly, hooks);
    if (hs.isDirectory()) guardHookEntries(plan, hooks, writable);
  }
  const sealedFiles: string[] = [];
  const emptyFiles: string[] = [];
  const noteEmpty = (f: string): void => {
    const st = plain(f);
    if (st?.isFile() && st.size === 0 && writable(f)) once(emptyFiles, f);
  };
  // The checkouts git may run in with this config: the repository's own, and each linked worktree's
  // (its `gitdir` names the checkout's `.git` file). A relative hooks path is resolved in each.
  const checkouts = workTree !== null ? [workTree] : [];
  for (const name of entries(join(gitDir, "worktrees"))) {
    try {
      const to = readFileSync(join(gitDir, "worktrees", name, "gitdir"), "utf8").trim();
      if (to !== "") once(checkouts, dirname(resolve(join(gitDir, "worktrees", name), to)));
    } catch {
      // no gitdir: git does not know the checkout either
    }
  }
  const files: ConfigFiles = { plan, workTrees: checkouts, relativeHooks: [], top, writable, home, sealedFiles, emptyFiles, seen: new Set() };
  for (const hp of globalHooks) guardHooksPath(files, hp, "your global git config");
  if (plain(config) !== null) {
    once(plan.readOnly, config);
    guardConfigFile(files, config, 0);
  }
  // config.worktree is read when extensions.worktreeConfig is on (sparse-checkout turns it on): one
  // there is read-only, a missing one an empty read-only file (git reads it as an empty config).
  const configWorktree = join(gitDir, "config.worktree");
  refusePlantedLink(configWorktree);
  if (plain(configWorktree) !== null) {
    noteEmpty(configWorktree);
    once(plan.readOnly, configWorktree);
    guardConfigFile(files, configWorktree, 0);
  } else sealedFiles.push(configWorktree);

  // Linked worktrees: their checkouts may be anywhere; what their git follows is kept here, and no
  // new one can be added (its admin directory would be the agent's).
  const listed: GitGuard["listed"] = [];
  const sealedDirs: string[] = [];
  const worktrees = join(gitDir, "worktrees");
  if (lockDir(plan, worktrees, listed, sealedDirs)) {
    for (const name of entries(worktrees)) {
      const admin = join(worktrees, name);
      if (!plain(admin)?.isDirectory()) {
        refuseLinkInto(admin, writable);
        continue;
      }
      once(plan.pinned, admin);
      for (const f of ["commondir", "gitdir"]) if (plain(join(admin, f))?.isFile()) once(plan.readOnly, join(admin, f));
      const cw = join(admin, "config.worktree");
      refusePlantedLink(cw);
      if (plain(cw) !== null) {
        noteEmpty(cw);
        once(plan.readOnly, cw);
        guardConfigFile(files, cw, 0);
      } else sealedFiles.push(cw);
      // The checkout's `.git` file names this directory; in a writable directory the agent could point
      // it at another (`gitdir` says where it is: absolute, or relative to this directory).
      try {
        const to = readFileSync(join(admin, "gitdir"), "utf8").trim();
        if (to !== "") guardDotGitFile(plan, resolve(admin, to), writable);
      } catch {
        // no gitdir: git does not know the checkout either
      }
    }
  }
  const modules = join(gitDir, "modules");
  const walkModules = lockDir(plan, modules, listed, sealedDirs);
  for (const f of sealedFiles) once(plan.sealedFiles, f);
  plan.guards.push({ gitDir, sealedFiles, emptyFiles, hooksLink, listed, sealedDirs });

  // The owner's submodules: each has a git directory under modules/ (its name may hold slashes).
  if (!walkModules || !plain(modules)?.isDirectory()) return;
  const tooMany = (what: string): VaultError =>
    new VaultError(
      "invalid_request",
      `${modules} ${what}, more than lessor guards, and a submodule git directory it left unguarded would let the sandboxed agent plant what your git runs; remove what is not a git directory of your submodules (git submodule status lists them), or run the agent on a project without them. The command was not started`,
    );
  const visit = (d: string, depth: number): void => {
    if (depth > MAX_MODULE_DEPTH) throw tooMany(`nests directories deeper than ${MAX_MODULE_DEPTH} levels`);
    for (const name of entries(d)) {
      const sub = join(d, name);
      if (!plain(sub)?.isDirectory()) {
        refuseLinkInto(sub, writable);
        continue;
      }
      if (++plan.walked > MAX_DIRS_WALKED) throw tooMany(`holds more than ${MAX_DIRS_WALKED} directories`);
      if (plan.guards.length >= MAX_GIT_DIRS) throw tooMany(`holds more than ${MAX_GIT_DIRS} git directories`);
      if (!isGitDir(sub)) {
        // A directory on the way to submodules' git directories (a name with a slash): nothing new in it either.
        lockDir(plan, sub, listed, sealedDirs);
        visit(sub, depth + 1);
        continue;
      }
      once(plan.pinned, sub);
      // Its checkout's `.git` file names this directory: kept read-only, the directories above it pinned.
      let wt: string | null = null;
      try {
        const w = coreValue(join(sub, "config"), "worktree", home);
        if (w !== null) wt = resolve(sub, w);
      } catch {
        // no config: git does not know the checkout either
      }
      if (wt !== null && within(wt, top) && wt !== top && plain(join(wt, ".git"))?.isFile()) {
        for (const p of dirsBetween(top, wt)) once(plan.pinned, p);
        once(plan.readOnly, join(wt, ".git"));
      }
      guardGitDir(plan, sub, wt, top, writable, home, globalHooks);
    }
  };
  visit(modules, 0);
}

/** The names in directory `d`, sorted; none when it cannot be read. */
/** Directories {@link nestedRepositories} reads below one writable path before it stops (about 30 ms for 20,000). */
export const MAX_REPO_SEARCH = 50_000;
/** Not searched: git's own directories, and npm's trees (thousands of directories, no repositories of the owner's). */
const SEARCH_SKIPS = new Set([".git", "node_modules"]);

/**
 * The directories below `top` (not `top` itself) that hold a `.git` (a repository, a linked
 * worktree, a submodule checkout): the owner's other repositories in a writable path, whose hooks and
 * config the agent must not write either. Breadth first, never through a symbolic link, at most
 * {@link MAX_REPO_SEARCH} directories; `complete` is false when it stopped there.
 */
export function nestedRepositories(top: string): { dirs: string[]; complete: boolean } {
  const dirs: string[] = [];
  let level = [top];
  let read = 0;
  while (level.length > 0) {
    const next: string[] = [];
    for (const d of level) {
      let list;
      try {
        list = readdirSync(d, { withFileTypes: true });
      } catch {
        continue; // unreadable or gone: nothing the owner's git could use there either
      }
      if (d !== top && list.some((e) => e.name === ".git")) dirs.push(d);
      if (++read > MAX_REPO_SEARCH) return { dirs, complete: false };
      for (const e of list) if (e.isDirectory() && !SEARCH_SKIPS.has(e.name)) next.push(join(d, e.name));
    }
    level = next;
  }
  return { dirs, complete: true };
}

function entries(d: string): string[] {
  try {
    return readdirSync(d).sort();
  } catch {
    return [];
  }
}

/**
 * Makes `d` (a git directory's `worktrees` or `modules`, or a directory under `modules`) a place the
 * agent cannot add to: an existing one read-only ({@link GitPlan.locked}), a missing one sealed; its
 * names recorded in `listed` for the check after the run. Returns whether `d` exists. A symbolic link
 * there refuses the run: the agent could repoint it (it lies in a pinned, writable directory), and
 * bwrap would mount on its target.
 */
function lockDir(plan: GitPlan, d: string, listed: GitGuard["listed"], sealedDirs: string[]): boolean {
  const st = lst(d);
  if (st === null) {
    once(plan.sealed, d);
    sealedDirs.push(d);
    listed.push({ dir: d, names: [] });
    return false;
  }
  if (st.isSymbolicLink())
    throw new VaultError(
      "invalid_request",
      `${d} is a symbolic link, which the sandboxed agent could point at a directory of its own (new linked worktrees or submodule git directories your git would then use, with their hooks and config); replace it with the directory it points to, or run the agent on a project without it. The command was not started`,
    );
  once(plan.locked, d);
  listed.push({ dir: d, names: st.isDirectory() ? entries(d) : [] });
  return true;
}

/**
 * A symbolic link under `worktrees` or `modules` that leads into a writable directory: git follows it
 * as a worktree's or submodule's git directory, whose config the agent could write. Refused.
 */
function refuseLinkInto(p: string, writable: (p: string) => boolean): void {
  if (!lst(p)?.isSymbolicLink()) return;
  const r = realOrNull(p);
  if (r !== null && writable(r))
    throw new VaultError(
      "invalid_request",
      `${p} is a symbolic link to ${r}, a directory the sandboxed agent can write: your git would use the config and hooks it puts there; move that git directory to where the link is, or run the agent on a project without it. The command was not started`,
    );
}

/**
 * A checkout's `.git` file (`gitdir: …`) at `file`: when it lies in a writable directory, read-only,
 * with the directories between that directory and it pinned (so the checkout cannot be renamed away
 * and replaced with one whose `.git` file is the agent's).
 */
function guardDotGitFile(plan: GitPlan, file: string, writable: (p: string) => boolean): void {
  const r = realOrNull(file);
  if (r === null || !plain(r)?.isFile() || !writable(r)) return;
  readOnlyInPlace(plan, r, writable);
}

/**
 * `r` (a real path in a writable directory) read-only, with the directories between the topmost
 * writable one and it pinned: a directory that holds a mount point can still be renamed, so without
 * the pins the agent renames `r`'s parent away and makes its own `r` (a hooks directory of its
 * hooks, which the owner's git then runs).
 */
function readOnlyInPlace(plan: GitPlan, r: string, writable: (p: string) => boolean): void {
  if (!writable(r)) return; // shown read-only already (a [run] read path): nothing to pin on its way
  pinWay(plan, dirname(r), writable);
  once(plan.readOnly, r);
}

/** Pins the directories from the top of the writable directory holding `dir` down to `dir` (included). */
function pinWay(plan: GitPlan, dir: string, writable: (p: string) => boolean): void {
  let top = dir;
  while (dirname(top) !== top && writable(dirname(top))) top = dirname(top);
  for (const p of dirsBetween(top, dir)) once(plan.pinned, p);
}

/**
 * `abs`, a path in the writable directory `top` that does not exist (a hooks directory the agent
 * could create), sealed with an empty read-only directory, the directories above it pinned as in
 * {@link readOnlyInPlace}. bwrap makes the mount point and its missing parents, following links, so a
 * link on the way (the agent's, pointing outside) is refused, and the parents are made here first,
 * without one, so that they can be pinned.
 */
function sealInPlace(plan: GitPlan, abs: string, top: string): void {
  for (const d of dirsBetween(top, abs)) {
    const st = lst(d);
    if (st === null) break;
    if (st.isSymbolicLink() || !st.isDirectory())
      throw new VaultError(
        "invalid_request",
        `the hooks path ${abs} that your git config names runs through ${d}, which is ${st.isSymbolicLink() ? "a symbolic link" : "not a directory"} in a directory the sandboxed agent can write (an earlier sandboxed command may have put it there); lessor will not make the hooks path through it. Remove it, or set core.hooksPath to a directory of your own. The command was not started`,
      );
  }
  try {
    mkdirSync(dirname(abs), { recursive: true });
  } catch (e) {
    throw new VaultError(
      "invalid_request",
      `cannot make ${dirname(abs)}, the directory of the hooks path your git config names (${(e as NodeJS.ErrnoException).code ?? "error"}), to guard it; make it yourself, or set core.hooksPath to a directory that exists. The command was not started`,
    );
  }
  for (const p of dirsBetween(top, dirname(abs))) once(plan.pinned, p);
  once(plan.sealed, abs);
}

/**
 * Refuses the run when `p` (a file git may read, such as config.worktree, which lessor seals when it
 * is missing) is a symbolic link: git never makes one there, and bwrap would make the file it seals
 * through the link, wherever it points (outside the sandbox, as the owner).
 */
function refusePlantedLink(p: string): void {
  if (!lst(p)?.isSymbolicLink()) return;
  throw new VaultError(
    "invalid_request",
    `${p} is a symbolic link, which git never makes (an earlier sandboxed command may have planted it, to have a file made wherever it points); remove it, then run again. The command was not started`,
  );
}

/** Whether `d` looks like a git directory (git's own test: `HEAD`, `objects` and `refs` there). */
function isGitDir(d: string): boolean {
  return existsSync(join(d, "HEAD")) && existsSync(join(d, "objects")) && existsSync(join(d, "refs"));
}

/**
 * Before the run: a `commondir` in a guarded git directory (git never makes one there) was left by an
 * earlier sandboxed command whose check did not run (lessor killed with SIGKILL, or the machine
 * stopped), or put there by hand: it is moved aside as after a run, before the owner's git or the
 * agent uses it. Returns one line per repair, for lessor to print.
 */
export function checkGitBeforeRun(guards: readonly GitGuard[]): string[] {
  const out: string[] = [];
  for (const g of guards) {
    const commondir = join(g.gitDir, "commondir");
    try {
      if (lst(commondir) !== null)
        out.push(`lessor: ${commondir} was there before this run (git never makes one in a repository's own git directory; an earlier sandboxed command may have planted it, and it would make your git run another directory's hooks and config); moved it to ${aside(commondir)}`);
    } catch (e) {
      out.push(`lessor: could not move ${commondir} aside (${(e as NodeJS.ErrnoException).code ?? "error"}): remove it before you run git there`);
    }
  }
  return out;
}

/**
 * `gitDir/name` as a directory lessor made in this check (listed in `made`): whatever was there (the
 * agent's, from this run or one before: a symlink to a directory of the owner's, say, which a path
 * through it would follow) is moved aside first, to `name.<time>`, and a new empty one made. So
 * nothing the agent could have placed is on a path lessor then removes or writes under.
 */
function quarantineDir(gitDir: string, name: string, made: Set<string>): string {
  const q = join(gitDir, name);
  if (made.has(q)) return q;
  if (lst(q) !== null) renameSync(q, `${q}.${Date.now()}`); // a rename moves a symlink itself, never what it points at
  mkdirSync(q, { mode: 0o700 });
  made.add(q);
  return q;
}

/** Moves `p` to `p.lessor-quarantine` (replacing one there), and returns where. */
function aside(p: string): string {
  const to = `${p}.lessor-quarantine`;
  rmSync(to, { recursive: true, force: true });
  renameSync(p, to);
  return to;
}

/**
 * After the run (every process of the sandbox is gone): undoes what the agent planted that git would
 * follow outside the sandbox. A `commondir`, and a `config.worktree` that was not there before, are
 * moved to `<name>.lessor-quarantine`; a `hooks` symlink that was swapped is moved aside the same way
 * and put back; an entry of `worktrees` or `modules` (or of a directory on the way to a submodule's
 * git directory) that was not there before is moved to `worktrees.lessor-quarantine/NAME` or
 * `modules.lessor-quarantine/…`. Returns one line per repair, for lessor to print.
 */
export function checkGitAfterRun(guards: readonly GitGuard[]): string[] {
  const out: string[] = [];
  for (const g of guards) {
    try {
      const commondir = join(g.gitDir, "commondir");
      if (lst(commondir) !== null)
        out.push(`lessor: the sandboxed command planted ${commondir}, which would make your git run another directory's hooks and config; moved it to ${aside(commondir)}`);
      // The empty files bwrap made to mount the sealed ones on (removed by the run's hold once no other
      // run may have them mounted: src/sandbox/run-holds.ts), and the empty ones found: one that is not
      // empty now is what an agent wrote there (a second line: another run's end can no longer detach
      // this sandbox's mount on it) and is moved out of git's sight.
      for (const f of [...g.sealedFiles, ...g.emptyFiles]) {
        const st = lst(f);
        if (st === null || (st.isFile() && st.size === 0)) continue;
        out.push(`lessor: ${f}, a git config file that was missing or empty when the run started and read-only in its sandbox, now holds something (written from outside the sandbox while it ran, or by an agent whose read-only mount on it was lifted); moved it to ${aside(f)}`);
      }
      // New entries of worktrees/ and modules/ (the mounts kept the agent from making any; one made by
      // other means would be a git directory the owner's git adopts): moved out of git's sight.
      const made = new Set<string>();
      for (const { dir, names } of g.listed) {
        if (!lst(dir)?.isDirectory()) continue;
        for (const name of entries(dir)) {
          if (names.includes(name)) continue;
          const [head, ...rest] = relative(g.gitDir, join(dir, name)).split(sep);
          const to = join(quarantineDir(g.gitDir, `${head}.lessor-quarantine`, made), ...rest);
          mkdirSync(dirname(to), { recursive: true, mode: 0o700 });
          renameSync(join(dir, name), to);
          out.push(`lessor: ${join(dir, name)} was not there before the run (a linked worktree's or submodule's git directory your git would use, with its hooks and config); moved it to ${to}`);
        }
      }
      if (g.hooksLink !== null) {
        const hooks = join(g.gitDir, "hooks");
        const now = lst(hooks);
        if (now === null || !now.isSymbolicLink() || readlinkSync(hooks) !== g.hooksLink) {
          const moved = now === null ? null : aside(hooks);
          symlinkSync(g.hooksLink, hooks);
          out.push(`lessor: the sandboxed command replaced the symlink ${hooks}; put it back (-> ${g.hooksLink})${moved ? `, what it made is in ${moved}` : ""}`);
        }
      }
    } catch (e) {
      out.push(`lessor: could not check ${g.gitDir} after the run (${(e as NodeJS.ErrnoException).code ?? "error"}): check its commondir, config.worktree, hooks, worktrees and modules before you run git there`);
    }
  }
  return out;
}
