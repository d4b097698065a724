/**
 * Another process of the same uid against a lessor process's memory: an agent run with
 * `--no-sandbox`, or any program the owner runs, reading the daemon's or `lessor run`'s
 * /proc/<pid>/environ (LESSOR_MASTER_KEY, with `--key-source env`), /proc/<pid>/mem or maps. Every
 * lessor process makes itself non-dumpable with no core file (src/native/no-dump.ts); a plain Node
 * process of the same uid, started the same way, is readable (so the attack is real on this machine).
 *
 * The owner is user nobody (setpriv), so that the kernel's same-uid rule decides, not root's
 * CAP_SYS_PTRACE. Real parts: the built CLI, a real `lessor serve`, a real `lessor run`.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { runProcess, startCli, BIN } from "./cli-harness.js";
import { tempDirUntilExit } from "./helpers.js";
import { makeHome } from "./daemon-harness.js";
import { startDaemon } from "../src/server/daemon.js";

const NOBODY = 65534;
const isRoot = process.getuid?.() === 0;
const hasSetpriv = spawnSync("sh", ["-c", "command -v setpriv"]).status === 0;
const skip = process.platform !== "linux" ? "Linux only" : !isRoot ? "needs root, to run lessor and the reader as user nobody" : !hasSetpriv ? "setpriv (util-linux) is not installed" : false;
const AS_NOBODY = ["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups"];

/** A directory of nobody's, mode 0700. */
function nobodyDir(): string {
  const d = tempDirUntilExit("lessor-nodump-");
  chownSync(d, NOBODY, NOBODY);
  chmodSync(d, 0o700);
  return d;
}

/**
 * What user nobody gets from /proc/<pid>: each file's text, or the error code. A script of its own,
 * run with node as nobody, so that the reader is a process of the same uid as the target.
 */
async function readAsNobody(pid: number): Promise<Record<string, string>> {
  const script = `const fs = require("fs"); const out = {};
for (const f of ["environ", "maps", "mem"]) {
  try { const fd = fs.openSync("/proc/${pid}/" + f, "r"); const b = Buffer.alloc(65536); const n = f === "mem" ? 0 : fs.readSync(fd, b); out[f] = b.subarray(0, n).toString("latin1"); fs.closeSync(fd); }
  catch (e) { out[f] = e.code; }
}
process.stdout.write(JSON.stringify(out));`;
  const r = await runProcess(AS_NOBODY[0]!, [...AS_NOBODY.slice(1), process.execPath, "-e", script], { env: { PATH: process.env.PATH ?? "" } });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Record<string, string>;
}

/** A vault of user nobody's whose key is in the environment (`--key-source env`), and that environment. */
async function nobodysVault(key: string): Promise<{ dir: string; env: Record<string, string> }> {
  const dir = nobodyDir();
  const env = { PATH: process.env.PATH ?? "", HOME: dir, LESSOR_HOME: join(dir, "home"), LESSOR_MASTER_KEY: key, NO_COLOR: "1" };
  const init = await runProcess(AS_NOBODY[0]!, [...AS_NOBODY.slice(1), process.execPath, "--", BIN, "init", "--key-source", "env"], { env, cwd: dir });
  assert.equal(init.code, 0, init.stderr);
  return { dir, env };
}

/** The soft and hard core-file limits of `pid` (/proc/<pid>/limits is world-readable). */
function coreLimits(pid: number): string[] {
  const line = readFileSync(`/proc/${pid}/limits`, "utf8").split("\n").find((l) => l.startsWith("Max core file size"));
  return line!.replace("Max core file size", "").trim().split(/\s+/).slice(0, 2);
}

