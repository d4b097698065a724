/**
 * The OS keychain key source (src/crypto/keys/keychain.ts) against a real keychain: the Secret Service
 * of gnome-keyring, in a private D-Bus session (`dbus-run-session`) with a private HOME, so the keyring
 * lives in a temp dir and never in the user's. Each session runs a scratch script (node --import tsx)
 * that works through the vault embedded and the `lessor` CLI from source, and prints what it saw as
 * JSON; the assertions are made here. The marker file, the selection order and a missing package need
 * no keychain and always run.
 *
 * Needs dbus-run-session (Debian: dbus-bin), gnome-keyring-daemon (gnome-keyring) and the optional
 * package @napi-rs/keyring; without one the keychain suite skips with one line saying which (on CI,
 * where .ci/run installs them, it fails instead).
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import type { ErrorCode } from "../src/base/errors.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { createKeyFile } from "../src/crypto/keys/file.js";
import { keychainKeySource } from "../src/crypto/keys/keychain.js";
import { TEST_ARGON2_PARAMS, createPassphraseKeyStore } from "../src/crypto/keys/passphrase.js";
import { selectKeySource } from "../src/crypto/keys/select.js";
import { filesUnder, rejectsWith, tempDir } from "./helpers.js";
import { keychainMissing, runInBusSession, type BusSessionResult } from "./keychain-harness.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(root, "src/cli/main.ts");
const CANARY = `CANARY-keychain-${randomBytes(6).toString("hex")}`;

const missing = keychainMissing();

const rejects = (p: Promise<unknown> | (() => unknown), code: ErrorCode): Promise<string> => rejectsWith(p, code);

/** A private (0700) directory. */
function privateDir(prefix: string): string {
  const d = tempDir(prefix);
  chmodSync(d, 0o700);
  return d;
}

const marker = (account: string, service = "lessor"): string => JSON.stringify({ lessor_keychain: 1, service, account }) + "\n";


// ---- without a keychain: the marker file, the selection order, a missing package ----

test("keychain marker: read like the key file: 0644, a symlink (even dangling), a wide directory and a damaged marker are refused, and never echoed", async () => {
  const home = privateDir("lessor-kc-marker-");
  const path = join(home, "keychain.json");
  writeFileSync(path, marker("0123abcd"), { mode: 0o600 });
  const src = keychainKeySource(path);
  assert.equal(src.kind, "keychain");
  assert.equal(src.describe, "keychain lessor/0123abcd");
  assert.equal(src.writable, true);

  chmodSync(path, 0o644);
  assert.match(await rejects(() => keychainKeySource(path), "insecure_permissions"), /chmod 600/);
  chmodSync(path, 0o600);

  const elsewhere = privateDir("lessor-kc-real-");
  writeFileSync(join(elsewhere, "m.json"), marker("0123abcd"), { mode: 0o600 });
  const linked = join(home, "linked.json");
  symlinkSync(join(elsewhere, "m.json"), linked);
  assert.match(await rejects(() => keychainKeySource(linked), "insecure_permissions"), /symbolic link/);

  // Selection sees a dangling symlink too (lstat), so it is refused rather than skipped.
  const dangling = join(home, "dangling.json");
  symlinkSync(join(elsewhere, "gone.json"), dangling);
  assert.match(await rejects(() => selectKeySource({ env: {}, keychainFile: dangling }), "insecure_permissions"), /symbolic link/);

  const wide = tempDir("lessor-kc-wide-");
  chmodSync(wide, 0o755);
  writeFileSync(join(wide, "keychain.json"), marker("0123abcd"), { mode: 0o600 });
  await rejects(() => keychainKeySource(join(wide, "keychain.json")), "insecure_permissions");

  const bad = join(home, "bad.json");
  for (const text of [
    `{"lessor_keychain":1,"service":"lessor","account":"${CANARY}/x"}`,
    `{"lessor_keychain":2,"service":"lessor","account":"${CANARY}"}`,
    `{"lessor_keychain":1,"service":"lessor","account":"a","extra":"${CANARY}"}`,
    `not json ${CANARY}`,
    `{"lessor_keychain":1,"service":"","account":"a"}`,
  ]) {
    writeFileSync(bad, text, { mode: 0o600 });
    const msg = await rejects(() => keychainKeySource(bad), "key_unavailable");
    assert.ok(!msg.includes(CANARY) && !msg.includes(text), msg);
    assert.match(msg, /not a valid lessor keychain marker .*restore it from your backup/);
  }
});

