/**
 * A newcomer who follows README.md and docs/cli/*.md literally, and the promises nothing attacked yet:
 * secrets in error messages, usage text, status and audit output (and its JSONL copy); bad input
 * (malformed TOML, NUL bytes, invalid UTF-8, endless inputs) must end in a clear error, never a hang,
 * a stack trace or exit 70.
 *
 * Runs a private copy of the built CLI (dist/, as `npm run build` left it), so a rebuild elsewhere
 * does not change it under the test. Eight breaks this pass found are fixed and held here
 * (the tests below named for what now holds).
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";

const REPO = fileURLToPath(new URL("..", import.meta.url));
if (!existsSync(join(REPO, "dist/bin/lessor.cjs"))) throw new Error("dist/bin/lessor.cjs is missing: run npm run build (npm test does it)");

// The private copy: dist itself, and links to what it loads at run time.
const ROOT = mkdtempSync(join(tmpdir(), "lessor-newcomer-"));
process.on("exit", () => rmSync(ROOT, { recursive: true, force: true }));
cpSync(join(REPO, "dist"), join(ROOT, "dist"), { recursive: true });
cpSync(join(REPO, "package.json"), join(ROOT, "package.json"));
symlinkSync(join(REPO, "node_modules"), join(ROOT, "node_modules"));
if (existsSync(join(REPO, "native"))) symlinkSync(join(REPO, "native"), join(ROOT, "native"));
const BIN = join(ROOT, "dist/bin/lessor.cjs");
/** $HOME of every run: never the real one. */
const FAKE_HOME = join(ROOT, "home");
/** The project directory `lessor run` starts in. */
const PROJECT = join(ROOT, "project");
mkdirSync(FAKE_HOME, { mode: 0o700 });
mkdirSync(PROJECT, { mode: 0o700 });

const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"], { stdio: "ignore" }).status === 0;

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stdoutBytes: Buffer;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

/** Runs `lessor ARGS` (the private copy) with LESSOR_HOME=home; the whole process group is killed at the time limit. */
function lessor(home: string | null, args: string[], o: { input?: string | Buffer; env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, ["--", BIN, ...args], {
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: FAKE_HOME, NO_COLOR: "1", ...(home ? { LESSOR_HOME: home } : {}), ...o.env },
      cwd: o.cwd ?? ROOT,
      stdio: ["pipe", "pipe", "pipe"],
      detached: true,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
    }, o.timeoutMs ?? 30_000);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const stdoutBytes = Buffer.concat(out);
      resolve({ code, signal, stdout: stdoutBytes.toString("utf8"), stdoutBytes, stderr: Buffer.concat(err).toString("utf8"), timedOut, ms: performance.now() - t0 });
    });
    child.stdin.on("error", () => {});
    if (o.input !== undefined) child.stdin.end(o.input);
    else child.stdin.end();
  });
}

/** Runs `f` over `items`, at most `n` at once (the machine has two cores). */
async function pool<T, R>(items: readonly T[], n: number, f: (t: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      for (let i = next++; i < items.length; i = next++) out[i] = await f(items[i]!, i);
    }),
  );
  return out;
}

let homes = 0;
/** A fresh home made the README's way: `lessor init`. */
async function initHome(): Promise<string> {
  const home = join(ROOT, `h${++homes}`);
  const r = await lessor(home, ["init"]);
  assert.equal(r.code, 0, r.stderr);
  return home;
}

/** A copy of an initialised home (cheaper than another `lessor init`). */
function copyHome(from: string): string {
  const home = join(ROOT, `h${++homes}`);
  cpSync(from, home, { recursive: true });
  return home;
}

const writePolicy = (home: string, text: string): void => writeFileSync(join(home, "policy.toml"), text, { mode: 0o600 });
const writeConfig = (home: string, text: string): void => writeFileSync(join(home, "lessor.toml"), text, { mode: 0o600 });

