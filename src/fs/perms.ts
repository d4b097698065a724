/**
 * Permission checks for files and directories that hold key material. lessor refuses to use a key
 * file or home directory that another user could read or change, and says the command that fixes it.
 * It never widens or narrows a user's existing permissions by itself.
 *
 * Error codes: wrong mode, wrong owner or a symlinked key file → "insecure_permissions"; a missing
 * path, or a path of the wrong type → "key_unavailable" (these paths exist to hold keys, so a missing
 * one means the master key cannot be loaded).
 *
 * On Windows, POSIX modes and uids do not exist and the checks only test that the path exists.
 */
import { accessSync, chmodSync, closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readSync, readlinkSync, realpathSync, statSync, type Stats } from "node:fs";
import { basename, delimiter, dirname, isAbsolute, resolve } from "node:path";
import { VaultError } from "../base/errors.js";
import { othersMayWrite } from "./private-group.js";

const POSIX = process.platform !== "win32" && typeof process.getuid === "function";

/** A file mode's permission bits as four octal digits ("0600"), for messages. */
export function octal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, "0");
}

function statOrThrow(path: string, what: string, follow: boolean): Stats {
  try {
    return follow ? statSync(path) : lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") {
      throw new VaultError("key_unavailable", `${what} ${path} does not exist; run \`lessor init\` or check the path in lessor.toml`);
    }
    throw new VaultError("key_unavailable", `${what} ${path} could not be read (${(e as NodeJS.ErrnoException).code ?? "error"}); check that it exists and belongs to you`);
  }
}

/**
 * What keeps a file or directory from being private to the current user: "owner" (another uid owns
 * it), "mode" (group or other permission bits are set), or null. The one check behind every
 * "private" path lessor reads (key files, the home, token files); callers word the fix. Always null
 * on Windows. Takes a Stats, so a caller may check an fstat of the descriptor it reads.
 */
export function privateProblem(st: Pick<Stats, "uid" | "mode">): "owner" | "mode" | null {
  if (!POSIX) return null;
  if (st.uid !== process.getuid!()) return "owner";
  return (st.mode & 0o077) !== 0 ? "mode" : null;
}

function checkOwnerAndMode(st: Stats, path: string, what: string, fixMode: "600" | "700"): void {
  const problem = privateProblem(st);
  if (problem === null) return;
  const uid = process.getuid!();
  if (problem === "owner") {
    throw new VaultError(
      "insecure_permissions",
      `${what} ${path} is owned by uid ${st.uid}, not by you (uid ${uid}); fix it with: sudo chown ${uid} ${path}`,
    );
  }
  throw new VaultError(
    "insecure_permissions",
    `${what} ${path} can be read or changed by other users (mode ${octal(st.mode)}); fix it with: chmod ${fixMode} ${path}`,
  );
}

/**
 * Checks that directory `path` exists, belongs to the current user and has no group/other permission
 * bits (0700). Symlinks are followed: the directory they point at is checked. `what` names it in errors.
 */
export function assertPrivateDir(path: string, what: string): void {
  const st = statOrThrow(path, what, true);
  if (!st.isDirectory()) throw new VaultError("key_unavailable", `${what} ${path} is not a directory`);
  checkOwnerAndMode(st, path, what, "700");
}

/**
 * Checks that `path` is a regular file (not a symlink), belongs to the current user and has no
 * group/other permission bits (0600). `what` names it in errors.
 */
export function assertPrivateFile(path: string, what: string): void {
  const st = statOrThrow(path, what, false);
  if (st.isSymbolicLink()) {
    throw new VaultError(
      "insecure_permissions",
      `${what} ${path} is a symbolic link; lessor only reads key files directly: replace the link with the file itself`,
    );
  }
  if (!st.isFile()) throw new VaultError("key_unavailable", `${what} ${path} is not a regular file`);
  checkOwnerAndMode(st, path, what, "600");
}

