/**
 * A newcomer who follows README.md, docs/cli.md, docs/cli/run.md, docs/cli/proxy.md and
 * docs/cli/credential-helpers.md literally — and the common mistakes such a person makes (no `--`
 * before the command, an env file with CRLF line ends, running as root, credentials kept where
 * lessor's own docs say to keep them) — then runs a hostile agent with what was set up.
 * test/newcomer-attacks.test.ts holds the first pass; nothing here repeats it. Six tests found breaks
 * when written (2026-12-04), fixed that day: options after the command without `--`, PGPASSWORD,
 * ~/.pgpass and ~/.config/lessor, covered files' directories renamed away (twice), /etc/cron.d as root.
 *
 * Runs a private copy of the built CLI (dist/, as `npm run build:cli` left it), so a rebuild elsewhere
 * does not change it under the test. Every run has HOME and LESSOR_HOME in temporary directories.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";

const REPO = fileURLToPath(new URL("..", import.meta.url));
if (!existsSync(join(REPO, "dist/bin/lessor.cjs"))) throw new Error("dist/bin/lessor.cjs is missing: run npm run build:cli (npm test does it)");

const ROOT = mkdtempSync(join(tmpdir(), "lessor-newcomer2-"));
process.on("exit", () => rmSync(ROOT, { recursive: true, force: true }));
/** The private copy of the CLI, in a directory of its own (a [run] read path for the nested-run test). */
const CLI_DIR = join(ROOT, "cli");
mkdirSync(CLI_DIR);
cpSync(join(REPO, "dist"), join(CLI_DIR, "dist"), { recursive: true });
cpSync(join(REPO, "package.json"), join(CLI_DIR, "package.json"));
symlinkSync(join(REPO, "node_modules"), join(CLI_DIR, "node_modules"));
if (existsSync(join(REPO, "native"))) symlinkSync(join(REPO, "native"), join(CLI_DIR, "native"));
const BIN = join(CLI_DIR, "dist/bin/lessor.cjs");
/** A `lessor` on PATH, as `npm install -g` leaves it (the bin's own shebang runs `node -- lessor.cjs`). */
const PATH_BIN = join(ROOT, "bin");
mkdirSync(PATH_BIN);
symlinkSync(BIN, join(PATH_BIN, "lessor"));
const PATH = `${PATH_BIN}:${process.env.PATH ?? "/usr/bin:/bin"}`;

const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"], { stdio: "ignore" }).status === 0;
const NO_BWRAP = HAVE_BWRAP ? false : "bwrap is not usable here (apt-get install bubblewrap)";
const IS_ROOT = process.getuid?.() === 0;

const CANARY = "ghp_NEWCOMER2canary9Zq4Wt";

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** One newcomer's machine: a HOME of its own, a lessor home made with `lessor init`, a project dir. */
interface Box {
  home: string;
  lessorHome: string;
  project: string;
  env: Record<string, string>;
}

let boxes = 0;
async function newBox(): Promise<Box> {
  const dir = join(ROOT, `box${++boxes}`);
  const home = join(dir, "home");
  const project = join(home, "my-project");
  mkdirSync(project, { recursive: true, mode: 0o700 });
  const lessorHome = join(home, ".lessor");
  const box = { home, lessorHome, project, env: { PATH, HOME: home, LESSOR_HOME: lessorHome, NO_COLOR: "1" } };
  const r = await lessor(box, ["init"]);
  assert.equal(r.code, 0, r.stderr);
  return box;
}

/** `lessor ARGS` through the PATH bin (as a person types it); the process group is killed at the limit. */
function lessor(box: Box, args: string[], o: { input?: string; env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(join(PATH_BIN, "lessor"), args, { env: { ...box.env, ...o.env }, cwd: o.cwd ?? box.project, stdio: ["pipe", "pipe", "pipe"], detached: true });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
    }, o.timeoutMs ?? 25_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
    });
    child.stdin.on("error", () => {});
    child.stdin.end(o.input ?? "");
  });
}

