/**
 * What the sandbox never shows, whatever else it shows: the owner's credential stores (more can be
 * added with `[run] hide` in lessor.toml) and the secret files of /etc. The owner's home is not
 * shown at all unless a `[run] read`/`write` entry or the project directory is inside it; these
 * lists matter when one is, and when a store lives outside the home through a symlink.
 */
import { lstatSync, readdirSync, statSync, type Stats } from "node:fs";
import { VaultError } from "../base/errors.js";
import { basename, dirname, join } from "node:path";

/** The owner's credential stores, relative to the home (`~/`). */
export const CREDENTIAL_STORES: readonly string[] = [
  "~/.ssh",
  "~/.aws",
  "~/.config/gh",
  "~/.netrc",
  "~/.npmrc",
  "~/.docker/config.json",
  "~/.gnupg",
  "~/.git-credentials",
  "~/.config/git/credentials",
  "~/.kube",
  "~/.config/gcloud",
  "~/.azure",
  "~/.pypirc",
  "~/.cargo/credentials.toml",
  "~/.cargo/credentials",
  "~/.terraform.d/credentials.tfrc.json",
  "~/.password-store",
  "~/.local/share/keyrings",
  // gnome-keyring's sockets (its control socket stops it) when there is no $XDG_RUNTIME_DIR, and X11's cookie.
  "~/.cache/keyring-*",
  "~/.Xauthority",
  // Database clients' password files (docs/storage.md suggests ~/.pgpass for the vault's own).
  "~/.pgpass",
  "~/.my.cnf",
  // Token files: lessor's own (docs/cli.md keeps an agent token in ~/.config/lessor) and HashiCorp Vault's.
  "~/.config/lessor",
  "~/.vault-token",
  // Registry logins and keys: podman/skopeo's, Docker's TLS client key (DOCKER_CERT_PATH's default).
  "~/.config/containers/auth.json",
  "~/.docker/key.pem",
  // Developer tools' tokens: GitHub Copilot's, hub's, glab's, Terraform's older file.
  "~/.config/github-copilot",
  "~/.config/hub",
  "~/.config/glab-cli",
  "~/.terraformrc",
  // Package managers' repository passwords and API keys.
  "~/.m2/settings.xml",
  "~/.gradle/gradle.properties",
  "~/.gem/credentials",
  "~/.yarnrc.yml",
  "~/.config/composer/auth.json",
  // Cloud storage keys: rclone's remotes, s3cmd's and boto's, Oracle Cloud's API key.
  "~/.config/rclone",
  "~/.s3cfg",
  "~/.boto",
  "~/.oci",
  // Password managers' CLI state.
  "~/.config/Bitwarden CLI",
  "~/.config/op",
  // Shell and REPL histories (tokens typed or pasted on command lines): .bash_history, .psql_history, …
  "~/.*_history",
];

/** Files and directories of /etc that hold secrets (readable to root, which a sandbox may run as). */
const ETC_SECRETS: readonly string[] = [
  "/etc/shadow",
  "/etc/shadow-",
  "/etc/gshadow",
  "/etc/gshadow-",
  "/etc/sudoers",
  "/etc/sudoers.d",
  "/etc/security/opasswd",
  "/etc/ssl/private",
  "/etc/krb5.keytab",
  "/etc/wireguard",
  "/etc/NetworkManager/system-connections",
  "/etc/letsencrypt",
  "/etc/lessor",
];

/** {@link ETC_SECRETS} plus the ssh host private keys (`/etc/ssh/ssh_host_*_key`). */
export function etcSecrets(): string[] {
  const out = [...new Set([...ETC_SECRETS, ...ownerOnlyEtc(), ...ownerOnlyEtc("/usr/local/etc")])];
  try {
    for (const f of readdirSync("/etc/ssh")) if (/^ssh_host_.*_key$/.test(f)) out.push(join("/etc/ssh", f));
  } catch {
    // no /etc/ssh
  }
  return out;
}

