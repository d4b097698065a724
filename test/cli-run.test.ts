/**
 * `lessor run`, end to end: the built CLI as a child process running real child programs
 * (test/fixtures/run-*.mjs), in embedded mode and against a running daemon. Plus unit tests of the
 * output mask and the env-file parser.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { appendFileSync, chmodSync, chownSync, existsSync, mkdtempSync, rmSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { BIN, cliHome, runCli, seedHome } from "./cli-harness.js";
import { serveInSuite } from "./daemon-harness.js";
import { openVault } from "../src/config/open-vault.js";
import { parseEnvFile } from "../src/cli/run/env-file.js";
import { MaskStream, maskPatterns } from "../src/cli/run/mask.js";
import { shareGroup } from "./helpers.js";

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const NODE = process.execPath;
const tmp = mkdtempSync(join(tmpdir(), "lessor-run-test-"));
process.on("exit", () => rmSync(tmp, { recursive: true, force: true }));

const POLICY = `
[[rule]]
name = "deny-forbidden"
effect = "deny"
agents = ["*"]
secrets = ["forbidden"]

[[rule]]
name = "bound"
effect = "allow"
agents = ["bound"]
secrets = ["api-token"]
domains = ["api.example.com", "*.example.org"]

[[rule]]
name = "testers"
effect = "allow"
agents = ["tester*"]
secrets = ["*", "*/*"]
any_domain = true
`;

/** Random per run, so a match in the output can only come from the vault. */
const VALUES = {
  token: `tok_${randomBytes(12).toString("hex")}`,
  dbPassword: `pw-${randomBytes(8).toString("hex")}`,
  credsPassword: `json-${randomBytes(8).toString("hex")}`,
};

async function seed(home: string): Promise<void> {
  // The children run in the sandbox (docs/sandbox.md): the project directory is this checkout (the
  // fixtures), and they write their reports to `tmp`, which the sandbox shows only when told.
  // These tests are about references resolved to values in the child's environment: network "none"
  // (no way out) does that; the default, "proxy", hands placeholders instead (test/run-proxy.test.ts).
  appendFileSync(join(home, "lessor.toml"), `\n[run]\nwrite = [${JSON.stringify(tmp)}]\nnetwork = "none"\n`);
  await seedHome(home, POLICY, [
    { name: "api-token", value: VALUES.token },
    { name: "db-password", value: VALUES.dbPassword },
    { name: "creds", value: JSON.stringify({ user: "svc", password: VALUES.credsPassword }) },
    { scope: "env:prod", name: "API_KEY", value: `prodkey-${randomBytes(6).toString("hex")}` },
    { name: "forbidden", value: "forbidden-value-123" },
  ]);
}

interface LeaseJson {
  id: string;
  agent: string;
  secret: string;
  state: string;
}

async function leasesOf(home: string, agent: string): Promise<LeaseJson[]> {
  const r = await runCli(["leases", "--agent", agent, "--json"], { home });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as LeaseJson[];
}

function envFile(name: string, text: string): string {
  const p = join(tmp, name);
  writeFileSync(p, text);
  return p;
}

/** Starts `lessor run` on run-signal.mjs (TOKEN leased) and resolves once the child is ready. */
async function startWaitingRun(home: string, agent: string, marker: string, code: number) {
  const child = spawn(NODE, [BIN, "run", "--agent", agent, "--", NODE, fixture("run-signal.mjs"), marker, String(code)], {
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", LESSOR_HOME: home, TOKEN: "$S:api-token" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stderr.on("data", (d: Buffer) => (err += d.toString()));
  const exited = new Promise<{ code: number | null; signal: string | null; err: string }>((r) => child.on("close", (c, sig) => r({ code: c, signal: sig, err })));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the child never got ready: ${err}`));
    }, 15_000);
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes("ready")) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  const cleanup = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  return { child, exited, cleanup };
}

