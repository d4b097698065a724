/**
 * lessor's own secrets in its environment: the master keys, the passphrase, the daemon token and the
 * database's password or URL. A program lessor runs for itself (the key command, `git config` in the
 * git credential helper) never gets them.
 */

/** The variables withheld. */
export const LESSOR_SECRET_VARIABLES: readonly string[] = Object.freeze([
  "LESSOR_MASTER_KEY",
  "LESSOR_MASTER_KEY_PREVIOUS",
  "LESSOR_PASSPHRASE",
  "LESSOR_TOKEN",
  "LESSOR_DATABASE_URL",
  "LESSOR_MIGRATE_TO",
  "PGPASSWORD",
]);

/** A copy of `env` without {@link LESSOR_SECRET_VARIABLES}, for a program lessor runs. */
export function withoutLessorSecrets(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !LESSOR_SECRET_VARIABLES.includes(k)));
}
