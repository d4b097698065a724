/**
 * Issue 12 item 8 through the built CLI (dist/bin/lessor.cjs, `npm run build:cli`) in child processes:
 * a broken policy never blocks the brakes, `lessor killswitch` is a lockout released with
 * `lessor killswitch --release`, and `lessor policy explain` names the policy version that answered.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { cliHome, runCli, seedHome, type CliResult } from "./cli-harness.js";
import { serveInSuite } from "./daemon-harness.js";
import { grant } from "./helpers.js";

const GOOD = grant("claude-github", ["claude"], ["github-token"], ["api.github.com"]);
const SYNTAX_ERROR = '[[rule]\nname = "claude-github"\n';
const VALUE = "cli-brakes-value";
const LEASE = ["lease", "github-token", "--agent", "claude", "--domain", "api.github.com"];
const sha = (s: string): string => createHash("sha256").update(s, "utf8").digest("hex");

async function seeded(policy: string): Promise<string> {
  const home = await cliHome();
  await seedHome(home, GOOD, [{ name: "github-token", value: VALUE }]);
  writeFileSync(join(home, "policy.toml"), policy, { mode: 0o600 });
  return home;
}

function ok(r: CliResult, what: string): CliResult {
  assert.equal(r.code, 0, `${what}: ${r.stderr}`);
  return r;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const json = (r: CliResult): any => JSON.parse(ok(r, "json").stdout);

describe("a broken policy never blocks the brakes (CLI, embedded)", () => {
  test("lease is refused saying why (exit 3); status, secret list, audit, revoke, killswitch work; explain names the version; reload of the fixed file brings grants back", async () => {
    const home = await seeded(SYNTAX_ERROR);
    const denied = await runCli(LEASE, { home });
    assert.equal(denied.code, 3, denied.stderr);
    assert.equal(denied.stdout, "");
    assert.match(denied.stderr, /^lessor: the policy is invalid, so every grant is denied: \S*policy\.toml: TOML syntax error at line \d+, column \d+: .*; fix it and run lessor policy reload\n$/);

    const st = ok(await runCli(["status"], { home }), "status");
    assert.match(st.stdout, /^policy: +\S*policy\.toml: BROKEN, every lease is denied until it is fixed and reloaded \(lessor policy reload\): .*TOML syntax error/m);
    assert.match(st.stdout, /^policy version: +#1 \(digest [0-9a-f]{12}…, loaded \S+Z, broken\)$/m);
    const sj = json(await runCli(["status", "--json"], { home }));
    assert.equal(sj.policy.state, "broken");
    assert.equal(sj.policy.digest, sha(SYNTAX_ERROR));
    assert.equal(sj.killswitch.engaged, false);

    assert.match(ok(await runCli(["secret", "list"], { home }), "secret list").stdout, /github-token/);
    ok(await runCli(["audit", "verify"], { home }), "audit verify");
    assert.match(ok(await runCli(["audit", "tail"], { home }), "audit tail").stdout, /access_denied/);
    assert.ok(json(await runCli(["audit", "query", "--type", "access_denied", "--json"], { home })).length >= 1);
    ok(await runCli(["revoke", "--agent", "claude"], { home }), "revoke --agent");
    ok(await runCli(["killswitch", "--yes"], { home }), "killswitch");
    ok(await runCli(["killswitch", "--release"], { home }), "killswitch --release");

    const ex = ok(await runCli(["policy", "explain", "--agent", "claude", "--secret", "github-token", "--domain", "api.github.com"], { home }), "explain");
    assert.match(ex.stdout, /^deny: the policy is invalid, so every grant is denied: /);
    assert.match(ex.stdout, /\n {2}answered by policy version #1 \(digest [0-9a-f]{12}…, loaded \S+Z, broken\)\n$/);
    const reload = await runCli(["policy", "reload"], { home });
    assert.equal(reload.code, 2);
    assert.match(reload.stderr, /TOML syntax error.*every grant is now denied until you fix the policy and run lessor policy reload again/);

    writeFileSync(join(home, "policy.toml"), GOOD, { mode: 0o600 });
    ok(await runCli(["policy", "reload"], { home }), "reload of the fixed file");
    assert.equal(ok(await runCli(LEASE, { home }), "lease").stdout, VALUE);
    const exj = json(await runCli(["policy", "explain", "--agent", "claude", "--secret", "github-token", "--json"], { home }));
    assert.equal(exj.allow, true);
    assert.deepEqual([exj.policy.state, exj.policy.digest], ["ok", sha(GOOD)]);
  });
});

describe("lessor killswitch is a lockout (CLI, embedded)", () => {
  test("after killswitch every lease is refused (exit 3) saying since when and by whom, status shows it, until killswitch --release", async () => {
    const home = await seeded(GOOD);
    assert.equal(ok(await runCli(LEASE, { home }), "lease").stdout, VALUE);
    const ks = ok(await runCli(["killswitch", "--yes", "--reason", "laptop lost"], { home }), "killswitch");
    assert.match(ks.stdout, /^killswitch: revoked \d+ leases?\n$/);
    assert.match(ks.stderr, /the killswitch is engaged: no lease is granted until an admin runs lessor killswitch --release/);

    const refused = await runCli(LEASE, { home });
    assert.equal(refused.code, 3, refused.stderr);
    assert.equal(refused.stdout, "");
    assert.match(refused.stderr, /^lessor: the killswitch is engaged since \S+Z by uid:\d+ \(reason: "laptop lost"\); no lease is granted until an admin releases it with lessor killswitch --release\n$/);
    assert.equal((await runCli(["lease", "github-token", "--agent", "claude", "--json"], { home })).code, 3);

    assert.match(ok(await runCli(["status"], { home }), "status").stdout, /^killswitch: +ENGAGED since \S+Z by uid:\d+ \("laptop lost"\): no lease is granted until lessor killswitch --release$/m);
    const sj = json(await runCli(["status", "--json"], { home }));
    assert.deepEqual([sj.killswitch.engaged, sj.killswitch.reason], [true, "laptop lost"]);

    assert.deepEqual(json(await runCli(["killswitch", "--release", "--reason", "found it", "--json"], { home })), { released: true });
    assert.equal(ok(await runCli(LEASE, { home }), "lease after release").stdout, VALUE);
    assert.match(ok(await runCli(["status"], { home }), "status").stdout, /^killswitch: +off \(released \S+Z by uid:\d+\)$/m);
    assert.equal(ok(await runCli(["killswitch", "--release"], { home }), "second release").stdout, "the killswitch was not engaged; nothing changed\n");

    const events = json(await runCli(["audit", "query", "--type", "killswitch", "--json"], { home }));
    assert.deepEqual(
      events.map((e: { reason: string; detail: { engaged: boolean } }) => [e.reason, e.detail.engaged]),
      [
        ["laptop lost", true],
        ["found it", false],
        ["released", false],
      ],
    );
    const help = ok(await runCli(["killswitch", "--help"]), "help");
    assert.match(help.stdout, /--release/);
    assert.match(help.stdout, /lessor killswitch --release/);
  });
});

describe("lessor killswitch and policy explain through the daemon", () => {
  const d = serveInSuite(GOOD, async (home) => seedHome(home, GOOD, [{ name: "github-token", value: VALUE }]));

  test("killswitch --release goes through the daemon; explain names the version, which changes after a reload", async () => {
    const home = d().home;
    ok(await runCli(["killswitch", "--yes"], { home }), "killswitch");
    assert.equal((await runCli(LEASE, { home })).code, 3);
    assert.equal(json(await runCli(["status", "--json"], { home })).killswitch.engaged, true);
    assert.deepEqual(json(await runCli(["killswitch", "--release", "--json"], { home })), { released: true });
    assert.equal(ok(await runCli(LEASE, { home }), "lease").stdout, VALUE);
    const events = json(await runCli(["audit", "query", "--type", "killswitch", "--json"], { home }));
    assert.ok(events.every((e: { transport: string }) => e.transport === "uds"), "through the daemon's socket");

    const ex1 = json(await runCli(["policy", "explain", "--agent", "claude", "--secret", "github-token", "--json"], { home }));
    assert.deepEqual([ex1.policy.load, ex1.policy.digest, ex1.policy.state], [1, sha(GOOD), "ok"]);
    const next = `${GOOD}\n# edited\n`;
    writeFileSync(join(home, "policy.toml"), next, { mode: 0o600 });
    ok(await runCli(["policy", "reload"], { home }), "reload");
    const ex2 = json(await runCli(["policy", "explain", "--agent", "claude", "--secret", "github-token", "--json"], { home }));
    assert.deepEqual([ex2.policy.load, ex2.policy.digest], [2, sha(next)]);
    const text = ok(await runCli(["policy", "explain", "--agent", "claude", "--secret", "github-token"], { home }), "explain");
    assert.match(text.stdout, new RegExp(`\\n  answered by policy version #2 \\(digest ${sha(next).slice(0, 12)}…, loaded \\S+Z\\)\\n$`));
    assert.match(ok(await runCli(["status"], { home }), "status").stdout, new RegExp(`^policy version: +#2 \\(digest ${sha(next).slice(0, 12)}…`, "m"));
  });
});
