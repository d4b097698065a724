/**
 * One master-key rotation at a time among the processes sharing a store (src/vault/rotation-claim.ts):
 * a second rotation is refused while one runs, a claim left by a process that ended is taken over at
 * once, one left by a process nobody can judge lapses, and a rotation that lost its claim writes the
 * key source no more. Real SQLite files (and a PostgreSQL schema, with LESSOR_TEST_PG_URL) and key
 * files; two vaults on one store stand for two processes.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import Database from "better-sqlite3";
import { join } from "node:path";
import { test } from "node:test";
import { createKeyFile, fileKeySource } from "../src/crypto/keys/file.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { ROTATION_CLAIM_META, ROTATION_CLAIM_MS } from "../src/vault/rotation-claim.js";
import type { Processes } from "../src/vault/ports.js";
import { Vault } from "../src/vault/vault.js";
import { clock, refusalOf, tempDir } from "./helpers.js";
import { PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";

const N = 450; // three re-wrap batches

async function setup(): Promise<{ dir: string; keyFile: string; open: (o?: { now?: () => number; processes?: Processes }) => Promise<Vault> }> {
  const dir = tempDir("lessor-rotclaim-");
  const keyFile = join(dir, "keys", "master.key");
  createKeyFile(keyFile);
  const open = (o: { now?: () => number; processes?: Processes } = {}) => Vault.open({ store: openSqliteStore(join(dir, "lessor.db")), keys: fileKeySource(keyFile), ...o });
  const v = await open();
  for (let i = 0; i < N; i += 150) await Promise.all(Array.from({ length: 150 }, (_, j) => v.admin().storeSecret({ name: `s${i + j}`, value: `v${i + j}` })));
  await v.close();
  return { dir, keyFile, open };
}

/** Writes the claim document straight into lessor.db, as another process's commit (synchronous, so at an exact point). */
function plant(dir: string, doc: object | null): void {
  const db = new Database(join(dir, "lessor.db"));
  try {
    db.prepare("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value").run(ROTATION_CLAIM_META, doc === null ? "" : JSON.stringify(doc));
  } finally {
    db.close();
  }
}

const keysIn = (file: string): string[] => (JSON.parse(readFileSync(file, "utf8")) as { keys: string[] }).keys;

async function allOpen(v: Vault): Promise<void> {
  for (const i of [0, 199, 200, N - 1]) {
    const got = await v.admin().revealSecret({ scope: "global", name: `s${i}` });
    assert.equal(got.value.unsafeText(), `v${i}`);
    got.value.wipe();
  }
  const verify = await v.admin().auditVerify();
  assert.ok(verify.ok, verify.problem);
}

