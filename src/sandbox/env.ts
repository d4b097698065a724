/**
 * Which of the owner's environment variables the sandboxed agent does not get. The child's
 * environment is passed to bwrap as an allow-list (`--clearenv`, then one `--setenv` per variable),
 * so nothing else of lessor's own environment reaches it.
 */

/** Why a variable from the owner's environment is withheld, or null when it may pass. */
export type WithheldReason = "lessor" | "session" | "credential";

/** lessor's own: the master key, the passphrase, the daemon's address and the caller's token. */
const LESSOR_PREFIX = "LESSOR_";

/** The owner's session: agents (ssh, gpg), the desktop bus, X11/Wayland and the runtime directory. */
const SESSION = new Set([
  "SSH_AUTH_SOCK",
  "SSH_AGENT_PID",
  "GPG_AGENT_INFO",
  "GNUPGHOME",
  "DBUS_SESSION_BUS_ADDRESS",
  "DBUS_STARTER_ADDRESS",
  "DBUS_STARTER_BUS_TYPE",
  "DBUS_SYSTEM_BUS_ADDRESS",
  "GNOME_KEYRING_CONTROL",
  "XDG_RUNTIME_DIR",
  "DISPLAY",
  "WAYLAND_DISPLAY",
  "XAUTHORITY",
  "KRB5CCNAME",
  "DOCKER_HOST",
  "DOCKER_CONFIG",
  "KUBECONFIG",
]);

/** Well-known credential variables; the patterns below catch most others. */
const CREDENTIALS = new Set([
  "AWS_ACCESS_KEY_ID",
  "AWS_SECRET_ACCESS_KEY",
  "AWS_SESSION_TOKEN",
  "GOOGLE_APPLICATION_CREDENTIALS",
  "AZURE_CLIENT_SECRET",
  "DOCKER_AUTH_CONFIG",
  "VAULT_TOKEN",
  // Database clients' own: where docs/storage.md keeps the vault's PostgreSQL password, too.
  "PGPASSWORD",
  "PGPASSFILE",
  "MYSQL_PWD",
  "REDISCLI_AUTH",
]);
/** A URL with a password in its user info (`postgres://app:pw@db/app`): a credential whatever its name. */
const URL_WITH_PASSWORD = /^[a-z][a-z0-9+.-]*:\/\/[^/?#@\s:]*:[^/?#@\s]+@/i;
const CREDENTIAL_NAME = /(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|ACCESS_KEY|PRIVATE_KEY|SECRET_KEY|CREDENTIALS?)$/i;

/**
 * Why the owner's variable `name` (holding `value`) is withheld from a sandboxed agent: lessor's own
 * variables, the owner's session sockets, and plain credentials, by name or as a URL with a password
 * (a credential the agent should use is stored in
 * the vault and referred to, `GITHUB_TOKEN='$S:github-token'`, or given in an --env-file).
 */
export function withheldReason(name: string, value?: string): WithheldReason | null {
  if (name.toUpperCase().startsWith(LESSOR_PREFIX)) return "lessor";
  if (SESSION.has(name)) return "session";
  if (CREDENTIALS.has(name) || CREDENTIAL_NAME.test(name)) return "credential";
  if (value !== undefined && urlHasPassword(value)) return "credential";
  return null;
}

/** True for a URL with a password in it, as a URL parser (node-postgres's) reads it, or the pattern. */
function urlHasPassword(value: string): boolean {
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) return false;
  if (URL_WITH_PASSWORD.test(value)) return true;
  try {
    return new URL(value).password !== "";
  } catch {
    return false;
  }
}
