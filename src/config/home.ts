/**
 * The lessor home: the 0700 directory holding the config, the policy, the key file and the database.
 * `LESSOR_HOME` or `~/.lessor` unless given.
 */
import { homedir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";

/** Resolves the home directory: explicit, else `LESSOR_HOME`, else `~/.lessor`. */
export function resolveHome(home?: string, env: NodeJS.ProcessEnv = process.env): string {
  const h = home ?? env["LESSOR_HOME"];
  return resolve(h && h.length > 0 ? h : join(homedir(), ".lessor"));
}

/** Fixed file names inside the home. */
export const HOME_FILES = {
  config: "lessor.toml",
  database: "lessor.db",
} as const;

/** `p` if absolute, else `p` inside `home`. */
export function inHome(home: string, p: string): string {
  return isAbsolute(p) ? p : join(home, p);
}
