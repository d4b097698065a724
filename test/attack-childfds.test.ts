/**
 * What lessor's child processes inherit (an attack pass): the rotation hooks and the key command the
 * daemon (`lessor serve`) starts while it holds its listening sockets, its SQLite database, its audit
 * file and the master key, and the command of `lessor run --no-sandbox`. The attacker is the program
 * a child runs (a third-party CLI, the agent itself), hostile or compromised. Real parts: a real
 * `lessor serve` (src/cli/main.ts through tsx), the built CLI (dist/bin/lessor.cjs), a real probe
 * program (node) that records its descriptors (and which of them lead to its parent's), its
 * environment, arguments, working directory and stdin.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { LESSOR_SECRET_VARIABLES } from "../src/base/secret-env.js";
import { HOOK_ENV_KEEP } from "../src/hooks/run-hook.js";
import { keychainKeySource } from "../src/crypto/keys/keychain.js";
import { runCliWithEnv } from "./cli-harness.js";
import { CLI, makeHome } from "./daemon-harness.js";

const tag = randomBytes(6).toString("hex");
const CANARY = {
  db: `CANARY-db-${tag}`,
  other: `CANARY-other-${tag}`,
  passphrase: `CANARY-pass-${tag}`,
  pg: `CANARY-pgpw-${tag}`,
  token: `lsr_CANARYtoken${tag}0123456789`,
  owner: `CANARY-aws-${tag}`,
  file: `CANARY-inherited-file-${tag}`,
  dburl: `postgres://lessor:CANARY-dburl-${tag}@127.0.0.1:1/lessor`,
};

const base = mkdtempSync(join(tmpdir(), "lessor-atk-childfds-"));
chmodSync(base, 0o755);
process.on("exit", () => rmSync(base, { recursive: true, force: true }));

/**
 * The probe: records what it was given into `<dir>/<label>-<pid>.json`, then prints `PROBE_PRINT`
 * (a key command's key) or a new value (a hook's). For each descriptor above stderr it notes whether
 * its parent holds the same file or socket (`/proc/PPID/fd`): that is a descriptor of lessor's.
 */
const PROBE = `
const fs = require("fs");
const [dir, label] = process.argv.slice(2);
const targets = (d) => { const o = {}; for (const n of fs.readdirSync(d)) { try { o[n] = fs.readlinkSync(d + "/" + n); } catch {} } return o; };
const own = targets("/proc/self/fd");
let parent = {}; try { parent = targets("/proc/" + process.ppid + "/fd"); } catch {}
const parentSet = new Set(Object.values(parent));
// anon_inode names and /dev/null are the same in every process (node opens its own): not a sign of inheritance.
const mine = ([n, t]) => Number(n) > 2 && !t.startsWith("anon_inode:") && t !== "/dev/null";
const shared = Object.entries(own).filter(([n, t]) => mine([n, t]) && parentSet.has(t)).map(([n, t]) => n + " -> " + t);
const paths = Object.entries(own).filter(([n, t]) => mine([n, t]) && t.startsWith("/")).map(([n, t]) => n + " -> " + t);
let stdin = ""; try { stdin = fs.readFileSync(0, "utf8"); } catch (e) { stdin = "(" + e.code + ")"; }
const out = { fds: own, shared, paths, env: process.env, argv: process.argv, cwd: process.cwd(), stdin };
fs.writeFileSync(dir + "/" + label + "-" + process.pid + ".json.tmp", JSON.stringify(out));
fs.renameSync(dir + "/" + label + "-" + process.pid + ".json.tmp", dir + "/" + label + "-" + process.pid + ".json");
process.stdout.write((process.env.PROBE_PRINT || "new-value-" + process.pid) + "\\n");
`;

interface Probe {
  fds: Record<string, string>;
  shared: string[];
  paths: string[];
  env: Record<string, string>;
  argv: string[];
  cwd: string;
  stdin: string;
}

