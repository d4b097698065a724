/**
 * `lessor run`'s sandbox and `lessor init`'s files, attacked: as a hostile agent inside a real
 * bubblewrap sandbox (the built CLI runs a probe written into the project), and as another local user
 * against the home's files. Each attack that works unconfined is also shown to work with --no-sandbox
 * (or without the fix's condition), so a failure inside proves the sandbox and not a broken probe.
 *
 * Only loopback and temporary directories: the TCP listener and the abstract socket are the test's own;
 * nothing here opens /dev/vsock (the probe only lists /dev's names) or sends a packet off the machine.
 * The vault is embedded (no daemon): its master key is LESSOR_MASTER_KEY in lessor run's own
 * environment, a canary that must show nowhere inside.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { BIN, runCli, runProcess } from "./cli-harness.js";
import { ATTACKERS_POLICY, HAVE_BWRAP, makeOwner as newOwner } from "./run-harness.js";

const NODE = process.execPath;
const IS_ROOT = typeof process.getuid === "function" && process.getuid() === 0;

const root = mkdtempSync(join(tmpdir(), "lessor-attacks-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

const MASTER_KEY = randomBytes(32).toString("hex");
const ENV_CANARY = `canary-env-${randomBytes(8).toString("hex")}`;
const FD_CANARY = `canary-fd-${randomBytes(8).toString("hex")}`;
const GRANTED = `granted-${randomBytes(12).toString("hex")}`;

/** The probe run inside: each attack reported as { ok, detail } (ok: it worked), one JSON line at the end. */
const PROBE = String.raw`
import { readFileSync, readdirSync, statSync, writeFileSync, mkdirSync, renameSync } from "node:fs";
import { connect } from "node:net";
import { execFileSync } from "node:child_process";
const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = {};
const detail = (e) => (e && e.code) || String(e && e.message ? e.message : e).slice(0, 160);
const attempt = async (name, fn) => {
  try { out[name] = { ok: true, detail: String((await fn()) ?? "").slice(0, 4000) }; }
  catch (e) { out[name] = { ok: false, detail: detail(e) }; }
};
const timeout = (p, ms) => Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(Object.assign(new Error("timeout"), { code: "TIMEOUT" })), ms))]);
const dial = (opts) => timeout(new Promise((res, rej) => { const s = connect(opts); s.once("connect", () => { s.destroy(); res("connected"); }); s.once("error", rej); }), 3000);

// Everything readable that could hold a canary: the environment, every /proc entry, the scratch and proxy directories.
const hits = [];
const scan = (where, text) => { for (const c of spec.canaries) if (text.includes(c)) hits.push(where); };
scan("env", JSON.stringify(process.env));
for (const pid of readdirSync("/proc").filter((e) => /^\d+$/.test(e)))
  for (const f of ["environ", "cmdline", "status", "maps", "mountinfo", "root/" + spec.keyPath.slice(1)])
    try { scan("/proc/" + pid + "/" + f, readFileSync("/proc/" + pid + "/" + f, "latin1")); } catch {}
const walk = (dir, depth) => {
  let entries = [];
  try { entries = readdirSync(dir, { withFileTypes: true }); } catch { return; }
  for (const e of entries) {
    const p = dir + "/" + e.name;
    if (e.isDirectory() && depth < 6) walk(p, depth + 1);
    else if (e.isFile() && !e.name.startsWith("spec-")) try { scan(p, readFileSync(p, "latin1")); } catch {}
  }
};
for (const d of spec.scanDirs) walk(d, 0);
out["canaries"] = { ok: hits.length > 0, detail: hits.join(" ") };
out["env-names"] = { ok: true, detail: Object.keys(process.env).sort().join(",") };
out["pids"] = { ok: true, detail: readdirSync("/proc").filter((e) => /^\d+$/.test(e)).join(",") };

await attempt("run-dir-modes", () => [ "/run/lessor", ...readdirSync("/run/lessor").map((f) => "/run/lessor/" + f) ].map((p) => p + "=" + (statSync(p).mode & 0o7777).toString(8)).join(";"));
await attempt("status", () => readFileSync("/proc/self/status", "utf8").split("\n").filter((l) => /^(NoNewPrivs|Cap(Eff|Prm|Bnd|Amb|Inh)|Seccomp):/.test(l)).join(";"));
await attempt("dev", () => readdirSync("/dev").sort().join(","));
await attempt("sys", () => readdirSync("/sys").join(",") || "(empty)");
await attempt("proc1-root", () => readdirSync("/proc/1/root" + spec.home).join(",") || "(empty)");
await attempt("key-via-proc1-root", () => readFileSync("/proc/1/root" + spec.keyPath, "utf8"));
for (const [name, path] of Object.entries(spec.read ?? {})) await attempt("read:" + name, () => readFileSync(path, "utf8"));
for (const [name, path] of Object.entries(spec.list ?? {})) await attempt("list:" + name, () => readdirSync(path).join(",") || "(empty)");
for (const [name, path] of Object.entries(spec.dial ?? {})) await attempt("dial:" + name, () => dial({ path }));
if (spec.abstract) await attempt("abstract", () => dial({ path: "\0" + spec.abstract }));
if (spec.tcpPort) await attempt("tcp", () => dial({ host: "127.0.0.1", port: spec.tcpPort }));
// The proxy, asked to reach the host's loopback listener (CONNECT, then a plain forward).
if (spec.tcpPort && process.env.HTTPS_PROXY) {
  const ask = (req) => timeout(new Promise((res, rej) => {
    const s = connect({ host: "127.0.0.1", port: 3128 });
    let got = "";
    s.on("data", (d) => { got += d; if (got.includes("\r\n\r\n")) { s.destroy(); res(got.split("\r\n")[0]); } });
    s.once("error", rej); s.once("close", () => res(got.split("\r\n")[0] || "(closed)"));
    s.write(req);
  }), 5000);
  await attempt("proxy-connect-loopback", () => ask("CONNECT 127.0.0.1:" + spec.tcpPort + " HTTP/1.1\r\nHost: 127.0.0.1:" + spec.tcpPort + "\r\n\r\n"));
  await attempt("proxy-get-loopback", () => ask("GET http://127.0.0.1:" + spec.tcpPort + "/ HTTP/1.1\r\nHost: 127.0.0.1:" + spec.tcpPort + "\r\n\r\n"));
  await attempt("proxy-connect-localhost", () => ask("CONNECT localhost:" + spec.tcpPort + " HTTP/1.1\r\nHost: localhost:" + spec.tcpPort + "\r\n\r\n"));
}
// The descriptors a command started inside holds (ls's own: it lists /proc/self/fd).
await attempt("fds", () => execFileSync("/bin/ls", ["-l", "/proc/self/fd"], { encoding: "utf8", stdio: ["inherit", "pipe", "inherit"] }).split("\n").filter((l) => l.includes(" -> ")).map((l) => { const [a, t] = l.split(" -> "); return a.slice(a.lastIndexOf(" ") + 1) + ">" + t; }).join(";"));

// Git: plant what the owner's git would run later, outside the sandbox (one attack per run).
if (spec.git) {
  const { dir, marker, attack } = spec.git;
  const script = dir + "/evil.sh";
  writeFileSync(script, "#!/bin/sh\necho ran >> " + marker + "\n", { mode: 0o755 });
  const evilRepo = (d) => {
    mkdirSync(d + "/hooks", { recursive: true }); mkdirSync(d + "/objects", { recursive: true }); mkdirSync(d + "/refs/heads", { recursive: true });
    writeFileSync(d + "/HEAD", "ref: refs/heads/main\n");
    writeFileSync(d + "/config", "[core]\n\trepositoryformatversion = 0\n\tbare = false\n\tfsmonitor = " + script + "\n");
    for (const h of ["pre-commit", "post-commit", "post-checkout"]) writeFileSync(d + "/hooks/" + h, "#!/bin/sh\nexec " + script + "\n", { mode: 0o755 });
  };
  await attempt("git:" + attack, () => {
    if (attack === "config") writeFileSync(dir + "/.git/config", "[core]\n\trepositoryformatversion = 0\n\tfsmonitor = " + script + "\n");
    else if (attack === "hook") { mkdirSync(dir + "/.git/hooks", { recursive: true }); writeFileSync(dir + "/.git/hooks/pre-commit", "#!/bin/sh\nexec " + script + "\n", { mode: 0o755 }); }
    else if (attack === "commondir") { evilRepo(dir + "/evil-common"); writeFileSync(dir + "/.git/commondir", dir + "/evil-common\n"); }
    else if (attack === "rename") { renameSync(dir + "/.git", dir + "/.git-moved"); evilRepo(dir + "/.git"); }
    else if (attack === "gitfile") { evilRepo(dir + "/evil-gitdir"); writeFileSync(dir + "/.git", "gitdir: " + dir + "/evil-gitdir\n"); }
    else if (attack === "commit") return execFileSync("git", ["-c", "user.name=a", "-c", "user.email=a@a", "-c", "safe.directory=*", "commit", "-q", "--allow-empty", "-m", "by the agent"], { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }) || "committed";
    else if (attack === "hookspath") writeFileSync(dir + "/.husky/pre-commit", "#!/bin/sh\nexec " + script + "\n", { mode: 0o755 });
    else if (attack === "hooks-symlink") writeFileSync(dir + "/tools/hooks/pre-commit", "#!/bin/sh\nexec " + script + "\n", { mode: 0o755 });
    return "planted";
  });
}
for (const [name, path] of Object.entries(spec.writes ?? {})) await attempt("write:" + name, () => writeFileSync(path, "written by the probe\n"));
process.stdout.write(JSON.stringify(out) + "\n", () => process.exit(0));
`;

