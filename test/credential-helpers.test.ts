/**
 * The credential helpers git and docker call, end to end with the built CLI:
 * - `lessor git-credential`: real `git clone` over HTTPS from a local `git http-backend` that wants
 *   Basic credentials. A host the policy covers clones; another gets no answer and fails; no
 *   credential is left on disk; every `get` leaves no live lease; `store` and `erase` write nothing;
 *   plain http, look-alike hosts and a value that would add protocol lines get no answer.
 * - `docker-credential-lessor`: the protocol driven as docker drives it (a server URL on stdin, JSON
 *   back), `list`, not-found as docker expects it, store refused, erase accepted; and docker itself
 *   (the client; no daemon here) reading a credential through it and logging out.
 *
 * Nothing leaves the machine: the server listens on 127.0.0.1 and git reaches its names through
 * `http.curloptResolve` (no lookup); docker runs in a network namespace of its own (bubblewrap).
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { initHome, openVault } from "../src/config/open-vault.js";
import { parseConfig } from "../src/config/config.js";
import { LocalCa } from "../src/proxy/ca.js";
import type { LeaseRecord } from "../src/base/types.js";
import { BIN, runCli, type CliResult } from "./cli-harness.js";
import { startServe, type RunningDaemon } from "./daemon-harness.js";
import { LessorClient } from "../src/client/index.js";
import { gitEnv, makeBareRepo, serveGit } from "./fixtures/git-http-backend.js";
import { repositoryRoutingHere } from "../src/cli/credentials/repo-transport.js";

const HAVE_GIT = spawnSync("/usr/bin/git", ["--version"]).status === 0;
const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"]).status === 0;
const HAVE_DOCKER = spawnSync("docker", ["--version"]).status === 0;
const DOCKER_BIN = join(dirname(BIN), "docker-credential-lessor.cjs");

const CANARY = "ghp_" + randomBytes(18).toString("hex");
const REG_CANARY = "dckr_pat_" + randomBytes(16).toString("hex");
const REPO_TEXT = "hello from the fixture repository\n";

const root = mkdtempSync(join(tmpdir(), "lessor-cred-helpers-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home"); // git's and docker's $HOME
const LESSOR_HOME = join(root, "lessor");
const SRV = join(root, "srv");
const WORK = join(root, "work");
const CA_FILE = join(root, "ca.pem");

const POLICY = `
[[rule]]
name = "git"
effect = "allow"
agents = ["claude"]
secrets = ["github-token", "bad-token"]
domains = ["git.test.example"]

[[rule]]
name = "registry"
effect = "allow"
agents = ["builder"]
secrets = ["registry-token"]
domains = ["registry.test.example", "index.docker.io"]
`;

const DOCKER_TABLE = `
[docker]
"registry.test.example" = { secret = "registry-token", username = "robot", agent = "builder" }
"index.docker.io" = { secret = "registry-token", username = "hubuser", agent = "builder" }
"denied.test.example" = { secret = "github-token", username = "nobody", agent = "builder" }
`;

let port = 0;
let server: https.Server;
/** Every request the git server received: host and Authorization header. */
const seen: { host: string; auth: string }[] = [];
const GOOD_AUTH = "Basic " + Buffer.from(`x-access-token:${CANARY}`).toString("base64");

function handle(req: IncomingMessage, res: ServerResponse, body: Buffer): void {
  const auth = String(req.headers.authorization ?? "");
  seen.push({ host: String(req.headers.host ?? ""), auth });
  if (auth !== GOOD_AUTH) {
    res.writeHead(401, { "www-authenticate": 'Basic realm="lessor test git"', "content-type": "text/plain" });
    res.end("authentication required\n");
    return;
  }
  serveGit(req, res, body, SRV, "x-access-token");
}

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program asynchronously (the git server answers in this same process). */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, input?: string, cwd = root): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, cwd, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
    });
    child.stdin.on("error", () => {});
    child.stdin.end(input ?? "");
  });
}

/** The helper as git's configuration names it: an absolute command line (git appends the action). */
function helper(args: string): string {
  return `!'${process.execPath}' -- '${BIN}' git-credential ${args}`;
}

