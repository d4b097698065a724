/**
 * A newcomer who follows README.md and the docs literally, on a fresh clone, against the BUILT CLI
 * (dist/bin/lessor.cjs) as real child processes, each with a fresh lessor home and HOME. The breaks
 * are doc examples and doc promises that, followed as written, leave a value where the docs say it
 * never goes; the plain tests are the README's quick start holding as documented.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import { cliHome, runCli, runCliWithEnv, seedHome } from "./cli-harness.js";
import { grant, tempDir } from "./helpers.js";

const REPO = fileURLToPath(new URL("..", import.meta.url));
const CANARY = "ghp_NEWCOMERcanary7Qx2Lm9Vb4Tz8Kp1Wd6Rf3Hs0";
const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"], { stdio: "ignore" }).status === 0;
const NO_BWRAP = HAVE_BWRAP ? false : "bwrap is not usable here (apt-get install bubblewrap)";
const SYS_PATH = "/usr/local/bin:/usr/bin:/bin";

/** Every process's command line on this machine that holds `needle` (what `ps` shows every local user). */
function cmdlinesHolding(needle: string): string[] {
  const hits: string[] = [];
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, "latin1").split("\0").join(" ");
      if (argv.includes(needle)) hits.push(`${pid}: ${argv.replaceAll(needle, "<CANARY>")}`);
    } catch {
      // gone meanwhile
    }
  }
  return hits;
}

