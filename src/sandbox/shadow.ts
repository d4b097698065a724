/**
 * A system directory that holds covered entries (/etc: shadow, sudoers, ssh host keys, the owner's
 * 0600 files), shown as a tree of the sandbox's own instead of the host's directory with a mount on
 * each covered file. The kernel detaches a mount whose file is renamed over or removed, in every
 * namespace: a cover on the host's /etc/shadow was lifted by `passwd` renaming /etc/nshadow over it
 * during a run. Here the directory is a tmpfs; each directory on the way to a covered entry is one of
 * its directories, made the same way; every other entry is the host's, bound read-only (a
 * directory whole), copied (a small file anyone may read), or the symbolic link it is; a covered entry is an empty read-only file or
 * directory of that tmpfs. A host rename then replaces only what the sandbox no longer looks at:
 * the bound entry keeps showing the file it was bound to, and a cover lives where no host rename
 * reaches.
 */
import { lstatSync, readdirSync, readlinkSync } from "node:fs";
import { dirname, join } from "node:path";

/** The largest file copied rather than bound (/etc's ld.so.cache, mime.types and services are below it). */
const MAX_COPY = 256 * 1024;

/**
 * The most entries the shadow trees of one start hold, together. Each is one bwrap operation (up to 5
 * arguments, and a descriptor for a copy) and bwrap takes at most 9000 arguments: a directory on the
 * way to a cover whose entries would pass it is bound whole instead, its covers mounted over as
 * before (a host rename there lifts them), and a root directory that would is not made a tree.
 */
export const MAX_SHADOW_ENTRIES = 1000;

/** The first descriptor bwrap reads copied files from (after the seccomp filter's 5 and the bridge's 6). */
export const FIRST_COPY_FD = 7;

/** One step of a shadow tree, in the order bwrap makes them. */
export type ShadowEntry =
  /** A directory of the sandbox's tmpfs (`mode` as the host's). */
  | { kind: "dir"; path: string; mode: number }
  /** The host's entry at the same path, read-only (a directory with everything in it). */
  | { kind: "bind"; path: string }
  /**
   * A small file anyone may read, copied into the tmpfs as bwrap starts (`--file`, from a
   * descriptor lessor opens: src/sandbox/launch.ts): a mount each would cost bwrap a read of the
   * whole mount table, and /etc holds a hundred of them.
   */
  | { kind: "copy"; path: string; mode: number }
  | { kind: "symlink"; path: string; target: string }
  /** A covered entry: an empty read-only file or directory of the tmpfs. */
  | { kind: "cover"; path: string; dir: boolean };

/** A system directory shown as a tree of the sandbox's own: its mode, then the steps inside it. */
export interface Shadow {
  mode: number;
  entries: ShadowEntry[];
}

/**
 * The tree for `root` with `covers` (entries at their real paths inside it, none inside another)
 * covered. Entries are read now: one made later is not shown, one removed before bwrap binds it is
 * skipped (bwrap's `--ro-bind-try`). `budget` ({@link MAX_SHADOW_ENTRIES}, shared by the trees of one
 * start) is spent on the entries; undefined when `root` itself holds more than is left.
 */
export function planShadow(root: string, covers: { path: string; dir: boolean }[], budget = { left: MAX_SHADOW_ENTRIES }): Shadow | undefined {
  const covered = new Map(covers.map((c) => [c.path, c.dir]));
  const onTheWay = new Set<string>();
  for (const c of covers) for (let d = dirname(c.path); d.startsWith(root + "/"); d = dirname(d)) onTheWay.add(d);
  const entries: ShadowEntry[] = [];
  const list = (dir: string): string[] => {
    try {
      return readdirSync(dir).sort();
    } catch {
      return []; // gone or unreadable since the layout was planned: shown empty
    }
  };
  const walk = (dir: string, names: string[]): void => {
    budget.left -= names.length;
    for (const name of names) {
      const path = join(dir, name);
      const cover = covered.get(path);
      if (cover !== undefined) {
        entries.push({ kind: "cover", path, dir: cover });
        continue;
      }
      let st;
      try {
        st = lstatSync(path);
      } catch {
        continue; // removed meanwhile
      }
      if (st.isSymbolicLink()) {
        try {
          entries.push({ kind: "symlink", path, target: readlinkSync(path) });
        } catch {
          // removed meanwhile
        }
      } else if (st.isDirectory() && onTheWay.has(path)) {
        const inner = list(path);
        if (inner.length + 1 > budget.left) entries.push({ kind: "bind", path }); // too big to rebuild: {@link MAX_SHADOW_ENTRIES}
        else {
          budget.left -= 1;
          entries.push({ kind: "dir", path, mode: st.mode & 0o7777 });
          walk(path, inner);
        }
      } else if (st.isFile() && (st.mode & 0o004) !== 0 && st.size <= MAX_COPY) entries.push({ kind: "copy", path, mode: st.mode & 0o777 });
      else entries.push({ kind: "bind", path });
    }
  };
  let mode = 0o755;
  try {
    mode = lstatSync(root).mode & 0o7777;
  } catch {
    // the layout saw it a moment ago
  }
  const names = list(root);
  if (names.length > budget.left) return undefined;
  walk(root, names);
  return { mode, entries };
}

/**
 * The bwrap arguments for a shadow tree at `root`: a tmpfs, its entries, then the tmpfs made
 * read-only (the binds in it are read-only each). `copyFd` gives the descriptor each copied file,
 * and each covered one (from /dev/null: {@link copySources}), is read from. Covered files and
 * directories are empty ones of the tmpfs, with no mount of their own.
 */
export function shadowArgs(root: string, s: Shadow, copyFd: (path: string) => number): string[] {
  const perms = (mode: number): string[] => (mode === 0o755 ? [] : ["--perms", mode.toString(8).padStart(4, "0")]);
  const a = [...perms(s.mode), "--tmpfs", root];
  for (const e of s.entries) {
    if (e.kind === "dir") a.push(...perms(e.mode), "--dir", e.path);
    else if (e.kind === "copy") a.push("--perms", e.mode.toString(8).padStart(4, "0"), "--file", String(copyFd(e.path)), e.path);
    else if (e.kind === "bind") a.push("--ro-bind-try", e.path, e.path);
    else if (e.kind === "symlink") a.push("--symlink", e.target, e.path);
    else if (e.dir) a.push("--perms", "0555", "--dir", e.path);
    else a.push("--perms", "0444", "--file", String(copyFd(e.path)), e.path);
  }
  a.push("--remount-ro", root);
  return a;
}

/**
 * What bwrap copies into a shadow tree, in the order of its entries: [where inside, what lessor opens
 * for it] (a covered file is filled from /dev/null).
 */
export function copySources(s: Shadow): [string, string][] {
  return s.entries.flatMap((e): [string, string][] => (e.kind === "copy" ? [[e.path, e.path]] : e.kind === "cover" && !e.dir ? [[e.path, "/dev/null"]] : []));
}
