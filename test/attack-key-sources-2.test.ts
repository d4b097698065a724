/**
 * Attack pass 2 on the master key: how it is obtained and changed (src/crypto/keys/, src/vault/rotation.ts,
 * `lessor key rotate`). Attackers: the holder of a leaked (then rotated-away) master key who can write
 * lessor.db, a full or failing disk under the key file, bit rot in one stored record.
 *
 * The CLI runs from source (`node --import tsx src/cli/main.ts`). Keys and values are canaries.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import { sealValue } from "../src/crypto/envelope.js";
import { keyIdOf } from "../src/crypto/keyring.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { parsePolicy } from "../src/vault/policy/parse.js";
import { Vault } from "../src/vault/vault.js";
import type { RotationHook, RotationHooks } from "../src/vault/rotation-hooks.js";
import { isVaultError } from "../src/base/errors.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const TSX = pathToFileURL(join(ROOT, "node_modules/tsx/dist/loader.mjs")).href;
const MAIN = join(ROOT, "src/cli/main.ts");

const scratch: string[] = [];
process.on("exit", () => {
  for (const d of scratch) rmSync(d, { recursive: true, force: true });
});
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), "aks2-"));
  scratch.push(d);
  return d;
}

interface R {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** Runs `lessor <args>` from source with exactly PATH, HOME, NO_COLOR and `env`. */
function cli(args: string[], env: Record<string, string>, o: { input?: string; timeoutMs?: number } = {}): Promise<R> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, ["--import", TSX, MAIN, ...args], {
      cwd: "/",
      env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: "/tmp", NO_COLOR: "1", ...env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    c.stdout.on("data", (d: Buffer) => (out += d.toString("utf8")));
    c.stderr.on("data", (d: Buffer) => (err += d.toString("utf8")));
    const timer = setTimeout(() => c.kill("SIGKILL"), o.timeoutMs ?? 30_000);
    c.on("error", reject);
    c.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: out, stderr: err });
    });
    c.stdin.on("error", () => {});
    c.stdin.end(o.input ?? "");
  });
}

