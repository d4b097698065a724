/** `lessor inject`, end to end: the built CLI as a child process, in embedded mode and against a daemon. */
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { cliHome, runCli, seedHome } from "./cli-harness.js";
import { serveInSuite } from "./daemon-harness.js";
import { openVault } from "../src/config/open-vault.js";

const tmp = mkdtempSync(join(tmpdir(), "lessor-inject-test-"));
process.on("exit", () => rmSync(tmp, { recursive: true, force: true }));

const POLICY = `
[[rule]]
name = "deny-forbidden"
effect = "deny"
agents = ["*"]
secrets = ["forbidden"]

[[rule]]
name = "renderers"
effect = "allow"
agents = ["renderer*"]
secrets = ["*", "*/*"]
any_domain = true
`;

const V = {
  token: `tok_${randomBytes(10).toString("hex")}`,
  password: `pw-${randomBytes(8).toString("hex")}`,
  prod: `prod-${randomBytes(6).toString("hex")}`,
};

async function seed(home: string): Promise<void> {
  await seedHome(home, POLICY, [
    { name: "api-token", value: V.token },
    { name: "creds", value: JSON.stringify({ user: "svc", password: V.password, nested: { port: 5432 } }) },
    { scope: "env:prod", name: "API_KEY", value: V.prod },
    { name: "forbidden", value: "forbidden-value" },
  ]);
}

const TEMPLATE = [
  "# config rendered by lessor inject",
  "token: $S:api-token",
  'url: "postgres://app:{{ lessor://global/creds#password }}@db/app"',
  "user: $S:creds/user",
  "port: lessor://global/creds#nested.port",
  "prod: $S::prod/API_KEY and $secret://prod/API_KEY",
  "plain text stays: $HOME, lessor, $S",
  "",
].join("\n");

const RENDERED = [
  "# config rendered by lessor inject",
  `token: ${V.token}`,
  `url: "postgres://app:${V.password}@db/app"`,
  "user: svc",
  "port: 5432",
  `prod: ${V.prod} and ${V.prod}`,
  "plain text stays: $HOME, lessor, $S",
  "",
].join("\n");

function file(name: string, text: string, mode = 0o644): string {
  const p = join(tmp, name);
  writeFileSync(p, text, { mode });
  return p;
}

async function leaseStates(home: string, agent: string): Promise<string[][]> {
  const r = await runCli(["leases", "--agent", agent, "--json"], { home });
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { secret: string; state: string }[]).map((l) => [l.secret, l.state]).sort();
}

