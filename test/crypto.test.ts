import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { inspect } from "node:util";
import fc from "fast-check";
import { ALGS, type Alg, DECRYPT_FAILED_MESSAGE, isAlg, open, seal } from "../src/crypto/aead.js";
import { FORMAT, type Place, type Sealed, type SealedInput, encodeAad, openValue, rewrapDek, sealValue } from "../src/crypto/envelope.js";
import { type Keyring, keyIdOf, makeKeyring } from "../src/crypto/keyring.js";
import { SecretBytes } from "../src/crypto/secret-bytes.js";
import { isVaultError } from "../src/base/errors.js";

const key = (): Buffer => randomBytes(32);
const ringOf = (...keys: Buffer[]): Keyring => makeKeyring(keys.map((k) => Buffer.from(k)));
const P: Place = { scope: "prod", name: "stripe/api-key", version: 1 };

function decryptFails(fn: () => unknown): string {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(isVaultError(caught, "decrypt_failed"), `expected decrypt_failed, got ${String(caught)}`);
  return (caught as Error).message;
}

function flipBit(buf: Uint8Array, bit: number): Buffer {
  const out = Buffer.from(buf);
  out[bit >> 3]! ^= 1 << (bit & 7);
  return out;
}

test("isAlg and ALGS list exactly the two algorithms", () => {
  assert.deepEqual([...ALGS], ["aes-256-gcm", "xchacha20-poly1305"]);
  assert.ok(isAlg("aes-256-gcm") && isAlg("xchacha20-poly1305"));
  assert.ok(!isAlg("aes-128-gcm") && !isAlg(undefined) && !isAlg(""));
});

test("aead round-trips empty, 1 byte, 64 KiB and binary data under both algorithms", () => {
  const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  for (const alg of ALGS) {
    for (const pt of [Buffer.alloc(0), Buffer.from([0x7f]), randomBytes(64 * 1024), binary]) {
      const k = key();
      const aad = Buffer.from("aad");
      const blob = seal(alg, k, pt, aad);
      assert.equal(blob.length, pt.length + (alg === "aes-256-gcm" ? 12 : 24) + 16);
      if (pt.length >= 16) assert.ok(!blob.includes(pt), "plaintext must not appear in the blob");
      assert.deepEqual(open(alg, k, blob, aad), pt);
      decryptFails(() => open(alg, k, blob, Buffer.from("aae")));
      decryptFails(() => open(alg, key(), blob, aad));
    }
  }
});

test("aead open rejects short blobs, unknown algorithms and the other algorithm's blobs", () => {
  const k = key();
  const aad = Buffer.alloc(0);
  for (const alg of ALGS) {
    const blob = seal(alg, k, Buffer.from("hi"), aad);
    decryptFails(() => open(alg, k, blob.subarray(0, 27), aad));
    decryptFails(() => open(alg, k, Buffer.alloc(0), aad));
    decryptFails(() => open("aes-128-gcm" as Alg, k, blob, aad));
    decryptFails(() => open(alg, k.subarray(0, 16), blob, aad));
    const other = ALGS.find((a) => a !== alg)!;
    decryptFails(() => open(other, k, blob, aad));
  }
});

test("nonces differ across 1000 seals, for both algorithms and for wrapped DEKs", () => {
  const k = key();
  const pt = Buffer.from("same plaintext");
  for (const alg of ALGS) {
    const n = alg === "aes-256-gcm" ? 12 : 24;
    const seen = new Set<string>();
    for (let i = 0; i < 1000; i++) seen.add(seal(alg, k, pt, Buffer.alloc(0)).subarray(0, n).toString("hex"));
    assert.equal(seen.size, 1000);
  }
  const ring = ringOf(k);
  const deks = new Set<string>();
  const cts = new Set<string>();
  for (let i = 0; i < 1000; i++) {
    const s = sealValue(P, pt, ring.current, "aes-256-gcm", null);
    deks.add(s.wrappedDek.toString("hex"));
    cts.add(s.ciphertext.toString("hex"));
  }
  assert.equal(deks.size, 1000);
  assert.equal(cts.size, 1000);
});

test("encodeAad is length-prefixed, so shifted field boundaries differ", () => {
  assert.notDeepEqual(encodeAad(["ab", "c"]), encodeAad(["a", "bc"]));
  assert.notDeepEqual(encodeAad(["a", ""]), encodeAad(["a"]));
  assert.deepEqual(encodeAad(["é"]), Buffer.from([0, 0, 0, 2, 0xc3, 0xa9]));
});

