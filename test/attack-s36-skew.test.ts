/**
 * Red-team pass (s36 "skew"): daemon restarts and the state that must survive them. Real `lessor serve`
 * children from dist/, real SQLite homes, real signals (SIGKILL: a crash, a power cut).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { openVault } from "../src/config/open-vault.js";
import { machineTag, processStamp, stampState } from "../src/server/process-stamp.js";
import { cliHome, runCli, seedHome, startCli } from "./cli-harness.js";

const AGENT = "skew-agent";
const POLICY = `[[rule]]\nname = "a"\neffect = "allow"\nagents = ["${AGENT}"]\nsecrets = ["db"]\nany_domain = true\n`;

const CANARY = `CANARY_${randomBytes(12).toString("hex")}`;
async function home(): Promise<string> {
  const h = await cliHome();
  await seedHome(h, POLICY, [{ name: "db", value: CANARY }]);
  return h;
}
const envOf = (h: string) => ({ PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: h, LESSOR_HOME: h, NO_COLOR: "1" });

async function withVault<T>(h: string, f: (v: Awaited<ReturnType<typeof openVault>>) => Promise<T>): Promise<T> {
  const v = await openVault({ home: h, env: { LESSOR_HOME: h } });
  try {
    return await f(v);
  } finally {
    await v.close();
  }
}

const TAG = machineTag();
const noTag = TAG === null ? "this machine has no /etc/machine-id: a stamp names no machine here" : false;

/**
 * A session token as a daemon of the previous boot stamped it (that boot's id: this one's with a digit
 * flipped; this pid namespace; machine `machine`), through the vault API.
 */
async function sessionOfPreviousBoot(h: string, machine: string) {
  const boot = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim().replaceAll("-", "").slice(0, 12);
  const previousBoot = (parseInt(boot.slice(0, 1), 16) ^ 1).toString(16) + boot.slice(1);
  const ns = /pid:\[(\d+)\]/.exec(readlinkSync("/proc/self/ns/pid"))![1];
  const stamp = `4242.123456.${previousBoot}.${ns}.${machine}`;
  const tok = await withVault(h, (v) => v.session({ id: "uid:0", role: "admin", transport: "uds" }).createToken({ name: "x", role: "agent", agent: AGENT, ttl: "1h", session: true, process: stamp }));
  assert.equal(tok.name, `session:${stamp}`);
  return tok;
}

test("a daemon stamps a session token with this machine's tag, not the machine id itself", { skip: noTag }, () => {
  const id = readFileSync("/etc/machine-id", "utf8").trim();
  const stamp = processStamp(process.pid)!;
  assert.ok(stamp.endsWith(`.${TAG}`), stamp);
  assert.ok(!stamp.includes(id.slice(0, 12)), "the stamp carries the machine id in the clear");
  assert.equal(stampState(stamp), "alive");
});

test("a machine reboot: the vault-session token of a run that died with the last boot is swept by the daemon started after it", { timeout: 60_000, skip: noTag }, async () => {
  const h = await home();
  // What a `lessor run --vault-session` left in the store before a power cut / reboot: its session
  // token, stamped by the daemon of that boot (its boot id, this machine, this pid namespace). The run
  // died with the boot; anything that copied its token (the sandboxed command may copy it anywhere it
  // can write: the project) holds an agent credential for the token's ttl.
  const tok = await sessionOfPreviousBoot(h, TAG!);
  // The machine is back; the owner's daemon starts (systemd, at boot).
  const d = await startCli(["serve"], /lessor daemon ready/, envOf(h));
  try {
    assert.match(d.stderr(), /lessor daemon ready/, d.stderr());
    await sleep(3000); // the sweep runs at start, then once a second
    // The copied token, shown to the restarted daemon.
    const r = await runCli(["lease", "db"], { home: h, env: { ...envOf(h), LESSOR_SOCKET: join(h, "lessor.sock"), LESSOR_TOKEN: (tok as unknown as { token: string }).token } });
    assert.ok(!r.stdout.includes(CANARY), `a copied session token of a run that died with the previous boot still takes leases on the restarted daemon (exit ${r.code})`);
  } finally {
    d.child.kill("SIGTERM");
    await d.exited;
  }
  const left = await withVault(h, async (v) => (await v.admin().listTokens()).find((t) => t.id === tok.id));
  assert.notEqual(
    left?.revokedAt ?? null,
    null,
    "the session token of a run from the previous boot is still live after the daemon restarted: its stamp is judged 'foreign' (another boot) and never swept by any daemon, so a copied token works for its whole ttl",
  );
});