/** `git clone https://HOST:PORT/repo.git DEST` with only lessor as credential helper. */
function clone(host: string, dest: string, helperArgs = "--agent claude --secret github-token"): Promise<Ran> {
  return run(
    "/usr/bin/git",
    [
      "-c", "credential.helper=",
      "-c", `credential.helper=${helper(helperArgs)}`,
      "-c", "credential.useHttpPath=false",
      "-c", `http.curloptResolve=git.test.example:${port}:127.0.0.1`,
      "-c", `http.curloptResolve=other.test.example:${port}:127.0.0.1`,
      "clone", "-q", `https://${host}:${port}/repo.git`, dest,
    ],
    { ...gitEnv(HOME), LESSOR_HOME, GIT_SSL_CAINFO: CA_FILE, NO_COLOR: "1" },
  );
}

/** `lessor git-credential ARGS` with `input` on stdin. */
function gitHelper(args: string[], input: string): Promise<CliResult> {
  return runCli(["git-credential", ...args], { home: LESSOR_HOME, input });
}

/** `docker-credential-lessor ACTION` run as docker runs it: the bin itself, by its path. */
function dockerHelper(action: string, input = "", home = LESSOR_HOME): Promise<Ran> {
  return run(DOCKER_BIN, [action], { PATH: `${dirname(process.execPath)}:/usr/bin:/bin`, HOME, LESSOR_HOME: home, NO_COLOR: "1" }, input);
}

async function leases(): Promise<LeaseRecord[]> {
  const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  try {
    return await vault.admin().listLeases({ limit: 10_000 });
  } finally {
    await vault.close();
  }
}

async function auditCount(): Promise<number> {
  const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  try {
    return (await vault.admin().auditQuery({ limit: 100_000 })).length;
  } finally {
    await vault.close();
  }
}

function live(ls: LeaseRecord[]): LeaseRecord[] {
  const now = Date.now();
  return ls.filter((l) => l.revokedAt === null && l.expiresAt > now && (l.maxUses === null || l.uses < l.maxUses));
}

/** Every file under `dir` (following no links) whose bytes contain `needle`. */
function filesHolding(dir: string, needle: string): string[] {
  const hits: string[] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && readFileSync(p).includes(needle)) hits.push(p);
    }
  };
  if (existsSync(dir)) walk(dir);
  return hits;
}

