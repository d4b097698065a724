/**
 * Attacks on the Unix socket's creation and removal by another local user: a socket directory they
 * can write or own, a symlink or file swapped in at the socket path around bind, a socket of theirs
 * left for lessor to "clean up", a file put in place of the socket before shutdown.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs, {
  chmodSync,
  chownSync,
  existsSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { Server, type ListenOptions } from "node:net";
import { basename, dirname, join } from "node:path";
import { afterEach, test } from "node:test";
import { startDaemon } from "../src/server/daemon.js";
import { listenUnix } from "../src/server/transports/uds.js";
import { isVaultError } from "../src/base/errors.js";
import { makeHome, RawConn } from "./daemon-harness.js";
import { shareGroup, tempDir } from "./helpers.js";

const ROOT = process.getuid?.() === 0;

/**
 * Every listener a test opened, closed after each test whatever it asserted: a test that fails
 * because a listen it expected to be refused succeeded fails, instead of hanging on the open server.
 */
const opened = new Set<Server>();
const listen = (...args: Parameters<typeof listenUnix>): ReturnType<typeof listenUnix> =>
  listenUnix(...args).then((s) => {
    opened.add(s);
    return s;
  });
afterEach(async () => {
  for (const s of opened) await close(s);
  opened.clear();
});
const NOBODY = 65534;
const close = (s: Server): Promise<void> => new Promise((r) => s.close(() => r()));
const mode = (p: string): number => lstatSync(p).mode & 0o7777;

/** Runs `fn` with `net.Server.prototype.listen` wrapped: `after(boundPath)` runs right after each bind. */
async function withRaceAfterBind<T>(after: (bound: string) => void, fn: () => Promise<T>): Promise<T> {
  const listen = Server.prototype.listen;
  Server.prototype.listen = function (this: Server, ...args: unknown[]) {
    const r = (listen as (...a: unknown[]) => Server).apply(this, args);
    const opts = args[0] as ListenOptions | string;
    const bound = typeof opts === "string" ? opts : opts.path;
    if (typeof bound === "string" && existsSync(bound)) after(bound);
    return r;
  } as typeof listen;
  try {
    return await fn();
  } finally {
    Server.prototype.listen = listen;
  }
}

/** Runs `fn` recording every path given to fs.chmodSync (including through ES-module imports). */
async function recordingChmods<T>(fn: () => Promise<T>): Promise<{ result: T | Error; chmods: string[] }> {
  const orig = fs.chmodSync;
  const chmods: string[] = [];
  fs.chmodSync = ((p: fs.PathLike, m: fs.Mode) => {
    chmods.push(String(p));
    return orig(p, m);
  }) as typeof fs.chmodSync;
  syncBuiltinESMExports();
  try {
    return { result: await fn().catch((e: unknown) => e as Error), chmods };
  } finally {
    fs.chmodSync = orig;
    syncBuiltinESMExports();
  }
}

test("a socket directory other users can write is refused before anything is created in it", async () => {
  for (const m of [0o777, 0o770, 0o1777, 0o757]) {
    const dir = join(tempDir(), "run");
    mkdirSync(dir);
    if (!shareGroup(dir) && (m & 0o002) === 0) continue;
    chmodSync(dir, m);
    await assert.rejects(
      listen(join(dir, "lessor.sock"), { mode: 0o666, onConnection: () => {} }),
      (e: unknown) => isVaultError(e, "insecure_permissions") && e.message.includes(dir) && /can be written by other users/.test(e.message) && /chmod go-w/.test(e.message),
      `mode ${m.toString(8)}`,
    );
    assert.deepEqual(readdirSync(dir), [], "no socket and no private directory were created");
  }
});

