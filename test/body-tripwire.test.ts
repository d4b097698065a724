/**
 * The body tripwire's stream (src/proxy/body-tripwire.ts) on its own: a mark is found wherever the
 * chunks are cut, no byte of it (nor anything after it) is passed on, the owners found are the right
 * ones, and a body without marks passes byte for byte. The proxy's use of it is attacked in
 * test/proxy-attacks.test.ts ("tripwire in request bodies…").
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { BodyTripwire, TripwireHit, TripwireMarks } from "../src/proxy/body-tripwire.js";

const A = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8";
const B = "sk-" + "zyxwvutsrqponmlkjihgfedcba98";
const marks = new TripwireMarks([
  ["a", [A, Buffer.from(A).toString("base64")]],
  ["b", [B]],
]);

/** Feeds `body` cut at `cuts`; returns what was passed on and the hit, if any. */
async function feed(body: Buffer, cuts: number[]): Promise<{ out: Buffer; hit: TripwireHit<string> | undefined; heard: number }> {
  let heard = 0;
  const wire = new BodyTripwire(marks as TripwireMarks<string>, () => heard++);
  const out: Buffer[] = [];
  wire.on("data", (b: Buffer) => out.push(b));
  const done = new Promise<TripwireHit<string> | undefined>((resolve) => {
    wire.on("error", (e) => resolve(e as TripwireHit<string>));
    wire.on("finish", () => resolve(undefined));
  });
  let at = 0;
  for (const c of [...cuts, body.length]) {
    wire.write(body.subarray(at, c));
    at = c;
  }
  wire.end();
  const hit = await done;
  return { out: Buffer.concat(out), hit, heard };
}

test("a mark is caught at every cut point, and no byte of it goes on", async () => {
  const body = Buffer.from(`{"x":"${"y".repeat(50)}","t":"${A}","z":1}`);
  const at = body.indexOf(A);
  for (let cut = 1; cut < body.length; cut++) {
    const { out, hit, heard } = await feed(body, [cut]);
    assert.ok(hit instanceof TripwireHit, `cut at ${cut}`);
    assert.deepEqual(hit.owners, ["a"], `cut at ${cut}`);
    assert.equal(heard, 1, "onHit once");
    assert.ok(body.subarray(0, out.length).equals(out), `cut at ${cut}: a prefix of the body`);
    assert.ok(out.length <= at, `cut at ${cut}: ${out.length} bytes passed, the mark starts at ${at}`);
  }
  // Byte by byte.
  const { out, hit } = await feed(body, Array.from({ length: body.length - 1 }, (_, i) => i + 1));
  assert.ok(hit);
  assert.ok(out.length <= at);
});

test("an encoded mark and a second owner's mark: the owners found are named", async () => {
  const enc = Buffer.from(A).toString("base64");
  const { hit } = await feed(Buffer.from(`blob=${enc}`), [9]);
  assert.deepEqual(hit?.owners, ["a"]);
  const both = await feed(Buffer.from(`${B}`), [3, 10]);
  assert.deepEqual(both.hit?.owners, ["b"]);
});

test("a body without marks passes byte for byte, whatever the chunks; a mark's prefix alone is no alarm", async () => {
  const body = Buffer.concat([randomBytes(100_000), Buffer.from(A.slice(0, 30)), randomBytes(50_000), Buffer.from(B.slice(0, -1))]);
  for (const step of [1_000, 16_384, 7]) {
    const cuts: number[] = [];
    for (let i = step; i < body.length && cuts.length < 5_000; i += step) cuts.push(i);
    const { out, hit, heard } = await feed(body, cuts);
    assert.equal(hit, undefined);
    assert.equal(heard, 0);
    assert.ok(out.equals(body), `step ${step}: unchanged`);
  }
});

test("marks are found in texts (trailers), and nothing when there are none", () => {
  assert.deepEqual(marks.find(["x-sig", `v=${A}`, "other"]), ["a"]);
  assert.deepEqual(marks.find(["nothing here", B.slice(1)]), []);
  assert.deepEqual(new TripwireMarks<string>([]).find([A]), [], "no marks, nothing found");
});