interface Probe {
  ok: boolean;
  detail: string;
}
interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  probes: Record<string, Probe>;
}

/** lessor run's own environment: the master key and a plain credential in it are canaries. */
function ownerEnv(home: string, lessorHome: string, extra: Record<string, string> = {}): Record<string, string> {
  return { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: home, LESSOR_HOME: lessorHome, NO_COLOR: "1", LESSOR_MASTER_KEY: MASTER_KEY, DEPLOY_TOKEN: ENV_CANARY, GRANTED: "$S:granted", ...extra };
}

/** Runs `node -- BIN run --agent AGENT EXTRA -- CMD…` from `cwd`; parses the last stdout line as the probe's report. */
async function lessorRun(cwd: string, env: Record<string, string>, agent: string, extra: string[], cmd: string[], wrap?: (argv: string[]) => { file: string; args: string[] }): Promise<Run> {
  const argv = [NODE, "--", BIN, "run", "--agent", agent, ...extra, "--", ...cmd];
  const { file, args } = wrap ? wrap(argv) : { file: argv[0]!, args: argv.slice(1) };
  const { code, stdout, stderr } = await runProcess(file, args, { cwd, env, timeoutMs: 40_000 });
  let probes: Record<string, Probe> = {};
  try {
    probes = JSON.parse(stdout.replaceAll("\r", "").trim().split("\n").pop() ?? "{}") as Record<string, Probe>;
  } catch {
    // the caller's assertions say what went wrong
  }
  return { code, stdout, stderr, probes };
}

