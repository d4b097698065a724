/**
 * Attack pass on the policy engine and every name, host, method and path matcher, through the real
 * vault core (Vault.open on a SQLite file, sessions as agents). The attacker is a hostile agent that
 * chooses its requests (secret names, scopes, domains, methods, paths, ttl, max_uses, renewals) and an
 * owner who writes and reloads a policy as docs/policy.md shows. Deny-by-default must hold and a rule
 * must grant exactly what it says. A canary value is stored in every vault and must never show in an
 * error or an audit row.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Vault } from "../src/vault/vault.js";
import { parsePolicy } from "../src/vault/policy.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import type { Identity, SecretRef } from "../src/base/types.js";
import type { VaultError } from "../src/base/errors.js";
import { agent, clock, codeOf, grant, hexKey, makeVault, refusalOf, tempDir } from "./helpers.js";

const CANARY = "CANARY-pa-7f3e9c1d5b2a4e6f8091a2b3c4d5e6f7";
const MIN = 60_000;

/** Every refusal message a test saw, checked for the canary at the end of the test. */
type Seen = string[];

async function refused(seen: Seen, p: Promise<unknown>): Promise<string> {
  const r = await refusalOf(p);
  seen.push(r.message);
  return r.code;
}

async function assertNoCanary(vault: Vault, seen: Seen): Promise<void> {
  const rows = await vault.admin().auditQuery({ limit: 10_000 });
  const text = JSON.stringify(rows, (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString("hex") : v));
  assert.ok(!text.includes(CANARY), "the canary reached an audit row");
  for (const m of seen) assert.ok(!m.includes(CANARY), `the canary reached an error: ${m.slice(0, 200)}`);
}

/** A vault on a SQLite file whose policy is re-read from `text` on reloadPolicy(). */
async function reloadable(text0: string, opts: { now?: () => number; cap?: number } = {}) {
  let text = text0;
  const vault = await Vault.open({
    store: openSqliteStore(`${tempDir("lessor-pa-")}/lessor.db`),
    keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!,
    policy: async () => parsePolicy(text, "policy.toml"),
    ...(opts.now ? { now: opts.now } : {}),
    limits: { maxLiveLeasesPerAgent: opts.cap ?? 100_000 },
  });
  return {
    vault,
    admin: vault.admin(),
    set(t: string) {
      text = t;
    },
    async close() {
      await vault.close();
    },
  };
}

/** An allow rule in TOML. */
function allow(name: string, o: { agents?: string[]; secrets?: string[]; domains?: string[]; extra?: string } = {}): string {
  return grant(name, o.agents ?? ["claude"], o.secrets ?? ["tok"], o.domains ?? ["api.example.com"], o.extra ?? "");
}
function deny(name: string, agents: string[], secrets: string[]): string {
  return `[[rule]]\nname = ${JSON.stringify(name)}\neffect = "deny"\nagents = ${JSON.stringify(agents)}\nsecrets = ${JSON.stringify(secrets)}\n`;
}

async function store(vault: Vault, refs: (string | SecretRef)[]): Promise<void> {
  const admin = vault.admin();
  for (const r of refs) {
    const ref = typeof r === "string" ? (r.includes("/") ? { scope: r.slice(0, r.indexOf("/")), name: r.slice(r.indexOf("/") + 1) } : { scope: "global", name: r }) : r;
    await admin.storeSecret({ ...ref, value: CANARY });
  }
}

