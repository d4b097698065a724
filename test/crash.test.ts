/**
 * Crash safety with real processes and SIGKILL: acknowledged writes survive, and a master-key
 * rotation killed at any point leaves every secret openable with the old or the new key.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { initHome, openVault } from "../src/config/open-vault.js";
import { openValue } from "../src/crypto/envelope.js";
import { fileKeySource } from "../src/crypto/keys/file.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { tempDir } from "./helpers.js";

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

/** Runs a fixture; calls `onLine` per stdout line; `onLine` returning true SIGKILLs the child. */
function runUntil(script: string, home: string, onLine: (line: string) => boolean): Promise<{ killed: boolean; code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", fixture(script), home], { stdio: ["ignore", "pipe", "pipe"], env: { PATH: process.env.PATH } });
    let stderr = "";
    let killed = false;
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    createInterface({ input: child.stdout }).on("line", (line) => {
      if (!killed && onLine(line)) {
        killed = true;
        child.kill("SIGKILL");
      }
    });
    child.on("error", reject);
    child.on("exit", (code) => resolve({ killed, code, stderr }));
  });
}

const env = (home: string) => ({ LESSOR_HOME: home });

/** Opens every stored version with the key file's current keyring; returns how many opened. */
async function openEverything(home: string): Promise<{ opened: number; keyIds: string[] }> {
  const ring = await fileKeySource(join(home, "master.key")).load();
  const store = openSqliteStore(join(home, "lessor.db"));
  try {
    let opened = 0;
    const vaultId = await store.getMeta("vault_id");
    for (const s of await store.listSecrets({})) {
      for (const v of await store.listVersions(s)) {
        const value = openValue(v, v, ring, vaultId);
        assert.ok(value.unsafeText().startsWith(`value-${s.name.slice(1)}-`));
        value.wipe();
        opened++;
      }
    }
    return { opened, keyIds: ring.ids() };
  } finally {
    await store.close();
    ring.wipe();
  }
}

describe("crash safety", () => {
  for (const killAfter of [1, 37, 250]) {
    test(`SIGKILL after ${killAfter} acknowledged writes loses none of them`, async () => {
      const home = join(tempDir(), "home");
      await initHome({ home, env: env(home) });
      const acked: number[] = [];
      const r = await runUntil("write-stream.ts", home, (line) => {
        if (line.startsWith("ack ")) acked.push(Number(line.slice(4)));
        return acked.length >= killAfter;
      });
      assert.ok(r.killed, `the child ended by itself: ${r.stderr}`);
      const vault = await openVault({ home, env: env(home) });
      try {
        const admin = vault.admin();
        for (const i of acked) {
          const got = await admin.revealSecret({ scope: "global", name: `s${i}` });
          assert.equal(got.value.unsafeText(), `value-${i}-${"x".repeat(i % 50)}`);
        }
        const v = await admin.auditVerify();
        assert.ok(v.ok, v.problem);
        assert.ok(v.events >= acked.length);
      } finally {
        await vault.close();
      }
    });
  }

  test("a master-key rotation killed at any point leaves every secret openable, and resumes", async () => {
    const home = join(tempDir(), "home");
    await initHome({ home, env: env(home) });
    const N = 2500;
    {
      const vault = await openVault({ home, env: env(home) });
      const admin = vault.admin();
      for (let i = 0; i < N; i += 250)
        await Promise.all(Array.from({ length: 250 }, (_, j) => admin.storeSecret({ name: `s${i + j}`, value: `value-${i + j}-` })));
      await vault.close();
    }
    const firstKey = (await openEverything(home)).keyIds;
    assert.equal(firstKey.length, 1);
    // Kill points: right after start (before or during promotion), after 1 and 6 re-wrap batches.
    const killPoints: ((line: string) => boolean)[] = [(l) => l === "ready", (l) => l === "batch 1", (l) => l === "batch 6"];
    let sawTwoKeys = false;
    for (const killAt of killPoints) {
      const r = await runUntil("rotate.ts", home, killAt);
      assert.ok(r.killed, `rotation finished before the kill point: ${r.stderr}`);
      const state = await openEverything(home);
      assert.equal(state.opened, N, "every secret opens after the kill");
      if (state.keyIds.length === 2) sawTwoKeys = true;
    }
    assert.ok(sawTwoKeys, "some kill landed mid-rotation (old and new key both present)");
    // Finish: running it again resumes instead of adding a third key.
    const r = await runUntil("rotate.ts", home, () => false);
    assert.equal(r.code, 0, r.stderr);
    const end = await openEverything(home);
    assert.equal(end.opened, N);
    assert.equal(end.keyIds.length, 1, "old keys retired");
    assert.notEqual(end.keyIds[0], firstKey[0]);
    const file = JSON.parse(readFileSync(join(home, "master.key"), "utf8")) as { keys: string[] };
    assert.equal(file.keys.length, 1);
    const vault = await openVault({ home, env: env(home) });
    try {
      const v = await vault.admin().auditVerify();
      assert.ok(v.ok, v.problem);
      const rotations = await vault.admin().auditQuery({ types: ["key_rotated"] });
      assert.ok(rotations.length >= 1);
      assert.equal(JSON.parse(rotations.at(-1)!.detail!).resumed, true);
    } finally {
      await vault.close();
    }
  });
});