/** Every file under `dir` with its size and mtime, to see that nothing was written. */
function snapshot(dir: string): string {
  const rows: string[] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const s = statSync(p);
      rows.push(`${p} ${s.size} ${s.mtimeMs}`);
      if (e.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return rows.sort().join("\n");
}

function request(fields: Record<string, string>): string {
  return Object.entries(fields)
    .map(([k, v]) => `${k}=${v}\n`)
    .join("") + "\n";
}

describe("credential helpers", { skip: HAVE_GIT ? false : "git is not installed" }, () => {
  before(async () => {
    for (const d of [HOME, SRV, WORK]) mkdirSync(d, { recursive: true });
    makeBareRepo(SRV, "repo", { "README.md": REPO_TEXT });
    const ca = LocalCa.create({ permitted: ["git.test.example", "other.test.example"] });
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
    const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    try {
      await vault.admin().storeSecret({ name: "github-token", value: CANARY, kind: "pat" });
      await vault.admin().storeSecret({ name: "registry-token", value: REG_CANARY });
      // A value that would add its own lines to git's answer.
      await vault.admin().storeSecret({ name: "bad-token", value: `${CANARY}\nhost=evil.example\npassword=x` });
    } finally {
      await vault.close();
    }
  });
  after(async () => {
    server?.closeAllConnections();
    await new Promise<void>((r) => server?.close(() => r()));
  });

  describe("lessor git-credential with real git", () => {
    test("a covered host: the clone succeeds with the credential, each get leaves no live lease, and nothing is left on disk", async () => {
      const before = (await leases()).length;
      const dest = join(WORK, "covered");
      const r = await clone("git.test.example", dest);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(readFileSync(join(dest, "README.md"), "utf8"), REPO_TEXT);
      assert.ok(seen.some((s) => s.host.startsWith("git.test.example") && s.auth === GOOD_AUTH), "the server received lessor's credential");

      const mine = (await leases()).slice(0, (await leases()).length - before);
      assert.ok(mine.length >= 1, "the helper took a lease");
      for (const l of mine) {
        assert.equal(l.agent, "claude");
        assert.equal(l.name, "github-token");
        assert.deepEqual(l.domains, ["git.test.example"], "the lease is for the one host git asked about");
        assert.equal(l.maxUses, 1);
        assert.equal(l.uses, 1, "its one use was the read for git");
        assert.ok(l.expiresAt - l.issuedAt <= 60_000, "a short lease");
      }
      assert.deepEqual(live(await leases()), [], "no live lease after the clone");

      // git did not keep it (store did nothing), and the plaintext is nowhere on disk.
      assert.deepEqual(filesHolding(dest, CANARY), [], "the clone holds the credential");
      assert.deepEqual(filesHolding(HOME, CANARY), [], "HOME holds the credential");
      assert.deepEqual(filesHolding(LESSOR_HOME, CANARY), [], "the lessor home holds the plaintext");
      assert.ok(!existsSync(join(HOME, ".git-credentials")));
      assert.doesNotMatch(readFileSync(join(dest, ".git", "config"), "utf8"), /x-access-token|ghp_/);
      assert.ok(!r.stderr.includes(CANARY));
    });

    test("a host the grant does not cover: the helper answers nothing, the server never sees the credential, and the clone fails", async () => {
      const before = seen.length;
      const dest = join(WORK, "uncovered");
      const r = await clone("other.test.example", dest);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /lessor git-credential: no credential: for other\.test\.example/);
      const there = seen.slice(before);
      assert.ok(there.length >= 1, "git did ask the server");
      for (const s of there) assert.equal(s.auth, "", "no credential was sent to the uncovered host");
      assert.deepEqual(live(await leases()), []);
      assert.deepEqual(filesHolding(WORK, CANARY), []);
      assert.ok(!existsSync(join(dest, "README.md")));
    });

    test("an agent the policy does not grant the secret gets nothing either", async () => {
      const r = await clone("git.test.example", join(WORK, "wrong-agent"), "--agent mallory --secret github-token");
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /no credential/);
    });
  });

  describe("lessor git-credential, the protocol", () => {
    test("get prints username and password for a covered https host (the port is git's, not the lease's)", async () => {
      const r = await gitHelper(["--agent", "claude", "--secret", "github-token", "get"], request({ protocol: "https", host: `git.test.example:${port}`, capability: "authtype" }));
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, `username=x-access-token\npassword=${CANARY}\n`);
      assert.ok(!r.stderr.includes(CANARY));
      const u = await gitHelper(["--agent", "claude", "--secret", "github-token", "--username", "octocat", "get"], request({ protocol: "https", host: "git.test.example" }));
      assert.equal(u.stdout, `username=octocat\npassword=${CANARY}\n`);
      const fromUrl = await gitHelper(["--agent", "claude", "--secret", "github-token", "get"], request({ protocol: "https", host: "git.test.example", username: "oauth2" }));
      assert.equal(fromUrl.stdout, `username=oauth2\npassword=${CANARY}\n`, "a username in the URL is kept");
      assert.deepEqual(live(await leases()), []);
    });

    test("plain http:// is refused before any lease is taken", async () => {
      const before = (await leases()).length;
      const r = await gitHelper(["--agent", "claude", "--secret", "github-token", "get"], request({ protocol: "http", host: "git.test.example" }));
      assert.equal(r.code, 0);
      assert.equal(r.stdout, "");
      assert.match(r.stderr, /plain http:\/\//);
      assert.equal((await leases()).length, before, "no lease for a plain-text request");
    });

    test("attacks: look-alike hosts, userinfo, IP literals, repeated keys and a value with line breaks get no answer", async () => {
      const ask = (fields: string | Record<string, string>, secret = "github-token") =>
        gitHelper(["--agent", "claude", "--secret", secret, "get"], typeof fields === "string" ? fields : request(fields));
      for (const host of ["git.test.example.evil.example", "evil.example", "x@git.test.example", "127.0.0.1", `127.0.0.1:${port}`, "[::1]:443", "git.test.example:99999", "git.test.example/x"]) {
        const r = await ask({ protocol: "https", host });
        assert.equal(r.stdout, "", `an answer for host ${host}`);
        assert.ok(!r.stderr.includes(CANARY));
      }
      // A second host line (git never sends one) must not let a later line win or an earlier one.
      const twice = await ask("protocol=https\nhost=evil.example\nhost=git.test.example\n\n");
      assert.equal(twice.stdout, "");
      assert.notEqual(twice.code, 0);
      const nul = await ask("protocol=https\nhost=git.test.example\0\n\n");
      assert.equal(nul.stdout, "");
      // Lines after the blank line are not part of the request.
      const late = await ask("protocol=https\n\nhost=git.test.example\n");
      assert.equal(late.stdout, "");
      // The value would add "host=" and "password=" lines of its own to the answer: refused whole.
      const bad = await ask({ protocol: "https", host: "git.test.example" }, "bad-token");
      assert.equal(bad.stdout, "");
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /line break/);
      assert.ok(!bad.stderr.includes(CANARY));
      assert.deepEqual(live(await leases()), []);
    });

    test("store and erase write nothing, take no lease and audit nothing", async () => {
      const leasesBefore = (await leases()).length;
      const auditBefore = await auditCount();
      const homeBefore = snapshot(HOME);
      const lessorBefore = snapshot(LESSOR_HOME);
      for (const action of ["store", "erase"]) {
        const r = await gitHelper(["--agent", "claude", "--secret", "github-token", action], request({ protocol: "https", host: "git.test.example", username: "x-access-token", password: CANARY }));
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stdout, "");
        assert.ok(!r.stderr.includes(CANARY));
      }
      assert.equal(snapshot(HOME), homeBefore, "something was written under HOME");
      assert.equal(snapshot(LESSOR_HOME), lessorBefore, "something was written in the lessor home");
      assert.equal((await leases()).length, leasesBefore);
      assert.equal(await auditCount(), auditBefore);
    });

    test("usage mistakes: no --secret, an unknown action", async () => {
      const noSecret = await gitHelper(["--agent", "claude", "get"], request({ protocol: "https", host: "git.test.example" }));
      assert.equal(noSecret.code, 2);
      assert.equal(noSecret.stdout, "");
      assert.match(noSecret.stderr, /--secret/);
      const unknown = await gitHelper(["--agent", "claude", "--secret", "github-token", "fetch"], "");
      assert.equal(unknown.code, 2);
    });
  });

  describe("docker-credential-lessor", () => {
    test("get: a configured registry gets {ServerURL, Username, Secret} in every form docker names it, and no live lease is left", async () => {
      for (const url of ["https://registry.test.example", "registry.test.example", "https://registry.test.example/v2/", "REGISTRY.test.example\n"]) {
        const r = await dockerHelper("get", url);
        assert.equal(r.code, 0, r.stdout + r.stderr);
        assert.deepEqual(JSON.parse(r.stdout), { ServerURL: url.trim(), Username: "robot", Secret: REG_CANARY });
      }
      const hub = await dockerHelper("get", "https://index.docker.io/v1/");
      assert.deepEqual(JSON.parse(hub.stdout), { ServerURL: "https://index.docker.io/v1/", Username: "hubuser", Secret: REG_CANARY });
      const mine = (await leases()).filter((l) => l.agent === "builder");
      assert.ok(mine.length >= 5);
      for (const l of mine) assert.equal(l.uses, 1);
      assert.deepEqual(live(await leases()), []);
    });

    test("list: server URL → username for the registries configured", async () => {
      const r = await dockerHelper("list");
      assert.equal(r.code, 0, r.stdout);
      assert.deepEqual(JSON.parse(r.stdout), { "registry.test.example": "robot", "https://index.docker.io/v1/": "hubuser", "denied.test.example": "nobody" });
      assert.ok(!r.stdout.includes(REG_CANARY));
    });

    test("not found, as docker expects it: an unconfigured registry, one the policy does not cover, plain http, a look-alike", async () => {
      for (const url of ["https://other.test.example", "https://denied.test.example", "http://registry.test.example", "registry.test.example.evil.example", "https://registry.test.example@evil.example", ""]) {
        const r = await dockerHelper("get", url);
        assert.equal(r.code, 1, `${url}: ${r.stdout}`);
        assert.equal(r.stdout.trim(), url === "" ? "no credentials server URL" : "credentials not found in native keychain", url);
        assert.ok(!r.stdout.includes(CANARY) && !r.stdout.includes(REG_CANARY));
      }
      const denied = await dockerHelper("get", "https://denied.test.example");
      assert.match(denied.stderr, /denied\.test\.example/);
      assert.deepEqual(live(await leases()), []);
    });

    test("store is refused and writes nothing; erase succeeds and does nothing", async () => {
      const lessorBefore = snapshot(LESSOR_HOME);
      const homeBefore = snapshot(HOME);
      const s = await dockerHelper("store", JSON.stringify({ ServerURL: "registry.test.example", Username: "robot", Secret: "typed-at-docker-login" }));
      assert.equal(s.code, 1);
      assert.match(s.stdout, /lessor does not store docker credentials: lessor is the store/);
      assert.ok(!s.stdout.includes("typed-at-docker-login") && !s.stderr.includes("typed-at-docker-login"));
      const e = await dockerHelper("erase", "registry.test.example");
      assert.equal(e.code, 0);
      assert.equal(e.stdout, "");
      assert.equal(snapshot(LESSOR_HOME), lessorBefore);
      assert.equal(snapshot(HOME), homeBefore);
      // The registry still answers: erase did not remove anything.
      assert.equal(JSON.parse((await dockerHelper("get", "registry.test.example")).stdout).Secret, REG_CANARY);
    });

    test("a malformed [docker] table is an error naming the file and the entry (on stdout, where docker reads it)", async () => {
      const bad = join(root, "bad-home");
      await initHome({ home: bad, env: { LESSOR_HOME: bad } });
      appendFileSync(join(bad, "lessor.toml"), '\n[docker]\n"registry.test.example" = { secret = "registry-token", username = "robot", password = "x" }\n');
      const r = await dockerHelper("get", "registry.test.example", bad);
      assert.equal(r.code, 1);
      assert.match(r.stdout, /lessor\.toml: \[docker\] "registry\.test\.example": unknown field "password"/);
    });

    test("the [docker] table is parsed strictly", () => {
      const parse = (t: string) => parseConfig(`[docker]\n${t}\n`, "lessor.toml").docker;
      assert.deepEqual(parse('"Registry.Test.Example:5000" = { secret = "env:ci/tok", username = "u" }'), [
        { registry: "registry.test.example:5000", host: "registry.test.example", secret: { scope: "env:ci", name: "tok" }, username: "u", agent: null },
      ]);
      for (const [t, msg] of [
        ['"https://ghcr.io" = { secret = "a", username = "u" }', /without a scheme or path/],
        ['"ghcr.io/v2" = { secret = "a", username = "u" }', /without a scheme or path/],
        ['"127.0.0.1:5000" = { secret = "a", username = "u" }', /not a registry host/],
        ['"ghcr.io" = { username = "u" }', /secret/],
        ['"ghcr.io" = { secret = "a" }', /username/],
        ['"ghcr.io" = { secret = "a", username = "u\\n" }', /username/],
        ['"ghcr.io" = { secret = "a/b/c", username = "u" }', /more than one/],
        ['"ghcr.io" = { secret = "a", username = "u", agent = "bad agent" }', /agent/],
        ['"ghcr.io" = { secret = "a", username = "u" }\n"GHCR.IO" = { secret = "a", username = "u" }', /configured twice/],
        ['"ghcr.io" = "tok"', /expected a table/],
      ] as const)
        assert.throws(() => parse(t), (e: Error) => msg.test(e.message) && /^lessor\.toml: \[docker\]/.test(e.message), t);
    });

    test("docker itself (the client; there is no daemon) reads the credential through the helper and logs out through it", { skip: !HAVE_DOCKER ? "docker is not installed" : !HAVE_BWRAP ? "bubblewrap cannot make a network namespace here" : false }, async () => {
      const bin = join(root, "docker-bin");
      const cfg = join(root, "docker-config");
      mkdirSync(bin, { recursive: true });
      mkdirSync(cfg, { recursive: true });
      symlinkSync(DOCKER_BIN, join(bin, "docker-credential-lessor"));
      writeFileSync(join(cfg, "config.json"), JSON.stringify({ credHelpers: { "registry.test.example": "lessor" } }));
      const env = {
        PATH: `${bin}:${dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin`,
        HOME,
        LESSOR_HOME,
        DOCKER_CONFIG: cfg,
        // No daemon: a socket path that does not exist, so docker stops after reading the credential.
        DOCKER_HOST: `unix://${join(root, "no-docker.sock")}`,
        NO_COLOR: "1",
      };
      const before = (await leases()).filter((l) => l.agent === "builder").length;
      // In a network namespace of its own: whatever docker tries, no packet leaves the machine.
      const inNs = (args: string[]) => run("bwrap", ["--unshare-net", "--dev-bind", "/", "/", "docker", ...args], env);
      const login = await inNs(["login", "registry.test.example"]);
      assert.match(login.stdout + login.stderr, /Authenticating with existing credentials\.\.\. \[Username: robot\]/);
      assert.ok(!(login.stdout + login.stderr).includes(REG_CANARY));
      assert.equal((await leases()).filter((l) => l.agent === "builder").length, before + 1, "docker's get took one lease");
      const logout = await inNs(["logout", "registry.test.example"]);
      assert.equal(logout.code, 0, logout.stdout + logout.stderr);
      assert.match(logout.stdout, /Removing login credentials for registry\.test\.example/);
      assert.deepEqual(JSON.parse(readFileSync(join(cfg, "config.json"), "utf8")), { credHelpers: { "registry.test.example": "lessor" } }, "docker wrote no credential into its config");
      assert.deepEqual(filesHolding(cfg, REG_CANARY), []);
      assert.deepEqual(live(await leases()), []);
    });
  });

  // Last: while the daemon runs, the tests above would reach the vault through it too.
  describe("through a running daemon, connected as the agent itself", () => {
    let d: RunningDaemon | undefined;
    let admin: LessorClient | undefined;
    let tokenFile = "";
    before(async () => {
      d = await startServe(LESSOR_HOME);
      admin = await LessorClient.connect({ socketPath: d.socket });
      const t = await admin.createToken({ name: "git-helper", role: "agent", agent: "claude", ttl: "1h" });
      tokenFile = join(root, "claude.token");
      writeFileSync(tokenFile, t.token, { mode: 0o600 });
    });
    after(async () => {
      await admin?.close();
      await d?.stop();
    });

    test("LESSOR_SOCKET with an agent token: the helper leaves out --agent, the clone works, another agent's name is refused, and the daemon holds no live lease", async () => {
      const env = { ...gitEnv(HOME), LESSOR_SOCKET: d!.socket, LESSOR_TOKEN_FILE: tokenFile, GIT_SSL_CAINFO: CA_FILE, NO_COLOR: "1" };
      const gitArgs = (helperArgs: string, dest: string) => [
        "-c", "credential.helper=",
        "-c", `credential.helper=${helper(helperArgs)}`,
        "-c", `http.curloptResolve=git.test.example:${port}:127.0.0.1`,
        "clone", "-q", `https://git.test.example:${port}/repo.git`, dest,
      ];
      const ok = await run("/usr/bin/git", gitArgs("--secret github-token", join(WORK, "as-agent")), env);
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(readFileSync(join(WORK, "as-agent", "README.md"), "utf8"), REPO_TEXT);
      const mine = await admin!.listLeases({ agent: "claude", limit: 10_000 });
      assert.ok(mine.length > 0);
      assert.deepEqual(live(mine), []);
      // An agent cannot borrow another agent's grant by naming it.
      const other = await run("/usr/bin/git", gitArgs("--agent builder --secret registry-token", join(WORK, "as-other")), env);
      assert.notEqual(other.code, 0);
      assert.match(other.stderr, /lessor git-credential: no credential/);
      assert.deepEqual(filesHolding(WORK, CANARY), []);
    });
  });
});