test("keychain selection: LESSOR_MASTER_KEY wins over the marker; the marker beside a key file or a passphrase store is refused, naming both; alone it selects the keychain", async () => {
  const home = privateDir("lessor-kc-select-");
  const keychainFile = join(home, "keychain.json");
  const keyFile = join(home, "master.key");
  const passphraseFile = join(home, "keystore.json");
  writeFileSync(keychainFile, marker("feedface"), { mode: 0o600 });

  assert.equal(selectKeySource({ env: { LESSOR_MASTER_KEY: randomBytes(32).toString("hex") }, keychainFile, keyFile }).kind, "env");
  const alone = selectKeySource({ env: {}, keychainFile, keyFile, passphraseFile, keyCommand: ["true"] });
  assert.equal(alone.kind, "keychain", "the keychain comes before a key command");
  assert.equal(alone.describe, "keychain lessor/feedface");

  createKeyFile(keyFile);
  let msg = await rejects(() => selectKeySource({ env: {}, keychainFile, keyFile, passphraseFile }), "key_unavailable");
  assert.ok(msg.includes(keychainFile) && msg.includes(keyFile) && /which holds the master key cannot be told/.test(msg), msg);
  // Still: LESSOR_MASTER_KEY is explicit, and wins.
  assert.equal(selectKeySource({ env: { LESSOR_MASTER_KEY: randomBytes(32).toString("hex") }, keychainFile, keyFile }).kind, "env");

  const h2 = privateDir("lessor-kc-select2-");
  writeFileSync(join(h2, "keychain.json"), marker("feedface"), { mode: 0o600 });
  await createPassphraseKeyStore(join(h2, "keystore.json"), "pw", TEST_ARGON2_PARAMS);
  msg = await rejects(() => selectKeySource({ env: { LESSOR_PASSPHRASE: "pw" }, keychainFile: join(h2, "keychain.json"), passphraseFile: join(h2, "keystore.json") }), "key_unavailable");
  assert.ok(msg.includes("keystore.json") && msg.includes("keychain.json"), msg);

  // Through a home: lessor init --key-source file on a keychain home adds no key file, and a home with both is not opened.
  const h3 = join(privateDir("lessor-kc-home-"), "home");
  mkdirSync(h3, { mode: 0o700 });
  writeFileSync(join(h3, "keychain.json"), marker("feedface"), { mode: 0o600 });
  await rejects(initHome({ home: h3, env: { LESSOR_HOME: h3 }, keySource: "file" }), "key_unavailable"); // it cannot open the fake entry
  assert.ok(!existsSync(join(h3, "master.key")), "no key file was added beside the marker");
  createKeyFile(join(h3, "master.key"));
  msg = await rejects(openVault({ home: h3, env: { LESSOR_HOME: h3 } }), "key_unavailable");
  assert.match(msg, /cannot be told/);
  // [keys] keychain_file moves the marker.
  writeFileSync(join(h3, "lessor.toml"), `[keys]\nfile = "none.key"\nkeychain_file = "elsewhere.json"\nkeychain_timeout = "5s"\n`, { mode: 0o600 });
  msg = await rejects(openVault({ home: h3, env: { LESSOR_HOME: h3 } }), "key_unavailable");
  assert.match(msg, /no master key is configured/);
  writeFileSync(join(h3, "lessor.toml"), `[keys]\nkeychain_timeout = "1ms"\n`, { mode: 0o600 });
  await rejects(openVault({ home: h3, env: { LESSOR_HOME: h3 } }), "config_invalid");
});