/**
 * Creates directory `path` (and missing parents) with mode 0700 if it does not exist. If it exists, it
 * must already be private: a wider existing directory is refused, never silently changed.
 */
export function ensurePrivateDir(path: string, what = "the directory"): void {
  let created: string | undefined;
  try {
    created = mkdirSync(path, { recursive: true, mode: 0o700 });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "error";
    throw new VaultError("key_unavailable", `${what} ${path} could not be created (${code}); check the path and its parent's permissions`);
  }
  if (created !== undefined && POSIX) chmodSync(path, 0o700); // mkdir's mode is narrowed by the umask only
  assertPrivateDir(path, what);
}

/**
 * Checks that no user but the current one (and root) can add entries to directory `dir` (symlinks
 * followed): it belongs to the current user or root and has no group or other write bit, sticky or
 * not. For a file that a library completes with companions it opens by name beside it (SQLite's
 * `-wal`, `-shm` and `-journal`): in a directory others can write, even a sticky one such as /tmp,
 * another user can create those first and read what is written into them. Throws
 * VaultError("insecure_permissions") naming the directory and `what` it holds. Does nothing on
 * Windows, or when `dir` cannot be read (the caller's own create then fails).
 */
export function assertUnsharedDir(dir: string, what: string): void {
  if (!POSIX) return;
  let st: Stats;
  try {
    st = statSync(dir);
  } catch {
    return;
  }
  const uid = process.getuid!();
  if ((st.uid === uid || st.uid === 0) && !othersMayWrite(st, undefined, dir)) return;
  throw new VaultError(
    "insecure_permissions",
    `${dir}, the directory of ${what}, ${st.uid !== uid && st.uid !== 0 ? `belongs to uid ${st.uid}` : `can be written by other users (mode ${octal(st.mode)})`}: another user could create the database's -wal or -shm file there before lessor does, and read the vault from it; choose a directory that only you can write (in your home, for example)`,
  );
}

/** How {@link assertSafeAncestors} names, in its messages, the path it guards and the way out. */
export interface GuardedPlace {
  /** What and where, e.g. "the lessor home /home/me/.lessor". */
  what: string;
  /** The alternative to fixing the directory at fault, e.g. "choose another path". */
  elsewhere: string;
}

/**
 * The rule for the directories on the way to `path`, so that no user but `uid` (and root) can swap
 * what is there for something of theirs: whoever can write a directory can rename, delete or replace
 * the entries in it. Each existing directory above `path` belongs to root or `uid` and is not
 * writable by group or others, unless it is sticky (like /tmp) and the entry below it on the way
 * belongs to root or `uid`; no entry on the way is a symbolic link of another user's. Missing
 * components are skipped (the caller creates them, privately). Shared by the lessor home
 * ({@link assertSafeLocation}) and the daemon's socket directory (src/server/transports/socket-dir.ts).
 * Throws VaultError("insecure_permissions") naming the directory at fault and the fix.
 */
export function assertSafeAncestors(path: string, uid: number, place: GuardedPlace): void {
  const trusted = (u: number): boolean => u === 0 || u === uid;
  for (let child = path, parent = dirname(path); parent !== child; child = parent, parent = dirname(parent)) {
    const cs = lstatOrNull(child);
    if (cs?.isSymbolicLink() && !trusted(cs.uid))
      throw new VaultError("insecure_permissions", `${child}, on the way to ${place.what}, is a symbolic link of uid ${cs.uid}, who could point it elsewhere; use a path without it`);
    let ps: Stats;
    try {
      ps = statSync(parent);
    } catch {
      continue; // missing: created by us
    }
    if (!trusted(ps.uid))
      throw new VaultError(
        "insecure_permissions",
        `${parent}, above ${place.what}, belongs to uid ${ps.uid}, who could move ${child} away and replace it; use directories owned by you or root, or ${place.elsewhere}`,
      );
    if (othersMayWrite(ps, undefined, parent)) {
      const sticky = (ps.mode & 0o1000) !== 0;
      if (!sticky || (cs !== null && !trusted(cs.uid)))
        throw new VaultError(
          "insecure_permissions",
          cs !== null && sticky
            ? `${child}, on the way to ${place.what}, belongs to uid ${cs.uid} in the shared directory ${parent}; ${place.elsewhere}`
            : `${parent}, above ${place.what}, can be written by other users (mode ${octal(ps.mode)}), who could move ${child} away and replace it; fix it with: chmod go-w ${parent}, or ${place.elsewhere}`,
        );
    }
  }
}