/** A fake owner: home, ~/.lessor (the env key, seeded), ~/.ssh with a canary, and a project that is a git repository. */
async function makeOwner(name: string, opts: { lessorHome?: (home: string, project: string) => string; git?: boolean } = {}) {
  const { home, project, lessorHome } = await newOwner({ root, name, masterKey: MASTER_KEY, policy: ATTACKERS_POLICY, secrets: [{ name: "granted", value: GRANTED }], lessorHome: opts.lessorHome });
  mkdirSync(join(home, ".ssh"), { recursive: true });
  const sshCanary = `canary-ssh-${randomBytes(8).toString("hex")}`;
  writeFileSync(join(home, ".ssh/id_ed25519"), sshCanary, { mode: 0o600 });
  if (opts.git !== false) gitInit(project);
  writeFileSync(join(project, "probe.mjs"), PROBE);
  return { home, project, lessorHome, sshCanary };
}

const GIT_ENV = { PATH: "/usr/bin:/bin", HOME: "/nonexistent", GIT_CONFIG_NOSYSTEM: "1", GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@t", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@t" };
function git(cwd: string, ...args: string[]) {
  return spawnSync("git", ["-c", "safe.directory=*", ...args], { cwd, env: GIT_ENV, encoding: "utf8", timeout: 15_000 });
}
function gitInit(dir: string): void {
  const r = git(dir, "init", "-q", "-b", "main");
  assert.equal(r.status, 0, r.stderr);
  writeFileSync(join(dir, "README"), "the project\n");
  assert.equal(git(dir, "add", "README").status, 0);
  assert.equal(git(dir, "commit", "-qm", "init").status, 0);
}

/** Writes the probe's spec (canaries in a file, never on a command line) and returns its path. */
function specFile(project: string, name: string, spec: object): string {
  const p = join(project, `spec-${name}.json`);
  writeFileSync(p, JSON.stringify(spec));
  return p;
}

const skip = HAVE_BWRAP ? false : "bwrap is not installed or user namespaces are off";

