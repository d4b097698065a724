/**
 * `lessor run`'s sandbox (src/sandbox/, docs/sandbox.md), attacked from inside: the built CLI runs
 * test/fixtures/sandbox-probe.mjs in a real bubblewrap sandbox against a real daemon, in a fake
 * owner's home laid out as a newcomer's is (~/.lessor, ~/.ssh, ~/.aws, … and ~/project). Every attack
 * must fail in the sandbox; the same probe run with --no-sandbox shows that each one works
 * unconfined, so a failure inside proves the sandbox, not a broken probe. Nothing here sends a packet
 * off the machine: the TCP and DNS targets are listeners the test opens on loopback, and the system
 * resolver is only tried inside the sandbox, whose network namespace has no route out.
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createSocket, type Socket as UdpSocket } from "node:dgram";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { BIN, runCli, seedHome } from "./cli-harness.js";
import { startServe, type RunningDaemon } from "./daemon-harness.js";
import { initHome } from "../src/config/open-vault.js";
import { planLayout } from "../src/sandbox/layout.js";
import { parsePaths, pathsNamedBy, PATH_VARIABLES, withheldReason } from "../src/sandbox/env.js";
import { encodeArgs } from "../src/sandbox/bwrap-args.js";
import { expandStore } from "../src/sandbox/hidden.js";
import { findBwrap, probeSandbox } from "../src/sandbox/detect.js";

const NODE = process.execPath;
const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"]).status === 0;

const root = mkdtempSync(join(tmpdir(), "lessor-sandbox-test-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const PROJECT = join(HOME, "project");
const LESSOR_HOME = join(HOME, ".lessor");
/** A host directory the sandbox does not show. */
const OUTSIDE = join(root, "outside");

const canary = (what: string): string => `canary-${what}-${randomBytes(8).toString("hex")}`;
const MASTER_KEY_CANARY = randomBytes(32).toString("hex");
const CANARIES = {
  masterKey: MASTER_KEY_CANARY,
  passphrase: canary("passphrase"),
  envToken: canary("env-token"),
  ssh: canary("ssh"),
  aws: canary("aws"),
  gh: canary("gh"),
  netrc: canary("netrc"),
  npmrc: canary("npmrc"),
  docker: canary("docker"),
};
const GRANTED = `granted-${randomBytes(12).toString("hex")}`;

/** The owner's credential stores in the fake home, each holding its canary. */
const STORES: Record<string, { path: string; canary: string }> = {
  ssh: { path: join(HOME, ".ssh/id_ed25519"), canary: CANARIES.ssh },
  aws: { path: join(HOME, ".aws/credentials"), canary: CANARIES.aws },
  gh: { path: join(HOME, ".config/gh/hosts.yml"), canary: CANARIES.gh },
  netrc: { path: join(HOME, ".netrc"), canary: CANARIES.netrc },
  npmrc: { path: join(HOME, ".npmrc"), canary: CANARIES.npmrc },
  docker: { path: join(HOME, ".docker/config.json"), canary: CANARIES.docker },
};

const POLICY = `
[[rule]]
name = "probers"
effect = "allow"
agents = ["prober*"]
secrets = ["granted"]
any_domain = true
`;

interface Probe {
  ok: boolean;
  detail: string;
}
interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  probes: Record<string, Probe>;
}

let daemon: RunningDaemon;
let tcp: Server;
let tcpPort: number;
let tcpConnections = 0;
let dns: UdpSocket;
let dnsPort: number;
let dnsQueries = 0;