test("an ancestor other users can write (not sticky) is refused: they could move the socket directory away", async () => {
  const shared = join(tempDir(), "shared");
  mkdirSync(shared);
  chmodSync(shared, 0o777);
  const dir = join(shared, "mine");
  mkdirSync(dir, { mode: 0o700 });
  await assert.rejects(
    listen(join(dir, "lessor.sock"), { onConnection: () => {} }),
    (e: unknown) => isVaultError(e, "insecure_permissions") && e.message.includes(shared) && /move .*mine away/.test(e.message),
  );
  assert.deepEqual(readdirSync(dir), []);
  // A sticky ancestor (like /tmp, where every test directory lives) is fine.
  chmodSync(shared, 0o1777);
  const s = await listen(join(dir, "lessor.sock"), { onConnection: () => {} });
  await close(s);
});

test("a socket directory, or an ancestor, owned by another uid is refused", { skip: ROOT ? false : "needs root to chown a directory to another uid" }, async () => {
  const dir = join(tempDir(), "theirs");
  mkdirSync(dir, { mode: 0o755 });
  chownSync(dir, NOBODY, NOBODY);
  await assert.rejects(
    listen(join(dir, "lessor.sock"), { onConnection: () => {} }),
    (e: unknown) => isVaultError(e, "insecure_permissions") && /belongs to uid 65534, not to the daemon's uid/.test(e.message) && /chown/.test(e.message),
  );
  assert.deepEqual(readdirSync(dir), []);

  const above = join(tempDir(), "above");
  mkdirSync(above, { mode: 0o755 });
  chownSync(above, NOBODY, NOBODY);
  const mine = join(above, "mine");
  mkdirSync(mine, { mode: 0o700 });
  await assert.rejects(
    listen(join(mine, "lessor.sock"), { onConnection: () => {} }),
    (e: unknown) => isVaultError(e, "insecure_permissions") && e.message.includes(above) && /belongs to uid 65534/.test(e.message),
  );
});

test("a daemon whose socket directory other users can write refuses to start, and starts once it is fixed", async () => {
  const run = join(tempDir(), "run");
  mkdirSync(run, { mode: 0o777 });
  chmodSync(run, 0o777);
  const home = await makeHome({ config: `[server]\nsocket = ${JSON.stringify(join(run, "agents.sock"))}\n` });
  await assert.rejects(startDaemon({ home, env: {} }), (e: unknown) => isVaultError(e, "insecure_permissions") && e.message.includes(run));
  assert.deepEqual(readdirSync(run), []);
  chmodSync(run, 0o755);
  const d = await startDaemon({ home, env: {} });
  try {
    const c = await RawConn.open(join(run, "agents.sock"));
    assert.equal(((await c.hello()) as { ok: boolean }).ok, true);
    c.sock.destroy();
  } finally {
    await d.close();
  }
  assert.deepEqual(readdirSync(run), [], "the socket is removed at shutdown");
});

test("a path swapped for a symlink right after bind is never chmod-ed: lessor chmods only inside its private directory", async () => {
  const dir = tempDir();
  const victim = join(tempDir(), "victim");
  writeFileSync(victim, "owner's file");
  chmodSync(victim, 0o640);
  const path = join(dir, "lessor.sock");

  // The race at the bound path: it is replaced by a symlink to the victim between bind and the mode change.
  const swapBound = (bound: string) => {
    unlinkSync(bound);
    symlinkSync(victim, bound);
  };
  const first = await recordingChmods(() => withRaceAfterBind(swapBound, () => listen(path, { mode: 0o666, onConnection: () => {} })));
  assert.ok(isVaultError(first.result, "unavailable"), `refused: ${String(first.result)}`);
  assert.equal(mode(victim), 0o640, "the victim's mode is unchanged");
  assert.equal(readFileSync(victim, "utf8"), "owner's file");
  assert.deepEqual(first.chmods, [], "nothing was chmod-ed");
  assert.deepEqual(readdirSync(dir), [], "nothing is left behind");

  // The race at the final path: something is planted there after bind, before the socket is placed.
  const plant = (bound: string) => {
    if (bound !== path) symlinkSync(victim, path);
  };
  const second = await recordingChmods(() => withRaceAfterBind(plant, () => listen(path, { mode: 0o666, onConnection: () => {} })));
  assert.ok(isVaultError(second.result, "unavailable") && /appeared while the daemon was starting/.test(second.result.message), String(second.result));
  assert.equal(mode(victim), 0o640, "the victim's mode is unchanged");
  assert.equal(readlinkSync(path), victim, "the planted link is left alone (not removed, not followed)");
  for (const p of second.chmods) {
    assert.equal(dirname(dirname(p)), dir, `chmod only inside a private directory in ${dir}: ${p}`);
    assert.match(basename(dirname(p)), /^\.lsr/);
  }
  assert.equal(second.chmods.length, 1, "the new socket's mode was set once, inside the private directory");
  assert.deepEqual(readdirSync(dir), ["lessor.sock"], "only the planted link remains");
});

