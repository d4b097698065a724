/**
 * The tripwire for compressed request bodies (src/proxy/encoded-tripwire.ts) on its own, for gzip,
 * deflate and br: a mark inside the compressed data is caught wherever the compressed bytes are cut,
 * and what was passed on decodes to less than the mark's start (no byte of it left); a mark that the
 * compressor builds from back-references is caught too; clean bodies pass byte for byte; bodies that
 * do not decode, carry bytes after their end or decode past the cap are refused, their unread part
 * never passed on. The proxy's use of it is attacked in test/proxy-attacks.test.ts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { brotliCompressSync, brotliDecompressSync, constants, deflateSync, gzipSync, gunzipSync, inflateSync } from "node:zlib";
import { TripwireHit, TripwireMarks } from "../src/proxy/body-tripwire.js";
import { BodyUnreadable, decodableCoding, DecodingTripwire, type DecodableCoding } from "../src/proxy/encoded-tripwire.js";

const A = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8";
const B = "sk-" + "zyxwvutsrqponmlkjihgfedcba98";
const marks = new TripwireMarks<string>([
  ["a", [A, Buffer.from(A).toString("base64")]],
  ["b", [B]],
]);

const CODINGS: [DecodableCoding, (b: Buffer) => Buffer, (b: Buffer) => Buffer][] = [
  ["gzip", (b) => gzipSync(b), (b) => gunzipSync(b, { finishFlush: constants.Z_SYNC_FLUSH })],
  ["deflate", (b) => deflateSync(b), (b) => inflateSync(b, { finishFlush: constants.Z_SYNC_FLUSH })],
  ["br", (b) => brotliCompressSync(b), (b) => brotliDecompressSync(b, { finishFlush: constants.BROTLI_OPERATION_FLUSH })],
];

/** What a truncated compressed prefix decodes to: all an upstream could read from it. */
function decodedPrefix(decode: (b: Buffer) => Buffer, b: Buffer): Buffer {
  if (b.length === 0) return b;
  try {
    return decode(b);
  } catch {
    return Buffer.alloc(0); // too short to decode anything
  }
}

interface Fed {
  out: Buffer;
  error: Error | undefined;
  hits: number;
  unreadable: number;
}

/** Feeds `body` cut at `cuts` through a DecodingTripwire; what went on, and how it ended. */
async function feed(coding: DecodableCoding, body: Buffer, cuts: number[], maxDecodedBytes?: number): Promise<Fed> {
  let hits = 0;
  let unreadable = 0;
  const wire = new DecodingTripwire(marks, coding, { onHit: () => hits++, onUnreadable: () => unreadable++, ...(maxDecodedBytes ? { maxDecodedBytes } : {}) });
  const out: Buffer[] = [];
  wire.on("data", (b: Buffer) => out.push(b));
  const done = new Promise<Error | undefined>((resolve) => {
    wire.on("error", (e) => resolve(e));
    wire.on("end", () => resolve(undefined));
  });
  let at = 0;
  for (const c of [...cuts, body.length]) {
    if (!wire.destroyed) wire.write(body.subarray(at, c));
    at = c;
  }
  if (!wire.destroyed) wire.end();
  const error = await done;
  return { out: Buffer.concat(out), error, hits, unreadable };
}

test("decodableCoding: gzip, x-gzip, deflate and br; nothing else, and not two at once", () => {
  for (const c of ["gzip", "x-gzip", "deflate", "br"]) assert.equal(decodableCoding(c), c);
  for (const c of ["zstd", "compress", "gzip, br", "identity", ""]) assert.equal(decodableCoding(c), null, c);
});

test("a mark in a compressed body is caught at every cut of the compressed bytes; what went on decodes to less than the mark's start", async () => {
  const plain = Buffer.from(`{"x":"${"y".repeat(200)}","t":"${A}","z":"${randomBytes(64).toString("hex")}"}`);
  const at = plain.indexOf(A);
  for (const [coding, compress, decode] of CODINGS) {
    const body = compress(plain);
    for (let cut = 1; cut < body.length; cut++) {
      const { out, error, hits } = await feed(coding, body, [cut]);
      const what = `${coding}, cut at ${cut}`;
      assert.ok(error instanceof TripwireHit, what);
      assert.deepEqual((error as TripwireHit<string>).owners, ["a"], what);
      assert.equal(hits, 1, `${what}: onHit once`);
      assert.ok(body.subarray(0, out.length).equals(out), `${what}: a prefix of the body`);
      assert.ok(decodedPrefix(decode, out).length <= at, `${what}: what went on decodes past the mark's start`);
    }
    // Byte by byte.
    const { out, error } = await feed(coding, body, Array.from({ length: body.length - 1 }, (_, i) => i + 1));
    assert.ok(error instanceof TripwireHit, `${coding}, byte by byte`);
    assert.ok(decodedPrefix(decode, out).length <= at, `${coding}, byte by byte`);
  }
});