test("envelope round-trips under both algorithms, sizes 0, 1, 64 KiB and binary", () => {
  const ring = ringOf(key());
  const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => 255 - i));
  for (const alg of ALGS) {
    for (const pt of [Buffer.alloc(0), Buffer.from([0]), randomBytes(64 * 1024), binary]) {
      const s = sealValue(P, pt, ring.current, alg, null);
      assert.equal(s.alg, alg);
      assert.equal(s.keyId, ring.current.id);
      assert.equal(s.ciphertext[0], FORMAT);
      assert.equal(s.wrappedDek[0], FORMAT);
      const v = openValue(P, s, ring, null);
      assert.ok(v instanceof SecretBytes);
      assert.ok(v.equals(pt));
      v.wipe();
    }
  }
});

test("a sealed value opened at another scope, name, version, alg label or key id fails", () => {
  const k1 = key();
  const k2 = key();
  const ring = ringOf(k1, k2);
  for (const alg of ALGS) {
    const s = sealValue(P, Buffer.from("hunter2"), ring.current, alg, null);
    const other = ALGS.find((a) => a !== alg)!;
    decryptFails(() => openValue({ ...P, scope: "dev" }, s, ring, null));
    decryptFails(() => openValue({ ...P, name: "stripe/api-keY" }, s, ring, null));
    decryptFails(() => openValue({ ...P, version: 2 }, s, ring, null));
    decryptFails(() => openValue(P, { ...s, alg: other }, ring, null));
    decryptFails(() => openValue(P, { ...s, alg: "rot13" }, ring, null));
    decryptFails(() => openValue(P, { ...s, keyId: keyIdOf(k2) }, ring, null));
    // Field boundaries cannot be shifted between scope and name.
    const a = sealValue({ scope: "a", name: "b/c", version: 1 }, Buffer.from("x"), ring.current, alg, null);
    decryptFails(() => openValue({ scope: "a/b", name: "c", version: 1 }, a, ring, null));
    // The untouched record still opens.
    assert.equal(openValue(P, s, ring, null).unsafeText(), "hunter2");
  }
});

test("a wrapped DEK is bound to its key id: the same bytes under another id do not open", () => {
  // A keyring that hands out the right key under a different id must still fail: the id is in the AAD.
  const k = key();
  const ring = ringOf(k);
  const s = sealValue(P, Buffer.from("v"), ring.current, "aes-256-gcm", null);
  const liar: Keyring = {
    current: { id: "0000000000000000", key: Buffer.from(k) },
    get: (id) => (id === "0000000000000000" ? { id, key: Buffer.from(k) } : undefined),
    ids: () => ["0000000000000000"],
    wipe: () => {},
  };
  decryptFails(() => openValue(P, { ...s, keyId: "0000000000000000" }, liar, null));
});

test("swapping wrapped DEKs or ciphertexts between two versions fails", () => {
  const ring = ringOf(key());
  for (const alg of ALGS) {
    const v1 = sealValue({ ...P, version: 1 }, Buffer.from("one"), ring.current, alg, null);
    const v2 = sealValue({ ...P, version: 2 }, Buffer.from("two"), ring.current, alg, null);
    decryptFails(() => openValue({ ...P, version: 2 }, { ...v2, wrappedDek: v1.wrappedDek }, ring, null));
    decryptFails(() => openValue({ ...P, version: 1 }, { ...v1, ciphertext: v2.ciphertext }, ring, null));
    decryptFails(() => openValue({ ...P, version: 1 }, v2, ring, null));
    assert.equal(openValue({ ...P, version: 2 }, v2, ring, null).unsafeText(), "two");
  }
});

test("every single-bit flip in a small sealed record fails to open", () => {
  const ring = ringOf(key());
  for (const alg of ALGS) {
    const s = sealValue(P, Buffer.from("abc"), ring.current, alg, null);
    for (const field of ["ciphertext", "wrappedDek"] as const) {
      const blob = s[field];
      for (let bit = 0; bit < blob.length * 8; bit++) {
        decryptFails(() => openValue(P, { ...s, [field]: flipBit(blob, bit) }, ring, null));
      }
      decryptFails(() => openValue(P, { ...s, [field]: blob.subarray(0, blob.length - 1) }, ring, null));
      decryptFails(() => openValue(P, { ...s, [field]: Buffer.concat([blob, Buffer.from([0])]) }, ring, null));
    }
  }
});

