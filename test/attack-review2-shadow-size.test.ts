/**
 * Review (review2) of 5bb0551 "a system directory holding covers is a tree of the sandbox's own".
 *
 * For a root owner /etc is now rebuilt entry by entry at each start: every entry of a directory on the
 * way to a cover is one bwrap operation (a copy is `--perms MODE --file FD PATH`, a bind
 * `--ro-bind-try PATH PATH`), and each copy holds a descriptor of lessor's until bwrap starts. bwrap
 * takes at most 9000 arguments: an /etc directory holding one 0600 root file next to a few thousand
 * shown entries (a certificate directory with a private key, a config tree of many small files) used
 * to start (one mask), and now the run cannot start at all ("bwrap: Exceeded maximum number of
 * arguments 9000"; with a lower descriptor limit, "internal error: Error EMFILE").
 *
 * Real parts: the built CLI, real bwrap, made in an overlay over /etc seen only by this test's
 * `unshare -m` child (the host's /etc is never touched). Root only.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import assert from "node:assert/strict";
import { ATTACKERS_POLICY, HAVE_BWRAP, makeOwner } from "./run-harness.js";
import { BIN } from "./cli-harness.js";

const root = mkdtempSync(join(tmpdir(), "lessor-review2-shadow-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const isRoot = process.getuid?.() === 0;
const haveUnshare = spawnSync("sh", ["-c", "command -v unshare"]).status === 0;
const SKIP = !HAVE_BWRAP ? "no bwrap" : !isRoot ? "needs root (the agent of a root owner)" : !haveUnshare ? "needs unshare" : false;

test("a root owner's /etc directory of 3000 small files beside a 0600 one still runs, the 0600 one covered", { skip: SKIP, timeout: 90_000 }, async () => {
  const o = await makeOwner({ root, name: "big", masterKey: randomBytes(32).toString("hex"), policy: ATTACKERS_POLICY });
  const canary = `BIG${randomBytes(8).toString("hex")}`;
  const up = join(root, "ov", "u");
  const work = join(root, "ov", "w");
  mkdirSync(up, { recursive: true });
  mkdirSync(work, { recursive: true });
  const script = [
    `mount -t overlay overlay -o lowerdir=/etc,upperdir=${up},workdir=${work} /etc`,
    `mkdir /etc/lessor-many`,
    `(cd /etc/lessor-many && seq 1 3000 | sed 's/$/.conf/' | xargs touch && umask 077 && echo ${canary} > private.key)`,
    `exec node ${BIN} run --agent attacker --network none -- /bin/sh -c 'ls /etc/lessor-many | wc -l; cat /etc/lessor-many/private.key; echo ran'`,
  ].join(" && ");
  const r = spawnSync("unshare", ["-m", "--propagation", "private", "sh", "-c", script], { cwd: o.project, env: o.env, encoding: "utf8", timeout: 80_000 });
  assert.equal(r.status, 0, `lessor run did not start:\n${r.stderr}`);
  assert.match(r.stdout, /^ran$/m);
  assert.match(r.stdout, /^3001$/m, "the directory's entries are all shown");
  assert.ok(!r.stdout.includes(canary), `the agent read the 0600 file:\n${r.stdout}`);
});

test("planShadow: past the budget a directory on the way is bound whole (its covers left to the masks), and a root past it is no tree", async () => {
  const { planShadow } = await import("../src/sandbox/shadow.js");
  const { writeFileSync } = await import("node:fs");
  const etc = join(root, "unit-etc");
  mkdirSync(join(etc, "many"), { recursive: true });
  for (let i = 0; i < 20; i++) writeFileSync(join(etc, "many", `f${i}`), "");
  writeFileSync(join(etc, "shadow"), "");
  const covers = [{ path: join(etc, "shadow"), dir: false }, { path: join(etc, "many", "key"), dir: false }];
  writeFileSync(join(etc, "many", "key"), "");
  const s = planShadow(etc, covers, { left: 10 })!;
  assert.deepEqual(s.entries.map((e) => [e.path.slice(etc.length + 1), e.kind]), [["many", "bind"], ["shadow", "cover"]]);
  assert.equal(planShadow(etc, covers, { left: 1 }), undefined);
  assert.equal(planShadow(etc, covers)!.entries.filter((e) => e.kind === "cover").length, 2);
});