/** A DNS server on loopback that answers every A query with 127.0.0.7. */
function startDns(): Promise<UdpSocket> {
  const s = createSocket("udp4");
  s.on("message", (q, from) => {
    dnsQueries++;
    let end = 12;
    while (end < q.length && q[end] !== 0) end += q[end]! + 1;
    const question = q.subarray(12, end + 5);
    const header = Buffer.from([q[0]!, q[1]!, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    const answer = Buffer.from([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 7]);
    s.send(Buffer.concat([header, question, answer]), from.port, from.address);
  });
  return new Promise((resolve) => s.bind(0, "127.0.0.1", () => resolve(s)));
}

/** The environment lessor run starts with: the owner's, canaries included. */
function ownerEnv(extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME,
    LESSOR_HOME,
    NO_COLOR: "1",
    LESSOR_MASTER_KEY: CANARIES.masterKey,
    LESSOR_PASSPHRASE: CANARIES.passphrase,
    DEPLOY_TOKEN: CANARIES.envToken,
    GRANTED: "$S:granted",
    ...extra,
  };
}

/**
 * Runs the probe under `lessor run` from `cwd` (a shell exports lessor run's own pid, then execs it,
 * so the probe knows which /proc entry is its parent's).
 */
function runProbe(opts: { sandbox: boolean; cwd: string; agent: string; writes: Record<string, string>; env?: Record<string, string>; extra?: string[]; lookup?: boolean }): Promise<RunResult> {
  const spec = {
    canaries: Object.values(CANARIES),
    read: {
      "master-key": join(LESSOR_HOME, "master.key"),
      "lessor-db": join(LESSOR_HOME, "lessor.db"),
      ...Object.fromEntries(Object.entries(STORES).map(([k, v]) => [k, v.path])),
      // The same key through a symlink in the project, and through `..` (the kernel resolves both, not the probe).
      "ssh-via-symlink": join(PROJECT, "ssh-link", "id_ed25519"),
      "ssh-via-dotdot": `${PROJECT}/../.ssh/id_ed25519`,
    },
    list: { "lessor-home": LESSOR_HOME, home: HOME, outside: OUTSIDE },
    socket: daemon.socket,
    tcpPort,
    dnsPort,
    writes: opts.writes,
    lookup: opts.lookup ?? opts.sandbox,
    scanAll: opts.sandbox,
  };
  // The spec holds the canaries: it goes in a file, since the command line shows in /proc/PID/cmdline.
  const specFile = join(PROJECT, `spec-${opts.agent}.json`);
  writeFileSync(specFile, JSON.stringify(spec));
  const args = ["run", "--agent", opts.agent, ...(opts.sandbox ? [] : ["--no-sandbox"]), ...(opts.extra ?? []), "--", NODE, join(PROJECT, "probe.mjs"), specFile];
  return new Promise((resolve, reject) => {
    const child = spawn("/bin/sh", ["-c", 'PROBE_LESSOR_PID=$$; export PROBE_LESSOR_PID; exec "$@"', "sh", NODE, "--", BIN, ...args], {
      cwd: opts.cwd,
      env: opts.env ?? ownerEnv(),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      let probes: Record<string, Probe> = {};
      try {
        probes = JSON.parse(stdout.trim().split("\n").pop() ?? "{}") as Record<string, Probe>;
      } catch {
        // reported by the caller's assertions
      }
      resolve({ code, stdout, stderr, probes });
    });
  });
}

async function leaseStates(agent: string): Promise<string[]> {
  const r = await runCli(["leases", "--agent", agent, "--json"], { home: LESSOR_HOME, env: { HOME } });
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { state: string }[]).map((l) => l.state);
}

const sha256 = (s: string): string => createHash("sha256").update(s).digest("hex");
const bashrc = "# the owner's .bashrc\n";

