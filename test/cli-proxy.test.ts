/**
 * `lessor proxy`, end to end: the built CLI serves the injecting proxy for an agent that runs
 * elsewhere; the test plays that agent with curl (and a Node client for the Unix socket), on the
 * host, with the environment the command printed, against a real local HTTPS upstream that records
 * what it receives.
 *
 * Nothing leaves the machine: the upstream listens on 127.0.0.1, its names resolve through
 * `[proxy] hosts` (never a real lookup; curl leaves the name to the proxy), and `[proxy] allow`
 * opens loopback for this test only.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import * as https from "node:https";
import type { IncomingHttpHeaders } from "node:http";
import { connect as netConnect, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { initHome, openVault } from "../src/config/open-vault.js";
import { LocalCa } from "../src/proxy/ca.js";
import type { LeaseRecord } from "../src/base/types.js";
import { seedHome, startCli, type RunningCli } from "./cli-harness.js";

const HAVE_CURL = spawnSync("curl", ["--version"]).status === 0;
const SKIP = HAVE_CURL ? false : "curl is not installed (apt-get install curl)";

const CANARY = "ghp_" + randomBytes(18).toString("hex"); // shaped like a GitHub token

interface Seen {
  host: string;
  url: string;
  headers: IncomingHttpHeaders;
}

const root = mkdtempSync(join(tmpdir(), "lessor-cli-proxy-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const LESSOR_HOME = join(HOME, ".lessor");

let port = 0;
let server: https.Server;
const seen: Seen[] = [];

const POLICY = `
[[rule]]
name = "github"
effect = "allow"
agents = ["claude", "boxed", "filed", "refused", "open-dir"]
secrets = ["github-token"]
domains = ["api.test.example"]
`;

type Running = RunningCli;

/** Starts `lessor proxy --agent AGENT ARGS…` with GITHUB_TOKEN='$S:github-token'; resolves once it serves (or exits). */
function startProxy(agent: string, args: string[] = []): Promise<Running> {
  return startCli(["proxy", "--agent", agent, "--domain", "api.test.example", ...args], /lessor: proxy for agent/, {
    PATH: "/usr/bin:/bin",
    HOME,
    LESSOR_HOME,
    NO_COLOR: "1",
    GITHUB_TOKEN: "$S:github-token",
  });
}

/** KEY=VALUE lines into a map (the format the command prints). */
function parseEnv(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const i = line.indexOf("=");
    assert.ok(i > 0, `not a KEY=VALUE line: ${line}`);
    env[line.slice(0, i)] = line.slice(i + 1);
  }
  return env;
}

