/**
 * Review `inject` (the gap fc4aacb closed for `lessor run`, in `lessor inject`): inject renders a
 * template's references one lease at a time, then writes the output. A `lessor revoke` (or the
 * killswitch) landing between the first lease and the write revoked the first lease, and inject still
 * wrote its value (exit 0, no word): the output file held a credential whose lease was revoked before
 * anything was written. docs/cli/leases.md: revoking is how the owner stops a credential going out.
 *
 * Real parts: the built CLI, a real `lessor serve`. The test stands between `lessor inject` and the
 * daemon (a relay on LESSOR_SOCKET) only to hold inject's second request_lease until the revocation
 * has committed: a template with several references whose second grant is slow, made deterministic.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { BIN } from "./cli-harness.js";
import { startServe } from "./daemon-harness.js";
import { makeOwner } from "./run-harness.js";

const root = mkdtempSync(join(tmpdir(), "lessor-s35-inject-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

const FIRST = `CANARY-s35-inject-first-${randomBytes(6).toString("hex")}`;
const SECOND = `CANARY-s35-inject-second-${randomBytes(6).toString("hex")}`;
const POLICY = `[[rule]]\nname = "g"\neffect = "allow"\nagents = ["renderer"]\nsecrets = ["*"]\nany_domain = true\n`;

/** A relay to `daemon` that holds the `nth` request_lease frame (1-based) until `release()`. */
async function holdingRelay(daemon: string, dir: string, nth: number): Promise<{ path: string; held: Promise<void>; release(): void; close(): void }> {
  mkdirSync(dir, { mode: 0o700 });
  const path = join(dir, "r.sock");
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let saw!: () => void;
  const held = new Promise<void>((r) => (saw = r));
  let seen = 0;
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
          if (method === "request_lease" && ++seen === nth) {
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

async function scenario(name: string, revoke: (admin: LessorClient, firstLease: string) => Promise<void>, toStdout: boolean, said = /revoked/): Promise<void> {
  const o = await makeOwner({
    root,
    name,
    masterKey: randomBytes(32).toString("hex"),
    policy: POLICY,
    secrets: [
      { name: "first", value: FIRST },
      { name: "second", value: SECOND },
    ],
  });
  const d = await startServe(o.lessorHome, { env: o.env });
  const relay = await holdingRelay(d.socket, join(o.base, "relay"), 2);
  const admin = await LessorClient.connect({ socketPath: d.socket });
  const tmpl = join(o.project, "cfg.tmpl");
  const out = join(o.project, "cfg.out");
  writeFileSync(tmpl, "a: $S:first\nb: $S:second\n");
  try {
    const inj = spawn(process.execPath, [BIN, "inject", "-i", tmpl, ...(toStdout ? [] : ["-o", out]), "--agent", "renderer"], {
      cwd: o.project,
      env: { ...o.env, LESSOR_SOCKET: relay.path },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    let stdout = "";
    inj.stderr!.on("data", (x: Buffer) => (stderr += x.toString()));
    inj.stdout!.on("data", (x: Buffer) => (stdout += x.toString()));
    const exited = new Promise<number | null>((r) => inj.on("close", (c) => r(c)));
    await Promise.race([relay.held, exited.then(() => assert.fail(`lessor inject ended before its second lease: ${stderr}`))]);
    // inject holds the first value (its lease used) and waits for the second grant.
    const before = await admin.listLeases({ agent: "renderer" });
    assert.equal(before.length, 1);
    assert.equal(before[0]!.uses, 1, "inject read the first value before the revocation");
    await revoke(admin, before[0]!.id);
    const [after] = await admin.listLeases({ agent: "renderer", id: before[0]!.id });
    assert.notEqual(after?.revokedAt, null, "the first lease is revoked");
    relay.release();
    const code = await exited;
    const written = toStdout ? stdout : existsSync(out) ? readFileSync(out, "utf8") : "";
    assert.ok(!written.includes(FIRST), `lessor inject wrote the value of a lease revoked before the output was written (exit ${code}, stderr ${JSON.stringify(stderr)})`);
    assert.equal(written, "", "nothing was written");
    assert.equal(code, 3, `lessor inject says it refused (lease_revoked; access_denied under the lockout), as lessor run does: stderr ${JSON.stringify(stderr)}`);
    assert.match(stderr, said);
    if (said.source.includes("killswitch"))
      assert.doesNotMatch(stderr, /add or change a rule/, "a refusal by the killswitch's lockout is not explained as the policy's: a rule would not help");
    assert.ok(!stderr.includes(FIRST) && !stderr.includes(SECOND));
    // And the second lease, granted after, is revoked too (inject's own cleanup).
    const live = (await admin.listLeases({ agent: "renderer" })).filter((l) => l.revokedAt === null);
    assert.equal(live.length, 0);
  } finally {
    relay.release();
    await admin.close();
    relay.close();
    await d.stop();
  }
}

test("attack: lessor revoke --agent lands while lessor inject renders a template (its first lease taken and read): the output is not written with the revoked value", { timeout: 30_000 }, async () => {
  await scenario("agent-file", async (admin) => void (await admin.revokeAllForAgent("renderer", "incident")), false);
});

test("attack: lessor revoke LEASE_ID lands while lessor inject renders a template to stdout: the revoked value is not printed", { timeout: 30_000 }, async () => {
  await scenario("id-stdout", async (admin, id) => void (await admin.revokeLease(id, "incident")), true);
});

test("held: the killswitch lands while lessor inject renders a template: its lockout refuses the next grant, nothing is written, and the refusal names the lockout, not the policy", { timeout: 30_000 }, async () => {
  await scenario("kill-file", async (admin) => void (await admin.killswitch("incident")), false, /killswitch is engaged/);
});