test("a session token stamped by another machine sharing the store (another boot, another machine tag) is left to that machine's daemon", { timeout: 60_000, skip: noTag }, async () => {
  const h = await home();
  const other = (parseInt(TAG!.slice(0, 1), 16) ^ 1).toString(16) + TAG!.slice(1);
  const tok = await sessionOfPreviousBoot(h, other);
  const d = await startCli(["serve"], /lessor daemon ready/, envOf(h));
  try {
    await sleep(2500);
  } finally {
    d.child.kill("SIGTERM");
    await d.exited;
  }
  const left = await withVault(h, async (v) => (await v.admin().listTokens()).find((t) => t.id === tok.id));
  assert.equal(left?.revokedAt ?? null, null, "a live run's session on another machine was ended");
});

test("lock: a second daemon on the same home is refused; a lock left by a SIGKILLed daemon whose pid now names another live process does not block the restart", { timeout: 90_000 }, async () => {
  const h = await home();
  const env = envOf(h);
  const a = await startCli(["serve"], /lessor daemon ready/, env);
  let unrelated: ReturnType<typeof spawn> | null = null;
  try {
    assert.match(a.stderr(), /lessor daemon ready/);
    const b = await startCli(["serve"], /lessor daemon ready|another lessor daemon/, env);
    const bx = await b.exited;
    assert.notEqual(bx.code, 0, "a second daemon on the same home must not start");
    assert.match(b.stderr(), /another lessor daemon \(pid \d+\)/);
    // Crash: SIGKILL leaves lessor.pid behind.
    const lock = readFileSync(join(h, "lessor.pid"), "utf8");
    a.child.kill("SIGKILL");
    await a.exited;
    // Its pid reused by an unrelated live process: the lock names that pid, with the dead daemon's start time.
    unrelated = spawn("sleep", ["300"], { stdio: "ignore" });
    writeFileSync(join(h, "lessor.pid"), lock.replace(/^\d+/, String(unrelated.pid)), { mode: 0o600 });
    const c = await startCli(["serve"], /lessor daemon ready/, env);
    try {
      assert.match(c.stderr(), /lessor daemon ready/, `the restart was blocked by a stale lock: ${c.stderr()}`);
      // And now the lock is held again: a third is refused.
      const e = await startCli(["serve"], /lessor daemon ready|another lessor daemon/, env);
      assert.notEqual((await e.exited).code, 0);
    } finally {
      c.child.kill("SIGTERM");
      await c.exited;
    }
  } finally {
    unrelated?.kill("SIGKILL");
    a.child.kill("SIGKILL");
  }
});

test("killswitch engaged, then the daemon is SIGKILLed and restarted: still engaged, the lease still revoked, no grant", { timeout: 90_000 }, async () => {
  const h = await home();
  const env = envOf(h);
  const lease = await withVault(h, (v) => v.session({ id: AGENT, role: "agent", transport: "in-process", agent: AGENT } as never).requestLease({ secret: "db", ttl: "10m", maxUses: 5 } as never));
  let d = await startCli(["serve"], /lessor daemon ready/, env);
  try {
    const k = await runCli(["killswitch", "--yes", "--reason", "drill"], { home: h, env });
    assert.equal(k.code, 0, k.stderr);
    d.child.kill("SIGKILL");
    await d.exited;
    d = await startCli(["serve"], /lessor daemon ready/, env);
    assert.match(d.stderr(), /killswitch is engaged/);
    const s = await runCli(["status", "--json"], { home: h, env });
    assert.match(s.stdout, /"engaged":\s*true/, s.stdout + s.stderr);
  } finally {
    d.child.kill("SIGTERM");
    await d.exited;
  }
  await withVault(h, async (v) => {
    const l = (await v.admin().listLeases({ agent: AGENT })).find((x) => x.id === (lease as { id: string }).id);
    assert.notEqual(l?.revokedAt ?? null, null, "the lease came back after the restart");
  });
});