/** The resolution check shared by embedded and daemon mode. */
async function checkResolution(home: string, agent: string): Promise<void> {
  const out = join(tmp, `env-${agent}.json`);
  const file = envFile(
    `resolve-${agent}.env`,
    [
      "# comment line",
      'export PLAIN="hello world"',
      "PW=lessor://global/creds#password",
      "USER_NAME='$S:creds/user'",
      "OVERRIDE=from-file  # inline comment",
      "",
    ].join("\n"),
  );
  const r = await runCli(["run", "--agent", agent, "--env-file", file, "--", NODE, fixture("run-env.mjs"), out, "TOKEN", "DB_URL", "PW", "USER_NAME", "PLAIN", "OVERRIDE"], {
    home,
    env: { TOKEN: "$S:api-token", DB_URL: "postgres://app:$S:db-password@db/app", OVERRIDE: "from-parent" },
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "env written\n");
  assert.deepEqual(JSON.parse(readFileSync(out, "utf8")), {
    TOKEN: VALUES.token,
    DB_URL: `postgres://app:${VALUES.dbPassword}@db/app`,
    PW: VALUES.credsPassword,
    USER_NAME: "svc",
    PLAIN: "hello world",
    OVERRIDE: "from-file",
  });
  // One lease per distinct secret (creds is referenced twice), all revoked once the child exited.
  const leases = await leasesOf(home, agent);
  assert.deepEqual(leases.map((l) => l.secret).sort(), ["global/api-token", "global/creds", "global/db-password"]);
  assert.deepEqual(leases.map((l) => l.state), ["revoked", "revoked", "revoked"]);
}

/** The masking check shared by embedded and daemon mode. */
async function checkMasking(home: string, agent: string): Promise<void> {
  const r = await runCli(["run", "--agent", agent, "--", NODE, fixture("run-print.mjs"), "TOKEN", "80"], { home, env: { TOKEN: "$S:api-token" } });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^whole=<\[redacted:api-token\]>$/m);
  assert.match(r.stdout, /^split=<\[redacted:api-token\]>$/m, "a value written in two pieces with a pause between is still masked");
  assert.match(r.stdout, /^b64=<\[redacted:api-token\]>$/m, "the base64 of the value is masked");
  assert.match(r.stdout, /^done$/m);
  assert.match(r.stderr, /^err=<\[redacted:api-token\]>$/m, "stderr is masked too");
  for (const s of [r.stdout, r.stderr]) {
    assert.ok(!s.includes(VALUES.token));
    assert.ok(!s.includes(Buffer.from(VALUES.token).toString("base64")));
    assert.ok(!s.includes(VALUES.token.slice(0, 12)), "no partial value either");
  }
}