describe("lessor run's sandbox, attacked from inside", { skip: HAVE_BWRAP ? false : "bwrap is not installed or user namespaces are off (apt-get install bubblewrap)" }, () => {
  let inside: RunResult;
  let unconfined: RunResult;

  before(async () => {
    mkdirSync(PROJECT, { recursive: true });
    mkdirSync(OUTSIDE, { recursive: true });
    for (const s of Object.values(STORES)) {
      mkdirSync(join(s.path, ".."), { recursive: true });
      writeFileSync(s.path, `${s.canary}\n`, { mode: 0o600 });
    }
    writeFileSync(join(HOME, ".bashrc"), bashrc);
    copyFileSync(fileURLToPath(new URL("./fixtures/sandbox-probe.mjs", import.meta.url)), join(PROJECT, "probe.mjs"));
    writeFileSync(join(PROJECT, "README"), "the project\n");
    symlinkSync(join(HOME, ".ssh"), join(PROJECT, "ssh-link"));
    await initHome({ home: LESSOR_HOME, env: { LESSOR_HOME } });
    await seedHome(LESSOR_HOME, POLICY, [{ name: "granted", value: GRANTED }]);
    daemon = await startServe(LESSOR_HOME);
    tcp = createServer((c) => {
      tcpConnections++;
      c.destroy();
    });
    await new Promise<void>((r) => tcp.listen(0, "127.0.0.1", r));
    tcpPort = (tcp.address() as { port: number }).port;
    dns = await startDns();
    dnsPort = dns.address().port;

    inside = await runProbe({
      sandbox: true,
      cwd: PROJECT,
      agent: "prober-inside",
      writes: {
        project: join(PROJECT, "written-inside.txt"),
        outside: join(OUTSIDE, "written-inside.txt"),
        usr: "/usr/lessor-sandbox-probe",
        etc: "/etc/lessor-sandbox-probe",
        root: "/lessor-sandbox-probe",
        bashrc: join(HOME, ".bashrc"),
        "lessor-home": join(LESSOR_HOME, "planted"),
      },
    });
    unconfined = await runProbe({
      sandbox: false,
      cwd: PROJECT,
      agent: "prober-unconfined",
      writes: { project: join(PROJECT, "written-unconfined.txt"), outside: join(OUTSIDE, "written-unconfined.txt") },
    });
  });
  after(async () => {
    await daemon?.stop();
    tcp?.close();
    dns?.close();
  });

  test("both runs worked: inside, the command holds a placeholder for the granted secret (the proxy adds the value), outside the value; its leases are revoked", async () => {
    assert.equal(inside.code, 0, inside.stderr);
    assert.equal(unconfined.code, 0, unconfined.stderr);
    assert.equal(inside.probes["granted"]?.ok, true);
    assert.notEqual(inside.probes["granted"]?.detail, sha256(GRANTED), "the sandboxed command must not hold the value");
    assert.deepEqual(unconfined.probes["granted"], { ok: true, detail: sha256(GRANTED) });
    assert.deepEqual(await leaseStates("prober-inside"), ["revoked"]);
  });

  test("cannot read the lessor home or the key file (unconfined it can)", () => {
    for (const k of ["read:master-key", "read:lessor-db", "list:lessor-home"]) {
      assert.equal(inside.probes[k]?.ok, false, `${k}: ${JSON.stringify(inside.probes[k])}`);
      assert.equal(unconfined.probes[k]?.ok, true, `${k} works unconfined`);
    }
  });

  test("cannot see the parent: its pid is not listed, its /proc/PID/environ unreadable; no canary in any /proc file or the command's env", () => {
    assert.equal(inside.probes["parent-visible"]?.ok, false);
    assert.equal(inside.probes["parent-environ"]?.ok, false, JSON.stringify(inside.probes["parent-environ"]));
    assert.deepEqual(inside.probes["canaries"], { ok: false, detail: "" });
    const pids = inside.probes["pids"]!.detail.split(",").map(Number);
    assert.ok(pids.length <= 3 && pids.every((p) => p < 10), `only the sandbox's own processes: ${pids.join(",")}`);
    const names = inside.probes["env-names"]!.detail.split(",");
    for (const n of ["LESSOR_MASTER_KEY", "LESSOR_PASSPHRASE", "LESSOR_HOME", "DEPLOY_TOKEN"]) assert.ok(!names.includes(n), n);
    // Unconfined, lessor run's environment (with the master key) is one read away.
    assert.deepEqual(unconfined.probes["parent-environ"], { ok: true, detail: "holds a canary" });
    assert.equal(unconfined.probes["canaries"]?.ok, true);
    assert.ok(unconfined.probes["env-names"]!.detail.split(",").includes("DEPLOY_TOKEN"));
  });

  test("a credential from the owner's environment is withheld, and lessor says so once", () => {
    const lines = inside.stderr.trim().split("\n");
    assert.equal(lines.length, 1, inside.stderr);
    assert.match(lines[0]!, /^lessor: not passed to the sandboxed command \(credentials in your environment\): DEPLOY_TOKEN; store them in the vault/);
  });

  test("cannot connect to the daemon's Unix socket (unconfined it can)", () => {
    assert.equal(inside.probes["daemon-socket"]?.ok, false);
    assert.deepEqual(unconfined.probes["daemon-socket"], { ok: true, detail: "connected" });
  });

  test("no network: a raw TCP connect to a host loopback listener and DNS lookups fail (unconfined they work)", () => {
    assert.equal(inside.probes["tcp-loopback"]?.ok, false, JSON.stringify(inside.probes["tcp-loopback"]));
    assert.equal(inside.probes["dns-loopback"]?.ok, false, JSON.stringify(inside.probes["dns-loopback"]));
    assert.equal(inside.probes["dns-system"]?.ok, false, JSON.stringify(inside.probes["dns-system"]));
    assert.deepEqual(unconfined.probes["tcp-loopback"], { ok: true, detail: "connected" });
    assert.deepEqual(unconfined.probes["dns-loopback"], { ok: true, detail: "127.0.0.7" });
    // Exactly the unconfined run's connection and query reached the listeners.
    assert.equal(tcpConnections, 1);
    assert.equal(dnsQueries, 1);
  });

  test("--network host: the host's network is shared (a loopback listener answers) and said once; files, sockets and processes stay confined", async () => {
    const before = tcpConnections;
    // lookup: false: with the host's network, a system DNS lookup would leave the machine.
    const shared = await runProbe({ sandbox: true, cwd: PROJECT, agent: "prober-hostnet", writes: {}, extra: ["--network", "host"], lookup: false });
    assert.equal(shared.code, 0, shared.stderr);
    assert.deepEqual(shared.probes["tcp-loopback"], { ok: true, detail: "connected" });
    assert.equal(tcpConnections, before + 1);
    const warnings = shared.stderr.split("\n").filter((l) => l.startsWith("lessor: warning: network host"));
    assert.equal(warnings.length, 1, shared.stderr);
    assert.match(warnings[0]!, /any host \(not only the lease's domains\)/);
    for (const k of ["read:master-key", "read:lessor-db", "list:lessor-home", "read:ssh"]) assert.equal(shared.probes[k]?.ok, false, `${k}: ${JSON.stringify(shared.probes[k])}`);
    assert.equal(shared.probes["daemon-socket"]?.ok, false, "the daemon's socket file is still not shown");
    assert.equal(shared.probes["parent-environ"]?.ok, false);
    assert.deepEqual(shared.probes["canaries"], { ok: false, detail: "" });
    // A network setting that is not one is refused before anything runs.
    const bad = await runProbe({ sandbox: true, cwd: PROJECT, agent: "prober-badnet", writes: {}, extra: ["--network", "bridge"], lookup: false });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /--network: expected one of "proxy", "none", "host", got "bridge"/);
  });

  test("~/.ssh, ~/.aws, ~/.config/gh, ~/.netrc, ~/.npmrc, ~/.docker/config.json are not visible (unconfined they are)", () => {
    for (const [k, s] of Object.entries(STORES)) {
      assert.equal(inside.probes[`read:${k}`]?.ok, false, `${k}: ${JSON.stringify(inside.probes[`read:${k}`])}`);
      assert.ok(unconfined.probes[`read:${k}`]?.detail.includes(s.canary), `${k} is readable unconfined`);
    }
    for (const k of ["read:ssh-via-symlink", "read:ssh-via-dotdot"]) {
      assert.equal(inside.probes[k]?.ok, false, `${k}: ${JSON.stringify(inside.probes[k])}`);
      assert.ok(unconfined.probes[k]?.detail.includes(CANARIES.ssh), `${k} reaches ~/.ssh unconfined`);
    }
    assert.deepEqual(inside.probes["list:home"], { ok: true, detail: "project" }, "the home shows the project and nothing else");
  });

  test("the project directory is writable; the system, the root, the home and other host paths are not", () => {
    assert.equal(inside.probes["write:project"]?.ok, true);
    assert.equal(readFileSync(join(PROJECT, "written-inside.txt"), "utf8"), "written by the probe\n");
    for (const k of ["write:outside", "write:usr", "write:etc", "write:root", "write:lessor-home"]) assert.equal(inside.probes[k]?.ok, false, `${k}: ${JSON.stringify(inside.probes[k])}`);
    assert.ok(!existsSync(join(OUTSIDE, "written-inside.txt")));
    assert.ok(!existsSync("/usr/lessor-sandbox-probe") && !existsSync("/etc/lessor-sandbox-probe") && !existsSync("/lessor-sandbox-probe"));
    assert.ok(!existsSync(join(LESSOR_HOME, "planted")));
    // The home is an empty scratch directory: a write there lands nowhere.
    assert.equal(readFileSync(join(HOME, ".bashrc"), "utf8"), bashrc);
    assert.equal(unconfined.probes["write:outside"]?.ok, true);
    assert.ok(existsSync(join(OUTSIDE, "written-unconfined.txt")));
  });

  test("--no-sandbox prints one warning line naming what the agent can reach", () => {
    const lines = unconfined.stderr.trim().split("\n");
    assert.equal(lines.length, 1, unconfined.stderr);
    assert.match(lines[0]!, /^lessor: warning: --no-sandbox: the agent runs unconfined, as you/);
    assert.ok(lines[0]!.includes(join(LESSOR_HOME, "master.key")) && lines[0]!.includes(daemon.socket), lines[0]);
  });

  test("run from the home itself, read-only: the credential stores and ~/.lessor are covered, the rest shows", async () => {
    writeFileSync(join(LESSOR_HOME, "lessor.toml"), '[run]\nproject = "read-only"\n');
    try {
      const r = await runProbe({ sandbox: true, cwd: HOME, agent: "prober-home", writes: { home: join(HOME, "new-file"), bashrc: join(HOME, ".bashrc") } });
      assert.equal(r.code, 0, r.stderr);
      for (const [k, s] of Object.entries(STORES)) assert.ok(!r.probes[`read:${k}`]?.detail.includes(s.canary), `${k}: ${JSON.stringify(r.probes[`read:${k}`])}`);
      assert.equal(r.probes["read:master-key"]?.ok, false);
      assert.equal(r.probes["daemon-socket"]?.ok, false);
      assert.deepEqual(r.probes["list:lessor-home"], { ok: true, detail: "(empty)" }, "covered by an empty directory");
      assert.deepEqual(r.probes["canaries"], { ok: false, detail: "" });
      assert.equal(r.probes["write:home"]?.ok, false);
      assert.equal(r.probes["write:bashrc"]?.ok, false);
      assert.equal(readFileSync(join(HOME, ".bashrc"), "utf8"), bashrc);
    } finally {
      writeFileSync(join(LESSOR_HOME, "lessor.toml"), "");
    }
  });

  test("refused before any lease: a writable home, a project inside the lessor home, a command the sandbox does not show", async () => {
    const run = (cwd: string, agent: string, cmd: string[]) =>
      new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const c = spawn(NODE, ["--", BIN, "run", "--agent", agent, "--", ...cmd], { cwd, env: ownerEnv(), stdio: ["ignore", "ignore", "pipe"] });
        let stderr = "";
        c.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
        c.on("close", (code) => resolve({ code, stderr }));
      });
    const home = await run(HOME, "prober-refused", [NODE, "-e", "0"]);
    assert.equal(home.code, 2);
    assert.match(home.stderr, /would be writable and holds your home directory .*~\/\.bashrc/);
    const inVault = await run(LESSOR_HOME, "prober-refused", [NODE, "-e", "0"]);
    assert.equal(inVault.code, 2);
    assert.match(inVault.stderr, /the project directory .* is the lessor home/);
    mkdirSync(join(HOME, "bin"), { recursive: true });
    writeFileSync(join(HOME, "bin/agent"), "#!/bin/sh\nexit 0\n");
    chmodSync(join(HOME, "bin/agent"), 0o755);
    const hidden = await run(PROJECT, "prober-refused", [join(HOME, "bin/agent")]);
    assert.equal(hidden.code, 2);
    assert.match(hidden.stderr, /which the sandbox does not show the agent .*\[run\] read/);
    assert.deepEqual(await leaseStates("prober-refused"), [], "no lease was taken");
  });
});