const hex = (): string => randomBytes(32).toString("hex");
const idOf = (h: string): string => keyIdOf(Buffer.from(h, "hex"));
const show = (r: R): string => `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;

function writePrivate(path: string, text: string): void {
  writeFileSync(path, text, { mode: 0o600 });
  chmodSync(path, 0o600);
}

async function envHome(key: string): Promise<string> {
  const h = join(tmp(), "h");
  const r = await cli(["init", "--key-source", "env"], { LESSOR_HOME: h, LESSOR_MASTER_KEY: key });
  assert.equal(r.code, 0, show(r));
  return h;
}

async function fileHome(config?: string): Promise<string> {
  const h = join(tmp(), "h");
  if (config !== undefined) {
    mkdirSync(h, { mode: 0o700 });
    writePrivate(join(h, "lessor.toml"), config);
  }
  const r = await cli(["init"], { LESSOR_HOME: h });
  assert.equal(r.code, 0, show(r));
  return h;
}

const setSecret = (h: string, name: string, value: string, env: Record<string, string> = {}): Promise<R> =>
  cli(["secret", "set", name], { LESSOR_HOME: h, ...env }, { input: value });

function db<T>(h: string, f: (d: Database.Database) => T): T {
  const d = new Database(join(h, "lessor.db"), { fileMustExist: true });
  try {
    return f(d);
  } finally {
    d.close();
  }
}

// ---------------------------------------------------------------------------------------------------

test("a retired key authenticates nothing after the rotation that retired it: a secret version sealed under the leaked old key and written into lessor.db after `lessor key rotate` is refused by `secret get --reveal`, naming the secret and version, never shown", async () => {
  const k1 = hex(); // leaked
  const k2 = hex();
  const h = await envHome(k1);
  const REAL = `real-${randomBytes(8).toString("hex")}`;
  assert.equal((await setSecret(h, "api", REAL, { LESSOR_MASTER_KEY: k1 })).code, 0);
  // The documented rotation for an env source: new key first, the old one in _PREVIOUS until it is dropped.
  const envNew = { LESSOR_HOME: h, LESSOR_MASTER_KEY: k2, LESSOR_MASTER_KEY_PREVIOUS: k1 };
  const rot = await cli(["key", "rotate", "--json"], envNew);
  assert.equal(rot.code, 0, show(rot));
  assert.equal((JSON.parse(rot.stdout) as { to: string }).to, idOf(k2));

  // The holder of the leaked k1 who can write lessor.db forges version 2 of "api" under k1.
  const FORGED = `forged-${randomBytes(8).toString("hex")}`;
  const sealed = sealValue({ scope: "global", name: "api", version: 2 }, Buffer.from(FORGED), { id: idOf(k1), key: Buffer.from(k1, "hex") }, "aes-256-gcm", vaultIdIn(join(h, "lessor.db")));
  db(h, (d) => {
    const s = d.prepare("SELECT id FROM secrets WHERE scope = 'global' AND name = 'api'").get() as { id: number };
    d.prepare("INSERT INTO secret_versions (secret, version, alg, key_id, wrapped_dek, ciphertext, size, created_at, created_by) VALUES (?, 2, ?, ?, ?, ?, ?, ?, 'uid:0')").run(
      s.id,
      sealed.alg,
      sealed.keyId,
      sealed.wrappedDek,
      sealed.ciphertext,
      FORGED.length,
      Date.now(),
    );
    d.prepare("UPDATE secrets SET current_version = 2 WHERE id = ?").run(s.id);
  });

  const got = await cli(["secret", "get", "api", "--reveal"], envNew);
  assert.ok(!got.stdout.includes(FORGED), `a value sealed under the retired key ${idOf(k1)} after its retirement was revealed: ${show(got)}`);
  assert.equal(got.code, 1, show(got));
  assert.match(got.stderr, /version 2 of secret global\/api is wrapped under master key [0-9a-f]+, which the rotation at event \d+ retired/, show(got));
  assert.ok(!got.stderr.includes(FORGED) && !got.stderr.includes(REAL));
});

/** The vault's id (bound into every wrapped DEK), as anyone who can read lessor.db reads it. */
function vaultIdIn(dbPath: string): string | null {
  const d = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return (d.prepare("SELECT value FROM meta WHERE key = 'vault_id'").get() as { value: string } | undefined)?.value ?? null;
  } finally {
    d.close();
  }
}

/** Inserts version `version` of global/`name`, sealed under `key` (hex), and makes it current: what a holder of that key who can write lessor.db does. */
function forgeVersion(dbPath: string, name: string, version: number, key: string, value: string): void {
  const sealed = sealValue({ scope: "global", name, version }, Buffer.from(value), { id: idOf(key), key: Buffer.from(key, "hex") }, "aes-256-gcm", vaultIdIn(dbPath));
  const d = new Database(dbPath, { fileMustExist: true });
  try {
    const s = d.prepare("SELECT id FROM secrets WHERE scope = 'global' AND name = ?").get(name) as { id: number };
    d.prepare("INSERT INTO secret_versions (secret, version, alg, key_id, wrapped_dek, ciphertext, size, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'uid:0')").run(
      s.id,
      version,
      sealed.alg,
      sealed.keyId,
      sealed.wrappedDek,
      sealed.ciphertext,
      value.length,
      Date.now(),
    );
    d.prepare("UPDATE secrets SET current_version = ? WHERE id = ?").run(version, s.id);
  } finally {
    d.close();
  }
}

async function refusal(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (e) {
    if (isVaultError(e)) return { code: e.code, message: e.message };
    throw e;
  }
  assert.fail("expected a refusal");
}

test("a version under a retired key opens nowhere: a lease's use (both round trips), a rollback to it, a rotation hook given the current value, and the next rotation refuse it, naming the secret and version and never the value", async () => {
  const k1 = hex(); // leaked
  const k2 = hex();
  const dbPath = join(tmp(), "lessor.db");
  const policy = parsePolicy(`[[rule]]\nname = "api"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["api"]\ndomains = ["api.example.com"]\nreveal = true\n`, "policy.toml");
  // A rotation hook that reads the current value on stdin (it would be handed the forged one).
  const handed: string[] = [];
  const hook: RotationHook = { secret: { scope: "global", name: "api" }, command: ["/bin/false"], timeoutMs: 5000, revoke: "none", stdin: "current", everyMs: null };
  const rotationHooks: RotationHooks = {
    find: (ref) => (ref.scope === "global" && ref.name === "api" ? hook : null),
    list: () => [hook],
    run: async (_h, stdin) => {
      handed.push(stdin === null ? "" : Buffer.from(stdin).toString("utf8"));
      return { ok: true, value: Buffer.from("from-the-hook") };
    },
  };
  const open = (keys: Record<string, string>) => Vault.open({ store: openSqliteStore(dbPath), keys: envKeySource(keys)!, policy, rotationHooks });
  const claude = { id: "test:claude", role: "agent" as const, agent: "claude", transport: "embedded" };
  let v = await open({ LESSOR_MASTER_KEY: k1 });
  await v.admin().storeSecret({ name: "api", value: "real-value" });
  await v.close();
  v = await open({ LESSOR_MASTER_KEY: k2, LESSOR_MASTER_KEY_PREVIOUS: k1 });
  try {
    assert.equal((await v.admin().rotateMasterKey()).to, idOf(k2));
    const FORGED = `forged-${randomBytes(8).toString("hex")}`;
    forgeVersion(dbPath, "api", 2, k1, FORGED);
    const agent = v.session(claude);
    const lease = await agent.requestLease({ secret: "api", domains: ["api.example.com"] });
    const tries = {
      reveal: refusal(v.admin().revealSecret({ scope: "global", name: "api" })),
      access: refusal(agent.accessSecret(lease.id, { domain: "api.example.com" })),
      oneRoundTrip: refusal(agent.requestLeaseAndAccess({ secret: "api", domains: ["api.example.com"] }, { domain: "api.example.com" })),
      rollback: refusal(v.admin().rollbackSecret({ scope: "global", name: "api" }, 2)),
    };
    const byHook = await refusal(v.admin().rotateSecretByHook({ scope: "global", name: "api" }));
    assert.equal(byHook.code, "decrypt_failed", byHook.message);
    assert.deepEqual(handed, [], "the rotation hook was run with the forged value on stdin");
    for (const [what, p] of Object.entries(tries)) {
      const r = await p;
      assert.equal(r.code, "decrypt_failed", `${what}: ${r.message}`);
      assert.match(r.message, /version 2 of secret global\/api .*retired/, what);
      assert.ok(!r.message.includes(FORGED), what);
    }
    // The rollback made no version (it would have sealed the forged value under the current key).
    assert.equal((await v.admin().secretHistory({ scope: "global", name: "api" })).length, 2);
    // The refusals are in the trail.
    const denials = await v.admin().auditQuery({ types: ["access_denied"] });
    assert.ok(denials.some((e) => e.reason?.startsWith("decrypt_failed: version 2 of secret global/api")), JSON.stringify(denials.map((e) => e.reason)));
    // The older version, sealed by this vault and re-wrapped by the rotation, still opens.
    assert.equal((await v.admin().revealSecret({ scope: "global", name: "api" }, 1)).value.unsafeText(), "real-value");
  } finally {
    await v.close();
  }
  // The next rotation does not re-wrap it under the new key (where it would pass for this vault's own).
  const k3 = hex();
  v = await open({ LESSOR_MASTER_KEY: k3, LESSOR_MASTER_KEY_PREVIOUS: `${k2},${k1}` });
  try {
    const r = await refusal(v.admin().rotateMasterKey());
    assert.equal(r.code, "decrypt_failed", r.message);
    assert.match(r.message, /version 2 of secret global\/api: .*retired/);
    assert.match(r.message, /lessor secret rm global\/api/);
    // Removed and stored again, as the refusal says: the rotation then finishes.
    await v.admin().deleteSecret({ scope: "global", name: "api" });
    await v.admin().storeSecret({ name: "api", value: "stored-again" });
    const done = await v.admin().rotateMasterKey();
    assert.equal(done.to, idOf(k3));
    assert.equal((await v.admin().revealSecret({ scope: "global", name: "api" })).value.unsafeText(), "stored-again");
  } finally {
    await v.close();
  }
});

// ---------------------------------------------------------------------------------------------------
// A failing disk under the key file

const canUnshare = spawnSync("unshare", ["-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=8k tmpfs $d && umount $d && rmdir $d"]).status === 0;

test(
  "a full disk under the key file is refused with a clear error, never an internal error: `lessor key rotate` says the disk is full and leaves the key file as it was, and runs once space is freed",
  { skip: canUnshare ? false : "unshare -rm with a tmpfs mount is not permitted here", timeout: 60_000 },
  async () => {
    const d = tmp();
    const keys = join(d, "keys");
    mkdirSync(keys, { mode: 0o700 });
    const h = await fileHome(`[keys]\nfile = ${JSON.stringify(join(keys, "master.key"))}\n`);
    // (init wrote master.key into `keys`; the script moves it onto an 8 KiB tmpfs mounted there.)
    const CANARY = `canary-${randomBytes(8).toString("hex")}`;
    assert.equal((await setSecret(h, "canary", CANARY)).code, 0);
    const lessor = `${JSON.stringify(process.execPath)} --import ${JSON.stringify(TSX)} ${JSON.stringify(MAIN)}`;
    const sh = `set -u
