/**
 * The sandbox's filesystem, decided before anything runs: which host paths the agent sees, which it
 * may write, and which are covered. The rules (docs/sandbox.md):
 *
 * - the system (/usr, /etc, /opt, /nix and the /bin, /lib… links or directories) read-only;
 * - an empty /tmp, /var/tmp and home: the owner's home is never bound as a whole, so a symlink or a
 *   `..` inside the sandbox leads only to what was bound;
 * - the project directory and the `[run] read`/`write` paths, bound at their real paths (symlinks
 *   resolved), parents before children;
 * - every protected path (the lessor home, the key, the daemon socket, the credential stores, /etc's
 *   secrets, the Nix daemon's socket) that one of those shows is covered, at its real path and at the path it is known by;
 * - refused: showing a protected path's own directory or anything inside it; a writable view of the
 *   home or of any directory above it (the agent could plant ~/.bashrc and run as the owner later);
 *   the root directory; /tmp, /run and the like as a whole (other programs' sockets live there).
 */
import { accessSync, constants, lstatSync, readlinkSync, realpathSync, statSync } from "node:fs";
import { dirname, isAbsolute, resolve, sep } from "node:path";
import { VaultError } from "../base/errors.js";
import { etcSecrets, SYSTEM_SOCKETS } from "./hidden.js";
import { MAX_SHADOW_ENTRIES, planShadow, type Shadow } from "./shadow.js";
import { chooseGit, MAX_REPO_SEARCH, nestedRepositories, planGit, planGlobalGit, type GitGuard } from "./git-guard.js";

/** A path the sandbox must not show, and what it is (for messages). */
export interface Protected {
  path: string;
  what: string;
}

/** What {@link planLayout} needs. Paths are absolute (the caller expands `~/`). */
export interface LayoutRequest {
  /** The owner's home ($HOME): shown as an empty directory. */
  home: string | undefined;
  /** The project directory, or null for none. */
  project: string | null;
  projectWritable: boolean;
  /** Also shown read-only / writable; missing paths are skipped. */
  read: string[];
  write: string[];
  protect: Protected[];
  /**
   * Further directories where the owner's programs keep sockets, refused like /run when a shown path
   * is or holds one: the owner's runtime directory ($XDG_RUNTIME_DIR, /run/user/UID: gpg-agent,
   * systemd, pulse).
   */
  socketDirs?: string[];
  /** The owner's home as the passwd database says, when $HOME says another: never writable either. */
  passwdHome?: string | undefined;
}

/** One mount of the layout, in the order bwrap makes them. */
export type Mount =
  /**
   * A system directory, read-only. One that holds covered entries is shown as a tree of the
   * sandbox's own (`shadow`: src/sandbox/shadow.ts), so that a host rename over a covered file cannot
   * lift its cover.
   */
  | { kind: "system"; path: string; shadow?: Shadow }
  | { kind: "symlink"; path: string; target: string }
  | { kind: "scratch"; path: string }
  | { kind: "bind"; path: string; writable: boolean; why: string };

/** A protected path that a shown directory holds, covered in the sandbox. */
export interface Mask {
  path: string;
  dir: boolean;
  what: string;
}

/** The sandbox's filesystem. */
export interface Layout {
  mounts: Mount[];
  /**
   * Paths inside writable binds bound onto themselves, still writable, so that they are mount points
   * the agent cannot rename or remove (a repository's `.git`: src/sandbox/git-guard.ts).
   */
  pinned: string[];
  /** Paths inside writable binds shown read-only (a project's git hooks and config run later as the owner). */
  readOnly: string[];
  /**
   * Existing directories inside writable binds shown read-only, mounted with the pins in order of
   * depth so that the pins inside them stay writable: nothing new can be made there (a git
   * directory's `worktrees` and `modules`: src/sandbox/git-guard.ts).
   */
  locked: string[];
  /** Missing paths inside writable binds made empty read-only directories (a repository's missing hooks directory). */
  sealed: string[];
  /** Missing files inside writable binds shown as empty read-only ones (a git directory's missing `config.worktree`). */
  sealedFiles: string[];
  /** What to check in each guarded repository after the run (src/sandbox/git-guard.ts). */
  git: GitGuard[];
  /** What lessor says on stderr before the run about the layout. */
  notes: string[];
  masks: Mask[];
  /** The working directory inside. */
  cwd: string;
}

