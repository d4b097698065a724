/**
 * A passphrase vault asks for its passphrase on the terminal, without echo (issue 12, item 11):
 * `lessor init --passphrase` (typed twice), then any command that opens the vault — under a real
 * pseudo-terminal (util-linux `script`), asserting the typed passphrase never shows. Without a
 * terminal and without LESSOR_PASSPHRASE the CLI refuses with what to do. The crypto layer only
 * calls the provider the CLI hands it.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { BIN, runCli } from "./cli-harness.js";
import { tempDirUntilExit } from "./helpers.js";
import { assertPtyEchoes, hasScript, pty as runPty, type PtyOptions } from "./pty.js";

/** A home path not made yet (its temp dir lives until the process exits: later tests use it). */
const freshHome = (): string => join(tempDirUntilExit("lessor-pass-"), "home");

/** Prompts here wait on Argon2 tuning, which takes a while: generous timeouts. */
const PTY: PtyOptions = { killAfterMs: 60_000, waitForMs: 30_000 };
const pty = (command: string, env: Record<string, string>) => runPty(command, env, PTY);

const lessorCmd = (args: string) => `${JSON.stringify(process.execPath)} -- ${JSON.stringify(BIN)} ${args}`;

describe("a passphrase vault prompts on the terminal", { skip: !hasScript && "util-linux script (bsdutils) is not installed" }, () => {
  const PASS = `pass-${randomBytes(9).toString("hex")}`;
  let home: string;

  test("the pty echoes typed input by default (so the no-echo checks below mean something)", () => assertPtyEchoes(PTY));

  test("init --passphrase asks twice without echo; a mismatch creates nothing", async () => {
    const bad = freshHome();
    const m = pty(lessorCmd("init --passphrase"), { LESSOR_HOME: bad });
    await m.waitFor("New passphrase for the master key: ");
    m.type(`${PASS}\r`);
    await m.waitFor("Again, to confirm: ");
    m.type(`${PASS}x\r`);
    assert.equal(await m.exit(), 2, m.out);
    assert.match(m.out, /the two passphrases did not match; nothing was created/);
    assert.ok(!m.out.includes(PASS), `the passphrase was echoed: ${JSON.stringify(m.out)}`);
    assert.ok(!existsSync(join(bad, "keystore.json")) && !existsSync(join(bad, "master.key")));

    home = freshHome();
    const t = pty(lessorCmd("init --passphrase"), { LESSOR_HOME: home });
    await t.waitFor("New passphrase for the master key: ");
    t.type(`${PASS}\r`);
    await t.waitFor("Again, to confirm: ");
    t.type(`${PASS}\r`);
    assert.equal(await t.exit(), 0, t.out);
    assert.match(t.out, /created .*keystore\.json/);
    assert.ok(!t.out.includes(PASS), `the passphrase was echoed: ${JSON.stringify(t.out)}`);
    assert.ok(!t.out.includes("*"), "no masking characters either");
    assert.ok(!readdirSync(home).includes("master.key"), "no plain key file beside the key store");
  });

  test("a command that opens the vault asks for the passphrase without echo, and the vault opens", async () => {
    const t = pty(lessorCmd("status"), { LESSOR_HOME: home });
    await t.waitFor(`Passphrase for ${join(home, "keystore.json")}: `);
    t.type(`${PASS}\r`);
    assert.equal(await t.exit(), 0, t.out);
    assert.match(t.out, /key source: +passphrase key store/);
    assert.ok(!t.out.includes(PASS), `the passphrase was echoed: ${JSON.stringify(t.out)}`);

    // A secret stored after the prompt is readable with the same passphrase from the environment.
    const s = pty(lessorCmd("secret set typed-after"), { LESSOR_HOME: home });
    await s.waitFor("Passphrase for ");
    s.type(`${PASS}\r`);
    await s.waitFor("Value for global/typed-after: ");
    s.type("the-value\r");
    await s.waitFor("Again, to confirm: ");
    s.type("the-value\r");
    assert.equal(await s.exit(), 0, s.out);
    assert.ok(!s.out.includes(PASS));
    const r = await runCli(["secret", "get", "typed-after", "--reveal"], { home, env: { LESSOR_PASSPHRASE: PASS } });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "the-value");
  });

  test("a wrong passphrase is refused (exit 1); Ctrl-C at the prompt opens nothing", async () => {
    const w = pty(lessorCmd("secret list"), { LESSOR_HOME: home });
    await w.waitFor("Passphrase for ");
    w.type(`${PASS}-wrong\r`);
    assert.equal(await w.exit(), 1, w.out);
    assert.match(w.out, /the passphrase is wrong/);
    assert.ok(!w.out.includes(PASS));
    const c = pty(lessorCmd("secret list"), { LESSOR_HOME: home });
    await c.waitFor("Passphrase for ");
    c.type(`${PASS.slice(0, 4)}\x03`);
    assert.equal(await c.exit(), 1, c.out);
    assert.match(c.out, /cancelled at the passphrase prompt; the vault was not opened/);
  });

  test("lessor serve asks for it on the terminal too, then serves", async () => {
    const t = pty(lessorCmd("serve"), { LESSOR_HOME: home });
    await t.waitFor("Passphrase for ");
    const from = t.out.length;
    t.type(`${PASS}\r`);
    await t.waitFor("lessor daemon ready", from);
    assert.ok(!t.out.includes(PASS));
    const st = await runCli(["status", "--json"], { home });
    assert.equal(st.code, 0, st.stderr);
    assert.equal(JSON.parse(st.stdout).mode, "daemon", "the CLI talks to the daemon without a passphrase");
    t.type("\x03"); // Ctrl-C on the terminal: SIGINT to the daemon, which shuts down
    await t.exit(); // script(1) may report the SIGINT itself (130); the daemon's own log says how it ended
    assert.match(t.out, /"msg":"lessor daemon stopped"/);
  });

  test("without a terminal and without LESSOR_PASSPHRASE: a clear refusal; with it: the vault opens", async () => {
    const r = await runCli(["secret", "list"], { home });
    assert.equal(r.code, 1, r.stderr);
    assert.equal(
      r.stderr,
      `lessor: the master key is sealed with a passphrase (${join(home, "keystore.json")}) and stdin is not a terminal to ask for it on; run the command in a terminal, or set LESSOR_PASSPHRASE\n`,
    );
    const ok = await runCli(["secret", "list", "--json"], { home, env: { LESSOR_PASSPHRASE: PASS } });
    assert.equal(ok.code, 0, ok.stderr);
    const i = await runCli(["init", "--passphrase"], { home: freshHome() });
    assert.equal(i.code, 2, i.stderr);
    assert.match(i.stderr, /stdin is not a terminal to ask for it on; run lessor init --passphrase in a terminal, or set LESSOR_PASSPHRASE/);
  });

  test("init refuses a passphrase under 12 characters, typed or in LESSOR_PASSPHRASE, and creates nothing", async () => {
    const typed = freshHome();
    const t = pty(lessorCmd("init --passphrase"), { LESSOR_HOME: typed });
    await t.waitFor("New passphrase for the master key: ");
    t.type("hunter2\r");
    await t.waitFor("Again, to confirm: ");
    t.type("hunter2\r");
    assert.equal(await t.exit(), 2, t.out);
    assert.match(t.out, /the passphrase typed has 7 characters; a passphrase that seals the master key needs at least 12/);
    assert.ok(!t.out.includes("hunter2"), "the short passphrase is not echoed either");
    assert.ok(!existsSync(join(typed, "keystore.json")) && !existsSync(join(typed, "master.key")));
    // Counted in characters, not bytes: eleven two-byte letters are still too short, twelve are enough.
    for (const [pass, code] of [["a", 2], ["é".repeat(11), 2], ["é".repeat(12), 0]] as const) {
      const h = freshHome();
      const r = await runCli(["init", "--key-source", "passphrase"], { home: h, env: { LESSOR_PASSPHRASE: pass } });
      assert.equal(r.code, code, r.stderr);
      if (code === 2) {
        assert.match(r.stderr, /LESSOR_PASSPHRASE has \d+ characters?; a passphrase that seals the master key needs at least 12 .*nothing was created/);
        assert.equal(existsSync(join(h, "keystore.json")), false);
      } else assert.equal(existsSync(join(h, "keystore.json")), true);
    }
  });

  test("init refuses a LESSOR_PASSPHRASE with a trailing newline or other control character, which no prompt could type", async () => {
    for (const [pass, what] of [[`${PASS}\n`, /a newline at position 24/], [`${PASS}\r`, /0x0d at position 24/], [`a\x1bb`, /0x1b at position 2/]] as const) {
      const h = freshHome();
      const r = await runCli(["init", "--key-source", "passphrase"], { home: h, env: { LESSOR_PASSPHRASE: pass } });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /LESSOR_PASSPHRASE holds a control character/);
      assert.match(r.stderr, what);
      assert.match(r.stderr, /nothing was created/);
      assert.ok(!r.stderr.includes(PASS), "the passphrase itself is not echoed");
      assert.equal(existsSync(join(h, "keystore.json")), false, "no key store was made");
    }
  });
});
