/**
 * HTTP request paths, canonicalised before a grant's `paths` prefixes are matched (RFC 3986 §6.2.2
 * and §5.2.4). Pure: no I/O. The access check (src/vault/leases.ts) and the injecting proxy use it:
 * under a `paths` rule the proxy forwards the canonical path the vault matched (plus the query as
 * sent), so the upstream server sees exactly the path the grant allowed, and it refuses a path whose
 * canonical form drops segments ({@link rewritesSegments}) rather than guess how the upstream routes it.
 *
 * Canonical form: percent-encodings of unreserved characters (`A–Z a–z 0–9 - . _ ~`) decoded, every
 * other percent-encoding in upper case, characters a URI may not hold raw (`"<>^\`{|}` and non-ASCII)
 * percent-encoded as UTF-8, dot segments removed (encoded ones too, as `%2e` decodes to `.`), runs of
 * `/` collapsed to one. The query (after `?`) is not part of the path and is never matched.
 *
 * Refused (no match, so denied, with a reason): anything two servers could read as two different
 * paths, or that only an attack would send: an encoded `/` or `\` (`%2F`, `%5C`), a raw `\`, an
 * encoded `%` (`%25`: double encoding), a control character (raw or encoded), whitespace, a malformed
 * `%`, a fragment (`#`), a path that does not start with `/`, a dot segment with parameters (`..;`,
 * which Java servers read as `..`), and `//` together with `..` (servers that merge slashes and servers
 * that do not resolve those to different paths).
 */
import { escapeUnsafe } from "../base/text.js";

/** The longest request path considered; longer ones are refused. */
export const MAX_PATH_LENGTH = 8192;

/** A canonical request path (and its query, untouched), or the reason it was refused. */
export type CanonicalPath =
  | { path: string; query: string | null; problem: null }
  | { path: null; query: null; problem: string };

/** A canonical path prefix, or the reason it is not one. */
export type CanonicalPrefix = { prefix: string; problem: null } | { prefix: null; problem: string };

const HEX = "0123456789ABCDEF";
const UTF8 = new TextEncoder();
/** Throws on bytes that are not UTF-8, overlong forms (%C0%AE for ".") and encoded surrogates included. */
const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true });
/** ASCII that decides how a path splits or resolves: a character that NFKC turns into one is refused. */
const STRUCTURAL = /[./\\%;?#]/;

function isHex(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66);
}