const probeFile = join(base, "probe.cjs");
writeFileSync(probeFile, PROBE, { mode: 0o644 });

function probes(dir: string, label: string): Probe[] {
  return readdirSync(dir)
    .filter((n) => n.startsWith(`${label}-`) && n.endsWith(".json"))
    .map((n) => JSON.parse(readFileSync(join(dir, n), "utf8")) as Probe);
}

async function until(what: string, f: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Every canary but those in `except`, and a check that none is in `text`. */
function assertNoCanary(text: string, what: string, except: string[] = []): void {
  for (const [k, v] of Object.entries(CANARY)) {
    if (except.includes(v)) continue;
    assert.ok(!text.includes(v), `${what} holds the ${k} canary`);
  }
}

/** The descriptor the daemon inherits open, without close-on-exec, from whoever started it. */
const INHERITED_FD = 40;

describe("lessor serve's children: rotation hooks and the key command", () => {
  let home = "";
  let socket = "";
  let proc: ReturnType<typeof spawn> | undefined;
  let exited: Promise<unknown> = Promise.resolve();
  let log = "";
  const out = join(base, "probes");
  const canaryFile = join(base, "inherited.txt");

  before(async () => {
    mkdirSync(out, { mode: 0o755 });
    writeFileSync(canaryFile, CANARY.file, { mode: 0o600 });
    home = await makeHome({
      config: [
        '[keys]\ncommand = ' + JSON.stringify([process.execPath, probeFile, out, "keycmd"]),
        '[audit]\njsonl = "audit.jsonl"',
        `[server]\ntcp = "127.0.0.1:${20000 + Math.floor(Math.random() * 20000)}"`,
        '[[rotate]]\nsecret = "db"\ncommand = ' + JSON.stringify([process.execPath, probeFile, out, "hook"]) + '\nstdin = "current"',
        '[[rotate]]\nsecret = "sched"\ncommand = ' + JSON.stringify([process.execPath, probeFile, out, "sched"]) + '\nevery = "1s"',
      ].join("\n"),
    });
    // The key the home was made with, printed from here on by the key command.
    const key = (JSON.parse(readFileSync(join(home, "master.key"), "utf8")) as { keys: string[] }).keys[0]!;
    const v = await openVault({ home, env: { LESSOR_HOME: home, LESSOR_MASTER_KEY: key } });
    try {
      await v.admin().storeSecret({ name: "db", value: CANARY.db });
      await v.admin().storeSecret({ name: "other", value: CANARY.other });
      await v.admin().storeSecret({ name: "sched", value: `sched-${tag}` });
    } finally {
      await v.close();
    }
    unlinkSync(join(home, "master.key"));
    const tokenFile = join(base, "token");
    writeFileSync(tokenFile, CANARY.token, { mode: 0o600 });
    const fd = openSync(canaryFile, "r");
    const stdio: ("ignore" | "pipe" | number)[] = ["ignore", "ignore", "pipe"];
    while (stdio.length < INHERITED_FD) stdio.push("ignore");
    stdio.push(fd); // the child's fd 40: dup2-ed, so not close-on-exec there
    proc = spawn(process.execPath, ["--import", "tsx", CLI, "--home", home, "serve"], {
      stdio,
      env: {
        PATH: process.env["PATH"] ?? "/usr/bin:/bin",
        HOME: process.env["HOME"] ?? "/root",
        PROBE_PRINT: key,
        LESSOR_PASSPHRASE: CANARY.passphrase,
        PGPASSWORD: CANARY.pg,
        LESSOR_TOKEN: CANARY.token,
        LESSOR_TOKEN_FILE: tokenFile,
        AWS_SECRET_ACCESS_KEY: CANARY.owner,
      },
    });
    closeSync(fd);
    exited = new Promise((r) => proc!.on("exit", r));
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: proc!.stderr! }).on("line", (line) => {
        log += `${line}\n`;
        try {
          const o = JSON.parse(line) as { msg?: string; socket?: string };
          if (o.msg === "lessor daemon ready") {
            socket = o.socket!;
            resolve();
          }
        } catch {
          // not JSON
        }
      });
      void exited.then(() => reject(new Error(`lessor serve exited: ${log}`)));
    });
  });

  after(async () => {
    proc?.kill("SIGTERM");
    await exited;
  });

  test(
    "no rotation hook (by request or on schedule) nor the key command holds a descriptor of the daemon: not its listening sockets, database, audit file, nor one the daemon inherited without close-on-exec (read as a file there, it would hand the hook what the daemon's parent had open)",
    { timeout: 60_000 },
    async () => {
      const admin = await LessorClient.connect({ socketPath: socket });
      try {
        await admin.api.rotate_secret_hook({ name: "db" });
      } finally {
        admin.close();
      }
      await until("a scheduled rotation", () => probes(out, "sched").length > 0).catch((e: Error) => { throw new Error(`${e.message}: ${log}`); });
      const all: [string, Probe][] = [
        ...probes(out, "keycmd").map((p) => ["the key command", p] as [string, Probe]),
        ...probes(out, "hook").map((p) => ["the rotation hook run by request", p] as [string, Probe]),
        ...probes(out, "sched").map((p) => ["the rotation hook run on schedule", p] as [string, Probe]),
      ];
      assert.ok(probes(out, "keycmd").length >= 1 && probes(out, "hook").length >= 1, "each child ran");
      // The probe saw the daemon's descriptors (so an empty `shared` means something).
      const daemonFds = readdirSync(`/proc/${proc!.pid}/fd`).length;
      assert.ok(daemonFds > 10, "the daemon's descriptors are readable");
      for (const [who, p] of all) {
        assert.deepEqual(p.shared, [], `${who} holds descriptors its parent, the daemon, holds`);
        assert.deepEqual(p.paths, [], `${who} holds descriptors of files`);
        const held = Object.values(p.fds).join(" ");
        assert.ok(!held.includes(home), `${who} holds a descriptor of the home: ${held}`);
        assert.ok(!held.includes(canaryFile), `${who} holds the inherited descriptor: ${held}`);
      }
    },
  );

  test(
    "a rotation hook gets only PATH, HOME, LANG, LC_ALL and TZ (no master key, passphrase, token or token file, database password, nor the owner's other credentials), runs in the home, and sees its own current value on stdin only, never another secret's",
    { timeout: 60_000 },
    async () => {
      await until("the hooks ran", () => probes(out, "hook").length > 0 && probes(out, "sched").length > 0);
      const hook = probes(out, "hook")[0]!;
      assert.equal(hook.stdin, CANARY.db, "the hook reads the current value on stdin");
      for (const p of [...probes(out, "hook"), ...probes(out, "sched")]) {
        for (const k of Object.keys(p.env)) assert.ok((HOOK_ENV_KEEP as readonly string[]).includes(k), `the hook got $${k}`);
        assertNoCanary(JSON.stringify({ env: p.env, argv: p.argv, fds: p.fds }), "the hook's environment, arguments or descriptors");
        assertNoCanary(p.stdin, "the hook's stdin", [CANARY.db]);
        assert.equal(p.cwd, home, "the hook runs in the lessor home");
      }
      for (const p of probes(out, "sched")) assert.equal(p.stdin, "", "stdin = \"none\": empty");
      assertNoCanary(log, "the daemon's log");
      if (process.env["CHILDFDS_DEBUG"]) console.error(log);
    },
  );

  test(
    "the key command gets none of lessor's own secrets (master keys, passphrase, token, database password) and no stdin",
    { timeout: 30_000 },
    async () => {
      const ps = probes(out, "keycmd");
      assert.ok(ps.length >= 1);
      for (const p of ps) {
        for (const k of LESSOR_SECRET_VARIABLES) assert.equal(p.env[k], undefined, `the key command got $${k}`);
        assertNoCanary(JSON.stringify({ env: p.env, argv: p.argv, stdin: p.stdin }), "the key command's environment, arguments or stdin", [CANARY.owner]);
        assert.equal(p.stdin, "");
      }
    },
  );

  test(
    "lessor run --no-sandbox: the command gets none of lessor's own LESSOR_* secrets in its environment (the database's URL included, which would hand it the store where leases and revocations are not sealed), and the warning names each one set",
    { timeout: 60_000 },
    async () => {
      const runOut = join(base, "run");
      mkdirSync(runOut, { mode: 0o755 });
      const secrets: Record<string, string> = {
        LESSOR_PASSPHRASE: CANARY.passphrase,
        PGPASSWORD: CANARY.pg,
        LESSOR_MIGRATE_TO: CANARY.dburl,
        LESSOR_TOKEN_FILE: join(base, "token"),
      };
      const r = await runCliWithEnv(["run", "--agent", "a", "--no-sandbox", "--", process.execPath, probeFile, runOut, "run"], {
        env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: base, LESSOR_HOME: home, LESSOR_SOCKET: socket, ...secrets },
        cwd: base,
      });
      assert.equal(r.code, 0, r.stderr);
      const [p] = probes(runOut, "run");
      assert.ok(p, "the command ran");
      for (const k of [...LESSOR_SECRET_VARIABLES.filter((k) => k.startsWith("LESSOR_")), "LESSOR_TOKEN_FILE"]) assert.equal(p.env[k], undefined, `the command got $${k}`);
      assertNoCanary(JSON.stringify(p.env), "the command's environment", [CANARY.pg]);
      for (const k of ["LESSOR_PASSPHRASE", "LESSOR_MIGRATE_TO"]) assert.match(r.stderr, new RegExp(`${k}[^\\n]*/environ`), `the warning names $${k}`);
      // libpq's own variable: the owner's, passed unconfined as the owner's other credentials are.
      assert.equal(p.env["PGPASSWORD"], CANARY.pg);
      assert.doesNotMatch(r.stderr, /PGPASSWORD/, "the warning does not claim PGPASSWORD is withheld");
    },
  );
});

