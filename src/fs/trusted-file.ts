/**
 * Reading a file whose content decides what lessor does (lessor.toml, the policy): it must be a regular
 * file, owned by you (or root), that no other user can write, or another local user could grant
 * themselves leases or choose the commands lessor runs as you. Checked on the descriptor that is read
 * (fstat after open, so a swap between check and read changes nothing), opened non-blocking (a fifo
 * planted at the path is refused, never waited on). A symbolic link is followed: the file it leads to
 * is what is checked.
 */
import { closeSync, constants, fstatSync, openSync, readFileSync, type Stats } from "node:fs";
import { VaultError, type ErrorCode } from "../base/errors.js";
import { octal } from "./perms.js";
import { readCappedSync } from "./capped-read.js";
import { othersMayWrite } from "./private-group.js";

const POSIX = process.platform !== "win32";

/**
 * Reads `path` as UTF-8 after the checks above. `what` names it in errors ("the policy file"); `code`
 * is the error code for a file that is not trustworthy or not a regular file. An error opening it
 * (ENOENT included) is thrown as it is, for the caller to word.
 */
export function readTrustedText(path: string, what: string, code: ErrorCode): string {
  return readTrustedFile(path, what, code).text;
}

/**
 * {@link readTrustedText}, with the mode of the file read; with `maxBytes`, a file larger than that
 * is refused (`code`) rather than read whole.
 */
export function readTrustedFile(path: string, what: string, code: ErrorCode, maxBytes?: number): { text: string; mode: number } {
  const fd = openNoWait(path);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new VaultError(code, `${what} ${path} is not a regular file (${st.isDirectory() ? "a directory" : st.isFIFO() ? "a fifo" : "not a file"}); replace it with the file itself`);
    checkOwnInput(st, `${what} ${path}`, path, "change what it says", code, fd);
    if (maxBytes === undefined) return { text: readFileSync(fd, "utf8"), mode: st.mode };
    const read = readCappedSync(fd, maxBytes);
    if ("tooLarge" in read) throw new VaultError(code, `${what} ${path} is larger than ${maxBytes} bytes`);
    const text = read.bytes.toString("utf8");
    read.bytes.fill(0);
    return { text, mode: st.mode };
  } finally {
    closeSync(fd);
  }
}

/**
 * Opens `path` to read it without waiting: non-blocking, so that a fifo no one writes (one another
 * user planted at the path) gives its end at once rather than hanging the command. The caller closes
 * the descriptor; {@link readCappedSync} reads it (and waits out EAGAIN from a pipe being written).
 */
export function openNoWait(path: string): number {
  return openSync(path, constants.O_RDONLY | (POSIX ? constants.O_NONBLOCK : 0));
}

/**
 * Checks an input the user named whose content becomes what lessor stores or runs with (the file of
 * `secret import`, `secret set --from-file`, an `--env-file`): a file or a pipe must belong to you or
 * root and be writable by no other user, or another local user who planted it (in /tmp, say) or can
 * still write it would choose it. A device must be yours or root's too (another user's pseudo-terminal
 * carries what they type), unless it is the terminal lessor was started from; its mode is not
 * checked (/dev/zero, your own terminal). `named` is how messages name it ("the env file ./x.env"), `consequence` completes
 * "another user could …"; `fd`, the descriptor `st` is of. Throws VaultError(`code`).
 */
export function checkOwnInput(st: Stats, named: string, path: string, consequence: string, code: ErrorCode = "insecure_permissions", fd?: number): void {
  if (!POSIX || st.isSocket()) return;
  const me = process.getuid!();
  // A device too: a pseudo-terminal's slave belongs to whoever opened it, who types what it reads
  // (another user's, planted as a link at the path). The terminal lessor was started from is fine
  // whoever owns it (sudo from your own terminal).
  if (st.uid !== me && st.uid !== 0 && !(st.isCharacterDevice() && sameAsStdin(st)))
    throw new VaultError(code, `${named} belongs to uid ${st.uid}, not to you (uid ${me}): another user could ${consequence}, so it is not read; make your own copy (or sudo chown ${me} ${path})`);
  // A terminal's group write bit (tty, for write(1)) writes its output, never what is read from it.
  if (!(st.isFile() || st.isFIFO())) return;
  // The ACL is read from the descriptor that was checked and is read (its /proc/self/fd link), not the path.
  if (othersMayWrite(st, undefined, fd !== undefined && process.platform === "linux" ? `/proc/self/fd/${fd}` : path))
    throw new VaultError(code, `${named} can be changed by other users (mode ${octal(st.mode)}), who could ${consequence}, so it is not read; fix it with: chmod go-w ${path}`);
}

/** Whether `st` is the file this process's standard input is (the terminal it was started from). */
function sameAsStdin(st: Stats): boolean {
  try {
    const i = fstatSync(0);
    return i.dev === st.dev && i.ino === st.ino && i.rdev === st.rdev;
  } catch {
    return false;
  }
}
