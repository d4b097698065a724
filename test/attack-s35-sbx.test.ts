/**
 * A sandboxed agent that keeps running after `lessor run` ends. bwrap's sandbox init (PID 1 of the
 * sandbox's PID namespace) runs as the agent's own uid, dumpable, so the agent may ptrace it (no
 * capability needed: same uid, same user namespace; only Yama's ptrace_scope >= 1 stands in the way,
 * and many machines have none). The agent makes the init call prctl(PR_SET_PDEATHSIG, 0) and close
 * its copies of stdout and stderr (test/fixtures/s35-take-init.c): bwrap's monitor still exits when
 * the command does, lessor's run ends (exit 0, the after-run git check done, the leases revoked),
 * and the init, which nothing kills any more, keeps every process of the sandbox alive, with the
 * project writable. docs/security.md: "forks a grandchild that outlives it; the run is SIGKILLed …
 * the grandchild dies with the sandbox"; src/cli/run/run.ts runs the git check as "every process of
 * the sandbox is gone".
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { initHome } from "../src/config/open-vault.js";
import { HAVE_BWRAP } from "./run-harness.js";
import { BIN, runCliWithEnv } from "./cli-harness.js";

const HAVE_CC = spawnSync("cc", ["--version"]).status === 0;
const skip = !HAVE_BWRAP ? "bwrap is not installed or user namespaces are off" : !HAVE_CC ? "needs a C compiler (cc)" : process.arch !== "x64" ? "the probe's register layout is x86_64's" : false;
const root = mkdtempSync(join(tmpdir(), "lessor-s35-sbx-"));

/** Every process whose working directory is inside `dir` (the sandbox's survivors): killed by pid, after each test. */
function survivors(dir: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (readlinkSync(`/proc/${e}/cwd`).startsWith(dir)) out.push(Number(e));
    } catch {
      // gone, or not ours
    }
  }
  return out;
}
after(() => {
  for (const pid of survivors(root)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone
    }
  }
  rmSync(root, { recursive: true, force: true });
});

async function owner(name: string): Promise<{ project: string; env: Record<string, string> }> {
  const home = join(root, name, "home");
  const project = join(home, "project");
  mkdirSync(project, { recursive: true, mode: 0o700 });
  const lessorHome = join(home, ".lessor");
  const env = { PATH: "/usr/bin:/bin", HOME: home, NO_COLOR: "1", LESSOR_HOME: lessorHome };
  await initHome({ home: lessorHome, env, keySource: "file" });
  writeFileSync(join(lessorHome, "policy.toml"), `[[rule]]\nname = "a"\neffect = "allow"\nagents = ["agent"]\nsecrets = ["granted"]\nany_domain = true\n`, { mode: 0o600 });
  const src = fileURLToPath(new URL("./fixtures/s35-take-init.c", import.meta.url));
  const cc = spawnSync("cc", ["-O1", "-o", join(project, "take-init"), src], { encoding: "utf8" });
  assert.equal(cc.status, 0, cc.stderr);
  return { project, env };
}

/** The agent's script: take over the init, then leave a detached process beating into ./beat every 0.2 s. */
const AGENT = `./take-init; (setsid sh -c 'while :; do date +%s%N > beat; sleep 0.2; done' </dev/null >/dev/null 2>&1 &); sleep 0.6; echo command-done`;

/** True when ./beat still changes 1.5 s after `lessor run` ended. */
async function stillBeating(project: string): Promise<boolean> {
  const beat = join(project, "beat");
  const first = existsSync(beat) ? readFileSync(beat, "utf8") : "";
  await new Promise((r) => setTimeout(r, 1500));
  const second = existsSync(beat) ? readFileSync(beat, "utf8") : "";
  return first !== second;
}

test("attack: the agent takes over the sandbox's init with ptrace; a process of its own still writes the project after `lessor run` exited", { skip, timeout: 60_000 }, async () => {
  const o = await owner("exit");
  const r = await runCliWithEnv(["run", "--agent", "agent", "--", "/bin/sh", "-c", AGENT], { cwd: o.project, env: o.env, timeoutMs: 30_000 });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /command-done/);
  assert.equal(await stillBeating(o.project), false, `a process of the sandbox outlived lessor run (${r.stdout.trim()}): still writing ${o.project}/beat`);
});

