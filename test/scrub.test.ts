/**
 * The streaming scrubber (src/proxy/scrub.ts): every occurrence of a secret is replaced by its
 * placeholder whatever the chunking, only a possible secret prefix is ever held back, and memory stays
 * bounded on a 100 MB stream. A plain reference implementation (leftmost, then longest, match at each
 * position of the whole input) is the oracle.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer, get, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { pipeline } from "node:stream/promises";
import { Readable, Writable } from "node:stream";
import fc from "fast-check";
import { scrub, Scrubber, ScrubPatterns, ScrubStream, type SecretPattern } from "../src/proxy/scrub.js";
import { isVaultError } from "../src/base/errors.js";

interface Pair {
  value: Buffer;
  placeholder: Buffer;
}

const pair = (value: string | Buffer, placeholder: string | Buffer): Pair => ({
  value: Buffer.from(value),
  placeholder: Buffer.from(placeholder),
});

/** The oracle: at each position, the longest secret that starts there (first placeholder of a value). */
function reference(data: Buffer, secrets: readonly Pair[]): Buffer {
  const first = new Map<string, Pair>();
  for (const s of secrets) if (!first.has(s.value.toString("latin1"))) first.set(s.value.toString("latin1"), s);
  const uniq = [...first.values()];
  const out: Buffer[] = [];
  let plainFrom = 0;
  let i = 0;
  while (i < data.length) {
    let best: Pair | undefined;
    for (const s of uniq)
      if ((!best || s.value.length > best.value.length) && i + s.value.length <= data.length && data.compare(s.value, 0, s.value.length, i, i + s.value.length) === 0)
        best = s;
    if (!best) {
      i++;
      continue;
    }
    out.push(data.subarray(plainFrom, i), best.placeholder);
    i += best.value.length;
    plainFrom = i;
  }
  out.push(data.subarray(plainFrom));
  return Buffer.concat(out);
}

/** `data` cut at the given points (sorted, clipped, deduplicated). */
function split(data: Buffer, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let from = 0;
  for (const p of points) {
    chunks.push(data.subarray(from, p));
    from = p;
  }
  chunks.push(data.subarray(from));
  return chunks;
}

/** Runs chunks through a Scrubber, checking the hold-back bound after every chunk. */
function streamed(chunks: readonly Buffer[], patterns: ScrubPatterns): Buffer {
  const s = new Scrubber(patterns);
  const out: Buffer[] = [];
  for (const c of chunks) {
    out.push(...s.push(c));
    assert.ok(s.held <= Math.max(0, patterns.longest - 1), `held ${s.held} > longest - 1 (${patterns.longest - 1})`);
  }
  out.push(...s.end());
  return Buffer.concat(out);
}

const bytesOf = (s: string) => Buffer.from(s, "latin1");

test("replaces each secret with its placeholder, leftmost first and longest at the same start", () => {
  const P = [pair("abc", "XYZ"), pair("abcdef", "123456"), pair("bc", "QQ"), pair("cd", "RR")];
  const cases: [string, string][] = [
    ["xxabcxx", "xxXYZxx"],
    ["abcdef", "123456"],
    ["abcde", "XYZde"],
    ["abcd", "XYZd"],
    ["zbcz", "zQQz"],
    ["zcdz", "zRRz"],
    ["ab", "ab"],
    ["abcdefabc", "123456XYZ"],
    ["abcabcabc", "XYZXYZXYZ"],
    ["", ""],
    ["nothing here", "nothing here"],
  ];
  for (const [input, want] of cases) assert.equal(scrub(input, P).toString(), want, input);
});

test("a secret that is a prefix or suffix of another is not replaced inside the longer one", () => {
  const P = [pair("tok_", "PPPP"), pair("tok_ABCDEFGH", "tok_xxxxxxxx"), pair("EFGH", "eeee")];
  assert.equal(scrub("tok_ABCDEFGH", P).toString(), "tok_xxxxxxxx");
  assert.equal(scrub("tok_ABCDEFG", P).toString(), "PPPPABCDEFG");
  assert.equal(scrub("tok_ABCDEFGHEFGH", P).toString(), "tok_xxxxxxxxeeee");
  assert.equal(scrub("xEFGHx", P).toString(), "xeeeex");
});

