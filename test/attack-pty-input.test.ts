/**
 * checkOwnInput let every device through ("carries nothing anyone wrote"), but a pseudo-terminal's
 * slave is a character device that its opener owns, may chmod, and writes into from the master side.
 * Another local user plants a link to their pty at the path the owner imports from, and chooses the
 * value stored (or hangs the command forever by sending nothing).
 */
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { chmodSync, chownSync, mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { cliHome, runCli } from "./cli-harness.js";

const NOBODY = 65534;
const dir = mkdtempSync(join(tmpdir(), "lessor-pty-"));
chmodSync(dir, 0o755);
chownSync(dir, NOBODY, NOBODY); // the other user's directory (e.g. a shared drop they own)
after(() => rmSync(dir, { recursive: true, force: true }));

// Runs entirely as uid 65534: opens a pty, makes its slave readable, links it into its own directory,
// then types the value it wants stored, followed by ^D (EOF for a canonical-mode reader).
const ATTACKER = String.raw`
import os, pty, sys, time, tty, termios
m, s = pty.openpty()
name = os.ttyname(s)
os.chmod(name, 0o644)
attr = termios.tcgetattr(s); attr[3] &= ~termios.ECHO; termios.tcsetattr(s, termios.TCSANOW, attr)
link = sys.argv[1]
os.symlink(name, link)
print("ready", flush=True)
for i in range(600):
    os.write(m, b"attacker-chosen-value\n\x04")
    time.sleep(0.05)
`;

test("attack: secret set --from-file through a link to another user's pty (they type the value) is refused", { skip: process.getuid?.() !== 0 ? "needs root" : false }, async () => {
  const home = await cliHome();
  const link = join(dir, "token.txt");
  const a = spawn("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", ATTACKER, link], { stdio: ["ignore", "pipe", "inherit"] });
  after(() => a.kill("SIGKILL"));
  await new Promise<void>((res) => a.stdout.once("data", () => res()));
  assert.ok(existsSync(link));
  const r = await runCli(["secret", "set", "github-token", "--from-file", link], { home, timeoutMs: 20_000 });
  const got = await runCli(["secret", "get", "github-token", "--reveal"], { home });
  assert.equal(r.signal, null, "lessor hung reading the other user's terminal");
  assert.notEqual(r.code, 0, `lessor stored what another user typed into their pty: ${got.stdout}`);
  assert.doesNotMatch(got.stdout, /attacker-chosen-value/);
});