test("a changed format byte fails to open", () => {
  const ring = ringOf(key());
  const s = sealValue(P, Buffer.from("abc"), ring.current, "aes-256-gcm", null);
  for (const b of [0, 2, 255]) {
    for (const field of ["ciphertext", "wrappedDek"] as const) {
      const blob = Buffer.from(s[field]);
      blob[0] = b;
      decryptFails(() => openValue(P, { ...s, [field]: blob }, ring, null));
    }
  }
  decryptFails(() => openValue(P, { ...s, ciphertext: Buffer.alloc(0) }, ring, null));
});

test("a key id not in the keyring gives key_unavailable naming the id", () => {
  const s = sealValue(P, Buffer.from("abc"), ringOf(key()).current, "aes-256-gcm", null);
  const other = ringOf(key());
  assert.throws(
    () => openValue(P, s, other, null),
    (e) => isVaultError(e, "key_unavailable") && e.message.includes(s.keyId) && e.message.includes("docs/crypto.md"),
  );
});

test("wrong key, tampered and moved records fail with one identical message that holds no plaintext", () => {
  const canary = "CANARY-7f3a-plaintext";
  const k = key();
  const ring = ringOf(k);
  const s = sealValue(P, Buffer.from(canary), ring.current, "xchacha20-poly1305", null);
  const wrongKey: Keyring = { ...ringOf(key()), get: (id) => (id === s.keyId ? { id, key: key() } : undefined) };
  const messages = new Set<string>([
    decryptFails(() => openValue(P, s, wrongKey, null)),
    decryptFails(() => openValue(P, { ...s, ciphertext: flipBit(s.ciphertext, 200) }, ring, null)),
    decryptFails(() => openValue(P, { ...s, wrappedDek: flipBit(s.wrappedDek, 300) }, ring, null)),
    decryptFails(() => openValue({ ...P, name: "moved" }, s, ring, null)),
    decryptFails(() => openValue(P, { ...s, alg: "nope" }, ring, null)),
    decryptFails(() => open("aes-256-gcm", k, Buffer.alloc(3), Buffer.alloc(0))),
  ]);
  assert.deepEqual([...messages], [DECRYPT_FAILED_MESSAGE]);
  assert.ok(!DECRYPT_FAILED_MESSAGE.includes(canary));
});

test("rewrapDek: the new wrap opens under the new key, the old one still opens, the value is untouched", () => {
  const oldKey = key();
  const newKey = key();
  for (const alg of ALGS) {
    const ring = ringOf(newKey, oldKey); // new is current, old still readable
    const s: Sealed = sealValue(P, Buffer.from("payload"), ring.get(keyIdOf(oldKey))!, alg, null);
    const ctBefore = Buffer.from(s.ciphertext);
    const rewrapped = rewrapDek(P, s, ring, ring.current, null);
    assert.notDeepEqual(rewrapped, s.wrappedDek);
    assert.equal(rewrapped[0], FORMAT);
    const moved: SealedInput = { ...s, keyId: ring.current.id, wrappedDek: rewrapped };
    assert.equal(openValue(P, moved, ring, null).unsafeText(), "payload");
    assert.equal(openValue(P, s, ring, null).unsafeText(), "payload");
    assert.deepEqual(s.ciphertext, ctBefore);
    // Once the old key is retired, only the rewrapped record opens.
    const onlyNew = ringOf(newKey);
    assert.equal(openValue(P, moved, onlyNew, null).unsafeText(), "payload");
    assert.throws(() => openValue(P, s, onlyNew, null), (e) => isVaultError(e, "key_unavailable"));
    // The new wrap is bound to the new key id and to the place.
    decryptFails(() => openValue(P, { ...moved, keyId: keyIdOf(oldKey) }, ring, null));
    decryptFails(() => rewrapDek({ ...P, version: 9 }, s, ring, ring.current, null));
  }
});

test("property: any value round-trips at its place and fails at any other place", () => {
  const ring = ringOf(key());
  const place = fc.record({ scope: fc.string(), name: fc.string(), version: fc.integer({ min: 1, max: 1e9 }) });
  fc.assert(
    fc.property(place, place, fc.uint8Array({ maxLength: 300 }), fc.constantFrom(...ALGS), (a, b, pt, alg) => {
      const s = sealValue(a, pt, ring.current, alg, null);
      assert.ok(openValue(a, s, ring, null).equals(pt));
      if (a.scope !== b.scope || a.name !== b.name || a.version !== b.version) decryptFails(() => openValue(b, s, ring, null));
    }),
    { numRuns: 300 },
  );
});

