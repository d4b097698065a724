/**
 * Round 4 of "a newcomer follows README.md and docs/ literally", against the built CLI
 * (dist/bin/lessor.cjs) with fresh homes. Each test quotes the sentence of the docs it holds the CLI
 * to. test/docs-truth.test.ts checks the docs' structure (options, keys, codes) against the code,
 * test/docs-literal-3.test.ts and test/newcomer-attacks*.test.ts the earlier passes; nothing here
 * repeats them.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";
import { cliHome, runCli, seedHome } from "./cli-harness.js";
import { grant, tempDir } from "./helpers.js";

const CANARY = "ghp_DOCSLITERAL4canaryZq8Wm3Lp";
const NO_STACK = /\n\s+at .+[:(]\d+/;

/** A temp dir of the test's own, removed when that test ends (helpers.ts's tempDir). */
const freshDir = (): string => tempDir("lessor-docs4-");

/** A loopback listener that counts connections (and closes each at once): "nothing is sent" made checkable. */
async function countingListener(): Promise<{ port: number; count: () => number; server: Server }> {
  let n = 0;
  const server = createServer((s) => {
    n++;
    s.destroy();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const addr = server.address();
  assert.ok(addr && typeof addr === "object");
  return { port: addr.port, count: () => n, server };
}

const POLICY = grant("claude-github", ["claude"], ["github-token"], ["api.github.com"]);

// ═════════════════════ docs/cli.md: LESSOR_TOKEN_FILE / LESSOR_TOKEN ═════════════════════

describe("docs/cli.md and docs/cli/admin.md: an unusable LESSOR_TOKEN* setting exits 2 saying what to change", () => {
  test("control: a LESSOR_TOKEN_FILE with group bits is refused (exit 1) before anything is sent, as docs/cli.md says", async () => {
    const d = freshDir();
    const l = await countingListener();
    try {
      const file = join(d, "token");
      writeFileSync(file, `lsr_0123456789abcdef_${"A".repeat(43)}\n`);
      chmodSync(file, 0o640);
      const r = await runCli(["whoami"], { env: { LESSOR_ADDR: `127.0.0.1:${l.port}`, LESSOR_TOKEN_FILE: file } });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /chmod 600/);
      assert.equal(l.count(), 0, "a connection was made before the token file was refused");
    } finally {
      l.server.close();
    }
  });

  test("control: an empty LESSOR_TOKEN_FILE is an unusable setting: exit 2, nothing sent", async () => {
    const d = freshDir();
    const l = await countingListener();
    try {
      const file = join(d, "token");
      writeFileSync(file, "", { mode: 0o600 });
      const r = await runCli(["whoami"], { env: { LESSOR_ADDR: `127.0.0.1:${l.port}`, LESSOR_TOKEN_FILE: file } });
      assert.equal(r.code, 2, r.stderr);
      assert.equal(l.count(), 0);
    } finally {
      l.server.close();
    }
  });

  test("a token file holding a truncated token (a copy-paste slip), or a LESSOR_TOKEN not shaped as a token, exits 2 (an unusable setting, not a denial), saying what a token looks like, and nothing is sent", async () => {
    // docs/cli/admin.md, exit 2: "unusable LESSOR_SOCKET/LESSOR_ADDR/LESSOR_TOKEN* settings"; exit 3:
    // "denied (a role or policy refused it)". docs/cli.md: "Settings that cannot work … exit 2 saying
    // what to change". No daemon ever saw this token: a script that treats 3 as "the operator revoked
    // me" (and stops retrying, or alerts) is told the wrong thing.
    const d = freshDir();
    const l = await countingListener();
    try {
      const file = join(d, "token");
      writeFileSync(file, "lsr_0123456789abcdef_AAAAAAAA\n", { mode: 0o600 }); // cut short
      const env = { LESSOR_ADDR: `127.0.0.1:${l.port}`, LESSOR_TOKEN_FILE: file };
      const got: Record<string, number | null> = {};
      for (const args of [["whoami"], ["lease", "github-token", "--domain", "api.github.com"]]) {
        const r = await runCli(args, { env });
        assert.doesNotMatch(r.stderr, NO_STACK);
        assert.match(r.stderr, /LESSOR_TOKEN_FILE \(.*\) does not hold one token on one line; a lessor token is lsr_ followed by 16 hex characters/);
        assert.ok(!r.stderr.includes("AAAAAAAA"), "the token is never quoted");
        got[args[0]!] = r.code;
      }
      const inline = await runCli(["whoami"], { env: { LESSOR_ADDR: `127.0.0.1:${l.port}`, LESSOR_TOKEN: "lsr_not-a-token" } });
      assert.match(inline.stderr, /LESSOR_TOKEN does not hold a lessor token; a lessor token is lsr_/);
      assert.ok(!inline.stderr.includes("not-a-token"), "the token is never quoted");
      got["LESSOR_TOKEN"] = inline.code;
      assert.equal(l.count(), 0, "the malformed token was refused locally: nothing reached the listener");
      assert.deepEqual(got, { whoami: 2, lease: 2, LESSOR_TOKEN: 2 }, "a malformed token is an unusable setting (exit 2), not a denial (exit 3)");
    } finally {
      l.server.close();
    }
  });
});

describe("docs/cli.md: a LESSOR_TOKEN_FILE that is not a regular file is an unusable setting (exit 2); one others may read is refused (exit 1)", () => {
  test("a FIFO or a directory as LESSOR_TOKEN_FILE exits 2 at once, nothing sent", async () => {
    const d = freshDir();
    const l = await countingListener();
    try {
      const fifo = join(d, "fifo");
      assert.equal(spawnSync("mkfifo", ["-m", "600", fifo]).status, 0);
      const dir = join(d, "dir");
      mkdirSync(dir, { mode: 0o700 });
      for (const file of [fifo, dir]) {
        const r = await runCli(["whoami"], { env: { LESSOR_ADDR: `127.0.0.1:${l.port}`, LESSOR_TOKEN_FILE: file } });
        assert.equal(r.code, 2, r.stderr);
        assert.match(r.stderr, /is not a regular file|cannot be opened/);
      }
      assert.equal(l.count(), 0);
    } finally {
      l.server.close();
    }
  });
});

describe("docs/policy.md, approvals: an id that names no open approval is refused as invalid_request (exit 2)", () => {
  test("lessor approve and lessor deny of an unknown approval id exit 2 saying no open approval has it", async () => {
    const home = await cliHome();
    for (const cmd of ["approve", "deny"]) {
      const r = await runCli([cmd, "01890a5d-ac96-774b-bcce-b302099a8057"], { home });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /no open approval has id 01890a5d-ac96-774b-bcce-b302099a8057/);
    }
  });
});