describe("README quick start, as written", () => {
  test("lessor init makes a 0700 home whose key, config, policy and database are 0600; the starter policy grants nothing", async () => {
    const dir = tempDir("lessor-newcomer-init-");
    const home = join(dir, ".lessor");
    const r = await runCliWithEnv(["init"], { env: { HOME: dir, PATH: SYS_PATH } });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(statSync(home).mode & 0o777, 0o700);
    for (const f of ["master.key", "lessor.toml", "policy.toml", "lessor.db"]) assert.equal(statSync(join(home, f)).mode & 0o777, 0o600, f);
    // The README's path needs no daemon: init must not send the newcomer to start one first.
    assert.match(r.stdout, /next: .*lessor secret set .*lessor run --agent/);
    assert.doesNotMatch(r.stdout, /then run: lessor serve/);
    const explain = await runCliWithEnv(["policy", "explain", "--agent", "claude", "--secret", "github-token", "--domain", "api.github.com"], { env: { HOME: dir, PATH: SYS_PATH } });
    assert.match(explain.stdout + explain.stderr, /deny/i);
  });

  test("`echo \"$GITHUB_TOKEN\" | lessor secret set …` then `lessor lease … | sed … | curl -H @-`: the pipe gets exactly the value, stderr only the lease id", async () => {
    const home = await cliHome();
    await seedHome(home, grant("claude-github", ["claude"], ["github-token"], ["api.github.com"]), []);
    const set = await runCli(["secret", "set", "github-token", "--kind", "pat"], { home, input: `${CANARY}\n` });
    assert.equal(set.code, 0, set.stderr);
    assert.ok(!set.stdout.includes(CANARY) && !set.stderr.includes(CANARY));
    const lease = await runCli(["lease", "github-token", "--agent", "claude", "--domain", "api.github.com"], { home });
    assert.equal(lease.code, 0, lease.stderr);
    assert.equal(lease.stdout, CANARY, "the value, its trailing newline from echo removed, none added");
    assert.ok(!lease.stderr.includes(CANARY));
    assert.match(lease.stderr, /^lessor: lease [0-9a-f-]{36} expires in 5m; used up by this print/);
    const audit = await runCli(["audit", "tail", "--json"], { home });
    assert.ok(!audit.stdout.includes(CANARY));
  });

  test("lessor run --no-sandbox prints its one warning line naming the key file before the command runs", async () => {
    const home = await cliHome();
    await seedHome(home, grant("g", ["claude"], ["github-token"], ["api.github.com"]), [{ name: "github-token", value: CANARY, kind: "pat" }]);
    const proj = tempDir("lessor-newcomer-proj-");
    const r = await runCli(["run", "--agent", "claude", "--no-sandbox", "--project", proj, "--", "sh", "-c", 'printf %s "$GITHUB_TOKEN"'], {
      home,
      env: { GITHUB_TOKEN: "$S:github-token" },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /^lessor: warning: --no-sandbox: the agent runs unconfined, as you: .*master\.key/);
    assert.equal(r.stdout, "[redacted:github-token]", "stdout a pipe: the value is masked");
  });
});

describe("docs/cli/run.md: how to give a command its value", () => {
  test(
    "docs/cli/run.md's recommended form for giving a command its value, followed literally with --network none (which hands the value), puts the value on no command line, where every local user would read it with ps",
    { skip: NO_BWRAP, timeout: 30_000 },
    async () => {
      // docs/cli/run.md: "References in ARGS are not resolved (a value on a command line is visible to
      // every user in ps); pass it through the environment, e.g. `lessor run … -- sh -c '…'`."
      // (it once said `sh -c 'tool --token "$TOKEN"'`, which put the value in tool's argv)
      // docs/security.md: "no example in the docs expands a value into a command's arguments."
      const doc = readFileSync(join(REPO, "docs/cli/run.md"), "utf8");
      const m = /pass it through the environment, e\.g\. `lessor run … -- sh -c '([^']*)'`/.exec(doc);
      assert.ok(m !== null, "docs/cli/run.md still shows how to give a command its value, in a form this test follows");
      const script = m[1]!;
      assert.match(script, /"\$TOKEN"/);

      const home = await cliHome();
      await seedHome(home, grant("g", ["claude"], ["tok"], ["api.example.com"]), [{ name: "tok", value: CANARY, kind: "pat" }]);
      const proj = tempDir("lessor-newcomer-ps-");
      // `tool`: any program that takes its token as an option; it runs for a moment, as real ones do.
      writeFileSync(join(proj, "tool"), `#!/bin/sh\n: > "${proj}/ran"\nsleep 2\n`);
      chmodSync(join(proj, "tool"), 0o755);

      const run = runCli(["run", "--agent", "claude", "--network", "none", "--project", proj, "--", "sh", "-c", script], {
        home,
        env: { TOKEN: "$S:tok", PATH: `${proj}:${SYS_PATH}` },
        timeoutMs: 20_000,
      });
      let done = false;
      void run.then(() => (done = true));
      const seen = new Set<string>();
      while (!done) {
        for (const h of cmdlinesHolding(CANARY)) seen.add(h);
        await new Promise((r) => setTimeout(r, 25));
      }
      const r = await run;
      assert.equal(r.code, 0, r.stderr);
      assert.ok(existsSync(join(proj, "ran")), "tool ran");
      assert.deepEqual(
        [...seen],
        [],
        `following docs/cli/run.md's example, the secret's value sat in a process's argv (read from /proc/PID/cmdline on the host, as ps does for any user):\n${[...seen].join("\n")}`,
      );
    },
  );
});

describe("docs/sandbox.md and docs/cli/run.md: plain credentials in your environment are withheld", () => {
  test(
    "well-known credential variables that do not end in a listed suffix (GITHUB_PAT, Terraform's TF_TOKEN_<host>, GitLab's CI_JOB_JWT) are withheld from the sandboxed agent and named on stderr",
    { skip: NO_BWRAP, timeout: 30_000 },
    async () => {
      // docs/sandbox.md ("the environment"): withheld are "plain credentials from your environment —
      // AWS_SECRET_ACCESS_KEY, PGPASSWORD, MYSQL_PWD, … and other well-known names, any name ending in
      // _TOKEN, _SECRET, _PASSWORD, _API_KEY, … — which lessor names in one line on stderr."
      // docs/cli/run.md: "plain credentials that came from your own environment … lessor names them on stderr".
      const home = await cliHome();
      const proj = tempDir("lessor-newcomer-env-");
      const creds: Record<string, string> = {
        GITHUB_PAT: `${CANARY}a`, // R's gh/usethis/remotes and many scripts read GitHub's token here
        TF_TOKEN_app_terraform_io: `${CANARY}b`, // Terraform CLI's documented credential variable
        CI_JOB_JWT: `${CANARY}c`, // GitLab CI's job JWT
      };
      const r = await runCli(["run", "--agent", "claude", "--network", "none", "--project", proj, "--", "/usr/bin/env"], {
        home,
        env: creds,
        timeoutMs: 20_000,
      });
      assert.equal(r.code, 0, r.stderr);
      const leaked = r.stdout.split("\n").filter((l) => l.includes(CANARY)).map((l) => l.replace(/=.*/, "=<CANARY…>"));
      assert.deepEqual(leaked, [], `credentials from the owner's environment reached the sandboxed command: ${leaked.join(", ")}`);
      const named = /^lessor: not passed to the sandboxed command \(credentials in your environment\): (.*?);/m.exec(r.stderr)?.[1]?.split(", ") ?? [];
      for (const k of Object.keys(creds)) assert.ok(named.includes(k), `${k} is named on stderr: ${r.stderr}`);
      assert.ok(!r.stderr.includes(CANARY));
    },
  );
});

describe("files the quick starts write keep the modes the docs give", () => {
  test("secret export --output and inject -o write 0600 files (umask 022)", async () => {
    const home = await cliHome();
    await seedHome(home, grant("g", ["claude"], ["github-token"], ["api.github.com"]), [{ name: "github-token", value: CANARY, kind: "pat" }]);
    const dir = tempDir("lessor-newcomer-files-");
    const exp = await runCli(["secret", "export", "--output", join(dir, "backup.json")], { home });
    assert.equal(exp.code, 0, exp.stderr);
    assert.equal(statSync(join(dir, "backup.json")).mode & 0o777, 0o600);
    writeFileSync(join(dir, "t.tmpl"), "token: $S:github-token\n");
    const inj = await runCli(["inject", "-i", join(dir, "t.tmpl"), "-o", join(dir, "out.yml"), "--agent", "claude", "--domain", "api.github.com"], { home });
    assert.equal(inj.code, 0, inj.stderr);
    assert.equal(statSync(join(dir, "out.yml")).mode & 0o777, 0o600);
    assert.ok(!inj.stderr.includes(CANARY) && !exp.stderr.includes(CANARY));
  });
});
