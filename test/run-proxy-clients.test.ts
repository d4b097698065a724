/**
 * Real clients through `lessor run`'s injecting proxy, in the real sandbox: git (smart HTTP, a real
 * `git http-backend`, over HTTP/2 and HTTP/1.1, the password from a credential helper or the URL),
 * Node (undici's EnvHttpProxyAgent) and Python (urllib, standard library). Each uses the token it
 * holds, which is a placeholder; the upstream must receive the real credential, the child must only
 * ever see the placeholder. Then zero exposure, checked from inside: a child dumps everything it can
 * see (environment, every /proc/PID/environ and cmdline, /run/lessor, the memory of the processes it
 * can read) to files, and this test, outside, searches them for the credentials; it also tries the
 * ways around the proxy (the vault's files, the daemon's socket, a direct connection, DNS).
 *
 * Nothing leaves the machine: one HTTPS upstream on 127.0.0.1 serves every name (`[proxy] hosts`),
 * `[proxy] allow` opens loopback for this test only, and the sandbox has no route out.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { initHome, openVault } from "../src/config/open-vault.js";
import { LocalCa } from "../src/proxy/ca.js";
import { BIN } from "./cli-harness.js";
import { startServe, type RunningDaemon } from "./daemon-harness.js";
import { makeBareRepo, serveGit } from "./fixtures/git-http-backend.js";
import { filesUnder } from "./helpers.js";

const GIT = "/usr/bin/git";
const PYTHON = "/usr/bin/python3";
const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"]).status === 0;
const HAVE_GIT = spawnSync(GIT, ["--version"]).status === 0;
// git's https transport is git-remote-https, built on libcurl; curl itself shows libcurl is there.
const HAVE_CURL = spawnSync("curl", ["--version"]).status === 0;
const HAVE_PYTHON = spawnSync(PYTHON, ["--version"]).status === 0;
const SKIP = !HAVE_BWRAP
  ? "bubblewrap cannot make a sandbox here (apt-get install bubblewrap)"
  : !HAVE_GIT
    ? `git is not at ${GIT} (apt-get install git)`
    : !HAVE_CURL
      ? "curl is not installed (apt-get install curl)"
      : false;
const NO_PYTHON = HAVE_PYTHON ? false : `${PYTHON} is missing (apt-get install python3)`;

const TOKEN = "ghp_" + randomBytes(18).toString("hex"); // 40 characters, shaped like a GitHub token
const CANARY = "sk-canary-" + randomBytes(16).toString("hex");
const OTHER = "sk-other-" + randomBytes(16).toString("hex");
const SECRETS = [TOKEN, CANARY, OTHER];
const REPO_TEXT = `the repository's README ${randomBytes(8).toString("hex")}\n`;
/** What git sends once it has the password: x-access-token and the real token, as GitHub wants it. */
const GIT_AUTH = "Basic " + Buffer.from(`x-access-token:${TOKEN}`).toString("base64");

const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));
const FIXTURES = join(REPO_ROOT, "test", "fixtures");