describe("a lessor process's memory is closed to other processes of its uid", { skip }, () => {
  const key = randomBytes(32).toString("hex");

  test("a control: a plain Node process of the same uid, same environment, is read (the attack works here)", async () => {
    const plain = spawn(AS_NOBODY[0]!, [...AS_NOBODY.slice(1), process.execPath, "-e", "setTimeout(() => {}, 20000)"], { env: { PATH: process.env.PATH ?? "", LESSOR_MASTER_KEY: key }, stdio: "ignore" });
    try {
      // Until setpriv has become nobody and run node (its command line is then node's).
      const cmdline = () => (existsSync(`/proc/${plain.pid}/cmdline`) ? readFileSync(`/proc/${plain.pid}/cmdline`, "utf8") : "");
      for (let i = 0; i < 500 && !cmdline().includes("setTimeout"); i++) await new Promise((r) => setTimeout(r, 20));
      const got = await readAsNobody(plain.pid!);
      assert.ok(got.environ!.includes(key), "a same-uid reader sees a plain process's environment");
      assert.ok(got.maps!.length > 0);
      assert.notEqual(got.mem, "EACCES");
    } finally {
      plain.kill("SIGKILL");
    }
  });

  test("lessor serve with LESSOR_MASTER_KEY: no environ, maps or mem for the same uid, and no core file", async () => {
    const { dir, env } = await nobodysVault(key);
    const serve = await startCli(["serve"], /lessor daemon ready/, env, { prefix: AS_NOBODY });
    try {
      assert.match(serve.stderr(), /lessor daemon ready/);
      assert.doesNotMatch(serve.stderr(), /not shielded/);
      const pid = serve.child.pid!;
      const got = await readAsNobody(pid);
      assert.deepEqual(got, { environ: "EACCES", maps: "EACCES", mem: "EACCES" });
      assert.deepEqual(coreLimits(pid), ["0", "0"]);
      assert.ok(!serve.stderr().includes(key));
    } finally {
      serve.child.kill("SIGTERM");
      await serve.exited;
    }
  });

  test("lessor run --no-sandbox: the agent, a child of the same uid, cannot read its parent's environment (LESSOR_MASTER_KEY)", async () => {
    const { dir, env } = await nobodysVault(key);
    const agent = join(dir, "agent.sh");
    writeFileSync(agent, '#!/bin/sh\necho "parent=$(cat /proc/$PPID/comm)"\ncat /proc/$PPID/environ; echo "environ=$?"\nhead -c 100 /proc/$PPID/maps; echo "maps=$?"\n', { mode: 0o755 });
    chownSync(agent, NOBODY, NOBODY);
    const r = await runProcess(AS_NOBODY[0]!, [...AS_NOBODY.slice(1), process.execPath, "--", BIN, "run", "--no-sandbox", "--agent", "claude", "--", agent], { env, cwd: dir, timeoutMs: 60_000 });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^parent=node$/m, "the agent's parent is lessor run itself");
    assert.match(r.stdout, /^environ=1$/m);
    assert.match(r.stdout, /^maps=1$/m);
    assert.match(r.stderr, /Permission denied/);
    // The warning says where the key is not, and where it still may be.
    assert.match(r.stderr, /LESSOR_MASTER_KEY from any other process of yours started with them \(not from lessor's own \/proc\/\d+\/environ, which is closed to your other processes\)/);
    assert.ok(!r.stdout.includes(key) && !r.stderr.includes(key), "the master key reached the agent");
  });

});

test("without the addon, lessor serve starts and logs that its memory is not shielded, naming the fix", async () => {
  // In this test process, which never made itself non-dumpable, so the daemon's own attempt decides.
  const home = await makeHome();
  const lines: { level: string; obj: Record<string, unknown>; msg: string }[] = [];
  const log = {
    info: (obj: Record<string, unknown>, msg: string) => lines.push({ level: "info", obj, msg }),
    warn: (obj: Record<string, unknown>, msg: string) => lines.push({ level: "warn", obj, msg }),
    error: (obj: Record<string, unknown>, msg: string) => lines.push({ level: "error", obj, msg }),
  };
  const d = await startDaemon({ home, env: {}, log, peercredAddonPath: join(tempDirUntilExit("lessor-noaddon-"), "peercred.node") });
  try {
    const warning = lines.find((l) => l.level === "warn" && l.obj["dumpable"] === true);
    assert.ok(warning, "a warning is logged at start");
    assert.match(warning.msg, /not shielded from other processes of its uid: the native addon is not built .*build-addon\.mjs.*not blocked/);
  } finally {
    await d.close();
  }
});