/** No stack trace, no "internal error", no exit 70: what every refusal of bad input must look like. */
function assertCleanRefusal(r: Result, what: string): void {
  assert.equal(r.timedOut, false, `${what}: did not end (killed after ${Math.round(r.ms)} ms)`);
  assert.notEqual(r.code, 70, `${what}: exit 70 (internal error): ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /internal error|this is a bug/, `${what}: ${r.stderr}`);
  assert.doesNotMatch(r.stderr + r.stdout, /^\s+at .+:\d+:\d+\)?$/m, `${what}: a stack trace: ${r.stderr}`);
}

const CANARY = "ghp_NEWCOMERcanary7Qx2";
const encodings = (v: string): string[] => [v, Buffer.from(v).toString("base64").replace(/=+$/, ""), Buffer.from(v).toString("hex")];

describe("README.md, followed literally", () => {
  test("quick start: the lease reaches the pipe exactly, and no other output, audit row or JSONL line holds the value", async () => {
    const home = await initHome();
    // README: the JSONL copy on (docs/audit.md), then `echo "$GITHUB_TOKEN" | lessor secret set github-token --kind pat`.
    const cfg = readFileSync(join(home, "lessor.toml"), "utf8");
    assert.match(cfg, /^# jsonl = "audit\.jsonl"/m, "the generated lessor.toml shows the [audit] jsonl line");
    writeConfig(home, cfg.replace(/^# jsonl = "audit\.jsonl".*$/m, 'jsonl = "audit.jsonl"'));
    const set = await lessor(home, ["secret", "set", "github-token", "--kind", "pat"], { input: `${CANARY}\n` });
    assert.equal(set.code, 0, set.stderr);
    assert.equal(set.stdout.trim(), "stored global/github-token version 1");
    // "$EDITOR ~/.lessor/policy.toml   # grant agent "claude" github-token for api.github.com"
    writePolicy(home, `[[rule]]\nname = "claude-github"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["github-token"]\ndomains = ["api.github.com"]\n`);
    const explain = await lessor(home, ["policy", "explain", "--agent", "claude", "--secret", "github-token", "--domain", "api.github.com"]);
    assert.equal(explain.code, 0, explain.stderr);
    assert.match(explain.stdout, /^allow: rule 1 \("claude-github"\)/);
    // `lessor lease … | sed 's/^/Authorization: Bearer /' | curl -H @- …`: the value alone, no newline, so the header is one line.
    const lease = await lessor(home, ["lease", "github-token", "--agent", "claude", "--domain", "api.github.com"]);
    assert.equal(lease.code, 0, lease.stderr);
    assert.equal(lease.stdout, CANARY, "stdout is exactly the value (no newline: it is a pipe)");
    assert.match(lease.stderr, /^lessor: lease [0-9a-f-]{36} expires in 5m; used up by this print\n$/);

    const surfaces: string[][] = [
      ["status"],
      ["status", "--json"],
      ["whoami", "--json"],
      ["audit", "tail", "-n", "100", "--json"],
      ["audit", "query", "--json", "--limit", "1000"],
      ["audit", "verify"],
      ["leases", "--json"],
      ["secret", "get", "github-token"],
      ["secret", "get", "github-token", "--json"],
      ["secret", "history", "github-token", "--json"],
      ["secret", "list", "--json"],
      ["policy", "check", "--json"],
      ["lease", "github-token", "--agent", "claude", "--domain", "evil.example"],
      ["lease", "github-token", "--agent", "mallory"],
    ];
    const results = await pool(surfaces, 3, (a) => lessor(home, a));
    results.forEach((r, i) => {
      const what = `lessor ${surfaces[i]!.join(" ")}`;
      assertCleanRefusal(r, what);
      for (const e of encodings(CANARY)) assert.ok(!(r.stdout + r.stderr).includes(e), `${what} printed the value (${e})`);
    });
    assert.equal(results[5]!.code, 0, results[5]!.stderr);
    assert.match(results[5]!.stdout, /^audit trail verified: \d+ events/);
    assert.equal(results[12]!.code, 3, "another host: denied (exit 3)");
    assert.equal(results[13]!.code, 3, "another agent: denied (exit 3)");
    // The JSONL copy: a private file with every event, and never the value.
    const jsonl = readFileSync(join(home, "audit.jsonl"), "utf8");
    assert.ok(jsonl.split("\n").filter(Boolean).length >= 4, jsonl);
    for (const f of readdirSync(home)) {
      const bytes = readFileSync(join(home, f));
      for (const e of encodings(CANARY)) assert.ok(!bytes.includes(Buffer.from(e)), `${f} holds the value (${e})`);
    }
  });

  test("every --help, with credentials in lessor's environment, exits 0 and shows none of them; an unknown option exits 2 naming it", async () => {
    const home = await initHome();
    const env = {
      LESSOR_TOKEN_FILE: join(ROOT, "no-such-token"),
      LESSOR_PASSPHRASE: "ENVCANARYpassphrase",
      LESSOR_DATABASE_URL: "postgres://u:ENVCANARYdb@127.0.0.1:1/x",
      LESSOR_MIGRATE_TO: "postgres://u:ENVCANARYmig@127.0.0.1:1/x",
      GITHUB_TOKEN: "ENVCANARYgithub",
    };
    const top = await lessor(home, ["--help"], { env });
    assert.equal(top.code, 0, top.stderr);
    const commands = [...top.stdout.matchAll(/^ {2}([a-z][a-z-]+)/gm)].map((m) => m[1]!).filter((c) => c !== "help");
    assert.ok(commands.length >= 20, `commands listed: ${commands.join(" ")}`);
    const cases = [...commands.map((c) => [c, "--help"]), ["secret", "set", "--help"], ["secret", "export", "--help"], ["token", "create", "--help"], ["audit", "query", "--help"]];
    const rs = await pool(cases, 3, (a) => lessor(home, a, { env }));
    rs.forEach((r, i) => {
      assert.equal(r.code, 0, `lessor ${cases[i]!.join(" ")}: ${r.stderr}`);
      assert.doesNotMatch(r.stdout + r.stderr, /ENVCANARY/, `lessor ${cases[i]!.join(" ")} shows a credential of the environment`);
    });
    const unknown = await lessor(home, ["secret", "list", "--sekret-flag", "ENVCANARYarg"], { env });
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown option '--sekret-flag'/);
  });
});

describe("bad input gets a clear refusal (docs/cli.md: exit 2 names what and where)", () => {
  test("malformed lessor.toml: wrong types, huge values, NUL escapes, bad TOML, invalid UTF-8: exit 2 naming the file and the field", async () => {
    const base = await initHome();
    const cases: [string, RegExp][] = [
      ["[vault\nx = 1\n", /line 1/],
      ['[vault]\nmax_secret_bytes = "big"\n', /\[vault\] max_secret_bytes/],
      ["[vault]\nmax_secret_bytes = 1e300\n", /\[vault\] max_secret_bytes/],
      ["[vault]\nmax_secret_bytes = 99999999999999999999\n", /line 2/],
      ['[vault]\nlease_retention = "99999999999999999999d"\n', /\[vault\] lease_retention/],
      ["[vault]\nbogus = 1\n", /unknown field "bogus"/],
      ['[vault]\ncipher = "a\u0000b"\n', /not valid TOML/],
      ['[vault]\ncipher = "\\u0000"\n', /\[vault\] cipher/],
      [Buffer.from('[vault]\ncipher = "\xff\xfe"\n', "latin1").toString("latin1"), /\[vault\] cipher/],
      ["[keys]\nfile = 5\n", /\[keys\] file/],
      ['[run]\nhide = ["~/a\\u0000b"]\n', /\[run\] hide/],
      ['[[rotate]]\nsecret = "x"\ncommand = ["s\\u0000h"]\n', /\[\[rotate\]\] 1 command/],
      ['[vault]\nstore = "postgres"\ndatabase_url = "notaurl ENVCANARYurl"\n', /\[vault\] database_url/],
    ];
    const rs = await pool(cases, 3, async ([text], i) => {
      const home = copyHome(base);
      writeFileSync(join(home, "lessor.toml"), i === 8 ? Buffer.from(text, "latin1") : text, { mode: 0o600 });
      return lessor(home, ["secret", "list"]);
    });
    rs.forEach((r, i) => {
      const what = `lessor.toml case ${i} (${JSON.stringify(cases[i]![0].slice(0, 40))})`;
      assertCleanRefusal(r, what);
      assert.equal(r.code, 2, `${what}: ${r.stderr}`);
      assert.match(r.stderr, /lessor\.toml/, `${what}: names the file`);
      assert.match(r.stderr, cases[i]![1], `${what}: ${r.stderr}`);
      assert.doesNotMatch(r.stderr, /ENVCANARY/, `${what}: echoes the database URL`);
    });
  });

  test("malformed policy.toml: policy check exits 2 naming the rule and field; a lease is denied (3), never a crash", async () => {
    const base = await initHome();
    const rule = (extra: string): string => `[[rule]]\nname = "r"\neffect = "allow"\nagents = ["a"]\nsecrets = ["x"]\ndomains = ["a.example"]\n${extra}`;
    const cases: [string, RegExp][] = [
      ['[[rule]\nname="x"', /TOML syntax error at line/],
      [rule("ttl = 5\n"), /field "ttl"/],
      [rule("max_uses = 1e20\n"), /field "max_uses"/],
      [rule("max_uses = 99999999999999999999\n"), /TOML syntax error/],
      [rule('ttl = "99999999999999999d"\n'), /field "ttl"/],
      ['[[rule]]\nname = "r\\u0000x"\neffect = "allow"\nagents = ["a"]\nsecrets = ["x"]\ndomains = ["a.example"]\n', /field "name".*\\u0000/],
      ["rule = 5\n", /list of tables/],
    ];
    const rs = await pool(cases, 3, async ([text]) => {
      const home = copyHome(base);
      writePolicy(home, text);
      return Promise.all([lessor(home, ["policy", "check"]), lessor(home, ["lease", "x", "--agent", "a", "--domain", "a.example"])]);
    });
    rs.forEach(([check, lease], i) => {
      const what = `policy case ${i}`;
      assertCleanRefusal(check, `${what} (policy check)`);
      assertCleanRefusal(lease, `${what} (lease)`);
      assert.equal(check.code, 2, `${what}: ${check.stderr}`);
      assert.match(check.stderr, cases[i]![1], `${what}: ${check.stderr}`);
      assert.equal(lease.code, 3, `${what}: a broken policy denies: ${lease.stderr}`);
      assert.match(lease.stderr, /the policy is invalid, so every grant is denied/);
    });
  });

  test("wrong option values, a non-ASCII name, /dev/zero as a value: exit 2 saying which, in a few seconds", async () => {
    const home = await initHome();
    const cases: { args: string[]; input?: string; re: RegExp }[] = [
      { args: ["secret", "set", "x", "--random", "--length", "1e3"], re: /--length takes a whole number/ },
      { args: ["secret", "set", "x", "--kind", "weird"], input: "v", re: /--kind must be one of/ },
      { args: ["secret", "get", "x", "--version", "99999999999999999999"], re: /--version takes a whole number/ },
      { args: ["secret", "set", Buffer.from("bad\xffname", "latin1").toString("latin1"), "--allow-empty"], input: "v", re: /secret name .* is not valid/ },
      { args: ["lease", "x", "--agent", "a", "--ttl", "forever"], re: /duration "forever" is not valid/ },
      { args: ["revoke", "not-a-lease-id"], re: /a lease id is a UUID/ },
      { args: ["secret", "set", "z", "--from-file", "/dev/zero"], re: /larger than \d+ bytes/ },
      { args: ["secret", "set", "x", "--value", "ARGCANARY"], re: /refusing to take a secret value from the command line/ },
    ];
    const rs = await pool(cases, 3, (c) => lessor(home, c.args, { ...(c.input !== undefined ? { input: c.input } : {}), timeoutMs: 15_000 }));
    rs.forEach((r, i) => {
      const what = `lessor ${cases[i]!.args.join(" ")}`;
      assertCleanRefusal(r, what);
      assert.equal(r.code, 2, `${what}: ${r.stderr}`);
      assert.match(r.stderr, cases[i]!.re, `${what}: ${r.stderr}`);
      assert.doesNotMatch(r.stderr, /ARGCANARY/, `${what}: echoes the value`);
    });
  });
});

describe("docs/cli/credential-helpers.md and docs/cli/migrate.md, as written", () => {
  test("git-credential get answers the covered https host only; the value is on stdout, never stderr; --to with a password is refused unrepeated", async () => {
    const home = await initHome();
    writePolicy(home, `[[rule]]\nname = "git"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["github-token"]\ndomains = ["github.com"]\n`);
    assert.equal((await lessor(home, ["secret", "set", "github-token"], { input: CANARY })).code, 0);
    const helper = ["git-credential", "--agent", "claude", "--secret", "github-token", "get"];
    const [ok, http, other, mig] = await Promise.all([
      lessor(home, helper, { input: "protocol=https\nhost=github.com\n\n" }),
      lessor(home, helper, { input: "protocol=http\nhost=github.com\n\n" }),
      lessor(home, helper, { input: "protocol=https\nhost=github.com.evil.example\n\n" }),
      lessor(home, ["migrate", "--to", "postgres://lessor:PWCANARY@127.0.0.1:1/lessor"]),
    ]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout, `username=x-access-token\npassword=${CANARY}\n`);
    for (const r of [http, other]) {
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "", "nothing to answer");
      assert.match(r.stderr, /no credential/);
    }
    for (const r of [ok, http, other]) assert.ok(!r.stderr.includes(CANARY), "the value on stderr");
    assert.equal(mig.code, 2);
    assert.doesNotMatch(mig.stdout + mig.stderr, /PWCANARY/);
  });
});

describe("lessor run --env-file and lessor inject: input lessor cannot use", () => {
  test("an --env-file value holding a NUL byte is refused (exit 2, file:line), never an internal error nor a hung bwrap (sandboxed)", { skip: HAVE_BWRAP ? false : "bwrap is not usable here" }, async () => {
    // docs/cli/run.md: a value that holds a NUL byte cannot go in an environment variable; "that is an error".
    const home = await initHome();
    const file = join(ROOT, "nul.env");
    writeFileSync(file, Buffer.concat([Buffer.from("API_KEY=sk_live_NULCANARY"), Buffer.from([0]), Buffer.from("tail\n")]));
    const r = await lessor(home, ["run", "--agent", "claude", "--env-file", file, "--", "true"], { cwd: PROJECT, timeoutMs: 8_000 });
    assertCleanRefusal(r, "lessor run --env-file (NUL)");
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /nul\.env/, "names the env file");
    assert.ok(!r.stderr.includes("NULCANARY"), `the value is echoed: ${r.stderr}`);
  });

  test("with --no-sandbox, an --env-file value holding a NUL byte is refused without printing it", async () => {
    const home = await initHome();
    const file = join(ROOT, "nul2.env");
    writeFileSync(file, Buffer.concat([Buffer.from("API_KEY=sk_live_NULCANARY"), Buffer.from([0]), Buffer.from("tail\n")]));
    const r = await lessor(home, ["run", "--agent", "claude", "--no-sandbox", "--env-file", file, "--", "true"], { cwd: PROJECT, timeoutMs: 10_000 });
    assert.ok(!r.stderr.includes("NULCANARY"), `the env file's value is on stderr: ${r.stderr}`);
    assertCleanRefusal(r, "lessor run --no-sandbox --env-file (NUL)");
    assert.equal(r.code, 2, r.stderr);
  });

  test("an --env-file parse error quotes nothing of the line: an unquoted multi-line private key is not shown", async () => {
    // docs/cli/run.md: a mistake is "an error naming the file, line and column …, never the value".
    const home = await initHome();
    const keyLine = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCPEMCANARY+ab/Q==";
    const file = join(ROOT, "pem.env");
    writeFileSync(file, `PRIVATE_KEY=-----BEGIN PRIVATE KEY-----\n${keyLine}\n-----END PRIVATE KEY-----\n`);
    const [run, imp] = await Promise.all([
      lessor(home, ["run", "--agent", "claude", "--no-sandbox", "--env-file", file, "--", "true"], { cwd: PROJECT }),
      lessor(home, ["secret", "import", file]),
    ]);
    assert.equal(imp.code, 2, imp.stderr);
    assert.ok(!imp.stderr.includes(keyLine.slice(0, 20)), `secret import quotes the file: ${imp.stderr}`);
    assertCleanRefusal(run, "lessor run --env-file (PEM)");
    assert.equal(run.code, 2, run.stderr);
    assert.match(run.stderr, /pem\.env:2:1/, "names file, line and column");
    assert.ok(!run.stderr.includes(keyLine.slice(0, 20)), `lessor run quotes the private key's line: ${run.stderr}`);
  });

  test("lessor inject -i /dev/zero and lessor run --env-file /dev/zero are refused at a cap, not read for ever", async () => {
    // secret set and secret import stop at a cap (value-source.ts); the template and the env file do not.
    const home = await initHome();
    const [inject, run] = await Promise.all([
      lessor(home, ["inject", "-i", "/dev/zero", "--agent", "claude"], { timeoutMs: 6_000 }),
      lessor(home, ["run", "--agent", "claude", "--no-sandbox", "--env-file", "/dev/zero", "--", "true"], { cwd: PROJECT, timeoutMs: 6_000 }),
    ]);
    assertCleanRefusal(inject, "lessor inject -i /dev/zero");
    assertCleanRefusal(run, "lessor run --env-file /dev/zero");
    assert.equal(inject.code, 2, inject.stderr);
    assert.equal(run.code, 2, run.stderr);
  });

  test("lessor inject refuses a template that is not UTF-8 (naming the line) rather than rewrite its bytes", async () => {
    const home = await initHome();
    const template = Buffer.from("name: caf\xe9\nport: 5432\n", "latin1"); // a Latin-1 config, no reference in it
    const r = await lessor(home, ["inject", "-i", "-", "--agent", "claude"], { input: template });
    assertCleanRefusal(r, "lessor inject (latin-1 template)");
    if (r.code === 0) assert.deepEqual(r.stdoutBytes, template, "the template's other bytes must come out as they are");
    else assert.equal(r.code, 2, r.stderr);
  });

  test("lessor run refuses an --env-file that is not UTF-8 (naming the line) rather than alter a value", async () => {
    // docs/cli/run.md: a value that "is not UTF-8 cannot go in an environment variable; that is an error".
    const home = await initHome();
    const file = join(ROOT, "latin1.env");
    writeFileSync(file, Buffer.from("GREETING=caf\xe9\n", "latin1"));
    const r = await lessor(home, ["run", "--agent", "claude", "--no-sandbox", "--env-file", file, "--", "sh", "-c", 'printf %s "$GREETING"'], { cwd: PROJECT });
    assertCleanRefusal(r, "lessor run --env-file (latin-1)");
    assert.notDeepEqual(r.stdoutBytes, Buffer.from("caf\u{fffd}"), "the value reached the command altered, without a word");
    assert.equal(r.code, 2, r.stderr);
  });
});

