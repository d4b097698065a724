/**
 * Attacks on lessor's git and docker credential helpers (docs/cli/credential-helpers.md), part 3:
 * what the other helpers git runs beside lessor do with lessor's answer, real git against a real
 * `git http-backend`, another local user running the helpers, docker's protocol edge cases. Does not
 * repeat test/credential-helper-attacks.test.ts, test/attack-credential-helpers-2.test.ts or
 * test/team-helpers-attacks-2.test.ts.
 *
 * Nothing leaves the machine: the HTTPS server listens on 127.0.0.1 and git reaches its name through
 * `http.curloptResolve` (no lookup).
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { appendFileSync, chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { initHome, openVault } from "../src/config/open-vault.js";
import { LocalCa } from "../src/proxy/ca.js";
import type { LeaseRecord } from "../src/base/types.js";
import { BIN } from "./cli-harness.js";
import { startServe } from "./daemon-harness.js";
import { makeBareRepo, serveGit } from "./fixtures/git-http-backend.js";
import { foreignHelpers, isLessorHelper } from "../src/cli/credentials/git-helpers.js";
import { repositoryRouting } from "../src/cli/credentials/repo-transport.js";

const GIT = "/usr/bin/git";
const HAVE_GIT = spawnSync(GIT, ["--version"]).status === 0;
const IS_ROOT = process.getuid?.() === 0;
const HAVE_SETPRIV = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "true"]).status === 0;
const DOCKER_BIN = join(dirname(BIN), "docker-credential-lessor.cjs");

const CANARY = "ghp_atk3_" + randomBytes(16).toString("hex");
const REG_CANARY = "dckr_atk3_" + randomBytes(16).toString("hex");
const ALL = [CANARY, REG_CANARY];

const root = mkdtempSync(join(tmpdir(), "lessor-cred-atk3-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const LESSOR_HOME = join(root, "lessor");
const SRV = join(root, "srv");
const CA_FILE = join(root, "ca.pem");

const POLICY = `
[[rule]]
name = "git"
effect = "allow"
agents = ["claude"]
secrets = ["github-token"]
domains = ["git.test.example"]

[[rule]]
name = "registry"
effect = "allow"
agents = ["builder"]
secrets = ["registry-token"]
domains = ["registry.test.example"]
`;

const DOCKER_TABLE = `
[docker]
"registry.test.example" = { secret = "registry-token", username = "robot", agent = "builder" }
`;

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, input?: string | Buffer, cwd = root, timeoutMs = 30_000): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, cwd, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
    });
    child.stdin.on("error", () => {});
    child.stdin.end(input ?? "");
  });
}

function noCanary(r: Ran, what: string, allowedOnStdout: string[] = []): void {
  for (const c of ALL) {
    assert.ok(!r.stderr.includes(c), `${what}: a secret on stderr`);
    if (!allowedOnStdout.includes(c)) assert.ok(!r.stdout.includes(c), `${what}: a secret on stdout`);
  }
}

async function withVault<T>(f: (v: Awaited<ReturnType<typeof openVault>>) => Promise<T>): Promise<T> {
  const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  try {
    return await f(vault);
  } finally {
    await vault.close();
  }
}
const leases = (): Promise<LeaseRecord[]> => withVault((v) => v.admin().listLeases({ limit: 10_000 }));
function live(ls: LeaseRecord[]): LeaseRecord[] {
  const now = Date.now();
  return ls.filter((l) => l.revokedAt === null && l.expiresAt > now && (l.maxUses === null || l.uses < l.maxUses));
}

let port = 0;
let server: https.Server;
const GOOD_AUTH = "Basic " + Buffer.from(`x-access-token:${CANARY}`).toString("base64");
/** Requests the git server received with the right credential. */
let authorized = 0;

function handle(req: IncomingMessage, res: ServerResponse, body: Buffer): void {
  if (String(req.headers.authorization ?? "") !== GOOD_AUTH) {
    res.writeHead(401, { "www-authenticate": 'Basic realm="lessor atk3"', "content-type": "text/plain" });
    res.end("authentication required\n");
    return;
  }
  authorized++;
  serveGit(req, res, body, SRV, "x-access-token");
}

/** The helper line exactly as docs/cli/credential-helpers.md has the owner write it (absolute paths here). */
const HELPER = (): string => `!'${process.execPath}' -- '${BIN}' git-credential --agent claude --secret github-token`;