describe("lessor inject (embedded vault)", () => {
  let home: string;
  let tmpl: string;
  before(async () => {
    home = await cliHome();
    await seed(home);
    tmpl = file("config.tmpl", TEMPLATE);
  });

  test("--help shows usage and examples", async () => {
    const help = await runCli(["inject", "--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Usage: lessor inject -i TEMPLATE \[-o FILE\] --agent A/);
    assert.match(help.stdout, /Examples:\n {2}lessor inject -i config\.yml\.tmpl -o config\.yml --agent deployer/);
  });

  test("a template without references is copied without opening the vault's leases", async () => {
    const r = await runCli(["inject", "-i", file("plain.tmpl", "no refs here: $HOME\n"), "--agent", "renderer-plain"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "no refs here: $HOME\n");
    assert.deepEqual(await leaseStates(home, "renderer-plain"), []);
  });

  test("renders every reference form to stdout; one lease per secret, revoked after", async () => {
    const r = await runCli(["inject", "-i", tmpl, "--agent", "renderer-stdout"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, RENDERED);
    assert.equal(r.stderr, "");
    assert.deepEqual(await leaseStates(home, "renderer-stdout"), [
      ["env:prod/API_KEY", "revoked"],
      ["global/api-token", "revoked"],
      ["global/creds", "revoked"],
    ]);
  });

  test("reads the template from stdin with -i -", async () => {
    const r = await runCli(["inject", "-i", "-", "--agent", "renderer-stdin"], { home, input: "A=$S:api-token\n" });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `A=${V.token}\n`);
  });

  test("-o writes a 0600 file atomically; a wider existing file is replaced and the user told", async () => {
    const out = join(tmp, "out", "config.yml");
    const r0 = await runCli(["inject", "-i", tmpl, "-o", out, "--agent", "renderer-file"], { home });
    assert.equal(r0.code, 2, "the directory does not exist");
    assert.match(r0.stderr, /cannot write .*config\.yml \(ENOENT\)/);

    const fresh = join(tmp, "fresh.yml");
    const r1 = await runCli(["inject", "-i", tmpl, "-o", fresh, "--agent", "renderer-file"], { home });
    assert.equal(r1.code, 0, r1.stderr);
    assert.equal(r1.stdout, "");
    assert.equal(r1.stderr, "");
    assert.equal(statSync(fresh).mode & 0o777, 0o600);
    assert.equal(readFileSync(fresh, "utf8"), RENDERED);

    const wide = file("wide.yml", "old content\n", 0o644);
    const r2 = await runCli(["inject", "-i", tmpl, "-o", wide, "--agent", "renderer-file"], { home });
    assert.equal(r2.code, 0, r2.stderr);
    assert.match(r2.stderr, /wide\.yml had mode 0644; it was replaced by a file with mode 0600/);
    assert.equal(statSync(wide).mode & 0o777, 0o600);
    assert.equal(readFileSync(wide, "utf8"), RENDERED);
  });

  test("a denied reference exits 3 naming its line and column, and writes nothing", async () => {
    const t = file("denied.tmpl", "first: $S:api-token\n  second: $S:forbidden\n");
    const out = join(tmp, "denied.out");
    const r = await runCli(["inject", "-i", t, "-o", out, "--agent", "renderer-deny"], { home });
    assert.equal(r.code, 3);
    assert.match(r.stderr, /denied\.tmpl:2:11 refers to secret global\/forbidden, and no lease was granted to agent "renderer-deny": rule 1 \("deny-forbidden"\) denies it/);
    assert.match(r.stderr, /Nothing was written\.\n$/);
    assert.ok(!existsSync(out));
    assert.ok(!r.stderr.includes(V.token));
    // The lease taken for line 1 was revoked.
    assert.deepEqual(await leaseStates(home, "renderer-deny"), [["global/api-token", "revoked"]]);

    const toStdout = await runCli(["inject", "-i", t, "--agent", "renderer-deny"], { home });
    assert.equal(toStdout.code, 3);
    assert.equal(toStdout.stdout, "", "nothing on stdout either");
  });

  test("an unknown secret exits 4, a malformed reference or missing field exits 2, each with its position", async () => {
    const unknown = await runCli(["inject", "-i", file("unknown.tmpl", "x\ny = lessor://global/nope\n"), "--agent", "renderer-err"], { home });
    assert.equal(unknown.code, 4);
    assert.match(unknown.stderr, /unknown\.tmpl:2:5 refers to secret global\/nope/);
    assert.equal(unknown.stdout, "");

    const malformed = await runCli(["inject", "-i", file("malformed.tmpl", "ok\n\nkey: lessor://Global/x\n"), "--agent", "renderer-err"], { home });
    assert.equal(malformed.code, 2);
    assert.match(malformed.stderr, /malformed\.tmpl: reference .* at line 3, column 15: a scope is written in lower case/);

    const field = await runCli(["inject", "-i", file("field.tmpl", "a: $S:creds/missing\n"), "--agent", "renderer-err"], { home });
    assert.equal(field.code, 2);
    assert.match(field.stderr, /field\.tmpl:1:4: field "missing" is not in the secret's value/);
    assert.ok(!field.stderr.includes(V.password));
  });
});

describe("lessor inject (daemon mode)", () => {
  const daemon = serveInSuite(POLICY, seed);

  test("renders through the daemon and revokes the leases", async () => {
    const { home } = daemon();
    const out = join(tmp, "daemon.yml");
    const r = await runCli(["inject", "-i", file("d.tmpl", TEMPLATE), "-o", out, "--agent", "renderer-daemon"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(readFileSync(out, "utf8"), RENDERED);
    assert.equal(statSync(out).mode & 0o777, 0o600);
    assert.deepEqual(await leaseStates(home, "renderer-daemon"), [
      ["env:prod/API_KEY", "revoked"],
      ["global/api-token", "revoked"],
      ["global/creds", "revoked"],
    ]);
    await daemon().stop();
    // The leases went through the daemon (Unix socket), not an embedded vault.
    const vault = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      const events = await vault.admin().auditQuery({ agent: "renderer-daemon", types: ["lease_granted", "secret_accessed", "lease_revoked"] });
      assert.equal(events.length, 9);
      assert.ok(events.every((e) => e.transport === "uds"));
    } finally {
      await vault.close();
    }
  });
});
