/**
 * Request paths are canonicalised before a grant's `paths` prefixes are matched (issue 12, item 9):
 * "..", "%2e%2e", encoded slashes, backslashes, double encoding, "//", a query or a fragment cannot
 * step out of a prefix. The attacks are run against the module, against a property-based model of
 * how servers resolve paths, and through the real vault (SQLite file), where they are denied and
 * audited.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { canonicalPathPrefix, canonicalRequestPath, matchPathPrefixes, pathUnderPrefix } from "../src/vault/http-path.js";
import { agent, codeOf, grant, makeVault } from "./helpers.js";

const ACME = "/repos/acme/";

/** [request path, what must happen with paths = ["/repos/acme/"]]: "refused", "outside", or "inside". */
const ATTACKS: [string, "refused" | "outside" | "inside", string?][] = [
  ["/repos/acme/x", "inside", "/repos/acme/x"],
  ["/repos/acme/", "inside", "/repos/acme/"],
  ["/repos/acme/../other", "outside", "/repos/other"],
  ["/repos/acme/./x", "inside", "/repos/acme/x"],
  ["/repos/acme/x/../y", "inside", "/repos/acme/y"],
  ["/repos/acme/%2e%2e/other", "outside", "/repos/other"],
  ["/repos/acme/%2E%2e/other", "outside", "/repos/other"],
  ["/repos/acme/.%2E/other", "outside", "/repos/other"],
  ["/repos/acme/%2e/x", "inside", "/repos/acme/x"],
  ["/repos/acme/..%2fother", "refused"],
  ["/repos/acme/..%2Fother", "refused"],
  ["/repos/acme%2f..%2fother", "refused"],
  ["/repos/acme/..%5cother", "refused"],
  ["/repos/acme/%252e%252e/other", "refused"],
  ["/repos/acme/%252f", "refused"],
  ["/repos/acme\\..\\other", "refused"],
  ["/repos/acme/x\\y", "refused"],
  ["/repos//acme/x", "inside", "/repos/acme/x"],
  ["//repos/acme/x", "inside", "/repos/acme/x"],
  ["//repos/acme", "outside", "/repos/acme"],
  ["/repos/acme//../other", "refused"],
  ["/repos/acme/x//../../other", "refused"],
  ["/repos/acmeX/", "outside", "/repos/acmeX/"],
  ["/repos/acme", "outside", "/repos/acme"],
  ["/repos/acme?/x", "outside", "/repos/acme"],
  ["/repos/other?/repos/acme/x", "outside", "/repos/other"],
  ["/repos/acme/x?a=/../../other", "inside", "/repos/acme/x"],
  ["/repos/acme/x#/../../other", "refused"],
  // Overlong and invalid UTF-8: old decoders read %C0%AE as "." and %C0%AF as "/".
  ["/repos/acme/%c0%ae%c0%ae/other", "refused"],
  ["/repos/acme/%c0%af..%c0%af/other", "refused"],
  ["/repos/acme/%e0%80%ae%e0%80%ae/other", "refused"],
  ["/repos/acme/%ff/x", "refused"],
  // Characters that NFKC normalisation turns into "." or "/" (fullwidth, one-dot leader, fraction slash).
  ["/repos/acme/%ef%bc%8e%ef%bc%8e/other", "refused"],
  ["/repos/acme/\uff0e\uff0e/other", "refused"],
  ["/repos/acme/\u2024\u2024/other", "refused"],
  ["/repos/acme/..\uff0fother", "refused"],
  ["/repos/acme/caf%C3%A9", "inside", "/repos/acme/caf%C3%A9"],
  ["/repos/acme/..;/other", "refused"],
  ["/repos/acme/.;x/y", "refused"],
  ["/repos/acme/..%3Bx/other", "refused"],
  ["/repos/acme/x%00", "refused"],
  ["/repos/acme/x\u0000", "refused"],
  ["/repos/acme/x y", "refused"],
  ["/repos/acme/%zz", "refused"],
  ["/repos/acme/%2", "refused"],
  ["repos/acme/x", "refused"],
  ["", "refused"],
  ["http://evil.example/repos/acme/x", "refused"],
  ["*", "refused"],
  ["/repos/%61cme/x", "inside", "/repos/acme/x"],
  ["/repos/acme/%7e%7E", "inside", "/repos/acme/~~"],
  ["/repos/acme/a%3fb", "inside", "/repos/acme/a%3Fb"],
  ["/repos/acme/é", "inside", "/repos/acme/%C3%A9"],
  ["/repos/acme/%c3%a9", "inside", "/repos/acme/%C3%A9"],
  ["/../repos/acme/x", "inside", "/repos/acme/x"],
];

