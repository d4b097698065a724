/** Runs the store conformance suite against the memory store, the SQLite store and (with LESSOR_TEST_PG_URL) the PostgreSQL store. */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { createMemoryStore } from "../src/store/memory.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { isVaultError } from "../src/base/errors.js";
import { storeConformance } from "./store-conformance.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";

storeConformance("memory", async () => {
  const store = createMemoryStore();
  return { store, cleanup: () => store.close() };
});

storeConformance("sqlite", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lessor-store-"));
  const store = openSqliteStore(path.join(dir, "vault.db"));
  return {
    store,
    cleanup: async () => {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
});

if (PG_URL !== undefined)
  storeConformance("postgres", async () => {
    const { schema, drop } = await testSchema();
    const store = await openPostgresStore({ url: PG_URL!, schema });
    return {
      store,
      cleanup: async () => {
        await store.close();
        await drop();
      },
    };
  });
else test("store conformance: postgres", { skip: PG_SKIP }, () => {});

describe("memory store specifics", () => {
  test("a transaction function that never settles is rolled back after the timeout and later calls go on", async () => {
    const store = createMemoryStore({ txTimeoutMs: 100 });
    const stuck = store.transaction(async (t) => {
      await t.setMeta("stuck", "yes");
      await new Promise(() => {}); // never settles
    });
    const next = store.transaction(async (t) => t.setMeta("next", "yes"));
    await assert.rejects(stuck, (e) => isVaultError(e, "internal"));
    await next;
    assert.equal(await store.getMeta("stuck"), null);
    assert.equal(await store.getMeta("next"), "yes");
    await store.close();
    await assert.rejects(store.transaction(async () => 1), (e) => isVaultError(e, "unavailable"));
  });
});