describe("inside the sandbox: /proc, /dev, /sys, descriptors, sockets, the proxy", { skip }, () => {
  let o: Awaited<ReturnType<typeof makeOwner>>;
  let tcp: Server;
  let tcpPort = 0;
  let tcpConnections = 0;
  let abstract: Server;
  let abstractConnections = 0;
  const abstractName = `lessor-attack-${randomBytes(6).toString("hex")}`;
  let inside: Run;
  let none: Run;
  let unconfined: Run;

  before(async () => {
    o = await makeOwner("inside");
    tcp = createServer((c) => {
      tcpConnections++;
      c.end("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    });
    await new Promise<void>((r) => tcp.listen(0, "127.0.0.1", r));
    tcpPort = (tcp.address() as { port: number }).port;
    abstract = createServer((c) => {
      abstractConnections++;
      c.destroy();
    });
    await new Promise<void>((r) => abstract.listen(`\0${abstractName}`, r));
    const spec = (n: string) =>
      specFile(o.project, n, {
        canaries: [MASTER_KEY, ENV_CANARY, GRANTED, o.sshCanary, FD_CANARY],
        keyPath: join(o.lessorHome, "lessor.toml"),
        home: o.home,
        scanDirs: ["/tmp", "/run", o.home, "/var/tmp", "/dev/shm"],
        read: { ssh: join(o.home, ".ssh/id_ed25519"), fd200: "/proc/self/fd/200" },
        abstract: abstractName,
        tcpPort,
      });
    // lessor run is started holding fd 200 (not close-on-exec) open on a file of the owner's, as a
    // careless parent would leave it: the agent must not inherit it.
    const fdSecret = join(root, "inside", "fd-secret");
    writeFileSync(fdSecret, FD_CANARY, { mode: 0o600 });
    const withFd200 = (argv: string[]) => ({ file: "/bin/bash", args: ["-c", `exec 200<${fdSecret}; exec "$@"`, "sh", ...argv] });
    inside = await lessorRun(o.project, ownerEnv(o.home, o.lessorHome), "attacker-inside", [], [NODE, join(o.project, "probe.mjs"), spec("inside")], withFd200);
    none = await lessorRun(o.project, ownerEnv(o.home, o.lessorHome), "attacker-none", ["--network", "none"], [NODE, join(o.project, "probe.mjs"), spec("none")], withFd200);
    unconfined = await lessorRun(o.project, ownerEnv(o.home, o.lessorHome), "attacker-unconfined", ["--no-sandbox"], ["/bin/ls", "-l", "/proc/self/fd"], withFd200);
  });
  after(() => {
    tcp?.close();
    abstract?.close();
  });

  test("both runs worked, and lessor's own descriptors (the in-process vault's database) survived the closing: the leases are revoked", async () => {
    assert.equal(inside.code, 0, inside.stderr);
    assert.equal(none.code, 0, none.stderr);
    for (const r of [inside, none]) assert.doesNotMatch(r.stderr, /could not be revoked/);
    const leases = await runCli(["leases", "--agent", "attacker-inside", "--json"], { home: o.lessorHome, env: { HOME: o.home, LESSOR_MASTER_KEY: MASTER_KEY } });
    assert.deepEqual((JSON.parse(leases.stdout) as { state: string }[]).map((l) => l.state), ["revoked"]);
  });

  test("no canary (master key, credential from the environment, the granted value, ~/.ssh) in the env, any /proc file, /proc/1/root, /tmp, /run, the home", () => {
    assert.deepEqual(inside.probes["canaries"], { ok: false, detail: "" });
    // With network "none" the value is in the environment: that is documented; nothing else may hold a canary.
    const hits = none.probes["canaries"]!.detail.split(" ").filter((h) => h !== "" && h !== "env" && !/^\/proc\/\d+\/environ$/.test(h));
    assert.deepEqual(hits, []);
    for (const r of [inside, none]) assert.equal(r.probes["read:ssh"]?.ok, false);
  });

  test("no LESSOR_* variable in the child's environment, whatever its case", () => {
    for (const r of [inside, none]) {
      const names = r.probes["env-names"]!.detail.split(",");
      assert.deepEqual(names.filter((n) => n.toUpperCase().startsWith("LESSOR")), []);
      assert.ok(!names.includes("DEPLOY_TOKEN"));
    }
  });

  test("no capabilities, no_new_privs set (a setuid binary gains nothing)", () => {
    for (const r of [inside, none]) {
      const st = r.probes["status"]!.detail;
      assert.match(st, /NoNewPrivs:\s*1/);
      for (const cap of ["CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"]) assert.match(st, new RegExp(`${cap}:\\s*0+(;|$)`), st);
    }
  });

  test("/dev is bwrap's minimal one: no vsock, kvm, host disks, mem or host ttys; /sys is absent", () => {
    const allowed = new Set(["console", "core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"]);
    for (const r of [inside, none]) {
      const dev = r.probes["dev"]!.detail.split(",");
      assert.deepEqual(dev.filter((d) => !allowed.has(d)), [], r.probes["dev"]!.detail);
      assert.ok(!dev.includes("console"), "stdout is not a terminal: no /dev/console leading to the parent's tty");
      assert.equal(r.probes["sys"]?.ok, false, JSON.stringify(r.probes["sys"]));
    }
  });

  test("/proc/1/root is the sandbox's own root: the lessor home is not behind it", () => {
    for (const r of [inside, none]) {
      assert.deepEqual(r.probes["proc1-root"], { ok: true, detail: "project" }, "the home shows the project only");
      assert.equal(r.probes["key-via-proc1-root"]?.ok, false);
      const pids = r.probes["pids"]!.detail.split(",").map(Number);
      assert.ok(pids.every((p) => p < 10), `only the sandbox's own processes: ${pids.join(",")}`);
    }
  });

  test("the command inherits only stdin, stdout and stderr: not lessor's pipes to bwrap, not a descriptor lessor itself inherited (unconfined it does)", () => {
    assert.match(unconfined.stdout, /\b200 -> .*fd-secret/, "the descriptor reaches an unconfined command");
    for (const r of [inside, none]) {
      assert.equal(r.probes["read:fd200"]?.ok, false, JSON.stringify(r.probes["read:fd200"]));
      const fds = r.probes["fds"]!.detail.split(";");
      // ls's own fd 3 is the /proc/self/fd directory it lists.
      assert.deepEqual(fds.filter((f) => !/^[012]>/.test(f) && !/^3>\/proc\/\d+\/fd$/.test(f)), [], r.probes["fds"]!.detail);
    }
  });

  test("an abstract Unix socket and a TCP listener on the host's loopback are unreachable", () => {
    for (const r of [inside, none]) {
      assert.equal(r.probes["abstract"]?.ok, false, JSON.stringify(r.probes["abstract"]));
      assert.equal(r.probes["tcp"]?.ok, false, JSON.stringify(r.probes["tcp"]));
    }
    assert.equal(abstractConnections, 0);
  });

  test("the bridged proxy socket leads to the proxy only: CONNECT or GET to the host's loopback is refused, the listener sees nothing", () => {
    for (const k of ["proxy-connect-loopback", "proxy-get-loopback", "proxy-connect-localhost"]) {
      const p = inside.probes[k];
      assert.ok(p !== undefined, `${k} was tried`);
      assert.ok(!p.ok || !/^HTTP\/1\.[01] 2\d\d/.test(p.detail), `${k}: ${JSON.stringify(p)}`);
    }
    assert.equal(tcpConnections, 0);
  });
});

describe("inside the sandbox: planting what the owner's git runs later, outside", { skip }, () => {
  /** The git attacks: each in a fresh project, confined then unconfined (where it must work, or the test proves nothing). */
  const ATTACKS: { attack: string; what: string; setup?: (project: string) => void }[] = [
    { attack: "config", what: "core.fsmonitor written into .git/config" },
    { attack: "hook", what: "a pre-commit hook written into .git/hooks" },
    { attack: "hook", what: "a pre-commit hook in a .git/hooks the project did not have", setup: (p) => rmSync(join(p, ".git/hooks"), { recursive: true, force: true }) },
    { attack: "commondir", what: ".git/commondir planted, pointing at a directory with its own config and hooks" },
    { attack: "rename", what: ".git renamed away (taking its read-only mounts with it) and replaced by one with core.fsmonitor" },
    {
      attack: "gitfile",
      what: "a .git file (a linked worktree) rewritten to point at a git directory of the agent's",
      setup: (p) => {
        // The project is a linked worktree of a repository kept outside it.
        const main = `${p}-main`;
        renameSync(p, main);
        assert.equal(git(main, "worktree", "add", "-q", p).status, 0);
        writeFileSync(join(p, "probe.mjs"), PROBE);
      },
    },
    {
      attack: "hooks-symlink",
      what: "a hook written through .git/hooks when it is a symlink to a directory of the project",
      setup: (p) => {
        rmSync(join(p, ".git/hooks"), { recursive: true, force: true });
        mkdirSync(join(p, "tools/hooks"), { recursive: true });
        symlinkSync("../tools/hooks", join(p, ".git/hooks"));
      },
    },
    {
      attack: "hookspath",
      what: "a hook written into the project's core.hooksPath directory (.husky)",
      setup: (p) => {
        mkdirSync(join(p, ".husky"));
        assert.equal(git(p, "config", "core.hooksPath", ".husky").status, 0);
      },
    },
  ];

  let n = 0;
  test("the agent still commits in the project: the guards leave git working inside; .git/commondir planted is moved aside and said", async () => {
    const o = await makeOwner("git-commit");
    const spec = specFile(o.project, "git", { canaries: [], keyPath: "/nonexistent", home: o.home, scanDirs: [], git: { dir: o.project, marker: join(root, "unused"), attack: "commit" } });
    const r = await lessorRun(o.project, ownerEnv(o.home, o.lessorHome), "attacker-commit", [], [NODE, join(o.project, "probe.mjs"), spec]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.probes["git:commit"]?.ok, true, JSON.stringify(r.probes["git:commit"]));
    assert.match(git(o.project, "log", "-1", "--format=%s").stdout, /^by the agent$/m);
    const spec2 = specFile(o.project, "git2", { canaries: [], keyPath: "/nonexistent", home: o.home, scanDirs: [], git: { dir: o.project, marker: join(root, "unused"), attack: "commondir" } });
    const r2 = await lessorRun(o.project, ownerEnv(o.home, o.lessorHome), "attacker-commit", [], [NODE, join(o.project, "probe.mjs"), spec2]);
    assert.equal(r2.code, 0, r2.stderr);
    assert.match(r2.stderr, /planted .*\.git\/commondir, which would make your git run another directory's hooks and config; moved it to .*commondir\.lessor-quarantine/);
    assert.ok(!existsSync(join(o.project, ".git/commondir")) && existsSync(join(o.project, ".git/commondir.lessor-quarantine")));
  });
  for (const a of ATTACKS) {
    test(`${a.what}: the owner's git status and commit afterwards run nothing of the agent's (unconfined they do)`, async () => {
      for (const confined of [true, false]) {
        const o = await makeOwner(`git-${n++}`);
        a.setup?.(o.project);
        const marker = join(root, `git-marker-${n}`);
        const spec = specFile(o.project, "git", { canaries: [], keyPath: "/nonexistent", home: o.home, scanDirs: [], git: { dir: o.project, marker, attack: a.attack } });
        const r = await lessorRun(o.project, ownerEnv(o.home, o.lessorHome), `attacker-git-${n}`, confined ? [] : ["--no-sandbox"], [NODE, join(o.project, "probe.mjs"), spec]);
        assert.equal(r.code, 0, r.stderr);
        assert.ok(r.probes[`git:${a.attack}`] !== undefined, r.stdout);
        // The owner, later, outside the sandbox.
        git(o.project, "status");
        git(o.project, "commit", "-q", "--allow-empty", "-m", "after the agent");
        assert.equal(existsSync(marker), !confined, `${confined ? "confined" : "unconfined"}: ${JSON.stringify(r.probes[`git:${a.attack}`])}`);
        if (confined) assert.equal(git(o.project, "status", "--porcelain").status, 0, "git still works in the project after the run");
      }
    });
  }
});

/** `lessor --home HOME serve` with the env key; resolves once it is ready. */
function startDaemon(home: string, env: Record<string, string>): Promise<{ stop(): Promise<void>; socket: string }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(NODE, ["--", BIN, "--home", home, "serve"], { env, stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    const exited = new Promise<void>((r) => proc.on("exit", () => r()));
    proc.stderr.on("data", (d: Buffer) => {
      err += d.toString();
      for (const line of err.split("\n")) {
        if (!line.includes('"lessor daemon ready"')) continue;
        const socket = (JSON.parse(line) as { socket: string }).socket;
        resolve({ socket, stop: () => (proc.kill("SIGTERM"), exited) });
      }
    });
    void exited.then(() => reject(new Error(`lessor serve exited: ${err}`)));
    setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`lessor serve did not start: ${err}`));
    }, 20_000).unref();
  });
}

