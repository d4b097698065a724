/**
 * Attack pass on where the master key comes from (src/crypto/keys/, src/vault/key-reload.ts): the
 * environment (LESSOR_MASTER_KEY, LESSOR_MASTER_KEY_PREVIOUS), the passphrase key store, the key file,
 * the key command (`[keys] command`, `command_timeout`), `lessor init --key-source`, `lessor key rotate`
 * and `lessor status`. Attackers: another local user (uid 65534 through chown), a hostile or sloppy key
 * command, an admin following docs/crypto.md and docs/cli/admin.md literally, a rotation cut short.
 *
 * The CLI runs from source (`node --import tsx src/cli/main.ts`), so what is tested is the code in this
 * checkout and a concurrent rebuild of dist/ changes nothing here. Key commands are small sh scripts
 * written into temporary directories. Keys are canaries: every output and file is searched for any
 * 16-character window of their hex (and for their raw bytes in files).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import { initHome, openVault } from "../src/config/open-vault.js";
import { fileKeySource } from "../src/crypto/keys/file.js";
import { commandKeySource } from "../src/crypto/keys/command.js";
import { passphraseKeySource, TEST_ARGON2_PARAMS } from "../src/crypto/keys/passphrase.js";
import { keyIdOf } from "../src/crypto/keyring.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { Vault } from "../src/vault/vault.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const TSX = pathToFileURL(join(ROOT, "node_modules/tsx/dist/loader.mjs")).href;
const MAIN = join(ROOT, "src/cli/main.ts");
const ROOTED = process.getuid?.() === 0;
const NOBODY = 65534;
const skipNoRoot = ROOTED ? false : "needs root to act as another uid (nobody)";

const scratch: string[] = [];
process.on("exit", () => {
  for (const d of scratch) rmSync(d, { recursive: true, force: true });
});
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), "ksa-"));
  scratch.push(d);
  return d;
}

interface R {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs `lessor <args>` from source with exactly PATH, HOME, NO_COLOR and `env`. */
function cli(args: string[], env: Record<string, string>, o: { cwd?: string; input?: string; stdinFd?: number; timeoutMs?: number } = {}): Promise<R> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const c = spawn(process.execPath, ["--import", TSX, MAIN, ...args], {
      cwd: o.cwd ?? "/",
      env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: "/tmp", NO_COLOR: "1", ...env },
      stdio: [o.stdinFd ?? "pipe", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    c.stdout!.on("data", (d: Buffer) => (out += d.toString("utf8")));
    c.stderr!.on("data", (d: Buffer) => (err += d.toString("utf8")));
    const timer = setTimeout(() => c.kill("SIGKILL"), o.timeoutMs ?? 30_000);
    c.on("error", reject);
    c.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: out, stderr: err, ms: Date.now() - t0 });
    });
    if (c.stdin) {
      c.stdin.on("error", () => {});
      c.stdin.end(o.input ?? "");
    }
  });
}

const hex = (): string => randomBytes(32).toString("hex");
const idOf = (h: string): string => keyIdOf(Buffer.from(h, "hex"));
const show = (r: R): string => `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;

/** Fails when `text` holds any 16-character window of a key's hex (either case). */
function assertNoKey(text: string, keys: readonly string[], where: string): void {
  const t = text.toLowerCase();
  for (const k of keys) {
    const lk = k.toLowerCase();
    for (let i = 0; i + 16 <= lk.length; i++) assert.ok(!t.includes(lk.slice(i, i + 16)), `${where} holds part of a master key: …${lk.slice(i, i + 16)}…`);
  }
}

/** Fails when a file under `dir` holds a key as hex or as raw bytes (whole or either half). */
function assertNoKeyInFiles(dir: string, keys: readonly string[]): void {
  const walk = (d: string): string[] => readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(d, e.name)) : e.isFile() ? [join(d, e.name)] : []));
  for (const f of walk(dir)) {
    const bytes = readFileSync(f);
    assertNoKey(bytes.toString("latin1"), keys, f);
    for (const k of keys) {
      const raw = Buffer.from(k, "hex");
      for (const part of [raw, raw.subarray(0, 16), raw.subarray(16)]) assert.equal(bytes.indexOf(part), -1, `${f} holds raw bytes of a master key`);
    }
  }
}

/** A refusal as the CLI should give one: exit 1 (a key error), a message on stderr, no stack trace, no internal error, no key. */
function assertKeyRefusal(r: R, message: RegExp, keys: readonly string[], where: string): void {
  assert.equal(r.code, 1, `${where}: ${show(r)}`);
  assert.match(r.stderr, message, `${where}: ${show(r)}`);
  assert.doesNotMatch(r.stderr, /internal error|^\s+at /m, `${where}: ${show(r)}`);
  assertNoKey(r.stdout + r.stderr, keys, where);
}

function writePrivate(path: string, text: string): void {
  writeFileSync(path, text, { mode: 0o600 });
  chmodSync(path, 0o600);
}

/** A key command: an sh script at `path` with `body`, mode `mode`. */
function script(path: string, body: string, mode = 0o700): string {
  writeFileSync(path, `#!/bin/sh\n${body}\n`);
  chmodSync(path, mode);
  return path;
}

const toml = (argv: string[], extra = ""): string => `[keys]\ncommand = ${JSON.stringify(argv)}\n${extra}`;

/** A home made with `lessor init` (the key file). */
async function fileHome(): Promise<string> {
  const h = join(tmp(), "h");
  const r = await cli(["init"], { LESSOR_HOME: h });
  assert.equal(r.code, 0, show(r));
  return h;
}

