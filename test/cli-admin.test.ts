/**
 * `lessor audit`, `policy`, `token`, `status` and `completion`, run as the built CLI in child
 * processes, against the embedded vault and against a running daemon.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { LessorClient } from "../src/client/index.js";
import { BIN, cliHome, runCli, seedHome, type CliResult } from "./cli-harness.js";
import { serveInSuite } from "./daemon-harness.js";

const CANARY = `canary-${randomBytes(12).toString("hex")}`;

const POLICY = `[defaults]
ttl = "10m"

[[rule]]
name = "claude-github"
effect = "allow"
agents = ["claude"]
secrets = ["github-token"]
domains = ["api.github.com"]
max_uses = 5
methods = ["GET"]
# the CLI's lease prints the value: these tests take the value as the owner
reveal = true

[[rule]]
name = "nobody-prod"
effect = "deny"
agents = ["*"]
secrets = ["env:prod/*"]
`;

const GH = ["github-token", "--agent", "claude", "--domain", "api.github.com"];
const EVENT_KEYS = ["actorId", "actorRole", "agent", "detail", "domain", "hash", "id", "keyId", "leaseId", "outcome", "prevHash", "reason", "secret", "seq", "time", "timeIso", "transport", "type"];
const TOKEN_KEYS = ["actFor", "agent", "createdAt", "createdBy", "expiresAt", "id", "name", "revokedAt", "role", "state"];

const outputs: string[] = [];

async function cli(args: string[], opts: Parameters<typeof runCli>[1] = {}): Promise<CliResult> {
  const r = await runCli(args, opts);
  outputs.push(r.stderr);
  if (args[0] === "audit" || args.includes("--json")) outputs.push(r.stdout);
  return r;
}

function json<T = any>(r: CliResult): T {
  assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

async function seed(home: string): Promise<void> {
  await seedHome(home, POLICY, [{ name: "github-token", value: CANARY }]);
}

describe("lessor audit", () => {
  let home: string;
  before(async () => {
    home = await cliHome();
    await seed(home);
    for (let i = 0; i < 3; i++) assert.equal((await cli(["lease", ...GH], { home })).code, 0);
    assert.equal((await cli(["lease", "github-token", "--agent", "mallory", "--domain", "api.github.com"], { home })).code, 3);
  });

  test("tail prints the newest events oldest first (plain and --json)", async () => {
    const r = await cli(["audit", "tail", "-n", "3"], { home });
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split("\n");
    assert.equal(lines.length, 4);
    assert.match(lines[0]!, /^SEQ\s+TIME\s+TYPE\s+OUTCOME\s+ACTOR\s+AGENT\s+SECRET\s+LEASE\s+REASON$/);
    assert.match(lines[3]!, /access_denied\s+denied\s+uid:\d+\s+mallory\s+global\/github-token/);
    const events = json<any[]>(await cli(["audit", "tail", "-n", "3", "--json"], { home }));
    assert.equal(events.length, 3);
    for (const e of events) assert.deepEqual(Object.keys(e).sort(), EVENT_KEYS);
    assert.deepEqual(events.map((e) => e.seq), [events[0].seq, events[0].seq + 1, events[0].seq + 2]);
    assert.equal(events[2].type, "access_denied");
    assert.equal(new Date(events[2].time).toISOString(), events[2].timeIso);
    const bad = await cli(["audit", "tail", "-n", "0"], { home });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /-n takes a whole number/);
  });

  test("query filters by agent, secret, type, time, lease and limit", async () => {
    const all = json<any[]>(await cli(["audit", "query", "--json"], { home }));
    assert.ok(all.length >= 8);
    const claude = json<any[]>(await cli(["audit", "query", "--agent", "claude", "--json"], { home }));
    assert.ok(claude.length >= 6 && claude.every((e) => e.agent === "claude"));
    const types = json<any[]>(await cli(["audit", "query", "--type", "access_denied,secret_stored", "--json"], { home }));
    assert.deepEqual([...new Set(types.map((e) => e.type))].sort(), ["access_denied", "secret_stored"]);
    const repeated = json<any[]>(await cli(["audit", "query", "--type", "lease_granted", "--type", "secret_accessed", "--json"], { home }));
    assert.equal(repeated.length, 6);
    const bySecret = json<any[]>(await cli(["audit", "query", "--secret", "github-token", "--type", "secret_stored", "--json"], { home }));
    assert.equal(bySecret.length, 1);
    assert.equal(bySecret[0].secret, "global/github-token");
    assert.equal(json<any[]>(await cli(["audit", "query", "--since", "1h", "--json"], { home })).length, all.length);
    assert.equal(json<any[]>(await cli(["audit", "query", "--until", "1h", "--json"], { home })).length, 0);
    assert.equal(json<any[]>(await cli(["audit", "query", "--since", "2000-01-01", "--until", "2000-01-02T00:00:00Z", "--json"], { home })).length, 0);
    const lease = claude.find((e) => e.type === "lease_granted").leaseId as string;
    const byLease = json<any[]>(await cli(["audit", "query", "--lease", lease, "--json"], { home }));
    assert.deepEqual(byLease.map((e) => e.type), ["lease_granted", "secret_accessed"]);
    const newest = json<any[]>(await cli(["audit", "query", "--limit", "2", "--desc", "--json"], { home }));
    assert.deepEqual(newest.map((e) => e.seq), [all.at(-1).seq, all.at(-1).seq - 1]);
    const plain = await cli(["audit", "query", "--agent", "mallory"], { home });
    assert.equal(plain.code, 0);
    assert.equal(plain.stdout.trimEnd().split("\n").length, 2);
    const none = await cli(["audit", "query", "--agent", "nobody"], { home });
    assert.equal(none.stdout, "");
    assert.match(none.stderr, /no events match/);
  });

  test("query rejects unknown types and unreadable times with exit 2", async () => {
    const t = await cli(["audit", "query", "--type", "lease_grant"], { home });
    assert.equal(t.code, 2);
    assert.match(t.stderr, /unknown audit event type "lease_grant"; use one of: lease_granted,/);
    const s = await cli(["audit", "query", "--since", "yesterday"], { home });
    assert.equal(s.code, 2);
    assert.match(s.stderr, /--since "yesterday" is not a time/);
  });

  test("tail --follow prints new events as they happen and exits 0 on SIGINT", async () => {
    const child = spawn(process.execPath, [BIN, "audit", "tail", "-n", "1", "--follow"], {
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", LESSOR_HOME: home, NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    const waitFor = async (re: RegExp): Promise<void> => {
      const end = Date.now() + 10_000;
      while (!re.test(out) && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      assert.match(out, re);
    };
    try {
      await waitFor(/^SEQ/);
      const marker = `follow-${randomBytes(4).toString("hex")}`;
      assert.equal((await cli(["revoke", "--agent", "claude", "--reason", marker], { home })).code, 0);
      await waitFor(new RegExp(`lease_revoked.*${marker}`));
      child.kill("SIGINT");
      assert.equal(await exited, 0);
    } finally {
      child.kill("SIGKILL");
    }
  });

  test("verify exits 0 on an intact chain and 1 after the audit table is tampered with, naming the event", async () => {
    const ok = await cli(["audit", "verify"], { home });
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /^audit trail verified: \d+ events, head at event \d+, checkpoint matches\n$/);
    const okJson = json(await cli(["audit", "verify", "--json"], { home }));
    assert.equal(okJson.ok, true);
    assert.ok(okJson.events >= 8 && okJson.headSeq === okJson.events);

    const db = new Database(join(home, "lessor.db"));
    try {
      db.prepare("UPDATE audit SET reason = 'nothing to see' WHERE seq = 3").run();
    } finally {
      db.close();
    }
    const bad = await cli(["audit", "verify"], { home });
    assert.equal(bad.code, 1);
    assert.match(bad.stdout, /^audit trail does NOT verify: event 3 was altered: its fields do not match its hash\nfirst bad event: 3 \(id [0-9a-f-]{36}\)\n/);
    assert.match(bad.stdout, /nothing to see/);
    const r = await cli(["audit", "verify", "--json"], { home });
    assert.equal(r.code, 1);
    const j = JSON.parse(r.stdout);
    assert.equal(j.ok, false);
    assert.equal(j.firstBad.seq, 3);
    assert.equal(j.event.seq, 3);
    assert.match(j.problem, /altered/);
  });

  test("every audit command has --help with examples", async () => {
    for (const c of [["audit"], ["audit", "tail"], ["audit", "query"], ["audit", "verify"]]) {
      const r = await cli([...c, "--help"]);
      assert.equal(r.code, 0);
      assert.match(r.stdout, /\nExamples:\n( {2}.*lessor .*\n)+/, c.join(" "));
    }
  });
});

describe("lessor policy", () => {
  let home: string;
  before(async () => {
    home = await cliHome();
    await seed(home);
  });

  test("check summarises the home's policy without opening the vault (plain and --json)", async () => {
    const r = await cli(["policy", "check"], { home });
    assert.equal(r.code, 0, r.stderr);
    const digest = createHash("sha256").update(POLICY).digest("hex");
    assert.equal(r.stdout.split("\n")[0], `${join(home, "policy.toml")}: valid, 2 rules, digest ${digest}`);
    assert.match(r.stdout, /\n {2}1\. claude-github: allow agents claude secrets github-token domains api\.github\.com methods GET ttl 10m max_ttl 1d max_uses 5 renewable\n/);
    assert.match(r.stdout, /\n {2}2\. nobody-prod: deny agents \* secrets env:prod\/\*\n/);
    const j = json(await cli(["policy", "check", "--json"], { home }));
    assert.equal(j.ok, true);
    assert.equal(j.digest, digest);
    assert.deepEqual(j.rules[0], {
      index: 1, name: "claude-github", effect: "allow", agents: ["claude"], secrets: ["github-token"], domains: ["api.github.com"], anyDomain: false,
      methods: ["GET"], paths: null, reveal: true, ttl: "10m", maxTtl: "1d", maxUses: 5, renewable: true, maxRenewals: null,
    });
    const file = join(mkdtempSync(join(tmpdir(), "lessor-pol-")), "p.toml");
    writeFileSync(file, POLICY);
    const noVault = await cli(["policy", "check", file], { home: join(tmpdir(), "no-such-lessor-home") });
    assert.equal(noVault.code, 0, noVault.stderr);
    assert.match(noVault.stdout, /valid, 2 rules/);
  });

  test("check of an invalid policy exits 2 naming the file, rule and field", async () => {
    const file = join(mkdtempSync(join(tmpdir(), "lessor-pol-")), "bad.toml");
    writeFileSync(file, '[[rule]]\nname = "gh"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["x"]\ndomians = ["api.github.com"]\n');
    const r = await cli(["policy", "check", file]);
    assert.equal(r.code, 2);
    assert.equal(r.stdout, "");
    assert.equal(r.stderr, `lessor: ${file}: rule 1 ("gh"): unknown field "domians" (did you mean "domains"?); expected one of: name, effect, agents, secrets, domains, any_domain, methods, paths, reveal, approval, ttl, max_ttl, max_uses, renewable, max_renewals\n`);
    const j = await cli(["policy", "check", file, "--json"]);
    assert.equal(j.code, 2);
    assert.deepEqual(Object.keys(JSON.parse(j.stdout)).sort(), ["error", "ok", "source"]);
    assert.equal(JSON.parse(j.stdout).ok, false);
    const missing = await cli(["policy", "check", join(tmpdir(), "no-such-policy.toml")]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /does not exist/);
  });

  test("explain says which rule decides and every step (plain and --json)", async () => {
    const allow = await cli(["policy", "explain", "--agent", "claude", "--secret", "github-token", "--domain", "api.github.com"], { home });
    assert.equal(allow.code, 0, allow.stderr);
    assert.match(allow.stdout, /^allow: rule 1 \("claude-github"\) allows it\n {2}rule 1 "claude-github" \(allow\): matches: agent, secret and every requested domain match\n {2}answered by policy version #1 \(digest [0-9a-f]{12}…, loaded \S+Z\)\n$/);
    const deny = json(await cli(["policy", "explain", "--agent", "bob", "--secret", "env:prod/db", "--json"], { home }));
    assert.deepEqual(Object.keys(deny).sort(), ["allow", "policy", "reason", "rule", "steps"]);
    assert.equal(deny.allow, false);
    assert.equal(deny.rule, "nobody-prod");
    assert.deepEqual(deny.steps.map((s: any) => [s.rule, s.matched]), [["claude-github", false], ["nobody-prod", true]]);
    const none = await cli(["policy", "explain", "--agent", "claude", "--secret", "github-token", "--domain", "evil.example"], { home });
    assert.match(none.stdout, /^deny: no rule allows agent "claude" secret "global\/github-token" for domain "evil\.example"/);
    assert.match(none.stdout, /domain "evil\.example" is not in its domains/);
    const usage = await cli(["policy", "explain", "--agent", "claude"], { home });
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /--secret/);
  });

  test("reload prints the rule count and digest; an invalid policy exits 2", async () => {
    const digest = createHash("sha256").update(POLICY).digest("hex");
    const r = await cli(["policy", "reload"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `policy reloaded (embedded vault): 2 rules, digest ${digest}\n`);
    assert.deepEqual(json(await cli(["policy", "reload", "--json"], { home })), { mode: "embedded", rules: 2, digest });
    const other = await cliHome();
    writeFileSync(join(other, "policy.toml"), "[[rule]]\nname = 1\n");
    const bad = await cli(["policy", "reload"], { home: other });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /policy\.toml: rule 1: field "name"/);
  });
});

describe("lessor token and status (embedded)", () => {
  let home: string;
  before(async () => {
    home = await cliHome();
    await seed(home);
  });

  test("token create prints the token once on stdout with a note on stderr; list never shows it; revoke works", async () => {
    const r = await cli(["token", "create", "ci", "--role", "agent", "--agent", "ci", "--ttl", "30d"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^lsr_[0-9a-f]{16}_[A-Za-z0-9_-]{43}\n$/);
    const token = r.stdout.trim();
    const id = token.split("_")[1]!;
    assert.match(r.stderr, new RegExp(`^lessor: created token ${id} \\(ci, agent\\); it is shown only this once, so store it now\\n$`));
    const j = json(await cli(["token", "create", "orch", "--role", "orchestrator", "--act-for", "claude-*", "--act-for", "ci-*", "--json"], { home }));
    assert.deepEqual(Object.keys(j).sort(), [...TOKEN_KEYS, "token"].sort());
    assert.deepEqual(j.actFor, ["claude-*", "ci-*"]);
    assert.equal(j.expiresAt, null);
    const list = await cli(["token", "list"], { home });
    assert.equal(list.code, 0);
    assert.match(list.stdout, /^ID\s+NAME\s+ROLE\s+FOR\s+STATE\s+CREATED\s+EXPIRES\n/);
    assert.match(list.stdout, new RegExp(`${id}\\s+ci\\s+agent\\s+ci\\s+live`));
    assert.ok(!list.stdout.includes(token.slice(21)) && !list.stdout.includes(j.token.slice(21)));
    const lj = json<any[]>(await cli(["token", "list", "--json"], { home }));
    for (const t of lj) assert.deepEqual(Object.keys(t).sort(), TOKEN_KEYS);
    const ci = lj.find((t) => t.id === id);
    assert.equal(Date.parse(ci.expiresAt) - Date.parse(ci.createdAt), 30 * 86_400_000);
    const rv = await cli(["token", "revoke", id], { home });
    assert.equal(rv.code, 0, rv.stderr);
    assert.equal(rv.stdout, `revoked token ${id}\n`);
    assert.equal(json<any[]>(await cli(["token", "list", "--json"], { home })).find((t) => t.id === id).state, "revoked");
    const again = await cli(["token", "revoke", id], { home });
    assert.equal(again.code, 4);
    assert.match(again.stderr, /no live token has the id/);
  });

  test("token create refuses bad roles and missing bindings with exit 2", async () => {
    const cases: [string[], RegExp][] = [
      [["token", "create", "x", "--role", "root"], /Allowed choices are admin, orchestrator, agent/],
      [["token", "create", "x", "--role", "agent"], /needs --agent/],
      [["token", "create", "x", "--role", "orchestrator"], /needs --act-for/],
      [["token", "create", "x", "--role", "admin", "--agent", "a"], /only for --role agent/],
      [["token", "create", "x y", "--role", "admin"], /token name/],
      [["token", "revoke", "zz"], /16 hex characters/],
    ];
    for (const [args, msg] of cases) {
      const r = await cli(args, { home });
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.equal(r.stdout, "");
      assert.match(r.stderr, msg);
    }
  });

  test("status shows the embedded vault (plain and --json)", async () => {
    const r = await cli(["status"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^mode: +embedded/m);
    assert.match(r.stdout, new RegExp(`^home: +${home}$`, "m"));
    assert.match(r.stdout, /^policy: +.*policy\.toml: 2 rules, digest [0-9a-f]{64}$/m);
    assert.doesNotMatch(r.stdout, /^daemon:/m);
    const j = json(await cli(["status", "--json"], { home }));
    assert.deepEqual(Object.keys(j).sort(), ["auditHead", "cipher", "daemon", "endpoint", "heartbeat", "home", "identity", "keyId", "keyIds", "keySource", "killswitch", "mode", "policy", "store", "version"]);
    assert.equal(j.mode, "embedded");
    assert.equal(j.daemon, null);
    assert.equal(j.store, "sqlite");
    assert.equal(j.identity.role, "admin");
    assert.equal(j.policy.rules, 2);
    assert.match(j.keyId, /^[0-9a-f]{16}$/);
    assert.ok(j.auditHead >= 1);
    const keys = (JSON.parse(readFileSync(join(home, "master.key"), "utf8")) as { keys: string[] }).keys;
    assert.ok(keys.length > 0);
    for (const k of keys) assert.ok(!r.stdout.includes(k) && !JSON.stringify(j).includes(k), "no key material in status");
  });

  test("status: no home exits with the fix; a daemon that never answers exits 5", async () => {
    const missing = await cli(["status"], { home: join(tmpdir(), `no-lessor-home-${randomBytes(4).toString("hex")}`) });
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^lessor: no lessor daemon is running and there is no vault at .*\. If you are an agent, do not create one: ask the operator .* To create a vault of your own, run lessor init/);
    const hung = await cliHome();
    const server: Server = createServer(() => {}); // accepts, never says hello
    await new Promise<void>((r) => server.listen(join(hung, "lessor.sock"), r));
    try {
      const r = await cli(["status"], { home: hung });
      assert.equal(r.code, 5, r.stderr);
      assert.match(r.stderr, /did not finish the handshake within 5000 ms; check that it is healthy/);
    } finally {
      server.close();
    }
  });

  test("token, status and policy commands have --help with examples", async () => {
    for (const c of [["token", "create"], ["token", "list"], ["token", "revoke"], ["status"], ["policy", "check"], ["policy", "explain"], ["policy", "reload"], ["completion"]]) {
      const r = await cli([...c, "--help"]);
      assert.equal(r.code, 0);
      assert.match(r.stdout, /\nExamples:\n( {2}.*lessor .*\n)+/, c.join(" "));
    }
  });
});

describe("lessor token, status and policy reload (daemon)", () => {
  const d = serveInSuite(POLICY, seed);

  test("status reports the daemon's pid, uptime and connections", async () => {
    const j = json(await cli(["status", "--json"], { home: d().home }));
    assert.equal(j.mode, "daemon");
    assert.equal(j.daemon.pid, d().proc.pid);
    assert.equal(j.identity.transport, "uds");
    assert.ok(j.daemon.connections >= 1 && j.daemon.uptimeMs >= 0);
    const p = await cli(["status"], { home: d().home });
    assert.match(p.stdout, new RegExp(`^daemon: +version \\S+, pid ${d().proc.pid}, up \\S+, \\d+ connections?$`, "m"));
  });

  test("a token made with the CLI authenticates to the daemon until it is revoked", async () => {
    const r = await cli(["token", "create", "claude-laptop", "--role", "agent", "--agent", "claude"], { home: d().home });
    assert.equal(r.code, 0, r.stderr);
    const token = r.stdout.trim();
    const c = await LessorClient.connect({ socketPath: d().socket }, { token });
    try {
      assert.equal(c.identity.role, "agent");
      assert.equal(c.identity.agent, "claude");
    } finally {
      await c.close();
    }
    assert.equal((await cli(["token", "revoke", token.split("_")[1]!], { home: d().home })).code, 0);
    await assert.rejects(LessorClient.connect({ socketPath: d().socket }, { token, reconnect: false }), /not valid/);
  });

  test("policy reload makes the daemon use the edited file", async () => {
    const denied = await cli(["lease", "github-token", "--agent", "bob", "--domain", "api.github.com"], { home: d().home });
    assert.equal(denied.code, 3);
    const next = `${POLICY}\n[[rule]]\nname = "bob-github"\neffect = "allow"\nagents = ["bob"]\nsecrets = ["github-token"]\ndomains = ["api.github.com"]\n`;
    writeFileSync(join(d().home, "policy.toml"), next, { mode: 0o600 });
    const r = json(await cli(["policy", "reload", "--json"], { home: d().home }));
    assert.deepEqual(r, { mode: "daemon", rules: 3, digest: createHash("sha256").update(next).digest("hex") });
    const ok = await cli(["lease", "github-token", "--agent", "bob", "--domain", "api.github.com"], { home: d().home });
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout, CANARY);
  });
});

describe("lessor completion", () => {
  /** Top-level command names, read from `lessor --help`. */
  async function topCommands(): Promise<string[]> {
    const r = await cli(["--help"]);
    const section = r.stdout.split(/\nCommands:\n/)[1] ?? "";
    return section
      .split("\n")
      .map((l) => /^ {2}([a-z][\w-]*)/.exec(l)?.[1])
      .filter((x): x is string => x !== undefined);
  }

  test("the bash script is valid, mentions every command, and completes subcommands and options", async () => {
    const names = await topCommands();
    assert.ok(names.length >= 10 && names.includes("lease") && names.includes("completion"), names.join());
    const r = await cli(["completion", "bash"]);
    assert.equal(r.code, 0, r.stderr);
    for (const n of names) assert.match(r.stdout, new RegExp(`\\b${n}\\b`), n);
    const dir = mkdtempSync(join(tmpdir(), "lessor-comp-"));
    try {
      const file = join(dir, "lessor.bash");
      writeFileSync(file, r.stdout);
      assert.equal(spawnSync("bash", ["-n", file]).status, 0);
      const probe = `source ${file}
t() { COMP_WORDS=("$@"); COMP_CWORD=$(( \${#COMP_WORDS[@]} - 1 )); COMPREPLY=(); _lessor; echo "\${COMPREPLY[*]}"; }
t lessor po
t lessor --home /x policy ""
t lessor lease x --agent a --max
t lessor audit tail -n 5 --f
t lessor completion ""
t lessor token create x --role ""`;
      const out = spawnSync("bash", ["--noprofile", "--norc", "-c", probe], { encoding: "utf8" });
      assert.equal(out.status, 0, out.stderr);
      assert.deepEqual(out.stdout.split("\n").slice(0, 6), ["policy", "check explain reload help", "--max-uses", "--follow", "bash zsh fish", "admin orchestrator agent"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("the zsh and fish scripts mention every command (and parse, when the shell is installed)", async () => {
    const names = await topCommands();
    const dir = mkdtempSync(join(tmpdir(), "lessor-comp-"));
    try {
      for (const shell of ["zsh", "fish"]) {
        const r = await cli(["completion", shell]);
        assert.equal(r.code, 0, r.stderr);
        for (const n of names) assert.match(r.stdout, new RegExp(`\\b${n}\\b`), `${shell}: ${n}`);
        const file = join(dir, `lessor.${shell}`);
        writeFileSync(file, r.stdout);
        const check = spawnSync(shell, ["-n", file], { encoding: "utf8" });
        if (check.error) continue; // not installed
        assert.equal(check.status, 0, `${shell} -n: ${check.stderr}`);
      }
      const fish = spawnSync("fish", ["--no-config", "-c", `source ${join(dir, "lessor.fish")}; complete -C 'lessor policy '`], { encoding: "utf8" });
      if (!fish.error) assert.deepEqual(fish.stdout.split("\n").filter(Boolean).map((l) => l.split("\t")[0]).sort(), ["check", "explain", "help", "reload"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("an unknown shell is a usage error", async () => {
    const r = await cli(["completion", "tcsh"]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /Allowed choices are bash, zsh, fish/);
  });
});

after(() => {
  for (const o of outputs) assert.ok(!o.includes(CANARY), "a secret value reached stderr, --json output or audit output");
});