test("a second rotation while one runs (another vault on the same store) is refused with unavailable, naming it, and changes nothing; the first finishes", async () => {
  const { keyFile, open } = await setup();
  const a = await open();
  const b = await open();
  try {
    const before = keysIn(keyFile);
    let refused: { code: string; message: string } | undefined;
    let fileDuring: string[] = [];
    const r = await a.admin().rotateMasterKey((done) => {
      if (done === 200) {
        fileDuring = keysIn(keyFile);
        void refusalOf(b.admin().rotateMasterKey()).then((x) => (refused = x));
      }
    });
    // B's refusal needs a commit: it runs between A's batches or after A.
    for (let i = 0; i < 100 && refused === undefined; i++) await new Promise((res) => setTimeout(res, 10));
    assert.ok(refused !== undefined, "B's rotation ended");
    assert.equal(refused.code, "unavailable");
    assert.match(refused.message, /another master-key rotation is running on this vault \(started .* by embedded/);
    assert.match(refused.message, /changed nothing/);
    assert.equal(r.rewrapped, N);
    assert.deepEqual(keysIn(keyFile), [fileDuring[0]], "A retired the old key; B added none");
    assert.notEqual(fileDuring[0], before[0]);
    await allOpen(b);
    // The claim ended with A's rotation: B rotates now.
    const again = await b.admin().rotateMasterKey();
    assert.equal(again.rewrapped, N);
    await allOpen(a);
  } finally {
    await a.close();
    await b.close();
  }
});

test("a claim left by a process that ended is taken over at once; one naming no process nobody can judge holds until it lapses", async () => {
  const { dir, keyFile, open } = await setup();
  const c = clock(Date.now());
  const processes: Processes = { self: { host: "h", pid: 1, start: null }, ended: (p) => p.host === "h" && p.pid === 4242, ref: (pid) => ({ host: "h", pid, start: null }) };
  const v = await open({ now: c.now, processes });
  try {
    // Killed mid-rotation: its process is gone, so the next rotation goes ahead at once.
    plant(dir, { v: 1, owner: "dead", by: "cli", started: c.now(), until: c.now() + ROTATION_CLAIM_MS, process: { host: "h", pid: 4242, start: null } });
    assert.equal((await v.admin().rotateMasterKey()).rewrapped, N);
    assert.equal(keysIn(keyFile).length, 1);
    // Another host's process (or none named): it holds until it lapses.
    plant(dir, { v: 1, owner: "remote", by: "daemon", started: c.now(), until: c.now() + ROTATION_CLAIM_MS, process: { host: "other", pid: 4242, start: null } });
    const before = keysIn(keyFile);
    const refused = await refusalOf(v.admin().rotateMasterKey());
    assert.equal(refused.code, "unavailable");
    assert.match(refused.message, /another master-key rotation is running on this vault .* by daemon, process 4242/);
    assert.deepEqual(keysIn(keyFile), before, "the refused rotation wrote nothing");
    c.advance(ROTATION_CLAIM_MS + 1);
    assert.equal((await v.admin().rotateMasterKey()).rewrapped, N);
    await allOpen(v);
  } finally {
    await v.close();
  }
});

test("a rotation whose claim another rotation took over mid-way stops before writing the key source again; run again, it resumes", async () => {
  const { dir, keyFile, open } = await setup();
  const v = await open();
  try {
    const start = keysIn(keyFile);
    const refused = await refusalOf(
      v.admin().rotateMasterKey((done) => {
        if (done === 200) plant(dir, { v: 1, owner: "other", by: "other", started: Date.now(), until: Date.now() + 60_000 });
      }),
    );
    assert.equal(refused.code, "unavailable");
    assert.match(refused.message, /lost its claim on the vault \(now held by the rotation other/);
    assert.match(refused.message, /stopped before changing the key source again/);
    const mid = keysIn(keyFile);
    assert.equal(mid.length, 2, "the old key was not retired");
    assert.equal(mid[1], start[0]);
    await allOpen(v);
    // Still claimed by "other": refused, and it is left in place.
    assert.equal((await refusalOf(v.admin().rotateMasterKey())).code, "unavailable");
    plant(dir, null);
    const r = await v.admin().rotateMasterKey();
    assert.equal(r.resumed, true);
    assert.deepEqual(keysIn(keyFile), [mid[0]]);
    await allOpen(v);
  } finally {
    await v.close();
  }
});

test("PostgreSQL, two instances sharing a key file: rotations started at once on both, again and again, run one at a time (the other refused with unavailable); every secret opens", { skip: PG_SKIP, timeout: 120_000 }, async () => {
  const { schema, drop } = await testSchema();
  const dir = tempDir("lessor-rotclaim-pg-");
  const keyFile = join(dir, "keys", "master.key");
  createKeyFile(keyFile);
  const open = async () => Vault.open({ store: await openPostgresStore({ url: PG_URL!, schema }), keys: fileKeySource(keyFile) });
  const a = await open();
  const b = await open();
  try {
    for (let i = 0; i < 300; i += 100) await Promise.all(Array.from({ length: 100 }, (_, j) => a.admin().storeSecret({ name: `s${i + j}`, value: `v${i + j}` })));
    let done = 0;
    for (let round = 0; round < 5; round++) {
      const outcomes = await Promise.all([a, b].map((v) => v.admin().rotateMasterKey().then(() => "ok", (e: unknown) => (e as { code?: string; message?: string }).code + ": " + (e as Error).message)));
      for (const o of outcomes) if (o !== "ok") assert.match(o, /^unavailable: another master-key rotation is running on this vault/, o);
      assert.ok(outcomes.includes("ok"), outcomes.join(" | "));
      done += outcomes.filter((o) => o === "ok").length;
      assert.equal(keysIn(keyFile).length, 1, `round ${round}: one key left`);
      for (const v of [a, b])
        for (const i of [0, 150, 299]) {
          const got = await v.admin().revealSecret({ scope: "global", name: `s${i}` });
          assert.equal(got.value.unsafeText(), `v${i}`);
          got.value.wipe();
        }
    }
    assert.ok(done >= 5);
    const verify = await b.admin().auditVerify();
    assert.ok(verify.ok, verify.problem);
  } finally {
    await a.close();
    await b.close();
    await drop();
  }
});