test("a mark the compressor builds from back-references to clean text, and a base64 mark, are caught", async () => {
  // Both halves of the mark appear earlier, apart: the mark itself is then two matches, no literals.
  const half = A.length / 2;
  const plain = Buffer.from(`${A.slice(0, half)}.....${A.slice(half)}.....${"q".repeat(100)}${A}!!`);
  const at = plain.indexOf(A, half + 5);
  for (const [coding, compress, decode] of CODINGS) {
    const body = compress(plain);
    for (let cut = 1; cut < body.length; cut += 3) {
      const { out, error } = await feed(coding, body, [cut]);
      assert.ok(error instanceof TripwireHit, `${coding}, cut at ${cut}`);
      assert.ok(decodedPrefix(decode, out).length <= at, `${coding}, cut at ${cut}`);
    }
    const b64 = await feed(coding, compress(Buffer.from(`blob=${Buffer.from(A).toString("base64")}`)), []);
    assert.deepEqual((b64.error as TripwireHit<string>).owners, ["a"], `${coding}: base64`);
  }
});

test("a mark in the compressed bytes themselves (a gzip file name, which decodes to nothing) is caught, and none of it goes on", async () => {
  const plain = gzipSync(Buffer.from("harmless text"));
  // FNAME (flag 0x08): a zero-terminated name after the 10-byte header; decoders skip it.
  const body = Buffer.concat([plain.subarray(0, 3), Buffer.from([plain[3]! | 0x08]), plain.subarray(4, 10), Buffer.from(`x-${A}-y\0`), plain.subarray(10)]);
  assert.equal(gunzipSync(body).toString(), "harmless text", "the test's body is valid gzip");
  const at = body.indexOf(A);
  for (let cut = 1; cut < body.length; cut++) {
    const { out, error } = await feed("gzip", body, [cut]);
    assert.ok(error instanceof TripwireHit, `cut at ${cut}`);
    assert.deepEqual((error as TripwireHit<string>).owners, ["a"], `cut at ${cut}`);
    assert.ok(out.length <= at, `cut at ${cut}: ${out.length} bytes went on, the mark starts at ${at}`);
  }
});

test("clean compressed bodies pass on byte for byte, in one chunk and in many", async () => {
  const plain = Buffer.concat([randomBytes(200_000), Buffer.from("a".repeat(300_000)), Buffer.from(A.slice(0, 20)), randomBytes(100_000)]);
  for (const [coding, compress] of CODINGS) {
    const body = compress(plain);
    for (const step of [body.length, 7_001, 512]) {
      const cuts: number[] = [];
      for (let i = step; i < body.length; i += step) cuts.push(i);
      const { out, error } = await feed(coding, body, cuts);
      assert.equal(error, undefined, `${coding}, step ${step}`);
      assert.ok(out.equals(body), `${coding}, step ${step}: passed on unchanged`);
    }
  }
});

test("a clean body in one read larger than the held-bytes cap, whose decoded bytes end in a mark's first bytes, passes whole", async () => {
  // The cap on held compressed bytes (src/proxy/encoded-tripwire.ts) is for data that decodes to
  // nothing behind a held tail; one large read of real data, held only until the end says what its
  // tail is, is not that.
  const plain = Buffer.concat([randomBytes(1_500_000), Buffer.from(A.slice(0, 12))]);
  for (const [coding, compress] of CODINGS) {
    const body = compress(plain);
    assert.ok(body.length > 1024 * 1024);
    const { out, error } = await feed(coding, body, []);
    assert.equal(error, undefined, coding);
    assert.ok(out.equals(body), `${coding}: passed on unchanged`);
  }
});

test("a body that does not decode is refused (400); its unread part never goes on", async () => {
  for (const [coding, compress] of CODINGS) {
    const good = compress(Buffer.from(`hello ${"z".repeat(5000)} world`));
    const bad = Buffer.concat([good.subarray(0, 12), Buffer.from([0xff, 0xff, 0xff, 0xff, 0x00, 0x13]), good.subarray(12)]);
    const { out, error, unreadable } = await feed(coding, bad, [6]);
    assert.ok(error instanceof BodyUnreadable, coding);
    assert.equal((error as BodyUnreadable).status, 400, coding);
    assert.match(error.message, new RegExp(`content-encoding ${coding}.*does not decode`), coding);
    assert.equal(unreadable, 1, coding);
    assert.ok(out.length <= 12, `${coding}: ${out.length} bytes went on`);
  }
  // Not compressed at all, but labelled so.
  const { error } = await feed("gzip", Buffer.from("token=plain text"), []);
  assert.ok(error instanceof BodyUnreadable);
});

test("bytes after the end of the compressed data are refused (400) and never go on", async () => {
  for (const [coding, compress] of CODINGS) {
    const body = compress(Buffer.from("a clean body"));
    const tail = Buffer.from("&token=unread-tail");
    for (const cuts of [[], [body.length]]) {
      const { out, error } = await feed(coding, Buffer.concat([body, tail]), cuts);
      assert.ok(error instanceof BodyUnreadable, `${coding}, cuts ${cuts}`);
      // gzip reads on for another member, so its decoder fails at the tail rather than stopping before it.
      assert.match(error.message, coding === "gzip" ? /does not decode/ : /after the end/, coding);
      assert.ok(!out.includes(tail), `${coding}: the tail went on`);
    }
  }
});

test("a body that decodes past the cap is refused (413): a decompression bomb", async () => {
  for (const [coding, compress] of CODINGS) {
    const bomb = compress(Buffer.alloc(8 * 1024 * 1024));
    const { error, out } = await feed(coding, bomb, [Math.floor(bomb.length / 2)], 1024 * 1024);
    assert.ok(error instanceof BodyUnreadable, coding);
    assert.equal((error as BodyUnreadable).status, 413, coding);
    assert.ok(out.length < bomb.length, `${coding}: not all of it went on`);
  }
});