/** A home made with `lessor init --key-source env` with `key`; `config` is its lessor.toml, written first. */
async function envHome(key: string, config?: string): Promise<string> {
  const h = join(tmp(), "h");
  if (config !== undefined) {
    mkdirSync(h, { mode: 0o700 });
    writePrivate(join(h, "lessor.toml"), config);
  }
  const r = await cli(["init", "--key-source", "env"], { LESSOR_HOME: h, LESSOR_MASTER_KEY: key });
  assert.equal(r.code, 0, show(r));
  assert.ok(!existsSync(join(h, "master.key")));
  return h;
}

async function setSecret(h: string, name: string, value: string, env: Record<string, string> = {}): Promise<R> {
  return cli(["secret", "set", name], { LESSOR_HOME: h, ...env }, { input: value });
}

const keysInFile = (h: string): string[] => (JSON.parse(readFileSync(join(h, "master.key"), "utf8")) as { keys: string[] }).keys;

/** Rows of the home's database (read-only; no lessor process may be running). */
function rows<T>(h: string, sql: string): T[] {
  const db = new Database(join(h, "lessor.db"), { readonly: true, fileMustExist: true });
  try {
    return db.prepare(sql).all() as T[];
  } finally {
    db.close();
  }
}
const versionKeys = (h: string): { name: string; key_id: string }[] => rows(h, "SELECT s.name AS name, v.key_id AS key_id FROM secret_versions v JOIN secrets s ON s.id = v.secret ORDER BY s.name");

// ---------------------------------------------------------------------------------------------------
// Key material never leaks

test("a malformed LESSOR_MASTER_KEY or LESSOR_MASTER_KEY_PREVIOUS, a key file with one wrong character and a key that does not open the vault: exit 1 naming the variable or file, never echoing any key", async () => {
  const h = await fileHome();
  assert.equal((await setSecret(h, "a", "v")).code, 0);
  const k = keysInFile(h)[0]!;
  const other = hex();
  const home = { LESSOR_HOME: h };

  assertKeyRefusal(await cli(["status"], { ...home, LESSOR_MASTER_KEY: `${k.slice(0, 63)}g` }), /LESSOR_MASTER_KEY must be exactly 64 hex characters/, [k], "one wrong character");
  assertKeyRefusal(await cli(["status"], { ...home, LESSOR_MASTER_KEY: `${k}0` }), /LESSOR_MASTER_KEY must be exactly 64 hex characters/, [k], "one character too many");
  assertKeyRefusal(
    await cli(["status"], { ...home, LESSOR_MASTER_KEY: k, LESSOR_MASTER_KEY_PREVIOUS: `${other},${other.slice(0, 63)}z` }),
    /LESSOR_MASTER_KEY_PREVIOUS entry 2 is not 64 hex characters/,
    [k, other],
    "a bad previous entry",
  );
  assertKeyRefusal(
    await cli(["status"], { ...home, LESSOR_MASTER_KEY: other }),
    /the master key from environment variable LESSOR_MASTER_KEY does not match this vault/,
    [k, other],
    "a key that does not open the vault",
  );

  const file = join(h, "master.key");
  const good = readFileSync(file, "utf8");
  writePrivate(file, good.replace(k, `${k.slice(0, 40)}g${k.slice(41)}`));
  assertKeyRefusal(await cli(["status"], home), new RegExp(`the key file ${file} is not a valid lessor key file \\(every key must be 64 hex characters\\); restore it from your backup`), [k], "key file, one non-hex character");
  const flipped = `${k.slice(0, 40)}${k[40] === "0" ? "1" : "0"}${k.slice(41)}`;
  writePrivate(file, good.replace(k, flipped));
  assertKeyRefusal(await cli(["status"], home), new RegExp(`the master key from key file ${file} does not match this vault`), [k, flipped], "key file, one hex digit changed");
  writePrivate(file, good);
  assert.equal((await cli(["status"], home)).code, 0);
});

test("the passphrase store: a wrong passphrase, a truncated or a doubled keystore.json are refused naming the store, never echoing the passphrase or a key; an older copy put back after a rotation is refused", async () => {
  const h = join(tmp(), "h");
  const pass = "correct-horse-CANARY-3b1f";
  await initHome({ home: h, env: { LESSOR_HOME: h }, keySource: "passphrase", passphrase: pass, argon2: TEST_ARGON2_PARAMS });
  const store = join(h, "keystore.json");
  const ring = await passphraseKeySource(store, async () => pass).load();
  const k = ring.current.key.toString("hex");
  ring.wipe();
  const env = { LESSOR_HOME: h, LESSOR_PASSPHRASE: pass };
  assert.equal((await setSecret(h, "a", "v", env)).code, 0);

  const wrong = await cli(["status"], { ...env, LESSOR_PASSPHRASE: `${pass}x` });
  assertKeyRefusal(wrong, new RegExp(`the passphrase is wrong, or ${store} was altered`), [k], "wrong passphrase");
  assert.ok(!(wrong.stdout + wrong.stderr).includes("CANARY-3b1f"), show(wrong));

  const good = readFileSync(store, "utf8");
  for (const [what, text] of [["truncated", good.slice(0, Math.floor(good.length / 2))], ["doubled", good + good]] as const) {
    writePrivate(store, text);
    const r = await cli(["status"], env);
    assertKeyRefusal(r, new RegExp(`the passphrase key store ${store} is not a valid lessor key store \\(it is not JSON\\); restore it from your backup`), [k], what);
    assert.ok(!(r.stdout + r.stderr).includes("CANARY-3b1f"), show(r));
  }
  writePrivate(store, good);

  const rot = await cli(["key", "rotate", "--json"], env);
  assert.equal(rot.code, 0, show(rot));
  const to = (JSON.parse(rot.stdout) as { to: string }).to;
  const rotated = readFileSync(store, "utf8");
  writePrivate(store, good); // the copy from before the rotation, put back
  const auditBefore = rows<{ n: number }>(h, "SELECT count(*) AS n FROM audit")[0]!.n;
  assertKeyRefusal(await cli(["status"], env), new RegExp(`passphrase key store ${store} does not match this vault \\(it needs key ${to}`), [k], "an older keystore.json");
  assert.notEqual((await setSecret(h, "b", "v", env)).code, 0);
  assert.equal(rows<{ n: number }>(h, "SELECT count(*) AS n FROM audit")[0]!.n, auditBefore, "nothing was written with the rolled-back store");
  writePrivate(store, rotated);
  assert.equal((await cli(["audit", "verify"], env)).code, 0);
});