// ═════════════════════ docs/cli/run.md: exit codes ═════════════════════

describe("docs/cli/run.md, exit codes: 126 'the command could not be executed (permissions, not an executable)'", () => {
  test("control: with --no-sandbox, a directory given as the command exits 126", async () => {
    const home = await cliHome();
    const proj = freshDir();
    mkdirSync(join(proj, "tool"));
    const r = await runCli(["run", "--agent", "claude", "--no-sandbox", "--project", proj, "--", join(proj, "tool")], { home });
    assert.equal(r.code, 126, r.stderr);
  });

  test("in the sandbox (the default), a directory given as the command exits 126 (not executable), as with --no-sandbox, not 127 'no such command'", async () => {
    const home = await cliHome();
    const proj = freshDir();
    mkdirSync(join(proj, "tool"));
    const r = await runCli(["run", "--agent", "claude", "--network", "none", "--project", proj, "--", join(proj, "tool")], { home, timeoutMs: 60_000 });
    // Same command, same file: the sandbox should report it as the unconfined run does (and as a shell does: 126).
    assert.doesNotMatch(r.stderr, /no such command/, "the path exists: it is not an executable, not missing");
    assert.equal(r.code, 126, r.stderr);
  });
});

// ═════════════════════ docs/cli/leases.md: renew --ttl ═════════════════════

