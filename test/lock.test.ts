/** One daemon per home: refusal with the holder's pid, recovery from dead holders and garbage, safe release. */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { acquireDaemonLock, LOCK_FILE } from "../src/server/lock.js";
import { isVaultError } from "../src/base/errors.js";
import { tempDir } from "./helpers.js";

const LOCK_MODULE = pathToFileURL(fileURLToPath(new URL("../src/server/lock.ts", import.meta.url))).href;

/**
 * A child process that takes (or fails to take) the lock for `home`, prints "won" or "refused", then waits
 * to be killed. With `synchronized`, it first prints "ready", reads a wall-clock time on stdin and spins until
 * then, so several children hit the lock at the same moment.
 */
function lockingChild(home: string, synchronized = false): { child: ChildProcess; ready: Promise<void>; outcome: Promise<string> } {
  const code = `
    import { acquireDaemonLock } from ${JSON.stringify(LOCK_MODULE)};
    const attempt = () => {
      try { acquireDaemonLock(process.argv[1]); console.log("won"); }
      catch (e) { console.log(e.code === "unavailable" ? "refused" : "error " + e.message); }
      setInterval(() => {}, 1000);
    };
    if (process.argv[2] === "sync") {
      console.log("ready");
      process.stdin.once("data", (d) => { const at = Number(String(d)); while (Date.now() < at); attempt(); });
    } else attempt();`;
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code, home, synchronized ? "sync" : ""], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  let out = "";
  const lines: ((l: string) => void)[] = [];
  child.stdout!.on("data", (d) => {
    out += d;
    let i;
    while ((i = out.indexOf("\n")) >= 0) {
      const line = out.slice(0, i).trim();
      out = out.slice(i + 1);
      lines.shift()?.(line);
    }
  });
  const early = new Promise<never>((_r, reject) => child.on("exit", (c, s) => reject(new Error(`child exited early (${c ?? s})`))));
  early.catch(() => {});
  const nextLine = () => Promise.race([new Promise<string>((r) => lines.push(r)), early]);
  const ready = synchronized ? nextLine().then((l) => assert.equal(l, "ready")) : Promise.resolve();
  const outcome = ready.then(nextLine);
  return { child, ready, outcome };
}

const killed = (child: ChildProcess): Promise<void> =>
  new Promise((r) => {
    if (child.exitCode !== null || child.signalCode !== null) return r();
    child.on("exit", () => r());
    child.kill("SIGKILL");
  });

test("the lock file is 0600 and names this process; a second acquire is refused with the pid named", () => {
  const home = tempDir();
  const lock = acquireDaemonLock(home);
  try {
    assert.equal(lock.recoveredStale, false);
    assert.equal(lock.path, join(home, LOCK_FILE));
    assert.equal(statSync(lock.path).mode & 0o777, 0o600);
    assert.equal(readFileSync(lock.path, "utf8").split("\n")[0], String(process.pid));
    assert.throws(
      () => acquireDaemonLock(home),
      (e: unknown) => isVaultError(e, "unavailable") && e.message.includes(`pid ${process.pid}`) && e.message.includes(home),
    );
    assert.deepEqual(readdirSync(home), [LOCK_FILE], "no temp or stale files are left behind");
  } finally {
    lock.release();
  }
  assert.equal(existsSync(join(home, LOCK_FILE)), false);
});

test("a lock held by a live child is refused; once the child is SIGKILLed it is recovered", async () => {
  const home = tempDir();
  const { child, outcome } = lockingChild(home);
  try {
    assert.equal(await outcome, "won");
    assert.throws(
      () => acquireDaemonLock(home),
      (e: unknown) => isVaultError(e, "unavailable") && e.message.includes(`pid ${child.pid}`),
    );
  } finally {
    await killed(child);
  }
  assert.ok(existsSync(join(home, LOCK_FILE)), "SIGKILL left the lock file behind");
  const lock = acquireDaemonLock(home);
  try {
    assert.equal(lock.recoveredStale, true);
    assert.equal(lock.previousPid, child.pid);
    assert.equal(readFileSync(lock.path, "utf8").split("\n")[0], String(process.pid));
  } finally {
    lock.release();
  }
});

test("garbage or empty lock files are recovered", () => {
  for (const content of ["not a pid\n", "", "0\n", "-1\n", "99999999999\n"]) {
    const home = tempDir();
    writeFileSync(join(home, LOCK_FILE), content);
    const lock = acquireDaemonLock(home);
    assert.equal(lock.recoveredStale, true, JSON.stringify(content));
    assert.equal(lock.previousPid, undefined);
    assert.equal(readFileSync(lock.path, "utf8").split("\n")[0], String(process.pid));
    lock.release();
  }
});

test("a live pid with a different start time is a reused pid, so the lock is stale", { skip: process.platform !== "linux" }, () => {
  const home = tempDir();
  writeFileSync(join(home, LOCK_FILE), `${process.pid}\nstart=1\n`);
  const lock = acquireDaemonLock(home);
  assert.equal(lock.recoveredStale, true);
  assert.equal(lock.previousPid, process.pid);
  lock.release();
});

test("release removes only our own lock, and twice is harmless", () => {
  const home = tempDir();
  const path = join(home, LOCK_FILE);
  const lock = acquireDaemonLock(home);
  writeFileSync(path, "1\nstart=unknown\n"); // someone else's lock now
  lock.release();
  assert.equal(readFileSync(path, "utf8"), "1\nstart=unknown\n");

  const home2 = tempDir();
  const lock2 = acquireDaemonLock(home2);
  lock2.release();
  assert.equal(existsSync(lock2.path), false);
  const again = acquireDaemonLock(home2); // a new holder after our release
  lock2.release();
  assert.ok(existsSync(again.path), "a second release must not remove the next holder's lock");
  again.release();
});

test("something that is not a regular file at the lock path is refused and left alone", () => {
  const home = tempDir();
  mkdirSync(join(home, LOCK_FILE));
  assert.throws(() => acquireDaemonLock(home), (e: unknown) => isVaultError(e, "unavailable") && /not a regular file/.test(e.message));
  assert.ok(statSync(join(home, LOCK_FILE)).isDirectory());
});

test("several processes racing for a stale lock: exactly one wins", async () => {
  const home = tempDir();
  writeFileSync(join(home, LOCK_FILE), "garbage\n");
  const racers = [0, 1, 2, 3].map(() => lockingChild(home, true));
  try {
    await Promise.all(racers.map((r) => r.ready));
    const at = Date.now() + 200;
    for (const r of racers) r.child.stdin!.write(`${at}\n`);
    const outcomes = await Promise.all(racers.map((r) => r.outcome));
    assert.equal(outcomes.filter((o) => o === "won").length, 1, outcomes.join(","));
    assert.equal(outcomes.filter((o) => o === "refused").length, racers.length - 1, outcomes.join(","));
    const holder = Number(readFileSync(join(home, LOCK_FILE), "utf8").split("\n")[0]);
    assert.equal(holder, racers[outcomes.indexOf("won")]!.child.pid);
  } finally {
    await Promise.all(racers.map((r) => killed(r.child)));
  }
});