// ---------------------------------------------------------------------------------------------
describe("agent and secret globs", () => {
  test("an agent glob grants exactly the agents it names: no prefix, case, dot or look-alike slips through", async () => {
    const seen: Seen = [];
    const t = await makeVault({ policy: allow("g", { agents: ["claude", "bot.1", "ci-?"] }) });
    await store(t.vault, ["tok"]);
    for (const a of ["claude", "bot.1", "ci-a"]) {
      const l = await t.vault.session(agent(a)).requestLease({ secret: "tok" });
      assert.equal(l.agent, a);
    }
    for (const a of ["claude-evil", "claudex", "Claude", "CLAUDE", "claude.", "claude_", "xclaude", "botx1", "bot.10", "ci-", "ci-ab", "ci-a.b", "bot_1"])
      assert.equal(await refused(seen, t.vault.session(agent(a)).requestLease({ secret: "tok" })), "access_denied", a);
    await assertNoCanary(t.vault, seen);
  });

  test("`claude-*` needs the dash and something after it: it matches claude-evil but never claude itself", async () => {
    const seen: Seen = [];
    const t = await makeVault({ policy: allow("g", { agents: ["claude-*"] }) });
    await store(t.vault, ["tok"]);
    assert.equal(await codeOf(t.vault.session(agent("claude-x")).requestLease({ secret: "tok" })), "resolved");
    assert.equal(await codeOf(t.vault.session(agent("claude-")).requestLease({ secret: "tok" })), "resolved", "* matches the empty run");
    for (const a of ["claude", "claude_x", "claudex-", "xclaude-1"])
      assert.equal(await refused(seen, t.vault.session(agent(a)).requestLease({ secret: "tok" })), "access_denied", a);
    await assertNoCanary(t.vault, seen);
  });

  test("secret names chosen by the agent: non-ASCII (NFC and NFD), confusables, glob and path characters, overlong names are refused before any grant", async () => {
    const seen: Seen = [];
    const t = await makeVault({ policy: allow("g", { secrets: ["*/*"], domains: ["api.example.com"] }) });
    await store(t.vault, ["tok", "env:prod/db"]);
    const c = t.vault.session(agent("claude"));
    const bad: (string | SecretRef)[] = [
      "t\u00f6k", // NFC
      "to\u0308k", // NFD
      "t\u043ek", // Cyrillic o
      "tok\u200b",
      "*",
      "?ok",
      "t[o]k",
      "env:prod//db",
      "env:prod/../db",
      "env:prod/./db",
      "env:prod%2fdb",
      "env:prod/db/x",
      "/db",
      "env:prod/",
      "..",
      "a..b",
      "x".repeat(129),
      "env:prod/db\u0000",
      { scope: "env:prod/..", name: "db" },
      { scope: "env:prod", name: "../db" },
      { scope: "", name: "db" },
      { scope: "ENV:prod", name: "db" },
    ];
    for (const s of bad) assert.equal(await refused(seen, c.requestLease({ secret: s as string })), "invalid_request", JSON.stringify(s));
    assert.equal((await c.listLeases()).length, 0, "nothing was granted");
    const granted = await t.vault.admin().auditQuery({ types: ["lease_granted"] });
    assert.equal(granted.length, 0);
    // The longest valid name is fine.
    await store(t.vault, ["y".repeat(128)]);
    assert.equal(await codeOf(c.requestLease({ secret: "y".repeat(128) })), "resolved");
    await assertNoCanary(t.vault, seen);
  });

  test("scope confusion: a deny on env:prod/* holds for every spelling of an env:prod secret, and other scopes never reach its value", async () => {
    const seen: Seen = [];
    const policy = deny("no-prod", ["*"], ["env:prod/*"]) + allow("any", { secrets: ["*/*"] });
    const t = await makeVault({ policy });
    const admin = t.vault.admin();
    await admin.storeSecret({ scope: "env:prod", name: "db", value: CANARY });
    await admin.storeSecret({ scope: "global", name: "db", value: "global-db" });
    const c = t.vault.session(agent("claude"));
    for (const s of ["env:prod/db", { scope: "env:prod", name: "db" }])
      assert.equal(await refused(seen, c.requestLease({ secret: s as string })), "access_denied", JSON.stringify(s));
    assert.equal(await refused(seen, c.requestLeaseAndAccess({ secret: "env:prod/db" }, { domain: "api.example.com" })), "access_denied");
    // Other case of the scope is another (absent) secret: never env:prod's value.
    for (const s of ["env:Prod/db", "env:PROD/db", "env:prod.x/db", "env:pro/db"])
      assert.equal(await refused(seen, c.requestLease({ secret: s })), "secret_not_found", s);
    // Bare name and global/ are the same secret, and not env:prod's.
    for (const s of ["db", "global/db", { name: "db" }]) {
      using v = (await c.requestLeaseAndAccess({ secret: s as string }, { domain: "api.example.com" })).value;
      assert.equal(v.unsafeText(), "global-db");
    }
    await assertNoCanary(t.vault, seen);
  });

  test("a bare `*` secret pattern covers only the global scope, as documented; `*/*` covers every scope", async () => {
    const seen: Seen = [];
    const policy = deny("no-interns", ["intern-*"], ["*"]) + allow("all", { agents: ["*"], secrets: ["*/*"] });
    const t = await makeVault({ policy });
    await store(t.vault, ["tok", "env:prod/db"]);
    const intern = t.vault.session(agent("intern-1"));
    assert.equal(await refused(seen, intern.requestLease({ secret: "tok" })), "access_denied");
    assert.equal(await codeOf(intern.requestLease({ secret: "env:prod/db" })), "resolved", "bare * is global/* only (docs/policy.md, Secrets)");
    await assertNoCanary(t.vault, seen);
  });

  test("rule order: a deny before a broad allow wins; an allow before a broad deny is an exception, for exactly its domains", async () => {
    const seen: Seen = [];
    const policy =
      deny("no-acme", ["intern-*"], ["workspace:acme/*"]) +
      allow("exception", { agents: ["intern-1"], secrets: ["env:staging/key"], domains: ["ok.example.com"] }) +
      deny("no-staging", ["*"], ["env:staging/*"]) +
      allow("broad", { agents: ["*"], secrets: ["*/*"], domains: ["*.example.com"] });
    const t = await makeVault({ policy });
    await store(t.vault, ["workspace:acme/gh", "env:staging/key", "env:staging/other"]);
    const i1 = t.vault.session(agent("intern-1"));
    assert.equal(await refused(seen, i1.requestLease({ secret: "workspace:acme/gh", domains: ["x.example.com"] })), "access_denied");
    assert.equal(await codeOf(t.vault.session(agent("claude")).requestLease({ secret: "workspace:acme/gh", domains: ["x.example.com"] })), "resolved");
    const l = await i1.requestLease({ secret: "env:staging/key" });
    assert.deepEqual(l.domains, ["ok.example.com"]);
    assert.equal(l.rule, "exception");
    // The exception does not cover another domain, so the deny after it decides.
    assert.equal(await refused(seen, i1.requestLease({ secret: "env:staging/key", domains: ["x.example.com"] })), "access_denied");
    assert.equal(await refused(seen, i1.requestLease({ secret: "env:staging/key", domains: ["ok.example.com", "x.example.com"] })), "access_denied");
    assert.equal(await refused(seen, i1.requestLease({ secret: "env:staging/other" })), "access_denied");
    // The lease from the exception is used for its domain only.
    assert.equal(await refused(seen, i1.accessSecret(l.id, { domain: "x.example.com" })), "access_denied");
    using v = (await i1.accessSecret(l.id, { domain: "ok.example.com" })).value;
    assert.equal(v.unsafeText(), CANARY);
    await assertNoCanary(t.vault, seen);
  });
});