cp "$K/master.key" "$D/saved.key"
mount -t tmpfs -o size=8k,mode=0700 tmpfs "$K" || exit 99
cp "$D/saved.key" "$K/master.key" && chmod 600 "$K/master.key"
dd if=/dev/zero of="$K/filler" bs=512 2>/dev/null
export LESSOR_HOME="$H" HOME=/tmp NO_COLOR=1
${lessor} key rotate >"$D/rot.out" 2>"$D/rot.err"; echo $? >"$D/rot.rc"
cp "$K/master.key" "$D/after-full.key"; ls -a "$K" >"$D/ls"
rm "$K/filler"
${lessor} key rotate >"$D/rot2.out" 2>"$D/rot2.err"; echo $? >"$D/rot2.rc"
${lessor} secret get canary --reveal >"$D/get.out" 2>"$D/get.err"; echo $? >"$D/get.rc"
`;
    const r = spawnSync("unshare", ["-rm", "sh", "-c", sh], { encoding: "utf8", timeout: 55_000, env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", D: d, K: keys, H: h } });
    assert.equal(r.status, 0, `the namespace script failed: ${r.stdout}${r.stderr}`);
    const f = (n: string): string => readFileSync(join(d, n), "utf8");
    const full: R = { code: Number(f("rot.rc")), signal: null, stdout: f("rot.out"), stderr: f("rot.err") };
    // What held: the key file is untouched (only the old key), nothing left beside it, and once space
    // is freed the rotation runs and the value reads back.
    assert.deepEqual(f("after-full.key"), f("saved.key"), "the key file changed on a failed rotation");
    assert.deepEqual(f("ls").split("\n").filter((n) => n !== "" && n !== "." && n !== ".."), ["filler", "master.key"], "a temporary key file was left beside master.key");
    assert.equal(f("rot2.rc").trim(), "0", f("rot2.err"));
    assert.equal(f("get.out"), CANARY, f("get.err"));
    // The break: the refusal on the full disk.
    assert.doesNotMatch(full.stderr, /internal error|this is a bug/, `key rotate on a full disk: ${show(full)}`);
    assert.notEqual(full.code, 70, show(full));
    assert.match(full.stderr, /space|full|disk/i, `the refusal should say the disk is full: ${show(full)}`);
    assert.ok(!full.stdout.includes(CANARY) && !full.stderr.includes(CANARY));
  },
);

test(
  "`lessor init` on a full disk says the disk is full (exit 5), naming the file, never an internal error: a home on it, and a key file or passphrase store placed on it",
  { skip: canUnshare ? false : "unshare -rm with a tmpfs mount is not permitted here", timeout: 60_000 },
  () => {
    const d = tmp();
    const lessor = `${JSON.stringify(process.execPath)} --import ${JSON.stringify(TSX)} ${JSON.stringify(MAIN)}`;
    const sh = `set -u
