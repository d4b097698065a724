/**
 * A newcomer who follows README.md, docs/*.md and docs/cli/*.md literally, against fresh lessor homes
 * (LESSOR_HOME in a temporary directory, the built CLI as a child process), and the mistakes such a
 * person makes with the inputs the docs describe: a lessor.toml saved with a byte-order mark, a date
 * that does not exist, a mistyped secret name in an incident query, a [docker] entry without its
 * agent, the wrong LESSOR_MASTER_KEY pasted into a fresh env-keyed vault. test/docs-truth.test.ts
 * checks the docs' structure against the code; test/newcomer-attacks*.test.ts the first passes;
 * nothing here repeats them.
 *
 * Each test states a behaviour the docs promise that this pass found broken, and that now holds.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { cliHome, runCli, seedHome } from "./cli-harness.js";

const DOCKER_BIN = fileURLToPath(new URL("../dist/bin/docker-credential-lessor.cjs", import.meta.url));
const CANARY = "ghp_DOCSLITERAL3canary7Qx2Vb";
const hex = (): string => randomBytes(32).toString("hex");

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function freshDir(): string {
  const d = mkdtempSync(join(tmpdir(), "lessor-docs3-"));
  dirs.push(d);
  return d;
}

const NO_STACK = /\n\s+at .+[:(]\d+/;

describe("docs/cli/admin.md, lessor init --key-source env: the vault is bound to the key it was made with", () => {
  test("after lessor init --key-source env with key K, a write under another LESSOR_MASTER_KEY is refused as not this vault's key, and K still opens it", async () => {
    const home = join(freshDir(), "home");
    const K = hex();
    const W = hex(); // a wrong key: another vault's, a stale CI variable, a mis-paste
    const init = await runCli(["init", "--key-source", "env"], { home, env: { LESSOR_MASTER_KEY: K } });
    assert.equal(init.code, 0, init.stderr);

    // docs/errors.md key_unavailable: "no master key could be loaded, or it does not match this vault".
    // init demanded K (it refuses without LESSOR_MASTER_KEY), so W is not this vault's key.
    const wrong = await runCli(["secret", "set", "db-password"], { home, env: { LESSOR_MASTER_KEY: W }, input: CANARY });
    const right = await runCli(["status"], { home, env: { LESSOR_MASTER_KEY: K } });
    assert.equal(
      wrong.code,
      1,
      `a write under a key the vault was not created with must be refused (key_unavailable, exit 1); it exited ${wrong.code}: ${wrong.stdout}${wrong.stderr}`,
    );
    assert.match(wrong.stderr, /does not match this vault/);
    assert.equal(right.code, 0, `the key the vault was created with must still open it; got exit ${right.code}: ${right.stderr}`);
  });

  test("control: a key file vault refuses another LESSOR_MASTER_KEY once it has data (the check this bypasses exists)", async () => {
    const home = await cliHome();
    await seedHome(home, "", [{ name: "x", value: "v" }]);
    const r = await runCli(["secret", "set", "y"], { home, env: { LESSOR_MASTER_KEY: hex() }, input: "v" });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /does not match this vault/);
  });
});

describe("README.md / docs/cli/admin.md, lessor init on a home whose key file was lost", () => {
  test("with master.key gone, lessor says to put the key back (naming where), and lessor init refuses, writing no new master.key beside the old data", async () => {
    const home = await cliHome();
    await seedHome(home, "", [{ name: "github-token", value: CANARY, kind: "pat" }]);
    const keyFile = join(home, "master.key");
    rmSync(keyFile); // deleted by accident, or the home restored from a backup that left the key out
    const status = await runCli(["status"], { home });
    assert.equal(status.code, 1, status.stderr);
    const init = await runCli(["init"], { home });
    // "a second init changes nothing" (test/cli-basics.test.ts): a home holding a vault sealed under a
    // key it no longer has must not get a fresh key file that can never open it; the way out is the
    // backup of the old key, which the user must now put over the one init made.
    assert.ok(
      !existsSync(keyFile),
      `lessor init wrote a new master.key into a home whose lessor.db is sealed under another key (init exit ${init.code}: ${init.stderr.trim()}); status had said: ${status.stderr.trim()}`,
    );
    assert.doesNotMatch(status.stderr, /run `?lessor init/, "the advice for a vault with data but no key should be to restore the key, not to run lessor init");
    assert.ok(status.stderr.includes(keyFile), `the advice names where the key file goes: ${status.stderr}`);
    assert.match(status.stderr, /LESSOR_MASTER_KEY/);
    assert.equal(init.code, 1, init.stderr);
    assert.match(init.stderr, /already holds a vault/);
    assert.match(init.stderr, /1 secret/, `init names what it found: ${init.stderr}`);
    assert.ok(init.stderr.includes(keyFile), `init says where the key goes back: ${init.stderr}`);
    assert.doesNotMatch(init.stderr, NO_STACK);
  });
});

describe("docs/policy.md and lessor.toml: files saved by an editor that writes a byte-order mark", () => {
  test("control: a policy.toml that starts with a UTF-8 BOM loads (policy check exit 0)", async () => {
    const home = await cliHome();
    const file = join(home, "policy.toml");
    writeFileSync(file, `\uFEFF[[rule]]\nname = "g"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["x"]\ndomains = ["api.example.com"]\n`, { mode: 0o600 });
    const r = await runCli(["policy", "check"], { home });
    assert.equal(r.code, 0, r.stderr);
  });

  test("a lessor.toml that starts with a UTF-8 BOM is read as policy.toml is (the BOM dropped), not refused at line 1, column 1", async () => {
    const home = await cliHome();
    const file = join(home, "lessor.toml");
    writeFileSync(file, `\uFEFF${readFileSync(file, "utf8")}`, { mode: 0o600 });
    const r = await runCli(["secret", "list"], { home });
    assert.doesNotMatch(r.stderr, NO_STACK);
    // Read as policy.toml is read (src/vault/policy/parse.ts drops the BOM).
    assert.equal(r.code, 0, r.stderr);
    assert.ok(
      r.code === 0 || /BOM|byte.order.mark|U\+FEFF|\\uFEFF/i.test(r.stderr),
      `the starter lessor.toml with a BOM in front: exit ${r.code}, and the message does not say what to fix: ${r.stderr}`,
    );
  });
});

describe("docs/cli/admin.md, lessor audit query: filters that cannot match are usage errors, not an empty answer", () => {
  async function homeWithEvents(): Promise<string> {
    const home = await cliHome();
    await seedHome(home, "", [{ name: "github-token", value: CANARY, kind: "pat" }]);
    return home;
  }

  test("control: real dates and a real secret give the events (so the refusals below mean something)", async () => {
    const home = await homeWithEvents();
    const r = await runCli(["audit", "query", "--secret", "github-token", "--since", "2020-02-28", "--json"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as unknown[]).length, 1);
    // and a month that does not exist is refused, as documented
    const bad = await runCli(["audit", "query", "--since", "2025-13-01"], { home });
    assert.equal(bad.code, 2, bad.stderr);
  });

  test("--since 2025-02-30 (a day that does not exist) is a usage error naming the value, not read as 2025-03-02", async () => {
    const home = await homeWithEvents();
    for (const [opt, day] of [
      ["--since", "2025-02-30"],
      ["--until", "2025-02-31"],
      ["--since", "2025-04-31T10:00:00Z"],
    ] as const) {
      const r = await runCli(["audit", "query", opt, day], { home });
      // docs/cli/admin.md: --since/--until take "an ISO date or time"; exit 2 for a bad --since.
      assert.equal(r.code, 2, `${opt} ${day} is not a date, yet the query ran (exit ${r.code}): ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, new RegExp(`${opt} "${day}" is not a time`));
    }
  });

  test("audit query --secret with a name no secret can have (Global/x, 'github token', global/x/y) is refused with exit 2, as lessor leases --secret is; so are a malformed --agent and --lease, and secret list's --scope and --tag", async () => {
    const home = await homeWithEvents();
    for (const bad of ["Global/github-token", "github token", "global/github-token/x"]) {
      const leases = await runCli(["leases", "--secret", bad], { home });
      assert.equal(leases.code, 2, `control: leases --secret ${bad}: ${leases.stderr}`);
      const q = await runCli(["audit", "query", "--secret", bad], { home });
      // An incident responder who mistypes the secret must not read "no events match" as "nothing happened".
      assert.equal(q.code, 2, `audit query --secret ${JSON.stringify(bad)} exited ${q.code} with ${JSON.stringify(q.stdout + q.stderr)}`);
      assert.doesNotMatch(q.stderr, /no events match/);
    }
    // The same for the other filters a responder or an owner types: an agent id, a lease id, a scope, a tag.
    for (const args of [
      ["audit", "query", "--agent", "claude code"],
      ["audit", "query", "--lease", "lease-1"],
      ["leases", "--agent", "claude code"],
      ["secret", "list", "--scope", "Global"],
      ["secret", "list", "--tag", "team alpha"],
    ]) {
      const r = await runCli(args, { home });
      assert.equal(r.code, 2, `${args.join(" ")} exited ${r.code} with ${JSON.stringify(r.stdout + r.stderr)}`);
      assert.match(r.stderr, /not valid|is a UUID|is a word/, `${args.join(" ")}: ${r.stderr}`);
    }
    // and well-formed filters still answer (an empty list is an answer, exit 0)
    for (const args of [
      ["audit", "query", "--agent", "claude", "--secret", "github-token"],
      ["leases", "--agent", "claude"],
      ["secret", "list", "--scope", "env:prod", "--tag", "team-alpha"],
    ]) {
      const r = await runCli(args, { home });
      assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    }
  });
});

describe("docs/cli/credential-helpers.md, docker-credential-lessor", () => {
  test("a [docker] entry without agent, used by the owner (no LESSOR_SOCKET), fails naming the entry and its agent field in lessor.toml (as git-credential names its --agent)", async () => {
    const home = await cliHome();
    await seedHome(
      home,
      `[[rule]]\nname = "reg"\neffect = "allow"\nagents = ["builder"]\nsecrets = ["env:ci/registry"]\ndomains = ["registry.internal"]\n`,
      [{ scope: "env:ci", name: "registry", value: CANARY }],
    );
    const toml = join(home, "lessor.toml");
    // The second line of the docs' own [docker] example: no agent.
    writeFileSync(toml, `${readFileSync(toml, "utf8")}\n[docker]\n"registry.internal:5000" = { secret = "env:ci/registry", username = "robot" }\n`, { mode: 0o600 });

    const git = await runCli(["git-credential", "--secret", "env:ci/registry", "get"], { home, input: "protocol=https\nhost=registry.internal\n\n" });
    assert.match(git.stderr, /--agent/, `control: git-credential says what to add: ${git.stderr}`);

    const r = await runCli(["get"], { home, input: "registry.internal:5000\n", bin: DOCKER_BIN });
    assert.equal(r.code, 1);
    assert.ok(!(r.stdout + r.stderr).includes(CANARY));
    const said = r.stdout + r.stderr;
    // docs: "`agent` may be left out only when the helper connects as an agent (LESSOR_SOCKET)".
    assert.match(said, /\[docker\]|lessor\.toml/, `the message should name the [docker] entry in lessor.toml: ${said}`);
    assert.match(said, /registry\.internal:5000/, `the message should name the registry whose entry lacks agent: ${said}`);
    assert.match(said, /agent = /, `the message should say which field to add: ${said}`);
    assert.doesNotMatch(said, /param "agent"/);
  });
});
