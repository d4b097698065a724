/**
 * Attacks on `lessor inject` (templates) and the lease lifecycle around it: what happens to the leases
 * when the output cannot be written at once (a slow reader), when the daemon closes the connection
 * meanwhile (idle_timeout), and when inject is stopped by a signal while it holds them.
 * Real parts: the built CLI (dist/bin/lessor.cjs) as a child process, a real SQLite home, a real
 * `lessor serve` for the daemon case.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { openVault } from "../src/config/open-vault.js";
import { VaultError } from "../src/base/errors.js";
import { openBackend } from "../src/backend/backend.js";
import { Cli } from "../src/cli/cli.js";
import { injectTemplate } from "../src/cli/run/inject.js";
import { signalExitCode } from "../src/cli/run/signals.js";
import { BIN, cliHome, liveLeases, runCli, seedHome } from "./cli-harness.js";
import { makeHome, startServe } from "./daemon-harness.js";

const tmp = mkdtempSync(join(tmpdir(), "lessor-inject-atk-"));
process.on("exit", () => rmSync(tmp, { recursive: true, force: true }));

const CANARY = `CANARY-inject-${randomBytes(8).toString("hex")}`;
/** Big enough that 20 copies (1.2 MB) fill the stdout pipe and the reader's buffer: the write waits. */
const BIG = `${CANARY}${"x".repeat(60_000)}`;

const POLICY = `
[[rule]]
name = "deny-forbidden"
effect = "deny"
agents = ["*"]
secrets = ["forbidden"]

[[rule]]
name = "renderers"
effect = "allow"
agents = ["renderer*"]
secrets = ["*"]
any_domain = true
`;

const children = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
});

/** Starts `lessor inject -i TEMPLATE --agent AGENT` with stdout a pipe nobody reads yet. */
function startInject(home: string, template: string, agent: string) {
  const child = spawn(process.execPath, ["--", BIN, "inject", "-i", template, "--agent", agent], {
    env: { PATH: process.env.PATH ?? "", HOME: tmp, NO_COLOR: "1", LESSOR_HOME: home },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
  child.stdout!.pause();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("close", (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    }),
  );
  return { child, exited, stderr: () => stderr };
}

async function waitForLease(home: string, agent: string): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const n = await liveLeases(home, agent);
    if (n > 0) return n;
    await new Promise((r) => setTimeout(r, 50));
  }
  return 0;
}

describe("lessor inject: leases while the output waits", () => {
  test("lessor inject revokes its leases once the output is written, also when the daemon closed its idle connection meanwhile (it reconnects, as lessor run does)", { timeout: 30_000 }, async () => {
    const home = await makeHome({ config: `[server]\nidle_timeout = "1s"\n`, policy: POLICY });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      await v.admin().storeSecret({ name: "big", value: BIG });
    } finally {
      await v.close();
    }
    const d = await startServe(home);
    try {
      const template = join(tmp, "idle.tmpl");
      writeFileSync(template, "$S:big\n".repeat(20), { mode: 0o600 });
      const agent = "renderer-idle";
      const inj = startInject(home, template, agent);
      assert.equal(await waitForLease(home, agent), 1, `inject took its lease: ${inj.stderr()}`);
      // A slow reader (a pipeline stage that reads later): the write waits past the daemon's idle_timeout.
      await new Promise((r) => setTimeout(r, 3000));
      let got = 0;
      inj.child.stdout!.on("data", (b: Buffer) => (got += b.length));
      inj.child.stdout!.resume();
      const { code } = await inj.exited;
      assert.equal(code, 0, inj.stderr());
      assert.equal(got, (BIG.length + 1) * 20, "the whole output was written");
      assert.ok(!inj.stderr().includes(CANARY), "no value on stderr");
      const live = await liveLeases(home, agent);
      assert.equal(
        live,
        0,
        `after inject exited ${code} with the output written, its lease of global/big is still live (until its expiry); stderr: ${inj.stderr().trim()}`,
      );
    } finally {
      await d.stop();
    }
  });

  test("lessor inject stopped by Ctrl-C, SIGTERM or a closed terminal (SIGHUP) while it holds leases revokes them all and exits 128 + N (as lessor run and lessor proxy do)", { timeout: 30_000 }, async () => {
    const home = await cliHome();
    await seedHome(home, POLICY, [{ name: "big", value: BIG }]);
    const template = join(tmp, "signal.tmpl");
    writeFileSync(template, "$S:big\n".repeat(20), { mode: 0o600 });
    const left: string[] = [];
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
      const agent = `renderer-${sig.toLowerCase()}`;
      // The user pipes the output into a pager or a slow consumer, then presses Ctrl-C (or closes the terminal).
      const inj = startInject(home, template, agent);
      assert.equal(await waitForLease(home, agent), 1, `inject took its lease: ${inj.stderr()}`);
      inj.child.kill(sig);
      const r = await inj.exited;
      assert.ok(!inj.stderr().includes(CANARY), "no value on stderr");
      const live = await liveLeases(home, agent);
      if (live !== 0) left.push(`${sig}: exit ${r.code ?? r.signal}, ${live} lease(s) of ${agent} still live`);
      else if (r.code !== signalExitCode(sig)) left.push(`${sig}: exit ${r.code ?? r.signal}, not ${signalExitCode(sig)}; stderr: ${inj.stderr().trim()}`);
      else assert.match(inj.stderr(), new RegExp(`stopped by ${sig}; the output is incomplete`));
    }
    assert.deepEqual(left, [], "inject stopped by a signal leaves its leases live until they expire");
  });
});

