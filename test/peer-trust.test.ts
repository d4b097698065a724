/**
 * No peer credentials means no identity: a daemon that cannot read SO_PEERCRED refuses to start when
 * other uids could reach its socket, serves only its owner otherwise (and says so), and a peer whose
 * credentials are unknown is never taken for the owner. With credentials, another uid gets its mapped
 * identity or is refused, never admin.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { makeAuthenticator } from "../src/server/authenticate.js";
import { startDaemon } from "../src/server/daemon.js";
import type { Logger } from "../src/server/logger.js";
import { loadPeerCred } from "../src/native/peercred.js";
import { isVaultError } from "../src/base/errors.js";
import { makeHome, RawConn } from "./daemon-harness.js";
import { makeVault, tempDir } from "./helpers.js";

const LINUX_ROOT = process.platform === "linux" && process.getuid?.() === 0;
const OWNER = process.getuid?.() ?? 0;

/** A path where no addon exists: the daemon then has no peer credentials. */
const missingAddon = (): string => join(tempDir(), "no-addon", "peercred.node");

/** A logger that keeps every line. */
function recordingLog(): Logger & { lines: { level: string; obj: Record<string, unknown>; msg: string }[] } {
  const lines: { level: string; obj: Record<string, unknown>; msg: string }[] = [];
  return {
    lines,
    info: (obj, msg) => lines.push({ level: "info", obj, msg }),
    warn: (obj, msg) => lines.push({ level: "warn", obj, msg }),
    error: (obj, msg) => lines.push({ level: "error", obj, msg }),
  };
}

const IDENTITY = `
[[identity]]
uid = 65534
role = "agent"
agent = "claude"
`;

test("without peer credentials, a daemon with socket_mode 0666 or an [[identity]] entry refuses to start and says how to build the addon", async () => {
  for (const config of [`[server]\nsocket_mode = "0666"\n`, IDENTITY, `[server]\nsocket_mode = "0660"\n${IDENTITY}`]) {
    const home = await makeHome({ config });
    await assert.rejects(
      startDaemon({ home, env: {}, peercredAddonPath: missingAddon() }),
      (e: unknown) =>
        isVaultError(e, "config_invalid") &&
        e.message.includes("refusing to start") &&
        e.message.includes(join(home, "lessor.toml")) &&
        /peer credentials are unavailable/.test(e.message) &&
        /Build the addon with: node \S+scripts\/build-addon\.mjs/.test(e.message) &&
        /python3, make and a C compiler/.test(e.message) &&
        (config.includes("socket_mode") ? /socket_mode is "066[06]"/.test(e.message) : true) &&
        (config.includes("identity") ? /1 \[\[identity\]\] entry maps other uids/.test(e.message) : true),
      config,
    );
    assert.equal(existsSync(join(home, "lessor.sock")), false, "no socket was created");
    assert.equal(existsSync(join(home, "lessor.pid")), false, "the lock was released");
  }
});

test("without peer credentials, a 0600 socket with no [[identity]] serves its owner as admin, says why, and other uids cannot connect", async () => {
  // The socket sits in a directory everyone may enter, so only its own 0600 mode keeps other uids out.
  const run = tempDir();
  chmodSync(run, 0o755);
  const home = await makeHome({ config: `[server]\nsocket = ${JSON.stringify(join(run, "lessor.sock"))}\n` });
  const log = recordingLog();
  const d = await startDaemon({ home, env: {}, log, peercredAddonPath: missingAddon() });
  try {
    const warning = log.lines.find((l) => l.level === "warn" && l.obj["ownerWithoutPeerCred"] === true);
    assert.ok(warning, "a warning is logged at start");
    assert.match(warning.msg, /peer credentials are unavailable/);
    assert.match(warning.msg, /the socket is 0600 and no \[\[identity\]\] is configured/);
    assert.match(warning.msg, /every Unix-socket client is taken for the owner/);
    const c = await RawConn.open(d.socketPath);
    const welcome = (await c.hello()) as { ok: boolean; identity?: { id: string; role: string } };
    assert.equal(welcome.ok, true);
    assert.equal(welcome.identity?.role, "admin");
    assert.equal(welcome.identity?.id, `uid:${OWNER}`);
    c.sock.destroy();
    if (LINUX_ROOT) {
      const other = await helloAs(65534, d.socketPath);
      assert.deepEqual(other, { connectError: "EACCES" }, "the kernel refuses another uid on the 0600 socket");
    }
  } finally {
    await d.close();
  }
});

