/**
 * What a failed file write says: the errno errors a disk or file system gives (full, over quota,
 * read-only, failing, not permitted) turned into VaultError("unavailable") naming the file, the cause
 * and what to do, rather than a raw Node error the CLI can only call a bug.
 */
import { VaultError } from "../base/errors.js";

/** The cause and the remedy for each errno a write can meet on a sound program. */
const CAUSES: Readonly<Record<string, string>> = {
  ENOSPC: "no space left on the device (ENOSPC); free space and run the command again",
  EDQUOT: "the disk quota is used up (EDQUOT); free space or raise the quota and run the command again",
  EFBIG: "the file system refused the file's size (EFBIG); free space and run the command again",
  EROFS: "the file system is mounted read-only (EROFS); make it writable and run the command again",
  EIO: "the disk reported an I/O error (EIO); check the disk, then run the command again",
  EACCES: "permission denied (EACCES); the file and its directory must be yours and writable by you",
  EPERM: "operation not permitted (EPERM); the file and its directory must be yours and writable by you",
  ENOENT: "its directory does not exist (ENOENT); check the path, or make the directory (mode 0700)",
  ENOTDIR: "a part of its path is not a directory (ENOTDIR); check the path",
  EMFILE: "too many open files (EMFILE); run the command again",
  ENFILE: "too many open files on the system (ENFILE); run the command again",
};

/**
 * The error to throw for a write of `path` (`what` names it: "the key file") that failed with `e`:
 * VaultError("unavailable") for the errno errors in {@link CAUSES}, and `e` itself otherwise (a
 * VaultError already, or a bug). Never quotes what was being written.
 */
export function writeError(e: unknown, path: string, what: string): unknown {
  const code = typeof (e as { code?: unknown } | null)?.code === "string" ? (e as { code: string }).code : "";
  const cause = Object.prototype.hasOwnProperty.call(CAUSES, code) ? CAUSES[code] : undefined;
  if (e instanceof VaultError || cause === undefined) return e;
  return new VaultError("unavailable", `could not write ${what} ${path}: ${cause}`, { cause: e });
}