test("no master key, as hex or raw bytes, in any output, audit event or file of the home (LESSOR_MASTER_KEY and LESSOR_MASTER_KEY_PREVIOUS): status, status --json, secrets, audit, key rotate", async () => {
  const k1 = hex();
  const k2 = hex();
  const h = await envHome(k1);
  const outs: R[] = [];
  const run = async (args: string[], env: Record<string, string>, input?: string): Promise<R> => {
    const r = await cli(args, { LESSOR_HOME: h, ...env }, input === undefined ? {} : { input });
    outs.push(r);
    assert.equal(r.code, 0, `${args.join(" ")}: ${show(r)}`);
    return r;
  };
  const one = { LESSOR_MASTER_KEY: k1 };
  const two = { LESSOR_MASTER_KEY: k2, LESSOR_MASTER_KEY_PREVIOUS: k1 };
  await run(["secret", "set", "a"], one, "value-a");
  const st = JSON.parse((await run(["status", "--json"], two)).stdout) as { keySource: string; keyIds: string[] };
  assert.equal(st.keySource, "environment variable LESSOR_MASTER_KEY");
  assert.deepEqual(st.keyIds, [idOf(k2), idOf(k1)]);
  await run(["status"], two);
  await run(["key", "rotate", "--json"], two);
  await run(["secret", "set", "b"], two, "value-b");
  await run(["secret", "get", "a", "--reveal"], { LESSOR_MASTER_KEY: k2 });
  await run(["audit", "tail", "--json", "-n", "100"], { LESSOR_MASTER_KEY: k2 });
  await run(["audit", "verify", "--json"], { LESSOR_MASTER_KEY: k2 });
  await run(["policy", "explain", "--agent", "x", "--secret", "a", "--json"], { LESSOR_MASTER_KEY: k2 });
  outs.forEach((r, i) => assertNoKey(r.stdout + r.stderr, [k1, k2], `output ${i}`));
  assertNoKeyInFiles(h, [k1, k2]);
});

test("the key command: an error names its program only, never its arguments (they may hold tokens) nor anything it printed on stdout or stderr, whatever it prints; CRLF and surrounding blanks are accepted", async () => {
  const k = hex();
  const d = tmp();
  const prog = join(d, "getkey");
  script(prog, `echo ${k}`);
  const h = await envHome(k, toml([prog, "--token=ARG-CANARY-77"]));
  const env = { LESSOR_HOME: h };
  const canaries = (r: R, where: string): void => {
    assertNoKey(r.stdout + r.stderr, [k], where);
    assert.ok(!/ARG-CANARY|hunter2/.test(r.stdout + r.stderr), `${where}: ${show(r)}`);
  };

  const ok = await cli(["status", "--json"], env);
  assert.equal(ok.code, 0, show(ok));
  assert.equal((JSON.parse(ok.stdout) as { keySource: string }).keySource, `key command ${JSON.stringify(prog)}`);
  canaries(ok, "status --json");
  const okText = await cli(["status"], env);
  assert.equal(okText.code, 0, show(okText));
  canaries(okText, "status");

  script(prog, `printf '  ${k}  \\r\\n'`);
  assert.equal((await cli(["status"], env)).code, 0, "a CRLF line with blanks around the key is read");

  const cases: [string, string, RegExp][] = [
    ["the key, then a second line", `echo ${k}; echo "Password: hunter2"`, /did not print keys in the expected form/],
    ["the key on stdout and stderr, then exit 3", `echo ${k}; echo ${k} hunter2 >&2; exit 3`, /failed with exit code 3; run it yourself to see why/],
    ["the key on stderr only", `echo ${k} >&2`, /did not print keys in the expected form/],
    ["the key 20,000 times (1.3 MB)", `i=0; while [ $i -lt 20000 ]; do echo ${k}; i=$((i+1)); done`, /printed more than 64 KiB/],
    ["nothing, exit 0", `exit 0`, /did not print keys in the expected form/],
    ["the key with a letter too many", `echo ${k}a`, /did not print keys in the expected form/],
  ];
  for (const [what, body, msg] of cases) {
    script(prog, body);
    const r = await cli(["status"], env);
    assertKeyRefusal(r, msg, [k], what);
    assert.match(r.stderr, new RegExp(`the key command ${JSON.stringify(prog).replace(/[/.]/g, "\\$&")}`), `${what}: the program is named`);
    canaries(r, what);
  }
});

