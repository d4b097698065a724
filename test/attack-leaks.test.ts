/**
 * Attacks on the channels a secret value could leak through besides the intended answer
 * (docs/security.md "Secrets at rest and in output"; docs/cli/run.md "Output masking"): the daemon's
 * debug surface, and the masking of `lessor run`'s output. Real `lessor serve` / `lessor run` child
 * processes of the BUILT CLI, a real SQLite home, another local uid (nobody) through setpriv.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { cliHome, runCli, seedHome, startCli } from "./cli-harness.js";

const CANARY = "sk_live_CANARY9c1e-leaks-do-not-leak";
const work = mkdtempSync(join(tmpdir(), "lessor-atk-leaks-"));
chmodSync(work, 0o755);

const POLICY = `
[[rule]]
name = "lend"
effect = "allow"
agents = ["a"]
secrets = ["global/*"]
any_domain = true
`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A client of Node's inspector protocol, run as another uid: evaluates `expr` in the target. */
const INSPECT_CLIENT = `
const [url, expr] = process.argv.slice(2);
const ws = new WebSocket(url);
ws.onopen = () => ws.send(JSON.stringify({ id: 1, method: "Runtime.evaluate", params: { expression: expr, returnByValue: true } }));
ws.onmessage = (m) => { process.stdout.write(String(m.data)); process.exit(0); };
ws.onerror = () => process.exit(3);
setTimeout(() => process.exit(4), 5000);
`;

describe("leaks: the daemon's debug surface", () => {
  test("SIGUSR1 to `lessor serve` (a logrotate habit) does not open Node's inspector on 127.0.0.1, where another local user reads the daemon's memory and key", async () => {
    const home = await cliHome();
    await seedHome(home, POLICY, [{ scope: "global", name: "api", value: CANARY }]);
    const d = await startCli(["serve"], /lessor daemon ready/, { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? "/tmp", LESSOR_HOME: home });
    try {
      assert.match(d.stderr(), /lessor daemon ready/, `the daemon did not start: ${d.stderr()}`);
      // Many daemons reopen their logs on SIGUSR1 (logrotate's postrotate `kill -USR1`); Node's default
      // for it, when no handler is installed, is to start the inspector on 127.0.0.1:9229, no auth.
      d.child.kill("SIGUSR1");
      for (let i = 0; i < 50 && !/Debugger listening|Starting inspector/.test(d.stderr()); i++) await sleep(20);
      const m = /Debugger listening on (ws:\/\/127\.0\.0\.1:\d+\/[0-9a-f-]+)/.exec(d.stderr());
      let proof = "";
      if (m !== null && process.getuid?.() === 0) {
        // Another local user (nobody) connects to it and reads the master key through the daemon.
        const client = join(work, "inspect-client.cjs");
        writeFileSync(client, INSPECT_CLIENT, { mode: 0o644 });
        const expr = `process.mainModule.require("fs").readFileSync(${JSON.stringify(join(home, "master.key"))}, "utf8").length + " bytes of master.key read as uid " + process.getuid()`;
        const r = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, "--experimental-websocket", client, m[1]!, expr], {
          encoding: "utf8",
          timeout: 10_000,
        });
        proof = ` As uid 65534 (nobody), through that inspector: ${(r.stdout || r.stderr || "").slice(0, 300)}`;
      }
      assert.ok(
        !/Debugger listening|Starting inspector/.test(d.stderr()),
        "docs/security.md threat model: another local user gets \"never a token or a value through a squatted socket or port\"; " +
          "with no SIGUSR1 listener (src/cli/entry.ts installs one for every command) the signal opens Node's inspector, an unauthenticated " +
          `code-execution port on loopback: ${d.stderr().split("\n").filter((l) => /Debugger|inspector/.test(l)).join(" | ")}.${proof}`,
      );
      // Still serving (the signal did not end it either way).
      assert.equal(d.child.exitCode, null);
    } finally {
      d.child.kill("SIGTERM");
      await d.exited;
    }
  });
});

describe("leaks: lessor run's output masking", () => {
  test("the value and its aligned base64 are masked in piped output (holds)", async () => {
    const home = await cliHome();
    await seedHome(home, POLICY, [{ scope: "global", name: "api", value: CANARY }]);
    const js = `const t = process.env.T; process.stdout.write(t + "\\n" + Buffer.from(t).toString("base64") + "\\n" + Buffer.from("abc" + t).toString("base64") + "\\n")`;
    const r = await runCli(["run", "--agent", "a", "--no-sandbox", "--", process.execPath, "-e", js], { home, env: { T: "$S:api" } });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(!r.stdout.includes(CANARY) && !r.stdout.includes(Buffer.from(CANARY).toString("base64")), r.stdout);
    assert.match(r.stdout, /\[redacted:api\]/);
  });

  test("a value's base64 inside a Basic credential (`user:TOKEN`, what curl -v and HTTP logs print) is masked", async () => {
    const home = await cliHome();
    await seedHome(home, POLICY, [{ scope: "global", name: "api", value: CANARY }]);
    // The command prints what `curl -v -u user:$T` prints: Authorization: Basic base64("user:" + T).
    const js = `process.stdout.write("> Authorization: Basic " + Buffer.from("user:" + process.env.T).toString("base64") + "\\n")`;
    const r = await runCli(["run", "--agent", "a", "--no-sandbox", "--", process.execPath, "-e", js], { home, env: { T: "$S:api" } });
    assert.equal(r.code, 0, r.stderr);
    const b64 = /Basic (\S+)/.exec(r.stdout)?.[1] ?? "";
    const decoded = Buffer.from(b64, "base64").toString("latin1");
    assert.ok(
      !decoded.includes(CANARY),
      'docs/cli/run.md "Output masking": "It also masks, for values of 6 bytes or more, their base64"; only the base64 of the value ' +
        "starting at a multiple of 3 bytes is matched (src/cli/run/mask.ts encodingsOf), so the value inside `user:TOKEN` " +
        `(offset 5) passes unmasked: ${r.stdout.trim()} decodes to ${JSON.stringify(decoded)}`,
    );
  });
});

