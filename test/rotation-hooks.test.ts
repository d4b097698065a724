/**
 * Rotation hooks (`[[rotate]]` in lessor.toml): a command whose stdout becomes the secret's new
 * version, run by the vault (src/vault/rotation-hooks.ts, src/hooks/run-hook.ts), by
 * `lessor secret rotate` and by the daemon's schedule (src/server/rotation-schedule.ts).
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import Database from "better-sqlite3";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { LessorClient } from "../src/client/index.js";
import { parseConfig } from "../src/config/config.js";
import { openVault } from "../src/config/open-vault.js";
import { HOOK_ENV_KEEP, runHookCommand } from "../src/hooks/run-hook.js";
import { scheduleRotations } from "../src/server/rotation-schedule.js";
import type { Vault } from "../src/vault/vault.js";
import { CLI, makeHome, startServe } from "./daemon-harness.js";
import { agent, grant, refusalOf, within } from "./helpers.js";

/** The hook claims document of the vault at `home`, read from its SQLite file by a connection of its own. */
function hookClaims(home: string): string {
  const db = new Database(join(home, "lessor.db"), { readonly: true, fileMustExist: true });
  try {
    return String((db.prepare("SELECT value FROM meta WHERE key = ?").get("rotation_hooks_running") as { value?: string } | undefined)?.value ?? "");
  } finally {
    db.close();
  }
}

const FIXTURE = fileURLToPath(new URL("./fixtures/rotate-hook.mjs", import.meta.url));
const NODE = process.execPath;
const POLICY = grant("db", ["claude"], ["db-password", "api-key", "env:prod/*"], ["db.example.com"]);
/** The first value; every test checks that it (and each new one) is nowhere it must not be. */
const OLD = "OLD-pw-7f3a9c0e-do-not-print";
const NEW = "NEW-pw-0c9e3f7a-do-not-print";

const state = (): string => mkdtempSync(join(tmpdir(), "lessor-hook-state-"));

/** A `[[rotate]]` entry running the fixture in `mode`. */
function entry(secret: string, mode: string, dir: string, arg: string, extra = ""): string {
  return `[[rotate]]
secret = ${JSON.stringify(secret)}
command = ${JSON.stringify([NODE, FIXTURE, mode, dir, arg])}
${extra}
`;
}

const vaults: Vault[] = [];
after(async () => {
  for (const v of vaults) await v.close();
});

