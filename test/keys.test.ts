import { after, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { assertPrivateDir, assertPrivateFile, ensurePrivateDir } from "../src/fs/perms.js";
import { writeFileAtomic } from "../src/fs/atomic-file.js";
import { type Keyring, keyIdOf } from "../src/crypto/keyring.js";
import { commandKeySource } from "../src/crypto/keys/command.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { createKeyFile, fileKeySource } from "../src/crypto/keys/file.js";
import { TEST_ARGON2_PARAMS, createPassphraseKeyStore, passphraseKeySource, tuneArgon2 } from "../src/crypto/keys/passphrase.js";
import { selectKeySource } from "../src/crypto/keys/select.js";
import { rejectsWith } from "./helpers.js";

const hex = (): string => randomBytes(32).toString("hex");
const idOfHex = (h: string): string => keyIdOf(Buffer.from(h, "hex"));
const mode = (p: string): number => statSync(p).mode & 0o777;

const made: string[] = [];
after(() => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

/** A fresh private (0700) directory to act as LESSOR_HOME. */
function home(): string {
  const d = mkdtempSync(join(tmpdir(), "lessor-keys-"));
  chmodSync(d, 0o700);
  made.push(d);
  return d;
}

const rejects = rejectsWith;

// ---- env ----

test("env: a valid key loads; whitespace is trimmed; the source is read-only", async () => {
  const k = hex();
  const src = envKeySource({ LESSOR_MASTER_KEY: `  ${k.toUpperCase()}\n` })!;
  assert.equal(src.kind, "env");
  assert.equal(src.writable, false);
  assert.ok(!src.describe.includes(k));
  const ring = await src.load();
  assert.deepEqual(ring.ids(), [idOfHex(k)]);
  assert.equal(ring.current.key.toString("hex"), k);
  const again = await src.load();
  ring.wipe();
  assert.equal(again.current.key.toString("hex"), k, "each load gets its own buffers");
});

test("env: unset or empty gives null", () => {
  assert.equal(envKeySource({}), null);
  assert.equal(envKeySource({ LESSOR_MASTER_KEY: "" }), null);
  assert.equal(envKeySource({ LESSOR_MASTER_KEY: "   " }), null);
});

test("env: wrong length and non-hex are refused, naming the variable and never echoing it", async () => {
  const k = hex();
  for (const bad of [k.slice(0, 62), k + "00", "zz" + k.slice(2), k.slice(0, 32) + " " + k.slice(33)]) {
    await rejects(() => envKeySource({ LESSOR_MASTER_KEY: bad }), "key_unavailable", (m) => m.includes("LESSOR_MASTER_KEY") && m.includes("64 hex") && !m.includes(bad.trim().slice(0, 16)));
  }
});

test("env: LESSOR_MASTER_KEY_PREVIOUS adds readable older keys after the current one", async () => {
  const [cur, p1, p2] = [hex(), hex(), hex()];
  const ring = await envKeySource({ LESSOR_MASTER_KEY: cur, LESSOR_MASTER_KEY_PREVIOUS: ` ${p1} ,, ${p2},` })!.load();
  assert.deepEqual(ring.ids(), [cur, p1, p2].map(idOfHex));
  assert.equal(ring.current.id, idOfHex(cur));
  assert.equal(ring.get(idOfHex(p2))!.key.toString("hex"), p2);
  const badPrev = p1.slice(0, 40);
  await rejects(
    () => envKeySource({ LESSOR_MASTER_KEY: cur, LESSOR_MASTER_KEY_PREVIOUS: `${p1},${badPrev}` }),
    "key_unavailable",
    (m) => m.includes("LESSOR_MASTER_KEY_PREVIOUS entry 2") && !m.includes(badPrev) && !m.includes(p1) && !m.includes(cur),
  );
});

// ---- permissions ----

test("perms: ensurePrivateDir creates 0700 dirs and refuses, without changing, an existing wider one", async () => {
  const h = home();
  const d = join(h, "a", "b");
  ensurePrivateDir(d);
  assert.equal(mode(d), 0o700);
  ensurePrivateDir(d); // existing private dir is fine
  const wide = join(h, "wide");
  mkdirSync(wide);
  chmodSync(wide, 0o755);
  await rejects(() => ensurePrivateDir(wide), "insecure_permissions", (m) => m.includes(`chmod 700 ${wide}`) && m.includes("0755"));
  assert.equal(mode(wide), 0o755, "never silently chmod a user's directory");
  await rejects(() => assertPrivateDir(join(h, "missing"), "the home"), "key_unavailable", (m) => m.includes("does not exist"));
  await rejects(() => assertPrivateFile(join(h, "missing"), "the key file"), "key_unavailable");
});

test("perms: a file owned by another user is refused", { skip: process.getuid?.() !== 0 && "needs root to chown" }, async () => {
  const h = home();
  const f = join(h, "k");
  writeFileSync(f, "x", { mode: 0o600 });
  chownSync(f, 65534, 65534);
  await rejects(() => assertPrivateFile(f, "the key file"), "insecure_permissions", (m) => m.includes("owned by uid 65534") && m.includes("chown"));
  chownSync(h, 65534, 65534);
  await rejects(() => assertPrivateDir(h, "the home"), "insecure_permissions", (m) => m.includes("owned by uid 65534"));
});

test("atomic write replaces the file whole, keeps the mode and leaves no temp files", () => {
  const h = home();
  const f = join(h, "f");
  writeFileAtomic(f, "one");
  writeFileAtomic(f, Buffer.from("two"));
  assert.equal(readFileSync(f, "utf8"), "two");
  assert.equal(mode(f), 0o600);
  assert.deepEqual(readdirSync(h), ["f"]);
});

// ---- key file ----

test("key file: created 0600 in a 0700 dir, loads, and is never overwritten", async () => {
  const h = join(home(), "lessor-home");
  const f = join(h, "master.key");
  createKeyFile(f);
  assert.equal(mode(h), 0o700);
  assert.equal(mode(f), 0o600);
  const text = readFileSync(f, "utf8");
  const doc = JSON.parse(text) as { lessor_keyfile: number; keys: string[] };
  assert.equal(doc.lessor_keyfile, 1);
  assert.equal(doc.keys.length, 1);
  const src = fileKeySource(f);
  assert.equal(src.kind, "file");
  assert.ok(src.writable);
  const ring = await src.load();
  assert.deepEqual(ring.ids(), [idOfHex(doc.keys[0]!)]);
  await rejects(() => createKeyFile(f), "invalid_request", (m) => m.includes("already exists"));
  assert.equal(readFileSync(f, "utf8"), text, "the existing key is untouched");
});

test("key file: mode 0644 is refused with insecure_permissions and a chmod 600 fix", async () => {
  const h = home();
  const f = join(h, "master.key");
  createKeyFile(f);
  chmodSync(f, 0o644);
  await rejects(fileKeySource(f).load(), "insecure_permissions", (m) => m.includes(`chmod 600 ${f}`) && m.includes("0644"));
  chmodSync(f, 0o640);
  await rejects(fileKeySource(f).load(), "insecure_permissions", (m) => m.includes("chmod 600"));
  chmodSync(f, 0o600);
  await fileKeySource(f).load();
});

test("key file: a 0755 home directory is refused", async () => {
  const h = home();
  const f = join(h, "master.key");
  createKeyFile(f);
  chmodSync(h, 0o755);
  await rejects(fileKeySource(f).load(), "insecure_permissions", (m) => m.includes(`chmod 700 ${h}`));
  await rejects(() => createKeyFile(join(h, "other.key")), "insecure_permissions");
});

test("key file: a symlinked key file is refused", async () => {
  const h = home();
  const real = join(h, "real.key");
  createKeyFile(real);
  const link = join(h, "master.key");
  symlinkSync(real, link);
  await rejects(fileKeySource(link).load(), "insecure_permissions", (m) => m.includes("symbolic link"));
});

test("key file: corrupt contents are refused without echoing them", async () => {
  const h = home();
  const f = join(h, "master.key");
  const k = hex();
  const bad = [
    `{"lessor_keyfile":1,"keys":["${k}"]`, // truncated JSON
    `{"lessor_keyfile":1,"keys":["${k}"],"note":"${k}"}`, // unknown field
    `{"lessor_keyfile":2,"keys":["${k}"]}`, // unknown version
    `{"lessor_keyfile":1,"keys":["${k.slice(0, 63)}g"]}`, // bad hex
    `{"lessor_keyfile":1,"keys":["${k}0"]}`, // wrong length
    `{"lessor_keyfile":1,"keys":[]}`,
    `["${k}"]`,
  ];
  for (const text of bad) {
    writeFileSync(f, text, { mode: 0o600 });
    await rejects(fileKeySource(f).load(), "key_unavailable", (m) => m.includes(f) && !m.includes(k.slice(0, 12)) && !m.includes(k.slice(40)));
  }
});

test("key file: promote then retire write durable files, current first", async () => {
  const h = home();
  const f = join(h, "master.key");
  createKeyFile(f);
  const src = fileKeySource(f);
  const r1 = await src.load();
  const oldId = r1.current.id;
  const newKey = randomBytes(32);
  const newId = keyIdOf(newKey);

  const r2 = await src.promote!(r1, newKey);
  assert.deepEqual(r2.ids(), [newId, oldId]);
  r1.wipe();
  newKey.fill(0);
  assert.equal(keyIdOf(r2.current.key), newId, "the promoted ring owns its own copies");
  assert.deepEqual((await fileKeySource(f).load()).ids(), [newId, oldId], "reload from disk after promote");
  assert.equal(mode(f), 0o600);

  await rejects(src.retire!(r2, [oldId]), "invalid_request", (m) => m.includes("current"));
  await rejects(src.retire!(r2, [newId, "ffffffffffffffff"]), "invalid_request");
  const r3 = await src.retire!(r2, [newId]);
  assert.deepEqual(r3.ids(), [newId]);
  assert.deepEqual((await fileKeySource(f).load()).ids(), [newId], "reload from disk after retire");
  assert.equal(mode(f), 0o600);
  assert.deepEqual(readdirSync(h), ["master.key"], "no temp files left");

  // A stale ring (the file changed since it was loaded) is refused instead of dropping keys.
  await rejects(src.promote!(r2, randomBytes(32)), "key_unavailable", (m) => m.includes("changed"));
  assert.deepEqual((await fileKeySource(f).load()).ids(), [newId]);
});

// ---- passphrase ----

test("passphrase store: round trip, wrong passphrase refused, file is private", async () => {
  const h = join(home(), "home");
  const f = join(h, "keystore.json");
  await createPassphraseKeyStore(f, "correct horse battery staple", TEST_ARGON2_PARAMS);
  assert.equal(mode(h), 0o700);
  assert.equal(mode(f), 0o600);
  const doc = JSON.parse(readFileSync(f, "utf8"));
  assert.deepEqual(Object.keys(doc).sort(), ["alg", "kdf", "lessor_keystore", "sealed"]);
  assert.equal(doc.kdf.alg, "argon2id");
  assert.equal(Buffer.from(doc.kdf.salt, "base64").length, 16);

  let asked = 0;
  const src = passphraseKeySource(f, async () => (asked++, "correct horse battery staple"));
  assert.equal(src.kind, "passphrase");
  assert.ok(src.writable);
  const ring = await src.load();
  assert.equal(asked, 1);
  assert.equal(ring.ids().length, 1);
  assert.deepEqual((await src.load()).ids(), ring.ids(), "the same key each load");

  await rejects(passphraseKeySource(f, async () => "Correct horse battery staple").load(), "key_unavailable", (m) => m.includes("passphrase is wrong") && m.includes(f));
  await rejects(passphraseKeySource(f, async () => "").load(), "key_unavailable");
  await rejects(createPassphraseKeyStore(f, "again", TEST_ARGON2_PARAMS), "invalid_request", (m) => m.includes("already exists"));
  chmodSync(f, 0o644);
  await rejects(src.load(), "insecure_permissions", (m) => m.includes("chmod 600"));
});

test("passphrase store: changed KDF parameters, salt or algorithm are refused", async () => {
  const f = join(home(), "keystore.json");
  const pw = "pw";
  await createPassphraseKeyStore(f, pw, TEST_ARGON2_PARAMS);
  const original = readFileSync(f, "utf8");
  const edits: Array<(d: any) => void> = [
    (d) => (d.kdf.iterations = 2),
    (d) => (d.kdf.memory_kib = 128),
    (d) => (d.kdf.parallelism = 2),
    (d) => (d.kdf.salt = randomBytes(16).toString("base64")),
    (d) => (d.alg = "xchacha20-poly1305"),
  ];
  for (const edit of edits) {
    const d = JSON.parse(original);
    edit(d);
    writeFileSync(f, JSON.stringify(d), { mode: 0o600 });
    await rejects(passphraseKeySource(f, async () => pw).load(), "key_unavailable", (m) => m.includes("passphrase is wrong, or"));
  }
  // Swapping in another store's (valid) KDF block fails too.
  const g = join(home(), "other.json");
  await createPassphraseKeyStore(g, pw, TEST_ARGON2_PARAMS);
  const d = JSON.parse(original);
  d.kdf = JSON.parse(readFileSync(g, "utf8")).kdf;
  writeFileSync(f, JSON.stringify(d), { mode: 0o600 });
  await rejects(passphraseKeySource(f, async () => pw).load(), "key_unavailable");
  // Malformed documents are refused with a reason, not passed to Argon2.
  for (const edit of [(x: any) => (x.extra = 1), (x: any) => (x.kdf.memory_kib = 1e12), (x: any) => (x.kdf.alg = "scrypt"), (x: any) => (x.lessor_keystore = 2)]) {
    const x = JSON.parse(original);
    edit(x);
    writeFileSync(f, JSON.stringify(x), { mode: 0o600 });
    await rejects(passphraseKeySource(f, async () => pw).load(), "key_unavailable", (m) => m.includes("not a valid lessor key store"));
  }
  writeFileSync(f, original, { mode: 0o600 });
  await passphraseKeySource(f, async () => pw).load();
});

test("passphrase store: promote and retire reseal with the same passphrase", async () => {
  const f = join(home(), "keystore.json");
  await createPassphraseKeyStore(f, "pw", TEST_ARGON2_PARAMS);
  const before = JSON.parse(readFileSync(f, "utf8"));
  const src = passphraseKeySource(f, async () => "pw");
  const r1 = await src.load();
  const oldId = r1.current.id;
  const newKey = randomBytes(32);
  const r2 = await src.promote!(r1, newKey);
  r1.wipe();
  assert.deepEqual(r2.ids(), [keyIdOf(newKey), oldId]);
  const after = JSON.parse(readFileSync(f, "utf8"));
  assert.deepEqual(after.kdf, before.kdf, "same salt and parameters");
  assert.notEqual(after.sealed.slice(0, 16), before.sealed.slice(0, 16), "fresh nonce");
  assert.deepEqual((await passphraseKeySource(f, async () => "pw").load()).ids(), r2.ids());
  const r3 = await src.retire!(r2, [keyIdOf(newKey)]);
  assert.deepEqual((await passphraseKeySource(f, async () => "pw").load()).ids(), [keyIdOf(newKey)]);
  await rejects(passphraseKeySource(f, async () => "wrong").load(), "key_unavailable");
  // Once every ring from the session is wiped, the cached KEK is gone and rotation needs a new load.
  r2.wipe();
  r3.wipe();
  await rejects(src.promote!(r3, randomBytes(32)), "internal");
  const foreign: Keyring = await fileKeySourceRing();
  await rejects(src.promote!(foreign, randomBytes(32)), "internal");
});

test("passphrase store: reload reads keys another process rotated in, with the key derived at load, never asking again", async () => {
  const f = join(home(), "keystore.json");
  await createPassphraseKeyStore(f, "pw", TEST_ARGON2_PARAMS);
  let asked = 0;
  const mine = passphraseKeySource(f, async () => (asked++, "pw"));
  const ring = await mine.load();
  assert.equal(asked, 1);
  // Another process (its own source on the same file) rotates.
  const other = passphraseKeySource(f, async () => "pw");
  const theirs = await other.load();
  const newKey = randomBytes(32);
  const rotated = await other.promote!(theirs, newKey);
  const again = await mine.reload!(ring);
  assert.equal(asked, 1, "the passphrase is not asked for again");
  assert.deepEqual(again.ids(), rotated.ids());
  // The reloaded ring belongs to this source's session: it can rotate further.
  ring.wipe();
  const r3 = await mine.retire!(again, [keyIdOf(newKey)]);
  assert.deepEqual(r3.ids(), [keyIdOf(newKey)]);
  // A store sealed again under another passphrase (another salt) is refused, saying to restart.
  rmSync(f);
  await createPassphraseKeyStore(f, "other passphrase", TEST_ARGON2_PARAMS);
  await rejects(mine.reload!(r3), "key_unavailable", (m) => m.includes("restart lessor"));
});

async function fileKeySourceRing(): Promise<Keyring> {
  const f = join(home(), "k");
  createKeyFile(f);
  return fileKeySource(f).load();
}

test("tuneArgon2 returns 64 MiB, one lane and at least one iteration", async () => {
  const p = await tuneArgon2(50);
  assert.equal(p.memoryKib, 65536);
  assert.equal(p.parallelism, 1);
  assert.ok(Number.isInteger(p.iterations) && p.iterations >= 1 && p.iterations <= 20);
});

// ---- command ----

const node = process.execPath;

test("command: a child printing keys loads them, current first", async () => {
  const [a, b] = [hex(), hex()];
  const one = await commandKeySource([node, "-e", `console.log(${JSON.stringify(a)})`]).load();
  assert.deepEqual(one.ids(), [idOfHex(a)]);
  const two = commandKeySource([node, "-e", `process.stdout.write(${JSON.stringify(`${a}\r\n${b}\n\n`)})`]);
  assert.equal(two.kind, "command");
  assert.equal(two.writable, false);
  assert.deepEqual((await two.load()).ids(), [idOfHex(a), idOfHex(b)]);
  const envd = commandKeySource([node, "-e", "console.log(process.env.K)"], { env: { K: b } });
  assert.deepEqual((await envd.load()).ids(), [idOfHex(b)]);
});

test("command: a non-zero exit gives the code and none of the output", async () => {
  const k = hex();
  const script = `console.log(${JSON.stringify(k)}); console.error("STDERR-" + ${JSON.stringify(k)}); process.exit(3)`;
  await rejects(commandKeySource([node, "-e", script]).load(), "key_unavailable", (m) => m.includes("exit code 3") && m.includes("yourself") && !m.includes(k) && !m.includes("STDERR"));
});

test("command: a child past its time limit is stopped and the message says where to raise it", async () => {
  const t0 = Date.now();
  await rejects(commandKeySource([node, "-e", "setTimeout(() => {}, 20000)"], { timeoutMs: 300 }).load(), "key_unavailable", (m) => m.includes("300 ms") && m.includes("command_timeout under [keys]"));
  assert.ok(Date.now() - t0 < 5000, "the child was killed, not waited for");
});

test("command: garbage output is refused without echoing it", async () => {
  const k = hex();
  for (const out of ["not a key", `${k}\nnope`, `${k.slice(0, 63)}`, "", `key=${k}`]) {
    await rejects(commandKeySource([node, "-e", `process.stdout.write(${JSON.stringify(out)})`]).load(), "key_unavailable", (m) => m.includes("64 hex") && !m.includes(k.slice(0, 10)) && !m.includes("nope") && !m.includes("not a key"));
  }
  await rejects(commandKeySource([node, "-e", "process.stdout.write('a'.repeat(70000))"]).load(), "key_unavailable", (m) => m.includes("64 KiB"));
});

test("command: a missing program names it and points at [keys] command", async () => {
  await rejects(commandKeySource(["/nonexistent/lessor-kms"]).load(), "key_unavailable", (m) => m.includes("/nonexistent/lessor-kms") && m.includes("command under [keys]"));
  await rejects(() => commandKeySource([]), "config_invalid");
});

test("command: arguments reach the child verbatim, with no shell", async () => {
  const k = hex();
  // Through a shell, `;` would split the command and `$(...)` would run; here both arrive as text.
  const script = `const a = process.argv.slice(1); if (a[0] === "x; echo pwned" && a[1] === "$(id)" && a[2] === "*") console.log(${JSON.stringify(k)}); else process.exit(7)`;
  const ring = await commandKeySource([node, "-e", script, "x; echo pwned", "$(id)", "*"]).load();
  assert.deepEqual(ring.ids(), [idOfHex(k)]);
});

// ---- selection ----

test("selectKeySource: env, then passphrase store, then key file, then command, else a clear error", async () => {
  const h = home();
  const keyFile = join(h, "master.key");
  const passphraseFile = join(h, "keystore.json");
  const missing = join(h, "missing");
  const envKey = hex();
  const keyCommand = [node, "-e", `console.log(${JSON.stringify(hex())})`];
  createKeyFile(keyFile);
  await createPassphraseKeyStore(passphraseFile, "pw", TEST_ARGON2_PARAMS);
  const getPassphrase = async (): Promise<string> => "pw";

  const all = { keyFile, passphraseFile, getPassphrase, keyCommand };
  assert.equal(selectKeySource({ ...all, env: { LESSOR_MASTER_KEY: envKey } }).kind, "env");
  assert.equal(selectKeySource({ ...all, env: { LESSOR_MASTER_KEY: "" } }).kind, "passphrase");
  assert.equal(selectKeySource({ ...all, env: {}, passphraseFile: missing }).kind, "file");
  assert.equal(selectKeySource({ ...all, env: {}, passphraseFile: missing, keyFile: missing }).kind, "command");
  assert.equal(selectKeySource({ env: {}, keyCommand }).kind, "command");

  // A passphrase store without a way to ask: LESSOR_PASSPHRASE, or a clear error.
  const viaVar = selectKeySource({ env: { LESSOR_PASSPHRASE: "pw" }, passphraseFile });
  assert.equal((await viaVar.load()).ids().length, 1);
  await rejects(() => selectKeySource({ env: {}, passphraseFile, keyFile }), "key_unavailable", (m) => m.includes("LESSOR_PASSPHRASE") && m.includes("interactive"));

  await rejects(() => selectKeySource({ env: {}, keyFile: missing, passphraseFile: missing, keyCommand: [] }), "key_unavailable", (m) => m.includes("lessor init") && m.includes("LESSOR_MASTER_KEY"));
  await rejects(() => selectKeySource({ env: { LESSOR_MASTER_KEY: "abc" }, keyFile }), "key_unavailable", (m) => m.includes("LESSOR_MASTER_KEY"));

  // The selected source loads the keys it names.
  const fromFile = await selectKeySource({ env: {}, keyFile }).load();
  assert.deepEqual(fromFile.ids(), [idOfHex(JSON.parse(readFileSync(keyFile, "utf8")).keys[0])]);
  assert.deepEqual((await selectKeySource({ env: { LESSOR_MASTER_KEY: envKey }, keyFile }).load()).ids(), [idOfHex(envKey)]);
});

test("opening while another process rotates: a source read before the new key was promoted is read once more, not refused", async () => {
  const { Vault } = await import("../src/vault/vault.js");
  const { openSqliteStore } = await import("../src/store/sqlite/sqlite-store.js");
  const dir = mkdtempSync(join(tmpdir(), "lessor-open-race-"));
  try {
    const db = join(dir, "lessor.db");
    const k0 = hex();
    const k1 = hex();
    // The other process's state mid-rotation: k1 promoted, a version already wrapped under it.
    const w = await Vault.open({ store: openSqliteStore(db), keys: envKeySource({ LESSOR_MASTER_KEY: k1, LESSOR_MASTER_KEY_PREVIOUS: k0 })! });
    await w.admin().storeSecret({ name: "x", value: "v" });
    await w.close();
    // This process read its source just before the promote: [k0]; a second read gives [k1, k0].
    const reads: string[][] = [];
    const staleThenFresh = {
      kind: "env",
      describe: "a test source",
      writable: false,
      load: async () => {
        const ring = await envKeySource(reads.length === 0 ? { LESSOR_MASTER_KEY: k0 } : { LESSOR_MASTER_KEY: k1, LESSOR_MASTER_KEY_PREVIOUS: k0 })!.load();
        reads.push(ring.ids());
        return ring;
      },
    };
    const v = await Vault.open({ store: openSqliteStore(db), keys: staleThenFresh });
    assert.equal(reads.length, 2, "the source was read again");
    assert.equal((await v.admin().revealSecret({ scope: "global", name: "x" })).value.unsafeText(), "v");
    await v.close();
    // A source that really lacks the key is still refused, after the one more read.
    await rejectsWith(Vault.open({ store: openSqliteStore(db), keys: envKeySource({ LESSOR_MASTER_KEY: k0 })! }), "key_unavailable", (m) => /does not match this vault/.test(m));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