// ---------------------------------------------------------------------------------------------
describe("domains", () => {
  const WILD = allow("w", { domains: ["*.example.com"] });

  test("`*.example.com` covers hosts strictly below it and nothing that only looks like it", async () => {
    const seen: Seen = [];
    const t = await makeVault({ policy: WILD });
    await store(t.vault, ["tok"]);
    const c = t.vault.session(agent("claude"));
    for (const d of ["a.example.com", "a.b.example.com", "A.EXAMPLE.COM.", "\uff41.example.com" /* fullwidth a */, "a\u3002example\u3002com" /* ideographic dots */]) {
      const l = await c.requestLease({ secret: "tok", domains: [d] });
      assert.ok(/^[a-z.]+$/.test(l.domains[0]!), `stored normalised: ${l.domains[0]}`);
    }
    const outside = [
      "example.com",
      "example.com.",
      "evil-example.com",
      "evilexample.com",
      "example.com.evil.net",
      "a.example.com.evil.net",
      "a.example.co",
      "a.\u0435xample.com", // Cyrillic e
      "a.example.com:443",
      "user@a.example.com",
      "a.example.com/x",
      "a.example.com..",
      ".a.example.com",
      "a..example.com",
      "*.com",
      "*",
      "*.*.example.com",
      "a*.example.com",
      "",
      " a.example.com",
      "a.example.com\u200b",
      "a.example.com%2e",
      "*.example.com.evil.net",
    ];
    for (const d of outside) {
      const code = await refused(seen, c.requestLease({ secret: "tok", domains: [d] }));
      assert.ok(code === "access_denied" || code === "invalid_request", `${JSON.stringify(d)}: ${code}`);
    }
    assert.equal((await t.vault.admin().auditQuery({ types: ["lease_granted"] })).length, 5);
    await assertNoCanary(t.vault, seen);
  });

  test("IP literals in every form are never a domain: not in a request, not at access, not even for an any_domain lease", async () => {
    const seen: Seen = [];
    const t = await makeVault({ policy: allow("w", { domains: ["*.example.com"] }) + allow("db", { secrets: ["db"], domains: [], extra: "any_domain = true" }) });
    await store(t.vault, ["tok", "db"]);
    const c = t.vault.session(agent("claude"));
    const ips = [
      "127.0.0.1",
      "2130706433",
      "0x7f000001",
      "017700000001",
      "0x7f.0.0.1",
      "0177.0.0.01",
      "127.1",
      "169.254.169.254",
      "[::1]",
      "::1",
      "[::ffff:127.0.0.1]",
      "::ffff:7f00:1",
      "[fd00:ec2::254]",
      "\uff11\uff12\uff17.\uff10.\uff10.\uff11", // fullwidth digits
      "1.2.3.4.",
      "a.example.0x1f",
      "a.example.123",
    ];
    const dbLease = await c.requestLease({ secret: "db" });
    const wLease = await c.requestLease({ secret: "tok" });
    for (const ip of ips) {
      assert.equal(await refused(seen, c.requestLease({ secret: "tok", domains: [ip] })), "access_denied", `request ${ip}`);
      assert.equal(await refused(seen, c.requestLease({ secret: "db", domains: [ip] })), "access_denied", `any_domain request ${ip}`);
      assert.notEqual(await refused(seen, c.accessSecret(dbLease.id, { domain: ip })), "resolved", `any_domain access ${ip}`);
      assert.notEqual(await refused(seen, c.accessSecret(wLease.id, { domain: ip })), "resolved", `access ${ip}`);
    }
    await assertNoCanary(t.vault, seen);
  });

  test("IDN: a rule in Unicode matches its punycode and case/dot variants; a homograph never does", async () => {
    const seen: Seen = [];
    const t = await makeVault({ policy: allow("idn", { domains: ["*.b\u00fccher.de", "api.example.com"] }) });
    await store(t.vault, ["tok"]);
    const c = t.vault.session(agent("claude"));
    for (const d of ["shop.b\u00fccher.de", "SHOP.B\u00dcCHER.DE.", "shop.xn--bcher-kva.de", "shop.bu\u0308cher.de" /* NFD */]) {
      const l = await c.requestLease({ secret: "tok", domains: [d] });
      assert.deepEqual(l.domains, ["shop.xn--bcher-kva.de"], d);
    }
    for (const d of ["shop.bucher.de", "shop.b\u00fccher.de.evil.net", "xn--bcher-kva.de", "shop.xn--bcher-kvb.de", "\u0430pi.example.com", "api.ex\u0430mple.com", "xn--api.example.com"])
      assert.equal(await refused(seen, c.requestLease({ secret: "tok", domains: [d] })), "access_denied", d);
    await assertNoCanary(t.vault, seen);
  });

  test("a request naming several domains is granted only when every one is covered, and the lease holds exactly those", async () => {
    const seen: Seen = [];
    const t = await makeVault({ policy: allow("g", { domains: ["api.example.com", "*.cdn.example.com"] }) });
    await store(t.vault, ["tok"]);
    const c = t.vault.session(agent("claude"));
    for (const ds of [
      ["api.example.com", "evil.example.com"],
      ["evil.net", "api.example.com"],
      ["a.cdn.example.com", "cdn.example.com"],
      ["api.example.com", "127.0.0.1"],
      ["api.example.com", ""],
      ["*.cdn.example.com", "*.example.com"],
    ])
      assert.equal(await refused(seen, c.requestLease({ secret: "tok", domains: ds })), "access_denied", ds.join(","));
    const l = await c.requestLease({ secret: "tok", domains: ["API.example.com.", "api.example.com", "*.x.cdn.example.com"] });
    assert.deepEqual(l.domains, ["api.example.com", "*.x.cdn.example.com"]);
    for (const d of ["a.cdn.example.com", "x.cdn.example.com", "cdn.example.com", "evil.example.com"])
      assert.equal(await refused(seen, c.accessSecret(l.id, { domain: d })), "access_denied", d);
    for (const d of ["api.example.com", "API.EXAMPLE.COM.", "a.x.cdn.example.com"]) (await c.accessSecret(l.id, { domain: d })).value.wipe();
    // No domain named: the lease gets the rule's own domains, and access still needs a covered one.
    const l2 = await c.requestLease({ secret: "tok" });
    assert.deepEqual(l2.domains, ["api.example.com", "*.cdn.example.com"]);
    assert.equal(await refused(seen, c.accessSecret(l2.id, {})), "access_denied", "a domain-bound lease needs a domain");
    assert.equal(await refused(seen, c.accessSecret(l2.id, { domain: "cdn.example.com" })), "access_denied");
    await assertNoCanary(t.vault, seen);
  });

  test("any_domain is only where the rule says so; a rule without it never accepts a missing or foreign domain", async () => {
    const seen: Seen = [];
    const t = await makeVault({ policy: allow("db", { secrets: ["db"], domains: [], extra: "any_domain = true" }) + allow("tok", {}) });
    await store(t.vault, ["tok", "db"]);
    const c = t.vault.session(agent("claude"));
    const db = await c.requestLease({ secret: "db" });
    assert.equal(db.anyDomain, true);
    (await c.accessSecret(db.id, {})).value.wipe();
    (await c.accessSecret(db.id, { domain: "anything.example.net" })).value.wipe();
    const tok = await c.requestLease({ secret: "tok" });
    assert.equal(tok.anyDomain, false);
    assert.equal(await refused(seen, c.accessSecret(tok.id, {})), "access_denied");
    assert.equal(await refused(seen, c.accessSecret(tok.id, { domain: "anything.example.net" })), "access_denied");
    await assertNoCanary(t.vault, seen);
  });
});

