/**
 * Review s35 (docs): places where a newcomer following README.md and docs/ literally got something other
 * than what the text says, checked through the built CLI (dist/bin/lessor.cjs, `npm run build:cli`).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import { join } from "node:path";
import { describe, test } from "node:test";
import { BIN, cliHome, runCli, seedHome, startCli } from "./cli-harness.js";
import { grant } from "./helpers.js";

const RULE = grant("claude-github", ["claude"], ["github-token"], ["api.github.com"]);

describe("policy explain on a process whose policy is not the one in force (docs/policy.md, README)", () => {
  test("after a reload and an edit without one, explain says STALE (as status does) instead of a bare allow while every grant is refused", async () => {
    const home = await cliHome();
    await seedHome(home, RULE, [{ name: "github-token", value: "docs-s35-value-0123456789" }]);
    const reload = await runCli(["policy", "reload"], { home });
    assert.equal(reload.code, 0, reload.stderr);
    // The newcomer edits policy.toml (README: "$EDITOR ~/.lessor/policy.toml") and checks it with explain.
    const file = join(home, "policy.toml");
    writeFileSync(file, readFileSync(file, "utf8").replace('agents = ["claude"]', 'agents = ["claude", "bob"]'), { mode: 0o600 });

    const lease = await runCli(["lease", "github-token", "--agent", "bob", "--domain", "api.github.com"], { home });
    assert.equal(lease.code, 5, lease.stderr);
    assert.equal(lease.stdout, "");
    assert.match(lease.stderr, /not the one the last lessor policy reload put in force/);

    const explain = await runCli(["policy", "explain", "--agent", "bob", "--secret", "github-token", "--domain", "api.github.com"], { home });
    assert.equal(explain.code, 0, explain.stderr);
    assert.match(explain.stdout, /answered by policy version #1 \(digest [0-9a-f]{12}…, loaded \S+Z, STALE: the shared database has digest [0-9a-f]{12}… in force, so this instance grants nothing\)/);
    const j = await runCli(["policy", "explain", "--agent", "bob", "--secret", "github-token", "--domain", "api.github.com", "--json"], { home });
    assert.equal(j.code, 0, j.stderr);
    const parsed = JSON.parse(j.stdout) as { policy: { stale?: { stored: string } } };
    assert.match(parsed.policy.stale?.stored ?? "", /^[0-9a-f]{64}$/);

    // After the reload the docs ask for, explain and the grant agree again.
    assert.equal((await runCli(["policy", "reload"], { home })).code, 0);
    const after = await runCli(["policy", "explain", "--agent", "bob", "--secret", "github-token", "--domain", "api.github.com"], { home });
    assert.doesNotMatch(after.stdout, /STALE/);
    const granted = await runCli(["lease", "github-token", "--agent", "bob", "--domain", "api.github.com"], { home });
    assert.equal(granted.code, 0, granted.stderr);
  });
});

/** One POST to the MCP endpoint; its status and the Mcp-Session-Id it gave. */
function post(url: URL, token: string, body: unknown, session?: string): Promise<{ status: number; session: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      method: "POST",
      headers: {
        authorization: `Bearer ${token}`,
        "content-type": "application/json",
        accept: "application/json, text/event-stream",
        ...(session === undefined ? {} : { "mcp-session-id": session, "mcp-protocol-version": "2025-03-26" }),
      },
    });
    req.on("response", (res) => {
      res.resume();
      res.on("end", () => resolve({ status: res.statusCode ?? 0, session: res.headers["mcp-session-id"] as string | undefined }));
    });
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