test("the key command gets none of lessor's descriptors (the database, its journal) and never lessor's stdin (a secret piped to secret set)", async () => {
  const k = hex();
  const d = tmp();
  const prog = join(d, "getkey");
  script(prog, `for f in /proc/$$/fd/*; do echo "$f $(readlink $f)"; done > ${d}/fds.txt\ntimeout 0.5 cat > ${d}/stdin.txt\necho ${k}`);
  const h = await envHome(k, toml([prog]));
  const input = join(d, "in.txt");
  writeFileSync(input, "STDIN-CANARY-5d2e", { mode: 0o600 });
  const fd = openSync(input, "r");
  let r: R;
  try {
    r = await cli(["secret", "set", "x"], { LESSOR_HOME: h }, { stdinFd: fd });
  } finally {
    closeSync(fd);
  }
  assert.equal(r.code, 0, show(r));
  const fds = readFileSync(join(d, "fds.txt"), "utf8");
  assert.ok(!fds.includes(h), `the key command holds a descriptor of the home:\n${fds}`);
  assert.ok(!fds.includes(input), `the key command holds lessor's stdin:\n${fds}`);
  assert.equal(readFileSync(join(d, "stdin.txt"), "utf8"), "");
  const got = await cli(["secret", "get", "x", "--reveal"], { LESSOR_HOME: h });
  assert.equal(got.stdout.trim(), "STDIN-CANARY-5d2e", "lessor read its whole stdin itself");
});

test("the key command never gets lessor's own secrets in its environment (passphrase, token, database URL and password, other master keys); the rest of the environment reaches it", async () => {
  const k = hex();
  const d = tmp();
  const prog = script(join(d, "getkey"), `env > ${d}/env.txt\necho ${k}`);
  const secrets = {
    LESSOR_MASTER_KEY_PREVIOUS: hex(),
    LESSOR_PASSPHRASE: "pass-canary-7f3a",
    LESSOR_TOKEN: "lsr_0123456789abcdef_tokcanary",
    LESSOR_DATABASE_URL: "postgres://u:dbpw-canary@db.invalid/x",
    LESSOR_MIGRATE_TO: "postgres://u:migpw-canary@db.invalid/x",
    PGPASSWORD: "pgpw-canary",
  };
  const ring = await commandKeySource([prog], { env: { PATH: process.env.PATH ?? "", KMS_PROFILE: "prod", ...secrets } }).load();
  ring.wipe();
  const seen = readFileSync(join(d, "env.txt"), "utf8");
  for (const [name, value] of Object.entries(secrets)) assert.ok(!seen.includes(value) && !seen.includes(`${name}=`), `${name} reached the key command`);
  assert.match(seen, /^KMS_PROFILE=prod$/m, "the rest of the environment reaches it");
});

test("a key command that prints the key and exits 0, leaving a child that holds its stdout (an agent), is read at once, not after its time limit; the child is left running", async () => {
  const k = hex();
  const d = tmp();
  const prog = script(join(d, "getkey"), `echo ${k}\nsleep 30 &\necho $! > ${d}/agent.pid\nexit 0`);
  // Waited on, the child's stdout would hold status for the 20 s limit (or the child's 30 s): 15 s
  // apart from any slow start under load, and far from a read at once.
  const h = await envHome(k, toml([prog], 'command_timeout = "20s"\n'));
  const r = await cli(["status"], { LESSOR_HOME: h, LESSOR_MASTER_KEY: "" });
  const pid = Number(readFileSync(join(d, "agent.pid"), "utf8"));
  const alive = existsSync(`/proc/${pid}`);
  if (alive) process.kill(pid, "SIGKILL");
  assert.equal(r.code, 0, show(r));
  assert.ok(r.ms < 15_000, `status took ${r.ms} ms: the command's stdout held open by its child was waited on`);
  assert.ok(alive, "the child the command left is not killed on success");
});

test("the key command's time limit ends its whole process tree: a grandchild it started does not outlive the refusal", async () => {
  const k = hex();
  const d = tmp();
  const prog = script(join(d, "getkey"), `sleep 30 &\necho $! > ${d}/grandchild.pid\nsleep 30`);
  const h = await envHome(k, toml([prog], 'command_timeout = "1s"\n'));
  const r = await cli(["status"], { LESSOR_HOME: h });
  assertKeyRefusal(r, /did not finish within 1000 ms; raise command_timeout under \[keys\]/, [k], "a hanging key command");
  assert.ok(r.ms < 10_000, `the refusal took ${r.ms} ms`);
  const pid = Number(readFileSync(join(d, "grandchild.pid"), "utf8"));
  await new Promise((s) => setTimeout(s, 300));
  const alive = existsSync(`/proc/${pid}`) && readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith("sleep");
  if (alive) process.kill(pid, "SIGKILL");
  assert.ok(!alive, `the key command's child (pid ${pid}, sleep 30) still runs after lessor gave up on the command`);
});

test('command_timeout is honoured as written: "30d" is not turned into 1 ms (and the refusal then says to raise it)', async () => {
  const k = hex();
  const d = tmp();
  const prog = script(join(d, "getkey"), `sleep 0.3\necho ${k}`);
  const h = await envHome(k, toml([prog]));
  writePrivate(join(h, "lessor.toml"), toml([prog], 'command_timeout = "30d"\n'));
  const r = await cli(["status"], { LESSOR_HOME: h });
  assert.doesNotMatch(r.stderr, /TimeoutOverflowWarning|Timeout duration was set to 1/, show(r));
  // Either the value is used (the command answers in 0.3 s) or it is refused as a configuration error naming the field.
  assert.ok(r.code === 0 || (r.code === 2 && /\[keys\] command_timeout/.test(r.stderr)), show(r));
});

// ---------------------------------------------------------------------------------------------------
// Who may decide what the key command is