describe("the vault's files hidden wherever they are: a home in the project, through a symlink, by --home; the key file and socket named in lessor.toml", { skip }, () => {
  let o: Awaited<ReturnType<typeof makeOwner>>;
  let daemon: { stop(): Promise<void>; socket: string };
  const KEY_FILE_CANARY = `canary-keyfile-${randomBytes(8).toString("hex")}`;
  let paths: { vault: string; keyFile: string; sockDir: string; socket: string };

  before(async () => {
    o = await makeOwner("homes", { lessorHome: (_h, project) => join(project, ".vault") });
    paths = { vault: o.lessorHome, keyFile: join(o.project, "keys/master.key"), sockDir: join(o.project, "sockdir"), socket: join(o.project, "sockdir/lessor.sock") };
    mkdirSync(join(o.project, "keys"), { mode: 0o700 });
    writeFileSync(paths.keyFile, KEY_FILE_CANARY, { mode: 0o600 });
    mkdirSync(paths.sockDir, { mode: 0o700 });
    writeFileSync(join(o.lessorHome, "lessor.toml"), `[server]\nsocket = "${paths.socket}"\n\n[keys]\nfile = "${paths.keyFile}"\n`, { mode: 0o600 });
    daemon = await startDaemon(o.lessorHome, { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: o.home, LESSOR_MASTER_KEY: MASTER_KEY });
    assert.equal(daemon.socket, paths.socket);
  });
  after(async () => {
    await daemon?.stop();
  });

  const probeSpec = (name: string) =>
    specFile(o.project, name, {
      canaries: [MASTER_KEY, KEY_FILE_CANARY],
      keyPath: paths.keyFile,
      home: o.home,
      scanDirs: [o.project],
      read: { db: join(paths.vault, "lessor.db"), toml: join(paths.vault, "lessor.toml"), policy: join(paths.vault, "policy.toml"), keyFile: paths.keyFile },
      list: { vault: paths.vault, sockDir: paths.sockDir },
      dial: { daemon: paths.socket },
    });
  const attacked = (r: Run, how: string) => {
    assert.equal(r.code, 0, `${how}: ${r.stderr}`);
    for (const k of ["read:db", "read:toml", "read:policy", "read:keyFile", "dial:daemon"]) assert.equal(r.probes[k]?.ok, false, `${how}: ${k} ${JSON.stringify(r.probes[k])}`);
    for (const k of ["list:vault", "list:sockDir"]) assert.ok(!r.probes[k]?.ok || r.probes[k]?.detail === "(empty)", `${how}: ${k} ${JSON.stringify(r.probes[k])}`);
    assert.deepEqual(r.probes["canaries"], { ok: false, detail: "" }, how);
  };

  test("LESSOR_HOME inside the project, with the key file and the daemon's socket directory in it too (unconfined all are reachable)", async () => {
    const env = ownerEnv(o.home, o.lessorHome);
    attacked(await lessorRun(o.project, env, "attacker-home-env", [], [NODE, join(o.project, "probe.mjs"), probeSpec("env")]), "LESSOR_HOME");
    const un = await lessorRun(o.project, env, "attacker-home-unconfined", ["--no-sandbox"], [NODE, join(o.project, "probe.mjs"), probeSpec("unconfined")]);
    for (const k of ["read:db", "read:toml", "read:keyFile", "dial:daemon"]) assert.equal(un.probes[k]?.ok, true, `unconfined ${k}: ${JSON.stringify(un.probes[k])}`);
  });

  test("LESSOR_HOME a symlink outside the project to the home inside it", async () => {
    const link = join(root, "homes", "vault-link");
    symlinkSync(o.lessorHome, link);
    attacked(await lessorRun(o.project, ownerEnv(o.home, link), "attacker-home-link", [], [NODE, join(o.project, "probe.mjs"), probeSpec("link")]), "symlinked LESSOR_HOME");
  });

  test("--home through a symlink inside the project, LESSOR_HOME unset: refused, since the agent could point the link at a home of its own", async () => {
    // It was run with the home covered at its real path; the link stayed the agent's to change (and
    // the owner's next `lessor --home link …` would then open the agent's home). test/review-2026-12-04b.
    const link = join(o.project, "vault-link");
    symlinkSync(".vault", link);
    const env = ownerEnv(o.home, "");
    delete env["LESSOR_HOME"];
    const r = await lessorRun(o.project, env, "attacker-home-flag", [], [NODE, join(o.project, "probe.mjs"), probeSpec("flag")], (argv) => ({ file: argv[0]!, args: [...argv.slice(1, 3), "--home", link, ...argv.slice(3)] }));
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /is named through .*vault-link, a symbolic link the agent could change/);
  });
});

