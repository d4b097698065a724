/**
 * Since 563219a a group write bit in the owner's private group no longer counts as "others may
 * write". But on a file or directory with a POSIX ACL, st_mode's group bits are the ACL
 * MASK, not the owning group's permission: a named entry (user:bob:rw-) makes them rw- whatever the
 * owning group is. Before 563219a any such file was refused (0o020 set); now a file in a directory with
 * a default ACL for a colleague (setfacl -d -m u:bob:rwX ~/projects/shared), made 0664 by the owner,
 * passed as "only you can write it" (bob chose the values lessor stored). Now the group bit counts
 * as the owner's only when the file carries no ACL (read by the native addon; without it, refused).
 *
 * Real parts: a throwaway user with a private group (useradd -U, removed at the end), umask 002, the
 * built CLI run as that user, a real ACL (set with setxattr from python3), and `nobody` (65534)
 * actually writing the file. Needs root; skipped otherwise.
 *
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";

const CLI = join(import.meta.dirname, "..", "dist", "bin", "lessor.cjs");
const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
const have = (cmd: string): boolean => spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0;
const skip = !isRoot ? "needs root (creates a throwaway user)" : !have("useradd") || !have("setpriv") || !have("python3") ? "needs useradd, setpriv, python3" : false;

const NOBODY = 65534;

/** Sets an access (or default) ACL granting uid `who` rw(x) on `path`, as setfacl -m u:who:rwX would. */
function setAcl(path: string, who: number, kind: "access" | "default"): void {
  const py = `
import os, struct, sys
p, who, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
U = 0xffffffff
d = os.path.isdir(p)
o, g = (7, 5) if d else (6, 4)
ents = [(1, o, U), (2, o, who), (4, g, U), (0x10, o, U), (0x20, g, U)]
os.setxattr(p, "system.posix_acl_" + kind, struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, pm, i) for t, pm, i in ents))
`;
  const r = spawnSync("python3", ["-c", py, path, String(who), kind], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
}

test("attack: a 0664 file in the owner's private group that an ACL lets another user write is refused", { skip }, (t) => {
  const name = `upgacl${randomBytes(3).toString("hex")}`;
  const add = spawnSync("useradd", ["-m", "-U", "-s", "/bin/sh", name], { encoding: "utf8" });
  assert.equal(add.status, 0, add.stderr);
  let work: string | null = null;
  try {
    const uid = Number(spawnSync("id", ["-u", name], { encoding: "utf8" }).stdout.trim());
    const gid = Number(spawnSync("id", ["-g", name], { encoding: "utf8" }).stdout.trim());
    const home = `/home/${name}`;
    const as = (script: string): { status: number | null; out: string } => {
      const r = spawnSync(
        "setpriv",
        ["--reuid", String(uid), "--regid", String(gid), "--init-groups", "sh", "-c", `umask 002; ${script}`],
        { encoding: "utf8", cwd: "/", env: { HOME: home, PATH: process.env.PATH ?? "/usr/bin:/bin", LESSOR_LOG: "silent" } },
      );
      return { status: r.status, out: `${r.stdout}${r.stderr}` };
    };
    const lessor = `node ${CLI}`;
    if (as(`${lessor} --version`).status !== 0) return void t.skip(`the new user cannot run ${CLI} (the checkout is not readable by other users)`);
    assert.equal(as(`${lessor} init`).status, 0);

    // A shared directory of the owner's, with a default ACL for a colleague (here: nobody).
    work = mkdtempSync("/tmp/upgacl-");
    chownSync(work, uid, gid);
    chmodSync(work, 0o775);
    setAcl(work, NOBODY, "access");
    setAcl(work, NOBODY, "default");

    // The owner writes a value file there, as anyone does under umask 002.
    const file = join(work, "value.txt");
    assert.equal(as(`printf mine > ${file}`).status, 0);
    const st = statSync(file);
    assert.equal(st.mode & 0o777, 0o664, "umask 002 + the mask: 0664");
    assert.equal(st.gid, gid, "in the owner's private group");

    // The colleague can indeed change it.
    const w = spawnSync("setpriv", ["--reuid", String(NOBODY), "--regid", String(NOBODY), "--clear-groups", "sh", "-c", `printf theirs > ${file}`]);
    assert.equal(w.status, 0, "nobody can write the file through its ACL");
    assert.equal(readFileSync(file, "utf8"), "theirs");

    // lessor must not take it as a file "only you can write".
    const set = as(`${lessor} secret set planted --from-file ${file}`);
    assert.notEqual(set.status, 0, `secret set --from-file accepted a file another user can write through an ACL:\n${set.out}`);
    assert.match(set.out, /changed by other users|ACL/);

    // Same for an import file.
    const env = join(work, "backup.env");
    assert.equal(as(`printf 'DB_URL=postgres://attacker/\\n' > ${env}`).status, 0);
    const imp = as(`${lessor} secret import ${env}`);
    assert.notEqual(imp.status, 0, `secret import accepted a file another user can write through an ACL:\n${imp.out}`);

    // And the daemon's socket directory.
    const sockDir = join(work, "run");
    assert.equal(as(`mkdir ${sockDir}`).status, 0);
    assert.equal(statSync(sockDir).mode & 0o777, 0o775);
    const conf = join(home, ".lessor", "lessor.toml");
    assert.equal(as(`sed -i 's|^# socket = "lessor.sock".*|socket = "${sockDir}/lessor.sock"|' ${conf}`).status, 0);
    const serve = as(`timeout -s TERM 3 ${lessor} serve; echo "exit=$?"`);
    assert.doesNotMatch(serve.out, /daemon ready/, `lessor serve made its socket in a directory another user can write through an ACL:\n${serve.out}`);
  } finally {
    if (work !== null) rmSync(work, { recursive: true, force: true });
    spawnSync("userdel", ["-r", name]);
    assert.equal(existsSync(`/home/${name}`), false);
  }
});

test("without an ACL, 0664 in the owner's private group is accepted (a umask 002 newcomer)", { skip }, (t) => {
  const name = `upgacl${randomBytes(3).toString("hex")}`;
  assert.equal(spawnSync("useradd", ["-m", "-U", "-s", "/bin/sh", name]).status, 0);
  try {
    const uid = Number(spawnSync("id", ["-u", name], { encoding: "utf8" }).stdout.trim());
    const gid = Number(spawnSync("id", ["-g", name], { encoding: "utf8" }).stdout.trim());
    const home = `/home/${name}`;
    const as = (script: string) =>
      spawnSync("setpriv", ["--reuid", String(uid), "--regid", String(gid), "--init-groups", "sh", "-c", `umask 002; ${script}`], {
        encoding: "utf8",
        cwd: "/",
        env: { HOME: home, PATH: process.env.PATH ?? "/usr/bin:/bin" },
      });
    if (as(`node ${CLI} --version`).status !== 0) return void t.skip(`the new user cannot run ${CLI} (the checkout is not readable by other users)`);
    assert.equal(as(`node ${CLI} init`).status, 0);
    mkdirSync(join(home, "p"));
    chownSync(join(home, "p"), uid, gid);
    const r = as(`printf mine > ~/p/v.txt && node ${CLI} secret set mine --from-file ~/p/v.txt`);
    assert.equal(r.status, 0, r.stderr);
  } finally {
    spawnSync("userdel", ["-r", name]);
  }
});

test("the library (lessor/server, no CLI) reads the ACL too: a 0775 socket directory in the owner's private group is accepted, with an ACL for another user refused", { skip: isRoot ? false : "needs root (a directory in root's private group)" }, async () => {
  const { isPrivateGroup } = await import("../src/fs/private-group.js");
  const { assertSafeSocketDir } = await import("../src/server/transports/socket-dir.js");
  assert.ok(isPrivateGroup(0, 0), "precondition: gid 0 is root's private group on this machine");
  const base = mkdtempSync("/tmp/upgacl-lib-");
  try {
    chmodSync(base, 0o755);
    const dir = join(base, "run");
    mkdirSync(dir);
    chownSync(dir, 0, 0);
    chmodSync(dir, 0o775);
    assert.doesNotThrow(() => assertSafeSocketDir(dir, 0), "0775 in root's private group, no ACL");
    setAcl(dir, NOBODY, "access");
    assert.equal(statSync(dir).mode & 0o070, 0o070, "the ACL's mask is the group bits");
    assert.throws(() => assertSafeSocketDir(dir, 0), /can be written by other users \(mode 0?775\)/);
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
});
