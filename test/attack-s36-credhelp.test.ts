/**
 * Red-team (session 36, credhelp): lessor's git credential helper against real git.
 *
 * docs/cli/credential-helpers.md: "it answers nothing when another credential helper would get the
 * answer: git's helper list for the URL (from every scope, in config order, plain credential.helper
 * and each matching credential.<url>.helper, counted from the last empty value) holds anything other
 * than lessor's own line". git's own URL matching (urlmatch.c url_normalize, credential.c
 * match_partial_url) treats some spellings of the same host as matching that lessor's
 * src/cli/credentials/git-helpers.ts patternMatch rules out ("no"), so a `store` helper configured
 * under such a spelling receives lessor's answer from git and writes the token to disk.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { initHome, openVault } from "../src/config/open-vault.js";
import { LocalCa } from "../src/proxy/ca.js";
import { BIN } from "./cli-harness.js";
import { makeBareRepo, serveGit } from "./fixtures/git-http-backend.js";

const CANARY = "ghp_" + randomBytes(18).toString("hex");
const root = mkdtempSync(join(tmpdir(), "lessor-s36-credhelp-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const LESSOR_HOME = join(root, "lessor");
const HOME = join(root, "home");
const SRV = join(root, "srv");
const CA_FILE = join(root, "ca.pem");
const GOOD_AUTH = "Basic " + Buffer.from(`x-access-token:${CANARY}`).toString("base64");

const POLICY = `
[[rule]]
name = "git"
effect = "allow"
agents = ["claude"]
secrets = ["github-token"]
domains = ["git.test.example"]
`;

let server: https.Server;
/** Every request the server got: its Host header and Authorization. */
const seen: { host: string; auth: string }[] = [];
let port = 0;

function lessorLine(): string {
  return `!'${process.execPath}' -- '${BIN}' git-credential --agent claude --secret github-token`;
}

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], env: NodeJS.ProcessEnv, input: string, cwd = root): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn("/usr/bin/git", args, { env, cwd, stdio: ["pipe", "pipe", "pipe"] });
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
    child.stdin.end(input);
  });
}

/** A global gitconfig as the docs recommend (reset, then lessor's line), plus one more helper under `pattern`. */
function globalConfig(name: string, pattern: string, storeFile: string): string {
  const file = join(HOME, `gitconfig-${name}`);
  writeFileSync(
    file,
    [
      `[credential "https://git.test.example"]`,
      `\thelper =`,
      `\thelper = ${JSON.stringify(lessorLine()).slice(1, -1)}`,
      `[credential "https://git.test.example:${port}"]`,
      `\thelper =`,
      `\thelper = ${JSON.stringify(lessorLine()).slice(1, -1)}`,
      `[credential ${JSON.stringify(pattern)}]`,
      `\thelper = store --file ${storeFile}`,
      `[http]`,
      `\tcurloptResolve = git.test.example:${port}:127.0.0.1`,
      ``,
    ].join("\n"),
  );
  return file;
}

function env(globalFile: string): NodeJS.ProcessEnv {
  return {
    PATH: "/usr/bin:/bin",
    HOME,
    GIT_CONFIG_NOSYSTEM: "1",
    GIT_CONFIG_GLOBAL: globalFile,
    GIT_TERMINAL_PROMPT: "0",
    GIT_SSL_CAINFO: CA_FILE,
    LESSOR_HOME,
    NO_COLOR: "1",
  };
}

function stored(file: string): string {
  return existsSync(file) ? readFileSync(file, "utf8") : "";
}

