/** The built CLI's basics: init, status, demo, serve, --version, usage errors, NO_COLOR. */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, describe, test } from "node:test";
import { BIN, runCli } from "./cli-harness.js";
import { VERSION } from "../src/version.js";

const dir = mkdtempSync(join(tmpdir(), "lessor-cli-basics-"));
after(() => rmSync(dir, { recursive: true, force: true }));

describe("lessor basics (built CLI)", () => {
  test("init creates a private home once; a second init changes nothing", async () => {
    const home = join(dir, "h1");
    const r = await runCli(["init"], { home });
    assert.equal(r.code, 0, r.stderr);
    for (const f of ["lessor.toml", "policy.toml", "master.key", "lessor.db"]) assert.match(r.stdout, new RegExp(`created .*${f.replace(".", "\\.")}`));
    assert.equal(statSync(home).mode & 0o777, 0o700);
    assert.equal(statSync(join(home, "master.key")).mode & 0o777, 0o600);
    const again = await runCli(["--home", home, "init"]);
    assert.equal(again.code, 0);
    assert.match(again.stdout, /already set up; nothing changed/);
  });

  test("init --key-source passphrase needs LESSOR_PASSPHRASE, then status opens with it", async () => {
    const home = join(dir, "h2");
    const refused = await runCli(["init", "--key-source", "passphrase"], { home });
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /LESSOR_PASSPHRASE/);
    const ok = await runCli(["init", "--key-source", "passphrase"], { home, env: { LESSOR_PASSPHRASE: "correct horse battery" } });
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /keystore\.json/);
    const st = await runCli(["status", "--json"], { home, env: { LESSOR_PASSPHRASE: "correct horse battery" } });
    assert.equal(st.code, 0, st.stderr);
    assert.match((JSON.parse(st.stdout) as { keySource: string }).keySource, /keystore/);
    const wrong = await runCli(["status"], { home, env: { LESSOR_PASSPHRASE: "wrong" } });
    assert.equal(wrong.code, 1, "a wrong key is exit 1 (docs/cli.md)");
    assert.match(wrong.stderr, /passphrase is wrong/);
  });

  test("--version, unknown commands and a missing home", async () => {
    const v = await runCli(["--version"]);
    assert.equal(v.stdout.trim(), VERSION);
    const bad = await runCli(["frobnicate"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown command 'frobnicate'/);
    const missing = await runCli(["status"], { home: join(dir, "nowhere") });
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /lessor init/);
    assert.doesNotMatch(missing.stderr, /\n\s+at /, "no stack trace");
  });

  test("demo runs the whole life of a secret and exits 0", async () => {
    const r = await runCli(["demo"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /demo finished: every step behaved as it should/);
  });

  test("serve from the built CLI: ready, answers status, stops on SIGTERM with exit 0", async () => {
    const home = join(dir, "h3");
    assert.equal((await runCli(["init"], { home })).code, 0);
    const proc = spawn(process.execPath, [BIN, "serve"], { env: { PATH: process.env.PATH, LESSOR_HOME: home }, stdio: ["ignore", "ignore", "pipe"] });
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: proc.stderr }).on("line", (l) => l.includes("lessor daemon ready") && resolve());
      proc.once("exit", (c) => reject(new Error(`serve exited ${c}`)));
    });
    const st = await runCli(["status", "--json"], { home });
    assert.equal(st.code, 0, st.stderr);
    const s = JSON.parse(st.stdout) as { mode: string; daemon: { pid: number } };
    assert.equal(s.mode, "daemon");
    assert.equal(s.daemon.pid, proc.pid);
    proc.kill("SIGTERM");
    const code = await new Promise<number | null>((r) => proc.once("exit", r));
    assert.equal(code, 0);
  });

  test("a reader that closes the pipe early (| head) ends the CLI quietly", () => {
    const r = spawnSync("bash", ["-c", `set -o pipefail; ${process.execPath} ${BIN} completion bash | true`], { encoding: "utf8", timeout: 20_000 });
    assert.doesNotMatch(r.stderr, /EPIPE|Unhandled/);
    assert.equal(r.status, 0);
  });

  test("NO_COLOR: no escape codes even on a terminal", () => {
    const home = join(dir, "h1");
    const r = spawnSync("script", ["-qec", `${process.execPath} ${BIN} --home ${home} secret list`, "/dev/null"], { encoding: "utf8", env: { PATH: process.env.PATH, NO_COLOR: "1", TERM: "xterm" }, timeout: 20_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /\u001b\[/);
  });
});
