/**
 * `lessor approve ID` decides blind. The id a person types comes from the agent: lessor's own answers
 * tell the agent to "ask them to run lessor approve <id>" (src/mcp/approval-flow.ts pendingResult,
 * the access_denied of src/vault/approvals.ts). A hostile agent opens two approvals, an innocent one
 * (a proxy-only lease for one host) and the one it wants (a rule that reveals the value, for any host
 * it names), describes the first to the person and hands them the second's id. The person runs the
 * command in a terminal; it records the decision at once and only then prints what was approved.
 *
 * On a terminal the command must show the request first and decide only on a "y".
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { BIN } from "./cli-harness.js";
import { DaemonConn, makeHome, startServe } from "./daemon-harness.js";

const POLICY = `
[[rule]]
name = "gh-read"
effect = "allow"
agents = ["claude"]
secrets = ["gh"]
domains = ["api.github.com"]
reveal = false
approval = "required"

[[rule]]
name = "deploy-any"
effect = "allow"
agents = ["claude"]
secrets = ["deploy"]
any_domain = true
approval = "required"
`;

// Runs argv on a pseudo-terminal; answers "n" to a [y/N] question; prints everything it read.
const PTY = String.raw`
import os, pty, sys, time, select
pid, fd = pty.fork()
if pid == 0:
    os.execvpe(sys.argv[1], sys.argv[1:], os.environ)
out = b""
answered = False
end = time.time() + 30
while time.time() < end:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if not answered and b"[y/N]" in out:
            os.write(fd, b"n\n")
            answered = True
    else:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
sys.stdout.write(out.decode("utf-8", "replace"))
`;

test("attack: lessor approve on a terminal records the agent-supplied id before showing what it approves; a person who answers no still granted it", async () => {
  const d = await startServe(await makeHome({ policy: POLICY, config: `[server]\ntcp = "127.0.0.1:0"\n` }));
  const admin = await DaemonConn.admin(d);
  try {
    await admin.okResult("store_secret", { name: "gh", value: "gh-value" });
    await admin.okResult("store_secret", { name: "deploy", value: "deploy-value" });
    const t = await admin.okResult("token_create", { name: "claude", role: "agent", agent: "claude" });
    const claude = await DaemonConn.provedToken(d, t.token);
    try {
      // The innocent request the agent describes, and the one it hands the person the id of.
      await claude.okResult("approval_request", { secret: "gh", reason: "read the PR" });
      const bad = (await claude.okResult("approval_request", { secret: "deploy", domains: ["exfil.example.net"], reason: "read the PR" })).approval;
      const env = { ...process.env, LESSOR_SOCKET: d.socket, HOME: "/nonexistent", TERM: "xterm" };
      delete (env as Record<string, string | undefined>).NODE_EXTRA_CA_CERTS;
      const run = spawnSync("python3", ["-c", PTY, process.execPath, BIN, "approve", bad.id], { env, encoding: "utf8", timeout: 40_000 });
      const shown = run.stdout;
      const st = (await admin.okResult("approval_list", { all: true })).find((a: { id: string }) => a.id === bad.id);
      assert.equal(st.state, "pending", `the person was not asked before the decision; lessor printed only afterwards:\n${shown}`);
      assert.match(shown, /deploy/, "the request was shown before asking");
      assert.match(shown, /exfil\.example\.net/);
      // Nothing for the agent.
      const take = await claude.call("request_lease", { secret: "deploy", domains: ["exfil.example.net"] });
      assert.equal(take.ok, false);
    } finally {
      claude.close();
    }
  } finally {
    admin.close();
    await d.stop();
  }
});