test("a relative [keys] command is never looked up in the caller's working directory: lessor run in a directory of another user's does not run their program", async () => {
  const k = hex();
  const h = await envHome(k, toml(["bin/getkey"]));
  mkdirSync(join(h, "bin"), { mode: 0o700 });
  script(join(h, "bin", "getkey"), `echo ${k}`);
  const marker = join(tmp(), "ran");
  const theirs = tmp();
  mkdirSync(join(theirs, "bin"));
  script(join(theirs, "bin", "getkey"), `touch ${marker}\necho ${"0".repeat(64)}`, 0o755);
  chmodSync(theirs, 0o755);
  if (ROOTED) for (const p of [theirs, join(theirs, "bin"), join(theirs, "bin", "getkey")]) chownSync(p, NOBODY, NOBODY);
  const r = await cli(["status"], { LESSOR_HOME: h }, { cwd: theirs });
  assert.ok(!existsSync(marker), `lessor ran ${theirs}/bin/getkey (the program of whoever owns the current directory) as the key command: ${show(r)}`);
  assertNoKey(r.stdout + r.stderr, [k], "status");
});

test("a key command that other users can write (the program 0777, its directory 0777, or found on PATH in a directory they can write) is refused, never run", async () => {
  const k = hex();
  const h = await envHome(k);
  const marker = join(tmp(), "ran");
  const body = `touch ${marker}\necho ${k}`;
  const wide = tmp();
  chmodSync(wide, 0o755);
  const wideProg = script(join(wide, "getkey"), body, 0o777);
  const openDir = tmp();
  chmodSync(openDir, 0o777);
  const inOpenDir = script(join(openDir, "getkey"), body, 0o755);
  const pathDir = tmp();
  chmodSync(pathDir, 0o777);
  script(join(pathDir, "ksa-getkey"), body, 0o755);
  const cases: [string, string[], Record<string, string>][] = [
    ["a program of mode 0777", [wideProg], {}],
    ["a program in a directory of mode 0777", [inOpenDir], {}],
    ["a program found on PATH in a directory of mode 0777", ["ksa-getkey"], { PATH: `${pathDir}:${process.env["PATH"] ?? "/usr/bin:/bin"}` }],
  ];
  const ran: string[] = [];
  for (const [what, argv, env] of cases) {
    writePrivate(join(h, "lessor.toml"), toml(argv));
    rmSync(marker, { force: true });
    const r = await cli(["status"], { LESSOR_HOME: h, ...env });
    if (existsSync(marker)) ran.push(`${what} ran (exit ${r.code})`);
    else assert.notEqual(r.code, 0, `${what}: ${show(r)}`);
    assertNoKey(r.stdout + r.stderr, [k], what);
  }
  assert.deepEqual(ran, [], "a key command other users can replace decides the master key and runs as the vault's owner");
});

test("a key command program owned by another user (uid 65534) is refused, never run", { skip: skipNoRoot }, async () => {
  const k = hex();
  const marker = join(tmp(), "ran");
  const dir = tmp();
  chmodSync(dir, 0o755);
  const prog = script(join(dir, "getkey"), `touch ${marker}\necho ${k}`, 0o755);
  chownSync(prog, NOBODY, NOBODY);
  const h = await envHome(k, toml([prog]));
  const r = await cli(["status"], { LESSOR_HOME: h });
  assert.ok(!existsSync(marker), `uid ${NOBODY}'s program ran as the key command: ${show(r)}`);
  assert.notEqual(r.code, 0, show(r));
});

// ---------------------------------------------------------------------------------------------------
// Which key seals new data

test("after a rotation, a process whose LESSOR_MASTER_KEY is the retired key (the new one in LESSOR_MASTER_KEY_PREVIOUS) writes under the key the store records, nothing under the retired one", async () => {
  const k1 = hex();
  const k2 = hex();
  const h = await envHome(k1);
  assert.equal((await setSecret(h, "a", "v1", { LESSOR_MASTER_KEY: k1 })).code, 0);
  const rot = await cli(["key", "rotate", "--json"], { LESSOR_HOME: h, LESSOR_MASTER_KEY: k2, LESSOR_MASTER_KEY_PREVIOUS: k1 });
  assert.equal(rot.code, 0, show(rot));
  assert.equal((JSON.parse(rot.stdout) as { to: string }).to, idOf(k2));
  const seqAfterRotation = rows<{ n: number }>(h, "SELECT max(seq) AS n FROM audit")[0]!.n;

  // The keys swapped back (a stale deployment, a restored environment file).
  const swapped = await setSecret(h, "b", "v2", { LESSOR_MASTER_KEY: k1, LESSOR_MASTER_KEY_PREVIOUS: k2 });
  assertNoKey(swapped.stdout + swapped.stderr, [k1, k2], "secret set");
  const underRetired = versionKeys(h).filter((v) => v.key_id === idOf(k1));
  const eventsUnderRetired = rows<{ seq: number }>(h, `SELECT seq FROM audit WHERE seq > ${seqAfterRotation} AND key_id = '${idOf(k1)}'`);
  const checkpoint = rows<{ key_id: string }>(h, "SELECT key_id FROM audit_checkpoint")[0]!.key_id;
  assert.deepEqual(
    { underRetired, eventsUnderRetired: eventsUnderRetired.length, checkpoint },
    { underRetired: [], eventsUnderRetired: 0, checkpoint: idOf(k2) },
    `the store names ${idOf(k2)} as the current key, yet the write went under the retired ${idOf(k1)} (${show(swapped)})`,
  );
  assert.equal(swapped.code, 0, show(swapped));
  assert.deepEqual(versionKeys(h).filter((v) => v.key_id === idOf(k2)).length, versionKeys(h).length, "every version (b included) is under the key the store records");
  // What the operator was told after the rotation ("drop the old key yourself") must still work.
  const after = await cli(["audit", "verify"], { LESSOR_HOME: h, LESSOR_MASTER_KEY: k2 });
  assert.equal(after.code, 0, show(after));
});