describe("lessor mcp --http: what stderr says when the server stops (docs/mcp.md)", () => {
  test("SIGTERM ends each session once, saying the server stopped (not also \"closed by the client\")", async () => {
    const home = await cliHome();
    await seedHome(home, RULE, [{ name: "github-token", value: "docs-s35-value-0123456789" }]);
    const tokenFile = join(home, "..", "mcp.token");
    const env = { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", LESSOR_HOME: home };
    const mcp = await startCli(["mcp", "--agent", "claude", "--http", "127.0.0.1:0", "--token-file", tokenFile], /on http:\/\/127\.0\.0\.1:\d+\/mcp/, env);
    try {
      const url = new URL(/on (http:\/\/127\.0\.0\.1:\d+\/mcp)/.exec(mcp.stderr())![1]!);
      const token = readFileSync(tokenFile, "utf8").trim();
      const init = await post(url, token, { jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-03-26", capabilities: {}, clientInfo: { name: "t", version: "1" } } });
      assert.equal(init.status, 200);
      assert.ok(init.session);
      assert.equal((await post(url, token, { jsonrpc: "2.0", method: "notifications/initialized" }, init.session)).status, 202);
      // The session outlives the answer's stream (docs/mcp.md: it ends on DELETE, stop or idleness).
      assert.doesNotMatch(mcp.stderr(), /session 1 ended/);
      mcp.child.kill("SIGTERM");
      const end = await mcp.exited;
      assert.equal(end.code, 0, mcp.stderr());
      const ended = mcp.stderr().split("\n").filter((l) => /MCP session 1 ended/.test(l));
      assert.deepEqual(ended, ["lessor mcp: MCP session 1 ended (the server stopped); its leases are revoked"], mcp.stderr());
    } finally {
      mcp.child.kill("SIGKILL");
    }
  });
});

describe("lessor git-credential --help sets git up as docs/cli/credential-helpers.md does", () => {
  test("its config lines, run as printed on a ~/.gitconfig that already has credential.helper = store, get git its credential (the single line it printed before was refused)", async () => {
    const home = await cliHome();
    await seedHome(home, grant("git", ["claude"], ["github-token"], ["github.com"]), [{ name: "github-token", value: "docs-s35-git-0123456789" }]);
    const user = join(home, "..", "user");
    const bin = join(home, "..", "bin");
    mkdirSync(user);
    mkdirSync(bin);
    // `!lessor …` in git's config runs `lessor` from PATH, as an installed copy would be.
    writeFileSync(join(bin, "lessor"), `#!/bin/sh\nexec "${process.execPath}" -- "${BIN}" "$@"\n`);
    chmodSync(join(bin, "lessor"), 0o755);
    const env = { PATH: `${bin}:${process.env.PATH ?? ""}`, HOME: user, LESSOR_HOME: home, NO_COLOR: "1", GIT_TERMINAL_PROMPT: "0", GIT_CONFIG_NOSYSTEM: "1" };
    const git = (args: string[], input?: string) => spawnSync("git", args, { env, input, encoding: "utf8", timeout: 20_000 });
    assert.equal(git(["config", "--global", "credential.helper", "store"]).status, 0);

    const help = await runCli(["git-credential", "--help"], { home });
    assert.equal(help.code, 0, help.stderr);
    const lines = help.stdout.split("\n").map((l) => l.trim()).filter((l) => l.startsWith("git config --global "));
    assert.ok(lines.length >= 2, help.stdout);
    for (const line of lines) {
      // Each line is `git config --global KEY 'VALUE'` or `git config --global --add KEY 'VALUE'`.
      const m = /^git config --global (--add )?(\S+) (?:'([^']*)'|(\S+))$/.exec(line);
      assert.ok(m, line);
      const r = git(["config", "--global", ...(m[1] ? ["--add"] : []), m[2]!, m[3] ?? m[4]!]);
      assert.equal(r.status, 0, r.stderr);
    }
    const fill = git(["credential", "fill"], "protocol=https\nhost=github.com\n\n");
    assert.equal(fill.status, 0, fill.stderr);
    assert.match(fill.stdout, /^password=docs-s35-git-0123456789$/m);
    assert.match(fill.stdout, /^username=x-access-token$/m);
  });
});