describe("lessor run executes nothing the agent could have written", { skip }, () => {
  test("a bwrap planted in a PATH directory inside the project (an activated virtualenv's bin) is refused, never run", async () => {
    const o = await makeOwner("planted-bwrap");
    const bin = join(o.project, ".venv/bin");
    mkdirSync(bin, { recursive: true });
    const marker = join(root, "planted-bwrap", "ran");
    writeFileSync(join(bin, "bwrap"), `#!/bin/sh\necho ran >> ${marker}\nexec /usr/bin/bwrap "$@"\n`, { mode: 0o755 });
    const env = ownerEnv(o.home, o.lessorHome, { PATH: `${bin}:/usr/bin:/bin` });
    const r = await lessorRun(o.project, env, "attacker-bwrap", [], [NODE, "-e", "0"]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /the bwrap found on PATH, .*\.venv\/bin\/bwrap, is inside .*which the sandboxed agent can write/);
    assert.ok(!existsSync(marker), "the planted bwrap was run as the owner");
    // The same bwrap outside anything the sandbox shows writable is used (so the refusal is about where it is).
    const elsewhere = join(root, "planted-bwrap", "bin");
    mkdirSync(elsewhere, { recursive: true });
    writeFileSync(join(elsewhere, "bwrap"), readFileSync(join(bin, "bwrap")), { mode: 0o755 });
    const ok = await lessorRun(o.project, { ...env, PATH: `${elsewhere}:/usr/bin:/bin` }, "attacker-bwrap", [], [NODE, "-e", "0"]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok(existsSync(marker));
  });

  test("--no-sandbox's warning names the master key in lessor's own environment, which the unconfined command can read there", async () => {
    const o = await makeOwner("nosandbox-warning", { git: false });
    const spec = specFile(o.project, "ns", { canaries: [MASTER_KEY], keyPath: "/nonexistent", home: o.home, scanDirs: [] });
    const r = await lessorRun(o.project, ownerEnv(o.home, o.lessorHome), "attacker-ns", ["--no-sandbox"], [NODE, join(o.project, "probe.mjs"), spec]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /^lessor: warning: --no-sandbox: the agent runs unconfined, as you: .*LESSOR_MASTER_KEY from lessor's environment \(\/proc\/\d+\/environ\)/);
    // What it says is true: the key is not in the command's own environment, but in its parent's /proc entry.
    const hits = r.probes["canaries"]!.detail.split(" ");
    assert.ok(!hits.includes("env"), r.probes["canaries"]!.detail);
    assert.ok(hits.some((h) => /^\/proc\/\d+\/environ$/.test(h)), r.probes["canaries"]!.detail);
  });
});

describe("lessor init against another local user (uid 65534) and a careless umask", () => {
  const base = join(root, "init");
  before(() => mkdirSync(base, { recursive: true, mode: 0o700 }));
  const init = (home: string, umask?: string) =>
    umask === undefined
      ? runCli(["init"], { home })
      : new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
          const r = spawnSync("/bin/sh", ["-c", `umask ${umask}; exec "$@"`, "sh", NODE, "--", BIN, "init"], { env: { PATH: process.env.PATH ?? "", HOME: base, LESSOR_HOME: home }, encoding: "utf8" });
          resolve({ code: r.status, stdout: r.stdout, stderr: r.stderr });
        });
  const mode = (p: string) => statSync(p).mode & 0o7777;

  test("umask 000: the home is 0700 and every file in it (key, database and its journal, config, policy) 0600, also after a lessor run used it", async () => {
    const home = join(base, "umask");
    const r = await init(home, "000");
    assert.equal(r.code, 0, r.stderr);
    assert.equal(mode(home), 0o700);
    const files = readdirSync(home);
    for (const f of ["master.key", "lessor.db", "lessor.toml", "policy.toml"]) assert.ok(files.includes(f), f);
    for (const f of files) assert.equal(mode(join(home, f)) & 0o077, 0, `${f}: ${mode(join(home, f)).toString(8)}`);
    const run = spawnSync("/bin/sh", ["-c", 'umask 000; exec "$@"', "sh", NODE, "--", BIN, "run", "--agent", "a", "--no-sandbox", "--", NODE, "-e", "0"], { env: { PATH: process.env.PATH ?? "", HOME: base, LESSOR_HOME: home }, encoding: "utf8" });
    assert.equal(run.status, 0, run.stderr);
    for (const f of readdirSync(home)) assert.equal(mode(join(home, f)) & 0o077, 0, `after a run, ${f}: ${mode(join(home, f)).toString(8)}`);
  });

  test("the home pre-created by another user, or made wide, is refused and left untouched", { skip: IS_ROOT ? false : "needs root to act as uid 65534" }, async () => {
    const theirs = join(base, "theirs");
    mkdirSync(theirs, { mode: 0o700 });
    chownSync(theirs, 65534, 65534);
    const r = await init(theirs);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /owned by uid 65534|belongs to uid 65534/);
    assert.deepEqual(readdirSync(theirs), []);
    const wide = join(base, "wide");
    mkdirSync(wide);
    chmodSync(wide, 0o777);
    const w = await init(wide);
    assert.notEqual(w.code, 0);
    assert.match(w.stderr, /can be read or changed by other users \(mode 0777\)/);
    assert.deepEqual(readdirSync(wide), []);
  });

  test("a home reached through another user's symlink (in sticky /tmp-like directory) is refused, nothing is written where it points", { skip: IS_ROOT ? false : "needs root to act as uid 65534" }, async () => {
    const shared = join(base, "shared");
    mkdirSync(shared);
    chmodSync(shared, 0o1777);
    const mine = join(base, "mine");
    mkdirSync(mine, { mode: 0o700 });
    const link = join(shared, "home");
    symlinkSync(mine, link);
    spawnSync("chown", ["-h", "65534:65534", link]);
    assert.equal(lstatSync(link).uid, 65534);
    const r = await init(link);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /is a symbolic link of uid 65534, who could point it elsewhere/);
    assert.deepEqual(readdirSync(mine), []);
    // The same link of the owner's own is fine.
    const own = join(base, "own-link");
    symlinkSync(mine, own);
    const ok = await init(own);
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok(readdirSync(mine).includes("master.key"));
  });

  test("a home under a directory other users can write (not sticky) is refused before anything is created; sticky /tmp is fine", async () => {
    const ww = join(base, "world-writable");
    mkdirSync(ww);
    chmodSync(ww, 0o777);
    const home = join(ww, "home");
    const r = await init(home);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /world-writable, above the lessor home .* can be written by other users \(mode 0777\), who could move .*home away and replace it/);
    assert.ok(!existsSync(home));
    const sticky = join(base, "sticky");
    mkdirSync(sticky);
    chmodSync(sticky, 0o1777);
    const ok = await init(join(sticky, "home"));
    assert.equal(ok.code, 0, ok.stderr);
  });

  test("a home whose parent became writable by other users after init is not opened (embedded), and is again once fixed", async () => {
    const parent = join(base, "later-wide");
    mkdirSync(parent, { mode: 0o755 });
    const home = join(parent, "home");
    assert.equal((await init(home)).code, 0);
    const before = await runCli(["secret", "list"], { home });
    assert.equal(before.code, 0, before.stderr);
    chmodSync(parent, 0o777);
    const r = await runCli(["secret", "list"], { home });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /later-wide, above the lessor home .* can be written by other users \(mode 0777\)/);
    chmodSync(parent, 0o755);
    const after = await runCli(["secret", "list"], { home });
    assert.equal(after.code, 0, after.stderr);
  });
});