/** True when `p` is an executable regular file (where a PATH search stops: the key command's, a rotation hook's, `lessor run`'s check of both). */
export function isExecutableFile(p: string): boolean {
  try {
    if (!statSync(p).isFile()) return false;
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** A program lessor runs as the vault's owner: {@link GuardedPlace}, and what another user could do by changing it. */
export interface TrustedProgramPlace extends GuardedPlace {
  /** E.g. "who could make it print any key". */
  who: string;
}

/**
 * Why the program at `path` must not run as the vault's owner, or null: it is not a regular file
 * (`not_file`), or another user could change it (`insecure`: their file, writable by others, or a
 * directory or link on the way to it, as found or as its real path, {@link assertSafeAncestors}).
 * The rule of the key command (src/crypto/keys/command.ts) and of rotation hooks
 * (src/hooks/run-hook.ts). Throws the error of resolving `path` (ENOENT …) as it is. Nothing is
 * checked on Windows.
 */
export function programTrustProblem(path: string, place: TrustedProgramPlace): { kind: "not_file" | "insecure"; message: string } | null {
  if (!POSIX || typeof process.getuid !== "function") return null;
  const uid = process.getuid();
  const real = realpathSync(path);
  const st = statSync(real);
  if (!st.isFile()) return { kind: "not_file", message: `${place.what} (${real}) is not a regular file` };
  if (st.uid !== uid && st.uid !== 0) return { kind: "insecure", message: `${place.what} (${real}) belongs to uid ${st.uid}, ${place.who}; use a program owned by you or root` };
  if (othersMayWrite(st, undefined, real))
    return { kind: "insecure", message: `${place.what} (${real}) can be changed by other users (mode ${octal(st.mode)}), ${place.who}; fix it with: chmod go-w ${real}` };
  return waysProblem(path, real, uid, place);
}

/** {@link assertSafeAncestors} on `path` and, when it differs, its real path `real`, as a problem rather than a throw. */
function waysProblem(path: string, real: string, uid: number, place: GuardedPlace): { kind: "insecure"; message: string } | null {
  try {
    assertSafeAncestors(path, uid, place);
    if (real !== path) assertSafeAncestors(real, uid, place);
  } catch (e) {
    if (e instanceof VaultError) return { kind: "insecure", message: e.message };
    throw e;
  }
  return null;
}

/**
 * Checks the way to `path` with {@link assertSafeAncestors} for the current user: as given, then as
 * its real path once it exists (a symlink of the user's own may lead elsewhere). Throws
 * VaultError("insecure_permissions") naming the directory at fault. Does nothing on Windows.
 */
export function assertSafeLocation(path: string, what: string): void {
  if (!POSIX) return;
  const uid = process.getuid!();
  const place = { what: `${what} ${path}`, elsewhere: "choose another path" };
  const given = resolve(path);
  assertSafeAncestors(given, uid, place);
  // The place as it really is: through a symlink on the way (one's own link into a directory others
  // can write), the directories that decide are the real ones. A path that does not exist yet (a file
  // about to be made) is taken by its deepest directory that does.
  // The path as written (not normalised: a `..` after a link is the kernel's to apply).
  const real = realPlace(isAbsolute(path) ? path : `${process.cwd()}/${path}`);
  if (real !== given) assertSafeAncestors(real, uid, place);
}

/**
 * `p` with the symlinks of its deepest existing directory (or itself) resolved; a dangling link on the
 * way is followed to where it points (another user may make its target later).
 */
function realPlace(p: string, hops = 0): string {
  let dir = p;
  const rest: string[] = [];
  const withRest = (base: string): string => (rest.length === 0 ? base : `${base}/${[...rest].reverse().join("/")}`);
  for (;;) {
    try {
      // The kernel's resolution (Node's JavaScript realpath applies `..` in a link's target as text).
      return resolve(withRest(realpathSync.native(dir)));
    } catch {
      const st = lstatOrNull(dir);
      if (st?.isSymbolicLink() && hops < 40) {
        // From the link's real directory (it exists: the lstat above found the link), its target as
        // written, `..` included, for the kernel to resolve on the next round.
        let target: string | null = null;
        try {
          const t = readlinkSync(dir);
          target = t.startsWith("/") ? t : `${realpathSync.native(dirname(dir))}/${t}`;
        } catch {
          // changed under us: judged by the directories above, as a missing one is
        }
        if (target !== null) return realPlace(withRest(target), hops + 1);
      }
      const up = dirname(dir);
      if (up === dir) return resolve(p);
      rest.push(basename(dir));
      dir = up;
    }
  }
}

function lstatOrNull(p: string): Stats | null {
  try {
    return lstatSync(p);
  } catch {
    return null;
  }
}

/**
 * The first line of the file at `path` when it is a `#!` line: the interpreter the kernel runs it
 * with, and the one optional argument after it (Linux passes the rest of the line as one), or null.
 */
export function shebangOf(path: string): { interpreter: string; arg: string | null } | null {
  let fd: number;
  try {
    // Non-blocking: a FIFO put where an interpreter is named must not hang lessor here.
    fd = openSync(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  } catch {
    return null;
  }
  try {
    if (!fstatSync(fd).isFile()) return null;
    const buf = Buffer.alloc(256);
    const n = readSync(fd, buf, 0, buf.length, 0);
    if (n < 2 || buf[0] !== 0x23 || buf[1] !== 0x21) return null;
    const end = buf.subarray(0, n).indexOf(0x0a);
    const line = buf.subarray(2, end < 0 ? n : end).toString("latin1").replace(/^[ \t]+|[ \t\r]+$/g, "");
    const m = /^(\S+)(?:[ \t]+(.*))?$/.exec(line);
    if (m === null) return null;
    return { interpreter: m[1]!, arg: m[2] === undefined || m[2] === "" ? null : m[2] };
  } finally {
    closeSync(fd);
  }
}

/**
 * What `env` does with its arguments (a shebang's `-S python3 -u`, or a command's `BASH_ENV=f bash
 * x`): the program it runs (`name`, null when none) and the PATH it looks it up on, the values of
 * its `NAME=value` assignments, and the arguments it hands the program; or a reason it cannot be told.
 */
function envTarget(args: readonly string[], pathValue: string): { name: string | null; pathValue: string; assigned: string[]; args: string[] } | { unclear: string } {
  let rest = [...args];
  let path = pathValue;
  const assigned: string[] = [];
  while (rest.length > 0) {
    const a = rest[0]!;
    if (a === "-S" || a === "--split-string") {
      rest = [...(rest[1] ?? "").split(/[ \t]+/).filter((x) => x !== ""), ...rest.slice(2)];
      continue;
    }
    if (a.startsWith("-S")) {
      rest = [...a.slice(2).split(/[ \t]+/).filter((x) => x !== ""), ...rest.slice(1)];
      continue;
    }
    if (a === "-i" || a === "--ignore-environment" || a === "-" || a === "-0" || a === "--null" || a === "-v" || a === "--debug") {
      rest = rest.slice(1);
      continue;
    }
    if (a === "-u" || a === "--unset") {
      if (rest[1] === "PATH") path = "";
      rest = rest.slice(2);
      continue;
    }
    if (a === "--") {
      rest = rest.slice(1);
      break;
    }
    // Named up to any "=": an option's value is not repeated in a message.
    if (a.startsWith("-")) return { unclear: `env option ${JSON.stringify(a.split("=")[0])}` };
    const eq = a.indexOf("=");
    if (eq > 0) {
      if (a.slice(0, eq) === "PATH") path = a.slice(eq + 1);
      assigned.push(a.slice(eq + 1));
      rest = rest.slice(1);
      continue;
    }
    break;
  }
  return { name: rest[0] ?? null, pathValue: path, assigned, args: rest.slice(1) };
}

/** A file or directory a command's run reads code or input from ({@link commandFiles}). */
export interface CommandFile {
  path: string;
  /**
   * "interpreter": named by a `#!` line (or found on PATH by its `env`); "launched": a program named
   * in the command's arguments, which env or a launcher (timeout, nice, nohup, flock …) finds on PATH
   * and runs; "searched": a place on PATH searched for `name` before the one that holds it (`of` says
   * for which of those two); "argument": an existing file or directory named by an argument.
   */
  role: "interpreter" | "launched" | "searched" | "argument";
  name: string;
  of?: "interpreter" | "launched";
  unclear?: string;
}

/** Where a program named `name` is found on `pathValue` (each entry from `cwd`), and the places searched before it; a name with a slash is taken from `cwd`. */
function pathSearch(name: string, pathValue: string, cwd: string): { searched: string[]; found: string | null } {
  if (name.includes("/")) return { searched: [], found: resolve(cwd, name) };
  const searched: string[] = [];
  for (const dir of pathValue.split(delimiter)) {
    const p = resolve(cwd, dir || ".", name);
    if (isExecutableFile(p)) return { searched, found: p };
    searched.push(p);
  }
  return { searched, found: null };
}

/** The existing files and directories `args` name (an argument, or the value of a `NAME=value` or `--opt=value` one), from `cwd`. */
function* argumentFiles(args: readonly string[], cwd: string): Generator<CommandFile, void, undefined> {
  for (const a of args) {
    const candidates = [a];
    const eq = a.indexOf("=");
    if (eq > 0) candidates.push(a.slice(eq + 1));
    for (const c of candidates) {
      if (c === "" || c.startsWith("-")) continue;
      const p = resolve(cwd, c);
      try {
        const st = statSync(p);
        if (!st.isFile() && !st.isDirectory()) continue;
      } catch {
        continue;
      }
      yield { path: p, role: "argument", name: c };
    }
  }
}

/** The interpreters of `program`'s `#!` line, that interpreter's own (Linux follows up to 4), and what `env` finds and is given there. */
function* shebangChain(program: string, cwd: string, pathValue: string): Generator<CommandFile, void, undefined> {
  for (let depth = 0; depth < 5; depth++) {
    const sb = shebangOf(program);
    if (sb === null) return;
    const interp = isAbsolute(sb.interpreter) ? sb.interpreter : resolve(cwd, sb.interpreter);
    yield { path: interp, role: "interpreter", name: sb.interpreter };
    if (basename(interp) !== "env") {
      program = interp;
      continue;
    }
    const target = envTarget(sb.arg === null ? [] : [sb.arg], pathValue);
    if ("unclear" in target) {
      yield { path: interp, role: "interpreter", name: sb.interpreter, unclear: target.unclear };
      return;
    }
    yield* argumentFiles([...target.assigned, ...target.args], cwd);
    if (target.name === null) return;
    const s = pathSearch(target.name, target.pathValue, cwd);
    for (const p of s.searched) yield { path: p, role: "searched", name: target.name, of: "interpreter" };
    if (s.found === null) return;
    yield { path: s.found, role: "interpreter", name: target.name };
    program = s.found;
  }
}

/**
 * The files a command's run reads code or input from, beyond its program: each interpreter named by a
 * `#!` line on the way (through `/usr/bin/env NAME`, the places searched on PATH for NAME up to the one
 * found); when the program is `env` itself, what it runs (found on its PATH, the places searched before
 * it too) and the value of each `NAME=value` it sets (`BASH_ENV=file`); each argument that names a
 * program on PATH (what `timeout 20 NAME`, `nice NAME` or `nohup NAME` run), found as they find it;
 * and each argument (or the value of a `NAME=value` or `--opt=value` argument) that names an existing
 * file or directory, from `cwd` (a script handed to an interpreter, `["bash", "rotate.sh"]`, or a
 * directory, `["python3", "app/"]`). `path` is the program as found; `pathValue` and `cwd` are those
 * the command runs with.
 *
 * Yielded one at a time, each before anything is read from it: an interpreter's own `#!` line is
 * read only when the caller asks for the next file, so a caller that checks each file
 * ({@link commandTrustProblem}) and stops at an untrusted one never opens it. Opening a file another
 * user controls can block (a FUSE mount of theirs answering slowly or never; O_NONBLOCK covers a FIFO
 * only), and this runs on the daemon's event loop.
 */
export function* commandFiles(path: string, args: readonly string[], cwd: string, pathValue: string): Generator<CommandFile, void, undefined> {
  yield* shebangChain(path, cwd, pathValue);
  let rest = args;
  let restPath = pathValue;
  if (basename(path) === "env") {
    const t = envTarget(args, pathValue);
    if ("unclear" in t) {
      yield { path, role: "launched", name: "env", unclear: t.unclear };
      return;
    }
    yield* argumentFiles(t.assigned, cwd);
    if (t.name !== null) {
      const s = pathSearch(t.name, t.pathValue, cwd);
      for (const p of s.searched) yield { path: p, role: "searched", name: t.name, of: "launched" };
      if (s.found !== null) {
        yield { path: s.found, role: "launched", name: t.name };
        yield* shebangChain(s.found, cwd, t.pathValue);
      }
    }
    rest = t.args;
    restPath = t.pathValue;
  }
  yield* argumentFiles(rest, cwd);
  // A launcher (timeout, nice, nohup, flock, sudo …) looks a bare name among its arguments up on PATH.
  for (const a of rest) {
    if (a === "" || a.includes("/") || a.includes("=") || a.startsWith("-")) continue;
    const s = pathSearch(a, restPath, cwd);
    if (s.found === null) continue;
    for (const p of s.searched) yield { path: p, role: "searched", name: a, of: "launched" };
    yield { path: s.found, role: "launched", name: a };
    yield* shebangChain(s.found, cwd, restPath);
  }
}

/**
 * Why the directory at `path` lets another user change what a program run as the vault's owner reads
 * from it, or null: it (as its real path) belongs to another user or others can write it (sticky or
 * not: in /tmp another user adds files of their own), or a directory or link on the way to it does
 * ({@link assertSafeAncestors}). Throws the error of resolving `path` (ENOENT …) as it is.
 */
export function dirTrustProblem(path: string, place: TrustedProgramPlace): { kind: "insecure"; message: string } | null {
  if (!POSIX) return null;
  const uid = process.getuid!();
  const real = realpathSync(path);
  const st = statSync(real);
  if (st.uid !== uid && st.uid !== 0) return { kind: "insecure", message: `${place.what} (${real}) belongs to uid ${st.uid}, ${place.who}; use a directory owned by you or root, or ${place.elsewhere}` };
  if (othersMayWrite(st, undefined, real))
    return {
      kind: "insecure",
      message: `${place.what} (${real}) can be written by other users (mode ${octal(st.mode)}${(st.mode & 0o1000) !== 0 ? ", sticky: they can still add files of their own" : ""}), ${place.who}; fix it with: chmod go-w ${real}, or ${place.elsewhere}`,
    };
  return waysProblem(path, real, uid, place);
}

/**
 * `pathValue` with only the directories no other user can add a program to (each entry from `cwd`,
 * written as its absolute path): a directory of yours or root's that no one else can write, not even
 * a sticky one, on a way no one else can change ({@link dirTrustProblem}). A command lessor runs as
 * the vault's owner (a rotation hook, the key command) gets this PATH, so that no program it starts
 * that looks a name up itself (a script's `jq`, a launcher's argument) finds another user's. When no
 * entry is left, /usr/bin:/bin (as filtered). Unchanged on Windows.
 */
export function trustedPath(pathValue: string, cwd: string): string {
  if (!POSIX) return pathValue;
  const place = { what: "a PATH directory", who: "", elsewhere: "" };
  const keep = (value: string): string[] => {
    const out: string[] = [];
    for (const entry of value.split(delimiter)) {
      const dir = resolve(cwd, entry || ".");
      try {
        if (statSync(dir).isDirectory() && dirTrustProblem(dir, place) === null && !out.includes(dir)) out.push(dir);
      } catch {
        // missing or unreadable: nothing to find there
      }
    }
    return out;
  };
  const kept = keep(pathValue);
  return (kept.length > 0 ? kept : keep("/usr/bin:/bin")).join(delimiter);
}

function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Why the command (its program found at `path`, run with `args` from `cwd` on `pathValue`) must not run
 * as the vault's owner, or null: {@link programTrustProblem} for the program, then for each file of
 * {@link commandFiles} (an interpreter of its `#!` line, a program env or a launcher runs, a script or
 * other file it is handed): the same rule, {@link dirTrustProblem} for a directory it is handed; a
 * place searched on PATH before the interpreter or program found must not let another user put one
 * there. Throws what {@link programTrustProblem} throws for the program itself.
 */
export function commandTrustProblem(
  path: string,
  args: readonly string[],
  cwd: string,
  pathValue: string,
  place: TrustedProgramPlace,
): { kind: "not_file" | "insecure"; message: string } | null {
  const own = programTrustProblem(path, place);
  if (own !== null || !POSIX) return own;
  const uid = process.getuid!();
  for (const f of commandFiles(path, args, cwd, pathValue)) {
    if (f.unclear !== undefined)
      return f.role === "launched"
        ? { kind: "insecure", message: `${place.what} runs env with an ${f.unclear} that lessor cannot follow, so it cannot tell which program env runs; name that program by its full path as the command instead` }
        : { kind: "insecure", message: `${place.what} starts with a #! line through ${f.path} whose ${f.unclear} lessor cannot follow, so it cannot tell which interpreter runs it; name the interpreter by its full path in that line` };
    const dir = f.role === "argument" && isDirectory(f.path);
    const what =
      f.role === "argument"
        ? `the ${dir ? "directory" : "file"} ${JSON.stringify(f.name)} that ${place.what} is given`
        : f.role === "interpreter"
          ? `the interpreter ${JSON.stringify(f.name)} named in the #! line of ${place.what}`
          : f.role === "launched"
            ? `the program ${JSON.stringify(f.name)} named in the arguments of ${place.what}`
            : `${dirname(f.path)}, searched on PATH for ${JSON.stringify(f.name)} (${f.of === "launched" ? "a program named in the arguments" : "the interpreter in the #! line"} of ${place.what})`;
    const sub = { what, who: place.who, elsewhere: place.elsewhere };
    if (f.role === "searched") {
      try {
        assertSafeAncestors(f.path, uid, sub);
      } catch (e) {
        if (e instanceof VaultError) return { kind: "insecure", message: `${e.message}: another user could put their own ${JSON.stringify(f.name)} there` };
        throw e;
      }
      continue;
    }
    let p: ReturnType<typeof programTrustProblem>;
    try {
      p = dir ? dirTrustProblem(f.path, sub) : programTrustProblem(f.path, sub);
    } catch {
      continue; // missing: it does not run (env or the kernel says so)
    }
    if (p !== null && !(p.kind === "not_file" && f.role === "argument")) return { kind: "insecure", message: p.message };
  }
  return null;
}
