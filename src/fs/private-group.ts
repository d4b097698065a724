/**
 * Whether a group write bit lets anyone but the owner write. Distributions with user private groups
 * (Debian, Ubuntu, Fedora: each user has a group of their own, and a umask of 002) make every new file
 * 0664 and every new directory 0775; refusing those would refuse what a user just made. A group write
 * bit is harmless when the group is the owner's own: Debian's OpenSSH accepts it on the same terms
 * (its `user-group-modes` patch), which are these, read from /etc/passwd and /etc/group:
 *
 * - the group is listed in /etc/group and the owner in /etc/passwd;
 * - every user whose primary group it is, is the owner;
 * - its member list is empty or names the owner alone;
 * - and the owner is in it at all (primary group or member).
 *
 * A group known only to another name service (LDAP, sssd) is not listed in /etc/group and does not
 * count as private: its bit is refused, as before.
 */
import { readFileSync, statfsSync } from "node:fs";
import { defaultAddonPath, requireAddon } from "../native/peercred.js";

/** Where the account databases are read (tests pass their own). */
export interface AccountFiles {
  passwd: string;
  group: string;
}

const SYSTEM: AccountFiles = { passwd: "/etc/passwd", group: "/etc/group" };

function lines(path: string): string[][] {
  try {
    return readFileSync(path, "utf8")
      .split("\n")
      .filter((l) => l !== "" && !l.startsWith("#") && !l.startsWith("+") && !l.startsWith("-"))
      .map((l) => l.split(":"));
  } catch {
    return [];
  }
}

const num = (s: string | undefined): number | null => (s !== undefined && /^\d+$/.test(s) ? Number(s) : null);

/** True when group `gid` is the private group of user `uid` alone (the rules above). */
export function isPrivateGroup(gid: number, uid: number, files: AccountFiles = SYSTEM): boolean {
  const users = lines(files.passwd);
  const owner = users.find((u) => num(u[2]) === uid);
  if (owner === undefined) return false;
  const group = lines(files.group).filter((g) => num(g[2]) === gid);
  if (group.length !== 1) return false; // unknown here, or listed twice (ambiguous)
  for (const u of users) if (num(u[3]) === gid && num(u[2]) !== uid) return false;
  const members = (group[0]![3] ?? "").split(",").filter((m) => m !== "");
  if (members.some((m) => m !== owner[0])) return false;
  return num(owner[3]) === gid || members.length === 1;
}

/** statfs types of filesystems whose ACLs are not POSIX ones: NFS, CIFS, SMB2, FUSE. */
const FOREIGN_ACLS = new Set([0x6969, 0xff534d42, 0xfe534d42, 0x65735546]);

/** The addon's `hasacl(path)` (links followed), loaded on first use; null when the addon is not built. */
let hasAcl: ((path: string) => boolean) | null | undefined;

/**
 * Whether `path` may carry a POSIX ACL. With one, st_mode's group bits are its mask, which a named
 * entry (user:bob:rw-) sets as well as the owning group: they no longer say who may write. Read by the
 * native addon (Node has no call for extended attributes); without a path, on another system than
 * Linux, or without the addon, it may: the bit is refused, as it was before private groups counted.
 */
function mayHaveAcl(path: string | undefined): boolean {
  if (process.platform !== "linux" || path === undefined) return true;
  if (hasAcl === undefined) {
    const got = requireAddon(defaultAddonPath());
    hasAcl = "addon" in got && typeof got.addon["hasacl"] === "function" ? (got.addon["hasacl"] as (p: string) => boolean) : null;
  }
  if (hasAcl === null) return true;
  try {
    // NFS, SMB and FUSE filesystems answer "not supported" for POSIX ACLs while the server may enforce
    // ACLs of its own (NFSv4's, Windows'): their group bits say nothing either.
    if (FOREIGN_ACLS.has(statfsSync(path).type)) return true;
    return hasAcl(path) !== false;
  } catch {
    return true;
  }
}

/**
 * True when someone other than the owner (and root) may write what `st` (the stat of `path`)
 * describes: the other-write bit, or the group-write bit on a group that is not the owner's private
 * group, or on a file or directory with a POSIX ACL (whose named entries that bit also stands for).
 */
export function othersMayWrite(st: { mode: number; uid: number; gid: number }, files: AccountFiles = SYSTEM, path?: string): boolean {
  if ((st.mode & 0o002) !== 0) return true;
  if ((st.mode & 0o020) === 0) return false;
  return !isPrivateGroup(st.gid, st.uid, files) || (files === SYSTEM && mayHaveAcl(path));
}