test("an older master.key put back after lessor key rotate is refused at open, naming the file and the key it needs; nothing is written with it", async () => {
  const h = await fileHome();
  assert.equal((await setSecret(h, "a", "v1")).code, 0);
  const file = join(h, "master.key");
  const old = keysInFile(h)[0]!;
  const backup = join(tmp(), "master.key.old");
  copyFileSync(file, backup);
  const rot = await cli(["key", "rotate", "--json"], { LESSOR_HOME: h });
  assert.equal(rot.code, 0, show(rot));
  const to = (JSON.parse(rot.stdout) as { to: string }).to;
  const rotated = readFileSync(file, "utf8");
  copyFileSync(backup, file);
  chmodSync(file, 0o600);
  const auditBefore = rows<{ n: number }>(h, "SELECT count(*) AS n FROM audit")[0]!.n;
  for (const args of [["status"], ["secret", "get", "a", "--reveal"], ["audit", "verify"]])
    assertKeyRefusal(await cli(args, { LESSOR_HOME: h }), new RegExp(`key file ${file} does not match this vault \\(it needs key ${to}`), [old], args.join(" "));
  const w = await setSecret(h, "b", "v2");
  assertKeyRefusal(w, /does not match this vault/, [old], "secret set");
  assert.equal(rows<{ n: number }>(h, "SELECT count(*) AS n FROM audit")[0]!.n, auditBefore);
  assert.deepEqual(versionKeys(h).map((v) => v.key_id), [to]);
  writePrivate(file, rotated);
  assert.equal((await cli(["audit", "verify"], { LESSOR_HOME: h })).code, 0);
});

test("LESSOR_MASTER_KEY_PREVIOUS with duplicates, the current key repeated, blanks and 500 keys: the vault opens in seconds, lists each key once, current first, and seals new data under LESSOR_MASTER_KEY only", async () => {
  const k = hex();
  const old = hex();
  const h = await envHome(k);
  const many = Array.from({ length: 500 }, hex);
  const previous = [old, old, ` ${k} `, "", old.toUpperCase(), ...many].join(",");
  const env = { LESSOR_HOME: h, LESSOR_MASTER_KEY: k, LESSOR_MASTER_KEY_PREVIOUS: previous };
  const st = await cli(["status", "--json"], env);
  assert.equal(st.code, 0, show(st));
  assert.ok(st.ms < 15_000, `status took ${st.ms} ms`);
  const ids = (JSON.parse(st.stdout) as { keyIds: string[] }).keyIds;
  assert.equal(ids[0], idOf(k));
  assert.equal(new Set(ids).size, ids.length, "each key once");
  assert.equal(ids.length, 502);
  assert.equal((await setSecret(h, "b", "v", { LESSOR_MASTER_KEY: k, LESSOR_MASTER_KEY_PREVIOUS: previous })).code, 0);
  assert.deepEqual(versionKeys(h), [{ name: "b", key_id: idOf(k) }]);
  assert.ok(rows<{ key_id: string }>(h, "SELECT DISTINCT key_id FROM audit").every((r) => r.key_id === idOf(k)));
  assertNoKey(st.stdout + st.stderr, [k, old, ...many.slice(0, 5)], "status --json");
});

// ---------------------------------------------------------------------------------------------------
// lessor key rotate and lessor init, as the docs say to use them

test("lessor key rotate with one key in LESSOR_MASTER_KEY rotates nothing, and the audit trail does not say the key was rotated", async () => {
  const k = hex();
  const h = await envHome(k);
  assert.equal((await setSecret(h, "a", "v", { LESSOR_MASTER_KEY: k })).code, 0);
  const r = await cli(["key", "rotate"], { LESSOR_HOME: h, LESSOR_MASTER_KEY: k });
  assert.match(r.stderr, /the key source holds only key [0-9a-f]{16}, so nothing was rotated/, show(r));
  assertNoKey(r.stdout + r.stderr, [k], "key rotate");
  const events = rows<{ type: string; outcome: string; detail: string }>(h, "SELECT type, outcome, detail FROM audit WHERE type IN ('key_rotation_started', 'key_rotated') AND outcome = 'ok'");
  assert.deepEqual(events, [], "an auditor reading the trail after a key exposure is told the key was rotated");
});

test("lessor init with LESSOR_MASTER_KEY set writes no key file that does not hold the vault's key (LESSOR_MASTER_KEY wins, so the vault is sealed under it)", async () => {
  const k = hex();
  const h = join(tmp(), "h");
  const init = await cli(["init"], { LESSOR_HOME: h, LESSOR_MASTER_KEY: k });
  assertNoKey(init.stdout + init.stderr, [k], "init");
  if (init.code === 0) assert.equal((await setSecret(h, "a", "v", { LESSOR_MASTER_KEY: k })).code, 0);
  if (existsSync(join(h, "master.key"))) {
    // The key file init made must then be the vault's key: what a backup of the home would keep.
    const r = await cli(["status"], { LESSOR_HOME: h });
    assert.equal(r.code, 0, `init created ${h}/master.key, which does not open the vault it created: ${show(r)}`);
  } else assert.ok(init.code !== 0 ? /LESSOR_MASTER_KEY/.test(init.stderr) : true, show(init));
});

test("lessor init on a home whose lessor.toml sets [keys] command writes no key file that would shadow the command", async () => {
  const k = hex();
  const d = tmp();
  const prog = script(join(d, "getkey"), `echo ${k}`);
  const h = join(d, "h");
  mkdirSync(h, { mode: 0o700 });
  writePrivate(join(h, "lessor.toml"), toml([prog]));
  const init = await cli(["init"], { LESSOR_HOME: h });
  assertNoKey(init.stdout + init.stderr, [k], "init");
  const st = await cli(["status", "--json"], { LESSOR_HOME: h });
  assert.ok(!existsSync(join(h, "master.key")), `init wrote ${h}/master.key; the key source is now ${st.code === 0 ? (JSON.parse(st.stdout) as { keySource: string }).keySource : "?"}, and [keys] command is never run again`);
  if (init.code === 0) assert.equal((JSON.parse(st.stdout) as { keySource: string }).keySource, `key command ${JSON.stringify(prog)}`);
});