describe("lessor run without a working bwrap", () => {
  let home: string;
  before(async () => {
    home = join(root, "nobwrap-home");
    await initHome({ home, env: { LESSOR_HOME: home } });
    await seedHome(home, POLICY, [{ name: "granted", value: GRANTED }]);
  });

  test("bwrap not on PATH: refused, naming the package; nothing leased; --no-sandbox runs after its one warning", async () => {
    const env = { PATH: "/nonexistent", HOME, GRANTED: "$S:granted" };
    const r = await runCli(["run", "--agent", "prober-nobwrap", "--", NODE, "-e", "0"], { home, env });
    assert.equal(r.code, 5, r.stderr);
    assert.match(r.stderr, /^lessor: lessor run confines the agent with bubblewrap, and bwrap is not installed \(or not on PATH\): install the bubblewrap package \(apt-get install bubblewrap;.*--no-sandbox/);
    assert.equal(r.stderr.trim().split("\n").length, 1);
    const leases = await runCli(["leases", "--agent", "prober-nobwrap", "--json"], { home, env: { HOME } });
    assert.deepEqual(JSON.parse(leases.stdout), []);
    const ok = await runCli(["run", "--agent", "prober-nobwrap", "--no-sandbox", "--", NODE, "-e", "process.exit(process.env.GRANTED.length)"], { home, env });
    assert.equal(ok.code, GRANTED.length, ok.stderr);
    assert.equal(ok.stderr.trim().split("\n").length, 1);
    assert.match(ok.stderr, /^lessor: warning: --no-sandbox: /);
  });

  test("bwrap that cannot make user namespaces: refused, naming the sysctl; the leases taken meanwhile are revoked", async () => {
    const fake = join(root, "fake-bwrap");
    mkdirSync(fake, { recursive: true });
    writeFileSync(
      join(fake, "bwrap"),
      "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely because the kernel does not allow non-privileged user namespaces.' >&2\nexit 1\n",
    );
    chmodSync(join(fake, "bwrap"), 0o755);
    const r = await runCli(["run", "--agent", "prober-nouserns", "--", NODE, "-e", "0"], { home, env: { PATH: `${fake}:/usr/bin:/bin`, HOME, GRANTED: "$S:granted" } });
    assert.equal(r.code, 5, r.stderr);
    assert.match(r.stderr, /bwrap cannot create its namespaces here \(bwrap: No permissions to creating new namespace.*\): unprivileged user namespaces must be allowed.*sysctl.*--no-sandbox/);
    const leases = await runCli(["leases", "--agent", "prober-nouserns", "--json"], { home, env: { HOME } });
    assert.ok((JSON.parse(leases.stdout) as { state: string }[]).every((l) => l.state === "revoked"));
  });
});

describe("sandbox detection (unit)", () => {
  test("a bwrap too old for the sandbox's options is named as such", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lessor-oldbwrap-"));
    try {
      writeFileSync(join(dir, "bwrap"), "#!/bin/sh\necho \"bwrap: Unknown option $4\" >&2\nexit 1\n");
      chmodSync(join(dir, "bwrap"), 0o755);
      await assert.rejects(probeSandbox(join(dir, "bwrap")), /is too old for lessor run's sandbox \(bwrap: Unknown option --clearenv\): install bubblewrap 0\.5 or later/);
      if (HAVE_BWRAP) assert.deepEqual(await probeSandbox(findBwrap(process.env.PATH)!), { disableUserns: true });
      assert.equal(findBwrap("/nonexistent:relative/dir"), null);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("sandbox parts (unit)", () => {
  test("lessor's own code includes every package it loads from node_modules: one whose exports leave out its package.json, one named like a Node builtin", async () => {
    const { lessorCodePaths } = await import("../src/cli/run/sandbox.js");
    const modules = join(dirname(fileURLToPath(import.meta.url)), "..", "node_modules");
    const paths = new Set(lessorCodePaths());
    // pino loads safe-stable-stringify, whose package.json "exports" does not list ./package.json: a
    // lookup through require.resolve("safe-stable-stringify/package.json") fails, and the package went
    // unchecked (an agent could have rewritten it in a writable copy).
    assert.ok(JSON.stringify(JSON.parse(readFileSync(join(modules, "safe-stable-stringify", "package.json"), "utf8")).exports).includes("require"), "the package still has exports (else this checks nothing)");
    for (const name of ["better-sqlite3", "pino", "safe-stable-stringify", "sonic-boom", "bindings", "buffer"])
      assert.ok(paths.has(join(modules, name)), `${name} is among lessor's code paths`);
  });

  test("layout: the home is scratch, the project bound at its real path, protected paths inside it covered", () => {
    const dir = mkdtempSync(join(tmpdir(), "lessor-layout-"));
    try {
      const home = join(dir, "h");
      mkdirSync(join(home, "p/.git/hooks"), { recursive: true });
      writeFileSync(join(home, "p/.git/config"), "");
      mkdirSync(join(home, "p/secrets/inner"), { recursive: true });
      writeFileSync(join(home, "p/key"), "k");
      const l = planLayout({
        home,
        project: join(home, "p"),
        projectWritable: true,
        read: [],
        write: [join(dir, "missing")],
        protect: [
          { path: join(home, "p/secrets"), what: "a store" },
          { path: join(home, "p/key"), what: "a key" },
          { path: join(home, "p/secrets/inner"), what: "inside a store" },
          { path: join(home, ".ssh"), what: "ssh" },
        ],
      });
      assert.ok(l.mounts.some((m) => m.kind === "scratch" && m.path === home));
      assert.ok(l.mounts.some((m) => m.kind === "bind" && m.path === join(home, "p") && m.writable));
      assert.ok(l.mounts.findIndex((m) => m.path === home) < l.mounts.findIndex((m) => m.path === join(home, "p")), "parents first");
      assert.deepEqual(
        l.masks.filter((m) => m.path.startsWith(dir)).map((m) => [m.path, m.dir]),
        [
          [join(home, "p/secrets"), true],
          [join(home, "p/key"), false],
        ],
        "masks inside a covered directory are dropped (bwrap could not make their mount points)",
      );
      assert.deepEqual(l.readOnly, [join(home, "p/.git/hooks"), join(home, "p/.git/config")]);
      assert.equal(l.cwd, join(home, "p"));
      assert.throws(() => planLayout({ home, project: "/", projectWritable: false, read: [], write: [], protect: [] }), /root directory/);
      assert.throws(() => planLayout({ home, project: "/tmp", projectWritable: false, read: [], write: [], protect: [] }), /holds \/tmp, where other programs keep their sockets/);
      assert.throws(() => planLayout({ home, project: join(home, "p"), projectWritable: true, read: ["/run"], write: [], protect: [] }), /holds \/run/);
      assert.throws(() => planLayout({ home, project: join(home, "p/secrets/inner"), projectWritable: true, read: [], write: [], protect: [{ path: join(home, "p/secrets"), what: "a store" }] }), /is inside a store/);
      assert.throws(() => planLayout({ home, project: join(home, "p"), projectWritable: false, read: [], write: [dir], protect: [] }), /holds your home directory/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("env: lessor's variables, session sockets and credential names are withheld; ordinary ones pass", () => {
    for (const n of ["LESSOR_MASTER_KEY", "LESSOR_SOCKET", "lessor_token"]) assert.equal(withheldReason(n), "lessor", n);
    for (const n of ["SSH_AUTH_SOCK", "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR"]) assert.equal(withheldReason(n), "session", n);
    for (const n of ["GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY", "DB_PASSWORD", "TOKEN", "NPM_TOKEN"]) assert.equal(withheldReason(n), "credential", n);
    for (const n of ["PATH", "HOME", "LANG", "TERM", "TOKENIZERS_PARALLELISM", "NODE_OPTIONS", "EDITOR"]) assert.equal(withheldReason(n), null, n);
  });

  test("env: a credential word anywhere in a name, as a whole word, and a value shaped like a known token are withheld; words inside others and look-alike values pass", () => {
    const named = ["GITHUB_PAT", "TF_TOKEN_app_terraform_io", "CI_JOB_JWT", "CI_JOB_JWT_V2", "AWS_ACCESS_KEY_ID", "SECRET_KEY_BASE", "TWINE_PASSWORD", "GPG_PASSPHRASE", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "NPM_CONFIG__AUTHTOKEN", "OPENAI_API_KEY_2", "CREDENTIALS_DIRECTORY"];
    for (const n of named) assert.equal(withheldReason(n, "x"), "credential", n);
    const harmless = ["PATH", "MANPATH", "PYTHONPATH", "PATHEXT", "PWD", "OLDPWD", "TOKENIZERS_PARALLELISM", "MAX_TOKENS", "PATTERN", "SECRETARY", "PASSWORDLESS", "ACTIONS_ID_TOKEN_REQUEST_URL", "OAUTH_TOKEN_ENDPOINT", "JWT_ALGORITHM", "TOKEN_TTL"];
    for (const n of harmless) assert.equal(withheldReason(n, "/usr/bin:/bin"), null, n);
    const tokens = ["ghp_NEWCOMERcanary7Qx2Lm9Vb4Tz8Kp1Wd6Rf3Hs0", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "glpat-xYz12AbCdEfGhIjKlMnOp", "sk-proj-Ab3dEfGh1jKlMnOpQrStUvWx", "AKIAIOSFODNN7EXAMPLE", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", " hf_AbCdEfGhIjKlMnOp1234 \n", "Bearer ghp_NEWCOMERcanary7Qx2Lm9Vb4Tz8Kp1Wd6Rf3Hs0", "https://x.example/hook?token=xoxb-1234-5678-AbCdEfGhIjKl", `lsr_0123456789abcdef_${"A".repeat(43)}`];
    for (const v of tokens) assert.equal(withheldReason("SOME_SETTING", v), "credential", v);
    const lookAlikes = ["sk-SK", "hf_home", "npm_config_cache_directory", "AKIA", "ghp_", "/usr/local/bin:/usr/bin", "sk-slovak language pack 12345678", "/opt/hf_models_2024abcdefghijk/bin:/usr/bin", "hf_cache_dir/2024/abcdefghijk", "Bearer placeholder"];
    for (const v of lookAlikes) assert.equal(withheldReason("SOME_SETTING", v), null, v);
  });

  test("env: every variable that names a credential path is withheld, and the paths it names are read as its tools read them", () => {
    for (const v of PATH_VARIABLES) assert.equal(withheldReason(v.name), v.reason, v.name);
    for (const n of ["AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "PASSWORD_STORE_DIR", "PGPASSFILE", "GOOGLE_APPLICATION_CREDENTIALS"]) assert.equal(withheldReason(n), "credential", n);
    const env = {
      KUBECONFIG: "/h/.kube/a::rel/b",
      DOCKER_HOST: "unix:///h/.colima/docker.sock",
      PGPASSFILE: "pg/pass",
      GPG_AGENT_INFO: "/h/.gnupg/S.gpg-agent:1234:1",
      KRB5CCNAME: "DIR::/h/krb/tkt",
      DBUS_SESSION_BUS_ADDRESS: "unix:abstract=/x;unix:path=/h/bus%20sock,guid=1",
      GNUPGHOME: "/",
      PATH: "/usr/bin",
    };
    assert.deepEqual(
      pathsNamedBy(env, "/cwd").map((p) => `${p.name}=${p.path}`).sort(),
      ["DBUS_SESSION_BUS_ADDRESS=/h/bus sock", "DOCKER_HOST=/h/.colima/docker.sock", "GPG_AGENT_INFO=/h/.gnupg/S.gpg-agent", "KRB5CCNAME=/h/krb/tkt", "KUBECONFIG=/cwd/rel/b", "KUBECONFIG=/h/.kube/a", "PGPASSFILE=/cwd/pg/pass"],
    );
    for (const v of ["tcp://127.0.0.1:2375", "ssh://me@host", "unix://"]) assert.deepEqual(parsePaths("unix-url", v), [], v);
    for (const v of ["KEYRING:persistent:1000", "KCM:", "MEMORY:x"]) assert.deepEqual(parsePaths("krb5-ccache", v), [], v);
    assert.deepEqual(parsePaths("krb5-ccache", "FILE:/tmp/krb5cc_1"), ["/tmp/krb5cc_1"]);
    assert.deepEqual(parsePaths("krb5-ccache", "/tmp/krb5cc_1"), ["/tmp/krb5cc_1"]);
  });

  test("a credential store with a * in its last part covers what that directory holds now (~/.cache/keyring-*)", () => {
    const home = mkdtempSync(join(tmpdir(), "lessor-store-glob-"));
    try {
      mkdirSync(join(home, ".cache", "keyring-AB12"), { recursive: true });
      mkdirSync(join(home, ".cache", "keyring-CD34"));
      mkdirSync(join(home, ".cache", "pip"));
      assert.deepEqual(expandStore("~/.cache/keyring-*", home).sort(), [join(home, ".cache", "keyring-AB12"), join(home, ".cache", "keyring-CD34")]);
      assert.deepEqual(expandStore("~/.nothing/keyring-*", home), []);
      assert.deepEqual(expandStore("~/.ssh", home), [join(home, ".ssh")]);
      assert.deepEqual(expandStore("~/.ssh", undefined), []);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  test("bwrap arguments go through a NUL-separated pipe; a NUL inside one is refused", () => {
    assert.deepEqual([...encodeArgs(["--setenv", "A", "b c"])], [...Buffer.from("--setenv\0A\0b c\0")]);
    assert.throws(() => encodeArgs(["a\0b"]), /NUL/);
  });
});

test("the --no-sandbox warning names the key source the home really has: no key file on an env-key home, LESSOR_MASTER_KEY_PREVIOUS too when set", async () => {
  const { noSandboxWarning, vaultPaths } = await import("../src/cli/run/sandbox.js");
  const home = join(mkdtempSync(join(tmpdir(), "lessor-nosb-")), "home");
  const key = randomBytes(32).toString("hex");
  await initHome({ home, env: { LESSOR_HOME: home, LESSOR_MASTER_KEY: key }, keySource: "env" });
  const env = { LESSOR_MASTER_KEY: key, LESSOR_MASTER_KEY_PREVIOUS: randomBytes(32).toString("hex") };
  const w = noSandboxWarning(vaultPaths(home, env), env);
  assert.doesNotMatch(w, /key file/, w);
  assert.match(w, /LESSOR_MASTER_KEY and LESSOR_MASTER_KEY_PREVIOUS from lessor's environment/);
  assert.ok(!w.includes(key), "the warning never shows a key");
  rmSync(home, { recursive: true, force: true });
});