/** A fresh $HOME for git with `globalConfig` as its ~/.gitconfig; returns the env git runs with. */
function gitHome(name: string, globalConfig: string): { home: string; env: NodeJS.ProcessEnv } {
  const home = join(root, name);
  mkdirSync(home, { recursive: true });
  writeFileSync(join(home, ".gitconfig"), globalConfig);
  return {
    home,
    env: {
      PATH: `/usr/bin:/bin`,
      HOME: home,
      GIT_CONFIG_NOSYSTEM: "1",
      GIT_TERMINAL_PROMPT: "0",
      GIT_ASKPASS: "",
      SSH_ASKPASS: "",
      LESSOR_HOME,
      NO_COLOR: "1",
    },
  };
}

/**
 * The owner's documented global setup for the test server (the URL carries the server's port): the
 * URL's helper list emptied, then lessor's line. `reset = false` leaves out the emptying line (the
 * setup as documented before it was added).
 */
function documentedSetup(reset = true): string {
  return [
    `[credential "https://git.test.example:${port}"]`,
    ...(reset ? [`\thelper =`] : []),
    `\thelper = "${HELPER().replace(/"/g, '\\"')}"`,
    `\tuseHttpPath = false`,
    `[http]`,
    `\tcurloptResolve = git.test.example:${port}:127.0.0.1`,
    `\tsslCAInfo = ${CA_FILE}`,
    "",
  ].join("\n");
}