// ---------------------------------------------------------------------------------------------
describe("methods and paths through the access check", () => {
  const RULE = allow("gh", { domains: ["api.github.com"], extra: 'methods = ["get", "POST"]\npaths = ["/repos/acme/", "/user"]\nreveal = true' });

  async function setup() {
    const t = await makeVault({ policy: RULE });
    await store(t.vault, ["tok"]);
    const c = t.vault.session(agent("claude"));
    const l = await c.requestLease({ secret: "tok" });
    return { t, c, l };
  }
  const go = (c: ReturnType<Vault["session"]>, id: string, method: string, path: string) =>
    refusalOf(c.accessSecret(id, { domain: "api.github.com", method, path }));

  test("methods: stored upper-case; HEAD is not GET; unknown or malformed methods never pass", async () => {
    const seen: Seen = [];
    const { t, c, l } = await setup();
    assert.deepEqual(l.methods, ["GET", "POST"]);
    for (const m of ["GET", "POST"]) assert.equal((await go(c, l.id, m, "/user")).code, "resolved", m);
    for (const m of ["HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "PROPFIND", "GETX", "*", "G"]) {
      const r = await go(c, l.id, m, "/user");
      seen.push(r.message);
      assert.equal(r.code, "access_denied", m);
    }
    for (const m of ["GET ", " GET", "GET\r\n", "G\u0130T", "GE\u0000T", "", "x".repeat(33), "GET/1"]) {
      const r = await go(c, l.id, m, "/user");
      seen.push(r.message);
      assert.equal(r.code, "invalid_request", JSON.stringify(m));
    }
    await assertNoCanary(t.vault, seen);
  });

  test("paths: segment boundaries, dot segments, encodings, params and separators never step outside a prefix", async () => {
    const seen: Seen = [];
    const { t, c, l } = await setup();
    const inside = ["/repos/acme/app", "/repos/acme/", "/user", "/user/", "/user/x", "/repos/%61cme/x", "/repos//acme/x", "/repos/acme/x?next=/admin", "/repos/acme/a;b/c"];
    for (const p of inside) assert.equal((await go(c, l.id, "GET", p)).code, "resolved", p);
    const outside = [
      "/repos/acme",
      "/repos/acme-evil/x",
      "/repos/acmeX",
      "/repos/acme/../other",
      "/repos/acme/%2e%2e/other",
      "/repos/acme/%2E%2E/other",
      "/repos/acme/.%2e/other",
      "/repos/acme/x/../../other",
      "/repos/acme%2fx",
      "/repos/acme%2Fx",
      "/repos/acme/%252e%252e/other",
      "/repos/acme/..;/other",
      "/repos/acme/..%3b/other",
      "/repos/acme;/../other",
      "/repos/acme//../other",
      "/repos/acme/%c0%ae%c0%ae/other",
      "/repos/acme/%e0%80%ae./other",
      "/repos/acme/\uff0e\uff0e/other",
      "/repos/acme/x#frag",
      "/repos/acme/x%00",
      "/users",
      "/user%2fadmin",
      "/userx",
      "/USER",
      "/Repos/acme/x",
      "repos/acme/x",
      "*",
      "https://api.github.com/repos/acme/x",
      "//api.github.com/admin",
      "",
    ];
    for (const p of outside) {
      const r = await go(c, l.id, "GET", p);
      seen.push(r.message);
      assert.notEqual(r.code, "resolved", JSON.stringify(p));
    }
    for (const p of ["/repos/acme\\..\\other", "/repos/acme/x\u0000", "/repos/acme/x\r\nHost: evil", "/repos/acme/\u202e/x"]) {
      const r = await go(c, l.id, "GET", p);
      seen.push(r.message);
      assert.notEqual(r.code, "resolved", JSON.stringify(p));
    }
    // The use count moved only for the accepted accesses.
    const [now] = await c.listLeases();
    assert.equal(now!.uses, inside.length);
    await assertNoCanary(t.vault, seen);
  });

  test("paths: an encoded control, invisible or bidi character is refused like the raw one (docs/policy.md: 'a control character, raw or encoded … an invisible or bidi character')", async () => {
    const seen: Seen = [];
    const { t, c, l } = await setup();
    // Raw, each is refused (invalid_request from the target check, or the path check).
    for (const raw of ["\u0085", "\u202e", "\u200b", "\u2028"]) assert.notEqual((await go(c, l.id, "GET", `/repos/acme/x${raw}y`)).code, "resolved", `raw U+${raw.codePointAt(0)!.toString(16)}`);
    // Percent-encoded, the same characters reach the upstream server once it decodes.
    const failures: string[] = [];
    for (const enc of ["%C2%85" /* NEL, a C1 control */, "%C2%9B" /* CSI */, "%E2%80%AE" /* RLO */, "%E2%80%8B" /* ZWSP */, "%E2%80%A8" /* LINE SEPARATOR */]) {
      const r = await go(c, l.id, "GET", `/repos/acme/x${enc}y`);
      seen.push(r.message);
      if (r.code === "resolved") failures.push(enc);
    }
    assert.deepEqual(failures, [], "encoded control/invisible/bidi characters accepted in a path under a prefix");
    await assertNoCanary(t.vault, seen);
  });
});

// ---------------------------------------------------------------------------------------------
describe("lease terms the agent asks for", () => {
  const TERMS = allow("g", { extra: 'ttl = "10m"\nmax_ttl = "1h"\nmax_uses = 5\nmax_renewals = 2' });

  test("ttl and max_uses asked above the rule's caps are capped; at or below them are honoured", async () => {
    const ck = clock();
    const t = await makeVault({ policy: TERMS, now: ck.now });
    await store(t.vault, ["tok"]);
    const c = t.vault.session(agent("claude"));
    for (const ttl of [Number.MAX_SAFE_INTEGER, "30d", "24h", "11m", 10 * MIN + 1]) {
      const l = await c.requestLease({ secret: "tok", ttl, maxUses: Number.MAX_SAFE_INTEGER });
      assert.equal(l.expiresAt - l.issuedAt, 10 * MIN, String(ttl));
      assert.equal(l.maxExpiresAt - l.issuedAt, 60 * MIN);
      assert.equal(l.maxUses, 5);
      assert.equal(l.maxRenewals, 2);
    }
    const small = await c.requestLease({ secret: "tok", ttl: "1s", maxUses: 2 });
    assert.equal(small.expiresAt - small.issuedAt, 1000);
    assert.equal(small.maxUses, 2);
    // The rule without max_uses: the agent's own cap is kept.
    const t2 = await makeVault({ policy: allow("g", {}) });
    await store(t2.vault, ["tok"]);
    assert.equal((await t2.vault.session(agent("claude")).requestLease({ secret: "tok", maxUses: 3 })).maxUses, 3);
    assert.equal((await t2.vault.session(agent("claude")).requestLease({ secret: "tok" })).maxUses, null);
  });

  test("zero, negative, fractional, NaN, infinite, huge or mistyped ttl and max_uses are refused before any grant", async () => {
    const seen: Seen = [];
    const t = await makeVault({ policy: TERMS });
    await store(t.vault, ["tok"]);
    const c = t.vault.session(agent("claude"));
    const ttls: unknown[] = [0, -1, -MIN, 1.5, NaN, Infinity, -Infinity, 2 ** 53, 1e300, "0s", "0ms", "-5m", "1e3", "5", "5 m", "1.5h", "999999999999d", "1m1h", "", true, null, {}, [], 10n];
    for (const ttl of ttls) assert.equal(await refused(seen, c.requestLease({ secret: "tok", ttl: ttl as number })), "invalid_request", String(ttl));
    const uses: unknown[] = [0, -1, 1.5, NaN, Infinity, 2 ** 53, "3", true, null, {}, 3n];
    for (const maxUses of uses) assert.equal(await refused(seen, c.requestLease({ secret: "tok", maxUses: maxUses as number })), "invalid_request", String(maxUses));
    const l = await c.requestLease({ secret: "tok" });
    for (const ttl of ttls) assert.equal(await refused(seen, c.renewLease(l.id, { ttl: ttl as number })), "invalid_request", `renew ${String(ttl)}`);
    assert.equal((await t.vault.admin().auditQuery({ types: ["lease_granted"] })).length, 1);
    assert.equal((await t.vault.admin().auditQuery({ types: ["lease_renewed"] })).length, 0);
    await assertNoCanary(t.vault, seen);
  });

  test("renewals: capped by the rule's ttl, never past max_ttl, at most max_renewals, none after revocation or with max_renewals = 0", async () => {
    const seen: Seen = [];
    const ck = clock();
    const t = await makeVault({ policy: TERMS + allow("none", { secrets: ["once"], extra: "max_renewals = 0" }) + allow("fixed", { secrets: ["fixed"], extra: "renewable = false" }), now: ck.now });
    await store(t.vault, ["tok", "once", "fixed"]);
    const c = t.vault.session(agent("claude"));
    const l = await c.requestLease({ secret: "tok", ttl: "1m" });
    ck.advance(30_000);
    const r1 = await c.renewLease(l.id, { ttl: "30d" });
    assert.equal(r1.expiresAt, ck.now() + 10 * MIN, "a renewal's ttl is capped by the rule's");
    ck.advance(9 * MIN);
    await c.renewLease(l.id);
    assert.equal(await refused(seen, c.renewLease(l.id)), "access_denied", "max_renewals = 2");
    const o = await c.requestLease({ secret: "once" });
    assert.equal(await refused(seen, c.renewLease(o.id)), "access_denied", "max_renewals = 0");
    const f = await c.requestLease({ secret: "fixed" });
    assert.equal(await refused(seen, c.renewLease(f.id)), "access_denied", "renewable = false");
    // Revoked: no renewal, no use.
    const m = await c.requestLease({ secret: "tok" });
    await c.revokeLease(m.id);
    assert.equal(await refused(seen, c.renewLease(m.id)), "lease_revoked");
    assert.equal(await refused(seen, c.accessSecret(m.id, { domain: "api.example.com" })), "lease_revoked");
    // max_ttl: a fresh lease renewed every 8 minutes never lives past issue + max_ttl.
    const t3 = await makeVault({ policy: allow("g", { extra: 'ttl = "10m"\nmax_ttl = "25m"' }), now: ck.now });
    await store(t3.vault, ["tok"]);
    const c3 = t3.vault.session(agent("claude"));
    const lm = await c3.requestLease({ secret: "tok" });
    let last = lm.expiresAt;
    for (let i = 0; i < 5; i++) {
      ck.advance(8 * MIN);
      const code = await refused(seen, c3.renewLease(lm.id).then((r) => (last = r.expiresAt)));
      assert.ok(last <= lm.issuedAt + 25 * MIN, "never past max_ttl");
      if (i >= 3) assert.notEqual(code, "resolved", "no renewal past max_ttl");
    }
    await assertNoCanary(t.vault, seen);
  });

  test("races: max_uses and max_renewals hold under 100 concurrent calls on one lease", async () => {
    const seen: Seen = [];
    const t = await makeVault({ policy: allow("g", { extra: "max_uses = 7\nmax_renewals = 3" }) });
    await store(t.vault, ["tok"]);
    const c = t.vault.session(agent("claude"));
    const l = await c.requestLease({ secret: "tok" });
    const uses = await Promise.all(Array.from({ length: 100 }, () => c.accessSecret(l.id, { domain: "api.example.com" }).then((r) => (r.value.wipe(), "ok"), (e: Error & { code: string }) => (seen.push(e.message), e.code))));
    assert.equal(uses.filter((u) => u === "ok").length, 7);
    assert.deepEqual([...new Set(uses.filter((u) => u !== "ok"))], ["lease_exhausted"]);
    const l2 = await c.requestLease({ secret: "tok" });
    const renews = await Promise.all(Array.from({ length: 100 }, () => refused(seen, c.renewLease(l2.id))));
    assert.equal(renews.filter((r) => r === "resolved").length, 3);
    assert.equal((await c.listLeases()).find((x) => x.id === l2.id)!.renewals, 3);
    // Used-up lease: exactly 7 secret_accessed rows.
    assert.equal((await t.vault.admin().auditQuery({ types: ["secret_accessed"], leaseId: l.id })).length, 7);
    await assertNoCanary(t.vault, seen);
  });
});

// ---------------------------------------------------------------------------------------------
describe("explain agrees with the grant (differential)", () => {
  const POLICY =
    deny("no-prod", ["*"], ["env:prod/*"]) +
    allow("claude-gh", { agents: ["claude", "claude-*"], secrets: ["github-token", "workspace:*/gh-*"], domains: ["api.github.com", "*.githubusercontent.com"] }) +
    deny("interns-no-acme", ["intern-?"], ["workspace:acme/*"]) +
    allow("npm", { agents: ["*"], secrets: ["*/npm-readonly"], domains: ["registry.npmjs.org"] }) +
    allow("db", { agents: ["nightly"], secrets: ["service:reports/db-password"], domains: [], extra: "any_domain = true" }) +
    allow("exc", { agents: ["bot.1"], secrets: ["env:staging/*"], domains: ["*.example.com", "example.com"] }) +
    deny("no-staging", ["bot*"], ["env:staging/*"]) +
    allow("idn", { agents: ["bot*"], secrets: ["*/*"], domains: ["*.b\u00fccher.de"] });

  const AGENTS = ["claude", "claude-evil", "claude2", "Claude", "intern-1", "intern-12", "nightly", "bot.1", "botx1", "bot", "mallory"];
  const SECRETS: SecretRef[] = [
    "global/github-token", "workspace:acme/gh-read", "workspace:acme-evil/gh-read", "workspace:acme/npm-readonly", "env:prod/npm-readonly",
    "env:prod/db", "global/npm-readonly", "service:reports/db-password", "env:staging/key", "global/x", "env:Prod/db", "global/gh-read",
  ].map((s) => ({ scope: s.slice(0, s.indexOf("/")), name: s.slice(s.indexOf("/") + 1) }));
  /** [domain as requested, its normal form or null when it is not a valid host or pattern] */
  const DOMAINS: [string, string | null][] = [
    ["api.github.com", "api.github.com"], ["API.GITHUB.COM.", "api.github.com"], ["raw.githubusercontent.com", "raw.githubusercontent.com"],
    ["githubusercontent.com", "githubusercontent.com"], ["evil-githubusercontent.com", "evil-githubusercontent.com"],
    ["githubusercontent.com.evil.net", "githubusercontent.com.evil.net"], ["a.b.githubusercontent.com", "a.b.githubusercontent.com"],
    ["*.githubusercontent.com", "*.githubusercontent.com"], ["*.a.githubusercontent.com", "*.a.githubusercontent.com"],
    ["registry.npmjs.org", "registry.npmjs.org"], ["registry.npmjs.org:443", null], ["user@registry.npmjs.org", null],
    ["127.0.0.1", null], ["[::1]", null], ["example.com", "example.com"], ["x.example.com", "x.example.com"], ["*.example.com", "*.example.com"],
    ["shop.b\u00fccher.de", "shop.xn--bcher-kva.de"], ["SHOP.B\u00dcCHER.DE.", "shop.xn--bcher-kva.de"], ["shop.xn--bcher-kva.de", "shop.xn--bcher-kva.de"],
    ["shop.bucher.de", "shop.bucher.de"], ["", null], ["api..github.com", null], ["\u0430pi.github.com", "xn--pi-6kc.github.com"], ["*.com", null],
  ];

  /** An independent reading of docs/policy.md: globs as anchored regexes, first match decides. */
  type ORule = { name: string; effect: "allow" | "deny"; agents: string[]; secrets: string[]; domains: string[]; any: boolean };
  const ORULES: ORule[] = [
    { name: "no-prod", effect: "deny", agents: ["*"], secrets: ["env:prod/*"], domains: [], any: false },
    { name: "claude-gh", effect: "allow", agents: ["claude", "claude-*"], secrets: ["github-token", "workspace:*/gh-*"], domains: ["api.github.com", "*.githubusercontent.com"], any: false },
    { name: "interns-no-acme", effect: "deny", agents: ["intern-?"], secrets: ["workspace:acme/*"], domains: [], any: false },
    { name: "npm", effect: "allow", agents: ["*"], secrets: ["*/npm-readonly"], domains: ["registry.npmjs.org"], any: false },
    { name: "db", effect: "allow", agents: ["nightly"], secrets: ["service:reports/db-password"], domains: [], any: true },
    { name: "exc", effect: "allow", agents: ["bot.1"], secrets: ["env:staging/*"], domains: ["*.example.com", "example.com"], any: false },
    { name: "no-staging", effect: "deny", agents: ["bot*"], secrets: ["env:staging/*"], domains: [], any: false },
    { name: "idn", effect: "allow", agents: ["bot*"], secrets: ["*/*"], domains: ["*.xn--bcher-kva.de"], any: false },
  ];
  const re = (g: string) => new RegExp(`^${g.replace(/[.+^${}()|[\]\\:@-]/g, "\\$&").replace(/\*/g, "[^/]*").replace(/\?/g, "[^/]")}$`);
  const secretMatch = (p: string, s: SecretRef) => {
    const [scope, name] = p.includes("/") ? p.split("/") : ["global", p];
    return re(scope!).test(s.scope) && re(name!).test(s.name);
  };
  const below = (h: string, suffix: string) => h.endsWith(`.${suffix}`);
  const covers = (rule: string, req: string) => {
    if (!req.startsWith("*.")) return rule.startsWith("*.") ? below(req, rule.slice(2)) : rule === req;
    if (!rule.startsWith("*.")) return false;
    const x = req.slice(2), y = rule.slice(2);
    return x === y || below(x, y);
  };
  function oracle(a: string, s: SecretRef, ds: [string, string | null][]): string | null {
    if (ds.some(([, n]) => n === null)) return null;
    for (const r of ORULES) {
      if (!r.agents.some((g) => re(g).test(a))) continue;
      if (!r.secrets.some((p) => secretMatch(p, s))) continue;
      if (r.effect === "allow" && ds.length > 0 && !r.any && !ds.every(([, n]) => r.domains.some((d) => covers(d, n!)))) continue;
      return r.effect === "allow" ? r.name : null;
    }
    return null;
  }

  test("for 1000 random requests, explain, the grant and the docs' reading of the rules give the same answer", async () => {
    const seen: Seen = [];
    const t = await makeVault({ policy: POLICY, limits: { maxLiveLeasesPerAgent: 100_000 } });
    const admin = t.vault.admin();
    for (const s of SECRETS) await admin.storeSecret({ ...s, value: CANARY });
    let seed = 0x5eed1234;
    const rnd = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n);
    const sessions = new Map(AGENTS.map((a) => [a, t.vault.session(agent(a))]));
    const mismatches: string[] = [];
    let allowed = 0;
    for (let i = 0; i < 1000; i++) {
      const a = AGENTS[rnd(AGENTS.length)]!;
      const s = SECRETS[rnd(SECRETS.length)]!;
      const n = [0, 0, 1, 1, 1, 2, 3][rnd(7)]!;
      const ds = Array.from({ length: n }, () => DOMAINS[rnd(DOMAINS.length)]!);
      const c = sessions.get(a)!;
      const want = oracle(a, s, ds);
      let got: string | null = null;
      try {
        const l = await c.requestLease({ secret: s, ...(n > 0 ? { domains: ds.map((d) => d[0]) } : {}) });
        got = l.rule;
        allowed++;
        // The lease holds exactly the requested domains (normalised) or the rule's.
        const expect = [...new Set(ds.map((d) => d[1]!))];
        if (n > 0 && JSON.stringify(l.domains) !== JSON.stringify(expect)) mismatches.push(`${a} ${s.scope}/${s.name} ${JSON.stringify(ds)}: lease domains ${JSON.stringify(l.domains)}`);
        await c.revokeLease(l.id);
      } catch (e) {
        const err = e as Error & { code: string };
        seen.push(err.message);
        if (err.code !== "access_denied") mismatches.push(`${a} ${s.scope}/${s.name}: grant threw ${err.code}`);
      }
      if (got !== want) mismatches.push(`${a} ${s.scope}/${s.name} ${JSON.stringify(ds.map((d) => d[0]))}: grant ${got} docs ${want}`);
      if (n <= 1) {
        const e = await c.explain(a, s, n === 1 ? ds[0]![0] : undefined);
        const ex = e.allow ? e.rule!.name : null;
        if (ex !== got) mismatches.push(`${a} ${s.scope}/${s.name} ${JSON.stringify(ds.map((d) => d[0]))}: explain ${ex} grant ${got}`);
        if (e.allow && e.steps.at(-1)?.matched !== true) mismatches.push(`explain's last step is not the deciding match`);
      }
    }
    assert.deepEqual(mismatches, []);
    assert.ok(allowed >= 40 && allowed < 900, `the sample exercises both answers (${allowed} allowed)`);
    await assertNoCanary(t.vault, seen);
  });
});

