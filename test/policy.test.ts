import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { formatDuration, parseDuration } from "../src/vault/duration.js";
import { isVaultError } from "../src/base/errors.js";
import { compileAgentPattern, compileGlob, compileSecretPattern } from "../src/vault/pattern.js";
import {
  BUILTIN_TERMS,
  decide,
  emptyPolicy,
  explain,
  leaseDomains,
  parsePolicy,
  type Policy,
  type PolicyQuery,
} from "../src/vault/policy.js";

const MIN = 60_000;
const HOUR = 60 * MIN;

/** The example from the brief. */
const BRIEF_EXAMPLE = `
[defaults]                # optional; overrides built-in defaults for allow rules
ttl = "15m"               # built-in default 15m
max_ttl = "24h"           # built-in default 24h
renewable = true          # built-in default true

[[rule]]
name = "claude-github"
effect = "allow"
agents = ["claude", "claude-*"]
secrets = ["github-token", "workspace:*/gh-*"]
domains = ["api.github.com", "*.githubusercontent.com"]
any_domain = false
methods = ["GET", "post"]
paths = ["/repos/"]
ttl = "15m"
max_ttl = "1h"
max_uses = 100
renewable = true
max_renewals = 3
`;

/** A small allow rule, with `extra` lines appended. */
function allowRule(name: string, extra = ""): string {
  return `[[rule]]\nname = "${name}"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["github-token"]\ndomains = ["api.github.com"]\n${extra}\n`;
}

function q(agent: string, secret: string, domains?: string[]): PolicyQuery {
  const i = secret.indexOf("/");
  const ref = i < 0 ? { scope: "global", name: secret } : { scope: secret.slice(0, i), name: secret.slice(i + 1) };
  return domains === undefined ? { agent, secret: ref } : { agent, secret: ref, domains };
}