describe("canonical request paths", () => {
  for (const [raw, want, canonical] of ATTACKS) {
    test(`${JSON.stringify(raw)}: ${want === "refused" ? "refused" : `${want} ${ACME}`}`, () => {
      const c = canonicalRequestPath(raw);
      const m = matchPathPrefixes([ACME], raw);
      if (want === "refused") {
        assert.notEqual(c.problem, null, `expected a refusal, got ${JSON.stringify(c.path)}`);
        assert.equal(m.allowed, false);
        if (!m.allowed) assert.match(m.reason, /^the path is refused: it /);
        return;
      }
      assert.equal(c.problem, null, String(c.problem));
      assert.equal(c.path, canonical);
      assert.equal(m.allowed, want === "inside", JSON.stringify(m));
    });
  }

  test("reasons say what is wrong and never echo the raw input", () => {
    const cases: [string, RegExp][] = [
      ["/a/%2Fb", /encoded "\/" \(%2F\)/],
      ["/a/%5Cb", /encoded backslash \(%5C\)/],
      ["/a/%25", /encoded "%" \(%25\): double encoding/],
      ["/a\\b", /backslash/],
      ["/a/%00", /encoded control character \(%00\)/],
      ["/a#b", /fragment/],
      ["a", /does not start with "\/"/],
      ["/a//../b", /both "\/\/" and "\.\."/],
      ["/a/..;/b", /dot segment with parameters/],
      ["/a/%x1", /not followed by two hex digits/],
    ];
    for (const [raw, re] of cases) {
      const m = matchPathPrefixes(["/"], raw);
      assert.equal(m.allowed, false, raw);
      if (!m.allowed) assert.match(m.reason, re, raw);
    }
    const bidi = matchPathPrefixes(["/"], "/a/\u202e\u001b[2J");
    assert.equal(bidi.allowed, false);
    if (!bidi.allowed) assert.doesNotMatch(bidi.reason, /[\u0000-\u001f\u202e]/);
    const outside = matchPathPrefixes([ACME], "/repos/other/%C3%A9");
    assert.ok(!outside.allowed && outside.reason.includes('"/repos/other/%C3%A9"'), JSON.stringify(outside));
  });

  test("prefixes match on segment boundaries", () => {
    assert.equal(pathUnderPrefix("/repos/x", "/repos/"), true);
    assert.equal(pathUnderPrefix("/repos/", "/repos/"), true);
    assert.equal(pathUnderPrefix("/repos", "/repos/"), false);
    assert.equal(pathUnderPrefix("/reposX", "/repos/"), false);
    assert.equal(pathUnderPrefix("/repos", "/repos"), true);
    assert.equal(pathUnderPrefix("/repos/x", "/repos"), true);
    assert.equal(pathUnderPrefix("/repository", "/repos"), false);
    assert.equal(pathUnderPrefix("/repos-x", "/repos"), false);
    assert.equal(pathUnderPrefix("/anything", "/"), true);
    assert.equal(matchPathPrefixes(["/repos"], "/repository/x").allowed, false);
    assert.equal(matchPathPrefixes(["/repos"], "/repos/../repository").allowed, false);
    assert.equal(matchPathPrefixes(["/repos"], "/repos").allowed, true);
    assert.equal(matchPathPrefixes(["/repos"], "/repos?x").allowed, true);
    assert.equal(matchPathPrefixes(["/a/", "/repos"], "/repos/x").allowed, true);
  });

  test("prefixes are canonical too; an old stored prefix that is not valid matches nothing", () => {
    assert.deepEqual(canonicalPathPrefix("/r%65pos//acme/"), { prefix: "/repos/acme/", problem: null });
    assert.deepEqual(canonicalPathPrefix("/a%3fb"), { prefix: "/a%3Fb", problem: null });
    for (const bad of ["/repos/../admin", "/repos/./x", "/repos/%2e%2e/x", "/a%2Fb", "/a%252e", "/a\\b", "repos", "/a?b", "/a#b", "/a\u0000"])
      assert.notEqual(canonicalPathPrefix(bad).problem, null, bad);
    // A lease row written before prefixes were canonical, holding "/repos/../admin/": never a match.
    assert.equal(matchPathPrefixes(["/repos/../admin/"], "/admin/x").allowed, false);
    assert.equal(matchPathPrefixes(["/repos/../admin/"], "/repos/../admin/x").allowed, false);
    // A stored prefix in another spelling still matches what it means.
    assert.equal(matchPathPrefixes(["/r%65pos/"], "/repos/x").allowed, true);
  });
});

