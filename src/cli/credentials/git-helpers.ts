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
 * Which helpers apply is decided the way git does (hosts normalised as git's urlmatch.c does: case,
 * one trailing dot, the port as a number with https' default left out), leaning towards "applies"
 * where lessor cannot tell (a spelling it does not normalise as git does counts as maybe matching):
 * git matches `credential.<url>` against the request's URL with its path, which git does not pass on
 * to the helper unless `credential.useHttpPath` is set, so a pattern with a path (or a user name, or
 * a wildcard in the host) counts as matching when it holds a helper, and as not matching when it
 * holds the empty value that would reset the list.
 */

import { TOKEN_FORMATS } from "../../base/token-formats.js";

/** One `credential.helper` entry git would run for the request, other than lessor's own. */
export interface ForeignHelper {
  /** Where git read it: `system`, `global`, `local`, `worktree`, `command`, … */
  scope: string;
  /** The key as git prints it (`credential.helper`, `credential.https://github.com.helper`), less any URL user name or password ({@link shownKey}). */
  key: string;
  /** The helper's program name (`store`, `osxkeychain`, `!/usr/bin/tool …`, {@link helperName}): its arguments and variables are not repeated. */
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

const DEFAULT_PORT = 443;

/** A host name lessor compares exactly as git does (after lower-casing and one trailing dot dropped). */
const PLAIN_NAME = /^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$/;
/** The same with git's `*` wildcards in labels. */
const WILD_NAME = /^[a-z0-9_*-]+(?:\.[a-z0-9_*-]+)*$/;

/**
 * `name[:port]` normalised as git's URL normalising does (urlmatch.c): the name lower-cased with one
 * trailing dot dropped (`host.` matches `host`), the port read as a number (`0443` is `443`) and left
 * out when it is https' default. `kind` says how far lessor can follow git: `plain` (compared
 * exactly), `wild` (holds `*`), `ip6` (a bracketed IPv6 literal) or `unknown` (any other spelling
 * — percent-encoding, a port out of range, odd characters — which the caller counts as maybe matching).
 */
function hostPort(host: string): { name: string; port: string; kind: "plain" | "wild" | "ip6" | "unknown" } {
  const m = /^(.*):(\d*)$/.exec(host);
  let name = (m ? m[1]! : host).toLowerCase();
  if (name.endsWith(".")) name = name.slice(0, -1);
  let port = "";
  let portOk = true;
  if (m && m[2] !== "") {
    const n = Number(m[2]);
    portOk = n >= 1 && n <= 65535;
    port = n === DEFAULT_PORT ? "" : String(n);
  }
  const kind = !portOk ? "unknown" : PLAIN_NAME.test(name) ? "plain" : WILD_NAME.test(name) ? "wild" : /^\[[0-9a-f:.]+\]$/.test(name) ? "ip6" : "unknown";
  return { name, port, kind };
}

/**
 * Whether `credential.<pattern>` applies to an https request for `req`: "yes" when git surely matches
 * it, "maybe" when it may (a path, a user name, a wildcard or a spelling lessor cannot check), "no"
 * when it surely does not (another scheme, host or port).
 */
export function patternMatch(pattern: string, req: HelperRequest): Match {
  const want = hostPort(req.host);
  const sep = pattern.indexOf("://");
  if (sep < 0) {
    // Not a URL: git falls back to a partial match (`credential.github.com.helper`): host, any protocol.
    // git compares the host as a string; lessor rules it out only when neither the string (ignoring
    // case) nor its normalised form is the request's.
    let rest = pattern;
    const at = rest.lastIndexOf("@", rest.search(/[/?#]|$/));
    if (at >= 0) rest = rest.slice(at + 1);
    const end = rest.search(/[/?#]/);
    const host = end < 0 ? rest : rest.slice(0, end);
    const path = end < 0 ? "" : rest.slice(end);
    if (host === "") return "maybe";
    const got = hostPort(host);
    if (host.toLowerCase() !== req.host.toLowerCase() && (got.name !== want.name || got.port !== want.port)) return "no";
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
  // A spelling lessor cannot normalise exactly as git does counts as maybe matching (fail closed).
  if (got.kind === "unknown" || want.kind === "unknown") return "maybe";
  // An IPv6 literal is never the DNS name lessor answers for (src/cli/credentials/git-protocol.ts gitHost).
  if (got.kind === "ip6") return want.kind === "ip6" && got.name === want.name && got.port === want.port ? "maybe" : "no";
  if (got.port !== want.port) return "no";
  let uncertain = at >= 0 || (path !== "" && path !== "/") || want.kind !== "plain";
  if (got.kind === "wild") {
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
    .map((h) => ({ scope: h.scope, key: shownKey(h.key), name: h.value === null ? "(no value)" : helperName(h.value) }));
}

/**
 * A config key as lessor may repeat it in a message or the audit log: the user name and password of
 * a URL in it (`credential.https://oauth2:TOKEN@host.helper`) replaced by `…`, and any word that looks
 * like a known credential format (src/base/token-formats.ts) replaced too. Used for helper keys and
 * for the repository's routing keys (./repo-transport.ts).
 */
export function shownKey(key: string): string {
  const first = key.indexOf(".");
  const last = key.lastIndexOf(".");
  if (first < 0 || last === first) return withoutTokens(key);
  const pattern = key.slice(first + 1, last);
  const sep = pattern.indexOf("://");
  const start = sep < 0 ? 0 : sep + 3;
  const end = pattern.slice(start).search(/[/?#]|$/) + start;
  const at = pattern.lastIndexOf("@", end - 1);
  const shown = at >= start ? `${pattern.slice(0, start)}…@${pattern.slice(at + 1)}` : pattern;
  return `${key.slice(0, first + 1)}${withoutTokens(shown)}${key.slice(last)}`;
}

/**
 * A helper's value as lessor may repeat it: only the program's name (`store`, `!gh`, `!/usr/bin/tool`),
 * never its arguments. In a shell command (`!…`) leading `NAME=value` assignments are skipped
 * (`!GH_TOKEN=… gh auth git-credential` is `!gh …`); any word is cut at its first `=`, and one that
 * still looks like a known credential format is not shown at all.
 */
export function helperName(value: string): string {
  const v = value.trim();
  const shell = v.startsWith("!");
  const words = (shell ? v.slice(1).trim() : v).split(/\s+/).filter((w) => w !== "");
  const i = shell ? words.findIndex((w) => !/^['"]?[A-Za-z_][A-Za-z0-9_]*=/.test(w)) : 0;
  const word = i < 0 ? "" : (words[i]!.split("=", 1)[0] ?? "");
  if (word === "" || withoutTokens(word) !== word) return `${shell ? "!" : ""}(a command lessor does not repeat)`;
  const shown = `${shell ? "!" : ""}${word}`;
  return shown.length < v.length ? `${shown} …` : shown;
}

/** `s` with every word that starts like a known credential format (src/base/token-formats.ts) replaced by `(token)`. */
export function withoutTokens(s: string): string {
  return s.replace(/[A-Za-z0-9_.\-]+/g, (w) => {
    // A token can also start inside a word after a separator (`user:ghp_…`, `x-glpat-…`).
    for (let j = 0; j < w.length; j++) {
      if (j > 0 && /[A-Za-z0-9]/.test(w[j - 1]!)) continue;
      if (TOKEN_FORMATS.some((f) => w.startsWith(f.prefix, j) && w.length - j >= f.prefix.length + 8)) return `${w.slice(0, j)}(token)`;
    }
    return w;
  });
}