describe("lessor run (embedded vault)", () => {
  let home: string;
  before(async () => {
    home = await cliHome();
    await seed(home);
  });

  test("--help shows usage and examples; no command is a usage error", async () => {
    const help = await runCli(["run", "--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Usage: lessor run --agent A .* -- CMD/);
    assert.match(help.stdout, /Examples:\n {2}GITHUB_TOKEN='\$S:github-token' lessor run/);
    const none = await runCli(["run", "--agent", "a"], { home });
    assert.equal(none.code, 2);
    assert.match(none.stderr, /missing required argument 'command'/);
    const noAgent = await runCli(["run", "--", NODE, "-e", "0"], { home });
    assert.equal(noAgent.code, 2);
    assert.match(noAgent.stderr, /--agent <agent>' not specified/);
  });

  test("run as a program, the bin keeps --env-file for lessor (Node 20 would take it): a missing file is lessor's error, a pipe is read whole", () => {
    // Node 20 reads a script's own `--env-file F` unless `--` comes first (nodejs/node#54232): it
    // would exit 9 with "node: F: not found", or drain a pipe before lessor reads it.
    const env = { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", LESSOR_HOME: home, NO_COLOR: "1" };
    const missing = spawnSync(BIN, ["run", "--agent", "tester-bin", "--env-file", join(home, "no-such.env"), "--", NODE, "-e", "0"], { env, encoding: "utf8" });
    assert.equal(missing.status, 2, missing.stderr);
    assert.match(missing.stderr, /^lessor: cannot read the env file .*no-such\.env \(it does not exist\)/);
    const piped = spawnSync(
      "bash",
      ["-c", `"$0" run --agent tester-bin --env-file <(printf 'TOKEN=$S:api-token\\n') -- "$1" -e 'process.exit(process.env.TOKEN === process.argv[1] ? 0 : 9)' "$2"`, BIN, NODE, VALUES.token],
      { env, encoding: "utf8" },
    );
    assert.equal(piped.status, 0, piped.stderr);
  });

  test("resolves references from the environment, an env file, inside a URL and JSON fields; one lease per secret, revoked after", async () => {
    await checkResolution(home, "tester-resolve");
  });

  test("masks values (whole, split across writes, base64) when output is a pipe", async () => {
    await checkMasking(home, "tester-mask");
  });

  test("does not mask when the output is a terminal (under script(1))", async (t) => {
    if (spawnSync("script", ["--version"]).error) {
      t.skip("script(1) is not installed (Debian package bsdutils / util-linux)");
      return;
    }
    const q = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;
    const cmd = [NODE, BIN, "run", "--agent", "tester-tty", "--", NODE, fixture("run-print.mjs"), "TOKEN"].map(q).join(" ");
    const r = spawnSync("script", ["-qec", cmd, "/dev/null"], {
      env: { PATH: process.env.PATH, HOME: process.env.HOME, LESSOR_HOME: home, TOKEN: "$S:api-token", NO_COLOR: "1" },
      encoding: "utf8",
      timeout: 20_000,
    });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const screen = r.stdout.replaceAll("\r", "");
    assert.match(screen, new RegExp(`^whole=<${VALUES.token}>$`, "m"));
    assert.match(screen, new RegExp(`^split=<${VALUES.token}>$`, "m"));
    assert.match(screen, new RegExp(`^err=<${VALUES.token}>$`, "m"));
    assert.ok(!screen.includes("[redacted"));
    assert.deepEqual((await leasesOf(home, "tester-tty")).map((l) => l.state), ["revoked"]);
  });

  test("forwards SIGTERM to the child, exits with the child's code, and revokes the leases", async () => {
    const marker = join(tmp, "sigterm.txt");
    const run = await startWaitingRun(home, "tester-sig", marker, 43);
    let result: { code: number | null; signal: string | null; err: string };
    try {
      // While the child runs, its lease is live.
      assert.deepEqual((await leasesOf(home, "tester-sig")).map((l) => l.state), ["live"]);
      run.child.kill("SIGTERM");
      result = await run.exited;
    } finally {
      run.cleanup();
    }
    assert.equal(result.signal, null, "lessor run itself was not killed by the signal");
    assert.equal(result.code, 43, result.err);
    assert.equal(readFileSync(marker, "utf8"), "got SIGTERM\n");
    assert.deepEqual((await leasesOf(home, "tester-sig")).map((l) => l.state), ["revoked"]);
  });

  test("exits with the child's code; 128+N when signal N killed it; 127 when the command is missing", async () => {
    const seven = await runCli(["run", "--agent", "tester-exit", "--", NODE, "-e", "process.exit(7)"], { home, env: { TOKEN: "$S:api-token" } });
    assert.equal(seven.code, 7, seven.stderr);
    assert.deepEqual((await leasesOf(home, "tester-exit")).map((l) => l.state), ["revoked"]);
    const killed = await runCli(["run", "--agent", "tester-exit", "--", NODE, "-e", "process.kill(process.pid, 'SIGKILL')"], { home });
    assert.equal(killed.code, 128 + 9);
    // A command that is not there takes no lease: refused before any, sandboxed or not.
    for (const flags of [[], ["--no-sandbox"]]) {
      const missing = await runCli(["run", "--agent", "tester-exit", ...flags, "--", "no-such-command-xyz"], { home, env: { TOKEN: "$S:api-token" } });
      assert.equal(missing.code, 127, missing.stderr);
      assert.match(missing.stderr, /cannot run "no-such-command-xyz": no such command/);
      assert.deepEqual((await leasesOf(home, "tester-exit")).map((l) => l.state), ["revoked"], `${flags.join(" ")}: a lease was taken for a command that is not there`);
    }
  });

  test("its output closed early (| head): the command stops as it would without lessor, and the leases are still revoked", async () => {
    // A child that writes until its pipe breaks; lessor's stdout is closed after the first chunk.
    const writer = "const w=()=>{while(process.stdout.write('line\\n'));process.stdout.once('drain',w)};w()";
    const child = spawn(NODE, ["--", BIN, "run", "--agent", "tester-pipe", "--", NODE, "-e", writer], {
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", LESSOR_HOME: home, TOKEN: "$S:api-token" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
    await new Promise<void>((r) => child.stdout.once("data", () => r()));
    child.stdout.destroy();
    await exited;
    // Without the hold on EPIPE, lessor exited at once and the lease stayed live until it expired.
    assert.deepEqual((await leasesOf(home, "tester-pipe")).map((l) => l.state), ["revoked"]);
  });

  test("a denied secret stops the run with exit 3 before the child starts, and revokes the leases already taken", async () => {
    const marker = join(tmp, "denied-started.json");
    const file = envFile("denied.env", 'export FORBIDDEN="$S:forbidden"\n');
    const r = await runCli(["run", "--agent", "tester-deny", "--env-file", file, "--", NODE, fixture("run-env.mjs"), marker, "TOKEN"], {
      home,
      env: { TOKEN: "$S:api-token" },
    });
    assert.equal(r.code, 3);
    assert.equal(r.stdout, "");
    assert.ok(!existsSync(marker), "the child never started");
    assert.match(r.stderr, /^lessor: \$FORBIDDEN \(from .*denied\.env:1\) refers to secret global\/forbidden/);
    assert.match(r.stderr, /rule 1 \("deny-forbidden"\) denies it/);
    assert.match(r.stderr, /The command was not started\.\n$/);
    assert.ok(!r.stderr.includes(VALUES.token) && !r.stderr.includes("forbidden-value-123"));
    // TOKEN (from the environment) was leased first; that lease is revoked.
    const leases = await leasesOf(home, "tester-deny");
    assert.deepEqual(leases.map((l) => [l.secret, l.state]), [["global/api-token", "revoked"]]);

    const other = await runCli(["run", "--agent", "someone-else", "--", NODE, fixture("run-env.mjs"), marker, "TOKEN"], { home, env: { TOKEN: "$S:api-token" } });
    assert.equal(other.code, 3);
    assert.match(other.stderr, /no rule allows agent "someone-else" secret "global\/api-token"/);
    assert.ok(!existsSync(marker));
  });

  test("a missing secret exits 4; a malformed reference or env file exits 2 and names where", async () => {
    const missing = await runCli(["run", "--agent", "tester-x", "--", NODE, "-e", "0"], { home, env: { TOKEN: "$S:no-such-secret" } });
    assert.equal(missing.code, 4);
    assert.match(missing.stderr, /\$TOKEN \(from the environment\) refers to secret global\/no-such-secret/);

    const malformed = await runCli(["run", "--agent", "tester-x", "--", NODE, "-e", "0"], { home, env: { TOKEN: "lessor://global/" } });
    assert.equal(malformed.code, 2);
    assert.match(malformed.stderr, /\$TOKEN \(from the environment\) holds a malformed reference .*column 17: expected a secret name/);

    const bad = envFile("bad.env", "A=1\n# ok\nB='unterminated\n");
    const r = await runCli(["run", "--agent", "tester-x", "--env-file", bad, "--", NODE, "-e", "0"], { home });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /bad\.env:3:3: the single-quoted value of B is never closed/);

    const field = await runCli(["run", "--agent", "tester-x", "--", NODE, "-e", "0"], { home, env: { X: "$S:api-token/user" } });
    assert.equal(field.code, 2);
    assert.match(field.stderr, /\$X .* refers to secret global\/api-token: the secret's value is not JSON/);
    assert.ok(!field.stderr.includes(VALUES.token));
  });

  test("an --env-file other users may change (writable by them, or theirs) is refused before anything runs: it decides which secrets and variables (LD_PRELOAD…) the command gets", async () => {
    const marker = join(tmp, "env-file-ran");
    const run = (file: string) => runCli(["run", "--agent", "tester-x", "--env-file", file, "--", NODE, "-e", `require("node:fs").writeFileSync(${JSON.stringify(marker)}, "")`], { home });
    const open = envFile("open.env", "TOKEN=$S:api-token\n");
    chmodSync(open, 0o646);
    const r = await run(open);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /the env file .*open\.env can be changed by other users \(mode 0?646\).*chmod go-w/);
    if (shareGroup(open)) {
      chmodSync(open, 0o664);
      assert.match((await run(open)).stderr, /can be changed by other users \(mode 0?664\)/);
    }
    if (process.getuid?.() === 0) {
      const theirs = envFile("theirs.env", "TOKEN=$S:api-token\n");
      chownSync(theirs, 65534, 65534);
      const t = await run(theirs);
      assert.equal(t.code, 1, t.stderr);
      assert.match(t.stderr, /theirs\.env belongs to uid 65534, not to you/);
    }
    assert.equal(existsSync(marker), false, "the command never ran");
    chmodSync(open, 0o644);
    const ok = await run(open);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(existsSync(marker), true);
  });

  test("--domain goes to policy; a domain-bound lease is read for the --domain or the rule's host", async () => {
    const out = join(tmp, "bound.json");
    const plain = await runCli(["run", "--agent", "bound", "--", NODE, fixture("run-env.mjs"), out, "TOKEN"], { home, env: { TOKEN: "$S:api-token" } });
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal((JSON.parse(readFileSync(out, "utf8")) as { TOKEN: string }).TOKEN, VALUES.token);
    const org = await runCli(["run", "--agent", "bound", "--domain", "x.example.org", "--", NODE, "-e", "0"], { home, env: { TOKEN: "$S:api-token" } });
    assert.equal(org.code, 0, org.stderr);
    const evil = await runCli(["run", "--agent", "bound", "--domain", "evil.test", "--", NODE, "-e", "0"], { home, env: { TOKEN: "$S:api-token" } });
    assert.equal(evil.code, 3);
    assert.match(evil.stderr, /\$TOKEN .* refers to secret global\/api-token, and no lease was granted to agent "bound"/);
    const leases = await leasesOf(home, "bound");
    assert.equal(leases.length, 2);
    assert.ok(leases.every((l) => l.state === "revoked"));
  });

  test("scoped references ($S::env/name, $secret://) and vault key variables withheld from the child", async () => {
    const out = join(tmp, "scoped.json");
    const r = await runCli(["run", "--agent", "tester-scoped", "--", NODE, fixture("run-env.mjs"), out, "A", "B", "LESSOR_PASSPHRASE"], {
      home,
      env: { A: "$S::prod/API_KEY", B: "$secret://prod/API_KEY", LESSOR_PASSPHRASE: "not-for-the-child" },
    });
    assert.equal(r.code, 0, r.stderr);
    const got = JSON.parse(readFileSync(out, "utf8")) as Record<string, string | null>;
    assert.match(got["A"]!, /^prodkey-[0-9a-f]{12}$/);
    assert.equal(got["B"], got["A"]);
    assert.equal(got["LESSOR_PASSPHRASE"], null);
    assert.deepEqual((await leasesOf(home, "tester-scoped")).map((l) => [l.secret, l.state]), [["env:prod/API_KEY", "revoked"]]);
  });
});

describe("lessor run (daemon mode)", () => {
  const daemon = serveInSuite(POLICY, seed);

  test("resolves, masks and revokes through the daemon", async () => {
    const { home } = daemon();
    await checkResolution(home, "tester-daemon");
    await checkMasking(home, "tester-daemon-mask");
  });

  test("the leases are still revoked when the daemon goes away while the command runs", async () => {
    const { home } = daemon();
    const marker = join(tmp, "daemon-gone.txt");
    const run = await startWaitingRun(home, "tester-gone", marker, 0);
    let result: { code: number | null; err: string };
    try {
      assert.deepEqual((await leasesOf(home, "tester-gone")).map((l) => l.state), ["live"]);
      await daemon().stop();
      run.child.kill("SIGTERM");
      result = await run.exited;
    } finally {
      run.cleanup();
    }
    assert.equal(result.code, 0, result.err);
    assert.equal(result.err, "");
    // No daemon now: lessor revoked through the vault itself.
    assert.deepEqual((await leasesOf(home, "tester-gone")).map((l) => l.state), ["revoked"]);

    // The leases of the first test were granted and revoked over the Unix socket, not by an embedded vault.
    const vault = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      const events = await vault.admin().auditQuery({ agent: "tester-daemon", types: ["lease_granted", "lease_revoked"] });
      assert.equal(events.length, 6);
      assert.ok(events.every((e) => e.transport === "uds"), JSON.stringify(events.map((e) => e.transport)));
      const gone = await vault.admin().auditQuery({ agent: "tester-gone", types: ["lease_granted", "lease_revoked"] });
      assert.deepEqual(gone.map((e) => [e.type, e.transport]), [["lease_granted", "uds"], ["lease_revoked", "cli"]]);
    } finally {
      await vault.close();
    }
  });
});

describe("output mask (unit)", () => {
  const secret = Buffer.from("s3cr3t-VALUE-42");
  const masked = async (chunks: Buffer[]): Promise<string> => {
    const m = new MaskStream(maskPatterns([{ label: "X", value: Buffer.from(secret) }]));
    const src = new PassThrough();
    const parts: Buffer[] = [];
    m.on("data", (d: Buffer) => parts.push(d));
    const done = new Promise((r) => m.on("end", r));
    src.pipe(m);
    for (const c of chunks) src.write(c);
    src.end();
    await done;
    return Buffer.concat(parts).toString("latin1");
  };

  test("any split of the input gives the same output, which never holds the value", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof(fc.constant(secret.toString("latin1")), fc.constant(secret.toString("base64")), fc.string({ maxLength: 20 })), { maxLength: 8 }),
        fc.array(fc.nat(200), { maxLength: 6 }),
        async (pieces, cuts) => {
          const input = Buffer.from(pieces.join(""), "latin1");
          const whole = await masked([input]);
          const points = [...new Set(cuts.map((c) => c % (input.length + 1)))].sort((a, b) => a - b);
          const chunks: Buffer[] = [];
          let at = 0;
          for (const p of points) {
            chunks.push(input.subarray(at, p));
            at = p;
          }
          chunks.push(input.subarray(at));
          assert.equal(await masked(chunks), whole);
          assert.ok(!whole.includes(secret.toString("latin1")));
          assert.equal(whole.split("[redacted:X]").length - 1, pieces.filter((p) => p === secret.toString("latin1") || p === secret.toString("base64")).length);
        },
      ),
      { numRuns: 150 },
    );
  });

  test("the forms other programs write a value in are masked too: Python's json.dumps, form and PHP percent-encoding, a URL encoded twice, HTML escapes", async () => {
    const value = 'pa ss/wörd+"<k>&1';
    const forms: Record<string, string> = {
      "Python json.dumps": JSON.stringify(value).slice(1, -1).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`),
      "form-encoded": new URLSearchParams({ k: value }).toString().slice(2),
      "Python quote": encodeURIComponent(value).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`).replace(/%2F/g, "/"),
      "twice over": encodeURIComponent(encodeURIComponent(value)),
      "HTML": value.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;"),
    };
    for (const [name, form] of Object.entries(forms)) {
      assert.notEqual(form, value, name);
      const m = new MaskStream(maskPatterns([{ label: "X", value: Buffer.from(value) }]));
      const out: Buffer[] = [];
      m.on("data", (d: Buffer) => out.push(d));
      const done = new Promise((r) => m.on("end", r));
      m.end(Buffer.from(`before ${form} after\n`));
      await done;
      assert.equal(Buffer.concat(out).toString(), "before [redacted:X] after\n", `${name} (${form}) is masked`);
    }
  });

  test("plain output passes at once; only a possible start of a secret is held back", async () => {
    const m = new MaskStream(maskPatterns([{ label: "X", value: Buffer.from(secret) }]));
    let seen = "";
    m.on("data", (d: Buffer) => (seen += d.toString("latin1")));
    const write = async (s: string) => {
      m.write(Buffer.from(s, "latin1"));
      await new Promise((r) => setImmediate(r));
    };
    await write("ready\n");
    assert.equal(seen, "ready\n", "a prompt or progress line is not delayed");
    await write("key: s3cr");
    assert.equal(seen, "ready\nkey: ", "the start of the secret is held");
    await write("3t-VALUE-42 ok\n");
    assert.equal(seen, "ready\nkey: [redacted:X] ok\n");
    m.end();
  });

  test("one byte at a time; a prefix at the end of the stream is flushed as is", async () => {
    const text = `a ${secret} b s3cr3t`;
    assert.equal(await masked([...Buffer.from(text)].map((b) => Buffer.from([b]))), "a [redacted:X] b s3cr3t");
  });
});