// ---------------------------------------------------------------------------------------------------
// A rotation cut short

test("a rotation stopped right after the new key was written to master.key (before the store recorded it): the vault opens and writes; the next key rotate makes a fresh key and retires both others", async () => {
  const h = await fileHome();
  for (const n of ["a", "b"]) assert.equal((await setSecret(h, n, `value-${n}`)).code, 0);
  const oldHex = keysInFile(h)[0]!;
  const src = fileKeySource(join(h, "master.key"));
  const ring = await src.load();
  const promotedHex = hex();
  (await src.promote!(ring, Buffer.from(promotedHex, "hex"))).wipe();
  ring.wipe();
  assert.deepEqual(keysInFile(h), [promotedHex, oldHex]);

  const get = await cli(["secret", "get", "a", "--reveal"], { LESSOR_HOME: h });
  assert.equal(get.stdout.trim(), "value-a", show(get));
  assert.equal((await setSecret(h, "c", "value-c")).code, 0);
  const r = await cli(["key", "rotate", "--json"], { LESSOR_HOME: h });
  assert.equal(r.code, 0, show(r));
  const o = JSON.parse(r.stdout) as { from: string[]; to: string; resumed: boolean; retired: boolean };
  assert.equal(o.resumed, false, "a key the store never recorded is not adopted");
  assert.equal(o.retired, true);
  assert.ok(![idOf(oldHex), idOf(promotedHex)].includes(o.to));
  const left = keysInFile(h);
  assert.equal(left.length, 1);
  assert.equal(idOf(left[0]!), o.to);
  assert.ok(versionKeys(h).every((v) => v.key_id === o.to));
  for (const n of ["a", "b", "c"]) assert.equal((await cli(["secret", "get", n, "--reveal"], { LESSOR_HOME: h })).stdout.trim(), `value-${n}`);
  assert.equal((await cli(["audit", "verify"], { LESSOR_HOME: h })).code, 0);
});

test("a rotation stopped after its re-wrap, or after key_rotated but before retiring: the vault keeps working, and the next key rotate resumes onto the recorded key and drops the old one", async () => {
  for (const stop of ["after the re-wrap", "before retiring"] as const) {
    const h = await fileHome();
    for (const n of ["a", "b"]) assert.equal((await setSecret(h, n, `value-${n}`)).code, 0);
    const oldHex = keysInFile(h)[0]!;
    let newId: string;
    if (stop === "after the re-wrap") {
      const v = await openVault({ home: h, env: { LESSOR_HOME: h } });
      await assert.rejects(
        v.admin().rotateMasterKey(() => {
          throw new Error("killed");
        }),
        /killed/,
      );
      await v.close();
      assert.equal(rows(h, "SELECT 1 FROM audit WHERE type = 'key_rotated'").length, 0);
    } else {
      const src = fileKeySource(join(h, "master.key"));
      const v = await Vault.open({
        store: openSqliteStore(join(h, "lessor.db")),
        keys: { ...src, retire: async () => Promise.reject(new Error("killed")) },
      });
      await assert.rejects(v.admin().rotateMasterKey(), /killed/);
      await v.close();
      assert.equal(rows(h, "SELECT 1 FROM audit WHERE type = 'key_rotated'").length, 1);
    }
    const ring = keysInFile(h);
    assert.equal(ring.length, 2, `${stop}: the key file holds the new key and the old one`);
    assert.equal(ring[1], oldHex);
    newId = idOf(ring[0]!);

    assert.equal((await setSecret(h, "c", "value-c")).code, 0, stop);
    const r = await cli(["key", "rotate", "--json"], { LESSOR_HOME: h });
    assert.equal(r.code, 0, `${stop}: ${show(r)}`);
    const o = JSON.parse(r.stdout) as { from: string[]; to: string; resumed: boolean; retired: boolean };
    assert.deepEqual([o.to, o.resumed, o.retired], [newId, true, true], stop);
    assert.deepEqual(keysInFile(h).map(idOf), [newId], stop);
    for (const n of ["a", "b", "c"]) assert.equal((await cli(["secret", "get", n, "--reveal"], { LESSOR_HOME: h })).stdout.trim(), `value-${n}`, stop);
    assert.equal((await cli(["audit", "verify"], { LESSOR_HOME: h })).code, 0, stop);
    assertNoKey(r.stdout + r.stderr, [oldHex, ring[0]!], stop);
  }
});

// ---------------------------------------------------------------------------------------------------
// Re-reading the key source after another process rotated (src/vault/key-reload.ts)