describe("the owner's terminal", { skip }, () => {
  test("TIOCSTI on the terminal the command inherits cannot push keystrokes (a new session: not its controlling terminal); unconfined it can", async (t) => {
    if (spawnSync("script", ["--version"]).error || spawnSync("/usr/bin/perl", ["-e", "1"]).status !== 0) {
      t.skip("script(1) or /usr/bin/perl is not installed");
      return;
    }
    const o = await makeOwner("tty", { git: false });
    // TIOCSTI (0x5412) with one byte, on stdin (the pty script(1) made, lessor's terminal).
    const perl = ["/usr/bin/perl", "-e", 'my $c = "x"; my $r = ioctl(STDIN, 0x5412, $c); print $r ? "tiocsti=pushed\\n" : "tiocsti=refused:$!\\n"; print -t STDIN ? "isatty=1\\n" : "isatty=0\\n"'];
    const q = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;
    const screen = (extra: string[]) => {
      const cmd = [NODE, "--", BIN, "run", "--agent", "attacker-tty", ...extra, "--", ...perl].map(q).join(" ");
      const r = spawnSync("script", ["-qec", cmd, "/dev/null"], { cwd: o.project, env: ownerEnv(o.home, o.lessorHome), encoding: "utf8", timeout: 30_000 });
      return r.stdout.replaceAll("\r", "") + r.stderr;
    };
    const inside = screen([]);
    assert.match(inside, /^isatty=1$/m, inside);
    assert.match(inside, /^tiocsti=refused:/m, inside);
    assert.doesNotMatch(inside, /tiocsti=pushed/);
    const unconfined = screen(["--no-sandbox"]);
    assert.match(unconfined, /tiocsti=pushed$/m, unconfined);
  });
});