const root = mkdtempSync(join(tmpdir(), "lessor-run-clients-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const PROJECT = join(root, "project");
const LESSOR_HOME = join(HOME, ".lessor");
const SRV = join(root, "srv");

interface Seen {
  host: string;
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  status: number;
}

const POLICY = `
[[rule]]
name = "clients"
effect = "allow"
agents = ["git", "node", "python", "exposed"]
secrets = ["github-token"]
domains = ["git.test.example", "api.test.example"]

[[rule]]
name = "canary"
effect = "allow"
agents = ["exposed"]
secrets = ["canary-key"]
domains = ["api.test.example"]

[[rule]]
name = "git-host-only"
effect = "allow"
agents = ["git-nocred"]
secrets = ["other-key"]
domains = ["git.test.example"]
`;

let port = 0;
let server: https.Server;
let daemon: RunningDaemon | undefined;
const seen: Seen[] = [];

/** The upstream: git.test.example is a git server that wants the token, api.test.example echoes. */
function handle(req: IncomingMessage, res: ServerResponse, body: Buffer): void {
  const host = String(req.headers.host ?? "");
  const s: Seen = { host, method: req.method!, url: req.url!, headers: req.headers, status: 0 };
  seen.push(s);
  res.on("finish", () => (s.status = res.statusCode));
  const auth = String(req.headers.authorization ?? "");
  if (host.startsWith("git.test.example")) {
    if (auth !== GIT_AUTH) {
      res.writeHead(401, { "www-authenticate": 'Basic realm="lessor test git"', "content-type": "text/plain" });
      res.end("authentication required\n");
      return;
    }
    serveGit(req, res, body, SRV, "x-access-token");
    return;
  }
  if ((req.url ?? "").split("?")[0] === "/echo") {
    // The credential it received, cut across two writes: the proxy's scrubber must hold a prefix back.
    res.writeHead(200, { "content-type": "text/plain" });
    res.write("you sent: " + auth.slice(0, 11));
    setTimeout(() => res.end(auth.slice(11)), 10);
    return;
  }
  res.writeHead(404, { "content-type": "text/plain" });
  res.end("not found\n");
}

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `lessor run --agent AGENT -- sh -c SCRIPT` from the project directory, as the owner would. */
function lessorRun(agent: string, script: string, env: Record<string, string>): Promise<Ran> {
  const child = spawn(process.execPath, ["--", BIN, "run", "--agent", agent, "--", "/bin/sh", "-c", script], {
    cwd: PROJECT,
    env: { PATH: "/usr/bin:/bin", HOME, LESSOR_HOME, NO_COLOR: "1", PORT: String(port), GIT_TERMINAL_PROMPT: "0", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on("data", (d: Buffer) => out.push(d));
  child.stderr.on("data", (d: Buffer) => err.push(d));
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  return new Promise((resolve) =>
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
    }),
  );
}

/** Every form a credential could take in a file: as is, and base64 (alone or in a Basic pair). */
function forms(secret: string): Buffer[] {
  const b64 = (s: string): string => Buffer.from(s).toString("base64");
  return [secret, b64(secret), b64(`x-access-token:${secret}`)].map((s) => Buffer.from(s));
}

/** Fails if a credential, in any of its forms, is in `data`. */
function assertClean(where: string, data: Buffer | string): void {
  const buf = typeof data === "string" ? Buffer.from(data) : data;
  for (const secret of SECRETS) for (const f of forms(secret)) assert.equal(buf.indexOf(f), -1, `a credential appears in ${where}`);
}


/** The requests the upstream saw for `host` since `from`. */
function seenFor(host: string, from: number): Seen[] {
  return seen.slice(from).filter((s) => s.host.startsWith(host));
}

/** The one JSON line a client fixture printed into `file` in the project. */
function readJson(file: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(PROJECT, file), "utf8")) as Record<string, unknown>;
}

describe("real clients through lessor run's proxy, and zero exposure from inside", { skip: SKIP }, () => {
  before(async () => {
    mkdirSync(PROJECT, { recursive: true });
    mkdirSync(HOME, { recursive: true });
    mkdirSync(SRV, { recursive: true });
    makeBareRepo(SRV, "repo", { "README.md": REPO_TEXT });

    const ca = LocalCa.create({ permitted: ["git.test.example", "api.test.example"] });
    writeFileSync(join(root, "upstream-ca.pem"), ca.certPem);
    server = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, (req, res) => {
      const body: Buffer[] = [];
      req.on("data", (d: Buffer) => body.push(d));
      req.on("end", () => handle(req, res, Buffer.concat(body)));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as AddressInfo).port;

    await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    // The Node client's imports (undici) and the fixtures are shown read-only, found from this file.
    const config = `
[run]
read = [${JSON.stringify(join(REPO_ROOT, "node_modules"))}, ${JSON.stringify(FIXTURES)}]

[proxy]
ports = [${port}]
allow = ["127.0.0.1"]
hosts = { "api.test.example" = "127.0.0.1", "git.test.example" = "127.0.0.1" }
upstream_ca = ${JSON.stringify(join(root, "upstream-ca.pem"))}
`;
    writeFileSync(join(LESSOR_HOME, "lessor.toml"), readFileSync(join(LESSOR_HOME, "lessor.toml"), "utf8") + config, { mode: 0o600 });
    writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
    const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    try {
      await vault.admin().storeSecret({ name: "github-token", value: TOKEN, kind: "pat" });
      await vault.admin().storeSecret({ name: "canary-key", value: CANARY });
      await vault.admin().storeSecret({ name: "other-key", value: OTHER });
    } finally {
      await vault.close();
    }
    // A daemon, so that its socket exists for the child to try (lessor run then goes through it).
    daemon = await startServe(LESSOR_HOME);
  });
  after(async () => {
    await daemon?.stop();
    server?.closeAllConnections();
    await new Promise<void>((r) => server?.close(() => r()));
  });

  test("git clone over smart HTTP (HTTP/2 with a credential helper, HTTP/1.1 with the password in the URL): the server gets the real token, the child holds the placeholder", async () => {
    const from = seen.length;
    const helper = `!f() { echo username=x-access-token; echo "password=$GITHUB_TOKEN"; }; f`;
    const r = await lessorRun(
      "git",
      [
        "set -e",
        'printf "ENV:%s\\n" "$GITHUB_TOKEN"',
        `GIT_TRACE_CURL="$PWD/trace-h2.txt" GIT_TRACE_CURL_NO_DATA=1 git -c http.version=HTTP/2 -c credential.helper='${helper}' clone -q "https://git.test.example:$PORT/repo.git" clone-h2`,
        'GIT_TRACE_CURL="$PWD/trace-h1.txt" GIT_TRACE_CURL_NO_DATA=1 git -c http.version=HTTP/1.1 clone -q "https://x-access-token:$GITHUB_TOKEN@git.test.example:$PORT/repo.git" clone-h1',
      ].join("\n"),
      { GITHUB_TOKEN: "$S:github-token" },
    );
    assert.equal(r.code, 0, r.stderr);
    const placeholder = /ENV:(\S+)/.exec(r.stdout)?.[1] ?? "";
    assert.match(placeholder, /^ghp_[0-9A-Za-z]{36}$/, "a placeholder shaped like the token");
    assert.notEqual(placeholder, TOKEN);

    // Both clones hold the repository's file.
    assert.equal(readFileSync(join(PROJECT, "clone-h2", "README.md"), "utf8"), REPO_TEXT);
    assert.equal(readFileSync(join(PROJECT, "clone-h1", "README.md"), "utf8"), REPO_TEXT);
    // The clients really spoke h2 and http/1.1 to the proxy (curl's own trace).
    assert.match(readFileSync(join(PROJECT, "trace-h2.txt"), "utf8"), /ALPN[:,] server accepted (to use )?h2/);
    assert.match(readFileSync(join(PROJECT, "trace-h1.txt"), "utf8"), /ALPN[:,] server accepted (to use )?http\/1\.1/);
    // The clone made with the password in its URL keeps that URL: with the placeholder in it.
    const cfg = readFileSync(join(PROJECT, "clone-h1", ".git", "config"), "utf8");
    assert.ok(cfg.includes(`x-access-token:${placeholder}@git.test.example`), cfg);

    // The server: each clone (protocol v2) is GET info/refs, then POST git-upload-pack for ls-refs and
    // for fetch; each with the real token.
    const git = seenFor("git.test.example", from);
    const authed = git.filter((s) => s.headers.authorization !== undefined);
    for (const s of authed) assert.equal(s.headers.authorization, GIT_AUTH, `${s.method} ${s.url} carried the real token, nothing else`);
    const served = authed.filter((s) => s.status === 200).map((s) => `${s.method} ${s.url}`);
    const oneClone = ["GET /repo.git/info/refs?service=git-upload-pack", "POST /repo.git/git-upload-pack", "POST /repo.git/git-upload-pack"];
    assert.deepEqual(served, [...oneClone, ...oneClone]);
    for (const s of git.filter((x) => x.status !== 200)) assert.equal(s.status, 401, "only unauthenticated first tries were refused");

    for (const f of filesUnder(PROJECT).filter((p) => /\/(clone-h[12]|trace-h[12]\.txt)/.test(p))) assertClean(f, readFileSync(f));
    assertClean("stdout", r.stdout);
    assertClean("stderr", r.stderr);
  });

  test("git clone without the token fails: with no lease the proxy refuses the host; with a lease for the host but no token the server answers 401", async () => {
    const helper = `!f() { echo username=x-access-token; echo "password=$GITHUB_TOKEN"; }; f`;
    const clone = (dir: string): string => `git -c credential.helper='${helper}' clone -q "https://git.test.example:$PORT/repo.git" ${dir}; echo "rc=$?"`;

    // No reference at all: no lease covers git.test.example, so strict egress refuses the CONNECT.
    let from = seen.length;
    const none = await lessorRun("git", clone("clone-none"), {});
    assert.equal(none.code, 0, none.stderr);
    assert.doesNotMatch(none.stdout, /rc=0/);
    assert.match(none.stderr, /CONNECT tunnel failed, response 403/);
    assert.equal(seen.length, from, "the server saw nothing");
    assert.equal(existsSync(join(PROJECT, "clone-none", "README.md")), false);

    // Another secret's lease covers the host (so it is intercepted), but GITHUB_TOKEN is not referenced.
    from = seen.length;
    const bare = await lessorRun("git-nocred", clone("clone-nocred"), { OTHER_KEY: "$S:other-key" });
    assert.equal(bare.code, 0, bare.stderr);
    assert.doesNotMatch(bare.stdout, /rc=0/);
    assert.match(bare.stderr, /Authentication failed/);
    const git = seenFor("git.test.example", from);
    assert.ok(git.length >= 2, "git tried, then tried again with the helper's (empty) password");
    for (const s of git) {
      assert.equal(s.status, 401);
      assert.notEqual(s.headers.authorization, GIT_AUTH);
    }
    assert.equal(existsSync(join(PROJECT, "clone-nocred", "README.md")), false);
    assertClean("stderr", none.stderr + bare.stderr);
  });

  test("Node with undici's EnvHttpProxyAgent: the upstream gets the real token, the script sees only the placeholder (echo masked)", async () => {
    const from = seen.length;
    const r = await lessorRun("node", `node ${JSON.stringify(join(FIXTURES, "proxy-client-undici.mjs"))} "https://api.test.example:$PORT/echo" > node.out`, {
      GITHUB_TOKEN: "$S:github-token",
    });
    assert.equal(r.code, 0, r.stderr + readFileSync(join(PROJECT, "node.out"), "utf8"));
    const got = readJson("node.out");
    assert.match(String(got["sent"]), /^ghp_[0-9A-Za-z]{36}$/);
    assert.notEqual(got["sent"], TOKEN);
    assert.equal(got["status"], 200);
    assert.equal(got["body"], `you sent: Bearer ${String(got["sent"])}`, "the echoed token came back as the placeholder");
    const api = seenFor("api.test.example", from);
    assert.equal(api.length, 1);
    assert.equal(api[0]!.headers.authorization, `Bearer ${TOKEN}`);
    assertClean("node.out", readFileSync(join(PROJECT, "node.out")));
    assertClean("stderr", r.stderr);
  });

  test("the daemon restarts mid-run: the run's proxy reconnects and the next request carries the credential again", async () => {
    const from = seen.length;
    for (const f of ["first.out", "second.out", "first-done", "go"]) rmSync(join(PROJECT, f), { force: true });
    const curl = (out: string): string =>
      `curl -sS -o ${out} -w '%{http_code}' -H "Authorization: Bearer $GITHUB_TOKEN" "https://api.test.example:$PORT/echo"`;
    const running = lessorRun(
      "node",
      `${curl("first.out")} > first.code; : > first-done; i=0; while [ ! -e go ] && [ $i -lt 250 ]; do sleep 0.1; i=$((i+1)); done; ${curl("second.out")} > second.code`,
      { GITHUB_TOKEN: "$S:github-token" },
    );
    const until = Date.now() + 20_000;
    while (!existsSync(join(PROJECT, "first-done")) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    assert.ok(existsSync(join(PROJECT, "first-done")), "the first request did not finish");
    await daemon!.stop();
    daemon = await startServe(LESSOR_HOME);
    writeFileSync(join(PROJECT, "go"), "");
    const r = await running;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(readFileSync(join(PROJECT, "first.code"), "utf8"), "200");
    assert.equal(readFileSync(join(PROJECT, "second.code"), "utf8"), "200", `after the restart: ${readFileSync(join(PROJECT, "second.out"), "utf8")}\n${r.stderr}`);
    const api = seenFor("api.test.example", from);
    assert.equal(api.length, 2, "both requests reached the upstream");
    for (const a of api) assert.equal(a.headers.authorization, `Bearer ${TOKEN}`);
    for (const f of ["first.out", "second.out"]) {
      const body = readFileSync(join(PROJECT, f), "utf8");
      assert.match(body, /^you sent: Bearer ghp_/);
      assertClean(f, body);
    }
    assertClean("stderr", r.stderr);
  });

  test("Python with urllib (https_proxy, SSL_CERT_FILE): the upstream gets the real token, the script sees only the placeholder", { skip: NO_PYTHON }, async () => {
    const from = seen.length;
    const r = await lessorRun("python", `${PYTHON} ${JSON.stringify(join(FIXTURES, "proxy-client-urllib.py"))} "https://api.test.example:$PORT/echo" > python.out`, {
      GITHUB_TOKEN: "$S:github-token",
    });
    assert.equal(r.code, 0, r.stderr + readFileSync(join(PROJECT, "python.out"), "utf8"));
    const got = readJson("python.out");
    assert.match(String(got["sent"]), /^ghp_[0-9A-Za-z]{36}$/);
    assert.notEqual(got["sent"], TOKEN);
    assert.equal(got["status"], 200);
    assert.equal(got["body"], `you sent: Bearer ${String(got["sent"])}`);
    const api = seenFor("api.test.example", from);
    assert.equal(api.length, 1);
    assert.equal(api[0]!.headers.authorization, `Bearer ${TOKEN}`);
    assertClean("python.out", readFileSync(join(PROJECT, "python.out")));
    assertClean("stderr", r.stderr);
  });

  test("zero exposure: after using the canary through the proxy, nothing the child can see (env, /proc, /run/lessor, memory, the project) holds it, and every way around the proxy fails", { skip: NO_PYTHON }, async () => {
    const d = daemon!;
    const keyFile = join(LESSOR_HOME, "master.key");
    assert.ok(existsSync(keyFile) && existsSync(d.socket), "the key file and the daemon's socket exist outside");
    const out = join(PROJECT, "exposure");
    writeFileSync(
      join(PROJECT, "exposure-spec.json"),
      JSON.stringify({ out, url: `https://api.test.example:${port}/echo`, home: LESSOR_HOME, key_file: keyFile, socket: d.socket, port, host: "api.test.example" }),
    );
    const from = seen.length;
    const r = await lessorRun("exposed", `${PYTHON} ${JSON.stringify(join(FIXTURES, "exposure-dump.py"))} exposure-spec.json > exposure.out`, {
      GITHUB_TOKEN: "$S:github-token",
      CANARY_KEY: "$S:canary-key",
    });
    assert.equal(r.code, 0, r.stderr);
    const res = readJson("exposure.out") as {
      pid: number;
      echo: { status?: number; body?: string; error?: string };
      probes: Record<string, { ok: boolean; detail: string }>;
      procs: Record<string, Record<string, number | string>>;
      memory: Record<string, { bytes?: number; regions?: number; error?: string }>;
      run_lessor: { name: string; kind: string }[];
    };
    const env = JSON.parse(readFileSync(join(out, "env.json"), "utf8")) as Record<string, string>;
    const placeholder = env["CANARY_KEY"]!;
    assert.ok(placeholder && placeholder !== CANARY, "the child holds a placeholder for the canary");

    // It used the canary: the upstream got the value, the child the placeholder back.
    assert.equal(res.echo.status, 200, JSON.stringify(res.echo));
    assert.equal(res.echo.body, `you sent: Bearer ${placeholder}`);
    const api = seenFor("api.test.example", from);
    assert.equal(api.length, 1);
    assert.equal(api[0]!.headers.authorization, `Bearer ${CANARY}`);

    // The dumps are real: its own memory was read, and holds the placeholder it was given (so a
    // credential there would have been found too); it saw the sandbox's init (whose command line names
    // the native bridge that became the command) and the shell as processes.
    const self = res.memory[String(res.pid)]!;
    assert.ok((self.bytes ?? 0) > 1_000_000, `its own memory was read: ${JSON.stringify(self)}`);
    assert.ok(readFileSync(join(out, `mem-${res.pid}.txt`)).includes(placeholder), "the memory dump holds the placeholder");
    assert.ok(Object.keys(res.procs).length >= 3, JSON.stringify(res.procs));
    const procs = readFileSync(join(out, "procs.bin"));
    assert.ok(procs.includes("lessor-netbridge\x003128\x00"), "the init's command line was read");
    assert.ok(procs.includes(placeholder), "environments were read");
    assert.deepEqual(res.run_lessor.map((e) => `${e.name}:${e.kind}`).sort(), ["ca-bundle.pem:file", "ca.pem:file"], "no proxy socket: the proxy accepts on the bridge's listener");
    assert.equal(readFileSync(join(out, "run-lessor.bin")).includes("PRIVATE KEY"), false, "the session CA's key is not shown");

    // Searched from outside: no credential anywhere in the project, the dumps included.
    const files = filesUnder(PROJECT);
    assert.ok(files.length > 10);
    for (const f of files) assertClean(f, readFileSync(f));
    assertClean("stdout", r.stdout);
    assertClean("stderr", r.stderr);

    // The ways around the proxy.
    assert.equal(res.probes["lessor-home"]?.ok, false, "the lessor home is not visible");
    assert.equal(res.probes["key-file"]?.ok, false, "the key file is not readable");
    assert.equal(res.probes["daemon-socket"]?.ok, false, "the daemon's socket cannot be reached");
    assert.equal(res.probes["direct-tcp"]?.ok, false, "no direct route to the upstream");
    assert.match(res.probes["direct-tcp"]!.detail, /ConnectionRefused|Errno 111/);
    assert.equal(res.probes["dns"]?.ok, false, "no DNS");
    console.log(`# exposure: memory read ${JSON.stringify(res.memory)}; processes seen ${Object.keys(res.procs).length}`);
    assert.ok(statSync(join(out, "results.json")).size > 0);
  });
});
