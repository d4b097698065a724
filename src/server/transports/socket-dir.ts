/**
 * The directory a Unix socket lives in must be one no other user can change. Whoever can write a
 * directory can rename, delete or replace the entries in it: they could swap the socket for a symlink
 * (so a later chmod or unlink hits their target), squat its name, or put their own socket there for
 * clients to talk to. So before the listener touches the path, every directory on the way to it is
 * checked:
 * - the socket's own directory belongs to the daemon's uid and is not writable by group or others;
 * - each ancestor belongs to root or the daemon's uid and is not writable by group or others, unless
 *   it is sticky (like /tmp): then others cannot rename or delete entries they do not own, and the
 *   entry on our way down is checked to belong to root or the daemon's uid (assertSafeAncestors in
 *   src/fs/perms.ts, the rule the lessor home follows too).
 * Symbolic links on the way are resolved first and the real directories are checked, and the caller
 * uses the real path from then on, so a link changed later does not matter.
 */
import { realpathSync, statSync, type Stats } from "node:fs";
import { assertSafeAncestors, octal } from "../../fs/perms.js";
import { VaultError } from "../../base/errors.js";
import { othersMayWrite } from "../../fs/private-group.js";

const POSIX = process.platform !== "win32" && typeof process.getuid === "function";

function stat(path: string, what: string): Stats {
  try {
    return statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "error";
    throw new VaultError("unavailable", `cannot inspect ${what} ${path} (${code}); check that it exists and that you may enter it.`);
  }
}

/**
 * Checks that the directory `dir` is safe to hold a Unix socket for a daemon running as `uid`, and
 * returns its real path (symlinks resolved). Throws `insecure_permissions` naming the directory at
 * fault and the command that fixes it, or `unavailable` when it does not exist.
 */
export function assertSafeSocketDir(dir: string, uid: number): string {
  let real: string;
  try {
    real = realpathSync(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "error";
    throw new VaultError("unavailable", `the socket directory ${dir} cannot be used (${code}); create it (mkdir -m 0700 ${dir}) or choose another socket path.`);
  }
  if (!POSIX) return real;
  const st = stat(real, "the socket directory");
  if (!st.isDirectory()) throw new VaultError("unavailable", `the socket directory ${real} is not a directory; choose another socket path.`);
  if (st.uid !== uid) {
    throw new VaultError(
      "insecure_permissions",
      `the socket directory ${real} belongs to uid ${st.uid}, not to the daemon's uid ${uid}; its owner could replace the socket. Use a directory you own, or fix it with: chown ${uid} ${real}`,
    );
  }
  if (othersMayWrite(st, undefined, real)) {
    throw new VaultError(
      "insecure_permissions",
      `the socket directory ${real} can be written by other users (mode ${octal(st.mode)}), who could replace the socket; fix it with: chmod go-w ${real}`,
    );
  }
  // Each ancestor must keep others from renaming the entry below it (the rule the lessor home follows too).
  assertSafeAncestors(real, uid, { what: `the socket directory ${real}`, elsewhere: "put the socket elsewhere" });
  return real;
}