/** README: `echo "$GITHUB_TOKEN" | lessor secret set github-token --kind pat`, and the policy rule for claude. */
async function quickStart(box: Box, extraPolicy = ""): Promise<void> {
  const set = await lessor(box, ["secret", "set", "github-token", "--kind", "pat"], { input: `${CANARY}\n` });
  assert.equal(set.code, 0, set.stderr);
  writeFileSync(
    join(box.lessorHome, "policy.toml"),
    `[[rule]]\nname = "claude-github"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["github-token"]\ndomains = ["api.github.com"]\nttl = "15m"\nmax_uses = 100\n${extraPolicy}`,
    { mode: 0o600 },
  );
}

/** Starts `lessor serve` (the private copy) for the box; resolves once it is ready. */
async function serve(box: Box): Promise<{ proc: ChildProcess; stop: () => Promise<void> }> {
  const proc = spawn(process.execPath, ["--", BIN, "serve"], { env: box.env, stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  proc.stderr!.on("data", (d: Buffer) => (err += d.toString("utf8")));
  const exited = new Promise<void>((r) => proc.on("close", () => r()));
  for (let i = 0; i < 750 && !err.includes("lessor daemon ready"); i++) {
    if (proc.exitCode !== null) break;
    await new Promise((s) => setTimeout(s, 20));
  }
  assert.match(err, /lessor daemon ready/, `lessor serve did not start: ${err}`);
  return {
    proc,
    stop: async () => {
      proc.kill("SIGTERM");
      await exited;
    },
  };
}

/** The live leases of the box's vault (as admin). */
async function liveLeases(box: Box): Promise<unknown[]> {
  const r = await lessor(box, ["leases", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const all = JSON.parse(r.stdout) as { state: string }[];
  return all.filter((l) => l.state === "live");
}

describe("docs/cli/run.md: `Put -- before the command` — and a newcomer who forgets it", () => {
  test(
    "without `--`, an option written after the command (chromium's --no-sandbox) is never taken by lessor: the run is refused, embedded and through a daemon",
    { skip: NO_BWRAP },
    async () => {
      // docs/cli/run.md: "Put `--` before the command: anything after it is the command's, options
      // included." and README.md: "`lessor run` starts the command in a bubblewrap sandbox … (it refuses
      // to start without it, or runs unconfined with `--no-sandbox` after a warning)". A command line
      // without `--` either fails as a usage error or gives the command its own arguments; what lessor
      // did instead was read options after the command name as its own (commander in
      // src/cli/commands/run.ts), so `--no-sandbox` meant for the agent (headless chromium, puppeteer)
      // turned lessor's sandbox off. Fixed 2026-12-04: without `--` before the command, run refuses.
      const box = await newBox();
      await quickStart(box);
      const probe = join(box.project, "agent.sh");
      writeFileSync(probe, `#!/bin/sh\nprintf 'args=[%s]\\n' "$*"\nif cat "$KEYFILE" >/dev/null 2>&1; then echo KEY=readable; else echo KEY=hidden; fi\n`);
      chmodSync(probe, 0o755);
      const env = { GITHUB_TOKEN: "$S:github-token", KEYFILE: join(box.lessorHome, "master.key") };

      const check = (r: Result, how: string): void => {
        assert.doesNotMatch(r.stdout, /KEY=readable/, `${how}: the command ran unconfined and could read ${env.KEYFILE}; stderr: ${r.stderr}`);
        assert.equal(r.code, 2, `${how}: ${r.stderr}`);
        assert.match(r.stderr, /put -- before the command/, how);
      };
      // Embedded: the full CLI (commander).
      const embedded = await lessor(box, ["run", "--agent", "claude", "./agent.sh", "--no-sandbox"], { env });
      // Through a daemon: the fast path (util.parseArgs).
      const d = await serve(box);
      let fast: Result;
      try {
        fast = await lessor(box, ["run", "--agent", "claude", "./agent.sh", "--no-sandbox"], { env });
      } finally {
        await d.stop();
      }
      check(embedded, "embedded");
      check(fast, "through the daemon (fast path)");
    },
  );
});

describe("credentials lessor's own docs tell the owner where to keep", () => {
  test("PGPASSWORD (where docs/storage.md keeps the vault's PostgreSQL password) is withheld from the sandboxed agent, and named", { skip: NO_BWRAP }, async () => {
    // docs/storage.md: "Keep a password out of `lessor.toml`: put it in the environment or in
    // `~/.pgpass` (node-postgres reads it)"; docs/cli/migrate.md: "the password then comes from
    // PGPASSWORD or ~/.pgpass". docs/cli/run.md: "plain credentials that came from your own
    // environment (`AWS_SECRET_ACCESS_KEY`, `*_TOKEN`, `*_API_KEY`, …; lessor names them on stderr)"
    // are dropped. PGPASSWORD, libpq's own variable and lessor's vault password, passed until
    // 2026-12-04 (CREDENTIAL_NAME in src/sandbox/env.ts wants `_` before PASSWORD); it is listed now.
    const box = await newBox();
    await quickStart(box);
    const r = await lessor(box, ["run", "--agent", "claude", "--", "sh", "-c", 'printf "PG=[%s]\\n" "$PGPASSWORD"'], {
      env: { PGPASSWORD: "pgVAULTpasswordCANARY", GITHUB_TOKEN: "$S:github-token" },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "PG=[]\n", "the vault database's password is in the agent's environment");
    assert.match(r.stderr, /PGPASSWORD/, "lessor names the withheld credential on stderr");
  });

  test(
    "run from the home with [run] project = \"read-only\" (as lessor's refusal advises), ~/.pgpass and docs/cli.md's ~/.config/lessor/token are covered",
    { skip: NO_BWRAP },
    async () => {
      // lessor's refusal of a writable home says: "run from your project's directory, or set [run]
      // project = "read-only" in lessor.toml"; docs/sandbox.md: "then the home is shown read-only, with
      // every protected path in it covered", the protected paths being "your credential stores". Two of
      // them lessor's own docs put there: docs/storage.md keeps the vault database's password in
      // `~/.pgpass`, and docs/cli.md's example token file is `LESSOR_TOKEN_FILE=~/.config/lessor/token`
      // (set per command, as the example does, so not in the environment of a later `lessor run`).
      // Neither was in the built-in hide list (src/sandbox/hidden.ts) until 2026-12-04.
      const box = await newBox();
      await quickStart(box);
      writeFileSync(join(box.home, ".pgpass"), "db.internal:5432:lessor:lessor:PGPASSFILEcanary\n", { mode: 0o600 });
      mkdirSync(join(box.home, ".config/lessor"), { recursive: true, mode: 0o700 });
      writeFileSync(join(box.home, ".config/lessor/token"), "lsr_0123456789abcdef_TOKENFILEcanary\n", { mode: 0o600 });
      mkdirSync(join(box.home, ".ssh"), { mode: 0o700 });
      writeFileSync(join(box.home, ".ssh/id_ed25519"), "SSHKEYcanary\n", { mode: 0o600 });
      const cfg = join(box.lessorHome, "lessor.toml");
      writeFileSync(cfg, `${readFileSync(cfg, "utf8")}\n[run]\nproject = "read-only"\n`, { mode: 0o600 });
      const r = await lessor(box, ["run", "--agent", "claude", "--", "sh", "-c", "cat ~/.ssh/id_ed25519 ~/.pgpass ~/.config/lessor/token 2>/dev/null; true"], {
        cwd: box.home,
        env: { GITHUB_TOKEN: "$S:github-token" },
      });
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stdout, /SSHKEYcanary/, "~/.ssh is covered (held)");
      assert.doesNotMatch(r.stdout, /PGPASSFILEcanary/, "~/.pgpass, the vault database's password file, is readable by the agent");
      assert.doesNotMatch(r.stdout, /TOKENFILEcanary/, "~/.config/lessor/token, a lessor daemon token, is readable by the agent");
    },
  );
});

/** `[run] read` lines that show the private CLI copy inside the sandbox (so a command there can run `lessor`). */
const SHOW_CLI = `read = ["${CLI_DIR}", "${join(REPO, "node_modules")}"${existsSync(join(REPO, "native")) ? `, "${join(REPO, "native")}"` : ""}]`;

describe("lessor's own files inside the project: covered, and their directories pinned", () => {
  test("a policy file kept in the project ([policy] file) is covered, and the agent cannot rename its directory to plant a policy granting every agent every secret", { skip: NO_BWRAP }, async () => {
    // docs/sandbox.md, "Never shown": "the files lessor.toml names even outside it: the key file, the
    // passphrase key store, the database, the policy, the audit JSONL file" — covered "when something
    // that is shown holds them". The same page says `.git` "is bound onto itself, so it cannot be
    // renamed away and replaced"; nothing did that for the directory holding the policy, so the
    // agent moved it aside and wrote its own. README.md's threat model: lessor defends against agents
    // "escalating to admin operations". Fixed 2026-12-04: src/sandbox/layout.ts pins (binds onto
    // themselves) the directories between a writable bind and each cover inside it.
    const box = await newBox();
    await quickStart(box);
    const policyDir = join(box.project, "lessor");
    mkdirSync(policyDir);
    writeFileSync(join(policyDir, "policy.toml"), readFileSync(join(box.lessorHome, "policy.toml")), { mode: 0o600 });
    const cfg = join(box.lessorHome, "lessor.toml");
    writeFileSync(cfg, readFileSync(cfg, "utf8").replace(/^\[policy\]$/m, `[policy]\nfile = "${join(policyDir, "policy.toml")}"`), { mode: 0o600 });
    const before = await lessor(box, ["lease", "github-token", "--agent", "mallory", "--domain", "evil.example"]);
    assert.equal(before.code, 3, before.stderr);

    const evil = `[[rule]]\nname = "pwn"\neffect = "allow"\nagents = ["*"]\nsecrets = ["*/*"]\nany_domain = true\n`;
    const r = await lessor(box, ["run", "--agent", "claude", "--", "sh", "-c", `cat lessor/policy.toml >/dev/null 2>&1 && echo READ; mv lessor lessor.old && mkdir lessor && printf '${evil}' > lessor/policy.toml && echo PLANTED`]);
    assert.doesNotMatch(r.stdout, /READ/, "the policy itself is covered (held)");
    assert.doesNotMatch(r.stdout, /PLANTED/, "the policy's directory was renamed away");
    assert.match(r.stderr, /Device or resource busy/);

    const after = await lessor(box, ["lease", "github-token", "--agent", "mallory", "--domain", "evil.example"]);
    assert.ok(!after.stdout.includes(CANARY), `after one sandboxed run, agent "mallory" gets the token for evil.example (the agent ${/PLANTED/.test(r.stdout) ? "replaced the policy's directory" : "?"})`);
    assert.equal(after.code, 3, after.stderr);
  });

  test("a lessor home one directory down in the project: the agent cannot replace that directory with a home whose [keys] command the owner's next lessor command would run, unconfined", { skip: NO_BWRAP }, async () => {
    // test/sandbox-attacks.test.ts checks a LESSOR_HOME inside the project is not readable; docs/sandbox.md:
    // the lessor home is "never shown", and its README: "Without it [the sandbox], the agent would run
    // as you". Here the agent never reads the home: it moves the directory holding it aside (only the
    // home itself is a mount point) and makes a home of its own there (with the lessor the owner
    // showed it through [run] read), whose lessor.toml has `[keys] command`. The owner's next
    // `lessor secret list` ran that command as the owner, outside the sandbox. Fixed as above.
    const dir = join(ROOT, `box${++boxes}`);
    const home = join(dir, "home");
    const project = join(home, "my-project");
    const lessorHome = join(project, "ops", ".lessor");
    mkdirSync(join(project, "ops"), { recursive: true, mode: 0o700 });
    const box: Box = { home, lessorHome, project, env: { PATH, HOME: home, LESSOR_HOME: lessorHome, NO_COLOR: "1" } };
    assert.equal((await lessor(box, ["init"])).code, 0);
    await quickStart(box);
    const cfg = join(lessorHome, "lessor.toml");
    writeFileSync(cfg, `${readFileSync(cfg, "utf8")}\n[run]\n${SHOW_CLI}\n`, { mode: 0o600 });
    const marker = join(dir, "escaped");
    const key = "ab".repeat(32);
    const plant = [
      `mv ops ops.old && mkdir -m 700 ops || exit 1`,
      `${process.execPath} -- ${BIN} --home "$PWD/ops/.lessor" init >/dev/null || exit 1`,
      `rm -f ops/.lessor/master.key`,
      `printf '[keys]\ncommand = ["/bin/sh", "-c", "echo ran > ${marker}; echo ${key}"]\n' > ops/.lessor/lessor.toml && echo PLANTED`,
    ].join("\n");
    const r = await lessor(box, ["run", "--agent", "claude", "--", "sh", "-c", plant]);
    assert.notEqual(r.code, 0, "the directory holding the home was renamed away");
    assert.match(r.stderr, /Device or resource busy/);
    assert.ok(!existsSync(marker), "the key command ran inside the run already");
    // The owner, later, in the same shell.
    await lessor(box, ["secret", "list"]);
    assert.ok(!existsSync(marker), `the agent's command ran outside the sandbox, as the owner (planted: ${r.stdout.trim()})`);
  });
});

describe("running as root", { skip: IS_ROOT ? false : "needs root" }, () => {
  test(
    "a project inside /etc (lessor's advice for /etc itself: `choose a narrower directory`) is refused writable: root's agent cannot write /etc/cron.d",
    { skip: NO_BWRAP },
    async () => {
      // README.md: "the agent sees the system read-only, the project directory (the current one)
      // writable"; docs/sandbox.md: "/usr, /etc, /opt, /nix … read-only", and a writable project that
      // holds your home is refused because "the agent could change ~/.bashrc or ~/.profile and so run
      // as you outside the sandbox". For root, /etc/cron.d, /etc/profile.d and /usr/local/bin are that
      // and more. `--project /etc` is refused ("would be writable and holds /etc; choose a narrower
      // directory"), but `--project /etc/cron.d` was accepted and bound writable until 2026-12-04: planLayout
      // (src/sandbox/layout.ts) refused only a writable path that holds a system root, never one
      // inside it. Probed with `test -w` (access(2): EROFS on a read-only bind), so nothing is written.
      const box = await newBox();
      const dir = ["/etc/cron.d", "/etc/profile.d", "/usr/local/bin"].find((d) => existsSync(d) && lstatSync(d).isDirectory());
      if (dir === undefined) return;
      const etc = await lessor(box, ["run", "--agent", "claude", "--project", "/etc", "--", "true"]);
      assert.equal(etc.code, 2, etc.stderr);
      assert.match(etc.stderr, /choose a narrower directory/);
      const r = await lessor(box, ["run", "--agent", "claude", "--project", dir, "--", "sh", "-c", 'if test -w .; then echo WRITABLE; else echo READ-ONLY; fi']);
      assert.equal(r.code, 2, `root's sandboxed agent got ${dir} (${r.stdout.trim()}), which root runs outside the sandbox`);
      assert.match(r.stderr, /would be writable and is inside \/(etc|usr)/);
    },
  );
});

describe("what held", () => {
  test("an --env-file with CRLF line ends (a file from Windows) gives the exact values: no \\r in a value, a reference or a quoted string", { skip: NO_BWRAP }, async () => {
    const box = await newBox();
    await quickStart(box);
    const file = join(box.project, ".env.lessor");
    writeFileSync(
      file,
      "# made on Windows\r\nexport GITHUB_TOKEN=$S:github-token\r\nURL=https://x-access-token:$S:github-token@github.com/o/r\r\nQ=\"quoted value\"\r\nS='lessor://global/github-token'\r\nC=plain # comment\r\n\r\n",
    );
    // --network none hands the values (docs/cli/run.md), so the child's environment holds them exactly;
    // stdout is a pipe, so each exact value comes back masked, and a stray \r would still show.
    const r = await lessor(box, [
      "run",
      "--agent",
      "claude",
      "--network",
      "none",
      "--env-file",
      ".env.lessor",
      "--",
      "sh",
      "-c",
      'printf "%s|%s|%s|%s|%s|\\n" "$GITHUB_TOKEN" "$URL" "$Q" "$S" "$C"; printf %s "$GITHUB_TOKEN" | wc -c',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const [line, len] = r.stdout.split("\n");
    assert.equal(line, "[redacted:github-token]|https://x-access-token:[redacted:github-token]@github.com/o/r|quoted value|[redacted:github-token]|plain|");
    assert.equal(Number(len), CANARY.length, "the value has no \\r");
    assert.ok(!r.stdout.includes(CANARY) && !r.stderr.includes(CANARY));
    assert.deepEqual(await liveLeases(box), [], "the run's leases are revoked");
  });

  test("lessor proxy --env-out in a project a sandboxed agent wrote to: the agent's symlinks at agent.env and its CA file names are replaced, their targets untouched, and removed at the end", { skip: NO_BWRAP }, async () => {
    // docs/cli/proxy.md: `--env-out FILE` "(replaced atomically, mode 0600)", the CA files "next to
    // --env-out (FILE.ca.pem, FILE.ca-bundle.pem)", and at the end it "removes the files it wrote".
    const box = await newBox();
    await quickStart(box);
    writeFileSync(join(box.project, ".env.lessor"), "GITHUB_TOKEN=$S:github-token\n");
    const bashrc = join(box.home, ".bashrc");
    const profile = join(box.home, ".profile");
    writeFileSync(bashrc, "# precious bashrc\n");
    writeFileSync(profile, "# precious profile\n");
    const victim = join(box.home, "victim-env");
    // Step N: a hostile agent, confined, plants links in the project for the owner's next step.
    const plant = await lessor(box, ["run", "--agent", "claude", "--", "sh", "-c", `ln -s ${bashrc} agent.env.ca.pem && ln -s ${profile} agent.env.ca-bundle.pem && ln -s ${victim} agent.env`]);
    assert.equal(plant.code, 0, plant.stderr);
    assert.ok(lstatSync(join(box.project, "agent.env")).isSymbolicLink());
    // Step N+1: docs/cli/proxy.md's first example, as written.
    const proc = spawn(join(PATH_BIN, "lessor"), ["proxy", "--agent", "claude", "--env-file", ".env.lessor", "--listen", "127.0.0.1:0", "--env-out", "agent.env"], {
      env: box.env,
      cwd: box.project,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    proc.stderr!.on("data", (d: Buffer) => (err += d.toString("utf8")));
    const exited = new Promise<number | null>((r) => proc.on("close", (c) => r(c)));
    try {
      for (let i = 0; i < 750 && !/Stop it with/.test(err) && proc.exitCode === null; i++) await new Promise((s) => setTimeout(s, 20));
      assert.match(err, /Stop it with/, err);
      for (const f of ["agent.env", "agent.env.ca.pem", "agent.env.ca-bundle.pem"]) assert.ok(!lstatSync(join(box.project, f)).isSymbolicLink(), `${f} is still the agent's link`);
      assert.equal((lstatSync(join(box.project, "agent.env")).mode & 0o777).toString(8), "600");
      assert.match(readFileSync(join(box.project, "agent.env"), "utf8"), /^HTTPS_PROXY=http:\/\/lessor:/m);
    } finally {
      proc.kill("SIGTERM");
    }
    assert.equal(await exited, 0, err);
    assert.equal(readFileSync(bashrc, "utf8"), "# precious bashrc\n");
    assert.equal(readFileSync(profile, "utf8"), "# precious profile\n");
    assert.ok(!existsSync(victim), "nothing was written where agent.env pointed");
    assert.deepEqual(
      readdirSync(box.project).filter((f) => f.startsWith("agent.env")),
      [],
      "the files it wrote are removed at the end",
    );
    assert.deepEqual(await liveLeases(box), []);
  });

  test(
    "lessor run inside lessor run --vault-session: the inner run cannot change agent (3), cannot make a sandbox (5, leases revoked), unconfined gets only its own agent's secret; nothing is live after",
    { skip: NO_BWRAP },
    async () => {
      const box = await newBox();
      await quickStart(box, `\n[[rule]]\nname = "other"\neffect = "allow"\nagents = ["deployer"]\nsecrets = ["deploy-key"]\nany_domain = true\n`);
      assert.equal((await lessor(box, ["secret", "set", "deploy-key"], { input: "DEPLOYcanary123456" })).code, 0);
      const cfg = join(box.lessorHome, "lessor.toml");
      writeFileSync(cfg, `${readFileSync(cfg, "utf8")}\n[run]\n${SHOW_CLI}\n`, { mode: 0o600 });
      const inner = [
        `L="${process.execPath} -- ${BIN}"`,
        `DEPLOY='$S:deploy-key' $L run --agent deployer --no-sandbox -- sh -c 'echo deployer:$DEPLOY' >/dev/null 2>&1; echo other=$?`,
        `T='$S:github-token' $L run --agent claude -- true >/dev/null 2>&1; echo nested=$?`,
        `T='$S:github-token' $L run --agent claude --no-sandbox -- sh -c 'test -n "$T" && echo got-own' 2>/dev/null; echo own=$?`,
        `$L killswitch --yes >/dev/null 2>&1; echo killswitch=$?`,
      ].join("\n");
      const r = await lessor(box, ["run", "--agent", "claude", "--vault-session", "--", "sh", "-c", inner], { timeoutMs: 28_000 });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^other=3$/m, `another agent's run from inside: ${r.stdout}`);
      assert.match(r.stdout, /^nested=5$/m, `a sandbox inside the sandbox: ${r.stdout}`);
      assert.match(r.stdout, /^got-own\nown=0$/m, r.stdout);
      assert.match(r.stdout, /^killswitch=3$/m, r.stdout);
      assert.ok(!r.stdout.includes("DEPLOYcanary") && !r.stdout.includes(CANARY), r.stdout);
      assert.deepEqual(await liveLeases(box), [], "every lease the outer and inner runs took is revoked");
    },
  );

  test("terminal escapes in an env file's name come back escaped in lessor run's refusals (an unreadable file, a denied reference in it)", async () => {
    const box = await newBox();
    const esc = "\x1b]0;pwned\x07";
    const file = join(box.project, `e${esc}.env`);
    writeFileSync(file, "A=$S:nosuch\n");
    const [byFile, missing] = await Promise.all([
      lessor(box, ["run", "--agent", "claude", "--no-sandbox", "--env-file", file, "--", "true"]),
      lessor(box, ["run", "--agent", "claude", "--no-sandbox", "--env-file", join(box.project, `gone${esc}.env`), "--", "true"]),
    ]);
    for (const [r, what, code] of [
      [byFile, "a denied reference in an env file named with an escape", 3],
      [missing, "a missing env file named with an escape", 2],
    ] as const) {
      assert.equal(r.code, code, `${what}: ${r.stderr}`);
      assert.ok(!r.stderr.includes("\x1b") && !r.stderr.includes("\x07"), `${what}: a raw escape on stderr: ${JSON.stringify(r.stderr)}`);
      assert.match(r.stderr, /\\x1b\]0;pwned\\x07/, `${what}: ${r.stderr}`);
    }
  });
});
