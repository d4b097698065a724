/**
 * A file another local user planted (or can still write) at the path the owner reads values from:
 * `lessor secret import FILE` and `lessor secret set NAME --from-file FILE` store what it says, so it
 * must be the owner's (or root's) and writable by no one else, as an --env-file or policy.toml must.
 * A fifo planted there is refused without waiting for a writer, and one of the owner's own that no
 * one writes ends at once. Process substitution (`--from-file <(cmd)`, a pipe of the owner's) still
 * works. Real CLI (dist), real files in a sticky shared directory.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { BIN, cliHome, runCli } from "./cli-harness.js";
import { isPrivateGroup, othersMayWrite } from "../src/fs/private-group.js";

const root = process.getuid?.() === 0;
const NOBODY = 65534;
const shared = mkdtempSync(join(tmpdir(), "lessor-planted-"));
chmodSync(shared, 0o1777);
after(() => rmSync(shared, { recursive: true, force: true }));

const IMPORT_DOC = (value: string): string => JSON.stringify({ "global/github-token": { value, encoding: "utf8", kind: "pat", description: "", tags: [] } });

/** The value stored as github-token, or null when there is none. */
async function stored(home: string, name = "github-token"): Promise<string | null> {
  const r = await runCli(["secret", "get", name, "--reveal"], { home });
  return r.code === 0 ? r.stdout.trim() : null;
}

describe("another user's file at the path the owner reads values from", { skip: root ? false : "needs root to make files of another uid (CI runs as root)" }, () => {
  test("secret import of a file that belongs to another user is refused, naming the owner, and stores nothing", async () => {
    const home = await cliHome();
    const file = join(shared, "backup.json");
    writeFileSync(file, IMPORT_DOC("attacker-chosen-value"));
    execFileSync("chown", [`${NOBODY}:${NOBODY}`, file]);
    const r = await runCli(["secret", "import", file], { home });
    assert.notEqual(r.code, 0, r.stdout);
    assert.match(r.stderr, new RegExp(`backup\\.json belongs to uid ${NOBODY}, not to you .*another user could choose the values you store`), r.stderr);
    assert.equal(await stored(home), null, "the planted value was stored");
    rmSync(file);
  });

  test("secret set --from-file of another user's file is refused", async () => {
    const home = await cliHome();
    const file = join(shared, "token.txt");
    writeFileSync(file, "attacker-chosen-value");
    execFileSync("chown", [`${NOBODY}:${NOBODY}`, file]);
    const r = await runCli(["secret", "set", "github-token", "--from-file", file], { home });
    assert.notEqual(r.code, 0, r.stdout);
    assert.match(r.stderr, /--from-file .*token\.txt belongs to uid 65534/, r.stderr);
    assert.equal(await stored(home), null);
    rmSync(file);
  });

  test("a fifo another user planted is refused at once, not waited on (nor fed by them)", async () => {
    const home = await cliHome();
    const fifo = join(shared, "planted.json");
    execFileSync("mkfifo", [fifo]);
    execFileSync("chown", [`${NOBODY}:${NOBODY}`, fifo]);
    for (const args of [["secret", "import", fifo], ["secret", "set", "github-token", "--from-file", fifo]]) {
      const r = await runCli(args, { home, timeoutMs: 10_000 });
      assert.equal(r.signal, null, `lessor ${args.slice(0, 2).join(" ")} waited on the fifo until it was killed`);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /planted\.json belongs to uid 65534/, r.stderr);
    }
    rmSync(fifo);
  });
});

test("a file of the owner's that other users may write is refused (other write bit, or group write in a group others are in)", async () => {
  const home = await cliHome();
  const file = join(shared, "mine.json");
  writeFileSync(file, IMPORT_DOC("value-others-could-change"));
  // Group write counts when the group is not the owner's private group: nogroup is nobody's.
  const cases: [number, number | null][] = [[0o666, null], ...(root ? ([[0o664, NOBODY]] as [number, number][]) : [])];
  for (const [mode, gid] of cases) {
    if (gid !== null) chownSync(file, 0, gid);
    chmodSync(file, mode);
    const r = await runCli(["secret", "import", file], { home });
    assert.notEqual(r.code, 0, r.stdout);
    assert.match(r.stderr, new RegExp(`mine\\.json can be changed by other users \\(mode 0?${mode.toString(8)}\\).*chmod go-w`), r.stderr);
  }
  assert.equal(await stored(home), null);
  chmodSync(file, 0o644);
  const ok = await runCli(["secret", "import", file], { home });
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(await stored(home), "value-others-could-change");
  rmSync(file);
});