/** System directories shown read-only when they exist. */
const SYSTEM_DIRS = ["/usr", "/etc", "/opt", "/nix"];
/** Where, for root, a writable path becomes code run outside the sandbox (beside the system directories). */
const ROOT_RUN_DIRS = ["/boot", "/var/spool", "/var/lib/dpkg", "/var/lib/rpm", "/var/lib/systemd", "/var/lib/cloud", "/run/systemd", "/run/udev", "/run/tmpfiles.d", "/root/.config/systemd", "/nix/store", "/nix/var"];

/** {@link ROOT_RUN_DIRS}, and /bin, /sbin and /lib* where they are directories of their own (not merged into /usr). */
function rootRunDirs(): string[] {
  return [...ROOT_RUN_DIRS, ...SYSTEM_LINKS.filter((d) => real(d) === d)];
}
/** Where a writable path is code or configuration the machine runs outside the sandbox, for anyone. */
const RUN_DIRS = ["/etc", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32", "/usr/libexec", "/usr/share", "/usr/local/bin", "/usr/local/sbin", "/usr/local/lib", "/usr/local/etc", "/usr/local/libexec", "/usr/local/share"];
/** Shown as the symlinks they are (merged /usr), or read-only when they are directories. */
const SYSTEM_LINKS = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/**
 * Directories every program on the machine puts its sockets in (ssh-agent, tmux, X11, D-Bus): a
 * Unix socket works across network namespaces, so showing one of these would let the agent drive
 * the owner's ssh agent or a tmux session outside the sandbox.
 */
const SHARED_DIRS = ["/tmp", "/var/tmp", "/dev/shm", "/run", "/var/run", "/var"];

/** True when `p` is `dir` or inside it. */
export function within(p: string, dir: string): boolean {
  return p === dir || p.startsWith(dir === sep ? sep : dir + sep);
}

function depth(p: string): number {
  return p === sep ? 0 : p.split(sep).length - 1;
}

/** True when this process's uid and groups may read `p` (a directory: list or enter it); root may read anything. */
function readable(p: string, dir: boolean): boolean {
  try {
    accessSync(p, constants.R_OK);
    return true;
  } catch {
    if (!dir) return false;
  }
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The deepest mount (not a symlink) that holds `p`. */
function holderOf(mounts: Mount[], p: string): Mount | undefined {
  return mounts.filter((m) => m.kind !== "symlink" && within(p, m.path)).sort((a, b) => depth(b.path) - depth(a.path))[0];
}

function real(p: string): string | null {
  try {
    // The kernel's own resolution: Node's JavaScript realpath applies a `..` in a link's target as
    // text, before following the link it comes after.
    return realpathSync.native(p);
  } catch {
    return null;
  }
}

function refuse(msg: string): never {
  throw new VaultError("invalid_request", `${msg}; lessor run did not start the command`);
}

/** Decides the sandbox's filesystem; throws VaultError("invalid_request") for a layout it refuses. */
export function planLayout(req: LayoutRequest): Layout {
  const mounts: Mount[] = [];
  for (const d of SYSTEM_DIRS) if (real(d) === d && statSync(d).isDirectory()) mounts.push({ kind: "system", path: d });
  for (const d of SYSTEM_LINKS) {
    let st;
    try {
      st = lstatSync(d);
    } catch {
      continue;
    }
    if (st.isSymbolicLink()) mounts.push({ kind: "symlink", path: d, target: readlinkSync(d) });
    else if (st.isDirectory()) mounts.push({ kind: "system", path: d });
  }
  const systemRoots = mounts.map((m) => m.path);

  // The paths to protect, at the path they are known by and at their real path.
  const protect: Protected[] = [];
  const system = [...etcSecrets().map((path) => ({ path, what: "a secret file of /etc" })), ...SYSTEM_SOCKETS.map((path) => ({ path, what: "a system service's socket" }))];
  for (const p of [...req.protect, ...system]) {
    if (!isAbsolute(p.path)) continue;
    protect.push({ path: resolve(p.path), what: p.what });
    const r = real(p.path);
    if (r !== null && r !== resolve(p.path)) protect.push({ path: r, what: p.what });
  }

  const home = req.home && isAbsolute(req.home) ? resolve(req.home) : null;
  const homeReal = home ? real(home) : null;
  const pw = req.passwdHome && isAbsolute(req.passwdHome) ? resolve(req.passwdHome) : null;
  const homes = [home, homeReal, pw, pw ? real(pw) : null];
  const socketDirs = [...SHARED_DIRS, ...(req.socketDirs ?? []).filter((d) => isAbsolute(d) && resolve(d) !== sep).map((d) => resolve(d))];
  const scratch = new Set(["/tmp", "/var/tmp"]);
  for (const h of [home, homeReal])
    if (h !== null && h !== sep && !systemRoots.some((s) => within(s, h) || within(h, s))) scratch.add(h);

  // What is bound: the project, then [run] write and read (a path in both is writable).
  const binds = new Map<string, { writable: boolean; why: string }>();
  const add = (given: string, writable: boolean, why: string, required: boolean): void => {
    const r = real(given);
    if (r === null) {
      if (required) refuse(`the ${why} ${given} does not exist`);
      return;
    }
    if (r === sep) refuse(`the ${why} is the root directory /, which would show the whole machine to the agent; run lessor run from your project's directory`);
    for (const d of socketDirs)
      if (within(d, r))
        refuse(`the ${why} ${given} is or holds ${d}, where other programs keep their sockets (ssh-agent, tmux, D-Bus) that the agent could drive from inside; use a directory of its own, such as mktemp -d makes inside ${d}`);
    for (const p of protect)
      if (within(r, p.path)) refuse(`the ${why} ${given} is ${r === p.path ? "" : "inside "}${p.what} (${p.path}), which the agent must not see; run from another directory, or change [run] in lessor.toml`);
    if (writable) {
      for (const h of homes)
        if (h !== null && within(h, r))
          refuse(
            `the ${why} ${given} would be writable and holds your home directory (${h}): the agent could change ~/.bashrc or ~/.profile and so run as you outside the sandbox; run from your project's directory, or set [run] project = "read-only" in lessor.toml`,
          );
      for (const s of systemRoots) if (within(s, r)) refuse(`the ${why} ${given} would be writable and holds ${s}; choose a narrower directory`);
      // Inside one, a writable path is what the machine runs outside the sandbox (/etc/cron.d,
      // /etc/profile.d, /usr/local/bin), and for root no permission stands in the way.
      for (const s of [...RUN_DIRS, ...(process.getuid?.() === 0 ? rootRunDirs() : [])].flatMap((d) => [d, real(d) ?? d]))
        if (within(r, s) || within(s, r)) refuse(`the ${why} ${given} would be writable and ${within(r, s) ? "is inside" : "holds"} ${s}, which the machine runs or reads outside the sandbox; use a directory of the project's own (or make the project read-only: [run] project = "read-only")`);
    }
    const had = binds.get(r);
    binds.set(r, { writable: writable || (had?.writable ?? false), why: had?.why ?? why });
  };
  if (req.project !== null) add(req.project, req.projectWritable, "project directory", true);
  for (const w of req.write) add(w, true, "[run] write path", false);
  for (const r of req.read) add(r, false, "[run] read path", false);

  for (const s of scratch) if (!binds.has(s)) mounts.push({ kind: "scratch", path: s });
  for (const [path, b] of binds) mounts.push({ kind: "bind", path, ...b });
  // Parents before children; at one depth the system first, then scratch, then binds (stable sort).
  mounts.sort((a, b) => depth(a.path) - depth(b.path));

  // Git repositories in writable binds: what the owner's git runs later stays out of the agent's reach.
  const pinned: string[] = [];
  const readOnly: string[] = [];
  const locked: string[] = [];
  const sealed: string[] = [];
  const sealedFiles: string[] = [];
  const git: GitGuard[] = [];
  // Writable when the bind that shows `p`, the deepest one holding it, is: a read-only `[run] read`
  // path inside the project stays read-only, and nothing in it is pinned (a pin is a writable bind).
  const shownBy = (p: string): { writable: boolean } | undefined => [...binds].filter(([path]) => within(p, path)).sort(([a], [b]) => depth(b) - depth(a))[0]?.[1];
  const writable = (p: string): boolean => shownBy(p)?.writable === true;
  const notes: string[] = [];
  // The owner's global git configs, which every repository's git reads, and what they include; their
  // relative hooks path is resolved in each repository's checkouts below.
  // The git that reads those configs runs as the owner before the sandbox exists: never one the agent
  // could have put on PATH (a virtualenv's bin in the project).
  chooseGit(process.env["PATH"], writable);
  const globalGit = planGlobalGit(writable, home, process.env);
  for (const d of globalGit.pinned) if (!pinned.includes(d)) pinned.push(d);
  for (const r of globalGit.readOnly) if (!readOnly.includes(r)) readOnly.push(r);
  const guard = (dir: string): void => {
    const g = planGit(dir, writable, homeReal ?? home, globalGit.relativeHooks ?? []);
    for (const d of g.pinned) if (!pinned.includes(d)) pinned.push(d);
    for (const r of g.readOnly) if (!readOnly.includes(r)) readOnly.push(r);
    for (const d of g.locked) if (!locked.includes(d)) locked.push(d);
    // A repository reached twice (a `.git` file's gitdir that is also a nested repository, a bind
    // inside another) is sealed and checked once.
    for (const d of g.sealed) if (!sealed.includes(d)) sealed.push(d);
    for (const f of g.sealedFiles) if (!sealedFiles.includes(f)) sealedFiles.push(f);
    for (const x of g.guards) if (!git.some((y) => y.gitDir === x.gitDir)) git.push(x);
  };
  for (const [path, b] of binds) {
    if (!b.writable) continue;
    guard(path);
    // The owner's other repositories below it (a project directory that holds several): each guarded
    // as the top one, unless a bind of its own (guarded above) or a read-only one shows it.
    const found = nestedRepositories(path);
    // Past the limit the search cannot tell the owner's repositories from an agent's decoys (a run
    // that made 50,000 directories would leave the rest unguarded): refused, as for .git/modules.
    if (!found.complete)
      refuse(
        `${path} (${b.why}) holds more than ${MAX_REPO_SEARCH} directories (node_modules aside), too many to find every git repository in it whose hooks and config the sandbox must keep read-only; run from the repository you work on (--project DIR), or narrow [run] write, or remove directories an earlier command made there`,
      );
    for (const d of found.dirs) if (!binds.has(d) && writable(d)) guard(d);
  }

  // A protected path is covered when the deepest mount holding it shows the host there.
  const masks: Mask[] = [];
  for (const p of protect) {
    const holder = holderOf(mounts, p.path);
    if (!holder || holder.kind === "scratch") continue;
    let st;
    try {
      st = lstatSync(p.path);
    } catch {
      continue; // nothing there to hide
    }
    // Reached through a symlink (itself or a directory on its way, such as a home given as a link
    // inside the project): inside, the kernel follows it to the real path, which is protected and
    // covered on its own; a mask here would have bwrap make a mount point inside another cover.
    if (st.isSymbolicLink() || real(p.path) !== p.path) continue;
    masks.push({ path: p.path, dir: st.isDirectory(), what: p.what });
  }
  masks.sort((a, b) => depth(a.path) - depth(b.path));
  const covered = masks.filter((m, i) => !masks.slice(0, i).some((o) => o.dir && within(m.path, o.path) && o.path !== m.path));
  const unique = covered.filter((m, i) => covered.findIndex((o) => o.path === m.path) === i);

  // A mount on a host file is detached when the host renames another file over it (passwd over
  // /etc/shadow, k3s rewriting its kubeconfig): a system directory holding a cover over what this
  // uid can read (a root owner's /etc/shadow, the owner's own 0600 files) is a tree of the sandbox's
  // own, the covers in it. Each entry of that tree is a mount bwrap makes at every start, so one
  // holding only covers this uid could not read through anyway (a user's /etc/shadow) is not made.
  const budget = { left: MAX_SHADOW_ENTRIES };
  for (const m of mounts) {
    if (m.kind !== "system") continue;
    const inside = unique.filter((k) => within(k.path, m.path) && k.path !== m.path && holderOf(mounts, k.path) === m);
    const shadow = inside.some((k) => readable(k.path, k.dir)) ? planShadow(m.path, inside, budget) : undefined;
    if (shadow !== undefined) m.shadow = shadow;
  }

  // A protected path named through a symlink that lies in a writable bind: the cover is at the real
  // path, and the agent could point the link somewhere of its own (a lessor home whose [keys] command
  // the owner's next lessor command runs). A link cannot be pinned (bwrap follows it): refused.
  for (const p of req.protect) {
    if (!isAbsolute(p.path)) continue;
    // The deepest bind holding the link decides (one in a read-only [run] read path cannot be changed).
    // The path as lessor uses it (not normalised: the kernel applies a `..` after a link).
    const link = linkOnTheWay(p.path, (at) => {
      const holder = [...binds].filter(([path]) => within(at, path) && at !== path).sort((x, y) => depth(y[0]) - depth(x[0]))[0];
      return holder !== undefined && holder[1].writable;
    });
    if (link !== null)
      refuse(
        `${p.what} is named through ${link}, a symbolic link the agent could change (it is in a writable path of the sandbox); name it by its real path (${real(p.path) ?? "its target"}), or move the link out of the project`,
      );
  }

  // A cover is a mount point, which cannot be renamed or removed; the directories above it inside a
  // writable bind could be, and a new directory of the agent's own put in their place (a policy file,
  // a lessor home, a socket the owner's next lessor command trusts). Each is bound onto itself:
  // pinned, like a repository's .git.
  for (const m of unique) {
    // The deepest bind holding it decides: under a read-only one nothing can be renamed (and a pin,
    // a writable bind, would make it writable).
    const bind = mounts.filter((x) => x.kind === "bind" && within(m.path, x.path)).sort((a, b) => depth(b.path) - depth(a.path))[0];
    if (!bind || bind.kind !== "bind" || !bind.writable) continue;
    for (let d = dirname(m.path); d !== bind.path && within(d, bind.path); d = dirname(d)) if (!pinned.includes(d)) pinned.push(d);
  }
  pinned.sort((a, b) => depth(a) - depth(b));
  // A pin is a writable bind made after the layout's: a read-only bind inside one is made again after
  // the pins (with the git guard's read-only paths), or the pin would show it writable.
  for (const [path, b] of binds)
    if (!b.writable && pinned.some((d) => within(path, d)) && !readOnly.includes(path)) readOnly.push(path);

  const project = req.project !== null ? real(req.project) : null;
  const cwd = project ?? home ?? sep;
  locked.sort((a, b) => depth(a) - depth(b));
  return { mounts, pinned, readOnly, locked, sealed, sealedFiles, git, notes, masks: unique, cwd };
}

/**
 * The first symbolic link on the way to `p` (p itself included, every link of the chain followed)
 * that really lies where `inside` holds, or null. A link elsewhere (the project opened through
 * /home -> /data/home) is followed, and the walk goes on from its target.
 */
function linkOnTheWay(p: string, inside: (at: string) => boolean): string | null {
  return walkLinks(p, inside).link;
}

/** Where {@link walkLinks} ended. */
export interface LinkWalk {
  /** The first link on the way that lies where the walk's test holds, or null. */
  link: string | null;
  /** Where the path leads once every link on the way is followed; null when a part is missing or the walk gave up. */
  resolved: string | null;
  /** The first missing part, as reached once the links before it were followed (what could be made there), or null. */
  missing: string | null;
}

/**
 * {@link linkOnTheWay}'s walk: the first link that lies where `inside` holds (`link`), else where `p`
 * leads once every link on the way is followed (`resolved`; null when a part is missing or the walk
 * gave up), and the first missing part (`missing`).
 */
function walkLinks(p: string, inside: (at: string) => boolean): LinkWalk {
  const none = { link: null, resolved: null, missing: null };
  let todo = p.split(sep).filter((x) => x !== "");
  let cur = "";
  for (let hops = 0; todo.length > 0; ) {
    const part = todo.shift()!;
    // `cur` holds no link, so `..` and `.` may be applied to it as text.
    if (part === ".") continue;
    if (part === "..") {
      cur = cur === "" ? "" : dirname(cur) === sep ? "" : dirname(cur);
      continue;
    }
    const next = `${cur}${sep}${part}`;
    let st;
    try {
      st = lstatSync(next);
    } catch (e) {
      // Nothing there (yet): nothing to repoint. Anything else (a directory made unreadable, which
      // the agent could open again) is judged as a link would be.
      const code = (e as NodeJS.ErrnoException).code;
      return code === "ENOENT" || code === "ENOTDIR" ? { ...none, missing: next } : { link: inside(next) ? next : null, resolved: null, missing: null };
    }
    if (!st.isSymbolicLink()) {
      cur = next;
      continue;
    }
    if (inside(next)) return { link: next, resolved: null, missing: null };
    if (++hops > 40) return none;
    let target: string;
    try {
      target = readlinkSync(next);
    } catch {
      return none;
    }
    // The target's parts as written (not normalised): a `..` after a link in it is the kernel's to apply.
    if (target.startsWith(sep)) cur = "";
    todo = [...target.split(sep).filter((x) => x !== ""), ...todo];
  }
  return { link: null, resolved: cur === "" ? sep : cur, missing: null };
}

/**
 * True when the sandbox shows the host's `path` (after symlinks): a system directory or a bind
 * holds it and no mask covers it. Used to tell the owner early that a command lives where the
 * agent cannot see it (under the home, say).
 */
export function shows(layout: Layout, path: string): boolean {
  const r = real(path);
  if (r === null) return false;
  const holder = layout.mounts.filter((m) => m.kind !== "symlink" && within(r, m.path)).sort((a, b) => depth(b.path) - depth(a.path))[0];
  if (!holder || holder.kind === "scratch") return false;
  return !layout.masks.some((m) => within(r, m.path));
}

/**
 * Where `p` leads when no link the agent could change is on the way (`resolved`, null if a part is
 * missing: `missing` names it), else that link: to check that a file lessor read for the run, or a
 * program it runs as the owner, is the one the owner named.
 */
export function pathForOwner(layout: Layout, p: string): LinkWalk {
  return walkLinks(p, (at) => writableAt(layout, at) !== null);
}

/**
 * The writable bind (the project, a `[run] write` path) that holds the host's `path`, or null: what
 * the agent can change there, the owner may run later.
 */
export function writableAt(layout: Layout, path: string): string | null {
  const holder = layout.mounts.filter((m) => m.kind === "bind" && within(path, m.path)).sort((a, b) => depth(b.path) - depth(a.path))[0];
  return holder && holder.kind === "bind" && holder.writable && !layout.readOnly.some((r) => within(path, r)) ? holder.path : null;
}