test("attack: the same after the run is SIGKILLed (docs/security.md: the grandchild dies with the sandbox)", { skip, timeout: 60_000 }, async () => {
  const o = await owner("sigkill");
  const child = spawn(process.execPath, [BIN, "run", "--agent", "agent", "--", "/bin/sh", "-c", `${AGENT}; sleep 30`], { cwd: o.project, env: o.env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (out += d.toString()));
  for (let i = 0; i < 200 && !out.includes("command-done"); i++) await new Promise((r) => setTimeout(r, 100));
  assert.match(out, /command-done/);
  child.kill("SIGKILL");
  await new Promise((r) => child.once("close", r));
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(await stillBeating(o.project), false, `a process of the sandbox outlived the SIGKILLed lessor run (${out.trim()}): still writing ${o.project}/beat`);
});

test("the init's memory is closed to the agent (/proc/1/mem, /proc/1/task/1/mem), while the agent may still trace its own processes", { skip, timeout: 60_000 }, async () => {
  const o = await owner("mem");
  const script = [
    "(exec 3<>/proc/1/mem) 2>/dev/null && echo MEM-WRITABLE || echo mem-closed",
    "(exec 3<>/proc/1/task/1/mem) 2>/dev/null && echo TASK-MEM-WRITABLE || echo task-mem-closed",
    "if command -v strace >/dev/null; then strace -qq -e trace=none true && echo own-trace-ok; else echo own-trace-ok; fi",
  ].join("; ");
  const r = await runCliWithEnv(["run", "--agent", "agent", "--", "/bin/sh", "-c", script], { cwd: o.project, env: o.env, timeoutMs: 30_000 });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /mem-closed\ntask-mem-closed\nown-trace-ok/, r.stdout + r.stderr);
});

test("the seccomp filter refuses ptrace and process_vm_readv/writev on pid 1 (the init) on each architecture, and allows them on any other pid", async () => {
  const { keyringFilterProgram, KEYRING_SYSCALLS, PTRACE_SYSCALLS, PROCESS_VM_SYSCALLS, SECCOMP_RET_ALLOW } = await import("../src/sandbox/seccomp.js");
  const prog = keyringFilterProgram();
  const run = (arch: number, nr: number, args: number[]): number => {
    let a = 0;
    for (let pc = 0; pc < prog.length; pc++) {
      const x = prog[pc]!;
      if (x.code === 0x20) a = x.k === 0 ? nr >>> 0 : x.k === 4 ? arch >>> 0 : x.k >= 16 ? (args[(x.k - 16) / 8] ?? 0) >>> 0 : assert.fail(`load at ${x.k}`);
      else if (x.code === 0x15) pc += a === x.k >>> 0 ? x.jt : x.jf;
      else if (x.code === 0x06) return x.k >>> 0;
      else assert.fail(`unknown instruction ${x.code}`);
    }
    return assert.fail("fell off the end");
  };
  const EPERM = 0x00050001;
  for (const { arch, name } of KEYRING_SYSCALLS) {
    for (const nr of PTRACE_SYSCALLS[name]!) {
      assert.equal(run(arch, nr, [16 /* PTRACE_ATTACH */, 1]), EPERM, `${name} ptrace(ATTACH, 1)`);
      assert.equal(run(arch, nr, [0x4206 /* PTRACE_SEIZE */, 1]), EPERM, `${name} ptrace(SEIZE, 1)`);
      assert.equal(run(arch, nr, [16, 2]), SECCOMP_RET_ALLOW, `${name} ptrace(ATTACH, 2)`);
      assert.equal(run(arch, nr, [1, 0]), SECCOMP_RET_ALLOW, `${name} ptrace(PEEKTEXT, 0)`);
    }
    for (const nr of PROCESS_VM_SYSCALLS[name]!) {
      assert.equal(run(arch, nr, [1]), EPERM, `${name} process_vm ${nr} on 1`);
      assert.equal(run(arch, nr, [3]), SECCOMP_RET_ALLOW, `${name} process_vm ${nr} on 3`);
    }
  }
});