/** Runs curl with `env` (and PATH); resolves with its exit code and output. */
function curl(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn("curl", args, { env: { PATH: "/usr/bin:/bin", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    c.stdout.on("data", (d: Buffer) => out.push(d));
    c.stderr.on("data", (d: Buffer) => err.push(d));
    c.on("close", (code) => resolve({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") }));
  });
}

/** Sends raw bytes to the proxy at `to` and returns everything it answers until it closes. */
function raw(to: { port: number } | { path: string }, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s: Socket = "path" in to ? netConnect(to.path) : netConnect(to.port, "127.0.0.1");
    const got: Buffer[] = [];
    s.on("data", (d: Buffer) => got.push(d));
    s.on("error", reject);
    s.on("close", () => resolve(Buffer.concat(got).toString("utf8")));
    s.setTimeout(10_000, () => s.destroy());
    s.write(text);
  });
}

async function liveLeases(agent: string): Promise<LeaseRecord[]> {
  const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  try {
    return await vault.admin().listLeases({ agent, liveAt: Date.now() });
  } finally {
    await vault.close();
  }
}

function noCanary(where: string, text: string): void {
  assert.ok(!text.includes(CANARY), `the credential appears in ${where}`);
}

const basic = (user: string, pass: string): string => "Basic " + Buffer.from(`${user}:${pass}`).toString("base64");

describe("lessor proxy", { skip: SKIP }, () => {
  before(async () => {
    mkdirSync(HOME, { recursive: true });
    const ca = LocalCa.create({ permitted: ["api.test.example"] });
    writeFileSync(join(root, "upstream-ca.pem"), ca.certPem);
    server = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, (req, res) => {
      seen.push({ host: String(req.headers.host ?? ""), url: req.url!, headers: req.headers });
      req.resume();
      req.on("end", () => {
        res.writeHead(200, { "content-type": "text/plain" });
        res.end(`you sent: ${String(req.headers.authorization ?? "")}\n`);
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as AddressInfo).port;
    await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    const base = readFileSync(join(LESSOR_HOME, "lessor.toml"), "utf8");
    writeFileSync(
      join(LESSOR_HOME, "lessor.toml"),
      `${base}\n[proxy]\nports = [${port}]\nallow = ["127.0.0.1"]\nhosts = { "api.test.example" = "127.0.0.1" }\nupstream_ca = "${join(root, "upstream-ca.pem")}"\n`,
      { mode: 0o600 },
    );
    await seedHome(LESSOR_HOME, POLICY, [{ name: "github-token", value: CANARY, kind: "pat" }]);
  });
  after(async () => {
    server?.closeAllConnections();
    await new Promise<void>((r) => server?.close(() => r()));
  });

  describe("on a loopback port", () => {
    let p: Running;
    let env: Record<string, string>;
    let proxyPort = 0;
    let token = "";
    before(async () => {
      p = await startProxy("claude");
      assert.match(p.stderr(), /lessor: proxy for agent claude on http:\/\/127\.0\.0\.1:\d+: 1 lease\(s\), egress strict, CA /, p.stderr());
      env = parseEnv(p.stdout());
      const m = /^http:\/\/lessor:([A-Za-z0-9_-]{43})@127\.0\.0\.1:(\d+)$/.exec(env["HTTPS_PROXY"] ?? "");
      assert.ok(m, `HTTPS_PROXY carries the session's credentials: ${env["HTTPS_PROXY"]}`);
      token = m[1]!;
      proxyPort = Number(m[2]);
    });
    after(() => {
      if (p.child.exitCode === null) p.child.kill("SIGKILL");
    });

    test("prints the agent's environment: a placeholder, the proxy with its token, the CA files", () => {
      const placeholder = env["GITHUB_TOKEN"]!;
      assert.match(placeholder, /^ghp_[0-9A-Za-z]+$/);
      assert.equal(placeholder.length, CANARY.length);
      assert.notEqual(placeholder, CANARY);
      for (const k of ["HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"]) assert.equal(env[k], env["HTTPS_PROXY"], k);
      // The CA: its own file and the bundle, in a private directory; the listed variables point there.
      const caFile = env["NODE_EXTRA_CA_CERTS"]!;
      assert.match(readFileSync(caFile, "utf8"), /^-----BEGIN CERTIFICATE-----/);
      for (const k of ["SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO"]) assert.equal(env[k], env["SSL_CERT_FILE"], k);
      assert.ok(readFileSync(env["SSL_CERT_FILE"]!, "utf8").startsWith(readFileSync(caFile, "utf8").trim()));
      const dir = statSync(join(caFile, ".."));
      assert.equal(dir.mode & 0o777, 0o700, "the CA files are in a private directory");
      // Only what the agent needs: the variable that held a reference, and the proxy's.
      assert.equal(env["PATH"], undefined);
      assert.equal(env["LESSOR_HOME"], undefined);
      assert.ok(p.stdout().includes(`GITHUB_TOKEN=${placeholder}\n`));
      assert.ok(!p.stderr().includes(token), "the token is not on stderr");
    });

    test("curl with the printed environment: the upstream gets the credential, the agent sees only the placeholder", async () => {
      const before = seen.length;
      const placeholder = env["GITHUB_TOKEN"]!;
      const r = await curl(["-sS", "--fail-with-body", "-H", `Authorization: Bearer ${placeholder}`, `https://api.test.example:${port}/echo`], env);
      assert.equal(r.code, 0, r.stderr);
      const mine = seen.slice(before);
      assert.equal(mine.length, 1);
      assert.equal(mine[0]!.headers.authorization, `Bearer ${CANARY}`, "the upstream received the real credential");
      assert.equal(mine[0]!.headers["proxy-authorization"], undefined, "the proxy's own credentials are not forwarded");
      assert.equal(r.stdout, `you sent: Bearer ${placeholder}\n`, "the echo comes back masked");
    });

    test("no proxy credentials: 407 with a Basic challenge, and nothing reaches the upstream (CONNECT and plain HTTP)", async () => {
      const before = seen.length;
      const placeholder = env["GITHUB_TOKEN"]!;
      const noAuth = { ...env, HTTPS_PROXY: `http://127.0.0.1:${proxyPort}`, https_proxy: `http://127.0.0.1:${proxyPort}` };
      const r = await curl(["-sS", "-o", "/dev/null", "-w", "%{http_connect}", "-H", `Authorization: Bearer ${placeholder}`, `https://api.test.example:${port}/`], noAuth);
      assert.equal(r.code, 56, `curl: CONNECT refused (${r.stderr})`);
      assert.equal(r.stdout, "407");
      const connect = await raw({ port: proxyPort }, `CONNECT api.test.example:${port} HTTP/1.1\r\nHost: api.test.example:${port}\r\n\r\n`);
      assert.match(connect, /^HTTP\/1\.1 407 Proxy Authentication Required\r\n/);
      assert.match(connect, /\r\nProxy-Authenticate: Basic realm="lessor"\r\n/);
      assert.match(connect, /"reason":"proxy_auth"/);
      const plain = await raw({ port: proxyPort }, `GET http://api.test.example:${port}/plain HTTP/1.1\r\nHost: api.test.example:${port}\r\n\r\n`);
      assert.match(plain, /^HTTP\/1\.1 407 /);
      assert.match(plain, /\r\nproxy-authenticate: Basic realm="lessor"\r\n/i);
      assert.equal(seen.length, before, "the upstream saw nothing");
    });

    test("wrong proxy credentials are refused alike: another token, a prefix of it, another user, another scheme", async () => {
      const before = seen.length;
      const wrong = randomBytes(32).toString("base64url");
      const r = await curl(["-sS", "-o", "/dev/null", "-w", "%{http_connect}", `https://api.test.example:${port}/`], {
        ...env,
        HTTPS_PROXY: `http://lessor:${wrong}@127.0.0.1:${proxyPort}`,
        https_proxy: `http://lessor:${wrong}@127.0.0.1:${proxyPort}`,
      });
      assert.equal(r.code, 56, r.stderr);
      assert.equal(r.stdout, "407");
      const attempts = [basic("lessor", token.slice(0, -1)), basic("lessor", token + "x"), basic("admin", token), basic("", token), `Bearer ${token}`, token, basic("lessor", token).replace("Basic ", "Basic  x")];
      for (const a of attempts) {
        const answer = await raw({ port: proxyPort }, `CONNECT api.test.example:${port} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: ${a}\r\n\r\n`);
        assert.match(answer, /^HTTP\/1\.1 407 /, a);
      }
      // The right one, by hand, to show the refusals above are about the credentials.
      const ok = await new Promise<string>((resolve, reject) => {
        const s = netConnect(proxyPort, "127.0.0.1");
        s.on("error", reject);
        s.once("data", (d: Buffer) => {
          resolve(d.toString("utf8"));
          s.destroy();
        });
        s.write(`CONNECT api.test.example:${port} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: ${basic("lessor", token)}\r\n\r\n`);
      });
      assert.match(ok, /^HTTP\/1\.1 200 /);
      assert.equal(seen.length, before, "the upstream saw nothing");
    });

    test("SIGTERM: the proxy stops, its lease is revoked, it exits 0; the credential was never in its output", async () => {
      assert.equal((await liveLeases("claude")).length, 1, "one live lease while it serves");
      p.child.kill("SIGTERM");
      const { code, signal } = await p.exited;
      assert.equal(signal, null);
      assert.equal(code, 0, p.stderr());
      assert.match(p.stderr(), /SIGTERM: stopping the proxy and revoking its leases/);
      assert.deepEqual(await liveLeases("claude"), [], "no live lease left");
      assert.ok(!existsSync(env["NODE_EXTRA_CA_CERTS"]!), "its private directory is removed");
      noCanary("stdout", p.stdout());
      noCanary("stderr", p.stderr());
      // Nothing listens any more.
      await assert.rejects(raw({ port: proxyPort }, "x"), /ECONNREFUSED/);
    });
  });

  test("--env-out: the environment goes to a 0600 file, the CA files beside it; SIGINT removes them", async () => {
    const dir = mkdtempSync(join(root, "out-"));
    const out = join(dir, "agent.env");
    const p = await startProxy("filed", ["--env-out", out, "--egress", "open"]);
    try {
      assert.equal(p.stdout(), "", "nothing on stdout");
      assert.match(p.stderr(), new RegExp(`egress open, CA ${out.replace(/[.]/g, "\\.")}\\.ca\\.pem; the agent's environment is in ${out.replace(/[.]/g, "\\.")}`), p.stderr());
      assert.equal(statSync(out).mode & 0o777, 0o600);
      const text = readFileSync(out, "utf8");
      noCanary("the env file", text);
      const env = parseEnv(text);
      assert.equal(env["NODE_EXTRA_CA_CERTS"], `${out}.ca.pem`);
      assert.equal(env["SSL_CERT_FILE"], `${out}.ca-bundle.pem`);
      assert.match(readFileSync(`${out}.ca.pem`, "utf8"), /^-----BEGIN CERTIFICATE-----/);
      assert.equal(statSync(`${out}.ca.pem`).mode & 0o777, 0o644, "the CA certificate is public");
      const before = seen.length;
      const r = await curl(["-sS", "--fail-with-body", "-H", `Authorization: token ${env["GITHUB_TOKEN"]}`, `https://api.test.example:${port}/filed`], env);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(seen.slice(before)[0]?.headers.authorization, `token ${CANARY}`);
      p.child.kill("SIGINT");
      const { code } = await p.exited;
      assert.equal(code, 0, p.stderr());
      for (const f of [out, `${out}.ca.pem`, `${out}.ca-bundle.pem`]) assert.ok(!existsSync(f), `${f} is removed`);
      assert.deepEqual(await liveLeases("filed"), []);
      noCanary("stderr", p.stderr());
    } finally {
      if (p.child.exitCode === null) p.child.kill("SIGKILL");
    }
  });

  test("--socket: a 0600 socket; the token is still required; a client through it gets the credential added", async () => {
    const dir = mkdtempSync(join(root, "sock-"));
    const path = join(dir, "proxy.sock");
    const p = await startProxy("boxed", ["--socket", path]);
    try {
      assert.match(p.stderr(), /on the Unix socket .*proxy\.sock \(the printed HTTPS_PROXY assumes the agent reaches it at 127\.0\.0\.1:3128\)/, p.stderr());
      const st = statSync(path);
      assert.ok(st.isSocket());
      assert.equal(st.mode & 0o777, 0o600);
      const env = parseEnv(p.stdout());
      const m = /^http:\/\/lessor:([A-Za-z0-9_-]{43})@127\.0\.0\.1:3128$/.exec(env["HTTPS_PROXY"] ?? "");
      assert.ok(m, env["HTTPS_PROXY"]);
      const token = m[1]!;
      const before = seen.length;
      assert.match(await raw({ path }, `CONNECT api.test.example:${port} HTTP/1.1\r\nHost: x\r\n\r\n`), /^HTTP\/1\.1 407 /);
      // With the token: CONNECT, then TLS with the session CA, then a request carrying the placeholder.
      const ca = readFileSync(env["NODE_EXTRA_CA_CERTS"]!, "utf8");
      const body = await new Promise<string>((resolve, reject) => {
        const req = httpRequest({ socketPath: path, method: "CONNECT", path: `api.test.example:${port}`, headers: { "proxy-authorization": basic("lessor", token) } });
        req.on("error", reject);
        req.on("connect", (res, socket) => {
          if (res.statusCode !== 200) return reject(new Error(`CONNECT ${res.statusCode}`));
          // The request goes over the tunnel's TLS socket; the agent never connects or looks anything up itself.
          const agent = new https.Agent();
          agent.createConnection = () => tlsConnect({ socket, servername: "api.test.example", ca });
          const get = https.request(
            { host: "api.test.example", port, path: "/boxed", headers: { authorization: `Bearer ${env["GITHUB_TOKEN"]}` }, agent, lookup: () => reject(new Error("no lookup may happen")) },
            (res) => {
              const got: Buffer[] = [];
              res.on("data", (d: Buffer) => got.push(d));
              res.on("end", () => resolve(`${res.statusCode} ${Buffer.concat(got).toString("utf8")}`));
            },
          );
          get.on("error", reject);
          get.end();
        });
        req.end();
      });
      assert.equal(body, `200 you sent: Bearer ${env["GITHUB_TOKEN"]}\n`);
      noCanary("the response", body);
      const mine = seen.slice(before);
      assert.equal(mine.length, 1);
      assert.equal(mine[0]!.headers.authorization, `Bearer ${CANARY}`);
      p.child.kill("SIGTERM");
      assert.equal((await p.exited).code, 0, p.stderr());
      assert.ok(!existsSync(path), "the socket is removed");
      assert.deepEqual(await liveLeases("boxed"), []);
    } finally {
      if (p.child.exitCode === null) p.child.kill("SIGKILL");
    }
  });

  test("--socket in a directory other users can write is refused before any lease", async () => {
    const dir = mkdtempSync(join(root, "open-"));
    chmodSync(dir, 0o777);
    const p = await startProxy("open-dir", ["--socket", join(dir, "proxy.sock")]);
    const { code } = await p.exited;
    assert.notEqual(code, 0);
    assert.match(p.stderr(), /can be written by other users/);
    assert.equal(p.stdout(), "");
    assert.ok(!existsSync(join(dir, "proxy.sock")));
    const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    try {
      assert.deepEqual(await vault.admin().listLeases({ agent: "open-dir" }), [], "no lease was ever taken");
    } finally {
      await vault.close();
    }
  });

  test("--listen on anything but loopback is refused before any lease is taken", async () => {
    for (const addr of ["0.0.0.0:0", "[::]:0", "192.0.2.1:3128", "localhost:3128", "127.0.0.1", "[::ffff:127.0.0.1]:0", "127.0.0.1:70000"]) {
      const p = await startProxy("refused", ["--listen", addr]);
      const { code } = await p.exited;
      assert.equal(code, 2, `${addr}: ${p.stderr()}`);
      assert.match(p.stderr(), /--listen/);
      assert.equal(p.stdout(), "");
    }
    const p = await startProxy("refused", ["--listen", "0.0.0.0:0"]);
    await p.exited;
    assert.match(p.stderr(), /the proxy listens on loopback only/);
    const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    try {
      assert.deepEqual(await vault.admin().listLeases({ agent: "refused" }), [], "no lease was ever taken");
    } finally {
      await vault.close();
    }
  });
});
