/**
 * What the keychain tests (test/keychain.test.ts, test/keychain-attacks.test.ts) share: whether the
 * machine can run them, and a session bus pointed nowhere. Importing this module points this
 * process's DBUS_SESSION_BUS_ADDRESS at a path that does not exist: the keychain helper inherits the
 * environment, and a test outside its own private session must never reach the user's keychain (nor
 * wait on its unlock prompt).
 */
import { accessSync, constants } from "node:fs";
import { createRequire } from "node:module";
import { delimiter, join } from "node:path";

process.env.DBUS_SESSION_BUS_ADDRESS = "unix:path=/nonexistent/lessor-test-bus";

/** True when `cmd` is an executable in a PATH directory. */
export function onPath(cmd: string): boolean {
  return (process.env.PATH ?? "").split(delimiter).some((d) => {
    try {
      accessSync(join(d, cmd), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

function keyringInstalled(): boolean {
  try {
    createRequire(import.meta.url).resolve("@napi-rs/keyring");
    return true;
  } catch {
    return false;
  }
}

/**
 * What is missing for a private Secret Service (dbus-run-session, gnome-keyring-daemon, the optional
 * package @napi-rs/keyring), then the `more` checks in order (a reason, or null when present); null
 * when nothing is.
 */
export function keychainMissing(more: (() => string | null)[] = []): string | null {
  if (!onPath("dbus-run-session")) return "dbus-run-session is not installed (Debian: apt-get install dbus-bin)";
  if (!onPath("gnome-keyring-daemon")) return "gnome-keyring-daemon is not installed (Debian: apt-get install gnome-keyring)";
  if (!keyringInstalled()) return "the optional package @napi-rs/keyring is not installed (npm install)";
  for (const check of more) {
    const why = check();
    if (why !== null) return why;
  }
  return null;
}