describe("env file parser (unit)", () => {
  test("quotes, export, comments, escapes, multi-line values; later wins is up to the caller", () => {
    const text = [
      "# c",
      "  export A=plain value  # comment",
      "B='single $S:x # not a comment'",
      'C="line1\\nline2 \\"q\\" \\$HOME"',
      'D="multi',
      'line"  # after',
      "E=",
      "A=again",
    ].join("\n");
    assert.deepEqual(parseEnvFile(text, "f"), [
      { key: "A", value: "plain value", line: 2 },
      { key: "B", value: "single $S:x # not a comment", line: 3 },
      { key: "C", value: 'line1\nline2 "q" $HOME', line: 4 },
      { key: "D", value: "multi\nline", line: 5 },
      { key: "E", value: "", line: 7 },
      { key: "A", value: "again", line: 8 },
    ]);
  });

  test("errors name the file, line and column and never the value", () => {
    const cases: [string, RegExp][] = [
      ["OK=1\nNOEQUALS", /^f:2:1: expected KEY=value/],
      // The line is not quoted: it may be a value (the first line of an unquoted multi-line key).
      ["1BADsecretvalue=x", /^f:1:1: expected KEY=value with a variable name before "="/],
      ["A=x\u0000secretvalue", /^f:1:4: a NUL byte, which no environment variable can hold/],
      ['X="abc" junk', /^f:1:9: unexpected text after the closing quote of X/],
      ['X="a\\qsecretvalue"', /^f:1:5: unknown escape \\q in the value of X/],
    ];
    for (const [text, re] of cases) {
      assert.throws(() => parseEnvFile(text, "f"), (e: Error) => re.test(e.message) && !e.message.includes("secretvalue"));
    }
  });
});