test("keychain: without @napi-rs/keyring the source says which package is missing and how to install it", async () => {
  const home = privateDir("lessor-kc-pkg-");
  writeFileSync(join(home, "keychain.json"), marker("abc123"), { mode: 0o600 });
  const src = keychainKeySource(join(home, "keychain.json"), { packageName: "@napi-rs/keyring-not-installed-here" });
  const msg = await rejects(src.load(), "key_unavailable");
  assert.match(msg, /optional package @napi-rs\/keyring-not-installed-here, which is not installed/);
  assert.match(msg, /npm install --save-exact @napi-rs\/keyring-not-installed-here@2\.1\.2/);
  assert.match(msg, /lessor\/abc123/);
});

test("package.json: @napi-rs/keyring is an optional dependency pinned exactly at 2.1.2, and the lockfile agrees", () => {
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { optionalDependencies?: Record<string, string>; dependencies: Record<string, string> };
  assert.equal(pkg.optionalDependencies?.["@napi-rs/keyring"], "2.1.2");
  assert.equal(pkg.dependencies["@napi-rs/keyring"], undefined, "optional, not required");
  const lock = JSON.parse(readFileSync(join(root, "package-lock.json"), "utf8")) as { packages: Record<string, { version?: string; optional?: boolean; optionalDependencies?: Record<string, string> }> };
  assert.equal(lock.packages[""]!.optionalDependencies?.["@napi-rs/keyring"], "2.1.2");
  assert.equal(lock.packages["node_modules/@napi-rs/keyring"]?.version, "2.1.2");
  assert.equal(lock.packages["node_modules/@napi-rs/keyring"]?.optional, true);
});

// ---- with a real keychain: gnome-keyring in a private D-Bus session ----

/** A private user for keychain sessions: HOME, XDG dirs, a lessor home path, the keyring's password. */
interface Box {
  dir: string;
  home: string;
  env: Record<string, string>;
}

function box(): Box {
  const dir = privateDir("lessor-kc-box-");
  const user = join(dir, "user");
  const run = join(dir, "run");
  mkdirSync(user, { mode: 0o700 });
  mkdirSync(run, { mode: 0o700 });
  const home = join(dir, "lessor");
  return {
    dir,
    home,
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: user,
      XDG_DATA_HOME: join(user, ".local/share"),
      XDG_CONFIG_HOME: join(user, ".config"),
      XDG_CACHE_HOME: join(user, ".cache"),
      XDG_RUNTIME_DIR: run,
      LESSOR_HOME: home,
      NO_COLOR: "1",
      KEYRING_PW: `pw-${randomBytes(8).toString("hex")}`,
    },
  };
}

/** What every scratch script starts with: the keychain package, the CLI from source, a place for results. */
const PRELUDE = `
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join } from "node:path";
const ROOT = ${JSON.stringify(root)};
const CLI = ${JSON.stringify(CLI)};
const { Entry, findCredentials } = createRequire(join(ROOT, "package.json"))("@napi-rs/keyring");
const entry = (account) => new Entry("lessor", account, { linux: { store: "secret-service" } });
const lessor = (args, input = "", env = {}) => {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, ["--import", "tsx", CLI, ...args], { cwd: ROOT, env: { ...process.env, ...env }, input, encoding: "utf8", timeout: 60000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - t0 };
};
const account = () => JSON.parse(readFileSync(join(process.env.LESSOR_HOME, "keychain.json"), "utf8")).account;
const out = {};
`;

let scripts = 0;

/**
 * Runs `body` (after {@link PRELUDE}) in a private D-Bus session with gnome-keyring's Secret Service:
 * "unlocked" starts it unlocked with the box's password (creating the login keyring the first time);
 * "locked" starts it without the password, so the keyring made earlier stays locked.
 */