test("group write in the owner's own private group (a umask 002 distribution's 0664) is accepted", { skip: root ? false : "needs root to set the file's group" }, async () => {
  // root's group here has no members and is no one else's primary group: a private group.
  assert.ok(isPrivateGroup(0, 0), "precondition: gid 0 is root's private group on this machine");
  const home = await cliHome();
  const file = join(shared, "umask002.json");
  writeFileSync(file, IMPORT_DOC("value-in-a-0664-file"));
  chownSync(file, 0, 0);
  chmodSync(file, 0o664);
  const ok = await runCli(["secret", "import", file], { home });
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(await stored(home), "value-in-a-0664-file");
  rmSync(file);
});

describe("isPrivateGroup reads /etc/passwd and /etc/group as Debian's OpenSSH does", () => {
  const dir = mkdtempSync(join(tmpdir(), "lessor-upg-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const files = (passwd: string, group: string) => {
    writeFileSync(join(dir, "passwd"), passwd);
    writeFileSync(join(dir, "group"), group);
    return { passwd: join(dir, "passwd"), group: join(dir, "group") };
  };
  const PASSWD = "alice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\ncarol:x:1002:1000::/home/carol:/bin/sh\n";
  test("private: the owner's primary group with no other member; or a group naming the owner alone", () => {
    assert.equal(isPrivateGroup(1001, 1001, files(PASSWD, "bob:x:1001:\n")), true);
    assert.equal(isPrivateGroup(1001, 1001, files(PASSWD, "bob:x:1001:bob\n")), true);
    assert.equal(isPrivateGroup(2000, 1001, files(PASSWD, "solo:x:2000:bob\n")), true);
  });
  test("not private: another user's primary group too, another member, no member at all, unknown or listed twice", () => {
    assert.equal(isPrivateGroup(1000, 1000, files(PASSWD, "alice:x:1000:\n")), false, "carol's primary group too");
    assert.equal(isPrivateGroup(1001, 1001, files(PASSWD, "bob:x:1001:bob,alice\n")), false);
    assert.equal(isPrivateGroup(1001, 1001, files(PASSWD, "bob:x:1001:alice\n")), false);
    assert.equal(isPrivateGroup(3000, 1001, files(PASSWD, "empty:x:3000:\n")), false, "a group no one is in");
    assert.equal(isPrivateGroup(4000, 1001, files(PASSWD, "bob:x:1001:\n")), false, "not in /etc/group (LDAP)");
    assert.equal(isPrivateGroup(1001, 1001, files(PASSWD, "bob:x:1001:\nbob2:x:1001:alice\n")), false, "listed twice");
    assert.equal(isPrivateGroup(1001, 4242, files(PASSWD, "bob:x:1001:\n")), false, "owner not in /etc/passwd");
  });
  test("othersMayWrite: the other bit always; the group bit unless private", () => {
    const f = files(PASSWD, "bob:x:1001:\nstaff:x:50:bob,alice\n");
    assert.equal(othersMayWrite({ mode: 0o100646, uid: 1001, gid: 1001 }, f), true);
    assert.equal(othersMayWrite({ mode: 0o100664, uid: 1001, gid: 1001 }, f), false);
    assert.equal(othersMayWrite({ mode: 0o100664, uid: 1001, gid: 50 }, f), true);
    assert.equal(othersMayWrite({ mode: 0o100644, uid: 1001, gid: 50 }, f), false);
  });
});

test("the owner's own fifo with no writer ends at once; process substitution still reads the value", async () => {
  const home = await cliHome();
  const fifo = join(shared, "own.fifo");
  execFileSync("mkfifo", ["-m", "600", fifo]);
  const r = await runCli(["secret", "set", "empty-one", "--from-file", fifo], { home, timeoutMs: 10_000 });
  assert.equal(r.signal, null, "lessor waited on a fifo no one writes");
  rmSync(fifo);
  // bash's <(…) names a pipe of the owner's (/dev/fd/N): the usual way to hand a value from another tool.
  const sub = spawnSync("bash", ["-c", `"${process.execPath}" -- "${BIN}" secret set piped --from-file <(printf 'from-a-pipe')`], {
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", LESSOR_HOME: home, NO_COLOR: "1" },
    encoding: "utf8",
    timeout: 30_000,
  });
  assert.equal(sub.status, 0, sub.stderr);
  assert.equal(await stored(home, "piped"), "from-a-pipe");
});
