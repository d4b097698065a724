/**
 * One daemon per home: `<home>/lessor.pid` names the running daemon, a lock file of src/fs/lock-file.ts
 * (its format and its recovery of a lock left by a dead process are described there).
 */
import { VaultError } from "../base/errors.js";
import { tryLockFile, type HeldLock } from "../fs/lock-file.js";

/** The lock file's name inside the home. */
export const LOCK_FILE = "lessor.pid";

/** A held daemon lock. */
export type DaemonLock = HeldLock;

/**
 * Takes the lock for `home`, or throws VaultError("unavailable") naming the pid of the live daemon
 * that holds it ({@link tryLockFile}).
 */
export function acquireDaemonLock(home: string): DaemonLock {
  const got = tryLockFile(home, LOCK_FILE);
  if ("heldBy" in got) throw new VaultError("unavailable", `another lessor daemon (pid ${got.heldBy.pid}) is running for ${home}; stop it first.`);
  return got;
}