// ---------------------------------------------------------------------------------------------
describe("policy reload", () => {
  test("a reload to a broken file denies every grant, use and renewal at once, and a grant racing it never lands after it", async () => {
    const seen: Seen = [];
    const r = await reloadable(allow("g", {}));
    await store(r.vault, ["tok"]);
    const c = r.vault.session(agent("claude"));
    const l = await c.requestLease({ secret: "tok" });
    r.set('[[rule]]\nname = "g"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["tok"]\ndomains = ["api.example.com"]\nttls = "1h"');
    const racing: Promise<string>[] = [];
    let done = false;
    const reload = refusalOf(r.admin.reloadPolicy()).finally(() => (done = true));
    while (!done) {
      racing.push(refused(seen, c.requestLease({ secret: "tok" })));
      await new Promise((res) => setImmediate(res));
    }
    assert.equal((await reload).code, "policy_invalid");
    await Promise.all(racing);
    const events = await r.admin.auditQuery({ types: ["policy_reloaded", "lease_granted"], limit: 10_000 });
    const reloadSeq = events.find((e) => e.type === "policy_reloaded")!.seq;
    assert.deepEqual(events.filter((e) => e.type === "lease_granted" && e.seq > reloadSeq), [], "no grant after the broken reload");
    assert.equal(await refused(seen, c.requestLease({ secret: "tok" })), "access_denied");
    assert.equal(await refused(seen, c.accessSecret(l.id, { domain: "api.example.com" })), "access_denied");
    assert.equal(await refused(seen, c.renewLease(l.id)), "access_denied");
    const e = await refusalOf(c.requestLease({ secret: "tok" }));
    assert.ok(!e.message.includes("ttls") && !e.message.includes("policy.toml"), "an agent is not told the load error");
    await assertNoCanary(r.vault, seen);
    await r.close();
  });

  test("a grant recorded after a successful reload's policy_reloaded event was decided by the reloaded policy", async () => {
    const r = await reloadable(allow("g", {}));
    await store(r.vault, ["tok"]);
    const c = r.vault.session(agent("claude"));
    let late = 0;
    for (let round = 0; round < 5; round++) {
      r.set(allow("g", {}));
      await r.admin.reloadPolicy();
      r.set(""); // the reload takes the grant away
      const racing: Promise<string>[] = [];
      let done = false;
      const reload = r.admin.reloadPolicy().finally(() => (done = true));
      while (!done) {
        racing.push(codeOf(c.requestLease({ secret: "tok" })));
        await new Promise((res) => setImmediate(res));
      }
      await reload;
      await Promise.all(racing);
      const events = await r.admin.auditQuery({ types: ["policy_reloaded", "lease_granted"], limit: 10_000, order: "desc" });
      const reloadSeq = events.find((e) => e.type === "policy_reloaded")!.seq;
      late += events.filter((e) => e.type === "lease_granted" && e.seq > reloadSeq).length;
    }
    assert.equal(late, 0, `${late} lease(s) granted by the old rules were recorded after the policy_reloaded event that removed them`);
    await r.close();
  });

  test("a reload that narrows a rule's domains binds the leases it granted before (use is re-checked)", async () => {
    const seen: Seen = [];
    const r = await reloadable(allow("g", { domains: ["a.example.com", "b.example.com"] }));
    await store(r.vault, ["tok"]);
    const c = r.vault.session(agent("claude"));
    const l = await c.requestLease({ secret: "tok" });
    r.set(allow("g", { domains: ["b.example.com"] }));
    await r.admin.reloadPolicy();
    assert.equal(await refused(seen, c.accessSecret(l.id, { domain: "a.example.com" })), "access_denied");
    (await c.accessSecret(l.id, { domain: "b.example.com" })).value.wipe();
    await assertNoCanary(r.vault, seen);
    await r.close();
  });

  test("a reload that narrows a rule's methods and paths binds the leases it granted before", async () => {
    const seen: Seen = [];
    const r = await reloadable(allow("gh", { domains: ["api.github.com"], extra: 'methods = ["GET", "POST", "DELETE"]\npaths = ["/"]' }));
    await store(r.vault, ["tok"]);
    const c = r.vault.session(agent("claude"));
    const l = await c.requestLease({ secret: "tok" });
    r.set(allow("gh", { domains: ["api.github.com"], extra: 'methods = ["GET"]\npaths = ["/repos/acme/"]' }));
    await r.admin.reloadPolicy();
    // A lease granted now is held to the narrowed rule.
    const fresh = await c.requestLease({ secret: "tok" });
    assert.equal(await refused(seen, c.accessSecret(fresh.id, { domain: "api.github.com", method: "DELETE", path: "/repos/acme/app" })), "access_denied");
    assert.equal(await refused(seen, c.accessSecret(fresh.id, { domain: "api.github.com", method: "GET", path: "/admin" })), "access_denied");
    // The lease granted before the reload must be too ("a policy reload takes effect on existing leases at once").
    const del = await refused(seen, c.accessSecret(l.id, { domain: "api.github.com", method: "DELETE", path: "/repos/acme/app" }));
    const admin = await refused(seen, c.accessSecret(l.id, { domain: "api.github.com", method: "GET", path: "/admin" }));
    assert.deepEqual({ del, admin }, { del: "access_denied", admin: "access_denied" }, "the old lease still DELETEs and reaches /admin after the rule was narrowed and reloaded");
    await assertNoCanary(r.vault, seen);
    await r.close();
  });

  test("a reload that lowers a rule's max_uses caps the leases it granted before; one that raises it gives no lease more than its own", async () => {
    const seen: Seen = [];
    const r = await reloadable(allow("g", { extra: "max_uses = 5" }));
    await store(r.vault, ["tok"]);
    const c = r.vault.session(agent("claude"));
    const old = await c.requestLease({ secret: "tok" });
    const spent = await c.requestLease({ secret: "tok" });
    for (let i = 0; i < 2; i++) (await c.accessSecret(old.id, { domain: "api.example.com" })).value.wipe();
    for (let i = 0; i < 3; i++) (await c.accessSecret(spent.id, { domain: "api.example.com" })).value.wipe();
    r.set(allow("g", { extra: "max_uses = 3" }));
    await r.admin.reloadPolicy();
    // `old` has used 2 of the 3 the rule now allows: one more, then no more, racing included.
    const race = await Promise.allSettled(Array.from({ length: 6 }, () => c.accessSecret(old.id, { domain: "api.example.com" })));
    const won = race.filter((x) => x.status === "fulfilled");
    for (const w of won) (w as PromiseFulfilledResult<{ value: { wipe(): void } }>).value.value.wipe();
    assert.equal(won.length, 1, "a lease granted under max_uses = 5 was used past the 3 the reloaded rule allows");
    const err = (race.find((x) => x.status === "rejected") as PromiseRejectedResult).reason as VaultError;
    assert.equal(err.code, "lease_exhausted");
    assert.match(err.message, /rule "g" of the policy in force allows 3/);
    assert.equal(await refused(seen, c.accessSecret(spent.id, { domain: "api.example.com" })), "lease_exhausted");
    // Raised again: the lease's own max_uses (5) still binds; the rule never adds uses.
    r.set(allow("g", { extra: "max_uses = 100" }));
    await r.admin.reloadPolicy();
    for (let i = 0; i < 2; i++) (await c.accessSecret(old.id, { domain: "api.example.com" })).value.wipe();
    assert.equal(await refused(seen, c.accessSecret(old.id, { domain: "api.example.com" })), "lease_exhausted");
    await assertNoCanary(r.vault, seen);
    await r.close();
  });

  test("a reload that lowers a rule's max_ttl ends the leases it granted before at issue + the new max_ttl", async () => {
    const seen: Seen = [];
    const ck = clock();
    const r = await reloadable(allow("g", { extra: 'ttl = "30d"\nmax_ttl = "30d"' }), { now: ck.now });
    await store(r.vault, ["tok"]);
    const c = r.vault.session(agent("claude"));
    const l = await c.requestLease({ secret: "tok" });
    r.set(allow("g", { extra: 'ttl = "15m"\nmax_ttl = "1h"' }));
    await r.admin.reloadPolicy();
    ck.advance(59 * MIN);
    (await c.accessSecret(l.id, { domain: "api.example.com" })).value.wipe(); // within issue + 1h: still served
    ck.advance(MIN);
    assert.equal(await refused(seen, c.accessSecret(l.id, { domain: "api.example.com" })), "lease_expired", "a lease granted for 30 days was used past the 1h max_ttl the reloaded rule sets");
    assert.match(seen.at(-1)!, /outlived rule "g" of the policy in force, whose max_ttl \(1h\)/);
    assert.equal(await refused(seen, c.renewLease(l.id)), "lease_expired", "an outlived lease was renewed (to an expiry in the past)");
    await assertNoCanary(r.vault, seen);
    await r.close();
  });

  test("a domain whose first rule needs a person's approval cannot be had without one by naming it with a domain only a later rule covers", async () => {
    const seen: Seen = [];
    const r = await reloadable(allow("prod-approval", { domains: ["prod.example.com"], extra: 'approval = "required"' }) + allow("broad", { domains: ["prod.example.com", "dev.example.com"] }));
    await store(r.vault, ["tok"]);
    const c = r.vault.session(agent("claude"));
    // Asked alone, prod needs a person.
    assert.equal(await refused(seen, c.requestLease({ secret: "tok", domains: ["prod.example.com"] })), "access_denied");
    assert.match(seen.at(-1)!, /approv/);
    // Bundled with dev, "broad" grants (first match): the lease is not usable for prod, only for dev.
    const l = await c.requestLease({ secret: "tok", domains: ["prod.example.com", "dev.example.com"] });
    assert.equal(l.rule, "broad");
    assert.equal(await refused(seen, c.accessSecret(l.id, { domain: "prod.example.com" })), "access_denied", "the bundled lease was used for prod without a person's approval");
    assert.match(seen.at(-1)!, /decided by rule "prod-approval" of the policy in force, which needs a person's approval/);
    (await c.accessSecret(l.id, { domain: "dev.example.com" })).value.wipe();
    await assertNoCanary(r.vault, seen);
    await r.close();
  });

  test("a reload that makes a rule non-renewable stops the renewal of the leases it granted before", async () => {
    const seen: Seen = [];
    const ck = clock();
    const r = await reloadable(allow("g", { extra: 'ttl = "10m"' }), { now: ck.now });
    await store(r.vault, ["tok"]);
    const c = r.vault.session(agent("claude"));
    const l = await c.requestLease({ secret: "tok" });
    r.set(allow("g", { extra: 'ttl = "10m"\nrenewable = false' }));
    await r.admin.reloadPolicy();
    assert.equal((await c.requestLease({ secret: "tok" })).renewable, false, "new leases are not renewable");
    ck.advance(5 * MIN);
    assert.equal(await refused(seen, c.renewLease(l.id)), "access_denied", "an old lease was renewed under a rule that now says renewable = false");
    await assertNoCanary(r.vault, seen);
    await r.close();
  });

  test("a renewal is refused when the policy in force no longer allows the lease's domains", async () => {
    const seen: Seen = [];
    const ck = clock();
    const r = await reloadable(allow("g", { domains: ["a.example.com", "b.example.com"] }), { now: ck.now });
    await store(r.vault, ["tok"]);
    const c = r.vault.session(agent("claude"));
    const l = await c.requestLease({ secret: "tok", domains: ["a.example.com"] });
    r.set(allow("g", { domains: ["b.example.com"] }));
    await r.admin.reloadPolicy();
    assert.equal(await refused(seen, c.accessSecret(l.id, { domain: "a.example.com" })), "access_denied", "its use is refused");
    ck.advance(MIN);
    assert.equal(await refused(seen, c.renewLease(l.id)), "access_denied", "its renewal went through although the policy no longer allows a.example.com");
    await assertNoCanary(r.vault, seen);
    await r.close();
  });

  test("a renewal takes its ttl from the rule that allows the lease now, not from another rule that took the old rule's name", async () => {
    const ck = clock();
    const r = await reloadable(allow("g", { extra: 'ttl = "10m"' }), { now: ck.now });
    await store(r.vault, ["tok"]);
    const c = r.vault.session(agent("claude"));
    const l = await c.requestLease({ secret: "tok" });
    // The owner renames the rule to "h" and gives it a 1-minute ttl; a new, unrelated rule takes the name "g".
    r.set(allow("h", { extra: 'ttl = "1m"\nmax_ttl = "1h"' }) + allow("g", { agents: ["other"], secrets: ["other"], extra: 'ttl = "12h"' }));
    await r.admin.reloadPolicy();
    const fresh = await c.requestLease({ secret: "tok", ttl: "1h" });
    assert.equal(fresh.expiresAt - fresh.issuedAt, MIN, "a fresh lease lives 1 minute");
    ck.advance(MIN);
    const got = await c.renewLease(l.id).then((x) => x.expiresAt - ck.now(), (e: { code: string }) => e.code);
    assert.ok(got === "access_denied" || (typeof got === "number" && got <= MIN), `the old lease was renewed for ${typeof got === "number" ? `${got / MIN} minutes` : got}, from the unrelated rule now named "g"`);
    await r.close();
  });
});