mkdir "$D/full" && mount -t tmpfs -o size=8k,mode=0700 tmpfs "$D/full" || exit 99
dd if=/dev/zero of="$D/full/filler" bs=512 2>/dev/null
export HOME=/tmp NO_COLOR=1
LESSOR_HOME="$D/full/h" ${lessor} init >/dev/null 2>"$D/home.err"; echo $? >"$D/home.rc"
mkdir -m 700 "$D/h2" "$D/h3"
printf '[keys]\\nfile = "%s"\\n' "$D/full/master.key" >"$D/h2/lessor.toml"; chmod 600 "$D/h2/lessor.toml"
LESSOR_HOME="$D/h2" ${lessor} init >/dev/null 2>"$D/file.err"; echo $? >"$D/file.rc"
printf '[keys]\\npassphrase_file = "%s"\\n' "$D/full/keystore.json" >"$D/h3/lessor.toml"; chmod 600 "$D/h3/lessor.toml"
LESSOR_PASSPHRASE=correct-horse-battery-staple LESSOR_HOME="$D/h3" ${lessor} init --passphrase >/dev/null 2>"$D/pass.err"; echo $? >"$D/pass.rc"
ls -a "$D/full" >"$D/ls"
`;
    const r = spawnSync("unshare", ["-rm", "sh", "-c", sh], { encoding: "utf8", timeout: 55_000, env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", D: d } });
    assert.equal(r.status, 0, `the namespace script failed: ${r.stdout}${r.stderr}`);
    const f = (n: string): string => readFileSync(join(d, n), "utf8");
    for (const [run, file] of [["home", "lessor.toml"], ["file", "master.key"], ["pass", "keystore.json"]] as const) {
      const err = f(`${run}.err`);
      assert.equal(f(`${run}.rc`).trim(), "5", `${run}: ${err}`);
      assert.doesNotMatch(err, /internal error|this is a bug/, `${run}: ${err}`);
      assert.match(err, new RegExp(`could not write .*${file.replace(".", "\\.")}: no space left on the device \\(ENOSPC\\); free space`), `${run}: ${err}`);
    }
    // No temporary file is left beside what could not be written.
    assert.deepEqual(f("ls").split("\n").filter((n) => n !== "" && n !== "." && n !== ".."), ["filler", "h"]);
  },
);

// ---------------------------------------------------------------------------------------------------
// One damaged record and the rotation

test("every command ends in a clean refusal naming the damage: one damaged version row (a wrapped DEK moved from another secret) stops `lessor key rotate` with a refusal naming that secret and version and what to do, and once it is removed the rotation finishes and the old key is gone", async () => {
  const h = await fileHome();
  for (const n of ["s1", "s2", "s3"]) assert.equal((await setSecret(h, n, `value-${n}`)).code, 0);
  const oldKey = (JSON.parse(readFileSync(join(h, "master.key"), "utf8")) as { keys: string[] }).keys[0]!;
  // s2's wrapped DEK replaced by s1's (bit rot, or a database writer): only s2 is damaged.
  db(h, (d) =>
    d
      .prepare(
        "UPDATE secret_versions SET wrapped_dek = (SELECT v.wrapped_dek FROM secret_versions v JOIN secrets s ON s.id = v.secret WHERE s.name = 's1') WHERE secret = (SELECT id FROM secrets WHERE name = 's2')",
      )
      .run(),
  );
  const first = await cli(["key", "rotate"], { LESSOR_HOME: h });
  const again = await cli(["key", "rotate"], { LESSOR_HOME: h });
  // The other secrets still read (what held).
  for (const n of ["s1", "s3"]) {
    const g = await cli(["secret", "get", n, "--reveal"], { LESSOR_HOME: h });
    assert.equal(g.stdout, `value-${n}`, show(g));
  }
  const stuck = (JSON.parse(readFileSync(join(h, "master.key"), "utf8")) as { keys: string[] }).keys.includes(oldKey);
  assert.doesNotMatch(first.stderr + again.stderr, /internal error/, show(first));
  // The refusal must let the admin act: name the record that stops the rotation (scope/name/version are not secret).
  assert.match(
    again.stderr,
    /global\/s2|\bs2\b/,
    `key rotate refused without naming the damaged record (the old key is ${stuck ? "still" : "no longer"} in master.key): ${show(again)}`,
  );
  assert.match(again.stderr, /version 1 of secret global\/s2/);
  assert.equal(again.code, 1, show(again));
  for (const r of [first, again]) assert.ok(!/value-s/.test(r.stdout + r.stderr), show(r));
  // What the refusal says to do works: the damaged secret removed, the rotation finishes and the old key goes.
  assert.equal((await cli(["secret", "rm", "global/s2", "--yes"], { LESSOR_HOME: h })).code, 0);
  const done = await cli(["key", "rotate"], { LESSOR_HOME: h });
  assert.equal(done.code, 0, show(done));
  assert.ok(!(JSON.parse(readFileSync(join(h, "master.key"), "utf8")) as { keys: string[] }).keys.includes(oldKey), "the old key is still in master.key");
  for (const n of ["s1", "s3"]) assert.equal((await cli(["secret", "get", n, "--reveal"], { LESSOR_HOME: h })).stdout, `value-${n}`);
});
