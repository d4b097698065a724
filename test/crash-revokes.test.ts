/**
 * An error nothing catches (a bug) in a command that holds leases: lessor's entry says it as a bug
 * (the class, never the message, which may quote a value), revokes the command's leases, removes
 * what it wrote, and exits 70. Shown with the built CLI's `lessor proxy`, crashed by a preloaded
 * script (test/fixtures/crash-later.cjs) once it serves; without the entry's handler Node would print
 * the message and exit, the lease left live. `lessor inject` likewise, crashed as it writes its output
 * (test/fixtures/crash-on-output.cjs).
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import assert from "node:assert/strict";
import { initHome, openVault } from "../src/config/open-vault.js";
import { BIN } from "./cli-harness.js";
import { inTime } from "./proxy-harness.js";

const PRELOAD = fileURLToPath(new URL("./fixtures/crash-later.cjs", import.meta.url));
const ON_OUTPUT = fileURLToPath(new URL("./fixtures/crash-on-output.cjs", import.meta.url));


/** A home under `dir` whose policy grants agent "crashy" secret "tok" (a fresh token) for api.crash.example. */
async function crashyHome(dir: string): Promise<{ home: string; TOKEN: string; CANARY: string }> {
  const home = join(dir, "home", ".lessor");
  const TOKEN = "ghp_" + randomBytes(18).toString("hex");
  const CANARY = "canary-" + randomBytes(8).toString("hex");
  await initHome({ home, env: { LESSOR_HOME: home } });
  writeFileSync(join(home, "policy.toml"), `[[rule]]\nname = "g"\neffect = "allow"\nagents = ["crashy"]\nsecrets = ["tok"]\ndomains = ["api.crash.example"]\n`, { mode: 0o600 });
  const vault = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    await vault.admin().storeSecret({ name: "tok", value: TOKEN });
  } finally {
    await vault.close();
  }
  return { home, TOKEN, CANARY };
}

test("lessor proxy crashing on a bug: the bug is said without its message, the lease is revoked, the env file removed, exit 70", async () => {
  const dir = mkdtempSync(join(tmpdir(), "lessor-crash-"));
  try {
    const { home, TOKEN, CANARY } = await crashyHome(dir);
    const envOut = join(dir, "agent.env");
    const ready = join(dir, "ready");
    const child = spawn(process.execPath, ["--require", PRELOAD, "--", BIN, "proxy", "--agent", "crashy", "--domain", "api.crash.example", "--env-out", envOut], {
      env: { PATH: "/usr/bin:/bin", HOME: join(dir, "home"), LESSOR_HOME: home, GITHUB_TOKEN: "$S:tok", LESSOR_TEST_CRASH_READY: ready, LESSOR_TEST_CRASH_CANARY: CANARY },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr.on("data", (d: Buffer) => {
      err += d.toString();
      if (/lessor: proxy for agent/.test(err) && !existsSync(ready)) writeFileSync(ready, "");
    });
    const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
    const code = await inTime(exited, 30_000, "lessor proxy exits after the crash");
    assert.ok(existsSync(ready), `the proxy served before the crash: ${err}`);
    assert.equal(code, 70, err);
    assert.match(err, /lessor: internal error: Error \(this is a bug/);
    assert.match(err, /revoking the leases this command holds/);
    assert.ok(!err.includes(CANARY), "the error's message (which may quote a value) is not printed");
    assert.ok(!err.includes(TOKEN));
    assert.equal(existsSync(envOut), false, "the agent's env file is removed");
    const after = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      const leases = await after.admin().listLeases({ agent: "crashy" });
      assert.equal(leases.length, 1);
      assert.notEqual(leases[0]!.revokedAt, null, "the proxy's lease is revoked");
    } finally {
      await after.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("lessor inject crashing on a bug while it holds its leases: they are revoked, exit 70", async () => {
  const dir = mkdtempSync(join(tmpdir(), "lessor-crash-"));
  try {
    const { home, TOKEN, CANARY } = await crashyHome(dir);
    const child = spawn(process.execPath, ["--require", ON_OUTPUT, "--", BIN, "inject", "-i", "-", "--agent", "crashy"], {
      env: { PATH: "/usr/bin:/bin", HOME: join(dir, "home"), LESSOR_HOME: home, LESSOR_TEST_CRASH_CANARY: CANARY },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.stdin.end("token: $S:tok\n");
    const code = await inTime(new Promise<number | null>((r) => child.on("close", (c) => r(c))), 30_000, "lessor inject exits after the crash");
    assert.equal(code, 70, err);
    assert.match(err, /lessor: internal error: Error \(this is a bug/);
    assert.ok(!err.includes(CANARY) && !err.includes(TOKEN) && !out.includes(TOKEN));
    const after = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      const leases = await after.admin().listLeases({ agent: "crashy" });
      assert.equal(leases.length, 1, "inject took its lease before the crash");
      assert.notEqual(leases[0]!.revokedAt, null, "inject's lease is revoked by the crash handler");
    } finally {
      await after.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
