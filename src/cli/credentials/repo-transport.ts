/**
 * The repository's own say over where git sends a credential. git reads `http.*` settings (and
 * `remote.<name>.proxy`) from the repository's `.git/config` as well as the owner's: a repository
 * whose config says `http.curloptResolve`, `http.proxy`, `http.extraHeader` or `http.sslVerify = false`, or names its own
 * CA file, makes git send the token lessor answers with to a server that only claims the host. A
 * repository config the owner did not write (an unpacked archive, another user's checkout) can do
 * that, so `lessor git-credential get` asks git which of these come from the repository (the `local`
 * and `worktree` scopes, or any scope but the owner's `system`, `global` and `command`) and answers
 * nothing when one does, or when git's answer cannot be had (it fails, is killed, times out).
 * `http.extraHeader` is one (a `Host:` header of the repository's choosing sends the token to another
 * tenant of a shared front end), as are `http.sslVersion` and `http.sslCipherList`. `url.<base>.insteadOf`
 * does not: git rewrites the URL before it asks for a credential, so the host lessor is asked about
 * (and the policy checks) is the one the request goes to.
 * `credential.useHttpPath` counts too: a repository turning it off makes git send no path, and a
 * grant limited to some repositories (`paths`) would then be asked for none in particular. So does
 * `credential.helper` (and `credential.<url>.helper`): after the server accepts, git hands the answer
 * to the `store` action of every helper it ran, so a repository's `helper = store --file PATH` would
 * have the token written where the repository chose (the owner's own helpers: ./git-helpers.ts).
 * Inside `lessor run` the agent cannot write `.git/config` (src/sandbox/git-guard.ts).
 */
import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { withoutLessorSecrets } from "../../base/secret-env.js";

/** The keys (the last part of `http.<key>` or `http.<url>.<key>`) that decide routing or trust. */
const ROUTING = new Set([
  "proxy",
  "proxyauthmethod",
  "proxysslcert",
  "proxysslkey",
  "proxysslcainfo",
  "sslverify",
  "sslcainfo",
  "sslcapath",
  "sslcert",
  "sslkey",
  "sslbackend",
  "pinnedpubkey",
  "curloptresolve",
  "followredirects",
  // Headers git adds to every request: `Host: other.example` sends the token to whichever tenant a
  // shared front end routes that name to (domain fronting); `Authorization:` or others can steer it too.
  "extraheader",
  // The TLS version and ciphers git lets curl accept (a downgrade the server would otherwise refuse).
  "sslversion",
  "sslcipherlist",
]);

/** The `credential.<key>` / `credential.<url>.<key>` keys that decide where the answer goes or what it covers. */
const CREDENTIAL_ROUTING = new Set(["usehttppath", "helper"]);

/** Scopes the owner controls; anything else is the repository's. */
const OWNERS = new Set(["system", "global", "command"]);

/** Parses `git config --show-scope -z [--name-only] --get-regexp` output: the keys that come from the repository. */
export function repositoryRouting(out: string): string[] {
  const found: string[] = [];
  const parts = out.split("\0");
  for (let i = 0; i + 1 < parts.length; i += 2) {
    const scope = parts[i]!;
    const key = parts[i + 1]!.split("\n", 1)[0]!;
    const last = key.slice(key.lastIndexOf(".") + 1).toLowerCase();
    const section = key.slice(0, key.indexOf(".")).toLowerCase();
    const routes = section === "http" ? ROUTING.has(last) : section === "remote" ? last === "proxy" : section === "credential" && CREDENTIAL_ROUTING.has(last);
    if (routes && !OWNERS.has(scope)) found.push(key);
  }
  return found;
}

/**
 * The regular expression given to `git config --get-regexp`: only the keys whose last part is one
 * {@link repositoryRouting} looks at, so that what git prints stays small however large the rest of
 * the config is ({@link repositoryRouting} still decides which of them count).
 */
export const ROUTING_KEYS_RE = `^(http|remote|credential)\\.(.*\\.)?(${[...ROUTING, ...CREDENTIAL_ROUTING].join("|")})$`;

/** The most `git config` may print here (names only: a few lines in any honest config). */
export const MAX_CONFIG_OUTPUT = 16 * 1024 * 1024;

/** How long `git config` may take here. */
export const CONFIG_TIMEOUT_MS = 10_000;

