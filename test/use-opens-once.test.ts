/**
 * A use that asks where its value goes (`fit`, as the injecting proxy asks on every request) opens
 * the value once: the opening that checked it in the transaction is the one handed out
 * (src/vault/leases.ts, commitUse). Counted at the keyring, which every opening of a value asks for
 * the key that wraps it; a real SQLite vault.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { parsePolicy } from "../src/vault/policy.js";
import { Vault } from "../src/vault/vault.js";
import type { Identity } from "../src/base/types.js";
import { SecretBytes } from "../src/crypto/secret-bytes.js";
import { grant, hexKey } from "./helpers.js";

const VALUE = "ghp_" + "q".repeat(36);
const ADMIN: Identity = { id: "test:admin", role: "admin", transport: "embedded" };

test("an access with fit opens the value once, as one without; a use refused after the fit check wipes what it opened", async () => {
  const dir = mkdtempSync(join(tmpdir(), "lessor-open-once-"));
  let maxUses = 5;
  const source = envKeySource({ LESSOR_MASTER_KEY: hexKey() })!;
  let gets = 0;
  const counting = {
    kind: source.kind,
    describe: source.describe,
    writable: source.writable,
    load: async () => {
      const ring = await source.load();
      const get = ring.get.bind(ring);
      ring.get = (id: string) => (gets++, get(id));
      return ring;
    },
  };
  const vault = await Vault.open({
    store: openSqliteStore(join(dir, "lessor.db")),
    keys: counting,
    policy: async () => parsePolicy(`${grant("r", ["claude"], ["tok"], ["api.example.com"])}max_uses = ${maxUses}\n`, "p.toml"),
  });
  after(async () => {
    await vault.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const admin = vault.session(ADMIN);
  await admin.storeSecret({ name: "tok", value: VALUE });
  const lease = await admin.requestLease({ agent: "claude", secret: "tok", domains: ["api.example.com"] });

  const opensOf = async (target: Parameters<typeof admin.accessSecret>[1]): Promise<number> => {
    const before = gets;
    const got = await admin.accessSecret(lease.id, target);
    assert.equal(got.value.expose().toString(), VALUE, "the value handed out is whole and readable");
    got.value.wipe();
    return gets - before;
  };
  const plain = await opensOf({ domain: "api.example.com" });
  const fitted = await opensOf({ domain: "api.example.com", via: "proxy", fit: "header" });
  assert.ok(plain >= 1);
  assert.equal(fitted, plain, `an access with fit asked the keyring ${fitted} times, one without ${plain}: the value was opened twice`);

  // A reload lowers the rule's max_uses to the 2 already spent: the lease itself (5) is still live,
  // so the use passes the fit check (which opens the value) and is refused only where the store counts
  // it. Every value opened meanwhile is wiped; none is left for the garbage collector.
  maxUses = 2;
  await admin.reloadPolicy();
  const made: SecretBytes[] = [];
  const adopt = SecretBytes.adopt;
  SecretBytes.adopt = (buf: Buffer) => {
    const v = adopt.call(SecretBytes, buf);
    made.push(v);
    return v;
  };
  try {
    await assert.rejects(admin.accessSecret(lease.id, { domain: "api.example.com", via: "proxy", fit: "header" }), (e: Error & { code?: string }) => e.code === "lease_exhausted" && /allows 2/.test(e.message));
  } finally {
    SecretBytes.adopt = adopt;
  }
  assert.ok(made.length >= 1, "the fit check opened the value");
  for (const v of made) assert.throws(() => v.expose(), "a value opened for a refused use was left unwiped");
});