test("compiling: an empty secret is refused, a repeated value keeps its first placeholder, strings are UTF-8", () => {
  assert.throws(() => new ScrubPatterns([{ value: "", placeholder: "x" }]), (e: unknown) => isVaultError(e, "invalid_request"));
  const p = new ScrubPatterns([pair("same", "1111"), pair("same", "2222"), { value: "pässwörd", placeholder: "P" }]);
  assert.equal(p.count, 2);
  assert.equal(p.longest, Buffer.byteLength("pässwörd"));
  assert.equal(scrub("same pässwörd", p).toString(), "1111 P");
  const none = new ScrubPatterns([]);
  assert.equal(scrub("anything", none).toString(), "anything");
  // The patterns copy their input: wiping the caller's buffer later changes nothing.
  const v = Buffer.from("wipe-me");
  const wiped = new ScrubPatterns([{ value: v, placeholder: "XXXXXXX" }]);
  v.fill(0);
  assert.equal(scrub("a wipe-me b", wiped).toString(), "a XXXXXXX b");
});

test("property: any chunking gives the oracle's output, over an alphabet that forces overlaps", () => {
  const small = fc.stringMatching(/^[abc]{1,6}$/);
  fc.assert(
    fc.property(
      fc.array(small, { minLength: 1, maxLength: 6 }),
      fc.stringMatching(/^[abcx]{0,80}$/),
      fc.array(fc.nat(200), { maxLength: 12 }),
      (values, text, cuts) => {
        const secrets = values.map((v, i) => pair(v, `<${i}>`));
        const patterns = new ScrubPatterns(secrets);
        assert.ok(patterns.needles !== null, "a few needles: the jump is used");
        const data = bytesOf(text);
        const want = reference(data, secrets);
        assert.deepEqual(streamed(split(data, cuts), patterns), want);
        assert.deepEqual(scrub(data, patterns), want);
      },
    ),
    { numRuns: 3000 },
  );
});

test("property: same with longer secrets, whose needles (first bytes, up to four) can be cut by a chunk's end", () => {
  const secret = fc.stringMatching(/^[a-d]{3,8}$/);
  fc.assert(
    fc.property(
      fc.uniqueArray(secret, { minLength: 1, maxLength: 10 }),
      fc.stringMatching(/^[a-dx]{0,120}$/),
      fc.array(fc.nat(200), { maxLength: 16 }),
      (values, text, cuts) => {
        const secrets = values.map((v, i) => pair(v, `<${i}>`));
        const patterns = new ScrubPatterns(secrets);
        assert.ok(patterns.needleLength >= 3 && patterns.needles !== null);
        const data = bytesOf(text);
        assert.deepEqual(streamed(split(data, cuts), patterns), reference(data, secrets));
        assert.deepEqual(scrub(data, patterns), reference(data, secrets));
      },
    ),
    { numRuns: 3000 },
  );
});

test("property: same with more than sixteen distinct needles (no jump)", () => {
  const secret = fc.stringMatching(/^[a-z]{1,4}$/);
  fc.assert(
    fc.property(
      fc.uniqueArray(secret, { minLength: 17, maxLength: 26, selector: (v) => v[0] }),
      fc.stringMatching(/^[a-zx]{0,80}$/),
      fc.array(fc.nat(200), { maxLength: 12 }),
      (values, text, cuts) => {
        const secrets = values.map((v, i) => pair(v, `<${i}>`));
        const patterns = new ScrubPatterns(secrets);
        assert.equal(patterns.needles, null);
        const data = bytesOf(text);
        assert.deepEqual(streamed(split(data, cuts), patterns), reference(data, secrets));
      },
    ),
    { numRuns: 2000 },
  );
});

test("property: one byte per chunk gives the oracle's output", () => {
  fc.assert(
    fc.property(fc.array(fc.stringMatching(/^[ab]{1,5}$/), { minLength: 1, maxLength: 5 }), fc.stringMatching(/^[ab ]{0,60}$/), (values, text) => {
      const secrets = values.map((v, i) => pair(v, `#${i}#`));
      const data = bytesOf(text);
      const bytes = [...data].map((b) => Buffer.from([b]));
      assert.deepEqual(streamed(bytes, new ScrubPatterns(secrets)), reference(data, secrets));
    }),
    { numRuns: 2000 },
  );
});

