/**
 * More attacks on the git and docker credential helpers (docs/cli/credential-helpers.md), beyond
 * test/credential-helper-attacks.test.ts and test/credential-helpers.test.ts. Real `git`, the built
 * CLI (dist/bin) as child processes, real TLS on 127.0.0.1 (git reaches the names through
 * http.curloptResolve: no lookup, nothing leaves the machine).
 */
import { spawn, spawnSync, type SpawnSyncReturns } from "node:child_process";
import { randomBytes } from "node:crypto";
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { initHome, openVault } from "../src/config/open-vault.js";
import { LocalCa } from "../src/proxy/ca.js";
import type { AuditRecord, LeaseRecord } from "../src/base/types.js";
import { BIN } from "./cli-harness.js";
import { gitEnv } from "./fixtures/git-http-backend.js";
import { routingCheckOf } from "../src/cli/credentials/repo-transport.js";

const GIT = "/usr/bin/git";
const HAVE_GIT = spawnSync(GIT, ["--version"]).status === 0;
const DOCKER_BIN = join(dirname(BIN), "docker-credential-lessor.cjs");

const CANARY = "ghp_atk2_" + randomBytes(16).toString("hex");
const REG_CANARY = "dckr_atk2_" + randomBytes(16).toString("hex");
const ALL = [CANARY, REG_CANARY];