test("with the addon loaded, a connection whose credentials cannot be read gets no identity from a uid (never the owner's)", async () => {
  const { vault } = await makeVault();
  const strict = makeAuthenticator(vault, [], OWNER);
  await assert.rejects(
    strict({ transport: "uds" }, { protocol: "lessor", version: 1 }),
    (e: unknown) => isVaultError(e, "unauthenticated") && /could not read this connection's peer credentials/.test(e.message) && /token/.test(e.message),
  );
  const fails = await vault.admin().auditQuery({ types: ["auth_failed"] });
  assert.ok(fails.some((f) => f.reason === "no peer credentials"), "the refusal is audited");
  // Only the daemon's start-up decision (owner-only socket, no addon) may take such a peer for the owner.
  const ownerOnly = makeAuthenticator(vault, [], OWNER, { ownerWithoutPeerCred: true });
  assert.equal((await ownerOnly({ transport: "uds" }, { protocol: "lessor", version: 1 })).role, "admin");
});

/** Connects to `socket` as uid `uid` in a child process and returns the daemon's welcome (or the connect error). */
function helloAs(uid: number, socket: string): Promise<{ ok?: boolean; identity?: { id: string; role: string; agent?: string }; error?: { code: string; message: string }; connectError?: string }> {
  const script = `
    const s = require("net").connect(process.argv[1]);
    let buf = Buffer.alloc(0);
    s.on("connect", () => {
      const b = Buffer.from(JSON.stringify({ protocol: "lessor", version: 1 }));
      const h = Buffer.alloc(4); h.writeUInt32BE(b.length);
      s.write(Buffer.concat([h, b]));
    });
    s.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        process.stdout.write(buf.subarray(4, 4 + buf.readUInt32BE(0)).toString());
        s.destroy();
      }
    });
    s.on("error", (e) => process.stdout.write(JSON.stringify({ connectError: e.code })));`;
  return new Promise((resolve, reject) => {
    const child = spawn("setpriv", [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", process.execPath, "-e", script, socket], { cwd: "/", stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("error", reject);
    child.on("exit", (code) => {
      try {
        resolve(JSON.parse(out));
      } catch {
        reject(new Error(`the client as uid ${uid} exited ${code}: ${out} ${err}`));
      }
    });
  });
}

test("with the addon, other uids on a 0666 socket get their mapped identity or are refused, never admin", { skip: LINUX_ROOT ? false : "needs root on Linux to connect as other uids" }, async () => {
  assert.ok(loadPeerCred().available, "the addon is built on this machine");
  const run = tempDir();
  chmodSync(run, 0o755); // other uids must reach the socket: a directory they can enter but not write
  const socket = join(run, "agents.sock");
  const home = await makeHome({ config: `[server]\nsocket = ${JSON.stringify(socket)}\nsocket_mode = "0666"\n${IDENTITY}` });
  const d = await startDaemon({ home, env: {} });
  try {
    const mapped = await helloAs(65534, socket);
    assert.equal(mapped.ok, true, JSON.stringify(mapped));
    assert.deepEqual({ id: mapped.identity?.id, role: mapped.identity?.role, agent: mapped.identity?.agent }, { id: "uid:65534", role: "agent", agent: "claude" });

    const stranger = await helloAs(4243, socket);
    assert.equal(stranger.ok, false, JSON.stringify(stranger));
    assert.equal(stranger.error?.code, "unauthenticated");
    assert.match(stranger.error?.message ?? "", /uid 4243 is not mapped/);

    const owner = await RawConn.open(socket);
    assert.equal(((await owner.hello()) as { identity: { role: string } }).identity.role, "admin", "the daemon's own uid is still admin");
    owner.sock.destroy();
    const fails = await d.vault.admin().auditQuery({ types: ["auth_failed"] });
    assert.ok(fails.some((f) => f.detail !== null && (JSON.parse(f.detail) as { uid?: number }).uid === 4243), "the stranger's attempt is audited with its uid");
  } finally {
    await d.close();
  }
  assert.deepEqual(readdirSync(run), [], "the socket is removed at shutdown");
});