describe("s36 credhelp: another credential helper git hands lessor's answer to", () => {
  before(async () => {
    for (const d of [HOME, SRV]) mkdirSync(d, { recursive: true });
    makeBareRepo(SRV, "repo", { "README.md": "hello\n" });
    const ca = LocalCa.create({ permitted: ["git.test.example"] });
    writeFileSync(CA_FILE, ca.certPem);
    server = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("git.test.example") }, (req, res) => {
      const body: Buffer[] = [];
      req.on("data", (d: Buffer) => body.push(d));
      req.on("end", () => {
        seen.push({ host: String(req.headers.host ?? ""), auth: String(req.headers.authorization ?? "") });
        if (String(req.headers.authorization ?? "") !== GOOD_AUTH) {
          res.writeHead(401, { "www-authenticate": 'Basic realm="t"', "content-type": "text/plain" });
          res.end("auth\n");
          return;
        }
        serveGit(req, res, Buffer.concat(body), SRV, "x-access-token");
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as AddressInfo).port;
    await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
    const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    try {
      await vault.admin().storeSecret({ name: "github-token", value: CANARY, kind: "pat" });
    } finally {
      await vault.close();
    }
  });
  after(async () => {
    server?.closeAllConnections();
    await new Promise<void>((r) => server?.close(() => r()));
  });

  test("control: a store helper under the plain spelling https://git.test.example:PORT is seen, lessor answers nothing and nothing is stored", async () => {
    const file = join(root, "stolen-control");
    const g = globalConfig("control", `https://git.test.example:${port}`, file);
    const r = await run(["clone", "-q", `https://git.test.example:${port}/repo.git`, join(root, "clone-control")], env(g), "");
    assert.notEqual(r.code, 0, "the clone should fail: lessor answers nothing");
    assert.match(r.stderr, /would also hand the answer/);
    assert.ok(!stored(file).includes(CANARY));
  });

  for (const [name, pattern] of [
    ["trailing dot on the host", (p: number) => `https://git.test.example.:${p}`],
  ] as const) {
    test(`a store helper configured under another spelling of the host git matches (${name}) does not get the token from a real git clone`, async () => {
      const file = join(root, `stolen-${name.replace(/\W+/g, "-")}`);
      const g = globalConfig(name.replace(/\W+/g, "-"), pattern(port), file);
      const r = await run(["clone", "-q", `https://git.test.example:${port}/repo.git`, join(root, `clone-${name.replace(/\W+/g, "-")}`)], env(g), "");
      assert.ok(
        !stored(file).includes(CANARY),
        `git handed lessor's answer to the store helper under ${pattern(port)}, which wrote the token to ${file} (clone exit ${r.code}); lessor's helper check ruled that key out`,
      );
    });
  }

  test("a store helper under https://git.test.example:0443 (git strips leading zeros and the default port) does not get the token (git credential fill, then approve, as git does after a 2xx)", async () => {
    const file = join(root, "stolen-0443");
    const gfile = join(HOME, "gitconfig-0443");
    writeFileSync(
      gfile,
      [`[credential "https://git.test.example"]`, `\thelper =`, `\thelper = ${JSON.stringify(lessorLine()).slice(1, -1)}`, `[credential "https://git.test.example:0443"]`, `\thelper = store --file ${file}`, ``].join("\n"),
    );
    const fill = await run(["credential", "fill"], env(gfile), "protocol=https\nhost=git.test.example\n\n");
    if (fill.code === 0 && fill.stdout.includes(CANARY)) {
      await run(["credential", "approve"], env(gfile), fill.stdout + "\n");
    }
    assert.ok(!fill.stdout.includes(CANARY) || !stored(file).includes(CANARY), `lessor answered while git also runs the store helper under https://git.test.example:0443, which wrote the token to ${file}`);
  });

  test("a refusal naming another helper does not copy a token from that helper's key or first word into lessor's audit log or stderr", async () => {
    const inlineToken = "ghp_" + randomBytes(18).toString("hex");
    const urlToken = "glpat-" + randomBytes(12).toString("hex");
    const gfile = join(HOME, "gitconfig-audit");
    writeFileSync(
      gfile,
      [
        `[credential]`,
        `\thelper = !GH_TOKEN=${inlineToken} gh auth git-credential`,
        `[credential "https://oauth2:${urlToken}@git.test.example"]`,
        `\thelper = cache`,
        `[credential "https://git.test.example"]`,
        `\thelper = ${JSON.stringify(lessorLine()).slice(1, -1)}`,
        ``,
      ].join("\n"),
    );
    const fill = await run(["credential", "fill"], env(gfile), "protocol=https\nhost=git.test.example\n\n");
    assert.ok(!fill.stdout.includes(CANARY), "lessor must not answer while other helpers are in the list");
    const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    let audit: string;
    try {
      audit = JSON.stringify(await vault.admin().auditQuery({ limit: 100_000 }));
    } finally {
      await vault.close();
    }
    assert.match(audit, /another credential helper/, "the refusal was audited");
    // Only lessor's own lines: the shell git runs the `!GH_TOKEN=… gh …` helper with prints the
    // command itself when `gh` is missing ("…: gh: not found"), which is git's doing, not lessor's.
    const lessorErr = fill.stderr
      .split("\n")
      .filter((l) => l.startsWith("lessor git-credential"))
      .join("\n");
    assert.match(lessorErr, /would also hand the answer/, "lessor said why it answered nothing");
    const leaks = [
      audit.includes(inlineToken) ? "audit: the inline token of the helper's first word (GH_TOKEN=…)" : "",
      audit.includes(urlToken) ? "audit: the password in the helper key's URL userinfo" : "",
      lessorErr.includes(inlineToken) ? "stderr: the inline token" : "",
      lessorErr.includes(urlToken) ? "stderr: the URL password" : "",
    ].filter((x) => x !== "");
    assert.deepEqual(leaks, [], `tokens from the git config copied out: ${leaks.join("; ")}`);
  });

  test("a hostile repository's http.extraHeader = Host: evil… (domain fronting on a shared front end): lessor answers nothing, and no request carrying the token names another host", async () => {
    const repo = join(root, "hostile-repo");
    mkdirSync(repo);
    const gfile = join(HOME, "gitconfig-fronting");
    writeFileSync(
      gfile,
      [`[credential "https://git.test.example:${port}"]`, `\thelper =`, `\thelper = ${JSON.stringify(lessorLine()).slice(1, -1)}`, `[http]`, `\tcurloptResolve = git.test.example:${port}:127.0.0.1`, ``].join("\n"),
    );
    const e = env(gfile);
    assert.equal((await run(["init", "-q"], e, "", repo)).code, 0);
    // What an unpacked archive's .git/config (or another user's checkout) can hold.
    writeFileSync(
      join(repo, ".git", "config"),
      readFileSync(join(repo, ".git", "config"), "utf8") +
        `[remote "origin"]\n\turl = https://git.test.example:${port}/repo.git\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n[http]\n\textraHeader = Host: evil.test.example\n`,
    );
    seen.length = 0;
    const r = await run(["fetch", "-q", "origin"], e, "", repo);
    const fronted = seen.filter((s) => s.auth === GOOD_AUTH && !s.host.toLowerCase().startsWith("git.test.example"));
    assert.deepEqual(
      fronted,
      [],
      `the token went out in a request whose Host header the repository chose (fetch exit ${r.code}): a front end routing by Host hands it to that tenant; lessor's stderr: ${JSON.stringify(r.stderr.slice(0, 300))}`,
    );
  });
});

describe("s36 credfix: helper matching, routing keys and what a refusal repeats (units)", () => {
  const req = { host: "git.test.example", username: null, path: null };
  // Loaded when a test runs, so that the tests above still run against a build without these exports.
  const helpers = () => import("../src/cli/credentials/git-helpers.js");
  test("spellings git's urlmatch treats as the same host count as applying (trailing dot, leading-zero or explicit default port)", async () => {
    const { patternMatch } = await helpers();
    for (const p of ["https://git.test.example.", "https://git.test.example.:443", "https://git.test.example:0443", "https://git.test.example:00443", "https://GIT.test.example"])
      assert.equal(patternMatch(p, req), "yes", p);
    // What lessor cannot normalise as git does counts as maybe applying (fail closed), never "no".
    for (const p of ["https://%67it.test.example", "https://git.test.example:99999", "https://git.te st.example"]) assert.equal(patternMatch(p, req), "maybe", p);
    for (const p of ["https://other.example", "https://git.test.example:8443", "https://[::1]", "http://git.test.example"]) assert.equal(patternMatch(p, req), "no", p);
  });
  test("a repository's http.extraHeader and http.<url>.extraHeader are routing keys; the owner's are not", async () => {
    const { repositoryRouting } = await import("../src/cli/credentials/repo-transport.js");
    const out = ["local", "http.extraheader\nHost: evil.example", "worktree", "http.https://git.test.example.extraheader\nHost: evil.example", "global", "http.extraheader\nX-Trace: 1", ""].join("\0");
    assert.deepEqual(repositoryRouting(out), ["http.extraheader", "http.https://git.test.example.extraheader"]);
  });
  test("a helper is named by its program only, and a key without its URL's user name and password", async () => {
    const { foreignHelpers, helperName, shownKey } = await helpers();
    assert.equal(helperName("!GH_TOKEN=ghp_0123456789abcdef0123 gh auth git-credential"), "!gh …");
    assert.equal(helperName("store --file /tmp/x"), "store …");
    assert.equal(helperName("cache"), "cache");
    assert.doesNotMatch(helperName("!ghp_0123456789abcdef0123abcd"), /ghp_/);
    assert.equal(shownKey("credential.https://oauth2:glpat-0123456789abcdef@git.test.example.helper"), "credential.https://…@git.test.example.helper");
    assert.equal(shownKey("credential.https://git.test.example/ghp_0123456789abcdef0123.helper"), "credential.https://git.test.example/(token).helper");
    const h = foreignHelpers(["global", "credential.https://u:glpat-0123456789abcdef@git.test.example.helper\nstore --file /x", ""].join("\0"), req);
    assert.deepEqual(h, [{ scope: "global", key: "credential.https://…@git.test.example.helper", name: "store …" }]);
  });
});