function isUnreserved(c: number): boolean {
  return (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x2e || c === 0x5f || c === 0x7e;
}

/** Characters a path segment may hold raw besides unreserved ones: sub-delims, ":", "@" (and "/"). */
function isRawAllowed(c: number): boolean {
  return isUnreserved(c) || c === 0x2f || c === 0x3a || c === 0x40 || "!$&'()*+,;=".includes(String.fromCharCode(c));
}

function pct(byte: number): string {
  return `%${HEX[byte >> 4]}${HEX[byte & 15]}`;
}

function refuse(problem: string): CanonicalPath {
  return { path: null, query: null, problem };
}

/**
 * Decodes what may be decoded and checks every character of a path (no query, no fragment).
 * Returns the normalised text (dot segments and slashes not yet resolved) or a problem.
 */
function normaliseChars(p: string): { text: string; problem: null } | { text: null; problem: string } {
  let out = "";
  for (let i = 0; i < p.length; i++) {
    const c = p.charCodeAt(i);
    if (c === 0x25) {
      const h1 = p.charCodeAt(i + 1);
      const h2 = p.charCodeAt(i + 2);
      if (!isHex(h1) || !isHex(h2)) return { text: null, problem: 'has a "%" that is not followed by two hex digits' };
      const byte = parseInt(p.slice(i + 1, i + 3), 16);
      i += 2;
      if (byte === 0x2f || byte === 0x5c)
        return { text: null, problem: `has an encoded ${byte === 0x2f ? '"/" (%2F)' : 'backslash (%5C)'}, which servers disagree on (one segment or two); send the path without it` };
      if (byte === 0x25) return { text: null, problem: 'has an encoded "%" (%25): double encoding, which a server that decodes twice reads as another path' };
      if (byte < 0x20 || byte === 0x7f) return { text: null, problem: `has an encoded control character (${pct(byte)})` };
      out += isUnreserved(byte) ? String.fromCharCode(byte) : pct(byte);
      continue;
    }
    if (c === 0x5c) return { text: null, problem: 'has a backslash, which some servers read as "/"; use "/"' };
    if (c <= 0x20 || c === 0x7f) return { text: null, problem: c === 0x20 ? "has a space (percent-encode it as %20)" : "has a control character" };
    if (c < 0x80) {
      out += isRawAllowed(c) ? p[i] : pct(c);
      continue;
    }
    // Non-ASCII: percent-encode its UTF-8 bytes (a lone surrogate is not a character at all).
    const cp = p.codePointAt(i)!;
    if (cp >= 0xd800 && cp <= 0xdfff) return { text: null, problem: "has a lone surrogate (not a character)" };
    if (/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u.test(String.fromCodePoint(cp)))
      return { text: null, problem: "has a control or invisible formatting character" };
    const ch = String.fromCodePoint(cp);
    for (const b of UTF8.encode(ch)) out += pct(b);
    i += ch.length - 1;
  }
  const problem = checkDecodedText(out);
  return problem === null ? { text: out, problem: null } : { text: null, problem };
}

/**
 * What a server that decodes the normalised path would read: the percent-encoded bytes must be UTF-8
 * (an overlong %C0%AE%C0%AE is ".." to some decoders), no character may be a control or invisible
 * formatting character (as raw ones may not), and no character may turn into ".", "/", "\\",
 * "%", ";", "?" or "#" under NFKC (fullwidth dots U+FF0E, U+2024, …, which some servers normalise).
 */
function checkDecodedText(normalised: string): string | null {
  if (!normalised.includes("%")) return null;
  const bytes: number[] = [];
  for (let i = 0; i < normalised.length; i++) {
    if (normalised.charCodeAt(i) === 0x25) {
      bytes.push(parseInt(normalised.slice(i + 1, i + 3), 16));
      i += 2;
    } else bytes.push(normalised.charCodeAt(i));
  }
  let text: string;
  try {
    text = STRICT_UTF8.decode(Uint8Array.from(bytes));
  } catch {
    return "has percent-encoded bytes that are not valid UTF-8 (an overlong form such as %C0%AE, or a stray byte), which decoders read differently";
  }
  for (const ch of text) {
    if (ch.charCodeAt(0) < 0x80) continue;
    // The same set refused raw (above): C1 controls, bidi overrides, zero-width and line separators.
    if (/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u.test(ch))
      return `has an encoded control or invisible formatting character (U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")})`;
    if (STRUCTURAL.test(ch.normalize("NFKC")))
      return `has a character (U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}) that Unicode normalisation turns into a "." or "/" or another character that shapes a path`;
  }
  return null;
}

/**
 * True when a segment is "." or ".." followed by parameters (";…", raw or as %3B), or by an encoded
 * "?" or "#" (%3F, %23): a server that decodes the path before it splits off the query and fragment
 * (Apache mod_rewrite's CVE-2024-38474, an app that unquotes and then parses the URL) reads "..%3F" as "..".
 */
function isDotWithParams(seg: string): boolean {
  const cut = seg.search(/;|%3B|%3F|%23/);
  if (cut < 0) return false;
  const head = seg.slice(0, cut);
  return head === "." || head === "..";
}

/**
 * Resolves dot segments and collapses empty ones in an absolute path whose characters are already
 * normalised. Returns null (with the problem) when the result would depend on the server.
 */
function resolveSegments(text: string): { path: string; dots: boolean; problem: null } | { path: null; dots: boolean; problem: string } {
  const segs = text.slice(1).split("/");
  let dots = false;
  let empty = false;
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!;
    if (s === "." || s === "..") dots = true;
    else if (s === "" && i < segs.length - 1) empty = true;
    else if (isDotWithParams(s)) return { path: null, dots: true, problem: 'has a dot segment with parameters or an encoded "?" or "#" (such as "..;" or "..%3F"), which some servers read as ".."' };
    // Windows servers (IIS, a file server's path API) drop a segment's trailing dots and spaces:
    // "...", "..%20" and ". ." are ".." there, though no dot segment here.
    else if (/^(?:\.|%20)*\.(?:\.|%20)*$/.test(s)) return { path: null, dots: true, problem: 'has a segment of only dots and spaces (such as "..." or "..%20"), which Windows servers read as ".."' };
  }
  if (empty && segs.includes(".."))
    return { path: null, dots, problem: 'has both "//" and "..", which servers that merge slashes and servers that do not resolve to different paths' };
  const stack: string[] = [];
  let trailing = false;
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!;
    const last = i === segs.length - 1;
    if (s === "." || s === ".." || s === "") {
      if (s === "..") stack.pop();
      if (last) trailing = true;
      continue;
    }
    stack.push(s);
  }
  const path = stack.length === 0 ? "/" : `/${stack.join("/")}${trailing ? "/" : ""}`;
  return { path, dots, problem: null };
}

/**
 * Canonicalises the path of an HTTP request target in origin form (`/a/b?q`). The query is split off
 * and returned untouched. A path that is refused has a `problem`: a phrase that follows "the path",
 * such as 'has an encoded "/" (%2F), …'. Never throws.
 */
export function canonicalRequestPath(input: unknown): CanonicalPath {
  if (typeof input !== "string") return refuse("is not text");
  if (input.length > MAX_PATH_LENGTH) return refuse(`is longer than ${MAX_PATH_LENGTH} characters`);
  if (input.includes("#")) return refuse('has a fragment ("#…"), which a client never sends in a request');
  const q = input.indexOf("?");
  const raw = q < 0 ? input : input.slice(0, q);
  const query = q < 0 ? null : input.slice(q + 1);
  if (query !== null && /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp} ]/u.test(query)) return refuse("has a control character or space in its query");
  if (!raw.startsWith("/"))
    return refuse(raw === "" ? 'is empty; a path starts with "/"' : 'does not start with "/" (give the path of the request, such as "/repos/acme/app")');
  const chars = normaliseChars(raw);
  if (chars.problem !== null) return refuse(chars.problem);
  const resolved = resolveSegments(chars.text);
  if (resolved.problem !== null) return refuse(resolved.problem);
  return { path: resolved.path, query, problem: null };
}