describe("credential helper attacks, part 3", { skip: HAVE_GIT ? false : "git is not installed" }, () => {
  before(async () => {
    mkdirSync(SRV, { recursive: true });
    makeBareRepo(SRV, "repo", { "README.md": "atk3\n" });
    const ca = LocalCa.create({ permitted: ["git.test.example"] });
    writeFileSync(CA_FILE, ca.certPem);
    server = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("git.test.example") }, (req, res) => {
      const body: Buffer[] = [];
      req.on("data", (d: Buffer) => body.push(d));
      req.on("end", () => handle(req, res, Buffer.concat(body)));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as AddressInfo).port;

    await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    appendFileSync(join(LESSOR_HOME, "lessor.toml"), DOCKER_TABLE);
    writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
    await withVault(async (v) => {
      await v.admin().storeSecret({ name: "github-token", value: CANARY });
      await v.admin().storeSecret({ name: "registry-token", value: REG_CANARY });
    });
  });
  after(async () => {
    server?.closeAllConnections();
    await new Promise<void>((r) => server?.close(() => r()));
  });

  test("sanity: the documented global setup alone clones with lessor's answer and leaves nothing on disk", async () => {
    const { home, env } = gitHome("home-clean", documentedSetup());
    const before = authorized;
    const r = await run(GIT, ["clone", "-q", `https://git.test.example:${port}/repo.git`, join(home, "clone")], env, undefined, home);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(authorized > before);
    noCanary(r, "clone");
    assert.ok(!existsSync(join(home, ".git-credentials")));
    assert.deepEqual(live(await leases()), []);
  });

  test("beside a generic credential.helper (store), lessor answers only once the URL's helper list is emptied before its line, as documented; nothing reaches ~/.git-credentials and later requests go through the policy", async () => {
    // A very common ~/.gitconfig (or Apple's/Git for Windows' system gitconfig: osxkeychain, manager)
    // has a generic helper. git runs every helper matching the URL, and after the server accepts,
    // hands the answer to each one's `store`.
    const credFile = (home: string): boolean => existsSync(join(home, ".git-credentials")) && readFileSync(join(home, ".git-credentials"), "utf8").includes(CANARY);

    // lessor's line added without emptying the list first: lessor answers nothing, and says why.
    {
      const { home, env } = gitHome("home-store-noreset", `[credential]\n\thelper = store\n${documentedSetup(false)}`);
      const leasesBefore = (await leases()).length;
      const r = await run(GIT, ["clone", "-q", `https://git.test.example:${port}/repo.git`, join(home, "clone")], env, undefined, home);
      noCanary(r, "clone without the reset");
      assert.notEqual(r.code, 0, "git got no credential");
      assert.ok(!credFile(home), "nothing written to ~/.git-credentials");
      assert.equal((await leases()).length, leasesBefore, "no lease taken");
      assert.match(r.stderr, /would also hand the answer to credential\.helper = store \(global\)/);
      assert.match(r.stderr, new RegExp(`git config --global credential\\.https://git\\.test\\.example:${port}\\.helper ''`));
      const rows = await withVault((v) => v.admin().auditQuery({ limit: 100_000 }));
      assert.ok(
        rows.some((x) => x.type === "access_denied" && (x.reason ?? "").includes("git-credential") && (x.reason ?? "").includes("another credential helper: credential.helper = store")),
        "the refusal was audited",
      );
    }

    // The documented setup (the URL's list emptied, then lessor's line) beside the same generic helper.
    const { home, env } = gitHome("home-store", `[credential]\n\thelper = store\n${documentedSetup()}`);
    const r = await run(GIT, ["clone", "-q", `https://git.test.example:${port}/repo.git`, join(home, "clone")], env, undefined, home);
    assert.equal(r.code, 0, r.stderr);
    noCanary(r, "clone");
    const onDisk = credFile(home);

    // The owner then stops lending the token to git (the policy no longer grants it). The next clone
    // should get no credential from lessor; does it still get in?
    writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY.replace('secrets = ["github-token"]', 'secrets = ["no-such-secret"]'), { mode: 0o600 });
    let stillIn = false;
    try {
      const leasesBefore = (await leases()).length;
      const again = await run(GIT, ["clone", "-q", `https://git.test.example:${port}/repo.git`, join(home, "clone2")], env, undefined, home);
      stillIn = again.code === 0 && (await leases()).length === leasesBefore;
    } finally {
      writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
    }
    assert.ok(
      !onDisk && !stillIn,
      `docs/cli/credential-helpers.md promises "nothing is written to ~/.git-credentials": with the documented setup beside a generic credential.helper = store, the token was written there in plain text (${onDisk}), and after the policy stopped granting it git still authenticated with no lease taken (${stillIn})`,
    );
  });

  test("a hostile repository's own .git/config adding a credential.helper (store --file) gets no answer from lessor, so git writes nothing where it chose", async () => {
    // The routing/trust keys and useHttpPath from the repository's scope make the helper answer
    // nothing; a repository-scope credential.helper decides where git hands the credential too: after
    // the server accepts, git gives lessor's answer to every helper's `store`. Built-in `store` is no
    // program of the repository's own: only a file name.
    const { home, env } = gitHome("home-hostile", documentedSetup());
    const repo = join(root, "hostile-store-repo");
    const loot = join(root, "loot", "creds");
    mkdirSync(dirname(loot), { recursive: true });
    assert.equal((await run(GIT, ["init", "-q", repo], env, undefined, home)).code, 0);
    appendFileSync(
      join(repo, ".git", "config"),
      [`[remote "origin"]`, `\turl = https://git.test.example:${port}/repo.git`, `\tfetch = +refs/heads/*:refs/remotes/origin/*`, `[credential]`, `\thelper = store --file ${loot}`, ""].join("\n"),
    );
    const r = await run(GIT, ["fetch", "-q", "origin"], env, undefined, repo);
    noCanary(r, "fetch");
    const written = existsSync(loot) && readFileSync(loot, "utf8").includes(CANARY);
    assert.match(r.stderr, /this repository's own git config sets credential\.helper/);
    assert.ok(!written, `lessor answered git inside a repository whose own config adds credential.helper = store --file ${loot}; git wrote the token there (fetch exit ${r.code})`);
  });

  test("another local user (uid 65534) running either helper with the owner's LESSOR_HOME, or LESSOR_SOCKET naming the owner's running daemon, gets no secret", { skip: IS_ROOT && HAVE_SETPRIV ? false : "needs root and setpriv" }, async () => {
    // The owner's home sits in a directory everyone may enter, so only lessor's own modes stand in the way.
    const open = join(root, "open");
    mkdirSync(open, { recursive: true });
    chmodSync(root, 0o755);
    chmodSync(open, 0o755);
    const home = join(open, "lessor");
    await initHome({ home, env: { LESSOR_HOME: home } });
    appendFileSync(join(home, "lessor.toml"), DOCKER_TABLE);
    writeFileSync(join(home, "policy.toml"), POLICY, { mode: 0o600 });
    const vault = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      await vault.admin().storeSecret({ name: "github-token", value: CANARY });
      await vault.admin().storeSecret({ name: "registry-token", value: REG_CANARY });
    } finally {
      await vault.close();
    }
    const d = await startServe(home);
    try {
      const asNobody = (args: string[], input: string, env: NodeJS.ProcessEnv): Promise<Ran> =>
        run("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "--", process.execPath, ...args], { PATH: "/usr/bin:/bin", HOME: "/nonexistent", NO_COLOR: "1", ...env }, input, "/");
      const gitReq = "protocol=https\nhost=git.test.example\n\n";
      // The other user's own home, with the owner's [docker] table copied in, so that docker's helper gets as far as the daemon.
      const theirs = join(open, "theirs");
      mkdirSync(theirs, { mode: 0o700 });
      writeFileSync(join(theirs, "lessor.toml"), DOCKER_TABLE, { mode: 0o600 });
      chownSync(theirs, 65534, 65534);
      chownSync(join(theirs, "lessor.toml"), 65534, 65534);
      for (const env of [{ LESSOR_HOME: home }, { LESSOR_HOME: home, LESSOR_SOCKET: d.socket }, { LESSOR_HOME: theirs, LESSOR_SOCKET: d.socket }]) {
        const g = await asNobody(["--", BIN, "git-credential", "--agent", "claude", "--secret", "github-token", "get"], gitReq, env);
        noCanary(g, `git-credential as uid 65534 with ${JSON.stringify(env)}`);
        assert.ok(!g.stdout.includes("password="), `git-credential answered uid 65534: ${g.stdout}`);
        const k = await asNobody(["--", DOCKER_BIN, "get"], "https://registry.test.example", env);
        noCanary(k, `docker-credential-lessor as uid 65534 with ${JSON.stringify(env)}`);
        assert.equal(k.code, 1, `docker-credential-lessor as uid 65534: exit ${k.code}`);
        if ("LESSOR_SOCKET" in env) assert.match(g.stderr + k.stdout, /permission denied connecting to the lessor daemon/, "refused at the daemon's socket");
      }
      // The owner, by contrast, is answered through that daemon.
      const owner = await run(DOCKER_BIN, ["get"], { PATH: `${dirname(process.execPath)}:/usr/bin:/bin`, HOME: root, LESSOR_HOME: home, LESSOR_SOCKET: d.socket }, "https://registry.test.example");
      assert.equal(owner.code, 0, owner.stdout + owner.stderr);
      assert.equal((JSON.parse(owner.stdout) as { Secret: string }).Secret, REG_CANARY);
    } finally {
      await d.stop();
      chmodSync(root, 0o700);
    }
  });

  test("a hostile repository's routing key holding terminal controls (OSC 52, BEL) in its subsection reaches git's stderr escaped and the audit reason as plain text; no answer", async () => {
    const repo = join(root, "escape-repo");
    const { env } = gitHome("home-escape", documentedSetup());
    assert.equal((await run(GIT, ["init", "-q", repo], env)).code, 0);
    // git allows any byte but NUL and newline in a quoted subsection name.
    appendFileSync(join(repo, ".git", "config"), `[http "https://x\u001b]52;c;aGk=\u0007\u009b2J/"]\n\tproxy = http://127.0.0.1:9\n`);
    const r = await run(process.execPath, ["--", BIN, "git-credential", "--agent", "claude", "--secret", "github-token", "get"], { PATH: "/usr/bin:/bin", HOME: root, LESSOR_HOME, NO_COLOR: "1" }, "protocol=https\nhost=git.test.example\n\n", repo);
    noCanary(r, "escape repo");
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /own git config sets http\.https:\/\/x/);
    assert.ok(!/[\u0007\u001b\u009b]/.test(r.stderr), `raw terminal controls on stderr: ${JSON.stringify(r.stderr.slice(0, 200))}`);
    const rows = await withVault((v) => v.admin().auditQuery({ limit: 100_000 }));
    const row = rows.filter((x) => x.type === "access_denied" && (x.reason ?? "").includes("git-credential") && (x.reason ?? "").includes("http.https://x")).at(-1);
    assert.ok(row !== undefined, "the refusal was audited");
    assert.match(row.reason!, /^[\x20-\x7e\u2026]*$/, `the audit reason holds more than printable text: ${JSON.stringify(row.reason)}`);
  });
});