test("SecretBytes never shows its contents through String, JSON, inspect, templates or console.log", () => {
  const canary = "sk_live_CANARY_91c2";
  const ring = ringOf(key());
  const opened = openValue(P, sealValue(P, Buffer.from(canary), ring.current, "aes-256-gcm", null), ring, null);
  for (const s of [SecretBytes.from(canary), SecretBytes.from(Buffer.from(canary)), opened]) {
    const shown: string[] = [
      String(s),
      `${s}`,
      "" + s,
      JSON.stringify(s),
      JSON.stringify({ nested: { s } }),
      inspect(s),
      inspect({ deep: [s] }, { depth: 10, showHidden: true }),
    ];
    const chunks: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((chunk: string | Uint8Array) => {
      chunks.push(typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8"));
      return true;
    }) as typeof process.stdout.write;
    try {
      console.log(s);
      console.log("%s %o %O %j", s, s, s, s);
      console.log({ s });
    } finally {
      process.stdout.write = write;
    }
    shown.push(...chunks);
    assert.ok(chunks.length >= 3, "console.log output was captured");
    for (const text of shown) {
      assert.ok(!text.includes(canary), `leaked: ${text.replace(canary, "<canary>")}`);
      assert.ok(!text.includes(Buffer.from(canary).toString("hex")));
      assert.ok(!text.includes(Buffer.from(canary).toString("base64")));
    }
    assert.ok(shown.every((t) => t.includes("redacted")));
    assert.equal(s.unsafeText(), canary); // still readable on purpose
  }
});

test("wipe zeroes the underlying buffer and later use throws", () => {
  const ring = ringOf(key());
  const s = openValue(P, sealValue(P, Buffer.from("wipe me please"), ring.current, "xchacha20-poly1305", null), ring, null);
  const buf = s.expose();
  assert.equal(buf.toString(), "wipe me please");
  s.wipe();
  assert.ok(s.wiped);
  assert.ok(buf.every((b) => b === 0), "the live buffer is zeroed");
  assert.equal(s.length, 14);
  assert.throws(() => s.expose(), (e) => isVaultError(e, "invalid_request") && /was wiped/.test(e.message));
  assert.throws(() => s.unsafeText(), /was wiped/);
  assert.throws(() => s.use(() => 1), /was wiped/);
  assert.throws(() => s.equals(Buffer.alloc(14)), /was wiped/);
  s.wipe(); // twice is fine
  assert.match(inspect(s), /wiped/);
  const k = Buffer.from(key());
  const r = makeKeyring([k]);
  r.wipe();
  assert.ok(k.every((b) => b === 0), "keyring wipe zeroes the key");
  // A key given twice (LESSOR_MASTER_KEY_PREVIOUS repeating the current one): the duplicate's copy is zeroed at once; one passed twice as the same buffer is kept.
  const kept = Buffer.from(key());
  const dup = Buffer.from(kept);
  const twice = makeKeyring([kept, dup, kept]);
  assert.deepEqual(twice.ids(), [keyIdOf(kept)]);
  assert.ok(dup.every((b) => b === 0), "the duplicate's bytes are zeroed");
  assert.ok(!kept.every((b) => b === 0), "the kept key is not");
  twice.wipe();
});

test("a keyring and its master keys never print their bytes: inspect (showHidden too), %o, JSON.stringify, spreads", async () => {
  const { format } = await import("node:util");
  const keys = [randomBytes(32), randomBytes(32)];
  const shown = keys.flatMap((k) => [k.toString("hex"), k.toString("base64"), [...k.subarray(0, 8)].join(", ")]);
  const ring = makeKeyring(keys.map((k) => Buffer.from(k)));
  const outputs = [
    inspect(ring),
    inspect(ring, { showHidden: true, depth: 10 }),
    inspect(ring.current, { showHidden: true }),
    format("%o %O %j", ring, ring.current, ring.current),
    JSON.stringify(ring),
    JSON.stringify({ k: ring.get(ring.ids()[1]!) }),
    inspect({ ...ring.current }, { showHidden: true }),
  ];
  for (const out of outputs) for (const s of shown) assert.ok(!out.includes(s), `a key's bytes showed in: ${out}`);
  assert.match(inspect(ring), new RegExp(`Keyring \\{ ids: \\['${ring.ids()[0]}', '${ring.ids()[1]}'\\] \\}`));
  // The bytes are still there for the code that uses them.
  assert.equal(Buffer.compare(ring.current.key, keys[0]!), 0);
  assert.equal(ring.get(ring.ids()[1]!)!.key.length, 32);
});