/** A home with `config` and the policy, db-password (and api-key) stored as OLD, opened in this process. */
async function vaultWith(config: string, env: Record<string, string> | ((home: string) => Record<string, string>) = {}): Promise<{ vault: Vault; home: string }> {
  const home = await makeHome({ config, policy: POLICY });
  const extra = typeof env === "function" ? env(home) : env;
  const vault = await openVault({ home, env: { LESSOR_HOME: home, PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", ...extra } });
  vaults.push(vault);
  await vault.admin().storeSecret({ name: "db-password", value: OLD });
  await vault.admin().storeSecret({ name: "api-key", value: OLD });
  return { vault, home };
}

/** Every audit row, as text, for "no value here" checks. */
async function auditText(vault: Vault): Promise<string> {
  return JSON.stringify(await vault.admin().auditQuery({ limit: 1000 }));
}

function assertNoValue(where: string, text: string, ...values: string[]): void {
  for (const v of [OLD, NEW, ...values]) assert.ok(!text.includes(v), `${where} holds a secret value (${v.slice(0, 8)}…):\n${text}`);
}

const claude = (vault: Vault) => vault.session(agent("claude"));
const TARGET = { domain: "db.example.com" };

describe("a rotation hook run by the vault", () => {
  test('revoke = "all": the hook\'s output is the new version, the next lease gets it, the old leases are revoked', async () => {
    const dir = state();
    const { vault } = await vaultWith(entry("db-password", "stdin", dir, NEW));
    const old = await claude(vault).requestLease({ secret: "db-password", domains: ["db.example.com"] });
    const before = await claude(vault).accessSecret(old.id, TARGET);
    assert.equal(before.value.expose().toString(), OLD);

    const r = await vault.admin().rotateSecretByHook({ scope: "global", name: "db-password" });
    assert.equal(r.version, 2);
    assert.equal(r.secret.currentVersion, 2);
    assert.equal(r.revokedLeases, 1);
    assertNoValue("the result", JSON.stringify(r));
    // stdin = "none" (the default): the command read nothing.
    assert.equal(readFileSync(join(dir, "stdin"), "utf8"), "");

    assert.equal((await refusalOf(claude(vault).accessSecret(old.id, TARGET))).code, "lease_revoked");
    const fresh = await claude(vault).requestLeaseAndAccess({ secret: "db-password", domains: ["db.example.com"] }, TARGET);
    assert.equal(fresh.value.expose().toString(), NEW);
    assert.equal(fresh.version, 2);

    const rows = await vault.admin().auditQuery({ types: ["secret_rotated"] });
    const row = rows.at(-1)!;
    assert.equal(row.outcome, "ok");
    assert.deepEqual(JSON.parse(row.detail!), { hook: true, command: NODE, stdin: "none", from: 1, version: 2, size: NEW.length, revoke: "all", revoked_leases: 1 });
    assertNoValue("the audit trail", await auditText(vault));
  });

  test('revoke = "none": live leases stay usable; the other secrets\' leases are never touched', async () => {
    const dir = state();
    const { vault } = await vaultWith(entry("db-password", "stdin", dir, NEW, 'revoke = "none"'));
    const old = await claude(vault).requestLease({ secret: "db-password", domains: ["db.example.com"] });
    const other = await claude(vault).requestLease({ secret: "api-key", domains: ["db.example.com"] });
    const r = await vault.admin().rotateSecretByHook({ scope: "global", name: "db-password" });
    assert.equal(r.revokedLeases, 0);
    assert.equal(r.version, 2);
    const still = await claude(vault).accessSecret(old.id, TARGET);
    assert.equal(still.value.expose().toString(), NEW, "a live lease reads the current version");
    assert.equal((await claude(vault).accessSecret(other.id, TARGET)).value.expose().toString(), OLD);
  });

  test('stdin = "current" hands the old value to the command on stdin (and nothing else does)', async () => {
    const dir = state();
    const { vault } = await vaultWith(entry("db-password", "stdin", dir, NEW, 'stdin = "current"'));
    await vault.admin().rotateSecretByHook({ scope: "global", name: "db-password" });
    assert.equal(readFileSync(join(dir, "stdin"), "utf8"), OLD);
    const row = (await vault.admin().auditQuery({ types: ["secret_rotated"] })).at(-1)!;
    assert.equal(JSON.parse(row.detail!).stdin, "current");
    assertNoValue("the audit trail", await auditText(vault));
  });

  test("the command's environment is minimal: no LESSOR_* variable, nothing the vault's environment adds", async () => {
    const dir = state();
    // The vault's own key, given in the environment as well (a vault is bound to its key at init).
    const keyOf = (home: string): string => (JSON.parse(readFileSync(join(home, "master.key"), "utf8")) as { keys: string[] }).keys[0]!;
    const { vault } = await vaultWith(entry("db-password", "env", dir, NEW), (home) => ({ LESSOR_MASTER_KEY: keyOf(home), LESSOR_PASSPHRASE: OLD, AWS_SECRET_ACCESS_KEY: OLD, LANG: "C.UTF-8" }));
    await vault.admin().rotateSecretByHook({ scope: "global", name: "db-password" });
    const names = JSON.parse(readFileSync(join(dir, "env"), "utf8")) as string[];
    for (const n of names) assert.ok((HOOK_ENV_KEEP as readonly string[]).includes(n), `the hook saw ${n}`);
    assert.ok(names.includes("PATH") && names.includes("LANG"));
  });

  test("a failing hook (exit 1) leaves the old version current, revokes nothing, and is audited as an error", async () => {
    const dir = state();
    const { vault } = await vaultWith(entry("db-password", "fail", dir, "", 'stdin = "current"'));
    const lease = await claude(vault).requestLease({ secret: "db-password", domains: ["db.example.com"] });
    const e = await refusalOf(vault.admin().rotateSecretByHook({ scope: "global", name: "db-password" }));
    assert.equal(e.code, "unavailable");
    assert.match(e.message, /exit code 1/);
    assert.match(e.message, /version 1 stays current/);
    assertNoValue("the error", e.message, "boom");
    const meta = await vault.admin().getSecretMetadata({ scope: "global", name: "db-password" });
    assert.equal(meta.currentVersion, 1);
    assert.equal((await claude(vault).accessSecret(lease.id, TARGET)).value.expose().toString(), OLD);
    const row = (await vault.admin().auditQuery({ types: ["secret_rotated"] })).at(-1)!;
    assert.equal(row.outcome, "error");
    assert.equal(row.reason, "hook_failed: exit");
    assert.deepEqual(JSON.parse(row.detail!), { hook: true, command: NODE, stdin: "current", from: 1, failure: "exit", exit_code: 1, command_ran: true });
    assertNoValue("the audit trail", await auditText(vault), "boom");
  });

  test("a hanging hook is killed at its timeout and leaves the old version current", async () => {
    const dir = state();
    const { vault } = await vaultWith(entry("db-password", "hang", dir, "", 'timeout = "400ms"'));
    const t0 = Date.now();
    const e = await refusalOf(vault.admin().rotateSecretByHook({ scope: "global", name: "db-password" }));
    const took = Date.now() - t0;
    assert.equal(e.code, "unavailable");
    assert.match(e.message, /did not finish within 400 ms/);
    // It may have changed the credential at the issuer before the limit: the owner is told to check.
    assert.match(e.message, /version 1 stays current; if the command changed the credential at its issuer before it stopped, the vault's copy is stale: check the issuer/);
    assert.ok(took >= 350 && took < 10_000, `took ${took} ms`);
    assert.equal((await vault.admin().getSecretMetadata({ scope: "global", name: "db-password" })).currentVersion, 1);
    const row = (await vault.admin().auditQuery({ types: ["secret_rotated"] })).at(-1)!;
    assert.equal(row.outcome, "error");
    assert.deepEqual(JSON.parse(row.detail!), { hook: true, command: NODE, stdin: "none", from: 1, failure: "timeout", timeout_ms: 400, command_ran: true });
  });

  test("attack: at the time limit the whole process group is killed, a child the hook started included", async () => {
    const dir = state();
    const { vault } = await vaultWith(entry("db-password", "hang-child", dir, "", 'timeout = "1s"'));
    const e = await refusalOf(vault.admin().rotateSecretByHook({ scope: "global", name: "db-password" }));
    assert.match(e.message, /did not finish within 1000 ms/);
    const pid = Number(readFileSync(join(dir, "child"), "utf8"));
    assert.ok(pid > 0);
    let alive = true;
    for (let i = 0; i < 50 && alive; i++) {
      try {
        process.kill(pid, 0);
        await new Promise((r) => setTimeout(r, 100));
      } catch {
        alive = false;
      }
    }
    assert.equal(alive, false, `the hook's child ${pid} outlived the time limit`);
  });

  test("attack: no shell: metacharacters in the arguments reach the command as they are", async () => {
    const dir = state();
    const literal = "$(touch " + join(dir, "pwned") + "); `touch pwned2` | cat > x";
    const { vault, home } = await vaultWith(entry("db-password", "stdin", dir, literal));
    await vault.admin().rotateSecretByHook({ scope: "global", name: "db-password" });
    const got = await vault.admin().revealSecret({ scope: "global", name: "db-password" });
    assert.equal(got.value.expose().toString(), literal);
    assert.equal(existsSync(join(dir, "pwned")), false);
    assert.equal(existsSync(join(home, "pwned2")), false, "the hook runs in the home: a shell would have made it there");
  });

  test("empty output, output over max_secret_bytes and a missing program are failures, not versions", async () => {
    const dir = state();
    const config = `[vault]
max_secret_bytes = 64
${entry("db-password", "empty", dir, "")}
${entry("api-key", "big", dir, "65")}
[[rotate]]
secret = "env:prod/missing"
command = ["/nonexistent/rotate-me"]
`;
    const { vault } = await vaultWith(config);
    await vault.admin().storeSecret({ scope: "env:prod", name: "missing", value: OLD });
    const empty = await refusalOf(vault.admin().rotateSecretByHook({ scope: "global", name: "db-password" }));
    assert.match(empty.message, /printed nothing/);
    const big = await refusalOf(vault.admin().rotateSecretByHook({ scope: "global", name: "api-key" }));
    assert.match(big.message, /more than 64 bytes/);
    const missing = await refusalOf(vault.admin().rotateSecretByHook({ scope: "env:prod", name: "missing" }));
    assert.match(missing.message, /was not found/);
    assert.doesNotMatch(missing.message, /stale/, "a command that never ran changed nothing at the issuer");
    for (const name of ["db-password", "api-key"]) assert.equal((await vault.admin().getSecretMetadata({ scope: "global", name })).currentVersion, 1);
    const failures = (await vault.admin().auditQuery({ types: ["secret_rotated"] })).filter((r) => r.outcome === "error").map((r) => JSON.parse(r.detail!).failure);
    assert.deepEqual(failures, ["empty", "too_large", "not_found"]);
    const ran = (await vault.admin().auditQuery({ types: ["secret_rotated"] })).filter((r) => r.outcome === "error").map((r) => JSON.parse(r.detail!).command_ran);
    assert.deepEqual(ran, [true, true, false]);
  });

  test("attacks: an agent cannot run a hook; a secret without a hook is refused, one that does not exist is not found; two runs for one secret never overlap", async () => {
    const dir = state();
    const { vault } = await vaultWith(entry("db-password", "counter", dir, "x", 'timeout = "5s"'));
    const denied = await refusalOf(claude(vault).rotateSecretByHook({ scope: "global", name: "db-password" }));
    assert.equal(denied.code, "access_denied");
    const none = await refusalOf(vault.admin().rotateSecretByHook({ scope: "global", name: "api-key" }));
    assert.equal(none.code, "invalid_request");
    assert.match(none.message, /no rotation hook/);
    // A misspelt name is not found (not "add a [[rotate]] entry"), and only to an admin: an agent
    // learns neither whether the secret nor whether a hook for it exists.
    const typo = await refusalOf(vault.admin().rotateSecretByHook({ scope: "global", name: "db-pasword" }));
    assert.equal(typo.code, "secret_not_found");
    assert.doesNotMatch(typo.message, /rotate/);
    for (const name of ["db-password", "db-pasword"]) assert.equal((await refusalOf(claude(vault).rotateSecretByHook({ scope: "global", name }))).code, "access_denied");
    const ref = { scope: "global", name: "db-password" };
    const results = await Promise.allSettled([vault.admin().rotateSecretByHook(ref), vault.admin().rotateSecretByHook(ref)]);
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
    const rejected = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
    assert.equal(rejected.reason.code, "rate_limited");
    assert.equal(readFileSync(join(dir, "count"), "utf8"), "1", "the command ran once");
    assert.equal((await vault.admin().getSecretMetadata(ref)).currentVersion, 2);
  });
});

describe("a rotation hook's claim after a crash", () => {
  test("a process SIGKILLed mid-hook blocks the secret's hook while its orphaned hook runs on (for its time limit plus the slack at most); once the hook is gone, the next run is told it was cut off, and the one after goes ahead", async () => {
    const dir = state();
    const home = await makeHome({ config: entry("db-password", "hang-child", dir, "", 'timeout = "30s"'), policy: POLICY });
    const env = { LESSOR_HOME: home, PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp" };
    const seed = await openVault({ home, env });
    await seed.admin().storeSecret({ name: "db-password", value: OLD });
    await seed.close();
    // A real `lessor secret rotate --hook`, killed while its hook runs (the hook writes its child's pid once it has started).
    const t0 = Date.now();
    const cli = spawn(NODE, ["--import", "tsx", CLI, "secret", "rotate", "db-password", "--hook"], { env, stdio: "ignore" });
    const deadline = Date.now() + 20_000;
    while (!existsSync(join(dir, "child")) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.ok(existsSync(join(dir, "child")), "the hook never started");
    // The claim names the hook's process too (a killed lessor leaves it running): wait for that note.
    await within(20_000, "the claim names the hook's process", () => hookClaims(home).includes('"hook":'), 20);
    const exited = new Promise((r) => cli.once("exit", r));
    cli.kill("SIGKILL");
    await exited;
    // Now a hook that finishes, and a vault whose clock the test moves.
    writeFileSync(join(home, "lessor.toml"), entry("db-password", "counter", dir, "after", 'timeout = "30s"'), { mode: 0o600 });
    let now = Date.now();
    const vault = await openVault({ home, env, now: () => now });
    vaults.push(vault);
    const ref = { scope: "global", name: "db-password" };
    const held = await refusalOf(vault.admin().rotateSecretByHook(ref));
    assert.equal(held.code, "rate_limited", "the dead process's claim must hold: its hook still runs and may be changing the credential at the issuer");
    assert.match(held.message, /already running: the lessor process that ran it \(pid \d+\) ended, but its hook \(pid \d+\) still runs/);
    now = t0 + 30_000 + 60_000 - 2_000;
    assert.equal((await refusalOf(vault.admin().rotateSecretByHook(ref))).code, "rate_limited", "still within the time limit plus the slack");
    // The orphaned hook and its child end (a crash leaves them running; here the test ends them).
    // Waited for: a pkill still on its way would kill the next hook, whose command line names `dir` too.
    await new Promise((r) => spawn("pkill", ["-KILL", "-f", dir]).once("exit", r).once("error", r));
    process.kill(Number(readFileSync(join(dir, "child"), "utf8")), "SIGKILL");
    await within(20_000, "the orphaned hook is gone", () => spawnSync("pgrep", ["-f", dir]).status === 1);
    // Told once that the run was cut off (the issuer may hold a value the vault does not) ...
    const cut = await refusalOf(vault.admin().rotateSecretByHook(ref));
    assert.equal(cut.code, "unavailable", cut.message);
    assert.match(cut.message, /cut off/);
    // ... and the run after goes ahead.
    const res = await vault.admin().rotateSecretByHook(ref);
    assert.equal(res.version, 2);
    assert.equal(readFileSync(join(dir, "count"), "utf8"), "1", "the lapsed claim let the hook run, once");
    assert.equal((await vault.admin().getSecretMetadata(ref)).currentVersion, 2);
  });
});

describe("[[rotate]] in lessor.toml", () => {
  const parse = (s: string) => parseConfig(s, "lessor.toml");
  test("defaults: timeout 30s, revoke all, stdin none, no schedule", () => {
    const c = parse(`[[rotate]]\nsecret = "env:prod/db"\ncommand = ["/bin/rotate", "--user", "app"]\n`);
    assert.deepEqual(c.rotate, [{ secret: { scope: "env:prod", name: "db" }, command: ["/bin/rotate", "--user", "app"], timeoutMs: 30_000, revoke: "all", stdin: "none", everyMs: null }]);
    const d = parse(`[[rotate]]\nsecret = "db"\ncommand = ["r"]\ntimeout = "5s"\nrevoke = "none"\nstdin = "current"\nevery = "24h"\n`);
    assert.deepEqual(d.rotate[0], { secret: { scope: "global", name: "db" }, command: ["r"], timeoutMs: 5000, revoke: "none", stdin: "current", everyMs: 86_400_000 });
  });
  test("strict: a shell string, unknown fields, bad values and duplicates are errors naming the entry", () => {
    const bad: [string, RegExp][] = [
      [`[[rotate]]\nsecret = "db"\ncommand = "rotate-db --user app; rm -rf /"\n`, /\[\[rotate\]\] 1 command: .*never run through a shell/],
      [`[[rotate]]\nsecret = "db"\ncommand = []\n`, /\[\[rotate\]\] 1 command/],
      [`[[rotate]]\nsecret = "db"\ncommand = ["", "x"]\n`, /\[\[rotate\]\] 1 command/],
      [`[[rotate]]\nsecret = "db"\ncommand = ["r", 5]\n`, /\[\[rotate\]\] 1 command/],
      [`[[rotate]]\nsecret = "db"\ncommand = ["r"]\nshell = true\n`, /unknown field "shell"/],
      [`[[rotate]]\nsecret = "db"\ncommand = ["r"]\nrevoke = "some"\n`, /revoke: expected "all"/],
      [`[[rotate]]\nsecret = "db"\ncommand = ["r"]\nstdin = "value"\n`, /stdin: expected "none" or "current"/],
      [`[[rotate]]\nsecret = "db"\ncommand = ["r"]\ntimeout = 30\n`, /timeout: expected a duration/],
      [`[[rotate]]\nsecret = "db"\ncommand = ["r"]\nevery = "10ms"\n`, /every: expected a duration from 1000 ms/],
      [`[[rotate]]\nsecret = "db"\ncommand = ["r"]\n[[rotate]]\nsecret = "global/db"\ncommand = ["s"]\n`, /\[\[rotate\]\] 2 secret: secret global\/db has two/],
      [`[[rotate]]\ncommand = ["r"]\n`, /\[\[rotate\]\] 1 secret/],
      [`[rotate]\nsecret = "db"\n`, /double brackets/],
    ];
    for (const [text, re] of bad) assert.throws(() => parse(text), (e: Error & { code?: string }) => e.code === "config_invalid" && re.test(e.message), text);
  });
});

/** Runs the CLI from source with `input` on stdin (closed after). */
function runCli(home: string, args: string[], input = ""): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(NODE, ["--import", "tsx", CLI, "--home", home, ...args], {
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1" },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input);
  });
}

describe("lessor secret rotate with a hook", () => {
  test("--hook, and no value given, run the hook; a piped value still wins; nothing prints a value, not even the hook's stderr", async () => {
    const dir = state();
    const home = await makeHome({ config: entry("db-password", "leak", dir, NEW, 'stdin = "current"'), policy: POLICY });
    const seed = await openVault({ home, env: { LESSOR_HOME: home } });
    await seed.admin().storeSecret({ name: "db-password", value: OLD });
    await seed.close();

    const a = await runCli(home, ["secret", "rotate", "db-password", "--hook"]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(a.stdout.trim(), "rotated global/db-password to version 2 by its rotation hook");
    assertNoValue("the CLI's output", a.stdout + a.stderr);

    const b = await runCli(home, ["secret", "rotate", "db-password", "--json"]); // empty stdin: the hook
    assert.equal(b.code, 0, b.stderr);
    const j = JSON.parse(b.stdout) as { version: number; revokedLeases: number; secret: { currentVersion: number } };
    assert.equal(j.version, 3);
    assert.equal(j.secret.currentVersion, 3);
    assertNoValue("the CLI's output", b.stdout + b.stderr);

    const piped = "PIPED-value-do-not-print";
    const c = await runCli(home, ["secret", "rotate", "db-password"], `${piped}\n`);
    assert.equal(c.code, 0, c.stderr);
    assert.equal(c.stdout.trim(), "rotated global/db-password to version 4");
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      assert.equal((await v.admin().revealSecret({ scope: "global", name: "db-password" })).value.expose().toString(), piped);
      assertNoValue("the audit trail", await auditText(v), piped);
    } finally {
      await v.close();
    }

    const d = await runCli(home, ["secret", "rotate", "db-password", "--hook", "--random"]);
    assert.notEqual(d.code, 0);
    assert.match(d.stderr, /--hook runs the secret's rotation command/);
  });

  test("a failing hook: a non-zero exit, a message with its exit code, the old version kept, no value printed", async () => {
    const dir = state();
    const home = await makeHome({ config: entry("db-password", "fail", dir, "", 'stdin = "current"'), policy: POLICY });
    const seed = await openVault({ home, env: { LESSOR_HOME: home } });
    await seed.admin().storeSecret({ name: "db-password", value: OLD });
    await seed.close();
    const r = await runCli(home, ["secret", "rotate", "db-password", "--hook"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /exit code 1/);
    assertNoValue("the CLI's output", r.stdout + r.stderr, "boom");
    const none = await runCli(home, ["secret", "rotate", "api-key", "--hook"]);
    assert.notEqual(none.code, 0);
  });
});

describe("the daemon's schedule", () => {
  test("of lessor processes sharing a store that each found a secret due, one asks the issuer: the schedule checks it is still due as it claims the run", async () => {
    const dir = state();
    const { vault } = await vaultWith(entry("db-password", "counter", dir, "x", 'every = "1s"'));
    const ref = { scope: "global", name: "db-password" };
    await new Promise((r) => setTimeout(r, 1100)); // version 1 is now older than every = 1s: due
    // What another daemon's schedule read, and found due, just before this process rotated it.
    const stale = await vault.admin().getSecretMetadata(ref);
    assert.equal((await vault.admin().rotateSecretByHook(ref)).version, 2);
    // That daemon's schedule goes on from its read: its session answers the metadata it had read.
    const behind = {
      session: (id: Parameters<Vault["session"]>[0]) => {
        const s = vault.session(id);
        return new Proxy(s, {
          get: (t, k) => {
            if (k === "getSecretMetadata") return async () => stale;
            const v: unknown = Reflect.get(t, k, t);
            return typeof v === "function" ? v.bind(t) : v;
          },
        });
      },
    } as unknown as Vault;
    const lines: string[] = [];
    const log = { info: (_o: unknown, m: string) => void lines.push(m), warn: (_o: unknown, m: string) => void lines.push(m), error: (_o: unknown, m: string) => void lines.push(m) };
    const hook = { secret: ref, command: [NODE, FIXTURE, "counter", dir, "x"], timeoutMs: 5000, revoke: "all" as const, stdin: "none" as const, everyMs: 1000 };
    const sched = scheduleRotations(behind, [hook], log, { random: () => 0 });
    await new Promise((r) => setTimeout(r, 500));
    await sched.stop();
    assert.equal(readFileSync(join(dir, "count"), "utf8"), "1", `the issuer was asked twice in one period: ${lines.join(" | ")}`);
    assert.equal((await vault.admin().getSecretMetadata(ref)).currentVersion, 2);
    assert.ok(lines.some((l) => /not due when claimed/.test(l)), lines.join(" | "));
  });

  test("runs a due hook every period (new versions, old leases revoked), logs a failing one and keeps its old version; no value in its logs", async () => {
    const dir = state();
    const failDir = state();
    const config = `${entry("db-password", "counter", dir, NEW, 'every = "1s"')}
${entry("api-key", "fail", failDir, "", 'every = "1s"\nstdin = "current"')}`;
    const home = await makeHome({ config, policy: POLICY });
    const seed = await openVault({ home, env: { LESSOR_HOME: home } });
    await seed.admin().storeSecret({ name: "db-password", value: OLD });
    await seed.admin().storeSecret({ name: "api-key", value: OLD });
    const lease = await seed.session(agent("claude")).requestLease({ secret: "db-password", domains: ["db.example.com"] });
    await seed.close();

    const d = await startServe(home);
    const admin = await LessorClient.connect({ socketPath: d.socket });
    try {
      const deadline = Date.now() + 20_000;
      let version = 1;
      while (Date.now() < deadline && version < 3) {
        await new Promise((r) => setTimeout(r, 200));
        version = (await admin.getSecretMetadata({ name: "db-password" })).currentVersion;
      }
      assert.ok(version >= 3, `the schedule rotated db-password to version ${version} only`);
      assert.equal((await admin.getSecretMetadata({ name: "api-key" })).currentVersion, 1, "a failing hook keeps the old version");
      const leases = await admin.listLeases({ secret: { scope: "global", name: "db-password" } });
      assert.notEqual(leases.find((l) => l.id === lease.id)?.revokedAt ?? null, null, "the old lease was revoked");
      const rows = await admin.auditQuery({ types: ["secret_rotated"], limit: 100 });
      const sched = rows.filter((r) => r.actorId === "schedule:rotate");
      assert.ok(sched.some((r) => r.outcome === "ok" && r.secret === "global/db-password"));
      assert.ok(sched.some((r) => r.outcome === "error" && r.secret === "global/api-key"));
    } finally {
      await admin.close();
      await d.stop();
    }
    // Stopping waits for a running hook: each run of the command made exactly one version.
    const after = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      const final = (await after.admin().getSecretMetadata({ scope: "global", name: "db-password" })).currentVersion;
      assert.equal(Number(readFileSync(join(dir, "count"), "utf8")), final - 1);
      assertNoValue("the audit trail", await auditText(after), "rotated-1-", "rotated-2-", "boom");
    } finally {
      await after.close();
    }
    const log = d.stderr();
    assert.match(log, /rotated a secret by its rotation hook, on schedule/);
    assert.match(log, /a scheduled rotation hook failed/);
    assert.match(log, /exit code 1/);
    assertNoValue("the daemon's log", log, "rotated-1-", "rotated-2-", "boom");
  });
});

describe("the current value a hook reads on stdin", () => {
  test("the copy written to the hook's pipe is zeroed once the hook has it: no Buffer of it is left holding the value", async () => {
    const canary = `CANARY-${randomBytes(12).toString("hex")}`;
    const dir = mkdtempSync(join(tmpdir(), "lessor-hookstdin-"));
    const hook = join(dir, "cat.sh");
    writeFileSync(hook, "#!/bin/sh\ncat >/dev/null\necho new-value\n", { mode: 0o755 });
    const value = new Uint8Array(Buffer.from(canary));
    // Every Buffer made from a Uint8Array of the value's length while the hook runs: the copies.
    const made: Buffer[] = [];
    const from = Buffer.from;
    (Buffer as unknown as { from: unknown }).from = function (...a: unknown[]) {
      const b = (from as (...x: unknown[]) => Buffer).apply(Buffer, a);
      if (a[0] instanceof Uint8Array && b.length === value.length) made.push(b);
      return b;
    };
    let r;
    try {
      r = await runHookCommand({ secret: { scope: "global", name: "db" }, command: [hook], timeoutMs: 5000, revoke: "all", stdin: "current", everyMs: null }, value, 1024, { cwd: dir, env: { PATH: process.env.PATH } });
    } finally {
      (Buffer as unknown as { from: unknown }).from = from;
    }
    assert.equal(r.ok, true);
    assert.ok(made.length > 0, "the value was copied for the pipe (else this test checks nothing)");
    assert.deepEqual(made.filter((b) => b.toString() === canary).length, 0, "a copy of the current value is left in memory after the hook ended");
  });
});
