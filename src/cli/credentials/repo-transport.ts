/**
 * The repository's own say over where git sends a credential. git reads `http.*` settings (and
 * `remote.<name>.proxy`) from the repository's `.git/config` as well as the owner's: a repository
 * whose config says `http.curloptResolve`, `http.proxy` or `http.sslVerify = false`, or names its own
 * CA file, makes git send the token lessor answers with to a server that only claims the host. A
 * repository config the owner did not write (an unpacked archive, another user's checkout) can do
 * that, so `lessor git-credential get` asks git which of these come from the repository (the `local`
 * and `worktree` scopes, or any scope but the owner's `system`, `global` and `command`) and answers
 * nothing when one does. `credential.useHttpPath` counts too: a repository turning it off makes git
 * send no path, and a grant limited to some repositories (`paths`) would then be asked for none in
 * particular. Inside `lessor run` the agent cannot write `.git/config` (src/sandbox/git-guard.ts).
 */
import { spawnSync } from "node:child_process";

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
]);

/** Scopes the owner controls; anything else is the repository's. */
const OWNERS = new Set(["system", "global", "command"]);

/** Parses `git config --show-scope -z --get-regexp` output: the keys that come from the repository. */
export function repositoryRouting(out: string): string[] {
  const found: string[] = [];
  const parts = out.split("\0");
  for (let i = 0; i + 1 < parts.length; i += 2) {
    const scope = parts[i]!;
    const key = parts[i + 1]!.split("\n", 1)[0]!;
    const last = key.slice(key.lastIndexOf(".") + 1).toLowerCase();
    const section = key.slice(0, key.indexOf(".")).toLowerCase();
    const routes = section === "http" ? ROUTING.has(last) : section === "remote" ? last === "proxy" : section === "credential" && last === "usehttppath";
    if (routes && !OWNERS.has(scope)) found.push(key);
  }
  return found;
}

/**
 * The repository-scope settings (in the current directory's repository, as git sees it) that would
 * route or trust a connection: empty when there are none, when this is no repository, or when git
 * cannot be run here (then git is not the one asking either).
 */
export function repositoryRoutingHere(): string[] {
  const r = spawnSync("git", ["config", "--show-scope", "-z", "--get-regexp", "^(http|remote|credential)\\."], { encoding: "utf8", timeout: 10_000, stdio: ["ignore", "pipe", "ignore"] });
  if (r.error !== undefined || r.status !== 0 || typeof r.stdout !== "string") return [];
  return repositoryRouting(r.stdout);
}