describe("lessor's own files", () => {
  test('[keys] command = ["s\\u0000h"] in lessor.toml is a config error naming the field, not an internal error', async () => {
    const home = await initHome();
    writeConfig(home, '[keys]\nfile = "no-such-key"\ncommand = ["s\\u0000h", "ENVCANARYarg"]\n');
    const r = await lessor(home, ["secret", "list"]);
    assertCleanRefusal(r, "[keys] command with a NUL");
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /lessor\.toml: \[keys\] command/);
  });

  test("a lessor.db emptied (or removed) after init is refused, naming the file and the fix: never opened as a new vault", async () => {
    // docs/security.md: "a truncated database … every command ends in a clean refusal naming the file or
    // the damage"; "a wiped trail … is refused".
    const home = await initHome();
    assert.equal((await lessor(home, ["secret", "set", "precious"], { input: CANARY })).code, 0);
    const before = await lessor(home, ["audit", "verify"]);
    assert.equal(before.code, 0, before.stderr);
    for (const f of readdirSync(home)) if (f.startsWith("lessor.db-")) rmSync(join(home, f));
    truncateSync(join(home, "lessor.db"), 0);
    const [list, verify] = await Promise.all([lessor(home, ["secret", "list"]), lessor(home, ["audit", "verify"])]);
    assertCleanRefusal(list, "secret list on an emptied lessor.db");
    assert.doesNotMatch(verify.stdout, /^audit trail verified/, `audit verify vouches for an emptied database: ${verify.stdout}`);
    assert.notEqual(list.code, 0, `secret list on an emptied lessor.db: ${list.stdout}${list.stderr}`);
    assert.match(list.stderr, /lessor\.db/, "names the file");
  });
});
