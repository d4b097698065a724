/**
 * Attacks on lessor's git and docker credential helpers (docs/cli/credential-helpers.md), as a hostile
 * repository author or a hostile agent would try them. Every request goes to the built CLI as a real
 * child process; where git is the one asking, real `git` asks (`git credential fill`, `git clone`).
 *
 * Nothing leaves the machine: the HTTPS servers listen on 127.0.0.1 and git reaches their names
 * through `http.curloptResolve` (no lookup); the squatter sockets are Unix sockets made here.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import * as net from "node:net";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { repositoryRouting } from "../src/cli/credentials/repo-transport.js";
import assert from "node:assert/strict";
import { initHome, openVault } from "../src/config/open-vault.js";
import { LocalCa } from "../src/proxy/ca.js";
import { parseRefString } from "../src/base/names.js";
import type { AuditRecord, LeaseRecord } from "../src/base/types.js";
import { BIN } from "./cli-harness.js";
import { gitEnv } from "./fixtures/git-http-backend.js";

const GIT = "/usr/bin/git";
const HAVE_GIT = spawnSync(GIT, ["--version"]).status === 0;
const DOCKER_BIN = join(dirname(BIN), "docker-credential-lessor.cjs");

const CANARY = "ghp_" + randomBytes(18).toString("hex");
const PATH_CANARY = "ghp_path_" + randomBytes(16).toString("hex");
const REG_CANARY = "dckr_pat_" + randomBytes(16).toString("hex");
const PORT_CANARY = "dckr_port_" + randomBytes(16).toString("hex");
const BIN_CANARY = "binarytail" + randomBytes(16).toString("hex");
const ALL_CANARIES = [CANARY, PATH_CANARY, REG_CANARY, PORT_CANARY, BIN_CANARY];

const root = mkdtempSync(join(tmpdir(), "lessor-cred-attacks-"));
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
name = "git-one-repo"
effect = "allow"
agents = ["claude"]
secrets = ["path-token"]
domains = ["git.test.example"]
paths = ["/allowed.git"]
# the helper hands the value to git: a rule with paths must say so (docs/cli/credential-helpers.md)
reveal = true

[[rule]]
name = "registry"
effect = "allow"
agents = ["builder"]
secrets = ["registry-token", "port-token", "binary-token"]
domains = ["registry.test.example", "index.docker.io", "registry.internal", "binary.test.example"]
`;

const DOCKER_TABLE = `
[docker]
"registry.test.example" = { secret = "registry-token", username = "robot", agent = "builder" }
"index.docker.io" = { secret = "registry-token", username = "hubuser", agent = "builder" }
"registry.internal:5000" = { secret = "port-token", username = "porter", agent = "builder" }
"binary.test.example" = { secret = "binary-token", username = "bin", agent = "builder" }
`;

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, input?: string | Buffer, cwd = root): Promise<Ran> {
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

const baseEnv = (): NodeJS.ProcessEnv => ({ PATH: `${dirname(process.execPath)}:/usr/bin:/bin`, HOME, LESSOR_HOME, NO_COLOR: "1" });

/** `lessor git-credential ARGS ACTION` with `input` on stdin, as git runs it. */
function gitHelper(input: string | Buffer, opts: { secret?: string; action?: string; extra?: string[]; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<Ran> {
  return run(
    process.execPath,
    ["--", BIN, "git-credential", "--agent", "claude", "--secret", opts.secret ?? "github-token", ...(opts.extra ?? []), opts.action ?? "get"],
    { ...baseEnv(), ...opts.env },
    input,
    opts.cwd,
  );
}

/** `docker-credential-lessor ACTION`, the bin by its path, as docker runs it. */
function dockerHelper(action: string, input: string | Buffer = "", env: NodeJS.ProcessEnv = {}): Promise<Ran> {
  return run(DOCKER_BIN, [action], { ...baseEnv(), ...env }, input);
}

function req(fields: [string, string][]): string {
  return fields.map(([k, v]) => `${k}=${v}\n`).join("") + "\n";
}

function noCanary(r: Ran, what: string, allowed: string[] = []): void {
  for (const c of ALL_CANARIES) {
    assert.ok(!r.stderr.includes(c), `${what}: a secret on stderr`);
    if (!allowed.includes(c)) assert.ok(!r.stdout.includes(c), `${what}: a secret it should not have got on stdout`);
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
const reveal = (name: string): Promise<string> =>
  withVault(async (v) => {
    const r = await v.admin().revealSecret(parseRefString(name));
    try {
      return Buffer.from(r.value.expose()).toString("latin1");
    } finally {
      r.value.wipe();
    }
  });
function live(ls: LeaseRecord[]): LeaseRecord[] {
  const now = Date.now();
  return ls.filter((l) => l.revokedAt === null && l.expiresAt > now && (l.maxUses === null || l.uses < l.maxUses));
}

/** An HTTPS server that wants Basic credentials and records every request's host, path and Authorization. */
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

/** An empty repository to run `git ls-remote`/`git fetch` in. */
function repoForFetch(): string {
  const repo = join(root, "fetch-repo");
  mkdirSync(repo, { recursive: true });
  spawnSync(GIT, ["init", "-q", repo], { env: gitEnv(HOME) });
  return repo;
}

let good: Recorder;
let evil: Recorder;

describe("credential helper attacks", { skip: HAVE_GIT ? false : "git is not installed" }, () => {
  before(async () => {
    mkdirSync(HOME, { recursive: true });
    const ca = LocalCa.create({ permitted: ["git.test.example", "other.test.example"] });
    writeFileSync(CA_FILE, ca.certPem);
    good = await recorder(ca, "git.test.example");
    // Another server, with a CA of its own, that also calls itself git.test.example.
    const evilCa = LocalCa.create({ permitted: ["git.test.example"] });
    writeFileSync(EVIL_CA_FILE, evilCa.certPem);
    evil = await recorder(evilCa, "git.test.example");

    await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    appendFileSync(join(LESSOR_HOME, "lessor.toml"), DOCKER_TABLE);
    writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
    await withVault(async (v) => {
      await v.admin().storeSecret({ name: "github-token", value: CANARY });
      await v.admin().storeSecret({ name: "path-token", value: PATH_CANARY });
      await v.admin().storeSecret({ name: "registry-token", value: REG_CANARY });
      await v.admin().storeSecret({ name: "port-token", value: PORT_CANARY });
      await v.admin().storeSecret({ name: "binary-token", value: Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(BIN_CANARY)]) });
    });
  });
  after(async () => {
    for (const s of [good?.server, evil?.server]) {
      s?.closeAllConnections();
      await new Promise<void>((r) => (s ? s.close(() => r()) : r()));
    }
  });

  describe("git-credential: the protocol, driven directly", () => {
    test("git attack: every attribute given twice (protocol, host, path, username, url) gets no answer and a non-zero exit", async () => {
      for (const [k, a, b] of [
        ["protocol", "https", "https"],
        ["protocol", "http", "https"],
        ["host", "evil.example", "git.test.example"],
        ["host", "git.test.example", "evil.example"],
        ["host", "git.test.example", "git.test.example"],
        ["path", "x", "allowed.git"],
        ["username", "a", "b"],
        ["url", "https://evil.example/", "https://git.test.example/"],
      ] as const) {
        const fields: [string, string][] = [["protocol", "https"], ["host", "git.test.example"]].filter(([f]) => f !== k) as [string, string][];
        const r = await gitHelper(req([...fields, [k, a], [k, b]]));
        assert.equal(r.stdout, "", `${k} twice: answered`);
        assert.notEqual(r.code, 0, `${k} twice: exit 0`);
        // url= is refused on its own (git never sends it to a helper).
        assert.match(r.stderr, k === "url" ? /gives url=/ : new RegExp(`"${k}" twice`));
        noCanary(r, `${k} twice`);
      }
    });

    test("git attack: url= naming another host than host= (git reads the later one) gets no answer", async () => {
      // git's own parser (credential_read) lets a url= line replace the host read before it: for git,
      // this request is for evil.example. lessor refuses any url= (git never sends one to a helper).
      for (const input of [
        "protocol=https\nhost=git.test.example\nurl=https://evil.example/\n\n",
        "url=https://evil.example/\nprotocol=https\nhost=git.test.example\n\n",
        "protocol=https\nhost=git.test.example\nurl=https://git.test.example@evil.example/\n\n",
      ]) {
        const r = await gitHelper(input);
        noCanary(r, input);
        assert.equal(r.stdout, "", `answered ${JSON.stringify(input)}`);
      }
    });

    test("git attack: protocols other than exactly https get nothing", async () => {
      for (const protocol of ["http", "HTTPS", "Https", "https ", " https", "ssh", "git", "file", "", "https\u0000"]) {
        const r = await gitHelper(req([["protocol", protocol], ["host", "git.test.example"]]));
        assert.equal(r.stdout, "", `protocol ${JSON.stringify(protocol)} answered`);
        noCanary(r, protocol);
      }
      const none = await gitHelper(req([["host", "git.test.example"]]));
      assert.equal(none.stdout, "");
    });

    test("git attack: look-alike, spoofed and malformed hosts get nothing", async () => {
      const hosts = [
        "git.test.example.evil.example",
        "evil-git.test.example",
        "xgit.test.example",
        "test.example",
        "git.test.exampl",
        "git.test.example..",
        ".git.test.example",
        "git.test.example/evil.example",
        "evil.example/git.test.example",
        "evil.example?@git.test.example",
        "evil.example#@git.test.example",
        "git.test.example@evil.example",
        "git.test.example%2eevil.example",
        "git.test.example%00",
        "git.test.example\\evil.example",
        "git.test.example\t",
        " git.test.example",
        "git.test.example ",
        "git.test.example\revil.example",
        "git.test.example:443:443",
        "git.test.example:0",
        "git.test.example:65536",
        "git.test.example:",
        ":443",
        "g\u0456t.test.example", // Cyrillic і: a homograph
        "git.test.example\u200b",
        "git.test.example\u202e",
        "git.test.example\u00ad",
        "*.test.example",
        "127.0.0.1",
        "[::1]",
        "0x7f000001",
        "2130706433",
        "git.test.example." + "a".repeat(300),
      ];
      const before = (await leases()).length;
      for (const host of hosts) {
        const r = await gitHelper(req([["protocol", "https"], ["host", host]]));
        assert.equal(r.stdout, "", `host ${JSON.stringify(host)} answered`);
        noCanary(r, host);
      }
      assert.deepEqual(live(await leases()), []);
      // Malformed hosts never reached the vault; the look-alikes that did were refused there.
      assert.ok((await leases()).length >= before);
    });

    test("git: the forms of the granted host that are the same host are answered (case, one trailing dot, a port, as documented)", async () => {
      for (const host of ["git.test.example", "GIT.TEST.EXAMPLE", "git.test.example.", "git.test.example:443", `git.test.example:${good.port}`, "git.test.example:08443"]) {
        const r = await gitHelper(req([["protocol", "https"], ["host", host]]));
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stdout, `username=x-access-token\npassword=${CANARY}\n`, host);
        assert.ok(!r.stderr.includes(CANARY));
      }
      assert.deepEqual(live(await leases()), []);
    });

    test("git attack: CR, LF and NUL in values, and lines that are not key=value, get no answer", async () => {
      const cases: (string | Buffer)[] = [
        "protocol=https\nhost=evil.example\rhost=git.test.example\n\n",
        "protocol=https\rhost=git.test.example\n\n",
        "protocol=https\nhost=git.test.example\0\n\n",
        "protocol=https\nhost=git.test.example\n\0\n\n",
        "protocol=https\n\0host=git.test.example\n\n",
        "protocol=https\nhost\n\n",
        "protocol=https\n=git.test.example\n\n",
        "protocol=https\nhost:git.test.example\n\n",
        Buffer.from("protocol=https\nhost=git.test.example\xff\n\n", "latin1"),
        Buffer.concat([Buffer.from("protocol=https\nhost=git.test.exampl"), Buffer.from([0xc0, 0xae]), Buffer.from("\n\n")]),
        // After the blank line nothing counts.
        "protocol=https\n\nhost=git.test.example\n\n",
        "\nprotocol=https\nhost=git.test.example\n\n",
      ];
      for (const input of cases) {
        const r = await gitHelper(input);
        assert.equal(r.stdout, "", `answered ${JSON.stringify(input.toString())}`);
        noCanary(r, JSON.stringify(input.toString()));
      }
      // A CRLF request (git on some platforms) is still read, and answered once.
      const crlf = await gitHelper("protocol=https\r\nhost=git.test.example\r\n\r\n");
      assert.equal(crlf.stdout, `username=x-access-token\npassword=${CANARY}\n`);
    });

    test("git attack: a username that would add lines to the answer is refused; one from the URL is echoed verbatim, no more", async () => {
      for (const u of ["a\rpassword=x", "a\u0000b"]) {
        const r = await gitHelper(req([["protocol", "https"], ["host", "git.test.example"], ["username", u]]));
        assert.equal(r.stdout, "", `username ${JSON.stringify(u)}`);
        noCanary(r, u);
      }
      const r = await gitHelper(req([["protocol", "https"], ["host", "git.test.example"], ["username", "x=y host=evil.example"]]));
      assert.equal(r.stdout, `username=x=y host=evil.example\npassword=${CANARY}\n`);
    });

    test("git attack: a request over 64 KiB, and one that never ends its lines, get a clear error and no answer", async () => {
      const big = "protocol=https\nhost=git.test.example\n" + `wwwauth[]=${"A".repeat(70_000)}\n` + "\n";
      const r = await gitHelper(big);
      assert.equal(r.stdout, "");
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /over 65536 bytes/);
      noCanary(r, "big");
      const many = "protocol=https\n" + "capability[]=authtype\n".repeat(4000) + "host=git.test.example\n\n";
      const m = await gitHelper(many);
      assert.equal(m.stdout, "");
      assert.notEqual(m.code, 0);
    });

    test("git: new attributes (capability[], wwwauth[], password_expiry_utc, quit, oauth_refresh_token) change nothing", async () => {
      const extra: [string, string][] = [
        ["capability[]", "authtype"],
        ["capability[]", "state"],
        ["wwwauth[]", 'Basic realm="x"'],
        ["wwwauth[]", "Bearer"],
        ["password_expiry_utc", "1"],
        ["oauth_refresh_token", "x"],
        ["quit", "1"],
        ["state[]", "lessor:host=evil.example"],
        ["ephemeral", "1"],
      ];
      const ok = await gitHelper(req([["protocol", "https"], ["host", "git.test.example"], ...extra]));
      assert.equal(ok.stdout, `username=x-access-token\npassword=${CANARY}\n`);
      const other = await gitHelper(req([["protocol", "https"], ["host", "other.test.example"], ...extra]));
      assert.equal(other.stdout, "");
      noCanary(other, "other with extras");
    });

    test("git attack: path rules (useHttpPath) cannot be stepped out of with .., encoded dots, a query or a fragment", async () => {
      const ask = (path: string | null) =>
        gitHelper(req([["protocol", "https"], ["host", "git.test.example"], ...(path === null ? [] : [["path", path] as [string, string]])]), { secret: "path-token" });
      const yes = await ask("allowed.git");
      assert.equal(yes.stdout, `username=x-access-token\npassword=${PATH_CANARY}\n`, yes.stderr);
      for (const path of [
        "other.git",
        "allowed.git/../other.git",
        "allowed.gitx",
        "allowed.git%2f..%2fother.git",
        "allowed.git/%2e%2e/other.git",
        "allowed.git\\..\\other.git",
        "allowed.git/..;/other.git",
        "/allowed.git/../other.git",
        "allowed.git#/../other.git",
      ]) {
        const r = await ask(path);
        assert.equal(r.stdout, "", `path ${JSON.stringify(path)} answered`);
        noCanary(r, path);
      }
      assert.deepEqual(live(await leases()), []);
    });

    test("git attack: a path holding a '?' (git decodes %3F and git credential fill passes it on) is checked as a whole, not only before the '?'", async () => {
      // git url-decodes the URL's path before it asks the helper: https://h/allowed.git%3F/../other.git
      // is sent as path=allowed.git?/../other.git (checked below with real git), while curl requests
      // /other.git (dot segments removed). lessor must not take the '?' as the start of a query.
      // (git fetch itself asks again with the URL curl used, /other.git, and gets nothing: see the
      // real-git test below; `git credential fill` with the raw URL, as tools such as `go get` run it,
      // passes this path on.)
      const r = await gitHelper(req([["protocol", "https"], ["host", "git.test.example"], ["path", "allowed.git?/../other.git"]]), { secret: "path-token" });
      noCanary(r, "query trick", [PATH_CANARY]);
      assert.equal(r.stdout, "", "the credential for /allowed.git was given for a request git sends to /other.git");
    });

    test("git attack: store and erase cannot change or delete the secret, whatever they carry", async () => {
      const auditBefore = (await audit()).length;
      for (const action of ["store", "erase"]) {
        for (const input of [
          req([["protocol", "https"], ["host", "git.test.example"], ["username", "x-access-token"], ["password", "attacker-chosen"]]),
          req([["protocol", "https"], ["host", "git.test.example"], ["password", "attacker-chosen"], ["password", "again"]]),
          "garbage\0\n\n",
        ]) {
          const r = await gitHelper(input, { action });
          assert.equal(r.stdout, "");
          assert.ok(!r.stderr.includes("attacker-chosen"));
          noCanary(r, action);
        }
      }
      assert.equal((await audit()).length, auditBefore, "store/erase wrote audit rows");
      assert.equal(await reveal("github-token"), CANARY, "the value changed");
      const still = await gitHelper(req([["protocol", "https"], ["host", "git.test.example"]]));
      assert.equal(still.stdout, `username=x-access-token\npassword=${CANARY}\n`);
    });

    test("git: every answer is audited (lease and read), and a refused host is audited as a denial", async () => {
      const before = (await audit()).length;
      const ok = await gitHelper(req([["protocol", "https"], ["host", "git.test.example"]]));
      assert.equal(ok.stdout, `username=x-access-token\npassword=${CANARY}\n`);
      const no = await gitHelper(req([["protocol", "https"], ["host", "other.test.example"]]));
      assert.equal(no.stdout, "");
      const rows = (await audit()).slice(before);
      assert.ok(rows.some((r) => r.type === "lease_granted" && r.agent === "claude" && r.secret?.endsWith("github-token") && r.outcome === "ok"), JSON.stringify(rows.map((r) => r.type)));
      assert.ok(rows.some((r) => r.type === "secret_accessed" && r.agent === "claude" && r.domain === "git.test.example"));
      assert.ok(rows.some((r) => r.type === "access_denied" && r.outcome === "denied" && (r.domain ?? "").includes("other.test.example")));
      for (const r of rows) for (const c of ALL_CANARIES) assert.ok(!JSON.stringify(r).includes(c), "a value in the audit trail");
    });
  });

  describe("git-credential with real git", () => {
    const fill = (url: string, opts: { useHttpPath?: boolean; secret?: string } = {}) =>
      run(
        GIT,
        [
          "-c", "credential.helper=",
          "-c", `credential.helper=!'${process.execPath}' -- '${BIN}' git-credential --agent claude --secret ${opts.secret ?? "github-token"}`,
          "-c", `credential.useHttpPath=${opts.useHttpPath ? "true" : "false"}`,
          "credential", "fill",
        ],
        { ...gitEnv(HOME), LESSOR_HOME, GIT_ASKPASS: "", SSH_ASKPASS: "" },
        `url=${url}\n\n`,
      );

    test("git attack: odd remote and submodule URLs (userinfo, ?, #, encoded dots, other ports) never get the granted host's credential for another host", async () => {
      const ok = await fill("https://git.test.example/org/repo.git");
      assert.match(ok.stdout, new RegExp(`password=${CANARY}`));
      for (const url of [
        "https://evil.example/",
        "https://git.test.example@evil.example/",
        "https://git.test.example:x@evil.example/",
        "https://evil.example?@git.test.example/",
        "https://evil.example#@git.test.example/",
        "https://git.test.example%2eevil.example/",
        "https://git.test.example.evil.example/",
        "https://evil.example%40git.test.example/",
        "https://[::1]/",
        "https://127.0.0.1/",
        "http://git.test.example/",
        "ssh://git.test.example/",
        "https://g%D1%96t.test.example/",
      ]) {
        const r = await fill(url);
        assert.ok(!r.stdout.includes(CANARY), `${url}: git got the credential`);
        assert.ok(!r.stderr.includes(CANARY));
      }
      assert.deepEqual(live(await leases()), []);
    });

    test("git attack: URLs that git and curl might split differently (\\@, ?@, #@, userinfo) send the credential only to the granted host", async () => {
      const P = good.port;
      for (const url of [
        `https://other.test.example:${P}\\@git.test.example:${P}/repo.git`,
        `https://other.test.example:${P}?@git.test.example:${P}/repo.git`,
        `https://other.test.example:${P}#@git.test.example:${P}/repo.git`,
        `https://git.test.example:${P}@other.test.example:${P}/repo.git`,
        `https://git.test.example@other.test.example:${P}/repo.git`,
        `https://other.test.example:${P}/repo.git?@git.test.example`,
        `https://other.test.example%3A${P}%40git.test.example:${P}/repo.git`,
      ]) {
        const before = good.seen.length;
        const r = await run(
          GIT,
          [
            "-c", "credential.helper=",
            "-c", `credential.helper=!'${process.execPath}' -- '${BIN}' git-credential --agent claude --secret github-token`,
            "-c", `http.curloptResolve=git.test.example:${P}:127.0.0.1`,
            "-c", `http.curloptResolve=other.test.example:${P}:127.0.0.1`,
            "ls-remote", url,
          ],
          { ...gitEnv(HOME), LESSOR_HOME, GIT_SSL_CAINFO: CA_FILE, NO_COLOR: "1" },
          undefined,
          repoForFetch(),
        );
        assert.ok(!r.stderr.includes(CANARY));
        for (const s of good.seen.slice(before))
          if (decodeAuth(s.auth).includes(CANARY)) assert.match(s.host, /^git\.test\.example(:\d+)?$/, `${url}: the credential went to Host ${s.host}`);
      }
      assert.deepEqual(live(await leases()), []);
    });

    test("git attack: with useHttpPath, a remote URL whose path holds %3F does not get the one-repo credential sent to another repo", async () => {
      // What git asks the helper for this URL:
      const asked = await fill("https://git.test.example/allowed.git%3F/../other.git", { useHttpPath: true, secret: "path-token" });
      assert.ok(!asked.stderr.includes(PATH_CANARY));
      // And a real clone: where the credential goes.
      const before = good.seen.length;
      const r = await run(
        GIT,
        [
          "-c", "credential.helper=",
          "-c", `credential.helper=!'${process.execPath}' -- '${BIN}' git-credential --agent claude --secret path-token`,
          "-c", "credential.useHttpPath=true",
          "-c", `http.curloptResolve=git.test.example:${good.port}:127.0.0.1`,
          // A remote URL as `git fetch URL`, `git ls-remote URL` or a remote's configured url uses it
          // (`git clone` would remove the dot segments itself first).
          "ls-remote", `https://git.test.example:${good.port}/allowed.git%3F/../other.git`,
        ],
        { ...gitEnv(HOME), LESSOR_HOME, GIT_SSL_CAINFO: CA_FILE, NO_COLOR: "1" },
        undefined,
        repoForFetch(),
      );
      assert.ok(!r.stderr.includes(PATH_CANARY));
      const withCred = good.seen.slice(before).filter((s) => s.auth !== "");
      const leaked = withCred.filter((s) => decodeAuth(s.auth).includes(PATH_CANARY) && !/^\/allowed\.git(\/|$|\?)/.test(s.path));
      assert.deepEqual(
        leaked.map((s) => s.path),
        [],
        `the path-scoped credential (paths = ["/allowed.git"]) went to ${JSON.stringify(leaked.map((s) => s.path))}; git asked with ${JSON.stringify(asked.stdout.split("\n")[0])}`,
      );
    });

    test("git attack: a hostile repository's .git/config (curloptResolve + its own CA file) does not get the granted host's credential sent to another server", async () => {
      // The repository was unpacked from an archive (or written by an agent) with these settings; the
      // owner runs git fetch in it with lessor configured globally for git.test.example.
      const repo = join(root, "hostile-repo");
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
          "",
        ].join("\n"),
      );
      const before = evil.seen.length;
      const r = await run(
        GIT,
        ["-c", "credential.helper=", "-c", `credential.helper=!'${process.execPath}' -- '${BIN}' git-credential --agent claude --secret github-token`, "fetch", "-q", "origin"],
        { ...gitEnv(HOME), LESSOR_HOME, NO_COLOR: "1" },
        undefined,
        repo,
      );
      assert.ok(!r.stderr.includes(CANARY));
      const got = evil.seen.slice(before).filter((s) => decodeAuth(s.auth).includes(CANARY));
      assert.equal(got.length, 0, "a server that is not the real git.test.example (another CA, named by the repository's own config) received the credential");
    });

    test("git attack: files and sockets planted in the repository (a .lessor home, lessor.sock, .env, lessor.toml) do not redirect the helper", async () => {
      const repo = join(root, "planted-repo");
      mkdirSync(join(repo, ".lessor"), { recursive: true });
      spawnSync(GIT, ["init", "-q", repo], { env: gitEnv(HOME) });
      const connections: string[] = [];
      const squatters: net.Server[] = [];
      for (const p of [join(repo, ".lessor", "lessor.sock"), join(repo, "lessor.sock"), join(repo, ".git", "lessor.sock")]) {
        const s = net.createServer((c) => {
          connections.push(p);
          c.destroy();
        });
        await new Promise<void>((r) => s.listen(p, r));
        squatters.push(s);
      }
      writeFileSync(join(repo, ".env"), `LESSOR_SOCKET=${join(repo, "lessor.sock")}\nLESSOR_HOME=${join(repo, ".lessor")}\n`);
      writeFileSync(join(repo, "lessor.toml"), `[docker]\n"evil.example" = { secret = "github-token", username = "u", agent = "claude" }\n`);
      writeFileSync(join(repo, ".lessor", "lessor.toml"), `[docker]\n"evil.example" = { secret = "github-token", username = "u", agent = "claude" }\n`);
      appendFileSync(join(repo, ".git", "config"), `[lessor]\n\tsocket = ${join(repo, "lessor.sock")}\n\thome = ${join(repo, ".lessor")}\n`);
      try {
        const r = await run(
          GIT,
          ["-c", "credential.helper=", "-c", `credential.helper=!'${process.execPath}' -- '${BIN}' git-credential --agent claude --secret github-token`, "credential", "fill"],
          { ...gitEnv(HOME), LESSOR_HOME, GIT_ASKPASS: "" },
          "url=https://git.test.example/\n\n",
          repo,
        );
        assert.match(r.stdout, new RegExp(`password=${CANARY}`), r.stderr);
        const d = await dockerHelper("get", "https://evil.example");
        assert.equal(d.code, 1);
        assert.equal(d.stdout.trim(), "credentials not found in native keychain");
        assert.deepEqual(connections, [], "the helper connected to a socket planted in the repository");
      } finally {
        for (const s of squatters) s.close();
      }
    });
  });

  describe("docker-credential-lessor", () => {
    test("docker attack: server URLs that are not exactly a configured registry get not-found and no secret", async () => {
      const urls = [
        "registry.test.example:443",
        "https://registry.test.example:443/",
        "http://registry.test.example",
        "HTTP://registry.test.example/v2/",
        "  http://registry.test.example",
        "\thttp://registry.test.example",
        "https://http://registry.test.example",
        "http:registry.test.example",
        "http:/registry.test.example",
        "ftp://registry.test.example",
        "unix:///registry.test.example",
        "//registry.test.example",
        "https:///registry.test.example",
        "https:\\\\registry.test.example",
        "https://registry.test.example.evil.example",
        "https://evilregistry.test.example",
        "https://test.example",
        "https://registry.test.exampl",
        "https://evil.example/registry.test.example",
        "https://registry.test.example@evil.example",
        "https://user:registry.test.example@evil.example/",
        "https://evil.example#registry.test.example",
        "https://evil.example?registry.test.example",
        "https://evil.example\\registry.test.example",
        "https://registry.test.example%2eevil.example",
        "https://registry.test.example\u0000.evil.example",
        "https://reg\u0456stry.test.example",
        "https://registry.test.example\u200b",
        "registry.internal",
        "registry.internal:5001",
        "https://registry.internal:443",
        "registry.internal:5000:5000",
        "registry.internal:0",
        "registry.internal:65536",
        "https://index.docker.io.evil.example/v1/",
        "https://docker.io/",
        "https://registry-1.docker.io/v2/",
        "index.docker.io:443",
        "[::1]:5000",
        "127.0.0.1:5000",
        "https://" + "a".repeat(2000) + ".example",
      ];
      for (const url of urls) {
        const r = await dockerHelper("get", url);
        assert.equal(r.code, 1, `${JSON.stringify(url)}: exit ${r.code} ${r.stdout}`);
        assert.equal(r.stdout.trim(), "credentials not found in native keychain", JSON.stringify(url));
        noCanary(r, url);
      }
      assert.deepEqual(live(await leases()), []);
      // A password someone put in the registry URL is not repeated on stderr.
      const withUserinfo = await dockerHelper("get", "https://robot:pw-CANARY-in-url-9f2c@unknown-registry.example/v2/");
      assert.equal(withUserinfo.code, 1);
      assert.ok(!withUserinfo.stderr.includes("pw-CANARY-in-url-9f2c"), withUserinfo.stderr);
      assert.match(withUserinfo.stderr, /no credential for "https:\/\/…@unknown-registry\.example\/v2\/"/);
    });

    test("docker: the forms of a configured registry that are the same registry are answered", async () => {
      for (const [url, user, secret] of [
        ["https://REGISTRY.TEST.EXAMPLE/", "robot", REG_CANARY],
        ["registry.test.example.", "robot", REG_CANARY],
        ["https://registry.test.example/v2/foo/bar", "robot", REG_CANARY],
        ["https://index.docker.io/v1/", "hubuser", REG_CANARY],
        ["index.docker.io", "hubuser", REG_CANARY],
        ["registry.internal:5000", "porter", PORT_CANARY],
        ["https://registry.internal:5000/v2/", "porter", PORT_CANARY],
      ] as const) {
        const r = await dockerHelper("get", url);
        assert.equal(r.code, 0, `${url}: ${r.stdout} ${r.stderr}`);
        const j = JSON.parse(r.stdout) as { Username: string; Secret: string };
        assert.equal(j.Username, user);
        assert.equal(j.Secret, secret);
        noCanary(r, url, [secret]);
      }
      assert.deepEqual(live(await leases()), []);
    });

    test("docker attack: NUL, line breaks and oversize input on stdin get an error and no secret", async () => {
      for (const input of ["registry.test.example\0", "evil.example\nregistry.test.example", "http://evil.example\nregistry.test.example", Buffer.alloc(70_000, 0x61)]) {
        const r = await dockerHelper("get", input);
        assert.equal(r.code, 1, JSON.stringify(input.toString().slice(0, 60)));
        noCanary(r, "stdin");
      }
    });

    test("docker: a value that is not UTF-8 gets an error that does not hold the value", async () => {
      const r = await dockerHelper("get", "binary.test.example");
      assert.equal(r.code, 1);
      assert.match(r.stdout, /not UTF-8/);
      noCanary(r, "binary");
      assert.ok(!r.stdout.includes("binarytail"));
      assert.deepEqual(live(await leases()), []);
    });

    test("docker attack: store and erase cannot overwrite or delete the secret", async () => {
      const s = await dockerHelper("store", JSON.stringify({ ServerURL: "registry.test.example", Username: "robot", Secret: "attacker-chosen" }));
      assert.equal(s.code, 1);
      assert.ok(!s.stdout.includes("attacker-chosen") && !s.stderr.includes("attacker-chosen"));
      for (const u of ["registry.test.example", "https://index.docker.io/v1/", "registry.internal:5000"]) assert.equal((await dockerHelper("erase", u)).code, 0);
      assert.equal(await reveal("registry-token"), REG_CANARY);
      assert.equal(await reveal("port-token"), PORT_CANARY);
      assert.equal(JSON.parse((await dockerHelper("get", "registry.test.example")).stdout).Secret, REG_CANARY);
    });

    test("docker: every answer is audited, and a refused one as a denial", async () => {
      const before = (await audit()).length;
      const r = await dockerHelper("get", "registry.internal:5000");
      assert.equal(r.code, 0);
      const rows = (await audit()).slice(before);
      assert.ok(rows.some((x) => x.type === "secret_accessed" && x.agent === "builder" && x.domain === "registry.internal"), JSON.stringify(rows.map((x) => [x.type, x.domain])));
      for (const x of rows) for (const c of ALL_CANARIES) assert.ok(!JSON.stringify(x).includes(c));
    });

    test("docker attack: an environment naming a daemon that is not there fails closed (no fallback to another vault)", async () => {
      const sock = join(root, "nowhere.sock");
      const r = await dockerHelper("get", "registry.test.example", { LESSOR_SOCKET: sock });
      assert.equal(r.code, 1);
      noCanary(r, "nowhere");
      const g = await gitHelper(req([["protocol", "https"], ["host", "git.test.example"]]), { env: { LESSOR_SOCKET: sock } });
      assert.equal(g.stdout, "");
      assert.notEqual(g.code, 0);
      noCanary(g, "nowhere");
    });
  });
});

test("repositoryRouting: only routing and trust keys from the repository's own scopes count", () => {
  const out = [
    ["local", "http.curloptresolve\ngit.test.example:443:10.0.0.1"],
    ["global", "http.proxy\nhttp://corp-proxy:3128"],
    ["worktree", "http.https://git.test.example/.sslverify\nfalse"],
    ["local", "remote.origin.proxy\nhttp://p:1"],
    ["local", "http.extraheader\nX-A: b"],
    ["command", "http.sslcainfo\n/etc/ca.pem"],
    ["system", "http.sslverify\ntrue"],
  ]
    .map(([scope, kv]) => `${scope}\0${kv}\0`)
    .join("");
  // http.extraHeader counts since session 36: a `Host:` header of the repository's choosing routes the
  // token to another tenant of a shared front end (test/attack-s36-credhelp.test.ts).
  assert.deepEqual(repositoryRouting(out), ["http.curloptresolve", "http.https://git.test.example/.sslverify", "remote.origin.proxy", "http.extraheader"]);
  assert.deepEqual(repositoryRouting(""), []);
});