test("a running vault whose key file is replaced by another vault's after another process rotated never installs it: what needs the new key is refused naming the file, nothing is written under the foreign key, and the right file is read again without a restart", async () => {
  const h = await fileHome();
  const env = { LESSOR_HOME: h };
  const a = await openVault({ home: h, env });
  const b = await openVault({ home: h, env });
  try {
    await b.admin().storeSecret({ name: "x", value: "1" });
    const { to } = await a.admin().rotateMasterKey();
    const rotated = readFileSync(join(h, "master.key"), "utf8");
    const foreign = hex();
    writePrivate(join(h, "master.key"), JSON.stringify({ lessor_keyfile: 1, keys: [foreign] }) + "\n");
    await assert.rejects(b.admin().storeSecret({ name: "y", value: "2" }), (e: Error & { code?: string }) => {
      assert.equal(e.code, "key_unavailable");
      assert.match(e.message, new RegExp(`master key ${to} is in use in this vault .* key file ${join(h, "master.key")} does not hold it \\(it holds ${idOf(foreign)}\\)`));
      assertNoKey(e.message, [foreign], "the refusal");
      return true;
    });
    assert.ok(versionKeys(h).every((v) => v.key_id === to));
    assert.equal(rows(h, `SELECT 1 FROM audit WHERE key_id = '${idOf(foreign)}'`).length, 0);
    writePrivate(join(h, "master.key"), rotated);
    await new Promise((s) => setTimeout(s, 1100)); // a failed source is asked again at most once a second
    await b.admin().storeSecret({ name: "y", value: "2" });
    assert.equal((await b.admin().revealSecret({ scope: "global", name: "x" })).value.unsafeText(), "1");
    assert.ok((await b.admin().auditVerify()).ok);
  } finally {
    await b.close();
    await a.close();
  }
});

test("lessor serve on a key command: the command run by the daemon (at start and at key rotate) holds none of the daemon's descriptors (its sockets, the database); no key in the daemon's output, the clients' or the home", async () => {
  const k1 = hex();
  const k2 = hex();
  const d = tmp();
  writeFileSync(join(d, "keys.txt"), `${k1}\n`);
  const prog = script(join(d, "getkey"), `for f in /proc/$$/fd/*; do n=\${f##*/}; [ "$n" -gt 2 ] && echo "$(readlink $f)"; done > ${d}/fds-$$.txt\ncat ${d}/keys.txt`);
  const h = await envHome(k1, toml([prog]));
  const daemon = spawn(process.execPath, ["--import", TSX, MAIN, "serve"], { cwd: "/", env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: "/tmp", LESSOR_HOME: h }, stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  daemon.stdout!.on("data", (b: Buffer) => (log += b.toString("utf8")));
  daemon.stderr!.on("data", (b: Buffer) => (log += b.toString("utf8")));
  const exited = new Promise<void>((r) => daemon.on("close", () => r()));
  const outs: R[] = [];
  try {
    for (let i = 0; i < 1000 && !log.includes("lessor daemon ready") && daemon.exitCode === null; i++) await new Promise((s) => setTimeout(s, 20));
    assert.ok(log.includes("lessor daemon ready"), log);
    outs.push(await setSecret(h, "a", "value-a"));
    writeFileSync(join(d, "keys.txt"), `${k2}\n${k1}\n`);
    const rot = await cli(["key", "rotate", "--json"], { LESSOR_HOME: h });
    outs.push(rot);
    assert.equal(rot.code, 0, show(rot));
    assert.equal((JSON.parse(rot.stdout) as { to: string }).to, idOf(k2));
    const st = await cli(["status", "--json"], { LESSOR_HOME: h });
    outs.push(st);
    const s = JSON.parse(st.stdout) as { mode: string; keySource: string };
    assert.deepEqual([s.mode, s.keySource], ["daemon", `key command ${JSON.stringify(prog)}`]);

    const targets = (dir: string, from = 3): string[] =>
      readdirSync(dir)
        .filter((n) => Number(n) >= from)
        .map((n) => {
          try {
            return readlinkSync(join(dir, n));
          } catch {
            return "";
          }
        })
        .filter((t) => t !== "");
    const outside = new Set(targets("/proc/self/fd", 0)); // what the test process itself holds (and passed on)
    const daemonFds = new Set(targets(`/proc/${daemon.pid}/fd`).filter((t) => !outside.has(t) && !t.startsWith("anon_inode:")));
    assert.ok([...daemonFds].some((t) => t.includes(join(h, "lessor.db"))), `the daemon's descriptors were read: ${[...daemonFds].join(" ")}`);
    const runs = readdirSync(d).filter((n) => n.startsWith("fds-"));
    assert.ok(runs.length >= 2, "the daemon ran the key command at start and at the rotation");
    for (const f of runs) {
      const held = readFileSync(join(d, f), "utf8").split("\n").filter((t) => daemonFds.has(t));
      assert.deepEqual(held, [], `the key command (${f}) holds descriptors of the daemon`);
    }
  } finally {
    daemon.kill("SIGTERM");
    await exited;
  }
  for (const r of outs) assertNoKey(r.stdout + r.stderr, [k1, k2], "a client");
  assertNoKey(log, [k1, k2], "the daemon's output");
  assertNoKeyInFiles(h, [k1, k2]);
});

// ---------------------------------------------------------------------------------------------------
// Children lessor starts

test("lessor run --no-sandbox: the command's own environment holds none of LESSOR_MASTER_KEY, LESSOR_MASTER_KEY_PREVIOUS, LESSOR_PASSPHRASE", async () => {
  const k = hex();
  const prev = hex();
  const h = await envHome(k);
  const r = await cli(
    ["run", "--no-sandbox", "--agent", "probe", "--", process.execPath, "-e", "process.stdout.write(JSON.stringify(Object.entries(process.env).filter(([n]) => /^LESSOR_/i.test(n))))"],
    { LESSOR_HOME: h, LESSOR_MASTER_KEY: k, LESSOR_MASTER_KEY_PREVIOUS: prev, LESSOR_PASSPHRASE: "PASS-CANARY-9c" },
  );
  assert.equal(r.code, 0, show(r));
  const seen = Object.fromEntries(JSON.parse(r.stdout) as [string, string][]);
  assert.deepEqual(Object.keys(seen).filter((n) => n !== "LESSOR_HOME"), []);
  assertNoKey(r.stdout, [k, prev], "the child's environment");
  assert.ok(!r.stdout.includes("PASS-CANARY"));
});
