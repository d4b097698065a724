/**
 * Review of 9059e2d..HEAD (crash handler, checkout exemption, init key binding, env-file check, scrub
 * fast path), as an attacker. A crash (an error nothing catches, test/fixtures/crash-later.cjs) in a
 * `lessor run --vault-session` must end what the run's own end would: the session's token and the
 * leases the sandboxed agent took through it, not only the leases lessor run took for $S: references.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import assert from "node:assert/strict";
import { initHome, openVault } from "../src/config/open-vault.js";
import { BIN, runCli, seedHome } from "./cli-harness.js";
import { startServe } from "./daemon-harness.js";
import { inTime } from "./proxy-harness.js";

const NODE = process.execPath;
const REPO = resolve(fileURLToPath(new URL("..", import.meta.url)));
const PRELOAD = fileURLToPath(new URL("./fixtures/crash-later.cjs", import.meta.url));
const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"]).status === 0;
const AGENT = "crash-runner";
const POLICY = `[[rule]]\nname = "a"\neffect = "allow"\nagents = ["${AGENT}"]\nsecrets = ["granted"]\nany_domain = true\nmax_uses = 5\n`;

/** A home (vault_session on, the repo shown read-only so the agent can run the built CLI) and a project. */
async function setup(dir: string, value: string): Promise<{ home: string; project: string; runTmp: string; userHome: string }> {
  const userHome = join(dir, "home");
  const project = join(userHome, "project");
  const runTmp = join(dir, "run-tmp");
  const home = join(dir, "lessor");
  mkdirSync(project, { recursive: true });
  mkdirSync(runTmp, { recursive: true });
  await initHome({ home, env: { LESSOR_HOME: home } });
  await seedHome(home, POLICY, [{ name: "granted", value }]);
  appendFileSync(join(home, "lessor.toml"), `\n[run]\nread = [${JSON.stringify(REPO)}]\nvault_session = true\n`);
  return { home, project, runTmp, userHome };
}

/**
 * `lessor run --agent A` with the crash preload: the sandboxed child takes a lease through the
 * session (lessor lease granted), then writes `ready`, which makes lessor's process throw.
 */
async function crashRun(s: { home: string; project: string; runTmp: string; userHome: string }, env: Record<string, string>): Promise<{ code: number | null; err: string; leaseRc: boolean }> {
  const ready = join(s.project, "ready");
  const script = `${JSON.stringify(NODE)} -- ${JSON.stringify(BIN)} lease granted >/dev/null 2>lease.err; echo $? > lease.rc; : > ready; sleep 25`;
  const child = spawn(NODE, ["--require", PRELOAD, "--", BIN, "run", "--agent", AGENT, "--", "/bin/sh", "-c", script], {
    cwd: s.project,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: s.userHome, LESSOR_HOME: s.home, TMPDIR: s.runTmp, NO_COLOR: "1", LESSOR_TEST_CRASH_READY: ready, LESSOR_TEST_CRASH_CANARY: "c", ...env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  let err = "";
  child.stderr.on("data", (d: Buffer) => (err += d.toString()));
  child.stdout.resume();
  const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
  try {
    const code = await inTime(exited, 40_000, "lessor run exits after the crash");
    return { code, err, leaseRc: existsSync(join(s.project, "lease.rc")) };
  } finally {
    try {
      process.kill(-child.pid!, "SIGKILL");
    } catch {
      // gone
    }
  }
}

test(
  "lessor run --vault-session (embedded) crashing on a bug leaves no lease the sandboxed agent took through its session usable",
  { skip: HAVE_BWRAP ? false : "no bwrap" },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "lessor-rv5c-"));
    try {
      const s = await setup(dir, `granted-${randomBytes(12).toString("hex")}`);
      const r = await crashRun(s, {});
      assert.ok(r.leaseRc, `the child took its lease and signalled: ${r.err}`);
      assert.equal(r.code, 70, r.err);
      const v = await openVault({ home: s.home, env: { LESSOR_HOME: s.home } });
      try {
        const leases = await v.admin().listLeases({ agent: AGENT });
        assert.ok(leases.length >= 1, "the agent took a lease through the session");
        // As at the run's normal end: no lease the session granted can still be used (revoked, or used up).
        for (const l of leases)
          assert.ok(l.revokedAt !== null || (l.maxUses !== null && l.uses >= l.maxUses), `lease ${l.id} (issued by ${l.issuedBy}, uses ${l.uses}/${l.maxUses}) is still usable after the crash; lessor said: ${r.err}`);
      } finally {
        await v.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  "lessor run with a daemon vault session crashing on a bug revokes the run's agent token and its leases",
  { skip: HAVE_BWRAP ? false : "no bwrap" },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "lessor-rv5c-"));
    const s = await setup(dir, `granted-${randomBytes(12).toString("hex")}`);
    const daemon = await startServe(s.home);
    try {
      const r = await crashRun(s, { LESSOR_SOCKET: daemon.socket });
      assert.ok(r.leaseRc, `the child took its lease and signalled: ${r.err}`);
      assert.equal(r.code, 70, r.err);
      const list = await runCli(["token", "list", "--json"], { home: s.home, env: { HOME: s.userHome } });
      assert.equal(list.code, 0, list.stderr);
      const runTokens = (JSON.parse(list.stdout) as { name: string; state: string }[]).filter((t) => t.name.startsWith("session:"));
      assert.equal(runTokens.length, 1, list.stdout);
      const leases = await runCli(["leases", "--agent", AGENT, "--json"], { home: s.home, env: { HOME: s.userHome } });
      assert.equal(runTokens[0]!.state, "revoked", `the run's agent token is revoked after the crash, as at a normal end (leases: ${leases.stdout})`);
    } finally {
      await daemon.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
