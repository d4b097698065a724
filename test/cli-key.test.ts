/**
 * `lessor key rotate` through the built CLI (dist/bin/lessor.cjs): embedded on a real key file, and an
 * agent token refused by a real `lessor serve`.
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { cliHome, runCli, seedHome } from "./cli-harness.js";
import { makeHome, startServe } from "./daemon-harness.js";

const CANARY = "CANARY-keyrotate-51e0c2";

const keysIn = (home: string): string[] => (JSON.parse(readFileSync(join(home, "master.key"), "utf8")) as { keys: string[] }).keys;

test("lessor key rotate: a new key in the key file, every data key re-wrapped, the old key dropped; values still read, the trail verifies, --json gives the fields", async () => {
  const home = await cliHome();
  await seedHome(home, "", [
    { name: "one", value: CANARY },
    { name: "two", value: `${CANARY}-2` },
  ]);
  const before = keysIn(home);
  assert.equal(before.length, 1);
  const idBefore = (JSON.parse((await runCli(["status", "--json"], { home })).stdout) as { keyId: string }).keyId;

  const r = await runCli(["key", "rotate"], { home });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, "");
  const m = /^master key rotated: ([0-9a-f]+) → ([0-9a-f]+); 2 data keys re-wrapped\n$/.exec(r.stdout);
  assert.ok(m, r.stdout);
  assert.equal(m[1], idBefore);
  assert.notEqual(m[2], idBefore);
  const after = keysIn(home);
  assert.equal(after.length, 1, "the old key was dropped from the key file");
  assert.notEqual(after[0], before[0]);
  assert.equal((JSON.parse((await runCli(["status", "--json"], { home })).stdout) as { keyId: string }).keyId, m[2]);

  const got = await runCli(["secret", "get", "one", "--reveal"], { home });
  assert.equal(got.code, 0, got.stderr);
  assert.equal(got.stdout.trim(), CANARY);
  assert.equal((await runCli(["audit", "verify"], { home })).code, 0);

  const j = await runCli(["key", "rotate", "--json"], { home });
  assert.equal(j.code, 0, j.stderr);
  const o = JSON.parse(j.stdout) as { from: string[]; to: string; rewrapped: number; resumed: boolean; retired: boolean };
  assert.deepEqual([o.from, o.rewrapped, o.resumed, o.retired], [[m[2]], 2, false, true]);
  for (const out of [r, got, j]) assert.ok(!out.stderr.includes(CANARY));
  assert.ok(!r.stdout.includes(CANARY) && !j.stdout.includes(CANARY));
  // The key file never held a value: only keys.
  assert.ok(!readFileSync(join(home, "master.key"), "utf8").includes(CANARY));
});

test("lessor key rotate with an agent token against lessor serve is refused (exit 3) and the key is unchanged", { timeout: 60_000 }, async () => {
  const home = await makeHome({ config: `[server]\ntcp = "127.0.0.1:0"\n` });
  const v = await openVault({ home, env: { LESSOR_HOME: home } });
  await v.admin().storeSecret({ name: "one", value: CANARY });
  await v.close();
  const keys = keysIn(home);
  const d = await startServe(home);
  try {
    const admin = await LessorClient.connect({ socketPath: d.socket });
    const t = await admin.createToken({ name: "claude", role: "agent", agent: "claude", ttl: "1h" });
    await admin.close();
    const tokenFile = join(home, "..", "agent.token");
    writeFileSync(tokenFile, `${t.token}\n`, { mode: 0o600 });
    const r = await runCli(["key", "rotate"], { env: { LESSOR_ADDR: `127.0.0.1:${d.tcp!.port}`, LESSOR_TOKEN_FILE: tokenFile } });
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /rotate the master key/);
    assert.deepEqual(keysIn(home), keys);
  } finally {
    await d.stop();
  }
});