describe("docs/cli/leases.md, `lessor renew LEASE_ID [--ttl D]`: 'The rule's `ttl` caps `--ttl` … a note on stderr says so and why'", () => {
  test("renew --ttl 1h (well within max_ttl 24h) renews for the rule's ttl, 15m, which caps it (docs/cli/leases.md, renew --help), and says so on stderr; --json is unchanged", async () => {
    const home = await cliHome();
    await seedHome(home, POLICY, [{ name: "github-token", value: Buffer.from(CANARY), kind: "pat" }]);
    const granted = await runCli(["lease", "github-token", "--agent", "claude", "--domain", "api.github.com", "--max-uses", "3", "--json"], { home });
    assert.equal(granted.code, 0, granted.stderr);
    const id = (JSON.parse(granted.stdout) as { id: string }).id;
    const before = Date.now();
    // docs/cli/leases.md and `lessor renew --help` now say the rule's ttl caps --ttl; we ask for 1h.
    const r = await runCli(["renew", id, "--ttl", "1h", "--json"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(!r.stdout.includes(CANARY) && !r.stderr.includes(CANARY));
    const lease = JSON.parse(r.stdout) as { expiresAt: string; maxExpiresAt: string };
    const left = Date.parse(lease.expiresAt) - before;
    assert.ok(Date.parse(lease.maxExpiresAt) - before > 23 * 3600_000, "max_ttl is the default 24h: 1h is within it");
    // The lease lives the rule's 15m, and the CLI says why it is shorter than asked.
    assert.ok(left > 14 * 60_000 && left <= 15 * 60_000 + 5_000, `renew --ttl 1h gave ${Math.round(left / 60_000)} minutes`);
    assert.match(r.stderr, /^lessor: note: the lease expires .* \(in 1[45]m\d*s?\), shorter than --ttl 1h asked: a renewal lasts at most the ttl of rule "claude-github"$/m);
    // Asking for no more than the rule's ttl says nothing.
    const short = await runCli(["renew", id, "--ttl", "10m", "--json"], { home });
    assert.equal(short.code, 0, short.stderr);
    assert.equal(short.stderr, "");
    const help = await runCli(["renew", "--help"], { home });
    assert.match(help.stdout, /at most the granting rule's ttl/);
  });
});

// ═════════════════════ docs/cli/secret.md: rotate --hook on a name that does not exist ═════════════════════

describe("docs/cli/secret.md, exit 4 'the secret or version does not exist'", () => {
  test("control: `echo v | lessor secret rotate typo` exits 4 saying the secret does not exist", async () => {
    const home = await cliHome();
    const r = await runCli(["secret", "rotate", "db-pasword"], { home, input: "v\n" });
    assert.equal(r.code, 4, r.stderr);
    assert.match(r.stderr, /does not exist/);
  });

  test("`lessor secret rotate typo --hook` says no such secret exists (exit 4), not to add a [[rotate]] entry for the misspelt name (exit 2)", async () => {
    const home = await cliHome();
    await seedHome(home, POLICY, [{ name: "db-password", value: Buffer.from(CANARY) }]);
    const r = await runCli(["secret", "rotate", "db-pasword", "--hook"], { home });
    assert.doesNotMatch(r.stderr, /add a \[\[rotate\]\] entry/, "the advice sends the user to configure a hook for a secret that does not exist");
    assert.equal(r.code, 4, r.stderr);
    assert.match(r.stderr, /does not exist/);
  });
});

// ═════════════════════ the starter lessor.toml ═════════════════════

describe("lessor init's starter lessor.toml, [run] network (docs/sandbox.md: 'default, [run] network = \"proxy\"')", () => {
  test("the starter file's network line shows \"proxy\" (the default) and what \"none\" and \"host\" do, and a vault_session line shows its default", async () => {
    const home = join(freshDir(), "home");
    const r = await runCli(["init"], { env: { LESSOR_HOME: home } });
    assert.equal(r.code, 0, r.stderr);
    const text = readFileSync(join(home, "lessor.toml"), "utf8");
    const line = text.split("\n").find((l) => /^#\s*network\s*=/.test(l));
    assert.ok(line, "the starter file has a [run] network line");
    // The other commented [run] keys show the default (project = "read-write"); this one would turn the proxy off.
    assert.deepEqual(
      { namesProxy: /"proxy"/.test(line), saysUntilTheProxy: /until the proxy/.test(line) },
      { namesProxy: true, saysUntilTheProxy: false },
      `starter lessor.toml: ${line}`,
    );
    assert.match(line, /^# network = "proxy"\s+# lessor's injecting proxy only; "none": no network; "host": this machine's network, unscoped$/);
    assert.match(text, /^# vault_session = false\s+# true: /m);
  });
});

// ═════════════════════ docs/sandbox.md: what held ═════════════════════

describe("docs/sandbox.md, 'the environment': what held", () => {
  test("the credentials docs/sandbox.md lists are withheld from the sandboxed command and named on stderr; TMPDIR the sandbox does not show becomes /tmp", async () => {
    const home = await cliHome();
    const proj = freshDir();
    const creds: Record<string, string> = {
      GH_TOKEN: `${CANARY}1`,
      OPENAI_API_KEY: `${CANARY}2`,
      AWS_SECRET_ACCESS_KEY: `${CANARY}3`,
      PGPASSWORD: `${CANARY}4`,
      MYSQL_PWD: `${CANARY}5`,
      AZURE_CLIENT_SECRET: `${CANARY}6`,
      DATABASE_URL: `postgres://app:${CANARY}7@db/app`,
      REDIS_URL: `redis://:${CANARY}8@cache:6379`,
      DEPLOY_PRIVATE_KEY: `${CANARY}9`,
    };
    const r = await runCli(["run", "--agent", "claude", "--network", "none", "--project", proj, "--", "/usr/bin/env"], {
      home,
      env: { ...creds, TMPDIR: "/nonexistent-tmpdir" },
      timeoutMs: 60_000,
    });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(!r.stdout.includes(CANARY), `a withheld credential reached the command:\n${r.stdout.split("\n").filter((l) => l.includes(CANARY)).join("\n")}`);
    assert.doesNotMatch(r.stdout, /^LESSOR_/m);
    for (const k of Object.keys(creds)) assert.match(r.stderr, new RegExp(`\\b${k}\\b`), `${k} is not named on stderr`);
    assert.ok(!r.stderr.includes(CANARY), "stderr names the variables, never their values");
    assert.match(r.stdout, /^TMPDIR=\/tmp$/m);
  });
});
