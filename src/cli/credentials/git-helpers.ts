/**
 * The other credential helpers git would hand lessor's answer to. git runs every `credential.helper`
 * configured for the URL (plain `credential.helper` and each matching `credential.<url>.helper`, in
 * config order; an empty value empties the list so far), asks them for a credential in turn, and
 * once the server accepts one, gives it to the `store` action of **every** helper in the list. So a
 * generic `credential.helper = store` (or `cache`, `osxkeychain`, `manager`), set long before lessor's
 * line, would keep lessor's answer on disk or in memory, where later requests get it without the
 * policy. `lessor git-credential get` answers only when no such helper is in the list; the fix is to
 * start the URL's list with an empty `helper` before lessor's line (docs/cli/credential-helpers.md).
 *
 * Which helpers apply is decided the way git does, leaning towards "applies" where lessor cannot tell:
 * git matches `credential.<url>` against the request's URL with its path, which git does not pass on
 * to the helper unless `credential.useHttpPath` is set, so a pattern with a path (or a user name, or
 * a wildcard in the host) counts as matching when it holds a helper, and as not matching when it
 * holds the empty value that would reset the list.
 */

/** One `credential.helper` entry git would run for the request, other than lessor's own. */
export interface ForeignHelper {
  /** Where git read it: `system`, `global`, `local`, `worktree`, `command`, … */
  scope: string;
  /** The key as git prints it (`credential.helper`, `credential.https://github.com.helper`). */
  key: string;
  /** The helper's first word (`store`, `osxkeychain`, `!/usr/bin/tool`): its arguments are not repeated. */
  name: string;
}

/** The request's URL as far as a helper is told it: `host` as git sent it (`name` or `name:port`). */
export interface HelperRequest {
  host: string;
  username: string | null;
  path: string | null;
}

/** A helper key as git prints it (`credential.helper`, `credential.<url>.helper`). */
const HELPER_KEY = /^credential\.(.+\.)?helper$/i;

/**
 * Whether a helper value is lessor's own git helper: a shell command (`!…`) in which `git-credential`
 * is the word right after lessor's program (`lessor`, or a path to `lessor`, `lessor.cjs`, `lessor.js`),
 * as docs/cli/credential-helpers.md has it written (`!lessor git-credential …`). Another program's
 * `git-credential` subcommand (`!gh auth git-credential`) is not lessor's. lessor's `store` and
 * `erase` keep nothing.
 */
export function isLessorHelper(value: string): boolean {
  if (!value.startsWith("!")) return false;
  const words = value
    .slice(1)
    .trim()
    .split(/\s+/)
    .map((w) => w.replace(/^['"]|['"]$/g, ""));
  return words.some((w, i) => w === "git-credential" && i > 0 && /(?:^|\/)lessor(?:\.c?js|\.mjs)?$/.test(words[i - 1]!));
}

type Match = "yes" | "maybe" | "no";

const DEFAULT_PORT = "443";

/** `name[:port]` split and lower-cased, with https' default port left out as git's URL normalising does. */
function hostPort(host: string): { name: string; port: string } {
  const m = /^(.*):(\d*)$/.exec(host);
  const name = (m ? m[1]! : host).toLowerCase();
  const port = m && m[2] !== "" && m[2] !== DEFAULT_PORT ? String(Number(m[2])) : "";
  return { name, port };
}

/**
 * Whether `credential.<pattern>` applies to an https request for `req`: "yes" when git surely matches
 * it, "maybe" when it may (a path, a user name or a wildcard lessor cannot check), "no" when it surely
 * does not (another scheme, host or port).
 */
export function patternMatch(pattern: string, req: HelperRequest): Match {
  const want = hostPort(req.host);
  const sep = pattern.indexOf("://");
  if (sep < 0) {
    // Not a URL: git falls back to a partial match (`credential.github.com.helper`): host, any protocol.
    let rest = pattern;
    const at = rest.lastIndexOf("@", rest.search(/[/?#]|$/));
    if (at >= 0) rest = rest.slice(at + 1);
    const end = rest.search(/[/?#]/);
    const host = end < 0 ? rest : rest.slice(0, end);
    const path = end < 0 ? "" : rest.slice(end);
    if (host === "") return "maybe";
    if (host.toLowerCase() !== req.host.toLowerCase()) return "no";
    return host !== req.host || at >= 0 || (path !== "" && path !== "/") ? "maybe" : "yes";
  }
  if (pattern.slice(0, sep).toLowerCase() !== "https") return "no";
  let rest = pattern.slice(sep + 3);
  const end = rest.search(/[/?#]/);
  const authority = end < 0 ? rest : rest.slice(0, end);
  const path = end < 0 ? "" : rest.slice(end);
  const at = authority.lastIndexOf("@");
  rest = at >= 0 ? authority.slice(at + 1) : authority;
  const got = hostPort(rest);
  if (got.port !== want.port) return "no";
  let uncertain = at >= 0 || (path !== "" && path !== "/");
  if (/[*?[\\%]/.test(got.name)) {
    // git matches each label with wildmatch; lessor only rules out a different number of labels.
    if (got.name.split(".").length !== want.name.split(".").length) return "no";
    uncertain = true;
  } else if (got.name !== want.name) return "no";
  return uncertain ? "maybe" : "yes";
}

/**
 * Parses `git config --show-scope -z --get-regexp` output (in config order, as git reads it; keys other
 * than helpers are skipped: src/cli/credentials/repo-transport.ts credentialConfigHere) and returns the helpers other than lessor's that git would run, and so hand the answer
 * to, for `req`: only those after the last empty value that surely applies.
 */
export function foreignHelpers(out: string, req: HelperRequest): ForeignHelper[] {
  let list: Array<{ scope: string; key: string; value: string | null }> = [];
  const parts = out.split("\0");
  for (let i = 0; i + 1 < parts.length; i += 2) {
    const scope = parts[i]!;
    const entry = parts[i + 1]!;
    const nl = entry.indexOf("\n");
    const key = nl < 0 ? entry : entry.slice(0, nl);
    if (!HELPER_KEY.test(key)) continue; // the same run also lists the repository's routing keys
    // A key with no `=` at all git refuses to run with; counted, so that it is never taken for a reset.
    const value = nl < 0 ? null : entry.slice(nl + 1);
    const first = key.indexOf(".");
    const last = key.lastIndexOf(".");
    const match: Match = last === first ? "yes" : patternMatch(key.slice(first + 1, last), req);
    if (match === "no") continue;
    if (value === "") {
      if (match === "yes") list = [];
      continue;
    }
    list.push({ scope, key, value });
  }
  return list
    .filter((h) => h.value === null || !isLessorHelper(h.value))
    .map((h) => {
      if (h.value === null) return { scope: h.scope, key: h.key, name: "(no value)" };
      const word = h.value.trim().split(/\s+/, 1)[0] ?? "";
      return { scope: h.scope, key: h.key, name: word.length < h.value.trim().length ? `${word} …` : word };
    });
}