/** What {@link repositoryRoutingHere} found: the repository's routing keys, or why it could not tell. */
export type RoutingCheck = { keys: string[] } | { failed: string };

/**
 * Reads the result of the `git config` run {@link repositoryRoutingHere} makes. Exit 0 is keys found
 * and exit 1 none; anything else (git not run, killed, timed out, output over the limit, another exit
 * code such as 3 for a config git cannot parse) is `failed`, never "none": a check that did not run
 * must not read as a repository that sets nothing.
 */
export function routingCheckOf(r: SpawnSyncReturns<string>): RoutingCheck {
  const got = configOutputOf(r);
  return "failed" in got ? got : { keys: repositoryRouting(got.out) };
}

/**
 * What a `git config --get-regexp` run printed: exit 0 is its output, exit 1 nothing found (`""`);
 * anything else (git not run, killed, timed out, output over {@link MAX_CONFIG_OUTPUT}, another exit
 * code) is `failed` with the reason, never "nothing found".
 */
export function configOutputOf(r: SpawnSyncReturns<string>): { out: string } | { failed: string } {
  if (r.error !== undefined) {
    const code = (r.error as NodeJS.ErrnoException).code;
    const why =
      code === "ETIMEDOUT" ? `it took longer than ${CONFIG_TIMEOUT_MS / 1000} s` : code === "ENOBUFS" ? `it printed more than ${MAX_CONFIG_OUTPUT} bytes` : code === "ENOENT" ? "git was not found on PATH" : (code ?? r.error.message);
    return { failed: why };
  }
  if (r.signal !== null) return { failed: `it was killed by ${r.signal}` };
  if (r.status === 1) return { out: "" };
  if (r.status !== 0 || typeof r.stdout !== "string") return { failed: `it exited with code ${r.status}${stderrLine(r.stderr)}` };
  return { out: r.stdout };
}

function stderrLine(err: unknown): string {
  const line = typeof err === "string" ? (err.split("\n").find((l) => l.trim() !== "") ?? "") : "";
  // git's own words (e.g. "fatal: bad config line 3 in file .git/config"), one line, printable only.
  const clean = line.replace(/[^\x20-\x7e]/g, "?").slice(0, 200);
  return clean === "" ? "" : ` (${clean})`;
}

/**
 * The repository-scope settings (in the current directory's repository, as git sees it) that would
 * route or trust a connection: `keys` (empty when there are none, or when this is no repository), or
 * `failed` when git's answer could not be had; then the caller answers nothing. git runs with `env`
 * minus lessor's own secrets (src/base/secret-env.ts).
 */
export function repositoryRoutingHere(env: NodeJS.ProcessEnv = process.env): RoutingCheck {
  const got = credentialConfigHere(env);
  return "failed" in got ? got : { keys: repositoryRouting(got.out) };
}

/**
 * The one `git config` run `lessor git-credential get` makes: every routing key with its scope and
 * value ({@link ROUTING_KEYS_RE}, which holds the credential helpers too), read by
 * {@link repositoryRouting} and by ./git-helpers.ts foreignHelpers.
 */
export function credentialConfigHere(env: NodeJS.ProcessEnv = process.env): { out: string } | { failed: string } {
  return configOutputOf(gitConfigHere(["--show-scope", "-z", "--get-regexp", ROUTING_KEYS_RE], env));
}

/**
 * Runs `git config ARGS` in the current directory, as git would read its config there, with `env`
 * minus lessor's own secrets (src/base/secret-env.ts), {@link CONFIG_TIMEOUT_MS} and {@link MAX_CONFIG_OUTPUT}.
 */
export function gitConfigHere(args: string[], env: NodeJS.ProcessEnv = process.env): SpawnSyncReturns<string> {
  // git's own variables (GIT_DIR, GIT_CONFIG_*) and HOME kept: they decide what git reads. Not
  // GIT_CONFIG: it changes only what `git config` reads (as if given --file), not what the git that
  // asks the helper reads, so with it set the check would read one file and miss the repository's
  // .git/config and the owner's helpers (git-config(1), ENVIRONMENT).
  const e = withoutLessorSecrets(env);
  delete e["GIT_CONFIG"];
  return spawnSync("git", ["config", ...args], {
    env: e,
    encoding: "utf8",
    timeout: CONFIG_TIMEOUT_MS,
    maxBuffer: MAX_CONFIG_OUTPUT,
    stdio: ["ignore", "pipe", "pipe"],
  });
}
