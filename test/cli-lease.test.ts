/**
 * `lessor lease`, `renew`, `revoke`, `killswitch` and `leases`, run as the built CLI in child processes,
 * against the embedded vault and against a running daemon.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { BIN, cliHome, runCli, seedHome, type CliResult } from "./cli-harness.js";
import { serveInSuite } from "./daemon-harness.js";

const CANARY = `canary-${randomBytes(12).toString("hex")}`;
/** A value with awkward bytes: quotes, "=", "#", an inner newline, unicode, trailing spaces. */
const AWKWARD = `${CANARY} "q" 'x' a=b #c\nline2 ünïcødé ✓  `;

const POLICY = `[[rule]]
name = "claude-github"
effect = "allow"
agents = ["claude"]
secrets = ["github-token", "awkward", "ghost"]
domains = ["api.github.com", "*.githubusercontent.com"]
ttl = "10m"
max_uses = 5

[[rule]]
name = "bot-anywhere"
effect = "allow"
agents = ["bot"]
secrets = ["plain"]
any_domain = true

[[rule]]
name = "nobody-prod"
effect = "deny"
agents = ["*"]
secrets = ["env:prod/*"]
`;

const LEASE_KEYS = [
  "agent", "anyDomain", "bound", "domains", "expiresAt", "id", "issuedAt", "issuedBy", "maxExpiresAt", "maxRenewals", "maxUses", "methods", "name", "paths", "proxyOnly",
  "renewable", "renewals", "revokeReason", "revokedAt", "rule", "scope", "secret", "state", "uses",
].sort();

/** Every stderr seen, to check at the end that no value ever leaked there. */
const stderrSeen: string[] = [];

async function cli(args: string[], opts: Parameters<typeof runCli>[1] = {}): Promise<CliResult> {
  const r = await runCli(args, opts);
  stderrSeen.push(r.stderr);
  return r;
}

async function seed(home: string): Promise<void> {
  await seedHome(home, POLICY, [
    { name: "github-token", value: CANARY, kind: "pat" },
    { name: "awkward", value: AWKWARD },
    { name: "plain", value: `${CANARY}-plain` },
  ]);
}

