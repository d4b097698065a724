/**
 * Reading a file whose content decides what lessor does (lessor.toml, the policy): it must be a regular
 * file, owned by you (or root), that no other user can write, or another local user could grant
 * themselves leases or choose the commands lessor runs as you. Checked on the descriptor that is read
 * (fstat after open, so a swap between check and read changes nothing), opened non-blocking (a fifo
 * planted at the path is refused, never waited on). A symbolic link is followed: the file it leads to
 * is what is checked.
 */
import { closeSync, constants, fstatSync, openSync, readFileSync } from "node:fs";
import { VaultError, type ErrorCode } from "../base/errors.js";
import { octal } from "./perms.js";

const POSIX = process.platform !== "win32";

/**
 * Reads `path` as UTF-8 after the checks above. `what` names it in errors ("the policy file"); `code`
 * is the error code for a file that is not trustworthy or not a regular file. An error opening it
 * (ENOENT included) is thrown as it is, for the caller to word.
 */
export function readTrustedText(path: string, what: string, code: ErrorCode): string {
  const fd = openSync(path, constants.O_RDONLY | (POSIX ? constants.O_NONBLOCK : 0));
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new VaultError(code, `${what} ${path} is not a regular file (${st.isDirectory() ? "a directory" : st.isFIFO() ? "a fifo" : "not a file"}); replace it with the file itself`);
    if (POSIX) {
      const me = process.getuid!();
      if (st.uid !== me && st.uid !== 0)
        throw new VaultError(code, `${what} ${path} belongs to uid ${st.uid}, not to you (uid ${me}): another user could change what it says, so it is not used; make your own copy (or sudo chown ${me} ${path})`);
      if ((st.mode & 0o022) !== 0)
        throw new VaultError(code, `${what} ${path} can be changed by other users (mode ${octal(st.mode)}), so it is not used; fix it with: chmod go-w ${path}`);
    }
    return readFileSync(fd, "utf8");
  } finally {
    closeSync(fd);
  }
}