test("git-credential's `git config` check runs git without lessor's secrets (master keys, passphrase, token, database password), keeping git's own variables", () => {
  const dir = mkdtempSync(join(tmpdir(), "lessor-gitenv-"));
  try {
    // A stand-in git that records its environment and says "no such keys" (exit 1).
    const fake = join(dir, "git");
    writeFileSync(fake, `#!/bin/sh\n/usr/bin/env > "${join(dir, "env.txt")}"\nexit 1\n`, { mode: 0o700 });
    const canary = "canary-" + randomBytes(8).toString("hex");
    const secrets = ["LESSOR_MASTER_KEY", "LESSOR_MASTER_KEY_PREVIOUS", "LESSOR_PASSPHRASE", "LESSOR_TOKEN", "LESSOR_DATABASE_URL", "PGPASSWORD"];
    const env: NodeJS.ProcessEnv = { PATH: dir, HOME: dir, GIT_DIR: join(dir, "repo.git"), GIT_CONFIG_COUNT: "0", LESSOR_HOME: dir };
    for (const k of secrets) env[k] = `${k}-${canary}`;
    assert.deepEqual(repositoryRoutingHere(env), { keys: [] });
    const seen = readFileSync(join(dir, "env.txt"), "utf8");
    assert.ok(!seen.includes(canary), `git config got lessor's secrets: ${seen.split("\n").filter((l) => l.includes(canary)).map((l) => l.split("=")[0]).join(", ")}`);
    for (const k of ["HOME", "GIT_DIR", "GIT_CONFIG_COUNT", "LESSOR_HOME"]) assert.match(seen, new RegExp(`^${k}=`, "m"), `${k} was not passed to git`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