function session(b: Box, body: string, keyring: "unlocked" | "locked" = "unlocked", timeoutMs = 200_000): Promise<BusSessionResult> {
  const script = join(b.dir, `scratch-${++scripts}.mts`);
  writeFileSync(script, `${PRELUDE}\n${body}\nprocess.stdout.write("\\nRESULT " + JSON.stringify(out) + "\\n");\n`, { mode: 0o600 });
  const start =
    keyring === "unlocked"
      ? 'printf "%s" "$KEYRING_PW" | gnome-keyring-daemon --unlock --components=secrets >/dev/null'
      : "gnome-keyring-daemon --start --components=secrets >/dev/null";
  return runInBusSession({ start, tsx: "tsx", script, cwd: root, env: b.env, timeoutMs });
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs the CLI from source in this process's environment (no keychain session), with a kill timer. */
function lessorHere(args: string[], env: Record<string, string>, timeoutMs = 60_000): Run {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, ["--import", "tsx", CLI, ...args], { cwd: root, env, input: "", encoding: "utf8", timeout: timeoutMs });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - t0 };
}

const keysOf = (ring: unknown): string[] => (JSON.parse(ring as string) as { keys: string[] }).keys;

/** Asserts no file under `dir` holds any of `keys` (hex, either case, or the raw bytes). */
function assertKeysInNoFile(dir: string, keys: string[]): void {
  const files = filesUnder(dir);
  assert.ok(files.length >= 4, files.join(", "));
  for (const f of files) {
    const data = readFileSync(f);
    for (const k of keys) {
      assert.ok(!data.includes(k) && !data.includes(k.toUpperCase()) && !data.includes(Buffer.from(k, "hex")), `${f} holds the master key`);
    }
  }
}