function json<T = any>(r: CliResult): T {
  assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

async function liveLeases(home: string, agent?: string): Promise<any[]> {
  return json(await cli(["leases", "--live", "--json", ...(agent ? ["--agent", agent] : [])], { home }));
}

const GH = ["github-token", "--agent", "claude", "--domain", "api.github.com"];

describe("lessor lease (embedded)", () => {
  let home: string;
  before(async () => {
    home = await cliHome();
    await seed(home);
  });

  test("prints only the value, with no trailing newline when stdout is a pipe, and audits the grant and the access", async () => {
    const r = await cli(["lease", ...GH], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, CANARY);
    // Only the lease's id and lifetime on stderr (the print is the lease's one use).
    assert.match(r.stderr, /^lessor: lease [0-9a-f-]{36} expires in (5m|4m5\ds); used up by this print\n$/);
    const events = json<any[]>(await cli(["audit", "query", "--agent", "claude", "--json"], { home }));
    const types = events.map((e) => e.type);
    assert.ok(types.includes("lease_granted") && types.includes("secret_accessed"), types.join());
  });

  test("$(lessor lease ...) in a shell captures exactly the value's bytes", () => {
    const script = `v=$("${process.execPath}" "${BIN}" lease awkward --agent claude --domain api.github.com); printf '%s' "$v"`;
    const r = spawnSync("bash", ["--noprofile", "--norc", "-c", script], { env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", LESSOR_HOME: home, NO_COLOR: "1" } });
    assert.equal(r.status, 0, `status ${r.status} ${r.signal}: ${r.stderr.toString()}|${r.stdout.toString()}`);
    assert.equal(r.stdout.toString("utf8"), AWKWARD);
    assert.match(r.stderr.toString("utf8"), /^lessor: lease [0-9a-f-]{36} expires in /, "stderr carries the lease id, never the value");
  });

  test("on a terminal the value is followed by a newline", () => {
    const cmd = `"${process.execPath}" "${BIN}" lease github-token --agent claude --domain api.github.com`;
    const r = spawnSync("script", ["-qec", cmd, "/dev/null"], { env: { PATH: process.env.PATH ?? "", LESSOR_HOME: home, NO_COLOR: "1" }, input: "" });
    if (r.error) return; // no `script` (util-linux) here
    assert.equal(r.status, 0, r.stdout.toString());
    assert.match(r.stdout.toString("utf8"), new RegExp(`${CANARY}\\r?\\nlessor: lease [0-9a-f-]{36} expires in .*\\r?\\n$`));
  });

  test("--json prints the grant without accessing or printing the value", async () => {
    const r = await cli(["lease", ...GH, "--ttl", "2m", "--max-uses", "2", "--json"], { home });
    const g = json(r);
    assert.deepEqual(Object.keys(g).sort(), LEASE_KEYS);
    assert.equal(g.agent, "claude");
    assert.equal(g.secret, "global/github-token");
    assert.deepEqual(g.domains, ["api.github.com"]);
    assert.equal(g.maxUses, 2);
    assert.equal(g.uses, 0, "the value was not accessed");
    assert.equal(g.state, "live");
    assert.equal(g.rule, "claude-github");
    const ttl = Date.parse(g.expiresAt) - Date.parse(g.issuedAt);
    assert.equal(ttl, 120_000);
    assert.match(g.expiresAt, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    assert.ok(!r.stdout.includes(CANARY) && !r.stderr.includes(CANARY));
    const accessed = json<any[]>(await cli(["audit", "query", "--lease", g.id, "--json"], { home }));
    assert.deepEqual(accessed.map((e) => e.type), ["lease_granted"]);
  });

  test("a lease without --domain works for an any_domain rule, and a wildcard-only lease fails cleanly and is revoked", async () => {
    const r = await cli(["lease", "plain", "--agent", "bot"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `${CANARY}-plain`);
    const w = await cli(["lease", "github-token", "--agent", "claude", "--domain", "*.githubusercontent.com"], { home });
    assert.equal(w.code, 3);
    assert.equal(w.stdout, "");
    assert.match(w.stderr, /^lessor: .*domain/);
    const live = await liveLeases(home, "claude");
    assert.ok(!live.some((l) => l.domains.includes("*.githubusercontent.com")), "the unusable lease was revoked");
  });

  test("denied by policy: exit 3, the reason on stderr, nothing on stdout", async () => {
    const r = await cli(["lease", "github-token", "--agent", "mallory", "--domain", "api.github.com"], { home });
    assert.equal(r.code, 3);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /^lessor: no rule allows agent "mallory" secret "global\/github-token".*denies by default\n$/);
    const d = await cli(["lease", "env:prod/db", "--agent", "claude", "--domain", "db.internal"], { home });
    assert.equal(d.code, 3);
    assert.match(d.stderr, /rule 3 \("nobody-prod"\) denies it/);
    const dom = await cli(["lease", "github-token", "--agent", "claude", "--domain", "evil.example"], { home });
    assert.equal(dom.code, 3);
  });

  test("not found: exit 4 for a secret the policy allows but nobody stored, and for an unknown lease", async () => {
    const r = await cli(["lease", "ghost", "--agent", "claude", "--domain", "api.github.com"], { home });
    assert.equal(r.code, 4, r.stderr);
    assert.match(r.stderr, /^lessor: .*ghost/);
    const n = await cli(["renew", "01940000-0000-7000-8000-000000000000"], { home });
    assert.equal(n.code, 4);
    assert.match(n.stderr, /no lease has id/);
  });

  test("usage mistakes exit 2 with a plain message", async () => {
    const cases: [string[], RegExp][] = [
      [["lease", "github-token", "--domain", "api.github.com"], /--agent/],
      [["lease", ...GH, "--max-uses", "0"], /--max-uses takes a whole number/],
      [["lease", ...GH, "--ttl", "soon"], /duration "soon" is not valid/],
      [["renew", "not-a-uuid"], /lease id is a UUID/],
      [["revoke"], /say what to revoke/],
      [["revoke", "01940000-0000-7000-8000-000000000000", "--agent", "claude"], /exactly one/],
      [["leases", "--limit", "x"], /--limit takes a whole number/],
      // a malformed --domain is a typo, not a policy refusal (which would read as a missing grant)
      [["lease", "github-token", "--agent", "claude", "--domain", "api..github.com"], /^lessor: --domain "api\.\.github\.com": it has an empty label/],
      [["lease", "github-token", "--agent", "claude", "--domain", "*.*.github.com"], /^lessor: --domain "\*\.\*\.github\.com": it may have only one "\*"/],
      [["run", "--agent", "claude", "--domain", "api.github.com/x", "--", "true"], /^lessor: --domain "api\.github\.com\/x":/],
      [["proxy", "--agent", "claude", "--domain", "a b"], /^lessor: --domain "a b":/],
      [["inject", "-i", "-", "--agent", "claude", "--domain", "x_y.com"], /^lessor: --domain "x_y\.com":/],
    ];
    for (const [args, msg] of cases) {
      const r = await cli(args, { home });
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, msg);
      assert.ok(!r.stderr.includes("    at "), "no stack trace");
    }
  });

  test("renew extends a lease (plain and --json)", async () => {
    const g = json(await cli(["lease", ...GH, "--ttl", "1m", "--json"], { home }));
    const r = json(await cli(["renew", g.id, "--json"], { home }));
    assert.deepEqual(Object.keys(r).sort(), LEASE_KEYS);
    assert.equal(r.renewals, 1);
    assert.ok(Date.parse(r.expiresAt) > Date.parse(g.expiresAt) + 8 * 60_000, "renewed to the rule's 10m ttl");
    const p = await cli(["renew", g.id], { home });
    assert.equal(p.code, 0, p.stderr);
    assert.match(p.stdout, new RegExp(`^renewed lease ${g.id} for agent claude, secret global/github-token: live, expires .* \\(in \\d+m\\d*s?\\), 0/5 uses, domains api.github.com\\n$`));
  });

  test("revoke one lease, then an agent's leases; leases --live reflects it", async () => {
    const a = json(await cli(["lease", ...GH, "--json"], { home }));
    const r = await cli(["revoke", a.id, "--reason", "done"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `revoked lease ${a.id}\n`);
    assert.ok(!(await liveLeases(home)).some((l) => l.id === a.id));
    const again = json(await cli(["revoke", a.id, "--json"], { home }));
    assert.deepEqual(again, { revoked: 0 });
    const unknown = await cli(["revoke", "01940000-0000-7000-8000-000000000000"], { home });
    assert.equal(unknown.code, 4);

    const had = (await liveLeases(home, "bot")).length;
    json(await cli(["lease", "plain", "--agent", "bot", "--json"], { home }));
    json(await cli(["lease", "plain", "--agent", "bot", "--json"], { home }));
    assert.equal((await liveLeases(home, "bot")).length, had + 2);
    // Used up but unexpired (a printed lease is used up by the print): revoked too.
    const spent = json<any[]>(await cli(["leases", "--json", "--agent", "bot"], { home })).filter((l) => l.state === "exhausted").length;
    const byAgent = json(await cli(["revoke", "--agent", "bot", "--json"], { home }));
    assert.deepEqual(byAgent, { revoked: had + 2 + spent });
    assert.equal((await liveLeases(home, "bot")).length, 0);
    const left = json<any[]>(await cli(["leases", "--json", "--agent", "bot"], { home }));
    assert.deepEqual(left.filter((l) => l.state === "live" || l.state === "exhausted"), []);
    const plain = await cli(["revoke", "--agent", "bot"], { home });
    assert.equal(plain.stdout, "revoked 0 leases of agent bot\n");
  });

  test("leases lists with a table, filters, and a stable JSON shape", async () => {
    const g = json(await cli(["lease", ...GH, "--json"], { home }));
    const t = await cli(["leases", "--agent", "claude"], { home });
    assert.equal(t.code, 0, t.stderr);
    const lines = t.stdout.trimEnd().split("\n");
    assert.match(lines[0]!, /^ID\s+AGENT\s+SECRET\s+STATE\s+EXPIRES\s+USES\s+DOMAINS$/);
    assert.ok(lines.some((l) => l.startsWith(g.id) && /live/.test(l) && /api\.github\.com/.test(l)));
    assert.ok(lines.some((l) => /revoked/.test(l)), "revoked leases are listed without --live");
    const all = json<any[]>(await cli(["leases", "--json"], { home }));
    for (const l of all) assert.deepEqual(Object.keys(l).sort(), LEASE_KEYS);
    const live = await liveLeases(home);
    assert.ok(live.length > 0 && live.every((l) => l.state === "live"));
    const one = json<any[]>(await cli(["leases", "--json", "--limit", "1"], { home }));
    assert.equal(one.length, 1);
    const bySecret = json<any[]>(await cli(["leases", "--json", "--secret", "plain"], { home }));
    assert.ok(bySecret.length > 0 && bySecret.every((l) => l.secret === "global/plain"));
    const none = await cli(["leases", "--agent", "nobody"], { home });
    assert.equal(none.code, 0);
    assert.equal(none.stdout, "");
    assert.match(none.stderr, /no leases/);
  });

  test("killswitch and revoke --all refuse without --yes when stdin is not a terminal, and revoke nothing", async () => {
    json(await cli(["lease", ...GH, "--json"], { home }));
    const before = (await liveLeases(home)).length;
    assert.ok(before > 0);
    for (const args of [["killswitch"], ["revoke", "--all"]]) {
      const r = await cli(args, { home, input: "y\n" });
      assert.equal(r.code, 2, r.stderr);
      assert.equal(r.stdout, "");
      assert.match(r.stderr, /pass --yes/);
    }
    assert.equal((await liveLeases(home)).length, before);
    const events = json<any[]>(await cli(["audit", "query", "--type", "killswitch", "--json"], { home }));
    assert.equal(events.length, 0);
  });

  test("killswitch on a terminal asks first: no keeps the leases, yes revokes them", async () => {
    const ask = (answer: string) =>
      spawnSync("script", ["-qec", `"${process.execPath}" "${BIN}" killswitch`, "/dev/null"], {
        env: { PATH: process.env.PATH ?? "", LESSOR_HOME: home, NO_COLOR: "1" },
        input: answer,
      });
    const probe = ask("n\n");
    if (probe.error) return; // no `script` (util-linux) here
    assert.equal(probe.status, 1, probe.stdout.toString());
    assert.match(probe.stdout.toString(), /Revoke all \d+ live leases? now\? \[y\/N\]/);
    assert.match(probe.stdout.toString(), /nothing was revoked/);
    assert.ok((await liveLeases(home)).length > 0);
    const yes = ask("y\n");
    assert.equal(yes.status, 0, yes.stdout.toString());
    assert.match(yes.stdout.toString(), /killswitch: revoked \d+ leases?/);
    assert.equal((await liveLeases(home)).length, 0);
    // The killswitch is a lockout: lift it for the tests that follow.
    assert.equal((await cli(["killswitch", "--release"], { home })).code, 0);
  });

  test("killswitch --yes and revoke --all --yes revoke every live lease", async () => {
    json(await cli(["lease", ...GH, "--json"], { home }));
    json(await cli(["lease", "plain", "--agent", "bot", "--json"], { home }));
    const r = await cli(["killswitch", "--yes", "--reason", "test", "--json"], { home });
    assert.deepEqual(json(r), { revoked: 2 });
    assert.deepEqual(await liveLeases(home), []);
    const ev = json<any[]>(await cli(["audit", "query", "--type", "killswitch", "--json"], { home }));
    assert.equal(ev.at(-1).reason, "test");
    assert.equal((await cli(["lease", ...GH, "--json"], { home })).code, 3, "the killswitch refuses grants until released");
    assert.deepEqual(json(await cli(["killswitch", "--release", "--json"], { home })), { released: true });
    json(await cli(["lease", ...GH, "--json"], { home }));
    const all = await cli(["revoke", "--all", "--yes"], { home });
    assert.equal(all.code, 0, all.stderr);
    assert.equal(all.stdout, "revoked 1 lease\n");
    assert.deepEqual(await liveLeases(home), []);
    const plain = await cli(["killswitch", "--yes"], { home });
    assert.equal(plain.stdout, "killswitch: revoked 0 leases\n");
    assert.equal((await cli(["killswitch", "--release"], { home })).code, 0);
  });

  test("unavailable: a damaged database exits 5 with what to do", async () => {
    const broken = await cliHome();
    writeFileSync(join(broken, "lessor.db"), randomBytes(8192));
    rmSync(join(broken, "lessor.db-wal"), { force: true });
    rmSync(join(broken, "lessor.db-shm"), { force: true });
    const r = await cli(["lease", ...GH], { home: broken });
    assert.equal(r.code, 5, r.stderr);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /^lessor: could not open the vault database .*restore it from a backup\n$/);
    const gone = join(mkdtempSync(join(tmpdir(), "lessor-nohome-")), "missing");
    const m = await cli(["leases"], { home: gone });
    assert.notEqual(m.code, 0);
    assert.match(m.stderr, /run lessor init/);
  });

  test("every command has --help with examples", async () => {
    for (const c of ["lease", "renew", "revoke", "killswitch", "leases"]) {
      const r = await cli([c, "--help"]);
      assert.equal(r.code, 0);
      assert.match(r.stdout, /\nExamples:\n( {2}.*lessor .*\n)+/, c);
      assert.doesNotMatch(r.stdout, /default: \[\]/);
    }
  });

  after(() => {
    for (const e of stderrSeen) assert.ok(!e.includes(CANARY), "a secret value reached stderr");
  });
});

describe("lessor lease (daemon)", () => {
  const d = serveInSuite(POLICY, seed);

  test("lease, --json, leases, revoke and killswitch go through the daemon", async () => {
    const home = d().home;
    const v = await cli(["lease", ...GH, "--max-uses", "5"], { home }); // uses left: it stays live
    assert.equal(v.code, 0, v.stderr);
    assert.equal(v.stdout, CANARY);
    const g = json(await cli(["lease", ...GH, "--json"], { home }));
    assert.deepEqual(Object.keys(g).sort(), LEASE_KEYS);
    assert.ok(!JSON.stringify(g).includes(CANARY));
    const live = await liveLeases(home);
    assert.equal(live.length, 2);
    const byDaemon = json<any[]>(await cli(["audit", "query", "--lease", g.id, "--json"], { home }));
    assert.equal(byDaemon[0].transport, "uds", "the call went through the daemon's socket");
    assert.deepEqual(json(await cli(["revoke", g.id, "--json"], { home })), { revoked: 1 });
    const denied = await cli(["lease", "github-token", "--agent", "mallory", "--domain", "api.github.com"], { home });
    assert.equal(denied.code, 3);
    const ks = await cli(["killswitch"], { home });
    assert.equal(ks.code, 2);
    assert.equal((await liveLeases(home)).length, 1);
    assert.deepEqual(json(await cli(["killswitch", "--yes", "--json"], { home })), { revoked: 1 });
    assert.deepEqual(await liveLeases(home), []);
    const renewGone = await cli(["renew", g.id], { home });
    assert.equal(renewGone.code, 3);
    assert.match(renewGone.stderr, /revoked/);
    assert.ok(!d().stderr().includes(CANARY), "no value in the daemon's log");
  });
});
