/**
 * Review (today2) of 3ab221a, "cover the key file's directory, not the file": the same rename/unlink
 * mechanism applied to the daemon's socket. docs/sandbox.md covers "the daemon's socket ([server]
 * socket or $LESSOR_SOCKET) and its directory (unless that is a shared one such as /tmp or /run)";
 * src/cli/run/sandbox.ts also leaves the directory uncovered when it is the home, and covers the socket
 * alone with a mount on its dentry. Restarting the daemon during a run (an upgrade, `systemctl
 * restart`, a crash) unlinks the socket and binds a new one at the same path: the kernel detaches the
 * cover, and the sandboxed agent, the owner's uid, connects and is the vault's admin (SO_PEERCRED: the
 * daemon's own uid is admin): it reads every secret, outside any grant, unaudited as an agent.
 *
 * Layout: `[server] socket = "~/lessor.sock"`, `lessor run` from the home with `[run] project =
 * "read-only"` (the home shown read-only, protected paths covered), as test/attack-keys-cover.test.ts.
 * The agent uses a copy of lessor's own client in the home. Real daemon, real bwrap, real socket.
 */
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import assert from "node:assert/strict";
import { initHome } from "../src/config/open-vault.js";
import { HAVE_BWRAP } from "./run-harness.js";
import { BIN, runCliWithEnv, seedHome, startCli } from "./cli-harness.js";

const skip = !HAVE_BWRAP ? "bwrap is not installed or user namespaces are off" : false;
const root = mkdtempSync(join(tmpdir(), "lessor-today2-sock-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

test("a daemon restarted during a run: its socket directly in the home is not reachable by the sandboxed agent", { skip, timeout: 120_000 }, async () => {
  const home = join(root, "home");
  mkdirSync(home, { recursive: true, mode: 0o700 });
  const lessorHome = join(home, ".lessor");
  await initHome({ home: lessorHome, env: { LESSOR_HOME: lessorHome } });
  const sock = join(home, "lessor.sock");
  const toml = join(lessorHome, "lessor.toml");
  writeFileSync(toml, readFileSync(toml, "utf8").replace(/^\[server\]$/m, `[server]\nsocket = "${sock}"`)+ `\n[run]\nproject = "read-only"\n`);
  const canary = `prod-${randomBytes(12).toString("hex")}`;
  await seedHome(lessorHome, `[[rule]]\nname = "a"\neffect = "allow"\nagents = ["agent"]\nsecrets = ["granted"]\nany_domain = true\n`, [{ name: "prod-db", value: canary }]);
  // lessor's own client, where the agent can run it (any client speaking the protocol would do).
  cpSync(dirname(BIN), join(home, "bin"), { recursive: true });
  const env = { PATH: "/usr/bin:/bin", HOME: home, NO_COLOR: "1", LESSOR_HOME: lessorHome };
  let d = await startCli(["serve"], /lessor daemon ready/, env, { killAfterMs: 100_000 });
  try {
    const script = `i=0; while [ $i -lt 30 ]; do v=$(LESSOR_SOCKET='${sock}' node '${home}/bin/lessor.cjs' secret get prod-db --reveal 2>&1); case "$v" in *prod-*) echo "READ:$v"; exit 0;; esac; [ $i -eq 0 ] && echo "first try: $v"; i=$((i+1)); sleep 1; done; echo NOTHING`;
    const run = runCliWithEnv(["run", "--agent", "agent", "--network", "none", "--", "/bin/sh", "-c", script], { cwd: home, env, timeoutMs: 90_000 });
    await new Promise((r) => setTimeout(r, 8000)); // the sandbox is up; its first tries were refused
    d.child.kill("SIGTERM");
    await d.exited;
    d = await startCli(["serve"], /lessor daemon ready/, env, { killAfterMs: 100_000 });
    const r = await run;
    // Refusing the run (nothing started) is a fix too.
    if (r.code !== 0) assert.match(r.stderr, /daemon's socket .* the sandbox shows/, r.stdout + r.stderr);
    assert.ok(!r.stdout.includes(canary), `the sandboxed agent read the vault's secret as admin through the re-created socket:\n${r.stdout}`);
  } finally {
    d.child.kill("SIGTERM");
    await d.exited;
  }
});