/** Asserts parsePolicy fails with policy_invalid and a message containing every fragment. */
function assertLoadError(text: string, ...fragments: (string | RegExp)[]): void {
  assert.throws(
    () => parsePolicy(text, "policy.toml"),
    (e: unknown) => {
      assert.ok(isVaultError(e, "policy_invalid"), `expected policy_invalid, got ${String(e)}`);
      assert.ok(e.message.startsWith("policy.toml: "), e.message);
      for (const f of fragments) {
        if (typeof f === "string") assert.ok(e.message.includes(f), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(f)}`);
        else assert.match(e.message, f);
      }
      return true;
    },
  );
}

test("parses the full example with all fields, normalised", () => {
  const p = parsePolicy(BRIEF_EXAMPLE, "policy.toml");
  assert.equal(p.source, "policy.toml");
  assert.equal(p.digest, createHash("sha256").update(BRIEF_EXAMPLE).digest("hex"));
  assert.equal(p.rules.length, 1);
  const r = p.rules[0]!;
  assert.equal(r.name, "claude-github");
  assert.equal(r.index, 1);
  assert.equal(r.effect, "allow");
  assert.deepEqual(r.agents, ["claude", "claude-*"]);
  assert.deepEqual(r.secrets, ["github-token", "workspace:*/gh-*"]);
  assert.deepEqual(r.domains, ["api.github.com", "*.githubusercontent.com"]);
  assert.equal(r.anyDomain, false);
  assert.deepEqual(r.methods, ["GET", "POST"]);
  assert.deepEqual(r.paths, ["/repos/"]);
  assert.deepEqual(r.terms, { ttlMs: 15 * MIN, maxTtlMs: HOUR, maxUses: 100, renewable: true, maxRenewals: 3 });
  assert.ok(Object.isFrozen(r) && Object.isFrozen(p.rules));
});

test("the example in docs/policy.md parses and behaves as its comments say", () => {
  const md = readFileSync(fileURLToPath(new URL("../docs/policy.md", import.meta.url)), "utf8");
  const block = /```toml\n([\s\S]*?)```/.exec(md);
  assert.ok(block, "docs/policy.md has a toml block");
  const p = parsePolicy(block[1]!, "policy.toml");
  assert.deepEqual(
    p.rules.map((r) => r.name),
    ["no-prod", "claude-github", "nightly-db", "interns-no-acme", "npm-read"],
  );
  assert.equal(decide(p, q("claude", "env:prod/github-token", ["api.github.com"])).rule?.name, "no-prod");
  assert.equal(decide(p, q("claude-2", "workspace:acme/gh-read", ["raw.githubusercontent.com"])).allow, true);
  assert.equal(decide(p, q("claude", "github-token", ["evil.com"])).allow, false);
  const nightly = p.rules.find((r) => r.name === "nightly-db")!;
  assert.equal(nightly.terms.maxTtlMs, 48 * HOUR);
  assert.equal(nightly.terms.renewable, false);
  assert.equal(decide(p, q("nightly", "service:reports/db-password")).allow, true);
  assert.equal(decide(p, q("intern-1", "workspace:acme/npm-readonly", ["registry.npmjs.org"])).rule?.name, "interns-no-acme");
  assert.equal(decide(p, q("intern-1", "workspace:other/npm-readonly", ["registry.npmjs.org"])).rule?.name, "npm-read");
});

test("built-in and [defaults] terms are inherited by allow rules and carried by deny rules", () => {
  const plain = parsePolicy(allowRule("a"), "p.toml");
  assert.deepEqual(plain.rules[0]!.terms, BUILTIN_TERMS);
  const p = parsePolicy(
    `[defaults]\nttl = "5m"\nmax_ttl = "2d"\nmax_uses = 7\nrenewable = false\nmax_renewals = 0\n` +
      allowRule("a", 'ttl = "10m"') +
      `[[rule]]\nname = "d"\neffect = "deny"\nagents = ["*"]\nsecrets = ["*/*"]\n`,
    "p.toml",
  );
  assert.deepEqual(p.rules[0]!.terms, { ttlMs: 10 * MIN, maxTtlMs: 48 * HOUR, maxUses: 7, renewable: false, maxRenewals: 0 });
  assert.deepEqual(p.rules[1]!.terms, { ttlMs: 5 * MIN, maxTtlMs: 48 * HOUR, maxUses: 7, renewable: false, maxRenewals: 0 });
  assert.deepEqual(p.rules[1]!.domains, []);
});

test("load errors name the file, the rule and the field, with what was expected and found", () => {
  const at = 'rule 2 ("claude-github")';
  const two = (extra: string) => allowRule("first") + allowRule("claude-github", extra);
  assertLoadError(two("ttl = 15"), at, 'field "ttl"', 'expected a duration such as "15m" or "1h", got 15');
  assertLoadError(two('ttl = "15 minutes"'), at, 'field "ttl"', 'got "15 minutes"');
  assertLoadError(two('ttl = "2h"\nmax_ttl = "1h"'), at, 'field "ttl"', "2h is longer than max_ttl 1h");
  assertLoadError(two('ttl = "30h"'), at, 'field "ttl"', "longer than max_ttl", "built-in default");
  assertLoadError(two('max_ttl = "5m"'), at, 'field "max_ttl"', "shorter than the ttl 15m");
  assertLoadError(two('max_ttl = "31d"'), at, 'field "max_ttl"', "hard ceiling of 30d");
  assertLoadError(two("ttls = \"1m\""), at, 'unknown field "ttls"', 'did you mean "ttl"');
  assertLoadError(two("max_uses = 0"), at, 'field "max_uses"', "at least 1", "got 0");
  assertLoadError(two("max_uses = 1.5"), at, 'field "max_uses"', "got 1.5");
  assertLoadError(two("max_renewals = -1"), at, 'field "max_renewals"', "got -1");
  assertLoadError(two('renewable = "yes"'), at, 'field "renewable"', 'expected true or false, got "yes"');
  assertLoadError(two('methods = ["GET", "G E T"]'), at, 'field "methods"', "item 2");
  assertLoadError(two("methods = []"), at, 'field "methods"', "non-empty");
  assertLoadError(two('paths = ["repos/"]'), at, 'field "paths"', 'starts with "/"', 'got "repos/"');
  assertLoadError(
    allowRule("first") +
      `[[rule]]\nname = "claude-github"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["github-token"]\ndomains = ["*.com"]\n`,
    at,
    'field "domains"',
    "item 1",
    '"*.com"',
  );
  assertLoadError(
    allowRule("first") + `[[rule]]\nname = "claude-github"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["github-token"]\n`,
    at,
    'field "domains"',
    "any_domain = true",
  );
  assertLoadError(
    allowRule("first") +
      `[[rule]]\nname = "claude-github"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["github-token"]\ndomains = []\n`,
    at,
    'field "domains"',
  );
  assertLoadError(
    allowRule("first") +
      `[[rule]]\nname = "claude-github"\neffect = "deny"\nagents = ["claude"]\nsecrets = ["github-token"]\ndomains = ["api.github.com"]\n`,
    at,
    'field "domains"',
    "not allowed on a deny rule",
  );
  assertLoadError(
    allowRule("first") + `[[rule]]\nname = "claude-github"\neffect = "deny"\nagents = ["claude"]\nsecrets = ["github-token"]\nttl = "1m"\n`,
    at,
    'field "ttl"',
    "deny rule",
  );
  assertLoadError(allowRule("claude-github") + allowRule("claude-github"), at, 'field "name"', "already used by rule 1");
  assertLoadError(
    `[[rule]]\nname = "claude-github"\neffect = "maybe"\nagents = ["claude"]\nsecrets = ["x"]\n`,
    'rule 1 ("claude-github")',
    'field "effect"',
    'got "maybe"',
  );
  assertLoadError(
    `[[rule]]\nname = "claude-github"\neffect = "allow"\nagents = []\nsecrets = ["x"]\ndomains = ["a.com"]\n`,
    'field "agents"',
    "non-empty",
  );
  assertLoadError(
    `[[rule]]\nname = "claude-github"\neffect = "allow"\nagents = "claude"\nsecrets = ["x"]\ndomains = ["a.com"]\n`,
    'field "agents"',
    'expected a list of strings',
    'got "claude"',
  );
  assertLoadError(
    `[[rule]]\nname = "r"\neffect = "allow"\nagents = ["claude bot"]\nsecrets = ["x"]\ndomains = ["a.com"]\n`,
    'field "agents"',
    "whitespace",
  );
  assertLoadError(
    `[[rule]]\nname = "r"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["a/b/c"]\ndomains = ["a.com"]\n`,
    'field "secrets"',
    'more than one "/"',
  );
  assertLoadError(`[[rule]]\neffect = "allow"\n`, "rule 1", 'field "name"', "is required");
  assertLoadError(`[[rule]]\nname = "has space"\n`, "rule 1", 'field "name"', 'got "has space"');
});

test("load errors outside rules: top level, [defaults], TOML syntax", () => {
  assertLoadError(`[[rules]]\nname = "x"\n`, 'unknown top-level key "rules"', 'did you mean "rule"');
  assertLoadError(`[rule]\nname = "x"\n`, "[[rule]]");
  assertLoadError(`[defaults]\nttl = "1m"\nmax_use = 3\n`, "[defaults]", 'unknown field "max_use"');
  assertLoadError(`[defaults]\nttl = 5\n`, "[defaults]", 'field "ttl"', "got 5");
  assertLoadError(`[defaults]\nttl = "48h"\n`, "[defaults]", 'field "ttl"', "longer than max_ttl");
  assertLoadError(`[defaults]\nmax_ttl = "5m"\n` + allowRule("a"), "[defaults]", 'field "max_ttl"');
  assertLoadError(`[defaults]\nmax_ttl = "2m"\nttl = "1m"\n` + allowRule("a", 'ttl = "10m"'), 'rule 1 ("a")', "max_ttl 2m (from [defaults])");
  assertLoadError(`# comment\n[[rule]]\nname = "a"\neffect = allow\n`, "TOML syntax error at line 4");
});

test("huge values are truncated in messages", () => {
  const big = "x".repeat(5000);
  assert.throws(
    () => parsePolicy(allowRule("a", `ttl = "${big}"`), "p.toml"),
    (e: unknown) => isVaultError(e, "policy_invalid") && e.message.length < 400 && e.message.includes("…"),
  );
  assert.throws(
    () => parsePolicy(allowRule("a", `max_uses = [${Array.from({ length: 1000 }, (_, i) => i).join(",")}]`), "p.toml"),
    (e: unknown) => isVaultError(e, "policy_invalid") && e.message.includes("a list of 1000 items"),
  );
});

test("a policy with no rules, and emptyPolicy, deny everything", () => {
  for (const p of [parsePolicy("", "p.toml"), parsePolicy("[defaults]\nttl = \"1m\"\n", "p.toml"), emptyPolicy()]) {
    const d = decide(p, q("claude", "github-token", ["api.github.com"]));
    assert.equal(d.allow, false);
    assert.equal(d.rule, null);
    assert.match(d.reason, /no rule allows agent "claude" secret "global\/github-token"/);
    assert.match(d.reason, /denies by default/);
  }
});

test("first match wins: a deny before an allow, and an allow before a deny", () => {
  const deny = `[[rule]]\nname = "block"\neffect = "deny"\nagents = ["claude"]\nsecrets = ["github-token"]\n`;
  const denyFirst = parsePolicy(deny + allowRule("allow"), "p.toml");
  const d1 = decide(denyFirst, q("claude", "github-token", ["api.github.com"]));
  assert.equal(d1.allow, false);
  assert.equal(d1.rule?.name, "block");
  assert.equal(d1.reason, 'rule 1 ("block") denies it');

  const allowFirst = parsePolicy(allowRule("allow") + deny, "p.toml");
  const d2 = decide(allowFirst, q("claude", "github-token", ["api.github.com"]));
  assert.equal(d2.allow, true);
  assert.equal(d2.rule?.name, "allow");
  assert.equal(d2.reason, 'rule 1 ("allow") allows it');
  // The allow does not cover this domain, so it does not match, and the deny decides.
  const d3 = decide(allowFirst, q("claude", "github-token", ["evil.com"]));
  assert.equal(d3.allow, false);
  assert.equal(d3.rule?.name, "block");
  // Unmatched agent: nothing matches at all.
  assert.equal(decide(allowFirst, q("other", "github-token")).rule, null);
});

test("deny rules match on agent and secret only, whatever the domain", () => {
  const p = parsePolicy(
    `[[rule]]\nname = "block"\neffect = "deny"\nagents = ["*"]\nsecrets = ["env:prod/*"]\n` +
      `[[rule]]\nname = "all"\neffect = "allow"\nagents = ["*"]\nsecrets = ["*/*"]\nany_domain = true\n`,
    "p.toml",
  );
  for (const doms of [undefined, [], ["a.example.com"], ["*.example.com"]])
    assert.equal(decide(p, q("x", "env:prod/db", doms)).rule?.name, "block");
  assert.equal(decide(p, q("x", "env:dev/db", ["a.example.com"])).allow, true);
});

test("domain coverage: every requested domain must be covered by the rule's patterns", () => {
  const p = parsePolicy(
    `[[rule]]\nname = "gh"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["t"]\ndomains = ["api.github.com", "*.githubusercontent.com"]\n`,
    "p.toml",
  );
  const ok = (doms: string[] | undefined) => decide(p, q("claude", "t", doms)).allow;
  assert.equal(ok(undefined), true);
  assert.equal(ok([]), true);
  assert.equal(ok(["api.github.com"]), true);
  assert.equal(ok(["API.GitHub.com."]), true);
  assert.equal(ok(["raw.githubusercontent.com"]), true);
  assert.equal(ok(["*.githubusercontent.com"]), true);
  assert.equal(ok(["*.x.githubusercontent.com"]), true);
  assert.equal(ok(["api.github.com", "raw.githubusercontent.com"]), true);
  assert.equal(ok(["api.github.com", "evil.com"]), false);
  assert.equal(ok(["githubusercontent.com"]), false);
  assert.equal(ok(["github.com"]), false);
  assert.equal(ok(["*.github.com"]), false);
  assert.equal(ok(["api.github.com.evil.com"]), false);
});

test("invalid requested domains deny with a reason naming the domain, never throw", () => {
  const p = parsePolicy(allowRule("a"), "p.toml");
  for (const bad of ["api.github.com:443", "api.github.com/x", "", "*", "1.2.3.4", "a..b.com"]) {
    const d = decide(p, q("claude", "github-token", [bad]));
    assert.equal(d.allow, false);
    assert.equal(d.rule, null);
    assert.ok(d.reason.includes(`requested domain ${JSON.stringify(bad)} is not valid`), d.reason);
  }
  // even when a valid domain comes first
  assert.equal(decide(p, q("claude", "github-token", ["api.github.com", "x:1"])).allow, false);
});

test("any_domain rules allow without a domain and for any requested domain", () => {
  const p = parsePolicy(
    `[[rule]]\nname = "db"\neffect = "allow"\nagents = ["nightly"]\nsecrets = ["service:reports/db-password"]\nany_domain = true\n`,
    "p.toml",
  );
  assert.equal(decide(p, q("nightly", "service:reports/db-password")).allow, true);
  assert.equal(decide(p, q("nightly", "service:reports/db-password", ["db.internal.example"])).allow, true);
  assert.equal(p.rules[0]!.anyDomain, true);
  assert.deepEqual(p.rules[0]!.domains, []);
});

test("wildcard agents and secrets, and bare names meaning the global scope", () => {
  const p = parsePolicy(
    `[[rule]]\nname = "w"\neffect = "allow"\nagents = ["claude-*", "bot-?"]\nsecrets = ["workspace:*/gh-*", "*/npm", "plain"]\nany_domain = true\n`,
    "p.toml",
  );
  const ok = (a: string, s: string) => decide(p, q(a, s)).allow;
  assert.equal(ok("claude-1", "workspace:acme/gh-read"), true);
  assert.equal(ok("claude-", "workspace:acme/gh-"), true);
  assert.equal(ok("claude", "workspace:acme/gh-read"), false);
  assert.equal(ok("bot-7", "env:prod/npm"), true);
  assert.equal(ok("bot-77", "env:prod/npm"), false);
  assert.equal(ok("claude-1", "global/plain"), true);
  assert.equal(ok("claude-1", "workspace:acme/plain"), false);
  assert.equal(ok("claude-1", "env:x/gh-read"), false);
  assert.equal(ok("claude-1", "workspace:acme/npm-extra"), false);
});

test("glob meta characters other than * and ? are literal", () => {
  assert.equal(compileGlob("a.b")("a.b"), true);
  assert.equal(compileGlob("a.b")("axb"), false);
  assert.equal(compileGlob("a.*")("axb"), false);
  assert.equal(compileGlob("a.*")("a.b"), true);
  assert.equal(compileGlob("a+b")("aab"), false);
  assert.equal(compileGlob("a+b")("a+b"), true);
  assert.equal(compileGlob("[ab]")("a"), false);
  assert.equal(compileGlob("[ab]*")("[ab]x"), true);
  assert.equal(compileGlob("(x|y)*")("x"), false);
  assert.equal(compileGlob("^a$*")("^a$z"), true);
  assert.equal(compileGlob("a\\d?")("a\\dx"), true);
  assert.equal(compileGlob("a\\d?")("a1"), false);
  assert.equal(compileGlob("*")("a/b"), false);
  assert.equal(compileGlob("a?c")("a/c"), false);
  assert.equal(compileGlob("a?c")("abc"), true);
  assert.equal(compileGlob("a*")("a"), true);
  assert.throws(() => compileGlob(""), (e: unknown) => isVaultError(e, "invalid_request"));

  const p = parsePolicy(
    `[[rule]]\nname = "dots"\neffect = "allow"\nagents = ["bot.1"]\nsecrets = ["env:a.b/key.v1"]\nany_domain = true\n`,
    "p.toml",
  );
  assert.equal(decide(p, q("bot.1", "env:a.b/key.v1")).allow, true);
  assert.equal(decide(p, q("botx1", "env:a.b/key.v1")).allow, false);
  assert.equal(decide(p, q("bot.1", "env:axb/key.v1")).allow, false);
  assert.equal(decide(p, q("bot.1", "env:a.b/keyxv1")).allow, false);
});

test("secret and agent pattern validation", () => {
  const match = compileSecretPattern("*/token");
  assert.equal(match({ scope: "workspace:x", name: "token" }), true);
  assert.equal(match({ scope: "workspace:x", name: "token2" }), false);
  assert.equal(compileSecretPattern("token")({ scope: "global", name: "token" }), true);
  assert.equal(compileSecretPattern("token")({ scope: "env:x", name: "token" }), false);
  for (const bad of ["", "a/b/c", "/x", "x/", "a b", "sc ope/x", "x/na me", "x/n$me", "\t"])
    assert.throws(() => compileSecretPattern(bad), (e: unknown) => isVaultError(e, "policy_invalid"), JSON.stringify(bad));
  assert.equal(compileAgentPattern("claude-*")("claude-x"), true);
  for (const bad of ["", "a b", "a/b", "a$"])
    assert.throws(() => compileAgentPattern(bad), (e: unknown) => isVaultError(e, "policy_invalid"), JSON.stringify(bad));
});

test("explain lists each rule checked, with why it matched or not", () => {
  const p = parsePolicy(
    `[[rule]]\nname = "other-agent"\neffect = "allow"\nagents = ["ci"]\nsecrets = ["*/*"]\nany_domain = true\n` +
      `[[rule]]\nname = "other-secret"\neffect = "deny"\nagents = ["*"]\nsecrets = ["env:prod/*"]\n` +
      `[[rule]]\nname = "wrong-domain"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["github-token"]\ndomains = ["api.github.com"]\n` +
      `[[rule]]\nname = "right"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["github-token"]\ndomains = ["*.x.com"]\n` +
      `[[rule]]\nname = "never-reached"\neffect = "deny"\nagents = ["*"]\nsecrets = ["*/*"]\n`,
    "p.toml",
  );
  const e = explain(p, q("claude", "github-token", ["api.x.com"]));
  assert.equal(e.allow, true);
  assert.equal(e.rule?.name, "right");
  assert.equal(e.reason, 'rule 4 ("right") allows it');
  assert.deepEqual(
    e.steps.map((s) => [s.index, s.rule, s.effect, s.matched]),
    [
      [1, "other-agent", "allow", false],
      [2, "other-secret", "deny", false],
      [3, "wrong-domain", "allow", false],
      [4, "right", "allow", true],
    ],
  );
  assert.match(e.steps[0]!.why, /agent "claude" does not match/);
  assert.match(e.steps[1]!.why, /secret "global\/github-token" does not match/);
  assert.match(e.steps[2]!.why, /domain "api\.x\.com" is not in its domains/);
  assert.match(e.steps[3]!.why, /match/);
  // explain and decide agree
  const d = decide(p, q("claude", "github-token", ["api.x.com"]));
  assert.deepEqual({ allow: d.allow, rule: d.rule, reason: d.reason }, { allow: e.allow, rule: e.rule, reason: e.reason });
  const denied = explain(p, q("nobody", "env:dev/z", ["a.com"]));
  assert.equal(denied.rule?.name, "never-reached");
  assert.equal(denied.steps.length, 5);
});

test("leaseDomains: the requested domains normalised, else the rule's", () => {
  const p = parsePolicy(
    `[[rule]]\nname = "gh"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["t"]\ndomains = ["API.github.com", "*.GitHubUserContent.com."]\n`,
    "p.toml",
  );
  const rule = p.rules[0]!;
  assert.deepEqual(rule.domains, ["api.github.com", "*.githubusercontent.com"]);
  assert.deepEqual(leaseDomains(rule, q("claude", "t")), ["api.github.com", "*.githubusercontent.com"]);
  assert.deepEqual(leaseDomains(rule, q("claude", "t", [])), ["api.github.com", "*.githubusercontent.com"]);
  assert.deepEqual(leaseDomains(rule, q("claude", "t", ["RAW.githubusercontent.com.", "raw.githubusercontent.com"])), [
    "raw.githubusercontent.com",
  ]);
});

test("a hand-built Policy object is compiled on first use", () => {
  const src = parsePolicy(allowRule("a"), "p.toml");
  const copy: Policy = { source: "copy", rules: [...src.rules], digest: "x" };
  assert.equal(decide(copy, q("claude", "github-token", ["api.github.com"])).allow, true);
  assert.equal(decide(copy, q("claude", "github-token", ["evil.com"])).allow, false);
});

test("durations parse and format both ways", () => {
  const cases: [string, number][] = [
    ["500ms", 500],
    ["90s", 90_000],
    ["15m", 15 * MIN],
    ["1h", HOUR],
    ["1h30m", 90 * MIN],
    ["2d", 48 * HOUR],
    ["1d2h3m4s5ms", 86_400_000 + 2 * HOUR + 3 * MIN + 4_000 + 5],
  ];
  for (const [text, ms] of cases) {
    assert.equal(parseDuration(text), ms, text);
    assert.equal(parseDuration(formatDuration(ms)), ms);
  }
  assert.equal(formatDuration(90 * MIN), "1h30m");
  assert.equal(formatDuration(500), "500ms");
  assert.equal(formatDuration(0), "0s");
  for (let ms = 1; ms < 5e9; ms = ms * 7 + 13) assert.equal(parseDuration(formatDuration(ms)), ms);
  for (const bad of ["", "0s", "15", "m", "1.5h", "-1h", "1m1h", "1h 30m", " 1h", "1H", "1hh", "1w", "15 m", "1e3s"])
    assert.throws(
      () => parseDuration(bad),
      (e: unknown) => isVaultError(e, "invalid_request") && e.message.includes('"15m"'),
      JSON.stringify(bad),
    );
});

test("the last of 50 rules is found (decide walks rules in order)", () => {
  const rules = Array.from(
    { length: 50 },
    (_, i) =>
      `[[rule]]\nname = "r${i}"\neffect = "allow"\nagents = ["agent-${i}-*"]\nsecrets = ["workspace:*/s${i}-*"]\ndomains = ["*.d${i}.example.com"]\n`,
  ).join("");
  const p = parsePolicy(rules, "p.toml");
  const query = q("agent-49-x", "workspace:w/s49-key", ["api.d49.example.com"]);
  assert.equal(decide(p, query).rule?.name, "r49");
  assert.equal(decide(p, q("agent-49-x", "workspace:w/s48-key", ["api.d49.example.com"])).allow, false);
});

test("path prefixes are canonicalised at load time, as request paths are before matching", () => {
  const p = parsePolicy(allowRule("gh", 'paths = ["/r%65pos//acme/", "/repos/acme/", "/a%3fb", "/Repos"]'), "policy.toml");
  // "%65" is "e" (unreserved, decoded), "//" collapses, other escapes are upper-cased; the duplicate goes.
  assert.deepEqual(p.rules[0]!.paths, ["/repos/acme/", "/a%3Fb", "/Repos"]);
});

test("ambiguous path prefixes are refused with a policy error naming the rule, the item and why", () => {
  const at = 'rule 1 ("gh")';
  const cases: [string, string][] = [
    ["/repos/../admin/", 'has a "." or ".." segment; write the path it stands for'],
    ["/repos/./acme", 'has a "." or ".." segment'],
    ["/repos/%2e%2e/admin", 'has a "." or ".." segment'],
    ["/repos%2facme/", 'has an encoded "/" (%2F)'],
    ["/repos%5Cacme/", "has an encoded backslash (%5C)"],
    ["/repos/%252e/", 'has an encoded "%" (%25): double encoding'],
    ["/repos\\\\acme/", "has a backslash"],
    ["/repos/%00", "has an encoded control character (%00)"],
    ["/repos/%g1", 'has a "%" that is not followed by two hex digits'],
    ["/repos/..;/x", "dot segment with parameters"],
  ];
  for (const [prefix, why] of cases)
    assertLoadError(allowRule("gh", `paths = ["${prefix}"]`), at, 'field "paths"', "item 1", "is refused: it", why);
  // A prefix that is not a path at all is still refused by the shape check first.
  assertLoadError(allowRule("gh", 'paths = ["/a?b"]'), at, 'field "paths"', 'no spaces, "?" or "#"');
});