test("property: secrets placed in text never survive, wherever the chunks are cut", () => {
  // Secrets over [a-f], text over [u-z]: every secret placed is found, and nothing else is touched.
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.stringMatching(/^[a-f]{4,24}$/), { minLength: 1, maxLength: 8 }),
      fc.array(fc.tuple(fc.stringMatching(/^[u-z]{1,10}$/), fc.nat()), { maxLength: 20 }),
      fc.array(fc.nat(2000), { maxLength: 30 }),
      (values, parts, cuts) => {
        const secrets = values.map((v, i) => pair(v, `${"*".repeat(v.length - 1)}${i % 10}`));
        let text = "";
        let want = "";
        for (const [plain, k] of parts) {
          const s = secrets[k % secrets.length]!;
          text += plain + s.value.toString();
          want += plain + s.placeholder.toString();
        }
        const out = streamed(split(bytesOf(text), cuts), new ScrubPatterns(secrets)).toString("latin1");
        assert.equal(out, want);
        for (const v of values) assert.ok(!out.includes(v));
      },
    ),
    { numRuns: 1000 },
  );
});

test("property: binary secrets and data (NUL, 0xff, any byte), random cuts", () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ minLength: 1, maxLength: 8, min: 0, max: 7 }).map((u) => Buffer.from(u.map((b) => [0, 1, 0xff, 0xfe, 0x0a, 0x0d, 0x80, 0x7f][b]!))), {
        minLength: 1,
        maxLength: 6,
      }),
      fc.uint8Array({ maxLength: 120, min: 0, max: 7 }).map((u) => Buffer.from(u.map((b) => [0, 1, 0xff, 0xfe, 0x0a, 0x0d, 0x80, 0x7f][b]!))),
      fc.array(fc.nat(200), { maxLength: 15 }),
      (values, data, cuts) => {
        const secrets = values.map((v, i) => ({ value: v, placeholder: Buffer.from([0xee, i]) }));
        assert.deepEqual(streamed(split(data, cuts), new ScrubPatterns(secrets)), reference(data, secrets));
      },
    ),
    { numRuns: 2000 },
  );
});

test("many secrets at once: 300 random tokens in 200 KB, one pass, same as the oracle", () => {
  const secrets: Pair[] = [];
  for (let i = 0; i < 300; i++) {
    const value = randomBytes(8 + (i % 40)).toString("base64url");
    secrets.push(pair(value, `[${String(i).padStart(3, "0")}]`.padEnd(value.length, "_")));
  }
  const parts: Buffer[] = [];
  for (let i = 0; i < 2000; i++) parts.push(randomBytes(64), secrets[(i * 7) % secrets.length]!.value);
  const data = Buffer.concat(parts);
  const patterns = new ScrubPatterns(secrets);
  const cuts = Array.from({ length: 500 }, () => Math.floor(Math.random() * data.length));
  const out = streamed(split(data, cuts), patterns);
  assert.deepEqual(out, reference(data, secrets));
  for (const s of secrets.slice(0, 50)) assert.equal(out.indexOf(s.value), -1);
});

test("only a possible secret prefix is held back: complete text passes at once", () => {
  const secret = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
  const s = new Scrubber([{ value: secret, placeholder: "ghp_PLACEHOLDERplaceholderPLACEHOLDER01" }]);
  const text = (bs: Buffer[]) => Buffer.concat(bs).toString();
  assert.equal(text(s.push(Buffer.from("data: {\"n\":1}\n\n"))), "data: {\"n\":1}\n\n");
  assert.equal(s.held, 0);
  assert.equal(text(s.push(Buffer.from("data: token=gh"))), "data: token=");
  assert.equal(s.held, 2);
  assert.equal(text(s.push(Buffer.from("x and more\n\n"))), "ghx and more\n\n", "a prefix that did not continue is released");
  assert.equal(s.held, 0);
  assert.equal(text(s.push(Buffer.from(`${secret.slice(0, 10)}`))), "");
  assert.equal(text(s.push(Buffer.from(`${secret.slice(10)}\n\n`))), "ghp_PLACEHOLDERplaceholderPLACEHOLDER01\n\n");
  assert.equal(text(s.push(Buffer.from("ghp_0"))), "");
  assert.equal(text(s.end()), "ghp_0", "end releases a prefix that never completed");
  assert.equal(s.replaced, 1);
  assert.throws(() => s.push(Buffer.from("x")), (e: unknown) => isVaultError(e, "internal"));
});