const root = mkdtempSync(join(tmpdir(), "lessor-cred-atk2-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const LESSOR_HOME = join(root, "lessor");
const CA_FILE = join(root, "ca.pem");
const EVIL_CA_FILE = join(root, "evil-ca.pem");

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

const baseEnv = (): NodeJS.ProcessEnv => ({ PATH: `${dirname(process.execPath)}:/usr/bin:/bin`, HOME, LESSOR_HOME, NO_COLOR: "1" });
const HELPER = (): string => `!'${process.execPath}' -- '${BIN}' git-credential --agent claude --secret github-token`;

function gitHelper(input: string | Buffer, opts: { action?: string; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<Ran> {
  return run(process.execPath, ["--", BIN, "git-credential", "--agent", "claude", "--secret", "github-token", opts.action ?? "get"], { ...baseEnv(), ...opts.env }, input, opts.cwd);
}
function dockerHelper(action: string, input: string | Buffer = "", env: NodeJS.ProcessEnv = {}): Promise<Ran> {
  return run(DOCKER_BIN, [action], { ...baseEnv(), ...env }, input);
}
const req = (fields: [string, string][]): string => fields.map(([k, v]) => `${k}=${v}\n`).join("") + "\n";

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
const audit = (): Promise<AuditRecord[]> => withVault((v) => v.admin().auditQuery({ limit: 100_000 }) as Promise<AuditRecord[]>);
function live(ls: LeaseRecord[]): LeaseRecord[] {
  const now = Date.now();
  return ls.filter((l) => l.revokedAt === null && l.expiresAt > now && (l.maxUses === null || l.uses < l.maxUses));
}

interface Recorder {
  port: number;
  seen: { host: string; path: string; auth: string }[];
  server: https.Server;
}
async function recorder(ca: LocalCa, name: string): Promise<Recorder> {
  const seen: Recorder["seen"] = [];
  const server = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor(name) }, (rq, rs) => {
    rq.resume();
    rq.on("end", () => {
      const auth = String(rq.headers.authorization ?? "");
      seen.push({ host: String(rq.headers.host ?? ""), path: String(rq.url ?? ""), auth });
      if (auth === "") {
        rs.writeHead(401, { "www-authenticate": 'Basic realm="attack"', "content-type": "text/plain" });
        rs.end("auth\n");
      } else {
        rs.writeHead(403, { "content-type": "text/plain" });
        rs.end("no\n");
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { port: (server.address() as AddressInfo).port, seen, server };
}
const decodeAuth = (a: string): string => (a.startsWith("Basic ") ? Buffer.from(a.slice(6), "base64").toString("utf8") : a);

let good: Recorder;
let evil: Recorder;

describe("credential helper attacks, part 2", { skip: HAVE_GIT ? false : "git is not installed" }, () => {
  before(async () => {
    mkdirSync(HOME, { recursive: true });
    const ca = LocalCa.create({ permitted: ["git.test.example"] });
    writeFileSync(CA_FILE, ca.certPem);
    good = await recorder(ca, "git.test.example");
    const evilCa = LocalCa.create({ permitted: ["git.test.example"] });
    writeFileSync(EVIL_CA_FILE, evilCa.certPem);
    evil = await recorder(evilCa, "git.test.example");
    await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    appendFileSync(join(LESSOR_HOME, "lessor.toml"), DOCKER_TABLE);
    writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
    await withVault(async (v) => {
      await v.admin().storeSecret({ name: "github-token", value: CANARY });
      await v.admin().storeSecret({ name: "registry-token", value: REG_CANARY });
    });
  });
  after(async () => {
    for (const s of [good?.server, evil?.server]) {
      s?.closeAllConnections();
      await new Promise<void>((r) => (s ? s.close(() => r()) : r()));
    }
  });

  /** A repository whose own .git/config sends git.test.example to the evil server (its own CA), plus `extra` config text. */
  function hostileRepo(name: string, extra: string): string {
    const repo = join(root, name);
    mkdirSync(repo, { recursive: true });
    spawnSync(GIT, ["init", "-q", repo], { env: gitEnv(HOME) });
    writeFileSync(join(repo, "evil-ca.pem"), readFileSync(EVIL_CA_FILE));
    appendFileSync(
      join(repo, ".git", "config"),
      [
        `[remote "origin"]`,
        `\turl = https://git.test.example:${evil.port}/repo.git`,
        `\tfetch = +refs/heads/*:refs/remotes/origin/*`,
        `[http]`,
        `\tcurloptResolve = git.test.example:${evil.port}:127.0.0.1`,
        `\tsslCAInfo = ${join(repo, "evil-ca.pem")}`,
        extra,
        "",
      ].join("\n"),
    );
    return repo;
  }

  const fetchIn = (repo: string, extra: string[] = [], cwd = repo): Promise<Ran> =>
    run(GIT, ["-c", "credential.helper=", "-c", `credential.helper=${HELPER()}`, ...extra, "fetch", "-q", "origin"], { ...gitEnv(HOME), LESSOR_HOME, NO_COLOR: "1" }, undefined, cwd);

  test("a hostile repository's routing reached through include.path, or named by --git-dir from another directory, is still seen: no answer", async () => {
    // include.path: the settings live in a file the repository's config includes (scope "local").
    const inc = hostileRepo("hostile-include", "");
    const cfg = readFileSync(join(inc, ".git", "config"), "utf8").replace(/\[http\][\s\S]*$/, "");
    writeFileSync(join(inc, "routing.cfg"), `[http]\n\tcurloptResolve = git.test.example:${evil.port}:127.0.0.1\n\tsslCAInfo = ${join(inc, "evil-ca.pem")}\n`);
    writeFileSync(join(inc, ".git", "config"), `${cfg}[include]\n\tpath = ${join(inc, "routing.cfg")}\n`);
    const b0 = evil.seen.length;
    const r0 = await fetchIn(inc);
    assert.match(r0.stderr, /repository's own git config/);
    assert.equal(evil.seen.slice(b0).filter((s) => decodeAuth(s.auth).includes(CANARY)).length, 0);
    // --git-dir from another directory: git exports GIT_DIR to the helper, whose `git config` follows it.
    const gd = hostileRepo("hostile-gitdir", "");
    const elsewhere = join(root, "elsewhere");
    mkdirSync(elsewhere, { recursive: true });
    const b1 = evil.seen.length;
    const r1 = await fetchIn(gd, ["--git-dir", join(gd, ".git")], elsewhere);
    assert.match(r1.stderr, /repository's own git config/);
    assert.equal(evil.seen.slice(b1).filter((s) => decodeAuth(s.auth).includes(CANARY)).length, 0);
    noCanary(r0, "include");
    noCanary(r1, "git-dir");
  });

  test("a hostile repository's refusal, and git's other refusals made before the vault is asked, are audited as access_denied (client, agent, secret, host, why; no value); still refused when the vault cannot be reached", async () => {
    const repo = hostileRepo("hostile-audit", "");
    const before = (await audit()).length;
    const r = await fetchIn(repo);
    assert.match(r.stderr, /repository's own git config/, "control: the helper refused");
    const rows = (await audit()).slice(before);
    const refusals = rows.filter((x) => x.type === "access_denied" && x.outcome === "denied" && /^access_denied: git-credential: /.test(x.reason ?? ""));
    assert.ok(refusals.length >= 1, `the helper refused a hostile repository and the audit trail holds nothing of it: ${JSON.stringify(rows.map((x) => [x.type, x.reason]))}`);
    for (const x of refusals) {
      assert.equal(x.agent, "claude");
      assert.equal(x.secret, "global/github-token");
      assert.equal(x.domain, "git.test.example");
      assert.equal(x.leaseId, null);
      assert.match(x.reason ?? "", /repository's own git config sets .*http\.curloptresolve.*http\.sslcainfo/);
    }
    noCanary(r, "hostile-audit");

    // The helper's other refusals before the vault is asked: plain http://, another protocol, a host that is no DNS name.
    const b1 = (await audit()).length;
    for (const [proto, host, why] of [
      ["http", "git.test.example", /plain http:\/\//],
      ["ssh", "git.test.example", /protocol is not https/],
      ["https", "127.0.0.1", /host is not a DNS name/],
    ] as const) {
      const g = await gitHelper(req([["protocol", proto], ["host", host]]));
      assert.equal(g.code, 0);
      assert.equal(g.stdout, "");
      const got = (await audit()).slice(b1).filter((x) => x.type === "access_denied" && why.test(x.reason ?? ""));
      assert.equal(got.length, 1, `${proto}://${host}: one access_denied row (${g.stderr})`);
      assert.equal(got[0]!.agent, "claude");
      assert.equal(got[0]!.secret, "global/github-token");
    }

    // The vault cannot be reached (no daemon, no vault at the home): still no answer, and stderr says the refusal went unaudited.
    const nowhere = await gitHelper(req([["protocol", "http"], ["host", "git.test.example"]]), { env: { LESSOR_HOME: join(root, "no-such-home") } });
    assert.equal(nowhere.code, 0);
    assert.equal(nowhere.stdout, "");
    assert.match(nowhere.stderr, /no credential: the URL is plain http:\/\//);
    assert.match(nowhere.stderr, /this refusal could not be audited/);

    // docker: a registry with no [docker] entry (docker asks about every registry it pulls from
    // under credsStore) is not audited: it names no agent or secret (docs/cli/credential-helpers.md).
    const b2 = (await audit()).length;
    const d = await dockerHelper("get", "other.test.example");
    assert.equal(d.stdout.trim(), "credentials not found in native keychain");
    assert.equal((await audit()).length, b2);
    for (const x of (await audit()).slice(before)) for (const c of ALL) assert.ok(!JSON.stringify(x).includes(c), "a value in the audit trail");
  });

  test("a hostile repository's own .git/config routing git elsewhere gets no answer, however large it makes its config", async () => {
    // Control: the plain hostile repository gets nothing (the existing guarantee).
    const plain = hostileRepo("hostile-plain", "");
    const b0 = evil.seen.length;
    const r0 = await fetchIn(plain);
    assert.ok(!r0.stderr.includes(CANARY));
    assert.equal(evil.seen.slice(b0).filter((s) => decodeAuth(s.auth).includes(CANARY)).length, 0, "control: the plain hostile repository got the credential");
    assert.match(r0.stderr, /repository's own git config/);

    // The same repository, with one long harmless value: `git config --get-regexp` printed more than
    // spawnSync's default maxBuffer (1 MiB), spawnSync failed with ENOBUFS, and the check took that
    // for "no settings". Now git is asked for the routing keys' names only, and a failed check refuses.
    const padded = hostileRepo("hostile-padded", `[remote "pad"]\n\turl = https://pad.invalid/${"a".repeat(1_100_000)}`);
    const b1 = evil.seen.length;
    const r1 = await fetchIn(padded);
    assert.ok(!r1.stderr.includes(CANARY));
    const got = evil.seen.slice(b1).filter((s) => decodeAuth(s.auth).includes(CANARY));
    assert.equal(got.length, 0, "a server that only claims git.test.example (its CA and address named by the repository's own config) received the credential");
    assert.match(r1.stderr, /repository's own git config sets .*http\.curloptresolve/);
    assert.deepEqual(live(await leases()), []);
  });

  test("a repository whose config git cannot read gets no answer, with what to do on stderr", async () => {
    const repo = join(root, "broken-config");
    mkdirSync(repo, { recursive: true });
    spawnSync(GIT, ["init", "-q", repo], { env: gitEnv(HOME) });
    appendFileSync(join(repo, ".git", "config"), "[http\n\tcurloptResolve = git.test.example:1:127.0.0.1\n");
    const r = await gitHelper(req([["protocol", "https"], ["host", "git.test.example"]]), { cwd: repo });
    assert.equal(r.code, 0);
    assert.equal(r.stdout, "", "an answer although the repository's config could not be checked");
    assert.match(r.stderr, /could not read this repository's git config .*exited with code 128 \(fatal: bad config line/);
    assert.match(r.stderr, /git config --list --show-scope/);
    noCanary(r, "broken config");
    assert.deepEqual(live(await leases()), []);
  });

  test("an honest repository with a large config (a value over 1 MiB) is still answered", async () => {
    const repo = join(root, "honest-large");
    mkdirSync(repo, { recursive: true });
    spawnSync(GIT, ["init", "-q", repo], { env: gitEnv(HOME) });
    appendFileSync(
      join(repo, ".git", "config"),
      `[remote "origin"]\n\turl = https://git.test.example:${good.port}/repo.git\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n[remote "pad"]\n\turl = https://pad.invalid/${"a".repeat(1_100_000)}\n`,
    );
    const b = good.seen.length;
    // The routing is the owner's (-c, the "command" scope): the real server, its own CA.
    const r = await fetchIn(repo, ["-c", `http.curloptResolve=git.test.example:${good.port}:127.0.0.1`, "-c", `http.sslCAInfo=${CA_FILE}`]);
    noCanary(r, "honest large");
    assert.doesNotMatch(r.stderr, /no credential/);
    assert.ok(
      good.seen.slice(b).some((s) => decodeAuth(s.auth) === `x-access-token:${CANARY}`),
      `the helper gave the real server nothing for an honest repository with a large config: ${r.stderr}`,
    );
    assert.deepEqual(live(await leases()), []);
  });
});

describe("the repository-config check fails closed", () => {
  const ran = (over: Partial<SpawnSyncReturns<string>>): SpawnSyncReturns<string> => ({ pid: 1, output: [], stdout: "", stderr: "", status: 0, signal: null, ...over });
  const err = (code: string): Error => Object.assign(new Error(code), { code });

  test("exit 0 lists the repository's keys, exit 1 is none; an error, a kill, a timeout, too much output or another exit code is a failure, never none", () => {
    assert.deepEqual(routingCheckOf(ran({ stdout: "local\0http.proxy\0global\0http.sslcainfo\0" })), { keys: ["http.proxy"] });
    assert.deepEqual(routingCheckOf(ran({ status: 1 })), { keys: [] });
    for (const over of [
      { error: err("ENOBUFS"), status: null, signal: "SIGTERM" as const },
      { error: err("ETIMEDOUT"), status: null, signal: "SIGTERM" as const },
      { error: err("ENOENT"), status: null },
      { status: null, signal: "SIGKILL" as const },
      { status: 128, stderr: "fatal: bad config line 3 in file .git/config\n" },
      { status: 3 },
    ])
      assert.ok("failed" in routingCheckOf(ran(over)), JSON.stringify(over));
  });
});
