/**
 * Attack pass on lessor's own files and configuration after init: lessor.toml, policy.toml, the JSONL
 * audit sink, the daemon lock, LESSOR_HOME / LESSOR_DATABASE_URL. Other local user = nobody (setpriv).
 * Runs a private copy of dist/ (taken at load) so a concurrent rebuild does not change what is tested.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, execFileSync } from "node:child_process";
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openVault } from "../src/config/open-vault.js";

const ROOT = new URL("..", import.meta.url).pathname;
const COPY = mkdtempSync("/tmp/fca-dist-");
cpSync(join(ROOT, "dist"), join(COPY, "dist"), { recursive: true });
cpSync(join(ROOT, "package.json"), join(COPY, "package.json"));
symlinkSync(join(ROOT, "node_modules"), join(COPY, "node_modules"));
symlinkSync(join(ROOT, "native"), join(COPY, "native"));
const BIN = join(COPY, "dist/bin/lessor.cjs");
const scratch: string[] = [COPY];
process.on("exit", () => { for (const d of scratch) rmSync(d, { recursive: true, force: true }); });

const ROOTED = process.getuid?.() === 0;
const NOBODY = 65534;
const skipNoRoot = ROOTED ? false : "needs root to act as another uid (nobody)";

interface R { code: number | null; signal: string | null; stdout: string; stderr: string; ms: number }
function cli(args: string[], env: Record<string, string>, timeoutMs = 15_000): Promise<R> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const c = spawn(process.execPath, ["--", BIN, ...args], { env: { PATH: process.env.PATH ?? "", HOME: "/tmp", NO_COLOR: "1", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    c.stdout.on("data", (d) => (out += d));
    c.stderr.on("data", (d) => (err += d));
    const timer = setTimeout(() => c.kill("SIGKILL"), timeoutMs);
    c.on("close", (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout: out, stderr: err, ms: Date.now() - t0 }); });
  });
}

const POLICY = `[[rule]]\nname = "g"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["tok"]\ndomains = ["api.example.com"]\n`;
const CANARY = "canary-VALUE-7f3a9c1e";

async function home(): Promise<string> {
  const dir = mkdtempSync("/tmp/fca-h-");
  scratch.push(dir);
  const h = join(dir, "home");
  const r = await cli(["init"], { LESSOR_HOME: h });
  assert.equal(r.code, 0, r.stderr);
  const s = await cli(["secret", "set", "tok", "--from-stdin"], { LESSOR_HOME: h });
  void s;
  return h;
}
async function seeded(): Promise<string> {
  const h = await home();
  writeFileSync(join(h, "policy.toml"), POLICY, { mode: 0o600 });
  const r = await new Promise<R>((resolve) => {
    const c = spawn(process.execPath, ["--", BIN, "secret", "set", "tok"], { env: { PATH: process.env.PATH ?? "", HOME: "/tmp", LESSOR_HOME: h }, stdio: ["pipe", "pipe", "pipe"] });
    let out = "", err = "";
    c.stdout.on("data", (d) => (out += d));
    c.stderr.on("data", (d) => (err += d));
    c.on("close", (code, signal) => resolve({ code, signal, stdout: out, stderr: err, ms: 0 }));
    c.stdin.end(CANARY);
  });
  assert.equal(r.code, 0, r.stderr);
  return h;
}
const lease = (h: string, extra: Record<string, string> = {}) => cli(["lease", "tok", "--agent", "claude", "--domain", "api.example.com"], { LESSOR_HOME: h, ...extra });

test("baseline: a private policy grants the lease (so the refusals below are meaningful)", async () => {
  const h = await seeded();
  const r = await lease(h);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stdout.includes(CANARY));
});

test("a group/world-writable policy.toml is never loaded: no grant comes from a file other users can write", { skip: skipNoRoot }, async () => {
  const h = await seeded();
  chmodSync(join(h, "policy.toml"), 0o666);
  const r = await lease(h);
  assert.notEqual(r.code, 0, `lease granted from a 0666 policy: ${r.stdout}`);
  assert.ok(!r.stdout.includes(CANARY));
});

test("a policy.toml that is a symlink to another user's file is never loaded", { skip: skipNoRoot }, async () => {
  const h = await seeded();
  const dir = mkdtempSync("/tmp/fca-evil-");
  scratch.push(dir);
  chmodSync(dir, 0o755);
  const evil = join(dir, "policy.toml");
  writeFileSync(evil, POLICY);
  chownSync(evil, NOBODY, NOBODY);
  unlinkSync(join(h, "policy.toml"));
  symlinkSync(evil, join(h, "policy.toml"));
  const r = await lease(h);
  assert.notEqual(r.code, 0, `lease granted from nobody's policy file: ${r.stdout}`);
  assert.ok(!r.stdout.includes(CANARY));
});

test("[policy] file naming a file another user owns (absolute path) is never loaded", { skip: skipNoRoot }, async () => {
  const h = await seeded();
  const dir = mkdtempSync("/tmp/fca-evil-");
  scratch.push(dir);
  chmodSync(dir, 0o755);
  const evil = join(dir, "p.toml");
  writeFileSync(evil, POLICY, { mode: 0o644 });
  chownSync(evil, NOBODY, NOBODY);
  writeFileSync(join(h, "lessor.toml"), `[policy]\nfile = "${evil}"\n`, { mode: 0o600 });
  const r = await lease(h);
  assert.notEqual(r.code, 0, `lease granted from nobody's policy file: ${r.stdout}`);
});

test("a policy.toml that is a fifo never hangs a command: it is refused within seconds", async () => {
  const h = await seeded();
  unlinkSync(join(h, "policy.toml"));
  execFileSync("mkfifo", ["-m", "600", join(h, "policy.toml")]);
  const r = await lease(h, {});
  assert.ok(r.signal === null, `lessor lease hung on a fifo policy and was killed after ${r.ms} ms`);
  assert.notEqual(r.code, 0);
});

test("a policy.toml that is a directory: the grant is refused with a message naming the file", async () => {
  const h = await seeded();
  unlinkSync(join(h, "policy.toml"));
  mkdirSync(join(h, "policy.toml"));
  const r = await lease(h);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /policy/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, "a stack trace");
});

test("policy.toml with duplicate keys, wrong types, unknown fields, deep nesting: denied, file named, no stack", async () => {
  const h = await seeded();
  for (const bad of [
    POLICY + `name = "again"\n`,
    POLICY.replace(`name = "g"`, `name = 5`),
    POLICY + `ttls = "1h"\n`,
    `x = ${"[".repeat(5000)}${"]".repeat(5000)}\n`,
  ]) {
    writeFileSync(join(h, "policy.toml"), bad, { mode: 0o600 });
    const r = await lease(h);
    assert.notEqual(r.code, 0, bad.slice(0, 60));
    assert.ok(!r.stdout.includes(CANARY));
    assert.doesNotMatch(r.stderr, /\n\s+at /, "a stack trace");
  }
});

test("a huge (100 MB) policy.toml does not hang or crash the CLI: refused within 20 s", async () => {
  const h = await seeded();
  writeFileSync(join(h, "policy.toml"), "#".repeat(100 * 1024 * 1024) + "\n" + POLICY, { mode: 0o600 });
  const r = await cli(["lease", "tok", "--agent", "claude", "--domain", "api.example.com"], { LESSOR_HOME: h }, 20_000);
  assert.ok(r.signal === null, `killed after ${r.ms} ms`);
  assert.doesNotMatch(r.stderr, /\n\s+at |heap out of memory/);
});

test("a group/world-writable lessor.toml is refused (whoever writes it picks the key command, identities, hooks)", { skip: skipNoRoot }, async () => {
  const h = await seeded();
  chmodSync(join(h, "lessor.toml"), 0o666);
  const r = await lease(h);
  assert.notEqual(r.code, 0, "lessor.toml mode 0666 was used");
  assert.match(r.stderr, /lessor\.toml/);
});

test("a lessor.toml that is a symlink to another user's file is refused", { skip: skipNoRoot }, async () => {
  const h = await seeded();
  const dir = mkdtempSync("/tmp/fca-evil-");
  scratch.push(dir);
  chmodSync(dir, 0o755);
  const evil = join(dir, "lessor.toml");
  writeFileSync(evil, `[[identity]]\nuid = ${NOBODY}\nrole = "admin"\n`);
  chownSync(evil, NOBODY, NOBODY);
  unlinkSync(join(h, "lessor.toml"));
  symlinkSync(evil, join(h, "lessor.toml"));
  const r = await lease(h);
  assert.notEqual(r.code, 0, "nobody's lessor.toml was used");
});

test("a lessor.toml that is a fifo never hangs a command", async () => {
  const h = await seeded();
  unlinkSync(join(h, "lessor.toml"));
  execFileSync("mkfifo", ["-m", "600", join(h, "lessor.toml")]);
  const r = await cli(["status"], { LESSOR_HOME: h }, 10_000);
  assert.ok(r.signal === null, `lessor status hung on a fifo lessor.toml, killed after ${r.ms} ms`);
  assert.notEqual(r.code, 0);
});

test("a lessor.toml that is a directory is refused with a clear message naming it, no stack", async () => {
  const h = await seeded();
  unlinkSync(join(h, "lessor.toml"));
  mkdirSync(join(h, "lessor.toml"));
  const r = await cli(["status"], { LESSOR_HOME: h });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /lessor\.toml/);
  assert.doesNotMatch(r.stderr, /\n\s+at |internal/);
});

test("lessor.toml unknown fields, wrong types, duplicate keys: refused naming the file and field", async () => {
  const h = await seeded();
  for (const [bad, want] of [
    [`[vault]\nciphr = "x"\n`, /ciphr/],
    [`[server]\nmax_connections = "many"\n`, /max_connections/],
    [`[vault]\nkeep_versions = 3\nkeep_versions = 4\n`, /lessor\.toml/],
  ] as const) {
    writeFileSync(join(h, "lessor.toml"), bad, { mode: 0o600 });
    const r = await cli(["status"], { LESSOR_HOME: h });
    assert.notEqual(r.code, 0, bad);
    assert.match(r.stderr, want);
    assert.match(r.stderr, /lessor\.toml/);
  }
});

test("the JSONL audit file is 0600 and owned by the vault's user even when another user pre-created it wide", { skip: skipNoRoot }, async () => {
  const h = await seeded();
  const dir = mkdtempSync("/tmp/fca-log-");
  scratch.push(dir);
  chmodSync(dir, 0o755);
  const path = join(dir, "audit.jsonl");
  writeFileSync(path, "");
  chmodSync(path, 0o666);
  chownSync(path, NOBODY, NOBODY);
  writeFileSync(join(h, "lessor.toml"), `[audit]\njsonl = "${path}"\n`, { mode: 0o600 });
  const r = await lease(h);
  const st = statSync(path);
  const wrote = readFileSync(path, "utf8").length > 0;
  assert.ok(!(r.code === 0 && wrote && (st.uid !== 0 || (st.mode & 0o077) !== 0)),
    `audit events appended to a file of uid ${st.uid} mode ${(st.mode & 0o777).toString(8)} that another user can read and rewrite`);
});

test("the JSONL audit path is never followed through a symlink another user planted", { skip: skipNoRoot }, async () => {
  const h = await seeded();
  const dir = mkdtempSync("/tmp/fca-log-");
  scratch.push(dir);
  chmodSync(dir, 0o1777);
  const victim = join(mkdtempSync("/tmp/fca-victim-"), "victim");
  scratch.push(join(victim, ".."));
  writeFileSync(victim, "precious\n", { mode: 0o600 });
  const link = join(dir, "audit.jsonl");
  spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "ln", "-s", victim, link]);
  assert.equal(statSync(link).isFile(), true);
  writeFileSync(join(h, "lessor.toml"), `[audit]\njsonl = "${link}"\n`, { mode: 0o600 });
  await lease(h);
  assert.equal(readFileSync(victim, "utf8"), "precious\n", "lessor appended audit lines to the file nobody's symlink points at");
});

test("the JSONL audit file deleted while a vault is open: later audited ops fail closed or land at the path", async () => {
  const h = await seeded();
  writeFileSync(join(h, "lessor.toml"), `[audit]\njsonl = "audit.jsonl"\n`, { mode: 0o600 });
  const vault = await openVault({ home: h, env: { LESSOR_HOME: h } });
  try {
    const admin = vault.admin();
    await admin.storeSecret({ name: "a", value: Buffer.from("x") });
    assert.ok(readFileSync(join(h, "audit.jsonl"), "utf8").includes('"secret_stored"') || readFileSync(join(h, "audit.jsonl"), "utf8").length > 0);
    unlinkSync(join(h, "audit.jsonl"));
    let failed = false;
    try { await admin.storeSecret({ name: "b", value: Buffer.from("y") }); } catch { failed = true; }
    const there = existsSync(join(h, "audit.jsonl")) && readFileSync(join(h, "audit.jsonl"), "utf8").includes("global/b");
    assert.ok(failed || there, "the write succeeded and its audit line went to a deleted file: lost from the mirror, silently");
  } finally {
    await vault.close();
  }
});

test("LESSOR_DATABASE_URL's password is never printed (status, lease, serve)", async () => {
  const h = await home();
  writeFileSync(join(h, "lessor.toml"), `[vault]\nstore = "postgres"\n`, { mode: 0o600 });
  const pw = "Pw-CANARY-91b2";
  for (const url of [`postgres://lessor:${pw}@127.0.0.1:1/db`, `postgres://postgres:${pw}@127.0.0.1:5432/nosuchdb_fca`, `postgresql://u:${pw}@[::1:bad/db`]) {
    for (const args of [["status"], ["status", "--json"], ["secret", "list"], ["serve"]]) {
      const r = await cli(args, { LESSOR_HOME: h, LESSOR_DATABASE_URL: url }, 15_000);
      assert.ok(!r.stdout.includes(pw) && !r.stderr.includes(pw), `${args.join(" ")} printed the password: ${r.stderr.slice(0, 300)}`);
    }
  }
});

test("[vault] database_url's password is never printed (bad value or unreachable server)", async () => {
  const h = await home();
  const pw = "Pw-CANARY-2c4d";
  for (const url of [`postgres://lessor:${pw}@127.0.0.1:1/db`, `mysql://u:${pw}@h/db`]) {
    writeFileSync(join(h, "lessor.toml"), `[vault]\nstore = "postgres"\ndatabase_url = "${url}"\n`, { mode: 0o600 });
    const r = await cli(["status"], { LESSOR_HOME: h });
    assert.notEqual(r.code, 0);
    assert.ok(!r.stdout.includes(pw) && !r.stderr.includes(pw), r.stderr);
  }
});

test("LESSOR_HOME at another user's directory, at a file, or through another user's symlink is refused", { skip: skipNoRoot }, async () => {
  const h = await seeded();
  const dir = mkdtempSync("/tmp/fca-other-");
  scratch.push(dir);
  chmodSync(dir, 0o755);
  const theirs = join(dir, "theirs");
  cpSync(h, theirs, { recursive: true });
  execFileSync("chown", ["-R", `${NOBODY}:${NOBODY}`, theirs]);
  let r = await lease(theirs);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /uid 65534|owned|belongs/);
  const file = join(dir, "afile");
  writeFileSync(file, "x");
  r = await cli(["status"], { LESSOR_HOME: file });
  assert.notEqual(r.code, 0);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
  // a symlink of nobody's in the middle of the way to the real (root's) home
  const mid = join(dir, "mid");
  symlinkSync(join(h, ".."), mid);
  execFileSync("chown", ["-h", `${NOBODY}:${NOBODY}`, mid]);
  r = await lease(join(mid, "home"));
  assert.notEqual(r.code, 0, "a home reached through nobody's symlink was opened");
  assert.match(r.stderr, /65534/);
});

// ---- the daemon lock ----
function serve(h: string): Promise<{ proc: ReturnType<typeof spawn>; ready: boolean; err: () => string; exit: Promise<number | null> }> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, ["--", BIN, "serve"], { env: { PATH: process.env.PATH ?? "", HOME: "/tmp", LESSOR_HOME: h }, stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    let done = false;
    const exit = new Promise<number | null>((r) => proc.on("exit", (c) => r(c)));
    proc.stderr!.on("data", (d) => {
      err += d;
      if (!done && err.includes("lessor daemon ready")) { done = true; resolve({ proc, ready: true, err: () => err, exit }); }
    });
    void exit.then(() => { if (!done) { done = true; resolve({ proc, ready: false, err: () => err, exit }); } });
    setTimeout(() => { if (!done) { done = true; resolve({ proc, ready: false, err: () => err, exit }); } }, 20_000);
  });
}

test("two lessor serve on one home: the second is refused naming the first's pid", async () => {
  const h = await seeded();
  const a = await serve(h);
  assert.ok(a.ready, a.err());
  try {
    const b = await serve(h);
    assert.equal(b.ready, false);
    assert.match(b.err(), new RegExp(`pid ${a.proc.pid}`));
  } finally {
    a.proc.kill("SIGTERM");
    await a.exit;
  }
});

test("a stale lock (dead pid) and a lock naming an unrelated live process are recovered", async () => {
  const h = await seeded();
  writeFileSync(join(h, "lessor.pid"), "2147483000\nstart=1\nstarted=x\n", { mode: 0o600 });
  let d = await serve(h);
  assert.ok(d.ready, d.err());
  d.proc.kill("SIGTERM");
  await d.exit;
  // pid 1 is alive but is not the process that took the lock (its start time differs)
  writeFileSync(join(h, "lessor.pid"), "1\nstart=999999999\nstarted=x\n", { mode: 0o600 });
  d = await serve(h);
  assert.ok(d.ready, d.err());
  d.proc.kill("SIGTERM");
  await d.exit;
});

test("policy reload (SIGHUP) of a bad file never crashes the daemon and puts deny-all in force", async () => {
  const h = await seeded();
  const d = await serve(h);
  assert.ok(d.ready, d.err());
  try {
    const sock = join(h, "lessor.sock");
    let r = await lease(h);
    assert.equal(r.code, 0, r.stderr);
    for (const bad of ["[[rule]]\nname = 5\n", `x = ${"[".repeat(5000)}${"]".repeat(5000)}\n`]) {
      writeFileSync(join(h, "policy.toml"), bad, { mode: 0o600 });
      d.proc.kill("SIGHUP");
      await new Promise((s) => setTimeout(s, 500));
      assert.equal(d.proc.exitCode, null, "the daemon died on a bad reload");
      r = await lease(h);
      assert.notEqual(r.code, 0, "a grant after a bad reload");
    }
    // a world-writable file with a valid grant, reloaded: still deny
    writeFileSync(join(h, "policy.toml"), POLICY, { mode: 0o600 });
    chmodSync(join(h, "policy.toml"), 0o666);
    d.proc.kill("SIGHUP");
    await new Promise((s) => setTimeout(s, 500));
    assert.equal(d.proc.exitCode, null);
    r = await lease(h);
    assert.notEqual(r.code, 0, "the daemon reloaded a 0666 policy and granted from it");
    void sock;
  } finally {
    d.proc.kill("SIGTERM");
    await d.exit;
  }
});