describe("the OS keychain key source, on gnome-keyring's Secret Service in a private D-Bus session", { skip: missing === null || process.env.CI ? false : `keychain tests skipped: ${missing}` }, () => {
  test("keychain prerequisites are installed (CI must run these tests, not skip them)", () => {
    assert.equal(missing, null, missing ?? "");
  });

  test("lessor init --key-source keychain: no key file, a 0600 marker, the key only in the keychain; secrets stored and revealed embedded and through the CLI; status names the entry; the canary never shows", { timeout: 300_000 }, async () => {
    const b = box();
    const { out } = await session(
      b,
      `
out.init = lessor(["init", "--key-source", "keychain"]);
out.account = account();
out.ring = entry(out.account).getPassword();
out.setCli = lessor(["secret", "set", "cli-secret"], ${JSON.stringify(CANARY)});
out.getCli = lessor(["secret", "get", "cli-secret", "--reveal"]);
const { openVault } = await import(join(ROOT, "src/config/open-vault.ts"));
const v = await openVault({ home: process.env.LESSOR_HOME, env: { LESSOR_HOME: process.env.LESSOR_HOME } });
await v.admin().storeSecret({ name: "embedded-secret", value: ${JSON.stringify(CANARY + "-embedded")} });
out.embeddedReadsCli = (await v.admin().revealSecret({ scope: "global", name: "cli-secret" })).value.unsafeText();
out.keySource = (await v.admin().describe()).keySource;
await v.close();
out.getEmbedded = lessor(["secret", "get", "embedded-secret", "--reveal"]);
out.status = lessor(["status"]);
out.audit = lessor(["audit", "query", "--json", "--limit", "1000"]);
out.verify = lessor(["audit", "verify"]);
out.again = lessor(["init", "--key-source", "keychain"]);
out.credentials = findCredentials("lessor").map((c) => c.account);
`,
    );
    const init = out.init as Run;
    const account = out.account as string;
    assert.equal(init.code, 0, init.stderr);
    assert.match(account, /^[0-9a-f]{24}$/);
    assert.match(init.stdout, new RegExp(`created ${b.home}/keychain\\.json`));
    assert.match(init.stdout, new RegExp(`the master key is in the OS keychain: service "lessor", account "${account}" \\(no key file was written\\); the keychain must be unlocked for lessor to open this vault`));
    assert.ok(!existsSync(join(b.home, "master.key")) && !existsSync(join(b.home, "keystore.json")), "no key file, no key store");
    const st = lstatSync(join(b.home, "keychain.json"));
    assert.ok(st.isFile());
    assert.equal(st.mode & 0o777, 0o600);
    assert.deepEqual(JSON.parse(readFileSync(join(b.home, "keychain.json"), "utf8")), { lessor_keychain: 1, service: "lessor", account });
    const keys = keysOf(out.ring);
    assert.equal(keys.length, 1);
    assert.match(keys[0]!, /^[0-9a-f]{64}$/);
    assert.deepEqual(out.credentials, [account], "one entry, under service lessor");

    for (const r of [out.setCli, out.getCli, out.getEmbedded, out.status, out.audit, out.verify] as Run[]) assert.equal(r.code, 0, r.stderr);
    assert.equal((out.getCli as Run).stdout, CANARY);
    assert.equal((out.getEmbedded as Run).stdout, `${CANARY}-embedded`);
    assert.equal(out.embeddedReadsCli, CANARY);
    assert.equal(out.keySource, `keychain lessor/${account}`);
    assert.match((out.status as Run).stdout, new RegExp(`key source: +keychain lessor/${account}\\n`));
    assert.match((out.again as Run).stdout, /already set up; nothing changed/);

    // The canary: in no output but the reveals, not in the audit trail, not in any file of the home.
    for (const [name, r] of Object.entries(out)) {
      if (typeof r !== "object" || r === null || !("stdout" in r) || name === "getCli" || name === "getEmbedded") continue;
      const { stdout, stderr } = r as Run;
      assert.ok(!stdout.includes(CANARY) && !stderr.includes(CANARY), `${name} shows the canary`);
    }
    assert.ok(JSON.parse((out.audit as Run).stdout).length >= 3);
    assert.ok(!(out.getCli as Run).stderr.includes(CANARY));
    for (const f of filesUnder(b.home)) assert.ok(!readFileSync(f).includes(CANARY), `${f} holds the canary`);
    // The master key: in no file of the home, and never printed.
    assertKeysInNoFile(b.home, keys);
    for (const r of Object.values(out)) if (typeof r === "object" && r !== null && "stdout" in r) assert.ok(!(r as Run).stdout.includes(keys[0]!) && !(r as Run).stderr.includes(keys[0]!));
  });

  test("lessor key rotate with the keychain: the new key current in the entry, the old one retired, old secrets still read, a changed entry refuses a rotation", { timeout: 300_000 }, async () => {
    const b = box();
    const { out } = await session(
      b,
      `
out.init = lessor(["init", "--key-source", "keychain"]);
out.account = account();
out.before = entry(out.account).getPassword();
out.set = lessor(["secret", "set", "old-secret"], ${JSON.stringify(CANARY)});
out.idBefore = JSON.parse(lessor(["status", "--json"]).stdout).keyId;
out.rotate = lessor(["key", "rotate"]);
out.after = entry(out.account).getPassword();
out.idAfter = JSON.parse(lessor(["status", "--json"]).stdout).keyId;
out.get = lessor(["secret", "get", "old-secret", "--reveal"]);
out.verify = lessor(["audit", "verify"]);
// A rotation refuses an entry that changed since its keys were loaded (as another rotation would).
const { keychainKeySource } = await import(join(ROOT, "src/crypto/keys/keychain.ts"));
const src = keychainKeySource(join(process.env.LESSOR_HOME, "keychain.json"));
const ring = await src.load();
const e = entry(out.account);
const now = e.getPassword();
e.setPassword(JSON.stringify({ lessor_keyfile: 1, keys: ["ab".repeat(32), ...JSON.parse(now).keys] }));
try { await src.promote(ring, Buffer.alloc(32, 7)); out.promoted = true; } catch (err) { out.refused = { code: err.code, message: err.message }; }
out.untouched = e.getPassword();
`,
    );
    assert.equal((out.init as Run).code, 0, (out.init as Run).stderr);
    const rotate = out.rotate as Run;
    assert.equal(rotate.code, 0, rotate.stderr);
    assert.match(rotate.stdout, new RegExp(`^master key rotated: ${out.idBefore as string} → ${out.idAfter as string}; 1 data key re-wrapped\\n$`));
    assert.notEqual(out.idAfter, out.idBefore);
    const before = keysOf(out.before);
    const after = keysOf(out.after);
    assert.equal(after.length, 1, "the old key was retired from the entry");
    assert.notEqual(after[0], before[0], "the entry changed");
    assert.equal((out.get as Run).code, 0, (out.get as Run).stderr);
    assert.equal((out.get as Run).stdout, CANARY);
    assert.equal((out.verify as Run).code, 0, (out.verify as Run).stderr);
    assertKeysInNoFile(b.home, [...before, ...after]);
    for (const r of [rotate, out.get as Run]) assert.ok(!r.stderr.includes(CANARY));
    assert.ok(!rotate.stdout.includes(CANARY));
    assert.equal(out.promoted, undefined);
    assert.deepEqual(out.refused, { code: "key_unavailable", message: `the OS keychain entry lessor/${out.account as string} changed since its keys were loaded (another master-key rotation wrote it, or it was edited), so this rotation wrote nothing; wait for any other rotation to finish, then run the command again` });
    assert.equal(keysOf(out.untouched).length, 2, "the refused rotation wrote nothing");
  });

  test("a missing or damaged keychain entry gives key_unavailable naming service/account and the fix, never the content", { timeout: 300_000 }, async () => {
    const b = box();
    const DAMAGE = `DAMAGED-${randomBytes(8).toString("hex")}`;
    const { out } = await session(
      b,
      `
out.init = lessor(["init", "--key-source", "keychain"]);
out.account = account();
const e = entry(out.account);
const ring = e.getPassword();
e.deleteCredential();
out.missing = lessor(["status"]);
out.damaged = [];
for (const text of [${JSON.stringify(`not json ${DAMAGE}`)}, JSON.stringify({ lessor_keyfile: 1, keys: [${JSON.stringify(DAMAGE)}] }), JSON.stringify({ lessor_keyfile: 1, keys: [], note: ${JSON.stringify(DAMAGE)} })]) {
  e.setPassword(text);
  out.damaged.push(lessor(["secret", "list"]));
}
e.setPassword(ring);
out.restored = lessor(["status"]);
`,
    );
    assert.equal((out.init as Run).code, 0, (out.init as Run).stderr);
    const account = out.account as string;
    const gone = out.missing as Run;
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, new RegExp(`the OS keychain has no entry lessor/${account} \\(service "lessor", account "${account}"\\), which ${b.home}/keychain\\.json says holds the master key: unlock or select the keychain that holds it .*restore the entry from your backup`));
    for (const r of out.damaged as Run[]) {
      assert.equal(r.code, 1);
      assert.match(r.stderr, new RegExp(`the OS keychain entry lessor/${account} is not a valid lessor key ring \\(.*\\); restore it from your backup`));
      assert.ok(!r.stderr.includes(DAMAGE) && !r.stdout.includes(DAMAGE), r.stderr);
    }
    assert.equal((out.restored as Run).code, 0, (out.restored as Run).stderr);
  });

  test("a locked keychain, a session bus that is not there, and one that never answers: key_unavailable with what to do, within the time limit", { timeout: 300_000 }, async () => {
    const b = box();
    const made = await session(b, `out.init = lessor(["init", "--key-source", "keychain"]); out.account = account();`);
    assert.equal((made.out.init as Run).code, 0, (made.out.init as Run).stderr);
    const account = made.out.account as string;

    // The login keyring stays locked (the daemon is started without its password; there is no one to type it).
    const other = join(b.dir, "second-home");
    const { out } = await session(
      b,
      `
out.status = lessor(["status"]);
out.init = lessor(["init", "--key-source", "keychain"], "", { LESSOR_HOME: ${JSON.stringify(other)} });
`,
      "locked",
    );
    const locked = out.status as Run;
    assert.equal(locked.code, 1);
    assert.match(locked.stderr, new RegExp(`the OS keychain could not be used for lessor/${account} \\(.+\\); unlock the keychain`));
    assert.ok(locked.ms < 20_000, `took ${locked.ms} ms`);
    const init = out.init as Run;
    assert.equal(init.code, 1);
    assert.match(init.stderr, /unlock the keychain/);
    assert.ok(!existsSync(join(other, "keychain.json")), "a failed init leaves no marker");

    // No session bus at that address: refused at once.
    const nowhere = lessorHere(["status"], { ...b.env, DBUS_SESSION_BUS_ADDRESS: `unix:path=${join(b.dir, "no-bus")}` });
    assert.equal(nowhere.code, 1);
    assert.match(nowhere.stderr, new RegExp(`the OS keychain could not be used for lessor/${account} \\(.*\\); unlock the keychain and make sure this session can reach it .*DBUS_SESSION_BUS_ADDRESS`));
    assert.ok(nowhere.ms < 20_000, `took ${nowhere.ms} ms`);

    // A bus that accepts and never answers: the keychain client would wait for ever; the time limit ends it.
    const silent = join(b.dir, "silent-bus");
    const held: Socket[] = [];
    const server = createServer((c) => void held.push(c)).listen(silent);
    await new Promise((r) => server.once("listening", r));
    try {
      const cfg = join(b.home, "lessor.toml");
      writeFileSync(cfg, readFileSync(cfg, "utf8").replace("[keys]\n", '[keys]\nkeychain_timeout = "2s"\n'));
      const hung = await new Promise<Run>((resolve) => {
        const t0 = Date.now();
        const child = spawn(process.execPath, ["--import", "tsx", CLI, "status"], { cwd: root, env: { ...b.env, DBUS_SESSION_BUS_ADDRESS: `unix:path=${silent}` }, stdio: ["ignore", "pipe", "pipe"] });
        const o: Buffer[] = [];
        const e: Buffer[] = [];
        child.stdout.on("data", (d: Buffer) => o.push(d));
        child.stderr.on("data", (d: Buffer) => e.push(d));
        const kill = setTimeout(() => child.kill("SIGKILL"), 30_000);
        child.on("close", (code) => {
          clearTimeout(kill);
          resolve({ code, stdout: Buffer.concat(o).toString(), stderr: Buffer.concat(e).toString(), ms: Date.now() - t0 });
        });
      });
      assert.equal(hung.code, 1, hung.stderr);
      assert.match(hung.stderr, new RegExp(`the OS keychain did not answer within 2000 ms for lessor/${account}: it may be locked .*raise keychain_timeout under \\[keys\\]`));
      assert.ok(hung.ms < 15_000, `took ${hung.ms} ms`);
    } finally {
      for (const c of held) c.destroy();
      server.close();
    }
  });

  test("init undoes itself: when the marker cannot be written, the new keychain entry is deleted again", { timeout: 300_000 }, async () => {
    const b = box();
    mkdirSync(b.home, { mode: 0o700 });
    const { out } = await session(
      b,
      `
const { createKeychainKey } = await import(join(ROOT, "src/crypto/keys/keychain.ts"));
try {
  // A name longer than a file name may be: the entry is made, the marker cannot be.
  await createKeychainKey(join(process.env.LESSOR_HOME, "m".repeat(300) + ".json"));
  out.made = true;
} catch (err) {
  out.error = err.code;
}
out.credentials = findCredentials("lessor").map((c) => c.account);
`,
    );
    assert.equal(out.made, undefined);
    assert.equal(out.error, "ENAMETOOLONG");
    assert.deepEqual(out.credentials, [], "no orphaned entry is left in the keychain");
  });
});

test("--no-sandbox's warning names where this home's master key is: the keychain for a keychain home, not a key file it does not have", async () => {
  const { noSandboxWarning, vaultPaths } = await import("../src/cli/run/sandbox.js");
  const home = join(tempDir(), "home");
  mkdirSync(home, { mode: 0o700 });
  writeFileSync(join(home, "keychain.json"), '{"lessor_keychain":1,"service":"lessor","account":"abc"}\n', { mode: 0o600 });
  const w = noSandboxWarning(vaultPaths(home, {}));
  assert.match(w, /the master key in your OS keychain .*keychain\.json names the entry/);
  assert.doesNotMatch(w, /master\.key/);
  writeFileSync(join(home, "master.key"), "x", { mode: 0o600 });
  assert.match(noSandboxWarning(vaultPaths(home, {})), /the vault's key file .*master\.key/);
});