test("ScrubStream pushes each chunk's safe output before taking the next chunk", async () => {
  const stream = new ScrubStream([pair("SECRET", "******")]);
  const got: string[] = [];
  stream.on("data", (b: Buffer) => got.push(b.toString()));
  const write = (s: string) => new Promise<void>((r) => stream.write(s, () => r()));
  await write("one SEC");
  assert.equal(got.join(""), "one ");
  await write("RET two\n");
  assert.equal(got.join(""), "one ****** two\n");
  await write("SE");
  stream.end();
  await new Promise((r) => stream.on("end", r));
  assert.equal(got.join(""), "one ****** two\nSE");
});

test("Server-Sent Events arrive event by event, scrubbed, with a secret split across writes", async (t) => {
  const secret = "sk-proj-Z3ZtY2FuYXJ5LXNlY3JldC0xMjM0NTY3ODkw";
  const placeholder = "sk-proj-PLACEHOLDERPLACEHOLDERPLACEHOLDER000";
  assert.equal(placeholder.length, secret.length);
  const EVENTS = 20;
  // Lockstep: the server writes event k+1 only after the client has read event k out of the scrubber.
  // If the scrubber held back a complete event, this test would hang (and time out).
  const received: ((k: number) => void)[] = [];
  const acks = Array.from({ length: EVENTS }, (_, k) => new Promise<number>((r) => (received[k] = r)));
  const server = createServer(async (_req, res) => {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    for (let k = 0; k < EVENTS; k++) {
      const cut = 1 + (k % (secret.length - 1));
      res.write(`id: ${k}\ndata: {"echo":"${secret.slice(0, cut)}`);
      await new Promise((r) => setTimeout(r, 2));
      res.write(`${secret.slice(cut)}","k":${k}}\n\n`);
      await acks[k];
    }
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => server.close());
  const port = (server.address() as AddressInfo).port;

  const res = await new Promise<IncomingMessage>((r) => get({ host: "127.0.0.1", port, path: "/events", agent: false }, r));
  const scrubbed = res.pipe(new ScrubStream([{ value: secret, placeholder }]));
  let buffer = "";
  const events: string[] = [];
  for await (const chunk of scrubbed) {
    buffer += (chunk as Buffer).toString();
    assert.ok(!buffer.includes("sk-proj-Z3"), "no part of the secret past its public prefix is passed on before it is known not to be the secret");
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      events.push(event);
      received[events.length - 1]!(events.length - 1);
    }
  }
  assert.equal(events.length, EVENTS);
  events.forEach((e, k) => assert.equal(e, `id: ${k}\ndata: {"echo":"${placeholder}","k":${k}}`));
});

test("pathological input stays linear: runs of one byte against nested secrets", (t) => {
  const secrets = [pair("a", "A"), pair("a".repeat(63) + "b", "B".repeat(64)), pair("aa", "xx"), pair("a".repeat(32), "y".repeat(32))];
  const patterns = new ScrubPatterns(secrets);
  const data = Buffer.alloc(4 * 1024 * 1024, "a");
  const t0 = process.hrtime.bigint();
  const out = streamed(split(data, [1000, 1001, 77777, 3_000_000]), patterns);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  t.diagnostic(`4 MiB of "a" against a+aa+a{32}+a{63}b: ${ms.toFixed(0)} ms`);
  assert.equal(out.length, data.length);
  assert.equal(out.subarray(0, 64).toString(), "y".repeat(64));
  const sample = Buffer.concat([Buffer.alloc(5000, "a"), Buffer.from("b")]);
  assert.deepEqual(scrub(sample, patterns), reference(sample, secrets));
});