describe("lessor inject: leases it could not revoke", () => {
  test("a lease that can be revoked neither on the connection nor on a new one makes inject exit 1, naming it and the lessor revoke command that ends it", async () => {
    const home = await cliHome();
    await seedHome(home, POLICY, [{ name: "big", value: BIG }]);
    const template = join(tmp, "stuck.tmpl");
    writeFileSync(template, "k: $S:big\n", { mode: 0o600 });
    // The real vault, in-process; every revocation fails as on a daemon that went away with no vault to fall back to.
    let opened = 0;
    const said: string[] = [];
    class StuckCli extends Cli {
      override err(line: string): void {
        said.push(line);
      }
    }
    const cli = new StuckCli(async () => {
      opened++;
      const b = await openBackend({ home, env: { LESSOR_HOME: home } });
      const api = new Proxy(b.api, {
        get: (t, k, r) => (k === "revokeLease" ? () => Promise.reject(new VaultError("unavailable", "the daemon is gone")) : Reflect.get(t, k, r)),
      });
      return { ...b, api, close: () => b.close() };
    });
    const code = await injectTemplate(cli, { input: template, output: join(tmp, "stuck.out"), agent: "renderer-stuck", domains: [] });
    assert.equal(code, 1, said.join("\n"));
    assert.equal(opened, 2, "one retry on a new connection");
    assert.equal(await liveLeases(home, "renderer-stuck"), 1);
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    let id: string;
    try {
      id = (await v.admin().listLeases({ agent: "renderer-stuck", liveAt: Date.now() }))[0]!.id;
    } finally {
      await v.close();
    }
    assert.ok(said.some((l) => l.includes("1 lease(s) of this inject could not be revoked") && l.includes(`(${id})`) && l.includes(`lessor revoke ${id}`)), said.join("\n"));
    const r = await runCli(["revoke", id], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await liveLeases(home, "renderer-stuck"), 0);
  });
});

describe("lessor inject: second-order references through JSON fields", () => {
  test("a JSON field whose text is a reference (also JSON-escaped as \\u0024S:) is written as text, never resolved; the audit holds the right agent and no value", async () => {
    const home = await cliHome();
    const forbidden = `CANARY-forbidden-${randomBytes(8).toString("hex")}`;
    await seedHome(home, POLICY, [
      { name: "forbidden", value: forbidden },
      { name: "cfg", value: '{"next": "\\u0024S:forbidden", "url": "lessor://global/forbidden", "deep": {"w": "{{ $S:forbidden }}"}}' },
    ]);
    const template = join(tmp, "second.tmpl");
    writeFileSync(template, "a: $S:cfg/next\nb: {{ lessor://global/cfg#url }}\nc: $S:cfg/deep.w\n", { mode: 0o600 });
    const r = await runCli(["inject", "-i", template, "--agent", "renderer-second"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "a: $S:forbidden\nb: lessor://global/forbidden\nc: {{ $S:forbidden }}\n");
    assert.ok(!(r.stdout + r.stderr).includes(forbidden));
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      const rows = (await v.admin().auditQuery({ limit: 1000 })).filter((e) => e.agent === "renderer-second");
      assert.deepEqual(rows.filter((e) => e.secret === "global/forbidden"), [], "nothing was asked for the forbidden secret");
      assert.deepEqual(
        rows.map((e) => [e.type, e.secret, e.reason]),
        [
          ["lease_granted", "global/cfg", null],
          ["secret_accessed", "global/cfg", null],
          ["lease_revoked", "global/cfg", "lessor inject done"],
        ],
        "one lease for the three references, read once, revoked when done",
      );
      assert.ok(!JSON.stringify(rows).includes(forbidden) && !JSON.stringify(rows).includes("\\u0024S"), "no value in the audit");
    } finally {
      await v.close();
    }
  });
});
