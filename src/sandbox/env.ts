/**
 * Which of the owner's environment variables the sandboxed agent does not get. The child's
 * environment is passed to bwrap as an allow-list (`--clearenv`, then one `--setenv` per variable),
 * so nothing else of lessor's own environment reaches it.
 */
import { isAbsolute, resolve, sep } from "node:path";
import { knownFormat } from "../base/token-formats.js";
import { TOKEN_RE } from "../base/token-shape.js";

/** Why a variable from the owner's environment is withheld, or null when it may pass. */
export type WithheldReason = "lessor" | "session" | "credential";

/** lessor's own: the master key, the passphrase, the daemon's address and the caller's token. */
const LESSOR_PREFIX = "LESSOR_";

/** Where a variable's value names paths, and how to read them out of it. */
export type PathSyntax =
  /** One path (relative: to where lessor runs, as the tools that read it do). */
  | "path"
  /** Paths separated by `:` (KUBECONFIG). */
  | "path-list"
  /** `unix://PATH` (DOCKER_HOST); other schemes name no path. */
  | "unix-url"
  /** `PATH:PID:PROTOCOL` (GPG_AGENT_INFO). */
  | "gpg-agent-info"
  /** A Kerberos cache name: `FILE:PATH`, `DIR:PATH` or a bare path; other types (KEYRING:, KCM:) name no path. */
  | "krb5-ccache"
  /** A D-Bus address: each `unix:path=` of its `;`-separated entries, %XX decoded; only absolute ones. */
  | "dbus-address";

/** A variable of the owner's whose value names a credential, a session socket or a store of them. */
export interface PathVariable {
  name: string;
  /** Why it is withheld from the agent ({@link withheldReason}). */
  reason: WithheldReason;
  syntax: PathSyntax;
  /** What the path is, for messages. */
  what: string;
}

/**
 * The variables whose value names a path the agent must not reach: each is withheld from the agent's
 * environment (below), and the paths it names are covered in the sandbox like the credential stores
 * (src/cli/run/sandbox.ts), so withholding the variable does not leave its file, directory or socket
 * to be found by name. One table, so the two cannot drift apart.
 */
export const PATH_VARIABLES: readonly PathVariable[] = [
  { name: "SSH_AUTH_SOCK", reason: "session", syntax: "path", what: "your ssh agent's socket" },
  { name: "GPG_AGENT_INFO", reason: "session", syntax: "gpg-agent-info", what: "your gpg agent's socket" },
  { name: "GNUPGHOME", reason: "session", syntax: "path", what: "your GnuPG home ($GNUPGHOME)" },
  { name: "DBUS_SESSION_BUS_ADDRESS", reason: "session", syntax: "dbus-address", what: "your D-Bus session bus" },
  { name: "DBUS_STARTER_ADDRESS", reason: "session", syntax: "dbus-address", what: "your D-Bus session bus" },
  { name: "GNOME_KEYRING_CONTROL", reason: "session", syntax: "path", what: "your keyring daemon's sockets ($GNOME_KEYRING_CONTROL)" },
  { name: "XAUTHORITY", reason: "session", syntax: "path", what: "your X11 authority file ($XAUTHORITY)" },
  { name: "KRB5CCNAME", reason: "session", syntax: "krb5-ccache", what: "your Kerberos tickets ($KRB5CCNAME)" },
  { name: "DOCKER_HOST", reason: "session", syntax: "unix-url", what: "your Docker daemon's socket ($DOCKER_HOST)" },
  { name: "DOCKER_CONFIG", reason: "session", syntax: "path", what: "your Docker configuration ($DOCKER_CONFIG)" },
  { name: "DOCKER_CERT_PATH", reason: "session", syntax: "path", what: "your Docker client certificates ($DOCKER_CERT_PATH)" },
  { name: "KUBECONFIG", reason: "session", syntax: "path-list", what: "your Kubernetes configuration ($KUBECONFIG)" },
  { name: "GOOGLE_APPLICATION_CREDENTIALS", reason: "credential", syntax: "path", what: "your Google Cloud credentials ($GOOGLE_APPLICATION_CREDENTIALS)" },
  { name: "CLOUDSDK_CONFIG", reason: "credential", syntax: "path", what: "your gcloud configuration ($CLOUDSDK_CONFIG)" },
  { name: "AZURE_CONFIG_DIR", reason: "credential", syntax: "path", what: "your Azure CLI configuration ($AZURE_CONFIG_DIR)" },
  { name: "AWS_SHARED_CREDENTIALS_FILE", reason: "credential", syntax: "path", what: "your AWS credentials ($AWS_SHARED_CREDENTIALS_FILE)" },
  { name: "AWS_CONFIG_FILE", reason: "credential", syntax: "path", what: "your AWS configuration ($AWS_CONFIG_FILE)" },
  { name: "GH_CONFIG_DIR", reason: "credential", syntax: "path", what: "your GitHub CLI configuration ($GH_CONFIG_DIR)" },
  { name: "PASSWORD_STORE_DIR", reason: "credential", syntax: "path", what: "your password store ($PASSWORD_STORE_DIR)" },
  { name: "PGPASSFILE", reason: "credential", syntax: "path", what: "your PostgreSQL password file ($PGPASSFILE)" },
  { name: "LESSOR_TOKEN_FILE", reason: "lessor", syntax: "path", what: "the daemon token file" },
];