test(
  "the OS keychain helper (a node process loading the keychain package) gets none of lessor's own secrets in its environment (passphrase, token, database password): it needs only the session bus",
  { timeout: 30_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "lessor-atk-childfds-kc-"));
    try {
      const seen = join(dir, "env.json");
      // A stand-in for the keychain package: records the helper's environment, then fails.
      const fake = join(dir, "fake-keyring.cjs");
      writeFileSync(fake, `exports.Entry = class { constructor() { require("fs").writeFileSync(${JSON.stringify(seen)}, JSON.stringify(process.env)); } getPassword() { throw new Error("locked"); } };\n`);
      const marker = join(dir, "keychain.json");
      writeFileSync(marker, JSON.stringify({ lessor_keychain: 1, service: "lessor", account: tag }) + "\n", { mode: 0o600 });
      const env: NodeJS.ProcessEnv = {
        PATH: process.env["PATH"],
        DBUS_SESSION_BUS_ADDRESS: "unix:path=/nonexistent",
        LESSOR_PASSPHRASE: CANARY.passphrase,
        LESSOR_TOKEN: CANARY.token,
        PGPASSWORD: CANARY.pg,
        LESSOR_DATABASE_URL: CANARY.dburl,
        LESSOR_MIGRATE_TO: CANARY.dburl,
      };
      const src = keychainKeySource(marker, { packageName: fake, env });
      await assert.rejects(src.load(), (e: Error & { code?: string }) => e.code === "key_unavailable");
      const got = JSON.parse(readFileSync(seen, "utf8")) as Record<string, string>;
      assert.equal(got["DBUS_SESSION_BUS_ADDRESS"], "unix:path=/nonexistent", "the helper finds the session bus");
      for (const k of LESSOR_SECRET_VARIABLES) assert.equal(got[k], undefined, `the keychain helper got $${k}`);
      assertNoCanary(JSON.stringify(got), "the keychain helper's environment");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
