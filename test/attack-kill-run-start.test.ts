/**
 * Review `kill` (stopping things): the killswitch lands while `lessor run` is still getting its
 * sandbox ready, after it took its leases and read their values (--network none, host, or
 * --no-sandbox: the values go in the command's environment).
 *
 * docs/cli/leases.md: the killswitch "revokes every lease not yet revoked or expired now … and
 * engages a lockout". docs/cli/run.md: "revoking a lease cannot take a value back from a process that
 * already has it". Here no process had it yet: the run held the value while it made the sandbox ready
 * (the bwrap probe, the vault session's token), the killswitch revoked its lease, and the run then
 * started a new command with the revoked credential in its environment and exited 0, saying nothing.
 *
 * Real parts: the built CLI, real bwrap, a real `lessor serve`. The test stands between `lessor run`
 * and the daemon (a relay on LESSOR_SOCKET) only to hold the run's token_create (its vault session)
 * until the killswitch has committed: a run whose setup is slow, made deterministic.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createConnection, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { BIN } from "./cli-harness.js";
import { startServe } from "./daemon-harness.js";
import { HAVE_BWRAP, makeOwner } from "./run-harness.js";

const root = mkdtempSync(join(tmpdir(), "lessor-kill-run-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

const VALUE = "CANARY-kill-run-start-7f3a";
const POLICY = `[[rule]]\nname = "g"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["tok"]\nany_domain = true\n`;

/** A relay to `daemon` on a socket of its own that holds the client's token_create frames until `release()`. */
async function holdingRelay(daemon: string): Promise<{ path: string; held: Promise<void>; release(): void; close(): void }> {
  const dir = join(root, "relay");
  mkdirSync(dir, { mode: 0o700 });
  const path = join(dir, "r.sock");
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let saw!: () => void;
  const held = new Promise<void>((r) => (saw = r));
  const srv = createServer((c: Socket) => {
    const up = createConnection(daemon);
    up.pipe(c);
    let buf = Buffer.alloc(0);
    let chain = Promise.resolve();
    c.on("data", (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const frame = buf.subarray(0, 4 + buf.readUInt32BE(0));
        buf = buf.subarray(frame.length);
        let method: unknown;
        try {
          method = (JSON.parse(frame.subarray(4).toString("utf8")) as { method?: unknown }).method;
        } catch {
          method = undefined;
        }
        chain = chain.then(async () => {
          if (method === "token_create") {
            saw();
            await released;
          }
          up.write(frame);
        });
      }
    });
    c.on("close", () => up.destroy());
    up.on("close", () => c.destroy());
    c.on("error", () => {});
    up.on("error", () => {});
  });
  await new Promise<void>((r) => srv.listen(path, r));
  return { path, held, release, close: () => srv.close() };
}

test("attack: the killswitch pulled while lessor run makes its sandbox ready (its lease taken, the value read): the command is not started with the revoked value", { skip: !HAVE_BWRAP && "no bwrap", timeout: 90_000 }, async () => {
  const o = await makeOwner({ root, name: "o", masterKey: randomBytes(32).toString("hex"), policy: POLICY, secrets: [{ name: "tok", value: VALUE }] });
  const d = await startServe(o.lessorHome, { env: o.env });
  const relay = await holdingRelay(d.socket);
  const admin = await LessorClient.connect({ socketPath: d.socket });
  try {
    const run = spawn(process.execPath, [BIN, "run", "--agent", "claude", "--network", "none", "--vault-session", "--", "/bin/sh", "-c", 'printf %s "$TOK" > leaked'], {
      cwd: o.project,
      env: { ...o.env, TOK: "$S:tok", LESSOR_SOCKET: relay.path },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    run.stderr!.on("data", (x: Buffer) => (stderr += x.toString()));
    run.stdout!.resume();
    const exited = new Promise<number | null>((r) => run.on("close", (c) => r(c)));
    await Promise.race([relay.held, exited.then(() => assert.fail(`lessor run ended before its vault session: ${stderr}`))]);
    // The run holds the value (its lease was used) and is still setting up.
    const [before] = await admin.listLeases({ agent: "claude" });
    assert.equal(before?.uses, 1, "the run read the value before the killswitch");
    assert.equal((await admin.killswitch("incident: agent misbehaving")).revoked, 1);
    const [after] = await admin.listLeases({ agent: "claude" });
    assert.notEqual(after?.revokedAt, null, "the killswitch revoked the run's lease");
    relay.release();
    const code = await exited;
    const leaked = join(o.project, "leaked");
    const got = existsSync(leaked) ? readFileSync(leaked, "utf8") : null;
    assert.notEqual(got, VALUE, `lessor run started the command after the killswitch, with the revoked credential in its environment (exit ${code}, stderr ${JSON.stringify(stderr)})`);
    assert.equal(got, null, "the command was not started");
    assert.notEqual(code, 0, "lessor run says it did not run the command");
    assert.match(stderr, /revoked/);
    assert.ok(!stderr.includes(VALUE));
  } finally {
    relay.release();
    await admin.close();
    relay.close();
    await d.stop();
  }
});