const pathVariables = (reason: WithheldReason): string[] => PATH_VARIABLES.filter((v) => v.reason === reason).map((v) => v.name);

/** The owner's session: agents (ssh, gpg), the desktop bus, X11/Wayland and the runtime directory. */
const SESSION = new Set([
  ...pathVariables("session"),
  "SSH_AGENT_PID",
  "DBUS_STARTER_BUS_TYPE",
  "DBUS_SYSTEM_BUS_ADDRESS",
  "XDG_RUNTIME_DIR",
  "DISPLAY",
  "WAYLAND_DISPLAY",
]);

/** Well-known credential variables; the patterns below catch most others. */
const CREDENTIALS = new Set([
  ...pathVariables("credential"),
  "AWS_ACCESS_KEY_ID",
  "AWS_SECRET_ACCESS_KEY",
  "AWS_SESSION_TOKEN",
  "AZURE_CLIENT_SECRET",
  "DOCKER_AUTH_CONFIG",
  "VAULT_TOKEN",
  // Database clients' own: where docs/storage.md keeps the vault's PostgreSQL password, too.
  "PGPASSWORD",
  "MYSQL_PWD",
  "REDISCLI_AUTH",
  // Password managers' CLI sessions (Bitwarden's unlocks its local vault) and keys given as JSON.
  "BW_SESSION",
  "BW_CLIENTSECRET",
  "GOOGLE_CLOUD_KEYFILE_JSON",
  "GOOGLE_CREDENTIALS_JSON",
]);
/** 1Password CLI sessions: `OP_SESSION_<account>`. */
const SESSION_PREFIXES = ["OP_SESSION_"];
/** A private key (PEM, or PGP's armor), whatever the variable is called (`DEPLOY_KEY`, `ORG_GRADLE_PROJECT_signingKey`, inside a service account's JSON). */
const PRIVATE_KEY_PEM = /-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----|AGE-SECRET-KEY-1[0-9A-Z]{20,}/;
/** A URL with a password in its user info (`postgres://app:pw@db/app`): a credential whatever its name. */
const URL_WITH_PASSWORD = /^[a-z][a-z0-9+.-]*:\/\/[^/?#@\s:]*:[^/?#@\s]+@/i;
/** Where a URL starts in a value: at its start, or after a prefix such as JDBC's `jdbc:`. */
const URL_START = /[a-z][a-z0-9+.-]*:\/\//i;
/**
 * A URL parameter that carries a credential: libpq's and node-postgres's `password` and
 * `sslpassword`, ODBC's and MySQL's `pwd`, `pass`, and any name ending in password, passwd, secret,
 * token or api key (`access_token`, `client_secret`, `X-Amz-Security-Token`).
 */
const CREDENTIAL_PARAM = /^(pass|pwd|.*(password|passwd|secret|token|api[_-]?key))$/i;
/**
 * A name with a credential word in it, anywhere, as a whole `_`-separated word: `GITHUB_TOKEN`,
 * Terraform's `TF_TOKEN_app_terraform_io`, `GITHUB_PAT`, GitLab's `CI_JOB_JWT_V2`, `AWS_ACCESS_KEY_ID`,
 * `SECRET_KEY_BASE`, `TWINE_PASSWORD`, `DB_PASS`, Rails' `RAILS_MASTER_KEY`, Yarn's `YARN_NPM_AUTH_IDENT`,
 * `PWD` after another word (`DB_PWD`, as `MYSQL_PWD`; never the shell's own `PWD`, `OLDPWD`), a final `_PW` or Jenkins'
 * `_PSW` (`LDAP_BIND_PW`, `FOO_CREDS_PSW`; not Playwright's `PW_*`), Jenkins' `_CREDS`, Azure Pipelines'
 * `SYSTEM_ACCESSTOKEN`; and npm's `_auth` setting
 * (`NPM_CONFIG__AUTH`, user:password in base64). A word inside another (`TOKENIZERS_PARALLELISM`, `PATH`) is not one.
 */
const CREDENTIAL_NAME =
  /(^|_)(TOKEN|AUTHTOKEN|ACCESSTOKEN|PAT|JWT|SECRET|PASSWORD|PASSWD|PASS|PASSPHRASE|API_?KEY|ACCESS_KEY|PRIVATE_KEY|SECRET_KEY|MASTER_KEY|CREDENTIALS?|CREDS|AUTH_IDENT)(_|$)|(^|_)_AUTH$|.+_PWD(_|$)|.+_(PW|PSW)$/i;
/**
 * What a credential word may be followed by, ending the name, when the variable is about the
 * credential rather than holding it: where to get one (`ACTIONS_ID_TOKEN_REQUEST_URL`), its type or
 * lifetime (`TOKEN_TTL`). Such a value is still withheld when it is shaped like a token or a URL with
 * a password in it.
 */
const ABOUT_A_CREDENTIAL = /_(URL|URI|ENDPOINT|HOST|PORT|TYPE|ALG|ALGORITHM|TTL|LIFETIME|EXPIRY|TIMEOUT)$/i;
/**
 * The characters after a known token prefix (src/base/token-formats.ts) in a token: at least 16 of
 * letters, digits, `_`, `-` and `.`, with a digit among them (no `/`: a path is not a token),
 * so that a word that only starts like one (`sk-SK`, `hf_home`) is not taken for a token.
 */
const TOKEN_BODY = /^(?=[^\d]*\d)[A-Za-z0-9_.-]{16,}$/;

/**
 * Why the owner's variable `name` (holding `value`) is withheld from a sandboxed agent: lessor's own
 * variables, the owner's session sockets, and plain credentials: by name ({@link CREDENTIAL_NAME}),
 * by a value shaped like a known token (`ghp_…`, `glpat-…`, `AKIA…`, whatever the name), or as a URL
 * with a password in its user info or its parameters (a credential the agent should use is stored in
 * the vault and referred to, `GITHUB_TOKEN='$S:github-token'`, or given in an --env-file).
 */
export function withheldReason(name: string, value?: string): WithheldReason | null {
  if (name.toUpperCase().startsWith(LESSOR_PREFIX)) return "lessor";
  if (SESSION.has(name)) return "session";
  // Words of a camelCase name count too (Gradle's ORG_GRADLE_PROJECT_signingPassword).
  const words = name.replace(/([a-z0-9])([A-Z])/g, "$1_$2");
  if (CREDENTIALS.has(name) || SESSION_PREFIXES.some((p) => name.startsWith(p)) || (CREDENTIAL_NAME.test(words) && !ABOUT_A_CREDENTIAL.test(words))) return "credential";
  if (value !== undefined && (looksLikeToken(value) || urlHasPassword(value) || PRIVATE_KEY_PEM.test(value))) return "credential";
  return null;
}

/** Where a token may start or end in a value: `Bearer ghp_…`, `token=ghp_…`, `"ghp_…"`, `a:ghp_…`. */
const TOKEN_DELIMITERS = /[\s"'`=:,;&?]+/;

/**
 * True for a value that holds a token of a known format (or a lessor token, `lsr_…`), alone or as
 * one of its parts between {@link TOKEN_DELIMITERS}: its public prefix, then a token's body. A path (`/…`, `hf_home/x`) is none.
 */
export function looksLikeToken(value: string): boolean {
  return value.split(TOKEN_DELIMITERS).some((part) => {
    const format = knownFormat(part);
    return TOKEN_RE.test(part) || (format !== undefined && TOKEN_BODY.test(part.slice(format.prefix.length)));
  });
}

/**
 * True for a URL with a password in it, wherever in the value it starts (`jdbc:postgresql://…`): in
 * its user info, as a URL parser (node-postgres's) reads it or the pattern does, or as a non-empty
 * parameter that {@link CREDENTIAL_PARAM} names, after `?`, `&` or `;` (JDBC's SQL Server form).
 */
function urlHasPassword(value: string): boolean {
  const start = URL_START.exec(value);
  if (start === null) return false;
  const url = value.slice(start.index);
  if (URL_WITH_PASSWORD.test(url)) return true;
  for (const param of url.split(/[?&;#]/).slice(1)) {
    const eq = param.indexOf("=");
    if (eq <= 0 || eq === param.length - 1) continue;
    let key = param.slice(0, eq).trim();
    try {
      key = decodeURIComponent(key.replace(/\+/g, " "));
    } catch {
      // malformed %XX: the key as written
    }
    if (CREDENTIAL_PARAM.test(key.trim())) return true;
  }
  try {
    return new URL(url).password !== "";
  } catch {
    return false;
  }
}

/**
 * The paths the owner's environment names through {@link PATH_VARIABLES}, each with what it is:
 * relative ones resolved against `cwd` (where lessor runs, as the tools reading them would), the root
 * directory left out (covering it would cover everything).
 */
export function pathsNamedBy(env: NodeJS.ProcessEnv, cwd: string): { path: string; what: string; name: string }[] {
  const out: { path: string; what: string; name: string }[] = [];
  for (const v of PATH_VARIABLES) {
    const value = env[v.name];
    if (!value) continue;
    for (const p of parsePaths(v.syntax, value)) {
      const path = resolve(cwd, p);
      if (path !== sep) out.push({ path, what: v.what, name: v.name });
    }
  }
  return out;
}

/** The paths in `value`, read as `syntax` says (not yet resolved; empty parts left out). */
export function parsePaths(syntax: PathSyntax, value: string): string[] {
  switch (syntax) {
    case "path":
      return value ? [value] : [];
    case "path-list":
      return value.split(":").filter((p) => p !== "");
    case "unix-url":
      return value.startsWith("unix://") && value.length > "unix://".length ? [value.slice("unix://".length)] : [];
    case "gpg-agent-info": {
      const p = value.split(":")[0] ?? "";
      return p ? [p] : [];
    }
    case "krb5-ccache": {
      const typed = /^([A-Za-z0-9_-]+):(.*)$/.exec(value);
      if (typed === null) return value ? [value] : [];
      const type = typed[1]!.toUpperCase();
      // DIR::PATH names one cache file of the collection; DIR:PATH the collection's directory.
      const p = type === "DIR" ? typed[2]!.replace(/^:/, "") : type === "FILE" ? typed[2]! : "";
      return p ? [p] : [];
    }
    case "dbus-address": {
      const out: string[] = [];
      for (const addr of value.split(";")) {
        if (!addr.startsWith("unix:")) continue;
        for (const kv of addr.slice(5).split(",")) {
          if (!kv.startsWith("path=")) continue;
          let p: string;
          try {
            p = decodeURIComponent(kv.slice(5));
          } catch {
            continue; // malformed %XX: no path a client would use
          }
          if (isAbsolute(p)) out.push(p);
        }
      }
      return out;
    }
  }
}
