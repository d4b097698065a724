/**
 * lessor run's sandbox against a $HOME that is not the owner's home, and against the owner's
 * runtime directory ($XDG_RUNTIME_DIR, /run/user/UID), where gpg-agent, systemd and other services
 * keep sockets that drive them as the owner. docs/sandbox.md: a writable project must not hold the
 * owner's home; a shown path must not be or hold a directory of other programs' sockets.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { runCli, cliHome } from "./cli-harness.js";
import { planLayout } from "../src/sandbox/layout.js";

const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"]).status === 0;
const NODE = process.execPath;

describe("the owner's passwd home and runtime directory", () => {
  test("planLayout refuses a shown path that is or holds a runtime directory, and a writable one holding the passwd home", () => {
    const base = mkdtempSync(join(tmpdir(), "lessor-homes-"));
    const runtime = join(base, "runtime");
    const fakeHome = join(base, "fake-home");
    const realHome = join(base, "real-home");
    for (const d of [runtime, fakeHome, realHome, join(realHome, "proj")]) mkdirSync(d, { recursive: true });
    const req = { home: fakeHome, projectWritable: true, read: [], write: [], protect: [], socketDirs: [runtime], passwdHome: realHome };
    assert.throws(() => planLayout({ ...req, project: runtime }), /is or holds .*runtime, where other programs keep their sockets/);
    assert.throws(() => planLayout({ ...req, project: base, projectWritable: false }), /is or holds .*runtime/);
    assert.throws(() => planLayout({ ...req, project: realHome }), /holds your home directory \(.*real-home\)/);
    // Inside them is fine: a directory of the project's own.
    assert.doesNotThrow(() => planLayout({ ...req, project: join(realHome, "proj") }));
  });

  test("lessor run with HOME set elsewhere still refuses the real home as a writable project, and $XDG_RUNTIME_DIR as any", { skip: HAVE_BWRAP ? false : "bubblewrap with user namespaces is not available here" }, async () => {
    const home = await cliHome();
    const passwd = userInfo().homedir;
    const fake = mkdtempSync(join(tmpdir(), "lessor-fakehome-"));
    const r = await runCli(["run", "--agent", "a", "--project", passwd, "--", NODE, "-e", "0"], { home, env: { HOME: fake } });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, new RegExp(`holds your home directory \\(${passwd.replace(/[/.]/g, "\\$&")}\\)`));

    const runtime = mkdtempSync(join(tmpdir(), "lessor-runtime-"));
    // A runtime directory outside /tmp's refusal: the project named by it directly.
    const sub = join(runtime, "xdg");
    mkdirSync(sub);
    const x = await runCli(["run", "--agent", "a", "--project", sub, "--", NODE, "-e", "0"], { home, env: { XDG_RUNTIME_DIR: sub } });
    assert.notEqual(x.code, 0);
    assert.match(x.stderr, /is or holds .*xdg, where other programs keep their sockets/);
  });
});
