/**
 * SecretBytes from another copy of its module (the CLI's bundles each hold one: scripts/build-cli.mjs)
 * is still a secret to every check that decides how a value is sent or wiped: the server's dispatch
 * encodes it and wipes it, the client's codecs send it as bytes, `equals` reads it. Without the brand
 * (src/crypto/secret-bytes.ts) the dispatch would pass it on as an ordinary object and never wipe it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { SecretBytes } from "../src/crypto/secret-bytes.js";
import { dispatch } from "../src/server/dispatch.js";
import { wireValueOf } from "../src/client/codecs.js";
import type { VaultSession } from "../src/vault/vault.js";
import type { DispatchContext } from "../src/server/dispatch.js";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadBundle } from "../src/cli/code-cache.js";
import { inProcessApi } from "../src/backend/in-process.js";
import { LessorClient } from "../src/client/client.js";
import { makeVault } from "./helpers.js";

const CANARY = "canary-copies-7f3a91c2";

/** A second, separate instance of the module, as another bundle would hold. */
async function otherCopy(): Promise<typeof SecretBytes> {
  const m = (await import(`../src/crypto/secret-bytes.ts?copy=${Math.random()}`)) as { SecretBytes: typeof SecretBytes };
  assert.notEqual(m.SecretBytes, SecretBytes, "the test needs a second copy of the class");
  return m.SecretBytes;
}

test("a SecretBytes of another copy of the module is a SecretBytes; other objects are not", async () => {
  const Other = await otherCopy();
  const v = Other.from(CANARY);
  assert.ok(v instanceof SecretBytes);
  assert.ok(SecretBytes.from(CANARY) instanceof Other);
  for (const x of [null, undefined, CANARY, Buffer.from(CANARY), { value: CANARY }, { expose: () => Buffer.from(CANARY), wipe() {} }, Object.create(null)])
    assert.equal(x instanceof SecretBytes, false, `${typeof x} must not pass as SecretBytes`);
  assert.ok(SecretBytes.from(CANARY).equals(v), "equals reads the other copy's bytes");
});

test("the server's dispatch encodes and wipes a value made by another copy of the module", async () => {
  const Other = await otherCopy();
  const value = Other.from(CANARY);
  const session = { revealSecret: async () => ({ value, version: 3 }) } as unknown as VaultSession;
  const wire = (await dispatch(session, "reveal_secret", { name: "s" }, {} as DispatchContext)) as Record<string, unknown>;
  assert.equal(wire["encoding"], "base64");
  assert.equal(Buffer.from(wire["value"] as string, "base64").toString("utf8"), CANARY);
  assert.equal(wire["version"], 3);
  assert.equal(value.wiped, true, "the dispatch wipes the value once encoded");
});

test("the client's codecs send a value made by another copy of the module as its bytes", async () => {
  const Other = await otherCopy();
  const v = Other.from(CANARY);
  const wire = wireValueOf(v);
  assert.deepEqual(wire, { value: Buffer.from(CANARY).toString("base64"), encoding: "base64" });
  v.wipe();
  assert.throws(() => wireValueOf(v), /already wiped/);
});

test("lessor run's vault-session bundle serves a value that a vault of another copy decrypted, and the client gets its bytes", async () => {
  // dist/bin/run-vault-session.cjs holds its own protocol server (and SecretBytes); the vault here is
  // the source tree's, as a vault the command tree opened would be another bundle's.
  const bin = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "bin");
  const { startVaultSession } = loadBundle<typeof import("../src/cli/run/vault-session.js")>(bin, "run-vault-session");
  const policy = `[[rule]]\nname = "r"\neffect = "allow"\nagents = ["bot"]\nsecrets = ["tok"]\ndomains = ["api.example.com"]\n`;
  const t = await makeVault({ store: "memory", policy });
  await t.vault.session({ id: "owner", role: "admin", transport: "embedded" }).storeSecret({ name: "tok", value: CANARY });
  const backend = { mode: "embedded" as const, home: "/nonexistent", endpoint: null, api: inProcessApi(t.vault), vault: t.vault, close: async () => {} };
  const s = await startVaultSession({ backend, agent: "bot", daemon: { endpoint: { socketPath: "/nonexistent" }, expectedUid: undefined } });
  try {
    const client = await LessorClient.connect({ socketPath: s.socket });
    try {
      const got = await client.leaseAndAccess({ secret: "tok", domains: ["api.example.com"] }, { domain: "api.example.com" });
      assert.ok(got.value instanceof SecretBytes);
      assert.equal(got.value.unsafeText(), CANARY);
      got.value.wipe();
    } finally {
      await client.close();
    }
  } finally {
    await s.close(async () => backend.api, async () => {});
  }
});