describe("the run's own files under umask 000", { skip }, () => {
  test("the proxy directory shown at /run/lessor and its socket keep other users out (no group or other bits but read on the public CA)", async () => {
    const o = await makeOwner("run-umask", { git: false });
    const spec = specFile(o.project, "um", { canaries: [], keyPath: "/nonexistent", home: o.home, scanDirs: [] });
    const r = await lessorRun(o.project, ownerEnv(o.home, o.lessorHome), "attacker-umask", [], [NODE, join(o.project, "probe.mjs"), spec], (argv) => ({ file: "/bin/sh", args: ["-c", 'umask 000; exec "$@"', "sh", ...argv] }));
    assert.equal(r.code, 0, r.stderr);
    const modes = Object.fromEntries(r.probes["run-dir-modes"]!.detail.split(";").map((kv) => kv.split("=") as [string, string]));
    // The native bridge: no socket file (the proxy accepts on the bridge's listener); the public CA files only.
    // (test/run-bridge.test.ts checks the Node bridge's socket under umask 000.)
    assert.ok(modes["/run/lessor"] !== undefined, JSON.stringify(modes));
    assert.equal(parseInt(modes["/run/lessor"]!, 8) & 0o077, 0, JSON.stringify(modes));
    for (const [f, m] of Object.entries(modes)) {
      if (f === "/run/lessor") continue;
      assert.ok(["/run/lessor/ca.pem", "/run/lessor/ca-bundle.pem"].includes(f), `only the public CA files: ${JSON.stringify(modes)}`);
      assert.equal(parseInt(m, 8) & 0o033, 0, JSON.stringify(modes));
    }
  });
});