test("a symlink or a file planted at the socket path beforehand is refused and left as it was", async () => {
  const dir = tempDir();
  const victim = join(tempDir(), "victim");
  writeFileSync(victim, "x");
  chmodSync(victim, 0o600);
  const path = join(dir, "lessor.sock");
  symlinkSync(victim, path);
  const { result, chmods } = await recordingChmods(() => listen(path, { mode: 0o666, onConnection: () => {} }));
  assert.ok(isVaultError(result, "unavailable") && /is not a socket \(it is a symbolic link\)/.test(result.message), String(result));
  assert.deepEqual(chmods, []);
  assert.equal(readlinkSync(path), victim);
  assert.equal(mode(victim), 0o600);
});

test("a stale socket of another uid at the path is refused and left in place, never unlinked", { skip: ROOT ? false : "needs root to give a socket to another uid" }, async () => {
  const dir = tempDir();
  const path = join(dir, "lessor.sock");
  // A socket nobody listens on any more (its process was killed), then handed to another uid.
  const child = spawn(process.execPath, ["-e", "require('net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))", path], { stdio: "ignore" });
  await new Promise((r) => child.on("exit", r));
  assert.ok(lstatSync(path).isSocket());
  lchownSync(path, NOBODY, NOBODY);
  const ino = lstatSync(path).ino;
  await assert.rejects(
    listen(path, { onConnection: () => {} }),
    (e: unknown) => isVaultError(e, "unavailable") && /a socket of uid 65534, not of the daemon's uid/.test(e.message),
  );
  assert.equal(lstatSync(path).ino, ino, "the other uid's socket is still there");
});

test("closing the listener removes its own socket, and leaves a file put in its place", async () => {
  const dir = tempDir();
  const path = join(dir, "lessor.sock");
  const s1 = await listen(path, { onConnection: () => {} });
  await close(s1);
  assert.equal(existsSync(path), false, "its own socket is removed");

  const s2 = await listen(path, { onConnection: () => {} });
  unlinkSync(path);
  writeFileSync(path, "precious");
  await close(s2);
  assert.equal(readFileSync(path, "utf8"), "precious", "a file that replaced the socket is not removed at close");
});

test("the socket comes out with the configured mode, owned by the daemon, with nothing left beside it", async () => {
  for (const m of [0o600, 0o660, 0o666]) {
    const dir = tempDir();
    const path = join(dir, "lessor.sock");
    const umask = process.umask();
    const s = await listen(path, { mode: m, onConnection: () => {} });
    try {
      const st = lstatSync(path);
      assert.ok(st.isSocket());
      assert.equal(st.mode & 0o777, m);
      assert.equal(st.uid, process.getuid!());
      assert.deepEqual(readdirSync(dir), ["lessor.sock"], "the private bind directory is gone");
      assert.equal(process.umask(), umask, "the umask is restored");
      const c = await RawConn.open(path);
      c.sock.destroy();
    } finally {
      await close(s);
    }
  }
});
