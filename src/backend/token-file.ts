/**
 * Reads a bearer token from the file named by `LESSOR_TOKEN_FILE`. The file must be a regular file
 * owned by the current user with no group or other permission bits (0600 or stricter), as a token
 * is as good as the identity it stands for. The checks are made on the opened file descriptor
 * (fstat), so the file cannot be swapped between the check and the read. No message ever quotes
 * the file's content.
 */
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";
import { octal, privateProblem } from "../fs/perms.js";
import { VaultError } from "../base/errors.js";
import { TOKEN_RE } from "../base/token-shape.js";

/** A token file holds one token, `lsr_<16 hex>_<43 base64url>` (64 characters), and perhaps a newline. */
const MAX_TOKEN_FILE_BYTES = 4096;

/**
 * What a token looks like, for the message refusing a malformed one: the setting is then unusable
 * (config_invalid, exit 2), found before anything is sent, never a denial. Never quotes the token.
 */
export const TOKEN_LOOKS_LIKE = "a lessor token is lsr_ followed by 16 hex characters, _ and 43 more (64 in all), exactly as lessor token create printed it; check that it was copied whole";

/** True when `token` has the shape of a lessor token ({@link TOKEN_RE}). */
export function tokenShaped(token: string): boolean {
  return TOKEN_RE.test(token);
}

/**
 * Reads and checks the token file at `path`; returns the token (surrounding whitespace removed).
 * Throws VaultError `insecure_permissions` for a file another user owns or others may read or write,
 * and `config_invalid` for a missing, unreadable or malformed one.
 */
export function readTokenFile(path: string): string {
  const what = `LESSOR_TOKEN_FILE (${path})`;
  let fd: number;
  try {
    // O_NONBLOCK: opening a FIFO planted at the path must not hang; it is refused below as not a file.
    fd = openSync(path, constants.O_RDONLY | constants.O_NOCTTY | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "error";
    const why = code === "ENOENT" ? "does not exist" : code === "EACCES" ? "cannot be read by you (permission denied)" : `cannot be opened (${code})`;
    throw new VaultError("config_invalid", `${what} ${why}; point it at the file holding your token, or ask the operator for one`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new VaultError("config_invalid", `${what} is not a regular file; point it at the file holding your token`);
    const problem = privateProblem(st);
    if (problem === "owner")
      throw new VaultError("insecure_permissions", `${what} belongs to uid ${st.uid}, not to you (uid ${process.getuid?.()}); a token file must be your own, mode 0600`);
    if (problem === "mode")
      throw new VaultError(
        "insecure_permissions",
        `${what} has mode ${octal(st.mode)}, so other users may read or change your token; run chmod 600 ${path} (and get a new token if others could read it)`,
      );
    if (st.size > MAX_TOKEN_FILE_BYTES) throw new VaultError("config_invalid", `${what} is over ${MAX_TOKEN_FILE_BYTES} bytes; it must hold only the token`);
    const buf = Buffer.alloc(MAX_TOKEN_FILE_BYTES + 1);
    let n = 0;
    for (;;) {
      const got = readSync(fd, buf, n, buf.length - n, null);
      if (got === 0 || n + got >= buf.length) {
        n += got;
        break;
      }
      n += got;
    }
    const token = buf.subarray(0, n).toString("utf8").trim();
    buf.fill(0);
    if (n > MAX_TOKEN_FILE_BYTES || !tokenShaped(token))
      throw new VaultError("config_invalid", `${what} does not hold one token on one line; ${TOKEN_LOOKS_LIKE}`);
    return token;
  } finally {
    closeSync(fd);
  }
}