/**
 * True when canonicalising the path of `input` (an origin-form target; the query is ignored) removes a
 * segment: a `.` or `..` segment (encoded ones too) or an empty one (`//`). Such a path names the
 * canonical one only on a server that resolves segments exactly as {@link canonicalRequestPath} does,
 * so the injecting proxy refuses to send it with a credential rather than guess (docs/proxy.md). A
 * path that is refused outright, or that only changes in spelling (`%7E` for `~`, `%3f` for `%3F`), is
 * not such a path. Never throws.
 */
export function rewritesSegments(input: string): boolean {
  const q = input.indexOf("?");
  const raw = q < 0 ? input : input.slice(0, q);
  if (!raw.startsWith("/") || raw.length > MAX_PATH_LENGTH) return false;
  const chars = normaliseChars(raw);
  if (chars.problem !== null) return false;
  const resolved = resolveSegments(chars.text);
  return resolved.problem === null && resolved.path !== chars.text;
}

/**
 * Canonicalises a path prefix from a policy rule: as {@link canonicalRequestPath}, and it must have no
 * query, fragment or dot segment (write the path it stands for). The problem follows "the prefix".
 */
export function canonicalPathPrefix(input: unknown): CanonicalPrefix {
  if (typeof input !== "string") return { prefix: null, problem: "is not text" };
  if (input.includes("?") || input.includes("#")) return { prefix: null, problem: 'has a "?" or "#"; a prefix is a path only' };
  if (!input.startsWith("/")) return { prefix: null, problem: 'does not start with "/"' };
  const chars = normaliseChars(input);
  if (chars.problem !== null) return { prefix: null, problem: chars.problem };
  const resolved = resolveSegments(chars.text);
  if (resolved.problem !== null) return { prefix: null, problem: resolved.problem };
  if (resolved.dots) return { prefix: null, problem: 'has a "." or ".." segment; write the path it stands for' };
  return { prefix: resolved.path, problem: null };
}

/**
 * True when canonical `path` lies under canonical `prefix`, on segment boundaries: a prefix ending in
 * "/" matches the paths that start with it ("/repos/" matches "/repos/x", not "/repos" or "/reposX");
 * any other prefix matches itself and the paths below it ("/repos" matches "/repos" and "/repos/x",
 * not "/repository").
 */
export function pathUnderPrefix(path: string, prefix: string): boolean {
  if (prefix.endsWith("/")) return path.startsWith(prefix);
  return path === prefix || (path.startsWith(prefix) && path.charCodeAt(prefix.length) === 0x2f);
}

/** The answer of {@link matchPathPrefixes}: the canonical path when allowed, else why not. */
export type PathMatch = { allowed: true; path: string } | { allowed: false; reason: string };

const prefixCache = new Map<string, string | null>();

function cachedPrefix(p: string): string | null {
  let c = prefixCache.get(p);
  if (c === undefined) {
    if (prefixCache.size > 10_000) prefixCache.clear();
    c = canonicalPathPrefix(p).prefix;
    prefixCache.set(p, c);
  }
  return c;
}

/**
 * Whether the request path `rawPath` is under one of `prefixes` once canonicalised. Prefixes are
 * canonicalised too (policy prefixes already are; an older stored one that is not valid matches
 * nothing). The reason quotes the canonical path only (printable ASCII), never the raw input.
 */
export function matchPathPrefixes(prefixes: readonly string[], rawPath: string): PathMatch {
  const c = canonicalRequestPath(rawPath);
  if (c.problem !== null) return { allowed: false, reason: `the path is refused: it ${c.problem}` };
  for (const p of prefixes) {
    const prefix = cachedPrefix(p);
    if (prefix !== null && pathUnderPrefix(c.path, prefix)) return { allowed: true, path: c.path };
  }
  const shown = c.path.length > 120 ? `${c.path.slice(0, 120)}…` : c.path;
  return { allowed: false, reason: `the path ${JSON.stringify(shown)} (canonical form) is not under a prefix this lease allows` };
}

/**
 * Why a request's `method` or path (`match`: its path matched against `paths`, null when it names
 * none) is outside the `methods`/`paths` (null: any) of `whose` ("this lease", or the rule that
 * decides now), or null when they allow it. The vault's words for the refusal; the proxy gives the
 * same ones when it refuses before any use (src/proxy/lease-egress.ts).
 */
export function requestBoundsReason(
  methods: readonly string[] | null,
  paths: readonly string[] | null,
  method: string | undefined,
  match: PathMatch | null,
  whose: string,
): string | null {
  if (methods && method !== undefined && !methods.includes(method.toUpperCase()))
    return `method ${escapeUnsafe(method.slice(0, 32))} is not allowed by ${whose}`;
  if (paths && match !== null && !match.allowed) return `${match.reason}; ${whose} allows paths under ${paths.map((p) => JSON.stringify(p)).join(", ")}`;
  return null;
}