/**
 * How a server resolves a raw path: percent-decodes every byte once, optionally merges runs of "/",
 * then removes dot segments (RFC 3986 §5.2.4); `stripParams`: as Java servers do, drops ";…" from
 * each segment first. Returned as bytes in latin1 so it compares with a
 * decoded canonical path.
 */
function serverView(raw: string, mergeSlashes: boolean, stripParams = false): string {
  let p = raw.split("?")[0]!;
  // Java servlet containers drop ";parameters" from each segment before anything else.
  if (stripParams) p = p.split("/").map((seg) => seg.split(";")[0]).join("/");
  p = Buffer.from(p, "utf8").toString("latin1").replace(/%([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
  if (mergeSlashes) p = p.replace(/\/+/g, "/");
  const segs = p.split("/").slice(1);
  const out: string[] = [];
  segs.forEach((s, i) => {
    const last = i === segs.length - 1;
    if (s === "." || s === "..") {
      if (s === "..") out.pop();
      if (last) out.push("");
      return;
    }
    out.push(s);
  });
  return `/${out.join("/")}`;
}

/** The non-empty segments of a path. */
function segments(path: string): string[] {
  return path.split("/").filter((s) => s !== "");
}

function decodeCanonical(path: string): string {
  return path.replace(/%([0-9A-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

function isUnder(decodedPath: string, prefix: string): boolean {
  return prefix.endsWith("/") ? decodedPath.startsWith(prefix) : decodedPath === prefix || decodedPath.startsWith(`${prefix}/`);
}

const PIECES = [
  "/", "//", "repos", "acme", "acmeX", "other", "x", ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%2f", "%2F", "%5c", "%5C", "\\",
  "%25", "%252e", "%252f", "?", "?x=/../", "#f", ";", "..;", "%3b", "%41", "%7e", "%7E", "é", "%c3%a9", " ", "\u0000", "\u202e", "%00", "%3F",
];
const rawPaths = fc
  .tuple(fc.constantFrom("/", "/repos/acme/", "/repos/", "", "//", "/repos/acme"), fc.array(fc.constantFrom(...PIECES), { maxLength: 10 }))
  .map(([head, rest]) => head + rest.join(""));

describe("canonical paths, property-based", () => {
  test("an accepted path is canonical: absolute, no dot segment, no '//', nothing ambiguous, and stable", () => {
    let accepted = 0;
    let refused = 0;
    fc.assert(
      fc.property(rawPaths, (raw) => {
        const c = canonicalRequestPath(raw);
        if (c.problem !== null) {
          refused++;
          return;
        }
        accepted++;
        const p = c.path;
        assert.ok(p.startsWith("/"), p);
        assert.ok(!p.includes("//"), p);
        assert.ok(!p.split("/").some((s) => s === "." || s === ".."), p);
        assert.ok(!/%2F|%5C|%25|[\\?#\s\u0000-\u001f\u007f-\uffff]/i.test(p), p);
        assert.ok(!/%[0-9A-F]?[a-f]/.test(p), `lower-case hex in ${p}`);
        assert.deepEqual(canonicalRequestPath(p), { path: p, query: null, problem: null }, "canonicalising twice changes nothing");
      }),
      { numRuns: 5000 },
    );
    assert.ok(accepted > 500 && refused > 500, `accepted ${accepted}, refused ${refused}`);
  });

  test("the canonical path is the one a server resolves, so it starts with the prefix only when the request is inside", () => {
    fc.assert(
      fc.property(rawPaths, fc.constantFrom("/repos/acme/", "/repos/acme", "/repos/", "/"), (raw, prefix) => {
        const c = canonicalRequestPath(raw);
        if (c.problem !== null) return;
        const decoded = decodeCanonical(c.path);
        // Servers that merge slashes resolve exactly the canonical path.
        assert.equal(serverView(raw, true), decoded, raw);
        // Servers that do not: the same path whenever the request has no "//"; with "//", the same
        // segments, only with empty ones between them (and the proxy forwards the canonical path).
        if (!raw.split("?")[0]!.includes("//")) assert.equal(serverView(raw, false), decoded, raw);
        else assert.deepEqual(segments(serverView(raw, false)), segments(decoded), raw);
        const allowed = matchPathPrefixes([prefix], raw).allowed;
        assert.equal(allowed, isUnder(serverView(raw, true), prefix), `${raw} under ${prefix}`);
        // A server that drops ";params" may name another resource, but never one outside an allowed prefix.
        if (allowed) assert.ok(isUnder(serverView(raw, true, true), prefix), `${raw} under ${prefix} for a Java server`);
      }),
      { numRuns: 5000 },
    );
  });
});

describe("through the vault", () => {
  const POLICY = grant("acme-repos", ["claude"], ["github-token"], ["api.github.com"], 'paths = ["/repos/acme/"]\nmethods = ["GET"]\nreveal = true');

  test("an agent's access with a path that escapes the grant's prefix is denied and audited; one inside works", async () => {
    const t = await makeVault({ policy: POLICY });
    const admin = t.vault.admin();
    await admin.storeSecret({ name: "github-token", value: "gh-value" });
    const claude = t.vault.session(agent("claude"));
    const lease = await claude.requestLease({ secret: "github-token" });
    assert.deepEqual(lease.paths, ["/repos/acme/"]);
    const ok = await claude.accessSecret(lease.id, { domain: "api.github.com", method: "GET", path: "/repos/acme/app/issues?state=open" });
    assert.equal(ok.value.unsafeText(), "gh-value");
    ok.value.wipe();
    const attacks = [
      "/repos/acme/../other",
      "/repos/acme/%2e%2e/other",
      "/repos/acme/%2E%2e/other",
      "/repos/acme/..%2fother",
      "/repos/acme%2f..%2fother",
      "/repos/acme/%252e%252e/other",
      "/repos/acme\\..\\other",
      "/repos/acmeX/",
      "//repos/acme",
      "/repos/acme//../other",
      "/repos/acme/..;/other",
    ];
    for (const path of attacks) assert.equal(await codeOf(claude.accessSecret(lease.id, { domain: "api.github.com", method: "GET", path })), "access_denied", path);
    const denials = await admin.auditQuery({ types: ["access_denied"], leaseId: lease.id });
    assert.equal(denials.length, attacks.length, "every refused path is an access_denied event");
    assert.ok(denials.some((e) => /the path "\/repos\/other" \(canonical form\) is not under a prefix this lease allows/.test(e.reason ?? "")), JSON.stringify(denials.map((e) => e.reason)));
    assert.ok(denials.some((e) => /the path is refused: it has an encoded "\/" \(%2F\)/.test(e.reason ?? "")));
    assert.ok(denials.some((e) => /double encoding/.test(e.reason ?? "")));
    const accessed = await admin.auditQuery({ types: ["secret_accessed"], leaseId: lease.id });
    assert.equal(accessed.length, 1, "only the access inside the prefix was served");
  });

  test("a path with a control or bidi character is refused as invalid_request before anything is recorded", async () => {
    const t = await makeVault({ policy: POLICY });
    const admin = t.vault.admin();
    await admin.storeSecret({ name: "github-token", value: "gh-value" });
    const claude = t.vault.session(agent("claude"));
    const lease = await claude.requestLease({ secret: "github-token" });
    for (const path of ["/repos/acme/\u001b[2J", "/repos/acme/\u202e", "/repos/acme/\u009b"])
      assert.equal(await codeOf(claude.accessSecret(lease.id, { domain: "api.github.com", path })), "invalid_request");
    assert.equal((await admin.auditQuery({ types: ["access_denied"], leaseId: lease.id })).length, 0);
  });
});