/**
 * Sockets of the machine's own services in the system directories the sandbox shows read-only (a
 * read-only mount does not stop a connect): the Nix daemon's, through which the agent would build and
 * run as the daemon's build users and fill the store.
 */
export const SYSTEM_SOCKETS: readonly string[] = ["/nix/var/nix/daemon-socket"];

/**
 * A credential store's paths: `~/` expanded ({@link expandHome}); a `*` in the last part matches the
 * names that directory holds now (`~/.cache/keyring-*`). None for `~/x` when there is no home.
 */
export function expandStore(p: string, home: string | undefined): string[] {
  const path = expandHome(p, home);
  if (path === null) return [];
  const name = basename(path);
  if (!name.includes("*")) return [path];
  const pattern = new RegExp(`^${name.split("*").map((part) => part.replace(/[\\^$.|?+()[\]{}]/g, "\\$&")).join(".*")}$`);
  const dir = dirname(path);
  try {
    return readdirSync(dir)
      .filter((e) => pattern.test(e))
      .map((e) => join(dir, e));
  } catch {
    return []; // no such directory: nothing there to cover
  }
}

/** `~/x` → `<home>/x`; other paths unchanged. Null for `~/x` when there is no home. */
export function expandHome(p: string, home: string | undefined): string | null {
  if (p === "~") return home ?? null;
  if (!p.startsWith("~/")) return p;
  return home ? join(home, p.slice(2)) : null;
}

/** How deep and how many entries {@link ownerOnlyEtc} looks at (/etc holds a few thousand). */
const ETC_WALK_DEPTH = 8;
const ETC_WALK_MAX = 50_000;

/**
 * The entries of /etc that this uid owns and others may not read (a file without the "others" read
 * bit, a directory others may not list or enter): the machine's own mark of a secret, such as k3s's
 * cluster-admin `/etc/rancher/k3s/k3s.yaml`, `/etc/kubernetes/admin.conf`, `/etc/mysql/debian.cnf`,
 * `/etc/ipsec.secrets`, `/etc/ppp/chap-secrets`, `/etc/postfix/sasl_passwd`, `/etc/netplan/*.yaml`
 * (all 0600 root). The agent runs as this uid (root stays uid 0, without capabilities): it reads
 * what this uid owns, so a root owner's agent would read every one of them. Symbolic links are not
 * followed in the walk, but one leading to such a file or directory is listed (the layout covers its
 * real path); a directory found is covered whole and not entered. Throws past {@link ETC_WALK_MAX}.
 */
export function ownerOnlyEtc(root = "/etc", uid: number | undefined = process.getuid?.()): string[] {
  if (uid === undefined) return [];
  const out: string[] = [];
  let seen = 0;
  const walk = (dir: string, depth: number): void => {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return;
    }
    for (const name of names) {
      // Past the limit a secret could be left uncovered: the run is refused rather than started so.
      if (++seen > ETC_WALK_MAX)
        throw new VaultError("invalid_request", `${root} holds more than ${ETC_WALK_MAX} entries, too many to find every file in it only you may read; lessor run did not start the command`);
      const p = join(dir, name);
      let st;
      try {
        st = lstatSync(p);
      } catch {
        continue;
      }
      if (st.isSymbolicLink()) {
        // Not followed in the walk, but a link to an owner-only file or directory (in /usr/local, /opt:
        // shown too) is read through: the link is listed, and the layout covers its real path.
        try {
          if (ownerOnly(statSync(p), uid)) out.push(p);
        } catch {
          // a dangling link
        }
        continue;
      }
      if (ownerOnly(st, uid)) out.push(p);
      else if (st.isDirectory() && depth < ETC_WALK_DEPTH) walk(p, depth + 1);
    }
  };
  walk(root, 1);
  return out;
}

/** `st` belongs to `uid` and others may not read it (a file) or list and enter it (a directory). */
function ownerOnly(st: Stats, uid: number): boolean {
  return st.uid === uid && (st.isDirectory() ? (st.mode & 0o005) !== 0o005 : (st.mode & 0o004) === 0);
}