test("a 100 MB stream is scrubbed in bounded memory, secrets split across chunks caught (prints throughput)", async (t) => {
  const MiB = 1024 * 1024;
  const REPEAT = 100;
  // Three "real" secrets and 200 decoys: the automaton is realistic, the decoys never occur.
  const real = [0, 1, 2].map((i) => pair(`ghp_${randomBytes(27).toString("base64url")}`.slice(0, 40), `ghp_${String(i).repeat(36)}`));
  const decoys = Array.from({ length: 200 }, (_, i) => pair(randomBytes(12 + (i % 24)).toString("base64url"), "D"));
  const patterns = new ScrubPatterns([...real, ...decoys]);

  // The chunk boundaries inside each block (the same for every block), and secrets placed across them.
  const sizes = [8191, 1, 7, 4093, 16381, 3, 2048, 40, 1, 1];
  const cuts: number[] = [];
  for (let at = 0, k = 0; at < MiB; k++) cuts.push((at = Math.min(MiB, at + sizes[k % sizes.length]!)));
  const block = randomBytes(MiB);
  const expected = Buffer.from(block);
  const PER_BLOCK = 150;
  let placed = 0;
  let free = 0;
  for (const cut of cuts) {
    const at = cut - 1 - (placed % 39);
    if (placed === PER_BLOCK || at < free || at + 40 > MiB) continue;
    const s = real[placed % 3]!;
    s.value.copy(block, at);
    s.placeholder.copy(expected, at);
    free = at + 41;
    placed++;
  }
  assert.equal(placed, PER_BLOCK);
  for (const s of real) assert.equal(expected.indexOf(s.value), -1);

  function* source(): Generator<Buffer> {
    for (let r = 0; r < REPEAT; r++) for (let c = 0, at = 0; c < cuts.length; at = cuts[c++]!) yield block.subarray(at, cuts[c]);
  }

  const stream = new ScrubStream(patterns);
  let seen = 0;
  let mismatches = 0;
  let maxHeld = 0;
  const base = process.memoryUsage();
  let peak = 0;
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      // Compare with the expected image, piece by piece (a held piece may span two blocks).
      for (let i = 0; i < chunk.length; ) {
        const off = (seen + i) % MiB;
        const n = Math.min(chunk.length - i, MiB - off);
        if (chunk.compare(expected, off, off + n, i, i + n) !== 0) mismatches++;
        i += n;
      }
      seen += chunk.length;
      maxHeld = Math.max(maxHeld, stream.scrubber.held);
      if ((seen & (8 * MiB - 1)) < chunk.length) {
        const m = process.memoryUsage();
        peak = Math.max(peak, m.heapUsed + m.arrayBuffers - (base.heapUsed + base.arrayBuffers));
      }
      done();
    },
  });
  const t0 = process.hrtime.bigint();
  await pipeline(Readable.from(source()), stream, sink);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;

  assert.equal(seen, REPEAT * MiB);
  assert.equal(mismatches, 0);
  assert.equal(stream.scrubber.replaced, REPEAT * PER_BLOCK);
  assert.ok(maxHeld <= patterns.longest - 1);
  assert.ok(peak < 48 * MiB, `memory grew by ${(peak / MiB).toFixed(1)} MiB while streaming 100 MiB`);

  // The core alone, without stream plumbing or checking: all 203 secrets, and the three real ones only
  // (they share the first byte "g", so the scrubber jumps between "g"s with memchr).
  const coreRate = (p: ScrubPatterns): number => {
    const core = new Scrubber(p);
    const t1 = process.hrtime.bigint();
    for (let r = 0; r < REPEAT; r++) for (let at = 0; at < MiB; at += 65536) core.push(block.subarray(at, at + 65536));
    core.end();
    assert.equal(core.replaced, REPEAT * PER_BLOCK);
    return REPEAT / (Number(process.hrtime.bigint() - t1) / 1e9);
  };
  const coreAll = coreRate(patterns);
  const coreFew = coreRate(new ScrubPatterns(real));
  t.diagnostic(
    `100 MiB, ${patterns.count} secrets, ${REPEAT * PER_BLOCK} replaced, each split across chunks: stream ${(REPEAT / seconds).toFixed(0)} MiB/s (with checking), core ${coreAll.toFixed(0)} MiB/s, core with the 3 real secrets only ${coreFew.toFixed(0)} MiB/s; ` +
      `memory growth ≤ ${(peak / MiB).toFixed(1)} MiB, max held ${maxHeld} bytes`,
  );
});

test("SecretPattern accepts byte views at an offset (no stray bytes from the backing buffer)", () => {
  const backing = Buffer.from("xxxxSECRETyyyy");
  const view = new Uint8Array(backing.buffer, backing.byteOffset + 4, 6);
  const patterns: SecretPattern[] = [{ value: view, placeholder: new Uint8Array(Buffer.from("######")) }];
  assert.equal(scrub("a SECRET b xxxx", patterns).toString(), "a ###### b xxxx");
  const input = new Uint8Array(Buffer.from("..SECRET.."));
  assert.equal(scrub(input.subarray(2), patterns).toString(), "######..");
});