test("foreignHelpers: the helpers git would hand the answer to, after the last reset that surely applies; lessor's own line is not one", () => {
  const z = (rows: Array<[string, string, string | null]>): string => rows.map(([scope, key, value]) => `${scope}\0${key}${value === null ? "" : `\n${value}`}\0`).join("");
  const LESSOR = "!lessor git-credential --agent claude --secret github-token";
  const req = { host: "github.com", username: null, path: null };
  const names = (rows: Array<[string, string, string | null]>, r = req): string[] => foreignHelpers(z(rows), r).map((h) => `${h.scope}:${h.key}=${h.name}`);
  // The documented setup beside a generic helper: none.
  assert.deepEqual(names([["system", "credential.helper", "osxkeychain"], ["global", "credential.https://github.com.helper", ""], ["global", "credential.https://github.com.helper", LESSOR]]), []);
  // Without the reset: the generic helper (first word only).
  assert.deepEqual(names([["global", "credential.helper", "store --file /x"], ["global", "credential.https://github.com.helper", LESSOR]]), ["global:credential.helper=store …"]);
  // A helper set after the reset, or a generic one after it, counts; a reset for another host or port does not reset.
  assert.deepEqual(names([["global", "credential.https://github.com.helper", ""], ["global", "credential.https://github.com.helper", LESSOR], ["command", "credential.helper", "cache"]]), ["command:credential.helper=cache"]);
  assert.deepEqual(names([["global", "credential.helper", "store"], ["global", "credential.https://github.com:8443.helper", ""], ["global", "credential.https://github.com.helper", LESSOR]]), ["global:credential.helper=store"]);
  assert.deepEqual(names([["global", "credential.helper", "store"], ["global", "credential.https://github.com:443.helper", ""], ["global", "credential.https://GitHub.com/.helper", LESSOR]]), []);
  // A reset git may not apply (a path lessor is not told, a user name, a wildcard) does not reset; a helper there counts.
  assert.deepEqual(names([["global", "credential.helper", "store"], ["global", "credential.https://github.com/org/repo.git.helper", ""]]), ["global:credential.helper=store"]);
  assert.deepEqual(names([["global", "credential.https://github.com/org/repo.git.helper", "cache"]]), ["global:credential.https://github.com/org/repo.git.helper=cache"]);
  assert.deepEqual(names([["global", "credential.https://*.com.helper", "manager"], ["global", "credential.https://*.*.com.helper", "x"]]), ["global:credential.https://*.com.helper=manager"]);
  assert.deepEqual(names([["global", "credential.helper", "store"], ["global", "credential.https://bob@github.com.helper", ""]]), ["global:credential.helper=store"]);
  // Other schemes, hosts and ports never apply; a partial URL (host only) applies to any scheme.
  assert.deepEqual(names([["global", "credential.http://github.com.helper", "a"], ["global", "credential.https://gitlab.com.helper", "b"], ["global", "credential.https://github.com:8443.helper", "c"]]), []);
  assert.deepEqual(names([["global", "credential.github.com.helper", "d"]]), ["global:credential.github.com.helper=d"]);
  assert.deepEqual(names([["global", "credential.helper", "store"], ["global", "credential.github.com.helper", ""]]), []);
  assert.deepEqual(names([["global", "credential.helper", "store"], ["global", "credential.https://github.com:8443.helper", ""]], { host: "github.com:8443", username: null, path: null }), []);
  // A key without a value is never a reset.
  assert.deepEqual(names([["global", "credential.helper", null]]), ["global:credential.helper=(no value)"]);
  assert.deepEqual(foreignHelpers("", req), []);
  assert.ok(isLessorHelper(LESSOR) && isLessorHelper("!'/usr/bin/node' -- '/opt/lessor.cjs' git-credential --secret x"));
  assert.ok(!isLessorHelper("git-credential --secret x") && !isLessorHelper("!git-credential-store") && !isLessorHelper("store"));
  // Another program's git-credential subcommand is not lessor's (GitHub CLI's, or one named to pass).
  assert.ok(!isLessorHelper("!/usr/bin/gh auth git-credential") && !isLessorHelper("!tool git-credential") && !isLessorHelper("!git-credential"));
  assert.ok(isLessorHelper("!/usr/local/bin/lessor git-credential --agent claude") && isLessorHelper("!node /opt/lessor/dist/bin/lessor.cjs git-credential"));
  // A repository's own helper is a routing key, whatever it is.
  assert.deepEqual(repositoryRouting("local\0credential.helper\0worktree\0credential.https://x.helper\0global\0credential.helper\0"), ["credential.helper", "credential.https://x.helper"]);
});
