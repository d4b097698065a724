/**
 * A git repository in a writable directory the sandbox shows (the project, a `[run] write` path):
 * the agent may commit there, but what the owner's git runs later, outside the sandbox, must not be
 * the agent's. Git runs hooks and commands named in its configuration (`core.fsmonitor`,
 * `core.hooksPath`, filters…), so the sandbox keeps these read-only or out of the agent's reach:
 *
 * - `.git/config` and the hooks directory read-only; a hooks directory the repository does not have
 *   yet becomes an empty read-only one (so the agent cannot create it); a symlinked `.git/hooks` has
 *   its target shown read-only, and `core.hooksPath` too when it points into a writable directory;
 * - the `.git` directory bound onto itself, so it is a mount point the agent cannot rename away or
 *   replace with one of its own (the read-only mounts would move with it);
 * - a `.git` file (a linked worktree or a submodule: `gitdir: …`) read-only, so it cannot be pointed at
 *   a git directory of the agent's;
 * - after the run, a `.git/commondir` the agent planted (it redirects git to another directory's
 *   config and hooks; it cannot be made read-only in advance without breaking git inside) is moved
 *   aside, and a swapped `.git/hooks` symlink is put back ({@link checkGitAfterRun}).
 *
 * Not covered (docs/sandbox.md, "What is not protected"): nested repositories and gitlinks the agent
 * adds to the index, which `git status` at the root enters and whose own configuration it honours.
 */
import { existsSync, lstatSync, readFileSync, readlinkSync, realpathSync, renameSync, rmSync, symlinkSync, type Stats } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";

/** What is recorded about a repository before the run, to check after it. */
export interface GitGuard {
  /** The `.git` directory. */
  gitDir: string;
  /** Whether `.git/commondir` existed before the run (it does not in a main repository). */
  hadCommondir: boolean;
  /** The `.git/hooks` symlink's text, when it is one. */
  hooksLink: string | null;
}

/** The mounts that guard one repository (see the file's comment). */
export interface GitPlan {
  /** Bound onto themselves, writable: mount points the agent cannot rename or remove. */
  pinned: string[];
  /** Shown read-only (existing paths). */
  readOnly: string[];
  /** Missing paths made empty read-only directories (bwrap leaves an empty directory behind). */
  sealed: string[];
  guard: GitGuard | null;
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

/** `core.hooksPath` from a git config file's text (the last one set in a `[core]` section), or null. */
export function coreHooksPath(configText: string): string | null {
  let section = "";
  let found: string | null = null;
  for (const raw of configText.split("\n")) {
    const line = raw.trim();
    const s = /^\[\s*([A-Za-z0-9.-]+)(\s+"[^"]*")?\s*\]/.exec(line);
    if (s) {
      section = s[2] ? "" : s[1]!.toLowerCase();
      continue;
    }
    const kv = /^hookspath\s*=\s*(.*)$/i.exec(line);
    if (section === "core" && kv) found = kv[1]!.replace(/^"(.*)"$/, "$1").trim();
  }
  return found === "" ? null : found;
}

/**
 * The guards for the repository at `dir/.git`, `dir` being a writable directory the sandbox shows;
 * `writable(p)` says whether a real path `p` is inside any writable one.
 */
export function planGit(dir: string, writable: (p: string) => boolean, home: string | null): GitPlan {
  const plan: GitPlan = { pinned: [], readOnly: [], sealed: [], guard: null };
  const gitPath = join(dir, ".git");
  const st = lst(gitPath);
  if (st === null || st.isSymbolicLink()) return plan;
  if (st.isFile()) {
    plan.readOnly.push(gitPath);
    return plan;
  }
  if (!st.isDirectory()) return plan;
  plan.pinned.push(gitPath);
  const hooks = join(gitPath, "hooks");
  const config = join(gitPath, "config");
  const hs = lst(hooks);
  let hooksLink: string | null = null;
  if (hs === null) plan.sealed.push(hooks);
  else if (hs.isSymbolicLink()) {
    hooksLink = readlinkSync(hooks);
    const target = realOrNull(hooks);
    if (target !== null && writable(target)) plan.readOnly.push(target);
  } else plan.readOnly.push(hooks);
  const cs = lst(config);
  if (cs !== null && !cs.isSymbolicLink()) {
    plan.readOnly.push(config);
    let text = "";
    try {
      text = readFileSync(config, "utf8");
    } catch {
      // unreadable: git could not read it either
    }
    let hp = coreHooksPath(text);
    if (hp !== null) {
      if (hp === "~" || hp.startsWith("~/")) hp = home ? join(home, hp.slice(1)) : null;
      if (hp !== null) {
        const abs = isAbsolute(hp) ? hp : resolve(dir, hp);
        const r = realOrNull(abs);
        if (r !== null && writable(r) && !plan.readOnly.includes(r)) plan.readOnly.push(r);
        else if (r === null && (abs + "/").startsWith(dir + "/")) plan.sealed.push(abs); // the agent could create it
      }
    }
  }
  plan.guard = { gitDir: gitPath, hadCommondir: existsSync(join(gitPath, "commondir")), hooksLink };
  return plan;
}

/**
 * After the run (every process of the sandbox is gone): undoes what the agent planted that git would
 * follow outside the sandbox. A new `.git/commondir` is moved to `commondir.lessor-quarantine`; a
 * `.git/hooks` symlink that was swapped is moved aside the same way and put back. Returns one line
 * per repair, for lessor to print.
 */
export function checkGitAfterRun(guards: readonly GitGuard[]): string[] {
  const out: string[] = [];
  const aside = (p: string): string => {
    const to = `${p}.lessor-quarantine`;
    rmSync(to, { recursive: true, force: true });
    renameSync(p, to);
    return to;
  };
  for (const g of guards) {
    try {
      const commondir = join(g.gitDir, "commondir");
      if (!g.hadCommondir && lst(commondir) !== null)
        out.push(`lessor: the sandboxed command planted ${commondir}, which would make your git run another directory's hooks and config; moved it to ${aside(commondir)}`);
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
      out.push(`lessor: could not check ${g.gitDir} after the run (${(e as NodeJS.ErrnoException).code ?? "error"}): check its commondir and hooks before you run git there`);
    }
  }
  return out;
}
